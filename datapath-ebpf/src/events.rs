//! Events for `bpfnet monitor`: a drop, or a new translated flow, written to the `EVENTS`
//! ring buffer for the agent. Nothing is written unless the agent set the event kind's bit in
//! CONFIG (someone listens): off, an event costs the load of the flags and a branch. On, each
//! CPU spends from a token bucket, so a flood writes a bounded number of events; what is not
//! written is counted by cause (`EVENTS_LOST`) and reported to the listeners.
use aya_ebpf::{helpers::bpf_ktime_get_ns, maps::ring_buf::RingBufEntry};
use datapath_common::{event_kind, host_config_flags, CtKey, DatapathEvent, DropReason, EventBudget, EventLoss};
use network_types::eth::{EthHdr, EtherType};

use crate::{
    maps::{CONFIG, EVENTS, EVENTS_LOST, EVENT_BUDGET},
    packet::{self, Packet},
};

/// Whether the agent asked for events of this kind (a `host_config_flags::EVENTS_*` bit).
#[inline(always)]
fn wanted(flag: u32) -> bool {
    CONFIG.get(0).is_some_and(|config| config.flags & flag != 0)
}

/// Reports a dropped packet, with its addresses, ports and protocol where it has them.
#[inline(always)]
pub fn drop<P: Packet>(ctx: &P, reason: DropReason) {
    if !wanted(host_config_flags::EVENTS_DROPS) {
        return;
    }
    let Some(mut entry) = reserve() else { return };
    let event = entry.as_mut_ptr();
    // SAFETY: the entry is a reserved, exclusively ours `DatapathEvent` of the ring buffer;
    // every field is written (straight into the ring: the programs have little stack left).
    unsafe {
        core::ptr::write_bytes(event, 0, 1);
        (*event).kind = event_kind::DROP;
        (*event).detail = reason as u8;
        (*event).ifindex = ctx.ingress_ifindex();
        (*event).len = ctx.len();
        write_tuple(ctx, &mut (*event).tuple);
    }
    entry.submit(0);
}

/// Reports a new translated flow: its first packet's tuple, and that tuple translated.
#[inline(always)]
pub fn new_flow<P: Packet>(ctx: &P, kind: u8, tuple: &CtKey, translated: &CtKey) {
    if !wanted(host_config_flags::EVENTS_FLOWS) {
        return;
    }
    let Some(mut entry) = reserve() else { return };
    let event = entry.as_mut_ptr();
    // SAFETY: as in `drop`.
    unsafe {
        core::ptr::write_bytes(event, 0, 1);
        (*event).kind = event_kind::NEW_FLOW;
        (*event).detail = kind;
        (*event).ifindex = ctx.ingress_ifindex();
        (*event).len = ctx.len();
        (*event).tuple = *tuple;
        (*event).translated = *translated;
    }
    entry.submit(0);
}

/// Addresses, protocol and ports of an IPv4 packet as far as it has them, into `tuple`
/// (zeroed): a drop may be of a packet too short or not IPv4 at all.
#[inline(always)]
fn write_tuple<P: Packet>(ctx: &P, tuple: &mut CtKey) {
    let Ok(eth) = packet::ptr_at::<P, EthHdr>(ctx, 0) else { return };
    // SAFETY: `ptr_at` checked that the header lies inside the packet.
    if unsafe { (*eth).ether_type } != EtherType::Ipv4 as u16 {
        return;
    }
    let Ok(ip) = packet::ipv4(ctx) else { return };
    tuple.saddr = ip.saddr;
    tuple.daddr = ip.daddr;
    tuple.proto = ip.proto;
    let has_ports = matches!(ip.proto, datapath_common::IPPROTO_TCP | datapath_common::IPPROTO_UDP);
    if has_ports && !ip.later_fragment {
        // TCP and UDP both start with the source and destination ports.
        if let Ok(ports) = packet::ptr_at::<P, [u16; 2]>(ctx, ip.l4_off) {
            // SAFETY: bounds-checked by `ptr_at`; packet fields need not be aligned.
            let [sport, dport] = unsafe { ports.read_unaligned() };
            tuple.sport = sport;
            tuple.dport = dport;
        }
    }
}

/// A slot of the ring buffer for one event, if this CPU's budget has a token and the ring
/// has room; otherwise the loss is counted by its cause.
#[inline(always)]
fn reserve() -> Option<RingBufEntry<DatapathEvent>> {
    if !take_token() {
        lost(EventLoss::RateLimited);
        return None;
    }
    let entry = EVENTS.reserve::<DatapathEvent>(0);
    if entry.is_none() {
        lost(EventLoss::RingFull);
    }
    entry
}

#[inline(always)]
fn take_token() -> bool {
    let Some(budget) = EVENT_BUDGET.get_ptr_mut(0) else { return false };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: per-CPU slot, no concurrent writer on this CPU.
    let budget = unsafe { &mut *budget };
    let earned = now.saturating_sub(budget.refilled_ns) / EventBudget::NS_PER_EVENT;
    if earned > 0 {
        budget.tokens = (budget.tokens + earned).min(EventBudget::BURST);
        budget.refilled_ns = now;
    }
    if budget.tokens == 0 {
        return false;
    }
    budget.tokens -= 1;
    true
}

#[inline(always)]
fn lost(cause: EventLoss) {
    if let Some(slot) = EVENTS_LOST.get_ptr_mut(cause as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *slot += 1 };
    }
}
