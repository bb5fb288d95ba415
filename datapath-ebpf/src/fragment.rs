//! IPv4 fragments of translated flows. Only a datagram's first fragment carries the L4 header,
//! so only it has the ports that find the flow; the later ones are found by what all fragments
//! of a datagram share (addresses, identification, protocol; RFC 791), as Cilium's ipv4_frag
//! does: the first fragment of a tracked flow leaves its ports in `FRAGS` for the rest.
//!
//! There is no reassembly queue: a later fragment that arrives before its first has no ports
//! yet. From a container it is dropped (`fragment_without_first`; its sender's stack
//! fragments in order, so this takes reordering on the veth); on the uplink it is the host's.
use aya_ebpf::bindings::BPF_ANY;
use datapath_common::{CtKey, FragKey, FragPorts};

use crate::{maps::FRAGS, packet::Ipv4};

#[inline(always)]
fn key(ip: &Ipv4) -> FragKey {
    FragKey { saddr: ip.saddr, daddr: ip.daddr, id: ip.id, proto: ip.proto, _pad: 0 }
}

/// Remembers the ports of a tracked flow's first fragment for the fragments that follow.
#[inline(always)]
pub fn remember_ports(ip: &Ipv4, key_of_flow: &CtKey) {
    if ip.first_fragment {
        let ports = FragPorts { sport: key_of_flow.sport, dport: key_of_flow.dport };
        // A full map evicts its oldest datagram; a failure leaves the later fragments to
        // their fate above, which is the best that can be done anyway.
        let _ = FRAGS.insert(&key(ip), &ports, BPF_ANY as u64);
    }
}

/// The ports of a later fragment's datagram, from its first fragment.
#[inline(always)]
pub fn ports_of_later(ip: &Ipv4) -> Option<FragPorts> {
    // SAFETY: plain data, copied out at once.
    unsafe { FRAGS.get(&key(ip)) }.copied()
}
