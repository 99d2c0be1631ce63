//! The streaming driver: inputs → lines → events (in time order) → visitor and episode tracker.
//!
//! Memory stays bounded by the number of open episodes and the reorder window, never by the
//! number of rows.

use std::path::PathBuf;

use serde::Serialize;

use crate::episodes::{Anomalies, Episode, EpisodeSink, Tracker};
use crate::error::Error;
use crate::event::Event;
use crate::input::{self, Format, SourceInfo};
use crate::log::{LogLine, LogParser};
use crate::trace;

/// How inputs are read.
#[derive(Clone, Debug)]
pub struct ReadOptions {
    /// Skip and count bad lines instead of failing on the first one.
    pub lenient: bool,
    /// How far back in time (ns) an event may arrive after a later one and still be put in
    /// order. bpftrace prints per-CPU buffers, so a capture can be slightly out of order;
    /// anything further back means a broken or concatenated input.
    pub reorder_window_ns: i64,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            lenient: false,
            reorder_window_ns: 10_000_000,
        }
    }
}

/// What the driver saw, beyond events.
#[derive(Clone, Debug, Default, Serialize)]
pub struct InputSummary {
    #[serde(skip)]
    pub sources: Vec<SourceInfo>,
    pub formats: Vec<Option<Format>>,
    /// Events (trace rows or recognised log lines).
    pub events: u64,
    /// Log lines that are not one of ours (noise), skipped by design.
    pub skipped_lines: u64,
    /// Lines skipped under --lenient because they were bad.
    pub bad_lines: u64,
    /// The first few bad-line messages, for the note.
    pub bad_examples: Vec<String>,
    /// Notes on files whose last line was cut (capture killed).
    pub truncated: Vec<String>,
    /// Events that arrived out of time order (within the window) and were put in order.
    pub reordered: u64,
    pub anomalies: Anomalies,
}

/// Receives every event in time order (per file), then episodes as the tracker builds them.
pub trait Visitor: EpisodeSink {
    fn source_start(&mut self, _index: u32, _info: &SourceInfo) {}
    fn event(&mut self, _ev: &Event, _info: &SourceInfo) {}
    /// Episodes still open at the end of a file.
    fn open_at_end(&mut self, _ep: &Episode, _info: &SourceInfo) {}
    fn source_end(&mut self, _index: u32, _info: &SourceInfo) {}
}

/// Puts slightly out-of-order events back in order, within a time window.
///
/// A plain vector with a moving head (compacted now and then) rather than a VecDeque: rows
/// are parsed straight into it and handed out as slices, so the hot path copies nothing.
struct Reorder {
    buf: Vec<Event>,
    head: usize,
    max_ts: i64,
    max_line: u64,
    window: i64,
}

impl Reorder {
    fn new(window: i64) -> Reorder {
        Reorder {
            buf: Vec::with_capacity(8192),
            head: 0,
            max_ts: i64::MIN,
            max_line: 0,
            window,
        }
    }

    /// A fresh slot at the back for the next event to be parsed into.
    #[inline]
    fn slot(&mut self) -> &mut Event {
        self.buf.push(Event::new(crate::event::Kind::TxFrame, 0));
        self.buf.last_mut().expect("just pushed")
    }

    /// The slot was not filled (a bad or skipped line).
    #[inline]
    fn abort(&mut self) {
        self.buf.pop();
    }

    /// Accepts the event in the back slot, moving it into time order if it came late.
    #[inline]
    fn commit(&mut self, name: &str, reordered: &mut u64) -> Result<(), Error> {
        let last = self.buf.len() - 1;
        let (ts, line) = (self.buf[last].ts_ns, self.buf[last].line);
        if ts >= self.max_ts {
            self.max_ts = ts;
            self.max_line = line;
            return Ok(());
        }
        self.commit_late(name, reordered)
    }

    #[cold]
    fn commit_late(&mut self, name: &str, reordered: &mut u64) -> Result<(), Error> {
        let ev = self.buf.pop().expect("slot exists");
        let back = self.max_ts - ev.ts_ns;
        if back > self.window {
            return Err(Error::OutOfOrder {
                file: name.to_string(),
                line: ev.line,
                ts_ns: ev.ts_ns,
                back_ns: back,
                prev_line: self.max_line,
                window_ns: self.window,
            });
        }
        *reordered += 1;
        // After every event with ts <= this one (stable for equal timestamps). Events already
        // handed out are older than the window, so the insert lands among pending ones.
        let pos = self.head + self.buf[self.head..].partition_point(|e| e.ts_ns <= ev.ts_ns);
        self.buf.insert(pos, ev);
        Ok(())
    }

    /// Pending events old enough that no late event can overtake them any more.
    #[inline]
    fn ready(&self) -> std::ops::Range<usize> {
        let horizon = self.max_ts.saturating_sub(self.window);
        let n = self.buf[self.head..].partition_point(|e| e.ts_ns < horizon);
        self.head..self.head + n
    }

    /// Everything pending (end of input).
    fn all(&self) -> std::ops::Range<usize> {
        self.head..self.buf.len()
    }

    /// Marks events up to `end` as handed out; compacts once the dead prefix is large.
    #[inline]
    fn consume(&mut self, end: usize) {
        self.head = end;
        if self.head >= 4096 && self.head * 2 >= self.buf.len() {
            self.buf.drain(..self.head);
            self.head = 0;
        }
    }

    fn pending(&self) -> usize {
        self.buf.len() - self.head
    }
}

/// Lets the tracker call the visitor's episode hooks while the driver also holds it.
struct SinkRef<'a>(&'a mut dyn Visitor);
impl EpisodeSink for SinkRef<'_> {
    fn episode_begin(&mut self, id: u64, ev: &Event) {
        self.0.episode_begin(id, ev)
    }
    fn episode_end(&mut self, ep: &Episode) {
        self.0.episode_end(ep)
    }
}

enum State {
    Undecided,
    Trace,
    Log(LogParser),
}

/// Reads every input in turn and feeds the visitor. Returns what it saw.
pub fn run(
    paths: &[PathBuf],
    opts: &ReadOptions,
    visitor: &mut dyn Visitor,
) -> Result<InputSummary, Error> {
    let names: Vec<String> = paths.iter().map(|p| input::display_name(p)).collect();
    let mut tracker = Tracker::new(names.clone());
    let mut summary = InputSummary::default();
    for (idx, path) in paths.iter().enumerate() {
        let idx = idx as u32;
        let name = names[idx as usize].clone();
        let mut info = SourceInfo {
            name: name.clone(),
            format: None,
            wall_offset_ns: None,
        };
        let mut reader = input::open(path)?;
        let mut state = State::Undecided;
        let mut reorder = Reorder::new(opts.reorder_window_ns.max(0));
        let mut started = false;
        let mut counters = (0u64, 0u64, 0u64); // events, skipped, reordered

        input::for_each_line(&mut *reader, &name, |line, line_no, complete| {
            let result = (|| -> Result<(), Error> {
                if line.is_empty() {
                    return Ok(());
                }
                if let State::Undecided = state {
                    if let Some(byte) = input::first_binary_byte(line) {
                        return Err(Error::Binary {
                            file: name.clone(),
                            line: line_no,
                            byte,
                        });
                    }
                    if line[0] == b'#' {
                        if let Some(off) = trace::parse_clock_comment(line) {
                            info.wall_offset_ns = Some(off);
                        }
                        return Ok(());
                    }
                    let format = input::detect(line);
                    info.format = Some(format);
                    if format == Format::Trace {
                        state = State::Trace;
                        return trace::check_header(&name, line_no, line);
                    }
                    info.wall_offset_ns = Some(0);
                    state = State::Log(LogParser::default());
                }
                if !started {
                    started = true;
                    visitor.source_start(idx, &info);
                }
                match &mut state {
                    State::Trace => {
                        if line[0] == b'#' {
                            if let Some(off) = trace::parse_clock_comment(line) {
                                info.wall_offset_ns = Some(off);
                            }
                            return Ok(());
                        }
                        let slot = reorder.slot();
                        if let Err(e) = trace::parse_row_into(slot, &name, idx, line_no, line) {
                            reorder.abort();
                            return Err(e);
                        }
                    }
                    State::Log(parser) => match parser.parse(&name, idx, line_no, line)? {
                        LogLine::Event(ev) => *reorder.slot() = ev,
                        LogLine::Skipped => {
                            counters.1 += 1;
                            return Ok(());
                        }
                    },
                    State::Undecided => unreachable!(),
                };
                counters.0 += 1;
                reorder.commit(&name, &mut counters.2)?;
                // Hand out in batches: one search for the ready prefix per 256 events.
                if reorder.pending() >= 256 {
                    let range = reorder.ready();
                    let end = range.end;
                    for i in range {
                        let ev = &reorder.buf[i];
                        visitor.event(ev, &info);
                        if let Err(e) = tracker.feed(ev, &mut SinkRef(visitor)) {
                            reorder.consume(i + 1);
                            return Err(e);
                        }
                    }
                    reorder.consume(end);
                }
                Ok(())
            })();
            match result {
                Ok(()) => Ok(true),
                Err(e) if !complete && e.is_line_error() && !matches!(e, Error::Binary { .. }) => {
                    // The capture was killed mid-line: report what is there.
                    summary.truncated.push(format!(
                        "{name}:{line_no}: last line is cut off (no newline); ignored: {e}"
                    ));
                    Ok(false)
                }
                Err(e) if opts.lenient && e.is_line_error() => {
                    summary.bad_lines += 1;
                    if summary.bad_examples.len() < 5 {
                        summary.bad_examples.push(e.to_string());
                    }
                    Ok(true)
                }
                Err(e) => Err(e),
            }
        })?;
        if !started {
            visitor.source_start(idx, &info);
        }
        for i in reorder.all() {
            let ev = reorder.buf[i];
            visitor.event(&ev, &info);
            if let Err(e) = tracker.feed(&ev, &mut SinkRef(visitor)) {
                if opts.lenient && e.is_line_error() {
                    summary.bad_lines += 1;
                    if summary.bad_examples.len() < 5 {
                        summary.bad_examples.push(e.to_string());
                    }
                } else {
                    return Err(e);
                }
            }
        }
        for ep in tracker.finish_file(idx, &mut SinkRef(visitor)) {
            visitor.open_at_end(&ep, &info);
        }
        visitor.source_end(idx, &info);
        summary.events += counters.0;
        summary.skipped_lines += counters.1;
        summary.reordered += counters.2;
        summary.formats.push(info.format);
        summary.sources.push(info);
    }
    summary.anomalies = tracker.anomalies.clone();
    Ok(summary)
}
