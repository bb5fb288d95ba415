//! `bpfnet-devkit program-cost`, the real binary: a JSON report in which every path ran and
//! returned its verdict (with 10,000 other ports published, as the bench's largest N), and
//! nothing left behind. The shipped `bpfnet` has no developer command.
use std::process::Command;

use bpfnet_tests::{bpfnet_bin, devkit_bin};
use serde_json::Value;

#[test]
fn program_cost_reports_every_path_and_leaves_nothing() {
    assert!(nix::unistd::Uid::effective().is_root(), "the integration tests must run as root");
    let help = Command::new(bpfnet_bin()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    assert!(help.lines().any(|l| l.trim_start().starts_with("status")), "{help}");
    assert!(!help.lines().any(|l| l.trim_start().starts_with("debug")), "no developer command: {help}");
    let debug = Command::new(bpfnet_bin()).args(["debug", "program-cost"]).output().unwrap();
    assert!(!debug.status.success(), "bpfnet has no debug command");

    let out = Command::new(devkit_bin())
        .args(["program-cost", "--json", "--runs", "200", "--other-ports", "10000"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    assert_eq!(report["schema"], "bpfnet-program-cost/2");
    assert_eq!(report["other_ports"], 10000);
    let paths = report["paths"].as_array().unwrap();
    let verdict = |path: &str, program: &str| {
        let p = paths
            .iter()
            .find(|p| p["path"] == path && p["program"] == program)
            .unwrap_or_else(|| panic!("no {program} {path} in {paths:#?}"));
        p["verdict"].as_str().unwrap().to_owned()
    };
    assert_eq!(verdict("c2c-forward", "from_endpoint"), "TC_ACT_REDIRECT");
    assert_eq!(verdict("spoofed-drop", "from_endpoint"), "TC_ACT_SHOT");
    assert_eq!(verdict("snat-reply", "from_uplink"), "TC_ACT_REDIRECT");
    assert_eq!(verdict("not-ours-to-host", "from_uplink"), "TC_ACT_OK");
    assert!(paths.len() >= 15, "{} paths", paths.len());
    for p in paths {
        assert_eq!(p["runs"], 200, "{p}");
        let (median, p90) = (p["median_ns"].as_u64().unwrap(), p["p90_ns"].as_u64().unwrap());
        assert!(median > 0 && median <= p90 && p90 < 1_000_000, "{p}");
    }
    let netns = report["netns"].as_str().unwrap();
    assert!(!std::path::Path::new("/run/netns").join(netns).exists(), "{netns} left behind");
    let bpffs = report["bpffs"].as_str().unwrap();
    assert!(!std::path::Path::new(bpffs).exists(), "{bpffs} left behind");

    let out = Command::new(devkit_bin()).args(["program-cost", "--other-ports", "70000"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--other-ports"), "{err}");
}
