//! Host processes' sockets (`--host-cgroup`): cgroup sock_addr hooks that send a host
//! process's connection or datagram to a published port straight to its container, at the
//! socket, before a packet exists (Cilium's socket-LB). The packets then travel between the
//! host and the container as any host-to-container traffic does (from the network's gateway
//! address), so no conntrack entry and no per-packet translation is needed.
//!
//! Only sockets of the host's network namespace are touched (a container's sockets keep
//! their hairpin through the datapath), and only addresses of published ports are rewritten.
//! Every hook lets the syscall proceed.
//!
//! AF_INET6 sockets (dual-stack by default, as Java's) reach ports published on IPv6
//! (`PUBLISHED6`) at `::1`, at the uplink's IPv6 address and at the address a port was
//! published on: they go to the container's IPv6 address, and a map of their own
//! (`SOCK_REV_NAT6`) remembers the published address. Ports published on IPv4 are handled as
//! Cilium handles v4-in-v6: an IPv4-mapped address `::ffff:a.b.c.d` is the IPv4 address
//! a.b.c.d, and `::1` is 127.0.0.1 when the port is not published on IPv6 (docker-proxy
//! listens on `[::]` and forwards to the container's IPv4 address then). Either becomes the
//! container's IPv4-mapped address, for which the kernel takes its IPv4 path (tcp_v6_connect,
//! ip6_datagram_connect). The decision itself is the same code for both families
//! ([`SockFamily`]), on the address of the family the port was published on.
use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::SockAddrContext,
};
use datapath_common::{HostConfig, Ipv4Be, Ipv6Be, SockRevNat, SockRevNat6, SockRevNatKey, SockRevNatKey6};

use crate::{
    maps::{self, SOCK_REV_NAT, SOCK_REV_NAT6},
    published_ports::{self, Container, Family, Ipv4, Ipv6},
};

/// What every sock_addr hook returns: let the syscall go on.
pub const ALLOW: i32 = 1;

/// An IPv6 address as the kernel keeps it (`s6_addr32`): four words in network byte order,
/// as the maps keep it.
type Ipv6Words = Ipv6Be;

/// The third word of an IPv4-mapped address, `::ffff:0:0/96`.
const V4_MAPPED_PREFIX_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
/// `::1`.
const IPV6_LOOPBACK: Ipv6Words = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];
/// 127.0.0.1, what `::1` stands for.
const IPV4_LOOPBACK: Ipv4Be = u32::from_ne_bytes([127, 0, 0, 1]);

/// The port the syscall names (network byte order); the same field for both families.
#[inline(always)]
fn user_port(ctx: &SockAddrContext) -> u16 {
    // SAFETY: the kernel hands every sock_addr program a valid context. Volatile keeps each
    // load a whole 4-byte context access: the verifier refuses narrowed ones on some fields.
    unsafe { core::ptr::read_volatile(&raw const (*ctx.sock_addr).user_port) as u16 }
}

/// The IPv4 address the syscall names (the destination of connect/sendmsg, the source of
/// recvmsg, the peer of getpeername). Only the IPv4 hooks may read it.
#[inline(always)]
fn user_ip4(ctx: &SockAddrContext) -> Ipv4Be {
    // SAFETY: as in user_port.
    unsafe { core::ptr::read_volatile(&raw const (*ctx.sock_addr).user_ip4) }
}

/// The IPv6 address the syscall names. Only the IPv6 hooks may read it.
#[inline(always)]
fn user_ip6(ctx: &SockAddrContext) -> Ipv6Words {
    let sa = ctx.sock_addr;
    // SAFETY: as in user_port; one 4-byte load per word, the context access the verifier
    // accepts in every hook (it rewrites each into a load from the sockaddr_in6).
    unsafe {
        [
            core::ptr::read_volatile(&raw const (*sa).user_ip6[0]),
            core::ptr::read_volatile(&raw const (*sa).user_ip6[1]),
            core::ptr::read_volatile(&raw const (*sa).user_ip6[2]),
            core::ptr::read_volatile(&raw const (*sa).user_ip6[3]),
        ]
    }
}

/// The socket's protocol (IPPROTO_TCP, IPPROTO_UDP, ...).
#[inline(always)]
fn protocol(ctx: &SockAddrContext) -> u8 {
    // SAFETY: as in user_port.
    unsafe { core::ptr::read_volatile(&raw const (*ctx.sock_addr).protocol) as u8 }
}

/// Stores `value` at the context field `OFFSET` of `bpf_sock_addr`, as one instruction on the
/// context pointer itself. The verifier refuses a store through a context pointer that the
/// compiler moved to the field beforehand (and may have kept on the stack): "dereference of
/// modified ctx ptr". Inline assembly keeps the offset in the store, as Cilium's ctx_store does.
#[inline(always)]
fn store_field<const OFFSET: usize>(ctx: &SockAddrContext, value: u32) {
    // SAFETY: a 4-byte store to a writable field of the kernel's valid context (each caller
    // names one: user_port, user_ip4 or a word of user_ip6).
    unsafe {
        core::arch::asm!(
            "*(u32 *)({ctx} + {offset}) = {value}",
            ctx = in(reg) ctx.sock_addr,
            offset = const OFFSET,
            value = in(reg) value,
            options(nostack),
        )
    }
}

const USER_PORT: usize = core::mem::offset_of!(bpf_sock_addr, user_port);
const USER_IP4: usize = core::mem::offset_of!(bpf_sock_addr, user_ip4);
const USER_IP6: usize = core::mem::offset_of!(bpf_sock_addr, user_ip6);

#[inline(always)]
fn set_user_port(ctx: &SockAddrContext, port: u16) {
    store_field::<USER_PORT>(ctx, u32::from(port));
}

#[inline(always)]
fn set_user_ip4(ctx: &SockAddrContext, ip: Ipv4Be) {
    store_field::<USER_IP4>(ctx, ip);
}

#[inline(always)]
fn set_user_ip6(ctx: &SockAddrContext, ip: Ipv6Words) {
    store_field::<USER_IP6>(ctx, ip[0]);
    store_field::<{ USER_IP6 + 4 }>(ctx, ip[1]);
    store_field::<{ USER_IP6 + 8 }>(ctx, ip[2]);
    store_field::<{ USER_IP6 + 12 }>(ctx, ip[3]);
}

/// `::ffff:a.b.c.d`.
#[inline(always)]
fn v4_mapped(ip: Ipv4Be) -> Ipv6Words {
    [0, 0, V4_MAPPED_PREFIX_WORD, ip]
}

/// The IPv4 address inside an IPv4-mapped one.
#[inline(always)]
fn unmapped(ip: Ipv6Words) -> Option<Ipv4Be> {
    (ip[0] == 0 && ip[1] == 0 && ip[2] == V4_MAPPED_PREFIX_WORD).then_some(ip[3])
}

/// Whether this socket lives in the host's network namespace (and the hooks are on at all).
#[inline(always)]
fn in_host_netns(ctx: &SockAddrContext, cfg: &HostConfig) -> bool {
    // SAFETY: helper call on the program's own context.
    cfg.host_netns_cookie != 0 && unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) } == cfg.host_netns_cookie
}

/// 127.0.0.0/8 (in network byte order, the first octet is the lowest byte).
#[inline(always)]
fn is_loopback(ip: Ipv4Be) -> bool {
    ip.to_ne_bytes()[0] == 127
}

/// What a family's socket hooks remember per socket: the published address the process named
/// (`SOCK_REV_NAT` for IPv4, `SOCK_REV_NAT6` for IPv6, keyed by the socket and the
/// container's address and port).
trait SockFamily: Family {
    type Published: Copy;
    /// Remembers `published` for the socket sent to `container`; false if the map refused.
    fn remember(socket_cookie: u64, container: &Container<Self::Addr>, published: &Self::Published) -> bool;
    /// What the socket sent to the container at (ip, port) had named.
    fn recall(socket_cookie: u64, ip: Self::Addr, port: u16) -> Option<Self::Published>;
}

impl SockFamily for Ipv4 {
    type Published = SockRevNat;

    #[inline(always)]
    fn remember(socket_cookie: u64, container: &Container, published: &SockRevNat) -> bool {
        let key = SockRevNatKey { socket_cookie, target_ip: container.ip, target_port: container.port, _pad: 0 };
        SOCK_REV_NAT.insert(&key, published, 0).is_ok()
    }

    #[inline(always)]
    fn recall(socket_cookie: u64, ip: Ipv4Be, port: u16) -> Option<SockRevNat> {
        let key = SockRevNatKey { socket_cookie, target_ip: ip, target_port: port, _pad: 0 };
        // SAFETY: map values are plain data; copied out at once.
        unsafe { SOCK_REV_NAT.get(&key) }.copied()
    }
}

impl SockFamily for Ipv6 {
    type Published = SockRevNat6;

    #[inline(always)]
    fn remember(socket_cookie: u64, container: &Container<Ipv6Be>, published: &SockRevNat6) -> bool {
        let key = SockRevNatKey6 { socket_cookie, target_ip: container.ip, target_port: container.port, _pad: [0; 6] };
        SOCK_REV_NAT6.insert(&key, published, 0).is_ok()
    }

    #[inline(always)]
    fn recall(socket_cookie: u64, ip: Ipv6Be, port: u16) -> Option<SockRevNat6> {
        let key = SockRevNatKey6 { socket_cookie, target_ip: ip, target_port: port, _pad: [0; 6] };
        // SAFETY: map values are plain data; copied out at once.
        unsafe { SOCK_REV_NAT6.get(&key) }.copied()
    }
}

/// The decision of every connect and sendmsg hook, on the address the socket named in family
/// `F`: if (ip, port) is a published port, the container's address and port to go to instead.
/// The socket then remembers `published` (what it named, and how), for the recvmsg and
/// getpeername hooks. `all_addresses`: ip is one of the addresses where a port published
/// without an address is reached.
#[inline(always)]
fn to_published_port<F: SockFamily>(
    ctx: &SockAddrContext,
    cfg: &HostConfig,
    ip: F::Addr,
    port: u16,
    all_addresses: bool,
    published: &F::Published,
) -> Option<(F::Addr, u16)> {
    if !in_host_netns(ctx, cfg) {
        return None;
    }
    let container = published_ports::container::<F>(ip, port, protocol(ctx), all_addresses)?;
    // SAFETY: helper call on the program's own context.
    let socket_cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    // Without the entry the process would see the container's address in replies: then the
    // destination is left alone too (a full LRU map evicts instead of failing, so this is rare).
    F::remember(socket_cookie, &container, published).then_some((container.ip, container.port))
}

/// The decision of the recvmsg and getpeername hooks, on the container's address and port the
/// syscall shows: what this socket named when it sent there, if it did.
#[inline(always)]
fn from_published_port<F: SockFamily>(
    ctx: &SockAddrContext,
    cfg: &HostConfig,
    ip: F::Addr,
    port: u16,
) -> Option<F::Published> {
    if !in_host_netns(ctx, cfg) {
        return None;
    }
    // SAFETY: helper call on the program's own context.
    let socket_cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    F::recall(socket_cookie, ip, port)
}

/// An IPv4 destination (an AF_INET socket's, or an AF_INET6 socket's unmapped or `::1`): a
/// port published without an address is reached at the uplink's address and, as Docker's
/// docker-proxy listens on all addresses, at 127.0.0.0/8; a port published on an address
/// only there.
#[inline(always)]
fn to_published_port_ipv4(
    ctx: &SockAddrContext,
    cfg: &HostConfig,
    ip: Ipv4Be,
    port: u16,
    addressed_as: u8,
) -> Option<(Ipv4Be, u16)> {
    let all_addresses = (cfg.uplink_ifindex != 0 && ip == cfg.uplink_ip) || is_loopback(ip);
    let published = SockRevNat { addr: ip, port, addressed_as, _pad: 0 };
    to_published_port::<Ipv4>(ctx, cfg, ip, port, all_addresses, &published)
}

/// An IPv6 destination of an AF_INET6 socket: a port published on IPv6 without an address is
/// reached at the uplink's IPv6 address and at `::1`; a port published on an address only
/// there.
#[inline(always)]
fn to_published_port_ipv6(ctx: &SockAddrContext, cfg: &HostConfig, ip: Ipv6Be, port: u16) -> Option<(Ipv6Be, u16)> {
    let uplink_ip = maps::config6_ref().map_or(Ipv6::ALL_ADDRESSES, |cfg6| cfg6.uplink_ip);
    let all_addresses = ip == IPV6_LOOPBACK || (uplink_ip != Ipv6::ALL_ADDRESSES && ip == uplink_ip);
    let published = SockRevNat6 { addr: ip, port, _pad: 0 };
    to_published_port::<Ipv6>(ctx, cfg, ip, port, all_addresses, &published)
}

/// connect4 (TCP, connected UDP) and sendmsg4 (a datagram sent with an address; also an
/// AF_INET6 socket's datagram to an IPv4-mapped address, which udpv6_sendmsg hands to the
/// IPv4 path before its own hook): a published port becomes its container's address and port.
#[inline(always)]
pub fn to_published_port4(ctx: &SockAddrContext, cfg: &HostConfig) {
    let to = to_published_port_ipv4(ctx, cfg, user_ip4(ctx), user_port(ctx), SockRevNat::ADDRESSED_AS_IPV4);
    if let Some((ip, port)) = to {
        set_user_ip4(ctx, ip);
        set_user_port(ctx, port);
    }
}

/// recvmsg4 (the source of a datagram) and getpeername4 (a connected socket's peer): the
/// container's address and port shown as the published ones this socket addressed.
#[inline(always)]
pub fn from_published_port4(ctx: &SockAddrContext, cfg: &HostConfig) {
    if let Some(published) = from_published_port::<Ipv4>(ctx, cfg, user_ip4(ctx), user_port(ctx)) {
        set_user_ip4(ctx, published.addr);
        set_user_port(ctx, published.port);
    }
}

/// connect6 (TCP, connected UDP) of an AF_INET6 socket. An IPv6 address of a port published on
/// IPv6 becomes the container's IPv6 address. An IPv4-mapped published address, or `::1` of a
/// port published on IPv4 only (as 127.0.0.1), becomes the container's IPv4 address,
/// IPv4-mapped: the kernel then connects the socket over IPv4 (unless it is IPV6_V6ONLY:
/// ENETUNREACH, which no field of the context tells beforehand).
///
/// `::1` goes to the container's IPv6 address first, as Docker's docker-proxy on `[::1]`
/// does for a container that has one, and to its IPv4 address otherwise.
#[inline(always)]
pub fn to_published_port6(ctx: &SockAddrContext, cfg: &HostConfig) {
    let named = user_ip6(ctx);
    let port = user_port(ctx);
    let as_mapped = |(ip, port)| (v4_mapped(ip), port);
    let to = match unmapped(named) {
        Some(ip) => to_published_port_ipv4(ctx, cfg, ip, port, SockRevNat::ADDRESSED_AS_IPV4).map(as_mapped),
        None => to_published_port_ipv6(ctx, cfg, named, port).or_else(|| {
            let loopback = SockRevNat::ADDRESSED_AS_IPV6_LOOPBACK;
            (named == IPV6_LOOPBACK)
                .then(|| to_published_port_ipv4(ctx, cfg, IPV4_LOOPBACK, port, loopback).map(as_mapped))
                .flatten()
        }),
    };
    if let Some((ip, port)) = to {
        set_user_ip6(ctx, ip);
        set_user_port(ctx, port);
    }
}

/// sendmsg6 (a datagram an AF_INET6 socket sends with an address, unconnected UDP): an IPv6
/// address of a port published on IPv6 becomes the container's IPv6 address. Never an
/// IPv4-mapped one: udpv6_sendmsg refuses that rewrite (ENOTSUPP), so `::1` of a port
/// published on IPv4 only stays the host's `::1`. A datagram to an IPv4-mapped address does
/// not come here: udpv6_sendmsg hands it to the IPv4 path (and sendmsg4) before this hook.
#[inline(always)]
pub fn to_published_port6_datagram(ctx: &SockAddrContext, cfg: &HostConfig) {
    let named = user_ip6(ctx);
    if unmapped(named).is_some() {
        return;
    }
    if let Some((ip, port)) = to_published_port_ipv6(ctx, cfg, named, user_port(ctx)) {
        set_user_ip6(ctx, ip);
        set_user_port(ctx, port);
    }
}

/// recvmsg6 and getpeername6 of an AF_INET6 socket: the container's address and port shown as
/// the address the socket sent to, as it named it (`::ffff:a.b.c.d` or `::1` for a container's
/// IPv4-mapped address; `::1`, the uplink's or the published IPv6 address for its IPv6 one).
#[inline(always)]
pub fn from_published_port6(ctx: &SockAddrContext, cfg: &HostConfig) {
    let seen = user_ip6(ctx);
    let port = user_port(ctx);
    let shown = match unmapped(seen) {
        Some(ip) => from_published_port::<Ipv4>(ctx, cfg, ip, port).map(|published| {
            let addr = if published.addressed_as == SockRevNat::ADDRESSED_AS_IPV6_LOOPBACK {
                IPV6_LOOPBACK
            } else {
                v4_mapped(published.addr)
            };
            (addr, published.port)
        }),
        None => from_published_port::<Ipv6>(ctx, cfg, seen, port).map(|published| (published.addr, published.port)),
    };
    if let Some((ip, port)) = shown {
        set_user_ip6(ctx, ip);
        set_user_port(ctx, port);
    }
}
