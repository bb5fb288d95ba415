//! Forwarding between endpoints: who sent the packet, where its destination lives, and the
//! rewrite + redirect that delivers it straight into the destination container.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT},
    helpers::generated::bpf_redirect_peer,
    programs::TcContext,
};
use datapath_common::{Counter, DropReason, Endpoint, Network};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    counters::count,
    maps::{ENDPOINTS, IFACES, NETWORKS},
    packet::{ingress_ifindex, ptr_at},
};

/// The endpoint whose host-side veth the packet came in on.
#[inline(always)]
pub fn source_endpoint(ctx: &TcContext) -> Result<Endpoint, DropReason> {
    // SAFETY: map values are plain data; copied out at once.
    unsafe { IFACES.get(ingress_ifindex(ctx)) }
        .copied()
        .ok_or(DropReason::UnknownInterface)
}

#[inline(always)]
pub fn network(id: u32) -> Result<Network, DropReason> {
    // SAFETY: as above.
    unsafe { NETWORKS.get(id) }.copied().ok_or(DropReason::UnknownNetwork)
}

/// A member of `network_id` with this address, if any.
#[inline(always)]
pub fn member(network_id: u32, ip: u32) -> Result<Option<Endpoint>, DropReason> {
    // SAFETY: as above.
    match unsafe { ENDPOINTS.get(ip) } {
        None => Ok(None),
        Some(ep) if ep.network_id == network_id => Ok(Some(*ep)),
        Some(_) => Err(DropReason::CrossNetwork),
    }
}

/// IPv4 sent by a container: checked against its own addresses, then delivered to a peer of
/// the same network or handed to the host stack.
#[inline(always)]
pub fn ipv4_from_endpoint(
    ctx: &TcContext,
    eth: *mut EthHdr,
    source: &Endpoint,
) -> Result<i32, DropReason> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, EthHdr::LEN)?;
    // SAFETY: both headers were bounds-checked by `ptr_at`.
    let (src_mac, src_ip, dst_ip) = unsafe {
        ((*eth).src_addr, u32::from_ne_bytes((*ip).src_addr), u32::from_ne_bytes((*ip).dst_addr))
    };
    // Anti-spoofing, as Cilium's source-IP check: a container speaks only for itself.
    if src_ip != source.ip || src_mac != source.mac {
        return Err(DropReason::SpoofedSource);
    }
    let net = network(source.network_id)?;
    if dst_ip == net.gateway {
        count(Counter::ToHost);
        return Ok(TC_ACT_OK);
    }
    match member(source.network_id, dst_ip)? {
        Some(dest) => deliver(eth, &net, &dest),
        None => {
            count(Counter::ToHost);
            Ok(TC_ACT_OK)
        }
    }
}

/// Rewrites the Ethernet header as the gateway would and redirects into the destination
/// container's namespace, skipping the host stack (`bpf_redirect_peer`).
#[inline(always)]
fn deliver(eth: *mut EthHdr, net: &Network, dest: &Endpoint) -> Result<i32, DropReason> {
    // SAFETY: `eth` was bounds-checked by the caller.
    unsafe {
        (*eth).dst_addr = dest.mac;
        (*eth).src_addr = net.gateway_mac;
    }
    // SAFETY: helper call with plain integer arguments.
    let action = unsafe { bpf_redirect_peer(dest.host_ifindex, 0) };
    if action != TC_ACT_REDIRECT as i64 {
        return Err(DropReason::RedirectFailed);
    }
    count(Counter::Forwarded);
    Ok(TC_ACT_REDIRECT)
}
