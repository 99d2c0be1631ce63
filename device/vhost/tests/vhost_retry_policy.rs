//! `--retry-policy` on the daemon: a bad value is one line on stderr and exit 2, before any
//! socket is created.

use std::process::Command;

#[test]
fn a_bad_retry_policy_is_one_line_and_exit_2() {
    let dir = std::env::temp_dir().join(format!("vnet-vhost-policy-{}", std::process::id()));
    let sock = dir.join("vhost.sock");
    for bad in ["sometimes", "bounded", "bounded:-2", "backoff:3", "timer:1"] {
        let out = Command::new(env!("CARGO_BIN_EXE_vnet-vhost"))
            .args(["--socket", sock.to_str().unwrap()])
            .args(["--proxy", "unixgram:/nonexistent/proxy.sock"])
            .args(["--retry-policy", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{bad}: {err}");
        assert!(err.contains("--retry-policy") && err.contains(bad), "{err}");
        assert!(!sock.exists());
    }
}
