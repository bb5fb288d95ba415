//! Bounds-checked access to packet bytes (direct packet access, as the verifier demands), and
//! the parsed view of an IPv4 header that the other modules share.
use aya_ebpf::programs::TcContext;
use datapath_common::{DropReason, Ipv4Be};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

/// Offsets of IPv4 header fields, from the start of the frame.
pub const IP_OFF: usize = EthHdr::LEN;
pub const IP_TTL_OFF: usize = IP_OFF + 8;
pub const IP_CSUM_OFF: usize = IP_OFF + 10;
pub const IP_SADDR_OFF: usize = IP_OFF + 12;
pub const IP_DADDR_OFF: usize = IP_OFF + 16;

/// A pointer to a `T` at `offset` bytes into the packet, or `Malformed` when the packet is
/// too short to hold it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &TcContext, offset: usize) -> Result<*mut T, DropReason> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return Err(DropReason::Malformed);
    }
    Ok((start + offset) as *mut T)
}

/// The interface the packet arrived on.
#[inline(always)]
pub fn ingress_ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: `skb` is the context pointer the kernel passed to the program.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// What the datapath needs of an IPv4 header, read once per packet.
#[derive(Clone, Copy)]
pub struct Ipv4 {
    pub saddr: Ipv4Be,
    pub daddr: Ipv4Be,
    pub proto: u8,
    pub ttl: u8,
    /// Offset of the L4 header (IP options skipped).
    pub l4_off: usize,
    /// A fragment other than the first: no L4 header in it.
    pub later_fragment: bool,
}

/// Parses the IPv4 header after the Ethernet header.
#[inline(always)]
pub fn ipv4(ctx: &TcContext) -> Result<Ipv4, DropReason> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, IP_OFF)?;
    // SAFETY: bounds-checked by `ptr_at`.
    let ip = unsafe { &*ip };
    let ihl = (ip.vihl & 0x0f) as usize;
    if ip.vihl >> 4 != 4 || ihl < 5 {
        return Err(DropReason::Malformed);
    }
    let frag = u16::from_be_bytes(ip.frags);
    Ok(Ipv4 {
        saddr: u32::from_ne_bytes(ip.src_addr),
        daddr: u32::from_ne_bytes(ip.dst_addr),
        proto: ip.proto,
        ttl: ip.ttl,
        l4_off: IP_OFF + ihl * 4,
        later_fragment: frag & 0x1fff != 0,
    })
}
