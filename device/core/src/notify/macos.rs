//! The macOS notifier: a pipe (macOS has no eventfd), both ends non-blocking and
//! close-on-exec; each byte in it is one notification.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};

use super::Notifier;

impl Notifier {
    /// A fresh pipe, both ends non-blocking and close-on-exec, with nothing pending.
    pub fn new() -> io::Result<Notifier> {
        // macOS has no pipe2: the flags are set right after, before anyone else sees the fds.
        let (read, write) = nix::unistd::pipe()?;
        for fd in [&read, &write] {
            set_nonblocking_cloexec(fd)?;
        }
        Ok(Notifier {
            read,
            write: Some(write),
        })
    }
}

fn set_nonblocking_cloexec(fd: &OwnedFd) -> io::Result<()> {
    let flags = OFlag::from_bits_retain(fcntl(fd.as_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    fcntl(fd.as_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(())
}
