//! The control API between the CLI and `bpfnet agent`: HTTP/1.1 with JSON bodies on a Unix
//! socket, as dockerd's. One [`Call`] per operation, so client and server agree on every route
//! from one definition.
//!
//! | call | route | body |
//! |---|---|---|
//! | create a network | `POST /v1/networks` | [`CreateNetwork`] |
//! | list networks | `GET /v1/networks` | |
//! | inspect a network | `GET /v1/networks/{name}` | |
//! | remove a network | `DELETE /v1/networks/{name}` | |
//! | create a container | `POST /v1/containers` | [`CreateContainer`] |
//! | list containers | `GET /v1/containers` | |
//! | inspect a container | `GET /v1/containers/{name}` | |
//! | remove a container | `DELETE /v1/containers/{name}` | |
//! | attach a namespace someone else made | `POST /v1/attachments` | [`Attach`] |
//! | list attachments | `GET /v1/attachments` | |
//! | check an attachment against the kernel | `GET /v1/attachments/{id}/{ifname}/check` | |
//! | detach (idempotent) | `DELETE /v1/attachments/{id}/{ifname}` | |
//! | publish ports | `POST /v1/containers/{name}/publish` | [`PortSpecs`] |
//! | unpublish ports | `POST /v1/containers/{name}/unpublish` | [`PortSpecs`] |
//! | status | `GET /v1/status` | |
//! | list tracked flows | `GET /v1/conntrack` | |
//! | expire idle flows now | `POST /v1/conntrack/gc` | |
//! | remove everything | `POST /v1/down` | |
//! | stream datapath events (NDJSON) | `GET /v1/monitor?FILTERS` | |
//! | Prometheus metrics | `GET /metrics` | |
//!
//! Answers are JSON, typed in [`answers`]; errors are `{"error": "..."}` with a 4xx/5xx status.
mod answers;
mod monitor;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use answers::*;
pub use monitor::*;
use serde::{Deserialize, Serialize};

/// Default path of the API socket.
pub const DEFAULT_SOCKET: &str = "/run/bpfnet/bpfnet.sock";
/// Largest request body the agent reads.
pub const MAX_BODY_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateNetwork {
    pub name: String,
    /// `--subnet`, at most one per family (an IPv4 one is required). Older clients send one
    /// string as `subnet`.
    #[serde(alias = "subnet", deserialize_with = "one_or_many")]
    pub subnets: Vec<String>,
    /// `--gateway`, at most one per family; older clients send one or null as `gateway`.
    #[serde(default, alias = "gateway", deserialize_with = "one_or_many")]
    pub gateways: Vec<IpAddr>,
    /// `--ipv6`: dual stack, with a unique local /64 unless `subnets` holds an IPv6 one.
    #[serde(default)]
    pub ipv6: bool,
}

/// A value that was one item (or null) in an older version of the API and is a list now.
fn one_or_many<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany<T> {
        Many(Vec<T>),
        One(T),
    }
    Ok(match Option::<OneOrMany<T>>::deserialize(deserializer)? {
        None => vec![],
        Some(OneOrMany::One(one)) => vec![one],
        Some(OneOrMany::Many(many)) => many,
    })
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateContainer {
    pub name: String,
    pub network: String,
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// A fixed IPv6 address on a dual-stack network; default: the lowest free one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
    /// `--publish` values, Docker's syntax.
    #[serde(default)]
    pub publish: Vec<String>,
}

/// Attaches a network namespace that someone else made (a container engine), by path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attach {
    /// `/proc/PID/ns/net`, `/run/netns/NAME`, `/var/run/netns/cni-...`.
    pub netns: std::path::PathBuf,
    /// The engine's container id; with `ifname`, the attachment's identity.
    pub container_id: String,
    /// The interface's name inside the namespace.
    pub ifname: String,
    pub network: String,
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
    /// `--publish` values, Docker's syntax.
    #[serde(default)]
    pub publish: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpecs {
    pub specs: Vec<String>,
}

/// One API call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    CreateNetwork(CreateNetwork),
    ListNetworks,
    InspectNetwork(String),
    RemoveNetwork(String),
    CreateContainer(CreateContainer),
    ListContainers,
    InspectContainer(String),
    RemoveContainer(String),
    Attach(Attach),
    ListAttachments,
    /// Container id and interface name.
    CheckAttachment(String, String),
    Detach(String, String),
    Publish(String, PortSpecs),
    Unpublish(String, PortSpecs),
    Status,
    ListConntrack,
    CollectConntrack,
    Down,
    /// A stream of events, not one answer: see `cli::client::stream`.
    Monitor(MonitorFilter),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Delete,
}

/// The API's paths, written once: the client fills in `{name}` ([`Call::request`]), the server
/// routes them as they are (axum's syntax).
pub mod routes {
    pub const NETWORKS: &str = "/v1/networks";
    pub const NETWORK: &str = "/v1/networks/{name}";
    pub const CONTAINERS: &str = "/v1/containers";
    pub const CONTAINER: &str = "/v1/containers/{name}";
    pub const ATTACHMENTS: &str = "/v1/attachments";
    pub const ATTACHMENT: &str = "/v1/attachments/{id}/{ifname}";
    pub const ATTACHMENT_CHECK: &str = "/v1/attachments/{id}/{ifname}/check";
    pub const PUBLISH: &str = "/v1/containers/{name}/publish";
    pub const UNPUBLISH: &str = "/v1/containers/{name}/unpublish";
    pub const STATUS: &str = "/v1/status";
    pub const CONNTRACK: &str = "/v1/conntrack";
    pub const CONNTRACK_GC: &str = "/v1/conntrack/gc";
    pub const DOWN: &str = "/v1/down";
    pub const MONITOR: &str = "/v1/monitor";
    /// Prometheus' conventional path, outside the versioned API: scrapers are configured with it.
    pub const METRICS: &str = "/metrics";
}

impl Call {
    /// The HTTP method, path and JSON body of this call.
    pub fn request(&self) -> (Method, String, Option<serde_json::Value>) {
        let named = |route: &str, name: &str| route.replace("{name}", &encode(name));
        let attachment = |route: &str, id: &str, ifname: &str| {
            route.replace("{id}", &encode(id)).replace("{ifname}", &encode(ifname))
        };
        match self {
            Call::CreateNetwork(c) => (Method::Post, routes::NETWORKS.into(), body(c)),
            Call::ListNetworks => (Method::Get, routes::NETWORKS.into(), None),
            Call::InspectNetwork(n) => (Method::Get, named(routes::NETWORK, n), None),
            Call::RemoveNetwork(n) => (Method::Delete, named(routes::NETWORK, n), None),
            Call::CreateContainer(c) => (Method::Post, routes::CONTAINERS.into(), body(c)),
            Call::ListContainers => (Method::Get, routes::CONTAINERS.into(), None),
            Call::InspectContainer(n) => (Method::Get, named(routes::CONTAINER, n), None),
            Call::RemoveContainer(n) => (Method::Delete, named(routes::CONTAINER, n), None),
            Call::Attach(a) => (Method::Post, routes::ATTACHMENTS.into(), body(a)),
            Call::ListAttachments => (Method::Get, routes::ATTACHMENTS.into(), None),
            Call::CheckAttachment(id, i) => (Method::Get, attachment(routes::ATTACHMENT_CHECK, id, i), None),
            Call::Detach(id, i) => (Method::Delete, attachment(routes::ATTACHMENT, id, i), None),
            Call::Publish(n, s) => (Method::Post, named(routes::PUBLISH, n), body(s)),
            Call::Unpublish(n, s) => (Method::Post, named(routes::UNPUBLISH, n), body(s)),
            Call::Status => (Method::Get, routes::STATUS.into(), None),
            Call::ListConntrack => (Method::Get, routes::CONNTRACK.into(), None),
            Call::CollectConntrack => (Method::Post, routes::CONNTRACK_GC.into(), None),
            Call::Down => (Method::Post, routes::DOWN.into(), None),
            Call::Monitor(filter) => {
                let query = serde_urlencoded::to_string(filter).expect("filters always encode");
                (Method::Get, format!("{}?{query}", routes::MONITOR), None)
            }
        }
    }
}

/// Names are `[A-Za-z0-9_.-]` when valid; anything else is percent-encoded so that an invalid
/// name still reaches the agent, which refuses it with a proper message.
fn encode(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn body(value: &impl Serialize) -> Option<serde_json::Value> {
    Some(serde_json::to_value(value).expect("API bodies always serialize"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let (method, path, body) = Call::Publish("web".into(), PortSpecs { specs: vec!["8080:80".into()] }).request();
        assert_eq!((method, path.as_str()), (Method::Post, "/v1/containers/web/publish"));
        assert_eq!(body.unwrap(), serde_json::json!({"specs": ["8080:80"]}));
        assert_eq!(Call::RemoveNetwork("a b/c".into()).request().1, "/v1/networks/a%20b%2Fc");
        let (method, path, _) = Call::Detach("abc".into(), "eth0".into()).request();
        assert_eq!((method, path.as_str()), (Method::Delete, "/v1/attachments/abc/eth0"));
    }

    /// An older client's request (one subnet, one gateway or null) still reads.
    #[test]
    fn an_older_clients_network_request_reads() {
        let old: CreateNetwork =
            serde_json::from_value(serde_json::json!({"name": "n", "subnet": "10.1.0.0/24", "gateway": null})).unwrap();
        assert_eq!((old.subnets, old.gateways, old.ipv6), (vec!["10.1.0.0/24".to_owned()], vec![], false));
        let old: CreateNetwork =
            serde_json::from_value(serde_json::json!({"name": "n", "subnet": "10.1.0.0/24", "gateway": "10.1.0.9"}))
                .unwrap();
        assert_eq!(old.gateways, vec!["10.1.0.9".parse::<IpAddr>().unwrap()]);
        let new = CreateNetwork {
            name: "n".into(),
            subnets: vec!["10.1.0.0/24".into(), "fd00:1::/64".into()],
            gateways: vec!["fd00:1::9".parse().unwrap()],
            ipv6: true,
        };
        assert_eq!(serde_json::from_value::<CreateNetwork>(serde_json::to_value(&new).unwrap()).unwrap(), new);
    }
}
