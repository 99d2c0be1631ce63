//! The PR author's hand-built timeline, reproduced by the tool: two write wake-ups without
//! room for the frame and a guest kick explain "resolved after 3 retries".

mod common;
use common::{analyze, scratch, write};

#[test]
fn explains_retries_by_their_wake_ups() {
    let trace = "\
# clock mono_ns=1000000000 wall_ns=1772359200000000000
ts_ns,tid,probe,fd,queue,len,data,retries,wait_ns,errno
1000000000,7,tx_frame,7,,65226,,,,
1000100000,7,enobufs_begin,7,,65226,,,,55
1000150000,7,kevent_write,7,,,17996,,,
1000150500,7,enobufs_retry,7,,,,2,,55
1000300000,7,kevent_read,40,,,16,,,
1000400000,7,kevent_write,7,,,24576,,,
1000400500,7,enobufs_retry,7,,,,3,,55
1000800000,9,guest_kick,,0,,,,,
1000800900,7,enobufs_resolved,7,,65226,,3,700900,
1000801000,7,tx_frame,7,,65226,,,,
";
    let dir = scratch("explain");
    let path = write(&dir, "pr.csv", trace.as_bytes());
    let run = analyze(
        &[
            "timeline",
            path.to_str().unwrap(),
            "--episode",
            "1",
            "--before",
            "0",
        ],
        None,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    // Both write wake-ups are judged against the 65226-byte frame.
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("(no room: the frame needs 65226)"))
            .count(),
        2,
        "{}",
        run.stdout
    );
    assert!(
        lines[2]
            .starts_with("2026-03-01T10:00:00.000100Z          +0us  ENOBUFS: first failed send"),
        "{}",
        lines[2]
    );
    assert!(
        run.stdout.contains("+700.900us  resolved after 3 retries"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("+701us  frame written: 65226 bytes"),
        "{}",
        run.stdout
    );
    let n = lines.len();
    assert_eq!(
        lines[n - 2],
        "3 retries: 2 write events (2 without room), 1 guest kick, 1 read event"
    );
    assert_eq!(
        lines[n - 1],
        "sends after the first failure: 2 failed (after a write wake-up without room, after a write wake-up without room), then sent after a guest kick"
    );
}
