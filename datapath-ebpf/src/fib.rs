//! The kernel's routing table and neighbours, asked from the datapath (bpf_fib_lookup), and the
//! redirect out of the interface it names.
use aya_ebpf::bindings::{BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS};
use datapath_common::{CtKeyOf, DropReason};

use crate::{
    fib_params::{FibAddress, FibParams},
    packet::{redirect, store, Packet},
};

/// Where the routing table sends a packet.
pub struct NextHop {
    pub ifindex: u32,
    smac: [u8; 6],
    dmac: [u8; 6],
    /// The neighbour's MAC is known; otherwise the kernel resolves it on redirect.
    resolved: bool,
}

/// What the routing table says about a destination.
pub enum FibResult {
    Forward(NextHop),
    /// An address of the host itself.
    Local,
    /// No route, or forwarding is off: the host stack decides (and answers with ICMP).
    Other,
}

/// Looks up the route for a packet (of either family) that came in on this interface.
#[inline(always)]
pub fn route<P: Packet, A: FibAddress>(ctx: &P, key: &CtKeyOf<A>) -> FibResult {
    route_between(ctx, key.saddr, key.daddr, key.proto, key.sport, key.dport)
}

/// The same by the packet's fields (the ports, network order, only pick among equal-cost
/// routes): no tuple is built on the stack.
#[inline(always)]
pub fn route_between<P: Packet, A: FibAddress>(
    ctx: &P,
    saddr: A,
    daddr: A,
    proto: u8,
    sport: u16,
    dport: u16,
) -> FibResult {
    let (src, dst) = (saddr.words(), daddr.words());
    let mut params = FibParams {
        family: A::FAMILY,
        l4_protocol: proto,
        sport,
        dport,
        ifindex: ctx.ingress_ifindex(),
        ipv4_src: src[0],
        ipv6_src_rest: [src[1], src[2], src[3]],
        ipv4_dst: dst[0],
        ipv6_dst_rest: [dst[1], dst[2], dst[3]],
        ..Default::default()
    };
    let rc = params.lookup(ctx);
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS => FibResult::Forward(NextHop {
            ifindex: params.ifindex,
            smac: params.smac,
            dmac: params.dmac,
            resolved: true,
        }),
        BPF_FIB_LKUP_RET_NO_NEIGH => {
            FibResult::Forward(NextHop { ifindex: params.ifindex, smac: [0; 6], dmac: [0; 6], resolved: false })
        }
        BPF_FIB_LKUP_RET_NOT_FWDED => FibResult::Local,
        _ => FibResult::Other,
    }
}

/// The next hop, when the packet is to be forwarded.
#[inline(always)]
pub fn lookup<P: Packet, A: FibAddress>(ctx: &P, key: &CtKeyOf<A>) -> Option<NextHop> {
    match route(ctx, key) {
        FibResult::Forward(hop) => Some(hop),
        FibResult::Local | FibResult::Other => None,
    }
}

/// Sends the packet out of the next hop's interface, with the next hop's MACs.
#[inline(always)]
pub fn send<P: Packet>(ctx: &P, hop: &NextHop) -> Result<i32, DropReason> {
    if !hop.resolved {
        return ctx.redirect_to_unresolved(hop.ifindex);
    }
    let macs: [[u8; 6]; 2] = [hop.dmac, hop.smac];
    store(ctx, 0, &macs)?;
    redirect::<P>(hop.ifindex)
}
