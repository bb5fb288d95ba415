//! `bpfnet-cni`, run as a container runtime runs it (CNI_* variables, the network configuration
//! on stdin) against a sandbox agent, on namespaces the test made itself, as an engine would:
//! results per version, a published port from outside with the client's address kept, CHECK,
//! DEL (repeated, without a namespace), GC, STATUS, VERSION, the spec's error codes, and
//! attachments across an agent killed with -9 and a namespace the engine removed.
use std::{
    io::Write,
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
    process::{Command, Stdio},
    time::Duration,
};

use bpfnet_tests::{
    cni_bin, links_in, namespaces_with_prefix, ping, process::wait_bounded, run, tcp_exchange, Sandbox, OUTSIDE_IP,
    UPLINK_HOST_IP,
};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

/// Bound on one plugin run.
const PLUGIN_LIMIT: Duration = Duration::from_secs(30);

/// What the plugin printed and whether it exited 0.
struct Answer {
    ok: bool,
    stdout: Value,
    /// Its log.
    stderr: String,
}

/// One plugin invocation: `command` with the container id, namespace path and interface name
/// (None leaves a variable unset), `conf` on stdin.
fn plugin(command: &str, id: &str, netns: Option<&str>, ifname: &str, conf: &Value) -> Answer {
    let mut cmd = Command::new(cni_bin());
    cmd.env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", cni_bin().parent().unwrap())
        .env("BPFNET_LOG", "info")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(netns) = netns {
        cmd.env("CNI_NETNS", netns);
    }
    let mut child = cmd.spawn().expect("running bpfnet-cni");
    child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
    let status = wait_bounded(&mut child, PLUGIN_LIMIT).expect("bpfnet-cni finished");
    let mut text = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut text).unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    let stdout =
        if text.trim().is_empty() { Value::Null } else { serde_json::from_str(&text).expect("JSON on stdout") };
    if !status.success() {
        // The spec's error object, always.
        assert!(stdout["code"].is_u64() && stdout["msg"].is_string() && stdout["cniVersion"].is_string(), "{stdout}");
    }
    Answer { ok: status.success(), stdout, stderr }
}

#[track_caller]
fn succeeds(answer: Answer) -> Value {
    assert!(answer.ok, "bpfnet-cni failed: {}\n{}", answer.stdout, answer.stderr);
    answer.stdout
}

#[track_caller]
fn fails_with(answer: Answer, code: u64) -> String {
    assert!(!answer.ok, "bpfnet-cni should have failed: {}\n{}", answer.stdout, answer.stderr);
    assert_eq!(answer.stdout["code"], code, "{}\n{}", answer.stdout, answer.stderr);
    answer.stdout["msg"].as_str().unwrap().to_owned()
}

fn conf(sb: &Sandbox, version: &str, network: &str, extra: Value) -> Value {
    let mut conf = json!({
        "cniVersion": version,
        "name": "podman-style-name",
        "type": "bpfnet-cni",
        "network": network,
        "socket": sb.socket(),
        "capabilities": {"portMappings": true},
    });
    conf.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    conf
}

fn netns_path(netns: &str) -> String {
    format!("/run/netns/{netns}")
}

fn attachment_names(sb: &Sandbox) -> Vec<String> {
    let all = sb.json(&["container", "ls", "--json"]);
    all.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap().to_owned()).collect()
}

/// A configuration with `subnet6` makes a dual-stack network: ADD's result holds both
/// addresses on the interface inside and a default route per family (before 1.0.0 each address
/// names its version), the engine's namespace has both, CHECK passes with that result, and a
/// bad IPv6 subnet is the configuration's error (7), leaving nothing.
#[test]
fn a_dual_stack_network_gives_both_addresses_and_routes() {
    let mut sb = Sandbox::with_uplink();
    let net = sb.name("net");
    let engine = sb.add_engine_netns("eng").unwrap();
    let path = netns_path(&engine);
    sb.ensure_agent();
    let bad = conf(&sb, "0.4.0", &net, json!({"subnet": "10.242.0.0/24", "subnet6": "fd00:242::/96"}));
    let err = fails_with(plugin("ADD", "c0ffee09", Some(&path), "eth0", &bad), 7);
    assert!(err.contains("smaller than a /64"), "{err}");
    assert!(sb.json(&["network", "ls", "--json"]).as_array().unwrap().is_empty(), "nothing was made");

    let add = conf(&sb, "0.4.0", &net, json!({"subnet": "10.242.0.0/24", "subnet6": "fd00:242::/64"}));
    let result = succeeds(plugin("ADD", "c0ffee09", Some(&path), "eth0", &add));
    assert_eq!(
        result["ips"],
        json!([
            {"version": "4", "address": "10.242.0.2/24", "gateway": "10.242.0.1", "interface": 1},
            {"version": "6", "address": "fd00:242::2/64", "gateway": "fd00:242::1", "interface": 1}
        ])
    );
    assert_eq!(
        result["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "10.242.0.1"}, {"dst": "::/0", "gw": "fd00:242::1"}])
    );
    let inside = run("ip", &["-n", &engine, "-6", "addr", "show", "dev", "eth0"]).unwrap();
    let global = inside.lines().find(|l| l.contains("fd00:242::2/64")).unwrap_or_else(|| panic!("{inside}"));
    assert!(!global.contains("tentative"), "usable at once: {inside}");
    let routes = run("ip", &["-n", &engine, "-6", "route", "show", "default"]).unwrap();
    assert!(routes.contains("via fd00:242::1 dev eth0"), "{routes}");
    let check = conf(&sb, "0.4.0", &net, json!({"prevResult": result}));
    succeeds(plugin("CHECK", "c0ffee09", Some(&path), "eth0", &check));
    succeeds(plugin("DEL", "c0ffee09", Some(&path), "eth0", &conf(&sb, "0.4.0", &net, json!({}))));
    assert_eq!(links_in(&engine), ["lo"]);
    sb.teardown().unwrap();
}

#[test]
fn add_publishes_check_and_del_removes_only_what_bpfnet_made() {
    let mut sb = Sandbox::with_uplink();
    let net = sb.name("net");
    sb.ok(&["network", "create", &net, "--subnet", "10.241.0.0/24"]);
    let engine = sb.add_engine_netns("eng").unwrap();
    let path = netns_path(&engine);
    let ports = json!({"runtimeConfig": {"portMappings": [
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""}
    ]}});
    let add = conf(&sb, "1.1.0", &net, ports.clone());

    let result = succeeds(plugin("ADD", "c0ffee01", Some(&path), "eth0", &add));
    assert_eq!(result["cniVersion"], "1.1.0");
    let interfaces = result["interfaces"].as_array().unwrap();
    assert_eq!(interfaces.len(), 2, "{result}");
    assert!(interfaces[0]["name"].as_str().unwrap().starts_with("bn") && interfaces[0].get("sandbox").is_none());
    assert_eq!(interfaces[1]["name"], "eth0");
    assert_eq!(interfaces[1]["sandbox"], path.as_str());
    let ip = &result["ips"][0];
    assert_eq!((ip["address"].as_str(), ip["gateway"].as_str()), (Some("10.241.0.2/24"), Some("10.241.0.1")));
    assert_eq!(ip["interface"], 1);
    assert!(ip.get("version").is_none(), "1.x results carry no IP version: {result}");
    assert_eq!(result["routes"], json!([{"dst": "0.0.0.0/0", "gw": "10.241.0.1"}]));
    assert_eq!(interfaces[1]["mac"], "02:42:0a:f1:00:02");

    // In the engine's namespace: eth0 with the address, and the container's traffic flows.
    assert!(links_in(&engine).contains(&"eth0".to_owned()));
    assert!(ping(&engine, Ipv4Addr::new(10, 241, 0, 1)), "the gateway answers");
    let container_ip = Ipv4Addr::new(10, 241, 0, 2);
    let peers = sb.tcp_echo_server(&engine, SocketAddrV4::new(container_ip, 80), 1);
    let published = SocketAddrV4::new(UPLINK_HOST_IP, 8080);
    assert_eq!(tcp_exchange(sb.outside_netns(), published, b"via cni").unwrap(), b"via cni");
    assert_eq!(peers.get()[0].ip(), IpAddr::V4(OUTSIDE_IP), "the container sees the real client");

    // Listed by container ls and status, as a container is.
    assert_eq!(attachment_names(&sb), ["c0ffee01/eth0"]);
    let status = sb.json(&["status", "--json"]);
    assert_eq!(status["containers"][0]["netns"], path.as_str());
    assert_eq!(status["containers"][0]["ports"], json!(["0.0.0.0:8080->80/tcp"]));

    // CHECK with the result as prevResult.
    let check = conf(&sb, "1.1.0", &net, json!({"prevResult": result}));
    succeeds(plugin("CHECK", "c0ffee01", Some(&path), "eth0", &check));

    // ADD again for the same attachment, or with an interface name the namespace has.
    let again = fails_with(plugin("ADD", "c0ffee01", Some(&path), "eth0", &add), 100);
    assert!(again.contains("already has eth0 attached"), "{again}");
    let taken = fails_with(plugin("ADD", "c0ffee02", Some(&path), "eth0", &conf(&sb, "1.1.0", &net, json!({}))), 100);
    assert!(taken.contains("already exists in the namespace"), "{taken}");
    let port_taken = fails_with(plugin("ADD", "c0ffee02", Some(&path), "eth1", &add), 100);
    assert!(port_taken.contains("8080"), "{port_taken}");
    assert_eq!(attachment_names(&sb), ["c0ffee01/eth0"], "refused ADDs leave nothing");

    // DEL: what bpfnet made goes, the namespace stays; a DEL again, and one without a
    // namespace (containerd calls DEL twice), succeed.
    let del = conf(&sb, "1.1.0", &net, json!({}));
    assert_eq!(succeeds(plugin("DEL", "c0ffee01", Some(&path), "eth0", &del)), Value::Null);
    assert_eq!(links_in(&engine), ["lo"]);
    assert!(namespaces_with_prefix(&engine).contains(&engine), "bpfnet never deletes the engine's namespace");
    succeeds(plugin("DEL", "c0ffee01", Some(&path), "eth0", &del));
    succeeds(plugin("DEL", "c0ffee01", Some(""), "eth0", &del));
    succeeds(plugin("DEL", "c0ffee01", None, "eth0", &del));
    assert!(attachment_names(&sb).is_empty());
    assert!(tcp_exchange(sb.outside_netns(), published, b"gone").is_err(), "the port is unpublished");
    // CHECK of what is not attached fails.
    fails_with(plugin("CHECK", "c0ffee01", Some(&path), "eth0", &del), 100);
    sb.teardown().unwrap();
}

#[test]
fn results_for_0_4_0_missing_networks_and_version() {
    let mut sb = Sandbox::with_uplink();
    sb.ensure_agent();
    let engine_net = sb.name("made");
    let engine = sb.add_engine_netns("eng").unwrap();
    let path = netns_path(&engine);

    // A network that does not exist: code 7, naming it; with a subnet it is made.
    let missing = sb.name("missing");
    let msg = fails_with(plugin("ADD", "c1", Some(&path), "eth0", &conf(&sb, "0.4.0", &missing, json!({}))), 7);
    assert!(msg.contains(&missing) && msg.contains("subnet"), "{msg}");
    assert!(links_in(&engine) == ["lo"], "a refused ADD leaves nothing");
    let with_subnet = conf(&sb, "0.4.0", &engine_net, json!({"subnet": "10.242.0.0/24"}));
    let result = succeeds(plugin("ADD", "c1", Some(&path), "eth0", &with_subnet));
    assert_eq!(result["cniVersion"], "0.4.0");
    assert_eq!(result["ips"][0]["version"], "4", "before 1.0.0 each IP names its version");
    assert_eq!(result["ips"][0]["address"], "10.242.0.2/24");
    let networks = sb.json(&["network", "ls", "--json"]);
    assert_eq!(networks[0]["name"], engine_net.as_str());

    // A second interface of the same container on the same network, from a chain: the
    // earlier result is amended.
    let chained = conf(&sb, "0.4.0", &engine_net, json!({"prevResult": result}));
    let amended = succeeds(plugin("ADD", "c1", Some(&path), "eth1", &chained));
    assert_eq!(amended["interfaces"].as_array().unwrap().len(), 4);
    assert_eq!(amended["ips"][1]["interface"], 3);
    assert_eq!(attachment_names(&sb), ["c1/eth0", "c1/eth1"]);

    let version = succeeds(plugin("VERSION", "", None, "", &json!({"cniVersion": "1.0.0"})));
    assert_eq!(version["supportedVersions"], json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]));
    let old = fails_with(plugin("ADD", "c2", Some(&path), "eth2", &conf(&sb, "0.2.0", &engine_net, json!({}))), 1);
    assert!(old.contains("0.2.0"), "{old}");
    fails_with(plugin_raw("ADD", &path, "{ not json"), 6);
}

/// The plugin with stdin that is not a configuration.
fn plugin_raw(command: &str, netns: &str, stdin: &str) -> Answer {
    let mut child = Command::new(cni_bin())
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", "raw")
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth9")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let status = wait_bounded(&mut child, PLUGIN_LIMIT).unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut text).unwrap();
    Answer { ok: status.success(), stdout: serde_json::from_str(&text).unwrap(), stderr: String::new() }
}

#[test]
fn gc_keeps_the_valid_and_status_says_when_the_agent_is_away() {
    let mut sb = Sandbox::with_uplink();
    let net = sb.name("net");
    sb.ok(&["network", "create", &net, "--subnet", "10.243.0.0/24"]);
    let (a, b) = (sb.add_engine_netns("a").unwrap(), sb.add_engine_netns("b").unwrap());
    let add = conf(&sb, "1.1.0", &net, json!({}));
    succeeds(plugin("ADD", "keep", Some(&netns_path(&a)), "eth0", &add));
    succeeds(plugin("ADD", "stale", Some(&netns_path(&b)), "eth0", &add));
    succeeds(plugin("STATUS", "", None, "", &add));

    let gc =
        conf(&sb, "1.1.0", &net, json!({"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}));
    succeeds(plugin("GC", "", None, "", &gc));
    assert_eq!(attachment_names(&sb), ["keep/eth0"]);
    assert_eq!(links_in(&b), ["lo"]);
    assert!(links_in(&a).contains(&"eth0".to_owned()));

    sb.stop_agent(Signal::SIGTERM);
    let msg = fails_with(plugin("STATUS", "", None, "", &add), 50);
    assert!(msg.contains("no bpfnet agent"), "{msg}");
    fails_with(plugin("ADD", "later", Some(&netns_path(&b)), "eth0", &add), 11);
}

#[test]
fn attachments_outlive_a_killed_agent_and_vanished_namespaces_are_cleaned_up() {
    let mut sb = Sandbox::with_uplink();
    let net = sb.name("net");
    sb.ok(&["network", "create", &net, "--subnet", "10.244.0.0/24"]);
    let (kept, removed) = (sb.add_engine_netns("kept").unwrap(), sb.add_engine_netns("gone").unwrap());
    let add = conf(&sb, "1.0.0", &net, json!({}));
    succeeds(plugin("ADD", "kept", Some(&netns_path(&kept)), "eth0", &add));
    let gone = succeeds(plugin("ADD", "gone", Some(&netns_path(&removed)), "eth0", &add));
    let gone_veth = gone["interfaces"][0]["name"].as_str().unwrap().to_owned();

    // Killed, then the engine removes one namespace without a DEL.
    sb.stop_agent(Signal::SIGKILL);
    Command::new("ip").args(["netns", "delete", &removed]).status().unwrap();
    sb.ensure_agent();
    assert_eq!(attachment_names(&sb), ["kept/eth0"], "the vanished namespace's attachment is removed");
    assert!(!links_in(sb.host_netns()).contains(&gone_veth));
    assert!(ping(&kept, Ipv4Addr::new(10, 244, 0, 1)), "the kept attachment still works");
    succeeds(plugin("CHECK", "kept", Some(&netns_path(&kept)), "eth0", &add));

    // `down` removes the attachment, not the engine's namespace.
    sb.ok(&["down"]);
    assert_eq!(links_in(&kept), ["lo"]);
    assert!(namespaces_with_prefix(&kept).contains(&kept));
    sb.teardown().unwrap();
}

#[test]
fn the_cli_attaches_by_proc_path_and_refuses_the_host_namespace() {
    let mut sb = Sandbox::with_uplink();
    let net = sb.name("net");
    sb.ok(&["network", "create", &net, "--subnet", "10.245.0.0/24"]);
    let engine = sb.add_engine_netns("eng").unwrap();
    // A process that holds the namespace, as a container's init would: attached by its
    // /proc/PID/ns/net.
    sb.spawn("namespace holder", bpfnet_tests::netns_exec(&engine, "sleep", ["60"])).unwrap();
    let pid = wait_for_pid_in(&engine);
    let proc_path = format!("/proc/{pid}/ns/net");
    let out = sb.ok(&["container", "attach", &proc_path, "--network", &net, "--id", "cli1", "--ifname", "net0"]);
    assert_eq!(out.trim(), "cli1/net0 10.245.0.2/24");
    assert!(links_in(&engine).contains(&"net0".to_owned()));
    assert!(ping(&engine, Ipv4Addr::new(10, 245, 0, 1)));

    let host = format!("/run/netns/{}", sb.host_netns());
    let refused = sb.fails(&["container", "attach", &host, "--network", &net, "--id", "cli2"]);
    assert!(refused.contains("host's own network namespace"), "{refused}");
    let refused = sb.fails(&["container", "attach", "/proc/self/ns/mnt", "--network", &net, "--id", "cli2"]);
    assert!(refused.contains("not a network namespace"), "{refused}");
    let refused = sb.fails(&["container", "attach", "/nonexistent/ns", "--network", &net, "--id", "cli2"]);
    assert!(refused.contains("no network namespace at /nonexistent/ns"), "{refused}");

    assert_eq!(sb.ok(&["container", "detach", "--id", "cli1", "--ifname", "net0"]).trim(), "cli1/net0");
    assert_eq!(
        sb.ok(&["container", "detach", "--id", "cli1", "--ifname", "net0"]).trim(),
        "cli1/net0 was not attached"
    );
    assert_eq!(links_in(&engine), ["lo"]);
    sb.teardown().unwrap();
}

/// The PID of a process in `netns` (`ip netns pids`), waited for a little while.
fn wait_for_pid_in(netns: &str) -> u32 {
    for _ in 0..100 {
        let out = Command::new("ip").args(["netns", "pids", netns]).output().unwrap();
        if let Some(pid) = String::from_utf8_lossy(&out.stdout).split_whitespace().next() {
            return pid.parse().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no process appeared in {netns}");
}

/// Runtimes start containers side by side: parallel ADDs (the first of which makes the
/// network) each get their own address, and parallel DELs leave nothing.
#[test]
fn parallel_adds_and_dels_for_different_containers() {
    const CONTAINERS: usize = 6;
    let mut sb = Sandbox::with_uplink();
    sb.ensure_agent();
    let net = sb.name("par");
    let namespaces: Vec<String> = (0..CONTAINERS).map(|i| sb.add_engine_netns(&format!("p{i}")).unwrap()).collect();
    let add = conf(&sb, "1.1.0", &net, json!({"subnet": "10.246.0.0/24"}));
    let run_all = |command: &'static str| {
        let threads: Vec<_> = namespaces
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                let (path, conf) = (netns_path(ns), add.clone());
                std::thread::spawn(move || succeeds(plugin(command, &format!("par{i}"), Some(&path), "eth0", &conf)))
            })
            .collect();
        threads.into_iter().map(|t| t.join().expect("a plugin run panicked")).collect::<Vec<Value>>()
    };
    let results = run_all("ADD");
    let mut addresses: Vec<&str> = results.iter().map(|r| r["ips"][0]["address"].as_str().unwrap()).collect();
    addresses.sort();
    addresses.dedup();
    assert_eq!(addresses.len(), CONTAINERS, "every container got its own address: {addresses:?}");
    assert_eq!(attachment_names(&sb).len(), CONTAINERS);
    for ns in &namespaces {
        assert!(ping(ns, Ipv4Addr::new(10, 246, 0, 1)), "{ns} reaches its gateway");
    }
    run_all("DEL");
    assert!(attachment_names(&sb).is_empty());
    for ns in &namespaces {
        assert_eq!(links_in(ns), ["lo"]);
    }
    sb.teardown().unwrap();
}
