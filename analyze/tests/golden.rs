//! Golden tests: every input kind through every subcommand and output format. Expected
//! outputs live in tests/golden/; `UPDATE_GOLDEN=1 cargo test -p analyze --test golden`
//! regenerates them (review the diff before committing).

mod common;
use common::{analyze, golden};

fn check(name: &str, args: &[&str]) {
    let run = analyze(args, None);
    assert_eq!(
        run.code, 0,
        "{name}: analyze {args:?} failed: {}",
        run.stderr
    );
    golden(name, &run.stdout);
}

const TRACE: &str = "tests/fixtures/trace.csv";
const TRACE_GZ: &str = "tests/fixtures/trace.csv.gz";
const LOG_OLD: &str = "tests/fixtures/log_old.log";
const LOG_UNIFIED: &str = "tests/fixtures/log_unified.log";

#[test]
fn report_trace_every_format() {
    for f in ["text", "markdown", "json", "csv"] {
        check(
            &format!("report_trace.{f}"),
            &["report", TRACE, "--format", f],
        );
    }
}

#[test]
fn report_trace_options() {
    check(
        "report_trace_interval.text",
        &["report", TRACE, "--by-interval", "200us"],
    );
    check(
        "report_trace_interval.markdown",
        &[
            "report",
            TRACE,
            "--by-interval",
            "200us",
            "--format",
            "markdown",
        ],
    );
    check(
        "report_trace_ms.text",
        &["report", TRACE, "--unit", "ms", "--name", "in ms"],
    );
}

#[test]
fn report_gz_matches_plain() {
    let plain = analyze(&["report", TRACE, "--format", "json"], None);
    let gz = analyze(&["report", TRACE_GZ, "--format", "json"], None);
    assert_eq!(gz.code, 0, "{}", gz.stderr);
    // Same data, same title (extensions stripped); only the source name differs.
    assert_eq!(
        plain.stdout.replace(TRACE, "X"),
        gz.stdout.replace(TRACE_GZ, "X")
    );
    check("report_trace_gz.text", &["report", TRACE_GZ]);
}

#[test]
fn report_stdin() {
    let data = std::fs::read(common::crate_dir().join(TRACE)).unwrap();
    let run = analyze(&["report", "-"], Some(&data));
    assert_eq!(run.code, 0, "{}", run.stderr);
    golden("report_stdin.text", &run.stdout);
    // gzip through stdin too.
    let gz = std::fs::read(common::crate_dir().join(TRACE_GZ)).unwrap();
    let run_gz = analyze(&["report", "-"], Some(&gz));
    assert_eq!(run_gz.stdout, run.stdout);
}

#[test]
fn report_logs() {
    for f in ["text", "markdown", "json", "csv"] {
        check(
            &format!("report_log_old.{f}"),
            &["report", LOG_OLD, "--format", f],
        );
    }
    check("report_log_unified.text", &["report", LOG_UNIFIED]);
    check(
        "report_log_unified.json",
        &["report", LOG_UNIFIED, "--format", "json"],
    );
}

#[test]
fn report_several_files() {
    check("report_two_logs.text", &["report", LOG_OLD, LOG_UNIFIED]);
}

#[test]
fn timelines() {
    check(
        "timeline_trace_episode1.text",
        &["timeline", TRACE, "--episode", "1"],
    );
    check(
        "timeline_trace_episode3.json",
        &["timeline", TRACE, "--episode", "3", "--format", "json"],
    );
    check(
        "timeline_trace_slowest2.text",
        &["timeline", TRACE, "--slowest", "2", "--before", "0"],
    );
    check(
        "timeline_trace_at.text",
        &["timeline", TRACE, "--at", "+0.31ms", "--before", "5us"],
    );
    check(
        "timeline_log_old.text",
        &["timeline", LOG_OLD, "--slowest", "1"],
    );
    check(
        "timeline_log_old_at.text",
        &[
            "timeline",
            LOG_OLD,
            "--at",
            "2026-03-01T10:00:00.300100Z",
            "--before",
            "0",
        ],
    );
    check(
        "timeline_log_unified.text",
        &["timeline", LOG_UNIFIED, "--episode", "1"],
    );
}

#[test]
fn stalls() {
    check(
        "stalls_trace.text",
        &["stalls", TRACE, "--threshold", "95us", "--before", "0"],
    );
    check(
        "stalls_trace.json",
        &[
            "stalls",
            TRACE,
            "--threshold",
            "95us",
            "--before",
            "0",
            "--format",
            "json",
        ],
    );
    check(
        "stalls_log_unified.text",
        &["stalls", LOG_UNIFIED, "--threshold", "1ms"],
    );
}

#[test]
fn chrome() {
    for (name, input) in [
        ("chrome_trace.json", TRACE),
        ("chrome_log_old.json", LOG_OLD),
    ] {
        let run = analyze(&["chrome", input], None);
        assert_eq!(run.code, 0, "{}", run.stderr);
        // Perfetto needs valid JSON with a traceEvents array.
        let v: serde_json::Value = serde_json::from_str(&run.stdout).expect("valid JSON");
        assert!(v["traceEvents"].as_array().is_some_and(|a| !a.is_empty()));
        golden(name, &run.stdout);
    }
}

#[test]
fn compare_every_format() {
    for f in ["text", "markdown", "json", "csv"] {
        check(
            &format!("compare.{f}"),
            &[
                "compare", LOG_OLD, TRACE, "--format", f, "--name-a", "before", "--name-b", "after",
            ],
        );
    }
}

#[test]
fn pre_fix_log_without_resolved_lines() {
    // Builds before the fix log every failure and no "resolved" line: the frame written
    // closes the episode.
    let log = "tests/fixtures/log_prefix.log";
    check("report_log_prefix.text", &["report", log]);
    check(
        "timeline_log_prefix.text",
        &["timeline", log, "--episode", "1"],
    );
}
