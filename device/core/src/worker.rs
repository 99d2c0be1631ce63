//! The device worker: one thread, one event loop.
// INTERFACE (fixed, front ends depend on it):
//   pub struct WorkerSetup {
//       pub mem: vm_memory::GuestMemoryAtomic<vm_memory::GuestMemoryMmap>,
//       pub rx: virtio_queue::Queue, pub tx: virtio_queue::Queue,  // configured and ready
//       pub rx_kick: Notifier, pub tx_kick: Notifier,
//       pub rx_call: Notifier, pub tx_call: Notifier,
//       pub features: u64,             // negotiated: EVENT_IDX, MRG_RXBUF read from here
//       pub backend: Box<dyn Backend>,
//       pub options: WorkerOptions,
//       pub metrics: Arc<Metrics>,
//   }
//   pub struct WorkerOptions { pub retry_delay: Option<Option<Duration>> /* override */,
//       pub lose_write_events: bool /* fault: ignore writable events while a frame is deferred */ } (Default)
//   pub fn spawn(setup: WorkerSetup) -> io::Result<WorkerHandle>
//   impl WorkerHandle { pub fn stop(&self); pub fn is_finished(&self) -> bool;
//       pub fn join(self) -> Result<WorkerExit, WorkerError>; pub fn metrics(&self) -> Arc<Metrics> }
//   pub struct WorkerExit { pub rx: Queue, pub tx: Queue, pub reason: ExitReason }
//   pub enum ExitReason { Stopped, PeerGone }
//   #[derive(thiserror::Error)] pub enum WorkerError { ... }
//
// The data path lives in [`NetDevice`] (no threads, no poller) so tests can drive it step
// by step; [`spawn`] wraps it in the event loop.
//
// TX: a chain's frame is sent straight from guest memory (one gathered sendmsg; a chain
// with too many pieces is copied into `tx_buf` first). A send that does not complete keeps
// the frame deferred: the chain is neither re-queued nor used, so the guest sees it
// outstanding (its buffers stay the frame's until the chain is used), and
// nothing else is sent before it (frames stay in order). A write event, a TX kick or the
// one-shot timer retries it. RX: a frame read from the proxy waits in `rx_buf` until the
// guest has buffers for it; until then the socket is not read (the proxy's queue is the
// buffer), and the next RX kick resumes.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

use crate::backend::{Backend, BackendError, ReadStatus, WriteStatus};
use crate::episode::Episode;
use crate::metrics::Metrics;
use crate::net::{
    self, Rejected, RxBuffers, RxOutcome, TxChain, FEATURE_EVENT_IDX, FEATURE_MRG_RXBUF, MAX_FRAME,
    RX_QUEUE, TX_QUEUE,
};
use crate::notify::Notifier;
use crate::poller::{self, Event, Interest, Poller};
use crate::probes::{self, DropReason};

pub struct WorkerSetup {
    pub mem: GuestMemoryAtomic<GuestMemoryMmap>,
    pub rx: Queue,
    pub tx: Queue,
    pub rx_kick: Notifier,
    pub tx_kick: Notifier,
    pub rx_call: Notifier,
    pub tx_call: Notifier,
    pub features: u64,
    pub backend: Box<dyn Backend>,
    pub options: WorkerOptions,
    pub metrics: Arc<Metrics>,
}

#[derive(Debug, Clone, Default)]
pub struct WorkerOptions {
    /// Overrides the backend's retry delay; `Some(None)` disables the retry timer.
    pub retry_delay: Option<Option<Duration>>,
    /// Fault: while a frame is deferred, ignore writable events (as macOS kqueue sometimes
    /// does), so only the timer or a guest kick can rescue the frame.
    pub lose_write_events: bool,
}

pub struct WorkerExit {
    pub rx: Queue,
    pub tx: Queue,
    pub reason: ExitReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// `WorkerHandle::stop` was called.
    Stopped,
    /// The proxy hung up or died; reported once at ERROR, frames in flight dropped.
    PeerGone,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("poller: {0}")]
    Poller(#[source] io::Error),
    #[error("notifier for {what}: {source}")]
    Notify {
        what: &'static str,
        source: io::Error,
    },
    #[error("virtio queue {queue}: {source}")]
    Queue {
        queue: u16,
        source: virtio_queue::Error,
    },
    #[error("backend: {0}")]
    Backend(#[from] BackendError),
    #[error("worker thread panicked: {0}")]
    Panicked(String),
}

/// The frame waiting for the proxy; its pieces are in `NetDevice::tx_chain`.
#[derive(Debug, Clone, Copy)]
struct Deferred {
    head: u16,
    len: usize,
    /// The frame is in `tx_buf` (it had more pieces than one send gathers).
    copied: bool,
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

/// The virtio-net data path without a thread: queues, backend, episode and RX state.
pub struct NetDevice {
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    rx: Queue,
    tx: Queue,
    rx_call: Notifier,
    tx_call: Notifier,
    mergeable: bool,
    backend: Box<dyn Backend>,
    fd: RawFd,
    metrics: Arc<Metrics>,
    tx_chain: TxChain,
    tx_buf: Vec<u8>,
    deferred: Option<Deferred>,
    episode: Episode,
    rx_buf: Box<[u8]>,
    rx_pending: Option<usize>,
    rx_bufs: RxBuffers,
    rx_waiting: bool,
    rejected: Vec<Rejected>,
    injected_seen: u64,
}

impl NetDevice {
    /// Takes the data-path parts of a setup (the kick fds and options stay with the loop).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mem: GuestMemoryAtomic<GuestMemoryMmap>,
        mut rx: Queue,
        mut tx: Queue,
        rx_call: Notifier,
        tx_call: Notifier,
        features: u64,
        backend: Box<dyn Backend>,
        metrics: Arc<Metrics>,
    ) -> NetDevice {
        let event_idx = features & FEATURE_EVENT_IDX != 0;
        rx.set_event_idx(event_idx);
        tx.set_event_idx(event_idx);
        let fd = backend.raw_fd();
        NetDevice {
            mem,
            rx,
            tx,
            rx_call,
            tx_call,
            mergeable: features & FEATURE_MRG_RXBUF != 0,
            backend,
            fd,
            metrics,
            tx_chain: TxChain::default(),
            tx_buf: Vec::new(),
            deferred: None,
            episode: Episode::default(),
            rx_buf: vec![0u8; MAX_FRAME].into_boxed_slice(),
            rx_pending: None,
            rx_bufs: RxBuffers::default(),
            rx_waiting: false,
            rejected: Vec::new(),
            injected_seen: 0,
        }
    }

    pub fn backend_fd(&self) -> RawFd {
        self.fd
    }

    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    pub fn retry_delay(&self) -> Option<Duration> {
        self.backend.retry_delay()
    }

    /// True while a TX frame waits for the proxy.
    pub fn tx_deferred(&self) -> bool {
        self.deferred.is_some()
    }

    /// True while an RX frame waits for guest buffers.
    pub fn rx_waiting(&self) -> bool {
        self.rx_waiting
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn into_queues(self) -> (Queue, Queue) {
        (self.rx, self.tx)
    }

    pub fn queues(&self) -> (&Queue, &Queue) {
        (&self.rx, &self.tx)
    }

    fn queue_err(queue: u16) -> impl Fn(virtio_queue::Error) -> WorkerError {
        move |source| WorkerError::Queue { queue, source }
    }

    /// Sends the deferred frame, then every chain the guest made available, until the
    /// proxy pushes back, the ring is empty or the batch is done.
    pub fn process_tx(&mut self) -> Result<TxPass, WorkerError> {
        let _span = tracing::debug_span!("tx_pass", fd = self.fd).entered();
        let mem = self.mem.memory();
        let mut done = 0;
        let mut used = false;
        let result = loop {
            if let Some(mut d) = self.deferred {
                let sent = if d.copied {
                    Ok(self.backend.write_bytes(&self.tx_buf))
                } else {
                    match self.tx_chain.gather(&*mem) {
                        Ok(Some(frame)) => Ok(self.backend.write_frame(&frame)),
                        Ok(None) => self.tx_chain.copy_to(&*mem, &mut self.tx_buf).map(|()| {
                            d.copied = true;
                            self.deferred = Some(d);
                            Metrics::inc(&self.metrics.tx_copied);
                            self.backend.write_bytes(&self.tx_buf)
                        }),
                        Err(error) => Err(error),
                    }
                };
                let status = match sent {
                    Ok(status) => status,
                    // The memory map changed under the deferred frame: it no longer lies
                    // inside guest memory.
                    Err(error) => {
                        self.deferred = None;
                        self.reject_tx(&mem, d.head, error)?;
                        used = true;
                        continue;
                    }
                };
                match status {
                    Ok(WriteStatus::Sent) => {
                        self.deferred = None;
                        self.tx
                            .add_used(&*mem, d.head, 0)
                            .map_err(Self::queue_err(TX_QUEUE))?;
                        used = true;
                        self.episode.on_success(self.fd, &self.metrics);
                        Metrics::inc(&self.metrics.tx_frames);
                        Metrics::add(&self.metrics.tx_bytes, d.len as u64);
                        probes::tx_frame(self.fd.into(), d.len as i64);
                        tracing::debug!(
                            fd = self.fd,
                            len = d.len,
                            "Written eth frame to proxy: {} bytes",
                            d.len
                        );
                        done += 1;
                    }
                    Ok(WriteStatus::Blocked { errno, partial }) => {
                        if partial {
                            Metrics::inc(&self.metrics.partial_writes);
                        }
                        self.episode
                            .on_failure(self.fd, d.len, errno, &self.metrics);
                        // EVENT_IDX: ask for a kick on the guest's next chain, so a kick
                        // can retry the frame (the ring's state itself is left alone).
                        self.tx
                            .enable_notification(&*mem)
                            .map_err(Self::queue_err(TX_QUEUE))?;
                        break TxPass::Blocked;
                    }
                    Err(e) => {
                        self.sync_injected();
                        return Err(e.into());
                    }
                }
                if done >= BATCH {
                    break TxPass::More;
                }
            }
            let Some(chain) = self.tx.pop_descriptor_chain(&*mem) else {
                // Re-arm kicks (EVENT_IDX: avail_event = next_avail); a chain that raced
                // in before that shows up here.
                if self
                    .tx
                    .enable_notification(&*mem)
                    .map_err(Self::queue_err(TX_QUEUE))?
                {
                    continue;
                }
                break TxPass::Idle;
            };
            let head = chain.head_index();
            match self.tx_chain.parse(&*mem, chain) {
                Ok(_) => {
                    self.deferred = Some(Deferred {
                        head,
                        len: self.tx_chain.len(),
                        copied: false,
                    })
                }
                Err(error) => {
                    self.reject_tx(&mem, head, error)?;
                    used = true;
                }
            }
        };
        self.sync_injected();
        if used {
            self.signal(TX_QUEUE)?;
        }
        Ok(result)
    }

    /// Reads frames from the proxy and writes them into guest RX buffers.
    pub fn process_rx(&mut self) -> Result<RxPass, WorkerError> {
        let _span = tracing::debug_span!("rx_pass", fd = self.fd).entered();
        let mem = self.mem.memory();
        let mut done = 0;
        let mut used = false;
        let result = loop {
            let len = match self.rx_pending {
                Some(len) => len,
                None => {
                    if done >= BATCH {
                        break RxPass::More;
                    }
                    match self.backend.read_frame(&mut self.rx_buf)? {
                        ReadStatus::WouldBlock => break RxPass::Idle,
                        ReadStatus::Oversize(len) => {
                            self.drop_frame(len, DropReason::RxOversize);
                            continue;
                        }
                        ReadStatus::Frame(0) => {
                            self.drop_frame(0, DropReason::RxEmpty);
                            continue;
                        }
                        ReadStatus::Frame(len) => {
                            Metrics::inc(&self.metrics.rx_frames);
                            Metrics::add(&self.metrics.rx_bytes, len as u64);
                            probes::rx_frame(self.fd.into(), len as i64);
                            tracing::debug!(
                                fd = self.fd,
                                len,
                                "Read eth frame from proxy: {len} bytes"
                            );
                            self.rx_pending = Some(len);
                            len
                        }
                    }
                }
            };
            let mut rejected = std::mem::take(&mut self.rejected);
            let outcome = self
                .rx_bufs
                .deliver(
                    &mut self.rx,
                    &*mem,
                    &self.rx_buf[..len],
                    self.mergeable,
                    &mut rejected,
                )
                .map_err(Self::queue_err(RX_QUEUE));
            used |= !rejected.is_empty();
            for r in rejected.drain(..) {
                self.reject(RX_QUEUE, r);
            }
            self.rejected = rejected;
            match outcome? {
                RxOutcome::Delivered { .. } => {
                    self.rx_pending = None;
                    self.rx_waiting = false;
                    used = true;
                    done += 1;
                }
                RxOutcome::NoRoom => {
                    self.rx_pending = None;
                    self.drop_frame(len, DropReason::RxNoRoom);
                }
                RxOutcome::NoBuffers => {
                    // Ask for a kick when buffers arrive; if some raced in, use them now.
                    if self
                        .rx
                        .enable_notification(&*mem)
                        .map_err(Self::queue_err(RX_QUEUE))?
                    {
                        continue;
                    }
                    if !self.rx_waiting {
                        self.rx_waiting = true;
                        Metrics::inc(&self.metrics.rx_no_buffers);
                        tracing::debug!(
                            fd = self.fd,
                            len,
                            "no RX buffers from the guest; frame waits for a kick"
                        );
                    }
                    break RxPass::NoBuffers;
                }
            }
        };
        if used {
            self.signal(RX_QUEUE)?;
        }
        Ok(result)
    }

    /// Returns a malformed TX chain to the guest unsent (the caller signals the used ring).
    fn reject_tx(
        &mut self,
        mem: &GuestMemoryMmap,
        head: u16,
        error: net::ChainError,
    ) -> Result<(), WorkerError> {
        self.tx
            .add_used(mem, head, 0)
            .map_err(Self::queue_err(TX_QUEUE))?;
        self.reject(TX_QUEUE, Rejected { head, error });
        self.drop_frame(0, DropReason::TxBadChain);
        Ok(())
    }

    fn reject(&mut self, queue: u16, r: Rejected) {
        Metrics::inc(&self.metrics.rejected_chains);
        let dir = if queue == TX_QUEUE { "TX" } else { "RX" };
        tracing::warn!(
            queue,
            head = r.head,
            "rejected {dir} descriptor chain: {}",
            r.error
        );
    }

    fn drop_frame(&mut self, len: usize, reason: DropReason) {
        Metrics::inc(self.metrics.drop_counter(reason));
        probes::frame_drop(self.fd.into(), len as i64, reason.code());
        tracing::debug!(fd = self.fd, len, reason = reason.name(), "dropped frame");
    }

    fn sync_injected(&mut self) {
        let n = self.backend.injected_faults();
        if n > self.injected_seen {
            Metrics::add(&self.metrics.injected_faults, n - self.injected_seen);
            self.injected_seen = n;
        }
    }

    /// Interrupts the guest if the queue's EVENT_IDX state (or its absence) asks for it.
    fn signal(&mut self, queue: u16) -> Result<(), WorkerError> {
        let mem = self.mem.memory();
        let (q, call) = if queue == RX_QUEUE {
            (&mut self.rx, &self.rx_call)
        } else {
            (&mut self.tx, &self.tx_call)
        };
        if q.needs_notification(&*mem)
            .map_err(Self::queue_err(queue))?
        {
            call.notify().map_err(|source| WorkerError::Notify {
                what: "interrupt",
                source,
            })?;
            probes::guest_irq(queue.into());
            Metrics::inc(&self.metrics.guest_irqs);
            tracing::debug!(queue, "interrupt: signal_used_queue");
        }
        Ok(())
    }

    /// The proxy went away: drop what was in flight, report once.
    fn peer_gone(&mut self, detail: &str) {
        if let Some(d) = self.deferred.take() {
            self.drop_frame(d.len, DropReason::PeerGone);
        }
        if let Some(len) = self.rx_pending.take() {
            self.drop_frame(len, DropReason::PeerGone);
        }
        self.metrics.peer_gone.store(true, Relaxed);
        tracing::error!(
            fd = self.fd,
            backend = self.backend.kind(),
            "proxy connection lost, device stops: {detail}"
        );
    }
}

pub struct WorkerHandle {
    thread: JoinHandle<Result<WorkerExit, WorkerError>>,
    stop: Notifier,
    metrics: Arc<Metrics>,
}

impl WorkerHandle {
    /// Asks the worker to stop; `join` returns its queues.
    pub fn stop(&self) {
        // A failing eventfd write leaves nothing better to do; the thread ends with the
        // process in that case.
        let _ = self.stop.notify();
    }

    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    pub fn join(self) -> Result<WorkerExit, WorkerError> {
        self.thread.join().unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(WorkerError::Panicked(msg))
        })
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }
}

const TOKEN_STOP: u64 = 0;
const TOKEN_RX_KICK: u64 = 1;
const TOKEN_TX_KICK: u64 = 2;
const TOKEN_BACKEND: u64 = 3;

/// Starts the worker thread.
pub fn spawn(setup: WorkerSetup) -> io::Result<WorkerHandle> {
    let stop = Notifier::new()?;
    let stop_w = stop.try_clone()?;
    let metrics = setup.metrics.clone();
    let thread = std::thread::Builder::new()
        .name("vnet-worker".into())
        .spawn(move || run(setup, stop_w))?;
    Ok(WorkerHandle {
        thread,
        stop,
        metrics,
    })
}

struct Loop {
    dev: NetDevice,
    poller: Poller,
    rx_kick: Notifier,
    tx_kick: Notifier,
    stop: Notifier,
    retry_delay: Option<Duration>,
    lose_write_events: bool,
}

fn run(setup: WorkerSetup, stop: Notifier) -> Result<WorkerExit, WorkerError> {
    let WorkerSetup {
        mem,
        rx,
        tx,
        rx_kick,
        tx_kick,
        rx_call,
        tx_call,
        features,
        backend,
        options,
        metrics,
    } = setup;
    let retry_delay = options.retry_delay.unwrap_or_else(|| backend.retry_delay());
    let dev = NetDevice::new(mem, rx, tx, rx_call, tx_call, features, backend, metrics);
    let mut poller = Poller::new().map_err(WorkerError::Poller)?;
    poller
        .add(stop.as_raw_fd(), TOKEN_STOP, Interest::Read)
        .map_err(WorkerError::Poller)?;
    poller
        .add(rx_kick.as_raw_fd(), TOKEN_RX_KICK, Interest::Read)
        .map_err(WorkerError::Poller)?;
    poller
        .add(tx_kick.as_raw_fd(), TOKEN_TX_KICK, Interest::Read)
        .map_err(WorkerError::Poller)?;
    poller
        .add(dev.backend_fd(), TOKEN_BACKEND, Interest::ReadWriteEdge)
        .map_err(WorkerError::Poller)?;
    tracing::info!(
        fd = dev.backend_fd(),
        backend = dev.backend.kind(),
        retry_delay_us = retry_delay.map(|d| d.as_micros() as u64),
        "device worker started"
    );
    let mut l = Loop {
        dev,
        poller,
        rx_kick,
        tx_kick,
        stop,
        retry_delay,
        lose_write_events: options.lose_write_events,
    };
    let reason = match l.event_loop() {
        Ok(reason) => reason,
        Err(WorkerError::Backend(BackendError::PeerGone { detail, .. })) => {
            l.dev.peer_gone(&detail);
            ExitReason::PeerGone
        }
        Err(e) => {
            tracing::error!("device worker failed: {e}");
            return Err(e);
        }
    };
    let (rx, tx) = l.dev.into_queues();
    Ok(WorkerExit { rx, tx, reason })
}

impl Loop {
    fn event_loop(&mut self) -> Result<ExitReason, WorkerError> {
        let fd = self.dev.backend_fd();
        let mut events: Vec<Event> = Vec::with_capacity(32);
        // Work queued before the worker started (or lost to a race) is picked up first.
        let (mut tx_work, mut rx_work) = (true, true);
        loop {
            if tx_work {
                tx_work = false;
                match self.dev.process_tx()? {
                    TxPass::Blocked => {
                        if let Some(d) = self.retry_delay {
                            self.poller.arm_timer(d).map_err(WorkerError::Poller)?;
                        }
                    }
                    TxPass::More => tx_work = true,
                    TxPass::Idle => {}
                }
            }
            if rx_work {
                rx_work = false;
                if self.dev.process_rx()? == RxPass::More {
                    rx_work = true;
                }
            }
            // Unfinished batches: look at new events without sleeping, then continue.
            let timeout = if tx_work || rx_work {
                Some(Duration::ZERO)
            } else {
                None
            };
            self.poller
                .wait(&mut events, timeout)
                .map_err(WorkerError::Poller)?;
            Metrics::inc(&self.dev.metrics.wakeups);
            let _turn = tracing::debug_span!("turn", events = events.len()).entered();
            let mut hup = false;
            for ev in &events {
                match ev.token {
                    TOKEN_STOP => {
                        self.stop.drain().map_err(|source| WorkerError::Notify {
                            what: "stop",
                            source,
                        })?;
                        tracing::info!(fd, "device worker stopping");
                        return Ok(ExitReason::Stopped);
                    }
                    TOKEN_RX_KICK => {
                        rx_work |= self.kick(RX_QUEUE)?;
                    }
                    TOKEN_TX_KICK => {
                        tx_work |= self.kick(TX_QUEUE)?;
                    }
                    TOKEN_BACKEND => {
                        if ev.readable {
                            Metrics::inc(&self.dev.metrics.read_events);
                            let data = ev.data;
                            probes::kevent_read_with(fd.into(), || {
                                data.unwrap_or_else(|| poller::bytes_waiting(fd))
                            });
                            if tracing::enabled!(tracing::Level::DEBUG) {
                                let d = data.unwrap_or_else(|| poller::bytes_waiting(fd));
                                tracing::debug!("kevent: READ fd={fd} data={d}");
                            }
                            rx_work = true;
                        }
                        if ev.writable && !(self.lose_write_events && self.dev.tx_deferred()) {
                            Metrics::inc(&self.dev.metrics.write_events);
                            let data = ev.data;
                            probes::kevent_write_with(fd.into(), || {
                                data.unwrap_or_else(|| poller::send_space(fd))
                            });
                            if tracing::enabled!(tracing::Level::DEBUG) {
                                let d = data.unwrap_or_else(|| poller::send_space(fd));
                                tracing::debug!("kevent: WRITE fd={fd} data={d}");
                            }
                            tx_work |= self.dev.tx_deferred();
                        }
                        if ev.error {
                            self.check_socket_error()?;
                        }
                        hup |= ev.hup;
                    }
                    _ if ev.is_timer() => {
                        let delay_us = self.retry_delay.map_or(0, |d| d.as_micros() as i64);
                        Metrics::inc(&self.dev.metrics.timer_fired);
                        probes::timer_fired(delay_us);
                        tracing::debug!("kevent: TIMER delay_us={delay_us}");
                        tx_work |= self.dev.tx_deferred();
                    }
                    _ => {}
                }
            }
            if hup {
                // Frames the proxy sent before hanging up are still readable: take them
                // (a stream read then reports the close itself), then stop.
                if !self.dev.rx_waiting() {
                    self.dev.process_rx()?;
                }
                return Err(BackendError::PeerGone {
                    fd,
                    detail: "the proxy hung up (poller reported HUP)".into(),
                }
                .into());
            }
        }
    }

    /// Drains a kick fd; true when the guest really kicked.
    fn kick(&mut self, queue: u16) -> Result<bool, WorkerError> {
        let n = if queue == RX_QUEUE {
            &self.rx_kick
        } else {
            &self.tx_kick
        };
        let count = n.drain().map_err(|source| WorkerError::Notify {
            what: "kick",
            source,
        })?;
        if count == 0 {
            return Ok(false);
        }
        probes::guest_kick(queue.into());
        Metrics::inc(&self.dev.metrics.guest_kicks);
        tracing::debug!(queue, "guest kick");
        Ok(true)
    }

    fn check_socket_error(&mut self) -> Result<(), WorkerError> {
        let fd = self.dev.backend_fd();
        let err =
            crate::backend::sockopt_int(fd, libc::SO_ERROR).map_err(|source| BackendError::Io {
                op: "getsockopt(SO_ERROR)",
                fd,
                source,
            })?;
        if err == 0 {
            return Ok(());
        }
        let source = io::Error::from_raw_os_error(err as i32);
        if crate::backend::is_peer_gone(err as i32) {
            return Err(BackendError::PeerGone {
                fd,
                detail: format!("socket error: {source}"),
            }
            .into());
        }
        Err(BackendError::Io {
            op: "socket error",
            fd,
            source,
        }
        .into())
    }
}
