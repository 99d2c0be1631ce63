//! One small poller type: epoll + timerfd on Linux (`linux.rs`), kqueue + EVFILT_TIMER on
//! macOS (`macos.rs`).
//!
//! Both halves have the same shape: `add` registers an fd under a token (edge-triggered for
//! the backend socket, level-triggered for wake-up fds), `arm_timer` arms a one-shot timer
//! unless one is already pending (a pending retry is never postponed), and `wait` fills a
//! list of [`Event`]s. The Linux half is compiled and tested here; the macOS half is
//! type-checked and linted by `.ci/macos-check.sh` and has never run.

pub mod kevent;
#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub use linux::{bytes_waiting, send_space, Poller};

#[cfg(target_os = "macos")]
mod macos;
#[cfg(target_os = "macos")]
pub use macos::{bytes_waiting, send_space, Poller};

/// Token reported for the one-shot timer.
pub const TIMER_TOKEN: u64 = u64::MAX;

/// How an fd is watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    /// Readable only, level-triggered: wake-up fds that the worker drains every time.
    Read,
    /// Readable and writable, edge-triggered: the backend socket. The worker reads and
    /// writes until the socket would block, so it never needs a level-triggered repeat.
    ReadWriteEdge,
}

/// One readiness report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub token: u64,
    pub readable: bool,
    pub writable: bool,
    /// The peer hung up (EPOLLHUP/EPOLLRDHUP, EV_EOF).
    pub hup: bool,
    /// The socket has a pending error (EPOLLERR; EV_ERROR, or EV_EOF with an error).
    pub error: bool,
    /// The error itself where the poller carries it (kqueue: EV_EOF's `fflags`); `None`
    /// where it does not (epoll) and the caller asks SO_ERROR.
    pub error_code: Option<i32>,
    /// kqueue's `data` (free send space / bytes waiting); `None` where the poller does not
    /// report it (epoll) and the caller asks the socket instead.
    pub data: Option<i64>,
}

impl Event {
    pub fn is_timer(&self) -> bool {
        self.token == TIMER_TOKEN
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::Notifier;
    use std::os::fd::AsFd;
    use std::time::Duration;

    #[test]
    fn timer_fires_once_and_is_not_postponed() {
        let mut p = Poller::new().unwrap();
        assert!(p.arm_timer(Duration::from_micros(50)).unwrap());
        // A second arm while pending must leave the first deadline in place.
        assert!(!p.arm_timer(Duration::from_secs(3600)).unwrap());
        let mut evs = Vec::new();
        while evs.is_empty() {
            p.wait(&mut evs, Some(Duration::from_secs(60))).unwrap();
        }
        assert!(evs.iter().any(|e| e.is_timer()));
        assert!(!p.timer_pending());
        // One-shot: nothing more arrives.
        p.wait(&mut evs, Some(Duration::from_millis(5))).unwrap();
        assert!(evs.iter().all(|e| !e.is_timer()));
    }

    #[test]
    fn reports_notifier_readable_with_token() {
        let mut p = Poller::new().unwrap();
        let n = Notifier::new().unwrap();
        p.add(n.as_fd(), 7, Interest::Read).unwrap();
        n.notify().unwrap();
        let mut evs = Vec::new();
        p.wait(&mut evs, Some(Duration::from_secs(60))).unwrap();
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].token, 7);
        assert!(evs[0].readable);
    }

    #[test]
    fn write_interest_toggles_and_reads_still_arrive() {
        let mut p = Poller::new().unwrap();
        let (a, b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        p.add(a.as_fd(), 3, Interest::ReadWriteEdge).unwrap();
        p.watch_writable(a.as_fd(), 3, false, None).unwrap();
        b.send(&[1]).unwrap();
        let mut evs = Vec::new();
        p.wait(&mut evs, Some(Duration::from_secs(60))).unwrap();
        assert!(evs.iter().any(|e| e.token == 3 && e.readable));
        // With write interest off nothing reports writable (the socket is).
        assert!(evs.iter().all(|e| !e.writable));
        p.watch_writable(a.as_fd(), 3, true, None).unwrap();
        p.watch_writable(a.as_fd(), 3, true, None).unwrap();
        // Linux: turning it on reports a socket that is already writable, without a new
        // edge (whether kqueue does is unknown; the retry timer covers it there).
        #[cfg(target_os = "linux")]
        {
            p.wait(&mut evs, Some(Duration::from_secs(60))).unwrap();
            assert!(evs.iter().any(|e| e.token == 3 && e.writable), "{evs:?}");
            // Off again: data from the peer is reported as readable only.
            p.watch_writable(a.as_fd(), 3, false, None).unwrap();
            b.send(&[2]).unwrap();
            p.wait(&mut evs, Some(Duration::from_secs(60))).unwrap();
            assert!(evs.iter().any(|e| e.token == 3 && e.readable));
            assert!(evs.iter().all(|e| !e.writable), "{evs:?}");
        }
    }

    // Linux answers from the socket; on macOS the data comes from kqueue itself.
    #[cfg(target_os = "linux")]
    #[test]
    fn socket_space_and_bytes_waiting() {
        let (a, b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        assert_eq!(bytes_waiting(b.as_fd()), 0);
        a.send(&[1, 2, 3]).unwrap();
        assert_eq!(bytes_waiting(b.as_fd()), 3);
        assert!(send_space(a.as_fd()) > 0);
        let n = Notifier::new().unwrap();
        assert_eq!(bytes_waiting(n.as_fd()), -1);
    }
}
