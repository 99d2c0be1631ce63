//! ENOBUFS on demand: a backend wrapper that refuses sends without touching the socket, so
//! tests and the simulator produce backpressure episodes on any OS.

use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

use super::{
    write_first, Backend, BackendError, BatchWrite, DirectRead, FrameRef, Frames, ReadStatus,
    SyscallCounts, WriteStatus,
};
use crate::metrics::Metrics;

/// Which sends fail.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultConfig {
    /// 0 = never; otherwise every Nth new frame's send fails with ENOBUFS.
    pub enobufs_every: u32,
    /// Consecutive injected failures per hit (0 is treated as 1).
    pub enobufs_burst: u32,
}

impl FaultConfig {
    pub fn is_off(&self) -> bool {
        self.enobufs_every == 0
    }

    /// `backend` wrapped in [`Faulty`], or unchanged when no fault is configured (so the
    /// normal path has no wrapper at all).
    pub fn wrap(self, backend: Box<dyn Backend>, metrics: Arc<Metrics>) -> Box<dyn Backend> {
        self.wrap_with_room(backend, None, metrics)
    }

    /// [`FaultConfig::wrap`], plus macOS's datagram admission rule modelled with `room`
    /// bytes of receive space (see [`Faulty::with_room`]).
    pub fn wrap_with_room(
        self,
        backend: Box<dyn Backend>,
        room: Option<usize>,
        metrics: Arc<Metrics>,
    ) -> Box<dyn Backend> {
        if self.is_off() && room.is_none() {
            backend
        } else {
            Box::new(Faulty::new(backend, self, metrics).with_room(room))
        }
    }
}

/// Decides which sends fail. Counts sends of new frames: the retry that follows an
/// injected burst goes through uncounted, so `enobufs_every: 1` makes every frame fail
/// `burst` times and then pass, instead of failing forever.
#[derive(Debug, Default, Clone)]
struct Injector {
    cfg: FaultConfig,
    sends: u64,
    burst_left: u32,
    pass_next: bool,
}

impl Injector {
    /// Called before a send; true = pretend it failed with ENOBUFS.
    fn inject(&mut self) -> bool {
        if self.cfg.enobufs_every == 0 {
            return false;
        }
        if self.burst_left > 0 {
            self.burst_left -= 1;
            self.pass_next = self.burst_left == 0;
            return true;
        }
        if std::mem::take(&mut self.pass_next) {
            return false;
        }
        self.sends += 1;
        if self.sends % u64::from(self.cfg.enobufs_every) == 0 {
            self.burst_left = self.cfg.enobufs_burst.max(1) - 1;
            self.pass_next = self.burst_left == 0;
            return true;
        }
        false
    }

    /// How many of the next sends of frames pass before one is refused, without changing
    /// anything: a batch that long goes to the real backend whole.
    fn passes_before_hit(&self) -> usize {
        let every = u64::from(self.cfg.enobufs_every);
        if every == 0 {
            return usize::MAX;
        }
        if self.burst_left > 0 {
            return 0;
        }
        let counted = every - self.sends % every - 1;
        usize::from(self.pass_next) + counted as usize
    }
}

/// A backend whose sends fail with ENOBUFS as [`FaultConfig`] says; reads and every other
/// call go to `inner` unchanged. Each injected failure counts in `injected_faults`.
pub struct Faulty<B> {
    inner: B,
    injector: Injector,
    /// The inner backend wrote part of a frame and must be offered the rest: a stream
    /// cannot take a refusal in the middle of a frame, so nothing is injected until the
    /// frame is complete.
    mid_frame: bool,
    /// Bytes the modelled receiver holds (see [`Faulty::with_room`]).
    room: Option<usize>,
    metrics: Arc<Metrics>,
}

/// Bytes sent on `fd` and not read by the peer yet, as the kernel charges them (SIOCOUTQ:
/// buffer overhead included, as macOS's socket buffers count their mbufs); `None` where
/// the OS does not say.
fn unread(fd: RawFd) -> Option<usize> {
    #[cfg(target_os = "linux")]
    {
        let mut queued: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (== SIOCOUTQ) writes one int into `queued`, which lives across
        // the call.
        if unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued) } < 0 {
            return None;
        }
        usize::try_from(queued).ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = fd;
        None
    }
}

impl<B: Backend> Faulty<B> {
    pub fn new(inner: B, cfg: FaultConfig, metrics: Arc<Metrics>) -> Faulty<B> {
        Faulty {
            inner,
            injector: Injector {
                cfg,
                ..Injector::default()
            },
            mid_frame: false,
            room: None,
            metrics,
        }
    }

    /// Models macOS's admission rule for datagrams on a Unix socket: a send is refused
    /// with ENOBUFS (nothing sent) when the frame does not fit the free room, `room` minus
    /// the bytes the peer has not read yet, however much room there is. Linux admits a
    /// datagram while any send buffer is left, so without this its sockets never show the
    /// issue's case (17996 bytes free, 65226 needed). Linux only: where the unread bytes
    /// are unknown, nothing is refused. Frames then go one per call.
    pub fn with_room(mut self, room: Option<usize>) -> Faulty<B> {
        self.room = room;
        self
    }

    /// Whether a `len`-byte frame fits the modelled room now.
    fn fits_room(&self, len: usize) -> bool {
        let Some(room) = self.room else {
            return true;
        };
        unread(self.inner.raw_fd()).is_none_or(|q| q.saturating_add(len) <= room)
    }

    pub fn inner(&self) -> &B {
        &self.inner
    }
}

impl<B: Backend> Backend for Faulty<B> {
    fn raw_fd(&self) -> RawFd {
        self.inner.raw_fd()
    }

    fn default_retry_delay(&self) -> Option<Duration> {
        self.inner.default_retry_delay()
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn write_frame(&mut self, frame: FrameRef<'_>) -> Result<WriteStatus, BackendError> {
        if !self.mid_frame && (!self.fits_room(frame.len()) || self.injector.inject()) {
            self.metrics.injected_faults.inc();
            return Ok(WriteStatus::Blocked {
                errno: libc::ENOBUFS,
                partial: false,
            });
        }
        let status = self.inner.write_frame(frame);
        self.mid_frame = matches!(status, Ok(WriteStatus::Blocked { partial: true, .. }));
        status
    }

    fn batch_limit(&self) -> usize {
        self.inner.batch_limit()
    }

    fn whole_frames(&self) -> bool {
        self.inner.whole_frames()
    }

    /// The frames before the next injected refusal go to the inner backend as one batch;
    /// the refusal then stops the batch at that frame, as a full socket would. The injector
    /// advances once per frame tried, as with [`Backend::write_frame`].
    fn write_frames(&mut self, frames: Frames<'_>) -> Result<BatchWrite, BackendError> {
        let pass = self.injector.passes_before_hit().min(frames.len());
        if self.mid_frame || frames.len() <= 1 || pass == 0 || self.room.is_some() {
            return write_first(self, frames);
        }
        let out = self.inner.write_frames(frames.range(0..pass))?;
        let tried = out.sent + usize::from(out.stopped.is_some());
        for _ in 0..tried {
            let refused = self.injector.inject();
            debug_assert!(!refused, "passes_before_hit promised a pass");
        }
        self.mid_frame = matches!(
            out.stopped,
            Some(WriteStatus::Blocked { partial: true, .. })
        );
        Ok(out)
    }

    fn read_frame(&mut self, buf: &mut [u8]) -> Result<ReadStatus, BackendError> {
        self.inner.read_frame(buf)
    }

    fn read_frames(
        &mut self,
        bufs: &mut [Box<[u8]>],
        got: &mut Vec<ReadStatus>,
    ) -> Result<(), BackendError> {
        self.inner.read_frames(bufs, got)
    }

    unsafe fn read_direct(&mut self, dst: &[libc::iovec]) -> Result<DirectRead, BackendError> {
        // SAFETY: the caller's promise about dst, passed on.
        unsafe { self.inner.read_direct(dst) }
    }

    fn skip_direct(&mut self) {
        self.inner.skip_direct()
    }

    fn held_frame(&self, i: usize) -> Option<&[u8]> {
        self.inner.held_frame(i)
    }

    /// The inner backend's: an injected refusal is not a system call.
    fn syscalls(&self) -> SyscallCounts {
        self.inner.syscalls()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixDatagram;

    use super::*;
    use crate::backend::{BackendOptions, UnixGram};

    fn pattern(cfg: FaultConfig, n: usize) -> Vec<bool> {
        let mut i = Injector {
            cfg,
            ..Injector::default()
        };
        (0..n).map(|_| i.inject()).collect()
    }

    #[test]
    fn hits_every_nth_with_bursts() {
        let cfg = |every, burst| FaultConfig {
            enobufs_every: every,
            enobufs_burst: burst,
        };
        // Frames 1, 2 pass; frame 3 fails twice, its retry passes; frames 4, 5 pass; 6 fails...
        let want = [
            false, false, true, true, false, false, false, true, true, false,
        ];
        assert_eq!(pattern(cfg(3, 2), 10), want);
        assert_eq!(
            pattern(cfg(1, 1), 4),
            [true, false, true, false],
            "every frame fails once, then passes"
        );
        assert!(pattern(FaultConfig::default(), 100).iter().all(|f| !f));
    }

    /// The look-ahead agrees with what `inject` then does, from every state.
    #[test]
    fn passes_before_hit_predicts_inject() {
        for (every, burst) in [(1, 1), (1, 3), (2, 1), (3, 2), (5, 1), (0, 1)] {
            let mut i = Injector {
                cfg: FaultConfig {
                    enobufs_every: every,
                    enobufs_burst: burst,
                },
                ..Injector::default()
            };
            for _ in 0..40 {
                let p = i.passes_before_hit();
                let mut probe = i.clone();
                let passes = (0..20).take_while(|_| !probe.inject()).count();
                assert_eq!(p.min(20), passes, "every {every} burst {burst}");
                i.inject();
            }
        }
    }

    #[test]
    fn injected_enobufs_writes_nothing_and_counts() {
        let (a, peer) = UnixDatagram::pair().unwrap();
        peer.set_nonblocking(true).unwrap();
        let metrics = Arc::new(Metrics::new());
        let cfg = FaultConfig {
            enobufs_every: 2,
            enobufs_burst: 1,
        };
        let gram = UnixGram::from_socket(a, &BackendOptions::default()).unwrap();
        let mut b = Faulty::new(gram, cfg, metrics.clone());
        assert_eq!(b.write_bytes(b"one").unwrap(), WriteStatus::Sent);
        assert_eq!(
            b.write_bytes(b"two").unwrap(),
            WriteStatus::Blocked {
                errno: libc::ENOBUFS,
                partial: false
            }
        );
        assert_eq!(b.write_bytes(b"two").unwrap(), WriteStatus::Sent);
        let mut buf = [0u8; 8];
        assert_eq!(peer.recv(&mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"one");
        assert_eq!(peer.recv(&mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"two");
        assert!(peer.recv(&mut buf).is_err());
        assert_eq!(metrics.snapshot().injected_faults, 1);
        // Two sends reached the socket; the injected refusal made no system call.
        assert_eq!(b.syscalls().sends, 2);
    }

    /// Apart from the sends it refuses, a faulty backend is the backend it wraps: the
    /// methods the trait answers by default for backends without batches must not take
    /// the default here.
    #[test]
    fn answers_for_the_backend_it_wraps() {
        let (a, _peer) = UnixDatagram::pair().unwrap();
        let direct =
            UnixGram::from_socket(a.try_clone().unwrap(), &BackendOptions::default()).unwrap();
        let gram = UnixGram::from_socket(a, &BackendOptions::default()).unwrap();
        let b = Faulty::new(gram, FaultConfig::default(), Arc::new(Metrics::new()));
        assert_eq!(b.kind(), "unixgram");
        assert_eq!(b.batch_limit(), direct.batch_limit());
        assert_eq!(b.whole_frames(), direct.whole_frames());
        assert_eq!(b.default_retry_delay(), direct.default_retry_delay());
        assert_eq!(b.raw_fd(), b.inner().raw_fd());
    }

    /// A stream that wrote part of a frame gets the rest offered without a refusal in
    /// between, even when the injector would hit.
    #[test]
    fn never_interrupts_a_partly_written_frame() {
        struct Partial {
            calls: Vec<&'static str>,
            partial_next: bool,
        }
        impl Backend for Partial {
            fn raw_fd(&self) -> RawFd {
                -1
            }
            fn kind(&self) -> &'static str {
                "test"
            }
            fn write_frame(&mut self, _: FrameRef<'_>) -> Result<WriteStatus, BackendError> {
                if std::mem::take(&mut self.partial_next) {
                    self.calls.push("partial");
                    return Ok(WriteStatus::Blocked {
                        errno: libc::EAGAIN,
                        partial: true,
                    });
                }
                self.calls.push("sent");
                Ok(WriteStatus::Sent)
            }
            fn read_frame(&mut self, _: &mut [u8]) -> Result<ReadStatus, BackendError> {
                Ok(ReadStatus::WouldBlock)
            }
        }
        let inner = Partial {
            calls: Vec::new(),
            partial_next: true,
        };
        let cfg = FaultConfig {
            enobufs_every: 1,
            enobufs_burst: 1,
        };
        let mut b = Faulty::new(inner, cfg, Arc::new(Metrics::new()));
        let blocked = |partial| WriteStatus::Blocked {
            errno: if partial { libc::EAGAIN } else { libc::ENOBUFS },
            partial,
        };
        // Frame 1: injected, then partial, then (mid-frame: no injection) sent.
        assert_eq!(b.write_bytes(b"x").unwrap(), blocked(false));
        assert_eq!(b.write_bytes(b"x").unwrap(), blocked(true));
        assert_eq!(b.write_bytes(b"x").unwrap(), WriteStatus::Sent);
        // Frame 2: injected again, then sent.
        assert_eq!(b.write_bytes(b"y").unwrap(), blocked(false));
        assert_eq!(b.write_bytes(b"y").unwrap(), WriteStatus::Sent);
        assert_eq!(b.inner().calls, ["partial", "sent", "sent"]);
    }
}
