//! Published ports (`--publish HOST_IP:HOST_PORT:PORT/PROTO`): one hash lookup, whatever the
//! number of ports published.
use datapath_common::{
    CtKey, CtKey6, HostConfig, Ipv4Be, Ipv6Be, PublishedPortKey, PublishedPortKey6, PublishedPortTarget,
    PublishedPortTarget6, IPPROTO_TCP, IPPROTO_UDP,
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

/// The container a flow to (daddr, dport) is published to, if any: a port published on that
/// very address, else one published on all host addresses (when daddr is the uplink's).
#[inline(always)]
pub fn lookup(cfg: &HostConfig, key: &CtKey) -> Option<Container> {
    container(key.daddr, key.dport, key.proto, key.daddr == cfg.uplink_ip)
}

/// The container (daddr, dport, proto) is published to: a port published on that very
/// address, else, when `all_addresses` says daddr is one of the host's "all addresses", a
/// port published without an address. Ports in network byte order.
#[inline(always)]
pub fn container(daddr: Ipv4Be, dport: u16, proto: u8, all_addresses: bool) -> Option<Container> {
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return None;
    }
    let exact = PublishedPortKey { addr: daddr, port: dport, proto, _pad: 0 };
    // SAFETY: map values are plain data; copied out at once.
    let target: PublishedPortTarget = match unsafe { PUBLISHED_PORTS.get(exact) } {
        Some(target) => *target,
        None if all_addresses => *unsafe { PUBLISHED_PORTS.get(PublishedPortKey { addr: 0, ..exact }) }?,
        None => return None,
    };
    // SAFETY: as above.
    let endpoint = unsafe { ENDPOINTS.get(target.ip) }?;
    Some(Container {
        ip: target.ip,
        port: target.port,
        host_ifindex: endpoint.host_ifindex,
        stats_slot: endpoint.stats_slot,
    })
}

/// The container an IPv6 flow to (daddr, dport) is published to, if any, as [`lookup`] for
/// IPv4: a port published on that very address, else one published on all host addresses
/// (the all-zero key) when daddr is the uplink's IPv6 address. With the container's IPv4
/// address, its flows' quota key.
#[inline(always)]
pub fn lookup6(uplink_ip: &Ipv6Be, key: &CtKey6) -> Option<(Container<Ipv6Be>, Ipv4Be)> {
    if key.proto != IPPROTO_TCP && key.proto != IPPROTO_UDP {
        return None;
    }
    let exact = PublishedPortKey6 { addr: key.daddr, port: key.dport, proto: key.proto, _pad: 0 };
    // SAFETY: map values are plain data; copied out at once.
    let target: PublishedPortTarget6 = match unsafe { PUBLISHED_PORTS6.get(exact) } {
        Some(target) => *target,
        None if key.daddr == *uplink_ip => {
            *unsafe { PUBLISHED_PORTS6.get(PublishedPortKey6 { addr: [0; 4], ..exact }) }?
        }
        None => return None,
    };
    // SAFETY: as above.
    let endpoint = unsafe { ENDPOINTS6.get(target.ip) }?;
    let container = Container {
        ip: target.ip,
        port: target.port,
        host_ifindex: endpoint.host_ifindex,
        stats_slot: endpoint.stats_slot,
    };
    Some((container, endpoint.ip4))
}
