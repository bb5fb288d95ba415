//! `bpfnet monitor`'s events, from the programs' side: a drop and a new translated flow are
//! written to the ring buffer with every field, only while their bit is set in CONFIG; each
//! CPU's token bucket bounds them and counts the rest; a container's drops are counted as its.
use aya::maps::{Map, MapData, PerCpuArray};
use datapath_common::{
    ct_kind, event_kind, host_config_flags, map_names, CtKey, DatapathEvent, DropReason, EventBudget, EventLoss,
};

use super::{
    be,
    nat::{from_container, key, snat_to_server, L4},
    packets::{eth, ipv4, udp, ETHERTYPE_IPV4, IPPROTO_UDP},
    Fixture, Topology, B_IP, SERVER_IP, UPLINK_IP, WEB_GATEWAY,
};
use crate::devkit::netns::is_root;

fn take_events(fx: &Fixture) -> Vec<DatapathEvent> {
    fx.take_events().unwrap_or_else(|e| panic!("reading the events: {e:#}"))
}

fn per_cpu_sum(fx: &Fixture, map: &str, index: u32) -> u64 {
    let data = MapData::from_pin(fx.pin_dir().join("maps").join(map)).unwrap();
    let array: PerCpuArray<MapData, u64> = PerCpuArray::try_from(Map::PerCpuArray(data)).unwrap();
    array.get(&index, 0).unwrap().iter().sum()
}

fn set_event_flags(fx: &mut Fixture, flags: u32) {
    fx.set_event_flags(flags).unwrap();
}

/// UDP from A claiming B's address: dropped as spoofed.
fn spoofed_from_a(t: &Topology) -> Vec<u8> {
    let datagram = udp(B_IP, WEB_GATEWAY, 4000, 53, b"spoofed");
    eth(t.web.gateway_mac, t.a.mac, ETHERTYPE_IPV4, &ipv4(B_IP, WEB_GATEWAY, IPPROTO_UDP, &[], &datagram))
}

#[test]
fn a_drop_is_an_event_with_its_packet_only_while_drops_are_wanted() {
    if !is_root() {
        return;
    }
    let (mut fx, t) = Fixture::with_topology();
    let frame = spoofed_from_a(&t);
    let a_drops = |fx: &Fixture| per_cpu_sum(fx, map_names::ENDPOINT_DROPS, t.a.stats_slot);
    let before = a_drops(&fx);
    take_events(&fx);
    fx.run_from_endpoint(t.a.host_ifindex, &frame).assert_dropped(DropReason::SpoofedSource);
    assert!(take_events(&fx).is_empty(), "no event while nobody listens");
    assert_eq!(a_drops(&fx), before + 1, "counted as A's drop all the same");

    set_event_flags(&mut fx, host_config_flags::EVENTS_FLOWS);
    fx.run_from_endpoint(t.a.host_ifindex, &frame).assert_dropped(DropReason::SpoofedSource);
    assert!(take_events(&fx).is_empty(), "flows wanted, not drops");

    set_event_flags(&mut fx, host_config_flags::EVENTS_DROPS);
    fx.run_from_endpoint(t.a.host_ifindex, &frame).assert_dropped(DropReason::SpoofedSource);
    let events = take_events(&fx);
    let expected = DatapathEvent {
        kind: event_kind::DROP,
        detail: DropReason::SpoofedSource as u8,
        ifindex: t.a.host_ifindex,
        len: frame.len() as u32,
        tuple: CtKey {
            saddr: be(B_IP),
            daddr: be(WEB_GATEWAY),
            sport: 4000u16.to_be(),
            dport: 53u16.to_be(),
            proto: IPPROTO_UDP,
            _pad: [0; 3],
        },
        ..Default::default()
    };
    assert_eq!(events, vec![expected]);
    assert_eq!(a_drops(&fx), before + 3);

    // Not IPv4 (an 802.1Q frame): the event says only that.
    let vlan = eth(t.web.gateway_mac, t.a.mac, 0x8100, &[0u8; 46]);
    fx.run_from_endpoint(t.a.host_ifindex, &vlan).assert_dropped(DropReason::UnsupportedL3);
    let events = take_events(&fx);
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].detail, events[0].tuple), (DropReason::UnsupportedL3 as u8, CtKey::default()));
}

#[test]
fn a_new_translated_flow_is_an_event_with_both_tuples() {
    if !is_root() {
        return;
    }
    let (mut fx, t, _uplink) = Fixture::with_uplink();
    {
        take_events(&fx);
        let dns = L4::Udp { sport: 40000, dport: 53, payload: b"query" };
        snat_to_server(&fx, &t, &dns);
        assert!(take_events(&fx).is_empty(), "no event while nobody listens");
        fx.clear_ct();
        set_event_flags(&mut fx, host_config_flags::EVENTS_FLOWS);
        let port = snat_to_server(&fx, &t, &dns);
        let original = key(super::A_IP, SERVER_IP, dns.key_ports(), IPPROTO_UDP);
        let events = take_events(&fx);
        assert_eq!(events.len(), 1, "{events:?}");
        let e = events[0];
        assert_eq!((e.kind, e.detail, e.ifindex), (event_kind::NEW_FLOW, ct_kind::SNAT, t.a.host_ifindex));
        assert_eq!(e.len as usize, from_container(&t.a, SERVER_IP, &dns).len());
        assert_eq!(e.tuple, original);
        assert_eq!(e.translated, CtKey { saddr: be(UPLINK_IP), sport: port.to_be(), ..original });
    }
}

#[test]
fn each_cpu_writes_a_bounded_burst_and_counts_the_rest_as_rate_limited() {
    if !is_root() {
        return;
    }
    let (mut fx, t) = Fixture::with_topology();
    set_event_flags(&mut fx, host_config_flags::EVENTS_DROPS);
    let frame = spoofed_from_a(&t);
    take_events(&fx);
    let lost_before = per_cpu_sum(&fx, map_names::EVENTS_LOST, EventLoss::RateLimited as u32);
    const RUNS: u32 = 6_000;
    let started = std::time::Instant::now();
    let batch = (0..RUNS).map(|_| (datapath_common::program_names::FROM_ENDPOINT, t.a.host_ifindex, frame.clone()));
    for out in fx.run_batch(batch.collect()).unwrap() {
        assert_eq!(out.unwrap().retval, super::TC_ACT_SHOT);
    }
    let elapsed = started.elapsed();
    let written = take_events(&fx).len() as u64;
    let lost = per_cpu_sum(&fx, map_names::EVENTS_LOST, EventLoss::RateLimited as u32) - lost_before;
    assert_eq!(written + lost, u64::from(RUNS), "every drop is written or counted as lost");
    // Two CPUs at most (the test thread may move), each its burst and what it earned.
    let cpus = aya::util::nr_cpus().unwrap() as u64;
    let earned = elapsed.as_nanos() as u64 / EventBudget::NS_PER_EVENT + 1;
    assert!(written >= EventBudget::BURST.min(u64::from(RUNS)), "{written} written");
    assert!(written <= cpus * (EventBudget::BURST + earned), "{written} written in {elapsed:?}");
    assert_eq!(per_cpu_sum(&fx, map_names::EVENTS_LOST, EventLoss::RingFull as u32), 0);
}
