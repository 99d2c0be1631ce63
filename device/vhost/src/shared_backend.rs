//! One proxy connection for the daemon's whole life, lent to each worker in turn.
//!
//! The worker consumes its backend and does not hand it back when it stops, but QEMU stops
//! and restarts the rings whenever the guest resets the device. Reconnecting is not an
//! option (passt `-1` serves one connection, and a stream's partial frame would be lost),
//! so the connection is lent: a worker owns it outright while it runs (no lock per call,
//! and a stream frame still in the read buffer goes to the guest without a copy out of
//! it), and it comes back when the worker drops it, which `stop_worker`'s join waits for.

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use vnet_device::backend::{
    Backend, BackendError, BatchWrite, DirectRead, FrameRef, Frames, ReadStatus, SyscallCounts,
    WriteStatus,
};

/// The connection between workers; `None` while one has it.
type Slot = Arc<Mutex<Option<Box<dyn Backend>>>>;

pub struct SharedBackend {
    slot: Slot,
}

impl SharedBackend {
    pub fn new(backend: Box<dyn Backend>) -> Self {
        SharedBackend {
            slot: Arc::new(Mutex::new(Some(backend))),
        }
    }

    /// The connection for one worker, or `None` while another worker still has it.
    pub fn lend(&self) -> Option<LentBackend> {
        let backend = lock(&self.slot).take()?;
        Some(LentBackend {
            backend: Some(backend),
            slot: self.slot.clone(),
        })
    }
}

// A poisoned lock means a worker panicked while putting the connection back (it is put
// back whole either way): the connection is still the best state there is.
fn lock(slot: &Slot) -> MutexGuard<'_, Option<Box<dyn Backend>>> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

/// A worker's hold on the connection; dropping it (the worker ending, by return or panic)
/// puts the connection back for the next worker.
pub struct LentBackend {
    // `Some` until dropped.
    backend: Option<Box<dyn Backend>>,
    slot: Slot,
}

impl LentBackend {
    fn get(&self) -> &dyn Backend {
        self.backend
            .as_deref()
            .expect("a lent backend is there until dropped")
    }

    fn get_mut(&mut self) -> &mut dyn Backend {
        self.backend
            .as_deref_mut()
            .expect("a lent backend is there until dropped")
    }
}

impl Drop for LentBackend {
    fn drop(&mut self) {
        *lock(&self.slot) = self.backend.take();
    }
}

impl Backend for LentBackend {
    fn raw_fd(&self) -> RawFd {
        self.get().raw_fd()
    }

    fn default_retry_delay(&self) -> Option<Duration> {
        self.get().default_retry_delay()
    }

    fn kind(&self) -> &'static str {
        self.get().kind()
    }

    fn write_frame(&mut self, frame: FrameRef<'_>) -> Result<WriteStatus, BackendError> {
        self.get_mut().write_frame(frame)
    }

    // Every method is passed on, the batched ones and the counters included: a default
    // would send and read one frame per call and report no system calls.
    fn batch_limit(&self) -> usize {
        self.get().batch_limit()
    }

    fn whole_frames(&self) -> bool {
        self.get().whole_frames()
    }

    fn write_frames(&mut self, frames: Frames<'_>) -> Result<BatchWrite, BackendError> {
        self.get_mut().write_frames(frames)
    }

    fn read_frame(&mut self, buf: &mut [u8]) -> Result<ReadStatus, BackendError> {
        self.get_mut().read_frame(buf)
    }

    fn read_frames(
        &mut self,
        bufs: &mut [Box<[u8]>],
        got: &mut Vec<ReadStatus>,
    ) -> Result<(), BackendError> {
        self.get_mut().read_frames(bufs, got)
    }

    unsafe fn read_direct(&mut self, dst: &[libc::iovec]) -> Result<DirectRead, BackendError> {
        // SAFETY: the caller's promise about dst, passed on.
        unsafe { self.get_mut().read_direct(dst) }
    }

    fn skip_direct(&mut self) {
        self.get_mut().skip_direct()
    }

    fn held_frame(&self, i: usize) -> Option<&[u8]> {
        self.get().held_frame(i)
    }

    fn syscalls(&self) -> SyscallCounts {
        self.get().syscalls()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use vnet_device::backend::unixstream::UnixStreamBackend;
    use vnet_device::backend::BackendOptions;

    fn shared() -> (SharedBackend, UnixStream) {
        let (ours, peer) = UnixStream::pair().unwrap();
        let backend = UnixStreamBackend::from_socket(ours, &BackendOptions::default()).unwrap();
        (SharedBackend::new(Box::new(backend)), peer)
    }

    #[test]
    fn one_worker_at_a_time_and_the_connection_comes_back_on_drop() {
        let (shared, _peer) = shared();
        let first = shared.lend().expect("the connection is free");
        let fd = first.raw_fd();
        assert!(shared.lend().is_none(), "lent twice");
        drop(first);
        let second = shared
            .lend()
            .expect("back after the first worker dropped it");
        assert_eq!(second.raw_fd(), fd, "the same connection");
    }

    #[test]
    fn a_panicking_worker_still_gives_the_connection_back() {
        let (shared, _peer) = shared();
        let lent = shared.lend().unwrap();
        let r = std::thread::spawn(move || {
            let _held = lent;
            panic!("worker dies");
        })
        .join();
        assert!(r.is_err());
        assert!(
            shared.lend().is_some(),
            "the connection is back after the panic"
        );
    }

    #[test]
    fn a_held_stream_frame_is_lent_through_without_a_copy() {
        use std::io::Write;
        let (shared, mut peer) = shared();
        let mut lent = shared.lend().unwrap();
        for len in [100usize, 200] {
            peer.write_all(&(len as u32).to_be_bytes()).unwrap();
            peer.write_all(&vec![len as u8; len]).unwrap();
        }
        let mut bufs: Vec<Box<[u8]>> = (0..4).map(|_| vec![0u8; 2048].into()).collect();
        let mut got = Vec::new();
        lent.read_frames(&mut bufs, &mut got).unwrap();
        let held: Vec<usize> = got
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s, ReadStatus::Held(_)))
            .map(|(i, _)| i)
            .collect();
        assert!(
            !held.is_empty(),
            "the stream backend holds small frames: {got:?}"
        );
        for i in held {
            let frame = lent.held_frame(i).expect("lent through");
            assert!(frame.iter().all(|&b| b as usize == frame.len()));
        }
    }
}
