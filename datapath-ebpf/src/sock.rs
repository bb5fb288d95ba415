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
//! AF_INET6 sockets (dual-stack by default, as Java's) are handled as Cilium handles
//! v4-in-v6: an IPv4-mapped address `::ffff:a.b.c.d` is the IPv4 address a.b.c.d, and `::1`
//! is 127.0.0.1 (docker-proxy listens on `[::]`, so it answers there too). Either becomes the
//! container's IPv4-mapped address, for which the kernel takes its IPv4 path (tcp_v6_connect,
//! ip6_datagram_connect). The decision itself is the IPv4 hooks', on the IPv4 address.
use aya_ebpf::{
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::SockAddrContext,
};
use datapath_common::{HostConfig, Ipv4Be, SockRevNat, SockRevNatKey};

use crate::{maps::SOCK_REV_NAT, published_ports};

/// What every sock_addr hook returns: let the syscall go on.
pub const ALLOW: i32 = 1;

/// An IPv6 address as the kernel keeps it (`s6_addr32`): four words in network byte order.
type Ipv6Words = [u32; 4];

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

#[inline(always)]
fn set_user_port(ctx: &SockAddrContext, port: u16) {
    // SAFETY: as in user_port; user_port is writable in every hook used here.
    unsafe { core::ptr::write_volatile(&raw mut (*ctx.sock_addr).user_port, u32::from(port)) }
}

#[inline(always)]
fn set_user_ip4(ctx: &SockAddrContext, ip: Ipv4Be) {
    // SAFETY: as in user_port; writable in every IPv4 hook used here.
    unsafe { core::ptr::write_volatile(&raw mut (*ctx.sock_addr).user_ip4, ip) }
}

#[inline(always)]
fn set_user_ip6(ctx: &SockAddrContext, ip: Ipv6Words) {
    let sa = ctx.sock_addr;
    // SAFETY: as in user_ip6; writable in every IPv6 hook used here, 4 bytes at a time.
    unsafe {
        core::ptr::write_volatile(&raw mut (*sa).user_ip6[0], ip[0]);
        core::ptr::write_volatile(&raw mut (*sa).user_ip6[1], ip[1]);
        core::ptr::write_volatile(&raw mut (*sa).user_ip6[2], ip[2]);
        core::ptr::write_volatile(&raw mut (*sa).user_ip6[3], ip[3]);
    }
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

/// The decision of connect4, sendmsg4 and connect6, on the IPv4 address the socket named:
/// if (ip, port) is a published port, the container's address and port to go to instead. The
/// socket then remembers which published address it meant (and how it named it), for the
/// recvmsg and getpeername hooks.
///
/// A port published without an address is reached at the uplink's address and, as Docker's
/// docker-proxy listens on all addresses, at 127.0.0.0/8; a port published on an address only
/// there.
#[inline(always)]
fn to_published_port(
    ctx: &SockAddrContext,
    cfg: &HostConfig,
    ip: Ipv4Be,
    port: u16,
    addressed_as: u8,
) -> Option<(Ipv4Be, u16)> {
    if !in_host_netns(ctx, cfg) {
        return None;
    }
    let all_addresses = (cfg.uplink_ifindex != 0 && ip == cfg.uplink_ip) || is_loopback(ip);
    let container = published_ports::container(ip, port, protocol(ctx), all_addresses)?;
    // SAFETY: helper call on the program's own context.
    let socket_cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let key = SockRevNatKey { socket_cookie, target_ip: container.ip, target_port: container.port, _pad: 0 };
    let published = SockRevNat { addr: ip, port, addressed_as, _pad: 0 };
    // Without the entry the process would see the container's address in replies: then the
    // destination is left alone too (a full LRU map evicts instead of failing, so this is rare).
    SOCK_REV_NAT.insert(&key, &published, 0).ok()?;
    Some((container.ip, container.port))
}

/// The decision of recvmsg4/6 and getpeername4/6, on the container's IPv4 address and port
/// the syscall shows: the published address this socket sent to there, if it did.
#[inline(always)]
fn from_published_port(ctx: &SockAddrContext, cfg: &HostConfig, ip: Ipv4Be, port: u16) -> Option<SockRevNat> {
    if !in_host_netns(ctx, cfg) {
        return None;
    }
    // SAFETY: helper call on the program's own context.
    let socket_cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let key = SockRevNatKey { socket_cookie, target_ip: ip, target_port: port, _pad: 0 };
    // SAFETY: map values are plain data; copied out at once.
    unsafe { SOCK_REV_NAT.get(&key) }.copied()
}

/// connect4 (TCP, connected UDP) and sendmsg4 (a datagram sent with an address; also an
/// AF_INET6 socket's datagram to an IPv4-mapped address, which udpv6_sendmsg hands to the
/// IPv4 path before its own hook): a published port becomes its container's address and port.
#[inline(always)]
pub fn to_published_port4(ctx: &SockAddrContext, cfg: &HostConfig) {
    if let Some((ip, port)) = to_published_port(ctx, cfg, user_ip4(ctx), user_port(ctx), SockRevNat::ADDRESSED_AS_IPV4)
    {
        set_user_ip4(ctx, ip);
        set_user_port(ctx, port);
    }
}

/// recvmsg4 (the source of a datagram) and getpeername4 (a connected socket's peer): the
/// container's address and port shown as the published ones this socket addressed.
#[inline(always)]
pub fn from_published_port4(ctx: &SockAddrContext, cfg: &HostConfig) {
    if let Some(published) = from_published_port(ctx, cfg, user_ip4(ctx), user_port(ctx)) {
        set_user_ip4(ctx, published.addr);
        set_user_port(ctx, published.port);
    }
}

/// connect6 (TCP, connected UDP) of an AF_INET6 socket: an IPv4-mapped published address, or
/// `::1` as 127.0.0.1, becomes the container's address, IPv4-mapped. The kernel then connects
/// the socket over IPv4 (unless it is IPV6_V6ONLY: ENETUNREACH, which no field of the
/// context tells beforehand).
#[inline(always)]
pub fn to_published_port6(ctx: &SockAddrContext, cfg: &HostConfig) {
    let named = user_ip6(ctx);
    let (ip, addressed_as) = match unmapped(named) {
        Some(ip) => (ip, SockRevNat::ADDRESSED_AS_IPV4),
        None if named == IPV6_LOOPBACK => (IPV4_LOOPBACK, SockRevNat::ADDRESSED_AS_IPV6_LOOPBACK),
        // An IPv6 address: containers have none.
        None => return,
    };
    if let Some((ip, port)) = to_published_port(ctx, cfg, ip, user_port(ctx), addressed_as) {
        set_user_ip6(ctx, v4_mapped(ip));
        set_user_port(ctx, port);
    }
}

/// recvmsg6 and getpeername6 of an AF_INET6 socket: the container's IPv4-mapped address and
/// port shown as the address the socket sent to, as it named it (`::ffff:a.b.c.d` or `::1`).
#[inline(always)]
pub fn from_published_port6(ctx: &SockAddrContext, cfg: &HostConfig) {
    let Some(ip) = unmapped(user_ip6(ctx)) else {
        return;
    };
    if let Some(published) = from_published_port(ctx, cfg, ip, user_port(ctx)) {
        let shown = if published.addressed_as == SockRevNat::ADDRESSED_AS_IPV6_LOOPBACK {
            IPV6_LOOPBACK
        } else {
            v4_mapped(published.addr)
        };
        set_user_ip6(ctx, shown);
        set_user_port(ctx, published.port);
    }
}
