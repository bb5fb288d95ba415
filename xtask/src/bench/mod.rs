//! `cargo xtask bench [--quick] [--out DIR]`: bpfnet against Docker's bridge+iptables path
//! and against the bare veth floor, on identical sandbox topologies, in one run.
//!
//! - [`topology`]: the datapaths' namespaces and which scenario (and address family) each
//!   supports;
//! - [`docker_rules`]: the iptables rule shapes Docker installs, with their source;
//! - [`docker_nft_rules`]: the rules of Docker 29's own nftables backend, with their source;
//! - [`nft_rules`]: the same topology's rules as one nftables table with maps (the strongest
//!   netfilter peer: flat in N);
//! - [`workload`]: iperf3 and our own [`loadgen`] between two namespaces, pinned to CPUs;
//! - [`pinned_map`]: bpfnet's map update alone, for the control-plane cost;
//! - [`api_request`]: bpfnet's publish through its API alone (no CLI process), likewise;
//! - [`program_cost`]: each eBPF program's own ns per packet (`bpfnet-devkit program-cost`);
//! - [`profile`]: with `--perf`, where a packet's time goes (perf samples by part of the path);
//! - [`cni`]: with `--cni N`, CNI ADD and DEL of bpfnet-cni against bridge+portmap instead (cni.json);
//! - [`docker`]: with `--docker`, real dockerds on their own bridge and on bpfnet's driver instead (docker.json);
//! - [`scale`]: with `--scale N`, the control plane at N containers instead (scale.json);
//! - [`report`]: summaries, intervals, ratios, the targets, the table, results.json (schema
//!   there); [`charts`]: headline.svg and ratios.svg;
//! - [`stats`]: medians, percentiles and bootstrap intervals.
//!
//! Method: for each N (other published ports), each repetition, scenario and workload, the
//! datapaths run back to back (A/B/C/D, then D/C/B/A in the next repetition, so none goes
//! first every time). Every workload runs a fixed number of repetitions at the first and the
//! last N (at the N between, only the headline workloads: the packet and connection rates);
//! then the headline workloads continue, repetition by repetition, to a minimum (at the first
//! and last N whatever the budget) and then while some headline figure's 95 % interval is
//! wider than +-5 % of its median, until that N's share of the time budget ends (half of it
//! for the first N, where the targets are). Figures are medians with a 95 % bootstrap interval, and
//! bpfnet's are also ratios (with intervals) to every reference datapath of the same run.
//!
//! IPv6 (issue #15): the same loop runs each scenario over each address family of the plan;
//! over IPv6 only the 64-byte UDP rate of c2c and SNAT, on the floor, the bridge (Docker's
//! ip6tables rules) and bpfnet ([`topology::Topologies::endpoints`]). Same repetitions,
//! order, intervals and ratios; a figure is compared only with its own family's.

mod api_request;
mod charts;
mod cni;
mod docker;
mod docker_nft_rules;
mod docker_rules;
pub mod loadgen;
mod nft_rules;
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
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use bpfnet_tests::sandbox::{Output, Sandbox};
use serde_json::json;

use self::report::{Collected, Key};
use self::topology::{Datapath, Family, Scenario, Support, Topologies, MEASURED_PORTS};
use self::workload::{Durations, Metric, Pinning, Runner, Workload};
use crate::cargo_cmd::{self, Profile};
use crate::interrupt;
use crate::{command, setup};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// About a minute: one repetition, short runs, N=1 only (what `cargo xtask demo` uses).
    #[arg(long)]
    quick: bool,
    /// Only the IPv6 rows (c2c and SNAT 64-byte UDP rate on the floor, bridge+ip6tables and
    /// bpfnet), at N=1, with the full run's repetitions: a few minutes. No per-program cost
    /// and no control plane.
    #[arg(long, conflicts_with_all = ["cni", "scale", "control_plane", "docker", "perf"])]
    ipv6_only: bool,
    /// Where results.json, table.txt, headline.svg and ratios.svg go [default: bench-results/<UTC time>/
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
    #[arg(long, conflicts_with_all = ["cni", "scale", "control_plane"])]
    docker: bool,
    /// Instead of the traffic benchmark: only the control-plane section of the full run
    /// (`--scale 1000` and `--cni 200`, about 4 minutes), into one report.
    #[arg(long)]
    control_plane: bool,
    /// Time for the traffic measurements, in minutes: repetitions beyond the minimum stop
    /// when it ends [default: 28 for the full run (about 40 minutes in all on 2 vCPUs),
    /// 1.5 with --quick, 3 with --ipv6-only].
    #[arg(long, value_name = "M", value_parser = positive_minutes)]
    budget_minutes: Option<f64>,
}

fn positive_minutes(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(m) if m > 0.0 && m.is_finite() => Ok(m),
        _ => Err(format!("{text:?} is not a positive number of minutes (e.g. 30 or 1.5)")),
    }
}

impl BenchArgs {
    /// `--quick`, results in the default folder (what `cargo xtask demo` runs).
    pub fn quick(bpfnet: Option<PathBuf>) -> BenchArgs {
        BenchArgs {
            quick: true,
            ipv6_only: false,
            out: None,
            bpfnet,
            perf: false,
            scale: None,
            cni: None,
            docker: false,
            control_plane: false,
            budget_minutes: None,
        }
    }
}

/// Containers of the control-plane section of the full run (`--scale`).
const CONTROL_PLANE_CONTAINERS: u32 = 1_000;
/// Pods of its CNI comparison: the bridge chain's ADD grows with every pod (about 0.4 s at
/// 500), so 1,000 would take a quarter of an hour; 200 take about 3 minutes.
const CONTROL_PLANE_PODS: u32 = 200;

/// What a run does; fixed by --quick and --budget-minutes.
#[derive(Debug)]
struct Plan {
    quick: bool,
    perf: bool,
    /// Repetitions of every workload at the first and the last N, whatever the budget.
    repetitions: u32,
    /// Repetitions of the headline workloads (packet and connection rates) before their
    /// intervals can end them: whatever the budget at the first and the last N (the targets
    /// need 5 a side to decide), budget permitting between them.
    min_headline_repetitions: u32,
    /// No more repetitions than this, tight or not.
    max_repetitions: u32,
    /// The traffic measurements' time, shared out over the N values.
    budget: Duration,
    durations: Durations,
    /// The N values: published ports of another container ahead of the measured ones.
    other_ports: Vec<u32>,
    /// The control plane at host scale (full run only).
    control_plane: bool,
    /// The address families of the traffic rows (IPv6's rows are fewer, see
    /// [`Topologies::endpoints`]).
    families: Vec<Family>,
}

impl Plan {
    /// The share of the budget spent when the `i`-th N is done: the first N, where the targets
    /// are, gets half of it; the others share the rest. Time an N leaves goes to the next.
    fn budget_share_until(&self, i: usize) -> f64 {
        let rest = self.other_ports.len().saturating_sub(1);
        if rest == 0 {
            return 1.0;
        }
        0.5 + 0.5 * i as f64 / rest as f64
    }

    fn new(quick: bool, perf: bool, ipv6_only: bool, budget_minutes: Option<f64>) -> Plan {
        let budget = |default: f64| Duration::from_secs_f64(budget_minutes.unwrap_or(default) * 60.0);
        let plan = Plan::both_families(quick, perf, budget_minutes);
        if !ipv6_only {
            return plan;
        }
        // The IPv6 rows alone, at the first N, where the ratios are read; as many repetitions
        // as the full run (or as --quick) gives them.
        Plan {
            budget: if quick { plan.budget } else { budget(3.0) },
            other_ports: vec![plan.other_ports[0]],
            control_plane: false,
            families: vec![Family::V6],
            ..plan
        }
    }

    /// The plan of a run with both families' rows.
    fn both_families(quick: bool, perf: bool, budget_minutes: Option<f64>) -> Plan {
        let budget = |default: f64| Duration::from_secs_f64(budget_minutes.unwrap_or(default) * 60.0);
        if quick {
            Plan {
                quick,
                perf,
                repetitions: 1,
                min_headline_repetitions: 1,
                max_repetitions: 2,
                budget: budget(1.5),
                durations: Durations { stream_secs: 2, short_secs: 1.5 },
                other_ports: vec![1],
                control_plane: false,
                families: Family::ALL.to_vec(),
            }
        } else {
            Plan {
                quick,
                perf,
                repetitions: 3,
                min_headline_repetitions: 5,
                max_repetitions: 30,
                budget: budget(28.0),
                durations: Durations { stream_secs: 4, short_secs: 2.5 },
                other_ports: vec![1, 100, 1_000, 10_000],
                control_plane: true,
                families: Family::ALL.to_vec(),
            }
        }
    }
}

/// The packet and connection rates: the workloads whose repetitions continue adaptively.
fn is_headline_workload(workload: Workload) -> bool {
    metrics(workload).into_iter().any(report::is_headline)
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
    if args.control_plane {
        let out = out_for("control-plane")?;
        interrupt::catch_interrupts()?;
        let figures = control_plane(&bpfnet_bin, &out);
        let path = out.join("control-plane.json");
        fs::write(&path, serde_json::to_string_pretty(&figures.json)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        // Each part printed its table as it ended.
        println!("==> {}", path.display());
        return figures.result;
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
    let plan = Plan::new(args.quick, args.perf, args.ipv6_only, args.budget_minutes);
    let pinning = Pinning::for_this_machine();

    interrupt::catch_interrupts()?;
    section("sandbox");
    let mut sandbox = Sandbox::create("bnb", bpfnet_bin.clone(), Output::Terminal)?;
    // A copy of the release xtask for `loadgen`: a rebuild during the run cannot swap it.
    let loadgen = sandbox.write_scratch("loadgen", "")?;
    fs::copy(&loadgen_bin, &loadgen)
        .with_context(|| format!("copying {} to {}", loadgen_bin.display(), loadgen.display()))?;

    let mut topologies = Topologies::new(&sandbox, devkit_bin.clone(), plan.families.contains(&Family::V6));
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
    // The programs' IPv4 paths: not part of the IPv6 rows alone.
    let program_cost = plan.families.contains(&Family::V4).then(|| {
        section("per-program cost (BPF_PROG_TEST_RUN, bpfnet-devkit program-cost)");
        // At the smallest and the largest N: a path's cost must not depend on N.
        let mut cost_ns: Vec<u32> = vec![plan.other_ports[0], *plan.other_ports.iter().max().expect("at least one N")];
        cost_ns.dedup();
        program_cost::measure(&devkit_bin, &cost_ns, plan.repetitions)
    });
    let control = plan.control_plane.then(|| control_plane(&bpfnet_bin, &out));
    let measured = Measured { collected, program_cost, profiles, control };
    write_results(&out, &plan, pinning, started, &measured)
}

/// What a run measured, for the report.
struct Measured {
    collected: Collected,
    /// None when the run has no IPv4 rows (`--ipv6-only`).
    program_cost: Option<Result<Vec<program_cost::ProgramCost>>>,
    profiles: Vec<serde_json::Value>,
    control: Option<ControlPlane>,
}

/// The control-plane section: its tables, its JSON, and whether all of it ran.
struct ControlPlane {
    table: String,
    json: serde_json::Value,
    result: Result<()>,
}

/// The control plane at host scale: `--scale` at [`CONTROL_PLANE_CONTAINERS`] and `--cni` at
/// [`CONTROL_PLANE_PODS`], each in sandboxes of its own (they also write scale.json and
/// cni.json to `out`). A failed part is reported and the other still runs.
fn control_plane(bpfnet_bin: &Path, out: &Path) -> ControlPlane {
    let containers = CONTROL_PLANE_CONTAINERS as usize;
    section(&format!("control plane: {containers} containers through the API"));
    let scale = scale::run(bpfnet_bin, containers, out);
    let pods = CONTROL_PLANE_PODS as usize;
    section(&format!("control plane: CNI ADD and DEL, {pods} pods, bpfnet-cni and bridge+portmap"));
    let cni = match interrupt::check_interrupted() {
        Ok(()) => cni::run(bpfnet_bin, &bpfnet_bin.with_file_name("bpfnet-cni"), pods, out),
        Err(err) => Err(err),
    };
    let mut table = String::new();
    let mut errors = Vec::new();
    let mut part = |name: &str, text: Result<String>| match text {
        Ok(text) => table.push_str(&format!("{text}\n")),
        Err(err) => {
            table.push_str(&format!("{name}: FAILED: {err:#}\n\n"));
            errors.push(format!("{name}: {err:#}"));
        }
    };
    part("control plane at scale", scale.as_ref().map(scale::table).map_err(|e| anyhow::anyhow!("{e:#}")));
    part("CNI ADD and DEL", cni.as_ref().map(cni::table).map_err(|e| anyhow::anyhow!("{e:#}")));
    let json = json!({
        "scale": scale.as_ref().ok(),
        "scale_error": scale.as_ref().err().map(|e| format!("{e:#}")),
        "cni": cni.as_ref().ok(),
        "cni_error": cni.as_ref().err().map(|e| format!("{e:#}")),
    });
    let result = if errors.is_empty() { Ok(()) } else { Err(anyhow::anyhow!("{}", errors.join("; "))) };
    ControlPlane { table, json, result }
}

fn measure(
    sandbox: &mut Sandbox,
    topologies: &mut Topologies,
    plan: &Plan,
    pinning: Pinning,
    loadgen: &Path,
    out: &Path,
) -> Result<(Collected, Vec<serde_json::Value>)> {
    section(if plan.families.contains(&Family::V6) {
        "topologies: floor, topology floor, bridge+iptables (Docker's rules), Docker's nftables rules, nftables (maps), bpfnet (tc and XDP uplink); floor, bridge+ip6tables and bpfnet dual stack"
    } else {
        "topologies: floor, topology floor, bridge+iptables (Docker's rules), Docker's nftables rules, nftables (maps), bpfnet (tc and XDP uplink)"
    });
    topologies.create(sandbox)?;
    let runner = Runner { loadgen, pinning, durations: plan.durations };
    match (pinning.client_cpu, pinning.server_cpu) {
        (Some(c), Some(s)) => println!("clients run on CPU {c}, servers on CPU {s} (taskset)"),
        _ => println!("one CPU: clients and servers are not pinned"),
    }

    let first_n = plan.other_ports[0];
    let last_n = *plan.other_ports.last().expect("at least one N");
    let started = Instant::now();
    let mut done = 0;
    let mut collected = Collected::default();
    for (i, &n) in plan.other_ports.iter().enumerate() {
        section(&format!("N = {n} other published ports (+{} measured)", MEASURED_PORTS.len()));
        topologies.set_other_ports(sandbox, n)?;
        // Each N's share of the budget; what an N leaves unused goes to the next ones.
        let deadline = started + plan.budget.mul_f64(plan.budget_share_until(i));
        // Every workload at the first and the last N; between them the headline ones only.
        let every_workload = n == first_n || n == last_n;
        for rep in 0..plan.max_repetitions {
            // Below the minima nothing stops a repetition: every workload `repetitions` times
            // (the headline ones only between the ends), and at the ends, where the targets
            // and the flatness are decided, the headline ones `min_headline_repetitions` times.
            let fixed = rep < plan.repetitions;
            let fixed_headline = fixed || (every_workload && rep < plan.min_headline_repetitions);
            if !fixed_headline && Instant::now() >= deadline {
                progress(&format!("N={n}: the time budget ends the repetitions after {rep}"));
                break;
            }
            let mut planned = Vec::new();
            for &family in &plan.families {
                for scenario in Scenario::ALL {
                    for workload in Workload::ALL {
                        let headline = is_headline_workload(workload);
                        let runs = if fixed {
                            headline || every_workload
                        } else if fixed_headline {
                            headline
                        } else {
                            headline
                                && (rep < plan.min_headline_repetitions
                                    || !all_tight(&collected, scenario, family, workload, n))
                        };
                        if runs {
                            planned.push((scenario, family, workload));
                        }
                    }
                }
            }
            // The targets' figures first, so that a budget ending mid-repetition cuts the others
            // (a stable sort: IPv4's before IPv6's otherwise).
            planned.sort_by_key(|(scenario, family, workload)| !is_target_figure(*scenario, *family, *workload));
            if planned.is_empty() {
                progress(&format!(
                    "N={n}: every headline interval is within +-{}% after {rep} repetitions",
                    report::TIGHT_HALF_WIDTH_PCT
                ));
                break;
            }
            let order = datapath_order(rep);
            for (scenario, family, workload) in planned {
                if !fixed_headline && Instant::now() >= deadline {
                    progress(&format!("N={n}: the time budget ends repetition {}", rep + 1));
                    break;
                }
                for &datapath in &order {
                    if !Topologies::runs(workload, scenario, datapath, family) {
                        continue;
                    }
                    let ends = match topologies.endpoints(datapath, scenario, family, n == first_n) {
                        Support::Yes(ends) => ends,
                        Support::NotApplicable => continue,
                        Support::Unavailable(why) => {
                            // A failed figure, once per repetition, as a failed run would be.
                            for metric in metrics(workload) {
                                collected.fail(key(scenario.name(), family, n, metric, datapath), why.clone());
                            }
                            continue;
                        }
                    };
                    interrupt::check_interrupted()?;
                    topologies.prepare(sandbox, datapath)?;
                    done += 1;
                    let what = format!(
                        "[{done:>4}, {:>4.1}/{:.1} min] N={n} rep {} {}{} {} {}",
                        started.elapsed().as_secs_f64() / 60.0,
                        plan.budget.as_secs_f64() / 60.0,
                        rep + 1,
                        scenario.name(),
                        if family == Family::V6 { " ipv6" } else { "" },
                        workload.name(),
                        datapath.name()
                    );
                    match runner.run(sandbox, &ends, workload) {
                        Ok(figures) => {
                            let shown: Vec<String> =
                                figures.iter().map(|(m, v)| format!("{} {}", m.label(), report::figure(*v))).collect();
                            progress(&format!("{what}: {}", shown.join(", ")));
                            for (metric, value) in figures {
                                collected.sample(key(scenario.name(), family, n, metric, datapath), value);
                            }
                        }
                        Err(err) => {
                            interrupt::check_interrupted()?;
                            progress(&format!("{what}: FAILED: {err:#}"));
                            for metric in metrics(workload) {
                                collected.fail(key(scenario.name(), family, n, metric, datapath), format!("{err:#}"));
                            }
                        }
                    }
                }
            }
            // The control plane's figure is IPv4's (publishing is one call for both families).
            if !fixed || !plan.families.contains(&Family::V4) {
                continue;
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
                            collected.sample(key("control-plane", Family::V4, n, metric, datapath), value);
                        }
                    }
                    Ok(Support::NotApplicable | Support::Unavailable(_)) => {}
                    Err(err) => {
                        interrupt::check_interrupted()?;
                        collected
                            .fail(key("control-plane", Family::V4, n, Metric::PublishMs, datapath), format!("{err:#}"));
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
        let Support::Yes(ends) = topologies.endpoints(datapath, Scenario::ContainerToContainer, Family::V4, true)
        else {
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
        Workload::TcpStreamOffload => vec![Metric::TcpOffloadGbps],
        Workload::UdpRate => vec![Metric::UdpPps, Metric::UdpCpuNsPerPkt],
        Workload::TcpRr => vec![Metric::RrP50Us, Metric::RrP99Us],
        Workload::TcpCrr => vec![Metric::CrrPerSec],
    }
}

fn key(scenario: &'static str, family: Family, other_ports: u32, metric: Metric, datapath: Datapath) -> Key {
    Key { scenario, family, other_ports, metric, datapath }
}

/// Whether a figure of `workload` in `scenario` over `family` is one of issue #18's targets
/// (all of them IPv4's).
fn is_target_figure(scenario: Scenario, family: Family, workload: Workload) -> bool {
    family == Family::V4
        && report::TARGETS.iter().any(|t| t.scenario == scenario.name() && metrics(workload).contains(&t.metric))
}

/// Whether every headline figure of `workload` in `scenario` over `family` at `n` has a
/// tight interval (on every datapath that has samples).
fn all_tight(collected: &Collected, scenario: Scenario, family: Family, workload: Workload, n: u32) -> bool {
    metrics(workload).into_iter().filter(|m| report::is_headline(*m)).all(|metric| {
        Datapath::ALL.into_iter().all(|datapath| {
            collected
                .samples
                .get(&key(scenario.name(), family, n, metric, datapath))
                .is_none_or(|samples| report::is_tight(samples))
        })
    })
}

fn write_results(out: &Path, plan: &Plan, pinning: Pinning, started: u64, measured: &Measured) -> Result<()> {
    let Measured { collected, program_cost, profiles, control } = measured;
    let control = control.as_ref();
    let first_n = plan.other_ports[0];
    let last_n = *plan.other_ports.last().expect("at least one N");
    let rows = report::rows(collected, first_n);
    // Issue #18's targets are IPv4's: a run of the IPv6 rows alone has none to judge.
    let verdicts =
        if plan.families.contains(&Family::V4) { report::verdicts(&rows, first_n, last_n) } else { Vec::new() };
    let targets = if verdicts.is_empty() { String::new() } else { report::verdict_table(&verdicts) };
    let table = report::table(&rows);
    let (cost_table, cost_json) = match program_cost {
        None => (
            "per-program cost (BPF_PROG_TEST_RUN, ns/packet): not measured (IPv6 rows only)\n".to_string(),
            json!({ "status": "not measured", "error": null, "combined": [], "reports": [] }),
        ),
        Some(Ok(runs)) => {
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
        Some(Err(err)) => (
            format!("per-program cost (BPF_PROG_TEST_RUN, ns/packet): FAILED: {err:#}\n"),
            json!({ "status": "failed", "error": format!("{err:#}"), "combined": [], "reports": [] }),
        ),
    };
    let control_table = control.map_or_else(String::new, |c| format!("\n{}", c.table));
    let table = format!("{table}\n{cost_table}{control_table}\n{targets}");
    let ipv6_only = !plan.families.contains(&Family::V4);
    let command_line = format!(
        "cargo xtask bench{}{}{} --budget-minutes {}",
        if plan.quick { " --quick" } else { "" },
        if ipv6_only { " --ipv6-only" } else { "" },
        if plan.perf { " --perf" } else { "" },
        plan.budget.as_secs_f64() / 60.0
    );
    let reps: Vec<usize> = rows.iter().filter(|r| report::is_headline(r.metric)).map(|r| r.n).collect();
    let (fewest, most) = (reps.iter().min().copied().unwrap_or(0), reps.iter().max().copied().unwrap_or(0));
    let pinned = match (pinning.client_cpu, pinning.server_cpu) {
        (Some(c), Some(s)) => format!("client on CPU {c}, server on CPU {s} (taskset)"),
        _ => "not pinned (one CPU)".to_string(),
    };
    let header = format!(
        "{command_line}: {} repetition(s) of every workload (at the first and last N), {fewest} to {most} of the \
         packet and connection rates (more until their 95 % interval is within +-{}% or the budget ends); \
         iperf3 {} s, udp/rr/crr {} s each; {pinned}.\n\
         N = published ports of another container ahead of the 3 measured ones in every Docker chain.\n\
         UDP: 64-byte frames (18-byte payload), datagrams received per second; over IPv6 (\"ipv6\" rows) the \
         smallest frames, 66 bytes (an empty datagram).\n\
         n = repetitions; 95 % interval: percentile bootstrap of the median over the repetitions (fixed seed).\n\
         x<reference>: bpfnet's median / the reference's (same scenario and N; the floor's c2c at the first N), \
         interval from resampling both sides independently.\n\
         x<topology-floor>: over bpfnet's veths and uplink with a program that only redirects (routed, without NAT).\n\
         Above 1 is better for rates, worse for latencies and times.\n",
        plan.repetitions,
        report::TIGHT_HALF_WIDTH_PCT,
        plan.durations.stream_secs,
        plan.durations.short_secs
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
            "min_headline_repetitions": plan.min_headline_repetitions,
            "max_repetitions": plan.max_repetitions,
            "budget_minutes": plan.budget.as_secs_f64() / 60.0,
            "tight_half_width_pct": report::TIGHT_HALF_WIDTH_PCT,
            "bootstrap": { "resamples": stats::RESAMPLES, "seed": stats::SEED, "level": 0.95, "ratio_resampling": "independent" },
            "durations": plan.durations,
            "other_published_ports": plan.other_ports,
            "measured_published_ports": MEASURED_PORTS.iter().map(|(p, port)| format!("{}/{port}", p.as_str())).collect::<Vec<_>>(),
            "pinning": pinning,
            "udp_payload_bytes": loadgen::UDP_PAYLOAD_64B_FRAME,
            "udp_frame_bytes_with_fcs": 64,
            "families": plan.families.iter().map(|f| f.name()).collect::<Vec<_>>(),
            "udp_payload_bytes_ipv6": loadgen::UDP_PAYLOAD_64B_FRAME_V6,
            "udp_frame_bytes_with_fcs_ipv6": 66,
            "order": format!(
                "per N, repetition, scenario and workload the datapaths run back to back: {}; reversed in odd repetitions",
                Datapath::ALL.map(Datapath::name).join(", ")
            ),
        },
        "rows": rows,
        "targets": verdicts,
        "control_plane": control.map(|c| &c.json),
        "program_cost": cost_json,
        "perf_profiles": profiles,
    });
    // The charts are IPv4's (the IPv6 rows are in the table and results.json).
    let v4_rows: Vec<report::Row> = rows.iter().filter(|r| r.family == Family::V4).cloned().collect();
    let mut files = vec![
        ("results.json", serde_json::to_string_pretty(&results)? + "\n"),
        ("table.txt", format!("{header}\n{table}")),
        ("docker-rules-n1.iptables", Topologies::docker_rules_text(1)),
        ("docker-rules-n1.nft", Topologies::docker_nft_rules_text(1)),
        ("nftables-n1.nft", Topologies::nft_rules_text(1)),
    ];
    if !v4_rows.is_empty() {
        files.push((
            "headline.svg",
            charts::headline_svg(&v4_rows, &format!("{command_line}: rates against N"), first_n),
        ));
        files.push((
            "ratios.svg",
            charts::ratios_svg(&v4_rows, &format!("{command_line}: bpfnet over each reference"), first_n),
        ));
    }
    if plan.families.contains(&Family::V6) {
        files.push(("docker-rules-n1.ip6tables", Topologies::docker_rules_text_of(1, Family::V6)));
    }
    for (name, text) in &files {
        let path = out.join(name);
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let written: Vec<&str> =
        files.iter().map(|(name, _)| *name).chain(profiles.iter().filter_map(|p| p["file"].as_str())).collect();
    println!("\nresults in {}: {}", out.display(), written.join(", "));
    let failed = rows.iter().filter(|r| r.status == "failed" || (r.status == "measured" && r.note.is_some())).count();
    if let Some(Err(err)) = program_cost {
        bail!("the per-program cost was not measured: {err:#}");
    }
    if let Some(Err(err)) = control.map(|c| &c.result) {
        bail!("the control plane was not measured in full: {err:#}");
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
        assert_eq!(datapath_order(0), [Floor, TopologyFloor, Bridge, DockerNft, Nftables, Bpfnet, BpfnetXdp]);
        assert_eq!(datapath_order(1), [BpfnetXdp, Bpfnet, Nftables, DockerNft, Bridge, TopologyFloor, Floor]);
    }

    #[test]
    fn plans() {
        let quick = Plan::new(true, false, false, None);
        assert_eq!((quick.repetitions, quick.other_ports.as_slice()), (1, &[1][..]));
        assert!(quick.max_repetitions <= 2 && !quick.control_plane);
        let full = Plan::new(false, true, false, Some(45.0));
        assert!(full.perf && !quick.perf && full.control_plane);
        assert_eq!(full.other_ports, [1, 100, 1_000, 10_000]);
        assert!(full.repetitions >= 3 && full.min_headline_repetitions >= 5);
        assert_eq!(full.budget, Duration::from_secs(45 * 60));
        // Half the budget for the first N, the rest shared.
        for (i, share) in [0.5, 2.0 / 3.0, 5.0 / 6.0, 1.0].into_iter().enumerate() {
            assert!((full.budget_share_until(i) - share).abs() < 1e-9, "N #{i}");
        }
        assert_eq!(quick.budget_share_until(0), 1.0);
        assert!(positive_minutes("0").is_err() && positive_minutes("x").is_err());
        assert_eq!(positive_minutes("1.5"), Ok(1.5));
        assert_eq!(full.families, Family::ALL);
        // The IPv6 rows alone: the full run's repetitions at its first N, a short budget.
        let v6 = Plan::new(false, false, true, None);
        assert_eq!((v6.families.as_slice(), v6.other_ports.as_slice()), (&[Family::V6][..], &[1][..]));
        assert_eq!((v6.repetitions, v6.min_headline_repetitions), (full.repetitions, full.min_headline_repetitions));
        assert!(v6.budget <= Duration::from_secs(5 * 60) && !v6.control_plane);
    }
}
