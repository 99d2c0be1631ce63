//! The episode log lines at INFO, in libkrun's format (PR 556): "write_frame: ENOBUFS" when
//! an episode opens, "write_frame: ENOBUFS resolved after N retries" when it closes, and
//! nothing at INFO for the retries in between.
//!
//! Its own test binary with one test and a global subscriber: a subscriber set with
//! `tracing::subscriber::with_default` races with other test threads over tracing's
//! callsite interest cache (a callsite first hit on a thread without a subscriber is
//! cached as "never"), which made this check capture 0 lines now and then.

use std::io::Write;
use std::sync::{Arc, Mutex};

use vnet_device::episode::Episode;
use vnet_device::events::DeviceEvents;
use vnet_device::metrics::Metrics;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn logs_start_and_resolution_at_info_in_libkrun_format() {
    let captured = Captured::default();
    let w = captured.clone();
    let sub = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || w.clone())
        .finish();
    tracing::subscriber::set_global_default(sub).expect("the only subscriber of this binary");

    let ev = DeviceEvents::new(9, Arc::new(Metrics::new()));
    let mut e = Episode::default();
    e.on_failure(&ev, 1514, libc::ENOBUFS);
    e.on_failure(&ev, 1514, libc::ENOBUFS);
    e.on_success(&ev);
    let mut e = Episode::default();
    e.on_failure(&ev, 66, libc::EAGAIN);
    e.on_success(&ev);

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "retries are DEBUG, not INFO: {text}");
    assert!(lines[0].contains("INFO") && lines[0].contains("write_frame: ENOBUFS"));
    assert!(
        lines[1].contains("INFO")
            && lines[1].contains("write_frame: ENOBUFS resolved after 2 retries"),
        "{text}"
    );
    assert!(lines[2].contains("write_frame: EAGAIN"), "{text}");
    assert!(
        lines[3].contains("write_frame: EAGAIN resolved after 1 retries"),
        "{text}"
    );
}
