//! Published ports (`--publish HOST_IP:HOST_PORT:PORT/PROTO`): one hash lookup, whatever the
//! number of ports published.
use datapath_common::{
    CtKey, CtKey6, HostConfig, Ipv4Be, Ipv6Be, PublishedPortKey, PublishedPortKey6, PublishedPortTarget, IPPROTO_TCP,
    IPPROTO_UDP,
};

use crate::maps::{ENDPOINTS, ENDPOINTS6, PUBLISHED_PORTS, PUBLISHED_PORTS6};

/// The container a published port leads to: its address and port (the port's
/// `PublishedPortTarget`, or `PublishedPortTarget6` for `A` = `Ipv6Be`), and where to deliver
/// to it.
pub struct Container<A = Ipv4Be> {
    pub ip: A,
    pub port: u16,
    pub host_ifindex: u32,
    /// The container's `Endpoint::stats_slot`.
    pub stats_slot: u32,
}

/// An address family's published ports (`PUBLISHED_PORTS`/`PUBLISHED6`) and containers
/// (`ENDPOINTS`/`ENDPOINTS6`): what [`container`] looks up.
pub trait Family {
    type Addr: Copy;
    /// The all-zero address: a port published without an address (all host addresses).
    const ALL_ADDRESSES: Self::Addr;
    /// The container's address and port published at (addr, port, proto).
    fn target(addr: Self::Addr, port: u16, proto: u8) -> Option<(Self::Addr, u16)>;
    /// The container's host-side veth, statistics slot and IPv4 address (its conntrack quota
    /// key, whichever family a flow uses).
    fn endpoint(ip: Self::Addr) -> Option<(u32, u32, Ipv4Be)>;
}

pub struct Ipv4;
pub struct Ipv6;

impl Family for Ipv4 {
    type Addr = Ipv4Be;
    const ALL_ADDRESSES: Ipv4Be = 0;

    #[inline(always)]
    fn target(addr: Ipv4Be, port: u16, proto: u8) -> Option<(Ipv4Be, u16)> {
        let key = PublishedPortKey { addr, port, proto, _pad: 0 };
        // SAFETY: map values are plain data; copied out at once.
        unsafe { PUBLISHED_PORTS.get(key) }.map(|t: &PublishedPortTarget| (t.ip, t.port))
    }

    #[inline(always)]
    fn endpoint(ip: Ipv4Be) -> Option<(u32, u32, Ipv4Be)> {
        // SAFETY: as above.
        unsafe { ENDPOINTS.get(ip) }.map(|e| (e.host_ifindex, e.stats_slot, ip))
    }
}

impl Family for Ipv6 {
    type Addr = Ipv6Be;
    const ALL_ADDRESSES: Ipv6Be = [0; 4];

    #[inline(always)]
    fn target(addr: Ipv6Be, port: u16, proto: u8) -> Option<(Ipv6Be, u16)> {
        let key = PublishedPortKey6 { addr, port, proto, _pad: 0 };
        // SAFETY: map values are plain data; copied out at once.
        unsafe { PUBLISHED_PORTS6.get(key) }.map(|t| (t.ip, t.port))
    }

    #[inline(always)]
    fn endpoint(ip: Ipv6Be) -> Option<(u32, u32, Ipv4Be)> {
        // SAFETY: as above.
        unsafe { ENDPOINTS6.get(ip) }.map(|e| (e.host_ifindex, e.stats_slot, e.ip4))
    }
}

/// The container a flow to (daddr, dport) is published to, if any: a port published on that
/// very address, else one published on all host addresses (when daddr is the uplink's).
#[inline(always)]
pub fn lookup(cfg: &HostConfig, key: &CtKey) -> Option<Container> {
    container::<Ipv4>(key.daddr, key.dport, key.proto, key.daddr == cfg.uplink_ip)
}

/// The container an IPv6 flow to (daddr, dport) is published to, if any, as [`lookup`] for
/// IPv4: a port published on that very address, else one published on all host addresses
/// (the all-zero key) when daddr is the uplink's IPv6 address. With the container's IPv4
/// address, its flows' quota key.
#[inline(always)]
pub fn lookup6(uplink_ip: &Ipv6Be, key: &CtKey6) -> Option<(Container<Ipv6Be>, Ipv4Be)> {
    container_and_ip4::<Ipv6>(key.daddr, key.dport, key.proto, key.daddr == *uplink_ip)
}

/// The container (daddr, dport, proto) is published to, in family `F`: a port published on
/// that very address, else, when `all_addresses` says daddr is one of the host's "all
/// addresses", a port published without an address. Ports in network byte order.
#[inline(always)]
pub fn container<F: Family>(daddr: F::Addr, dport: u16, proto: u8, all_addresses: bool) -> Option<Container<F::Addr>> {
    container_and_ip4::<F>(daddr, dport, proto, all_addresses).map(|(container, _)| container)
}

/// [`container`], with the container's IPv4 address (its conntrack quota key).
#[inline(always)]
fn container_and_ip4<F: Family>(
    daddr: F::Addr,
    dport: u16,
    proto: u8,
    all_addresses: bool,
) -> Option<(Container<F::Addr>, Ipv4Be)> {
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return None;
    }
    let (ip, port) = match F::target(daddr, dport, proto) {
        Some(target) => target,
        None if all_addresses => F::target(F::ALL_ADDRESSES, dport, proto)?,
        None => return None,
    };
    let (host_ifindex, stats_slot, ip4) = F::endpoint(ip)?;
    Some((Container { ip, port, host_ifindex, stats_slot }, ip4))
}
