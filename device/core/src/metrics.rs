//! Device counters in the Firecracker style: each counter is a small relaxed atomic that
//! serialises itself, so [`Metrics`] serialises as it is. [`Metrics`] and its plain
//! [`MetricsSnapshot`] are declared together from one field list (`metrics!`).
//!
//! The worker is the only writer; front ends read snapshots from other threads, so every
//! counter is a relaxed atomic (no ordering between counters is promised).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

use crate::probes::DropReason;

/// A count that only grows.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }

    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// The largest value seen so far.
#[derive(Default)]
pub struct Max(AtomicU64);

impl Max {
    #[inline]
    pub fn raise_to(&self, v: u64) {
        self.0.fetch_max(v, Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A state that is on or off.
#[derive(Default)]
pub struct Flag(AtomicBool);

impl Flag {
    #[inline]
    pub fn set(&self, on: bool) {
        self.0.store(on, Relaxed);
    }

    pub fn get(&self) -> bool {
        self.0.load(Relaxed)
    }
}

macro_rules! serialize_as {
    ($t:ty, $method:ident) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.$method(self.get())
            }
        }
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.get().fmt(f)
            }
        }
    };
}
serialize_as!(Counter, serialize_u64);
serialize_as!(Max, serialize_u64);
serialize_as!(Flag, serialize_bool);

/// Dropped frames, one counter per [`DropReason`]; serialises as `{reason name: count,
/// ..., "total": sum}`.
#[derive(Debug, Default)]
pub struct DropCounters([Counter; DropReason::ALL.len()]);

impl DropCounters {
    fn slot(reason: DropReason) -> usize {
        DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("every reason is in ALL")
    }

    #[inline]
    pub fn count(&self, reason: DropReason) {
        self.0[Self::slot(reason)].inc();
    }

    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[Self::slot(reason)].get()
    }

    pub fn total(&self) -> u64 {
        self.0.iter().map(Counter::get).sum()
    }
}

impl Serialize for DropCounters {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(DropReason::ALL.len() + 1))?;
        for r in DropReason::ALL {
            m.serialize_entry(r.name(), &self.get(r))?;
        }
        m.serialize_entry("total", &self.total())?;
        m.end()
    }
}

/// A live counter's plain value, as a snapshot holds it.
pub trait Reading {
    type Value;
    fn read(&self) -> Self::Value;
}

impl Reading for Counter {
    type Value = u64;
    fn read(&self) -> u64 {
        self.get()
    }
}

impl Reading for Max {
    type Value = u64;
    fn read(&self) -> u64 {
        self.get()
    }
}

impl Reading for Flag {
    type Value = bool;
    fn read(&self) -> bool {
        self.get()
    }
}

impl Reading for DropCounters {
    type Value = Drops;
    fn read(&self) -> Drops {
        Drops {
            rx_oversize: self.get(DropReason::RxOversize),
            rx_no_room: self.get(DropReason::RxNoRoom),
            tx_bad_chain: self.get(DropReason::TxBadChain),
            rx_empty: self.get(DropReason::RxEmpty),
            peer_gone: self.get(DropReason::PeerGone),
            guest_driver_error: self.get(DropReason::GuestDriverError),
            retry_exhausted: self.get(DropReason::RetryExhausted),
            total: self.total(),
        }
    }
}

/// Dropped frames by reason, as read back from [`DropCounters`] (the same JSON shape: a
/// test compares the two).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Drops {
    pub rx_oversize: u64,
    pub rx_no_room: u64,
    pub tx_bad_chain: u64,
    pub rx_empty: u64,
    pub peer_gone: u64,
    pub guest_driver_error: u64,
    /// Deferred TX frames a bounded retry policy gave up on.
    pub retry_exhausted: u64,
    pub total: u64,
}

/// Declares the live counters ([`Metrics`]) and their plain snapshot ([`MetricsSnapshot`])
/// from one field list, so the two cannot drift apart.
macro_rules! metrics {
    ($($(#[doc = $doc:literal])* $name:ident: $kind:ty,)*) => {
        /// The device's counters. Field order is the JSON order front ends print.
        #[derive(Debug, Default, Serialize)]
        pub struct Metrics {
            $($(#[doc = $doc])* pub $name: $kind,)*
        }

        /// Plain values of [`Metrics`] at one moment, for readers; serialises to the same
        /// JSON as the live counters. Reading JSON from a build with fewer counters leaves
        /// the missing ones 0; a counter this build does not know is refused.
        #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct MetricsSnapshot {
            $($(#[doc = $doc])* pub $name: <$kind as Reading>::Value,)*
        }

        impl Metrics {
            pub fn snapshot(&self) -> MetricsSnapshot {
                MetricsSnapshot {
                    $($name: self.$name.read(),)*
                }
            }
        }
    };
}

metrics! {
    tx_frames: Counter,
    tx_bytes: Counter,
    rx_frames: Counter,
    rx_bytes: Counter,
    /// Episodes opened (first failed send of a frame).
    episodes: Counter,
    /// Failed sends, the first of each episode included.
    retries: Counter,
    resolved: Counter,
    max_wait_ns: Max,
    total_wait_ns: Counter,
    open_episode: Flag,
    /// Stream sends that wrote part of a frame before the socket filled.
    partial_writes: Counter,
    /// TX frames copied out of guest memory before sending, because their chain had more
    /// pieces than one gathered send takes (every other frame is sent in place).
    tx_copied: Counter,
    /// TX frames sent with a TCP/UDP checksum the device computed for the guest
    /// (VIRTIO_NET_F_CSUM negotiated and the header said NEEDS_CSUM); each counts once,
    /// when it goes out.
    tx_csum_offload: Counter,
    /// TX chains the guest handed over as one large TCP segment (HOST_TSO4/6, a GSO
    /// header) that the device cut into segments, counted once all of them went out.
    tx_gso_chains: Counter,
    /// Frames (segments) sent out of such chains; each is also one `tx_frames` and one
    /// `tx_csum_offload`.
    tx_gso_segments: Counter,
    /// Header bytes segmentation added: every segment after a chain's first carries its
    /// own copy of the chain's headers, counted in `tx_bytes`. `tx_bytes` less this is
    /// what the guest handed over (its NIC's `tx_bytes`), as `tx_frames - tx_gso_segments
    /// + tx_gso_chains` is its packet count.
    tx_gso_header_bytes: Counter,
    /// GSO frames the device built for the guest by merging consecutive TCP segments
    /// from the proxy (VIRTIO_NET_F_GUEST_TSO4/6 negotiated; `crate::gro`).
    rx_gso_frames: Counter,
    /// Proxy frames that went into those GSO frames (each still counts in `rx_frames`
    /// when read): the guest received `rx_frames - rx_coalesced_segments + rx_gso_frames`
    /// frames (less drops).
    rx_coalesced_segments: Counter,
    /// Header bytes the merges left out (a GSO frame carries its segments' headers once):
    /// the guest received `rx_bytes - rx_coalesced_hdr_bytes` frame bytes (less drops).
    rx_coalesced_hdr_bytes: Counter,
    /// RX frames read from a stream socket straight into guest buffers (no copy in user
    /// space; see the unixstream backend's `DIRECT_MIN`).
    rx_direct: Counter,
    /// `small-first`: frames sent ahead of a deferred frame of another flow (their used
    /// entries come back out of ring order). Not episode retries.
    tx_sent_ahead: Counter,
    /// `small-first`: sends of frames trying to go ahead of a deferred frame that the
    /// socket refused (those frames wait behind it, in ring order).
    tx_ahead_refused: Counter,
    drops: DropCounters,
    /// Guest descriptor chains returned unused because they were malformed.
    rejected_chains: Counter,
    timer_fired: Counter,
    write_events: Counter,
    read_events: Counter,
    guest_kicks: Counter,
    guest_irqs: Counter,
    /// Times RX stopped because the guest had no buffers for a waiting frame.
    rx_no_buffers: Counter,
    /// Event-loop turns (returns from epoll_wait/kevent): a busy loop shows up here.
    wakeups: Counter,
    /// Sends refused by [`crate::backend::Faulty`].
    injected_faults: Counter,
    peer_gone: Flag,
    /// Send system calls made on the proxy's socket, whatever they returned (one
    /// `sendmmsg` carrying many frames counts once); refusals [`crate::backend::Faulty`]
    /// injects are not system calls and do not count.
    tx_syscalls: Counter,
    /// Receive system calls made on the proxy's socket, whatever they returned.
    rx_syscalls: Counter,
    /// CPU time (user + system, the thread's own clock) of device worker threads, added
    /// when a worker exits: 0 while the first one runs.
    worker_cpu_ns: Counter,
    /// Times device worker threads gave up the CPU to wait for work, and times the
    /// scheduler took it from them (mostly for a thread they had just woken), added when a
    /// worker exits; 0 where the system keeps no per-thread count (macOS).
    worker_voluntary_switches: Counter,
    worker_involuntary_switches: Counter,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }
}

impl MetricsSnapshot {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("metrics serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_round_trips_through_json() {
        let m = Metrics::new();
        m.tx_bytes.add(1514);
        m.tx_frames.inc();
        m.drops.count(DropReason::RxNoRoom);
        m.drops.count(DropReason::TxBadChain);
        m.max_wait_ns.raise_to(9);
        m.max_wait_ns.raise_to(3);
        m.peer_gone.set(true);
        let s = m.snapshot();
        assert_eq!(s.drops.total, 2);
        assert_eq!(s.drops.rx_no_room, 1);
        assert_eq!((s.max_wait_ns, s.peer_gone), (9, true));
        let back: MetricsSnapshot = serde_json::from_str(&s.to_json()).unwrap();
        assert_eq!(back, s);
        assert!(s.to_json().contains("\"tx_bytes\":1514"));
        // The live counters and the snapshot print the same JSON, field order included.
        assert_eq!(serde_json::to_string(&m).unwrap(), s.to_json());
    }

    #[test]
    fn every_counter_is_in_the_snapshot() {
        let live = serde_json::to_value(Metrics::new()).unwrap();
        let snap = serde_json::to_value(Metrics::new().snapshot()).unwrap();
        assert_eq!(live, snap);
        let drops = snap["drops"].as_object().unwrap();
        for r in DropReason::ALL {
            assert!(
                drops.contains_key(r.name()),
                "snapshot lacks drops.{}",
                r.name()
            );
        }
        assert!(drops.contains_key("total"));
    }
}
