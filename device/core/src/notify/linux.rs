//! The Linux notifier: one non-blocking eventfd, read and written directly.

use std::io;

use nix::sys::eventfd::{EfdFlags, EventFd};

use super::Notifier;

impl Notifier {
    /// A fresh eventfd, non-blocking and close-on-exec, with nothing pending.
    pub fn new() -> io::Result<Notifier> {
        let fd = EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
        Ok(Notifier {
            read: fd.into(),
            write: None,
        })
    }
}
