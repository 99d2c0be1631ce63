//! The PR's plain-text layout, reproduced column for column.

use std::fmt::Write;

use super::{dur, dur_cell, overall_line, write_notes};
use crate::model::{Report, Unit};

/// `Retries   Count       %       Min       Avg       P99       Max` and its rows.
pub fn table(out: &mut String, report: &Report, unit: Unit) {
    let _ = writeln!(
        out,
        "{:>7}{:>8}{:>8}{:>10}{:>10}{:>10}{:>10}",
        "Retries", "Count", "%", "Min", "Avg", "P99", "Max"
    );
    for r in &report.by_retries {
        let _ = writeln!(
            out,
            "{:>7}{:>8}{:>7.1}%{}{}{}{}",
            r.retries,
            r.count,
            r.pct,
            dur_cell(r.min_ns as f64, unit),
            dur_cell(r.avg_ns, unit),
            dur_cell(r.p99_ns as f64, unit),
            dur_cell(r.max_ns as f64, unit),
        );
    }
    overall_line(out, report, unit);
}

/// One row per retry count: the count right-aligned under `Retries`, the bar padded to 50.
pub fn histogram(out: &mut String, report: &Report) {
    for h in &report.histogram {
        let _ = writeln!(
            out,
            "{:>7} {:<50} {}",
            h.retries,
            "#".repeat(h.bar),
            h.count
        );
    }
}

pub fn render(report: &Report, unit: Unit) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}: {} events", report.name, report.total);
    out.push('\n');
    table(&mut out, report, unit);
    if !report.histogram.is_empty() {
        out.push('\n');
        histogram(&mut out, report);
    }
    extras(&mut out, report, unit);
    out
}

fn extras(out: &mut String, report: &Report, unit: Unit) {
    if !report.open_episodes.is_empty() {
        let _ = writeln!(
            out,
            "\nStill open at the end of the input: {}",
            report.open_episodes.len()
        );
        for o in &report.open_episodes {
            let w = &o.wakeups;
            let _ = writeln!(
                out,
                "  episode {} {} fd {} (line {}): {} {}, {} failed sends, {} write wake-ups ({} without room), {} read, {} kicks, {} timer{}",
                o.id,
                o.source,
                o.fd.map_or("?".to_string(), |f| f.to_string()),
                o.begin_line,
                if o.abandoned { "abandoned after" } else { "open for" },
                dur(o.open_for_us as f64 * 1000.0, unit),
                o.failures_seen,
                w.write,
                w.write_low_room,
                w.read,
                w.guest_kick,
                w.timer,
                if o.abandoned { " (a new episode began on the same fd)" } else { "" }
            );
        }
    }
    if report.errno.len() > 1 {
        let parts: Vec<String> = report
            .errno
            .iter()
            .map(|e| format!("{} {}", e.name, e.count))
            .collect();
        let _ = writeln!(out, "\nBy errno: {}", parts.join(", "));
    }
    if report.per_fd.len() > 1 {
        let _ = writeln!(
            out,
            "\n{:>20}{:>8}{:>11}{:>11}{:>11}",
            "fd", "Count", "Avg", "P99", "Max"
        );
        for f in &report.per_fd {
            let label = match f.fd {
                Some(fd) if f.source.is_empty() => format!("{fd}"),
                Some(fd) => format!("{}:{fd}", short(&f.source)),
                None => format!("{}:?", short(&f.source)),
            };
            let _ = writeln!(
                out,
                "{:>20}{:>8}{}{}{}",
                label,
                f.count,
                dur_cell(f.avg_ns, unit),
                dur_cell(f.p99_ns as f64, unit),
                dur_cell(f.max_ns as f64, unit)
            );
        }
    }
    let w = &report.write_wakeups;
    if w.during_episodes > 0 {
        let _ = writeln!(
            out,
            "\nWrite wake-ups during episodes: {} ({} with too little room for the pending frame{})",
            w.during_episodes,
            w.low_room,
            if w.unknown_room > 0 {
                format!(", {} with unknown room", w.unknown_room)
            } else {
                String::new()
            }
        );
    }
    let f = &report.frames;
    if f.tx_frames + f.rx_frames > 0 {
        let _ = writeln!(
            out,
            "Frames: tx {} ({} bytes), rx {} ({} bytes){}",
            f.tx_frames,
            f.tx_bytes,
            f.rx_frames,
            f.rx_bytes,
            if f.dropped > 0 {
                format!(", dropped {}", f.dropped)
            } else {
                String::new()
            }
        );
    }
    if let Some(rows) = &report.intervals {
        out.push('\n');
        let _ = writeln!(
            out,
            "{:>19}{:>12}{:>13}{:>13}{:>11}{:>11}",
            "Interval", "Episodes/s", "TX frames/s", "RX frames/s", "TX Gbit/s", "RX Gbit/s"
        );
        for r in rows {
            let _ = writeln!(
                out,
                "{:>19}{:>12.1}{:>13.0}{:>13.0}{:>11.3}{:>11.3}",
                if r.partial {
                    format!("{} (end)", r.label)
                } else {
                    r.label.clone()
                },
                r.episodes_per_s,
                r.tx_frames_per_s,
                r.rx_frames_per_s,
                r.tx_gbit_per_s,
                r.rx_gbit_per_s
            );
        }
    }
    write_notes(out, report, "note: ");
}

fn short(source: &str) -> &str {
    source.rsplit('/').next().unwrap_or(source)
}
