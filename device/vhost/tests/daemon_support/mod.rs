//! Runs the `vnet-vhost` binary for the daemon tests: a private directory, a proxy socket
//! that listens, and waits bounded in time so a hung daemon fails a test instead of hanging it.

#![allow(dead_code)] // each test binary uses its own part

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new(tag: &str) -> Dir {
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

/// The running daemon; killed if a test fails half-way.
pub struct Daemon {
    child: Option<Child>,
    /// stdout and stderr, drained as they come so a chatty daemon never blocks on a full pipe.
    stdout: Option<thread::JoinHandle<String>>,
    stderr: Option<thread::JoinHandle<String>>,
    /// What stderr said so far, for tests that wait for a log line.
    stderr_so_far: Arc<Mutex<String>>,
    pub sock: PathBuf,
    pub trace: PathBuf,
    /// The proxy's listening socket: the daemon connected to it before creating `sock`.
    pub proxy: UnixListener,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// How a run ended: exit status, the `--json` summary, what went to stderr, how long the
/// daemon took to exit after `finish` was called.
pub struct Finished {
    pub status: ExitStatus,
    pub summary: Value,
    pub stderr: String,
    pub exit_wait: Duration,
}

/// Starts `vnet-vhost --socket sock --proxy unixstream:... --trace ... --json EXTRA...`.
pub fn start_at(dir: &Path, sock: &Path, extra: &[&str]) -> Daemon {
    let proxy_path = dir.join("proxy.sock");
    let proxy = UnixListener::bind(&proxy_path).unwrap();
    let sock = sock.to_path_buf();
    // A stale socket may sit there already (callers give it another mode than 0600, and ext4
    // reuses inode numbers at once): wait for the daemon's mode, not just for the path.
    let ours = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.mode() & 0o777 == 0o600);
    let trace = dir.join("trace.csv");
    let child = Command::new(env!("CARGO_BIN_EXE_vnet-vhost"))
        .arg("--socket")
        .arg(&sock)
        .arg("--proxy")
        .arg(format!("unixstream:{}", proxy_path.display()))
        .arg("--trace")
        .arg(&trace)
        .arg("--json")
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = child;
    let drain = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let stdout = Some(drain(Box::new(child.stdout.take().unwrap())));
    let stderr_so_far = Arc::new(Mutex::new(String::new()));
    let stderr = {
        let seen = stderr_so_far.clone();
        let mut r = BufReader::new(child.stderr.take().unwrap());
        Some(thread::spawn(move || {
            let mut line = Vec::new();
            while matches!(r.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                seen.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&line));
                line.clear();
            }
            seen.lock().unwrap().clone()
        }))
    };
    let mut d = Daemon {
        child: Some(child),
        stdout,
        stderr,
        stderr_so_far,
        sock,
        trace,
        proxy,
    };
    for _ in 0..1000 {
        if ours(&d.sock) {
            return d;
        }
        if let Some(s) = d.child.as_mut().unwrap().try_wait().unwrap() {
            panic!("daemon exited early: {s}");
        }
        thread::sleep(Duration::from_millis(10));
    }
    panic!("vhost-user socket never appeared");
}

pub fn start(dir: &Path, extra: &[&str]) -> Daemon {
    start_at(dir, &dir.join("vhost.sock"), extra)
}

impl Daemon {
    /// Connects as the front end. The socket file appears at bind(), a moment before the
    /// daemon listens: a refused connect is retried (it consumes nothing), bounded.
    pub fn connect(&self) -> UnixStream {
        let t0 = Instant::now();
        loop {
            match UnixStream::connect(&self.sock) {
                Ok(s) => return s,
                Err(e)
                    if e.raw_os_error() == Some(libc::ECONNREFUSED)
                        && t0.elapsed() < Duration::from_secs(10) =>
                {
                    thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("connecting to {}: {e}", self.sock.display()),
            }
        }
    }

    /// Waits at most `limit` for `needle` to appear on the daemon's stderr.
    pub fn wait_for_stderr(&self, needle: &str, limit: Duration) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if self.stderr_so_far.lock().unwrap().contains(needle) {
                return true;
            }
            thread::sleep(Duration::from_millis(10));
        }
        false
    }

    pub fn signal(&self, sig: libc::c_int) {
        let pid = self.child.as_ref().unwrap().id() as libc::pid_t;
        // SAFETY: signalling our own child, which has not been reaped.
        unsafe { libc::kill(pid, sig) };
    }

    /// Waits at most `limit` for the daemon to exit (panics otherwise) and collects its output.
    pub fn finish_within(mut self, limit: Duration) -> Finished {
        let t0 = Instant::now();
        let mut child = self.child.take().unwrap();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if t0.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                let err = self.stderr.take().unwrap().join().unwrap();
                panic!("daemon still running after {limit:?}; stderr:\n{err}");
            }
            thread::sleep(Duration::from_millis(10));
        };
        let exit_wait = t0.elapsed();
        let text = self.stdout.take().unwrap().join().unwrap();
        let stderr = self.stderr.take().unwrap().join().unwrap();
        let summary: Value = serde_json::from_str(text.trim())
            .unwrap_or_else(|e| panic!("summary {text:?}: {e}; stderr:\n{stderr}"));
        Finished {
            status,
            summary,
            stderr,
            exit_wait,
        }
    }

    pub fn finish(self) -> Finished {
        self.finish_within(Duration::from_secs(20))
    }
}

/// Runs the daemon to completion (bounded: a daemon that took the path would wait for QEMU
/// forever) with `--socket sock` and a proxy that listens, or none.
pub fn run_once(dir: &Path, sock: &Path, proxy_up: bool) -> Output {
    let proxy = dir.join("proxy-once.sock");
    let listener = proxy_up.then(|| UnixListener::bind(&proxy).unwrap());
    let mut child = Command::new(env!("CARGO_BIN_EXE_vnet-vhost"))
        .arg("--socket")
        .arg(sock)
        .arg("--proxy")
        .arg(format!("unixstream:{}", proxy.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "daemon still running after 10 s with --socket {}",
                sock.display()
            );
        }
        thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    if listener.is_some() {
        std::fs::remove_file(&proxy).unwrap();
    }
    out
}
