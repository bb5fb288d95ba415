//! The nftables rules Docker 29's own nftables backend (`firewall-backend=nftables`) installs
//! for one bridge network and its published ports, as `nft -f` input (loaded inside the
//! docker-nft topology's host namespace only).
//!
//! Source of the shapes: moby's libnetwork/drivers/bridge/internal/nftabler, its golden test
//! output `testdata/TestNftabler/hairpin=false,internal=false,icc=true,masq=true,snat=false,
//! gwm=nat,bindlh=false__ip.golden` at commit 336d3efdfbc4 (Docker's defaults: inter-container
//! traffic allowed, masquerade on, NAT gateway mode, userland proxy on so no hairpin rule),
//! with the `counter` statements it has (nat-OUTPUT's `priority dstnat` is written -100, its
//! value, which nft 1.0.6 requires at the output hook). Unlike [`super::nft_rules`], every published port is
//! a rule, not a map element: one DNAT rule in `nat-prerouting-and-output` and one accept in
//! `filter-forward-in__BRIDGE` (before its final drop), so a packet's cost grows with N as
//! with iptables. The per-bridge jumps are verdict maps keyed by interface name.

use std::fmt::Write;

use super::docker_rules::{Network, PortMapping};

/// Docker's table.
pub const TABLE: &str = "docker-bridges";

/// `nft` input that replaces Docker's table as a whole (one transaction), with a DNAT and an
/// accept rule per mapping, in order.
pub fn ruleset(net: &Network, mappings: &[PortMapping]) -> String {
    let br = &net.bridge;
    let subnet = &net.subnet;
    let mut out = String::new();
    let _ = writeln!(out, "table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{");
    for (map, chain) in [
        ("filter-forward-in-jumps", "filter-forward-in"),
        ("filter-forward-out-jumps", "filter-forward-out"),
        ("nat-postrouting-in-jumps", "nat-postrouting-in"),
        ("nat-postrouting-out-jumps", "nat-postrouting-out"),
    ] {
        let _ = writeln!(
            out,
            "\tmap {map} {{\n\t\ttype ifname : verdict\n\t\telements = {{ \"{br}\" : jump {chain}__{br} }}\n\t}}"
        );
    }
    let _ = write!(
        out,
        "\tchain filter-FORWARD {{
\t\ttype filter hook forward priority filter; policy accept;
\t\toifname vmap @filter-forward-in-jumps
\t\tiifname vmap @filter-forward-out-jumps
\t}}
\tchain nat-OUTPUT {{
\t\ttype nat hook output priority -100; policy accept;
\t\tip daddr != 127.0.0.0/8 fib daddr type local counter jump nat-prerouting-and-output
\t}}
\tchain nat-POSTROUTING {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tiifname vmap @nat-postrouting-out-jumps
\t\toifname vmap @nat-postrouting-in-jumps
\t}}
\tchain nat-PREROUTING {{
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tfib daddr type local counter jump nat-prerouting-and-output
\t}}
\tchain nat-prerouting-and-output {{
"
    );
    for mapping in mappings {
        let _ = writeln!(out, "\t\t{}", dnat_rule(net, mapping));
    }
    let _ = write!(
        out,
        "\t}}
\tchain raw-PREROUTING {{
\t\ttype filter hook prerouting priority raw; policy accept;
\t\tip daddr {subnet} iifname != {{ \"lo\", \"{br}\" }} counter drop comment \"SUBNET DROP EXTERNAL\"
\t}}
\tchain filter-forward-in__{br} {{
\t\tct state established,related counter accept
\t\tiifname \"{br}\" counter accept comment \"ICC\"
"
    );
    for mapping in mappings {
        let _ = writeln!(out, "\t\t{}", accept_rule(mapping));
    }
    let _ = write!(
        out,
        "\t\tcounter drop comment \"UNPUBLISHED PORT DROP\"
\t}}
\tchain filter-forward-out__{br} {{
\t\tct state established,related counter accept
\t\tcounter accept comment \"OUTGOING\"
\t}}
\tchain nat-postrouting-in__{br} {{
\t}}
\tchain nat-postrouting-out__{br} {{
\t\toifname != \"{br}\" ip saddr {subnet} counter masquerade comment \"MASQUERADE\"
\t}}
}}
"
    );
    out
}

/// `nft` input that publishes one more port with `published` ports there already: its DNAT
/// rule appended, its accept inserted before the chain's final drop (the two rules ahead of
/// the accepts, then one per published port), in one transaction.
pub fn add_rules(net: &Network, mapping: &PortMapping, published: usize) -> String {
    format!(
        "add rule ip {TABLE} nat-prerouting-and-output {}; insert rule ip {TABLE} filter-forward-in__{} index {} {}",
        dnat_rule(net, mapping),
        net.bridge,
        2 + published,
        accept_rule(mapping)
    )
}

fn dnat_rule(net: &Network, m: &PortMapping) -> String {
    format!(
        "iifname != \"{}\" {} dport {} counter dnat to {}:{} comment \"DNAT\"",
        net.bridge,
        m.proto.as_str(),
        m.host_port,
        m.container,
        m.container_port
    )
}

fn accept_rule(m: &PortMapping) -> String {
    format!("ip daddr {} {} dport {} counter accept", m.container, m.proto.as_str(), m.container_port)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::bench::docker_rules::Proto;
    use crate::bench::topology::Family;

    fn net() -> Network {
        Network { bridge: "br-dummy".into(), subnet: "192.168.0.0/24".into(), family: Family::V4 }
    }

    fn web() -> PortMapping {
        PortMapping {
            proto: Proto::Tcp,
            host_port: 8080,
            container: Ipv4Addr::new(192, 168, 0, 2).into(),
            container_port: 80,
        }
    }

    #[test]
    fn rules_match_dockers_golden_output() {
        let text = ruleset(&net(), &[web()]);
        // Lines of moby's golden file, without its `packets 0 bytes 0` counter values.
        for line in [
            "oifname vmap @filter-forward-in-jumps",
            "elements = { \"br-dummy\" : jump filter-forward-in__br-dummy }",
            "ip daddr != 127.0.0.0/8 fib daddr type local counter jump nat-prerouting-and-output",
            "iifname != \"br-dummy\" tcp dport 8080 counter dnat to 192.168.0.2:80 comment \"DNAT\"",
            "ip daddr 192.168.0.0/24 iifname != { \"lo\", \"br-dummy\" } counter drop comment \"SUBNET DROP EXTERNAL\"",
            "iifname \"br-dummy\" counter accept comment \"ICC\"",
            "ip daddr 192.168.0.2 tcp dport 80 counter accept",
            "counter drop comment \"UNPUBLISHED PORT DROP\"",
            "oifname != \"br-dummy\" ip saddr 192.168.0.0/24 counter masquerade comment \"MASQUERADE\"",
        ] {
            assert!(text.lines().any(|l| l.trim() == line), "missing {line:?} in\n{text}");
        }
        assert_eq!(text.matches('{').count(), text.matches('}').count());
    }

    #[test]
    fn every_port_is_two_rules() {
        let mut second = web();
        second.host_port = 8081;
        let one = ruleset(&net(), &[web()]);
        let two = ruleset(&net(), &[web(), second]);
        assert_eq!(two.lines().count(), one.lines().count() + 2);
        let accept = two.find("tcp dport 80 counter accept").unwrap();
        assert!(accept < two.find("UNPUBLISHED PORT DROP").unwrap(), "accepts go before the drop");
        let add = add_rules(&net(), &second, 1);
        assert!(add.contains("insert rule ip docker-bridges filter-forward-in__br-dummy index 3 ip daddr"), "{add}");
    }
}
