//! One simulated-VM run: guest memory and rings, the device worker, the peer, the guest
//! threads, a watchdog for stalls, and the summary at the end.

use std::io::{IsTerminal, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::driver::{DriverError, GuestQueue};
use super::guest::{GuestLayout, GuestRx, GuestTx, Shared, SimFramer, GUEST_MAC, PROXY_MAC};
use super::integrity::{Checker, Counts};
use super::latency::LatencySummary;
use super::proxy::{BuiltinProxy, PeerSocket, ProxyOptions};
use super::real_proxy::{EchoServer, NetConfig, UdpFramer, UDP_OVERHEAD};
use super::summary::{CsumOffload, Summary};
use super::workload::{Scheduler, Workload};
use vnet_device::backend::{self, BackendOptions, BackendSpec, FaultConfig};
use vnet_device::metrics::Metrics;
use vnet_device::net::{DEVICE_FEATURES, FEATURES_CSUM_OFFLOADS, FEATURES_GUEST_TSO, MAX_FRAME};
use vnet_device::notify::Notifier;
use vnet_device::retry_policy::RetryPolicy;
use vnet_device::retry_timer::RetryTimer;
use vnet_device::worker::{self, WorkerOptions, WorkerSetup};

/// Socket kind between the device and the built-in proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuiltinKind {
    UnixGram,
    UnixStream,
}

impl std::str::FromStr for BuiltinKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "unixgram" => Ok(BuiltinKind::UnixGram),
            "unixstream" => Ok(BuiltinKind::UnixStream),
            _ => Err(format!(
                "unknown backend {s:?}: expected unixgram or unixstream"
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub workload: Workload,
    pub backend: BuiltinKind,
    /// A real proxy instead of the built-in one.
    pub proxy: Option<BackendSpec>,
    pub net: NetConfig,
    pub vfkit: bool,
    /// Built-in unixgram proxy on a socketpair instead of its own bound path. Linux
    /// exempts a socketpair from `net.unix.max_dgram_qlen`, so the device meets far less
    /// backpressure: the transport's own ceiling, not a proxy's.
    pub proxy_socketpair: bool,
    pub proxy_opts: ProxyOptions,
    pub fault: FaultConfig,
    pub lose_write_events: bool,
    /// Model of macOS's datagram admission (`WorkerOptions::proxy_room`).
    pub proxy_room: Option<usize>,
    pub retry_timer: RetryTimer,
    pub retry_policy: RetryPolicy,
    pub sndbuf: Option<usize>,
    /// macOS, unixgram: batches of datagrams per `sendmsg_x`/`recvmsg_x` (see
    /// `BackendOptions::macos_batch_syscalls`; type-checked for macOS, never run).
    pub macos_batch_syscalls: bool,
    /// `BackendOptions::one_frame_per_call`: no batched calls.
    pub one_frame_per_call: bool,
    pub stall_timeout: Duration,
    /// Real-proxy mode: how long to wait for the last echoes once sending stopped.
    pub drain_timeout: Duration,
    /// Real-proxy mode: datagrams in flight without an echo, at most (0 = no limit).
    /// A sender that waits for its echoes, as a real guest's transport waits for ACKs,
    /// keeps bursts within what the proxy's and the host's socket buffers hold.
    pub window: u64,
    pub queue_size: u16,
    pub rx_buf_len: u32,
    /// Where each TX frame starts in its page-aligned guest buffer (the virtio header
    /// sits just before it). The default puts frames on a cache line, as the raw
    /// baseline's buffer is: the kernel copies a misaligned source 10-20% slower, a cost
    /// of where the guest put the frame, not of the device. 12 = header at the start.
    pub tx_frame_offset: u64,
    /// Print a live progress line on stderr (only honoured when it is a terminal).
    pub progress: bool,
    /// The guest negotiates the checksum offloads: it leaves its IPv4/UDP frames'
    /// checksums to the device (NEEDS_CSUM) and expects DATA_VALID on what it receives;
    /// the built-in proxy verifies every UDP checksum it receives.
    pub offload_csum: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            workload: Workload::default(),
            backend: BuiltinKind::UnixGram,
            proxy: None,
            net: NetConfig::default(),
            vfkit: false,
            proxy_socketpair: false,
            proxy_opts: ProxyOptions {
                verify_crc: true,
                pause_every: Duration::from_millis(100),
                ..ProxyOptions::default()
            },
            fault: FaultConfig::default(),
            lose_write_events: false,
            proxy_room: None,
            retry_timer: RetryTimer::BackendDefault,
            retry_policy: RetryPolicy::Timer,
            sndbuf: None,
            macos_batch_syscalls: false,
            one_frame_per_call: false,
            stall_timeout: Duration::from_secs(1),
            drain_timeout: Duration::from_millis(500),
            window: 64,
            queue_size: 256,
            rx_buf_len: 4096,
            tx_frame_offset: 64,
            progress: true,
            offload_csum: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("invalid workload: {0}")]
    Workload(String),
    #[error("guest driver: {0}")]
    Driver(#[from] DriverError),
    #[error("connecting to the proxy: {0}")]
    Backend(#[from] backend::BackendError),
    #[error("starting the device worker: {0}")]
    Spawn(std::io::Error),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} thread panicked")]
    Panic(&'static str),
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> SimError {
    move |source| SimError::Io { what, source }
}

/// Timer delay used for `--lose-write-events` when the backend has none of its own
/// (Linux unixgram relies on write events): the 50 µs of libkrun's unixgram backend
/// (PR 556).
const RESCUE_DELAY: Duration = Duration::from_micros(50);

/// How long stopping may take before the run gives up on a thread.
const JOIN_BOUND: Duration = Duration::from_secs(3);

pub fn run(cfg: &SimConfig) -> Result<Summary, SimError> {
    let mut workload = cfg.workload.clone();
    let real = cfg.proxy.is_some();
    if real {
        // A real proxy only echoes our UDP: the guest sends, the echo comes back.
        workload.direction = super::workload::Direction::Tx;
        workload.ack_size = 0;
    }
    workload.validate(MAX_FRAME).map_err(SimError::Workload)?;
    if real && workload.tx_size < UDP_OVERHEAD + super::integrity::STAMP_LEN {
        return Err(SimError::Workload(format!(
            "--tx-size {}: a UDP frame needs at least {} bytes",
            workload.tx_size,
            UDP_OVERHEAD + super::integrity::STAMP_LEN
        )));
    }

    let largest_rx = vnet_device::net::NET_HDR_LEN
        + if real {
            MAX_FRAME
        } else {
            workload.rx_size.max(workload.ack_size)
        };
    if u64::from(cfg.rx_buf_len) * u64::from(cfg.queue_size) < largest_rx as u64 {
        return Err(SimError::Workload(format!(
            "--queue-size {} x --rx-buf-len {} cannot hold a {largest_rx}-byte frame \
             (virtio header included): the device would wait for buffers forever",
            cfg.queue_size, cfg.rx_buf_len
        )));
    }
    let layout = GuestLayout::new(
        cfg.queue_size,
        MAX_FRAME,
        cfg.rx_buf_len,
        cfg.tx_frame_offset,
    )?;
    let mem = layout.memory().map_err(io("guest memory"))?;
    let event_idx = true;
    let rx_q = layout.rx.device_queue(event_idx)?;
    let tx_q = layout.tx.device_queue(event_idx)?;
    let n = || Notifier::new().map_err(io("eventfd"));
    let (rx_kick, tx_kick, rx_call, tx_call) = (n()?, n()?, n()?, n()?);

    let mut bopts = BackendOptions {
        vfkit: cfg.vfkit,
        sndbuf: cfg.sndbuf,
        macos_batch_syscalls: cfg.macos_batch_syscalls,
        one_frame_per_call: cfg.one_frame_per_call,
        ..BackendOptions::default()
    };
    // Declared before the backend so it outlives it: the device's socket file is inside.
    let mut sock_dir = None;
    let (backend, peer): (Box<dyn backend::Backend>, Option<PeerSocket>) = match &cfg.proxy {
        Some(spec) => (backend::connect(spec, &bopts)?, None),
        None => match cfg.backend {
            BuiltinKind::UnixGram if cfg.proxy_socketpair => {
                let (dev, prx) = UnixDatagram::pair().map_err(io("socketpair"))?;
                bopts.local_path = None;
                (
                    Box::new(backend::UnixGram::from_socket(dev, &bopts)?),
                    Some(PeerSocket::Gram(prx, None)),
                )
            }
            // As with gvproxy: the proxy binds its path, the device binds its own and
            // connects to the proxy's, the proxy answers with sendto.
            BuiltinKind::UnixGram => {
                let dir = sock_dir.insert(SockDir::new().map_err(io("socket directory"))?);
                let proxy_path = dir.0.join("proxy.sock");
                let device_path = dir.0.join("device.sock");
                let prx =
                    UnixDatagram::bind(&proxy_path).map_err(io("binding the proxy socket"))?;
                bopts.local_path = Some(device_path.clone());
                (
                    Box::new(backend::UnixGram::connect(&proxy_path, &bopts)?),
                    Some(PeerSocket::Gram(prx, Some(device_path))),
                )
            }
            BuiltinKind::UnixStream => {
                let (dev, prx) = UnixStream::pair().map_err(io("socketpair"))?;
                (
                    Box::new(backend::UnixStreamBackend::from_socket(dev, &bopts)?),
                    Some(PeerSocket::Stream(prx)),
                )
            }
        },
    };
    let retry_timer = if cfg.retry_timer == RetryTimer::BackendDefault
        && (cfg.lose_write_events || !cfg.fault.is_off())
        && backend.default_retry_delay().is_none()
    {
        // Injected ENOBUFS stands for macOS, whose datagram backend retries on a 50 µs
        // timer; lost write events are the case the timer exists for. (Linux's backend
        // relies on write events alone, and --no-timer shows what that does here.)
        RetryTimer::After(RESCUE_DELAY)
    } else {
        cfg.retry_timer
    };

    let metrics = Arc::new(Metrics::default());
    let setup = WorkerSetup {
        mem: mem.clone(),
        rx: rx_q,
        tx: tx_q,
        rx_kick: rx_kick.try_clone().map_err(io("eventfd"))?,
        tx_kick: tx_kick.try_clone().map_err(io("eventfd"))?,
        rx_call: rx_call.try_clone().map_err(io("eventfd"))?,
        tx_call: tx_call.try_clone().map_err(io("eventfd"))?,
        // By default the simulated guest, like a driver without offloads, acks every
        // feature but the checksum offloads (and TSO, which needs CSUM): its frames carry
        // no NEEDS_CSUM and it ignores DATA_VALID. It never sends GSO frames either way,
        // and never takes them (GUEST_TSO4/6): its proxy's traffic is not TCP, and its
        // receive side checks frames as they were sent.
        features: if cfg.offload_csum {
            DEVICE_FEATURES & !FEATURES_GUEST_TSO
        } else {
            DEVICE_FEATURES & !FEATURES_CSUM_OFFLOADS
        },
        backend,
        options: WorkerOptions {
            retry_timer,
            retry_policy: cfg.retry_policy,
            lose_write_events: cfg.lose_write_events,
            inject_enobufs: cfg.fault,
            proxy_room: cfg.proxy_room,
        },
        metrics: metrics.clone(),
    };
    let worker = worker::spawn(setup).map_err(SimError::Spawn)?;

    let shared = Arc::new(Shared::new().map_err(io("eventfd"))?);
    let _ = shared.device.set(metrics.clone());
    let start = Instant::now();
    let cpu_start = process_cpu_seconds();

    let mut echo = None;
    let proxy = match peer {
        Some(sock) => Some(
            BuiltinProxy::spawn(sock, &workload, &cfg.proxy_opts, shared.clone(), start)
                .map_err(io("starting the built-in proxy"))?,
        ),
        None => {
            echo = Some(EchoServer::start(cfg.net.echo_bind).map_err(io("UDP echo socket"))?);
            // The proxy side of the ledger is empty: nothing but echoes comes back.
            shared.proxy_sent.data_done.store(true, Ordering::Release);
            shared.proxy_sent.acks_done.store(true, Ordering::Release);
            None
        }
    };

    let (tx_framer, rx_framer): (Box<dyn super::guest::Framer>, Box<dyn super::guest::Framer>) =
        match &echo {
            Some(e) => {
                let mut net = cfg.net.clone();
                if net.src_port_base == 0 {
                    net.src_port_base = super::real_proxy::free_port_run(workload.streams)
                        .map_err(io("finding free UDP ports"))?;
                }
                let mac = Arc::new(Mutex::new(None));
                (
                    Box::new(UdpFramer::new(net.clone(), e.port, mac.clone())),
                    Box::new(UdpFramer::new(net, e.port, mac)),
                )
            }
            None => (
                Box::new(SimFramer::new(GUEST_MAC, PROXY_MAC)),
                Box::new(SimFramer::new(PROXY_MAC, GUEST_MAC)),
            ),
        };

    let tx_queue = GuestQueue::new(mem.clone(), layout.tx, event_idx, tx_kick, tx_call)?;
    let rx_queue = GuestQueue::new(mem.clone(), layout.rx, event_idx, rx_kick, rx_call)?;
    let guest_tx = GuestTx {
        queue: tx_queue,
        layout,
        mem: mem.clone(),
        framer: tx_framer,
        sched: Scheduler::new(&workload, true, start),
        shared: shared.clone(),
        posted_frames: 0,
        posted_bytes: 0,
        window: if real { cfg.window } else { 0 },
        offload_csum: cfg.offload_csum,
    };
    let guest_rx = GuestRx {
        queue: rx_queue,
        layout,
        mem: mem.clone(),
        framer: rx_framer,
        checker: Checker::new(cfg.proxy_opts.verify_crc),
        shared: shared.clone(),
        ack_every: if workload.ack_size > 0 {
            workload.ack_every
        } else {
            0
        },
        exit_when_complete: !real,
        wake_tx_on_data: real && cfg.window > 0,
        rx_frames: 0,
        rx_bytes: 0,
        bad_frames: 0,
        expect_data_valid: cfg.offload_csum,
    };
    let tx_thread = spawn("sim-guest-tx", move || guest_tx.run())?;
    let rx_thread = spawn("sim-guest-rx", move || guest_rx.run())?;

    // A run ends like iperf3's: the senders stopped on their own at the limit, and
    // the run waits until every frame in flight has arrived (guest TX ring drained by
    // the device, socket queue read by the proxy, proxy output delivered to the guest),
    // so the ledgers compare delivered frames, not a snapshot with frames still queued.
    let peer_done = || proxy.as_ref().is_none_or(|p| p.is_finished());
    let stall = watch(
        cfg, real, &shared, &metrics, &tx_thread, &rx_thread, &peer_done, start,
    );
    let seconds = start.elapsed().as_secs_f64();
    let cpu_seconds = process_cpu_seconds() - cpu_start;

    // Stop everything, in an order that cannot deadlock: the flag first (every loop
    // polls it), then wake-ups, then the worker.
    shared.stop.store(true, Ordering::Release);
    let _ = shared.guest_tx_wake.notify();
    let tx_res = join_bounded(tx_thread, "guest TX")?;
    let rx_res = join_bounded(rx_thread, "guest RX")?;
    // The worker goes before the proxy closes its end, so it does not see the peer
    // vanish and report it as a lost connection.
    worker.stop();
    let worker_err = join_worker(worker);
    let proxy_counts = match proxy {
        Some(p) => Some(p.join().map_err(io("built-in proxy"))?),
        None => None,
    };
    let mut udp_echoed = None;
    if let Some(e) = echo {
        udp_echoed = Some(e.echoed.load(Ordering::Acquire));
        e.stop().map_err(io("UDP echo socket"))?;
    }
    let tx_queue = tx_res?;
    let (rx_queue, mut guest_checker) = rx_res?;

    // Frames that never arrived at the tail count as lost.
    let to_proxy =
        proxy_counts.map(|mut c| c.finish(&shared.guest_sent.per_stream(workload.streams)));
    let d = metrics.snapshot();
    let mut udp_lost = 0;
    let mut to_guest = if real {
        guest_checker.finish(&shared.guest_sent.per_stream(workload.streams))
    } else {
        guest_checker.finish(&shared.proxy_sent.per_stream(workload.streams))
    };
    if real {
        // A missing echo is a UDP drop unless the device itself lost the frame: every
        // frame the guest posted must have been written out, and every frame the device
        // read must have reached the guest. Only what the device cannot account for is
        // an integrity error; the rest is the network's.
        let missing = std::mem::take(&mut to_guest.lost).saturating_sub(d.drops.retry_exhausted);
        let device_lost = if stall.is_none() {
            shared
                .guest_frames_out
                .load(Ordering::Acquire)
                .saturating_sub(d.tx_frames + d.drops.retry_exhausted)
                + d.rx_frames
                    .saturating_sub(shared.guest_frames_in.load(Ordering::Acquire))
        } else {
            0
        };
        to_guest.lost = device_lost.min(missing);
        udp_lost = missing - to_guest.lost;
    }

    let gbit = |bytes: u64| bytes as f64 * 8.0 / seconds.max(1e-9) / 1e9;
    let sum = |f: fn(&Counts) -> u64| f(&to_guest) + to_proxy.as_ref().map_or(0, f);
    // Guest frames the device dropped on purpose show up as lost at the proxy: each one
    // the device reported is accounted for; a drop it reported that the proxy did not
    // miss (or a loss it did not report) is an integrity error.
    // (Real-proxy mode took the drops out of the missing echoes above already.)
    let dropped = d.drops.retry_exhausted;
    let (accounted_drops, unreported_drops) = match (&to_proxy, real) {
        (Some(c), false) => (c.lost.min(dropped), c.lost.abs_diff(dropped)),
        _ => (0, 0),
    };
    let mut stall_text = stall;
    if let Some(e) = worker_err {
        stall_text = Some(match stall_text {
            Some(s) => format!("{s}; {e}"),
            None => e,
        });
    }
    Ok(Summary {
        peer: match &cfg.proxy {
            Some(spec) => spec.to_string(),
            None => match cfg.backend {
                BuiltinKind::UnixGram if cfg.proxy_socketpair => {
                    "builtin:unixgram-socketpair".into()
                }
                BuiltinKind::UnixGram => "builtin:unixgram".into(),
                BuiltinKind::UnixStream => "builtin:unixstream".into(),
            },
        },
        direction: format!("{:?}", workload.direction).to_lowercase(),
        seconds,
        cpu_seconds,
        tx_frames: d.tx_frames,
        rx_frames: d.rx_frames,
        tx_bytes: d.tx_bytes,
        rx_bytes: d.rx_bytes,
        lost: sum(|c| c.lost) - accounted_drops,
        retry_policy: cfg.retry_policy.to_string(),
        dropped,
        unreported_drops,
        duplicated: sum(|c| c.duplicated),
        reordered: sum(|c| c.reordered),
        reordered_across_streams: sum(|c| c.reordered_across_streams),
        across_streams_allowed: cfg.retry_policy.looks_ahead(),
        corrupted: sum(|c| c.corrupted),
        udp_lost,
        udp_echoed,
        episodes: d.episodes,
        retries: d.retries,
        resolved: d.resolved,
        stalls: u64::from(stall_text.is_some()),
        gbit_per_s: gbit(d.tx_bytes + d.rx_bytes),
        tx_gbit_per_s: gbit(d.tx_bytes),
        rx_gbit_per_s: gbit(d.rx_bytes),
        to_proxy,
        to_guest,
        stall: stall_text,
        guest_kicks_sent: tx_queue.kicks + rx_queue.kicks,
        guest_kicks_suppressed: tx_queue.kicks_suppressed + rx_queue.kicks_suppressed,
        device: d,
        latency_us: (!real).then(|| {
            LatencySummary::new(
                &shared.tx_latency.histograms(),
                &shared.rx_latency.histograms(),
            )
        }),
        csum_offload: cfg.offload_csum.then(|| CsumOffload {
            udp_checksums_checked: shared.udp_csum_checked.load(Ordering::Acquire),
            udp_checksums_bad: shared.udp_csum_bad.load(Ordering::Acquire),
            rx_without_data_valid: shared.rx_data_valid_missing.load(Ordering::Acquire),
        }),
    })
}

/// A private directory for the built-in proxy's and the device's socket paths (parallel
/// runs must not share one), removed with whatever is left in it.
struct SockDir(std::path::PathBuf);

impl SockDir {
    fn new() -> std::io::Result<SockDir> {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path =
            std::env::temp_dir().join(format!("vnet-sim-{}-{n}-{nanos:x}", std::process::id()));
        std::fs::create_dir(&path)?;
        Ok(SockDir(path))
    }
}

impl Drop for SockDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<T>, SimError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(io("spawning a guest thread"))
}

fn join_bounded<T>(h: JoinHandle<T>, what: &'static str) -> Result<T, SimError> {
    let deadline = Instant::now() + JOIN_BOUND;
    while !h.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    if !h.is_finished() {
        return Err(SimError::Io {
            what,
            source: std::io::Error::other("thread did not stop within 3 s"),
        });
    }
    h.join().map_err(|_| SimError::Panic(what))
}

/// Joins the worker within a bound; returns a description when it failed or hung.
fn join_worker(w: worker::WorkerHandle) -> Option<String> {
    let deadline = Instant::now() + JOIN_BOUND;
    while !w.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    if !w.is_finished() {
        // Leaking the thread is better than hanging the process: the caller exits.
        std::mem::forget(w);
        return Some("device worker did not stop within 3 s".into());
    }
    match w.join() {
        Ok(_) => None,
        Err(e) => Some(format!("device worker failed: {e}")),
    }
}

/// Runs until the traffic is complete, a stall is detected, or (real proxy) the echoes
/// stop coming after sending ended. Returns the stall description, if any.
#[allow(clippy::too_many_arguments)]
fn watch(
    cfg: &SimConfig,
    real: bool,
    shared: &Shared,
    metrics: &Metrics,
    tx_thread: &JoinHandle<Result<GuestQueue, DriverError>>,
    rx_thread: &JoinHandle<Result<(GuestQueue, Checker), DriverError>>,
    peer_done: &dyn Fn() -> bool,
    start: Instant,
) -> Option<String> {
    let tty = cfg.progress && std::io::stderr().is_terminal();
    let mut last = super::guest::progress(shared);
    let mut last_move = Instant::now();
    let mut last_print = Instant::now();
    let mut printed = false;
    let result = loop {
        std::thread::sleep(Duration::from_millis(10));
        if tx_thread.is_finished() && rx_thread.is_finished() && peer_done() {
            break None;
        }
        let now = super::guest::progress(shared);
        if now != last {
            last = now;
            last_move = Instant::now();
        }
        if tty && last_print.elapsed() >= Duration::from_millis(250) {
            last_print = Instant::now();
            let m = metrics.snapshot();
            let secs = start.elapsed().as_secs_f64();
            let _ = write!(
                std::io::stderr(),
                "\r{:6.1} s  tx {:>9} rx {:>9} frames  {:6.2} Gbit/s  episodes {:>6}  retries {:>6} ",
                secs,
                m.tx_frames,
                m.rx_frames,
                (m.tx_bytes + m.rx_bytes) as f64 * 8.0 / secs.max(1e-9) / 1e9,
                m.episodes,
                m.retries
            );
            printed = true;
        }
        let idle = last_move.elapsed();
        if real {
            let sending_done = shared.guest_sent.all_done();
            let all_back =
                shared.guest_received.load(Ordering::Acquire) >= shared.guest_sent.total();
            if sending_done && (all_back || idle >= cfg.drain_timeout) {
                break None;
            }
            // Nothing at all echoed while we keep sending: the path is dead.
            if !sending_done && idle >= cfg.stall_timeout && in_flight(shared) > 0 {
                break Some(stall_text(shared, metrics, idle));
            }
        } else if idle >= cfg.stall_timeout && in_flight(shared) > 0 {
            break Some(stall_text(shared, metrics, idle));
        }
        if idle >= cfg.stall_timeout * 30 {
            // Nothing in flight yet nothing completes: a bookkeeping bug, not a hang.
            break Some(format!(
                "no progress for {:.1} s with nothing in flight",
                idle.as_secs_f64()
            ));
        }
    };
    if printed {
        let _ = writeln!(std::io::stderr());
    }
    result
}

/// Frames sent and not (yet) received, both directions.
fn in_flight(s: &Shared) -> u64 {
    let g = s.guest_sent.total();
    let p = s.proxy_sent.total();
    g.saturating_sub(s.proxy_received.load(Ordering::Acquire) + s.tx_dropped())
        + p.saturating_sub(s.guest_received.load(Ordering::Acquire))
}

fn stall_text(s: &Shared, metrics: &Metrics, idle: Duration) -> String {
    let m = metrics.snapshot();
    format!(
        "no progress for {:.2} s: guest sent {} frames, proxy got {}; proxy sent {}, guest got {}; \
         device: open episode {}, {} retries, timer fired {}, write events {}",
        idle.as_secs_f64(),
        s.guest_sent.total(),
        s.proxy_received.load(Ordering::Acquire),
        s.proxy_sent.total(),
        s.guest_received.load(Ordering::Acquire),
        m.open_episode,
        m.retries,
        m.timer_fired,
        m.write_events
    )
}

/// User + system CPU time of the whole process so far. Throughput per CPU second is what
/// a benchmark can compare on a machine other jobs are loading; wall-clock rates there
/// mostly measure the neighbours.
pub fn process_cpu_seconds() -> f64 {
    use nix::sys::time::TimeValLike;
    match nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF) {
        Ok(ru) => (ru.user_time() + ru.system_time()).num_microseconds() as f64 / 1e6,
        Err(_) => 0.0,
    }
}
