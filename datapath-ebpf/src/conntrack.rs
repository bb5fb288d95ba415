//! Connection tracking: the tuple of a packet, the entries of its flow (one per direction),
//! per-packet accounting, and the flow's progress towards "assured", as nf_conntrack has it.
//!
//! A flow lives in one of three LRU tables (names in `datapath_common::map_names`):
//! - `CT`: assured flows (a TCP handshake completed, a UDP flow answered and continued). It is
//!   kept below the agent's fill limit, so the LRU never evicts one: established flows are
//!   never lost to a flood. A flow that becomes assured while it is at the limit stays
//!   where it is.
//! - `CT_UNASSURED`: every new flow starts here. It may fill: a new flow then takes the place
//!   of the oldest unassured one (nf_conntrack's early_drop), so new connections are never
//!   refused for lack of room.
//! - `CT_OVERFLOW`: new flows of a container or published port that holds its share of
//!   `CT_UNASSURED` already. A flood of one competes only with itself there.
//!
//! The established path looks up `CT` and finds its flow; the rest is for the first packets
//! of a flow and its close. Expiry by nf_conntrack's state timeouts is the agent's job.
//!
//! IPv6 has the same three tables for its wider keys (`CT6`, `CT6_UNASSURED`, `CT6_OVERFLOW`),
//! and the logic here is written once for both: a [`Family`] (the address type, `Ipv4Be` or
//! `Ipv6Be`) names its tables, and everything else is generic over it. Quotas are shared: an
//! IPv6 flow counts against its container's IPv4 address, so a container has one share.
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_ktime_get_ns,
    maps::{Array, LruHashMap},
};
use datapath_common::{
    ct_direction, ct_fill, ct_stats, ct_tcp_flags, CtEntryOf, CtKey, CtKeyOf, CtQuotaKey, DropReason, HostConfig,
    Ipv4Be, Ipv6Be, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
};
use network_types::{icmp::Icmpv4Hdr, tcp::TcpHdr, udp::UdpHdr};

use crate::{
    ip::Header,
    maps::{
        config_ref, CT, CT6, CT6_FILL, CT6_OVERFLOW, CT6_SCRATCH, CT6_UNASSURED, CT_FILL, CT_OVERFLOW, CT_QUOTA,
        CT_QUOTA_HITS, CT_STATS, CT_UNASSURED, ENDPOINTS6,
    },
    packet::{ptr_at, Packet},
};

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;

/// A family's conntrack key and entry.
pub type Key<A> = CtKeyOf<A>;
pub type Entry<A> = CtEntryOf<CtKeyOf<A>>;

/// An address family as conntrack sees it: its address type, its tables and its ICMP.
pub trait Family: Copy + Default + PartialEq + 'static {
    /// ICMP's protocol number in this family, and its echo request and reply types.
    const ICMP: u8;
    const ECHO_REQUEST: u8;
    const ECHO_REPLY: u8;
    /// How many NAT ports a new flow tries (its own, then from a random start) before it is
    /// refused. IPv6's program walks extension headers before it gets here, which multiplies
    /// the paths the verifier follows through the probes: it has fewer.
    const NAT_PORT_PROBES: u32;

    fn map(table: Table) -> &'static LruHashMap<Key<Self>, Entry<Self>>;
    /// The assured table's fill count (`ct_fill`).
    fn fill() -> &'static Array<u64>;
    /// The quota key a flow counts against (always an IPv4 address: one share per container
    /// whichever family it uses); `None` when its container is gone (the agent's recount then
    /// fixes the count).
    fn quota_key(original: &Key<Self>, entry: &Entry<Self>) -> Option<CtQuotaKey>;
    /// A key as `bpfnet monitor`'s events carry it (IPv4's; IPv6 flows are not reported yet).
    fn event_tuple(key: &Key<Self>) -> Option<&CtKey>;
    /// Runs `f` on a zeroed entry to be inserted: on the stack for IPv4, in a per-CPU scratch
    /// slot for IPv6 (`None` if that could not be had), whose 72-byte entries the programs'
    /// 512-byte stack has no room for beside its wide keys.
    fn with_new_entry<R>(f: impl FnOnce(&mut Entry<Self>) -> R) -> Option<R>;
}

impl Family for Ipv4Be {
    const ICMP: u8 = IPPROTO_ICMP;
    const ECHO_REQUEST: u8 = ICMP_ECHO_REQUEST;
    const ECHO_REPLY: u8 = ICMP_ECHO_REPLY;
    const NAT_PORT_PROBES: u32 = 32;

    #[inline(always)]
    fn map(table: Table) -> &'static LruHashMap<Key<Self>, Entry<Self>> {
        match table {
            Table::Assured => &CT,
            Table::Unassured => &CT_UNASSURED,
            Table::Overflow => &CT_OVERFLOW,
        }
    }

    #[inline(always)]
    fn fill() -> &'static Array<u64> {
        &CT_FILL
    }

    #[inline(always)]
    fn quota_key(original: &Key<Self>, entry: &Entry<Self>) -> Option<CtQuotaKey> {
        Some(CtQuotaKey::of_flow(original, entry))
    }

    #[inline(always)]
    fn event_tuple(key: &Key<Self>) -> Option<&CtKey> {
        Some(key)
    }

    #[inline(always)]
    fn with_new_entry<R>(f: impl FnOnce(&mut Entry<Self>) -> R) -> Option<R> {
        let mut entry = Entry::<Self>::default();
        Some(f(&mut entry))
    }
}

impl Family for Ipv6Be {
    const ICMP: u8 = IPPROTO_ICMPV6;
    const ECHO_REQUEST: u8 = ICMPV6_ECHO_REQUEST;
    const ECHO_REPLY: u8 = ICMPV6_ECHO_REPLY;
    const NAT_PORT_PROBES: u32 = 8;

    #[inline(always)]
    fn map(table: Table) -> &'static LruHashMap<Key<Self>, Entry<Self>> {
        match table {
            Table::Assured => &CT6,
            Table::Unassured => &CT6_UNASSURED,
            Table::Overflow => &CT6_OVERFLOW,
        }
    }

    #[inline(always)]
    fn fill() -> &'static Array<u64> {
        &CT6_FILL
    }

    #[inline(always)]
    fn quota_key(original: &Key<Self>, entry: &Entry<Self>) -> Option<CtQuotaKey> {
        let (container, port, proto) = CtQuotaKey::owner(original, entry);
        // SAFETY: map values are plain data; copied out at once.
        let ip4 = unsafe { ENDPOINTS6.get(&container) }?.ip4;
        Some(CtQuotaKey { addr: ip4, port, proto, _pad: 0 })
    }

    #[inline(always)]
    fn event_tuple(_key: &Key<Self>) -> Option<&CtKey> {
        None
    }

    #[inline(always)]
    fn with_new_entry<R>(f: impl FnOnce(&mut Entry<Self>) -> R) -> Option<R> {
        let slot = CT6_SCRATCH.get_ptr_mut(0)?;
        // SAFETY: this CPU's slot, which nothing else uses while the program runs.
        let entry = unsafe { &mut *slot };
        *entry = Entry::<Self>::default();
        Some(f(entry))
    }
}

/// The conntrack key of a packet, as it travels, and the TCP flags it carries (as
/// `ct_tcp_flags`). ICMP echo uses its identifier as the requester's port. A later fragment
/// has the ports its first fragment had (see `fragment`).
#[inline(always)]
pub fn key_of<P: Packet, H: Header>(ctx: &P, ip: &H) -> Result<(Key<H::Addr>, u8), DropReason> {
    let mut key = Key::<H::Addr> { saddr: ip.saddr(), daddr: ip.daddr(), proto: ip.proto(), ..Default::default() };
    if ip.later_fragment() {
        let ports = ip.ports_of_later()?;
        key.sport = ports.sport;
        key.dport = ports.dport;
        return Ok((key, 0));
    }
    let mut flags = 0;
    match key.proto {
        // Whole headers (through the checksum fields) are checked here, before any flow is
        // tracked: a cut-short header must not take a NAT port and then fail half-rewritten.
        IPPROTO_TCP => {
            let tcp: *const TcpHdr = ptr_at(ctx, ip.l4_off())?;
            // SAFETY: bounds-checked by `ptr_at`.
            let tcp = unsafe { &*tcp };
            key.sport = u16::from_ne_bytes(tcp.source);
            key.dport = u16::from_ne_bytes(tcp.dest);
            flags = tcp_flags(tcp);
        }
        IPPROTO_UDP => {
            let udp: *const UdpHdr = ptr_at(ctx, ip.l4_off())?;
            // SAFETY: bounds-checked by `ptr_at`.
            let udp = unsafe { &*udp };
            key.sport = u16::from_ne_bytes(udp.src);
            key.dport = u16::from_ne_bytes(udp.dst);
        }
        // ICMPv6's echo header is laid out as ICMP's: type, code, checksum, identifier.
        proto if proto == H::Addr::ICMP => {
            let icmp: *const Icmpv4Hdr = ptr_at(ctx, ip.l4_off())?;
            // SAFETY: bounds-checked by `ptr_at`.
            let icmp = unsafe { &*icmp };
            match icmp.type_ {
                t if t == H::Addr::ECHO_REQUEST => key.sport = echo_id(icmp),
                t if t == H::Addr::ECHO_REPLY => key.dport = echo_id(icmp),
                _ => return Err(DropReason::UnsupportedL4),
            }
        }
        _ => return Err(DropReason::UnsupportedL4),
    }
    Ok((key, flags))
}

/// The identifier of an ICMP echo request or reply (network byte order as stored), which a
/// conntrack key keeps as the requester's port.
#[inline(always)]
pub fn echo_id(icmp: &Icmpv4Hdr) -> u16 {
    // SAFETY: a view of the header's last 4 bytes, plain bytes whatever the type; for an echo
    // message (the callers check the type) they are its identifier and sequence number.
    u16::from_ne_bytes(unsafe { icmp.id_sequence_unchecked() }.id)
}

/// The TCP header's flags, as conntrack keeps them.
#[inline(always)]
fn tcp_flags(tcp: &TcpHdr) -> u8 {
    let mut flags = 0;
    if tcp.syn() != 0 {
        flags |= ct_tcp_flags::SYN;
    }
    if tcp.ack() != 0 {
        flags |= ct_tcp_flags::ACK;
    }
    if tcp.fin() != 0 {
        flags |= ct_tcp_flags::FIN;
    }
    if tcp.rst() != 0 {
        flags |= ct_tcp_flags::RST;
    }
    flags
}

/// The conntrack table a flow lives in.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Assured,
    Unassured,
    Overflow,
}

impl Table {
    #[inline(always)]
    fn map<A: Family>(self) -> &'static LruHashMap<Key<A>, Entry<A>> {
        A::map(self)
    }
}

/// A flow's entry for one direction, and where it lives.
#[derive(Clone, Copy)]
pub struct Tracked<A: Family> {
    pub entry: *mut Entry<A>,
    pub table: Table,
}

/// The entry of a packet's direction, assured flows first.
#[inline(always)]
pub fn lookup<A: Family>(key: &Key<A>) -> Option<Tracked<A>> {
    if let Some(entry) = A::map(Table::Assured).get_ptr_mut(key) {
        return Some(Tracked { entry, table: Table::Assured });
    }
    if let Some(entry) = A::map(Table::Unassured).get_ptr_mut(key) {
        return Some(Tracked { entry, table: Table::Unassured });
    }
    A::map(Table::Overflow).get_ptr_mut(key).map(|entry| Tracked { entry, table: Table::Overflow })
}

/// The entry of `key` in `table`: a new flow's, just inserted there (no need to ask the
/// tables before it).
#[inline(always)]
pub fn lookup_in<A: Family>(table: Table, key: &Key<A>) -> Option<Tracked<A>> {
    table.map::<A>().get_ptr_mut(key).map(|entry| Tracked { entry, table })
}

/// Whether a TCP segment may start a flow. A SYN-ACK or RST without a flow answers nothing
/// bpfnet tracks (nf_conntrack calls it INVALID); a bare ACK may (nf_conntrack's loose
/// pick-up of a flow already under way, e.g. after its entry expired).
#[inline(always)]
pub fn may_start(proto: u8, tcp_flags: u8) -> bool {
    const SYN_ACK: u8 = ct_tcp_flags::SYN | ct_tcp_flags::ACK;
    proto != IPPROTO_TCP || (tcp_flags & ct_tcp_flags::RST == 0 && tcp_flags & SYN_ACK != SYN_ACK)
}

/// Where a tracked packet goes: its entry's translated tuple and the container's veth (0: out
/// of the uplink).
pub struct Forward<A: Family> {
    pub to: Key<A>,
    pub ifindex: u32,
}

/// Accounts one packet of `len` bytes to its entry and moves the flow along (its TCP close,
/// assurance and the move to `CT`). Returns where the packet goes, for the translation.
///
/// Entries are read and written in place (never copied whole): an IPv6 entry is 72 bytes, and
/// the programs' stack is 512.
#[inline(always)]
pub fn account<A: Family>(key: &Key<A>, found: Tracked<A>, len: u32, tcp_flags: u8) -> Forward<A> {
    let entry = found.entry;
    // SAFETY: a live map value; concurrent updates from other CPUs may lose an increment,
    // which only makes the counters approximate.
    let (seen, forward) = unsafe {
        (*entry).packets += 1;
        (*entry).bytes += len as u64;
        (*entry).last_seen_ns = bpf_ktime_get_ns();
        ((*entry).tcp_flags, Forward { to: (*entry).to, ifindex: (*entry).ifindex })
    };
    // An established flow's packet ends here: nothing it says is new.
    if found.table != Table::Assured
        || seen | tcp_flags != seen
        || tcp_flags & ct_tcp_flags::FIN != 0
        || seen & ct_tcp_flags::PEER_FIN != 0
    {
        progress(key, found, seen, tcp_flags);
    }
    forward
}

/// Records what a packet says about its flow (whose entry had the flags `seen`): its TCP
/// flags, the acknowledgement of the other side's FIN, the other side's PEER_FIN, assurance,
/// and then the move to `CT`.
#[inline(always)]
fn progress<A: Family>(key: &Key<A>, found: Tracked<A>, seen: u8, tcp_flags: u8) {
    let map = found.table.map::<A>();
    let entry = found.entry;
    // SAFETY: a live map value, its fields read once.
    let (direction, peer_key) = unsafe { ((*entry).direction, (*entry).to.reversed()) };
    let mut flags = seen | tcp_flags;
    if seen & ct_tcp_flags::PEER_FIN != 0 && tcp_flags & ct_tcp_flags::ACK != 0 {
        flags |= ct_tcp_flags::FIN_ACKED;
    }
    // `!= REPLY` rather than `== ORIGINAL` (0): LLVM would fold "no CT entry and direction 0"
    // into one OR of the lookup's pointer with the direction, which the verifier refuses.
    let unassured_original = found.table != Table::Assured && direction != ct_direction::REPLY;
    let needs_peer = tcp_flags & ct_tcp_flags::FIN != 0 && seen & ct_tcp_flags::FIN == 0
        || unassured_original && key.proto != A::ICMP;
    let peer = if needs_peer { map.get_ptr_mut(&peer_key) } else { None };
    if let Some(peer) = peer {
        if tcp_flags & ct_tcp_flags::FIN != 0 {
            // SAFETY: a live map value.
            unsafe { (*peer).tcp_flags |= ct_tcp_flags::PEER_FIN };
        }
        // SAFETY: as above.
        if unassured_original && becomes_assured::<A>(key.proto, tcp_flags, unsafe { &*peer }) {
            flags |= ct_tcp_flags::ASSURED;
        }
        if flags != seen {
            // SAFETY: a live map value.
            unsafe { (*entry).tcp_flags = flags };
        }
        if found.table != Table::Assured && flags & ct_tcp_flags::ASSURED != 0 {
            let newly = seen & ct_tcp_flags::ASSURED == 0;
            promote(key, entry, &peer_key, peer, found.table, newly);
        }
        return;
    }
    if flags != seen {
        // SAFETY: a live map value.
        unsafe { (*entry).tcp_flags = flags };
    }
}

/// Whether an ORIGINAL packet makes its flow assured: for TCP, the originator's ACK after the
/// other side's (the handshake's third packet, or a flow picked up under way); for UDP, the
/// originator sending again after an answer. ICMP echo never is, as in nf_conntrack.
#[inline(always)]
fn becomes_assured<A: Family>(proto: u8, tcp_flags: u8, reply: &Entry<A>) -> bool {
    match proto {
        IPPROTO_TCP => {
            tcp_flags & ct_tcp_flags::ACK != 0
                && tcp_flags & (ct_tcp_flags::SYN | ct_tcp_flags::RST) == 0
                && reply.tcp_flags & ct_tcp_flags::ACK != 0
        }
        IPPROTO_UDP => reply.packets > 0,
        _ => false,
    }
}

/// Moves an assured flow's two entries into `CT`, unless `CT` is at its limit (then it stays,
/// and is tried again with its next packet; counted once, when it `newly` became assured).
/// Another CPU moving it at the same time makes one of the NOEXIST inserts fail: that one
/// leaves it to the other.
#[inline(always)]
fn promote<A: Family>(
    key: &Key<A>,
    entry: *const Entry<A>,
    peer_key: &Key<A>,
    peer: *const Entry<A>,
    from: Table,
    newly: bool,
) {
    // SAFETY: live map values of `from` (its flags up to date), inserted into `CT` from where
    // they are, before they are removed from `from`.
    let (entry, peer) = unsafe { (&*entry, &*peer) };
    if reserve::<A>(config_ref().map_or(0, |cfg| cfg.ct_limit)).is_err() {
        if newly {
            add_stat(ct_stats::PROMOTION_REFUSED, 1);
        }
        return;
    }
    let assured = A::map(Table::Assured);
    if assured.insert(peer_key, peer, BPF_NOEXIST as u64).is_err() {
        return;
    }
    if assured.insert(key, entry, BPF_NOEXIST as u64).is_err() {
        let _ = assured.remove(peer_key);
        return;
    }
    account_inserted::<A>(2);
    // Read before the entry goes from `from`.
    let quota = if from == Table::Unassured { A::quota_key(key, entry) } else { None };
    let map = from.map::<A>();
    let _ = map.remove(key);
    let _ = map.remove(peer_key);
    if let Some(quota) = quota {
        quota_release(&quota);
    }
    add_stat(ct_stats::PROMOTED, 1);
}

/// Whose share of `CT_UNASSURED` a new flow counts against, and the container to count a
/// quota hit for.
pub struct Quota {
    pub key: CtQuotaKey,
    pub stats_slot: u32,
}

/// The table a new flow starts in: `CT_UNASSURED`, or `CT_OVERFLOW` when its quota key holds
/// its share already (counted, also for the container).
#[inline(always)]
pub fn table_for_new(cfg: &HostConfig, quota: &Quota) -> Table {
    if cfg.ct_unassured_quota == 0 {
        return Table::Unassured;
    }
    // SAFETY: a plain u64 map value, read once.
    let held = unsafe { CT_QUOTA.get(&quota.key) }.copied().unwrap_or(0);
    if held < cfg.ct_unassured_quota as u64 {
        return Table::Unassured;
    }
    add_stat(ct_stats::QUOTA_HITS, 1);
    if let Some(slot) = CT_QUOTA_HITS.get_ptr_mut(quota.stats_slot) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *slot += 1 };
    }
    Table::Overflow
}

/// Claims a tuple for a new flow's direction: inserts its entry into `table` unless the key is
/// tracked anywhere already. The NOEXIST insert makes the claim atomic within the table; the
/// lookups keep the other tables' flows' tuples theirs.
#[inline(always)]
pub fn claim<A: Family>(table: Table, key: &Key<A>, entry: &Entry<A>) -> bool {
    let elsewhere = match table {
        Table::Assured => in_table(Table::Unassured, key) || in_table(Table::Overflow, key),
        Table::Unassured => in_table(Table::Assured, key) || in_table(Table::Overflow, key),
        Table::Overflow => in_table(Table::Assured, key) || in_table(Table::Unassured, key),
    };
    !elsewhere && table.map::<A>().insert(key, entry, BPF_NOEXIST as u64).is_ok()
}

#[inline(always)]
fn in_table<A: Family>(table: Table, key: &Key<A>) -> bool {
    A::map(table).get_ptr(key).is_some()
}

/// Inserts the other direction of a flow whose reply tuple was claimed; on failure (another
/// CPU tracked the same flow meanwhile) gives the claimed tuple back.
#[inline(always)]
pub fn complete<A: Family>(table: Table, key: &Key<A>, entry: &Entry<A>, claimed: &Key<A>) -> bool {
    let map = table.map::<A>();
    if map.insert(key, entry, BPF_NOEXIST as u64).is_err() {
        let _ = map.remove(claimed);
        return false;
    }
    add_stat(if table == Table::Overflow { ct_stats::OVERFLOW_INSERTED } else { ct_stats::UNASSURED_INSERTED }, 2);
    true
}

/// Counts a new flow against its quota key's share (`CT_UNASSURED` only).
#[inline(always)]
pub fn quota_take(table: Table, key: &CtQuotaKey) {
    if table != Table::Unassured {
        return;
    }
    if CT_QUOTA.get_ptr_mut(key).is_none() {
        // A racing CPU may have created it: then this insert fails and its count is used.
        let _ = CT_QUOTA.insert(key, &0, BPF_NOEXIST as u64);
    }
    if let Some(slot) = CT_QUOTA.get_ptr_mut(key) {
        atomic_add(slot, 1);
    }
}

/// Gives back a flow's place in its quota key's share. Never below 0 (the agent's recount may
/// have left the count lower than the flows it saw being added since): an undercount lasts
/// until the next recount, a wrapped count would block the key.
#[inline(always)]
fn quota_release(key: &CtQuotaKey) {
    if let Some(slot) = CT_QUOTA.get_ptr_mut(key) {
        // SAFETY: an aligned u64 map value.
        if unsafe { *slot } > 0 {
            atomic_add(slot, u64::MAX);
        }
    }
}

#[inline(always)]
fn add_stat(slot: u32, n: u64) {
    if let Some(slot) = CT_STATS.get_ptr_mut(slot) {
        atomic_add(slot, n);
    }
}

/// The BPF atomic add instruction (core's atomics are not available for the bpf target).
#[inline(always)]
fn atomic_add(slot: *mut u64, n: u64) {
    // SAFETY: an aligned u64 map value.
    unsafe {
        core::arch::asm!("lock *(u64 *)({0} + 0) += {1}", in(reg) slot, in(reg) n);
    }
}

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// Refuses a flow the assured table has no room for, by the agent's fill limit.
#[inline(always)]
fn reserve<A: Family>(ct_limit: u32) -> Result<(), DropReason> {
    let fill = A::fill();
    let inserted = fill.get(ct_fill::INSERTED).copied().unwrap_or(0);
    let removed = fill.get(ct_fill::REMOVED).copied().unwrap_or(0);
    if inserted.saturating_sub(removed) + 2 > ct_limit as u64 {
        return Err(DropReason::ConntrackFull);
    }
    Ok(())
}

/// Records `n` new entries in the family's assured table.
#[inline(always)]
fn account_inserted<A: Family>(n: u64) {
    if let Some(slot) = A::fill().get_ptr_mut(ct_fill::INSERTED) {
        atomic_add(slot, n);
    }
}
