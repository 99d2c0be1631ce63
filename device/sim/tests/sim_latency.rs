//! Per-frame one-way latency in the summary: every frame measured once, quantiles ordered,
//! and a proxy pause shows up in the TX tail.

mod sim_support;
use sim_support::sim;
use std::time::Duration;

const BOUND: Duration = Duration::from_secs(120);

#[test]
fn every_frame_is_measured_and_a_pause_shows_in_the_tx_tail() {
    let o = sim(
        &[
            "--frames",
            "600",
            "--proxy-pause-ms",
            "40",
            "--proxy-pause-every-ms",
            "20",
            // 600 x 65226 B at 1000 Mbit/s take about 310 ms: unpaced, a fast machine
            // sends them all before the first pause is due, and nothing waits.
            "--rate-mbit",
            "1000",
        ],
        BOUND,
    );
    assert_eq!(o.code, 0, "{}\n{}", o.stderr, o.json);
    let l = &o.json["latency_us"];
    let f = |class: &str, k: &str| l[class][k].as_f64().unwrap();
    assert_eq!(l["unmatched"].as_u64(), Some(0), "{l}");
    let to_proxy = &o.json["to_proxy"];
    let to_guest = &o.json["to_guest"];
    assert_eq!(l["tx_data"]["count"], to_proxy["data_frames"]);
    assert_eq!(l["tx_ack"]["count"], to_proxy["ack_frames"]);
    assert_eq!(l["rx_data"]["count"], to_guest["data_frames"]);
    assert_eq!(l["rx_ack"]["count"], to_guest["ack_frames"]);
    for class in ["tx_ack", "tx_data", "rx_ack", "rx_data"] {
        assert!(f(class, "p50") <= f(class, "p99"), "{class}: {l}");
        assert!(f(class, "p99") <= f(class, "max"), "{class}: {l}");
        assert!(f(class, "p50") > 0.0, "{class}: {l}");
    }
    // The proxy stops reading for 40 ms at a time: some guest frame waited most of that.
    assert!(f("tx_data", "max") >= 20_000.0, "{l}");
}
