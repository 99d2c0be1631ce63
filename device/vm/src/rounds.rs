//! Several rounds of the same runs, summarised: one TCG run moves by 30% or more from the
//! next (README, "Real VM"), so a ratio worth quoting is a median with its range.

use serde_json::{json, Map, Value};

/// The keys of a round's summary taken across rounds, in the order they are printed.
const KEYS: [&str; 6] = [
    "fwd_gbit_per_s",
    "rev_gbit_per_s",
    "baseline_fwd_gbit_per_s",
    "baseline_rev_gbit_per_s",
    "ratio_fwd",
    "ratio_rev",
];

/// Median and range of one figure over the rounds that reported it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub rounds: usize,
}

/// `None` when no round reported a finite value.
pub fn spread(values: &[f64]) -> Option<Spread> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = match n {
        0 => return None,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    };
    Some(Spread {
        median,
        min: v[0],
        max: v[n - 1],
        rounds: n,
    })
}

/// Per figure, its spread over the rounds' summaries (`Summary::to_json` objects); a
/// figure no round has (no baseline, no reverse test) is left out.
pub fn aggregate(rounds: &[Value]) -> Map<String, Value> {
    let mut m = Map::new();
    for key in KEYS {
        let values: Vec<f64> = rounds
            .iter()
            .filter_map(|r| r.get(key).and_then(Value::as_f64))
            .collect();
        if let Some(s) = spread(&values) {
            m.insert(
                key.into(),
                json!({"median": s.median, "min": s.min, "max": s.max, "rounds": s.rounds}),
            );
        }
    }
    m
}

/// What `--rounds` writes to `OUT/summary.json` and prints under `--json`: every round's
/// summary, each figure's spread over them, and, when a round failed, which and why (the
/// rounds before it are kept).
pub fn summary(rounds: &[Value], failed: Option<(usize, String)>) -> Value {
    let mut m = Map::new();
    m.insert("rounds".into(), Value::Array(rounds.to_vec()));
    m.insert("over_rounds".into(), Value::Object(aggregate(rounds)));
    if let Some((round, error)) = failed {
        m.insert("failed_round".into(), json!(round));
        m.insert("error".into(), json!(error));
    }
    Value::Object(m)
}

/// The table printed after the last round: each row's figures as median (min..max).
pub fn to_text(rounds: usize, agg: &Map<String, Value>) -> String {
    let cell = |key: &str| {
        agg.get(key).map_or("-".to_string(), |s| {
            let f = |k: &str| s[k].as_f64().unwrap_or(f64::NAN);
            format!("{:.3} ({:.3}..{:.3})", f("median"), f("min"), f("max"))
        })
    };
    let mut s = format!(
        "\nover {rounds} rounds, median (min..max):\n{:<28}{:>26}{:>26}\n",
        "", "fwd Gbit/s", "rev Gbit/s"
    );
    for (name, prefix) in [
        ("vnet-vhost (vhost-user)", ""),
        ("QEMU virtio-net (stream)", "baseline_"),
    ] {
        let (f, r) = (
            format!("{prefix}fwd_gbit_per_s"),
            format!("{prefix}rev_gbit_per_s"),
        );
        if agg.contains_key(&f) || agg.contains_key(&r) {
            s.push_str(&format!("{name:<28}{:>26}{:>26}\n", cell(&f), cell(&r)));
        }
    }
    if agg.contains_key("ratio_fwd") || agg.contains_key("ratio_rev") {
        s.push_str(&format!(
            "{:<28}{:>26}{:>26}\n",
            "ratio daemon/baseline",
            cell("ratio_fwd"),
            cell("ratio_rev")
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts_and_range() {
        let s = spread(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.rounds), (2.0, 1.0, 3.0, 3));
        let s = spread(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.rounds), (2.5, 1.0, 4.0, 4));
        // A round without the figure (NaN, infinity) does not count.
        let s = spread(&[f64::NAN, 5.0, f64::INFINITY]).unwrap();
        assert_eq!((s.median, s.rounds), (5.0, 1));
        assert_eq!(spread(&[]), None);
        assert_eq!(spread(&[f64::NAN]), None);
    }

    #[test]
    fn aggregate_takes_each_figure_from_the_rounds_that_have_it() {
        let rounds = [
            json!({"fwd_gbit_per_s": 1.0, "rev_gbit_per_s": null, "ratio_fwd": 2.0}),
            json!({"fwd_gbit_per_s": 3.0, "rev_gbit_per_s": null, "ratio_fwd": 1.0}),
            json!({"fwd_gbit_per_s": 2.0, "rev_gbit_per_s": null}),
        ];
        let agg = aggregate(&rounds);
        assert_eq!(
            agg["fwd_gbit_per_s"],
            json!({"median": 2.0, "min": 1.0, "max": 3.0, "rounds": 3})
        );
        assert_eq!(
            agg["ratio_fwd"],
            json!({"median": 1.5, "min": 1.0, "max": 2.0, "rounds": 2})
        );
        assert!(!agg.contains_key("rev_gbit_per_s"));
        assert!(!agg.contains_key("baseline_fwd_gbit_per_s"));
        let text = to_text(3, &agg);
        assert!(text.contains("over 3 rounds"), "{text}");
        assert!(text.contains("2.000 (1.000..3.000)"), "{text}");
        assert!(text.contains("1.500 (1.000..2.000)"), "{text}");
        // No baseline in any round: no baseline row.
        assert!(!text.contains("QEMU"), "{text}");
    }

    #[test]
    fn a_failed_round_keeps_the_rounds_before_it() {
        let done = [
            json!({"ratio_fwd": 2.0, "fwd_gbit_per_s": 1.0}),
            json!({"ratio_fwd": 4.0, "fwd_gbit_per_s": 3.0}),
        ];
        let s = summary(&done, Some((3, "vhost run: QEMU exited".into())));
        assert_eq!(s["rounds"].as_array().map(Vec::len), Some(2));
        assert_eq!(s["over_rounds"]["ratio_fwd"]["median"], json!(3.0));
        assert_eq!(s["failed_round"], json!(3));
        assert_eq!(s["error"], json!("vhost run: QEMU exited"));
        // The first round failing leaves no figures, and says so.
        let s = summary(&[], Some((1, "no daemon".into())));
        assert_eq!(s["rounds"], json!([]));
        assert_eq!(s["over_rounds"], json!({}));
        assert_eq!(s["failed_round"], json!(1));
        // All rounds done: no failure keys.
        let s = summary(&done, None);
        assert!(
            s.get("failed_round").is_none() && s.get("error").is_none(),
            "{s}"
        );
    }
}
