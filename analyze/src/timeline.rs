//! Episode timelines: every event from a little before an episode's first failure to its
//! resolution and the frame written, with absolute and relative times and a closing line
//! that explains the retries by their wake-ups.
//!
//! Collected in one streaming pass (stdin works). Events sit in one shared window that every
//! open episode reads from (its own range of event numbers), rather than a buffer per episode
//! receiving every later event: 2,000 open episodes once held 2,000 copies of each event.
//! An episode's events are copied out when it reaches its cap or ends, and only kept if it is
//! selected; what all kept timelines hold together is capped too.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write;
use std::path::PathBuf;

use serde::Serialize;

use crate::episodes::{Episode, EpisodeSink};
use crate::error::Error;
use crate::event::{errno_name, Event, Kind};
use crate::input::SourceInfo;
use crate::pipeline::{self, InputSummary, ReadOptions, Visitor};

/// Which episodes to keep.
#[derive(Clone, Copy, Debug)]
pub enum Selection {
    /// The N-th episode (1-based, in order of first failure).
    Id(u64),
    /// The K longest resolved episodes.
    Slowest(usize),
    /// The episode open at this time, else the next one to start.
    At(AtTime),
    /// Episodes at least this long, and every episode never resolved (stalls).
    Threshold(i64),
}

/// A point in time as the user gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtTime {
    /// The input's own clock (trace `ts_ns`; Unix ns for logs).
    Clock(i64),
    /// Unix-epoch ns (an RFC 3339 time); needs the trace's `# clock` line.
    Wall(i64),
    /// This long after the first event.
    Since(i64),
}

impl std::str::FromStr for AtTime {
    type Err = String;
    fn from_str(s: &str) -> Result<AtTime, String> {
        if let Some(rel) = s.strip_prefix('+') {
            return crate::interval::parse_duration(rel).map(AtTime::Since);
        }
        if let Some(ns) = crate::log::parse_rfc3339(s) {
            return Ok(AtTime::Wall(ns));
        }
        s.parse::<i64>().map(AtTime::Clock).map_err(|_| {
            format!(
                "not a time: {s:?} (use +12.5s from the start, an RFC 3339 time, or a ts_ns value)"
            )
        })
    }
}

#[derive(Clone, Debug)]
pub struct TimelineOptions {
    pub select: Selection,
    /// How much time before the first failure to show.
    pub before_ns: i64,
    /// Per-episode cap on collected events, so a stall that lasts minutes stays bounded.
    pub max_events: usize,
    /// Cap on the events all timelines hold together (thousands of stalls at once).
    pub max_total_events: usize,
    pub read: ReadOptions,
}

impl TimelineOptions {
    pub fn new(select: Selection) -> TimelineOptions {
        TimelineOptions {
            select,
            before_ns: 100_000,
            max_events: 10_000,
            max_total_events: 200_000,
            read: ReadOptions::default(),
        }
    }
}

/// One selected episode and its events.
#[derive(Clone, Debug, Serialize)]
pub struct Timeline {
    pub episode: Episode,
    pub source: String,
    #[serde(skip)]
    pub wall_offset_ns: Option<i64>,
    pub events: Vec<TimelineEvent>,
    /// Each send attempt after the first failure and the wake-up that triggered it.
    pub attempts: Vec<Attempt>,
    /// Events beyond the cap were dropped.
    pub truncated: bool,
    /// ... because all timelines together reached `max_total_events`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub total_cap_reached: bool,
}

/// A send attempt after the first failure (a failed retry or the send that went out).
#[derive(Clone, Debug, Serialize)]
pub struct Attempt {
    pub offset_ns: i64,
    pub succeeded: bool,
    /// The latest wake-up since the previous attempt, e.g. "write wake-up without room";
    /// empty when none was recorded.
    pub trigger: String,
}

/// Which wake-up led to each attempt: the latest one since the previous attempt. Failed
/// retries are only visible in traces (and pre-PR logs); newer logs show only the success.
fn attempts(events: &[Event], ep: &Episode) -> Vec<Attempt> {
    let mut out = Vec::new();
    let mut last: Option<String> = None;
    let end = ep.end_ns.unwrap_or(i64::MAX);
    for e in events
        .iter()
        .filter(|e| e.ts_ns >= ep.start_ns && e.ts_ns <= end)
    {
        let same_fd = ep.fd.is_none() || e.fd.is_none() || ep.fd == e.fd;
        match e.kind {
            Kind::KeventWrite if same_fd => {
                last = Some(
                    match (e.data, ep.frame_len) {
                        (Some(d), Some(len)) if d >= 0 && d < len => "write wake-up without room",
                        (Some(d), Some(_)) if d >= 0 => "write wake-up with room",
                        _ => "write wake-up",
                    }
                    .to_string(),
                )
            }
            Kind::KeventRead => last = Some("read wake-up".to_string()),
            Kind::GuestKick => last = Some("guest kick".to_string()),
            Kind::TimerFired => last = Some("timer firing".to_string()),
            Kind::EnobufsRetry | Kind::EnobufsResolved if same_fd => {
                out.push(Attempt {
                    offset_ns: e.ts_ns - ep.start_ns,
                    succeeded: e.kind == Kind::EnobufsResolved,
                    trigger: last.take().unwrap_or_default(),
                });
            }
            _ => {}
        }
    }
    out
}

/// "sends after the first failure: 2 failed (after a write wake-up without room, after a
/// timer firing), then sent after a write wake-up with room".
fn explain_attempts(attempts: &[Attempt]) -> Option<String> {
    if attempts.is_empty() {
        return None;
    }
    let after = |a: &Attempt| {
        if a.trigger.is_empty() {
            "with no wake-up before it".to_string()
        } else {
            format!("after a {}", a.trigger)
        }
    };
    let failed: Vec<String> = attempts
        .iter()
        .filter(|a| !a.succeeded)
        .map(after)
        .collect();
    let sent = attempts.iter().find(|a| a.succeeded);
    let mut s = String::from("sends after the first failure: ");
    if !failed.is_empty() {
        s.push_str(&format!("{} failed ({})", failed.len(), failed.join(", ")));
    }
    match sent {
        Some(a) if failed.is_empty() => s.push_str(&format!("sent {}", after(a))),
        Some(a) => s.push_str(&format!(", then sent {}", after(a))),
        None => {}
    }
    Some(s)
}

#[derive(Clone, Debug, Serialize)]
pub struct TimelineEvent {
    pub ts_ns: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wall: Option<String>,
    pub offset_ns: i64,
    pub probe: &'static str,
    pub line: u64,
    pub text: String,
}

/// Number of an event in the current file's stream (the shared window's index).
type Seq = u64;

/// What the window always keeps for the time before an episode's first failure.
const RING: u64 = 4096;

struct Buffer {
    /// While the episode still reads from the shared window: its first event there.
    from: Option<Seq>,
    /// Where it reaches its per-episode cap (exclusive).
    cap_end: Seq,
    /// Copied out of the window: when it reached its cap, or its tail after the resolution.
    events: Vec<Event>,
    truncated: bool,
    total_cap_reached: bool,
    /// After the resolution: the finished episode, waiting for its frame-written line, and
    /// how many events of the tail it has seen.
    done: Option<(Episode, usize)>,
}

pub struct Collector {
    opts: TimelineOptions,
    /// The current file's events from the oldest one an open episode still reads (at least
    /// the last `before_ns`, up to [`RING`] events); `window[0]` is event number `base`.
    window: VecDeque<Event>,
    base: Seq,
    open: HashMap<u64, Buffer>,
    /// First window event each reading buffer needs (a multiset): what the window must keep.
    readers: BTreeMap<Seq, usize>,
    /// Reading buffers by the event number at which they reach their cap.
    caps: BTreeMap<Seq, Vec<u64>>,
    /// Buffers after their resolution, collecting a short tail.
    tails: Vec<u64>,
    /// Events copied out (open buffers and kept timelines), against `max_total_events`.
    held: usize,
    kept: Vec<Timeline>,
    infos: Vec<SourceInfo>,
    /// `--at` in the input's clock, once the first event tells where the input starts.
    at_ns: Option<i64>,
    /// `--at` gave a wall-clock time but the input has no `# clock` line to convert it.
    at_without_clock: bool,
    /// The input's last event time (its own clock), to tell `--at` past the end.
    last_ns: Option<i64>,
}

impl Collector {
    pub fn new(opts: TimelineOptions) -> Collector {
        Collector {
            opts,
            window: VecDeque::new(),
            base: 0,
            open: HashMap::new(),
            readers: BTreeMap::new(),
            caps: BTreeMap::new(),
            tails: Vec::new(),
            held: 0,
            kept: Vec::new(),
            infos: Vec::new(),
            at_ns: None,
            at_without_clock: false,
            last_ns: None,
        }
    }

    /// Number of the newest event in the window.
    fn newest(&self) -> Seq {
        self.base + self.window.len() as Seq - 1
    }

    fn wanted_at_begin(&self, id: u64) -> bool {
        match self.opts.select {
            Selection::Id(n) => id == n,
            Selection::At(_) => self.kept.is_empty(),
            _ => true,
        }
    }

    fn stop_reading(&mut self, from: Seq) {
        if let Some(n) = self.readers.get_mut(&from) {
            *n -= 1;
            if *n == 0 {
                self.readers.remove(&from);
            }
        }
    }

    /// Copies window events `from..end` out, as far as the total cap allows.
    fn copy_out(&mut self, from: Seq, end: Seq, b: &mut Buffer) {
        let lo = (from.max(self.base) - self.base) as usize;
        let hi = ((end.max(self.base) - self.base) as usize).min(self.window.len());
        let want = hi.saturating_sub(lo);
        let room = self.opts.max_total_events.saturating_sub(self.held);
        let take = want.min(room);
        if take < want {
            b.truncated = true;
            b.total_cap_reached = true;
        }
        b.events.extend(self.window.range(lo..lo + take).copied());
        self.held += take;
    }

    /// Ends a buffer's reading from the window: copies its events up to `end` (exclusive).
    fn detach(&mut self, b: &mut Buffer, end: Seq) {
        if let Some(from) = b.from.take() {
            self.stop_reading(from);
            self.copy_out(from, end, b);
        }
    }

    /// The episode is complete: its events up to the newest one go to `consider`.
    fn complete(&mut self, mut b: Buffer, ep: Episode) {
        let end = self.newest() + 1;
        self.detach(&mut b, end);
        let (truncated, total) = (b.truncated, b.total_cap_reached);
        self.consider(ep, b.events, truncated, total);
    }

    fn consider(&mut self, ep: Episode, events: Vec<Event>, truncated: bool, total_cap: bool) {
        let held = events.len();
        let keep = match self.opts.select {
            Selection::Id(n) => ep.id == n,
            Selection::Slowest(k) => {
                let d = ep.duration_ns().unwrap_or(i64::MIN);
                if ep.end_ns.is_none() || k == 0 {
                    false
                } else if self.kept.len() < k {
                    true
                } else {
                    // Replace the shortest kept one if this is longer.
                    let (i, shortest) = self
                        .kept
                        .iter()
                        .enumerate()
                        .map(|(i, t)| (i, t.episode.duration_ns().unwrap_or(i64::MIN)))
                        .min_by_key(|&(_, d)| d)
                        .expect("k > 0 kept");
                    if d > shortest {
                        let gone = self.kept.swap_remove(i);
                        self.held -= gone.events.len();
                        true
                    } else {
                        false
                    }
                }
            }
            Selection::At(_) => match self.at_ns {
                None => false,
                Some(t) => {
                    let covers = ep.start_ns <= t && ep.end_ns.unwrap_or(ep.last_ns) >= t;
                    match self.kept.first() {
                        None => covers || ep.start_ns >= t,
                        // A covering episode beats a "next one after" found earlier.
                        Some(k) if k.episode.start_ns > t && covers => {
                            let gone: usize = self.kept.iter().map(|t| t.events.len()).sum();
                            self.held -= gone;
                            self.kept.clear();
                            true
                        }
                        _ => false,
                    }
                }
            },
            Selection::Threshold(th) => match ep.duration_ns() {
                _ if ep.abandoned => true,
                Some(d) => d >= th,
                None => true,
            },
        };
        if !keep {
            self.held -= held;
            return;
        }
        let info = &self.infos[ep.file as usize];
        let attempts = attempts(&events, &ep);
        let events = events
            .into_iter()
            .map(|e| describe(&e, &ep, info))
            .collect();
        self.kept.push(Timeline {
            source: info.name.clone(),
            wall_offset_ns: info.wall_offset_ns,
            episode: ep,
            events,
            attempts,
            truncated,
            total_cap_reached: total_cap,
        });
    }

    /// Completes every buffer whose episode has ended (end of a file or of the input).
    fn complete_done(&mut self, file: Option<u32>) {
        let mut ids: Vec<u64> = self
            .open
            .iter()
            .filter(|(_, b)| {
                b.done
                    .as_ref()
                    .is_some_and(|(e, _)| file.is_none_or(|f| e.file == f))
            })
            .map(|(&id, _)| id)
            .collect();
        ids.sort_unstable();
        for id in ids {
            let b = self.open.remove(&id).expect("present");
            self.tails.retain(|&t| t != id);
            let (ep, _) = b.done.clone().expect("filtered");
            self.complete(b, ep);
        }
    }

    pub fn finish(mut self) -> Vec<Timeline> {
        // Episodes whose frame line never came: keep what we have.
        self.complete_done(None);
        let mut kept = self.kept;
        match self.opts.select {
            Selection::Slowest(_) => {
                kept.sort_by_key(|t| std::cmp::Reverse(t.episode.duration_ns()))
            }
            _ => kept.sort_by_key(|t| t.episode.id),
        }
        kept
    }
}

impl EpisodeSink for Collector {
    fn episode_begin(&mut self, id: u64, ev: &Event) {
        if !self.wanted_at_begin(id) || self.window.is_empty() {
            return;
        }
        // The begin event is the newest in the window; show what came shortly before it.
        let newest = self.newest();
        let ring_start = newest.saturating_sub(RING - 1).max(self.base);
        let lo = (ring_start - self.base) as usize;
        let horizon = ev.ts_ns - self.opts.before_ns;
        let skip = self
            .window
            .range(lo..)
            .take_while(|e| e.ts_ns < horizon)
            .count();
        let from = ring_start + skip as Seq;
        let cap_end = (from + self.opts.max_events as Seq).max(newest + 1);
        *self.readers.entry(from).or_default() += 1;
        self.caps.entry(cap_end).or_default().push(id);
        self.open.insert(
            id,
            Buffer {
                from: Some(from),
                cap_end,
                events: Vec::new(),
                truncated: false,
                total_cap_reached: false,
                done: None,
            },
        );
    }

    fn episode_end(&mut self, ep: &Episode) {
        let Some(b) = self.open.get_mut(&ep.id) else {
            return;
        };
        b.done = Some((ep.clone(), 0));
        // Log episodes end on their frame line already; trace ones wait for tx_frame.
        let last_is_frame = match b.from {
            Some(_) => self.window.back().is_some_and(|e| e.kind == Kind::TxFrame),
            None => b.events.last().is_some_and(|e| e.kind == Kind::TxFrame),
        };
        if last_is_frame || ep.abandoned {
            let b = self.open.remove(&ep.id).expect("present");
            self.complete(b, ep.clone());
        } else {
            self.tails.push(ep.id);
        }
    }
}

impl Visitor for Collector {
    fn source_start(&mut self, _index: u32, info: &SourceInfo) {
        self.infos.push(info.clone());
        // Every buffer of the previous file was completed at its end.
        self.base += self.window.len() as Seq;
        self.window.clear();
    }

    fn event(&mut self, ev: &Event, info: &SourceInfo) {
        if let (Selection::At(at), None) = (self.opts.select, self.at_ns) {
            self.at_ns = Some(match at {
                AtTime::Clock(t) => t,
                AtTime::Since(d) => ev.ts_ns.saturating_add(d),
                AtTime::Wall(w) => match info.wall_offset_ns {
                    Some(off) => w - off,
                    None => {
                        self.at_without_clock = true;
                        i64::MIN
                    }
                },
            });
        }
        self.last_ns = Some(self.last_ns.map_or(ev.ts_ns, |l| l.max(ev.ts_ns)));
        self.window.push_back(*ev);
        let seq = self.newest();
        // Buffers past their resolution: a tail up to the frame written (or a few events).
        if !self.tails.is_empty() {
            let mut finished = Vec::new();
            for &id in &self.tails {
                let b = self.open.get_mut(&id).expect("tails are open");
                let (ep, extra) = b.done.as_mut().expect("tails are done");
                if ep.file != ev.file {
                    continue;
                }
                if b.from.is_none() {
                    b.events.push(*ev);
                    self.held += 1;
                }
                *extra += 1;
                let is_frame = ev.kind == Kind::TxFrame
                    && (ep.fd.is_none() || ev.fd.is_none() || ep.fd == ev.fd);
                if is_frame || *extra >= 8 {
                    finished.push(id);
                }
            }
            for id in finished {
                self.tails.retain(|&t| t != id);
                let b = self.open.remove(&id).expect("present");
                let (ep, _) = b.done.clone().expect("finished only when done");
                self.complete(b, ep);
            }
        }
        // Buffers reaching their cap with this event: copy out what they have, stop reading.
        // (Past its resolution a buffer reads on: the short tail is always shown.)
        while self.caps.first_key_value().is_some_and(|(&k, _)| k <= seq) {
            let (_, ids) = self.caps.pop_first().expect("checked");
            for id in ids {
                let Some(mut b) = self.open.remove(&id) else {
                    continue; // completed already
                };
                if b.from.is_some() && b.done.is_none() {
                    b.truncated = true;
                    let end = b.cap_end;
                    self.detach(&mut b, end);
                }
                self.open.insert(id, b);
            }
        }
        // Keep the last `before_ns` (up to RING events) and whatever a reader still needs.
        let horizon = ev.ts_ns - self.opts.before_ns;
        let ring_start = seq.saturating_sub(RING - 1);
        let needed = self.readers.first_key_value().map_or(Seq::MAX, |(&f, _)| f);
        while self.window.len() > 1
            && self.base < needed
            && (self.base < ring_start || self.window.front().is_some_and(|e| e.ts_ns < horizon))
        {
            self.window.pop_front();
            self.base += 1;
        }
    }

    fn open_at_end(&mut self, ep: &Episode, _info: &SourceInfo) {
        if let Some(b) = self.open.remove(&ep.id) {
            self.tails.retain(|&t| t != ep.id);
            self.complete(b, ep.clone());
        }
    }

    fn source_end(&mut self, index: u32, _info: &SourceInfo) {
        self.complete_done(Some(index));
    }
}

fn fd_str(fd: Option<i64>) -> String {
    fd.map_or("?".to_string(), |f| f.to_string())
}

/// One line of text for an event, judged against the episode (room for the pending frame).
fn describe(ev: &Event, ep: &Episode, info: &SourceInfo) -> TimelineEvent {
    let same_fd = ep.fd.is_none() || ev.fd.is_none() || ep.fd == ev.fd;
    // Free space is only judged against the frame while that frame is pending.
    let pending = ev.ts_ns >= ep.start_ns && ep.end_ns.is_none_or(|end| ev.ts_ns <= end);
    let text = match ev.kind {
        Kind::KeventWrite => {
            let data = ev.data.unwrap_or(-1);
            let verdict = match (same_fd, ep.frame_len) {
                _ if !pending => String::new(),
                (false, _) => " (another socket)".to_string(),
                (true, _) if data < 0 => " (free space unknown)".to_string(),
                (true, Some(len)) if data < len => format!(" (no room: the frame needs {len})"),
                (true, Some(_)) => " (room for the frame)".to_string(),
                (true, None) => String::new(),
            };
            format!(
                "write wake-up fd={} data={}{}",
                fd_str(ev.fd),
                data,
                verdict
            )
        }
        Kind::KeventRead => format!(
            "read wake-up fd={} data={}",
            fd_str(ev.fd),
            ev.data.unwrap_or(-1)
        ),
        Kind::EnobufsBegin => {
            let mut detail = Vec::new();
            if let Some(fd) = ev.fd {
                detail.push(format!("fd {fd}"));
            }
            if let Some(l) = ev.len {
                detail.push(format!("frame {l} bytes"));
            }
            let detail = if detail.is_empty() {
                String::new()
            } else {
                format!(" ({})", detail.join(", "))
            };
            format!(
                "{}: first failed send{detail}",
                ev.errno.map_or("send failed".to_string(), errno_name)
            )
        }
        Kind::EnobufsRetry => format!(
            "{}: retry {} failed",
            ev.errno.map_or("send failed".to_string(), errno_name),
            ev.retries.map_or("?".to_string(), |r| r.to_string())
        ),
        Kind::EnobufsResolved => format!(
            "resolved after {} retries{}",
            ev.retries.map_or("?".to_string(), |r| r.to_string()),
            ev.wait_ns
                .map_or(String::new(), |w| format!(" (device wait {} ns)", w))
        ),
        Kind::TimerFired => format!(
            "retry timer fired{}",
            ev.data.map_or(String::new(), |d| format!(" ({d} us)"))
        ),
        Kind::TxFrame => format!("frame written: {} bytes", ev.len.unwrap_or(0)),
        Kind::RxFrame => format!("frame read: {} bytes", ev.len.unwrap_or(0)),
        Kind::GuestKick => match ev.queue {
            Some(q) => format!("guest kick queue {q}"),
            None => "guest kick".to_string(),
        },
        Kind::GuestIrq => match ev.queue {
            Some(q) => format!("interrupt to guest queue {q}"),
            None => "interrupt to guest".to_string(),
        },
        Kind::FrameDrop => format!(
            "frame dropped: {} bytes, reason {}",
            ev.len.unwrap_or(0),
            ev.data.unwrap_or(-1)
        ),
    };
    TimelineEvent {
        ts_ns: ev.ts_ns,
        wall: info.wall_ns(ev.ts_ns).map(crate::log::format_rfc3339_us),
        offset_ns: ev.ts_ns - ep.start_ns,
        probe: ev.kind.name(),
        line: ev.line,
        text,
    }
}

/// `+12us` for whole microseconds, `+12.345us` otherwise.
pub fn offset(ns: i64) -> String {
    if ns % 1000 == 0 {
        format!("{:+}us", ns / 1000)
    } else {
        let sign = if ns < 0 { "-" } else { "+" };
        format!("{sign}{:.3}us", ns.abs() as f64 / 1000.0)
    }
}

/// "4 retries: 3 write events (2 without room), 1 guest kick".
pub fn explain(ep: &Episode) -> String {
    let w = &ep.wakeups;
    let mut parts = Vec::new();
    let plural = |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    if w.write > 0 {
        let mut s = plural(w.write, "write event", "write events");
        if w.write_low_room > 0 || w.write_unknown_room > 0 {
            let mut q = vec![format!("{} without room", w.write_low_room)];
            if w.write_unknown_room > 0 {
                q.push(format!("{} with unknown room", w.write_unknown_room));
            }
            s.push_str(&format!(" ({})", q.join(", ")));
        }
        parts.push(s);
    }
    if w.guest_kick > 0 {
        parts.push(plural(w.guest_kick, "guest kick", "guest kicks"));
    }
    if w.timer > 0 {
        parts.push(plural(w.timer, "timer firing", "timer firings"));
    }
    if w.read > 0 {
        parts.push(plural(w.read, "read event", "read events"));
    }
    let wakeups = if parts.is_empty() {
        "no wake-ups recorded".to_string()
    } else {
        parts.join(", ")
    };
    match (ep.end_ns, ep.retries) {
        (Some(_), Some(r)) => format!(
            "{} {}: {}",
            r,
            if r == 1 { "retry" } else { "retries" },
            wakeups
        ),
        _ => format!(
            "never resolved after {} failed sends: {}",
            ep.failures_seen, wakeups
        ),
    }
}

pub fn render_text(timelines: &[Timeline]) -> String {
    let mut out = String::new();
    for (i, t) in timelines.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let ep = &t.episode;
        let status = match ep.duration_ns() {
            Some(d) if !ep.abandoned => {
                format!("resolved in {}", offset(d).trim_start_matches('+'))
            }
            _ if ep.abandoned => "abandoned (a new episode began on the same fd)".to_string(),
            _ => format!(
                "NEVER RESOLVED (open for {} at the end of the input)",
                offset(ep.last_ns - ep.start_ns).trim_start_matches('+')
            ),
        };
        let _ = writeln!(
            out,
            "Episode {}: {} fd {}, line {}, {}{}, {}",
            ep.id,
            t.source,
            fd_str(ep.fd),
            ep.begin_line,
            ep.errno.map_or("send failed".to_string(), errno_name),
            ep.frame_len
                .map_or(String::new(), |l| format!(", frame {l} bytes")),
            status
        );
        let time_width = if t.wall_offset_ns.is_some() { 27 } else { 20 };
        let _ = writeln!(out, "{:<time_width$}  {:>12}  Event", "Time", "Offset");
        for e in &t.events {
            let time = e.wall.clone().unwrap_or_else(|| {
                format!("{}.{:09}", e.ts_ns / 1_000_000_000, e.ts_ns % 1_000_000_000)
            });
            let _ = writeln!(
                out,
                "{:<time_width$}  {:>12}  {}",
                time,
                offset(e.offset_ns),
                e.text
            );
        }
        if t.total_cap_reached {
            let _ = writeln!(
                out,
                "(more events not shown: the total cap on events across all timelines was reached)"
            );
        } else if t.truncated {
            let _ = writeln!(out, "(more events not shown: per-episode cap reached)");
        }
        let _ = writeln!(out, "{}", explain(ep));
        if let Some(line) = explain_attempts(&t.attempts) {
            let _ = writeln!(out, "{line}");
        }
    }
    out
}

pub fn render_json(timelines: &[Timeline]) -> String {
    let mut s = serde_json::to_string_pretty(timelines).expect("serialises");
    s.push('\n');
    s
}

/// Streams the inputs and returns the selected episodes' timelines.
pub fn collect(
    paths: &[PathBuf],
    opts: &TimelineOptions,
) -> Result<(Vec<Timeline>, InputSummary), Error> {
    let mut c = Collector::new(opts.clone());
    let summary = pipeline::run(paths, &opts.read, &mut c)?;
    if c.at_without_clock {
        return Err(Error::Usage(
            "--at got a wall-clock time, but the trace has no `# clock` line to convert it; \
             use +DURATION from the start or a ts_ns value"
                .to_string(),
        ));
    }
    let (at_ns, last_ns) = (c.at_ns, c.last_ns);
    let kept = c.finish();
    if let (Selection::At(_), true, Some(at), Some(last)) =
        (opts.select, kept.is_empty(), at_ns, last_ns)
    {
        if at > last {
            return Err(Error::Usage(format!(
                "no episode at the --at time: it is {:.6}s after the input's last event",
                (at as f64 - last as f64) / 1e9
            )));
        }
    }
    Ok((kept, summary))
}
