//! Kubernetes' model across nodes (`--cluster-cidr`): three nodes, each a sandbox host with
//! its own agent and pod subnet, on one underlay (a bridge in a namespace of node A's
//! sandbox) with routes to each other's pod subnets, and the outside world on the underlay
//! too. Pods keep their addresses between nodes; only traffic leaving the cluster is
//! masqueraded.
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};

use bpfnet_tests::{ping, tcp_exchange, Sandbox};

const CLUSTER_CIDR: &str = "10.128.0.0/14";
/// The outside world's address on the underlay (and every node's default gateway).
const WORLD_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 250, 100);

/// One node: its sandbox, underlay address and pod subnet.
struct Node {
    sb: Sandbox,
    ip: Ipv4Addr,
    pod_subnet: &'static str,
}

/// Three nodes on one underlay, each with a `pods` network, the cluster CIDR set and routes to
/// the others' pod subnets; and the outside world's namespace. Node A's sandbox owns the
/// underlay and the world.
fn cluster() -> (Vec<Node>, String) {
    let specs = [
        (Ipv4Addr::new(192, 168, 250, 11), "10.128.0.0/24"),
        (Ipv4Addr::new(192, 168, 250, 12), "10.129.0.0/24"),
        (Ipv4Addr::new(192, 168, 250, 13), "10.130.0.0/24"),
    ];
    let mut owner = Sandbox::new();
    let underlay = owner.add_underlay(24).unwrap_or_else(|e| panic!("{e:#}"));
    let world = owner.add_underlay_member(&underlay, "world", WORLD_IP).unwrap_or_else(|e| panic!("{e:#}"));
    let mut owner = Some(owner);
    let mut nodes: Vec<Node> = specs
        .into_iter()
        .map(|(ip, pod_subnet)| {
            let mut sb = owner.take().unwrap_or_default();
            sb.attach_uplink(&underlay, ip, WORLD_IP).unwrap_or_else(|e| panic!("{e:#}"));
            sb.set_agent_env("BPFNET_CLUSTER_CIDR", CLUSTER_CIDR);
            sb.ok(&["network", "create", &sb.name("pods"), "--subnet", pod_subnet]);
            Node { sb, ip, pod_subnet }
        })
        .collect();
    let routes: Vec<(&'static str, Ipv4Addr)> = nodes.iter().map(|n| (n.pod_subnet, n.ip)).collect();
    for node in &mut nodes {
        for (subnet, via) in routes.iter().filter(|(_, via)| *via != node.ip) {
            node.sb.add_host_route(subnet, *via).unwrap_or_else(|e| panic!("{e:#}"));
        }
    }
    (nodes, world)
}

/// Creates a pod on the node (`extra`: e.g. `-p 8080:80`); its namespace's name.
fn pod(node: &Node, suffix: &str, extra: &[&str]) -> String {
    let name = node.sb.name(suffix);
    let net = node.sb.name("pods");
    let mut args = vec!["container", "create", name.as_str(), "--network", net.as_str()];
    args.extend_from_slice(extra);
    node.sb.ok(&args);
    name
}

fn v4(ip: Ipv4Addr) -> IpAddr {
    IpAddr::V4(ip)
}

#[test]
fn pods_reach_each_other_across_nodes_with_their_own_addresses() {
    let (mut nodes, world) = cluster();
    let a1 = pod(&nodes[0], "a1", &[]);
    let b1 = pod(&nodes[1], "b1", &["-p", "8080:80", "-p", "10.129.0.1:8081:81"]);
    let c1 = pod(&nodes[2], "c1", &[]);
    let (a1_ip, b1_ip, c1_ip) =
        (nodes[0].sb.container_ip(&a1), nodes[1].sb.container_ip(&b1), nodes[2].sb.container_ip(&c1));

    // Pod to pod, across nodes: B1 sees A1's own address, and C1 B1's; nothing is tracked.
    assert!(ping(&a1, b1_ip), "ping from A1 to B1");
    assert!(ping(&c1, a1_ip), "ping from C1 to A1");
    let b1_peers = nodes[1].sb.tcp_echo_server(&b1, SocketAddrV4::new(b1_ip, 7000), 1);
    assert_eq!(tcp_exchange(&a1, SocketAddrV4::new(b1_ip, 7000), b"pod to pod").unwrap(), b"pod to pod");
    assert_eq!(b1_peers.get().iter().map(|p| p.ip()).collect::<Vec<_>>(), [v4(a1_ip)], "B1 sees A1's address");
    let c1_peers = nodes[2].sb.tcp_echo_server(&c1, SocketAddrV4::new(c1_ip, 7001), 1);
    assert_eq!(tcp_exchange(&b1, SocketAddrV4::new(c1_ip, 7001), b"and on").unwrap(), b"and on");
    assert_eq!(c1_peers.get().iter().map(|p| p.ip()).collect::<Vec<_>>(), [v4(b1_ip)], "C1 sees B1's address");
    for node in &nodes {
        let flows = node.sb.json(&["conntrack", "ls", "--json"]);
        assert_eq!(flows.as_array().unwrap().len(), 0, "native routing tracks nothing: {flows}");
        assert!(node.sb.counter("counters", "routed_native") > 0);
        assert!(node.sb.counter("counters", "delivered_native") > 0);
        assert_eq!(node.sb.counter("drops", "conntrack_invalid"), 0, "no answer refused for want of a flow");
        let status = node.sb.json(&["status", "--json"]);
        assert_eq!(status["datapath"]["uplink"]["cluster_cidr"], CLUSTER_CIDR);
    }

    // A port published on node B at its own underlay address: reached from A1. Node addresses
    // lie outside the cluster CIDR, so A masquerades A1 as for any destination outside it
    // (as Calico's natOutgoing and flannel do): B1 sees node A.
    let b1_80 = nodes[1].sb.tcp_echo_server(&b1, SocketAddrV4::new(b1_ip, 80), 1);
    let published = SocketAddrV4::new(nodes[1].ip, 8080);
    assert_eq!(tcp_exchange(&a1, published, b"via node B").unwrap(), b"via node B");
    assert_eq!(b1_80.get().iter().map(|p| p.ip()).collect::<Vec<_>>(), [v4(nodes[0].ip)]);
    // Published at node B's address inside the cluster CIDR (its pod gateway): A routes A1's
    // flow as it is, so B1 sees A1's own address, and its answer goes back from the published
    // address, routed to A1 untranslated by A.
    let b1_81 = nodes[1].sb.tcp_echo_server(&b1, SocketAddrV4::new(b1_ip, 81), 1);
    let in_cluster = SocketAddrV4::new(Ipv4Addr::new(10, 129, 0, 1), 8081);
    assert_eq!(tcp_exchange(&a1, in_cluster, b"client kept").unwrap(), b"client kept");
    assert_eq!(b1_81.get().iter().map(|p| p.ip()).collect::<Vec<_>>(), [v4(a1_ip)], "B1 sees A1's address");
    let flows = nodes[0].sb.json(&["conntrack", "ls", "--json"]);
    assert_eq!(flows.as_array().unwrap().len(), 1, "on A only the flow to the underlay address: {flows}");

    // To the outside world: masqueraded to the node's underlay address.
    let world_peers = nodes[0].sb.tcp_echo_server(&world, SocketAddrV4::new(WORLD_IP, 9000), 2);
    assert_eq!(tcp_exchange(&a1, SocketAddrV4::new(WORLD_IP, 9000), b"out").unwrap(), b"out");
    assert_eq!(tcp_exchange(&c1, SocketAddrV4::new(WORLD_IP, 9000), b"out").unwrap(), b"out");
    let seen: Vec<IpAddr> = world_peers.get().iter().map(|p| p.ip()).collect();
    assert_eq!(seen, [v4(nodes[0].ip), v4(nodes[2].ip)], "the world sees the nodes, not the pods");
    // The world has no route to the pods: a pod address never reaches it.
    assert!(!ping(&world, a1_ip));

    // Node A (the underlay's owner) last: the others' uplinks are plugged into its bridge.
    while let Some(node) = nodes.pop() {
        node.sb.teardown().unwrap_or_else(|e| panic!("{e:#}"));
    }
}

#[test]
fn a_cluster_cidr_over_the_uplinks_subnet_stops_the_agent_with_the_reason() {
    let mut sb = Sandbox::with_uplink();
    // The uplink has 10.250.0.1/24.
    sb.set_agent_env("BPFNET_CLUSTER_CIDR", "10.0.0.0/8");
    let err = format!("{:#}", sb.start_agent().unwrap_err());
    assert!(err.contains("overlaps the uplink up0's subnet 10.250.0.0/24"), "{err}");
    sb.set_agent_env("BPFNET_CLUSTER_CIDR", "10.128.0.1/14");
    let err = format!("{:#}", sb.start_agent().unwrap_err());
    assert!(err.contains("host bits"), "{err}");
    sb.remove_agent_env("BPFNET_UPLINK");
    sb.set_agent_env("BPFNET_CLUSTER_CIDR", CLUSTER_CIDR);
    let err = format!("{:#}", sb.start_agent().unwrap_err());
    assert!(err.contains("needs --uplink"), "{err}");
    sb.remove_agent_env("BPFNET_CLUSTER_CIDR");
    sb.teardown().unwrap_or_else(|e| panic!("{e:#}"));
}
