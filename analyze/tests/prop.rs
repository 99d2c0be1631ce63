//! Property tests over generated traces: per-episode waits from begin/resolved timestamps
//! equal the device-reported wait_ns within the clock's resolution, whatever the interleaving
//! of sockets and the small reordering bpftrace's per-CPU buffers cause.

use std::path::PathBuf;

use analyze::episodes::{Episode, EpisodeSink};
use analyze::event::{Event, Kind};
use analyze::input::SourceInfo;
use analyze::pipeline::{self, ReadOptions, Visitor};
use analyze::trace;
use proptest::prelude::*;

#[derive(Default)]
struct Collect {
    done: Vec<Episode>,
    open: Vec<Episode>,
}
impl EpisodeSink for Collect {
    fn episode_end(&mut self, ep: &Episode) {
        self.done.push(ep.clone());
    }
}
impl Visitor for Collect {
    fn open_at_end(&mut self, ep: &Episode, _info: &SourceInfo) {
        self.open.push(ep.clone());
    }
}

#[derive(Clone, Debug)]
struct Ep {
    fd: i64,
    gap_ns: i64,
    dur_ns: i64,
    retries: i64,
    wakeups: u8,
}

fn ep() -> impl Strategy<Value = Ep> {
    (
        0i64..3,
        1_000i64..2_000_000,
        1i64..5_000_000,
        1i64..6,
        0u8..4,
    )
        .prop_map(|(fd, gap_ns, dur_ns, retries, wakeups)| Ep {
            fd: fd + 7,
            gap_ns,
            dur_ns,
            retries,
            wakeups,
        })
}

/// Rows (true time, event) for the episodes; each fd runs its episodes back to back.
fn rows(eps: &[Ep]) -> Vec<(i64, Event)> {
    let mut next_free = [1_000_000_000i64; 3];
    let mut out = Vec::new();
    for e in eps {
        let slot = (e.fd - 7) as usize;
        let start = next_free[slot] + e.gap_ns;
        let end = start + e.dur_ns;
        next_free[slot] = end + 1;
        let mut b = Event::new(Kind::EnobufsBegin, start);
        b.fd = Some(e.fd);
        b.len = Some(65226);
        b.errno = Some(55);
        out.push((start, b));
        for w in 0..e.wakeups as i64 {
            let t = start + (e.dur_ns * (w + 1)) / (e.wakeups as i64 + 2);
            let mut k = Event::new(Kind::KeventWrite, t);
            k.fd = Some(e.fd);
            k.data = Some(17996 * (w + 1));
            out.push((t, k));
        }
        let mut r = Event::new(Kind::EnobufsResolved, end);
        r.fd = Some(e.fd);
        r.retries = Some(e.retries);
        r.wait_ns = Some(e.dur_ns);
        r.len = Some(65226);
        out.push((end, r));
    }
    out.sort_by_key(|(t, _)| *t);
    out
}

fn write_trace(rows: &[(i64, Event)], resolution: i64, swaps: &[bool]) -> PathBuf {
    let mut evs: Vec<Event> = rows
        .iter()
        .map(|(t, e)| {
            let mut e = *e;
            e.ts_ns = t - t.rem_euclid(resolution); // the clock ticks every `resolution` ns
            e
        })
        .collect();
    // bpftrace-like local disorder: swap neighbours that are close in time. Neighbours with
    // equal timestamps keep their order: once the clock cannot tell them apart, nothing can.
    for (i, &s) in swaps.iter().enumerate() {
        if s && i + 1 < evs.len() && {
            let gap = evs[i + 1].ts_ns - evs[i].ts_ns;
            gap > 0 && gap < 1_000_000
        } {
            evs.swap(i, i + 1);
        }
    }
    let mut buf = Vec::new();
    buf.extend_from_slice(format!("{}\n", trace::HEADER).as_bytes());
    for e in &evs {
        trace::write_row(&mut buf, e).unwrap();
    }
    // A file of its own in the temp dir, which the test removes once read.
    let path = std::env::temp_dir().join(format!(
        "analyze-prop-{}-{}.csv",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::write(&path, buf).unwrap();
    path
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn waits_match_device_reported_wait(
        eps in proptest::collection::vec(ep(), 1..60),
        res_pick in 0usize..3,
        swaps in proptest::collection::vec(any::<bool>(), 0..200),
    ) {
        let resolution = [1i64, 1_000, 100_000][res_pick];
        let rows = rows(&eps);
        let path = write_trace(&rows, resolution, &swaps);
        let mut c = Collect::default();
        let summary = pipeline::run(std::slice::from_ref(&path), &ReadOptions::default(), &mut c);
        std::fs::remove_file(&path).ok();
        let summary = summary.expect("generated trace reads");
        prop_assert_eq!(summary.bad_lines, 0);
        prop_assert!(c.open.is_empty());
        prop_assert_eq!(c.done.len(), eps.len());
        for ep in &c.done {
            let d = ep.duration_ns().unwrap();
            let w = ep.wait_ns.unwrap();
            prop_assert!((d - w).abs() < resolution.max(1) || (d - w).abs() == 0,
                "episode {} fd {:?}: timestamps give {} ns, device said {} ns (resolution {})",
                ep.id, ep.fd, d, w, resolution);
        }
        // Same multiset of (fd, retries, wait) as generated.
        let mut got: Vec<(Option<i64>, Option<i64>, Option<i64>)> =
            c.done.iter().map(|e| (e.fd, e.retries, e.wait_ns)).collect();
        let mut want: Vec<(Option<i64>, Option<i64>, Option<i64>)> =
            eps.iter().map(|e| (Some(e.fd), Some(e.retries), Some(e.dur_ns))).collect();
        got.sort();
        want.sort();
        prop_assert_eq!(got, want);
        // Every write wake-up (data 17996·k < 65226 for k ≤ 3) is counted as without room.
        let low: u64 = c.done.iter().map(|e| e.wakeups.write_low_room).sum();
        let all: u64 = eps.iter().map(|e| e.wakeups as u64).sum();
        prop_assert_eq!(low, all);
    }
}

#[test]
fn generator_smoke() {
    // The benchmark's generator, small: its episodes are what the report counts and the
    // device wait it writes equals the timestamps exactly.
    let mut buf = Vec::new();
    let episodes = analyze::gen::generate(&mut buf, 20_000, 3).unwrap();
    let dir = std::env::temp_dir().join(format!("analyze-gen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gen.csv");
    std::fs::write(&path, &buf).unwrap();
    let report = analyze::build_report(&[path], &Default::default());
    std::fs::remove_dir_all(&dir).ok();
    let report = report.unwrap();
    assert!(episodes > 10);
    assert_eq!(report.total, episodes);
    assert_eq!(report.input.events, 20_000);
    assert_eq!(report.wait_check.compared, episodes);
    assert_eq!(report.wait_check.max_abs_diff_ns, 0);
    assert!(report.open_episodes.is_empty());
}
