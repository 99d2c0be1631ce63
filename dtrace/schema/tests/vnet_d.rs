//! Ties the schema to `dtrace/vnet.d`: the same probes in the same order, each with as many
//! arguments as columns it fills, and each argument (named in the comment after the probe)
//! going to the column of that name.

use vnet_trace_schema::{Column, Probe};

struct Declared {
    name: String,
    arg_count: usize,
    arg_names: Vec<String>,
}

/// `probe NAME(int64_t, ...); /* a, b */` lines of the provider.
fn parse_vnet_d() -> Vec<Declared> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../vnet.d");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("probe ") else {
            continue;
        };
        let (name, rest) = rest.split_once('(').expect("probe NAME(");
        let (args, rest) = rest.split_once(')').expect("argument list closes");
        let arg_count = args.split(',').filter(|a| !a.trim().is_empty()).count();
        let comment = rest
            .split_once("/*")
            .and_then(|(_, c)| c.split_once("*/"))
            .map(|(c, _)| c)
            .unwrap_or_else(|| panic!("probe {name}: no /* argument names */ comment"));
        let arg_names = comment.split(',').map(|a| a.trim().to_string()).collect();
        out.push(Declared {
            name: name.trim().to_string(),
            arg_count,
            arg_names,
        });
    }
    out
}

/// The column an argument name in vnet.d goes to.
fn column_of(arg: &str) -> Option<Column> {
    Some(match arg {
        "fd" => Column::Fd,
        "queue" => Column::Queue,
        "frame_len" | "len" => Column::Len,
        "data" | "delay_us" | "reason" => Column::Data,
        "attempt" | "retries" => Column::Retries,
        "wait_ns" => Column::WaitNs,
        "err" | "errno" => Column::Errno,
        _ => return None,
    })
}

#[test]
fn probes_match_vnet_d() {
    let declared = parse_vnet_d();
    let names: Vec<&str> = declared.iter().map(|d| d.name.as_str()).collect();
    let ours: Vec<&str> = Probe::ALL.iter().map(|p| p.name()).collect();
    assert_eq!(names, ours, "probe names and order");
    for (d, p) in declared.iter().zip(Probe::ALL) {
        assert_eq!(
            d.arg_count,
            p.arg_columns().len(),
            "{}: argument count",
            d.name
        );
        assert_eq!(
            d.arg_names.len(),
            d.arg_count,
            "{}: the comment names every argument",
            d.name
        );
        let columns: Vec<Option<Column>> = d.arg_names.iter().map(|a| column_of(a)).collect();
        let want: Vec<Option<Column>> = p.arg_columns().iter().map(|&c| Some(c)).collect();
        assert_eq!(columns, want, "{}: arguments {:?}", d.name, d.arg_names);
    }
}
