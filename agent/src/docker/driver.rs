//! What each call of the remote driver protocol does on the host: a Docker network is a
//! bpfnet network named `docker-` + the first 12 characters of its id (as `docker network ls`
//! shows it), with Docker's pool and gateway; a Docker endpoint is a handed-over endpoint
//! (`host::container::Placement::HandedOver`) named `docker:ENDPOINT_ID`, with the address
//! Docker's IPAM chose. Everything lives in the agent's state: dockerd restarting, or the
//! agent being killed, loses nothing. Deletes of what is already gone succeed (dockerd
//! retries them, and forgets what it deleted with `force` even when the driver failed).
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    sync::Mutex,
};

use anyhow::{bail, Context, Result};
use ipnet::IpNet;
use serde_json::{json, Value};

use crate::{
    docker::port_allocator::PortAllocator,
    docker::protocol::{
        CapabilitiesAnswer, CreateEndpointAnswer, CreateEndpointRequest, CreateNetworkRequest, EndpointInfoAnswer,
        EndpointInterface, EndpointRequest, ExternalConnectivityRequest, InterfaceName, JoinAnswer, JoinRequest,
        PortBinding, Scope, ENABLE_IPV6, GENERIC_OPTIONS, INTERNAL, PORT_MAP,
    },
    host::container::{self, Fixed, Placement},
    host::ipam::format_mac,
    host::network,
    host::publish::{PortMapping, Protocol},
    host::state::{ContainerSpec, HandedOver},
    host::Host,
};

/// The engine name of the endpoints made here.
pub const ENGINE: &str = "docker";

/// Docker shows and accepts 12 characters of an id.
const SHORT_ID: usize = 12;

/// The bpfnet network of a Docker network id.
pub fn network_name(network_id: &str) -> Result<String> {
    check_id("NetworkID", network_id)?;
    Ok(format!("docker-{}", &network_id[..SHORT_ID]))
}

/// The state's name of a Docker endpoint. `:` occurs in no other container's name.
pub fn endpoint_name(endpoint_id: &str) -> Result<String> {
    check_id("EndpointID", endpoint_id)?;
    Ok(format!("{ENGINE}:{endpoint_id}"))
}

/// Docker's ids are 64 hex digits; anything else did not come from dockerd.
fn check_id(field: &str, id: &str) -> Result<()> {
    if id.len() < SHORT_ID || id.len() > 64 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("{field} {id:?} is not a Docker id (12 to 64 hex digits)");
    }
    Ok(())
}

pub fn capabilities() -> CapabilitiesAnswer {
    CapabilitiesAnswer { scope: Scope::Local, connectivity_scope: Scope::Local }
}

/// A network with Docker's one IPv4 pool and its gateway, and with `--ipv6` its one IPv6 pool
/// and gateway (dual stack). `--internal` and `-o` options are refused, naming what to leave
/// out.
pub async fn create_network(host: &mut Host, request: &CreateNetworkRequest) -> Result<()> {
    let name = network_name(&request.network_id)?;
    let ipv6 = request.options.get(ENABLE_IPV6).is_some_and(|v| v == &json!(true));
    if ipv6 && request.ipv6_data.is_empty() {
        bail!(
            "Docker gave this --ipv6 network no IPv6 pool; create it with an IPv6 subnet \
             (docker network create --ipv6 --subnet fd00:88::/64 ...)"
        );
    }
    if request.options.get(INTERNAL).is_some_and(|v| v == &json!(true)) {
        bail!(
            "bpfnet has no internal networks (every network reaches the outside, masqueraded); \
             create the network without --internal"
        );
    }
    if let Some(generic) = request.options.get(GENERIC_OPTIONS).and_then(Value::as_object) {
        if let Some(key) = generic.keys().next() {
            bail!("the driver option {key:?} is not known to bpfnet (it takes no -o options); leave it out");
        }
    }
    let [pool] = request.ipv4_data.as_slice() else {
        bail!(
            "a bpfnet network has exactly one IPv4 subnet, Docker gave {}; create it with one --subnet (or none)",
            request.ipv4_data.len()
        );
    };
    let pool6 = match request.ipv6_data.as_slice() {
        [] => None,
        [pool6] => Some(pool6),
        more => bail!(
            "a bpfnet network has at most one IPv6 subnet, Docker gave {}; create it with one IPv6 --subnet",
            more.len()
        ),
    };
    let pools: Vec<_> = std::iter::once(pool).chain(pool6).collect();
    let subnets: Vec<String> = pools.iter().map(|p| p.pool.clone()).collect();
    let gateways = pools
        .iter()
        .filter(|p| !p.gateway.is_empty())
        .map(|p| address_of("the gateway", &p.gateway))
        .collect::<Result<Vec<_>>>()?;
    network::create(host, &name, &subnets, &gateways, false).await?;
    Ok(())
}

pub async fn delete_network(host: &mut Host, network_id: &str) -> Result<()> {
    let name = network_name(network_id)?;
    if host.state().networks.contains_key(&name) {
        network::remove(host, &name).await?;
    }
    Ok(())
}

/// The endpoint with the address Docker chose; its veth pair is made now, the container end
/// left for Join to hand over. Docker's MAC address if it chose one, else bpfnet's, told back.
pub async fn create_endpoint(host: &mut Host, request: &CreateEndpointRequest) -> Result<CreateEndpointAnswer> {
    let network = network_name(&request.network_id)?;
    let name = endpoint_name(&request.endpoint_id)?;
    host.state().network(&network)?;
    if host.state().containers.contains_key(&name) {
        bail!("endpoint {} exists already", request.endpoint_id);
    }
    let iface = request.interface.clone().unwrap_or_default();
    if iface.address.is_empty() {
        bail!("Docker gave the endpoint no IPv4 address; use Docker's default IPAM driver for bpfnet networks");
    }
    let ip = match address_of("the endpoint's address", &iface.address)? {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(ip) => bail!("the endpoint's IPv4 address {ip} is an IPv6 address"),
    };
    let ip6 = match iface.address_ipv6.as_str() {
        "" => None,
        text => match address_of("the endpoint's IPv6 address", text)? {
            IpAddr::V6(ip6) => Some(ip6),
            IpAddr::V4(ip) => bail!("the endpoint's IPv6 address {ip} is an IPv4 address"),
        },
    };
    let mac = match iface.mac_address.as_str() {
        "" => None,
        text => Some(parse_mac(text)?),
    };
    let handed_over = HandedOver { engine: ENGINE.to_owned(), endpoint_id: request.endpoint_id.clone() };
    let placement = Placement::HandedOver(handed_over, mac);
    let spec =
        container::create_endpoint(host, &name, &network, Fixed { ip: Some(ip), ip6 }, vec![], placement).await?;
    let interface =
        mac.is_none().then(|| EndpointInterface { mac_address: format_mac(&spec.mac), ..Default::default() });
    Ok(CreateEndpointAnswer { interface })
}

pub async fn delete_endpoint(host: &mut Host, request: &EndpointRequest) -> Result<()> {
    let name = endpoint_name(&request.endpoint_id)?;
    if host.state().containers.contains_key(&name) {
        container::remove(host, &name).await?;
    }
    Ok(())
}

/// The container end to move, and the gateway for Docker's default route.
pub fn join(host: &Host, request: &JoinRequest) -> Result<JoinAnswer> {
    let spec = endpoint(host, &request.endpoint_id)?;
    let net = host.state().network(&spec.network)?;
    Ok(JoinAnswer {
        interface_name: InterfaceName { src_name: container::peer_interface(spec), dst_prefix: "eth".to_owned() },
        gateway: net.gateway.to_string(),
        gateway_ipv6: spec.ip6.and(net.ipv6).map(|v6| v6.gateway.to_string()).unwrap_or_default(),
        disable_gateway_service: true,
    })
}

/// The endpoint's operational data. Its published ports are also under Docker's own key, in
/// the shape of Docker's bridge driver (`com.docker.network.portmap`, with the host ports
/// chosen for `-p 80` and `-P`). dockerd 20.10 (and later) does not show them in `docker
/// port`: it reads that key only as its own Go type, which a remote driver's JSON never is.
pub fn endpoint_info(host: &Host, request: &EndpointRequest) -> Result<EndpointInfoAnswer> {
    let spec = endpoint(host, &request.endpoint_id)?;
    let mut value = BTreeMap::new();
    value.insert("bpfnet.network".to_owned(), json!(spec.network));
    value.insert("bpfnet.host_interface".to_owned(), json!(spec.host_interface));
    value.insert("bpfnet.mac".to_owned(), json!(format_mac(&spec.mac)));
    value.insert("bpfnet.ports".to_owned(), json!(spec.publish.iter().map(ToString::to_string).collect::<Vec<_>>()));
    let bindings: Vec<PortBinding> = spec.publish.iter().map(|m| port_binding(m, spec.ip)).collect();
    value.insert(PORT_MAP.to_owned(), json!(bindings));
    Ok(EndpointInfoAnswer { value })
}

/// A published port as Docker's bridge driver reports it: the container's address, the host
/// port in both `HostPort` and `HostPortEnd`, `0.0.0.0` for every address.
fn port_binding(mapping: &PortMapping, container_ip: Ipv4Addr) -> PortBinding {
    PortBinding {
        proto: match mapping.protocol {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        },
        ip: container_ip.to_string(),
        port: mapping.container_port,
        host_ip: mapping.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)).to_string(),
        host_port: mapping.host_port,
        host_port_end: mapping.host_port,
    }
}

/// Publishes the container's `-p` bindings, replacing those it had (dockerd programs the
/// endpoint that gives the container its gateway, and moves them when that changes). A
/// binding without a host port (`-p 80`, `-P`) takes one from `ports`.
pub async fn program_external_connectivity(
    host: &mut Host,
    ports: &Mutex<PortAllocator>,
    request: &ExternalConnectivityRequest,
) -> Result<()> {
    let name = endpoint_name(&request.endpoint_id)?;
    let bindings: Vec<PortBinding> = match request.options.get(PORT_MAP) {
        None | Some(Value::Null) => vec![],
        Some(value) => serde_json::from_value(value.clone())
            .with_context(|| format!("reading {PORT_MAP} of endpoint {}", request.endpoint_id))?,
    };
    revoke_external_connectivity(host, &request.endpoint_id).await?;
    let spec = endpoint(host, &request.endpoint_id)?;
    // Held for the choice only (no await): the host's lock orders the calls anyway.
    let mappings = {
        let mut ports = ports.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        port_mappings(&bindings, &mut ports, |chosen| host.state().published().check_free(chosen).is_ok())
            .with_context(|| format!("publishing the ports of {}", spec.name))?
    };
    if !mappings.is_empty() {
        container::publish(host, &name, mappings).await?;
    }
    Ok(())
}

pub async fn revoke_external_connectivity(host: &mut Host, endpoint_id: &str) -> Result<()> {
    let name = endpoint_name(endpoint_id)?;
    let published = match host.state().containers.get(&name) {
        Some(spec) => spec.publish.clone(),
        None => return Ok(()),
    };
    if !published.is_empty() {
        container::unpublish(host, &name, published).await?;
    }
    Ok(())
}

fn endpoint<'h>(host: &'h Host, endpoint_id: &str) -> Result<&'h ContainerSpec> {
    let name = endpoint_name(endpoint_id)?;
    host.state().containers.get(&name).with_context(|| {
        format!("no endpoint {endpoint_id} on this host's bpfnet agent (was it deleted, or made by another agent?)")
    })
}

/// Docker's bindings as published ports. A host port range (`-p 8000-8010:80`) takes its first
/// port that `is_free` accepts (together with the ones chosen before it), as Docker's own
/// port allocator does; no host port at all (`-p 80`, `-P`) takes the next free one of
/// `dynamic`. A binding on every IPv6 address (`::`) beside the same one on every address
/// (dockerd sends both when it has IPv6 on) is the same published port here: without a host
/// address bpfnet publishes on both families.
pub fn port_mappings(
    bindings: &[PortBinding],
    dynamic: &mut PortAllocator,
    is_free: impl Fn(&[PortMapping]) -> bool,
) -> Result<Vec<PortMapping>> {
    let all_addresses = |b: &PortBinding| b.host_ip.is_empty() || b.host_ip == "0.0.0.0";
    let covered = |b: &PortBinding| {
        b.host_ip.parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv6() && ip.is_unspecified())
            && bindings.iter().any(|o| {
                all_addresses(o)
                    && (o.proto, o.port, o.host_port, o.host_port_end)
                        == (b.proto, b.port, b.host_port, b.host_port_end)
            })
    };
    let mut chosen: Vec<PortMapping> = Vec::new();
    for binding in bindings.iter().filter(|b| !covered(b)) {
        let protocol = match binding.proto {
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            other => bail!("port {} has protocol number {other}; bpfnet publishes tcp and udp ports", binding.port),
        };
        let host_ip = match binding.host_ip.as_str() {
            "" => None,
            text => match text.parse::<IpAddr>() {
                Ok(IpAddr::V4(ip)) if ip.is_unspecified() => None,
                Ok(ip) => Some(ip),
                Err(_) => bail!("the host address {text:?} of port {} is not an IP address", binding.port),
            },
        };
        let mapping = |host_port| PortMapping { host_ip, host_port, container_port: binding.port, protocol };
        let fits = |candidate: PortMapping| {
            let inside = chosen.iter().all(|c| !c.overlaps(&candidate));
            let mut with = chosen.clone();
            with.push(candidate);
            inside && is_free(&with)
        };
        let found = if binding.host_port == 0 {
            let range = dynamic.range();
            dynamic.next(protocol, |port| fits(mapping(port))).map(mapping).with_context(|| {
                format!(
                    "no free host port in {}-{}/{protocol} (the host's ephemeral ports, where Docker picks one) \
                     for container port {}; give one with -p HOST_PORT:{}",
                    range.start(),
                    range.end(),
                    binding.port,
                    binding.port
                )
            })?
        } else {
            let end = binding.host_port_end.max(binding.host_port);
            (binding.host_port..=end).map(mapping).find(|candidate| fits(*candidate)).with_context(|| {
                format!(
                    "no free host port in {}-{end}/{protocol} for container port {}",
                    binding.host_port, binding.port
                )
            })?
        };
        chosen.push(found);
    }
    Ok(chosen)
}

/// The address of a CIDR as Docker writes them (`172.18.0.2/16`, `fd00:88::2/64`).
fn address_of(what: &str, text: &str) -> Result<IpAddr> {
    let net: IpNet = text.parse().with_context(|| format!("{what} {text:?} is not an address with a prefix length"))?;
    Ok(net.addr())
}

pub(crate) fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .ok()
        .filter(|b: &Vec<u8>| b.len() == 6)
        .with_context(|| format!("the MAC address {text:?} is not six hex bytes such as 02:42:ac:11:00:02"))?;
    Ok(bytes.try_into().expect("six bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(proto: u8, host_ip: &str, port: u16, host_port: u16, host_port_end: u16) -> PortBinding {
        PortBinding { proto, ip: String::new(), port, host_ip: host_ip.into(), host_port, host_port_end }
    }

    fn dynamic() -> PortAllocator {
        PortAllocator::new(32768..=60999)
    }

    #[test]
    fn bindings_become_published_ports() {
        let all_free = |_: &[PortMapping]| true;
        let got = port_mappings(
            &[
                binding(6, "", 80, 8080, 8080),
                binding(17, "0.0.0.0", 53, 5353, 0),
                binding(6, "10.0.0.1", 22, 2222, 2222),
            ],
            &mut dynamic(),
            all_free,
        )
        .unwrap();
        let shown: Vec<String> = got.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["0.0.0.0:8080->80/tcp", "0.0.0.0:5353->53/udp", "10.0.0.1:2222->22/tcp"]);
    }

    /// dockerd with IPv6 on sends `-p 8080:80` as two bindings, on 0.0.0.0 and on `::`: one
    /// published port (both families). A binding on one IPv6 address stays on that one.
    #[test]
    fn ipv6_bindings() {
        let all_free = |_: &[PortMapping]| true;
        let got = port_mappings(
            &[
                binding(6, "0.0.0.0", 80, 8080, 8080),
                binding(6, "::", 80, 8080, 8080),
                binding(6, "::", 81, 8081, 8081),
            ],
            &mut dynamic(),
            all_free,
        )
        .unwrap();
        let shown: Vec<String> = got.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["0.0.0.0:8080->80/tcp", "[::]:8081->81/tcp"]);
        let got = port_mappings(&[binding(17, "2001:db8::1", 53, 53, 53)], &mut dynamic(), all_free).unwrap();
        assert_eq!(got[0].to_string(), "[2001:db8::1]:53->53/udp");
    }

    #[test]
    fn a_range_takes_its_first_free_port() {
        // 8000 is taken by someone else; two bindings share the range.
        let free = |m: &[PortMapping]| m.iter().all(|m| m.host_port != 8000);
        let got =
            port_mappings(&[binding(6, "", 80, 8000, 8002), binding(6, "", 81, 8000, 8002)], &mut dynamic(), free)
                .unwrap();
        assert_eq!(got.iter().map(|m| m.host_port).collect::<Vec<_>>(), [8001, 8002]);
        let err = port_mappings(&[binding(6, "", 80, 8000, 8000)], &mut dynamic(), free).unwrap_err();
        assert!(format!("{err:#}").contains("no free host port in 8000-8000/tcp"), "{err:#}");
    }

    #[test]
    fn unusable_bindings_are_refused_by_name() {
        let all_free = |_: &[PortMapping]| true;
        for (b, says) in [
            (binding(132, "", 80, 8080, 8080), "protocol number 132"),
            (binding(6, "nope", 80, 8080, 8080), "not an IP address"),
        ] {
            let err = format!("{:#}", port_mappings(&[b], &mut dynamic(), all_free).unwrap_err());
            assert!(err.contains(says), "{err}");
        }
    }

    /// `-p 80`, `-P`: host port 0, a free one of the ephemeral range is taken, next to the
    /// last one chosen; what another container publishes is skipped.
    #[test]
    fn bindings_without_a_host_port_take_a_free_ephemeral_one() {
        let mut ports = PortAllocator::new(32768..=32771);
        let taken = |m: &[PortMapping]| m.iter().all(|m| !(m.host_port == 32769 && m.protocol == Protocol::Tcp));
        // -P of a container exposing 80/tcp, 81/tcp and 53/udp.
        let got = port_mappings(
            &[binding(6, "", 80, 0, 0), binding(6, "", 81, 0, 0), binding(17, "", 53, 0, 0)],
            &mut ports,
            taken,
        )
        .unwrap();
        let shown: Vec<String> = got.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["0.0.0.0:32768->80/tcp", "0.0.0.0:32770->81/tcp", "0.0.0.0:32768->53/udp"]);
        // The next container goes on from there, on the address it names.
        let got = port_mappings(&[binding(6, "10.0.0.1", 80, 0, 0)], &mut ports, taken).unwrap();
        assert_eq!(got[0].to_string(), "10.0.0.1:32771->80/tcp");
        let full = port_mappings(&[binding(6, "", 80, 0, 0)], &mut ports, |_| false).unwrap_err();
        assert!(format!("{full:#}").contains("no free host port in 32768-32771/tcp"), "{full:#}");
    }

    #[test]
    fn published_ports_are_reported_as_dockers_bridge_does() {
        let mapping = PortMapping { host_ip: None, host_port: 32768, container_port: 80, protocol: Protocol::Tcp };
        let reported = serde_json::to_value(port_binding(&mapping, Ipv4Addr::new(10, 246, 0, 2))).unwrap();
        assert_eq!(
            reported,
            json!({"Proto": 6, "IP": "10.246.0.2", "Port": 80, "HostIP": "0.0.0.0", "HostPort": 32768,
                   "HostPortEnd": 32768})
        );
    }

    #[test]
    fn ids_and_addresses() {
        let id = "4d1a5e0c9b7f3e2d1c0b9a8f7e6d5c4b3a291817161514131211100f0e0d0c0b";
        assert_eq!(network_name(id).unwrap(), "docker-4d1a5e0c9b7f");
        assert_eq!(endpoint_name(id).unwrap(), format!("docker:{id}"));
        assert!(network_name("../etc").is_err() && endpoint_name("").is_err());
        assert_eq!(address_of("x", "172.18.0.2/16").unwrap(), IpAddr::V4(Ipv4Addr::new(172, 18, 0, 2)));
        assert_eq!(address_of("x", "fd00:88::2/64").unwrap(), "fd00:88::2".parse::<IpAddr>().unwrap());
        assert!(address_of("x", "172.18.0.2").is_err());
        assert_eq!(parse_mac("02:42:ac:12:00:02").unwrap(), [2, 0x42, 0xac, 0x12, 0, 2]);
        assert!(parse_mac("02:42:ac").is_err() && parse_mac("zz:42:ac:12:00:02").is_err());
    }
}
