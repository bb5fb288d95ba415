//! Dual stack: networks with an IPv6 subnet beside their IPv4 one, containers with an address
//! of each family, IPv6 traffic between them, to the outside (masqueraded to the uplink's IPv6
//! address), to published ports over IPv6, and the ICMPv6 errors that come back. The outside
//! world is the sandbox's outside namespace, on the documentation prefix 2001:db8::/32;
//! networks use unique local addresses (fd00::/8).
use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket},
    process::Command,
    time::{Duration, Instant},
};

use bpfnet_tests::{
    in_netns, leaks, netns_exec, ping, pinned_map_len, tcp_exchange, udp_exchange, udp_refused, Sandbox, BEHIND_IP6,
    OUTSIDE_IP, OUTSIDE_IP6, UPLINK, UPLINK_HOST_IP, UPLINK_HOST_IP6,
};
use serde_json::Value;

const SUBNET: &str = "10.231.0.0/24";
const SUBNET6: &str = "fd00:231::/64";
const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x231, 0, 0, 0, 0, 0, 1);

/// A sandbox whose uplink has IPv6, one dual-stack network and the given containers.
fn dual_stack(containers: &[&str]) -> (Sandbox, String, Vec<String>) {
    let mut sb = Sandbox::with_uplink();
    sb.add_uplink_ipv6().unwrap_or_else(|e| panic!("{e:#}"));
    let net = sb.name("net");
    sb.ok(&["network", "create", &net, "--subnet", SUBNET, "--subnet", SUBNET6]);
    let names: Vec<String> = containers.iter().map(|c| sb.name(c)).collect();
    for name in &names {
        sb.ok(&["container", "create", name, "--network", &net]);
    }
    (sb, net, names)
}

/// `ip -n NETNS -j ARGS`, parsed.
fn ip_json(netns: &str, args: &[&str]) -> Value {
    let out = Command::new("ip").args(["-n", netns, "-j"]).args(args).output().expect("running ip");
    assert!(out.status.success(), "ip -n {netns} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("ip printed JSON")
}

/// A sysctl's value inside a namespace.
fn sysctl(netns: &str, key: &str) -> String {
    let out = netns_exec(netns, "sysctl", ["-n", key]).output().expect("running sysctl");
    assert!(out.status.success(), "sysctl {key} in {netns}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The status's IPv6 masquerade address, once it is `want`, within a few seconds (the uplink
/// follower settles notifications for 75 ms).
fn wait_for_masquerade6(sb: &Sandbox, want: Option<Ipv6Addr>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let want = want.map(|ip| ip.to_string());
    loop {
        let status = sb.json(&["status", "--json"]);
        let have = status["datapath"]["uplink"]["masquerade_address6"].as_str().map(str::to_owned);
        if have == want {
            return;
        }
        assert!(Instant::now() < deadline, "the IPv6 masquerade address stayed {have:?}, not {want:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bad_network_and_container_input_is_refused_and_nothing_is_made() {
    let sb = Sandbox::new();
    let net = sb.name("net");
    let other = sb.name("other");
    sb.ok(&["network", "create", &other, "--subnet", "10.232.0.0/24", "--subnet", "fd00:232::/64"]);
    for (args, says) in [
        (vec!["--subnet", "fd00:1::/64"], "IPv6-only network"),
        (vec!["--subnet", "10.233.0.0/24", "--subnet", "fd00:1::/80"], "smaller than a /64"),
        (vec!["--subnet", "10.233.0.0/24", "--subnet", "fd00:232::/48"], "overlaps network"),
        (vec!["--subnet", "10.233.0.0/24", "--subnet", "fd00:1::/64", "--gateway", "fd00:2::1"], "outside the subnet"),
        (vec!["--subnet", "10.233.0.0/24", "--gateway", "fd00:2::1"], "no IPv6 subnet"),
        (vec!["--subnet", "10.233.0.0/24", "--subnet", "fd00:1::/64", "--subnet", "fd00:2::/64"], "second IPv6"),
        (vec!["--subnet", "10.233.0.0/24", "--subnet", "fd00:1::5/64"], "did you mean fd00:1::/64"),
        (vec!["--subnet", "10.233.0.0/24", "--subnet", "not-a-cidr"], "not-a-cidr"),
    ] {
        let mut full = vec!["network", "create", &net];
        full.extend(&args);
        let err = sb.fails(&full);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let networks = sb.json(&["network", "ls", "--json"]);
    assert_eq!(networks.as_array().unwrap().len(), 1, "only the good network exists: {networks}");

    // --ipv6 alone picks a unique local /64; IPv4 only stays the default.
    let picked = sb.name("picked");
    sb.ok(&["network", "create", &picked, "--subnet", "10.234.0.0/24", "--ipv6"]);
    let info = sb.json(&["network", "inspect", &picked]);
    let subnet6 = info["subnet6"].as_str().unwrap_or_else(|| panic!("no IPv6 subnet: {info}"));
    assert!(subnet6.starts_with("fd") && subnet6.ends_with("::/64"), "{info}");
    let plain = sb.name("plain");
    sb.ok(&["network", "create", &plain, "--subnet", "10.235.0.0/24"]);
    assert!(sb.json(&["network", "inspect", &plain]).get("subnet6").is_none());

    // Containers: a fixed IPv6 address outside the subnet, taken, or on an IPv4-only network;
    // a port on an IPv6 host address for a container without IPv6.
    let c1 = sb.name("c1");
    sb.ok(&["container", "create", &c1, "--network", &other, "--ip6", "fd00:232::10"]);
    assert_eq!(sb.container_ip6(&c1), "fd00:232::10".parse::<Ipv6Addr>().unwrap());
    let c2 = sb.name("c2");
    for (args, says) in [
        (vec!["--network", &other, "--ip6", "fd00:999::10"], "outside the subnet fd00:232::/64"),
        (vec!["--network", &other, "--ip6", "fd00:232::10"], "already in use"),
        (vec!["--network", &other, "--ip6", "fd00:232::1"], "gateway"),
        (vec!["--network", &plain, "--ip6", "fd00:232::11"], "has no IPv6 subnet"),
        (vec!["--network", &plain, "-p", "[2001:db8::1]:8080:80"], "has no IPv6 address"),
    ] {
        let mut full = vec!["container", "create", &c2];
        full.extend(&args);
        let err = sb.fails(&full);
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!bpfnet_tests::namespaces_with_prefix(&c2).contains(&c2), "{args:?}: the namespace was left");
    }
    assert_eq!(sb.json(&["container", "ls", "--json"]).as_array().unwrap().len(), 1);
    sb.teardown().unwrap();
}

#[test]
fn a_dual_stack_container_is_configured_on_both_sides_and_removed_without_a_trace() {
    let (sb, net, c) = dual_stack(&["c1"]);
    let c1 = &c[0];
    let ip6 = sb.container_ip6(c1);
    assert_eq!(ip6, "fd00:231::2".parse::<Ipv6Addr>().unwrap(), "the lowest free address");

    // Inside: the address usable at once (no DAD), on-link /64, the default route via the
    // gateway, no router advertisements taken.
    let addrs = ip_json(c1, &["-6", "addr", "show", "dev", "eth0"]);
    let info = addrs[0]["addr_info"].as_array().unwrap();
    let global = info.iter().find(|a| a["local"] == ip6.to_string()).unwrap_or_else(|| panic!("{addrs}"));
    assert_eq!((global["prefixlen"].as_u64(), global.get("tentative")), (Some(64), None), "{global}");
    let default = ip_json(c1, &["-6", "route", "show", "default"]);
    assert_eq!(default[0]["gateway"], GATEWAY6.to_string(), "{default}");
    assert_eq!(sysctl(c1, "net.ipv6.conf.eth0.accept_ra"), "0");
    assert_eq!(sysctl(c1, "net.ipv6.conf.eth0.disable_ipv6"), "0");
    // Host side: the gateway on lo, a route and a permanent neighbour to the container,
    // forwarding on its veth for bpf_fib_lookup.
    let host = sb.host_netns();
    let veth = sb.json(&["container", "inspect", c1])["host_interface"].as_str().unwrap().to_owned();
    let lo = ip_json(host, &["-6", "addr", "show", "dev", "lo"]);
    assert!(lo[0]["addr_info"].as_array().unwrap().iter().any(|a| a["local"] == GATEWAY6.to_string()), "{lo}");
    let route = ip_json(host, &["-6", "route", "show", &ip6.to_string()]);
    assert_eq!((route[0]["dev"].as_str(), route[0]["prefsrc"].as_str()), (Some(veth.as_str()), Some("fd00:231::1")));
    let neigh = ip_json(host, &["-6", "neigh", "show", &ip6.to_string(), "dev", &veth]);
    assert!(neigh[0]["state"].as_array().unwrap().iter().any(|s| s == "PERMANENT"), "{neigh}");
    assert_eq!(sysctl(host, &format!("net.ipv6.conf.{veth}.forwarding")), "1");

    // What the CLI shows.
    let inspect = sb.json(&["container", "inspect", c1]);
    assert_eq!(inspect["ip6"], ip6.to_string());
    let network = sb.json(&["network", "inspect", &net]);
    assert_eq!((network["subnet6"].as_str(), network["gateway6"].as_str()), (Some(SUBNET6), Some("fd00:231::1")));
    let status = sb.json(&["status", "--json"]);
    assert_eq!(status["networks"][0]["subnet6"], SUBNET6);
    assert_eq!(status["datapath"]["uplink"]["masquerade_address6"], UPLINK_HOST_IP6.to_string());
    let ls = sb.ok(&["container", "ls"]);
    assert!(ls.contains(&ip6.to_string()), "{ls}");

    // The datapath's entries: the endpoint, and ports on both families, on one, on the other.
    let bpffs = sb.bpffs_dir().to_owned();
    assert_eq!((pinned_map_len(&bpffs, "ENDPOINTS6"), pinned_map_len(&bpffs, "IFACES6")), (1, 1));
    sb.ok(&["publish", c1, "8080:80", "[2001:db8:250::1]:8081:81", "10.250.0.1:8082:82/udp"]);
    assert_eq!((pinned_map_len(&bpffs, "SERVICES"), pinned_map_len(&bpffs, "PUBLISHED6")), (2, 2));
    assert!(leaks(&sb).is_empty(), "{:?}", leaks(&sb));
    sb.ok(&["unpublish", c1, "8080:80"]);
    assert_eq!((pinned_map_len(&bpffs, "SERVICES"), pinned_map_len(&bpffs, "PUBLISHED6")), (1, 1));

    // A restarted agent puts back what is missing.
    let map = bpffs.join("maps").join("ENDPOINTS6");
    let key: Vec<String> = ip6.octets().iter().map(|b| b.to_string()).collect();
    let mut delete = vec!["map", "delete", "pinned", map.to_str().unwrap(), "key"];
    delete.extend(key.iter().map(String::as_str));
    bpfnet_tests::run("bpftool", &delete).unwrap();
    assert_eq!(pinned_map_len(&bpffs, "ENDPOINTS6"), 0);
    sb.restart_agent().unwrap();
    assert_eq!(pinned_map_len(&bpffs, "ENDPOINTS6"), 1, "reconcile wrote the missing entry again");
    assert!(leaks(&sb).is_empty(), "{:?}", leaks(&sb));

    sb.ok(&["container", "rm", c1]);
    for map in ["ENDPOINTS6", "IFACES6", "PUBLISHED6"] {
        assert_eq!(pinned_map_len(&bpffs, map), 0, "{map}");
    }
    assert!(ip_json(host, &["-6", "route", "show", &ip6.to_string()]).as_array().unwrap().is_empty());
    sb.ok(&["network", "rm", &net]);
    let lo = ip_json(host, &["-6", "addr", "show", "dev", "lo"]);
    assert!(!lo.to_string().contains("fd00:231::1"), "the gateway left on lo: {lo}");
    sb.teardown().unwrap();
}

/// The uplink's IPv6 address is IPv6's masquerade address: followed as it changes, never a
/// tentative one (DAD still running), and none when it has none.
#[test]
fn the_uplinks_ipv6_address_is_followed() {
    let (sb, _, _) = dual_stack(&[]);
    wait_for_masquerade6(&sb, Some(UPLINK_HOST_IP6));
    let host = sb.host_netns().to_owned();
    let ip = |args: &[&str]| {
        let full: Vec<&str> = ["-n", host.as_str()].into_iter().chain(args.iter().copied()).collect();
        bpfnet_tests::run("ip", &full).unwrap()
    };
    ip(&["-6", "addr", "del", &format!("{UPLINK_HOST_IP6}/64"), "dev", UPLINK]);
    wait_for_masquerade6(&sb, None);
    // With DAD (the peer is up: it takes a second or more) the address is tentative first.
    let next: Ipv6Addr = "2001:db8:250::5".parse().unwrap();
    ip(&["-6", "addr", "add", &format!("{next}/64"), "dev", UPLINK]);
    let status = sb.json(&["status", "--json"]);
    let tentative = ip_json(&host, &["-6", "addr", "show", "dev", UPLINK]).to_string().contains("tentative");
    if tentative {
        assert!(status["datapath"]["uplink"]["masquerade_address6"].is_null(), "a tentative address: {status}");
    }
    wait_for_masquerade6(&sb, Some(next));
    sb.teardown().unwrap();
}

#[test]
fn containers_talk_over_ipv6() {
    let (mut sb, _, c) = dual_stack(&["c1", "c2"]);
    let (ip1, ip2) = (sb.container_ip6(&c[0]), sb.container_ip6(&c[1]));
    assert!(ping(&c[0], ip2), "ping6 from c1 to c2");
    assert!(ping(&c[1], ip1), "ping6 from c2 to c1");
    assert!(ping(&c[0], GATEWAY6), "ping6 from c1 to its gateway");
    let peers = sb.tcp_echo_server(&c[1], SocketAddrV6::new(ip2, 7000, 0, 0), 1);
    let request: &'static [u8] = b"hello over IPv6";
    assert_eq!(tcp_exchange(&c[0], SocketAddrV6::new(ip2, 7000, 0, 0), request).unwrap(), request);
    assert_eq!(peers.get().iter().map(SocketAddr::ip).collect::<Vec<_>>(), [IpAddr::V6(ip1)], "untranslated");
    sb.teardown().unwrap();
}

#[test]
fn containers_reach_the_outside_over_ipv6_from_the_uplinks_address() {
    let (mut sb, _, c) = dual_stack(&["c1"]);
    let out = sb.outside_netns().to_owned();
    let tcp_peers = sb.tcp_echo_server(&out, SocketAddrV6::new(OUTSIDE_IP6, 8080, 0, 0), 1);
    let udp_peers = sb.udp_echo_server(&out, SocketAddrV6::new(OUTSIDE_IP6, 5353, 0, 0), 1);
    assert!(ping(&c[0], OUTSIDE_IP6), "ping6 to the outside");
    let request: &'static [u8] = b"GET / HTTP/1.0\r\n\r\n";
    assert_eq!(tcp_exchange(&c[0], SocketAddrV6::new(OUTSIDE_IP6, 8080, 0, 0), request).unwrap(), request);
    assert_eq!(udp_exchange(&c[0], SocketAddrV6::new(OUTSIDE_IP6, 5353, 0, 0), b"query").unwrap(), b"query");
    let seen: Vec<IpAddr> = tcp_peers.get().iter().chain(&udp_peers.get()).map(SocketAddr::ip).collect();
    assert_eq!(seen, [IpAddr::V6(UPLINK_HOST_IP6); 2], "the outside sees the uplink's IPv6 address");
    // IPv4 goes on as before beside it.
    assert!(ping(&c[0], OUTSIDE_IP), "ping to the outside over IPv4");
    sb.teardown().unwrap();
}

/// `-p 8080:80` on both families, `-p [ADDR]:8081:81` on that IPv6 address only, an IPv4 host
/// address on IPv4 only; the server sees the client's own address; unpublished, it is gone.
#[test]
fn published_ports_are_reached_over_ipv6_with_the_clients_address() {
    let (mut sb, net, _) = dual_stack(&[]);
    let web = sb.name("web");
    let on_v6 = format!("[{UPLINK_HOST_IP6}]:8081:81");
    let on_v4 = format!("{UPLINK_HOST_IP}:8082:82");
    sb.ok(&["container", "create", &web, "--network", &net, "-p", "8080:80", "-p", &on_v6, "-p", &on_v4]);
    let any = Ipv6Addr::UNSPECIFIED;
    // Dual-stack listeners ([::]): they take IPv4 too.
    let both = sb.tcp_echo_server(&web, SocketAddrV6::new(any, 80, 0, 0), 2);
    let only6 = sb.tcp_echo_server(&web, SocketAddrV6::new(any, 81, 0, 0), 1);
    sb.tcp_echo_server(&web, SocketAddrV6::new(any, 82, 0, 0), 1);
    let out = sb.outside_netns().to_owned();
    let request: &'static [u8] = b"published";
    let v6 = |port| SocketAddr::from((UPLINK_HOST_IP6, port));
    let v4 = |port| SocketAddr::from((UPLINK_HOST_IP, port));
    assert_eq!(tcp_exchange(&out, v6(8080), request).unwrap(), request, "8080 over IPv6");
    assert_eq!(tcp_exchange(&out, v4(8080), request).unwrap(), request, "8080 over IPv4");
    assert_eq!(tcp_exchange(&out, v6(8081), request).unwrap(), request, "8081 on its IPv6 address");
    assert!(tcp_exchange(&out, v4(8081), request).is_err(), "8081 is not published on IPv4");
    assert!(tcp_exchange(&out, v6(8082), request).is_err(), "8082 is not published on IPv6");
    let clients: Vec<IpAddr> = both.get().iter().chain(&only6.get()).map(SocketAddr::ip).collect();
    assert_eq!(clients.first(), Some(&IpAddr::V6(OUTSIDE_IP6)), "the client's address is kept: {clients:?}");
    assert_eq!(clients.last(), Some(&IpAddr::V6(OUTSIDE_IP6)), "the client's address is kept: {clients:?}");
    sb.ok(&["unpublish", &web, "8080:80"]);
    assert!(tcp_exchange(&out, v6(8080), request).is_err(), "unpublished on IPv6 too");
    assert!(leaks(&sb).is_empty(), "{:?}", leaks(&sb));
    sb.teardown().unwrap();
}

/// An ICMPv6 port unreachable about a masqueraded flow, from the outside, reaches the
/// container's UDP socket (ECONNREFUSED).
#[test]
fn a_port_unreachable_reaches_the_containers_socket() {
    let (sb, _, c) = dual_stack(&["c1"]);
    assert!(
        udp_refused(&c[0], SocketAddrV6::new(OUTSIDE_IP6, 9, 0, 0)).unwrap(),
        "the port unreachable from the outside reached the container's UDP socket"
    );
    sb.teardown().unwrap();
}

/// A Packet Too Big from a router whose next link is smaller (1280 bytes) reaches the
/// container: after a datagram too large for that link, the container's route cache holds the
/// smaller MTU. (A TCP transfer would not show it: the far end's MSS keeps TCP's segments
/// small enough on its own.)
#[test]
fn a_packet_too_big_reaches_the_container() {
    let (mut sb, _, c) = dual_stack(&["c1"]);
    let behind = sb.add_behind_outside("far", 1280).unwrap_or_else(|e| panic!("{e:#}"));
    // The far end listens: once the container knows the path MTU, it fragments, and the
    // datagram must arrive whole (its later fragment found by its first's ports, FRAGS6).
    let sink = in_netns(&behind, || Ok(UdpSocket::bind((BEHIND_IP6, 7001))?)).unwrap();
    sink.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let far = SocketAddrV6::new(BEHIND_IP6, 7001, 0, 0);
    // A learned path MTU is a cached route's metric: `"metrics": [{"mtu": 1280}]`.
    let mtu = || {
        let route = ip_json(&c[0], &["-6", "route", "get", &BEHIND_IP6.to_string()]);
        route[0]["metrics"].as_array()?.iter().find_map(|metric| metric["mtu"].as_u64())
    };
    assert_eq!(mtu(), None, "no path MTU known before");
    // The socket stays open while the error comes back: the kernel learns a path MTU from a
    // Packet Too Big about UDP only through the socket that sent the datagram.
    let socket = in_netns(&c[0], || Ok(UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0))?)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while mtu().is_none() && Instant::now() < deadline {
        socket.send_to(&[0x5a; 1400], far).unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(mtu(), Some(1280), "the container learned the path MTU from the Packet Too Big");
    socket.send_to(&[0xa5; 1400], far).unwrap();
    // Earlier datagrams sent after the Packet Too Big (0x5a) may come first: skip them.
    let mut buf = [0u8; 2048];
    let (len, from) = (0..8)
        .map(|_| sink.recv_from(&mut buf).map(|(len, from)| (len, from, buf[0])).expect("the datagram arrives"))
        .find(|&(_, _, first_byte)| first_byte == 0xa5)
        .map(|(len, from, _)| (len, from))
        .expect("the last datagram among the first eight");
    assert_eq!(len, 1400, "the whole datagram, reassembled at the far end");
    assert_eq!(from.ip(), IpAddr::V6(UPLINK_HOST_IP6), "masqueraded");
    sb.teardown().unwrap();
}
