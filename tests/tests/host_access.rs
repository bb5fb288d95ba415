//! Processes of the host namespace reach published ports (`--host-cgroup`), as Docker's
//! docker-proxy and OUTPUT rule let them: socket hooks on a cgroup send their connects and
//! datagrams to the container, and show them the published address in replies and as peer.
//!
//! BPF_PROG_TEST_RUN does not run cgroup sock_addr programs (ENOTSUPP on Linux 6.18), so
//! these are real sockets. Each sandbox has a cgroup of its own; the clients are processes of
//! their own (`sockclient`) that join it, and the test process never does.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    process::Command,
};

use bpfnet_tests::{run, Sandbox, UPLINK_HOST_IP, UPLINK_HOST_IP6};
use nix::sys::signal::Signal;
use serde_json::Value;

const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 241, 0, 1);
const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// A sandbox with an uplink, a network, and the agent's socket hooks on the sandbox's cgroup.
fn sandbox() -> (Sandbox, String, PathBuf) {
    let mut sb = Sandbox::with_uplink();
    let cgroup = sb.cgroup().unwrap();
    sb.set_agent_env("BPFNET_HOST_CGROUP", cgroup.to_str().unwrap());
    let net = sb.name("net");
    sb.ok(&["network", "create", &net, "--subnet", "10.241.0.0/24"]);
    (sb, net, cgroup)
}

/// [`sandbox`] with IPv6 on the uplink ([`UPLINK_HOST_IP6`]) and a dual-stack network.
fn dual_stack_sandbox() -> (Sandbox, String, PathBuf) {
    let mut sb = Sandbox::with_uplink();
    sb.add_uplink_ipv6().unwrap_or_else(|e| panic!("{e:#}"));
    let cgroup = sb.cgroup().unwrap();
    sb.set_agent_env("BPFNET_HOST_CGROUP", cgroup.to_str().unwrap());
    let net = sb.name("net");
    sb.ok(&["network", "create", &net, "--subnet", "10.241.0.0/24", "--subnet", "fd00:241::/64"]);
    (sb, net, cgroup)
}

/// One exchange by a client process in `netns` (and in `cgroup`, if given): what its socket
/// saw, or the error it got. An IPv6 address makes it use a dual-stack AF_INET6 socket.
fn client(
    netns: &str,
    cgroup: Option<&Path>,
    mode: &str,
    addr: impl Into<SocketAddr>,
    payload: &str,
) -> Result<Value, Value> {
    client_with(&[], netns, cgroup, mode, addr.into(), payload)
}

/// [`client`] with an AF_INET6 socket that is IPV6_V6ONLY.
fn v6only_client(
    netns: &str,
    cgroup: Option<&Path>,
    mode: &str,
    addr: SocketAddr,
    payload: &str,
) -> Result<Value, Value> {
    client_with(&["--v6only"], netns, cgroup, mode, addr, payload)
}

fn client_with(
    options: &[&str],
    netns: &str,
    cgroup: Option<&Path>,
    mode: &str,
    addr: SocketAddr,
    payload: &str,
) -> Result<Value, Value> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sockclient"));
    if let Some(dir) = cgroup {
        cmd.arg("--cgroup").arg(dir);
    }
    cmd.args(options);
    let out = cmd.args(["--netns", netns, mode, &addr.to_string(), payload]).output().expect("running sockclient");
    let seen: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("sockclient printed no JSON: {}", String::from_utf8_lossy(&out.stderr)));
    if out.status.success() {
        Ok(seen)
    } else {
        Err(seen)
    }
}

/// The client's exchange succeeded with its own payload echoed; returns what it saw.
#[track_caller]
fn echoed(result: Result<Value, Value>, payload: &str) -> Value {
    let seen = result.unwrap_or_else(|e| panic!("exchange failed: {e}"));
    assert_eq!(seen["answer"], payload, "{seen}");
    seen
}

#[track_caller]
fn refused(result: Result<Value, Value>) {
    let err = result.expect_err("the exchange should have failed");
    assert!(err["kind"] == "ConnectionRefused", "{err}");
}

/// The exchange failed with this errno.
#[track_caller]
fn failed_with(result: Result<Value, Value>, errno: i32) {
    let err = result.expect_err("the exchange should have failed");
    assert!(err["errno"] == errno, "expected errno {errno}: {err}");
}

fn published(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

/// A published port as an AF_INET6 socket names it: `[::ffff:a.b.c.d]:port` or `[::1]:port`.
fn published6(ip: Ipv6Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(ip), port)
}

fn mapped(ip: Ipv4Addr) -> Ipv6Addr {
    ip.to_ipv6_mapped()
}

/// Programs the kernel runs on a cgroup, by name (bpftool's view).
fn cgroup_programs(cgroup: &Path) -> Vec<String> {
    let out = run("bpftool", &["-j", "cgroup", "show", cgroup.to_str().unwrap()]).unwrap();
    let programs: Value = serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out }).unwrap();
    let mut names: Vec<String> =
        programs.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_owned()).collect();
    names.sort();
    names
}

/// The cgroup's programs once they are `want`, or as they are after 3 s: the kernel releases a
/// link whose last reference (its pin) went away asynchronously, so a detach shows with a delay.
fn cgroup_programs_settled(cgroup: &Path, want: &[&str]) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let programs = cgroup_programs(cgroup);
        if programs == want || std::time::Instant::now() > deadline {
            return programs;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

const HOOKS: [&str; 8] = [
    "sock_connect4",
    "sock_connect6",
    "sock_getpeer4",
    "sock_getpeer6",
    "sock_recvmsg4",
    "sock_recvmsg6",
    "sock_sendmsg4",
    "sock_sendmsg6",
];

fn host_cgroup_pins(sb: &Sandbox) -> usize {
    std::fs::read_dir(sb.bpffs_dir().join("links"))
        .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("hostcg-")).count())
        .unwrap_or(0)
}

#[test]
fn host_processes_in_the_cgroup_reach_published_ports_over_tcp_and_udp() {
    let (mut sb, net, cgroup) = sandbox();
    let web = sb.name("web");
    sb.ok(&["container", "create", &web, "--network", &net, "--publish", "8080:80", "-p", "5353:53/udp"]);
    let ip = sb.container_ip(&web);
    let tcp_peers = sb.tcp_echo_server(&web, SocketAddrV4::new(ip, 80), 2);
    let udp_peers = sb.udp_echo_server(&web, SocketAddrV4::new(ip, 53), 3);
    let host = sb.host_netns().to_owned();
    let cg = Some(cgroup.as_path());

    // TCP at the uplink's address and at localhost (docker-proxy listens on all addresses);
    // getpeername names the published address.
    for addr in [published(UPLINK_HOST_IP, 8080), published(LOCALHOST, 8080)] {
        let seen = echoed(client(&host, cg, "tcp", addr, "over tcp"), "over tcp");
        assert_eq!(seen["peer"], addr.to_string(), "{seen}");
    }
    // UDP, unconnected and connected: the answer comes from the published address.
    for (mode, addr) in [
        ("udp", published(UPLINK_HOST_IP, 5353)),
        ("udp", published(LOCALHOST, 5353)),
        ("udp-connected", published(UPLINK_HOST_IP, 5353)),
    ] {
        let seen = echoed(client(&host, cg, mode, addr, "over udp"), "over udp");
        assert_eq!(seen["from"], addr.to_string(), "{mode}: {seen}");
        if mode == "udp-connected" {
            assert_eq!(seen["peer"], addr.to_string(), "{seen}");
        }
    }
    // The container sees the host, from its network's gateway address, as for any host
    // process that talks to it directly: the socket was connected to the container, so no
    // packet needed translating and nothing was tracked.
    for peer in tcp_peers.get().iter().chain(udp_peers.get().iter()) {
        assert_eq!(peer.ip(), IpAddr::V4(GATEWAY), "{peer}");
    }
    assert_eq!((tcp_peers.get().len(), udp_peers.get().len()), (2, 3));
    assert_eq!(sb.json(&["conntrack", "ls", "--json"]), serde_json::json!([]));

    // The kernel runs the hooks on the cgroup, each through one pinned link.
    assert_eq!(cgroup_programs(&cgroup), HOOKS);
    assert_eq!(host_cgroup_pins(&sb), HOOKS.len());
    let status = sb.json(&["status", "--json"]);
    let hooks = &status["datapath"]["host_cgroup"];
    assert_eq!(hooks["path"], cgroup.to_str().unwrap(), "{hooks}");
    let mut hook_names: Vec<&str> =
        hooks["hooks"].as_array().unwrap().iter().map(|h| h["hook"].as_str().unwrap()).collect();
    hook_names.sort();
    let expected =
        ["connect4", "connect6", "getpeername4", "getpeername6", "recvmsg4", "recvmsg6", "sendmsg4", "sendmsg6"];
    assert_eq!(hook_names, expected, "{hooks}");
    assert!(hooks["hooks"].as_array().unwrap().iter().all(|h| h["attached"] == true && h["pinned"] == true), "{hooks}");
    let text = sb.ok(&["status"]);
    assert!(text.contains(&format!("those in cgroup {} reach published ports", cgroup.display())), "{text}");
}

#[test]
fn only_host_namespace_sockets_in_the_cgroup_to_published_ports_are_rewritten() {
    let (mut sb, net, cgroup) = sandbox();
    let (web, other) = (sb.name("web"), sb.name("other"));
    sb.ok(&["container", "create", &web, "--network", &net, "--publish", "8080:80", "-p", "10.250.0.1:8081:81"]);
    sb.ok(&["container", "create", &other, "--network", &net]);
    let ip = sb.container_ip(&web);
    let web_peers = sb.tcp_echo_server(&web, SocketAddrV4::new(ip, 80), 1);
    sb.tcp_echo_server(&web, SocketAddrV4::new(ip, 81), 1);
    // A service of the host itself on a port nobody published.
    let host = sb.host_netns().to_owned();
    let host_peers = sb.tcp_echo_server(&host, published(UPLINK_HOST_IP, 9090), 1);
    let cg = Some(cgroup.as_path());

    // A host process outside the cgroup is left alone: its own address has no listener there.
    refused(client(&host, None, "tcp", published(UPLINK_HOST_IP, 8080), "outside the cgroup"));
    // An unpublished port is the host's own.
    echoed(client(&host, cg, "tcp", published(UPLINK_HOST_IP, 9090), "host service"), "host service");
    assert_eq!(host_peers.get().len(), 1);
    // A port published on one address is there only, not at localhost.
    echoed(client(&host, cg, "tcp", published(UPLINK_HOST_IP, 8081), "exact"), "exact");
    refused(client(&host, cg, "tcp", published(LOCALHOST, 8081), "not at localhost"));
    // A container in the cgroup is not the host (another network namespace): its connection
    // to the published port is not rewritten and takes the hairpin through the datapath.
    let seen = echoed(client(&other, cg, "tcp", published(UPLINK_HOST_IP, 8080), "hairpin"), "hairpin");
    assert_eq!(seen["peer"], published(UPLINK_HOST_IP, 8080).to_string());
    assert_eq!(web_peers.get().iter().map(|p| p.ip()).collect::<Vec<_>>(), [IpAddr::V4(UPLINK_HOST_IP)]);
    assert_eq!(sb.counter("counters", "hairpin_new_flow"), 1);
}

#[test]
fn ipv6_sockets_reach_published_ports_by_ipv4_mapped_address_and_at_ipv6_localhost() {
    let (mut sb, net, cgroup) = sandbox();
    let web = sb.name("web");
    sb.ok(&["container", "create", &web, "--network", &net, "--publish", "8080:80", "-p", "5353:53/udp"]);
    let ip = sb.container_ip(&web);
    let tcp_peers = sb.tcp_echo_server(&web, SocketAddrV4::new(ip, 80), 3);
    let udp_peers = sb.udp_echo_server(&web, SocketAddrV4::new(ip, 53), 4);
    let host = sb.host_netns().to_owned();
    let cg = Some(cgroup.as_path());

    // TCP from a dual-stack AF_INET6 socket (Java's default; `curl http://[::1]:8080`), by the
    // uplink's and localhost's IPv4-mapped addresses and by ::1 (docker-proxy listens on
    // [::]): getpeername names the address the process used.
    for addr in [
        published6(mapped(UPLINK_HOST_IP), 8080),
        published6(mapped(LOCALHOST), 8080),
        published6(Ipv6Addr::LOCALHOST, 8080),
    ] {
        let seen = echoed(client(&host, cg, "tcp", addr, "over tcp6"), "over tcp6");
        assert_eq!(seen["peer"], addr.to_string(), "{seen}");
    }
    // UDP: the answer comes from the address the datagram went to.
    for (mode, addr) in [
        ("udp", published6(mapped(UPLINK_HOST_IP), 5353)),
        ("udp", published6(mapped(LOCALHOST), 5353)),
        ("udp-connected", published6(mapped(UPLINK_HOST_IP), 5353)),
        ("udp-connected", published6(Ipv6Addr::LOCALHOST, 5353)),
    ] {
        let seen = echoed(client(&host, cg, mode, addr, "over udp6"), "over udp6");
        assert_eq!(seen["from"], addr.to_string(), "{mode}: {seen}");
        if mode == "udp-connected" {
            assert_eq!(seen["peer"], addr.to_string(), "{seen}");
        }
    }
    // Not covered: a datagram sent to [::1] without connecting. The kernel refuses to let a
    // sendmsg6 hook turn it into an IPv4-mapped address, so it goes to the host's own ::1,
    // where nothing answers.
    let err =
        client(&host, cg, "udp", published6(Ipv6Addr::LOCALHOST, 5353), "unconnected to ::1").expect_err("no answer");
    assert_eq!(err["kind"], "WouldBlock", "{err}");
    // As from AF_INET sockets: IPv4 between the host (its gateway address) and the container.
    for peer in tcp_peers.get().iter().chain(udp_peers.get().iter()) {
        assert_eq!(peer.ip(), IpAddr::V4(GATEWAY), "{peer}");
    }
    assert_eq!((tcp_peers.get().len(), udp_peers.get().len()), (3, 4));
    assert_eq!(sb.json(&["conntrack", "ls", "--json"]), serde_json::json!([]));
}

#[test]
fn ipv6_sockets_reach_ports_published_on_ipv6_at_the_container_ipv6_address() {
    let (mut sb, net, cgroup) = dual_stack_sandbox();
    let (web, old) = (sb.name("web"), sb.name("old"));
    let exact = format!("[{UPLINK_HOST_IP6}]:8082:82");
    sb.ok(&["container", "create", &web, "--network", &net, "-p", "8080:80", "-p", "5353:53/udp", "-p", &exact]);
    // A container without IPv6 (on an IPv4-only network): its port is published on IPv4 only.
    let net4 = sb.name("net4");
    sb.ok(&["network", "create", &net4, "--subnet", "10.242.0.0/24"]);
    sb.ok(&["container", "create", &old, "--network", &net4, "-p", "8081:81"]);
    // The dual-stack container's servers listen on its IPv6 address only: an answer proves
    // that the connection went there, not to its IPv4 address.
    let ip6 = sb.container_ip6(&web);
    let tcp_peers = sb.tcp_echo_server(&web, SocketAddr::new(IpAddr::V6(ip6), 80), 3);
    let exact_peers = sb.tcp_echo_server(&web, SocketAddr::new(IpAddr::V6(ip6), 82), 1);
    let udp_peers = sb.udp_echo_server(&web, SocketAddr::new(IpAddr::V6(ip6), 53), 4);
    let old_peers = sb.tcp_echo_server(&old, SocketAddrV4::new(sb.container_ip(&old), 81), 1);
    let host = sb.host_netns().to_owned();
    let cg = Some(cgroup.as_path());

    // TCP at ::1 and at the uplink's IPv6 address (the port published without an address), and
    // at the address a port was published on: getpeername names the address the process used.
    for addr in
        [published6(Ipv6Addr::LOCALHOST, 8080), published6(UPLINK_HOST_IP6, 8080), published6(UPLINK_HOST_IP6, 8082)]
    {
        let seen = echoed(client(&host, cg, "tcp", addr, "over tcp6"), "over tcp6");
        assert_eq!(seen["peer"], addr.to_string(), "{seen}");
    }
    // UDP, unconnected (the sendmsg6 hook) and connected: the answer comes from the address
    // the datagram went to.
    for (mode, addr) in [
        ("udp", published6(Ipv6Addr::LOCALHOST, 5353)),
        ("udp", published6(UPLINK_HOST_IP6, 5353)),
        ("udp-connected", published6(Ipv6Addr::LOCALHOST, 5353)),
        ("udp-connected", published6(UPLINK_HOST_IP6, 5353)),
    ] {
        let seen = echoed(client(&host, cg, mode, addr, "over udp6"), "over udp6");
        assert_eq!(seen["from"], addr.to_string(), "{mode}: {seen}");
        if mode == "udp-connected" {
            assert_eq!(seen["peer"], addr.to_string(), "{seen}");
        }
    }
    // An IPV6_V6ONLY socket too: it stays IPv6 (unlike a port published on IPv4 only).
    let seen = echoed(v6only_client(&host, cg, "tcp", published6(Ipv6Addr::LOCALHOST, 8080), "v6only"), "v6only");
    assert_eq!(seen["peer"], "[::1]:8080", "{seen}");
    // A port published on one IPv6 address is there only, not at ::1.
    refused(client(&host, cg, "tcp", published6(Ipv6Addr::LOCALHOST, 8082), "not at localhost"));
    // Outside the cgroup: the host's own ::1, where nothing listens.
    refused(client(&host, None, "tcp", published6(Ipv6Addr::LOCALHOST, 8080), "outside the cgroup"));
    // ::1 of a port published on IPv4 only reaches the container's IPv4 address, as before.
    let seen = echoed(client(&host, cg, "tcp", published6(Ipv6Addr::LOCALHOST, 8081), "ipv4 only"), "ipv4 only");
    assert_eq!(seen["peer"], "[::1]:8081", "{seen}");
    assert_eq!(old_peers.get().len(), 1);

    // The containers saw the host over IPv6, from a non-mapped address: the sockets were
    // connected (or sent) to the container's IPv6 address, and nothing was tracked.
    let peers: Vec<SocketAddr> = tcp_peers.get().into_iter().chain(exact_peers.get()).chain(udp_peers.get()).collect();
    assert_eq!(peers.len(), 3 + 1 + 4, "{peers:?}");
    for peer in &peers {
        assert!(matches!(peer.ip(), IpAddr::V6(ip) if ip.to_ipv4_mapped().is_none()), "{peer}");
    }
    assert_eq!(sb.json(&["conntrack", "ls", "--json"]), serde_json::json!([]));
}

#[test]
fn ipv6_sockets_outside_the_cgroup_to_unpublished_ports_or_v6only_are_left_alone() {
    let (mut sb, net, cgroup) = sandbox();
    let (web, other) = (sb.name("web"), sb.name("other"));
    sb.ok(&[
        "container",
        "create",
        &web,
        "--network",
        &net,
        "--publish",
        "8080:80",
        "-p",
        "10.250.0.1:8081:81",
        "-p",
        "5353:53/udp",
    ]);
    sb.ok(&["container", "create", &other, "--network", &net]);
    let ip = sb.container_ip(&web);
    let web_peers = sb.tcp_echo_server(&web, SocketAddrV4::new(ip, 80), 1);
    sb.tcp_echo_server(&web, SocketAddrV4::new(ip, 81), 1);
    let udp_peers = sb.udp_echo_server(&web, SocketAddrV4::new(ip, 53), 1);
    let host = sb.host_netns().to_owned();
    // Services of the host itself on ports nobody published, at ::1 and at the uplink's address.
    let host_v6_peers = sb.tcp_echo_server(&host, published6(Ipv6Addr::LOCALHOST, 9090), 1);
    let host_v4_peers = sb.tcp_echo_server(&host, published(UPLINK_HOST_IP, 9091), 1);
    let cg = Some(cgroup.as_path());

    // Outside the cgroup: the host's own addresses, where nothing listens.
    refused(client(&host, None, "tcp", published6(mapped(UPLINK_HOST_IP), 8080), "outside the cgroup"));
    refused(client(&host, None, "tcp", published6(Ipv6Addr::LOCALHOST, 8080), "outside the cgroup"));
    // Unpublished ports are the host's own, at ::1 as at an IPv4-mapped address.
    echoed(client(&host, cg, "tcp", published6(Ipv6Addr::LOCALHOST, 9090), "host service"), "host service");
    echoed(client(&host, cg, "tcp", published6(mapped(UPLINK_HOST_IP), 9091), "host service"), "host service");
    assert_eq!((host_v6_peers.get().len(), host_v4_peers.get().len()), (1, 1));
    // A port published on one address is there only: not at ::1 nor at ::ffff:127.0.0.1.
    echoed(client(&host, cg, "tcp", published6(mapped(UPLINK_HOST_IP), 8081), "exact"), "exact");
    refused(client(&host, cg, "tcp", published6(Ipv6Addr::LOCALHOST, 8081), "not at localhost"));
    refused(client(&host, cg, "tcp", published6(mapped(LOCALHOST), 8081), "not at localhost"));
    // An IPV6_V6ONLY socket cannot reach an IPv4-mapped address (the kernel refuses one with
    // ENETUNREACH, bpfnet or not), and the hooks cannot tell such a socket from a dual-stack
    // one: its connect to ::1 on a published port becomes one to the container's mapped
    // address, which fails the same way instead of reaching the host's ::1 (where
    // docker-proxy would answer).
    for (mode, port) in [("tcp", 8080), ("udp-connected", 5353)] {
        failed_with(v6only_client(&host, cg, mode, published6(Ipv6Addr::LOCALHOST, port), "v6only"), libc::ENETUNREACH);
        failed_with(
            v6only_client(&host, cg, mode, published6(mapped(UPLINK_HOST_IP), port), "v6only"),
            libc::ENETUNREACH,
        );
    }
    assert_eq!(udp_peers.get(), []);
    // A container in the cgroup is not the host: its dual-stack socket takes the hairpin
    // through the datapath.
    let seen = echoed(client(&other, cg, "tcp", published6(mapped(UPLINK_HOST_IP), 8080), "hairpin"), "hairpin");
    assert_eq!(seen["peer"], published6(mapped(UPLINK_HOST_IP), 8080).to_string());
    assert_eq!(web_peers.get().iter().map(|p| p.ip()).collect::<Vec<_>>(), [IpAddr::V4(UPLINK_HOST_IP)]);
    assert_eq!(sb.counter("counters", "hairpin_new_flow"), 1);
}

#[test]
fn restarting_without_the_option_detaches_the_hooks_and_with_it_attaches_them_again() {
    let (mut sb, net, cgroup) = sandbox();
    let web = sb.name("web");
    sb.ok(&["container", "create", &web, "--network", &net, "--publish", "8080:80"]);
    let ip = sb.container_ip(&web);
    sb.tcp_echo_server(&web, SocketAddrV4::new(ip, 80), 3);
    let host = sb.host_netns().to_owned();
    let cg = Some(cgroup.as_path());
    let to_web = published(UPLINK_HOST_IP, 8080);
    echoed(client(&host, cg, "tcp", to_web, "on"), "on");

    sb.stop_agent(Signal::SIGTERM);
    sb.remove_agent_env("BPFNET_HOST_CGROUP");
    sb.ensure_agent();
    assert_eq!(cgroup_programs(&cgroup), Vec::<String>::new(), "the kernel runs nothing on the cgroup");
    assert_eq!(host_cgroup_pins(&sb), 0);
    assert_eq!(sb.json(&["status", "--json"])["datapath"]["host_cgroup"], Value::Null);
    refused(client(&host, cg, "tcp", to_web, "off"));

    // Back on, twice: each hook once, not twice.
    for _ in 0..2 {
        sb.stop_agent(Signal::SIGTERM);
        sb.set_agent_env("BPFNET_HOST_CGROUP", cgroup.to_str().unwrap());
        sb.ensure_agent();
        assert_eq!(cgroup_programs(&cgroup), HOOKS);
        assert_eq!(host_cgroup_pins(&sb), HOOKS.len());
    }
    echoed(client(&host, cg, "tcp", to_web, "on again"), "on again");

    // A new version's programs (here: the same, reloaded) replace the old ones behind the
    // cgroup links, as behind the others.
    let ids_before = sb.json(&["status", "--json"])["datapath"]["program_ids"].clone();
    sb.stop_agent(Signal::SIGTERM);
    sb.set_agent_env("BPFNET_RELOAD_PROGRAMS", "1");
    sb.ensure_agent();
    let status = sb.json(&["status", "--json"]);
    for program in HOOKS {
        assert_ne!(status["datapath"]["program_ids"][program], ids_before[program], "{program}");
    }
    let hooks = &status["datapath"]["host_cgroup"]["hooks"];
    assert!(hooks.as_array().unwrap().iter().all(|h| h["attached"] == true), "{hooks}");

    // `down` detaches them with everything else.
    sb.ok(&["down"]);
    assert_eq!(cgroup_programs(&cgroup), Vec::<String>::new());
}

#[test]
fn a_datapath_pinned_before_the_ipv6_hooks_gets_them_when_the_agent_starts() {
    let (mut sb, net, cgroup) = sandbox();
    let web = sb.name("web");
    sb.ok(&["container", "create", &web, "--network", &net, "--publish", "8080:80"]);
    let ip = sb.container_ip(&web);
    sb.tcp_echo_server(&web, SocketAddrV4::new(ip, 80), 2);
    let host = sb.host_netns().to_owned();
    let cg = Some(cgroup.as_path());
    let to_web = published(UPLINK_HOST_IP, 8080);

    // The pins as a bpfnet without the IPv6 hooks left them: its programs, and the IPv4 hooks
    // on the cgroup.
    sb.stop_agent(Signal::SIGTERM);
    let ipv6_hook = |name: &str| {
        ["sock_connect6", "sock_sendmsg6", "sock_recvmsg6", "sock_getpeer6"].iter().any(|p| name.ends_with(p))
    };
    for dir in ["progs", "links"] {
        for entry in std::fs::read_dir(sb.bpffs_dir().join(dir)).unwrap().flatten() {
            if ipv6_hook(&entry.file_name().to_string_lossy()) {
                std::fs::remove_file(entry.path()).unwrap();
            }
        }
    }
    let ipv4_hooks: Vec<&str> = HOOKS.into_iter().filter(|h| !ipv6_hook(h)).collect();
    assert_eq!(cgroup_programs_settled(&cgroup, &ipv4_hooks), ipv4_hooks);
    echoed(client(&host, cg, "tcp", to_web, "older"), "older");

    // The agent pins the programs it did not find and attaches every hook once.
    sb.ensure_agent();
    assert_eq!(cgroup_programs(&cgroup), HOOKS);
    assert_eq!(host_cgroup_pins(&sb), HOOKS.len());
    let seen = echoed(client(&host, cg, "tcp", published6(Ipv6Addr::LOCALHOST, 8080), "newer"), "newer");
    assert_eq!(seen["peer"], "[::1]:8080", "{seen}");
}

#[test]
fn a_wrong_host_cgroup_stops_the_agent_before_it_changes_anything() {
    let mut sb = Sandbox::with_uplink();
    let cgroup = sb.cgroup().unwrap();
    let procs = cgroup.join("cgroup.procs");
    for (dir, needle) in [
        (Path::new("/nonexistent-bpfnet-cgroup"), "no such directory"),
        (Path::new("/tmp"), "not a cgroup v2 directory"),
        (procs.as_path(), "not a directory"),
    ] {
        let out = sb.agent_command().env("BPFNET_HOST_CGROUP", dir).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains(&format!("--host-cgroup {}: {needle}", dir.display())), "{err}");
        let mount = bpfnet_tests::cgroup2_mount().unwrap();
        assert!(err.contains(&format!("give a cgroup v2 directory: {}", mount.display())), "{err}");
        assert!(!sb.bpffs_dir().exists() && !sb.state_dir().exists() && !sb.socket().exists(), "nothing created");
    }
    // The config file's `host_cgroup` is the same setting.
    let config = sb.write_scratch("agent.toml", "host_cgroup = \"/tmp\"\n").unwrap();
    let out = sb.agent_command().arg("--config").arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--host-cgroup /tmp: not a cgroup v2 directory"), "{err}");

    // With a datapath running, a wrong value leaves it (and the hooks it has) as it was.
    sb.set_agent_env("BPFNET_HOST_CGROUP", cgroup.to_str().unwrap());
    sb.ok(&["network", "create", &sb.name("net"), "--subnet", "10.241.0.0/24"]);
    assert_eq!(cgroup_programs(&cgroup), HOOKS);
    sb.stop_agent(Signal::SIGTERM);
    let out = sb.agent_command().env("BPFNET_HOST_CGROUP", "/tmp").output().unwrap();
    assert!(!out.status.success());
    assert_eq!(cgroup_programs(&cgroup), HOOKS);
    assert_eq!(host_cgroup_pins(&sb), HOOKS.len());
}
