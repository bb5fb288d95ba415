//! Docker's remote network driver (`--docker-plugin-socket`).
//!
//! First driven as dockerd drives it: HTTP POSTs with JSON on the plugin socket of a sandbox
//! agent, the test playing dockerd's part too (it moves the interface that Join names into a
//! namespace of its own, names it eth0 and gives it the address and default route, and moves
//! it back at Leave). Then by a real dockerd (bpfnet_tests::engines::docker) running busybox
//! containers. Real traffic both times: between two containers, to the outside (masqueraded),
//! from it to a published port (the client's address kept; `-p 80` and `-P` on host ports
//! bpfnet picks), from another container to a published port (hairpin), across an agent
//! killed with -9 (and a dockerd restarted), a running container connected to a second
//! network, a driver found through a spec file, and refusals in docker's words; then nothing
//! is left behind.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
    path::Path,
};

use bpfnet_tests::{
    api_request,
    engines::{
        docker::{driver_socket, driver_spec, Docker},
        peer_in, peer_seen, BUSYBOX_IMAGE, PEER_SERVER,
    },
    leaks, links_in, namespaces_with_prefix, ping, pinned_map_len, run, tcp_exchange, Sandbox, OUTSIDE_IP,
    UPLINK_HOST_IP,
};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

/// Docker's ids are 64 hex digits.
const NETWORK_ID: &str = "4d1a5e0c9b7f3e2d1c0b9a8f7e6d5c4b3a291817161514131211100f0e0d0c0b";
const ENDPOINT_A: &str = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
const ENDPOINT_B: &str = "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2";
const ENDPOINT_C: &str = "c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3";

const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 246, 0, 1);
const IP_A: Ipv4Addr = Ipv4Addr::new(10, 246, 0, 2);
const IP_B: Ipv4Addr = Ipv4Addr::new(10, 246, 0, 3);

/// A sandbox whose agent serves the driver on a socket of its scratch folder.
fn sandbox() -> (Sandbox, std::path::PathBuf) {
    let mut sb = Sandbox::with_uplink();
    let socket = sb.scratch_path("docker-plugin.sock");
    sb.set_agent_env("BPFNET_DOCKER_PLUGIN_SOCKET", socket.to_str().unwrap());
    sb.ensure_agent();
    (sb, socket)
}

/// One protocol call, as dockerd's plugin client makes it: (status, answer).
#[track_caller]
fn post(socket: &Path, method: &str, body: &Value) -> (u16, Value) {
    let headers = "Accept: application/vnd.docker.plugins.v1.2+json\r\n";
    let (status, content_type, text) =
        api_request(socket, "POST", &format!("/{method}"), headers, Some(&body.to_string()))
            .unwrap_or_else(|e| panic!("{method}: {e:#}"));
    assert_eq!(content_type, "application/vnd.docker.plugins.v1.2+json", "{method}: {text}");
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} answered no JSON ({e}): {text}")))
}

#[track_caller]
fn succeeds(socket: &Path, method: &str, body: Value) -> Value {
    let (status, answer) = post(socket, method, &body);
    assert_eq!(status, 200, "{method} failed: {answer}");
    assert!(answer.get("Err").is_none(), "{method}: {answer}");
    answer
}

/// The error text of a call that must fail, in the protocol's form.
#[track_caller]
fn fails(socket: &Path, method: &str, body: Value) -> String {
    let (status, answer) = post(socket, method, &body);
    assert_ne!(status, 200, "{method} should have failed: {answer}");
    answer["Err"].as_str().unwrap_or_else(|| panic!("{method}: no Err in {answer}")).to_owned()
}

fn endpoint(endpoint_id: &str) -> Value {
    json!({"NetworkID": NETWORK_ID, "EndpointID": endpoint_id})
}

/// What dockerd does with Join's answer: the interface into the sandbox, renamed to
/// DstPrefix + 0, with Docker's address and a default route via Join's gateway.
#[track_caller]
fn move_in(host: &str, container: &str, join: &Value, address: &str) {
    let src = join["InterfaceName"]["SrcName"].as_str().unwrap();
    let dst = format!("{}0", join["InterfaceName"]["DstPrefix"].as_str().unwrap());
    let gateway = join["Gateway"].as_str().unwrap();
    for args in [
        vec!["-n", host, "link", "set", src, "netns", container],
        vec!["-n", container, "link", "set", src, "name", &dst],
        vec!["-n", container, "addr", "add", address, "dev", &dst],
        vec!["-n", container, "link", "set", &dst, "up"],
        vec!["-n", container, "route", "add", "default", "via", gateway],
    ] {
        run("ip", &args).unwrap_or_else(|e| panic!("{e:#}"));
    }
}

/// What dockerd does at Leave when the sandbox goes: the interface back into its namespace,
/// under its first name.
#[track_caller]
fn move_out(host: &str, container: &str, src: &str) {
    for args in [
        vec!["-n", container, "link", "set", "eth0", "down"],
        vec!["-n", container, "link", "set", "eth0", "name", src],
        vec!["-n", container, "link", "set", src, "netns", host],
    ] {
        run("ip", &args).unwrap_or_else(|e| panic!("{e:#}"));
    }
}

fn endpoint_names(sb: &Sandbox) -> Vec<String> {
    let all = sb.json(&["container", "ls", "--json"]);
    all.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn networks_endpoints_joins_and_ports_as_dockerd_asks_for_them() {
    let (mut sb, socket) = sandbox();
    let host = sb.host_netns().to_owned();

    assert_eq!(succeeds(&socket, "Plugin.Activate", json!({})), json!({"Implements": ["NetworkDriver"]}));
    assert_eq!(
        succeeds(&socket, "NetworkDriver.GetCapabilities", json!({})),
        json!({"Scope": "local", "ConnectivityScope": "local"})
    );

    // docker network create -d bpfnet --subnet 10.246.0.0/24 (Docker's IPAM chose the gateway).
    let create = json!({
        "NetworkID": NETWORK_ID,
        "Options": {"com.docker.network.enable_ipv6": false, "com.docker.network.generic": {}},
        "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.246.0.0/24", "Gateway": "10.246.0.1/24",
                      "AuxAddresses": null}],
        "IPv6Data": []
    });
    assert_eq!(succeeds(&socket, "NetworkDriver.CreateNetwork", create.clone()), json!({}));
    let networks = sb.json(&["network", "ls", "--json"]);
    assert_eq!(networks[0]["name"], "docker-4d1a5e0c9b7f");
    assert_eq!(
        (networks[0]["subnet"].as_str(), networks[0]["gateway"].as_str()),
        (Some("10.246.0.0/24"), Some("10.246.0.1"))
    );
    let again = fails(&socket, "NetworkDriver.CreateNetwork", create);
    assert!(again.contains("already exists"), "{again}");

    // Two endpoints with Docker's addresses; B with a MAC address the user chose.
    let a = succeeds(
        &socket,
        "NetworkDriver.CreateEndpoint",
        json!({"NetworkID": NETWORK_ID, "EndpointID": ENDPOINT_A,
               "Interface": {"Address": "10.246.0.2/24", "AddressIPv6": "", "MacAddress": ""},
               "Options": {"com.docker.network.endpoint.exposedports": null}}),
    );
    assert_eq!(a, json!({"Interface": {"MacAddress": "02:42:0a:f6:00:02"}}), "Docker left the MAC to the driver");
    let b = succeeds(
        &socket,
        "NetworkDriver.CreateEndpoint",
        json!({"NetworkID": NETWORK_ID, "EndpointID": ENDPOINT_B,
               "Interface": {"Address": "10.246.0.3/24", "AddressIPv6": "", "MacAddress": "02:42:0a:f6:00:33"},
               "Options": null}),
    );
    assert_eq!(b, json!({}), "what Docker filled in comes back empty");
    let mut names = endpoint_names(&sb);
    names.sort();
    assert_eq!(names, [format!("docker:{ENDPOINT_A}"), format!("docker:{ENDPOINT_B}")]);

    // Join: the container end waits in the host namespace, with the MAC address, for dockerd.
    let (container_a, container_b) = (sb.add_engine_netns("ca").unwrap(), sb.add_engine_netns("cb").unwrap());
    let join = |id: &str, container: &str| {
        succeeds(
            &socket,
            "NetworkDriver.Join",
            json!({"NetworkID": NETWORK_ID, "EndpointID": id, "SandboxKey": format!("/run/netns/{container}"),
                   "Options": {}}),
        )
    };
    let join_a = join(ENDPOINT_A, &container_a);
    let src_a = join_a["InterfaceName"]["SrcName"].as_str().unwrap().to_owned();
    assert!(src_a.starts_with("bp") && links_in(&host).contains(&src_a), "{join_a}");
    assert_eq!(join_a["Gateway"], "10.246.0.1");
    assert_eq!(join_a["InterfaceName"]["DstPrefix"], "eth");
    let join_b = join(ENDPOINT_B, &container_b);
    move_in(&host, &container_a, &join_a, "10.246.0.2/24");
    move_in(&host, &container_b, &join_b, "10.246.0.3/24");
    let mac_b = run("ip", &["-n", &container_b, "-j", "link", "show", "eth0"]).unwrap();
    assert!(mac_b.contains("02:42:0a:f6:00:33"), "B keeps Docker's MAC address: {mac_b}");

    // Traffic: container to container, to the gateway, and to the outside, masqueraded.
    assert!(ping(&container_a, GATEWAY), "the gateway answers");
    assert!(ping(&container_a, IP_B), "A reaches B");
    let b_peers = sb.tcp_echo_server(&container_b, SocketAddrV4::new(IP_B, 7000), 1);
    assert_eq!(tcp_exchange(&container_a, SocketAddrV4::new(IP_B, 7000), b"a to b").unwrap(), b"a to b");
    assert_eq!(b_peers.get()[0].ip(), IpAddr::V4(IP_A), "between containers, addresses stay");
    let outside = sb.outside_netns().to_owned();
    let outside_peers = sb.tcp_echo_server(&outside, SocketAddrV4::new(OUTSIDE_IP, 7001), 1);
    assert_eq!(tcp_exchange(&container_a, SocketAddrV4::new(OUTSIDE_IP, 7001), b"out").unwrap(), b"out");
    assert_eq!(outside_peers.get()[0].ip(), IpAddr::V4(UPLINK_HOST_IP), "masqueraded to the uplink's address");

    // -p 8080:80 for A; B asks for 8080-8081:80 and gets 8081, the first free port.
    let portmap = |host_port: u16, end: u16| json!([{"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": host_port, "HostPortEnd": end}]);
    let program = |id: &str, ports: Value| {
        json!({"NetworkID": NETWORK_ID, "EndpointID": id,
               "Options": {"com.docker.network.endpoint.exposedports": [{"Proto": 6, "Port": 80}],
                           "com.docker.network.portmap": ports}})
    };
    succeeds(&socket, "NetworkDriver.ProgramExternalConnectivity", program(ENDPOINT_A, portmap(8080, 8080)));
    succeeds(&socket, "NetworkDriver.ProgramExternalConnectivity", program(ENDPOINT_B, portmap(8080, 8081)));
    let info = succeeds(&socket, "NetworkDriver.EndpointOperInfo", endpoint(ENDPOINT_B));
    assert_eq!(info["Value"]["bpfnet.ports"], json!(["0.0.0.0:8081->80/tcp"]), "{info}");
    assert_eq!(
        info["Value"]["com.docker.network.portmap"],
        json!([{"Proto": 6, "IP": "10.246.0.3", "Port": 80, "HostIP": "0.0.0.0", "HostPort": 8081, "HostPortEnd": 8081}]),
        "in Docker's own key and shape: {info}"
    );
    let a_web = sb.tcp_echo_server(&container_a, SocketAddrV4::new(IP_A, 80), 2);
    let b_web = sb.tcp_echo_server(&container_b, SocketAddrV4::new(IP_B, 80), 1);
    assert_eq!(tcp_exchange(&outside, SocketAddrV4::new(UPLINK_HOST_IP, 8080), b"to a").unwrap(), b"to a");
    assert_eq!(tcp_exchange(&outside, SocketAddrV4::new(UPLINK_HOST_IP, 8081), b"to b").unwrap(), b"to b");
    assert_eq!(a_web.get()[0].ip(), IpAddr::V4(OUTSIDE_IP), "the container sees the real client");
    assert_eq!(b_web.get()[0].ip(), IpAddr::V4(OUTSIDE_IP));
    let taken = fails(&socket, "NetworkDriver.ProgramExternalConnectivity", program(ENDPOINT_B, portmap(8080, 8080)));
    assert!(taken.contains("no free host port in 8080-8080/tcp"), "{taken}");

    // The agent killed with -9: traffic goes on without it, and the restarted agent (and its
    // driver socket) knows every network, endpoint and port.
    // C is created but not joined yet: its container end waits in the host namespace, where
    // the restarted agent must leave it. B's container goes away (its pair with it) while the
    // agent is down: the restarted agent forgets B.
    succeeds(
        &socket,
        "NetworkDriver.CreateEndpoint",
        json!({"NetworkID": NETWORK_ID, "EndpointID": ENDPOINT_C, "Interface": {"Address": "10.246.0.4/24"}}),
    );
    sb.stop_agent(Signal::SIGKILL);
    assert!(ping(&container_a, IP_B), "A reaches B with the agent gone");
    run("ip", &["netns", "delete", &container_b]).unwrap();
    sb.ensure_agent();
    assert_eq!(tcp_exchange(&outside, SocketAddrV4::new(UPLINK_HOST_IP, 8080), b"again").unwrap(), b"again");
    let info = succeeds(&socket, "NetworkDriver.EndpointOperInfo", endpoint(ENDPOINT_A));
    assert_eq!(info["Value"]["bpfnet.ports"], json!(["0.0.0.0:8080->80/tcp"]), "{info}");
    let mut names = endpoint_names(&sb);
    names.sort();
    assert_eq!(
        names,
        [format!("docker:{ENDPOINT_A}"), format!("docker:{ENDPOINT_C}")],
        "B vanished with its container"
    );
    let join_c = succeeds(&socket, "NetworkDriver.Join", endpoint(ENDPOINT_C));
    let src_c = join_c["InterfaceName"]["SrcName"].as_str().unwrap();
    assert!(links_in(&host).contains(&src_c.to_owned()), "C's container end is still there for dockerd");
    assert!(leaks(&sb).is_empty(), "{:?}", leaks(&sb));
    succeeds(&socket, "NetworkDriver.Leave", endpoint(ENDPOINT_C));
    succeeds(&socket, "NetworkDriver.DeleteEndpoint", endpoint(ENDPOINT_C));
    assert!(!links_in(&host).contains(&src_c.to_owned()), "both ends of C's pair are gone");

    // docker rm -f A: ports revoked, Leave, the interface back with dockerd, DeleteEndpoint.
    succeeds(&socket, "NetworkDriver.RevokeExternalConnectivity", endpoint(ENDPOINT_A));
    assert!(tcp_exchange(&outside, SocketAddrV4::new(UPLINK_HOST_IP, 8080), b"gone").is_err(), "unpublished");
    succeeds(&socket, "NetworkDriver.Leave", endpoint(ENDPOINT_A));
    move_out(&host, &container_a, &src_a);
    succeeds(&socket, "NetworkDriver.DeleteEndpoint", endpoint(ENDPOINT_A));
    assert!(!links_in(&host).contains(&src_a), "both ends of A's pair are gone");
    // B went away while the agent was down; dockerd's deletes of what is gone succeed (it
    // retries them).
    succeeds(&socket, "NetworkDriver.Leave", endpoint(ENDPOINT_B));
    succeeds(&socket, "NetworkDriver.DeleteEndpoint", endpoint(ENDPOINT_B));
    succeeds(&socket, "NetworkDriver.DeleteEndpoint", endpoint(ENDPOINT_B));
    assert!(endpoint_names(&sb).is_empty());
    let unknown = fails(&socket, "NetworkDriver.Join", endpoint(ENDPOINT_B));
    assert!(unknown.contains("no endpoint"), "{unknown}");

    succeeds(&socket, "NetworkDriver.DeleteNetwork", json!({"NetworkID": NETWORK_ID}));
    succeeds(&socket, "NetworkDriver.DeleteNetwork", json!({"NetworkID": NETWORK_ID}));
    assert_eq!(sb.json(&["network", "ls", "--json"]), json!([]));
    assert!(leaks(&sb).is_empty(), "{:?}", leaks(&sb));
    let ours: Vec<String> =
        links_in(&host).into_iter().filter(|l| l.starts_with("bn") || l.starts_with("bp")).collect();
    assert!(ours.is_empty(), "{ours:?}");
    assert!(namespaces_with_prefix(&container_a).contains(&container_a), "the engine's namespace stays");
    sb.teardown().unwrap();
}

/// `docker network create --ipv6 --subnet V4 --subnet V6`, as dockerd asks for it: the network
/// is dual stack, an endpoint takes the IPv6 address Docker's IPAM chose, Join names the IPv6
/// gateway, and `-p` bindings on `0.0.0.0` and `::` are one published port on both families.
#[test]
fn a_dual_stack_network_as_dockerd_asks_for_it() {
    let (sb, socket) = sandbox();
    let pools = |v4: &str, v6: &str| {
        (
            json!([{"AddressSpace": "LocalDefault", "Pool": "10.246.0.0/24", "Gateway": v4}]),
            json!([{"AddressSpace": "LocalDefault", "Pool": "fd00:246::/64", "Gateway": v6}]),
        )
    };
    let (v4, v6) = pools("10.246.0.1/24", "fd00:246::1/64");
    let options = json!({"com.docker.network.enable_ipv6": true, "com.docker.network.generic": {}});
    succeeds(
        &socket,
        "NetworkDriver.CreateNetwork",
        json!({"NetworkID": NETWORK_ID, "Options": options, "IPv4Data": v4, "IPv6Data": v6}),
    );
    let network = sb.json(&["network", "ls", "--json"])[0].clone();
    assert_eq!(
        (network["subnet6"].as_str(), network["gateway6"].as_str()),
        (Some("fd00:246::/64"), Some("fd00:246::1"))
    );
    let iface = json!({"Address": "10.246.0.2/24", "AddressIPv6": "fd00:246::2/64", "MacAddress": ""});
    succeeds(
        &socket,
        "NetworkDriver.CreateEndpoint",
        json!({"NetworkID": NETWORK_ID, "EndpointID": ENDPOINT_A, "Interface": iface}),
    );
    let join = succeeds(
        &socket,
        "NetworkDriver.Join",
        json!({"NetworkID": NETWORK_ID, "EndpointID": ENDPOINT_A, "SandboxKey": "/var/run/docker/netns/x"}),
    );
    assert_eq!((join["Gateway"].as_str(), join["GatewayIPv6"].as_str()), (Some("10.246.0.1"), Some("fd00:246::1")));
    let ports = json!([
        {"Proto": 6, "IP": "", "Port": 80, "HostIP": "0.0.0.0", "HostPort": 8080, "HostPortEnd": 8080},
        {"Proto": 6, "IP": "", "Port": 80, "HostIP": "::", "HostPort": 8080, "HostPortEnd": 8080}
    ]);
    succeeds(
        &socket,
        "NetworkDriver.ProgramExternalConnectivity",
        json!({"NetworkID": NETWORK_ID, "EndpointID": ENDPOINT_A, "Options": {"com.docker.network.portmap": ports}}),
    );
    let listed = sb.json(&["container", "ls", "--json"])[0].clone();
    assert_eq!(listed["ip6"], "fd00:246::2");
    assert_eq!(listed["ports"], json!(["0.0.0.0:8080->80/tcp"]), "one port, on both families");
    assert_eq!(pinned_map_len(sb.bpffs_dir(), "PUBLISHED6"), 1);
    assert_eq!(pinned_map_len(sb.bpffs_dir(), "ENDPOINTS6"), 1);
    succeeds(&socket, "NetworkDriver.DeleteEndpoint", endpoint(ENDPOINT_A));
    assert_eq!(pinned_map_len(sb.bpffs_dir(), "ENDPOINTS6"), 0);
    sb.teardown().unwrap();
}

#[test]
fn what_bpfnet_cannot_do_is_refused_in_the_protocols_form() {
    let (sb, socket) = sandbox();
    let network = |options: Value, v4: Value, v6: Value| json!({"NetworkID": NETWORK_ID, "Options": options, "IPv4Data": v4, "IPv6Data": v6});
    let pool = json!([{"AddressSpace": "LocalDefault", "Pool": "10.246.0.0/24", "Gateway": "10.246.0.1/24"}]);
    let v6 = json!({"AddressSpace": "LocalDefault", "Pool": "fd00::/64", "Gateway": "fd00::1/64"});
    let ipv6_on = json!({"com.docker.network.enable_ipv6": true});
    for (request, says) in [
        (network(json!({}), pool.clone(), json!([v6.clone(), v6.clone()])), "at most one IPv6 subnet"),
        (network(ipv6_on, pool.clone(), json!(null)), "no IPv6 pool"),
        (network(json!({}), pool.clone(), json!([{"Pool": "fd00::/80"}])), "smaller than a /64"),
        (network(json!({"com.docker.network.internal": true}), pool.clone(), json!(null)), "--internal"),
        (network(json!({"com.docker.network.generic": {"mtu": "9000"}}), pool.clone(), json!(null)), "\"mtu\""),
        (network(json!({}), json!(null), json!(null)), "exactly one IPv4 subnet"),
        (json!({"NetworkID": "../../etc", "IPv4Data": pool.clone()}), "not a Docker id"),
        (network(json!({}), json!([{"Pool": "10.246.0.0/33"}]), json!(null)), "10.246.0.0/33"),
    ] {
        let err = fails(&socket, "NetworkDriver.CreateNetwork", request);
        assert!(err.contains(says), "{err}");
    }
    assert!(sb.json(&["network", "ls", "--json"]).as_array().unwrap().is_empty(), "nothing was made");

    let (status, answer) = post(&socket, "NetworkDriver.CreateNetwork", &json!("not an object"));
    assert_eq!(status, 400);
    assert!(answer["Err"].as_str().unwrap().contains("invalid request body"), "{answer}");
    let (status, answer) = post(&socket, "IpamDriver.RequestPool", &json!({}));
    assert_eq!(status, 404);
    assert!(answer["Err"].as_str().unwrap().contains("does not implement"), "{answer}");

    succeeds(&socket, "NetworkDriver.CreateNetwork", network(json!({}), pool, json!(null)));
    let create = |iface: Value| {
        fails(
            &socket,
            "NetworkDriver.CreateEndpoint",
            json!({"NetworkID": NETWORK_ID, "EndpointID": ENDPOINT_A, "Interface": iface}),
        )
    };
    assert!(create(json!({"Address": ""})).contains("no IPv4 address"));
    assert!(create(json!({"Address": "10.246.0.2/24", "AddressIPv6": "fd00::2/64"})).contains("no IPv6 subnet"));
    assert!(create(json!({"Address": "10.9.0.2/24"})).contains("10.9.0.2"));
    assert!(create(json!({"Address": "10.246.0.2/24", "MacAddress": "nope"})).contains("\"nope\""));
    assert!(sb.json(&["container", "ls", "--json"]).as_array().unwrap().is_empty(), "nothing was made");
    sb.teardown().unwrap();
}

/// The address a container has on its one network.
#[track_caller]
fn docker_ip(docker: &Docker, name: &str) -> Ipv4Addr {
    let ip = docker.inspect(name, "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}").unwrap();
    ip.parse().unwrap_or_else(|e| panic!("{name}'s address {ip:?}: {e}"))
}

/// GET /cgi-bin/peer from one container to another's httpd: the address it saw. Retried for a
/// short while: httpd needs a moment after its container started.
#[track_caller]
fn peer_seen_from(docker: &Docker, client: &str, server: Ipv4Addr) -> String {
    let mut last = String::new();
    for _ in 0..20 {
        match docker.exec(client, &format!("printf 'GET /cgi-bin/peer HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {server} 80")) {
            Ok(answer) => match peer_in(&answer) {
                Some(peer) => return peer,
                None => last = answer,
            },
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    panic!("no answer from {server} (from {client}): {last}");
}

/// bpfnet's links in the host namespace (veth ends).
fn bpfnet_links(sb: &Sandbox) -> Vec<String> {
    links_in(sb.host_netns()).into_iter().filter(|l| l.starts_with("bn") || l.starts_with("bp")).collect()
}

#[test]
fn dockerd_runs_containers_on_a_bpfnet_network() {
    let mut sb = Sandbox::with_uplink();
    sb.set_agent_env("BPFNET_DOCKER_PLUGIN_SOCKET", driver_socket(&sb).to_str().unwrap());
    sb.ensure_agent();
    let mut docker = Docker::start(&sb).unwrap_or_else(|e| panic!("{e:#}"));
    let net = sb.name("net");
    docker.run(&["network", "create", "-d", &docker.driver, "--subnet", "10.247.0.0/24", &net]).unwrap();
    let id = docker.run(&["network", "inspect", "--format", "{{.Id}}", &net]).unwrap();
    let networks = sb.json(&["network", "ls", "--json"]);
    assert_eq!(networks[0]["name"], format!("docker-{}", &id.trim()[..12]), "{networks}");
    assert_eq!(networks[0]["gateway"], "10.247.0.1", "Docker's IPAM chose the gateway");

    docker
        .run(&[
            "run",
            "-d",
            "--network",
            &net,
            "--name",
            "web",
            "-p",
            "8080:80",
            BUSYBOX_IMAGE,
            "sh",
            "-c",
            PEER_SERVER,
        ])
        .unwrap_or_else(|e| panic!("{e:#}"));
    docker.run(&["run", "-d", "--network", &net, "--name", "client", BUSYBOX_IMAGE, "sleep", "600"]).unwrap();
    let (web, client) = (docker_ip(&docker, "web"), docker_ip(&docker, "client"));
    let endpoints = sb.json(&["container", "ls", "--json"]);
    assert_eq!(endpoints.as_array().unwrap().len(), 2, "{endpoints}");
    assert!(endpoints.as_array().unwrap().iter().all(|e| e["name"].as_str().unwrap().starts_with("docker:")));

    // Container to container (its own address seen), to the outside (masqueraded), and from
    // the outside to the published port (the client's address kept).
    assert_eq!(peer_seen_from(&docker, "client", web), client.to_string());
    let outside = sb.outside_netns().to_owned();
    let outside_peers = sb.tcp_echo_server(&outside, SocketAddrV4::new(OUTSIDE_IP, 7001), 1);
    let echoed = docker.exec("client", &format!("echo hello | nc -w 3 {OUTSIDE_IP} 7001")).unwrap();
    assert_eq!(echoed.trim(), "hello");
    assert_eq!(outside_peers.get()[0].ip(), IpAddr::V4(UPLINK_HOST_IP), "masqueraded to the uplink's address");
    let published = SocketAddrV4::new(UPLINK_HOST_IP, 8080);
    assert_eq!(peer_seen(&outside, published), OUTSIDE_IP.to_string());

    // The agent killed with -9, then started again: the containers' traffic goes on.
    sb.stop_agent(Signal::SIGKILL);
    assert_eq!(peer_seen(&outside, published), OUTSIDE_IP.to_string(), "without the agent");
    sb.ensure_agent();
    assert_eq!(peer_seen(&outside, published), OUTSIDE_IP.to_string());
    assert_eq!(peer_seen_from(&docker, "client", web), client.to_string());
    assert!(leaks(&sb).is_empty(), "{:?}", leaks(&sb));

    // dockerd restarted (live-restore): the containers and their traffic stay.
    docker.stop_dockerd().unwrap();
    assert_eq!(peer_seen(&outside, published), OUTSIDE_IP.to_string(), "without dockerd");
    docker.start_dockerd().unwrap();
    assert_eq!(peer_seen(&outside, published), OUTSIDE_IP.to_string());
    assert_eq!(peer_seen_from(&docker, "client", web), client.to_string());
    // A container started after both restarts joins the same network.
    docker.run(&["run", "-d", "--network", &net, "--name", "late", BUSYBOX_IMAGE, "sleep", "600"]).unwrap();
    assert_eq!(peer_seen_from(&docker, "late", web), docker_ip(&docker, "late").to_string());

    // docker rm -f and docker network rm leave nothing behind.
    docker.run(&["rm", "-f", "web", "client", "late"]).unwrap();
    assert_eq!(sb.json(&["container", "ls", "--json"]), json!([]));
    assert!(bpfnet_links(&sb).is_empty(), "{:?}", bpfnet_links(&sb));
    assert!(http_unanswered(&outside, published), "the port is unpublished");
    docker.run(&["network", "rm", &net]).unwrap();
    assert_eq!(sb.json(&["network", "ls", "--json"]), json!([]));
    assert!(leaks(&sb).is_empty(), "{:?}", leaks(&sb));
    docker.teardown().unwrap();
    sb.teardown().unwrap();
}

fn http_unanswered(netns: &str, addr: SocketAddrV4) -> bool {
    bpfnet_tests::engines::http_get(netns, addr, "/").is_err()
}

/// The address a container has on one of its networks.
#[track_caller]
fn docker_ip_on(docker: &Docker, name: &str, network: &str) -> Ipv4Addr {
    let ip =
        docker.inspect(name, &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}")).unwrap();
    ip.parse().unwrap_or_else(|e| panic!("{name}'s address on {network} {ip:?}: {e}"))
}

/// `docker network create --ipv6` with an IPv6 subnet, under a real dockerd: the containers
/// get the IPv6 addresses Docker's IPAM chose, bpfnet's state has them, and the containers
/// reach each other over IPv6.
#[test]
fn dockerd_makes_a_dual_stack_network() {
    let mut sb = Sandbox::with_uplink();
    sb.set_agent_env("BPFNET_DOCKER_PLUGIN_SOCKET", driver_socket(&sb).to_str().unwrap());
    sb.ensure_agent();
    let docker = Docker::start(&sb).unwrap_or_else(|e| panic!("{e:#}"));
    let driver = docker.driver.clone();
    let net = sb.name("dual");
    let create = ["network", "create", "-d", &driver, "--ipv6", "--subnet", "10.236.0.0/24"];
    docker.run(&[&create[..], &["--subnet", "fd00:236::/64", &net]].concat()).unwrap();
    let network = sb.json(&["network", "ls", "--json"])[0].clone();
    assert_eq!(network["subnet6"], "fd00:236::/64", "{network}");
    for name in ["a6", "b6"] {
        docker.run(&["run", "-d", "--network", &net, "--name", name, BUSYBOX_IMAGE, "sleep", "600"]).unwrap();
    }
    let ip6 = |name: &str| docker.inspect(name, "{{range .NetworkSettings.Networks}}{{.GlobalIPv6Address}}{{end}}");
    let a6 = ip6("a6").unwrap();
    assert!(a6.starts_with("fd00:236::"), "Docker gave a6 {a6:?}");
    let listed = sb.json(&["container", "ls", "--json"]);
    assert!(listed.as_array().unwrap().iter().any(|c| c["ip6"] == a6.as_str()), "{listed}");
    docker.exec("b6", &format!("ping -6 -c 1 -W 2 {a6}")).unwrap_or_else(|e| panic!("b6 pings a6 over IPv6: {e:#}"));
    docker.run(&["rm", "-f", "a6", "b6"]).unwrap();
    docker.run(&["network", "rm", &net]).unwrap();
    assert_eq!(sb.json(&["container", "ls", "--json"]), json!([]));
    docker.teardown().unwrap();
    sb.teardown().unwrap();
}

#[test]
fn dockerd_connects_a_running_container_and_hears_refusals_in_its_own_words() {
    let mut sb = Sandbox::with_uplink();
    sb.set_agent_env("BPFNET_DOCKER_PLUGIN_SOCKET", driver_socket(&sb).to_str().unwrap());
    sb.ensure_agent();
    let docker = Docker::start(&sb).unwrap_or_else(|e| panic!("{e:#}"));
    let driver = docker.driver.clone();

    // What bpfnet cannot do, refused with the driver's words in docker's error.
    let refused = |args: &[&str], says: &str| {
        let err = format!("{:#}", docker.run(args).unwrap_err());
        assert!(err.contains(says), "docker {args:?}: {err}");
    };
    let bad = sb.name("bad");
    refused(&["network", "create", "-d", &driver, "--internal", &bad], "--internal");
    let two_v6 = ["--subnet", "10.247.0.0/24", "--subnet", "fd00:1::/64", "--subnet", "fd00:2::/64"];
    refused(&[&["network", "create", "-d", &driver, "--ipv6"][..], &two_v6, &[&bad]].concat(), "at most one IPv6");
    refused(&["network", "create", "-d", &driver, "-o", "mtu=9000", &bad], "\"mtu\"");
    assert_eq!(sb.json(&["network", "ls", "--json"]), json!([]), "refusals leave nothing");

    let (one, two) = (sb.name("one"), sb.name("two"));
    docker.run(&["network", "create", "-d", &driver, "--subnet", "10.248.0.0/24", &one]).unwrap();
    docker.run(&["network", "create", "-d", &driver, "--subnet", "10.249.0.0/24", &two]).unwrap();
    refused(
        &["run", "-d", "--network", &one, "-p", "[::]:8080:80", "--name", "v6", BUSYBOX_IMAGE, "sleep", "600"],
        "has no IPv6 address",
    );
    docker.run(&["rm", "-f", "v6"]).unwrap();
    assert_eq!(sb.json(&["container", "ls", "--json"]), json!([]), "the refused container left no endpoint");

    docker.run(&["run", "-d", "--network", &one, "--name", "ca", BUSYBOX_IMAGE, "sleep", "600"]).unwrap();
    docker.run(&["run", "-d", "--network", &two, "--name", "cb", BUSYBOX_IMAGE, "sh", "-c", PEER_SERVER]).unwrap();
    let b = docker_ip(&docker, "cb");

    // docker network connect: the running container gets eth1 on the second network and
    // reaches b there with its address on it.
    docker.run(&["network", "connect", &two, "ca"]).unwrap_or_else(|e| panic!("{e:#}"));
    let a_on_two = docker_ip_on(&docker, "ca", &two);
    assert!(docker.exec("ca", "ip -o addr show eth1").unwrap().contains(&a_on_two.to_string()));
    assert_eq!(peer_seen_from(&docker, "ca", b), a_on_two.to_string());
    assert_eq!(sb.json(&["container", "ls", "--json"]).as_array().unwrap().len(), 3);

    // docker network disconnect: that endpoint goes, the first stays.
    docker.run(&["network", "disconnect", &two, "ca"]).unwrap();
    assert_eq!(sb.json(&["container", "ls", "--json"]).as_array().unwrap().len(), 2);
    assert!(docker.exec("ca", "ip -o link show eth1").is_err(), "eth1 is gone");
    assert!(ping_from(&docker, "ca", Ipv4Addr::new(10, 248, 0, 1)), "a still has its first network");

    docker.run(&["rm", "-f", "ca", "cb"]).unwrap();
    docker.run(&["network", "rm", &one, &two]).unwrap();
    assert_eq!(sb.json(&["container", "ls", "--json"]), json!([]));
    assert!(bpfnet_links(&sb).is_empty(), "{:?}", bpfnet_links(&sb));
    assert!(leaks(&sb).is_empty(), "{:?}", leaks(&sb));
    docker.teardown().unwrap();
    sb.teardown().unwrap();
}

fn ping_from(docker: &Docker, name: &str, ip: Ipv4Addr) -> bool {
    docker.exec(name, &format!("ping -c 1 -W 2 {ip}")).is_ok()
}

/// A container's published ports as the driver reports them to dockerd (EndpointOperInfo,
/// Docker's own key and shape): (container port/protocol, host port).
#[track_caller]
fn reported_ports(docker: &Docker, socket: &Path, name: &str) -> Vec<(String, u16)> {
    let ids = docker
        .inspect(name, "{{range .NetworkSettings.Networks}}{{.NetworkID}} {{.EndpointID}}{{end}}")
        .unwrap_or_else(|e| panic!("{e:#}"));
    let (network, endpoint) = ids.split_once(' ').unwrap_or_else(|| panic!("{name}: {ids:?}"));
    let info =
        succeeds(socket, "NetworkDriver.EndpointOperInfo", json!({"NetworkID": network, "EndpointID": endpoint}));
    let mut ports: Vec<(String, u16)> = info["Value"]["com.docker.network.portmap"]
        .as_array()
        .unwrap_or_else(|| panic!("no portmap in {info}"))
        .iter()
        .map(|b| {
            assert_eq!(b["HostIP"], "0.0.0.0", "{b}");
            assert_eq!(b["HostPort"], b["HostPortEnd"], "{b}");
            let proto = if b["Proto"] == 6 { "tcp" } else { "udp" };
            (format!("{}/{proto}", b["Port"]), b["HostPort"].as_u64().unwrap() as u16)
        })
        .collect();
    ports.sort();
    ports
}

/// The host namespace's ephemeral ports, where Docker picks host ports.
fn ephemeral_range(sb: &Sandbox) -> std::ops::RangeInclusive<u16> {
    let text = run("ip", &["netns", "exec", sb.host_netns(), "cat", "/proc/sys/net/ipv4/ip_local_port_range"]).unwrap();
    let ports: Vec<u16> = text.split_whitespace().map(|p| p.parse().unwrap()).collect();
    ports[0]..=ports[1]
}

#[test]
fn dockerd_gets_host_ports_picked_for_p_port_and_capital_p_and_containers_hairpin() {
    let mut sb = Sandbox::with_uplink();
    let socket = driver_socket(&sb);
    sb.set_agent_env("BPFNET_DOCKER_PLUGIN_SOCKET", socket.to_str().unwrap());
    sb.ensure_agent();
    let docker = Docker::start(&sb).unwrap_or_else(|e| panic!("{e:#}"));
    let net = sb.name("net");
    docker.run(&["network", "create", "-d", &docker.driver, "--subnet", "10.251.0.0/24", &net]).unwrap();
    let start = |name: &str, ports: &[&str]| {
        let mut args = vec!["run", "-d", "--network", &net, "--name", name];
        args.extend(ports);
        args.extend([BUSYBOX_IMAGE, "sh", "-c", PEER_SERVER]);
        docker.run(&args).unwrap_or_else(|e| panic!("docker {args:?}: {e:#}"));
    };
    start("fixed", &["-p", "8080:80"]);
    // -p 80: no host port given, dockerd sends 0 and bpfnet picks one.
    start("any", &["-p", "80"]);
    // -P: every exposed port, each on a host port bpfnet picks.
    start("all", &["-P", "--expose", "80", "--expose", "53/udp"]);

    let range = ephemeral_range(&sb);
    let any = reported_ports(&docker, &socket, "any");
    let all = reported_ports(&docker, &socket, "all");
    assert_eq!(reported_ports(&docker, &socket, "fixed"), [("80/tcp".to_owned(), 8080)]);
    assert_eq!(any.len(), 1, "{any:?}");
    assert_eq!(all.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(), ["53/udp", "80/tcp"], "{all:?}");
    // As Docker's port allocator: the first free ports of the ephemeral range, round robin
    // per protocol.
    assert_eq!(any[0].1, *range.start(), "{any:?} in {range:?}");
    assert_eq!(all, [("53/udp".to_owned(), *range.start()), ("80/tcp".to_owned(), *range.start() + 1)]);
    let listed = sb.json(&["container", "ls", "--json"]).to_string();
    assert!(listed.contains(&format!("0.0.0.0:{}->80/tcp", any[0].1)), "{listed}");

    // The picked ports answer from outside, with the client's address kept.
    let outside = sb.outside_netns().to_owned();
    for host_port in [any[0].1, all[1].1, 8080] {
        assert_eq!(peer_seen(&outside, SocketAddrV4::new(UPLINK_HOST_IP, host_port)), OUTSIDE_IP.to_string());
    }
    // dockerd does not show them: it reads a remote driver's port map only as its own Go type
    // (moby/libnetwork#2451), so `docker port` and NetworkSettings.Ports stay empty, whoever
    // picked the port. Asserted, so that a dockerd that does show them is noticed.
    assert_eq!(docker.run(&["port", "fixed"]).unwrap().trim(), "", "docker port shows a remote driver's ports");
    assert_eq!(docker.inspect("any", "{{json .NetworkSettings.Ports}}").unwrap(), "{}");

    // Hairpin: a container of the network reaches the others' published ports at the host's
    // uplink address; its source is translated to that address, so the replies come back.
    docker.run(&["run", "-d", "--network", &net, "--name", "client", BUSYBOX_IMAGE, "sleep", "600"]).unwrap();
    let hairpins_before = sb.counter("counters", "hairpin_new_flow");
    assert_eq!(peer_seen_at(&docker, "client", SocketAddrV4::new(UPLINK_HOST_IP, 8080)), UPLINK_HOST_IP.to_string());
    assert_eq!(
        peer_seen_at(&docker, "client", SocketAddrV4::new(UPLINK_HOST_IP, any[0].1)),
        UPLINK_HOST_IP.to_string()
    );
    assert!(sb.counter("counters", "hairpin_new_flow") >= hairpins_before + 2, "the datapath's hairpin made them");
    let flows = sb.json(&["conntrack", "ls", "--json"]);
    assert!(flows.as_array().unwrap().iter().any(|f| f["kind"] == "hairpin"), "{flows}");

    // Removed, the containers' picked ports are free again: the next one goes on from the
    // last picked (round robin), and nothing is left behind.
    docker.run(&["rm", "-f", "any", "all", "fixed", "client"]).unwrap();
    for host_port in [any[0].1, all[1].1, 8080] {
        assert!(http_unanswered(&outside, SocketAddrV4::new(UPLINK_HOST_IP, host_port)), "{host_port} unpublished");
    }
    start("later", &["-p", "80"]);
    assert_eq!(reported_ports(&docker, &socket, "later"), [("80/tcp".to_owned(), *range.start() + 2)]);
    docker.run(&["rm", "-f", "later"]).unwrap();
    docker.run(&["network", "rm", &net]).unwrap();
    assert_eq!(sb.json(&["container", "ls", "--json"]), json!([]));
    assert!(bpfnet_links(&sb).is_empty(), "{:?}", bpfnet_links(&sb));
    assert!(leaks(&sb).is_empty(), "{:?}", leaks(&sb));
    docker.teardown().unwrap();
    sb.teardown().unwrap();
}

/// GET /cgi-bin/peer from a container to `addr`: the client address the server saw.
#[track_caller]
fn peer_seen_at(docker: &Docker, client: &str, addr: SocketAddrV4) -> String {
    let mut last = String::new();
    for _ in 0..20 {
        let script = format!("printf 'GET /cgi-bin/peer HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {} {}", addr.ip(), addr.port());
        match docker.exec(client, &script) {
            Ok(answer) => match peer_in(&answer) {
                Some(peer) => return peer,
                None => last = answer,
            },
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    panic!("no answer from {addr} (from {client}): {last}");
}

#[test]
fn dockerd_finds_the_driver_through_a_spec_file_naming_a_socket_elsewhere() {
    let mut sb = Sandbox::with_uplink();
    // Not in /run/docker/plugins: only the spec file tells dockerd where it is.
    let socket = sb.scratch_path("driver.sock");
    let spec = driver_spec(&sb);
    sb.set_agent_env("BPFNET_DOCKER_PLUGIN_SOCKET", socket.to_str().unwrap());
    sb.set_agent_env("BPFNET_DOCKER_PLUGIN_SPEC", spec.to_str().unwrap());
    sb.ensure_agent();
    assert_eq!(std::fs::read_to_string(&spec).unwrap(), format!("unix://{}\n", socket.display()));
    assert!(!driver_socket(&sb).exists(), "no socket where dockerd looks first");
    let docker = Docker::start(&sb).unwrap_or_else(|e| panic!("{e:#}"));
    let net = sb.name("net");
    docker.run(&["network", "create", "-d", &docker.driver, "--subnet", "10.252.0.0/24", &net]).unwrap();
    assert_eq!(sb.json(&["network", "ls", "--json"]).as_array().unwrap().len(), 1, "made by the agent");
    docker.run(&["run", "-d", "--network", &net, "--name", "web", BUSYBOX_IMAGE, "sh", "-c", PEER_SERVER]).unwrap();
    docker.run(&["run", "-d", "--network", &net, "--name", "client", BUSYBOX_IMAGE, "sleep", "600"]).unwrap();
    let web = docker_ip(&docker, "web");
    assert_eq!(peer_seen_from(&docker, "client", web), docker_ip(&docker, "client").to_string());
    docker.run(&["rm", "-f", "web", "client"]).unwrap();
    docker.run(&["network", "rm", &net]).unwrap();
    assert!(leaks(&sb).is_empty(), "{:?}", leaks(&sb));
    docker.teardown().unwrap();
    // The agent removes its spec file when it stops, as its socket.
    sb.stop_agent(Signal::SIGTERM);
    assert!(!spec.exists() && !socket.exists(), "{} or {} left", spec.display(), socket.display());
    sb.teardown().unwrap();
}

#[test]
fn a_spec_file_dockerd_could_not_use_stops_the_agent() {
    let mut sb = Sandbox::new();
    let socket = sb.scratch_path("driver.sock");
    sb.set_agent_env("BPFNET_DOCKER_PLUGIN_SOCKET", socket.to_str().unwrap());
    sb.set_agent_env("BPFNET_DOCKER_PLUGIN_SPEC", sb.scratch_path("driver.json").to_str().unwrap());
    let err = format!("{:#}", sb.start_agent().unwrap_err());
    assert!(err.contains("NAME.spec"), "{err}");
    sb.set_agent_env("BPFNET_DOCKER_PLUGIN_SOCKET", "relative.sock");
    sb.set_agent_env("BPFNET_DOCKER_PLUGIN_SPEC", sb.scratch_path("driver.spec").to_str().unwrap());
    let err = format!("{:#}", sb.start_agent().unwrap_err());
    assert!(err.contains("absolute path"), "{err}");
    assert!(!sb.scratch_path("driver.spec").exists());
    sb.teardown().unwrap();
}
