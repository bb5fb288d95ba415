//! ICMPv6 errors on the uplink about a masqueraded flow: destination unreachable, packet too
//! big (its MTU untouched) and time exceeded, from the flow's destination or from a router on
//! the way, are translated back into the container with the quoted packet as the container
//! sent it. Each output is compared byte for byte with one built from scratch by the test's
//! builder (its own checksums: the quoted UDP's and the ICMPv6 one, both over the pseudo-header).
use std::net::Ipv6Addr;

use datapath_common::{program_names, Counter, Endpoint6};

use super::{
    assert_bytes,
    packets::{eth, icmpv6, ipv6, udp6, ETHERTYPE_IPV6, IPPROTO_ICMPV6, IPPROTO_UDP},
    Fixture, ROUTER_MAC, TC_ACT_REDIRECT, UPLINK_MAC,
};
use crate::devkit::{
    netns::is_root,
    testbed::{ROUTER_IP6, SERVER_IP6, UPLINK_IP6},
};

fn addr(ep: &Endpoint6) -> Ipv6Addr {
    Ipv6Addr::from(datapath_common::ipv6_octets(ep.ip))
}

/// A UDP datagram over IPv6 with hop limit `hop_limit`, as an error quotes it.
fn datagram(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, hop_limit: u8) -> Vec<u8> {
    ipv6(src, dst, IPPROTO_UDP, hop_limit, &udp6(src, dst, sport, 53, b"bpfnet query"))
}

/// An ICMPv6 error from `src` to `dst` quoting `quoted`, `word` its second word (the MTU).
fn error(src: Ipv6Addr, dst: Ipv6Addr, hop_limit: u8, kind: (u8, u8), word: [u8; 4], quoted: &[u8]) -> Vec<u8> {
    let mut body = word.to_vec();
    body.extend_from_slice(quoted);
    ipv6(src, dst, IPPROTO_ICMPV6, hop_limit, &icmpv6(src, dst, kind.0, kind.1, &body))
}

#[test]
fn errors6_about_a_masqueraded_flow_are_translated_back_with_every_checksum() {
    if !is_root() {
        return;
    }
    for program in [program_names::FROM_UPLINK, program_names::FROM_UPLINK_XDP] {
        let (fx, _, t6, uplink) = Fixture::with_uplink6_program(program);
        let a = addr(&t6.a);
        let sent = eth(t6.a.gateway_mac, t6.a.mac, ETHERTYPE_IPV6, &datagram(a, SERVER_IP6, 40000, 64));
        let out = fx.run_from_endpoint(t6.a.host_ifindex, &sent);
        assert_eq!(out.retval, TC_ACT_REDIRECT);
        // The datagram as it left, whose NAT port the errors quote.
        let port = u16::from_be_bytes([out.packet[14 + 40], out.packet[14 + 41]]);
        let left = datagram(UPLINK_IP6, SERVER_IP6, port, 63);
        assert_bytes(&out.packet[14..], &left, "masqueraded");
        let as_sent = datagram(a, SERVER_IP6, 40000, 63);
        let mtu = 1280u32.to_be_bytes();
        // (type, code), sender, second word: port unreachable from the server itself, packet
        // too big and time exceeded from the router on the way.
        let cases = [((1, 4), SERVER_IP6, [0; 4]), ((2, 0), ROUTER_IP6, mtu), ((3, 0), ROUTER_IP6, [0; 4])];
        for (kind, from, word) in cases {
            let inbound = eth(UPLINK_MAC, ROUTER_MAC, ETHERTYPE_IPV6, &error(from, UPLINK_IP6, 64, kind, word, &left));
            let back = fx.run_from_uplink(uplink, &inbound);
            let expected = eth(t6.a.mac, t6.a.gateway_mac, ETHERTYPE_IPV6, &error(from, a, 63, kind, word, &as_sent));
            back.assert_redirected(Counter::IcmpErrorTranslated, &expected);
            assert_bytes(&back.packet, &expected, &format!("{program}: ICMPv6 error {kind:?}"));
        }
        // An error about no tracked flow is the host's, untouched.
        let unknown = datagram(UPLINK_IP6, SERVER_IP6, port ^ 1, 63);
        let inbound =
            eth(UPLINK_MAC, ROUTER_MAC, ETHERTYPE_IPV6, &error(SERVER_IP6, UPLINK_IP6, 64, (1, 4), [0; 4], &unknown));
        fx.run_from_uplink(uplink, &inbound).assert_passed(Counter::UplinkToHost);
    }
}
