//! The per-packet cost of each eBPF program, in ns, as the kernel times it: `bpfnet-devkit
//! program-cost --json` (BPF_PROG_TEST_RUN on a namespace and datapath of its own, see
//! agent/src/program_cost.rs), run at the bench's smallest and largest N (ports published
//! besides the measured one), its reports kept in results.json and shown as one table with
//! the change between them: a path's cost must not grow with N.
//!
//! These figures are the programs alone: no veth, no network stack, no syscall. On this kind
//! of VM those dominate a packet's cost (a few microseconds per packet at 0.15-0.25 Mpps),
//! which is why the traffic figures of bpfnet and of the floor are so close.

use std::fmt::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};

use super::stats::Summary;
use crate::command;

/// The report's schema this bench reads.
pub const SCHEMA: &str = "bpfnet-program-cost/2";
/// Test runs per path.
const RUNS: u32 = 20_000;
/// Each path stops after this many seconds even short of RUNS.
const MAX_SECS_PER_PATH: u64 = 5;
/// The whole command (about 20 paths, each bounded; setup and cleanup take a second).
const LIMIT: Duration = Duration::from_secs(300);
/// The path that only measures the kernel's timer (a program that only returns).
const EMPTY: &str = "empty";

/// `bpfnet-devkit program-cost --json`, as it prints it.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ProgramCost {
    pub schema: String,
    pub method: String,
    pub runs_per_path: u32,
    /// Ports published besides the measured one.
    pub other_ports: u32,
    pub kernel: Option<String>,
    pub paths: Vec<PathCost>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct PathCost {
    pub program: String,
    /// `tc` or `xdp`.
    pub program_type: String,
    pub path: String,
    pub what: String,
    pub verdict: String,
    pub counters: Vec<String>,
    pub runs: u64,
    pub median_ns: u64,
    pub p90_ns: u64,
    pub min_ns: u64,
}

/// Runs the command (bounded in time) `repetitions` times per N of `other_ports`, the Ns
/// alternating (A/B, then B/A, as the traffic runs do), and reads the reports, in run order.
pub fn measure(devkit: &Path, other_ports: &[u32], repetitions: u32) -> Result<Vec<ProgramCost>> {
    let mut reports = Vec::new();
    for rep in 0..repetitions {
        let mut order = other_ports.to_vec();
        if rep % 2 == 1 {
            order.reverse();
        }
        for n in order {
            let mut cmd = Command::new(devkit);
            cmd.args(["program-cost", "--json"])
                .args(["--runs", &RUNS.to_string()])
                .args(["--max-secs-per-path", &MAX_SECS_PER_PATH.to_string()])
                .args(["--other-ports", &n.to_string()]);
            let json = command::output_bounded(&mut cmd, LIMIT)?;
            reports.push(parse(&json).with_context(|| format!("with {n} other ports published"))?);
        }
    }
    Ok(reports)
}

/// One report per N (in the order the Ns first appear) from the runs of each: a path's
/// median and p90 are the medians over the runs (a run's own figures move by 10-20 % from
/// one run to the next on a shared VM), its minimum the least, its runs their sum.
pub fn combine(reports: &[ProgramCost]) -> Vec<ProgramCost> {
    let mut ns: Vec<u32> = Vec::new();
    for r in reports {
        if !ns.contains(&r.other_ports) {
            ns.push(r.other_ports);
        }
    }
    ns.into_iter()
        .map(|n| {
            let runs: Vec<&ProgramCost> = reports.iter().filter(|r| r.other_ports == n).collect();
            let mut combined = runs[0].clone();
            for path in &mut combined.paths {
                let same: Vec<&PathCost> = runs
                    .iter()
                    .filter_map(|r| r.paths.iter().find(|p| p.program == path.program && p.path == path.path))
                    .collect();
                let median_of = |f: fn(&PathCost) -> u64| {
                    Summary::of(&same.iter().map(|p| f(p) as f64).collect::<Vec<_>>())
                        .map_or(0, |s| s.median.round() as u64)
                };
                path.median_ns = median_of(|p| p.median_ns);
                path.p90_ns = median_of(|p| p.p90_ns);
                path.min_ns = same.iter().map(|p| p.min_ns).min().unwrap_or(path.min_ns);
                path.runs = same.iter().map(|p| p.runs).sum();
            }
            combined
        })
        .collect()
}

pub fn parse(json: &str) -> Result<ProgramCost> {
    let report: ProgramCost =
        serde_json::from_str(json).context("`bpfnet-devkit program-cost --json` did not print its report")?;
    ensure!(
        report.schema == SCHEMA,
        "program-cost report schema {:?}, this bench reads {SCHEMA:?}: rebuild bpfnet and xtask \
         from the same commit",
        report.schema
    );
    ensure!(!report.paths.is_empty(), "the program-cost report has no paths");
    Ok(report)
}

impl ProgramCost {
    /// Median of the timer-only path, if measured.
    pub fn empty_median_ns(&self) -> Option<u64> {
        self.paths.iter().find(|p| p.path == EMPTY).map(|p| p.median_ns)
    }

    /// The median of the same program and path in another report.
    fn median_of(&self, path: &PathCost) -> Option<u64> {
        self.paths.iter().find(|p| p.program == path.program && p.path == path.path).map(|p| p.median_ns)
    }
}

/// The terminal table of the first report, with the median of each path in the others (more
/// ports published) and its change; `~net` is the median minus the empty program's (the
/// timer's share).
pub fn table(reports: &[ProgramCost]) -> String {
    let Some((first, others)) = reports.split_first() else {
        return String::new();
    };
    let empty = first.empty_median_ns();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "per-program cost (BPF_PROG_TEST_RUN, ns/packet): {} runs per path per command, one run per \
         call, kernel-timed; the programs alone (no veth, stack or syscall); N = other ports published",
        first.runs_per_path
    );
    let _ = write!(
        out,
        "{:<16} {:<4} {:<20} {:<16} {:>8} {:>8} {:>8} {:>7}",
        "program", "type", "path", "verdict", "median", "p90", "~net", "runs"
    );
    for other in others {
        let _ = write!(out, " {:>12} {:>7}", format!("N={}", other.other_ports), "change");
    }
    let _ = writeln!(
        out,
        "{}",
        if others.is_empty() { String::new() } else { format!("   (median at N={})", first.other_ports) }
    );
    for p in &first.paths {
        let net = match empty {
            Some(empty) if p.path != EMPTY => p.median_ns.saturating_sub(empty).to_string(),
            _ => "-".to_string(),
        };
        let _ = write!(
            out,
            "{:<16} {:<4} {:<20} {:<16} {:>8} {:>8} {:>8} {:>7}",
            p.program, p.program_type, p.path, p.verdict, p.median_ns, p.p90_ns, net, p.runs
        );
        for other in others {
            match other.median_of(p) {
                Some(median) => {
                    let change = (median as f64 / p.median_ns.max(1) as f64 - 1.0) * 100.0;
                    let _ = write!(out, " {median:>12} {change:>+6.1}%");
                }
                None => {
                    let _ = write!(out, " {:>12} {:>7}", "-", "-");
                }
            }
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out, "~net: median minus the empty program's median (what the kernel's timer adds to every run).");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = r#"{
      "schema": "bpfnet-program-cost/2",
      "method": "BPF_PROG_TEST_RUN, one run per call",
      "runs_per_path": 20000, "max_secs_per_path": 5, "other_ports": 1, "kernel": "6.18.44",
      "netns": "bnpc1x0", "bpffs": "/sys/fs/bpf/bnpc1x0",
      "paths": [
        {"program": "empty", "program_type": "tc", "path": "empty", "what": "timer",
         "verdict": "TC_ACT_OK", "counters": [], "runs": 20000,
         "median_ns": 100, "p90_ns": 110, "min_ns": 90},
        {"program": "from_endpoint", "program_type": "tc", "path": "c2c-forward",
         "what": "A to B", "verdict": "TC_ACT_REDIRECT", "counters": ["forwarded"],
         "runs": 20000, "median_ns": 251, "p90_ns": 341, "min_ns": 230},
        {"program": "from_uplink_xdp", "program_type": "xdp", "path": "snat-reply",
         "what": "reply", "verdict": "XDP_REDIRECT", "counters": ["translated_in"],
         "runs": 12000, "median_ns": 90, "p90_ns": 120, "min_ns": 80}
      ]
    }"#;

    #[test]
    fn report_is_read_and_tabled_with_net_figures() {
        let report = parse(REPORT).unwrap();
        assert_eq!(report.paths.len(), 3);
        assert_eq!(report.empty_median_ns(), Some(100));
        let table = table(std::slice::from_ref(&report));
        assert!(table.starts_with("per-program cost (BPF_PROG_TEST_RUN, ns/packet)"), "{table}");
        let c2c = table.lines().find(|l| l.contains("c2c-forward")).unwrap();
        assert!(c2c.contains(" 251 ") && c2c.contains(" 341 ") && c2c.contains(" 151 "), "{c2c}");
        // Below the timer's median: no negative figure.
        let xdp = table.lines().find(|l| l.contains("from_uplink_xdp")).unwrap();
        assert!(xdp.contains("xdp") && xdp.contains(" 0 ") && xdp.ends_with("12000"), "{xdp}");
        let empty = table.lines().find(|l| l.starts_with("empty")).unwrap();
        assert!(empty.contains(" - "), "{empty}");
    }

    #[test]
    fn other_schemas_and_garbage_are_refused() {
        let other = REPORT.replace("bpfnet-program-cost/2", "bpfnet-program-cost/9");
        let err = parse(&other).unwrap_err();
        assert!(format!("{err:#}").contains("same commit"), "{err:#}");
        assert!(parse("bpfnet: error: interrupted").is_err());
        let empty = r#"{"schema": "bpfnet-program-cost/2", "method": "", "runs_per_path": 1,
                        "other_ports": 0, "kernel": null, "paths": []}"#;
        assert!(parse(empty).is_err());
    }

    #[test]
    fn a_report_at_a_larger_n_adds_its_median_and_change() {
        let one = parse(REPORT).unwrap();
        let many = parse(
            &REPORT
                .replace(r#""other_ports": 1"#, r#""other_ports": 10000"#)
                .replace(r#""median_ns": 251"#, r#""median_ns": 276"#),
        )
        .unwrap();
        let table = table(&[one, many]);
        let header = table.lines().nth(1).unwrap();
        assert!(header.contains("N=10000") && header.ends_with("(median at N=1)"), "{header}");
        let c2c = table.lines().find(|l| l.contains("c2c-forward")).unwrap();
        assert!(c2c.contains(" 276 ") && c2c.ends_with("+10.0%"), "{c2c}");
        let xdp = table.lines().find(|l| l.contains("from_uplink_xdp")).unwrap();
        assert!(xdp.ends_with("+0.0%"), "{xdp}");
    }

    #[test]
    fn runs_of_each_n_are_combined_by_their_medians() {
        let at = |n: u32, median: u64| {
            parse(
                &REPORT
                    .replace(r#""other_ports": 1"#, &format!(r#""other_ports": {n}"#))
                    .replace(r#""median_ns": 251"#, &format!(r#""median_ns": {median}"#)),
            )
            .unwrap()
        };
        // Alternating runs: 1, 10000, 10000, 1, 1, 10000.
        let runs = [at(1, 300), at(10000, 260), at(10000, 250), at(1, 240), at(1, 250), at(10000, 900)];
        let combined = combine(&runs);
        assert_eq!(combined.iter().map(|c| c.other_ports).collect::<Vec<_>>(), vec![1, 10000]);
        let c2c = |c: &ProgramCost| c.paths.iter().find(|p| p.path == "c2c-forward").unwrap().clone();
        assert_eq!(c2c(&combined[0]).median_ns, 250);
        assert_eq!(c2c(&combined[1]).median_ns, 260, "one slow run does not make the figure");
        assert_eq!(c2c(&combined[1]).runs, 60000);
    }
}
