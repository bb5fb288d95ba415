//! Medians, spreads, percentiles and bootstrap intervals of the benchmark's samples.
//!
//! Intervals are percentile bootstraps: resample the repetitions with replacement
//! [`RESAMPLES`] times, take the statistic of each resample, and keep its 2.5th and 97.5th
//! percentiles. The generator is seeded with [`SEED`], so the same samples always give the
//! same interval (a report is reproducible from its samples in results.json).

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

/// Latency p50 and p99 (ms) of the operations made with about `attached` containers or pods
/// present: a window of consecutive operations around that count.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LatencyAt {
    pub attached: usize,
    /// Operations in the window.
    pub samples: usize,
    pub p50: f64,
    pub p99: f64,
    /// 95 % bootstrap interval of the p50 (the window's median).
    pub p50_ci: Option<Interval>,
}

/// Where the control plane's figures are taken: at 1, 100 and `count` attached.
pub fn scale_points(count: usize) -> Vec<usize> {
    let mut points: Vec<usize> = [1, 100, count].into_iter().filter(|p| *p <= count).collect();
    points.dedup();
    points
}

/// `by_count[i]`: the operation made with i + 1 attached (after an ADD, before a DEL). A
/// window of `width` operations centred on each point (moved inside the series at its ends).
pub fn latencies_at(by_count: &[std::time::Duration], points: &[usize], width: usize) -> Vec<LatencyAt> {
    let width = width.min(by_count.len());
    points
        .iter()
        .filter(|_| width > 0)
        .map(|&attached| {
            let start = attached.saturating_sub(width / 2 + 1).min(by_count.len() - width);
            let window = &by_count[start..start + width];
            let latency = LatencyMs::of(window);
            let ms: Vec<f64> = window.iter().map(|d| d.as_secs_f64() * 1e3).collect();
            LatencyAt { attached, samples: width, p50: latency.p50, p99: latency.p99, p50_ci: median_interval(&ms) }
        })
        .collect()
}

/// "flat" when the p50 at the most attached is not above the p50 at the fewest beyond their
/// intervals; else how many times slower it is.
pub fn flatness(series: &[LatencyAt]) -> String {
    let (Some(first), Some(last)) = (series.first(), series.last()) else {
        return "no figures".to_string();
    };
    match (first.p50_ci, last.p50_ci) {
        (Some(a), Some(b)) if b.lo > a.hi => {
            format!("grows: {:.2} x from {} to {}", last.p50 / first.p50, first.attached, last.attached)
        }
        (Some(_), Some(_)) => {
            format!("flat from {} to {} ({:.2} x)", first.attached, last.attached, last.p50 / first.p50)
        }
        _ => "no interval".to_string(),
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

/// Resamples per bootstrap interval.
pub const RESAMPLES: usize = 4000;
/// The bootstrap's seed: fixed, so a report's intervals follow from its samples alone.
pub const SEED: u64 = 0x6270_666e_6574_0018;

/// A 95 % confidence interval.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Interval {
    pub lo: f64,
    pub hi: f64,
}

impl Interval {
    /// Half the interval's width relative to `centre`, in percent.
    pub fn half_width_pct(self, centre: f64) -> f64 {
        if centre == 0.0 {
            return f64::INFINITY;
        }
        (self.hi - self.lo) / 2.0 / centre.abs() * 100.0
    }

    /// Whether the two intervals share a point.
    pub fn overlaps(self, other: Interval) -> bool {
        self.lo <= other.hi && other.lo <= self.hi
    }
}

/// splitmix64 (Steele, Lea, Flood 2014): small, fast and good enough to pick resample
/// indices; no dependency, and the same sequence on every machine.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// An index below `n` (the modulo bias is under 2^-50 for the counts used here).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The median of `values` (sorted in place); None when empty.
fn median_in_place(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 })
}

fn finite(samples: &[f64]) -> Vec<f64> {
    samples.iter().copied().filter(|v| v.is_finite()).collect()
}

/// The median of one resample (with replacement) of `samples` into `scratch`.
fn resampled_median(samples: &[f64], scratch: &mut Vec<f64>, rng: &mut SplitMix64) -> f64 {
    scratch.clear();
    scratch.extend((0..samples.len()).map(|_| samples[rng.below(samples.len())]));
    median_in_place(scratch).expect("a resample of a non-empty set")
}

/// The 2.5th and 97.5th percentiles of the bootstrap statistics.
fn percentile_interval(mut statistics: Vec<f64>) -> Option<Interval> {
    statistics.retain(|v| v.is_finite());
    statistics.sort_by(f64::total_cmp);
    Some(Interval { lo: percentile(&statistics, 2.5)?, hi: percentile(&statistics, 97.5)? })
}

/// 95 % percentile-bootstrap interval of the median of `samples`; None with fewer than two
/// (one repetition says nothing about its own spread).
pub fn median_interval(samples: &[f64]) -> Option<Interval> {
    let samples = finite(samples);
    if samples.len() < 2 {
        return None;
    }
    let mut rng = SplitMix64(SEED);
    let mut scratch = Vec::with_capacity(samples.len());
    percentile_interval((0..RESAMPLES).map(|_| resampled_median(&samples, &mut scratch, &mut rng)).collect())
}

/// 95 % percentile-bootstrap interval of median(`value`) / median(`reference`), each side
/// resampled independently (the two datapaths ran at different moments, so their samples
/// are two sets, not pairs). None unless both sides have two samples or more.
pub fn ratio_interval(value: &[f64], reference: &[f64]) -> Option<Interval> {
    let (value, reference) = (finite(value), finite(reference));
    if value.len() < 2 || reference.len() < 2 {
        return None;
    }
    let mut rng = SplitMix64(SEED);
    let mut scratch = Vec::with_capacity(value.len().max(reference.len()));
    percentile_interval(
        (0..RESAMPLES)
            .map(|_| {
                let top = resampled_median(&value, &mut scratch, &mut rng);
                let bottom = resampled_median(&reference, &mut scratch, &mut rng);
                if bottom != 0.0 {
                    top / bottom
                } else {
                    f64::NAN
                }
            })
            .collect(),
    )
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

    /// Standard normal samples from the same generator (Box-Muller), for known distributions.
    fn normal(rng: &mut SplitMix64, mean: f64, sd: f64) -> f64 {
        let u = |rng: &mut SplitMix64| (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
        let (u1, u2) = (u(rng).max(1e-300), u(rng));
        mean + sd * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    #[test]
    fn the_median_interval_covers_the_true_median() {
        // 200 trials of 15 samples from N(100, 10): a 95 % interval must cover 100 in about
        // 95 % of them (the bootstrap of a median is a little conservative at small n).
        let mut rng = SplitMix64(42);
        let mut covered = 0;
        for _ in 0..200 {
            let samples: Vec<f64> = (0..15).map(|_| normal(&mut rng, 100.0, 10.0)).collect();
            let ci = median_interval(&samples).unwrap();
            assert!(ci.lo <= ci.hi);
            let median = Summary::of(&samples).unwrap().median;
            assert!(ci.lo <= median && median <= ci.hi, "{ci:?} around {median}");
            if ci.lo <= 100.0 && 100.0 <= ci.hi {
                covered += 1;
            }
        }
        assert!((180..=200).contains(&covered), "covered {covered} of 200");
    }

    #[test]
    fn intervals_are_deterministic_and_shrink_with_samples() {
        let mut rng = SplitMix64(7);
        let few: Vec<f64> = (0..5).map(|_| normal(&mut rng, 50.0, 5.0)).collect();
        let many: Vec<f64> = (0..60).map(|_| normal(&mut rng, 50.0, 5.0)).collect();
        assert_eq!(median_interval(&few), median_interval(&few));
        assert_eq!(ratio_interval(&many, &few), ratio_interval(&many, &few));
        let (few_ci, many_ci) = (median_interval(&few).unwrap(), median_interval(&many).unwrap());
        assert!(many_ci.hi - many_ci.lo < few_ci.hi - few_ci.lo, "{many_ci:?} vs {few_ci:?}");
        assert!(many_ci.half_width_pct(50.0) < 5.0, "{many_ci:?}");
        // Nothing to resample from one sample.
        assert_eq!(median_interval(&[3.0]), None);
        assert_eq!(ratio_interval(&[3.0, 4.0], &[1.0]), None);
        // Identical samples: a point.
        assert_eq!(median_interval(&[2.0, 2.0, 2.0]), Some(Interval { lo: 2.0, hi: 2.0 }));
    }

    #[test]
    fn the_ratio_interval_covers_the_true_ratio() {
        // 100 trials: 20 samples of N(150, 15) over 20 of N(100, 10); true ratio 1.5.
        let mut rng = SplitMix64(1);
        let mut covered = 0;
        for _ in 0..100 {
            let top: Vec<f64> = (0..20).map(|_| normal(&mut rng, 150.0, 15.0)).collect();
            let bottom: Vec<f64> = (0..20).map(|_| normal(&mut rng, 100.0, 10.0)).collect();
            let ci = ratio_interval(&top, &bottom).unwrap();
            if ci.lo <= 1.5 && 1.5 <= ci.hi {
                covered += 1;
            }
        }
        assert!((88..=100).contains(&covered), "covered {covered} of 100");
        let a = Interval { lo: 1.0, hi: 2.0 };
        assert!(a.overlaps(Interval { lo: 2.0, hi: 3.0 }) && !a.overlaps(Interval { lo: 2.1, hi: 3.0 }));
    }

    #[test]
    fn latency_windows() {
        use std::time::Duration;
        // The i-th operation (i + 1 attached) takes i ms: the windows' medians follow.
        let series: Vec<Duration> = (0..1000).map(Duration::from_millis).collect();
        let at = latencies_at(&series, &scale_points(1000), 50);
        let p50: Vec<(usize, f64)> = at.iter().map(|a| (a.attached, a.p50)).collect();
        assert_eq!(p50, [(1, 24.0), (100, 98.0), (1000, 974.0)]);
        assert!(at.iter().all(|a| a.samples == 50 && a.p50_ci.is_some()));
        assert!(flatness(&at).starts_with("grows"), "{}", flatness(&at));
        let flat: Vec<Duration> = (0..1000).map(|i| Duration::from_millis(10 + i % 7)).collect();
        assert!(flatness(&latencies_at(&flat, &scale_points(1000), 50)).starts_with("flat"));
        assert_eq!(scale_points(100), [1, 100]);
        assert_eq!(latencies_at(&series[..10], &[1, 10], 50)[1].samples, 10);
    }

    #[test]
    fn ratios_need_a_reference() {
        assert_eq!(ratio(3.0, Some(2.0)), Some(1.5));
        assert_eq!(ratio(3.0, None), None);
        assert_eq!(ratio(3.0, Some(0.0)), None);
    }
}
