//! Datapath unit tests, as Cilium's bpf/tests: crafted packets through the real eBPF
//! programs with `BPF_PROG_TEST_RUN`, with seeded maps, checking the verdict, every byte of
//! the packet that comes out, and which drop reason or counter moved.
//!
//! Each test builds its own [`Fixture`], a [`Testbed`] (a throwaway network namespace with the
//! veth pairs, and a throwaway bpffs directory the datapath is loaded and pinned into, so every
//! test has its own maps; see `crate::devkit::testbed`) with the tests' panicking shorthands and
//! assertions. Both are removed when the fixture drops, also on panic.
//!
//! New programs and maps need no fixture change: every pinned program is opened by name
//! ([`Fixture::send`]) and every pinned hash map is emptied by [`Fixture::clear_maps`].
//!
//! The uplink has two programs, the same code at two hooks (tcx and XDP). Tests of the uplink
//! path are written once and run against both ([`uplink_test!`]); XDP verdicts are reported
//! in TC terms ([`tc_verdict`]) so that one assertion serves both.
mod arp;
mod conntrack;
mod events;
mod forward;
mod forward6;
mod fragment;
mod fuzz;
mod icmp;
mod nat;
mod nat6;
mod native_routing;
mod ndp;

use std::{
    collections::BTreeMap,
    io,
    mem::size_of,
    ops::{Deref, DerefMut},
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    path::Path,
};

use anyhow::{Context, Result};
use aya::maps::{MapData, MapType};
use datapath_common::{ct_fill, ct_stats, program_names, Counter, CtEntry, CtKey, DropReason, HostConfig, HostConfig6};

pub use crate::devkit::testbed::{
    be, be6, packets, Counts, Topology, Topology6, Uplink, A_IP, A_IP6, B_IP, B_IP6, C_IP, C_IP6, DB, DB_GATEWAY,
    ROUTER_IP, ROUTER_MAC, SERVER_IP, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, UNRESOLVED_IP, UPLINK_IP, UPLINK_MAC,
    WEB, WEB_GATEWAY, WEB_GATEWAY6,
};
use crate::{
    devkit::testbed::{Program, ProgramKind, Testbed, XDP_DROP, XDP_PASS, XDP_REDIRECT},
    devkit::testrun::TestRunOutput,
    sys::netns,
};

/// `XDP_ABORTED` (uapi `enum xdp_action`): what an XDP program returns on an error.
const XDP_ABORTED: u32 = 0;

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

/// One test run of `program`, its verdict in TC terms. On a thread inside the testbed.
fn run_as_tc(program: &Program, ifindex: u32, packet: &[u8], repeat: u32) -> io::Result<TestRunOutput> {
    let mut out = program.run(ifindex, packet, repeat)?;
    if program.kind == ProgramKind::Xdp {
        out.retval = tc_verdict(out.retval);
    }
    Ok(out)
}

/// Writes a test of the uplink path once and runs it against each uplink program: the body
/// gets the fixture, topology and uplink of `Fixture::with_uplink_program` (as root only).
macro_rules! uplink_test {
    ($(#[$meta:meta])* fn $name:ident($fx:pat, $t:pat, $uplink:pat) $body:block) => {
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn run(program: &'static str) {
                if !crate::devkit::netns::is_root() {
                    return;
                }
                let ($fx, $t, $uplink) = crate::devkit::datapath_tests::Fixture::with_uplink_program(program);
                $body
            }

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

/// A [`Testbed`] with the tests' shorthands, which panic where the testbed returns errors.
pub struct Fixture {
    bed: Testbed,
    /// What `run_from_uplink` runs: FROM_UPLINK unless a test chose otherwise.
    uplink_program: &'static str,
}

impl Deref for Fixture {
    type Target = Testbed;

    fn deref(&self) -> &Testbed {
        &self.bed
    }
}

impl DerefMut for Fixture {
    fn deref_mut(&mut self) -> &mut Testbed {
        &mut self.bed
    }
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
        Ok(Fixture { bed: Testbed::create("bnt", FIXTURE_CT_ENTRIES)?, uplink_program: program_names::FROM_UPLINK })
    }

    /// The fixture with the standard topology in the maps: networks `web` (A on `h0`, B on
    /// `h1`) and `db` (C on `h2`).
    pub fn with_topology() -> (Self, Topology) {
        let mut fx = Self::new();
        let topology = fx.topology();
        fx.seed(&topology);
        (fx, topology)
    }

    /// Dual stack with an uplink of both families: the standard topology's IPv6 side, the
    /// uplink's IPv6 address, route and router, and CONFIG6 naming that address; uplink
    /// packets run through `program`.
    pub fn with_uplink6_program(program: &'static str) -> (Self, Topology, Topology6, u32) {
        let (mut fx, t, uplink) = Self::with_uplink_program(program);
        let t6 = fx.topology6(&t);
        fx.try_seed6(&t6).unwrap_or_else(|e| panic!("seeding the IPv6 topology: {e:#}"));
        fx.make_uplink6().unwrap_or_else(|e| panic!("setting up the uplink's IPv6: {e:#}"));
        let config6 = HostConfig6 { uplink_ip: be6(crate::devkit::testbed::UPLINK_IP6) };
        fx.set_config6(&config6).unwrap_or_else(|e| panic!("{e:#}"));
        (fx, t, t6, uplink.ifindex)
    }

    /// The standard topology, dual stack: every container has its IPv6 side too.
    pub fn with_topology6() -> (Self, Topology, Topology6) {
        let (mut fx, t) = Self::with_topology();
        let t6 = fx.topology6(&t);
        fx.try_seed6(&t6).unwrap_or_else(|e| panic!("seeding the IPv6 topology: {e:#}"));
        (fx, t, t6)
    }

    pub fn seed(&mut self, t: &Topology) {
        self.bed.try_seed(t).unwrap_or_else(|e| panic!("seeding the topology: {e:#}"));
    }

    /// Empties every pinned hash map (per-CPU arrays keep counting: tests look at deltas).
    pub fn clear_maps(&self) {
        clear_hash_maps(&self.pins.0.join("maps")).unwrap_or_else(|e| panic!("clearing the maps: {e:#}"));
    }

    /// Runs `from_endpoint` on `packet` as if it came in on interface `ifindex`.
    #[track_caller]
    pub fn run_from_endpoint(&self, ifindex: u32, packet: &[u8]) -> Outcome {
        self.send(program_names::FROM_ENDPOINT, ifindex, packet)
            .unwrap_or_else(|e| panic!("test run of {}: {e:#}", program_names::FROM_ENDPOINT))
    }

    /// Runs the pinned program `program` on `packet` as if it came in on `ifindex` (an
    /// interface of the test namespace), with the counter deltas of the run.
    pub fn send(&self, program: &str, ifindex: u32, packet: &[u8]) -> Result<Outcome> {
        let before = self.counts()?;
        let out = self.run_program(program, ifindex, packet, 1)?;
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

    /// The bare test run, on a thread inside the test namespace (the verdict in TC terms).
    pub fn run_program(&self, program: &str, ifindex: u32, packet: &[u8], repeat: u32) -> Result<TestRunOutput> {
        let program = self.bed.program(program)?;
        let packet = packet.to_vec();
        self.run_in(move || Ok(run_as_tc(&program, ifindex, &packet, repeat)?))
    }
}

/// A conntrack key as a sortable tuple: (saddr, daddr, sport, dport, proto).
pub type CtTuple = (u32, u32, u16, u16, u8);

pub const NAT_PORT_MIN: u16 = 20000;
pub const NAT_PORT_MAX: u16 = 20099;
pub const CT_LIMIT: u32 = 1000;
/// The fixture's conntrack size: the smallest the agent takes, so that a test can fill the
/// unassured table quickly.
pub const FIXTURE_CT_ENTRIES: u32 = 4096;
/// Unassured flows one container or published port may hold before its new flows go to the
/// overflow table.
pub const CT_UNASSURED_QUOTA: u32 = 50;

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
        let uplink = fx.make_uplink().unwrap_or_else(|e| panic!("setting up the uplink: {e:#}"));
        fx.set_config(&fx.host_config(&uplink));
        (fx, t, uplink)
    }

    pub fn host_config(&self, uplink: &Uplink) -> HostConfig {
        HostConfig {
            uplink_ifindex: uplink.ifindex,
            uplink_ip: be(uplink.ip),
            nat_port_min: NAT_PORT_MIN,
            nat_port_max: NAT_PORT_MAX,
            ct_limit: CT_LIMIT,
            flags: 0,
            ct_unassured_quota: CT_UNASSURED_QUOTA,
            host_netns_cookie: 0,
            cluster_net: 0,
            cluster_mask: 0,
        }
    }

    pub fn set_config(&mut self, config: &HostConfig) {
        self.bed.try_set_config(config).unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Every conntrack entry, of every table.
    pub fn ct_entries(&self) -> BTreeMap<CtTuple, (CtKey, CtEntry)> {
        self.ct_tables
            .iter()
            .flat_map(|table| table.iter())
            .map(|r| {
                let (k, v) = r.unwrap();
                ((k.saddr, k.daddr, k.sport, k.dport, k.proto), (k, v))
            })
            .collect()
    }

    /// Empties the conntrack tables and zeroes their counts, leaving the other maps as they are.
    pub fn clear_ct(&mut self) {
        self.bed.try_clear_ct().unwrap_or_else(|e| panic!("clearing conntrack: {e:#}"));
    }

    /// Entries made for new flows (in an unassured table: every flow starts there; the move
    /// of an assured flow to CT makes none).
    pub fn ct_inserted(&self) -> u64 {
        self.ct_stat(ct_stats::UNASSURED_INSERTED) + self.ct_stat(ct_stats::OVERFLOW_INSERTED)
    }

    /// Entries moved into CT, the assured table, as its fill count has them.
    pub fn ct_assured_inserted(&self) -> u64 {
        self.ct_fill.get(&ct_fill::INSERTED, 0).unwrap()
    }

    pub fn ct_stat(&self, slot: u32) -> u64 {
        self.ct_stats.get(&slot, 0).unwrap()
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
    pub fn run_batch(&self, runs: Vec<(&'static str, u32, Vec<u8>)>) -> Result<Vec<io::Result<TestRunOutput>>> {
        let mut programs = BTreeMap::new();
        for (program, _, _) in &runs {
            if !programs.contains_key(program) {
                programs.insert(*program, self.bed.program(program)?);
            }
        }
        self.run_in(move || {
            Ok(runs
                .into_iter()
                .map(|(program, ifindex, packet)| run_as_tc(&programs[program], ifindex, &packet, 1))
                .collect())
        })
    }

    /// Totals of every drop reason and counter (summed over CPUs).
    pub fn totals(&self) -> ([u64; DropReason::COUNT as usize], [u64; Counter::COUNT as usize]) {
        let c = self.counts().unwrap();
        (c.drops, c.counters)
    }
}

impl Outcome {
    fn moved(&self) -> String {
        let drops = DropReason::ALL.iter().filter(|r| self.drops[**r as usize] != 0);
        let counters = Counter::ALL.iter().filter(|c| self.counters[**c as usize] != 0);
        let drops = drops.map(|r| format!("{}+{}", r.name(), self.drops[*r as usize]));
        let counters = counters.map(|c| format!("{}+{}", c.name(), self.counters[*c as usize]));
        let moved: Vec<String> = drops.chain(counters).collect();
        format!("verdict {}, counters moved: [{}]", self.retval, moved.join(", "))
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
        let ok = self.retval == retval && self.drops == want_drops && self.counters == want_counters;
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
        assert_bytes(&self.packet, &self.input, "a dropped packet is not rewritten");
    }

    /// TC_ACT_OK (on to the host stack), exactly one count of `counter`, the packet untouched.
    #[track_caller]
    pub fn assert_passed(&self, counter: Counter) {
        self.assert_only(TC_ACT_OK, None, Some(counter));
        assert_bytes(&self.packet, &self.input, "a packet passed to the host is not rewritten");
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

fn map_syscall(cmd: libc::c_long, map: BorrowedFd<'_>, key: *const u8, next_key: *mut u8) -> io::Result<()> {
    let attr =
        MapElemAttr { map_fd: map.as_raw_fd() as u32, _pad: 0, key: key as u64, next_key: next_key as u64, flags: 0 };
    // SAFETY: a valid `bpf_attr` prefix; the key buffers are the map's key size (see callers).
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, &attr as *const MapElemAttr, size_of::<MapElemAttr>()) };
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
        let map = MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))?;
        let info = map.info()?;
        if !matches!(
            info.map_type()?,
            MapType::Hash | MapType::LruHash | MapType::PerCpuHash | MapType::LruPerCpuHash | MapType::LpmTrie
        ) {
            continue;
        }
        let mut key = vec![0u8; info.key_size() as usize];
        let fd = map.fd().as_fd();
        loop {
            match map_syscall(BPF_MAP_GET_NEXT_KEY, fd, std::ptr::null(), key.as_mut_ptr()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
                Err(e) => return Err(e).with_context(|| format!("first key of {}", path.display())),
            }
            map_syscall(BPF_MAP_DELETE_ELEM, fd, key.as_ptr(), std::ptr::null_mut())
                .with_context(|| format!("deleting from {}", path.display()))?;
        }
    }
    Ok(())
}

#[test]
fn fixture_loads_clears_and_cleans_up() {
    if !crate::devkit::netns::is_root() {
        return;
    }
    let (fx, t) = Fixture::with_topology();
    let pins = fx.pins.0.clone();
    let ns = fx.ns.names[0].clone();
    assert_eq!(fx.endpoints.get(&t.b.ip, 0).unwrap(), t.b);
    assert!(fx.host_ifindex.iter().chain(&fx.peer_ifindex).all(|i| *i > 1));
    fx.clear_maps();
    assert_eq!(fx.endpoints.keys().count() + fx.ifaces.keys().count() + fx.networks.keys().count(), 0);
    drop(fx);
    assert!(!pins.exists(), "{} left behind", pins.display());
    assert!(!netns::exists(&ns), "namespace {ns} left behind");
}

/// What the benchmark must know about `repeat`: the program runs again on its own output,
/// so a rewriting path is measured once and then whatever its output does.
#[test]
fn repeated_runs_see_their_own_output() {
    if !crate::devkit::netns::is_root() {
        return;
    }
    let (fx, t) = Fixture::with_topology();
    let request = packets::Arp::request(t.a.mac, A_IP, WEB_GATEWAY).frame(packets::BROADCAST, t.a.mac);
    let before = fx.counts().unwrap();
    let out = fx.run_program(program_names::FROM_ENDPOINT, t.a.host_ifindex, &request, 2).unwrap();
    let after = fx.counts().unwrap();
    // Run 1 turns the request into the gateway's reply; run 2 sees a frame whose sender is
    // the gateway, not A, and drops it as spoofed.
    assert_eq!(out.retval, TC_ACT_SHOT);
    let moved = |a: &Counts, b: &Counts| {
        (
            a.counters[Counter::ArpReplied as usize] - b.counters[Counter::ArpReplied as usize],
            a.drops[DropReason::SpoofedSource as usize] - b.drops[DropReason::SpoofedSource as usize],
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
    let out = fx.run_program(program_names::FROM_ENDPOINT, t.a.host_ifindex, &frame, 100).unwrap();
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
    let out = fx.run_program(program_names::FROM_ENDPOINT, t.a.host_ifindex, &frame, 100).unwrap();
    let after = fx.counts().unwrap();
    assert_eq!((out.retval, out.packet_out), (TC_ACT_OK, frame));
    let to_host = |c: &Counts| c.counters[Counter::ToHost as usize];
    assert_eq!(to_host(&after) - to_host(&before), 100);
}
