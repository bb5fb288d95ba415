//! The IP header of either family as conntrack and the translation see it: what they read of
//! a parsed header (`packet::Ipv4`, `packet::Ipv6`) and where they write, so that they are
//! written once for both families.
use datapath_common::{CtKeyOf, DropReason, FragPorts, Ipv4Be, Ipv6Be};

use crate::{
    conntrack::Family,
    csum::{Address, L4Offsets, Rewrite},
    fib_params::FibAddress,
    fragment,
    ipv6::{Ipv6, IP6_OFF},
    packet::{Ipv4, Packet, IPV4_DADDR_OFF, IPV4_SADDR_OFF, IPV6_DADDR_OFF, IPV6_SADDR_OFF, IP_OFF},
};

/// A parsed IP header.
pub trait Header {
    type Addr: Family + Address + FibAddress;
    /// Offsets of the source and destination addresses in the frame.
    const SADDR_OFF: usize;
    const DADDR_OFF: usize;

    fn saddr(&self) -> Self::Addr;
    fn daddr(&self) -> Self::Addr;
    /// The L4 protocol (IPv6: the upper-layer header, after any extension headers).
    fn proto(&self) -> u8;
    /// IPv4's TTL or IPv6's hop limit.
    fn hop_limit(&self) -> u8;
    fn l4_off(&self) -> usize;
    /// A fragment other than the first: no L4 header in it.
    fn later_fragment(&self) -> bool;
    /// A later fragment's ports, from its datagram's first fragment, or why there are none.
    fn ports_of_later(&self) -> Result<FragPorts, DropReason>;
    /// Remembers a first fragment's ports for the later ones.
    fn remember_ports(&self, key: &CtKeyOf<Self::Addr>);
    /// A rewrite of this packet, whose L4 header is laid out as `l4` says.
    fn rewrite(&self, l4: L4Offsets) -> Rewrite;
    /// The hop limit decremented, with whatever checksum covers it.
    fn decrement_hop_limit<P: Packet>(&self, ctx: &P, rewrite: &mut Rewrite) -> Result<(), DropReason>;
}

impl Header for Ipv4 {
    type Addr = Ipv4Be;
    const SADDR_OFF: usize = IP_OFF + IPV4_SADDR_OFF;
    const DADDR_OFF: usize = IP_OFF + IPV4_DADDR_OFF;

    #[inline(always)]
    fn saddr(&self) -> Ipv4Be {
        self.saddr
    }

    #[inline(always)]
    fn daddr(&self) -> Ipv4Be {
        self.daddr
    }

    #[inline(always)]
    fn proto(&self) -> u8 {
        self.proto
    }

    #[inline(always)]
    fn hop_limit(&self) -> u8 {
        self.ttl
    }

    #[inline(always)]
    fn l4_off(&self) -> usize {
        self.l4_off
    }

    #[inline(always)]
    fn later_fragment(&self) -> bool {
        self.later_fragment
    }

    #[inline(always)]
    fn ports_of_later(&self) -> Result<FragPorts, DropReason> {
        fragment::ports_of_later(self).ok_or(DropReason::FragmentWithoutFirst)
    }

    #[inline(always)]
    fn remember_ports(&self, key: &CtKeyOf<Ipv4Be>) {
        fragment::remember_ports(self, key)
    }

    #[inline(always)]
    fn rewrite(&self, l4: L4Offsets) -> Rewrite {
        Rewrite::new(self.l4_off, l4)
    }

    #[inline(always)]
    fn decrement_hop_limit<P: Packet>(&self, ctx: &P, rewrite: &mut Rewrite) -> Result<(), DropReason> {
        rewrite.decrement_ttl(ctx, self)
    }
}

impl Header for Ipv6 {
    type Addr = Ipv6Be;
    const SADDR_OFF: usize = IP6_OFF + IPV6_SADDR_OFF;
    const DADDR_OFF: usize = IP6_OFF + IPV6_DADDR_OFF;

    #[inline(always)]
    fn saddr(&self) -> Ipv6Be {
        self.saddr
    }

    #[inline(always)]
    fn daddr(&self) -> Ipv6Be {
        self.daddr
    }

    #[inline(always)]
    fn proto(&self) -> u8 {
        self.next_header
    }

    #[inline(always)]
    fn hop_limit(&self) -> u8 {
        self.hop_limit
    }

    #[inline(always)]
    fn l4_off(&self) -> usize {
        self.l4_off
    }

    #[inline(always)]
    fn later_fragment(&self) -> bool {
        self.later_fragment
    }

    #[inline(always)]
    fn ports_of_later(&self) -> Result<FragPorts, DropReason> {
        fragment::ports_of_later(self).ok_or(DropReason::Ipv6LaterFragment)
    }

    #[inline(always)]
    fn remember_ports(&self, key: &CtKeyOf<Ipv6Be>) {
        fragment::remember_ports(self, key)
    }

    #[inline(always)]
    fn rewrite(&self, l4: L4Offsets) -> Rewrite {
        Rewrite::new6(self.l4_off, l4)
    }

    #[inline(always)]
    fn decrement_hop_limit<P: Packet>(&self, ctx: &P, rewrite: &mut Rewrite) -> Result<(), DropReason> {
        rewrite.decrement_hop_limit(ctx, self.hop_limit)
    }
}
