//! A synthetic trace generator (benchmarks and tests): bulk TX/RX frames, write/read
//! wake-ups, guest kicks, timer firings and ENOBUFS episodes with known durations, in the
//! trace CSV (see the `vnet-trace-schema` crate).

use std::io::{self, Write};

/// xorshift64*: deterministic, fast, good enough for shaping synthetic load.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Writes `rows` data rows (plus the clock comment and header). Returns episodes written.
pub fn generate(out: &mut impl Write, rows: u64, seed: u64) -> io::Result<u64> {
    let mut rng = Rng::new(seed);
    let mut ts: u64 = 1_000_000_000;
    let fd = 7;
    let mut written = 0u64;
    let mut episodes = 0u64;
    let mut line = Vec::with_capacity(128);
    writeln!(out, "# clock mono_ns={ts} wall_ns=1772359200000000000")?;
    writeln!(out, "{}", crate::trace::HEADER)?;
    macro_rules! row {
        ($($arg:tt)*) => {{
            line.clear();
            let _ = writeln!(&mut line, $($arg)*);
            out.write_all(&line)?;
            written += 1;
        }};
    }
    while written < rows {
        ts += 2_000 + rng.below(3_000);
        let r = rng.below(1000);
        if r < 5 && rows - written >= 16 {
            // An episode: begin, a few wake-ups and retries, resolved, the frame written.
            episodes += 1;
            let start = ts;
            let len = 65226;
            row!("{ts},101,enobufs_begin,{fd},,{len},,,,55");
            let retries = 1 + (rng.below(100) / 90) + (rng.below(100) / 97);
            for attempt in 2..=retries {
                ts += 10_000 + rng.below(300_000);
                row!("{ts},101,kevent_write,{fd},,,{},,,", rng.below(len as u64));
                ts += 1_000;
                row!("{ts},101,enobufs_retry,{fd},,,,{attempt},,55");
            }
            ts += 5_000 + rng.below(400_000);
            match rng.below(3) {
                0 => row!("{ts},102,guest_kick,,0,,,,,"),
                1 => row!("{ts},101,timer_fired,,,,50,,,"),
                _ => row!(
                    "{ts},101,kevent_write,{fd},,,{},,,",
                    len + rng.below(100_000) as i64
                ),
            }
            ts += 1_000;
            row!(
                "{ts},101,enobufs_resolved,{fd},,{len},,{retries},{},",
                ts - start
            );
            ts += 500;
            row!("{ts},101,tx_frame,{fd},,{len},,,,");
        } else if r < 480 {
            row!(
                "{ts},101,tx_frame,{fd},,{},,,,",
                if rng.below(4) == 0 { 66 } else { 65226 }
            );
        } else if r < 900 {
            row!(
                "{ts},101,rx_frame,{fd},,{},,,,",
                if rng.below(4) == 0 { 66 } else { 65550 }
            );
        } else if r < 960 {
            row!("{ts},101,kevent_write,{fd},,,{},,,", rng.below(200_000));
        } else if r < 985 {
            row!("{ts},101,kevent_read,{fd},,,{},,,", rng.below(70_000));
        } else {
            row!("{ts},102,guest_kick,,{},,,,,", rng.below(2));
        }
    }
    Ok(episodes)
}

/// Rows as bpftrace prints them from a busy capture: each CPU has its own buffer, and the
/// buffers are printed one after the other, so time order holds only per CPU. Lines after the
/// first two (clock comment, header) are given to `cpus` CPUs at random and written in blocks
/// of `block` lines, CPU by CPU: within a block, every CPU after the first goes back in time.
pub struct PerCpu<W: Write> {
    out: W,
    cpus: Vec<Vec<u8>>,
    rng: Rng,
    pending: Vec<u8>,
    lines: u64,
    block: u64,
}

impl<W: Write> PerCpu<W> {
    pub fn new(out: W, cpus: usize, block: u64, seed: u64) -> PerCpu<W> {
        PerCpu {
            out,
            cpus: vec![Vec::new(); cpus.max(1)],
            rng: Rng::new(seed ^ 0x5eed),
            pending: Vec::new(),
            lines: 0,
            block: block.max(1),
        }
    }

    fn drain(&mut self) -> io::Result<()> {
        for buf in &mut self.cpus {
            self.out.write_all(buf)?;
            buf.clear();
        }
        Ok(())
    }

    /// Writes what is still buffered and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        let rest = std::mem::take(&mut self.pending);
        self.cpus[0].extend_from_slice(&rest);
        self.drain()?;
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for PerCpu<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(data);
        let mut start = 0;
        while let Some(i) = memchr::memchr(b'\n', &self.pending[start..]) {
            let line = start..start + i + 1;
            start += i + 1;
            self.lines += 1;
            if self.lines <= 2 {
                self.out.write_all(&self.pending[line])?;
                continue;
            }
            let cpu = self.rng.below(self.cpus.len() as u64) as usize;
            let (pending, cpus) = (&self.pending, &mut self.cpus);
            cpus[cpu].extend_from_slice(&pending[line]);
            if (self.lines - 2) % self.block == 0 {
                self.drain()?;
            }
        }
        self.pending.drain(..start);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
