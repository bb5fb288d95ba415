//! Networks are isolated from each other: the datapath drops, and says why.
use std::net::SocketAddrV4;

use bpfnet_tests::{ping, tcp_exchange, udp_exchange, Sandbox};

#[test]
fn containers_of_different_networks_cannot_reach_each_other() {
    let mut sb = Sandbox::new();
    let (net_a, net_b) = (sb.name("neta"), sb.name("netb"));
    sb.ok(&["network", "create", &net_a, "--subnet", "10.211.0.0/24"]);
    sb.ok(&["network", "create", &net_b, "--subnet", "10.212.0.0/24"]);
    let (a1, a2, b1) = (sb.name("a1"), sb.name("a2"), sb.name("b1"));
    sb.ok(&["container", "create", &a1, "--network", &net_a]);
    sb.ok(&["container", "create", &a2, "--network", &net_a]);
    sb.ok(&["container", "create", &b1, "--network", &net_b]);
    let (a2_ip, b1_ip) = (sb.container_ip(&a2), sb.container_ip(&b1));

    // Same network works: the isolation below is not a broken datapath.
    assert!(ping(&a1, a2_ip));

    let before = sb.counter("drops", "cross_network");
    sb.tcp_echo_server(&b1, SocketAddrV4::new(b1_ip, 7070), 1);
    sb.udp_echo_server(&b1, SocketAddrV4::new(b1_ip, 7071), 1);
    assert!(!ping(&a1, b1_ip), "a1 must not reach b1");
    assert!(tcp_exchange(&a1, SocketAddrV4::new(b1_ip, 7070), b"x").is_err(), "TCP a1 -> b1 must fail");
    assert!(udp_exchange(&a1, SocketAddrV4::new(b1_ip, 7071), b"x").is_err(), "UDP a1 -> b1 must fail");
    let after = sb.counter("drops", "cross_network");
    assert!(after >= before + 3, "cross_network drops counted: {before} -> {after}");
}
