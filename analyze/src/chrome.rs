//! Chrome trace-event JSON (opens in Perfetto / chrome://tracing): episodes as complete spans
//! on the device thread's track, wake-ups, kicks and interrupts as instants, the free send
//! space as a counter track. Written while streaming, so any input size works.

use std::io::{self, Write};
use std::path::PathBuf;

use serde_json::json;

use crate::episodes::{Episode, EpisodeSink};
use crate::error::Error;
use crate::event::{errno_name, Event, Kind};
use crate::input::SourceInfo;
use crate::pipeline::{self, InputSummary, ReadOptions, Visitor};

#[derive(Clone, Debug, Default)]
pub struct ChromeOptions {
    /// Also emit every frame read/written as an instant (large traces get big).
    pub frames: bool,
    pub read: ReadOptions,
}

struct Writer<W: Write> {
    out: W,
    first: bool,
    err: Option<io::Error>,
    frames: bool,
    /// Track (tid) of the device worker per file: the thread that saw the episode's begin.
    worker_tid: Vec<i64>,
    /// Thread names already announced, per file.
    named: Vec<std::collections::HashSet<i64>>,
    pub written: u64,
    /// One event's JSON, reused.
    line: Vec<u8>,
}

/// Chrome's `ts` is in microseconds; keep ns precision as a fraction.
fn us(ns: i64) -> f64 {
    ns as f64 / 1000.0
}

impl<W: Write> Writer<W> {
    fn emit(&mut self, v: serde_json::Value) {
        if self.err.is_some() {
            return;
        }
        let sep: &[u8] = if self.first { b"\n" } else { b",\n" };
        self.first = false;
        // Serialised into a reused buffer first, so a write error stays an io::Error of its
        // own kind (a closed stdout is a broken pipe, not serde's wrapped error).
        self.line.clear();
        self.line.extend_from_slice(sep);
        serde_json::to_writer(&mut self.line, &v).expect("JSON values serialise");
        let r = self.out.write_all(&self.line);
        if let Err(e) = r {
            self.err = Some(e);
        }
        self.written += 1;
    }

    fn pid(file: u32) -> u32 {
        file + 1
    }

    fn name_thread(&mut self, file: u32, tid: i64, name: &str) {
        if self.named[file as usize].insert(tid) {
            self.emit(
                json!({"ph": "M", "name": "thread_name", "pid": Self::pid(file), "tid": tid,
                "args": {"name": name}}),
            );
        }
    }

    fn tid_of(&mut self, ev: &Event) -> i64 {
        let tid = ev.tid.unwrap_or(0);
        let name = match ev.kind {
            Kind::GuestKick => format!("guest (tid {tid})"),
            _ if tid == 0 => "device".to_string(),
            _ => format!("device worker (tid {tid})"),
        };
        self.name_thread(ev.file, tid, &name);
        tid
    }
}

impl<W: Write> EpisodeSink for Writer<W> {
    fn episode_begin(&mut self, _id: u64, ev: &Event) {
        let f = ev.file as usize;
        if let Some(tid) = ev.tid {
            self.worker_tid[f] = tid;
        }
    }

    fn episode_end(&mut self, ep: &Episode) {
        let Some(end) = ep.end_ns.filter(|_| !ep.abandoned) else {
            self.episode_span(ep, ep.last_ns, "ENOBUFS episode (abandoned)");
            return;
        };
        let r = ep.retries.unwrap_or(ep.failures_seen);
        let name = format!(
            "ENOBUFS episode ({r} {})",
            if r == 1 { "retry" } else { "retries" }
        );
        self.episode_span(ep, end, &name);
    }
}

impl<W: Write> Writer<W> {
    fn episode_span(&mut self, ep: &Episode, end: i64, name: &str) {
        let tid = self.worker_tid[ep.file as usize];
        let w = ep.wakeups;
        self.emit(json!({
            "ph": "X", "name": name, "cat": "episode", "pid": Self::pid(ep.file), "tid": tid,
            "ts": us(ep.start_ns), "dur": us(end - ep.start_ns),
            "args": {
                "episode": ep.id, "fd": ep.fd, "retries": ep.retries,
                "errno": ep.errno.map(errno_name), "frame_len": ep.frame_len,
                "wait_ns": ep.wait_ns, "line": ep.begin_line,
                "write_wakeups": w.write, "write_wakeups_without_room": w.write_low_room,
                "read_wakeups": w.read, "guest_kicks": w.guest_kick, "timer_firings": w.timer,
            }
        }));
    }
}

impl<W: Write> Visitor for Writer<W> {
    fn source_start(&mut self, index: u32, info: &SourceInfo) {
        self.worker_tid.push(0);
        self.named.push(Default::default());
        self.emit(
            json!({"ph": "M", "name": "process_name", "pid": Self::pid(index), "tid": 0,
            "args": {"name": format!("vnet device ({})", info.name)}}),
        );
    }

    fn event(&mut self, ev: &Event, _info: &SourceInfo) {
        let pid = Self::pid(ev.file);
        let ts = us(ev.ts_ns);
        match ev.kind {
            Kind::KeventWrite => {
                let tid = self.tid_of(ev);
                let data = ev.data.unwrap_or(-1);
                self.emit(
                    json!({"ph": "i", "s": "t", "name": "write wake-up", "cat": "wakeup",
                    "pid": pid, "tid": tid, "ts": ts, "args": {"fd": ev.fd, "data": data}}),
                );
                if data >= 0 {
                    self.emit(json!({"ph": "C", "name": format!("free send space fd {}", ev.fd.unwrap_or(-1)),
                        "pid": pid, "ts": ts, "args": {"bytes": data}}));
                }
            }
            Kind::KeventRead => {
                let tid = self.tid_of(ev);
                self.emit(
                    json!({"ph": "i", "s": "t", "name": "read wake-up", "cat": "wakeup",
                    "pid": pid, "tid": tid, "ts": ts, "args": {"fd": ev.fd, "data": ev.data}}),
                );
            }
            Kind::TimerFired => {
                let tid = self.tid_of(ev);
                self.emit(
                    json!({"ph": "i", "s": "t", "name": "retry timer", "cat": "wakeup",
                    "pid": pid, "tid": tid, "ts": ts, "args": {"delay_us": ev.data}}),
                );
            }
            Kind::GuestKick => {
                let tid = self.tid_of(ev);
                self.emit(
                    json!({"ph": "i", "s": "t", "name": "guest kick", "cat": "wakeup",
                    "pid": pid, "tid": tid, "ts": ts, "args": {"queue": ev.queue}}),
                );
            }
            Kind::GuestIrq => {
                let tid = self.tid_of(ev);
                self.emit(
                    json!({"ph": "i", "s": "t", "name": "guest interrupt", "cat": "irq",
                    "pid": pid, "tid": tid, "ts": ts, "args": {"queue": ev.queue}}),
                );
            }
            Kind::EnobufsBegin | Kind::EnobufsRetry => {
                let tid = self.tid_of(ev);
                let name = if ev.kind == Kind::EnobufsBegin {
                    "send failed (first)"
                } else {
                    "send failed (retry)"
                };
                self.emit(json!({"ph": "i", "s": "t", "name": name, "cat": "send",
                    "pid": pid, "tid": tid, "ts": ts,
                    "args": {"fd": ev.fd, "errno": ev.errno.map(errno_name), "attempt": ev.retries}}));
            }
            Kind::FrameDrop => {
                let tid = self.tid_of(ev);
                self.emit(json!({"ph": "i", "s": "t", "name": "frame dropped", "cat": "frame",
                    "pid": pid, "tid": tid, "ts": ts, "args": {"fd": ev.fd, "len": ev.len, "reason": ev.data}}));
            }
            Kind::TxFrame | Kind::RxFrame if self.frames => {
                let tid = self.tid_of(ev);
                let name = if ev.kind == Kind::TxFrame {
                    "frame written"
                } else {
                    "frame read"
                };
                self.emit(json!({"ph": "i", "s": "t", "name": name, "cat": "frame",
                    "pid": pid, "tid": tid, "ts": ts, "args": {"fd": ev.fd, "len": ev.len}}));
            }
            _ => {}
        }
    }

    fn open_at_end(&mut self, ep: &Episode, _info: &SourceInfo) {
        self.episode_span(ep, ep.last_ns, "ENOBUFS episode (never resolved)");
    }

    fn stopped(&self) -> bool {
        self.err.is_some()
    }
}

/// Streams the inputs into `out` as a Chrome trace. Returns the number of trace events.
pub fn write_chrome(
    paths: &[PathBuf],
    opts: &ChromeOptions,
    out: &mut dyn Write,
) -> Result<(u64, InputSummary), Error> {
    let io_err = |e| Error::io("output", e);
    out.write_all(b"{\"displayTimeUnit\":\"ns\",\"traceEvents\":[")
        .map_err(io_err)?;
    let mut w = Writer {
        out: &mut *out,
        first: true,
        err: None,
        frames: opts.frames,
        worker_tid: Vec::new(),
        named: Vec::new(),
        written: 0,
        line: Vec::with_capacity(256),
    };
    let summary = pipeline::run(paths, &opts.read, &mut w)?;
    if let Some(e) = w.err.take() {
        return Err(io_err(e));
    }
    let written = w.written;
    out.write_all(b"\n]}\n").map_err(io_err)?;
    out.flush().map_err(io_err)?;
    Ok((written, summary))
}
