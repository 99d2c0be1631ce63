//! Datagram backend: one Ethernet frame per datagram (gvproxy, vmnet-helper, vfkit).
//!
//! A send that the kernel refuses for lack of room (ENOBUFS on macOS, EAGAIN on Linux)
//! writes nothing; it is reported as `Blocked` so the worker defers the frame.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::bufsize::MIN_DGRAM_RCVBUF;
use crate::net::MAX_FRAME;
use crate::sockopt::SockBuf;

#[cfg(target_os = "linux")]
use super::mmsg::Mmsg;
#[cfg(target_os = "macos")]
use super::msgx::Msgx;
use super::Frames;
use super::{
    no_sigpipe, size_buf, socket_failure, Backend, BackendError, BackendOptions, FrameRef,
    ReadStatus, SyscallCounts, WriteStatus, SEND_FLAGS,
};

/// Receive buffer libkrun's unixgram backend (PR 556) sets.
pub const DEFAULT_RCVBUF: usize = 7 * 1024 * 1024;
/// Linux: a large send buffer. macOS: SO_SNDBUF only caps the datagram size, so libkrun
/// (PR 556) sets it to the largest frame.
#[cfg(target_os = "linux")]
pub const DEFAULT_SNDBUF: usize = 7 * 1024 * 1024;
#[cfg(target_os = "macos")]
pub const DEFAULT_SNDBUF: usize = 65550;
/// The retry timer a datagram socket needs: on macOS EVFILT_WRITE may never fire again
/// after ENOBUFS, so libkrun's unixgram backend (PR 556) retries after 50 µs; Linux's
/// epoll wakes the writer reliably.
pub const DEFAULT_RETRY_DELAY: Option<Duration> = if cfg!(target_os = "macos") {
    Some(Duration::from_micros(50))
} else {
    None
};

#[cfg(target_os = "linux")]
const RECV_FLAGS: libc::c_int = libc::MSG_DONTWAIT | libc::MSG_TRUNC;
#[cfg(target_os = "macos")]
const RECV_FLAGS: libc::c_int = libc::MSG_DONTWAIT;

/// The vfkit protocol's first datagram.
pub const VFKT_MAGIC: &[u8; 4] = b"VFKT";

pub struct UnixGram {
    sock: UnixDatagram,
    /// Our bound path, unlinked on drop (only when we created it).
    bound: Option<PathBuf>,
    calls: SyscallCounts,
    /// `BackendOptions::one_frame_per_call`: no `sendmmsg`/`recvmmsg`, one frame per
    /// call. (On macOS the option leaves `msgx` unset, which is the same.)
    #[cfg(target_os = "linux")]
    one_per_call: bool,
    /// The batched calls' message headers, reused from call to call.
    #[cfg(target_os = "linux")]
    mmsg: Mmsg,
    /// macOS: `sendmsg_x`/`recvmsg_x`, when asked for (`macos_batch_syscalls`).
    #[cfg(target_os = "macos")]
    msgx: Option<Msgx>,
}

fn default_local_path() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("vnet-{}-{n}.sock", std::process::id()))
}

impl UnixGram {
    /// Binds our own path (so the proxy can reply) and connects to the proxy's.
    pub fn connect(proxy: &Path, opts: &BackendOptions) -> Result<UnixGram, BackendError> {
        let local = opts.local_path.clone().unwrap_or_else(default_local_path);
        // A stale socket file from a crashed run would make bind fail.
        let _ = std::fs::remove_file(&local);
        let sock = UnixDatagram::bind(&local).map_err(|source| BackendError::Setup {
            op: "bind",
            path: local.clone(),
            source,
        })?;
        let mut me = UnixGram::from_socket(sock, opts)?;
        me.bound = Some(local);
        me.sock
            .connect(proxy)
            .map_err(|source| BackendError::Setup {
                op: "connect to proxy",
                path: proxy.to_path_buf(),
                source,
            })?;
        if opts.vfkit {
            me.send_magic()?;
        }
        Ok(me)
    }

    /// Wraps a socket that is already connected (a socketpair in tests and the simulator).
    /// Sends the `VFKT` datagram when `opts.vfkit` is set.
    pub fn from_socket(
        sock: UnixDatagram,
        opts: &BackendOptions,
    ) -> Result<UnixGram, BackendError> {
        sock.set_nonblocking(true)
            .map_err(|source| BackendError::SockOpt {
                opt: "O_NONBLOCK",
                source,
            })?;
        // The receive buffer must hold the proxy's largest frame with its address; the send
        // buffer caps the largest datagram we can send (EMSGSIZE above it).
        size_buf(
            sock.as_fd(),
            SockBuf::Recv,
            opts.rcvbuf.unwrap_or(DEFAULT_RCVBUF),
            MIN_DGRAM_RCVBUF,
        )?;
        size_buf(
            sock.as_fd(),
            SockBuf::Send,
            opts.sndbuf.unwrap_or(DEFAULT_SNDBUF),
            MAX_FRAME,
        )?;
        no_sigpipe(sock.as_fd())?;
        let me = UnixGram {
            sock,
            bound: None,
            calls: SyscallCounts::default(),
            #[cfg(target_os = "linux")]
            one_per_call: opts.one_frame_per_call,
            #[cfg(target_os = "linux")]
            mmsg: Mmsg::default(),
            #[cfg(target_os = "macos")]
            msgx: (opts.macos_batch_syscalls && !opts.one_frame_per_call).then(Msgx::default),
        };
        // connect() sends it itself after connecting; a connected pair can send now.
        if opts.vfkit && me.sock.peer_addr().is_ok() {
            me.send_magic()?;
        }
        Ok(me)
    }

    fn send_magic(&self) -> Result<(), BackendError> {
        // The proxy's queue is empty right after connecting, so this cannot block.
        self.sock
            .send(VFKT_MAGIC)
            .map_err(|source| BackendError::Io {
                op: "send VFKT",
                fd: self.raw_fd(),
                source,
            })?;
        Ok(())
    }

    pub fn local_path(&self) -> Option<&Path> {
        self.bound.as_deref()
    }
}

impl Drop for UnixGram {
    fn drop(&mut self) {
        if let Some(p) = &self.bound {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Backend for UnixGram {
    fn raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    fn default_retry_delay(&self) -> Option<Duration> {
        DEFAULT_RETRY_DELAY
    }

    fn kind(&self) -> &'static str {
        "unixgram"
    }

    fn syscalls(&self) -> SyscallCounts {
        self.calls
    }

    fn write_frame(&mut self, frame: FrameRef<'_>) -> Result<WriteStatus, BackendError> {
        let fd = self.raw_fd();
        let iov = frame.iovecs();
        // SAFETY: a zeroed msghdr is valid (no name, no control data).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = iov.len() as _;
        loop {
            self.calls.sends += 1;
            // SAFETY: msg points at the frame's iovecs, each readable for the call.
            let n = unsafe { libc::sendmsg(fd, &msg, SEND_FLAGS) };
            if n >= 0 {
                // Datagrams are atomic: a successful send carried the whole frame.
                return Ok(WriteStatus::Sent);
            }
            let err = io::Error::last_os_error();
            let errno = err.raw_os_error().unwrap_or(0);
            match errno {
                libc::EINTR => continue,
                libc::ENOBUFS | libc::EAGAIN => {
                    return Ok(WriteStatus::Blocked {
                        errno,
                        partial: false,
                    })
                }
                // Datagrams are atomic: a send that faulted sent nothing.
                libc::EFAULT => return Ok(WriteStatus::Unreadable),
                _ => return Err(socket_failure(fd, "send", err)),
            }
        }
    }

    /// One datagram per frame: the kernel takes all of it or none.
    fn whole_frames(&self) -> bool {
        true
    }

    #[cfg(target_os = "linux")]
    fn batch_limit(&self) -> usize {
        if self.one_per_call {
            1
        } else {
            super::MAX_BATCH_FRAMES
        }
    }

    /// Linux: one `sendmmsg` per batch.
    #[cfg(target_os = "linux")]
    fn write_frames(&mut self, frames: Frames<'_>) -> Result<super::BatchWrite, BackendError> {
        if frames.len() <= 1 {
            // One frame: the plain call, which costs the kernel less per message.
            return super::write_first(self, frames);
        }
        self.mmsg
            .send(self.sock.as_raw_fd(), frames, &mut self.calls.sends)
    }

    #[cfg(target_os = "macos")]
    fn batch_limit(&self) -> usize {
        if self.msgx.is_some() {
            super::MAX_BATCH_FRAMES
        } else {
            1
        }
    }

    /// macOS: one frame per call, or one `sendmsg_x` per batch when asked for.
    #[cfg(target_os = "macos")]
    fn write_frames(&mut self, frames: Frames<'_>) -> Result<super::BatchWrite, BackendError> {
        let fd = self.sock.as_raw_fd();
        match &mut self.msgx {
            Some(m) if frames.len() > 1 => m.send(fd, frames, &mut self.calls.sends),
            _ => super::write_first(self, frames),
        }
    }

    /// macOS: one frame per call, or one `recvmsg_x` per batch when asked for.
    #[cfg(target_os = "macos")]
    fn read_frames(
        &mut self,
        bufs: &mut [Box<[u8]>],
        got: &mut Vec<ReadStatus>,
    ) -> Result<(), BackendError> {
        let fd = self.sock.as_raw_fd();
        match &mut self.msgx {
            Some(m) => m.recv(fd, bufs, got, &mut self.calls.recvs),
            None => super::read_first(self, bufs, got),
        }
    }

    /// Linux: one `recvmmsg` per batch, or one `recvmsg` per frame when asked for.
    #[cfg(target_os = "linux")]
    fn read_frames(
        &mut self,
        bufs: &mut [Box<[u8]>],
        got: &mut Vec<ReadStatus>,
    ) -> Result<(), BackendError> {
        if self.one_per_call {
            return super::read_first(self, bufs, got);
        }
        self.mmsg
            .recv(self.sock.as_raw_fd(), bufs, got, &mut self.calls.recvs)
    }

    fn read_frame(&mut self, buf: &mut [u8]) -> Result<ReadStatus, BackendError> {
        let fd = self.raw_fd();
        loop {
            // The kernel flags a datagram cut to fit the buffer (MSG_TRUNC in msg_flags),
            // so an oversized frame is dropped and counted, never forwarded cut. Linux
            // also returns the real length when asked with the MSG_TRUNC flag; macOS
            // returns the bytes copied, so there the reported length is a lower bound
            // (asking SO_NREAD first would cost a system call on every frame).
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            // SAFETY: a zeroed msghdr is valid (no name, no control data).
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            self.calls.recvs += 1;
            // SAFETY: msg points at one iovec covering buf.
            let n = unsafe { libc::recvmsg(fd, &mut msg, RECV_FLAGS) };
            if n >= 0 {
                let n = n as usize;
                return Ok(if msg.msg_flags & libc::MSG_TRUNC != 0 {
                    ReadStatus::Oversize(n)
                } else {
                    ReadStatus::Frame(n)
                });
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error().unwrap_or(0) {
                libc::EINTR => continue,
                libc::EAGAIN => return Ok(ReadStatus::WouldBlock),
                _ => return Err(socket_failure(fd, "recv", err)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sockopt::{sock_buf, SockBuf};

    #[test]
    fn binds_connects_sends_vfkt_and_unlinks() {
        let dir = tempdir();
        let proxy_path = dir.join("proxy.sock");
        let proxy = UnixDatagram::bind(&proxy_path).unwrap();
        let local = dir.join("dev.sock");
        let opts = BackendOptions {
            vfkit: true,
            local_path: Some(local.clone()),
            ..Default::default()
        };
        let mut b = UnixGram::connect(&proxy_path, &opts).unwrap();
        assert!(local.exists());
        let mut buf = [0u8; 64];
        let (n, from) = proxy.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], VFKT_MAGIC);
        assert_eq!(from.as_pathname(), Some(local.as_path()));
        assert_eq!(b.write_bytes(&[7; 60]).unwrap(), WriteStatus::Sent);
        assert_eq!(proxy.recv(&mut buf).unwrap(), 60);
        proxy.send_to(&[9; 42], &local).unwrap();
        let mut big = vec![0u8; crate::frame::MAX_FRAME];
        assert_eq!(b.read_frame(&mut big).unwrap(), ReadStatus::Frame(42));
        assert_eq!(b.read_frame(&mut big).unwrap(), ReadStatus::WouldBlock);
        // The VFKT datagram is setup, not data path; the refused read counts too.
        assert_eq!(b.syscalls(), SyscallCounts { sends: 1, recvs: 2 });
        // Linux doubles the value it was given and caps it at wmem_max; either way it is set.
        assert!(sock_buf(b.sock.as_fd(), SockBuf::Send).unwrap() > 0);
        drop(b);
        assert!(!local.exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn oversize_datagram_is_reported_not_cut() {
        let (a, peer) = UnixDatagram::pair().unwrap();
        let mut b = UnixGram::from_socket(a, &BackendOptions::default()).unwrap();
        peer.send(&vec![1u8; 2000]).unwrap();
        let mut small = [0u8; 1000];
        let got = b.read_frame(&mut small).unwrap();
        // Linux's MSG_TRUNC input flag makes recvmsg return the datagram's true length;
        // macOS has no such flag and returns the bytes copied: a lower bound.
        #[cfg(target_os = "linux")]
        assert_eq!(got, ReadStatus::Oversize(2000));
        #[cfg(target_os = "macos")]
        assert_eq!(got, ReadStatus::Oversize(1000));
    }

    #[test]
    fn closed_peer_is_peer_gone() {
        let (a, peer) = UnixDatagram::pair().unwrap();
        let mut b = UnixGram::from_socket(a, &BackendOptions::default()).unwrap();
        drop(peer);
        let e = b.write_bytes(&[0; 60]).unwrap_err();
        assert!(matches!(e, BackendError::PeerGone { .. }), "{e}");
    }

    /// With the option the backend neither offers the device a batch nor reads more
    /// than one datagram per call; without it one call takes everything queued.
    #[cfg(target_os = "linux")]
    #[test]
    fn one_frame_per_call_sends_and_reads_one_datagram_per_call() {
        let read_all = |opts: &BackendOptions| {
            let (a, peer) = UnixDatagram::pair().unwrap();
            let mut b = UnixGram::from_socket(a, opts).unwrap();
            for len in [60, 61, 62] {
                peer.send(&vec![1u8; len]).unwrap();
            }
            let mut bufs: Vec<Box<[u8]>> = (0..4)
                .map(|_| vec![0u8; crate::frame::MAX_FRAME].into_boxed_slice())
                .collect();
            let (mut got, mut per_call) = (Vec::new(), Vec::new());
            loop {
                b.read_frames(&mut bufs, &mut got).unwrap();
                per_call.push(got.clone());
                if got.contains(&ReadStatus::WouldBlock) {
                    break;
                }
            }
            (b.batch_limit(), per_call, b.syscalls().recvs)
        };
        let one = BackendOptions {
            one_frame_per_call: true,
            ..Default::default()
        };
        let (limit, per_call, recvs) = read_all(&one);
        assert_eq!(limit, 1);
        assert_eq!(
            per_call,
            [60, 61, 62]
                .map(|n| vec![ReadStatus::Frame(n)])
                .into_iter()
                .chain([vec![ReadStatus::WouldBlock]])
                .collect::<Vec<_>>()
        );
        assert_eq!(recvs, 4);
        let (limit, per_call, recvs) = read_all(&BackendOptions::default());
        assert_eq!(limit, crate::backend::MAX_BATCH_FRAMES);
        assert_eq!(
            per_call[0][..3],
            [60, 61, 62].map(ReadStatus::Frame),
            "{per_call:?}"
        );
        assert!(recvs <= 2, "{recvs} calls for 3 datagrams");
    }

    pub(crate) fn tempdir() -> PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        let d = std::env::temp_dir().join(format!(
            "vnet-ut-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
