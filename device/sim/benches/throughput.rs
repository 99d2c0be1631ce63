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
//!
//! Both sides send frames from the same place relative to a cache line: 64 bytes into a
//! page by default (the simulated guest's default), and again 12 bytes in (a virtio header
//! at the start of the buffer, the frame straight after it), where the kernel's copy of a
//! misaligned source costs both sides alike.
//!
//! Probes compiled in vs compiled out needs two builds: see `throughput-probes.sh`.
//!
//! `cargo bench -p vnet-sim --bench throughput` (env BENCH_SECS, default 2, per run;
//! BENCH_ROUNDS, default 5: each measurement is the median of that many alternating runs).

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vnet_device::backend::unixgram;
use vnet_device::probes;
use vnet_device::recorder::Recorder;
use vnet_device::sockopt::{set_sock_buf, SockBuf};
use vnet_sim::run::process_cpu_seconds;
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
}

/// Where frames start relative to a page: the device's default, and a misaligned one.
const ALIGNED: usize = 64;
const MISALIGNED: usize = 12;

fn device(kind: BuiltinKind, frame: usize, secs: f64, offset: usize) -> Rate {
    let mut cfg = SimConfig {
        workload: Workload {
            direction: Direction::Tx,
            tx_size: frame,
            ack_size: 0,
            streams: 8,
            limit: Limit::Duration(Duration::from_secs_f64(secs)),
            ..Workload::default()
        },
        backend: kind,
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
    Rate {
        bytes_per_s: s.tx_bytes as f64 / s.seconds,
        frames_per_s: s.tx_frames as f64 / s.seconds,
        bytes_per_cpu_s: s.tx_bytes as f64 / s.cpu_seconds,
        frames_per_cpu_s: s.tx_frames as f64 / s.cpu_seconds,
    }
}

/// Two threads, the same sockets as the device and its proxy (a bound receiver for
/// datagrams, a socketpair for streams), the same frames: what the transport carries.
fn raw(kind: BuiltinKind, frame: usize, secs: f64, offset: usize) -> Rate {
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Duration::from_secs_f64(secs);
    let mut mem = vec![0x5au8; frame + 2 * 4096];
    let page = mem.as_ptr().align_offset(4096);
    let at = page + offset;
    let cpu0 = process_cpu_seconds();
    let (frames, elapsed) = match kind {
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
                let mut n = 0u64;
                while !st.load(Ordering::Relaxed) {
                    if b.recv(&mut r).is_ok() {
                        n += 1;
                    }
                }
                n
            });
            let t = Instant::now();
            let buf = &mem[at..at + frame];
            while t.elapsed() < deadline {
                a.send(buf).unwrap();
            }
            let elapsed = t.elapsed();
            stop.store(true, Ordering::Relaxed);
            let n = rx.join().unwrap();
            let _ = std::fs::remove_dir_all(&dir);
            (n, elapsed)
        }
        BuiltinKind::UnixStream => {
            let (mut a, mut b) = UnixStream::pair().unwrap();
            b.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            let st = stop.clone();
            let rx = std::thread::spawn(move || {
                let mut r = vec![0u8; 70000];
                let mut n = 0u64;
                let mut len = [0u8; 4];
                while !st.load(Ordering::Relaxed) {
                    if b.read_exact(&mut len).is_err() {
                        continue;
                    }
                    let l = u32::from_be_bytes(len) as usize;
                    if l > r.len() {
                        // Lost sync after a timeout mid-frame: only happens once the
                        // sender stopped, so the count is complete.
                        break;
                    }
                    if b.read_exact(&mut r[..l]).is_ok() {
                        n += 1;
                    }
                }
                n
            });
            // The length prefix right before the frame, the frame where the device's is.
            mem[at - 4..at].copy_from_slice(&(frame as u32).to_be_bytes());
            let framed = &mem[at - 4..at + frame];
            let t = Instant::now();
            while t.elapsed() < deadline {
                a.write_all(framed).unwrap();
            }
            let elapsed = t.elapsed();
            stop.store(true, Ordering::Relaxed);
            (rx.join().unwrap(), elapsed)
        }
    };
    let cpu = process_cpu_seconds() - cpu0;
    let s = elapsed.as_secs_f64();
    Rate {
        bytes_per_s: (frames * frame as u64) as f64 / s,
        frames_per_s: frames as f64 / s,
        bytes_per_cpu_s: (frames * frame as u64) as f64 / cpu,
        frames_per_cpu_s: frames as f64 / cpu,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Alternates the two measurements `rounds` times so drift on a shared machine hits both;
/// each field is the median over the rounds.
fn paired(rounds: usize, mut a: impl FnMut() -> Rate, mut b: impl FnMut() -> Rate) -> (Rate, Rate) {
    let (mut xs, mut ys) = (vec![], vec![]);
    for _ in 0..rounds {
        xs.push(a());
        ys.push(b());
    }
    let med = |v: &[Rate]| Rate {
        bytes_per_s: median(v.iter().map(|r| r.bytes_per_s).collect()),
        frames_per_s: median(v.iter().map(|r| r.frames_per_s).collect()),
        bytes_per_cpu_s: median(v.iter().map(|r| r.bytes_per_cpu_s).collect()),
        frames_per_cpu_s: median(v.iter().map(|r| r.frames_per_cpu_s).collect()),
    };
    (med(&xs), med(&ys))
}

/// One result line: wall-clock rates and ratio, then per-CPU-second rates and ratio.
fn line(case: &str, a: Rate, b: Rate, frames: bool, note: &str) {
    let (wa, wb, ca, cb, unit) = if frames {
        (
            a.frames_per_s / 1e3,
            b.frames_per_s / 1e3,
            a.frames_per_cpu_s / 1e3,
            b.frames_per_cpu_s / 1e3,
            "kf/s",
        )
    } else {
        (
            a.bytes_per_s * 8e-9,
            b.bytes_per_s * 8e-9,
            a.bytes_per_cpu_s * 8e-9,
            b.bytes_per_cpu_s * 8e-9,
            "Gb/s",
        )
    };
    println!(
        "{case:<40} {wa:>8.2} {wb:>8.2} {unit} {:>6.1}%   {ca:>8.2} {cb:>8.2} {unit}/CPU {:>6.1}%  {note}",
        100.0 * wa / wb,
        100.0 * ca / cb
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
    println!("vnet-sim throughput bench: {secs} s per run, median of {rounds} alternating runs");
    println!(
        "{:<40} {:>8} {:>8} {:>4} {:>7}   {:>8} {:>8} {:>8} {:>7}",
        "case (a vs b)", "a", "b", "", "wall", "a", "b", "per CPU", "ratio"
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
            let (d, r) = paired(
                rounds,
                || device(kind, frame, secs, offset),
                || raw(kind, frame, secs, offset),
            );
            line(&format!("{name} {label}"), d, r, per_frame, note);
        }
    }
    // Recorder on vs off: the on run records every probe firing to a CSV.
    let dir = std::env::temp_dir().join(format!("vnet-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("trace.csv");
    for (frame, frames) in [(65536, false), (1514, true)] {
        let (on, off) = paired(
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
            on,
            off,
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
