//! The iptables rules Docker installs for one bridge network and its published ports, as
//! `iptables-restore` input (loaded inside the bridge topology's host namespace only).
//!
//! Source of the shapes: moby's bridge driver (libnetwork/drivers/bridge/setup_ip_tables_linux.go:
//! `setupIPTablesInternal`, `setINC`, `ProgramChain`; libnetwork/drivers/bridge/port_mapping and
//! libnetwork/iptables/iptables.go `Forward`), as `iptables-save` shows them on a Docker 20.10-27
//! host with the iptables (not nftables) firewall backend and `userland-proxy` left on:
//!
//! ```text
//! *nat
//! :DOCKER - [0:0]
//! -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
//! -A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
//! -A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
//! -A POSTROUTING -s 172.17.0.2/32 -d 172.17.0.2/32 -p tcp -m tcp --dport 80 -j MASQUERADE
//! -A DOCKER -i docker0 -j RETURN
//! -A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80
//! *filter
//! :FORWARD DROP [0:0]
//! :DOCKER - [0:0]
//! :DOCKER-ISOLATION-STAGE-1 - [0:0]
//! :DOCKER-ISOLATION-STAGE-2 - [0:0]
//! :DOCKER-USER - [0:0]
//! -A FORWARD -j DOCKER-USER
//! -A FORWARD -j DOCKER-ISOLATION-STAGE-1
//! -A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
//! -A FORWARD -o docker0 -j DOCKER
//! -A FORWARD -i docker0 ! -o docker0 -j ACCEPT
//! -A FORWARD -i docker0 -o docker0 -j ACCEPT
//! -A DOCKER -d 172.17.0.2/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT
//! -A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2
//! -A DOCKER-ISOLATION-STAGE-1 -j RETURN
//! -A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP
//! -A DOCKER-ISOLATION-STAGE-2 -j RETURN
//! -A DOCKER-USER -j RETURN
//! ```
//!
//! Per published port (`-p HP:CP`), Docker appends three rules: the DNAT in nat/DOCKER, the
//! ACCEPT in filter/DOCKER and the hairpin MASQUERADE in nat/POSTROUTING. Docker also sets
//! `net.ipv4.ip_forward=1` and (via br_netfilter) `net.bridge.bridge-nf-call-iptables=1`, so
//! traffic between two containers of the bridge walks filter/FORWARD too.
//!
//! IPv6 (`dockerd --ipv6 --ip6tables`, a network with an IPv6 subnet): Docker programs the same
//! rules with `ip6tables`, from the same functions called with `iptables.IPv6` (moby
//! libnetwork/drivers/bridge/setup_ip_tables_linux.go: `setupIP6Tables` calls the
//! `setupIPTables` that IPv4 uses, with the bridge's IPv6 subnet; `setupIPChains` makes the
//! same chains; `loopbackAddress` gives `::1/128` for the OUTPUT rule's `! -d`; read at
//! commit 01d8303167e5, where 28.0 moved the FORWARD rules into DOCKER-FORWARD chains, and
//! in 20.10-27's `setupIPTablesInternal(ipVer, ...)`, which IPv4's shapes above reproduce).
//! So the ip6tables rules are IPv4's with the IPv6 subnet, `/128` hosts, `::1/128` and
//! `--to-destination [ADDR]:PORT`, and `net.ipv6.conf.all.forwarding=1` and
//! `bridge-nf-call-ip6tables=1` in place of IPv4's sysctls:
//!
//! ```text
//! *nat
//! -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
//! -A OUTPUT ! -d ::1/128 -m addrtype --dst-type LOCAL -j DOCKER
//! -A POSTROUTING -s fd00:202::/64 ! -o docker0 -j MASQUERADE
//! -A POSTROUTING -s fd00:202::3/128 -d fd00:202::3/128 -p tcp -m tcp --dport 80 -j MASQUERADE
//! -A DOCKER -i docker0 -j RETURN
//! -A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination [fd00:202::3]:80
//! *filter
//! (IPv4's chains and rules, with -d fd00:202::3/128 in the per-port ACCEPT)
//! ```

use std::fmt::Write;
use std::net::{IpAddr, SocketAddr};

use super::topology::Family;

/// One published port: host port `host_port` -> `container`:`container_port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortMapping {
    pub proto: Proto,
    pub host_port: u16,
    pub container: IpAddr,
    pub container_port: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// The bridge network the rules are for, in one family (Docker writes each family's rules
/// with its own tool: `iptables` or `ip6tables`).
#[derive(Clone, Debug)]
pub struct Network {
    pub bridge: String,
    /// The subnet as `a.b.c.d/len` or `x:y::/len`.
    pub subnet: String,
    pub family: Family,
}

impl PortMapping {
    /// nat/DOCKER: the DNAT for traffic that did not come from the bridge.
    pub fn dnat_rule(&self, net: &Network) -> String {
        format!(
            "DOCKER ! -i {br} -p {p} -m {p} --dport {hp} -j DNAT --to-destination {to}",
            br = net.bridge,
            p = self.proto.as_str(),
            hp = self.host_port,
            to = SocketAddr::new(self.container, self.container_port),
        )
    }

    /// filter/DOCKER: let the DNATed traffic into the bridge.
    pub fn accept_rule(&self, net: &Network) -> String {
        format!(
            "DOCKER -d {ip}/{host} ! -i {br} -o {br} -p {p} -m {p} --dport {cp} -j ACCEPT",
            br = net.bridge,
            p = self.proto.as_str(),
            ip = self.container,
            host = self.host_prefix(),
            cp = self.container_port,
        )
    }

    /// nat/POSTROUTING: hairpin, a container reaching itself through its published port.
    pub fn hairpin_rule(&self) -> String {
        format!(
            "POSTROUTING -s {ip}/{host} -d {ip}/{host} -p {p} -m {p} --dport {cp} -j MASQUERADE",
            p = self.proto.as_str(),
            ip = self.container,
            host = self.host_prefix(),
            cp = self.container_port,
        )
    }

    /// The container as a one-address prefix: /32 or /128.
    fn host_prefix(&self) -> u8 {
        Family::of(self.container).host_prefix()
    }

    /// What Docker runs to publish this port, one `iptables` invocation per rule:
    /// (table, rule spec after `-A`).
    pub fn append_commands(&self, net: &Network) -> [(&'static str, String); 3] {
        [("nat", self.dnat_rule(net)), ("filter", self.accept_rule(net)), ("nat", self.hairpin_rule())]
    }
}

/// The full `iptables-restore` (or `ip6tables-restore`, for an IPv6 network) input: the
/// network's rules, then every mapping in order
/// (Docker appends, so a later `docker run -p` lands at the end of each chain).
/// The tables are replaced as a whole: reloading with another mapping list starts afresh.
pub fn restore_input(net: &Network, mappings: &[PortMapping]) -> String {
    let br = &net.bridge;
    let mut nat = String::new();
    let mut filter = String::new();
    // The writes go to a String, which cannot fail.
    let _ = writeln!(nat, "*nat");
    for chain in ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"] {
        let _ = writeln!(nat, ":{chain} ACCEPT [0:0]");
    }
    let _ = writeln!(nat, ":DOCKER - [0:0]");
    let _ = writeln!(nat, "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER");
    let _ = writeln!(nat, "-A OUTPUT ! -d {} -m addrtype --dst-type LOCAL -j DOCKER", net.family.loopback());
    let _ = writeln!(nat, "-A POSTROUTING -s {} ! -o {br} -j MASQUERADE", net.subnet);
    for mapping in mappings {
        let _ = writeln!(nat, "-A {}", mapping.hairpin_rule());
    }
    let _ = writeln!(nat, "-A DOCKER -i {br} -j RETURN");
    for mapping in mappings {
        let _ = writeln!(nat, "-A {}", mapping.dnat_rule(net));
    }
    let _ = writeln!(nat, "COMMIT");

    let _ = writeln!(filter, "*filter");
    let _ = writeln!(filter, ":INPUT ACCEPT [0:0]");
    let _ = writeln!(filter, ":FORWARD DROP [0:0]");
    let _ = writeln!(filter, ":OUTPUT ACCEPT [0:0]");
    for chain in ["DOCKER", "DOCKER-ISOLATION-STAGE-1", "DOCKER-ISOLATION-STAGE-2", "DOCKER-USER"] {
        let _ = writeln!(filter, ":{chain} - [0:0]");
    }
    for rule in [
        "FORWARD -j DOCKER-USER".to_string(),
        "FORWARD -j DOCKER-ISOLATION-STAGE-1".to_string(),
        format!("FORWARD -o {br} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
        format!("FORWARD -o {br} -j DOCKER"),
        format!("FORWARD -i {br} ! -o {br} -j ACCEPT"),
        format!("FORWARD -i {br} -o {br} -j ACCEPT"),
    ] {
        let _ = writeln!(filter, "-A {rule}");
    }
    for mapping in mappings {
        let _ = writeln!(filter, "-A {}", mapping.accept_rule(net));
    }
    for rule in [
        format!("DOCKER-ISOLATION-STAGE-1 -i {br} ! -o {br} -j DOCKER-ISOLATION-STAGE-2"),
        "DOCKER-ISOLATION-STAGE-1 -j RETURN".to_string(),
        format!("DOCKER-ISOLATION-STAGE-2 -o {br} -j DROP"),
        "DOCKER-ISOLATION-STAGE-2 -j RETURN".to_string(),
        "DOCKER-USER -j RETURN".to_string(),
    ] {
        let _ = writeln!(filter, "-A {rule}");
    }
    let _ = writeln!(filter, "COMMIT");
    nat + &filter
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::{Ipv4Addr, Ipv6Addr};

    fn net() -> Network {
        Network { bridge: "docker0".into(), subnet: "172.17.0.0/16".into(), family: Family::V4 }
    }

    fn web() -> PortMapping {
        PortMapping {
            proto: Proto::Tcp,
            host_port: 8080,
            container: Ipv4Addr::new(172, 17, 0, 2).into(),
            container_port: 80,
        }
    }

    #[test]
    fn ipv6_rules_are_ipv4s_with_ipv6_addresses() {
        let net = Network { bridge: "docker0".into(), subnet: "fd00:202::/64".into(), family: Family::V6 };
        let container: Ipv6Addr = "fd00:202::3".parse().unwrap();
        let web = PortMapping { container: container.into(), ..web() };
        let text = restore_input(&net, &[web]);
        for line in [
            "-A OUTPUT ! -d ::1/128 -m addrtype --dst-type LOCAL -j DOCKER",
            "-A POSTROUTING -s fd00:202::/64 ! -o docker0 -j MASQUERADE",
            "-A POSTROUTING -s fd00:202::3/128 -d fd00:202::3/128 -p tcp -m tcp --dport 80 -j MASQUERADE",
            "-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination [fd00:202::3]:80",
            "-A DOCKER -d fd00:202::3/128 ! -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT",
            "-A FORWARD -i docker0 -o docker0 -j ACCEPT",
            "-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        // The same rules as IPv4's, line for line.
        assert_eq!(text.lines().count(), restore_input(&self::net(), &[self::web()]).lines().count());
    }

    #[test]
    fn rules_match_what_docker_installs() {
        let text = restore_input(&net(), &[web()]);
        for line in [
            "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
            "-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER",
            "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE",
            "-A POSTROUTING -s 172.17.0.2/32 -d 172.17.0.2/32 -p tcp -m tcp --dport 80 -j MASQUERADE",
            "-A DOCKER -i docker0 -j RETURN",
            "-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80",
            ":FORWARD DROP [0:0]",
            "-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            "-A DOCKER -d 172.17.0.2/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT",
            "-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert_eq!(text.matches("COMMIT").count(), 2);
    }

    #[test]
    fn every_mapping_adds_three_rules_in_order() {
        let mut second = web();
        second.host_port = 8081;
        second.proto = Proto::Udp;
        let one = restore_input(&net(), &[web()]);
        let two = restore_input(&net(), &[web(), second]);
        assert_eq!(two.lines().count(), one.lines().count() + 3);
        let first_at = two.find("--dport 8080").unwrap();
        let second_at = two.find("--dport 8081").unwrap();
        assert!(first_at < second_at, "a later mapping goes last");
        assert!(two.contains("-p udp -m udp --dport 8081 -j DNAT"));
        let commands = second.append_commands(&net());
        assert_eq!(commands[0].0, "nat");
        assert_eq!(commands[1].0, "filter");
        assert!(commands[2].1.starts_with("POSTROUTING "));
    }
}
