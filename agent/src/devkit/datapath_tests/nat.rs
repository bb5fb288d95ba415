//! Address translation through both programs: SNAT of a container's flows out of the uplink
//! (`from_endpoint`), their replies back in (`from_uplink`), DNAT to a published port, the
//! hairpin, and the NAT port limit (conntrack's own progress and limits: conntrack.rs). Every case checks
//! the verdict, the whole packet that comes out (rebuilt from scratch with the builder, so
//! every checksum is checked too), the counters, and the conntrack entries.
use std::net::Ipv4Addr;

use datapath_common::{
    ct_direction, ct_kind, ct_tcp_flags, Counter, CtEntry, CtKey, DropReason, Endpoint, PublishedPortKey,
    PublishedPortTarget,
};

use super::uplink_test;
use super::{
    be,
    packets::{
        eth, icmp_echo_reply, icmp_echo_request, ipv4_with, tcp, udp, verify_ipv4_checksums, ETHERTYPE_IPV4, ETH_HLEN,
        IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP,
    },
    Fixture, Outcome, Topology, A_IP, B_IP, NAT_PORT_MAX, NAT_PORT_MIN, ROUTER_MAC, SERVER_IP, TC_ACT_OK,
    TC_ACT_REDIRECT, TC_ACT_SHOT, UNRESOLVED_IP, UPLINK_IP, UPLINK_MAC,
};
use crate::devkit::netns::is_root;

/// A transport header as the tests build it; ports (and echo identifiers) in host order.
#[derive(Clone, Copy, Debug)]
pub enum L4<'a> {
    Udp {
        sport: u16,
        dport: u16,
        payload: &'a [u8],
    },
    /// UDP sent without a checksum (the field is 0).
    UdpNoCsum {
        sport: u16,
        dport: u16,
        payload: &'a [u8],
    },
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        payload: &'a [u8],
    },
    EchoRequest {
        id: u16,
        seq: u16,
        payload: &'a [u8],
    },
    EchoReply {
        id: u16,
        seq: u16,
        payload: &'a [u8],
    },
}

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const FIN: u8 = 0x01;
pub const RST: u8 = 0x04;

impl L4<'_> {
    pub fn proto(&self) -> u8 {
        match self {
            L4::Udp { .. } | L4::UdpNoCsum { .. } => IPPROTO_UDP,
            L4::Tcp { .. } => IPPROTO_TCP,
            L4::EchoRequest { .. } | L4::EchoReply { .. } => IPPROTO_ICMP,
        }
    }

    pub fn bytes(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        match *self {
            L4::Udp { sport, dport, payload } => udp(src, dst, sport, dport, payload),
            L4::UdpNoCsum { sport, dport, payload } => {
                let mut d = udp(src, dst, sport, dport, payload);
                d[6..8].copy_from_slice(&[0, 0]);
                d
            }
            L4::Tcp { sport, dport, flags, payload } => tcp(src, dst, sport, dport, flags, payload),
            L4::EchoRequest { id, seq, payload } => icmp_echo_request(id, seq, payload),
            L4::EchoReply { id, seq, payload } => icmp_echo_reply(id, seq, payload),
        }
    }

    /// The conntrack key's ports: (source, destination), network order. ICMP echo keeps the
    /// identifier in the source slot for requests, the destination slot for replies.
    pub fn key_ports(&self) -> (u16, u16) {
        let (s, d) = match *self {
            L4::Udp { sport, dport, .. } | L4::UdpNoCsum { sport, dport, .. } | L4::Tcp { sport, dport, .. } => {
                (sport, dport)
            }
            L4::EchoRequest { id, .. } => (id, 0),
            L4::EchoReply { id, .. } => (0, id),
        };
        (s.to_be(), d.to_be())
    }

    /// The same header with the key's ports replaced (host order).
    pub fn with_key_ports(&self, s: u16, d: u16) -> Self {
        match *self {
            L4::Udp { payload, .. } => L4::Udp { sport: s, dport: d, payload },
            L4::UdpNoCsum { payload, .. } => L4::UdpNoCsum { sport: s, dport: d, payload },
            L4::Tcp { flags, payload, .. } => L4::Tcp { sport: s, dport: d, flags, payload },
            L4::EchoRequest { seq, payload, .. } => L4::EchoRequest { id: s, seq, payload },
            L4::EchoReply { seq, payload, .. } => L4::EchoReply { id: d, seq, payload },
        }
    }

    pub fn with_flags(&self, flags: u8) -> Self {
        match *self {
            L4::Tcp { sport, dport, payload, .. } => L4::Tcp { sport, dport, flags, payload },
            other => other,
        }
    }
}

/// An Ethernet/IPv4 frame.
#[allow(clippy::too_many_arguments)]
pub fn frame(
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    options: &[u8],
    l4: &L4,
) -> Vec<u8> {
    let ip = ipv4_with(src, dst, l4.proto(), options, &l4.bytes(src, dst), ttl, 0x4000);
    eth(eth_dst, eth_src, ETHERTYPE_IPV4, &ip)
}

/// What container `from` sends to an outside `dst` (routed: to its gateway's MAC).
pub fn from_container(from: &Endpoint, dst: Ipv4Addr, l4: &L4) -> Vec<u8> {
    frame(from.gateway_mac, from.mac, ip_of(from), dst, 64, &[], l4)
}

/// What the router sends to the uplink.
pub fn from_outside(src: Ipv4Addr, dst: Ipv4Addr, l4: &L4) -> Vec<u8> {
    frame(UPLINK_MAC, ROUTER_MAC, src, dst, 64, &[], l4)
}

pub fn ip_of(ep: &Endpoint) -> Ipv4Addr {
    Ipv4Addr::from(ep.ip.to_ne_bytes())
}

pub fn key(src: Ipv4Addr, dst: Ipv4Addr, ports: (u16, u16), proto: u8) -> CtKey {
    CtKey { saddr: be(src), daddr: be(dst), sport: ports.0, dport: ports.1, proto, _pad: [0; 3] }
}

/// The entry under `key`, or a panic naming what is there.
#[track_caller]
pub fn entry(fx: &Fixture, key: &CtKey) -> CtEntry {
    fx.ct_get(key).map(|(_, entry)| entry).unwrap_or_else(|| {
        panic!("no conntrack entry for {key:?}; entries: {:#?}", fx.ct_entries().values().collect::<Vec<_>>())
    })
}

/// Checks an entry's fields other than the timestamp.
#[track_caller]
#[allow(clippy::too_many_arguments)]
pub fn assert_entry(
    e: &CtEntry,
    to: CtKey,
    ifindex: u32,
    direction: u8,
    kind: u8,
    tcp_flags: u8,
    packets: u64,
    bytes: u64,
) {
    let want =
        CtEntry { last_seen_ns: e.last_seen_ns, packets, bytes, to, ifindex, direction, tcp_flags, kind, _pad: 0 };
    assert_eq!(*e, want, "conntrack entry");
    assert!(e.last_seen_ns > 0, "entry never stamped");
}

/// The NAT port (host order) of a new SNAT/hairpin flow, from its ORIGINAL entry, checked to
/// be in the configured range.
#[track_caller]
pub fn nat_port(e: &CtEntry, l4: &L4) -> u16 {
    let port = u16::from_be(e.to.sport);
    assert!((NAT_PORT_MIN..=NAT_PORT_MAX).contains(&port), "NAT port {port} out of range");
    let _ = l4;
    port
}

/// Sends a new flow from A to `dst` and checks all of it: the SNAT'd packet (as `expected`
/// builds it from the NAT port), the counters, both entries and the fill count. Returns the
/// NAT port.
#[track_caller]
pub fn snat_new_flow(
    fx: &Fixture,
    t: &Topology,
    dst: Ipv4Addr,
    l4: &L4,
    sent: &[u8],
    expected: impl Fn(u16) -> Vec<u8>,
) -> u16 {
    let entries_before = fx.ct_entries().len();
    let inserted_before = fx.ct_inserted();
    let out = fx.run_from_endpoint(t.a.host_ifindex, sent);
    out.assert_moved(TC_ACT_REDIRECT, &[], &[Counter::SnatNewFlow, Counter::TranslatedOut]);
    let original = key(A_IP, dst, l4.key_ports(), l4.proto());
    let e = entry(fx, &original);
    let port = nat_port(&e, l4);
    let translated = CtKey { saddr: be(UPLINK_IP), sport: port.to_be(), ..original };
    assert_entry(&e, translated, 0, ct_direction::ORIGINAL, ct_kind::SNAT, tcp_flags_of(l4), 1, sent.len() as u64);
    let reply = entry(fx, &translated.reversed());
    assert_entry(&reply, original.reversed(), t.a.host_ifindex, ct_direction::REPLY, ct_kind::SNAT, 0, 0, 0);
    assert_eq!(fx.ct_entries().len(), entries_before + 2, "two entries per flow");
    assert_eq!(fx.ct_inserted(), inserted_before + 2, "CT_FILL counts both");
    crate::devkit::datapath_tests::assert_bytes(&out.packet, &expected(port), "SNAT'd packet");
    verify_ipv4_checksums(&out.packet).unwrap();
    port
}

/// The conntrack flags a TCP header carries.
pub fn tcp_flags_of(l4: &L4) -> u8 {
    let L4::Tcp { flags, .. } = *l4 else { return 0 };
    let mut f = 0;
    if flags & SYN != 0 {
        f |= ct_tcp_flags::SYN;
    }
    if flags & ACK != 0 {
        f |= ct_tcp_flags::ACK;
    }
    if flags & FIN != 0 {
        f |= ct_tcp_flags::FIN;
    }
    if flags & RST != 0 {
        f |= ct_tcp_flags::RST;
    }
    f
}

/// The three kinds of flow a container starts, to the server.
fn outbound_flows() -> [L4<'static>; 3] {
    [
        L4::Tcp { sport: 40001, dport: 443, flags: SYN, payload: b"" },
        L4::Udp { sport: 40000, dport: 53, payload: b"bpfnet query" },
        L4::EchoRequest { id: 0x4242, seq: 1, payload: &[0xa5; 56] },
    ]
}

/// The packet a SNAT'd `l4` from A leaves as: router's MAC, uplink's address and port, TTL-1.
fn snat_expected<'a>(dst: Ipv4Addr, l4: L4<'a>, eth_dst: [u8; 6], eth_src: [u8; 6]) -> impl Fn(u16) -> Vec<u8> + 'a {
    move |port| {
        let (_, d) = l4.key_ports();
        let l4 = l4.with_key_ports(port, u16::from_be(d));
        frame(eth_dst, eth_src, UPLINK_IP, dst, 63, &[], &l4)
    }
}

/// A's new flow to the server out in the world, translated and routed via the router (see
/// `snat_new_flow`): its NAT port.
#[track_caller]
pub fn snat_to_server(fx: &Fixture, t: &Topology, l4: &L4) -> u16 {
    let sent = from_container(&t.a, SERVER_IP, l4);
    snat_new_flow(fx, t, SERVER_IP, l4, &sent, snat_expected(SERVER_IP, *l4, ROUTER_MAC, UPLINK_MAC))
}

#[test]
fn snat_new_flows_are_translated_routed_and_tracked() {
    if !is_root() {
        return;
    }
    let (fx, t, _uplink) = Fixture::with_uplink();
    for l4 in outbound_flows() {
        eprintln!("case: {l4:?}");
        let sent = from_container(&t.a, SERVER_IP, &l4);
        let expected = snat_expected(SERVER_IP, l4, ROUTER_MAC, UPLINK_MAC);
        let port = snat_new_flow(&fx, &t, SERVER_IP, &l4, &sent, &expected);
        // The flow's next packet reuses the entry and its port.
        let out = fx.run_from_endpoint(t.a.host_ifindex, &sent);
        out.assert_redirected(Counter::TranslatedOut, &expected(port));
        let e = entry(&fx, &key(A_IP, SERVER_IP, l4.key_ports(), l4.proto()));
        assert_eq!((e.packets, e.bytes), (2, 2 * sent.len() as u64));
        assert_eq!(fx.ct_inserted(), fx.ct_entries().len() as u64);
    }
    assert_eq!(fx.ct_entries().len(), 6);
}

uplink_test! {
    fn snat_keeps_a_udp_datagram_without_checksum_without(fx, t, uplink) {
        let l4 = L4::UdpNoCsum {
            sport: 40000,
            dport: 53,
            payload: b"no checksum",
        };
        let sent = from_container(&t.a, SERVER_IP, &l4);
        let port = snat_to_server(&fx, &t, &l4);
        let out = fx.run_from_endpoint(t.a.host_ifindex, &sent);
        assert_eq!(
            &out.packet[ETH_HLEN + 20 + 6..ETH_HLEN + 20 + 8],
            &[0, 0],
            "UDP checksum stays 0"
        );
        // And the reply without one comes back without one.
        let reply = L4::UdpNoCsum {
            sport: 53,
            dport: port,
            payload: b"answer",
        };
        let out = fx.run_from_uplink(uplink.ifindex, &from_outside(SERVER_IP, UPLINK_IP, &reply));
        let back = L4::UdpNoCsum {
            sport: 53,
            dport: 40000,
            payload: b"answer",
        };
        out.assert_redirected(
            Counter::TranslatedIn,
            &frame(t.a.mac, t.a.gateway_mac, SERVER_IP, A_IP, 63, &[], &back),
        );
    }
}

#[test]
fn snat_to_an_unresolved_neighbour_is_left_to_redirect_neigh() {
    if !is_root() {
        return;
    }
    let (fx, t, _uplink) = Fixture::with_uplink();
    for l4 in outbound_flows() {
        let sent = from_container(&t.a, UNRESOLVED_IP, &l4);
        // bpf_redirect_neigh fills in the MACs: the program leaves the container's.
        let expected = snat_expected(UNRESOLVED_IP, l4, t.a.gateway_mac, t.a.mac);
        snat_new_flow(&fx, &t, UNRESOLVED_IP, &l4, &sent, expected);
    }
}

uplink_test! {
    fn snat_path_respects_ip_options(fx, t, _uplink) {
        // IHL 6: one word of options (router alert) before the L4 header.
        let options = [0x94, 0x04, 0x00, 0x00];
        for l4 in outbound_flows() {
            let sent = frame(t.a.gateway_mac, t.a.mac, A_IP, SERVER_IP, 64, &options, &l4);
            assert_eq!(sent[ETH_HLEN] & 0x0f, 6);
            let expected = move |port: u16| {
                let (_, d) = l4.key_ports();
                frame(
                    ROUTER_MAC,
                    UPLINK_MAC,
                    UPLINK_IP,
                    SERVER_IP,
                    63,
                    &options,
                    &l4.with_key_ports(port, u16::from_be(d)),
                )
            };
            let port = snat_new_flow(&fx, &t, SERVER_IP, &l4, &sent, expected);
            // The reply, with options too.
            let (s, _) = l4.key_ports();
            let reply = match l4 {
                L4::EchoRequest { seq, payload, .. } => L4::EchoReply {
                    id: port,
                    seq,
                    payload,
                },
                other => {
                    let (_, d) = other.key_ports();
                    other.with_key_ports(u16::from_be(d), port)
                }
            };
            let out = fx.run_from_uplink(
                _uplink.ifindex,
                &frame(
                    UPLINK_MAC, ROUTER_MAC, SERVER_IP, UPLINK_IP, 64, &options, &reply,
                ),
            );
            let back = match reply {
                L4::EchoReply { seq, payload, .. } => L4::EchoReply {
                    id: u16::from_be(s),
                    seq,
                    payload,
                },
                other => {
                    let (s2, _) = other.key_ports();
                    other.with_key_ports(u16::from_be(s2), u16::from_be(s))
                }
            };
            out.assert_redirected(
                Counter::TranslatedIn,
                &frame(
                    t.a.mac,
                    t.a.gateway_mac,
                    SERVER_IP,
                    A_IP,
                    63,
                    &options,
                    &back,
                ),
            );
            verify_ipv4_checksums(&out.packet).unwrap();
        }
    }
}

uplink_test! {
    fn replies_on_the_uplink_are_translated_back_into_the_container(fx, t, uplink) {
        for l4 in outbound_flows() {
            eprintln!("case: {l4:?}");
            let port = snat_to_server(&fx, &t, &l4);
            let (reply, back) = match l4 {
                L4::Tcp { sport, dport, .. } => (
                    L4::Tcp {
                        sport: dport,
                        dport: port,
                        flags: SYN | ACK,
                        payload: b"",
                    },
                    L4::Tcp {
                        sport: dport,
                        dport: sport,
                        flags: SYN | ACK,
                        payload: b"",
                    },
                ),
                L4::Udp { sport, dport, .. } => (
                    L4::Udp {
                        sport: dport,
                        dport: port,
                        payload: b"bpfnet answer",
                    },
                    L4::Udp {
                        sport: dport,
                        dport: sport,
                        payload: b"bpfnet answer",
                    },
                ),
                L4::EchoRequest { id, seq, payload } => (
                    L4::EchoReply {
                        id: port,
                        seq,
                        payload,
                    },
                    L4::EchoReply { id, seq, payload },
                ),
                _ => unreachable!(),
            };
            let received = from_outside(SERVER_IP, UPLINK_IP, &reply);
            let out = fx.run_from_uplink(uplink.ifindex, &received);
            out.assert_redirected(
                Counter::TranslatedIn,
                &frame(t.a.mac, t.a.gateway_mac, SERVER_IP, A_IP, 63, &[], &back),
            );
            verify_ipv4_checksums(&out.packet).unwrap();
            let reply_key = key(SERVER_IP, UPLINK_IP, reply.key_ports(), l4.proto());
            let e = entry(&fx, &reply_key);
            assert_eq!(
                (e.packets, e.bytes, e.tcp_flags),
                (1, received.len() as u64, tcp_flags_of(&reply))
            );
        }
        assert_eq!(fx.ct_entries().len(), 6, "replies create no entries");
    }
}

uplink_test! {
    fn unknown_flows_on_the_uplink_go_to_the_host_unchanged(fx, t, uplink) {
        let l4 = L4::Udp {
            sport: 40000,
            dport: 53,
            payload: b"q",
        };
        let port = snat_to_server(&fx, &t, &l4);
        let other_port = if port == NAT_PORT_MAX {
            port - 1
        } else {
            port + 1
        };
        for (src, l4) in [
            // Wrong NAT port, wrong remote port, wrong remote address, wrong protocol.
            (
                SERVER_IP,
                L4::Udp {
                    sport: 53,
                    dport: other_port,
                    payload: b"a",
                },
            ),
            (
                SERVER_IP,
                L4::Udp {
                    sport: 54,
                    dport: port,
                    payload: b"a",
                },
            ),
            (
                Ipv4Addr::new(198, 51, 100, 8),
                L4::Udp {
                    sport: 53,
                    dport: port,
                    payload: b"a",
                },
            ),
            (
                SERVER_IP,
                L4::Tcp {
                    sport: 53,
                    dport: port,
                    flags: SYN | ACK,
                    payload: b"",
                },
            ),
            (
                SERVER_IP,
                L4::EchoRequest {
                    id: port,
                    seq: 1,
                    payload: b"ping",
                },
            ),
            (
                SERVER_IP,
                L4::EchoReply {
                    id: port,
                    seq: 1,
                    payload: b"pong",
                },
            ),
        ] {
            let received = from_outside(src, UPLINK_IP, &l4);
            fx.run_from_uplink(uplink.ifindex, &received)
                .assert_passed(Counter::UplinkToHost);
        }
        // Not IPv4 at all, and a non-first fragment of the flow: the host's.
        let mut arp = from_outside(SERVER_IP, UPLINK_IP, &l4);
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        let out = fx.run_from_uplink(uplink.ifindex, &arp);
        out.assert_moved(TC_ACT_OK, &[], &[]);
        assert_eq!(out.packet, arp);
        let reply = L4::Udp {
            sport: 53,
            dport: port,
            payload: b"a",
        };
        let ip = ipv4_with(
            SERVER_IP,
            UPLINK_IP,
            IPPROTO_UDP,
            &[],
            &reply.bytes(SERVER_IP, UPLINK_IP),
            64,
            0x0010,
        );
        let later = eth(UPLINK_MAC, ROUTER_MAC, ETHERTYPE_IPV4, &ip);
        fx.run_from_uplink(uplink.ifindex, &later)
            .assert_passed(Counter::UplinkToHost);
        assert_eq!(fx.ct_entries().len(), 2);
    }
}

#[test]
fn snat_refuses_ttl_1_fragments_and_protocols_it_cannot_translate() {
    if !is_root() {
        return;
    }
    let (fx, t, _uplink) = Fixture::with_uplink();
    let l4 = L4::Udp { sport: 40000, dport: 53, payload: b"q" };
    // TTL 1: the host answers with time exceeded.
    let ttl1 = frame(t.a.gateway_mac, t.a.mac, A_IP, SERVER_IP, 1, &[], &l4);
    fx.run_from_endpoint(t.a.host_ifindex, &ttl1).assert_passed(Counter::ToHost);
    // GRE, and an ICMP message that is no echo.
    let gre = eth(
        t.a.gateway_mac,
        t.a.mac,
        ETHERTYPE_IPV4,
        &ipv4_with(A_IP, SERVER_IP, 47, &[], &[0, 0, 0x08, 0, 1, 2, 3, 4], 64, 0x4000),
    );
    fx.run_from_endpoint(t.a.host_ifindex, &gre).assert_dropped(DropReason::UnsupportedL4);
    let timestamp = crate::devkit::datapath_tests::packets::icmp_error(13, 0, [0, 1, 0, 1], &[0; 12]);
    let ts = eth(
        t.a.gateway_mac,
        t.a.mac,
        ETHERTYPE_IPV4,
        &ipv4_with(A_IP, SERVER_IP, IPPROTO_ICMP, &[], &timestamp, 64, 0x4000),
    );
    fx.run_from_endpoint(t.a.host_ifindex, &ts).assert_dropped(DropReason::UnsupportedL4);
    // A non-first fragment (offset 8 bytes, more fragments), and the last one.
    for frag in [0x2001, 0x0010] {
        let ip = ipv4_with(A_IP, SERVER_IP, IPPROTO_UDP, &[], b"continued payload", 64, frag);
        let f = eth(t.a.gateway_mac, t.a.mac, ETHERTYPE_IPV4, &ip);
        fx.run_from_endpoint(t.a.host_ifindex, &f).assert_dropped(DropReason::FragmentWithoutFirst);
    }
    assert_eq!(fx.ct_entries().len(), 0, "nothing tracked");
    // The first fragment (MF, offset 0) has the ports: translated like any packet.
    let datagram = l4.bytes(A_IP, SERVER_IP);
    let first = eth(
        t.a.gateway_mac,
        t.a.mac,
        ETHERTYPE_IPV4,
        &ipv4_with(A_IP, SERVER_IP, IPPROTO_UDP, &[], &datagram, 64, 0x2000),
    );
    let out = fx.run_from_endpoint(t.a.host_ifindex, &first);
    out.assert_moved(TC_ACT_REDIRECT, &[], &[Counter::SnatNewFlow, Counter::TranslatedOut]);
    let e = entry(&fx, &key(A_IP, SERVER_IP, l4.key_ports(), IPPROTO_UDP));
    let port = nat_port(&e, &l4);
    let l4out = l4.with_key_ports(port, 53);
    let ip = ipv4_with(UPLINK_IP, SERVER_IP, IPPROTO_UDP, &[], &l4out.bytes(UPLINK_IP, SERVER_IP), 63, 0x2000);
    crate::devkit::datapath_tests::assert_bytes(
        &out.packet,
        &eth(ROUTER_MAC, UPLINK_MAC, ETHERTYPE_IPV4, &ip),
        "first fragment",
    );
}

#[test]
fn without_an_uplink_or_a_route_out_of_it_nothing_is_translated() {
    if !is_root() {
        return;
    }
    let (mut fx, t, uplink) = Fixture::with_uplink();
    let l4 = L4::Tcp { sport: 40001, dport: 443, flags: SYN, payload: b"" };
    // The uplink's own address is the host's: off limits by default, passed untranslated to
    // the host when the agent allows host access.
    let to_uplink = from_container(&t.a, UPLINK_IP, &l4);
    fx.run_from_endpoint(t.a.host_ifindex, &to_uplink).assert_dropped(DropReason::HostAccessDenied);
    let cfg = fx.host_config(&uplink);
    fx.set_config(&datapath_common::HostConfig { flags: datapath_common::host_config_flags::ALLOW_HOST_ACCESS, ..cfg });
    fx.run_from_endpoint(t.a.host_ifindex, &to_uplink).assert_passed(Counter::ToHost);
    fx.set_config(&datapath_common::HostConfig { uplink_ifindex: 0, ..cfg });
    for l4 in outbound_flows() {
        let sent = from_container(&t.a, SERVER_IP, &l4);
        fx.run_from_endpoint(t.a.host_ifindex, &sent).assert_passed(Counter::ToHost);
    }
    // An uplink that is not where the route leads (here: h2's index).
    fx.set_config(&datapath_common::HostConfig { uplink_ifindex: t.c.host_ifindex, ..cfg });
    fx.run_from_endpoint(t.a.host_ifindex, &from_container(&t.a, SERVER_IP, &l4)).assert_passed(Counter::ToHost);
    assert_eq!(fx.ct_entries().len(), 0);
    assert_eq!(fx.ct_inserted(), 0);
}

/// Broadcast and multicast are never forwarded by a router, and neither are the "this
/// network" and loopback addresses: the kernel's own forwarding delivers them locally or
/// drops them as martians. A container's broadcast or multicast (DHCP, mDNS, SSDP) must not
/// leave through the uplink with the host's address.
#[test]
fn broadcast_multicast_and_martian_destinations_are_not_translated() {
    if !is_root() {
        return;
    }
    let (fx, t, _uplink) = Fixture::with_uplink();
    let mut leaked = Vec::new();
    for dst in [
        Ipv4Addr::BROADCAST,
        Ipv4Addr::new(224, 0, 0, 251),
        Ipv4Addr::new(239, 255, 255, 250),
        Ipv4Addr::new(203, 0, 113, 255), // the uplink subnet's broadcast
        Ipv4Addr::new(0, 0, 0, 0),
        Ipv4Addr::new(127, 0, 0, 1),
    ] {
        let l4 = L4::Udp { sport: 5353, dport: 5353, payload: b"who is there" };
        let sent = from_container(&t.a, dst, &l4);
        let out = fx.run_from_endpoint(t.a.host_ifindex, &sent);
        // Passed to the host unchanged, or (the uplink subnet's broadcast, an address of the
        // host) refused: never translated and redirected.
        if out.retval == TC_ACT_REDIRECT || out.packet != sent {
            leaked.push(format!("{dst}: {}", describe(&out)));
        }
    }
    assert!(
        leaked.is_empty(),
        "translated and sent out of the uplink: {leaked:#?}; CT: {:#?}",
        fx.ct_entries().values().collect::<Vec<_>>()
    );
}

fn describe(out: &Outcome) -> String {
    let ip = &out.packet[ETH_HLEN..];
    format!(
        "verdict {}, out as {}.{}.{}.{} -> {}.{}.{}.{}, dst MAC {:02x?}",
        out.retval,
        ip[12],
        ip[13],
        ip[14],
        ip[15],
        ip[16],
        ip[17],
        ip[18],
        ip[19],
        &out.packet[..6]
    )
}

/// A container's echo *reply* to the outside (it answers a ping that reached it by routing):
/// the identifier is in the key's destination slot, yet the translation writes the NAT port
/// into it as if it were the source slot. Whatever the datapath decides to do with it, what
/// leaves must have a valid ICMP checksum.
#[test]
fn echo_reply_from_a_container_leaves_with_a_valid_checksum() {
    if !is_root() {
        return;
    }
    let (fx, t, _uplink) = Fixture::with_uplink();
    let l4 = L4::EchoReply { id: 0x4242, seq: 7, payload: &[0x5a; 32] };
    let sent = from_container(&t.a, SERVER_IP, &l4);
    let out = fx.run_from_endpoint(t.a.host_ifindex, &sent);
    let ct = fx.ct_entries();
    assert!(
        verify_ipv4_checksums(&out.packet).is_ok(),
        "{}: {:?}; sent id {:02x?}, out id {:02x?}; CT: {:#?}",
        describe(&out),
        verify_ipv4_checksums(&out.packet),
        &sent[ETH_HLEN + 24..ETH_HLEN + 26],
        &out.packet[ETH_HLEN + 24..ETH_HLEN + 26],
        ct.values().collect::<Vec<_>>()
    );
}

pub const PUBLISHED_PORT: u16 = 8080;
pub const B_PORT: u16 = 80;
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 99);

/// `--publish 8080:80/tcp` (and udp) for container B, on all host addresses.
pub fn publish_b(fx: &mut Fixture) {
    for proto in [IPPROTO_TCP, IPPROTO_UDP] {
        fx.published_ports
            .insert(
                PublishedPortKey { addr: 0, port: PUBLISHED_PORT.to_be(), proto, _pad: 0 },
                PublishedPortTarget { ip: be(B_IP), port: B_PORT.to_be(), _pad: 0 },
                0,
            )
            .unwrap();
    }
}

uplink_test! {
    fn dnat_to_a_published_port_and_the_containers_reply_back_out(mut fx, t, uplink) {
        publish_b(&mut fx);
        for (i, proto) in [IPPROTO_TCP, IPPROTO_UDP].into_iter().enumerate() {
            let cport = 5555 + i as u16;
            let (l4, reply) = if proto == IPPROTO_TCP {
                (
                    L4::Tcp {
                        sport: cport,
                        dport: PUBLISHED_PORT,
                        flags: SYN,
                        payload: b"",
                    },
                    L4::Tcp {
                        sport: B_PORT,
                        dport: cport,
                        flags: SYN | ACK,
                        payload: b"",
                    },
                )
            } else {
                (
                    L4::Udp {
                        sport: cport,
                        dport: PUBLISHED_PORT,
                        payload: b"hello",
                    },
                    L4::Udp {
                        sport: B_PORT,
                        dport: cport,
                        payload: b"hello yourself",
                    },
                )
            };
            let received = from_outside(CLIENT_IP, UPLINK_IP, &l4);
            let out = fx.run_from_uplink(uplink.ifindex, &received);
            out.assert_moved(
                TC_ACT_REDIRECT,
                &[],
                &[Counter::DnatNewFlow, Counter::TranslatedIn],
            );
            let inside = l4.with_key_ports(cport, B_PORT);
            crate::devkit::datapath_tests::assert_bytes(
                &out.packet,
                &frame(t.b.mac, t.b.gateway_mac, CLIENT_IP, B_IP, 63, &[], &inside),
                "DNAT'd packet",
            );
            verify_ipv4_checksums(&out.packet).unwrap();
            let original = key(CLIENT_IP, UPLINK_IP, l4.key_ports(), proto);
            let to = key(CLIENT_IP, B_IP, inside.key_ports(), proto);
            assert_entry(
                &entry(&fx, &original),
                to,
                t.b.host_ifindex,
                ct_direction::ORIGINAL,
                ct_kind::DNAT,
                tcp_flags_of(&l4),
                1,
                received.len() as u64,
            );
            assert_entry(
                &entry(&fx, &to.reversed()),
                original.reversed(),
                0,
                ct_direction::REPLY,
                ct_kind::DNAT,
                0,
                0,
                0,
            );

            // B answers: source back to the published address and port, routed out of the uplink.
            let sent = from_container(&t.b, CLIENT_IP, &reply);
            let out = fx.run_from_endpoint(t.b.host_ifindex, &sent);
            let outside = reply.with_key_ports(PUBLISHED_PORT, cport);
            out.assert_redirected(
                Counter::TranslatedOut,
                &frame(
                    ROUTER_MAC,
                    UPLINK_MAC,
                    UPLINK_IP,
                    CLIENT_IP,
                    63,
                    &[],
                    &outside,
                ),
            );
            verify_ipv4_checksums(&out.packet).unwrap();
            let e = entry(&fx, &to.reversed());
            assert_eq!((e.packets, e.tcp_flags), (1, tcp_flags_of(&reply)));
        }
        assert_eq!(fx.ct_entries().len(), 4);
        assert_eq!(fx.ct_inserted(), 4);
        // Not published: ICMP, another port, another address of the host (none is published).
        for l4 in [
            L4::Tcp {
                sport: 5555,
                dport: PUBLISHED_PORT + 1,
                flags: SYN,
                payload: b"",
            },
            L4::EchoRequest {
                id: PUBLISHED_PORT,
                seq: 1,
                payload: b"",
            },
        ] {
            fx.run_from_uplink(uplink.ifindex, &from_outside(CLIENT_IP, UPLINK_IP, &l4))
                .assert_passed(Counter::UplinkToHost);
        }
        let l4 = L4::Tcp {
            sport: 5556,
            dport: PUBLISHED_PORT,
            flags: SYN,
            payload: b"",
        };
        fx.run_from_uplink(
            uplink.ifindex,
            &from_outside(CLIENT_IP, Ipv4Addr::new(203, 0, 113, 3), &l4),
        )
        .assert_passed(Counter::UplinkToHost);
        assert_eq!(fx.ct_entries().len(), 4);
    }
}

#[test]
fn hairpin_from_a_container_to_a_published_port() {
    if !is_root() {
        return;
    }
    let (mut fx, t, _uplink) = Fixture::with_uplink();
    publish_b(&mut fx);
    let l4 = L4::Tcp { sport: 40001, dport: PUBLISHED_PORT, flags: SYN, payload: b"" };
    let sent = from_container(&t.a, UPLINK_IP, &l4);
    let out = fx.run_from_endpoint(t.a.host_ifindex, &sent);
    out.assert_moved(TC_ACT_REDIRECT, &[], &[Counter::HairpinNewFlow, Counter::TranslatedIn]);
    let original = key(A_IP, UPLINK_IP, l4.key_ports(), IPPROTO_TCP);
    let e = entry(&fx, &original);
    let port = nat_port(&e, &l4);
    let to = key(UPLINK_IP, B_IP, (port.to_be(), B_PORT.to_be()), IPPROTO_TCP);
    assert_entry(
        &e,
        to,
        t.b.host_ifindex,
        ct_direction::ORIGINAL,
        ct_kind::HAIRPIN,
        ct_tcp_flags::SYN,
        1,
        sent.len() as u64,
    );
    assert_entry(
        &entry(&fx, &to.reversed()),
        original.reversed(),
        t.a.host_ifindex,
        ct_direction::REPLY,
        ct_kind::HAIRPIN,
        0,
        0,
        0,
    );
    let inside = l4.with_key_ports(port, B_PORT);
    crate::devkit::datapath_tests::assert_bytes(
        &out.packet,
        &frame(t.b.mac, t.b.gateway_mac, UPLINK_IP, B_IP, 63, &[], &inside),
        "hairpinned packet",
    );
    verify_ipv4_checksums(&out.packet).unwrap();
    assert_eq!(fx.ct_inserted(), 2);

    // B's answer goes to the uplink address and port, and comes back to A as from the
    // published port.
    let reply = L4::Tcp { sport: B_PORT, dport: port, flags: SYN | ACK, payload: b"" };
    let out = fx.run_from_endpoint(t.b.host_ifindex, &from_container(&t.b, UPLINK_IP, &reply));
    let back = L4::Tcp { sport: PUBLISHED_PORT, dport: 40001, flags: SYN | ACK, payload: b"" };
    out.assert_redirected(Counter::TranslatedIn, &frame(t.a.mac, t.a.gateway_mac, UPLINK_IP, A_IP, 63, &[], &back));
    verify_ipv4_checksums(&out.packet).unwrap();
    assert_eq!(fx.ct_entries().len(), 2);
}

#[test]
fn exhausted_nat_ports_refuse_the_flow() {
    if !is_root() {
        return;
    }
    let (mut fx, t, uplink) = Fixture::with_uplink();
    let cfg = fx.host_config(&uplink);
    fx.set_config(&datapath_common::HostConfig { nat_port_min: 30000, nat_port_max: 30000, ..cfg });
    // Another flow already holds the only port towards this server's port 53.
    let taken = key(SERVER_IP, UPLINK_IP, (53u16.to_be(), 30000u16.to_be()), IPPROTO_UDP);
    let holder = CtEntry {
        to: key(SERVER_IP, B_IP, (53u16.to_be(), 1234u16.to_be()), IPPROTO_UDP),
        ifindex: t.b.host_ifindex,
        direction: ct_direction::REPLY,
        ..Default::default()
    };
    fx.ct_tables[0].insert(taken, holder, 0).unwrap();
    let l4 = L4::Udp { sport: 40000, dport: 53, payload: b"q" };
    fx.run_from_endpoint(t.a.host_ifindex, &from_container(&t.a, SERVER_IP, &l4))
        .assert_dropped(DropReason::NatPortsExhausted);
    assert_eq!(fx.ct_entries().len(), 1, "nothing created");
    assert_eq!(fx.ct_inserted(), 0);
    // The same port is free towards another server port: per-destination allocation.
    let l4 = L4::Udp { sport: 40000, dport: 54, payload: b"q" };
    let out = fx.run_from_endpoint(t.a.host_ifindex, &from_container(&t.a, SERVER_IP, &l4));
    out.assert_moved(TC_ACT_REDIRECT, &[], &[Counter::SnatNewFlow, Counter::TranslatedOut]);
    assert_eq!(u16::from_be(entry(&fx, &key(A_IP, SERVER_IP, l4.key_ports(), IPPROTO_UDP)).to.sport), 30000);
}

/// The container's own source port is kept when the translated tuple is free, as nf_nat
/// keeps it: a client cycling through its ephemeral ports to one server then never needs
/// more NAT ports than it has. Another container on the same port to the same server gets
/// another one; a port outside the NAT range is never kept.
#[test]
fn snat_keeps_the_containers_port_when_it_is_free() {
    if !is_root() {
        return;
    }
    let (fx, t, _uplink) = Fixture::with_uplink();
    let inside = NAT_PORT_MIN + 7;
    let l4 = L4::Udp { sport: inside, dport: 53, payload: b"q" };
    let out = fx.run_from_endpoint(t.a.host_ifindex, &from_container(&t.a, SERVER_IP, &l4));
    out.assert_moved(TC_ACT_REDIRECT, &[], &[Counter::SnatNewFlow, Counter::TranslatedOut]);
    assert_eq!(u16::from_be(entry(&fx, &key(A_IP, SERVER_IP, l4.key_ports(), IPPROTO_UDP)).to.sport), inside);
    // B on the same port to the same server: the tuple is taken, another port of the range.
    let out = fx.run_from_endpoint(t.b.host_ifindex, &from_container(&t.b, SERVER_IP, &l4));
    out.assert_moved(TC_ACT_REDIRECT, &[], &[Counter::SnatNewFlow, Counter::TranslatedOut]);
    let b_port = u16::from_be(entry(&fx, &key(B_IP, SERVER_IP, l4.key_ports(), IPPROTO_UDP)).to.sport);
    assert!(b_port != inside && (NAT_PORT_MIN..=NAT_PORT_MAX).contains(&b_port), "B got {b_port}");
    // A port outside the range is translated into it.
    let outside = L4::Udp { sport: 40000, dport: 53, payload: b"q" };
    fx.run_from_endpoint(t.a.host_ifindex, &from_container(&t.a, SERVER_IP, &outside));
    let port = u16::from_be(entry(&fx, &key(A_IP, SERVER_IP, outside.key_ports(), IPPROTO_UDP)).to.sport);
    assert!((NAT_PORT_MIN..=NAT_PORT_MAX).contains(&port), "got {port}");
}

/// A TCP or UDP packet cut off inside its header, after the ports but before the end of the
/// checksum field: the datapath reads the ports, tracks a new flow (two entries, a NAT port,
/// `snat_new_flow`), starts rewriting (the IP checksum), then fails on the L4 checksum and
/// drops it as `rewrite_failed`. It must be refused before anything is tracked or written.
#[test]
fn truncated_l4_header_is_dropped_before_it_is_tracked() {
    if !is_root() {
        return;
    }
    let (mut fx, t, _uplink) = Fixture::with_uplink();
    let mut problems = Vec::new();
    for (l4, keep) in [
        (L4::Udp { sport: 40000, dport: 53, payload: b"q" }, 6),
        (L4::Tcp { sport: 40001, dport: 443, flags: SYN, payload: b"" }, 16),
    ] {
        let whole = from_container(&t.a, SERVER_IP, &l4);
        let cut = &whole[..ETH_HLEN + 20 + keep];
        let out = fx.run_from_endpoint(t.a.host_ifindex, cut);
        let entries = fx.ct_entries().len();
        if out.retval != TC_ACT_SHOT || out.packet != cut || entries != 0 || out.counters.iter().any(|c| *c != 0) {
            problems.push(format!(
                "{l4:?} cut after {keep} bytes: {}, {} CT entries, packet {}",
                out.moved(),
                entries,
                if out.packet == cut { "unchanged" } else { "rewritten" }
            ));
        }
        fx.clear_ct();
    }
    assert!(problems.is_empty(), "{problems:#?}");
}
