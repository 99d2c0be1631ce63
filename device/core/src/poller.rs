//! One small poller type over epoll + timerfd (Linux) and kqueue + EVFILT_TIMER (macOS).
//!
//! Both halves have the same shape: `add` registers an fd under a token (edge-triggered for
//! the backend socket, level-triggered for wake-up fds), `arm_timer` arms a one-shot timer
//! in microseconds unless one is already pending (a pending retry is never postponed), and
//! `wait` fills a list of [`Event`]s. Only the Linux half is compiled and tested here; the
//! macOS half mirrors it line for line.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Token reported for the one-shot timer.
pub const TIMER_TOKEN: u64 = u64::MAX;

/// How an fd is watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    /// Readable only, level-triggered: wake-up fds that the worker drains every time.
    Read,
    /// Readable and writable, edge-triggered: the backend socket. The worker reads and
    /// writes until the socket would block, so it never needs a level-triggered repeat.
    ReadWriteEdge,
}

/// One readiness report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub token: u64,
    pub readable: bool,
    pub writable: bool,
    /// The peer hung up (EPOLLHUP/EPOLLRDHUP, EV_EOF).
    pub hup: bool,
    /// The socket has a pending error (EPOLLERR, EV_ERROR).
    pub error: bool,
    /// kqueue's `data` (free send space / bytes waiting); `None` where the poller does not
    /// report it (epoll) and the caller asks the socket instead.
    pub data: Option<i64>,
}

impl Event {
    pub fn is_timer(&self) -> bool {
        self.token == TIMER_TOKEN
    }
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Free send space of a socket: SO_SNDBUF minus the bytes queued (SIOCOUTQ), -1 if unknown.
#[cfg(target_os = "linux")]
pub fn send_space(fd: RawFd) -> i64 {
    let mut sndbuf: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: sndbuf and len are valid for getsockopt's writes.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&mut sndbuf as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    let mut queued: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (== SIOCOUTQ) writes one int.
    let q = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued) };
    if r < 0 || q < 0 {
        return -1;
    }
    i64::from(sndbuf) - i64::from(queued)
}

/// Bytes waiting to be read (FIONREAD), -1 if unknown (eventfds do not support it).
#[cfg(target_os = "linux")]
pub fn bytes_waiting(fd: RawFd) -> i64 {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) } < 0 {
        return -1;
    }
    i64::from(n)
}

#[cfg(target_os = "macos")]
pub fn send_space(_fd: RawFd) -> i64 {
    -1
}

#[cfg(target_os = "macos")]
pub fn bytes_waiting(_fd: RawFd) -> i64 {
    -1
}

#[cfg(target_os = "linux")]
pub struct Poller {
    epoll: OwnedFd,
    timer: OwnedFd,
    timer_pending: bool,
    buf: Vec<libc::epoll_event>,
}

#[cfg(target_os = "linux")]
impl Poller {
    pub fn new() -> io::Result<Poller> {
        // SAFETY: creates a fresh fd or fails.
        let epoll = unsafe { OwnedFd::from_raw_fd(cvt(libc::epoll_create1(libc::EPOLL_CLOEXEC))?) };
        // SAFETY: creates a fresh fd or fails.
        let timer = unsafe {
            OwnedFd::from_raw_fd(cvt(libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            ))?)
        };
        let p = Poller {
            epoll,
            timer,
            timer_pending: false,
            buf: Vec::with_capacity(32),
        };
        p.ctl(p.timer.as_raw_fd(), TIMER_TOKEN, libc::EPOLLIN as u32)?;
        Ok(p)
    }

    fn ctl(&self, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: ev is a valid epoll_event.
        cvt(unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) })?;
        Ok(())
    }

    pub fn add(&mut self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        let events = match interest {
            Interest::Read => libc::EPOLLIN,
            Interest::ReadWriteEdge => {
                libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET
            }
        };
        self.ctl(fd, token, events as u32)
    }

    /// Arms the one-shot timer; returns false (and leaves the deadline alone) when a timer
    /// is already pending, so repeated failures cannot keep pushing the retry away.
    pub fn arm_timer(&mut self, delay: Duration) -> io::Result<bool> {
        if self.timer_pending {
            return Ok(false);
        }
        // A zero it_value would disarm the timer; 1 ns is "as soon as possible".
        let ns = delay.as_nanos().max(1);
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (ns % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: spec is valid; old value not requested.
        cvt(unsafe {
            libc::timerfd_settime(self.timer.as_raw_fd(), 0, &spec, std::ptr::null_mut())
        })?;
        self.timer_pending = true;
        Ok(true)
    }

    pub fn timer_pending(&self) -> bool {
        self.timer_pending
    }

    /// Waits for events (forever when `timeout` is `None`) and replaces `out` with them.
    pub fn wait(&mut self, out: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        out.clear();
        let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as libc::c_int);
        self.buf.clear();
        let cap = self.buf.capacity() as libc::c_int;
        // SAFETY: buf has room for `cap` events; the kernel initialises the first n.
        let n = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), self.buf.as_mut_ptr(), cap, ms) };
        if n < 0 {
            let err = io::Error::last_os_error();
            return if err.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(err)
            };
        }
        // SAFETY: epoll_wait initialised n entries.
        unsafe { self.buf.set_len(n as usize) };
        for ev in &self.buf {
            let (bits, token) = (ev.events, ev.u64);
            if token == TIMER_TOKEN {
                let mut expirations = [0u8; 8];
                // SAFETY: reading 8 bytes clears the timerfd; EAGAIN is harmless.
                unsafe { libc::read(self.timer.as_raw_fd(), expirations.as_mut_ptr().cast(), 8) };
                self.timer_pending = false;
            }
            out.push(Event {
                token,
                readable: bits & libc::EPOLLIN as u32 != 0,
                writable: bits & libc::EPOLLOUT as u32 != 0,
                hup: bits & (libc::EPOLLHUP | libc::EPOLLRDHUP) as u32 != 0,
                error: bits & libc::EPOLLERR as u32 != 0,
                data: None,
            });
        }
        Ok(())
    }
}

#[cfg(target_os = "macos")]
pub struct Poller {
    kq: OwnedFd,
    timer_pending: bool,
    buf: Vec<libc::kevent>,
}

#[cfg(target_os = "macos")]
const TIMER_IDENT: usize = 0x7654_3210;

#[cfg(target_os = "macos")]
impl Poller {
    pub fn new() -> io::Result<Poller> {
        // SAFETY: creates a fresh fd or fails.
        let kq = unsafe { OwnedFd::from_raw_fd(cvt(libc::kqueue())?) };
        Ok(Poller {
            kq,
            timer_pending: false,
            buf: Vec::with_capacity(32),
        })
    }

    fn ctl(
        &self,
        ident: usize,
        filter: i16,
        flags: u16,
        fflags: u32,
        data: isize,
        token: u64,
    ) -> io::Result<()> {
        let kev = libc::kevent {
            ident,
            filter,
            flags,
            fflags,
            data,
            udata: token as *mut libc::c_void,
        };
        // SAFETY: one valid change, no event list.
        cvt(unsafe {
            libc::kevent(
                self.kq.as_raw_fd(),
                &kev,
                1,
                std::ptr::null_mut(),
                0,
                std::ptr::null(),
            )
        })?;
        Ok(())
    }

    pub fn add(&mut self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        match interest {
            Interest::Read => self.ctl(fd as usize, libc::EVFILT_READ, libc::EV_ADD, 0, 0, token),
            Interest::ReadWriteEdge => {
                self.ctl(
                    fd as usize,
                    libc::EVFILT_READ,
                    libc::EV_ADD | libc::EV_CLEAR,
                    0,
                    0,
                    token,
                )?;
                self.ctl(
                    fd as usize,
                    libc::EVFILT_WRITE,
                    libc::EV_ADD | libc::EV_CLEAR,
                    0,
                    0,
                    token,
                )
            }
        }
    }

    pub fn arm_timer(&mut self, delay: Duration) -> io::Result<bool> {
        if self.timer_pending {
            return Ok(false);
        }
        let us = delay.as_micros().clamp(1, isize::MAX as u128) as isize;
        let flags = libc::EV_ADD | libc::EV_ONESHOT;
        self.ctl(
            TIMER_IDENT,
            libc::EVFILT_TIMER,
            flags,
            libc::NOTE_USECONDS,
            us,
            TIMER_TOKEN,
        )?;
        self.timer_pending = true;
        Ok(true)
    }

    pub fn timer_pending(&self) -> bool {
        self.timer_pending
    }

    pub fn wait(&mut self, out: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        out.clear();
        let ts = timeout.map(|t| libc::timespec {
            tv_sec: t.as_secs() as libc::time_t,
            tv_nsec: t.subsec_nanos() as libc::c_long,
        });
        let tsp = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        self.buf.clear();
        let cap = self.buf.capacity() as libc::c_int;
        // SAFETY: buf has room for `cap` events; the kernel initialises the first n.
        let n = unsafe {
            libc::kevent(
                self.kq.as_raw_fd(),
                std::ptr::null(),
                0,
                self.buf.as_mut_ptr(),
                cap,
                tsp,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            return if err.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(err)
            };
        }
        // SAFETY: kevent initialised n entries.
        unsafe { self.buf.set_len(n as usize) };
        for kev in &self.buf {
            let token = kev.udata as u64;
            if kev.filter == libc::EVFILT_TIMER {
                self.timer_pending = false;
            }
            out.push(Event {
                token,
                readable: kev.filter == libc::EVFILT_READ,
                writable: kev.filter == libc::EVFILT_WRITE,
                hup: kev.flags & libc::EV_EOF != 0,
                error: kev.flags & libc::EV_ERROR != 0,
                data: Some(kev.data as i64),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::Notifier;

    #[test]
    fn timer_fires_once_and_is_not_postponed() {
        let mut p = Poller::new().unwrap();
        assert!(p.arm_timer(Duration::from_micros(50)).unwrap());
        // A second arm while pending must leave the first deadline in place.
        assert!(!p.arm_timer(Duration::from_secs(3600)).unwrap());
        let mut evs = Vec::new();
        while evs.is_empty() {
            p.wait(&mut evs, Some(Duration::from_secs(60))).unwrap();
        }
        assert!(evs.iter().any(|e| e.is_timer()));
        assert!(!p.timer_pending());
        // One-shot: nothing more arrives.
        p.wait(&mut evs, Some(Duration::from_millis(5))).unwrap();
        assert!(evs.iter().all(|e| !e.is_timer()));
    }

    #[test]
    fn reports_notifier_readable_with_token() {
        let mut p = Poller::new().unwrap();
        let n = Notifier::new().unwrap();
        p.add(n.as_raw_fd(), 7, Interest::Read).unwrap();
        n.notify().unwrap();
        let mut evs = Vec::new();
        p.wait(&mut evs, Some(Duration::from_secs(60))).unwrap();
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].token, 7);
        assert!(evs[0].readable);
    }

    // Linux answers from the socket; on macOS the data comes from kqueue itself.
    #[cfg(target_os = "linux")]
    #[test]
    fn socket_space_and_bytes_waiting() {
        let (a, b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        assert_eq!(bytes_waiting(b.as_raw_fd()), 0);
        a.send(&[1, 2, 3]).unwrap();
        assert_eq!(bytes_waiting(b.as_raw_fd()), 3);
        assert!(send_space(a.as_raw_fd()) > 0);
        let n = Notifier::new().unwrap();
        assert_eq!(bytes_waiting(n.as_raw_fd()), -1);
    }
}
