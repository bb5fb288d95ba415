//! Host processes' sockets (`--host-cgroup`): cgroup sock_addr hooks that send a host
//! process's connection or datagram to a published port straight to its container, at the
//! socket, before a packet exists (Cilium's socket-LB). The packets then travel between the
//! host and the container as any host-to-container traffic does (from the network's gateway
//! address), so no conntrack entry and no per-packet translation is needed.
//!
//! Only sockets of the host's network namespace are touched (a container's sockets keep
//! their hairpin through the datapath), and only addresses of published ports are rewritten.
//! Every hook lets the syscall proceed.
use aya_ebpf::{
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::SockAddrContext,
};
use datapath_common::{HostConfig, Ipv4Be, SockRevNat, SockRevNatKey};

use crate::{maps::SOCK_REV_NAT, services};

/// What every sock_addr hook returns: let the syscall go on.
pub const ALLOW: i32 = 1;

/// The address the syscall names (the destination of connect/sendmsg, the source of
/// recvmsg, the peer of getpeername): IPv4 address and port in network byte order.
#[inline(always)]
fn user_addr(ctx: &SockAddrContext) -> (Ipv4Be, u16) {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel hands every sock_addr program a valid context. Volatile keeps each
    // load a whole 4-byte context access: the verifier refuses narrowed ones on some fields.
    unsafe {
        (core::ptr::read_volatile(&raw const (*sa).user_ip4), core::ptr::read_volatile(&raw const (*sa).user_port) as u16)
    }
}

/// The socket's protocol (IPPROTO_TCP, IPPROTO_UDP, ...).
#[inline(always)]
fn protocol(ctx: &SockAddrContext) -> u8 {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&raw const (*ctx.sock_addr).protocol) as u8 }
}

#[inline(always)]
fn set_user_addr(ctx: &SockAddrContext, ip: Ipv4Be, port: u16) {
    let sa = ctx.sock_addr;
    // SAFETY: as above; user_ip4 and user_port are writable in every hook used here.
    unsafe {
        core::ptr::write_volatile(&raw mut (*sa).user_ip4, ip);
        core::ptr::write_volatile(&raw mut (*sa).user_port, u32::from(port));
    }
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

/// connect4 (TCP, connected UDP) and sendmsg4 (a datagram sent with an address): a
/// published port becomes its container's address and port, and the socket remembers which
/// published address it meant, for recvmsg4 and getpeername4.
///
/// A port published without an address is reached at the uplink's address and, as Docker's
/// docker-proxy listens on all addresses, at 127.0.0.0/8; a port published on an address only
/// there.
#[inline(always)]
pub fn to_published_port(ctx: &SockAddrContext, cfg: &HostConfig) {
    if !in_host_netns(ctx, cfg) {
        return;
    }
    let (ip, port) = user_addr(ctx);
    let all_addresses = (cfg.uplink_ifindex != 0 && ip == cfg.uplink_ip) || is_loopback(ip);
    let Some(target) = services::target(ip, port, protocol(ctx), all_addresses) else {
        return;
    };
    // SAFETY: helper call on the program's own context.
    let socket_cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let key = SockRevNatKey { socket_cookie, backend_ip: target.ip, backend_port: target.port, _pad: 0 };
    // Without the entry the process would see the container's address in replies: then the
    // destination is left alone too (a full LRU map evicts instead of failing, so this is rare).
    if SOCK_REV_NAT.insert(&key, &SockRevNat { addr: ip, port, _pad: 0 }, 0).is_err() {
        return;
    }
    set_user_addr(ctx, target.ip, target.port);
}

/// recvmsg4 (the source of a datagram) and getpeername4 (a connected socket's peer): the
/// container's address and port shown as the published ones this socket addressed.
#[inline(always)]
pub fn from_published_port(ctx: &SockAddrContext, cfg: &HostConfig) {
    if !in_host_netns(ctx, cfg) {
        return;
    }
    let (ip, port) = user_addr(ctx);
    // SAFETY: helper call on the program's own context.
    let socket_cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let key = SockRevNatKey { socket_cookie, backend_ip: ip, backend_port: port, _pad: 0 };
    // SAFETY: map values are plain data; copied out at once.
    if let Some(published) = unsafe { SOCK_REV_NAT.get(&key) }.copied() {
        set_user_addr(ctx, published.addr, published.port);
    }
}
