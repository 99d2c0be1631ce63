//! One test per kind of bad input: the error names file, line and field; `--lenient` skips
//! and counts; a cut-off last line is reported, not fatal.

mod common;
use common::{analyze, scratch, write};

const HEADER: &str = "ts_ns,tid,probe,fd,queue,len,data,retries,wait_ns,errno\n";

fn run_on(name: &str, content: &[u8], extra: &[&str]) -> (common::Run, String) {
    let dir = scratch(name);
    let path = write(&dir, name, content);
    let p = path.to_str().unwrap().to_string();
    let mut args = vec!["report", p.as_str()];
    args.extend_from_slice(extra);
    (analyze(&args, None), p)
}

fn episode(begin: i64, end: i64, fd: i64) -> String {
    format!(
        "{begin},1,enobufs_begin,{fd},,65226,,,,55\n{end},1,enobufs_resolved,{fd},,65226,,1,{},\n",
        end - begin
    )
}

#[test]
fn wrong_header() {
    let body = format!(
        "# clock mono_ns=1 wall_ns=2\nts,tid,probe,fd,queue,len,data,retries,wait_ns,errno\n{}",
        episode(10, 20, 7)
    );
    let (run, p) = run_on("hdr.csv", body.as_bytes(), &[]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains(&format!("{p}:2: wrong header")),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("expected `ts_ns,tid,probe"),
        "{}",
        run.stderr
    );
}

#[test]
fn missing_header() {
    let (run, p) = run_on("nohdr.csv", episode(10, 20, 7).as_bytes(), &[]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains(&format!("{p}:1: wrong header")),
        "{}",
        run.stderr
    );
}

#[test]
fn missing_field() {
    let body = format!(
        "{HEADER}{}100,1,kevent_write,7,,,5000,,\n",
        episode(10, 20, 7)
    );
    let (run, p) = run_on("missing.csv", body.as_bytes(), &[]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr
            .contains(&format!("{p}:4: field `errno`: missing")),
        "{}",
        run.stderr
    );
}

#[test]
fn required_field_empty() {
    let body = format!("{HEADER}100,1,enobufs_resolved,7,,65226,,,5,\n");
    let (run, p) = run_on("empty.csv", body.as_bytes(), &[]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr
            .contains(&format!("{p}:2: field `retries`: empty")),
        "{}",
        run.stderr
    );
}

#[test]
fn non_number() {
    let body = format!(
        "{HEADER}{}100,1,kevent_write,seven,,,5000,,,\n",
        episode(10, 20, 7)
    );
    let (run, p) = run_on("nan.csv", body.as_bytes(), &[]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr
            .contains(&format!("{p}:4: field `fd`: not a number: \"seven\"")),
        "{}",
        run.stderr
    );
}

#[test]
fn unknown_probe() {
    let body = format!("{HEADER}100,1,kevent_writ,7,,,5000,,,\n");
    let (run, p) = run_on("probe.csv", body.as_bytes(), &[]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr
            .contains(&format!("{p}:2: field `probe`: unknown probe")),
        "{}",
        run.stderr
    );
}

#[test]
fn out_of_order_timestamps() {
    // 2 s back: far beyond the 10 ms reorder window.
    let body = format!(
        "{HEADER}{}{}",
        episode(3_000_000_000, 3_000_100_000, 7),
        episode(1_000_000_000, 1_000_050_000, 7)
    );
    let (run, p) = run_on("ooo.csv", body.as_bytes(), &[]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains(&format!("{p}:4: field `ts_ns`")),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("earlier than line 3"), "{}", run.stderr);
    // A wider window accepts and reorders them.
    let (run, _) = run_on("ooo2.csv", body.as_bytes(), &["--reorder-window", "3s"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with("ooo2: 2 events"), "{}", run.stdout);
    assert!(
        run.stdout.contains("2 events arrived out of time order"),
        "{}",
        run.stdout
    );
}

#[test]
fn small_disorder_is_put_back_in_order() {
    // Resolution printed 3 µs before its begin (per-CPU buffers): within the window.
    let body = format!(
        "{HEADER}1000000,1,enobufs_resolved,7,,65226,,2,40000,\n960000,1,enobufs_begin,7,,65226,,,,55\n"
    );
    let (run, _) = run_on("jitter.csv", body.as_bytes(), &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("      2       1  100.0%       40us"),
        "{}",
        run.stdout
    );
}

#[test]
fn out_of_order_lenient_skips_and_counts() {
    let body = format!(
        "{HEADER}{}{}{}",
        episode(3_000_000_000, 3_000_100_000, 7),
        episode(1_000_000_000, 1_000_050_000, 7),
        episode(4_000_000_000, 4_000_020_000, 7)
    );
    let (run, _) = run_on("ooo3.csv", body.as_bytes(), &["--lenient"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with("ooo3: 2 events"), "{}", run.stdout);
    assert!(
        run.stdout.contains("note: 2 bad lines skipped (--lenient)"),
        "{}",
        run.stdout
    );
}

#[test]
fn resolution_without_begin() {
    // Mid-stream (the fd already had an episode): a lost begin is an error...
    let body = format!(
        "{HEADER}{}500000,1,enobufs_resolved,7,,65226,,1,100,\n",
        episode(10, 20, 7)
    );
    let (run, p) = run_on("orphan.csv", body.as_bytes(), &[]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains(&format!(
            "{p}:4: enobufs_resolved on fd 7 without a matching enobufs_begin"
        )),
        "{}",
        run.stderr
    );
    // ... skipped and counted with --lenient ...
    let (run, _) = run_on("orphan2.csv", body.as_bytes(), &["--lenient"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.starts_with("orphan2: 1 events"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("1 bad lines skipped"), "{}", run.stdout);
    // ... but as the first event of its fd, the capture simply started mid-episode: a note.
    let body = format!(
        "{HEADER}5,1,enobufs_resolved,9,,65226,,1,100,\n{}",
        episode(10, 20, 9)
    );
    let (run, _) = run_on("midway.csv", body.as_bytes(), &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with("midway: 1 events"), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("1 resolution(s) without a begin at the start of the input"),
        "{}",
        run.stdout
    );
}

#[test]
fn resolution_without_begin_in_a_log() {
    let log = "\
[2026-03-01T10:00:00.100050Z INFO  n] write_frame: ENOBUFS
[2026-03-01T10:00:00.100900Z INFO  n] write_frame: ENOBUFS resolved after 2 retries
[2026-03-01T10:00:00.200900Z INFO  n] write_frame: ENOBUFS resolved after 1 retries
";
    let (run, p) = run_on("orphan.log", log.as_bytes(), &[]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains(&format!("{p}:3: enobufs_resolved")),
        "{}",
        run.stderr
    );
}

#[test]
fn truncated_last_line() {
    let mut body = format!(
        "{HEADER}{}{}",
        episode(10_000, 30_000, 7),
        episode(50_000, 60_000, 7)
    );
    body.push_str("70000,1,enobufs_resolv"); // capture killed mid-write
    let (run, p) = run_on("cut.csv", body.as_bytes(), &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with("cut: 2 events"), "{}", run.stdout);
    assert!(
        run.stdout.contains(&format!(
            "note: {p}:6: last line is cut off (no newline); ignored"
        )),
        "{}",
        run.stdout
    );
    // A complete last line without a newline is just data.
    let body = format!("{HEADER}{}", episode(10_000, 30_000, 7));
    let (run, _) = run_on("nonl.csv", body.trim_end().as_bytes(), &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with("nonl: 1 events"));
    assert!(!run.stdout.contains("cut off"));
}

#[test]
fn binary_garbage() {
    let mut garbage = vec![0x7fu8, b'E', b'L', b'F', 2, 1, 1, 0];
    garbage.extend((0..200u32).map(|i| (i * 37 % 251) as u8));
    let (run, p) = run_on("garbage.bin", &garbage, &[]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains(&format!("{p}:1: binary data")),
        "{}",
        run.stderr
    );
    // Garbage in the middle of a trace: the row is named.
    let mut body = format!("{HEADER}{}", episode(10, 20, 7)).into_bytes();
    body.extend_from_slice(&[0xff, 0xfe, 0x00, b',', b'\n']);
    let (run, p) = run_on("midgarbage.csv", &body, &[]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains(&format!("{p}:4: field")),
        "{}",
        run.stderr
    );
}

#[test]
fn bad_log_line_names_the_field() {
    let log = "\
[2026-03-01T10:00:00.100000Z DEBUG e] kevent: WRITE fd=7 data=lots
[2026-03-01T10:00:00.100050Z INFO  n] write_frame: ENOBUFS
[not-a-time INFO  n] write_frame: ENOBUFS resolved after 2 retries
";
    let (run, p) = run_on("bad.log", log.as_bytes(), &[]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains(&format!("{p}:1: field `data`")),
        "{}",
        run.stderr
    );
    let (run, _) = run_on("bad2.log", log.as_bytes(), &["--lenient"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("2 bad lines skipped"), "{}", run.stdout);
    assert!(run.stdout.contains("field `timestamp`"), "{}", run.stdout);
    assert!(
        run.stdout.contains("Still open at the end of the input: 1"),
        "{}",
        run.stdout
    );
}

#[test]
fn empty_input_is_an_error_not_an_empty_report() {
    // "0 events" with exit 0 read as a clean capture that saw nothing (issue 12 item 12).
    let (run, p) = run_on("empty.log", b"", &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(
        run.stderr,
        format!("analyze: {p}: no trace header or log line found (empty input?)\n")
    );
    assert!(run.stdout.is_empty());
    let run = analyze(&["report", "-"], Some(b"# clock mono_ns=1 wall_ns=2\n\n"));
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("<stdin>: no trace header or log line found"),
        "{}",
        run.stderr
    );
    // A header and no rows is a capture that saw nothing: a report, not an error.
    let run = analyze(&["report", "-"], Some(HEADER.as_bytes()));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with("stdin: 0 events"), "{}", run.stdout);
}

#[test]
fn missing_file() {
    let run = analyze(&["report", "/nonexistent/trace.csv"], None);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("/nonexistent/trace.csv"),
        "{}",
        run.stderr
    );
}

#[test]
fn bpftrace_noise_is_skipped_and_lost_events_are_reported() {
    // Without -q bpftrace prints a banner; on overflow "Lost N events"; at exit its maps.
    let body = format!(
        "Attaching 12 probes...\n# clock mono_ns=1 wall_ns=2\n{HEADER}{}Lost 12 events\n{}\n@start[7]: 10\n",
        episode(10_000, 30_000, 7),
        episode(50_000, 60_000, 7)
    );
    let (run, _) = run_on("bt.csv", body.as_bytes(), &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with("bt: 2 events"), "{}", run.stdout);
    assert!(
        run.stdout.contains("note: 2 lines skipped"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("the tracer reported 12 lost events"),
        "{}",
        run.stdout
    );
}

#[test]
fn wall_clock_at_needs_a_clock_line() {
    let body = format!("{HEADER}{}", episode(10_000, 30_000, 7));
    let dir = scratch("noclock");
    let path = write(&dir, "noclock.csv", body.as_bytes());
    let p = path.to_str().unwrap();
    let run = analyze(&["timeline", p, "--at", "2026-03-01T10:00:00Z"], None);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("no `# clock` line"), "{}", run.stderr);
    // The trace's own clock works.
    let run = analyze(&["timeline", p, "--at", "20000"], None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with("Episode 1:"), "{}", run.stdout);
}

#[test]
fn begin_while_open_abandons_the_earlier_episode() {
    // A resolution went missing (lost event): the next begin on the same fd abandons the
    // earlier episode, which is listed rather than silently merged into the new one.
    let body = format!(
        "{HEADER}10000,1,enobufs_begin,7,,65226,,,,55\n15000,1,kevent_write,7,,,100,,,\n{}",
        episode(50_000, 60_000, 7)
    );
    let (run, _) = run_on("twice.csv", body.as_bytes(), &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with("twice: 1 events"), "{}", run.stdout);
    assert!(
        run.stdout.contains("      1       1  100.0%       10us"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("episode 1 "), "{}", run.stdout);
    assert!(run.stdout.contains("abandoned after 5us"), "{}", run.stdout);
    assert!(
        run.stdout.contains("1 episode(s) began again on an fd"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("Write wake-ups during episodes: 1 (1 with too little room"),
        "{}",
        run.stdout
    );
}
