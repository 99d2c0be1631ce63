//! Just enough QMP to resume a QEMU started with `-S`: the syscall captures attach while the
//! guest is held, so they see every byte the guest moves.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP socket {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("QMP socket {path}: {what}")]
    Protocol { path: String, what: String },
}

/// Sends `qmp_capabilities` then `cont`, each answered before the next; events QEMU
/// interleaves are skipped.
pub fn cont(path: &Path, timeout: Duration) -> Result<(), QmpError> {
    let p = path.display().to_string();
    let io = |source| QmpError::Io {
        path: p.clone(),
        source,
    };
    let stream = UnixStream::connect(path).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut writer = stream.try_clone().map_err(io)?;
    let mut reader = BufReader::new(stream);
    let greeting = read_message(&mut reader, &p)?;
    if greeting.get("QMP").is_none() {
        return Err(QmpError::Protocol {
            path: p,
            what: format!("no QMP greeting: {greeting}"),
        });
    }
    for command in ["qmp_capabilities", "cont"] {
        writeln!(writer, "{{\"execute\":\"{command}\"}}").map_err(io)?;
        loop {
            let reply = read_message(&mut reader, &p)?;
            if reply.get("return").is_some() {
                break;
            }
            if let Some(e) = reply.get("error") {
                return Err(QmpError::Protocol {
                    path: p,
                    what: format!("{command}: {e}"),
                });
            }
        }
    }
    Ok(())
}

/// One JSON object per line; a closed socket or a line that is not JSON is an error.
fn read_message(reader: &mut impl BufRead, path: &str) -> Result<Value, QmpError> {
    let mut line = String::new();
    let n = reader.read_line(&mut line).map_err(|source| QmpError::Io {
        path: path.into(),
        source,
    })?;
    if n == 0 {
        return Err(QmpError::Protocol {
            path: path.into(),
            what: "closed by QEMU".into(),
        });
    }
    serde_json::from_str(line.trim()).map_err(|e| QmpError::Protocol {
        path: path.into(),
        what: format!("not JSON ({e}): {}", line.trim()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::thread;

    /// A stand-in QEMU: greeting, an event before the reply, and it records the commands.
    fn fake_qemu(
        answers: &'static [&'static str],
    ) -> (std::path::PathBuf, thread::JoinHandle<Vec<String>>) {
        let dir = std::env::temp_dir().join(format!(
            "vnet-vm-qmp-{}-{}",
            std::process::id(),
            answers.len()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let h = thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            writeln!(w, r#"{{"QMP": {{"version": {{}}, "capabilities": []}}}}"#).unwrap();
            let mut got = Vec::new();
            for a in answers {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap() == 0 {
                    break;
                }
                got.push(line.trim().to_string());
                writeln!(w, r#"{{"event": "RESUME", "timestamp": {{}}}}"#).unwrap();
                writeln!(w, "{a}").unwrap();
            }
            let _ = std::fs::remove_dir_all(dir);
            got
        });
        (path, h)
    }

    #[test]
    fn capabilities_then_cont_skipping_events() {
        let (path, h) = fake_qemu(&[r#"{"return": {}}"#, r#"{"return": {}}"#]);
        cont(&path, Duration::from_secs(10)).unwrap();
        assert_eq!(
            h.join().unwrap(),
            [r#"{"execute":"qmp_capabilities"}"#, r#"{"execute":"cont"}"#]
        );
    }

    #[test]
    fn an_error_reply_names_the_command() {
        let (path, h) = fake_qemu(&[
            r#"{"return": {}}"#,
            r#"{"error": {"class": "GenericError", "desc": "no"}}"#,
            "",
        ]);
        let e = cont(&path, Duration::from_secs(10))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cont") && e.contains("GenericError"), "{e}");
        let _ = h.join();
    }
}
