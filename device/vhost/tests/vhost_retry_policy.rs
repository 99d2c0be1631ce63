//! `--retry-policy` on the daemon: a bad value is one line on stderr and exit 2, before any
//! socket is created.

use std::process::Command;

#[test]
fn a_bad_retry_policy_is_one_line_and_exit_2() {
    let dir = std::env::temp_dir().join(format!("vnet-vhost-policy-{}", std::process::id()));
    let sock = dir.join("vhost.sock");
    for bad in ["sometimes", "bounded", "bounded:-2", "backoff:3", "timer:1"] {
        let out = Command::new(env!("CARGO_BIN_EXE_vnet-vhost"))
            .args(["--socket", sock.to_str().unwrap()])
            .args(["--proxy", "unixgram:/nonexistent/proxy.sock"])
            .args(["--retry-policy", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{bad}: {err}");
        assert!(err.contains("--retry-policy") && err.contains(bad), "{err}");
        assert!(!sock.exists());
    }
}

/// `--macos-batch-syscalls` is accepted off macOS with one stderr line saying it is
/// ignored: here the daemon then fails on the missing proxy, as it would without it.
#[cfg(not(target_os = "macos"))]
#[test]
fn the_macos_batch_flag_is_accepted_and_ignored_with_one_line() {
    let dir = std::env::temp_dir().join(format!("vnet-vhost-msgx-{}", std::process::id()));
    let sock = dir.join("vhost.sock");
    let out = Command::new(env!("CARGO_BIN_EXE_vnet-vhost"))
        .args(["--socket", sock.to_str().unwrap()])
        .args(["--proxy", "unixgram:/nonexistent/proxy.sock"])
        .arg("--macos-batch-syscalls")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let notes: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("--macos-batch-syscalls"))
        .collect();
    assert_eq!(notes.len(), 1, "{err}");
    assert!(notes[0].contains("ignored"), "{err}");
    assert!(
        err.contains("/nonexistent/proxy.sock"),
        "the flag changes nothing else: {err}"
    );
}
