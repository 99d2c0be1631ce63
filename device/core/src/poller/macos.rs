//! The macOS poller: kqueue (EV_CLEAR, i.e. edge-triggered, for the backend socket) and an
//! EVFILT_TIMER one-shot for the retry timer. kqueue reports each event's `data` itself
//! (free send space for EVFILT_WRITE, bytes waiting for EVFILT_READ), so the probes need
//! no extra system call here.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use nix::sys::event::{EvFlags, EventFilter, FilterFlag, KEvent, Kqueue};

use super::kevent::{decode, Filter, RawEvent};
use super::{Event, Interest, TIMER_TOKEN};

/// kqueue's own EVFILT_WRITE `data` is the send space: nothing to ask the socket.
pub fn send_space(_fd: BorrowedFd<'_>) -> i64 {
    -1
}

/// kqueue's own EVFILT_READ `data` is the bytes waiting: nothing to ask the socket.
pub fn bytes_waiting(_fd: BorrowedFd<'_>) -> i64 {
    -1
}

/// The timer's kqueue ident; any number not used by an fd filter in this queue would do,
/// since EVFILT_TIMER idents live in their own namespace.
const TIMER_IDENT: usize = 0x7654_3210;

pub struct Poller {
    kq: Kqueue,
    timer_pending: bool,
    buf: Vec<KEvent>,
}

fn empty_kevent() -> KEvent {
    KEvent::new(
        0,
        EventFilter::EVFILT_READ,
        EvFlags::empty(),
        FilterFlag::empty(),
        0,
        0,
    )
}

impl Poller {
    pub fn new() -> io::Result<Poller> {
        Ok(Poller {
            kq: Kqueue::new()?,
            timer_pending: false,
            buf: vec![empty_kevent(); 32],
        })
    }

    /// Applies changes, with no event list: a failing change is reported as the call's
    /// error rather than as an EV_ERROR event.
    fn change(&self, changes: &[KEvent]) -> io::Result<()> {
        self.kq.kevent(changes, &mut [], None)?;
        Ok(())
    }

    pub fn add(&mut self, fd: BorrowedFd<'_>, token: u64, interest: Interest) -> io::Result<()> {
        let ident = fd.as_raw_fd() as usize;
        let udata = token as isize;
        let kev = |filter, flags| KEvent::new(ident, filter, flags, FilterFlag::empty(), 0, udata);
        match interest {
            Interest::Read => self.change(&[kev(EventFilter::EVFILT_READ, EvFlags::EV_ADD)]),
            Interest::ReadWriteEdge => {
                let edge = EvFlags::EV_ADD | EvFlags::EV_CLEAR;
                self.change(&[
                    kev(EventFilter::EVFILT_READ, edge),
                    kev(EventFilter::EVFILT_WRITE, edge),
                ])
            }
        }
    }

    /// Turns EVFILT_WRITE for `fd` on or off. The worker turns it off while nothing is
    /// deferred, so a socket that stays writable wakes nobody for nothing, and on when a
    /// frame is deferred, so every write event of an episode is seen (and probed). Whether
    /// XNU reports a socket that is already writable the moment the filter is enabled has
    /// not been checked on a Mac; if it does not, the retry timer still retries the frame.
    /// `low_water` (the `room` retry policy) sets NOTE_LOWAT: the filter fires only once
    /// that many bytes of send space are free. Type-checked only, never run.
    pub fn watch_writable(
        &mut self,
        fd: BorrowedFd<'_>,
        token: u64,
        on: bool,
        low_water: Option<usize>,
    ) -> io::Result<()> {
        let flags = if on {
            EvFlags::EV_ADD | EvFlags::EV_CLEAR | EvFlags::EV_ENABLE
        } else {
            EvFlags::EV_DISABLE
        };
        let (fflags, data) = match low_water {
            Some(bytes) if on => (
                FilterFlag::NOTE_LOWAT,
                bytes.min(isize::MAX as usize) as isize,
            ),
            _ => (FilterFlag::empty(), 0),
        };
        self.change(&[KEvent::new(
            fd.as_raw_fd() as usize,
            EventFilter::EVFILT_WRITE,
            flags,
            fflags,
            data,
            token as isize,
        )])
    }

    pub fn arm_timer(&mut self, delay: Duration) -> io::Result<bool> {
        if self.timer_pending {
            return Ok(false);
        }
        let us = delay.as_micros().clamp(1, isize::MAX as u128) as isize;
        self.change(&[KEvent::new(
            TIMER_IDENT,
            EventFilter::EVFILT_TIMER,
            EvFlags::EV_ADD | EvFlags::EV_ONESHOT,
            FilterFlag::NOTE_USECONDS,
            us,
            TIMER_TOKEN as isize,
        )])?;
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
        let n = match self.kq.kevent(&[], &mut self.buf, ts) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        for kev in &self.buf[..n] {
            let filter = match kev.filter() {
                Ok(EventFilter::EVFILT_READ) => Filter::Read,
                Ok(EventFilter::EVFILT_WRITE) => Filter::Write,
                Ok(EventFilter::EVFILT_TIMER) => Filter::Timer,
                _ => Filter::Other,
            };
            if filter == Filter::Timer {
                self.timer_pending = false;
            }
            out.push(decode(RawEvent {
                token: kev.udata() as u64,
                filter,
                eof: kev.flags().contains(EvFlags::EV_EOF),
                error: kev.flags().contains(EvFlags::EV_ERROR),
                fflags: kev.fflags().bits(),
                data: kev.data() as i64,
            }));
        }
        Ok(())
    }
}
