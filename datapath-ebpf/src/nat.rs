//! Source NAT (masquerade) to the uplink's address: flows leaving through the uplink get the
//! uplink's address and a free port from the configured range; their replies are translated
//! back and delivered straight into the container.
use aya_ebpf::{
    bindings::{BPF_NOEXIST, TC_ACT_OK},
    helpers::bpf_get_prandom_u32,
    programs::TcContext,
};
use datapath_common::{ct_direction, Counter, CtEntry, CtKey, DropReason, HostConfig, IPPROTO_ICMP};

use crate::{
    conntrack::{self, key_of, reply_key},
    counters::count,
    csum::{self, L4Csum},
    fib,
    forward::deliver_to_ifindex,
    maps::{config, CT},
    packet::{ingress_ifindex, Ipv4, IP_DADDR_OFF, IP_SADDR_OFF},
};

/// How many ports are tried, from a random start, before a new flow is refused.
const NAT_PORT_PROBES: u32 = 32;

/// Offset of the field a translation rewrites: the port, or the ICMP echo identifier.
#[inline(always)]
fn port_offset(proto: u8, l4_off: usize, source: bool) -> usize {
    match (proto, source) {
        (IPPROTO_ICMP, _) => l4_off + 4,
        (_, true) => l4_off,
        (_, false) => l4_off + 2,
    }
}

/// A container's packet for a destination outside its network: translated and sent out of
/// the uplink when the routing table says it leaves that way; otherwise the host decides.
#[inline(always)]
pub fn snat_egress(ctx: &TcContext, ip: &Ipv4) -> Result<i32, DropReason> {
    let cfg = config();
    // TTL 1 must not be forwarded: the host stack answers with ICMP time exceeded.
    if cfg.uplink_ifindex == 0 || ip.ttl <= 1 {
        count(Counter::ToHost);
        return Ok(TC_ACT_OK);
    }
    let (key, tcp_flags) = key_of(ctx, ip)?;
    let hop = match fib::lookup(ctx, &key) {
        Some(hop) if hop.ifindex == cfg.uplink_ifindex => hop,
        _ => {
            count(Counter::ToHost);
            return Ok(TC_ACT_OK);
        }
    };
    let (nat_addr, nat_port) = translation(ctx, &cfg, &key, tcp_flags)?;
    let l4 = L4Csum::of(key.proto, ip.l4_off)?;
    csum::set_addr(ctx, IP_SADDR_OFF, key.saddr, nat_addr, &l4)?;
    csum::set_l4_u16(ctx, port_offset(key.proto, ip.l4_off, true), key.sport, nat_port, &l4)?;
    csum::decrement_ttl(ctx, ip)?;
    count(Counter::SnatEgress);
    fib::send(ctx, &hop)
}

/// The uplink address and port of a flow: its entry's, or a new pair of entries.
#[inline(always)]
fn translation(ctx: &TcContext, cfg: &HostConfig, key: &CtKey, tcp_flags: u8) -> Result<(u32, u16), DropReason> {
    let len = ctx.len();
    if let Some(entry) = conntrack::lookup(key) {
        conntrack::touch(entry, len, tcp_flags);
        // SAFETY: a live map value.
        return Ok(unsafe { ((*entry).nat_addr, (*entry).nat_port) });
    }
    conntrack::reserve(cfg)?;
    let now = conntrack::now();
    let span = (cfg.nat_port_max as u32).saturating_sub(cfg.nat_port_min as u32) + 1;
    // SAFETY: helper without arguments.
    let start = unsafe { bpf_get_prandom_u32() } % span;
    for probe in 0..NAT_PORT_PROBES {
        let port = ((cfg.nat_port_min as u32 + (start + probe) % span) as u16).to_be();
        let reply = reply_key(key, cfg.uplink_ip, port);
        let back = CtEntry {
            last_seen_ns: now,
            nat_addr: key.saddr,
            nat_port: key.sport,
            direction: ct_direction::REPLY,
            ifindex: ingress_ifindex(ctx),
            ..Default::default()
        };
        // NOEXIST makes the port claim atomic: two CPUs can never get the same one.
        if CT.insert(&reply, &back, BPF_NOEXIST as u64).is_err() {
            continue;
        }
        let forth = CtEntry {
            last_seen_ns: now,
            packets: 1,
            bytes: len as u64,
            nat_addr: cfg.uplink_ip,
            nat_port: port,
            direction: ct_direction::ORIGINAL,
            tcp_flags,
            ..Default::default()
        };
        if CT.insert(key, &forth, BPF_NOEXIST as u64).is_err() {
            // Another CPU created this flow meanwhile: give the port back, use its translation.
            let _ = CT.remove(&reply);
            let entry = conntrack::lookup(key).ok_or(DropReason::ConntrackFull)?;
            // SAFETY: a live map value.
            return Ok(unsafe { ((*entry).nat_addr, (*entry).nat_port) });
        }
        conntrack::account_inserted(2);
        count(Counter::SnatNewFlow);
        return Ok((cfg.uplink_ip, port));
    }
    Err(DropReason::NatPortsExhausted)
}

/// A packet on the uplink addressed to the uplink: a reply of a translated flow is translated
/// back and delivered to its container; anything else is the host's.
#[inline(always)]
pub fn snat_reply(ctx: &TcContext, ip: &Ipv4) -> Result<i32, DropReason> {
    let Ok((key, tcp_flags)) = key_of(ctx, ip) else {
        return Ok(to_host());
    };
    let Some(entry) = conntrack::lookup(&key) else {
        return Ok(to_host());
    };
    // SAFETY: a live map value, copied out.
    let back = unsafe { *entry };
    if back.direction != ct_direction::REPLY {
        return Ok(to_host());
    }
    conntrack::touch(entry, ctx.len(), tcp_flags);
    let l4 = L4Csum::of(key.proto, ip.l4_off)?;
    csum::set_addr(ctx, IP_DADDR_OFF, key.daddr, back.nat_addr, &l4)?;
    csum::set_l4_u16(ctx, port_offset(key.proto, ip.l4_off, false), key.dport, back.nat_port, &l4)?;
    if ip.ttl > 1 {
        csum::decrement_ttl(ctx, ip)?;
    }
    count(Counter::SnatReply);
    deliver_to_ifindex(ctx, back.ifindex)
}

#[inline(always)]
pub fn to_host() -> i32 {
    count(Counter::UplinkToHost);
    TC_ACT_OK
}
