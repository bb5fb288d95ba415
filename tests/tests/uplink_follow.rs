//! The agent follows the uplink while it runs: a new address becomes the masquerade (and
//! published-port) address, and an uplink deleted and created again (a new ifindex, the same
//! name) gets the uplink program back. Changes are made in the sandbox's host namespace with
//! `ip`, as an administrator or DHCP client would; the tests wait for the effect (bounded),
//! never for a time.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddrV4, UdpSocket},
    time::{Duration, Instant},
};

use bpfnet_tests::{
    in_netns, run, tcp_exchange, tcx_ingress_programs, xdp_program_on, Peers, Sandbox, OUTSIDE_IP, UPLINK,
    UPLINK_HOST_IP,
};
use serde_json::Value;

/// How long a change may take to show: generous, as the machine may be loaded; the agent
/// reacts to the kernel's notification within a fraction of a second.
const FOLLOW_WITHIN: Duration = Duration::from_secs(5);

/// Another address of the uplink's subnet (10.250.0.0/24, on-link for the outside namespace
/// too, so the outside reaches it with no route of its own).
const NEW_UPLINK_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 11);

const UDP_SERVER: SocketAddrV4 = SocketAddrV4::new(OUTSIDE_IP, 5353);

/// A sandbox with an uplink in `mode`, one network and one container (whose port 80 is
/// published as 8080), with the agent running and the container's traffic masqueraded.
fn sandbox(mode: &str) -> (Sandbox, String) {
    let mut sb = Sandbox::with_uplink();
    sb.set_agent_env("BPFNET_UPLINK_MODE", mode);
    if mode == "xdp" {
        // XDP needs complete checksums from the wire (see docs/xdp-uplink.md).
        run("ip", &["netns", "exec", sb.outside_netns(), "ethtool", "-K", "up0o", "tx", "off"]).unwrap();
    }
    let net = sb.name("net");
    sb.ok(&["network", "create", &net, "--subnet", "10.236.0.0/24"]);
    let c1 = sb.name("c1");
    sb.ok(&["container", "create", &c1, "--network", &net, "--publish", "8080:80"]);
    (sb, c1)
}

/// One new UDP flow from `container` to the outside echo server: the address the server saw
/// it from, if the answer came back.
fn masquerade_address(container: &str, peers: &Peers) -> Option<IpAddr> {
    let answered = in_netns(container, || {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.set_read_timeout(Some(Duration::from_millis(300)))?;
        socket.send_to(b"who am i", UDP_SERVER)?;
        let mut buf = [0u8; 64];
        Ok(socket.recv_from(&mut buf).is_ok())
    })
    .unwrap();
    // The server records a peer before it answers.
    answered.then(|| peers.get().last().map(|peer| peer.ip())).flatten()
}

/// Waits until new flows from `container` are answered and masqueraded to `expected`.
#[track_caller]
fn wait_for_masquerade(sb: &Sandbox, container: &str, peers: &Peers, expected: Ipv4Addr) {
    let deadline = Instant::now() + FOLLOW_WITHIN;
    let mut last = None;
    while Instant::now() < deadline {
        last = masquerade_address(container, peers);
        if last == Some(IpAddr::V4(expected)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "new flows not masqueraded to {expected} within {FOLLOW_WITHIN:?} (last seen: {last:?}); uplink in status: {}\n{}",
        sb.json(&["status", "--json"])["datapath"]["uplink"],
        sb.agent_log_text()
    );
}

/// The ifindex of `ifname` in `netns`, as `ip` reports it.
fn ifindex(netns: &str, ifname: &str) -> u64 {
    let out = run("ip", &["-n", netns, "-j", "link", "show", "dev", ifname]).unwrap();
    serde_json::from_str::<Value>(&out).unwrap()[0]["ifindex"].as_u64().unwrap()
}

/// The uplink settings `status --json` reports (ifindex, masquerade address).
fn status_uplink(sb: &Sandbox) -> Value {
    sb.json(&["status", "--json"])["datapath"]["uplink"].clone()
}

/// Polls `condition` until it holds, up to [`FOLLOW_WITHIN`]; panics with `what` and the
/// agent's log otherwise.
#[track_caller]
fn wait_until(sb: &Sandbox, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + FOLLOW_WITHIN;
    while Instant::now() < deadline {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what}: not within {FOLLOW_WITHIN:?}\n{}", sb.agent_log_text());
}

#[test]
fn a_new_uplink_address_becomes_the_masquerade_and_published_address() {
    let (mut sb, c1) = sandbox("tc");
    let (host, out) = (sb.host_netns().to_owned(), sb.outside_netns().to_owned());
    let peers = sb.udp_echo_server(&out, UDP_SERVER, 200);
    wait_for_masquerade(&sb, &c1, &peers, UPLINK_HOST_IP);

    // Renumber the uplink: the old address goes first (deleting a primary address also
    // deletes the secondaries of its subnet), which takes the default route with it.
    let new_cidr = format!("{NEW_UPLINK_IP}/24");
    run("ip", &["-n", &host, "addr", "del", &format!("{UPLINK_HOST_IP}/24"), "dev", UPLINK]).unwrap();
    run("ip", &["-n", &host, "addr", "add", &new_cidr, "dev", UPLINK]).unwrap();
    run("ip", &["-n", &host, "route", "replace", "default", "via", &OUTSIDE_IP.to_string()]).unwrap();

    wait_for_masquerade(&sb, &c1, &peers, NEW_UPLINK_IP);
    assert_eq!(status_uplink(&sb)["masquerade_address"], NEW_UPLINK_IP.to_string());
    // TCP too, and the container's published port at the new address (the outside reaches
    // it on-link, as it reached the old one).
    let tcp_peers = sb.tcp_echo_server(&out, SocketAddrV4::new(OUTSIDE_IP, 8081), 1);
    assert_eq!(tcp_exchange(&c1, SocketAddrV4::new(OUTSIDE_IP, 8081), b"tcp").unwrap(), b"tcp");
    assert_eq!(tcp_peers.get()[0].ip(), IpAddr::V4(NEW_UPLINK_IP));
    let c1_ip = sb.container_ip(&c1);
    sb.tcp_echo_server(&c1, SocketAddrV4::new(c1_ip, 80), 1);
    assert_eq!(tcp_exchange(&out, SocketAddrV4::new(NEW_UPLINK_IP, 8080), b"published").unwrap(), b"published");

    // With no IPv4 address at all, the agent warns and keeps the last one.
    run("ip", &["-n", &host, "addr", "del", &new_cidr, "dev", UPLINK]).unwrap();
    wait_until(&sb, "a warning about the uplink without an IPv4 address", || {
        sb.agent_log_text().contains(&format!("the uplink {UPLINK} has no IPv4 address"))
    });
    assert_eq!(status_uplink(&sb)["masquerade_address"], NEW_UPLINK_IP.to_string());
    // And follows again when one comes back.
    run("ip", &["-n", &host, "addr", "add", &format!("{UPLINK_HOST_IP}/24"), "dev", UPLINK]).unwrap();
    run("ip", &["-n", &host, "route", "replace", "default", "via", &OUTSIDE_IP.to_string()]).unwrap();
    wait_for_masquerade(&sb, &c1, &peers, UPLINK_HOST_IP);
}

/// Makes the uplink again as the sandbox did (after it was deleted, which deleted its outside
/// peer too): the same name and addresses, a new ifindex. The outside end plays the wire, as
/// in [`sandbox`].
fn create_uplink(sb: &Sandbox, mode: &str) {
    let (host, out) = (sb.host_netns(), sb.outside_netns());
    let steps: [&[&str]; 6] = [
        &["-n", host, "link", "add", UPLINK, "type", "veth", "peer", "name", "up0o", "netns", out],
        &["-n", host, "addr", "add", &format!("{UPLINK_HOST_IP}/24"), "dev", UPLINK],
        &["-n", host, "link", "set", UPLINK, "up"],
        &["-n", out, "addr", "add", &format!("{OUTSIDE_IP}/24"), "dev", "up0o"],
        &["-n", out, "link", "set", "up0o", "up"],
        &["-n", host, "route", "replace", "default", "via", &OUTSIDE_IP.to_string()],
    ];
    for step in steps {
        run("ip", step).unwrap();
    }
    if mode == "xdp" {
        run("ip", &["netns", "exec", out, "ethtool", "-K", "up0o", "tx", "off"]).unwrap();
    }
}

/// The uplink deleted: the agent warns and keeps its settings; created again: the program is
/// attached to the new interface and masquerading works again.
fn uplink_recreated_gets_its_program_back(mode: &str) {
    let (mut sb, c1) = sandbox(mode);
    let (host, out) = (sb.host_netns().to_owned(), sb.outside_netns().to_owned());
    let peers = sb.udp_echo_server(&out, UDP_SERVER, 200);
    wait_for_masquerade(&sb, &c1, &peers, UPLINK_HOST_IP);
    let old_index = ifindex(&host, UPLINK);
    assert_eq!(status_uplink(&sb)["ifindex"], old_index);

    run("ip", &["-n", &host, "link", "del", UPLINK]).unwrap();
    wait_until(&sb, "a warning about the missing uplink", || {
        sb.agent_log_text().contains(&format!("the uplink {UPLINK:?} does not exist"))
    });
    assert_eq!(status_uplink(&sb)["ifindex"], old_index, "the last settings are kept");
    let status = sb.json(&["status", "--json"]);
    let attachment =
        status["datapath"]["attachments"].as_array().unwrap().iter().find(|a| a["role"] == "uplink").cloned().unwrap();
    assert_eq!(attachment["attached"], false, "no program runs on a deleted uplink: {attachment}");

    create_uplink(&sb, mode);
    let new_index = ifindex(&host, UPLINK);
    assert_ne!(new_index, old_index);
    wait_until(&sb, "the uplink program on the new interface", || {
        let ids = sb.json(&["status", "--json"])["datapath"]["program_ids"].clone();
        match mode {
            "xdp" => xdp_program_on(&host, UPLINK).is_some_and(|id| Some(id) == ids["from_uplink_xdp"].as_u64()),
            _ => tcx_ingress_programs(&host, UPLINK)
                .unwrap()
                .iter()
                .any(|(id, _)| Some(u64::from(*id)) == ids["from_uplink"].as_u64()),
        }
    });
    assert_eq!(status_uplink(&sb)["ifindex"], new_index);
    wait_for_masquerade(&sb, &c1, &peers, UPLINK_HOST_IP);
    // Replies of TCP flows come back through the new interface's program too.
    sb.tcp_echo_server(&out, SocketAddrV4::new(OUTSIDE_IP, 8081), 1);
    assert_eq!(tcp_exchange(&c1, SocketAddrV4::new(OUTSIDE_IP, 8081), b"again").unwrap(), b"again");

    // Deleted and created again at once (the notifications come in one burst): the same.
    let before = ifindex(&host, UPLINK);
    run("ip", &["-n", &host, "link", "del", UPLINK]).unwrap();
    create_uplink(&sb, mode);
    let index = ifindex(&host, UPLINK);
    assert_ne!(index, before);
    wait_until(&sb, "the uplink settings on the interface made again at once", || {
        status_uplink(&sb)["ifindex"] == index
    });
    wait_for_masquerade(&sb, &c1, &peers, UPLINK_HOST_IP);
}

#[test]
fn an_uplink_made_again_gets_the_tc_program_back() {
    uplink_recreated_gets_its_program_back("tc");
}

#[test]
fn an_uplink_made_again_gets_the_xdp_program_back() {
    uplink_recreated_gets_its_program_back("xdp");
}

/// The uplink made again while no agent runs, and the next agent brings new programs (as an
/// upgrade does; `--reload-programs` stands in for it): the link of the old interface has
/// nothing to replace a program behind, so it is dropped, and the new interface gets one.
#[test]
fn an_uplink_made_again_while_the_agent_is_stopped_survives_an_upgrade() {
    let (mut sb, c1) = sandbox("tc");
    let (host, out) = (sb.host_netns().to_owned(), sb.outside_netns().to_owned());
    let peers = sb.udp_echo_server(&out, UDP_SERVER, 50);
    wait_for_masquerade(&sb, &c1, &peers, UPLINK_HOST_IP);
    sb.stop_agent(nix::sys::signal::Signal::SIGTERM);
    run("ip", &["-n", &host, "link", "del", UPLINK]).unwrap();
    create_uplink(&sb, "tc");
    sb.set_agent_env("BPFNET_RELOAD_PROGRAMS", "true");
    let ids = sb.json(&["status", "--json"])["datapath"]["program_ids"].clone();
    let tcx = tcx_ingress_programs(&host, UPLINK).unwrap();
    assert_eq!(
        tcx.iter().map(|(id, _)| u64::from(*id)).collect::<Vec<_>>(),
        vec![ids["from_uplink"].as_u64().unwrap()]
    );
    wait_for_masquerade(&sb, &c1, &peers, UPLINK_HOST_IP);
}
