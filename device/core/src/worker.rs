//! The device worker: one thread, one event loop around a [`NetDevice`].
//!
//! Front ends hand [`spawn`] a [`WorkerSetup`] (guest memory, both queues configured and
//! ready, their kick and call notifiers, the negotiated features, a connected backend)
//! and get a [`WorkerHandle`]; [`WorkerHandle::join`] gives the queues back in a
//! [`WorkerExit`] so a front end can restart the device on them.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use virtio_queue::Queue;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::backend::{Backend, BackendError, FaultConfig};
use crate::device::{DeviceError, NetDevice, RxPass, TxPass};
use crate::events::DeviceEvents;
use crate::metrics::Metrics;
use crate::net::{RX_QUEUE, TX_QUEUE};
use crate::notify::Notifier;
use crate::poller::{Event, Interest, Poller};
use crate::retry_policy::RetryPolicy;
use crate::retry_timer::RetryTimer;
use crate::thread_usage::ThreadUsage;

/// Everything a worker runs on.
pub struct WorkerSetup {
    pub mem: GuestMemoryAtomic<GuestMemoryMmap>,
    /// Configured and ready.
    pub rx: Queue,
    pub tx: Queue,
    pub rx_kick: Notifier,
    pub tx_kick: Notifier,
    pub rx_call: Notifier,
    pub tx_call: Notifier,
    /// Negotiated features; EVENT_IDX, MRG_RXBUF, CSUM and GUEST_CSUM are read from here.
    pub features: u64,
    pub backend: Box<dyn Backend>,
    pub options: WorkerOptions,
    pub metrics: Arc<Metrics>,
}

#[derive(Debug, Clone, Default)]
pub struct WorkerOptions {
    /// Whether a deferred frame is also retried on a timer, and after how long.
    pub retry_timer: RetryTimer,
    /// When a deferred frame is retried and whether it is ever dropped.
    pub retry_policy: RetryPolicy,
    /// Fault: while a frame is deferred, ignore writable events (as macOS kqueue sometimes
    /// does), so only the timer or a guest kick can rescue the frame.
    pub lose_write_events: bool,
    /// Fault: sends refused with ENOBUFS (the backend runs inside [`crate::backend::Faulty`]).
    pub inject_enobufs: FaultConfig,
    /// Model of macOS's datagram admission: a send is refused with ENOBUFS when the frame
    /// does not fit this many bytes minus those the proxy has not read
    /// ([`crate::backend::Faulty::with_room`]; Linux only).
    pub proxy_room: Option<usize>,
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
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("poller: {0}")]
    Poller(#[source] io::Error),
    #[error("notifier for {what}: {source}")]
    Notify {
        what: &'static str,
        source: io::Error,
    },
    #[error("worker thread panicked: {0}")]
    Panicked(String),
}

impl From<BackendError> for WorkerError {
    fn from(e: BackendError) -> Self {
        WorkerError::Device(e.into())
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
    /// The device's reporting side, for the loop's own events (wake-ups, socket events,
    /// kicks, the timer).
    report: DeviceEvents,
    poller: Poller,
    rx_kick: Notifier,
    tx_kick: Notifier,
    stop: Notifier,
    /// The retry-timer setting resolved against the backend (`None`: no timer).
    retry_delay: Option<Duration>,
    retry_policy: RetryPolicy,
    /// The delay of the timer last armed, for the `timer_fired` probe.
    armed_delay: Option<Duration>,
    lose_write_events: bool,
    /// Whether the poller reports the backend socket writable; on while a frame is
    /// deferred (see `Poller::watch_writable`), with the low-water mark asked for.
    watching_writable: (bool, Option<usize>),
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
    let backend =
        options
            .inject_enobufs
            .wrap_with_room(backend, options.proxy_room, metrics.clone());
    let retry_delay = options.retry_timer.delay(backend.default_retry_delay());
    let mut dev = NetDevice::new(mem, rx, tx, rx_call, tx_call, features, backend, metrics);
    dev.set_max_failed_sends(options.retry_policy.max_failed_sends());
    dev.set_look_ahead(options.retry_policy.looks_ahead());
    let mut poller = Poller::new().map_err(WorkerError::Poller)?;
    poller
        .add(stop.as_fd(), TOKEN_STOP, Interest::Read)
        .map_err(WorkerError::Poller)?;
    poller
        .add(rx_kick.as_fd(), TOKEN_RX_KICK, Interest::Read)
        .map_err(WorkerError::Poller)?;
    poller
        .add(tx_kick.as_fd(), TOKEN_TX_KICK, Interest::Read)
        .map_err(WorkerError::Poller)?;
    // SAFETY: `dev` owns the backend socket and outlives this call, so the fd stays open
    // while borrowed.
    let backend_fd = unsafe { BorrowedFd::borrow_raw(dev.backend_fd()) };
    poller
        .add(backend_fd, TOKEN_BACKEND, Interest::ReadWriteEdge)
        .map_err(WorkerError::Poller)?;
    tracing::info!(
        fd = dev.backend_fd(),
        backend = dev.backend().kind(),
        retry_delay_us = retry_delay.map(|d| d.as_micros() as u64),
        retry_policy = %options.retry_policy,
        look_ahead = dev.tx_looks_ahead(),
        "device worker started"
    );
    let mut l = Loop {
        report: dev.events().clone(),
        dev,
        poller,
        rx_kick,
        tx_kick,
        stop,
        retry_delay,
        retry_policy: options.retry_policy,
        armed_delay: None,
        lose_write_events: options.lose_write_events,
        watching_writable: (true, None),
    };
    let ended = l.event_loop();
    l.report.worker_exit(ThreadUsage::now());
    let reason = match ended {
        Ok(reason) => reason,
        Err(WorkerError::Device(DeviceError::Backend(BackendError::PeerGone {
            detail, ..
        }))) => {
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
        // SAFETY: the backend socket lives in `self.dev` until this loop has returned, so
        // the fd stays open for every use of this borrow below.
        let sock = unsafe { BorrowedFd::borrow_raw(fd) };
        let mut events: Vec<Event> = Vec::with_capacity(32);
        // Work queued before the worker started (or lost to a race) is picked up first.
        let (mut tx_work, mut rx_work) = (true, true);
        loop {
            if tx_work {
                tx_work = false;
                match self.dev.process_tx()? {
                    TxPass::Blocked => {
                        let delay = self
                            .retry_policy
                            .delay(self.retry_delay, self.dev.tx_failures());
                        if let Some(d) = delay {
                            if self.poller.arm_timer(d).map_err(WorkerError::Poller)? {
                                self.armed_delay = Some(d);
                            }
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
            let deferred = self.dev.tx_deferred_len();
            let watch = (
                deferred.is_some(),
                deferred.and_then(|len| self.retry_policy.low_water(len)),
            );
            if watch != self.watching_writable {
                self.poller
                    .watch_writable(sock, TOKEN_BACKEND, watch.0, watch.1)
                    .map_err(WorkerError::Poller)?;
                self.watching_writable = watch;
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
            let report = &self.report;
            report.wakeup();
            let _turn = tracing::debug_span!("turn", events = events.len()).entered();
            let mut hup = false;
            let mut hup_error = None;
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
                        rx_work |= kicked(&self.rx_kick, RX_QUEUE, report)?;
                    }
                    TOKEN_TX_KICK => {
                        // `room` retries only when the frame fits: a kick then waits for
                        // the deferred frame like every chain behind it.
                        let retry = self.retry_policy.retry_on_kick() || !self.dev.tx_deferred();
                        tx_work |= kicked(&self.tx_kick, TX_QUEUE, report)? && retry;
                    }
                    TOKEN_BACKEND => {
                        if ev.readable {
                            report.socket_readable(ev.data);
                            rx_work = true;
                        }
                        if ev.writable && !(self.lose_write_events && self.dev.tx_deferred()) {
                            report.socket_writable(ev.data);
                            if let Some(len) = self.dev.tx_deferred_len() {
                                tx_work |= self.retry_on_write(ev.data, len);
                            }
                        }
                        if let Some(code) = ev.error_code {
                            // kqueue: EV_EOF carrying the socket's error. Frames already
                            // queued are taken first, like on a hang-up.
                            hup = true;
                            hup_error = Some(code);
                        } else if ev.error || (!self.dev.tx_deferred() && self.dev.rx_waiting()) {
                            // An error the event does not carry; or an event while neither
                            // direction would touch the socket (nothing deferred, RX parked
                            // for guest buffers), where a dead peer shows only in SO_ERROR:
                            // XNU wakes nobody when a connected datagram's peer dies.
                            self.check_socket_error()?;
                        }
                        hup |= ev.hup;
                    }
                    _ if ev.is_timer() => {
                        let delay_us = self.armed_delay.map_or(0, |d| d.as_micros() as i64);
                        report.timer_fired(delay_us);
                        tx_work |= self.dev.tx_deferred();
                    }
                    _ => {}
                }
            }
            if hup {
                // Frames the proxy sent before hanging up are still readable: take them
                // all, pass after pass (a stream read then reports the close itself), then
                // stop. One pass takes at most a batch: stopping after it lost the rest
                // without a count. The peer is gone, so what is left to read is bounded.
                // A stream pass whose read emptied the socket ends `Idle` without
                // reading again (see `UnixStreamBackend::read_frames`): one more pass
                // meets the close and reports how it left the stream; two `Idle` passes
                // in a row (datagrams have no end-of-stream) end it.
                let mut idle = false;
                while !self.dev.rx_waiting() {
                    match self.dev.process_rx()? {
                        RxPass::More => idle = false,
                        RxPass::Idle if !idle => idle = true,
                        _ => break,
                    }
                }
                return Err(match hup_error {
                    Some(code) => crate::backend::socket_failure(
                        fd,
                        "socket error (kqueue EV_EOF)",
                        io::Error::from_raw_os_error(code),
                    ),
                    None => BackendError::PeerGone {
                        fd,
                        detail: "the proxy hung up (poller reported HUP)".into(),
                    },
                }
                .into());
            }
        }
    }

    /// Whether a write event retries the deferred `frame_len`-byte frame; the free space
    /// is asked of the socket only when the policy looks at it.
    fn retry_on_write(&self, data: Option<i64>, frame_len: usize) -> bool {
        if self.retry_policy.low_water(frame_len).is_none() {
            return true;
        }
        let free = data.unwrap_or_else(|| {
            // SAFETY: the backend socket lives in `self.dev`, borrowed for this call only.
            let sock = unsafe { BorrowedFd::borrow_raw(self.dev.backend_fd()) };
            crate::poller::send_space(sock)
        });
        self.retry_policy.retry_on_write(free, frame_len)
    }

    fn check_socket_error(&self) -> Result<(), WorkerError> {
        let fd = self.dev.backend_fd();
        // SAFETY: the backend socket lives in `self.dev`, borrowed for this call only.
        let sock = unsafe { BorrowedFd::borrow_raw(fd) };
        let err = crate::sockopt::take_socket_error(sock).map_err(|source| BackendError::Io {
            op: "getsockopt(SO_ERROR)",
            fd,
            source,
        })?;
        if err == 0 {
            return Ok(());
        }
        let source = io::Error::from_raw_os_error(err);
        if crate::backend::is_peer_gone(err) {
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

/// Drains a kick notifier; true when the guest really kicked `queue`.
fn kicked(kick: &Notifier, queue: u16, report: &DeviceEvents) -> Result<bool, WorkerError> {
    let count = kick.drain().map_err(|source| WorkerError::Notify {
        what: "kick",
        source,
    })?;
    if count == 0 {
        return Ok(false);
    }
    report.guest_kick(queue);
    Ok(true)
}
