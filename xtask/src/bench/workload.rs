//! The workloads: a server in one namespace, a client in another, each pinned to its own CPU
//! when there are two, each bounded in time; and the figures parsed from their JSON.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bpfnet_tests::sandbox::{netns_exec, BackgroundId, Sandbox};
use serde::Serialize;
use serde_json::Value;

use super::loadgen::{
    TransactionReport, UdpFloodReport, UdpSinkReport, UDP_PAYLOAD_64B_FRAME, UDP_PAYLOAD_64B_FRAME_V6,
};
use super::topology::{socket, Endpoints, MEASURED_PORTS, OUTSIDE_LINK};
use crate::command;

/// Beyond its own duration, how long a client may take (connect, start-up, report).
const CLIENT_SLACK: Duration = Duration::from_secs(15);
/// How long a server may take to exit after its client finished (idle period + report).
const SERVER_LIMIT: Duration = Duration::from_secs(10);
/// Lines a server may print before it says that it listens.
const MAX_BANNER_LINES: usize = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// iperf3, one TCP stream.
    TcpStream,
    /// The same with the sender's tx offloads on (DNAT only, where the sender is the outside
    /// namespace, whose offloads are otherwise off; see [`super::topology::Topologies::runs`]).
    TcpStreamOffload,
    /// loadgen udp-flood -> udp-sink, 64-byte frames.
    UdpRate,
    /// loadgen tcp-rr -> tcp-server, 1-byte ping-pong.
    TcpRr,
    /// loadgen tcp-crr -> tcp-server, one connection per transaction.
    TcpCrr,
}

impl Workload {
    pub const ALL: [Workload; 5] =
        [Workload::TcpStream, Workload::TcpStreamOffload, Workload::UdpRate, Workload::TcpRr, Workload::TcpCrr];

    pub fn name(self) -> &'static str {
        match self {
            Workload::TcpStream => "tcp-stream",
            Workload::TcpStreamOffload => "tcp-stream-offload",
            Workload::UdpRate => "udp-64B",
            Workload::TcpRr => "tcp-rr",
            Workload::TcpCrr => "tcp-crr",
        }
    }

    fn port(self) -> u16 {
        match self {
            Workload::TcpStream | Workload::TcpStreamOffload => MEASURED_PORTS[0].1,
            Workload::UdpRate => MEASURED_PORTS[1].1,
            Workload::TcpRr | Workload::TcpCrr => MEASURED_PORTS[2].1,
        }
    }
}

/// One figure of a measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    TcpGbps,
    /// TCP stream with the sender's tx offloads on.
    TcpOffloadGbps,
    UdpPps,
    /// CPU time of the whole machine per 64-byte UDP packet received (see
    /// [`super::loadgen::UdpFloodReport::busy_cpu_secs`]).
    UdpCpuNsPerPkt,
    RrP50Us,
    RrP99Us,
    CrrPerSec,
    /// Publish one more port, end to end (process start included).
    PublishMs,
    /// bpfnet only: the same through its API alone (agent work + HTTP, no CLI process; see
    /// [`super::api_request`]).
    PublishApiMs,
    /// bpfnet's SERVICES map update alone (see [`super::pinned_map`]).
    MapUpdateUs,
}

impl Metric {
    pub fn label(self) -> &'static str {
        match self {
            Metric::TcpGbps => "TCP stream Gbit/s",
            Metric::TcpOffloadGbps => "TCP stream tx-offload Gbit/s",
            Metric::UdpPps => "UDP 64B Mpps rx",
            Metric::UdpCpuNsPerPkt => "UDP 64B CPU ns/pkt",
            Metric::RrP50Us => "TCP RR p50 us",
            Metric::RrP99Us => "TCP RR p99 us",
            Metric::CrrPerSec => "TCP CRR conn/s",
            Metric::PublishMs => "publish +1 port ms",
            Metric::PublishApiMs => "+1 port via API ms",
            Metric::MapUpdateUs => "+1 map update us",
        }
    }

    /// The unit of the stored values (results.json keeps base units except for pps -> Mpps).
    pub fn unit(self) -> &'static str {
        match self {
            Metric::TcpGbps | Metric::TcpOffloadGbps => "Gbit/s",
            Metric::UdpPps => "Mpps",
            Metric::RrP50Us | Metric::RrP99Us | Metric::MapUpdateUs => "us",
            Metric::UdpCpuNsPerPkt => "ns",
            Metric::CrrPerSec => "1/s",
            Metric::PublishMs | Metric::PublishApiMs => "ms",
        }
    }

    /// The floor's figure this one is a ratio to (in c2c, where the floor's sender has its
    /// offloads on): the plain stream for the stream with offloads on.
    pub fn floor_metric(self) -> Metric {
        match self {
            Metric::TcpOffloadGbps => Metric::TcpGbps,
            other => other,
        }
    }

    pub fn higher_is_better(self) -> bool {
        matches!(self, Metric::TcpGbps | Metric::TcpOffloadGbps | Metric::UdpPps | Metric::CrrPerSec)
    }
}

/// Which CPU the client and the server run on (`taskset -c`), if pinned.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Pinning {
    pub client_cpu: Option<usize>,
    pub server_cpu: Option<usize>,
}

impl Pinning {
    /// Client on CPU 0, server on CPU 1 when there are at least two.
    pub fn for_this_machine() -> Pinning {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cpus >= 2 {
            Pinning { client_cpu: Some(0), server_cpu: Some(1) }
        } else {
            Pinning { client_cpu: None, server_cpu: None }
        }
    }
}

/// Durations of one run of each workload.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Durations {
    /// iperf3 -t (whole seconds).
    pub stream_secs: u32,
    /// udp, rr and crr.
    pub short_secs: f64,
}

pub struct Runner<'a> {
    pub loadgen: &'a Path,
    pub pinning: Pinning,
    pub durations: Durations,
}

impl Runner<'_> {
    /// Run `workload` once between `ends`; its figures.
    pub fn run(&self, sandbox: &mut Sandbox, ends: &Endpoints, workload: Workload) -> Result<Vec<(Metric, f64)>> {
        let port = workload.port();
        let bind = socket(ends.server_bind, port).to_string();
        let target = socket(ends.target, port).to_string();
        let short = format!("{}", self.durations.short_secs);
        let max = format!("{}", self.durations.short_secs + 20.0);
        let loadgen = self.loadgen.as_os_str().to_str().context("the loadgen path is not UTF-8")?;
        match workload {
            Workload::TcpStreamOffload => {
                // The sender's end of the uplink, whose tx offloads are off for XDP (see
                // topology.rs): on for this run only, and off again whatever the run did.
                set_tx_offload(&ends.client_netns, true)?;
                let run = self.run(sandbox, ends, Workload::TcpStream);
                let restored = set_tx_offload(&ends.client_netns, false);
                let figures = run?;
                restored?;
                Ok(figures.into_iter().map(|(_, gbps)| (Metric::TcpOffloadGbps, gbps)).collect())
            }
            Workload::TcpStream => {
                let port = port.to_string();
                let bind_ip = ends.server_bind.to_string();
                let server = self.server(
                    sandbox,
                    ends,
                    "iperf3",
                    &["-s", "-1", "-B", &bind_ip, "-p", &port, "--forceflush", "--idle-timeout", "30"],
                )?;
                let json = self.client(
                    ends,
                    "iperf3",
                    &[
                        "-c",
                        &ends.target.to_string(),
                        "-p",
                        &port,
                        "-t",
                        &self.durations.stream_secs.to_string(),
                        "-J",
                        "--connect-timeout",
                        "3000",
                    ],
                    f64::from(self.durations.stream_secs),
                );
                // Reap the server whatever the client did.
                let server_done = sandbox.finish(server, SERVER_LIMIT);
                let gbps = parse_iperf3(&json?)?;
                server_done?;
                Ok(vec![(Metric::TcpGbps, gbps)])
            }
            Workload::UdpRate => {
                // The smallest frames each family has: 64 bytes, or 66 over IPv6 (see loadgen).
                let payload = match ends.target {
                    IpAddr::V4(_) => UDP_PAYLOAD_64B_FRAME,
                    IpAddr::V6(_) => UDP_PAYLOAD_64B_FRAME_V6,
                };
                let server =
                    self.server(sandbox, ends, loadgen, &["loadgen", "udp-sink", "--bind", &bind, "--max-secs", &max])?;
                let flood = self.client(
                    ends,
                    loadgen,
                    &["loadgen", "udp-flood", "--to", &target, "--secs", &short, "--payload", &payload.to_string()],
                    self.durations.short_secs,
                );
                let sink = sandbox.finish(server, SERVER_LIMIT);
                let flood: UdpFloodReport = parse_report(&flood?, "udp-flood")?;
                // A sink that never got a datagram waits for one until it is killed.
                let sink = sink.with_context(|| {
                    format!(
                        "udp-sink: none of the {} datagrams sent to {target} arrived, or it did not end",
                        flood.sent
                    )
                })?;
                let sink: UdpSinkReport = parse_report(&sink, "udp-sink")?;
                if sink.received == 0 {
                    bail!("udp-sink received none of the {} datagrams sent to {target}", flood.sent);
                }
                check_source(&sink, ends.source)?;
                // Both CPUs are busy by design (a flooding sender, a sink that never sleeps):
                // per packet, this is what the datapath leaves room for, drops included.
                let cpu_ns = flood.busy_cpu_secs * 1e9 / sink.received as f64;
                Ok(vec![(Metric::UdpPps, sink.pps / 1e6), (Metric::UdpCpuNsPerPkt, cpu_ns)])
            }
            Workload::TcpRr | Workload::TcpCrr => {
                let server = self.server(
                    sandbox,
                    ends,
                    loadgen,
                    &["loadgen", "tcp-server", "--bind", &bind, "--max-secs", &max],
                )?;
                let tool = if workload == Workload::TcpRr { "tcp-rr" } else { "tcp-crr" };
                let report = self.client(
                    ends,
                    loadgen,
                    &["loadgen", tool, "--to", &target, "--secs", &short],
                    self.durations.short_secs,
                );
                let server_done = sandbox.finish(server, SERVER_LIMIT);
                let report: TransactionReport = parse_report(&report?, tool)?;
                server_done?;
                if workload == Workload::TcpRr {
                    Ok(vec![(Metric::RrP50Us, report.p50_us), (Metric::RrP99Us, report.p99_us)])
                } else {
                    if report.errors * 100 > report.transactions {
                        bail!(
                            "tcp-crr: {} of {} connections failed",
                            report.errors,
                            report.transactions + report.errors
                        );
                    }
                    Ok(vec![(Metric::CrrPerSec, report.per_sec)])
                }
            }
        }
    }

    /// `ip netns exec NETNS [taskset -c CPU] PROGRAM ARGS`.
    fn pinned(&self, netns: &str, cpu: Option<usize>, program: &str, args: &[&str]) -> std::process::Command {
        match cpu {
            Some(cpu) => {
                let mut all = vec!["-c".to_string(), cpu.to_string(), program.to_string()];
                all.extend(args.iter().map(|a| a.to_string()));
                netns_exec(netns, "taskset", all)
            }
            None => netns_exec(netns, program, args),
        }
    }

    /// Start the server and wait for its line that says it listens.
    fn server(&self, sandbox: &mut Sandbox, ends: &Endpoints, program: &str, args: &[&str]) -> Result<BackgroundId> {
        let mut cmd = self.pinned(&ends.server_netns, self.pinning.server_cpu, program, args);
        cmd.stdout(Stdio::piped());
        let label = format!("{program} server in {}", ends.server_netns);
        let id = sandbox.spawn(&label, cmd)?;
        // Each server exits on its own within its time limit, so these reads end.
        for _ in 0..MAX_BANNER_LINES {
            let line = sandbox.read_line(id)?;
            if line.contains("listening") {
                return Ok(id);
            }
        }
        bail!("{label} did not say that it listens within {MAX_BANNER_LINES} lines")
    }

    fn client(&self, ends: &Endpoints, program: &str, args: &[&str], secs: f64) -> Result<String> {
        let mut cmd = self.pinned(&ends.client_netns, self.pinning.client_cpu, program, args);
        command::output_bounded(&mut cmd, Duration::from_secs_f64(secs) + CLIENT_SLACK)
    }
}

/// That the sink saw the client from the address it must (a masquerade row that was not
/// masqueraded would still count its datagrams).
fn check_source(sink: &UdpSinkReport, expected: Option<IpAddr>) -> Result<()> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let from = sink.first_from.as_deref().context("udp-sink did not report where its first datagram came from")?;
    let seen: SocketAddr = from.parse().with_context(|| format!("udp-sink reported the sender {from:?}"))?;
    if seen.ip() != expected {
        bail!(
            "the server saw the client as {}, not as {expected}: the datapath did not translate as it should",
            seen.ip()
        );
    }
    Ok(())
}

/// `ethtool -K OUTSIDE_LINK tx on|off` in `netns` (with tx checksumming off the kernel drops
/// scatter-gather and so TSO/GSO: TCP then sends MTU-sized segments, checksummed in software).
fn set_tx_offload(netns: &str, on: bool) -> Result<()> {
    let state = if on { "on" } else { "off" };
    command::run_bounded(&mut netns_exec(netns, "ethtool", ["-K", OUTSIDE_LINK, "tx", state]), SERVER_LIMIT)
        .with_context(|| format!("turning tx offloads {state} on {OUTSIDE_LINK} in {netns}"))
}

fn parse_report<T: serde::de::DeserializeOwned>(output: &str, tool: &str) -> Result<T> {
    // The last line is the report (a server prints its `listening` line first).
    let line =
        output.lines().rev().find(|line| !line.trim().is_empty()).ok_or_else(|| anyhow!("{tool} printed nothing"))?;
    serde_json::from_str(line).with_context(|| format!("{tool} printed {line:?}, not its JSON report"))
}

/// Received throughput in Gbit/s from `iperf3 -J` of the client.
pub fn parse_iperf3(json: &str) -> Result<f64> {
    let value: Value = serde_json::from_str(json).context("iperf3 -J did not print JSON")?;
    if let Some(error) = value.get("error").and_then(Value::as_str) {
        bail!("iperf3: {error}");
    }
    let bps = value
        .pointer("/end/sum_received/bits_per_second")
        .and_then(Value::as_f64)
        .ok_or_else(|| anyhow!("iperf3 -J has no end.sum_received.bits_per_second"))?;
    Ok(bps / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iperf3_received_rate() {
        let json = r#"{"start":{},"intervals":[],"end":{"sum_sent":{"bits_per_second":3.1e10},
                      "sum_received":{"bits_per_second":3.0e10,"bytes":1}}}"#;
        assert_eq!(parse_iperf3(json).unwrap(), 30.0);
    }

    #[test]
    fn iperf3_errors_are_reported() {
        let json = r#"{"start":{},"intervals":[],"end":{},"error":"unable to connect to server: Connection refused"}"#;
        let err = parse_iperf3(json).unwrap_err();
        assert!(format!("{err}").contains("Connection refused"));
        assert!(parse_iperf3(r#"{"end":{}}"#).is_err());
        assert!(parse_iperf3("Connecting to host").is_err());
    }

    #[test]
    fn a_masquerade_row_must_be_masqueraded() {
        let sink = |from: &str| UdpSinkReport { received: 1, first_from: Some(from.into()), secs: 1.0, pps: 1.0 };
        let uplink: IpAddr = "fd00:203::1".parse().unwrap();
        assert!(check_source(&sink("[fd00:203::1]:40000"), Some(uplink)).is_ok());
        let err = check_source(&sink("[fd00:202::2]:40000"), Some(uplink)).unwrap_err();
        assert!(format!("{err}").contains("as fd00:202::2, not as fd00:203::1"), "{err}");
        assert!(check_source(&sink("10.203.0.1:5"), None).is_ok());
        let unreported = UdpSinkReport { first_from: None, ..sink("10.203.0.1:5") };
        assert!(check_source(&unreported, Some(uplink)).is_err());
    }

    #[test]
    fn loadgen_report_is_the_last_line() {
        let out = "{\"listening\":\"10.202.0.3:5301\"}\n{\"received\":10,\"secs\":0.5,\"pps\":18.0}\n\n";
        let sink: UdpSinkReport = parse_report(out, "udp-sink").unwrap();
        assert_eq!(sink.received, 10);
        assert!(parse_report::<UdpSinkReport>("", "udp-sink").is_err());
        assert!(parse_report::<UdpSinkReport>("garbage", "udp-sink").is_err());
    }

    #[test]
    fn metrics_know_their_direction() {
        assert!(Metric::UdpPps.higher_is_better());
        assert!(!Metric::RrP99Us.higher_is_better());
        assert!(!Metric::PublishMs.higher_is_better());
    }
}
