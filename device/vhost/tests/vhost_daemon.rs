//! The `vnet-vhost` binary: socket permissions, the proxy connection, and both ways a run
//! ends (QEMU disconnecting, SIGTERM), each with a summary and a flushed trace.

#![cfg(target_os = "linux")]

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

use serde_json::Value;
use vhost::vhost_user::Frontend;
use vhost::VhostBackend;

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("vnet-vhost-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills the daemon if a test fails half-way.
struct Daemon(Option<Child>);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start(dir: &Path) -> (Daemon, UnixListener, PathBuf, PathBuf) {
    let proxy = dir.join("proxy.sock");
    let listener = UnixListener::bind(&proxy).unwrap();
    let sock = dir.join("vhost.sock");
    let trace = dir.join("trace.csv");
    let child = Command::new(env!("CARGO_BIN_EXE_vnet-vhost"))
        .arg("--socket")
        .arg(&sock)
        .arg("--proxy")
        .arg(format!("unixstream:{}", proxy.display()))
        .arg("--trace")
        .arg(&trace)
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut d = Daemon(Some(child));
    // Wait (bounded) for the socket; the daemon connects to the proxy before creating it.
    for _ in 0..1000 {
        if sock.exists() {
            break;
        }
        if let Some(s) = d.0.as_mut().unwrap().try_wait().unwrap() {
            panic!("daemon exited early: {s}");
        }
        thread::sleep(Duration::from_millis(10));
    }
    assert!(sock.exists(), "vhost-user socket never appeared");
    (d, listener, sock, trace)
}

fn finish(mut d: Daemon) -> (std::process::ExitStatus, Value) {
    let mut child = d.0.take().unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let status = child.wait().unwrap();
    let v: Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("summary {out:?}: {e}"));
    (status, v)
}

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
    let (d, listener, sock, trace) = start(&dir.0);
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");
    // The daemon connected to the proxy before listening.
    listener.set_nonblocking(true).unwrap();
    assert!(
        listener.accept().is_ok(),
        "daemon did not connect to the proxy"
    );

    let f = Frontend::connect(&sock, 2).unwrap();
    f.set_owner().unwrap();
    let features = f.get_features().unwrap();
    drop(f);
    let (status, v) = finish(d);
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
    let (d, _listener, sock, trace) = start(&dir.0);
    let f = Frontend::connect(&sock, 2).unwrap();
    f.set_owner().unwrap();
    f.get_features().unwrap();
    let pid = d.0.as_ref().unwrap().id() as libc::pid_t;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let (status, v) = finish(d);
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
