//! Episode timelines: every event from a little before an episode's first failure to its
//! resolution and the frame written, with absolute and relative times and a closing line
//! that explains the retries by their wake-ups.
//!
//! Collected in one streaming pass (stdin works): recent events sit in a short ring, events of
//! open episodes in per-episode buffers, and a buffer is kept only if its episode is selected.

use std::collections::{HashMap, VecDeque};
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
    pub read: ReadOptions,
}

impl TimelineOptions {
    pub fn new(select: Selection) -> TimelineOptions {
        TimelineOptions {
            select,
            before_ns: 100_000,
            max_events: 10_000,
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

struct Buffer {
    events: Vec<Event>,
    truncated: bool,
    /// After the resolution: the finished episode, waiting for its frame-written line.
    done: Option<(Episode, usize)>,
}

pub struct Collector {
    opts: TimelineOptions,
    ring: VecDeque<Event>,
    open: HashMap<u64, Buffer>,
    kept: Vec<Timeline>,
    infos: Vec<SourceInfo>,
    /// `--at` in the input's clock, once the first event tells where the input starts.
    at_ns: Option<i64>,
    /// `--at` gave a wall-clock time but the input has no `# clock` line to convert it.
    at_without_clock: bool,
}

impl Collector {
    pub fn new(opts: TimelineOptions) -> Collector {
        Collector {
            opts,
            ring: VecDeque::new(),
            open: HashMap::new(),
            kept: Vec::new(),
            infos: Vec::new(),
            at_ns: None,
            at_without_clock: false,
        }
    }

    fn wanted_at_begin(&self, id: u64) -> bool {
        match self.opts.select {
            Selection::Id(n) => id == n,
            Selection::At(_) => self.kept.is_empty(),
            _ => true,
        }
    }

    fn consider(&mut self, ep: Episode, events: Vec<Event>, truncated: bool) {
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
                        self.kept.swap_remove(i);
                        true
                    } else {
                        false
                    }
                }
            }
            Selection::At(_) => {
                let Some(t) = self.at_ns else { return };
                let covers = ep.start_ns <= t && ep.end_ns.unwrap_or(ep.last_ns) >= t;
                match self.kept.first() {
                    None => covers || ep.start_ns >= t,
                    // A covering episode beats a "next one after" found earlier.
                    Some(k) if k.episode.start_ns > t && covers => {
                        self.kept.clear();
                        true
                    }
                    _ => false,
                }
            }
            Selection::Threshold(th) => match ep.duration_ns() {
                _ if ep.abandoned => true,
                Some(d) => d >= th,
                None => true,
            },
        };
        if keep {
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
            });
        }
    }

    pub fn finish(mut self) -> Vec<Timeline> {
        // Episodes whose frame line never came: keep what we have.
        let pending: Vec<u64> = self.open.keys().copied().collect();
        for id in pending {
            if let Some(b) = self.open.remove(&id) {
                if let Some((ep, _)) = b.done {
                    self.consider(ep, b.events, b.truncated);
                }
            }
        }
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
        if !self.wanted_at_begin(id) {
            return;
        }
        let from = ev.ts_ns - self.opts.before_ns;
        let events: Vec<Event> = self
            .ring
            .iter()
            .filter(|e| e.file == ev.file && e.ts_ns >= from)
            .copied()
            .collect();
        self.open.insert(
            id,
            Buffer {
                events,
                truncated: false,
                done: None,
            },
        );
    }

    fn episode_end(&mut self, ep: &Episode) {
        if let Some(b) = self.open.get_mut(&ep.id) {
            b.done = Some((ep.clone(), 0));
            // Log episodes end on their frame line already; trace ones wait for tx_frame.
            let last_is_frame = b.events.last().is_some_and(|e| e.kind == Kind::TxFrame);
            if last_is_frame || ep.abandoned {
                let b = self.open.remove(&ep.id).expect("present");
                self.consider(ep.clone(), b.events, b.truncated);
            }
        }
    }
}

impl Visitor for Collector {
    fn source_start(&mut self, _index: u32, info: &SourceInfo) {
        self.infos.push(info.clone());
        self.ring.clear();
    }

    fn event(&mut self, ev: &Event, info: &SourceInfo) {
        if let (Selection::At(at), None) = (self.opts.select, self.at_ns) {
            self.at_ns = Some(match at {
                AtTime::Clock(t) => t,
                AtTime::Since(d) => ev.ts_ns + d,
                AtTime::Wall(w) => match info.wall_offset_ns {
                    Some(off) => w - off,
                    None => {
                        self.at_without_clock = true;
                        i64::MIN
                    }
                },
            });
        }
        self.ring.push_back(*ev);
        let horizon = ev.ts_ns - self.opts.before_ns;
        while self.ring.len() > 4096 || self.ring.front().is_some_and(|e| e.ts_ns < horizon) {
            self.ring.pop_front();
        }
        if self.open.is_empty() {
            return;
        }
        let mut finished = Vec::new();
        for (&id, b) in self.open.iter_mut() {
            if let Some((ep, extra)) = &mut b.done {
                // Tail after the resolution: up to the frame written (or a few events).
                if ep.file != ev.file {
                    continue;
                }
                b.events.push(*ev);
                *extra += 1;
                let is_frame = ev.kind == Kind::TxFrame
                    && (ep.fd.is_none() || ev.fd.is_none() || ep.fd == ev.fd);
                if is_frame || *extra >= 8 {
                    finished.push(id);
                }
                continue;
            }
            if b.events.len() >= self.opts.max_events {
                b.truncated = true;
            } else {
                b.events.push(*ev);
            }
        }
        for id in finished {
            let b = self.open.remove(&id).expect("present");
            let (ep, _) = b.done.expect("finished only when done");
            self.consider(ep, b.events, b.truncated);
        }
    }

    fn open_at_end(&mut self, ep: &Episode, _info: &SourceInfo) {
        if let Some(b) = self.open.remove(&ep.id) {
            self.consider(ep.clone(), b.events, b.truncated);
        }
    }

    fn source_end(&mut self, index: u32, _info: &SourceInfo) {
        let ids: Vec<u64> = self
            .open
            .iter()
            .filter(|(_, b)| b.done.as_ref().is_some_and(|(e, _)| e.file == index))
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            let b = self.open.remove(&id).expect("present");
            let (ep, _) = b.done.expect("filtered");
            self.consider(ep, b.events, b.truncated);
        }
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
        probe: ev.kind.probe_name(),
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
        if t.truncated {
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
    Ok((c.finish(), summary))
}
