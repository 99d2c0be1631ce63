//! Proxy backends behind one trait: [`connect`] turns a [`BackendSpec`] (parsed from
//! `unixgram:/path` or `unixstream:/path`) into a [`Backend`] the worker drives;
//! [`Faulty`] wraps any of them to inject ENOBUFS.

#[cfg(any(target_os = "linux", target_os = "macos"))]
mod batch_call;
mod faulty;
mod forward;
#[cfg(target_os = "linux")]
mod mmsg;
#[cfg(target_os = "macos")]
mod msgx;
mod stream_tx;
pub mod unixgram;
pub mod unixstream;

use std::io;
use std::os::fd::{BorrowedFd, RawFd};

use crate::bufsize::fits;
use crate::sockopt::{request_sock_buf, set_no_sigpipe, SockBuf};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

pub use crate::frame::{FrameRef, Frames, TxFrame, TxList};
pub use faulty::{FaultConfig, Faulty};
pub use forward::Forward;
pub use unixgram::UnixGram;
pub use unixstream::UnixStreamBackend;

/// Where the proxy listens and how frames are framed on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendSpec {
    /// One frame per datagram (gvproxy, vmnet-helper, vfkit protocol).
    UnixGram(PathBuf),
    /// 4-byte big-endian length before each frame (passt, socket_vmnet, QEMU stream).
    UnixStream(PathBuf),
}

impl BackendSpec {
    pub fn path(&self) -> &std::path::Path {
        match self {
            BackendSpec::UnixGram(p) | BackendSpec::UnixStream(p) => p,
        }
    }
}

impl std::fmt::Display for BackendSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendSpec::UnixGram(p) => write!(f, "unixgram:{}", p.display()),
            BackendSpec::UnixStream(p) => write!(f, "unixstream:{}", p.display()),
        }
    }
}

impl FromStr for BackendSpec {
    type Err = BackendError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BackendError::BadSpec(s.to_string());
        let (kind, path) = s.split_once(':').ok_or_else(bad)?;
        if path.is_empty() {
            return Err(bad());
        }
        match kind {
            "unixgram" => Ok(BackendSpec::UnixGram(path.into())),
            "unixstream" => Ok(BackendSpec::UnixStream(path.into())),
            _ => Err(bad()),
        }
    }
}

/// How to set up the proxy's socket.
#[derive(Debug, Clone, Default)]
pub struct BackendOptions {
    /// Send the 4-byte `VFKT` datagram after connecting (vfkit protocol, unixgram only).
    pub vfkit: bool,
    /// unixgram: the path to bind; default a fresh temp path, unlinked on drop.
    pub local_path: Option<PathBuf>,
    pub sndbuf: Option<usize>,
    pub rcvbuf: Option<usize>,
    /// macOS, unixgram: send and receive batches of datagrams with `sendmsg_x`/
    /// `recvmsg_x` (private XNU calls; type-checked for macOS, never run) instead of one
    /// datagram per call. Ignored elsewhere (Linux batches with `sendmmsg`/`recvmmsg`).
    pub macos_batch_syscalls: bool,
    /// One frame per send call on both backends, and one datagram per receive call
    /// (unixgram), as a VMM that never batches does (libkrun's net worker, most others):
    /// to see a proxy under the exact pattern of sends such a VMM makes, ENOBUFS
    /// included, and as the baseline of what batching saves under the same load. A stream
    /// read still takes what the socket holds, as any buffered stream reader's does.
    /// Overrides `macos_batch_syscalls`.
    pub one_frame_per_call: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("bad backend '{0}': expected unixgram:/path/to/socket or unixstream:/path/to/socket")]
    BadSpec(String),
    #[error("{op} {path}: {source}")]
    Setup {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("socket option {opt}: {source}")]
    SockOpt {
        opt: &'static str,
        source: io::Error,
    },
    /// The socket's buffer ended up smaller than a frame needs, whatever was asked for.
    #[error("{opt}: {requested} asked for, the kernel allows {obtained}, a frame needs {needed}")]
    BufferTooSmall {
        opt: &'static str,
        requested: usize,
        obtained: usize,
        needed: usize,
    },
    /// The proxy closed its end or died; the device cannot continue.
    #[error("proxy is gone (fd {fd}): {detail}")]
    PeerGone { fd: RawFd, detail: String },
    #[error("{op} on fd {fd}: {source}")]
    Io {
        op: &'static str,
        fd: RawFd,
        source: io::Error,
    },
    #[error("stream protocol error on fd {fd}: {detail}")]
    Protocol { fd: RawFd, detail: String },
}

/// Result of writing one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteStatus {
    /// The whole frame went out.
    Sent,
    /// The frame did not go out completely: it stays deferred and must be offered again,
    /// unchanged. `errno` is why (ENOBUFS, EAGAIN); `partial` says some bytes of it were
    /// written (stream sockets resume exactly there).
    Blocked { errno: i32, partial: bool },
    /// The kernel could not read the frame's memory (EFAULT: guest buffers inside a
    /// mapping but past the end of the file behind it). The frame is done with: nothing
    /// went out, or on a stream the rest of it as zeros, so the framing stays intact.
    Unreadable,
}

/// Result of reading one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadStatus {
    /// A frame of this many bytes is at the start of the caller's buffer.
    Frame(usize),
    /// Nothing (complete) to read now.
    WouldBlock,
    /// A frame larger than the buffer arrived and was discarded; its length. On macOS a
    /// datagram's is a lower bound (the buffer's length: its `recvmsg` cannot report more).
    Oversize(usize),
    /// A frame of this many bytes whose payload the caller reads straight into its own
    /// buffers with [`Backend::read_direct`] (or discards with [`Backend::skip_direct`]);
    /// nothing of it is in the caller's buffer. Only [`Backend::read_frames`] returns it,
    /// and only last.
    Direct(usize),
    /// A frame of this many bytes (at least one) left in the backend's own buffer instead
    /// of copied into the caller's: [`Backend::held_frame`] lends it, by the index of this
    /// status, until the next [`Backend::read_frames`] call. Only `read_frames` returns
    /// it; a wrapper must pass [`Backend::held_frame`] on to its inner backend.
    Held(usize),
}

/// How a [`Backend::read_direct`] call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectRead {
    /// The whole payload is in the caller's buffers.
    Done,
    /// Part of it is; the rest has not arrived. Call again (same buffers) when readable.
    WouldBlock,
}

/// Most frames one batched call carries (`sendmmsg`/`recvmmsg`); the device gives a
/// backend at most this many at a time.
pub const MAX_BATCH_FRAMES: usize = 32;

/// Most frame bytes one batched send carries (a single larger frame goes alone). Large
/// batches of large datagrams cost more than they save: on a 2-core Linux machine 16
/// frames of 64 KiB per `sendmmsg` ran 3.6x slower than single sends, 16 of 1514 B cut
/// the sender's CPU by about 10%.
pub const MAX_BATCH_BYTES: usize = 64 * 1024;

/// How a [`Backend::write_frames`] call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchWrite {
    /// Frames that went out whole, from the first.
    pub sent: usize,
    /// What happened to frame `sent` when it did not go out: `Blocked` or `Unreadable`
    /// (never `Sent`). `None`: it was not tried (the call ended early; offer it again).
    pub stopped: Option<WriteStatus>,
}

/// System calls a backend made on its socket's data path so far, whatever each returned
/// (EINTR and EAGAIN included): what batching is measured by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyscallCounts {
    pub sends: u64,
    pub recvs: u64,
}

/// A connection to a user-space network proxy. Non-blocking; the worker polls `raw_fd`
/// edge-triggered, so callers read and write until `WouldBlock`/`Blocked`.
///
/// A method added here is passed on by hand in two places, or handles take its default:
/// the blanket impl in `forward.rs` and [`Faulty`]'s impl.
pub trait Backend: Send {
    fn raw_fd(&self) -> RawFd;
    /// The retry timer this transport needs when the front end does not choose one (see
    /// [`crate::retry_timer::RetryTimer::BackendDefault`]); `None` = write events and
    /// kicks are enough.
    fn default_retry_delay(&self) -> Option<Duration> {
        None
    }
    /// "unixgram" or "unixstream", for logs.
    fn kind(&self) -> &'static str;
    /// Writes one frame (without any virtio header), gathered from wherever its pieces
    /// are. After `Blocked { partial: true }` the same frame must be passed again.
    fn write_frame(&mut self, frame: FrameRef<'_>) -> Result<WriteStatus, BackendError>;
    /// [`Backend::write_frame`] for a frame in one buffer.
    fn write_bytes(&mut self, frame: &[u8]) -> Result<WriteStatus, BackendError> {
        self.write_frame(TxFrame::from_slice(frame).as_frame())
    }
    /// Whether every send is all-or-nothing (datagrams): a refused frame left no bytes on
    /// the wire, so another frame may be sent before it (the `small-first` retry policy).
    /// A stream may hold part of a refused frame and must finish it first.
    fn whole_frames(&self) -> bool {
        false
    }
    /// Most frames one [`Backend::write_frames`] call can send: the device offers no more
    /// (the default, 1, for backends that send one frame per call).
    fn batch_limit(&self) -> usize {
        1
    }
    /// Writes `frames` in order, as many as the socket takes. A frame that does not go
    /// out stops the batch (nothing after it is tried): it is reported in
    /// [`BatchWrite::stopped`] and must be offered again first, exactly as after
    /// [`Backend::write_frame`]. An error means no frame of this call went out. The
    /// default sends one frame per call (macOS; streams).
    fn write_frames(&mut self, frames: Frames<'_>) -> Result<BatchWrite, BackendError> {
        write_first(self, frames)
    }
    /// Reads one frame into `buf` (which must hold [`crate::frame::MAX_FRAME`] bytes).
    fn read_frame(&mut self, buf: &mut [u8]) -> Result<ReadStatus, BackendError>;
    /// Reads up to `bufs.len()` frames, frame i into `bufs[i]` (each holding
    /// [`crate::frame::MAX_FRAME`] bytes), appending one status per buffer used to `got`
    /// (cleared first). `WouldBlock`, when pushed, is last: the socket had nothing more
    /// (a read failed with EAGAIN, or, on a stream, returned fewer bytes than asked for;
    /// either way, bytes that come later raise a readable event).
    /// At least one status is pushed, except by a call that made its share of reads
    /// without completing a frame (a stream discarding an oversize frame's body): it
    /// pushes none, and the socket may still hold bytes that no readable event will
    /// announce, so the caller calls again soon. The default reads one frame per call.
    fn read_frames(
        &mut self,
        bufs: &mut [Box<[u8]>],
        got: &mut Vec<ReadStatus>,
    ) -> Result<(), BackendError> {
        read_first(self, bufs, got)
    }
    /// Reads the payload of the frame the last [`Backend::read_frames`] announced as
    /// [`ReadStatus::Direct`] into `dst`, which covers exactly its length; after
    /// `WouldBlock`, call again with the same `dst` (it resumes where it stopped). The
    /// default, for backends that never announce one, is a protocol error.
    ///
    /// # Safety
    /// Every iovec of `dst` must be memory writable for the whole call.
    unsafe fn read_direct(&mut self, dst: &[libc::iovec]) -> Result<DirectRead, BackendError> {
        let _ = dst;
        Err(BackendError::Protocol {
            fd: self.raw_fd(),
            detail: "read_direct on a backend that announces no direct frames".into(),
        })
    }
    /// Discards the payload of the announced direct frame (the guest has no room for it).
    fn skip_direct(&mut self) {}
    /// The bytes of the frame the last [`Backend::read_frames`] call reported as
    /// [`ReadStatus::Held`] at index `i` of its statuses; `None` for any other index (and
    /// from backends that hold none).
    fn held_frame(&self, i: usize) -> Option<&[u8]> {
        let _ = i;
        None
    }
    /// Send and receive calls made so far (a backend that makes none reports zeros).
    fn syscalls(&self) -> SyscallCounts {
        SyscallCounts::default()
    }
}

/// [`Backend::write_frames`] for a backend that sends one frame per call: the first of
/// `frames` through [`Backend::write_frame`].
pub fn write_first<B: Backend + ?Sized>(
    backend: &mut B,
    frames: Frames<'_>,
) -> Result<BatchWrite, BackendError> {
    let Some(first) = frames.first() else {
        return Ok(BatchWrite {
            sent: 0,
            stopped: None,
        });
    };
    Ok(match backend.write_frame(first)? {
        WriteStatus::Sent => BatchWrite {
            sent: 1,
            stopped: None,
        },
        other => BatchWrite {
            sent: 0,
            stopped: Some(other),
        },
    })
}

/// [`Backend::read_frames`] for a backend that reads one frame per call: into the first
/// of `bufs`, through [`Backend::read_frame`].
pub fn read_first<B: Backend + ?Sized>(
    backend: &mut B,
    bufs: &mut [Box<[u8]>],
    got: &mut Vec<ReadStatus>,
) -> Result<(), BackendError> {
    got.clear();
    got.push(backend.read_frame(&mut bufs[0])?);
    Ok(())
}

/// The frame `read_frames` reported as [`ReadStatus::Held`] at index `i` of its
/// statuses. A backend that reports a held frame and lends none broke its contract: a
/// protocol error, never a silent loss.
pub fn lent_frame<B: Backend + ?Sized>(backend: &B, i: usize) -> Result<&[u8], BackendError> {
    backend.held_frame(i).ok_or_else(|| BackendError::Protocol {
        fd: backend.raw_fd(),
        detail: format!("frame {i} of a batch reported held, and none is"),
    })
}

/// Connects to the proxy named by `spec`.
pub fn connect(
    spec: &BackendSpec,
    opts: &BackendOptions,
) -> Result<Box<dyn Backend>, BackendError> {
    match spec {
        BackendSpec::UnixGram(p) => Ok(Box::new(UnixGram::connect(p, opts)?)),
        BackendSpec::UnixStream(p) => Ok(Box::new(UnixStreamBackend::connect(p, opts)?)),
    }
}

/// errno values that mean the proxy's end is gone.
pub(crate) fn is_peer_gone(errno: i32) -> bool {
    matches!(
        errno,
        libc::ECONNREFUSED | libc::ENOTCONN | libc::EPIPE | libc::ECONNRESET | libc::EDESTADDRREQ
    )
}

/// The error a failed send/recv on the proxy's socket becomes once the caller has dealt
/// with the errnos it can recover from (EINTR, EAGAIN, ...): `PeerGone` when the proxy's end
/// is gone (the device cannot continue), `Io` naming the call otherwise.
pub(crate) fn socket_failure(fd: RawFd, op: &'static str, err: io::Error) -> BackendError {
    if is_peer_gone(err.raw_os_error().unwrap_or(0)) {
        BackendError::PeerGone {
            fd,
            detail: format!("{op}: {err}"),
        }
    } else {
        BackendError::Io {
            op,
            fd,
            source: err,
        }
    }
}

/// Sizes one of the socket's buffers: `requested`, or less where the kernel refuses it (a
/// warning naming the size obtained). Fails only when what the socket ends up with is below
/// `floor`, the size a frame needs (0 for a stream, which carries frames in pieces).
pub(crate) fn size_buf(
    fd: BorrowedFd<'_>,
    which: SockBuf,
    requested: usize,
    floor: usize,
) -> Result<usize, BackendError> {
    let out =
        request_sock_buf(fd, which, requested, floor).map_err(|source| BackendError::SockOpt {
            opt: which.name(),
            source,
        })?;
    if !fits(out.obtained, floor) {
        return Err(BackendError::BufferTooSmall {
            opt: which.name(),
            requested,
            obtained: out.obtained,
            needed: floor,
        });
    }
    Ok(out.obtained)
}

pub(crate) fn no_sigpipe(fd: BorrowedFd<'_>) -> Result<(), BackendError> {
    set_no_sigpipe(fd).map_err(|source| BackendError::SockOpt {
        opt: "SO_NOSIGPIPE",
        source,
    })
}

#[cfg(target_os = "linux")]
pub(crate) const SEND_FLAGS: libc::c_int = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT;
#[cfg(target_os = "macos")]
pub(crate) const SEND_FLAGS: libc::c_int = libc::MSG_DONTWAIT;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs_and_names_accepted_forms() {
        assert_eq!(
            "unixgram:/tmp/a".parse::<BackendSpec>().unwrap(),
            BackendSpec::UnixGram("/tmp/a".into())
        );
        assert_eq!(
            "unixstream:/x".parse::<BackendSpec>().unwrap(),
            BackendSpec::UnixStream("/x".into())
        );
        for bad in ["tcp:/x", "unixgram:", "/tmp/a"] {
            let e = bad.parse::<BackendSpec>().unwrap_err().to_string();
            assert!(
                e.contains(bad) && e.contains("unixgram:/") && e.contains("unixstream:/"),
                "{e}"
            );
        }
        assert_eq!(
            BackendSpec::UnixGram("/a".into()).to_string(),
            "unixgram:/a"
        );
    }
}
