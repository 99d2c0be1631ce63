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
