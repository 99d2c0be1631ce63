//! macOS's batched datagram calls, `sendmsg_x` and `recvmsg_x`: several datagrams per
//! system call, as Linux's `sendmmsg`/`recvmmsg` (see `mmsg.rs`). They are private XNU
//! calls (exported by libSystem, declared only in XNU's own `bsd/sys/socket.h`), so the
//! structure and the prototypes are declared here, from that header. libkrun's tracker
//! for batching says they "can double read and write performance".
//!
//! Opt-in (`BackendOptions::macos_batch_syscalls`, `--macos-batch-syscalls` on vnet-sim
//! and vnet-vhost), off by default: this code is type-checked for macOS and has never run
//! (there is no Mac here); the default sends and receives one datagram per call.

use std::os::fd::RawFd;

use super::{
    batch_call, BackendError, BatchWrite, Frames, ReadStatus, MAX_BATCH_FRAMES, SEND_FLAGS,
};

/// XNU's `struct msghdr_x` (bsd/sys/socket.h, private): a `struct msghdr` plus the length
/// of the datagram, which `recvmsg_x` fills in for each message.
#[repr(C)]
#[derive(Clone, Copy)]
struct MsghdrX {
    msg_name: *mut libc::c_void,
    msg_namelen: libc::socklen_t,
    msg_iov: *mut libc::iovec,
    msg_iovlen: libc::c_int,
    msg_control: *mut libc::c_void,
    msg_controllen: libc::socklen_t,
    msg_flags: libc::c_int,
    msg_datalen: libc::size_t,
}

extern "C" {
    /// Sends `cnt` datagrams; returns how many went out, or -1 when the first did not.
    fn sendmsg_x(
        s: libc::c_int,
        msgp: *const MsghdrX,
        cnt: libc::c_uint,
        flags: libc::c_int,
    ) -> libc::ssize_t;
    /// Receives up to `cnt` datagrams; returns how many, each one's length in its
    /// `msg_datalen`, or -1 when none could be.
    fn recvmsg_x(
        s: libc::c_int,
        msgp: *mut MsghdrX,
        cnt: libc::c_uint,
        flags: libc::c_int,
    ) -> libc::ssize_t;
}

/// An unused message slot: no name, no control data, no iovecs.
const EMPTY_MSG: MsghdrX = MsghdrX {
    msg_name: std::ptr::null_mut(),
    msg_namelen: 0,
    msg_iov: std::ptr::null_mut(),
    msg_iovlen: 0,
    msg_control: std::ptr::null_mut(),
    msg_controllen: 0,
    msg_flags: 0,
    msg_datalen: 0,
};

/// The message headers (and, for receiving, iovecs) of one batched call, reused.
pub(super) struct Msgx {
    msgs: Vec<MsghdrX>,
    iovs: Vec<libc::iovec>,
}

impl Default for Msgx {
    fn default() -> Msgx {
        Msgx {
            msgs: vec![EMPTY_MSG; MAX_BATCH_FRAMES],
            iovs: vec![crate::frame::EMPTY_IOV; MAX_BATCH_FRAMES],
        }
    }
}

// SAFETY: the headers hold addresses only, set at the start of each call for that call;
// nothing reads through them between calls.
unsafe impl Send for Msgx {}

impl Msgx {
    /// Sends up to [`MAX_BATCH_FRAMES`] of `frames` in one `sendmsg_x`. As with
    /// `sendmmsg`, a short count reports the stopping frame as not tried, so its refusal
    /// is met by the next call, which starts with it.
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
            *m = EMPTY_MSG;
            m.msg_iov = iov.as_ptr() as *mut libc::iovec;
            m.msg_iovlen = iov.len() as libc::c_int;
            m.msg_datalen = f.len();
        }
        loop {
            *sends += 1;
            // SAFETY: the first n headers point at the frames' iovecs, each readable for
            // the call; no name or control data.
            let r = unsafe { sendmsg_x(fd, msgs.as_ptr(), n as libc::c_uint, SEND_FLAGS) };
            if let Some(out) = batch_call::send_outcome(fd, "sendmsg_x", r)? {
                return Ok(out);
            }
        }
    }

    /// Receives up to [`MAX_BATCH_FRAMES`] datagrams, datagram i into `bufs[i]`, in one
    /// `recvmsg_x`. A datagram cut to fit its buffer (MSG_TRUNC) is reported oversize
    /// with the bytes received as its length (a lower bound, as `recvmsg` gives there).
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
            *m = EMPTY_MSG;
            m.msg_iov = iov;
            m.msg_iovlen = 1;
        }
        got.clear();
        loop {
            *recvs += 1;
            // SAFETY: the first n headers each point at one iovec covering one of `bufs`,
            // writable for the call; the kernel writes msg_datalen and msg_flags.
            let r =
                unsafe { recvmsg_x(fd, msgs.as_mut_ptr(), n as libc::c_uint, libc::MSG_DONTWAIT) };
            let status_of = |i: usize| {
                let m = &msgs[i];
                if m.msg_flags & libc::MSG_TRUNC != 0 {
                    ReadStatus::Oversize(m.msg_datalen)
                } else {
                    ReadStatus::Frame(m.msg_datalen)
                }
            };
            if batch_call::recv_outcome(fd, "recvmsg_x", r, n, status_of, got)? {
                return Ok(());
            }
        }
    }
}
