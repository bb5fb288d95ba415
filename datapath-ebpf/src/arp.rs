//! ARP responder: a container's ARP requests for its gateway and for the other members of its
//! network are answered from the maps, so nothing is ever flooded.
use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use datapath_common::{Counter, DropReason, Endpoint};
use network_types::{arp::ArpHdr, eth::EthHdr};

use crate::{
    counters::count,
    forward::{member, network},
    packet::{ptr_at, redirect, Packet},
};

const ARP_HTYPE_ETHERNET: u16 = 1;
const ARP_PTYPE_IPV4: u16 = 0x0800;
const ARP_OP_REQUEST: u16 = 1;
const ARP_OP_REPLY: u16 = 2;

#[inline(always)]
pub fn answer(ctx: &TcContext, eth: *mut EthHdr, source: &Endpoint) -> Result<i32, DropReason> {
    let arp: *mut ArpHdr = ptr_at(ctx, EthHdr::LEN)?;
    // SAFETY: bounds-checked by `ptr_at`; every access below stays inside the header.
    let arp = unsafe { &mut *arp };
    if arp.htype() != ARP_HTYPE_ETHERNET || arp.ptype() != ARP_PTYPE_IPV4 || arp.hlen != 6 || arp.plen != 4 {
        return Err(DropReason::ArpInvalid);
    }
    let sender_ip = u32::from_ne_bytes(arp.spa);
    // SAFETY: `eth` was bounds-checked by the caller.
    let frame_source = unsafe { (*eth).src_addr };
    // A container may only speak for its own addresses, in the ARP payload and in the frame;
    // 0.0.0.0 is an address probe (RFC 5227).
    if (sender_ip != source.ip && sender_ip != 0) || arp.sha != source.mac || frame_source != source.mac {
        return Err(DropReason::SpoofedSource);
    }
    match arp.oper() {
        // The container answering the host's own request for it.
        ARP_OP_REPLY if sender_ip == source.ip => {
            count(Counter::ArpToHost);
            Ok(TC_ACT_OK)
        }
        ARP_OP_REQUEST => reply(ctx, eth, arp, source),
        _ => Err(DropReason::ArpInvalid),
    }
}

/// Turns the request into the reply in place and sends it back out of the interface it came
/// in on, i.e. into the container.
#[inline(always)]
fn reply(ctx: &TcContext, eth: *mut EthHdr, arp: &mut ArpHdr, source: &Endpoint) -> Result<i32, DropReason> {
    let target_ip = u32::from_ne_bytes(arp.tpa);
    let net = network(source.network_id)?;
    let target_mac = if target_ip == net.gateway {
        net.gateway_mac
    } else {
        match member(source.network_id, target_ip) {
            Ok(Some(dest)) if dest.ip != source.ip => dest.mac,
            _ => return Err(DropReason::ArpUnknownTarget),
        }
    };
    arp.set_oper(ARP_OP_REPLY);
    arp.tha = arp.sha;
    arp.sha = target_mac;
    arp.tpa = arp.spa;
    arp.spa = target_ip.to_ne_bytes();
    // SAFETY: `eth` was bounds-checked by the caller.
    unsafe {
        (*eth).dst_addr = (*eth).src_addr;
        (*eth).src_addr = target_mac;
    }
    let action = redirect::<TcContext>(ctx.ingress_ifindex())?;
    count(Counter::ArpReplied);
    Ok(action)
}
