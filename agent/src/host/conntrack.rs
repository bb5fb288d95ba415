//! The agent's half of conntrack: the datapath creates entries, stamps them and moves assured
//! flows to their table (datapath-ebpf/src/conntrack.rs); here flows are paired, given
//! nf_conntrack's state, listed, and expired by its timeouts, freeing their NAT ports, and the
//! datapath's counts (assured fill, unassured flows per quota key) are resynchronised.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::Ipv4Addr,
    time::Duration,
};

use anyhow::{Context, Result};
use datapath_common::{
    ct_direction, ct_fill, ct_kind, ct_stats, ct_tcp_flags, CtEntry, CtKey, CtQuotaKey, IPPROTO_ICMP, IPPROTO_TCP,
    IPPROTO_UDP,
};

use crate::{
    api::{ConntrackStatus, Flow, FlowState, GcReport},
    datapath::{CtTable, Datapath},
};

/// Timeouts by flow state, in seconds; the defaults are nf_conntrack's.
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// TCP flow whose SYN got no answer yet (nf_conntrack_tcp_timeout_syn_sent).
    pub tcp_syn_sent: u64,
    /// TCP flow answered with a SYN-ACK, waiting for the handshake's last ACK
    /// (nf_conntrack_tcp_timeout_syn_recv). A spoofed SYN flood leaves its flows here.
    pub tcp_syn_recv: u64,
    /// Established TCP flow (nf_conntrack_tcp_timeout_established).
    pub tcp_established: u64,
    /// TCP flow one side closed with a FIN not acknowledged yet (nf_conntrack_tcp_timeout_fin_wait).
    pub tcp_fin_wait: u64,
    /// TCP flow whose first FIN was acknowledged, the other side not closed yet
    /// (nf_conntrack_tcp_timeout_close_wait).
    pub tcp_close_wait: u64,
    /// TCP flow closed by both sides, the last FIN not acknowledged yet
    /// (nf_conntrack_tcp_timeout_last_ack).
    pub tcp_last_ack: u64,
    /// TCP flow closed by both sides and acknowledged (nf_conntrack_tcp_timeout_time_wait).
    pub tcp_time_wait: u64,
    /// TCP flow reset (nf_conntrack_tcp_timeout_close).
    pub tcp_close: u64,
    /// UDP flow with no reply yet (nf_conntrack_udp_timeout).
    pub udp: u64,
    /// UDP flow that saw replies (nf_conntrack_udp_timeout_stream).
    pub udp_stream: u64,
    /// ICMP echo (nf_conntrack_icmp_timeout).
    pub icmp: u64,
}

/// A tracked flow: its API form, and the entries it was made of.
pub struct TrackedFlow {
    pub flow: Flow,
    original: Option<(CtKey, CtEntry)>,
    reply_key: Option<CtKey>,
    last_seen_ns: u64,
}

fn protocol_name(proto: u8) -> &'static str {
    match proto {
        IPPROTO_TCP => "tcp",
        IPPROTO_UDP => "udp",
        IPPROTO_ICMP => "icmp",
        _ => "other",
    }
}

fn endpoint(addr: u32, port: u16, proto: u8) -> String {
    let ip = Ipv4Addr::from(addr.to_ne_bytes());
    if proto == IPPROTO_ICMP {
        format!("{ip} id {}", u16::from_be(port))
    } else {
        format!("{ip}:{}", u16::from_be(port))
    }
}

/// nf_conntrack's state of a flow from the flags each direction's entry has accumulated
/// (see `ct_tcp_flags`). Sequence numbers are not tracked: an ACK after a FIN counts as its
/// acknowledgement.
fn state(proto: u8, table: CtTable, out: Option<&CtEntry>, back: Option<&CtEntry>) -> FlowState {
    use ct_tcp_flags::{ACK, ASSURED, FIN, FIN_ACKED, RST, SYN};
    let o = out.map_or(0, |e| e.tcp_flags);
    let r = back.map_or(0, |e| e.tcp_flags);
    if proto != IPPROTO_TCP {
        let replied = back.is_some_and(|e| e.packets > 0);
        return if replied { FlowState::Replied } else { FlowState::Unreplied };
    }
    let both_closed = o & FIN != 0 && r & FIN != 0;
    if (o | r) & RST != 0 {
        FlowState::Close
    } else if both_closed && o & FIN_ACKED != 0 && r & FIN_ACKED != 0 {
        FlowState::TimeWait
    } else if both_closed {
        FlowState::LastAck
    } else if (o & FIN != 0 && r & FIN_ACKED != 0) || (r & FIN != 0 && o & FIN_ACKED != 0) {
        FlowState::CloseWait
    } else if (o | r) & FIN != 0 {
        FlowState::FinWait
    // An entry of CT made by a bpfnet before assurance existed has no ASSURED flag: its
    // originator's ACK says the handshake completed.
    } else if o & ASSURED != 0 || (table == CtTable::Assured && o & ACK != 0) {
        FlowState::Established
    } else if r & SYN != 0 && r & ACK != 0 {
        FlowState::SynRecv
    } else {
        FlowState::SynSent
    }
}

impl Timeouts {
    /// How long a flow in `state` may stay idle.
    pub fn timeout(&self, state: FlowState, proto: u8) -> Duration {
        let secs = match (proto, state) {
            (IPPROTO_TCP, FlowState::SynSent) => self.tcp_syn_sent,
            (IPPROTO_TCP, FlowState::SynRecv) => self.tcp_syn_recv,
            (IPPROTO_TCP, FlowState::Established) => self.tcp_established,
            (IPPROTO_TCP, FlowState::FinWait) => self.tcp_fin_wait,
            (IPPROTO_TCP, FlowState::CloseWait) => self.tcp_close_wait,
            (IPPROTO_TCP, FlowState::LastAck) => self.tcp_last_ack,
            (IPPROTO_TCP, FlowState::TimeWait) => self.tcp_time_wait,
            (IPPROTO_TCP, _) => self.tcp_close,
            (IPPROTO_UDP, FlowState::Replied) => self.udp_stream,
            (IPPROTO_UDP, _) => self.udp,
            _ => self.icmp,
        };
        Duration::from_secs(secs)
    }
}

/// The monotonic clock bpf_ktime_get_ns() reads.
fn monotonic_ns() -> Result<u64> {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)?;
    Ok(now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64)
}

/// The entries of one conntrack table.
fn entries_of(datapath: &Datapath, table: CtTable) -> Result<HashMap<CtKey, CtEntry>> {
    let mut entries = HashMap::new();
    for item in datapath.ct_tables[table as usize].iter() {
        match item {
            Ok((key, entry)) => {
                entries.insert(key, entry);
            }
            // An entry deleted by the datapath (LRU, or a flow moved to CT) while we walk.
            Err(aya::maps::MapError::KeyNotFound) => continue,
            Err(e) => return Err(e).with_context(|| format!("reading the conntrack table {}", table.map_name())),
        }
    }
    Ok(entries)
}

/// All tracked flows, as `conntrack ls` lists them.
pub fn list(datapath: &Datapath) -> Result<Vec<Flow>> {
    Ok(flows(datapath)?.into_iter().map(|tracked| tracked.flow).collect())
}

/// All tracked flows, each direction paired with the other, assured ones first.
fn flows(datapath: &Datapath) -> Result<Vec<TrackedFlow>> {
    let now = monotonic_ns()?;
    let mut flows = Vec::new();
    for table in CtTable::ALL {
        let entries = entries_of(datapath, table)?;
        let first = flows.len();
        flows.extend(entries.iter().filter_map(|(key, entry)| flow(&entries, table, key, entry, now)));
        flows[first..].sort_by(|a, b| {
            let (a, b) = (&a.flow, &b.flow);
            (&a.protocol, &a.source, &a.destination).cmp(&(&b.protocol, &b.source, &b.destination))
        });
    }
    Ok(flows)
}

/// The flow of one entry of `table`, unless it is a REPLY entry listed with its ORIGINAL one.
fn flow(
    entries: &HashMap<CtKey, CtEntry>,
    table: CtTable,
    key: &CtKey,
    entry: &CtEntry,
    now: u64,
) -> Option<TrackedFlow> {
    let (original_key, reply_key) = if entry.direction == ct_direction::ORIGINAL {
        (*key, CtKey::counterpart(entry))
    } else {
        let original_key = CtKey::counterpart(entry);
        if entries.contains_key(&original_key) {
            return None;
        }
        (original_key, *key)
    };
    let out = entries.get(&original_key);
    let back = entries.get(&reply_key);
    let last_seen_ns = out.map_or(0, |e| e.last_seen_ns).max(back.map_or(0, |e| e.last_seen_ns));
    let translated = reply_key.reversed();
    let proto = key.proto;
    let flow = Flow {
        protocol: protocol_name(proto).to_owned(),
        kind: ct_kind::name(entry.kind).to_owned(),
        source: endpoint(original_key.saddr, original_key.sport, proto),
        destination: endpoint(original_key.daddr, original_key.dport, proto),
        translated_source: endpoint(translated.saddr, translated.sport, proto),
        translated_destination: endpoint(translated.daddr, translated.dport, proto),
        state: state(proto, table, out, back),
        assured: table == CtTable::Assured || out.is_some_and(|e| e.tcp_flags & ct_tcp_flags::ASSURED != 0),
        table,
        idle_seconds: now.saturating_sub(last_seen_ns) / 1_000_000_000,
        packets_out: out.map_or(0, |e| e.packets),
        bytes_out: out.map_or(0, |e| e.bytes),
        packets_in: back.map_or(0, |e| e.packets),
        bytes_in: back.map_or(0, |e| e.bytes),
    };
    Some(TrackedFlow {
        flow,
        original: out.map(|e| (original_key, *e)),
        reply_key: back.map(|_| reply_key),
        last_seen_ns,
    })
}

/// Removes the flows idle for longer than their state's timeout (both directions, which frees
/// the NAT port), then resynchronises what the datapath counts: the assured table's fill, on
/// which its limit is based, and each quota key's unassured flows.
///
/// `expired` is told of each expired flow that had its ORIGINAL entry (its first packet's
/// tuple and the translated one), for `bpfnet monitor`.
pub fn collect_garbage(
    datapath: &mut Datapath,
    timeouts: &Timeouts,
    expired: &mut dyn FnMut(&CtKey, &CtEntry),
) -> Result<GcReport> {
    let now = monotonic_ns()?;
    let flows = flows(datapath)?;
    // The containers' addresses now: a flow of a container that is gone (removed, rolled
    // back) goes whatever its timeout, so that a container made later with the address does
    // not inherit it (an established TCP flow would otherwise stay for days).
    let endpoints: HashSet<u32> = datapath.endpoints.keys().collect::<Result<_, _>>().context("listing ENDPOINTS")?;
    let mut flows_expired = 0;
    let mut flows_of_removed_containers = 0;
    // NAT ports in use per destination (address, port, protocol) that sources are
    // translated towards: the busiest one runs out of ports first.
    let mut nat_ports_to: HashMap<(u32, u16, u8), u64> = HashMap::new();
    let mut removed = [0u64; 3];
    let mut in_use = [0u64; 3];
    let mut quota_held: BTreeMap<CtQuotaKey, u64> = BTreeMap::new();
    for tracked in &flows {
        let proto = tracked.original.map(|(k, _)| k).or(tracked.reply_key).map_or(0, |k| k.proto);
        let idle = Duration::from_nanos(now.saturating_sub(tracked.last_seen_ns));
        let keys = [tracked.original.map(|(k, _)| k), tracked.reply_key];
        let table = tracked.flow.table;
        let table_index = table as usize;
        let orphaned = tracked
            .original
            .as_ref()
            .is_some_and(|(key, entry)| !containers_of(key, entry).all(|ip| endpoints.contains(&ip)));
        if !orphaned && idle <= timeouts.timeout(tracked.flow.state, proto) {
            in_use[table_index] += keys.iter().flatten().count() as u64;
            if let (CtTable::Unassured, Some((key, entry))) = (table, &tracked.original) {
                *quota_held.entry(CtQuotaKey::of_flow(key, entry)).or_default() += 1;
            }
            if let Some((key, entry)) = &tracked.original {
                if entry.kind != ct_kind::DNAT {
                    *nat_ports_to.entry((entry.to.daddr, entry.to.dport, key.proto)).or_default() += 1;
                }
            }
            continue;
        }
        if orphaned {
            flows_of_removed_containers += 1;
        } else {
            flows_expired += 1;
        }
        if let Some((key, entry)) = &tracked.original {
            expired(key, entry);
        }
        for key in keys.iter().flatten() {
            match datapath.ct_tables[table_index].remove(key) {
                Ok(()) => removed[table_index] += 1,
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(aya::maps::MapError::SyscallError(e)) if e.io_error.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).context("removing an expired conntrack entry"),
            }
        }
    }
    // REMOVED is set so that INSERTED - REMOVED is the real count: this also corrects for any
    // entry the LRU evicted on its own. Racing inserts are counted by the next collection.
    let assured = CtTable::Assured as usize;
    let inserted = datapath.ct_fill.get(&ct_fill::INSERTED, 0).context("reading CT_FILL")?;
    datapath.ct_fill.set(ct_fill::REMOVED, inserted.saturating_sub(in_use[assured]), 0).context("writing CT_FILL")?;
    let pools = [CtTable::Unassured as usize, CtTable::Overflow as usize];
    count_early_drops(datapath, pools.iter().map(|&t| removed[t]).sum(), pools.iter().map(|&t| in_use[t]).sum())?;
    recount_quota(datapath, &quota_held)?;
    Ok(GcReport {
        flows_expired,
        entries_removed: removed.iter().sum(),
        entries_in_use: in_use[assured],
        capacity: datapath.ct_capacity(CtTable::Assured)?,
        unassured_entries: in_use[CtTable::Unassured as usize],
        overflow_entries: in_use[CtTable::Overflow as usize],
        busiest_destination_nat_ports: nat_ports_to.values().copied().max().unwrap_or(0),
        flows_of_removed_containers,
    })
}

/// The addresses of the containers a flow is of, from its ORIGINAL entry: the one that opened
/// it (snat, hairpin) and the one it was translated to (dnat, hairpin).
fn containers_of(original: &CtKey, entry: &CtEntry) -> impl Iterator<Item = u32> {
    let opener = (entry.kind != ct_kind::DNAT).then_some(original.saddr);
    let target = (entry.kind != ct_kind::SNAT).then_some(entry.to.daddr);
    opener.into_iter().chain(target)
}

/// Adds this collection's removals from the unassured tables to GC_REMOVED, then derives the
/// LRU's evictions: entries made there, less those moved to the assured table (two a flow),
/// removed by collections, and still there (`present`, as this collection found them).
fn count_early_drops(datapath: &mut Datapath, removed: u64, present: u64) -> Result<()> {
    let stat = |slot: u32| datapath.ct_stats.get(&slot, 0).context("reading CT_STATS");
    let gc_removed = stat(ct_stats::GC_REMOVED)? + removed;
    let inserted = stat(ct_stats::UNASSURED_INSERTED)? + stat(ct_stats::OVERFLOW_INSERTED)?;
    let left = 2 * stat(ct_stats::PROMOTED)? + gc_removed + present;
    // Never backwards: an insert racing the walk may make one collection's figure low.
    let early_drops = inserted.saturating_sub(left).max(stat(ct_stats::EARLY_DROPS)?);
    datapath.ct_stats.set(ct_stats::GC_REMOVED, gc_removed, 0).context("writing CT_STATS")?;
    datapath.ct_stats.set(ct_stats::EARLY_DROPS, early_drops, 0).context("writing CT_STATS")?;
    Ok(())
}

/// Writes each quota key's unassured flows as counted in this collection: this corrects for
/// the flows the LRU evicted (nobody sees those go). A flow added while the table was walked
/// may be missing from the count until the next collection.
fn recount_quota(datapath: &mut Datapath, held: &BTreeMap<CtQuotaKey, u64>) -> Result<()> {
    let known: Vec<CtQuotaKey> = datapath.ct_quota.keys().filter_map(Result::ok).collect();
    for key in known.iter().filter(|key| !held.contains_key(key)) {
        match datapath.ct_quota.remove(key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(aya::maps::MapError::SyscallError(e)) if e.io_error.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).context("removing a quota key from CT_QUOTA"),
        }
    }
    for (key, count) in held {
        datapath.ct_quota.insert(key, count, 0).context("writing CT_QUOTA")?;
    }
    Ok(())
}

/// The conntrack tables' fill, settings and events.
pub fn status(datapath: &Datapath) -> Result<ConntrackStatus> {
    let config = datapath.config()?;
    let stat = |slot: u32| datapath.ct_stats.get(&slot, 0).context("reading CT_STATS");
    let promoted = stat(ct_stats::PROMOTED)?;
    Ok(ConntrackStatus {
        entries: fill(datapath)?,
        limit: config.ct_limit,
        capacity: datapath.ct_capacity(CtTable::Assured)?,
        unassured_capacity: datapath.ct_capacity(CtTable::Unassured)?,
        overflow_capacity: datapath.ct_capacity(CtTable::Overflow)?,
        unassured_quota: config.ct_unassured_quota,
        promoted,
        promotion_refused: stat(ct_stats::PROMOTION_REFUSED)?,
        quota_hits: stat(ct_stats::QUOTA_HITS)?,
        early_drops: stat(ct_stats::EARLY_DROPS)?,
    })
}

/// The unassured flows one quota key may hold: `share_percent` of the unassured table's flows.
pub fn unassured_quota(unassured_capacity: u32, share_percent: u8) -> u32 {
    (u64::from(unassured_capacity / 2) * u64::from(share_percent) / 100).max(1) as u32
}
/// Nodes the kernel's LRU hash keeps on each CPU's local free list (LOCAL_FREE_TARGET in
/// kernel/bpf/bpf_lru_list.h). A CPU that finds its list empty refills it, evicting live
/// entries if the global list is short: up to this many per CPU before the map is full.
const LRU_LOCAL_FREE_TARGET: u32 = 128;

/// How many entries new flows may fill before they are refused: enough below the table's
/// capacity that the LRU never evicts a live flow to make room.
pub fn fill_limit(capacity: u32) -> Result<u32> {
    let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))? as u32;
    let headroom = (capacity / 16).max(2 * LRU_LOCAL_FREE_TARGET * cpus);
    capacity.checked_sub(headroom).filter(|limit| *limit >= 2).with_context(|| {
        format!("a conntrack table of {capacity} entries is too small for {cpus} CPUs; use a larger --ct-size")
    })
}

/// Entries in use as the datapath counts them (INSERTED - REMOVED).
pub fn fill(datapath: &Datapath) -> Result<u64> {
    let inserted = datapath.ct_fill.get(&ct_fill::INSERTED, 0)?;
    let removed = datapath.ct_fill.get(&ct_fill::REMOVED, 0)?;
    Ok(inserted.saturating_sub(removed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ct_tcp_flags::{ACK, ASSURED, FIN, FIN_ACKED, PEER_FIN, RST, SYN};

    fn with(tcp_flags: u8, packets: u64) -> CtEntry {
        CtEntry { tcp_flags, packets, ..Default::default() }
    }

    /// The state of a TCP flow whose directions saw these flags.
    fn tcp(table: CtTable, out: u8, back: Option<u8>) -> FlowState {
        state(IPPROTO_TCP, table, Some(&with(out, 1)), back.map(|f| with(f, 1)).as_ref())
    }

    #[test]
    fn tcp_states_follow_nf_conntrack() {
        use CtTable::{Assured, Unassured};
        use FlowState::*;
        let est = (SYN | ACK | ASSURED, SYN | ACK);
        let cases = [
            (Unassured, SYN, None, SynSent),
            (Unassured, SYN, Some(0), SynSent),
            (Unassured, SYN, Some(SYN | ACK), SynRecv),
            // The originator's ACK completed the handshake (it may stay unassured at CT's limit).
            (Unassured, est.0, Some(est.1), Established),
            (Assured, est.0, Some(est.1), Established),
            (Assured, est.0 | FIN, Some(est.1 | PEER_FIN), FinWait),
            (Assured, est.0 | FIN, Some(est.1 | PEER_FIN | FIN_ACKED), CloseWait),
            (Assured, est.0 | PEER_FIN | FIN_ACKED, Some(est.1 | FIN), CloseWait),
            (Assured, est.0 | FIN | PEER_FIN, Some(est.1 | PEER_FIN | FIN_ACKED | FIN), LastAck),
            (Assured, est.0 | FIN | PEER_FIN | FIN_ACKED, Some(est.1 | FIN | PEER_FIN | FIN_ACKED), TimeWait),
            (Assured, est.0, Some(est.1 | RST), Close),
            (Unassured, SYN | RST, None, Close),
            // A spoofed SYN answered by a SYN-ACK, retransmitted: never established.
            (Unassured, SYN, Some(SYN | ACK), SynRecv),
            // An entry of CT from before assurance existed.
            (Assured, SYN | ACK, Some(SYN | ACK), Established),
            (Assured, SYN, Some(SYN | ACK), SynRecv),
        ];
        for (table, out, back, want) in cases {
            assert_eq!(tcp(table, out, back), want, "table {table:?}, out {out:#x}, back {back:x?}");
        }
    }

    #[test]
    fn udp_and_icmp_are_replied_once_something_came_back() {
        let out = with(0, 3);
        assert_eq!(state(IPPROTO_UDP, CtTable::Unassured, Some(&out), None), FlowState::Unreplied);
        assert_eq!(state(IPPROTO_UDP, CtTable::Unassured, Some(&out), Some(&with(0, 0))), FlowState::Unreplied);
        assert_eq!(state(IPPROTO_UDP, CtTable::Assured, Some(&out), Some(&with(0, 1))), FlowState::Replied);
        assert_eq!(state(IPPROTO_ICMP, CtTable::Unassured, Some(&out), Some(&with(0, 1))), FlowState::Replied);
    }

    #[test]
    fn the_quota_is_a_share_of_the_unassured_tables_flows() {
        assert_eq!(unassured_quota(131_072, 25), 16_384);
        assert_eq!(unassured_quota(16_384, 100), 8_192);
        assert_eq!(unassured_quota(16_384, 1), 81);
    }
}
