//! One client exchange of the host-access tests, as a process of its own: it joins a cgroup
//! (`--cgroup DIR`: its PID into DIR/cgroup.procs) and a network namespace (`--netns NAME`)
//! before it opens a socket, which the test process itself must never do. It prints what its
//! socket saw as one JSON object: the answer, the peer (`getpeername`) and, for UDP, the
//! answer's source (`recvfrom`); on failure `{"error": ..., "kind": ...}` and exit status 1.
//!
//! sockclient [--cgroup DIR] [--netns NAME] tcp|udp|udp-connected ADDR:PORT PAYLOAD
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    os::fd::AsFd,
    process::ExitCode,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

const IO_TIMEOUT: Duration = Duration::from_secs(3);

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(seen) => {
            println!("{seen}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let kind = e.downcast_ref::<std::io::Error>().map(|io| format!("{:?}", io.kind()));
            println!("{}", json!({ "error": format!("{e:#}"), "kind": kind }));
            ExitCode::FAILURE
        }
    }
}

fn run(mut args: Vec<String>) -> Result<Value> {
    let mut option = |name: &str| -> Option<String> {
        let at = args.iter().position(|a| a == name)?;
        let value = args.get(at + 1).cloned();
        args.drain(at..(at + 2).min(args.len()));
        value
    };
    let (cgroup, netns) = (option("--cgroup"), option("--netns"));
    let [mode, addr, payload] = args.as_slice() else {
        bail!("usage: sockclient [--cgroup DIR] [--netns NAME] tcp|udp|udp-connected ADDR:PORT PAYLOAD");
    };
    let addr: SocketAddr = addr.parse().with_context(|| format!("{addr:?} is not ADDR:PORT"))?;
    if let Some(dir) = cgroup {
        std::fs::write(format!("{dir}/cgroup.procs"), std::process::id().to_string())
            .with_context(|| format!("joining cgroup {dir}"))?;
    }
    if let Some(name) = netns {
        let ns = std::fs::File::open(format!("/run/netns/{name}")).with_context(|| format!("opening namespace {name}"))?;
        // Single-threaded: the whole process moves.
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
    }
    match mode.as_str() {
        "tcp" => {
            let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
            stream.set_read_timeout(Some(IO_TIMEOUT))?;
            stream.write_all(payload.as_bytes())?;
            let mut answer = vec![0u8; payload.len()];
            stream.read_exact(&mut answer)?;
            Ok(json!({ "answer": String::from_utf8_lossy(&answer), "peer": stream.peer_addr()?.to_string() }))
        }
        "udp" | "udp-connected" => {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.set_read_timeout(Some(IO_TIMEOUT))?;
            let peer = if mode == "udp-connected" {
                socket.connect(addr)?;
                socket.send(payload.as_bytes())?;
                Some(socket.peer_addr()?.to_string())
            } else {
                socket.send_to(payload.as_bytes(), addr)?;
                None
            };
            let mut buf = [0u8; 1500];
            let (n, from) = socket.recv_from(&mut buf)?;
            Ok(json!({ "answer": String::from_utf8_lossy(&buf[..n]), "from": from.to_string(), "peer": peer }))
        }
        other => bail!("unknown mode {other:?}: tcp, udp or udp-connected"),
    }
}
