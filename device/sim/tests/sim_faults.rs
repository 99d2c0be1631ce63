//! Episodes on demand: backpressure from a slow proxy, injected ENOBUFS, and lost write
//! events with and without the retry timer.

mod sim_support;
use sim_support::{sim, trace_rows, Outcome, TempDir};
use std::time::Duration;

const BOUND: Duration = Duration::from_secs(120);

#[test]
fn slow_proxy_backpressure_has_episodes_and_no_integrity_errors() {
    for backend in ["unixgram", "unixstream"] {
        let o = sim(
            &[
                "--backend",
                backend,
                "--frames",
                "300",
                "--direction",
                "tx",
                "--proxy-rcvbuf",
                // A stream proxy may take any size; a datagram proxy must hold a frame.
                if backend == "unixgram" {
                    "65806"
                } else {
                    "4096"
                },
                "--sndbuf",
                "131072",
                "--proxy-read-delay-us",
                "300",
                "--proxy-pause-ms",
                "20",
                "--proxy-pause-every-ms",
                "30",
            ],
            BOUND,
        );
        assert_eq!(o.code, 0, "{backend}: {}\n{}", o.stderr, o.json);
        assert!(o.u("episodes") > 0, "{backend}: no episodes: {}", o.json);
        assert_eq!(o.u("resolved"), o.u("episodes"), "{}", o.json);
        assert!(o.u("retries") >= o.u("episodes"));
        assert_eq!(o.errors(), 0, "{}", o.json);
        assert_eq!(o.json["to_proxy"]["data_frames"].as_u64(), Some(300));
    }
}

#[test]
fn injected_enobufs_episodes_match_the_trace() {
    injected_enobufs_episodes_match_the_trace_with(&[]);
}

/// The same with one frame per send call, the pattern of a VMM that never batches: each
/// episode still begins at the refused frame and every identity holds.
#[test]
fn injected_enobufs_episodes_match_the_trace_one_frame_per_call() {
    let o = injected_enobufs_episodes_match_the_trace_with(&["--one-frame-per-call"]);
    assert!(o.device_u("tx_syscalls") >= o.u("tx_frames"), "{}", o.json);
}

fn injected_enobufs_episodes_match_the_trace_with(extra: &[&str]) -> Outcome {
    let dir = TempDir::new("enobufs");
    let trace = dir.path().join("trace.csv");
    // On the socketpair peer Linux exempts the queue from max_dgram_qlen, so every
    // refusal is an injected one and the counts below are exact.
    let mut args = vec![
        "--proxy-socketpair",
        "--frames",
        "400",
        "--inject-enobufs",
        "7",
        "--inject-enobufs-burst",
        "2",
        "--trace",
        trace.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = sim(&args, BOUND);
    assert_eq!(o.code, 0, "{}\n{}", o.stderr, o.json);
    assert_eq!(o.errors(), 0);
    let episodes = o.u("episodes");
    assert!(episodes > 0, "{}", o.json);
    assert_eq!(trace_rows(&trace, "enobufs_begin"), episodes);
    assert_eq!(trace_rows(&trace, "enobufs_resolved"), o.u("resolved"));
    assert_eq!(o.u("resolved"), episodes);
    // A burst of 2 means at least two failed sends per episode.
    assert!(o.u("retries") >= 2 * episodes, "{}", o.json);
    assert_eq!(trace_rows(&trace, "tx_frame"), o.u("tx_frames"));
    assert_eq!(
        o.json["device"]["injected_faults"].as_u64(),
        Some(o.u("retries"))
    );
    o
}

/// Injected failures make episodes deterministically; with write events lost, only the
/// timer (or a kick) can retry. The guest stops kicking once its ring is full.
const LOST_EVENTS: &[&str] = &[
    "--frames",
    "300",
    "--direction",
    "tx",
    "--inject-enobufs",
    "5",
    "--lose-write-events",
];

#[test]
fn lost_write_events_are_rescued_by_the_timer() {
    let o = sim(LOST_EVENTS, BOUND);
    assert_eq!(o.code, 0, "{}\n{}", o.stderr, o.json);
    assert_eq!(o.u("stalls"), 0);
    assert_eq!(o.errors(), 0);
    assert!(o.u("episodes") > 0);
    assert!(o.device_u("timer_fired") > 0, "{}", o.json);
    assert_eq!(o.json["to_proxy"]["data_frames"].as_u64(), Some(300));
}

#[test]
fn lost_write_events_without_timer_stall_and_are_reported() {
    let mut args = LOST_EVENTS.to_vec();
    args.extend_from_slice(&["--no-timer", "--stall-timeout", "0.5"]);
    // The run must end by itself (stall detection), well within the bound.
    let o = sim(&args, Duration::from_secs(60));
    assert_eq!(o.code, 1, "a stall must fail the run: {}", o.json);
    assert_eq!(o.u("stalls"), 1, "{}", o.json);
    assert!(
        o.json["stall"].as_str().unwrap().contains("no progress"),
        "{}",
        o.json
    );
    assert!(o.json["device"]["open_episode"].as_bool().unwrap());
    assert_eq!(o.json["device"]["timer_fired"].as_u64(), Some(0));
    assert!(o.json["to_proxy"]["data_frames"].as_u64().unwrap() < 300);
}

/// The default shape, no fault flags: the built-in proxy binds its own path like gvproxy,
/// so Linux holds its queue to net.unix.max_dgram_qlen and the window's bursts overrun it.
/// The device meets real EAGAIN (macOS: ENOBUFS) and every episode ends.
#[test]
fn default_unixgram_run_meets_real_backpressure() {
    let dir = TempDir::new("default-gram");
    let trace = dir.path().join("trace.csv");
    let o = sim(
        &["--frames", "2000", "--trace", trace.to_str().unwrap()],
        BOUND,
    );
    assert_eq!(o.code, 0, "{}\n{}", o.stderr, o.json);
    assert_eq!(o.json["peer"].as_str(), Some("builtin:unixgram"));
    assert_eq!(o.errors(), 0, "{}", o.json);
    let episodes = o.u("episodes");
    assert!(episodes > 0, "no backpressure from the proxy: {}", o.json);
    assert_eq!(o.u("resolved"), episodes, "{}", o.json);
    assert!(o.u("retries") >= episodes, "{}", o.json);
    assert_eq!(trace_rows(&trace, "enobufs_begin"), episodes);
    // Nothing injected: these are the kernel's refusals.
    assert_eq!(o.json["device"]["injected_faults"].as_u64(), Some(0));
}

#[test]
fn proxy_rcvbuf_below_the_largest_frame_is_a_usage_error() {
    for extra in [&[][..], &["--proxy-socketpair"][..]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vnet-sim"))
            .args(["--frames", "10", "--proxy-rcvbuf", "65805"])
            .args(extra)
            .output()
            .expect("run vnet-sim");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {stderr}");
        assert_eq!(
            stderr.trim(),
            "vnet-sim: --proxy-rcvbuf 65805 is below 65806 (the largest frame, 65550 bytes, \
             plus 256 for the sender's address and bookkeeping)",
            "one line naming the flag"
        );
        assert!(out.stdout.is_empty());
    }
    // The smallest legal size runs; a stream proxy carries a frame in pieces, so a small
    // buffer only slows it.
    for args in [
        &["--frames", "10", "--proxy-rcvbuf", "65806"][..],
        &[
            "--frames",
            "10",
            "--backend",
            "unixstream",
            "--proxy-rcvbuf",
            "4096",
        ][..],
    ] {
        let o = sim(args, BOUND);
        assert_eq!(o.code, 0, "{args:?}: {}", o.stderr);
        assert_eq!(
            o.json["to_proxy"]["data_frames"].as_u64(),
            Some(10),
            "{args:?}: {}",
            o.json
        );
        assert_eq!(o.errors(), 0, "{args:?}: {}", o.json);
    }
}

/// The socketpair peer stays available and carries every frame intact.
#[test]
fn socketpair_proxy_still_delivers_everything() {
    let o = sim(&["--frames", "300", "--proxy-socketpair"], BOUND);
    assert_eq!(o.code, 0, "{}\n{}", o.stderr, o.json);
    assert_eq!(o.json["peer"].as_str(), Some("builtin:unixgram-socketpair"));
    assert_eq!(o.errors(), 0, "{}", o.json);
    assert_eq!(o.json["to_proxy"]["data_frames"].as_u64(), Some(300));
}
