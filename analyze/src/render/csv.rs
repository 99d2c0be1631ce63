//! CSV: one row per retry count plus an `all` row carrying the overall line (p50 only there).

use crate::model::Report;

pub fn render(report: &Report) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    let _ = w.write_record([
        "retries", "count", "pct", "min_us", "avg_us", "p50_us", "p99_us", "max_us",
    ]);
    for r in &report.by_retries {
        let _ = w.write_record([
            r.retries.to_string(),
            r.count.to_string(),
            format!("{:.1}", r.pct),
            r.min_us.to_string(),
            r.avg_us.to_string(),
            String::new(),
            r.p99_us.to_string(),
            r.max_us.to_string(),
        ]);
    }
    if let Some(o) = &report.overall {
        let _ = w.write_record([
            "all".to_string(),
            report.total.to_string(),
            "100.0".to_string(),
            o.min_us.to_string(),
            o.avg_us.to_string(),
            o.p50_us.to_string(),
            o.p99_us.to_string(),
            o.max_us.to_string(),
        ]);
    }
    String::from_utf8(w.into_inner().expect("in-memory writer")).expect("ascii")
}
