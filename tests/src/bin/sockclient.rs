//! One client exchange of the host-access tests, as a process of its own: it joins a cgroup
//! (`--cgroup DIR`: its PID into DIR/cgroup.procs) and a network namespace (`--netns NAME`)
//! before it opens a socket, which the test process itself must never do. It prints what its
//! socket saw as one JSON object: the answer, the peer (`getpeername`) and, for UDP, the
//! answer's source (`recvfrom`); on failure `{"error": ..., "kind": ..., "errno": ...}` and
//! exit status 1.
//!
//! The socket's family is the address's: `[::ffff:10.0.0.1]:80` or `[::1]:80` make an
//! AF_INET6 socket, dual-stack (as Java's) unless `--v6only` (IPV6_V6ONLY).
//!
//! sockclient [--cgroup DIR] [--netns NAME] [--v6only] tcp|udp|udp-connected ADDR:PORT PAYLOAD
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    os::fd::{AsFd, OwnedFd},
    process::ExitCode,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use nix::sys::{
    socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage},
    time::TimeVal,
};
use serde_json::{json, Value};

const IO_TIMEOUT: Duration = Duration::from_secs(3);

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(seen) => {
            println!("{seen}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let io = e.downcast_ref::<std::io::Error>();
            let (kind, errno) = (io.map(|io| format!("{:?}", io.kind())), io.and_then(std::io::Error::raw_os_error));
            println!("{}", json!({ "error": format!("{e:#}"), "kind": kind, "errno": errno }));
            ExitCode::FAILURE
        }
    }
}

fn run(mut args: Vec<String>) -> Result<Value> {
    let v6only = match args.iter().position(|a| a == "--v6only") {
        Some(at) => {
            args.remove(at);
            true
        }
        None => false,
    };
    let mut option = |name: &str| -> Option<String> {
        let at = args.iter().position(|a| a == name)?;
        let value = args.get(at + 1).cloned();
        args.drain(at..(at + 2).min(args.len()));
        value
    };
    let (cgroup, netns) = (option("--cgroup"), option("--netns"));
    let [mode, addr, payload] = args.as_slice() else {
        bail!("usage: sockclient [--cgroup DIR] [--netns NAME] [--v6only] tcp|udp|udp-connected ADDR:PORT PAYLOAD");
    };
    let addr: SocketAddr = addr.parse().with_context(|| format!("{addr:?} is not ADDR:PORT"))?;
    if v6only && addr.is_ipv4() {
        bail!("--v6only needs an IPv6 address, not {addr}");
    }
    if let Some(dir) = cgroup {
        std::fs::write(format!("{dir}/cgroup.procs"), std::process::id().to_string())
            .with_context(|| format!("joining cgroup {dir}"))?;
    }
    if let Some(name) = netns {
        let ns =
            std::fs::File::open(format!("/run/netns/{name}")).with_context(|| format!("opening namespace {name}"))?;
        // Single-threaded: the whole process moves.
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
    }
    match mode.as_str() {
        "tcp" => {
            let mut stream = TcpStream::from(connected(socket_for(addr, SockType::Stream, v6only)?, addr)?);
            stream.write_all(payload.as_bytes())?;
            let mut answer = vec![0u8; payload.len()];
            stream.read_exact(&mut answer)?;
            Ok(json!({ "answer": String::from_utf8_lossy(&answer), "peer": stream.peer_addr()?.to_string() }))
        }
        "udp" | "udp-connected" => {
            let fd = socket_for(addr, SockType::Datagram, v6only)?;
            let (socket, peer) = if mode == "udp-connected" {
                let socket = UdpSocket::from(connected(fd, addr)?);
                socket.send(payload.as_bytes())?;
                let peer = socket.peer_addr()?.to_string();
                (socket, Some(peer))
            } else {
                let socket = UdpSocket::from(fd);
                socket.send_to(payload.as_bytes(), addr)?;
                (socket, None)
            };
            let mut buf = [0u8; 1500];
            let (n, from) = socket.recv_from(&mut buf)?;
            Ok(json!({ "answer": String::from_utf8_lossy(&buf[..n]), "from": from.to_string(), "peer": peer }))
        }
        other => bail!("unknown mode {other:?}: tcp, udp or udp-connected"),
    }
}

/// A socket of `addr`'s family, with the exchange's timeouts (SO_SNDTIMEO also bounds a
/// blocking connect). An AF_INET6 socket is dual-stack unless `v6only`: set either way, so
/// that the host's net.ipv6.bindv6only does not decide.
fn socket_for(addr: SocketAddr, ty: SockType, v6only: bool) -> Result<OwnedFd> {
    let family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let fd =
        socket::socket(family, ty, SockFlag::SOCK_CLOEXEC, None).map_err(std::io::Error::from).context("socket")?;
    if addr.is_ipv6() {
        socket::setsockopt(&fd, sockopt::Ipv6V6Only, &v6only).map_err(std::io::Error::from).context("IPV6_V6ONLY")?;
    }
    let timeout = TimeVal::new(IO_TIMEOUT.as_secs() as _, 0);
    socket::setsockopt(&fd, sockopt::SendTimeout, &timeout).map_err(std::io::Error::from).context("SO_SNDTIMEO")?;
    socket::setsockopt(&fd, sockopt::ReceiveTimeout, &timeout).map_err(std::io::Error::from).context("SO_RCVTIMEO")?;
    Ok(fd)
}

fn connected(fd: OwnedFd, addr: SocketAddr) -> Result<OwnedFd> {
    socket::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrStorage::from(addr))
        .map_err(std::io::Error::from)
        .with_context(|| format!("connecting to {addr}"))?;
    Ok(fd)
}
