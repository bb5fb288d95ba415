//! The conntrack tables' sizes and handles (the agent's conntrack logic is in host/conntrack.rs).
use super::*;

/// Conntrack entries (two per flow) of the assured table when nothing else is said.
pub const DEFAULT_CT_ENTRIES: u32 = 262_144;

/// The three conntrack tables (see datapath-ebpf/src/conntrack.rs): the API's own enum, which
/// `conntrack ls` shows, with what the datapath knows of each table.
pub use crate::api::ConntrackTable as CtTable;

impl CtTable {
    /// In the order of `Datapath::ct_tables` (each table's discriminant is its index).
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

impl Datapath {
    /// How many entries a conntrack table can hold.
    pub fn ct_capacity(&self, table: CtTable) -> Result<u32> {
        self.map_capacity(table.map_name())
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
