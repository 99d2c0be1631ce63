//! Reference VMM log lines (containers/libkrun around PR 556) turned into [`Event`]s.
//!
//! Recognised messages (anywhere after the timestamp, whatever the level and target):
//! - `write_frame: ENOBUFS` (or `EAGAIN`): the first one opens an episode; a repeat before the
//!   resolution is a failed retry (pre-PR builds logged every failure).
//! - `write_frame: ENOBUFS resolved after N retries`: closes the episode.
//! - `kevent: WRITE fd=.. data=..`, `kevent: READ fd=.. data=..`, `kevent: TIMER` wake-ups.
//! - frames: the old `Written eth frame to proxy: N bytes` / `Read eth frame from proxy: N bytes`
//!   and the unified `Written frame size=S, written=W` / `Read frame size=S` forms (any
//!   `... frame ...` line starting with Written/Read whose size is `: N bytes` or `size=N`).
//! - `interrupt: signal_used_queue`: the device signalled the guest.
//!
//! Every other line is noise: skipped and counted, never an error.

use crate::error::Error;
use crate::event::{errno_from_name, Event, Kind};

fn quote(text: &str) -> String {
    crate::input::quote(text.as_bytes())
}

/// Per-file parser state: whether an episode is open (so a repeated ENOBUFS line is a retry).
#[derive(Default)]
pub struct LogParser {
    open_failures: i64,
    /// Resolutions inferred from a frame written while an episode was open (pre-PR logs
    /// have no `resolved after` line: every failure is logged, then the frame goes out).
    pub inferred_resolutions: u64,
}

pub enum LogLine {
    Event(Event),
    /// An inferred resolution followed by the frame line that implied it.
    Two(Event, Event),
    Skipped,
}

impl LogParser {
    pub fn parse(
        &mut self,
        file: &str,
        file_idx: u32,
        line_no: u64,
        line: &[u8],
    ) -> Result<LogLine, Error> {
        let text = match std::str::from_utf8(line) {
            Ok(t) => t,
            Err(_) => {
                // Invalid UTF-8 is binary garbage unless it is in a line we would skip anyway;
                // only lines mentioning our messages matter.
                let lossy = String::from_utf8_lossy(line);
                if classify(&lossy).is_some() {
                    let byte = line.iter().copied().find(|&b| b >= 0x80).unwrap_or(0);
                    return Err(Error::Binary {
                        file: file.to_string(),
                        line: line_no,
                        byte,
                    });
                }
                return Ok(LogLine::Skipped);
            }
        };
        let Some(msg) = classify(text) else {
            return Ok(LogLine::Skipped);
        };
        let field_err = |field: &'static str, msg: String| Error::Field {
            file: file.to_string(),
            line: line_no,
            field,
            msg,
        };
        let ts_ns = parse_line_timestamp(text).map_err(|m| field_err("timestamp", m))?;
        let mut ev = Event::new(Kind::TxFrame, ts_ns);
        ev.file = file_idx;
        ev.line = line_no;
        match msg {
            Msg::Failure(name) => {
                ev.errno = errno_from_name(name);
                if self.open_failures == 0 {
                    ev.kind = Kind::EnobufsBegin;
                } else {
                    ev.kind = Kind::EnobufsRetry;
                    ev.retries = Some(self.open_failures + 1);
                }
                self.open_failures += 1;
            }
            Msg::Resolved(name, rest) => {
                ev.kind = Kind::EnobufsResolved;
                ev.errno = errno_from_name(name);
                let n = rest
                    .split_whitespace()
                    .next()
                    .and_then(|w| w.parse::<i64>().ok())
                    .ok_or_else(|| {
                        field_err(
                            "retries",
                            format!("not a number after `resolved after`: {}", quote(rest)),
                        )
                    })?;
                if n < 1 {
                    return Err(field_err(
                        "retries",
                        format!("resolved after {n} retries: a resolution counts at least 1"),
                    ));
                }
                ev.retries = Some(n);
                self.open_failures = 0;
            }
            Msg::Kevent(kind, rest) => {
                ev.kind = kind;
                if kind != Kind::TimerFired {
                    ev.fd = Some(key_value(rest, "fd=").ok_or_else(|| {
                        field_err("fd", format!("missing or not a number in {}", quote(rest)))
                    })?);
                    ev.data = Some(key_value(rest, "data=").ok_or_else(|| {
                        field_err(
                            "data",
                            format!("missing or not a number in {}", quote(rest)),
                        )
                    })?);
                }
            }
            Msg::Frame(kind, rest) => {
                ev.kind = kind;
                // Unified form: `size=S, written=W` - what went on the wire is `written`.
                let len = if let Some(w) = key_value(rest, "written=") {
                    Some(w)
                } else if let Some(s) = key_value(rest, "size=") {
                    Some(s)
                } else {
                    rest.rsplit_once(':').and_then(|(_, tail)| {
                        tail.split_whitespace()
                            .next()
                            .and_then(|w| w.parse::<i64>().ok())
                    })
                };
                ev.len = Some(len.ok_or_else(|| {
                    field_err("len", format!("no frame size in {}", quote(rest)))
                })?);
            }
            Msg::Irq => ev.kind = Kind::GuestIrq,
        }
        if ev.kind == Kind::TxFrame && self.open_failures > 0 {
            // The deferred frame went out without a `resolved after` line (a pre-PR build):
            // in PR builds that line always comes first, so this only happens in old logs.
            let mut resolved = ev;
            resolved.kind = Kind::EnobufsResolved;
            resolved.retries = Some(self.open_failures);
            resolved.len = None;
            self.open_failures = 0;
            self.inferred_resolutions += 1;
            return Ok(LogLine::Two(resolved, ev));
        }
        Ok(LogLine::Event(ev))
    }
}

enum Msg<'a> {
    Failure(&'a str),
    Resolved(&'a str, &'a str),
    Kevent(Kind, &'a str),
    Frame(Kind, &'a str),
    Irq,
}

fn classify(text: &str) -> Option<Msg<'_>> {
    if let Some(i) = text.find("write_frame: ") {
        let rest = &text[i + "write_frame: ".len()..];
        let name_end = rest
            .find(|c: char| !c.is_ascii_uppercase())
            .unwrap_or(rest.len());
        let name = &rest[..name_end];
        if name.is_empty() {
            return None;
        }
        let tail = &rest[name_end..];
        if let Some(j) = tail.find("resolved after ") {
            return Some(Msg::Resolved(name, &tail[j + "resolved after ".len()..]));
        }
        return Some(Msg::Failure(name));
    }
    if let Some(i) = text.find("kevent: ") {
        let rest = &text[i + "kevent: ".len()..];
        if let Some(r) = rest.strip_prefix("WRITE") {
            return Some(Msg::Kevent(Kind::KeventWrite, r));
        }
        if let Some(r) = rest.strip_prefix("READ") {
            return Some(Msg::Kevent(Kind::KeventRead, r));
        }
        if let Some(r) = rest.strip_prefix("TIMER") {
            return Some(Msg::Kevent(Kind::TimerFired, r));
        }
        return None;
    }
    if text.contains("interrupt: signal_used_queue") {
        return Some(Msg::Irq);
    }
    for (word, kind) in [("Written ", Kind::TxFrame), ("Read ", Kind::RxFrame)] {
        if let Some(i) = text.find(word) {
            let rest = &text[i..];
            let is_frame = rest.starts_with(&format!("{word}frame "))
                || rest.starts_with(&format!("{word}eth frame "));
            if is_frame {
                return Some(Msg::Frame(kind, &rest[word.len()..]));
            }
        }
    }
    None
}

/// The integer after `key` (e.g. `fd=`), stopping at the first non-digit.
fn key_value(text: &str, key: &str) -> Option<i64> {
    let mut from = 0;
    while let Some(i) = text[from..].find(key) {
        let at = from + i;
        // `size=` must not match inside another key such as `xsize=`.
        let boundary = at == 0 || !text.as_bytes()[at - 1].is_ascii_alphanumeric();
        let rest = &text[at + key.len()..];
        let end = rest
            .char_indices()
            .find(|&(j, c)| !(c.is_ascii_digit() || (j == 0 && c == '-')))
            .map_or(rest.len(), |(j, _)| j);
        if boundary {
            return rest[..end].parse().ok();
        }
        from = at + key.len();
    }
    None
}

/// Finds the timestamp at the start of a log line: `[2026-03-01T10:00:00.100000Z ...]` (the
/// reference VMM's env_logger format) or the same without the bracket (tracing's format).
fn parse_line_timestamp(text: &str) -> Result<i64, String> {
    let t = text.trim_start().trim_start_matches('[');
    let token_end = t
        .find(|c: char| c.is_whitespace() || c == ']')
        .unwrap_or(t.len());
    let token = &t[..token_end];
    parse_rfc3339(token)
        .ok_or_else(|| format!("no RFC 3339 timestamp at the line start: {}", quote(token)))
}

/// RFC 3339 (`YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`) to Unix nanoseconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    if b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b'T' || b[10] == b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut frac_ns = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let digits = &s[start..i];
        if digits.is_empty() {
            return None;
        }
        let mut scaled = String::from(&digits[..digits.len().min(9)]);
        while scaled.len() < 9 {
            scaled.push('0');
        }
        frac_ns = scaled.parse().ok()?;
    }
    let offset_s = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if b.len() == i + 6 && b[i + 3] == b':' => {
            let h = num(i + 1..i + 3)?;
            let m = num(i + 4..i + 6)?;
            let o = h * 3600 + m * 60;
            if *sign == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + min * 60 + sec - offset_s;
    Some(secs * 1_000_000_000 + frac_ns)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix nanoseconds back to `YYYY-MM-DDTHH:MM:SS.ffffffZ` (µs, as the reference logs print).
pub fn format_rfc3339_us(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let sub = ns.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Inverse of days_from_civil.
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60,
        sub / 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip() {
        let ns = parse_rfc3339("2026-03-01T10:00:00.100900Z").unwrap();
        assert_eq!(format_rfc3339_us(ns), "2026-03-01T10:00:00.100900Z");
        assert_eq!(parse_rfc3339("1970-01-01T00:00:01Z"), Some(1_000_000_000));
        assert_eq!(
            parse_rfc3339("1970-01-01T01:00:01+01:00"),
            Some(1_000_000_000)
        );
        assert_eq!(parse_rfc3339("2026-13-01T10:00:00Z"), None);
    }

    #[test]
    fn key_values() {
        assert_eq!(key_value(" fd=7 data=24576", "fd="), Some(7));
        assert_eq!(key_value(" fd=7 data=-1", "data="), Some(-1));
        assert_eq!(
            key_value("frame size=1514, written=1500", "written="),
            Some(1500)
        );
        assert_eq!(key_value("xsize=3 size=4", "size="), Some(4));
    }

    #[test]
    fn repeated_failure_is_a_retry() {
        let mut p = LogParser::default();
        let l = |s: &str| s.as_bytes().to_vec();
        let a = l("[2026-03-01T10:00:00.100050Z INFO  x] write_frame: ENOBUFS");
        let b = l("[2026-03-01T10:00:00.100060Z DEBUG x] write_frame: ENOBUFS");
        let c = l(
            "[2026-03-01T10:00:00.100900Z INFO  x] write_frame: ENOBUFS resolved after 2 retries",
        );
        let kinds: Vec<Kind> = [a, b, c]
            .iter()
            .enumerate()
            .map(
                |(i, line)| match p.parse("f", 0, i as u64 + 1, line).unwrap() {
                    LogLine::Event(e) => e.kind,
                    LogLine::Two(..) | LogLine::Skipped => panic!("unexpected"),
                },
            )
            .collect();
        assert_eq!(
            kinds,
            vec![
                Kind::EnobufsBegin,
                Kind::EnobufsRetry,
                Kind::EnobufsResolved
            ]
        );
    }
}
