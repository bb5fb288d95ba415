//! `bpfnet-devkit program-cost`: what each eBPF program costs per packet, in nanoseconds, on
//! each path that matters, as the kernel times it (`BPF_PROG_TEST_RUN`). `cargo xtask bench`
//! runs it once per run and reports the figures next to the traffic measurements.
//!
//! Everything happens on a [`Testbed`]: a namespace of its own with veths and an uplink, a
//! datapath loaded and pinned into a bpffs directory of its own, maps seeded as the agent
//! seeds them (a network with two dual-stack containers, the uplink's CONFIG with the agent's default
//! NAT ports and conntrack limit and a cluster CIDR, one published UDP port). All of it is removed on return,
//! error, panic, Ctrl-C or SIGTERM.
//!
//! Method:
//! - Every call is one run (`repeat` = 1), and its `duration` is the kernel's timing of that
//!   one run. With `repeat` > 1 the kernel feeds the program its own output again
//!   (`datapath_tests::repeated_runs_see_their_own_output`), so a rewriting path would be
//!   measured once and then whatever its output does. The figures are the median and p90 over
//!   the calls of a path. The kernel's timer itself costs a little on each run: the
//!   `empty` path (a program that only returns) shows how much.
//! - A "new flow" path is a new flow on every run (a new source port); conntrack is emptied
//!   between batches (not timed), so it never fills. "Established" paths run after one
//!   untimed packet created the flow.
//! - Every run must return the path's verdict, and each batch must move exactly the path's
//!   counters (once per run) and nothing else: a packet that took another path fails the
//!   command rather than give a figure of the wrong thing.
//! - A program pinned as XDP (`from_uplink_xdp`, when there is one) is run with an XDP
//!   context and its verdicts are `XDP_*`; it gets the paths of `from_uplink`.
use std::{
    net::{Ipv4Addr, Ipv6Addr},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use datapath_common::{
    host_config_flags, program_names, Counter, CtKey, DropReason, HostConfig, HostConfig6, PublishedPortKey6,
    PublishedPortTarget6, IPPROTO_UDP,
};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use serde::Serialize;

use crate::{
    datapath::{CtTable, DEFAULT_CT_ENTRIES},
    devkit::testbed::{
        be, be6,
        packets::{self, Arp, BROADCAST, ETHERTYPE_IPV4, ETHERTYPE_IPV6},
        Counts, Program, ProgramKind, Testbed, Topology, A_IP, A_IP6, B_IP, B_IP6, ROUTER_MAC, SERVER_IP, SERVER_IP6,
        TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, UPLINK_IP, UPLINK_IP6, UPLINK_MAC, WEB_GATEWAY, WEB_GATEWAY6,
        XDP_DROP, XDP_PASS, XDP_REDIRECT,
    },
    devkit::testrun::{self, TestRunOutput},
    host::conntrack,
    host::publish::{PortMapping, Protocol},
};

/// Schema of the JSON report (`--json`); `cargo xtask bench` reads it.
pub const SCHEMA: &str = "bpfnet-program-cost/2";

#[derive(clap::Args, Debug)]
pub struct ProgramCostArgs {
    /// Print the report as JSON (what `cargo xtask bench` reads) instead of a table.
    #[arg(long)]
    json: bool,
    /// Test runs per path.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(100..=10_000_000))]
    runs: u32,
    /// Time limit of each path, in seconds: a path that reaches it stops with fewer runs
    /// (the report says how many).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    max_secs_per_path: u64,
    /// Publish this many more ports (TCP, host ports from 1 on, of container A) before
    /// measuring, as the bench's N does: a path's cost must not depend on it.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=MAX_OTHER_PORTS as i64))]
    other_ports: u32,
}

/// TCP host ports 1 to this: none of them is a measured path's (those are UDP).
const MAX_OTHER_PORTS: u32 = 60_000;

/// Runs between two checks of the counters (and of the time limit and signals); also the
/// number of new flows conntrack holds at most.
const BATCH: u32 = 1_000;
/// UDP payload of every datagram: with Ethernet, IPv4 and UDP headers, a 60-byte frame (64
/// with the FCS), the bench's packet size.
const PAYLOAD: [u8; 18] = [0x5a; 18];
/// The agent's default `--nat-ports`.
const NAT_PORTS: (u16, u16) = (32768, 60999);
/// An address out in the world that calls the published port.
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 99);
/// `--cluster-cidr`: the pod CIDR of a cluster whose nodes' pod subnets include this host's
/// networks (10.88.0.0/24 and 10.99.0.0/24).
const CLUSTER_CIDR: (Ipv4Addr, Ipv4Addr) = (Ipv4Addr::new(10, 64, 0, 0), Ipv4Addr::new(255, 192, 0, 0));
/// A pod of another node, reached through the uplink's default route (as a route to that
/// node's pod subnet would).
const REMOTE_POD_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 5);
/// `--publish 8080:80/udp` on container B.
const PUBLISHED: PortMapping =
    PortMapping { host_ip: None, host_port: 8080, container_port: 80, protocol: Protocol::Udp };
/// Source ports of the long-lived flows; new flows take ports from NEW_FLOW_PORTS on.
/// The outside client of the IPv6 published port (documentation prefix).
const CLIENT_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc1, 0, 0, 0, 0, 9);
const SNAT_PORT: u16 = 40000;
const HAIRPIN_PORT: u16 = 40001;
const DNAT_CLIENT_PORT: u16 = 5555;
const NEW_FLOW_PORTS: u16 = 10000;
/// A port of the host nothing is published on.
const UNPUBLISHED_PORT: u16 = 9999;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// What a path's packets must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
    Redirect,
}

impl Verdict {
    fn code(self, kind: ProgramKind) -> u32 {
        match (kind, self) {
            (ProgramKind::Tc, Verdict::Pass) => TC_ACT_OK,
            (ProgramKind::Tc, Verdict::Drop) => TC_ACT_SHOT,
            (ProgramKind::Tc, Verdict::Redirect) => TC_ACT_REDIRECT,
            (ProgramKind::Xdp, Verdict::Pass) => XDP_PASS,
            (ProgramKind::Xdp, Verdict::Drop) => XDP_DROP,
            (ProgramKind::Xdp, Verdict::Redirect) => XDP_REDIRECT,
        }
    }

    fn name(self, kind: ProgramKind) -> &'static str {
        match (kind, self) {
            (ProgramKind::Tc, Verdict::Pass) => "TC_ACT_OK",
            (ProgramKind::Tc, Verdict::Drop) => "TC_ACT_SHOT",
            (ProgramKind::Tc, Verdict::Redirect) => "TC_ACT_REDIRECT",
            (ProgramKind::Xdp, Verdict::Pass) => "XDP_PASS",
            (ProgramKind::Xdp, Verdict::Drop) => "XDP_DROP",
            (ProgramKind::Xdp, Verdict::Redirect) => "XDP_REDIRECT",
        }
    }
}

/// Which interface a path's packets come in on.
#[derive(Clone, Copy, Debug)]
enum Ingress {
    /// Container A's host-side veth.
    A,
    /// Container B's host-side veth.
    B,
    Uplink,
}

/// What conntrack must hold for a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Nothing: the path never looks a flow up, or finds none.
    None,
    /// Nothing before each batch: every run starts a flow.
    NewFlows,
    /// The long-lived flows of [`Flows`].
    Established,
}

/// One path of one program.
#[derive(Clone)]
struct PathSpec {
    name: &'static str,
    /// `from_endpoint`, `from_uplink` (also run on every other `from_uplink*` program).
    program: &'static str,
    what: &'static str,
    ingress: Ingress,
    state: State,
    /// The packet of run `i` (only new flows use `i`).
    packet: fn(&Scene, u32) -> Vec<u8>,
    verdict: Verdict,
    /// Each moves once per run; every other counter and drop reason stays.
    counters: &'static [Counter],
    drops: &'static [DropReason],
    /// Measured with the datapath's events on (someone listens to `bpfnet monitor`), each
    /// run's event written; the others with them off.
    events: bool,
}

/// Paths that write an event when events are on, and their name measured that way.
const WITH_EVENTS: [(&str, &str); 3] = [
    ("spoofed-drop", "spoofed-drop+events"),
    ("snat-new-flow", "snat-new-flow+events"),
    ("dnat-new-flow", "dnat-new-flow+events"),
];

/// The seeded topology, and the NAT ports of the long-lived flows once they exist.
struct Scene {
    t: Topology,
    flows: Option<Flows>,
}

/// The long-lived flows: A -> server (SNAT), client -> published port (DNAT), A -> published
/// port (hairpin). Their NAT ports are what the datapath chose.
#[derive(Clone, Copy, Debug)]
struct Flows {
    snat_port: u16,
    hairpin_port: u16,
}

impl Scene {
    fn flows(&self) -> Flows {
        self.flows.expect("established paths run after the flows were made")
    }
}

/// The conntrack key of A's UDP flow from `sport` to (`daddr`, `dport`).
fn udp_key_from_a(sport: u16, daddr: Ipv4Addr, dport: u16) -> CtKey {
    CtKey {
        saddr: be(A_IP),
        daddr: be(daddr),
        sport: sport.to_be(),
        dport: dport.to_be(),
        proto: IPPROTO_UDP,
        _pad: [0; 3],
    }
}

/// A 60-byte UDP frame.
fn udp_frame(
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    (src, sport): (Ipv4Addr, u16),
    (dst, dport): (Ipv4Addr, u16),
) -> Vec<u8> {
    let datagram = packets::udp(src, dst, sport, dport, &PAYLOAD);
    let ip = packets::ipv4(src, dst, IPPROTO_UDP, &[], &datagram);
    packets::eth(eth_dst, eth_src, ETHERTYPE_IPV4, &ip)
}

/// What container A sends through its gateway.
fn from_a(s: &Scene, sport: u16, to: (Ipv4Addr, u16)) -> Vec<u8> {
    udp_frame(s.t.a.gateway_mac, s.t.a.mac, (A_IP, sport), to)
}

/// What the router sends to the uplink.
fn from_outside(from: (Ipv4Addr, u16), dport: u16) -> Vec<u8> {
    udp_frame(UPLINK_MAC, ROUTER_MAC, from, (UPLINK_IP, dport))
}

/// An 80-byte UDP frame over IPv6 (its header is 20 bytes longer than IPv4's).
fn udp6_frame(
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    (src, sport): (Ipv6Addr, u16),
    (dst, dport): (Ipv6Addr, u16),
) -> Vec<u8> {
    let datagram = packets::udp6(src, dst, sport, dport, &PAYLOAD);
    let ip = packets::ipv6(src, dst, IPPROTO_UDP, 64, &datagram);
    packets::eth(eth_dst, eth_src, ETHERTYPE_IPV6, &ip)
}

fn new_flow_port(i: u32) -> u16 {
    NEW_FLOW_PORTS + (i % BATCH) as u16
}

/// The paths measured, in order: those that start flows empty conntrack between batches, so
/// they come before those that need the long-lived flows.
fn paths() -> Vec<PathSpec> {
    let mut paths = Vec::new();
    for path in plain_paths() {
        let with_events = WITH_EVENTS.iter().find(|(base, _)| *base == path.name);
        let variant = with_events.map(|(_, name)| PathSpec { name, events: true, ..path.clone() });
        paths.push(path);
        paths.extend(variant);
    }
    paths
}

/// Every path with events off.
fn plain_paths() -> Vec<PathSpec> {
    use Counter::*;
    let endpoint = program_names::FROM_ENDPOINT;
    let uplink = program_names::FROM_UPLINK;
    vec![
        PathSpec {
            name: "c2c-forward",
            program: endpoint,
            what: "UDP from container A to B on the same network: redirected into B",
            ingress: Ingress::A,
            state: State::None,
            packet: |s, _| udp_frame(s.t.b.mac, s.t.a.mac, (A_IP, 40000), (B_IP, 5201)),
            verdict: Verdict::Redirect,
            counters: &[Forwarded],
            drops: &[],
            events: false,
        },
        PathSpec {
            name: "arp-reply",
            program: endpoint,
            what: "ARP request for the gateway: answered from the maps, back into A",
            ingress: Ingress::A,
            state: State::None,
            packet: |s, _| Arp::request(s.t.a.mac, A_IP, WEB_GATEWAY).frame(BROADCAST, s.t.a.mac),
            verdict: Verdict::Redirect,
            counters: &[ArpReplied],
            drops: &[],
            events: false,
        },
        PathSpec {
            name: "c2c6-forward",
            program: endpoint,
            what: "UDP over IPv6 from A to B on the same network: from_endpoint's tail call to \
                   from_endpoint6, redirected into B (an 80-byte frame: IPv6's header is 20 \
                   bytes longer)",
            ingress: Ingress::A,
            state: State::None,
            packet: |s, _| {
                let datagram = packets::udp6(A_IP6, B_IP6, 40000, 5201, &PAYLOAD);
                let ip = packets::ipv6(A_IP6, B_IP6, IPPROTO_UDP, 64, &datagram);
                packets::eth(s.t.b.mac, s.t.a.mac, packets::ETHERTYPE_IPV6, &ip)
            },
            verdict: Verdict::Redirect,
            counters: &[Forwarded],
            drops: &[],
            events: false,
        },
        PathSpec {
            name: "ndp-reply",
            program: endpoint,
            what: "Neighbour solicitation for the gateway: from_endpoint's tail call to \
                   from_endpoint6, answered from the maps, back into A",
            ingress: Ingress::A,
            state: State::None,
            packet: |s, _| {
                let group = packets::solicited_node(WEB_GATEWAY6);
                let ns = packets::neighbor_solicitation(A_IP6, group, WEB_GATEWAY6, Some(s.t.a.mac));
                packets::eth(packets::multicast_mac(group), s.t.a.mac, packets::ETHERTYPE_IPV6, &ns)
            },
            verdict: Verdict::Redirect,
            counters: &[NdpReplied],
            drops: &[],
            events: false,
        },
        PathSpec {
            name: "to-gateway",
            program: endpoint,
            what: "UDP from A to its gateway: passed to the host",
            ingress: Ingress::A,
            state: State::None,
            packet: |s, _| from_a(s, 40000, (WEB_GATEWAY, 53)),
            verdict: Verdict::Pass,
            counters: &[ToHost],
            drops: &[],
            events: false,
        },
        PathSpec {
            name: "spoofed-drop",
            program: endpoint,
            what: "UDP from A with B's source address: dropped (spoofed_source)",
            ingress: Ingress::A,
            state: State::None,
            packet: |s, _| udp_frame(s.t.a.gateway_mac, s.t.a.mac, (B_IP, 40000), (SERVER_IP, 53)),
            verdict: Verdict::Drop,
            counters: &[],
            drops: &[DropReason::SpoofedSource],
            events: false,
        },
        PathSpec {
            name: "not-ours-to-host",
            program: uplink,
            what: "UDP to an unpublished port of the host, no flow: passed to the host",
            ingress: Ingress::Uplink,
            state: State::None,
            packet: |_, _| from_outside((SERVER_IP, 53), UNPUBLISHED_PORT),
            verdict: Verdict::Pass,
            counters: &[UplinkToHost],
            drops: &[],
            events: false,
        },
        PathSpec {
            name: "native-routed",
            program: endpoint,
            what: "UDP from A to another node's pod (the cluster CIDR): untracked, \
                   untranslated, routed out of the uplink (TTL and MACs only)",
            ingress: Ingress::A,
            state: State::None,
            packet: |s, _| from_a(s, 40000, (REMOTE_POD_IP, 5201)),
            verdict: Verdict::Redirect,
            counters: &[RoutedNative],
            drops: &[],
            events: false,
        },
        PathSpec {
            name: "native-delivered",
            program: uplink,
            what: "UDP from another node's pod to A: untracked, untranslated, redirected \
                   into A (TTL and MACs only)",
            ingress: Ingress::Uplink,
            state: State::None,
            packet: |_, _| udp_frame(UPLINK_MAC, ROUTER_MAC, (REMOTE_POD_IP, 5201), (A_IP, 40000)),
            verdict: Verdict::Redirect,
            counters: &[DeliveredNative],
            drops: &[],
            events: false,
        },
        PathSpec {
            name: "snat-new-flow",
            program: endpoint,
            what: "UDP from A to a server outside, a new flow each run: tracked, NAT port \
                   chosen, source-translated, routed out of the uplink",
            ingress: Ingress::A,
            state: State::NewFlows,
            packet: |s, i| from_a(s, new_flow_port(i), (SERVER_IP, 53)),
            verdict: Verdict::Redirect,
            counters: &[SnatNewFlow, TranslatedOut],
            drops: &[],
            events: false,
        },
        PathSpec {
            name: "dnat-new-flow",
            program: uplink,
            what: "UDP from outside to a published port, a new flow each run: tracked, \
                   destination-translated, redirected into B",
            ingress: Ingress::Uplink,
            state: State::NewFlows,
            packet: |_, i| from_outside((CLIENT_IP, new_flow_port(i)), PUBLISHED.host_port),
            verdict: Verdict::Redirect,
            counters: &[DnatNewFlow, TranslatedIn],
            drops: &[],
            events: false,
        },
        PathSpec {
            name: "hairpin-new-flow",
            program: endpoint,
            what: "UDP from A to a published port of the host, a new flow each run: tracked, \
                   both addresses translated, redirected into B",
            ingress: Ingress::A,
            state: State::NewFlows,
            packet: |s, i| from_a(s, new_flow_port(i), (UPLINK_IP, PUBLISHED.host_port)),
            verdict: Verdict::Redirect,
            counters: &[HairpinNewFlow, TranslatedIn],
            drops: &[],
            events: false,
        },
        PathSpec {
            name: "snat6-new-flow",
            program: endpoint,
            what: "UDP over IPv6 from A to a server outside, a new flow each run: from_endpoint's \
                   tail call to from_endpoint6, tracked (CT6), NAT port chosen, source-translated \
                   to the uplink's IPv6 address (NAT66), routed out of the uplink",
            ingress: Ingress::A,
            state: State::NewFlows,
            packet: |s, i| udp6_frame(s.t.a.gateway_mac, s.t.a.mac, (A_IP6, new_flow_port(i)), (SERVER_IP6, 53)),
            verdict: Verdict::Redirect,
            counters: &[SnatNewFlow, TranslatedOut],
            drops: &[],
            events: false,
        },
        PathSpec {
            name: "dnat6-new-flow",
            program: uplink,
            what: "UDP over IPv6 from outside to a published port, a new flow each run: the \
                   uplink program's tail call to its IPv6 one, tracked (CT6), \
                   destination-translated, redirected into B",
            ingress: Ingress::Uplink,
            state: State::NewFlows,
            packet: |_, i| {
                udp6_frame(UPLINK_MAC, ROUTER_MAC, (CLIENT_IP6, new_flow_port(i)), (UPLINK_IP6, PUBLISHED.host_port))
            },
            verdict: Verdict::Redirect,
            counters: &[DnatNewFlow, TranslatedIn],
            drops: &[],
            events: false,
        },
        PathSpec {
            name: "snat-established",
            program: endpoint,
            what: "UDP from A to the server, flow tracked (conntrack hit): translated, routed \
                   out of the uplink",
            ingress: Ingress::A,
            state: State::Established,
            packet: |s, _| from_a(s, SNAT_PORT, (SERVER_IP, 53)),
            verdict: Verdict::Redirect,
            counters: &[TranslatedOut],
            drops: &[],
            events: false,
        },
        PathSpec {
            name: "snat-reply",
            program: uplink,
            what: "the server's reply to A's flow: translated back, redirected into A",
            ingress: Ingress::Uplink,
            state: State::Established,
            packet: |s, _| from_outside((SERVER_IP, 53), s.flows().snat_port),
            verdict: Verdict::Redirect,
            counters: &[TranslatedIn],
            drops: &[],
            events: false,
        },
        PathSpec {
            name: "dnat-established",
            program: uplink,
            what: "UDP from outside to the published port, flow tracked: translated, \
                   redirected into B",
            ingress: Ingress::Uplink,
            state: State::Established,
            packet: |_, _| from_outside((CLIENT_IP, DNAT_CLIENT_PORT), PUBLISHED.host_port),
            verdict: Verdict::Redirect,
            counters: &[TranslatedIn],
            drops: &[],
            events: false,
        },
        PathSpec {
            name: "dnat-reply",
            program: endpoint,
            what: "B's reply to the outside client: source translated back to the published \
                   port, routed out of the uplink",
            ingress: Ingress::B,
            state: State::Established,
            packet: |s, _| {
                let to = (CLIENT_IP, DNAT_CLIENT_PORT);
                udp_frame(s.t.b.gateway_mac, s.t.b.mac, (B_IP, PUBLISHED.container_port), to)
            },
            verdict: Verdict::Redirect,
            counters: &[TranslatedOut],
            drops: &[],
            events: false,
        },
        PathSpec {
            name: "hairpin-established",
            program: endpoint,
            what: "UDP from A to the published port, flow tracked: translated, redirected \
                   into B",
            ingress: Ingress::A,
            state: State::Established,
            packet: |s, _| from_a(s, HAIRPIN_PORT, (UPLINK_IP, PUBLISHED.host_port)),
            verdict: Verdict::Redirect,
            counters: &[TranslatedIn],
            drops: &[],
            events: false,
        },
        PathSpec {
            name: "hairpin-reply",
            program: endpoint,
            what: "B's reply to A's hairpin flow: translated back, redirected into A",
            ingress: Ingress::B,
            state: State::Established,
            packet: |s, _| {
                let from = (B_IP, PUBLISHED.container_port);
                udp_frame(s.t.b.gateway_mac, s.t.b.mac, from, (UPLINK_IP, s.flows().hairpin_port))
            },
            verdict: Verdict::Redirect,
            counters: &[TranslatedIn],
            drops: &[],
            events: false,
        },
    ]
}

/// The figures of one path.
#[derive(Clone, Debug, Serialize)]
pub struct PathCost {
    pub program: String,
    /// `tc` or `xdp`.
    pub program_type: &'static str,
    pub path: &'static str,
    pub what: &'static str,
    /// The verdict every run returned.
    pub verdict: &'static str,
    /// The counters each run moved once.
    pub counters: Vec<&'static str>,
    pub runs: usize,
    #[serde(flatten)]
    pub ns: Percentiles,
}

/// Kernel-timed ns of one run, over the runs of a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Percentiles {
    pub median_ns: u32,
    pub p90_ns: u32,
    pub min_ns: u32,
}

impl Percentiles {
    /// Nearest-rank percentiles; None for no runs.
    pub fn of(mut durations: Vec<u32>) -> Option<Percentiles> {
        if durations.is_empty() {
            return None;
        }
        durations.sort_unstable();
        let rank = |p: usize| durations[(p * durations.len()).div_ceil(100).max(1) - 1];
        Some(Percentiles { median_ns: rank(50), p90_ns: rank(90), min_ns: durations[0] })
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub method: &'static str,
    pub runs_per_path: u32,
    pub max_secs_per_path: u64,
    /// Ports published besides the measured one (`--other-ports`).
    pub other_ports: u32,
    pub kernel: Option<String>,
    /// Where it ran (both removed before the report is printed).
    pub netns: String,
    pub bpffs: String,
    pub paths: Vec<PathCost>,
}

const METHOD: &str = "BPF_PROG_TEST_RUN, one run per call (repeat=1), the kernel's own \
     timing of that run; median and p90 over the calls of a path. Kernel-timed program run \
     only: no veth, no stack, no syscall. `empty` is a program that only returns: the \
     timer's own share of every figure.";

pub fn run(args: ProgramCostArgs) -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("program-cost creates a network namespace and loads eBPF programs: run it as root");
    }
    catch_signals()?;
    let report = measure(&args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
    }
    Ok(())
}

fn catch_signals() -> Result<()> {
    let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::empty(), SigSet::empty());
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(signal, &action) }.with_context(|| format!("installing a {signal} handler"))?;
    }
    Ok(())
}

fn check_interrupted() -> Result<()> {
    ensure!(!INTERRUPTED.load(Ordering::SeqCst), "interrupted (everything it made is removed)");
    Ok(())
}

/// Sets up the testbed, measures every path, and removes the testbed (also on error).
fn measure(args: &ProgramCostArgs) -> Result<Report> {
    let mut bed = Testbed::create("bnpc", DEFAULT_CT_ENTRIES)?;
    let (netns, bpffs) = (bed.netns().to_owned(), bed.pin_dir().display().to_string());
    let t = bed.topology();
    bed.try_seed(&t)?;
    let t6 = bed.topology6(&t);
    bed.try_seed6(&t6)?;
    let uplink = bed.make_uplink()?;
    bed.try_set_config(&HostConfig {
        uplink_ifindex: uplink.ifindex,
        uplink_ip: be(uplink.ip),
        nat_port_min: NAT_PORTS.0,
        nat_port_max: NAT_PORTS.1,
        ct_limit: conntrack::fill_limit(DEFAULT_CT_ENTRIES)?,
        // Set for every path, as on a Kubernetes node: the other paths' destinations lie
        // outside it and pay only its check.
        cluster_net: be(CLUSTER_CIDR.0),
        cluster_mask: be(CLUSTER_CIDR.1),
        ..Default::default()
    })?;
    bed.published_ports.insert(PUBLISHED.map_key().expect("an IPv4 mapping"), PUBLISHED.map_target(B_IP), 0)?;
    bed.make_uplink6()?;
    bed.set_config6(&HostConfig6 { uplink_ip: be6(UPLINK_IP6) })?;
    // PUBLISHED on IPv6 too, at the uplink's address (the all-zero key), as `-p` publishes it.
    bed.publish6(
        &PublishedPortKey6 { addr: [0; 4], port: PUBLISHED.host_port.to_be(), proto: IPPROTO_UDP, _pad: 0 },
        &PublishedPortTarget6 { ip: be6(B_IP6), port: PUBLISHED.container_port.to_be(), _pad: 0 },
    )?;
    for host_port in 1..=args.other_ports {
        let other =
            PortMapping { host_ip: None, host_port: host_port as u16, container_port: 80, protocol: Protocol::Tcp };
        bed.published_ports.insert(other.map_key().expect("an IPv4 mapping"), other.map_target(A_IP), 0)?;
    }
    let mut meter = Meter {
        bed,
        scene: Scene { t, flows: None },
        uplink_ifindex: uplink.ifindex,
        runs: args.runs,
        limit: Duration::from_secs(args.max_secs_per_path),
    };
    let mut costs = vec![meter.empty()?];
    // The uplink's entry programs (tcx and XDP), not the IPv6 programs they tail-call.
    let uplink_entry = |name: &String| {
        name.starts_with(program_names::FROM_UPLINK)
            && !program_names::TAIL_CALLED.iter().any(|(target, _, _)| target == name)
    };
    let uplinks: Vec<String> = meter.bed.program_names()?.into_iter().filter(uplink_entry).collect();
    for path in paths() {
        let programs =
            if path.program == program_names::FROM_UPLINK { uplinks.clone() } else { vec![path.program.to_owned()] };
        for name in programs {
            let program = meter.bed.program(&name)?;
            costs.push(meter.path(&program, &path).with_context(|| format!("path {} of {name}", path.name))?);
        }
    }
    drop(meter);
    Ok(Report {
        schema: SCHEMA,
        method: METHOD,
        runs_per_path: args.runs,
        max_secs_per_path: args.max_secs_per_path,
        other_ports: args.other_ports,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|s| s.trim().to_owned()),
        netns,
        bpffs,
        paths: costs,
    })
}

struct Meter {
    bed: Testbed,
    scene: Scene,
    uplink_ifindex: u32,
    runs: u32,
    limit: Duration,
}

impl Meter {
    fn ifindex(&self, ingress: Ingress) -> u32 {
        match ingress {
            Ingress::A => self.scene.t.a.host_ifindex,
            Ingress::B => self.scene.t.b.host_ifindex,
            Ingress::Uplink => self.uplink_ifindex,
        }
    }

    /// The timer's floor: a tc program that only returns, run as `c2c-forward` is.
    fn empty(&self) -> Result<PathCost> {
        let fd = testrun::load_program(testrun::BPF_PROG_TYPE_SCHED_CLS, &testrun::return_imm(TC_ACT_OK as i32))
            .context("loading the empty program")?;
        let program = Program::unpinned("empty", ProgramKind::Tc, fd);
        let packet = udp_frame(self.scene.t.b.mac, self.scene.t.a.mac, (A_IP, 1), (B_IP, 2));
        let ifindex = self.ifindex(Ingress::A);
        let started = Instant::now();
        let mut durations = Vec::with_capacity(self.runs as usize);
        while durations.len() < self.runs as usize && started.elapsed() < self.limit {
            check_interrupted()?;
            let batch = vec![packet.clone(); BATCH.min(self.runs - durations.len() as u32) as usize];
            for out in self.run_batch(&program, ifindex, batch)? {
                ensure!(out.retval == TC_ACT_OK, "the empty program returned {}", out.retval);
                durations.push(out.duration_ns);
            }
        }
        cost(
            &program,
            "empty",
            "a tc program that only returns TC_ACT_OK: the timer's floor",
            "TC_ACT_OK",
            &[],
            durations,
        )
    }

    /// Measures `path` on `program`: batches of runs until `runs` or the time limit, each
    /// batch checked (verdicts, counters).
    fn path(&mut self, program: &Program, path: &PathSpec) -> Result<PathCost> {
        if !path.events {
            return self.measure_path(program, path);
        }
        self.bed.set_event_flags(host_config_flags::EVENTS)?;
        let cost = self.measure_path(program, path);
        self.bed.set_event_flags(0)?;
        cost
    }

    /// Before a batch with events on: the ring emptied, and the budget of every CPU full
    /// again, so that each run writes its event (checked after it). The budget is filled by
    /// writing it, not by waiting for it to refill: a pause would leave the caches cold for
    /// the batch and make the figure the pause's.
    fn ready_for_events(&self) -> Result<u64> {
        self.bed.fill_event_budget()?;
        self.bed.take_events()?;
        Ok(self.bed.events_lost()?.iter().map(|(_, n)| n).sum())
    }

    fn measure_path(&mut self, program: &Program, path: &PathSpec) -> Result<PathCost> {
        if path.state == State::Established && self.scene.flows.is_none() {
            self.make_flows()?;
        }
        let ifindex = self.ifindex(path.ingress);
        let started = Instant::now();
        let mut durations = Vec::with_capacity(self.runs as usize);
        while durations.len() < self.runs as usize && started.elapsed() < self.limit {
            check_interrupted()?;
            if path.state == State::NewFlows {
                // The long-lived flows go too; they are made again when needed.
                self.scene.flows = None;
                self.bed.try_clear_ct()?;
            }
            let first = durations.len() as u32;
            let count = BATCH.min(self.runs - first);
            let batch: Vec<Vec<u8>> = (first..first + count).map(|i| (path.packet)(&self.scene, i)).collect();
            let lost_before = if path.events { Some(self.ready_for_events()?) } else { None };
            let before = self.bed.counts()?;
            let outs = self.run_batch(program, ifindex, batch)?;
            let moved = self.bed.counts()?.since(&before)?;
            check_batch(program, path, &outs, &moved)?;
            if let Some(lost_before) = lost_before {
                let written = self.bed.take_events()?.len();
                let lost: u64 = self.bed.events_lost()?.iter().map(|(_, n)| n).sum();
                ensure!(
                    written == outs.len() && lost == lost_before,
                    "{} runs wrote {written} events and lost {}: the figure would not be of writing them",
                    outs.len(),
                    lost - lost_before
                );
            }
            durations.extend(outs.iter().map(|out| out.duration_ns));
        }
        let counters = path.counters.iter().map(|c| c.name()).chain(path.drops.iter().map(|d| d.name()));
        cost(program, path.name, path.what, path.verdict.name(program.kind), &counters.collect::<Vec<_>>(), durations)
    }

    /// Makes the long-lived flows on an empty conntrack, each with one untimed packet that
    /// must take its new-flow path, and reads the NAT ports the datapath chose.
    fn make_flows(&mut self) -> Result<()> {
        use Counter::*;
        self.bed.try_clear_ct()?;
        let endpoint = self.bed.program(program_names::FROM_ENDPOINT)?;
        let uplink = self.bed.program(program_names::FROM_UPLINK)?;
        let s = &self.scene;
        let firsts = [
            (&endpoint, Ingress::A, from_a(s, SNAT_PORT, (SERVER_IP, 53)), SnatNewFlow),
            (&endpoint, Ingress::A, from_a(s, HAIRPIN_PORT, (UPLINK_IP, PUBLISHED.host_port)), HairpinNewFlow),
            (&uplink, Ingress::Uplink, from_outside((CLIENT_IP, DNAT_CLIENT_PORT), PUBLISHED.host_port), DnatNewFlow),
        ];
        for (program, ingress, packet, counter) in firsts {
            let translated =
                if counter == DnatNewFlow || counter == HairpinNewFlow { TranslatedIn } else { TranslatedOut };
            self.untimed(program, ingress, packet, &[counter, translated])?;
        }
        let nat_port = |sport: u16, daddr: Ipv4Addr, dport: u16| -> Result<u16> {
            let key = udp_key_from_a(sport, daddr, dport);
            let (_, entry) = self.bed.ct_get(&key).with_context(|| format!("no conntrack entry for {key:?}"))?;
            Ok(u16::from_be(entry.to.sport))
        };
        self.scene.flows = Some(Flows {
            snat_port: nat_port(SNAT_PORT, SERVER_IP, 53)?,
            hairpin_port: nat_port(HAIRPIN_PORT, UPLINK_IP, PUBLISHED.host_port)?,
        });
        // An answer, then the originator again: each flow becomes assured and moves to CT,
        // where an established flow's packets find it with the first lookup.
        let s = &self.scene;
        let paths = paths();
        let path = |name: &str| paths.iter().find(|p| p.name == name).expect("a path of paths()");
        for (answer, again) in [
            ("snat-reply", "snat-established"),
            ("dnat-reply", "dnat-established"),
            ("hairpin-reply", "hairpin-established"),
        ] {
            for step in [path(answer), path(again)] {
                let program = if step.program == program_names::FROM_ENDPOINT { &endpoint } else { &uplink };
                self.untimed(program, step.ingress, (step.packet)(s, 0), step.counters)?;
            }
        }
        for (sport, daddr, dport) in [(SNAT_PORT, SERVER_IP, 53), (HAIRPIN_PORT, UPLINK_IP, PUBLISHED.host_port)] {
            let key = udp_key_from_a(sport, daddr, dport);
            ensure!(
                matches!(self.bed.ct_get(&key), Some((CtTable::Assured, _))),
                "the long-lived flow {key:?} did not become assured"
            );
        }
        Ok(())
    }

    /// One untimed run of `packet` that must redirect and move exactly `counters`.
    fn untimed(&self, program: &Program, ingress: Ingress, packet: Vec<u8>, counters: &[Counter]) -> Result<()> {
        let before = self.bed.counts()?;
        let out = self.run_batch(program, self.ifindex(ingress), vec![packet])?;
        let moved = self.bed.counts()?.since(&before)?;
        ensure!(
            out[0].retval == TC_ACT_REDIRECT && moved == expected_counts(counters, &[], 1),
            "making the long-lived flows ({counters:?}): verdict {}, counters moved: {}",
            out[0].retval,
            describe(&moved)
        );
        Ok(())
    }

    /// One run (repeat 1) of each packet, in order, on a thread inside the testbed's namespace.
    fn run_batch(&self, program: &Program, ifindex: u32, batch: Vec<Vec<u8>>) -> Result<Vec<TestRunOutput>> {
        let program = program.clone();
        self.bed.run_in(move || {
            batch
                .iter()
                .map(|packet| program.run(ifindex, packet, 1).with_context(|| format!("test run of {}", program.name)))
                .collect()
        })
    }
}

fn cost(
    program: &Program,
    path: &'static str,
    what: &'static str,
    verdict: &'static str,
    counters: &[&'static str],
    durations: Vec<u32>,
) -> Result<PathCost> {
    let runs = durations.len();
    let ns = Percentiles::of(durations).with_context(|| format!("no run of {path} within the time limit"))?;
    Ok(PathCost {
        program: program.name.clone(),
        program_type: match program.kind {
            ProgramKind::Tc => "tc",
            ProgramKind::Xdp => "xdp",
        },
        path,
        what,
        verdict,
        counters: counters.to_vec(),
        runs,
        ns,
    })
}

/// Each of `counters` and `drops` moved `runs` times, nothing else moved.
fn expected_counts(counters: &[Counter], drops: &[DropReason], runs: u64) -> Counts {
    let mut expected = Counts::default();
    for c in counters {
        expected.counters[*c as usize] += runs;
    }
    for d in drops {
        expected.drops[*d as usize] += runs;
    }
    expected
}

fn describe(moved: &Counts) -> String {
    let drops = DropReason::ALL
        .iter()
        .filter(|r| moved.drops[**r as usize] != 0)
        .map(|r| format!("{}+{}", r.name(), moved.drops[*r as usize]));
    let counters = Counter::ALL
        .iter()
        .filter(|c| moved.counters[**c as usize] != 0)
        .map(|c| format!("{}+{}", c.name(), moved.counters[*c as usize]));
    let all: Vec<String> = drops.chain(counters).collect();
    format!("[{}]", all.join(", "))
}

/// Every run returned the path's verdict, the batch moved exactly the path's counters, and
/// what a translated path sends on has valid checksums.
fn check_batch(program: &Program, path: &PathSpec, outs: &[TestRunOutput], moved: &Counts) -> Result<()> {
    let want = path.verdict.code(program.kind);
    if let Some((i, out)) = outs.iter().enumerate().find(|(_, out)| out.retval != want) {
        bail!(
            "run {i} returned {} instead of {} ({}): the packet took another path",
            out.retval,
            want,
            path.verdict.name(program.kind)
        );
    }
    let expected = expected_counts(path.counters, path.drops, outs.len() as u64);
    ensure!(
        *moved == expected,
        "{} runs moved the counters {} instead of {} each: the packets took another path",
        outs.len(),
        describe(moved),
        describe(&expected_counts(path.counters, path.drops, 1))
    );
    let is_ipv4 = |p: &[u8]| p.len() > packets::ETH_HLEN && p[12..14] == ETHERTYPE_IPV4.to_be_bytes();
    if let Some(out) = outs.first().filter(|out| is_ipv4(&out.packet_out) && path.verdict != Verdict::Drop) {
        packets::verify_ipv4_checksums(&out.packet_out)
            .map_err(|e| anyhow::anyhow!("the packet {} sent on is broken: {e}", path.name))?;
    }
    Ok(())
}

/// The report as a terminal table.
pub fn table(report: &Report) -> String {
    let mut out = format!(
        "per-program cost (BPF_PROG_TEST_RUN, ns/packet), {} runs per path, {} other ports published\n{:<16} {:<4} {:<20} {:<16} {:>7} {:>7} {:>7}\n",
        report.runs_per_path, report.other_ports, "program", "type", "path", "verdict", "median", "p90", "runs"
    );
    for p in &report.paths {
        out.push_str(&format!(
            "{:<16} {:<4} {:<20} {:<16} {:>7} {:>7} {:>7}\n",
            p.program, p.program_type, p.path, p.verdict, p.ns.median_ns, p.ns.p90_ns, p.runs
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        assert_eq!(Percentiles::of(vec![]), None);
        let one = Percentiles::of(vec![7]).unwrap();
        assert_eq!((one.median_ns, one.p90_ns, one.min_ns), (7, 7, 7));
        // 1..=100 shuffled: the 50th and 90th values.
        let values: Vec<u32> = (1..=100).map(|i| (i * 37) % 100 + 1).collect();
        let p = Percentiles::of(values).unwrap();
        assert_eq!((p.median_ns, p.p90_ns, p.min_ns), (50, 90, 1));
        // 10 runs: p90 is the 9th, the median the 5th.
        let p = Percentiles::of((1..=10).rev().collect()).unwrap();
        assert_eq!((p.median_ns, p.p90_ns), (5, 9));
    }

    #[test]
    fn verdicts_per_program_type() {
        assert_eq!(Verdict::Redirect.code(ProgramKind::Tc), 7);
        assert_eq!(Verdict::Redirect.code(ProgramKind::Xdp), 4);
        assert_eq!(Verdict::Pass.name(ProgramKind::Xdp), "XDP_PASS");
        assert_eq!(Verdict::Drop.code(ProgramKind::Tc), 2);
    }

    #[test]
    fn new_flow_paths_come_before_the_established_ones() {
        let states: Vec<State> = paths().iter().map(|p| p.state).collect();
        let last_new = states.iter().rposition(|s| *s == State::NewFlows).unwrap();
        let first_established = states.iter().position(|s| *s == State::Established).unwrap();
        assert!(last_new < first_established, "{states:?}");
        // Names are unique: the bench keys its rows by (program, path).
        let mut names: Vec<&str> = paths().iter().map(|p| p.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), paths().len());
    }

    /// The command on a real testbed, as root: every path is measured, takes its own path
    /// (the command checks verdicts and counters itself), with plausible durations, and
    /// nothing is left behind.
    #[test]
    fn every_path_is_measured_and_nothing_is_left() {
        if !crate::devkit::netns::is_root() {
            return;
        }
        let args = ProgramCostArgs { json: true, runs: 300, max_secs_per_path: 30, other_ports: 100 };
        let report = measure(&args).unwrap();
        let names: Vec<&str> = report.paths.iter().map(|p| p.path).collect();
        assert_eq!(names[0], "empty");
        // Every uplink path twice: at tcx and at XDP.
        let uplink_paths = paths().iter().filter(|p| p.program == program_names::FROM_UPLINK).count();
        assert_eq!(names.len(), 1 + paths().len() + uplink_paths, "{names:?}");
        for p in &report.paths {
            assert_eq!(p.runs, 300, "{}", p.path);
            assert!(
                p.ns.min_ns <= p.ns.median_ns && p.ns.median_ns <= p.ns.p90_ns && p.ns.p90_ns < 1_000_000,
                "{}: {:?}",
                p.path,
                p.ns
            );
        }
        let find = |name: &str| report.paths.iter().find(|p| p.path == name).unwrap();
        assert_eq!(find("c2c-forward").verdict, "TC_ACT_REDIRECT");
        assert_eq!(find("c2c6-forward").verdict, "TC_ACT_REDIRECT");
        assert_eq!(find("snat6-new-flow").verdict, "TC_ACT_REDIRECT");
        assert!(report.paths.iter().any(|p| p.path == "dnat6-new-flow" && p.verdict == "XDP_REDIRECT"));
        assert_eq!(find("ndp-reply").verdict, "TC_ACT_REDIRECT");
        assert_eq!(find("spoofed-drop").verdict, "TC_ACT_SHOT");
        assert_eq!(find("not-ours-to-host").verdict, "TC_ACT_OK");
        assert!(!crate::sys::netns::exists(&report.netns), "{} left behind", report.netns);
        assert!(!std::path::Path::new(&report.bpffs).exists(), "{} left behind", report.bpffs);
    }
}
