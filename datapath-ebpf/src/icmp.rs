//! ICMP errors (destination unreachable, including fragmentation needed, and time exceeded)
//! about a translated flow, in either direction: they quote the packet as their sender got it,
//! translated, so the quote and the outer header are translated back (see [`translate`]).
use datapath_common::{
    Counter, CtKey, CtKey6, DropReason, Ipv6Be, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
};
use network_types::{
    icmp::Icmpv4Hdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    udp::UdpHdr,
};

use crate::{
    conntrack::{self, ICMPV6_ECHO_REQUEST, ICMP_ECHO_REQUEST},
    counters::count,
    csum::{self, Address, Delta, L4Offsets, Rewrite},
    fib,
    forward::deliver_to_ifindex,
    ipv6::{self, Ipv6, IP6_OFF},
    nat::to_host,
    packet::{
        ipv4_header_len, ptr_at, Ipv4, Packet, IPV4_CSUM_OFF, IPV4_DADDR_OFF, IPV4_SADDR_OFF, IPV6_DADDR_OFF,
        IPV6_SADDR_OFF, IP_OFF,
    },
};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;

/// Whether the ICMP message at the packet's L4 offset is an error this module translates.
#[inline(always)]
pub fn is_error<P: Packet>(ctx: &P, ip: &Ipv4) -> bool {
    if ip.proto != IPPROTO_ICMP || ip.later_fragment {
        return false;
    }
    // The whole header is bounds-checked: a one-byte check can be compiled into a form the
    // verifier reads as an empty range.
    match ptr_at::<P, Icmpv4Hdr>(ctx, ip.l4_off) {
        // SAFETY: bounds-checked by `ptr_at`.
        Ok(header) => matches!(unsafe { (*header).type_ }, ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED),
        Err(_) => false,
    }
}

/// The quoted packet: header fields and offsets.
struct Quoted {
    ip_off: usize,
    l4_off: usize,
    proto: u8,
    /// Where the quoted protocol's ports and checksum lie.
    l4: L4Offsets,
    saddr: u32,
    daddr: u32,
    ip_csum: u16,
    /// Source port, or the ICMP echo identifier.
    sport: u16,
    dport: u16,
}

#[inline(always)]
fn quoted<P: Packet>(ctx: &P, ip: &Ipv4) -> Result<Quoted, DropReason> {
    let ip_off = ip.l4_off + Icmpv4Hdr::LEN;
    let hdr: *const Ipv4Hdr = ptr_at(ctx, ip_off)?;
    // SAFETY: bounds-checked by `ptr_at`.
    let hdr = unsafe { &*hdr };
    let l4_off = ip_off + ipv4_header_len(hdr)?;
    let proto = hdr.proto;
    let l4_offsets = L4Offsets::of(proto)?;
    // RFC 792: at least the first 8 bytes of the quoted L4 header are included: all of UDP's
    // and ICMP's header, the start of TCP's (whose ports lie where UDP's do).
    let (sport, dport) = match proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            let ports: *const UdpHdr = ptr_at(ctx, l4_off)?;
            // SAFETY: bounds-checked by `ptr_at`.
            let ports = unsafe { &*ports };
            (u16::from_ne_bytes(ports.src), u16::from_ne_bytes(ports.dst))
        }
        IPPROTO_ICMP => {
            let icmp: *const Icmpv4Hdr = ptr_at(ctx, l4_off)?;
            // SAFETY: bounds-checked by `ptr_at`.
            let icmp = unsafe { &*icmp };
            if icmp.type_ != ICMP_ECHO_REQUEST {
                return Err(DropReason::UnsupportedL4);
            }
            (conntrack::echo_id(icmp), 0)
        }
        _ => return Err(DropReason::UnsupportedL4),
    };
    Ok(Quoted {
        ip_off,
        l4_off,
        proto,
        l4: l4_offsets,
        saddr: u32::from_ne_bytes(hdr.src_addr),
        daddr: u32::from_ne_bytes(hdr.dst_addr),
        ip_csum: u16::from_ne_bytes(hdr.check),
        sport,
        dport,
    })
}

// A quoted TCP header may be cut after its first 8 bytes: its ports are read through UDP's
// header, which has them at the same offsets.
const _: () = assert!(L4Offsets::TCP.sport == L4Offsets::UDP.sport && L4Offsets::TCP.dport == L4Offsets::UDP.dport);

/// Where an error came from, which decides what it may be about.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The outside world, through the uplink: from the quoted packet's destination or from a
    /// router on its way; about a flow into a container.
    Uplink,
    /// A container: only about a packet it received itself (containers route nothing).
    Container,
}

/// Translates an ICMP error that arrived on the uplink about a tracked flow, and delivers it
/// into the container it is for; errors about no known flow are the host's.
#[inline(always)]
pub fn error_to_container<P: Packet>(ctx: &P, ip: &Ipv4) -> Result<i32, DropReason> {
    Ok(match translate(ctx, ip, Origin::Uplink)? {
        Some(action) => action,
        None => to_host::<P>(),
    })
}

/// Translates an ICMP error about a tracked flow, whichever side sent it (the outside world
/// about a container's flow, or a container about a flow to its published port), and sends
/// it on as the flow's packets go. `None`: not about a flow bpfnet tracks.
///
/// The error quotes the packet as its sender received it, i.e. translated; its reversal is the
/// key of the flow's direction the error travels in, whose entry says what that direction's
/// packets become (`to`). So the quote becomes `to` reversed (the packet as the error's
/// receiver sent it), the outer destination `to`'s destination, and the outer source, when
/// the error comes from the quoted destination itself (not from a router on the way), `to`'s
/// source: every checksum (outer IP, ICMP, quoted IP, quoted L4) is kept right, as iptables'
/// RELATED does.
#[inline(always)]
pub fn translate<P: Packet>(ctx: &P, ip: &Ipv4, origin: Origin) -> Result<Option<i32>, DropReason> {
    let Ok(q) = quoted(ctx, ip) else {
        return Ok(None);
    };
    let key = CtKey { saddr: q.saddr, daddr: q.daddr, sport: q.sport, dport: q.dport, proto: q.proto, _pad: [0; 3] }
        .reversed();
    // The error goes back to whoever sent the quoted packet.
    if ip.daddr != q.saddr || (origin == Origin::Container && ip.saddr != q.daddr) {
        return Ok(None);
    }
    let Some(found) = conntrack::lookup(&key) else {
        return Ok(None);
    };
    // SAFETY: a live map value, copied out.
    let entry = unsafe { *found.entry };
    // What comes in on the uplink is only ever for a container.
    if origin == Origin::Uplink && entry.ifindex == 0 {
        return Ok(None);
    }
    let quote = entry.to.reversed();
    let outer_saddr = if ip.saddr == q.daddr { entry.to.saddr } else { ip.saddr };
    let mut rewrite = Rewrite::new(ip.l4_off, L4Offsets::ICMP);

    // Outer addresses: only the IP checksum covers them (ICMP has no pseudo-header).
    rewrite.addr(ctx, IP_OFF + IPV4_SADDR_OFF, ip.saddr, outer_saddr)?;
    rewrite.addr(ctx, IP_OFF + IPV4_DADDR_OFF, ip.daddr, entry.to.daddr)?;
    // Quoted addresses, and the quoted IP checksum that covers them.
    rewrite.l4_u32(ctx, q.ip_off + IPV4_SADDR_OFF, q.saddr, quote.saddr)?;
    rewrite.l4_u32(ctx, q.ip_off + IPV4_DADDR_OFF, q.daddr, quote.daddr)?;
    let quoted_ip_csum = csum::update32(csum::update32(q.ip_csum, q.saddr, quote.saddr), q.daddr, quote.daddr);
    rewrite.l4_u16(ctx, q.ip_off + IPV4_CSUM_OFF, q.ip_csum, quoted_ip_csum)?;
    // Quoted ports (an echo's identifier is its source port; its destination slot stays 0),
    // and the quoted L4 checksum when it was quoted.
    rewrite.l4_u16(ctx, q.l4_off + q.l4.sport, q.sport, quote.sport)?;
    if q.proto != IPPROTO_ICMP {
        rewrite.l4_u16(ctx, q.l4_off + q.l4.dport, q.dport, quote.dport)?;
    }
    fix_quoted_l4_csum(ctx, &q, &quote, &mut rewrite)?;
    if ip.ttl > 1 {
        rewrite.decrement_ttl(ctx, ip)?;
    }
    rewrite.commit(ctx)?;

    count(Counter::IcmpErrorTranslated);
    if entry.ifindex != 0 {
        return deliver_to_ifindex(ctx, entry.ifindex).map(Some);
    }
    let outer = CtKey { saddr: outer_saddr, daddr: entry.to.daddr, proto: IPPROTO_ICMP, ..Default::default() };
    Ok(Some(match fib::lookup(ctx, &outer) {
        Some(hop) => fib::send(ctx, &hop)?,
        None => P::PASS,
    }))
}

/// The quoted TCP/UDP checksum covers the pseudo-header (the addresses) and the ports; the
/// quoted ICMP echo checksum covers the identifier. Fixed when present in the quote (UDP's and
/// ICMP's are in the 8 bytes every error carries; TCP's only when more was quoted).
#[inline(always)]
fn fix_quoted_l4_csum<P: Packet>(ctx: &P, q: &Quoted, quote: &CtKey, rewrite: &mut Rewrite) -> Result<(), DropReason> {
    let csum_off = q.l4_off + q.l4.csum;
    let Ok(field) = ptr_at::<P, [u8; 2]>(ctx, csum_off) else {
        return Ok(());
    };
    // SAFETY: bounds-checked by `ptr_at`.
    let old = u16::from_ne_bytes(unsafe { *field });
    if q.proto == IPPROTO_UDP && old == 0 {
        return Ok(()); // UDP sent without a checksum
    }
    let mut new = csum::update16(old, q.sport, quote.sport);
    if q.proto != IPPROTO_ICMP {
        new = csum::update16(new, q.dport, quote.dport);
        new = csum::update32(new, q.saddr, quote.saddr);
        new = csum::update32(new, q.daddr, quote.daddr);
    }
    // A UDP checksum that computes to 0 is sent as 0xffff: 0 means "no checksum".
    if q.proto == IPPROTO_UDP && new == 0 {
        new = 0xffff;
    }
    rewrite.l4_u16(ctx, csum_off, old, new)
}

const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
const ICMPV6_TIME_EXCEEDED: u8 = 3;
/// The ICMPv6 error header: type, code, checksum, and a word (Packet Too Big's MTU, left as
/// it is: path MTU discovery depends on it).
const ICMPV6_ERROR_LEN: usize = 8;

/// Whether the ICMPv6 message at the packet's L4 offset is an error this module translates
/// (destination unreachable, packet too big, time exceeded).
#[inline(always)]
pub fn is_error6<P: Packet>(ctx: &P, ip: &Ipv6) -> bool {
    if ip.next_header != IPPROTO_ICMPV6 || ip.later_fragment {
        return false;
    }
    match ptr_at::<P, Icmpv4Hdr>(ctx, ip.l4_off) {
        // SAFETY: bounds-checked by `ptr_at` (ICMPv6's header starts as ICMP's).
        Ok(header) => {
            matches!(unsafe { (*header).type_ }, ICMPV6_DEST_UNREACH | ICMPV6_PACKET_TOO_BIG | ICMPV6_TIME_EXCEEDED)
        }
        Err(_) => false,
    }
}

/// An ICMPv6 error on the uplink about a translated flow, translated back and delivered into
/// its container, as [`translate`] does for IPv4: the outer destination (and the source, when
/// the error comes from the quoted destination itself) and the quoted packet's source address
/// and port become the container's, the quoted L4 checksum and the ICMPv6 checksum (over the
/// pseudo-header and the whole message) follow. Errors about no known flow are the host's.
/// The quoted packet must have no extension headers.
///
/// It runs in a program of its own (`icmp6_err_up`, a tail call of `from_uplink6`): its locals
/// and those of the translation of flows do not fit one 512-byte stack together. Within that
/// program it is a function of its own too (a BPF-to-BPF call, with a frame of its own): with
/// the parsing of the outer header beside it, one frame is still too large.
#[inline(never)]
pub fn error6_to_container<P: Packet>(ctx: &P, ip: &Ipv6) -> Result<i32, DropReason> {
    let q_off = ip.l4_off + ICMPV6_ERROR_LEN;
    let Ok(hdr) = ptr_at::<P, Ipv6Hdr>(ctx, q_off) else {
        return Ok(to_host::<P>());
    };
    // SAFETY: bounds-checked by `ptr_at`.
    let (saddr, daddr, proto) =
        unsafe { (ipv6::address(&(*hdr).src_addr), ipv6::address(&(*hdr).dst_addr), (*hdr).next_hdr) };
    let q_l4 = q_off + Ipv6Hdr::LEN;
    let Ok(l4) = L4Offsets::of(proto) else {
        return Ok(to_host::<P>());
    };
    let Ok(ports) = ptr_at::<P, [u16; 2]>(ctx, q_l4) else {
        return Ok(to_host::<P>());
    };
    // SAFETY: bounds-checked by `ptr_at`; packet fields need not be aligned.
    let [first, second] = unsafe { ports.read_unaligned() };
    // TCP's and UDP's ports; a quoted echo request's identifier is its source port.
    let (sport, dport) = match proto {
        IPPROTO_TCP | IPPROTO_UDP => (first, second),
        IPPROTO_ICMPV6 => {
            let icmp: *const Icmpv4Hdr = ptr_at(ctx, q_l4)?;
            // SAFETY: bounds-checked by `ptr_at`.
            let icmp = unsafe { &*icmp };
            if icmp.type_ != ICMPV6_ECHO_REQUEST {
                return Ok(to_host::<P>());
            }
            (conntrack::echo_id(icmp), 0)
        }
        _ => return Ok(to_host::<P>()),
    };
    // The error goes back to whoever sent the quoted packet.
    if ip.daddr != saddr {
        return Ok(to_host::<P>());
    }
    let key = CtKey6 { saddr: daddr, daddr: saddr, sport: dport, dport: sport, proto, _pad: [0; 3] };
    let Some(found) = conntrack::lookup(&key) else {
        return Ok(to_host::<P>());
    };
    // SAFETY: a live map value, read in place rather than copied: the stack is short here.
    let (to, ifindex) = unsafe { (&(*found.entry).to, (*found.entry).ifindex) };
    if ifindex == 0 {
        return Ok(to_host::<P>());
    }
    // The quote as the container sent it: `to` reversed.
    let outer_saddr = if ip.saddr == daddr { to.saddr } else { ip.saddr };
    let mut rewrite = Rewrite::new6(ip.l4_off, L4Offsets::ICMPV6);
    rewrite.addr(ctx, IP6_OFF + IPV6_SADDR_OFF, ip.saddr, outer_saddr)?;
    rewrite.addr(ctx, IP6_OFF + IPV6_DADDR_OFF, ip.daddr, to.daddr)?;
    rewrite.l4_addr(ctx, q_off + IPV6_SADDR_OFF, saddr, to.daddr)?;
    rewrite.l4_addr(ctx, q_off + IPV6_DADDR_OFF, daddr, to.saddr)?;
    rewrite.l4_u16(ctx, q_l4 + l4.sport, sport, to.dport)?;
    if proto != IPPROTO_ICMPV6 {
        rewrite.l4_u16(ctx, q_l4 + l4.dport, dport, to.sport)?;
    }
    // The quoted L4 checksum covers the quoted pseudo-header (all three protocols over IPv6)
    // and the ports; fixed when it was quoted.
    if let Ok(field) = ptr_at::<P, [u8; 2]>(ctx, q_l4 + l4.csum) {
        // SAFETY: bounds-checked by `ptr_at`.
        let old = u16::from_ne_bytes(unsafe { *field });
        let mut delta = Delta::default();
        <Ipv6Be as Address>::add_change(&mut delta, saddr, to.daddr);
        <Ipv6Be as Address>::add_change(&mut delta, daddr, to.saddr);
        delta.u16(sport, to.dport);
        if proto != IPPROTO_ICMPV6 {
            delta.u16(dport, to.sport);
        }
        let mut new = delta.apply(old);
        // A UDP checksum that computes to 0 is sent as 0xffff: 0 means "no checksum".
        if proto == IPPROTO_UDP && new == 0 {
            new = 0xffff;
        }
        rewrite.l4_u16(ctx, q_l4 + l4.csum, old, new)?;
    }
    if ip.hop_limit > 1 {
        rewrite.decrement_hop_limit(ctx, ip.hop_limit)?;
    }
    rewrite.commit(ctx)?;
    count(Counter::IcmpErrorTranslated);
    deliver_to_ifindex(ctx, ifindex)
}
