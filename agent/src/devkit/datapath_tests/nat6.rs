//! NAT66 through both programs: a container's IPv6 flows masqueraded to the uplink's IPv6
//! address (`from_endpoint` -> `from_endpoint6`), their replies translated back on the uplink
//! (`from_uplink`/`from_uplink_xdp` -> their IPv6 tail calls), DNAT to a published port with
//! the client's address kept, the hairpin, and what is never translated. Every packet that
//! comes out is compared byte for byte with one built from scratch by the test's own builder,
//! whose checksums (over the IPv6 pseudo-header) are the test's, not the datapath's.
use std::net::{Ipv4Addr, Ipv6Addr};

use datapath_common::{
    ct_direction, ct_kind, program_names, Counter, CtEntry6, CtKey6, CtQuotaKey, DropReason, Endpoint6, HostConfig6,
    PublishedPortKey6, PublishedPortTarget6, IPPROTO_ICMPV6,
};

use super::{
    assert_bytes, be6,
    packets::{eth, fragment_header, icmpv6, ipv6, l4_checksum6, tcp, udp6, ETHERTYPE_IPV6, IPPROTO_TCP, IPPROTO_UDP},
    Fixture, Topology6, NAT_PORT_MAX, NAT_PORT_MIN, ROUTER_MAC, TC_ACT_REDIRECT, UPLINK_MAC,
};
use crate::devkit::{
    netns::is_root,
    testbed::{SERVER_IP6, UPLINK_IP6},
};

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

/// A transport header as the tests build it; ports and echo identifiers in host order.
#[derive(Clone, Copy, Debug)]
enum L4 {
    Tcp { sport: u16, dport: u16, flags: u8 },
    Udp { sport: u16, dport: u16 },
    EchoRequest { id: u16 },
    EchoReply { id: u16 },
}

impl L4 {
    fn proto(&self) -> u8 {
        match self {
            L4::Tcp { .. } => IPPROTO_TCP,
            L4::Udp { .. } => IPPROTO_UDP,
            L4::EchoRequest { .. } | L4::EchoReply { .. } => IPPROTO_ICMPV6,
        }
    }

    /// The segment, its checksum over the IPv6 pseudo-header of `src` and `dst`.
    fn bytes(&self, src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
        match *self {
            L4::Tcp { sport, dport, flags } => {
                // The IPv4 builder's segment, its checksum made again over IPv6's pseudo-header.
                let mut s = tcp(Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, sport, dport, flags, b"");
                s[16..18].copy_from_slice(&[0, 0]);
                let sum = l4_checksum6(src, dst, IPPROTO_TCP, &s);
                s[16..18].copy_from_slice(&sum.to_be_bytes());
                s
            }
            L4::Udp { sport, dport } => udp6(src, dst, sport, dport, b"bpfnet query"),
            L4::EchoRequest { id } => icmpv6(src, dst, 128, 0, &echo_body(id)),
            L4::EchoReply { id } => icmpv6(src, dst, 129, 0, &echo_body(id)),
        }
    }

    /// The conntrack key's ports, network order (echo: the identifier, in the source slot of
    /// a request and the destination slot of a reply).
    fn key_ports(&self) -> (u16, u16) {
        let (s, d) = match *self {
            L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport } => (sport, dport),
            L4::EchoRequest { id } => (id, 0),
            L4::EchoReply { id } => (0, id),
        };
        (s.to_be(), d.to_be())
    }

    /// The same header with its source port (a request's identifier) replaced.
    fn with_sport(&self, port: u16) -> L4 {
        match *self {
            L4::Tcp { dport, flags, .. } => L4::Tcp { sport: port, dport, flags },
            L4::Udp { dport, .. } => L4::Udp { sport: port, dport },
            L4::EchoRequest { .. } => L4::EchoRequest { id: port },
            other => other,
        }
    }

    /// What the other side answers (TCP: SYN-ACK), addressed to `port`.
    fn answer_to(&self, port: u16) -> L4 {
        match *self {
            L4::Tcp { dport, .. } => L4::Tcp { sport: dport, dport: port, flags: SYN | ACK },
            L4::Udp { dport, .. } => L4::Udp { sport: dport, dport: port },
            L4::EchoRequest { .. } | L4::EchoReply { .. } => L4::EchoReply { id: port },
        }
    }
}

/// An echo's identifier and sequence number, and 8 bytes of payload.
fn echo_body(id: u16) -> Vec<u8> {
    let mut body = id.to_be_bytes().to_vec();
    body.extend_from_slice(&[0, 1, 0xa5, 0xa5, 0xa5, 0xa5, 0xa5, 0xa5, 0xa5, 0xa5]);
    body
}

fn frame(eth_dst: [u8; 6], eth_src: [u8; 6], src: Ipv6Addr, dst: Ipv6Addr, hop_limit: u8, l4: &L4) -> Vec<u8> {
    eth(eth_dst, eth_src, ETHERTYPE_IPV6, &ipv6(src, dst, l4.proto(), hop_limit, &l4.bytes(src, dst)))
}

fn addr(ep: &Endpoint6) -> Ipv6Addr {
    Ipv6Addr::from(datapath_common::ipv6_octets(ep.ip))
}

/// What container `from` sends to `dst` outside (to its gateway's MAC).
fn from_container(from: &Endpoint6, dst: Ipv6Addr, hop_limit: u8, l4: &L4) -> Vec<u8> {
    frame(from.gateway_mac, from.mac, addr(from), dst, hop_limit, l4)
}

/// What a container receives from the datapath (from its gateway's MAC), hop limit 63.
fn delivered(to: &Endpoint6, src: Ipv6Addr, l4: &L4) -> Vec<u8> {
    frame(to.mac, to.gateway_mac, src, addr(to), 63, l4)
}

/// What leaves through the uplink to the router, hop limit 63.
fn routed_out(src: Ipv6Addr, dst: Ipv6Addr, l4: &L4) -> Vec<u8> {
    frame(ROUTER_MAC, UPLINK_MAC, src, dst, 63, l4)
}

/// What the router sends to the uplink.
fn from_outside(src: Ipv6Addr, dst: Ipv6Addr, l4: &L4) -> Vec<u8> {
    frame(UPLINK_MAC, ROUTER_MAC, src, dst, 64, l4)
}

fn key(src: Ipv6Addr, dst: Ipv6Addr, l4: &L4) -> CtKey6 {
    let (sport, dport) = l4.key_ports();
    CtKey6 { saddr: be6(src), daddr: be6(dst), sport, dport, proto: l4.proto(), _pad: [0; 3] }
}

#[track_caller]
fn entry(fx: &Fixture, key: &CtKey6) -> CtEntry6 {
    fx.ct6_get(key).map(|(_, e)| e).unwrap_or_else(|| panic!("no CT6 entry for {key:?}"))
}

/// Every IPv6 conntrack entry, of every table.
fn ct6_count(fx: &Fixture) -> usize {
    fx.ct6_tables.iter().map(|table| table.keys().count()).sum()
}

/// The two uplink programs, each with a fresh dual-stack fixture.
fn each_uplink_program(test: impl Fn(Fixture, Topology6, u32)) {
    if !is_root() {
        return;
    }
    for program in [program_names::FROM_UPLINK, program_names::FROM_UPLINK_XDP] {
        let (fx, _, t6, uplink) = Fixture::with_uplink6_program(program);
        test(fx, t6, uplink);
    }
}

/// A new TCP, UDP and ICMPv6 echo flow of A is masqueraded to the uplink's IPv6 address with a
/// NAT port (the container's own is outside `--nat-ports`), both entries are tracked, the hop
/// limit goes down by one, and the answer on the uplink comes back into A translated.
#[test]
fn masquerade6_of_tcp_udp_and_echo_and_the_answers_back_in() {
    each_uplink_program(|fx, t6, uplink| {
        let flows = [
            L4::Tcp { sport: 40001, dport: 443, flags: SYN },
            L4::Udp { sport: 40000, dport: 53 },
            L4::EchoRequest { id: 0x4242 },
        ];
        for l4 in flows {
            let sent = from_container(&t6.a, SERVER_IP6, 64, &l4);
            let out = fx.run_from_endpoint(t6.a.host_ifindex, &sent);
            out.assert_moved(TC_ACT_REDIRECT, &[], &[Counter::SnatNewFlow, Counter::TranslatedOut]);
            let original = key(addr(&t6.a), SERVER_IP6, &l4);
            let e = entry(&fx, &original);
            let port = u16::from_be(e.to.sport);
            assert!((NAT_PORT_MIN..=NAT_PORT_MAX).contains(&port), "{l4:?}: NAT port {port} out of range");
            let translated = CtKey6 { saddr: be6(UPLINK_IP6), sport: port.to_be(), ..original };
            assert_eq!((e.to, e.ifindex, e.direction, e.kind), (translated, 0, ct_direction::ORIGINAL, ct_kind::SNAT));
            assert_eq!((e.packets, e.bytes), (1, sent.len() as u64));
            let reply = entry(&fx, &translated.reversed());
            assert_eq!(
                (reply.to, reply.ifindex, reply.direction, reply.kind),
                (original.reversed(), t6.a.host_ifindex, ct_direction::REPLY, ct_kind::SNAT)
            );
            assert_bytes(&out.packet, &routed_out(UPLINK_IP6, SERVER_IP6, &l4.with_sport(port)), "masqueraded");

            let answer = from_outside(SERVER_IP6, UPLINK_IP6, &l4.answer_to(port));
            let back = fx.run_from_uplink(uplink, &answer);
            let own = u16::from_be(l4.key_ports().0);
            back.assert_redirected(Counter::TranslatedIn, &delivered(&t6.a, SERVER_IP6, &l4.answer_to(own)));
        }
        assert_eq!(ct6_count(&fx), 6, "two entries per flow");
        // One share of the unassured table per container: IPv6 flows count against A's IPv4
        // address (the echo flow is unassured too).
        let quota = CtQuotaKey { addr: t6.a.ip4, port: 0, proto: 0, _pad: 0 };
        assert_eq!(fx.ct_quota.get(&quota, 0).unwrap(), 3);
    });
}

/// The container's own port is kept when it lies in `--nat-ports` and the translated tuple is
/// free; a second container with the same port to the same destination gets another one.
#[test]
fn masquerade6_keeps_a_free_port_and_moves_a_taken_one() {
    if !is_root() {
        return;
    }
    let (fx, _, t6, _) = Fixture::with_uplink6_program(program_names::FROM_UPLINK);
    let l4 = L4::Udp { sport: NAT_PORT_MIN + 50, dport: 53 };
    let out = fx.run_from_endpoint(t6.a.host_ifindex, &from_container(&t6.a, SERVER_IP6, 64, &l4));
    out.assert_moved(TC_ACT_REDIRECT, &[], &[Counter::SnatNewFlow, Counter::TranslatedOut]);
    assert_bytes(&out.packet, &routed_out(UPLINK_IP6, SERVER_IP6, &l4), "the container's port kept");
    let out = fx.run_from_endpoint(t6.b.host_ifindex, &from_container(&t6.b, SERVER_IP6, 64, &l4));
    out.assert_moved(TC_ACT_REDIRECT, &[], &[Counter::SnatNewFlow, Counter::TranslatedOut]);
    let port = u16::from_be(entry(&fx, &key(addr(&t6.b), SERVER_IP6, &l4)).to.sport);
    assert_ne!(port, NAT_PORT_MIN + 50, "the tuple was taken by A's flow");
    assert!((NAT_PORT_MIN..=NAT_PORT_MAX).contains(&port));
    assert_bytes(&out.packet, &routed_out(UPLINK_IP6, SERVER_IP6, &l4.with_sport(port)), "moved to a free port");
}

/// Hop limit 1, no IPv6 uplink address, loopback: the host stack's, untouched and untracked.
/// A SYN-ACK that answers no flow and a later fragment are dropped, with their reasons; none
/// of them leaves a conntrack entry behind.
#[test]
fn what_is_never_masqueraded6() {
    if !is_root() {
        return;
    }
    let (mut fx, _, t6, _) = Fixture::with_uplink6_program(program_names::FROM_UPLINK);
    let l4 = L4::Udp { sport: 40000, dport: 53 };
    let out = fx.run_from_endpoint(t6.a.host_ifindex, &from_container(&t6.a, SERVER_IP6, 1, &l4));
    out.assert_passed(Counter::ToHost);
    let out = fx.run_from_endpoint(t6.a.host_ifindex, &from_container(&t6.a, Ipv6Addr::LOCALHOST, 64, &l4));
    out.assert_passed(Counter::ToHost);
    let syn_ack = L4::Tcp { sport: 40000, dport: 443, flags: SYN | ACK };
    fx.run_from_endpoint(t6.a.host_ifindex, &from_container(&t6.a, SERVER_IP6, 64, &syn_ack))
        .assert_dropped(DropReason::ConntrackInvalid);
    // A later fragment (offset 8 bytes): no ports to find a flow by.
    let mut payload = fragment_header(IPPROTO_UDP, 1, false, 7);
    payload.extend_from_slice(&[0; 16]);
    let (a, server) = (addr(&t6.a), SERVER_IP6);
    let fragment = eth(t6.a.gateway_mac, t6.a.mac, ETHERTYPE_IPV6, &ipv6(a, server, 44, 64, &payload));
    fx.run_from_endpoint(t6.a.host_ifindex, &fragment).assert_dropped(DropReason::Ipv6LaterFragment);
    fx.set_config6(&HostConfig6::default()).unwrap();
    let out = fx.run_from_endpoint(t6.a.host_ifindex, &from_container(&t6.a, SERVER_IP6, 64, &l4));
    out.assert_passed(Counter::ToHost);
    assert_eq!(ct6_count(&fx), 0, "nothing refused or passed is tracked");
    assert_eq!(fx.ct_inserted(), 0);
}

/// A new flow from outside to a port published on all host addresses (the all-zero key) at
/// the uplink's IPv6 address reaches A with the client's address kept; A's answer leaves from
/// the published address and port.
#[test]
fn dnat6_keeps_the_client_and_the_answer_leaves_from_the_published_port() {
    each_uplink_program(|mut fx, t6, uplink| {
        let published = PublishedPortKey6 { addr: [0; 4], port: 8080u16.to_be(), proto: IPPROTO_TCP, _pad: 0 };
        fx.publish6(&published, &PublishedPortTarget6 { ip: t6.a.ip, port: 80u16.to_be(), _pad: 0 }).unwrap();
        let syn = L4::Tcp { sport: 50000, dport: 8080, flags: SYN };
        let out = fx.run_from_uplink(uplink, &from_outside(SERVER_IP6, UPLINK_IP6, &syn));
        out.assert_moved(TC_ACT_REDIRECT, &[], &[Counter::DnatNewFlow, Counter::TranslatedIn]);
        let to_a = L4::Tcp { sport: 50000, dport: 80, flags: SYN };
        assert_bytes(&out.packet, &delivered(&t6.a, SERVER_IP6, &to_a), "DNAT'd, client kept");
        let e = entry(&fx, &key(SERVER_IP6, UPLINK_IP6, &syn));
        assert_eq!((e.kind, e.ifindex), (ct_kind::DNAT, t6.a.host_ifindex));
        // A published port's share: its container's IPv4 address, port and protocol.
        let quota = CtQuotaKey { addr: t6.a.ip4, port: 80u16.to_be(), proto: IPPROTO_TCP, _pad: 0 };
        assert_eq!(fx.ct_quota.get(&quota, 0).unwrap(), 1);

        let syn_ack = L4::Tcp { sport: 80, dport: 50000, flags: SYN | ACK };
        let out = fx.run_from_endpoint(t6.a.host_ifindex, &from_container(&t6.a, SERVER_IP6, 64, &syn_ack));
        out.assert_moved(TC_ACT_REDIRECT, &[], &[Counter::TranslatedOut]);
        let leaves = L4::Tcp { sport: 8080, dport: 50000, flags: SYN | ACK };
        assert_bytes(&out.packet, &routed_out(UPLINK_IP6, SERVER_IP6, &leaves), "answer from the published port");
        assert_eq!(ct6_count(&fx), 2);
    });
}

/// B's flow to a port published at the uplink's IPv6 address goes straight to A with both
/// addresses translated, and A's answer goes back to B the same way.
#[test]
fn hairpin6_from_a_container_to_a_published_port() {
    if !is_root() {
        return;
    }
    let (mut fx, _, t6, _) = Fixture::with_uplink6_program(program_names::FROM_UPLINK);
    let published = PublishedPortKey6 { addr: [0; 4], port: 8080u16.to_be(), proto: IPPROTO_TCP, _pad: 0 };
    fx.publish6(&published, &PublishedPortTarget6 { ip: t6.a.ip, port: 80u16.to_be(), _pad: 0 }).unwrap();
    let syn = L4::Tcp { sport: 40000, dport: 8080, flags: SYN };
    let out = fx.run_from_endpoint(t6.b.host_ifindex, &from_container(&t6.b, UPLINK_IP6, 64, &syn));
    out.assert_moved(TC_ACT_REDIRECT, &[], &[Counter::HairpinNewFlow, Counter::TranslatedIn]);
    let e = entry(&fx, &key(addr(&t6.b), UPLINK_IP6, &syn));
    let port = u16::from_be(e.to.sport);
    assert_eq!((e.kind, e.ifindex), (ct_kind::HAIRPIN, t6.a.host_ifindex));
    let to_a = L4::Tcp { sport: port, dport: 80, flags: SYN };
    assert_bytes(&out.packet, &delivered(&t6.a, UPLINK_IP6, &to_a), "hairpinned to A");

    let syn_ack = L4::Tcp { sport: 80, dport: port, flags: SYN | ACK };
    let out = fx.run_from_endpoint(t6.a.host_ifindex, &from_container(&t6.a, UPLINK_IP6, 64, &syn_ack));
    out.assert_moved(TC_ACT_REDIRECT, &[], &[Counter::TranslatedIn]);
    let to_b = L4::Tcp { sport: 8080, dport: 40000, flags: SYN | ACK };
    assert_bytes(&out.packet, &delivered(&t6.b, UPLINK_IP6, &to_b), "the answer back to B");
}

/// A fragmented datagram from a container: its first fragment starts the flow and leaves its
/// ports in FRAGS6; the later fragment (no UDP header) is found by them and translated too
/// (addresses only: the UDP checksum, which covers the whole datagram, was updated in the
/// first). Both compared byte for byte with the translated datagram cut the same way.
#[test]
fn fragments6_of_a_masqueraded_datagram_follow_their_first() {
    if !is_root() {
        return;
    }
    let (fx, _, t6, _) = Fixture::with_uplink6_program(program_names::FROM_UPLINK);
    let a = addr(&t6.a);
    let payload = [0x5a; 24];
    let whole = udp6(a, SERVER_IP6, 40000, 53, &payload);
    // 16 bytes in each fragment: offsets 0 and 2 (in 8-byte units), identification 7.
    let fragment = |src: Ipv6Addr, hop_limit: u8, datagram: &[u8], first: bool| {
        let (offset, part) = if first { (0, &datagram[..16]) } else { (2, &datagram[16..]) };
        let mut body = fragment_header(IPPROTO_UDP, offset, first, 7);
        body.extend_from_slice(part);
        ipv6(src, SERVER_IP6, 44, hop_limit, &body)
    };
    let sent_first = eth(t6.a.gateway_mac, t6.a.mac, ETHERTYPE_IPV6, &fragment(a, 64, &whole, true));
    let out = fx.run_from_endpoint(t6.a.host_ifindex, &sent_first);
    assert_eq!(out.retval, TC_ACT_REDIRECT, "the first fragment is masqueraded");
    // The NAT port, from the first fragment's UDP header (after the 8-byte fragment header).
    let port = u16::from_be_bytes([out.packet[14 + 48], out.packet[14 + 49]]);
    let translated = udp6(UPLINK_IP6, SERVER_IP6, port, 53, &payload);
    assert_bytes(&out.packet[14..], &fragment(UPLINK_IP6, 63, &translated, true), "first fragment");
    let sent_later = eth(t6.a.gateway_mac, t6.a.mac, ETHERTYPE_IPV6, &fragment(a, 64, &whole, false));
    let out = fx.run_from_endpoint(t6.a.host_ifindex, &sent_later);
    assert_eq!(out.retval, TC_ACT_REDIRECT, "the later fragment follows its first");
    assert_bytes(&out.packet[14..], &fragment(UPLINK_IP6, 63, &translated, false), "later fragment");
    // Another datagram's later fragment (identification 8) has no first: dropped.
    let mut body = fragment_header(IPPROTO_UDP, 2, false, 8);
    body.extend_from_slice(&whole[16..]);
    let stray = eth(t6.a.gateway_mac, t6.a.mac, ETHERTYPE_IPV6, &ipv6(a, SERVER_IP6, 44, 64, &body));
    fx.run_from_endpoint(t6.a.host_ifindex, &stray).assert_dropped(DropReason::Ipv6LaterFragment);
}
