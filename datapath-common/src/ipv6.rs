//! IPv6's map keys and values, beside IPv4's. A network may have an IPv6 subnet as well as its
//! IPv4 one (dual stack, as Docker's `--ipv6`): a container then has an entry in `ENDPOINTS6`
//! and `IFACES6` besides its IPv4 one. Every IPv6 map is a map of its own rather than a wider
//! IPv4 one, so the maps that running hosts have pinned keep their layout.
//!
//! IPv6 addresses are stored as they appear on the wire, in four u32 words each read with
//! `u32::from_ne_bytes` (as [`Ipv4Be`]): the datapath compares and copies them a word at a
//! time, never converting.
use crate::Ipv4Be;

/// An IPv6 address in network byte order: the 16 octets as four native-endian words.
pub type Ipv6Be = [u32; 4];

/// Converts an address to the map representation.
#[inline(always)]
pub const fn ipv6_be(octets: [u8; 16]) -> Ipv6Be {
    [
        u32::from_ne_bytes([octets[0], octets[1], octets[2], octets[3]]),
        u32::from_ne_bytes([octets[4], octets[5], octets[6], octets[7]]),
        u32::from_ne_bytes([octets[8], octets[9], octets[10], octets[11]]),
        u32::from_ne_bytes([octets[12], octets[13], octets[14], octets[15]]),
    ]
}

/// The octets of a map address, as `std::net::Ipv6Addr::from` takes them.
#[inline(always)]
pub const fn ipv6_octets(addr: Ipv6Be) -> [u8; 16] {
    let [a, b, c, d] = [addr[0].to_ne_bytes(), addr[1].to_ne_bytes(), addr[2].to_ne_bytes(), addr[3].to_ne_bytes()];
    [a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2], d[3]]
}

/// A container's IPv6 side, in `ENDPOINTS6` (by its address) and `IFACES6` (by its host-side
/// veth). The interface, MACs and statistics slot are the same as its IPv4 [`Endpoint`]'s.
///
/// [`Endpoint`]: crate::Endpoint
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Endpoint6 {
    /// Index of the host-side veth (in the host namespace).
    pub host_ifindex: u32,
    pub network_id: u32,
    /// The container's global (or unique local) address.
    pub ip: Ipv6Be,
    /// The network's IPv6 gateway: the address the container's default route points at, which
    /// the datapath answers neighbour solicitations for with `gateway_mac`.
    pub gateway: Ipv6Be,
    /// MAC of the container's eth0; its link-local address is derived from it (EUI-64).
    pub mac: [u8; 6],
    /// MAC of the container's gateway (its host-side veth's).
    pub gateway_mac: [u8; 6],
    /// The endpoint's slot in `ENDPOINT_STATS` (shared with its IPv4 side).
    pub stats_slot: u32,
    /// The container's IPv4 address: its conntrack quota key, so that one container's new
    /// flows share one quota whichever family they use.
    pub ip4: Ipv4Be,
}

/// The host's IPv6 settings, the single entry of `CONFIG6`; the rest (uplink, NAT ports,
/// conntrack limits) is IPv4's [`HostConfig`](crate::HostConfig), which both families share.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HostConfig6 {
    /// The address IPv6 flows are masqueraded to: the uplink's global IPv6 address. All zero:
    /// the uplink has none, and IPv6 leaving the networks goes to the host stack untranslated.
    pub uplink_ip: Ipv6Be,
}

/// A published port reached over IPv6: (host address, port, protocol) -> container. An all-zero
/// `addr` stands for the uplink's IPv6 address (Docker's "all host addresses", `[::]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PublishedPortKey6 {
    pub addr: Ipv6Be,
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Where an IPv6 published port leads: the container's IPv6 address and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PublishedPortTarget6 {
    pub ip: Ipv6Be,
    /// Network byte order.
    pub port: u16,
    pub _pad: u16,
}

/// A host process's AF_INET6 socket sent to a container's IPv6 address through a published
/// port (`--host-cgroup`): the socket and the container's address and port, as
/// [`SockRevNatKey`](crate::SockRevNatKey) for IPv4. A map of its own (`SOCK_REV_NAT6`), so
/// that the pinned `SOCK_REV_NAT` keeps its layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SockRevNatKey6 {
    pub socket_cookie: u64,
    /// The published port's [`PublishedPortTarget6`].
    pub target_ip: Ipv6Be,
    /// Network byte order.
    pub target_port: u16,
    pub _pad: [u8; 6],
}

/// The published IPv6 address and port the process addressed (`::1`, the uplink's address or
/// the one the port was published on), shown to it in place of the container's.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockRevNat6 {
    pub addr: Ipv6Be,
    /// Network byte order.
    pub port: u16,
    pub _pad: u16,
}

/// A fragmented IPv6 datagram, as its fragments travel: addresses, the fragment header's
/// identification (network byte order) and the protocol after the extension headers, which all
/// its fragments share (RFC 8200 section 4.5). The key of `FRAGS6`, as
/// [`FragKey`](crate::FragKey) is of `FRAGS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FragKey6 {
    pub saddr: Ipv6Be,
    pub daddr: Ipv6Be,
    pub id: u32,
    pub proto: u8,
    pub _pad: [u8; 3],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` data with explicit padding fields, valid for any bit pattern.
    unsafe impl aya::Pod for super::Endpoint6 {}
    unsafe impl aya::Pod for super::HostConfig6 {}
    unsafe impl aya::Pod for super::PublishedPortKey6 {}
    unsafe impl aya::Pod for super::PublishedPortTarget6 {}
    unsafe impl aya::Pod for super::FragKey6 {}
    unsafe impl aya::Pod for super::SockRevNatKey6 {}
    unsafe impl aya::Pod for super::SockRevNat6 {}
}

// No implicit padding anywhere (every byte is a named field).
const _: () = {
    assert!(core::mem::size_of::<Endpoint6>() == 60);
    assert!(core::mem::size_of::<HostConfig6>() == 16);
    assert!(core::mem::size_of::<PublishedPortKey6>() == 20);
    assert!(core::mem::size_of::<PublishedPortTarget6>() == 20);
    assert!(core::mem::size_of::<FragKey6>() == 40);
    assert!(core::mem::size_of::<SockRevNatKey6>() == 32);
    assert!(core::mem::size_of::<SockRevNat6>() == 20);
};
