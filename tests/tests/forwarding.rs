//! Containers of one network reach each other through the eBPF path, with no bridge and no
//! netfilter rule anywhere in the host namespace.
use std::net::SocketAddrV4;

use bpfnet_tests::{links_in, ping, run, tcp_exchange, tcx_ingress_programs, udp_exchange, Sandbox};

#[test]
fn three_containers_talk_pairwise_over_ping_tcp_and_udp() {
    let mut sb = Sandbox::new();
    let net = sb.name("net");
    sb.ok(&["network", "create", &net, "--subnet", "10.210.0.0/24"]);
    let names: Vec<String> = (1..=3).map(|i| sb.name(&format!("c{i}"))).collect();
    for name in &names {
        sb.ok(&["container", "create", name, "--network", &net]);
    }
    let ips: Vec<_> = names.iter().map(|n| sb.container_ip(n)).collect();

    // Every container serves TCP and UDP echo for each of the two others.
    for (name, ip) in names.iter().zip(&ips) {
        sb.tcp_echo_server(name, SocketAddrV4::new(*ip, 7070), 2);
        sb.udp_echo_server(name, SocketAddrV4::new(*ip, 7071), 2);
    }
    for (i, from) in names.iter().enumerate() {
        for (j, to_ip) in ips.iter().enumerate() {
            if i == j {
                continue;
            }
            assert!(ping(from, *to_ip), "ping {from} -> {to_ip}");
            let tcp = tcp_exchange(from, SocketAddrV4::new(*to_ip, 7070), b"hello over tcp").unwrap();
            assert_eq!(tcp, b"hello over tcp", "TCP {from} -> {to_ip}");
            let udp = udp_exchange(from, SocketAddrV4::new(*to_ip, 7071), b"hello over udp").unwrap();
            assert_eq!(udp, b"hello over udp", "UDP {from} -> {to_ip}");
        }
    }
    assert!(sb.counter("counters", "forwarded") > 0, "traffic went through the eBPF redirect");
    assert!(sb.counter("counters", "arp_replied") > 0, "ARP was answered from the maps");

    // The gateway answers (the host stack behind the datapath).
    let gateway: std::net::Ipv4Addr =
        sb.json(&["network", "inspect", &net])["gateway"].as_str().unwrap().parse().unwrap();
    assert!(ping(&names[0], gateway), "ping the gateway");

    // No bridge, no netfilter rules in the host namespace.
    let bridges = run("ip", &["-n", sb.host_netns(), "-j", "link", "show", "type", "bridge"]).unwrap();
    assert_eq!(serde_json::from_str::<serde_json::Value>(&bridges).unwrap(), serde_json::json!([]), "no bridge device");
    let rules = run("ip", &["netns", "exec", sb.host_netns(), "iptables-save"]).unwrap();
    assert!(!rules.lines().any(|l| l.starts_with("-A")), "no iptables rules: {rules}");
    if let Ok(ruleset) = run("ip", &["netns", "exec", sb.host_netns(), "nft", "list", "ruleset"]) {
        assert!(!ruleset.contains("rule") && !ruleset.contains("chain"), "no nft rules: {ruleset}");
    }

    // The kernel says each host-side veth carries from_endpoint on tcx ingress.
    let containers = sb.json(&["container", "ls", "--json"]);
    for c in containers.as_array().unwrap() {
        let ifname = c["host_interface"].as_str().unwrap();
        assert!(links_in(sb.host_netns()).contains(&ifname.to_owned()));
        let programs = tcx_ingress_programs(sb.host_netns(), ifname).unwrap();
        assert_eq!(programs.len(), 1, "{ifname}: {programs:?}");
        assert_eq!(programs[0].1, "from_endpoint", "{ifname}: {programs:?}");
    }
    assert_eq!(sb.counter("drops", "spoofed_source"), 0);
}
