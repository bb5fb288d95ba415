//! Containers reach the outside world through the uplink, masqueraded to the uplink's address
//! by the eBPF datapath with its own conntrack: no iptables rule anywhere.
use std::{
    io::{Read, Write},
    net::{SocketAddr, SocketAddrV4, UdpSocket},
    time::Duration,
};

use bpfnet_tests::{
    full_checksums, in_netns, iperf3_each_way, iptables_rules, ping, ping_with_size, snmp_counter, tcp_connect_from,
    tcp_exchange, tcp_receive_errors, udp_exchange, Sandbox, IO_TIMEOUT, OUTSIDE_IP, UPLINK_HOST_IP,
};

/// A sandbox with an uplink, one network and the given containers.
fn sandbox_with(containers: &[&str], settings: &[(&str, &str)]) -> (Sandbox, Vec<String>) {
    let mut sb = Sandbox::with_uplink();
    for (key, value) in settings {
        sb.set_agent_env(key, value);
    }
    let net = sb.name("net");
    sb.ok(&["network", "create", &net, "--subnet", "10.230.0.0/24"]);
    let names: Vec<String> = containers.iter().map(|c| sb.name(c)).collect();
    for name in &names {
        sb.ok(&["container", "create", name, "--network", &net]);
    }
    (sb, names)
}

fn uplink_addr(peer: &SocketAddr) -> bool {
    peer.ip() == std::net::IpAddr::V4(UPLINK_HOST_IP)
}

#[test]
fn tcp_udp_and_ping_reach_the_outside_from_the_uplink_address() {
    let (mut sb, c) = sandbox_with(&["c1", "c2"], &[]);
    let out = sb.outside_netns().to_owned();
    let tcp_peers = sb.tcp_echo_server(&out, SocketAddrV4::new(OUTSIDE_IP, 8080), 2);
    let udp_peers = sb.udp_echo_server(&out, SocketAddrV4::new(OUTSIDE_IP, 5353), 2);
    for name in &c {
        assert!(ping(name, OUTSIDE_IP), "ping from {name}");
        let request: &'static [u8] = b"GET / HTTP/1.0\r\n\r\n";
        assert_eq!(tcp_exchange(name, SocketAddrV4::new(OUTSIDE_IP, 8080), request).unwrap(), request);
        assert_eq!(udp_exchange(name, SocketAddrV4::new(OUTSIDE_IP, 5353), b"query").unwrap(), b"query");
    }
    let (tcp, udp) = (tcp_peers.get(), udp_peers.get());
    assert_eq!((tcp.len(), udp.len()), (2, 2));
    assert!(tcp.iter().chain(&udp).all(uplink_addr), "the server sees only the uplink address: {tcp:?} {udp:?}");

    let flows = sb.json(&["conntrack", "ls", "--json"]);
    let flows = flows.as_array().unwrap();
    assert!(flows.iter().any(|f| f["protocol"] == "tcp" && f["state"] != "syn_sent"), "{flows:?}");
    assert!(flows.iter().any(|f| f["protocol"] == "udp" && f["state"] == "replied"), "{flows:?}");
    assert!(flows.iter().any(|f| f["protocol"] == "icmp"), "{flows:?}");
    assert!(sb.counter("counters", "snat_new_flow") >= 6);
    assert!(sb.counter("counters", "translated_in") >= 6);

    // Traffic inside the network and to the gateway is never translated.
    let c2_ip = sb.container_ip(&c[1]);
    let peers = sb.udp_echo_server(&c[1], SocketAddrV4::new(c2_ip, 7000), 1);
    udp_exchange(&c[0], SocketAddrV4::new(c2_ip, 7000), b"local").unwrap();
    assert_eq!(peers.get()[0].ip(), std::net::IpAddr::V4(sb.container_ip(&c[0])));

    // The host's own traffic on the uplink still works (passed untouched by from_uplink).
    assert!(ping(sb.host_netns(), OUTSIDE_IP));

    for ns in [sb.host_netns(), sb.outside_netns(), c[0].as_str(), c[1].as_str()] {
        assert_eq!(iptables_rules(ns), Vec::<String>::new(), "no iptables rules in {ns}");
    }
}

#[test]
fn two_hundred_connections_with_colliding_source_ports_all_complete() {
    let (mut sb, c) = sandbox_with(&["c1", "c2"], &[]);
    const PER_CONTAINER: u16 = 100;
    let server = SocketAddrV4::new(OUTSIDE_IP, 8080);
    let out = sb.outside_netns().to_owned();
    let peers = sb.tcp_echo_server(&out, server, 2 * PER_CONTAINER as usize);
    // Both containers open 100 connections from the same source ports 40000..40099: all 200
    // are open at once, then each carries its own payload.
    let mut streams = Vec::new();
    for name in &c {
        let ip = sb.container_ip(name);
        let opened = in_netns(name, move || {
            (0..PER_CONTAINER)
                .map(|i| tcp_connect_from(SocketAddrV4::new(ip, 40_000 + i), server))
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .unwrap();
        streams.extend(opened.into_iter().map(|s| (name.clone(), s)));
    }
    assert_eq!(streams.len(), 200);
    for (i, (name, stream)) in streams.iter_mut().enumerate() {
        let payload = format!("{name} connection {i} from port {}", stream.local_addr().unwrap().port());
        stream.write_all(payload.as_bytes()).unwrap();
        let mut answer = vec![0u8; payload.len()];
        stream.read_exact(&mut answer).unwrap_or_else(|e| panic!("connection {i} of {name}: {e}"));
        assert_eq!(answer, payload.as_bytes());
    }
    let seen = peers.get();
    assert_eq!(seen.len(), 200);
    let mut ports: Vec<u16> = seen.iter().map(SocketAddr::port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 200, "every connection got its own uplink port");
    assert!(seen.iter().all(uplink_addr));
    assert_eq!(sb.counter("drops", "nat_ports_exhausted"), 0);
}

#[test]
fn udp_to_a_closed_port_is_refused_through_the_translated_icmp_error() {
    let (sb, c) = sandbox_with(&["c1"], &[]);
    let refused = in_netns(&c[0], || {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.set_read_timeout(Some(IO_TIMEOUT))?;
        socket.connect(SocketAddrV4::new(OUTSIDE_IP, 9))?;
        socket.send(b"anyone?")?;
        let mut buf = [0u8; 64];
        Ok(socket.recv(&mut buf).map_err(|e| e.kind()))
    })
    .unwrap();
    assert_eq!(refused, Err(std::io::ErrorKind::ConnectionRefused));
    assert!(sb.counter("counters", "icmp_error_translated") >= 1);
}

#[test]
fn a_gigabyte_each_way_arrives_with_no_checksum_error() {
    let (mut sb, c) = sandbox_with(&["c1"], &[]);
    let out = sb.outside_netns().to_owned();
    full_checksums(&c[0], "eth0", &out, "up0o");
    full_checksums(&out, "up0o", &c[0], "eth0");
    let errors = tcp_receive_errors;
    let (out_before, c_before) = (errors(&out), errors(&c[0]));
    iperf3_each_way(&mut sb, &out, &c[0], OUTSIDE_IP, "1G", 1 << 30);
    assert_eq!(errors(&out), out_before, "checksum errors at the outside receiver");
    assert_eq!(errors(&c[0]), c_before, "checksum errors in the container");
    assert_eq!(sb.counter("drops", "rewrite_failed"), 0);
}

/// The container sends with checksum offload (CHECKSUM_PARTIAL: the checksum field holds only
/// the pseudo-header sum, which the datapath must update for the new source address); the
/// uplink has offload off, so the kernel completes the checksums (and segments) on the way
/// out from that sum, and the outside verifies them.
#[test]
fn partial_checksums_from_a_container_are_completed_right_after_translation() {
    let (mut sb, c) = sandbox_with(&["c1"], &[]);
    let out = sb.outside_netns().to_owned();
    full_checksums(sb.host_netns(), "up0", &out, "up0o");
    let before = tcp_receive_errors(&out);
    iperf3_each_way(&mut sb, &out, &c[0], OUTSIDE_IP, "200M", 200 << 20);
    assert_eq!(tcp_receive_errors(&out), before, "checksum errors at the outside receiver");
    assert_eq!(sb.counter("drops", "rewrite_failed"), 0);
}

#[test]
fn expired_flows_are_collected_and_their_ports_reused() {
    // The agent's own periodic collection is pushed out of the way: this test collects itself.
    let settings = [
        ("BPFNET_NAT_PORTS", "41000-41003"),
        ("BPFNET_CT_TIMEOUT_UDP", "1"),
        ("BPFNET_CT_TIMEOUT_UDP_STREAM", "1"),
        ("BPFNET_GC_INTERVAL", "3600"),
    ];
    let (mut sb, c) = sandbox_with(&["c1"], &settings);
    let server = SocketAddrV4::new(OUTSIDE_IP, 5353);
    let out = sb.outside_netns().to_owned();
    let peers = sb.udp_echo_server(&out, server, 10);
    // Four ports, four flows: the fifth finds no port and is dropped with a counted reason.
    let sockets = in_netns(&c[0], move || {
        (0..5)
            .map(|_| {
                let socket = UdpSocket::bind("0.0.0.0:0")?;
                socket.set_read_timeout(Some(Duration::from_millis(500)))?;
                socket.connect(server)?;
                Ok(socket)
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })
    .unwrap();
    let exchange = |socket: &UdpSocket| {
        socket.send(b"ping").unwrap();
        let mut buf = [0u8; 16];
        socket.recv(&mut buf).is_ok()
    };
    for socket in &sockets[..4] {
        assert!(exchange(socket));
    }
    assert!(!exchange(&sockets[4]), "no port left for a fifth flow");
    assert!(sb.counter("drops", "nat_ports_exhausted") >= 1);
    let mut used: Vec<u16> = peers.get().iter().map(SocketAddr::port).collect();
    used.sort_unstable();
    assert_eq!(used, vec![41000, 41001, 41002, 41003]);
    assert_eq!(sb.json(&["conntrack", "ls", "--json"]).as_array().unwrap().len(), 4);

    std::thread::sleep(Duration::from_millis(2100));
    let report = sb.json(&["conntrack", "gc", "--json"]);
    assert_eq!(report["flows_expired"], 4, "{report}");
    assert_eq!(report["entries_in_use"], 0, "{report}");
    assert_eq!(sb.json(&["conntrack", "ls", "--json"]), serde_json::json!([]));
    assert!(exchange(&sockets[4]), "a freed port serves the new flow");
    let last = peers.get().last().unwrap().port();
    assert!((41000..=41003).contains(&last));
}

/// The assured table at its limit: its flows stay (none is evicted), and new flows still pass,
/// assured but left in the unassured table (promotion refused), where nothing is refused either.
#[test]
fn a_full_assured_table_keeps_its_flows_and_still_lets_new_ones_through() {
    // The smallest table bpfnet accepts; it fills up to the limit it reports.
    let (mut sb, c) = sandbox_with(&["c1"], &[("BPFNET_CT_SIZE", "4096")]);
    let limit = sb.json(&["status", "--json"])["datapath"]["conntrack"]["limit"].as_u64().unwrap();
    assert!(limit > 1000 && limit < 4096, "limit {limit}");
    let out = sb.outside_netns().to_owned();
    let tcp_server = SocketAddrV4::new(OUTSIDE_IP, 8080);
    sb.tcp_echo_server(&out, tcp_server, 1);
    let udp_server = SocketAddrV4::new(OUTSIDE_IP, 5353);
    let flows_that_fit = limit / 2 - 1; // one is the TCP connection
    let beyond = 10;
    sb.udp_echo_server(&out, udp_server, 2 * (flows_that_fit + beyond) as usize);
    let ip = sb.container_ip(&c[0]);
    let mut established = in_netns(&c[0], move || tcp_connect_from(SocketAddrV4::new(ip, 45000), tcp_server)).unwrap();
    let echo = |stream: &mut std::net::TcpStream, text: &[u8]| {
        stream.write_all(text).unwrap();
        let mut answer = vec![0u8; text.len()];
        stream.read_exact(&mut answer).unwrap();
        assert_eq!(answer, text);
    };
    echo(&mut established, b"before");
    // One UDP flow per source port, each asked twice (answered, then asked again: assured).
    let answered = in_netns(&c[0], move || {
        let mut answered = 0u64;
        for source_port in (20_000u16..).take((flows_that_fit + beyond) as usize) {
            let socket = UdpSocket::bind(SocketAddrV4::new(ip, source_port))?;
            socket.set_read_timeout(Some(Duration::from_millis(1000)))?;
            socket.connect(udp_server)?;
            let mut buf = [0u8; 8];
            for question in [b"x", b"y"] {
                socket.send(question)?;
                if socket.recv(&mut buf).is_ok() {
                    answered += 1;
                }
            }
        }
        Ok(answered)
    })
    .unwrap();
    assert_eq!(answered, 2 * (flows_that_fit + beyond), "every flow answered, also beyond the limit");
    echo(&mut established, b"after the table filled up");
    let status = sb.json(&["status", "--json"]);
    let ct = &status["datapath"]["conntrack"];
    assert_eq!(ct["entries"].as_u64(), Some(limit), "{ct}");
    assert_eq!(ct["promotion_refused"].as_u64(), Some(beyond), "{ct}");
    assert_eq!(status["datapath"]["drops"]["conntrack_full"], 0);
    let flows = sb.json(&["conntrack", "ls", "--json"]);
    let tcp = flows.as_array().unwrap().iter().find(|f| f["protocol"] == "tcp").expect("the TCP flow");
    assert_eq!((&tcp["state"], &tcp["table"]), (&serde_json::json!("established"), &serde_json::json!("assured")));
    let left_unassured =
        flows.as_array().unwrap().iter().filter(|f| f["assured"] == true && f["table"] == "unassured").count();
    assert_eq!(left_unassured as u64, beyond, "assured, but left where they were");
}

/// Datagrams larger than the MTU leave the container in fragments, and the replies come back
/// in fragments: only the first of each carries the ports, the later ones are translated by
/// the datagram they belong to. The receivers reassemble them (their ReasmOKs count it).
#[test]
fn fragmented_datagrams_and_large_pings_cross_the_nat_both_ways() {
    let (mut sb, c) = sandbox_with(&["c1"], &[]);
    let out = sb.outside_netns().to_owned();
    let server = SocketAddrV4::new(OUTSIDE_IP, 5354);
    let peers = sb.udp_echo_server(&out, server, 1);
    let reassembled = |ns: &str| snmp_counter(ns, "Ip", "ReasmOKs");
    let (out_before, c_before) = (reassembled(&out), reassembled(&c[0]));
    let datagram: &'static [u8] =
        Box::leak((0..4000u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into_boxed_slice());
    assert_eq!(udp_exchange(&c[0], server, datagram).unwrap(), datagram);
    let seen = peers.get();
    assert!(seen.len() == 1 && uplink_addr(&seen[0]), "masqueraded to the uplink's address: {seen:?}");
    assert!(ping_with_size(&c[0], OUTSIDE_IP, 3000), "a 3000-byte ping");
    assert!(reassembled(&out) >= out_before + 2, "the outside reassembled the datagram and the ping");
    assert!(reassembled(&c[0]) >= c_before + 2, "the container reassembled the echo and the ping reply");
    assert_eq!(sb.counter("drops", "fragment_without_first"), 0);
}

/// A removed container's flows go at the next garbage collection, whatever their timeout (an
/// established TCP flow's is five days): a container made later with its address must not
/// inherit them.
#[test]
fn a_removed_containers_flows_go_at_the_next_collection() {
    let (mut sb, c) = sandbox_with(&["c1", "c2"], &[]);
    let out = sb.outside_netns().to_owned();
    sb.tcp_echo_server(&out, SocketAddrV4::new(OUTSIDE_IP, 7000), 2);
    let open = |netns: &str| {
        in_netns(netns, || {
            Ok(std::net::TcpStream::connect_timeout(&SocketAddrV4::new(OUTSIDE_IP, 7000).into(), IO_TIMEOUT)?)
        })
        .unwrap()
    };
    let (_gone, _kept) = (open(&c[0]), open(&c[1]));
    let c1_ip = sb.container_ip(&c[0]).to_string();
    let of_c1 = |flows: &serde_json::Value| {
        flows
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["source"].as_str().unwrap().starts_with(&format!("{c1_ip}:")))
            .count()
    };
    assert_eq!(of_c1(&sb.json(&["conntrack", "ls", "--json"])), 1);
    sb.ok(&["container", "rm", &c[0]]);
    let report = sb.json(&["conntrack", "gc", "--json"]);
    assert_eq!(report["flows_of_removed_containers"], 1, "{report}");
    assert_eq!(report["flows_expired"], 0, "{report}");
    let flows = sb.json(&["conntrack", "ls", "--json"]);
    assert_eq!(of_c1(&flows), 0, "{flows}");
    assert_eq!(flows.as_array().unwrap().len(), 1, "c2's flow stays: {flows}");
}
