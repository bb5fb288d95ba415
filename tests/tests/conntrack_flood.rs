//! Conntrack under a SYN flood, with real traffic: 60,000 SYNs from spoofed outside addresses
//! at a published port, or from one container through masquerade, deny no one else a new
//! connection, during the flood or after it; an established stream goes on untouched; and the
//! flood's flows are gone once their SYN_RECV timeout has passed.
use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddrV4, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use bpfnet_tests::{in_netns, run, syn_flood, udp_flood, Sandbox, IO_TIMEOUT, OUTSIDE_IP, UPLINK_HOST_IP};
use serde_json::Value;

/// TEST-NET-2: addresses of no namespace, so nothing ever answers the SYN-ACKs sent to them.
const SPOOFED: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 51, 100, 0), 22);
const FLOOD: u32 = 60_000;
const SYN_RECV_TIMEOUT_SECS: u64 = 3;

/// A host with a small conntrack (8,192 assured entries, as the attack was measured with),
/// short SYN_RECV timeout, a GC every second, and containers `web` (8080 -> 80 answered by an
/// echo server, 5201 -> 5201 carrying a long stream) and `other`.
fn flood_sandbox() -> (Sandbox, String, String) {
    let mut sb = Sandbox::with_uplink();
    sb.set_agent_env("BPFNET_CT_SIZE", "8192");
    sb.set_agent_env("BPFNET_CT_TIMEOUT_TCP_SYN_RECV", &SYN_RECV_TIMEOUT_SECS.to_string());
    sb.set_agent_env("BPFNET_GC_INTERVAL", "1");
    let net = sb.name("net");
    sb.ok(&["network", "create", &net, "--subnet", "10.231.0.0/24"]);
    let (web, other) = (sb.name("web"), sb.name("other"));
    sb.ok(&["container", "create", &web, "--network", &net, "-p", "8080:80", "-p", "5201:5201"]);
    sb.ok(&["container", "create", &other, "--network", &net]);
    // One SYN-ACK retransmission, not five: each refreshes the flood's entries, which would
    // then outlive the SYN_RECV timeout this test waits for by a minute.
    run("ip", &["netns", "exec", &web, "sysctl", "-qw", "net.ipv4.tcp_synack_retries=1"]).unwrap();
    (sb, web, other)
}

/// New connections made again and again until told to stop, each checked with an echo:
/// (attempts started before `flood_over` was set, after it; failures with their reasons).
struct Prober {
    handle: JoinHandle<(u32, u32, Vec<String>)>,
}

impl Prober {
    fn start(netns: &str, target: SocketAddrV4, stop: Arc<AtomicBool>, flood_over: Arc<AtomicBool>) -> Prober {
        let netns = netns.to_owned();
        let handle = std::thread::spawn(move || {
            let (mut during, mut after, mut failures) = (0, 0, Vec::new());
            while !stop.load(Ordering::SeqCst) {
                let over = flood_over.load(Ordering::SeqCst);
                let started = Instant::now();
                if let Err(e) = echo_once(&netns, target) {
                    failures.push(format!(
                        "{} flood, after {:?}: {e:#}",
                        if over { "after the" } else { "during the" },
                        started.elapsed()
                    ));
                }
                if over {
                    after += 1;
                } else {
                    during += 1;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (during, after, failures)
        });
        Prober { handle }
    }

    #[track_caller]
    fn check(self, what: &str) {
        let (during, after, failures) = self.handle.join().unwrap();
        assert!(
            failures.is_empty(),
            "{what}: {} of {} new connections failed: {failures:#?}",
            failures.len(),
            during + after
        );
        assert!(during > 0 && after > 0, "{what}: {during} attempts during the flood, {after} after");
        eprintln!("{what}: {during} new connections during the flood, {after} after, all answered");
    }
}

fn echo_once(netns: &str, target: SocketAddrV4) -> anyhow::Result<()> {
    in_netns(netns, move || {
        let mut stream = TcpStream::connect_timeout(&target.into(), IO_TIMEOUT)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.write_all(b"new")?;
        let mut answer = [0u8; 3];
        stream.read_exact(&mut answer)?;
        anyhow::ensure!(&answer == b"new", "wrong echo {answer:?}");
        Ok(())
    })
}

/// An established TCP stream through a published port, 1 KB echoed every few ms until told to
/// stop: (exchanges, bytes that did not come back as sent).
fn stream(from_netns: &str, target: SocketAddrV4, stop: Arc<AtomicBool>) -> JoinHandle<anyhow::Result<(u64, u64)>> {
    let mut conn = in_netns(from_netns, move || Ok(TcpStream::connect_timeout(&target.into(), IO_TIMEOUT)?)).unwrap();
    std::thread::spawn(move || {
        conn.set_read_timeout(Some(IO_TIMEOUT))?;
        let (mut exchanges, mut wrong) = (0u64, 0u64);
        let mut answer = [0u8; 1024];
        while !stop.load(Ordering::SeqCst) {
            let block = [(exchanges % 251) as u8; 1024];
            conn.write_all(&block)?;
            conn.read_exact(&mut answer)?;
            wrong += answer.iter().zip(block.iter()).filter(|(a, b)| a != b).count() as u64;
            exchanges += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok((exchanges, wrong))
    })
}

/// A live UDP flow: a datagram sent and its echo awaited every 3 ms until told to stop:
/// (sent, lost).
fn udp_flow(netns: &str, to: SocketAddrV4, stop: Arc<AtomicBool>) -> JoinHandle<anyhow::Result<(u64, u64)>> {
    let socket = in_netns(netns, move || {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
        socket.connect(to)?;
        socket.set_read_timeout(Some(IO_TIMEOUT))?;
        Ok(socket)
    })
    .unwrap();
    std::thread::spawn(move || {
        let (mut sent, mut lost) = (0u64, 0u64);
        let mut answer = [0u8; 64];
        while !stop.load(Ordering::SeqCst) {
            let payload = sent.to_be_bytes();
            socket.send(&payload)?;
            sent += 1;
            match socket.recv(&mut answer) {
                Ok(8) if answer[..8] == payload => {}
                _ => lost += 1,
            }
            std::thread::sleep(Duration::from_millis(3));
        }
        Ok((sent, lost))
    })
}

fn spoofed(flow: &Value) -> bool {
    let source: IpAddr = flow["source"].as_str().unwrap().split(':').next().unwrap().parse().unwrap();
    matches!(source, IpAddr::V4(v4) if u32::from(v4) >> (32 - SPOOFED.1) == u32::from(SPOOFED.0) >> (32 - SPOOFED.1))
}

fn container<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["containers"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap()
}

#[test]
fn a_spoofed_syn_flood_at_a_published_port_denies_no_one_a_new_connection() {
    let (mut sb, web, other) = flood_sandbox();
    let web_ip = sb.container_ip(&web);
    let out = sb.outside_netns().to_owned();
    sb.tcp_echo_server(&web, SocketAddrV4::new(web_ip, 80), 10_000);
    sb.tcp_echo_server(&web, SocketAddrV4::new(web_ip, 5201), 1);
    let outside_server = SocketAddrV4::new(OUTSIDE_IP, 7000);
    sb.tcp_echo_server(&out, outside_server, 10_000);
    sb.ok(&["publish", &web, "5353:53/udp"]);
    sb.udp_echo_server(&web, SocketAddrV4::new(web_ip, 53), 1_000_000);

    let stop = Arc::new(AtomicBool::new(false));
    let flood_over = Arc::new(AtomicBool::new(false));
    let established = stream(&out, SocketAddrV4::new(UPLINK_HOST_IP, 5201), stop.clone());
    let udp = udp_flow(&out, SocketAddrV4::new(UPLINK_HOST_IP, 5353), stop.clone());
    let to_published = Prober::start(&out, SocketAddrV4::new(UPLINK_HOST_IP, 8080), stop.clone(), flood_over.clone());
    let masqueraded = Prober::start(&other, outside_server, stop.clone(), flood_over.clone());
    std::thread::sleep(Duration::from_millis(200));
    let took = syn_flood(&out, SPOOFED, UPLINK_HOST_IP, 8080..=8080, FLOOD).unwrap();
    flood_over.store(true, Ordering::SeqCst);
    eprintln!("{FLOOD} spoofed SYNs sent in {took:?}");
    // A collection now (it expires nothing of the fresh flood) counts the early drops.
    sb.ok(&["conntrack", "gc"]);
    let status = sb.json(&["status", "--json"]);
    let flows = sb.json(&["conntrack", "ls", "--json"]);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    to_published.check("outside client to the published port 8080");
    masqueraded.check("container to the outside, masqueraded");
    let (exchanges, wrong) = established.join().unwrap().expect("the established stream broke");
    assert!(exchanges > 10 && wrong == 0, "the established stream: {exchanges} exchanges, {wrong} bytes wrong");
    let (sent, lost) = udp.join().unwrap().expect("the UDP flow broke");
    eprintln!("established TCP stream: {exchanges} exchanges, none wrong; UDP flow: {sent} datagrams, {lost} lost");
    assert!(sent > 50 && lost == 0, "the UDP flow lost {lost} of {sent} datagrams during the SYN flood");

    // What conntrack made of the flood: SYN_RECV flows, none assured, most sent to the
    // overflow table by the published port's quota; nothing refused.
    let ct = &status["datapath"]["conntrack"];
    assert!(ct["quota_hits"].as_u64().unwrap() > 1_000, "{ct}");
    // The flood's flows outnumber the overflow table's room: the oldest made way (early drop).
    assert!(ct["early_drops"].as_u64().unwrap() > 10_000, "{ct}");
    assert!(container(&status, &web)["traffic"]["ct_quota_hits"].as_u64().unwrap() > 1_000, "counted for web");
    assert_eq!(container(&status, &other)["traffic"]["ct_quota_hits"], 0, "not for other");
    assert_eq!(status["datapath"]["drops"]["conntrack_full"], 0);
    let flood: Vec<&Value> = flows.as_array().unwrap().iter().filter(|f| spoofed(f)).collect();
    assert!(flood.len() > 1_000, "{} flood flows listed", flood.len());
    assert!(flood.iter().all(|f| f["assured"] == false && f["table"] != "assured"), "a flood flow became assured");
    assert!(flood.iter().any(|f| f["state"] == "syn_recv"), "{:?}", flood.first());

    // Gone once their SYN_RECV timeout passed (after web's one SYN-ACK retransmission).
    let deadline = Instant::now() + Duration::from_secs(SYN_RECV_TIMEOUT_SECS + 10);
    loop {
        let left = sb.json(&["conntrack", "ls", "--json"]).as_array().unwrap().iter().filter(|f| spoofed(f)).count();
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} flood flows still tracked");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_syn_flood_from_a_container_denies_no_other_container_a_new_connection() {
    let (mut sb, web, other) = flood_sandbox();
    let out = sb.outside_netns().to_owned();
    let outside_server = SocketAddrV4::new(OUTSIDE_IP, 7000);
    sb.tcp_echo_server(&out, outside_server, 10_000);
    let web_ip = sb.container_ip(&web);
    let stop = Arc::new(AtomicBool::new(false));
    let flood_over = Arc::new(AtomicBool::new(false));
    let masqueraded = Prober::start(&other, outside_server, stop.clone(), flood_over.clone());
    std::thread::sleep(Duration::from_millis(200));
    // web floods: its own address (anything else is dropped as spoofed), every port.
    let took = syn_flood(&web, (web_ip, 32), OUTSIDE_IP, 10_000..=60_000, FLOOD).unwrap();
    flood_over.store(true, Ordering::SeqCst);
    eprintln!("{FLOOD} SYNs from a container sent in {took:?}");
    let status = sb.json(&["status", "--json"]);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    masqueraded.check("another container to the outside, masqueraded");
    assert!(container(&status, &web)["traffic"]["ct_quota_hits"].as_u64().unwrap() > 1_000, "counted for the flooder");
    assert_eq!(container(&status, &other)["traffic"]["ct_quota_hits"], 0);
    assert_eq!(status["datapath"]["drops"]["conntrack_full"], 0);
}

/// A UDP flood from many spoofed outside sources at a published UDP port of a container,
/// while a live UDP flow (a client outside talking to another published port of the same
/// container, one datagram answered every few ms) and a masqueraded one go on: neither loses a
/// datagram, and neither flow is evicted (each keeps its NAT port and its entry; the flood's
/// flows are unassured, the live ones assured). The flood goes to a port of its own so that
/// the container's echo server, not the datapath, is not what drops under it.
#[test]
fn a_spoofed_udp_flood_evicts_no_live_flow() {
    let (mut sb, web, other) = flood_sandbox();
    sb.ok(&["publish", &web, "5353:53/udp", "5354:54/udp"]);
    let web_ip = sb.container_ip(&web);
    let out = sb.outside_netns().to_owned();
    sb.udp_echo_server(&web, SocketAddrV4::new(web_ip, 53), 1_000_000);
    sb.udp_echo_server(&out, SocketAddrV4::new(OUTSIDE_IP, 7053), 1_000_000);
    let stop = Arc::new(AtomicBool::new(false));
    let to_published = udp_flow(&out, SocketAddrV4::new(UPLINK_HOST_IP, 5353), stop.clone());
    let masqueraded = udp_flow(&other, SocketAddrV4::new(OUTSIDE_IP, 7053), stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    let flows_before = sb.json(&["conntrack", "ls", "--json"]);
    let took = udp_flood(&out, SPOOFED, UPLINK_HOST_IP, 5354..=5354, FLOOD).unwrap();
    eprintln!("{FLOOD} spoofed UDP datagrams sent in {took:?}");
    std::thread::sleep(Duration::from_millis(500));
    let flows_after = sb.json(&["conntrack", "ls", "--json"]);
    stop.store(true, Ordering::SeqCst);
    for (what, thread) in [("outside client to 5353/udp", to_published), ("masqueraded from other", masqueraded)] {
        let (sent, lost) = thread.join().unwrap().unwrap();
        eprintln!("{what}: {sent} datagrams, {lost} lost");
        assert!(sent > 50 && lost == 0, "{what}: {lost} of {sent} datagrams lost during the flood");
    }
    let live_flows = |flows: &Value| -> Vec<Value> {
        flows.as_array().unwrap().iter().filter(|f| !spoofed(f) && f["protocol"] == "udp").cloned().collect()
    };
    let (before, after) = (live_flows(&flows_before), live_flows(&flows_after));
    assert_eq!(before.len(), 2, "{before:?}");
    for flow in &before {
        let same = |f: &&Value| f["source"] == flow["source"] && f["translated_source"] == flow["translated_source"];
        let kept = after.iter().find(same).unwrap_or_else(|| panic!("evicted during the flood: {flow}"));
        assert_eq!(kept["assured"], true, "{kept}");
    }
}
