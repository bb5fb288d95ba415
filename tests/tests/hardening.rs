//! Hostile traffic from a container, with real packets: spoofed sources go nowhere and do not
//! disturb anyone else; the host's own addresses are off limits unless allowed.
use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use bpfnet_tests::{in_netns, tcp_exchange, udp_exchange, Sandbox, OUTSIDE_IP, UPLINK_HOST_IP};

/// An IPv4/UDP datagram with the given (forged) source, for a raw socket (IP_HDRINCL): the
/// kernel fills in the IP checksum; the UDP checksum is left 0 ("none").
fn forged_udp(source: Ipv4Addr, destination: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut packet = vec![0x45, 0, (total >> 8) as u8, total as u8, 0, 0, 0x40, 0, 64, 17, 0, 0];
    packet.extend(source.octets());
    packet.extend(destination.ip().octets());
    packet.extend(40000u16.to_be_bytes());
    packet.extend(destination.port().to_be_bytes());
    packet.extend(((8 + payload.len()) as u16).to_be_bytes());
    packet.extend([0, 0]);
    packet.extend(payload);
    packet
}

/// Sends `count` forged datagrams from inside `netns` through a raw socket.
fn flood(netns: &str, source: Ipv4Addr, destination: SocketAddrV4, count: usize) -> usize {
    in_netns(netns, move || {
        // SAFETY: plain socket calls on a descriptor owned here and closed at the end.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
            anyhow::ensure!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
            let packet = forged_udp(source, destination, b"forged");
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: 0,
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(destination.ip().octets()) },
                sin_zero: [0; 8],
            };
            let mut sent = 0;
            for _ in 0..count {
                let n = libc::sendto(
                    fd,
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    (&addr as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                );
                if n > 0 {
                    sent += 1;
                }
            }
            libc::close(fd);
            Ok(sent)
        }
    })
    .unwrap()
}

#[test]
fn a_spoofed_source_flood_reaches_no_one_and_disturbs_nothing() {
    let mut sb = Sandbox::with_uplink();
    let net = sb.name("net");
    sb.ok(&["network", "create", &net, "--subnet", "10.246.0.0/24"]);
    let (attacker, victim, bystander) = (sb.name("attacker"), sb.name("victim"), sb.name("bystander"));
    for c in [&attacker, &victim, &bystander] {
        sb.ok(&["container", "create", c, "--network", &net]);
    }
    let victim_ip = sb.container_ip(&victim);
    let out = sb.outside_netns().to_owned();
    // Sinks that count whatever arrives.
    let sink = |ns: &str, addr: SocketAddrV4| {
        let socket = in_netns(ns, move || Ok(UdpSocket::bind(addr)?)).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let count = Arc::new(AtomicU64::new(0));
        let seen = count.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while std::time::Instant::now() < deadline {
                if socket.recv(&mut buf).is_ok() {
                    seen.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        count
    };
    let outside_sink = sink(&out, SocketAddrV4::new(OUTSIDE_IP, 9999));
    let victim_sink = sink(&victim, SocketAddrV4::new(victim_ip, 9999));

    // A legitimate flow of the bystander to the outside, running through the flood.
    sb.udp_echo_server(&out, SocketAddrV4::new(OUTSIDE_IP, 5353), 100_000);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let legit = {
        let (stop, ok, failed, bystander) = (stop.clone(), ok.clone(), failed.clone(), bystander.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let good = udp_exchange(&bystander, SocketAddrV4::new(OUTSIDE_IP, 5353), b"legit").is_ok();
                (if good { &ok } else { &failed }).fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    const FLOOD: usize = 20_000;
    let drops_before = sb.counter("drops", "spoofed_source");
    // Forged sources: another container's address, an outside address, a free address of the subnet.
    let mut sent = 0;
    for (source, target) in [
        (victim_ip, SocketAddrV4::new(OUTSIDE_IP, 9999)),
        (OUTSIDE_IP, SocketAddrV4::new(victim_ip, 9999)),
        (Ipv4Addr::new(10, 246, 0, 200), SocketAddrV4::new(OUTSIDE_IP, 9999)),
    ] {
        sent += flood(&attacker, source, target, FLOOD / 3);
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    legit.join().unwrap();

    assert!(sent >= FLOOD - 3, "the flood was sent: {sent}");
    assert_eq!(outside_sink.load(Ordering::Relaxed), 0, "nothing forged reached the outside");
    assert_eq!(victim_sink.load(Ordering::Relaxed), 0, "nothing forged reached the other container");
    let dropped = sb.counter("drops", "spoofed_source") - drops_before;
    assert!(dropped >= sent as u64, "every forged packet dropped and counted: {dropped} of {sent}");
    assert_eq!(failed.load(Ordering::Relaxed), 0, "the legitimate flow lost nothing");
    assert!(ok.load(Ordering::Relaxed) > 5);

    // Per-container counters: the attacker sent at least the flood; the bystander got replies.
    let status = sb.json(&["status", "--json"]);
    let traffic = |name: &str| {
        status["containers"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap()["traffic"].clone()
    };
    assert!(traffic(&attacker)["sent_packets"].as_u64().unwrap() >= sent as u64);
    assert!(traffic(&bystander)["received_packets"].as_u64().unwrap() >= ok.load(Ordering::Relaxed));
    assert_eq!(traffic(&victim)["received_packets"], 0);
}

#[test]
fn the_host_is_reachable_only_through_the_gateway_unless_allowed() {
    let mut sb = Sandbox::with_uplink();
    let net = sb.name("net");
    sb.ok(&["network", "create", &net, "--subnet", "10.247.0.0/24"]);
    let c = sb.name("c");
    sb.ok(&["container", "create", &c, "--network", &net]);
    let host = sb.host_netns().to_owned();
    sb.tcp_echo_server(&host, SocketAddrV4::new(UPLINK_HOST_IP, 9000), 2);
    sb.tcp_echo_server(&host, SocketAddrV4::new(Ipv4Addr::new(10, 247, 0, 1), 9001), 1);
    assert!(
        tcp_exchange(&c, SocketAddrV4::new(UPLINK_HOST_IP, 9000), b"x").is_err(),
        "the host's uplink address is off limits"
    );
    assert!(sb.counter("drops", "host_access_denied") >= 1);
    assert_eq!(
        tcp_exchange(&c, SocketAddrV4::new(Ipv4Addr::new(10, 247, 0, 1), 9001), b"gw").unwrap(),
        b"gw",
        "the gateway is not"
    );
    // Allowed by the agent's setting (applied when the agent next starts), here a boolean of
    // its config file.
    sb.stop_agent(nix::sys::signal::Signal::SIGTERM);
    let config = sb.write_scratch("agent.toml", "allow_host_access = true\n").unwrap();
    sb.set_agent_env("BPFNET_CONFIG", config.to_str().unwrap());
    sb.ok(&["container", "create", &sb.name("d"), "--network", &net]);
    assert_eq!(tcp_exchange(&c, SocketAddrV4::new(UPLINK_HOST_IP, 9000), b"ok").unwrap(), b"ok");
}
