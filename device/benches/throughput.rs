//! Throughput of the device driven by the simulated guest, as ratios against baselines
//! measured in the same run (absolute numbers on a shared machine mean little):
//!
//! 1. guest -> built-in sink, 64 KiB frames, vs a raw socketpair loop between two threads
//!    sending the same frames (the transport's own limit); target >= 70 %.
//! 2. the same with 1514-byte frames: frames/s and the ratio.
//! 3. the in-process trace recorder on vs off.
//!
//! Probes compiled in vs compiled out needs two builds: see `throughput-probes.sh`.
//!
//! `cargo bench -p vnet-device --bench throughput` (env BENCH_SECS, default 2, per run;
//! BENCH_ROUNDS, default 5: each measurement is the median of that many alternating runs).

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vnet_device::backend::unixgram;
use vnet_device::probes;
use vnet_device::recorder::Recorder;
use vnet_device::sim::workload::{Direction, Limit, Workload};
use vnet_device::sim::{run, BuiltinKind, SimConfig};

#[derive(Clone, Copy)]
struct Rate {
    bytes_per_s: f64,
    frames_per_s: f64,
}

fn gbit(r: Rate) -> f64 {
    r.bytes_per_s * 8.0 / 1e9
}

fn device(kind: BuiltinKind, frame: usize, secs: f64) -> Rate {
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
    }
}

/// Two threads, a socketpair, the same frames: what the transport itself carries.
fn raw(kind: BuiltinKind, frame: usize, secs: f64) -> Rate {
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Duration::from_secs_f64(secs);
    let buf = vec![0x5au8; frame];
    let (frames, elapsed) = match kind {
        BuiltinKind::UnixGram => {
            let (a, b) = UnixDatagram::pair().unwrap();
            // The device's datagram socket gets these buffers; the baseline must too, or it
            // measures a smaller pipe.
            set_buf(a.as_raw_fd(), libc::SO_SNDBUF, unixgram::DEFAULT_SNDBUF);
            set_buf(b.as_raw_fd(), libc::SO_RCVBUF, unixgram::DEFAULT_RCVBUF);
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
            while t.elapsed() < deadline {
                a.send(&buf).unwrap();
            }
            let elapsed = t.elapsed();
            stop.store(true, Ordering::Relaxed);
            (rx.join().unwrap(), elapsed)
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
            let mut framed = (frame as u32).to_be_bytes().to_vec();
            framed.extend_from_slice(&buf);
            let t = Instant::now();
            while t.elapsed() < deadline {
                a.write_all(&framed).unwrap();
            }
            let elapsed = t.elapsed();
            stop.store(true, Ordering::Relaxed);
            (rx.join().unwrap(), elapsed)
        }
    };
    let s = elapsed.as_secs_f64();
    Rate {
        bytes_per_s: (frames * frame as u64) as f64 / s,
        frames_per_s: frames as f64 / s,
    }
}

fn set_buf(fd: i32, opt: libc::c_int, bytes: usize) {
    let v = bytes as libc::c_int;
    // SAFETY: fd is an open socket; v outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            &v as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt: {}", std::io::Error::last_os_error());
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Alternates the two measurements `rounds` times so drift on a shared machine hits both.
fn paired(rounds: usize, mut a: impl FnMut() -> Rate, mut b: impl FnMut() -> Rate) -> (Rate, Rate) {
    let (mut ab, mut af, mut bb, mut bf) = (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        let x = a();
        ab.push(x.bytes_per_s);
        af.push(x.frames_per_s);
        let y = b();
        bb.push(y.bytes_per_s);
        bf.push(y.frames_per_s);
    }
    (
        Rate {
            bytes_per_s: median(ab),
            frames_per_s: median(af),
        },
        Rate {
            bytes_per_s: median(bb),
            frames_per_s: median(bf),
        },
    )
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
        "{:<44} {:>12} {:>12} {:>8}",
        "case", "device", "baseline", "ratio"
    );
    for kind in [BuiltinKind::UnixGram, BuiltinKind::UnixStream] {
        let name = match kind {
            BuiltinKind::UnixGram => "unixgram",
            BuiltinKind::UnixStream => "unixstream",
        };
        let (d, r) = paired(
            rounds,
            || device(kind, 65536, secs),
            || raw(kind, 65536, secs),
        );
        println!(
            "{:<44} {:>7.2} Gb/s {:>7.2} Gb/s {:>7.1}%  (target >= 70%)",
            format!("{name} 64 KiB guest->sink vs raw socketpair"),
            gbit(d),
            gbit(r),
            100.0 * d.bytes_per_s / r.bytes_per_s
        );
        let (d, r) = paired(
            rounds,
            || device(kind, 1514, secs),
            || raw(kind, 1514, secs),
        );
        println!(
            "{:<44} {:>7.0} kf/s {:>7.0} kf/s {:>7.1}%",
            format!("{name} 1514 B guest->sink vs raw socketpair"),
            d.frames_per_s / 1e3,
            r.frames_per_s / 1e3,
            100.0 * d.frames_per_s / r.frames_per_s
        );
    }
    // Recorder on vs off: the on run records every probe firing to a CSV.
    let dir = std::env::temp_dir().join(format!("vnet-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("trace.csv");
    let (on, off) = paired(
        rounds,
        || {
            probes::install_recorder(Recorder::create(&trace).unwrap());
            let r = device(BuiltinKind::UnixGram, 65536, secs);
            probes::take_recorder().unwrap().finish().unwrap();
            r
        },
        || device(BuiltinKind::UnixGram, 65536, secs),
    );
    println!(
        "{:<44} {:>7.2} Gb/s {:>7.2} Gb/s {:>7.1}%",
        "unixgram 64 KiB recorder on vs off",
        gbit(on),
        gbit(off),
        100.0 * on.bytes_per_s / off.bytes_per_s
    );
    let (on, off) = paired(
        rounds,
        || {
            probes::install_recorder(Recorder::create(&trace).unwrap());
            let r = device(BuiltinKind::UnixGram, 1514, secs);
            probes::take_recorder().unwrap().finish().unwrap();
            r
        },
        || device(BuiltinKind::UnixGram, 1514, secs),
    );
    println!(
        "{:<44} {:>7.0} kf/s {:>7.0} kf/s {:>7.1}%",
        "unixgram 1514 B recorder on vs off",
        on.frames_per_s / 1e3,
        off.frames_per_s / 1e3,
        100.0 * on.frames_per_s / off.frames_per_s
    );
    let _ = std::fs::remove_dir_all(&dir);
}
