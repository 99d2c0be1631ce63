//! Renderers for the report model: text (the PR's layout), markdown, JSON and CSV.

mod csv;
mod json;
mod markdown;
pub mod text;

use std::fmt::Write;

use crate::model::{OutputFormat, Report, Unit};

pub fn render(report: &Report, format: OutputFormat, unit: Unit) -> String {
    let unit = resolve_unit(report, unit);
    match format {
        OutputFormat::Text => text::render(report, unit),
        OutputFormat::Markdown => markdown::render(report, unit),
        OutputFormat::Json => json::render(report),
        OutputFormat::Csv => csv::render(report),
    }
}

/// `auto` becomes ms when the largest value would need five or more µs digits.
pub fn resolve_unit(report: &Report, unit: Unit) -> Unit {
    match unit {
        Unit::Auto => match &report.overall {
            Some(o) if o.max_ns >= 10_000_000 => Unit::Ms,
            _ => Unit::Us,
        },
        u => u,
    }
}

/// A duration in the chosen unit with its suffix, no padding: `17us`, `1.274ms`.
pub fn dur(ns: f64, unit: Unit) -> String {
    match unit {
        Unit::Ms => format!("{:.3}ms", ns / 1e6),
        _ => format!("{}us", crate::stats::ns_to_us(ns)),
    }
}

/// A duration right-aligned the way the PR's table does it: the number in 9 columns, then
/// the unit (so values overhang the 10-wide headers by one column, exactly as published).
pub fn dur_cell(ns: f64, unit: Unit) -> String {
    match unit {
        Unit::Ms => format!("{:>9.3}ms", ns / 1e6),
        _ => format!("{:>9}us", crate::stats::ns_to_us(ns)),
    }
}

/// The `Overall: min=... max=...` line, the same in text and markdown.
pub fn overall_line(out: &mut String, report: &Report, unit: Unit) {
    match &report.overall {
        Some(o) => {
            let _ = writeln!(
                out,
                "Overall: min={} avg={} p50={} p99={} max={}",
                dur(o.min_ns as f64, unit),
                dur(o.avg_ns, unit),
                dur(o.p50_ns as f64, unit),
                dur(o.p99_ns as f64, unit),
                dur(o.max_ns as f64, unit)
            );
        }
        None => out.push_str("Overall: no resolved episodes\n"),
    }
}

/// The notes after a blank line, one per line behind `prefix` (`note: ` in text, `> ` in
/// markdown); nothing at all when there are none.
pub fn write_notes(out: &mut String, report: &Report, prefix: &str) {
    let notes = notes(report);
    if !notes.is_empty() {
        out.push('\n');
        for n in notes {
            let _ = writeln!(out, "{prefix}{n}");
        }
    }
}

/// The note lines shared by text and markdown.
pub fn notes(report: &Report) -> Vec<String> {
    let mut out = Vec::new();
    let input = &report.input;
    if input.skipped_lines > 0 {
        out.push(format!(
            "{} lines skipped (log lines that are not episode, wake-up or frame lines; tracer messages)",
            input.skipped_lines
        ));
    }
    if input.bad_lines > 0 {
        out.push(format!("{} bad lines skipped (--lenient)", input.bad_lines));
        for e in &input.bad_examples {
            out.push(format!("  {e}"));
        }
    }
    for t in &input.truncated {
        out.push(t.clone());
    }
    if input.reordered > 0 {
        out.push(format!(
            "{} events arrived out of time order and were put back in order",
            input.reordered
        ));
    }
    if input.lost_events > 0 {
        out.push(format!(
            "the tracer reported {} lost events: some episodes may lack their begin or resolution (--lenient skips those)",
            input.lost_events
        ));
    }
    if input.inferred_resolutions > 0 {
        out.push(format!(
            "{} episode(s) closed by the frame written after them: the log has no `resolved after N retries` lines (a build before the fix), retries = failures logged",
            input.inferred_resolutions
        ));
    }
    let a = &input.anomalies;
    if a.resolved_before_capture > 0 {
        out.push(format!(
            "{} resolution(s) without a begin at the start of the input (episode began before the capture; not in the table)",
            a.resolved_before_capture
        ));
    }
    if a.retry_without_begin > 0 {
        out.push(format!(
            "{} retry event(s) without an open episode",
            a.retry_without_begin
        ));
    }
    if a.retries_backwards > 0 {
        let first = a
            .retries_backwards_first
            .map(|(file, line)| {
                let name = input
                    .sources
                    .get(file as usize)
                    .map_or("?", |s| s.name.as_str());
                format!(" (first at {name}:{line})")
            })
            .unwrap_or_default();
        out.push(format!(
            "{} retry count(s) went backwards within an episode{first}: attempts should rise by one per failed send",
            a.retries_backwards
        ));
    }
    if a.begin_while_open > 0 {
        out.push(format!(
            "{} episode(s) began again on an fd whose previous episode never resolved",
            a.begin_while_open
        ));
    }
    if report.frames.bytes_saturated {
        out.push(format!(
            "frame byte totals reached {} and stopped there: the input has impossible frame lengths",
            u64::MAX
        ));
    }
    if report.wait_check.compared > 0 && report.wait_check.max_abs_diff_ns > 1_000 {
        out.push(format!(
            "device-reported wait_ns differs from the timestamps by up to {} ns",
            report.wait_check.max_abs_diff_ns
        ));
    }
    out
}
