//! GitHub-flavoured markdown: a table that renders in a PR comment, the overall line and the
//! histogram in a code block (so the bars keep their width).

use std::fmt::Write;

use super::{dur, overall_line, write_notes};
use crate::model::{Report, Unit};

pub fn render(report: &Report, unit: Unit) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "**{}: {} events**\n", report.name, report.total);
    out.push_str("| Retries | Count | % | Min | Avg | P99 | Max |\n");
    out.push_str("|--:|--:|--:|--:|--:|--:|--:|\n");
    for r in &report.by_retries {
        let _ = writeln!(
            out,
            "| {} | {} | {:.1}% | {} | {} | {} | {} |",
            r.retries,
            r.count,
            r.pct,
            dur(r.min_ns as f64, unit),
            dur(r.avg_ns, unit),
            dur(r.p99_ns as f64, unit),
            dur(r.max_ns as f64, unit)
        );
    }
    out.push('\n');
    overall_line(&mut out, report, unit);
    if !report.histogram.is_empty() {
        out.push_str("\n```\n");
        super::text::histogram(&mut out, report);
        out.push_str("```\n");
    }
    if !report.open_episodes.is_empty() {
        let _ = writeln!(
            out,
            "\n**Still open at the end of the input: {}**\n",
            report.open_episodes.len()
        );
        out.push_str("| Episode | Source | fd | Line | Open for | Failed sends | Write wake-ups | Without room |\n");
        out.push_str("|--:|:--|--:|--:|--:|--:|--:|--:|\n");
        for o in &report.open_episodes {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                o.id,
                o.source,
                o.fd.map_or("?".to_string(), |f| f.to_string()),
                o.begin_line,
                dur(o.open_for_us as f64 * 1000.0, unit),
                o.failures_seen,
                o.wakeups.write,
                o.wakeups.write_low_room
            );
        }
    }
    if report.errno.len() > 1 {
        out.push_str("\n| errno | Count |\n|:--|--:|\n");
        for e in &report.errno {
            let _ = writeln!(out, "| {} | {} |", e.name, e.count);
        }
    }
    if report.per_fd.len() > 1 {
        out.push_str("\n| Source | fd | Count | Avg | P99 | Max |\n|:--|--:|--:|--:|--:|--:|\n");
        for f in &report.per_fd {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                f.source,
                f.fd.map_or("?".to_string(), |v| v.to_string()),
                f.count,
                dur(f.avg_ns, unit),
                dur(f.p99_ns as f64, unit),
                dur(f.max_ns as f64, unit)
            );
        }
    }
    let w = &report.write_wakeups;
    if w.during_episodes > 0 {
        let _ = writeln!(
            out,
            "\nWrite wake-ups during episodes: {} ({} with too little room for the pending frame)",
            w.during_episodes, w.low_room
        );
    }
    if let Some(rows) = &report.intervals {
        out.push_str(
            "\n| Interval | Episodes/s | TX frames/s | RX frames/s | TX Gbit/s | RX Gbit/s |\n",
        );
        out.push_str("|:--|--:|--:|--:|--:|--:|\n");
        for r in rows {
            let _ = writeln!(
                out,
                "| {}{} | {:.1} | {:.0} | {:.0} | {:.3} | {:.3} |",
                r.label,
                if r.partial { " (end)" } else { "" },
                r.episodes_per_s,
                r.tx_frames_per_s,
                r.rx_frames_per_s,
                r.tx_gbit_per_s,
                r.rx_gbit_per_s
            );
        }
    }
    write_notes(&mut out, report, "> ");
    out
}
