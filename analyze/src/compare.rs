//! `compare A B`: two reports side by side with the change per row (before/after a fix,
//! vmnet-helper vs gvproxy).

use std::collections::BTreeSet;
use std::fmt::Write;

use serde::Serialize;

use crate::model::{OutputFormat, Report, RetryRow, Unit};
use crate::render::{dur_cell, resolve_unit};

#[derive(Serialize)]
struct JsonCompare<'a> {
    a: &'a Report,
    b: &'a Report,
}

/// Relative change from a to b, `n/a` when a is zero.
fn change(a: f64, b: f64) -> String {
    if a == 0.0 {
        if b == 0.0 {
            "0.0%".to_string()
        } else {
            "new".to_string()
        }
    } else {
        format!("{:+.1}%", (b - a) / a * 100.0)
    }
}

pub fn render(a: &Report, b: &Report, format: OutputFormat, unit: Unit) -> String {
    let unit = match unit {
        Unit::Auto => {
            if resolve_unit(a, unit) == Unit::Ms || resolve_unit(b, unit) == Unit::Ms {
                Unit::Ms
            } else {
                Unit::Us
            }
        }
        u => u,
    };
    match format {
        OutputFormat::Json => {
            let mut s = serde_json::to_string_pretty(&JsonCompare { a, b }).expect("serialises");
            s.push('\n');
            s
        }
        OutputFormat::Csv => csv(a, b),
        OutputFormat::Markdown => markdown(a, b, unit),
        OutputFormat::Text => text(a, b, unit),
    }
}

fn retries(a: &Report, b: &Report) -> Vec<i64> {
    let set: BTreeSet<i64> = a
        .by_retries
        .iter()
        .chain(&b.by_retries)
        .map(|r| r.retries)
        .collect();
    set.into_iter().collect()
}

fn row(r: &Report, n: i64) -> Option<&RetryRow> {
    r.by_retries.iter().find(|x| x.retries == n)
}

/// (value in A, value in B, change)
type Cell = (String, String, String);

/// For each retry count and metric: a, b, change.
fn cells(a: &Report, b: &Report, unit: Unit) -> Vec<(String, Vec<Cell>)> {
    let mut rows = Vec::new();
    for n in retries(a, b) {
        let (ra, rb) = (row(a, n), row(b, n));
        let count = |r: Option<&RetryRow>| r.map_or(0, |r| r.count);
        let pct = |r: Option<&RetryRow>| r.map_or(0.0, |r| r.pct);
        let d = |r: Option<&RetryRow>, f: fn(&RetryRow) -> f64| {
            r.map_or("-".to_string(), |r| dur_cell(f(r), unit).trim().to_string())
        };
        let ch = |f: fn(&RetryRow) -> f64| match (ra, rb) {
            (Some(x), Some(y)) => change(f(x), f(y)),
            _ => "-".to_string(),
        };
        rows.push((
            n.to_string(),
            vec![
                (
                    count(ra).to_string(),
                    count(rb).to_string(),
                    change(count(ra) as f64, count(rb) as f64),
                ),
                (
                    format!("{:.1}%", pct(ra)),
                    format!("{:.1}%", pct(rb)),
                    format!("{:+.1}", pct(rb) - pct(ra)),
                ),
                (d(ra, |r| r.avg_ns), d(rb, |r| r.avg_ns), ch(|r| r.avg_ns)),
                (
                    d(ra, |r| r.p99_ns as f64),
                    d(rb, |r| r.p99_ns as f64),
                    ch(|r| r.p99_ns as f64),
                ),
                (
                    d(ra, |r| r.max_ns as f64),
                    d(rb, |r| r.max_ns as f64),
                    ch(|r| r.max_ns as f64),
                ),
            ],
        ));
    }
    rows
}

fn overall(a: &Report, b: &Report, unit: Unit) -> Vec<(String, String, String, String)> {
    let mut out = vec![(
        "events".to_string(),
        a.total.to_string(),
        b.total.to_string(),
        change(a.total as f64, b.total as f64),
    )];
    if let (Some(x), Some(y)) = (&a.overall, &b.overall) {
        let metrics: [(&str, f64, f64); 5] = [
            ("min", x.min_ns as f64, y.min_ns as f64),
            ("avg", x.avg_ns, y.avg_ns),
            ("p50", x.p50_ns as f64, y.p50_ns as f64),
            ("p99", x.p99_ns as f64, y.p99_ns as f64),
            ("max", x.max_ns as f64, y.max_ns as f64),
        ];
        for (name, va, vb) in metrics {
            out.push((
                name.to_string(),
                dur_cell(va, unit).trim().to_string(),
                dur_cell(vb, unit).trim().to_string(),
                change(va, vb),
            ));
        }
    }
    out
}

fn text(a: &Report, b: &Report, unit: Unit) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "A = {}: {} events\nB = {}: {} events\n",
        a.name, a.total, b.name, b.total
    );
    let _ =
        writeln!(
        out,
        "{:>7}{:>8}{:>8}{:>9}{:>8}{:>8}{:>7}{:>11}{:>11}{:>9}{:>11}{:>11}{:>9}{:>11}{:>11}{:>9}",
        "Retries", "Count A", "Count B", "Change", "% A", "% B", "Δpt",
        "Avg A", "Avg B", "Change", "P99 A", "P99 B", "Change", "Max A", "Max B", "Change"
    );
    for (n, c) in cells(a, b, unit) {
        let _ = write!(out, "{:>7}", n);
        let widths = [(8, 8, 9), (8, 8, 7), (11, 11, 9), (11, 11, 9), (11, 11, 9)];
        for ((x, y, z), (wa, wb, wc)) in c.iter().zip(widths) {
            let _ = write!(out, "{:>wa$}{:>wb$}{:>wc$}", x, y, z);
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "\n{:>7}{:>11}{:>11}{:>9}",
        "Overall", "A", "B", "Change"
    );
    for (name, x, y, z) in overall(a, b, unit) {
        let _ = writeln!(out, "{:>7}{:>11}{:>11}{:>9}", name, x, y, z);
    }
    out
}

fn markdown(a: &Report, b: &Report, unit: Unit) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "**A = {} ({} events) vs B = {} ({} events)**\n",
        a.name, a.total, b.name, b.total
    );
    out.push_str("| Retries | Count A | Count B | Change | % A | % B | Δpt | Avg A | Avg B | Change | P99 A | P99 B | Change | Max A | Max B | Change |\n");
    out.push_str("|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
    for (n, c) in cells(a, b, unit) {
        let _ = write!(out, "| {n} |");
        for (x, y, z) in c {
            let _ = write!(out, " {x} | {y} | {z} |");
        }
        out.push('\n');
    }
    out.push_str("\n| Overall | A | B | Change |\n|:--|--:|--:|--:|\n");
    for (name, x, y, z) in overall(a, b, unit) {
        let _ = writeln!(out, "| {name} | {x} | {y} | {z} |");
    }
    out
}

fn csv(a: &Report, b: &Report) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    let _ = w.write_record([
        "retries", "count_a", "count_b", "avg_us_a", "avg_us_b", "p99_us_a", "p99_us_b",
        "max_us_a", "max_us_b",
    ]);
    let f = |r: Option<&RetryRow>, g: fn(&RetryRow) -> i64| {
        r.map_or(String::new(), |r| g(r).to_string())
    };
    for n in retries(a, b) {
        let (ra, rb) = (row(a, n), row(b, n));
        let _ = w.write_record([
            n.to_string(),
            ra.map_or(0, |r| r.count).to_string(),
            rb.map_or(0, |r| r.count).to_string(),
            f(ra, |r| r.avg_us),
            f(rb, |r| r.avg_us),
            f(ra, |r| r.p99_us),
            f(rb, |r| r.p99_us),
            f(ra, |r| r.max_us),
            f(rb, |r| r.max_us),
        ]);
    }
    String::from_utf8(w.into_inner().expect("in-memory")).expect("ascii")
}
