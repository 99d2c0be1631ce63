//! Socket options the data path and its front ends set or read, through `nix` where it has
//! the option and through `libc` only for the macOS-only options it lacks.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::sys::socket::{getsockopt, setsockopt, sockopt};

use crate::bufsize::{attempts, fits, proxy_dgram_plan, Grant, Os, MIN_DGRAM_RCVBUF};
use crate::net::MAX_FRAME;

/// Which of a socket's two buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SockBuf {
    /// SO_SNDBUF. For a macOS datagram socket this is also the largest datagram it sends.
    Send,
    /// SO_RCVBUF.
    Recv,
}

impl SockBuf {
    /// The option's C name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            SockBuf::Send => "SO_SNDBUF",
            SockBuf::Recv => "SO_RCVBUF",
        }
    }
}

/// Asks for a buffer of `bytes` (Linux doubles the value and caps it at `wmem_max` /
/// `rmem_max`; macOS refuses sizes above its `sb_max`).
pub fn set_sock_buf(fd: BorrowedFd<'_>, which: SockBuf, bytes: usize) -> io::Result<()> {
    let bytes = bytes.min(i32::MAX as usize);
    match which {
        SockBuf::Send => setsockopt(&fd, sockopt::SndBuf, &bytes)?,
        SockBuf::Recv => setsockopt(&fd, sockopt::RcvBuf, &bytes)?,
    }
    Ok(())
}

/// The buffer size the kernel reports now.
pub fn sock_buf(fd: BorrowedFd<'_>, which: SockBuf) -> io::Result<usize> {
    Ok(match which {
        SockBuf::Send => getsockopt(&fd, sockopt::SndBuf)?,
        SockBuf::Recv => getsockopt(&fd, sockopt::RcvBuf)?,
    })
}

/// What a buffer request came to: how it went, and the size the kernel reports now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufOutcome {
    pub grant: Grant,
    /// getsockopt's answer afterwards (Linux reports double what it reserved).
    pub obtained: usize,
}

/// Asks for `requested` bytes and, where the kernel refuses a size (macOS does, above its
/// limit, rather than clamping), for smaller ones down to `floor` (see
/// [`crate::bufsize::attempts`]). A refusal is a warning naming the size obtained, never an
/// error by itself: whether that size is enough is the caller's call. Errors other than a
/// refusal (a closed fd, not a socket) are returned.
pub fn request_sock_buf(
    fd: BorrowedFd<'_>,
    which: SockBuf,
    requested: usize,
    floor: usize,
) -> io::Result<BufOutcome> {
    let tried = attempts(requested, floor);
    let mut accepted_at = None;
    let mut refusal = None;
    for (i, &size) in tried.iter().enumerate() {
        match set_sock_buf(fd, which, size) {
            Ok(()) => {
                accepted_at = Some(i);
                break;
            }
            Err(e) if is_refusal(&e) => refusal = Some(e),
            Err(e) => return Err(e),
        }
    }
    let grant = Grant::from_attempt(&tried, accepted_at);
    let obtained = sock_buf(fd, which)?;
    let refusal = refusal.map(|e| e.to_string()).unwrap_or_default();
    match grant {
        Grant::AsRequested => {}
        Grant::Reduced { accepted } => tracing::warn!(
            "{} {requested} refused ({refusal}); {accepted} accepted, the socket reports {obtained}",
            which.name()
        ),
        Grant::Refused => tracing::warn!(
            "{} {requested} refused ({refusal}), and every smaller size down to {floor}; \
             the socket keeps {obtained}",
            which.name()
        ),
    }
    Ok(BufOutcome { grant, obtained })
}

/// Sizes a proxy-side datagram socket (the simulator's built-in proxy, the tests' socketpair
/// peers) as real proxies do on this OS ([`crate::bufsize::proxy_dgram_plan`]), with
/// `rcvbuf` overriding the plan's receive size. Fails when the socket cannot send or hold
/// the largest frame.
pub fn size_proxy_dgram(fd: BorrowedFd<'_>, rcvbuf: Option<usize>) -> io::Result<()> {
    let plan = proxy_dgram_plan(Os::CURRENT);
    let wanted = [
        (SockBuf::Send, plan.sndbuf, MAX_FRAME),
        (SockBuf::Recv, rcvbuf.or(plan.rcvbuf), MIN_DGRAM_RCVBUF),
    ];
    for (which, size, floor) in wanted {
        let Some(size) = size else { continue };
        let out = request_sock_buf(fd, which, size, floor)?;
        if !fits(out.obtained, floor) {
            return Err(io::Error::other(format!(
                "{} {size}: the kernel allows {}, a frame needs {floor}",
                which.name(),
                out.obtained
            )));
        }
    }
    Ok(())
}

/// The errnos with which a kernel turns down a buffer size: ENOBUFS (macOS above its
/// limit), EINVAL (a size it cannot represent).
pub fn is_refusal(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::EINVAL))
}

/// Takes the socket's pending error (SO_ERROR, which the read also clears); 0 when none.
pub fn take_socket_error(fd: BorrowedFd<'_>) -> io::Result<i32> {
    Ok(getsockopt(&fd, sockopt::SocketError)?)
}

/// macOS has no MSG_NOSIGNAL: a dead peer must not kill the process with SIGPIPE, so the
/// socket itself is told not to raise it.
#[cfg(target_os = "macos")]
pub fn set_no_sigpipe(fd: BorrowedFd<'_>) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: `one` is a live c_int for the whole call and the length passed is its size;
    // nix has no SO_NOSIGPIPE option.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NOSIGPIPE,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Linux sends with MSG_NOSIGNAL instead: nothing to set on the socket.
#[cfg(target_os = "linux")]
pub fn set_no_sigpipe(fd: BorrowedFd<'_>) -> io::Result<()> {
    let _ = fd.as_raw_fd();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn buffers_round_trip_and_socket_error_is_clear() {
        let (a, _b) = UnixDatagram::pair().unwrap();
        set_sock_buf(a.as_fd(), SockBuf::Send, 256 << 10).unwrap();
        set_sock_buf(a.as_fd(), SockBuf::Recv, 128 << 10).unwrap();
        // Linux reports double the request (capped at wmem_max/rmem_max).
        assert!(sock_buf(a.as_fd(), SockBuf::Send).unwrap() >= 4096);
        assert!(sock_buf(a.as_fd(), SockBuf::Recv).unwrap() >= 4096);
        assert_eq!(take_socket_error(a.as_fd()).unwrap(), 0);
        set_no_sigpipe(a.as_fd()).unwrap();
        assert_eq!(SockBuf::Send.name(), "SO_SNDBUF");
    }

    #[test]
    fn a_granted_request_reports_what_the_socket_holds() {
        let (a, _b) = UnixDatagram::pair().unwrap();
        let out = request_sock_buf(a.as_fd(), SockBuf::Recv, 256 << 10, 4096).unwrap();
        assert_eq!(out.grant, Grant::AsRequested);
        assert_eq!(out.obtained, sock_buf(a.as_fd(), SockBuf::Recv).unwrap());
        assert!(is_refusal(&io::Error::from_raw_os_error(libc::ENOBUFS)));
        assert!(!is_refusal(&io::Error::from_raw_os_error(libc::EBADF)));
    }
}
