//! The traced process: a running one (-p), or a command started here and held until every
//! probe is attached (-c), so that none of its system calls is missed.
use crate::error::Error;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

pub enum Target {
    /// A process we did not start: its pidfd turns readable when it exits.
    Running { pid: i32, pidfd: OwnedFd },
    /// `sh -c` reading one line from fd 3 before it execs the command; `release` is the
    /// pipe's other end (dropping it unwritten makes the shell exit 125 instead).
    Held { child: Child, release: Option<File> },
}

impl Target {
    pub fn attach_to(pid: i32) -> Result<Target, Error> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if pid <= 0 || fd < 0 {
            return Err(Error::NoProcess(pid));
        }
        // SAFETY: fd was just returned by pidfd_open and nothing else owns it.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(Target::Running { pid, pidfd })
    }

    /// Starts `command` held before its exec. The shell execs it, so the pid traced is the
    /// command's own: a simple command, as bpftrace -c takes. With `stdout_to_stderr` (the
    /// CSV is on our stdout) its output goes to our stderr instead.
    pub fn spawn_held(command: &str, stdout_to_stderr: bool) -> Result<Target, Error> {
        let spawn_err = |source| Error::Spawn {
            command: command.to_string(),
            source,
        };
        let mut fds = [0i32; 2];
        // SAFETY: fds has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(spawn_err(std::io::Error::last_os_error()));
        }
        // SAFETY: pipe2 returned these two fds and nothing else owns them.
        let (read_end, write_end) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
        let read_fd = read_end.as_raw_fd();
        let script = format!("read _ <&3 || exit 125\nexec 3<&-\nexec {command}");
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(script).stdin(Stdio::null());
        if stdout_to_stderr {
            let stderr = std::io::stderr()
                .as_fd()
                .try_clone_to_owned()
                .map_err(spawn_err)?;
            cmd.stdout(Stdio::from(stderr));
        }
        // SAFETY: the closure only calls dup2 and fcntl, which are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if read_fd == 3 {
                    // dup2 onto itself keeps O_CLOEXEC: clear it by hand
                    if libc::fcntl(3, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(read_fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(spawn_err)?;
        drop(read_end);
        Ok(Target::Held {
            child,
            release: Some(write_end),
        })
    }

    pub fn pid(&self) -> i32 {
        match self {
            Target::Running { pid, .. } => *pid,
            Target::Held { child, .. } => child.id() as i32,
        }
    }

    /// Lets a held command run (every probe is attached by now).
    pub fn release(&mut self) -> Result<(), Error> {
        if let Target::Held { release, child } = self {
            if let Some(mut pipe) = release.take() {
                pipe.write_all(b"\n").map_err(|source| Error::Spawn {
                    command: format!("(pid {})", child.id()),
                    source,
                })?;
            }
        }
        Ok(())
    }

    /// Whether the process has exited (a held command is reaped here).
    pub fn exited(&mut self) -> bool {
        match self {
            Target::Running { pidfd, .. } => {
                let mut p = libc::pollfd {
                    fd: pidfd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd, no wait.
                let n = unsafe { libc::poll(&mut p, 1, 0) };
                n > 0 && p.revents != 0
            }
            Target::Held { child, .. } => !matches!(child.try_wait(), Ok(None)),
        }
    }

    /// How a held command ended, once [`Target::exited`] said it had (the shell's 125: it
    /// was never released; 126/127: it could not be run).
    pub fn status(&mut self) -> Option<std::process::ExitStatus> {
        match self {
            Target::Running { .. } => None,
            Target::Held { child, .. } => child.try_wait().ok().flatten(),
        }
    }
}
