//! The three datapaths on identical sandbox topologies, and which scenario each supports.
//!
//! Every datapath gets the same addresses, in its own namespaces (all named with the run's
//! prefix, so the sandbox guard removes them):
//!
//! ```text
//!  client 10.202.0.2/24 ─┐                                   ┌ uplink veth ┐
//!  server 10.202.0.3/24 ─┴─ "host" ns, gateway 10.202.0.1 ───┤ 10.203.0.1  ├── outside ns 10.203.0.2/24
//! ```
//!
//! - floor: the client and server namespaces joined by one veth pair (no host, no outside);
//! - bridge: Docker's path: a bridge `docker0` holding the gateway address, a veth per container
//!   enslaved to it, `ip_forward`, and Docker's iptables rules ([`super::docker_rules`]);
//! - bpfnet: the real binary; its agent runs with the sandbox's host namespace, uplink `up0`
//!   (masquerade to 10.203.0.1, ports published on it);
//! - bpfnet-xdp: the same topology with the agent restarted with `--uplink-mode xdp`: the
//!   uplink's program at XDP instead of tcx (SNAT and DNAT only: nothing else differs).
//!
//! The outside's end of every uplink plays the wire, so it sends complete checksums (tx
//! checksum offload off), as frames a NIC receives always have: XDP cannot handle the partial
//! checksums of a local veth sender (docs/xdp-uplink.md), and all datapaths get the same.
//!
//! IPv6 (when the run has IPv6 rows): the floor, bridge and bpfnet carry the same topology in
//! IPv6 too, dual stack, with [`IPV6`]'s addresses (fd00:202::/64 for the containers,
//! fd00:203::/64 on the uplink) beside IPv4's; the bridge gets Docker's ip6tables rules
//! (`dockerd --ipv6 --ip6tables`, [`super::docker_rules`]), bpfnet a network with both subnets.
//! The other datapaths stay IPv4 only. Namespaces with IPv6 on send nothing by themselves:
//! no DAD, no router solicitations, no router advertisements accepted.
//!
//! The outside namespace has no route to the container subnet: container -> outside works
//! only through SNAT. Published ports use the same port on the host as in the container.
//! Nothing here touches the root namespace: links are created with `ip -n NS`, sysctls and
//! iptables run under `ip netns exec NS`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use bpfnet_tests::sandbox::{netns_exec, Sandbox};
use serde::Serialize;

use super::api_request;
use super::docker_nft_rules;
use super::docker_rules::{self, PortMapping, Proto};
use super::nft_rules;
use super::stats::Summary;
use super::workload::{Metric, Workload};
use crate::command;

pub const SUBNET: &str = "10.202.0.0/24";
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 202, 0, 1);
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 202, 0, 2);
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 202, 0, 3);
pub const UPLINK_HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 203, 0, 1);
pub const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(10, 203, 0, 2);
/// One family's addresses of the topology (the picture above).
pub struct Addresses {
    pub subnet: &'static str,
    /// The prefix length of the container subnet and of the uplink's.
    pub prefix_len: u8,
    pub gateway: IpAddr,
    pub client: IpAddr,
    pub server: IpAddr,
    pub uplink_host: IpAddr,
    pub outside: IpAddr,
}
pub const IPV4: Addresses = Addresses {
    subnet: SUBNET,
    prefix_len: 24,
    gateway: IpAddr::V4(GATEWAY),
    client: IpAddr::V4(CLIENT_IP),
    server: IpAddr::V4(SERVER_IP),
    uplink_host: IpAddr::V4(UPLINK_HOST_IP),
    outside: IpAddr::V4(OUTSIDE_IP),
};
/// Unique local addresses (fd00::/8): nothing here can leave the sandbox.
pub const IPV6: Addresses = Addresses {
    subnet: "fd00:202::/64",
    prefix_len: 64,
    gateway: IpAddr::V6(Ipv6Addr::new(0xfd00, 0x202, 0, 0, 0, 0, 0, 1)),
    client: IpAddr::V6(Ipv6Addr::new(0xfd00, 0x202, 0, 0, 0, 0, 0, 2)),
    server: IpAddr::V6(Ipv6Addr::new(0xfd00, 0x202, 0, 0, 0, 0, 0, 3)),
    uplink_host: IpAddr::V6(Ipv6Addr::new(0xfd00, 0x203, 0, 0, 0, 0, 0, 1)),
    outside: IpAddr::V6(Ipv6Addr::new(0xfd00, 0x203, 0, 0, 0, 0, 0, 2)),
};
/// The topology floor's MACs: host-side veths (the gateway, as bpfnet gives them one MAC per
/// network), client and server.
const FLOOR_GATEWAY_MAC: &str = "02:00:0a:ca:00:01";
const FLOOR_CLIENT_MAC: &str = "02:00:0a:ca:00:02";
const FLOOR_SERVER_MAC: &str = "02:00:0a:ca:00:03";
/// Where bpffs is mounted (`cargo xtask setup` mounts it).
const BPFFS: &str = "/sys/fs/bpf";
/// The outside namespace's end of every uplink.
pub const OUTSIDE_LINK: &str = "eth0";
const BRIDGE: &str = "docker0";
const UPLINK: &str = "up0";
/// The other published ports (see [`Topologies::publish`]) start here.
const OTHER_PORTS_BASE: u16 = 30000;
/// Limit for one setup command.
const STEP_LIMIT: Duration = Duration::from_secs(60);
/// Times the SERVICES update alone is measured per publish (its median is the sample).
const MAP_UPDATE_SAMPLES: usize = 101;
/// Publishes through the agent's API alone per repetition (their median is the sample).
const API_PUBLISH_SAMPLES: usize = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Datapath {
    Floor,
    TopologyFloor,
    Bridge,
    DockerNft,
    Nftables,
    Bpfnet,
    BpfnetXdp,
}

impl Datapath {
    pub const ALL: [Datapath; 7] = [
        Datapath::Floor,
        Datapath::TopologyFloor,
        Datapath::Bridge,
        Datapath::DockerNft,
        Datapath::Nftables,
        Datapath::Bpfnet,
        Datapath::BpfnetXdp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Datapath::Floor => "floor",
            Datapath::TopologyFloor => "topology-floor",
            Datapath::Bridge => "bridge",
            Datapath::DockerNft => "docker-nft",
            Datapath::Nftables => "nftables",
            Datapath::Bpfnet => "bpfnet",
            Datapath::BpfnetXdp => "bpfnet-xdp",
        }
    }

    /// bpfnet's own datapaths; every other one is a reference they are compared with.
    pub fn is_bpfnet(self) -> bool {
        self.uplink_mode().is_some()
    }

    /// The agent's `--uplink-mode` for a bpfnet datapath.
    fn uplink_mode(self) -> Option<&'static str> {
        match self {
            Datapath::Bpfnet => Some("tc"),
            Datapath::BpfnetXdp => Some("xdp"),
            Datapath::Floor | Datapath::TopologyFloor | Datapath::Bridge | Datapath::DockerNft | Datapath::Nftables => {
                None
            }
        }
    }
}

/// The address family of a figure: every scenario runs over IPv4, and some (issue #15's rows)
/// over IPv6 as well, on the same topologies and through the same code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Family {
    #[serde(rename = "ipv4")]
    V4,
    #[serde(rename = "ipv6")]
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    pub fn of(addr: IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }

    pub fn addresses(self) -> &'static Addresses {
        match self {
            Family::V4 => &IPV4,
            Family::V6 => &IPV6,
        }
    }

    /// What Docker's OUTPUT rule leaves out (moby's `loopbackAddress`).
    pub fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }

    /// The prefix length of one address.
    pub fn host_prefix(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    /// The tool that loads Docker's rules of this family.
    fn iptables_restore(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Client container -> server container on the same network.
    ContainerToContainer,
    /// Client container -> server in the outside namespace (SNAT on the way out).
    Snat,
    /// Client in the outside namespace -> the host's uplink address, a published port
    /// (DNAT to the server container).
    Dnat,
}

impl Scenario {
    pub const ALL: [Scenario; 3] = [Scenario::ContainerToContainer, Scenario::Snat, Scenario::Dnat];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::ContainerToContainer => "c2c",
            Scenario::Snat => "snat",
            Scenario::Dnat => "dnat",
        }
    }
}

/// Where one workload runs: the client's namespace and the address it aims at, the server's
/// namespace and the address it binds. Ports come from the workload (same on both sides).
#[derive(Clone, Debug)]
pub struct Endpoints {
    pub client_netns: String,
    pub target: IpAddr,
    pub server_netns: String,
    pub server_bind: IpAddr,
    /// The client's address as the server must see it (the uplink's where the datapath
    /// masquerades), checked on the UDP rate's first datagram; None: not checked.
    pub source: Option<IpAddr>,
}

/// Whether a datapath runs something.
pub enum Support<T> {
    Yes(T),
    /// Meaningless for this datapath (the floor has no NAT and no ports to publish).
    NotApplicable,
    /// Meant to run, but the datapath could not be built for it (why): a failed figure.
    Unavailable(String),
}

/// The ports the workloads use, published on the server container (host port = container
/// port). They come after the N other published ports in every chain.
pub const MEASURED_PORTS: [(Proto, u16); 3] = [(Proto::Tcp, 5201), (Proto::Udp, 5301), (Proto::Tcp, 5401)];

pub struct Topologies {
    floor: [String; 2],
    topology_floor: BridgeNames,
    /// Where `bpfnet-devkit floor-attach` pins the topology floor's links (on bpffs).
    topology_floor_pins: PathBuf,
    bridge: BridgeNames,
    docker_nft: BridgeNames,
    nftables: BridgeNames,
    /// N, the other published ports there are now.
    other_ports: u32,
    bpfnet: BpfnetNames,
    /// The `--publish` spec of the other ports bpfnet has now (unpublished when N changes).
    bpfnet_other_ports: Option<String>,
    /// The `--uplink-mode` the agent runs with now.
    uplink_mode: std::cell::Cell<&'static str>,
    devkit_bin: PathBuf,
    /// Whether the floor, bridge and bpfnet carry IPv6 too (the run has IPv6 rows).
    ipv6: bool,
    /// Why bpfnet carries no IPv6, when it was asked to and refused: its IPv6 rows fail with
    /// this, and everything else still runs.
    bpfnet_ipv6_error: Option<String>,
}

struct BridgeNames {
    host: String,
    client: String,
    server: String,
    outside: String,
}

struct BpfnetNames {
    network: String,
    client: String,
    server: String,
    outside: String,
}

impl Topologies {
    /// `devkit_bin` is `bpfnet-devkit`, which times bpfnet's map updates. With `ipv6`, the
    /// datapaths that have IPv6 rows (see [`Self::endpoints`]) are built dual stack.
    pub fn new(sandbox: &Sandbox, devkit_bin: PathBuf, ipv6: bool) -> Topologies {
        Topologies {
            devkit_bin,
            ipv6,
            bpfnet_ipv6_error: None,
            floor: [sandbox.name("fl-a"), sandbox.name("fl-b")],
            topology_floor: BridgeNames {
                host: sandbox.name("tf-host"),
                client: sandbox.name("tf-c1"),
                server: sandbox.name("tf-c2"),
                outside: sandbox.name("tf-out"),
            },
            topology_floor_pins: PathBuf::from(BPFFS).join(sandbox.name("floor")),
            bridge: BridgeNames {
                host: sandbox.name("br-host"),
                client: sandbox.name("br-c1"),
                server: sandbox.name("br-c2"),
                outside: sandbox.name("br-out"),
            },
            docker_nft: BridgeNames {
                host: sandbox.name("dn-host"),
                client: sandbox.name("dn-c1"),
                server: sandbox.name("dn-c2"),
                outside: sandbox.name("dn-out"),
            },
            other_ports: 0,
            nftables: BridgeNames {
                host: sandbox.name("nf-host"),
                client: sandbox.name("nf-c1"),
                server: sandbox.name("nf-c2"),
                outside: sandbox.name("nf-out"),
            },
            bpfnet: BpfnetNames {
                network: sandbox.name("net"),
                client: sandbox.name("bn-c1"),
                server: sandbox.name("bn-c2"),
                outside: sandbox.name("bn-out"),
            },
            bpfnet_other_ports: None,
            uplink_mode: std::cell::Cell::new("tc"),
        }
    }

    /// The namespaces this module creates itself (bpfnet's containers are bpfnet's to remove).
    fn own_namespaces(&self) -> Vec<&String> {
        let mut all: Vec<&String> = self.floor.iter().collect();
        for b in [&self.topology_floor, &self.bridge, &self.docker_nft, &self.nftables] {
            all.extend([&b.host, &b.client, &b.server, &b.outside]);
        }
        all.push(&self.bpfnet.outside);
        all
    }

    pub fn create(&mut self, sandbox: &mut Sandbox) -> Result<()> {
        self.create_floor()?;
        self.create_topology_floor()?;
        create_bridge(&self.bridge, self.ipv6)?;
        self.load_docker_rules(sandbox, 0)?;
        create_bridge(&self.docker_nft, false)?;
        self.load_docker_nft_rules(sandbox, 0)?;
        create_bridge(&self.nftables, false)?;
        self.load_nft_rules(sandbox, 0)?;
        self.create_bpfnet(sandbox)?;
        Ok(())
    }

    /// The families the floor, bridge and bpfnet carry.
    fn families(&self) -> &'static [Family] {
        if self.ipv6 {
            &Family::ALL
        } else {
            &Family::ALL[..1]
        }
    }

    fn create_floor(&self) -> Result<()> {
        let [a, b] = &self.floor;
        add_netns(a, self.ipv6)?;
        add_netns(b, self.ipv6)?;
        ip(a, &["link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", b])?;
        for family in self.families() {
            let addrs = family.addresses();
            for (netns, addr) in [(a, addrs.client), (b, addrs.server)] {
                address_up(netns, "eth0", addr, addrs.prefix_len)?;
            }
        }
        Ok(())
    }

    /// bpfnet's topology without bpfnet: a veth per container whose host end has the gateway's
    /// MAC and no address, a /32 route and a neighbour per container, forwarding on those
    /// ends, the uplink; the containers' neighbours static (no ARP responder here). On it,
    /// `bpfnet-devkit floor-attach` puts a program that only redirects (datapath-ebpf's
    /// bench_floor). The outside routes the container subnet through the uplink: there is no
    /// NAT, SNAT and DNAT are measured routed.
    fn create_topology_floor(&self) -> Result<()> {
        let n = &self.topology_floor;
        for netns in [&n.host, &n.client, &n.server, &n.outside] {
            add_netns(netns, false)?;
        }
        let containers =
            [("bnc1", &n.client, CLIENT_IP, FLOOR_CLIENT_MAC), ("bnc2", &n.server, SERVER_IP, FLOOR_SERVER_MAC)];
        for (veth, container, addr, mac) in containers {
            ip(
                &n.host,
                &[
                    "link",
                    "add",
                    veth,
                    "address",
                    FLOOR_GATEWAY_MAC,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "address",
                    mac,
                    "netns",
                    container,
                ],
            )?;
            sysctl(&n.host, &format!("net.ipv4.conf.{veth}.forwarding=1"))?;
            ip(&n.host, &["link", "set", veth, "up"])?;
            ip(&n.host, &["neigh", "replace", &addr.to_string(), "lladdr", mac, "dev", veth, "nud", "permanent"])?;
            ip(&n.host, &["route", "replace", &format!("{addr}/32"), "dev", veth])?;
            address_up(container, "eth0", addr.into(), IPV4.prefix_len)?;
            ip(container, &["route", "add", "default", "via", &GATEWAY.to_string()])?;
        }
        for (container, peer_addr, peer_mac) in
            [(&n.client, SERVER_IP, FLOOR_SERVER_MAC), (&n.server, CLIENT_IP, FLOOR_CLIENT_MAC)]
        {
            for (addr, mac) in [(GATEWAY, FLOOR_GATEWAY_MAC), (peer_addr, peer_mac)] {
                ip(
                    container,
                    &["neigh", "replace", &addr.to_string(), "lladdr", mac, "dev", "eth0", "nud", "permanent"],
                )?;
            }
        }
        add_uplink(&n.host, &n.outside, &Family::ALL[..1])?;
        ip(&n.outside, &["route", "add", SUBNET, "via", &UPLINK_HOST_IP.to_string()])?;
        let dest = |addr: Ipv4Addr, veth: &str, mac: &str| format!("{addr}={veth},{mac}");
        let mut attach = Command::new(&self.devkit_bin);
        attach
            .args(["floor-attach", "--netns", &n.host, "--ifname", "bnc1", "--ifname", "bnc2", "--ifname", UPLINK])
            .args(["--dest", &dest(CLIENT_IP, "bnc1", FLOOR_CLIENT_MAC)])
            .args(["--dest", &dest(SERVER_IP, "bnc2", FLOOR_SERVER_MAC)])
            .args(["--gateway-mac", FLOOR_GATEWAY_MAC, "--pin-dir"])
            .arg(&self.topology_floor_pins);
        command::run_bounded(&mut attach, STEP_LIMIT)
    }

    fn create_bpfnet(&mut self, sandbox: &mut Sandbox) -> Result<()> {
        let n = &self.bpfnet;
        // The uplink first: BPFNET_UPLINK makes the agent read its addresses (to masquerade to).
        add_netns(&n.outside, self.ipv6)?;
        add_uplink(sandbox.host_netns(), &n.outside, self.families())?;
        sandbox.set_agent_env("BPFNET_UPLINK", UPLINK);
        sandbox.set_agent_env("BPFNET_UPLINK_MODE", self.uplink_mode.get());
        sandbox.start_agent()?;
        if self.ipv6 {
            match self.create_bpfnet_containers(sandbox, true) {
                Ok(()) => return Ok(()),
                Err(err) => {
                    // A bpfnet without IPv6 still runs every IPv4 row; its IPv6 rows fail.
                    let why = format!("bpfnet refused the dual-stack network or its containers: {err:#}");
                    println!("==> {why}; bpfnet runs IPv4 only");
                    self.bpfnet_ipv6_error = Some(why);
                    let n = &self.bpfnet;
                    for (kind, name) in [("container", &n.client), ("container", &n.server), ("network", &n.network)] {
                        // Whatever was made; what was not is no error here.
                        if let Err(err) = bpfnet(sandbox, &[kind, "rm", name]) {
                            println!("    ({kind} {name} not removed: {err:#})");
                        }
                    }
                }
            }
        }
        self.create_bpfnet_containers(sandbox, false)
    }

    /// bpfnet's network and its two containers, the server publishing the measured ports;
    /// with `ipv6`, dual stack as Docker's `--ipv6`: a second `--subnet`, each container a
    /// second address (`--ip6`). The IPv6 gateway is bpfnet's choice: the rows do not use it.
    fn create_bpfnet_containers(&self, sandbox: &Sandbox, ipv6: bool) -> Result<()> {
        let n = &self.bpfnet;
        let gateway = GATEWAY.to_string();
        let mut network = vec!["network", "create", &n.network, "--subnet", SUBNET, "--gateway", &gateway];
        if ipv6 {
            network.extend(["--subnet", IPV6.subnet]);
        }
        bpfnet(sandbox, &network)?;
        let (client_ip, client_ip6) = (CLIENT_IP.to_string(), IPV6.client.to_string());
        let mut client = vec!["container", "create", &n.client, "--network", &n.network, "--ip", &client_ip];
        let (server_ip, server_ip6) = (SERVER_IP.to_string(), IPV6.server.to_string());
        let mut server = vec!["container", "create", &n.server, "--network", &n.network, "--ip", &server_ip];
        if ipv6 {
            client.extend(["--ip6", &client_ip6]);
            server.extend(["--ip6", &server_ip6]);
        }
        bpfnet(sandbox, &client)?;
        let measured: Vec<String> =
            MEASURED_PORTS.iter().map(|&(proto, port)| publish_spec(proto, port, 1).expect("one port")).collect();
        for spec in &measured {
            server.extend(["--publish", spec]);
        }
        bpfnet(sandbox, &server)
    }

    /// Delete the namespaces this module made (bounded; every one is tried).
    pub fn remove(&self) -> Result<()> {
        let mut failed = Vec::new();
        for netns in self.own_namespaces() {
            if std::path::Path::new("/run/netns").join(netns).exists() {
                if let Err(err) = command::run_bounded(Command::new("ip").args(["netns", "delete", netns]), STEP_LIMIT)
                {
                    failed.push(format!("{err:#}"));
                }
            }
        }
        // The floor's links went with its interfaces; their pins are files on bpffs.
        if let Err(err) = remove_pins(&self.topology_floor_pins) {
            failed.push(format!("{err:#}"));
        }
        anyhow::ensure!(failed.is_empty(), "removing the namespaces failed: {}", failed.join("; "));
        Ok(())
    }

    /// The port mappings for `other` other published ports followed by the measured ones, to
    /// the containers' IPv4 addresses.
    pub fn mappings(other: u32) -> Vec<PortMapping> {
        Self::family_mappings(other, Family::V4)
    }

    /// The same to the containers' addresses of `family` (Docker publishes a port on both
    /// families of a dual-stack network).
    fn family_mappings(other: u32, family: Family) -> Vec<PortMapping> {
        let addrs = family.addresses();
        let others = (0..other).map(|i| PortMapping {
            proto: Proto::Tcp,
            host_port: OTHER_PORTS_BASE + i as u16,
            container: addrs.client,
            container_port: OTHER_PORTS_BASE + i as u16,
        });
        let measured = MEASURED_PORTS.iter().map(|&(proto, port)| PortMapping {
            proto,
            host_port: port,
            container: addrs.server,
            container_port: port,
        });
        others.chain(measured).collect()
    }

    fn docker_network() -> docker_rules::Network {
        Self::family_network(Family::V4)
    }

    fn family_network(family: Family) -> docker_rules::Network {
        docker_rules::Network { bridge: BRIDGE.into(), subnet: family.addresses().subnet.into(), family }
    }

    /// Docker's rules of every family the bridge carries, each with its own tool.
    fn load_docker_rules(&self, sandbox: &Sandbox, other: u32) -> Result<()> {
        for &family in self.families() {
            let text = Self::docker_rules_text_of(other, family);
            let file = sandbox.write_scratch(&format!("docker-rules.{}", family.iptables_restore()), &text)?;
            command::run_bounded(&mut netns_exec(&self.bridge.host, family.iptables_restore(), [&file]), STEP_LIMIT)?;
        }
        Ok(())
    }

    /// The nftables datapath's ruleset at `other` other published ports, in one `nft -f`.
    fn load_nft_rules(&self, sandbox: &Sandbox, other: u32) -> Result<()> {
        let file = sandbox.write_scratch("nftables.nft", &Self::nft_rules_text(other))?;
        command::run_bounded(
            &mut netns_exec(&self.nftables.host, "nft", [std::ffi::OsStr::new("-f"), file.as_os_str()]),
            STEP_LIMIT,
        )
        .context("loading the nftables datapath's rules (is nftables installed? `cargo xtask setup`)")
    }

    /// Docker's nftables backend's rules at `other` other published ports, in one `nft -f`.
    fn load_docker_nft_rules(&self, sandbox: &Sandbox, other: u32) -> Result<()> {
        let text = docker_nft_rules::ruleset(&Self::docker_network(), &Self::mappings(other));
        let file = sandbox.write_scratch("docker-rules.nft", &text)?;
        command::run_bounded(
            &mut netns_exec(&self.docker_nft.host, "nft", [std::ffi::OsStr::new("-f"), file.as_os_str()]),
            STEP_LIMIT,
        )
        .context("loading Docker's nftables rules (is nftables installed? `cargo xtask setup`)")
    }

    /// Docker's nftables backend's rules at N other published ports (kept with the results).
    pub fn docker_nft_rules_text(other: u32) -> String {
        docker_nft_rules::ruleset(&Self::docker_network(), &Self::mappings(other))
    }

    /// The nftables datapath's ruleset at N other published ports (kept with the results).
    pub fn nft_rules_text(other: u32) -> String {
        nft_rules::ruleset(&Self::docker_network(), UPLINK, &Self::mappings(other))
    }

    /// The Docker rules for the bridge topology at N other published ports (the full rule
    /// text, to keep with the results).
    pub fn docker_rules_text(other: u32) -> String {
        Self::docker_rules_text_of(other, Family::V4)
    }

    /// The same for `family` (`ip6tables-restore` input for IPv6).
    pub fn docker_rules_text_of(other: u32, family: Family) -> String {
        docker_rules::restore_input(&Self::family_network(family), &Self::family_mappings(other, family))
    }

    /// Publish `other` ports of the client container ahead of the measured ones: Docker's
    /// rules for all of them, as many map elements for nftables, or one range spec for bpfnet (the previous N's unpublished).
    pub fn set_other_ports(&mut self, sandbox: &Sandbox, other: u32) -> Result<()> {
        self.load_docker_rules(sandbox, other)?;
        self.load_docker_nft_rules(sandbox, other)?;
        self.load_nft_rules(sandbox, other)?;
        self.other_ports = other;
        let client = &self.bpfnet.client;
        if let Some(old) = self.bpfnet_other_ports.take() {
            bpfnet(sandbox, &["unpublish", client, &old])?;
        }
        if let Some(spec) = publish_spec(Proto::Tcp, OTHER_PORTS_BASE, other) {
            bpfnet(sandbox, &["publish", client, &spec])?;
            self.bpfnet_other_ports = Some(spec);
        }
        Ok(())
    }

    /// Before each bpfnet workload: the agent in the datapath's uplink mode (restarted when
    /// it changes; the datapath and its flows stay), and the flows of the runs before expired
    /// (bpfnet's conntrack is collected by the agent, not by the kernel; without this,
    /// connection-rate runs would use up the masquerade ports). Not timed.
    pub fn prepare(&self, sandbox: &mut Sandbox, datapath: Datapath) -> Result<()> {
        let Some(mode) = datapath.uplink_mode() else {
            return Ok(());
        };
        if self.uplink_mode.get() != mode {
            sandbox.set_agent_env("BPFNET_UPLINK_MODE", mode);
            sandbox.restart_agent()?;
            self.uplink_mode.set(mode);
        }
        bpfnet(sandbox, &["conntrack", "gc"])
    }

    /// Where a workload of `scenario` runs on `datapath` over `family` with N other ports
    /// published. Adding a scenario to a datapath is a change here (and in
    /// [`Self::publish_one_more`]).
    pub fn endpoints(
        &self,
        datapath: Datapath,
        scenario: Scenario,
        family: Family,
        first_n: bool,
    ) -> Support<Endpoints> {
        use Scenario::*;
        let addrs = family.addresses();
        let ends = |client: &String, target, server: &String, bind, source| Endpoints {
            client_netns: client.clone(),
            target,
            server_netns: server.clone(),
            server_bind: bind,
            source: Some(source),
        };
        if family == Family::V6 && !Self::has_ipv6_rows(datapath, scenario) {
            return Support::NotApplicable;
        }
        if let (Family::V6, true, Some(why)) = (family, datapath.is_bpfnet(), &self.bpfnet_ipv6_error) {
            return Support::Unavailable(why.clone());
        }
        match datapath {
            Datapath::Floor => match (scenario, first_n) {
                (ContainerToContainer, true) => {
                    Support::Yes(ends(&self.floor[0], addrs.server, &self.floor[1], addrs.server, addrs.client))
                }
                // The floor has no ports to publish and no outside: it is measured once, and
                // its figures are the reference of every row.
                _ => Support::NotApplicable,
            },
            // Measured once, as the floor: no ports, so nothing depends on N. No NAT: the
            // outside is the DNAT client aiming at the server itself, routed.
            Datapath::TopologyFloor if !first_n => Support::NotApplicable,
            Datapath::TopologyFloor => {
                let n = &self.topology_floor;
                Support::Yes(match scenario {
                    ContainerToContainer => ends(&n.client, addrs.server, &n.server, addrs.server, addrs.client),
                    // Routed: the outside sees the container itself.
                    Snat => ends(&n.client, addrs.outside, &n.outside, addrs.outside, addrs.client),
                    Dnat => ends(&n.outside, addrs.server, &n.server, addrs.server, addrs.outside),
                })
            }
            // The uplink's program does not see container-to-container traffic.
            Datapath::BpfnetXdp if scenario == ContainerToContainer => Support::NotApplicable,
            Datapath::Bridge | Datapath::DockerNft | Datapath::Nftables | Datapath::Bpfnet | Datapath::BpfnetXdp => {
                let (client, server, outside) = match datapath {
                    Datapath::Bpfnet | Datapath::BpfnetXdp => {
                        let n = &self.bpfnet;
                        (&n.client, &n.server, &n.outside)
                    }
                    Datapath::Nftables => {
                        let n = &self.nftables;
                        (&n.client, &n.server, &n.outside)
                    }
                    Datapath::DockerNft => {
                        let n = &self.docker_nft;
                        (&n.client, &n.server, &n.outside)
                    }
                    _ => {
                        let n = &self.bridge;
                        (&n.client, &n.server, &n.outside)
                    }
                };
                Support::Yes(match scenario {
                    ContainerToContainer => ends(client, addrs.server, server, addrs.server, addrs.client),
                    // Masqueraded to the uplink's address.
                    Snat => ends(client, addrs.outside, outside, addrs.outside, addrs.uplink_host),
                    Dnat => ends(outside, addrs.uplink_host, server, addrs.server, addrs.outside),
                })
            }
        }
    }

    /// Issue #15's IPv6 rows: container to container and masquerade, on the bare veth floor,
    /// Docker's bridge with its ip6tables rules, and bpfnet at tcx. The topology floor's
    /// program, Docker's nftables backend's and the nftables datapath's rules, and the XDP
    /// uplink are IPv4 only here; DNAT over IPv6 has no row yet.
    fn has_ipv6_rows(datapath: Datapath, scenario: Scenario) -> bool {
        matches!(datapath, Datapath::Floor | Datapath::Bridge | Datapath::Bpfnet)
            && matches!(scenario, Scenario::ContainerToContainer | Scenario::Snat)
    }

    /// Whether `workload` runs on `datapath` in `scenario` over `family` (where
    /// [`Self::endpoints`] has endpoints): over IPv6 the packet rate only; the stream with the
    /// sender's offloads on only where the sender is the outside (DNAT), and not on the XDP
    /// uplink (which cannot take a local veth sender's partial checksums, docs/xdp-uplink.md).
    pub fn runs(workload: Workload, scenario: Scenario, datapath: Datapath, family: Family) -> bool {
        match (family, workload) {
            (Family::V6, workload) => workload == Workload::UdpRate,
            (Family::V4, Workload::TcpStreamOffload) => scenario == Scenario::Dnat && datapath != Datapath::BpfnetXdp,
            (Family::V4, _) => true,
        }
    }

    /// The SERVICES update of publishing `port` alone, timed by `bpfnet-devkit
    /// map-update-cost` on the running datapath: µs per update.
    fn time_map_updates(&self, sandbox: &Sandbox, port: u16) -> Result<Vec<f64>> {
        let mut cmd = Command::new(&self.devkit_bin);
        cmd.arg("map-update-cost").arg("--bpffs").arg(sandbox.bpffs_dir()).args([
            "--port",
            &port.to_string(),
            "--samples",
            &MAP_UPDATE_SAMPLES.to_string(),
        ]);
        let json = command::output_bounded(&mut cmd, STEP_LIMIT)?;
        let report: serde_json::Value = serde_json::from_str(&json).context("map-update-cost printed no JSON")?;
        report["update_us"]
            .as_array()
            .and_then(|all| all.iter().map(serde_json::Value::as_f64).collect::<Option<Vec<f64>>>())
            .context("map-update-cost printed no update_us figures")
    }

    /// Control-plane cost: the time to publish one more port with N published already,
    /// the way the datapath's manager does it, end to end (process start included); for
    /// bpfnet also its map update alone. The port is removed again (not timed).
    pub fn publish_one_more(&self, sandbox: &Sandbox, datapath: Datapath) -> Result<Support<Vec<(Metric, f64)>>> {
        let port = OTHER_PORTS_BASE - 1;
        match datapath {
            // One control plane for both bpfnet modes.
            Datapath::Floor | Datapath::TopologyFloor | Datapath::BpfnetXdp => Ok(Support::NotApplicable),
            Datapath::Bpfnet => {
                let client = &self.bpfnet.client;
                let spec = publish_spec(Proto::Tcp, port, 1).expect("one port");
                let took = command::run_timed(&mut bpfnet_command(sandbox, &["publish", client, &spec]), STEP_LIMIT)?;
                let map_update = self.time_map_updates(sandbox, port);
                bpfnet(sandbox, &["unpublish", client, &spec])?;
                let map_update = map_update?;
                let map_update = Summary::of(&map_update).context("no SERVICES update was timed")?.median;
                let api = api_publish_ms(sandbox, client, &spec)?;
                Ok(Support::Yes(vec![
                    (Metric::PublishMs, took.as_secs_f64() * 1e3),
                    (Metric::PublishApiMs, api),
                    (Metric::MapUpdateUs, map_update),
                ]))
            }
            Datapath::Bridge => {
                let mapping = PortMapping {
                    proto: Proto::Tcp,
                    host_port: port,
                    container: CLIENT_IP.into(),
                    container_port: port,
                };
                let commands = mapping.append_commands(&Self::docker_network());
                // Docker runs one `iptables` process per rule (after an `-C` check per rule,
                // which is left out here: this is a lower bound). nsenter instead of
                // `ip netns exec`, whose /sys remount would be timed too.
                let mut took = Duration::ZERO;
                for (table, rule) in &commands {
                    took += command::run_timed(&mut self.iptables(table, "-A", rule), STEP_LIMIT)?;
                }
                for (table, rule) in &commands {
                    command::run_bounded(&mut self.iptables(table, "-D", rule), STEP_LIMIT)?;
                }
                Ok(Support::Yes(vec![(Metric::PublishMs, took.as_secs_f64() * 1e3)]))
            }
            Datapath::Nftables => {
                let mapping = PortMapping {
                    proto: Proto::Tcp,
                    host_port: port,
                    container: CLIENT_IP.into(),
                    container_port: port,
                };
                // One `nft` process adds both elements in one transaction.
                let host = &self.nftables.host;
                let took = command::run_timed(&mut nft(host, &nft_rules::add_elements(&mapping)), STEP_LIMIT)?;
                command::run_bounded(&mut nft(host, &nft_rules::delete_elements(&mapping)), STEP_LIMIT)?;
                Ok(Support::Yes(vec![(Metric::PublishMs, took.as_secs_f64() * 1e3)]))
            }
            Datapath::DockerNft => {
                let mapping = PortMapping {
                    proto: Proto::Tcp,
                    host_port: port,
                    container: CLIENT_IP.into(),
                    container_port: port,
                };
                // Docker applies a port's rules in one nftables transaction: one `nft`.
                let published = self.other_ports as usize + MEASURED_PORTS.len();
                let add = docker_nft_rules::add_rules(&Self::docker_network(), &mapping, published);
                let took = command::run_timed(&mut nft(&self.docker_nft.host, &[add]), STEP_LIMIT)?;
                // The rules of N again (not timed): rules are deleted by handle, not by text.
                self.load_docker_nft_rules(sandbox, self.other_ports)?;
                Ok(Support::Yes(vec![(Metric::PublishMs, took.as_secs_f64() * 1e3)]))
            }
        }
    }

    fn iptables(&self, table: &str, op: &str, rule: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.bridge.host))
            .args(["iptables", "-w", "-t", table, op])
            .args(rule.split_whitespace());
        cmd
    }
}

/// Docker's bridge topology (for the `bridge` and `nftables` datapaths; rules not loaded): a
/// bridge holding the gateway, a veth per container enslaved to it, the uplink, forwarding and
/// br_netfilter on; with `ipv6`, dual stack as `dockerd --ipv6` makes it.
fn create_bridge(n: &BridgeNames, ipv6: bool) -> Result<()> {
    let families = if ipv6 { &Family::ALL[..] } else { &Family::ALL[..1] };
    for netns in [&n.host, &n.client, &n.server, &n.outside] {
        add_netns(netns, ipv6)?;
    }
    ip(&n.host, &["link", "add", BRIDGE, "type", "bridge"])?;
    for family in families {
        address_up(&n.host, BRIDGE, family.addresses().gateway, family.addresses().prefix_len)?;
    }
    for (veth, container, client) in [("vethc1", &n.client, true), ("vethc2", &n.server, false)] {
        ip(&n.host, &["link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", container])?;
        ip(&n.host, &["link", "set", veth, "master", BRIDGE, "up"])?;
        for family in families {
            let addrs = family.addresses();
            let addr = if client { addrs.client } else { addrs.server };
            address_up(container, "eth0", addr, addrs.prefix_len)?;
            ip(container, &["route", "add", "default", "via", &addrs.gateway.to_string()])?;
        }
    }
    add_uplink(&n.host, &n.outside, families)?;
    for family in families {
        // Docker sets both; br_netfilter then sends bridged traffic through filter/FORWARD.
        // The sysctls are per namespace (the bridge ones exist once the module is loaded;
        // this tool loads no modules).
        let (forwarding, bridge_nf) = match family {
            Family::V4 => ("net.ipv4.ip_forward=1", "net.bridge.bridge-nf-call-iptables=1"),
            Family::V6 => ("net.ipv6.conf.all.forwarding=1", "net.bridge.bridge-nf-call-ip6tables=1"),
        };
        sysctl(&n.host, forwarding)?;
        sysctl(&n.host, bridge_nf).context(
            "br_netfilter is not loaded (Docker loads it): `modprobe br_netfilter` on this machine, then run again",
        )?;
    }
    Ok(())
}

/// `nft ARGS` in `netns` (nsenter, as for iptables: `ip netns exec` would remount /sys, and
/// be timed too).
fn nft(netns: &str, args: &[String]) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{netns}")).arg("nft").args(args);
    cmd
}

/// Unlinks the pins in `dir` and removes it (nothing to do if it is not there).
fn remove_pins(dir: &std::path::Path) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err).with_context(|| format!("listing {}", dir.display())),
    };
    for entry in entries {
        let path = entry?.path();
        std::fs::remove_file(&path).with_context(|| format!("removing the pin {}", path.display()))?;
    }
    std::fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))
}

/// `ip -n NETNS ARGS`: runs in the namespace, never in the root one.
fn ip(netns: &str, args: &[&str]) -> Result<()> {
    command::run_bounded(Command::new("ip").arg("-n").arg(netns).args(args), STEP_LIMIT)
}

/// An address (IPv6's without DAD: usable at once, and nothing sent for it) and the link up.
fn address_up(netns: &str, link: &str, addr: IpAddr, prefix_len: u8) -> Result<()> {
    let cidr = format!("{addr}/{prefix_len}");
    match addr {
        IpAddr::V4(_) => ip(netns, &["addr", "add", &cidr, "dev", link])?,
        IpAddr::V6(_) => ip(netns, &["addr", "add", &cidr, "dev", link, "nodad"])?,
    }
    ip(netns, &["link", "set", link, "up"])
}

fn sysctl(netns: &str, setting: &str) -> Result<()> {
    command::run_bounded(&mut netns_exec(netns, "sysctl", ["-qw", setting]), STEP_LIMIT)
}

/// A namespace with lo up. Without `ipv6`, IPv6 off (no router solicitations or DAD during
/// a run; bpfnet turns IPv6 off in the containers of an IPv4 network too). With it, IPv6 on
/// but silent on every link made in it afterwards: no DAD, no router solicitations, and
/// router advertisements ignored (a namespace that forwards sends none by itself).
fn add_netns(netns: &str, ipv6: bool) -> Result<()> {
    command::run_bounded(Command::new("ip").args(["netns", "add", netns]), STEP_LIMIT)?;
    ip(netns, &["link", "set", "lo", "up"])?;
    if !ipv6 {
        sysctl(netns, "net.ipv6.conf.all.disable_ipv6=1")?;
        return sysctl(netns, "net.ipv6.conf.default.disable_ipv6=1");
    }
    let quiet: Vec<String> = ["all", "default"]
        .into_iter()
        .flat_map(|conf| {
            ["accept_dad=0", "dad_transmits=0", "accept_ra=0", "router_solicitations=0"]
                .map(|setting| format!("net.ipv6.conf.{conf}.{setting}"))
        })
        .collect();
    let mut args = vec!["-qw".to_string()];
    args.extend(quiet);
    command::run_bounded(&mut netns_exec(netns, "sysctl", args), STEP_LIMIT)
}

/// The uplink veth: `up0` in the host namespace, `eth0` in the outside one, which sends
/// complete checksums (see the module documentation), with an address of each of `families`.
fn add_uplink(host: &str, outside: &str, families: &[Family]) -> Result<()> {
    ip(host, &["link", "add", UPLINK, "type", "veth", "peer", "name", OUTSIDE_LINK, "netns", outside])?;
    for family in families {
        let addrs = family.addresses();
        address_up(host, UPLINK, addrs.uplink_host, addrs.prefix_len)?;
        address_up(outside, OUTSIDE_LINK, addrs.outside, addrs.prefix_len)?;
    }
    command::run_bounded(
        Command::new("ip").args(["netns", "exec", outside, "ethtool", "-K", OUTSIDE_LINK, "tx", "off"]),
        STEP_LIMIT,
    )
}

/// The same publish through the agent's API alone (no CLI process), [`API_PUBLISH_SAMPLES`]
/// times, each unpublished again (not timed): the median, in ms.
fn api_publish_ms(sandbox: &Sandbox, container: &str, spec: &str) -> Result<f64> {
    let mut samples = Vec::new();
    for _ in 0..API_PUBLISH_SAMPLES {
        let took = api_request::publish(sandbox.socket(), container, spec)?;
        bpfnet(sandbox, &["unpublish", container, spec])?;
        samples.push(took.as_secs_f64() * 1e3);
    }
    Ok(Summary::of(&samples).context("no API request was timed")?.median)
}

/// bpfnet aimed at the sandbox's agent.
fn bpfnet_command(sandbox: &Sandbox, args: &[&str]) -> Command {
    let mut cmd = sandbox.cli();
    cmd.args(args);
    cmd
}

fn bpfnet(sandbox: &Sandbox, args: &[&str]) -> Result<()> {
    command::run_bounded(&mut bpfnet_command(sandbox, args), STEP_LIMIT)
}

/// bpfnet's `--publish` spec for `count` ports from `first`, the same port on the host as in
/// the container (Docker's syntax: `P:P/proto`, or a range `A-B:A-B/proto`); None for none.
pub fn publish_spec(proto: Proto, first: u16, count: u32) -> Option<String> {
    let proto = proto.as_str();
    match count {
        0 => None,
        1 => Some(format!("{first}:{first}/{proto}")),
        _ => {
            let last = u32::from(first) + count - 1;
            assert!(last <= u32::from(u16::MAX), "ports {first}+{count} pass 65535");
            Some(format!("{first}-{last}:{first}-{last}/{proto}"))
        }
    }
}

/// A target address and port as the tools take it (`[ADDR]:PORT` for IPv6).
pub fn socket(addr: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(addr, port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measured_ports_come_after_the_others() {
        let mappings = Topologies::mappings(100);
        assert_eq!(mappings.len(), 103);
        assert_eq!(mappings[0].host_port, OTHER_PORTS_BASE);
        assert_eq!(mappings[99].container, IpAddr::V4(CLIENT_IP));
        let measured: Vec<u16> = mappings[100..].iter().map(|m| m.host_port).collect();
        assert_eq!(measured, [5201, 5301, 5401]);
        assert!(mappings[100..].iter().all(|m| m.container == IPV4.server && m.host_port == m.container_port));
        let v6 = Topologies::family_mappings(100, Family::V6);
        assert_eq!((v6[99].container, v6[100].container), (IPV6.client, IPV6.server));
        assert_eq!(
            v6.iter().map(|m| m.host_port).collect::<Vec<_>>(),
            mappings.iter().map(|m| m.host_port).collect::<Vec<_>>()
        );
        // 10,000 others stay below the highest port and clear of the measured ones.
        let last = Topologies::mappings(10_000)[9_999].host_port;
        assert!(last > 5401 && last == OTHER_PORTS_BASE + 9_999);
    }

    #[test]
    fn bpfnet_publishes_the_same_ports_as_docker_rules() {
        assert_eq!(publish_spec(Proto::Tcp, OTHER_PORTS_BASE, 0), None);
        assert_eq!(publish_spec(Proto::Udp, 5301, 1).as_deref(), Some("5301:5301/udp"));
        let spec = publish_spec(Proto::Tcp, OTHER_PORTS_BASE, 10_000).unwrap();
        assert_eq!(spec, "30000-39999:30000-39999/tcp");
        let mappings = Topologies::mappings(10_000);
        let (first, last) = (&mappings[0], &mappings[9_999]);
        assert_eq!(
            spec,
            format!("{}-{}:{}-{}/tcp", first.host_port, last.host_port, first.container_port, last.container_port)
        );
        // The port published one more at each N is outside the range.
        assert!(OTHER_PORTS_BASE - 1 > MEASURED_PORTS[2].1);
    }

    #[test]
    #[should_panic(expected = "pass 65535")]
    fn a_range_past_the_last_port_is_a_bug() {
        publish_spec(Proto::Tcp, 60_000, 10_000);
    }
}
