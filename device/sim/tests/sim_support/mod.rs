//! Helpers shared by the sim_*.rs tests: run vnet-sim with a bound, parse its JSON,
//! count trace rows, make private temp dirs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub struct Outcome {
    pub code: i32,
    pub json: serde_json::Value,
    pub stderr: String,
}

impl Outcome {
    pub fn u(&self, key: &str) -> u64 {
        self.json[key]
            .as_u64()
            .unwrap_or_else(|| panic!("summary has no integer {key:?}: {}", self.json))
    }

    /// A device counter (the summary's `device` object).
    pub fn device_u(&self, key: &str) -> u64 {
        self.json["device"][key]
            .as_u64()
            .unwrap_or_else(|| panic!("device counters have no integer {key:?}: {}", self.json))
    }

    pub fn errors(&self) -> u64 {
        self.u("lost") + self.u("duplicated") + self.u("reordered") + self.u("corrupted")
    }
}

/// Runs vnet-sim with `args` plus `--json --no-progress` (and a 10 s stall timeout unless
/// `args` set one), killing it if it outlives
/// `bound` (a hang is a failure, never a stuck CI job).
pub fn sim(args: &[&str], bound: Duration) -> Outcome {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vnet-sim"))
        .args(args)
        .args(["--json", "--no-progress"])
        // A starved thread on a loaded CI machine is not a hang: tests that expect a stall
        // set their own short timeout.
        .args(if args.contains(&"--stall-timeout") {
            &[][..]
        } else {
            &["--stall-timeout", "10"][..]
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vnet-sim");
    let status = wait_bounded(&mut child, args, bound);
    let out = child.wait_with_output().expect("collect vnet-sim output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "vnet-sim {args:?}: stdout is not one JSON object ({e}):\n{stdout}\nstderr:\n{stderr}"
        )
    });
    Outcome {
        code: status.code().unwrap_or(-1),
        json,
        stderr,
    }
}

/// Waits for the vnet-sim run with `args` to exit; kills it and fails the test, with its
/// stderr, if it outlives `bound`.
fn wait_bounded(child: &mut Child, args: &[&str], bound: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("wait vnet-sim") {
            return s;
        }
        if start.elapsed() > bound {
            let _ = child.kill();
            let _ = child.wait();
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
            }
            panic!("vnet-sim {args:?} still running after {bound:?}; stderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Rows of `probe` in a trace CSV (the probe name is the third column).
pub fn trace_rows(path: &Path, probe: &str) -> u64 {
    let text = std::fs::read_to_string(path).expect("read trace");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(',').nth(2) == Some(probe))
        .count() as u64
}

/// A fresh private directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p = std::env::temp_dir().join(format!("vnet-sim-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs vnet-sim with exactly `args`, killed if it outlives `bound`: (exit code, stderr).
pub fn sim_raw(args: &[&str], bound: Duration) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vnet-sim"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vnet-sim");
    let status = wait_bounded(&mut child, args, bound);
    let out = child.wait_with_output().expect("collect vnet-sim output");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
