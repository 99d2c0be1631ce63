//! The probe contract as built: every probe of dtrace/vnet.d is in the binary's ELF notes
//! (what bpftrace attaches to), and the in-process recorder writes the trace CSV (the
//! clock line, the trace schema's `HEADER`, one row per firing) with each probe's arguments
//! in the schema's columns.

mod common;

use std::sync::Arc;

use common::{frame, tx_segs, DriverQueue};
use vnet_device::backend::{BackendOptions, FaultConfig, Faulty, UnixGram};
use vnet_device::device::TxPass;
use vnet_device::metrics::Metrics;
use vnet_device::probes::{self, Probe, Recorder};
use vnet_trace_schema::{Column, HEADER};

/// Fires every probe once with recognisable arguments; also forces every probe site into
/// this test binary so its ELF notes can be inspected.
fn fire_all() {
    probes::enobufs_begin(7, 65226, 55);
    probes::enobufs_retry(7, 2, 55);
    probes::enobufs_resolved(7, 3, 123456, 65226);
    probes::kevent_write(7, 17996);
    probes::kevent_read(40, 16);
    probes::timer_fired(50);
    probes::tx_frame(7, 1514);
    probes::rx_frame(7, 66);
    probes::guest_kick(1);
    probes::guest_irq(0);
    probes::frame_drop(7, 9000, probes::DropReason::RxNoRoom.code());
}

/// Probe names declared in dtrace/vnet.d, read from the file so code and contract cannot
/// drift apart.
fn contract() -> std::collections::BTreeSet<String> {
    let d = include_str!("../../../dtrace/vnet.d");
    d.lines()
        .filter_map(|l| l.trim().strip_prefix("probe "))
        .map(|l| l.split('(').next().unwrap().trim().to_string())
        .collect()
}

#[test]
fn probe_names_match_the_provider_file() {
    let contract = contract();
    assert_eq!(contract.len(), 11);
    let names: std::collections::BTreeSet<String> =
        Probe::ALL.iter().map(|p| p.name().to_string()).collect();
    assert_eq!(names, contract, "probes.rs and vnet.d disagree");
}

#[cfg(all(target_os = "linux", feature = "probes"))]
#[test]
fn binary_carries_every_probe_of_the_contract() {
    fire_all();
    let exe = std::env::current_exe().unwrap();
    let out = match std::process::Command::new("readelf")
        .arg("-n")
        .arg(&exe)
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            println!("SKIP: readelf not available ({e}); .ci/setup.sh installs binutils");
            return;
        }
    };
    assert!(
        out.status.success(),
        "readelf failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // stapsdt notes: "Provider: vnet" followed by "Name: <probe>".
    let mut found = std::collections::BTreeSet::new();
    let mut lines = text.lines().peekable();
    while let Some(l) = lines.next() {
        if l.trim() == "Provider: vnet" {
            if let Some(n) = lines.peek().and_then(|n| n.trim().strip_prefix("Name: ")) {
                found.insert(n.to_string());
            }
        }
    }
    let contract = contract();
    let missing: Vec<_> = contract.difference(&found).collect();
    assert!(
        missing.is_empty(),
        "probes missing from {}: {missing:?}",
        exe.display()
    );
    // Semaphores let bpftrace enable sites; every note must carry one.
    assert!(text.contains("Semaphore: 0x") && !text.contains("Semaphore: 0x0000000000000000"));
}

fn parse(text: &str) -> (String, Vec<Vec<String>>) {
    let mut lines = text.lines();
    let clock = lines.next().unwrap().to_string();
    assert_eq!(lines.next().unwrap(), HEADER);
    let rows = lines
        .map(|l| l.split(',').map(str::to_string).collect::<Vec<_>>())
        .collect();
    (clock, rows)
}

/// The only test in this binary that installs a recorder (the recorder is process-wide).
#[test]
fn recorder_writes_the_trace_csv_with_each_argument_in_its_column() {
    let dir = common::tempdir("rec");
    let path = dir.join("trace.csv");
    probes::install_recorder(Recorder::create(&path).unwrap());
    let tid = probes::current_tid().to_string();

    fire_all();

    // A real episode through the data path: every 2nd send fails once with ENOBUFS.
    let mem = common::memory();
    let (rx, mut tx) = (DriverQueue::new(0, 64), DriverQueue::new(1, 64));
    let (a, peer) = common::gram_pair();
    peer.set_nonblocking(true).unwrap();
    let be = UnixGram::from_socket(a, &BackendOptions::default()).unwrap();
    let fd = vnet_device::backend::Backend::raw_fd(&be).to_string();
    let metrics = Arc::new(Metrics::new());
    let faults = FaultConfig {
        enobufs_every: 2,
        enobufs_burst: 3,
    };
    let be = Faulty::new(be, faults, metrics.clone());
    let mut dev = common::device(&mem, &rx, &tx, Box::new(be), metrics.clone());
    for i in 0..2 {
        tx.add(&mem, &tx_segs(&frame(i, 1000 + i as usize), &[]))
            .unwrap();
    }
    while dev.process_tx().unwrap() != TxPass::Idle {}

    let rec = probes::take_recorder().unwrap();
    assert!(!probes::recording());
    let n = rec.finish().unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let (clock, rows) = parse(&text);
    assert_eq!(rows.len() as u64, n);
    let c: Vec<&str> = clock.split(' ').collect();
    assert_eq!(c[..2], ["#", "clock"]);
    assert!(
        c[2].strip_prefix("mono_ns=")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    assert!(
        c[3].strip_prefix("wall_ns=")
            .unwrap()
            .parse::<u128>()
            .unwrap()
            > 1_600_000_000_000_000_000
    );

    let mine: Vec<&Vec<String>> = rows.iter().filter(|r| r[1] == tid).collect();
    assert!(mine.iter().all(|r| r.len() == 10), "10 columns per row");
    let ts: Vec<u64> = mine.iter().map(|r| r[0].parse().unwrap()).collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "monotonic timestamps");

    // Each probe's arguments (as `fire_all` passes them, in vnet.d order) in the columns the
    // schema names for it, every other argument column empty.
    let fired: [(Probe, &[i64]); 11] = [
        (Probe::EnobufsBegin, &[7, 65226, 55]),
        (Probe::EnobufsRetry, &[7, 2, 55]),
        (Probe::EnobufsResolved, &[7, 3, 123456, 65226]),
        (Probe::KeventWrite, &[7, 17996]),
        (Probe::KeventRead, &[40, 16]),
        (Probe::TimerFired, &[50]),
        (Probe::TxFrame, &[7, 1514]),
        (Probe::RxFrame, &[7, 66]),
        (Probe::GuestKick, &[1]),
        (Probe::GuestIrq, &[0]),
        (
            Probe::FrameDrop,
            &[7, 9000, probes::DropReason::RxNoRoom.code()],
        ),
    ];
    for (row, (probe, args)) in mine[..11].iter().zip(fired) {
        assert_eq!(row[Column::Probe.index()], probe.name());
        let mut want = vec![String::new(); Column::ALL.len()];
        for (column, value) in probe.arg_columns().iter().zip(args) {
            want[column.index()] = value.to_string();
        }
        assert_eq!(row[3..], want[3..], "{}: argument columns", probe.name());
    }
    // One spelled-out row, so a schema that moved every probe's columns alike still fails.
    assert_eq!(
        mine[2][2..],
        ["enobufs_resolved", "7", "", "65226", "", "3", "123456", ""]
    );

    // The data path's rows: frame 0 out (interrupt at the end of the pass, frame 1 then
    // blocked), frame 1 fails 3 times then goes out; EVENT_IDX (used_event 0) suppresses a
    // second interrupt.
    let path_rows: Vec<&Vec<String>> = mine[11..].to_vec();
    let names: Vec<&str> = path_rows.iter().map(|r| r[2].as_str()).collect();
    assert_eq!(
        names,
        [
            "tx_frame",
            "enobufs_begin",
            "guest_irq",
            "enobufs_retry",
            "enobufs_retry",
            "enobufs_resolved",
            "tx_frame"
        ]
    );
    let enobufs = libc::ENOBUFS.to_string();
    assert_eq!(path_rows[1][3], fd);
    assert_eq!(
        (path_rows[1][5].as_str(), path_rows[1][9].as_str()),
        ("1001", enobufs.as_str())
    );
    assert_eq!(
        (path_rows[3][7].as_str(), path_rows[4][7].as_str()),
        ("2", "3"),
        "attempt numbers"
    );
    assert_eq!(
        path_rows[5][7], "3",
        "resolved after 3 retries, the first included"
    );
    assert_eq!(path_rows[5][5], "1001");
    let wait: u64 = path_rows[5][8].parse().unwrap();
    let begin_ts: u64 = path_rows[1][0].parse().unwrap();
    let resolved_ts: u64 = path_rows[5][0].parse().unwrap();
    // The begin and resolved rows carry the very clock readings wait_ns is computed from.
    assert_eq!(
        wait,
        resolved_ts - begin_ts,
        "wait_ns spans begin..resolved exactly"
    );
    let m = metrics.snapshot();
    assert_eq!(
        (m.episodes, m.retries, m.resolved, m.tx_frames),
        (1, 3, 1, 2)
    );
    std::fs::remove_dir_all(dir).unwrap();
}
