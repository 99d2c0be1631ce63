//! The trace CSV of design.md: a `# clock` comment, the header, one row per probe firing.
//!
//! Rows are parsed by hand rather than through csv+serde: the format has no quoting, and a
//! 10M-row capture must be reported faster than polars or DuckDB read it (see bench/).

use crate::error::Error;
use crate::event::{Event, Kind};

pub const COLUMNS: [&str; 10] = [
    "ts_ns", "tid", "probe", "fd", "queue", "len", "data", "retries", "wait_ns", "errno",
];
pub const HEADER: &str = "ts_ns,tid,probe,fd,queue,len,data,retries,wait_ns,errno";

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
            found: text.into_owned(),
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
        msg: format!("not a number: {:?}", String::from_utf8_lossy(bytes)),
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
    // One pass, one branch per byte in the common case: commas end fields, digits accumulate.
    let mut vals = [0i64; 10];
    let mut present: u16 = 0;
    let mut field = 0usize;
    let mut v: i64 = 0;
    let mut ndigits = 0u32;
    let mut neg = false;
    let mut field_start = 0usize;
    let mut probe = (0usize, 0usize);
    let mut i = 0usize;
    let n = line.len();
    while i < n {
        let b = line[i];
        if b == b',' {
            if field == 2 {
                probe = (field_start, i);
            } else {
                if ndigits > 18 || (neg && ndigits == 0) {
                    return Err(field_error(file, line_no, line, field, field_start));
                }
                if ndigits > 0 {
                    vals[field] = if neg { -v } else { v };
                    present |= 1 << field;
                }
            }
            field += 1;
            if field == 10 {
                break; // extra columns from a newer producer are ignored
            }
            v = 0;
            ndigits = 0;
            neg = false;
            field_start = i + 1;
        } else if field != 2 {
            let d = b.wrapping_sub(b'0');
            if d <= 9 {
                v = v.wrapping_mul(10).wrapping_add(d as i64);
                ndigits += 1;
            } else if b == b'-' && ndigits == 0 && !neg {
                neg = true;
            } else {
                return Err(field_error(file, line_no, line, field, field_start));
            }
        }
        i += 1;
    }
    if field < 9 {
        return Err(missing(
            COLUMNS[field + 1],
            file,
            line_no,
            &format!("missing: the row has {} of 10 fields", field + 1),
        ));
    }
    if field == 9 {
        if ndigits > 18 || (neg && ndigits == 0) {
            return Err(field_error(file, line_no, line, 9, field_start));
        }
        if ndigits > 0 {
            vals[9] = if neg { -v } else { v };
            present |= 1 << 9;
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
    let kind = Kind::from_probe_name(name).ok_or_else(|| Error::Field {
        file: file.to_string(),
        line: line_no,
        field: "probe",
        msg: format!("unknown probe {:?}", String::from_utf8_lossy(name)),
    })?;
    let (tid, fd, queue, len, data, retries, wait_ns, errno) =
        (opt(1), opt(3), opt(4), opt(5), opt(6), opt(7), opt(8), opt(9));
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
    // The columns each probe must fill (design.md); an empty one is a broken producer.
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
                &format!("empty, but {} rows must fill it", kind.probe_name()),
            ));
        }
    }
    Ok(())
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
        ev.kind.probe_name(),
        opt(ev.fd),
        opt(ev.queue),
        opt(ev.len),
        opt(ev.data),
        opt(ev.retries),
        opt(ev.wait_ns),
        opt(ev.errno)
    )
}
