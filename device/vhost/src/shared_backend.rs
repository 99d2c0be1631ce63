//! One proxy connection for the daemon's whole life, lent to each worker in turn.
//!
//! The worker consumes its backend and does not hand it back when it stops, but QEMU stops
//! and restarts the rings whenever the guest resets the device. Reconnecting is not an
//! option (passt `-1` serves one connection, and a stream's partial frame would be lost),
//! so each worker gets a handle on the same backend.

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use vnet_device::backend::{
    copy_held, Backend, BackendError, BatchWrite, DirectRead, FrameRef, Frames, ReadStatus,
    SyscallCounts, WriteStatus,
};

#[derive(Clone)]
pub struct SharedBackend {
    inner: Arc<Mutex<Box<dyn Backend>>>,
    // Fixed for the connection's life; kept here so the hot path does not lock for them.
    fd: RawFd,
    kind: &'static str,
    default_retry_delay: Option<Duration>,
}

impl SharedBackend {
    pub fn new(backend: Box<dyn Backend>) -> Self {
        SharedBackend {
            fd: backend.raw_fd(),
            kind: backend.kind(),
            default_retry_delay: backend.default_retry_delay(),
            inner: Arc::new(Mutex::new(backend)),
        }
    }

    // Only one worker runs at a time, so the lock is never contended; a poisoned lock
    // means a worker panicked mid-frame, and the connection state is still the best we have.
    fn lock(&self) -> MutexGuard<'_, Box<dyn Backend>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Backend for SharedBackend {
    fn raw_fd(&self) -> RawFd {
        self.fd
    }

    fn default_retry_delay(&self) -> Option<Duration> {
        self.default_retry_delay
    }

    fn kind(&self) -> &'static str {
        self.kind
    }

    fn write_frame(&mut self, frame: FrameRef<'_>) -> Result<WriteStatus, BackendError> {
        self.lock().write_frame(frame)
    }

    // The batched calls and the counters go to the shared backend too: without them
    // vnet-vhost would send and read one frame per call and report no system calls.
    fn batch_limit(&self) -> usize {
        self.lock().batch_limit()
    }

    fn write_frames(&mut self, frames: Frames<'_>) -> Result<BatchWrite, BackendError> {
        self.lock().write_frames(frames)
    }

    fn read_frame(&mut self, buf: &mut [u8]) -> Result<ReadStatus, BackendError> {
        self.lock().read_frame(buf)
    }

    fn read_frames(
        &mut self,
        bufs: &mut [Box<[u8]>],
        got: &mut Vec<ReadStatus>,
    ) -> Result<(), BackendError> {
        let mut inner = self.lock();
        inner.read_frames(bufs, got)?;
        // A frame the stream backend keeps in its buffer cannot be lent from behind the
        // lock: copied out, as before frames were held.
        copy_held(&**inner, bufs, got)
    }

    unsafe fn read_direct(&mut self, dst: &[libc::iovec]) -> Result<DirectRead, BackendError> {
        // SAFETY: the caller's promise about dst, passed on.
        unsafe { self.lock().read_direct(dst) }
    }

    fn skip_direct(&mut self) {
        self.lock().skip_direct()
    }

    fn syscalls(&self) -> SyscallCounts {
        self.lock().syscalls()
    }

    fn whole_frames(&self) -> bool {
        self.lock().whole_frames()
    }
}
