//! bpfnet's datapath. Each entry program is a thin composition of the modules below; read
//! one entry top to bottom to follow one packet.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

mod arp;
mod conntrack;
mod counters;
mod csum;
mod events;
mod fib;
mod fib_params;
mod forward;
mod fragment;
mod icmp;
mod ip;
mod ipv6;
mod maps;
mod nat;
mod native_routing;
mod ndp;
mod packet;
mod published_ports;
mod sock;

use aya_ebpf::{
    bindings::TC_ACT_OK,
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};
use datapath_common::{tail_call_slots, Counter, DropReason};
use network_types::eth::{EthHdr, EtherType};

use crate::{
    forward::{Destination, Destination6},
    packet::Packet,
};

/// TC ingress on a container's host-side veth: every packet the container sends.
///
/// ARP is answered from the maps; IPv4 to another container of the same network is delivered
/// straight into it; the gateway goes to the host stack; what leaves through the uplink is
/// source-translated; IPv6 continues in `from_endpoint6` (a tail call); the rest is dropped
/// with a counted reason.
#[classifier]
pub fn from_endpoint(ctx: TcContext) -> i32 {
    // IPv6 has a program of its own: this one's stack is nearly full. The kernel allows a tail
    // call only in a function that returns an int, so it is made here. It returns only when the
    // slot is empty (an agent that knows no IPv6 filled the array): IPv6 is then unsupported,
    // as before dual stack.
    if is_ipv6(&ctx) {
        ctx.tail_call(tail_call_slots::FROM_ENDPOINT6);
    }
    let result = try_from_endpoint(&ctx);
    if result.is_err() {
        counters::count_endpoint_drop(&ctx);
    }
    verdict(&ctx, result)
}

fn try_from_endpoint(ctx: &TcContext) -> Result<i32, DropReason> {
    let source = forward::source_endpoint(ctx)?;
    counters::count_sent(ctx, &source);
    let eth: *mut EthHdr = packet::ptr_at(ctx, 0)?;
    // SAFETY: `ptr_at` checked that the header lies inside the packet.
    let ether_type = unsafe { (*eth).ether_type };
    if ether_type == EtherType::Arp as u16 {
        return arp::answer(ctx, eth, &source);
    }
    if ether_type != EtherType::Ipv4 as u16 {
        return Err(DropReason::UnsupportedL3);
    }
    let ip = packet::ipv4(ctx)?;
    forward::check_source(eth, &ip, &source)?;
    match forward::destination(&ip, &source)? {
        Destination::Gateway => {
            counters::count(Counter::ToHost);
            Ok(TC_ACT_OK)
        }
        Destination::Member(dest) => {
            let action = forward::deliver(ctx, &dest)?;
            counters::count(Counter::Forwarded);
            Ok(action)
        }
        // An error about a flow to a published port (or a reply to the container's own flow)
        // goes back the way the flow came.
        Destination::Outside if icmp::is_error(ctx, &ip) => match icmp::translate(ctx, &ip, icmp::Origin::Container)? {
            Some(action) => Ok(action),
            None => nat::from_container(ctx, &ip, &source),
        },
        Destination::Outside => nat::from_container(ctx, &ip, &source),
        // Another node's pod: routed as it is (a flow of its to a published port of this host
        // excepted, whose replies and errors are translated back).
        Destination::Cluster => native_routing::from_container(ctx, &ip),
    }
}

/// `from_endpoint`'s tail call for IPv6 from a container (already counted as sent there).
///
/// Neighbour discovery is answered from the maps; IPv6 to another container of the same
/// network is delivered straight into it; the gateway, link-local and multicast destinations
/// go to the host stack; a member of another network is dropped; the rest goes to the host
/// stack for now. A container without IPv6 is dropped (`UnsupportedL3`).
#[classifier]
pub fn from_endpoint6(ctx: TcContext) -> i32 {
    let result = try_from_endpoint6(&ctx);
    if result.is_err() {
        counters::count_endpoint_drop(&ctx);
    }
    verdict(&ctx, result)
}

fn try_from_endpoint6(ctx: &TcContext) -> Result<i32, DropReason> {
    let Some(source) = forward::endpoint6_on(ctx.ingress_ifindex()) else {
        // A container without IPv6 (or no container): counted as sent, as from_endpoint
        // counts every packet of a container.
        counters::count_sent(ctx, &forward::source_endpoint(ctx)?);
        return Err(DropReason::UnsupportedL3);
    };
    counters::count_sent(ctx, source);
    let eth: *const EthHdr = packet::ptr_at(ctx, 0)?;
    let ip = ipv6::ipv6(ctx)?;
    let link_scoped = ndp::link_scoped_message(ctx, &ip);
    forward::check_source6(eth, &ip, source, link_scoped.is_some())?;
    if let Some(type_) = link_scoped {
        return ndp::answer(ctx, &ip, type_, source);
    }
    match forward::destination6(&ip, source)? {
        Destination6::Host => {
            counters::count(Counter::ToHost);
            Ok(TC_ACT_OK)
        }
        Destination6::Outside => nat::from_container6(ctx, &ip, source),
        Destination6::Member(dest) => {
            let action = forward::deliver(ctx, &dest)?;
            counters::count(Counter::Forwarded);
            Ok(action)
        }
    }
}

/// TC ingress on the host's uplink: replies to translated flows (and ICMP errors about them),
/// flows to published ports, and (with a cluster CIDR) other nodes' pods' packets for a pod of
/// this host go straight into their container; everything else is the host's and passes
/// untouched.
#[classifier]
pub fn from_uplink(ctx: TcContext) -> i32 {
    uplink_tail_call(&ctx);
    verdict(&ctx, try_from_uplink(&ctx))
}

/// The same as `from_uplink`, at XDP on the uplink (`--uplink-mode xdp`): before the kernel
/// allocates an skb. Delivery into a container is an XDP redirect to its host-side veth.
#[xdp]
pub fn from_uplink_xdp(ctx: XdpContext) -> u32 {
    uplink_tail_call(&ctx);
    verdict(&ctx, try_from_uplink(&ctx)) as u32
}

/// IPv6 on the uplink continues in the uplink's IPv6 program (a tail call, made in the entry
/// function as the kernel demands). Only an empty slot returns: the IPv6 then passes to the
/// host (`try_from_uplink` passes what is not IPv4), as before dual stack.
#[inline(always)]
fn uplink_tail_call<P: Packet>(ctx: &P) {
    if is_ipv6(ctx) {
        ctx.tail_call(tail_call_slots::FROM_UPLINK6);
    }
}

/// Whether the frame is IPv6 (by its EtherType).
#[inline(always)]
fn is_ipv6<P: Packet>(ctx: &P) -> bool {
    match packet::ptr_at::<P, EthHdr>(ctx, 0) {
        // SAFETY: `ptr_at` checked that the header lies inside the packet.
        Ok(eth) => (unsafe { (*eth).ether_type }) == EtherType::Ipv6 as u16,
        Err(_) => false,
    }
}

#[inline(always)]
fn try_from_uplink<P: Packet>(ctx: &P) -> Result<i32, DropReason> {
    let eth: *const EthHdr = packet::ptr_at(ctx, 0)?;
    // SAFETY: `ptr_at` checked that the header lies inside the packet.
    if unsafe { (*eth).ether_type } != EtherType::Ipv4 as u16 {
        return Ok(P::PASS);
    }
    let Ok(ip) = packet::ipv4(ctx) else {
        return Ok(P::PASS); // not ours to judge: the host stack drops what is broken
    };
    // Another node's pod (or a reply to one of ours, or an ICMP error about such a flow), to a
    // pod of this host: delivered as it is. No tracked flow, nor an error about one, is ever
    // addressed to a container on the uplink.
    if let Some(delivered) = native_routing::to_container(ctx, &ip, &maps::config()) {
        return delivered;
    }
    if icmp::is_error(ctx, &ip) {
        return icmp::error_to_container(ctx, &ip);
    }
    nat::from_uplink(ctx, &ip)
}

/// `from_uplink`'s tail call for IPv6 on the uplink.
#[classifier]
pub fn from_uplink6(ctx: TcContext) -> i32 {
    verdict(&ctx, try_from_uplink6(&ctx))
}

/// `from_uplink_xdp`'s tail call for IPv6 on the uplink.
#[xdp]
pub fn from_uplink6xdp(ctx: XdpContext) -> u32 {
    verdict(&ctx, try_from_uplink6(&ctx)) as u32
}

/// IPv6 on the uplink: replies to masqueraded flows and new flows to published ports go
/// straight into their container (as IPv4's, `nat::from_uplink`); everything else (neighbour
/// discovery, the host's own traffic) is the host's.
#[inline(always)]
fn try_from_uplink6<P: Packet>(ctx: &P) -> Result<i32, DropReason> {
    let Ok(ip) = ipv6::ipv6(ctx) else {
        return Ok(nat::to_host::<P>()); // not ours to judge: the host stack drops what is broken
    };
    nat::from_uplink(ctx, &ip)
}

/// cgroup connect4 of the host cgroup (`--host-cgroup`): a host process connecting (TCP, or
/// UDP's connect) to a published port is connected to its container instead.
#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    sock::to_published_port4(&ctx, &maps::config());
    sock::ALLOW
}

/// cgroup sendmsg4: the same for a datagram sent with an address (unconnected UDP), also from
/// an AF_INET6 socket to an IPv4-mapped address (the kernel sends that one as IPv4).
#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::to_published_port4(&ctx, &maps::config());
    sock::ALLOW
}

/// cgroup recvmsg4: the container's reply shows the published address and port it was sent to.
#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::from_published_port4(&ctx, &maps::config());
    sock::ALLOW
}

/// cgroup getpeername4: a socket connected through a published port names that as its peer.
#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeer4(ctx: SockAddrContext) -> i32 {
    sock::from_published_port4(&ctx, &maps::config());
    sock::ALLOW
}

/// cgroup connect6: an AF_INET6 socket (dual-stack, as Java's) connecting to a published port
/// by its IPv4-mapped address, or by `::1`, is connected to its container instead.
///
/// There is no sendmsg6 hook: udpv6_sendmsg hands a datagram to an IPv4-mapped address to the
/// IPv4 path (and its sendmsg4 hook) before its own hook runs, and refuses a sendmsg6 hook's
/// rewrite to an IPv4-mapped address (ENOTSUPP), so one could only break `sendto([::1])`.
#[cgroup_sock_addr(connect6)]
pub fn sock_connect6(ctx: SockAddrContext) -> i32 {
    sock::to_published_port6(&ctx, &maps::config());
    sock::ALLOW
}

/// cgroup recvmsg6: the container's reply shows the address the socket sent to.
#[cgroup_sock_addr(recvmsg6)]
pub fn sock_recvmsg6(ctx: SockAddrContext) -> i32 {
    sock::from_published_port6(&ctx, &maps::config());
    sock::ALLOW
}

/// cgroup getpeername6: an AF_INET6 socket connected through a published port names the
/// address it connected to as its peer.
#[cgroup_sock_addr(getpeername6)]
pub fn sock_getpeer6(ctx: SockAddrContext) -> i32 {
    sock::from_published_port6(&ctx, &maps::config());
    sock::ALLOW
}

/// Maps a program's result to its verdict, counting drops by reason.
#[inline(always)]
fn verdict<P: Packet>(ctx: &P, result: Result<i32, DropReason>) -> i32 {
    match result {
        Ok(action) => action,
        Err(reason) => {
            counters::count_drop(ctx, reason);
            P::DROP
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never executed.
    loop {}
}
