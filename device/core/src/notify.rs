//! A counting wake-up fd: eventfd on Linux, a non-blocking pipe on macOS.
//! Queue kicks, interrupts and the worker's stop request all use it.
// INTERFACE (fixed, front ends depend on it):
//   Notifier::new() -> io::Result<Notifier>
//   Notifier::from_fd(OwnedFd) -> Notifier          (an eventfd handed over by QEMU)
//   fn notify(&self) -> io::Result<()>
//   fn drain(&self) -> io::Result<u64>              (non-blocking; 0 when nothing pending)
//   fn wait_timeout(&self, Duration) -> io::Result<bool>  (blocking wait, true when notified)
//   fn try_clone(&self) -> io::Result<Notifier>
//   impl AsRawFd

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// A wake-up channel whose read side can be polled. `notify` never blocks: a full pipe or a
/// saturated eventfd already means "notified", which is all a waiter needs to know.
#[derive(Debug)]
pub struct Notifier {
    /// The fd that becomes readable (eventfd, or the pipe's read end).
    read: OwnedFd,
    /// macOS: the pipe's write end. Linux: `None`, the eventfd is written directly.
    write: Option<OwnedFd>,
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

impl Notifier {
    #[cfg(target_os = "linux")]
    pub fn new() -> io::Result<Notifier> {
        // SAFETY: eventfd returns a fresh fd or -1.
        let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
        // SAFETY: fd was just created and is owned by nobody else.
        let read = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Notifier { read, write: None })
    }

    #[cfg(target_os = "macos")]
    pub fn new() -> io::Result<Notifier> {
        let mut fds = [0; 2];
        // SAFETY: pipe writes two fresh fds into the array.
        cvt(unsafe { libc::pipe(fds.as_mut_ptr()) })?;
        // SAFETY: both fds were just created and are owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        for fd in [read.as_raw_fd(), write.as_raw_fd()] {
            set_nonblocking_cloexec(fd)?;
        }
        Ok(Notifier {
            read,
            write: Some(write),
        })
    }

    /// Wraps an fd created elsewhere (QEMU's kick/call eventfds). On macOS the fd must be
    /// readable and writable (a socketpair end); it is used for both directions.
    pub fn from_fd(fd: OwnedFd) -> Notifier {
        Notifier {
            read: fd,
            write: None,
        }
    }

    fn write_fd(&self) -> RawFd {
        self.write.as_ref().unwrap_or(&self.read).as_raw_fd()
    }

    pub fn notify(&self) -> io::Result<()> {
        let buf = 1u64.to_ne_bytes();
        // An eventfd needs all 8 bytes; a pipe takes any non-empty write as a wake-up.
        let len = if self.write.is_some() { 1 } else { buf.len() };
        // SAFETY: buf is valid for len bytes.
        let n = unsafe { libc::write(self.write_fd(), buf.as_ptr().cast(), len) };
        if n < 0 {
            let err = io::Error::last_os_error();
            // Counter saturated / pipe full: a wake-up is already pending.
            if err.kind() == io::ErrorKind::WouldBlock {
                return Ok(());
            }
            return Err(err);
        }
        Ok(())
    }

    /// Consumes every pending notification; returns how many there were (for a pipe, the
    /// number of bytes, each one notification).
    pub fn drain(&self) -> io::Result<u64> {
        let mut total = 0u64;
        loop {
            let mut buf = [0u8; 64];
            // SAFETY: buf is valid for its length.
            let n =
                unsafe { libc::read(self.read.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::WouldBlock => return Ok(total),
                    io::ErrorKind::Interrupted => continue,
                    _ => return Err(err),
                }
            }
            if n == 0 {
                return Ok(total);
            }
            if self.write.is_none() && n == 8 {
                let mut v = [0u8; 8];
                v.copy_from_slice(&buf[..8]);
                // An eventfd read returns the whole counter and resets it.
                return Ok(total + u64::from_ne_bytes(v));
            }
            total += n as u64;
        }
    }

    /// Waits until notified or the timeout passes; consumes the notifications it saw.
    pub fn wait_timeout(&self, timeout: Duration) -> io::Result<bool> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if self.drain()? > 0 {
                return Ok(true);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            let mut pfd = libc::pollfd {
                fd: self.read.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
            // SAFETY: pfd is a valid pollfd array of length 1.
            let r = unsafe { libc::poll(&mut pfd, 1, ms) };
            if r < 0 {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }

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

#[cfg(target_os = "macos")]
fn set_nonblocking_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain fcntl calls on an fd we own.
    unsafe {
        let fl = cvt(libc::fcntl(fd, libc::F_GETFL))?;
        cvt(libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK))?;
        cvt(libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC))?;
    }
    Ok(())
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
