//! The trace CSV (schema in the `vnet-trace-schema` crate): a `# clock` comment, the header, one row per probe firing.
//!
//! Rows are parsed by hand rather than through csv+serde: the format has no quoting, and a
//! 10M-row capture must be reported faster than polars or DuckDB read it (see bench/).

use crate::error::Error;
use crate::event::{Event, Kind};

pub use vnet_trace_schema::{COLUMN_NAMES as COLUMNS, HEADER};

/// Checks the header line; extra trailing columns are allowed (the contract lets producers
/// extend arguments, never reorder them).
pub fn check_header(file: &str, line_no: u64, line: &[u8]) -> Result<(), Error> {
    let text = String::from_utf8_lossy(line);
    let found: Vec<&str> = text.split(',').map(str::trim).collect();
    if found.len() < COLUMNS.len() || found[..COLUMNS.len()] != COLUMNS {
        return Err(Error::Header {
            file: file.to_string(),
            line: line_no,
            expected: HEADER.to_string(),
            found: crate::input::shorten(&text),
        });
    }
    Ok(())
}

/// `# clock mono_ns=<ts> wall_ns=<unix ns>` gives the offset from the trace clock to wall time.
pub fn parse_clock_comment(line: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(line).ok()?;
    let rest = text.trim_start_matches('#').trim().strip_prefix("clock")?;
    let mut mono = None;
    let mut wall = None;
    for part in rest.split_whitespace() {
        if let Some(v) = part.strip_prefix("mono_ns=") {
            mono = v.parse::<i64>().ok();
        } else if let Some(v) = part.strip_prefix("wall_ns=") {
            wall = v.parse::<i64>().ok();
        }
    }
    Some(wall? - mono?)
}

#[cold]
fn bad_number(bytes: &[u8], field: &'static str, file: &str, line: u64) -> Error {
    Error::Field {
        file: file.to_string(),
        line,
        field,
        msg: format!("not a number: {}", crate::input::quote(bytes)),
    }
}

#[cold]
fn missing(field: &'static str, file: &str, line: u64, msg: &str) -> Error {
    Error::Field {
        file: file.to_string(),
        line,
        field,
        msg: msg.to_string(),
    }
}

/// Parses one data row in a single pass over its bytes (no per-field searching).
pub fn parse_row(file: &str, file_idx: u32, line_no: u64, line: &[u8]) -> Result<Event, Error> {
    let mut ev = Event::new(Kind::TxFrame, 0);
    parse_row_into(&mut ev, file, file_idx, line_no, line)?;
    Ok(ev)
}

/// [`parse_row`] writing into a caller's slot: the hot path parses straight into the reorder
/// buffer, so a row is never copied on its way to the analysis.
#[inline]
pub fn parse_row_into(
    out: &mut Event,
    file: &str,
    file_idx: u32,
    line_no: u64,
    line: &[u8],
) -> Result<(), Error> {
    let mut vals = [0i64; 10];
    let mut present: u16 = 0;
    let mut pos = 0usize;
    let mut probe = (0usize, 0usize);
    for field in 0..10 {
        if field == 2 {
            // Probe names are short: a plain scan beats memchr's setup cost here.
            let end = match line[pos..].iter().position(|&b| b == b',') {
                Some(i) => pos + i,
                None => {
                    return Err(missing(
                        "fd",
                        file,
                        line_no,
                        "missing: the row has 3 of 10 fields",
                    ))
                }
            };
            probe = (pos, end);
            pos = end + 1;
            continue;
        }
        let start = pos;
        match int_at(line, &mut pos) {
            Some(Some(v)) => {
                vals[field] = v;
                present |= 1 << field;
            }
            Some(None) => {}
            None => return Err(field_error(file, line_no, line, field, start)),
        }
        // `pos` now sits after the field's comma, or at the end of the line.
        let took_comma = pos > start && line[pos - 1] == b',';
        if field < 9 && !took_comma {
            return Err(missing(
                COLUMNS[field + 1],
                file,
                line_no,
                &format!("missing: the row has {} of 10 fields", field + 1),
            ));
        }
    }
    let opt = |k: usize| {
        if present & (1 << k) != 0 {
            Some(vals[k])
        } else {
            None
        }
    };
    let ts_ns = opt(0).ok_or_else(|| missing("ts_ns", file, line_no, "empty"))?;
    let name = &line[probe.0..probe.1];
    let kind = Kind::from_name(name).ok_or_else(|| Error::Field {
        file: file.to_string(),
        line: line_no,
        field: "probe",
        msg: format!("unknown probe {}", crate::input::quote(name)),
    })?;
    let (tid, fd, queue, len, data, retries, wait_ns, errno) = (
        opt(1),
        opt(3),
        opt(4),
        opt(5),
        opt(6),
        opt(7),
        opt(8),
        opt(9),
    );
    *out = Event {
        ts_ns,
        tid,
        kind,
        fd,
        queue,
        len,
        data,
        retries,
        wait_ns,
        errno,
        file: file_idx,
        line: line_no,
    };
    let ev = &*out;
    // Columns the analysis cannot do without (each one the probe fills, see `required_columns`);
    // an empty one is a broken producer.
    let required: &[(&'static str, Option<i64>)] = match kind {
        Kind::EnobufsBegin => &[("fd", ev.fd)],
        Kind::EnobufsRetry => &[("fd", ev.fd)],
        Kind::EnobufsResolved => &[("fd", ev.fd), ("retries", ev.retries)],
        Kind::KeventWrite | Kind::KeventRead => &[("fd", ev.fd)],
        Kind::TxFrame | Kind::RxFrame => &[("len", ev.len)],
        _ => &[],
    };
    for (name, value) in required {
        if value.is_none() {
            return Err(missing(
                name,
                file,
                line_no,
                &format!("empty, but {} rows must fill it", kind.name()),
            ));
        }
    }
    // Failed sends, the first included: a retry row's attempt is 2 or more, a resolution's
    // count 1 or more. Zero or less would become a nonsense table row.
    let least = match kind {
        Kind::EnobufsResolved => 1,
        Kind::EnobufsRetry => 2,
        _ => i64::MIN,
    };
    if let Some(r) = ev.retries.filter(|&r| r < least) {
        return Err(missing(
            "retries",
            file,
            line_no,
            &format!("{r}, but {} rows count at least {least}", kind.name()),
        ));
    }
    Ok(())
}

/// The columns `parse_row` insists on, by probe: a subset of what the schema says the probe
/// fills (a test checks that).
#[cfg(test)]
fn required_columns(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::EnobufsBegin | Kind::EnobufsRetry | Kind::KeventWrite | Kind::KeventRead => &["fd"],
        Kind::EnobufsResolved => &["fd", "retries"],
        Kind::TxFrame | Kind::RxFrame => &["len"],
        _ => &[],
    }
}

/// Parses the integer field at `*pos` and moves past its comma. `Some(None)` is an empty
/// field, `None` a malformed one. Digits are taken eight at a time (SWAR): a trace row is
/// mostly digits, and this is the analyzer's hottest loop.
#[inline(always)]
fn int_at(line: &[u8], pos: &mut usize) -> Option<Option<i64>> {
    let rest = &line[*pos..];
    let Some(&first) = rest.first() else {
        return Some(None);
    };
    if first == b',' {
        *pos += 1;
        return Some(None);
    }
    let (neg, skip) = if first == b'-' { (true, 1) } else { (false, 0) };
    let mut i = skip;
    let mut v: u64 = 0;
    loop {
        if rest.len() >= i + 8 {
            let x = u64::from_le_bytes(rest[i..i + 8].try_into().expect("8 bytes"));
            let k = leading_digits(x);
            if k > 0 {
                v = v.wrapping_mul(POW10[k]).wrapping_add(swar_digits(x, k));
                i += k;
            }
            if k < 8 {
                break;
            }
        } else {
            while i < rest.len() {
                let d = rest[i].wrapping_sub(b'0');
                if d > 9 {
                    break;
                }
                v = v.wrapping_mul(10).wrapping_add(d as u64);
                i += 1;
            }
            break;
        }
    }
    let ndigits = i - skip;
    if ndigits == 0 || ndigits > 18 {
        return None;
    }
    match rest.get(i) {
        None => {}
        Some(b',') => i += 1,
        Some(_) => return None,
    }
    *pos += i;
    let v = v as i64;
    Some(Some(if neg { -v } else { v }))
}

const POW10: [u64; 9] = [
    1,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
];

/// How many of the 8 bytes (first = lowest) are ASCII digits before the first non-digit.
#[inline(always)]
fn leading_digits(x: u64) -> usize {
    const HI: u64 = 0xF0F0_F0F0_F0F0_F0F0;
    const THIRTY: u64 = 0x3030_3030_3030_3030;
    // A digit has high nibble 3, and adding 6 to its low nibble does not carry into it.
    let bad = ((x & HI) ^ THIRTY) | ((x.wrapping_add(0x0606_0606_0606_0606) & HI) ^ THIRTY);
    if bad == 0 {
        8
    } else {
        (bad.trailing_zeros() / 8) as usize
    }
}

/// The value of the first `k` (1..=8) ASCII digits of `x` (first digit = lowest byte).
#[inline(always)]
fn swar_digits(x: u64, k: usize) -> u64 {
    // Move the k digits to the top bytes; the zero bytes below act as leading zeros.
    let mut v = (x & 0x0F0F_0F0F_0F0F_0F0F) << (8 * (8 - k));
    v = (v.wrapping_mul(10 * 256 + 1)) >> 8;
    v = ((v & 0x00FF_00FF_00FF_00FF).wrapping_mul(100 * 65536 + 1)) >> 16;
    ((v & 0x0000_FFFF_0000_FFFF).wrapping_mul(10_000 * (1 << 32) + 1)) >> 32
}

/// The error for field `idx` starting at byte `start`: the whole field text is quoted.
#[cold]
fn field_error(file: &str, line_no: u64, line: &[u8], idx: usize, start: usize) -> Error {
    let end = memchr::memchr(b',', &line[start..]).map_or(line.len(), |i| start + i);
    bad_number(&line[start..end], COLUMNS[idx], file, line_no)
}

/// Writes one event as a CSV row (used by the generator and tests).
pub fn write_row(out: &mut impl std::io::Write, ev: &Event) -> std::io::Result<()> {
    fn opt(v: Option<i64>) -> String {
        v.map(|v| v.to_string()).unwrap_or_default()
    }
    writeln!(
        out,
        "{},{},{},{},{},{},{},{},{},{}",
        ev.ts_ns,
        opt(ev.tid),
        ev.kind.name(),
        opt(ev.fd),
        opt(ev.queue),
        opt(ev.len),
        opt(ev.data),
        opt(ev.retries),
        opt(ev.wait_ns),
        opt(ev.errno)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_at_matches_naive_parsing() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..20_000 {
            seed ^= seed << 7;
            seed ^= seed >> 9;
            let digits = (seed % 19) as u32;
            let v: i64 = if digits == 0 {
                0
            } else {
                (seed >> 5) as i64 % 10i64.pow(digits.min(18))
            };
            let neg = seed & 1 == 1;
            let text = if neg {
                format!("-{v},7,")
            } else {
                format!("{v},7,")
            };
            let mut pos = 0;
            let got = int_at(text.as_bytes(), &mut pos);
            assert_eq!(got, Some(Some(if neg { -v } else { v })), "{text}");
            assert_eq!(&text.as_bytes()[pos..], b"7,");
            // Same value at the end of a line (the byte-wise tail path).
            let tail = format!("{v}");
            let mut pos = 0;
            assert_eq!(int_at(tail.as_bytes(), &mut pos), Some(Some(v)));
        }
        for bad in ["1x,", "-,", "12345678901234567890,", "1 2,", "0x10,"] {
            let mut pos = 0;
            assert_eq!(int_at(bad.as_bytes(), &mut pos), None, "{bad}");
        }
        let mut pos = 0;
        assert_eq!(int_at(b",5", &mut pos), Some(None));
        assert_eq!(pos, 1);
    }

    #[test]
    fn required_columns_are_filled_by_the_probe_and_enforced() {
        use vnet_trace_schema::Column;
        for kind in Kind::ALL {
            for name in required_columns(kind) {
                let col = Column::ALL.into_iter().find(|c| c.name() == *name).unwrap();
                assert!(kind.fills(col), "{} {name}", kind.name());
                // A row with every argument column filled except this one is refused.
                let fields: Vec<String> = Column::ALL[3..]
                    .iter()
                    .map(|c| if c == &col { String::new() } else { "1".into() })
                    .collect();
                let line = format!("5,1,{},{}", kind.name(), fields.join(","));
                let e = parse_row("f", 0, 2, line.as_bytes())
                    .unwrap_err()
                    .to_string();
                assert!(e.contains(&format!("field `{name}`: empty")), "{line}: {e}");
            }
        }
    }

    #[test]
    fn rows_parse_and_reject() {
        let ev = parse_row("f", 0, 1, b"1000003165,101,rx_frame,7,,65550,,,,").unwrap();
        assert_eq!(
            (ev.ts_ns, ev.tid, ev.kind, ev.fd, ev.len, ev.errno),
            (
                1000003165,
                Some(101),
                Kind::RxFrame,
                Some(7),
                Some(65550),
                None
            )
        );
        let ev = parse_row("f", 0, 1, b"5,1,kevent_write,7,,,-1,,,,extra,cols").unwrap();
        assert_eq!(ev.data, Some(-1));
        let e = parse_row("f", 0, 3, b"5,1,kevent_write,7,,,-1,,")
            .unwrap_err()
            .to_string();
        assert!(e.contains("f:3: field `errno`: missing"), "{e}");
        let e = parse_row("f", 0, 3, b"5,1,kevent_write,7")
            .unwrap_err()
            .to_string();
        assert!(e.contains("field `queue`: missing"), "{e}");
        let e = parse_row("f", 0, 3, b"5,1,kevent_write,7a,,,-1,,,")
            .unwrap_err()
            .to_string();
        assert!(e.contains("field `fd`: not a number: \"7a\""), "{e}");
    }
}
