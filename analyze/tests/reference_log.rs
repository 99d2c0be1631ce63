//! Reference-format logs with known episode durations: the table is computed independently
//! here and compared cell by cell with `analyze report`, and the PR's vmnet-helper table is
//! reproduced byte for byte from a log built to have its distribution.

mod common;
use common::{analyze, scratch, write};

/// Formats Unix µs as the reference VMM's log timestamp.
fn stamp(us: i64) -> String {
    // 2026-03-01T10:00:00Z = 1772359200 s; only seconds within one day are needed here.
    let secs = us / 1_000_000;
    let frac = us % 1_000_000;
    format!(
        "2026-03-01T{:02}:{:02}:{:02}.{:06}Z",
        10 + secs / 3600,
        (secs / 60) % 60,
        secs % 60,
        frac
    )
}

/// Builds a log: for each (retries, duration_us) an episode with wake-up and noise lines.
fn build_log(episodes: &[(u32, i64)], unified: bool) -> String {
    let mut out = String::new();
    let mut t = 1_000i64;
    for (i, &(retries, d)) in episodes.iter().enumerate() {
        out += &format!("[{} DEBUG hvf::vcpu] vCPU 0 exit {i}\n", stamp(t));
        out += &format!(
            "[{} INFO  devices::virtio::net::unixgram] write_frame: ENOBUFS\n",
            stamp(t + 1)
        );
        if d > 2 {
            out += &format!(
                "[{} DEBUG utils::macos::epoll] kevent: WRITE fd=7 data=17996\n",
                stamp(t + 2)
            );
        }
        out += &format!(
            "[{} INFO  devices::virtio::net::unixgram] write_frame: ENOBUFS resolved after {retries} retries\n",
            stamp(t + 1 + d)
        );
        if unified {
            out += &format!(
                "[{} DEBUG devices::virtio::net::unixgram] Written frame size=65226, written=65226\n",
                stamp(t + 1 + d)
            );
        } else {
            out += &format!(
                "[{} DEBUG devices::virtio::net::unixgram] Written eth frame to proxy: 65226 bytes\n",
                stamp(t + 1 + d)
            );
        }
        t += d + 1_000;
    }
    out
}

/// A deterministic shuffle so episodes do not arrive sorted by retries or duration.
fn shuffle<T>(v: &mut [T], mut seed: u64) {
    for i in (1..v.len()).rev() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let j = (seed >> 33) as usize % (i + 1);
        v.swap(i, j);
    }
}

/// The expected table, computed without the library: nearest-rank by integer arithmetic,
/// averages rounded half up to whole µs.
fn expected_rows(episodes: &[(u32, i64)]) -> (Vec<Vec<String>>, String) {
    let total = episodes.len() as i64;
    let mut retries: Vec<u32> = episodes.iter().map(|e| e.0).collect();
    retries.sort();
    retries.dedup();
    let rank = |sorted: &[i64], p: i64| sorted[((p * sorted.len() as i64 + 99) / 100 - 1) as usize];
    let avg = |v: &[i64]| {
        let s: i64 = v.iter().sum();
        (2 * s + v.len() as i64) / (2 * v.len() as i64)
    };
    let mut rows = Vec::new();
    for r in retries {
        let mut d: Vec<i64> = episodes.iter().filter(|e| e.0 == r).map(|e| e.1).collect();
        d.sort();
        let count = d.len() as i64;
        // One decimal, half up, on exact integers: pct*10 = round(count*1000/total).
        let pct10 = (count * 2000 + total) / (2 * total);
        rows.push(vec![
            r.to_string(),
            count.to_string(),
            format!("{}.{}%", pct10 / 10, pct10 % 10),
            format!("{}us", d[0]),
            format!("{}us", avg(&d)),
            format!("{}us", rank(&d, 99)),
            format!("{}us", d[d.len() - 1]),
        ]);
    }
    let mut all: Vec<i64> = episodes.iter().map(|e| e.1).collect();
    all.sort();
    let overall = format!(
        "Overall: min={}us avg={}us p50={}us p99={}us max={}us",
        all[0],
        avg(&all),
        rank(&all, 50),
        rank(&all, 99),
        all[all.len() - 1]
    );
    (rows, overall)
}

fn report(log: &str, name: &str) -> String {
    let dir = scratch("reflog");
    let path = write(&dir, "vmm.log", log.as_bytes());
    let run = analyze(&["report", path.to_str().unwrap(), "--name", name], None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    run.stdout
}

#[test]
fn every_cell_matches_an_independent_computation() {
    let mut seed = 42u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut episodes = Vec::new();
    for _ in 0..500 {
        let r = match next() % 100 {
            0..=79 => 1,
            80..=93 => 2,
            94..=97 => 3,
            98 => 4,
            _ => 6,
        };
        let d = 5 + (next() % 3000) as i64 * r as i64;
        episodes.push((r, d));
    }
    for unified in [false, true] {
        let out = report(&build_log(&episodes, unified), "random");
        let (rows, overall) = expected_rows(&episodes);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "random: 500 events");
        let header = lines
            .iter()
            .position(|l| l.starts_with("Retries"))
            .expect("header");
        for (i, expected) in rows.iter().enumerate() {
            let cells: Vec<&str> = lines[header + 1 + i].split_whitespace().collect();
            assert_eq!(cells.len(), 7, "row {i}: {}", lines[header + 1 + i]);
            for (c, (got, want)) in cells.iter().zip(expected).enumerate() {
                assert_eq!(
                    got,
                    want,
                    "row {} column {c}: {}",
                    i + 1,
                    lines[header + 1 + i]
                );
            }
        }
        assert_eq!(lines[header + 1 + rows.len()], overall);
    }
}

/// Durations built to have the PR's vmnet-helper distribution (280/12/1 with its min, avg,
/// p99, max per row and overall), see the derivation in the comments.
fn vmnet_helper_episodes() -> Vec<(u32, i64)> {
    let mut v = Vec::new();
    // Retries 1: 280 values, sum 119139 (avg 425.5 → 425), sorted[277] = 1274 (p99 rank 278),
    // max 1470, min 17; 144 values below 532 so that overall rank 147 (p50) is 532.
    v.push((1, 17));
    v.extend(std::iter::repeat_n((1, 300), 144));
    v.push((1, 532));
    v.extend(std::iter::repeat_n((1, 545), 108));
    v.extend(std::iter::repeat_n((1, 544), 23));
    v.extend([(1, 1274), (1, 1274), (1, 1470)]);
    // Retries 2: 12 values, sum 7877 (avg 656.4 → 656), min 517, max = p99 = 1047.
    v.extend([(2, 517), (2, 1047)]);
    v.extend(std::iter::repeat_n((2, 632), 3));
    v.extend(std::iter::repeat_n((2, 631), 7));
    // Retries 3: one episode.
    v.push((3, 624));
    v
}

#[test]
fn reproduces_the_prs_vmnet_helper_table() {
    let mut episodes = vmnet_helper_episodes();
    assert_eq!(episodes.len(), 293);
    shuffle(&mut episodes, 7);
    let out = report(&build_log(&episodes, false), "vmnet-helper");
    // The table exactly as published in the PR (reference/pr-556.md), indentation removed.
    let published = "\
vmnet-helper: 293 events

Retries   Count       %       Min       Avg       P99       Max
      1     280   95.6%       17us      425us     1274us     1470us
      2      12    4.1%      517us      656us     1047us     1047us
      3       1    0.3%      624us      624us      624us      624us
Overall: min=17us avg=436us p50=532us p99=1274us max=1470us
";
    assert!(
        out.starts_with(published),
        "expected the PR's table, got:\n{out}"
    );
    // Histogram: largest count 50 `#`, 12/280*50 = 2.1 → 2, 1/280*50 = 0.2 → at least 1.
    let bars: Vec<(String, usize)> = out
        .lines()
        .filter(|l| l.contains('#'))
        .map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            (cells[0].to_string(), cells[1].len())
        })
        .collect();
    assert_eq!(
        bars,
        vec![
            ("1".to_string(), 50),
            ("2".to_string(), 2),
            ("3".to_string(), 1)
        ]
    );
    for l in out.lines().filter(|l| l.contains('#')) {
        assert!(l.trim_end().ends_with(|c: char| c.is_ascii_digit()));
        let count: u64 = l.split_whitespace().last().unwrap().parse().unwrap();
        assert!([280, 12, 1].contains(&count), "{l}");
    }
}

#[test]
fn json_agrees_with_the_text_table() {
    let episodes = vmnet_helper_episodes();
    let dir = scratch("refjson");
    let path = write(&dir, "vmm.log", build_log(&episodes, true).as_bytes());
    let run = analyze(
        &["report", path.to_str().unwrap(), "--format", "json"],
        None,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["total"], 293);
    let rows = v["by_retries"].as_array().unwrap();
    let got: Vec<(i64, i64, i64, i64, i64, i64)> = rows
        .iter()
        .map(|r| {
            (
                r["retries"].as_i64().unwrap(),
                r["count"].as_i64().unwrap(),
                r["min_us"].as_i64().unwrap(),
                r["avg_us"].as_i64().unwrap(),
                r["p99_us"].as_i64().unwrap(),
                r["max_us"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (1, 280, 17, 425, 1274, 1470),
            (2, 12, 517, 656, 1047, 1047),
            (3, 1, 624, 624, 624, 624)
        ]
    );
    let o = &v["overall"];
    assert_eq!(
        [
            &o["min_us"],
            &o["avg_us"],
            &o["p50_us"],
            &o["p99_us"],
            &o["max_us"]
        ]
        .map(|x| x.as_i64().unwrap()),
        [17, 436, 532, 1274, 1470]
    );
    assert!((rows[0]["pct"].as_f64().unwrap() - 95.563).abs() < 0.01);
}
