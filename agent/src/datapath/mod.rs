//! The eBPF datapath as the agent sees it: the embedded object, loaded once and pinned under
//! the bpffs directory (programs, maps, and one tcx link per endpoint), so that it keeps
//! forwarding whatever happens to the process that loaded it. Later runs adopt the pins.
//!
//! Pin layout under `<bpffs>/`:
//!   progs/<program>   the loaded programs
//!   maps/<MAP>        the maps (pinned by name by the loader)
//!   links/<ifname>    the tcx ingress link of a container's host-side veth
//!   links/uplink-<ifname> or links/uplinkxdp-<ifname>
//!                     the uplink's link: tcx ingress (`--uplink-mode tc`) or XDP (`xdp`)
//!   links/hostcg-<cgroup id>-<program>
//!                     a socket hook's link on the host cgroup (`--host-cgroup`)
//!
//! One file per concern: `load` (the object, pins, bpffs), `links` (attachment to interfaces
//! and the host cgroup), `upgrade` (program replacement, map migrations), `conntrack` (the
//! tables' sizes); this file holds the handle and its map reads and writes.
use std::{
    io,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use aya::{
    maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuValues, ProgramArray},
    programs::{
        links::{CgroupAttachMode, FdLink, PinnedLink},
        tc::SchedClassifierLink,
        tc::TcAttachOptions,
        xdp::XdpLink,
        CgroupSockAddr, CgroupSockAddrAttachType, LinkOrder, Program, ProgramInfo, SchedClassifier, TcAttachType, Xdp,
        XdpMode,
    },
    EbpfLoader,
};
use datapath_common::{
    map_names, program_names, Counter, CtEntry, CtEntry6, CtEntryOf, CtKey, CtKey6, CtKeyOf, CtQuotaKey, DropReason,
    Endpoint, Endpoint6, EndpointStats, EventLoss, HostConfig, HostConfig6, Ipv4Be, Ipv6Be, Network, PublishedPortKey,
    PublishedPortKey6, PublishedPortTarget, PublishedPortTarget6,
};

use crate::{sys::bpf, sys::cgroup::HostCgroup};

mod conntrack;
mod events;
mod links;
mod load;
mod upgrade;

pub use conntrack::*;
pub use events::{pinned_map_id, EventRing};
use links::*;
pub use links::{hook_name, HostCgroupLink, HOST_SOCKET_PROGRAMS};
pub use load::destroy;
use load::*;

/// Where the uplink runs its program: at tcx ingress (on the skb), or at XDP (in the driver,
/// before an skb exists). The same translation either way; the benchmark compares them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UplinkMode {
    #[default]
    Tc,
    Xdp,
}

impl UplinkMode {
    const ALL: [UplinkMode; 2] = [UplinkMode::Tc, UplinkMode::Xdp];

    /// As the settings and `status` name it.
    pub fn name(self) -> &'static str {
        match self {
            UplinkMode::Tc => "tc",
            UplinkMode::Xdp => "xdp",
        }
    }

    /// The program of the mode named `name` (as `status` shows it); the tc one for any other.
    pub fn program_of(name: &str) -> &'static str {
        Self::ALL.into_iter().find(|mode| mode.name() == name).unwrap_or_default().program()
    }

    /// The program this mode attaches to the uplink.
    pub fn program(self) -> &'static str {
        match self {
            UplinkMode::Tc => program_names::FROM_UPLINK,
            UplinkMode::Xdp => program_names::FROM_UPLINK_XDP,
        }
    }

    /// Prefix of the uplink's link pin (bpffs allows no `.` in names; host veths are `bn...`).
    fn pin_prefix(self) -> &'static str {
        match self {
            UplinkMode::Tc => "uplink-",
            UplinkMode::Xdp => "uplinkxdp-",
        }
    }

    /// The mode whose link pin this is, if it is an uplink's.
    fn of_pin(pin_name: &str) -> Option<(UplinkMode, &str)> {
        Self::ALL.into_iter().find_map(|mode| pin_name.strip_prefix(mode.pin_prefix()).map(|ifname| (mode, ifname)))
    }
}

pub struct Datapath {
    pin_dir: PathBuf,
    from_endpoint: SchedClassifier,
    from_uplink: SchedClassifier,
    from_uplink_xdp: Xdp,
    /// The IPv6 programs, reached by tail call from the three above (`TAIL_CALLS`,
    /// `TAIL_CALLS_XDP`).
    from_endpoint6: SchedClassifier,
    from_uplink6: SchedClassifier,
    from_uplink6_xdp: Xdp,
    /// HOST_SOCKET_PROGRAMS, in that order.
    host_sockets: Vec<(&'static str, CgroupSockAddr)>,
    pub(crate) endpoints: HashMap<MapData, Ipv4Be, Endpoint>,
    pub(crate) ifaces: HashMap<MapData, u32, Endpoint>,
    pub(crate) networks: HashMap<MapData, u32, Network>,
    pub(crate) drops: PerCpuArray<MapData, u64>,
    pub(crate) counters: PerCpuArray<MapData, u64>,
    pub(crate) config: Array<MapData, HostConfig>,
    /// Assured flows, then flows not assured yet, then those over their quota (see
    /// `conntrack`), in the order `CtTable::ALL` names them.
    pub(crate) ct_tables: [HashMap<MapData, CtKey, CtEntry>; 3],
    pub(crate) ct_fill: Array<MapData, u64>,
    /// IPv6's conntrack, the same three tables and fill count (`CT_QUOTA`, `CT_STATS` and
    /// `CT_QUOTA_HITS` are both families').
    pub(crate) ct6_tables: [HashMap<MapData, CtKey6, CtEntry6>; 3],
    pub(crate) ct6_fill: Array<MapData, u64>,
    pub(crate) ct_quota: HashMap<MapData, CtQuotaKey, u64>,
    pub(crate) ct_stats: Array<MapData, u64>,
    pub(crate) ct_quota_hits: PerCpuArray<MapData, u64>,
    pub(crate) published_ports: HashMap<MapData, PublishedPortKey, PublishedPortTarget>,
    pub(crate) endpoint_stats: PerCpuArray<MapData, EndpointStats>,
    pub(crate) endpoint_drops: PerCpuArray<MapData, u64>,
    pub(crate) events_lost: PerCpuArray<MapData, u64>,
    /// FRAGS and SOCK_REV_NAT, only counted (map pressure).
    pub(crate) frags: HashMap<MapData, datapath_common::FragKey, datapath_common::FragPorts>,
    pub(crate) sock_rev_nat: HashMap<MapData, datapath_common::SockRevNatKey, datapath_common::SockRevNat>,
    /// The IPv6 side of dual-stack containers and published ports (see datapath_common's
    /// `ipv6`).
    pub(crate) endpoints6: HashMap<MapData, Ipv6Be, Endpoint6>,
    pub(crate) ifaces6: HashMap<MapData, u32, Endpoint6>,
    pub(crate) config6: Array<MapData, HostConfig6>,
    pub(crate) published_ports6: HashMap<MapData, PublishedPortKey6, PublishedPortTarget6>,
}

/// See [`Datapath::contents`].
pub struct DatapathContents {
    pub endpoint_ips: Vec<Ipv4Be>,
    pub endpoint6_ips: Vec<Ipv6Be>,
    pub networks: Vec<u32>,
    pub published_ports: Vec<PublishedPortKey>,
    pub published_ports6: Vec<PublishedPortKey6>,
    pub linked_interfaces: Vec<String>,
}

/// Sums of the per-CPU counters.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CounterSnapshot {
    pub counters: Vec<(&'static str, u64)>,
    pub drops: Vec<(&'static str, u64)>,
}

impl Datapath {
    /// Opens the datapath pinned under `pin_dir`, loading and pinning it first if it is not
    /// there yet, with a conntrack table of `ct_entries` (a pinned table keeps the size it was
    /// created with).
    pub fn open_or_load_with(pin_dir: &Path, ct_entries: u32) -> Result<Self> {
        if DATAPATH_OBJECT.is_empty() {
            bail!(
                "this bpfnet binary was built with BPFNET_SKIP_EBPF and has no eBPF programs; \
                 rebuild it without that variable (cargo xtask build)"
            );
        }
        ensure_on_bpffs(pin_dir)?;
        for sub in ["progs", "maps", "links"] {
            std::fs::create_dir_all(pin_dir.join(sub))
                .with_context(|| format!("creating pin directory {}", pin_dir.join(sub).display()))?;
        }
        if !Self::is_pinned(pin_dir) {
            load_and_pin(pin_dir, ct_entries)?;
        }
        Self::open_pinned(pin_dir)
    }

    /// Opens the datapath pinned under `pin_dir` (another handle on the same kernel objects:
    /// the metrics read through one of their own, without the host's lock).
    pub fn open_pinned(pin_dir: &Path) -> Result<Self> {
        let maps = pin_dir.join("maps");
        Ok(Self {
            pin_dir: pin_dir.to_owned(),
            from_endpoint: open_program(pin_dir, program_names::FROM_ENDPOINT)?,
            from_uplink: open_program(pin_dir, program_names::FROM_UPLINK)?,
            from_uplink_xdp: Xdp::from_pin(
                pin_dir.join("progs").join(program_names::FROM_UPLINK_XDP),
                aya_obj::programs::XdpAttachType::Interface,
            )
            .with_context(|| format!("opening pinned program {}", program_names::FROM_UPLINK_XDP))?,
            from_endpoint6: open_program(pin_dir, program_names::FROM_ENDPOINT6)?,
            from_uplink6: open_program(pin_dir, program_names::FROM_UPLINK6)?,
            from_uplink6_xdp: Xdp::from_pin(
                pin_dir.join("progs").join(program_names::FROM_UPLINK6_XDP),
                aya_obj::programs::XdpAttachType::Interface,
            )
            .with_context(|| format!("opening pinned program {}", program_names::FROM_UPLINK6_XDP))?,
            host_sockets: HOST_SOCKET_PROGRAMS
                .into_iter()
                .map(|(name, attach_type)| {
                    let pin = pin_dir.join("progs").join(name);
                    let program = CgroupSockAddr::from_pin(&pin, attach_type)
                        .with_context(|| format!("opening pinned program {}", pin.display()))?;
                    Ok((name, program))
                })
                .collect::<Result<_>>()?,
            endpoints: open_map(&maps, map_names::ENDPOINTS)?,
            ifaces: open_map(&maps, map_names::IFACES)?,
            networks: open_map(&maps, map_names::NETWORKS)?,
            drops: open_map(&maps, map_names::DROPS)?,
            counters: open_map(&maps, map_names::COUNTERS)?,
            config: open_map(&maps, map_names::CONFIG)?,
            ct_tables: [
                open_map(&maps, map_names::CT)?,
                open_map(&maps, map_names::CT_UNASSURED)?,
                open_map(&maps, map_names::CT_OVERFLOW)?,
            ],
            ct_fill: open_map(&maps, map_names::CT_FILL)?,
            ct6_tables: [
                open_map(&maps, map_names::CT6)?,
                open_map(&maps, map_names::CT6_UNASSURED)?,
                open_map(&maps, map_names::CT6_OVERFLOW)?,
            ],
            ct6_fill: open_map(&maps, map_names::CT6_FILL)?,
            ct_quota: open_map(&maps, map_names::CT_QUOTA)?,
            ct_stats: open_map(&maps, map_names::CT_STATS)?,
            ct_quota_hits: open_map(&maps, map_names::CT_QUOTA_HITS)?,
            published_ports: open_map(&maps, map_names::PUBLISHED_PORTS)?,
            endpoint_stats: open_map(&maps, map_names::ENDPOINT_STATS)?,
            endpoint_drops: open_map(&maps, map_names::ENDPOINT_DROPS)?,
            events_lost: open_map(&maps, map_names::EVENTS_LOST)?,
            frags: open_map(&maps, map_names::FRAGS)?,
            sock_rev_nat: open_map(&maps, map_names::SOCK_REV_NAT)?,
            endpoints6: open_map(&maps, map_names::ENDPOINTS6)?,
            ifaces6: open_map(&maps, map_names::IFACES6)?,
            config6: open_map(&maps, map_names::CONFIG6)?,
            published_ports6: open_map(&maps, map_names::PUBLISHED_PORTS6)?,
        })
    }

    pub fn config(&self) -> Result<HostConfig> {
        self.config.get(&0, 0).context("reading CONFIG")
    }

    pub fn set_config(&mut self, config: &HostConfig) -> Result<()> {
        self.config.set(0, config, 0).context("writing CONFIG")
    }

    pub fn config6(&self) -> Result<HostConfig6> {
        self.config6.get(&0, 0).context("reading CONFIG6")
    }

    pub fn set_config6(&mut self, config: &HostConfig6) -> Result<()> {
        self.config6.set(0, config, 0).context("writing CONFIG6")
    }

    pub fn upsert_network(&mut self, id: u32, network: &Network) -> Result<()> {
        self.networks.insert(id, network, 0).with_context(|| format!("writing network {id} to NETWORKS"))
    }

    pub fn remove_network(&mut self, id: u32) -> Result<()> {
        ignore_missing_key(self.networks.remove(&id)).with_context(|| format!("removing network {id} from NETWORKS"))
    }

    pub fn upsert_endpoint(&mut self, endpoint: &Endpoint) -> Result<()> {
        self.ifaces.insert(endpoint.host_ifindex, endpoint, 0).context("writing endpoint to IFACES")?;
        self.endpoints.insert(endpoint.ip, endpoint, 0).context("writing endpoint to ENDPOINTS")
    }

    /// Removes an endpoint's entries, whichever interface it was last attached to. Idempotent.
    pub fn remove_endpoint(&mut self, ip: Ipv4Be) -> Result<()> {
        let stale: Vec<u32> = self
            .ifaces
            .iter()
            .filter_map(|entry| entry.ok())
            .filter(|(_, endpoint)| endpoint.ip == ip)
            .map(|(ifindex, _)| ifindex)
            .collect();
        for ifindex in stale {
            ignore_missing_key(self.ifaces.remove(&ifindex)).context("removing endpoint from IFACES")?;
        }
        ignore_missing_key(self.endpoints.remove(&ip)).context("removing endpoint from ENDPOINTS")
    }

    /// Writes a container's IPv6 side (after its IPv4 side: a packet finds its interface's
    /// IPv6 entry only once the container is fully there).
    pub fn upsert_endpoint6(&mut self, endpoint: &Endpoint6) -> Result<()> {
        self.ifaces6.insert(endpoint.host_ifindex, endpoint, 0).context("writing endpoint to IFACES6")?;
        self.endpoints6.insert(endpoint.ip, endpoint, 0).context("writing endpoint to ENDPOINTS6")
    }

    /// Removes a container's IPv6 side, whichever interface it was last attached to.
    /// Idempotent.
    pub fn remove_endpoint6(&mut self, ip: Ipv6Be) -> Result<()> {
        let stale: Vec<u32> = self
            .ifaces6
            .iter()
            .filter_map(|entry| entry.ok())
            .filter(|(_, endpoint)| endpoint.ip == ip)
            .map(|(ifindex, _)| ifindex)
            .collect();
        for ifindex in stale {
            ignore_missing_key(self.ifaces6.remove(&ifindex)).context("removing endpoint from IFACES6")?;
        }
        ignore_missing_key(self.endpoints6.remove(&ip)).context("removing endpoint from ENDPOINTS6")
    }

    /// What the maps hold, for reconciliation with the state: endpoint addresses (of both
    /// families), network ids, published ports (of both), and the interfaces with a pinned
    /// endpoint link.
    pub fn contents(&self) -> Result<DatapathContents> {
        Ok(DatapathContents {
            endpoint_ips: self.endpoints.keys().collect::<Result<_, _>>().context("listing ENDPOINTS")?,
            endpoint6_ips: self.endpoints6.keys().collect::<Result<_, _>>().context("listing ENDPOINTS6")?,
            networks: self.networks.keys().collect::<Result<_, _>>().context("listing NETWORKS")?,
            published_ports: self.published_ports.keys().collect::<Result<_, _>>().context("listing SERVICES")?,
            published_ports6: self.published_ports6.keys().collect::<Result<_, _>>().context("listing PUBLISHED6")?,
            linked_interfaces: std::fs::read_dir(self.pin_dir.join("links"))?
                .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
                .filter(|name: &Result<String>| {
                    name.as_ref().map_or(true, |n| matches!(LinkPin::parse(n), LinkPin::Endpoint(_)))
                })
                .collect::<Result<_>>()?,
        })
    }

    /// Traffic of an endpoint, summed over the CPUs.
    pub fn endpoint_stats(&self, slot: u32) -> Result<EndpointStats> {
        let per_cpu = self.endpoint_stats.get(&slot, 0).context("reading ENDPOINT_STATS")?;
        Ok(per_cpu.iter().fold(EndpointStats::default(), |sum, s| EndpointStats {
            sent_packets: sum.sent_packets + s.sent_packets,
            sent_bytes: sum.sent_bytes + s.sent_bytes,
            received_packets: sum.received_packets + s.received_packets,
            received_bytes: sum.received_bytes + s.received_bytes,
        }))
    }

    /// Packets the endpoint sent that were dropped, summed over the CPUs.
    pub fn endpoint_drops(&self, slot: u32) -> Result<u64> {
        Ok(self.endpoint_drops.get(&slot, 0).context("reading ENDPOINT_DROPS")?.iter().sum())
    }

    /// Events the datapath could not write, by cause, summed over the CPUs.
    pub fn events_lost(&self) -> Result<Vec<(EventLoss, u64)>> {
        EventLoss::ALL
            .iter()
            .map(|cause| {
                Ok((*cause, self.events_lost.get(&(*cause as u32), 0).context("reading EVENTS_LOST")?.iter().sum()))
            })
            .collect()
    }

    /// Entries in use and size of the maps that fill with traffic rather than with
    /// containers: fragments in flight and host sockets talking to published ports.
    pub fn traffic_map_fill(&self) -> Result<[(&'static str, u64, u32); 2]> {
        Ok([
            (map_names::FRAGS, self.frags.keys().count() as u64, self.map_capacity(map_names::FRAGS)?),
            (
                map_names::SOCK_REV_NAT,
                self.sock_rev_nat.keys().count() as u64,
                self.map_capacity(map_names::SOCK_REV_NAT)?,
            ),
        ])
    }

    /// Zeroes an endpoint's counters (its slot may have served a removed container).
    pub fn reset_endpoint_stats(&mut self, slot: u32) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
        let zeros = aya::maps::PerCpuValues::try_from(vec![EndpointStats::default(); cpus])?;
        self.endpoint_stats.set(slot, zeros, 0).context("resetting ENDPOINT_STATS")?;
        let zeros = aya::maps::PerCpuValues::try_from(vec![0u64; cpus])?;
        self.ct_quota_hits.set(slot, zeros, 0).context("resetting CT_QUOTA_HITS")?;
        let zeros = aya::maps::PerCpuValues::try_from(vec![0u64; cpus])?;
        self.endpoint_drops.set(slot, zeros, 0).context("resetting ENDPOINT_DROPS")
    }

    /// Publishes a port: one map update, whatever the number already published.
    pub fn publish(&mut self, key: &PublishedPortKey, target: &PublishedPortTarget) -> Result<()> {
        self.published_ports.insert(key, target, 0).context("writing a published port to SERVICES")
    }

    /// Unpublishes a port; new flows to it are no longer translated. Idempotent.
    pub fn unpublish(&mut self, key: &PublishedPortKey) -> Result<()> {
        ignore_missing_key(self.published_ports.remove(key)).context("removing a published port from SERVICES")
    }

    /// Publishes a port on IPv6.
    pub fn publish6(&mut self, key: &PublishedPortKey6, target: &PublishedPortTarget6) -> Result<()> {
        self.published_ports6.insert(key, target, 0).context("writing a published port to PUBLISHED6")
    }

    /// Unpublishes a port on IPv6. Idempotent.
    pub fn unpublish6(&mut self, key: &PublishedPortKey6) -> Result<()> {
        ignore_missing_key(self.published_ports6.remove(key)).context("removing a published port from PUBLISHED6")
    }

    pub fn snapshot(&self) -> Result<CounterSnapshot> {
        let sum = |array: &PerCpuArray<MapData, u64>, index: u32| -> Result<u64> {
            Ok(array.get(&index, 0).context("reading a per-CPU counter")?.iter().sum())
        };
        Ok(CounterSnapshot {
            counters: Counter::ALL
                .iter()
                .map(|c| Ok((c.name(), sum(&self.counters, *c as u32)?)))
                .collect::<Result<_>>()?,
            drops: DropReason::ALL
                .iter()
                .map(|r| Ok((r.name(), sum(&self.drops, *r as u32)?)))
                .collect::<Result<_>>()?,
        })
    }

    /// The kernel ids of the loaded programs, by name.
    pub fn program_ids(&self) -> Result<Vec<(&'static str, u32)>> {
        let mut ids = vec![
            (program_names::FROM_ENDPOINT, self.from_endpoint.info()?.id()),
            (program_names::FROM_UPLINK, self.from_uplink.info()?.id()),
            (program_names::FROM_UPLINK_XDP, self.from_uplink_xdp.info()?.id()),
            (program_names::FROM_ENDPOINT6, self.from_endpoint6.info()?.id()),
            (program_names::FROM_UPLINK6, self.from_uplink6.info()?.id()),
            (program_names::FROM_UPLINK6_XDP, self.from_uplink6_xdp.info()?.id()),
        ];
        for (name, program) in &self.host_sockets {
            ids.push((*name, program.info()?.id()));
        }
        Ok(ids)
    }
}

impl Datapath {
    /// The programs the tail-call slots hold now (`program_names::TAIL_CALLED`), by the name of
    /// the program each slot is for: the id of the program in it, `None` for an empty slot.
    pub fn tail_call_targets(pin_dir: &Path) -> Result<Vec<(&'static str, Option<u32>)>> {
        program_names::TAIL_CALLED
            .into_iter()
            .map(|(name, array, slot)| {
                let path = pin_dir.join("maps").join(array);
                let map = MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))?;
                let id = bpf::program_array_slot(map.fd().as_fd(), slot)
                    .with_context(|| format!("reading slot {slot} of {}", path.display()))?;
                Ok((name, id))
            })
            .collect()
    }

    /// Whether a datapath is pinned under `pin_dir`.
    pub fn is_pinned(pin_dir: &Path) -> bool {
        pin_dir.join("progs").join(program_names::FROM_ENDPOINT).exists()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A datapath pinned by an older bpfnet, whose DROPS had a slot less: an upgrade moves its
    /// counts to a DROPS of this version's size, and every program to the new map.
    #[test]
    fn an_upgrade_grows_a_counter_array_and_keeps_its_counts() {
        if !crate::devkit::netns::is_root() {
            return;
        }
        let bed = crate::devkit::testbed::Testbed::create("bnup", 4096).unwrap();
        let path = bed.pin_dir().join("maps").join(map_names::DROPS);
        let old_slots = DropReason::COUNT - 1;
        let mut old: PerCpuArray<MapData, u64> = PerCpuArray::create(old_slots, 0).unwrap();
        let cpus = aya::util::nr_cpus().unwrap();
        for slot in 0..old_slots {
            let values: Vec<u64> = (0..cpus).map(|cpu| u64::from(slot) * 100 + cpu as u64).collect();
            old.set(slot, PerCpuValues::try_from(values).unwrap(), 0).unwrap();
        }
        remove_pin(&path).unwrap();
        old.pin(&path).unwrap();
        let replaced = Datapath::replace_programs(bed.pin_dir(), false).unwrap();
        assert_eq!(replaced.len(), PROGRAMS.len(), "every program moves to the new map");
        let new = MapData::from_pin(&path).unwrap();
        assert_eq!(new.info().unwrap().max_entries(), DropReason::COUNT);
        let new: PerCpuArray<MapData, u64> = PerCpuArray::try_from(Map::PerCpuArray(new)).unwrap();
        for slot in 0..old_slots {
            let want: Vec<u64> = (0..cpus).map(|cpu| u64::from(slot) * 100 + cpu as u64).collect();
            assert_eq!(new.get(&slot, 0).unwrap().to_vec(), want, "slot {slot}");
        }
        assert_eq!(new.get(&old_slots, 0).unwrap().iter().sum::<u64>(), 0);
        // Once grown, nothing more to move.
        assert!(Datapath::replace_programs(bed.pin_dir(), false).unwrap().is_empty());
    }

    /// Pins `N` bytes of `config` (an older, shorter layout) as CONFIG, in place of the one
    /// the datapath under `pin_dir` was loaded with.
    fn pin_old_config<const N: usize>(pin_dir: &Path, config: &HostConfig) {
        // SAFETY: `HostConfig` is plain data of at least N bytes; read as bytes only.
        let bytes: [u8; N] = unsafe { std::ptr::read_unaligned(config as *const HostConfig as *const [u8; N]) };
        let mut old: Array<MapData, [u8; N]> = Array::create(1, 0).unwrap();
        old.set(0, bytes, 0).unwrap();
        let path = pin_dir.join("maps").join(map_names::CONFIG);
        remove_pin(&path).unwrap();
        old.pin(&path).unwrap();
    }

    /// A datapath pinned by an older bpfnet, whose CONFIG was shorter (each earlier layout): an
    /// upgrade moves its settings to a CONFIG of this version's size, the new fields zero (no
    /// cluster CIDR: masquerade as before), and every program to the new map.
    #[test]
    fn an_upgrade_grows_config_and_keeps_its_settings() {
        if !crate::devkit::netns::is_root() {
            return;
        }
        let settings = HostConfig {
            uplink_ifindex: 7,
            uplink_ip: datapath_common::ipv4_be([192, 0, 2, 1]),
            nat_port_min: 30000,
            nat_port_max: 30999,
            ct_limit: 1234,
            flags: 1,
            ct_unassured_quota: 55,
            host_netns_cookie: 0x1122_3344_5566_7788,
            cluster_net: datapath_common::ipv4_be([10, 128, 0, 0]),
            cluster_mask: datapath_common::ipv4_be([255, 252, 0, 0]),
        };
        let before_quota = std::mem::offset_of!(HostConfig, ct_unassured_quota);
        let before_cluster = std::mem::offset_of!(HostConfig, cluster_net);
        /// Pins the old layout's bytes of the settings.
        type PinOld = fn(&Path, &HostConfig);
        let cases: [(usize, PinOld, HostConfig); 2] = [
            (
                before_quota,
                pin_old_config::<{ std::mem::offset_of!(HostConfig, ct_unassured_quota) }>,
                HostConfig { ct_unassured_quota: 0, host_netns_cookie: 0, cluster_net: 0, cluster_mask: 0, ..settings },
            ),
            (
                before_cluster,
                pin_old_config::<{ std::mem::offset_of!(HostConfig, cluster_net) }>,
                HostConfig { cluster_net: 0, cluster_mask: 0, ..settings },
            ),
        ];
        for (size, pin_old, want) in cases {
            let bed = crate::devkit::testbed::Testbed::create("bnup", 4096).unwrap();
            pin_old(bed.pin_dir(), &settings);
            let path = bed.pin_dir().join("maps").join(map_names::CONFIG);
            assert_eq!(MapData::from_pin(&path).unwrap().info().unwrap().value_size() as usize, size);
            let replaced = Datapath::replace_programs(bed.pin_dir(), false).unwrap();
            assert_eq!(replaced.len(), PROGRAMS.len(), "{size} bytes: every program moves to the new map");
            let new = MapData::from_pin(&path).unwrap();
            assert_eq!(new.info().unwrap().value_size() as usize, std::mem::size_of::<HostConfig>());
            let new: Array<MapData, HostConfig> = Array::try_from(Map::Array(new)).unwrap();
            assert_eq!(new.get(&0, 0).unwrap(), want, "{size} bytes: the settings move, the new fields are zero");
            assert!(!want.in_cluster(datapath_common::ipv4_be([10, 128, 0, 5])), "no cluster CIDR after the move");
            // Once grown, nothing more to move.
            assert!(Datapath::replace_programs(bed.pin_dir(), false).unwrap().is_empty());
        }
        // A size no version had is refused, naming the map and the way out.
        let bed = crate::devkit::testbed::Testbed::create("bnup", 4096).unwrap();
        pin_old_config::<12>(bed.pin_dir(), &settings);
        let err = format!("{:#}", Datapath::replace_programs(bed.pin_dir(), false).unwrap_err());
        assert!(err.contains("12-byte values") && err.contains("bpfnet down"), "{err}");
    }

    /// The ids of the programs pinned as the tail-call targets.
    fn pinned_targets(pin_dir: &Path) -> Vec<(&'static str, Option<u32>)> {
        program_names::TAIL_CALLED
            .into_iter()
            .map(|(name, _, _)| (name, Some(ProgramInfo::from_pin(pin_dir.join("progs").join(name)).unwrap().id())))
            .collect()
    }

    /// The tail-call slots hold the pinned programs after a load, and the new ones after an
    /// upgrade; an older datapath, without the arrays and the IPv6 programs, gets both.
    #[test]
    fn an_upgrade_points_the_tail_calls_at_the_new_programs() {
        if !crate::devkit::netns::is_root() {
            return;
        }
        let bed = crate::devkit::testbed::Testbed::create("bnup", 4096).unwrap();
        let pin_dir = bed.pin_dir();
        let loaded = Datapath::tail_call_targets(pin_dir).unwrap();
        assert_eq!(loaded, pinned_targets(pin_dir), "after the first load");
        let replaced = Datapath::replace_programs(pin_dir, true).unwrap();
        assert_eq!(replaced.len(), PROGRAMS.len());
        let upgraded = Datapath::tail_call_targets(pin_dir).unwrap();
        assert_eq!(upgraded, pinned_targets(pin_dir), "after the upgrade");
        for ((name, old), (_, new)) in loaded.iter().zip(&upgraded) {
            assert_ne!(old, new, "{name}: the slot still holds the old program");
        }
        // A datapath an older bpfnet pinned: no program arrays, no IPv6 programs.
        for (name, array, _) in program_names::TAIL_CALLED {
            remove_pin(&pin_dir.join("progs").join(name)).unwrap();
            remove_pin(&pin_dir.join("maps").join(array)).unwrap();
        }
        Datapath::replace_programs(pin_dir, true).unwrap();
        assert_eq!(Datapath::tail_call_targets(pin_dir).unwrap(), pinned_targets(pin_dir), "after adopting it");
    }

    #[test]
    fn link_pins_are_told_apart_by_name() {
        assert_eq!(LinkPin::parse("bn0a0b0c0d"), LinkPin::Endpoint("bn0a0b0c0d"));
        assert_eq!(LinkPin::parse("uplink-eth0"), LinkPin::Uplink(UplinkMode::Tc, "eth0"));
        assert_eq!(LinkPin::parse("uplinkxdp-eth0"), LinkPin::Uplink(UplinkMode::Xdp, "eth0"));
        // An uplink whose name looks like a host cgroup pin is still the uplink.
        assert_eq!(LinkPin::parse("uplink-hostcg-1-x"), LinkPin::Uplink(UplinkMode::Tc, "hostcg-1-x"));
        for (program, _) in HOST_SOCKET_PROGRAMS {
            let name = LinkPin::host_cgroup_name(4242, program);
            assert!(!name.contains('.') && !name.contains('/'), "{name}: bpffs refuses it");
            let pin = LinkPin::parse(&name);
            assert_eq!(pin, LinkPin::HostCgroup { cgroup_id: 4242, program });
            assert_eq!(pin.program(), program);
        }
        assert_eq!(LinkPin::parse("bn0a0b0c0d").program(), program_names::FROM_ENDPOINT);
        assert_eq!(LinkPin::parse("uplinkxdp-eth0").program(), program_names::FROM_UPLINK_XDP);
    }

    #[test]
    fn every_program_name_fits_the_kernel() {
        for name in PROGRAMS {
            assert!(name.len() <= 15, "{name}: the kernel keeps 15 bytes of a program name");
        }
    }
}
