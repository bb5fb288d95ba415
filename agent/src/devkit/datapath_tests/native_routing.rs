//! Native routing (`--cluster-cidr`): a container's packet to another node's pod leaves the
//! uplink untranslated and untracked, a packet from another node's pod is delivered into its
//! container, traffic outside the cluster CIDR is still masqueraded, a published port still
//! answers a remote pod from the published address, and without a cluster CIDR nothing
//! changes. Every case checks the verdict, the counters, conntrack, and the whole packet that
//! comes out (rebuilt from scratch, so its checksums too).
use std::net::Ipv4Addr;

use datapath_common::{Counter, DropReason, HostConfig};

use super::nat::{
    entry, frame, from_container, from_outside, key, publish_b, snat_new_flow, snat_to_server, ACK, B_PORT, L4,
    PUBLISHED_PORT, SYN,
};
use super::uplink_test;
use super::{
    assert_bytes, be,
    packets::{
        eth, icmp_error, ipv4, ipv4_with, udp, verify_ipv4_checksums, ETHERTYPE_IPV4, IPPROTO_ICMP, IPPROTO_UDP,
    },
    Fixture, Topology, Uplink, A_IP, B_IP, ROUTER_MAC, TC_ACT_OK, TC_ACT_REDIRECT, UPLINK_IP, UPLINK_MAC,
};
use crate::devkit::netns::is_root;

/// The cluster's pod CIDR: this host's networks (10.88.0.0/24, 10.99.0.0/24) and the other
/// nodes' pod subnets lie in it.
const CLUSTER: Ipv4Addr = Ipv4Addr::new(10, 64, 0, 0);
const CLUSTER_MASK: Ipv4Addr = Ipv4Addr::new(255, 192, 0, 0);
/// A pod of another node, routed via the uplink's router (as a route to that node's pod
/// subnet would send it).
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 5);

fn with_cluster(fx: &Fixture, uplink: &Uplink) -> HostConfig {
    HostConfig { cluster_net: be(CLUSTER), cluster_mask: be(CLUSTER_MASK), ..fx.host_config(uplink) }
}

/// The fixture with an uplink and the cluster CIDR set.
fn cluster_fixture() -> (Fixture, Topology, Uplink) {
    let (mut fx, t, uplink) = Fixture::with_uplink();
    fx.set_config(&with_cluster(&fx, &uplink));
    (fx, t, uplink)
}

/// What a pod sends that another node's pod may see: a new flow, an answer to a flow tracked
/// by nobody (a SYN-ACK, which masquerade would refuse as conntrack_invalid), a ping.
fn pod_flows() -> [L4<'static>; 4] {
    [
        L4::Tcp { sport: 40001, dport: 8080, flags: SYN, payload: b"" },
        L4::Tcp { sport: 80, dport: 51000, flags: SYN | ACK, payload: b"" },
        L4::Udp { sport: 40000, dport: 53, payload: b"to a pod" },
        L4::EchoRequest { id: 0x4242, seq: 1, payload: &[0xa5; 56] },
    ]
}

#[test]
fn a_packet_to_another_nodes_pod_is_routed_as_it_is_and_not_tracked() {
    if !is_root() {
        return;
    }
    let (fx, t, _uplink) = cluster_fixture();
    for l4 in pod_flows() {
        eprintln!("case: {l4:?}");
        let out = fx.run_from_endpoint(t.a.host_ifindex, &from_container(&t.a, REMOTE_POD, &l4));
        // The router's MACs and TTL - 1, as routing requires; addresses and ports as sent.
        out.assert_redirected(Counter::RoutedNative, &frame(ROUTER_MAC, UPLINK_MAC, A_IP, REMOTE_POD, 63, &[], &l4));
        verify_ipv4_checksums(&out.packet).unwrap();
    }
    assert!(fx.ct_entries().is_empty(), "native routing tracks nothing: {:?}", fx.ct_entries());
    assert_eq!(fx.ct_inserted(), 0);
}

#[test]
fn a_later_fragment_to_another_nodes_pod_is_routed_without_its_first() {
    if !is_root() {
        return;
    }
    let (fx, t, _uplink) = cluster_fixture();
    // Offset 8 bytes, no more fragments: a later fragment whose first was never seen, which
    // masquerade would drop (fragment_without_first); routing needs no ports.
    let fragment = |dst_mac, src_mac, ttl| {
        eth(dst_mac, src_mac, ETHERTYPE_IPV4, &ipv4_with(A_IP, REMOTE_POD, IPPROTO_UDP, &[], &[0x5a; 24], ttl, 1))
    };
    let out = fx.run_from_endpoint(t.a.host_ifindex, &fragment(t.a.gateway_mac, t.a.mac, 64));
    out.assert_redirected(Counter::RoutedNative, &fragment(ROUTER_MAC, UPLINK_MAC, 63));
    assert!(fx.ct_entries().is_empty());
}

/// A's "port unreachable" to another node's pod, about a datagram of that pod's (no flow):
/// routed as it is in both directions, its quote untouched.
#[test]
fn an_icmp_error_between_pods_of_two_nodes_is_routed_as_it_is() {
    if !is_root() {
        return;
    }
    let (fx, t, uplink) = cluster_fixture();
    const PORT_UNREACHABLE: (u8, u8) = (3, 3);
    let error = |src, dst, dst_mac, src_mac, ttl| {
        let datagram = udp(dst, src, 5000, 9, b"anyone?");
        let quoted = ipv4(dst, src, IPPROTO_UDP, &[], &datagram);
        let message = icmp_error(PORT_UNREACHABLE.0, PORT_UNREACHABLE.1, [0; 4], &quoted);
        eth(dst_mac, src_mac, ETHERTYPE_IPV4, &ipv4_with(src, dst, IPPROTO_ICMP, &[], &message, ttl, 0x4000))
    };
    let out = fx.run_from_endpoint(t.a.host_ifindex, &error(A_IP, REMOTE_POD, t.a.gateway_mac, t.a.mac, 64));
    out.assert_redirected(Counter::RoutedNative, &error(A_IP, REMOTE_POD, ROUTER_MAC, UPLINK_MAC, 63));
    let out = fx.run_from_uplink(uplink.ifindex, &error(REMOTE_POD, A_IP, UPLINK_MAC, ROUTER_MAC, 64));
    out.assert_redirected(Counter::DeliveredNative, &error(REMOTE_POD, A_IP, t.a.mac, t.a.gateway_mac, 63));
    assert!(fx.ct_entries().is_empty());
}

#[test]
fn outside_the_cluster_cidr_traffic_is_still_masqueraded() {
    if !is_root() {
        return;
    }
    let (fx, t, _uplink) = cluster_fixture();
    snat_to_server(&fx, &t, &L4::Udp { sport: 40000, dport: 53, payload: b"to the world" });
}

#[test]
fn without_a_cluster_cidr_a_pod_address_is_masqueraded_as_before() {
    if !is_root() {
        return;
    }
    let (fx, t, _uplink) = Fixture::with_uplink();
    let l4 = L4::Udp { sport: 40000, dport: 53, payload: b"to a pod" };
    let sent = from_container(&t.a, REMOTE_POD, &l4);
    snat_new_flow(&fx, &t, REMOTE_POD, &l4, &sent, |port| {
        frame(ROUTER_MAC, UPLINK_MAC, UPLINK_IP, REMOTE_POD, 63, &[], &l4.with_key_ports(port, 53))
    });
    // And the SYN-ACK of no flow stays refused.
    let synack = L4::Tcp { sport: 80, dport: 51000, flags: SYN | ACK, payload: b"" };
    fx.run_from_endpoint(t.a.host_ifindex, &from_container(&t.a, REMOTE_POD, &synack))
        .assert_dropped(DropReason::ConntrackInvalid);
}

#[test]
fn ttl_1_to_another_nodes_pod_is_left_to_the_host() {
    if !is_root() {
        return;
    }
    let (fx, t, _uplink) = cluster_fixture();
    let l4 = L4::Udp { sport: 40000, dport: 33434, payload: b"traceroute" };
    let sent = frame(t.a.gateway_mac, t.a.mac, A_IP, REMOTE_POD, 1, &[], &l4);
    // The host stack answers with ICMP time exceeded.
    fx.run_from_endpoint(t.a.host_ifindex, &sent).assert_passed(Counter::ToHost);
}

uplink_test! {
    fn a_packet_from_another_nodes_pod_is_delivered_into_its_container(mut fx, t, uplink) {
        fx.set_config(&with_cluster(&fx, &uplink));
        for l4 in pod_flows() {
            eprintln!("case: {l4:?}");
            let out = fx.run_from_uplink(uplink.ifindex, &from_outside(REMOTE_POD, A_IP, &l4));
            out.assert_redirected(
                Counter::DeliveredNative,
                &frame(t.a.mac, t.a.gateway_mac, REMOTE_POD, A_IP, 63, &[], &l4),
            );
            verify_ipv4_checksums(&out.packet).unwrap();
        }
        assert!(fx.ct_entries().is_empty(), "native routing tracks nothing");
    }
}

uplink_test! {
    fn on_the_uplink_a_local_pods_source_is_spoofed_and_other_addresses_are_the_hosts(mut fx, t, uplink) {
        fx.set_config(&with_cluster(&fx, &uplink));
        let l4 = L4::Udp { sport: 40000, dport: 53, payload: b"x" };
        // A container of this host never sends from outside.
        fx.run_from_uplink(uplink.ifindex, &from_outside(B_IP, A_IP, &l4))
            .assert_dropped(DropReason::UplinkSpoofedPod);
        // In the cluster CIDR but no container of this host: not native routing's.
        fx.run_from_uplink(uplink.ifindex, &from_outside(REMOTE_POD, Ipv4Addr::new(10, 88, 0, 99), &l4))
            .assert_passed(Counter::UplinkToHost);
        // TTL 1 is not forwarded: the host stack answers it.
        let last_hop = frame(UPLINK_MAC, ROUTER_MAC, REMOTE_POD, A_IP, 1, &[], &l4);
        fx.run_from_uplink(uplink.ifindex, &last_hop).assert_passed(Counter::UplinkToHost);
        let _ = t;
    }
}

uplink_test! {
    fn without_a_cluster_cidr_a_packet_for_a_container_passes_to_the_host(fx, t, uplink) {
        let l4 = L4::Udp { sport: 40000, dport: 53, payload: b"x" };
        fx.run_from_uplink(uplink.ifindex, &from_outside(REMOTE_POD, A_IP, &l4)).assert_passed(Counter::UplinkToHost);
        let _ = t;
    }
}

uplink_test! {
    /// A pod of another node calls a published port of this host with its own address (its
    /// node routed it untranslated): B sees the pod's address, and B's reply, although its
    /// destination lies in the cluster CIDR, is its flow's: translated back to the published
    /// address and port, not routed as it is.
    fn a_published_port_answers_another_nodes_pod_from_the_published_address(mut fx, t, uplink) {
        fx.set_config(&with_cluster(&fx, &uplink));
        publish_b(&mut fx);
        let l4 = L4::Udp { sport: 5555, dport: PUBLISHED_PORT, payload: b"hello" };
        let out = fx.run_from_uplink(uplink.ifindex, &from_outside(REMOTE_POD, UPLINK_IP, &l4));
        out.assert_moved(TC_ACT_REDIRECT, &[], &[Counter::DnatNewFlow, Counter::TranslatedIn]);
        let inside = l4.with_key_ports(5555, B_PORT);
        assert_bytes(&out.packet, &frame(t.b.mac, t.b.gateway_mac, REMOTE_POD, B_IP, 63, &[], &inside), "DNAT'd");
        let reply = L4::Udp { sport: B_PORT, dport: 5555, payload: b"hello yourself" };
        let out = fx.run_from_endpoint(t.b.host_ifindex, &from_container(&t.b, REMOTE_POD, &reply));
        let back = reply.with_key_ports(PUBLISHED_PORT, 5555);
        out.assert_redirected(
            Counter::TranslatedOut,
            &frame(ROUTER_MAC, UPLINK_MAC, UPLINK_IP, REMOTE_POD, 63, &[], &back),
        );
        let original = key(REMOTE_POD, UPLINK_IP, l4.key_ports(), IPPROTO_UDP);
        assert_eq!(entry(&fx, &original).packets, 1);
        assert_eq!(fx.ct_entries().len(), 2, "one flow, the published port's");
        // Nothing passes to the host on the way.
        assert_ne!(out.retval, TC_ACT_OK);
    }
}

/// Host access holds inside the cluster CIDR too: an address of the host there (as another
/// network's gateway, on `lo`) is refused as any host address is, unless allowed.
#[test]
fn a_host_address_in_the_cluster_cidr_is_refused_as_any_host_address() {
    if !is_root() {
        return;
    }
    let (mut fx, t, uplink) = cluster_fixture();
    let local = Ipv4Addr::new(10, 70, 0, 1);
    add_local_address(&fx, local);
    let l4 = L4::Udp { sport: 40000, dport: 53, payload: b"x" };
    let sent = from_container(&t.a, local, &l4);
    fx.run_from_endpoint(t.a.host_ifindex, &sent).assert_dropped(DropReason::HostAccessDenied);
    let allowed =
        HostConfig { flags: datapath_common::host_config_flags::ALLOW_HOST_ACCESS, ..with_cluster(&fx, &uplink) };
    fx.set_config(&allowed);
    fx.run_from_endpoint(t.a.host_ifindex, &sent).assert_passed(Counter::ToHost);
}

fn add_local_address(fx: &Fixture, addr: Ipv4Addr) {
    let ns = fx.netns().to_owned();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime
        .block_on(crate::sys::netns::netlink_in(&ns, move |nl| async move {
            nl.set_up("lo").await?;
            nl.add_address("lo", ipnet::IpNet::V4(ipnet::Ipv4Net::new(addr, 32)?)).await
        }))
        .unwrap();
}
