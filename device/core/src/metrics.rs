//! Flat device counters in the Firecracker style.
// INTERFACE (fixed): pub struct Metrics (atomics, Default), Metrics::snapshot() ->
//   MetricsSnapshot: Serialize + Deserialize + Clone + Debug with at least
//   tx_frames, tx_bytes, rx_frames, rx_bytes, episodes, retries, max_wait_ns,
//   resolved, open_episode (bool), drops (by reason), rejected_chains, timer_fired,
//   write_events, guest_kicks, guest_irqs, peer_gone (bool)
//
// The worker is the only writer; front ends read snapshots from other threads, so every
// counter is a relaxed atomic (no ordering between counters is promised).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

use crate::probes::DropReason;

#[derive(Debug, Default)]
pub struct Metrics {
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Episodes opened (first failed send of a frame).
    pub episodes: AtomicU64,
    /// Failed sends, the first of each episode included.
    pub retries: AtomicU64,
    pub resolved: AtomicU64,
    pub max_wait_ns: AtomicU64,
    pub total_wait_ns: AtomicU64,
    pub open_episode: AtomicBool,
    /// Stream sends that wrote part of a frame before the socket filled.
    pub partial_writes: AtomicU64,
    /// TX frames copied out of guest memory before sending, because their chain had more
    /// pieces than one gathered send takes (every other frame is sent in place).
    pub tx_copied: AtomicU64,
    pub drops_rx_oversize: AtomicU64,
    pub drops_rx_no_room: AtomicU64,
    pub drops_tx_bad_chain: AtomicU64,
    pub drops_rx_empty: AtomicU64,
    pub drops_peer_gone: AtomicU64,
    /// Guest descriptor chains returned unused because they were malformed.
    pub rejected_chains: AtomicU64,
    pub timer_fired: AtomicU64,
    pub write_events: AtomicU64,
    pub read_events: AtomicU64,
    pub guest_kicks: AtomicU64,
    pub guest_irqs: AtomicU64,
    /// Times RX stopped because the guest had no buffers for a waiting frame.
    pub rx_no_buffers: AtomicU64,
    /// Event-loop turns (returns from epoll_wait/kevent): a busy loop shows up here.
    pub wakeups: AtomicU64,
    /// Failures injected by the backend's FaultConfig.
    pub injected_faults: AtomicU64,
    pub peer_gone: AtomicBool,
}

/// Dropped frames by reason (see [`DropReason`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drops {
    pub rx_oversize: u64,
    pub rx_no_room: u64,
    pub tx_bad_chain: u64,
    pub rx_empty: u64,
    pub peer_gone: u64,
    pub total: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsSnapshot {
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub episodes: u64,
    pub retries: u64,
    pub resolved: u64,
    pub max_wait_ns: u64,
    pub total_wait_ns: u64,
    pub open_episode: bool,
    pub partial_writes: u64,
    #[serde(default)]
    pub tx_copied: u64,
    pub drops: Drops,
    pub rejected_chains: u64,
    pub timer_fired: u64,
    pub write_events: u64,
    pub read_events: u64,
    pub guest_kicks: u64,
    pub guest_irqs: u64,
    pub rx_no_buffers: u64,
    pub wakeups: u64,
    pub injected_faults: u64,
    pub peer_gone: bool,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    pub fn drop_counter(&self, reason: DropReason) -> &AtomicU64 {
        match reason {
            DropReason::RxOversize => &self.drops_rx_oversize,
            DropReason::RxNoRoom => &self.drops_rx_no_room,
            DropReason::TxBadChain => &self.drops_tx_bad_chain,
            DropReason::RxEmpty => &self.drops_rx_empty,
            DropReason::PeerGone => &self.drops_peer_gone,
        }
    }

    pub(crate) fn inc(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }

    pub(crate) fn add(c: &AtomicU64, v: u64) {
        c.fetch_add(v, Relaxed);
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let g = |c: &AtomicU64| c.load(Relaxed);
        let drops = Drops {
            rx_oversize: g(&self.drops_rx_oversize),
            rx_no_room: g(&self.drops_rx_no_room),
            tx_bad_chain: g(&self.drops_tx_bad_chain),
            rx_empty: g(&self.drops_rx_empty),
            peer_gone: g(&self.drops_peer_gone),
            total: DropReason::ALL
                .iter()
                .map(|r| g(self.drop_counter(*r)))
                .sum(),
        };
        MetricsSnapshot {
            tx_frames: g(&self.tx_frames),
            tx_bytes: g(&self.tx_bytes),
            rx_frames: g(&self.rx_frames),
            rx_bytes: g(&self.rx_bytes),
            episodes: g(&self.episodes),
            retries: g(&self.retries),
            resolved: g(&self.resolved),
            max_wait_ns: g(&self.max_wait_ns),
            total_wait_ns: g(&self.total_wait_ns),
            open_episode: self.open_episode.load(Relaxed),
            partial_writes: g(&self.partial_writes),
            tx_copied: g(&self.tx_copied),
            drops,
            rejected_chains: g(&self.rejected_chains),
            timer_fired: g(&self.timer_fired),
            write_events: g(&self.write_events),
            read_events: g(&self.read_events),
            guest_kicks: g(&self.guest_kicks),
            guest_irqs: g(&self.guest_irqs),
            rx_no_buffers: g(&self.rx_no_buffers),
            wakeups: g(&self.wakeups),
            injected_faults: g(&self.injected_faults),
            peer_gone: self.peer_gone.load(Relaxed),
        }
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
        Metrics::add(&m.tx_bytes, 1514);
        Metrics::inc(&m.tx_frames);
        Metrics::inc(m.drop_counter(DropReason::RxNoRoom));
        Metrics::inc(m.drop_counter(DropReason::TxBadChain));
        let s = m.snapshot();
        assert_eq!(s.drops.total, 2);
        assert_eq!(s.drops.rx_no_room, 1);
        let back: MetricsSnapshot = serde_json::from_str(&s.to_json()).unwrap();
        assert_eq!(back, s);
        assert!(s.to_json().contains("\"tx_bytes\":1514"));
    }
}
