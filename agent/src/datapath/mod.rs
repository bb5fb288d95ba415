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
use std::{
    io,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use aya::{
    maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuValues},
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
    map_names, program_names, Counter, CtEntry, CtKey, CtQuotaKey, DropReason, Endpoint, EndpointStats, HostConfig,
    Ipv4Be, Network, PublishedPortKey, PublishedPortTarget,
};

use crate::{sys::bpf, sys::cgroup::HostCgroup};

/// The object built by build.rs from datapath-ebpf.
pub(crate) static DATAPATH_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/datapath.bpf.o"));

/// bpffs magic number (statfs f_type), from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// aya-log levels (aya-log-common): records above this level are compiled out by the verifier's
/// dead-code elimination, so debug logging costs nothing on the per-packet path when off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatapathLogLevel {
    Off = 0,
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
    Trace = 5,
}

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

/// The socket hooks of host processes (`--host-cgroup`), each with its cgroup attach point.
/// AF_INET6 sockets have no sendmsg6 hook: their datagrams to IPv4-mapped addresses go
/// through sendmsg4, and the kernel refuses the one rewrite it could make (see the datapath's
/// `sock_connect6`).
pub const HOST_SOCKET_PROGRAMS: [(&str, CgroupSockAddrAttachType); 7] = [
    (program_names::SOCK_CONNECT4, CgroupSockAddrAttachType::Connect4),
    (program_names::SOCK_SENDMSG4, CgroupSockAddrAttachType::UDPSendMsg4),
    (program_names::SOCK_RECVMSG4, CgroupSockAddrAttachType::UDPRecvMsg4),
    (program_names::SOCK_GETPEER4, CgroupSockAddrAttachType::GetPeerName4),
    (program_names::SOCK_CONNECT6, CgroupSockAddrAttachType::Connect6),
    (program_names::SOCK_RECVMSG6, CgroupSockAddrAttachType::UDPRecvMsg6),
    (program_names::SOCK_GETPEER6, CgroupSockAddrAttachType::GetPeerName6),
];

/// The hook's name, as `status` shows it.
pub fn hook_name(attach_type: CgroupSockAddrAttachType) -> &'static str {
    match attach_type {
        CgroupSockAddrAttachType::Connect4 => "connect4",
        CgroupSockAddrAttachType::UDPSendMsg4 => "sendmsg4",
        CgroupSockAddrAttachType::UDPRecvMsg4 => "recvmsg4",
        CgroupSockAddrAttachType::GetPeerName4 => "getpeername4",
        CgroupSockAddrAttachType::Connect6 => "connect6",
        CgroupSockAddrAttachType::UDPRecvMsg6 => "recvmsg6",
        CgroupSockAddrAttachType::GetPeerName6 => "getpeername6",
        _ => "other",
    }
}

/// Prefix of the host cgroup's link pins (bpffs allows no `.`; host veths are `bn...`).
const HOST_CGROUP_PIN_PREFIX: &str = "hostcg-";

/// What a pin under `links/` is, by its name.
#[derive(Debug, PartialEq, Eq)]
enum LinkPin<'a> {
    /// A container's host-side veth (its interface name).
    Endpoint(&'a str),
    Uplink(UplinkMode, &'a str),
    /// A socket hook on the host cgroup with this cgroup id.
    HostCgroup {
        cgroup_id: u64,
        program: &'a str,
    },
}

impl<'a> LinkPin<'a> {
    fn parse(name: &'a str) -> Self {
        if let Some((mode, ifname)) = UplinkMode::of_pin(name) {
            return LinkPin::Uplink(mode, ifname);
        }
        let host_cgroup = name.strip_prefix(HOST_CGROUP_PIN_PREFIX).and_then(|rest| rest.split_once('-'));
        if let Some((id, program)) = host_cgroup {
            if let Ok(cgroup_id) = id.parse() {
                return LinkPin::HostCgroup { cgroup_id, program };
            }
        }
        LinkPin::Endpoint(name)
    }

    fn host_cgroup_name(cgroup_id: u64, program: &str) -> String {
        format!("{HOST_CGROUP_PIN_PREFIX}{cgroup_id}-{program}")
    }

    /// The program the link runs.
    fn program(&self) -> &str {
        match self {
            LinkPin::Endpoint(_) => program_names::FROM_ENDPOINT,
            LinkPin::Uplink(mode, _) => mode.program(),
            LinkPin::HostCgroup { program, .. } => program,
        }
    }
}

/// One socket hook's pinned link on a host cgroup.
#[derive(Debug)]
pub struct HostCgroupLink {
    pub cgroup_id: u64,
    pub program: String,
}

pub struct Datapath {
    pin_dir: PathBuf,
    from_endpoint: SchedClassifier,
    from_uplink: SchedClassifier,
    from_uplink_xdp: Xdp,
    /// HOST_SOCKET_PROGRAMS, in that order.
    host_sockets: Vec<(&'static str, CgroupSockAddr)>,
    endpoints: HashMap<MapData, Ipv4Be, Endpoint>,
    ifaces: HashMap<MapData, u32, Endpoint>,
    networks: HashMap<MapData, u32, Network>,
    drops: PerCpuArray<MapData, u64>,
    counters: PerCpuArray<MapData, u64>,
    config: Array<MapData, HostConfig>,
    /// Assured flows, then flows not assured yet, then those over their quota (see
    /// `conntrack`), in the order `CtTable::ALL` names them.
    pub(crate) ct_tables: [HashMap<MapData, CtKey, CtEntry>; 3],
    pub(crate) ct_fill: Array<MapData, u64>,
    pub(crate) ct_quota: HashMap<MapData, CtQuotaKey, u64>,
    pub(crate) ct_stats: Array<MapData, u64>,
    ct_quota_hits: PerCpuArray<MapData, u64>,
    published_ports: HashMap<MapData, PublishedPortKey, PublishedPortTarget>,
    endpoint_stats: PerCpuArray<MapData, EndpointStats>,
}

/// See [`Datapath::contents`].
pub struct DatapathContents {
    pub endpoint_ips: Vec<Ipv4Be>,
    pub networks: Vec<u32>,
    pub published_ports: Vec<PublishedPortKey>,
    pub linked_interfaces: Vec<String>,
}

/// Programs in the object, all pinned under `progs/`.
const PROGRAMS: [&str; 10] = [
    program_names::FROM_ENDPOINT,
    program_names::FROM_UPLINK,
    program_names::FROM_UPLINK_XDP,
    program_names::SOCK_CONNECT4,
    program_names::SOCK_SENDMSG4,
    program_names::SOCK_RECVMSG4,
    program_names::SOCK_GETPEER4,
    program_names::SOCK_CONNECT6,
    program_names::SOCK_RECVMSG6,
    program_names::SOCK_GETPEER6,
];

/// Conntrack entries (two per flow) of the assured table when nothing else is said.
pub const DEFAULT_CT_ENTRIES: u32 = 262_144;

/// The three conntrack tables (see datapath-ebpf/src/conntrack.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtTable {
    /// Assured flows, never evicted (`--ct-size` entries, kept below the fill limit).
    Assured,
    /// Flows not assured yet; when full, a new flow evicts the oldest (early drop).
    Unassured,
    /// New flows of a container or published port over its share of `Unassured`.
    Overflow,
}

impl From<CtTable> for crate::api::ConntrackTable {
    fn from(table: CtTable) -> Self {
        match table {
            CtTable::Assured => Self::Assured,
            CtTable::Unassured => Self::Unassured,
            CtTable::Overflow => Self::Overflow,
        }
    }
}

impl From<crate::api::ConntrackTable> for CtTable {
    fn from(table: crate::api::ConntrackTable) -> Self {
        match table {
            crate::api::ConntrackTable::Assured => Self::Assured,
            crate::api::ConntrackTable::Unassured => Self::Unassured,
            crate::api::ConntrackTable::Overflow => Self::Overflow,
        }
    }
}

impl CtTable {
    pub const ALL: [CtTable; 3] = [CtTable::Assured, CtTable::Unassured, CtTable::Overflow];

    pub fn map_name(self) -> &'static str {
        match self {
            CtTable::Assured => map_names::CT,
            CtTable::Unassured => map_names::CT_UNASSURED,
            CtTable::Overflow => map_names::CT_OVERFLOW,
        }
    }

    /// The table's size for an assured table of `ct_entries`: the unassured table is half as
    /// large and the overflow an eighth (each at least 16,384 entries, so that a handshake
    /// outlives a flood's churn through them: at 300,000 new entries a second, 55 ms).
    pub fn entries_for(self, ct_entries: u32) -> u32 {
        const SMALLEST_POOL: u32 = 16_384;
        match self {
            CtTable::Assured => ct_entries,
            CtTable::Unassured => (ct_entries / 2).max(SMALLEST_POOL),
            CtTable::Overflow => (ct_entries / 8).max(SMALLEST_POOL),
        }
    }
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
    pub fn open_or_load_with(pin_dir: &Path, log_level: DatapathLogLevel, ct_entries: u32) -> Result<Self> {
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
            load_and_pin(pin_dir, log_level, ct_entries)?;
        }
        Self::open_pinned(pin_dir)
    }

    /// Replaces the pinned programs with this binary's, in every link at once (BPF link
    /// update: no moment without a program), when their code differs (the kernel's tag) or
    /// when `always` (e.g. to apply a new --datapath-log). Maps, conntrack and counters stay.
    /// Returns the names of the programs replaced.
    pub fn replace_programs(pin_dir: &Path, log_level: DatapathLogLevel, always: bool) -> Result<Vec<&'static str>> {
        // Before the loader reuses the pinned maps: CONFIG in an older layout makes way for
        // this version's, and is put back if anything fails before the first link update.
        let outgrown = OutgrownConfig::take(pin_dir)?;
        let outgrown_counters = match OutgrownCounters::take_all(pin_dir) {
            Ok(taken) => taken,
            Err(e) => {
                if let Some(old) = &outgrown {
                    old.restore_logged();
                }
                return Err(e);
            }
        };
        let loaded = load_object(pin_dir, log_level, DEFAULT_CT_ENTRIES).and_then(|mut ebpf| {
            if let Some(old) = &outgrown {
                old.copy_into(&mut ebpf)?;
            }
            for old in &outgrown_counters {
                old.copy_into(&mut ebpf)?;
            }
            Ok(ebpf)
        });
        let mut ebpf = match loaded {
            Ok(ebpf) => ebpf,
            Err(e) => {
                if let Some(old) = &outgrown {
                    old.restore_logged();
                }
                for old in &outgrown_counters {
                    old.restore_logged();
                }
                return Err(e);
            }
        };
        if outgrown.is_some() {
            tracing::info!("CONFIG had an older layout: moved its settings to a new map, every program is replaced");
        }
        for old in &outgrown_counters {
            tracing::info!(
                "{} had {} slots: moved its counts to a new map of {}, every program is replaced",
                old.name,
                old.values.len(),
                old.slots
            );
        }
        // The old programs use the old maps: all of them move to the new ones.
        let always = always || outgrown.is_some() || !outgrown_counters.is_empty();
        let mut replaced = Vec::new();
        for name in PROGRAMS {
            let new = ebpf.program_mut(name).with_context(|| format!("no {name} in the object"))?;
            let pin = pin_dir.join("progs").join(name);
            // A program that an older bpfnet did not have is simply pinned.
            if pin.exists() {
                let old =
                    ProgramInfo::from_pin(&pin).with_context(|| format!("opening pinned program {}", pin.display()))?;
                if !always && new.info()?.tag() == old.tag() {
                    continue;
                }
            }
            for link_pin in link_pins_of(pin_dir, name)? {
                // The link (and its pin) stays; only the program behind it changes, atomically.
                replace_behind_link(new, &link_pin)
                    .with_context(|| format!("replacing {name} behind {}", link_pin.display()))?;
            }
            remove_pin(&pin)?;
            new.pin(&pin).with_context(|| format!("pinning the new {name} at {}", pin.display()))?;
            replaced.push(name);
        }
        Ok(replaced)
    }

    fn open_pinned(pin_dir: &Path) -> Result<Self> {
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
            ct_quota: open_map(&maps, map_names::CT_QUOTA)?,
            ct_stats: open_map(&maps, map_names::CT_STATS)?,
            ct_quota_hits: open_map(&maps, map_names::CT_QUOTA_HITS)?,
            published_ports: open_map(&maps, map_names::PUBLISHED_PORTS)?,
            endpoint_stats: open_map(&maps, map_names::ENDPOINT_STATS)?,
        })
    }

    fn link_pin(&self, ifname: &str) -> PathBuf {
        self.pin_dir.join("links").join(ifname)
    }

    /// Attaches `from_endpoint` to the tcx ingress of a host-side veth and pins the link.
    /// Idempotent: an existing pinned link for the interface is kept.
    pub fn attach_endpoint(&mut self, ifname: &str) -> Result<()> {
        let pin = self.link_pin(ifname);
        attach_pinned(&mut self.from_endpoint, program_names::FROM_ENDPOINT, ifname, &pin)
    }

    /// Removes the pinned link of an interface, which detaches the program. Idempotent.
    pub fn detach_endpoint(&self, ifname: &str) -> Result<()> {
        remove_pin(&self.link_pin(ifname))
    }

    fn uplink_pin(&self, ifname: &str, mode: UplinkMode) -> PathBuf {
        self.pin_dir.join("links").join(format!("{}{ifname}", mode.pin_prefix()))
    }

    /// Attaches the uplink program of `mode` to the uplink (idempotent), then detaches
    /// whatever was attached before in another mode or to an interface that was the uplink
    /// before: in that order, so that a mode change leaves no moment without a program.
    pub fn attach_uplink(&mut self, ifname: &str, mode: UplinkMode) -> Result<()> {
        let pin = self.uplink_pin(ifname, mode);
        match mode {
            UplinkMode::Tc => attach_pinned(&mut self.from_uplink, program_names::FROM_UPLINK, ifname, &pin)?,
            UplinkMode::Xdp => attach_xdp_pinned(&mut self.from_uplink_xdp, ifname, &pin)?,
        }
        for (old, old_mode) in self.uplinks()? {
            if old != ifname || old_mode != mode {
                remove_pin(&self.uplink_pin(&old, old_mode))?;
            }
        }
        Ok(())
    }

    /// Interfaces that carry an uplink program, and in which mode (at most one, unless a
    /// change was interrupted).
    pub fn uplinks(&self) -> Result<Vec<(String, UplinkMode)>> {
        let dir = self.pin_dir.join("links");
        let mut uplinks = Vec::new();
        for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let LinkPin::Uplink(mode, ifname) = LinkPin::parse(&name) {
                uplinks.push((ifname.to_owned(), mode));
            }
        }
        Ok(uplinks)
    }

    /// The id of the program behind the uplink's pinned link, as the kernel reports it; none
    /// when that link is not on the interface now called `ifname`.
    pub fn uplink_link_program_id(&self, ifname: &str, mode: UplinkMode) -> Result<Option<u32>> {
        pinned_link_program_on(&self.uplink_pin(ifname, mode), ifname)
    }

    /// Attaches the socket hooks to the host cgroup with pinned links (idempotent: existing
    /// pins are kept), then detaches them from any other cgroup they were on (the option
    /// changed). Either every hook is on `cgroup`, or, on error, none that this call attached.
    pub fn attach_host_cgroup(&mut self, cgroup: &HostCgroup) -> Result<()> {
        let links = self.pin_dir.join("links");
        let mut made = Vec::new();
        let mut attach_all = || -> Result<()> {
            for (name, program) in &mut self.host_sockets {
                let pin = links.join(LinkPin::host_cgroup_name(cgroup.id, name));
                if pin.exists() {
                    continue;
                }
                // A link on a cgroup always lets other programs run too (BPF_F_ALLOW_MULTI is
                // implied; giving it explicitly is EINVAL), so bpfnet coexists with others'.
                let link_id = program
                    .attach(cgroup.fd(), CgroupAttachMode::Single)
                    .with_context(|| format!("attaching {name} to the cgroup {}", cgroup.path.display()))?;
                let link: FdLink =
                    program.take_link(link_id)?.try_into().context("a cgroup attachment should be an fd link")?;
                link.pin(&pin).with_context(|| format!("pinning the link of {name} at {}", pin.display()))?;
                made.push(pin);
            }
            Ok(())
        };
        if let Err(e) = attach_all() {
            for pin in &made {
                if let Err(cleanup) = remove_pin(pin) {
                    tracing::error!("detaching a socket hook after a failed attach: {cleanup:#}");
                }
            }
            return Err(e);
        }
        for link in self.host_cgroup_links()? {
            if link.cgroup_id != cgroup.id {
                remove_pin(&links.join(LinkPin::host_cgroup_name(link.cgroup_id, &link.program)))?;
            }
        }
        Ok(())
    }

    /// Detaches the socket hooks from whatever cgroup they are on. Idempotent.
    pub fn detach_host_cgroup(&self) -> Result<()> {
        for link in self.host_cgroup_links()? {
            remove_pin(&self.pin_dir.join("links").join(LinkPin::host_cgroup_name(link.cgroup_id, &link.program)))?;
        }
        Ok(())
    }

    /// The socket hooks' pinned links (normally one per hook of HOST_SOCKET_PROGRAMS on one
    /// cgroup, or none).
    pub fn host_cgroup_links(&self) -> Result<Vec<HostCgroupLink>> {
        let dir = self.pin_dir.join("links");
        let mut links = Vec::new();
        for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let LinkPin::HostCgroup { cgroup_id, program } = LinkPin::parse(&name) {
                links.push(HostCgroupLink { cgroup_id, program: program.to_owned() });
            }
        }
        Ok(links)
    }

    pub fn config(&self) -> Result<HostConfig> {
        self.config.get(&0, 0).context("reading CONFIG")
    }

    pub fn set_config(&mut self, config: &HostConfig) -> Result<()> {
        self.config.set(0, config, 0).context("writing CONFIG")
    }

    /// How many entries a conntrack table can hold.
    pub fn ct_capacity(&self, table: CtTable) -> Result<u32> {
        let info = MapData::from_pin(self.pin_dir.join("maps").join(table.map_name()))?.info()?;
        Ok(info.max_entries())
    }

    /// New flows of the container in `slot` (its own, or to its published ports) that were
    /// over their share of the unassured table, summed over the CPUs.
    pub fn ct_quota_hits(&self, slot: u32) -> Result<u64> {
        Ok(self.ct_quota_hits.get(&slot, 0).context("reading CT_QUOTA_HITS")?.iter().sum())
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

    /// What the maps hold, for reconciliation with the state: endpoint addresses, network
    /// ids, published ports, and the interfaces with a pinned endpoint link.
    pub fn contents(&self) -> Result<DatapathContents> {
        Ok(DatapathContents {
            endpoint_ips: self.endpoints.keys().collect::<Result<_, _>>().context("listing ENDPOINTS")?,
            networks: self.networks.keys().collect::<Result<_, _>>().context("listing NETWORKS")?,
            published_ports: self.published_ports.keys().collect::<Result<_, _>>().context("listing SERVICES")?,
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

    /// Zeroes an endpoint's counters (its slot may have served a removed container).
    pub fn reset_endpoint_stats(&mut self, slot: u32) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
        let zeros = aya::maps::PerCpuValues::try_from(vec![EndpointStats::default(); cpus])?;
        self.endpoint_stats.set(slot, zeros, 0).context("resetting ENDPOINT_STATS")?;
        let zeros = aya::maps::PerCpuValues::try_from(vec![0u64; cpus])?;
        self.ct_quota_hits.set(slot, zeros, 0).context("resetting CT_QUOTA_HITS")
    }

    /// Publishes a port: one map update, whatever the number already published.
    pub fn publish(&mut self, key: &PublishedPortKey, target: &PublishedPortTarget) -> Result<()> {
        self.published_ports.insert(key, target, 0).context("writing a published port to SERVICES")
    }

    /// Unpublishes a port; new flows to it are no longer translated. Idempotent.
    pub fn unpublish(&mut self, key: &PublishedPortKey) -> Result<()> {
        ignore_missing_key(self.published_ports.remove(key)).context("removing a published port from SERVICES")
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
        ];
        for (name, program) in &self.host_sockets {
            ids.push((*name, program.info()?.id()));
        }
        Ok(ids)
    }
}

/// Removes every pin under `pin_dir` (links first, so programs detach) and the directory.
/// The programs and maps are freed by the kernel once nothing refers to them. Idempotent.
pub fn destroy(pin_dir: &Path) -> Result<()> {
    for sub in ["links", "progs", "maps"] {
        let dir = pin_dir.join(sub);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
        };
        for entry in entries {
            remove_pin(&entry?.path())?;
        }
        remove_dir(&dir)?;
    }
    remove_dir(pin_dir)
}

fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e).with_context(|| format!("removing {}", dir.display())),
        _ => Ok(()),
    }
}

fn remove_pin(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing pin {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// The tcx or XDP link pinned at `pin`, as the kernel reports it.
fn pinned_net_link(pin: &Path) -> Result<bpf::NetLink> {
    let link = bpf::open_pinned(pin).with_context(|| format!("opening the pinned link {}", pin.display()))?;
    bpf::net_link(link.as_fd()).with_context(|| format!("reading the link pinned at {}", pin.display()))
}

/// The program the tcx or XDP link pinned at `pin` runs on the interface named `ifname`; none
/// if it runs on no interface by that name. A pin keeps its link when the interface goes
/// away: the kernel detaches the link (its ifindex then reads 0), and an interface made again
/// under the same name has a new ifindex and no program.
fn pinned_link_program_on(pin: &Path, ifname: &str) -> Result<Option<u32>> {
    let link = pinned_net_link(pin)?;
    let current = nix::net::if_::if_nametoindex(ifname).ok();
    Ok((link.ifindex != 0 && Some(link.ifindex) == current).then_some(link.program_id))
}

/// Whether the link pinned at `pin` still runs on the interface named `ifname`. A stale pin
/// (see [`pinned_link_program_on`]) is removed here, so that the caller attaches anew.
fn pin_still_attached(pin: &Path, ifname: &str) -> Result<bool> {
    if !pin.exists() {
        return Ok(false);
    }
    if pinned_link_program_on(pin, ifname)?.is_some() {
        return Ok(true);
    }
    tracing::info!(
        "the link pinned at {} is not on {ifname}: the interface went away or was made again; attaching anew",
        pin.display()
    );
    remove_pin(pin)?;
    Ok(false)
}

/// Attaches a tcx program to the ingress of `ifname` and pins the link at `pin`. Idempotent:
/// a pinned link that still runs on the interface is kept.
fn attach_pinned(program: &mut SchedClassifier, name: &str, ifname: &str, pin: &Path) -> Result<()> {
    if pin_still_attached(pin, ifname)? {
        return Ok(());
    }
    let link_id = program
        .attach_with_options(ifname, TcAttachType::Ingress, TcAttachOptions::TcxOrder(LinkOrder::default()))
        .with_context(|| format!("attaching {name} to tcx ingress of {ifname}"))?;
    let link: FdLink = program.take_link(link_id)?.try_into().context("a tcx attachment should be an fd link")?;
    link.pin(pin).with_context(|| format!("pinning the tcx link of {ifname} at {}", pin.display()))?;
    Ok(())
}

/// Attaches the XDP uplink program to `ifname` (the driver's native XDP where it has one, as
/// veth does) and pins the link. Idempotent, as `attach_pinned`.
fn attach_xdp_pinned(program: &mut Xdp, ifname: &str, pin: &Path) -> Result<()> {
    if pin_still_attached(pin, ifname)? {
        return Ok(());
    }
    let link_id = program
        .attach(ifname, XdpMode::Default)
        .with_context(|| format!("attaching {} to XDP of {ifname}", program_names::FROM_UPLINK_XDP))?;
    let link: FdLink = program
        .take_link(link_id)?
        .try_into()
        .context("the kernel attached XDP without a BPF link (netlink fallback), which cannot be pinned")?;
    link.pin(pin).with_context(|| format!("pinning the XDP link of {ifname} at {}", pin.display()))?;
    Ok(())
}

/// Loads a program of the object into the kernel, whatever its type.
fn load_program(program: &mut Program, name: &str) -> Result<()> {
    match program {
        Program::SchedClassifier(p) => p.load(),
        Program::Xdp(p) => p.load(),
        Program::CgroupSockAddr(p) => p.load(),
        other => bail!("{name} has a program type bpfnet does not load: {:?}", other.prog_type()),
    }
    .with_context(|| format!("loading {name} into the kernel"))
}

/// Points the link pinned at `link_pin` at `program` (BPF link update).
fn replace_behind_link(program: &mut Program, link_pin: &Path) -> Result<()> {
    // A tcx or XDP link whose interface went away (the kernel detached it; only its pin keeps
    // it) has nothing to run a program for, and the kernel refuses to update it (ENOLINK):
    // its pin goes, and the interface's next attach (the uplink follower, reconciliation)
    // makes a new link if the interface comes back.
    if matches!(program, Program::SchedClassifier(_) | Program::Xdp(_)) && pinned_net_link(link_pin)?.ifindex == 0 {
        tracing::info!("the interface of the link pinned at {} is gone: its pin is removed", link_pin.display());
        return remove_pin(link_pin);
    }
    let pinned = || -> Result<FdLink> {
        let link = PinnedLink::from_pin(link_pin)
            .with_context(|| format!("opening the pinned link {}", link_pin.display()))?;
        Ok(FdLink::from(link))
    };
    match program {
        Program::SchedClassifier(p) => {
            let id = p.attach_to_link(SchedClassifierLink::try_from(pinned()?)?)?;
            drop(p.take_link(id)?);
        }
        Program::Xdp(p) => {
            let id = p.attach_to_link(XdpLink::try_from(pinned()?)?)?;
            drop(p.take_link(id)?);
        }
        // aya 0.14 has no link update for cgroup links.
        Program::CgroupSockAddr(p) => {
            let link = bpf::open_pinned(link_pin)
                .with_context(|| format!("opening the pinned link {}", link_pin.display()))?;
            bpf::update_link(link.as_fd(), p.fd()?.as_fd()).context("BPF_LINK_UPDATE")?;
        }
        other => bail!("no link update for a {:?} program", other.prog_type()),
    }
    Ok(())
}

fn open_program(pin_dir: &Path, name: &str) -> Result<SchedClassifier> {
    let pin = pin_dir.join("progs").join(name);
    SchedClassifier::from_pin(&pin).with_context(|| {
        format!(
            "opening pinned program {}; if an older bpfnet pinned this datapath, remove it \
             with that version's `bpfnet down`",
            pin.display()
        )
    })
}

/// AYA_LOG_LEVEL values, static because the loader borrows the value it writes.
static LOG_LEVELS: [u8; 6] = [0, 1, 2, 3, 4, 5];

/// The loader of the embedded object: maps pinned by name under `maps/` (an existing pin is
/// reused, so a second load shares the first one's maps).
fn loader<'a>(pin_dir: &Path, log_level: DatapathLogLevel, ct_entries: u32) -> EbpfLoader<'a> {
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(pin_dir.join("maps")).override_global(
        "AYA_LOG_LEVEL",
        &LOG_LEVELS[log_level as usize],
        false,
    );
    for table in CtTable::ALL {
        loader.map_max_entries(table.map_name(), table.entries_for(ct_entries));
    }
    loader
}

/// Pins of the links a program is attached through: the uplink's (of its mode) for the
/// uplink programs, the containers' for from_endpoint, the host cgroup's for a socket hook.
fn link_pins_of(pin_dir: &Path, program: &str) -> Result<Vec<PathBuf>> {
    let dir = pin_dir.join("links");
    let mut pins = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        if LinkPin::parse(&entry.file_name().to_string_lossy()).program() == program {
            pins.push(entry.path());
        }
    }
    Ok(pins)
}

/// The embedded object with its maps created or adopted (pinned by name) and every program
/// loaded into the kernel (checked by the verifier), nothing pinned or attached yet.
fn load_object(pin_dir: &Path, log_level: DatapathLogLevel, ct_entries: u32) -> Result<aya::Ebpf> {
    let mut ebpf = loader(pin_dir, log_level, ct_entries)
        .load(DATAPATH_OBJECT)
        .context("loading the eBPF object (see the verifier log above, if any)")?;
    for name in PROGRAMS {
        let program = ebpf.program_mut(name).with_context(|| format!("the eBPF object has no {name} program"))?;
        load_program(program, name)?;
    }
    Ok(ebpf)
}

fn load_and_pin(pin_dir: &Path, log_level: DatapathLogLevel, ct_entries: u32) -> Result<()> {
    let mut ebpf = load_object(pin_dir, log_level, ct_entries)?;
    // The from_endpoint pin is written last: its presence means the whole datapath is pinned.
    for name in PROGRAMS.iter().rev() {
        let program = ebpf.program_mut(name).with_context(|| format!("the eBPF object has no {name} program"))?;
        let pin = pin_dir.join("progs").join(name);
        remove_pin(&pin)?; // left by an interrupted load
        program.pin(&pin).with_context(|| format!("pinning {name} at {}", pin.display()))?;
    }
    Ok(())
}

/// CONFIG as an older bpfnet pinned it: its `HostConfig` ended before `host_netns_cookie`.
/// The agent rewrites CONFIG's settings whenever it starts, so instead of refusing to adopt
/// such a datapath, a new version unpins the old map (the running programs keep using it),
/// loads its own (a new pin) with the same settings, and moves every program to it.
struct OutgrownConfig {
    path: PathBuf,
    /// The old map, to pin back if the new programs cannot be loaded.
    old: MapData,
    settings: HostConfig,
}

impl OutgrownConfig {
    /// Size of `HostConfig` before the host cgroup's fields were added.
    const OLD_SIZE: usize = std::mem::offset_of!(HostConfig, ct_unassured_quota);

    /// If the pinned CONFIG has the old layout: reads its settings and unpins it.
    fn take(pin_dir: &Path) -> Result<Option<Self>> {
        let path = pin_dir.join("maps").join(map_names::CONFIG);
        let old = match MapData::from_pin(&path) {
            Ok(old) => old,
            Err(_) if !path.exists() => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("opening pinned map {}", path.display())),
        };
        let value_size = old.info()?.value_size() as usize;
        if value_size == std::mem::size_of::<HostConfig>() {
            return Ok(None);
        }
        if value_size != Self::OLD_SIZE {
            bail!(
                "the pinned map {} has {value_size}-byte values, a layout this bpfnet cannot adopt; remove \
                 the datapath with the bpfnet version that created it (`bpfnet down`)",
                path.display()
            );
        }
        let array: Array<MapData, [u8; Self::OLD_SIZE]> = open_map(&pin_dir.join("maps"), map_names::CONFIG)?;
        let bytes = array.get(&0, 0).with_context(|| format!("reading {}", path.display()))?;
        let u32_at = |at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let u16_at = |at: usize| u16::from_ne_bytes(bytes[at..at + 2].try_into().expect("2 bytes"));
        let settings = HostConfig {
            uplink_ifindex: u32_at(0),
            uplink_ip: u32_at(4),
            nat_port_min: u16_at(8),
            nat_port_max: u16_at(10),
            ct_limit: u32_at(12),
            flags: u32_at(16),
            ct_unassured_quota: 0,
            host_netns_cookie: 0,
        };
        remove_pin(&path)?;
        Ok(Some(Self { path, old, settings }))
    }

    /// Writes the old settings into the loaded object's (new) CONFIG.
    fn copy_into(&self, ebpf: &mut aya::Ebpf) -> Result<()> {
        let map = ebpf.map_mut(map_names::CONFIG).context("the eBPF object has no CONFIG map")?;
        let mut config: Array<&mut MapData, HostConfig> = Array::try_from(map)?;
        config.set(0, self.settings, 0).context("writing the settings into the new CONFIG")
    }

    /// Pins the old map back in place of the new one.
    fn restore(&self) -> Result<()> {
        remove_pin(&self.path)?;
        self.old.pin(&self.path).with_context(|| format!("pinning the old CONFIG back at {}", self.path.display()))
    }
}

impl OutgrownConfig {
    fn restore_logged(&self) {
        if let Err(restore) = self.restore() {
            tracing::error!("putting the old CONFIG map back: {restore:#}");
        }
    }
}

/// A per-CPU counter array (DROPS, COUNTERS) that an older bpfnet pinned with fewer slots than
/// this version counts (a drop reason or a counter was added since). As for CONFIG, its
/// counts move to a new map of the right size, and it is pinned back if the load fails.
struct OutgrownCounters {
    name: &'static str,
    path: PathBuf,
    old: MapData,
    /// Each slot's per-CPU values.
    values: Vec<PerCpuValues<u64>>,
    slots: u32,
}

impl OutgrownCounters {
    /// The counter arrays this version has, with the slots it needs.
    const ARRAYS: [(&'static str, u32); 2] =
        [(map_names::DROPS, DropReason::COUNT), (map_names::COUNTERS, Counter::COUNT)];

    /// Takes (reads and unpins) every pinned counter array that is too small; on error, pins
    /// back what it took.
    fn take_all(pin_dir: &Path) -> Result<Vec<Self>> {
        let mut taken: Vec<Self> = Vec::new();
        for (name, slots) in Self::ARRAYS {
            match Self::take(pin_dir, name, slots) {
                Ok(Some(old)) => taken.push(old),
                Ok(None) => {}
                Err(e) => {
                    for old in &taken {
                        old.restore_logged();
                    }
                    return Err(e);
                }
            }
        }
        Ok(taken)
    }

    fn take(pin_dir: &Path, name: &'static str, slots: u32) -> Result<Option<Self>> {
        let path = pin_dir.join("maps").join(name);
        if !path.exists() {
            return Ok(None);
        }
        let old = MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))?;
        let old_slots = old.info()?.max_entries();
        if old_slots >= slots {
            return Ok(None);
        }
        let array: PerCpuArray<MapData, u64> = open_map(&pin_dir.join("maps"), name)?;
        let values = (0..old_slots)
            .map(|slot| array.get(&slot, 0).with_context(|| format!("reading slot {slot} of {}", path.display())))
            .collect::<Result<_>>()?;
        remove_pin(&path)?;
        Ok(Some(Self { name, path, old, values, slots }))
    }

    /// Writes the old counts into the loaded object's (new) map.
    fn copy_into(&self, ebpf: &mut aya::Ebpf) -> Result<()> {
        let map = ebpf.map_mut(self.name).with_context(|| format!("the eBPF object has no {} map", self.name))?;
        let mut array: PerCpuArray<&mut MapData, u64> = PerCpuArray::try_from(map)?;
        for (slot, values) in self.values.iter().enumerate() {
            let values = PerCpuValues::try_from(values.to_vec())?;
            array
                .set(slot as u32, values, 0)
                .with_context(|| format!("writing slot {slot} of the new {}", self.name))?;
        }
        Ok(())
    }

    /// Pins the old map back in place of the new one.
    fn restore_logged(&self) {
        let restored = remove_pin(&self.path).and_then(|()| {
            self.old
                .pin(&self.path)
                .with_context(|| format!("pinning the old {} back at {}", self.name, self.path.display()))
        });
        if let Err(e) = restored {
            tracing::error!("putting the old {} map back: {e:#}", self.name);
        }
    }
}

fn open_map<T>(maps_dir: &Path, name: &str) -> Result<T>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let path = maps_dir.join(name);
    let data = MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))?;
    let map = Map::from_map_data(data).with_context(|| format!("reading map {}", path.display()))?;
    T::try_from(map).with_context(|| format!("map {} has an unexpected type", path.display()))
}

fn ignore_missing_key(result: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match result {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// The pin directory must be on a bpffs. /sys/fs/bpf is mounted if it is not yet, as the
/// kernel leaves it unmounted on some distributions; any other place must be bpffs already.
fn ensure_on_bpffs(pin_dir: &Path) -> Result<()> {
    let sys_fs_bpf = Path::new("/sys/fs/bpf");
    if pin_dir.starts_with(sys_fs_bpf) && !is_bpffs(sys_fs_bpf)? {
        nix::mount::mount(Some("bpf"), sys_fs_bpf, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
            .context("mounting bpffs at /sys/fs/bpf (mount -t bpf bpf /sys/fs/bpf)")?;
        tracing::info!("mounted bpffs at /sys/fs/bpf");
    }
    let mut probe = pin_dir.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    if !is_bpffs(&probe)? {
        bail!(
            "pin directory {} is not on a bpf filesystem; use a directory under /sys/fs/bpf \
             (--bpffs) or mount one with `mount -t bpf bpf DIR`",
            pin_dir.display()
        );
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> Result<bool> {
    let stat = nix::sys::statfs::statfs(path).with_context(|| format!("statfs {}", path.display()))?;
    Ok(stat.filesystem_type().0 as i64 == BPF_FS_MAGIC)
}

impl Datapath {
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
        let replaced = Datapath::replace_programs(bed.pin_dir(), DatapathLogLevel::Info, false).unwrap();
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
        assert!(Datapath::replace_programs(bed.pin_dir(), DatapathLogLevel::Info, false).unwrap().is_empty());
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
