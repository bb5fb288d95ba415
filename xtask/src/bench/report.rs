//! The results: summaries with ratios, the terminal table, results.json and chart.svg.
//!
//! # results.json (schema `bpfnet-bench/5`)
//!
//! ```text
//! {
//!   "schema": "bpfnet-bench/5",
//!   "command": "cargo xtask bench --quick",
//!   "started_unix": 1700000000, "finished_unix": 1700000060,    // seconds since the epoch
//!   "host": { "kernel": "6.18.44", "cpus": 2, "iptables": "iptables v1.8.9 (nf_tables)" },
//!   "settings": {
//!     "quick": true, "repetitions": 1,
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
//!     "median": 1.0, "min": 1.0, "max": 1.0, "spread_pct": 0.0,  // null unless measured
//!     "ratio_to_floor": 1.0,               // median / the floor's c2c median at the first N
//!     "ratio_to_bridge": 1.0,              // median / bridge's median, same scenario and N
//!     "ratio_to_topology_floor": 1.0       // median / the topology floor's, same scenario
//!   } ],
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
//!
//! Schema history: `/2` added `map_update_us` and dropped the status `not-supported-yet`
//! (bpfnet runs every scenario since it has `--uplink` and `--publish`); `/3` added
//! `program_cost` and `perf_profiles`; 4: `publish_api_ms`; 5: `program_cost.reports` (every
//! run, at two N, each with `other_ports`) and `program_cost.combined` for
//! `program_cost.report`.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use super::stats::{ratio, Summary};
use super::topology::Datapath;
use super::workload::Metric;

pub const SCHEMA: &str = "bpfnet-bench/5";

/// Which figure a sample belongs to: a row of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub scenario: &'static str,
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
}

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub scenario: &'static str,
    pub other_published_ports: u32,
    pub metric: Metric,
    pub unit: &'static str,
    pub higher_is_better: bool,
    pub datapath: Datapath,
    pub status: &'static str,
    pub note: Option<String>,
    pub samples: Vec<f64>,
    pub median: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub spread_pct: Option<f64>,
    pub ratio_to_floor: Option<f64>,
    pub ratio_to_bridge: Option<f64>,
    /// median / the topology floor's median, same scenario and metric, at the floor's N.
    pub ratio_to_topology_floor: Option<f64>,
}

/// One row per key (measured or failed), with ratios from the same run.
/// `floor_ports`: the N at which the floor was measured (its figures are every row's reference).
pub fn rows(collected: &Collected, floor_ports: u32) -> Vec<Row> {
    let median = |key: &Key| collected.samples.get(key).and_then(|samples| Summary::of(samples)).map(|s| s.median);
    let mut keys: Vec<Key> = collected.samples.keys().chain(collected.failures.keys()).copied().collect();
    keys.sort_by_key(|k| (scenario_rank(k.scenario), k.other_ports, k.metric, k.datapath));
    keys.dedup();
    keys.into_iter()
        .map(|key| {
            let samples = collected.samples.get(&key).cloned().unwrap_or_default();
            let summary = Summary::of(&samples);
            let floor = median(&Key {
                scenario: "c2c",
                other_ports: floor_ports,
                metric: key.metric.floor_metric(),
                datapath: Datapath::Floor,
            });
            let bridge = median(&Key { datapath: Datapath::Bridge, ..key });
            let topology_floor = median(&Key { other_ports: floor_ports, datapath: Datapath::TopologyFloor, ..key });
            let failures = collected.failures.get(&key);
            let (status, note) = match (summary, failures) {
                (Some(_), None) => ("measured", None),
                (Some(_), Some(errors)) => {
                    ("measured", Some(format!("{} repetition(s) failed: {}", errors.len(), errors.join(" | "))))
                }
                (None, errors) => ("failed", Some(errors.map_or_else(|| "no samples".to_string(), |e| e.join(" | ")))),
            };
            Row {
                scenario: key.scenario,
                other_published_ports: key.other_ports,
                metric: key.metric,
                unit: key.metric.unit(),
                higher_is_better: key.metric.higher_is_better(),
                datapath: key.datapath,
                status,
                note,
                samples,
                median: summary.map(|s| s.median),
                min: summary.map(|s| s.min),
                max: summary.map(|s| s.max),
                spread_pct: summary.map(|s| s.spread_pct),
                ratio_to_floor: summary.and_then(|s| ratio(s.median, floor)),
                ratio_to_bridge: summary.and_then(|s| ratio(s.median, bridge)),
                ratio_to_topology_floor: summary.and_then(|s| ratio(s.median, topology_floor)),
            }
        })
        .collect()
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

fn optional_ratio(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_string(), |r| format!("{r:.2}"))
}

/// The terminal table: one line per row, grouped by scenario and N.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<14} {:>6}  {:<19} {:<14} {:>10}  {:>21} {:>7} {:>8} {:>8} {:>7}",
        "scenario", "N", "metric", "datapath", "median", "min..max", "spread", "x floor", "x bridge", "x topo"
    );
    let mut last_group = None;
    for row in rows {
        let group = (row.scenario, row.other_published_ports);
        if last_group.is_some() && last_group != Some(group) {
            out.push('\n');
        }
        last_group = Some(group);
        let lead = format!(
            "{:<14} {:>6}  {:<19} {:<14}",
            row.scenario,
            row.other_published_ports,
            row.metric.label(),
            row.datapath.name()
        );
        match (row.status, row.median) {
            (_, None) => {
                let _ = writeln!(out, "{lead} {}", row.note.as_deref().unwrap_or(row.status));
            }
            (_, Some(median)) => {
                let range = format!("{}..{}", figure(row.min.unwrap_or(median)), figure(row.max.unwrap_or(median)));
                let _ = writeln!(
                    out,
                    "{lead} {:>10}  {:>21} {:>6.1}% {:>8} {:>8} {:>7}{}",
                    figure(median),
                    range,
                    row.spread_pct.unwrap_or(0.0),
                    optional_ratio(row.ratio_to_floor),
                    optional_ratio(row.ratio_to_bridge),
                    optional_ratio(row.ratio_to_topology_floor),
                    if row.note.is_some() { "  (some repetitions failed)" } else { "" }
                );
            }
        }
    }
    out
}

/// How well a row does against the floor, higher is better whatever the metric:
/// value/floor for rates, floor/value for latencies.
fn relative_to_floor(row: &Row) -> Option<f64> {
    let r = row.ratio_to_floor?;
    if row.higher_is_better {
        Some(r)
    } else if r > 0.0 {
        Some(1.0 / r)
    } else {
        None
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A grouped bar chart: per (scenario, N, metric), one bar per datapath, the height its
/// performance relative to the floor (1.0 = the floor; higher is better).
pub fn chart_svg(rows: &[Row], title: &str) -> String {
    const COLORS: [(Datapath, &str); 7] = [
        (Datapath::Floor, "#9e9e9e"),
        (Datapath::TopologyFloor, "#cfcfcf"),
        (Datapath::Bridge, "#e07b39"),
        (Datapath::DockerNft, "#f2b134"),
        (Datapath::Nftables, "#b5446e"),
        (Datapath::Bpfnet, "#2f6db5"),
        (Datapath::BpfnetXdp, "#5aa469"),
    ];
    let mut groups: BTreeMap<(&str, u32, Metric), Vec<&Row>> = BTreeMap::new();
    for row in
        rows.iter().filter(|r| !matches!(r.metric, Metric::PublishMs | Metric::PublishApiMs | Metric::MapUpdateUs))
    {
        groups.entry((row.scenario, row.other_published_ports, row.metric)).or_default().push(row);
    }
    let bar = 16.0;
    let group_width = bar * COLORS.len() as f64 + 18.0;
    let (left, top, plot_height, bottom) = (60.0, 60.0, 260.0, 150.0);
    let width = left + group_width * groups.len().max(1) as f64 + 20.0;
    let height = top + plot_height + bottom;
    let highest = rows.iter().filter_map(relative_to_floor).fold(1.2f64, f64::max).min(10.0);
    let y = |value: f64| top + plot_height * (1.0 - value.min(highest) / highest);

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(svg, r#"<text x="{left}" y="22" font-size="14" font-weight="bold">{}</text>"#, escape(title));
    let _ = writeln!(
        svg,
        r#"<text x="{left}" y="40">relative to the floor, higher is better (rates: value/floor; latencies: floor/value); N = other published ports</text>"#
    );
    // Axis with ticks at 0.25 steps of the highest value's scale.
    let step = if highest > 4.0 { 1.0 } else { 0.25 };
    let mut tick = 0.0;
    while tick <= highest + 1e-9 {
        let ty = y(tick);
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" y1="{ty:.1}" x2="{:.1}" y2="{ty:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{tick:.2}</text>"##,
            width - 20.0,
            left - 6.0,
            ty + 4.0
        );
        tick += step;
    }
    let one = y(1.0);
    let _ = writeln!(
        svg,
        r##"<line x1="{left}" y1="{one:.1}" x2="{:.1}" y2="{one:.1}" stroke="#555" stroke-dasharray="4 3"/>"##,
        width - 20.0
    );
    for (i, ((scenario, ports, metric), members)) in groups.iter().enumerate() {
        let x0 = left + 9.0 + group_width * i as f64;
        for (j, (datapath, color)) in COLORS.iter().enumerate() {
            let x = x0 + bar * j as f64;
            let Some(row) = members.iter().find(|r| r.datapath == *datapath) else {
                continue;
            };
            if let Some(value) = relative_to_floor(row) {
                let by = y(value);
                let _ = writeln!(
                    svg,
                    r#"<rect x="{x:.1}" y="{by:.1}" width="{:.1}" height="{:.1}" fill="{color}"><title>{} {}: {:.2}</title></rect>"#,
                    bar - 2.0,
                    (top + plot_height - by).max(0.0),
                    datapath.name(),
                    escape(metric.label()),
                    value
                );
            }
        }
        let lx = x0 + bar * 1.5;
        let ly = top + plot_height + 10.0;
        let _ = writeln!(
            svg,
            r#"<text x="{lx:.1}" y="{ly:.1}" text-anchor="end" transform="rotate(-60 {lx:.1} {ly:.1})">{} N={} {}</text>"#,
            scenario,
            ports,
            escape(metric.label())
        );
    }
    for (j, (datapath, color)) in COLORS.iter().enumerate() {
        let lx = left + 110.0 * j as f64;
        let ly = height - 16.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{lx}" y="{:.1}" width="12" height="12" fill="{color}"/><text x="{:.1}" y="{ly:.1}">{}</text>"#,
            ly - 10.0,
            lx + 16.0,
            datapath.name()
        );
    }
    svg.push_str("</svg>\n");
    svg
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
        Key { scenario, other_ports: 1, metric, datapath }
    }

    #[test]
    fn ratios_against_floor_and_bridge_of_the_same_run() {
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
        let rows = rows(&c, 1);
        let find = |s: &str, d: Datapath| rows.iter().find(|r| r.scenario == s && r.datapath == d).unwrap();
        let floor = find("c2c", Datapath::Floor);
        assert_eq!((floor.median, floor.ratio_to_floor), (Some(11.0), Some(1.0)));
        assert_eq!(find("c2c", Datapath::Bridge).ratio_to_floor, Some(0.5));
        let bpfnet = find("c2c", Datapath::Bpfnet);
        assert_eq!((bpfnet.ratio_to_floor, bpfnet.ratio_to_bridge), (Some(0.75), Some(1.5)));
        // SNAT rows refer to the c2c floor.
        assert_eq!(find("snat", Datapath::Bridge).ratio_to_floor, Some(0.2));
        assert_eq!(find("snat", Datapath::Bpfnet).ratio_to_bridge, Some(2.0));
        // The topology floor is the reference of its own scenario.
        assert_eq!(find("snat", Datapath::Bpfnet).ratio_to_topology_floor, Some(0.5));
        assert_eq!(bpfnet.ratio_to_topology_floor, None);
        // Only bpfnet has a map update: no ratio to anything.
        let map = find("control-plane", Datapath::Bpfnet);
        assert_eq!((map.ratio_to_floor, map.ratio_to_bridge), (None, None));
        let failed = find("dnat", Datapath::Bridge);
        assert_eq!((failed.status, failed.note.as_deref()), ("failed", Some("boom")));

        let text = table(&rows);
        assert!(text.contains("boom"), "the failure is shown: {text}");
        assert!(text.contains("0.50"), "{text}");
        let svg = chart_svg(&rows, "test <run>");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("test &lt;run&gt;"));
        serde_json::to_string(&rows).unwrap();
    }

    #[test]
    fn latency_bars_invert_the_ratio() {
        let mut c = Collected::default();
        c.sample(key("c2c", Datapath::Floor, Metric::RrP50Us), 20.0);
        c.sample(key("c2c", Datapath::Bridge, Metric::RrP50Us), 40.0);
        let rows = rows(&c, 1);
        let bridge = rows.iter().find(|r| r.datapath == Datapath::Bridge).unwrap();
        assert_eq!(bridge.ratio_to_floor, Some(2.0));
        assert_eq!(relative_to_floor(bridge), Some(0.5));
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
