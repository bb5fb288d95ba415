//! `cargo xtask bench --docker`: the same docker client commands against two real dockerds
//! (20.10, `bpfnet_tests::engines::docker`), each in a sandbox host namespace of its own
//! (`nsenter --net`) with an uplink to an outside namespace:
//!
//! - **bridge**: dockerd's own bridge driver (`docker network create -d bridge`), as dockerd
//!   runs by default: its iptables rules, forwarding, masquerading and docker-proxy, all in the
//!   sandbox's host namespace; `--bridge=none`, so no default docker0 network;
//! - **bpfnet**: the sandbox agent's remote network driver (`-d <driver>`), dockerd's own
//!   networking off.
//!
//! The figures, per driver:
//!
//! - `docker run -d -p HOST:80 busybox httpd` until the published port answers an HTTP GET
//!   from the outside namespace, with N = 1, 50 and 200 containers running (the measured one
//!   included, every one publishing a port as it does): 5 samples at each N, each measured
//!   container removed (untimed) before the next;
//! - container to container, 64-byte UDP datagrams received per second (the bench's loadgen in
//!   the containers' namespaces, named with `ip netns attach`);
//! - a published port's TCP connection rate, from the outside namespace to `-p 5401:5401`.
//!
//! The drivers run one after the other, each in a sandbox of its own; the traffic figures are
//! medians of 3 runs, measured with two containers running. `--quick` measures less ([`Plan`]).
//!
//! Safety: the bridge driver's dockerd changes iptables, sysctls (forwarding,
//! `bridge-nf-call-iptables`) and links only in its own namespace, and loads no kernel module
//! (a `modprobe` that refuses comes first on its PATH). The root namespace's iptables rules and
//! links are compared before and after the run; a difference fails the bench loudly.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bpfnet_tests::engines::docker::{driver_socket, Docker, Networking};
use bpfnet_tests::engines::BUSYBOX_IMAGE;
use bpfnet_tests::sandbox::{Output, Sandbox, UPLINK_HOST_IP};
use serde::Serialize;
use serde_json::json;

use super::stats::Summary;
use super::topology::{Endpoints, MEASURED_PORTS};
use super::workload::{Durations, Metric, Pinning, Runner, Workload};
use super::{progress, section};
use crate::{command, interrupt};

/// What a run measures; smaller with `--quick`.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    /// The running containers at which `docker run` to first answer is measured.
    pub running: Vec<usize>,
    /// Samples of `docker run` to first answer at each N.
    pub run_samples: usize,
    /// Runs of each traffic workload per driver.
    pub traffic_repetitions: usize,
    pub durations: Durations,
}

impl Plan {
    pub fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                running: vec![1, 10],
                run_samples: 2,
                traffic_repetitions: 1,
                durations: Durations { stream_secs: 2, short_secs: 1.5 },
            }
        } else {
            Plan {
                running: vec![1, 50, 200],
                run_samples: 5,
                traffic_repetitions: 3,
                durations: Durations { stream_secs: 4, short_secs: 2.5 },
            }
        }
    }
}
/// The Docker network's subnet (both drivers): room for every container.
const SUBNET: &str = "10.213.0.0/16";
/// Host ports: the fillers' from here on, the measured ones' from MEASURED_FIRST_PORT.
const FILLER_FIRST_PORT: u16 = 20_000;
const MEASURED_FIRST_PORT: u16 = 30_000;
/// How long a container's published port may take to answer.
const ANSWER_LIMIT: Duration = Duration::from_secs(30);
/// busybox httpd on port 80, answering `/` with a small page.
const WEB_SERVER: &str = "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 80 -h /www";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    Bridge,
    Bpfnet,
}

impl Driver {
    const ALL: [Driver; 2] = [Driver::Bridge, Driver::Bpfnet];

    fn name(self) -> &'static str {
        match self {
            Driver::Bridge => "bridge",
            Driver::Bpfnet => "bpfnet",
        }
    }
}

/// One driver's figures (milliseconds, Mpps, connections per second), or why it failed.
#[derive(Debug, Serialize)]
pub struct DriverFigures {
    pub driver: Driver,
    /// Per N of the plan: the samples of `docker run` to first answer, in ms.
    pub run_to_answer_ms: Vec<RunToAnswer>,
    /// Container to container, 64-byte UDP datagrams received, Mpps, per repetition.
    pub c2c_udp_mpps: Vec<f64>,
    /// From outside to a published port, TCP connections per second, per repetition.
    pub published_tcp_conn_per_sec: Vec<f64>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct RunToAnswer {
    pub running: usize,
    pub samples_ms: Vec<f64>,
}

/// Measures both drivers, writes docker.json and table.txt into `out`, prints the table.
pub fn run(bpfnet_bin: &Path, loadgen: &Path, quick: bool, out: &Path) -> Result<()> {
    if Path::new("/run/firewalld").exists() {
        bail!("firewalld runs on this machine: dockerd's bridge driver would add its rules there, for the whole machine; stop it first");
    }
    let before = RootNamespace::snapshot()?;
    let pinning = Pinning::for_this_machine();
    let plan = Plan::new(quick);
    let mut figures = Vec::new();
    for driver in Driver::ALL {
        interrupt::check_interrupted()?;
        section(&format!("Docker, {} driver", driver.name()));
        let mut measured = DriverFigures {
            driver,
            run_to_answer_ms: Vec::new(),
            c2c_udp_mpps: Vec::new(),
            published_tcp_conn_per_sec: Vec::new(),
            error: None,
        };
        if let Err(err) = measure(driver, bpfnet_bin, loadgen, pinning, &plan, &mut measured) {
            interrupt::check_interrupted()?;
            progress(&format!("{}: FAILED: {err:#}", driver.name()));
            measured.error = Some(format!("{err:#}"));
        }
        figures.push(measured);
        // Whatever happened, nothing may have reached the root namespace.
        RootNamespace::snapshot()?.same_as(&before)?;
    }
    let table = table(&plan, &figures);
    let report = json!({
        "command": format!("cargo xtask bench --docker{}", if quick { " --quick" } else { "" }),
        "dockerd": "Debian 12 docker.io 20.10 (unpacked by cargo xtask setup), a private containerd",
        "settings": {
            "plan": plan,
            "pinning": pinning,
            "bridge_dockerd": "--bridge=none --iptables=true --ip-forward=true --ip-masq=true, userland-proxy on (default)",
            "bpfnet_dockerd": "--bridge=none --iptables=false --ip-forward=false --ip-masq=false --userland-proxy=false",
            "run_command": format!("docker run -d --network NET -p HOST:80 {BUSYBOX_IMAGE} sh -c '{WEB_SERVER}'"),
        },
        "drivers": figures,
    });
    for (name, text) in [("docker.json", serde_json::to_string_pretty(&report)? + "\n"), ("table.txt", table.clone())] {
        let path = out.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    section("results");
    println!("{table}");
    println!("results in {}: docker.json, table.txt", out.display());
    let failed: Vec<String> =
        figures.iter().filter_map(|f| f.error.as_ref().map(|e| format!("{}: {e}", f.driver.name()))).collect();
    if !failed.is_empty() {
        bail!("the Docker bench failed for {}", failed.join("; "));
    }
    Ok(())
}

/// One driver, in a sandbox of its own that is removed whatever happened.
fn measure(
    driver: Driver,
    bpfnet_bin: &Path,
    loadgen: &Path,
    pinning: Pinning,
    plan: &Plan,
    figures: &mut DriverFigures,
) -> Result<()> {
    let stem = match driver {
        Driver::Bridge => "bdb",
        Driver::Bpfnet => "bdk",
    };
    let mut sandbox = Sandbox::create(stem, bpfnet_bin.to_owned(), Output::Captured)?;
    // A copy of the release xtask for `loadgen`: a rebuild during the run cannot swap it.
    let loadgen_copy = sandbox.write_scratch("loadgen", "")?;
    std::fs::copy(loadgen, &loadgen_copy)
        .with_context(|| format!("copying {} to {}", loadgen.display(), loadgen_copy.display()))?;
    let runner = Runner { loadgen: &loadgen_copy, pinning, durations: plan.durations };
    let runner = &runner;
    sandbox.add_uplink()?;
    let networking = match driver {
        Driver::Bridge => {
            bridge_netfilter_sysctls(sandbox.host_netns())?;
            Networking::OwnBridge
        }
        Driver::Bpfnet => {
            let socket = driver_socket(&sandbox);
            sandbox.set_agent_env("BPFNET_DOCKER_PLUGIN_SOCKET", socket.to_str().context("a UTF-8 path")?);
            sandbox.start_agent()?;
            Networking::Driver
        }
    };
    // Dropped before the sandbox: containers and networks go while the agent still answers.
    let result = Docker::start_with(&sandbox, networking).and_then(|docker| {
        let measured = measure_on(&mut sandbox, &docker, runner, plan, figures);
        let removed = docker.teardown();
        measured.and(removed)
    });
    let removed = sandbox.teardown();
    result.and(removed)
}

/// The bridge driver turns `bridge-nf-call-iptables` on; without br_netfilter (a module on a
/// machine that has modules) it would load it for the whole machine. It is never loaded here.
fn bridge_netfilter_sysctls(host_netns: &str) -> Result<()> {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{host_netns}")).args(["test", "-d", "/proc/sys/net/bridge"]);
    if command::output_bounded(&mut cmd, Duration::from_secs(10)).is_err() {
        bail!(
            "/proc/sys/net/bridge does not exist: the kernel's br_netfilter is not loaded. dockerd's bridge driver \
             would `modprobe br_netfilter` for the whole machine, which this bench never does; load it yourself \
             (modprobe br_netfilter) if you accept that, or run the bench where it is built in"
        );
    }
    Ok(())
}

fn measure_on(
    sandbox: &mut Sandbox,
    docker: &Docker,
    runner: &Runner,
    plan: &Plan,
    figures: &mut DriverFigures,
) -> Result<()> {
    let net = sandbox.name("net");
    docker.run(&["network", "create", "-d", &docker.driver, "--subnet", SUBNET, &net])?;

    // Traffic, with two containers running: a client, and a server publishing the measured
    // ports (host port = container port).
    progress("traffic: container to container (UDP 64B), outside to a published port (TCP connections)");
    let mut server_args = vec!["run", "-d", "--network", &net, "--name", "server"];
    let port_specs: Vec<String> =
        MEASURED_PORTS.iter().map(|(p, port)| format!("{port}:{port}/{}", p.as_str())).collect();
    for p in &port_specs {
        server_args.extend(["-p", p]);
    }
    server_args.extend([BUSYBOX_IMAGE, "sleep", "86400"]);
    docker.run(&server_args)?;
    docker.run(&["run", "-d", "--network", &net, "--name", "client", BUSYBOX_IMAGE, "sleep", "86400"])?;
    let server_ip: Ipv4Addr = docker
        .inspect("server", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}")?
        .parse()
        .context("the server container's address")?;
    let server_netns = sandbox.attach_engine_netns("server", docker.pid("server")?)?;
    let client_netns = sandbox.attach_engine_netns("client", docker.pid("client")?)?;
    let c2c = Endpoints {
        client_netns: client_netns.clone(),
        target: server_ip.into(),
        server_netns: server_netns.clone(),
        server_bind: server_ip.into(),
        source: None,
    };
    let published = Endpoints {
        client_netns: sandbox.outside_netns().to_owned(),
        target: UPLINK_HOST_IP.into(),
        server_netns,
        server_bind: server_ip.into(),
        source: None,
    };
    for rep in 0..plan.traffic_repetitions {
        interrupt::check_interrupted()?;
        let udp = only(runner.run(sandbox, &c2c, Workload::UdpRate)?, Metric::UdpPps)?;
        let crr = only(runner.run(sandbox, &published, Workload::TcpCrr)?, Metric::CrrPerSec)?;
        progress(&format!(
            "rep {}/{}: c2c UDP 64B {udp:.3} Mpps, published TCP {crr:.0} conn/s",
            rep + 1,
            plan.traffic_repetitions
        ));
        figures.c2c_udp_mpps.push(udp);
        figures.published_tcp_conn_per_sec.push(crr);
    }
    docker.run(&["rm", "-f", "server", "client"])?;

    // docker run to first answer, at N running.
    let outside = sandbox.outside_netns().to_owned();
    let mut running = 0;
    let mut measured_port = MEASURED_FIRST_PORT;
    for &n in &plan.running {
        while running + 1 < n {
            interrupt::check_interrupted()?;
            let port = FILLER_FIRST_PORT + running as u16;
            run_to_answer(docker, &net, &format!("filler{running}"), port, &outside)?;
            running += 1;
            if running % 50 == 0 {
                progress(&format!("{running} containers running"));
            }
        }
        let mut samples = Vec::with_capacity(plan.run_samples);
        for _ in 0..plan.run_samples {
            interrupt::check_interrupted()?;
            let took = run_to_answer(docker, &net, "measured", measured_port, &outside)?;
            measured_port += 1;
            samples.push(took.as_secs_f64() * 1e3);
            docker.run(&["rm", "-f", "measured"])?;
        }
        let shown: Vec<String> = samples.iter().map(|ms| format!("{ms:.0}")).collect();
        progress(&format!("N = {n}: docker run to first answer {} ms", shown.join(", ")));
        figures.run_to_answer_ms.push(RunToAnswer { running: n, samples_ms: samples });
    }
    Ok(())
}

fn only(figures: Vec<(Metric, f64)>, metric: Metric) -> Result<f64> {
    figures.into_iter().find(|(m, _)| *m == metric).map(|(_, v)| v).with_context(|| format!("no {metric:?} measured"))
}

/// `docker run -d -p PORT:80 ... httpd`, then HTTP GETs from `outside` to the uplink's address
/// and PORT until one is answered: the time from the command's start to that answer.
fn run_to_answer(docker: &Docker, net: &str, name: &str, port: u16, outside: &str) -> Result<Duration> {
    let publish = format!("{port}:80");
    let started = Instant::now();
    docker.run(&[
        "run",
        "-d",
        "--network",
        net,
        "--name",
        name,
        "-p",
        &publish,
        BUSYBOX_IMAGE,
        "sh",
        "-c",
        WEB_SERVER,
    ])?;
    let addr = SocketAddrV4::new(UPLINK_HOST_IP, port);
    bpfnet_tests::in_netns(outside, move || {
        let deadline = started + ANSWER_LIMIT;
        let mut last = String::new();
        while Instant::now() < deadline {
            match http_get(addr) {
                Ok(answer) if answer.starts_with("HTTP/1.") => return Ok(started.elapsed()),
                Ok(answer) => last = format!("answered {answer:?}"),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        bail!("{addr} did not answer within {ANSWER_LIMIT:?}: {last}")
    })
    .with_context(|| format!("container {name} (-p {publish})"))
}

fn http_get(addr: SocketAddrV4) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr.into(), Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

/// What the root namespace has that a sandboxed dockerd could have changed: its iptables rules
/// (without counters) and its links (without statistics).
#[derive(Debug, PartialEq)]
struct RootNamespace {
    iptables: String,
    links: Vec<String>,
}

impl RootNamespace {
    fn snapshot() -> Result<RootNamespace> {
        let limit = Duration::from_secs(30);
        let iptables = command::output_bounded(&mut Command::new("iptables-save"), limit)
            .context("iptables-save in the root namespace")?;
        let iptables = iptables
            .lines()
            .filter(|l| !l.starts_with('#'))
            // Chain lines carry packet counters: `:INPUT ACCEPT [12:345]`.
            .map(|l| l.split(" [").next().unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        let links = command::output_bounded(Command::new("ip").args(["-o", "link", "show"]), limit)?;
        let mut links: Vec<String> = links
            .lines()
            // `1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 ...`: index, name, flags, mtu.
            .map(|l| l.split_whitespace().take(5).collect::<Vec<_>>().join(" "))
            .collect();
        links.sort();
        Ok(RootNamespace { iptables, links })
    }

    fn same_as(&self, before: &RootNamespace) -> Result<()> {
        let mut changed = String::new();
        if self.iptables != before.iptables {
            let _ = writeln!(changed, "iptables rules before:\n{}\nafter:\n{}", before.iptables, self.iptables);
        }
        if self.links != before.links {
            let _ = writeln!(changed, "links before:\n{}\nafter:\n{}", before.links.join("\n"), self.links.join("\n"));
        }
        if self.links.iter().any(|l| l.contains(" docker0:")) {
            let _ = writeln!(changed, "a docker0 link exists");
        }
        if !changed.is_empty() {
            bail!("THE ROOT NETWORK NAMESPACE CHANGED during the Docker bench (it must not):\n{changed}");
        }
        Ok(())
    }
}

fn median(samples: &[f64]) -> Option<f64> {
    Summary::of(samples).map(|s| s.median)
}

pub fn table(plan: &Plan, figures: &[DriverFigures]) -> String {
    let find = |driver: Driver| figures.iter().find(|f| f.driver == driver);
    let (bridge, bpfnet) = (find(Driver::Bridge), find(Driver::Bpfnet));
    let mut out = String::from(
        "Docker: the same docker commands on dockerd's bridge driver (iptables, docker-proxy) and on bpfnet's driver\n",
    );
    let _ = writeln!(out, "{:<46} {:>12} {:>12} {:>14}", "", "bridge", "bpfnet", "bpfnet/bridge");
    let row = |out: &mut String, what: &str, unit: &str, of: &dyn Fn(&DriverFigures) -> Option<f64>, digits: usize| {
        let a = bridge.and_then(of);
        let b = bpfnet.and_then(of);
        let show = |v: Option<f64>| v.map_or("failed".to_owned(), |v| format!("{v:.digits$}"));
        let ratio = match (a, b) {
            (Some(a), Some(b)) if a != 0.0 => format!("{:.2}x", b / a),
            _ => "-".to_owned(),
        };
        let _ = writeln!(out, "{:<46} {:>12} {:>12} {:>14}", format!("{what} ({unit})"), show(a), show(b), ratio);
    };
    for &n in &plan.running {
        let of = move |f: &DriverFigures| {
            f.run_to_answer_ms.iter().find(|r| r.running == n).and_then(|r| median(&r.samples_ms))
        };
        row(&mut out, &format!("docker run -p to first answer, N={n}"), "ms, p50", &of, 0);
    }
    row(&mut out, "container to container, UDP 64B", "Mpps", &|f| median(&f.c2c_udp_mpps), 3);
    row(&mut out, "outside to a published port, TCP", "conn/s", &|f| median(&f.published_tcp_conn_per_sec), 0);
    let _ = writeln!(
        out,
        "medians: {} docker runs at each N (containers running, each publishing a port), {} traffic \
         run(s) of {} s with two containers; bpfnet/bridge above 1 is slower for times, faster for rates",
        plan.run_samples, plan.traffic_repetitions, plan.durations.short_secs
    );
    for f in figures {
        if let Some(err) = &f.error {
            let _ = writeln!(out, "{} FAILED: {err}", f.driver.name());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_both_drivers_and_their_ratio() {
        let figures = |driver, ms: f64, mpps| DriverFigures {
            driver,
            run_to_answer_ms: Plan::new(false)
                .running
                .iter()
                .map(|&n| RunToAnswer { running: n, samples_ms: vec![ms, ms + 2.0, ms - 2.0] })
                .collect(),
            c2c_udp_mpps: vec![mpps],
            published_tcp_conn_per_sec: vec![10_000.0],
            error: None,
        };
        let plan = Plan::new(false);
        let text = table(&plan, &[figures(Driver::Bridge, 400.0, 1.0), figures(Driver::Bpfnet, 300.0, 2.0)]);
        assert!(text.contains("docker run -p to first answer, N=200"), "{text}");
        let udp = text.lines().find(|l| l.starts_with("container to container")).unwrap();
        assert!(udp.contains("1.000") && udp.contains("2.000") && udp.ends_with("2.00x"), "{udp}");
        let run = text.lines().find(|l| l.contains("N=1 ")).unwrap();
        assert!(run.contains("400") && run.contains("300") && run.ends_with("0.75x"), "{run}");

        let mut failed = figures(Driver::Bpfnet, 1.0, 1.0);
        failed.run_to_answer_ms.clear();
        failed.error = Some("dockerd did not start".into());
        let text = table(&plan, &[figures(Driver::Bridge, 400.0, 1.0), failed]);
        assert!(text.contains("failed") && text.contains("bpfnet FAILED: dockerd did not start"), "{text}");
    }

    #[test]
    fn root_namespace_differences_are_named() {
        let before = RootNamespace { iptables: "*filter\n:INPUT ACCEPT".into(), links: vec!["1: lo:".into()] };
        let same = RootNamespace { iptables: before.iptables.clone(), links: before.links.clone() };
        assert!(same.same_as(&before).is_ok());
        let after = RootNamespace {
            iptables: "*filter\n:INPUT ACCEPT\n:DOCKER -".into(),
            links: vec!["1: lo:".into(), "5: docker0: <NO-CARRIER>".into()],
        };
        let err = format!("{:#}", after.same_as(&before).unwrap_err());
        assert!(err.contains("ROOT NETWORK NAMESPACE CHANGED") && err.contains(":DOCKER") && err.contains("docker0"));
    }
}
