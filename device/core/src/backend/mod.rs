//! Proxy backends behind one trait.
// INTERFACE (fixed, front ends depend on it):
//   pub enum BackendSpec { UnixGram(PathBuf), UnixStream(PathBuf) }  + FromStr for
//       "unixgram:/path" and "unixstream:/path" (error names the accepted forms)
//   pub struct BackendOptions { pub vfkit: bool, pub retry_delay: Option<Option<Duration>>,
//       pub local_path: Option<PathBuf>, pub sndbuf: Option<usize>, pub rcvbuf: Option<usize>,
//       pub fault: FaultConfig }   (Default)
//   pub struct FaultConfig { pub enobufs_every: u32 /* 0 = never; inject ENOBUFS on every
//       Nth send */, pub enobufs_burst: u32 /* consecutive injected failures per hit */ } (Default)
//   pub fn connect(spec: &BackendSpec, opts: &BackendOptions) -> Result<Box<dyn Backend>, BackendError>
//   unixgram::UnixGram::from_socket(std::os::unix::net::UnixDatagram, &BackendOptions)
//   unixstream::UnixStreamBackend::from_socket(std::os::unix::net::UnixStream, &BackendOptions)
//   pub trait Backend: Send { fn raw_fd(&self) -> RawFd; fn retry_delay(&self) -> Option<Duration>;
//       ...read/write methods chosen by the device implementer... }

pub mod frame;
pub mod unixgram;
pub mod unixstream;

use std::io;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

pub use frame::TxFrame;
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

/// Fault injection for tests and the simulator: makes sends fail with ENOBUFS without
/// touching the socket, so episodes can be produced on demand on any OS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultConfig {
    /// 0 = never; otherwise every Nth real send attempt fails with ENOBUFS.
    pub enobufs_every: u32,
    /// Consecutive injected failures per hit (0 is treated as 1).
    pub enobufs_burst: u32,
}

#[derive(Debug, Clone, Default)]
pub struct BackendOptions {
    /// Send the 4-byte `VFKT` datagram after connecting (vfkit protocol, unixgram only).
    pub vfkit: bool,
    /// Overrides the backend's retry delay: `Some(None)` disables the retry timer.
    pub retry_delay: Option<Option<Duration>>,
    /// unixgram: the path to bind; default a fresh temp path, unlinked on drop.
    pub local_path: Option<PathBuf>,
    pub sndbuf: Option<usize>,
    pub rcvbuf: Option<usize>,
    pub fault: FaultConfig,
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
}

/// Result of reading one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadStatus {
    /// A frame of this many bytes is at the start of the caller's buffer.
    Frame(usize),
    /// Nothing (complete) to read now.
    WouldBlock,
    /// A frame larger than the buffer arrived and was discarded; its length.
    Oversize(usize),
}

/// A connection to a user-space network proxy. Non-blocking; the worker polls `raw_fd`
/// edge-triggered, so callers read and write until `WouldBlock`/`Blocked`.
pub trait Backend: Send {
    fn raw_fd(&self) -> RawFd;
    /// Delay of the one-shot retry timer after a send that wrote nothing; `None` = rely
    /// on write events and kicks only.
    fn retry_delay(&self) -> Option<Duration>;
    /// "unixgram" or "unixstream", for logs.
    fn kind(&self) -> &'static str;
    /// Writes one frame (without any virtio header), gathered from wherever its pieces
    /// are. After `Blocked { partial: true }` the same frame must be passed again.
    fn write_frame(&mut self, frame: &TxFrame<'_>) -> Result<WriteStatus, BackendError>;
    /// [`Backend::write_frame`] for a frame in one buffer.
    fn write_bytes(&mut self, frame: &[u8]) -> Result<WriteStatus, BackendError> {
        self.write_frame(&TxFrame::from_slice(frame))
    }
    /// Reads one frame into `buf` (which must hold [`crate::net::MAX_FRAME`] bytes).
    fn read_frame(&mut self, buf: &mut [u8]) -> Result<ReadStatus, BackendError>;
    /// Failures injected so far by the fault configuration.
    fn injected_faults(&self) -> u64 {
        0
    }
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

/// Decides which sends fail by injection. Counts sends of new frames: the retry that
/// follows an injected burst goes through uncounted, so `enobufs_every: 1` makes every
/// frame fail `burst` times and then pass, instead of failing forever.
#[derive(Debug, Default)]
pub(crate) struct FaultInjector {
    cfg: FaultConfig,
    sends: u64,
    burst_left: u32,
    pass_next: bool,
    pub(crate) injected: u64,
}

impl FaultInjector {
    pub(crate) fn new(cfg: FaultConfig) -> FaultInjector {
        FaultInjector {
            cfg,
            ..Default::default()
        }
    }

    /// Called before each send; true = pretend the send failed with ENOBUFS.
    pub(crate) fn inject(&mut self) -> bool {
        if self.cfg.enobufs_every == 0 {
            return false;
        }
        if self.burst_left > 0 {
            self.burst_left -= 1;
            self.injected += 1;
            self.pass_next = self.burst_left == 0;
            return true;
        }
        if std::mem::take(&mut self.pass_next) {
            return false;
        }
        self.sends += 1;
        if self.sends % u64::from(self.cfg.enobufs_every) == 0 {
            self.burst_left = self.cfg.enobufs_burst.max(1) - 1;
            self.injected += 1;
            self.pass_next = self.burst_left == 0;
            return true;
        }
        false
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

pub(crate) fn set_buf(
    fd: RawFd,
    opt: libc::c_int,
    name: &'static str,
    size: usize,
) -> Result<(), BackendError> {
    let v = size.min(i32::MAX as usize) as libc::c_int;
    // SAFETY: v is a valid int for setsockopt.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(BackendError::SockOpt {
            opt: name,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Current value of an int socket option (tests and logs).
pub fn sockopt_int(fd: RawFd, opt: libc::c_int) -> io::Result<i64> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: v and len are valid for getsockopt's writes.
    if unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(v.into())
}

/// macOS has no MSG_NOSIGNAL: a dead peer must not kill the process with SIGPIPE.
#[cfg(target_os = "macos")]
pub(crate) fn no_sigpipe(fd: RawFd) -> Result<(), BackendError> {
    set_buf(fd, libc::SO_NOSIGPIPE, "SO_NOSIGPIPE", 1)
}

#[cfg(target_os = "linux")]
pub(crate) fn no_sigpipe(_fd: RawFd) -> Result<(), BackendError> {
    Ok(())
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

    #[test]
    fn injector_hits_every_nth_with_bursts() {
        let mut f = FaultInjector::new(FaultConfig {
            enobufs_every: 3,
            enobufs_burst: 2,
        });
        let pattern: Vec<bool> = (0..10).map(|_| f.inject()).collect();
        // Frames 1, 2 pass; frame 3 fails twice, its retry passes; frames 4, 5 pass; 6 fails...
        let want = [
            false, false, true, true, false, false, false, true, true, false,
        ];
        assert_eq!(pattern, want);
        assert_eq!(f.injected, 4);
        let mut all = FaultInjector::new(FaultConfig {
            enobufs_every: 1,
            enobufs_burst: 1,
        });
        let pattern: Vec<bool> = (0..4).map(|_| all.inject()).collect();
        assert_eq!(
            pattern,
            [true, false, true, false],
            "every frame fails once, then passes"
        );
        let mut never = FaultInjector::new(FaultConfig::default());
        assert!((0..100).all(|_| !never.inject()));
    }
}
