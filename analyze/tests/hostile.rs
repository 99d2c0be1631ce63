//! analyze under hostile input (issue 12, items 7-12): bounded memory and time, a closed
//! pipe, and no silent wrong answers.

mod common;
use common::{analyze, crate_dir, scratch, write};
use std::io::Write;
use std::process::{Command, Stdio};

const HEADER: &str = "ts_ns,tid,probe,fd,queue,len,data,retries,wait_ns,errno\n";

/// Runs analyze with stdout a pipe whose reading end is already closed (`| head -0`).
fn run_into_closed_pipe(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_analyze"))
        .args(args)
        .current_dir(crate_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_closed_stdout_ends_quietly() {
    for args in [
        &["report", "tests/fixtures/trace.csv"][..],
        &["chrome", "tests/fixtures/trace.csv"],
        &["timeline", "tests/fixtures/trace.csv"],
        &["stalls", "tests/fixtures/trace.csv", "--threshold", "1us"],
        &[
            "compare",
            "tests/fixtures/trace.csv",
            "tests/fixtures/log_old.log",
        ],
    ] {
        let (code, stderr) = run_into_closed_pipe(args);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        assert_eq!(stderr, "", "{args:?}");
    }
}

/// gzip of `n` zero bytes, made by the system's gzip (a decompression bomb in small).
fn gzip_of_zeros(n: usize) -> Vec<u8> {
    let mut child = Command::new("gzip")
        .arg("-c")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("gzip is installed");
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let zeros = vec![0u8; 1 << 20];
        let mut left = n;
        while left > 0 {
            let k = left.min(zeros.len());
            stdin.write_all(&zeros[..k]).unwrap();
            left -= k;
        }
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out.stdout
}

#[test]
fn chrome_into_a_pipe_closed_mid_stream_ends_quietly() {
    // `analyze chrome big.csv | head -1`: the reader goes away after the first line, while
    // events are being written (not before the first write, as above).
    let dir = scratch("chrome-head");
    let mut trace = Vec::new();
    analyze::gen::generate(&mut trace, 200_000, 9).unwrap();
    let p = write(&dir, "big.csv", &trace);
    let mut child = Command::new(env!("CARGO_BIN_EXE_analyze"))
        .args(["chrome", p.to_str().unwrap(), "--frames"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 4096];
    let n = std::io::Read::read(&mut stdout, &mut first).unwrap();
    assert!(n > 0);
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stderr, "");
}

#[test]
fn an_endless_line_stops_with_line_too_long() {
    // /dev/zero never ends and has no newline.
    let run = analyze(&["report", "/dev/zero"], None);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(
        run.stderr.trim_end(),
        "analyze: /dev/zero:1: line too long (no newline in 1048576 bytes)"
    );
    // The same through gzip: 64 MiB of zeros in 64 KiB.
    let dir = scratch("bomb");
    let bomb = write(&dir, "bomb.csv.gz", &gzip_of_zeros(64 << 20));
    let p = bomb.to_str().unwrap();
    let run = analyze(&["report", p, "--lenient"], None);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "{p}:1: line too long (no newline in 1048576 bytes)"
        )),
        "{}",
        run.stderr
    );
    // A long line after good ones names its line number.
    let mut body = format!("{HEADER}5,1,tx_frame,7,,66,,,,\n").into_bytes();
    body.extend(std::iter::repeat_n(b'7', 3 << 20));
    body.push(b'\n');
    let p = write(&dir, "long.csv", &body);
    let run = analyze(&["report", p.to_str().unwrap()], None);
    assert!(
        run.stderr.contains("long.csv:3: line too long"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_bad_field_is_quoted_by_a_short_prefix() {
    let dir = scratch("quote");
    let long_field = "x".repeat(100_000);
    let cases = [
        format!("{HEADER}5,1,tx_frame,{long_field},,66,,,,\n"),
        format!("{HEADER}5,1,{long_field},7,,66,,,,\n"),
        format!("ts_ns,{long_field}\n"),
        format!("2026-03-01T10:00:00.1Z write_frame: ENOBUFS resolved after {long_field}\n"),
    ];
    for (i, body) in cases.iter().enumerate() {
        let p = write(&dir, &format!("q{i}.csv"), body.as_bytes());
        let run = analyze(&["report", p.to_str().unwrap()], None);
        assert_eq!(run.code, 1, "case {i}: {}", run.stderr);
        assert!(
            run.stderr.len() < 400,
            "case {i}: {} bytes: {}",
            run.stderr.len(),
            &run.stderr[..400]
        );
        assert!(run.stderr.contains("... (1000"), "case {i}: {}", run.stderr);
    }
}

#[test]
fn by_interval_refuses_more_rows_than_it_can_print() {
    let dir = scratch("intervals");
    // 10 s of input at 1 ns would be 10^10 intervals.
    let body =
        format!("{HEADER}1000000000,1,tx_frame,7,,66,,,,\n11000000000,1,tx_frame,7,,66,,,,\n");
    let p = write(&dir, "span.csv", body.as_bytes());
    let p = p.to_str().unwrap();
    let run = analyze(&["report", p, "--by-interval", "1ns"], None);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(
        run.stderr.starts_with("analyze: --by-interval: "),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains(&format!("{p}:3")), "{}", run.stderr);
    // One bogus timestamp (three years later) with a sensible width.
    let body = format!(
        "{HEADER}1000000000,1,tx_frame,7,,66,,,,\n2000000000,1,tx_frame,7,,66,,,,\n100000000000000000,1,rx_frame,7,,66,,,,\n"
    );
    let p = write(&dir, "bogus.csv", body.as_bytes());
    let p = p.to_str().unwrap();
    let run = analyze(&["report", p, "--by-interval", "10s"], None);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains(&format!("{p}:4")), "{}", run.stderr);
    assert!(run.stdout.is_empty());
    // Within the bound it still works.
    let p = dir.join("span.csv");
    let run = analyze(
        &["report", p.to_str().unwrap(), "--by-interval", "1s"],
        None,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("9s-10s "), "{}", run.stdout);
}

/// The report with the "put back in order" note removed.
fn without_reorder_note(report: &str) -> String {
    let mut kept: Vec<&str> = report
        .lines()
        .filter(|l| !l.contains("arrived out of time order"))
        .collect();
    while kept.last().is_some_and(|l| l.is_empty()) {
        kept.pop();
    }
    kept.join("\n")
}

#[test]
fn late_rows_are_merged_back_in_time_order() {
    // Per-CPU interleaving (what the reorder window is for) and a reversed run of rows:
    // the report equals the one over the same rows in time order. These once took
    // O(window) per late row (Vec::insert); the benchmark times them, this checks the order.
    let dir = scratch("reorder");
    let mut ordered = Vec::new();
    analyze::gen::generate(&mut ordered, 60_000, 3).unwrap();
    let mut interleaved = analyze::gen::PerCpu::new(Vec::new(), 4, 4096, 3);
    analyze::gen::generate(&mut interleaved, 60_000, 3).unwrap();
    let interleaved = interleaved.finish().unwrap();
    assert_ne!(ordered, interleaved);
    let a = write(&dir, "ordered.csv", &ordered);
    let b = write(&dir, "interleaved.csv", &interleaved);
    let ra = analyze(&["report", a.to_str().unwrap(), "--name", "t"], None);
    let rb = analyze(&["report", b.to_str().unwrap(), "--name", "t"], None);
    assert_eq!(rb.code, 0, "{}", rb.stderr);
    assert!(
        rb.stdout.contains("events arrived out of time order"),
        "{}",
        rb.stdout
    );
    assert_eq!(
        without_reorder_note(&ra.stdout),
        without_reorder_note(&rb.stdout)
    );

    // Equal timestamps keep their input order when both arrive late.
    let mut body = String::from(HEADER);
    body.push_str("1000,1,kevent_write,7,,,100,,,\n");
    body.push_str("500,1,enobufs_begin,7,,1514,,,,55\n");
    body.push_str("600,1,kevent_write,7,,,10,,,\n");
    body.push_str("600,1,kevent_write,7,,,2000,,,\n");
    body.push_str("700,1,enobufs_resolved,7,,1514,,1,200,\n");
    let p = write(&dir, "ties.csv", body.as_bytes());
    let run = analyze(&["timeline", p.to_str().unwrap(), "--episode", "1"], None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let no_room = run.stdout.find("data=10 (no room").expect("first write");
    let room = run.stdout.find("data=2000 (room").expect("second write");
    assert!(no_room < room, "{}", run.stdout);
}

/// Runs analyze on a file; returns (exit code, stdout, stderr, peak RSS in MB).
fn run_measured(args: &[&str]) -> (i32, String, String, f64) {
    let child = Command::new(env!("CARGO_BIN_EXE_analyze"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut child = child;
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).unwrap();
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut s).unwrap();
        s
    });
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value, and wait4 only writes into it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our own child, not yet reaped (we never called wait on `child`).
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    (
        code,
        out.join().unwrap(),
        err.join().unwrap(),
        usage.ru_maxrss as f64 / 1024.0,
    )
}

#[test]
fn many_open_episodes_keep_timeline_and_stalls_memory_bounded() {
    // 1,000 episodes open at once, then 3,000 wake-ups that each of them would receive.
    let dir = scratch("open-episodes");
    let mut body = String::from(HEADER);
    for fd in 0..1_000 {
        body.push_str(&format!(
            "{},1,enobufs_begin,{fd},,1514,,,,55\n",
            1_000_000 + fd
        ));
    }
    for i in 0..3_000 {
        body.push_str(&format!("{},2,guest_kick,,0,,,,,\n", 2_000_000 + i));
    }
    let p = write(&dir, "open.csv", body.as_bytes());
    let p = p.to_str().unwrap();
    let (code, out, err, rss) = run_measured(&["stalls", p, "--threshold", "1us"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("0 episodes of 1us or longer, 1000 never resolved"),
        "{}",
        &out[..200]
    );
    assert!(
        out.contains("total cap"),
        "the output says events were left out"
    );
    let event_lines = out
        .lines()
        .filter(|l| l.contains("guest kick queue"))
        .count();
    assert!(event_lines <= 200_000, "{event_lines} event lines");
    assert!(rss < 150.0, "stalls peak RSS {rss:.0} MB");
    let (code, _, err, rss) = run_measured(&["timeline", p, "--slowest", "1"]);
    assert_eq!(code, 1, "no resolved episode: {err}");
    assert!(rss < 150.0, "timeline peak RSS {rss:.0} MB");
}

#[test]
fn byte_totals_saturate_with_a_note_instead_of_wrapping() {
    let dir = scratch("bytes");
    // The largest length a row can carry (18 digits), 20 times: more than u64::MAX.
    let big = 999_999_999_999_999_999i64;
    let mut body = String::from(HEADER);
    for ts in 1..=20 {
        body.push_str(&format!("{ts},1,tx_frame,7,,{big},,,,\n"));
    }
    let p = write(&dir, "bytes.csv", body.as_bytes());
    let run = analyze(&["report", p.to_str().unwrap(), "--format", "json"], None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains(&format!("\"tx_bytes\": {}", u64::MAX)),
        "{}",
        run.stdout
    );
    let run = analyze(&["report", p.to_str().unwrap()], None);
    assert!(
        run.stdout.contains("frame byte totals reached"),
        "{}",
        run.stdout
    );
}

#[test]
fn zero_or_negative_retry_counts_are_rejected() {
    let dir = scratch("retries");
    for (row, want) in [
        (
            "20,1,enobufs_resolved,7,,1514,,0,10,",
            "field `retries`: 0, but enobufs_resolved rows count at least 1",
        ),
        (
            "20,1,enobufs_resolved,7,,1514,,-3,10,",
            "field `retries`: -3, but",
        ),
        (
            "15,1,enobufs_retry,7,,,,1,,55",
            "field `retries`: 1, but enobufs_retry rows count at least 2",
        ),
    ] {
        let body = format!("{HEADER}10,1,enobufs_begin,7,,1514,,,,55\n{row}\n");
        let p = write(&dir, "r.csv", body.as_bytes());
        let p = p.to_str().unwrap();
        let run = analyze(&["report", p], None);
        assert_eq!(run.code, 1, "{row}: {}", run.stdout);
        assert!(
            run.stderr.contains(&format!("{p}:3: {want}")),
            "{row}: {}",
            run.stderr
        );
    }
    let log = "2026-03-01T10:00:00.1Z write_frame: ENOBUFS\n2026-03-01T10:00:00.2Z write_frame: ENOBUFS resolved after 0 retries\n";
    let p = write(&dir, "r.log", log.as_bytes());
    let run = analyze(&["report", p.to_str().unwrap()], None);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stderr.contains("r.log:2: field `retries`"),
        "{}",
        run.stderr
    );
}

#[test]
fn at_past_the_end_says_there_is_no_episode_then() {
    for at in ["+9999999999s", "+1000s", "99999999999999"] {
        let run = analyze(&["timeline", "tests/fixtures/trace.csv", "--at", at], None);
        assert_eq!(run.code, 1, "--at {at}: {}", run.stdout);
        assert!(run.stdout.is_empty(), "--at {at} picked: {}", run.stdout);
        assert!(
            run.stderr.contains("no episode at the --at time: it is")
                && run.stderr.contains("after the input's last event"),
            "--at {at}: {}",
            run.stderr
        );
    }
}

#[test]
fn retries_going_backwards_are_flagged() {
    let dir = scratch("backwards");
    let body = format!(
        "{HEADER}10,1,enobufs_begin,7,,1514,,,,55\n20,1,enobufs_retry,7,,,,3,,55\n30,1,enobufs_retry,7,,,,2,,55\n40,1,enobufs_resolved,7,,1514,,3,30,\n"
    );
    let p = write(&dir, "back.csv", body.as_bytes());
    let p = p.to_str().unwrap();
    let run = analyze(&["report", p], None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains(&format!(
            "note: 1 retry count(s) went backwards within an episode (first at {p}:4)"
        )),
        "{}",
        run.stdout
    );
    // A resolution counting fewer failed sends than the last attempt seen.
    let body = format!(
        "{HEADER}10,1,enobufs_begin,7,,1514,,,,55\n20,1,enobufs_retry,7,,,,2,,55\n30,1,enobufs_retry,7,,,,3,,55\n40,1,enobufs_resolved,7,,1514,,2,30,\n"
    );
    let p = write(&dir, "short.csv", body.as_bytes());
    let run = analyze(&["report", p.to_str().unwrap()], None);
    assert!(run.stdout.contains("short.csv:5)"), "{}", run.stdout);
    // Rising attempts: no note.
    let body = format!(
        "{HEADER}10,1,enobufs_begin,7,,1514,,,,55\n20,1,enobufs_retry,7,,,,2,,55\n30,1,enobufs_retry,7,,,,3,,55\n40,1,enobufs_resolved,7,,1514,,3,30,\n"
    );
    let p = write(&dir, "ok.csv", body.as_bytes());
    let run = analyze(&["report", p.to_str().unwrap()], None);
    assert!(!run.stdout.contains("backwards"), "{}", run.stdout);
}

#[test]
fn a_last_line_without_newline_is_noted_even_when_it_parses() {
    let dir = scratch("unterminated");
    // `...,1,30` may have been `...,1,3000` before the capture stopped.
    let body =
        format!("{HEADER}10,1,enobufs_begin,7,,1514,,,,55\n40,1,enobufs_resolved,7,,1514,,1,30,");
    let p = write(&dir, "cut.csv", body.as_bytes());
    let run = analyze(&["report", p.to_str().unwrap()], None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .contains("cut.csv:3: last line has no newline: read as is, but it may be cut short"),
        "{}",
        run.stdout
    );
    // Cut before its last field: too few fields, reported as cut off and left out.
    let body =
        format!("{HEADER}10,1,enobufs_begin,7,,1514,,,,55\n40,1,enobufs_resolved,7,,1514,,1");
    let p = write(&dir, "short.csv", body.as_bytes());
    let run = analyze(&["report", p.to_str().unwrap()], None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("short.csv:3: last line is cut off"),
        "{}",
        run.stdout
    );
    let log = "2026-03-01T10:00:00.1Z write_frame: ENOBUFS\n2026-03-01T10:00:00.2Z write_frame: ENOBUFS resolved after 1 retries";
    let p = write(&dir, "cut.log", log.as_bytes());
    let run = analyze(&["report", p.to_str().unwrap()], None);
    assert!(
        run.stdout.contains("cut.log:2: last line has no newline"),
        "{}",
        run.stdout
    );
}
