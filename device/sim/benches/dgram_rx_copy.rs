//! Does learning a datagram's size before its bytes pay on unixgram RX? (issue 15: "RX
//! without the intermediate copy ... for datagrams, measure whether learning the size first
//! pays"). A measurement of receiver strategies on a unix datagram socketpair, not of the
//! device: a sender thread blasts frames, a receiver thread takes them into a simulated
//! guest RX ring of 256 posted buffers with a 12-byte virtio-net header before each frame.
//!
//! Strategies, each measured in the same run, alternating round by round:
//! - `a-bounce`: today's device path (`device/rx.rs` with `backend/mmsg.rs`): `recvmmsg` of
//!   up to 32 datagrams into device-owned bounce buffers of `MAX_FRAME` bytes, then a copy
//!   of each frame into as many guest buffers as it needs.
//! - `b-peek`: `recv(MSG_PEEK | MSG_TRUNC)` with no buffer to learn the next datagram's
//!   size, then one `recvmsg` whose iovec is scattered over exactly the guest buffers the
//!   frame needs: no copy in user space, two system calls per frame.
//! - `c-direct`: only when every posted buffer holds the largest frame (12 + `MAX_FRAME`
//!   bytes, a guest without mergeable buffers): `recvmmsg` of up to 32 datagrams straight
//!   into 32 guest buffers, no peek, no copy. A datagram larger than the buffer is cut by the
//!   kernel and flagged `MSG_TRUNC`; it is counted and dropped (the bench's sender never
//!   sends one, and the receiver fails if it sees one).
//!
//! Guest buffer shapes: mergeable buffers of 1526 and 4096 bytes, and one big buffer of
//! 65562 bytes (12 + `MAX_FRAME`). Every frame carries its sequence number, checked in the
//! guest buffer after the receive, so every strategy is seen to deliver every frame, in order.
//!
//! Per case: receiver thread CPU ns per frame (`CLOCK_THREAD_CPUTIME_ID`), median and
//! min..max over the rounds; receiver system calls per frame; and the ratio to `a-bounce`
//! with the same frame size and buffer shape, taken round by round (median, min..max).
//! Ratios only, no timed asserts. Linux only (`recvmmsg`); elsewhere it prints one line.
//!
//! `cargo bench -p vnet-sim --bench dgram_rx_copy` (env BENCH_ROUNDS, default 9;
//! BENCH_SCALE, default 1: multiplies the frames per case, 40000 at 1514 B and 4000 at
//! 65226 B). Without `--bench` (`cargo test --benches`) it runs one short round that only
//! checks every strategy delivers every frame in order.

#[cfg(target_os = "linux")]
fn main() {
    linux::main();
}

#[cfg(not(target_os = "linux"))]
fn main() {
    println!("dgram_rx_copy: Linux only (recvmmsg); nothing measured");
}

#[cfg(target_os = "linux")]
mod linux {
    use std::os::fd::{AsRawFd, RawFd};
    use std::os::unix::net::UnixDatagram;
    use std::thread;

    use vnet_device::frame::MAX_FRAME;

    /// The virtio-net header with `num_buffers` (mergeable RX buffers, version 1).
    const HDR: usize = 12;
    /// Posted RX buffers in the simulated guest ring (a common virtqueue size).
    const RING: usize = 256;
    /// Datagrams per `recvmmsg`, as the device's `MAX_BATCH_FRAMES`.
    const BATCH: usize = 32;
    const SOCK_BUF: libc::c_int = 7 * 1024 * 1024;

    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Strategy {
        Bounce,
        Peek,
        Direct,
    }

    impl Strategy {
        fn name(self) -> &'static str {
            match self {
                Strategy::Bounce => "a-bounce",
                Strategy::Peek => "b-peek",
                Strategy::Direct => "c-direct",
            }
        }
    }

    #[derive(Clone, Copy)]
    struct Case {
        size: usize,
        shape: usize,
        strategy: Strategy,
    }

    /// One measured run of a case.
    #[derive(Clone, Copy)]
    struct Sample {
        cpu_ns_per_frame: f64,
        syscalls_per_frame: f64,
    }

    /// The simulated guest: RING posted buffers of `shape` bytes each, used in ring order.
    struct Guest {
        mem: Vec<u8>,
        shape: usize,
        next: usize,
    }

    impl Guest {
        fn new(shape: usize) -> Guest {
            Guest {
                mem: vec![0u8; shape * RING],
                shape,
                next: 0,
            }
        }

        /// Buffers a frame of `len` bytes needs, its header included.
        fn needs(&self, len: usize) -> usize {
            (HDR + len).div_ceil(self.shape)
        }

        fn buf_ptr(&mut self, i: usize) -> *mut u8 {
            let at = (i % RING) * self.shape;
            self.mem[at..at + self.shape].as_mut_ptr()
        }

        /// iovecs covering the next buffers for `len` frame bytes, after the header room
        /// in the first; returns the index of the first buffer.
        fn scatter(&mut self, len: usize, iovs: &mut Vec<libc::iovec>) -> usize {
            let first = self.next;
            let k = self.needs(len);
            iovs.clear();
            let mut left = len;
            for j in 0..k {
                let skip = if j == 0 { HDR } else { 0 };
                let take = (self.shape - skip).min(left);
                // SAFETY: skip < shape, so the pointer stays inside the buffer.
                let p = unsafe { self.buf_ptr(first + j).add(skip) };
                iovs.push(libc::iovec {
                    iov_base: p.cast(),
                    iov_len: take,
                });
                left -= take;
            }
            self.next += k;
            first
        }

        /// The device's header write and the guest's look at the frame: num_buffers in the
        /// header, then the sequence number the sender put in the frame's first 8 bytes.
        fn complete(&mut self, first: usize, len: usize) -> u64 {
            let k = self.needs(len) as u16;
            let at = (first % RING) * self.shape;
            self.mem[at..at + HDR].fill(0);
            self.mem[at + 10..at + 12].copy_from_slice(&k.to_le_bytes());
            let mut seq = [0u8; 8];
            seq.copy_from_slice(&self.mem[at + HDR..at + HDR + 8]);
            u64::from_le_bytes(seq)
        }

        /// Today's copy: the frame from a bounce buffer into the next buffers.
        fn copy_in(&mut self, frame: &[u8]) -> usize {
            let first = self.next;
            let k = self.needs(frame.len());
            let mut done = 0;
            for j in 0..k {
                let skip = if j == 0 { HDR } else { 0 };
                let take = (self.shape - skip).min(frame.len() - done);
                let at = ((first + j) % RING) * self.shape + skip;
                self.mem[at..at + take].copy_from_slice(&frame[done..done + take]);
                done += take;
            }
            self.next += k;
            first
        }
    }

    fn thread_cpu_ns() -> u64 {
        let ns = vnet_device::thread_usage::thread_cpu_ns();
        assert!(ns > 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
        ns
    }

    fn set_buf(fd: RawFd, opt: libc::c_int) {
        // SAFETY: the option value is a c_int read by the kernel for the call.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&SOCK_BUF as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }

    fn fail(what: &str) -> ! {
        panic!("{what}: {}", std::io::Error::last_os_error());
    }

    /// Sends `frames` datagrams of `size` bytes, each starting with its sequence number.
    fn sender(sock: UnixDatagram, size: usize, frames: u64) {
        let mut buf = vec![0xa5u8; size];
        for seq in 0..frames {
            buf[..8].copy_from_slice(&seq.to_le_bytes());
            sock.send(&buf).expect("send");
        }
    }

    /// Receives `frames` datagrams with the case's strategy; the receiver's thread CPU and
    /// system calls per frame.
    fn receive(fd: RawFd, case: Case, frames: u64) -> Sample {
        let mut guest = Guest::new(case.shape);
        let mut bounce: Vec<Vec<u8>> = Vec::new();
        if case.strategy == Strategy::Bounce {
            bounce = (0..BATCH).map(|_| vec![0u8; MAX_FRAME]).collect();
        }
        let mut msgs: Vec<libc::mmsghdr> = (0..BATCH)
            // SAFETY: a zeroed mmsghdr is valid (no name, no control data, no iovecs).
            .map(|_| unsafe { std::mem::zeroed() })
            .collect();
        let mut iovs: Vec<libc::iovec> = Vec::with_capacity(BATCH.max(64));
        let mut firsts = [0usize; BATCH];
        let mut seq = 0u64;
        let mut calls = 0u64;
        let check = |guest: &mut Guest, seq: &mut u64, first: usize, len: usize| {
            assert_eq!(len, case.size, "frame length");
            let got = guest.complete(first, len);
            assert_eq!(got, *seq, "frames out of order or lost");
            *seq += 1;
        };
        let t0 = thread_cpu_ns();
        while seq < frames {
            match case.strategy {
                Strategy::Bounce | Strategy::Direct => {
                    let n = (BATCH as u64).min(frames - seq) as usize;
                    iovs.clear();
                    for i in 0..n {
                        let (p, len) = if case.strategy == Strategy::Bounce {
                            (bounce[i].as_mut_ptr(), MAX_FRAME)
                        } else {
                            // One whole big buffer per datagram; header room first.
                            firsts[i] = guest.next;
                            let p = guest.buf_ptr(guest.next);
                            guest.next += 1;
                            // SAFETY: the buffer is HDR + MAX_FRAME bytes long.
                            (unsafe { p.add(HDR) }, guest.shape - HDR)
                        };
                        iovs.push(libc::iovec {
                            iov_base: p.cast(),
                            iov_len: len,
                        });
                    }
                    for (m, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
                        m.msg_hdr.msg_iov = iov;
                        m.msg_hdr.msg_iovlen = 1;
                        m.msg_hdr.msg_flags = 0;
                    }
                    calls += 1;
                    // SAFETY: the first n messages each point at one iovec over memory
                    // writable for the call (a bounce buffer or a guest buffer).
                    let r = unsafe {
                        libc::recvmmsg(
                            fd,
                            msgs.as_mut_ptr(),
                            n as libc::c_uint,
                            libc::MSG_WAITFORONE | libc::MSG_TRUNC,
                            std::ptr::null_mut(),
                        )
                    };
                    if r < 0 {
                        fail("recvmmsg");
                    }
                    let r = r as usize;
                    if case.strategy == Strategy::Direct {
                        // Buffers handed out for datagrams that did not come go back.
                        guest.next -= n - r;
                    }
                    for (i, m) in msgs[..r].iter().enumerate() {
                        let len = m.msg_len as usize;
                        // A cut datagram would be dropped and counted; none is sent here.
                        assert_eq!(m.msg_hdr.msg_flags & libc::MSG_TRUNC, 0, "oversize");
                        let first = if case.strategy == Strategy::Bounce {
                            guest.copy_in(&bounce[i][..len])
                        } else {
                            firsts[i]
                        };
                        check(&mut guest, &mut seq, first, len);
                    }
                }
                Strategy::Peek => {
                    calls += 1;
                    // SAFETY: no buffer: MSG_PEEK | MSG_TRUNC returns the datagram's length
                    // and copies nothing.
                    let len = unsafe {
                        libc::recv(
                            fd,
                            std::ptr::null_mut(),
                            0,
                            libc::MSG_PEEK | libc::MSG_TRUNC,
                        )
                    };
                    if len < 0 {
                        fail("recv MSG_PEEK");
                    }
                    let len = len as usize;
                    let first = guest.scatter(len, &mut iovs);
                    // SAFETY: a zeroed msghdr is valid (no name, no control data).
                    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
                    msg.msg_iov = iovs.as_mut_ptr();
                    msg.msg_iovlen = iovs.len() as _;
                    calls += 1;
                    // SAFETY: msg points at iovecs over guest buffers writable for the call.
                    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
                    if n < 0 {
                        fail("recvmsg");
                    }
                    assert_eq!(n as usize, len, "the peeked datagram");
                    check(&mut guest, &mut seq, first, len);
                }
            }
        }
        let cpu = thread_cpu_ns() - t0;
        Sample {
            cpu_ns_per_frame: cpu as f64 / frames as f64,
            syscalls_per_frame: calls as f64 / frames as f64,
        }
    }

    fn run(case: Case, frames: u64) -> Sample {
        let (rx, tx) = UnixDatagram::pair().expect("socketpair");
        set_buf(tx.as_raw_fd(), libc::SO_SNDBUF);
        set_buf(rx.as_raw_fd(), libc::SO_RCVBUF);
        let size = case.size;
        let send = thread::spawn(move || sender(tx, size, frames));
        let recv = thread::spawn(move || receive(rx.as_raw_fd(), case, frames));
        let s = recv.join().expect("receiver");
        send.join().expect("sender");
        s
    }

    fn median(v: &mut [f64]) -> f64 {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    }

    fn spread(v: &[f64]) -> (f64, f64) {
        v.iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)))
    }

    fn env_num(name: &str, default: u64) -> u64 {
        match std::env::var(name) {
            Ok(s) => s.parse().unwrap_or_else(|_| {
                eprintln!("dgram_rx_copy: {name}={s} is not a whole number");
                std::process::exit(2)
            }),
            Err(_) => default,
        }
    }

    fn loadavg() -> String {
        std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| "?".into())
    }

    pub fn main() {
        if std::env::args().any(|a| a == "--list") {
            return;
        }
        // `cargo bench` passes --bench; `cargo test --benches` does not: there, one short
        // round checks that every strategy delivers every frame in order, and measures nothing.
        let measure = std::env::args().any(|a| a == "--bench");
        let (rounds, scale, div) = if measure {
            (
                env_num("BENCH_ROUNDS", 9).max(1) as usize,
                env_num("BENCH_SCALE", 1).max(1),
                1,
            )
        } else {
            (1, 1, 100)
        };
        let big = HDR + MAX_FRAME;
        let mut cases = Vec::new();
        for size in [1514usize, 65226] {
            for shape in [1526usize, 4096, big] {
                cases.push(Case {
                    size,
                    shape,
                    strategy: Strategy::Bounce,
                });
                cases.push(Case {
                    size,
                    shape,
                    strategy: Strategy::Peek,
                });
                if shape >= big {
                    cases.push(Case {
                        size,
                        shape,
                        strategy: Strategy::Direct,
                    });
                }
            }
        }
        println!(
            "dgram_rx_copy: {rounds} rounds, {} cases, load average before {}",
            cases.len(),
            loadavg()
        );
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); cases.len()];
        for round in 0..rounds {
            // Rotate the starting case so no strategy always runs first or last.
            for k in 0..cases.len() {
                let i = (k + round) % cases.len();
                let c = cases[i];
                let frames = scale * (if c.size < 4096 { 40_000 } else { 4_000 }) / div;
                samples[i].push(run(c, frames));
            }
        }
        println!("load average after {}", loadavg());
        if !measure {
            println!("dgram_rx_copy: smoke run (no --bench): every case delivered every frame in order; nothing measured");
            return;
        }
        println!(
            "| frame B | guest buffers B | strategy | receiver CPU ns/frame median (min..max) | syscalls/frame | vs a-bounce median (min..max) |"
        );
        println!("|---|---|---|---|---|---|");
        for (i, c) in cases.iter().enumerate() {
            let mut cpu: Vec<f64> = samples[i].iter().map(|s| s.cpu_ns_per_frame).collect();
            let mut sys: Vec<f64> = samples[i].iter().map(|s| s.syscalls_per_frame).collect();
            let (lo, hi) = spread(&cpu);
            let base = cases
                .iter()
                .position(|b| {
                    b.size == c.size && b.shape == c.shape && b.strategy == Strategy::Bounce
                })
                .expect("every shape has a bounce case");
            let mut ratio: Vec<f64> = samples[i]
                .iter()
                .zip(&samples[base])
                .map(|(s, b)| s.cpu_ns_per_frame / b.cpu_ns_per_frame)
                .collect();
            let (rlo, rhi) = spread(&ratio);
            let (slo, shi) = spread(&sys);
            println!(
                "| {} | {} | {} | {:.0} ({:.0}..{:.0}) | {:.3} ({:.3}..{:.3}) | {:.1}% ({:.1}..{:.1}) |",
                c.size,
                if c.shape >= big {
                    format!("{} (one big)", c.shape)
                } else {
                    format!("{} (mergeable)", c.shape)
                },
                c.strategy.name(),
                median(&mut cpu),
                lo,
                hi,
                median(&mut sys),
                slo,
                shi,
                100.0 * median(&mut ratio),
                100.0 * rlo,
                100.0 * rhi,
            );
        }
    }
}
