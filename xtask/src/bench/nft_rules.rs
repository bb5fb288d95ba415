//! The strongest netfilter peer: Docker's bridge topology with its rules written the way a
//! careful operator (or kube-proxy's nftables mode) writes them in nftables: one table, and
//! every published port an element of one map, so a packet's cost does not grow with N.
//! Loaded with `nft -f` (one transaction) inside the nftables topology's host namespace only.
//!
//! What it does, rule for rule against [`super::docker_rules`]:
//!
//! - DNAT: Docker's `PREROUTING/OUTPUT -m addrtype --dst-type LOCAL -j DOCKER` and one
//!   `DOCKER ! -i br -p P --dport HP -j DNAT` per port become one rule per hook,
//!   `fib daddr type local dnat ip to meta l4proto . th dport map @published`: a single hash
//!   lookup keyed by (l4proto, dport) (kube-proxy's `service-ips` verdict map has the same
//!   shape);
//! - filter: Docker's FORWARD chain and its per-port `DOCKER -d C -o br --dport CP -j ACCEPT`
//!   become `ct state established,related accept`, `iifname br accept` and
//!   `oifname br ct status dnat accept` (what was DNATed is a published port);
//! - masquerade: the subnet leaving through the uplink (Docker: `-s SUBNET ! -o br`);
//! - hairpin: Docker's per-port `-s C -d C --dport CP -j MASQUERADE` becomes one lookup in a
//!   set of (container, container, l4proto, port) elements.
//!
//! The topology keeps Docker's `bridge-nf-call-iptables=1` (hairpin between containers needs
//! it, as for Docker), so what differs from the `bridge` datapath is the rules alone.

use std::fmt::Write;

use super::docker_rules::{Network, PortMapping};

/// The table every rule lives in.
pub const TABLE: &str = "containers";

/// `nft` input that replaces the table as a whole (one transaction): the network's rules and
/// one element per mapping in the `published` map and the `hairpin` set.
pub fn ruleset(net: &Network, uplink: &str, mappings: &[PortMapping]) -> String {
    let br = &net.bridge;
    let mut out = String::new();
    // `table` then `delete table`: the delete cannot fail on a first load (nft 1.0.6 has no
    // `destroy`), and the whole file is one transaction, so no packet sees the table missing.
    let _ = writeln!(out, "table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{");
    let _ = writeln!(out, "\tmap published {{\n\t\ttype inet_proto . inet_service : ipv4_addr . inet_service");
    let published: Vec<String> = mappings.iter().map(published_element).collect();
    if !published.is_empty() {
        let _ = writeln!(out, "\t\telements = {{ {} }}", published.join(",\n\t\t\t"));
    }
    let _ = writeln!(out, "\t}}\n\tset hairpin {{\n\t\ttype ipv4_addr . ipv4_addr . inet_proto . inet_service");
    let hairpin: Vec<String> = mappings.iter().map(hairpin_element).collect();
    if !hairpin.is_empty() {
        let _ = writeln!(out, "\t\telements = {{ {} }}", hairpin.join(",\n\t\t\t"));
    }
    let _ = writeln!(out, "\t}}");
    let _ = write!(
        out,
        "\tchain prerouting {{
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tiifname != \"{br}\" fib daddr type local dnat ip to meta l4proto . th dport map @published
\t}}
\tchain output {{
\t\ttype nat hook output priority -100; policy accept;
\t\tip daddr != 127.0.0.0/8 fib daddr type local dnat ip to meta l4proto . th dport map @published
\t}}
\tchain postrouting {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tip saddr {subnet} oifname \"{uplink}\" masquerade
\t\tct status dnat ip saddr . ip daddr . meta l4proto . th dport @hairpin masquerade
\t}}
\tchain forward {{
\t\ttype filter hook forward priority filter; policy drop;
\t\tct state established,related accept
\t\tiifname \"{br}\" accept
\t\toifname \"{br}\" ct status dnat accept
\t}}
}}
",
        subnet = net.subnet,
    );
    out
}

/// `nft` arguments that publish one more port: its two elements in one transaction (one
/// process, as an operator's script or kube-proxy's sync would).
pub fn add_elements(mapping: &PortMapping) -> Vec<String> {
    element_commands("add", mapping)
}

/// The inverse of [`add_elements`].
pub fn delete_elements(mapping: &PortMapping) -> Vec<String> {
    element_commands("delete", mapping)
}

fn element_commands(op: &str, mapping: &PortMapping) -> Vec<String> {
    vec![format!(
        "{op} element ip {TABLE} published {{ {} }}; {op} element ip {TABLE} hairpin {{ {} }}",
        published_element(mapping),
        hairpin_element(mapping)
    )]
}

fn published_element(m: &PortMapping) -> String {
    format!("{} . {} : {} . {}", m.proto.as_str(), m.host_port, m.container, m.container_port)
}

fn hairpin_element(m: &PortMapping) -> String {
    format!("{ip} . {ip} . {} . {}", m.proto.as_str(), m.container_port, ip = m.container)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::bench::docker_rules::Proto;
    use crate::bench::topology::Family;

    fn net() -> Network {
        Network { bridge: "docker0".into(), subnet: "172.17.0.0/16".into(), family: Family::V4 }
    }

    fn mapping(proto: Proto, host_port: u16, container_port: u16) -> PortMapping {
        PortMapping { proto, host_port, container: Ipv4Addr::new(172, 17, 0, 2).into(), container_port }
    }

    #[test]
    fn every_port_is_a_map_element_not_a_rule() {
        let one = ruleset(&net(), "eth0", &[mapping(Proto::Tcp, 8080, 80)]);
        let many: Vec<PortMapping> = (0..1000).map(|i| mapping(Proto::Tcp, 30000 + i, 30000 + i)).collect();
        let thousand = ruleset(&net(), "eth0", &many);
        let rules = |text: &str| text.lines().filter(|l| l.contains("accept") || l.contains("masquerade")).count();
        assert_eq!(rules(&one), rules(&thousand), "the rules do not grow with N");
        assert_eq!(thousand.matches(" : 172.17.0.2 . ").count(), 1000);
        assert!(one.contains("elements = { tcp . 8080 : 172.17.0.2 . 80 }"), "{one}");
        assert!(one.contains("elements = { 172.17.0.2 . 172.17.0.2 . tcp . 80 }"), "{one}");
        for line in [
            "iifname != \"docker0\" fib daddr type local dnat ip to meta l4proto . th dport map @published",
            "ip saddr 172.17.0.0/16 oifname \"eth0\" masquerade",
            "oifname \"docker0\" ct status dnat accept",
            "type filter hook forward priority filter; policy drop;",
        ] {
            assert!(one.lines().any(|l| l.trim() == line), "missing {line:?} in\n{one}");
        }
        // A reload replaces the table in the same transaction.
        assert!(one.starts_with("table ip containers\ndelete table ip containers\n"));
    }

    #[test]
    fn no_ports_no_elements() {
        let text = ruleset(&net(), "eth0", &[]);
        assert!(!text.contains("elements"), "{text}");
        assert_eq!(text.matches('{').count(), text.matches('}').count());
    }

    #[test]
    fn publish_one_more_is_one_transaction() {
        let m = mapping(Proto::Udp, 29999, 53);
        assert_eq!(
            add_elements(&m),
            ["add element ip containers published { udp . 29999 : 172.17.0.2 . 53 }; \
              add element ip containers hairpin { 172.17.0.2 . 172.17.0.2 . udp . 53 }"]
        );
        assert!(delete_elements(&m)[0].starts_with("delete element ip containers published"));
    }
}
