//! The ARP responder of `from_endpoint`: requests for the gateway and for members are
//! answered in place and sent back to the asker; everything else is dropped with a reason.
use std::net::Ipv4Addr;

use datapath_common::{Counter, DropReason};

use super::{
    packets::{Arp, BROADCAST},
    Fixture, A_IP, B_IP, C_IP, WEB_GATEWAY,
};
use crate::devkit::netns::is_root;

/// The reply the datapath must produce for a request from `asker` about `target`.
fn expected_reply(asker_mac: [u8; 6], asker_ip: Ipv4Addr, target_mac: [u8; 6], target_ip: Ipv4Addr) -> Vec<u8> {
    Arp::reply(target_mac, target_ip, asker_mac, asker_ip).frame(asker_mac, target_mac)
}

#[test]
fn request_for_the_gateway_is_answered_with_the_gateway_mac() {
    if !is_root() {
        return;
    }
    let (fx, t) = Fixture::with_topology();
    let request = Arp::request(t.a.mac, A_IP, WEB_GATEWAY).frame(BROADCAST, t.a.mac);
    let out = fx.run_from_endpoint(t.a.host_ifindex, &request);
    out.assert_redirected(Counter::ArpReplied, &expected_reply(t.a.mac, A_IP, t.web.gateway_mac, WEB_GATEWAY));
    // Spelled out once, byte by byte, so the helper above is checked too.
    let mut by_hand = Vec::new();
    by_hand.extend(t.a.mac); // eth dst: the asker
    by_hand.extend(t.web.gateway_mac); // eth src: the answer
    by_hand.extend([0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 2]); // ARP, Ethernet/IPv4, reply
    by_hand.extend(t.web.gateway_mac); // sha
    by_hand.extend(WEB_GATEWAY.octets()); // spa
    by_hand.extend(t.a.mac); // tha
    by_hand.extend(A_IP.octets()); // tpa
    super::assert_bytes(&out.packet, &by_hand, "ARP reply");
}

#[test]
fn request_for_a_member_is_answered_with_its_mac() {
    if !is_root() {
        return;
    }
    let (fx, t) = Fixture::with_topology();
    // Unicast (a cache refresh) as well as broadcast.
    for dst in [BROADCAST, t.web.gateway_mac] {
        let request = Arp::request(t.a.mac, A_IP, B_IP).frame(dst, t.a.mac);
        fx.run_from_endpoint(t.a.host_ifindex, &request)
            .assert_redirected(Counter::ArpReplied, &expected_reply(t.a.mac, A_IP, t.b.mac, B_IP));
    }
    // And the other way round, from B's interface.
    let request = Arp::request(t.b.mac, B_IP, A_IP).frame(BROADCAST, t.b.mac);
    fx.run_from_endpoint(t.b.host_ifindex, &request)
        .assert_redirected(Counter::ArpReplied, &expected_reply(t.b.mac, B_IP, t.a.mac, A_IP));
}

#[test]
fn address_probe_is_answered_only_for_addresses_in_use() {
    if !is_root() {
        return;
    }
    let (fx, t) = Fixture::with_topology();
    // RFC 5227 probe (sender 0.0.0.0) for the gateway: in use, so answered, to 0.0.0.0.
    let probe = Arp::request(t.a.mac, Ipv4Addr::UNSPECIFIED, WEB_GATEWAY).frame(BROADCAST, t.a.mac);
    fx.run_from_endpoint(t.a.host_ifindex, &probe).assert_redirected(
        Counter::ArpReplied,
        &expected_reply(t.a.mac, Ipv4Addr::UNSPECIFIED, t.web.gateway_mac, WEB_GATEWAY),
    );
    // A probe or announcement for its own address must stay unanswered, or the container
    // would see its address as taken.
    let probe = Arp::request(t.a.mac, Ipv4Addr::UNSPECIFIED, A_IP).frame(BROADCAST, t.a.mac);
    fx.run_from_endpoint(t.a.host_ifindex, &probe).assert_dropped(DropReason::ArpUnknownTarget);
    let announce = Arp::request(t.a.mac, A_IP, A_IP).frame(BROADCAST, t.a.mac);
    fx.run_from_endpoint(t.a.host_ifindex, &announce).assert_dropped(DropReason::ArpUnknownTarget);
}

#[test]
fn request_for_a_non_member_or_another_networks_member_is_dropped() {
    if !is_root() {
        return;
    }
    let (fx, t) = Fixture::with_topology();
    for target in [
        Ipv4Addr::new(10, 88, 0, 99), // free address of its own subnet
        C_IP,                         // member of `db`
        Ipv4Addr::new(10, 99, 0, 1),  // `db`'s gateway
        Ipv4Addr::new(192, 0, 2, 1),  // outside every network
    ] {
        let request = Arp::request(t.a.mac, A_IP, target).frame(BROADCAST, t.a.mac);
        fx.run_from_endpoint(t.a.host_ifindex, &request).assert_dropped(DropReason::ArpUnknownTarget);
    }
}

#[test]
fn spoofed_sender_ip_or_mac_is_dropped() {
    if !is_root() {
        return;
    }
    let (fx, t) = Fixture::with_topology();
    let cases = [
        ("sender IP of B", Arp::request(t.a.mac, B_IP, WEB_GATEWAY).frame(BROADCAST, t.a.mac)),
        ("sender MAC of B", Arp::request(t.b.mac, A_IP, WEB_GATEWAY).frame(BROADCAST, t.a.mac)),
        ("B's IP and MAC", Arp::request(t.b.mac, B_IP, WEB_GATEWAY).frame(BROADCAST, t.a.mac)),
        (
            "reply claiming B",
            Arp::reply(t.a.mac, B_IP, t.web.gateway_mac, WEB_GATEWAY).frame(t.web.gateway_mac, t.a.mac),
        ),
    ];
    for (what, frame) in cases {
        eprintln!("case: {what}");
        fx.run_from_endpoint(t.a.host_ifindex, &frame).assert_dropped(DropReason::SpoofedSource);
    }
}

// The Ethernet source of an ARP packet is a source address too: the IPv4 path drops a
// foreign one, the ARP path must as well. (Both fail on the datapath as of this writing:
// `arp::answer` checks the ARP sender fields but never the Ethernet source.)

#[test]
fn arp_request_with_spoofed_ethernet_source_is_dropped() {
    if !is_root() {
        return;
    }
    let (fx, t) = Fixture::with_topology();
    let request = Arp::request(t.a.mac, A_IP, WEB_GATEWAY).frame(BROADCAST, t.b.mac);
    fx.run_from_endpoint(t.a.host_ifindex, &request).assert_dropped(DropReason::SpoofedSource);
}

#[test]
fn arp_reply_with_spoofed_ethernet_source_is_dropped() {
    if !is_root() {
        return;
    }
    let (fx, t) = Fixture::with_topology();
    let reply = Arp::reply(t.a.mac, A_IP, t.web.gateway_mac, WEB_GATEWAY).frame(t.web.gateway_mac, t.b.mac);
    fx.run_from_endpoint(t.a.host_ifindex, &reply).assert_dropped(DropReason::SpoofedSource);
}

#[test]
fn reply_for_its_own_address_goes_to_the_host() {
    if !is_root() {
        return;
    }
    let (fx, t) = Fixture::with_topology();
    // The host asked (it keeps neighbour entries for its containers); the container answers.
    let reply = Arp::reply(t.a.mac, A_IP, t.web.gateway_mac, WEB_GATEWAY).frame(t.web.gateway_mac, t.a.mac);
    fx.run_from_endpoint(t.a.host_ifindex, &reply).assert_passed(Counter::ArpToHost);
    // A reply from 0.0.0.0 answers nothing.
    let reply =
        Arp::reply(t.a.mac, Ipv4Addr::UNSPECIFIED, t.web.gateway_mac, WEB_GATEWAY).frame(t.web.gateway_mac, t.a.mac);
    fx.run_from_endpoint(t.a.host_ifindex, &reply).assert_dropped(DropReason::ArpInvalid);
}

#[test]
fn malformed_arp_is_dropped_as_invalid() {
    if !is_root() {
        return;
    }
    let (fx, t) = Fixture::with_topology();
    let good = Arp::request(t.a.mac, A_IP, WEB_GATEWAY);
    let cases = [
        ("htype 6 (IEEE 802)", Arp { htype: 6, ..good }),
        ("ptype IPv6", Arp { ptype: 0x86dd, ..good }),
        ("hlen 8", Arp { hlen: 8, ..good }),
        ("plen 16", Arp { plen: 16, ..good }),
        ("oper 3 (RARP request)", Arp { oper: 3, ..good }),
        ("oper 0", Arp { oper: 0, ..good }),
    ];
    for (what, arp) in cases {
        eprintln!("case: {what}");
        fx.run_from_endpoint(t.a.host_ifindex, &arp.frame(BROADCAST, t.a.mac)).assert_dropped(DropReason::ArpInvalid);
    }
}

#[test]
fn truncated_arp_is_malformed() {
    if !is_root() {
        return;
    }
    let (fx, t) = Fixture::with_topology();
    let request = Arp::request(t.a.mac, A_IP, WEB_GATEWAY).frame(BROADCAST, t.a.mac);
    // Everything but the last byte of the target address; and the bare Ethernet header.
    for len in [request.len() - 1, 14 + 8, 14] {
        fx.run_from_endpoint(t.a.host_ifindex, &request[..len]).assert_dropped(DropReason::Malformed);
    }
}

#[test]
fn arp_on_an_interface_that_is_no_endpoint_is_dropped() {
    if !is_root() {
        return;
    }
    let (mut fx, t) = Fixture::with_topology();
    let request = Arp::request(t.a.mac, A_IP, WEB_GATEWAY).frame(BROADCAST, t.a.mac);
    fx.run_from_endpoint(fx.peer_ifindex[0], &request).assert_dropped(DropReason::UnknownInterface);
    // After the maps are cleared, A's own interface is unknown too; seeded again, it works.
    fx.clear_maps();
    fx.run_from_endpoint(t.a.host_ifindex, &request).assert_dropped(DropReason::UnknownInterface);
    fx.seed(&t);
    fx.run_from_endpoint(t.a.host_ifindex, &request)
        .assert_redirected(Counter::ArpReplied, &expected_reply(t.a.mac, A_IP, t.web.gateway_mac, WEB_GATEWAY));
}
