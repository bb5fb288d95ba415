//! A tiny packet builder for the datapath tests and `bpfnet-devkit program-cost`: Ethernet,
//! ARP, IPv4 (with options), IPv6 (with extension headers), UDP, TCP, ICMP echo and ICMPv6
//! neighbour discovery, with correct checksums, and a checker for those checksums. Crafting packets by hand keeps every byte visible to the test that asserts
//! on it; `bytes`' `BufMut` writes each field in network order.
// The tests use all of it, the program-cost command only a part.
#![cfg_attr(not(test), allow(dead_code))]
use std::net::{Ipv4Addr, Ipv6Addr};

use bytes::{BufMut, BytesMut};

pub const ETH_HLEN: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_VLAN: u16 = 0x8100;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const BROADCAST: [u8; 6] = [0xff; 6];

pub const ARP_REQUEST: u16 = 1;
pub const ARP_REPLY: u16 = 2;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// IPv6 next-header values of the extension headers (RFC 8200).
pub const IPV6_HOP_BY_HOP: u8 = 0;
pub const IPV6_ROUTING: u8 = 43;
pub const IPV6_FRAGMENT: u8 = 44;
pub const IPV6_DESTINATION_OPTIONS: u8 = 60;
pub const IPV6_HLEN: usize = 40;

/// ICMPv6 types of neighbour discovery (RFC 4861) and MLD (RFC 2710, 3810).
pub const MLD_REPORT: u8 = 131;
pub const ROUTER_SOLICITATION: u8 = 133;
pub const ROUTER_ADVERTISEMENT: u8 = 134;
pub const NEIGHBOR_SOLICITATION: u8 = 135;
pub const NEIGHBOR_ADVERTISEMENT: u8 = 136;
pub const MLD2_REPORT: u8 = 143;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
/// Neighbour advertisement flags.
pub const NA_ROUTER: u8 = 0x80;
pub const NA_SOLICITED: u8 = 0x40;
pub const NA_OVERRIDE: u8 = 0x20;

pub fn eth(dst: [u8; 6], src: [u8; 6], ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = BytesMut::with_capacity(ETH_HLEN + payload.len());
    frame.put_slice(&dst);
    frame.put_slice(&src);
    frame.put_u16(ether_type);
    frame.put_slice(payload);
    frame.to_vec()
}

/// An Ethernet/IPv4 ARP packet.
#[derive(Clone, Copy, Debug)]
pub struct Arp {
    pub htype: u16,
    pub ptype: u16,
    pub hlen: u8,
    pub plen: u8,
    pub oper: u16,
    pub sha: [u8; 6],
    pub spa: Ipv4Addr,
    pub tha: [u8; 6],
    pub tpa: Ipv4Addr,
}

impl Arp {
    pub fn request(sha: [u8; 6], spa: Ipv4Addr, tpa: Ipv4Addr) -> Self {
        Arp { oper: ARP_REQUEST, sha, spa, tha: [0; 6], tpa, ..Self::ETHERNET_IPV4 }
    }

    pub fn reply(sha: [u8; 6], spa: Ipv4Addr, tha: [u8; 6], tpa: Ipv4Addr) -> Self {
        Arp { oper: ARP_REPLY, sha, spa, tha, tpa, ..Self::ETHERNET_IPV4 }
    }

    const ETHERNET_IPV4: Arp = Arp {
        htype: 1,
        ptype: ETHERTYPE_IPV4,
        hlen: 6,
        plen: 4,
        oper: 0,
        sha: [0; 6],
        spa: Ipv4Addr::UNSPECIFIED,
        tha: [0; 6],
        tpa: Ipv4Addr::UNSPECIFIED,
    };

    pub fn bytes(&self) -> Vec<u8> {
        let mut b = BytesMut::with_capacity(28);
        b.put_u16(self.htype);
        b.put_u16(self.ptype);
        b.put_u8(self.hlen);
        b.put_u8(self.plen);
        b.put_u16(self.oper);
        b.put_slice(&self.sha);
        b.put_slice(&self.spa.octets());
        b.put_slice(&self.tha);
        b.put_slice(&self.tpa.octets());
        b.to_vec()
    }

    /// The ARP packet in an Ethernet frame, as a container sends it.
    pub fn frame(&self, dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
        eth(dst, src, ETHERTYPE_ARP, &self.bytes())
    }
}

/// An IPv4 header (options allowed) followed by `payload`, with a valid header checksum.
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
    ipv4_with(src, dst, protocol, options, payload, 64, 0x4000)
}

/// As [`ipv4`], with the TTL and the flags/fragment-offset word given.
pub fn ipv4_with(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    options: &[u8],
    payload: &[u8],
    ttl: u8,
    frag: u16,
) -> Vec<u8> {
    assert!(options.len().is_multiple_of(4) && options.len() <= 40, "IPv4 options are 0..=40 bytes in 4-byte words");
    let header_len = 20 + options.len();
    let total = u16::try_from(header_len + payload.len()).expect("IPv4 packet over 64 KiB");
    let mut p = BytesMut::with_capacity(total as usize);
    p.put_u8(0x40 | (header_len / 4) as u8);
    p.put_u8(0); // DSCP/ECN
    p.put_u16(total);
    p.put_u16(0x1234); // identification
    p.put_u16(frag); // flags, fragment offset
    p.put_u8(ttl);
    p.put_u8(protocol);
    p.put_u16(0); // checksum, filled in below
    p.put_slice(&src.octets());
    p.put_slice(&dst.octets());
    p.put_slice(options);
    let sum = checksum(&[&p[..header_len]]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.put_slice(payload);
    p.to_vec()
}

pub fn udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(8 + payload.len()).unwrap();
    let mut s = BytesMut::with_capacity(len as usize);
    s.put_u16(sport);
    s.put_u16(dport);
    s.put_u16(len);
    s.put_u16(0); // checksum, filled in below
    s.put_slice(payload);
    // RFC 768: a computed 0 is sent as all ones (0 means "no checksum").
    let sum = match l4_checksum(src, dst, IPPROTO_UDP, &s) {
        0 => 0xffff,
        sum => sum,
    };
    s[6..8].copy_from_slice(&sum.to_be_bytes());
    s.to_vec()
}

/// A TCP segment with a 20-byte header and the given flags (e.g. 0x02 for SYN).
pub fn tcp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut s = BytesMut::with_capacity(20 + payload.len());
    s.put_u16(sport);
    s.put_u16(dport);
    s.put_u32(0x0102_0304); // sequence number
    s.put_u32(0); // acknowledgment number
    s.put_u8(5 << 4); // data offset
    s.put_u8(flags);
    s.put_u16(64240); // window
    s.put_u32(0); // checksum (filled in below), urgent pointer
    s.put_slice(payload);
    let sum = l4_checksum(src, dst, IPPROTO_TCP, &s);
    s[16..18].copy_from_slice(&sum.to_be_bytes());
    s.to_vec()
}

pub fn icmp_echo_request(id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    icmp_message(8, 0, echo_word(id, seq), payload)
}

pub fn icmp_echo_reply(id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    icmp_message(0, 0, echo_word(id, seq), payload)
}

/// An echo's second header word: identifier and sequence number.
fn echo_word(id: u16, seq: u16) -> [u8; 4] {
    (u32::from(id) << 16 | u32::from(seq)).to_be_bytes()
}

pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PORT_UNREACH: u8 = 3;
pub const ICMP_FRAG_NEEDED: u8 = 4;

/// An ICMP error quoting `quoted` (an IPv4 packet, as much of it as the sender includes);
/// `rest` is the second word of the header (the next-hop MTU of "fragmentation needed").
pub fn icmp_error(icmp_type: u8, code: u8, rest: [u8; 4], quoted: &[u8]) -> Vec<u8> {
    icmp_message(icmp_type, code, rest, quoted)
}

fn icmp_message(icmp_type: u8, code: u8, rest: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut m = BytesMut::with_capacity(8 + payload.len());
    m.put_u8(icmp_type);
    m.put_u8(code);
    m.put_u16(0); // checksum, filled in below
    m.put_slice(&rest);
    m.put_slice(payload);
    let sum = checksum(&[&m]);
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    m.to_vec()
}

/// The Internet checksum (RFC 1071) over the concatenation of `parts`, each of which but the
/// last must have even length.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    for part in parts {
        for pair in part.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, len: usize) -> [u8; 12] {
    let mut ph = [0u8; 12];
    ph[..4].copy_from_slice(&src.octets());
    ph[4..8].copy_from_slice(&dst.octets());
    ph[9] = protocol;
    ph[10..12].copy_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
    ph
}

pub fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, segment: &[u8]) -> u16 {
    checksum(&[&pseudo_header(src, dst, protocol, segment.len()), segment])
}

/// Checks an Ethernet/IPv4 frame: header length and total length consistent with the frame,
/// header checksum valid, and the UDP/TCP/ICMP checksum valid (unless it is a fragment). Never
/// panics, whatever the frame.
pub fn verify_ipv4_checksums(frame: &[u8]) -> Result<(), String> {
    if frame.len() < ETH_HLEN {
        return Err(format!("{}-byte frame", frame.len()));
    }
    let ether_type = u16::from_be_bytes([frame[12], frame[13]]);
    if ether_type != ETHERTYPE_IPV4 {
        return Err(format!("ether type {ether_type:#06x} is not IPv4"));
    }
    verify_ipv4_packet(&frame[ETH_HLEN..])
}

/// The checks of [`verify_ipv4_checksums`] on an IPv4 packet (no Ethernet header).
pub fn verify_ipv4_packet(ip: &[u8]) -> Result<(), String> {
    if ip.len() < 20 {
        return Err(format!("{}-byte IPv4 packet", ip.len()));
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ip[0] >> 4 != 4 || ihl < 20 || total < ihl || total > ip.len() {
        return Err(format!(
            "inconsistent IPv4 header: version/ihl {:#04x}, total length {total}, {} bytes",
            ip[0],
            ip.len()
        ));
    }
    if checksum(&[&ip[..ihl]]) != 0 {
        return Err("IPv4 header checksum is wrong".into());
    }
    // A fragment (more fragments follow, or an offset): its datagram's L4 checksum covers all
    // fragments, so one alone has only its header checksum to check.
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
        return Ok(());
    }
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let l4 = &ip[ihl..total];
    let min = match ip[9] {
        IPPROTO_UDP => 8,
        IPPROTO_TCP => 20,
        IPPROTO_ICMP => 4,
        other => return Err(format!("no checksum check for IP protocol {other}")),
    };
    if l4.len() < min {
        return Err(format!("{}-byte protocol {} header", l4.len(), ip[9]));
    }
    let valid = match ip[9] {
        IPPROTO_UDP if u16::from_be_bytes([l4[6], l4[7]]) == 0 => true,
        IPPROTO_UDP | IPPROTO_TCP => l4_checksum(src, dst, ip[9], l4) == 0,
        _ => checksum(&[l4]) == 0,
    };
    if valid {
        Ok(())
    } else {
        Err(format!("IP protocol {} checksum is wrong", ip[9]))
    }
}

/// An IPv6 header followed by `payload` (which starts with the header `next_header` names).
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, hop_limit: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = BytesMut::with_capacity(IPV6_HLEN + payload.len());
    p.put_u32(6 << 28);
    p.put_u16(u16::try_from(payload.len()).unwrap());
    p.put_u8(next_header);
    p.put_u8(hop_limit);
    p.put_slice(&src.octets());
    p.put_slice(&dst.octets());
    p.put_slice(payload);
    p.to_vec()
}

/// A hop-by-hop or destination options header of `units` 8-byte units in all (at least 1),
/// padded with PadN, followed by `next_header`'s header.
pub fn options_header(next_header: u8, units: u8) -> Vec<u8> {
    assert!(units >= 1);
    let len = usize::from(units) * 8;
    let mut h = vec![next_header, units - 1];
    // One PadN option fills the rest (RFC 8200 section 4.2).
    h.push(1);
    h.push(u8::try_from(len - 4).unwrap());
    h.resize(len, 0);
    h
}

/// A fragment header: offset in 8-byte units, M flag, identification.
pub fn fragment_header(next_header: u8, offset: u16, more: bool, id: u32) -> Vec<u8> {
    let mut h = vec![next_header, 0];
    h.extend((offset << 3 | u16::from(more)).to_be_bytes());
    h.extend(id.to_be_bytes());
    h
}

/// The IPv6 pseudo-header of an upper-layer checksum (RFC 8200 section 8.1).
fn pseudo_header6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, len: usize) -> [u8; 40] {
    let mut ph = [0u8; 40];
    ph[..16].copy_from_slice(&src.octets());
    ph[16..32].copy_from_slice(&dst.octets());
    ph[32..36].copy_from_slice(&u32::try_from(len).unwrap().to_be_bytes());
    ph[39] = next_header;
    ph
}

pub fn l4_checksum6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, segment: &[u8]) -> u16 {
    checksum(&[&pseudo_header6(src, dst, next_header, segment.len()), segment])
}

/// An ICMPv6 message (type, code, then `body`) with its checksum over the pseudo-header.
pub fn icmpv6(src: Ipv6Addr, dst: Ipv6Addr, icmp_type: u8, code: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![icmp_type, code, 0, 0];
    m.extend_from_slice(body);
    let sum = l4_checksum6(src, dst, IPPROTO_ICMPV6, &m);
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    m
}

/// A UDP datagram over IPv6 (the checksum is mandatory there).
pub fn udp6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut d = BytesMut::with_capacity(len);
    d.put_u16(sport);
    d.put_u16(dport);
    d.put_u16(u16::try_from(len).unwrap());
    d.put_u16(0);
    d.put_slice(payload);
    let mut d = d.to_vec();
    let sum = l4_checksum6(src, dst, IPPROTO_UDP, &d);
    d[6..8].copy_from_slice(&sum.to_be_bytes());
    d
}

/// Neighbour discovery's link-layer address option: 1 source, 2 target.
pub fn link_layer_option(option_type: u8, mac: [u8; 6]) -> Vec<u8> {
    let mut o = vec![option_type, 1];
    o.extend(mac);
    o
}

/// A neighbour solicitation (an IPv6 packet, hop limit 255) for `target`, with the source
/// link-layer address option when `slla` is given.
pub fn neighbor_solicitation(src: Ipv6Addr, dst: Ipv6Addr, target: Ipv6Addr, slla: Option<[u8; 6]>) -> Vec<u8> {
    let mut body = vec![0u8; 4];
    body.extend(target.octets());
    if let Some(mac) = slla {
        body.extend(link_layer_option(1, mac));
    }
    ipv6(src, dst, IPPROTO_ICMPV6, 255, &icmpv6(src, dst, NEIGHBOR_SOLICITATION, 0, &body))
}

/// A neighbour advertisement (an IPv6 packet, hop limit 255) for `target`, with `flags` and
/// the target link-layer address option when `tlla` is given.
pub fn neighbor_advertisement(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    target: Ipv6Addr,
    flags: u8,
    tlla: Option<[u8; 6]>,
) -> Vec<u8> {
    let mut body = vec![flags, 0, 0, 0];
    body.extend(target.octets());
    if let Some(mac) = tlla {
        body.extend(link_layer_option(2, mac));
    }
    ipv6(src, dst, IPPROTO_ICMPV6, 255, &icmpv6(src, dst, NEIGHBOR_ADVERTISEMENT, 0, &body))
}

/// The solicited-node multicast address of `addr` (RFC 4291 section 2.7.1).
pub fn solicited_node(addr: Ipv6Addr) -> Ipv6Addr {
    let o = addr.octets();
    Ipv6Addr::from([0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, o[13], o[14], o[15]])
}

/// The Ethernet address of an IPv6 multicast address (RFC 2464 section 7).
pub fn multicast_mac(addr: Ipv6Addr) -> [u8; 6] {
    let o = addr.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// The link-local address of an interface with this MAC (modified EUI-64, RFC 4291 appendix A).
pub fn link_local(mac: [u8; 6]) -> Ipv6Addr {
    Ipv6Addr::from([0xfe, 0x80, 0, 0, 0, 0, 0, 0, mac[0] ^ 2, mac[1], mac[2], 0xff, 0xfe, mac[3], mac[4], mac[5]])
}

/// Checks an Ethernet/IPv6 frame: the payload length matches the frame and, for an ICMPv6
/// or UDP packet without extension headers, the checksum is valid. Never panics.
pub fn verify_ipv6_checksums(frame: &[u8]) -> Result<(), String> {
    if frame.len() < ETH_HLEN + IPV6_HLEN {
        return Err(format!("{}-byte frame", frame.len()));
    }
    let ip = &frame[ETH_HLEN..];
    let payload_len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    if ip[0] >> 4 != 6 || IPV6_HLEN + payload_len != ip.len() {
        return Err(format!("inconsistent IPv6 header: payload length {payload_len}, {} bytes", ip.len()));
    }
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).unwrap());
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).unwrap());
    if matches!(ip[6], IPPROTO_ICMPV6 | IPPROTO_UDP) && l4_checksum6(src, dst, ip[6], &ip[IPV6_HLEN..]) != 0 {
        return Err(format!("the {} checksum is wrong", if ip[6] == IPPROTO_UDP { "UDP" } else { "ICMPv6" }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_matches_a_known_ipv4_header() {
        // The usual worked example (Wikipedia, "IPv4 header checksum"): 0xb861.
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8,
            0x00, 0xc7,
        ];
        assert_eq!(checksum(&[&header]), 0xb861);
        let built = ipv4(Ipv4Addr::new(192, 168, 0, 1), Ipv4Addr::new(192, 168, 0, 199), IPPROTO_UDP, &[], &[0; 95]);
        assert_eq!(&built[..4], &header[..4]);
        assert_eq!(checksum(&[&built[..20]]), 0);
    }

    #[test]
    fn built_packets_verify_and_corruption_is_caught() {
        let (a, b) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
        let l4s = [
            (IPPROTO_UDP, udp(a, b, 1000, 53, b"hello")),
            (IPPROTO_TCP, tcp(a, b, 40000, 80, 0x02, b"odd")),
            (IPPROTO_ICMP, icmp_echo_request(7, 1, b"ping")),
        ];
        for (proto, l4) in l4s {
            for options in [&[][..], &[1, 1, 1, 0][..]] {
                let frame = eth([2; 6], [4; 6], ETHERTYPE_IPV4, &ipv4(a, b, proto, options, &l4));
                verify_ipv4_checksums(&frame).unwrap();
                let mut bad = frame.clone();
                *bad.last_mut().unwrap() ^= 0x40;
                assert!(verify_ipv4_checksums(&bad).is_err(), "protocol {proto}");
                let mut bad = frame;
                bad[ETH_HLEN + 8] -= 1; // TTL
                assert!(verify_ipv4_checksums(&bad).is_err(), "protocol {proto}");
            }
        }
    }

    #[test]
    fn ipv6_addresses_and_checksums_are_built_as_the_rfcs_say() {
        let mac = [0x00, 0x11, 0x22, 0x33, 0x44, 0x55];
        // RFC 4291 appendix A: the universal/local bit flipped, ff:fe in the middle.
        assert_eq!(link_local(mac), "fe80::211:22ff:fe33:4455".parse::<Ipv6Addr>().unwrap());
        let addr: Ipv6Addr = "2001:db8::1:abcd:ef12".parse().unwrap();
        assert_eq!(solicited_node(addr), "ff02::1:ffcd:ef12".parse::<Ipv6Addr>().unwrap());
        assert_eq!(multicast_mac(solicited_node(addr)), [0x33, 0x33, 0xff, 0xcd, 0xef, 0x12]);
        let (a, b): (Ipv6Addr, Ipv6Addr) = ("2001:db8::1".parse().unwrap(), "2001:db8::2".parse().unwrap());
        let frames = [
            eth([2; 6], mac, ETHERTYPE_IPV6, &ipv6(a, b, IPPROTO_UDP, 64, &udp6(a, b, 1000, 53, b"odd"))),
            eth([2; 6], mac, ETHERTYPE_IPV6, &neighbor_solicitation(a, solicited_node(b), b, Some(mac))),
        ];
        for frame in frames {
            verify_ipv6_checksums(&frame).unwrap();
            let mut bad = frame.clone();
            *bad.last_mut().unwrap() ^= 0x40;
            assert!(verify_ipv6_checksums(&bad).is_err());
            let mut bad = frame;
            bad[ETH_HLEN + 39] ^= 1; // the destination address, in the pseudo-header
            assert!(verify_ipv6_checksums(&bad).is_err());
        }
    }
}
