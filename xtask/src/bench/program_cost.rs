//! The per-packet cost of each eBPF program, in ns, as the kernel times it: `bpfnet debug
//! program-cost --json` (BPF_PROG_TEST_RUN on a namespace and datapath of its own, see
//! agent/src/program_cost.rs), run once per bench run, its report kept in results.json and
//! shown as a table.
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

use crate::command;

/// The report's schema this bench reads.
pub const SCHEMA: &str = "bpfnet-program-cost/1";
/// Test runs per path.
const RUNS: u32 = 20_000;
/// Each path stops after this many seconds even short of RUNS.
const MAX_SECS_PER_PATH: u64 = 5;
/// The whole command (about 20 paths, each bounded; setup and cleanup take a second).
const LIMIT: Duration = Duration::from_secs(300);
/// The path that only measures the kernel's timer (a program that only returns).
const EMPTY: &str = "empty";

/// `bpfnet debug program-cost --json`, as it prints it.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ProgramCost {
    pub schema: String,
    pub method: String,
    pub runs_per_path: u32,
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

/// Runs the command (bounded in time) and reads its report.
pub fn measure(bpfnet: &Path) -> Result<ProgramCost> {
    let mut cmd = Command::new(bpfnet);
    cmd.args(["debug", "program-cost", "--json"])
        .args(["--runs", &RUNS.to_string()])
        .args(["--max-secs-per-path", &MAX_SECS_PER_PATH.to_string()]);
    let json = command::output_bounded(&mut cmd, LIMIT)?;
    parse(&json)
}

pub fn parse(json: &str) -> Result<ProgramCost> {
    let report: ProgramCost = serde_json::from_str(json)
        .context("`bpfnet debug program-cost --json` did not print its report")?;
    ensure!(
        report.schema == SCHEMA,
        "program-cost report schema {:?}, this bench reads {SCHEMA:?}: rebuild bpfnet and xtask \
         from the same commit",
        report.schema
    );
    ensure!(
        !report.paths.is_empty(),
        "the program-cost report has no paths"
    );
    Ok(report)
}

impl ProgramCost {
    /// Median of the timer-only path, if measured.
    pub fn empty_median_ns(&self) -> Option<u64> {
        self.paths
            .iter()
            .find(|p| p.path == EMPTY)
            .map(|p| p.median_ns)
    }

    /// The terminal table; `~net` is the median minus the empty program's (the timer's share).
    pub fn table(&self) -> String {
        let empty = self.empty_median_ns();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "per-program cost (BPF_PROG_TEST_RUN, ns/packet): {} runs per path, one run per call, \
             kernel-timed; the programs alone (no veth, stack or syscall)",
            self.runs_per_path
        );
        let _ = writeln!(
            out,
            "{:<16} {:<4} {:<20} {:<16} {:>8} {:>8} {:>8} {:>7}",
            "program", "type", "path", "verdict", "median", "p90", "~net", "runs"
        );
        for p in &self.paths {
            let net = match empty {
                Some(empty) if p.path != EMPTY => p.median_ns.saturating_sub(empty).to_string(),
                _ => "-".to_string(),
            };
            let _ = writeln!(
                out,
                "{:<16} {:<4} {:<20} {:<16} {:>8} {:>8} {:>8} {:>7}",
                p.program, p.program_type, p.path, p.verdict, p.median_ns, p.p90_ns, net, p.runs
            );
        }
        let _ = writeln!(
            out,
            "~net: median minus the empty program's median (what the kernel's timer adds to every run)."
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = r#"{
      "schema": "bpfnet-program-cost/1",
      "method": "BPF_PROG_TEST_RUN, one run per call",
      "runs_per_path": 20000, "max_secs_per_path": 5, "kernel": "6.18.44",
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
        let table = report.table();
        assert!(
            table.starts_with("per-program cost (BPF_PROG_TEST_RUN, ns/packet)"),
            "{table}"
        );
        let c2c = table.lines().find(|l| l.contains("c2c-forward")).unwrap();
        assert!(
            c2c.contains(" 251 ") && c2c.contains(" 341 ") && c2c.contains(" 151 "),
            "{c2c}"
        );
        // Below the timer's median: no negative figure.
        let xdp = table
            .lines()
            .find(|l| l.contains("from_uplink_xdp"))
            .unwrap();
        assert!(
            xdp.contains("xdp") && xdp.contains(" 0 ") && xdp.ends_with("12000"),
            "{xdp}"
        );
        let empty = table.lines().find(|l| l.starts_with("empty")).unwrap();
        assert!(empty.contains(" - "), "{empty}");
    }

    #[test]
    fn other_schemas_and_garbage_are_refused() {
        let other = REPORT.replace("bpfnet-program-cost/1", "bpfnet-program-cost/9");
        let err = parse(&other).unwrap_err();
        assert!(format!("{err:#}").contains("same commit"), "{err:#}");
        assert!(parse("bpfnet: error: interrupted").is_err());
        let empty = r#"{"schema": "bpfnet-program-cost/1", "method": "", "runs_per_path": 1,
                        "kernel": null, "paths": []}"#;
        assert!(parse(empty).is_err());
    }
}
