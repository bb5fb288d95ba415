//! The agent as a service: the datapath never depends on it being alive, a restarted agent
//! adopts what exists, an agent killed mid-operation leaves nothing behind once restarted, and
//! nothing a client sends can take it down.
use std::{
    io::{Read, Write},
    net::{SocketAddrV4, TcpStream, UdpSocket},
    os::unix::net::UnixStream,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bpfnet_tests::{
    in_netns, links_in, namespaces_with_prefix, pinned_map_len, tcp_exchange, udp_exchange, Sandbox, IO_TIMEOUT,
    OUTSIDE_IP, UPLINK_HOST_IP,
};
use nix::sys::signal::Signal;

fn sandbox_with_network() -> (Sandbox, String) {
    let sb = Sandbox::with_uplink();
    let net = sb.name("net");
    sb.ok(&["network", "create", &net, "--subnet", "10.245.0.0/24"]);
    (sb, net)
}

#[test]
fn flows_keep_going_while_the_agent_is_killed_and_restarted() {
    let (mut sb, net) = sandbox_with_network();
    let (server, client) = (sb.name("server"), sb.name("client"));
    sb.ok(&["container", "create", &server, "--network", &net, "--publish", "8080:80"]);
    sb.ok(&["container", "create", &client, "--network", &net]);
    let server_ip = sb.container_ip(&server);
    sb.tcp_echo_server(&server, SocketAddrV4::new(server_ip, 80), 1);
    let udp_server = SocketAddrV4::new(OUTSIDE_IP, 5353);
    let out = sb.outside_netns().to_owned();
    sb.udp_echo_server(&out, udp_server, 100_000);

    // A TCP stream from outside through DNAT, and a UDP flow from a container through SNAT,
    // each exchanging a message every 10 ms and counting any failure.
    let stop = Arc::new(AtomicBool::new(false));
    let (tcp_ok, tcp_failed, udp_ok, udp_failed) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut stream = in_netns(sb.outside_netns(), || {
        let s = TcpStream::connect_timeout(&SocketAddrV4::new(UPLINK_HOST_IP, 8080).into(), IO_TIMEOUT)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        Ok(s)
    })
    .unwrap();
    let udp = in_netns(&client, move || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        s.connect(udp_server)?;
        Ok(s)
    })
    .unwrap();
    let workers = [
        {
            let (stop, ok, failed) = (stop.clone(), tcp_ok.clone(), tcp_failed.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 8];
                while !stop.load(Ordering::Relaxed) {
                    let good = stream.write_all(b"tick").is_ok()
                        && stream.read_exact(&mut buf[..4]).is_ok()
                        && &buf[..4] == b"tick";
                    (if good { &ok } else { &failed }).fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        },
        {
            let (stop, ok, failed) = (stop.clone(), udp_ok.clone(), udp_failed.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 8];
                while !stop.load(Ordering::Relaxed) {
                    let good = udp.send(b"tock").is_ok() && udp.recv(&mut buf).is_ok_and(|n| &buf[..n] == b"tock");
                    (if good { &ok } else { &failed }).fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        },
    ];
    std::thread::sleep(Duration::from_millis(300));
    let status_before = sb.json(&["status", "--json"]);
    let flows_before = sb.json(&["conntrack", "ls", "--json"]);

    sb.stop_agent(Signal::SIGKILL);
    let dead_since = Instant::now();
    std::thread::sleep(Duration::from_millis(700));
    let during = (tcp_ok.load(Ordering::Relaxed), udp_ok.load(Ordering::Relaxed));
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        tcp_ok.load(Ordering::Relaxed) > during.0 && udp_ok.load(Ordering::Relaxed) > during.1,
        "traffic flows with no agent"
    );
    assert!(sb.client(&["status"]).stderr.starts_with(b"bpfnet: error: no bpfnet agent is running"));
    sb.ensure_agent();
    eprintln!("agent was down for {:?}", dead_since.elapsed());
    std::thread::sleep(Duration::from_millis(500));
    let ids_adopted = sb.json(&["status", "--json"])["datapath"]["program_ids"].clone();

    // A new agent that replaces the programs (as a new version does): links updated in place.
    sb.stop_agent(Signal::SIGTERM);
    sb.set_agent_env("BPFNET_RELOAD_PROGRAMS", "1");
    sb.ensure_agent();
    assert!(sb.agent_log_text().contains("replaced the running programs"), "{}", sb.agent_log_text());
    std::thread::sleep(Duration::from_millis(500));
    let status_replaced = sb.json(&["status", "--json"]);
    assert_ne!(status_replaced["datapath"]["program_ids"], ids_adopted, "new programs");
    assert!(
        status_replaced["datapath"]["attachments"].as_array().unwrap().iter().all(|a| a["attached"] == true),
        "every link carries the new program: {}",
        status_replaced["datapath"]["attachments"]
    );
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(tcp_failed.load(Ordering::Relaxed), 0, "no TCP exchange failed");
    assert_eq!(udp_failed.load(Ordering::Relaxed), 0, "no UDP exchange failed");
    assert!(tcp_ok.load(Ordering::Relaxed) > 50 && udp_ok.load(Ordering::Relaxed) > 50);

    // The same state, the same programs (adopted, not reloaded), counters not reset, flows kept.
    let status_after = sb.json(&["status", "--json"]);
    assert_eq!(status_after["networks"], status_before["networks"]);
    let without_traffic = |s: &serde_json::Value| {
        let mut containers = s["containers"].clone();
        containers.as_array_mut().unwrap().iter_mut().for_each(|c| drop(c.as_object_mut().unwrap().remove("traffic")));
        containers
    };
    assert_eq!(without_traffic(&status_after), without_traffic(&status_before));
    for (after, before) in
        status_after["containers"].as_array().unwrap().iter().zip(status_before["containers"].as_array().unwrap())
    {
        let sent = |c: &serde_json::Value| c["traffic"]["sent_packets"].as_u64().unwrap();
        assert!(sent(after) > sent(before), "per-container counters kept counting: {after}");
    }
    assert_eq!(ids_adopted, status_before["datapath"]["program_ids"], "adopted, not reloaded");
    let translated = |s: &serde_json::Value| s["datapath"]["counters"]["translated_in"].as_u64().unwrap();
    assert!(translated(&status_after) > translated(&status_before), "counters kept counting");
    let flows_after = sb.json(&["conntrack", "ls", "--json"]);
    let key = |f: &serde_json::Value| {
        (f["kind"].clone(), f["source"].clone(), f["destination"].clone(), f["translated_source"].clone())
    };
    for flow in flows_before.as_array().unwrap().iter().filter(|f| f["protocol"] != "icmp") {
        assert!(flows_after.as_array().unwrap().iter().any(|g| key(g) == key(flow)), "flow kept: {flow}");
    }
}

#[test]
fn an_agent_killed_while_creating_a_container_leaves_nothing_once_restarted() {
    let (mut sb, net) = sandbox_with_network();
    let victim = sb.name("victim");
    let veths_before = links_in(sb.host_netns()).len();
    // Crash right after the veth pair exists (namespace made, veth made, nothing attached yet).
    sb.set_agent_env("BPFNET_FAILPOINT", "container-create:veth");
    sb.stop_agent(Signal::SIGTERM);
    let out = sb.bpfnet(&["container", "create", &victim, "--network", &net]);
    assert!(!out.status.success(), "the agent died mid-request");
    assert!(namespaces_with_prefix(&victim).len() == 1, "the crash left the namespace behind");
    sb.stop_agent(Signal::SIGKILL);
    sb.set_agent_env("BPFNET_FAILPOINT", "");
    sb.ensure_agent();
    assert!(sb.agent_log_text().contains("rolled_back"), "{}", sb.agent_log_text());
    assert!(namespaces_with_prefix(&victim).is_empty(), "namespace rolled back");
    assert_eq!(links_in(sb.host_netns()).len(), veths_before, "veths rolled back");
    assert_eq!(pinned_map_len(sb.bpffs_dir(), "ENDPOINTS"), 0);
    assert_eq!(
        std::fs::read_dir(sb.bpffs_dir().join("links"))
            .unwrap()
            .filter(|e| !e.as_ref().unwrap().file_name().to_string_lossy().starts_with("uplink"))
            .count(),
        0
    );
    assert_eq!(sb.json(&["container", "ls", "--json"]), serde_json::json!([]));
    // The operation can simply be retried.
    sb.ok(&["container", "create", &victim, "--network", &net]);
    assert_eq!(pinned_map_len(sb.bpffs_dir(), "ENDPOINTS"), 1);
}

#[test]
fn published_ports_survive_restarts_and_a_publish_cut_off_by_a_crash_converges() {
    let (mut sb, net) = sandbox_with_network();
    let c = sb.name("many");
    // 10,000 ports published already, as in the benchmark's largest N.
    sb.ok(&["container", "create", &c, "--network", &net, "--publish", "20000-29999:20000-29999/udp"]);
    let ip = sb.container_ip(&c);
    sb.udp_echo_server(&c, SocketAddrV4::new(ip, 7), 10);
    let out = sb.outside_netns().to_owned();
    let reaches = |port: u16| udp_exchange(&out, SocketAddrV4::new(UPLINK_HOST_IP, port), b"ping").is_ok();
    let ports_of = |sb: &Sandbox| -> Vec<String> {
        let all = sb.json(&["container", "ls", "--json"]);
        let ports = &all.as_array().unwrap().iter().find(|x| x["name"] == c.as_str()).unwrap()["ports"];
        ports.as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_owned()).collect()
    };
    let udp = |port: u16, to: u16| format!("0.0.0.0:{port}->{to}/udp");

    // One more and one fewer, then a SIGKILL: both kept by the restarted agent.
    let answer = sb.ok(&["publish", &c, "30000:7/udp"]);
    assert!(answer.contains("1 port(s) published, 10001 published in all"), "{answer}");
    sb.ok(&["unpublish", &c, "20000:20000/udp"]);
    sb.stop_agent(Signal::SIGKILL);
    sb.ensure_agent();
    let ports = ports_of(&sb);
    assert_eq!(ports.len(), 10_000);
    assert!(ports.contains(&udp(30000, 7)) && !ports.contains(&udp(20000, 20000)));
    assert_eq!(pinned_map_len(sb.bpffs_dir(), "SERVICES"), 10_000);
    assert!(reaches(30000));

    // Killed after the map update, before the state records it: rolled back when the agent
    // restarts (the client got no answer), and the publish can be retried.
    sb.stop_agent(Signal::SIGTERM);
    sb.set_agent_env("BPFNET_FAILPOINT", "publish:mapped");
    assert!(!sb.bpfnet(&["publish", &c, "30001:7/udp"]).status.success(), "the agent died mid-request");
    assert_eq!(pinned_map_len(sb.bpffs_dir(), "SERVICES"), 10_001, "the crash left the map entry behind");
    sb.stop_agent(Signal::SIGKILL);
    sb.set_agent_env("BPFNET_FAILPOINT", "");
    sb.ensure_agent();
    assert_eq!(pinned_map_len(sb.bpffs_dir(), "SERVICES"), 10_000, "rolled back");
    assert!(!ports_of(&sb).contains(&udp(30001, 7)));
    sb.ok(&["publish", &c, "30001:7/udp"]);
    assert!(reaches(30001));

    // Killed once the state recorded it, before answering: kept.
    sb.stop_agent(Signal::SIGTERM);
    sb.set_agent_env("BPFNET_FAILPOINT", "publish:journaled");
    assert!(!sb.bpfnet(&["publish", &c, "30002:7/udp"]).status.success(), "the agent died mid-request");
    sb.stop_agent(Signal::SIGKILL);
    sb.set_agent_env("BPFNET_FAILPOINT", "");
    sb.ensure_agent();
    assert!(ports_of(&sb).contains(&udp(30002, 7)));
    assert_eq!(pinned_map_len(sb.bpffs_dir(), "SERVICES"), 10_002);
    assert!(reaches(30002));
    let err = sb.fails(&["publish", &c, "30002:7/udp"]);
    assert!(err.contains(&format!("already published by container \"{c}\"")), "{err}");

    // A clean stop and start changes nothing either.
    let before = ports_of(&sb);
    sb.stop_agent(Signal::SIGTERM);
    assert_eq!(ports_of(&sb), before);
    assert_eq!(pinned_map_len(sb.bpffs_dir(), "SERVICES"), 10_002);
}

#[test]
fn a_corrupt_or_unknown_state_file_stops_the_agent_and_not_the_datapath() {
    let (mut sb, net) = sandbox_with_network();
    let (c1, c2) = (sb.name("c1"), sb.name("c2"));
    sb.ok(&["container", "create", &c1, "--network", &net]);
    sb.ok(&["container", "create", &c2, "--network", &net]);
    let c2_ip = sb.container_ip(&c2);
    sb.tcp_echo_server(&c2, SocketAddrV4::new(c2_ip, 7000), 3);
    sb.stop_agent(Signal::SIGTERM);
    let state = sb.state_dir().join("state.json");
    let saved = std::fs::read_to_string(&state).unwrap();
    for (content, needle) in [("{ this is not json", "not valid bpfnet state"), (r#"{"version": 99}"#, "version 99")] {
        std::fs::write(&state, content).unwrap();
        let out = sb.agent_command().output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(needle), "{err}");
        // The datapath is untouched: containers still talk.
        assert_eq!(tcp_exchange(&c1, SocketAddrV4::new(c2_ip, 7000), b"still here").unwrap(), b"still here");
    }
    std::fs::write(&state, saved).unwrap();
    sb.ensure_agent();
    assert_eq!(sb.json(&["container", "ls", "--json"]).as_array().unwrap().len(), 2);
}

/// A record of the state journal whose checksum fails (a flipped byte on disk) stops the agent
/// at start, naming the file and the record, and leaves the datapath forwarding; a torn last
/// record (a power loss in the middle of an append) is dropped and the rest replayed.
#[test]
fn a_corrupt_journal_record_stops_the_agent_and_a_torn_last_one_is_dropped() {
    let (mut sb, net) = sandbox_with_network();
    let (c1, c2) = (sb.name("c1"), sb.name("c2"));
    sb.ok(&["container", "create", &c1, "--network", &net, "-p", "8080:80"]);
    sb.ok(&["container", "create", &c2, "--network", &net]);
    let c2_ip = sb.container_ip(&c2);
    sb.tcp_echo_server(&c2, SocketAddrV4::new(c2_ip, 7000), 3);
    sb.stop_agent(Signal::SIGKILL);
    let journal = std::fs::read_dir(sb.state_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("journal."))
        .expect("a journal");
    let saved = std::fs::read_to_string(&journal).unwrap();
    let records = saved.lines().count();
    assert!(records >= 3, "{saved}");
    // A byte of the first record's JSON flipped: "8080" read as "8081" is still a valid change.
    let first = saved.lines().position(|l| l.contains("8080")).expect("the publish is journaled");
    assert!(first + 1 < records, "not the last record");
    std::fs::write(&journal, saved.replacen("8080", "8081", 1)).unwrap();
    let out = sb.agent_command().output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let named = format!("record {} of {records} lines of the state journal {}", first + 1, journal.display());
    assert!(!out.status.success() && err.contains(&named) && err.contains("computed"), "{err}");
    assert_eq!(tcp_exchange(&c1, SocketAddrV4::new(c2_ip, 7000), b"forwarding").unwrap(), b"forwarding");

    // The last record written only in part: dropped, the agent starts with the rest.
    let last = saved.lines().last().unwrap();
    let torn = format!("{}{}\n", &saved[..saved.len() - last.len() - 1], &last[..last.len() / 2]);
    std::fs::write(&journal, torn).unwrap();
    sb.ensure_agent();
    assert!(sb.agent_log_text().contains("dropping the last record of"), "{}", sb.agent_log_text());
    // The torn record was c2's last step (done, not pending): c2 is rolled back or completed
    // by the reconcile, and c1 is as it was.
    let listed = sb.json(&["container", "ls", "--json"]);
    let c1_listed = listed.as_array().unwrap().iter().find(|c| c["name"] == c1.as_str()).expect("c1 kept");
    assert_eq!(c1_listed["ports"].as_array().unwrap().len(), 1);
}

/// Sends raw bytes on the API socket and returns the HTTP status line and body.
fn raw_request(sb: &Sandbox, request: &[u8]) -> (String, String) {
    let mut s = UnixStream::connect(sb.socket()).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    // The agent may answer and close before an oversized body is written in full.
    let _ = s.write_all(request);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.lines().next().unwrap_or_default().to_owned();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

fn post(path: &str, body: &str) -> Vec<u8> {
    format!("POST {path} HTTP/1.1\r\nHost: bpfnet\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).into_bytes()
}

/// The saved state: the snapshot and the journal, every file of the state directory but its
/// lock.
fn saved_state(sb: &Sandbox) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(sb.state_dir())
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name() != "lock")
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect();
    files.sort();
    files
}

#[test]
fn bad_api_and_cli_input_is_refused_and_the_agent_stays_up() {
    let (sb, net) = sandbox_with_network();
    let state_before = saved_state(&sb);
    assert!(state_before.iter().any(|(name, _)| name == "state.json"), "{state_before:?}");
    let err = sb.fails(&["container", "create", &sb.name("c"), "--network", "nosuchnet"]);
    assert!(err.contains("no network named"), "{err}");
    for (request, status, needle) in [
        (post("/v1/networks", "{ not json"), "400", "invalid request body"),
        (post("/v1/networks", r#"{"name": 5, "subnet": "10.9.0.0/24"}"#), "422", "invalid request body"),
        (post("/v1/networks", r#"{"name": "x", "subnet": "10.9.0.0/24", "bogus": 1}"#), "422", "unknown field"),
        (post("/v1/containers", r#"{"name": "x"}"#), "422", "missing field"),
        (
            post("/v1/containers", &format!(r#"{{"name": "{}", "network": "{net}", "ip": "banana"}}"#, sb.name("x"))),
            "422",
            "invalid",
        ),
        (post("/v1/nope", "{}"), "404", "no such API route"),
        (
            post("/v1/networks", &format!(r#"{{"name": "{}", "subnet": "{}"}}"#, "n".repeat(10), "x".repeat(2 << 20))),
            "413",
            "",
        ),
    ] {
        let (got, body) = raw_request(&sb, &request);
        assert!(got.contains(status), "{got} {body}");
        assert!(body.contains(needle), "{got}: {body}");
    }
    assert_eq!(saved_state(&sb), state_before, "no state change");
    // A client that is not root cannot reach the API at all (the socket is root-only).
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bpfnet_tests::bpfnet_bin())
        .args(["status"])
        .env("BPFNET_SOCKET", sb.socket())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("root only"), "{}", String::from_utf8_lossy(&out.stderr));
    // Still up and serving.
    sb.ok(&["status"]);
}

#[test]
fn a_second_agent_on_the_same_state_dir_or_socket_refuses_to_start() {
    let (sb, _net) = sandbox_with_network();
    // Same state directory, another socket.
    let other_socket = sb.state_dir().join("other.sock");
    let out = sb.agent_command().env("BPFNET_SOCKET", &other_socket).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("another bpfnet agent is running with the state directory"), "{err}");
    // Same socket, another state directory.
    let other_state = std::env::temp_dir().join(format!("{}-other-state", sb.prefix()));
    let out = sb.agent_command().env("BPFNET_STATE_DIR", &other_state).output().unwrap();
    let _ = std::fs::remove_dir_all(&other_state);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("already listening on"), "{err}");
    sb.ok(&["status"]);
}
