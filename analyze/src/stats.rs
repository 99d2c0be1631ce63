//! Summary statistics over episode durations: nearest-rank percentiles, as the PR used.

use serde::Serialize;

/// Min/avg/percentiles/max of a set of durations in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    pub count: u64,
    pub min_ns: i64,
    pub avg_ns: f64,
    pub p50_ns: i64,
    pub p99_ns: i64,
    pub max_ns: i64,
}

/// Nearest-rank percentile of sorted data: the smallest value with at least p% of the data
/// at or below it (rank = ceil(p/100 * n), 1-based).
pub fn nearest_rank(sorted: &[i64], p: f64) -> i64 {
    assert!(!sorted.is_empty(), "percentile of nothing");
    let n = sorted.len();
    // Integer arithmetic for the common integer percentiles avoids 0.99*100 = 98.999... errors.
    let rank = if p.fract() == 0.0 {
        (p as usize * n).div_ceil(100)
    } else {
        (p / 100.0 * n as f64).ceil() as usize
    };
    sorted[rank.clamp(1, n) - 1]
}

/// Sorts `values` in place and summarises them; `None` when empty.
pub fn summarize(values: &mut [i64]) -> Option<Summary> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let sum: i128 = values.iter().map(|&v| v as i128).sum();
    Some(Summary {
        count: values.len() as u64,
        min_ns: values[0],
        avg_ns: sum as f64 / values.len() as f64,
        p50_ns: nearest_rank(values, 50.0),
        p99_ns: nearest_rank(values, 99.0),
        max_ns: values[values.len() - 1],
    })
}

/// Nanoseconds to whole microseconds, rounding half away from zero (the PR's tables are
/// integer µs).
pub fn ns_to_us(ns: f64) -> i64 {
    (ns / 1000.0).round() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_matches_definition() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(nearest_rank(&v, 50.0), 50);
        assert_eq!(nearest_rank(&v, 99.0), 99);
        assert_eq!(nearest_rank(&v, 100.0), 100);
        let v = [5, 1, 3];
        let mut s = v.to_vec();
        let sum = summarize(&mut s).unwrap();
        assert_eq!(
            (sum.min_ns, sum.p50_ns, sum.p99_ns, sum.max_ns),
            (1, 3, 5, 5)
        );
        // 280 values: p99 is rank ceil(277.2) = 278.
        let v: Vec<i64> = (1..=280).collect();
        assert_eq!(nearest_rank(&v, 99.0), 278);
    }

    #[test]
    fn rounding() {
        assert_eq!(ns_to_us(1499.0), 1);
        assert_eq!(ns_to_us(1500.0), 2);
        assert_eq!(ns_to_us(425_400.0), 425);
    }
}
