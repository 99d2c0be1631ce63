//! What the guest printed: iperf3's JSON between marker lines on the serial console.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ConsoleError {
    #[error(
        "console line {line}: test {test} has no VNET-JSON-END marker (guest died or timed out)"
    )]
    Unterminated { test: String, line: usize },
    #[error("console line {line}: iperf3 output of test {test} is not JSON: {detail}")]
    BadJson {
        test: String,
        line: usize,
        detail: String,
    },
    #[error("test {test}: iperf3 reported an error: {message}")]
    Iperf { test: String, message: String },
    #[error("test {test}: iperf3 JSON lacks field {field}")]
    MissingField { test: String, field: String },
    #[error("console line {line}: VNET-STATS field {field:?} is not NAME=COUNT")]
    BadStats { line: usize, field: String },
}

/// The guest's own counters at one moment (`VNET-STATS LABEL name=count ...`): its NIC's
/// (`nic.rx_bytes`: what the device delivered) and its TCP stack's (`tcp.TCPDSACKOldSent`:
/// segments that arrived a second time).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct GuestStats {
    /// "start", or the test that had just ended.
    pub label: String,
    pub counters: std::collections::BTreeMap<String, u64>,
}

/// One direction of one test, as the receiving side measured it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Direction {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub seconds: f64,
    pub gbit_per_s: f64,
    pub retransmits: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestResult {
    pub name: String,
    /// guest -> host
    pub fwd: Option<Direction>,
    /// host -> guest
    pub rev: Option<Direction>,
}

/// Everything the runner reads from the console.
#[derive(Debug, Default, Clone)]
pub struct Console {
    pub tests: Vec<TestResult>,
    /// The argument of `VNET-DONE` ("ok" or "error: ...").
    pub done: Option<String>,
    /// Guest uptime (s) when init started and when eth0 was up.
    pub booted_at: Option<f64>,
    pub net_up_at: Option<f64>,
    pub stats: Vec<GuestStats>,
    pub errors: Vec<ConsoleError>,
}

/// Serial consoles turn "\n" into "\r\n" and the kernel may print in between; markers
/// are matched at line starts only.
pub fn parse_console(text: &str) -> Console {
    let mut c = Console::default();
    let mut current: Option<(String, usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end_matches('\r');
        let lineno = i + 1;
        if let Some(rest) = line.strip_prefix("VNET-JSON-BEGIN ") {
            if let Some((test, at, _)) = current.take() {
                c.errors.push(ConsoleError::Unterminated { test, line: at });
            }
            current = Some((rest.trim().to_string(), lineno, String::new()));
        } else if let Some(rest) = line.strip_prefix("VNET-JSON-END ") {
            if let Some((test, at, json)) = current.take() {
                match parse_test(&test, &json) {
                    Ok(r) => c.tests.push(r),
                    Err(ConsoleError::BadJson { test, detail, .. }) => {
                        c.errors.push(ConsoleError::BadJson {
                            test,
                            line: at,
                            detail,
                        })
                    }
                    Err(e) => c.errors.push(e),
                }
            }
            let _ = rest;
        } else if let Some(rest) = line.strip_prefix("VNET-DONE ") {
            c.done = Some(rest.trim().to_string());
        } else if let Some(rest) = line.strip_prefix("VNET-BOOTED ") {
            c.booted_at = rest.trim().parse().ok();
        } else if let Some(rest) = line.strip_prefix("VNET-NET ") {
            c.net_up_at = rest.split_whitespace().last().and_then(|s| s.parse().ok());
        } else if let Some(rest) = line.strip_prefix("VNET-STATS ") {
            match parse_stats(rest, lineno) {
                Ok(stats) => c.stats.push(stats),
                Err(e) => c.errors.push(e),
            }
        } else if let Some((_, _, json)) = current.as_mut() {
            json.push_str(line);
            json.push('\n');
        }
    }
    if let Some((test, at, _)) = current {
        c.errors.push(ConsoleError::Unterminated { test, line: at });
    }
    c
}

fn parse_stats(rest: &str, line: usize) -> Result<GuestStats, ConsoleError> {
    let mut words = rest.split_whitespace();
    let mut stats = GuestStats {
        label: words.next().unwrap_or_default().to_string(),
        ..GuestStats::default()
    };
    for w in words {
        let bad = || ConsoleError::BadStats {
            line,
            field: w.to_string(),
        };
        let (name, value) = w.split_once('=').ok_or_else(bad)?;
        stats
            .counters
            .insert(name.to_string(), value.parse().map_err(|_| bad())?);
    }
    Ok(stats)
}

fn field<'a>(test: &str, v: &'a Value, path: &[&str]) -> Result<&'a Value, ConsoleError> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p).ok_or_else(|| ConsoleError::MissingField {
            test: test.to_string(),
            field: path.join("."),
        })?;
    }
    Ok(cur)
}

fn direction(
    test: &str,
    end: &Value,
    sent: &str,
    received: &str,
) -> Result<Direction, ConsoleError> {
    let num = |section: &str, name: &str| -> Result<f64, ConsoleError> {
        field(test, end, &[section, name])
            .ok()
            .and_then(Value::as_f64)
            .ok_or_else(|| ConsoleError::MissingField {
                test: test.to_string(),
                field: format!("end.{section}.{name}"),
            })
    };
    Ok(Direction {
        bytes_sent: num(sent, "bytes")? as u64,
        bytes_received: num(received, "bytes")? as u64,
        seconds: num(received, "seconds")?,
        gbit_per_s: num(received, "bits_per_second")? / 1e9,
        // Absent when the sender could not read TCP_INFO; zero is then the honest value.
        retransmits: num(sent, "retransmits").unwrap_or(0.0) as u64,
    })
}

/// One test's iperf3 `-J` output. The guest is always the iperf3 client.
pub fn parse_test(test: &str, json: &str) -> Result<TestResult, ConsoleError> {
    let v: Value = serde_json::from_str(json).map_err(|e| ConsoleError::BadJson {
        test: test.to_string(),
        line: 0,
        detail: e.to_string(),
    })?;
    if let Some(msg) = v.get("error").and_then(Value::as_str) {
        return Err(ConsoleError::Iperf {
            test: test.to_string(),
            message: msg.to_string(),
        });
    }
    let end = field(test, &v, &["end"])?;
    let reverse = v
        .pointer("/start/test_start/reverse")
        .and_then(Value::as_i64)
        .unwrap_or(0)
        != 0;
    let bidir = end.get("sum_sent_bidir_reverse").is_some();
    let main = direction(test, end, "sum_sent", "sum_received")?;
    let (fwd, rev) = if bidir {
        (
            Some(main),
            Some(direction(
                test,
                end,
                "sum_sent_bidir_reverse",
                "sum_received_bidir_reverse",
            )?),
        )
    } else if reverse {
        (None, Some(main))
    } else {
        (Some(main), None)
    };
    Ok(TestResult {
        name: test.to_string(),
        fwd,
        rev,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: u64, bps: f64, retr: Option<u64>) -> String {
        let r = retr
            .map(|r| format!(",\"retransmits\":{r}"))
            .unwrap_or_default();
        format!("{{\"start\":0,\"end\":10.0,\"seconds\":10.0,\"bytes\":{bytes},\"bits_per_second\":{bps}{r}}}")
    }

    fn json(reverse: bool, bidir: bool) -> String {
        let extra = if bidir {
            format!(
                ",\"sum_sent_bidir_reverse\":{},\"sum_received_bidir_reverse\":{}",
                sum(3000, 3e9, Some(7)),
                sum(2900, 2.9e9, None)
            )
        } else {
            String::new()
        };
        format!(
            "{{\"start\":{{\"test_start\":{{\"reverse\":{}}}}},\"end\":{{\"sum_sent\":{},\"sum_received\":{}{extra}}}}}",
            u8::from(reverse),
            sum(1000, 1e9, Some(2)),
            sum(990, 0.99e9, None)
        )
    }

    #[test]
    fn forward_reverse_and_bidir_map_to_directions() {
        let f = parse_test("fwd", &json(false, false)).unwrap();
        let d = f.fwd.unwrap();
        assert!(f.rev.is_none());
        assert_eq!(
            (d.bytes_sent, d.bytes_received, d.retransmits),
            (1000, 990, 2)
        );
        assert!((d.gbit_per_s - 0.99).abs() < 1e-9);

        let r = parse_test("rev", &json(true, false)).unwrap();
        assert!(r.fwd.is_none() && r.rev.is_some());

        let b = parse_test("bidir", &json(false, true)).unwrap();
        assert_eq!(b.fwd.unwrap().bytes_sent, 1000);
        let rev = b.rev.unwrap();
        assert_eq!(
            (rev.bytes_sent, rev.bytes_received, rev.retransmits),
            (3000, 2900, 7)
        );
    }

    #[test]
    fn iperf_error_and_missing_fields_are_reported() {
        let e = parse_test(
            "fwd",
            r#"{"start":{},"end":{},"error":"unable to connect to server"}"#,
        );
        assert_eq!(
            e.unwrap_err(),
            ConsoleError::Iperf {
                test: "fwd".into(),
                message: "unable to connect to server".into()
            }
        );
        let e = parse_test("fwd", r#"{"end":{"sum_sent":{}}}"#).unwrap_err();
        assert!(e.to_string().contains("end.sum_sent.bytes"), "{e}");
    }

    #[test]
    fn console_with_crlf_kernel_noise_and_a_truncated_test() {
        let text = format!(
            "[    0.1] Linux version\r\nVNET-BOOTED 1.25\r\nVNET-NET eth0 10.0.2.15/24 gw 10.0.2.2 mtu 1500 up 2.50\r\n\
             VNET-JSON-BEGIN fwd\r\n{}\r\nVNET-JSON-END fwd rc=0\r\nVNET-JSON-BEGIN rev\r\n{{\"start\":\r\n",
            json(false, false)
        );
        let c = parse_console(&text);
        assert_eq!(c.tests.len(), 1);
        assert_eq!(c.booted_at, Some(1.25));
        assert_eq!(c.net_up_at, Some(2.5));
        assert_eq!(c.done, None);
        assert_eq!(
            c.errors,
            vec![ConsoleError::Unterminated {
                test: "rev".into(),
                line: 7
            }]
        );
    }

    #[test]
    fn console_reports_bad_json_with_its_line() {
        let c =
            parse_console("VNET-JSON-BEGIN fwd\n{not json\nVNET-JSON-END fwd rc=1\nVNET-DONE ok\n");
        assert_eq!(c.done.as_deref(), Some("ok"));
        assert!(
            matches!(&c.errors[..], [ConsoleError::BadJson { line: 1, .. }]),
            "{:?}",
            c.errors
        );
    }

    #[test]
    fn console_stats_lines_are_read_and_a_bad_field_is_named() {
        let c = parse_console(
            "VNET-STATS start nic.rx_bytes=0 tcp.InSegs=3\r\n\
             VNET-STATS rev nic.rx_bytes=18446744073709551615 tcp.TCPDSACKOldSent=12\r\n\
             VNET-STATS fwd nic.rx_bytes=-1\r\nVNET-STATS bidir tcp.InSegs\r\n",
        );
        assert_eq!(c.stats.len(), 2);
        assert_eq!(c.stats[0].label, "start");
        assert_eq!(c.stats[0].counters["tcp.InSegs"], 3);
        assert_eq!(c.stats[1].counters["nic.rx_bytes"], u64::MAX);
        assert_eq!(c.stats[1].counters["tcp.TCPDSACKOldSent"], 12);
        assert_eq!(
            c.errors,
            vec![
                ConsoleError::BadStats {
                    line: 3,
                    field: "nic.rx_bytes=-1".into()
                },
                ConsoleError::BadStats {
                    line: 4,
                    field: "tcp.InSegs".into()
                }
            ]
        );
        assert!(c.errors[0].to_string().contains("console line 3"));
    }
}
