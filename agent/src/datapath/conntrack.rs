//! The conntrack tables' sizes and handles (the agent's conntrack logic is in host/conntrack.rs).
use aya::Pod;

use super::*;

/// Conntrack entries (two per flow) of the assured table when nothing else is said.
pub const DEFAULT_CT_ENTRIES: u32 = 262_144;

/// The three conntrack tables (see datapath-ebpf/src/conntrack.rs): the API's own enum, which
/// `conntrack ls` shows, with what the datapath knows of each table.
pub use crate::api::ConntrackTable as CtTable;

impl CtTable {
    /// In the order of `Datapath::ct_tables` (each table's discriminant is its index).
    pub const ALL: [CtTable; 3] = [CtTable::Assured, CtTable::Unassured, CtTable::Overflow];

    /// The IPv4 table's map name (see `CtFamily::map_name` for either family's).
    pub fn map_name(self) -> &'static str {
        Ipv4Be::map_name(self)
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

/// An address family's conntrack maps, as the agent reads and writes them: IPv4's (`CT`, ...)
/// and IPv6's (`CT6`, ...) have the same three tables, one fill count each, and the agent's
/// conntrack logic (host/conntrack.rs) is written once over this trait.
pub trait CtFamily: Copy + Eq + std::hash::Hash + std::fmt::Debug + Default + 'static {
    /// As `conntrack ls` names the family.
    const NAME: &'static str;

    /// The map holding `table`'s flows of this family.
    fn map_name(table: CtTable) -> &'static str;
    /// The map counting the family's assured entries (`ct_fill`).
    fn fill_map_name() -> &'static str;
    fn entries(
        dp: &Datapath,
        table: CtTable,
    ) -> Result<std::collections::HashMap<CtKeyOf<Self>, CtEntryOf<CtKeyOf<Self>>>>;
    /// Removes one entry; `false` when it was gone already.
    fn remove(dp: &mut Datapath, table: CtTable, key: &CtKeyOf<Self>) -> Result<bool>;
    fn fill(dp: &Datapath) -> &Array<MapData, u64>;
    fn fill_mut(dp: &mut Datapath) -> &mut Array<MapData, u64>;
    /// The containers' addresses of this family, each with the IPv4 address its flows' quota
    /// key has (an IPv4 container's own; an IPv6 one's `Endpoint6::ip4`).
    fn containers(dp: &Datapath) -> Result<std::collections::HashMap<Self, Ipv4Be>>;
    fn ip(addr: Self) -> std::net::IpAddr;
}

/// Every entry of a conntrack map. An entry deleted by the datapath while it is walked (LRU,
/// or a flow moved to the assured table) is skipped.
fn entries_of<K: Pod + Eq + std::hash::Hash, V: Pod>(
    map: &HashMap<MapData, K, V>,
    name: &str,
) -> Result<std::collections::HashMap<K, V>> {
    let mut entries = std::collections::HashMap::new();
    for item in map.iter() {
        match item {
            Ok((key, entry)) => {
                entries.insert(key, entry);
            }
            Err(aya::maps::MapError::KeyNotFound) => continue,
            Err(e) => return Err(e).with_context(|| format!("reading the conntrack table {name}")),
        }
    }
    Ok(entries)
}

fn remove_from<K: Pod, V: Pod>(map: &mut HashMap<MapData, K, V>, key: &K) -> Result<bool> {
    match map.remove(key) {
        Ok(()) => Ok(true),
        Err(aya::maps::MapError::KeyNotFound) => Ok(false),
        Err(aya::maps::MapError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).context("removing a conntrack entry"),
    }
}

impl CtFamily for Ipv4Be {
    const NAME: &'static str = "ipv4";

    fn map_name(table: CtTable) -> &'static str {
        match table {
            CtTable::Assured => map_names::CT,
            CtTable::Unassured => map_names::CT_UNASSURED,
            CtTable::Overflow => map_names::CT_OVERFLOW,
        }
    }

    fn fill_map_name() -> &'static str {
        map_names::CT_FILL
    }

    fn entries(dp: &Datapath, table: CtTable) -> Result<std::collections::HashMap<CtKey, CtEntry>> {
        entries_of(&dp.ct_tables[table as usize], Self::map_name(table))
    }

    fn remove(dp: &mut Datapath, table: CtTable, key: &CtKey) -> Result<bool> {
        remove_from(&mut dp.ct_tables[table as usize], key)
    }

    fn fill(dp: &Datapath) -> &Array<MapData, u64> {
        &dp.ct_fill
    }

    fn fill_mut(dp: &mut Datapath) -> &mut Array<MapData, u64> {
        &mut dp.ct_fill
    }

    fn containers(dp: &Datapath) -> Result<std::collections::HashMap<Ipv4Be, Ipv4Be>> {
        dp.endpoints.keys().map(|ip| ip.map(|ip| (ip, ip))).collect::<Result<_, _>>().context("listing ENDPOINTS")
    }

    fn ip(addr: Ipv4Be) -> std::net::IpAddr {
        std::net::Ipv4Addr::from(addr.to_ne_bytes()).into()
    }
}

impl CtFamily for Ipv6Be {
    const NAME: &'static str = "ipv6";

    fn map_name(table: CtTable) -> &'static str {
        match table {
            CtTable::Assured => map_names::CT6,
            CtTable::Unassured => map_names::CT6_UNASSURED,
            CtTable::Overflow => map_names::CT6_OVERFLOW,
        }
    }

    fn fill_map_name() -> &'static str {
        map_names::CT6_FILL
    }

    fn entries(dp: &Datapath, table: CtTable) -> Result<std::collections::HashMap<CtKey6, CtEntry6>> {
        entries_of(&dp.ct6_tables[table as usize], Self::map_name(table))
    }

    fn remove(dp: &mut Datapath, table: CtTable, key: &CtKey6) -> Result<bool> {
        remove_from(&mut dp.ct6_tables[table as usize], key)
    }

    fn fill(dp: &Datapath) -> &Array<MapData, u64> {
        &dp.ct6_fill
    }

    fn fill_mut(dp: &mut Datapath) -> &mut Array<MapData, u64> {
        &mut dp.ct6_fill
    }

    fn containers(dp: &Datapath) -> Result<std::collections::HashMap<Ipv6Be, Ipv4Be>> {
        dp.endpoints6
            .iter()
            .map(|entry| entry.map(|(ip, endpoint)| (ip, endpoint.ip4)))
            .collect::<Result<_, _>>()
            .context("listing ENDPOINTS6")
    }

    fn ip(addr: Ipv6Be) -> std::net::IpAddr {
        std::net::Ipv6Addr::from(datapath_common::ipv6_octets(addr)).into()
    }
}

impl Datapath {
    /// How many entries an IPv4 conntrack table can hold (IPv6's are sized alike).
    pub fn ct_capacity(&self, table: CtTable) -> Result<u32> {
        self.map_capacity(table.map_name())
    }

    /// How many entries a conntrack table of `A` can hold.
    pub fn ct_capacity_of<A: CtFamily>(&self, table: CtTable) -> Result<u32> {
        self.map_capacity(A::map_name(table))
    }

    /// How many entries a pinned map can hold.
    pub fn map_capacity(&self, name: &str) -> Result<u32> {
        let path = self.pin_dir.join("maps").join(name);
        let info = MapData::from_pin(&path)?.info().with_context(|| format!("reading {}", path.display()))?;
        Ok(info.max_entries())
    }

    /// New flows of the container in `slot` (its own, or to its published ports) that were
    /// over their share of the unassured table, summed over the CPUs.
    pub fn ct_quota_hits(&self, slot: u32) -> Result<u64> {
        Ok(self.ct_quota_hits.get(&slot, 0).context("reading CT_QUOTA_HITS")?.iter().sum())
    }
}
