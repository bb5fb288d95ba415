//! Medians, spreads and percentiles of the benchmark's samples.

/// Median, extremes and relative spread of the repetitions of one figure.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// (max - min) / median, in percent: how far the repetitions disagree.
    pub spread_pct: f64,
    pub count: usize,
}

impl Summary {
    /// None for no samples (every repetition failed).
    pub fn of(samples: &[f64]) -> Option<Summary> {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 };
        let (min, max) = (sorted[0], sorted[n - 1]);
        let spread_pct = if median != 0.0 { (max - min) / median.abs() * 100.0 } else { 0.0 };
        Some(Summary { median, min, max, spread_pct, count: n })
    }
}

/// p50 and p99 of a set of durations, in milliseconds (the control plane's figures).
#[derive(Debug, serde::Serialize)]
pub struct LatencyMs {
    pub p50: f64,
    pub p99: f64,
}

impl LatencyMs {
    pub fn of(durations: &[std::time::Duration]) -> LatencyMs {
        let mut ms: Vec<f64> = durations.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        LatencyMs { p50: percentile(&ms, 50.0).unwrap_or(f64::NAN), p99: percentile(&ms, 99.0).unwrap_or(f64::NAN) }
    }
}

/// Nearest-rank percentile (`p` in 0..=100) of `sorted` (ascending); None when empty.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// `value / reference`, or None when there is no usable reference.
pub fn ratio(value: f64, reference: Option<f64>) -> Option<f64> {
    match reference {
        Some(reference) if reference != 0.0 && reference.is_finite() => Some(value / reference),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let s = Summary::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.count), (2.0, 1.0, 3.0, 3));
        assert_eq!(s.spread_pct, 100.0);
        assert_eq!(Summary::of(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert_eq!(Summary::of(&[7.0]).unwrap().spread_pct, 0.0);
    }

    #[test]
    fn no_samples_no_summary() {
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(Summary::of(&[f64::NAN]), None);
        assert_eq!(Summary::of(&[f64::NAN, 5.0]).unwrap().median, 5.0);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[7u32], 99.0), Some(7));
        assert_eq!(percentile::<u32>(&[], 50.0), None);
        // 10 samples: p99 is the largest, p50 the fifth.
        let v: Vec<u32> = (1..=10).collect();
        assert_eq!((percentile(&v, 50.0), percentile(&v, 99.0)), (Some(5), Some(10)));
    }

    #[test]
    fn ratios_need_a_reference() {
        assert_eq!(ratio(3.0, Some(2.0)), Some(1.5));
        assert_eq!(ratio(3.0, None), None);
        assert_eq!(ratio(3.0, Some(0.0)), None);
    }
}
