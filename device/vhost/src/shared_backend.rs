//! One proxy connection for the daemon's whole life, lent to each worker in turn.
//!
//! The worker consumes its backend and does not hand it back when it stops, but QEMU stops
//! and restarts the rings whenever the guest resets the device. Reconnecting is not an
//! option (passt `-1` serves one connection, and a stream's partial frame would be lost),
//! so the connection is lent: a worker owns it outright while it runs (no lock per call,
//! and a stream frame still in the read buffer goes to the guest without a copy out of
//! it), and it comes back when the worker drops it, which `stop_worker`'s join waits for.

use std::sync::{Arc, Mutex, MutexGuard};

use vnet_device::backend::{Backend, Forward};

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

// Every call goes to the lent connection (`Forward`), the batched ones and the counters
// included: a method left to its default would send and read one frame per call and
// report no system calls.
impl Forward for LentBackend {
    type Inner = dyn Backend;

    fn inner(&self) -> &Self::Inner {
        self.backend
            .as_deref()
            .expect("a lent backend is there until dropped")
    }

    fn inner_mut(&mut self) -> &mut Self::Inner {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use vnet_device::backend::unixstream::UnixStreamBackend;
    use vnet_device::backend::{BackendOptions, ReadStatus, UnixGram};

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

    /// The methods the trait gives a default answer the lent connection's own: a default
    /// would have the worker send one datagram per call, allow no `small-first`, and
    /// count no system calls.
    #[test]
    fn the_lent_connection_answers_for_itself() {
        use std::os::unix::net::UnixDatagram;
        let (ours, peer) = UnixDatagram::pair().unwrap();
        let direct =
            UnixGram::from_socket(ours.try_clone().unwrap(), &BackendOptions::default()).unwrap();
        let shared = SharedBackend::new(Box::new(
            UnixGram::from_socket(ours, &BackendOptions::default()).unwrap(),
        ));
        let mut lent = shared.lend().unwrap();
        assert_eq!(lent.kind(), "unixgram");
        assert_eq!(lent.batch_limit(), direct.batch_limit());
        assert!(lent.whole_frames());
        assert_eq!(lent.default_retry_delay(), direct.default_retry_delay());
        lent.write_bytes(b"one").unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(peer.recv(&mut buf).unwrap(), 3);
        assert_eq!(lent.syscalls().sends, 1, "the send was counted");
        peer.send(b"back").unwrap();
        let mut bufs: Vec<Box<[u8]>> = (0..2).map(|_| vec![0u8; 70000].into()).collect();
        let mut got = Vec::new();
        lent.read_frames(&mut bufs, &mut got).unwrap();
        assert!(matches!(got[0], ReadStatus::Frame(4)), "{got:?}");
        assert!(lent.syscalls().recvs >= 1, "the receive was counted");
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
