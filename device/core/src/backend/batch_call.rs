//! What the return value of a batched datagram call means: one reading shared by Linux's
//! `sendmmsg`/`recvmmsg` (`mmsg.rs`) and macOS's `sendmsg_x`/`recvmsg_x` (`msgx.rs`), so
//! the two cannot drift on what a full socket, a fault or a dead peer is.

use std::io;
use std::os::fd::RawFd;

use super::{socket_failure, BackendError, BatchWrite, ReadStatus, WriteStatus};

/// A send call that returned `r` (frames sent, or -1 with errno set): the batch's outcome,
/// or `None` when a signal interrupted it and it must be made again. Read errno right
/// after the call.
pub(super) fn send_outcome(
    fd: RawFd,
    call: &'static str,
    r: isize,
) -> Result<Option<BatchWrite>, BackendError> {
    if r > 0 {
        return Ok(Some(BatchWrite {
            sent: r as usize,
            stopped: None,
        }));
    }
    let err = if r == 0 {
        // Not documented for a non-empty batch; a full socket rather than a spin.
        io::Error::from_raw_os_error(libc::EAGAIN)
    } else {
        io::Error::last_os_error()
    };
    let errno = err.raw_os_error().unwrap_or(0);
    let stopped = match errno {
        libc::EINTR => return Ok(None),
        libc::ENOBUFS | libc::EAGAIN => WriteStatus::Blocked {
            errno,
            partial: false,
        },
        // Datagrams are atomic: the first frame faulted and sent nothing.
        libc::EFAULT => WriteStatus::Unreadable,
        _ => return Err(socket_failure(fd, call, err)),
    };
    Ok(Some(BatchWrite {
        sent: 0,
        stopped: Some(stopped),
    }))
}

/// A receive call for `asked` datagrams that returned `r`: pushes the status of each
/// datagram received (`status_of(i)`) onto `got`, then `WouldBlock` when the batch came
/// back short (the kernel stops at the first EAGAIN, and a datagram arriving later raises
/// a new edge-triggered event). `Ok(false)`: interrupted, make the call again.
pub(super) fn recv_outcome(
    fd: RawFd,
    call: &'static str,
    r: isize,
    asked: usize,
    status_of: impl Fn(usize) -> ReadStatus,
    got: &mut Vec<ReadStatus>,
) -> Result<bool, BackendError> {
    if r >= 0 {
        let k = r as usize;
        got.extend((0..k).map(status_of));
        if k < asked {
            got.push(ReadStatus::WouldBlock);
        }
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error().unwrap_or(0) {
        libc::EINTR => Ok(false),
        libc::EAGAIN => {
            got.push(ReadStatus::WouldBlock);
            Ok(true)
        }
        _ => Err(socket_failure(fd, call, err)),
    }
}
