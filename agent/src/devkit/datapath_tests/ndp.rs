//! Neighbour discovery of `from_endpoint6` (through `from_endpoint`'s tail call): a
//! solicitation for the gateway or a member is answered in place with the advertisement and
//! sent back to the asker, every byte of which (checksum included, computed here from scratch)
//! is checked; the rest is passed to the host, dropped quietly, or dropped with a reason.
use std::net::Ipv6Addr;

use datapath_common::{Counter, DropReason, Endpoint6};

use super::{
    packets::{
        checksum, eth, icmpv6, ipv6, link_local, multicast_mac, neighbor_advertisement, neighbor_solicitation,
        options_header, solicited_node, verify_ipv6_checksums, ETHERTYPE_IPV6, IPPROTO_ICMPV6,
        IPV6_DESTINATION_OPTIONS, IPV6_HOP_BY_HOP, MLD2_REPORT, MLD_REPORT, NA_OVERRIDE, NA_ROUTER, NA_SOLICITED,
        ROUTER_ADVERTISEMENT, ROUTER_SOLICITATION,
    },
    Fixture, A_IP6, B_IP6, C_IP6, TC_ACT_SHOT, WEB_GATEWAY6,
};
use crate::devkit::netns::is_root;

/// A solicitation from `asker` (sent from `src`) for `target`, as the container's kernel sends
/// it: to the target's solicited-node group (or to `target` itself: a unicast probe).
fn solicitation(asker: &Endpoint6, src: Ipv6Addr, target: Ipv6Addr, unicast: bool, slla: bool) -> Vec<u8> {
    let (dst, eth_dst) = if unicast {
        (target, asker.gateway_mac)
    } else {
        (solicited_node(target), multicast_mac(solicited_node(target)))
    };
    let ns = neighbor_solicitation(src, dst, target, slla.then_some(asker.mac));
    eth(eth_dst, asker.mac, ETHERTYPE_IPV6, &ns)
}

/// The advertisement the datapath must send back to `asker` (at `asker_ip`) for `target`.
fn advertisement(asker: &Endpoint6, asker_ip: Ipv6Addr, target: Ipv6Addr, mac: [u8; 6], flags: u8) -> Vec<u8> {
    let na = neighbor_advertisement(target, asker_ip, target, flags, Some(mac));
    eth(asker.mac, mac, ETHERTYPE_IPV6, &na)
}

const ROUTER: u8 = NA_ROUTER | NA_SOLICITED | NA_OVERRIDE;
const HOST: u8 = NA_SOLICITED | NA_OVERRIDE;

#[test]
fn solicitation_for_the_gateway_is_answered_with_the_gateway_mac() {
    if !is_root() {
        return;
    }
    let (fx, _, t) = Fixture::with_topology6();
    let gw_mac = t.a.gateway_mac;
    let out = fx.run_from_endpoint(t.a.host_ifindex, &solicitation(&t.a, A_IP6, WEB_GATEWAY6, false, true));
    out.assert_redirected(Counter::NdpReplied, &advertisement(&t.a, A_IP6, WEB_GATEWAY6, gw_mac, ROUTER));
    // Spelled out once, byte by byte, with the checksum computed here, so that the builder
    // above is checked too.
    let mut icmp = vec![136, 0, 0, 0, 0xe0, 0, 0, 0]; // NA, code 0, checksum, R|S|O
    icmp.extend(WEB_GATEWAY6.octets()); // target
    icmp.extend([2, 1]); // target link-layer address option, 8 bytes
    icmp.extend(gw_mac);
    let mut pseudo = WEB_GATEWAY6.octets().to_vec(); // source: the target
    pseudo.extend(A_IP6.octets()); // destination: the asker
    pseudo.extend([0, 0, 0, 32, 0, 0, 0, 58]); // upper-layer length, next header ICMPv6
    let sum = checksum(&[&pseudo, &icmp]);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut by_hand = Vec::new();
    by_hand.extend(t.a.mac); // eth dst: the asker
    by_hand.extend(gw_mac); // eth src: the answer
    by_hand.extend([0x86, 0xdd]);
    by_hand.extend([0x60, 0, 0, 0, 0, 32, 58, 255]); // version 6, payload 32, ICMPv6, hop limit 255
    by_hand.extend(WEB_GATEWAY6.octets());
    by_hand.extend(A_IP6.octets());
    by_hand.extend(&icmp);
    super::assert_bytes(&out.packet, &by_hand, "neighbour advertisement");
    assert_eq!(checksum(&[&pseudo, &out.packet[54..]]), 0, "the answer's checksum verifies");
}

#[test]
fn solicitation_from_the_link_local_address_or_unicast_is_answered_to_it() {
    if !is_root() {
        return;
    }
    let (fx, _, t) = Fixture::with_topology6();
    let a_ll = link_local(t.a.mac);
    for (src, unicast) in [(a_ll, false), (a_ll, true), (A_IP6, true)] {
        eprintln!("case: from {src}, unicast {unicast}");
        let out = fx.run_from_endpoint(t.a.host_ifindex, &solicitation(&t.a, src, WEB_GATEWAY6, unicast, true));
        out.assert_redirected(Counter::NdpReplied, &advertisement(&t.a, src, WEB_GATEWAY6, t.a.gateway_mac, ROUTER));
        verify_ipv6_checksums(&out.packet).unwrap();
    }
    // The gateway by its link-local address (the host-side veth's, from the gateway MAC).
    let gw_ll = link_local(t.a.gateway_mac);
    let out = fx.run_from_endpoint(t.a.host_ifindex, &solicitation(&t.a, a_ll, gw_ll, false, true));
    out.assert_redirected(Counter::NdpReplied, &advertisement(&t.a, a_ll, gw_ll, t.a.gateway_mac, ROUTER));
}

#[test]
fn solicitation_for_a_member_is_answered_with_its_mac() {
    if !is_root() {
        return;
    }
    let (fx, _, t) = Fixture::with_topology6();
    let out = fx.run_from_endpoint(t.a.host_ifindex, &solicitation(&t.a, A_IP6, B_IP6, false, true));
    out.assert_redirected(Counter::NdpReplied, &advertisement(&t.a, A_IP6, B_IP6, t.b.mac, HOST));
    // And the other way round, from B's interface.
    let out = fx.run_from_endpoint(t.b.host_ifindex, &solicitation(&t.b, B_IP6, A_IP6, false, true));
    out.assert_redirected(Counter::NdpReplied, &advertisement(&t.b, B_IP6, A_IP6, t.a.mac, HOST));
}

#[test]
fn solicitation_without_source_link_layer_option_is_grown_into_the_answer() {
    if !is_root() {
        return;
    }
    let (fx, _, t) = Fixture::with_topology6();
    let ns = solicitation(&t.a, A_IP6, WEB_GATEWAY6, true, false);
    assert_eq!(ns.len(), 78);
    let out = fx.run_from_endpoint(t.a.host_ifindex, &ns);
    out.assert_redirected(Counter::NdpReplied, &advertisement(&t.a, A_IP6, WEB_GATEWAY6, t.a.gateway_mac, ROUTER));
    assert_eq!(out.packet.len(), 86);
    // One with more options (a nonce, RFC 7527) is cut to the answer's size.
    let mut body = vec![0u8; 4];
    body.extend(B_IP6.octets());
    body.extend([1, 1]);
    body.extend(t.a.mac);
    body.extend([14, 1, 1, 2, 3, 4, 5, 6]); // nonce option
    let dst = solicited_node(B_IP6);
    let ns = ipv6(A_IP6, dst, IPPROTO_ICMPV6, 255, &icmpv6(A_IP6, dst, 135, 0, &body));
    let out = fx.run_from_endpoint(t.a.host_ifindex, &eth(multicast_mac(dst), t.a.mac, ETHERTYPE_IPV6, &ns));
    out.assert_redirected(Counter::NdpReplied, &advertisement(&t.a, A_IP6, B_IP6, t.b.mac, HOST));
}

#[test]
fn solicitation_for_an_unknown_target_is_dropped() {
    if !is_root() {
        return;
    }
    let (fx, _, t) = Fixture::with_topology6();
    for target in [
        "2001:db8:88::99".parse().unwrap(), // a free address of its own subnet
        C_IP6,                              // a member of `db`
        "2001:db8:99::1".parse().unwrap(),  // `db`'s gateway
        A_IP6,                              // itself
        link_local(t.b.mac),                // another container's link-local address
    ] {
        eprintln!("case: target {target}");
        fx.run_from_endpoint(t.a.host_ifindex, &solicitation(&t.a, A_IP6, target, false, true))
            .assert_dropped(DropReason::NdpUnknownTarget);
    }
}

#[test]
fn duplicate_address_detection_is_not_answered() {
    if !is_root() {
        return;
    }
    let (fx, _, t) = Fixture::with_topology6();
    // From ::, without a source link-layer option (RFC 4861 forbids one there), for its own
    // address and for the gateway's: both unanswered, or the container would take its own
    // address, or the gateway's, as a duplicate.
    for target in [A_IP6, WEB_GATEWAY6] {
        let dad = solicitation(&t.a, Ipv6Addr::UNSPECIFIED, target, false, false);
        let out = fx.run_from_endpoint(t.a.host_ifindex, &dad);
        out.assert_moved(TC_ACT_SHOT, &[], &[Counter::NdpIgnored]);
    }
}

#[test]
fn advertisement_from_the_container_goes_to_the_host_only_for_its_own_addresses() {
    if !is_root() {
        return;
    }
    let (fx, _, t) = Fixture::with_topology6();
    let gw_ll = link_local(t.a.gateway_mac);
    for (src, target) in [(A_IP6, A_IP6), (link_local(t.a.mac), link_local(t.a.mac)), (link_local(t.a.mac), A_IP6)] {
        let na = neighbor_advertisement(src, gw_ll, target, HOST, Some(t.a.mac));
        let frame = eth(t.a.gateway_mac, t.a.mac, ETHERTYPE_IPV6, &na);
        fx.run_from_endpoint(t.a.host_ifindex, &frame).assert_passed(Counter::NdpToHost);
    }
    for target in [B_IP6, WEB_GATEWAY6] {
        let na = neighbor_advertisement(A_IP6, gw_ll, target, HOST, Some(t.a.mac));
        let frame = eth(t.a.gateway_mac, t.a.mac, ETHERTYPE_IPV6, &na);
        fx.run_from_endpoint(t.a.host_ifindex, &frame).assert_dropped(DropReason::SpoofedSource);
    }
}

#[test]
fn router_solicitations_and_listener_reports_are_dropped_quietly() {
    if !is_root() {
        return;
    }
    let (fx, _, t) = Fixture::with_topology6();
    let a_ll = link_local(t.a.mac);
    let all_routers: Ipv6Addr = "ff02::2".parse().unwrap();
    let rs = ipv6(a_ll, all_routers, IPPROTO_ICMPV6, 255, &icmpv6(a_ll, all_routers, ROUTER_SOLICITATION, 0, &[0; 4]));
    let mld_routers: Ipv6Addr = "ff02::16".parse().unwrap();
    // MLD: hop limit 1, behind a hop-by-hop header (the router alert option, RFC 3810).
    let mld = |src: Ipv6Addr, icmp_type: u8| {
        let mut payload = options_header(IPPROTO_ICMPV6, 1);
        payload[2..6].copy_from_slice(&[5, 2, 0, 0]); // router alert: MLD
        payload[6..8].copy_from_slice(&[1, 0]); // PadN of 0 bytes
        payload.extend(icmpv6(src, mld_routers, icmp_type, 0, &[0; 4]));
        ipv6(src, mld_routers, IPV6_HOP_BY_HOP, 1, &payload)
    };
    let cases = [
        ("router solicitation", eth(multicast_mac(all_routers), t.a.mac, ETHERTYPE_IPV6, &rs)),
        ("MLDv2 report", eth(multicast_mac(mld_routers), t.a.mac, ETHERTYPE_IPV6, &mld(a_ll, MLD2_REPORT))),
        (
            "MLDv2 report from ::",
            eth(multicast_mac(mld_routers), t.a.mac, ETHERTYPE_IPV6, &mld(Ipv6Addr::UNSPECIFIED, MLD2_REPORT)),
        ),
        ("MLDv1 report", eth(multicast_mac(mld_routers), t.a.mac, ETHERTYPE_IPV6, &mld(a_ll, MLD_REPORT))),
    ];
    for (what, frame) in cases {
        eprintln!("case: {what}");
        fx.run_from_endpoint(t.a.host_ifindex, &frame).assert_moved(TC_ACT_SHOT, &[], &[Counter::NdpIgnored]);
    }
}

#[test]
fn invalid_or_router_only_messages_are_dropped() {
    if !is_root() {
        return;
    }
    let (fx, _, t) = Fixture::with_topology6();
    let all_nodes: Ipv6Addr = "ff02::1".parse().unwrap();
    let a_ll = link_local(t.a.mac);
    let ra = ipv6(a_ll, all_nodes, IPPROTO_ICMPV6, 255, &icmpv6(a_ll, all_nodes, ROUTER_ADVERTISEMENT, 0, &[0; 12]));
    let mut hop_limit_64 = solicitation(&t.a, A_IP6, WEB_GATEWAY6, false, true);
    hop_limit_64[14 + 7] = 64;
    let mut code_1 = solicitation(&t.a, A_IP6, WEB_GATEWAY6, false, true);
    code_1[54 + 1] = 1;
    // A solicitation behind a destination options header: valid IPv6, but the answer is built
    // in place, which needs the message right after the IPv6 header.
    let group = solicited_node(WEB_GATEWAY6);
    let ns = neighbor_solicitation(A_IP6, group, WEB_GATEWAY6, Some(t.a.mac));
    let mut behind = options_header(IPPROTO_ICMPV6, 1);
    behind.extend(&ns[40..]);
    let behind = ipv6(A_IP6, group, IPV6_DESTINATION_OPTIONS, 255, &behind);
    let cases = [
        ("router advertisement", eth(multicast_mac(all_nodes), t.a.mac, ETHERTYPE_IPV6, &ra)),
        ("hop limit 64", hop_limit_64),
        ("code 1", code_1),
        ("behind an extension header", eth(multicast_mac(group), t.a.mac, ETHERTYPE_IPV6, &behind)),
    ];
    for (what, frame) in cases {
        eprintln!("case: {what}");
        fx.run_from_endpoint(t.a.host_ifindex, &frame).assert_dropped(DropReason::NdpInvalid);
    }
    // A solicitation cut after its first 8 bytes: no target to read.
    let ns = solicitation(&t.a, A_IP6, WEB_GATEWAY6, false, false);
    let mut cut = ns[..54 + 8].to_vec();
    cut[18..20].copy_from_slice(&8u16.to_be_bytes());
    fx.run_from_endpoint(t.a.host_ifindex, &cut).assert_dropped(DropReason::Malformed);
}
