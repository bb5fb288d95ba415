//! Published ports, as `docker run -p` writes them: `[HOST_IP:]HOST_PORT:PORT[/tcp|/udp]`, with
//! ranges (`8000-8010:8000-8010`) and IPv6 host addresses in brackets (`[2001:db8::1]:80:80`).
//! Each published port is one entry of the SERVICES map (and one of PUBLISHED6 for a container
//! with an IPv6 address), so publishing the 10,000th costs what publishing the first did.
//!
//! As Docker: without a host address a port is published on both families (IPv6 when the
//! container has an IPv6 address); with an IPv4 one on IPv4 only, with an IPv6 one (`[::]`
//! for all of the host's) on IPv6 only.
use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    ops::RangeInclusive,
};

use anyhow::{bail, Context, Result};
use datapath_common::{
    ipv4_be, ipv6_be, PublishedPortKey, PublishedPortKey6, PublishedPortTarget, PublishedPortTarget6, IPPROTO_TCP,
    IPPROTO_UDP,
};

use crate::datapath::Datapath;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    fn number(self) -> u8 {
        match self {
            Protocol::Tcp => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// One published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortMapping {
    /// None: every host address of both families (in the datapath: the uplink's). `::`: every
    /// IPv6 one. (Older states hold IPv4 addresses only; they read as they are.)
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)) {
            IpAddr::V4(ip) => write!(f, "{ip}:")?,
            IpAddr::V6(ip) => write!(f, "[{ip}]:")?,
        }
        write!(f, "{}->{}/{}", self.host_port, self.container_port, self.protocol)
    }
}

impl PortMapping {
    /// The key of PUBLISHED_PORTS (the kernel's SERVICES map) this mapping writes; none for
    /// a mapping on an IPv6 host address.
    pub fn map_key(&self) -> Option<PublishedPortKey> {
        let addr = match self.host_ip {
            None => 0,
            Some(IpAddr::V4(ip)) => ipv4_be(ip.octets()),
            Some(IpAddr::V6(_)) => return None,
        };
        Some(PublishedPortKey { addr, port: self.host_port.to_be(), proto: self.protocol.number(), _pad: 0 })
    }

    /// The value it writes: the container's address and port.
    pub fn map_target(&self, container_ip: Ipv4Addr) -> PublishedPortTarget {
        PublishedPortTarget { ip: ipv4_be(container_ip.octets()), port: self.container_port.to_be(), _pad: 0 }
    }

    /// The key of PUBLISHED6 this mapping writes for a container with an IPv6 address; none
    /// for a mapping on an IPv4 host address. All zero: the uplink's address.
    pub fn map_key6(&self) -> Option<PublishedPortKey6> {
        let addr = match self.host_ip {
            None => [0; 4],
            Some(IpAddr::V6(ip)) => ipv6_be(ip.octets()),
            Some(IpAddr::V4(_)) => return None,
        };
        Some(PublishedPortKey6 { addr, port: self.host_port.to_be(), proto: self.protocol.number(), _pad: 0 })
    }

    pub fn map_target6(&self, container_ip: Ipv6Addr) -> PublishedPortTarget6 {
        PublishedPortTarget6 { ip: ipv6_be(container_ip.octets()), port: self.container_port.to_be(), _pad: 0 }
    }

    /// Writes the mapping's entries for a container with these addresses: IPv4's, and IPv6's
    /// when the container has an IPv6 address.
    pub fn publish(&self, datapath: &mut Datapath, ip: Ipv4Addr, ip6: Option<Ipv6Addr>) -> Result<()> {
        if let Some(key) = self.map_key() {
            datapath.publish(&key, &self.map_target(ip))?;
        }
        if let (Some(key), Some(ip6)) = (self.map_key6(), ip6) {
            datapath.publish6(&key, &self.map_target6(ip6))?;
        }
        Ok(())
    }

    /// Removes the mapping's entries of both families. Idempotent.
    pub fn unpublish(&self, datapath: &mut Datapath) -> Result<()> {
        if let Some(key) = self.map_key() {
            datapath.unpublish(&key)?;
        }
        if let Some(key) = self.map_key6() {
            datapath.unpublish6(&key)?;
        }
        Ok(())
    }

    /// Whether both would answer the same packets (a port on all addresses overlaps every
    /// address's).
    pub fn overlaps(&self, other: &PortMapping) -> bool {
        let addresses = match (self.host_ip, other.host_ip) {
            (None, _) | (_, None) => true,
            (Some(a), Some(b)) => a == b || (a.is_ipv4() == b.is_ipv4() && (a.is_unspecified() || b.is_unspecified())),
        };
        self.host_port == other.host_port && self.protocol == other.protocol && addresses
    }
}

fn parse_ports(text: &str, spec: &str) -> Result<RangeInclusive<u16>> {
    let port = |p: &str| -> Result<u16> {
        match p.parse::<u16>() {
            Ok(0) | Err(_) => bail!("invalid --publish {spec:?}: {p:?} is not a port (1-65535)"),
            Ok(port) => Ok(port),
        }
    };
    match text.split_once('-') {
        Some((low, high)) => {
            let (low, high) = (port(low)?, port(high)?);
            if low > high {
                bail!("invalid --publish {spec:?}: the range {text} runs backwards");
            }
            Ok(low..=high)
        }
        None => {
            let p = port(text)?;
            Ok(p..=p)
        }
    }
}

/// Parses a `--publish` value into the ports it publishes.
pub fn parse(spec: &str) -> Result<Vec<PortMapping>> {
    let (ports, protocol) = match spec.rsplit_once('/') {
        Some((ports, "tcp")) => (ports, Protocol::Tcp),
        Some((ports, "udp")) => (ports, Protocol::Udp),
        Some((_, other)) => bail!("invalid --publish {spec:?}: protocol {other:?} is not tcp or udp"),
        None => (spec, Protocol::Tcp),
    };
    let usage = || {
        anyhow::anyhow!(
            "invalid --publish {spec:?}: write [HOST_IP:]HOST_PORT:PORT[/tcp|/udp], e.g. 8080:80, \
             127.0.0.1:8000-8010:8000-8010/udp or [2001:db8::1]:8080:80 (IPv6 addresses in brackets)"
        )
    };
    // An IPv6 host address is bracketed, as in Docker: its colons are not separators.
    let (bracketed, ports) = match ports.strip_prefix('[') {
        Some(rest) => {
            let (ip, rest) = rest.split_once("]:").ok_or_else(usage)?;
            let ip: Ipv6Addr =
                ip.parse().with_context(|| format!("invalid --publish {spec:?}: [{ip}] is not an IPv6 address"))?;
            (Some(IpAddr::V6(ip)), rest)
        }
        None => (None, ports),
    };
    let parts: Vec<&str> = ports.split(':').collect();
    let (host_ip, host, container) = match (bracketed, parts.as_slice()) {
        (Some(ip), [host, container]) => (Some(ip), *host, *container),
        (None, [host, container]) => (None, *host, *container),
        (None, [ip, host, container]) => {
            let ip: Ipv4Addr = ip.parse().with_context(|| {
                format!("invalid --publish {spec:?}: {ip:?} is not an IPv4 address (write IPv6 ones in brackets)")
            })?;
            (if ip.is_unspecified() { None } else { Some(IpAddr::V4(ip)) }, *host, *container)
        }
        _ => return Err(usage()),
    };
    let (host, container) = (parse_ports(host, spec)?, parse_ports(container, spec)?);
    if host.len() != container.len() {
        bail!(
            "invalid --publish {spec:?}: the host range has {} ports and the container range {}; they must match",
            host.len(),
            container.len()
        );
    }
    Ok(host
        .zip(container)
        .map(|(host_port, container_port)| PortMapping { host_ip, host_port, container_port, protocol })
        .collect())
}

/// Who publishes what, indexed by (port, protocol): a conflict check or an ownership check
/// looks at one small bucket, whatever the number of ports published. Kept up to date by
/// [`crate::host::state::State`] with every change, never rebuilt per request.
#[derive(Debug, Clone, Default)]
pub struct PublishedPorts {
    by_port: HashMap<(u16, Protocol), Vec<(PortMapping, String)>>,
}

impl PublishedPorts {
    pub fn add(&mut self, owner: &str, mappings: &[PortMapping]) {
        for mapping in mappings {
            self.by_port.entry((mapping.host_port, mapping.protocol)).or_default().push((*mapping, owner.to_owned()));
        }
    }

    /// Forgets `owner`'s `mappings` (those it does not publish are skipped).
    pub fn remove(&mut self, owner: &str, mappings: &[PortMapping]) {
        for mapping in mappings {
            let key = (mapping.host_port, mapping.protocol);
            let Some(bucket) = self.by_port.get_mut(&key) else { continue };
            if let Some(i) = bucket.iter().position(|(m, o)| m == mapping && o == owner) {
                bucket.swap_remove(i);
            }
            if bucket.is_empty() {
                self.by_port.remove(&key);
            }
        }
    }

    /// Whether `owner` publishes exactly `mapping`.
    pub fn publishes(&self, owner: &str, mapping: &PortMapping) -> bool {
        self.by_port
            .get(&(mapping.host_port, mapping.protocol))
            .is_some_and(|bucket| bucket.iter().any(|(m, o)| m == mapping && o == owner))
    }

    /// How many ports are published on this host.
    #[cfg(test)]
    pub fn count(&self) -> usize {
        self.by_port.values().map(Vec::len).sum()
    }

    /// Fails, naming the owner, if any of `mappings` is published already (or twice in itself).
    pub fn check_free(&self, mappings: &[PortMapping]) -> Result<()> {
        let mut seen: HashMap<(u16, Protocol), Vec<&PortMapping>> = HashMap::new();
        for mapping in mappings {
            let key = (mapping.host_port, mapping.protocol);
            if let Some((owner_mapping, owner)) =
                self.by_port.get(&key).into_iter().flatten().find(|(m, _)| m.overlaps(mapping))
            {
                bail!(
                    "host port {}/{} is already published by container {owner:?} ({owner_mapping}); \
                     choose another host port or unpublish it first",
                    mapping.host_port,
                    mapping.protocol
                );
            }
            let twice = seen.entry(key).or_default();
            if twice.iter().any(|m| m.overlaps(mapping)) {
                bail!("host port {}/{} is given twice", mapping.host_port, mapping.protocol);
            }
            twice.push(mapping);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_syntax() {
        let m = parse("8080:80").unwrap();
        assert_eq!(
            m,
            vec![PortMapping { host_ip: None, host_port: 8080, container_port: 80, protocol: Protocol::Tcp }]
        );
        let m = parse("127.0.0.1:5353:53/udp").unwrap();
        assert_eq!(m[0].host_ip, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert_eq!(m[0].protocol, Protocol::Udp);
        assert_eq!(parse("0.0.0.0:1:2").unwrap()[0].host_ip, None);
        let r = parse("8000-8009:9000-9009/tcp").unwrap();
        assert_eq!(r.len(), 10);
        assert_eq!((r[9].host_port, r[9].container_port), (8009, 9009));
        for bad in
            ["80", "a:80", "8080:80/sctp", "0:80", "70000:80", "8000-8010:80", "9-1:9-1", "1.2.3:8:8", "::1:80:80"]
        {
            assert!(parse(bad).is_err(), "{bad} should be refused");
        }
        assert_eq!(parse("8080:80").unwrap()[0].to_string(), "0.0.0.0:8080->80/tcp");
    }

    #[test]
    fn ipv6_host_addresses_in_brackets() {
        let m = parse("[2001:db8::1]:8080:80/udp").unwrap();
        assert_eq!(m[0].host_ip, Some("2001:db8::1".parse().unwrap()));
        assert_eq!(m[0].to_string(), "[2001:db8::1]:8080->80/udp");
        assert_eq!(parse(&m[0].to_string().replace("->", ":")).unwrap(), m, "what is shown parses back");
        assert!(m[0].map_key().is_none(), "on IPv6 only");
        assert_eq!(m[0].map_key6().unwrap().addr, ipv6_be("2001:db8::1".parse::<Ipv6Addr>().unwrap().octets()));
        let both = parse("8080:80").unwrap()[0];
        assert_eq!((both.map_key().unwrap().addr, both.map_key6().unwrap().addr), (0, [0; 4]), "on both");
        let v4 = parse("10.0.0.1:8080:80").unwrap()[0];
        assert!(v4.map_key().is_some() && v4.map_key6().is_none(), "on IPv4 only");
        assert_eq!(parse("[::]:9:9").unwrap()[0].host_ip, Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)));
        for bad in
            ["[2001:db8::1]8080:80", "[10.0.0.1]:80:80", "[2001:db8::1]:1:8080:80", "2001:db8::1:80:80", "[::1:80:80"]
        {
            assert!(parse(bad).is_err(), "{bad} should be refused");
        }
        // Every IPv6 address overlaps one of them; IPv4 ones do not.
        let any6 = parse("[::]:8080:80").unwrap()[0];
        let one6 = parse("[2001:db8::1]:8080:80").unwrap()[0];
        assert!(any6.overlaps(&one6) && both.overlaps(&one6) && !v4.overlaps(&one6) && !v4.overlaps(&any6));
    }

    #[test]
    fn overlaps() {
        let all = parse("8080:80").unwrap()[0];
        let local = parse("127.0.0.1:8080:80").unwrap()[0];
        let other = parse("127.0.0.2:8080:80").unwrap()[0];
        let udp = parse("8080:80/udp").unwrap()[0];
        assert!(all.overlaps(&local) && local.overlaps(&all));
        assert!(!local.overlaps(&other));
        assert!(!all.overlaps(&udp));
    }
}
