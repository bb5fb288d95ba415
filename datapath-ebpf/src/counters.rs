//! Drop reasons and event counters: every verdict other than "pass" is counted.
use datapath_common::{Counter, DropReason};

use crate::{
    events,
    forward::{self, Veth},
    maps::{COUNTERS, DROPS, ENDPOINT_DROPS, ENDPOINT_STATS},
    packet::Packet,
};

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
pub fn count_drop<P: Packet>(ctx: &P, reason: DropReason) {
    if let Some(slot) = DROPS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *slot += 1 };
    }
    events::drop(ctx, reason);
}

/// Counts a drop of `from_endpoint` as the sending container's too. Only that program calls
/// it: the uplink's drops are nobody's, and a flood of them pays no lookup for it.
#[inline(always)]
pub fn count_endpoint_drop<P: Packet>(ctx: &P) {
    if let Some(endpoint) = forward::endpoint_on(ctx.ingress_ifindex()) {
        if let Some(slot) = ENDPOINT_DROPS.get_ptr_mut(endpoint.stats_slot) {
            // SAFETY: per-CPU slot, no concurrent writer on this CPU.
            unsafe { *slot += 1 };
        }
    }
}

/// Accounts a packet the endpoint sent.
#[inline(always)]
pub fn count_sent<P: Packet>(ctx: &P, endpoint: &impl Veth) {
    if let Some(stats) = ENDPOINT_STATS.get_ptr_mut(endpoint.stats_slot()) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe {
            (*stats).sent_packets += 1;
            (*stats).sent_bytes += ctx.len() as u64;
        }
    }
}

/// Accounts a packet delivered into the endpoint.
#[inline(always)]
pub fn count_received<P: Packet>(ctx: &P, endpoint: &impl Veth) {
    if let Some(stats) = ENDPOINT_STATS.get_ptr_mut(endpoint.stats_slot()) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe {
            (*stats).received_packets += 1;
            (*stats).received_bytes += ctx.len() as u64;
        }
    }
}
