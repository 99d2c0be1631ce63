//! `--by-interval`: episodes/s, frames/s and Gbit/s each way per fixed time interval, measured
//! from each input's first event (several inputs add up in the same buckets).

use serde::Serialize;

use crate::event::{Event, Kind};

#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    episodes: u64,
    tx_frames: u64,
    tx_bytes: u64,
    rx_frames: u64,
    rx_bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct IntervalRow {
    pub start_s: f64,
    pub end_s: f64,
    /// `start-end` in a unit that suits the interval width (`10s-20s`, `200us-400us`).
    pub label: String,
    /// The input ended inside this interval; its rates are over the whole width.
    pub partial: bool,
    pub episodes: u64,
    pub episodes_per_s: f64,
    pub tx_frames_per_s: f64,
    pub rx_frames_per_s: f64,
    pub tx_gbit_per_s: f64,
    pub rx_gbit_per_s: f64,
}

/// The most rows the table may have: more is a width too fine for the input, or a bogus
/// timestamp far from the rest, and would only exhaust memory or the reader.
pub const MAX_INTERVALS: usize = 100_000;

/// The event that would have needed more than [`MAX_INTERVALS`] rows.
#[derive(Clone, Copy, Debug)]
pub struct TooMany {
    pub file: u32,
    pub line: u64,
    /// How far after its input's first event it lies.
    pub offset_ns: i64,
}

pub struct Intervals {
    width: i64,
    origin: Option<i64>,
    buckets: Vec<Bucket>,
    /// Offset of the last event from its input's origin: the end of the last bucket.
    last_offset: i64,
    /// Set by the first event past the last allowed row; later events are ignored.
    pub too_many: Option<TooMany>,
    /// Receives events past the last row, so counting goes on without growing the table.
    overflow: Bucket,
}

impl Intervals {
    pub fn new(width_ns: i64) -> Intervals {
        Intervals {
            width: width_ns.max(1),
            origin: None,
            buckets: Vec::new(),
            last_offset: 0,
            too_many: None,
            overflow: Bucket::default(),
        }
    }

    pub fn width_ns(&self) -> i64 {
        self.width
    }

    pub fn new_source(&mut self) {
        self.origin = None;
    }

    fn bucket(&mut self, ts: i64, ev: Option<&Event>) -> &mut Bucket {
        let origin = *self.origin.get_or_insert(ts);
        let off = ts.saturating_sub(origin).max(0);
        let i = off / self.width;
        if i >= MAX_INTERVALS as i64 {
            if self.too_many.is_none() {
                self.too_many = Some(TooMany {
                    file: ev.map_or(0, |e| e.file),
                    line: ev.map_or(0, |e| e.line),
                    offset_ns: off,
                });
            }
            return &mut self.overflow;
        }
        let i = i as usize;
        self.last_offset = self.last_offset.max(off);
        if i >= self.buckets.len() {
            self.buckets.resize(i + 1, Bucket::default());
        }
        &mut self.buckets[i]
    }

    pub fn episode(&mut self, ts: i64) {
        self.bucket(ts, None).episodes += 1;
    }

    #[inline]
    pub fn event(&mut self, ev: &Event) {
        let len = ev.len.unwrap_or(0).max(0) as u64;
        match ev.kind {
            Kind::TxFrame => {
                let b = self.bucket(ev.ts_ns, Some(ev));
                b.tx_frames += 1;
                b.tx_bytes = b.tx_bytes.saturating_add(len);
            }
            Kind::RxFrame => {
                let b = self.bucket(ev.ts_ns, Some(ev));
                b.rx_frames += 1;
                b.rx_bytes = b.rx_bytes.saturating_add(len);
            }
            _ => {
                self.bucket(ev.ts_ns, Some(ev));
            }
        }
    }

    pub fn rows(self) -> Vec<IntervalRow> {
        let n = self.buckets.len();
        self.buckets
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let start = i as i64 * self.width;
                let end = start + self.width;
                // Rates over the full width everywhere, so rows compare; the last row says
                // when the input stopped inside it.
                let secs = self.width as f64 / 1e9;
                IntervalRow {
                    start_s: start as f64 / 1e9,
                    end_s: end as f64 / 1e9,
                    label: format!("{}-{}", span(start, self.width), span(end, self.width)),
                    partial: i + 1 == n && self.last_offset + 1 < end,
                    episodes: b.episodes,
                    episodes_per_s: b.episodes as f64 / secs,
                    tx_frames_per_s: b.tx_frames as f64 / secs,
                    rx_frames_per_s: b.rx_frames as f64 / secs,
                    tx_gbit_per_s: b.tx_bytes as f64 * 8.0 / secs / 1e9,
                    rx_gbit_per_s: b.rx_bytes as f64 * 8.0 / secs / 1e9,
                }
            })
            .collect()
    }
}

/// The interval width as the flag would spell it (`10s`, `250us`, `1ns`).
pub fn width_label(width: i64) -> String {
    span(width, width)
}

/// An offset in the largest unit that divides the interval width.
fn span(ns: i64, width: i64) -> String {
    if width % 1_000_000_000 == 0 {
        format!("{}s", ns / 1_000_000_000)
    } else if width % 1_000_000 == 0 {
        format!("{}ms", ns / 1_000_000)
    } else if width % 1_000 == 0 {
        format!("{}us", ns / 1_000)
    } else {
        format!("{ns}ns")
    }
}

/// Parses `10s`, `500ms`, `250us`, `100ns`, `1m`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("not a duration: {s:?} (e.g. 10s, 500ms, 250us)"))?;
    let scale = match unit.trim() {
        "" | "s" => 1e9,
        "ms" => 1e6,
        "us" | "µs" => 1e3,
        "ns" => 1.0,
        "m" | "min" => 60e9,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?} (use s, ms, us, ns)"
            ))
        }
    };
    let ns = (v * scale).round();
    if ns <= 0.0 && v != 0.0 {
        return Err(format!("duration too small: {s:?}"));
    }
    Ok(ns as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(10_000_000_000));
        assert_eq!(parse_duration("10ms"), Ok(10_000_000));
        assert_eq!(parse_duration("1.5us"), Ok(1_500));
        assert_eq!(parse_duration("2"), Ok(2_000_000_000));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5h").is_err());
    }
}
