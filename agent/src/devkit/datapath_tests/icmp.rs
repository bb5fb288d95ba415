//! ICMP errors about translated flows: on the uplink, about a container's flow: destination
//! unreachable (port unreachable, fragmentation needed) and time exceeded, quoting the packet
//! as it left (the uplink's address and NAT port). Translated back, the error must read exactly
//! as if it quoted what the container sent: outer destination, quoted source address and port
//! (or echo identifier), and all four checksums (outer IP, ICMP, quoted IP, quoted L4)
//! recomputed. And the other way: a container's error about a flow to its published port.
use std::net::Ipv4Addr;

use datapath_common::Counter;

use super::uplink_test;
use super::{
    nat::{snat_to_server, ACK, L4},
    packets::{
        checksum, eth, icmp_error, ipv4_with, udp, verify_ipv4_checksums, verify_ipv4_packet, ETHERTYPE_IPV4, ETH_HLEN,
        ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, ICMP_PORT_UNREACH, ICMP_TIME_EXCEEDED, IPPROTO_ICMP,
    },
    Fixture, Topology, A_IP, ROUTER_IP, ROUTER_MAC, SERVER_IP, UPLINK_IP, UPLINK_MAC,
};
use crate::devkit::netns::is_root;

/// The error kinds a router or the server sends: (type, code, second header word, sender).
const ERRORS: [(u8, u8, [u8; 4], Ipv4Addr); 3] = [
    (ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, [0; 4], SERVER_IP),
    (ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, [0, 0, 0x05, 0x78], ROUTER_IP), // next-hop MTU 1400
    (ICMP_TIME_EXCEEDED, 0, [0; 4], ROUTER_IP),
];

/// An error from `sender` to the uplink quoting `quoted` (an IPv4 packet).
fn error_frame(sender: Ipv4Addr, icmp_type: u8, code: u8, rest: [u8; 4], quoted: &[u8]) -> Vec<u8> {
    let message = icmp_error(icmp_type, code, rest, quoted);
    eth(UPLINK_MAC, ROUTER_MAC, ETHERTYPE_IPV4, &ipv4_with(sender, UPLINK_IP, IPPROTO_ICMP, &[], &message, 64, 0x0000))
}

/// The error as A must receive it, quoting `quoted`.
fn delivered_error(t: &Topology, sender: Ipv4Addr, icmp_type: u8, code: u8, rest: [u8; 4], quoted: &[u8]) -> Vec<u8> {
    let message = icmp_error(icmp_type, code, rest, quoted);
    eth(t.a.mac, t.a.gateway_mac, ETHERTYPE_IPV4, &ipv4_with(sender, A_IP, IPPROTO_ICMP, &[], &message, 63, 0x0000))
}

/// Checks every checksum of a delivered error from scratch, the quoted ones included.
#[track_caller]
fn verify_error_checksums(frame: &[u8], quote_len: usize) {
    verify_ipv4_checksums(frame).unwrap(); // outer IP and ICMP
    let quote = &frame[ETH_HLEN + 20 + 8..];
    assert_eq!(quote.len(), quote_len);
    assert_eq!(checksum(&[&quote[..20]]), 0, "quoted IP header checksum");
    if quote_len > 28 {
        verify_ipv4_packet(quote).unwrap(); // the whole quoted packet: its L4 checksum too
    }
}

uplink_test! {
    fn errors_about_a_snat_flow_are_translated_back_with_every_checksum(fx, t, uplink) {
        let flows = [
            L4::Udp {
                sport: 40000,
                dport: 53,
                payload: b"bpfnet query",
            },
            L4::Tcp {
                sport: 40001,
                dport: 443,
                flags: ACK,
                payload: b"some TCP payload",
            },
            L4::EchoRequest {
                id: 0x4242,
                seq: 3,
                payload: &[0xa5; 40],
            },
        ];
        for l4 in flows {
            let (_, d) = l4.key_ports();
            let port = snat_to_server(&fx, &t, &l4);
            // What left (and is quoted), and what A sent (with the TTL it left with).
            let left = ipv4_with(
                UPLINK_IP,
                SERVER_IP,
                l4.proto(),
                &[],
                &l4.with_key_ports(port, u16::from_be(d))
                    .bytes(UPLINK_IP, SERVER_IP),
                63,
                0x4000,
            );
            let original = ipv4_with(
                A_IP,
                SERVER_IP,
                l4.proto(),
                &[],
                &l4.bytes(A_IP, SERVER_IP),
                63,
                0x4000,
            );
            // The whole packet quoted (as Linux does, up to 576 bytes), and the RFC 792 minimum.
            for quote_len in [left.len(), 28] {
                for (icmp_type, code, rest, sender) in ERRORS {
                    eprintln!("case: {l4:?}, error {icmp_type}/{code}, {quote_len}-byte quote");
                    let received = error_frame(sender, icmp_type, code, rest, &left[..quote_len]);
                    let out = fx.run_from_uplink(uplink.ifindex, &received);
                    let expected =
                        delivered_error(&t, sender, icmp_type, code, rest, &original[..quote_len]);
                    out.assert_redirected(Counter::IcmpErrorTranslated, &expected);
                    verify_error_checksums(&out.packet, quote_len);
                }
            }
        }
        assert_eq!(fx.ct_entries().len(), 6, "errors create no entries");
    }
}

uplink_test! {
    fn errors_about_unknown_flows_go_to_the_host_unchanged(fx, t, uplink) {
        let l4 = L4::Udp {
            sport: 40000,
            dport: 53,
            payload: b"q",
        };
        let port = snat_to_server(&fx, &t, &l4);
        let quote = |src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16| {
            ipv4_with(
                src,
                dst,
                17,
                &[],
                &udp(src, dst, sport, dport, b"q"),
                63,
                0x4000,
            )
        };
        let other = if port == crate::devkit::datapath_tests::NAT_PORT_MAX {
            port - 1
        } else {
            port + 1
        };
        for quoted in [
            quote(UPLINK_IP, other, SERVER_IP, 53), // another NAT port
            quote(UPLINK_IP, port, SERVER_IP, 54),  // another server port
            quote(UPLINK_IP, port, Ipv4Addr::new(198, 51, 100, 8), 53), // another server
            quote(Ipv4Addr::new(203, 0, 113, 9), port, SERVER_IP, 53), // not from the uplink
            ipv4_with(UPLINK_IP, SERVER_IP, 47, &[], &[0; 8], 63, 0x4000), // GRE: nothing to look up
            quote(UPLINK_IP, port, SERVER_IP, 53)[..24].to_vec(), // quote cut short
        ] {
            for (icmp_type, code, rest, sender) in ERRORS {
                let received = error_frame(sender, icmp_type, code, rest, &quoted);
                fx.run_from_uplink(uplink.ifindex, &received)
                    .assert_passed(Counter::UplinkToHost);
            }
        }
        // Addressed to another address than the quoted source: not about this flow's packet.
        let quoted = quote(UPLINK_IP, port, SERVER_IP, 53);
        let message = icmp_error(ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, [0; 4], &quoted);
        let received = eth(
            UPLINK_MAC,
            ROUTER_MAC,
            ETHERTYPE_IPV4,
            &ipv4_with(
                SERVER_IP,
                Ipv4Addr::new(203, 0, 113, 3),
                IPPROTO_ICMP,
                &[],
                &message,
                64,
                0,
            ),
        );
        fx.run_from_uplink(uplink.ifindex, &received)
            .assert_passed(Counter::UplinkToHost);
        assert_eq!(fx.ct_entries().len(), 2);
    }
}

uplink_test! {
    /// A UDP datagram whose checksum computes to 0 is sent with 0xffff (RFC 768: 0 means "no
    /// checksum"). The quote of such a datagram, translated back, must still say 0xffff: an
    /// incremental update (RFC 1624) lands on 0x0000 there, which reads as "sent without a
    /// checksum" — the quote no longer matches what the container sent.
    fn quoted_udp_checksum_of_0xffff_is_not_turned_into_no_checksum(fx, t, uplink) {
        // Two payload bytes chosen so that A's datagram checksums to 0, i.e. is sent as 0xffff.
        let payload = (0..=u16::MAX)
            .map(|x| x.to_be_bytes())
            .find(|p| udp(A_IP, SERVER_IP, 40000, 53, p)[6..8] == [0xff, 0xff])
            .expect("some payload checksums to zero");
        let l4 = L4::Udp {
            sport: 40000,
            dport: 53,
            payload: &payload,
        };
        let port = snat_to_server(&fx, &t, &l4);
        let left = ipv4_with(
            UPLINK_IP,
            SERVER_IP,
            17,
            &[],
            &l4.with_key_ports(port, 53).bytes(UPLINK_IP, SERVER_IP),
            63,
            0x4000,
        );
        let original = ipv4_with(
            A_IP,
            SERVER_IP,
            17,
            &[],
            &l4.bytes(A_IP, SERVER_IP),
            63,
            0x4000,
        );
        assert_eq!(original[26..28], [0xff, 0xff]);
        let received = error_frame(
            SERVER_IP,
            ICMP_DEST_UNREACH,
            ICMP_PORT_UNREACH,
            [0; 4],
            &left,
        );
        let out = fx.run_from_uplink(uplink.ifindex, &received);
        let expected = delivered_error(
            &t,
            SERVER_IP,
            ICMP_DEST_UNREACH,
            ICMP_PORT_UNREACH,
            [0; 4],
            &original,
        );
        out.assert_redirected(Counter::IcmpErrorTranslated, &expected);
    }
}

/// A container's own error about a flow that came in through a published port (port
/// unreachable for a UDP datagram nobody listens for): it quotes the datagram as the container
/// got it (to its own address and port), so it leaves from the published address, quoting the
/// published port, every checksum right; routed out of the uplink like the flow's replies.
/// A container quoting a packet that another container got is not translated (and dropped, as
/// any ICMP message a container sends out that is not about its own flow).
#[test]
fn a_containers_error_about_a_published_port_flow_leaves_from_the_published_address() {
    use super::nat::{from_outside, publish_b, B_PORT, CLIENT_IP, PUBLISHED_PORT};
    use super::{B_IP, TC_ACT_REDIRECT};
    if !is_root() {
        return;
    }
    let (mut fx, t, uplink) = Fixture::with_uplink();
    publish_b(&mut fx);
    let datagram = L4::Udp { sport: 5555, dport: PUBLISHED_PORT, payload: b"anyone?" };
    let out = fx.run_from_uplink(uplink.ifindex, &from_outside(CLIENT_IP, UPLINK_IP, &datagram));
    assert_eq!(out.retval, TC_ACT_REDIRECT);
    // What B got (TTL 63 after the host), quoted whole, as Linux quotes a short datagram.
    let got = ipv4_with(CLIENT_IP, B_IP, 17, &[], &udp(CLIENT_IP, B_IP, 5555, B_PORT, b"anyone?"), 63, 0x4000);
    let message = icmp_error(ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, [0; 4], &got);
    let sent =
        eth(t.b.gateway_mac, t.b.mac, ETHERTYPE_IPV4, &ipv4_with(B_IP, CLIENT_IP, IPPROTO_ICMP, &[], &message, 64, 0));
    let out = fx.run_from_endpoint(t.b.host_ifindex, &sent);
    // As the client sent it: to the published address and port.
    let as_sent = ipv4_with(
        CLIENT_IP,
        UPLINK_IP,
        17,
        &[],
        &udp(CLIENT_IP, UPLINK_IP, 5555, PUBLISHED_PORT, b"anyone?"),
        63,
        0x4000,
    );
    let message = icmp_error(ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, [0; 4], &as_sent);
    let expected = eth(
        ROUTER_MAC,
        UPLINK_MAC,
        ETHERTYPE_IPV4,
        &ipv4_with(UPLINK_IP, CLIENT_IP, IPPROTO_ICMP, &[], &message, 63, 0),
    );
    out.assert_redirected(Counter::IcmpErrorTranslated, &expected);
    verify_error_checksums(&out.packet, as_sent.len());

    // A claims an error about what B got: A is not the quoted destination.
    let message = icmp_error(ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, [0; 4], &got);
    let sent =
        eth(t.a.gateway_mac, t.a.mac, ETHERTYPE_IPV4, &ipv4_with(A_IP, CLIENT_IP, IPPROTO_ICMP, &[], &message, 64, 0));
    fx.run_from_endpoint(t.a.host_ifindex, &sent).assert_dropped(datapath_common::DropReason::UnsupportedL4);
}
