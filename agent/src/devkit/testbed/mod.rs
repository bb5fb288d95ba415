//! A throwaway datapath to run crafted packets through with `BPF_PROG_TEST_RUN`: the
//! datapath unit tests (`datapath_tests`) and `bpfnet-devkit program-cost` both stand on it.
//!
//! A [`Testbed`] is a network namespace of its own holding the veth pairs (and, with
//! [`Testbed::make_uplink`], an uplink with a route and a neighbour) whose indexes the programs
//! see as `__sk_buff.ifindex` (the kernel resolves a test run's ifindex in the caller's
//! namespace, so the runs happen on a thread inside it), and a bpffs directory of its own the
//! datapath is loaded and pinned into, so every testbed has its own maps. Both are removed
//! when it drops, also on panic. Nothing outside them is touched.
pub mod packets;

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{bail, ensure, Context, Result};
use aya::programs::{ProgramInfo, ProgramType};
use datapath_common::{
    ct_fill, ct_stats, ipv6_be, Counter, CtEntry, CtEntry6, CtKey, CtKey6, CtQuotaKey, DropReason, Endpoint, Endpoint6,
    HostConfig, Ipv4Be, Ipv6Be, Network,
};

use crate::{
    datapath::{self, CtFamily, CtTable, Datapath},
    devkit::netns::ThrowawayNamespaces,
    devkit::testrun::{self, SkbContext, TestRunOutput, XdpContext},
    host::ipam,
    sys::netns,
};

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_REDIRECT: u32 = 4;

/// Host-side veths in the namespace, one per endpoint, as the agent makes them; their
/// container-side peers stay in the same namespace and serve as "not an endpoint" interfaces.
pub const VETHS: usize = 3;

/// The pinned datapath (the agent's own [`Datapath`], whose maps the tests read and seed
/// directly), and the namespace its test runs happen in.
pub struct Testbed {
    // Fields drop in order: handles on maps close before the pins and the namespace they
    // live in are removed (programs are opened per run: `program`).
    pub datapath: Datapath,
    /// Index of `h<i>`, the host side of veth pair `i`.
    pub host_ifindex: [u32; VETHS],
    /// Index of `c<i>`, the container side of veth pair `i` (never in IFACES).
    #[cfg_attr(not(test), allow(dead_code))]
    pub peer_ifindex: [u32; VETHS],
    pub(crate) pins: PinDir,
    pub(crate) ns: ThrowawayNamespaces,
}

/// A bpffs directory removed with everything pinned under it on drop.
pub(crate) struct PinDir(pub(crate) PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        // Never panic here: we may already be unwinding.
        if let Err(e) = datapath::destroy(&self.0) {
            eprintln!("cleanup: removing pins under {}: {e:#}", self.0.display());
        }
    }
}

/// Empties one family's conntrack tables (an entry may be gone already: LRU).
fn clear_ct_family<A: CtFamily>(dp: &mut Datapath) -> Result<()> {
    for table in CtTable::ALL {
        for key in A::entries(dp, table)?.into_keys() {
            A::remove(dp, table, &key)?;
        }
    }
    Ok(())
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
    Network { subnet: be(subnet), gateway: be(gateway), gateway_mac: ipam::gateway_mac(id), prefix_len: 24, _pad: 0 }
}

fn endpoint(network_id: u32, ip: Ipv4Addr, host_ifindex: u32) -> Endpoint {
    let gateway = if network_id == WEB { WEB_GATEWAY } else { DB_GATEWAY };
    Endpoint {
        host_ifindex,
        network_id,
        ip: be(ip),
        mac: ipam::container_mac(ip),
        gateway_mac: ipam::gateway_mac(network_id),
        // Interface indexes are small and unique in the namespace.
        stats_slot: host_ifindex,
        gateway: be(gateway),
    }
}

/// The IPv6 side of [`Topology`]'s containers (dual stack): `web` is 2001:db8:88::/64, `db`
/// 2001:db8:99::/64.
pub struct Topology6 {
    pub a: Endpoint6,
    pub b: Endpoint6,
    pub c: Endpoint6,
}

pub const WEB_GATEWAY6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x88, 0, 0, 0, 0, 1);
pub const DB_GATEWAY6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x99, 0, 0, 0, 0, 1);
pub const A_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x88, 0, 0, 0, 0, 0x10);
pub const B_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x88, 0, 0, 0, 0, 0x11);
pub const C_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x99, 0, 0, 0, 0, 0x10);

pub fn be6(ip: Ipv6Addr) -> Ipv6Be {
    ipv6_be(ip.octets())
}

/// The IPv6 side of an IPv4 endpoint, as the control plane pairs them.
fn endpoint6(v4: &Endpoint, ip: Ipv6Addr) -> Endpoint6 {
    Endpoint6 {
        host_ifindex: v4.host_ifindex,
        network_id: v4.network_id,
        ip: be6(ip),
        gateway: be6(if v4.network_id == WEB { WEB_GATEWAY6 } else { DB_GATEWAY6 }),
        mac: v4.mac,
        gateway_mac: v4.gateway_mac,
        stats_slot: v4.stats_slot,
        ip4: v4.ip,
    }
}

/// Sums of the per-CPU counters, indexed by `DropReason`/`Counter`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub drops: [u64; DropReason::COUNT as usize],
    pub counters: [u64; Counter::COUNT as usize],
}

impl Counts {
    /// How much each counter grew from `before` to `self`.
    pub fn since(&self, before: &Counts) -> Result<Counts> {
        let delta = |after: u64, before: u64| after.checked_sub(before).context("a datapath counter went backwards");
        let mut moved = Counts::default();
        for i in 0..moved.drops.len() {
            moved.drops[i] = delta(self.drops[i], before.drops[i])?;
        }
        for i in 0..moved.counters.len() {
            moved.counters[i] = delta(self.counters[i], before.counters[i])?;
        }
        Ok(moved)
    }
}

/// How a pinned program is run by `BPF_PROG_TEST_RUN`: with an skb or an XDP context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgramKind {
    /// tc (`BPF_PROG_TYPE_SCHED_CLS`): `TC_ACT_*` verdicts.
    Tc,
    /// `BPF_PROG_TYPE_XDP`: `XDP_*` verdicts.
    Xdp,
}

/// A pinned program, ready for test runs.
#[derive(Clone)]
pub struct Program {
    pub name: String,
    pub kind: ProgramKind,
    fd: Arc<OwnedFd>,
}

impl Program {
    /// A program loaded by other means than the datapath (it is not pinned).
    pub fn unpinned(name: &str, kind: ProgramKind, fd: OwnedFd) -> Self {
        Program { name: name.to_owned(), kind, fd: Arc::new(fd) }
    }

    /// One test run (`repeat` times) of `packet` as received on `ifindex`. Must run on a thread
    /// inside the testbed's namespace (see [`Testbed::run_in`]).
    pub fn run(&self, ifindex: u32, packet: &[u8], repeat: u32) -> std::io::Result<TestRunOutput> {
        match self.kind {
            ProgramKind::Tc => {
                let ctx = SkbContext::received_on(ifindex);
                testrun::run_skb(self.fd.as_fd(), packet, Some(&ctx), repeat)
            }
            ProgramKind::Xdp => {
                let ctx = XdpContext::received_on(ifindex);
                testrun::run_xdp(self.fd.as_fd(), packet, Some(&ctx), repeat)
            }
        }
    }
}

impl std::ops::Deref for Testbed {
    type Target = Datapath;

    fn deref(&self) -> &Datapath {
        &self.datapath
    }
}

impl std::ops::DerefMut for Testbed {
    fn deref_mut(&mut self) -> &mut Datapath {
        &mut self.datapath
    }
}

impl Testbed {
    /// A namespace `<stem><pid>x<n>` with the veth pairs, and a freshly loaded datapath with
    /// empty maps and a conntrack table of `ct_entries`, pinned under `/sys/fs/bpf/` by the
    /// namespace's name.
    pub fn create(stem: &str, ct_entries: u32) -> Result<Self> {
        let ns = ThrowawayNamespaces::try_create(stem, 1)?;
        let ns_name = ns.names[0].clone();
        let (host_ifindex, peer_ifindex) = make_veths(&ns_name)?;
        // The namespace's name is unique to this process; reuse it for the pins.
        let pins = PinDir(Path::new("/sys/fs/bpf").join(&ns_name));
        Ok(Testbed {
            datapath: Datapath::open_or_load_with(&pins.0, ct_entries)?,
            host_ifindex,
            peer_ifindex,
            pins,
            ns,
        })
    }

    /// The namespace the test runs must happen in.
    pub fn netns(&self) -> &str {
        &self.ns.names[0]
    }

    /// Where the datapath is pinned.
    pub fn pin_dir(&self) -> &Path {
        &self.pins.0
    }

    /// Runs `f` on a thread inside the testbed's namespace.
    pub fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
        netns::run_in(self.netns(), f)
    }

    /// Names of the programs pinned now.
    pub fn program_names(&self) -> Result<Vec<String>> {
        let dir = self.pin_dir().join("progs");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    /// The program pinned as `name` now, and how to run it (from its type in the kernel).
    pub fn program(&self, name: &str) -> Result<Program> {
        let pin = self.pin_dir().join("progs").join(name);
        if !pin.exists() {
            bail!("no program {name} pinned (have: {:?})", self.program_names()?);
        }
        let info = ProgramInfo::from_pin(&pin).with_context(|| format!("opening pinned program {}", pin.display()))?;
        let kind = if info.program_type() == ProgramType::Xdp.into() {
            ProgramKind::Xdp
        } else if info.program_type() == ProgramType::SchedClassifier.into() {
            ProgramKind::Tc
        } else {
            bail!("program {name} is neither tc nor XDP ({:?}): no way to test-run it", info.program_type());
        };
        Ok(Program { name: name.to_owned(), kind, fd: Arc::new(info.fd()?.as_fd().try_clone_to_owned()?) })
    }

    /// The standard topology: networks `web` (A on `h0`, B on `h1`) and `db` (C on `h2`).
    pub fn topology(&self) -> Topology {
        Topology {
            web: network(WEB, Ipv4Addr::new(10, 88, 0, 0), WEB_GATEWAY),
            db: network(DB, Ipv4Addr::new(10, 99, 0, 0), DB_GATEWAY),
            a: endpoint(WEB, A_IP, self.host_ifindex[0]),
            b: endpoint(WEB, B_IP, self.host_ifindex[1]),
            c: endpoint(DB, C_IP, self.host_ifindex[2]),
        }
    }

    /// The IPv6 side of `t`'s containers.
    pub fn topology6(&self, t: &Topology) -> Topology6 {
        Topology6 { a: endpoint6(&t.a, A_IP6), b: endpoint6(&t.b, B_IP6), c: endpoint6(&t.c, C_IP6) }
    }

    /// Writes the IPv6 side as the agent does (`Datapath::upsert_endpoint6`).
    pub fn try_seed6(&mut self, t: &Topology6) -> Result<()> {
        for ep in [&t.a, &t.b, &t.c] {
            self.datapath.upsert_endpoint6(ep)?;
        }
        Ok(())
    }

    /// Writes the topology as the agent does (`Datapath::upsert_*`).
    pub fn try_seed(&mut self, t: &Topology) -> Result<()> {
        self.datapath.upsert_network(WEB, &t.web)?;
        self.datapath.upsert_network(DB, &t.db)?;
        for ep in [&t.a, &t.b, &t.c] {
            self.try_add_endpoint(ep)?;
        }
        Ok(())
    }

    pub fn try_add_endpoint(&mut self, ep: &Endpoint) -> Result<()> {
        self.datapath.upsert_endpoint(ep)
    }

    pub fn try_set_config(&mut self, config: &HostConfig) -> Result<()> {
        self.datapath.set_config(config)
    }

    /// The entry of `key` and the table it is in, if any.
    pub fn ct_get(&self, key: &CtKey) -> Option<(CtTable, CtEntry)> {
        CtTable::ALL
            .into_iter()
            .find_map(|table| self.datapath.ct_tables[table as usize].get(key, 0).ok().map(|entry| (table, entry)))
    }

    /// Where an IPv6 conntrack key is, and its entry.
    pub fn ct6_get(&self, key: &CtKey6) -> Option<(CtTable, CtEntry6)> {
        CtTable::ALL
            .into_iter()
            .find_map(|table| self.datapath.ct6_tables[table as usize].get(key, 0).ok().map(|entry| (table, entry)))
    }

    /// Empties the conntrack tables and CT_QUOTA and zeroes CT_FILL and CT_STATS, leaving the
    /// other maps as they are.
    pub fn try_clear_ct(&mut self) -> Result<()> {
        let dp = &mut self.datapath;
        clear_ct_family::<Ipv4Be>(dp)?;
        clear_ct_family::<Ipv6Be>(dp)?;
        let keys: Vec<CtQuotaKey> = dp.ct_quota.keys().collect::<Result<_, _>>()?;
        for key in keys {
            dp.ct_quota.remove(&key).context("deleting a CT_QUOTA entry")?;
        }
        for slot in 0..ct_fill::SLOTS {
            dp.ct_fill.set(slot, 0, 0)?;
            dp.ct6_fill.set(slot, 0, 0)?;
        }
        for slot in 0..ct_stats::SLOTS {
            dp.ct_stats.set(slot, 0, 0)?;
        }
        Ok(())
    }

    /// Every CPU's event budget full (EVENT_BUDGET), as after a long quiet time.
    pub fn fill_event_budget(&self) -> Result<()> {
        use aya::maps::{Map, MapData, PerCpuArray, PerCpuValues};
        use datapath_common::EventBudget;
        let path = self.pin_dir().join("maps").join(datapath_common::map_names::EVENT_BUDGET);
        let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
        let mut budget: PerCpuArray<MapData, EventBudget> = PerCpuArray::try_from(Map::PerCpuArray(data))?;
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
        let full = EventBudget { tokens: EventBudget::BURST, refilled_ns: 0 };
        budget.set(0, PerCpuValues::try_from(vec![full; cpus])?, 0).context("filling EVENT_BUDGET")
    }

    /// Every event in the ring buffer, oldest first; the ring is empty afterwards.
    pub fn take_events(&self) -> Result<Vec<datapath_common::DatapathEvent>> {
        use aya::maps::{Map, MapData, RingBuf};
        let path = self.pin_dir().join("maps").join(datapath_common::map_names::EVENTS);
        let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
        let mut ring = RingBuf::try_from(Map::RingBuf(data))?;
        let mut events = Vec::new();
        while let Some(item) = ring.next() {
            ensure!(
                item.len() == std::mem::size_of::<datapath_common::DatapathEvent>(),
                "an event of {} bytes",
                item.len()
            );
            // SAFETY: plain data of the size just checked.
            events.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const datapath_common::DatapathEvent) });
        }
        Ok(events)
    }

    /// Totals of every drop reason and counter (summed over CPUs), as `status` reads them.
    pub fn counts(&self) -> Result<Counts> {
        let snapshot = self.datapath.snapshot()?;
        let mut counts = Counts::default();
        for (slot, (_, value)) in counts.drops.iter_mut().zip(&snapshot.drops) {
            *slot = *value;
        }
        for (slot, (_, value)) in counts.counters.iter_mut().zip(&snapshot.counters) {
            *slot = *value;
        }
        Ok(counts)
    }
}

/// The host's uplink in the namespace: veth `up0` (its peer `up1` plays the upstream
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

pub const UPLINK_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
pub const UPLINK_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 2];
pub const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const ROUTER_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 1];
/// An on-link address of the uplink's subnet with no neighbour entry.
#[cfg_attr(not(test), allow(dead_code))]
pub const UNRESOLVED_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 77);
/// A server out in the world, reached via the router.
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

impl Testbed {
    /// Makes the uplink and enables forwarding on every host-side veth (as the agent does for
    /// real ones). CONFIG is left to the caller.
    pub fn make_uplink(&self) -> Result<Uplink> {
        let ns = self.netns().to_owned();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (ifindex, peer_ifindex) = runtime.block_on(netns::netlink_in(&ns, |nl| async move {
            nl.create_veth("up0", UPLINK_MAC, "up1", ROUTER_MAC, None).await?;
            nl.set_up("up0").await?;
            nl.set_up("up1").await?;
            nl.add_address("up0", ipnet::IpNet::V4(ipnet::Ipv4Net::new(UPLINK_IP, 24)?)).await?;
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
        Ok(Uplink { ifindex, peer_ifindex, ip: UPLINK_IP, mac: UPLINK_MAC, router: ROUTER_IP, router_mac: ROUTER_MAC })
    }
}

/// The uplink's IPv6 side (dual stack): an address on `up0`, a default route via the
/// router, a permanent neighbour entry for it.
pub const UPLINK_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xee, 0, 0, 0, 0, 2);
pub const ROUTER_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xee, 0, 0, 0, 0, 1);
/// A server out in the world, reached via the router.
#[cfg_attr(not(test), allow(dead_code))]
pub const SERVER_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x51, 0, 0, 0, 0, 7);

impl Testbed {
    /// Gives the uplink (made by `make_uplink`) its IPv6 side and enables IPv6 forwarding on
    /// every host-side veth (as the control plane does for real ones), all inside the testbed's
    /// namespace. CONFIG6 is left to the caller.
    pub fn make_uplink6(&self) -> Result<()> {
        let ns = self.netns().to_owned();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(netns::netlink_in(&ns, |nl| async move {
            nl.add_address("up0", ipnet::IpNet::V6(ipnet::Ipv6Net::new(UPLINK_IP6, 64)?)).await?;
            nl.replace_neighbour("up0", ROUTER_IP6, ROUTER_MAC).await?;
            nl.replace_default_route(ROUTER_IP6, "up0").await?;
            Ok(())
        }))?;
        netns::run_in(&ns, || {
            for i in 0..VETHS {
                let path = format!("/proc/sys/net/ipv6/conf/h{i}/forwarding");
                std::fs::write(&path, "1").with_context(|| format!("writing {path}"))?;
            }
            Ok(())
        })
    }
}

fn make_veths(ns: &str) -> Result<([u32; VETHS], [u32; VETHS])> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(netns::netlink_in(ns, |nl| async move {
        let mut host = [0; VETHS];
        let mut peer = [0; VETHS];
        for i in 0..VETHS {
            let (h, c) = (format!("h{i}"), format!("c{i}"));
            nl.create_veth(&h, ipam::gateway_mac(WEB), &c, [0x02, 0, 0, 0, 0, i as u8], None).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What `bpfnet-devkit program-cost` and the tests rely on to run the XDP variant of the
    /// uplink program: the type is read from the pin, and the run gets an XDP context on the
    /// uplink.
    #[test]
    fn a_program_pinned_as_xdp_is_run_as_xdp() {
        if !crate::devkit::netns::is_root() {
            return;
        }
        let bed = Testbed::create("bnt", 4096).unwrap();
        let uplink = bed.make_uplink().unwrap();
        let tc = bed.program(datapath_common::program_names::FROM_UPLINK).unwrap();
        assert_eq!(tc.kind, ProgramKind::Tc);
        let program = bed.program(datapath_common::program_names::FROM_UPLINK_XDP).unwrap();
        assert_eq!(program.kind, ProgramKind::Xdp);
        // Not IPv4: the host's, passed at XDP.
        let frame = packets::eth(UPLINK_MAC, ROUTER_MAC, 0x86dd, &[0; 46]);
        let out = bed.run_in(move || Ok(program.run(uplink.ifindex, &frame, 1)?)).unwrap();
        assert_eq!(out.retval, XDP_PASS);
        let err = bed.program("from_nowhere").err().unwrap();
        assert!(format!("{err:#}").contains("from_uplink_xdp"), "{err:#}");
    }
}
