//! Forwarding between endpoints: who sent the packet, where its destination lives, and the
//! rewrite + redirect that delivers a packet straight into a container.
use aya_ebpf::programs::TcContext;
use datapath_common::{DropReason, Endpoint, Network};
use network_types::eth::EthHdr;

use crate::{
    maps::{config_ref, ENDPOINTS, IFACES, NETWORKS},
    packet::{ptr_at, Ipv4, Packet},
};

/// The endpoint whose host-side veth the packet came in on.
#[inline(always)]
pub fn source_endpoint(ctx: &TcContext) -> Result<Endpoint, DropReason> {
    endpoint_on(ctx.ingress_ifindex()).ok_or(DropReason::UnknownInterface)
}

/// The endpoint whose host-side veth has this index, if any.
#[inline(always)]
pub fn endpoint_on(ifindex: u32) -> Option<Endpoint> {
    // SAFETY: map values are plain data; copied out at once.
    unsafe { IFACES.get(ifindex) }.copied()
}

#[inline(always)]
pub fn network(id: u32) -> Result<Network, DropReason> {
    // SAFETY: as above.
    unsafe { NETWORKS.get(id) }.copied().ok_or(DropReason::UnknownNetwork)
}

/// A member of `network_id` with this address, if any; a member of another network is an
/// isolation violation.
#[inline(always)]
pub fn member(network_id: u32, ip: u32) -> Result<Option<Endpoint>, DropReason> {
    // SAFETY: as above.
    match unsafe { ENDPOINTS.get(ip) } {
        None => Ok(None),
        Some(ep) if ep.network_id == network_id => Ok(Some(*ep)),
        Some(_) => Err(DropReason::CrossNetwork),
    }
}

/// Anti-spoofing, as Cilium's source-IP check: a container speaks only for itself.
#[inline(always)]
pub fn check_source(eth: *const EthHdr, ip: &Ipv4, source: &Endpoint) -> Result<(), DropReason> {
    // SAFETY: the caller bounds-checked the Ethernet header.
    let src_mac = unsafe { (*eth).src_addr };
    if ip.saddr != source.ip || src_mac != source.mac {
        return Err(DropReason::SpoofedSource);
    }
    Ok(())
}

/// Where an IPv4 packet from a container goes.
pub enum Destination {
    /// The gateway's address: the host stack.
    Gateway,
    /// Another container of the same network.
    Member(Endpoint),
    /// The cluster CIDR (`--cluster-cidr`), outside the container's network: another node's
    /// pod, routed untranslated (`native_routing`).
    Cluster,
    /// Anything else: out of the uplink (translated), or the host stack.
    Outside,
}

#[inline(always)]
pub fn destination(ip: &Ipv4, source: &Endpoint) -> Result<Destination, DropReason> {
    if ip.daddr == source.gateway {
        return Ok(Destination::Gateway);
    }
    Ok(match member(source.network_id, ip.daddr)? {
        Some(dest) => Destination::Member(dest),
        None if config_ref().is_some_and(|cfg| cfg.in_cluster(ip.daddr)) => Destination::Cluster,
        None => Destination::Outside,
    })
}

/// Rewrites the Ethernet header as the destination's gateway would and redirects into the
/// destination container's namespace, skipping the host stack.
#[inline(always)]
pub fn deliver<P: Packet>(ctx: &P, dest: &Endpoint) -> Result<i32, DropReason> {
    // Re-derived here: checksum helpers called before invalidate earlier packet pointers.
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: bounds-checked by `ptr_at`.
    unsafe {
        (*eth).dst_addr = dest.mac;
        (*eth).src_addr = dest.gateway_mac;
    }
    let action = ctx.redirect_into_container(dest.host_ifindex)?;
    crate::counters::count_received(ctx, dest);
    Ok(action)
}

/// Delivers to the container behind a host-side veth.
#[inline(always)]
pub fn deliver_to_ifindex<P: Packet>(ctx: &P, ifindex: u32) -> Result<i32, DropReason> {
    let dest = endpoint_on(ifindex).ok_or(DropReason::UnknownInterface)?;
    deliver(ctx, &dest)
}
