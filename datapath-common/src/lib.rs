//! Types shared by bpfnet's eBPF programs and its agent: map keys and values, map names,
//! drop reasons and counters. Everything here is `#[repr(C)]` and has the same layout on both
//! sides; IPv4 addresses are stored as they appear on the wire (network byte order), so the
//! datapath never converts them.
#![no_std]

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
}

/// Names of the programs in the eBPF object.
pub mod program_names {
    /// TC ingress of a container's host-side veth: packets the container sends. At most 15
    /// bytes: the kernel truncates longer program names.
    pub const FROM_ENDPOINT: &str = "from_endpoint";
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
    pub _pad: [u8; 2],
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

/// Why the datapath dropped a packet. Each reason has a per-CPU counter in `DROPS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// A header was cut short or inconsistent.
    Malformed = 0,
    /// Neither IPv4 nor ARP (IPv6, VLAN tags, ...): bpfnet networks are IPv4 only.
    UnsupportedL3 = 1,
    /// The packet came in on an interface that is not (or no longer) a bpfnet endpoint.
    UnknownInterface = 2,
    /// The source IPv4 or MAC address is not the sending container's own.
    SpoofedSource = 3,
    /// The destination is a container of another network: networks are isolated.
    CrossNetwork = 4,
    /// An ARP request for an address that is neither the gateway nor a member of the network.
    ArpUnknownTarget = 5,
    /// An ARP packet that is not an Ethernet/IPv4 request or reply, or a reply claiming an
    /// address that is not the sender's.
    ArpInvalid = 6,
    /// The endpoint's network is not in `NETWORKS` (a control-plane inconsistency).
    UnknownNetwork = 7,
    /// A redirect helper failed (the target interface vanished).
    RedirectFailed = 8,
}

impl DropReason {
    pub const COUNT: u32 = 9;
    pub const ALL: [DropReason; Self::COUNT as usize] = [
        DropReason::Malformed,
        DropReason::UnsupportedL3,
        DropReason::UnknownInterface,
        DropReason::SpoofedSource,
        DropReason::CrossNetwork,
        DropReason::ArpUnknownTarget,
        DropReason::ArpInvalid,
        DropReason::UnknownNetwork,
        DropReason::RedirectFailed,
    ];

    /// The name shown by `bpfnet status`.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::UnsupportedL3 => "unsupported_l3",
            DropReason::UnknownInterface => "unknown_interface",
            DropReason::SpoofedSource => "spoofed_source",
            DropReason::CrossNetwork => "cross_network",
            DropReason::ArpUnknownTarget => "arp_unknown_target",
            DropReason::ArpInvalid => "arp_invalid",
            DropReason::UnknownNetwork => "unknown_network",
            DropReason::RedirectFailed => "redirect_failed",
        }
    }
}

/// What the datapath did with packets it did not drop. Per-CPU counters in `COUNTERS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Delivered straight into another container of the same network.
    Forwarded = 0,
    /// Handed to the host's stack (the gateway, or anything not for a container).
    ToHost = 1,
    /// ARP requests answered from the maps.
    ArpReplied = 2,
    /// ARP replies from a container passed to the host (answers to the host's own requests).
    ArpToHost = 3,
}

impl Counter {
    pub const COUNT: u32 = 4;
    pub const ALL: [Counter; Self::COUNT as usize] =
        [Counter::Forwarded, Counter::ToHost, Counter::ArpReplied, Counter::ArpToHost];

    pub const fn name(self) -> &'static str {
        match self {
            Counter::Forwarded => "forwarded",
            Counter::ToHost => "to_host",
            Counter::ArpReplied => "arp_replied",
            Counter::ArpToHost => "arp_to_host",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` data with explicit padding fields, valid for any bit pattern.
    unsafe impl aya::Pod for super::Endpoint {}
    unsafe impl aya::Pod for super::Network {}
}
