//! `--tracer syscalls`: passt and its peer on the passt socket (QEMU's `-netdev stream`, or
//! our daemon) captured from outside by `probes/capture.sh --syscalls`, then read back with
//! the `analyze` binary. Nothing here links the device or the analyzer: both are processes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::process::Guarded;
use super::runner::die_with_parent;

/// What the runner needs to capture: the script and the reader of its CSV.
#[derive(Debug, Clone)]
pub struct SyscallTracer {
    /// probes/capture.sh
    pub capture_sh: PathBuf,
    /// The `analyze` binary.
    pub analyze: PathBuf,
    /// false: `--no-frames` (episodes and wake-ups only).
    pub frames: bool,
}

/// One finished capture of one process.
#[derive(Debug, Clone, Serialize)]
pub struct CaptureResult {
    /// "passt", "qemu" or "daemon".
    pub name: String,
    pub pid: u32,
    pub csv: PathBuf,
    /// `analyze report` of the CSV, as printed.
    pub report: String,
    /// capture.sh's stderr (the fd it traced, rows, lost records).
    pub log: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("starting probes/capture.sh for {name}: {source}")]
    Start {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the {name} capture {what}; its log ({log}):\n{tail}")]
    Failed {
        name: String,
        what: String,
        log: String,
        tail: String,
    },
    #[error("analyze report {csv}: {what}")]
    Analyze { csv: String, what: String },
}

/// A running capture.sh; its whole process group (bash, bpftrace, the ready watcher) goes
/// when it is dropped.
pub struct Capture {
    name: String,
    pid: u32,
    csv: PathBuf,
    ready: PathBuf,
    log: PathBuf,
    guard: Guarded,
}

impl Capture {
    /// Starts `capture.sh --syscalls -p PID --socket SOCKET --ready FILE` into
    /// `out/NAME.csv`; not yet attached when this returns (see [`wait_ready`]).
    pub fn start(
        t: &SyscallTracer,
        name: &str,
        pid: u32,
        socket: &Path,
        out: &Path,
    ) -> Result<Capture, CaptureError> {
        let csv = out.join(format!("{name}.csv"));
        let ready = out.join(format!("{name}.ready"));
        let log = out.join(format!("{name}.capture.log"));
        let start_err = |source| CaptureError::Start {
            name: name.into(),
            source,
        };
        // Ours, from an earlier run into the same directory: capture.sh refuses an existing one.
        let _ = fs::remove_file(&ready);
        let mut cmd = Command::new("bash");
        cmd.arg(&t.capture_sh).arg("--syscalls");
        if !t.frames {
            cmd.arg("--no-frames");
        }
        cmd.arg("-o")
            .arg(&csv)
            .arg("--ready")
            .arg(&ready)
            .arg("-p")
            .arg(pid.to_string())
            .arg("--socket")
            .arg(socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).map_err(start_err)?);
        let guard = Guarded::spawn(&format!("capture of {name}"), die_with_parent(&mut cmd))
            .map_err(start_err)?;
        Ok(Capture {
            name: name.into(),
            pid,
            csv,
            ready,
            log,
            guard,
        })
    }

    fn failed(&self, what: impl Into<String>) -> CaptureError {
        CaptureError::Failed {
            name: self.name.clone(),
            what: what.into(),
            log: self.log.display().to_string(),
            tail: log_tail(&self.log),
        }
    }

    /// Waits for the traced process to be gone and capture.sh to have sorted its CSV, then
    /// reads the CSV with `analyze report`.
    pub fn finish(
        mut self,
        t: &SyscallTracer,
        timeout: Duration,
    ) -> Result<CaptureResult, CaptureError> {
        let status = self
            .guard
            .wait_timeout(timeout)
            .map_err(|e| self.failed(format!("could not be waited for: {e}")))?;
        match status {
            None => {
                let _ = self.guard.stop(Duration::from_secs(2));
                return Err(self.failed(format!(
                    "did not end within {} s of its process",
                    timeout.as_secs()
                )));
            }
            Some(s) if !s.success() => return Err(self.failed(format!("exited with {s}"))),
            Some(_) => {}
        }
        let report = analyze_report(&t.analyze, &self.csv)?;
        let _ = fs::write(self.csv.with_extension("report.txt"), &report);
        let _ = fs::remove_file(&self.ready);
        Ok(CaptureResult {
            name: self.name.clone(),
            pid: self.pid,
            csv: self.csv.clone(),
            report,
            log: self.log.clone(),
        })
    }
}

fn log_tail(log: &Path) -> String {
    // bpftrace 0.17's compile warnings for syscalls.bt are three lines each and say nothing
    // about why a capture failed.
    let text = fs::read_to_string(log).unwrap_or_default();
    let useful: Vec<&str> = text
        .lines()
        .filter(|l| {
            !l.contains("WARNING: Addrspace")
                && !l.contains("RLIMIT_MEMLOCK")
                && !l.contains("max_fds")
                && !l.trim().chars().all(|c| c == '~' || c == ' ')
        })
        .collect();
    useful[useful.len().saturating_sub(10)..].join("\n")
}

/// Until every capture has its probes attached (its ready file exists). A capture that
/// exits first is an error naming it, with its log.
pub fn wait_ready(
    captures: &mut [Capture],
    timeout: Duration,
    mut interrupted: impl FnMut() -> bool,
) -> Result<(), CaptureError> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut all = true;
        for c in captures.iter_mut() {
            if c.ready.exists() {
                continue;
            }
            all = false;
            if let Ok(Some(s)) = c.guard.try_status() {
                return Err(c.failed(format!("exited with {s} before attaching")));
            }
        }
        if all {
            return Ok(());
        }
        if interrupted() {
            return Err(captures[0].failed("was interrupted while attaching"));
        }
        if Instant::now() >= deadline {
            let late: Vec<&str> = captures
                .iter()
                .filter(|c| !c.ready.exists())
                .map(|c| c.name.as_str())
                .collect();
            let first = captures
                .iter()
                .find(|c| !c.ready.exists())
                .unwrap_or(&captures[0]);
            return Err(first.failed(format!(
                "did not attach within {} s (waiting for: {})",
                timeout.as_secs(),
                late.join(", ")
            )));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// `analyze report CSV`: its stdout, or an error with its stderr.
pub fn analyze_report(analyze: &Path, csv: &Path) -> Result<String, CaptureError> {
    let out = Command::new(analyze)
        .arg("report")
        .arg(csv)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| CaptureError::Analyze {
            csv: csv.display().to_string(),
            what: format!("starting {}: {e}", analyze.display()),
        })?;
    if !out.status.success() {
        return Err(CaptureError::Analyze {
            csv: csv.display().to_string(),
            what: format!(
                "exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// True once process `pid` holds the accepted end of a connection to the socket bound at
/// `path`. A connection waiting in the listen backlog already shows in /proc/net/unix under
/// the listener's name, before the process has it: capture.sh, started then, would find only
/// the listening socket and trace that.
pub fn accepted_by(pid: u32, path: &Path) -> bool {
    let Ok(table) = fs::read_to_string("/proc/net/unix") else {
        return false;
    };
    let inodes = connected_at(&table, path);
    if inodes.is_empty() {
        return false;
    }
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    dir.filter_map(Result::ok).any(|e| {
        fs::read_link(e.path()).is_ok_and(|l| {
            l.to_str()
                .and_then(|l| l.strip_prefix("socket:[")?.strip_suffix(']'))
                .is_some_and(|ino| inodes.iter().any(|i| i == ino))
        })
    })
}

/// Inodes of the non-listening sockets named `path` (accepted or waiting to be).
fn connected_at(proc_net_unix: &str, path: &Path) -> Vec<String> {
    let want = path.to_string_lossy();
    // Num RefCount Protocol Flags Type St Inode Path; Flags 00010000 = listening
    proc_net_unix
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 8 && f[7] == want && f[3] != "00010000").then(|| f[6].to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connected_entries_are_the_non_listening_ones() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 100 /tmp/x/passt.sock\n\
            0000000000000000: 00000003 00000000 00000000 0001 03 101\n\
            0000000000000000: 00000003 00000000 00000000 0001 03 102 /tmp/x/passt.sock\n";
        assert_eq!(connected_at(table, Path::new("/tmp/x/passt.sock")), ["102"]);
        assert!(connected_at(table, Path::new("/tmp/x/passt")).is_empty());
    }

    #[test]
    fn a_connection_counts_once_accepted_not_while_in_the_backlog() {
        use std::os::unix::net::{UnixListener, UnixStream};
        let dir = std::env::temp_dir().join(format!("vnet-vm-accept-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("s.sock");
        let me = std::process::id();
        let l = UnixListener::bind(&p).unwrap();
        assert!(!accepted_by(me, &p));
        let _c = UnixStream::connect(&p).unwrap();
        // In the backlog: /proc/net/unix lists it under the path, no process holds it yet.
        let table = fs::read_to_string("/proc/net/unix").unwrap();
        assert_eq!(connected_at(&table, &p).len(), 1);
        assert!(!accepted_by(me, &p));
        let _a = l.accept().unwrap();
        assert!(accepted_by(me, &p));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn analyze_failure_carries_its_stderr() {
        let e = analyze_report(Path::new("/nonexistent/analyze"), Path::new("x.csv"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("x.csv") && e.contains("/nonexistent/analyze"),
            "{e}"
        );
        let e = analyze_report(Path::new("false"), Path::new("y.csv"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("y.csv") && e.contains("exit status: 1"), "{e}");
    }
}
