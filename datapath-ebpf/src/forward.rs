//! Forwarding between endpoints: who sent the packet, where its destination lives, and the
//! rewrite + redirect that delivers a packet straight into a container. Written once for both
//! address families where it can be: a container's IPv4 [`Endpoint`] and IPv6 [`Endpoint6`]
//! are both a [`Veth`].
use aya_ebpf::{maps::HashMap, programs::TcContext};
use datapath_common::{DropReason, Endpoint, Endpoint6, Ipv6Be, Network};
use network_types::eth::EthHdr;

use crate::{
    ipv6::{self, Ipv6},
    maps::{config_ref, ENDPOINTS, ENDPOINTS6, IFACES, IFACES6, NETWORKS},
    packet::{ptr_at, Ipv4, Packet},
};

/// What delivery and accounting need of a container, whichever family's map entry it came
/// from: its host-side veth, its MAC and its gateway's, its network and its statistics slot.
pub trait Veth: Copy {
    fn host_ifindex(&self) -> u32;
    fn network_id(&self) -> u32;
    fn mac(&self) -> [u8; 6];
    fn gateway_mac(&self) -> [u8; 6];
    fn stats_slot(&self) -> u32;
}

/// Implements [`Veth`] for endpoint types whose fields have those names.
macro_rules! veth_fields {
    ($($endpoint:ty),*) => {$(
        impl Veth for $endpoint {
            #[inline(always)]
            fn host_ifindex(&self) -> u32 {
                self.host_ifindex
            }

            #[inline(always)]
            fn network_id(&self) -> u32 {
                self.network_id
            }

            #[inline(always)]
            fn mac(&self) -> [u8; 6] {
                self.mac
            }

            #[inline(always)]
            fn gateway_mac(&self) -> [u8; 6] {
                self.gateway_mac
            }

            #[inline(always)]
            fn stats_slot(&self) -> u32 {
                self.stats_slot
            }
        }
    )*};
}
veth_fields!(Endpoint, Endpoint6);

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
    member_of(&ENDPOINTS, network_id, &ip)
}

/// The same for an IPv6 address.
#[inline(always)]
pub fn member6(network_id: u32, ip: &Ipv6Be) -> Result<Option<Endpoint6>, DropReason> {
    member_of(&ENDPOINTS6, network_id, ip)
}

#[inline(always)]
fn member_of<K, V: Veth>(map: &HashMap<K, V>, network_id: u32, ip: &K) -> Result<Option<V>, DropReason> {
    // SAFETY: map values are plain data; copied out at once.
    match unsafe { map.get(ip) } {
        None => Ok(None),
        Some(ep) if ep.network_id() == network_id => Ok(Some(*ep)),
        Some(_) => Err(DropReason::CrossNetwork),
    }
}

/// The frame's source MAC must be the container's own.
#[inline(always)]
fn check_mac(eth: *const EthHdr, source: &impl Veth) -> Result<(), DropReason> {
    // SAFETY: the caller bounds-checked the Ethernet header.
    if unsafe { (*eth).src_addr } != source.mac() {
        return Err(DropReason::SpoofedSource);
    }
    Ok(())
}

/// Anti-spoofing, as Cilium's source-IP check: a container speaks only for itself.
#[inline(always)]
pub fn check_source(eth: *const EthHdr, ip: &Ipv4, source: &Endpoint) -> Result<(), DropReason> {
    check_mac(eth, source)?;
    if ip.saddr != source.ip {
        return Err(DropReason::SpoofedSource);
    }
    Ok(())
}

/// The IPv6 source of a container: its address, or for neighbour discovery and MLD
/// (`link_scoped`) also its link-local address (which those messages are sent from) or `::`
/// (duplicate address detection, RFC 4862, and MLD before an address is configured).
#[inline(always)]
pub fn check_source6(eth: *const EthHdr, ip: &Ipv6, source: &Endpoint6, link_scoped: bool) -> Result<(), DropReason> {
    check_mac(eth, source)?;
    if ip.saddr == source.ip
        || (link_scoped && (ipv6::is_unspecified(&ip.saddr) || ip.saddr == ipv6::link_local_of(&source.mac)))
    {
        return Ok(());
    }
    Err(DropReason::SpoofedSource)
}

/// The IPv6 side of the container behind the host-side veth with this index; none: no
/// container, or one without IPv6 (its network has no IPv6 subnet). In place, not copied: the
/// IPv6 program's stack is tight.
#[inline(always)]
pub fn endpoint6_on(ifindex: u32) -> Option<&'static Endpoint6> {
    // SAFETY: map values are plain data, read in place.
    unsafe { IFACES6.get(ifindex) }
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

/// Where an IPv6 packet from a container goes.
pub enum Destination6 {
    /// The gateway, a link-local or a multicast address: the host stack (nothing link-scoped
    /// crosses to another container: each sits on a link of its own with the host).
    Host,
    /// Another container of the same network.
    Member(Endpoint6),
    /// Anything else: out of the uplink, or the host stack.
    Outside,
}

#[inline(always)]
pub fn destination6(ip: &Ipv6, source: &Endpoint6) -> Result<Destination6, DropReason> {
    if ip.daddr == source.gateway || ipv6::is_link_local(&ip.daddr) || ipv6::is_multicast(&ip.daddr) {
        return Ok(Destination6::Host);
    }
    Ok(match member6(source.network_id, &ip.daddr)? {
        Some(dest) => Destination6::Member(dest),
        None => Destination6::Outside,
    })
}

/// Rewrites the Ethernet header as the destination's gateway would and redirects into the
/// destination container's namespace, skipping the host stack.
#[inline(always)]
pub fn deliver<P: Packet>(ctx: &P, dest: &impl Veth) -> Result<i32, DropReason> {
    // Re-derived here: checksum helpers called before invalidate earlier packet pointers.
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: bounds-checked by `ptr_at`.
    unsafe {
        (*eth).dst_addr = dest.mac();
        (*eth).src_addr = dest.gateway_mac();
    }
    let action = ctx.redirect_into_container(dest.host_ifindex())?;
    crate::counters::count_received(ctx, dest);
    Ok(action)
}

/// Delivers to the container behind a host-side veth.
#[inline(always)]
pub fn deliver_to_ifindex<P: Packet>(ctx: &P, ifindex: u32) -> Result<i32, DropReason> {
    let dest = endpoint_on(ifindex).ok_or(DropReason::UnknownInterface)?;
    deliver(ctx, &dest)
}
