//! Real container engines run `bpfnet-cni` against a sandbox agent: podman 4.3 (its CNI
//! backend, cniVersion 1.0.0) and containerd 1.6 (its CRI plugin driven as the kubelet drives
//! it, cniVersion 0.4.0), each in the sandbox's host namespace with private state (see
//! bpfnet_tests::engines). Checked with real traffic: a published port answers from the
//! outside with the client's address kept, containers of both engines on one network reach
//! each other, an agent killed with SIGKILL and started again keeps every container's traffic,
//! and removing a container or pod leaves no attachment and no veth behind.
use std::{
    fs,
    net::SocketAddrV4,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
    process::Command,
};

use bpfnet_tests::{
    engines::{
        conflist, containerd::Containerd, cri::HostPort, netns_name, peer_in, peer_seen, podman::Podman, PEER_SERVER,
    },
    iptables_rules, links_in, ping, tcp_exchange, Sandbox, OUTSIDE_IP, UPLINK, UPLINK_HOST_IP,
};
use nix::sys::signal::Signal;

/// The attachments the agent lists, as (name, ip).
fn attachments(sb: &Sandbox) -> Vec<(String, String)> {
    let all = sb.json(&["container", "ls", "--json"]);
    all.as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap().to_owned(), c["ip"].as_str().unwrap().to_owned()))
        .collect()
}

/// The host namespace holds its loopback and uplink only: no veth of a container is left.
#[track_caller]
fn host_has_no_veths(sb: &Sandbox) {
    let mut links = links_in(sb.host_netns());
    links.sort();
    assert_eq!(links, ["lo", UPLINK], "links left in the host namespace");
}

#[test]
fn podman_runs_containers_on_a_bpfnet_network() {
    let sb = Sandbox::with_uplink();
    sb.ensure_agent();
    let podman = Podman::new(&sb).unwrap_or_else(|e| panic!("{e:#}"));
    let net = sb.name("net");
    // The plugin makes the bpfnet network on the first ADD.
    podman.add_network(&conflist(&sb, "1.0.0", &net, Some("10.247.0.0/24"))).unwrap();
    let listed = podman.run(&["network", "ls", "--format", "{{.Name}}"]).unwrap();
    assert!(listed.lines().any(|n| n == net), "{listed}");

    let web = podman.run_detached("web", &net, &["8080:80"], PEER_SERVER).unwrap_or_else(|e| panic!("{e:#}"));
    let client = podman.run_detached("client", &net, &[], "exec sleep 600").unwrap();
    let web_name = format!("{}/eth0", web.id);
    assert!(
        attachments(&sb).contains(&(web_name.clone(), web.ip.to_string())),
        "podman's address is the agent's: {:?}",
        attachments(&sb)
    );
    assert_eq!(web.ip.octets()[..3], [10, 247, 0]);
    let status = sb.json(&["status", "--json"]);
    let web_status = status["containers"].as_array().unwrap().iter().find(|c| c["name"] == web_name.as_str()).unwrap();
    assert_eq!(web_status["ports"], serde_json::json!(["0.0.0.0:8080->80/tcp"]), "podman's -p reached the plugin");

    // From the outside, through the published port: the container sees the real client.
    let published = SocketAddrV4::new(UPLINK_HOST_IP, 8080);
    assert_eq!(peer_seen(sb.outside_netns(), published), OUTSIDE_IP.to_string());
    // Container to container, inside podman: the client's own address is seen.
    let answer = podman
        .exec("client", &format!("printf 'GET /cgi-bin/peer HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {} 80", web.ip))
        .unwrap();
    assert_eq!(peer_in(&answer), Some(client.ip.to_string()), "{answer}");
    // The container reaches the outside world, masqueraded.
    let pinged = podman.exec("client", &format!("ping -c 1 -W 2 {OUTSIDE_IP}")).unwrap();
    assert!(pinged.contains("1 packets received"), "{pinged}");
    assert!(iptables_rules(sb.host_netns()).is_empty(), "no engine wrote firewall rules: bpfnet does the NAT");

    // A short-lived container: podman's exit command detaches it when it ends.
    let once = podman.run_once("once", &net, "ip -4 -o addr show eth0").unwrap();
    assert!(once.contains("10.247.0."), "{once}");
    assert!(!attachments(&sb).iter().any(|(_, ip)| once.contains(&format!("{ip}/"))), "the --rm container is detached");

    // The agent crashes: traffic goes on; it comes back and serves podman again.
    sb.stop_agent(Signal::SIGKILL);
    assert_eq!(peer_seen(sb.outside_netns(), published), OUTSIDE_IP.to_string());
    sb.ensure_agent();
    assert_eq!(peer_seen(sb.outside_netns(), published), OUTSIDE_IP.to_string());
    assert!(ping(&netns_name(&client.netns).unwrap(), web.ip), "container to container after the restart");
    let late = podman.run_detached("late", &net, &[], "exec sleep 600").unwrap();
    assert_ne!(late.ip, web.ip);
    assert_ne!(late.ip, client.ip);

    // podman rm: the plugin's DEL removes what bpfnet made; podman removes its namespace.
    for name in ["web", "client", "late"] {
        podman.remove(name).unwrap_or_else(|e| panic!("{e:#}"));
    }
    assert!(podman.containers().unwrap().is_empty());
    assert!(attachments(&sb).is_empty(), "left attached: {:?}", attachments(&sb));
    host_has_no_veths(&sb);
    for netns in [&web.netns, &client.netns, &late.netns] {
        assert!(!netns.exists(), "podman removed {}", netns.display());
    }
    assert!(tcp_exchange(sb.outside_netns(), published, b"gone").is_err(), "the port is unpublished");
    // podman's default network (a bridge with portmap and firewall plugins) stayed in its
    // memory: never written, never used.
    assert_eq!(podman.network_files().unwrap(), [format!("{net}.conflist")]);
    podman.teardown().unwrap();
    sb.teardown().unwrap();
}

#[test]
fn containerd_runs_pod_sandboxes_through_cri() {
    let mut sb = Sandbox::with_uplink();
    sb.ensure_agent();
    let net = sb.name("pods");
    let mut containerd = Containerd::start(&sb, &conflist(&sb, "0.4.0", &net, Some("10.248.0.0/24")))
        .unwrap_or_else(|e| panic!("{e:#}"));

    let pod = containerd
        .run_pod("web", &[HostPort { host_port: 8081, container_port: 80 }])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let status = containerd.pod_status(&pod).unwrap();
    assert!(status.ready, "{status:?}");
    let pod_ip = status.ip.expect("the pod has an IP");
    assert_eq!(attachments(&sb), [(format!("{pod}/eth0"), pod_ip.to_string())], "the pod's IP is the plugin's");
    let netns = netns_name(status.netns.as_deref().expect("the pod's namespace")).unwrap();
    let pause = format!("/proc/{}/ns/net", status.pid.expect("the pause process"));
    assert_eq!(
        fs::metadata(&pause).unwrap().ino(),
        fs::metadata(Path::new("/run/netns").join(&netns)).unwrap().ino(),
        "the pause process holds the namespace containerd reports"
    );

    // A server in the pod's namespace, reached from the outside through the published port.
    let peers = sb.tcp_echo_server(&netns, SocketAddrV4::new(pod_ip, 80), 2);
    let published = SocketAddrV4::new(UPLINK_HOST_IP, 8081);
    assert_eq!(tcp_exchange(sb.outside_netns(), published, b"via cri").unwrap(), b"via cri");
    assert_eq!(peers.get()[0].ip(), std::net::IpAddr::V4(OUTSIDE_IP), "the pod sees the real client");
    assert!(ping(&netns, OUTSIDE_IP), "the pod reaches the outside world");
    assert!(iptables_rules(sb.host_netns()).is_empty(), "no engine wrote firewall rules: bpfnet does the NAT");

    // A second pod on the network reaches the first.
    let other = containerd.run_pod("other", &[]).unwrap();
    let other_status = containerd.pod_status(&other).unwrap();
    let other_netns = netns_name(other_status.netns.as_deref().unwrap()).unwrap();
    assert!(ping(&other_netns, pod_ip), "pod to pod");
    assert_eq!(tcp_exchange(&other_netns, SocketAddrV4::new(pod_ip, 80), b"pod to pod").unwrap(), b"pod to pod");

    // StopPodSandbox runs the plugin's DEL; RemovePodSandbox removes the namespace.
    for id in [&pod, &other] {
        containerd.remove_pod(id).unwrap_or_else(|e| panic!("{e:#}"));
    }
    assert!(containerd.pods().unwrap().is_empty());
    assert!(attachments(&sb).is_empty(), "left attached: {:?}", attachments(&sb));
    host_has_no_veths(&sb);
    assert!(!Path::new("/run/netns").join(&netns).exists(), "containerd removed the pod's namespace");
    assert!(tcp_exchange(sb.outside_netns(), published, b"gone").is_err(), "the port is unpublished");
    containerd.teardown().unwrap();
    sb.teardown().unwrap();
}

#[test]
fn podman_and_containerd_share_a_network_across_an_agent_restart() {
    let mut sb = Sandbox::with_uplink();
    let net = sb.name("shared");
    // Made by hand this time: the engines' configurations give no subnet.
    sb.ok(&["network", "create", &net, "--subnet", "10.249.0.0/24"]);
    let podman = Podman::new(&sb).unwrap_or_else(|e| panic!("{e:#}"));
    podman.add_network(&conflist(&sb, "1.0.0", &net, None)).unwrap();
    let mut containerd =
        Containerd::start(&sb, &conflist(&sb, "0.4.0", &net, None)).unwrap_or_else(|e| panic!("{e:#}"));

    let web = podman.run_detached("web", &net, &["8080:80"], PEER_SERVER).unwrap_or_else(|e| panic!("{e:#}"));
    let pod = containerd
        .run_pod("pod", &[HostPort { host_port: 8081, container_port: 80 }])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let status = containerd.pod_status(&pod).unwrap();
    let pod_ip = status.ip.unwrap();
    let pod_netns = netns_name(status.netns.as_deref().unwrap()).unwrap();
    // The pod's server: the host's busybox httpd in the namespace of the pod's pause process,
    // with the same CGI as the podman container's.
    let www = sb.write_scratch("peer", "").unwrap().with_file_name("www");
    fs::create_dir_all(www.join("cgi-bin")).unwrap();
    let cgi = www.join("cgi-bin/peer");
    fs::write(&cgi, "#!/bin/sh\necho Content-Type: text/plain\necho\necho \"peer=$REMOTE_ADDR\"\n").unwrap();
    fs::set_permissions(&cgi, fs::Permissions::from_mode(0o755)).unwrap();
    let mut httpd = Command::new("nsenter");
    httpd.arg(format!("--net=/proc/{}/ns/net", status.pid.unwrap()));
    httpd.args(["/bin/busybox", "httpd", "-f", "-p", "80", "-h"]).arg(&www);
    sb.spawn("the pod's httpd", httpd).unwrap();

    let cross_traffic = |sb: &Sandbox, when: &str| {
        // podman container -> pod: ICMP, and TCP with its own address seen.
        let pinged = podman.exec("web", &format!("ping -c 1 -W 2 {pod_ip}")).unwrap();
        assert!(pinged.contains("1 packets received"), "{when}: {pinged}");
        let get = format!("printf 'GET /cgi-bin/peer HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {pod_ip} 80");
        let answer = podman.exec("web", &get).unwrap();
        assert_eq!(peer_in(&answer), Some(web.ip.to_string()), "{when}: {answer}");
        // pod -> podman container, the same.
        assert_eq!(peer_seen(&pod_netns, SocketAddrV4::new(web.ip, 80)), pod_ip.to_string(), "{when}");
        // Both published ports, from the outside, the client's address kept.
        for port in [8080, 8081] {
            let published = SocketAddrV4::new(UPLINK_HOST_IP, port);
            assert_eq!(peer_seen(sb.outside_netns(), published), OUTSIDE_IP.to_string(), "{when}: port {port}");
        }
    };
    cross_traffic(&sb, "both engines up");
    let mut ips = attachments(&sb).into_iter().map(|(_, ip)| ip).collect::<Vec<_>>();
    ips.sort();
    let mut expected = vec![web.ip.to_string(), pod_ip.to_string()];
    expected.sort();
    assert_eq!(ips, expected);

    sb.stop_agent(Signal::SIGKILL);
    cross_traffic(&sb, "agent killed");
    sb.ensure_agent();
    cross_traffic(&sb, "agent restarted");

    // Each engine removes its own; nothing of either is left.
    podman.remove("web").unwrap();
    containerd.remove_pod(&pod).unwrap();
    assert!(attachments(&sb).is_empty(), "left attached: {:?}", attachments(&sb));
    host_has_no_veths(&sb);
    assert!(!web.netns.exists() && !Path::new("/run/netns").join(&pod_netns).exists());
    containerd.teardown().unwrap();
    podman.teardown().unwrap();
    sb.teardown().unwrap();
}
