//! What traffic a run carries: sizes, streams, direction, rate, and when it ends.
//!
//! The default is shaped like `iperf3 --bidir -P 8`: the guest sends 65226-byte TSO frames
//! on 8 streams, the proxy sends 65550-byte frames back, and each side answers every second
//! data frame it receives (TCP's delayed ACK) with a 66-byte ACK interleaved with its own
//! data.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::integrity::ACK_STREAM;

/// Bytes of Ethernet + IPv4 + UDP header in every frame; the integrity stamp follows.
pub const SIM_HDR: usize = 14 + 20 + 8;
/// Smallest frame that holds the headers and a stamp (66 bytes: a TCP ACK's size).
pub const MIN_FRAME: usize = SIM_HDR + super::integrity::STAMP_LEN;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Both,
    /// Guest to proxy only (the proxy still ACKs).
    Tx,
    /// Proxy to guest only (the guest still ACKs).
    Rx,
}

impl Direction {
    pub fn guest_sends_data(self) -> bool {
        matches!(self, Direction::Both | Direction::Tx)
    }
    pub fn proxy_sends_data(self) -> bool {
        matches!(self, Direction::Both | Direction::Rx)
    }
}

impl FromStr for Direction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "both" => Ok(Direction::Both),
            "tx" => Ok(Direction::Tx),
            "rx" => Ok(Direction::Rx),
            _ => Err(format!("unknown direction {s:?}: expected both, tx or rx")),
        }
    }
}

/// When the data senders stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Duration(Duration),
    /// Data frames per sending direction.
    Frames(u64),
}

#[derive(Debug, Clone)]
pub struct Workload {
    pub direction: Direction,
    /// Guest data frame length (Ethernet frame, no virtio header).
    pub tx_size: usize,
    /// ACK frame length; 0 = no ACKs.
    pub ack_size: usize,
    /// One ACK per this many data frames received (TCP's delayed ACK: 2); a trailing
    /// odd frame still gets its ACK once the sender's data is complete.
    pub ack_every: u64,
    /// Data frames a sender may have unacknowledged (TCP's window); 0 = no limit.
    /// Without it the cheaper direction floods and the other starves.
    pub send_window: u64,
    /// Proxy data frame length.
    pub rx_size: usize,
    pub streams: u16,
    /// Per-direction data rate cap in Mbit/s (frame bytes); None = as fast as it goes.
    pub rate_mbit: Option<u64>,
    pub limit: Limit,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            direction: Direction::Both,
            tx_size: 65226,
            ack_size: 66,
            ack_every: 2,
            send_window: 16,
            rx_size: 65550,
            streams: 8,
            rate_mbit: None,
            limit: Limit::Duration(Duration::from_secs(10)),
        }
    }
}

impl Workload {
    /// Checks sizes against what a frame must hold and what the device accepts.
    pub fn validate(&self, max_frame: usize) -> Result<(), String> {
        for (name, size, allow_zero) in [
            ("--tx-size", self.tx_size, false),
            ("--ack-size", self.ack_size, true),
            ("--rx-size", self.rx_size, false),
        ] {
            if allow_zero && size == 0 {
                continue;
            }
            if size < MIN_FRAME || size > max_frame {
                return Err(format!(
                    "{name} {size}: must be between {MIN_FRAME} and {max_frame} bytes"
                ));
            }
        }
        if self.streams == 0 || self.streams == ACK_STREAM {
            return Err(format!(
                "--streams {}: must be between 1 and {}",
                self.streams,
                ACK_STREAM - 1
            ));
        }
        if self.ack_every == 0 {
            return Err("--ack-every 0: must be at least 1 (--ack-size 0 turns ACKs off)".into());
        }
        if self.rate_mbit == Some(0) {
            return Err("--rate-mbit 0: must be positive".into());
        }
        // The receiver ACKs every ack_every-th frame; a window smaller than that fills before
        // the first ACK is due, and both sides wait for each other for ever.
        if self.ack_size > 0 && self.send_window > 0 && self.ack_every > self.send_window {
            return Err(format!(
                "--ack-every {}: larger than --send-window {}, so the window fills before the \
                 first ACK and the sender waits for ever",
                self.ack_every, self.send_window
            ));
        }
        Ok(())
    }
}

/// The sending half of one direction, shared between the sender (which bumps the counts)
/// and whoever checks completion. Data frames go round-robin over the streams, so the
/// per-stream totals follow from the data count alone.
#[derive(Debug, Default)]
pub struct SendLedger {
    pub data: AtomicU64,
    pub acks: AtomicU64,
    /// The sender will put no more data frames on the wire.
    pub data_done: AtomicBool,
    /// The sender will put no more ACKs on the wire.
    pub acks_done: AtomicBool,
}

impl SendLedger {
    /// (stream, frames sent) for every stream, for [`super::integrity::Checker::finish`].
    pub fn per_stream(&self, streams: u16) -> Vec<(u16, u64)> {
        let data = self.data.load(Ordering::Acquire);
        let mut v: Vec<(u16, u64)> = (0..streams)
            .map(|s| {
                let s64 = u64::from(s);
                let n = data / u64::from(streams) + u64::from(s64 < data % u64::from(streams));
                (s, n)
            })
            .collect();
        v.push((ACK_STREAM, self.acks.load(Ordering::Acquire)));
        v
    }

    pub fn total(&self) -> u64 {
        self.data.load(Ordering::Acquire) + self.acks.load(Ordering::Acquire)
    }

    pub fn all_done(&self) -> bool {
        self.data_done.load(Ordering::Acquire) && self.acks_done.load(Ordering::Acquire)
    }
}

/// Decides, frame by frame, what one side sends next: owed ACKs and data alternate (a
/// sender with both queued, like a bidirectional TCP socket pair, does not starve its own
/// data behind the peer's ACKs), and whichever has nothing to send yields to the other.
pub struct Scheduler {
    sends_data: bool,
    data_size: usize,
    ack_size: usize,
    ack_every: u64,
    send_window: u64,
    last_was_ack: bool,
    streams: u16,
    limit: Limit,
    start: Instant,
    pacer: Option<Pacer>,
    data_seq: u64,
    ack_seq: u64,
}

/// What to put in the next frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Next {
    pub stream: u16,
    pub seq: u64,
    pub ack: bool,
    pub len: usize,
}

/// Why nothing can be sent right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idle {
    /// The rate cap wants a pause this long.
    Paced(Duration),
    /// No data left to send (the limit was reached); ACKs may still come due.
    DataDone,
    /// The send window is full: wait for the peer's ACKs.
    Window,
}

impl Scheduler {
    pub fn new(w: &Workload, guest: bool, start: Instant) -> Scheduler {
        let (sends_data, data_size) = if guest {
            (w.direction.guest_sends_data(), w.tx_size)
        } else {
            (w.direction.proxy_sends_data(), w.rx_size)
        };
        Scheduler {
            sends_data,
            data_size,
            ack_size: w.ack_size,
            ack_every: w.ack_every.max(1),
            send_window: w.send_window,
            last_was_ack: false,
            streams: w.streams,
            limit: w.limit,
            start,
            pacer: w.rate_mbit.map(|m| Pacer::new(m, start)),
            data_seq: 0,
            ack_seq: 0,
        }
    }

    pub fn acks_enabled(&self) -> bool {
        self.ack_size > 0
    }

    /// Data frames per ACK, 0 when ACKs are off.
    pub fn ack_every(&self) -> u64 {
        if self.acks_enabled() {
            self.ack_every
        } else {
            0
        }
    }

    /// Whether the data limit has been reached (by count or by time).
    pub fn data_finished(&self) -> bool {
        !self.sends_data
            || match self.limit {
                Limit::Frames(n) => self.data_seq >= n,
                Limit::Duration(d) => self.start.elapsed() >= d,
            }
    }

    /// The next frame, given how many ACKs are owed; the caller reports what it sent
    /// with [`Scheduler::sent`].
    pub fn next(&mut self, acks_owed: u64, acks_received: u64) -> Result<Next, Idle> {
        let ack = Next {
            stream: ACK_STREAM,
            seq: self.ack_seq,
            ack: true,
            len: self.ack_size,
        };
        let ack_due = acks_owed > 0 && self.acks_enabled();
        if ack_due && !self.last_was_ack {
            return Ok(ack);
        }
        match self.next_data(acks_received) {
            Err(_) if ack_due => Ok(ack),
            r => r,
        }
    }

    fn next_data(&mut self, acks_received: u64) -> Result<Next, Idle> {
        if self.data_finished() {
            return Err(Idle::DataDone);
        }
        if self.send_window > 0 && self.acks_enabled() {
            let acked = acks_received.saturating_mul(self.ack_every);
            if self.data_seq.saturating_sub(acked) >= self.send_window {
                return Err(Idle::Window);
            }
        }
        if let Some(p) = self.pacer.as_mut() {
            if let Some(wait) = p.wait(self.data_size) {
                return Err(Idle::Paced(wait));
            }
        }
        let stream = (self.data_seq % u64::from(self.streams)) as u16;
        Ok(Next {
            stream,
            seq: self.data_seq / u64::from(self.streams),
            ack: false,
            len: self.data_size,
        })
    }

    pub fn sent(&mut self, n: &Next) {
        self.last_was_ack = n.ack;
        if n.ack {
            self.ack_seq += 1;
        } else {
            self.data_seq += 1;
            if let Some(p) = &mut self.pacer {
                p.spend(n.len);
            }
        }
    }
}

/// A token bucket over frame bytes. The bucket holds at most 2 ms worth (and at least
/// one frame), so a sender that was descheduled for a while does not make up for it in
/// one burst: a real proxy's or the host's UDP buffers would drop the burst.
struct Pacer {
    bytes_per_sec: f64,
    tokens: f64,
    last: Instant,
}

const BURST: Duration = Duration::from_millis(2);

impl Pacer {
    fn new(mbit: u64, start: Instant) -> Pacer {
        Pacer {
            bytes_per_sec: mbit as f64 * 1e6 / 8.0,
            tokens: 0.0,
            last: start,
        }
    }

    fn refill(&mut self, len: usize) {
        let now = Instant::now();
        let cap = (self.bytes_per_sec * BURST.as_secs_f64()).max(len as f64);
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.bytes_per_sec).min(cap);
        self.last = now;
    }

    fn wait(&mut self, len: usize) -> Option<Duration> {
        self.refill(len);
        if self.tokens >= len as f64 {
            None
        } else {
            Some(Duration::from_secs_f64(
                (len as f64 - self.tokens) / self.bytes_per_sec,
            ))
        }
    }

    fn spend(&mut self, len: usize) {
        self.tokens -= len as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_go_first_and_data_is_round_robin() {
        let w = Workload {
            limit: Limit::Frames(3),
            streams: 2,
            ..Workload::default()
        };
        let mut s = Scheduler::new(&w, true, Instant::now());
        let a = s.next(1, 0).unwrap();
        assert!(a.ack && a.len == 66 && a.stream == ACK_STREAM);
        s.sent(&a);
        let got: Vec<(u16, u64)> = (0..3)
            .map(|_| {
                let n = s.next(0, 0).unwrap();
                s.sent(&n);
                (n.stream, n.seq)
            })
            .collect();
        assert_eq!(got, vec![(0, 0), (1, 0), (0, 1)]);
        assert_eq!(s.next(0, 0), Err(Idle::DataDone));
        let l = SendLedger::default();
        l.data.store(3, Ordering::Relaxed);
        l.acks.store(1, Ordering::Relaxed);
        assert_eq!(l.per_stream(2), vec![(0, 2), (1, 1), (ACK_STREAM, 1)]);
    }

    #[test]
    fn acks_and_data_alternate_when_both_are_queued() {
        let w = Workload {
            limit: Limit::Frames(3),
            streams: 1,
            ..Workload::default()
        };
        let mut s = Scheduler::new(&w, false, Instant::now());
        let mut kinds = String::new();
        let mut owed = 10u64;
        while let Ok(n) = s.next(owed, 0) {
            s.sent(&n);
            if n.ack {
                owed -= 1;
                kinds.push('a');
            } else {
                kinds.push('d');
            }
        }
        // Alternating while both are queued; the leftover ACKs once data is done.
        assert_eq!(kinds, "adadadaaaaaaa");
        assert_eq!(owed, 0);
        assert_eq!(s.ack_every(), 2);
    }

    #[test]
    fn send_window_waits_for_acks() {
        let w = Workload {
            limit: Limit::Frames(100),
            send_window: 4,
            ack_every: 2,
            ..Workload::default()
        };
        let mut s = Scheduler::new(&w, true, Instant::now());
        for _ in 0..4 {
            let n = s.next(0, 0).unwrap();
            assert!(!n.ack);
            s.sent(&n);
        }
        assert_eq!(s.next(0, 0), Err(Idle::Window));
        // An owed ACK still goes out while the window is shut.
        assert!(s.next(1, 0).unwrap().ack);
        // One ACK covers two frames: two more may go.
        for _ in 0..2 {
            let n = s.next(0, 1).unwrap();
            s.sent(&n);
        }
        assert_eq!(s.next(0, 1), Err(Idle::Window));
        // No ACKs, no window: the flow is unclocked.
        let mut open = Scheduler::new(
            &Workload {
                ack_size: 0,
                ..w.clone()
            },
            true,
            Instant::now(),
        );
        for _ in 0..10 {
            let n = open.next(0, 0).unwrap();
            open.sent(&n);
        }
    }

    #[test]
    fn sizes_are_validated() {
        let w = Workload {
            tx_size: 10,
            ..Workload::default()
        };
        assert!(w.validate(65550).unwrap_err().contains("--tx-size 10"));
        assert!(Workload::default().validate(65550).is_ok());
    }
}

#[cfg(test)]
mod pacer_tests {
    use super::*;

    #[test]
    fn pacer_does_not_bank_idle_time() {
        // 8 Mbit/s = 1 MB/s: 2 ms of burst is 2000 bytes, so after a long idle spell
        // only two 1000-byte frames may go at once.
        let start = Instant::now() - Duration::from_secs(1);
        let mut p = Pacer::new(8, start);
        let mut sent = 0;
        while p.wait(1000).is_none() {
            p.spend(1000);
            sent += 1;
            assert!(sent < 10, "burst not capped");
        }
        assert_eq!(sent, 2);
        let w = p.wait(1000).unwrap();
        assert!(w <= Duration::from_millis(1), "{w:?}");
    }
}
