//! The `vnet-vhost` binary: socket permissions, the proxy connection, and both ways a run
//! ends (QEMU disconnecting, SIGTERM), each with a summary and a flushed trace.

#![cfg(target_os = "linux")]

mod daemon_support;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::Command;

use daemon_support::{run_once, start, start_at, Dir};

use serde_json::Value;
use vhost::vhost_user::Frontend;
use vhost::VhostBackend;

fn trace_header_ok(trace: &Path) {
    let text = std::fs::read_to_string(trace).unwrap();
    let mut lines = text.lines();
    assert!(
        lines.next().unwrap().starts_with("# clock mono_ns="),
        "{text}"
    );
    assert_eq!(lines.next().unwrap(), vnet_trace_schema::HEADER);
}

#[test]
fn socket_is_private_and_a_disconnect_ends_the_run_with_a_summary() {
    let dir = Dir::new("disc");
    let d = start(&dir.0, &[]);
    let (sock, trace) = (d.sock.clone(), d.trace.clone());
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");
    // The daemon connected to the proxy before listening.
    d.proxy.set_nonblocking(true).unwrap();
    assert!(
        d.proxy.accept().is_ok(),
        "daemon did not connect to the proxy"
    );

    let f = Frontend::from_stream(d.connect(), 2);
    f.set_owner().unwrap();
    let features = f.get_features().unwrap();
    drop(f);
    let end = d.finish();
    let (status, v) = (end.status, end.summary);
    assert!(status.success(), "{status}");
    assert_eq!(v["end"], "disconnected");
    assert_eq!(v["tx_frames"], 0);
    assert_eq!(v["handshake"]["acked_features"], Value::Null);
    assert_ne!(features, 0);
    assert!(!sock.exists(), "socket left behind");
    trace_header_ok(&trace);
}

#[test]
fn sigterm_flushes_the_trace_and_exits_cleanly() {
    let dir = Dir::new("term");
    let d = start(&dir.0, &[]);
    let trace = d.trace.clone();
    let f = Frontend::from_stream(d.connect(), 2);
    f.set_owner().unwrap();
    f.get_features().unwrap();
    d.signal(libc::SIGTERM);
    let end = d.finish();
    let (status, v) = (end.status, end.summary);
    assert!(status.success(), "{status}");
    assert_eq!(v["end"], "stopped");
    trace_header_ok(&trace);
    drop(f);
}

#[test]
fn a_missing_proxy_is_an_error_naming_it() {
    let dir = Dir::new("noproxy");
    let out = Command::new(env!("CARGO_BIN_EXE_vnet-vhost"))
        .arg("--socket")
        .arg(dir.0.join("v.sock"))
        .arg("--proxy")
        .arg(format!(
            "unixstream:{}",
            dir.0.join("absent.sock").display()
        ))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("absent.sock"), "{err}");
}

#[test]
fn a_regular_file_at_the_socket_path_survives_a_missing_proxy() {
    let dir = Dir::new("file-noproxy");
    let f = dir.0.join("f");
    std::fs::write(&f, "x\n").unwrap();
    let out = run_once(&dir.0, &f, false);
    assert!(!out.status.success());
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "x\n", "file touched");
}

#[test]
fn anything_but_a_socket_at_the_path_is_refused_and_kept() {
    let dir = Dir::new("notsock");
    let f = dir.0.join("f");
    std::fs::write(&f, "x\n").unwrap();
    let d = dir.0.join("d");
    std::fs::create_dir(&d).unwrap();
    let link = dir.0.join("link");
    std::os::unix::fs::symlink(&f, &link).unwrap();
    for path in [&f, &d, &link] {
        let out = run_once(&dir.0, path, true);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {err}", path.display());
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(&path.display().to_string()) && err.contains("not a socket"),
            "{err}"
        );
    }
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "x\n");
    assert!(d.is_dir());
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn a_live_socket_is_refused_and_keeps_working() {
    let dir = Dir::new("live");
    let sock = dir.0.join("live.sock");
    let owner = UnixListener::bind(&sock).unwrap();
    let out = run_once(&dir.0, &sock, true);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("listening"), "{err}");
    // The daemon's probe connection is queued; a second one still reaches the owner.
    UnixStream::connect(&sock).expect("live socket was removed");
    owner.set_nonblocking(true).unwrap();
    assert!(owner.accept().is_ok());
}

#[test]
fn a_stale_socket_is_replaced() {
    let dir = Dir::new("stale");
    let sock = dir.0.join("stale.sock");
    drop(UnixListener::bind(&sock).unwrap());
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o644)).unwrap();
    let d = start_at(&dir.0, &sock, &[]);
    let f = Frontend::from_stream(d.connect(), 2);
    f.set_owner().unwrap();
    drop(f);
    let end = d.finish();
    let (status, v) = (end.status, end.summary);
    assert!(status.success(), "{status}");
    assert_eq!(v["end"], "disconnected");
    assert!(!sock.exists(), "our own socket left behind");
}

#[test]
fn a_socket_replaced_during_the_run_is_not_removed_at_exit() {
    let dir = Dir::new("replaced");
    let d = start(&dir.0, &[]);
    let sock = d.sock.clone();
    std::fs::remove_file(&sock).unwrap();
    let theirs = UnixListener::bind(&sock).unwrap();
    d.signal(libc::SIGTERM);
    let end = d.finish();
    assert!(end.status.success(), "{}", end.status);
    assert!(end.stderr.contains("replaced"), "{}", end.stderr);
    assert!(sock.exists(), "someone else's socket was removed");
    drop(theirs);
}

#[test]
fn bad_flag_values_are_one_line_usage_errors() {
    let dir = Dir::new("flags");
    let sock = dir.0.join("v.sock");
    for (args, needle) in [
        (&["--request-timeout", "0"][..], "--request-timeout"),
        (&["--request-timeout", "-1"], "--request-timeout"),
        (&["--request-timeout", "NaN"], "--request-timeout"),
        (&["--request-timeout", "1e30"], "--request-timeout"),
        (&["--retry-delay-us", "99999999999"], "--retry-delay-us"),
        (&["--inject-enobufs", "-1"], "--inject-enobufs"),
        (&["--log-level", "bogus=["], "--log-level"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_vnet-vhost"))
            .arg("--socket")
            .arg(&sock)
            .args(["--proxy", "unixstream:/nonexistent"])
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!sock.exists());
    }
}
