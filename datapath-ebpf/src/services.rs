//! Published ports (`--publish HOST_IP:HOST_PORT:PORT/PROTO`): one hash lookup, whatever the
//! number of ports published.
use datapath_common::{Backend, CtKey, HostConfig, ServiceKey, IPPROTO_TCP, IPPROTO_UDP};

use crate::maps::{ENDPOINTS, SERVICES};

/// A published port's container.
pub struct Target {
    pub ip: u32,
    pub port: u16,
    pub host_ifindex: u32,
}

/// The container a flow to (daddr, dport) is published to, if any: a port published on that
/// very address, else one published on all host addresses (when daddr is the uplink's).
#[inline(always)]
pub fn lookup(cfg: &HostConfig, key: &CtKey) -> Option<Target> {
    if key.proto != IPPROTO_TCP && key.proto != IPPROTO_UDP {
        return None;
    }
    let exact = ServiceKey { addr: key.daddr, port: key.dport, proto: key.proto, _pad: 0 };
    // SAFETY: map values are plain data; copied out at once.
    let backend: Backend = match unsafe { SERVICES.get(exact) } {
        Some(backend) => *backend,
        None if key.daddr == cfg.uplink_ip => *unsafe { SERVICES.get(ServiceKey { addr: 0, ..exact }) }?,
        None => return None,
    };
    // SAFETY: as above.
    let endpoint = unsafe { ENDPOINTS.get(backend.ip) }?;
    Some(Target { ip: backend.ip, port: backend.port, host_ifindex: endpoint.host_ifindex })
}
