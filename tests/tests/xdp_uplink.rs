//! The uplink program at XDP (`--uplink-mode xdp`): the same translation as at tcx, before the
//! kernel allocates an skb, with real traffic: published ports from outside (the client's
//! address kept), replies to the containers' own flows, bulk data whose checksums the
//! receivers verify, and mode switches under a live connection.
use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddrV4, TcpStream},
};

use bpfnet_tests::{
    full_checksums, in_netns, iperf3_each_way, run, tcp_exchange, tcp_receive_errors, tcx_ingress_programs,
    udp_exchange, xdp_program_on, Sandbox, IO_TIMEOUT, OUTSIDE_IP, UPLINK, UPLINK_HOST_IP,
};
use serde_json::Value;

/// A sandbox with an uplink in `mode` and one network. The outside's end of the uplink plays
/// the wire, so it sends complete checksums, as every frame a NIC receives has: a veth with
/// checksum offload would hand over CHECKSUM_PARTIAL packets, whose checksum field holds only
/// the pseudo-header sum, and nothing at XDP can tell (see docs/xdp-uplink.md).
fn sandbox(mode: &str) -> (Sandbox, String) {
    let mut sb = Sandbox::with_uplink();
    run("ip", &["netns", "exec", sb.outside_netns(), "ethtool", "-K", "up0o", "tx", "off"]).unwrap();
    sb.set_agent_env("BPFNET_UPLINK_MODE", mode);
    let net = sb.name("net");
    sb.ok(&["network", "create", &net, "--subnet", "10.235.0.0/24"]);
    (sb, net)
}

fn published(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(UPLINK_HOST_IP, port)
}

/// The uplink's entry in `status --json`.
fn uplink_attachment(sb: &Sandbox) -> Value {
    let status = sb.json(&["status", "--json"]);
    status["datapath"]["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["role"] == "uplink")
        .cloned()
        .unwrap_or_else(|| panic!("no uplink attachment in {status:#}"))
}

/// Which program the kernel runs on the uplink: the XDP one (and nothing at tcx), or the tcx
/// one (and nothing at XDP). Checked against the kernel, and against what status reports. The
/// kernel releases the link of the mode left behind asynchronously (after its pin is gone, an
/// RCU grace period and a work item), so the check waits up to 3 s for it.
#[track_caller]
fn assert_uplink_runs(sb: &Sandbox, mode: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let (status, xdp, tcx) = loop {
        let status = sb.json(&["status", "--json"]);
        let xdp = xdp_program_on(sb.host_netns(), UPLINK);
        let tcx: Vec<u64> =
            tcx_ingress_programs(sb.host_netns(), UPLINK).unwrap().iter().map(|(id, _)| u64::from(*id)).collect();
        let settled = if mode == "xdp" { tcx.is_empty() } else { xdp.is_none() };
        if settled || std::time::Instant::now() > deadline {
            break (status, xdp, tcx);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let ids = &status["datapath"]["program_ids"];
    match mode {
        "xdp" => {
            assert_eq!(xdp, ids["from_uplink_xdp"].as_u64(), "XDP program on {UPLINK}");
            assert!(tcx.is_empty(), "nothing at tcx in XDP mode: {tcx:?}");
        }
        _ => {
            assert_eq!(xdp, None, "no XDP program in tc mode");
            assert_eq!(tcx, vec![ids["from_uplink"].as_u64().unwrap()], "tcx program on {UPLINK}");
        }
    }
    let attachment = uplink_attachment(sb);
    assert_eq!(
        (attachment["mode"].as_str(), attachment["attached"].as_bool()),
        (Some(mode), Some(true)),
        "{attachment}"
    );
}

#[test]
fn published_ports_and_replies_to_containers_go_through_the_xdp_uplink() {
    let (mut sb, net) = sandbox("xdp");
    let (web, dns) = (sb.name("web"), sb.name("dns"));
    sb.ok(&["container", "create", &web, "--network", &net, "--publish", "8080:80"]);
    sb.ok(&["container", "create", &dns, "--network", &net, "--publish", "5353:53/udp"]);
    assert_uplink_runs(&sb, "xdp");
    let (web_ip, dns_ip) = (sb.container_ip(&web), sb.container_ip(&dns));
    let web_peers = sb.tcp_echo_server(&web, SocketAddrV4::new(web_ip, 80), 1);
    let dns_peers = sb.udp_echo_server(&dns, SocketAddrV4::new(dns_ip, 53), 1);
    let out = sb.outside_netns().to_owned();

    // Outside -> published ports: DNAT at XDP, the container sees the real client.
    assert_eq!(tcp_exchange(&out, published(8080), b"GET / HTTP/1.0\r\n\r\n").unwrap(), b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(udp_exchange(&out, published(5353), b"query").unwrap(), b"query");
    for (what, peers) in [("web:80", &web_peers), ("dns:53", &dns_peers)] {
        let seen = peers.get();
        assert_eq!(seen.len(), 1, "{what} got exactly its flow");
        assert_eq!(seen[0].ip(), IpAddr::V4(OUTSIDE_IP), "{what} sees the real client");
    }

    // Container -> outside: masqueraded on the way out (tcx), replies translated at XDP.
    let outside_peers = sb.tcp_echo_server(&out, SocketAddrV4::new(OUTSIDE_IP, 7000), 1);
    let outside_udp = sb.udp_echo_server(&out, SocketAddrV4::new(OUTSIDE_IP, 7001), 1);
    assert_eq!(tcp_exchange(&web, SocketAddrV4::new(OUTSIDE_IP, 7000), b"out and back").unwrap(), b"out and back");
    assert_eq!(udp_exchange(&dns, SocketAddrV4::new(OUTSIDE_IP, 7001), b"out and back").unwrap(), b"out and back");
    for peers in [&outside_peers, &outside_udp] {
        assert_eq!(peers.get()[0].ip(), IpAddr::V4(UPLINK_HOST_IP), "the outside sees the uplink's address");
    }
    // An unknown flow is the host's: the XDP program passes it to the stack.
    assert!(bpfnet_tests::ping(&out, UPLINK_HOST_IP), "the host still answers on its uplink");
    assert!(sb.counter("counters", "dnat_new_flow") >= 2);
    assert!(sb.counter("counters", "translated_in") >= 4, "replies and requests delivered from XDP");
    assert_eq!(sb.counter("drops", "redirect_failed"), 0);
}

/// Bulk TCP both ways through DNAT at XDP: the outside's end computes full checksums (as a
/// NIC would deliver them; see docs/xdp-uplink.md), every receiver verifies them.
#[test]
fn bulk_data_through_the_xdp_uplink_arrives_with_no_checksum_error() {
    let (mut sb, net) = sandbox("xdp");
    let c = sb.name("iperf");
    sb.ok(&["container", "create", &c, "--network", &net, "--publish", "5201:5201"]);
    let out = sb.outside_netns().to_owned();
    // Receivers verify every checksum; the container sends complete ones too.
    full_checksums(&out, "up0o", &c, "eth0");
    full_checksums(&c, "eth0", &out, "up0o");
    let (out_before, c_before) = (tcp_receive_errors(&out), tcp_receive_errors(&c));
    // To the published port on the uplink's address, served in the container.
    iperf3_each_way(&mut sb, &c, &out, UPLINK_HOST_IP, "400M", 400 << 20);
    assert_eq!(tcp_receive_errors(&out), out_before, "checksum errors at the outside");
    assert_eq!(tcp_receive_errors(&c), c_before, "checksum errors in the container");
    assert_eq!(sb.counter("drops", "rewrite_failed") + sb.counter("drops", "redirect_failed"), 0);
}

/// One request/answer on an open connection.
fn exchange(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<Vec<u8>> {
    stream.write_all(message)?;
    let mut answer = vec![0; message.len()];
    stream.read_exact(&mut answer)?;
    Ok(answer)
}

#[test]
fn switching_the_uplink_mode_keeps_established_connections() {
    let (mut sb, net) = sandbox("tc");
    let c = sb.name("srv");
    sb.ok(&["container", "create", &c, "--network", &net, "--publish", "8080:80"]);
    let ip = sb.container_ip(&c);
    sb.tcp_echo_server(&c, SocketAddrV4::new(ip, 80), 1);
    assert_uplink_runs(&sb, "tc");
    let mut stream = in_netns(sb.outside_netns(), || {
        let stream = TcpStream::connect_timeout(&published(8080).into(), IO_TIMEOUT)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        Ok(stream)
    })
    .unwrap();
    assert_eq!(exchange(&mut stream, b"tc").unwrap(), b"tc");
    for mode in ["xdp", "tc", "xdp"] {
        sb.stop_agent(nix::sys::signal::Signal::SIGTERM);
        sb.set_agent_env("BPFNET_UPLINK_MODE", mode);
        assert_uplink_runs(&sb, mode);
        assert_eq!(exchange(&mut stream, mode.as_bytes()).unwrap(), mode.as_bytes(), "after switching to {mode}");
    }
    // Only one uplink link is pinned: the old mode's was removed.
    let links: Vec<String> = std::fs::read_dir(sb.bpffs_dir().join("links"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("uplink"))
        .collect();
    assert_eq!(links, vec![format!("uplinkxdp-{UPLINK}")]);
    // `down` removes the XDP program too.
    sb.ok(&["down"]);
    assert_eq!(xdp_program_on(sb.host_netns(), UPLINK), None, "XDP program left on the uplink after down");
}

/// The config file holds every setting of the agent, the uplink mode too; a key it does not
/// know stops the agent with the list of those it does.
#[test]
fn the_config_file_sets_the_uplink_mode_and_names_unknown_keys() {
    let (mut sb, _net) = sandbox("tc");
    assert_uplink_runs(&sb, "tc");
    sb.stop_agent(nix::sys::signal::Signal::SIGTERM);
    sb.remove_agent_env("BPFNET_UPLINK_MODE");
    let config = sb.write_scratch("agent.toml", "uplink_mode = \"xdp\"\ngc_interval = 5\n").unwrap();
    sb.set_agent_env("BPFNET_CONFIG", config.to_str().unwrap());
    assert_uplink_runs(&sb, "xdp");
    sb.stop_agent(nix::sys::signal::Signal::SIGTERM);
    std::fs::write(&config, "uplink_mod = \"tc\"\n").unwrap();
    let out = sb.agent_command().output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("unknown setting \"uplink_mod\""), "{err}");
    for key in ["uplink_mode", "allow_host_access", "host_cgroup", "nat_ports", "ct_timeout_udp", "gc_interval"] {
        assert!(err.contains(key), "{key} is among the known settings: {err}");
    }
    assert!(!err.contains("config,"), "the config file does not name itself: {err}");
    assert!(xdp_program_on(sb.host_netns(), UPLINK).is_some(), "the datapath kept running");
}
