//! Keeps the capture and live-watch scripts in probes/ from drifting away from the probe
//! contract. CI can only run the bpftrace scripts; the DTrace ones (macOS) are checked here
//! by reading them: every probe they name exists in dtrace/vnet.d with enough arguments, and
//! the two capture scripts print the trace schema's header (`dtrace/schema`) and put each
//! probe argument in the schema's column. The syscall-level scripts (syscalls.bt,
//! syscalls.d) attach to no vnet probe; their rows are checked against the schema's columns
//! the same way.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use vnet_trace_schema::{Probe, HEADER};

/// Where each probe's arguments go in the CSV: (column name, argument index), from the
/// trace schema the recorder writes and `analyze` reads with.
fn expected_columns(probe: &str) -> Vec<(&'static str, usize)> {
    let p = Probe::from_name(probe.as_bytes())
        .unwrap_or_else(|| panic!("probe {probe} is in dtrace/vnet.d but not in the trace schema"));
    p.arg_columns()
        .iter()
        .enumerate()
        .map(|(k, c)| (c.name(), k))
        .collect()
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Probe name -> argument count, from the provider definition.
fn provider_probes() -> BTreeMap<String, usize> {
    let text = fs::read_to_string(root().join("dtrace/vnet.d")).expect("read dtrace/vnet.d");
    let text = strip_comments(&text);
    let mut probes = BTreeMap::new();
    for stmt in text.split(';') {
        let stmt = stmt.trim();
        let Some(rest) = stmt
            .rsplit("probe ")
            .next()
            .filter(|_| stmt.contains("probe "))
        else {
            continue;
        };
        let (name, args) = rest.split_once('(').expect("probe NAME(args)");
        let args = args.trim_end_matches(')').trim();
        let n = if args.is_empty() || args == "void" {
            0
        } else {
            args.split(',').count()
        };
        probes.insert(name.trim().to_string(), n);
    }
    assert!(
        probes.len() >= 11,
        "parsed too few probes from vnet.d: {probes:?}"
    );
    probes
}

fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("/*") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("*/").expect("unterminated comment") + start + 2;
        // keep line numbers stable for error messages
        out.extend(rest[start..end].chars().filter(|&c| c == '\n'));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

struct Clause {
    /// vnet probe names this clause attaches to
    probes: Vec<String>,
    /// every other attach point (BEGIN, interval:s:1, dtrace:::END, ...)
    others: Vec<String>,
    body: String,
    line: usize,
}

/// Splits a D or bpftrace program into `probe-specs /predicate/ { body }` clauses.
fn clauses(text: &str) -> Vec<Clause> {
    let text = strip_comments(text);
    let mut out = Vec::new();
    let mut head = String::new();
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c != '{' {
            head.push(c);
            continue;
        }
        let mut depth = 1;
        let mut body = String::new();
        for (_, c) in chars.by_ref() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                _ => {}
            }
            if depth == 0 {
                break;
            }
            body.push(c);
        }
        // drop the predicate and directive lines (#pragma, #include, #define, and the
        // VNET_OPTION(...) lines that become #pragma under cpp) from the head
        let spec_part: String = head
            .lines()
            .filter(|l| {
                let l = l.trim_start();
                !l.starts_with('#') && !l.starts_with("VNET_OPTION(")
            })
            .collect::<Vec<_>>()
            .join("\n");
        let spec_part = spec_part.split('/').next().unwrap_or("");
        let mut probes = Vec::new();
        let mut others = Vec::new();
        for spec in spec_part
            .split([',', ' ', '\n', '\t'])
            .filter(|s| !s.is_empty())
        {
            let parts: Vec<&str> = spec.split(':').collect();
            let is_vnet = (parts.len() == 4 && parts[0] == "usdt" && parts[2] == "vnet")
                || (parts.len() == 4 && parts[0].starts_with("vnet"));
            if is_vnet {
                probes.push(parts[3].to_string());
            } else if !spec.trim().is_empty() {
                others.push(spec.to_string());
            }
        }
        let line = text[..i].lines().count();
        out.push(Clause {
            probes,
            others,
            body,
            line,
        });
        head.clear();
    }
    out
}

/// The format string and arguments of every printf in a clause body.
fn printfs(body: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(at) = rest.find("printf(") {
        rest = &rest[at + "printf(".len()..];
        let open = rest.find('"').expect("printf format string");
        let mut fmt = String::new();
        let mut escaped = false;
        let mut end = open + 1;
        for (j, c) in rest[open + 1..].char_indices() {
            end = open + 1 + j;
            if escaped {
                fmt.push('\\');
                fmt.push(c);
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                break;
            } else {
                fmt.push(c);
            }
        }
        rest = &rest[end + 1..];
        let mut depth = 0;
        let mut args = Vec::new();
        let mut cur = String::new();
        let mut close = rest.len();
        for (j, c) in rest.char_indices() {
            match c {
                // brackets too: a map key (@m[pid, fd]) is one argument
                '(' | '[' => depth += 1,
                ')' if depth == 0 => {
                    close = j;
                    break;
                }
                ')' | ']' => depth -= 1,
                ',' if depth == 0 => {
                    args.push(std::mem::take(&mut cur).trim().to_string());
                    continue;
                }
                _ => {}
            }
            cur.push(c);
        }
        if !cur.trim().is_empty() {
            args.push(cur.trim().to_string());
        }
        args.retain(|a| !a.is_empty());
        out.push((fmt, args));
        rest = &rest[close..];
    }
    out
}

fn scripts() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(root().join("probes"))
        .expect("probes/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("bt" | "d")))
        .collect();
    v.sort();
    v
}

#[test]
fn every_script_names_only_contract_probes_with_their_arguments() {
    let probes = provider_probes();
    let all = scripts();
    assert!(
        all.iter().any(|p| p.ends_with("enobufs.bt"))
            && all.iter().any(|p| p.ends_with("enobufs.d")),
        "capture scripts missing from probes/: {all:?}"
    );
    for path in all.iter().filter(|p| !is_syscall_script(p)) {
        let text = fs::read_to_string(path).unwrap();
        let mut used = 0;
        for c in clauses(&text) {
            for name in &c.probes {
                used += 1;
                let Some(&nargs) = probes.get(name) else {
                    panic!(
                        "{}:{}: probe {name} is not in dtrace/vnet.d",
                        path.display(),
                        c.line
                    );
                };
                for k in 0..10 {
                    if c.body.contains(&format!("arg{k}")) {
                        assert!(
                            k < nargs,
                            "{}:{}: {name} uses arg{k} but has {nargs} arguments",
                            path.display(),
                            c.line
                        );
                    }
                }
            }
        }
        assert!(used > 0, "{} attaches to no vnet probe", path.display());
    }
}

/// syscalls.bt and syscalls.d see a process through its system calls, not our probes.
fn is_syscall_script(path: &Path) -> bool {
    path.file_stem().and_then(|s| s.to_str()) == Some("syscalls")
}

/// The rows a syscall-level capture writes: what a system call can show.
const SYSCALL_ROWS: [&str; 7] = [
    "enobufs_begin",
    "enobufs_retry",
    "enobufs_resolved",
    "tx_frame",
    "rx_frame",
    "kevent_write",
    "kevent_read",
];

/// Checks every row a syscall script prints, wherever it prints it (one printf may write
/// two rows; the D script prints from macros): ten fields, a contract probe name in the
/// probe column, values exactly in the schema's columns for that probe (plus ts_ns and tid),
/// and as many printf arguments as values. Returns the probes it writes rows for.
fn check_syscall_rows(file: &str, text: &str) -> Vec<String> {
    let columns: Vec<&str> = HEADER.split(',').collect();
    let text = strip_comments(text);
    let all = printfs(&text);
    let headers: Vec<_> = all.iter().filter(|(f, _)| f.starts_with("ts_ns")).collect();
    assert_eq!(
        headers.len(),
        1,
        "{file}: expected exactly one header printf"
    );
    assert_eq!(
        headers[0].0,
        format!("{HEADER}\\n"),
        "{file}: header differs from the trace schema"
    );
    assert!(
        all.iter()
            .any(|(f, _)| f.starts_with("# clock mono_ns=%") && f.contains(" wall_ns=%")),
        "{file}: no '# clock mono_ns=.. wall_ns=..' line"
    );
    let mut seen = Vec::new();
    for (fmt, args) in all.iter().filter(|(f, _)| f.starts_with('%')) {
        let body = fmt
            .strip_suffix("\\n")
            .unwrap_or_else(|| panic!("{file}: row {fmt} does not end in \\n"));
        let mut values = 0;
        for row in body.split("\\n") {
            let fields: Vec<&str> = row.split(',').collect();
            assert_eq!(fields.len(), columns.len(), "{file}: {row}: column count");
            let name = fields[2];
            assert!(SYSCALL_ROWS.contains(&name), "{file}: {row}: probe {name}");
            let mut want: Vec<&str> = vec!["ts_ns", "tid"];
            want.extend(expected_columns(name).into_iter().map(|(c, _)| c));
            for (col, field) in columns.iter().zip(&fields) {
                if *col == "probe" {
                    continue;
                }
                let filled = field.starts_with('%');
                values += usize::from(filled);
                assert_eq!(
                    filled,
                    want.contains(col),
                    "{file}: {row}: column {col} must be {} for {name}",
                    if want.contains(col) {
                        "filled"
                    } else {
                        "empty"
                    }
                );
            }
            seen.push(name.to_string());
        }
        assert_eq!(
            values,
            args.len(),
            "{file}: {fmt}: {} values, {} arguments",
            values,
            args.len()
        );
    }
    if file.ends_with(".bt") {
        seen.extend(map_rows(file, &text));
    }
    seen.sort();
    seen.dedup();
    seen
}

/// probes/syscalls-rows.awk's table: probe number -> (row name, the columns the values A, B
/// and C of syscalls.bt's map rows go to).
fn awk_layouts() -> BTreeMap<String, (String, Vec<String>)> {
    let text = fs::read_to_string(root().join("probes/syscalls-rows.awk")).unwrap();
    assert!(
        text.contains(&format!("split(\"{HEADER}\", col, \",\")")),
        "syscalls-rows.awk: its column list is not the trace schema's header"
    );
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("layout[") else {
            continue;
        };
        let (num, value) = rest.split_once("] = \"").expect("layout[N] = \"...\"");
        let words: Vec<String> = value
            .trim_end_matches('"')
            .split(' ')
            .map(String::from)
            .collect();
        out.insert(num.to_string(), (words[0].clone(), words[1..].to_vec()));
    }
    out
}

/// The rows syscalls.bt keeps in its map (`@rows[cpu, $row] = (ts, tid, P, fd, A, B, C)`,
/// the CPU's next row number taken on the line before and stored on the line after, so
/// the number counts the row only once it is written), named and laid out by
/// syscalls-rows.awk: P must be in the awk's table, and fd plus the columns of A, B, C
/// must be exactly the schema's argument columns of that row. Returns the rows written.
fn map_rows(file: &str, text: &str) -> Vec<String> {
    let layouts = awk_layouts();
    let mut seen = Vec::new();
    let tuple = |line: &str| -> Option<Vec<String>> {
        let at = line.find("@rows[cpu, $row] = (")?;
        let rest = &line[at..];
        let rest = &rest[rest.find("= (").unwrap() + 3..];
        let (mut depth, mut cur, mut parts) = (0, String::new(), Vec::new());
        for c in rest.chars() {
            match c {
                '(' | '[' => depth += 1,
                ')' | ']' if depth > 0 => depth -= 1,
                ')' => break,
                ',' if depth == 0 => {
                    parts.push(cur.trim().to_string());
                    cur.clear();
                    continue;
                }
                _ => {}
            }
            cur.push(c);
        }
        parts.push(cur.trim().to_string());
        Some(parts)
    };
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let Some(mut t) = tuple(line) else {
            assert!(
                !line.contains("@rows[") || !line.contains(" = ") || line.contains("$r"),
                "{file}: {line}: a row written some other way"
            );
            continue;
        };
        assert!(
            i > 0 && lines[i - 1].trim() == "$row = @cpu_rows[cpu] + 1;",
            "{file}: {line}: the row number is not the CPU's next one"
        );
        assert!(
            lines.get(i + 1).map(|l| l.trim()) == Some("@cpu_rows[cpu] = $row;"),
            "{file}: {line}: the CPU's row count is not stored after the row"
        );
        assert_eq!(t.len(), 7, "{file}: {line}: (ts, tid, probe, fd, A, B, C)");
        assert_eq!(t[1], "(int64)tid", "{file}: {line}: tid");
        t.remove(1);
        assert_eq!(t.len(), 6, "{file}: {line}: (ts, probe, fd, A, B, C)");
        assert_eq!(t[2], "$fd", "{file}: {line}: fd");
        let (name, cols) = layouts.get(&t[1]).unwrap_or_else(|| {
            panic!(
                "{file}: {line}: probe number {} not in syscalls-rows.awk",
                t[1]
            )
        });
        assert!(
            SYSCALL_ROWS.contains(&name.as_str()),
            "{file}: {line}: {name}"
        );
        let mut got: Vec<&str> = cols.iter().map(String::as_str).collect();
        got.push("fd");
        got.sort();
        let mut want: Vec<&str> = expected_columns(name).into_iter().map(|(c, _)| c).collect();
        want.sort();
        assert_eq!(got, want, "syscalls-rows.awk: columns of {name}");
        for (k, v) in t[3..].iter().enumerate() {
            assert!(
                k < cols.len() || v == "0",
                "{file}: {line}: value {v} has no column in syscalls-rows.awk's {name}"
            );
        }
        seen.push(name.clone());
    }
    seen
}

#[test]
fn syscall_scripts_write_the_schema_csv() {
    let want: Vec<String> = {
        let mut v: Vec<String> = SYSCALL_ROWS.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    };
    for file in ["syscalls.bt", "syscalls.d"] {
        let text = fs::read_to_string(root().join("probes").join(file)).unwrap();
        assert!(
            clauses(&text).iter().all(|c| c.probes.is_empty()),
            "{file}: a syscall script attaches to no vnet probe"
        );
        assert_eq!(
            check_syscall_rows(file, &text),
            want,
            "{file}: rows written"
        );
    }
}

/// What `capture.sh --syscalls --no-frames` hands the tracer: syscalls.bt without its
/// `/* frames { */ ... /* } frames */` blocks (the sed range it runs), syscalls.d with its
/// `#if FRAMES` ... `#endif` blocks left out (what `dtrace -C -D FRAMES=0` compiles).
fn syscall_script_without_frames(file: &str, text: &str) -> String {
    let (open, close) = if file.ends_with(".bt") {
        ("/* frames { */", "/* } frames */")
    } else {
        ("#if FRAMES", "#endif")
    };
    let mut out = Vec::new();
    let mut skipping = false;
    for line in text.lines() {
        if !skipping && line.trim() == open {
            skipping = true;
        } else if skipping && line.trim() == close {
            skipping = false;
        } else if !skipping {
            out.push(line);
        }
    }
    assert!(!skipping, "{file}: unterminated frames block");
    out.join("\n")
}

#[test]
fn syscall_scripts_without_frames_trace_no_receives_and_write_no_frame_rows() {
    let want: Vec<String> = {
        let mut v: Vec<String> = SYSCALL_ROWS
            .iter()
            .filter(|p| !FRAME_PROBES.contains(p))
            .map(|s| s.to_string())
            .collect();
        v.sort();
        v
    };
    for file in ["syscalls.bt", "syscalls.d"] {
        let text = fs::read_to_string(root().join("probes").join(file)).unwrap();
        let cut = syscall_script_without_frames(file, &text);
        assert_eq!(
            check_syscall_rows(file, &cut),
            want,
            "{file} without frames: rows written"
        );
        for call in [
            "recvfrom",
            "recvmsg",
            "recvmmsg",
            "recvmsg_x",
            "read",
            "readv",
        ] {
            assert!(
                !cut.contains(&format!("sys_enter_{call}"))
                    && !cut.contains(&format!("syscall::{call}:")),
                "{file} without frames still traces {call}"
            );
        }
    }
}

#[test]
fn syscall_row_check_catches_a_misplaced_column() {
    let good = "BEGIN { printf(\"# clock mono_ns=%d wall_ns=%d\\n\", a, b); printf(\"ts_ns,tid,probe,fd,queue,len,data,retries,wait_ns,errno\\n\"); }\n\
                x { printf(\"%d,%d,tx_frame,%d,,%d,,,,\\n\", a, b, c, d); }";
    assert_eq!(check_syscall_rows("t", good), vec!["tx_frame".to_string()]);
    // len of tx_frame in the data column
    let bad = good.replace(",,%d,,,,", ",,,%d,,,");
    assert!(std::panic::catch_unwind(|| check_syscall_rows("t", &bad)).is_err());
}

#[test]
fn map_row_check_catches_wrong_numbers_values_and_maps() {
    let good = "\t\t$row = @cpu_rows[cpu] + 1;\n\t\t@rows[cpu, $row] = ($now, (int64)tid, 4, $fd, $ret, 0, 0);\n\t\t@cpu_rows[cpu] = $row;\n";
    assert_eq!(map_rows("t", good), vec!["tx_frame".to_string()]);
    for bad in [
        // a probe number the awk does not know
        good.replace("(int64)tid, 4,", "(int64)tid, 9,"),
        // a value with no column for tx_frame
        good.replace("$ret, 0, 0", "$ret, $x, 0"),
        // no tid
        good.replace("(int64)tid, ", ""),
        // the count not stored: the awk could not tell lost rows, the drain would not see it
        good.replace("\t\t@cpu_rows[cpu] = $row;\n", ""),
        // the number not the CPU's next one
        good.replace("$row = @cpu_rows[cpu] + 1;", "$row = @cpu_rows[cpu];"),
    ] {
        assert!(
            std::panic::catch_unwind(|| map_rows("t", &bad)).is_err(),
            "{bad}"
        );
    }
}

/// syscalls-rows.awk on the two forms syscalls.bt prints rows in: the drain's lines of
/// three (empty slots have ts 0), one arriving before the header, and the map lines of
/// what END still found, with each CPU's count, of which two rows are missing.
#[test]
fn syscalls_rows_awk_reads_both_forms_and_counts_a_lost_row() {
    // (a CPU's line may reach the awk before the header, which another CPU printed)
    let input = "R 1  100 7 4 9 1514 0 0  101 7 3 9 1514 2 55  0 0 0 0 0 0 0\n\
                 # clock mono_ns=1 wall_ns=2\n\
                 ts_ns,tid,probe,fd,queue,len,data,retries,wait_ns,errno\n\
                 \n\
                 @rows[1, 4]: (150, 8, 5, 9, 66, 0, 0)\n\
                 @cpu_rows[1]: 5\n";
    let dir = std::env::temp_dir().join(format!("vnet-rows-awk-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let raw = dir.join("raw.txt");
    fs::write(&raw, input).unwrap();
    let out = std::process::Command::new("awk")
        .arg("-f")
        .arg(root().join("probes/syscalls-rows.awk"))
        .arg(&raw)
        .output()
        .expect("awk runs");
    let _ = fs::remove_dir_all(&dir);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "awk failed: {stderr}");
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            "# clock mono_ns=1 wall_ns=2",
            HEADER,
            "100,7,tx_frame,9,,1514,,,,",
            "101,7,enobufs_resolved,9,,1514,,2,55,",
            "150,8,rx_frame,9,,66,,,,",
        ]
    );
    assert!(
        stderr.contains("lost 2 rows of 5"),
        "the two rows counted but never printed are reported: {stderr}"
    );
}

/// The per-frame probes: the ones a capture for long runs leaves out.
const FRAME_PROBES: [&str; 2] = ["tx_frame", "rx_frame"];

/// Checks one variant of a capture script: the clock line, the schema's header, and one
/// row clause per probe in `want`, each putting its arguments in the schema's columns.
fn check_capture(file: &str, text: &str, ts_expr: &str, want: &[&String]) {
    let columns: Vec<&str> = HEADER.split(',').collect();
    let cl = clauses(text);
    let headers: Vec<_> = cl
        .iter()
        .filter(|c| c.probes.is_empty())
        .flat_map(|c| printfs(&c.body))
        .filter(|(f, _)| f.starts_with("ts_ns"))
        .collect();
    assert_eq!(
        headers.len(),
        1,
        "{file}: expected exactly one header printf"
    );
    assert_eq!(
        headers[0].0,
        format!("{HEADER}\\n"),
        "{file}: header differs from the trace schema"
    );
    assert!(
        cl.iter()
            .flat_map(|c| printfs(&c.body))
            .any(|(f, _)| f.starts_with("# clock mono_ns=%") && f.contains(" wall_ns=%")),
        "{file}: no '# clock mono_ns=.. wall_ns=..' line"
    );

    let mut seen = BTreeMap::new();
    for c in cl.iter().filter(|c| !c.probes.is_empty()) {
        assert_eq!(c.probes.len(), 1, "{file}:{}: one probe per clause", c.line);
        let name = &c.probes[0];
        *seen.entry(name.clone()).or_insert(0) += 1;
        let rows = printfs(&c.body);
        assert_eq!(
            rows.len(),
            1,
            "{file}:{}: {name} must print one row",
            c.line
        );
        let (fmt, args) = &rows[0];
        let fmt = fmt
            .strip_suffix("\\n")
            .unwrap_or_else(|| panic!("{file}:{}: {name} row does not end in \\n", c.line));
        let fields: Vec<&str> = fmt.split(',').collect();
        assert_eq!(
            fields.len(),
            columns.len(),
            "{file}:{}: {name}: column count",
            c.line
        );
        let mut args = args.iter();
        let mut got = BTreeMap::new();
        for (col, field) in columns.iter().zip(&fields) {
            if field.starts_with('%') {
                let arg = args.next().unwrap_or_else(|| {
                    panic!("{file}:{}: {name}: too few printf arguments", c.line)
                });
                got.insert(*col, arg.clone());
            } else if *col == "probe" {
                assert_eq!(field, name, "{file}:{}: probe column", c.line);
            } else {
                assert!(
                    field.is_empty(),
                    "{file}:{}: {name}: literal in {col}",
                    c.line
                );
            }
        }
        assert!(
            args.next().is_none(),
            "{file}:{}: {name}: extra printf arguments",
            c.line
        );
        let mut schema = BTreeMap::new();
        schema.insert("ts_ns", ts_expr.to_string());
        schema.insert("tid", "tid".to_string());
        for (col, k) in expected_columns(name) {
            schema.insert(col, format!("arg{k}"));
        }
        assert_eq!(
            got, schema,
            "{file}:{}: {name}: columns differ from the trace schema",
            c.line
        );
    }
    for (name, n) in &seen {
        assert_eq!(
            *n, 1,
            "{file}: {name} needs exactly one row clause, has {n}"
        );
    }
    let mut seen: Vec<&String> = seen.keys().collect();
    seen.sort();
    let mut want = want.to_vec();
    want.sort();
    assert_eq!(seen, want, "{file}: probes with a row clause");
}

/// Evaluates the preprocessor lines of enobufs.d the way `dtrace -C [-D FRAMES=n]` would:
/// `#ifndef`, `#define NAME VALUE` (an integer where `#if` reads it; function-like macros
/// and sizes such as `16m` are only recorded), `#if NAME`, `#else`, `#endif`; `#pragma`
/// is kept.
/// Anything else panics, so the script cannot grow conditionals this check would misread.
/// Lines left out become blank lines, keeping line numbers in messages right.
fn preprocess(file: &str, text: &str, frames: Option<i64>) -> String {
    let mut defines: BTreeMap<String, String> = BTreeMap::new();
    if let Some(n) = frames {
        defines.insert("FRAMES".into(), n.to_string());
    }
    let mut active: Vec<bool> = Vec::new();
    let mut out = Vec::new();
    let text = strip_comments(text);
    for (i, line) in text.lines().enumerate() {
        let on = active.iter().all(|&a| a);
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["#ifndef", name] => active.push(!defines.contains_key(*name)),
            ["#if", name] => {
                let value = defines.get(*name).map_or(Ok(0), |v| v.parse::<i64>());
                let value = value
                    .unwrap_or_else(|_| panic!("{file}:{}: #if {name}: not an integer", i + 1));
                active.push(value != 0)
            }
            ["#else"] => {
                let top = active.last_mut().expect("#else without #if");
                *top = !*top;
            }
            ["#endif"] => {
                active
                    .pop()
                    .unwrap_or_else(|| panic!("{file}:{}: #endif without #if", i + 1));
            }
            ["#define", name, value @ ..] if !value.is_empty() => {
                if on {
                    defines.insert(name.to_string(), value.join(" "));
                }
            }
            [d, ..] if d.starts_with('#') && *d != "#pragma" && *d != "#!/usr/sbin/dtrace" => {
                panic!(
                    "{file}:{}: directive {d} is not understood by this check",
                    i + 1
                )
            }
            _ => {
                out.push(if on { line } else { "" });
                continue;
            }
        }
        out.push("");
    }
    assert!(active.is_empty(), "{file}: unterminated #if");
    out.join("\n")
}

/// `probes/noframes.awk` over enobufs.bt: the script `capture.sh --no-frames` runs.
fn bpftrace_without_frames() -> String {
    let out = std::process::Command::new("awk")
        .arg("-f")
        .arg(root().join("probes/noframes.awk"))
        .arg(root().join("probes/enobufs.bt"))
        .output()
        .expect("run awk (needed to check probes/noframes.awk)");
    assert!(
        out.status.success(),
        "noframes.awk failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn capture_scripts_write_the_schema_csv() {
    let probes = provider_probes();
    let all: Vec<&String> = probes.keys().collect();
    let no_frames: Vec<&String> = probes
        .keys()
        .filter(|p| !FRAME_PROBES.contains(&p.as_str()))
        .collect();
    assert_eq!(
        no_frames.len() + 2,
        all.len(),
        "frame probes missing from vnet.d"
    );

    let bt = fs::read_to_string(root().join("probes/enobufs.bt")).unwrap();
    check_capture("enobufs.bt", &bt, "nsecs", &all);
    check_capture(
        "enobufs.bt | noframes.awk",
        &bpftrace_without_frames(),
        "nsecs",
        &no_frames,
    );

    let d = fs::read_to_string(root().join("probes/enobufs.d")).unwrap();
    for (frames, want) in [(None, &all), (Some(1), &all), (Some(0), &no_frames)] {
        let name = format!("enobufs.d (dtrace -C, FRAMES={frames:?})");
        check_capture(&name, &preprocess(&name, &d, frames), "timestamp", want);
    }
}

#[test]
fn preprocess_follows_cpp_for_the_frames_switch() {
    let text = "#ifndef FRAMES\n#define FRAMES 1\n#endif\na\n#if FRAMES\nb\n#else\nc\n#endif\nd";
    let keep = |f| -> Vec<String> {
        preprocess("t", text, f)
            .lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    };
    assert_eq!(keep(None), ["a", "b", "d"]);
    assert_eq!(keep(Some(0)), ["a", "c", "d"]);
}

#[test]
fn clause_parser_reads_predicates_and_multi_probe_heads() {
    let prog = "BEGIN { printf(\"a,b\\n\", x); }\n\
                usdt:$1:vnet:tx_frame,\nusdt:$1:vnet:rx_frame\n/$2 != 0/\n{ @n[probe] = count(); }\n\
                vnet$target:::kevent_write /arg1 < 5/ { printf(\"%d\", (arg1 + 1)); }";
    let c = clauses(prog);
    assert_eq!(c.len(), 3);
    assert_eq!(c[0].others, vec!["BEGIN"]);
    assert_eq!(c[1].probes, vec!["tx_frame", "rx_frame"]);
    assert_eq!(c[2].probes, vec!["kevent_write"]);
    assert_eq!(
        printfs(&c[2].body),
        vec![("%d".to_string(), vec!["(arg1 + 1)".to_string()])]
    );
}

/// Runs a real C preprocessor over `script` the way Apple's dtrace does for `-C` (`clang
/// -E -xc -U__GNUC__ -D__APPLE__`, the `#!` line left out), or GNU cpp when clang is
/// missing; `None` when neither is installed.
fn dtrace_cpp(script: &str, defines: &[&str]) -> Option<String> {
    let text = fs::read_to_string(root().join("probes").join(script)).unwrap();
    // dtrace drops the interpreter line itself before running cpp
    let body: String = text
        .lines()
        .map(|l| if l.starts_with("#!") { "" } else { l })
        .collect::<Vec<_>>()
        .join("\n");
    let path = std::env::temp_dir().join(format!("vnet-dcpp-{}-{script}", std::process::id()));
    fs::write(&path, body).unwrap();
    let runs: [(&str, &[&str]); 2] = [
        ("clang", &["-E", "-xc", "-U__GNUC__", "-D__APPLE__"]),
        ("cpp", &["-P"]),
    ];
    let mut result = None;
    for (tool, args) in runs {
        let mut cmd = std::process::Command::new(tool);
        cmd.args(args);
        for d in defines {
            cmd.arg(format!("-D{d}"));
        }
        let Ok(out) = cmd.arg(&path).output() else {
            continue;
        };
        assert!(
            out.status.success(),
            "{tool} over {script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        result = Some(String::from_utf8(out.stdout).unwrap());
        break;
    }
    let _ = fs::remove_file(&path);
    result
}

#[test]
fn dtrace_options_are_cpp_macros_with_the_documented_defaults() {
    // (script, option, default, an override)
    let cases = [
        ("enobufs.d", "bufsize", "16m", "BUFSIZE=64m"),
        ("enobufs.d", "switchrate", "100hz", "SWITCHRATE=200hz"),
        ("enobufs.d", "dynvarsize", "4m", "DYNVARSIZE=8m"),
        ("stall.d", "switchrate", "100hz", "SWITCHRATE=200hz"),
        ("enobufs-hist.d", "dynvarsize", "4m", "DYNVARSIZE=8m"),
    ];
    for (script, option, default, over) in cases {
        let Some(plain) = dtrace_cpp(script, &[]) else {
            eprintln!("skipped: neither clang nor cpp is installed to preprocess {script}");
            return;
        };
        let pragma = |v: &str| format!("#pragma D option {option}={v}");
        assert!(plain.contains(&pragma(default)), "{script}: {plain}");
        assert!(
            !plain.contains("VNET_OPTION"),
            "{script}: macro left unexpanded"
        );
        let value = over.split_once('=').unwrap().1;
        let set = dtrace_cpp(script, &[over]).unwrap();
        assert!(set.contains(&pragma(value)), "{script} -D {over}: {set}");
        assert!(!set.contains(&pragma(default)), "{script} -D {over}: {set}");
        // The header documents the macro, its default and how to set it.
        let text = fs::read_to_string(root().join("probes").join(script)).unwrap();
        let name = over.split_once('=').unwrap().0;
        assert!(
            text.contains(&format!("-D {over}")) && text.contains(&format!("(default {default})")),
            "{script}: header does not document -D {name}"
        );
    }
}
