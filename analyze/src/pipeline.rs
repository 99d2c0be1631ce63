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
    /// order. bpftrace prints per-CPU buffers one after the other, so a busy capture is out of
    /// order by up to one buffer's worth of time (tens of ms); anything further back means a
    /// broken or concatenated input. Memory grows with window × event rate.
    pub reorder_window_ns: i64,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            lenient: false,
            reorder_window_ns: 100_000_000,
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
    /// Events the tracer said it lost (bpftrace "Lost N events").
    pub lost_events: u64,
    /// Log episodes closed by their frame line, the log having no `resolved after` line.
    pub inferred_resolutions: u64,
    pub anomalies: Anomalies,
}

/// Receives every event in time order (per file), then episodes as the tracker builds them.
pub trait Visitor: EpisodeSink {
    fn source_start(&mut self, _index: u32, _info: &SourceInfo) {}
    fn event(&mut self, _ev: &Event, _info: &SourceInfo) {}
    /// Episodes still open at the end of a file.
    fn open_at_end(&mut self, _ep: &Episode, _info: &SourceInfo) {}
    fn source_end(&mut self, _index: u32, _info: &SourceInfo) {}
    /// True once the visitor cannot use more events (its output was closed): reading stops.
    fn stopped(&self) -> bool {
        false
    }
}

/// Puts slightly out-of-order events back in order, within a time window.
///
/// Events in time order (nearly all of them) go to a plain vector with a moving head
/// (compacted now and then): rows are parsed straight into it and handed out from it, so the
/// hot path copies nothing. Late events go to a min-heap and are merged back when handed out:
/// inserting them into the vector cost O(window) each, which made bpftrace's per-CPU
/// interleaving (half the rows late) quadratic.
struct Reorder {
    buf: Vec<Event>,
    head: usize,
    late: std::collections::BinaryHeap<Late>,
    /// Arrival number of the next late event: orders equal (ts, line) keys stably.
    arrivals: u64,
    max_ts: i64,
    max_line: u64,
    window: i64,
}

/// A late event in the heap, smallest (ts, line, arrival) on top. Within one file the line
/// number is the input order, so this is the order a stable sort by time would give.
struct Late {
    arrival: u64,
    ev: Event,
}

impl Late {
    fn key(&self) -> (i64, u64, u64) {
        (self.ev.ts_ns, self.ev.line, self.arrival)
    }
}

impl PartialEq for Late {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for Late {}
impl PartialOrd for Late {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Late {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.key().cmp(&self.key()) // reversed: BinaryHeap is a max-heap
    }
}

impl Reorder {
    fn new(window: i64) -> Reorder {
        Reorder {
            buf: Vec::with_capacity(8192),
            head: 0,
            late: std::collections::BinaryHeap::new(),
            arrivals: 0,
            max_ts: i64::MIN,
            max_line: 0,
            window,
        }
    }

    /// Accepts the event in the back slot, moving it to the late heap if it came late.
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
        let back = self.max_ts.saturating_sub(ev.ts_ns);
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
        self.arrivals += 1;
        self.late.push(Late {
            arrival: self.arrivals,
            ev,
        });
        Ok(())
    }

    /// Events older than this cannot be overtaken by a late one any more.
    #[inline]
    fn horizon(&self) -> i64 {
        self.max_ts.saturating_sub(self.window)
    }

    /// The in-order events before `horizon`, as a range of `buf`.
    #[inline]
    fn ready_before(&self, horizon: i64) -> std::ops::Range<usize> {
        let n = self.buf[self.head..].partition_point(|e| e.ts_ns < horizon);
        self.head..self.head + n
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

/// What the reading thread hands to the analysing thread, in input order.
enum Item {
    Event(Event),
    /// A log line that is not one of ours.
    Skipped,
    /// A bad line; `complete` is false for a last line without a newline.
    Bad {
        err: Error,
        complete: bool,
    },
    /// The format is known (first data line); logs carry wall-clock time (offset 0).
    Format(Format, Option<i64>),
    /// A `# clock` comment: the wall-clock offset from here on.
    Clock(i64),
    /// bpftrace's "Lost N events" (its perf buffer overflowed).
    Lost(u64),
    /// Resolutions a pre-PR log implied by writing the frame (see `LogParser`).
    Inferred(u64),
    /// The last line had no newline but parsed: it may still be cut (in its last field).
    Unterminated(u64),
}

/// Lines a tracer prints around the CSV: bpftrace's banner without -q, its map dumps at exit
/// (`@name[...]: value`) and its lost-event warnings. Not data, not errors.
fn tracer_line(line: &[u8]) -> Option<Item> {
    if line.starts_with(b"Attaching ") && line.ends_with(b"...") || line[0] == b'@' {
        return Some(Item::Skipped);
    }
    let text = std::str::from_utf8(line).ok()?;
    let n = text.strip_prefix("Lost ")?.strip_suffix(" events")?;
    n.trim().parse().ok().map(Item::Lost)
}

enum Msg {
    /// Items in input order; `seq` orders batches that parse workers finish out of order.
    Batch(u64, Vec<Item>),
    /// A stream error (I/O, gzip, an endless line) after the batches numbered before `seq`:
    /// handled in that order, so a bad line earlier in the input is the error reported, not
    /// whichever thread finished first.
    Fatal(u64, Error),
}

/// Raw trace lines for a parse worker: the bytes, each line's end offset, the first line's
/// number (lines are consecutive), and whether the last line lacked its newline.
struct RawBatch {
    seq: u64,
    buf: Vec<u8>,
    ends: Vec<usize>,
    first_line: u64,
    last_incomplete: bool,
}

impl RawBatch {
    fn new(seq: u64) -> RawBatch {
        RawBatch {
            seq,
            buf: Vec::with_capacity(BATCH * 48),
            ends: Vec::with_capacity(BATCH),
            first_line: 0,
            last_incomplete: false,
        }
    }
}

/// One trace line (after the header) to an item; `None` for blank lines.
#[inline]
fn trace_item(
    line: &[u8],
    name: &str,
    idx: u32,
    line_no: u64,
    out: &mut Vec<Item>,
) -> Result<(), Error> {
    if line.is_empty() {
        return Ok(());
    }
    if line[0] == b'#' {
        if let Some(off) = trace::parse_clock_comment(line) {
            out.push(Item::Clock(off));
        }
        return Ok(());
    }
    if !line[0].is_ascii_digit() {
        if let Some(item) = tracer_line(line) {
            out.push(item);
            return Ok(());
        }
    }
    // Parsed in place in the batch: no copy of the event on the way.
    out.push(Item::Event(Event::new(crate::event::Kind::TxFrame, 0)));
    let Some(Item::Event(ev)) = out.last_mut() else {
        unreachable!("just pushed")
    };
    if let Err(e) = trace::parse_row_into(ev, name, idx, line_no, line) {
        out.pop();
        return Err(e);
    }
    Ok(())
}

/// A parse worker's job: raw lines to items, errors in place as `Item::Bad`.
fn parse_raw(raw: &RawBatch, name: &str, idx: u32) -> Vec<Item> {
    let mut out = Vec::with_capacity(raw.ends.len());
    let mut start = 0;
    let last = raw.ends.len().saturating_sub(1);
    for (i, &end) in raw.ends.iter().enumerate() {
        let line = &raw.buf[start..end];
        start = end;
        let line_no = raw.first_line + i as u64;
        let complete = !(raw.last_incomplete && i == last);
        let before = out.len();
        match trace_item(line, name, idx, line_no, &mut out) {
            Err(err) => out.push(Item::Bad { err, complete }),
            Ok(()) if !complete && out.len() > before => out.push(Item::Unterminated(line_no)),
            Ok(()) => {}
        }
    }
    out
}

const BATCH: usize = 4096;

/// The reading side: bytes → lines → items, in batches. Runs on its own thread so parsing
/// overlaps with the analysis (the machine this targets has two cores).
fn produce(
    path: &std::path::Path,
    idx: u32,
    name: &str,
    tx: &std::sync::mpsc::SyncSender<Msg>,
    work: &std::sync::mpsc::SyncSender<RawBatch>,
) {
    let mut reader = match input::open(path) {
        Ok(r) => r,
        Err(e) => {
            let _ = tx.send(Msg::Fatal(0, e));
            return;
        }
    };
    let mut state = State::Undecided;
    let mut batch: Vec<Item> = Vec::with_capacity(BATCH);
    // Item batches and raw batches share one sequence, numbered in input order when sent.
    let mut seq: u64 = 0;
    let mut raw = RawBatch::new(0);
    let mut receiver_gone = false;
    let result = input::for_each_line(&mut *reader, name, |line, line_no, complete| {
        let item = (|| -> Result<Option<Item>, Error> {
            if line.is_empty() && !matches!(state, State::Trace) {
                return Ok(None);
            }
            match &mut state {
                State::Trace => {
                    // Trace rows go to the parse workers as raw bytes.
                    if raw.ends.is_empty() {
                        raw.first_line = line_no;
                    }
                    raw.buf.extend_from_slice(line);
                    raw.ends.push(raw.buf.len());
                    raw.last_incomplete = !complete;
                    Ok(None)
                }
                State::Log(parser) => Ok(Some(match parser.parse(name, idx, line_no, line)? {
                    LogLine::Event(ev) => Item::Event(ev),
                    LogLine::Two(first, second) => {
                        batch.push(Item::Event(first));
                        Item::Event(second)
                    }
                    LogLine::Skipped => Item::Skipped,
                })),
                State::Undecided => {
                    if let Some(byte) = input::first_binary_byte(line) {
                        return Err(Error::Binary {
                            file: name.to_string(),
                            line: line_no,
                            byte,
                        });
                    }
                    if line[0] == b'#' {
                        return Ok(trace::parse_clock_comment(line).map(Item::Clock));
                    }
                    if let Some(item) = tracer_line(line) {
                        return Ok(Some(item));
                    }
                    match input::detect(line) {
                        Format::Trace => {
                            state = State::Trace;
                            trace::check_header(name, line_no, line)?;
                            Ok(Some(Item::Format(Format::Trace, None)))
                        }
                        Format::Log => {
                            let mut parser = LogParser::default();
                            let first = parser.parse(name, idx, line_no, line);
                            state = State::Log(parser);
                            batch.push(Item::Format(Format::Log, Some(0)));
                            Ok(Some(match first? {
                                LogLine::Event(ev) | LogLine::Two(_, ev) => Item::Event(ev),
                                LogLine::Skipped => Item::Skipped,
                            }))
                        }
                    }
                }
            }
        })();
        match item {
            Ok(Some(it)) => {
                let event = matches!(it, Item::Event(_));
                batch.push(it);
                if event && !complete {
                    batch.push(Item::Unterminated(line_no));
                }
            }
            Ok(None) => {}
            Err(err) if err.is_line_error() => batch.push(Item::Bad { err, complete }),
            Err(err) => return Err(err),
        }
        if batch.len() >= BATCH {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
            if tx.send(Msg::Batch(seq, full)).is_err() {
                receiver_gone = true;
                return Ok(false); // the analysis stopped (an error): stop reading
            }
            seq += 1;
        }
        if raw.ends.len() >= BATCH {
            // Items decided before the rows (the format, the clock) go first.
            if !batch.is_empty() {
                let items = std::mem::take(&mut batch);
                if tx.send(Msg::Batch(seq, items)).is_err() {
                    receiver_gone = true;
                    return Ok(false);
                }
                seq += 1;
            }
            let mut full = std::mem::replace(&mut raw, RawBatch::new(0));
            full.seq = seq;
            seq += 1;
            if work.send(full).is_err() {
                receiver_gone = true;
                return Ok(false);
            }
        }
        Ok(true)
    });
    if receiver_gone {
        return;
    }
    if let State::Log(parser) = &state {
        if parser.inferred_resolutions > 0 {
            batch.push(Item::Inferred(parser.inferred_resolutions));
        }
    }
    if !batch.is_empty() {
        let _ = tx.send(Msg::Batch(seq, batch));
        seq += 1;
    }
    if !raw.ends.is_empty() {
        raw.seq = seq;
        let _ = work.send(raw);
        seq += 1;
    }
    if let Err(e) = result {
        let _ = tx.send(Msg::Fatal(seq, e));
    }
}

/// The analysing side's per-file state.
struct Consumer<'a> {
    name: String,
    info: SourceInfo,
    reorder: Reorder,
    started: bool,
    idx: u32,
    events: u64,
    skipped: u64,
    reordered: u64,
    opts: &'a ReadOptions,
}

impl Consumer<'_> {
    fn start(&mut self, visitor: &mut dyn Visitor) {
        if !self.started {
            self.started = true;
            visitor.source_start(self.idx, &self.info);
        }
    }

    /// Lenient mode turns line errors into counted skips; a cut-off last line is a note.
    fn line_error(
        &self,
        err: Error,
        complete: bool,
        summary: &mut InputSummary,
    ) -> Result<(), Error> {
        if !complete && !matches!(err, Error::Binary { .. }) {
            let line = match &err {
                Error::Field { line, .. } | Error::OutOfOrder { line, .. } => *line,
                _ => 0,
            };
            summary.truncated.push(format!(
                "{}:{line}: last line is cut off (no newline); ignored: {err}",
                self.name
            ));
            return Ok(());
        }
        if self.opts.lenient && err.is_line_error() {
            summary.bad_lines += 1;
            if summary.bad_examples.len() < 5 {
                summary.bad_examples.push(err.to_string());
            }
            return Ok(());
        }
        Err(err)
    }

    /// Hands out, in time order, every pending event before `horizon` (`i64::MAX`: all).
    fn hand_out(
        &mut self,
        horizon: i64,
        visitor: &mut dyn Visitor,
        tracker: &mut Tracker,
        summary: &mut InputSummary,
    ) -> Result<(), Error> {
        let range = if horizon == i64::MAX {
            self.reorder.head..self.reorder.buf.len()
        } else {
            self.reorder.ready_before(horizon)
        };
        let late_ready = |r: &Reorder| {
            r.late
                .peek()
                .is_some_and(|l| horizon == i64::MAX || l.ev.ts_ns < horizon)
        };
        if !late_ready(&self.reorder) {
            // The common case: nothing late to merge.
            for i in range.clone() {
                let ev = &self.reorder.buf[i];
                visitor.event(ev, &self.info);
                if let Err(e) = tracker.feed(ev, &mut SinkRef(visitor)) {
                    self.line_error(e, true, summary)?;
                }
            }
            self.reorder.consume(range.end);
            return Ok(());
        }
        let mut i = range.start;
        loop {
            let take_late = late_ready(&self.reorder)
                && (i == range.end || {
                    let l = &self.reorder.late.peek().expect("ready").ev;
                    let e = &self.reorder.buf[i];
                    (l.ts_ns, l.line) < (e.ts_ns, e.line)
                });
            let ev = if take_late {
                self.reorder.late.pop().expect("ready").ev
            } else if i < range.end {
                i += 1;
                self.reorder.buf[i - 1]
            } else {
                break;
            };
            visitor.event(&ev, &self.info);
            if let Err(e) = tracker.feed(&ev, &mut SinkRef(visitor)) {
                self.line_error(e, true, summary)?;
            }
        }
        self.reorder.consume(range.end);
        Ok(())
    }
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
        if visitor.stopped() {
            break;
        }
        let idx = idx as u32;
        let name = names[idx as usize].clone();
        let mut c = Consumer {
            name: name.clone(),
            info: SourceInfo {
                name: name.clone(),
                format: None,
                wall_offset_ns: None,
            },
            reorder: Reorder::new(opts.reorder_window_ns.max(0)),
            started: false,
            idx,
            events: 0,
            skipped: 0,
            reordered: 0,
            opts,
        };
        let (tx, rx) = std::sync::mpsc::sync_channel::<Msg>(4);
        let (work_tx, work_rx) = std::sync::mpsc::sync_channel::<RawBatch>(4);
        // Shared by the workers and dropped with the last of them, so a producer blocked on a
        // full queue wakes up with an error when the analysis has stopped.
        let work_rx = std::sync::Arc::new(std::sync::Mutex::new(work_rx));
        let outcome = std::thread::scope(|scope| -> Result<(), Error> {
            // Two parse workers: on the two-core machine this targets, parsing (the bulk of
            // the work) then uses both cores while the reader and this thread stay light.
            for _ in 0..2 {
                let tx = tx.clone();
                let work_rx = std::sync::Arc::clone(&work_rx);
                let name = name.clone();
                scope.spawn(move || loop {
                    let raw = match work_rx.lock().map(|rx| rx.recv()) {
                        Ok(Ok(raw)) => raw,
                        _ => return,
                    };
                    let items = parse_raw(&raw, &name, idx);
                    if tx.send(Msg::Batch(raw.seq, items)).is_err() {
                        return;
                    }
                });
            }
            drop(work_rx);
            let producer_name = name.clone();
            scope.spawn(move || produce(path, idx, &producer_name, &tx, &work_tx));
            // Owned here so that returning early drops it: the others' next send fails and
            // they stop, instead of blocking the scope's join forever.
            let rx = rx;
            let mut pending: std::collections::BTreeMap<u64, Result<Vec<Item>, Error>> =
                Default::default();
            let mut next = 0u64;
            for msg in rx.iter() {
                match msg {
                    Msg::Batch(seq, items) => {
                        pending.insert(seq, Ok(items));
                    }
                    Msg::Fatal(seq, e) => {
                        pending.insert(seq, Err(e));
                    }
                }
                while let Some(batch) = pending.remove(&next) {
                    next += 1;
                    let mut items = batch?;
                    for item in items.drain(..) {
                        match item {
                            Item::Event(ev) => {
                                c.events += 1;
                                c.reorder.buf.push(ev);
                                if let Err(e) = c.reorder.commit(&name, &mut c.reordered) {
                                    c.line_error(e, true, &mut summary)?;
                                }
                            }
                            Item::Skipped => c.skipped += 1,
                            Item::Bad { err, complete } => {
                                c.line_error(err, complete, &mut summary)?
                            }
                            Item::Format(format, offset) => {
                                c.info.format = Some(format);
                                if offset.is_some() {
                                    c.info.wall_offset_ns = offset;
                                }
                                c.start(visitor);
                            }
                            Item::Clock(offset) => c.info.wall_offset_ns = Some(offset),
                            Item::Lost(n) => summary.lost_events += n,
                            Item::Inferred(n) => summary.inferred_resolutions += n,
                            Item::Unterminated(line) => summary.truncated.push(format!(
                                "{}:{line}: last line has no newline: read as is, but it may be cut short (a capture stopped mid-row)",
                                c.name
                            )),
                        }
                    }
                    // Hand out everything old enough that no late event can overtake it.
                    let horizon = c.reorder.horizon();
                    c.hand_out(horizon, visitor, &mut tracker, &mut summary)?;
                }
                if visitor.stopped() {
                    return Ok(());
                }
            }
            Ok(())
        });
        // Dropping the receiver (on error) made the producer stop; the scope joined it.
        outcome?;
        c.start(visitor);
        c.hand_out(i64::MAX, visitor, &mut tracker, &mut summary)?;
        for ep in tracker.finish_file(idx, &mut SinkRef(visitor)) {
            visitor.open_at_end(&ep, &c.info);
        }
        visitor.source_end(idx, &c.info);
        summary.events += c.events;
        summary.skipped_lines += c.skipped;
        summary.reordered += c.reordered;
        if c.info.format.is_none() && summary.bad_lines == 0 && summary.truncated.is_empty() {
            // "0 events" would read as a clean capture with nothing in it.
            return Err(Error::Empty { file: name });
        }
        summary.formats.push(c.info.format);
        summary.sources.push(c.info);
    }
    summary.anomalies = tracker.anomalies.clone();
    Ok(summary)
}
