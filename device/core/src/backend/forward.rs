//! Backends that are another backend behind a handle: a box, or a connection a front end
//! lends to one worker at a time. Implementing [`Forward`] gives such a handle the whole
//! [`Backend`] trait, every call passed to the inner backend. A forwarding impl written
//! method by method silently takes the trait's default for any method it leaves out:
//! one frame per call, no held frames, no system calls counted. Each handle had its own
//! such list; now the one below is the only one (with [`super::Faulty`]'s, which
//! overrides the sends), so a method added to the trait is passed on in one place.

use std::os::fd::RawFd;
use std::time::Duration;

use super::{
    Backend, BackendError, BatchWrite, DirectRead, FrameRef, Frames, ReadStatus, SyscallCounts,
    WriteStatus,
};

/// A handle whose backend is `inner()`. A box is one, so wrappers such as
/// [`super::Faulty`] take a boxed backend as well as a concrete one.
pub trait Forward: Send {
    type Inner: Backend + ?Sized;
    fn inner(&self) -> &Self::Inner;
    fn inner_mut(&mut self) -> &mut Self::Inner;
}

impl<B: Backend + ?Sized> Forward for Box<B> {
    type Inner = B;
    fn inner(&self) -> &B {
        self
    }
    fn inner_mut(&mut self) -> &mut B {
        self
    }
}

impl<T: Forward> Backend for T {
    fn raw_fd(&self) -> RawFd {
        self.inner().raw_fd()
    }

    fn default_retry_delay(&self) -> Option<Duration> {
        self.inner().default_retry_delay()
    }

    fn kind(&self) -> &'static str {
        self.inner().kind()
    }

    fn write_frame(&mut self, frame: FrameRef<'_>) -> Result<WriteStatus, BackendError> {
        self.inner_mut().write_frame(frame)
    }

    fn write_bytes(&mut self, frame: &[u8]) -> Result<WriteStatus, BackendError> {
        self.inner_mut().write_bytes(frame)
    }

    fn whole_frames(&self) -> bool {
        self.inner().whole_frames()
    }

    fn batch_limit(&self) -> usize {
        self.inner().batch_limit()
    }

    fn write_frames(&mut self, frames: Frames<'_>) -> Result<BatchWrite, BackendError> {
        self.inner_mut().write_frames(frames)
    }

    fn read_frame(&mut self, buf: &mut [u8]) -> Result<ReadStatus, BackendError> {
        self.inner_mut().read_frame(buf)
    }

    fn read_frames(
        &mut self,
        bufs: &mut [Box<[u8]>],
        got: &mut Vec<ReadStatus>,
    ) -> Result<(), BackendError> {
        self.inner_mut().read_frames(bufs, got)
    }

    unsafe fn read_direct(&mut self, dst: &[libc::iovec]) -> Result<DirectRead, BackendError> {
        // SAFETY: the caller's promise about dst, passed on.
        unsafe { self.inner_mut().read_direct(dst) }
    }

    fn skip_direct(&mut self) {
        self.inner_mut().skip_direct()
    }

    fn held_frame(&self, i: usize) -> Option<&[u8]> {
        self.inner().held_frame(i)
    }

    fn syscalls(&self) -> SyscallCounts {
        self.inner().syscalls()
    }
}
