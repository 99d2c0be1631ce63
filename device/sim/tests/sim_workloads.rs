//! Each workload shape through each backend and direction: every frame arrives once, in
//! order, intact, and the summary's device counts match the probe rows of the trace.

mod sim_support;
use sim_support::{sim, trace_rows, TempDir};
use std::time::Duration;

const FRAMES: u64 = 300;

fn check(backend: &str, direction: &str, extra: &[&str]) {
    check_frames(backend, direction, extra, FRAMES);
}

fn check_frames(backend: &str, direction: &str, extra: &[&str], n: u64) {
    let dir = TempDir::new("wl");
    let trace = dir.path().join("trace.csv");
    let frames = n.to_string();
    let mut args = vec![
        "--backend",
        backend,
        "--direction",
        direction,
        "--frames",
        &frames,
        "--trace",
        trace.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = sim(&args, Duration::from_secs(120));
    assert_eq!(o.code, 0, "exit code; stderr:\n{}\n{}", o.stderr, o.json);
    assert_eq!(o.errors(), 0, "integrity errors: {}", o.json);
    assert_eq!(o.u("stalls"), 0);
    let acks = !extra.windows(2).any(|w| w == ["--ack-size", "0"]);
    let every: u64 = extra
        .windows(2)
        .find(|w| w[0] == "--ack-every")
        .map_or(2, |w| w[1].parse().unwrap());
    // Data goes one way per data direction, and with ACKs every `every`-th data frame is
    // answered, plus a trailing odd one (the delayed-ACK timer).
    let (guest_data, proxy_data) = match direction {
        "both" => (n, n),
        "tx" => (n, 0),
        "rx" => (0, n),
        _ => unreachable!(),
    };
    let (guest_acks, proxy_acks) = if acks {
        (proxy_data.div_ceil(every), guest_data.div_ceil(every))
    } else {
        (0, 0)
    };
    assert_eq!(o.u("tx_frames"), guest_data + guest_acks, "{}", o.json);
    assert_eq!(o.u("rx_frames"), proxy_data + proxy_acks, "{}", o.json);
    let to_proxy = &o.json["to_proxy"];
    assert_eq!(to_proxy["data_frames"].as_u64(), Some(guest_data));
    assert_eq!(to_proxy["ack_frames"].as_u64(), Some(guest_acks));
    assert_eq!(o.json["to_guest"]["data_frames"].as_u64(), Some(proxy_data));
    // The contract with the probes: one tx_frame/rx_frame row per frame.
    assert_eq!(trace_rows(&trace, "tx_frame"), o.u("tx_frames"));
    assert_eq!(trace_rows(&trace, "rx_frame"), o.u("rx_frames"));
    assert_eq!(trace_rows(&trace, "enobufs_begin"), o.u("episodes"));
    // The worker's own usage reaches the summary. It waits for work in the poller, so it
    // leaves the CPU to wait about as often as the poller returns; a few more (the trace
    // recorder's lock, its start) under load.
    assert!(o.device_u("worker_cpu_ns") > 0, "{}", o.json);
    if cfg!(target_os = "linux") {
        let waits = o.device_u("worker_voluntary_switches");
        let wakeups = o.device_u("wakeups");
        assert!(
            (1..=wakeups + wakeups / 2 + 16).contains(&waits),
            "worker_voluntary_switches {waits} against {wakeups} wakeups: {}",
            o.json["device"]
        );
    }
}

#[test]
fn odd_frame_count_gets_its_trailing_ack() {
    check_frames("unixgram", "both", &[], 301);
    check_frames("unixstream", "both", &["--ack-every", "3"], 301);
}
#[test]
fn every_frame_acked() {
    check("unixstream", "both", &["--ack-every", "1"]);
}
#[test]
fn unixgram_both() {
    check("unixgram", "both", &[]);
}
#[test]
fn unixgram_tx() {
    check("unixgram", "tx", &[]);
}
#[test]
fn unixgram_rx() {
    check("unixgram", "rx", &[]);
}
#[test]
fn unixstream_both() {
    check("unixstream", "both", &[]);
}
#[test]
fn unixstream_tx() {
    check("unixstream", "tx", &[]);
}
#[test]
fn unixstream_rx() {
    check("unixstream", "rx", &[]);
}

/// MTU-sized frames on two streams, no ACKs: many small chains, no mergeable spill.
#[test]
fn small_frames_no_acks_both_backends() {
    for backend in ["unixgram", "unixstream"] {
        check(
            backend,
            "both",
            &[
                "--tx-size",
                "1514",
                "--rx-size",
                "1514",
                "--streams",
                "2",
                "--ack-size",
                "0",
            ],
        );
    }
}

/// Mergeable RX with buffers smaller than an MTU frame and a small ring: every frame
/// spans several buffers and the ring wraps many times.
#[test]
fn small_ring_small_buffers() {
    check(
        "unixgram",
        "both",
        &["--queue-size", "128", "--rx-buf-len", "1024"],
    );
}

/// A ring that can never hold the largest frame is refused up front (exit 2, the flags
/// named) instead of hanging in the device.
#[test]
fn impossible_ring_is_a_clear_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vnet-sim"))
        .args(["--frames", "1", "--queue-size", "64", "--rx-buf-len", "512"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--queue-size 64") && err.contains("--rx-buf-len 512"),
        "{err}"
    );
}

/// Frames wherever the guest puts them in its buffers: header at the start of a page (the
/// frame 12 bytes off a cache line), the default, and the frame on the next page.
#[test]
fn tx_frame_offsets_through_both_backends() {
    for backend in ["unixgram", "unixstream"] {
        for offset in ["12", "64", "4096"] {
            check(backend, "tx", &["--tx-frame-offset", offset]);
        }
    }
}

#[test]
fn tx_frame_offset_without_room_for_the_header_is_refused() {
    for bad in ["11", "4097"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vnet-sim"))
            .args(["--frames", "1", "--tx-frame-offset", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("TX frame offset {bad}")) && err.contains("virtio header"),
            "{err}"
        );
    }
}

/// `--offload-csum`: the guest negotiates the checksum offloads and leaves every UDP
/// checksum to the device; the proxy verifies each one, and every RX header says
/// DATA_VALID. Sizes include odd ones (the checksummed range then ends on half a word)
/// and both backends (the stream one stops frames mid-way). Without the flag the guest
/// negotiates neither and nothing is offloaded.
#[test]
fn offloaded_checksums_verify_at_the_proxy() {
    for backend in ["unixgram", "unixstream"] {
        for (tx, rx) in [("1515", "1514"), ("65225", "65550")] {
            let args = [
                "--backend",
                backend,
                "--frames",
                "300",
                "--tx-size",
                tx,
                "--rx-size",
                rx,
                "--offload-csum",
            ];
            let o = sim(&args, Duration::from_secs(120));
            assert_eq!(o.code, 0, "{args:?}: {}\n{}", o.stderr, o.json);
            assert_eq!(o.errors(), 0, "{}", o.json);
            let c = &o.json["csum_offload"];
            let offloaded = o.device_u("tx_csum_offload");
            assert!(o.u("tx_frames") >= 300, "{}", o.json);
            assert_eq!(offloaded, o.u("tx_frames"), "every guest frame: {}", o.json);
            assert_eq!(c["udp_checksums_checked"].as_u64(), Some(offloaded));
            assert_eq!(c["udp_checksums_bad"].as_u64(), Some(0));
            assert_eq!(c["rx_without_data_valid"].as_u64(), Some(0));
        }
        let o = sim(
            &["--backend", backend, "--frames", "50"],
            Duration::from_secs(60),
        );
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert!(o.json["csum_offload"].is_null());
        assert_eq!(o.json["device"]["tx_csum_offload"].as_u64(), Some(0));
    }
}

/// `--one-frame-per-call`: every frame still arrives once and in order, and each took a
/// send call of its own (and, on datagrams, a receive call of its own) where the default
/// run batched them.
#[test]
fn one_frame_per_call_moves_every_frame_with_a_call_each() {
    for backend in ["unixgram", "unixstream"] {
        let args = |extra: &[&'static str]| {
            let mut a = vec![
                "--backend",
                backend,
                "--frames",
                "3000",
                "--tx-size",
                "1514",
                "--rx-size",
                "1514",
            ];
            a.extend_from_slice(extra);
            a
        };
        let one = sim(&args(&["--one-frame-per-call"]), Duration::from_secs(120));
        assert_eq!(one.code, 0, "{backend}: {}", one.stderr);
        assert_eq!(one.errors(), 0, "{backend}: {}", one.json);
        let (tx, rx) = (one.device_u("tx_frames"), one.device_u("rx_frames"));
        assert!(tx >= 3000 && rx >= 3000, "{backend}: {}", one.json);
        assert!(one.device_u("tx_syscalls") >= tx, "{backend}: {}", one.json);
        if backend == "unixgram" {
            assert!(one.device_u("rx_syscalls") >= rx, "{backend}: {}", one.json);
        }
        let batched = sim(&args(&[]), Duration::from_secs(120));
        assert_eq!(batched.code, 0, "{backend}: {}", batched.stderr);
        assert!(
            batched.device_u("tx_syscalls") < batched.device_u("tx_frames"),
            "{backend}: the default run did not batch: {}",
            batched.json
        );
    }
}
