//! Conntrack's progress through crafted packets: each TCP transition (SYN, retransmitted SYN,
//! SYN-ACK, the handshake's ACK, FIN and its acknowledgement, RST, a SYN-ACK without a SYN),
//! UDP and ICMP assurance, the move of assured flows to CT and what happens when CT is at its
//! limit, the quota that sends a container's or a published port's excess new flows to the
//! overflow table, and the early drop of the oldest unassured flow when its table is full.
use std::net::Ipv4Addr;

use datapath_common::{ct_fill, ct_stats, ct_tcp_flags, Counter, CtKey, CtQuotaKey, DropReason, HostConfig};

use super::nat::{
    entry, from_container, from_outside, key, publish_b, snat_to_server, ACK, B_PORT, CLIENT_IP, FIN, L4,
    PUBLISHED_PORT, RST, SYN,
};
use super::{be, packets::IPPROTO_TCP, packets::IPPROTO_UDP, uplink_test, Fixture, Topology, Uplink};
use super::{A_IP, B_IP, SERVER_IP, TC_ACT_REDIRECT, UPLINK_IP};
use crate::{datapath::CtTable, devkit::netns::is_root};

/// A's TCP flow to the server's port 443, from port 40001, and the key of its replies.
struct TcpFlow {
    l4: L4<'static>,
    original: CtKey,
    reply_key: CtKey,
    /// The NAT port, host order.
    port: u16,
}

impl TcpFlow {
    /// A's SYN, checked as the start of a flow in the unassured table.
    fn open(fx: &Fixture, t: &Topology) -> TcpFlow {
        let l4 = L4::Tcp { sport: 40001, dport: 443, flags: SYN, payload: b"" };
        let port = snat_to_server(fx, t, &l4);
        let original = key(A_IP, SERVER_IP, l4.key_ports(), IPPROTO_TCP);
        let reply_key = key(SERVER_IP, UPLINK_IP, (443u16.to_be(), port.to_be()), IPPROTO_TCP);
        TcpFlow { l4, original, reply_key, port }
    }

    /// A sends a segment with `flags`.
    #[track_caller]
    fn out(&self, fx: &Fixture, t: &Topology, flags: u8) {
        fx.run_from_endpoint(t.a.host_ifindex, &from_container(&t.a, SERVER_IP, &self.l4.with_flags(flags)))
            .assert_moved(TC_ACT_REDIRECT, &[], &[Counter::TranslatedOut]);
    }

    /// The server answers with `flags`.
    #[track_caller]
    fn back(&self, fx: &Fixture, uplink: &Uplink, flags: u8) {
        let reply = L4::Tcp { sport: 443, dport: self.port, flags, payload: b"" };
        fx.run_from_uplink(uplink.ifindex, &from_outside(SERVER_IP, UPLINK_IP, &reply)).assert_moved(
            TC_ACT_REDIRECT,
            &[],
            &[Counter::TranslatedIn],
        );
    }

    /// (table, ORIGINAL flags, REPLY flags); both entries must be in the same table.
    #[track_caller]
    fn seen(&self, fx: &Fixture) -> (CtTable, u8, u8) {
        let (table, original) = fx.ct_get(&self.original).expect("the ORIGINAL entry");
        let (reply_table, reply) = fx.ct_get(&self.reply_key).expect("the REPLY entry");
        assert_eq!(table, reply_table, "both directions in one table");
        (table, original.tcp_flags, reply.tcp_flags)
    }
}

/// A's quota key: its own address.
fn quota_of_a() -> CtQuotaKey {
    CtQuotaKey { addr: be(A_IP), ..Default::default() }
}

fn quota_held(fx: &Fixture, key: &CtQuotaKey) -> u64 {
    fx.ct_quota.get(key, 0).unwrap_or(0)
}

uplink_test! {
    fn the_handshakes_third_packet_moves_the_flow_to_the_assured_table(fx, t, uplink) {
        use ct_tcp_flags as f;
        let flow = TcpFlow::open(&fx, &t);
        assert_eq!(flow.seen(&fx), (CtTable::Unassured, f::SYN, 0), "SYN_SENT");
        assert_eq!(quota_held(&fx, &quota_of_a()), 1, "the new flow counts against A's share");
        // A retransmitted SYN is the same flow.
        flow.out(&fx, &t, SYN);
        assert_eq!(flow.seen(&fx), (CtTable::Unassured, f::SYN, 0));
        assert_eq!(entry(&fx, &flow.original).packets, 2);
        assert_eq!(fx.ct_inserted(), 2, "no new entries");
        flow.back(&fx, &uplink, SYN | ACK);
        assert_eq!(flow.seen(&fx), (CtTable::Unassured, f::SYN, f::SYN | f::ACK), "SYN_RECV");
        assert_eq!(fx.ct_assured_inserted(), 0);
        // The SYN-ACK retransmitted: still not assured.
        flow.back(&fx, &uplink, SYN | ACK);
        assert_eq!(flow.seen(&fx).0, CtTable::Unassured);
        // The originator's ACK completes the handshake: the flow moves, with both entries.
        flow.out(&fx, &t, ACK);
        assert_eq!(flow.seen(&fx), (CtTable::Assured, f::SYN | f::ACK | f::ASSURED, f::SYN | f::ACK), "ESTABLISHED");
        assert_eq!(entry(&fx, &flow.original).packets, 3, "the counters moved with it");
        assert_eq!(entry(&fx, &flow.reply_key).packets, 2);
        assert_eq!(fx.ct_assured_inserted(), 2, "CT_FILL counts both");
        assert_eq!(fx.ct_stat(ct_stats::PROMOTED), 1);
        assert_eq!(quota_held(&fx, &quota_of_a()), 0, "its place in A's share is given back");
        assert_eq!(fx.ct_entries().len(), 2, "nothing left in the unassured table");
        // Established: data both ways changes nothing but the counters.
        flow.out(&fx, &t, ACK);
        flow.back(&fx, &uplink, ACK);
        assert_eq!(flow.seen(&fx), (CtTable::Assured, f::SYN | f::ACK | f::ASSURED, f::SYN | f::ACK));
        assert_eq!(fx.ct_stat(ct_stats::PROMOTED), 1);
    }
}

uplink_test! {
    fn fin_rst_and_their_acknowledgements_are_recorded_for_both_directions(fx, t, uplink) {
        use ct_tcp_flags as f;
        let flow = TcpFlow::open(&fx, &t);
        flow.back(&fx, &uplink, SYN | ACK);
        flow.out(&fx, &t, ACK);
        let established = (f::SYN | f::ACK | f::ASSURED, f::SYN | f::ACK);
        // A closes: the server's entry learns of it (FIN_WAIT) ...
        flow.out(&fx, &t, FIN | ACK);
        assert_eq!(flow.seen(&fx), (CtTable::Assured, established.0 | f::FIN, established.1 | f::PEER_FIN));
        // ... the server acknowledges it (CLOSE_WAIT) ...
        flow.back(&fx, &uplink, ACK);
        assert_eq!(flow.seen(&fx).2, established.1 | f::PEER_FIN | f::FIN_ACKED);
        // ... closes too (LAST_ACK) ...
        flow.back(&fx, &uplink, FIN | ACK);
        assert_eq!(flow.seen(&fx).1, established.0 | f::FIN | f::PEER_FIN);
        // ... and A acknowledges that (TIME_WAIT).
        flow.out(&fx, &t, ACK);
        assert_eq!(
            flow.seen(&fx),
            (
                CtTable::Assured,
                established.0 | f::FIN | f::PEER_FIN | f::FIN_ACKED,
                established.1 | f::FIN | f::PEER_FIN | f::FIN_ACKED
            )
        );
        // A reset is recorded on the direction that sent it (CLOSE).
        flow.back(&fx, &uplink, RST);
        assert_ne!(flow.seen(&fx).2 & f::RST, 0);
        assert_eq!(flow.seen(&fx).1 & f::RST, 0);
    }
}

uplink_test! {
    fn a_syn_ack_or_rst_that_answers_no_flow_starts_none(mut fx, t, uplink) {
        publish_b(&mut fx);
        for flags in [SYN | ACK, RST, RST | ACK] {
            // From a container: dropped, as nf_conntrack's INVALID; nothing tracked.
            let l4 = L4::Tcp { sport: 40001, dport: 443, flags, payload: b"" };
            fx.run_from_endpoint(t.a.host_ifindex, &from_container(&t.a, SERVER_IP, &l4))
                .assert_dropped(DropReason::ConntrackInvalid);
            // From outside to a published port: the host's, untranslated.
            let l4 = L4::Tcp { sport: 5555, dport: PUBLISHED_PORT, flags, payload: b"" };
            let out = fx.run_from_uplink(uplink.ifindex, &from_outside(CLIENT_IP, UPLINK_IP, &l4));
            out.assert_passed(Counter::UplinkToHost);
            assert_eq!(out.packet, out.input, "untouched");
        }
        assert!(fx.ct_entries().is_empty(), "nothing tracked: {:?}", fx.ct_entries());
        // A bare ACK picks up a flow under way (nf_conntrack's loose pick-up).
        let l4 = L4::Tcp { sport: 40002, dport: 443, flags: ACK, payload: b"data" };
        snat_to_server(&fx, &t, &l4);
    }
}

uplink_test! {
    fn a_syn_answered_but_never_acknowledged_stays_unassured(mut fx, t, uplink) {
        use ct_tcp_flags as f;
        publish_b(&mut fx);
        // A spoofed client: its SYN reaches B, B's SYN-ACK goes out, no ACK ever comes.
        let syn = L4::Tcp { sport: 5555, dport: PUBLISHED_PORT, flags: SYN, payload: b"" };
        fx.run_from_uplink(uplink.ifindex, &from_outside(CLIENT_IP, UPLINK_IP, &syn))
            .assert_moved(TC_ACT_REDIRECT, &[], &[Counter::DnatNewFlow, Counter::TranslatedIn]);
        let syn_ack = L4::Tcp { sport: B_PORT, dport: 5555, flags: SYN | ACK, payload: b"" };
        for _ in 0..3 {
            fx.run_from_endpoint(t.b.host_ifindex, &from_container(&t.b, CLIENT_IP, &syn_ack))
                .assert_moved(TC_ACT_REDIRECT, &[], &[Counter::TranslatedOut]);
        }
        let original = key(CLIENT_IP, UPLINK_IP, (5555u16.to_be(), PUBLISHED_PORT.to_be()), IPPROTO_TCP);
        let reply_key = key(B_IP, CLIENT_IP, (B_PORT.to_be(), 5555u16.to_be()), IPPROTO_TCP);
        assert_eq!(fx.ct_get(&original).map(|(table, e)| (table, e.tcp_flags)), Some((CtTable::Unassured, f::SYN)));
        assert_eq!(fx.ct_get(&reply_key).map(|(table, e)| (table, e.tcp_flags)), Some((CtTable::Unassured, f::SYN | f::ACK)));
        let port_quota = CtQuotaKey { addr: be(B_IP), port: B_PORT.to_be(), proto: IPPROTO_TCP, _pad: 0 };
        assert_eq!(quota_held(&fx, &port_quota), 1, "counted against the published port's share");
        assert_eq!(fx.ct_assured_inserted(), 0);
    }
}

uplink_test! {
    fn udp_is_assured_when_the_originator_sends_again_after_an_answer_and_icmp_never(fx, t, uplink) {
        let l4 = L4::Udp { sport: 40000, dport: 53, payload: b"q" };
        let port = snat_to_server(&fx, &t, &l4);
        let original = key(A_IP, SERVER_IP, l4.key_ports(), IPPROTO_UDP);
        // Sent again before any answer: still unassured.
        fx.run_from_endpoint(t.a.host_ifindex, &from_container(&t.a, SERVER_IP, &l4));
        assert_eq!(fx.ct_get(&original).unwrap().0, CtTable::Unassured);
        let answer = L4::Udp { sport: 53, dport: port, payload: b"a" };
        fx.run_from_uplink(uplink.ifindex, &from_outside(SERVER_IP, UPLINK_IP, &answer))
            .assert_moved(TC_ACT_REDIRECT, &[], &[Counter::TranslatedIn]);
        assert_eq!(fx.ct_get(&original).unwrap().0, CtTable::Unassured, "one answer: a query, not a stream");
        fx.run_from_endpoint(t.a.host_ifindex, &from_container(&t.a, SERVER_IP, &l4));
        assert_eq!(fx.ct_get(&original).unwrap().0, CtTable::Assured);
        assert_eq!(fx.ct_assured_inserted(), 2);
        // An echo and its reply, and another echo: ICMP flows stay unassured.
        let echo = L4::EchoRequest { id: 0x4242, seq: 1, payload: b"ping" };
        snat_to_server(&fx, &t, &echo);
        let echo_key = key(A_IP, SERVER_IP, echo.key_ports(), crate::devkit::testbed::packets::IPPROTO_ICMP);
        let nat_id = u16::from_be(entry(&fx, &echo_key).to.sport);
        let pong = L4::EchoReply { id: nat_id, seq: 1, payload: b"ping" };
        fx.run_from_uplink(uplink.ifindex, &from_outside(SERVER_IP, UPLINK_IP, &pong))
            .assert_moved(TC_ACT_REDIRECT, &[], &[Counter::TranslatedIn]);
        fx.run_from_endpoint(t.a.host_ifindex, &from_container(&t.a, SERVER_IP, &echo));
        assert_eq!(fx.ct_get(&echo_key).unwrap().0, CtTable::Unassured);
    }
}

uplink_test! {
    fn at_the_assured_tables_limit_an_assured_flow_stays_where_it_is_and_moves_later(mut fx, t, uplink) {
        use ct_tcp_flags as f;
        // CT is full as far as its fill limit says: nothing is refused, nothing evicted.
        fx.ct_fill.set(ct_fill::INSERTED, u64::from(crate::devkit::datapath_tests::CT_LIMIT), 0).unwrap();
        let flow = TcpFlow::open(&fx, &t);
        flow.back(&fx, &uplink, SYN | ACK);
        flow.out(&fx, &t, ACK);
        assert_eq!(flow.seen(&fx), (CtTable::Unassured, f::SYN | f::ACK | f::ASSURED, f::SYN | f::ACK));
        assert_eq!(fx.ct_stat(ct_stats::PROMOTION_REFUSED), 1);
        // Its traffic goes on; the refusal is counted once per flow.
        flow.out(&fx, &t, ACK);
        flow.back(&fx, &uplink, ACK);
        assert_eq!(fx.ct_stat(ct_stats::PROMOTION_REFUSED), 1);
        // The agent's garbage collection frees room: the next packet moves it.
        fx.ct_fill.set(ct_fill::REMOVED, 2, 0).unwrap();
        flow.out(&fx, &t, ACK);
        assert_eq!(flow.seen(&fx).0, CtTable::Assured);
        assert_eq!(fx.ct_stat(ct_stats::PROMOTED), 1);
    }
}

uplink_test! {
    fn over_its_share_a_containers_or_ports_new_flows_go_to_the_overflow_table(mut fx, t, uplink) {
        publish_b(&mut fx);
        let config = fx.config.get(&0, 0).unwrap();
        fx.set_config(&HostConfig { ct_unassured_quota: 2, ..config });
        let udp_from_a = |sport: u16| L4::Udp { sport, dport: 53, payload: b"q" };
        let table_of_a = |fx: &Fixture, sport: u16| {
            fx.ct_get(&key(A_IP, SERVER_IP, udp_from_a(sport).key_ports(), IPPROTO_UDP)).unwrap().0
        };
        for sport in [40000, 40001, 40002, 40003] {
            fx.run_from_endpoint(t.a.host_ifindex, &from_container(&t.a, SERVER_IP, &udp_from_a(sport)))
                .assert_moved(TC_ACT_REDIRECT, &[], &[Counter::SnatNewFlow, Counter::TranslatedOut]);
        }
        assert_eq!(
            [40000, 40001, 40002, 40003].map(|sport| table_of_a(&fx, sport)),
            [CtTable::Unassured, CtTable::Unassured, CtTable::Overflow, CtTable::Overflow]
        );
        assert_eq!(quota_held(&fx, &quota_of_a()), 2);
        assert_eq!(fx.ct_stat(ct_stats::QUOTA_HITS), 2);
        assert_eq!(fx.ct_quota_hits(t.a.stats_slot).unwrap(), 2, "counted for A");
        // Another container's new flow is not affected.
        let from_c = L4::Udp { sport: 41000, dport: 53, payload: b"q" };
        fx.run_from_endpoint(t.c.host_ifindex, &from_container(&t.c, SERVER_IP, &from_c));
        let c_key = key(Ipv4Addr::from(t.c.ip.to_ne_bytes()), SERVER_IP, from_c.key_ports(), IPPROTO_UDP);
        assert_eq!(fx.ct_get(&c_key).unwrap().0, CtTable::Unassured);
        // A published port has a share of its own, counted for the container behind it.
        for cport in [5000, 5001, 5002] {
            let syn = L4::Tcp { sport: cport, dport: PUBLISHED_PORT, flags: SYN, payload: b"" };
            fx.run_from_uplink(uplink.ifindex, &from_outside(CLIENT_IP, UPLINK_IP, &syn))
                .assert_moved(TC_ACT_REDIRECT, &[], &[Counter::DnatNewFlow, Counter::TranslatedIn]);
        }
        let syn_key = |cport: u16| key(CLIENT_IP, UPLINK_IP, (cport.to_be(), PUBLISHED_PORT.to_be()), IPPROTO_TCP);
        assert_eq!(fx.ct_get(&syn_key(5002)).unwrap().0, CtTable::Overflow);
        assert_eq!(fx.ct_quota_hits(t.b.stats_slot).unwrap(), 1, "counted for B");
        // An overflowed flow still completes its handshake and becomes assured.
        let syn_ack = L4::Tcp { sport: B_PORT, dport: 5002, flags: SYN | ACK, payload: b"" };
        fx.run_from_endpoint(t.b.host_ifindex, &from_container(&t.b, CLIENT_IP, &syn_ack))
            .assert_moved(TC_ACT_REDIRECT, &[], &[Counter::TranslatedOut]);
        let ack = L4::Tcp { sport: 5002, dport: PUBLISHED_PORT, flags: ACK, payload: b"" };
        fx.run_from_uplink(uplink.ifindex, &from_outside(CLIENT_IP, UPLINK_IP, &ack))
            .assert_moved(TC_ACT_REDIRECT, &[], &[Counter::TranslatedIn]);
        assert_eq!(fx.ct_get(&syn_key(5002)).unwrap().0, CtTable::Assured);
    }
}

/// A full unassured table takes new flows all the same: each evicts one of the oldest, as
/// nf_conntrack's early_drop does, and no packet is dropped.
#[test]
fn a_full_unassured_table_evicts_the_oldest_flows_instead_of_refusing_new_ones() {
    if !is_root() {
        return;
    }
    let (mut fx, t, uplink) = Fixture::with_uplink();
    let config = HostConfig { ct_unassured_quota: 0, ..fx.host_config(&uplink) };
    fx.set_config(&config);
    let capacity = CtTable::Unassured.entries_for(super::FIXTURE_CT_ENTRIES);
    // Twice the flows the table holds (four times its entries: two per flow), 20 to each
    // destination port (NAT ports are chosen per destination, and the fixture's range is 100).
    // The kernel's LRU is approximate (per-CPU free lists, a reference bit that spares
    // recently used entries): with only as many flows as entries, the first one was seen to
    // survive once in a full run under load.
    let flows = 2 * capacity;
    for i in 0..flows {
        let l4 = L4::Udp { sport: 10_000 + i as u16, dport: 1 + (i / 20) as u16, payload: b"q" };
        let packet = from_container(&t.a, SERVER_IP, &l4);
        let out = fx.run_program(datapath_common::program_names::FROM_ENDPOINT, t.a.host_ifindex, &packet, 1).unwrap();
        assert_eq!(out.retval, TC_ACT_REDIRECT, "flow {i} of {flows}");
    }
    let held = fx.ct_tables[CtTable::Unassured as usize].keys().count() as u32;
    assert!(held <= capacity && held > capacity / 2, "{held} entries of {capacity}");
    let counts = fx.counts().unwrap();
    assert_eq!(counts.drops.iter().sum::<u64>(), 0, "nothing dropped");
    // The newest flow is there; the first one was evicted.
    let first = L4::Udp { sport: 10_000, dport: 1, payload: b"q" };
    assert!(fx.ct_get(&key(A_IP, SERVER_IP, first.key_ports(), IPPROTO_UDP)).is_none(), "the oldest flow was evicted");
}
