//! The maps the programs share with the agent. All are pinned by name under the agent's bpffs
//! directory, so they outlive both the programs' loader and the agent process.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use datapath_common::{
    ct_fill, ct_stats, tail_call_slots, Counter, CtEntry, CtEntry6, CtKey, CtKey6, CtQuotaKey, DropReason, Endpoint,
    Endpoint6, EndpointStats, EventBudget, EventLoss, FragKey, FragKey6, FragPorts, HostConfig, HostConfig6, Ipv4Be,
    Ipv6Be, Network, PublishedPortKey, PublishedPortKey6, PublishedPortTarget, PublishedPortTarget6, SockRevNat,
    SockRevNat6, SockRevNatKey, SockRevNatKey6, MAX_ENDPOINTS,
};

const MAX_NETWORKS: u32 = 4_096;
/// Conntrack entries (two per flow) of each table; the agent sets the real sizes when it first
/// loads the programs (`--ct-size`).
const DEFAULT_CT_ENTRIES: u32 = 262_144;
const DEFAULT_CT_UNASSURED_ENTRIES: u32 = 131_072;
const DEFAULT_CT_OVERFLOW_ENTRIES: u32 = 32_768;
/// Quota keys: a container or a published port each.
const CT_QUOTA_KEYS: u32 = MAX_ENDPOINTS + MAX_PUBLISHED_PORTS;
/// Published ports per host.
const MAX_PUBLISHED_PORTS: u32 = 65_536;
/// Host processes' sockets to published ports remembered at once (LRU: the oldest is
/// forgotten first, and its replies then show the container's address).
const SOCK_REV_NAT_ENTRIES: u32 = 65_536;
/// Fragmented datagrams in flight at once (LRU: a datagram's fragments follow each other
/// within moments, so the oldest entry is the one no longer needed).
const FRAG_ENTRIES: u32 = 8_192;
/// Bytes of the event ring buffer: 16,384 events of 48 bytes with their 8-byte headers, a
/// second and a half of every CPU's whole budget on this host's two CPUs.
const EVENTS_BYTES: u32 = 1 << 20;

#[map]
pub static ENDPOINTS: HashMap<Ipv4Be, Endpoint> = HashMap::pinned(MAX_ENDPOINTS, 0);

#[map]
pub static IFACES: HashMap<u32, Endpoint> = HashMap::pinned(MAX_ENDPOINTS, 0);

#[map]
pub static NETWORKS: HashMap<u32, Network> = HashMap::pinned(MAX_NETWORKS, 0);

#[map]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::pinned(DropReason::COUNT, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(Counter::COUNT, 0);

#[map]
pub static CONFIG: Array<HostConfig> = Array::pinned(1, 0);

#[map]
pub static CT: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(DEFAULT_CT_ENTRIES, 0);

// The kernel's name for the map stays "SERVICES" (`map_names::PUBLISHED_PORTS`): it is pinned
// by that name on running hosts.
#[map(name = "SERVICES")]
pub static PUBLISHED_PORTS: HashMap<PublishedPortKey, PublishedPortTarget> = HashMap::pinned(MAX_PUBLISHED_PORTS, 0);

#[map]
pub static ENDPOINT_STATS: PerCpuArray<EndpointStats> = PerCpuArray::pinned(MAX_ENDPOINTS, 0);

#[map]
pub static SOCK_REV_NAT: LruHashMap<SockRevNatKey, SockRevNat> = LruHashMap::pinned(SOCK_REV_NAT_ENTRIES, 0);

#[map]
pub static FRAGS: LruHashMap<FragKey, FragPorts> = LruHashMap::pinned(FRAG_ENTRIES, 0);

#[map]
pub static FRAGS6: LruHashMap<FragKey6, FragPorts> = LruHashMap::pinned(FRAG_ENTRIES, 0);

#[map]
pub static CT_FILL: Array<u64> = Array::pinned(ct_fill::SLOTS, 0);

#[map]
pub static CT_UNASSURED: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(DEFAULT_CT_UNASSURED_ENTRIES, 0);

#[map]
pub static CT_OVERFLOW: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(DEFAULT_CT_OVERFLOW_ENTRIES, 0);

#[map]
pub static CT_QUOTA: HashMap<CtQuotaKey, u64> = HashMap::pinned(CT_QUOTA_KEYS, 0);

#[map]
pub static CT_STATS: Array<u64> = Array::pinned(ct_stats::SLOTS, 0);

#[map]
pub static CT_QUOTA_HITS: PerCpuArray<u64> = PerCpuArray::pinned(MAX_ENDPOINTS, 0);

#[map]
pub static ENDPOINT_DROPS: PerCpuArray<u64> = PerCpuArray::pinned(MAX_ENDPOINTS, 0);

#[map]
pub static EVENTS: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);

#[map]
pub static EVENT_BUDGET: PerCpuArray<EventBudget> = PerCpuArray::pinned(1, 0);

#[map]
pub static EVENTS_LOST: PerCpuArray<u64> = PerCpuArray::pinned(EventLoss::COUNT, 0);

#[map]
pub static ENDPOINTS6: HashMap<Ipv6Be, Endpoint6> = HashMap::pinned(MAX_ENDPOINTS, 0);

#[map]
pub static IFACES6: HashMap<u32, Endpoint6> = HashMap::pinned(MAX_ENDPOINTS, 0);

#[map]
pub static CONFIG6: Array<HostConfig6> = Array::pinned(1, 0);

#[map(name = "PUBLISHED6")]
pub static PUBLISHED_PORTS6: HashMap<PublishedPortKey6, PublishedPortTarget6> = HashMap::pinned(MAX_PUBLISHED_PORTS, 0);

// IPv6's conntrack: IPv4's three tables and fill count again, for its wider keys (sized by the
// agent as IPv4's are). Quotas and statistics are shared with IPv4 (see `conntrack`).
#[map]
pub static CT6: LruHashMap<CtKey6, CtEntry6> = LruHashMap::pinned(DEFAULT_CT_ENTRIES, 0);

#[map]
pub static CT6_UNASSURED: LruHashMap<CtKey6, CtEntry6> = LruHashMap::pinned(DEFAULT_CT_UNASSURED_ENTRIES, 0);

#[map]
pub static CT6_OVERFLOW: LruHashMap<CtKey6, CtEntry6> = LruHashMap::pinned(DEFAULT_CT_OVERFLOW_ENTRIES, 0);

#[map]
pub static CT6_FILL: Array<u64> = Array::pinned(ct_fill::SLOTS, 0);

/// A new IPv6 flow's entry is built here before it is inserted (see `conntrack::Family`).
/// Scratch space only, so not pinned: each load of the programs has its own.
#[map]
pub static CT6_SCRATCH: PerCpuArray<CtEntry6> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static SOCK_REV_NAT6: LruHashMap<SockRevNatKey6, SockRevNat6> = LruHashMap::pinned(SOCK_REV_NAT_ENTRIES, 0);

/// `tail_call_slots` -> TC program: IPv6's programs. Filled by the agent (an empty slot makes
/// the tail call fall through).
#[map]
pub static TAIL_CALLS: ProgramArray = ProgramArray::pinned(tail_call_slots::SLOTS, 0);

/// The same for XDP programs (a program array holds programs of one type).
#[map]
pub static TAIL_CALLS_XDP: ProgramArray = ProgramArray::pinned(tail_call_slots::SLOTS, 0);

/// The host's settings (all zero, i.e. no uplink, until the agent writes them).
#[inline(always)]
pub fn config() -> HostConfig {
    CONFIG.get(0).copied().unwrap_or_default()
}

/// The host's IPv6 settings in place (all zero, i.e. no IPv6 uplink address, until the agent
/// writes them).
#[inline(always)]
pub fn config6_ref() -> Option<&'static HostConfig6> {
    CONFIG6.get(0)
}

/// The host's settings in place, without a copy on the stack (the container's path is close
/// to the verifier's 512-byte stack limit). `None` never happens for index 0 of an array; it
/// reads as "no uplink".
#[inline(always)]
pub fn config_ref() -> Option<&'static HostConfig> {
    CONFIG.get(0)
}
