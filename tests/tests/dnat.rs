//! Published ports (`--publish`), translated by the eBPF datapath from a hash map: reachable
//! from outside with the client's address kept, by hairpin from containers, and not at all
//! once unpublished.
use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddrV4, TcpStream},
    time::Duration,
};

use bpfnet_tests::{
    in_netns, snmp_counter, tcp_exchange, udp_exchange, Sandbox, IO_TIMEOUT, OUTSIDE_IP, UPLINK_HOST_IP,
};

fn sandbox() -> (Sandbox, String) {
    let sb = Sandbox::with_uplink();
    let net = sb.name("net");
    sb.ok(&["network", "create", &net, "--subnet", "10.240.0.0/24"]);
    (sb, net)
}

fn published(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(UPLINK_HOST_IP, port)
}

#[test]
fn outside_clients_reach_the_right_container_with_their_own_address() {
    let (mut sb, net) = sandbox();
    let (web, dns) = (sb.name("web"), sb.name("dns"));
    sb.ok(&["container", "create", &web, "--network", &net, "--publish", "8080:80", "-p", "8443:443/tcp"]);
    sb.ok(&["container", "create", &dns, "--network", &net, "--publish", "5353:53/udp", "-p", "9090:80"]);
    let (web_ip, dns_ip) = (sb.container_ip(&web), sb.container_ip(&dns));
    let web_peers = sb.tcp_echo_server(&web, SocketAddrV4::new(web_ip, 80), 1);
    let web_tls = sb.tcp_echo_server(&web, SocketAddrV4::new(web_ip, 443), 1);
    let dns_peers = sb.udp_echo_server(&dns, SocketAddrV4::new(dns_ip, 53), 1);
    let dns_web = sb.tcp_echo_server(&dns, SocketAddrV4::new(dns_ip, 80), 1);
    let out = sb.outside_netns().to_owned();

    assert_eq!(tcp_exchange(&out, published(8080), b"GET / HTTP/1.0\r\n\r\n").unwrap(), b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(tcp_exchange(&out, published(8443), b"tls").unwrap(), b"tls");
    assert_eq!(udp_exchange(&out, published(5353), b"query").unwrap(), b"query");
    assert_eq!(tcp_exchange(&out, published(9090), b"second web").unwrap(), b"second web");
    for (what, peers) in [("web:80", &web_peers), ("web:443", &web_tls), ("dns:53", &dns_peers), ("dns:80", &dns_web)] {
        let seen = peers.get();
        assert_eq!(seen.len(), 1, "{what} got exactly its flow");
        assert_eq!(seen[0].ip(), IpAddr::V4(OUTSIDE_IP), "{what} sees the real client");
    }
    let ls = sb.json(&["container", "ls", "--json"]);
    let web_ports = &ls.as_array().unwrap().iter().find(|c| c["name"] == web.as_str()).unwrap()["ports"];
    assert_eq!(web_ports, &serde_json::json!(["0.0.0.0:8080->80/tcp", "0.0.0.0:8443->443/tcp"]));
    assert!(sb.counter("counters", "dnat_new_flow") >= 4);
}

/// A datagram larger than the MTU to a published port arrives in fragments, only the first
/// with the ports: the later ones follow it into the container, which reassembles it, and its
/// answer goes back out in fragments the same way.
#[test]
fn fragmented_datagrams_reach_a_published_port_and_come_back() {
    let (mut sb, net) = sandbox();
    let dns = sb.name("dns");
    sb.ok(&["container", "create", &dns, "--network", &net, "--publish", "5353:53/udp"]);
    let peers = sb.udp_echo_server(&dns, SocketAddrV4::new(sb.container_ip(&dns), 53), 1);
    let out = sb.outside_netns().to_owned();
    let reassembled = |ns: &str| snmp_counter(ns, "Ip", "ReasmOKs");
    let (out_before, dns_before) = (reassembled(&out), reassembled(&dns));
    let datagram: &'static [u8] =
        Box::leak((0..6000u32).map(|i| (i % 253) as u8).collect::<Vec<u8>>().into_boxed_slice());
    assert_eq!(udp_exchange(&out, published(5353), datagram).unwrap(), datagram);
    assert_eq!(peers.get()[0].ip(), IpAddr::V4(OUTSIDE_IP), "the container sees the real client");
    assert!(reassembled(&dns) > dns_before, "the container reassembled the datagram");
    assert!(reassembled(&out) > out_before, "the client reassembled the answer");
}

/// The container's port unreachable, translated on its way out, refuses the client's
/// connected UDP socket, as it would on Docker's path (iptables' RELATED).
#[test]
fn udp_to_a_published_port_nobody_listens_on_is_refused() {
    let (sb, net) = sandbox();
    let c = sb.name("silent");
    sb.ok(&["container", "create", &c, "--network", &net, "--publish", "5354:53/udp"]);
    let refused = in_netns(sb.outside_netns(), || {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
        socket.set_read_timeout(Some(IO_TIMEOUT))?;
        socket.connect(published(5354))?;
        socket.send(b"anyone?")?;
        let mut buf = [0u8; 64];
        Ok(socket.recv(&mut buf).map_err(|e| e.kind()))
    })
    .unwrap();
    assert_eq!(refused, Err(std::io::ErrorKind::ConnectionRefused));
    assert_eq!(sb.counter("counters", "icmp_error_translated"), 1);
    assert_eq!(sb.counter("drops", "unsupported_l4"), 0);
}

#[test]
fn a_published_range_reaches_every_port() {
    let (mut sb, net) = sandbox();
    let c = sb.name("range");
    sb.ok(&["container", "create", &c, "--network", &net, "--publish", "20000-20099:30000-30099/udp"]);
    let ip = sb.container_ip(&c);
    for port in 30000..30100 {
        sb.udp_echo_server(&c, SocketAddrV4::new(ip, port), 1);
    }
    let out = sb.outside_netns().to_owned();
    for i in 0..100u16 {
        let answer =
            udp_exchange(&out, published(20000 + i), b"range").unwrap_or_else(|e| panic!("port {}: {e:#}", 20000 + i));
        assert_eq!(answer, b"range");
    }
}

#[test]
fn hairpin_from_another_container_and_from_itself() {
    let (mut sb, net) = sandbox();
    let (server, client) = (sb.name("server"), sb.name("client"));
    sb.ok(&["container", "create", &server, "--network", &net, "--publish", "8080:80"]);
    sb.ok(&["container", "create", &client, "--network", &net]);
    let server_ip = sb.container_ip(&server);
    let peers = sb.tcp_echo_server(&server, SocketAddrV4::new(server_ip, 80), 2);
    assert_eq!(tcp_exchange(&client, published(8080), b"from the other one").unwrap(), b"from the other one");
    assert_eq!(tcp_exchange(&server, published(8080), b"from itself").unwrap(), b"from itself");
    // The source is translated to the host's address, so the replies come back the same way.
    assert!(peers.get().iter().all(|p| p.ip() == IpAddr::V4(UPLINK_HOST_IP)), "{:?}", peers.get());
    assert_eq!(sb.counter("counters", "hairpin_new_flow"), 2);
    let flows = sb.json(&["conntrack", "ls", "--json"]);
    assert_eq!(flows.as_array().unwrap().iter().filter(|f| f["kind"] == "hairpin").count(), 2, "{flows}");
}

#[test]
fn unpublished_ports_are_unreachable_and_established_flows_survive_unpublish() {
    let (mut sb, net) = sandbox();
    let (c1, c2) = (sb.name("c1"), sb.name("c2"));
    sb.ok(&["container", "create", &c1, "--network", &net, "--publish", "8080:80"]);
    sb.ok(&["container", "create", &c2, "--network", &net]);
    let (ip1, ip2) = (sb.container_ip(&c1), sb.container_ip(&c2));
    sb.tcp_echo_server(&c1, SocketAddrV4::new(ip1, 80), 3);
    sb.tcp_echo_server(&c1, SocketAddrV4::new(ip1, 81), 1);
    sb.tcp_echo_server(&c2, SocketAddrV4::new(ip2, 80), 1);
    let out = sb.outside_netns().to_owned();
    // A port the container listens on but did not publish, and a container that publishes none.
    assert!(tcp_exchange(&out, published(81), b"x").is_err());
    assert!(
        tcp_exchange(&out, SocketAddrV4::new(ip2, 80), b"x").is_err(),
        "container addresses are not routed from outside"
    );

    // An established connection, then unpublish: new connections are refused at once, the
    // established one keeps going (its conntrack entries stay until it ends or expires).
    let mut established = in_netns(&out, || {
        let stream = TcpStream::connect_timeout(&published(8080).into(), IO_TIMEOUT)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        Ok(stream)
    })
    .unwrap();
    let echo = |stream: &mut TcpStream, text: &[u8]| {
        stream.write_all(text).unwrap();
        let mut answer = vec![0u8; text.len()];
        stream.read_exact(&mut answer).unwrap();
        assert_eq!(answer, text);
    };
    echo(&mut established, b"before");
    sb.ok(&["unpublish", &c1, "8080:80"]);
    assert!(tcp_exchange(&out, published(8080), b"new").is_err(), "unpublished: refused");
    echo(&mut established, b"after unpublish");
    let err = sb.fails(&["unpublish", &c1, "8080:80"]);
    assert!(err.contains("does not publish"), "{err}");

    // Published again, then the container removed: gone with it.
    sb.ok(&["publish", &c1, "8080:80"]);
    assert_eq!(tcp_exchange(&out, published(8080), b"again").unwrap(), b"again");
    sb.ok(&["container", "rm", &c1]);
    assert!(tcp_exchange(&out, published(8080), b"gone").is_err());
}

#[test]
fn conflicts_and_bad_specs_are_refused_naming_the_cause() {
    let (sb, net) = sandbox();
    let (c1, c2) = (sb.name("c1"), sb.name("c2"));
    sb.ok(&["container", "create", &c1, "--network", &net, "--publish", "8080:80"]);
    let err = sb.fails(&["container", "create", &c2, "--network", &net, "--publish", "8080:8080"]);
    assert!(err.contains(&format!("already published by container \"{c1}\"")), "{err}");
    assert!(sb.json(&["container", "ls", "--json"]).as_array().unwrap().len() == 1, "nothing created");
    sb.ok(&["container", "create", &c2, "--network", &net]);
    let err = sb.fails(&["publish", &c2, "10.250.0.1:8080:80"]);
    assert!(err.contains("already published"), "a specific address overlaps all addresses: {err}");
    sb.ok(&["publish", &c2, "8080:80/udp"]); // another protocol is another port
    for (spec, needle) in [
        ("80", "HOST_PORT:PORT"),
        ("8080:80/sctp", "not tcp or udp"),
        ("70000:80", "not a port"),
        ("8000-8010:80", "must match"),
        ("x.y:1:2", "not an IPv4 address"),
    ] {
        let err = sb.fails(&["publish", &c2, spec]);
        assert!(err.contains(needle), "{spec}: {err}");
    }
    let err = sb.fails(&["publish", &sb.name("nope"), "1:1"]);
    assert!(err.contains("no container named"), "{err}");
}

#[test]
fn ten_thousand_published_ports_cost_one_map_entry_each() {
    let (mut sb, net) = sandbox();
    let c = sb.name("many");
    sb.ok(&["container", "create", &c, "--network", &net, "--publish", "20000-29999:20000-29999/udp"]);
    let ip = sb.container_ip(&c);
    sb.udp_echo_server(&c, SocketAddrV4::new(ip, 29999), 1);
    sb.udp_echo_server(&c, SocketAddrV4::new(ip, 7), 1);
    let out = sb.outside_netns().to_owned();
    assert_eq!(udp_exchange(&out, published(29999), b"last").unwrap(), b"last");
    // One more, and one fewer: each a single map update (timed by `cargo xtask bench`).
    sb.ok(&["publish", &c, "30000:7/udp"]);
    assert_eq!(udp_exchange(&out, published(30000), b"one more").unwrap(), b"one more");
    sb.ok(&["unpublish", &c, "20000:20000/udp"]);
    assert_eq!(bpfnet_tests::pinned_map_len(sb.bpffs_dir(), "SERVICES"), 10_000);
    std::thread::sleep(Duration::from_millis(10));
}
