//! The end-of-run summary: device counters (from the device's own metrics, so they agree
//! with the probes) next to the integrity counts the simulation checked itself.

use serde::Serialize;
use std::fmt::Write as _;

use super::integrity::Counts;
use super::latency::{LatencyStats, LatencySummary};
use vnet_device::metrics::MetricsSnapshot;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// "builtin:unixgram", "builtin:unixgram-socketpair", "builtin:unixstream" or the
    /// real proxy's spec.
    pub peer: String,
    pub direction: String,
    pub seconds: f64,
    /// CPU time (user + system) the process used during the run: guest, device and
    /// built-in proxy together.
    pub cpu_seconds: f64,
    /// Frames the device wrote to the proxy (== `tx_frame` probe firings).
    pub tx_frames: u64,
    /// Frames the device read from the proxy (== `rx_frame` probe firings).
    pub rx_frames: u64,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    /// The device's retry policy (`--retry-policy`).
    pub retry_policy: String,
    /// Guest frames the retry policy dropped (`drops.retry_exhausted`); each is missing at
    /// the proxy and counted here, not in `lost`.
    pub dropped: u64,
    /// Drops the device reported that the proxy did not miss, plus frames the proxy missed
    /// that the device did not report: an integrity error.
    pub unreported_drops: u64,
    /// Integrity, both directions added up (drops the device reported excluded).
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    /// Frames that overtook one sent earlier on another stream (see
    /// `integrity::Counts::reordered_across_streams`): what `small-first` does on
    /// purpose, an error under every other policy.
    pub reordered_across_streams: u64,
    /// The retry policy reorders across streams on purpose (`small-first`).
    #[serde(skip)]
    pub across_streams_allowed: bool,
    pub corrupted: u64,
    /// Real-proxy mode: echoes that never came back. UDP may drop, so this is reported,
    /// not an error.
    pub udp_lost: u64,
    /// Real-proxy mode: datagrams the host's echo socket received (and returned), which
    /// splits `udp_lost` into guest->host and host->guest drops.
    pub udp_echoed: Option<u64>,
    /// ENOBUFS/EAGAIN episodes (== `enobufs_begin` firings).
    pub episodes: u64,
    /// Failed sends, first included (the retry counter).
    pub retries: u64,
    /// Episodes that ended with the frame sent (== `enobufs_resolved` firings).
    pub resolved: u64,
    /// 1 when the run stopped because nothing moved for the stall timeout.
    pub stalls: u64,
    /// Device throughput, both directions, frame bytes.
    pub gbit_per_s: f64,
    pub tx_gbit_per_s: f64,
    pub rx_gbit_per_s: f64,
    /// What the proxy side checked (guest to proxy) and what the guest checked (proxy to
    /// guest; in real-proxy mode: the echoes).
    pub to_proxy: Option<Counts>,
    pub to_guest: Counts,
    /// Human-readable account of a stall, if there was one.
    pub stall: Option<String>,
    pub guest_kicks_sent: u64,
    pub guest_kicks_suppressed: u64,
    pub device: MetricsSnapshot,
    /// One-way latency per frame class, in microseconds (built-in proxy only).
    pub latency_us: Option<LatencySummary>,
    /// `--offload-csum`: what the checksum offloads did (else `null`).
    pub csum_offload: Option<CsumOffload>,
}

/// The checksum offloads seen from both ends (`--offload-csum`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CsumOffload {
    /// Guest frames the built-in proxy received with a UDP checksum (the device completed
    /// it; the device counts them as `device.tx_csum_offload`), and those that did not
    /// verify (an integrity error).
    pub udp_checksums_checked: u64,
    pub udp_checksums_bad: u64,
    /// Frames the guest received whose header did not say DATA_VALID (an error: the
    /// guest negotiated GUEST_CSUM).
    pub rx_without_data_valid: u64,
}

impl Summary {
    /// Errors that make the run fail: integrity counters and stalls (not UDP loss).
    pub fn failed(&self) -> bool {
        self.lost
            + self.unreported_drops
            + self.duplicated
            + self.reordered
            + if self.across_streams_allowed {
                0
            } else {
                self.reordered_across_streams
            }
            + self.corrupted
            + self.stalls
            + self
                .csum_offload
                .as_ref()
                .map_or(0, |c| c.udp_checksums_bad + c.rx_without_data_valid)
            > 0
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("summary serializes")
    }

    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let d = &self.device;
        let _ = writeln!(
            s,
            "vnet-sim: {} direction={} {:.2} s ({:.2} s CPU)",
            self.peer, self.direction, self.seconds, self.cpu_seconds
        );
        let _ = writeln!(
            s,
            "  device tx  {:>10} frames {:>14} bytes  {:>7.2} Gbit/s",
            self.tx_frames, self.tx_bytes, self.tx_gbit_per_s
        );
        let _ = writeln!(
            s,
            "  device rx  {:>10} frames {:>14} bytes  {:>7.2} Gbit/s",
            self.rx_frames, self.rx_bytes, self.rx_gbit_per_s
        );
        let _ = writeln!(s, "  total {:.2} Gbit/s", self.gbit_per_s);
        let _ = writeln!(
            s,
            "  episodes {}  resolved {}  retries {}  max wait {} us  timer fired {}  write events {}",
            self.episodes,
            self.resolved,
            self.retries,
            d.max_wait_ns / 1000,
            d.timer_fired,
            d.write_events
        );
        let _ = writeln!(
            s,
            "  guest kicks {} (suppressed {})  interrupts {}  rx without buffers {}  injected faults {}",
            self.guest_kicks_sent,
            self.guest_kicks_suppressed,
            d.guest_irqs,
            d.rx_no_buffers,
            d.injected_faults
        );
        let _ = writeln!(
            s,
            "  integrity: lost {}  duplicated {}  reordered {}  corrupted {}  across streams {}{}{}",
            self.lost,
            self.duplicated,
            self.reordered,
            self.corrupted,
            self.reordered_across_streams,
            if self.across_streams_allowed {
                " (allowed by the policy)"
            } else {
                ""
            },
            if self.peer.starts_with("builtin") {
                String::new()
            } else {
                format!(
                    "  udp_lost {} (UDP drops, not errors; host echo socket saw {})",
                    self.udp_lost,
                    self.udp_echoed.unwrap_or(0)
                )
            }
        );
        if self.retry_policy != "timer" || self.dropped + self.unreported_drops > 0 {
            let _ = writeln!(
                s,
                "  retry policy {}: dropped {} guest frames (frame_drop retry_exhausted), unreported {}, sent ahead {}, refused ahead {}",
                self.retry_policy,
                self.dropped,
                self.unreported_drops,
                d.tx_sent_ahead,
                d.tx_ahead_refused
            );
        }
        if let Some(c) = &self.csum_offload {
            let _ = writeln!(
                s,
                "  checksum offload: device completed {} TX checksums, proxy checked {} ({} bad); RX frames without DATA_VALID {}",
                d.tx_csum_offload,
                c.udp_checksums_checked,
                c.udp_checksums_bad,
                c.rx_without_data_valid
            );
        }
        if let Some(c) = &self.to_proxy {
            let _ = writeln!(s, "    guest->proxy {}", counts_line(c));
        }
        let _ = writeln!(s, "    proxy->guest {}", counts_line(&self.to_guest));
        if let Some(l) = &self.latency_us {
            let _ = writeln!(
                s,
                "  latency us (p50/p99/max): tx ack {}  tx data {}  rx ack {}  rx data {}",
                stats(&l.tx_ack),
                stats(&l.tx_data),
                stats(&l.rx_ack),
                stats(&l.rx_data)
            );
            let _ = writeln!(
                s,
                "  share over 1 ms: tx ack {:.3}%  tx data {:.3}%  rx ack {:.3}%  rx data {:.3}%",
                100.0 * l.tx_ack.over_1ms,
                100.0 * l.tx_data.over_1ms,
                100.0 * l.rx_ack.over_1ms,
                100.0 * l.rx_data.over_1ms
            );
        }
        match &self.stall {
            Some(why) => {
                let _ = writeln!(s, "  STALL: {why}");
            }
            None => {
                let _ = writeln!(s, "  stalls 0");
            }
        }
        let _ = writeln!(
            s,
            "  result: {}",
            if self.failed() { "FAILED" } else { "ok" }
        );
        s
    }
}

fn counts_line(c: &Counts) -> String {
    format!(
        "{} frames ({} data, {} acks), lost {} dup {} reord {} corrupt {} across streams {}{}",
        c.frames,
        c.data_frames,
        c.ack_frames,
        c.lost,
        c.duplicated,
        c.reordered,
        c.corrupted,
        c.reordered_across_streams,
        if c.foreign > 0 {
            format!(", {} foreign frames ignored", c.foreign)
        } else {
            String::new()
        }
    )
}

fn stats(l: &LatencyStats) -> String {
    format!("{:.0}/{:.0}/{:.0}", l.p50, l.p99, l.max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overtaking_across_streams_fails_a_run_unless_the_policy_does_it_on_purpose() {
        let clean = Summary::default();
        assert!(!clean.failed());
        let overtaken = Summary {
            reordered_across_streams: 1,
            ..Summary::default()
        };
        assert!(overtaken.failed(), "timer, bounded, backoff, room");
        let small_first = Summary {
            across_streams_allowed: true,
            ..overtaken.clone()
        };
        assert!(!small_first.failed());
        assert!(small_first.to_text().contains("result: ok"));
        assert!(overtaken.to_text().contains("result: FAILED"));
        // Within a stream an overtaking is an error whatever the policy.
        let within = Summary {
            reordered: 1,
            ..small_first
        };
        assert!(within.failed());
    }
}
