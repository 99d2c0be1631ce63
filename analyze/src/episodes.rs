//! Pairing enobufs_begin / retry / resolved per (file, fd) into episodes, and counting the
//! wake-ups each episode saw.

use std::collections::HashMap;

use serde::Serialize;

use crate::error::Error;
use crate::event::{Event, Kind};

/// Wake-ups seen while an episode was open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Wakeups {
    /// Write wake-ups on the episode's socket.
    pub write: u64,
    /// ... of which reported less free space than the pending frame needs.
    pub write_low_room: u64,
    /// ... of which did not report the free space (data = -1), or the frame size is unknown.
    pub write_unknown_room: u64,
    pub read: u64,
    pub guest_kick: u64,
    pub timer: u64,
}

/// One ENOBUFS/EAGAIN episode: first failed send of a frame until it went out.
#[derive(Clone, Debug, Serialize)]
pub struct Episode {
    /// 1-based, in order of the episode's first failure across all inputs.
    pub id: u64,
    pub file: u32,
    pub fd: Option<i64>,
    pub start_ns: i64,
    /// `None`: still open at the end of the input.
    pub end_ns: Option<i64>,
    /// Last event seen while the episode was open (for open episodes: how long so far).
    pub last_ns: i64,
    /// Failed sends, the first included, as the resolution reported it.
    pub retries: Option<i64>,
    /// Failure events seen (begin + retry rows; logs only log the first in newer builds).
    pub failures_seen: i64,
    pub errno: Option<i64>,
    pub frame_len: Option<i64>,
    /// The device's own measure of the wait, when the input has it (trace CSV).
    pub wait_ns: Option<i64>,
    pub begin_line: u64,
    pub end_line: Option<u64>,
    pub wakeups: Wakeups,
    /// Closed because a new episode began on the same fd without a resolution.
    pub abandoned: bool,
    #[serde(skip)]
    unclassified_writes: Vec<i64>,
    /// The file's read/kick/timer counts when the episode began (see [`FileWakeups`]).
    #[serde(skip)]
    since: FileWakeups,
    /// The highest attempt number a retry row reported.
    #[serde(skip)]
    last_attempt: Option<i64>,
}

impl Episode {
    pub fn duration_ns(&self) -> Option<i64> {
        self.end_ns.map(|e| e - self.start_ns)
    }

    fn classify_write(&mut self, data: Option<i64>) {
        self.wakeups.write += 1;
        match (data, self.frame_len) {
            (Some(d), Some(len)) if d >= 0 => {
                if d < len {
                    self.wakeups.write_low_room += 1;
                }
            }
            (Some(d), None) if d >= 0 && self.unclassified_writes.len() < 4096 => {
                self.unclassified_writes.push(d)
            }
            _ => self.wakeups.write_unknown_room += 1,
        }
    }

    /// Once the frame size is known (logs: from the frame line after the resolution),
    /// decide the write wake-ups seen before.
    fn settle(&mut self) {
        let pending = std::mem::take(&mut self.unclassified_writes);
        for d in pending {
            match self.frame_len {
                Some(len) if d < len => self.wakeups.write_low_room += 1,
                Some(_) => {}
                None => self.wakeups.write_unknown_room += 1,
            }
        }
    }
}

/// Receives episodes as they start and end.
pub trait EpisodeSink {
    fn episode_begin(&mut self, _id: u64, _ev: &Event) {}
    fn episode_end(&mut self, _ep: &Episode) {}
}

/// Odd but explainable pairings, reported as notes.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Anomalies {
    /// Resolutions whose begin came before the capture started (first event for the fd).
    pub resolved_before_capture: u64,
    /// Retry rows without an open episode.
    pub retry_without_begin: u64,
    /// A begin while the same fd had an open episode (the earlier one is reported abandoned).
    pub begin_while_open: u64,
    /// Retry rows whose attempt number did not go up within their episode, or resolutions
    /// counting fewer failed sends than the last attempt seen (a broken or merged trace).
    #[serde(skip_serializing_if = "is_zero")]
    pub retries_backwards: u64,
    /// The first such line, for the note.
    #[serde(skip)]
    pub retries_backwards_first: Option<(u32, u64)>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Anomalies {
    fn retries_backwards(&mut self, ev: &Event) {
        self.retries_backwards += 1;
        self.retries_backwards_first
            .get_or_insert((ev.file, ev.line));
    }
}

/// Read wake-ups, guest kicks and timer firings of one file so far. These count towards every
/// episode open in the file, so each episode notes the counts at its begin and takes the
/// difference when it closes: adding to every open episode at every wake-up cost O(open
/// episodes) per event.
#[derive(Clone, Copy, Debug, Default)]
struct FileWakeups {
    read: u64,
    guest_kick: u64,
    timer: u64,
    /// Time of the latest of them.
    last_ns: i64,
}

impl FileWakeups {
    fn total(&self) -> u64 {
        self.read + self.guest_kick + self.timer
    }
}

/// Open episodes are keyed by (file, fd): one per socket at a time.
type SocketKey = (u32, Option<i64>);

pub struct Tracker {
    open: HashMap<SocketKey, Episode>,
    file_wakeups: Vec<FileWakeups>,
    /// Resolved log episodes waiting for the frame line that tells their size.
    awaiting_len: Vec<Episode>,
    /// (file, fd) keys that have had any begin or resolution.
    seen: std::collections::HashSet<SocketKey>,
    next_id: u64,
    pub anomalies: Anomalies,
    sources: Vec<String>,
}

fn same_socket(ep: &Episode, ev: &Event) -> bool {
    ep.file == ev.file && (ep.fd.is_none() || ev.fd.is_none() || ep.fd == ev.fd)
}

impl Tracker {
    pub fn new(sources: Vec<String>) -> Tracker {
        Tracker {
            open: HashMap::new(),
            file_wakeups: Vec::new(),
            awaiting_len: Vec::new(),
            seen: Default::default(),
            next_id: 1,
            anomalies: Anomalies::default(),
            sources,
        }
    }

    fn wakeups_of(&mut self, file: u32) -> &mut FileWakeups {
        let i = file as usize;
        if self.file_wakeups.len() <= i {
            self.file_wakeups.resize(i + 1, FileWakeups::default());
        }
        &mut self.file_wakeups[i]
    }

    /// Takes an episode out of the open set with its file-wide wake-ups counted in.
    fn take_open(&mut self, key: &SocketKey) -> Option<Episode> {
        let mut ep = self.open.remove(key)?;
        let now = *self.wakeups_of(ep.file);
        let w = &mut ep.wakeups;
        w.read += now.read - ep.since.read;
        w.guest_kick += now.guest_kick - ep.since.guest_kick;
        w.timer += now.timer - ep.since.timer;
        if now.total() > ep.since.total() {
            ep.last_ns = ep.last_ns.max(now.last_ns);
        }
        ep.since = now;
        Some(ep)
    }

    pub fn feed(&mut self, ev: &Event, sink: &mut dyn EpisodeSink) -> Result<(), Error> {
        let key = (ev.file, ev.fd);
        match ev.kind {
            Kind::EnobufsBegin => {
                self.flush_awaiting(ev.file, sink);
                if let Some(mut old) = self.take_open(&key) {
                    old.abandoned = true;
                    old.settle();
                    self.anomalies.begin_while_open += 1;
                    sink.episode_end(&old);
                }
                self.seen.insert(key);
                let since = *self.wakeups_of(ev.file);
                let ep = Episode {
                    id: self.next_id,
                    file: ev.file,
                    fd: ev.fd,
                    start_ns: ev.ts_ns,
                    end_ns: None,
                    last_ns: ev.ts_ns,
                    retries: None,
                    failures_seen: 1,
                    errno: ev.errno,
                    frame_len: ev.len,
                    wait_ns: None,
                    begin_line: ev.line,
                    end_line: None,
                    wakeups: Wakeups::default(),
                    abandoned: false,
                    unclassified_writes: Vec::new(),
                    since,
                    last_attempt: None,
                };
                self.next_id += 1;
                sink.episode_begin(ep.id, ev);
                self.open.insert(key, ep);
            }
            Kind::EnobufsRetry => match self.open.get_mut(&key) {
                Some(ep) => {
                    ep.failures_seen += 1;
                    ep.last_ns = ev.ts_ns;
                    if let Some(attempt) = ev.retries {
                        if ep.last_attempt.is_some_and(|last| attempt <= last) {
                            self.anomalies.retries_backwards(ev);
                        }
                        ep.last_attempt = Some(ep.last_attempt.map_or(attempt, |l| l.max(attempt)));
                    }
                }
                None => self.anomalies.retry_without_begin += 1,
            },
            Kind::EnobufsResolved => {
                let Some(mut ep) = self.take_open(&key) else {
                    if self.seen.insert(key) {
                        // The capture started while this episode was already under way.
                        self.anomalies.resolved_before_capture += 1;
                        return Ok(());
                    }
                    return Err(Error::ResolvedWithoutBegin {
                        file: self.sources[ev.file as usize].clone(),
                        line: ev.line,
                        fd: ev.fd.map_or("(unknown)".to_string(), |fd| fd.to_string()),
                        what: "enobufs_resolved",
                    });
                };
                if let (Some(r), Some(last)) = (ev.retries, ep.last_attempt) {
                    if r < last {
                        self.anomalies.retries_backwards(ev);
                    }
                }
                ep.end_ns = Some(ev.ts_ns);
                ep.last_ns = ev.ts_ns;
                ep.end_line = Some(ev.line);
                ep.retries = ev.retries;
                ep.wait_ns = ev.wait_ns;
                if ev.errno.is_some() && ep.errno.is_none() {
                    ep.errno = ev.errno;
                }
                if ep.frame_len.is_none() {
                    ep.frame_len = ev.len;
                }
                if ep.frame_len.is_none() {
                    // Logs: the size comes with the frame line that follows; keep the episode
                    // until then so its write wake-ups can be judged against it.
                    self.awaiting_len.push(ep);
                } else {
                    ep.settle();
                    sink.episode_end(&ep);
                }
            }
            Kind::KeventWrite => match ev.fd {
                // The socket's own episode, and one without an fd (logs) in the same file.
                Some(_) => {
                    for k in [key, (ev.file, None)] {
                        if let Some(ep) = self.open.get_mut(&k) {
                            ep.classify_write(ev.data);
                            ep.last_ns = ev.ts_ns;
                        }
                    }
                }
                None => {
                    for ep in self.open.values_mut().filter(|e| same_socket(e, ev)) {
                        ep.classify_write(ev.data);
                        ep.last_ns = ev.ts_ns;
                    }
                }
            },
            Kind::KeventRead | Kind::GuestKick | Kind::TimerFired => {
                let w = self.wakeups_of(ev.file);
                match ev.kind {
                    Kind::KeventRead => w.read += 1,
                    Kind::GuestKick => w.guest_kick += 1,
                    _ => w.timer += 1,
                }
                w.last_ns = ev.ts_ns;
            }
            Kind::TxFrame if !self.awaiting_len.is_empty() => {
                if let Some(i) = self.awaiting_len.iter().position(|e| same_socket(e, ev)) {
                    let mut ep = self.awaiting_len.swap_remove(i);
                    ep.frame_len = ev.len;
                    ep.settle();
                    sink.episode_end(&ep);
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn flush_awaiting(&mut self, file: u32, sink: &mut dyn EpisodeSink) {
        let mut i = 0;
        while i < self.awaiting_len.len() {
            if self.awaiting_len[i].file == file {
                let mut ep = self.awaiting_len.swap_remove(i);
                ep.settle();
                sink.episode_end(&ep);
            } else {
                i += 1;
            }
        }
    }

    /// End of one input file: its resolved episodes are final; its open ones are returned.
    pub fn finish_file(&mut self, file: u32, sink: &mut dyn EpisodeSink) -> Vec<Episode> {
        self.flush_awaiting(file, sink);
        let keys: Vec<SocketKey> = self.open.keys().filter(|k| k.0 == file).copied().collect();
        let mut still_open: Vec<Episode> = keys
            .iter()
            .filter_map(|k| self.take_open(k))
            .map(|mut ep| {
                ep.settle();
                ep
            })
            .collect();
        still_open.sort_by_key(|e| e.id);
        still_open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Ended(Vec<Episode>);
    impl EpisodeSink for Ended {
        fn episode_end(&mut self, ep: &Episode) {
            self.0.push(ep.clone());
        }
    }

    fn ev(kind: Kind, ts: i64, fd: Option<i64>) -> Event {
        let mut e = Event::new(kind, ts);
        e.fd = fd;
        e.len = Some(100);
        e.retries = Some(1);
        e.data = Some(50);
        e
    }

    #[test]
    fn file_wide_wake_ups_count_only_while_each_episode_is_open() {
        let mut t = Tracker::new(vec!["f".into()]);
        let mut ended = Ended::default();
        let feed = [
            ev(Kind::GuestKick, 1, None), // before both: counts for neither
            ev(Kind::EnobufsBegin, 2, Some(7)),
            ev(Kind::GuestKick, 3, None),
            ev(Kind::EnobufsBegin, 4, Some(8)),
            ev(Kind::KeventWrite, 5, Some(8)),
            ev(Kind::KeventRead, 6, Some(8)),
            ev(Kind::TimerFired, 7, None),
            ev(Kind::EnobufsResolved, 8, Some(7)),
            ev(Kind::GuestKick, 9, None),
        ];
        for e in &feed {
            t.feed(e, &mut ended).unwrap();
        }
        let open = t.finish_file(0, &mut ended);
        let a = &ended.0[0];
        assert_eq!(a.fd, Some(7));
        let w = a.wakeups;
        assert_eq!((w.guest_kick, w.read, w.timer, w.write), (1, 1, 1, 0));
        assert_eq!(a.last_ns, 8);
        let b = &open[0];
        let w = b.wakeups;
        assert_eq!((w.guest_kick, w.read, w.timer, w.write), (1, 1, 1, 1));
        assert_eq!(w.write_low_room, 1);
        assert_eq!(b.last_ns, 9);
    }
}
