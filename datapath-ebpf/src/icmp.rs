//! ICMP errors (destination unreachable, including fragmentation needed, and time exceeded)
//! about a translated flow: they quote the packet as it left, with the uplink's address and
//! port, so both the outer destination and the quoted source are translated back, with every
//! checksum (outer IP, ICMP, quoted IP, quoted L4) kept right, as iptables' RELATED does.
use datapath_common::{Counter, CtKey, DropReason, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    conntrack::{self, ICMP_ECHO_REQUEST},
    counters::count,
    csum::{self, L4Csum},
    forward::deliver_to_ifindex,
    nat::to_host,
    packet::{ptr_at, Ipv4, Packet, IP_DADDR_OFF},
};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
/// The ICMP header before the quoted packet.
const ICMP_HEADER_LEN: usize = 8;

/// Whether the ICMP message at the packet's L4 offset is an error this module translates.
#[inline(always)]
pub fn is_error<P: Packet>(ctx: &P, ip: &Ipv4) -> bool {
    if ip.proto != IPPROTO_ICMP || ip.later_fragment {
        return false;
    }
    // The whole header is bounds-checked: a one-byte check can be compiled into a form the
    // verifier reads as an empty range.
    match ptr_at::<P, [u8; ICMP_HEADER_LEN]>(ctx, ip.l4_off) {
        // SAFETY: bounds-checked by `ptr_at`.
        Ok(header) => matches!(unsafe { (*header)[0] }, ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED),
        Err(_) => false,
    }
}

/// The quoted packet: header fields and offsets.
struct Quoted {
    ip_off: usize,
    l4_off: usize,
    proto: u8,
    saddr: u32,
    daddr: u32,
    ip_csum: u16,
    /// Source port, or the ICMP echo identifier.
    sport: u16,
    dport: u16,
}

#[inline(always)]
fn quoted<P: Packet>(ctx: &P, ip: &Ipv4) -> Result<Quoted, DropReason> {
    let ip_off = ip.l4_off + ICMP_HEADER_LEN;
    let hdr: *const [u8; 20] = ptr_at(ctx, ip_off)?;
    // SAFETY: bounds-checked by `ptr_at`.
    let hdr = unsafe { &*hdr };
    let ihl = (hdr[0] & 0x0f) as usize;
    if hdr[0] >> 4 != 4 || ihl < 5 {
        return Err(DropReason::Malformed);
    }
    let l4_off = ip_off + ihl * 4;
    // RFC 792: at least the first 8 bytes of the quoted L4 header are included.
    let l4: *const [u8; 8] = ptr_at(ctx, l4_off)?;
    // SAFETY: bounds-checked by `ptr_at`.
    let l4 = unsafe { &*l4 };
    let proto = hdr[9];
    let (sport, dport) = match proto {
        IPPROTO_TCP | IPPROTO_UDP => (u16::from_ne_bytes([l4[0], l4[1]]), u16::from_ne_bytes([l4[2], l4[3]])),
        IPPROTO_ICMP if l4[0] == ICMP_ECHO_REQUEST => (u16::from_ne_bytes([l4[4], l4[5]]), 0),
        _ => return Err(DropReason::UnsupportedL4),
    };
    Ok(Quoted {
        ip_off,
        l4_off,
        proto,
        saddr: u32::from_ne_bytes([hdr[12], hdr[13], hdr[14], hdr[15]]),
        daddr: u32::from_ne_bytes([hdr[16], hdr[17], hdr[18], hdr[19]]),
        ip_csum: u16::from_ne_bytes([hdr[10], hdr[11]]),
        sport,
        dport,
    })
}

/// Translates an ICMP error that arrived on the uplink about a flow a container started, and
/// delivers it to that container; errors about no known flow are the host's.
#[inline(always)]
pub fn error_to_container<P: Packet>(ctx: &P, ip: &Ipv4) -> Result<i32, DropReason> {
    let Ok(q) = quoted(ctx, ip) else {
        return Ok(to_host::<P>());
    };
    // The quoted packet went out as translated; its reversal is the key of the flow's other
    // direction.
    let key = CtKey { saddr: q.saddr, daddr: q.daddr, sport: q.sport, dport: q.dport, proto: q.proto, _pad: [0; 3] }.reversed();
    let Some(entry) = conntrack::lookup(&key) else {
        return Ok(to_host::<P>());
    };
    // SAFETY: a live map value, copied out.
    let back = unsafe { *entry };
    // The quoted packet becomes the one the container sent: `back.to` reversed. Handled when
    // only its source changes (the flows containers start); the error goes to the container.
    let quoted_destination_kept = back.to.saddr == q.daddr && back.to.sport == q.dport;
    if back.ifindex == 0 || !quoted_destination_kept || ip.daddr != q.saddr {
        return Ok(to_host::<P>());
    }
    let (container_addr, container_port) = (back.to.daddr, back.to.dport);
    let icmp = L4Csum::of(IPPROTO_ICMP, ip.l4_off)?;

    // Outer destination: only the IP checksum covers it (ICMP has no pseudo-header).
    csum::set_addr(ctx, IP_DADDR_OFF, ip.daddr, container_addr, &icmp)?;
    // Quoted source address, and the quoted IP checksum that covers it.
    csum::set_l4_u32(ctx, q.ip_off + 12, q.saddr, container_addr, &icmp)?;
    let quoted_ip_csum = csum::update32(q.ip_csum, q.saddr, container_addr);
    csum::set_l4_u16(ctx, q.ip_off + 10, q.ip_csum, quoted_ip_csum, &icmp)?;
    // Quoted source port (or echo identifier), and the quoted L4 checksum when it was quoted.
    let port_off = if q.proto == IPPROTO_ICMP { q.l4_off + 4 } else { q.l4_off };
    csum::set_l4_u16(ctx, port_off, q.sport, container_port, &icmp)?;
    fix_quoted_l4_csum(ctx, &q, container_addr, container_port, &icmp)?;

    if ip.ttl > 1 {
        csum::decrement_ttl(ctx, ip)?;
    }
    count(Counter::IcmpErrorTranslated);
    deliver_to_ifindex(ctx, back.ifindex)
}

/// The quoted TCP/UDP checksum covers the pseudo-header (the address) and the port; the quoted
/// ICMP echo checksum covers the identifier. Fixed when present in the quote (UDP's and
/// ICMP's are in the 8 bytes every error carries; TCP's only when more was quoted).
#[inline(always)]
fn fix_quoted_l4_csum<P: Packet>(ctx: &P, q: &Quoted, addr: u32, port: u16, icmp: &L4Csum) -> Result<(), DropReason> {
    let csum_off = match q.proto {
        IPPROTO_TCP => q.l4_off + 16,
        IPPROTO_UDP => q.l4_off + 6,
        _ => q.l4_off + 2,
    };
    let Ok(field) = ptr_at::<P, [u8; 2]>(ctx, csum_off) else {
        return Ok(());
    };
    // SAFETY: bounds-checked by `ptr_at`.
    let old = u16::from_ne_bytes(unsafe { *field });
    if q.proto == IPPROTO_UDP && old == 0 {
        return Ok(()); // UDP sent without a checksum
    }
    let mut new = csum::update16(old, q.sport, port);
    if q.proto != IPPROTO_ICMP {
        new = csum::update32(new, q.saddr, addr);
    }
    // A UDP checksum that computes to 0 is sent as 0xffff: 0 means "no checksum".
    if q.proto == IPPROTO_UDP && new == 0 {
        new = 0xffff;
    }
    csum::set_l4_u16(ctx, csum_off, old, new, icmp)
}
