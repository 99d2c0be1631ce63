//! Flat device counters in the Firecracker style.
// INTERFACE (fixed): pub struct Metrics (atomics, Default), Metrics::snapshot() ->
//   MetricsSnapshot: Serialize + Deserialize + Clone + Debug with at least
//   tx_frames, tx_bytes, rx_frames, rx_bytes, episodes, retries, max_wait_ns,
//   resolved, open_episode (bool), drops (by reason), rejected_chains, timer_fired,
//   write_events, guest_kicks, guest_irqs, peer_gone (bool)
