//! The `vnet-vhost` binary against a hostile vhost-user front end: one that stalls
//! mid-message, and one whose memory table lies about its memfds. Each must end with the
//! daemon alive (or exiting cleanly), a summary printed and the trace flushed.

#![cfg(target_os = "linux")]

mod daemon_support;

use std::io::{Read, Write};
use std::thread;
use std::time::Duration;

use daemon_support::{start, Dir};

/// A vhost-user header (native endian: code, flags with version 1, body size).
fn header(code: u32, size: u32) -> Vec<u8> {
    [code, 0x1, size]
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .collect()
}

const SET_OWNER: u32 = 3;
const SET_FEATURES: u32 = 2;
const GET_FEATURES: u32 = 1;

#[test]
fn a_partial_header_then_silence_ends_the_session_after_the_timeout() {
    let dir = Dir::new("stall-hdr");
    let d = start(&dir.0, &["--request-timeout", "0.5"]);
    let mut fe = d.connect();
    fe.write_all(&header(SET_OWNER, 0)[..5]).unwrap();
    let end = d.finish();
    assert_eq!(end.status.code(), Some(1), "{}", end.stderr);
    assert_eq!(end.summary["end"], "front_end_stalled");
    assert!(
        end.stderr
            .contains("sent 5 bytes of a 12-byte header, then nothing for 0.5 s"),
        "{}",
        end.stderr
    );
    trace_flushed(&dir);
}

#[test]
fn a_header_without_its_body_ends_the_session_after_the_timeout() {
    let dir = Dir::new("stall-body");
    let d = start(&dir.0, &["--request-timeout", "0.5"]);
    let mut fe = d.connect();
    let mut msg = header(SET_FEATURES, 8);
    msg.extend_from_slice(&[1, 2]);
    fe.write_all(&msg).unwrap();
    let end = d.finish();
    assert_eq!(end.status.code(), Some(1), "{}", end.stderr);
    assert_eq!(end.summary["end"], "front_end_stalled");
    assert!(
        end.stderr.contains("sent 14 bytes of a 20-byte message"),
        "{}",
        end.stderr
    );
}

#[test]
fn sigterm_stops_a_daemon_stuck_on_a_partial_header() {
    let dir = Dir::new("stall-term");
    // The default timeout (5 s): the signal must end the run well before it.
    let d = start(&dir.0, &[]);
    let mut fe = d.connect();
    fe.write_all(&header(SET_OWNER, 0)[..5]).unwrap();
    thread::sleep(Duration::from_millis(300));
    d.signal(libc::SIGTERM);
    let end = d.finish_within(Duration::from_secs(5));
    assert!(end.status.success(), "{}", end.stderr);
    assert_eq!(end.summary["end"], "stopped");
    assert!(
        end.exit_wait < Duration::from_secs(3),
        "{:?}",
        end.exit_wait
    );
    trace_flushed(&dir);
}

#[test]
fn a_front_end_closing_mid_header_is_a_disconnect() {
    let dir = Dir::new("close-hdr");
    let d = start(&dir.0, &["--request-timeout", "600"]);
    let mut fe = d.connect();
    fe.write_all(&header(SET_OWNER, 0)[..7]).unwrap();
    drop(fe);
    let end = d.finish_within(Duration::from_secs(5));
    assert!(end.status.success(), "{}", end.stderr);
    assert_eq!(end.summary["end"], "disconnected");
}

/// The trace was flushed: its two header lines are there.
fn trace_flushed(dir: &Dir) {
    let text = std::fs::read_to_string(dir.0.join("trace.csv")).unwrap();
    assert!(text.starts_with("# clock mono_ns="), "{text}");
    assert!(text.contains("\nts_ns,tid,probe,"), "{text}");
}

#[test]
fn a_header_announcing_an_oversized_body_is_refused_without_waiting_for_it() {
    let dir = Dir::new("huge-body");
    let d = start(&dir.0, &["--request-timeout", "600"]);
    let mut fe = d.connect();
    fe.write_all(&header(SET_FEATURES, u32::MAX)).unwrap();
    // Still in step and serving: GET_FEATURES (1) gets its 8-byte reply.
    fe.write_all(&header(GET_FEATURES, 0)).unwrap();
    fe.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reply = [0u8; 20];
    fe.read_exact(&mut reply).unwrap();
    assert_eq!(reply[..4], GET_FEATURES.to_ne_bytes());
    assert_eq!(reply[8..12], 8u32.to_ne_bytes());
    drop(fe);
    let end = d.finish();
    assert!(end.status.success(), "{}", end.stderr);
    assert_eq!(end.summary["end"], "disconnected");
    assert!(end.stderr.contains("refused"), "{}", end.stderr);
}
