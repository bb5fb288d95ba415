//! The agent's half of conntrack: the datapath creates entries and stamps them; here flows are
//! paired, given a state, listed, and expired by timeouts close to the kernel's own
//! (nf_conntrack's defaults), freeing their NAT ports.
use std::{collections::HashMap, net::Ipv4Addr, time::Duration};

use anyhow::{Context, Result};
use datapath_common::{ct_direction, ct_fill, ct_kind, ct_tcp_flags, CtEntry, CtKey, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};
use serde::Serialize;

use crate::datapath::Datapath;

/// Timeouts by flow state, in seconds; the defaults are nf_conntrack's.
#[derive(clap::Args, Debug, Clone)]
pub struct Timeouts {
    /// TCP flow in the opening handshake (nf_conntrack_tcp_timeout_syn_sent).
    #[arg(long = "ct-timeout-tcp-syn", env = "BPFNET_CT_TIMEOUT_TCP_SYN", global = true, default_value_t = 120, value_name = "SECS")]
    pub tcp_syn: u64,
    /// Established TCP flow (nf_conntrack_tcp_timeout_established).
    #[arg(long = "ct-timeout-tcp-established", env = "BPFNET_CT_TIMEOUT_TCP_ESTABLISHED", global = true, default_value_t = 432_000, value_name = "SECS")]
    pub tcp_established: u64,
    /// TCP flow closing with FIN (nf_conntrack_tcp_timeout_fin_wait / time_wait).
    #[arg(long = "ct-timeout-tcp-fin", env = "BPFNET_CT_TIMEOUT_TCP_FIN", global = true, default_value_t = 120, value_name = "SECS")]
    pub tcp_fin: u64,
    /// TCP flow reset (nf_conntrack_tcp_timeout_close).
    #[arg(long = "ct-timeout-tcp-close", env = "BPFNET_CT_TIMEOUT_TCP_CLOSE", global = true, default_value_t = 10, value_name = "SECS")]
    pub tcp_close: u64,
    /// UDP flow with no reply yet (nf_conntrack_udp_timeout).
    #[arg(long = "ct-timeout-udp", env = "BPFNET_CT_TIMEOUT_UDP", global = true, default_value_t = 30, value_name = "SECS")]
    pub udp: u64,
    /// UDP flow that saw replies (nf_conntrack_udp_timeout_stream).
    #[arg(long = "ct-timeout-udp-stream", env = "BPFNET_CT_TIMEOUT_UDP_STREAM", global = true, default_value_t = 120, value_name = "SECS")]
    pub udp_stream: u64,
    /// ICMP echo (nf_conntrack_icmp_timeout).
    #[arg(long = "ct-timeout-icmp", env = "BPFNET_CT_TIMEOUT_ICMP", global = true, default_value_t = 30, value_name = "SECS")]
    pub icmp: u64,
}

/// A flow's state, derived from the TCP flags both directions have seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowState {
    SynSent,
    Established,
    FinWait,
    Close,
    /// UDP/ICMP: nothing came back yet.
    Unreplied,
    /// UDP/ICMP: replies seen.
    Replied,
}

/// Both directions of one tracked flow.
#[derive(Debug, Clone, Serialize)]
pub struct Flow {
    pub protocol: &'static str,
    /// snat, dnat or hairpin.
    pub kind: &'static str,
    /// As the flow's first packet carried them.
    pub source: String,
    pub destination: String,
    /// After translation.
    pub translated_source: String,
    pub translated_destination: String,
    pub state: FlowState,
    /// Seconds since the last packet in either direction.
    pub idle_seconds: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub packets_in: u64,
    pub bytes_in: u64,
    #[serde(skip)]
    original_key: Option<CtKey>,
    #[serde(skip)]
    reply_key: Option<CtKey>,
    #[serde(skip)]
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

fn kind_name(kind: u8) -> &'static str {
    match kind {
        ct_kind::SNAT => "snat",
        ct_kind::DNAT => "dnat",
        ct_kind::HAIRPIN => "hairpin",
        _ => "unknown",
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

fn state(proto: u8, out: Option<&CtEntry>, back: Option<&CtEntry>) -> FlowState {
    let flags_out = out.map_or(0, |e| e.tcp_flags);
    let flags_back = back.map_or(0, |e| e.tcp_flags);
    let replied = back.is_some_and(|e| e.packets > 0);
    if proto != IPPROTO_TCP {
        return if replied { FlowState::Replied } else { FlowState::Unreplied };
    }
    let all = flags_out | flags_back;
    if all & ct_tcp_flags::RST != 0 {
        FlowState::Close
    } else if all & ct_tcp_flags::FIN != 0 {
        FlowState::FinWait
    } else if replied && flags_back & ct_tcp_flags::ACK != 0 {
        FlowState::Established
    } else {
        FlowState::SynSent
    }
}

impl Timeouts {
    fn of(&self, state: FlowState, proto: u8) -> Duration {
        let secs = match (proto, state) {
            (IPPROTO_TCP, FlowState::Established) => self.tcp_established,
            (IPPROTO_TCP, FlowState::FinWait) => self.tcp_fin,
            (IPPROTO_TCP, FlowState::Close) => self.tcp_close,
            (IPPROTO_TCP, _) => self.tcp_syn,
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

/// All tracked flows, each direction paired with the other.
pub fn flows(datapath: &Datapath) -> Result<Vec<Flow>> {
    let now = monotonic_ns()?;
    let mut entries: HashMap<CtKey, CtEntry> = HashMap::new();
    for item in datapath.ct.iter() {
        match item {
            Ok((key, entry)) => {
                entries.insert(key, entry);
            }
            // An entry deleted by the datapath (LRU) while we walk: skip it.
            Err(aya::maps::MapError::KeyNotFound) => continue,
            Err(e) => return Err(e).context("reading the conntrack table"),
        }
    }
    let mut flows = Vec::new();
    for (key, entry) in &entries {
        let (original_key, reply_key) = if entry.direction == ct_direction::ORIGINAL {
            (*key, CtKey::counterpart(entry))
        } else {
            let original_key = CtKey::counterpart(entry);
            if entries.contains_key(&original_key) {
                continue; // listed with its ORIGINAL entry
            }
            (original_key, *key)
        };
        let out = entries.get(&original_key);
        let back = entries.get(&reply_key);
        let last_seen_ns = out.map_or(0, |e| e.last_seen_ns).max(back.map_or(0, |e| e.last_seen_ns));
        let translated = reply_key.reversed();
        let proto = key.proto;
        flows.push(Flow {
            protocol: protocol_name(proto),
            kind: kind_name(entry.kind),
            source: endpoint(original_key.saddr, original_key.sport, proto),
            destination: endpoint(original_key.daddr, original_key.dport, proto),
            translated_source: endpoint(translated.saddr, translated.sport, proto),
            translated_destination: endpoint(translated.daddr, translated.dport, proto),
            state: state(proto, out, back),
            idle_seconds: now.saturating_sub(last_seen_ns) / 1_000_000_000,
            packets_out: out.map_or(0, |e| e.packets),
            bytes_out: out.map_or(0, |e| e.bytes),
            packets_in: back.map_or(0, |e| e.packets),
            bytes_in: back.map_or(0, |e| e.bytes),
            original_key: out.map(|_| original_key),
            reply_key: back.map(|_| reply_key),
            last_seen_ns,
        });
    }
    flows.sort_by(|a, b| (a.protocol, &a.source, &a.destination).cmp(&(b.protocol, &b.source, &b.destination)));
    Ok(flows)
}

/// What one garbage collection did.
#[derive(Debug, Clone, Serialize)]
pub struct GcReport {
    pub flows_expired: usize,
    pub entries_removed: u64,
    pub entries_in_use: u64,
    pub capacity: u32,
}

/// Removes the flows idle for longer than their state's timeout (both directions, which frees
/// the NAT port), then resynchronises the fill count the datapath's limit is based on.
pub fn collect_garbage(datapath: &mut Datapath, timeouts: &Timeouts) -> Result<GcReport> {
    let now = monotonic_ns()?;
    let flows = flows(datapath)?;
    let mut flows_expired = 0;
    let mut entries_removed = 0;
    let mut in_use = 0u64;
    for flow in &flows {
        let proto = flow.original_key.or(flow.reply_key).map_or(0, |k| k.proto);
        let idle = Duration::from_nanos(now.saturating_sub(flow.last_seen_ns));
        let keys = [flow.original_key, flow.reply_key];
        let present = keys.iter().flatten().count() as u64;
        if idle <= timeouts.of(flow.state, proto) {
            in_use += present;
            continue;
        }
        flows_expired += 1;
        for key in keys.iter().flatten() {
            match datapath.ct.remove(key) {
                Ok(()) => entries_removed += 1,
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(aya::maps::MapError::SyscallError(e)) if e.io_error.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).context("removing an expired conntrack entry"),
            }
        }
    }
    // REMOVED is set so that INSERTED - REMOVED is the real count: this also corrects for any
    // entry the LRU evicted on its own. Racing inserts are counted by the next collection.
    let inserted = datapath.ct_fill.get(&ct_fill::INSERTED, 0).context("reading CT_FILL")?;
    datapath
        .ct_fill
        .set(ct_fill::REMOVED, inserted.saturating_sub(in_use), 0)
        .context("writing CT_FILL")?;
    Ok(GcReport { flows_expired, entries_removed, entries_in_use: in_use, capacity: datapath.ct_capacity()? })
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
