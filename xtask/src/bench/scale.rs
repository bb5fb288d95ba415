//! `cargo xtask bench --scale N`: the control plane at host scale. N containers on one
//! sandbox host, each publishing a port, created and removed one by one through the API;
//! reports create and remove latency (p50 with its 95 % interval, p99) at 1, 100 and N
//! containers (a window of [`WINDOW`] operations around each count), the time
//! of `status`, `container ls` and a `/metrics` scrape at N, the agent's memory, and how many
//! of a sample of containers answered on their published port from the outside namespace.
//! Figures from one run, for the scale report (`scale.json`, and the terminal).

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;

use anyhow::{Context, Result};
use bpfnet_tests::sandbox::{Output, Sandbox};
use bpfnet_tests::{tcp_exchange, UPLINK_HOST_IP};
use serde::Serialize;
use serde_json::json;

use super::api_request::{plain_name, send};
use super::stats::{flatness, latencies_at, scale_points, LatencyAt, Summary};

/// Host ports of the containers: container i publishes FIRST_PORT + i -> 80.
const FIRST_PORT: u16 = 20_000;
/// Containers whose published port is tried with real traffic.
const SAMPLED: usize = 20;
/// Operations around each count whose timings make its figures.
const WINDOW: usize = 50;
/// Timings of each read-only request at N.
const READS: usize = 5;

#[derive(Debug, Serialize)]
pub struct ScaleReport {
    pub containers: usize,
    /// Creates with 1, 100 and N containers present after them.
    pub create_ms: Vec<LatencyAt>,
    /// Removes with N, 100 and 1 present before them (in increasing order of that count).
    pub remove_ms: Vec<LatencyAt>,
    /// Medians of READS requests at N, milliseconds.
    pub status_ms: f64,
    pub container_ls_ms: f64,
    pub metrics_scrape_ms: f64,
    pub metrics_bytes: usize,
    /// The agent's resident memory at N, and before the first container.
    pub agent_rss_kib_at_n: u64,
    pub agent_rss_kib_empty: u64,
    pub sampled: usize,
    pub sampled_reached: usize,
}

/// Runs the scale scenario with `bpfnet_bin` and writes `scale.json` into `out`.
pub fn run(bpfnet_bin: &Path, containers: usize, out: &Path) -> Result<ScaleReport> {
    let mut sandbox = Sandbox::create("bns", bpfnet_bin.to_owned(), Output::Captured)?;
    let result = measure(&mut sandbox, containers);
    sandbox.teardown()?;
    let report = result?;
    let path = out.join("scale.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("{}", table(&report));
    Ok(report)
}

fn measure(sandbox: &mut Sandbox, count: usize) -> Result<ScaleReport> {
    sandbox.add_uplink()?;
    sandbox.start_agent()?;
    let socket = sandbox.socket().to_owned();
    let rss_empty = rss_kib(sandbox)?;
    let network = sandbox.name("net");
    // A /20: 4,094 addresses.
    send(&socket, "POST", "/v1/networks", Some(&json!({ "name": network, "subnet": "10.200.0.0/20" })))?;
    let names: Vec<String> = (0..count).map(|i| sandbox.name(&format!("c{i}"))).collect();
    let mut created = Vec::with_capacity(count);
    for (i, name) in names.iter().enumerate() {
        let publish = format!("{}:80", FIRST_PORT + i as u16);
        let body = json!({ "name": name, "network": network, "publish": [publish] });
        created.push(send(&socket, "POST", "/v1/containers", Some(&body))?.0);
        if (i + 1) % 100 == 0 {
            println!("==> {} containers", i + 1);
        }
    }
    let time = |path: &str| -> Result<(f64, usize)> {
        let mut ms = Vec::new();
        let mut bytes = 0;
        for _ in 0..READS {
            let (took, body) = send(&socket, "GET", path, None)?;
            ms.push(took.as_secs_f64() * 1e3);
            bytes = body.len();
        }
        Ok((Summary::of(&ms).map_or(f64::NAN, |s| s.median), bytes))
    };
    let (status_ms, _) = time("/v1/status")?;
    let (container_ls_ms, _) = time("/v1/containers")?;
    let (metrics_scrape_ms, metrics_bytes) = time("/metrics")?;
    let rss_at_n = rss_kib(sandbox)?;
    let sampled: Vec<usize> = (0..SAMPLED.min(count)).map(|k| k * count / SAMPLED.min(count)).collect();
    let mut reached = 0;
    for &i in &sampled {
        sandbox.tcp_echo_server(&names[i], SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 80), 1);
        let to = SocketAddrV4::new(UPLINK_HOST_IP, FIRST_PORT + i as u16);
        match tcp_exchange(sandbox.outside_netns(), to, b"scale") {
            Ok(echo) if echo == b"scale" => reached += 1,
            Ok(echo) => println!("==> container {i} answered {echo:?}"),
            Err(e) => println!("==> container {i} did not answer on {to}: {e:#}"),
        }
    }
    let mut removed = Vec::with_capacity(count);
    for name in &names {
        removed.push(send(&socket, "DELETE", &format!("/v1/containers/{}", plain_name(name)?), None)?.0);
    }
    // Removed in creation order: the first remove had `count` containers present.
    removed.reverse();
    let points = scale_points(count);
    Ok(ScaleReport {
        containers: count,
        create_ms: latencies_at(&created, &points, WINDOW),
        remove_ms: latencies_at(&removed, &points, WINDOW),
        status_ms,
        container_ls_ms,
        metrics_scrape_ms,
        metrics_bytes,
        agent_rss_kib_at_n: rss_at_n,
        agent_rss_kib_empty: rss_empty,
        sampled: sampled.len(),
        sampled_reached: reached,
    })
}

/// The agent's VmRSS.
fn rss_kib(sandbox: &Sandbox) -> Result<u64> {
    let pid = sandbox.agent_pid().context("the agent does not run")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix(" kB")?.trim().parse().ok())
        .context("no VmRSS in the agent's /proc status")
}

pub fn table(r: &ScaleReport) -> String {
    let mut out = format!("control plane at {} containers (one run, through the API socket)\n", r.containers);
    for (what, series) in [("create", &r.create_ms), ("remove", &r.remove_ms)] {
        for at in series {
            let _ = writeln!(
                out,
                "  {:<28} p50 {:>7.1} ms {:>17}   p99 {:>7.1} ms",
                format!("{what}, {} present", at.attached),
                at.p50,
                at.p50_ci.map_or_else(String::new, |ci| format!("[{:.1}..{:.1}]", ci.lo, ci.hi)),
                at.p99
            );
        }
        let _ = writeln!(out, "  {:<28} {}", format!("{what}:"), flatness(series));
    }
    let _ = writeln!(out, "  {:<28} {:>7.1} ms", "status at N (median of 5)", r.status_ms);
    let _ = writeln!(out, "  {:<28} {:>7.1} ms", "container ls at N", r.container_ls_ms);
    let _ =
        writeln!(out, "  {:<28} {:>7.1} ms ({} bytes)", "/metrics scrape at N", r.metrics_scrape_ms, r.metrics_bytes);
    let _ =
        writeln!(out, "  {:<28} {} KiB at N, {} KiB empty", "agent RSS", r.agent_rss_kib_at_n, r.agent_rss_kib_empty);
    let _ = writeln!(out, "  {:<28} {} of {} sampled", "published ports answered", r.sampled_reached, r.sampled);
    out
}
