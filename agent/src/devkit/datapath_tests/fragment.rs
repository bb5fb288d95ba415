//! Fragmented IPv4 datagrams on translated paths: the first fragment (which has the L4 header)
//! is translated like a whole datagram, and the later ones follow it by the datagram they
//! share (addresses, identification, protocol), with only their IP header rewritten. Every
//! fragment that comes out is compared with the expected datagram cut the same way, so the
//! reassembled datagram's L4 checksum (updated in the first fragment only) is checked too.
use std::net::Ipv4Addr;

use datapath_common::{Counter, DropReason};

use super::nat::{entry, key, nat_port, publish_b, B_PORT, CLIENT_IP, L4, PUBLISHED_PORT};
use super::uplink_test;
use super::{
    assert_bytes,
    packets::{checksum, eth, ipv4_with, ETHERTYPE_IPV4, IPPROTO_UDP},
    Fixture, A_IP, B_IP, ROUTER_MAC, SERVER_IP, TC_ACT_REDIRECT, UPLINK_IP, UPLINK_MAC,
};
use crate::devkit::netns::is_root;

/// Where the datagrams are cut: the first fragment carries the 8-byte UDP header and 24 bytes
/// of payload (fragment offsets count 8-byte units).
const FIRST_LEN: usize = 32;
const MORE_FRAGMENTS: u16 = 0x2000;
const PAYLOAD: &[u8] = b"a datagram larger than one fragment: 64 bytes of payload, cut..";

/// The two fragments of a UDP datagram, as frames with the given MACs, IP identification and
/// TTL: the first (MF, offset 0) and the last (offset `FIRST_LEN`).
#[allow(clippy::too_many_arguments)]
fn fragments(
    macs: ([u8; 6], [u8; 6]),
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    id: u16,
    ttl: u8,
) -> [Vec<u8>; 2] {
    let datagram = L4::Udp { sport, dport, payload: PAYLOAD }.bytes(src, dst);
    let (first, later) = datagram.split_at(FIRST_LEN);
    let offset = (FIRST_LEN / 8) as u16;
    [(first, MORE_FRAGMENTS), (later, offset)].map(|(part, frag)| {
        let mut ip = ipv4_with(src, dst, IPPROTO_UDP, &[], part, ttl, frag);
        ip[4..6].copy_from_slice(&id.to_be_bytes());
        ip[10..12].copy_from_slice(&[0, 0]);
        let sum = checksum(&[&ip[..20]]);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        eth(macs.0, macs.1, ETHERTYPE_IPV4, &ip)
    })
}

#[test]
fn a_containers_fragmented_datagram_is_translated_fragment_by_fragment() {
    if !is_root() {
        return;
    }
    let (fx, t, _uplink) = Fixture::with_uplink();
    let a = (t.a.gateway_mac, t.a.mac);
    let [first, later] = fragments(a, A_IP, SERVER_IP, 40000, 53, 0x0101, 64);
    // A later fragment before its first: no ports to find a flow by.
    fx.run_from_endpoint(t.a.host_ifindex, &later).assert_dropped(DropReason::FragmentWithoutFirst);
    assert!(fx.ct_entries().is_empty(), "a later fragment tracks nothing");

    let out = fx.run_from_endpoint(t.a.host_ifindex, &first);
    out.assert_moved(TC_ACT_REDIRECT, &[], &[Counter::SnatNewFlow, Counter::TranslatedOut]);
    let l4 = L4::Udp { sport: 40000, dport: 53, payload: PAYLOAD };
    let port = nat_port(&entry(&fx, &key(A_IP, SERVER_IP, l4.key_ports(), IPPROTO_UDP)), &l4);
    let router = (ROUTER_MAC, UPLINK_MAC);
    let expected = fragments(router, UPLINK_IP, SERVER_IP, port, 53, 0x0101, 63);
    assert_bytes(&out.packet, &expected[0], "first fragment, translated");
    let out = fx.run_from_endpoint(t.a.host_ifindex, &later);
    out.assert_redirected(Counter::TranslatedOut, &expected[1]);

    // Another datagram of the flow: its first fragment is needed again (another
    // identification), and then the flow's entry is found, not a new one made.
    let [first2, later2] = fragments(a, A_IP, SERVER_IP, 40000, 53, 0x0102, 64);
    fx.run_from_endpoint(t.a.host_ifindex, &later2).assert_dropped(DropReason::FragmentWithoutFirst);
    fx.run_from_endpoint(t.a.host_ifindex, &first2).assert_moved(TC_ACT_REDIRECT, &[], &[Counter::TranslatedOut]);
    let expected2 = fragments(router, UPLINK_IP, SERVER_IP, port, 53, 0x0102, 63);
    fx.run_from_endpoint(t.a.host_ifindex, &later2).assert_redirected(Counter::TranslatedOut, &expected2[1]);
    assert_eq!(fx.ct_entries().len(), 2, "one flow");
    let e = entry(&fx, &key(A_IP, SERVER_IP, l4.key_ports(), IPPROTO_UDP));
    assert_eq!(e.packets, 4, "every fragment is accounted to the flow");
}

uplink_test! {
    fn fragmented_replies_and_datagrams_to_published_ports_reach_their_container(mut fx, t, uplink) {
        // A's flow out, then the server's reply in two fragments.
        let a = (t.a.gateway_mac, t.a.mac);
        let [first, _] = fragments(a, A_IP, SERVER_IP, 40000, 53, 0x0201, 64);
        fx.run_from_endpoint(t.a.host_ifindex, &first)
            .assert_moved(TC_ACT_REDIRECT, &[], &[Counter::SnatNewFlow, Counter::TranslatedOut]);
        let l4 = L4::Udp { sport: 40000, dport: 53, payload: PAYLOAD };
        let port = nat_port(&entry(&fx, &key(A_IP, SERVER_IP, l4.key_ports(), IPPROTO_UDP)), &l4);
        let outside = (UPLINK_MAC, ROUTER_MAC);
        let [reply_first, reply_later] = fragments(outside, SERVER_IP, UPLINK_IP, 53, port, 0x0301, 64);
        let into_a = fragments((t.a.mac, t.a.gateway_mac), SERVER_IP, A_IP, 53, 40000, 0x0301, 63);
        fx.run_from_uplink(uplink.ifindex, &reply_first)
            .assert_redirected(Counter::TranslatedIn, &into_a[0]);
        fx.run_from_uplink(uplink.ifindex, &reply_later)
            .assert_redirected(Counter::TranslatedIn, &into_a[1]);

        // A fragmented datagram to a published port: the first fragment makes the flow, the
        // later one follows it into B.
        publish_b(&mut fx);
        let [in_first, in_later] = fragments(outside, CLIENT_IP, UPLINK_IP, 5555, PUBLISHED_PORT, 0x0401, 64);
        let into_b = fragments((t.b.mac, t.b.gateway_mac), CLIENT_IP, B_IP, 5555, B_PORT, 0x0401, 63);
        let out = fx.run_from_uplink(uplink.ifindex, &in_first);
        out.assert_moved(TC_ACT_REDIRECT, &[], &[Counter::DnatNewFlow, Counter::TranslatedIn]);
        assert_bytes(&out.packet, &into_b[0], "first fragment, to B");
        fx.run_from_uplink(uplink.ifindex, &in_later)
            .assert_redirected(Counter::TranslatedIn, &into_b[1]);

        // A later fragment of a datagram whose first was not seen, and one of a datagram of no
        // flow at all: the host's (it reassembles, or drops, as it would without bpfnet).
        let [_, unseen] = fragments(outside, CLIENT_IP, UPLINK_IP, 5555, PUBLISHED_PORT, 0x0402, 64);
        let [_, stranger] = fragments(outside, CLIENT_IP, UPLINK_IP, 7, 9999, 0x0403, 64);
        for packet in [unseen, stranger] {
            fx.run_from_uplink(uplink.ifindex, &packet).assert_passed(Counter::UplinkToHost);
        }
    }
}
