//! Published ports (`--publish HOST_IP:HOST_PORT:PORT/PROTO`): one hash lookup, whatever the
//! number of ports published.
use datapath_common::{CtKey, HostConfig, Ipv4Be, PublishedPortKey, PublishedPortTarget, IPPROTO_TCP, IPPROTO_UDP};

use crate::maps::{ENDPOINTS, PUBLISHED_PORTS};

/// The container a published port leads to: its address and port (the port's
/// `PublishedPortTarget`), and where to deliver to it.
pub struct Container {
    pub ip: u32,
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
