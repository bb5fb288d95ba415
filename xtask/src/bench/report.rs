//! The results: summaries with intervals and ratios, the targets, the terminal table and
//! results.json (the pictures are in [`super::charts`]).
//!
//! # results.json (schema `bpfnet-bench/7`)
//!
//! ```text
//! {
//!   "schema": "bpfnet-bench/7",
//!   "command": "cargo xtask bench --quick --budget-minutes 1.5",
//!   "started_unix": 1700000000, "finished_unix": 1700000060,    // seconds since the epoch
//!   "host": { "kernel": "6.18.44", "cpus": 2, "iptables": "iptables v1.8.9 (nf_tables)" },
//!   "settings": {
//!     "quick": true,
//!     "repetitions": 1,                    // of every workload, at the first and last N
//!     "min_headline_repetitions": 1,       // of the packet and connection rates, at every N
//!     "max_repetitions": 2,
//!     "budget_minutes": 1.5,               // the traffic measurements', shared over the N
//!     "tight_half_width_pct": 5.0,         // a headline figure stops when its interval's
//!                                          // half-width is under this % of its median
//!     "bootstrap": { "resamples": 4000, "seed": 7093..., "level": 0.95,
//!                    "ratio_resampling": "independent" },
//!     "durations": { "stream_secs": 2, "short_secs": 1.5 },  // iperf3 -t; udp/rr/crr
//!     "other_published_ports": [1],        // the N values: published ports of another
//!                                          // container, ahead of the measured ones
//!     "measured_published_ports": ["tcp/5201", "udp/5301", "tcp/5401"],
//!     "pinning": { "client_cpu": 0, "server_cpu": 1 },   // taskset -c; null: not pinned
//!     "udp_payload_bytes": 18, "udp_frame_bytes_with_fcs": 64,
//!     "order": "..."                       // how the datapaths were interleaved
//!   },
//!   "rows": [ {
//!     "scenario": "c2c" | "snat" | "dnat" | "control-plane",
//!     "family": "ipv4" | "ipv6",           // the rows of issue #15: c2c and snat, udp_pps
//!                                          // and udp_cpu_ns_per_pkt, on floor, bridge, bpfnet
//!     "other_published_ports": 1,          // N
//!     "metric": "tcp_gbps" | "udp_pps" | "rr_p50_us" | "rr_p99_us" | "crr_per_sec"
//!             | "tcp_offload_gbps" // dnat: the stream with the outside sender's tx offloads on
//!             | "udp_cpu_ns_per_pkt" // busy CPU time of the machine per UDP packet received
//!             | "publish_ms"       // control plane: publish one more port, end to end
//!             | "publish_api_ms"   // bpfnet only: the same through its API alone (no CLI)
//!             | "map_update_us",   // bpfnet only: its SERVICES map update alone
//!     "unit": "Gbit/s" | "Mpps" | "us" | "ns" | "1/s" | "ms",
//!     "higher_is_better": true,
//!     "datapath": "floor" | "topology-floor" | "bridge" | "docker-nft" | "nftables" | "bpfnet" | "bpfnet-xdp",
//!     "status": "measured" | "failed",
//!     "note": null | "the errors of failed repetitions",
//!     "samples": [1.0, ...],               // one per successful repetition, in run order
//!     "n": 5,                              // samples.len()
//!     "median": 1.0, "min": 1.0, "max": 1.0, "spread_pct": 0.0,  // null unless measured
//!     "ci": { "lo": 0.9, "hi": 1.1 },      // 95 % bootstrap interval of the median; null
//!                                          // with fewer than 2 samples
//!     "ratios": [ {                        // bpfnet's rows only; one per reference datapath
//!       "to": "bridge",                    // (every datapath that is not bpfnet's)
//!       "reference_scenario": "c2c",       // where the reference's figure comes from: the
//!       "reference_other_published_ports": 1,  // same scenario and N, else its figure at the
//!                                          // first N, else its c2c at the first N (the floor)
//!       "ratio": 1.5,                      // median / the reference's median
//!       "ci": { "lo": 1.4, "hi": 1.6 } | null,  // 95 % bootstrap interval of the ratio of
//!                                          // medians, both sides resampled independently
//!       "n": 5, "reference_n": 5
//!     } ]
//!   } ],
//!   "targets": [ {                         // issue #18's targets, one per bpfnet datapath
//!     "target": "c2c UDP 64B Mpps rx >= 1.5 x bridge+iptables",
//!     "scenario": "c2c", "other_published_ports": 1,
//!     "datapath": "bpfnet" | null,         // bpfnet's side
//!     "reference": "bridge" | null,        // the datapath name (TARGET_REFERENCES)
//!     "at_least": 1.5 | null,              // null for the flatness targets
//!     "measured": 1.54 | null,             // the ratio; flatness: the worst last-N / first-N
//!                                          // (in the better direction)
//!     "ci": { "lo": 1.4, "hi": 1.7 } | null,
//!     "verdict": "met" | "missed" | "undecided" | "not measured",
//!     "note": null | "why, in words"
//!   } ],
//!   "control_plane": null | {              // the full run (or --control-plane) only
//!     "scale": { ... } | null,             // scale.json: create_ms / remove_ms, each
//!                                          // [{ "attached": 1, "samples": 50, "p50": 40.1,
//!                                          //    "p99": 60.2, "p50_ci": { "lo", "hi" } }],
//!                                          // at 1, 100 and 1,000 containers; agent RSS ...
//!     "scale_error": null | "why",
//!     "cni": { ... } | null,               // cni.json: bpfnet and bridge_portmap, each
//!                                          // add_ms / del_ms in the same shape
//!     "cni_error": null | "why"
//!   },
//!   "program_cost": {                      // each eBPF program's own cost, at two N
//!     "status": "measured" | "failed",
//!     "error": null | "why it failed",
//!     "empty_median_ns": 100,              // the timer's share: a program that only returns
//!     "combined": [ ... ],                 // one report per N (the smallest, then the
//!                                          // largest), each path's median and p90 the medians
//!                                          // of its runs, `runs` their sum
//!     "reports": [ {                       // `bpfnet-devkit program-cost --json` as printed,
//!                                          // every run (repetitions x N, alternating N)
//!       "schema": "bpfnet-program-cost/2",
//!       "method": "...",                   // how it was measured, in words
//!       "runs_per_path": 20000, "kernel": "6.18.44",
//!       "other_ports": 1,                  // ports published besides the measured one (N)
//!       "paths": [ {
//!         "program": "empty" | "from_endpoint" | "from_uplink" | "from_uplink_xdp",
//!         "program_type": "tc" | "xdp",
//!         "path": "c2c-forward" | "arp-reply" | "snat-new-flow" | "snat-reply" | ...,
//!         "what": "the packet and what the program does with it",
//!         "verdict": "TC_ACT_REDIRECT",    // what every run returned (checked)
//!         "counters": ["forwarded"],       // what each run moved once (checked per batch)
//!         "runs": 20000,                   // fewer if the path hit its time limit
//!         "median_ns": 251, "p90_ns": 341, "min_ns": 230   // kernel-timed ns of one run
//!       } ]
//!     } ]
//!   },
//!   "perf_profiles": [ {                   // only with --perf; else []
//!     "datapath": "floor" | "bridge" | "bpfnet", "scenario": "c2c",
//!     "file": "perf-bpfnet.txt" | null,    // the summary, next to results.json
//!     "error": null | "why there is none"
//!   } ]
//! }
//! ```
//!
//! Ratios are plain quotients: above 1 is better for rates, worse for latencies and times.
//! Intervals are percentile bootstraps with a fixed seed ([`super::stats`]): the same samples
//! always give the same interval.
//!
//! Schema history: `/2` added `map_update_us` and dropped the status `not-supported-yet`
//! (bpfnet runs every scenario since it has `--uplink` and `--publish`); `/3` added
//! `program_cost` and `perf_profiles`; 4: `publish_api_ms`; 5: `program_cost.reports` (every
//! run, at two N, each with `other_ports`) and `program_cost.combined` for
//! `program_cost.report`; 6: `n`, `ci`, `ratios` (to every reference datapath, with
//! intervals) instead of `ratio_to_floor` and `ratio_to_bridge`, `targets`, `control_plane`,
//! and the adaptive repetitions' settings; 7: `family` (IPv6 rows; ratios and targets never
//! cross families), `settings.families` and `settings.udp_payload_bytes_ipv6`.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use super::stats::{median_interval, ratio_interval, Interval, Summary};
use super::topology::{Datapath, Family};
use super::workload::Metric;

pub const SCHEMA: &str = "bpfnet-bench/7";

/// Which figure a sample belongs to: a row of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub scenario: &'static str,
    /// A figure is compared only with figures of its own family.
    pub family: Family,
    pub other_ports: u32,
    pub metric: Metric,
    pub datapath: Datapath,
}

/// Everything the run produced, before summarising.
#[derive(Default)]
pub struct Collected {
    pub samples: BTreeMap<Key, Vec<f64>>,
    pub failures: BTreeMap<Key, Vec<String>>,
}

impl Collected {
    pub fn sample(&mut self, key: Key, value: f64) {
        self.samples.entry(key).or_default().push(value);
    }

    pub fn fail(&mut self, key: Key, error: String) {
        self.failures.entry(key).or_default().push(error);
    }

    fn samples(&self, key: &Key) -> &[f64] {
        self.samples.get(key).map_or(&[], Vec::as_slice)
    }

    /// The samples of the figure `key` is compared with on `reference`: the same scenario and
    /// N; for a reference that does not run the scenario there or at all (the floor runs c2c
    /// once), the same scenario at the first N, else c2c at the first N; always in the same
    /// family. A reference that
    /// runs the figure but failed every repetition has none.
    fn reference(&self, key: &Key, reference: Datapath, first_n: u32) -> Option<(Key, &[f64])> {
        let candidates = [
            Key { datapath: reference, ..*key },
            Key { datapath: reference, other_ports: first_n, ..*key },
            Key {
                datapath: reference,
                other_ports: first_n,
                scenario: "c2c",
                metric: key.metric.floor_metric(),
                ..*key
            },
        ];
        for candidate in candidates {
            if self.failures.contains_key(&candidate) && !self.samples.contains_key(&candidate) {
                return None;
            }
            if let Some(samples) = self.samples.get(&candidate) {
                return Some((candidate, samples));
            }
        }
        None
    }
}

/// One of bpfnet's figures over a reference datapath's.
#[derive(Clone, Debug, Serialize)]
pub struct Ratio {
    pub to: Datapath,
    /// Where the reference's figure comes from (see [`Collected::reference`]).
    pub reference_scenario: &'static str,
    pub reference_other_published_ports: u32,
    pub ratio: f64,
    /// 95 % bootstrap interval of the ratio of medians; None unless both sides have two
    /// samples or more.
    pub ci: Option<Interval>,
    pub n: usize,
    pub reference_n: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub scenario: &'static str,
    pub family: Family,
    pub other_published_ports: u32,
    pub metric: Metric,
    pub unit: &'static str,
    pub higher_is_better: bool,
    pub datapath: Datapath,
    pub status: &'static str,
    pub note: Option<String>,
    pub samples: Vec<f64>,
    pub n: usize,
    pub median: Option<f64>,
    /// 95 % bootstrap interval of the median; None with fewer than two samples.
    pub ci: Option<Interval>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub spread_pct: Option<f64>,
    /// bpfnet's rows only: over each reference datapath that has the figure.
    pub ratios: Vec<Ratio>,
}

impl Row {
    pub fn key(&self) -> Key {
        Key {
            scenario: self.scenario,
            family: self.family,
            other_ports: self.other_published_ports,
            metric: self.metric,
            datapath: self.datapath,
        }
    }

    pub fn ratio_to(&self, reference: Datapath) -> Option<&Ratio> {
        self.ratios.iter().find(|r| r.to == reference)
    }

    /// The scenario as the table names it: `c2c`, or `c2c ipv6` for an IPv6 row.
    pub fn scenario_label(&self) -> String {
        match self.family {
            Family::V4 => self.scenario.to_string(),
            Family::V6 => format!("{} {}", self.scenario, self.family.name()),
        }
    }
}

/// One row per key (measured or failed), with intervals, and for bpfnet's rows the ratios to
/// every reference datapath of the same run. `first_n`: the first N (where the floor runs).
pub fn rows(collected: &Collected, first_n: u32) -> Vec<Row> {
    let mut keys: Vec<Key> = collected.samples.keys().chain(collected.failures.keys()).copied().collect();
    keys.sort_by_key(|k| (k.family, scenario_rank(k.scenario), k.other_ports, k.metric, k.datapath));
    keys.dedup();
    keys.into_iter()
        .map(|key| {
            let samples = collected.samples(&key).to_vec();
            let summary = Summary::of(&samples);
            let failures = collected.failures.get(&key);
            let (status, note) = match (summary, failures) {
                (Some(_), None) => ("measured", None),
                (Some(_), Some(errors)) => {
                    ("measured", Some(format!("{} repetition(s) failed: {}", errors.len(), errors.join(" | "))))
                }
                (None, errors) => ("failed", Some(errors.map_or_else(|| "no samples".to_string(), |e| e.join(" | ")))),
            };
            let ratios = match summary {
                Some(summary) if key.datapath.is_bpfnet() => Datapath::ALL
                    .into_iter()
                    .filter(|d| !d.is_bpfnet())
                    .filter_map(|reference| {
                        let (from, theirs) = collected.reference(&key, reference, first_n)?;
                        let theirs_median = Summary::of(theirs)?.median;
                        let ratio = super::stats::ratio(summary.median, Some(theirs_median))?;
                        Some(Ratio {
                            to: reference,
                            reference_scenario: from.scenario,
                            reference_other_published_ports: from.other_ports,
                            ratio,
                            ci: ratio_interval(&samples, theirs),
                            n: summary.count,
                            reference_n: theirs.len(),
                        })
                    })
                    .collect(),
                _ => Vec::new(),
            };
            Row {
                scenario: key.scenario,
                family: key.family,
                other_published_ports: key.other_ports,
                metric: key.metric,
                unit: key.metric.unit(),
                higher_is_better: key.metric.higher_is_better(),
                datapath: key.datapath,
                status,
                note,
                n: summary.map_or(0, |s| s.count),
                ci: median_interval(&samples),
                samples,
                median: summary.map(|s| s.median),
                min: summary.map(|s| s.min),
                max: summary.map(|s| s.max),
                spread_pct: summary.map(|s| s.spread_pct),
                ratios,
            }
        })
        .collect()
}

/// The figures the repetitions continue for until their intervals are tight: the packet and
/// connection rates, which the targets are about.
pub fn is_headline(metric: Metric) -> bool {
    matches!(metric, Metric::UdpPps | Metric::CrrPerSec)
}

/// Half-width of a headline figure's interval, relative to its median, under which it is
/// decided ("tight"): more repetitions would not change a verdict by much.
pub const TIGHT_HALF_WIDTH_PCT: f64 = 5.0;

/// Whether a figure's interval is tight (two samples or more, half-width under
/// [`TIGHT_HALF_WIDTH_PCT`] of the median).
pub fn is_tight(samples: &[f64]) -> bool {
    match (median_interval(samples), Summary::of(samples)) {
        (Some(ci), Some(s)) => ci.half_width_pct(s.median) < TIGHT_HALF_WIDTH_PCT,
        _ => false,
    }
}

/// The table's order: the paths of a packet first, then the control plane.
fn scenario_rank(scenario: &str) -> usize {
    ["c2c", "snat", "dnat", "control-plane"].iter().position(|s| *s == scenario).unwrap_or(usize::MAX)
}

/// A figure with as many digits as it needs.
pub fn figure(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 1000.0 {
        format!("{value:.0}")
    } else if magnitude >= 100.0 {
        format!("{value:.1}")
    } else if magnitude >= 10.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

fn interval_text(ci: Option<Interval>, digits: fn(f64) -> String) -> String {
    ci.map_or_else(|| "[no interval]".to_string(), |ci| format!("[{}..{}]", digits(ci.lo), digits(ci.hi)))
}

fn two_digits(value: f64) -> String {
    format!("{value:.2}")
}

/// The terminal table: one line per row, grouped by scenario and N; bpfnet's rows end with
/// their ratio to each reference, `x<reference> ratio [95 % interval]`.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<14} {:>6}  {:<19} {:<16} {:>3} {:>10} {:>21} {:>21}  ratios to the references [95 % interval]",
        "scenario", "N", "metric", "datapath", "n", "median", "95 % interval", "min..max"
    );
    let mut last_group = None;
    for row in rows {
        let group = (row.family, row.scenario, row.other_published_ports);
        if last_group.is_some() && last_group != Some(group) {
            out.push('\n');
        }
        last_group = Some(group);
        let lead = format!(
            "{:<14} {:>6}  {:<19} {:<16} {:>3}",
            row.scenario_label(),
            row.other_published_ports,
            row.metric.label(),
            row.datapath.name(),
            row.n
        );
        match row.median {
            None => {
                let _ = writeln!(out, "{lead} {}", row.note.as_deref().unwrap_or(row.status));
            }
            Some(median) => {
                let range = format!("{}..{}", figure(row.min.unwrap_or(median)), figure(row.max.unwrap_or(median)));
                let ratios: Vec<String> = row
                    .ratios
                    .iter()
                    .map(|r| format!("x{} {:.2} {}", r.to.name(), r.ratio, interval_text(r.ci, two_digits)))
                    .collect();
                let _ = writeln!(
                    out,
                    "{lead} {:>10} {:>21} {:>21}  {}{}",
                    figure(median),
                    interval_text(row.ci, figure),
                    range,
                    ratios.join("  "),
                    if row.note.is_some() { "  (some repetitions failed)" } else { "" }
                );
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Targets

/// The reference datapaths the targets name, as (role, [`Datapath::name`]): the one place to
/// adjust when a datapath is added or renamed. A name no datapath of the run has makes its
/// targets "not measured".
pub const TARGET_REFERENCES: [(&str, &str); 4] = [
    ("structural floor", "topology-floor"),
    ("bare veth floor", "floor"),
    ("bridge+iptables", "bridge"),
    ("nftables with maps", "nftables"),
];

/// A target of issue #18: bpfnet's `metric` in `scenario` at the first N >= `at_least` x the
/// reference's (rates only: higher is better).
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub scenario: &'static str,
    pub metric: Metric,
    /// A role of [`TARGET_REFERENCES`].
    pub reference: &'static str,
    pub at_least: f64,
}

pub const TARGETS: [Target; 8] = [
    Target { scenario: "c2c", metric: Metric::UdpPps, reference: "structural floor", at_least: 0.97 },
    Target { scenario: "c2c", metric: Metric::UdpPps, reference: "bare veth floor", at_least: 0.92 },
    Target { scenario: "c2c", metric: Metric::UdpPps, reference: "bridge+iptables", at_least: 1.5 },
    Target { scenario: "c2c", metric: Metric::UdpPps, reference: "nftables with maps", at_least: 1.25 },
    Target { scenario: "snat", metric: Metric::UdpPps, reference: "bridge+iptables", at_least: 1.7 },
    Target { scenario: "snat", metric: Metric::UdpPps, reference: "nftables with maps", at_least: 1.3 },
    Target { scenario: "dnat", metric: Metric::CrrPerSec, reference: "bridge+iptables", at_least: 1.5 },
    Target { scenario: "dnat", metric: Metric::CrrPerSec, reference: "nftables with maps", at_least: 1.2 },
];

/// A target's outcome in this run, for one of bpfnet's datapaths.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub target: String,
    pub scenario: &'static str,
    pub other_published_ports: u32,
    /// bpfnet's side.
    pub datapath: Option<Datapath>,
    pub reference: Option<String>,
    pub at_least: Option<f64>,
    /// The ratio (or, for flatness, the worst N=last / N=first ratio) and its interval.
    pub measured: Option<f64>,
    pub ci: Option<Interval>,
    /// "met": the whole interval on the good side; "missed": wholly on the bad side;
    /// "undecided": it straddles the target, or fewer than [`MIN_SAMPLES_TO_DECIDE`]
    /// repetitions; "not measured".
    pub verdict: &'static str,
    pub note: Option<String>,
}

/// Repetitions each side needs before its interval decides anything: the bootstrap's
/// interval of a median is about [min, max] of few samples, which covers the true median
/// with 1 - 2 x 0.5^n probability: 50 % at n = 2, 94 % at 5.
pub const MIN_SAMPLES_TO_DECIDE: usize = 5;

/// Which side of `at_least` a ratio's interval lies on (higher is better), when both sides
/// have [`MIN_SAMPLES_TO_DECIDE`] samples.
pub fn decide(ratio: &Ratio, at_least: f64) -> &'static str {
    match ratio.ci {
        _ if ratio.n.min(ratio.reference_n) < MIN_SAMPLES_TO_DECIDE => "undecided",
        Some(ci) if ci.lo >= at_least => "met",
        Some(ci) if ci.hi < at_least => "missed",
        _ => "undecided",
    }
}

fn datapath_named(name: &str) -> Option<Datapath> {
    Datapath::ALL.into_iter().find(|d| d.name() == name)
}

/// Every target for every bpfnet datapath that runs its scenario, at the first N; then
/// flatness from the first N to the last.
pub fn verdicts(rows: &[Row], first_n: u32, last_n: u32) -> Vec<Verdict> {
    let mut out = Vec::new();
    for target in TARGETS {
        let name = TARGET_REFERENCES.iter().find(|(role, _)| *role == target.reference).map(|(_, name)| *name);
        let text =
            format!("{} {} >= {} x {}", target.scenario, target.metric.label(), target.at_least, target.reference);
        let ours: Vec<&Row> = rows
            .iter()
            .filter(|r| {
                r.datapath.is_bpfnet()
                    && r.family == Family::V4
                    && r.scenario == target.scenario
                    && r.metric == target.metric
                    && r.other_published_ports == first_n
            })
            .collect();
        let reference = name.and_then(datapath_named);
        let blank = |datapath, note: String| Verdict {
            target: text.clone(),
            scenario: target.scenario,
            other_published_ports: first_n,
            datapath,
            reference: name.map(str::to_string),
            at_least: Some(target.at_least),
            measured: None,
            ci: None,
            verdict: "not measured",
            note: Some(note),
        };
        let Some(reference) = reference else {
            out.push(blank(None, format!("this run has no datapath named {:?}", name.unwrap_or("?"))));
            continue;
        };
        if ours.is_empty() {
            out.push(blank(None, "bpfnet has no such figure in this run".to_string()));
        }
        for row in ours {
            match row.ratio_to(reference) {
                None => out.push(blank(Some(row.datapath), format!("no {} figure to compare with", reference.name()))),
                Some(ratio) => out.push(Verdict {
                    measured: Some(ratio.ratio),
                    ci: ratio.ci,
                    verdict: decide(ratio, target.at_least),
                    note: (ratio.n.min(ratio.reference_n) < MIN_SAMPLES_TO_DECIDE).then(|| {
                        format!(
                            "{} and {} repetitions: fewer than {MIN_SAMPLES_TO_DECIDE} decide nothing",
                            ratio.n, ratio.reference_n
                        )
                    }),
                    ..blank(Some(row.datapath), String::new())
                }),
            }
        }
    }
    for datapath in Datapath::ALL.into_iter().filter(|d| d.is_bpfnet()) {
        out.push(flatness(rows, datapath, first_n, last_n));
    }
    out
}

/// "Nothing of bpfnet's slower at the last N than at the first beyond its interval": every
/// figure of `datapath` measured at both N, compared interval to interval.
fn flatness(rows: &[Row], datapath: Datapath, first_n: u32, last_n: u32) -> Verdict {
    let mut verdict = Verdict {
        target: format!("{}: nothing slower at N={last_n} than at N={first_n} beyond its interval", datapath.name())
            .replace(&format!("N={first_n} than at N={first_n}"), &format!("the largest N than at N={first_n}")),
        scenario: "all",
        other_published_ports: last_n,
        datapath: Some(datapath),
        reference: None,
        at_least: None,
        measured: None,
        ci: None,
        verdict: "not measured",
        note: None,
    };
    if first_n == last_n {
        verdict.note = Some("one N only in this run".to_string());
        return verdict;
    }
    let find = |key: Key| rows.iter().find(|r| r.key() == key);
    let (mut slower, mut undecided, mut compared) = (Vec::new(), Vec::new(), 0);
    // The worst figure: last / first in the "better" direction (below 1 is worse).
    let mut worst: Option<(f64, String)> = None;
    for last in rows.iter().filter(|r| r.datapath == datapath && r.other_published_ports == last_n) {
        let Some(first) = find(Key { other_ports: first_n, ..last.key() }) else {
            continue;
        };
        let (Some(a), Some(b)) = (first.median, last.median) else {
            continue;
        };
        compared += 1;
        let what = format!("{} {}", last.scenario_label(), last.metric.label());
        let goodness = if last.higher_is_better { b / a } else { a / b };
        if worst.as_ref().is_none_or(|(w, _)| goodness < *w) {
            worst = Some((goodness, what.clone()));
        }
        match (first.ci, last.ci) {
            _ if first.n.min(last.n) < MIN_SAMPLES_TO_DECIDE => undecided.push(what),
            (Some(f), Some(l)) if !f.overlaps(l) && goodness < 1.0 => slower.push(what),
            (Some(_), Some(_)) => {}
            _ => undecided.push(what),
        }
    }
    if compared == 0 {
        verdict.note = Some("no figure at both N".to_string());
        return verdict;
    }
    verdict.measured = worst.as_ref().map(|(w, _)| *w);
    // Figures with too few repetitions (the non-headline ones have 3) are named, not judged;
    // the verdict rests on the others, and is undecided when none is left.
    let decided = compared - undecided.len();
    verdict.verdict = if !slower.is_empty() {
        "missed"
    } else if decided == 0 {
        "undecided"
    } else {
        "met"
    };
    let worst = worst.map_or_else(String::new, |(w, what)| format!("worst {what}: {w:.2} x"));
    let unjudged = if undecided.is_empty() {
        String::new()
    } else {
        format!("; not judged (fewer than {MIN_SAMPLES_TO_DECIDE} repetitions): {}", undecided.join(", "))
    };
    verdict.note = Some(match verdict.verdict {
        "missed" => format!("slower beyond the intervals: {}; {worst}{unjudged}", slower.join(", ")),
        "undecided" => format!("no figure has {MIN_SAMPLES_TO_DECIDE} repetitions at both N; {worst}{unjudged}"),
        _ => format!("{decided} figures judged, intervals overlap or better; {worst}{unjudged}"),
    });
    verdict
}

/// The targets as a table: one line per target and bpfnet datapath.
pub fn verdict_table(verdicts: &[Verdict]) -> String {
    let mut out = String::from(
        "targets (issue #18): met = the whole 95 % interval of the ratio on the good side, missed = wholly on the bad side\n",
    );
    let _ = writeln!(out, "{:<76} {:<11} {:>6} {:>14}  verdict", "target", "bpfnet", "ratio", "95 % interval");
    for v in verdicts {
        let _ = writeln!(
            out,
            "{:<76} {:<11} {:>6} {:>14}  {}{}",
            v.target,
            v.datapath.map_or("-", Datapath::name),
            v.measured.map_or_else(|| "-".to_string(), two_digits),
            v.ci.map_or_else(|| "-".to_string(), |ci| format!("[{:.2}..{:.2}]", ci.lo, ci.hi)),
            v.verdict,
            v.note.as_deref().filter(|n| !n.is_empty()).map_or_else(String::new, |n| format!(" ({n})"))
        );
    }
    out
}

pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// UTC time as `YYYYMMDD-HHMMSS` (for the results folder's name).
pub fn utc_stamp(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let rest = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!("{year:04}{month:02}{day:02}-{:02}{:02}{:02}", rest / 3600, rest % 3600 / 60, rest % 60)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(scenario: &'static str, datapath: Datapath, metric: Metric) -> Key {
        Key { scenario, family: Family::V4, other_ports: 1, metric, datapath }
    }

    #[test]
    fn ipv6_figures_are_compared_within_their_family() {
        let v6 = |scenario, datapath| Key { family: Family::V6, ..key(scenario, datapath, Metric::UdpPps) };
        let mut c = Collected::default();
        c.sample(key("c2c", Datapath::Floor, Metric::UdpPps), 10.0);
        c.sample(key("snat", Datapath::Bridge, Metric::UdpPps), 1.0);
        c.sample(v6("c2c", Datapath::Floor), 8.0);
        c.sample(v6("snat", Datapath::Bridge), 2.0);
        c.sample(v6("snat", Datapath::Bpfnet), 4.0);
        c.sample(key("snat", Datapath::Bpfnet, Metric::UdpPps), 5.0);
        let rows = rows(&c, 1);
        let ours = rows.iter().find(|r| r.family == Family::V6 && r.datapath == Datapath::Bpfnet).unwrap();
        // The IPv6 floor's c2c, not IPv4's; IPv6's bridge, not IPv4's.
        assert_eq!(ours.ratio_to(Datapath::Floor).map(|r| (r.ratio, r.reference_scenario)), Some((0.5, "c2c")));
        assert_eq!(ours.ratio_to(Datapath::Bridge).map(|r| r.ratio), Some(2.0));
        assert!(ours.ratio_to(Datapath::TopologyFloor).is_none());
        // IPv6's rows come after IPv4's and are named so; no target judges them.
        assert_eq!(rows.last().map(|r| r.family), Some(Family::V6));
        assert!(table(&rows).lines().any(|l| l.starts_with("snat ipv6") && l.contains("xbridge 2.00")));
        let snat_targets: Vec<Verdict> =
            verdicts(&rows, 1, 1).into_iter().filter(|v| v.scenario == "snat" && v.measured.is_some()).collect();
        assert!(snat_targets.iter().all(|v| v.measured == Some(5.0)), "{snat_targets:?}");
    }

    #[test]
    fn ratios_to_every_reference_of_the_same_run() {
        let mut c = Collected::default();
        for v in [10.0, 12.0, 11.0] {
            c.sample(key("c2c", Datapath::Floor, Metric::UdpPps), v);
        }
        c.sample(key("c2c", Datapath::Bridge, Metric::UdpPps), 5.5);
        c.sample(key("c2c", Datapath::Bpfnet, Metric::UdpPps), 8.25);
        c.sample(key("snat", Datapath::Bridge, Metric::UdpPps), 2.2);
        c.sample(key("snat", Datapath::Bpfnet, Metric::UdpPps), 4.4);
        c.sample(key("control-plane", Datapath::Bpfnet, Metric::MapUpdateUs), 3.0);
        c.sample(key("snat", Datapath::TopologyFloor, Metric::UdpPps), 8.8);
        c.fail(key("dnat", Datapath::Bridge, Metric::UdpPps), "boom".into());
        c.sample(key("dnat", Datapath::Bpfnet, Metric::UdpPps), 1.0);
        let rows = rows(&c, 1);
        let find = |s: &str, d: Datapath| rows.iter().find(|r| r.scenario == s && r.datapath == d).unwrap();
        let floor = find("c2c", Datapath::Floor);
        assert_eq!((floor.median, floor.n), (Some(11.0), 3));
        assert!(floor.ratios.is_empty(), "references get no ratios");
        let ci = floor.ci.unwrap();
        assert!(ci.lo >= 10.0 && ci.hi <= 12.0, "{ci:?}");
        let bpfnet = find("c2c", Datapath::Bpfnet);
        assert_eq!(bpfnet.ratio_to(Datapath::Floor).map(|r| r.ratio), Some(0.75));
        assert_eq!(bpfnet.ratio_to(Datapath::Bridge).map(|r| r.ratio), Some(1.5));
        // One sample: no interval.
        assert_eq!((bpfnet.ci, bpfnet.ratio_to(Datapath::Bridge).unwrap().ci), (None, None));
        // SNAT rows refer to the c2c floor (the floor has no SNAT), and to SNAT's bridge.
        let snat = find("snat", Datapath::Bpfnet);
        let to_floor = snat.ratio_to(Datapath::Floor).unwrap();
        assert_eq!((to_floor.ratio, to_floor.reference_scenario), (0.4, "c2c"));
        assert_eq!(snat.ratio_to(Datapath::Bridge).map(|r| (r.ratio, r.reference_scenario)), Some((2.0, "snat")));
        // The topology floor is the reference of its own scenario (routed, without NAT).
        assert_eq!(
            snat.ratio_to(Datapath::TopologyFloor).map(|r| (r.ratio, r.reference_scenario)),
            Some((0.5, "snat"))
        );
        // A reference that failed is not replaced by another scenario's figure.
        assert!(find("dnat", Datapath::Bpfnet).ratio_to(Datapath::Bridge).is_none());
        // Only bpfnet has a map update: nothing to compare with.
        assert!(find("control-plane", Datapath::Bpfnet).ratios.is_empty());
        let failed = find("dnat", Datapath::Bridge);
        assert_eq!((failed.status, failed.note.as_deref()), ("failed", Some("boom")));

        let text = table(&rows);
        assert!(text.contains("boom"), "the failure is shown: {text}");
        assert!(text.contains("xbridge 1.50 [no interval]"), "{text}");
        let title = "test <run>";
        for svg in
            [super::super::charts::headline_svg(&rows, title, 1), super::super::charts::ratios_svg(&rows, title, 1)]
        {
            assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
            assert!(svg.contains("test &lt;run&gt;"));
            // Every '<' opens a tag: text is escaped (rsvg-convert refuses the file otherwise).
            assert!(
                svg.match_indices('<')
                    .all(|(i, _)| svg[i + 1..].starts_with(|c: char| c.is_ascii_alphabetic() || c == '/')),
                "unescaped '<' in {svg}"
            );
        }
        serde_json::to_string(&rows).unwrap();
    }

    /// `count` samples spread +-1 % around `centre`.
    fn around(centre: f64, count: usize) -> Vec<f64> {
        (0..count).map(|i| centre * (0.99 + 0.02 * i as f64 / (count - 1) as f64)).collect()
    }

    #[test]
    fn verdicts_follow_the_interval() {
        let mut c = Collected::default();
        let mut put = |scenario, n, datapath, metric, samples: Vec<f64>| {
            for v in samples {
                c.sample(Key { scenario, family: Family::V4, other_ports: n, metric, datapath }, v);
            }
        };
        put("c2c", 1, Datapath::Floor, Metric::UdpPps, around(0.20, 8));
        put("c2c", 1, Datapath::Bridge, Metric::UdpPps, around(0.10, 8));
        put("c2c", 1, Datapath::Bpfnet, Metric::UdpPps, around(0.19, 8));
        put("snat", 1, Datapath::Bridge, Metric::UdpPps, around(0.10, 8));
        put("snat", 1, Datapath::Bpfnet, Metric::UdpPps, around(0.15, 8));
        put("snat", 1, Datapath::BpfnetXdp, Metric::UdpPps, around(0.170, 8));
        // Flat from N=1 to N=10,000 for tc; XDP falls beyond its interval.
        put("c2c", 10_000, Datapath::Bpfnet, Metric::UdpPps, around(0.19, 8));
        put("snat", 10_000, Datapath::Bpfnet, Metric::UdpPps, around(0.151, 8));
        put("snat", 10_000, Datapath::BpfnetXdp, Metric::UdpPps, around(0.12, 8));
        let rows = rows(&c, 1);
        let all = verdicts(&rows, 1, 10_000);
        let find = |target: &str, datapath: Datapath| {
            all.iter().find(|v| v.target.contains(target) && v.datapath == Some(datapath)).unwrap()
        };
        // 0.95 x the veth floor >= 0.92: met; 1.9 x bridge >= 1.5: met.
        assert_eq!(find("0.92 x bare veth floor", Datapath::Bpfnet).verdict, "met");
        assert_eq!(find("1.5 x bridge", Datapath::Bpfnet).verdict, "met");
        // SNAT: tc 1.5 x (missed 1.7), XDP 1.70 x with +-1 % samples: straddles 1.7.
        assert_eq!(find("snat UDP 64B Mpps rx >= 1.7", Datapath::Bpfnet).verdict, "missed");
        assert_eq!(find("snat UDP 64B Mpps rx >= 1.7", Datapath::BpfnetXdp).verdict, "undecided");
        // Datapaths this run lacks.
        let absent: Vec<_> = all.iter().filter(|v| v.target.contains("nftables")).collect();
        assert!(!absent.is_empty() && absent.iter().all(|v| v.verdict == "not measured"), "{absent:?}");
        assert!(all.iter().filter(|v| v.target.contains("structural floor")).all(|v| v.verdict == "not measured"));
        assert_eq!(find("nothing slower", Datapath::Bpfnet).verdict, "met");
        // A figure with 3 repetitions is named, not judged.
        let mut few = rows.clone();
        for row in few.iter_mut().filter(|r| r.datapath == Datapath::Bpfnet && r.scenario == "snat") {
            row.n = 3;
        }
        let tc = verdicts(&few, 1, 10_000)
            .into_iter()
            .find(|v| v.target.contains("nothing slower") && v.datapath == Some(Datapath::Bpfnet))
            .unwrap();
        assert_eq!(tc.verdict, "met");
        assert!(tc.note.as_deref().unwrap().contains("not judged (fewer than 5 repetitions): snat"), "{tc:?}");
        assert_eq!(find("nothing slower", Datapath::BpfnetXdp).verdict, "missed");
        let text = verdict_table(&all);
        assert!(text.contains("missed") && text.contains("not measured"), "{text}");
    }

    #[test]
    fn decisions() {
        let ci = |lo, hi| Some(Interval { lo, hi });
        let ratio = |ci, n| Ratio {
            to: Datapath::Bridge,
            reference_scenario: "c2c",
            reference_other_published_ports: 1,
            ratio: 1.5,
            ci,
            n,
            reference_n: 5,
        };
        assert_eq!(decide(&ratio(ci(1.6, 1.8), 5), 1.5), "met");
        assert_eq!(decide(&ratio(ci(1.2, 1.4), 5), 1.5), "missed");
        assert_eq!(decide(&ratio(ci(1.4, 1.6), 5), 1.5), "undecided");
        assert_eq!(decide(&ratio(None, 5), 1.5), "undecided");
        // Two repetitions' interval is [min, max]: it decides nothing.
        assert_eq!(decide(&ratio(ci(1.2, 1.4), 2), 1.5), "undecided");
        assert!(is_tight(&around(100.0, 10)));
        assert!(!is_tight(&[100.0]));
        assert!(!is_tight(&[50.0, 100.0, 150.0]));
    }

    #[test]
    fn figures_and_stamps() {
        assert_eq!(figure(1234.56), "1235");
        assert_eq!(figure(123.456), "123.5");
        assert_eq!(figure(12.3456), "12.35");
        assert_eq!(figure(1.23456), "1.235");
        assert_eq!(utc_stamp(0), "19700101-000000");
        assert_eq!(utc_stamp(951_782_400), "20000229-000000");
        assert_eq!(utc_stamp(1_700_000_000), "20231114-221320");
    }
}
