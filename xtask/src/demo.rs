//! `cargo xtask demo`: the whole job of bpfnet in throwaway namespaces, each step checked:
//! containers talking to each other, a container reaching the outside world masqueraded to the
//! uplink's address, a published port reached from outside with the client's real address,
//! and hairpin; then `bpfnet status` and `bpfnet conntrack ls`. The namespaces are removed
//! at the end, then `cargo xtask bench --quick` (about a minute) ends the demo.
//!
//! ```text
//!  c1, c2, c3 10.201.0.0/24 ── host ns (bpfnet) ── up0 10.250.0.1 ── outside ns 10.250.0.2
//!  c2 publishes 80 as 10.250.0.1:8080
//! ```

use std::collections::HashMap;
use std::fs;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use bpfnet_tests::sandbox::{netns_exec, Output, Sandbox, Uplink};
use serde_json::Value;

use crate::bench::{self, BenchArgs};
use crate::cargo_cmd::{self, Profile};
use crate::{command, interrupt, setup};

/// Only exists inside the sandbox's namespaces.
const SUBNET: &str = "10.201.0.0/24";
/// c2's TCP server, published on the uplink's address as [`PUBLISHED_PORT`].
const WEB_PORT: u16 = 80;
const PUBLISHED_PORT: u16 = 8080;
/// c3's UDP echo.
const UDP_PORT: u16 = 9090;
/// The outside world's TCP server, reached through masquerade.
const OUTSIDE_PORT: u16 = 7000;
/// Limit for one bpfnet command, one ping or one client of the demo.
const STEP_LIMIT: Duration = Duration::from_secs(60);
/// How long a server may take to exit after its client has finished.
const SERVER_LIMIT: Duration = Duration::from_secs(5);

/// `bpfnet_bin`: a binary to run instead of building one (the bench's too).
pub fn run(profile: Profile, bpfnet_bin: Option<PathBuf>) -> Result<()> {
    containers(profile, bpfnet_bin.clone())?;
    section("cargo xtask bench --quick");
    bench::run(BenchArgs::quick(bpfnet_bin))
}

/// The sandbox part, removed before the bench starts.
fn containers(profile: Profile, bpfnet_bin: Option<PathBuf>) -> Result<()> {
    section("setup");
    setup::run()?;
    let bpfnet_bin = match bpfnet_bin {
        Some(bin) => fs::canonicalize(&bin).with_context(|| format!("--bpfnet {}: no such file", bin.display()))?,
        None => {
            section("build");
            cargo_cmd::build(profile, &["bpfnet"])?;
            cargo_cmd::bpfnet_bin(profile)?
        }
    };

    interrupt::catch_interrupts()?;
    section("sandbox: a namespace that plays the host, and one behind its uplink that plays the outside world");
    let mut sandbox = Sandbox::create("bnd", bpfnet_bin, Output::Terminal)?;
    let mut checks = Checks::default();
    let outcome = sandbox.add_uplink().and_then(|uplink| scenario(&mut sandbox, &uplink, &mut checks));
    if outcome.is_err() && sandbox.agent_running() {
        // Its counters and drop reasons say where the packets of the failed step went.
        section("bpfnet status, to see where the packets went");
        if let Err(err) = command::run_bounded(sandbox.cli().arg("status"), STEP_LIMIT) {
            eprintln!("warning: {err:#}");
        }
    }
    section("teardown: bpfnet down, then remove the sandbox");
    let teardown = sandbox.teardown();
    match (outcome, teardown) {
        (Ok(()), Ok(())) => {
            println!("\ndemo: all {} checks passed", checks.passed.len());
            for line in &checks.passed {
                println!("  {line}");
            }
            Ok(())
        }
        (Err(err), teardown) => {
            if let Err(teardown) = teardown {
                eprintln!("error: {teardown:#}");
            }
            Err(err.context("demo failed (the sandbox was cleaned up)"))
        }
        (Ok(()), Err(teardown)) => Err(teardown),
    }
}

/// A container of the demo: `label` in what the demo prints, `name` for bpfnet and `ip netns`.
struct Container {
    label: &'static str,
    name: String,
    ip: Ipv4Addr,
}

/// What the demo has shown so far, one line each.
#[derive(Default)]
struct Checks {
    passed: Vec<String>,
}

impl Checks {
    fn pass(&mut self, line: String) -> Result<()> {
        println!("{line}  ok");
        self.passed.push(line);
        interrupt::check_interrupted()
    }
}

fn scenario(sandbox: &mut Sandbox, uplink: &Uplink, checks: &mut Checks) -> Result<()> {
    section(&format!("the bpfnet agent, with uplink {}", uplink.name));
    // add_uplink set BPFNET_UPLINK: the agent masquerades to the uplink's address.
    sandbox.start_agent()?;
    let network = sandbox.name("net");

    section("a network and three containers; c2 publishes port 80 as 8080");
    bpfnet(sandbox, &["network", "create", &network, "--subnet", SUBNET])?;
    let publish = format!("{PUBLISHED_PORT}:{WEB_PORT}");
    for (label, extra) in [("c1", None), ("c2", Some(["-p", publish.as_str()])), ("c3", None)] {
        let name = sandbox.name(label);
        let mut args = vec!["container", "create", &name, "--network", &network];
        args.extend(extra.iter().flatten());
        bpfnet(sandbox, &args)?;
    }
    bpfnet(sandbox, &["container", "ls"])?;
    let json = command::output_bounded(sandbox.cli().args(["container", "ls", "--json"]), STEP_LIMIT)?;
    let ips = container_ips(&json, &network)?;
    let container = |label: &'static str| -> Result<Container> {
        let name = sandbox.name(label);
        let ip =
            *ips.get(&name).ok_or_else(|| anyhow!("`bpfnet container ls --json` does not list container {name}"))?;
        Ok(Container { label, name, ip })
    };
    let (c1, c2, c3) = (container("c1")?, container("c2")?, container("c3")?);

    section("checks");
    let masquerade = masquerade_address(sandbox)?;
    ensure!(
        masquerade == Some(uplink.host_ip),
        "`bpfnet status` says the agent masquerades to {masquerade:?}, not to {} ({}'s address): \
         was the uplink made before the agent started?",
        uplink.host_ip,
        uplink.name
    );
    checks.pass(format!("status: masquerade to {} ({}'s address)", uplink.host_ip, uplink.name))?;

    for (from, to) in [(&c1, &c2), (&c1, &c3), (&c2, &c3)] {
        let replies = ping(&from.name, to.ip)?;
        checks.pass(format!("ping: {} -> {} ({}) {replies}", from.label, to.label, to.ip))?;
    }
    let replies = ping(&c1.name, uplink.outside_ip)?;
    checks.pass(format!("ping: {} -> outside ({}) {replies}", c1.label, uplink.outside_ip))?;

    // Between containers of one network nothing is translated: each end sees the other's own
    // address and port.
    for (proto, server, port) in [(Proto::Tcp, &c2, WEB_PORT), (Proto::Udp, &c3, UDP_PORT)] {
        let target = SocketAddrV4::new(server.ip, port);
        let seen = exchange(sandbox, proto, (&server.name, target), &c1.name, target)
            .with_context(|| format!("{proto}: {} could not reach {} at {target}", c1.label, server.label))?;
        ensure!(
            seen.server_peer == seen.client_local,
            "{proto}: {} sent from {} but {} saw {}: traffic between containers must not be translated",
            c1.label,
            seen.client_local,
            server.label,
            seen.server_peer
        );
        checks.pass(format!(
            "{proto}: {} -> {} {target}, seen by {} as {} ({}'s own address)",
            c1.label, server.label, server.label, seen.server_peer, c1.label
        ))?;
    }

    let outside_server = SocketAddrV4::new(uplink.outside_ip, OUTSIDE_PORT);
    let seen = exchange(sandbox, Proto::Tcp, (&uplink.outside_netns, outside_server), &c1.name, outside_server)
        .with_context(|| {
            format!("masquerade: {} could not reach the outside's server at {outside_server}", c1.label)
        })?;
    ensure!(
        *seen.server_peer.ip() == uplink.host_ip,
        "masquerade: the outside saw {} connect from {}, not from the uplink's address {}",
        c1.label,
        seen.server_peer,
        uplink.host_ip
    );
    checks.pass(format!(
        "masquerade: {} ({}) -> {outside_server}, seen from outside as {} (the uplink's address)",
        c1.label, seen.client_local, seen.server_peer
    ))?;

    let published = SocketAddrV4::new(uplink.host_ip, PUBLISHED_PORT);
    let web = SocketAddrV4::new(c2.ip, WEB_PORT);
    let seen = exchange(sandbox, Proto::Tcp, (&c2.name, web), &uplink.outside_netns, published).with_context(|| {
        format!("published port: the outside could not reach {}:{WEB_PORT} at {published}", c2.label)
    })?;
    ensure!(
        seen.server_peer == seen.client_local,
        "published port: the outside client connected from {} but {} saw {}: \
         the container must see the client's real address",
        seen.client_local,
        c2.label,
        seen.server_peer
    );
    checks.pass(format!(
        "published port: outside ({}) -> {published}, reaches {}:{WEB_PORT}, seen as {} (the client's own address)",
        seen.client_local, c2.label, seen.server_peer
    ))?;

    // Hairpin: the source becomes the host's address, so c2's replies come back through the
    // datapath (which translates them back) instead of going straight to c1.
    let seen = exchange(sandbox, Proto::Tcp, (&c2.name, web), &c1.name, published)
        .with_context(|| format!("hairpin: {} could not reach {}:{WEB_PORT} at {published}", c1.label, c2.label))?;
    ensure!(
        *seen.server_peer.ip() == uplink.host_ip,
        "hairpin: {} reached {published} and {} saw {}, not the uplink's address {}",
        c1.label,
        c2.label,
        seen.server_peer,
        uplink.host_ip
    );
    checks.pass(format!(
        "hairpin: {} ({}) -> {published}, reaches {}:{WEB_PORT}, seen as {} (the uplink's address)",
        c1.label, seen.client_local, c2.label, seen.server_peer
    ))?;

    section("bpfnet status: counters and drop reasons");
    bpfnet(sandbox, &["status"])?;
    section("bpfnet conntrack ls: the translated flows");
    bpfnet(sandbox, &["conntrack", "ls"])?;
    Ok(())
}

#[derive(Clone, Copy, Debug)]
enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One exchange as both ends saw it.
struct Seen {
    /// The client's socket address, as the client itself saw it.
    client_local: SocketAddrV4,
    /// The client's address, as the server saw it.
    server_peer: SocketAddrV4,
}

/// Start an echo server in `server.0` on `server.1`, wait until it listens, send one message
/// from `client` to `target`, check the echo, and return the addresses each end saw.
fn exchange(
    sandbox: &mut Sandbox,
    proto: Proto,
    server: (&str, SocketAddrV4),
    client: &str,
    target: SocketAddrV4,
) -> Result<Seen> {
    let (server_netns, listen) = server;
    let server_script = sandbox.write_scratch("server.py", SERVER)?;
    let client_script = sandbox.write_scratch("client.py", CLIENT)?;
    let script_args = |script: &PathBuf, addr: SocketAddrV4| {
        [
            script.as_os_str().to_owned(),
            proto.as_str().into(),
            addr.ip().to_string().into(),
            addr.port().to_string().into(),
        ]
    };

    let mut cmd = netns_exec(server_netns, "python3", script_args(&server_script, listen));
    cmd.stdout(Stdio::piped());
    let label = format!("the {proto} server in {server_netns}");
    let id = sandbox.spawn(&label, cmd)?;
    sandbox.read_line(id)?; // "listening": the client may start

    let mut cmd = netns_exec(client, "python3", script_args(&client_script, target));
    let client_out = command::output_bounded(&mut cmd, STEP_LIMIT)
        .with_context(|| format!("the {proto} client in {client} could not exchange with {target}"))?;
    let server_out = sandbox.finish(id, SERVER_LIMIT)?;
    Ok(Seen {
        client_local: tagged_address(&client_out, "local")
            .with_context(|| format!("the {proto} client in {client}"))?,
        server_peer: tagged_address(&server_out, "peer").with_context(|| label.clone())?,
    })
}

/// The address on the line `{tag} ADDRESS:PORT` of a peer script's output.
fn tagged_address(output: &str, tag: &str) -> Result<SocketAddrV4> {
    let line = output
        .lines()
        .find_map(|line| line.strip_prefix(tag)?.strip_prefix(' '))
        .ok_or_else(|| anyhow!("printed no line `{tag} ADDRESS:PORT`; its output: {output:?}"))?;
    line.trim().parse().with_context(|| format!("printed `{tag} {line}`, which is not ADDRESS:PORT"))
}

/// Ping `to` from `netns` 3 times; "N/3 replies" (at least one, or it fails).
fn ping(netns: &str, to: Ipv4Addr) -> Result<String> {
    const COUNT: u32 = 3;
    let count = COUNT.to_string();
    let to = to.to_string();
    let mut cmd = netns_exec(netns, "ping", ["-q", "-c", &count, "-i", "0.2", "-W", "1", &to]);
    let out =
        command::output_bounded(&mut cmd, STEP_LIMIT).with_context(|| format!("no ping reply from {to} in {netns}"))?;
    let received = ping_received(&out).ok_or_else(|| anyhow!("ping printed no `N received` line: {out:?}"))?;
    Ok(format!("{received}/{COUNT} replies"))
}

/// N of ping's summary line `3 packets transmitted, N received, ...`.
fn ping_received(output: &str) -> Option<u32> {
    output.lines().find_map(|line| {
        let (_, rest) = line.split_once("transmitted, ")?;
        let (count, _) = rest.split_once(" received")?;
        count.parse().ok()
    })
}

/// The agent's masquerade address from `bpfnet status --json` (None: masquerade off).
fn masquerade_address(sandbox: &Sandbox) -> Result<Option<Ipv4Addr>> {
    let json = command::output_bounded(sandbox.cli().args(["status", "--json"]), STEP_LIMIT)?;
    let status: Value =
        serde_json::from_str(&json).with_context(|| format!("`bpfnet status --json` did not print JSON: {json}"))?;
    match &status["datapath"]["uplink"]["masquerade_address"] {
        Value::Null => Ok(None),
        Value::String(addr) => addr
            .parse()
            .map(Some)
            .with_context(|| format!("`bpfnet status --json`: masquerade_address {addr:?} is not an IPv4 address")),
        other => bail!("`bpfnet status --json`: masquerade_address is {other}, not a string"),
    }
}

/// Print and run one bpfnet command of the demo.
fn bpfnet(sandbox: &Sandbox, args: &[&str]) -> Result<()> {
    command::run_bounded(sandbox.cli().args(args), STEP_LIMIT)?;
    interrupt::check_interrupted()
}

fn section(title: &str) {
    println!("\n==> {title}");
}

/// Container name -> address, from `bpfnet container ls --json`: a list of objects with
/// `name`, `network` and `ip` (an address, or an address with its prefix length).
fn container_ips(json: &str, network: &str) -> Result<HashMap<String, Ipv4Addr>> {
    const SOURCE: &str = "`bpfnet container ls --json`";
    let value: Value = serde_json::from_str(json).with_context(|| format!("{SOURCE} did not print JSON: {json}"))?;
    // Accept a bare list or {"containers": [...]}.
    let list = value
        .as_array()
        .or_else(|| value.get("containers").and_then(Value::as_array))
        .ok_or_else(|| anyhow!("{SOURCE} printed neither a list nor {{\"containers\": [...]}}: {value}"))?;
    let field = |item: &Value, key: &str| -> Result<String> {
        match item.get(key).and_then(Value::as_str) {
            Some(text) => Ok(text.to_string()),
            None => bail!("{SOURCE}: entry without a string field `{key}`: {item}"),
        }
    };
    let mut ips = HashMap::new();
    for item in list {
        let name = field(item, "name")?;
        let on = field(item, "network")?;
        let ip = field(item, "ip")?;
        if on != network {
            continue;
        }
        let address = ip.split('/').next().unwrap_or(&ip);
        let address: Ipv4Addr = address
            .parse()
            .with_context(|| format!("{SOURCE}: container {name} has `ip` {ip:?}, which is not an IPv4 address"))?;
        ips.insert(name, address);
    }
    Ok(ips)
}

// The peers: `server.py PROTO IP PORT` echoes one message (TCP line or UDP datagram), prints
// `listening ...` when it listens (the demo waits for it before starting the client) and
// `peer ADDRESS:PORT` (its client as it saw it) at the end; it gives up after 10 s.
// `client.py PROTO IP PORT` sends one message, checks the echo and prints `local ADDRESS:PORT`
// (its own socket address); it gives up after 3 s. The UDP client connects its socket, so
// the kernel only accepts an echo from the address it sent to: a reply that was not
// translated back fails.

const SERVER: &str = r#"
import socket, sys
proto, ip, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    if proto == "tcp":
        with socket.create_server((ip, port)) as server:
            server.settimeout(10)
            print(f"listening on {ip}:{port}/tcp", flush=True)
            conn, peer = server.accept()
            with conn:
                conn.settimeout(5)
                conn.sendall(conn.makefile("rb").readline())
    else:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((ip, port))
            sock.settimeout(10)
            print(f"listening on {ip}:{port}/udp", flush=True)
            data, peer = sock.recvfrom(2048)
            sock.sendto(data, peer)
except OSError as err:
    sys.exit(f"{proto} server on {ip}:{port}: {err}")
print(f"peer {peer[0]}:{peer[1]}", flush=True)
"#;

const CLIENT: &str = r#"
import socket, sys
proto, ip, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
message = f"hello over {proto}\n".encode()
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
try:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.settimeout(3)
        sock.connect((ip, port))
        local = sock.getsockname()
        sock.sendall(message)
        reply = sock.makefile("rb").readline() if proto == "tcp" else sock.recv(2048)
except OSError as err:
    sys.exit(f"{proto} client to {ip}:{port}: {err}")
if reply != message:
    sys.exit(f"{proto} client to {ip}:{port}: sent {message!r}, got back {reply!r}")
print(f"local {local[0]}:{local[1]}")
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ips_from_a_list() {
        let json = r#"[{"name":"a","network":"n","ip":"10.201.0.2/24"},
                       {"name":"b","network":"n","ip":"10.201.0.3"},
                       {"name":"x","network":"other","ip":"10.9.0.2"}]"#;
        let ips = container_ips(json, "n").unwrap();
        assert_eq!(ips.len(), 2);
        assert_eq!(ips["a"].to_string(), "10.201.0.2");
        assert_eq!(ips["b"].to_string(), "10.201.0.3");
    }

    #[test]
    fn ips_from_an_object() {
        let json = r#"{"containers":[{"name":"a","network":"n","ip":"10.201.0.2"}]}"#;
        assert_eq!(container_ips(json, "n").unwrap().len(), 1);
    }

    #[test]
    fn addresses_from_the_peers_output() {
        let out = "listening on 10.201.0.3:80/tcp\npeer 10.250.0.1:40123\n";
        assert_eq!(tagged_address(out, "peer").unwrap().to_string(), "10.250.0.1:40123");
        assert_eq!(tagged_address("local 10.201.0.2:5\n", "local").unwrap().port(), 5);
        assert!(tagged_address("peerless 1.2.3.4:5\n", "peer").is_err());
        let err = tagged_address("peer 10.250.0.1\n", "peer").unwrap_err();
        assert!(format!("{err:#}").contains("not ADDRESS:PORT"), "{err:#}");
    }

    #[test]
    fn ping_replies() {
        let out =
            "--- 10.201.0.3 ping statistics ---\n3 packets transmitted, 2 received, 33% packet loss, time 401ms\n";
        assert_eq!(ping_received(out), Some(2));
        assert_eq!(ping_received("nothing"), None);
    }

    #[test]
    fn a_missing_field_is_named() {
        let err = container_ips(r#"[{"name":"a","network":"n"}]"#, "n").unwrap_err();
        assert!(format!("{err:#}").contains("`ip`"), "{err:#}");
        assert!(container_ips(r#"[{"name":"a","network":"n","ip":"nope"}]"#, "n").is_err());
        assert!(container_ips("not json", "n").is_err());
    }
}
