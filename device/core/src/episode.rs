//! Episodes of backpressure: from a frame's first failed send to the send that got it out.
//!
//! Definitions follow libkrun's virtio-net unixgram backend (PR 556): the first failed send opens an episode
//! (`enobufs_begin`, INFO log), every later failed send of the same frame is a retry
//! (`enobufs_retry` with attempt = 2 for the second failed send), and the success resolves
//! it (`enobufs_resolved`, INFO "resolved after N retries", N = failed sends including the
//! first; wait_ns = CLOCK_MONOTONIC from the first failure to the success).

use crate::events::DeviceEvents;
use crate::probes;

#[derive(Debug)]
struct Open {
    start_ns: u64,
    failures: u32,
    frame_len: usize,
    /// errno of the first failure; names the episode in the log lines.
    errno: i32,
    span: tracing::Span,
}

/// Episode state of one backend's TX path; at most one frame is deferred at a time.
#[derive(Debug, Default)]
pub struct Episode {
    open: Option<Open>,
}

/// What a resolved episode measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    pub retries: u32,
    pub wait_ns: u64,
}

impl Episode {
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Failed sends so far in the open episode (0 when none is open).
    pub fn failures(&self) -> u32 {
        self.open.as_ref().map_or(0, |o| o.failures)
    }

    /// A send of a `frame_len`-byte frame wrote nothing (or not all of it).
    pub fn on_failure(&mut self, events: &DeviceEvents, frame_len: usize, errno: i32) {
        match &mut self.open {
            None => {
                // One clock reading is both the episode's start and the recorded begin row's
                // timestamp, so wait_ns and the trace's begin..resolved span agree; logging
                // and recording costs fall outside both.
                let start_ns = probes::mono_ns();
                let span = events.episode_begin(start_ns, frame_len, errno);
                self.open = Some(Open {
                    start_ns,
                    failures: 1,
                    frame_len,
                    errno,
                    span,
                });
            }
            Some(open) => {
                open.failures += 1;
                events.episode_retry(&open.span, open.failures, errno);
            }
        }
    }

    /// The deferred frame was dropped instead of sent: the episode ends unresolved (its
    /// begin row has no resolved row).
    pub fn abandon(&mut self, events: &DeviceEvents) {
        if self.open.take().is_some() {
            events.episode_abandoned();
        }
    }

    /// A retry policy gave up on the deferred frame: the episode ends with a `frame_drop`
    /// row (reason `retry_exhausted`, the frame's length) in place of `enobufs_resolved`.
    pub fn give_up(&mut self, events: &DeviceEvents, frame_len: usize) {
        self.abandon(events);
        events.frame_dropped(frame_len, crate::probes::DropReason::RetryExhausted);
    }

    /// The deferred frame went out; closes the episode if one is open.
    pub fn on_success(&mut self, events: &DeviceEvents) -> Option<Resolved> {
        let open = self.open.take()?;
        let end_ns = probes::mono_ns();
        let wait_ns = end_ns.saturating_sub(open.start_ns);
        events.episode_resolved(
            &open.span,
            end_ns,
            open.failures,
            wait_ns,
            open.frame_len,
            open.errno,
        );
        Some(Resolved {
            retries: open.failures,
            wait_ns,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn counts_failures_including_the_first() {
        let m = Arc::new(Metrics::new());
        let ev = DeviceEvents::new(3, m.clone());
        let mut e = Episode::default();
        assert_eq!(e.on_success(&ev), None);
        e.on_failure(&ev, 65226, libc::ENOBUFS);
        assert!(e.is_open());
        assert!(m.snapshot().open_episode);
        e.on_failure(&ev, 65226, libc::ENOBUFS);
        e.on_failure(&ev, 65226, libc::EAGAIN);
        assert_eq!(e.failures(), 3);
        let r = e.on_success(&ev).unwrap();
        assert_eq!(r.retries, 3);
        let s = m.snapshot();
        assert_eq!(
            (s.episodes, s.retries, s.resolved, s.open_episode),
            (1, 3, 1, false)
        );
        assert_eq!(s.max_wait_ns, r.wait_ns);
        assert!(!e.is_open());
    }
}
