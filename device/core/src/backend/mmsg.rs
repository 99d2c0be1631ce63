//! Linux's batched datagram calls: `sendmmsg` of several frames straight from where their
//! bytes are, `recvmmsg` of several frames into the caller's buffers. One system call per
//! batch instead of one per frame; each datagram keeps its boundaries and its order.

use std::os::fd::RawFd;

use super::{
    batch_call, BackendError, BatchWrite, Frames, ReadStatus, MAX_BATCH_FRAMES, SEND_FLAGS,
};

/// An unused message slot: no name, no control data, no iovecs.
const EMPTY_MSG: libc::mmsghdr = libc::mmsghdr {
    msg_hdr: libc::msghdr {
        msg_name: std::ptr::null_mut(),
        msg_namelen: 0,
        msg_iov: std::ptr::null_mut(),
        msg_iovlen: 0,
        msg_control: std::ptr::null_mut(),
        msg_controllen: 0,
        msg_flags: 0,
    },
    msg_len: 0,
};

/// The message headers (and, for receiving, iovecs) of one batched call, kept from call
/// to call so a batch neither allocates nor clears a fresh array.
pub(super) struct Mmsg {
    msgs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
}

impl Default for Mmsg {
    fn default() -> Mmsg {
        Mmsg {
            msgs: vec![EMPTY_MSG; MAX_BATCH_FRAMES],
            iovs: vec![crate::frame::EMPTY_IOV; MAX_BATCH_FRAMES],
        }
    }
}

// SAFETY: the headers hold addresses only, set at the start of each call for that call;
// nothing reads through them between calls.
unsafe impl Send for Mmsg {}

impl Mmsg {
    /// Sends up to [`MAX_BATCH_FRAMES`] of `frames` in one `sendmmsg`; `sends` counts the calls.
    ///
    /// The kernel stops at the first datagram it refuses and returns how many went before it;
    /// the refusal itself is only reported when that datagram comes first in a call. So a short
    /// batch reports its stopping frame as not tried (`stopped: None`) and the caller's next
    /// call, which starts with it, gets its errno: the deferred frame's first failed send is a
    /// send of that frame alone, as the episode's definition wants.
    pub(super) fn send(
        &mut self,
        fd: RawFd,
        frames: Frames<'_>,
        sends: &mut u64,
    ) -> Result<BatchWrite, BackendError> {
        let n = frames.len().min(MAX_BATCH_FRAMES);
        let msgs = &mut self.msgs[..n];
        for (m, f) in msgs.iter_mut().zip(frames.iter()) {
            let iov = f.iovecs();
            m.msg_hdr.msg_iov = iov.as_ptr() as *mut libc::iovec;
            m.msg_hdr.msg_iovlen = iov.len() as _;
        }
        loop {
            *sends += 1;
            // SAFETY: the first n messages point at the frames' iovecs, each readable for the
            // call (the frames borrow the memory they describe); the kernel writes msg_len only.
            let r = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), n as libc::c_uint, SEND_FLAGS) };
            if let Some(out) = batch_call::send_outcome(fd, "sendmmsg", r as isize)? {
                return Ok(out);
            }
        }
    }

    /// Receives up to [`MAX_BATCH_FRAMES`] datagrams, datagram i into `bufs[i]`, in one
    /// `recvmmsg`; `recvs` counts the calls. A batch shorter than asked means the socket was
    /// empty when the kernel looked (it stops at the first EAGAIN), so `WouldBlock` follows
    /// it without another call; a datagram arriving later raises a new edge-triggered event.
    pub(super) fn recv(
        &mut self,
        fd: RawFd,
        bufs: &mut [Box<[u8]>],
        got: &mut Vec<ReadStatus>,
        recvs: &mut u64,
    ) -> Result<(), BackendError> {
        let n = bufs.len().min(MAX_BATCH_FRAMES);
        let msgs = &mut self.msgs[..n];
        for ((m, iov), b) in msgs
            .iter_mut()
            .zip(self.iovs.iter_mut())
            .zip(bufs.iter_mut())
        {
            *iov = libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            };
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
        }
        got.clear();
        loop {
            *recvs += 1;
            // SAFETY: the first n messages each point at one iovec covering one of `bufs`,
            // writable for the call; MSG_TRUNC makes msg_len the datagram's real length.
            let r = unsafe {
                libc::recvmmsg(
                    fd,
                    msgs.as_mut_ptr(),
                    n as libc::c_uint,
                    libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                    std::ptr::null_mut(),
                )
            };
            let status_of = |i: usize| {
                let m = &msgs[i];
                let len = m.msg_len as usize;
                if m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                    ReadStatus::Oversize(len)
                } else {
                    ReadStatus::Frame(len)
                }
            };
            if batch_call::recv_outcome(fd, "recvmmsg", r as isize, n, status_of, got)? {
                return Ok(());
            }
        }
    }
}
