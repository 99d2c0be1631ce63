//! The `vnet-vhost` binary: socket permissions, the proxy connection, and both ways a run
//! ends (QEMU disconnecting, SIGTERM), each with a summary and a flushed trace.

#![cfg(target_os = "linux")]

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
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
    start_at(dir, &dir.join("vhost.sock"))
}

fn start_at(dir: &Path, sock: &Path) -> (Daemon, UnixListener, PathBuf, PathBuf) {
    let proxy = dir.join("proxy.sock");
    let listener = UnixListener::bind(&proxy).unwrap();
    let sock = sock.to_path_buf();
    // A stale socket may sit there already (callers give it another mode than 0600, and ext4
    // reuses inode numbers at once): wait for the daemon's mode, not just for the path.
    let ours = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.mode() & 0o777 == 0o600);
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
        if ours(&sock) {
            break;
        }
        if let Some(s) = d.0.as_mut().unwrap().try_wait().unwrap() {
            panic!("daemon exited early: {s}");
        }
        thread::sleep(Duration::from_millis(10));
    }
    assert!(ours(&sock), "vhost-user socket never appeared");
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
    assert_eq!(
        lines.next().unwrap(),
        "ts_ns,tid,probe,fd,queue,len,data,retries,wait_ns,errno"
    );
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

/// Runs the daemon to completion against a listening proxy (or none) with `--socket sock`.
fn run_once(dir: &Path, sock: &Path, proxy_up: bool) -> std::process::Output {
    let proxy = dir.join("proxy-once.sock");
    let listener = proxy_up.then(|| UnixListener::bind(&proxy).unwrap());
    let child = Command::new(env!("CARGO_BIN_EXE_vnet-vhost"))
        .arg("--socket")
        .arg(sock)
        .arg("--proxy")
        .arg(format!("unixstream:{}", proxy.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded: a daemon that took the path would wait for QEMU forever.
    let mut d = Daemon(Some(child));
    for _ in 0..1000 {
        if d.0.as_mut().unwrap().try_wait().unwrap().is_some() {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    let mut c = d.0.take().unwrap();
    if c.try_wait().unwrap().is_none() {
        let _ = c.kill();
        let _ = c.wait();
        panic!(
            "daemon still running after 10 s with --socket {}",
            sock.display()
        );
    }
    let out = c.wait_with_output().unwrap();
    if listener.is_some() {
        std::fs::remove_file(&proxy).unwrap();
    }
    out
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
    let (d, _listener, sock, _trace) = start_at(&dir.0, &sock);
    let f = Frontend::connect(&sock, 2).unwrap();
    f.set_owner().unwrap();
    drop(f);
    let (status, v) = finish(d);
    assert!(status.success(), "{status}");
    assert_eq!(v["end"], "disconnected");
    assert!(!sock.exists(), "our own socket left behind");
}

#[test]
fn a_socket_replaced_during_the_run_is_not_removed_at_exit() {
    let dir = Dir::new("replaced");
    let (d, _listener, sock, _trace) = start(&dir.0);
    std::fs::remove_file(&sock).unwrap();
    let theirs = UnixListener::bind(&sock).unwrap();
    let pid = d.0.as_ref().unwrap().id() as libc::pid_t;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let (status, _) = finish(d);
    assert!(status.success(), "{status}");
    assert!(sock.exists(), "someone else's socket was removed");
    drop(theirs);
}
