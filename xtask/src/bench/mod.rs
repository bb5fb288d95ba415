//! `cargo xtask bench [--quick] [--out DIR]`: bpfnet against Docker's bridge+iptables path
//! and against the bare veth floor, on identical sandbox topologies, in one run.
//!
//! - [`topology`]: the three datapaths' namespaces and which scenario each supports;
//! - [`docker_rules`]: the iptables rule shapes Docker installs, with their source;
//! - [`workload`]: iperf3 and our own [`loadgen`] between two namespaces, pinned to CPUs;
//! - [`pinned_map`]: bpfnet's map update alone, for the control-plane cost;
//! - [`api_request`]: bpfnet's publish through its API alone (no CLI process), likewise;
//! - [`program_cost`]: each eBPF program's own ns per packet (`bpfnet-devkit program-cost`);
//! - [`profile`]: with `--perf`, where a packet's time goes (perf samples by part of the path);
//! - [`cni`]: with `--cni N`, CNI ADD and DEL of bpfnet-cni against bridge+portmap instead (cni.json);
//! - [`docker`]: with `--docker`, real dockerds on their own bridge and on bpfnet's driver instead (docker.json);
//! - [`scale`]: with `--scale N`, the control plane at N containers instead (scale.json);
//! - [`report`]: summaries and ratios, the table, results.json (schema there) and chart.svg.
//!
//! Method: for each N (other published ports), each repetition, scenario and workload, the
//! datapaths run back to back (A/B/C, then C/B/A in the next repetition, so neither goes
//! first every time); figures are medians over the repetitions with their spread, and every
//! one is also a ratio to the floor and to bridge+iptables measured in this same run.

mod api_request;
mod cni;
mod docker;
mod docker_rules;
pub mod loadgen;
mod profile;
mod program_cost;
mod report;
mod scale;
mod stats;
mod topology;
mod workload;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use bpfnet_tests::sandbox::{Output, Sandbox};
use serde_json::json;

use self::report::{Collected, Key};
use self::topology::{Datapath, Scenario, Support, Topologies, MEASURED_PORTS};
use self::workload::{Durations, Metric, Pinning, Runner, Workload};
use crate::cargo_cmd::{self, Profile};
use crate::interrupt;
use crate::{command, setup};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// About a minute: one repetition, short runs, N=1 only (what `cargo xtask demo` uses).
    #[arg(long)]
    quick: bool,
    /// Where results.json, chart.svg and table.txt go [default: bench-results/<UTC time>/
    /// in the workspace].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Run this bpfnet binary instead of building one (release profile). The load generator
    /// is always this xtask's release build.
    #[arg(long, value_name = "PATH")]
    bpfnet: Option<PathBuf>,
    /// Also profile one 64-byte UDP run (c2c) per datapath with `perf record` on the client's
    /// and server's CPUs, and write where the time goes to perf-<datapath>.txt (about 10 s more).
    #[arg(long)]
    perf: bool,
    /// Instead of the traffic benchmark: the control plane at host scale, N containers each
    /// publishing a port, created and removed through the API (latency of the first and last
    /// hundred, status / container ls / metrics scrape time at N, agent memory); scale.json.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(100..=4000))]
    scale: Option<u32>,
    /// Instead of the traffic benchmark: CNI ADD and DEL latency through the plugin
    /// processes, bpfnet-cni against the reference bridge + host-local + portmap chain, for N
    /// pods each publishing a port (p50, p99 at 1 and at N pods attached); cni.json.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(50..=2000))]
    cni: Option<u32>,
    /// Instead of the traffic benchmark: the same docker commands against a real dockerd on its
    /// own bridge driver (iptables, docker-proxy) and on bpfnet's driver: `docker run -p` to
    /// first answer at 1, 50 and 200 containers, container-to-container UDP rate, published
    /// port connection rate; docker.json.
    #[arg(long, conflicts_with_all = ["cni", "scale"])]
    docker: bool,
}

impl BenchArgs {
    /// `--quick`, results in the default folder (what `cargo xtask demo` runs).
    pub fn quick(bpfnet: Option<PathBuf>) -> BenchArgs {
        BenchArgs { quick: true, out: None, bpfnet, perf: false, scale: None, cni: None, docker: false }
    }
}

/// What a run does; fixed by --quick.
#[derive(Debug)]
struct Plan {
    quick: bool,
    perf: bool,
    repetitions: u32,
    durations: Durations,
    /// The N values: published ports of another container ahead of the measured ones.
    other_ports: Vec<u32>,
}

impl Plan {
    fn new(quick: bool, perf: bool) -> Plan {
        if quick {
            Plan {
                quick,
                perf,
                repetitions: 1,
                durations: Durations { stream_secs: 2, short_secs: 1.5 },
                other_ports: vec![1],
            }
        } else {
            Plan {
                quick,
                perf,
                repetitions: 3,
                durations: Durations { stream_secs: 4, short_secs: 2.5 },
                other_ports: vec![1, 100, 1_000, 10_000],
            }
        }
    }
}

pub fn run(args: BenchArgs) -> Result<()> {
    let started = unix_now();
    section("setup");
    setup::run()?;
    let bpfnet_bin = match &args.bpfnet {
        Some(bin) => fs::canonicalize(bin).with_context(|| format!("--bpfnet {}: no such file", bin.display()))?,
        None => {
            section("build bpfnet (release)");
            cargo_cmd::build(Profile::Release, &["bpfnet"])?;
            cargo_cmd::bpfnet_bin(Profile::Release)?
        }
    };
    let out_for = |what: &str| -> Result<PathBuf> {
        let out = match args.out.clone() {
            Some(dir) => dir,
            None => {
                let stamp = report::utc_stamp(started);
                cargo_cmd::workspace_root().join("bench-results").join(format!("{what}-{stamp}"))
            }
        };
        fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
        Ok(out)
    };
    if let Some(pods) = args.cni {
        let out = out_for("cni")?;
        // The plugin next to the agent's binary: `--bpfnet` names a build that has both.
        let cni_bin = bpfnet_bin.with_file_name("bpfnet-cni");
        interrupt::catch_interrupts()?;
        section(&format!("CNI ADD and DEL, {pods} pods"));
        cni::run(&bpfnet_bin, &cni_bin, pods as usize, &out)?;
        println!("==> {}", out.join("cni.json").display());
        return Ok(());
    }
    if args.docker {
        let out = out_for("docker")?;
        section("build the load generator (xtask, release)");
        cargo_cmd::build(Profile::Release, &["xtask"])?;
        let loadgen_bin = cargo_cmd::xtask_bin(Profile::Release)?;
        interrupt::catch_interrupts()?;
        docker::run(&bpfnet_bin, &loadgen_bin, args.quick, &out)?;
        println!("==> {}", out.join("docker.json").display());
        return Ok(());
    }
    if let Some(containers) = args.scale {
        let out = out_for("scale")?;
        interrupt::catch_interrupts()?;
        section(&format!("control plane at {containers} containers"));
        scale::run(&bpfnet_bin, containers as usize, &out)?;
        println!("==> {}", out.join("scale.json").display());
        return Ok(());
    }
    // A debug build of the load generator is itself the bottleneck of the 64-byte UDP rate.
    section("build the load generator (xtask, release)");
    cargo_cmd::build(Profile::Release, &["xtask"])?;
    let loadgen_bin = cargo_cmd::xtask_bin(Profile::Release)?;
    // The developer tools: per-program cost, and the timing of bpfnet's map updates.
    section("build bpfnet-devkit (release)");
    let devkit_bin = cargo_cmd::build_devkit(Profile::Release)?;
    let out = match args.out.clone() {
        Some(dir) => dir,
        None => cargo_cmd::workspace_root().join("bench-results").join(report::utc_stamp(started)),
    };
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let plan = Plan::new(args.quick, args.perf);
    let pinning = Pinning::for_this_machine();

    interrupt::catch_interrupts()?;
    section("sandbox");
    let mut sandbox = Sandbox::create("bnb", bpfnet_bin.clone(), Output::Terminal)?;
    // A copy of the release xtask for `loadgen`: a rebuild during the run cannot swap it.
    let loadgen = sandbox.write_scratch("loadgen", "")?;
    fs::copy(&loadgen_bin, &loadgen)
        .with_context(|| format!("copying {} to {}", loadgen_bin.display(), loadgen.display()))?;

    let mut topologies = Topologies::new(&sandbox, devkit_bin.clone());
    let outcome = measure(&mut sandbox, &mut topologies, &plan, pinning, &loadgen, &out);
    section("teardown");
    let removed = topologies.remove();
    let teardown = sandbox.teardown();
    let (collected, profiles) = match (outcome, removed, teardown) {
        (Ok(measured), Ok(()), Ok(())) => measured,
        (outcome, removed, teardown) => {
            for err in [removed.err(), teardown.err()].into_iter().flatten() {
                eprintln!("error: {err:#}");
            }
            return Err(outcome
                .err()
                .unwrap_or_else(|| anyhow::anyhow!("the run finished, but its cleanup failed"))
                .context("bench failed (the sandbox was cleaned up)"));
        }
    };
    section("per-program cost (BPF_PROG_TEST_RUN, bpfnet-devkit program-cost)");
    // At the smallest and the largest N: a path's cost must not depend on N.
    let mut cost_ns: Vec<u32> = vec![plan.other_ports[0], *plan.other_ports.iter().max().expect("at least one N")];
    cost_ns.dedup();
    let program_cost = program_cost::measure(&devkit_bin, &cost_ns, plan.repetitions);
    write_results(&out, &plan, pinning, started, &collected, &program_cost, &profiles)
}

fn measure(
    sandbox: &mut Sandbox,
    topologies: &mut Topologies,
    plan: &Plan,
    pinning: Pinning,
    loadgen: &Path,
    out: &Path,
) -> Result<(Collected, Vec<serde_json::Value>)> {
    section("topologies: floor, bridge+iptables (Docker's rules), bpfnet (tc and XDP uplink)");
    topologies.create(sandbox)?;
    let runner = Runner { loadgen, pinning, durations: plan.durations };
    match (pinning.client_cpu, pinning.server_cpu) {
        (Some(c), Some(s)) => println!("clients run on CPU {c}, servers on CPU {s} (taskset)"),
        _ => println!("one CPU: clients and servers are not pinned"),
    }

    let first_n = plan.other_ports[0];
    let total = count_runs(topologies, plan);
    let mut done = 0;
    let mut collected = Collected::default();
    for &n in &plan.other_ports {
        section(&format!("N = {n} other published ports (+{} measured)", MEASURED_PORTS.len()));
        topologies.set_other_ports(sandbox, n)?;
        for rep in 0..plan.repetitions {
            let order = datapath_order(rep);
            for scenario in Scenario::ALL {
                for workload in Workload::ALL {
                    for &datapath in &order {
                        let ends = match topologies.endpoints(datapath, scenario, n == first_n) {
                            Support::Yes(ends) => ends,
                            Support::NotApplicable => continue,
                        };
                        interrupt::check_interrupted()?;
                        topologies.prepare(sandbox, datapath)?;
                        done += 1;
                        let what = format!(
                            "[{done:>3}/{total}] N={n} rep {}/{} {} {} {}",
                            rep + 1,
                            plan.repetitions,
                            scenario.name(),
                            workload.name(),
                            datapath.name()
                        );
                        match runner.run(sandbox, &ends, workload) {
                            Ok(figures) => {
                                let shown: Vec<String> = figures
                                    .iter()
                                    .map(|(m, v)| format!("{} {}", m.label(), report::figure(*v)))
                                    .collect();
                                progress(&format!("{what}: {}", shown.join(", ")));
                                for (metric, value) in figures {
                                    collected.sample(key(scenario.name(), n, metric, datapath), value);
                                }
                            }
                            Err(err) => {
                                interrupt::check_interrupted()?;
                                progress(&format!("{what}: FAILED: {err:#}"));
                                for metric in metrics(workload) {
                                    collected.fail(key(scenario.name(), n, metric, datapath), format!("{err:#}"));
                                }
                            }
                        }
                    }
                }
            }
            for &datapath in &order {
                interrupt::check_interrupted()?;
                match topologies.publish_one_more(sandbox, datapath) {
                    Ok(Support::Yes(figures)) => {
                        let shown: Vec<String> =
                            figures.iter().map(|(m, v)| format!("{} {}", m.label(), report::figure(*v))).collect();
                        progress(&format!(
                            "N={n} rep {} publish one more port on {}: {}",
                            rep + 1,
                            datapath.name(),
                            shown.join(", ")
                        ));
                        for (metric, value) in figures {
                            collected.sample(key("control-plane", n, metric, datapath), value);
                        }
                    }
                    Ok(Support::NotApplicable) => {}
                    Err(err) => {
                        interrupt::check_interrupted()?;
                        collected.fail(key("control-plane", n, Metric::PublishMs, datapath), format!("{err:#}"));
                    }
                }
            }
        }
    }
    let profiles = if plan.perf {
        section(&format!("perf: where a 64-byte UDP packet's time goes (c2c, N = {first_n})"));
        if plan.other_ports.last() != Some(&first_n) {
            topologies.set_other_ports(sandbox, first_n)?;
        }
        profile_udp(sandbox, topologies, &runner, plan, out)?
    } else {
        Vec::new()
    };
    Ok((collected, profiles))
}

/// One `perf record` of a UDP run per datapath (c2c, at the first N), each
/// summarised into `perf-<datapath>.txt` in `out`. A failed profile is reported, not fatal.
fn profile_udp(
    sandbox: &mut Sandbox,
    topologies: &Topologies,
    runner: &Runner,
    plan: &Plan,
    out: &Path,
) -> Result<Vec<serde_json::Value>> {
    let cpus = match (runner.pinning.client_cpu, runner.pinning.server_cpu) {
        (Some(c), Some(s)) => Some(format!("{c},{s}")),
        _ => None,
    };
    let mut profiles = Vec::new();
    for datapath in Datapath::ALL {
        let Support::Yes(ends) = topologies.endpoints(datapath, Scenario::ContainerToContainer, true) else {
            continue;
        };
        interrupt::check_interrupted()?;
        topologies.prepare(sandbox, datapath)?;
        let file = format!("perf-{}.txt", datapath.name());
        let data = out.join(format!("perf-{}.data", datapath.name()));
        let title = format!(
            "perf record -F 999 on CPUs {} during a {} s 64-byte UDP run, c2c, {}",
            cpus.as_deref().unwrap_or("all"),
            plan.durations.short_secs,
            datapath.name()
        );
        let profiled =
            profile::Recording::start(&data, cpus.as_deref(), plan.durations.short_secs).and_then(|recording| {
                let run = runner.run(sandbox, &ends, Workload::UdpRate);
                let lines = recording.finish();
                let figures = run?;
                Ok((figures, lines?))
            });
        match profiled {
            Ok((figures, lines)) => {
                let mpps = figures.first().map_or(0.0, |(_, v)| *v);
                let text = profile::summary(&lines, &format!("{title}: {mpps:.3} Mpps received"));
                fs::write(out.join(&file), &text).with_context(|| format!("writing {}", out.join(&file).display()))?;
                progress(&format!("perf {}: {}", datapath.name(), out.join(&file).display()));
                print!("{text}");
                profiles.push(json!({ "datapath": datapath.name(), "scenario": "c2c", "file": file, "error": null }));
            }
            Err(err) => {
                interrupt::check_interrupted()?;
                progress(&format!("perf {}: FAILED: {err:#}", datapath.name()));
                profiles.push(json!({ "datapath": datapath.name(), "scenario": "c2c", "file": null, "error": format!("{err:#}") }));
            }
        }
    }
    Ok(profiles)
}

/// A → B → C → D in even repetitions, D → C → B → A in odd ones.
fn datapath_order(rep: u32) -> Vec<Datapath> {
    let mut order = Datapath::ALL.to_vec();
    if rep % 2 == 1 {
        order.reverse();
    }
    order
}

fn metrics(workload: Workload) -> Vec<Metric> {
    match workload {
        Workload::TcpStream => vec![Metric::TcpGbps],
        Workload::UdpRate => vec![Metric::UdpPps],
        Workload::TcpRr => vec![Metric::RrP50Us, Metric::RrP99Us],
        Workload::TcpCrr => vec![Metric::CrrPerSec],
    }
}

fn key(scenario: &'static str, other_ports: u32, metric: Metric, datapath: Datapath) -> Key {
    Key { scenario, other_ports, metric, datapath }
}

/// The measurements the plan makes (for the progress counter).
fn count_runs(topologies: &Topologies, plan: &Plan) -> usize {
    let mut runs = 0;
    for &n in &plan.other_ports {
        for scenario in Scenario::ALL {
            for datapath in Datapath::ALL {
                if let Support::Yes(_) = topologies.endpoints(datapath, scenario, n == plan.other_ports[0]) {
                    runs += Workload::ALL.len();
                }
            }
        }
    }
    runs * plan.repetitions as usize
}

fn write_results(
    out: &Path,
    plan: &Plan,
    pinning: Pinning,
    started: u64,
    collected: &Collected,
    program_cost: &Result<Vec<program_cost::ProgramCost>>,
    profiles: &[serde_json::Value],
) -> Result<()> {
    let rows = report::rows(collected, plan.other_ports[0]);
    let table = report::table(&rows);
    let (cost_table, cost_json) = match program_cost {
        Ok(runs) => {
            let combined = program_cost::combine(runs);
            (
                program_cost::table(&combined),
                json!({
                    "status": "measured",
                    "error": null,
                    "empty_median_ns": combined.first().and_then(|c| c.empty_median_ns()),
                    "combined": combined,
                    "reports": runs,
                }),
            )
        }
        Err(err) => (
            format!("per-program cost (BPF_PROG_TEST_RUN, ns/packet): FAILED: {err:#}\n"),
            json!({ "status": "failed", "error": format!("{err:#}"), "combined": [], "reports": [] }),
        ),
    };
    let table = format!("{table}\n{cost_table}");
    let command_line = format!(
        "cargo xtask bench{}{}",
        if plan.quick { " --quick" } else { "" },
        if plan.perf { " --perf" } else { "" }
    );
    let pinned = match (pinning.client_cpu, pinning.server_cpu) {
        (Some(c), Some(s)) => format!("client on CPU {c}, server on CPU {s} (taskset)"),
        _ => "not pinned (one CPU)".to_string(),
    };
    let header = format!(
        "{command_line}: {} repetition(s), iperf3 {} s, udp/rr/crr {} s each; {pinned}.\n\
         N = published ports of another container ahead of the 3 measured ones in every Docker chain.\n\
         UDP: 64-byte frames (18-byte payload), datagrams received per second.\n\
         x floor / x bridge: median / the floor's c2c median / bridge+iptables's median (same scenario and N), same run.\n\
         Above 1 is better for rates, worse for latencies and times.\n",
        plan.repetitions, plan.durations.stream_secs, plan.durations.short_secs
    );
    section("results");
    println!("{header}\n{table}");

    let results = json!({
        "schema": report::SCHEMA,
        "command": command_line,
        "started_unix": started,
        "finished_unix": unix_now(),
        "host": host_info(),
        "settings": {
            "quick": plan.quick,
            "repetitions": plan.repetitions,
            "durations": plan.durations,
            "other_published_ports": plan.other_ports,
            "measured_published_ports": MEASURED_PORTS.iter().map(|(p, port)| format!("{}/{port}", p.as_str())).collect::<Vec<_>>(),
            "pinning": pinning,
            "udp_payload_bytes": loadgen::UDP_PAYLOAD_64B_FRAME,
            "udp_frame_bytes_with_fcs": 64,
            "order": "per N, repetition, scenario and workload the datapaths run back to back: floor, bridge, bpfnet, bpfnet-xdp; reversed in odd repetitions",
        },
        "rows": rows,
        "program_cost": cost_json,
        "perf_profiles": profiles,
    });
    let files = [
        ("results.json", serde_json::to_string_pretty(&results)? + "\n"),
        ("table.txt", format!("{header}\n{table}")),
        ("chart.svg", report::chart_svg(&rows, &format!("{command_line}: bpfnet vs bridge+iptables vs floor"))),
        ("docker-rules-n1.iptables", Topologies::docker_rules_text(1)),
    ];
    for (name, text) in files {
        let path = out.join(name);
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let perf_files: Vec<&str> = profiles.iter().filter_map(|p| p["file"].as_str()).collect();
    println!(
        "\nresults in {}: results.json, table.txt, chart.svg, docker-rules-n1.iptables{}{}",
        out.display(),
        if perf_files.is_empty() { "" } else { ", " },
        perf_files.join(", ")
    );
    let failed = rows.iter().filter(|r| r.status == "failed" || (r.status == "measured" && r.note.is_some())).count();
    if let Err(err) = program_cost {
        bail!("the per-program cost was not measured: {err:#}");
    }
    if failed > 0 {
        bail!("{failed} figure(s) had failed repetitions: see the notes in {}", out.join("results.json").display());
    }
    Ok(())
}

fn host_info() -> serde_json::Value {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).ok();
    let iptables = command::output_bounded(Command::new("iptables").arg("-V"), Duration::from_secs(10))
        .map(|s| s.trim().to_string())
        .ok();
    json!({
        "kernel": kernel,
        "cpus": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "iptables": iptables,
    })
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn section(title: &str) {
    println!("\n==> {title}");
}

fn progress(line: &str) {
    println!("==> {line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetitions_alternate_the_order() {
        use Datapath::*;
        assert_eq!(datapath_order(0), [Floor, Bridge, Bpfnet, BpfnetXdp]);
        assert_eq!(datapath_order(1), [BpfnetXdp, Bpfnet, Bridge, Floor]);
    }

    #[test]
    fn plans() {
        let quick = Plan::new(true, false);
        assert_eq!((quick.repetitions, quick.other_ports.as_slice()), (1, &[1][..]));
        let full = Plan::new(false, true);
        assert!(full.perf && !quick.perf);
        assert_eq!(full.other_ports, [1, 100, 1_000, 10_000]);
        assert!(full.repetitions >= 3);
    }
}
