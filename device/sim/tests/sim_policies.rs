//! Every retry policy against a paused proxy: integrity holds, and the frames a bounded
//! policy drops are counted by the device, missed by the proxy and reported, never silent.

mod sim_support;
use sim_support::{sim, trace_rows, TempDir};
use std::time::Duration;

const BOUND: Duration = Duration::from_secs(120);

fn paused(policy: &str, trace: &str) -> sim_support::Outcome {
    sim(
        &[
            "--frames",
            "400",
            "--proxy-pause-ms",
            "15",
            "--proxy-pause-every-ms",
            "30",
            "--retry-policy",
            policy,
            "--trace",
            trace,
        ],
        BOUND,
    )
}

#[test]
fn every_policy_keeps_integrity_under_a_paused_proxy() {
    let dir = TempDir::new("policies");
    let mut reports = Vec::new();
    for policy in [
        "timer",
        "bounded:10",
        "backoff",
        "backoff:400",
        "room",
        "small-first",
    ] {
        let trace = dir.path().join(format!("{}.csv", policy.replace(':', "_")));
        let o = paused(policy, trace.to_str().unwrap());
        assert_eq!(o.code, 0, "{policy}: {}\n{}", o.stderr, o.json);
        assert_eq!(o.errors(), 0, "{policy}: {}", o.json);
        assert_eq!(o.u("unreported_drops"), 0, "{policy}: {}", o.json);
        if policy != "small-first" {
            // Only small-first sends frames ahead of others.
            assert_eq!(o.u("reordered_across_streams"), 0, "{policy}: {}", o.json);
        }
        let shown = if policy == "backoff" {
            "backoff:1600"
        } else {
            policy
        };
        assert_eq!(o.json["retry_policy"].as_str(), Some(shown));
        let dropped = o.u("dropped");
        assert_eq!(
            dropped,
            o.json["device"]["drops"]["retry_exhausted"]
                .as_u64()
                .unwrap()
        );
        // The proxy missed exactly the dropped frames; everything else arrived.
        let arrived = o.json["to_proxy"]["frames"].as_u64().unwrap();
        assert_eq!(
            o.json["to_proxy"]["lost"].as_u64(),
            Some(dropped),
            "{}",
            o.json
        );
        assert_eq!(arrived, o.u("tx_frames"), "{policy}: {}", o.json);
        if !policy.starts_with("bounded") {
            assert_eq!(dropped, 0, "{policy} never drops");
            assert_eq!(o.u("resolved"), o.u("episodes"), "{policy}: {}", o.json);
        }
        // Episodes mean the same under every policy: each begin row ends in a resolved row
        // or (bounded only) a retry_exhausted frame_drop row.
        let begins = trace_rows(&trace, "enobufs_begin");
        let resolved = trace_rows(&trace, "enobufs_resolved");
        let drops = trace_rows(&trace, "frame_drop");
        assert_eq!(begins, o.u("episodes"), "{policy}");
        assert_eq!(begins, resolved + drops, "{policy}: {}", o.json);
        assert_eq!(drops, dropped, "{policy}");
        // `analyze` reads every policy's trace with the same rules: its episodes are the
        // run's resolved ones, its frames the run's.
        let report = analyze::build_report(
            std::slice::from_ref(&trace),
            &analyze::ReportOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{policy}: analyze: {e}"));
        assert_eq!(report.total, o.u("resolved"), "{policy}");
        assert_eq!(report.frames.tx_frames, o.u("tx_frames"), "{policy}");
        assert_eq!(report.frames.dropped, dropped, "{policy}");
        reports.push(report);
    }
    // `analyze compare` of two policies' traces, unchanged: one row per retry count of
    // either side, both totals shown.
    let (timer, small_first) = (&reports[0], &reports[5]);
    let table = analyze::compare::render(
        timer,
        small_first,
        analyze::OutputFormat::Json,
        analyze::Unit::Auto,
    );
    let v: serde_json::Value = serde_json::from_str(&table).expect("compare emits JSON");
    assert_eq!(v["a"]["total"].as_u64(), Some(timer.total));
    assert_eq!(v["b"]["total"].as_u64(), Some(small_first.total));
    let text = analyze::compare::render(
        timer,
        small_first,
        analyze::OutputFormat::Text,
        analyze::Unit::Auto,
    );
    assert!(
        text.contains(&timer.total.to_string()) && text.contains(&small_first.total.to_string()),
        "{text}"
    );
}

#[test]
fn bounded_zero_drops_at_the_first_refusal_and_reports_every_drop() {
    let o = sim(
        &[
            "--frames",
            "300",
            "--direction",
            "tx",
            "--proxy-pause-ms",
            "20",
            "--proxy-pause-every-ms",
            "30",
            "--retry-policy",
            "bounded:0",
        ],
        BOUND,
    );
    assert_eq!(o.code, 0, "{}\n{}", o.stderr, o.json);
    let dropped = o.u("dropped");
    assert!(dropped > 0, "a paused proxy must cost frames: {}", o.json);
    // Each episode is one refused send and its drop.
    assert_eq!(o.u("episodes"), dropped + o.u("resolved"));
    assert_eq!(o.json["to_proxy"]["lost"].as_u64(), Some(dropped));
    assert_eq!(o.u("lost"), 0);
}

#[test]
fn a_bad_policy_is_one_line_and_exit_2() {
    for bad in ["sometimes", "bounded", "bounded:x", "backoff:1", "room:3"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vnet-sim"))
            .args(["--retry-policy", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{bad}: {err}");
        assert!(err.contains("--retry-policy"), "{err}");
    }
}
