//! The maps the programs share with the agent. All are pinned by name under the agent's bpffs
//! directory, so they outlive both the programs' loader and the agent process.
use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use datapath_common::{Counter, DropReason, Endpoint, Ipv4Be, Network};

/// Upper bound on containers per host; the agent may lower it at load time.
const MAX_ENDPOINTS: u32 = 65_536;
const MAX_NETWORKS: u32 = 4_096;

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
