//! One kqueue event turned into an [`Event`]. Pure, so the XNU rules below are tested on
//! Linux too; `macos.rs` only copies the fields out of `struct kevent`.
//!
//! What XNU reports for a socket (`bsd/kern/uipc_socket.c` filt_soread/filt_sowrite,
//! `kern_event.c`):
//! - EV_ERROR in a returned event is a failed *change* (its `data` is the errno), never a
//!   socket error. This poller applies changes without an event list, so it sees none, but
//!   decodes one as an error all the same.
//! - A socket error arrives as EV_EOF with `fflags` = `so_error` (the read or write side
//!   shut with an error), or as a plain readable/writable event whose next read or write
//!   fails with it.
//! - EV_EOF with `fflags` 0: the peer closed its end cleanly.
//! - A connected datagram socket whose peer died gets no event at all: XNU only clears
//!   SS_ISCONNECTED and sets `so_error`. The worker asks SO_ERROR when a backend event
//!   arrives while it would otherwise not touch the socket (see `worker`).

use super::Event;

/// The kqueue filter an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Read,
    Write,
    Timer,
    Other,
}

/// The fields of one `struct kevent` that decide what it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawEvent {
    pub token: u64,
    pub filter: Filter,
    /// EV_EOF.
    pub eof: bool,
    /// EV_ERROR.
    pub error: bool,
    pub fflags: u32,
    pub data: i64,
}

pub fn decode(k: RawEvent) -> Event {
    let error_code = if k.error {
        i32::try_from(k.data).ok().filter(|&e| e != 0)
    } else if k.eof && k.fflags != 0 {
        i32::try_from(k.fflags).ok()
    } else {
        None
    };
    // A failed change reports nothing about readiness.
    let ready = !k.error;
    Event {
        token: k.token,
        readable: ready && k.filter == Filter::Read,
        writable: ready && k.filter == Filter::Write,
        hup: k.eof,
        error: k.error || error_code.is_some(),
        error_code,
        data: Some(k.data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(filter: Filter) -> RawEvent {
        RawEvent {
            token: 9,
            filter,
            eof: false,
            error: false,
            fflags: 0,
            data: 0,
        }
    }

    #[test]
    fn plain_readiness_carries_data_and_no_error() {
        let e = decode(RawEvent {
            data: 65550,
            ..raw(Filter::Read)
        });
        assert!(e.readable && !e.writable && !e.hup && !e.error);
        assert_eq!((e.token, e.data, e.error_code), (9, Some(65550), None));
        let w = decode(RawEvent {
            data: 8192,
            ..raw(Filter::Write)
        });
        assert!(w.writable && !w.readable);
        assert!(decode(raw(Filter::Timer)).data == Some(0));
    }

    #[test]
    fn eof_with_fflags_is_the_socket_error() {
        let e = decode(RawEvent {
            eof: true,
            fflags: libc::ECONNRESET as u32,
            data: 0,
            ..raw(Filter::Read)
        });
        assert!(e.hup && e.error && e.readable);
        assert_eq!(e.error_code, Some(libc::ECONNRESET));
    }

    #[test]
    fn eof_without_fflags_is_a_clean_close() {
        let e = decode(RawEvent {
            eof: true,
            ..raw(Filter::Write)
        });
        assert!(e.hup && !e.error && e.writable);
        assert_eq!(e.error_code, None);
    }

    #[test]
    fn ev_error_is_a_failed_change_with_errno_in_data() {
        let e = decode(RawEvent {
            error: true,
            data: i64::from(libc::EBADF),
            ..raw(Filter::Write)
        });
        assert!(e.error && !e.writable && !e.readable);
        assert_eq!(e.error_code, Some(libc::EBADF));
        // A nonsense errno (out of range) is still an error, with no code to report.
        let odd = decode(RawEvent {
            error: true,
            data: i64::MAX,
            ..raw(Filter::Read)
        });
        assert!(odd.error && odd.error_code.is_none());
    }
}
