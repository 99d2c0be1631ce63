//! Socket options the data path and its front ends set or read, through `nix` where it has
//! the option and through `libc` only for the macOS-only options it lacks.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::sys::socket::{getsockopt, setsockopt, sockopt};

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
}
