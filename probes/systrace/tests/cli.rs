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

/// Root and tracefs: a held command that fails still leaves a capture with its clock line
/// and header, and its status is said on stderr. (Skipped, with the reason, without them;
/// probes/test.sh runs the full checks as root.)
#[test]
fn a_held_command_that_fails_is_reported_and_the_capture_kept() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0
        || !std::path::Path::new("/sys/kernel/tracing/events/syscalls").is_dir()
    {
        eprintln!("skipped: needs root and tracefs at /sys/kernel/tracing");
        return;
    }
    let dir = std::env::temp_dir().join(format!("vnet-systrace-held-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("t.csv");
    let (code, err) = systrace(&["-o", csv.to_str().unwrap(), "-c", "false"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("the command ended with exit status: 1"),
        "{err}"
    );
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    assert!(
        lines.next().unwrap().starts_with("# clock mono_ns="),
        "{text}"
    );
    assert_eq!(lines.next(), Some(vnet_trace_schema::HEADER), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}
