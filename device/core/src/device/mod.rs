//! The virtio-net data path without a thread: [`NetDevice`] owns guest memory, both
//! queues and the backend, and moves frames when asked. Tests step it directly; the
//! worker (`crate::worker`) drives it from its event loop.
//!
//! Each direction keeps its own state (`TxVirtio` in tx.rs, `RxVirtio` in rx.rs); what they
//! share is the backend, guest memory and the reporting side ([`DeviceEvents`]).

mod rx;
mod tx;
mod virtq;

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

use crate::backend::{Backend, BackendError, SyscallCounts};
use crate::events::DeviceEvents;
use crate::gro::Allow;
use crate::metrics::Metrics;
use crate::net::{
    TxOffloads, FEATURE_EVENT_IDX, FEATURE_GUEST_CSUM, FEATURE_GUEST_TSO4, FEATURE_GUEST_TSO6,
    FEATURE_MRG_RXBUF, RX_QUEUE, TX_QUEUE,
};
use crate::notify::Notifier;
use rx::RxVirtio;
use tx::TxVirtio;
use virtq::Virtq;

/// Why a device pass could not go on.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("notifier for interrupt: {source}")]
    Interrupt { source: io::Error },
    #[error("virtio queue {queue}: {source}")]
    Queue {
        queue: u16,
        source: virtio_queue::Error,
    },
    #[error("backend: {0}")]
    Backend(#[from] BackendError),
}

/// How a TX pass ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxPass {
    /// The guest has nothing more to send.
    Idle,
    /// A frame is deferred until the proxy has room.
    Blocked,
    /// Batch limit reached with more to do (fairness with RX).
    More,
}

/// How an RX pass ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxPass {
    /// The proxy has nothing more to read.
    Idle,
    /// A frame waits for guest buffers; the socket is not read until the next RX kick.
    NoBuffers,
    More,
}

/// Frames handled per pass before yielding to the other direction.
const BATCH: usize = 64;

/// The virtio-net data path: queues, backend, episode and RX state.
pub struct NetDevice {
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    backend: Box<dyn Backend>,
    events: DeviceEvents,
    tx: TxVirtio,
    rx: RxVirtio,
    /// The backend's system call counts already added to the metrics.
    syscalls_counted: SyscallCounts,
}

impl NetDevice {
    /// Takes the data-path parts of a setup (the kick fds and options stay with the loop).
    /// `features` are the negotiated ones: EVENT_IDX, MRG_RXBUF, CSUM (TX checksums the
    /// guest marks NEEDS_CSUM are completed), HOST_TSO4/6 (TX GSO chains are cut into
    /// segments), GUEST_CSUM (RX headers say DATA_VALID) and GUEST_TSO4/6 (TCP segments
    /// from the proxy are merged into GSO frames; only with GUEST_CSUM, which the spec
    /// requires for them) are read from them.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mem: GuestMemoryAtomic<GuestMemoryMmap>,
        rx: Queue,
        tx: Queue,
        rx_call: Notifier,
        tx_call: Notifier,
        features: u64,
        backend: Box<dyn Backend>,
        metrics: Arc<Metrics>,
    ) -> NetDevice {
        let event_idx = features & FEATURE_EVENT_IDX != 0;
        let guest_csum = features & FEATURE_GUEST_CSUM != 0;
        let gro = Allow {
            v4: guest_csum && features & FEATURE_GUEST_TSO4 != 0,
            v6: guest_csum && features & FEATURE_GUEST_TSO6 != 0,
        };
        let events = DeviceEvents::new(backend.raw_fd(), metrics);
        NetDevice {
            mem,
            backend,
            events,
            tx: TxVirtio::new(
                Virtq::new(tx, tx_call, TX_QUEUE, event_idx),
                TxOffloads::from_features(features),
            ),
            rx: RxVirtio::new(
                Virtq::new(rx, rx_call, RX_QUEUE, event_idx),
                features & FEATURE_MRG_RXBUF != 0,
                guest_csum,
                gro,
            ),
            syscalls_counted: SyscallCounts::default(),
        }
    }

    pub fn backend_fd(&self) -> RawFd {
        self.events.fd()
    }

    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    /// True while a TX frame waits for the proxy.
    pub fn tx_deferred(&self) -> bool {
        self.tx.deferred()
    }

    /// Length of the TX frame waiting for the proxy, if one waits.
    pub fn tx_deferred_len(&self) -> Option<usize> {
        self.tx.deferred_len()
    }

    /// Failed sends of the deferred TX frame so far (0 when none waits).
    pub fn tx_failures(&self) -> u32 {
        self.tx.failures()
    }

    /// Drop a deferred TX frame after this many failed sends (`None`: never drop).
    pub fn set_max_failed_sends(&mut self, max: Option<u32>) {
        self.tx.set_max_failed_sends(max);
    }

    /// `small-first`: let frames of other flows go ahead of a deferred frame. Only takes
    /// effect on a backend whose sends are all-or-nothing ([`Backend::whole_frames`]).
    pub fn set_look_ahead(&mut self, on: bool) {
        self.tx.set_look_ahead(on && self.backend.whole_frames());
    }

    /// `small-first` is active: frames of other flows may go ahead of a deferred frame.
    pub fn tx_looks_ahead(&self) -> bool {
        self.tx.looks_ahead()
    }

    /// True while an RX frame waits for guest buffers.
    pub fn rx_waiting(&self) -> bool {
        self.rx.waiting()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        self.events.metrics()
    }

    /// Where this device's events are reported (the event loop reports its own there).
    pub fn events(&self) -> &DeviceEvents {
        &self.events
    }

    pub fn into_queues(self) -> (Queue, Queue) {
        (self.rx.vq.queue, self.tx.vq.queue)
    }

    pub fn queues(&self) -> (&Queue, &Queue) {
        (&self.rx.vq.queue, &self.tx.vq.queue)
    }

    /// Sends the deferred frame, then every chain the guest made available, until the
    /// proxy pushes back, the ring is empty or the batch is done.
    pub fn process_tx(&mut self) -> Result<TxPass, DeviceError> {
        let _span = tracing::debug_span!("tx_pass", fd = self.events.fd()).entered();
        let mem = self.mem.memory();
        let pass = self.tx.process(&mem, &mut *self.backend, &self.events);
        self.count_syscalls();
        pass
    }

    /// Reads frames from the proxy and writes them into guest RX buffers.
    pub fn process_rx(&mut self) -> Result<RxPass, DeviceError> {
        let _span = tracing::debug_span!("rx_pass", fd = self.events.fd()).entered();
        let mem = self.mem.memory();
        let pass = self.rx.process(&mem, &mut *self.backend, &self.events);
        self.count_syscalls();
        pass
    }

    /// Adds the system calls the backend made since the last pass to the metrics (one
    /// update per pass, not per call: the backend keeps plain counts).
    fn count_syscalls(&mut self) {
        let now = self.backend.syscalls();
        let before = std::mem::replace(&mut self.syscalls_counted, now);
        self.events
            .syscalls(now.sends - before.sends, now.recvs - before.recvs);
    }

    /// The proxy went away: drop what was in flight, report once.
    pub fn peer_gone(&mut self, detail: &str) {
        self.tx.peer_gone(&self.events);
        self.rx.peer_gone(&mut *self.backend, &self.events);
        self.events.peer_gone(self.backend.kind(), detail);
    }
}
