//! Device events: each is one call that fans out to everything that reports it, the USDT
//! probe (and through it the in-process recorder), the counters and the tracing log, so a
//! call site cannot update one and forget another.

use std::os::fd::{BorrowedFd, RawFd};
use std::sync::Arc;

use crate::metrics::Metrics;
use crate::net::Rejected;
use crate::poller;
use crate::probes::{self, DropReason};
use crate::thread_usage::ThreadUsage;

/// One TX frame that went out, as [`DeviceEvents::frame_sent`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentFrame {
    /// Its length in bytes, as sent.
    pub len: usize,
    /// The device completed its checksum (the guest asked with NEEDS_CSUM).
    pub csum_completed: bool,
    /// A segment the device cut from a GSO chain: `Some` of the header bytes it carries
    /// beyond what the guest handed over (a copy of the chain's headers; 0 for the
    /// first segment, whose headers are the guest's own).
    pub gso_header_added: Option<usize>,
}

impl SentFrame {
    /// A frame the device sent as the guest handed it over.
    pub fn as_given(len: usize) -> SentFrame {
        SentFrame {
            len,
            csum_completed: false,
            gso_header_added: None,
        }
    }
}

/// The reporting side of one device: its proxy socket (the `fd` of probes and logs) and
/// its counters.
#[derive(Debug, Clone)]
pub struct DeviceEvents {
    fd: RawFd,
    metrics: Arc<Metrics>,
}

fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::ENOBUFS => "ENOBUFS",
        libc::EAGAIN => "EAGAIN",
        _ => "errno",
    }
}

impl DeviceEvents {
    pub fn new(fd: RawFd, metrics: Arc<Metrics>) -> DeviceEvents {
        DeviceEvents { fd, metrics }
    }

    pub fn fd(&self) -> RawFd {
        self.fd
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// A TX frame went out to the proxy: the probe, the frame and byte counters and those
    /// of what the device did to it on the way (a completed checksum, a GSO segment).
    #[inline]
    pub fn frame_sent(&self, f: SentFrame) {
        let len = f.len;
        self.metrics.tx_frames.inc();
        self.metrics.tx_bytes.add(len as u64);
        if f.csum_completed {
            self.metrics.tx_csum_offload.inc();
        }
        if let Some(added) = f.gso_header_added {
            self.metrics.tx_gso_segments.inc();
            if added > 0 {
                self.metrics.tx_gso_header_bytes.add(added as u64);
            }
        }
        probes::tx_frame(self.fd.into(), len as i64);
        tracing::debug!(fd = self.fd, len, "Written eth frame to proxy: {len} bytes");
    }

    /// A frame of `len` bytes came from the proxy (it may still wait for guest buffers).
    #[inline]
    pub fn frame_received(&self, len: usize) {
        self.metrics.rx_frames.inc();
        self.metrics.rx_bytes.add(len as u64);
        probes::rx_frame(self.fd.into(), len as i64);
        tracing::debug!(fd = self.fd, len, "Read eth frame from proxy: {len} bytes");
    }

    /// Every segment of a GSO chain went out (the chain goes back to the guest).
    #[inline]
    pub fn tx_gso_chain(&self) {
        self.metrics.tx_gso_chains.inc();
    }

    /// `segments` frames from the proxy went to the guest as one GSO frame, `hdr_bytes`
    /// shorter than they were together (their headers but the first's).
    #[inline]
    pub fn rx_coalesced(&self, segments: usize, hdr_bytes: usize) {
        self.metrics.rx_gso_frames.inc();
        self.metrics.rx_coalesced_segments.add(segments as u64);
        self.metrics.rx_coalesced_hdr_bytes.add(hdr_bytes as u64);
    }

    /// A frame was read straight into guest buffers.
    #[inline]
    pub fn rx_direct(&self) {
        self.metrics.rx_direct.inc();
    }

    pub fn frame_dropped(&self, len: usize, reason: DropReason) {
        self.metrics.drops.count(reason);
        probes::frame_drop(self.fd.into(), len as i64, reason.code());
        tracing::debug!(fd = self.fd, len, reason = reason.name(), "dropped frame");
    }

    /// A malformed guest chain went back to the guest unused (or, with a head that names no
    /// descriptor, was skipped). A TX chain's frame is dropped; a chain whose structure is
    /// broken is a guest driver error in either direction.
    pub fn chain_rejected(&self, queue: u16, r: Rejected) {
        self.metrics.rejected_chains.inc();
        if r.error.is_driver_error() {
            self.frame_dropped(0, DropReason::GuestDriverError);
        } else if queue == crate::net::TX_QUEUE {
            self.frame_dropped(0, DropReason::TxBadChain);
        }
        let dir = if queue == crate::net::TX_QUEUE {
            "TX"
        } else {
            "RX"
        };
        tracing::warn!(
            queue,
            head = r.head,
            "rejected {dir} descriptor chain: {}",
            r.error
        );
    }

    /// The backend made `sends` send and `recvs` receive calls since the last report.
    #[inline]
    pub fn syscalls(&self, sends: u64, recvs: u64) {
        if sends > 0 {
            self.metrics.tx_syscalls.add(sends);
        }
        if recvs > 0 {
            self.metrics.rx_syscalls.add(recvs);
        }
    }

    /// The worker thread is exiting, having used `usage` since it started.
    pub fn worker_exit(&self, usage: ThreadUsage) {
        self.metrics.worker_cpu_ns.add(usage.cpu_ns);
        self.metrics
            .worker_voluntary_switches
            .add(usage.voluntary_switches);
        self.metrics
            .worker_involuntary_switches
            .add(usage.involuntary_switches);
        tracing::info!(
            fd = self.fd,
            cpu_ns = usage.cpu_ns,
            voluntary_switches = usage.voluntary_switches,
            involuntary_switches = usage.involuntary_switches,
            "device worker usage"
        );
    }

    /// The driver published an avail index more than a ring ahead of the device's (or moved
    /// it backwards): nothing on that ring can be trusted until it is sane again.
    pub fn avail_index_corrupt(&self, queue: u16, avail: u16, next: u16, size: u16) {
        self.frame_dropped(0, DropReason::GuestDriverError);
        tracing::error!(
            queue,
            "guest driver error: avail index {avail} is {} entries past the device's {next} on a \
             {size}-entry ring; the queue waits for a sane index or a reset",
            avail.wrapping_sub(next)
        );
    }

    /// A TX frame was copied out of guest memory (too many pieces for one send).
    pub fn tx_copied(&self) {
        self.metrics.tx_copied.inc();
    }

    /// A TX frame went out ahead of the deferred frame (`small-first`).
    #[inline]
    pub fn frame_sent_ahead(&self, f: SentFrame) {
        self.metrics.tx_sent_ahead.inc();
        self.frame_sent(f);
    }

    /// A send trying to go ahead of the deferred frame was refused (`small-first`).
    pub fn ahead_refused(&self) {
        self.metrics.tx_ahead_refused.inc();
    }

    /// A stream send wrote part of a frame before the socket filled.
    pub fn partial_write(&self) {
        self.metrics.partial_writes.inc();
    }

    /// RX stopped: a `len`-byte frame waits for guest buffers.
    pub fn rx_no_buffers(&self, len: usize) {
        self.metrics.rx_no_buffers.inc();
        tracing::debug!(
            fd = self.fd,
            len,
            "no RX buffers from the guest; frame waits for a kick"
        );
    }

    /// The device interrupted the guest for `queue`'s used ring.
    #[inline]
    pub fn guest_irq(&self, queue: u16) {
        self.metrics.guest_irqs.inc();
        probes::guest_irq(queue.into());
        tracing::debug!(queue, "interrupt: signal_used_queue");
    }

    /// The guest kicked `queue`.
    #[inline]
    pub fn guest_kick(&self, queue: u16) {
        self.metrics.guest_kicks.inc();
        probes::guest_kick(queue.into());
        tracing::debug!(queue, "guest kick");
    }

    /// The event loop woke up (one return from epoll_wait/kevent).
    #[inline]
    pub fn wakeup(&self) {
        self.metrics.wakeups.inc();
    }

    /// The proxy's socket became readable; `data` is what the poller reported (kqueue's
    /// byte count), else the bytes waiting are asked for only if someone listens.
    #[inline]
    pub fn socket_readable(&self, data: Option<i64>) {
        let fd = self.fd;
        // SAFETY: `fd` is the backend socket, which outlives the worker and so this call.
        let sock = unsafe { BorrowedFd::borrow_raw(fd) };
        let data = || data.unwrap_or_else(|| poller::bytes_waiting(sock));
        self.metrics.read_events.inc();
        probes::kevent_read_with(fd.into(), data);
        if tracing::enabled!(tracing::Level::DEBUG) {
            tracing::debug!("kevent: READ fd={fd} data={}", data());
        }
    }

    /// The proxy's socket became writable; `data` as for [`DeviceEvents::socket_readable`]
    /// (the free send space).
    #[inline]
    pub fn socket_writable(&self, data: Option<i64>) {
        let fd = self.fd;
        // SAFETY: as in `socket_readable`.
        let sock = unsafe { BorrowedFd::borrow_raw(fd) };
        let data = || data.unwrap_or_else(|| poller::send_space(sock));
        self.metrics.write_events.inc();
        probes::kevent_write_with(fd.into(), data);
        if tracing::enabled!(tracing::Level::DEBUG) {
            tracing::debug!("kevent: WRITE fd={fd} data={}", data());
        }
    }

    /// The retry timer fired.
    pub fn timer_fired(&self, delay_us: i64) {
        self.metrics.timer_fired.inc();
        probes::timer_fired(delay_us);
        tracing::debug!("kevent: TIMER delay_us={delay_us}");
    }

    /// A frame's first failed send, at `start_ns`: opens an episode. Returns the span the
    /// episode's later log lines go into.
    pub fn episode_begin(&self, start_ns: u64, frame_len: usize, errno: i32) -> tracing::Span {
        let fd = self.fd;
        self.metrics.retries.inc();
        self.metrics.episodes.inc();
        self.metrics.open_episode.set(true);
        probes::enobufs_begin_at(start_ns, fd.into(), frame_len as i64, errno.into());
        let span = tracing::info_span!("episode", fd, frame_len);
        span.in_scope(|| {
            tracing::info!(fd, frame_len, errno, "write_frame: {}", errno_name(errno));
        });
        span
    }

    /// Another failed send of the episode's frame; `attempt` counts the first as 1.
    pub fn episode_retry(&self, span: &tracing::Span, attempt: u32, errno: i32) {
        let fd = self.fd;
        self.metrics.retries.inc();
        probes::enobufs_retry(fd.into(), attempt.into(), errno.into());
        span.in_scope(|| {
            tracing::debug!(
                fd,
                attempt,
                errno,
                "write_frame: {} again",
                errno_name(errno)
            );
        });
    }

    /// The episode's frame went out at `end_ns` after `retries` failed sends.
    pub fn episode_resolved(
        &self,
        span: &tracing::Span,
        end_ns: u64,
        retries: u32,
        wait_ns: u64,
        frame_len: usize,
        first_errno: i32,
    ) {
        let fd = self.fd;
        self.metrics.resolved.inc();
        self.metrics.total_wait_ns.add(wait_ns);
        self.metrics.max_wait_ns.raise_to(wait_ns);
        self.metrics.open_episode.set(false);
        probes::enobufs_resolved_at(
            end_ns,
            fd.into(),
            retries.into(),
            wait_ns as i64,
            frame_len as i64,
        );
        span.in_scope(|| {
            tracing::info!(
                fd,
                retries,
                wait_ns,
                frame_len,
                "write_frame: {} resolved after {} retries",
                errno_name(first_errno),
                retries
            );
        });
    }

    /// The episode's frame was dropped before it could be sent.
    pub fn episode_abandoned(&self) {
        self.metrics.open_episode.set(false);
        tracing::info!(
            fd = self.fd,
            "write_frame: episode ends unresolved, frame dropped"
        );
    }

    /// The proxy went away; the device stops. Reported once, at ERROR.
    pub fn peer_gone(&self, backend: &str, detail: &str) {
        self.metrics.peer_gone.set(true);
        tracing::error!(
            fd = self.fd,
            backend,
            "proxy connection lost, device stops: {detail}"
        );
    }
}
