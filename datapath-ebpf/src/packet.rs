//! The packet as a program sees it, at either hook it runs at: TC (an skb, with the kernel's
//! checksum and redirect helpers) or XDP (a bare buffer, before any skb exists). The other
//! modules are written once against [`Packet`]; each hook says here how it stores bytes,
//! whether the kernel updates its L4 checksums, how it redirects and which verdicts mean what.
//! Also bounds-checked access to packet bytes (direct packet access, as the verifier demands),
//! and the parsed view of an IPv4 header that the other modules share. The checksum
//! arithmetic is above this layer, in `csum`.
use core::mem::offset_of;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT},
    helpers::generated::{bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer},
    programs::{TcContext, XdpContext},
    EbpfContext,
};
use datapath_common::{DropReason, Ipv4Be};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::maps::{TAIL_CALLS, TAIL_CALLS_XDP};

/// Offset of the IPv4 header in the frame.
pub const IP_OFF: usize = EthHdr::LEN;
/// Offsets of the IPv4 header fields the datapath rewrites, from the start of an IPv4 header:
/// the packet's own (at `IP_OFF`) or the one an ICMP error quotes. (The L4 headers' offsets
/// are in `csum::L4Offsets`.)
pub const IPV4_TTL_OFF: usize = offset_of!(Ipv4Hdr, ttl);
pub const IPV4_CSUM_OFF: usize = offset_of!(Ipv4Hdr, check);
pub const IPV4_SADDR_OFF: usize = offset_of!(Ipv4Hdr, src_addr);
pub const IPV4_DADDR_OFF: usize = offset_of!(Ipv4Hdr, dst_addr);
/// The same for the IPv6 header (which has no checksum).
pub const IPV6_HOP_LIMIT_OFF: usize = offset_of!(Ipv6Hdr, hop_limit);
pub const IPV6_SADDR_OFF: usize = offset_of!(Ipv6Hdr, src_addr);
pub const IPV6_DADDR_OFF: usize = offset_of!(Ipv6Hdr, dst_addr);

/// What a hook gives its program: the bytes, where they came from, and the primitives that
/// differ between an skb and an XDP buffer.
pub trait Packet: EbpfContext {
    /// Verdicts: on to the kernel's stack, dropped, or sent where a redirect helper said.
    const PASS: i32;
    const DROP: i32;
    const REDIRECT: i32;

    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// The length of the whole packet (an skb's may exceed its linear data).
    fn len(&self) -> u32;
    /// The interface the packet arrived on.
    fn ingress_ifindex(&self) -> u32;
    /// `bpf_l4_csum_replace` with a difference summed beforehand (field size 0): the L4
    /// checksum at `offset` follows fields that changed by `diff`, with BPF_F_* flags in
    /// `flags` (BPF_F_PSEUDO_HDR: fields of the pseudo-header). `None` where the hook has no
    /// such helper (XDP): the caller updates the checksum in place.
    fn l4_csum_replace(&self, offset: usize, diff: u32, flags: u64) -> Option<Result<(), DropReason>>;
    /// Sends the packet into the container behind the host-side veth `host_ifindex`.
    fn redirect_into_container(&self, host_ifindex: u32) -> Result<i32, DropReason>;
    /// Sends the packet out of `ifindex` to a neighbour whose MAC is not known yet.
    fn redirect_to_unresolved(&self, ifindex: u32) -> Result<i32, DropReason>;
    /// Continues in the program in `slot` (`tail_call_slots`) of this hook's program array;
    /// returns only if that fails (an empty slot).
    fn tail_call(&self, slot: u32);
}

/// Maps a redirect helper's return value to the verdict, or to a counted drop.
#[inline(always)]
fn redirected<P: Packet>(action: i64) -> Result<i32, DropReason> {
    if action != P::REDIRECT as i64 {
        return Err(DropReason::RedirectFailed);
    }
    Ok(P::REDIRECT)
}

/// Sends the packet out of `ifindex` as it is (`bpf_redirect`, the same helper at both hooks).
#[inline(always)]
pub fn redirect<P: Packet>(ifindex: u32) -> Result<i32, DropReason> {
    // SAFETY: helper call with plain integer arguments.
    redirected::<P>(unsafe { bpf_redirect(ifindex, 0) })
}

impl Packet for TcContext {
    const PASS: i32 = TC_ACT_OK;
    const DROP: i32 = TC_ACT_SHOT;
    const REDIRECT: i32 = TC_ACT_REDIRECT;

    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        TcContext::len(self)
    }

    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        // SAFETY: `skb` is the context pointer the kernel passed to the program.
        unsafe { (*self.skb.skb).ifindex }
    }

    // The skb helper knows about checksum offload: a CHECKSUM_PARTIAL packet carries only the
    // pseudo-header sum, which BPF_F_PSEUDO_HDR updates the right way (and other fields not).
    #[inline(always)]
    fn l4_csum_replace(&self, offset: usize, diff: u32, flags: u64) -> Option<Result<(), DropReason>> {
        Some(TcContext::l4_csum_replace(self, offset, 0, diff as u64, flags).map_err(|_| DropReason::RewriteFailed))
    }

    /// `bpf_redirect_peer`: straight into the container's namespace, skipping the host-side
    /// veth's transmit and the backlog queue.
    #[inline(always)]
    fn redirect_into_container(&self, host_ifindex: u32) -> Result<i32, DropReason> {
        // SAFETY: helper call with plain integer arguments.
        redirected::<Self>(unsafe { bpf_redirect_peer(host_ifindex, 0) })
    }

    /// `bpf_redirect_neigh`: the kernel resolves the neighbour, as the stack would.
    #[inline(always)]
    fn redirect_to_unresolved(&self, ifindex: u32) -> Result<i32, DropReason> {
        // SAFETY: helper call with plain arguments; a null neighbour makes the kernel resolve it.
        redirected::<Self>(unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) })
    }

    #[inline(always)]
    fn tail_call(&self, slot: u32) {
        // SAFETY: the array holds TC programs only (the kernel refuses others in it).
        unsafe { TAIL_CALLS.tail_call(self, slot) }
    }
}

impl Packet for XdpContext {
    const PASS: i32 = xdp_action::XDP_PASS as i32;
    const DROP: i32 = xdp_action::XDP_DROP as i32;
    const REDIRECT: i32 = xdp_action::XDP_REDIRECT as i32;

    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        (XdpContext::data_end(self) - XdpContext::data(self)) as u32
    }

    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        // SAFETY: `ctx` is the context pointer the kernel passed to the program.
        unsafe { (*self.ctx).ingress_ifindex }
    }

    // A buffer at XDP has no checksum state: its checksums are complete (a NIC delivers what
    // the wire carried), so they are updated in place as RFC 1624 says (`csum`).
    #[inline(always)]
    fn l4_csum_replace(&self, _offset: usize, _diff: u32, _flags: u64) -> Option<Result<(), DropReason>> {
        None
    }

    /// `bpf_redirect` to the host-side veth: its transmit hands the frame to the container's
    /// end, whose NAPI (the agent turns on GRO there) receives it.
    #[inline(always)]
    fn redirect_into_container(&self, host_ifindex: u32) -> Result<i32, DropReason> {
        redirect::<Self>(host_ifindex)
    }

    /// XDP cannot resolve neighbours: the host stack routes the (already translated) packet.
    #[inline(always)]
    fn redirect_to_unresolved(&self, _ifindex: u32) -> Result<i32, DropReason> {
        Ok(Self::PASS)
    }

    #[inline(always)]
    fn tail_call(&self, slot: u32) {
        // SAFETY: the array holds XDP programs only (the kernel refuses others in it).
        unsafe { TAIL_CALLS_XDP.tail_call(self, slot) }
    }
}

/// Writes `value` at `offset` bytes into the packet, directly (at TC too: headers are in the
/// skb's linear data, which the verifier lets a program write after unsharing it).
#[inline(always)]
pub fn store<P: Packet, T: Copy>(ctx: &P, offset: usize, value: &T) -> Result<(), DropReason> {
    let field: *mut T = ptr_at(ctx, offset)?;
    // SAFETY: bounds-checked by `ptr_at`; packet fields need not be aligned.
    unsafe { field.write_unaligned(*value) };
    Ok(())
}

/// A pointer to a `T` at `offset` bytes into the packet, or `Malformed` when the packet is
/// too short to hold it.
#[inline(always)]
pub fn ptr_at<P: Packet, T>(ctx: &P, offset: usize) -> Result<*mut T, DropReason> {
    let mut field = ctx.data() + offset;
    // The verifier learns a packet pointer's range from a comparison of that very pointer
    // (plus a constant). Without this barrier (libbpf's barrier_var), LLVM may compute
    // `data + (offset + size)` for the check and `data + offset` for the access, and with a
    // variable offset (IP options) the access is then refused as unchecked.
    // SAFETY: a register move onto itself; it only hides the value from the optimizer (an
    // empty statement would leave two BTF line records on one instruction, which the kernel
    // refuses).
    unsafe { core::arch::asm!("{0} = {0}", inout(reg) field) };
    if field + core::mem::size_of::<T>() > ctx.data_end() {
        return Err(DropReason::Malformed);
    }
    Ok(field as *mut T)
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
    /// The identification (network byte order): shared by the fragments of a datagram.
    pub id: u16,
    /// The first fragment of a fragmented datagram (more fragments follow, offset 0).
    pub first_fragment: bool,
    /// A fragment other than the first: no L4 header in it.
    pub later_fragment: bool,
}

/// Parses the IPv4 header after the Ethernet header.
#[inline(always)]
pub fn ipv4<P: Packet>(ctx: &P) -> Result<Ipv4, DropReason> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, IP_OFF)?;
    // SAFETY: bounds-checked by `ptr_at`.
    let ip = unsafe { &*ip };
    let header_len = ipv4_header_len(ip)?;
    const MORE_FRAGMENTS: u16 = 0x2000;
    const OFFSET: u16 = 0x1fff;
    let frag = u16::from_be_bytes(ip.frags);
    Ok(Ipv4 {
        saddr: u32::from_ne_bytes(ip.src_addr),
        daddr: u32::from_ne_bytes(ip.dst_addr),
        proto: ip.proto,
        ttl: ip.ttl,
        l4_off: IP_OFF + header_len,
        id: u16::from_ne_bytes(ip.id),
        first_fragment: frag & (MORE_FRAGMENTS | OFFSET) == MORE_FRAGMENTS,
        later_fragment: frag & OFFSET != 0,
    })
}

/// The length of an IPv4 header, options included (the packet's own, or one an ICMP error
/// quotes), or `Malformed` when it is no IPv4 header.
#[inline(always)]
pub fn ipv4_header_len(ip: &Ipv4Hdr) -> Result<usize, DropReason> {
    let len = ip.ihl() as usize;
    if ip.version() != 4 || len < Ipv4Hdr::LEN {
        return Err(DropReason::Malformed);
    }
    Ok(len)
}
