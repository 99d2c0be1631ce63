//! Episodes of backpressure: from a frame's first failed send to the send that got it out.
//!
//! Definitions follow the reference fix (pr-556): the first failed send opens an episode
//! (`enobufs_begin`, INFO log), every later failed send of the same frame is a retry
//! (`enobufs_retry` with attempt = 2 for the second failed send), and the success resolves
//! it (`enobufs_resolved`, INFO "resolved after N retries", N = failed sends including the
//! first; wait_ns = CLOCK_MONOTONIC from the first failure to the success).

use std::sync::atomic::Ordering::Relaxed;

use crate::metrics::Metrics;
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

fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::ENOBUFS => "ENOBUFS",
        libc::EAGAIN => "EAGAIN",
        _ => "errno",
    }
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
    pub fn on_failure(&mut self, fd: i32, frame_len: usize, errno: i32, metrics: &Metrics) {
        Metrics::inc(&metrics.retries);
        match &mut self.open {
            None => {
                // One clock reading is both the episode's start and the recorded begin row's
                // timestamp, so wait_ns and the trace's begin..resolved span agree; logging
                // and recording costs fall outside both.
                let start_ns = probes::mono_ns();
                probes::enobufs_begin_at(start_ns, fd.into(), frame_len as i64, errno.into());
                let span = tracing::info_span!("episode", fd, frame_len);
                span.in_scope(|| {
                    tracing::info!(fd, frame_len, errno, "write_frame: {}", errno_name(errno));
                });
                Metrics::inc(&metrics.episodes);
                metrics.open_episode.store(true, Relaxed);
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
                probes::enobufs_retry(fd.into(), open.failures.into(), errno.into());
                open.span.in_scope(|| {
                    tracing::debug!(
                        fd,
                        attempt = open.failures,
                        errno,
                        "write_frame: {} again",
                        errno_name(errno)
                    );
                });
            }
        }
    }

    /// The deferred frame went out; closes the episode if one is open.
    pub fn on_success(&mut self, fd: i32, metrics: &Metrics) -> Option<Resolved> {
        let open = self.open.take()?;
        let end_ns = probes::mono_ns();
        let wait_ns = end_ns.saturating_sub(open.start_ns);
        probes::enobufs_resolved_at(
            end_ns,
            fd.into(),
            open.failures.into(),
            wait_ns as i64,
            open.frame_len as i64,
        );
        open.span.in_scope(|| {
            tracing::info!(
                fd,
                retries = open.failures,
                wait_ns,
                frame_len = open.frame_len,
                "write_frame: {} resolved after {} retries",
                errno_name(open.errno),
                open.failures
            );
        });
        Metrics::inc(&metrics.resolved);
        Metrics::add(&metrics.total_wait_ns, wait_ns);
        metrics.max_wait_ns.fetch_max(wait_ns, Relaxed);
        metrics.open_episode.store(false, Relaxed);
        Some(Resolved {
            retries: open.failures,
            wait_ns,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_failures_including_the_first() {
        let m = Metrics::new();
        let mut e = Episode::default();
        assert_eq!(e.on_success(3, &m), None);
        e.on_failure(3, 65226, libc::ENOBUFS, &m);
        assert!(e.is_open());
        assert!(m.snapshot().open_episode);
        e.on_failure(3, 65226, libc::ENOBUFS, &m);
        e.on_failure(3, 65226, libc::EAGAIN, &m);
        assert_eq!(e.failures(), 3);
        let r = e.on_success(3, &m).unwrap();
        assert_eq!(r.retries, 3);
        let s = m.snapshot();
        assert_eq!(
            (s.episodes, s.retries, s.resolved, s.open_episode),
            (1, 3, 1, false)
        );
        assert_eq!(s.max_wait_ns, r.wait_ns);
        assert!(!e.is_open());
    }

    #[test]
    fn logs_start_and_resolution_at_info_in_the_reference_format() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let w = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || w.clone())
            .finish();
        let m = Metrics::new();
        tracing::subscriber::with_default(sub, || {
            let mut e = Episode::default();
            e.on_failure(9, 1514, libc::ENOBUFS, &m);
            e.on_failure(9, 1514, libc::ENOBUFS, &m);
            e.on_success(9, &m);
            let mut e = Episode::default();
            e.on_failure(9, 66, libc::EAGAIN, &m);
            e.on_success(9, &m);
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "retries are DEBUG, not INFO: {text}");
        assert!(lines[0].contains("INFO") && lines[0].contains("write_frame: ENOBUFS"));
        assert!(
            lines[1].contains("INFO")
                && lines[1].contains("write_frame: ENOBUFS resolved after 2 retries")
        );
        assert!(lines[2].contains("write_frame: EAGAIN"));
        assert!(lines[3].contains("write_frame: EAGAIN resolved after 1 retries"));
    }
}
