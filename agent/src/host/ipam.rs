//! Address management inside a network's subnets: parsing and checking what users give, and
//! handing out free addresses. One set of rules for both families ([`Subnet`]); what differs
//! (IPv4's broadcast address, IPv6's /64 limit) is said once per family.
use std::{
    fmt::Display,
    io::Read,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{bail, Context, Result};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// What the address management needs of a subnet, for IPv4 and IPv6 alike.
pub trait Subnet: Copy + Eq + Display {
    type Addr: Copy + Eq + Display;
    type Hosts: Iterator<Item = Self::Addr>;
    /// "IPv4" or "IPv6", for messages.
    const FAMILY: &'static str;
    fn contains_addr(&self, ip: &Self::Addr) -> bool;
    /// Its addresses in order, the network address first.
    fn all_addresses(&self) -> Self::Hosts;
    /// An address of the subnet that no host may have: the network address (IPv6's
    /// subnet-router anycast), and IPv4's broadcast address.
    fn is_reserved(&self, ip: &Self::Addr) -> bool;
    /// Whether the two share an address.
    fn overlaps(&self, other: &Self) -> bool;
}

impl Subnet for Ipv4Net {
    type Addr = Ipv4Addr;
    type Hosts = ipnet::Ipv4AddrRange;
    const FAMILY: &'static str = "IPv4";
    fn contains_addr(&self, ip: &Ipv4Addr) -> bool {
        self.contains(ip)
    }
    fn all_addresses(&self) -> Self::Hosts {
        ipnet::Ipv4AddrRange::new(self.network(), self.broadcast())
    }
    fn is_reserved(&self, ip: &Ipv4Addr) -> bool {
        *ip == self.network() || *ip == self.broadcast()
    }
    fn overlaps(&self, other: &Self) -> bool {
        self.contains(&other.network()) || other.contains(&self.network())
    }
}

impl Subnet for Ipv6Net {
    type Addr = Ipv6Addr;
    type Hosts = ipnet::Ipv6AddrRange;
    const FAMILY: &'static str = "IPv6";
    fn contains_addr(&self, ip: &Ipv6Addr) -> bool {
        self.contains(ip)
    }
    fn all_addresses(&self) -> Self::Hosts {
        self.hosts()
    }
    fn is_reserved(&self, ip: &Ipv6Addr) -> bool {
        *ip == self.network()
    }
    fn overlaps(&self, other: &Self) -> bool {
        self.contains(&other.network()) || other.contains(&self.network())
    }
}

/// Longest IPv4 prefix with room for a gateway and a container.
const MAX_IPV4_PREFIX: u8 = 30;
/// Longest IPv6 prefix: a /64, as SLAAC, Docker and the kernel's on-link handling expect.
const MAX_IPV6_PREFIX: u8 = 64;

/// Parses one `--subnet`: an IPv4 or IPv6 CIDR without host bits, with room for a gateway and
/// containers (IPv4: /30 or larger; IPv6: /64 or larger).
pub fn parse_subnet(text: &str) -> Result<IpNet> {
    let subnet: IpNet = text
        .parse()
        .with_context(|| format!("invalid --subnet {text:?}: expected a CIDR such as 10.88.0.0/24 or fd00:88::/64"))?;
    if subnet != subnet.trunc() {
        bail!("invalid --subnet {text:?}: it has host bits set; did you mean {}?", subnet.trunc());
    }
    match subnet {
        IpNet::V4(net) if net.prefix_len() > MAX_IPV4_PREFIX => bail!(
            "invalid --subnet {text:?}: a /{} has no room for a gateway and a container; use /{MAX_IPV4_PREFIX} or larger",
            net.prefix_len()
        ),
        IpNet::V6(net) if net.prefix_len() > MAX_IPV6_PREFIX => bail!(
            "invalid --subnet {text:?}: an IPv6 subnet smaller than a /{MAX_IPV6_PREFIX} is not supported \
             (as Docker, containers get addresses from a /64 or larger); use a /{MAX_IPV6_PREFIX} such as {}/64",
            ipnet::Ipv6Net::new(net.network(), MAX_IPV6_PREFIX).expect("64 is a valid prefix").trunc().network()
        ),
        _ => Ok(subnet),
    }
}

/// Checks that `ip` is a usable host address of `subnet` (not its network or broadcast address).
pub fn check_host_address<S: Subnet>(what: &str, ip: S::Addr, subnet: S) -> Result<()> {
    if !subnet.contains_addr(&ip) {
        bail!("{what} {ip} is outside the subnet {subnet}; choose an address in {subnet}");
    }
    if subnet.is_reserved(&ip) {
        bail!("{what} {ip} is the network or broadcast address of {subnet}; choose a host address");
    }
    Ok(())
}

/// The gateway: the one given, checked, or the subnet's first host address (Docker's default).
pub fn gateway<S: Subnet>(subnet: S, requested: Option<S::Addr>) -> Result<S::Addr> {
    match requested {
        Some(gw) => {
            check_host_address("--gateway", gw, subnet)?;
            Ok(gw)
        }
        None => first_host(subnet, |_| false).context("the subnet has no host address"),
    }
}

/// The lowest host address of `subnet` for which `taken` is false.
fn first_host<S: Subnet>(subnet: S, taken: impl Fn(&S::Addr) -> bool) -> Option<S::Addr> {
    // Bounded: a /64 has 2^64 addresses, and the search ends at the first free one, after at
    // most as many taken ones as the host has containers.
    subnet.all_addresses().find(|ip| !subnet.is_reserved(ip) && !taken(ip))
}

/// The lowest host address of `subnet` that is neither the gateway nor in `used`.
pub fn allocate<S: Subnet>(subnet: S, gateway: S::Addr, used: &[S::Addr]) -> Result<S::Addr> {
    first_host(subnet, |ip| *ip == gateway || used.contains(ip))
        .with_context(|| format!("no free address left in {subnet}; remove a container or use a larger subnet"))
}

/// A fixed address asked for (`--ip`, `--ip6`): a host address of the subnet, not the gateway,
/// not another container's (`owner_of` names who has it).
pub fn check_fixed<S: Subnet>(
    flag: &str,
    ip: S::Addr,
    subnet: S,
    gateway: S::Addr,
    network: &str,
    owner_of: impl Fn(&S::Addr) -> Option<String>,
) -> Result<S::Addr> {
    check_host_address(flag, ip, subnet)?;
    if ip == gateway {
        bail!("{flag} {ip} is the gateway of network {network:?}; choose another address");
    }
    if let Some(owner) = owner_of(&ip) {
        bail!("{flag} {ip} is already in use by container {owner:?}; choose another address");
    }
    Ok(ip)
}

/// A network's addresses as asked for: its IPv4 subnet and gateway, and its IPv6 ones if it is
/// dual stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addressing {
    pub v4: (Ipv4Net, Ipv4Addr),
    pub v6: Option<(Ipv6Net, Ipv6Addr)>,
}

/// Turns `--subnet` (repeatable, at most one per family), `--gateway` (likewise, matched to
/// its subnet by family) and `--ipv6` into a network's addressing. A network always has an
/// IPv4 subnet: the datapath keys a container by its IPv4 address (its conntrack quota, its
/// counters), so IPv6-only networks are refused. `--ipv6` without an IPv6 subnet picks a
/// unique local /64 (RFC 4193, a random global id), as Docker 27 does from its default pool;
/// `taken6` says whether a candidate overlaps another network.
pub fn plan(
    subnets: &[String],
    gateways: &[IpAddr],
    ipv6: bool,
    taken6: impl Fn(&Ipv6Net) -> bool,
) -> Result<Addressing> {
    let (mut v4, mut v6) = (None, None);
    for text in subnets {
        match parse_subnet(text)? {
            IpNet::V4(net) => {
                if let Some(first) = v4.replace(net) {
                    bail!(
                        "--subnet {net} is a second IPv4 subnet (after {first}); a network has at most one per family"
                    );
                }
            }
            IpNet::V6(net) => {
                if let Some(first) = v6.replace(net) {
                    bail!(
                        "--subnet {net} is a second IPv6 subnet (after {first}); a network has at most one per family"
                    );
                }
            }
        }
    }
    let Some(v4) = v4 else {
        match v6 {
            Some(net) => bail!(
                "--subnet {net} alone makes an IPv6-only network, which bpfnet does not support; \
                 add an IPv4 subnet too (--subnet 10.88.0.0/24 --subnet {net})"
            ),
            None => bail!("no --subnet given; give an IPv4 subnet such as --subnet 10.88.0.0/24"),
        }
    };
    let (mut gw4, mut gw6) = (None, None);
    for gw in gateways {
        match *gw {
            IpAddr::V4(ip) => {
                if gw4.replace(ip).is_some() {
                    bail!("--gateway {ip} is a second IPv4 gateway; give at most one per family");
                }
            }
            IpAddr::V6(ip) => {
                if gw6.replace(ip).is_some() {
                    bail!("--gateway {ip} is a second IPv6 gateway; give at most one per family");
                }
            }
        }
    }
    let v6 = match (v6, ipv6) {
        (Some(net), _) => Some(net),
        (None, true) => Some(unique_local_subnet(taken6)?),
        (None, false) => None,
    };
    let v6 = match (v6, gw6) {
        (Some(net), gw) => Some((net, gateway(net, gw)?)),
        (None, Some(gw)) => bail!(
            "--gateway {gw} is an IPv6 address but the network has no IPv6 subnet; \
             add one (--subnet fd00:88::/64) or --ipv6, or leave the gateway out"
        ),
        (None, None) => None,
    };
    Ok(Addressing { v4: (v4, gateway(v4, gw4)?), v6 })
}

/// A unique local /64 (RFC 4193: fd00::/8, a random 40-bit global id, subnet 0) that `taken`
/// does not refuse.
fn unique_local_subnet(taken: impl Fn(&Ipv6Net) -> bool) -> Result<Ipv6Net> {
    // A collision among 2^40 global ids is all but impossible; a few draws bound the loop.
    for _ in 0..8 {
        let mut id = [0u8; 5];
        std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut id)).context("reading /dev/urandom")?;
        let mut octets = [0u8; 16];
        octets[0] = 0xfd;
        octets[1..6].copy_from_slice(&id);
        let net = Ipv6Net::new(Ipv6Addr::from(octets), 64).expect("64 is a valid prefix");
        if !taken(&net) {
            return Ok(net);
        }
    }
    bail!("no free unique local /64 found for --ipv6; give the IPv6 subnet with --subnet")
}

/// The MAC of a container's eth0, derived from its address as Docker does (02:42 + IPv4).
pub fn container_mac(ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = ip.octets();
    [0x02, 0x42, a, b, c, d]
}

/// The MAC that answers for a network's gateway (locally administered, never 02:42:...).
pub fn gateway_mac(network_id: u32) -> [u8; 6] {
    let [a, b, c, d] = network_id.to_be_bytes();
    [0x02, 0xbf, a, b, c, d]
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(text: &str) -> Ipv4Net {
        match parse_subnet(text).unwrap() {
            IpNet::V4(net) => net,
            IpNet::V6(_) => panic!("{text} is IPv4"),
        }
    }

    #[test]
    fn subnets_and_addresses() {
        assert!(parse_subnet("10.0.0.0/33").is_err());
        assert!(parse_subnet("nonsense").is_err());
        let err = parse_subnet("10.0.0.5/24").unwrap_err().to_string();
        assert!(err.contains("did you mean 10.0.0.0/24"), "{err}");
        assert!(parse_subnet("10.0.0.0/31").is_err());
        let net = v4("10.0.0.0/24");
        assert_eq!(gateway(net, None).unwrap(), Ipv4Addr::new(10, 0, 0, 1));
        assert!(gateway(net, Some(Ipv4Addr::new(10, 0, 1, 1))).is_err());
        assert!(gateway(net, Some(Ipv4Addr::new(10, 0, 0, 255))).is_err());
        let gw = Ipv4Addr::new(10, 0, 0, 1);
        assert_eq!(allocate(net, gw, &[]).unwrap(), Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(allocate(net, gw, &[Ipv4Addr::new(10, 0, 0, 2)]).unwrap(), Ipv4Addr::new(10, 0, 0, 3));
        let tiny = v4("10.0.0.0/30");
        let gw = gateway(tiny, None).unwrap();
        assert!(allocate(tiny, gw, &[Ipv4Addr::new(10, 0, 0, 2)]).is_err());
        assert_eq!(format_mac(&container_mac(Ipv4Addr::new(172, 17, 0, 2))), "02:42:ac:11:00:02");
    }

    #[test]
    fn ipv6_subnets_and_addresses() {
        let IpNet::V6(net) = parse_subnet("fd00:88::/64").unwrap() else { panic!("IPv6") };
        let err = parse_subnet("fd00:88::/80").unwrap_err().to_string();
        assert!(err.contains("smaller than a /64") && err.contains("fd00:88::/64"), "{err}");
        let err = parse_subnet("fd00:88::5/64").unwrap_err().to_string();
        assert!(err.contains("did you mean fd00:88::/64"), "{err}");
        let gw = gateway(net, None).unwrap();
        assert_eq!(gw, "fd00:88::1".parse::<Ipv6Addr>().unwrap(), "the subnet-router anycast address is skipped");
        assert_eq!(allocate(net, gw, &[]).unwrap(), "fd00:88::2".parse::<Ipv6Addr>().unwrap());
        let used = ["fd00:88::2".parse().unwrap()];
        assert_eq!(allocate(net, gw, &used).unwrap(), "fd00:88::3".parse::<Ipv6Addr>().unwrap());
        let err = gateway(net, Some("fd00:89::1".parse().unwrap())).unwrap_err().to_string();
        assert!(err.contains("outside the subnet fd00:88::/64"), "{err}");
        assert!(gateway(net, Some("fd00:88::".parse().unwrap())).is_err());
        let owner = |ip: &Ipv6Addr| (*ip == "fd00:88::7".parse::<Ipv6Addr>().unwrap()).then(|| "c7".to_owned());
        let err = check_fixed("--ip6", "fd00:88::7".parse().unwrap(), net, gw, "n", owner).unwrap_err().to_string();
        assert!(err.contains("already in use by container \"c7\""), "{err}");
        assert!(check_fixed("--ip6", gw, net, gw, "n", owner).unwrap_err().to_string().contains("gateway"));
        assert!(check_fixed("--ip6", "2001:db8::9".parse().unwrap(), net, gw, "n", owner).is_err());
        check_fixed("--ip6", "fd00:88::9".parse().unwrap(), net, gw, "n", owner).unwrap();
    }

    #[test]
    fn plans_by_family() {
        let none = |_: &Ipv6Net| false;
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let plain = plan(&s(&["10.88.0.0/24"]), &[], false, none).unwrap();
        assert_eq!(plain.v4, (v4("10.88.0.0/24"), Ipv4Addr::new(10, 88, 0, 1)));
        assert_eq!(plain.v6, None, "IPv4 only by default");
        let gws = ["10.88.0.9".parse().unwrap(), "fd00:88::9".parse().unwrap()];
        let dual = plan(&s(&["fd00:88::/64", "10.88.0.0/24"]), &gws, false, none).unwrap();
        assert_eq!(dual.v4.1, Ipv4Addr::new(10, 88, 0, 9));
        assert_eq!(dual.v6.unwrap().1, "fd00:88::9".parse::<Ipv6Addr>().unwrap());
        let picked = plan(&s(&["10.88.0.0/24"]), &[], true, none).unwrap().v6.unwrap().0;
        assert_eq!((picked.prefix_len(), picked.network().octets()[0]), (64, 0xfd), "{picked}");
        for (subnets, gateways, says) in [
            (s(&["fd00:88::/64"]), vec![], "IPv6-only network"),
            (s(&[]), vec![], "no --subnet"),
            (s(&["10.0.0.0/24", "10.1.0.0/24"]), vec![], "second IPv4 subnet"),
            (s(&["10.0.0.0/24", "fd00::/64", "fd01::/64"]), vec![], "second IPv6 subnet"),
            (s(&["10.0.0.0/24"]), vec!["fd00::1".parse().unwrap()], "no IPv6 subnet"),
            (s(&["10.0.0.0/24", "fd00::/64"]), vec!["fd01::1".parse().unwrap()], "outside the subnet fd00::/64"),
            (s(&["10.0.0.0/24"]), vec!["10.0.1.1".parse().unwrap()], "outside the subnet 10.0.0.0/24"),
        ] {
            let err = format!("{:#}", plan(&subnets, &gateways, false, none).unwrap_err());
            assert!(err.contains(says), "{subnets:?} {gateways:?}: {err}");
        }
    }
}
