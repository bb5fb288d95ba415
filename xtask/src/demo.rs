//! `cargo xtask demo`: one network, three containers, and traffic between them (ping, a TCP
//! exchange, a UDP echo), all in throwaway namespaces that are removed at the end; then
//! `cargo xtask bench --quick` (about a minute), whose table ends the demo.

use std::collections::HashMap;
use std::fs;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::bench::{self, BenchArgs};
use crate::cargo_cmd::{self, Profile};
use crate::sandbox::{self, Sandbox};
use crate::{command, setup};

/// Only exists inside the sandbox's namespaces.
const SUBNET: &str = "10.201.0.0/24";
const CONTAINERS: [&str; 3] = ["c1", "c2", "c3"];
const TCP_PORT: &str = "8080";
const UDP_PORT: &str = "9090";
/// Limit for one bpfnet command (or one ping) of the demo.
const STEP_LIMIT: Duration = Duration::from_secs(60);
/// How long a server may take to exit after its client has finished.
const SERVER_LIMIT: Duration = Duration::from_secs(5);

/// `bpfnet_bin`: a binary to run instead of building one (the bench's too).
pub fn run(profile: Profile, bpfnet_bin: Option<PathBuf>) -> Result<()> {
    containers(profile, bpfnet_bin.clone())?;
    section("cargo xtask bench --quick");
    bench::run(BenchArgs::quick(bpfnet_bin))
}

/// The three-container part, its sandbox removed before the bench starts.
fn containers(profile: Profile, bpfnet_bin: Option<PathBuf>) -> Result<()> {
    section("setup");
    setup::run()?;
    let bpfnet_bin = match bpfnet_bin {
        Some(bin) => fs::canonicalize(&bin)
            .with_context(|| format!("--bpfnet {}: no such file", bin.display()))?,
        None => {
            section("build");
            cargo_cmd::build(profile, &["bpfnet"])?;
            cargo_cmd::bpfnet_bin(profile)?
        }
    };

    sandbox::catch_interrupts()?;
    section("sandbox: a namespace that plays the host");
    let mut sandbox = Sandbox::create("bnd", bpfnet_bin)?;
    let outcome = scenario(&mut sandbox);
    section("teardown: bpfnet down, then remove the sandbox");
    let teardown = sandbox.teardown();
    match (outcome, teardown) {
        (Ok(()), Ok(())) => {
            println!("\ndemo: the containers passed");
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

fn scenario(sandbox: &mut Sandbox) -> Result<()> {
    section("the bpfnet agent, as a background service of the sandbox host");
    sandbox.start_agent(&[])?;
    let network = sandbox.name("net");
    let names: Vec<String> = CONTAINERS
        .iter()
        .map(|suffix| sandbox.name(suffix))
        .collect();

    section("network");
    bpfnet(
        sandbox,
        &["network", "create", &network, "--subnet", SUBNET],
    )?;
    bpfnet(sandbox, &["network", "ls"])?;
    bpfnet(sandbox, &["network", "inspect", &network])?;

    section("containers");
    for name in &names {
        bpfnet(
            sandbox,
            &["container", "create", name, "--network", &network],
        )?;
    }
    bpfnet(sandbox, &["container", "ls"])?;
    let json = command::output_bounded(
        sandbox.bpfnet().args(["container", "ls", "--json"]),
        STEP_LIMIT,
    )?;
    let ips = container_ips(&json, &network)?;
    let ip = |name: &String| -> Result<String> {
        ips.get(name)
            .map(IpAddr::to_string)
            .ok_or_else(|| anyhow!("`bpfnet container ls --json` does not list container {name}"))
    };
    let [c1, c2, c3] = [&names[0], &names[1], &names[2]];
    let (ip2, ip3) = (ip(c2)?, ip(c3)?);
    sandbox::check_interrupted()?;

    section("ping");
    for (from, to, to_ip) in [(c1, c2, &ip2), (c1, c3, &ip3), (c2, c3, &ip3)] {
        println!("-- {from} -> {to}");
        let mut ping = sandbox.in_netns(from, "ping", ["-c", "3", "-i", "0.2", "-W", "1", to_ip]);
        command::run_bounded(&mut ping, STEP_LIMIT)?;
        sandbox::check_interrupted()?;
    }

    section(&format!("TCP: {c1} -> {c2}:{TCP_PORT}"));
    exchange(
        sandbox,
        "tcp",
        (c2, &ip2, TCP_PORT),
        c1,
        (TCP_SERVER, TCP_CLIENT),
    )?;

    section(&format!("UDP: {c1} -> {c3}:{UDP_PORT}"));
    exchange(
        sandbox,
        "udp",
        (c3, &ip3, UDP_PORT),
        c1,
        (UDP_SERVER, UDP_CLIENT),
    )?;

    section("status: counters and drop reasons");
    bpfnet(sandbox, &["status"])?;
    Ok(())
}

/// Start the server script in `server.0` on `server.1:server.2`, wait until it listens,
/// run the client script in `client`, and check that both ends finished.
fn exchange(
    sandbox: &mut Sandbox,
    proto: &str,
    server: (&str, &str, &str),
    client: &str,
    scripts: (&str, &str),
) -> Result<()> {
    let (server_netns, ip, port) = server;
    let server_script = sandbox.write_scratch(&format!("{proto}_server.py"), scripts.0)?;
    let client_script = sandbox.write_scratch(&format!("{proto}_client.py"), scripts.1)?;

    let cmd = sandbox.in_netns(
        server_netns,
        "python3",
        [server_script.as_os_str(), ip.as_ref(), port.as_ref()],
    );
    let label = format!("the {proto} server in {server_netns}");
    let server = sandbox.spawn(&label, cmd)?;
    println!("{}", sandbox.read_line(server)?);

    let mut cmd = sandbox.in_netns(
        client,
        "python3",
        [client_script.as_os_str(), ip.as_ref(), port.as_ref()],
    );
    command::run_bounded(&mut cmd, STEP_LIMIT)
        .with_context(|| format!("the {proto} client in {client}"))?;
    print!("{}", sandbox.finish(server, SERVER_LIMIT)?);
    sandbox::check_interrupted()
}

/// Print and run one bpfnet command of the demo.
fn bpfnet(sandbox: &Sandbox, args: &[&str]) -> Result<()> {
    command::run_bounded(sandbox.bpfnet().args(args), STEP_LIMIT)?;
    sandbox::check_interrupted()
}

fn section(title: &str) {
    println!("\n==> {title}");
}

/// Container name -> address, from `bpfnet container ls --json`: a list of objects with
/// `name`, `network` and `ip` (an address, or an address with its prefix length).
fn container_ips(json: &str, network: &str) -> Result<HashMap<String, IpAddr>> {
    const SOURCE: &str = "`bpfnet container ls --json`";
    let value: Value = serde_json::from_str(json)
        .with_context(|| format!("{SOURCE} did not print JSON: {json}"))?;
    // Accept a bare list or {"containers": [...]}.
    let list = value
        .as_array()
        .or_else(|| value.get("containers").and_then(Value::as_array))
        .ok_or_else(|| {
            anyhow!("{SOURCE} printed neither a list nor {{\"containers\": [...]}}: {value}")
        })?;
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
        let address: IpAddr = address.parse().with_context(|| {
            format!("{SOURCE}: container {name} has `ip` {ip:?}, which is not an address")
        })?;
        ips.insert(name, address);
    }
    Ok(ips)
}

// The container peers. Each server prints one line when it listens (the demo waits for it
// before starting the client) and gives up after 10 s; each client after 2-3 s.

const TCP_SERVER: &str = r#"
import socket, sys
ip, port = sys.argv[1], int(sys.argv[2])
with socket.create_server((ip, port)) as server:
    server.settimeout(10)
    print(f"tcp server listening on {ip}:{port}", flush=True)
    conn, (peer, _) = server.accept()
    with conn:
        conn.settimeout(5)
        line = conn.makefile("r").readline().strip()
        conn.sendall(f"hello {peer}, you said {line!r}\n".encode())
print(f"tcp server: {peer} said {line!r}", flush=True)
"#;

const TCP_CLIENT: &str = r#"
import socket, sys
ip, port = sys.argv[1], int(sys.argv[2])
try:
    with socket.create_connection((ip, port), timeout=3) as conn:
        conn.sendall(b"ping over tcp\n")
        reply = conn.makefile("r").readline().strip()
except OSError as err:
    sys.exit(f"tcp client: {ip}:{port}: {err}")
if not reply:
    sys.exit("tcp client: the server closed without answering")
print(f"tcp client got: {reply}")
"#;

const UDP_SERVER: &str = r#"
import socket, sys
ip, port = sys.argv[1], int(sys.argv[2])
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
    sock.bind((ip, port))
    sock.settimeout(10)
    print(f"udp echo listening on {ip}:{port}", flush=True)
    data, peer = sock.recvfrom(2048)
    sock.sendto(data, peer)
print(f"udp echo: echoed {data!r} to {peer[0]}:{peer[1]}", flush=True)
"#;

const UDP_CLIENT: &str = r#"
import socket, sys
ip, port = sys.argv[1], int(sys.argv[2])
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
    sock.settimeout(2)
    try:
        sock.sendto(b"ping over udp", (ip, port))
        data, peer = sock.recvfrom(2048)
    except OSError as err:
        sys.exit(f"udp client: no echo from {ip}:{port} within 2 s: {err}")
if data != b"ping over udp":
    sys.exit(f"udp client: wrong echo {data!r}")
print(f"udp client got the echo {data!r} from {peer[0]}")
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
    fn a_missing_field_is_named() {
        let err = container_ips(r#"[{"name":"a","network":"n"}]"#, "n").unwrap_err();
        assert!(format!("{err:#}").contains("`ip`"), "{err:#}");
        assert!(container_ips(r#"[{"name":"a","network":"n","ip":"nope"}]"#, "n").is_err());
        assert!(container_ips("not json", "n").is_err());
    }
}
