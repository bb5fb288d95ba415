//! A randomized run through both programs: valid packets of every kind the other tests
//! craft, then mutated (byte flips, truncation at every layer, random ether types, protocols,
//! lengths, TTLs and fragment fields), with a seeded PRNG so a failure replays.
//!
//! What must hold for every input, whatever it is:
//! - the test run succeeds, except for the frames the kernel refuses before the program runs
//!   (shorter than Ethernet, or than Ethernet + an IPv4/IPv6 header: see forward.rs);
//! - the verdict is TC_ACT_OK, TC_ACT_SHOT or TC_ACT_REDIRECT;
//! - every SHOT is counted by exactly one drop reason (total SHOTs = growth of the DROPS sum),
//!   or as `ndp_ignored` (a neighbour discovery or MLD message that needs no answer), and a
//!   dropped packet is not rewritten;
//! - a packet whose checksums were valid leaves with valid checksums (IPv4 and IPv6: the
//!   neighbour advertisements the datapath builds, too);
//! - conntrack entries come only from packets that may start a flow: none at all without an
//!   uplink and published ports; with an uplink, only from well-formed TCP/UDP/ICMP echo of
//!   a container to a non-member (and, once ports are published, from flows to them); none
//!   from IPv6, which is not tracked yet.
//!
//! The containers are dual stack: a fifth of what they send is IPv6 (neighbour discovery,
//! MLD, UDP and ICMPv6 behind extension headers), mutated in IPv6's fields as well.
use std::{collections::HashSet, net::Ipv6Addr, time::Instant};

use datapath_common::{
    ct_direction, ct_kind, ipv6_octets, program_names, Counter, CtKey, DropReason, Endpoint, Endpoint6, HostConfig,
};

use super::{
    be,
    nat::{frame, publish_b, ACK, FIN, L4, RST, SYN},
    packets::{
        eth, fragment_header, icmp_error, icmpv6, ipv4_with, ipv6, link_local, multicast_mac, neighbor_advertisement,
        neighbor_solicitation, options_header, solicited_node, udp6, verify_ipv4_checksums, verify_ipv6_checksums, Arp,
        BROADCAST, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETH_HLEN, ICMPV6_ECHO_REQUEST, IPPROTO_ICMP, IPPROTO_ICMPV6,
        IPPROTO_TCP, IPPROTO_UDP, IPV6_DESTINATION_OPTIONS, IPV6_FRAGMENT, IPV6_HLEN, IPV6_HOP_BY_HOP, MLD2_REPORT,
        NA_OVERRIDE, NA_SOLICITED, ROUTER_SOLICITATION,
    },
    Fixture, Topology, Topology6, A_IP, A_IP6, B_IP, B_IP6, C_IP, C_IP6, ROUTER_MAC, SERVER_IP, TC_ACT_OK,
    TC_ACT_REDIRECT, TC_ACT_SHOT, UNRESOLVED_IP, UPLINK_IP, UPLINK_MAC, WEB_GATEWAY6,
};
use crate::devkit::netns::is_root;

/// xorshift64*: small, seeded, good enough to pick bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

const NAT_MIN: u16 = 20000;
const NAT_MAX: u16 = 20015;
const PORTS: [u16; 5] = [53, 80, 443, 8080, 40000];
const PUBLISHED: u16 = super::nat::PUBLISHED_PORT;

fn remotes() -> [std::net::Ipv4Addr; 5] {
    [
        SERVER_IP,
        super::nat::CLIENT_IP,
        UNRESOLVED_IP,
        std::net::Ipv4Addr::new(198, 51, 100, 8),
        std::net::Ipv4Addr::new(224, 0, 0, 251),
    ]
}

fn destinations() -> Vec<std::net::Ipv4Addr> {
    let mut d = remotes().to_vec();
    d.extend([
        UPLINK_IP,
        super::WEB_GATEWAY,
        super::DB_GATEWAY,
        A_IP,
        B_IP,
        C_IP,
        std::net::Ipv4Addr::new(10, 88, 0, 99),
        std::net::Ipv4Addr::BROADCAST,
    ]);
    d
}

fn random_l4(rng: &mut Rng, sport: u16, dport: u16) -> L4<'static> {
    const PAYLOADS: [&[u8]; 4] = [b"", b"x", b"bpfnet fuzz payload", &[0xa5; 64]];
    let payload = rng.pick(&PAYLOADS);
    match rng.below(5) {
        0 => L4::Udp { sport, dport, payload },
        1 => L4::UdpNoCsum { sport, dport, payload },
        2 => L4::Tcp { sport, dport, flags: rng.pick(&[SYN, ACK, SYN | ACK, FIN | ACK, RST, 0x18]), payload },
        3 => L4::EchoRequest { id: sport, seq: rng.byte() as u16, payload },
        _ => L4::EchoReply { id: dport, seq: rng.byte() as u16, payload },
    }
}

/// A valid packet of some kind a container sends.
fn endpoint_packet(rng: &mut Rng, ep: &Endpoint, gateway_mac: [u8; 6], t: &Topology) -> Vec<u8> {
    let src = super::nat::ip_of(ep);
    if rng.chance(10) {
        let target = rng.pick(&destinations());
        return Arp::request(ep.mac, src, target).frame(BROADCAST, ep.mac);
    }
    let dst = rng.pick(&destinations());
    let (sport, dport) = (rng.pick(&[40000, 40001, 40002, 5353]), rng.pick(&PORTS));
    let l4 = random_l4(rng, sport, dport);
    let ttl = rng.pick(&[64, 64, 64, 2, 1]);
    let options: &[u8] = if rng.chance(10) { &[0x94, 0x04, 0, 0] } else { &[] };
    let frag = rng.pick(&[0x4000, 0x4000, 0x4000, 0x2000, 0x2001, 0x0010]);
    let eth_dst = if rng.chance(80) { gateway_mac } else { t.b.mac };
    let ip = ipv4_with(src, dst, l4.proto(), options, &l4.bytes(src, dst), ttl, frag);
    eth(eth_dst, ep.mac, ETHERTYPE_IPV4, &ip)
}

fn destinations6(sender: &Endpoint6) -> [Ipv6Addr; 9] {
    [
        A_IP6,
        B_IP6,
        C_IP6,
        WEB_GATEWAY6,
        Ipv6Addr::from(ipv6_octets(sender.gateway)),
        link_local(sender.gateway_mac),
        "2001:db8:88::99".parse().unwrap(),
        "2001:db8:ffff::1".parse().unwrap(),
        "ff02::1".parse().unwrap(),
    ]
}

/// A valid IPv6 packet of some kind a container sends: neighbour discovery (answered,
/// unanswered, DAD, advertisements), router solicitations, MLD, UDP and ICMPv6 echo, the last
/// two behind extension headers now and then.
fn endpoint_packet6(rng: &mut Rng, ep: &Endpoint6) -> Vec<u8> {
    let own = Ipv6Addr::from(ipv6_octets(ep.ip));
    let src = rng.pick(&[own, own, own, link_local(ep.mac), Ipv6Addr::UNSPECIFIED]);
    let dst = rng.pick(&destinations6(ep));
    let gateway_mac = ep.gateway_mac;
    let ip = match rng.below(8) {
        0 | 1 => {
            let group = solicited_node(dst);
            let (to, eth_dst) = if rng.chance(70) { (group, multicast_mac(group)) } else { (dst, gateway_mac) };
            let slla = (rng.chance(70) && !src.is_unspecified()).then_some(ep.mac);
            return eth(eth_dst, ep.mac, ETHERTYPE_IPV6, &neighbor_solicitation(src, to, dst, slla));
        }
        2 => {
            let target = rng.pick(&[own, link_local(ep.mac), dst]);
            let na =
                neighbor_advertisement(src, link_local(gateway_mac), target, NA_SOLICITED | NA_OVERRIDE, Some(ep.mac));
            return eth(gateway_mac, ep.mac, ETHERTYPE_IPV6, &na);
        }
        3 => {
            let group: Ipv6Addr = rng.pick(&["ff02::2", "ff02::16"]).parse().unwrap();
            let icmp_type = rng.pick(&[ROUTER_SOLICITATION, MLD2_REPORT]);
            let ip = ipv6(src, group, IPPROTO_ICMPV6, 255, &icmpv6(src, group, icmp_type, 0, &[0; 4]));
            return eth(multicast_mac(group), ep.mac, ETHERTYPE_IPV6, &ip);
        }
        4 => ipv6(src, dst, IPPROTO_ICMPV6, 64, &icmpv6(src, dst, ICMPV6_ECHO_REQUEST, 0, &[0, 7, 0, 1, 0xa5, 0xa5])),
        _ => {
            let datagram = udp6(src, dst, 40000, rng.pick(&PORTS), b"bpfnet fuzz over IPv6");
            let mut payload = Vec::new();
            let first = match rng.below(5) {
                0 => {
                    payload.extend(options_header(IPV6_DESTINATION_OPTIONS, 1));
                    payload.extend(options_header(IPPROTO_UDP, 1 + rng.below(3) as u8));
                    IPV6_HOP_BY_HOP
                }
                1 => {
                    payload.extend(fragment_header(IPPROTO_UDP, rng.pick(&[0, 0, 185]), rng.chance(50), 0x5eed));
                    IPV6_FRAGMENT
                }
                // At the bound of extension headers walked (four), or over it (five).
                2 => {
                    for _ in 0..3 + rng.below(2) {
                        payload.extend(options_header(IPV6_DESTINATION_OPTIONS, 1));
                    }
                    payload.extend(options_header(IPPROTO_UDP, 1));
                    IPV6_DESTINATION_OPTIONS
                }
                _ => IPPROTO_UDP,
            };
            payload.extend(datagram);
            ipv6(src, dst, first, rng.pick(&[64, 64, 1]), &payload)
        }
    };
    let eth_dst = if rng.chance(80) { gateway_mac } else { rng.pick(&[ep.mac, [0x33, 0x33, 0, 0, 0, 1]]) };
    eth(eth_dst, ep.mac, ETHERTYPE_IPV6, &ip)
}

/// Breaks a valid IPv6 packet in IPv6's fields (version, payload length, next header, hop
/// limit, the first extension header's length, the ICMPv6 type), then as any packet.
fn mutate6(rng: &mut Rng, mut p: Vec<u8>) -> Vec<u8> {
    let ip = ETH_HLEN;
    if rng.chance(50) && p.len() > ip + IPV6_HLEN + 1 {
        let r = rng.byte();
        match rng.below(6) {
            0 => p[ip] = rng.pick(&[0x60, 0x40, 0x6f, r]),
            1 => {
                let len = rng.pick(&[0, 8, 0xffff, u16::from_be_bytes([r, r ^ 0x5a])]);
                p[ip + 4..ip + 6].copy_from_slice(&len.to_be_bytes());
            }
            2 => {
                p[ip + 6] = rng.pick(&[
                    IPV6_HOP_BY_HOP,
                    IPV6_FRAGMENT,
                    IPV6_DESTINATION_OPTIONS,
                    43,
                    59,
                    IPPROTO_ICMPV6,
                    IPPROTO_UDP,
                    r,
                ])
            }
            3 => p[ip + 7] = rng.pick(&[255, 254, 1, 0]),
            4 => p[ip + IPV6_HLEN + 1] = rng.pick(&[0, 1, 255, r]),
            _ => p[ip + IPV6_HLEN] = rng.pick(&[128, 133, 134, 135, 136, 137, 143, r]),
        }
    }
    mutate(rng, p)
}

/// A valid packet of some kind that arrives on the uplink: replies to NAT ports, flows to
/// published ports, ICMP errors quoting translated packets.
fn uplink_packet(rng: &mut Rng) -> Vec<u8> {
    let remote = rng.pick(&remotes()[..4]);
    let nat_port = NAT_MIN + rng.below((NAT_MAX - NAT_MIN + 1) as usize) as u16;
    let rport = rng.pick(&PORTS);
    match rng.below(4) {
        0 => {
            let l4 = match random_l4(rng, rport, nat_port) {
                L4::EchoRequest { seq, payload, .. } => L4::EchoReply { id: nat_port, seq, payload },
                other => other,
            };
            frame(UPLINK_MAC, ROUTER_MAC, remote, UPLINK_IP, 64, &[], &l4)
        }
        1 => {
            let dport = rng.pick(&[PUBLISHED, PUBLISHED, 80, 22]);
            let sport = rng.pick(&[5555, 5556, 40000]);
            let l4 = random_l4(rng, sport, dport);
            frame(UPLINK_MAC, ROUTER_MAC, remote, UPLINK_IP, rng.pick(&[64, 1]), &[], &l4)
        }
        _ => {
            let l4 = random_l4(rng, nat_port, rport);
            let quoted = ipv4_with(UPLINK_IP, remote, l4.proto(), &[], &l4.bytes(UPLINK_IP, remote), 63, 0x4000);
            let len = if rng.chance(50) { quoted.len() } else { 28.min(quoted.len()) };
            let (ty, code) = rng.pick(&[(3, 3), (3, 4), (11, 0), (3, 1), (5, 0), (12, 0)]);
            let message = icmp_error(ty, code, [0, 0, 5, 0x78], &quoted[..len]);
            let ip = ipv4_with(rng.pick(&[remote, super::ROUTER_IP]), UPLINK_IP, IPPROTO_ICMP, &[], &message, 64, 0);
            eth(UPLINK_MAC, ROUTER_MAC, ETHERTYPE_IPV4, &ip)
        }
    }
}

/// IPv6 on the uplink: nothing the datapath translates yet.
fn uplink_packet6(rng: &mut Rng) -> Vec<u8> {
    let remote: Ipv6Addr = "2001:db8:ffff::1".parse().unwrap();
    let dst = rng.pick(&[A_IP6, "2001:db8:1::1".parse().unwrap()]);
    let datagram = udp6(remote, dst, 53, 40000, b"reply");
    eth(UPLINK_MAC, ROUTER_MAC, ETHERTYPE_IPV6, &ipv6(remote, dst, IPPROTO_UDP, 64, &datagram))
}

/// Breaks a valid packet in one or more ways (or not at all).
fn mutate(rng: &mut Rng, mut p: Vec<u8>) -> Vec<u8> {
    let rounds = match rng.below(10) {
        0..=2 => 0,
        3..=7 => 1,
        _ => 1 + rng.below(4),
    };
    for _ in 0..rounds {
        let ip = ETH_HLEN;
        let l4 = ip + 20;
        match rng.below(9) {
            // Flip random bits anywhere.
            0 | 1 => {
                for _ in 0..1 + rng.below(4) {
                    if !p.is_empty() {
                        let i = rng.below(p.len());
                        p[i] ^= 1 << rng.below(8);
                    }
                }
            }
            // Truncate at a random length, or at a layer boundary (+-1).
            2 => {
                let len = rng.below(p.len() + 1);
                p.truncate(len);
            }
            3 => {
                let edge = rng.pick(&[ETH_HLEN, ip + 20, l4 + 4, l4 + 8, l4 + 14, l4 + 20, l4 + 28, l4 + 36]);
                let len = (edge + rng.below(3)).saturating_sub(1);
                p.truncate(len.min(p.len()));
            }
            // Random ether type, protocol, version/IHL, total length, TTL, fragment word.
            4 if p.len() >= ETH_HLEN => {
                let et = {
                    let r = rng.next() as u16;
                    rng.pick(&[0x0800, 0x0806, 0x86dd, 0x8100, 0x88b5, r])
                };
                p[12..14].copy_from_slice(&u16::to_be_bytes(et));
            }
            5 if p.len() > ip + 9 => {
                p[ip + 9] = {
                    let r = rng.byte();
                    rng.pick(&[IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP, 47, 0, 255, r])
                }
            }
            6 if p.len() > ip => {
                p[ip] = {
                    let r = rng.byte();
                    rng.pick(&[0x45, 0x46, 0x4f, 0x44, 0x40, 0x65, r])
                }
            }
            7 if p.len() > ip + 3 => {
                let v = {
                    let r = rng.next() as u16;
                    rng.pick(&[0, 20, 28, 0xffff, r])
                };
                p[ip + 2..ip + 4].copy_from_slice(&v.to_be_bytes());
            }
            8 if p.len() > ip + 8 => {
                if rng.chance(50) {
                    p[ip + 8] = rng.pick(&[0, 1, 2, 255]);
                } else {
                    let v = {
                        let r = rng.next() as u16;
                        rng.pick(&[0x0001, 0x2000, 0x1fff, r])
                    };
                    p[ip + 6..ip + 8].copy_from_slice(&v.to_be_bytes());
                }
            }
            // Random bytes appended or a random frame.
            _ => {
                if rng.chance(50) {
                    for _ in 0..rng.below(32) {
                        p.push(rng.byte());
                    }
                } else {
                    p = (0..rng.below(120)).map(|_| rng.byte()).collect();
                }
            }
        }
    }
    p
}

/// Frames BPF_PROG_TEST_RUN refuses (EINVAL) before the program runs.
fn kernel_refuses(p: &[u8]) -> bool {
    if p.len() < ETH_HLEN {
        return true;
    }
    match u16::from_be_bytes([p[12], p[13]]) {
        0x0800 => p.len() < ETH_HLEN + 20,
        0x86dd => p.len() < ETH_HLEN + 40,
        _ => false,
    }
}

/// What the datapath may track for a packet: the key of the flow it may start, if any.
/// Deliberately loose about routing (a flow the FIB refuses is simply not created), strict
/// about everything the packet itself decides.
fn may_start_flow(p: &[u8], from: Option<&Endpoint>, t: &Topology, published: bool) -> Option<(CtKey, u8)> {
    if p.len() < ETH_HLEN + 20 || u16::from_be_bytes([p[12], p[13]]) != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = &p[ETH_HLEN..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ihl < 20 || ip[8] <= 1 && from.is_some() {
        return None;
    }
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0 {
        return None;
    }
    let addr = |o: usize| u32::from_ne_bytes([ip[o], ip[o + 1], ip[o + 2], ip[o + 3]]);
    let (saddr, daddr, proto) = (addr(12), addr(16), ip[9]);
    let l4 = ip.get(ihl..)?;
    let word = |o: usize| u16::from_ne_bytes([l4[o], l4[o + 1]]);
    let (sport, dport) = match proto {
        IPPROTO_TCP if l4.len() >= 14 => (word(0), word(2)),
        IPPROTO_UDP if l4.len() >= 4 => (word(0), word(2)),
        IPPROTO_ICMP if l4.len() >= 8 && l4[0] == 8 => (word(4), 0),
        IPPROTO_ICMP if l4.len() >= 8 && l4[0] == 0 => (0, word(4)),
        _ => return None,
    };
    let key = CtKey { saddr, daddr, sport, dport, proto, _pad: [0; 3] };
    let to_service = published && daddr == be(UPLINK_IP) && dport == PUBLISHED.to_be() && proto != IPPROTO_ICMP;
    match from {
        Some(ep) => {
            // Its own gateway is the host's; another network's gateway is routed like any
            // address (on a real host it is local, on `lo`; this namespace has no such address).
            let gateway = if ep.network_id == super::WEB { t.web.gateway } else { t.db.gateway };
            let members = [t.a.ip, t.b.ip, t.c.ip, gateway];
            if p[6..12] != ep.mac || saddr != ep.ip || members.contains(&daddr) {
                return None;
            }
            if to_service {
                return Some((key, ct_kind::HAIRPIN));
            }
            (daddr != be(UPLINK_IP)).then_some((key, ct_kind::SNAT))
        }
        None => to_service.then_some((key, ct_kind::DNAT)),
    }
}

#[derive(Default, Debug)]
struct Tally {
    runs: u64,
    refused: u64,
    verdicts: [u64; 3],
    valid_in: u64,
    flows_allowed: u64,
    known_cut_off_drops: u64,
    flows_created: u64,
    refusal_predicted_but_ran: u64,
}

/// A TCP/UDP packet cut off inside its header, before the end of the checksum field (but
/// with the ports, which is all the datapath checks for).
fn l4_checksum_cut_off(p: &[u8]) -> bool {
    if p.len() < ETH_HLEN + 20 || u16::from_be_bytes([p[12], p[13]]) != ETHERTYPE_IPV4 {
        return false;
    }
    let l4 = ETH_HLEN + usize::from(p[ETH_HLEN] & 0x0f) * 4;
    match p[ETH_HLEN + 9] {
        IPPROTO_UDP => p.len() < l4 + 8,
        IPPROTO_TCP => p.len() < l4 + 18,
        _ => false,
    }
}

/// One phase: `packets` runs in batches, invariants checked per run and per batch.
#[allow(clippy::too_many_arguments)]
fn phase(
    fx: &mut Fixture,
    t: &Topology,
    t6: &Topology6,
    uplink_ifindex: u32,
    rng: &mut Rng,
    packets: usize,
    tracking: bool,
    published: bool,
    tally: &mut Tally,
) {
    const BATCH: usize = 20_000;
    let eps: [(u32, Option<Endpoint>); 4] = [
        (t.a.host_ifindex, Some(t.a)),
        (t.a.host_ifindex, Some(t.a)),
        (t.b.host_ifindex, Some(t.b)),
        (fx.peer_ifindex[0], None),
    ];
    let mut done = 0;
    while done < packets {
        let n = BATCH.min(packets - done);
        done += n;
        let mut runs = Vec::with_capacity(n);
        let mut allowed: HashSet<(CtKey, u8)> = HashSet::new();
        for _ in 0..n {
            if rng.chance(12) {
                // IPv6 from a dual-stack container (or from an interface that is none).
                let (ifindex, ep) = rng.pick(&eps);
                let sender = if ep.is_some_and(|ep| ep.ip == t.b.ip) { t6.b } else { t6.a };
                let valid = endpoint_packet6(rng, &sender);
                let p = mutate6(rng, valid);
                runs.push((program_names::FROM_ENDPOINT, ifindex, p));
            } else if rng.chance(55) {
                let (ifindex, ep) = rng.pick(&eps);
                let sender = ep.unwrap_or(t.a);
                let gw = if sender.network_id == super::WEB { t.web.gateway_mac } else { t.db.gateway_mac };
                let valid = endpoint_packet(rng, &sender, gw, t);
                let p = mutate(rng, valid);
                if let Some(k) = may_start_flow(&p, ep.as_ref(), t, published) {
                    allowed.insert(k);
                }
                runs.push((program_names::FROM_ENDPOINT, ifindex, p));
            } else {
                let valid = if rng.chance(10) { uplink_packet6(rng) } else { uplink_packet(rng) };
                let p = mutate(rng, valid);
                if let Some(k) = may_start_flow(&p, None, t, published) {
                    allowed.insert(k);
                }
                // Both uplink programs: the same code at tcx and at XDP.
                let program = if rng.chance(50) { program_names::FROM_UPLINK } else { program_names::FROM_UPLINK_XDP };
                runs.push((program, uplink_ifindex, p));
            }
        }
        let (drops_before, counters_before) = fx.totals();
        let inputs: Vec<(&'static str, Vec<u8>)> = runs.iter().map(|(p, _, d)| (*p, d.clone())).collect();
        let results = fx.run_batch(runs).unwrap();
        let (drops_after, counters_after) = fx.totals();
        let mut shot = 0u64;
        for ((program, input), result) in inputs.iter().zip(results) {
            tally.runs += 1;
            let out = match result {
                Ok(out) => out,
                Err(e) => {
                    assert!(
                        kernel_refuses(input),
                        "{program}: test run failed on a frame the kernel should run: {e}; frame {input:02x?}"
                    );
                    tally.refused += 1;
                    continue;
                }
            };
            if kernel_refuses(input) {
                tally.refusal_predicted_but_ran += 1;
            }
            let slot = match out.retval {
                TC_ACT_OK => 0,
                TC_ACT_SHOT => 1,
                TC_ACT_REDIRECT => 2,
                other => panic!("{program}: verdict {other} on {input:02x?}"),
            };
            tally.verdicts[slot] += 1;
            if out.retval == TC_ACT_SHOT {
                shot += 1;
                if l4_checksum_cut_off(input) {
                    // Known: tracked, half rewritten, then dropped as rewrite_failed
                    // (nat::truncated_l4_header_is_dropped_before_it_is_tracked).
                    tally.known_cut_off_drops += 1;
                } else {
                    assert_eq!(&out.packet_out, input, "{program}: a dropped packet was rewritten");
                }
            }
            if !tracking && out.retval == TC_ACT_OK {
                assert_eq!(
                    &out.packet_out, input,
                    "{program}: passed to the host rewritten, with nothing to translate by"
                );
            }
            if verify_ipv6_checksums(input).is_ok() && out.retval != TC_ACT_SHOT {
                tally.valid_in += 1;
                if let Err(e) = verify_ipv6_checksums(&out.packet_out) {
                    panic!(
                        "{program}: valid IPv6 in, {e} out (verdict {}):\n in {input:02x?}\nout {:02x?}",
                        out.retval, out.packet_out
                    );
                }
            }
            if verify_ipv4_checksums(input).is_ok() {
                tally.valid_in += 1;
                if let Err(e) = verify_ipv4_checksums(&out.packet_out) {
                    panic!(
                        "{program}: valid checksums in, {e} out (verdict {}):\n in {input:02x?}\nout {:02x?}",
                        out.retval, out.packet_out
                    );
                }
            }
        }
        let dropped: u64 = DropReason::ALL.iter().map(|r| drops_after[*r as usize] - drops_before[*r as usize]).sum();
        let ignored = counters_after[Counter::NdpIgnored as usize] - counters_before[Counter::NdpIgnored as usize];
        assert_eq!(
            shot,
            dropped + ignored,
            "SHOT verdicts vs drop counts and NDP ignored: {:?} -> {:?}",
            drops_before,
            drops_after
        );

        // Conntrack: only allowed flows, both directions, each counted once.
        let entries = fx.ct_entries();
        let new_flows: u64 = [Counter::SnatNewFlow, Counter::DnatNewFlow, Counter::HairpinNewFlow]
            .iter()
            .map(|c| counters_after[*c as usize] - counters_before[*c as usize])
            .sum();
        if !tracking {
            assert!(entries.is_empty(), "entries without an uplink: {entries:#?}");
            assert_eq!((new_flows, fx.ct_inserted()), (0, 0));
        }
        assert_eq!(entries.len() as u64, 2 * new_flows, "two entries per new flow");
        assert_eq!(fx.ct_inserted(), 2 * new_flows, "CT_FILL counts every entry");
        for (k, e) in entries.values() {
            let original = if e.direction == ct_direction::ORIGINAL { *k } else { e.to.reversed() };
            assert!(
                allowed.contains(&(original, e.kind)),
                "an entry no packet of this batch may create: {k:?} -> {e:?} (flow {original:?})"
            );
            // Each direction's `to`, reversed, is the other direction's key.
            assert!(fx.ct_get(&e.to.reversed()).is_some(), "entry {k:?} has no other direction");
        }
        tally.flows_allowed += allowed.len() as u64;
        tally.flows_created += new_flows;
        fx.clear_ct();
    }
}

#[test]
fn a_million_random_and_mutated_packets_through_both_programs() {
    if !is_root() {
        return;
    }
    let seed = std::env::var("BPFNET_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x005e_edb9_f0e7_u64);
    let total: usize = std::env::var("BPFNET_FUZZ_PACKETS").ok().and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    eprintln!("seed {seed:#x} (BPFNET_FUZZ_SEED), {total} packets (BPFNET_FUZZ_PACKETS)");
    let started = Instant::now();
    let (mut fx, t, uplink) = Fixture::with_uplink();
    let t6 = fx.topology6(&t);
    fx.try_seed6(&t6).unwrap();
    let mut rng = Rng(seed | 1);
    let cfg = HostConfig { nat_port_min: NAT_MIN, nat_port_max: NAT_MAX, ct_limit: 200_000, ..fx.host_config(&uplink) };

    // 1: no uplink, nothing published: nothing may be tracked.
    fx.set_config(&HostConfig::default());
    let mut tally = Tally::default();
    phase(&mut fx, &t, &t6, uplink.ifindex, &mut rng, total * 3 / 10, false, false, &mut tally);
    eprintln!("no uplink: {tally:?}, {:?}", started.elapsed());
    // 2: uplink, nothing published: container flows to the outside only.
    fx.set_config(&cfg);
    let mut tally = Tally::default();
    phase(&mut fx, &t, &t6, uplink.ifindex, &mut rng, total * 4 / 10, true, false, &mut tally);
    eprintln!("uplink: {tally:?}, {:?}", started.elapsed());
    // 3: and B's port published: flows to it from outside and hairpinned from containers too.
    publish_b(&mut fx);
    let mut tally = Tally::default();
    phase(&mut fx, &t, &t6, uplink.ifindex, &mut rng, total - total * 7 / 10, true, true, &mut tally);
    eprintln!("uplink and published port: {tally:?}, {:?}", started.elapsed());
    // The IPv6 packets reached each of IPv6's outcomes, not only its drops.
    let (drops, counters) = fx.totals();
    for counter in [Counter::NdpReplied, Counter::NdpToHost, Counter::NdpIgnored, Counter::Forwarded] {
        assert!(counters[counter as usize] > 0, "no packet was counted {}", counter.name());
    }
    for reason in [DropReason::NdpInvalid, DropReason::NdpUnknownTarget, DropReason::Ipv6ExtensionHeaders] {
        assert!(drops[reason as usize] > 0, "no packet was dropped {}", reason.name());
    }
}
