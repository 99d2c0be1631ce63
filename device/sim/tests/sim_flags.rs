//! Bad flag values are usage errors: exit 2 and one stderr line naming the flag, before
//! any file is created and without a panic or a run that fails (or hangs) half-way.

mod sim_support;

use std::time::Duration;

use sim_support::{sim_raw, TempDir};

/// Runs `args` and checks exit 2 with exactly one stderr line containing `needle`.
fn refused(args: &[&str], needle: &str) {
    let (code, err) = sim_raw(args, Duration::from_secs(30));
    assert_eq!(code, 2, "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    assert!(
        err.starts_with("vnet-sim: ") && err.contains(needle),
        "{args:?}: wanted {needle:?} in {err}"
    );
}

#[test]
fn time_flags_refuse_huge_negative_nan_inf_and_zero() {
    for flag in ["--duration", "--stall-timeout"] {
        for v in ["1e30", "-1", "NaN", "inf", "0", "1e7"] {
            let mut args = vec![flag, v];
            if flag == "--stall-timeout" {
                args.extend(["--frames", "1"]);
            }
            refused(&args, &format!("{flag} "));
        }
    }
}

#[test]
fn chrome_into_a_missing_directory_is_a_usage_error() {
    refused(
        &["--frames", "1", "--chrome", "/nonexistent/dir/x.json"],
        "--chrome /nonexistent/dir/x.json",
    );
}

#[test]
fn chrome_and_trace_on_one_file_are_refused() {
    let dir = TempDir::new("flags-same");
    let p = dir.path().join("t.csv");
    let p = p.to_str().unwrap();
    refused(
        &["--frames", "1", "--trace", p, "--chrome", p],
        "the same file",
    );
    assert!(
        !dir.path().join("t.csv").exists(),
        "created before refusing"
    );
}

#[test]
fn a_send_buffer_smaller_than_a_datagram_is_refused_up_front() {
    refused(&["--frames", "1", "--sndbuf", "0"], "--sndbuf 0");
    refused(&["--frames", "1", "--sndbuf", "1000"], "EMSGSIZE");
    refused(
        &["--frames", "1", "--backend", "unixstream", "--sndbuf", "0"],
        "--sndbuf 0",
    );
}

#[test]
fn proxy_room_needs_a_datagram_socket_that_can_take_the_largest_frame() {
    refused(&["--frames", "1", "--proxy-room", "0"], "--proxy-room 0");
    refused(
        &["--frames", "1", "--proxy-room", "18446744073709551616"],
        "--proxy-room",
    );
    refused(
        &[
            "--frames",
            "1",
            "--backend",
            "unixstream",
            "--proxy-room",
            "131072",
        ],
        "datagram",
    );
    refused(
        &[
            "--frames",
            "1",
            "--proxy",
            "unixstream:/nonexistent/passt.sock",
            "--proxy-room",
            "131072",
        ],
        "datagram",
    );
}

#[test]
fn other_numeric_flags_refuse_meaningless_values() {
    for (args, needle) in [
        (&["--ack-every", "17"][..], "--ack-every 17"),
        (
            &["--proxy-read-delay-us", "99999999999"],
            "--proxy-read-delay-us",
        ),
        (&["--proxy-pause-ms", "99999999999"], "--proxy-pause-ms"),
        (&["--proxy-pause-every-ms", "0"], "--proxy-pause-every-ms 0"),
        (&["--retry-delay-us", "99999999999"], "--retry-delay-us"),
        (&["--proxy-rcvbuf", "0"], "--proxy-rcvbuf 0"),
        (&["--inject-enobufs-burst", "0"], "--inject-enobufs-burst 0"),
        (&["--streams", "99999"], "--streams"),
        (&["--tx-size", "-5"], "--tx-size"),
        (&["--bogus"], "--bogus"),
    ] {
        let mut a = vec!["--frames", "1"];
        a.extend_from_slice(args);
        refused(&a, needle);
    }
}

#[test]
fn trace_into_a_missing_directory_creates_it_and_says_so() {
    let dir = TempDir::new("flags-mkdir");
    let trace = dir.path().join("a/b/t.csv");
    let (code, err) = sim_raw(
        &[
            "--frames",
            "5",
            "--no-progress",
            "--trace",
            trace.to_str().unwrap(),
        ],
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "{err}");
    assert!(trace.exists());
    assert!(
        err.contains(&format!(
            "created directory {} for --trace",
            dir.path().join("a/b").display()
        )),
        "{err}"
    );
}

/// `--macos-batch-syscalls` is for macOS: elsewhere the run goes on as without it, and
/// says so in exactly one stderr line.
#[cfg(not(target_os = "macos"))]
#[test]
fn macos_batch_flag_is_accepted_and_ignored_with_one_line() {
    let (code, err) = sim_raw(
        &["--frames", "50", "--no-progress", "--macos-batch-syscalls"],
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "{err}");
    let notes: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("--macos-batch-syscalls"))
        .collect();
    assert_eq!(notes.len(), 1, "{err}");
    assert!(
        notes[0].starts_with("vnet-sim: ") && notes[0].contains("ignored"),
        "{err}"
    );
}
