//! Neighbour discovery (RFC 4861) of a container, answered from the maps as `arp` answers ARP:
//! a solicitation for its gateway or for another member of its network gets its advertisement
//! built in place and sent back into the container, so nothing is ever flooded. What a
//! container needs no answer to is dropped quietly (counted `NdpIgnored`); its advertisements
//! (answers to the host's own solicitations) go to the host stack.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::generated::bpf_skb_change_tail,
    programs::TcContext,
};
use datapath_common::{Counter, DropReason, Endpoint6, Ipv6Be, IPPROTO_ICMPV6};
use network_types::{eth::EthHdr, ip::Ipv6Hdr};

use crate::{
    counters::count,
    csum::fold,
    forward::member6,
    ipv6::{self, Ipv6, IP6_OFF},
    packet::{ptr_at, redirect, Packet},
};

const MLD_QUERY: u8 = 130;
const MLD_REPORT: u8 = 131;
const MLD_DONE: u8 = 132;
const ROUTER_SOLICITATION: u8 = 133;
const ROUTER_ADVERTISEMENT: u8 = 134;
const NEIGHBOR_SOLICITATION: u8 = 135;
const NEIGHBOR_ADVERTISEMENT: u8 = 136;
const REDIRECT: u8 = 137;
const MLD2_REPORT: u8 = 143;

/// Neighbour advertisement flags (the first byte of its reserved word).
const NA_ROUTER: u8 = 0x80;
const NA_SOLICITED: u8 = 0x40;
const NA_OVERRIDE: u8 = 0x20;
/// The Target Link-Layer Address option (RFC 4861 section 4.6.1), 8 bytes (length 1).
const OPTION_TARGET_LINK_LAYER: u8 = 2;
/// The hop limit of every neighbour discovery message: 255 proves it was not forwarded.
const ND_HOP_LIMIT: u8 = 255;

/// A neighbour solicitation or advertisement: the ICMPv6 header, the flags (reserved in a
/// solicitation) and the target address.
#[repr(C)]
struct NeighborMessage {
    type_: u8,
    code: u8,
    checksum: [u8; 2],
    flags: [u8; 4],
    target: [u8; 16],
}

/// A source or target link-layer address option for Ethernet.
#[repr(C)]
struct LinkLayerOption {
    type_: u8,
    /// In 8-byte units.
    len: u8,
    addr: [u8; 6],
}

/// The whole advertisement the datapath sends: every byte of it is written.
#[repr(C)]
struct Advertisement {
    eth: EthHdr,
    ip: Ipv6Hdr,
    message: NeighborMessage,
    option: LinkLayerOption,
}

const ADVERTISEMENT_LEN: u32 = core::mem::size_of::<Advertisement>() as u32;
/// The ICMPv6 length of the advertisement (the IPv6 payload length).
const ADVERTISEMENT_PAYLOAD: u16 =
    (core::mem::size_of::<NeighborMessage>() + core::mem::size_of::<LinkLayerOption>()) as u16;

/// The ICMPv6 type of a neighbour discovery or MLD message, `None` for any other packet:
/// the messages a container may send from its link-local address or `::`.
#[inline(always)]
pub fn link_scoped_message<P: Packet>(ctx: &P, ip: &Ipv6) -> Option<u8> {
    if ip.next_header != IPPROTO_ICMPV6 || ip.later_fragment {
        return None;
    }
    // The type and code as one bounds-checked pair: a one-byte check can be compiled into a
    // form the verifier reads as an empty range.
    let header: *const [u8; 2] = ptr_at(ctx, ip.l4_off).ok()?;
    // SAFETY: bounds-checked by `ptr_at`.
    let type_ = unsafe { (*header)[0] };
    matches!(type_, MLD_QUERY..=REDIRECT | MLD2_REPORT).then_some(type_)
}

/// Handles a neighbour discovery or MLD message of type `type_` from `source`, whose addresses
/// the caller checked (`forward::check_source6`).
#[inline(always)]
pub fn answer(ctx: &TcContext, ip: &Ipv6, type_: u8, source: &Endpoint6) -> Result<i32, DropReason> {
    match type_ {
        ROUTER_SOLICITATION | MLD_QUERY | MLD_REPORT | MLD_DONE | MLD2_REPORT => {
            count(Counter::NdpIgnored);
            return Ok(TC_ACT_SHOT);
        }
        // A container is no router.
        ROUTER_ADVERTISEMENT | REDIRECT => return Err(DropReason::NdpInvalid),
        // Solicitations and advertisements (`link_scoped_message` returns no other type).
        _ => {}
    }
    // RFC 4861 section 7.1.1: hop limit 255, code 0, the whole message (and, as the answer is
    // built in place, nothing between the IPv6 header and the message).
    let message: *const NeighborMessage = ptr_at(ctx, ip.l4_off)?;
    // SAFETY: bounds-checked by `ptr_at`.
    let message = unsafe { &*message };
    if ip.hop_limit != ND_HOP_LIMIT || message.code != 0 || ip.l4_off != IP6_OFF + Ipv6Hdr::LEN {
        return Err(DropReason::NdpInvalid);
    }
    let target = ipv6::address(&message.target);
    if type_ == NEIGHBOR_ADVERTISEMENT {
        // The container answering the host's solicitation for one of its own addresses.
        if target != source.ip && target != ipv6::link_local_of(&source.mac) {
            return Err(DropReason::SpoofedSource);
        }
        count(Counter::NdpToHost);
        return Ok(TC_ACT_OK);
    }
    // Duplicate address detection: no answer, so the container's address stays its own (its
    // addresses are configured `nodad` anyway).
    if ipv6::is_unspecified(&ip.saddr) {
        count(Counter::NdpIgnored);
        return Ok(TC_ACT_SHOT);
    }
    let (target_mac, router) = target_of(&target, source)?;
    advertise(ctx, ip, &target, target_mac, router)
}

/// The MAC that answers for `target`, and whether it is a router's: the gateway (by its
/// address, or by the link-local address the kernel gives its host-side veth), or another
/// member of the container's network.
#[inline(always)]
fn target_of(target: &Ipv6Be, source: &Endpoint6) -> Result<([u8; 6], bool), DropReason> {
    if *target == source.gateway || *target == ipv6::link_local_of(&source.gateway_mac) {
        return Ok((source.gateway_mac, true));
    }
    match member6(source.network_id, target) {
        Ok(Some(dest)) if dest.ip != source.ip => Ok((dest.mac, false)),
        _ => Err(DropReason::NdpUnknownTarget),
    }
}

/// Turns the solicitation into the advertisement in place (grown or cut to its size: the
/// solicitation may lack the source link-layer option, or carry others) and sends it back out
/// of the interface it came in on, i.e. into the container.
#[inline(always)]
fn advertise(
    ctx: &TcContext,
    ip: &Ipv6,
    target: &Ipv6Be,
    target_mac: [u8; 6],
    router: bool,
) -> Result<i32, DropReason> {
    if ctx.len() != ADVERTISEMENT_LEN {
        // SAFETY: helper call on the program's own skb.
        if unsafe { bpf_skb_change_tail(ctx.skb.skb as *mut _, ADVERTISEMENT_LEN, 0) } != 0 {
            return Err(DropReason::RewriteFailed);
        }
    }
    // The helper may leave the grown part outside the linear data, which direct access needs.
    if ctx.data_end() - ctx.data() < ADVERTISEMENT_LEN as usize {
        ctx.pull_data(ADVERTISEMENT_LEN).map_err(|_| DropReason::RewriteFailed)?;
    }
    // Re-derived: the helpers above invalidate every earlier packet pointer.
    let answer: *mut Advertisement = ptr_at(ctx, 0)?;
    // SAFETY: bounds-checked by `ptr_at`; fields are bytes (and one u16 in the Ethernet
    // header, at an even offset).
    let answer = unsafe { &mut *answer };
    let flags = NA_SOLICITED | NA_OVERRIDE | if router { NA_ROUTER } else { 0 };
    answer.eth.dst_addr = answer.eth.src_addr;
    answer.eth.src_addr = target_mac;
    answer.ip.vcf = [0x60, 0, 0, 0];
    answer.ip.payload_len = ADVERTISEMENT_PAYLOAD.to_be_bytes();
    answer.ip.next_hdr = IPPROTO_ICMPV6;
    answer.ip.hop_limit = ND_HOP_LIMIT;
    ipv6::set_address(&mut answer.ip.dst_addr, &ip.saddr);
    ipv6::set_address(&mut answer.ip.src_addr, target);
    answer.message.type_ = NEIGHBOR_ADVERTISEMENT;
    answer.message.code = 0;
    answer.message.flags = [flags, 0, 0, 0];
    answer.option.type_ = OPTION_TARGET_LINK_LAYER;
    answer.option.len = 1;
    answer.option.addr = target_mac;
    answer.message.checksum = checksum(target, &ip.saddr, flags, &target_mac).to_be_bytes();
    let action = redirect::<TcContext>(ctx.ingress_ifindex())?;
    count(Counter::NdpReplied);
    Ok(action)
}

/// The ICMPv6 checksum of the advertisement from `target` to `asker`, computed whole (RFC
/// 4443 section 2.3): the pseudo-header (addresses, upper-layer length, next header) and
/// the message's 16-bit words, the target address appearing twice (as source and as target).
#[inline(always)]
fn checksum(target: &Ipv6Be, asker: &Ipv6Be, flags: u8, target_mac: &[u8; 6]) -> u16 {
    let mut sum = 2 * address_sum(target) + address_sum(asker);
    sum += ADVERTISEMENT_PAYLOAD as u32 + IPPROTO_ICMPV6 as u32;
    sum += (NEIGHBOR_ADVERTISEMENT as u32) << 8; // type, code 0
    sum += (flags as u32) << 8;
    sum += ((OPTION_TARGET_LINK_LAYER as u32) << 8) | 1;
    sum += u16::from_be_bytes([target_mac[0], target_mac[1]]) as u32
        + u16::from_be_bytes([target_mac[2], target_mac[3]]) as u32
        + u16::from_be_bytes([target_mac[4], target_mac[5]]) as u32;
    !fold(sum)
}

/// The sum of an address's 16-bit words, in host order.
#[inline(always)]
fn address_sum(addr: &Ipv6Be) -> u32 {
    let mut sum = 0;
    for word in addr {
        let word = u32::from_be(*word);
        sum += (word >> 16) + (word & 0xffff);
    }
    sum
}
