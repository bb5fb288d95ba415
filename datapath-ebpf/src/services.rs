//! Published ports (`--publish HOST_IP:HOST_PORT:PORT/PROTO`): one hash lookup, whatever the
//! number of ports published.
use datapath_common::{Backend, CtKey, HostConfig, Ipv4Be, ServiceKey, IPPROTO_TCP, IPPROTO_UDP};

use crate::maps::{ENDPOINTS, SERVICES};

/// A published port's container.
pub struct Target {
    pub ip: u32,
    pub port: u16,
    pub host_ifindex: u32,
    /// The container's `Endpoint::stats_slot`.
    pub stats_slot: u32,
}

/// The container a flow to (daddr, dport) is published to, if any: a port published on that
/// very address, else one published on all host addresses (when daddr is the uplink's).
#[inline(always)]
pub fn lookup(cfg: &HostConfig, key: &CtKey) -> Option<Target> {
    target(key.daddr, key.dport, key.proto, key.daddr == cfg.uplink_ip)
}

/// The container (daddr, dport, proto) is published to: a port published on that very
/// address, else, when `all_addresses` says daddr is one of the host's "all addresses", a
/// port published without an address. Ports in network byte order.
#[inline(always)]
pub fn target(daddr: Ipv4Be, dport: u16, proto: u8, all_addresses: bool) -> Option<Target> {
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return None;
    }
    let exact = ServiceKey { addr: daddr, port: dport, proto, _pad: 0 };
    // SAFETY: map values are plain data; copied out at once.
    let backend: Backend = match unsafe { SERVICES.get(exact) } {
        Some(backend) => *backend,
        None if all_addresses => *unsafe { SERVICES.get(ServiceKey { addr: 0, ..exact }) }?,
        None => return None,
    };
    // SAFETY: as above.
    let endpoint = unsafe { ENDPOINTS.get(backend.ip) }?;
    Some(Target { ip: backend.ip, port: backend.port, host_ifindex: endpoint.host_ifindex, stats_slot: endpoint.stats_slot })
}
