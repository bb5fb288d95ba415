//! IPv6 from a container: `from_endpoint`'s tail call into `from_endpoint6`, delivery to a
//! member of the same network (Ethernet rewritten, nothing else touched), the host for the
//! gateway and link-scoped destinations, anti-spoofing, the extension header walk, and the
//! uplink's IPv6 (passed to the host for now). Every test goes in through `from_endpoint` (or
//! an uplink program), as real traffic does.
use std::net::Ipv6Addr;

use aya::maps::{MapData, ProgramArray};
use datapath_common::{map_names, program_names, tail_call_slots, Counter, DropReason, Endpoint6};

use super::{
    packets::{
        eth, fragment_header, icmpv6, ipv6, link_local, multicast_mac, options_header, udp6, verify_ipv6_checksums,
        ETHERTYPE_IPV6, ETH_HLEN, ICMPV6_ECHO_REQUEST, IPPROTO_ICMPV6, IPPROTO_UDP, IPV6_DESTINATION_OPTIONS,
        IPV6_FRAGMENT, IPV6_HOP_BY_HOP, IPV6_ROUTING,
    },
    uplink_test, Fixture, Topology6, A_IP6, B_IP6, C_IP6, TC_ACT_OK, WEB_GATEWAY6,
};
use crate::devkit::{netns::is_root, testbed::ProgramKind};

fn addr(ep: &Endpoint6) -> Ipv6Addr {
    Ipv6Addr::from(datapath_common::ipv6_octets(ep.ip))
}

/// A UDP datagram over IPv6 from `from` (its own MAC and address) to `dst`, sent to Ethernet
/// `eth_dst`.
fn udp6_frame(from: &Endpoint6, eth_dst: [u8; 6], dst: Ipv6Addr) -> Vec<u8> {
    udp6_frame_behind(from, eth_dst, dst, IPPROTO_UDP, &[])
}

/// The same behind extension headers: `first` names the first of `extensions`, each of which
/// names the next in its first byte (the last names UDP).
fn udp6_frame_behind(from: &Endpoint6, eth_dst: [u8; 6], dst: Ipv6Addr, first: u8, extensions: &[Vec<u8>]) -> Vec<u8> {
    let src = addr(from);
    let mut payload: Vec<u8> = extensions.concat();
    payload.extend(udp6(src, dst, 40000, 5353, b"bpfnet IPv6 datapath test"));
    eth(eth_dst, from.mac, ETHERTYPE_IPV6, &ipv6(src, dst, first, 64, &payload))
}

/// `frame` with the Ethernet addresses a delivery to `to` leaves in it.
fn delivered(to: &Endpoint6, frame: &[u8]) -> Vec<u8> {
    let mut expected = frame.to_vec();
    expected[..6].copy_from_slice(&to.mac);
    expected[6..12].copy_from_slice(&to.gateway_mac);
    expected
}

fn received_packets(fx: &Fixture, ep: &Endpoint6) -> u64 {
    fx.datapath.endpoint_stats(ep.stats_slot).unwrap().received_packets
}

#[test]
fn ipv6_to_a_member_is_delivered_through_the_tail_call() {
    if !is_root() {
        return;
    }
    let (fx, _, t) = Fixture::with_topology6();
    // On-link (to B's MAC, after neighbour discovery) and via the gateway's MAC.
    for eth_dst in [t.b.mac, t.a.gateway_mac] {
        let frame = udp6_frame(&t.a, eth_dst, B_IP6);
        let before = received_packets(&fx, &t.b);
        let out = fx.run_from_endpoint(t.a.host_ifindex, &frame);
        out.assert_redirected(Counter::Forwarded, &delivered(&t.b, &frame));
        verify_ipv6_checksums(&out.packet).unwrap();
        // The redirect went to B's veth: B's statistics slot counts it as received.
        assert_eq!(received_packets(&fx, &t.b) - before, 1, "B received it");
    }
    // ICMPv6 echo (not neighbour discovery) the same way, and from B to A.
    let echo = icmpv6(B_IP6, A_IP6, ICMPV6_ECHO_REQUEST, 0, &[0, 1, 0, 1, 0xa5, 0xa5]);
    let frame = eth(t.a.mac, t.b.mac, ETHERTYPE_IPV6, &ipv6(B_IP6, A_IP6, IPPROTO_ICMPV6, 64, &echo));
    fx.run_from_endpoint(t.b.host_ifindex, &frame).assert_redirected(Counter::Forwarded, &delivered(&t.a, &frame));
}

#[test]
fn ipv6_to_another_networks_member_is_dropped() {
    if !is_root() {
        return;
    }
    let (fx, _, t) = Fixture::with_topology6();
    let drops_before = fx.datapath.endpoint_drops(t.a.stats_slot).unwrap();
    let frame = udp6_frame(&t.a, t.a.gateway_mac, C_IP6);
    fx.run_from_endpoint(t.a.host_ifindex, &frame).assert_dropped(DropReason::CrossNetwork);
    assert_eq!(fx.datapath.endpoint_drops(t.a.stats_slot).unwrap() - drops_before, 1, "counted as A's drop");
}

#[test]
fn ipv6_to_the_gateway_link_local_multicast_or_outside_goes_to_the_host() {
    if !is_root() {
        return;
    }
    let (fx, _, t) = Fixture::with_topology6();
    let all_nodes: Ipv6Addr = "ff02::1".parse().unwrap();
    let outside: Ipv6Addr = "2001:db8:ffff::1".parse().unwrap();
    let cases = [
        (t.a.gateway_mac, WEB_GATEWAY6),
        (t.a.gateway_mac, link_local(t.a.gateway_mac)),
        (multicast_mac(all_nodes), all_nodes),
        (t.a.gateway_mac, outside),
        // A free address of its own subnet: no member, so not on-link for the datapath.
        (t.a.gateway_mac, "2001:db8:88::99".parse().unwrap()),
    ];
    for (eth_dst, dst) in cases {
        eprintln!("case: to {dst}");
        fx.run_from_endpoint(t.a.host_ifindex, &udp6_frame(&t.a, eth_dst, dst)).assert_passed(Counter::ToHost);
    }
}

#[test]
fn spoofed_ipv6_source_or_mac_is_dropped() {
    if !is_root() {
        return;
    }
    let (fx, _, t) = Fixture::with_topology6();
    let as_b_ip = Endpoint6 { ip: t.b.ip, ..t.a };
    let as_b_mac = Endpoint6 { mac: t.b.mac, ..t.a };
    let other_ip =
        Endpoint6 { ip: datapath_common::ipv6_be("2001:db8:88::77".parse::<Ipv6Addr>().unwrap().octets()), ..t.a };
    for (what, from) in [("B's address", as_b_ip), ("B's MAC", as_b_mac), ("a free address", other_ip)] {
        eprintln!("case: {what}");
        let frame = udp6_frame(&from, t.a.gateway_mac, WEB_GATEWAY6);
        fx.run_from_endpoint(t.a.host_ifindex, &frame).assert_dropped(DropReason::SpoofedSource);
    }
}

#[test]
fn link_local_or_unspecified_source_is_allowed_only_for_neighbour_discovery() {
    if !is_root() {
        return;
    }
    let (fx, _, t) = Fixture::with_topology6();
    for src in [link_local(t.a.mac), Ipv6Addr::UNSPECIFIED] {
        let from = Endpoint6 { ip: super::be6(src), ..t.a };
        for dst in [WEB_GATEWAY6, B_IP6, link_local(t.a.gateway_mac)] {
            eprintln!("case: UDP {src} -> {dst}");
            let frame = udp6_frame(&from, t.a.gateway_mac, dst);
            fx.run_from_endpoint(t.a.host_ifindex, &frame).assert_dropped(DropReason::SpoofedSource);
        }
    }
    // Another container's link-local address is spoofed even for neighbour discovery.
    let ns = super::packets::neighbor_solicitation(link_local(t.b.mac), WEB_GATEWAY6, WEB_GATEWAY6, Some(t.a.mac));
    let frame = eth(t.a.gateway_mac, t.a.mac, ETHERTYPE_IPV6, &ns);
    fx.run_from_endpoint(t.a.host_ifindex, &frame).assert_dropped(DropReason::SpoofedSource);
}

#[test]
fn container_without_ipv6_has_its_ipv6_dropped() {
    if !is_root() {
        return;
    }
    // Dual stack for A and B only: C's network has no IPv6 subnet.
    let (mut fx, t4, t) = Fixture::with_topology6();
    fx.datapath.remove_endpoint6(t.c.ip).unwrap();
    let drops_before = fx.datapath.endpoint_drops(t4.c.stats_slot).unwrap();
    let frame = udp6_frame(&t.c, t.c.gateway_mac, C_IP6);
    fx.run_from_endpoint(t.c.host_ifindex, &frame).assert_dropped(DropReason::UnsupportedL3);
    assert_eq!(fx.datapath.endpoint_drops(t4.c.stats_slot).unwrap() - drops_before, 1, "counted as C's drop");
    // An interface that is no endpoint at all is refused before the tail call, as for IPv4.
    fx.run_from_endpoint(fx.peer_ifindex[0], &udp6_frame(&t.a, t.b.mac, B_IP6))
        .assert_dropped(DropReason::UnknownInterface);
}

#[test]
fn extension_headers_are_walked_up_to_the_bound() {
    if !is_root() {
        return;
    }
    let (fx, _, t) = Fixture::with_topology6();
    // Hop-by-hop, then destination options (two units), then UDP: delivered untouched.
    let walked = [options_header(IPV6_DESTINATION_OPTIONS, 1), options_header(IPPROTO_UDP, 2)];
    let frame = udp6_frame_behind(&t.a, t.b.mac, B_IP6, IPV6_HOP_BY_HOP, &walked);
    fx.run_from_endpoint(t.a.host_ifindex, &frame).assert_redirected(Counter::Forwarded, &delivered(&t.b, &frame));
    // Four headers (hop-by-hop, routing, destination options, fragment): the bound, walked.
    let mut routing = options_header(IPV6_DESTINATION_OPTIONS, 1);
    routing[2..4].copy_from_slice(&[0, 0]); // routing type 0 (deprecated; only walked), segments left 0
    let four = [
        options_header(IPV6_ROUTING, 1),
        routing,
        options_header(IPV6_FRAGMENT, 1),
        fragment_header(IPPROTO_UDP, 0, false, 0x1234_5678),
    ];
    let frame = udp6_frame_behind(&t.a, t.b.mac, B_IP6, IPV6_HOP_BY_HOP, &four);
    fx.run_from_endpoint(t.a.host_ifindex, &frame).assert_redirected(Counter::Forwarded, &delivered(&t.b, &frame));
    // Five: over the bound.
    let five = [
        options_header(IPV6_DESTINATION_OPTIONS, 1),
        options_header(IPV6_DESTINATION_OPTIONS, 1),
        options_header(IPV6_DESTINATION_OPTIONS, 1),
        options_header(IPV6_DESTINATION_OPTIONS, 1),
        options_header(IPPROTO_UDP, 1),
    ];
    let frame = udp6_frame_behind(&t.a, t.b.mac, B_IP6, IPV6_HOP_BY_HOP, &five);
    fx.run_from_endpoint(t.a.host_ifindex, &frame).assert_dropped(DropReason::Ipv6ExtensionHeaders);
    // Two fragment headers: no such packet exists.
    let twice = [
        options_header(IPV6_FRAGMENT, 1),
        fragment_header(IPV6_FRAGMENT, 0, true, 1),
        fragment_header(IPPROTO_UDP, 0, true, 1),
    ];
    let frame = udp6_frame_behind(&t.a, t.b.mac, B_IP6, IPV6_HOP_BY_HOP, &twice);
    fx.run_from_endpoint(t.a.host_ifindex, &frame).assert_dropped(DropReason::Ipv6ExtensionHeaders);
}

#[test]
fn truncated_extension_headers_are_malformed() {
    if !is_root() {
        return;
    }
    let (fx, _, t) = Fixture::with_topology6();
    // The shortest IPv6 frame the kernel runs: a bare header. Naming a hop-by-hop header that
    // is not there, or one longer than the packet, it is malformed.
    let bare = eth(t.b.mac, t.a.mac, ETHERTYPE_IPV6, &ipv6(A_IP6, B_IP6, IPV6_HOP_BY_HOP, 64, &[]));
    assert_eq!(bare.len(), ETH_HLEN + 40);
    fx.run_from_endpoint(t.a.host_ifindex, &bare).assert_dropped(DropReason::Malformed);
    let hop_by_hop = options_header(IPV6_DESTINATION_OPTIONS, 1);
    let frame = eth(t.b.mac, t.a.mac, ETHERTYPE_IPV6, &ipv6(A_IP6, B_IP6, IPV6_HOP_BY_HOP, 64, &hop_by_hop));
    fx.run_from_endpoint(t.a.host_ifindex, &frame).assert_dropped(DropReason::Malformed);
    // A version that is not 6 behind the IPv6 EtherType.
    let mut wrong_version = udp6_frame(&t.a, t.b.mac, B_IP6);
    wrong_version[ETH_HLEN] = 0x40;
    fx.run_from_endpoint(t.a.host_ifindex, &wrong_version).assert_dropped(DropReason::Malformed);
}

/// An empty slot (as an agent that knows no IPv6 leaves the program array): from a container,
/// IPv6 is dropped as before dual stack; on the uplink, passed.
#[test]
fn without_the_tail_call_ipv6_is_handled_as_before() {
    if !is_root() {
        return;
    }
    let (fx, _, t) = Fixture::with_topology6();
    let frame = udp6_frame(&t.a, t.b.mac, B_IP6);
    clear_slot(&fx, map_names::TAIL_CALLS, tail_call_slots::FROM_ENDPOINT6);
    fx.run_from_endpoint(t.a.host_ifindex, &frame).assert_dropped(DropReason::UnsupportedL3);
    clear_slot(&fx, map_names::TAIL_CALLS, tail_call_slots::FROM_UPLINK6);
    clear_slot(&fx, map_names::TAIL_CALLS_XDP, tail_call_slots::FROM_UPLINK6);
    for program in [program_names::FROM_UPLINK, program_names::FROM_UPLINK_XDP] {
        let out = fx.send(program, t.a.host_ifindex, &frame).unwrap();
        assert_eq!(out.retval, TC_ACT_OK, "{program}");
        assert!(out.counters.iter().chain(&out.drops).all(|n| *n == 0), "{program}: nothing counted");
    }
}

fn clear_slot(fx: &Fixture, array: &str, slot: u32) {
    let path = fx.pin_dir().join("maps").join(array);
    let map = aya::maps::Map::ProgramArray(MapData::from_pin(&path).unwrap());
    let mut array: ProgramArray<MapData> = ProgramArray::try_from(map).unwrap();
    array.clear_index(&slot).unwrap();
}

uplink_test! {
    /// IPv6 on the uplink reaches the uplink's IPv6 program (it counts), which passes it to
    /// the host untouched (nothing is translated back yet).
    fn ipv6_on_the_uplink_goes_to_the_host(fx, t4, uplink) {
        let t: Topology6 = fx.topology6(&t4);
        let dst: Ipv6Addr = "2001:db8:1::1".parse().unwrap();
        let src: Ipv6Addr = "2001:db8:2::2".parse().unwrap();
        let datagram = udp6(src, dst, 53, 40000, b"reply");
        let frame = eth(t.a.gateway_mac, [0x02, 0, 0, 0, 0, 0x99], ETHERTYPE_IPV6, &ipv6(src, dst, IPPROTO_UDP, 64, &datagram));
        fx.run_from_uplink(uplink.ifindex, &frame).assert_passed(Counter::UplinkToHost);
    }
}

#[test]
fn every_ipv6_program_is_loaded_and_in_its_slot() {
    if !is_root() {
        return;
    }
    let (fx, _, _) = Fixture::with_topology6();
    let targets = crate::datapath::Datapath::tail_call_targets(fx.pin_dir()).unwrap();
    for ((name, array, slot), (_, id)) in program_names::TAIL_CALLED.into_iter().zip(targets) {
        let program = fx.program(name).unwrap();
        let pinned = aya::programs::ProgramInfo::from_pin(fx.pin_dir().join("progs").join(name)).unwrap().id();
        assert_eq!(id, Some(pinned), "{name}: slot {slot} of {array} holds the pinned program");
        assert_eq!(program.kind == ProgramKind::Xdp, name == program_names::FROM_UPLINK6_XDP, "{name}'s type");
    }
    let ids = fx.datapath.program_ids().unwrap();
    for name in [program_names::FROM_ENDPOINT6, program_names::FROM_UPLINK6, program_names::FROM_UPLINK6_XDP] {
        assert!(ids.iter().any(|(n, id)| *n == name && *id != 0), "{name} listed with its id: {ids:?}");
    }
}
