//! Throughput of the device driven by the simulated guest, as ratios against baselines
//! measured in the same run (absolute numbers on a shared machine mean little):
//!
//! 1. guest -> built-in sink, 64 KiB frames, vs a raw loop between two threads sending
//!    the same frames over the same kind of socket (the transport's own limit); target
//!    70 % or more. Datagrams: the built-in proxy binds its own path and the device connects to
//!    it (as with gvproxy), so the raw loop does the same: a receiver bound and not
//!    connected back is held to net.unix.max_dgram_qlen, a socketpair would not be.
//! 2. the same with 1514-byte frames: frames/s and the ratio.
//! 3. the in-process trace recorder on vs off.
//! 4. 1514-byte frames both ways under the default load (ACKs, windows, 8 streams), the
//!    device against the raw 1514-byte TX loop;
//! 5. and the same load against the device itself with `--one-frame-per-call`: what
//!    batching saves where everything else (the guest, the proxy, the worker's sleeps and
//!    wake-ups) is the same.
//!
//! Wall-clock and per-process-CPU ratios move with whatever else the machine runs, so each
//! case also prints measures noise moves little: system calls per frame (the device's
//! `tx_syscalls`/`rx_syscalls` counters; the raw loop counts its own) and CPU time per
//! frame of the device's worker thread (its thread clock, read when it exits) against the
//! raw loop's sending thread, median and min..max over the rounds (the raw loop's RX
//! figure is its receiving thread's, reading what the sender sent), and how often per
//! frame each of those threads left the CPU (Linux's per-thread context-switch counts; 0
//! on macOS). Instructions per frame, which other jobs on the machine do not move, come
//! from `callgrind.sh`; where the rest of the worker's time goes, from `worker-profile.sh`.
//! The first line prices one sleep and wake-up between two threads on this machine
//! ([`vnet_sim::wake_cost`]), which the worker pays and the raw sender does not.
//!
//! Both sides send frames from the same place relative to a cache line: 64 bytes into a
//! page by default (the simulated guest's default), and again 12 bytes in (a virtio header
//! at the start of the buffer, the frame straight after it), where the kernel's copy of a
//! misaligned source costs both sides alike.
//!
//! Probes compiled in vs compiled out needs two builds: see `throughput-probes.sh`.
//!
//! `cargo bench -p vnet-sim --bench throughput` (env BENCH_SECS, default 2, per run;
//! BENCH_ROUNDS, default 5: each measurement is the median of that many alternating runs;
//! BENCH_ONLY=TEXT: only the cases whose name contains TEXT; BENCH_RAW_SLOTS=N, default 1:
//! the raw loop sends from N page-aligned slots in turn, as the guest's TX ring does, to
//! see whether the device pays for reading colder memory than one hot buffer;
//! BENCH_RAW_PRODUCER=writes: a third thread writes each frame's bytes into its slot
//! (at least 2) and hands it to the raw sender through a bounded channel, as the simulated
//! guest writes each frame the device sends: the sender then copies bytes another core
//! wrote, and three threads share the two cores as the guest, the worker and the proxy
//! do; BENCH_RAW_PRODUCER=hands-over: the same handoff without the writing, which is
//! what the channel alone costs the sender; BENCH_RAW_HANDOFF=N, default 1: the producer
//! hands over N slots at a time, as a guest kicks once for several frames).

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vnet_device::backend::unixgram;
use vnet_device::probes;
use vnet_device::recorder::Recorder;
use vnet_device::sockopt::{set_sock_buf, SockBuf};
use vnet_device::thread_usage::ThreadUsage;
use vnet_sim::run::process_cpu_seconds;
use vnet_sim::wake_cost;
use vnet_sim::workload::{Direction, Limit, Workload};
use vnet_sim::{run, BuiltinKind, SimConfig};

#[derive(Clone, Copy)]
struct Rate {
    bytes_per_s: f64,
    frames_per_s: f64,
    /// Per CPU second of the whole process (all threads): robust against other jobs
    /// loading the machine, which wall-clock rates are not.
    bytes_per_cpu_s: f64,
    frames_per_cpu_s: f64,
    /// Send calls per frame sent; receive calls per frame received (NaN: none received).
    tx_calls_per_frame: f64,
    rx_calls_per_frame: f64,
    /// CPU ns per frame of the thread doing the work: the device's worker (frames both
    /// ways), the raw loop's sender.
    cpu_ns_per_frame: f64,
    /// Times per frame that thread gave up the CPU to wait, and had it taken away: each
    /// costs microseconds on a virtual machine, and they are most of what the worker pays
    /// beyond the raw sender (README, "Where the worker's CPU goes at 1514 B").
    voluntary_switches_per_frame: f64,
    involuntary_switches_per_frame: f64,
}

/// Where frames start relative to a page: the device's default, and a misaligned one.
const ALIGNED: usize = 64;
const MISALIGNED: usize = 12;

fn device(kind: BuiltinKind, frame: usize, secs: f64, offset: usize) -> Rate {
    device_with(
        kind,
        Workload {
            direction: Direction::Tx,
            tx_size: frame,
            ack_size: 0,
            streams: 8,
            limit: Limit::Duration(Duration::from_secs_f64(secs)),
            ..Workload::default()
        },
        offset,
        false,
    )
}

/// `frame`-byte frames both ways under the default load otherwise (ACKs, send window);
/// batched, or one frame per call (`BackendOptions::one_frame_per_call`).
fn device_both(kind: BuiltinKind, frame: usize, secs: f64, one_frame_per_call: bool) -> Rate {
    device_with(
        kind,
        Workload {
            tx_size: frame,
            rx_size: frame,
            limit: Limit::Duration(Duration::from_secs_f64(secs)),
            ..Workload::default()
        },
        ALIGNED,
        one_frame_per_call,
    )
}

fn device_with(
    kind: BuiltinKind,
    workload: Workload,
    offset: usize,
    one_frame_per_call: bool,
) -> Rate {
    let mut cfg = SimConfig {
        workload,
        backend: kind,
        one_frame_per_call,
        progress: false,
        // On a loaded machine a starved thread is not a device hang.
        stall_timeout: Duration::from_secs(10),
        tx_frame_offset: offset as u64,
        ..SimConfig::default()
    };
    // The raw loop's reader only counts, so the sink does too (sequence numbers are
    // still checked, payload hashing is not).
    cfg.proxy_opts.verify_crc = false;
    let s = run(&cfg).expect("sim run");
    assert!(
        !s.failed(),
        "bench run failed its integrity checks: {}",
        s.to_text()
    );
    let d = &s.device;
    let (bytes, frames) = (
        (s.tx_bytes + s.rx_bytes) as f64,
        (s.tx_frames + s.rx_frames) as f64,
    );
    Rate {
        bytes_per_s: bytes / s.seconds,
        frames_per_s: frames / s.seconds,
        bytes_per_cpu_s: bytes / s.cpu_seconds,
        frames_per_cpu_s: frames / s.cpu_seconds,
        tx_calls_per_frame: d.tx_syscalls as f64 / d.tx_frames as f64,
        // A TX-only run reads nothing: no RX figure (NaN prints as "-").
        rx_calls_per_frame: if d.rx_frames == 0 {
            f64::NAN
        } else {
            d.rx_syscalls as f64 / d.rx_frames as f64
        },
        cpu_ns_per_frame: d.worker_cpu_ns as f64 / frames,
        voluntary_switches_per_frame: d.worker_voluntary_switches as f64 / frames,
        involuntary_switches_per_frame: d.worker_involuntary_switches as f64 / frames,
    }
}

/// Two threads, the same sockets as the device and its proxy (a bound receiver for
/// datagrams, a socketpair for streams), the same frames: what the transport carries.
fn raw(kind: BuiltinKind, frame: usize, secs: f64, offset: usize, src: RawSource) -> Rate {
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Duration::from_secs_f64(secs);
    // A stream frame goes out behind its 4-byte length prefix.
    let prefix = match kind {
        BuiltinKind::UnixGram => 0,
        BuiltinKind::UnixStream => 4,
    };
    let cpu0 = process_cpu_seconds();
    let (frames, elapsed, sends, recvs, sender, sent) = match kind {
        BuiltinKind::UnixGram => {
            let dir = std::env::temp_dir().join(format!("vnet-bench-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir(&dir).unwrap();
            let b = UnixDatagram::bind(dir.join("proxy.sock")).unwrap();
            let a = UnixDatagram::bind(dir.join("device.sock")).unwrap();
            a.connect(dir.join("proxy.sock")).unwrap();
            // The device's datagram socket gets these buffers; the baseline must too, or it
            // measures a smaller pipe.
            set_sock_buf(a.as_fd(), SockBuf::Send, unixgram::DEFAULT_SNDBUF).unwrap();
            set_sock_buf(b.as_fd(), SockBuf::Recv, unixgram::DEFAULT_RCVBUF).unwrap();
            b.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            let st = stop.clone();
            let rx = std::thread::spawn(move || {
                let mut r = vec![0u8; 70000];
                let (mut n, mut calls) = (0u64, 0u64);
                while !st.load(Ordering::Relaxed) {
                    calls += 1;
                    if b.recv(&mut r).is_ok() {
                        n += 1;
                    }
                }
                (n, calls)
            });
            let mut frames = FrameSource::new(src, frame, offset, prefix);
            let t = Instant::now();
            let usage0 = ThreadUsage::now();
            let mut sends = 0u64;
            while t.elapsed() < deadline {
                a.send(frames.next()).unwrap();
                sends += 1;
                frames.done();
            }
            let sender = ThreadUsage::now().since(&usage0);
            drop(frames);
            let elapsed = t.elapsed();
            stop.store(true, Ordering::Relaxed);
            let (n, recvs) = rx.join().unwrap();
            let _ = std::fs::remove_dir_all(&dir);
            (n, elapsed, sends, recvs, sender, sends)
        }
        BuiltinKind::UnixStream => {
            let (a, b) = UnixStream::pair().unwrap();
            // The receiver reads until the sender closes its end: a read timeout (to see
            // `stop`) could fire in the middle of a frame when the machine starves this
            // thread, lose the framing, and end the receiver while the sender still
            // writes (EPIPE, and the bench panicked).
            let rx = std::thread::spawn(move || {
                let mut r = vec![0u8; 70000];
                let mut n = 0u64;
                let mut len = [0u8; 4];
                let mut b = Counted { inner: b, calls: 0 };
                while b.read_exact(&mut len).is_ok() {
                    let l = u32::from_be_bytes(len) as usize;
                    assert!(l <= r.len(), "raw stream lost its framing");
                    if b.read_exact(&mut r[..l]).is_ok() {
                        n += 1;
                    }
                }
                (n, b.calls)
            });
            let mut frames = FrameSource::new(src, frame, offset, prefix);
            let t = Instant::now();
            let usage0 = ThreadUsage::now();
            let mut a = Counted { inner: a, calls: 0 };
            let mut sent = 0u64;
            while t.elapsed() < deadline {
                a.write_all(frames.next()).unwrap();
                sent += 1;
                frames.done();
            }
            let sender = ThreadUsage::now().since(&usage0);
            drop(frames);
            let elapsed = t.elapsed();
            let sends = a.calls;
            drop(a);
            let (n, recvs) = rx.join().unwrap();
            (n, elapsed, sends, recvs, sender, sent)
        }
    };
    let cpu = process_cpu_seconds() - cpu0;
    let s = elapsed.as_secs_f64();
    Rate {
        bytes_per_s: (frames * frame as u64) as f64 / s,
        frames_per_s: frames as f64 / s,
        bytes_per_cpu_s: (frames * frame as u64) as f64 / cpu,
        frames_per_cpu_s: frames as f64 / cpu,
        tx_calls_per_frame: sends as f64 / sent as f64,
        rx_calls_per_frame: recvs as f64 / frames as f64,
        cpu_ns_per_frame: sender.cpu_ns as f64 / sent as f64,
        voluntary_switches_per_frame: sender.voluntary_switches as f64 / sent as f64,
        involuntary_switches_per_frame: sender.involuntary_switches as f64 / sent as f64,
    }
}

/// Where the raw loop's frames come from.
#[derive(Clone, Copy)]
struct RawSource {
    /// Page-aligned slots sent in turn, as the guest's TX ring has them.
    slots: usize,
    /// A third thread hands the sender each frame's slot, as the guest hands the device
    /// its frames; without it the sender sends its own slots in turn.
    producer: Producer,
    /// Slots per handoff (the producer's frames per kick, as it were).
    per_handoff: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Producer {
    None,
    /// The producer writes every byte of the frame into the slot before handing it
    /// over, as the guest writes a frame before the device sends it.
    Writes,
    /// The producer only hands the slot over (what the handoff alone costs the sender).
    HandsOver,
}

/// The raw sender's frames, one at a time: `next` is the frame to send (behind its
/// length prefix, for a stream), `done` says it went out.
struct FrameSource {
    frame: usize,
    offset: usize,
    prefix: usize,
    /// Own slots (no producer): the memory, its stride and the slot sent next.
    mem: Vec<u8>,
    stride: usize,
    slots: usize,
    slot: usize,
    /// With a producer: batches of written slots come in on `filled`, sent ones go back
    /// on `free`; `current` is the batch being sent, `slot` its next slot.
    filled: Option<Receiver<Vec<Box<[u8]>>>>,
    free: Option<SyncSender<Vec<Box<[u8]>>>>,
    producer: Option<std::thread::JoinHandle<()>>,
    current: Vec<Box<[u8]>>,
    /// Frames the sender had to wait for (none written yet): each wait is a futex sleep
    /// and wake-up in the sender's CPU time.
    waits: u64,
}

/// Where a frame starts in `buf`: `offset` bytes into its first whole page.
fn frame_start(buf: &[u8], offset: usize) -> usize {
    buf.as_ptr().align_offset(4096) + offset
}

/// Writes a stream frame's length prefix (`prefix` bytes: 4, or 0 for a datagram) just
/// before the frame that starts at `at`.
fn put_prefix(buf: &mut [u8], at: usize, prefix: usize, frame: usize) {
    buf[at - prefix..at].copy_from_slice(&(frame as u32).to_be_bytes()[4 - prefix..]);
}

impl FrameSource {
    fn new(src: RawSource, frame: usize, offset: usize, prefix: usize) -> FrameSource {
        // Slot i starts a page-aligned stride after slot i-1, the frame `offset` bytes in,
        // as the simulated guest lays out its TX slots.
        let stride = (offset + frame).next_multiple_of(4096);
        let slot_buf = || {
            let mut b = vec![0x5au8; stride + 4096].into_boxed_slice();
            let at = frame_start(&b, offset);
            put_prefix(&mut b, at, prefix, frame);
            b
        };
        let mut source = FrameSource {
            frame,
            offset,
            prefix,
            mem: Vec::new(),
            stride,
            slots: src.slots,
            slot: 0,
            filled: None,
            free: None,
            producer: None,
            current: Vec::new(),
            waits: 0,
        };
        if src.producer == Producer::None {
            source.mem = vec![0x5au8; stride * src.slots + 2 * 4096];
            let at = frame_start(&source.mem, offset);
            for i in 0..src.slots {
                put_prefix(&mut source.mem, at + i * stride, prefix, frame);
            }
            return source;
        }
        // At least two batches, so the producer fills one while the sender sends another.
        let per = src.per_handoff.max(1);
        let batches = (src.slots / per).max(2);
        source.slots = batches * per;
        let (free_tx, free_rx) = sync_channel::<Vec<Box<[u8]>>>(batches);
        let (filled_tx, filled_rx) = sync_channel::<Vec<Box<[u8]>>>(batches);
        for _ in 0..batches {
            free_tx
                .send((0..per).map(|_| slot_buf()).collect())
                .unwrap();
        }
        let writes = src.producer == Producer::Writes;
        source.producer = Some(std::thread::spawn(move || {
            let mut value = 0u8;
            // Ends when the sender drops its ends of the channels.
            while let Ok(mut batch) = free_rx.recv() {
                if writes {
                    for b in &mut batch {
                        let at = frame_start(b, offset);
                        b[at..at + frame].fill(value);
                        value = value.wrapping_add(1);
                    }
                }
                if filled_tx.send(batch).is_err() {
                    break;
                }
            }
        }));
        source.filled = Some(filled_rx);
        source.free = Some(free_tx);
        source
    }

    fn next(&mut self) -> &[u8] {
        let (buf, at) = match &self.filled {
            Some(filled) => {
                if self.current.is_empty() {
                    self.current = match filled.try_recv() {
                        Ok(batch) => batch,
                        Err(_) => {
                            self.waits += 1;
                            filled.recv().expect("the producer runs")
                        }
                    };
                    self.slot = 0;
                }
                let b = &self.current[self.slot];
                (&b[..], frame_start(b, self.offset))
            }
            None => {
                let at = frame_start(&self.mem, self.offset) + self.slot * self.stride;
                (&self.mem[..], at)
            }
        };
        &buf[at - self.prefix..at + self.frame]
    }

    fn done(&mut self) {
        self.slot += 1;
        match &self.free {
            Some(free) if self.slot == self.current.len() => {
                let _ = free.send(std::mem::take(&mut self.current));
            }
            Some(_) => {}
            None => self.slot %= self.slots,
        }
    }
}

impl Drop for FrameSource {
    fn drop(&mut self) {
        if self.filled.is_some() {
            eprintln!(
                "raw loop, {} B from {} slots of a producer: the sender waited for it {} times",
                self.frame, self.slots, self.waits
            );
        }
        self.filled = None;
        self.free = None;
        if let Some(p) = self.producer.take() {
            let _ = p.join();
        }
    }
}

/// A stream that counts its read and write calls (each is one system call).
struct Counted<S> {
    inner: S,
    calls: u64,
}

impl<S: Read> Read for Counted<S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.calls += 1;
        self.inner.read(buf)
    }
}

impl<S: Write> Write for Counted<S> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.calls += 1;
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// `median (min..max)` of `v`, with `digits` decimals.
fn spread(v: Vec<f64>, digits: usize) -> String {
    if v.iter().any(|x| !x.is_finite()) {
        return "-".into();
    }
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let m = median(v);
    format!("{m:.digits$} ({lo:.digits$}..{hi:.digits$})")
}

/// Alternates the two measurements `rounds` times so drift on a shared machine hits both;
/// returns every round's pair.
fn paired(
    rounds: usize,
    mut a: impl FnMut() -> Rate,
    mut b: impl FnMut() -> Rate,
) -> Vec<(Rate, Rate)> {
    (0..rounds).map(|_| (a(), b())).collect()
}

/// One case: wall-clock rates (medians) and the ratio (median and min..max of the rounds'
/// ratios), the same per process CPU second; then system calls per frame and CPU per frame
/// of the working thread, then its context switches per frame, median (min..max).
fn line(case: &str, rounds: &[(Rate, Rate)], frames: bool, note: &str) {
    let (scale, unit): (fn(&Rate) -> f64, &str) = if frames {
        (|r| r.frames_per_s / 1e3, "kf/s")
    } else {
        (|r| r.bytes_per_s * 8e-9, "Gb/s")
    };
    let per_cpu: fn(&Rate) -> f64 = if frames {
        |r| r.frames_per_cpu_s / 1e3
    } else {
        |r| r.bytes_per_cpu_s * 8e-9
    };
    let a = |f: &dyn Fn(&Rate) -> f64| rounds.iter().map(|(a, _)| f(a)).collect::<Vec<_>>();
    let b = |f: &dyn Fn(&Rate) -> f64| rounds.iter().map(|(_, b)| f(b)).collect::<Vec<_>>();
    let ratio =
        |f: &dyn Fn(&Rate) -> f64| rounds.iter().map(|(a, b)| 100.0 * f(a) / f(b)).collect();
    println!(
        "{case:<40} {:>8.2} {:>8.2} {unit} wall {:>22}%   {:>8.2} {:>8.2} {unit}/CPU {:>22}%  {note}",
        median(a(&scale)),
        median(b(&scale)),
        spread(ratio(&scale), 1),
        median(a(&per_cpu)),
        median(b(&per_cpu)),
        spread(ratio(&per_cpu), 1),
    );
    // "a (min..max) vs b (min..max)" for one measure.
    let vs = |f: &dyn Fn(&Rate) -> f64, digits| {
        format!("{} vs {}", spread(a(f), digits), spread(b(f), digits))
    };
    println!(
        "{:<40} syscalls/frame TX {}, RX {}; CPU ns/frame {} = {}%",
        "",
        vs(&|r| r.tx_calls_per_frame, 3),
        vs(&|r| r.rx_calls_per_frame, 3),
        vs(&|r| r.cpu_ns_per_frame, 0),
        spread(ratio(&|r| r.cpu_ns_per_frame), 1),
    );
    println!(
        "{:<40} thread switches/frame: voluntary {}, involuntary {}",
        "",
        vs(&|r| r.voluntary_switches_per_frame, 4),
        vs(&|r| r.involuntary_switches_per_frame, 4),
    );
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing we need.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    probes::register();
    let secs: f64 = env_num("BENCH_SECS", 2.0);
    let rounds: usize = env_num("BENCH_ROUNDS", 5);
    // BENCH_ONLY=TEXT runs only the cases whose name contains TEXT.
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let src = RawSource {
        slots: env_num("BENCH_RAW_SLOTS", 1).max(1),
        per_handoff: env_num("BENCH_RAW_HANDOFF", 1).max(1),
        producer: match std::env::var("BENCH_RAW_PRODUCER").as_deref() {
            Ok("writes") => Producer::Writes,
            Ok("hands-over") => Producer::HandsOver,
            Ok("") | Err(_) => Producer::None,
            Ok(other) => {
                eprintln!("BENCH_RAW_PRODUCER: writes or hands-over, not {other:?}");
                std::process::exit(2);
            }
        },
    };
    let raw_loop = |kind, frame, secs, offset| raw(kind, frame, secs, offset, src);
    let wanted = |case: &str| case.contains(only.as_str());
    println!("vnet-sim throughput bench: {secs} s per run, median of {rounds} alternating runs");
    println!(
        "raw loop: {} slot(s), {}",
        src.slots,
        match src.producer {
            Producer::None => "sent as they are".to_string(),
            Producer::Writes => format!(
                "written by a producer thread and handed over {} at a time",
                src.per_handoff
            ),
            Producer::HandsOver => format!(
                "handed over by a producer thread {} at a time, not written",
                src.per_handoff
            ),
        }
    );
    println!(
        "case (a vs b): medians of a and b, then the ratio a/b as median (min..max) of the \
         rounds; wall clock, then per CPU second of the process; second line: calls per \
         frame and the working thread's CPU per frame; third: its context switches per frame"
    );
    // The worker pays this price at every sleep and at most batches it hands on; the raw
    // sender almost never does (README, "What a sleep and a wake-up cost on this machine").
    let price = |c: std::io::Result<wake_cost::WakeCost>| match c {
        Ok(c) => format!(
            "{:.0} ns of CPU each ({}; round trip {:.1} us wall, {} round trips)",
            c.cpu_ns_per_side,
            if cfg!(target_os = "linux") {
                format!("{:.2} sleeps per side", c.sleeps_per_side)
            } else {
                "sleeps not counted on this system".to_string()
            },
            c.wall_ns_per_round_trip / 1e3,
            c.round_trips
        ),
        Err(e) => format!("not measured: {e}"),
    };
    println!(
        "machine: one thread waking another and sleeping until it answers: unpinned {}; on one CPU {}",
        price(wake_cost::measure(20_000, Duration::from_secs(1))),
        price(wake_cost::measure_on_one_core(20_000, Duration::from_secs(1))),
    );
    for kind in [BuiltinKind::UnixGram, BuiltinKind::UnixStream] {
        let name = match kind {
            BuiltinKind::UnixGram => "unixgram",
            BuiltinKind::UnixStream => "unixstream",
        };
        // (frame size, offset, label, report frames/s, note)
        let cases = [
            (
                65536,
                ALIGNED,
                "64 KiB device vs raw socket",
                false,
                "(target >= 70%)",
            ),
            (
                65536,
                MISALIGNED,
                "64 KiB, frames 12 B off a line",
                false,
                "",
            ),
            (1514, ALIGNED, "1514 B device vs raw socket", true, ""),
        ];
        for (frame, offset, label, per_frame, note) in cases {
            if !wanted(&format!("{name} {label}")) {
                continue;
            }
            let runs = paired(
                rounds,
                || device(kind, frame, secs, offset),
                || raw_loop(kind, frame, secs, offset),
            );
            line(&format!("{name} {label}"), &runs, per_frame, note);
        }
        let case = format!("{name} 1514 B both ways vs raw TX loop");
        if wanted(&case) {
            let runs = paired(
                rounds,
                || device_both(kind, 1514, secs, false),
                || raw_loop(kind, 1514, secs, ALIGNED),
            );
            line(
                &case,
                &runs,
                true,
                "(target: <= 0.25 calls/frame, CPU <= 100%)",
            );
        }
        // The same load with the worker sending one frame per call (and reading one
        // datagram per call): the loop a VMM that never batches runs, in the worker's
        // seat, so the sleeps and wake-ups are the same on both sides.
        let case = format!("{name} 1514 B both ways vs one frame per call");
        if wanted(&case) {
            let runs = paired(
                rounds,
                || device_both(kind, 1514, secs, false),
                || device_both(kind, 1514, secs, true),
            );
            line(&case, &runs, true, "");
        }
    }
    // Recorder on vs off: the on run records every probe firing to a CSV.
    let dir = std::env::temp_dir().join(format!("vnet-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("trace.csv");
    for (frame, frames) in [(65536, false), (1514, true)] {
        if !wanted(&format!("unixgram {frame} B recorder on vs off")) {
            continue;
        }
        let runs = paired(
            rounds,
            || {
                probes::install_recorder(Recorder::create(&trace).unwrap());
                let r = device(BuiltinKind::UnixGram, frame, secs, ALIGNED);
                probes::take_recorder().unwrap().finish().unwrap();
                r
            },
            || device(BuiltinKind::UnixGram, frame, secs, ALIGNED),
        );
        line(
            &format!("unixgram {frame} B recorder on vs off"),
            &runs,
            frames,
            "",
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    if let Ok(l) = std::fs::read_to_string("/proc/loadavg") {
        println!(
            "load average: {}",
            l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
        );
    }
}
