//! Connection tracking: the tuple of a packet, the entries of its flow (one per direction, in
//! the LRU map `CT`), per-packet accounting, and the fill limit that keeps new flows from
//! evicting established ones. Expiry (timeouts by TCP state) is the agent's job.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use datapath_common::{ct_fill, ct_tcp_flags, CtEntry, CtKey, DropReason, HostConfig, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    fragment,
    maps::{CT, CT_FILL},
    packet::{ptr_at, Ipv4, Packet},
};

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_ECHO_REQUEST: u8 = 8;

/// The conntrack key of a packet, as it travels, and the TCP flags it carries (as
/// `ct_tcp_flags`). ICMP echo uses its identifier as the requester's port. A later fragment
/// has the ports its first fragment had (see `fragment`).
#[inline(always)]
pub fn key_of<P: Packet>(ctx: &P, ip: &Ipv4) -> Result<(CtKey, u8), DropReason> {
    let mut key = CtKey { saddr: ip.saddr, daddr: ip.daddr, proto: ip.proto, ..Default::default() };
    if ip.later_fragment {
        let ports = fragment::ports_of_later(ip).ok_or(DropReason::FragmentWithoutFirst)?;
        key.sport = ports.sport;
        key.dport = ports.dport;
        return Ok((key, 0));
    }
    let mut flags = 0;
    match ip.proto {
        // Whole headers (through the checksum fields) are checked here, before any flow is
        // tracked: a cut-short header must not take a NAT port and then fail half-rewritten.
        IPPROTO_TCP => {
            let tcp: *const [u8; 20] = ptr_at(ctx, ip.l4_off)?;
            // SAFETY: bounds-checked by `ptr_at`.
            let tcp = unsafe { &*tcp };
            key.sport = u16::from_ne_bytes([tcp[0], tcp[1]]);
            key.dport = u16::from_ne_bytes([tcp[2], tcp[3]]);
            flags = tcp_flags(tcp[13]);
        }
        IPPROTO_UDP => {
            let udp: *const [u16; 4] = ptr_at(ctx, ip.l4_off)?;
            // SAFETY: bounds-checked by `ptr_at`.
            let ports = unsafe { *udp };
            key.sport = ports[0];
            key.dport = ports[1];
        }
        IPPROTO_ICMP => {
            let icmp: *const [u8; 8] = ptr_at(ctx, ip.l4_off)?;
            // SAFETY: bounds-checked by `ptr_at`.
            let icmp = unsafe { &*icmp };
            let id = u16::from_ne_bytes([icmp[4], icmp[5]]);
            match icmp[0] {
                ICMP_ECHO_REQUEST => key.sport = id,
                ICMP_ECHO_REPLY => key.dport = id,
                _ => return Err(DropReason::UnsupportedL4),
            }
        }
        _ => return Err(DropReason::UnsupportedL4),
    }
    Ok((key, flags))
}

/// Maps the TCP header's flag byte to the flags conntrack keeps.
#[inline(always)]
fn tcp_flags(raw: u8) -> u8 {
    const FIN: u8 = 0x01;
    const SYN: u8 = 0x02;
    const RST: u8 = 0x04;
    const ACK: u8 = 0x10;
    let mut flags = 0;
    if raw & SYN != 0 {
        flags |= ct_tcp_flags::SYN;
    }
    if raw & ACK != 0 {
        flags |= ct_tcp_flags::ACK;
    }
    if raw & FIN != 0 {
        flags |= ct_tcp_flags::FIN;
    }
    if raw & RST != 0 {
        flags |= ct_tcp_flags::RST;
    }
    flags
}

#[inline(always)]
pub fn lookup(key: &CtKey) -> Option<*mut CtEntry> {
    CT.get_ptr_mut(key)
}

/// Accounts one packet of `len` bytes to an entry.
#[inline(always)]
pub fn touch(entry: *mut CtEntry, len: u32, tcp_flags: u8) {
    // SAFETY: a live map value; concurrent updates from other CPUs may lose an increment,
    // which only makes the counters approximate.
    unsafe {
        (*entry).packets += 1;
        (*entry).bytes += len as u64;
        (*entry).last_seen_ns = bpf_ktime_get_ns();
        if (*entry).tcp_flags | tcp_flags != (*entry).tcp_flags {
            (*entry).tcp_flags |= tcp_flags;
        }
    }
}

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// Refuses a new flow when the table holds as many entries as the agent allows.
#[inline(always)]
pub fn reserve(cfg: &HostConfig) -> Result<(), DropReason> {
    let inserted = CT_FILL.get(ct_fill::INSERTED).copied().unwrap_or(0);
    let removed = CT_FILL.get(ct_fill::REMOVED).copied().unwrap_or(0);
    if inserted.saturating_sub(removed) + 2 > cfg.ct_limit as u64 {
        return Err(DropReason::ConntrackFull);
    }
    Ok(())
}

/// Records `n` new entries.
#[inline(always)]
pub fn account_inserted(n: u64) {
    if let Some(slot) = CT_FILL.get_ptr_mut(ct_fill::INSERTED) {
        // SAFETY: an aligned u64 map value. core's atomics are not available for the bpf
        // target, so the BPF atomic add instruction is written out.
        unsafe {
            core::arch::asm!("lock *(u64 *)({0} + 0) += {1}", in(reg) slot, in(reg) n);
        }
    }
}
