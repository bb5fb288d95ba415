//! Harness for bpfnet's black-box tests: each test gets a [`Sandbox`] (see [`sandbox`], which
//! `cargo xtask demo` and `bench` use too), a host network namespace of its own with its own
//! state and pin directories, all named with a per-run prefix, and drives the real `bpfnet`
//! binary against it. Dropping the sandbox removes everything it made, also when the test
//! panicked. Traffic only ever goes to addresses inside the sandbox's namespaces.
//!
//! What only the tests need is here: the sandbox's panicking conveniences (a test fails at
//! the line that failed), echo servers, and the helpers that look at traffic and the kernel.
pub mod engines;
pub mod process;
pub mod sandbox;

use std::{
    fs::File,
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsFd, AsRawFd, FromRawFd},
    path::PathBuf,
    process::{Command, Output, Stdio},
    sync::{atomic::Ordering, Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use nix::sched::{setns, CloneFlags};
pub use sandbox::{
    cgroup2_mount, namespaces_with_prefix, netns_exec, BackgroundId, Sandbox, Underlay, BEHIND_IP6, OUTSIDE_IP,
    OUTSIDE_IP6, ROUTER_IP6, UPLINK, UPLINK_HOST_IP, UPLINK_HOST_IP6, UPLINK_PEER,
};
use serde_json::Value;

/// Bound on every socket operation in the tests, so a broken datapath fails a test instead of
/// hanging it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a test server waits for its clients before it gives up, so that a sandbox never
/// waits on a server whose clients were (rightly or wrongly) blocked.
pub const SERVER_LIFETIME: Duration = Duration::from_secs(20);

/// The bpfnet binary under test: $BPFNET_BIN (set by `cargo xtask test`), else the one next to
/// this test executable's target directory.
pub fn bpfnet_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("BPFNET_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/bpfnet
    let bin = exe.parent().and_then(|d| d.parent()).expect("target dir").join("bpfnet");
    assert!(bin.exists(), "{} not found: build it (cargo build -p bpfnet) or set BPFNET_BIN", bin.display());
    bin
}

/// The developer tools' binary under test: $BPFNET_DEVKIT_BIN (set by `cargo xtask test`),
/// else `bpfnet-devkit` next to [`bpfnet_bin`].
pub fn devkit_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("BPFNET_DEVKIT_BIN") {
        return bin.into();
    }
    let bin = bpfnet_bin().with_file_name("bpfnet-devkit");
    assert!(
        bin.exists(),
        "{} not found: build it (cargo build -p bpfnet --features devkit) or set BPFNET_DEVKIT_BIN",
        bin.display()
    );
    bin
}

/// The CNI plugin under test: $BPFNET_CNI_BIN (set by `cargo xtask test`), else `bpfnet-cni`
/// next to [`bpfnet_bin`].
pub fn cni_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("BPFNET_CNI_BIN") {
        return bin.into();
    }
    let bin = bpfnet_bin().with_file_name("bpfnet-cni");
    assert!(bin.exists(), "{} not found: build it (cargo build -p bpfnet) or set BPFNET_CNI_BIN", bin.display());
    bin
}

/// The tests' conveniences: each panics at the test's line when a step fails.
impl Sandbox {
    /// A sandbox of the tests (prefix `bt...`, output captured, the agent logging at info).
    #[track_caller]
    pub fn new() -> Self {
        let mut sb = Sandbox::create("bt", bpfnet_bin(), sandbox::Output::Captured)
            .unwrap_or_else(|e| panic!("creating the sandbox: {e:#}"));
        sb.set_agent_env("BPFNET_LOG", "info");
        sb
    }

    /// A sandbox whose host has an uplink veth (`up0`, 10.250.0.1/24) to an outside namespace
    /// (10.250.0.2/24) and a default route through it; bpfnet is told to use it (BPFNET_UPLINK).
    #[track_caller]
    pub fn with_uplink() -> Self {
        let mut sb = Self::new();
        sb.add_uplink().unwrap_or_else(|e| panic!("{e:#}"));
        sb
    }

    /// Starts the agent unless it runs, and waits until it answers on its socket.
    #[track_caller]
    pub fn ensure_agent(&self) {
        self.start_agent().unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Runs a bpfnet command against this sandbox's agent (started if needed).
    #[track_caller]
    pub fn bpfnet(&self, args: &[&str]) -> Output {
        self.ensure_agent();
        self.client(args)
    }

    /// Runs a bpfnet command against this sandbox's socket, whether an agent runs or not.
    pub fn client(&self, args: &[&str]) -> Output {
        self.cli().args(args).output().expect("running bpfnet")
    }

    /// Runs bpfnet, panics with its output unless it succeeded; returns stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.bpfnet(args);
        assert!(
            out.status.success(),
            "bpfnet {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs bpfnet, panics unless it failed; returns stderr.
    #[track_caller]
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.bpfnet(args);
        assert!(!out.status.success(), "bpfnet {args:?} should have failed:\n{}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    #[track_caller]
    pub fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).expect("bpfnet printed invalid JSON")
    }

    /// The IPv6 address bpfnet gave a container (on a dual-stack network).
    #[track_caller]
    pub fn container_ip6(&self, name: &str) -> Ipv6Addr {
        let containers = self.json(&["container", "ls", "--json"]);
        let found = containers.as_array().unwrap().iter().find(|c| c["name"] == name).cloned();
        let ip6 = found.and_then(|c| c["ip6"].as_str().map(str::to_owned));
        ip6.unwrap_or_else(|| panic!("container {name} has no IPv6 address in `container ls`")).parse().unwrap()
    }

    /// The address bpfnet gave a container.
    #[track_caller]
    pub fn container_ip(&self, name: &str) -> Ipv4Addr {
        let all = self.json(&["container", "ls", "--json"]);
        let ip = all.as_array().unwrap().iter().find(|c| c["name"] == name).expect("container listed")["ip"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        ip
    }

    /// A drop or event counter from `bpfnet status --json`.
    #[track_caller]
    pub fn counter(&self, section: &str, name: &str) -> u64 {
        self.json(&["status", "--json"])["datapath"][section][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no {section}.{name} in status"))
    }

    /// Starts a TCP echo server in `netns` on `addr` that accepts up to `connections`
    /// connections (each served on its own thread, echoing until the client closes), and gives
    /// up waiting for them after [`SERVER_LIFETIME`]. Returns the peers it saw.
    pub fn tcp_echo_server(&mut self, netns: &str, addr: impl Into<SocketAddr>, connections: usize) -> Peers {
        let addr = addr.into();
        let listener = in_netns(netns, move || Ok(TcpListener::bind(addr)?)).expect("binding the TCP server");
        listener.set_nonblocking(true).unwrap();
        let peers = Peers::default();
        let seen = peers.clone();
        self.serve(move |stop| {
            let deadline = Instant::now() + SERVER_LIFETIME;
            let mut handlers = Vec::new();
            while handlers.len() < connections && Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                let (mut stream, peer) = match listener.accept() {
                    Ok(accepted) => accepted,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                        continue;
                    }
                    Err(_) => break,
                };
                seen.0.lock().unwrap().push(peer);
                handlers.push(std::thread::spawn(move || {
                    stream.set_nonblocking(false).ok();
                    stream.set_read_timeout(Some(SERVER_LIFETIME)).ok();
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 || stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }));
            }
            for handler in handlers {
                let _ = handler.join();
            }
        });
        peers
    }

    /// Starts a UDP echo server in `netns` on `addr` that answers up to `datagrams` datagrams
    /// within [`SERVER_LIFETIME`]. Returns the peers it saw.
    pub fn udp_echo_server(&mut self, netns: &str, addr: impl Into<SocketAddr>, datagrams: usize) -> Peers {
        let addr = addr.into();
        let socket = in_netns(netns, move || Ok(UdpSocket::bind(addr)?)).expect("binding the UDP server");
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let peers = Peers::default();
        let seen = peers.clone();
        self.serve(move |stop| {
            let deadline = Instant::now() + SERVER_LIFETIME;
            let mut buf = vec![0u8; 65_536];
            let mut answered = 0;
            while answered < datagrams && Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                let Ok((n, peer)) = socket.recv_from(&mut buf) else { continue };
                seen.0.lock().unwrap().push(peer);
                socket.send_to(&buf[..n], peer).ok();
                answered += 1;
            }
        });
        peers
    }
}

/// Peers a test server saw, in order.
#[derive(Clone, Default)]
pub struct Peers(Arc<Mutex<Vec<SocketAddr>>>);

impl Peers {
    pub fn get(&self) -> Vec<SocketAddr> {
        self.0.lock().unwrap().clone()
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs a command, failing with its output unless it succeeded; returns stdout.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program).args(args).output().with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!("{program} {args:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `f` on a throwaway thread inside network namespace `netns` (sockets it creates stay
/// bound to that namespace); the calling thread never changes namespace.
pub fn in_netns<T: Send + 'static>(netns: &str, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let ns = File::open(format!("/run/netns/{netns}")).with_context(|| format!("opening namespace {netns}"))?;
    std::thread::spawn(move || {
        setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).context("setns")?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in namespace panicked"))?
}

/// One ICMP (or ICMPv6) echo from `netns` to `ip` with the real ping; true if answered.
pub fn ping(netns: &str, ip: impl Into<IpAddr>) -> bool {
    ping_with_size(netns, ip, 56)
}

/// The same with `size` bytes of echo data (ping's `-s`; above the MTU it is fragmented).
pub fn ping_with_size(netns: &str, ip: impl Into<IpAddr>, size: usize) -> bool {
    let ip = ip.into();
    Command::new("ip")
        .args(["netns", "exec", netns, "ping", "-c", "1", "-W", "1", "-s", &size.to_string(), &ip.to_string()])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Sends `payload` over a new TCP connection from `netns` to `addr` (either family) and
/// returns the answer.
pub fn tcp_exchange(netns: &str, addr: impl Into<SocketAddr>, payload: &'static [u8]) -> Result<Vec<u8>> {
    let addr = addr.into();
    in_netns(netns, move || {
        let mut stream =
            TcpStream::connect_timeout(&addr, IO_TIMEOUT).with_context(|| format!("connecting to {addr}"))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.write_all(payload)?;
        let mut answer = vec![0u8; payload.len()];
        stream.read_exact(&mut answer).with_context(|| format!("reading the answer from {addr}"))?;
        Ok(answer)
    })
}

/// Sends one datagram from `netns` to `addr` (either family) and returns the answer.
pub fn udp_exchange(netns: &str, addr: impl Into<SocketAddr>, payload: &'static [u8]) -> Result<Vec<u8>> {
    let addr = addr.into();
    in_netns(netns, move || {
        let socket = UdpSocket::bind(unspecified_of(&addr))?;
        socket.set_read_timeout(Some(IO_TIMEOUT))?;
        socket.send_to(payload, addr)?;
        let mut buf = vec![0u8; 65_536];
        let (n, from) = socket.recv_from(&mut buf).with_context(|| format!("waiting for the answer from {addr}"))?;
        if from != addr {
            bail!("answer came from {from}, not {addr}");
        }
        Ok(buf[..n].to_vec())
    })
}

/// Any local address of `addr`'s family, port 0: what a client binds.
fn unspecified_of(addr: &SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}

/// Sends one datagram from `netns` to `addr` on a connected socket and waits for what comes
/// back: `Ok(true)` when the socket reports the port unreachable (ECONNREFUSED: the ICMP or
/// ICMPv6 error reached it), `Ok(false)` when nothing came within [`IO_TIMEOUT`].
pub fn udp_refused(netns: &str, addr: impl Into<SocketAddr>) -> Result<bool> {
    let addr = addr.into();
    in_netns(netns, move || {
        let socket = UdpSocket::bind(unspecified_of(&addr))?;
        socket.connect(addr)?;
        socket.set_read_timeout(Some(IO_TIMEOUT))?;
        socket.send(b"anyone there?")?;
        let mut buf = [0u8; 64];
        match socket.recv(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(true),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => Ok(false),
            Err(e) => Err(e).with_context(|| format!("waiting for an answer from {addr}")),
            Ok(n) => bail!("{addr} answered {n} bytes: the port is open"),
        }
    })
}

/// Program ids the kernel reports on an interface's tcx ingress, asked from inside `netns`
/// (BPF_PROG_QUERY: the kernel's view, not bpfnet's bookkeeping), with each program's name.
pub fn tcx_ingress_programs(netns: &str, ifname: &str) -> Result<Vec<(u32, String)>> {
    let ifname = ifname.to_owned();
    in_netns(netns, move || {
        let (_, programs) = aya::programs::SchedClassifier::query_tcx(&ifname, aya::programs::TcAttachType::Ingress)
            .with_context(|| format!("querying tcx ingress of {ifname}"))?;
        Ok(programs.iter().map(|p| (p.id(), p.name_as_str().unwrap_or_default().to_owned())).collect())
    })
}

/// Names of links in `netns` (`ip -n NETNS -j link`).
pub fn links_in(netns: &str) -> Vec<String> {
    let out = run("ip", &["-n", netns, "-j", "link", "show"]).unwrap_or_default();
    let links: Value = serde_json::from_str(&out).unwrap_or(Value::Array(vec![]));
    links.as_array().into_iter().flatten().filter_map(|l| l["ifname"].as_str().map(str::to_owned)).collect()
}

/// Number of entries in a pinned map (bpftool's view of the kernel map).
pub fn pinned_map_len(bpffs: &std::path::Path, map: &str) -> usize {
    let path = bpffs.join("maps").join(map);
    let out =
        run("bpftool", &["-j", "map", "dump", "pinned", path.to_str().unwrap()]).unwrap_or_else(|e| panic!("{e:#}"));
    serde_json::from_str::<Value>(&out).unwrap().as_array().map(Vec::len).unwrap_or(0)
}

/// Opens a TCP connection from a chosen local address and port (SO_REUSEADDR, as clients that
/// pin their source port do); must run inside the client's namespace (see [`in_netns`]).
pub fn tcp_connect_from(local: SocketAddrV4, remote: SocketAddrV4) -> Result<TcpStream> {
    use nix::sys::socket::{bind, connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    bind(fd.as_raw_fd(), &SockaddrIn::from(local)).with_context(|| format!("binding {local}"))?;
    connect(fd.as_raw_fd(), &SockaddrIn::from(remote)).with_context(|| format!("connecting {local} -> {remote}"))?;
    let stream = TcpStream::from(fd);
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

/// A counter of the kernel's SNMP MIB in a namespace, e.g. ("Tcp", "InCsumErrors").
pub fn snmp_counter(netns: &str, group: &str, field: &str) -> u64 {
    let text = run("ip", &["netns", "exec", netns, "cat", "/proc/net/snmp"]).unwrap();
    let mut lines = text.lines().filter(|l| l.starts_with(&format!("{group}:")));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    let index = names.split_whitespace().position(|n| n == field).unwrap_or_else(|| panic!("no {group} {field}"));
    values.split_whitespace().nth(index).unwrap().parse().unwrap()
}

/// Turns checksum offload off where it would hide a wrong checksum: the sender computes full
/// checksums (so the NAT's incremental updates are exercised on them), and the receiver
/// verifies them (veth would otherwise mark them as already checked).
pub fn full_checksums(sender_ns: &str, sender_if: &str, receiver_ns: &str, receiver_if: &str) {
    run("ip", &["netns", "exec", sender_ns, "ethtool", "-K", sender_if, "tx", "off"]).unwrap();
    run("ip", &["netns", "exec", receiver_ns, "ethtool", "-K", receiver_if, "rx", "off"]).unwrap();
}

/// Sends `size` (iperf3's `-n`, e.g. "1G") over TCP from `client_ns` to `target`, where an
/// iperf3 server in `server_ns` answers (directly or through a published port), then the same
/// the other way (`-R`), each bounded in time; checks that each run completed and that the
/// receiver got (nearly) everything.
pub fn iperf3_each_way(
    sb: &mut Sandbox,
    server_ns: &str,
    client_ns: &str,
    target: Ipv4Addr,
    size: &str,
    min_bytes: u64,
) {
    let target = target.to_string();
    for reverse in [false, true] {
        let mut server = netns_exec(server_ns, "iperf3", ["-s", "-1"]);
        server.stdout(Stdio::null()).stderr(Stdio::null());
        sb.spawn("the iperf3 server", server).unwrap_or_else(|e| panic!("{e:#}"));
        std::thread::sleep(Duration::from_millis(300));
        let mut args = vec!["netns", "exec", client_ns, "timeout", "120", "iperf3", "-c", &target, "-n", size, "-J"];
        args.extend(["--connect-timeout", "3000"]);
        if reverse {
            args.push("-R");
        }
        let report: Value = serde_json::from_str(&run("ip", &args).unwrap()).unwrap();
        assert!(report["error"].is_null(), "iperf3: {}", report["error"]);
        let sent = report["end"]["sum_sent"]["bytes"].as_u64().unwrap();
        let received = report["end"]["sum_received"]["bytes"].as_u64().unwrap();
        assert!(sent >= min_bytes, "reverse={reverse}: sent {sent} bytes");
        // iperf3 ends the test when the sender has written its last byte, and the receiver
        // stops counting then: what is still in flight (at most the sender's send buffer and
        // the receiver's receive buffer) is not in its total. Anything missing beyond that was
        // lost on the way.
        let (sender, receiver) = if reverse { (server_ns, client_ns) } else { (client_ns, server_ns) };
        let in_flight = tcp_buffer_max(sender, "tcp_wmem") + tcp_buffer_max(receiver, "tcp_rmem");
        assert!(
            received + in_flight >= sent,
            "reverse={reverse}: received {received} of {sent}, more than the {in_flight} bytes that can be in flight"
        );
    }
}

/// The largest TCP buffer (third field of `net.ipv4.tcp_rmem`/`tcp_wmem`) of a namespace.
fn tcp_buffer_max(netns: &str, sysctl: &str) -> u64 {
    let text = run("ip", &["netns", "exec", netns, "cat", &format!("/proc/sys/net/ipv4/{sysctl}")]).unwrap();
    text.split_whitespace()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{sysctl} in {netns}: {text:?}"))
}

/// Checksum and other receive errors of TCP in a namespace.
pub fn tcp_receive_errors(netns: &str) -> u64 {
    snmp_counter(netns, "Tcp", "InCsumErrors") + snmp_counter(netns, "Tcp", "InErrs")
}

/// The id of the XDP program on an interface, as `ip link` reports it (the kernel's view).
pub fn xdp_program_on(netns: &str, ifname: &str) -> Option<u64> {
    let out = run("ip", &["-n", netns, "-j", "-d", "link", "show", "dev", ifname]).unwrap_or_else(|e| panic!("{e:#}"));
    let links: Value = serde_json::from_str(&out).unwrap();
    links[0]["xdp"]["prog"]["id"].as_u64()
}

/// Whether any iptables rule exists in a namespace.
pub fn iptables_rules(netns: &str) -> Vec<String> {
    run("ip", &["netns", "exec", netns, "iptables-save"])
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("-A"))
        .map(str::to_owned)
        .collect()
}

/// A bounded SYN flood: `count` TCP SYNs sent as fast as a raw socket in `netns` takes them,
/// each from a random address of `sources` (base, prefix length) and a random port, to `dst`
/// at a random port of `dports`. Spoofed sources belong to no namespace, so nothing answers
/// their SYN-ACKs. Returns how long the sending took.
pub fn syn_flood(
    netns: &str,
    sources: (Ipv4Addr, u8),
    dst: Ipv4Addr,
    dports: std::ops::RangeInclusive<u16>,
    count: u32,
) -> Result<Duration> {
    spoofed_flood(netns, sources, dst, dports, count, tcp_syn)
}

/// As [`syn_flood`], with 18-byte UDP datagrams.
pub fn udp_flood(
    netns: &str,
    sources: (Ipv4Addr, u8),
    dst: Ipv4Addr,
    dports: std::ops::RangeInclusive<u16>,
    count: u32,
) -> Result<Duration> {
    spoofed_flood(netns, sources, dst, dports, count, |src, sport, dst, dport, _| udp_datagram(src, sport, dst, dport))
}

/// Sends `count` packets that `build` makes (source, source port, destination, destination
/// port, a random number) from random addresses of `sources` through a raw socket in `netns`.
fn spoofed_flood(
    netns: &str,
    sources: (Ipv4Addr, u8),
    dst: Ipv4Addr,
    dports: std::ops::RangeInclusive<u16>,
    count: u32,
    build: fn(Ipv4Addr, u16, Ipv4Addr, u16, u32) -> Vec<u8>,
) -> Result<Duration> {
    in_netns(netns, move || {
        // SAFETY: plain socket(2); the descriptor is owned at once.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("opening a raw socket");
        }
        // SAFETY: a descriptor that nothing else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let to = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(dst.octets()) },
            sin_zero: [0; 8],
        };
        let mut random = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(std::process::id());
        let mut next = move || {
            random ^= random << 13;
            random ^= random >> 7;
            random ^= random << 17;
            random
        };
        let host_bits = 32 - u32::from(sources.1);
        let span = u32::from(*dports.end() - *dports.start()) + 1;
        let started = Instant::now();
        for _ in 0..count {
            let r = next();
            let host = if host_bits == 0 { 0 } else { (r as u32) & ((1u32 << host_bits) - 1) };
            let src = Ipv4Addr::from(u32::from(sources.0) | host);
            let sport = 1024 + ((r >> 32) as u16 % 60_000);
            let dport = dports.start() + ((r >> 48) as u32 % span) as u16;
            let packet = build(src, sport, dst, dport, (r >> 16) as u32);
            // SAFETY: the buffer and address live for the call.
            let sent = unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    (&to as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                )
            };
            if sent < 0 {
                let err = std::io::Error::last_os_error();
                // A full queue is the flood's own doing: try the next one.
                if err.raw_os_error() != Some(libc::ENOBUFS) {
                    return Err(err).context("sending a SYN");
                }
            }
        }
        Ok(started.elapsed())
    })
}

/// An IPv4 packet with a TCP SYN, every checksum right (the kernel fills the IP header's).
fn tcp_syn(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, seq: u32) -> Vec<u8> {
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64_240u16.to_be_bytes());
    let mut pseudo = Vec::with_capacity(32);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, libc::IPPROTO_TCP as u8, 0, tcp.len() as u8]);
    pseudo.extend_from_slice(&tcp);
    let csum = internet_checksum(&pseudo);
    tcp[16..18].copy_from_slice(&csum.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, libc::IPPROTO_TCP as u8, 0, 0];
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    ip.extend_from_slice(&tcp);
    ip
}

/// An IPv4 packet with a UDP datagram of 18 bytes, its checksum right.
fn udp_datagram(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let mut udp = vec![0u8; 8];
    udp.extend_from_slice(&[0x5a; 18]);
    udp[0..2].copy_from_slice(&sport.to_be_bytes());
    udp[2..4].copy_from_slice(&dport.to_be_bytes());
    let len = udp.len() as u16;
    udp[4..6].copy_from_slice(&len.to_be_bytes());
    let mut pseudo = Vec::with_capacity(12 + udp.len());
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, libc::IPPROTO_UDP as u8]);
    pseudo.extend_from_slice(&(udp.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(&udp);
    let csum = internet_checksum(&pseudo);
    udp[6..8].copy_from_slice(&csum.to_be_bytes());
    let total = (20 + udp.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, libc::IPPROTO_UDP as u8, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    ip.extend_from_slice(&udp);
    ip
}

/// RFC 1071's checksum.
fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A GET on the agent's API socket, as a scraper or `curl --unix-socket` makes it, with an
/// optional Accept header: (status, content type, body). Bodies of a fixed length only.
pub fn api_get(socket: &std::path::Path, path: &str, accept: Option<&str>) -> Result<(u16, String, String)> {
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    api_request(socket, "GET", path, &accept, None)
}

/// One HTTP/1.1 request on the agent's API socket (`Connection: close`), with extra header
/// lines and a JSON body: (status, content type, body). Bounded: 60 s to answer.
pub fn api_request(
    socket: &std::path::Path,
    method: &str,
    path: &str,
    headers: &str,
    body: Option<&str>,
) -> Result<(u16, String, String)> {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let body = body.unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: bpfnet\r\n{headers}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).context("reading the answer")?;
    let (head, body) = answer.split_once("\r\n\r\n").context("an HTTP answer without a header end")?;
    let status = head.split(' ').nth(1).context("no status")?.parse()?;
    let content_type = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type: ").map(str::to_owned))
        .unwrap_or_default();
    Ok((status, content_type, body.to_owned()))
}

/// What the kernel holds that the agent's state does not account for, and the reverse: each
/// line names one leaked or missing object. Compares `container ls` with the namespaces
/// bpfnet made, the host-side veths (their addresses, routes and neighbours go with them), the
/// pinned endpoint links, the endpoint and published-port maps of both families, and, after a
/// garbage collection, the conntrack entries (none of a container that is gone). Empty when
/// state and kernel agree.
pub fn leaks(sb: &Sandbox) -> Vec<String> {
    let mut found = Vec::new();
    let containers = sb.json(&["container", "ls", "--json"]);
    let containers = containers.as_array().cloned().unwrap_or_default();
    let names: Vec<String> = containers.iter().filter_map(|c| c["name"].as_str().map(str::to_owned)).collect();
    let veths: Vec<String> =
        containers.iter().filter_map(|c| c["host_interface"].as_str().map(str::to_owned)).collect();
    let own = |what: &str, kernel: Vec<String>, state: &[String], found: &mut Vec<String>| {
        for k in kernel.iter().filter(|k| !state.contains(k)) {
            found.push(format!("{what} {k}: in the kernel, of no container in the state"));
        }
        for s in state.iter().filter(|s| !kernel.contains(s)) {
            found.push(format!("{what} {s}: of a container in the state, not in the kernel"));
        }
    };
    // Attached namespaces (ID/IFNAME) and Docker's (docker:ENDPOINT_ID) are the engine's, not
    // bpfnet's to have made.
    let made: Vec<String> = names.iter().filter(|n| !n.contains('/') && !n.contains(':')).cloned().collect();
    own("network namespace", sb.bpfnet_namespaces(), &made, &mut found);
    let host_veths = links_in(sb.host_netns()).into_iter().filter(|l| l.starts_with("bn")).collect();
    own("host-side veth", host_veths, &veths, &mut found);
    let link_pins: Vec<String> = std::fs::read_dir(sb.bpffs_dir().join("links"))
        .map(|dir| dir.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned())).collect())
        .unwrap_or_default();
    own("endpoint link pin", link_pins.into_iter().filter(|l| l.starts_with("bn")).collect(), &veths, &mut found);
    if sb.bpffs_dir().join("maps").exists() {
        sb.ok(&["conntrack", "gc"]);
        let addresses: Vec<&str> =
            containers.iter().flat_map(|c| [c["ip"].as_str(), c["ip6"].as_str()]).flatten().collect();
        // An end is `IP:PORT` or `[IPV6]:PORT` (or an address alone).
        let address = |end: &Value| {
            let end = end.as_str()?;
            let ip = end.parse::<SocketAddr>().map(|a| a.ip()).or_else(|_| end.parse::<IpAddr>());
            Some(ip.map_or_else(|_| end.split(':').next().unwrap_or(end).to_owned(), |ip| ip.to_string()))
        };
        for flow in sb.json(&["conntrack", "ls", "--json"]).as_array().into_iter().flatten() {
            let ends = match flow["kind"].as_str() {
                Some("snat") => vec![&flow["source"]],
                Some("dnat") => vec![&flow["translated_destination"]],
                _ => vec![&flow["source"], &flow["translated_destination"]],
            };
            if ends.into_iter().filter_map(address).any(|ip| !addresses.contains(&ip.as_str())) {
                found.push(format!("conntrack flow of no container in the state: {flow}"));
            }
        }
        // Ports are shown `0.0.0.0:P->...` (every address: on IPv4, and on IPv6 for a container
        // with an IPv6 address), `IPV4:P->...` (IPv4 only) or `[IPV6]:P->...` (IPv6 only).
        let ports_of = |c: &Value| -> Vec<String> {
            let ports = c["ports"].as_array().cloned().unwrap_or_default();
            ports.iter().filter_map(|p| p.as_str().map(str::to_owned)).collect()
        };
        let ports: usize = containers.iter().flat_map(ports_of).filter(|p| !p.starts_with('[')).count();
        let dual: Vec<&Value> = containers.iter().filter(|c| c["ip6"].is_string()).collect();
        let on_ipv6 = |p: &String| p.starts_with('[') || p.starts_with("0.0.0.0:");
        let ports6: usize = dual.iter().flat_map(|c| ports_of(c)).filter(on_ipv6).count();
        for (map, want) in [
            ("ENDPOINTS", names.len()),
            ("IFACES", names.len()),
            ("SERVICES", ports),
            ("ENDPOINTS6", dual.len()),
            ("IFACES6", dual.len()),
            ("PUBLISHED6", ports6),
        ] {
            let have = pinned_map_len(sb.bpffs_dir(), map);
            if have != want {
                found.push(format!("map {map}: {have} entries, the state accounts for {want}"));
            }
        }
    }
    found
}
