//! The Linux poller: epoll (edge-triggered for the backend socket) and a timerfd for the
//! one-shot retry timer.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::Duration;

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{getsockopt, sockopt};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};

use super::{Event, Interest, TIMER_TOKEN};

/// What [`Interest::ReadWriteEdge`] always watches; EPOLLOUT comes and goes with
/// [`Poller::watch_writable`].
const EDGE_READ: EpollFlags = EpollFlags::EPOLLIN
    .union(EpollFlags::EPOLLRDHUP)
    .union(EpollFlags::EPOLLET);

/// Free send space of a socket: SO_SNDBUF minus the bytes queued (SIOCOUTQ), -1 if unknown.
pub fn send_space(fd: BorrowedFd<'_>) -> i64 {
    let Ok(sndbuf) = getsockopt(&fd, sockopt::SndBuf) else {
        return -1;
    };
    let mut queued: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (== SIOCOUTQ) writes one int into `queued`, which lives across the
    // call; nix has no safe wrapper for this ioctl.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut queued) } < 0 {
        return -1;
    }
    sndbuf as i64 - i64::from(queued)
}

/// Bytes waiting to be read (FIONREAD), -1 if unknown (eventfds do not support it).
pub fn bytes_waiting(fd: BorrowedFd<'_>) -> i64 {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int into `n`, which lives across the call; nix has no
    // safe wrapper for this ioctl.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) } < 0 {
        return -1;
    }
    i64::from(n)
}

pub struct Poller {
    epoll: Epoll,
    timer: TimerFd,
    timer_pending: bool,
    buf: Vec<EpollEvent>,
}

impl Poller {
    pub fn new() -> io::Result<Poller> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        epoll.add(&timer, EpollEvent::new(EpollFlags::EPOLLIN, TIMER_TOKEN))?;
        Ok(Poller {
            epoll,
            timer,
            timer_pending: false,
            buf: vec![EpollEvent::empty(); 32],
        })
    }

    pub fn add(&mut self, fd: BorrowedFd<'_>, token: u64, interest: Interest) -> io::Result<()> {
        let events = match interest {
            Interest::Read => EpollFlags::EPOLLIN,
            Interest::ReadWriteEdge => EDGE_READ | EpollFlags::EPOLLOUT,
        };
        self.epoll.add(fd, EpollEvent::new(events, token))?;
        Ok(())
    }

    /// Turns write readiness reports for `fd` on or off (`EPOLL_CTL_MOD`). Edge-triggered
    /// epoll does not report a socket becoming writable once per transition: a unix
    /// socket wakes its waiters with EPOLLOUT every time the peer takes data from it and
    /// it is writable (`sock_wfree` calls `unix_write_space`). With EPOLLOUT always on,
    /// every read the proxy made woke an idle worker for nothing (`vnet-sim --backend
    /// unixstream`, 1514 B both ways: about one write event per 11 frames, with no frame
    /// ever deferred). The worker turns it on only while a frame is deferred. Turning it
    /// on re-polls the socket (`ep_modify`): one that became writable between the refused
    /// send and this call is reported at once, so no write event is missed. `low_water`
    /// is ignored: Linux cannot set SO_SNDLOWAT, so the worker compares the free space
    /// itself.
    pub fn watch_writable(
        &mut self,
        fd: BorrowedFd<'_>,
        token: u64,
        on: bool,
        low_water: Option<usize>,
    ) -> io::Result<()> {
        let _ = low_water;
        let events = if on {
            EDGE_READ | EpollFlags::EPOLLOUT
        } else {
            EDGE_READ
        };
        self.epoll.modify(fd, &mut EpollEvent::new(events, token))?;
        Ok(())
    }

    /// Arms the one-shot timer; returns false (and leaves the deadline alone) when a timer
    /// is already pending, so repeated failures cannot keep pushing the retry away.
    pub fn arm_timer(&mut self, delay: Duration) -> io::Result<bool> {
        if self.timer_pending {
            return Ok(false);
        }
        // A zero it_value would disarm the timer; 1 ns is "as soon as possible".
        let delay = delay.max(Duration::from_nanos(1));
        self.timer.set(
            Expiration::OneShot(TimeSpec::from_duration(delay)),
            TimerSetTimeFlags::empty(),
        )?;
        self.timer_pending = true;
        Ok(true)
    }

    pub fn timer_pending(&self) -> bool {
        self.timer_pending
    }

    /// Waits for events (forever when `timeout` is `None`) and replaces `out` with them.
    pub fn wait(&mut self, out: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        out.clear();
        let timeout = match timeout {
            None => EpollTimeout::NONE,
            Some(t) => EpollTimeout::try_from(t).unwrap_or(EpollTimeout::MAX),
        };
        let n = match self.epoll.wait(&mut self.buf, timeout) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        for ev in &self.buf[..n] {
            let (bits, token) = (ev.events(), ev.data());
            if token == TIMER_TOKEN {
                let mut expirations = [0u8; 8];
                // Reading the count clears the timerfd; EAGAIN (already read) is harmless.
                let _ = nix::unistd::read(self.timer.as_fd(), &mut expirations);
                self.timer_pending = false;
            }
            out.push(Event {
                token,
                readable: bits.contains(EpollFlags::EPOLLIN),
                writable: bits.contains(EpollFlags::EPOLLOUT),
                hup: bits.intersects(EpollFlags::EPOLLHUP | EpollFlags::EPOLLRDHUP),
                error: bits.contains(EpollFlags::EPOLLERR),
                error_code: None,
                data: None,
            });
        }
        Ok(())
    }
}
