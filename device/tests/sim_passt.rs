//! Real-proxy mode against a real passt: ARP, IPv4/UDP through passt to an echo socket on
//! the host and back, every echo checked. UDP may drop (counted as udp_lost), but nothing
//! may arrive corrupted, twice or out of order.

mod sim_support;
use sim_support::{sim, TempDir};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn find_passt() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("passt"))
        .find(|p| p.is_file())
}

struct Passt(Child);
impl Drop for Passt {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn udp_echo_through_passt() {
    let Some(passt) = find_passt() else {
        eprintln!("SKIP udp_echo_through_passt: passt is not installed (apt-get install passt)");
        return;
    };
    let dir = TempDir::new("passt");
    // passt drops to nobody before binding its socket.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let sock = dir.path().join("passt.sock");
    let _passt = Passt(
        Command::new(&passt)
            .args(["-f", "-1", "-q", "-s"])
            .arg(&sock)
            // Fixed guest addressing, so the test does not depend on the host's network.
            .args(["-a", "10.0.2.15", "-n", "24", "-g", "10.0.2.2"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start passt"),
    );
    let t0 = Instant::now();
    while !sock.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "passt did not create {}",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let spec = format!("unixstream:{}", sock.display());
    let o = sim(
        &[
            "--proxy",
            &spec,
            "--frames",
            "400",
            "--streams",
            "4",
            "--guest-ip",
            "10.0.2.15",
            "--gateway-ip",
            "10.0.2.2",
            "--rate-mbit",
            "50",
        ],
        Duration::from_secs(120),
    );
    assert_eq!(o.code, 0, "{}\n{}", o.stderr, o.json);
    assert_eq!(o.errors(), 0, "{}", o.json);
    let echoed = o.json["to_guest"]["data_frames"].as_u64().unwrap();
    // Every datagram sent is either echoed or counted as a UDP drop, and the device
    // accounted for every frame (the summary's `lost` is the device's share, zero above).
    assert_eq!(echoed + o.u("udp_lost"), 400, "{}", o.json);
    let host_saw = o.json["udp_echoed"].as_u64().unwrap();
    assert!(host_saw >= echoed && host_saw <= 400, "{}", o.json);
    // Loopback UDP at 50 Mbit/s with a capped burst rarely drops; most must come back
    // for the test to mean anything (a loaded CI machine may drop some).
    assert!(echoed >= 200, "only {echoed} of 400 echoes: {}", o.json);
    // 400 datagrams and at least one ARP request went out through the device, and every
    // frame the device read reached the guest (echoes plus the ARP reply).
    assert!(o.u("tx_frames") > 400, "{}", o.json);
    assert_eq!(
        o.u("rx_frames"),
        echoed + o.json["to_guest"]["foreign"].as_u64().unwrap(),
        "{}",
        o.json
    );
}
