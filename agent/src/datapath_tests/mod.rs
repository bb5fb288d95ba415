//! Datapath unit tests, as Cilium's bpf/tests: crafted packets through the real eBPF
//! programs with `BPF_PROG_TEST_RUN`, with seeded maps, checking the verdict, every byte of
//! the packet that comes out, and which drop reason or counter moved.
//!
//! Each test builds its own [`Fixture`]: a throwaway network namespace holding the veth pairs
//! whose indexes the programs see as `__sk_buff.ifindex` (the kernel resolves a test run's
//! ifindex in the caller's namespace, so the runs happen on a thread inside it), and a
//! throwaway bpffs directory the datapath is loaded and pinned into, so every test has its
//! own maps. Both are removed when the fixture drops, also on panic.
//!
//! New programs and maps need no fixture change: every pinned program is opened by name
//! ([`Fixture::send`]) and every pinned hash map is emptied by [`Fixture::clear_maps`].
//!
//! The uplink has two programs, the same code at two hooks (tcx and XDP). Tests of the uplink
//! path are written once and run against both ([`uplink_test!`]); XDP verdicts are reported
//! in TC terms ([`tc_verdict`]) so that one assertion serves both.
mod arp;
mod forward;
mod fuzz;
mod icmp;
mod nat;
mod packets;

use std::{
    collections::BTreeMap,
    io,
    mem::size_of,
    net::Ipv4Addr,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{bail, Context, Result};
use aya::{
    maps::{Array, HashMap, Map, MapData, MapType, PerCpuArray},
    programs::ProgramInfo,
};
use datapath_common::{
    ct_fill, map_names, program_names, Backend, Counter, CtEntry, CtKey, DropReason, Endpoint,
    HostConfig, Network, ServiceKey,
};

use crate::{
    datapath::{self, Datapath, DatapathLogLevel},
    ipam,
    netns::{self, tests::TestNamespaces},
    testrun::{self, SkbContext, TestRunOutput, XdpContext},
};

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

/// XDP verdicts (uapi `enum xdp_action`).
const XDP_ABORTED: u32 = 0;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

/// An XDP verdict in TC terms: drop, pass to the stack, redirect. XDP_ABORTED (and anything
/// unknown) maps to a value no TC verdict has, so no assertion can mistake it for one.
pub fn tc_verdict(xdp: u32) -> u32 {
    match xdp {
        XDP_DROP => TC_ACT_SHOT,
        XDP_PASS => TC_ACT_OK,
        XDP_REDIRECT => TC_ACT_REDIRECT,
        XDP_ABORTED => u32::MAX,
        other => 1_000 + other,
    }
}

/// Writes a test of the uplink path once and runs it against each uplink program: the body
/// gets the program's name as `$program` (for `Fixture::with_uplink_program`).
macro_rules! uplink_test {
    ($(#[$meta:meta])* fn $name:ident($program:ident) $body:block) => {
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn run($program: &'static str) $body

            #[test]
            fn tc() {
                run(datapath_common::program_names::FROM_UPLINK)
            }

            #[test]
            fn xdp() {
                run(datapath_common::program_names::FROM_UPLINK_XDP)
            }
        }
    };
}
pub(crate) use uplink_test;

/// A pinned program, opened for test runs.
#[derive(Clone)]
struct TestProgram {
    fd: Arc<OwnedFd>,
    xdp: bool,
}

impl TestProgram {
    /// One test run as if the packet came in on `ifindex`, the verdict in TC terms.
    fn run(&self, ifindex: u32, packet: &[u8], repeat: u32) -> io::Result<TestRunOutput> {
        if !self.xdp {
            return testrun::run_skb(self.fd.as_fd(), packet, Some(&SkbContext::received_on(ifindex)), repeat);
        }
        let mut out = testrun::run_xdp(self.fd.as_fd(), packet, Some(&XdpContext::received_on(ifindex)), repeat)?;
        out.retval = tc_verdict(out.retval);
        Ok(out)
    }
}

/// Host-side veths in the test namespace, one per endpoint, as the agent makes them; their
/// container-side peers stay in the same namespace and serve as "not an endpoint" interfaces.
const VETHS: usize = 3;

/// The pinned datapath, its maps, and the namespace its test runs happen in.
pub struct Fixture {
    // Fields drop in order: handles on programs and maps close before the pins and the
    // namespace they live in are removed.
    programs: BTreeMap<String, TestProgram>,
    /// What `run_from_uplink` runs: FROM_UPLINK unless a test chose otherwise.
    uplink_program: &'static str,
    pub networks: HashMap<MapData, u32, Network>,
    pub endpoints: HashMap<MapData, u32, Endpoint>,
    pub ifaces: HashMap<MapData, u32, Endpoint>,
    pub config: Array<MapData, HostConfig>,
    pub ct: HashMap<MapData, CtKey, CtEntry>,
    pub ct_fill: Array<MapData, u64>,
    pub services: HashMap<MapData, ServiceKey, Backend>,
    drops: PerCpuArray<MapData, u64>,
    counters: PerCpuArray<MapData, u64>,
    /// Index of `h<i>`, the host side of veth pair `i`.
    pub host_ifindex: [u32; VETHS],
    /// Index of `c<i>`, the container side of veth pair `i` (never in IFACES).
    pub peer_ifindex: [u32; VETHS],
    pins: PinDir,
    ns: TestNamespaces,
}

/// A bpffs directory removed with everything pinned under it on drop.
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        // Never panic here: we may already be unwinding.
        if let Err(e) = datapath::destroy(&self.0) {
            eprintln!(
                "test cleanup: removing pins under {}: {e:#}",
                self.0.display()
            );
        }
    }
}

/// Two networks: `web` with members A and B, `db` with member C.
pub struct Topology {
    pub web: Network,
    pub db: Network,
    pub a: Endpoint,
    pub b: Endpoint,
    pub c: Endpoint,
}

pub const WEB: u32 = 1;
pub const DB: u32 = 2;
pub const WEB_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
pub const DB_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
pub const A_IP: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 10);
pub const B_IP: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 11);
pub const C_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 10);

pub fn be(ip: Ipv4Addr) -> u32 {
    datapath_common::ipv4_be(ip.octets())
}

fn network(id: u32, subnet: Ipv4Addr, gateway: Ipv4Addr) -> Network {
    Network {
        subnet: be(subnet),
        gateway: be(gateway),
        gateway_mac: ipam::gateway_mac(id),
        prefix_len: 24,
        _pad: 0,
    }
}

fn endpoint(network_id: u32, ip: Ipv4Addr, host_ifindex: u32) -> Endpoint {
    let gateway = if network_id == WEB { WEB_GATEWAY } else { DB_GATEWAY };
    Endpoint {
        host_ifindex,
        network_id,
        ip: be(ip),
        mac: ipam::container_mac(ip),
        gateway_mac: ipam::gateway_mac(network_id),
        // Interface indexes are small and unique in the test namespace.
        stats_slot: host_ifindex,
        gateway: be(gateway),
    }
}

/// Sums of the per-CPU counters, indexed by `DropReason`/`Counter`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    drops: [u64; DropReason::COUNT as usize],
    counters: [u64; Counter::COUNT as usize],
}

/// What one packet did: the program's verdict and output, and which counters moved.
#[derive(Debug)]
pub struct Outcome {
    pub input: Vec<u8>,
    pub retval: u32,
    pub packet: Vec<u8>,
    /// Per drop reason: how much its counter grew during the run.
    pub drops: [u64; DropReason::COUNT as usize],
    /// Per counter: how much it grew during the run.
    pub counters: [u64; Counter::COUNT as usize],
}

impl Fixture {
    /// A namespace with the veth pairs and a freshly loaded datapath with empty maps.
    pub fn new() -> Self {
        Self::try_new().unwrap_or_else(|e| panic!("setting up the datapath fixture: {e:#}"))
    }

    fn try_new() -> Result<Self> {
        let ns = TestNamespaces::create(1);
        let ns_name = ns.names[0].clone();
        let (host_ifindex, peer_ifindex) = make_veths(&ns_name)?;
        // The namespace's name is unique to this process and test; reuse it for the pins.
        let pins = PinDir(Path::new("/sys/fs/bpf").join(&ns_name));
        Datapath::open_or_load(&pins.0, DatapathLogLevel::Info)?;
        let programs = open_programs(&pins.0.join("progs"))?;
        if !programs.contains_key(program_names::FROM_ENDPOINT) {
            bail!(
                "no {} pinned under {}",
                program_names::FROM_ENDPOINT,
                pins.0.display()
            );
        }
        let maps = pins.0.join("maps");
        Ok(Fixture {
            programs,
            uplink_program: program_names::FROM_UPLINK,
            networks: open_map(&maps, map_names::NETWORKS)?,
            endpoints: open_map(&maps, map_names::ENDPOINTS)?,
            ifaces: open_map(&maps, map_names::IFACES)?,
            config: open_map(&maps, map_names::CONFIG)?,
            ct: open_map(&maps, map_names::CT)?,
            ct_fill: open_map(&maps, map_names::CT_FILL)?,
            services: open_map(&maps, map_names::SERVICES)?,
            drops: open_map(&maps, map_names::DROPS)?,
            counters: open_map(&maps, map_names::COUNTERS)?,
            host_ifindex,
            peer_ifindex,
            pins,
            ns,
        })
    }

    /// The fixture with the standard topology in the maps: networks `web` (A on `h0`, B on
    /// `h1`) and `db` (C on `h2`).
    pub fn with_topology() -> (Self, Topology) {
        let mut fx = Self::new();
        let topology = fx.topology();
        fx.seed(&topology);
        (fx, topology)
    }

    pub fn topology(&self) -> Topology {
        Topology {
            web: network(WEB, Ipv4Addr::new(10, 88, 0, 0), WEB_GATEWAY),
            db: network(DB, Ipv4Addr::new(10, 99, 0, 0), DB_GATEWAY),
            a: endpoint(WEB, A_IP, self.host_ifindex[0]),
            b: endpoint(WEB, B_IP, self.host_ifindex[1]),
            c: endpoint(DB, C_IP, self.host_ifindex[2]),
        }
    }

    /// Writes the topology the way the agent does (`Datapath::upsert_*`).
    pub fn seed(&mut self, t: &Topology) {
        self.networks.insert(WEB, t.web, 0).unwrap();
        self.networks.insert(DB, t.db, 0).unwrap();
        for ep in [&t.a, &t.b, &t.c] {
            self.add_endpoint(ep);
        }
    }

    pub fn add_endpoint(&mut self, ep: &Endpoint) {
        self.ifaces.insert(ep.host_ifindex, ep, 0).unwrap();
        self.endpoints.insert(ep.ip, ep, 0).unwrap();
    }

    /// Empties every pinned hash map (per-CPU arrays keep counting: tests look at deltas).
    pub fn clear_maps(&self) {
        clear_hash_maps(&self.pins.0.join("maps"))
            .unwrap_or_else(|e| panic!("clearing the maps: {e:#}"));
    }

    /// Runs `from_endpoint` on `packet` as if it came in on interface `ifindex`.
    #[track_caller]
    pub fn run_from_endpoint(&self, ifindex: u32, packet: &[u8]) -> Outcome {
        self.send(program_names::FROM_ENDPOINT, ifindex, packet)
            .unwrap_or_else(|e| panic!("test run of {}: {e:#}", program_names::FROM_ENDPOINT))
    }

    /// Runs the pinned tc program `program` on `packet` as if it came in on `ifindex` (an
    /// interface of the test namespace), with the counter deltas of the run.
    pub fn send(&self, program: &str, ifindex: u32, packet: &[u8]) -> Result<Outcome> {
        let before = self.counts()?;
        let out = self.run_skb(program, ifindex, packet, 1)?;
        let after = self.counts()?;
        let delta = |a: u64, b: u64| a.checked_sub(b).expect("a counter went backwards");
        Ok(Outcome {
            input: packet.to_vec(),
            retval: out.retval,
            packet: out.packet_out,
            drops: std::array::from_fn(|i| delta(after.drops[i], before.drops[i])),
            counters: std::array::from_fn(|i| delta(after.counters[i], before.counters[i])),
        })
    }

    /// The bare test run, on a thread inside the test namespace.
    pub fn run_skb(
        &self,
        program: &str,
        ifindex: u32,
        packet: &[u8],
        repeat: u32,
    ) -> Result<TestRunOutput> {
        let Some(program) = self.programs.get(program).cloned() else {
            bail!(
                "no program {program} pinned (have: {:?})",
                self.programs.keys().collect::<Vec<_>>()
            );
        };
        let packet = packet.to_vec();
        netns::run_in(&self.ns.names[0], move || {
            Ok(program.run(ifindex, &packet, repeat)?)
        })
    }

    fn counts(&self) -> Result<Counts> {
        let sum = |array: &PerCpuArray<MapData, u64>, index: u32| -> Result<u64> {
            Ok(array
                .get(&index, 0)
                .with_context(|| format!("reading per-CPU counter {index}"))?
                .iter()
                .sum())
        };
        let mut counts = Counts::default();
        for reason in DropReason::ALL {
            counts.drops[reason as usize] = sum(&self.drops, reason as u32)?;
        }
        for counter in Counter::ALL {
            counts.counters[counter as usize] = sum(&self.counters, counter as u32)?;
        }
        Ok(counts)
    }
}

/// The host's uplink in the test namespace: veth `up0` (its peer `up1` plays the upstream
/// router) with an address, a default route via the router and a permanent neighbour entry
/// for it, so `bpf_fib_lookup` answers SUCCESS with both MACs for anything routed through the
/// router, and NO_NEIGH for an unresolved on-link address.
#[allow(dead_code)] // described for the tests to come; not all read yet
pub struct Uplink {
    pub ifindex: u32,
    /// `up1`: the router's end; not an endpoint, not the uplink.
    pub peer_ifindex: u32,
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    pub router: Ipv4Addr,
    pub router_mac: [u8; 6],
}

/// A conntrack key as a sortable tuple: (saddr, daddr, sport, dport, proto).
pub type CtTuple = (u32, u32, u16, u16, u8);

pub const UPLINK_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
pub const UPLINK_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 2];
pub const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const ROUTER_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 1];
/// An on-link address of the uplink's subnet with no neighbour entry.
pub const UNRESOLVED_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 77);
/// A server out in the world, reached via the router.
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
pub const NAT_PORT_MIN: u16 = 20000;
pub const NAT_PORT_MAX: u16 = 20099;
pub const CT_LIMIT: u32 = 1000;

impl Fixture {
    /// The standard topology plus an uplink, forwarding enabled on every host-side veth (as the
    /// agent does for real ones) and CONFIG naming the uplink.
    pub fn with_uplink() -> (Self, Topology, Uplink) {
        Self::with_uplink_program(program_names::FROM_UPLINK)
    }

    /// As `with_uplink`, with `run_from_uplink` running `program` (one of the uplink's).
    pub fn with_uplink_program(program: &'static str) -> (Self, Topology, Uplink) {
        let (mut fx, t) = Self::with_topology();
        fx.uplink_program = program;
        let uplink = fx
            .make_uplink()
            .unwrap_or_else(|e| panic!("setting up the uplink: {e:#}"));
        fx.set_config(&fx.host_config(&uplink));
        (fx, t, uplink)
    }

    fn make_uplink(&self) -> Result<Uplink> {
        let ns = self.ns.names[0].clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (ifindex, peer_ifindex) =
            runtime.block_on(netns::netlink_in(&ns, |nl| async move {
                nl.create_veth("up0", UPLINK_MAC, "up1", ROUTER_MAC, None)
                    .await?;
                nl.set_up("up0").await?;
                nl.set_up("up1").await?;
                nl.add_address("up0", ipnet::IpNet::V4(ipnet::Ipv4Net::new(UPLINK_IP, 24)?))
                    .await?;
                nl.replace_default_route(ROUTER_IP, "up0").await?;
                nl.replace_neighbour("up0", ROUTER_IP, ROUTER_MAC).await?;
                let up0 = nl.link_by_name("up0").await?.context("up0 vanished")?;
                let up1 = nl.link_by_name("up1").await?.context("up1 vanished")?;
                Ok((up0.index, up1.index))
            }))?;
        netns::run_in(&ns, || {
            for i in 0..VETHS {
                let path = format!("/proc/sys/net/ipv4/conf/h{i}/forwarding");
                std::fs::write(&path, "1").with_context(|| format!("writing {path}"))?;
            }
            Ok(())
        })?;
        Ok(Uplink {
            ifindex,
            peer_ifindex,
            ip: UPLINK_IP,
            mac: UPLINK_MAC,
            router: ROUTER_IP,
            router_mac: ROUTER_MAC,
        })
    }

    pub fn host_config(&self, uplink: &Uplink) -> HostConfig {
        HostConfig {
            uplink_ifindex: uplink.ifindex,
            uplink_ip: be(uplink.ip),
            nat_port_min: NAT_PORT_MIN,
            nat_port_max: NAT_PORT_MAX,
            ct_limit: CT_LIMIT,
            flags: 0,
            _pad: 0,
            host_netns_cookie: 0,
        }
    }

    pub fn set_config(&mut self, config: &HostConfig) {
        self.config.set(0, config, 0).unwrap();
    }

    /// Every conntrack entry.
    pub fn ct_entries(&self) -> BTreeMap<CtTuple, (CtKey, CtEntry)> {
        self.ct
            .iter()
            .map(|r| {
                let (k, v) = r.unwrap();
                ((k.saddr, k.daddr, k.sport, k.dport, k.proto), (k, v))
            })
            .collect()
    }

    /// Empties CT and zeroes CT_FILL, leaving the other maps as they are.
    pub fn clear_ct(&mut self) {
        let keys: Vec<CtKey> = self.ct.keys().map(|k| k.unwrap()).collect();
        for key in keys {
            // An entry may be gone already (LRU); only "not there" is fine.
            match self.ct.remove(&key) {
                Ok(()) => {}
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => panic!("deleting a CT entry: {e}"),
            }
        }
        for slot in 0..ct_fill::SLOTS {
            self.ct_fill.set(slot, 0, 0).unwrap();
        }
    }

    pub fn ct_inserted(&self) -> u64 {
        self.ct_fill.get(&ct_fill::INSERTED, 0).unwrap()
    }

    /// Runs the uplink program (`from_uplink`, or the one the fixture was made with) on
    /// `packet` as if it came in on interface `ifindex`.
    #[track_caller]
    pub fn run_from_uplink(&self, ifindex: u32, packet: &[u8]) -> Outcome {
        self.send(self.uplink_program, ifindex, packet)
            .unwrap_or_else(|e| panic!("test run of {}: {e:#}", self.uplink_program))
    }

    /// Many test runs (repeat 1 each) on one thread inside the test namespace: `(program,
    /// ifindex, packet)` in, each run's result out, in order. No counters are read.
    pub fn run_batch(
        &self,
        runs: Vec<(&'static str, u32, Vec<u8>)>,
    ) -> Result<Vec<io::Result<TestRunOutput>>> {
        let mut programs = BTreeMap::new();
        for (program, _, _) in &runs {
            if !programs.contains_key(program) {
                let Some(loaded) = self.programs.get(*program).cloned() else {
                    bail!("no program {program} pinned");
                };
                programs.insert(*program, loaded);
            }
        }
        netns::run_in(&self.ns.names[0], move || {
            Ok(runs
                .into_iter()
                .map(|(program, ifindex, packet)| programs[program].run(ifindex, &packet, 1))
                .collect())
        })
    }

    /// Totals of every drop reason and counter (summed over CPUs).
    pub fn totals(
        &self,
    ) -> (
        [u64; DropReason::COUNT as usize],
        [u64; Counter::COUNT as usize],
    ) {
        let c = self.counts().unwrap();
        (c.drops, c.counters)
    }
}

impl Outcome {
    fn moved(&self) -> String {
        let drops = DropReason::ALL
            .iter()
            .filter(|r| self.drops[**r as usize] != 0);
        let counters = Counter::ALL
            .iter()
            .filter(|c| self.counters[**c as usize] != 0);
        let drops = drops.map(|r| format!("{}+{}", r.name(), self.drops[*r as usize]));
        let counters = counters.map(|c| format!("{}+{}", c.name(), self.counters[*c as usize]));
        let moved: Vec<String> = drops.chain(counters).collect();
        format!(
            "verdict {}, counters moved: [{}]",
            self.retval,
            moved.join(", ")
        )
    }

    #[track_caller]
    fn assert_only(&self, retval: u32, drop: Option<DropReason>, counter: Option<Counter>) {
        let mut drops = [0; DropReason::COUNT as usize];
        let mut counters = [0; Counter::COUNT as usize];
        if let Some(reason) = drop {
            drops[reason as usize] = 1;
        }
        if let Some(counter) = counter {
            counters[counter as usize] = 1;
        }
        let ok = self.retval == retval && self.drops == drops && self.counters == counters;
        assert!(
            ok,
            "expected verdict {retval} with only {:?} moving, got {}",
            drop.map(DropReason::name).or(counter.map(Counter::name)),
            self.moved()
        );
    }

    /// `retval`, and exactly one count of each of `drops` and `counters`, nothing else.
    #[track_caller]
    pub fn assert_moved(&self, retval: u32, drops: &[DropReason], counters: &[Counter]) {
        let mut want_drops = [0; DropReason::COUNT as usize];
        let mut want_counters = [0; Counter::COUNT as usize];
        for d in drops {
            want_drops[*d as usize] += 1;
        }
        for c in counters {
            want_counters[*c as usize] += 1;
        }
        let ok =
            self.retval == retval && self.drops == want_drops && self.counters == want_counters;
        assert!(
            ok,
            "expected verdict {retval} with {:?} {:?} moving once, got {}",
            drops.iter().map(|d| d.name()).collect::<Vec<_>>(),
            counters.iter().map(|c| c.name()).collect::<Vec<_>>(),
            self.moved()
        );
    }

    /// TC_ACT_SHOT, exactly one count of `reason` and nothing else, the packet untouched.
    #[track_caller]
    pub fn assert_dropped(&self, reason: DropReason) {
        self.assert_only(TC_ACT_SHOT, Some(reason), None);
        assert_bytes(
            &self.packet,
            &self.input,
            "a dropped packet is not rewritten",
        );
    }

    /// TC_ACT_OK (on to the host stack), exactly one count of `counter`, the packet untouched.
    #[track_caller]
    pub fn assert_passed(&self, counter: Counter) {
        self.assert_only(TC_ACT_OK, None, Some(counter));
        assert_bytes(
            &self.packet,
            &self.input,
            "a packet passed to the host is not rewritten",
        );
    }

    /// TC_ACT_REDIRECT, exactly one count of `counter`, and the packet now `expected`.
    #[track_caller]
    pub fn assert_redirected(&self, counter: Counter, expected: &[u8]) {
        self.assert_only(TC_ACT_REDIRECT, None, Some(counter));
        assert_bytes(&self.packet, expected, "redirected packet");
    }
}

/// Byte-for-byte equality, reporting every differing offset.
#[track_caller]
pub fn assert_bytes(got: &[u8], expected: &[u8], what: &str) {
    if got == expected {
        return;
    }
    let diffs: Vec<String> = (0..got.len().max(expected.len()))
        .filter(|i| got.get(*i) != expected.get(*i))
        .map(|i| format!("@{i}: {:02x?} != {:02x?}", got.get(i), expected.get(i)))
        .collect();
    panic!(
        "{what}: {} bytes, expected {}; differing (got != expected): {}",
        got.len(),
        expected.len(),
        diffs.join(", ")
    );
}

fn make_veths(ns: &str) -> Result<([u32; VETHS], [u32; VETHS])> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(netns::netlink_in(ns, |nl| async move {
        let mut host = [0; VETHS];
        let mut peer = [0; VETHS];
        for i in 0..VETHS {
            let (h, c) = (format!("h{i}"), format!("c{i}"));
            nl.create_veth(
                &h,
                ipam::gateway_mac(WEB),
                &c,
                [0x02, 0, 0, 0, 0, i as u8],
                None,
            )
            .await?;
            let index = |name: String| {
                let nl = &nl;
                async move {
                    match nl.link_by_name(&name).await? {
                        Some(link) => Ok(link.index),
                        None => bail!("veth {name} vanished right after it was created"),
                    }
                }
            };
            host[i] = index(h).await?;
            peer[i] = index(c).await?;
        }
        Ok((host, peer))
    }))
}

/// Every program pinned under `dir`, by pin name.
fn open_programs(dir: &Path) -> Result<BTreeMap<String, TestProgram>> {
    let mut programs = BTreeMap::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        let info = ProgramInfo::from_pin(&path)
            .with_context(|| format!("opening pinned program {}", path.display()))?;
        let xdp = info.program_type() == aya_obj::generated::bpf_prog_type::BPF_PROG_TYPE_XDP;
        let fd = info.fd()?.as_fd().try_clone_to_owned()?;
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        programs.insert(name, TestProgram { fd: Arc::new(fd), xdp });
    }
    Ok(programs)
}

fn open_map<T>(dir: &Path, name: &str) -> Result<T>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let path = dir.join(name);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    Ok(T::try_from(Map::from_map_data(data)?)?)
}

/// `BPF_MAP_*_ELEM`/`GET_NEXT_KEY` member of `union bpf_attr`.
#[repr(C)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    next_key: u64,
    flags: u64,
}

const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

fn map_syscall(
    cmd: libc::c_long,
    map: BorrowedFd<'_>,
    key: *const u8,
    next_key: *mut u8,
) -> io::Result<()> {
    let attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: key as u64,
        next_key: next_key as u64,
        flags: 0,
    };
    // SAFETY: a valid `bpf_attr` prefix; the key buffers are the map's key size (see callers).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            &attr as *const MapElemAttr,
            size_of::<MapElemAttr>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Deletes every entry of every hash-like map pinned under `dir`, whatever its key type:
/// "first key" (GET_NEXT_KEY from NULL) then delete it, until there is none.
fn clear_hash_maps(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        let map = MapData::from_pin(&path)
            .with_context(|| format!("opening pinned map {}", path.display()))?;
        let info = map.info()?;
        if !matches!(
            info.map_type()?,
            MapType::Hash
                | MapType::LruHash
                | MapType::PerCpuHash
                | MapType::LruPerCpuHash
                | MapType::LpmTrie
        ) {
            continue;
        }
        let mut key = vec![0u8; info.key_size() as usize];
        let fd = map.fd().as_fd();
        loop {
            match map_syscall(BPF_MAP_GET_NEXT_KEY, fd, std::ptr::null(), key.as_mut_ptr()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
                Err(e) => {
                    return Err(e).with_context(|| format!("first key of {}", path.display()))
                }
            }
            map_syscall(BPF_MAP_DELETE_ELEM, fd, key.as_ptr(), std::ptr::null_mut())
                .with_context(|| format!("deleting from {}", path.display()))?;
        }
    }
    Ok(())
}

#[test]
fn fixture_loads_clears_and_cleans_up() {
    if !netns::tests::is_root() {
        return;
    }
    let (fx, t) = Fixture::with_topology();
    let pins = fx.pins.0.clone();
    let ns = fx.ns.names[0].clone();
    assert_eq!(fx.endpoints.get(&t.b.ip, 0).unwrap(), t.b);
    assert!(fx
        .host_ifindex
        .iter()
        .chain(&fx.peer_ifindex)
        .all(|i| *i > 1));
    fx.clear_maps();
    assert_eq!(
        fx.endpoints.keys().count() + fx.ifaces.keys().count() + fx.networks.keys().count(),
        0
    );
    drop(fx);
    assert!(!pins.exists(), "{} left behind", pins.display());
    assert!(!netns::exists(&ns), "namespace {ns} left behind");
}

/// What the benchmark must know about `repeat`: the program runs again on its own output,
/// so a rewriting path is measured once and then whatever its output does.
#[test]
fn repeated_runs_see_their_own_output() {
    if !netns::tests::is_root() {
        return;
    }
    let (fx, t) = Fixture::with_topology();
    let request =
        packets::Arp::request(t.a.mac, A_IP, WEB_GATEWAY).frame(packets::BROADCAST, t.a.mac);
    let before = fx.counts().unwrap();
    let out = fx
        .run_skb(program_names::FROM_ENDPOINT, t.a.host_ifindex, &request, 2)
        .unwrap();
    let after = fx.counts().unwrap();
    // Run 1 turns the request into the gateway's reply; run 2 sees a frame whose sender is
    // the gateway, not A, and drops it as spoofed.
    assert_eq!(out.retval, TC_ACT_SHOT);
    let moved = |a: &Counts, b: &Counts| {
        (
            a.counters[Counter::ArpReplied as usize] - b.counters[Counter::ArpReplied as usize],
            a.drops[DropReason::SpoofedSource as usize]
                - b.drops[DropReason::SpoofedSource as usize],
        )
    };
    assert_eq!(moved(&after, &before), (1, 1));
    // Forwarding rewrites the Ethernet source to the gateway's MAC, so from run 2 on the
    // packet looks spoofed: `repeat` measures one forward and N-1 drops. A benchmark of the
    // forwarding path must use repeat = 1 per call (and average over calls), or a path that
    // leaves the packet as it found it, like this one to the gateway:
    let datagram = packets::udp(A_IP, B_IP, 1, 2, b"x");
    let ip = packets::ipv4(A_IP, B_IP, packets::IPPROTO_UDP, &[], &datagram);
    let frame = packets::eth(t.b.mac, t.a.mac, packets::ETHERTYPE_IPV4, &ip);
    let before = fx.counts().unwrap();
    let out = fx
        .run_skb(program_names::FROM_ENDPOINT, t.a.host_ifindex, &frame, 100)
        .unwrap();
    let after = fx.counts().unwrap();
    assert_eq!(out.retval, TC_ACT_SHOT);
    let forwarded = |c: &Counts| c.counters[Counter::Forwarded as usize];
    let spoofed = |c: &Counts| c.drops[DropReason::SpoofedSource as usize];
    assert_eq!(forwarded(&after) - forwarded(&before), 1);
    assert_eq!(spoofed(&after) - spoofed(&before), 99);

    let datagram = packets::udp(A_IP, WEB_GATEWAY, 1, 2, b"x");
    let ip = packets::ipv4(A_IP, WEB_GATEWAY, packets::IPPROTO_UDP, &[], &datagram);
    let frame = packets::eth(t.web.gateway_mac, t.a.mac, packets::ETHERTYPE_IPV4, &ip);
    let before = fx.counts().unwrap();
    let out = fx
        .run_skb(program_names::FROM_ENDPOINT, t.a.host_ifindex, &frame, 100)
        .unwrap();
    let after = fx.counts().unwrap();
    assert_eq!((out.retval, out.packet_out), (TC_ACT_OK, frame));
    let to_host = |c: &Counts| c.counters[Counter::ToHost as usize];
    assert_eq!(to_host(&after) - to_host(&before), 100);
}
