//! Fragments of translated flows, of either family. Only a datagram's first fragment carries
//! the L4 header, so only it has the ports that find the flow; the later ones are found by
//! what all fragments of a datagram share (addresses, identification, protocol; RFC 791 and
//! RFC 8200 section 4.5), as Cilium's ipv4_frag does: the first fragment of a tracked flow
//! leaves its ports in `FRAGS` (IPv4) or `FRAGS6` (IPv6) for the rest.
//!
//! There is no reassembly queue: a later fragment that arrives before its first has no ports
//! yet. From a container it is dropped (`fragment_without_first`, `ipv6_later_fragment`; its
//! sender's stack fragments in order, so this takes reordering on the veth); on the uplink it
//! is the host's.
use aya_ebpf::{bindings::BPF_ANY, maps::LruHashMap};
use datapath_common::{CtKeyOf, FragKey, FragKey6, FragPorts};

use crate::{
    ipv6::Ipv6,
    maps::{FRAGS, FRAGS6},
    packet::Ipv4,
};

/// A family's header, as far as its fragments are concerned: the key its datagram's fragments
/// share, and the map that keeps the first fragment's ports.
pub trait Fragments {
    type Key: 'static;
    fn fragment_key(&self) -> Self::Key;
    fn is_first_fragment(&self) -> bool;
    fn fragments_map() -> &'static LruHashMap<Self::Key, FragPorts>;
}

impl Fragments for Ipv4 {
    type Key = FragKey;

    #[inline(always)]
    fn fragment_key(&self) -> FragKey {
        FragKey { saddr: self.saddr, daddr: self.daddr, id: self.id, proto: self.proto, _pad: 0 }
    }

    #[inline(always)]
    fn is_first_fragment(&self) -> bool {
        self.first_fragment
    }

    #[inline(always)]
    fn fragments_map() -> &'static LruHashMap<FragKey, FragPorts> {
        &FRAGS
    }
}

impl Fragments for Ipv6 {
    type Key = FragKey6;

    #[inline(always)]
    fn fragment_key(&self) -> FragKey6 {
        FragKey6 { saddr: self.saddr, daddr: self.daddr, id: self.fragment_id, proto: self.next_header, _pad: [0; 3] }
    }

    #[inline(always)]
    fn is_first_fragment(&self) -> bool {
        self.first_fragment
    }

    #[inline(always)]
    fn fragments_map() -> &'static LruHashMap<FragKey6, FragPorts> {
        &FRAGS6
    }
}

/// Remembers the ports of a tracked flow's first fragment for the fragments that follow.
#[inline(always)]
pub fn remember_ports<H: Fragments, A>(ip: &H, key_of_flow: &CtKeyOf<A>) {
    if ip.is_first_fragment() {
        let ports = FragPorts { sport: key_of_flow.sport, dport: key_of_flow.dport };
        // A full map evicts its oldest datagram; a failure leaves the later fragments to
        // their fate above, which is the best that can be done anyway.
        let _ = H::fragments_map().insert(&ip.fragment_key(), &ports, BPF_ANY as u64);
    }
}

/// The ports of a later fragment's datagram, from its first fragment.
#[inline(always)]
pub fn ports_of_later<H: Fragments>(ip: &H) -> Option<FragPorts> {
    // SAFETY: plain data, copied out at once.
    unsafe { H::fragments_map().get(&ip.fragment_key()) }.copied()
}
