//! A synthetic trace generator (benchmarks and tests): bulk TX/RX frames, write/read
//! wake-ups, guest kicks, timer firings and ENOBUFS episodes with known durations, in the
//! trace CSV of design.md.

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
