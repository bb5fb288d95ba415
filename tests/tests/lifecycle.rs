//! Removing containers and networks removes what they made, and a sandbox leaves nothing.
use std::path::Path;

use bpfnet_tests::{links_in, namespaces_with_prefix, ping, pinned_map_len, tcx_ingress_programs, Sandbox};

#[test]
fn rm_removes_namespace_veth_link_and_map_entries() {
    let sb = Sandbox::new();
    let net = sb.name("net");
    sb.ok(&["network", "create", &net, "--subnet", "10.213.0.0/24"]);
    let (c1, c2) = (sb.name("c1"), sb.name("c2"));
    sb.ok(&["container", "create", &c1, "--network", &net]);
    sb.ok(&["container", "create", &c2, "--network", &net, "--ip", "10.213.0.50"]);
    assert_eq!(sb.container_ip(&c2).to_string(), "10.213.0.50");
    let ls = sb.json(&["container", "ls", "--json"]);
    let c2_veth = ls.as_array().unwrap().iter().find(|c| c["name"] == c2.as_str()).unwrap()["host_interface"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(pinned_map_len(sb.bpffs_dir(), "ENDPOINTS"), 2);
    assert_eq!(pinned_map_len(sb.bpffs_dir(), "IFACES"), 2);
    assert!(ping(&c1, "10.213.0.50".parse::<std::net::Ipv4Addr>().unwrap()));

    // A network with containers cannot be removed.
    let err = sb.fails(&["network", "rm", &net]);
    assert!(err.contains("still has containers"), "{err}");

    sb.ok(&["container", "rm", &c2]);
    assert!(namespaces_with_prefix(&c2).is_empty(), "namespace removed");
    assert!(!links_in(sb.host_netns()).contains(&c2_veth), "veth removed");
    assert!(tcx_ingress_programs(sb.host_netns(), &c2_veth).is_err(), "no interface, no program");
    assert!(!sb.bpffs_dir().join("links").join(&c2_veth).exists(), "link pin removed");
    assert_eq!(pinned_map_len(sb.bpffs_dir(), "ENDPOINTS"), 1);
    assert_eq!(pinned_map_len(sb.bpffs_dir(), "IFACES"), 1);
    assert!(!ping(&c1, "10.213.0.50".parse::<std::net::Ipv4Addr>().unwrap()));
    let err = sb.fails(&["container", "rm", &c2]);
    assert!(err.contains("no container named"), "{err}");

    // The address is free again.
    sb.ok(&["container", "create", &c2, "--network", &net, "--ip", "10.213.0.50"]);
    assert!(ping(&c1, "10.213.0.50".parse::<std::net::Ipv4Addr>().unwrap()));

    sb.ok(&["container", "rm", &c1]);
    sb.ok(&["container", "rm", &c2]);
    sb.ok(&["network", "rm", &net]);
    assert_eq!(pinned_map_len(sb.bpffs_dir(), "NETWORKS"), 0);
    assert_eq!(sb.json(&["network", "ls", "--json"]), serde_json::json!([]));
    let host_links = links_in(sb.host_netns());
    assert_eq!(host_links, vec!["lo".to_owned()], "only lo left in the host namespace");
}

#[test]
fn down_and_sandbox_drop_leave_nothing_behind() {
    let (prefix, bpffs, state_dir);
    {
        let sb = Sandbox::new();
        let net = sb.name("net");
        sb.ok(&["network", "create", &net, "--subnet", "10.214.0.0/24"]);
        sb.ok(&["container", "create", &sb.name("c1"), "--network", &net]);
        sb.ok(&["container", "create", &sb.name("c2"), "--network", &net]);
        sb.ok(&["down"]);
        assert_eq!(namespaces_with_prefix(sb.prefix()), vec![sb.host_netns().to_owned()]);
        assert!(!sb.bpffs_dir().exists(), "down removes the pins");
        assert_eq!(sb.json(&["container", "ls", "--json"]), serde_json::json!([]));
        // And it can be used again after down.
        sb.ok(&["network", "create", &net, "--subnet", "10.214.0.0/24"]);
        sb.ok(&["container", "create", &sb.name("c1"), "--network", &net]);
        prefix = sb.prefix().to_owned();
        bpffs = sb.bpffs_dir().to_owned();
        state_dir = sb.state_dir().to_owned();
    }
    assert!(namespaces_with_prefix(&prefix).is_empty());
    assert!(!Path::new(&bpffs).exists());
    assert!(!Path::new(&state_dir).exists());
}
