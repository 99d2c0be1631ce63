//! Child processes that cannot outlive the runner.
//!
//! Every child gets its own process group (so a wrapper such as `bpftrace -c` takes its
//! command down with it), a deadline, and a guard that signals and reaps the whole group
//! when dropped: an early return, an error or a panic in the runner leaves nothing behind.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

pub struct Guarded {
    pub name: String,
    child: Child,
    status: Option<ExitStatus>,
}

impl Guarded {
    pub fn spawn(name: &str, cmd: &mut Command) -> io::Result<Guarded> {
        let child = cmd.process_group(0).spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("starting {name} ({:?}): {e}", cmd.get_program()),
            )
        })?;
        Ok(Guarded {
            name: name.to_string(),
            child,
            status: None,
        })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Exit status if it has exited (reaps it), without blocking.
    pub fn try_status(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    /// Waits up to `timeout`; `None` when it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status()? {
                return Ok(Some(s));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The child leads its own group (process_group(0)), so the group id is its pid. A
    /// group already gone (ESRCH) is what stopping wants anyway.
    fn signal_group(&self, sig: Signal) {
        let _ = killpg(Pid::from_raw(self.child.id() as libc::pid_t), sig);
    }

    /// Asks the group to stop (SIGTERM), then kills it after `grace`; always reaps.
    pub fn stop(&mut self, grace: Duration) -> io::Result<ExitStatus> {
        if let Some(s) = self.try_status()? {
            // The leader is gone; helpers it left in the group must not linger either.
            self.signal_group(Signal::SIGKILL);
            return Ok(s);
        }
        self.signal_group(Signal::SIGTERM);
        if let Some(s) = self.wait_timeout(grace)? {
            self.signal_group(Signal::SIGKILL);
            return Ok(s);
        }
        self.signal_group(Signal::SIGKILL);
        let s = self.child.wait()?;
        self.status = Some(s);
        Ok(s)
    }

    /// Sends one signal to the leader only (e.g. SIGINT to ask for a clean shutdown).
    pub fn signal(&self, sig: Signal) {
        let _ = kill(Pid::from_raw(self.child.id() as libc::pid_t), sig);
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.stop(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_kills_the_whole_group() {
        // The shell starts a grandchild and prints its pid; both must be gone after drop.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 300 & echo $!; wait"])
            .stdout(std::process::Stdio::piped());
        let mut g = Guarded::spawn("sh", &mut cmd).unwrap();
        let mut line = String::new();
        let out = g.child_mut().stdout.take().unwrap();
        io::BufRead::read_line(&mut io::BufReader::new(out), &mut line).unwrap();
        let grandchild: libc::pid_t = line.trim().parse().unwrap();
        let leader = g.id() as libc::pid_t;
        drop(g);
        // Reaped leader: no such process. The grandchild was reparented and killed; it
        // may linger as a zombie of init for a moment, so check its state, not existence.
        // Signal "none" only checks existence.
        assert!(kill(Pid::from_raw(leader), None).is_err());
        // SIGKILL is delivered asynchronously: wait for it to take effect (bounded).
        let running = || {
            let stat =
                std::fs::read_to_string(format!("/proc/{grandchild}/stat")).unwrap_or_default();
            stat.split_whitespace()
                .nth(2)
                .is_some_and(|s| s != "Z" && s != "X")
        };
        for _ in 0..500 {
            if !running() {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        assert!(
            !running(),
            "grandchild {grandchild} survived the group kill"
        );
    }

    #[test]
    fn wait_timeout_reports_running_then_stop_kills() {
        use std::os::unix::process::ExitStatusExt;
        let mut g = Guarded::spawn("sleep", Command::new("sleep").arg("300")).unwrap();
        assert!(g.wait_timeout(Duration::from_millis(1)).unwrap().is_none());
        let s = g.stop(Duration::from_secs(5)).unwrap();
        assert_eq!(s.signal(), Some(libc::SIGTERM));
        let mut t = Guarded::spawn("true", &mut Command::new("true")).unwrap();
        assert!(t
            .wait_timeout(Duration::from_secs(60))
            .unwrap()
            .expect("true exits")
            .success());
    }
}
