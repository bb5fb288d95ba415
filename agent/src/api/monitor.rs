//! `bpfnet monitor`: the events the agent streams (NDJSON, one [`MonitorEvent`] a line) and
//! the filters a client asks for ([`MonitorFilter`], the query of `GET /v1/monitor`).
use std::net::Ipv4Addr;

use datapath_common::DropReason;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// One event of the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MonitorEvent {
    Drop(DropEvent),
    Flow(FlowEvent),
    /// Events that did not reach this listener: the datapath's budget was spent or its ring
    /// buffer full, or this listener read too slowly. Sent whatever the filters.
    Lost(LostEvents),
}

/// A packet the datapath dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropEvent {
    /// When the agent read it, nanoseconds since the Unix epoch.
    pub time_ns: u64,
    pub reason: String,
    /// The interface it came in on, and the container and network that interface is of.
    pub interface: String,
    pub container: Option<String>,
    pub network: Option<String>,
    /// The whole frame's length.
    pub length: u32,
    /// None when it was not an IPv4 packet (ARP, IPv6, too short to tell).
    pub packet: Option<Tuple>,
}

/// A flow the datapath started translating, or the agent's garbage collection expired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowEvent {
    pub time_ns: u64,
    pub event: FlowChange,
    /// snat, dnat or hairpin.
    pub kind: String,
    /// The container whose flow it is: that opened it (snat, hairpin) or that it is
    /// published to (dnat).
    pub container: Option<String>,
    /// As its first packet carried it, and after translation.
    pub original: Tuple,
    pub translated: Tuple,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowChange {
    New,
    Expired,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostEvents {
    pub time_ns: u64,
    /// rate_limited, ring_full (the datapath's) or slow_listener (this stream's).
    pub cause: String,
    pub count: u64,
}

/// Addresses, ports (none for ICMP and later fragments) and protocol of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tuple {
    pub protocol: Protocol,
    pub source: Ipv4Addr,
    pub source_port: Option<u16>,
    pub destination: Ipv4Addr,
    pub destination_port: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    /// Another IP protocol.
    #[serde(untagged)]
    Other(u8),
}

impl Protocol {
    /// The protocols a filter may name.
    pub const FILTERABLE: [&str; 3] = ["tcp", "udp", "icmp"];

    pub fn from_name(name: &str) -> Option<Protocol> {
        match name {
            "tcp" => Some(Protocol::Tcp),
            "udp" => Some(Protocol::Udp),
            "icmp" => Some(Protocol::Icmp),
            _ => None,
        }
    }

    pub fn from_number(number: u8) -> Protocol {
        match number {
            datapath_common::IPPROTO_TCP => Protocol::Tcp,
            datapath_common::IPPROTO_UDP => Protocol::Udp,
            datapath_common::IPPROTO_ICMP => Protocol::Icmp,
            other => Protocol::Other(other),
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Protocol::Tcp => f.write_str("tcp"),
            Protocol::Udp => f.write_str("udp"),
            Protocol::Icmp => f.write_str("icmp"),
            Protocol::Other(n) => write!(f, "proto-{n}"),
        }
    }
}

impl std::fmt::Display for Tuple {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let end = |ip: Ipv4Addr, port: Option<u16>| port.map_or(ip.to_string(), |p| format!("{ip}:{p}"));
        write!(
            f,
            "{} {} -> {}",
            self.protocol,
            end(self.source, self.source_port),
            end(self.destination, self.destination_port)
        )
    }
}

/// Which events a listener wants; every filter given must match. The query string of
/// `GET /v1/monitor`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorFilter {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<EventType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// A drop reason, as `bpfnet status` names it; only drops have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Either address of the packet (either tuple of a flow) in this network; an address
    /// alone is a /32.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "cidr")]
    pub ip: Option<Ipv4Net>,
    /// Either port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<Protocol>,
    /// First replay this many of the most recent drops the agent kept (that match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    Drop,
    Flow,
}

impl MonitorFilter {
    /// Refuses a filter that could never match: a drop reason that does not exist, or a
    /// reason asked of flows.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(reason) = &self.reason {
            if !DropReason::ALL.iter().any(|r| r.name() == reason) {
                let known: Vec<&str> = DropReason::ALL.iter().map(|r| r.name()).collect();
                return Err(format!("unknown drop reason {reason:?}; known reasons: {}", known.join(", ")));
            }
            if self.kind == Some(EventType::Flow) {
                return Err("--reason is a drop's; flows have none (leave out --type flow or --reason)".into());
            }
        }
        Ok(())
    }

    /// Whether the listener wants drops, and flows.
    pub fn wants(&self, kind: EventType) -> bool {
        match kind {
            EventType::Drop => self.kind != Some(EventType::Flow),
            EventType::Flow => self.kind != Some(EventType::Drop) && self.reason.is_none(),
        }
    }

    pub fn matches(&self, event: &MonitorEvent) -> bool {
        let (kind, container, reason, tuples): (_, _, _, Vec<&Tuple>) = match event {
            MonitorEvent::Lost(_) => return true,
            MonitorEvent::Drop(d) => (EventType::Drop, &d.container, Some(&d.reason), d.packet.iter().collect()),
            MonitorEvent::Flow(f) => (EventType::Flow, &f.container, None, vec![&f.original, &f.translated]),
        };
        let tuple_matches = |test: &dyn Fn(&Tuple) -> bool| tuples.iter().any(|t| test(t));
        self.wants(kind)
            && self.container.as_ref().is_none_or(|c| container.as_ref() == Some(c))
            && self.reason.as_ref().is_none_or(|r| reason == Some(r))
            && self.ip.is_none_or(|net| tuple_matches(&|t| net.contains(&t.source) || net.contains(&t.destination)))
            && self.port.is_none_or(|p| tuple_matches(&|t| t.source_port == Some(p) || t.destination_port == Some(p)))
            && self.proto.is_none_or(|proto| tuple_matches(&|t| t.protocol == proto))
    }
}

/// `--ip` as a network or a single address.
mod cidr {
    use ipnet::Ipv4Net;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn parse(text: &str) -> Result<Ipv4Net, String> {
        text.parse::<Ipv4Net>()
            .or_else(|_| text.parse::<std::net::Ipv4Addr>().map(Ipv4Net::from))
            .map_err(|_| format!("{text:?} is neither an IPv4 address nor a network (10.0.0.0/24)"))
    }

    pub fn serialize<S: Serializer>(net: &Option<Ipv4Net>, s: S) -> Result<S::Ok, S::Error> {
        match net {
            Some(net) => s.serialize_str(&net.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Ipv4Net>, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map(Some).map_err(serde::de::Error::custom)
    }
}

pub use cidr::parse as parse_ip_filter;

#[cfg(test)]
mod tests {
    use super::*;

    fn drop_event(reason: &str, container: &str, tuple: Tuple) -> MonitorEvent {
        MonitorEvent::Drop(DropEvent {
            time_ns: 1,
            reason: reason.into(),
            interface: "bn1".into(),
            container: Some(container.into()),
            network: Some("net".into()),
            length: 60,
            packet: Some(tuple),
        })
    }

    const UDP: Tuple = Tuple {
        protocol: Protocol::Udp,
        source: Ipv4Addr::new(10, 0, 0, 2),
        source_port: Some(4000),
        destination: Ipv4Addr::new(198, 51, 100, 1),
        destination_port: Some(53),
    };

    #[test]
    fn filters_match_on_every_field() {
        let event = drop_event("spoofed_source", "web", UDP);
        let all = |q: &str| serde_urlencoded::from_str::<MonitorFilter>(q).unwrap().matches(&event);
        assert!(all(""));
        assert!(all("type=drop&container=web&reason=spoofed_source&ip=198.51.100.0%2F24&port=53&proto=udp"));
        assert!(all("ip=10.0.0.2"));
        assert!(!all("type=flow"));
        assert!(!all("container=db"));
        assert!(!all("reason=malformed"));
        assert!(!all("ip=10.1.0.0/16"));
        assert!(!all("port=80"));
        assert!(!all("proto=tcp"));
        let lost = MonitorEvent::Lost(LostEvents { time_ns: 1, cause: "rate_limited".into(), count: 3 });
        assert!(serde_urlencoded::from_str::<MonitorFilter>("container=db").unwrap().matches(&lost));
    }

    #[test]
    fn bad_filters_are_named() {
        let err = serde_urlencoded::from_str::<MonitorFilter>("ip=10.0.0.300").unwrap_err().to_string();
        assert!(err.contains("neither an IPv4 address nor a network"), "{err}");
        assert!(serde_urlencoded::from_str::<MonitorFilter>("colour=red").is_err());
        let filter = MonitorFilter { reason: Some("spoofed".into()), ..Default::default() };
        assert!(filter.validate().unwrap_err().contains("known reasons: malformed"));
    }

    #[test]
    fn a_filter_goes_through_the_query_string_unchanged() {
        let filter = MonitorFilter {
            kind: Some(EventType::Drop),
            container: Some("web".into()),
            ip: Some("10.0.0.0/24".parse().unwrap()),
            proto: Some(Protocol::Tcp),
            last: Some(5),
            ..Default::default()
        };
        let query = serde_urlencoded::to_string(&filter).unwrap();
        assert_eq!(serde_urlencoded::from_str::<MonitorFilter>(&query).unwrap(), filter);
    }

    #[test]
    fn events_are_tagged_by_type() {
        let json = serde_json::to_value(drop_event("malformed", "web", UDP)).unwrap();
        assert_eq!(json["type"], "drop");
        assert_eq!(json["packet"]["protocol"], "udp");
        let back: MonitorEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, drop_event("malformed", "web", UDP));
    }
}
