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

/// Parses a decimal integer field; empty means "not applicable".
#[inline]
fn int_field(
    bytes: &[u8],
    field: &'static str,
    file: &str,
    line: u64,
) -> Result<Option<i64>, Error> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let (neg, digits) = match bytes[0] {
        b'-' => (true, &bytes[1..]),
        _ => (false, bytes),
    };
    if digits.is_empty() || digits.len() > 18 {
        return Err(bad_number(bytes, field, file, line));
    }
    let mut v: i64 = 0;
    for &b in digits {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return Err(bad_number(bytes, field, file, line));
        }
        v = v * 10 + d as i64;
    }
    Ok(Some(if neg { -v } else { v }))
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

/// Parses one data row.
pub fn parse_row(file: &str, file_idx: u32, line_no: u64, line: &[u8]) -> Result<Event, Error> {
    let mut fields: [&[u8]; 10] = [&[]; 10];
    let mut n = 0;
    let mut start = 0;
    for i in memchr::memchr_iter(b',', line) {
        if n == 9 {
            break; // extra columns from a newer producer are ignored
        }
        fields[n] = &line[start..i];
        n += 1;
        start = i + 1;
    }
    if n < 9 {
        return Err(missing(
            COLUMNS[n + 1],
            file,
            line_no,
            &format!("missing: the row has {} of 10 fields", n + 1),
        ));
    }
    let last_end = memchr::memchr(b',', &line[start..]).map_or(line.len(), |i| start + i);
    fields[9] = &line[start..last_end];

    let ts_ns = int_field(fields[0], "ts_ns", file, line_no)?
        .ok_or_else(|| missing("ts_ns", file, line_no, "empty"))?;
    let kind = Kind::from_probe_name(fields[2]).ok_or_else(|| Error::Field {
        file: file.to_string(),
        line: line_no,
        field: "probe",
        msg: format!("unknown probe {:?}", String::from_utf8_lossy(fields[2])),
    })?;
    let ev = Event {
        ts_ns,
        tid: int_field(fields[1], "tid", file, line_no)?,
        kind,
        fd: int_field(fields[3], "fd", file, line_no)?,
        queue: int_field(fields[4], "queue", file, line_no)?,
        len: int_field(fields[5], "len", file, line_no)?,
        data: int_field(fields[6], "data", file, line_no)?,
        retries: int_field(fields[7], "retries", file, line_no)?,
        wait_ns: int_field(fields[8], "wait_ns", file, line_no)?,
        errno: int_field(fields[9], "errno", file, line_no)?,
        file: file_idx,
        line: line_no,
    };
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
    Ok(ev)
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
