//! The agent's half of conntrack: the datapath creates entries, stamps them and moves assured
//! flows to their table (datapath-ebpf/src/conntrack.rs); here flows are paired, given
//! nf_conntrack's state, listed, and expired by its timeouts, freeing their NAT ports, and the
//! datapath's counts (assured fill, unassured flows per quota key) are resynchronised.
use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use anyhow::{Context, Result};
use datapath_common::{
    ct_direction, ct_fill, ct_kind, ct_stats, ct_tcp_flags, CtEntry, CtEntryOf, CtKey, CtKeyOf, CtQuotaKey, Ipv4Be,
    Ipv6Be, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
};

use crate::{
    api::{ConntrackStatus, Flow, FlowState, GcReport},
    datapath::{CtFamily, CtTable, Datapath},
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

/// A tracked flow of family `A`: its API form, and the entries it was made of.
pub struct TrackedFlow<A> {
    pub flow: Flow,
    original: Option<(CtKeyOf<A>, CtEntryOf<CtKeyOf<A>>)>,
    reply_key: Option<CtKeyOf<A>>,
    last_seen_ns: u64,
}

fn protocol_name(proto: u8) -> &'static str {
    match proto {
        IPPROTO_TCP => "tcp",
        IPPROTO_UDP => "udp",
        IPPROTO_ICMP => "icmp",
        IPPROTO_ICMPV6 => "icmpv6",
        _ => "other",
    }
}

/// An address and port as `conntrack ls` shows them: `10.0.0.1:80`, `[2001:db8::1]:80`, or
/// for ICMP echo the address and its identifier.
fn endpoint<A: CtFamily>(addr: A, port: u16, proto: u8) -> String {
    let ip = A::ip(addr);
    if proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6 {
        format!("{ip} id {}", u16::from_be(port))
    } else {
        std::net::SocketAddr::new(ip, u16::from_be(port)).to_string()
    }
}

/// nf_conntrack's state of a flow from the flags each direction's entry has accumulated
/// (see `ct_tcp_flags`). Sequence numbers are not tracked: an ACK after a FIN counts as its
/// acknowledgement.
fn state<K>(proto: u8, table: CtTable, out: Option<&CtEntryOf<K>>, back: Option<&CtEntryOf<K>>) -> FlowState {
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

/// All tracked flows, as `conntrack ls` lists them: IPv4's, then IPv6's.
pub fn list(datapath: &Datapath) -> Result<Vec<Flow>> {
    let ipv4 = flows::<Ipv4Be>(datapath)?.into_iter().map(|tracked| tracked.flow);
    let ipv6 = flows::<Ipv6Be>(datapath)?.into_iter().map(|tracked| tracked.flow);
    Ok(ipv4.chain(ipv6).collect())
}

/// All tracked flows of family `A`, each direction paired with the other, assured ones first.
fn flows<A: CtFamily>(datapath: &Datapath) -> Result<Vec<TrackedFlow<A>>> {
    let now = monotonic_ns()?;
    let mut flows = Vec::new();
    for table in CtTable::ALL {
        let entries = A::entries(datapath, table)?;
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
fn flow<A: CtFamily>(
    entries: &HashMap<CtKeyOf<A>, CtEntryOf<CtKeyOf<A>>>,
    table: CtTable,
    key: &CtKeyOf<A>,
    entry: &CtEntryOf<CtKeyOf<A>>,
    now: u64,
) -> Option<TrackedFlow<A>> {
    let (original_key, reply_key) = if entry.direction == ct_direction::ORIGINAL {
        (*key, CtKeyOf::counterpart(entry))
    } else {
        let original_key = CtKeyOf::counterpart(entry);
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
        family: A::NAME.to_owned(),
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
/// the NAT port), then resynchronises what the datapath counts: the assured tables' fill, on
/// which their limit is based, and each quota key's unassured flows. Both families' tables.
///
/// `expired` is told of each expired IPv4 flow that had its ORIGINAL entry (its first
/// packet's tuple and the translated one), for `bpfnet monitor` (whose events are IPv4's).
pub fn collect_garbage(
    datapath: &mut Datapath,
    timeouts: &Timeouts,
    expired: &mut dyn FnMut(&CtKey, &CtEntry),
) -> Result<GcReport> {
    let mut quota_held: BTreeMap<CtQuotaKey, u64> = BTreeMap::new();
    let ipv4 = collect_family::<Ipv4Be>(datapath, timeouts, &mut quota_held, expired)?;
    let ipv6 = collect_family::<Ipv6Be>(datapath, timeouts, &mut quota_held, &mut |_, _| {})?;
    let pools = [CtTable::Unassured as usize, CtTable::Overflow as usize];
    let (removed, present) = [&ipv4, &ipv6]
        .iter()
        .flat_map(|family| pools.iter().map(|&t| (family.removed[t], family.in_use[t])))
        .fold((0, 0), |(r, p), (removed, in_use)| (r + removed, p + in_use));
    count_early_drops(datapath, removed, present)?;
    recount_quota(datapath, &quota_held)?;
    let [assured, unassured, overflow] = [CtTable::Assured, CtTable::Unassured, CtTable::Overflow].map(|t| t as usize);
    Ok(GcReport {
        flows_expired: ipv4.flows_expired + ipv6.flows_expired,
        entries_removed: ipv4.removed.iter().chain(&ipv6.removed).sum(),
        entries_in_use: ipv4.in_use[assured],
        capacity: datapath.ct_capacity(CtTable::Assured)?,
        unassured_entries: ipv4.in_use[unassured],
        overflow_entries: ipv4.in_use[overflow],
        busiest_destination_nat_ports: ipv4.busiest_destination_nat_ports.max(ipv6.busiest_destination_nat_ports),
        flows_of_removed_containers: ipv4.flows_of_removed_containers + ipv6.flows_of_removed_containers,
        ipv6_entries_in_use: ipv6.in_use[assured],
        ipv6_capacity: datapath.ct_capacity_of::<Ipv6Be>(CtTable::Assured)?,
        ipv6_unassured_entries: ipv6.in_use[unassured],
        ipv6_overflow_entries: ipv6.in_use[overflow],
    })
}

/// Told of each expired flow of family `A` that had its ORIGINAL entry.
type Expired<'a, A> = dyn FnMut(&CtKeyOf<A>, &CtEntryOf<CtKeyOf<A>>) + 'a;

/// What a collection did to one family's tables, by table (`CtTable as usize`).
struct FamilyCollection {
    flows_expired: usize,
    flows_of_removed_containers: usize,
    removed: [u64; 3],
    in_use: [u64; 3],
    busiest_destination_nat_ports: u64,
}

/// The collection of one family's tables: expiry, its assured fill resynchronised, and its
/// unassured flows added to `quota_held` (both families count against one quota key).
fn collect_family<A: CtFamily>(
    datapath: &mut Datapath,
    timeouts: &Timeouts,
    quota_held: &mut BTreeMap<CtQuotaKey, u64>,
    expired: &mut Expired<'_, A>,
) -> Result<FamilyCollection> {
    let now = monotonic_ns()?;
    let flows = flows::<A>(datapath)?;
    // The containers' addresses now: a flow of a container that is gone (removed, rolled
    // back) goes whatever its timeout, so that a container made later with the address does
    // not inherit it (an established TCP flow would otherwise stay for days).
    let containers = A::containers(datapath)?;
    let mut done = FamilyCollection {
        flows_expired: 0,
        flows_of_removed_containers: 0,
        removed: [0; 3],
        in_use: [0; 3],
        busiest_destination_nat_ports: 0,
    };
    // NAT ports in use per destination (address, port, protocol) that sources are
    // translated towards: the busiest one runs out of ports first.
    let mut nat_ports_to: HashMap<(A, u16, u8), u64> = HashMap::new();
    for tracked in &flows {
        let proto = tracked.original.map(|(k, _)| k).or(tracked.reply_key).map_or(0, |k| k.proto);
        let idle = Duration::from_nanos(now.saturating_sub(tracked.last_seen_ns));
        let keys = [tracked.original.map(|(k, _)| k), tracked.reply_key];
        let table = tracked.flow.table;
        let table_index = table as usize;
        let orphaned = tracked
            .original
            .as_ref()
            .is_some_and(|(key, entry)| !containers_of(key, entry).all(|ip| containers.contains_key(&ip)));
        if !orphaned && idle <= timeouts.timeout(tracked.flow.state, proto) {
            done.in_use[table_index] += keys.iter().flatten().count() as u64;
            if let (CtTable::Unassured, Some((key, entry))) = (table, &tracked.original) {
                let (container, port, proto) = CtQuotaKey::owner(key, entry);
                if let Some(&addr) = containers.get(&container) {
                    *quota_held.entry(CtQuotaKey { addr, port, proto, _pad: 0 }).or_default() += 1;
                }
            }
            if let Some((key, entry)) = &tracked.original {
                if entry.kind != ct_kind::DNAT {
                    *nat_ports_to.entry((entry.to.daddr, entry.to.dport, key.proto)).or_default() += 1;
                }
            }
            continue;
        }
        if orphaned {
            done.flows_of_removed_containers += 1;
        } else {
            done.flows_expired += 1;
        }
        if let Some((key, entry)) = &tracked.original {
            expired(key, entry);
        }
        for key in keys.iter().flatten() {
            if A::remove(datapath, table, key).context("removing an expired conntrack entry")? {
                done.removed[table_index] += 1;
            }
        }
    }
    // REMOVED is set so that INSERTED - REMOVED is the real count: this also corrects for any
    // entry the LRU evicted on its own. Racing inserts are counted by the next collection.
    let assured = done.in_use[CtTable::Assured as usize];
    let fill = A::fill_mut(datapath);
    let inserted = fill.get(&ct_fill::INSERTED, 0).with_context(|| format!("reading {}", A::fill_map_name()))?;
    fill.set(ct_fill::REMOVED, inserted.saturating_sub(assured), 0)
        .with_context(|| format!("writing {}", A::fill_map_name()))?;
    done.busiest_destination_nat_ports = nat_ports_to.values().copied().max().unwrap_or(0);
    Ok(done)
}

/// The addresses of the containers a flow is of, from its ORIGINAL entry: the one that opened
/// it (snat, hairpin) and the one it was translated to (dnat, hairpin).
fn containers_of<A: Copy>(original: &CtKeyOf<A>, entry: &CtEntryOf<CtKeyOf<A>>) -> impl Iterator<Item = A> {
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
        ipv6_entries: fill_of::<Ipv6Be>(datapath)?,
        ipv6_capacity: datapath.ct_capacity_of::<Ipv6Be>(CtTable::Assured)?,
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

/// Entries of IPv4's assured table in use as the datapath counts them (INSERTED - REMOVED).
pub fn fill(datapath: &Datapath) -> Result<u64> {
    fill_of::<Ipv4Be>(datapath)
}

/// The same for family `A`.
pub fn fill_of<A: CtFamily>(datapath: &Datapath) -> Result<u64> {
    let map = A::fill(datapath);
    let inserted = map.get(&ct_fill::INSERTED, 0)?;
    let removed = map.get(&ct_fill::REMOVED, 0)?;
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

    fn v6(s: &str) -> Ipv6Be {
        datapath_common::ipv6_be(s.parse::<std::net::Ipv6Addr>().unwrap().octets())
    }

    /// Both entries of a flow from `original` translated to `to`, as the datapath makes them.
    fn insert_flow6(
        dp: &mut Datapath,
        table: CtTable,
        original: CtKeyOf<Ipv6Be>,
        to: CtKeyOf<Ipv6Be>,
        kind: u8,
        last_seen_ns: u64,
        tcp_flags: (u8, u8),
    ) {
        let out =
            CtEntryOf { last_seen_ns, packets: 1, bytes: 80, to, kind, tcp_flags: tcp_flags.0, ..Default::default() };
        let back = CtEntryOf {
            last_seen_ns,
            packets: 1,
            bytes: 90,
            to: original.reversed(),
            ifindex: 5,
            direction: ct_direction::REPLY,
            kind,
            tcp_flags: tcp_flags.1,
            ..Default::default()
        };
        dp.ct6_tables[table as usize].insert(original, out, 0).unwrap();
        dp.ct6_tables[table as usize].insert(to.reversed(), back, 0).unwrap();
    }

    /// IPv6 flows in the real CT6 maps: `conntrack ls` shows them with their family and IPv6
    /// addresses, and a collection expires the idle ones and those of a removed container,
    /// resynchronises CT6_FILL, and counts the unassured ones against their container's IPv4
    /// address in the quota both families share.
    #[test]
    fn ipv6_flows_are_listed_expired_and_counted_against_the_containers_ipv4_quota() {
        if !crate::devkit::netns::is_root() {
            return;
        }
        let mut bed = crate::devkit::testbed::Testbed::create("bnct", 4096).unwrap();
        let dp = &mut bed.datapath;
        let (container, uplink, server) = (v6("2001:db8:1::10"), v6("2001:db8::1"), v6("2001:db8:ff::53"));
        let ip4 = datapath_common::ipv4_be([10, 88, 0, 10]);
        dp.upsert_endpoint6(&datapath_common::Endpoint6 { host_ifindex: 5, ip: container, ip4, ..Default::default() })
            .unwrap();
        let udp = |saddr, sport: u16| CtKeyOf {
            saddr,
            daddr: server,
            sport: sport.to_be(),
            dport: 53u16.to_be(),
            proto: IPPROTO_UDP,
            _pad: [0; 3],
        };
        let now = monotonic_ns().unwrap();
        let snat = |key: CtKeyOf<Ipv6Be>| CtKeyOf { saddr: uplink, ..key };
        // Fresh, idle beyond the UDP timeout, and of a container that is gone.
        insert_flow6(
            dp,
            CtTable::Unassured,
            udp(container, 40000),
            snat(udp(container, 40000)),
            ct_kind::SNAT,
            now,
            (0, 0),
        );
        insert_flow6(
            dp,
            CtTable::Unassured,
            udp(container, 40001),
            snat(udp(container, 40001)),
            ct_kind::SNAT,
            1,
            (0, 0),
        );
        let gone = v6("2001:db8:1::99");
        insert_flow6(dp, CtTable::Unassured, udp(gone, 40002), snat(udp(gone, 40002)), ct_kind::SNAT, now, (0, 0));
        // An established TCP flow in the assured table, and a fill count that drifted.
        let tcp = CtKeyOf { proto: IPPROTO_TCP, dport: 443u16.to_be(), ..udp(container, 40003) };
        let est =
            (ct_tcp_flags::SYN | ct_tcp_flags::ACK | ct_tcp_flags::ASSURED, ct_tcp_flags::SYN | ct_tcp_flags::ACK);
        insert_flow6(dp, CtTable::Assured, tcp, snat(tcp), ct_kind::SNAT, now, est);
        dp.ct6_fill.set(ct_fill::INSERTED, 10, 0).unwrap();

        let flows = list(dp).unwrap();
        assert_eq!(flows.len(), 4, "{flows:#?}");
        let established = &flows[0];
        assert_eq!(established.family, "ipv6");
        assert_eq!((established.protocol.as_str(), established.table), ("tcp", CtTable::Assured));
        assert_eq!(established.source, "[2001:db8:1::10]:40003");
        assert_eq!(established.destination, "[2001:db8:ff::53]:443");
        assert_eq!(established.translated_source, "[2001:db8::1]:40003");
        assert_eq!(established.state, FlowState::Established);
        assert!(flows[1..].iter().all(|f| f.family == "ipv6" && f.table == CtTable::Unassured && f.protocol == "udp"));

        let timeouts = Timeouts {
            tcp_syn_sent: 120,
            tcp_syn_recv: 60,
            tcp_established: 432_000,
            tcp_fin_wait: 120,
            tcp_close_wait: 60,
            tcp_last_ack: 30,
            tcp_time_wait: 120,
            tcp_close: 10,
            udp: 30,
            udp_stream: 120,
            icmp: 30,
        };
        let mut reported = 0;
        let report = collect_garbage(dp, &timeouts, &mut |_, _| reported += 1).unwrap();
        assert_eq!((report.flows_expired, report.flows_of_removed_containers), (1, 1));
        assert_eq!(report.entries_removed, 4);
        assert_eq!((report.ipv6_entries_in_use, report.ipv6_unassured_entries), (2, 2));
        assert_eq!((report.entries_in_use, report.unassured_entries), (0, 0), "IPv4's tables are empty");
        assert_eq!(reported, 0, "monitor events are IPv4's");
        assert_eq!(fill_of::<Ipv6Be>(dp).unwrap(), 2, "CT6_FILL resynchronised with what CT6 holds");
        assert_eq!(fill(dp).unwrap(), 0, "CT_FILL untouched");
        let quota: Vec<(CtQuotaKey, u64)> = dp.ct_quota.iter().map(Result::unwrap).collect();
        assert_eq!(quota, vec![(CtQuotaKey { addr: ip4, port: 0, proto: 0, _pad: 0 }, 1)]);
        let left: Vec<String> = list(dp).unwrap().into_iter().map(|f| f.source).collect();
        assert_eq!(left, ["[2001:db8:1::10]:40003", "[2001:db8:1::10]:40000"]);
    }

    #[test]
    fn the_quota_is_a_share_of_the_unassured_tables_flows() {
        assert_eq!(unassured_quota(131_072, 25), 16_384);
        assert_eq!(unassured_quota(16_384, 100), 8_192);
        assert_eq!(unassured_quota(16_384, 1), 81);
    }
}
