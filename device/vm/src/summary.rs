//! The runner's one summary: the daemon run, the baseline run, and their ratio.

use serde_json::{json, Map, Value};

use super::runner::RunResult;

pub struct Summary<'a> {
    pub kernel: &'a str,
    pub seconds: u32,
    pub streams: u32,
    pub daemon: Option<&'a RunResult>,
    pub baseline: Option<&'a RunResult>,
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// The keys both runs report; the baseline's carry `prefix` so they sit beside the daemon's
/// in one flat object.
fn insert_run(m: &mut Map<String, Value>, prefix: &str, r: &RunResult) {
    let mut put = |key: &str, v: Value| {
        m.insert(format!("{prefix}{key}"), v);
    };
    put("fwd_gbit_per_s", json!(r.fwd_gbit_per_s));
    put("rev_gbit_per_s", json!(r.rev_gbit_per_s));
    put("retransmits", json!(r.retransmits));
    put("wall_s", json!(r.wall_s));
    // "clean", or what the guest printed after VNET-DONE when it did not power off.
    put(
        "guest_shutdown",
        json!(r
            .shutdown_hung
            .as_deref()
            .map_or("clean".to_string(), |t| format!("hung: {t}"))),
    );
    put("tests", json!(r.tests));
    put("out_dir", json!(r.out_dir));
    if !r.captures.is_empty() {
        put("captures", json!(r.captures));
    }
    // In the order the guest printed them: after boot, then after each test.
    put("guest_stats", json!(r.guest_stats));
}

/// One line of what the guest itself counted by the end of the run: what its NIC took
/// from the device, and what its TCP stack made of it.
fn guest_line(r: &RunResult) -> Option<String> {
    let last = r.guest_stats.last()?;
    let c = |name: &str| {
        last.counters
            .get(name)
            .map_or("-".to_string(), u64::to_string)
    };
    Some(format!(
        "guest NIC rx {} frames {} bytes (dropped {}), tx {} frames {} bytes; TCP: \
         segments received twice {}, receive-queue drops {}, checksum errors {}, segments it retransmitted {}",
        c("nic.rx_packets"),
        c("nic.rx_bytes"),
        c("nic.rx_dropped"),
        c("nic.tx_packets"),
        c("nic.tx_bytes"),
        c("tcp.TCPDSACKOldSent"),
        c("tcp.TCPRcvQDrop"),
        c("tcp.InCsumErrors"),
        c("tcp.RetransSegs"),
    ))
}

/// Daemon counters worth a line of their own in the text summary.
const COUNTERS: &[&str] = &[
    "tx_frames",
    "tx_bytes",
    "rx_frames",
    "rx_bytes",
    "episodes",
    "retries",
    "resolved",
    "guest_kicks",
    "guest_irqs",
    "write_events",
    "timer_fired",
    "rejected_chains",
    // TX frames whose checksum the daemon completed for the guest (VIRTIO_NET_F_CSUM).
    "tx_csum_offload",
    // TX chains the daemon cut into segments (VIRTIO_NET_F_HOST_TSO4/6), and the segments.
    "tx_gso_chains",
    "tx_gso_segments",
    "tx_gso_header_bytes",
    // GSO frames the daemon merged for the guest, and the proxy frames in them
    // (VIRTIO_NET_F_GUEST_TSO4/6).
    "rx_gso_frames",
    "rx_coalesced_segments",
    "rx_coalesced_hdr_bytes",
];

/// What the daemon's worker threads cost per frame moved either way: their CPU time and
/// how often they left the CPU (README, "Where the worker's CPU goes at 1514 B"). `None`
/// when no worker exited before the daemon reported (the counters are added at exit) or
/// nothing moved.
fn worker_line(daemon: &Value) -> Option<String> {
    let c = |name| daemon_counter(daemon, name);
    let frames = c("tx_frames")? + c("rx_frames")?;
    let cpu_ns = c("worker_cpu_ns")?;
    if frames == 0 || cpu_ns == 0 {
        return None;
    }
    let per_frame = |n: u64| n as f64 / frames as f64;
    Some(format!(
        "{:.0} ns of CPU per frame moved, context switches per frame: voluntary {:.4}, \
         involuntary {:.4}",
        per_frame(cpu_ns),
        per_frame(c("worker_voluntary_switches").unwrap_or(0)),
        per_frame(c("worker_involuntary_switches").unwrap_or(0)),
    ))
}

/// The daemon's counters, wherever in its JSON they sit (top level or under "device").
pub fn daemon_counter(daemon: &Value, name: &str) -> Option<u64> {
    daemon
        .get(name)
        .or_else(|| daemon.get("device").and_then(|d| d.get(name)))
        .and_then(Value::as_u64)
}

impl Summary<'_> {
    pub fn ratios(&self) -> (Option<f64>, Option<f64>) {
        let (d, b) = (self.daemon, self.baseline);
        (
            ratio(
                d.and_then(|r| r.fwd_gbit_per_s),
                b.and_then(|r| r.fwd_gbit_per_s),
            ),
            ratio(
                d.and_then(|r| r.rev_gbit_per_s),
                b.and_then(|r| r.rev_gbit_per_s),
            ),
        )
    }

    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("kernel".into(), json!(self.kernel));
        m.insert("seconds".into(), json!(self.seconds));
        m.insert("streams".into(), json!(self.streams));
        let any = self.daemon.or(self.baseline);
        if let Some(r) = any {
            m.insert("machine".into(), json!(r.machine));
            m.insert("accel".into(), json!(r.accel));
            m.insert("cpu".into(), json!(r.cpu));
            m.insert("mtu".into(), json!(r.mtu));
        }
        if let Some(d) = self.daemon {
            insert_run(&mut m, "", d);
            m.insert("boot_s".into(), json!(d.boot_s));
            m.insert("daemon".into(), d.daemon.clone().unwrap_or(Value::Null));
            m.insert("trace".into(), json!(d.trace));
            m.insert("iperf3_port".into(), json!(d.iperf3_port));
        }
        if let Some(b) = self.baseline {
            insert_run(&mut m, "baseline_", b);
        }
        if self.daemon.is_some() && self.baseline.is_some() {
            let (f, r) = self.ratios();
            m.insert("ratio_fwd".into(), json!(f));
            m.insert("ratio_rev".into(), json!(r));
        }
        Value::Object(m)
    }

    /// Both runs under the names the text summary gives them.
    fn runs(&self) -> [(&'static str, Option<&RunResult>); 2] {
        [
            ("vnet-vhost (vhost-user)", self.daemon),
            ("QEMU virtio-net (stream)", self.baseline),
        ]
    }

    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let g = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
        let any = self.daemon.or(self.baseline);
        if let Some(r) = any {
            s.push_str(&format!(
                "guest: {} on {:?}/{:?} (-cpu {}), MTU {}, {} s per test, {} streams for bidir\n",
                self.kernel, r.machine, r.accel, r.cpu, r.mtu, self.seconds, self.streams
            ));
        }
        s.push_str(&format!(
            "{:<28}{:>12}{:>12}{:>8}{:>8}{:>8}\n",
            "", "fwd Gbit/s", "rev Gbit/s", "retr", "boot s", "wall s"
        ));
        let mut row = |name: &str, r: &RunResult| {
            s.push_str(&format!(
                "{:<28}{:>12}{:>12}{:>8}{:>8}{:>8.1}\n",
                name,
                g(r.fwd_gbit_per_s),
                g(r.rev_gbit_per_s),
                r.retransmits,
                r.boot_s.map_or("-".into(), |b| format!("{b:.1}")),
                r.wall_s
            ));
        };
        for (name, r) in self.runs() {
            if let Some(r) = r {
                row(name, r);
            }
        }
        if self.daemon.is_some() && self.baseline.is_some() {
            let (f, r) = self.ratios();
            s.push_str(&format!(
                "{:<28}{:>12}{:>12}\n",
                "ratio daemon/baseline",
                g(f),
                g(r)
            ));
        }
        if let Some(d) = self.daemon.and_then(|d| d.daemon.as_ref()) {
            let parts: Vec<String> = COUNTERS
                .iter()
                .filter_map(|c| daemon_counter(d, c).map(|v| format!("{c}={v}")))
                .collect();
            s.push_str(&format!("daemon: {}\n", parts.join(" ")));
            if let Some(line) = worker_line(d) {
                s.push_str(&format!("daemon worker: {line}\n"));
            }
        }
        for (name, r) in self.runs() {
            if let Some(line) = r.and_then(guest_line) {
                s.push_str(&format!("{name}: {line}\n"));
            }
        }
        if let Some(t) = self.daemon.and_then(|d| d.trace.as_ref()) {
            s.push_str(&format!("trace: {}\n", t.display()));
        }
        for (name, r) in self.runs() {
            if let Some(hung) = r.and_then(|r| r.shutdown_hung.as_deref()) {
                s.push_str(&format!(
                    "warning: {name}: the guest did not power off after reporting its results \
                     (QEMU stopped; results above are complete): {}\n",
                    hung.lines().next().unwrap_or("no console output")
                ));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::{Accel, Machine, NetMode};

    fn run(mode: NetMode, fwd: f64, rev: f64) -> RunResult {
        RunResult {
            mode,
            machine: Machine::Pc,
            accel: Accel::Tcg,
            cpu: "max,erms=off".into(),
            mtu: 1500,
            fwd_gbit_per_s: Some(fwd),
            rev_gbit_per_s: Some(rev),
            retransmits: 3,
            tests: vec![],
            boot_s: Some(4.0),
            net_up_s: Some(4.5),
            wall_s: 20.0,
            daemon: Some(json!({"device": {"tx_frames": 10, "rx_bytes": 99}})),
            trace: None,
            out_dir: "/tmp/x".into(),
            iperf3_port: 5201,
            shutdown_hung: None,
            captures: vec![],
            guest_stats: vec![crate::iperf::GuestStats {
                label: "rev".into(),
                counters: [("nic.rx_bytes", 1234), ("tcp.TCPDSACKOldSent", 7)]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            }],
        }
    }

    fn summary<'a>(daemon: Option<&'a RunResult>, baseline: Option<&'a RunResult>) -> Summary<'a> {
        Summary {
            kernel: "k",
            seconds: 3,
            streams: 2,
            daemon,
            baseline,
        }
    }

    #[test]
    fn the_daemon_workers_cost_per_frame_when_they_reported_it() {
        let mut d = run(NetMode::Vhost, 1.0, 0.5);
        d.daemon = Some(json!({"device": {
            "tx_frames": 600, "rx_frames": 400, "worker_cpu_ns": 2_500_000,
            "worker_voluntary_switches": 50, "worker_involuntary_switches": 7
        }}));
        let text = summary(Some(&d), None).to_text();
        assert!(
            text.contains(
                "daemon worker: 2500 ns of CPU per frame moved, context switches per frame: \
                 voluntary 0.0500, involuntary 0.0070"
            ),
            "{text}"
        );
        // A worker still running has added nothing yet: no line rather than a zero.
        d.daemon =
            Some(json!({"device": {"tx_frames": 600, "rx_frames": 400, "worker_cpu_ns": 0}}));
        let text = summary(Some(&d), None).to_text();
        assert!(!text.contains("daemon worker"), "{text}");
    }

    #[test]
    fn json_has_the_documented_keys_and_ratios() {
        let d = run(NetMode::Vhost, 1.0, 0.5);
        let b = run(NetMode::Baseline, 0.5, 1.0);
        let s = summary(Some(&d), Some(&b));
        let v = s.to_json();
        assert_eq!(v["fwd_gbit_per_s"], 1.0);
        assert_eq!(v["rev_gbit_per_s"], 0.5);
        assert_eq!(v["baseline_fwd_gbit_per_s"], 0.5);
        assert_eq!(v["baseline_rev_gbit_per_s"], 1.0);
        assert_eq!(v["ratio_fwd"], 2.0);
        assert_eq!(v["ratio_rev"], 0.5);
        assert_eq!(v["daemon"]["device"]["tx_frames"], 10);
        // The whole key set, so a refactor of the builder cannot drop or rename one.
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = vec![
            "kernel",
            "seconds",
            "streams",
            "machine",
            "accel",
            "cpu",
            "mtu",
            "fwd_gbit_per_s",
            "rev_gbit_per_s",
            "retransmits",
            "boot_s",
            "wall_s",
            "guest_shutdown",
            "tests",
            "daemon",
            "trace",
            "out_dir",
            "iperf3_port",
            "guest_stats",
            "baseline_guest_stats",
            "baseline_fwd_gbit_per_s",
            "baseline_rev_gbit_per_s",
            "baseline_retransmits",
            "baseline_wall_s",
            "baseline_guest_shutdown",
            "baseline_tests",
            "baseline_out_dir",
            "ratio_fwd",
            "ratio_rev",
        ];
        want.sort_unstable();
        assert_eq!(keys, want);
        assert_eq!(v["baseline_retransmits"], 3);
        assert_eq!(v["baseline_out_dir"], "/tmp/x");
        assert_eq!(v["guest_stats"][0]["label"], "rev");
        assert_eq!(v["guest_stats"][0]["counters"]["nic.rx_bytes"], 1234);
        let text = s.to_text();
        assert!(
            text.contains("tx_frames=10") && text.contains("rx_bytes=99"),
            "{text}"
        );
        assert!(text.contains("2.000") && text.contains("0.500"), "{text}");
        assert!(
            text.contains("vnet-vhost (vhost-user): guest NIC rx - frames 1234 bytes")
                && text.contains("segments received twice 7"),
            "{text}"
        );
        assert_eq!(v["guest_shutdown"], "clean");
        assert!(!text.contains("did not power off"), "{text}");
    }

    #[test]
    fn a_guest_that_hung_after_reporting_is_named_in_both_forms() {
        let mut d = run(NetMode::Vhost, 1.0, 0.5);
        d.shutdown_hung = Some("watchdog: BUG: soft lockup - CPU#0 stuck for 45s!".into());
        let s = summary(Some(&d), None);
        let v = s.to_json();
        assert!(
            v["guest_shutdown"]
                .as_str()
                .is_some_and(|t| t.starts_with("hung: ") && t.contains("soft lockup")),
            "{v}"
        );
        let text = s.to_text();
        assert!(
            text.contains("vnet-vhost (vhost-user): the guest did not power off")
                && text.contains("soft lockup"),
            "{text}"
        );
    }

    #[test]
    fn no_ratio_without_a_baseline_and_zero_baseline_is_no_ratio() {
        let d = run(NetMode::Vhost, 1.0, 0.5);
        let s = summary(Some(&d), None);
        assert!(s.to_json().get("ratio_fwd").is_none());
        let b = run(NetMode::Baseline, 0.0, 1.0);
        let s = summary(Some(&d), Some(&b));
        assert_eq!(s.ratios(), (None, Some(0.5)));
    }
}
