//! Bad use of vnet-systrace: one line naming the flag, exit 2, and nothing written or lost.
//! (What it captures is checked as root by probes/test.sh, part e, against the device's own
//! recorder.)
use std::process::Command;

fn systrace(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vnet-systrace"))
        .args(args)
        .output()
        .expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn no_target_is_a_usage_error() {
    let (code, err) = systrace(&[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--pid") || err.contains("-p"), "{err}");
}

#[test]
fn a_pid_that_does_not_exist_is_one_line_and_exit_2() {
    let (code, err) = systrace(&["-p", "2147483646"]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("-p 2147483646: no such process"), "{err}");
}

#[test]
fn an_existing_output_file_is_refused_and_left_as_it_was() {
    let dir = std::env::temp_dir().join(format!("vnet-systrace-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("keep.csv");
    std::fs::write(&file, "keep me\n").unwrap();
    let (code, err) = systrace(&["-p", "1", "-o", file.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("-o ") && err.contains("exists"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me\n");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_fd_the_process_does_not_have_is_named() {
    let me = std::process::id().to_string();
    let (code, err) = systrace(&["-p", &me, "--fd", "99999"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--fd 99999: process") && err.contains("has no fd 99999"),
        "{err}"
    );
}

#[test]
fn bad_flag_values_are_usage_errors() {
    for args in [
        &["-p", "1", "--ring-mib", "3"][..],
        &["-p", "1", "--drain-ms", "0"],
        &["-p", "1", "--fd", "-4"],
        &["-p", "1", "--fd", "3", "--epoll", "x:1"],
        &["-p", "x"],
    ] {
        let (code, err) = systrace(args);
        assert_eq!(code, 2, "{args:?}: {err}");
    }
}
