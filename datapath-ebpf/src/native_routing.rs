//! Native routing, Kubernetes' model across nodes (`--cluster-cidr`, Cilium's native-routing
//! CIDR): pods keep their addresses between nodes. A container's packet to the cluster CIDR
//! (a pod of another node) is routed out of the uplink as the kernel's routing table says,
//! untranslated and untracked; a packet on the uplink for a container of this host inside the
//! cluster CIDR is delivered into it. Routes to the other nodes' pod subnets are the host's
//! (or its routing daemon's) business, as with Cilium's native routing.
//!
//! Nothing is tracked: both directions are stateless, so a flow between two pods costs no
//! conntrack entry on either node, and its packets are only re-addressed at the Ethernet
//! layer and have their TTL decremented, as any router does.
use datapath_common::{host_config_flags, Counter, DropReason, HostConfig};

use crate::{
    conntrack::{self, key_of},
    counters::count,
    csum::{L4Offsets, Rewrite},
    fib::{self, FibResult},
    forward, icmp,
    maps::{config_ref, ENDPOINTS},
    nat,
    packet::{Ipv4, Packet},
};

/// A container's packet to the cluster CIDR, outside its own network: routed out of the
/// uplink with the next hop's MACs and TTL - 1, nothing else changed, whatever it carries
/// (an ICMP error, another protocol, a later fragment, an answer to a flow nobody tracks).
/// The one exception is a flow of another node's pod to a published port of this host: its
/// replies, and the container's ICMP errors about it, are translated back as its flow's.
#[inline(always)]
pub fn from_container<P: Packet>(ctx: &P, ip: &Ipv4) -> Result<i32, DropReason> {
    let cfg = match config_ref() {
        // Without an uplink nothing is routed by bpfnet; TTL 1 is answered by the host stack
        // (ICMP time exceeded).
        Some(cfg) if cfg.uplink_ifindex != 0 && ip.ttl > 1 => cfg,
        _ => {
            count(Counter::ToHost);
            return Ok(P::PASS);
        }
    };
    if icmp::is_error(ctx, ip) {
        if let Some(action) = icmp::translate(ctx, ip, icmp::Origin::Container)? {
            return Ok(action);
        }
    } else if let Ok((key, tcp_flags)) = key_of(ctx, ip) {
        if let Some(found) = conntrack::lookup(&key) {
            return nat::forward_tracked(ctx, ip, &key, found, tcp_flags);
        }
    }
    // Ports are left out: they only pick among equal-cost routes, and a later fragment or an
    // ICMP error has none.
    match fib::route_between(ctx, ip.saddr, ip.daddr, ip.proto, 0, 0) {
        FibResult::Forward(hop) if hop.ifindex == cfg.uplink_ifindex => {
            decrement_ttl(ctx, ip)?;
            count(Counter::RoutedNative);
            fib::send(ctx, &hop)
        }
        // A host address inside the cluster CIDR (another network's gateway): the same rule
        // as for any host address.
        FibResult::Local if cfg.flags & host_config_flags::ALLOW_HOST_ACCESS == 0 => Err(DropReason::HostAccessDenied),
        // Routed elsewhere than the uplink, or not at all: the host stack decides.
        _ => {
            count(Counter::ToHost);
            Ok(P::PASS)
        }
    }
}

/// A packet on the uplink for a container of this host inside the cluster CIDR: delivered
/// into it with TTL - 1, untranslated. `None`: not such a packet (not native routing's).
///
/// Runs before conntrack: no tracked flow has a container's address as its destination on
/// the uplink (replies to masqueraded flows come to the uplink's address, flows to published
/// ports to a host address), so the lookup would only cost.
#[inline(always)]
pub fn to_container<P: Packet>(ctx: &P, ip: &Ipv4, cfg: &HostConfig) -> Option<Result<i32, DropReason>> {
    if !cfg.in_cluster(ip.daddr) {
        return None;
    }
    // SAFETY: map values are plain data; copied out at once.
    let dest = unsafe { ENDPOINTS.get(ip.daddr) }.copied()?;
    Some(deliver(ctx, ip, &dest))
}

#[inline(always)]
fn deliver<P: Packet>(ctx: &P, ip: &Ipv4, dest: &datapath_common::Endpoint) -> Result<i32, DropReason> {
    // Anti-spoofing on the way in: a container of this host sends from its own veth, never
    // from outside. (Its own packets are checked on its veth, `forward::check_source`.)
    // SAFETY: as above.
    if unsafe { ENDPOINTS.get(ip.saddr) }.is_some() {
        return Err(DropReason::UplinkSpoofedPod);
    }
    // TTL 1 is not forwarded: the host stack answers with ICMP time exceeded.
    if ip.ttl <= 1 {
        count(Counter::UplinkToHost);
        return Ok(P::PASS);
    }
    decrement_ttl(ctx, ip)?;
    count(Counter::DeliveredNative);
    forward::deliver(ctx, dest)
}

/// TTL - 1 with the IP header checksum; nothing else of the packet changes.
#[inline(always)]
fn decrement_ttl<P: Packet>(ctx: &P, ip: &Ipv4) -> Result<(), DropReason> {
    let mut rewrite = Rewrite::new(ip.l4_off, L4Offsets::ABSENT);
    rewrite.decrement_ttl(ctx, ip)?;
    rewrite.commit(ctx)
}
