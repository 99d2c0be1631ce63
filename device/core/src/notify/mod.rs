//! A counting wake-up fd: an eventfd on Linux (`linux.rs`), a non-blocking pipe on macOS
//! (`macos.rs`). Queue kicks, interrupts and the worker's stop request all use it; the
//! read side (`AsFd`) goes into the worker's poller.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "macos")]
mod macos;

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};

/// A wake-up channel whose read side can be polled. `notify` never blocks: a full pipe or a
/// saturated eventfd already means "notified", which is all a waiter needs to know.
#[derive(Debug)]
pub struct Notifier {
    /// The fd that becomes readable (eventfd, or the pipe's read end).
    read: OwnedFd,
    /// macOS: the pipe's write end. Linux: `None`, the eventfd is written directly.
    write: Option<OwnedFd>,
}

impl Notifier {
    /// Wraps an fd created elsewhere (QEMU's kick/call eventfds). On macOS the fd must be
    /// readable and writable (a socketpair end); it is used for both directions.
    pub fn from_fd(fd: OwnedFd) -> Notifier {
        Notifier {
            read: fd,
            write: None,
        }
    }

    fn write_fd(&self) -> BorrowedFd<'_> {
        self.write.as_ref().unwrap_or(&self.read).as_fd()
    }

    /// Adds one notification and wakes whoever polls the read side. Never blocks.
    pub fn notify(&self) -> io::Result<()> {
        let buf = 1u64.to_ne_bytes();
        // An eventfd needs all 8 bytes; a pipe takes any non-empty write as a wake-up.
        let len = if self.write.is_some() { 1 } else { buf.len() };
        match nix::unistd::write(self.write_fd(), &buf[..len]) {
            // Counter saturated / pipe full: a wake-up is already pending.
            Ok(_) | Err(Errno::EAGAIN) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Consumes every pending notification without blocking; returns how many there were
    /// (0 when none; for a pipe, the number of bytes, each one notification).
    pub fn drain(&self) -> io::Result<u64> {
        let mut total = 0u64;
        loop {
            let mut buf = [0u8; 64];
            let n = match nix::unistd::read(self.read.as_fd(), &mut buf) {
                Ok(0) | Err(Errno::EAGAIN) => return Ok(total),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
                Ok(n) => n,
            };
            if self.write.is_none() && n == 8 {
                // An eventfd read returns the whole counter and resets it.
                let counter = u64::from_ne_bytes(buf[..8].try_into().expect("8 bytes"));
                return Ok(total + counter);
            }
            total += n as u64;
        }
    }

    /// Waits until notified or the timeout passes; consumes the notifications it saw and
    /// returns whether there were any.
    pub fn wait_timeout(&self, timeout: Duration) -> io::Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.drain()? > 0 {
                return Ok(true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            // Rounded up to a whole millisecond so a short wait does not spin.
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            let mut fds = [PollFd::new(self.read.as_fd(), PollFlags::POLLIN)];
            match nix::poll::poll(
                &mut fds,
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
            ) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// A second handle on the same channel (duplicated fds): a notify through either wakes
    /// a waiter on either.
    pub fn try_clone(&self) -> io::Result<Notifier> {
        Ok(Notifier {
            read: self.read.try_clone()?,
            write: self.write.as_ref().map(|w| w.try_clone()).transpose()?,
        })
    }
}

impl AsRawFd for Notifier {
    fn as_raw_fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }
}

impl AsFd for Notifier {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_drains() {
        let n = Notifier::new().unwrap();
        assert_eq!(n.drain().unwrap(), 0);
        n.notify().unwrap();
        n.notify().unwrap();
        let c = n.try_clone().unwrap();
        c.notify().unwrap();
        assert_eq!(n.drain().unwrap(), 3);
        assert_eq!(n.drain().unwrap(), 0);
    }

    #[test]
    fn wait_timeout_sees_notification_from_other_thread() {
        let n = Notifier::new().unwrap();
        assert!(!n.wait_timeout(Duration::from_millis(1)).unwrap());
        let c = n.try_clone().unwrap();
        let t = std::thread::spawn(move || c.notify().unwrap());
        assert!(n.wait_timeout(Duration::from_secs(30)).unwrap());
        t.join().unwrap();
    }
}
