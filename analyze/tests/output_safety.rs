//! Outputs never destroy inputs: `-o` onto an input (directly, through a symlink or a hard
//! link) is refused with exit 2 and the input is untouched; stdout redirected into an input is
//! refused; a failed run leaves no half-written output behind.

mod common;
use common::{analyze, crate_dir, scratch};

fn fixture_copy(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::copy(crate_dir().join("tests/fixtures/trace.csv"), &p).unwrap();
    p
}

#[test]
fn chrome_refuses_to_write_onto_its_input() {
    let dir = scratch("onto-input");
    let input = fixture_copy(&dir, "trace.csv");
    let before = std::fs::read(&input).unwrap();
    let link = dir.join("link.csv");
    std::os::unix::fs::symlink(&input, &link).unwrap();
    let hard = dir.join("hard.csv");
    std::fs::hard_link(&input, &hard).unwrap();
    let i = input.to_str().unwrap();
    for out in [&input, &link, &hard] {
        let o = out.to_str().unwrap();
        let run = analyze(&["chrome", i, "-o", o], None);
        assert_eq!(run.code, 2, "-o {o}: {}", run.stderr);
        assert_eq!(
            run.stderr.lines().count(),
            1,
            "one line for -o {o}: {}",
            run.stderr
        );
        assert!(
            run.stderr.contains("refusing to write") && run.stderr.contains("same file"),
            "{}",
            run.stderr
        );
        assert_eq!(
            std::fs::read(&input).unwrap(),
            before,
            "-o {o} changed the input"
        );
    }
    // The second of several inputs counts too.
    let other = fixture_copy(&dir, "other.csv");
    let run = analyze(&["chrome", other.to_str().unwrap(), i, "-o", i], None);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert_eq!(std::fs::read(&input).unwrap(), before);
}

#[test]
fn stdout_redirected_into_an_input_is_refused() {
    let dir = scratch("stdout-input");
    let input = fixture_copy(&dir, "trace.csv");
    let before = std::fs::read(&input).unwrap();
    for sub in ["report", "chrome", "timeline", "stalls"] {
        // `>> trace.csv`: appending, so nothing was truncated yet.
        let out = std::fs::OpenOptions::new()
            .append(true)
            .open(&input)
            .unwrap();
        let run = std::process::Command::new(env!("CARGO_BIN_EXE_analyze"))
            .args([sub, input.to_str().unwrap()])
            .stdout(out)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{sub}: {stderr}");
        assert!(stderr.contains("standard output"), "{sub}: {stderr}");
        assert_eq!(
            std::fs::read(&input).unwrap(),
            before,
            "{sub} wrote into its input"
        );
    }
    let out = std::fs::OpenOptions::new()
        .append(true)
        .open(&input)
        .unwrap();
    let i = input.to_str().unwrap();
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_analyze"))
        .args(["compare", i, i])
        .stdout(out)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2));
    assert_eq!(std::fs::read(&input).unwrap(), before);
}

#[test]
fn a_failed_run_leaves_the_old_output_and_no_temporary_file() {
    let dir = scratch("failed-run");
    let bad = dir.join("bad.csv");
    std::fs::write(
        &bad,
        "ts_ns,tid,probe,fd,queue,len,data,retries,wait_ns,errno\n5,1,tx_frame,7,,66,,,,\n6,1,nonsense,7,,,,,,\n",
    )
    .unwrap();
    let out = dir.join("out.json");
    std::fs::write(&out, "previous result").unwrap();
    let run = analyze(
        &["chrome", bad.to_str().unwrap(), "-o", out.to_str().unwrap()],
        None,
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("unknown probe"), "{}", run.stderr);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "previous result");
    let names: Vec<String> = std::fs::read_dir(&*dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "no temporary file left: {names:?}");
    // A new output is not created at all by a failed run.
    let fresh = dir.join("fresh.json");
    let run = analyze(
        &[
            "chrome",
            bad.to_str().unwrap(),
            "-o",
            fresh.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(run.code, 1);
    assert!(!fresh.exists());
}

#[test]
fn a_successful_run_replaces_the_output() {
    let dir = scratch("ok-run");
    let input = fixture_copy(&dir, "trace.csv");
    let out = dir.join("out.json");
    std::fs::write(&out, "previous result").unwrap();
    let run = analyze(
        &[
            "chrome",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let json = std::fs::read_to_string(&out).unwrap();
    assert!(json.starts_with("{\"displayTimeUnit\""), "{json}");
    assert!(json.ends_with("]}\n"));
    assert_eq!(std::fs::read_dir(&*dir).unwrap().count(), 2);
}
