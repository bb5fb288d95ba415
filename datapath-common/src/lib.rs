//! Types shared by bpfnet's eBPF programs and its agent: map keys and values, map names,
//! drop reasons and counters. Everything here is `#[repr(C)]` and has the same layout on both
//! sides; IPv4 addresses are stored as they appear on the wire (network byte order), so the
//! datapath never converts them.
#![no_std]

mod ipv6;
pub use ipv6::*;

/// Names of the maps, as declared in the eBPF object and pinned under `<bpffs>/maps/`.
/// The kernel keeps at most 15 bytes of a map name.
pub mod map_names {
    /// IPv4 address -> [`Endpoint`](super::Endpoint): where a container address lives.
    pub const ENDPOINTS: &str = "ENDPOINTS";
    /// Host-side interface index -> [`Endpoint`](super::Endpoint): whose veth a packet came in on.
    pub const IFACES: &str = "IFACES";
    /// Network id -> [`Network`](super::Network).
    pub const NETWORKS: &str = "NETWORKS";
    /// Per-CPU drop counters indexed by [`DropReason`](super::DropReason).
    pub const DROPS: &str = "DROPS";
    /// Per-CPU event counters indexed by [`Counter`](super::Counter).
    pub const COUNTERS: &str = "COUNTERS";
    /// One [`HostConfig`](super::HostConfig): the uplink and the NAT settings.
    pub const CONFIG: &str = "CONFIG";
    /// Conntrack of assured flows (a TCP handshake completed, a UDP flow answered and
    /// continued): [`CtKey`](super::CtKey) -> [`CtEntry`](super::CtEntry), one entry per
    /// direction of a flow. LRU, sized by the agent (`--ct-size`), and kept below its fill
    /// limit so that the LRU never evicts an assured flow.
    pub const CT: &str = "CT";
    /// Conntrack fill of `CT`: see [`ct_fill`](super::ct_fill).
    pub const CT_FILL: &str = "CT_FILL";
    /// Conntrack of flows not assured yet (handshakes, unanswered datagrams, ICMP echo), the
    /// same keys and values as `CT`. LRU and allowed to fill: a new flow then evicts the
    /// oldest unassured one, as nf_conntrack's early_drop does. A flow moves to `CT` when it
    /// becomes assured.
    pub const CT_UNASSURED: &str = "CT_UNASSURED";
    /// Unassured flows of a container or published port that holds its share of
    /// `CT_UNASSURED` already ([`CtQuotaKey`](super::CtQuotaKey)): they compete only with
    /// each other here, so one flood cannot evict everyone else's handshakes. LRU.
    pub const CT_OVERFLOW: &str = "CT_OVERFLOW";
    /// [`CtQuotaKey`](super::CtQuotaKey) -> u64: unassured flows each holds in
    /// `CT_UNASSURED`. The datapath adds and subtracts; the agent recounts at every garbage
    /// collection (the LRU's own evictions are not seen by anyone).
    pub const CT_QUOTA: &str = "CT_QUOTA";
    /// Conntrack events: see [`ct_stats`](super::ct_stats).
    pub const CT_STATS: &str = "CT_STATS";
    /// Per-CPU u64, indexed by `Endpoint::stats_slot`: new flows of the container (its own,
    /// or to its published ports) that went to `CT_OVERFLOW` because their quota key held
    /// its share of `CT_UNASSURED`.
    pub const CT_QUOTA_HITS: &str = "CT_QUOTA_HITS";
    /// Published ports: [`PublishedPortKey`](super::PublishedPortKey) ->
    /// [`PublishedPortTarget`](super::PublishedPortTarget). The map keeps its older name: it
    /// is pinned by that name on running hosts, and a new name would leave their published
    /// ports behind in a map nothing reads.
    pub const PUBLISHED_PORTS: &str = "SERVICES";
    /// Per-CPU [`EndpointStats`](super::EndpointStats), indexed by `Endpoint::stats_slot`.
    pub const ENDPOINT_STATS: &str = "ENDPOINT_STATS";
    /// Host processes' sockets sent to a published port: [`SockRevNatKey`](super::SockRevNatKey)
    /// -> [`SockRevNat`](super::SockRevNat), the published address to show for the container's.
    /// LRU, filled by the connect4/sendmsg4/connect6 hooks (connect6 for IPv4-mapped
    /// addresses and `::1` of ports published on IPv4 only), read by recvmsg4/getpeername4 and
    /// recvmsg6/getpeername6.
    pub const SOCK_REV_NAT: &str = "SOCK_REV_NAT";
    /// The same for AF_INET6 sockets sent to a container's IPv6 address:
    /// [`SockRevNatKey6`](super::SockRevNatKey6) -> [`SockRevNat6`](super::SockRevNat6). LRU,
    /// filled by the connect6/sendmsg6 hooks, read by recvmsg6/getpeername6.
    pub const SOCK_REV_NAT6: &str = "SOCK_REV_NAT6";
    /// Fragmented datagrams of tracked flows: [`FragKey`](super::FragKey) ->
    /// [`FragPorts`](super::FragPorts), the ports of the first fragment for the later ones.
    /// LRU, written and read by the datapath only.
    pub const FRAGS: &str = "FRAGS";
    /// IPv6's conntrack, beside IPv4's: the same three tables (`CT6`: assured, `CT6_UNASSURED`,
    /// `CT6_OVERFLOW`) with [`CtKey6`](super::CtKey6) -> [`CtEntry6`](super::CtEntry6), sized
    /// as IPv4's are (`--ct-size`), and `CT6`'s fill count (`CT6_FILL`, as `CT_FILL`). Both
    /// families share `CT_QUOTA` (an IPv6 flow counts against its container's IPv4 address:
    /// one share per container), `CT_QUOTA_HITS` and `CT_STATS`.
    pub const CT6: &str = "CT6";
    pub const CT6_UNASSURED: &str = "CT6_UNASSURED";
    pub const CT6_OVERFLOW: &str = "CT6_OVERFLOW";
    pub const CT6_FILL: &str = "CT6_FILL";
    /// Per-CPU u64, indexed by `Endpoint::stats_slot`: packets the container sent that the
    /// datapath dropped (any reason).
    pub const ENDPOINT_DROPS: &str = "ENDPOINT_DROPS";
    /// Ring buffer of [`DatapathEvent`](super::DatapathEvent)s, read by the agent (`bpfnet
    /// monitor`). Written only while a `host_config_flags::EVENTS_*` bit is set.
    pub const EVENTS: &str = "EVENTS";
    /// Per-CPU [`EventBudget`](super::EventBudget): the token bucket that bounds the events
    /// each CPU writes.
    pub const EVENT_BUDGET: &str = "EVENT_BUDGET";
    /// Per-CPU u64 indexed by [`EventLoss`](super::EventLoss): events not written, by cause.
    pub const EVENTS_LOST: &str = "EVENTS_LOST";
    /// IPv6 address -> [`Endpoint6`](super::Endpoint6): where a container's IPv6 address lives.
    pub const ENDPOINTS6: &str = "ENDPOINTS6";
    /// Host-side interface index -> [`Endpoint6`](super::Endpoint6): the IPv6 side of the
    /// container behind it. No entry: the container has no IPv6, and its IPv6 is dropped.
    pub const IFACES6: &str = "IFACES6";
    /// One [`HostConfig6`](super::HostConfig6): the uplink's IPv6 address.
    pub const CONFIG6: &str = "CONFIG6";
    /// Published ports reached over IPv6: [`PublishedPortKey6`](super::PublishedPortKey6) ->
    /// [`PublishedPortTarget6`](super::PublishedPortTarget6).
    pub const PUBLISHED_PORTS6: &str = "PUBLISHED6";
    /// Fragmented IPv6 datagrams of tracked flows: [`FragKey6`](super::FragKey6) ->
    /// [`FragPorts`](super::FragPorts), as `FRAGS` for IPv4.
    pub const FRAGS6: &str = "FRAGS6";
    /// The tail calls of the TC programs (a program array): slot [`tail_call_slots`]
    /// -> program. `from_endpoint` and `from_uplink` hand IPv6 to programs of their own, as
    /// Cilium does, because their own stack is nearly full. The agent fills it when it loads
    /// the datapath and on every upgrade.
    ///
    /// [`tail_call_slots`]: super::tail_call_slots
    pub const TAIL_CALLS: &str = "TAIL_CALLS";
    /// The same for the XDP uplink program: a program array holds programs of one type only.
    pub const TAIL_CALLS_XDP: &str = "TAIL_CALLS_XDP";
}

/// Slots of the program arrays `TAIL_CALLS` (TC) and `TAIL_CALLS_XDP` (XDP). An empty slot
/// (an older agent filled the arrays) makes the tail call fail: the caller then treats IPv6 as
/// an IPv4-only datapath did (from a container: dropped, `UnsupportedL3`; on the uplink: passed).
pub mod tail_call_slots {
    /// `from_endpoint6` (TC): IPv6 from a container.
    pub const FROM_ENDPOINT6: u32 = 0;
    /// `from_uplink6` (TC) in `TAIL_CALLS`, `from_uplink6xdp` in `TAIL_CALLS_XDP`: IPv6 on
    /// the uplink.
    pub const FROM_UPLINK6: u32 = 1;
    /// `icmp6_err_up` (TC) in `TAIL_CALLS`, `icmp6_err_upxdp` in `TAIL_CALLS_XDP`: an ICMPv6
    /// error on the uplink, from `from_uplink6` (whose stack has no room for its translation).
    pub const ICMP6_ERROR_FROM_UPLINK: u32 = 2;
    /// Slots of each array.
    pub const SLOTS: u32 = 3;
}

/// Names of the programs in the eBPF object.
pub mod program_names {
    /// TC ingress of a container's host-side veth: packets the container sends. At most 15
    /// bytes: the kernel truncates longer program names.
    pub const FROM_ENDPOINT: &str = "from_endpoint";
    /// TC ingress of the host's uplink: replies to translated flows, and ICMP errors about them.
    pub const FROM_UPLINK: &str = "from_uplink";
    /// The same as FROM_UPLINK, as an XDP program on the uplink (`--uplink-mode xdp`).
    pub const FROM_UPLINK_XDP: &str = "from_uplink_xdp";
    /// cgroup connect4 of the host cgroup (`--host-cgroup`): a host process's TCP or UDP
    /// connect to a published port goes to the container's address and port instead.
    pub const SOCK_CONNECT4: &str = "sock_connect4";
    /// cgroup sendmsg4: the same for a datagram sent with an address (unconnected UDP), also
    /// from an AF_INET6 socket to an IPv4-mapped address, which the kernel sends as IPv4.
    pub const SOCK_SENDMSG4: &str = "sock_sendmsg4";
    /// cgroup recvmsg4: a reply from the container shows the published address as its source.
    pub const SOCK_RECVMSG4: &str = "sock_recvmsg4";
    /// cgroup getpeername4: a connected socket's peer is the published address.
    pub const SOCK_GETPEER4: &str = "sock_getpeer4";
    /// cgroup connect6: an AF_INET6 socket's connect to a published port goes to the
    /// container's address and port instead: named by `::1`, the uplink's IPv6 address or the
    /// address it was published on, to the container's IPv6 address (`PUBLISHED6`); named by
    /// its IPv4-mapped address (`::ffff:a.b.c.d`), or by `::1` when the port is published on
    /// IPv4 only, to the container's IPv4-mapped address.
    pub const SOCK_CONNECT6: &str = "sock_connect6";
    /// cgroup sendmsg6: the same for an AF_INET6 socket's datagram sent with an IPv6 address
    /// (unconnected UDP), to the container's IPv6 address only (`PUBLISHED6`).
    pub const SOCK_SENDMSG6: &str = "sock_sendmsg6";
    /// cgroup recvmsg6: a reply from the container shows the address the socket sent to.
    pub const SOCK_RECVMSG6: &str = "sock_recvmsg6";
    /// cgroup getpeername6: a connected AF_INET6 socket's peer is the address it connected to.
    pub const SOCK_GETPEER6: &str = "sock_getpeer6";
    /// IPv6 from a container: `from_endpoint`'s tail call for EtherType IPv6.
    pub const FROM_ENDPOINT6: &str = "from_endpoint6";
    /// IPv6 on the uplink: `from_uplink`'s tail call.
    pub const FROM_UPLINK6: &str = "from_uplink6";
    /// IPv6 on the uplink at XDP: `from_uplink_xdp`'s tail call (15 bytes, the kernel's limit).
    pub const FROM_UPLINK6_XDP: &str = "from_uplink6xdp";
    /// An ICMPv6 error on the uplink: `from_uplink6`'s tail call.
    pub const ICMP6_ERROR_FROM_UPLINK: &str = "icmp6_err_up";
    /// The same at XDP: `from_uplink6xdp`'s tail call (15 bytes).
    pub const ICMP6_ERROR_FROM_UPLINK_XDP: &str = "icmp6_err_upxdp";
    /// The tail-call targets, with the program array and slot each is reached through.
    pub const TAIL_CALLED: [(&str, &str, u32); 5] = [
        (FROM_ENDPOINT6, super::map_names::TAIL_CALLS, super::tail_call_slots::FROM_ENDPOINT6),
        (FROM_UPLINK6, super::map_names::TAIL_CALLS, super::tail_call_slots::FROM_UPLINK6),
        (FROM_UPLINK6_XDP, super::map_names::TAIL_CALLS_XDP, super::tail_call_slots::FROM_UPLINK6),
        (ICMP6_ERROR_FROM_UPLINK, super::map_names::TAIL_CALLS, super::tail_call_slots::ICMP6_ERROR_FROM_UPLINK),
        (
            ICMP6_ERROR_FROM_UPLINK_XDP,
            super::map_names::TAIL_CALLS_XDP,
            super::tail_call_slots::ICMP6_ERROR_FROM_UPLINK,
        ),
    ];
}

/// An IPv4 address in network byte order, as read from a packet (`u32::from_ne_bytes(octets)`).
pub type Ipv4Be = u32;

/// Converts an address to the map representation.
#[inline(always)]
pub const fn ipv4_be(octets: [u8; 4]) -> Ipv4Be {
    u32::from_ne_bytes(octets)
}

/// A container's interface as the datapath sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Index of the host-side veth (in the host namespace); `bpf_redirect_peer` to it
    /// delivers into the container.
    pub host_ifindex: u32,
    pub network_id: u32,
    pub ip: Ipv4Be,
    /// MAC of the container's eth0.
    pub mac: [u8; 6],
    /// MAC of the container's gateway, the source of what the datapath delivers to it.
    pub gateway_mac: [u8; 6],
    /// The endpoint's slot in `ENDPOINT_STATS`.
    pub stats_slot: u32,
    /// The network's gateway address, kept here so that the per-packet path needs no
    /// NETWORKS lookup to tell traffic for the gateway.
    pub gateway: Ipv4Be,
}

/// Traffic of one endpoint, per CPU, in `ENDPOINT_STATS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EndpointStats {
    /// What the container sent (all of it, dropped or not).
    pub sent_packets: u64,
    pub sent_bytes: u64,
    /// What the datapath delivered into the container.
    pub received_packets: u64,
    pub received_bytes: u64,
}

/// A network: a subnet with a gateway, whose members may talk to each other.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    pub subnet: Ipv4Be,
    pub gateway: Ipv4Be,
    /// The MAC that answers for the gateway; every host-side veth of the network carries it.
    pub gateway_mac: [u8; 6],
    pub prefix_len: u8,
    pub _pad: u8,
}

/// Declares a `#[repr(u32)]` enum whose values index a counter array, with its `COUNT`, every
/// variant in order (`ALL`) and the names `bpfnet status` shows, from one list.
macro_rules! indexed_enum {
    ($(#[$meta:meta])* $enum:ident { $($(#[$vmeta:meta])* $variant:ident = $value:literal => $name:literal,)* }) => {
        $(#[$meta])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $enum {
            $($(#[$vmeta])* $variant = $value,)*
        }

        impl $enum {
            pub const COUNT: u32 = [$(stringify!($variant)),*].len() as u32;
            pub const ALL: [$enum; Self::COUNT as usize] = [$($enum::$variant,)*];

            pub const fn name(self) -> &'static str {
                match self {
                    $($enum::$variant => $name,)*
                }
            }
        }
    };
}

indexed_enum! {
    /// Why the datapath dropped a packet. Each reason has a per-CPU counter in `DROPS`.
    DropReason {
        /// A header was cut short or inconsistent.
        Malformed = 0 => "malformed",
        /// Neither IPv4, IPv6 nor ARP (VLAN tags, ...), or IPv6 from a container without an
        /// IPv6 address (its network has no IPv6 subnet).
        UnsupportedL3 = 1 => "unsupported_l3",
        /// The packet came in on an interface that is not (or no longer) a bpfnet endpoint.
        UnknownInterface = 2 => "unknown_interface",
        /// The source IPv4 or MAC address is not the sending container's own.
        SpoofedSource = 3 => "spoofed_source",
        /// The destination is a container of another network: networks are isolated.
        CrossNetwork = 4 => "cross_network",
        /// An ARP request for an address that is neither the gateway nor a member of the network.
        ArpUnknownTarget = 5 => "arp_unknown_target",
        /// An ARP packet that is not an Ethernet/IPv4 request or reply, or a reply claiming an
        /// address that is not the sender's.
        ArpInvalid = 6 => "arp_invalid",
        /// The endpoint's network is not in `NETWORKS` (a control-plane inconsistency).
        UnknownNetwork = 7 => "unknown_network",
        /// A redirect helper failed (the target interface vanished).
        RedirectFailed = 8 => "redirect_failed",
        /// No free NAT port for this destination in the configured range.
        NatPortsExhausted = 9 => "nat_ports_exhausted",
        /// Retired: new flows are no longer refused when the conntrack table is full (they
        /// take the place of the oldest unassured flow). The slot keeps the counters' indices.
        ConntrackFull = 10 => "conntrack_full",
        /// A protocol that cannot be translated (only TCP, UDP and ICMP echo are).
        UnsupportedL4 = 11 => "unsupported_l4",
        /// A non-first IPv4 fragment from a container whose first fragment was not seen (it
        /// came later, or not at all): without it there are no ports to find the flow by.
        FragmentWithoutFirst = 12 => "fragment_without_first",
        /// A checksum helper or a packet rewrite failed.
        RewriteFailed = 13 => "rewrite_failed",
        /// A new flow could not be tracked: its other direction's tuple is already taken.
        ConntrackInsertFailed = 14 => "conntrack_insert_failed",
        /// A container addressed the host itself (not its gateway), which is not allowed.
        HostAccessDenied = 15 => "host_access_denied",
        /// A TCP segment from a container that can start no flow and belongs to none: a
        /// SYN-ACK or RST without a tracked flow (nf_conntrack calls it INVALID).
        ConntrackInvalid = 16 => "conntrack_invalid",
        /// A packet on the uplink for a container of this host (native routing) whose source is
        /// a container of this host too: such a packet never comes from outside.
        UplinkSpoofedPod = 17 => "uplink_spoofed_pod",
        /// A neighbour discovery message from a container that is no valid solicitation or
        /// advertisement (RFC 4861: hop limit 255, code 0, the whole message present), or one
        /// only routers send (router advertisement, redirect).
        NdpInvalid = 18 => "ndp_invalid",
        /// A neighbour solicitation for an address that is neither the gateway's nor a member's
        /// of the network.
        NdpUnknownTarget = 19 => "ndp_unknown_target",
        /// An IPv6 packet with more extension headers than the datapath walks
        /// (`MAX_EXTENSION_HEADERS`), or one it cannot walk (an unknown one before the L4 header
        /// is taken as that header; a second fragment header is refused here).
        Ipv6ExtensionHeaders = 20 => "ipv6_extension_headers",
        /// An IPv6 fragment other than the first, from a container to the outside, whose first
        /// fragment was not seen (it came later, or not at all): without it there are no ports
        /// to find the flow by (IPv6's `fragment_without_first`).
        Ipv6LaterFragment = 21 => "ipv6_later_fragment",
    }
}

indexed_enum! {
    /// What the datapath did with packets it did not drop. Per-CPU counters in `COUNTERS`.
    Counter {
        /// Delivered straight into another container of the same network.
        Forwarded = 0 => "forwarded",
        /// Handed to the host's stack (the gateway, or anything not for a container).
        ToHost = 1 => "to_host",
        /// ARP requests answered from the maps.
        ArpReplied = 2 => "arp_replied",
        /// ARP replies from a container passed to the host (answers to the host's own requests).
        ArpToHost = 3 => "arp_to_host",
        /// New flows source-translated to the uplink's address.
        SnatNewFlow = 4 => "snat_new_flow",
        /// Translated packets routed out of the uplink.
        TranslatedOut = 5 => "translated_out",
        /// Translated packets delivered into a container.
        TranslatedIn = 6 => "translated_in",
        /// ICMP errors about a translated flow, translated back (inner header included).
        IcmpErrorTranslated = 7 => "icmp_error_translated",
        /// Packets on the uplink that belong to no bpfnet flow, passed to the host untouched.
        UplinkToHost = 8 => "uplink_to_host",
        /// New flows to a published port from outside.
        DnatNewFlow = 9 => "dnat_new_flow",
        /// New flows from a container to a published port of the host.
        HairpinNewFlow = 10 => "hairpin_new_flow",
        /// Packets from a container to the cluster CIDR (another node's pod), routed out of the
        /// uplink untranslated and untracked (native routing).
        RoutedNative = 11 => "routed_native",
        /// Packets on the uplink for a container of this host inside the cluster CIDR that
        /// belong to no tracked flow (another node's pod, or a reply to one), delivered
        /// untranslated (native routing).
        DeliveredNative = 12 => "delivered_native",
        /// Neighbour solicitations answered from the maps.
        NdpReplied = 13 => "ndp_replied",
        /// Neighbour advertisements from a container passed to the host (answers to the host's
        /// own solicitations).
        NdpToHost = 14 => "ndp_to_host",
        /// Neighbour discovery and MLD messages from a container that need no answer, dropped
        /// without one: duplicate address detection (containers' addresses are configured with
        /// `nodad`), router solicitations (containers are configured statically: no router
        /// advertisement may reconfigure them) and multicast listener reports (nothing
        /// forwards multicast between containers).
        NdpIgnored = 15 => "ndp_ignored",
    }
}

/// Host-wide settings, the single entry of `CONFIG`. An `uplink_ifindex` of 0 means no
/// uplink: traffic leaving the networks goes to the host stack untranslated.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HostConfig {
    pub uplink_ifindex: u32,
    /// The address flows are masqueraded to (the uplink's primary IPv4 address).
    pub uplink_ip: Ipv4Be,
    /// NAT source ports, inclusive, host byte order.
    pub nat_port_min: u16,
    pub nat_port_max: u16,
    /// New flows are refused (`ConntrackFull`) once this many entries are in use.
    pub ct_limit: u32,
    /// `host_config_flags` bits.
    pub flags: u32,
    /// Most unassured flows one [`CtQuotaKey`] may hold in `CT_UNASSURED`; its further new
    /// flows go to `CT_OVERFLOW`. 0: no quota (an older agent's CONFIG).
    pub ct_unassured_quota: u32,
    /// The network namespace cookie (SO_NETNS_COOKIE) of the host namespace: the socket hooks
    /// of `--host-cgroup` act only for sockets in it. 0: they act for none.
    pub host_netns_cookie: u64,
    /// The cluster's pod CIDR (`--cluster-cidr`, Cilium's native-routing CIDR): a container's
    /// traffic to it is routed untranslated, and traffic on the uplink to a container inside
    /// it is delivered. `cluster_net` is the prefix's address, `cluster_mask` its netmask,
    /// both in network byte order; a mask of 0 means no cluster CIDR (an older agent's CONFIG,
    /// whose bytes here were zero: everything is masqueraded as before). Here rather than in
    /// a map of its own: the agent writes it with the uplink in one update (never one without
    /// the other), and the datapath reads it with the settings it reads anyway; the growth of
    /// CONFIG is migrated on upgrade (the agent's `OutgrownConfig`).
    pub cluster_net: Ipv4Be,
    pub cluster_mask: Ipv4Be,
}

impl HostConfig {
    /// Whether `addr` lies in the cluster CIDR (never, when none is set).
    #[inline(always)]
    pub const fn in_cluster(&self, addr: Ipv4Be) -> bool {
        self.cluster_mask != 0 && addr & self.cluster_mask == self.cluster_net
    }
}

pub mod host_config_flags {
    /// Containers may reach the host's own addresses, not only their gateway.
    pub const ALLOW_HOST_ACCESS: u32 = 1;
    /// Write a [`DatapathEvent`](super::DatapathEvent) for every drop (someone listens).
    pub const EVENTS_DROPS: u32 = 2;
    /// Write a [`DatapathEvent`](super::DatapathEvent) for every new translated flow.
    pub const EVENTS_FLOWS: u32 = 4;
    /// The bits the agent's monitor owns; the host settings leave them as they are.
    pub const EVENTS: u32 = EVENTS_DROPS | EVENTS_FLOWS;
}

/// What a [`DatapathEvent`] reports.
pub mod event_kind {
    /// A dropped packet: `detail` is its [`DropReason`](super::DropReason).
    pub const DROP: u8 = 0;
    /// A new translated flow: `detail` is its [`ct_kind`](super::ct_kind), `tuple` its first
    /// packet's tuple and `translated` that tuple after translation.
    pub const NEW_FLOW: u8 = 1;
}

/// One event of the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DatapathEvent {
    /// An [`event_kind`].
    pub kind: u8,
    pub detail: u8,
    pub _pad: u16,
    /// The interface the packet came in on.
    pub ifindex: u32,
    /// The packet's length (the whole frame).
    pub len: u32,
    pub _pad2: u32,
    /// The packet's addresses, ports (0 where it has none, as ICMP and later fragments) and
    /// protocol (0: not IPv4).
    pub tuple: CtKey,
    /// A new flow's tuple after translation; zero for a drop.
    pub translated: CtKey,
}

/// Each CPU writes at most [`EventBudget::BURST`] events at once and
/// 1e9 / [`EventBudget::NS_PER_EVENT`] a second: a flood of drops costs the ring buffer and
/// its reader a bounded amount, and the rest is counted as lost.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EventBudget {
    pub tokens: u64,
    /// bpf_ktime_get_ns() up to which tokens have been added.
    pub refilled_ns: u64,
}

impl EventBudget {
    pub const BURST: u64 = 1_024;
    /// 10,000 events a second per CPU.
    pub const NS_PER_EVENT: u64 = 100_000;
}

indexed_enum! {
    /// Why an event was not written. Per-CPU counters in `EVENTS_LOST`.
    EventLoss {
        /// The CPU's [`EventBudget`] was spent.
        RateLimited = 0 => "rate_limited",
        /// The ring buffer was full: its reader is behind.
        RingFull = 1 => "ring_full",
    }
}

/// Most endpoints (containers) per host; also the size of `ENDPOINT_STATS`.
pub const MAX_ENDPOINTS: u32 = 65_536;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// ICMPv6's protocol number (IPv6's next header).
pub const IPPROTO_ICMPV6: u8 = 58;

/// A conntrack key: one direction of a flow, as the packets of that direction carry it, for
/// either address family (`A`: [`Ipv4Be`] or [`Ipv6Be`]). Ports in network byte order; for
/// ICMP and ICMPv6 echo the identifier stands in as a port (the source port of requests, the
/// destination port of replies).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CtKeyOf<A> {
    pub saddr: A,
    pub daddr: A,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// IPv4's conntrack key (the layout of the pinned `CT` maps).
pub type CtKey = CtKeyOf<Ipv4Be>;
/// IPv6's conntrack key, in `CT6`, `CT6_UNASSURED` and `CT6_OVERFLOW`.
pub type CtKey6 = CtKeyOf<Ipv6Be>;

/// Which direction of its flow a [`CtEntry`] describes.
pub mod ct_direction {
    /// Sent by a container (before translation).
    pub const ORIGINAL: u8 = 0;
    /// Received on the uplink (before translation back).
    pub const REPLY: u8 = 1;
}

/// What a direction has seen, accumulated in [`CtEntry::tcp_flags`]: the TCP flags it sent,
/// and the progress of the flow that the agent derives nf_conntrack's states from.
pub mod ct_tcp_flags {
    pub const SYN: u8 = 0x01;
    pub const ACK: u8 = 0x02;
    pub const FIN: u8 = 0x04;
    pub const RST: u8 = 0x08;
    /// The other direction sent a FIN (set by that direction's packet).
    pub const PEER_FIN: u8 = 0x10;
    /// This direction sent an ACK after the other's FIN: it acknowledged the close.
    pub const FIN_ACKED: u8 = 0x20;
    /// ORIGINAL only: the flow became assured (TCP: the originator's ACK completed the
    /// handshake; UDP: the originator sent again after an answer). It then lives in `CT`,
    /// unless that table was at its limit.
    pub const ASSURED: u8 = 0x40;
    /// The flags a TCP header contributes; the others are the flow's progress.
    pub const FROM_HEADER: u8 = SYN | ACK | FIN | RST;
}

/// What started a flow, for listing.
pub mod ct_kind {
    /// A container's flow to the outside, masqueraded to the uplink's address.
    pub const SNAT: u8 = 0;
    /// A flow from outside to a published port, translated to the container.
    pub const DNAT: u8 = 1;
    /// A container's flow to a published port of the host (its own or another container's):
    /// both destination and source are translated, so the replies come back the same way.
    pub const HAIRPIN: u8 = 2;

    /// As `conntrack ls`, `bpfnet monitor` and the metrics name a kind.
    pub const fn name(kind: u8) -> &'static str {
        match kind {
            SNAT => "snat",
            DNAT => "dnat",
            HAIRPIN => "hairpin",
            _ => "unknown",
        }
    }
}

/// One direction of a tracked flow: how its packets are translated and where they go. `K` is
/// the family's key ([`CtKey`] or [`CtKey6`]); everything else is the same for both.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtEntryOf<K> {
    /// bpf_ktime_get_ns() of the last packet.
    pub last_seen_ns: u64,
    pub packets: u64,
    pub bytes: u64,
    /// The packet's tuple after translation (equal to the key where nothing changes).
    pub to: K,
    /// Deliver into the container behind this host-side veth; 0: route (out of the uplink).
    pub ifindex: u32,
    pub direction: u8,
    pub tcp_flags: u8,
    pub kind: u8,
    pub _pad: u8,
}

/// IPv4's conntrack entry (the layout of the pinned `CT` maps).
pub type CtEntry = CtEntryOf<CtKey>;
/// IPv6's conntrack entry.
pub type CtEntry6 = CtEntryOf<CtKey6>;

impl<A: Copy> CtKeyOf<A> {
    /// The same flow seen from the other side: addresses and ports swapped.
    #[inline(always)]
    pub const fn reversed(&self) -> Self {
        CtKeyOf {
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
            _pad: [0; 3],
        }
    }

    /// The key of the other direction of the flow this key's `entry` belongs to: that
    /// direction's packets carry the translated tuple, reversed. For ICMP echo the identifier
    /// moves from the source-port slot (request) to the destination-port slot (reply).
    #[inline(always)]
    pub const fn counterpart(entry: &CtEntryOf<Self>) -> Self {
        entry.to.reversed()
    }
}

/// A published port: (host address, port, protocol) -> container. `addr` 0 stands for the
/// uplink's address (Docker's "all host addresses").
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PublishedPortKey {
    pub addr: Ipv4Be,
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Where a published port leads: the container's address and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PublishedPortTarget {
    pub ip: Ipv4Be,
    /// Network byte order.
    pub port: u16,
    pub _pad: u16,
}

/// A host process's socket talking to a container through a published port: the socket
/// (`bpf_get_socket_cookie`) and the container's address and port it was sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SockRevNatKey {
    pub socket_cookie: u64,
    /// The published port's [`PublishedPortTarget`].
    pub target_ip: Ipv4Be,
    /// Network byte order.
    pub target_port: u16,
    pub _pad: u16,
}

/// The published address and port the process addressed, shown to it in place of the
/// container's (recvfrom's source, getpeername).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockRevNat {
    pub addr: Ipv4Be,
    /// Network byte order.
    pub port: u16,
    /// How the process named `addr`: [`SockRevNat::ADDRESSED_AS_IPV4`] or
    /// [`SockRevNat::ADDRESSED_AS_IPV6_LOOPBACK`]. It took a byte that was padding, so the
    /// layout (and the pinned map) stays as older versions made it, and their entries read as
    /// `ADDRESSED_AS_IPV4`.
    pub addressed_as: u8,
    pub _pad: u8,
}

impl SockRevNat {
    /// `addr` itself: an AF_INET socket's address, or an AF_INET6 socket's IPv4-mapped one
    /// (`::ffff:a.b.c.d`), shown back as it was given.
    pub const ADDRESSED_AS_IPV4: u8 = 0;
    /// An AF_INET6 socket's `::1`, taken as 127.0.0.1 (`addr`) and shown back as `::1`.
    pub const ADDRESSED_AS_IPV6_LOOPBACK: u8 = 1;
}

/// A fragmented IPv4 datagram, as its fragments travel: addresses, identification (network
/// byte order) and protocol, which all its fragments share (RFC 791).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FragKey {
    pub saddr: Ipv4Be,
    pub daddr: Ipv4Be,
    pub id: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// The ports of a fragmented datagram's first fragment, as its [`CtKey`] has them: only the
/// first fragment carries the L4 header.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FragPorts {
    pub sport: u16,
    pub dport: u16,
}

/// Whose share of the unassured table a new flow counts against: the container that opened
/// it (`port` and `proto` 0), or, for a flow from outside to a published port, the container
/// address, port and protocol it is published to. Ports in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct CtQuotaKey {
    pub addr: Ipv4Be,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

impl CtQuotaKey {
    /// The quota key of an IPv4 flow, from its ORIGINAL key and entry.
    pub const fn of_flow(original: &CtKey, entry: &CtEntry) -> CtQuotaKey {
        let (addr, port, proto) = CtQuotaKey::owner(original, entry);
        CtQuotaKey { addr, port, proto, _pad: 0 }
    }

    /// Whose share a flow counts against, in the flow's own family: the container that opened
    /// it (port and protocol 0), or the container (address, port, protocol) a flow to a
    /// published port was sent to. An IPv6 flow's quota key has that container's IPv4 address
    /// (`Endpoint6::ip4`) instead of its IPv6 one: one container, one share.
    pub const fn owner<A: Copy>(original: &CtKeyOf<A>, entry: &CtEntryOf<CtKeyOf<A>>) -> (A, u16, u8) {
        if entry.kind == ct_kind::DNAT {
            (entry.to.daddr, entry.to.dport, original.proto)
        } else {
            (original.saddr, 0, 0)
        }
    }
}

/// Slots of `CT_STATS`, u64 counters of conntrack's tables, written atomically by the datapath
/// (but `GC_REMOVED` and `EARLY_DROPS`, which the agent's garbage collection writes).
pub mod ct_stats {
    /// Entries inserted into `CT_UNASSURED`.
    pub const UNASSURED_INSERTED: u32 = 0;
    /// Entries inserted into `CT_OVERFLOW`.
    pub const OVERFLOW_INSERTED: u32 = 1;
    /// Flows moved from an unassured table to `CT` (two entries each).
    pub const PROMOTED: u32 = 2;
    /// Flows that became assured while `CT` was at its limit: they stay where they are.
    pub const PROMOTION_REFUSED: u32 = 3;
    /// New flows over their quota key's share, sent to `CT_OVERFLOW`.
    pub const QUOTA_HITS: u32 = 4;
    /// Entries the agent's garbage collection removed from the two unassured tables.
    pub const GC_REMOVED: u32 = 5;
    /// Entries of the two unassured tables the kernel's LRU evicted for new ones (early
    /// drops), as of the last garbage collection: nobody sees an eviction, so it is derived
    /// from the other slots and the entries the collection found.
    pub const EARLY_DROPS: u32 = 6;
    pub const SLOTS: u32 = 8;
}

/// Slots of `CT_FILL`: entries in use = INSERTED - REMOVED. The datapath adds to INSERTED
/// atomically; only the agent writes REMOVED (when it expires entries, and to resynchronise
/// with the real count, as LRU may have evicted entries on its own).
pub mod ct_fill {
    pub const INSERTED: u32 = 0;
    pub const REMOVED: u32 = 1;
    pub const SLOTS: u32 = 2;
}

/// The benchmark's structural floor (datapath-ebpf's `bench-floor` object, loaded by
/// `bpfnet-devkit floor-attach`): not part of bpfnet's datapath.
pub mod bench_floor {
    /// The floor program and its map.
    pub const PROGRAM: &str = "bench_floor";
    pub const DESTS_MAP: &str = "FLOOR_DESTS";

    /// Where the floor delivers a container's address: `bpf_redirect_peer` to the host-side
    /// veth, with the MACs bpfnet writes.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct FloorDest {
        pub host_ifindex: u32,
        /// MAC of the container's eth0.
        pub mac: [u8; 6],
        /// The source MAC written: the host-side veth's (the container's gateway).
        pub gateway_mac: [u8; 6],
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` data with explicit padding fields, valid for any bit pattern.
    unsafe impl aya::Pod for super::Endpoint {}
    unsafe impl aya::Pod for super::bench_floor::FloorDest {}
    unsafe impl aya::Pod for super::Network {}
    unsafe impl aya::Pod for super::HostConfig {}
    unsafe impl aya::Pod for super::CtKey {}
    unsafe impl aya::Pod for super::CtEntry {}
    unsafe impl aya::Pod for super::CtKey6 {}
    unsafe impl aya::Pod for super::CtEntry6 {}
    unsafe impl aya::Pod for super::PublishedPortKey {}
    unsafe impl aya::Pod for super::PublishedPortTarget {}
    unsafe impl aya::Pod for super::EndpointStats {}
    unsafe impl aya::Pod for super::SockRevNatKey {}
    unsafe impl aya::Pod for super::SockRevNat {}
    unsafe impl aya::Pod for super::FragKey {}
    unsafe impl aya::Pod for super::FragPorts {}
    unsafe impl aya::Pod for super::CtQuotaKey {}
    unsafe impl aya::Pod for super::DatapathEvent {}
    unsafe impl aya::Pod for super::EventBudget {}
}

// Layouts both sides rely on: no implicit padding anywhere (every byte is a named field).
const _: () = {
    // CONFIG's value size: every layout of earlier versions is a prefix of this one (fields
    // are only ever added at the end), which the agent's migration relies on.
    assert!(core::mem::size_of::<HostConfig>() == 40);
    assert!(core::mem::offset_of!(HostConfig, host_netns_cookie) == 24);
    assert!(core::mem::offset_of!(HostConfig, cluster_net) == 32);
    assert!(core::mem::size_of::<SockRevNatKey>() == 16);
    // The pinned map's value size: changing it would need a migration, as CONFIG has.
    assert!(core::mem::size_of::<SockRevNat>() == 8);
    assert!(core::mem::offset_of!(SockRevNat, addressed_as) == 6);
    assert!(core::mem::size_of::<FragKey>() == 12);
    assert!(core::mem::size_of::<FragPorts>() == 4);
    assert!(core::mem::size_of::<CtQuotaKey>() == 8);
    // IPv4's conntrack maps are pinned on running hosts: the generic types keep their layout.
    assert!(core::mem::size_of::<CtKey>() == 16);
    assert!(core::mem::size_of::<CtEntry>() == 48);
    assert!(core::mem::offset_of!(CtEntry, to) == 24);
    assert!(core::mem::offset_of!(CtEntry, ifindex) == 40);
    assert!(core::mem::size_of::<CtKey6>() == 40);
    assert!(core::mem::size_of::<CtEntry6>() == 72);
    assert!(core::mem::offset_of!(CtEntry6, ifindex) == 64);
    assert!(core::mem::size_of::<DatapathEvent>() == 48);
};
