//! One-way latency per frame: guest posting a TX chain to the proxy receiving the frame,
//! and the proxy sending a frame to the guest reaping it, split into ACKs and data.
//! Head-of-line blocking (a small ACK queued behind a deferred 64 KiB frame) shows here
//! and nowhere else.
//!
//! Memory is bounded whatever the run's length: the sender writes its timestamp into a
//! fixed table slot chosen by (kind, stream, seq), tagged with that key; the receiver takes
//! it back if the tag still matches (a slot reused by a later frame before the first
//! arrived counts as `unmatched`, not as a wrong sample). Samples go into log-linear
//! histograms (2^-5 relative resolution), never a list.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use super::integrity::{Kind, Stamp};

/// Slots per direction: frames of one direction in flight at once beyond this (per key
/// spread) are reported as unmatched.
const SLOTS: usize = 1 << 16;

/// Sub-buckets per power of two (2^SUB_BITS): about 3% resolution.
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Values up to 2^40 ns (18 minutes); larger ones land in the last bucket.
const BUCKETS: usize = ((40 - SUB_BITS as usize) + 1) * SUB as usize;

/// A log-linear histogram of nanosecond values.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }
}

fn bucket(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - SUB_BITS;
    let idx = ((shift as u64 + 1) * SUB + ((v >> shift) - SUB)) as usize;
    idx.min(BUCKETS - 1)
}

/// The largest value that falls into bucket `i`.
fn bucket_high(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let shift = i / SUB - 1;
    let low = (SUB + i % SUB) << shift;
    low + (1u64 << shift) - 1
}

impl Histogram {
    pub fn record(&mut self, ns: u64) {
        self.counts[bucket(ns)] += 1;
        self.total += 1;
        self.max = self.max.max(ns);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    /// The `q`-quantile (0..=1) as the upper edge of its bucket, capped at the maximum
    /// seen; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_high(i).min(self.max);
            }
        }
        self.max
    }

    /// Share (0..=1) of the samples above `ns`, at bucket resolution: samples in the
    /// bucket holding `ns` count as not above. 0 when empty.
    pub fn share_above(&self, ns: u64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let above: u64 = self.counts[bucket(ns) + 1..].iter().sum();
        above as f64 / self.total as f64
    }

    pub fn stats(&self) -> LatencyStats {
        LatencyStats {
            count: self.total,
            p50: self.quantile(0.50) as f64 / 1e3,
            p99: self.quantile(0.99) as f64 / 1e3,
            max: self.max as f64 / 1e3,
            over_1ms: self.share_above(1_000_000),
        }
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }
}

/// p50 / p99 / max of one class, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencyStats {
    pub count: u64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    /// Share (0..=1) of the frames delayed more than 1 ms: steadier than p99 when about
    /// 1% of the frames land in a proxy pause, where p99 jumps between the fast frames
    /// and the paused ones from run to run.
    pub over_1ms: f64,
}

/// The summary's `latency_us`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub tx_ack: LatencyStats,
    pub tx_data: LatencyStats,
    pub rx_ack: LatencyStats,
    pub rx_data: LatencyStats,
    /// Frames whose send time was overwritten before they arrived (not measured).
    pub unmatched: u64,
}

/// ACK and data histograms of one direction, kept by its receiving thread.
#[derive(Debug, Clone, Default)]
pub struct ClassHistograms {
    pub ack: Histogram,
    pub data: Histogram,
    pub unmatched: u64,
}

/// Send times of one direction's frames in flight.
pub struct SendTimes {
    epoch: Instant,
    tags: Vec<AtomicU64>,
    times: Vec<AtomicU64>,
}

fn key(s: &Stamp) -> (usize, u64) {
    let kind = match s.kind {
        Kind::Data => 0u64,
        Kind::Ack => 1,
    };
    // Tag 0 means empty; the tag keeps the whole key, so slot collisions are detected.
    let tag = (kind << 63 | u64::from(s.stream) << 47 | (s.seq & ((1 << 47) - 1))) + 1;
    let slot = s
        .seq
        .wrapping_add(u64::from(s.stream).wrapping_mul(7919))
        .wrapping_add(kind * 32_768) as usize
        % SLOTS;
    (slot, tag)
}

impl SendTimes {
    pub fn new(epoch: Instant) -> SendTimes {
        SendTimes {
            epoch,
            tags: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            times: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// The sender is about to hand the frame stamped `s` on.
    pub fn sent(&self, s: &Stamp) {
        let (slot, tag) = key(s);
        // Tag cleared first so a receiver never pairs the new time with the old tag.
        self.tags[slot].store(0, Ordering::Release);
        self.times[slot].store(self.now(), Ordering::Release);
        self.tags[slot].store(tag, Ordering::Release);
    }

    /// The frame stamped `s` arrived: its one-way latency goes into `h`.
    pub fn arrived(&self, s: &Stamp, h: &mut ClassHistograms) {
        let now = self.now();
        let (slot, tag) = key(s);
        if self.tags[slot].load(Ordering::Acquire) != tag {
            h.unmatched += 1;
            return;
        }
        let t = self.times[slot].load(Ordering::Acquire);
        if self.tags[slot].load(Ordering::Acquire) != tag {
            h.unmatched += 1;
            return;
        }
        let ns = now.saturating_sub(t);
        match s.kind {
            Kind::Ack => h.ack.record(ns),
            Kind::Data => h.data.record(ns),
        }
    }
}

/// One direction's measurement: send times, and the histograms its receiving thread fills
/// (behind a lock only that thread takes while the run goes, so it is never contended).
pub struct OneWay {
    times: SendTimes,
    hist: Mutex<ClassHistograms>,
}

impl OneWay {
    pub fn new(epoch: Instant) -> OneWay {
        OneWay {
            times: SendTimes::new(epoch),
            hist: Mutex::new(ClassHistograms::default()),
        }
    }

    pub fn sent(&self, s: &Stamp) {
        self.times.sent(s);
    }

    pub fn arrived(&self, s: &Stamp) {
        let mut h = self.hist.lock().unwrap_or_else(|e| e.into_inner());
        self.times.arrived(s, &mut h);
    }

    pub fn histograms(&self) -> ClassHistograms {
        self.hist.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl LatencySummary {
    pub fn new(tx: &ClassHistograms, rx: &ClassHistograms) -> LatencySummary {
        LatencySummary {
            tx_ack: tx.ack.stats(),
            tx_data: tx.data.stats(),
            rx_ack: rx.ack.stats(),
            rx_data: rx.data.stats(),
            unmatched: tx.unmatched + rx.unmatched,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for v in (0..100_000u64).chain([1 << 20, 1 << 35, u64::MAX]) {
            let b = bucket(v);
            assert!(b >= last, "{v}");
            last = b;
            let hi = bucket_high(b);
            if b < BUCKETS - 1 {
                assert!(hi >= v, "{v}: bucket {b} tops at {hi}");
                assert!(hi - v <= v / 16 + 1, "{v}: {hi} too coarse");
            }
        }
    }

    #[test]
    fn quantiles_of_a_known_distribution() {
        let mut h = Histogram::default();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let s = h.stats();
        assert_eq!(s.count, 1000);
        assert!((s.p50 - 500.0).abs() <= 500.0 * 0.04, "{s:?}");
        assert!((s.p99 - 990.0).abs() <= 990.0 * 0.04, "{s:?}");
        assert_eq!(s.max, 1000.0);
        assert_eq!(Histogram::default().stats().p99, 0.0);
        // 1..=1000 us: 1 ms itself is not above 1 ms, so nothing is; above 500 us, half.
        assert_eq!(s.over_1ms, 0.0);
        let half = h.share_above(500_000);
        assert!((half - 0.5).abs() <= 0.02, "{half}");
        h.record(5_000_000);
        assert!((h.stats().over_1ms - 1.0 / 1001.0).abs() < 1e-9);
        assert_eq!(Histogram::default().share_above(1), 0.0);
    }

    #[test]
    fn send_times_pair_up_and_detect_overwrites() {
        let t = SendTimes::new(Instant::now());
        let st = |kind, seq| Stamp {
            stream: 3,
            kind,
            seq,
            len: 100,
        };
        let mut h = ClassHistograms::default();
        t.sent(&st(Kind::Ack, 1));
        t.sent(&st(Kind::Data, 1));
        t.arrived(&st(Kind::Ack, 1), &mut h);
        t.arrived(&st(Kind::Data, 1), &mut h);
        assert_eq!((h.ack.count(), h.data.count(), h.unmatched), (1, 1, 0));
        // The same slot taken by a frame SLOTS later: the old frame is unmatched.
        t.sent(&st(Kind::Data, 2));
        t.sent(&st(Kind::Data, 2 + SLOTS as u64));
        t.arrived(&st(Kind::Data, 2), &mut h);
        assert_eq!(h.unmatched, 1);
    }
}
