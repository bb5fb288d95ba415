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

use std::fmt::Write;
use std::net::Ipv4Addr;

/// One published port: host port `host_port` -> `container`:`container_port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortMapping {
    pub proto: Proto,
    pub host_port: u16,
    pub container: Ipv4Addr,
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

/// The bridge network the rules are for.
#[derive(Clone, Debug)]
pub struct Network {
    pub bridge: String,
    /// The subnet as `a.b.c.d/len`.
    pub subnet: String,
}

impl PortMapping {
    /// nat/DOCKER: the DNAT for traffic that did not come from the bridge.
    pub fn dnat_rule(&self, net: &Network) -> String {
        format!(
            "DOCKER ! -i {br} -p {p} -m {p} --dport {hp} -j DNAT --to-destination {ip}:{cp}",
            br = net.bridge,
            p = self.proto.as_str(),
            hp = self.host_port,
            ip = self.container,
            cp = self.container_port,
        )
    }

    /// filter/DOCKER: let the DNATed traffic into the bridge.
    pub fn accept_rule(&self, net: &Network) -> String {
        format!(
            "DOCKER -d {ip}/32 ! -i {br} -o {br} -p {p} -m {p} --dport {cp} -j ACCEPT",
            br = net.bridge,
            p = self.proto.as_str(),
            ip = self.container,
            cp = self.container_port,
        )
    }

    /// nat/POSTROUTING: hairpin, a container reaching itself through its published port.
    pub fn hairpin_rule(&self) -> String {
        format!(
            "POSTROUTING -s {ip}/32 -d {ip}/32 -p {p} -m {p} --dport {cp} -j MASQUERADE",
            p = self.proto.as_str(),
            ip = self.container,
            cp = self.container_port,
        )
    }

    /// What Docker runs to publish this port, one `iptables` invocation per rule:
    /// (table, rule spec after `-A`).
    pub fn append_commands(&self, net: &Network) -> [(&'static str, String); 3] {
        [("nat", self.dnat_rule(net)), ("filter", self.accept_rule(net)), ("nat", self.hairpin_rule())]
    }
}

/// The full `iptables-restore` input: the network's rules, then every mapping in order
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
    let _ = writeln!(nat, "-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER");
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

    fn net() -> Network {
        Network { bridge: "docker0".into(), subnet: "172.17.0.0/16".into() }
    }

    fn web() -> PortMapping {
        PortMapping { proto: Proto::Tcp, host_port: 8080, container: Ipv4Addr::new(172, 17, 0, 2), container_port: 80 }
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
