//! The requests and answers of libnetwork's remote network driver protocol (moby's
//! `libnetwork/drivers/remote/api` and `docs/remote.md`), as dockerd sends and reads them:
//! JSON with Go's field names. Go marshals a nil slice or map as `null`, so every list and map
//! reads `null` as empty. Answers carry `Err` only when they fail ([`ErrorAnswer`]).
use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// What dockerd hands as `Options`: free-form, keyed by labels such as
/// [`GENERIC_OPTIONS`] or [`PORT_MAP`].
pub type Options = BTreeMap<String, Value>;

/// The `-o KEY=VALUE` options of `docker network create`, a map of strings.
pub const GENERIC_OPTIONS: &str = "com.docker.network.generic";
/// `docker network create --internal`.
pub const INTERNAL: &str = "com.docker.network.internal";
/// `docker network create --ipv6`.
pub const ENABLE_IPV6: &str = "com.docker.network.enable_ipv6";
/// The `-p` bindings of a container, in ProgramExternalConnectivity's options.
pub const PORT_MAP: &str = "com.docker.network.portmap";

/// The content type of the plugin protocol's answers.
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

/// Reads `null` as the type's default (Go's nil slices and maps).
fn nullable<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Any failed call's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorAnswer {
    #[serde(rename = "Err")]
    pub err: String,
}

/// An answer with nothing to say (`{}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Empty {}

/// `Plugin.Activate`'s answer: the plugin kinds served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ActivateAnswer {
    pub implements: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Networks exist on this host only.
    Local,
    Global,
}

/// `NetworkDriver.GetCapabilities`' answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CapabilitiesAnswer {
    pub scope: Scope,
    pub connectivity_scope: Scope,
}

/// One address pool of a network, as Docker's IPAM gave it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamData {
    #[serde(default)]
    pub address_space: String,
    /// The pool, a CIDR (`172.18.0.0/16`).
    pub pool: String,
    /// The gateway with the pool's prefix length (`172.18.0.1/16`).
    #[serde(default)]
    pub gateway: String,
    #[serde(default, deserialize_with = "nullable")]
    pub aux_addresses: BTreeMap<String, String>,
}

/// `NetworkDriver.CreateNetwork`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateNetworkRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "Options", default, deserialize_with = "nullable")]
    pub options: Options,
    #[serde(rename = "IPv4Data", default, deserialize_with = "nullable")]
    pub ipv4_data: Vec<IpamData>,
    #[serde(rename = "IPv6Data", default, deserialize_with = "nullable")]
    pub ipv6_data: Vec<IpamData>,
}

/// `NetworkDriver.DeleteNetwork`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeleteNetworkRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
}

/// An endpoint's addresses: in CreateEndpoint's request what Docker's IPAM chose (CIDRs, `""`
/// for none), in its answer what the driver chose where Docker left a field empty.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointInterface {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    #[serde(rename = "AddressIPv6", default, skip_serializing_if = "String::is_empty")]
    pub address_ipv6: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac_address: String,
}

/// `NetworkDriver.CreateEndpoint`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateEndpointRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "Interface", default)]
    pub interface: Option<EndpointInterface>,
    #[serde(rename = "Options", default, deserialize_with = "nullable")]
    pub options: Options,
}

/// CreateEndpoint's answer. A field Docker filled in must come back empty (libnetwork refuses
/// a driver that changes what its IPAM chose); no interface at all changes nothing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateEndpointAnswer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<EndpointInterface>,
}

/// The requests that name one endpoint: DeleteEndpoint, EndpointOperInfo, Leave,
/// RevokeExternalConnectivity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
}

/// `NetworkDriver.EndpointOperInfo`'s answer: shown by `docker network inspect`/`inspect`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointInfoAnswer {
    pub value: BTreeMap<String, Value>,
}

/// `NetworkDriver.Join`: the endpoint goes into the sandbox (the container's namespace).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    /// The sandbox's namespace (`/var/run/docker/netns/ID`).
    #[serde(rename = "SandboxKey", default)]
    pub sandbox_key: String,
    #[serde(rename = "Options", default, deserialize_with = "nullable")]
    pub options: Options,
}

/// The interface dockerd moves into the sandbox: `SrcName` in dockerd's namespace, renamed
/// there to `DstPrefix` + the next free index (`eth0`, `eth1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InterfaceName {
    pub src_name: String,
    pub dst_prefix: String,
}

/// Join's answer. Docker gives the interface its addresses and a default route via `Gateway`
/// (and one via `GatewayIPv6`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct JoinAnswer {
    pub interface_name: InterfaceName,
    pub gateway: String,
    /// On a dual-stack network: the IPv6 gateway, for Docker's IPv6 default route.
    #[serde(rename = "GatewayIPv6", default, skip_serializing_if = "String::is_empty")]
    pub gateway_ipv6: String,
    /// Whether Docker should connect the container to its gateway bridge for the outside
    /// world: never, bpfnet's datapath takes the container there itself.
    pub disable_gateway_service: bool,
}

/// `NetworkDriver.ProgramExternalConnectivity`: the container's published ports (and exposed
/// ones, which need nothing here).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExternalConnectivityRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "Options", default, deserialize_with = "nullable")]
    pub options: Options,
}

/// One `-p` binding (libnetwork's `types.PortBinding`): the container's `Port` reached at
/// `HostIP:HostPort`, or at one free port of `HostPort..=HostPortEnd` when that is a range.
/// `Proto` is the IP protocol number (6 TCP, 17 UDP); an address is `""` when not given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PortBinding {
    pub proto: u8,
    #[serde(rename = "IP", default)]
    pub ip: String,
    pub port: u16,
    #[serde(rename = "HostIP", default)]
    pub host_ip: String,
    pub host_port: u16,
    #[serde(default)]
    pub host_port_end: u16,
}

/// A network-scoped discovery event (`NetworkDriver.DiscoverNew`/`DiscoverDelete`): swarm's
/// node discovery, nothing for a local driver to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DiscoveryRequest {
    pub discovery_type: i64,
    #[serde(default)]
    pub discovery_data: Value,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Requests as dockerd 20.10 marshals them (Go's field names, nil as null).
    #[test]
    fn requests_read_as_docker_writes_them() {
        let create: CreateNetworkRequest = serde_json::from_value(json!({
            "NetworkID": "4d1a",
            "Options": {
                "com.docker.network.enable_ipv6": false,
                "com.docker.network.generic": {"com.example": "x"}
            },
            "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "172.18.0.0/16",
                          "Gateway": "172.18.0.1/16", "AuxAddresses": null}],
            "IPv6Data": null
        }))
        .unwrap();
        assert_eq!(create.network_id, "4d1a");
        assert_eq!(create.ipv4_data[0].pool, "172.18.0.0/16");
        assert_eq!(create.ipv4_data[0].gateway, "172.18.0.1/16");
        assert!(create.ipv6_data.is_empty() && create.ipv4_data[0].aux_addresses.is_empty());
        assert_eq!(create.options[GENERIC_OPTIONS]["com.example"], "x");

        let endpoint: CreateEndpointRequest = serde_json::from_value(json!({
            "NetworkID": "4d1a", "EndpointID": "9e2b",
            "Interface": {"Address": "172.18.0.2/16", "AddressIPv6": "", "MacAddress": ""},
            "Options": {"com.docker.network.endpoint.exposedports": null}
        }))
        .unwrap();
        let iface = endpoint.interface.unwrap();
        assert_eq!((iface.address.as_str(), iface.mac_address.as_str()), ("172.18.0.2/16", ""));

        let join: JoinRequest = serde_json::from_value(json!({
            "NetworkID": "4d1a", "EndpointID": "9e2b", "SandboxKey": "/var/run/docker/netns/c0ffee",
            "Options": null
        }))
        .unwrap();
        assert_eq!(join.sandbox_key, "/var/run/docker/netns/c0ffee");

        let connectivity: ExternalConnectivityRequest = serde_json::from_value(json!({
            "NetworkID": "4d1a", "EndpointID": "9e2b",
            "Options": {
                "com.docker.network.endpoint.exposedports": [{"Proto": 6, "Port": 80}],
                "com.docker.network.portmap": [
                    {"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080},
                    {"Proto": 17, "IP": "", "Port": 53, "HostIP": "10.0.0.1", "HostPort": 5300, "HostPortEnd": 5310}
                ]
            }
        }))
        .unwrap();
        let bindings: Vec<PortBinding> = serde_json::from_value(connectivity.options[PORT_MAP].clone()).unwrap();
        assert_eq!(
            bindings[1],
            PortBinding {
                proto: 17,
                ip: String::new(),
                port: 53,
                host_ip: "10.0.0.1".into(),
                host_port: 5300,
                host_port_end: 5310
            }
        );
        let leave: EndpointRequest =
            serde_json::from_value(json!({"NetworkID": "4d1a", "EndpointID": "9e2b"})).unwrap();
        assert_eq!(leave.endpoint_id, "9e2b");
    }

    /// Answers with the field names libnetwork's remote driver reads.
    #[test]
    fn answers_write_go_field_names() {
        let activate = ActivateAnswer { implements: vec!["NetworkDriver".into()] };
        assert_eq!(serde_json::to_value(activate).unwrap(), json!({"Implements": ["NetworkDriver"]}));
        let caps = CapabilitiesAnswer { scope: Scope::Local, connectivity_scope: Scope::Local };
        assert_eq!(serde_json::to_value(caps).unwrap(), json!({"Scope": "local", "ConnectivityScope": "local"}));
        // Docker filled the address: nothing of it comes back.
        let mac_only = CreateEndpointAnswer {
            interface: Some(EndpointInterface { mac_address: "02:42:ac:12:00:02".into(), ..Default::default() }),
        };
        assert_eq!(serde_json::to_value(mac_only).unwrap(), json!({"Interface": {"MacAddress": "02:42:ac:12:00:02"}}));
        assert_eq!(serde_json::to_value(CreateEndpointAnswer::default()).unwrap(), json!({}));
        let join = JoinAnswer {
            interface_name: InterfaceName { src_name: "bp0badcafe".into(), dst_prefix: "eth".into() },
            gateway: "172.18.0.1".into(),
            gateway_ipv6: String::new(),
            disable_gateway_service: true,
        };
        assert_eq!(
            serde_json::to_value(join).unwrap(),
            json!({"InterfaceName": {"SrcName": "bp0badcafe", "DstPrefix": "eth"}, "Gateway": "172.18.0.1",
                   "DisableGatewayService": true})
        );
        let err = ErrorAnswer { err: "no such network".into() };
        assert_eq!(serde_json::to_value(err).unwrap(), json!({"Err": "no such network"}));
        assert_eq!(serde_json::to_value(Empty {}).unwrap(), json!({}));
    }

    /// Each answer reads back as written (both sides share these types: the tests' client too).
    #[test]
    fn answers_round_trip() {
        let answer = JoinAnswer {
            interface_name: InterfaceName { src_name: "bp1".into(), dst_prefix: "eth".into() },
            gateway: "10.1.0.1".into(),
            gateway_ipv6: "fd00:1::1".into(),
            disable_gateway_service: true,
        };
        let text = serde_json::to_string(&answer).unwrap();
        assert_eq!(serde_json::from_str::<JoinAnswer>(&text).unwrap(), answer);
        let binding = PortBinding {
            proto: 6,
            ip: String::new(),
            port: 80,
            host_ip: String::new(),
            host_port: 8080,
            host_port_end: 8080,
        };
        let text = serde_json::to_string(&binding).unwrap();
        assert!(text.contains("\"HostPortEnd\":8080") && text.contains("\"HostIP\":\"\""), "{text}");
        assert_eq!(serde_json::from_str::<PortBinding>(&text).unwrap(), binding);
    }
}
