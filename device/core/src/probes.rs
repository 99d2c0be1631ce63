//! The probe contract of `dtrace/vnet.d`: one function per probe.
//!
//! Each function fires the USDT probe (when the `probes` feature is on) and, when an
//! in-process [`Recorder`] is installed, records a trace CSV row. With no tracer attached
//! and no recorder, a probe site costs the USDT semaphore load plus one relaxed atomic load
//! (`benches/probe_cost.rs` measures it). With the `probes` feature off, the USDT half is
//! compiled out and only the recorder check remains, so runs without root still produce a
//! trace; the sim benchmark compares the two builds.

use nix::time::{clock_gettime, ClockId};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

pub use crate::recorder::Recorder;

#[cfg(feature = "probes")]
include!(concat!(env!("OUT_DIR"), "/vnet.rs"));

/// Why a frame was dropped: the `reason` argument of `frame_drop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[repr(i64)]
pub enum DropReason {
    /// 1: a frame from the proxy was larger than [`crate::frame::MAX_FRAME`] (datagram
    /// truncated, or a stream length prefix too large to be a frame).
    RxOversize = 1,
    /// 2: the guest's RX queue cannot hold the frame even when every buffer is used
    /// (without MRG_RXBUF: the single buffer is too small).
    RxNoRoom = 2,
    /// 3: a TX descriptor chain from the guest was malformed; its bytes are not sent.
    TxBadChain = 3,
    /// 4: a zero-length frame from the proxy (nothing to deliver).
    RxEmpty = 4,
    /// 5: the frame was still waiting for the proxy when the proxy went away.
    PeerGone = 5,
    /// 6: the guest driver made available a chain the ring cannot describe (TX or RX): a
    /// head index past the end of the ring, a chain that loops or whose `next` points past
    /// the descriptor table (also: NEXT still set on the last descriptor), an indirect
    /// descriptor (the device never offers INDIRECT_DESC), or TX buffers inside a memory
    /// region but past the end of what backs it (the send fails with EFAULT). The chain is
    /// returned to the guest with length 0 when its head is a real descriptor and never
    /// forwarded; `len` is 0. Valid chains after it keep flowing.
    GuestDriverError = 6,
    /// 7: `--retry-policy bounded:N` gave up on a deferred TX frame after its send failed
    /// N + 1 times (the first send and N retries). The episode the frame opened ends here,
    /// with this row instead of `enobufs_resolved`; `len` is the frame's. The chain goes back
    /// to the guest as used (length 0, as for every TX chain), so the guest sees what a NIC
    /// dropping on the wire shows it: nothing, and its transport retransmits.
    RetryExhausted = 7,
}

impl DropReason {
    pub const ALL: [DropReason; 7] = [
        DropReason::RxOversize,
        DropReason::RxNoRoom,
        DropReason::TxBadChain,
        DropReason::RxEmpty,
        DropReason::PeerGone,
        DropReason::GuestDriverError,
        DropReason::RetryExhausted,
    ];

    pub fn code(self) -> i64 {
        self as i64
    }

    pub fn name(self) -> &'static str {
        match self {
            DropReason::RxOversize => "rx_oversize",
            DropReason::RxNoRoom => "rx_no_room",
            DropReason::TxBadChain => "tx_bad_chain",
            DropReason::RxEmpty => "rx_empty",
            DropReason::PeerGone => "peer_gone",
            DropReason::GuestDriverError => "guest_driver_error",
            DropReason::RetryExhausted => "retry_exhausted",
        }
    }
}

/// The probe names, the trace row and which column each probe argument fills all come from
/// the trace schema crate (`dtrace/schema`), which the analyzer reads with and a test ties
/// to `dtrace/vnet.d`.
pub use vnet_trace_schema::{Probe, Row};

static RECORDING: AtomicBool = AtomicBool::new(false);
static RECORDER: Mutex<Option<Recorder>> = Mutex::new(None);

/// Calls `usdt::register_probes()`; call once at the start of each binary. (A no-op on
/// Linux's stapsdt backend, required on macOS/illumos.)
pub fn register() {
    #[cfg(feature = "probes")]
    if let Err(e) = usdt::register_probes() {
        tracing::warn!("registering USDT probes failed: {e}");
    }
}

/// Starts recording every probe firing of this process into `rec`, replacing any
/// recorder installed before (the old one is finished and flushed).
pub fn install_recorder(rec: Recorder) {
    let old = RECORDER
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .replace(rec);
    RECORDING.store(true, Ordering::Release);
    if let Some(old) = old {
        let _ = old.finish();
    }
}

/// Stops recording and hands the recorder back; call [`Recorder::finish`] to flush it.
pub fn take_recorder() -> Option<Recorder> {
    RECORDING.store(false, Ordering::Release);
    RECORDER.lock().unwrap_or_else(|e| e.into_inner()).take()
}

/// True while a recorder is installed.
#[inline(always)]
pub fn recording() -> bool {
    RECORDING.load(Ordering::Relaxed)
}

/// Records one firing of `probe` at `ts_ns` on this thread; `args` in `vnet.d` order (the
/// schema puts each in its column).
#[cold]
#[inline(never)]
fn record_at(ts_ns: u64, probe: Probe, args: &[i64]) {
    debug_assert_eq!(args.len(), probe.arg_columns().len(), "{}", probe.name());
    let row = Row::from_args(probe, ts_ns, current_tid(), args);
    if let Some(rec) = RECORDER.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        rec.write_row(&row);
    }
}

/// [`record_at`] now.
#[cold]
#[inline(never)]
fn record(probe: Probe, args: &[i64]) {
    record_at(mono_ns(), probe, args);
}

/// The clock of `ts_ns` and of episode wait times, chosen so recorder rows and the tracer's
/// compare directly: CLOCK_MONOTONIC on Linux (bpftrace's `nsecs`); CLOCK_UPTIME_RAW on
/// macOS, which like DTrace's `timestamp` (`mach_absolute_time`) stops while the machine
/// sleeps; macOS's CLOCK_MONOTONIC counts sleep and would drift from DTrace's rows.
#[cfg(target_os = "linux")]
pub const TRACE_CLOCK: ClockId = ClockId::CLOCK_MONOTONIC;
#[cfg(target_os = "macos")]
pub const TRACE_CLOCK: ClockId = ClockId::from_raw(libc::CLOCK_UPTIME_RAW);

/// [`TRACE_CLOCK`] in nanoseconds.
pub fn mono_ns() -> u64 {
    // Both clocks exist on their OS, so the call cannot fail; 0 would only mark a broken
    // libc rather than stop the data path.
    clock_gettime(TRACE_CLOCK).map_or(0, |ts| {
        ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
    })
}

/// The kernel thread id (what DTrace's `tid` and bpftrace's `tid` report).
pub fn current_tid() -> i64 {
    thread_local! {
        static TID: i64 = os_tid();
    }
    TID.with(|t| *t)
}

#[cfg(target_os = "linux")]
fn os_tid() -> i64 {
    // SAFETY: gettid has no preconditions.
    i64::from(unsafe { libc::gettid() })
}

#[cfg(target_os = "macos")]
fn os_tid() -> i64 {
    let mut tid = 0u64;
    // SAFETY: a null thread means the calling thread; tid is valid for the write.
    unsafe { libc::pthread_threadid_np(0, &mut tid) };
    tid as i64
}

// Each probe function: the USDT site first (its arguments are only evaluated when a tracer
// enabled it), then the recorder check.
//
// The `usdt` crate's generated site macros hold two unsafe blocks without comments (a
// volatile read of the probe's own semaphore, and a `nop` with integer register operands
// that touches no memory), so each site allows `undocumented_unsafe_blocks` for that one
// statement only.

#[inline(always)]
pub fn enobufs_begin(fd: i64, frame_len: i64, errno: i64) {
    #[cfg(feature = "probes")]
    #[allow(clippy::undocumented_unsafe_blocks)]
    {
        vnet::enobufs_begin!(|| (fd, frame_len, errno));
    }
    if recording() {
        record(Probe::EnobufsBegin, &[fd, frame_len, errno]);
    }
}

/// `enobufs_begin` whose recorded row carries `ts_ns`: the clock reading an episode's
/// `wait_ns` starts from, so begin..resolved in the recorder's trace spans exactly the
/// reported wait, whatever recording the row itself costs.
#[inline(always)]
pub fn enobufs_begin_at(ts_ns: u64, fd: i64, frame_len: i64, errno: i64) {
    #[cfg(feature = "probes")]
    #[allow(clippy::undocumented_unsafe_blocks)]
    {
        vnet::enobufs_begin!(|| (fd, frame_len, errno));
    }
    if recording() {
        record_at(ts_ns, Probe::EnobufsBegin, &[fd, frame_len, errno]);
    }
}

#[inline(always)]
pub fn enobufs_retry(fd: i64, attempt: i64, errno: i64) {
    #[cfg(feature = "probes")]
    #[allow(clippy::undocumented_unsafe_blocks)]
    {
        vnet::enobufs_retry!(|| (fd, attempt, errno));
    }
    if recording() {
        record(Probe::EnobufsRetry, &[fd, attempt, errno]);
    }
}

#[inline(always)]
pub fn enobufs_resolved(fd: i64, retries: i64, wait_ns: i64, frame_len: i64) {
    #[cfg(feature = "probes")]
    #[allow(clippy::undocumented_unsafe_blocks)]
    {
        vnet::enobufs_resolved!(|| (fd, retries, wait_ns, frame_len));
    }
    if recording() {
        record(Probe::EnobufsResolved, &[fd, retries, wait_ns, frame_len]);
    }
}

/// `enobufs_resolved` whose recorded row carries `ts_ns`, the clock reading `wait_ns` ends
/// at (see [`enobufs_begin_at`]).
#[inline(always)]
pub fn enobufs_resolved_at(ts_ns: u64, fd: i64, retries: i64, wait_ns: i64, frame_len: i64) {
    #[cfg(feature = "probes")]
    #[allow(clippy::undocumented_unsafe_blocks)]
    {
        vnet::enobufs_resolved!(|| (fd, retries, wait_ns, frame_len));
    }
    if recording() {
        record_at(
            ts_ns,
            Probe::EnobufsResolved,
            &[fd, retries, wait_ns, frame_len],
        );
    }
}

#[inline(always)]
pub fn kevent_write(fd: i64, data: i64) {
    kevent_write_with(fd, || data)
}

/// `kevent_write` whose `data` is computed (a syscall on Linux) only when someone listens.
#[inline(always)]
pub fn kevent_write_with(fd: i64, data: impl Fn() -> i64) {
    #[cfg(feature = "probes")]
    #[allow(clippy::undocumented_unsafe_blocks)]
    {
        vnet::kevent_write!(|| (fd, data()));
    }
    if recording() {
        record(Probe::KeventWrite, &[fd, data()]);
    }
}

#[inline(always)]
pub fn kevent_read(fd: i64, data: i64) {
    kevent_read_with(fd, || data)
}

/// `kevent_read` whose `data` is computed only when someone listens.
#[inline(always)]
pub fn kevent_read_with(fd: i64, data: impl Fn() -> i64) {
    #[cfg(feature = "probes")]
    #[allow(clippy::undocumented_unsafe_blocks)]
    {
        vnet::kevent_read!(|| (fd, data()));
    }
    if recording() {
        record(Probe::KeventRead, &[fd, data()]);
    }
}

#[inline(always)]
pub fn timer_fired(delay_us: i64) {
    #[cfg(feature = "probes")]
    #[allow(clippy::undocumented_unsafe_blocks)]
    {
        vnet::timer_fired!(|| delay_us);
    }
    if recording() {
        record(Probe::TimerFired, &[delay_us]);
    }
}

#[inline(always)]
pub fn tx_frame(fd: i64, len: i64) {
    #[cfg(feature = "probes")]
    #[allow(clippy::undocumented_unsafe_blocks)]
    {
        vnet::tx_frame!(|| (fd, len));
    }
    if recording() {
        record(Probe::TxFrame, &[fd, len]);
    }
}

#[inline(always)]
pub fn rx_frame(fd: i64, len: i64) {
    #[cfg(feature = "probes")]
    #[allow(clippy::undocumented_unsafe_blocks)]
    {
        vnet::rx_frame!(|| (fd, len));
    }
    if recording() {
        record(Probe::RxFrame, &[fd, len]);
    }
}

#[inline(always)]
pub fn guest_kick(queue: i64) {
    #[cfg(feature = "probes")]
    #[allow(clippy::undocumented_unsafe_blocks)]
    {
        vnet::guest_kick!(|| queue);
    }
    if recording() {
        record(Probe::GuestKick, &[queue]);
    }
}

#[inline(always)]
pub fn guest_irq(queue: i64) {
    #[cfg(feature = "probes")]
    #[allow(clippy::undocumented_unsafe_blocks)]
    {
        vnet::guest_irq!(|| queue);
    }
    if recording() {
        record(Probe::GuestIrq, &[queue]);
    }
}

#[inline(always)]
pub fn frame_drop(fd: i64, len: i64, reason: i64) {
    #[cfg(feature = "probes")]
    #[allow(clippy::undocumented_unsafe_blocks)]
    {
        vnet::frame_drop!(|| (fd, len, reason));
    }
    if recording() {
        record(Probe::FrameDrop, &[fd, len, reason]);
    }
}
