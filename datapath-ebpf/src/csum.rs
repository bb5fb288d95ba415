//! Rewrites of addresses, ports and TTL with their checksums kept right, incrementally
//! (RFC 1624). A [`Rewrite`] writes the fields directly and sums their changes, then updates
//! each checksum once ([`Rewrite::commit`]):
//! - the IPv4 header checksum in place: it is always complete, offload or not;
//! - the L4 checksum at TC by the kernel's helper (`Packet::l4_csum_replace`), which knows
//!   about checksum offload (a CHECKSUM_PARTIAL packet carries only the pseudo-header sum,
//!   which BPF_F_PSEUDO_HDR updates, and no other field's); at XDP, which has no such helper
//!   and complete checksums, in place here. UDP's "no checksum" zero is kept as it is
//!   (BPF_F_MARK_MANGLED_0).
//!
//! One update per checksum rather than one per field: at TC, two helper calls per packet
//! instead of up to a dozen (they were most of a translated packet's cost).
use core::mem::offset_of;

use aya_ebpf::bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR};
use datapath_common::{DropReason, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};
use network_types::{
    icmp::{IcmpIdSequence, Icmpv4Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

use crate::packet::{ptr_at, store, Ipv4, Packet, IPV4_CSUM_OFF, IPV4_TTL_OFF, IPV6_HOP_LIMIT_OFF, IP_OFF};

/// Where a transport protocol's header keeps the fields a translation rewrites, from the start
/// of the header (network-types' layouts), and how its checksum is updated: the one table of
/// L4 offsets, as Cilium's `csum_offsets` (bpf/lib/csum.h), with the ports added.
#[derive(Clone, Copy)]
pub struct L4Offsets {
    /// The fields that carry a conntrack key's ports: TCP's and UDP's ports; for ICMP echo both
    /// are its identifier (the key keeps it in the source slot of requests and in the
    /// destination slot of replies; the other slot is 0 and never changes).
    pub sport: usize,
    pub dport: usize,
    /// The checksum.
    pub csum: usize,
    /// Extra flags for bpf_l4_csum_replace.
    csum_flags: u64,
    /// Whether the checksum covers the IP pseudo-header (TCP, UDP; not ICMP).
    pseudo_header: bool,
}

/// ICMP echo's identifier, in the "rest of header" word of the ICMP header.
const ICMP_ECHO_ID_OFF: usize = offset_of!(Icmpv4Hdr, data) + offset_of!(IcmpIdSequence, id);

impl L4Offsets {
    pub const TCP: L4Offsets = L4Offsets {
        sport: offset_of!(TcpHdr, source),
        dport: offset_of!(TcpHdr, dest),
        csum: offset_of!(TcpHdr, check),
        csum_flags: 0,
        pseudo_header: true,
    };
    /// UDP's "no checksum" zero stays as it is (BPF_F_MARK_MANGLED_0).
    pub const UDP: L4Offsets = L4Offsets {
        sport: offset_of!(UdpHdr, src),
        dport: offset_of!(UdpHdr, dst),
        csum: offset_of!(UdpHdr, check),
        csum_flags: BPF_F_MARK_MANGLED_0 as u64,
        pseudo_header: true,
    };
    /// Any ICMP message's checksum; its ports are echo's identifier (no other ICMP message is
    /// a flow of its own).
    pub const ICMP: L4Offsets = L4Offsets {
        sport: ICMP_ECHO_ID_OFF,
        dport: ICMP_ECHO_ID_OFF,
        csum: offset_of!(Icmpv4Hdr, check),
        csum_flags: 0,
        pseudo_header: false,
    };
    /// ICMPv6's checksum, which (unlike ICMP's) covers the IPv6 pseudo-header; echo's
    /// identifier lies where ICMP's does.
    pub const ICMPV6: L4Offsets = L4Offsets { pseudo_header: true, ..Self::ICMP };
    /// No L4 header in the packet (a later fragment): nothing but the IP header to update.
    pub const ABSENT: L4Offsets = L4Offsets { sport: 0, dport: 0, csum: 0, csum_flags: 0, pseudo_header: false };

    #[inline(always)]
    pub fn of(proto: u8) -> Result<Self, DropReason> {
        match proto {
            IPPROTO_TCP => Ok(Self::TCP),
            IPPROTO_UDP => Ok(Self::UDP),
            IPPROTO_ICMP => Ok(Self::ICMP),
            IPPROTO_ICMPV6 => Ok(Self::ICMPV6),
            _ => Err(DropReason::UnsupportedL4),
        }
    }
}

/// An address of either family as a rewrite sees it: 1 or 4 words, each a change of two
/// 16-bit words to the sums that cover it.
pub trait Address: Copy + PartialEq {
    fn add_change(delta: &mut Delta, old: Self, new: Self);
}

impl Address for u32 {
    #[inline(always)]
    fn add_change(delta: &mut Delta, old: u32, new: u32) {
        delta.u32(old, new);
    }
}

impl Address for [u32; 4] {
    #[inline(always)]
    fn add_change(delta: &mut Delta, old: [u32; 4], new: [u32; 4]) {
        for i in 0..4 {
            delta.u32(old[i], new[i]);
        }
    }
}

/// A sum of changes of 16-bit words, RFC 1624's Σ(~m + m'), for fields in network byte order
/// as stored.
#[derive(Clone, Copy, Default)]
pub struct Delta(u32);

// A sum of changes stays below 2^32: at most 8 address words (an IPv6 rewrite's two addresses),
// each adding less than 2^18.

impl Delta {
    #[inline(always)]
    pub fn u16(&mut self, old: u16, new: u16) {
        self.0 += (!u16::from_be(old)) as u32 + u16::from_be(new) as u32;
    }

    #[inline(always)]
    pub fn u32(&mut self, old: u32, new: u32) {
        let (old, new) = (u32::from_be(old), u32::from_be(new));
        self.0 += (!(old >> 16) & 0xffff) + (!old & 0xffff) + (new >> 16) + (new & 0xffff);
    }

    #[inline(always)]
    fn plus(self, other: Delta) -> Delta {
        Delta(fold(self.0) as u32 + fold(other.0) as u32)
    }

    #[inline(always)]
    fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Folded to 16 bits, as `bpf_l4_csum_replace` takes a difference: a sum of the packet's
    /// words as they lie in memory (the kernel's csum_* functions read them natively), i.e.
    /// in network byte order, while this sum is kept in host order.
    #[inline(always)]
    fn diff(self) -> u32 {
        fold(self.0).to_be() as u32
    }

    /// A checksum (network byte order as stored) after the changes: HC' = ~(~HC + Σ).
    #[inline(always)]
    pub fn apply(self, csum: u16) -> u16 {
        let sum = (!u16::from_be(csum)) as u32 + fold(self.0) as u32;
        (!fold(sum)).to_be()
    }
}

/// Ones'-complement folding of a 32-bit sum to 16 bits.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// RFC 1624 update of a checksum for one 32-bit field changing from `old` to `new`.
#[inline(always)]
pub fn update32(csum: u16, old: u32, new: u32) -> u16 {
    let mut delta = Delta::default();
    delta.u32(old, new);
    delta.apply(csum)
}

/// The same for a 16-bit field.
#[inline(always)]
pub fn update16(csum: u16, old: u16, new: u16) -> u16 {
    let mut delta = Delta::default();
    delta.u16(old, new);
    delta.apply(csum)
}

/// Applies `delta` to the checksum at `offset` in place. `mangled_0`: UDP's "no checksum" zero
/// stays zero, and a sum that comes to zero is sent as 0xffff (as BPF_F_MARK_MANGLED_0 does).
#[inline(always)]
fn apply_at<P: Packet>(ctx: &P, offset: usize, delta: Delta, mangled_0: bool) -> Result<(), DropReason> {
    let field: *mut u16 = ptr_at(ctx, offset)?;
    // SAFETY: bounds-checked by `ptr_at`; packet fields need not be aligned.
    let sum = unsafe { field.read_unaligned() };
    if mangled_0 && sum == 0 {
        return Ok(());
    }
    let mut updated = delta.apply(sum);
    if mangled_0 && updated == 0 {
        updated = 0xffff;
    }
    // SAFETY: as above.
    unsafe { field.write_unaligned(updated) };
    Ok(())
}

/// Applies `delta` to the L4 checksum at `offset`: by the hook's helper where it has one (TC),
/// else in place (XDP). `flags` as `bpf_l4_csum_replace` takes them.
#[inline(always)]
fn apply_l4<P: Packet>(ctx: &P, offset: usize, delta: Delta, flags: u64) -> Result<(), DropReason> {
    match ctx.l4_csum_replace(offset, delta.diff(), flags) {
        Some(result) => result,
        // A complete checksum covers the pseudo-header like any other field.
        None => apply_at(ctx, offset, delta, flags & BPF_F_MARK_MANGLED_0 as u64 != 0),
    }
}

/// The fields of one packet being rewritten, and what their changes do to its checksums.
pub struct Rewrite {
    /// The packet's L4 header: its offset in the frame, and its protocol's offsets.
    l4_off: usize,
    l4: L4Offsets,
    /// Whether the IP header has a checksum (IPv4's does, IPv6's has none).
    ip_header_csum: bool,
    /// The IP addresses: in the IPv4 header checksum and, for TCP/UDP (and ICMPv6), the
    /// pseudo-header.
    addresses: Delta,
    /// The TTL: in the IP header checksum only.
    ttl: Delta,
    /// Fields inside the L4 checksum's coverage and not in the pseudo-header: ports, the
    /// echo identifier, an ICMP error's quoted packet.
    l4_fields: Delta,
}

impl Rewrite {
    /// A rewrite of an IPv4 packet.
    #[inline(always)]
    pub fn new(l4_off: usize, l4: L4Offsets) -> Self {
        Rewrite {
            l4_off,
            l4,
            ip_header_csum: true,
            addresses: Delta::default(),
            ttl: Delta::default(),
            l4_fields: Delta::default(),
        }
    }

    /// A rewrite of an IPv6 packet: no header checksum, so only the L4 checksum follows.
    #[inline(always)]
    pub fn new6(l4_off: usize, l4: L4Offsets) -> Self {
        Rewrite { ip_header_csum: false, ..Self::new(l4_off, l4) }
    }

    /// The source or destination address at `offset` (of either family).
    #[inline(always)]
    pub fn addr<P: Packet, A: Address>(&mut self, ctx: &P, offset: usize, old: A, new: A) -> Result<(), DropReason> {
        if old != new {
            store(ctx, offset, &new)?;
            A::add_change(&mut self.addresses, old, new);
        }
        Ok(())
    }

    /// A 16-bit field the L4 checksum covers (a port, the echo identifier, a quoted field).
    #[inline(always)]
    pub fn l4_u16<P: Packet>(&mut self, ctx: &P, offset: usize, old: u16, new: u16) -> Result<(), DropReason> {
        if old != new {
            store(ctx, offset, &new)?;
            self.l4_fields.u16(old, new);
        }
        Ok(())
    }

    /// A 32-bit field the L4 checksum covers (a quoted address).
    #[inline(always)]
    pub fn l4_u32<P: Packet>(&mut self, ctx: &P, offset: usize, old: u32, new: u32) -> Result<(), DropReason> {
        if old != new {
            store(ctx, offset, &new)?;
            self.l4_fields.u32(old, new);
        }
        Ok(())
    }

    /// Decrements the TTL of a forwarded packet (the caller checked it is above 1).
    #[inline(always)]
    pub fn decrement_ttl<P: Packet>(&mut self, ctx: &P, ip: &Ipv4) -> Result<(), DropReason> {
        // The checksum is over 16-bit words: TTL shares its word with the protocol.
        let old = u16::from_be_bytes([ip.ttl, ip.proto]).to_be();
        let new = u16::from_be_bytes([ip.ttl - 1, ip.proto]).to_be();
        store(ctx, IP_OFF + IPV4_TTL_OFF, &(ip.ttl - 1))?;
        self.ttl.u16(old, new);
        Ok(())
    }

    /// Decrements the hop limit of a forwarded IPv6 packet (the caller checked it is above 1):
    /// no checksum covers it.
    #[inline(always)]
    pub fn decrement_hop_limit<P: Packet>(&mut self, ctx: &P, hop_limit: u8) -> Result<(), DropReason> {
        store(ctx, IP_OFF + IPV6_HOP_LIMIT_OFF, &(hop_limit - 1))
    }

    /// Updates the checksums for everything written. The L4 update comes last: at TC it is a
    /// helper call, after which packet pointers must be derived again.
    #[inline(always)]
    pub fn commit<P: Packet>(self, ctx: &P) -> Result<(), DropReason> {
        let header = self.addresses.plus(self.ttl);
        if self.ip_header_csum && !header.is_empty() {
            apply_at(ctx, IP_OFF + IPV4_CSUM_OFF, header, false)?;
        }
        let csum_off = self.l4_off + self.l4.csum;
        if self.l4.pseudo_header && !self.addresses.is_empty() {
            apply_l4(ctx, csum_off, self.addresses, self.l4.csum_flags | BPF_F_PSEUDO_HDR as u64)?;
        }
        if !self.l4_fields.is_empty() {
            apply_l4(ctx, csum_off, self.l4_fields, self.l4.csum_flags)?;
        }
        Ok(())
    }
}
