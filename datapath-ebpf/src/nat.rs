//! Address translation. Every tracked flow has two conntrack entries, one per direction, each
//! holding the tuple its packets are rewritten to and where they go next (into a container, or
//! routed out of the uplink). One mechanism serves all three kinds of flow:
//! - SNAT: a container's flow to the outside gets the uplink's address and a free port;
//! - DNAT: a flow from outside to a published port is sent to the container behind it;
//! - hairpin: a container's flow to a published port of the host gets both, so the replies
//!   come back through the datapath rather than straight from the other container.
use aya_ebpf::helpers::bpf_get_prandom_u32;
use datapath_common::{
    ct_direction, ct_kind, host_config_flags, Counter, CtKey, CtKey6, CtQuotaKey, DropReason, Endpoint, Endpoint6,
    HostConfig, Ipv4Be, Ipv6Be, IPPROTO_ICMP, IPPROTO_ICMPV6,
};

use crate::{
    conntrack::{self, key_of, Family, Key, Quota, Tracked},
    counters::count,
    csum::Address,
    csum::L4Offsets,
    events, fib,
    fib_params::FibAddress,
    forward::deliver_to_ifindex,
    ip::Header,
    ipv6::{self, Ipv6},
    maps::{self, config, config_ref},
    packet::{Ipv4, Packet},
    published_ports::{self, Container},
};

/// A container's packet for a destination outside its network (the gateway and its own
/// network's members were handled before).
#[inline(always)]
pub fn from_container<P: Packet>(ctx: &P, ip: &Ipv4, source: &Endpoint) -> Result<i32, DropReason> {
    // The settings in place, not copied: this path is close to the verifier's stack limit.
    let cfg = match config_ref() {
        // TTL 1 must not be forwarded: the host stack answers with ICMP time exceeded. Without
        // an uplink, bpfnet translates nothing and the host decides.
        Some(cfg) if cfg.uplink_ifindex != 0 && ip.ttl > 1 => cfg,
        _ => {
            count(Counter::ToHost);
            return Ok(P::PASS);
        }
    };
    let (key, tcp_flags) = key_of(ctx, ip)?;
    if let Some(found) = conntrack::lookup(&key) {
        return forward_tracked(ctx, ip, &key, found, tcp_flags);
    }
    // Only a first fragment (or a whole datagram) starts a flow.
    if ip.later_fragment {
        return Err(DropReason::FragmentWithoutFirst);
    }
    if !conntrack::may_start(key.proto, tcp_flags) {
        return Err(DropReason::ConntrackInvalid);
    }
    // Broadcast, multicast and addresses that are never routed are the host's business, as on
    // a bridge: nothing of them leaves through the uplink. Nor does an echo reply with no flow
    // (a container can only answer pings that reached it through a tracked flow).
    if !routable(key.daddr) || (key.proto == IPPROTO_ICMP && key.sport == 0) {
        count(Counter::ToHost);
        return Ok(P::PASS);
    }
    // A container's new flows count against its own share of the unassured table.
    let quota = Quota { key: CtQuotaKey { addr: source.ip, ..Default::default() }, stats_slot: source.stats_slot };
    let found = if let Some(container) = published_ports::lookup(cfg, &key) {
        let to = CtKey { saddr: cfg.uplink_ip, daddr: container.ip, dport: container.port, ..key };
        new_flow(ctx, cfg, &key, to, container.host_ifindex, source.host_ifindex, ct_kind::HAIRPIN, &quota)?
    } else {
        match fib::route(ctx, &key) {
            fib::FibResult::Forward(hop) if hop.ifindex == cfg.uplink_ifindex => {}
            // The host's own addresses (other than the gateway, handled before) are off limits
            // unless the agent allows them.
            fib::FibResult::Local if cfg.flags & host_config_flags::ALLOW_HOST_ACCESS == 0 => {
                return Err(DropReason::HostAccessDenied);
            }
            // Not leaving through the uplink: not bpfnet's to translate.
            _ => {
                count(Counter::ToHost);
                return Ok(P::PASS);
            }
        }
        let to = CtKey { saddr: cfg.uplink_ip, ..key };
        new_flow(ctx, cfg, &key, to, 0, source.host_ifindex, ct_kind::SNAT, &quota)?
    };
    forward_tracked(ctx, ip, &key, found, tcp_flags)
}

/// A packet on the uplink: a packet of a tracked flow (a reply to a container's flow, or more
/// of a flow to a published port) is translated and delivered; a new flow to a published port
/// is tracked first; anything else is the host's and passes untouched.
///
/// The same for both families: IPv4's published ports are `SERVICES`' and its uplink address
/// CONFIG's, IPv6's `PUBLISHED6`'s and CONFIG6's.
#[inline(always)]
pub fn from_uplink<P: Packet, H: Header>(ctx: &P, ip: &H) -> Result<i32, DropReason>
where
    H::Addr: Published,
{
    let Ok((key, tcp_flags)) = key_of(ctx, ip) else {
        return Ok(to_host::<P>());
    };
    if let Some(found) = conntrack::lookup(&key) {
        return forward_tracked(ctx, ip, &key, found, tcp_flags);
    }
    // A SYN-ACK or RST that answers no tracked flow is the host's, as is a later fragment.
    if ip.later_fragment() || !conntrack::may_start(key.proto, tcp_flags) {
        return Ok(to_host::<P>());
    }
    let cfg = config();
    let Some((container, quota_addr)) = H::Addr::published(&cfg, &key) else {
        return Ok(to_host::<P>());
    };
    // The client's address is kept: the container sees who is calling. New flows to one
    // published port count against that port's share of the unassured table (by the
    // container's IPv4 address, whichever family the flow uses).
    let to = Key::<H::Addr> { daddr: container.ip, dport: container.port, ..key };
    let quota = Quota {
        key: CtQuotaKey { addr: quota_addr, port: container.port, proto: key.proto, _pad: 0 },
        stats_slot: container.stats_slot,
    };
    let found = new_flow(ctx, &cfg, &key, to, container.host_ifindex, 0, ct_kind::DNAT, &quota)?;
    forward_tracked(ctx, ip, &key, found, tcp_flags)
}

/// A family's published ports.
pub trait Published: Family + Address + FibAddress {
    /// The container a new flow to (daddr, dport, proto) is published to, and the IPv4
    /// address its quota key has.
    fn published(cfg: &HostConfig, key: &Key<Self>) -> Option<(Container<Self>, Ipv4Be)>;
}

impl Published for Ipv4Be {
    #[inline(always)]
    fn published(cfg: &HostConfig, key: &CtKey) -> Option<(Container, Ipv4Be)> {
        published_ports::lookup(cfg, key).map(|container| {
            let ip = container.ip;
            (container, ip)
        })
    }
}

impl Published for Ipv6Be {
    #[inline(always)]
    fn published(_cfg: &HostConfig, key: &CtKey6) -> Option<(Container<Ipv6Be>, Ipv4Be)> {
        published_ports::lookup6(&maps::config6_ref()?.uplink_ip, key)
    }
}

/// A container's IPv6 packet for a destination outside its network (NAT66 masquerade, as
/// Docker's ip6tables MASQUERADE): what leaves through the uplink is source-translated to
/// CONFIG6's uplink address and a port chosen as IPv4's are, and tracked; a published port
/// of the uplink's IPv6 address is a hairpin. Without an IPv6 uplink address nothing is
/// translated (the host stack decides), nor is a hop limit of 1 forwarded (the host stack
/// answers with Time Exceeded).
#[inline(always)]
pub fn from_container6<P: Packet>(ctx: &P, ip: &Ipv6, source: &Endpoint6) -> Result<i32, DropReason> {
    // The settings in place, not copied: the stack is tight with IPv6's wide keys.
    let (cfg, uplink_ip) = match (config_ref(), maps::config6_ref()) {
        (Some(cfg), Some(cfg6))
            if cfg.uplink_ifindex != 0 && !ipv6::is_unspecified(&cfg6.uplink_ip) && ip.hop_limit > 1 =>
        {
            (cfg, &cfg6.uplink_ip)
        }
        _ => {
            count(Counter::ToHost);
            return Ok(P::PASS);
        }
    };
    let (key, tcp_flags) = key_of(ctx, ip)?;
    if let Some(found) = conntrack::lookup(&key) {
        return forward_tracked(ctx, ip, &key, found, tcp_flags);
    }
    if !conntrack::may_start(key.proto, tcp_flags) {
        return Err(DropReason::ConntrackInvalid);
    }
    // Link-local, multicast, loopback and unspecified destinations never leave through the
    // uplink, nor does an echo reply with no flow.
    if !routable6(&key.daddr) || (key.proto == IPPROTO_ICMPV6 && key.sport == 0) {
        count(Counter::ToHost);
        return Ok(P::PASS);
    }
    // One share of the unassured table per container, whichever family: its IPv4 address.
    let quota = Quota { key: CtQuotaKey { addr: source.ip4, ..Default::default() }, stats_slot: source.stats_slot };
    let found = if let Some((container, _)) = published_ports::lookup6(uplink_ip, &key) {
        let to = CtKey6 { saddr: *uplink_ip, daddr: container.ip, dport: container.port, ..key };
        new_flow(ctx, cfg, &key, to, container.host_ifindex, source.host_ifindex, ct_kind::HAIRPIN, &quota)?
    } else {
        match fib::route(ctx, &key) {
            fib::FibResult::Forward(hop) if hop.ifindex == cfg.uplink_ifindex => {}
            fib::FibResult::Local if cfg.flags & host_config_flags::ALLOW_HOST_ACCESS == 0 => {
                return Err(DropReason::HostAccessDenied);
            }
            _ => {
                count(Counter::ToHost);
                return Ok(P::PASS);
            }
        }
        let to = CtKey6 { saddr: *uplink_ip, ..key };
        new_flow(ctx, cfg, &key, to, 0, source.host_ifindex, ct_kind::SNAT, &quota)?
    };
    forward_tracked(ctx, ip, &key, found, tcp_flags)
}

/// Whether an IPv6 destination can be routed to another host: not link-local (fe80::/10),
/// multicast (ff00::/8), loopback (::1) or unspecified (::).
#[inline(always)]
fn routable6(daddr: &Ipv6Be) -> bool {
    const LOOPBACK: Ipv6Be = datapath_common::ipv6_be([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    !(ipv6::is_link_local(daddr) || ipv6::is_multicast(daddr) || ipv6::is_unspecified(daddr) || *daddr == LOOPBACK)
}

/// Whether a destination can be routed to another host: not 0.0.0.0/8, loopback, link-local,
/// multicast, or the limited broadcast (what Linux refuses to forward as martian or local).
#[inline(always)]
fn routable(daddr: u32) -> bool {
    let first = daddr.to_ne_bytes();
    !(first[0] == 0 || first[0] == 127 || (first[0] == 169 && first[1] == 254) || first[0] >= 224)
}

#[inline(always)]
pub fn to_host<P: Packet>() -> i32 {
    count(Counter::UplinkToHost);
    P::PASS
}

/// Tracks a new flow: the entry of this direction (`key` -> `to`, sent on to `ifindex`) and of
/// the other (`to` reversed -> `key` reversed, sent on to `reply_ifindex`), in the unassured
/// table its quota allows. Its first packet's flags are recorded as it is forwarded. Where the source is translated, its port is chosen so that the
/// other direction's key is unique, which the claim checks atomically: two CPUs can never get
/// the same port.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn new_flow<P: Packet, A: Family>(
    ctx: &P,
    cfg: &HostConfig,
    key: &Key<A>,
    mut to: Key<A>,
    ifindex: u32,
    reply_ifindex: u32,
    kind: u8,
    quota: &Quota,
) -> Result<Tracked<A>, DropReason> {
    let table = conntrack::table_for_new(cfg, quota);
    let now = conntrack::now();
    let allocate = to.saddr != key.saddr;
    let span = (cfg.nat_port_max as u32).saturating_sub(cfg.nat_port_min as u32) + 1;
    // SAFETY: helper without arguments.
    let start = unsafe { bpf_get_prandom_u32() } % span;
    let probes = if allocate { A::NAT_PORT_PROBES } else { 1 };
    // The container's own port first, as nf_nat keeps it when the translated tuple is free:
    // a client cycling through its ephemeral range to one destination then needs no more
    // ports than it has, where random picks alone run out once most of the range is held
    // by its recent flows (seen at 18,000 connections a second).
    let original = u16::from_be(key.sport) as u32;
    let keep_original = original >= cfg.nat_port_min as u32 && original <= cfg.nat_port_max as u32;
    for probe in 0..probes {
        if allocate {
            let port =
                if probe == 0 && keep_original { original } else { cfg.nat_port_min as u32 + (start + probe) % span };
            to.sport = (port as u16).to_be();
        }
        let reply_key = to.reversed();
        let claimed = A::with_new_entry(|reply| {
            reply.last_seen_ns = now;
            reply.to = key.reversed();
            reply.ifindex = reply_ifindex;
            reply.direction = ct_direction::REPLY;
            reply.kind = kind;
            conntrack::claim(table, &reply_key, reply)
        });
        if !claimed.ok_or(DropReason::ConntrackInsertFailed)? {
            continue;
        }
        let completed = A::with_new_entry(|entry| {
            entry.last_seen_ns = now;
            entry.to = to;
            entry.ifindex = ifindex;
            entry.direction = ct_direction::ORIGINAL;
            entry.kind = kind;
            conntrack::complete(table, key, entry, &reply_key)
        });
        if !completed.ok_or(DropReason::ConntrackInsertFailed)? {
            // Another CPU tracked this flow meanwhile: use its entry.
            return conntrack::lookup(key).ok_or(DropReason::ConntrackInsertFailed);
        }
        conntrack::quota_take(table, &quota.key);
        if let (Some(tuple), Some(translated)) = (A::event_tuple(key), A::event_tuple(&to)) {
            events::new_flow(ctx, kind, tuple, translated);
        }
        count(match kind {
            ct_kind::SNAT => Counter::SnatNewFlow,
            ct_kind::DNAT => Counter::DnatNewFlow,
            _ => Counter::HairpinNewFlow,
        });
        return conntrack::lookup_in(table, key).ok_or(DropReason::ConntrackInsertFailed);
    }
    Err(if allocate { DropReason::NatPortsExhausted } else { DropReason::ConntrackInsertFailed })
}

/// Rewrites a packet of a tracked flow (of either family) to its entry's tuple and sends it on.
#[inline(always)]
pub fn forward_tracked<P: Packet, H: Header>(
    ctx: &P,
    ip: &H,
    key: &Key<H::Addr>,
    found: Tracked<H::Addr>,
    tcp_flags: u8,
) -> Result<i32, DropReason> {
    let entry = conntrack::account(key, found, ctx.len(), tcp_flags);
    ip.remember_ports(key);
    rewrite(ctx, ip, key, &entry.to)?;
    if entry.ifindex != 0 {
        count(Counter::TranslatedIn);
        return deliver_to_ifindex(ctx, entry.ifindex);
    }
    match fib::lookup(ctx, &entry.to) {
        Some(hop) => {
            count(Counter::TranslatedOut);
            fib::send(ctx, &hop)
        }
        None => {
            count(Counter::ToHost);
            Ok(P::PASS)
        }
    }
}

/// Rewrites addresses and ports from `from` to `to` and decrements the TTL or hop limit
/// (unless it is 1: then the packet is not forwarded by the host anyway), with their
/// checksums. A later fragment has only addresses: its datagram's ports and L4 checksum
/// (which covers the whole datagram) were rewritten in the first fragment.
#[inline(always)]
fn rewrite<P: Packet, H: Header>(ctx: &P, ip: &H, from: &Key<H::Addr>, to: &Key<H::Addr>) -> Result<(), DropReason> {
    let later_fragment = ip.later_fragment();
    let l4 = if later_fragment { L4Offsets::ABSENT } else { L4Offsets::of(from.proto)? };
    let mut rewrite = ip.rewrite(l4);
    rewrite.addr(ctx, H::SADDR_OFF, from.saddr, to.saddr)?;
    rewrite.addr(ctx, H::DADDR_OFF, from.daddr, to.daddr)?;
    if !later_fragment {
        let l4_off = ip.l4_off();
        rewrite.l4_u16(ctx, l4_off + l4.sport, from.sport, to.sport)?;
        rewrite.l4_u16(ctx, l4_off + l4.dport, from.dport, to.dport)?;
    }
    if ip.hop_limit() > 1 {
        ip.decrement_hop_limit(ctx, &mut rewrite)?;
    }
    rewrite.commit(ctx)
}
