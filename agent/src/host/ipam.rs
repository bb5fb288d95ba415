//! Address management inside a network's subnet: parsing and checking what users give, and
//! handing out free addresses.
use std::net::Ipv4Addr;

use anyhow::{bail, Context, Result};
use ipnet::Ipv4Net;

/// Parses `--subnet`: an IPv4 CIDR without host bits, with room for a gateway and containers.
pub fn parse_subnet(text: &str) -> Result<Ipv4Net> {
    let subnet: Ipv4Net = text
        .parse()
        .with_context(|| format!("invalid --subnet {text:?}: expected an IPv4 CIDR such as 10.88.0.0/24"))?;
    if subnet != subnet.trunc() {
        bail!("invalid --subnet {text:?}: it has host bits set; did you mean {}?", subnet.trunc());
    }
    if subnet.prefix_len() > 30 {
        bail!(
            "invalid --subnet {text:?}: a /{} has no room for a gateway and a container; use /30 or larger",
            subnet.prefix_len()
        );
    }
    Ok(subnet)
}

/// Checks that `ip` is a usable host address of `subnet` (not its network or broadcast address).
pub fn check_host_address(what: &str, ip: Ipv4Addr, subnet: Ipv4Net) -> Result<()> {
    if !subnet.contains(&ip) {
        bail!("{what} {ip} is outside the subnet {subnet}; choose an address in {subnet}");
    }
    if ip == subnet.network() || ip == subnet.broadcast() {
        bail!("{what} {ip} is the network or broadcast address of {subnet}; choose a host address");
    }
    Ok(())
}

/// The gateway: the one given, checked, or the subnet's first host address (Docker's default).
pub fn gateway(subnet: Ipv4Net, requested: Option<Ipv4Addr>) -> Result<Ipv4Addr> {
    match requested {
        Some(gw) => {
            check_host_address("--gateway", gw, subnet)?;
            Ok(gw)
        }
        None => subnet.hosts().next().context("the subnet has no host address"),
    }
}

/// The lowest host address of `subnet` that is neither the gateway nor in `used`.
pub fn allocate(subnet: Ipv4Net, gateway: Ipv4Addr, used: &[Ipv4Addr]) -> Result<Ipv4Addr> {
    subnet
        .hosts()
        .find(|ip| *ip != gateway && !used.contains(ip))
        .with_context(|| format!("no free address left in {subnet}; remove a container or use a larger subnet"))
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

    #[test]
    fn subnets_and_addresses() {
        assert!(parse_subnet("10.0.0.0/33").is_err());
        assert!(parse_subnet("nonsense").is_err());
        let err = parse_subnet("10.0.0.5/24").unwrap_err().to_string();
        assert!(err.contains("did you mean 10.0.0.0/24"), "{err}");
        assert!(parse_subnet("10.0.0.0/31").is_err());
        assert!(parse_subnet("fd00::/64").is_err());
        let net = parse_subnet("10.0.0.0/24").unwrap();
        assert_eq!(gateway(net, None).unwrap(), Ipv4Addr::new(10, 0, 0, 1));
        assert!(gateway(net, Some(Ipv4Addr::new(10, 0, 1, 1))).is_err());
        assert!(gateway(net, Some(Ipv4Addr::new(10, 0, 0, 255))).is_err());
        let gw = Ipv4Addr::new(10, 0, 0, 1);
        assert_eq!(allocate(net, gw, &[]).unwrap(), Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(allocate(net, gw, &[Ipv4Addr::new(10, 0, 0, 2)]).unwrap(), Ipv4Addr::new(10, 0, 0, 3));
        let tiny = parse_subnet("10.0.0.0/30").unwrap();
        let gw = gateway(tiny, None).unwrap();
        assert!(allocate(tiny, gw, &[Ipv4Addr::new(10, 0, 0, 2)]).is_err());
        assert_eq!(format_mac(&container_mac(Ipv4Addr::new(172, 17, 0, 2))), "02:42:ac:11:00:02");
    }
}
