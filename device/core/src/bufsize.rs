//! How big the sockets' buffers should be, per OS, and what to make of what the kernel
//! granted. Pure functions, so the macOS policy is tested on Linux too; `sockopt` applies
//! them to real sockets.
//!
//! The OS facts behind the numbers (XNU `bsd/kern/uipc_usrreq.c`, `uipc_socket2.c`):
//! - A macOS unix datagram socket starts with SO_SNDBUF 2048 (`net.local.dgram.maxdgram`)
//!   and SO_RCVBUF 4096 (`net.local.dgram.recvspace`). SO_SNDBUF caps the largest datagram
//!   it can send (EMSGSIZE above it); the receiver's SO_RCVBUF must hold a whole datagram
//!   plus the sender's address, or every send fails with ENOBUFS.
//! - A macOS unix stream socket starts with 8 KiB each way.
//! - macOS refuses (ENOBUFS) any size above `kern.ipc.maxsockbuf * 2048 / 2304`, about
//!   7.1 MiB with the default 8 MiB, instead of clamping it the way Linux does.
//! - Linux doubles the value asked for, caps it at `wmem_max`/`rmem_max`, and does not
//!   hold a unix datagram to the receiver's SO_RCVBUF at all.

use crate::net::MAX_FRAME;

/// Room a datagram takes in a receive buffer besides its payload: the sender's address
/// (a `sockaddr_un`, 106 bytes on macOS) and bookkeeping, rounded up.
pub const DGRAM_OVERHEAD: usize = 256;

/// The smallest receive buffer that holds the largest frame as one datagram.
pub const MIN_DGRAM_RCVBUF: usize = MAX_FRAME + DGRAM_OVERHEAD;

/// The operating systems with a policy here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Os {
    Linux,
    MacOs,
}

impl Os {
    #[cfg(target_os = "linux")]
    pub const CURRENT: Os = Os::Linux;
    #[cfg(target_os = "macos")]
    pub const CURRENT: Os = Os::MacOs;
}

/// Buffer sizes to ask for; `None` leaves the kernel's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferPlan {
    pub sndbuf: Option<usize>,
    pub rcvbuf: Option<usize>,
}

/// The peer of the device's datagram socket in the simulator and the tests (the built-in
/// proxy, the socketpair peer): what real proxies ask for on macOS (gvproxy: SO_SNDBUF
/// 1 MiB, SO_RCVBUF 4 MiB). Linux keeps its defaults, which already carry every frame.
pub fn proxy_dgram_plan(os: Os) -> BufferPlan {
    match os {
        Os::Linux => BufferPlan {
            sndbuf: None,
            rcvbuf: None,
        },
        Os::MacOs => BufferPlan {
            sndbuf: Some(1 << 20),
            rcvbuf: Some(4 << 20),
        },
    }
}

/// The device's stream socket when the user chose no size: like libkrun, 16 MiB asked for
/// on macOS (where the 8 KiB default splits a 65 KB frame into ~8 writes, each waiting for
/// a write event); the kernel's own autotuning on Linux.
pub fn stream_plan(os: Os) -> BufferPlan {
    match os {
        Os::Linux => BufferPlan {
            sndbuf: None,
            rcvbuf: None,
        },
        Os::MacOs => BufferPlan {
            sndbuf: Some(16 << 20),
            rcvbuf: Some(16 << 20),
        },
    }
}

/// The sizes to try, largest first: the request, then halves of it while they stay at or
/// above `floor` (a kernel that refuses a size may take a smaller one), then `floor` itself
/// when the halving skipped past it. A request at or below the floor is tried alone.
pub fn attempts(requested: usize, floor: usize) -> Vec<usize> {
    let mut out = vec![requested];
    let mut size = requested;
    while size / 2 >= floor.max(1) && size / 2 < size {
        size /= 2;
        out.push(size);
    }
    if floor > 0 && size > floor {
        out.push(floor);
    }
    out
}

/// What came of a buffer request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// The first size asked for was accepted.
    AsRequested,
    /// The kernel refused larger sizes; this smaller one was accepted. Worth a warning.
    Reduced { accepted: usize },
    /// Every size down to the floor was refused.
    Refused,
}

impl Grant {
    /// From the sizes tried and the index of the first accepted one (`None`: all refused).
    pub fn from_attempt(tried: &[usize], accepted_at: Option<usize>) -> Grant {
        match accepted_at {
            Some(0) => Grant::AsRequested,
            Some(i) => Grant::Reduced { accepted: tried[i] },
            None => Grant::Refused,
        }
    }
}

/// Whether a buffer the kernel reports (`obtained`, as getsockopt returns it) is enough:
/// only a datagram socket has a floor, since a stream carries a frame in pieces.
pub fn fits(obtained: usize, floor: usize) -> bool {
    obtained >= floor
}

/// A `--proxy-rcvbuf` for a datagram proxy below [`MIN_DGRAM_RCVBUF`] could never hold the
/// largest frame on macOS: every send of one would fail with ENOBUFS, forever.
pub fn check_dgram_rcvbuf(bytes: usize) -> Result<(), String> {
    if bytes < MIN_DGRAM_RCVBUF {
        return Err(format!(
            "{bytes} is below {MIN_DGRAM_RCVBUF} (the largest frame, {MAX_FRAME} bytes, plus \
             {DGRAM_OVERHEAD} for the sender's address and bookkeeping)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macos_proxy_plan_holds_the_largest_frame_and_linux_keeps_defaults() {
        let mac = proxy_dgram_plan(Os::MacOs);
        // SO_SNDBUF caps the datagram on macOS; SO_RCVBUF must hold one with its address.
        assert!(mac.sndbuf.unwrap() >= MAX_FRAME);
        assert!(mac.rcvbuf.unwrap() >= MIN_DGRAM_RCVBUF);
        // Below macOS's refusal limit with the default kern.ipc.maxsockbuf (8 MiB).
        let xnu_limit = 8 * 1024 * 1024 * 2048 / (256 + 2048);
        assert!(mac.sndbuf.unwrap() <= xnu_limit && mac.rcvbuf.unwrap() <= xnu_limit);
        let linux = proxy_dgram_plan(Os::Linux);
        assert_eq!((linux.sndbuf, linux.rcvbuf), (None, None));
        assert_eq!(stream_plan(Os::MacOs).sndbuf, Some(16 << 20));
        assert_eq!(stream_plan(Os::Linux).sndbuf, None);
    }

    #[test]
    fn attempts_halve_down_to_the_floor() {
        assert_eq!(
            attempts(16 << 20, 0).len(),
            25,
            "down to 1 byte without a floor"
        );
        assert_eq!(
            attempts(16 << 20, 5 << 20),
            [16 << 20, 8 << 20, 5 << 20],
            "the floor itself is the last try"
        );
        assert_eq!(attempts(1 << 20, 1 << 18), [1 << 20, 1 << 19, 1 << 18]);
        assert_eq!(
            attempts(1000, 4096),
            [1000],
            "a request below the floor is tried alone"
        );
        assert_eq!(attempts(0, 0), [0]);
        assert_eq!(attempts(usize::MAX, usize::MAX), [usize::MAX]);
    }

    #[test]
    fn grants_say_what_was_accepted() {
        let tried = attempts(16 << 20, 1 << 20);
        assert_eq!(Grant::from_attempt(&tried, Some(0)), Grant::AsRequested);
        assert_eq!(
            Grant::from_attempt(&tried, Some(2)),
            Grant::Reduced { accepted: 4 << 20 }
        );
        assert_eq!(Grant::from_attempt(&tried, None), Grant::Refused);
        assert!(fits(65550, 65550) && !fits(65549, 65550) && fits(1, 0));
    }

    #[test]
    fn proxy_rcvbuf_floor_is_the_largest_frame_plus_overhead() {
        assert!(check_dgram_rcvbuf(MIN_DGRAM_RCVBUF).is_ok());
        let e = check_dgram_rcvbuf(8192).unwrap_err();
        assert!(
            e.contains("8192") && e.contains("65806") && e.contains("65550"),
            "{e}"
        );
        assert!(check_dgram_rcvbuf(0).is_err());
    }
}
