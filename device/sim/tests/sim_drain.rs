//! Duration-based runs end like iperf3's: the senders stop, then everything already in
//! flight (guest TX ring, socket queue, proxy output) is delivered before sent and
//! received are compared. A slow, pausing or small-buffered proxy leaves thousands of
//! frames queued in the socket when the time is up; none of them may count as lost.

mod sim_support;
use sim_support::sim;
use std::time::Duration;

const BOUND: Duration = Duration::from_secs(120);

fn check_drains(extra: &[&str]) {
    // `rx`: the guest's last ACKs are what is still queued for the proxy at the end;
    // `both`: guest data and ACKs are.
    for (backend, direction) in [
        ("unixgram", "both"),
        ("unixstream", "both"),
        ("unixgram", "rx"),
        ("unixstream", "rx"),
    ] {
        let mut args = vec![
            "--backend",
            backend,
            "--direction",
            direction,
            "--duration",
            "0.5",
        ];
        args.extend_from_slice(extra);
        let o = sim(&args, BOUND);
        let ctx = format!("{backend} {direction} {extra:?}: {}\n{}", o.stderr, o.json);
        assert_eq!(o.code, 0, "{ctx}");
        assert_eq!(o.u("stalls"), 0, "{ctx}");
        for k in ["lost", "duplicated", "reordered", "corrupted"] {
            assert_eq!(o.u(k), 0, "{k} {ctx}");
        }
        // Every frame the device moved was checked at the far end, so the device's
        // counts and the receivers' agree (the ledger closed on delivered frames).
        assert_eq!(
            o.json["to_proxy"]["frames"].as_u64(),
            Some(o.u("tx_frames")),
            "{ctx}"
        );
        assert_eq!(
            o.json["to_guest"]["frames"].as_u64(),
            Some(o.u("rx_frames")),
            "{ctx}"
        );
        assert!(o.u("tx_frames") > 0 && o.u("rx_frames") > 0, "{ctx}");
    }
}

#[test]
fn slow_reading_proxy_drains_at_the_end() {
    check_drains(&["--proxy-read-delay-us", "20"]);
}

#[test]
fn pausing_proxy_drains_at_the_end() {
    check_drains(&["--proxy-pause-ms", "30", "--proxy-pause-every-ms", "40"]);
}

#[test]
fn small_rcvbuf_proxy_drains_at_the_end() {
    // The smallest receive buffer that holds the largest frame (a datagram proxy accepts
    // nothing smaller). Linux does not hold unix datagrams to it; macOS does.
    check_drains(&["--proxy-rcvbuf", "65806", "--proxy-read-delay-us", "5"]);
}
