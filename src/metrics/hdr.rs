//! HDR percentile reports: the classic `Value Percentile TotalCount 1/(1-Percentile)` table that
//! HdrHistogram tools print and plot, with values in microseconds (recorded in nanoseconds), and a
//! one-line p50/p90/p99/p99.9/max summary.

use std::fmt::Write as _;

use hdrhistogram::{Counter, Histogram};

/// Quantile iteration steps per half distance to 100 % (5 is what HdrHistogram tools default to).
const TICKS_PER_HALF: u32 = 5;

/// Nanoseconds -> microseconds.
fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// The full percentile distribution of `h` (values in µs), ending with the mean/max/count footer.
pub fn percentile_report<T: Counter>(h: &Histogram<T>) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let _ = write!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total: u64 = 0;
    if !h.is_empty() {
        for v in h.iter_quantiles(TICKS_PER_HALF) {
            total = total.saturating_add(v.count_since_last_iteration());
            let q = v.quantile_iterated_to();
            let value = us(v.value_iterated_to());
            if q < 1.0 {
                let _ = writeln!(
                    out,
                    "{value:12.3} {q:2.12} {total:10} {:14.2}",
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(out, "{value:12.3} {q:2.12} {total:10}");
            }
        }
    }
    let (mean, stdev, max) = if h.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (h.mean() / 1000.0, h.stdev() / 1000.0, us(h.max()))
    };
    let _ = writeln!(
        out,
        "#[Mean    = {mean:12.3}, StdDeviation   = {stdev:12.3}]"
    );
    let _ = writeln!(
        out,
        "#[Max     = {max:12.3}, Total count    = {:12}]",
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        h.distinct_values()
    );
    out
}

/// Column header of [`summary_line`].
pub const SUMMARY_HEADER: &str =
    "route                            kind         count      p50_us      p90_us      p99_us    p99.9_us      max_us\n";

/// One `route kind count p50 p90 p99 p99.9 max` line (µs).
pub fn summary_line<T: Counter>(out: &mut String, route: &str, kind: &str, h: &Histogram<T>) {
    let q = |x: f64| us(h.value_at_quantile(x));
    let _ = writeln!(
        out,
        "{route:<32} {kind:<6} {:>12} {:>11.3} {:>11.3} {:>11.3} {:>11.3} {:>11.3}",
        h.len(),
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        us(h.max())
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_format() {
        let mut h = Histogram::<u64>::new_with_bounds(1, crate::metrics::HDR_MAX_NS, 2)
            .unwrap_or_else(|e| panic!("{e}"));
        for i in 1..=1000u64 {
            h.saturating_record(i * 1000); // 1..1000 µs
        }
        let r = percentile_report(&h);
        let mut lines = r.lines();
        assert_eq!(
            lines.next(),
            Some("       Value     Percentile TotalCount 1/(1-Percentile)")
        );
        assert_eq!(lines.next(), Some(""));
        let rows: Vec<&str> = r.lines().filter(|l| !l.starts_with('#')).skip(2).collect();
        assert!(rows.len() > 10);
        // First row: the minimum at percentile 0.
        let first: Vec<&str> = rows[0].split_whitespace().collect();
        assert_eq!(first.len(), 4);
        assert_eq!(first[1], "0.000000000000");
        assert!((first[0].parse::<f64>().unwrap_or(0.0) - 1.0).abs() < 0.02);
        // Last row: 100 %, total count, no inverse column.
        let last: Vec<&str> = rows[rows.len() - 1].split_whitespace().collect();
        assert_eq!(last.len(), 3);
        assert_eq!(last[1], "1.000000000000");
        assert_eq!(last[2], "1000");
        // Cumulative counts never decrease; values never decrease.
        let mut prev = (0.0f64, 0u64);
        for row in &rows {
            let c: Vec<&str> = row.split_whitespace().collect();
            let v: f64 = c[0].parse().unwrap_or(-1.0);
            let n: u64 = c[2].parse().unwrap_or(0);
            assert!(v >= prev.0 && n >= prev.1, "{row}");
            prev = (v, n);
        }
        assert!(
            r.contains("#[Max     =     1000.") || r.contains("#[Max     =     1003."),
            "{r}"
        ); // 1 % precision
        assert!(r.contains("Total count    =         1000]"));
        assert!(r.contains("#[Mean    ="));
        assert!(r.contains("#[Buckets ="));

        let mut s = String::new();
        summary_line(&mut s, "r1", "total", &h);
        let c: Vec<&str> = s.split_whitespace().collect();
        assert_eq!(c[0..3], ["r1", "total", "1000"]);
        let p50: f64 = c[3].parse().unwrap_or(0.0);
        assert!((495.0..=505.0).contains(&p50), "{s}");
    }

    #[test]
    fn empty_report() {
        let h = Histogram::<u64>::new_with_bounds(1, 1000, 2).unwrap_or_else(|e| panic!("{e}"));
        let r = percentile_report(&h);
        assert!(r.contains("Total count    =            0]"));
    }
}
