//! Rewrites of addresses, ports and TTL with their checksums kept right, incrementally: at TC
//! by the kernel's helpers, which know about checksum offload (CHECKSUM_PARTIAL packets carry
//! only the pseudo-header sum, which BPF_F_PSEUDO_HDR updates); at XDP by the RFC 1624 updates
//! below (see `Packet`). UDP's "no checksum" zero is kept as it is (BPF_F_MARK_MANGLED_0).
use aya_ebpf::bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR};
use datapath_common::{DropReason, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

use crate::packet::{Ipv4, Packet, IP_CSUM_OFF, IP_TTL_OFF};

/// Where a transport protocol keeps its checksum, and how a change of the IP addresses
/// affects it.
#[derive(Clone, Copy)]
pub struct L4Csum {
    /// Offset of the checksum field in the frame.
    pub offset: usize,
    /// Extra flags for bpf_l4_csum_replace.
    flags: u64,
    /// Whether the checksum covers the IP pseudo-header (TCP, UDP; not ICMP).
    pseudo_header: bool,
}

impl L4Csum {
    #[inline(always)]
    pub fn of(proto: u8, l4_off: usize) -> Result<Self, DropReason> {
        match proto {
            IPPROTO_TCP => Ok(Self { offset: l4_off + 16, flags: 0, pseudo_header: true }),
            IPPROTO_UDP => Ok(Self { offset: l4_off + 6, flags: BPF_F_MARK_MANGLED_0 as u64, pseudo_header: true }),
            IPPROTO_ICMP => Ok(Self { offset: l4_off + 2, flags: 0, pseudo_header: false }),
            _ => Err(DropReason::UnsupportedL4),
        }
    }
}

/// Replaces an IPv4 address at `offset` (source or destination field) and fixes the IP
/// checksum and, for TCP/UDP, the L4 checksum.
#[inline(always)]
pub fn set_addr<P: Packet>(ctx: &P, offset: usize, old: u32, new: u32, l4: &L4Csum) -> Result<(), DropReason> {
    if old == new {
        return Ok(());
    }
    ctx.l3_csum_replace(IP_CSUM_OFF, old as u64, new as u64, 4)?;
    if l4.pseudo_header {
        ctx.l4_csum_replace(l4.offset, old as u64, new as u64, l4.flags | BPF_F_PSEUDO_HDR as u64 | 4)?;
    }
    ctx.store(offset, &new)
}

/// Replaces a 16-bit L4 field (a port, or the ICMP echo identifier) covered by the L4 checksum.
#[inline(always)]
pub fn set_l4_u16<P: Packet>(ctx: &P, offset: usize, old: u16, new: u16, l4: &L4Csum) -> Result<(), DropReason> {
    if old == new {
        return Ok(());
    }
    ctx.l4_csum_replace(l4.offset, old as u64, new as u64, l4.flags | 2)?;
    ctx.store(offset, &new)
}

/// Decrements the TTL of a forwarded packet (the caller checked it is above 1).
#[inline(always)]
pub fn decrement_ttl<P: Packet>(ctx: &P, ip: &Ipv4) -> Result<(), DropReason> {
    // The checksum is over 16-bit words: TTL shares its word with the protocol.
    let old = u16::from_be_bytes([ip.ttl, ip.proto]).to_be();
    let new = u16::from_be_bytes([ip.ttl - 1, ip.proto]).to_be();
    ctx.l3_csum_replace(IP_CSUM_OFF, old as u64, new as u64, 2)?;
    ctx.store(IP_TTL_OFF, &(ip.ttl - 1))
}

/// RFC 1624 incremental update of a ones'-complement checksum (network byte order as stored)
/// for a 32-bit field changing from `old` to `new`: HC' = ~(~HC + ~m + m').
#[inline(always)]
pub fn update32(csum: u16, old: u32, new: u32) -> u16 {
    let mut sum = (!u16::from_be(csum)) as u32;
    let (old, new) = (u32::from_be(old), u32::from_be(new));
    sum += (!(old >> 16) & 0xffff) + (!old & 0xffff);
    sum += (new >> 16) + (new & 0xffff);
    fold(sum)
}

/// The same for a 16-bit field.
#[inline(always)]
pub fn update16(csum: u16, old: u16, new: u16) -> u16 {
    let mut sum = (!u16::from_be(csum)) as u32;
    sum += (!u16::from_be(old)) as u32 + u16::from_be(new) as u32;
    fold(sum)
}

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    (!(sum as u16)).to_be()
}

/// Replaces a 32-bit field inside the L4 payload (e.g. an address in the packet an ICMP error
/// quotes), keeping the L4 checksum right. Not for fields the pseudo-header covers.
#[inline(always)]
pub fn set_l4_u32<P: Packet>(ctx: &P, offset: usize, old: u32, new: u32, l4: &L4Csum) -> Result<(), DropReason> {
    if old == new {
        return Ok(());
    }
    ctx.l4_csum_replace(l4.offset, old as u64, new as u64, l4.flags | 4)?;
    ctx.store(offset, &new)
}
