//! Churn with the agent killed: every failpoint of create, remove, publish, unpublish and
//! attach crashes the agent in the middle of its operation, then a bounded soak of four
//! concurrent clients (the CLI, the API, the CNI plugin, Docker's driver protocol) creating,
//! publishing and removing while the agent is SIGKILLed at random moments and restarted each
//! time. After each crash
//! and after the soak, the leak checker (state against kernel) finds nothing and every
//! container the state lists answers.
//!
//! BPFNET_SOAK_KILLS sets how many times the agent is killed during the soak (CI: 8, about
//! 10 s; by hand, e.g. 200 for a run of a few thousand operations).
use std::{
    io::Write,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bpfnet_tests::{api_request, bpfnet_bin, cni_bin, leaks, ping, Sandbox};
use nix::sys::signal::Signal;
use serde_json::json;

const GATEWAY: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 240, 0, 1);

/// Each failpoint, and the operation that reaches it.
const FAILPOINTS: [(&str, Op); 10] = [
    ("container-create:journaled", Op::Create),
    ("container-create:veth", Op::Create),
    ("container-create:applied", Op::Create),
    ("container-remove:journaled", Op::Remove),
    ("container-remove:torn-down", Op::Remove),
    ("publish:mapped", Op::Publish),
    ("publish:journaled", Op::Publish),
    ("unpublish:unmapped", Op::Unpublish),
    ("unpublish:journaled", Op::Unpublish),
    ("container-create:applied", Op::Attach),
];

#[derive(Clone, Copy, Debug)]
enum Op {
    Create,
    Remove,
    Publish,
    Unpublish,
    Attach,
}

/// Every container the state lists answers: bpfnet's own ping their gateway from their
/// namespace; attached ones (ID/IFNAME) from the engine namespace named by their id.
#[track_caller]
fn all_answer(sb: &Sandbox) {
    let listed = sb.json(&["container", "ls", "--json"]);
    for c in listed.as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        if name.starts_with("docker:") {
            continue; // its interface waits in the host namespace for a dockerd to move it
        }
        let netns = name.split('/').next().unwrap();
        assert!(ping(netns, GATEWAY), "{name} does not reach its gateway: {c}");
    }
}

#[track_caller]
fn no_leaks(sb: &Sandbox, after: &str) {
    assert_eq!(leaks(sb), Vec::<String>::new(), "leaks after {after}");
    all_answer(sb);
}

/// One run of the CNI plugin as a runtime makes it (bounded by `timeout`).
fn cni(command: &str, socket: &std::path::Path, network: &str, id: &str, netns: &str) -> bool {
    let conf = json!({"cniVersion": "1.0.0", "name": "soak", "type": "bpfnet-cni", "network": network,
                      "socket": socket, "runtimeConfig": {"portMappings": []}});
    let mut child = Command::new("timeout")
        .arg("30")
        .arg(cni_bin())
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", format!("/run/netns/{netns}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/nonexistent")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("running bpfnet-cni");
    let _ = child.stdin.take().unwrap().write_all(conf.to_string().as_bytes());
    child.wait().is_ok_and(|s| s.success())
}

#[test]
fn every_failpoint_then_random_kills_under_four_clients_leak_nothing() {
    let mut sb = Sandbox::with_uplink();
    let driver = sb.scratch_path("docker-plugin.sock");
    sb.set_agent_env("BPFNET_DOCKER_PLUGIN_SOCKET", driver.to_str().unwrap());
    let net = sb.name("net");
    sb.ok(&["network", "create", &net, "--subnet", "10.240.0.0/22"]);
    let keep = sb.name("keep");
    sb.ok(&["container", "create", &keep, "--network", &net, "-p", "7000:80"]);
    let engine = sb.add_engine_netns("eng").unwrap();
    let socket = sb.socket().to_owned();

    // Phase 1: each failpoint once.
    for (i, (failpoint, op)) in FAILPOINTS.iter().enumerate() {
        sb.stop_agent(Signal::SIGKILL);
        sb.set_agent_env("BPFNET_FAILPOINT", failpoint);
        let victim = sb.name(&format!("f{i}"));
        // What the operation needs is made before the crash is armed.
        match op {
            Op::Remove => {
                sb.set_agent_env("BPFNET_FAILPOINT", "");
                sb.ok(&["container", "create", &victim, "--network", &net]);
                sb.stop_agent(Signal::SIGKILL);
                sb.set_agent_env("BPFNET_FAILPOINT", failpoint);
            }
            Op::Unpublish => {
                sb.set_agent_env("BPFNET_FAILPOINT", "");
                sb.ok(&["publish", &keep, "7100:81"]);
                sb.stop_agent(Signal::SIGKILL);
                sb.set_agent_env("BPFNET_FAILPOINT", failpoint);
            }
            _ => {}
        }
        let out = match op {
            Op::Create => sb.bpfnet(&["container", "create", &victim, "--network", &net, "-p", "7200:80"]),
            Op::Remove => sb.bpfnet(&["container", "rm", &victim]),
            Op::Publish => sb.bpfnet(&["publish", &keep, "7100:81"]),
            Op::Unpublish => sb.bpfnet(&["unpublish", &keep, "7100:81"]),
            Op::Attach => {
                sb.ensure_agent();
                let attached = cni("ADD", &socket, &net, &engine, &engine);
                assert!(!attached, "the agent died at {failpoint}");
                sb.bpfnet(&["status"])
            }
        };
        if !matches!(op, Op::Attach) {
            assert!(!out.status.success(), "the agent died at {failpoint}");
        }
        sb.stop_agent(Signal::SIGKILL);
        sb.set_agent_env("BPFNET_FAILPOINT", "");
        sb.ensure_agent();
        no_leaks(&sb, failpoint);
        // Whatever the crash left, the operation can be finished or retried.
        match op {
            Op::Create => {
                let _ = sb.bpfnet(&["container", "rm", &victim]);
            }
            Op::Remove => {
                let _ = sb.bpfnet(&["container", "rm", &victim]);
                assert!(!sb.ok(&["container", "ls"]).contains(&victim));
            }
            Op::Publish => {
                let _ = sb.bpfnet(&["unpublish", &keep, "7100:81"]);
            }
            Op::Unpublish => {
                let _ = sb.bpfnet(&["unpublish", &keep, "7100:81"]);
            }
            Op::Attach => assert!(cni("DEL", &socket, &net, &engine, &engine)),
        }
        no_leaks(&sb, &format!("retrying after {failpoint}"));
    }

    // Phase 2: three clients while the agent is killed at random moments.
    let kills_wanted: u32 = std::env::var("BPFNET_SOAK_KILLS").ok().and_then(|n| n.parse().ok()).unwrap_or(8);
    // Each client's bound; the kills end the soak long before.
    let ops = 100_000;
    let engines: Vec<String> = (0..4).map(|i| sb.add_engine_netns(&format!("e{i}")).unwrap()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let succeeded = Arc::new(AtomicUsize::new(0));
    let docker_ok = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    {
        // The CLI: create and remove.
        let (socket, net, done, ok) = (socket.clone(), net.clone(), done.clone(), succeeded.clone());
        let names: Vec<String> = (0..6).map(|i| sb.name(&format!("cli{i}"))).collect();
        let stop = stop.clone();
        clients.push(std::thread::spawn(move || {
            let bpfnet = |args: &[&str]| {
                let out = Command::new(bpfnet_bin()).arg("--socket").arg(&socket).args(args).output();
                out.is_ok_and(|o| o.status.success())
            };
            for i in 0..ops {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let name = &names[(i / 2) % names.len()];
                let worked = if i % 2 == 0 {
                    bpfnet(&["container", "create", name, "--network", &net])
                } else {
                    bpfnet(&["container", "rm", name])
                };
                ok.fetch_add(usize::from(worked), Ordering::SeqCst);
                done.fetch_add(1, Ordering::SeqCst);
                if !worked {
                    // The agent is down (being restarted) or refused: try again in a moment.
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }));
    }
    {
        // The API: publish and unpublish on the kept container, create and remove another.
        let (socket, net, done, ok) = (socket.clone(), net.clone(), done.clone(), succeeded.clone());
        let (keep, other) = (keep.clone(), sb.name("api"));
        let stop = stop.clone();
        clients.push(std::thread::spawn(move || {
            for i in 0..ops {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let (method, path, body) = match i % 4 {
                    0 => ("POST", format!("/v1/containers/{keep}/publish"), json!({"specs": ["7300:82"]})),
                    1 => ("POST", format!("/v1/containers/{keep}/unpublish"), json!({"specs": ["7300:82"]})),
                    2 => (
                        "POST",
                        "/v1/containers".into(),
                        json!({"name": other, "network": net, "publish": ["7400:80"]}),
                    ),
                    _ => ("DELETE", format!("/v1/containers/{other}"), json!(null)),
                };
                let body = (!body.is_null()).then(|| body.to_string());
                let worked = matches!(api_request(&socket, method, &path, "", body.as_deref()), Ok((200, _, _)));
                ok.fetch_add(usize::from(worked), Ordering::SeqCst);
                done.fetch_add(1, Ordering::SeqCst);
                if !worked {
                    // The agent is down (being restarted) or refused: try again in a moment.
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }));
    }
    {
        // The CNI plugin: ADD and DEL on the engine's namespaces.
        let (socket, net, done, ok) = (socket.clone(), net.clone(), done.clone(), succeeded.clone());
        let engines = engines.clone();
        let stop = stop.clone();
        clients.push(std::thread::spawn(move || {
            for i in 0..ops {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let netns = &engines[(i / 2) % engines.len()];
                let worked = cni(if i % 2 == 0 { "ADD" } else { "DEL" }, &socket, &net, netns, netns);
                ok.fetch_add(usize::from(worked), Ordering::SeqCst);
                done.fetch_add(1, Ordering::SeqCst);
                if !worked {
                    // The agent is down (being restarted) or refused: try again in a moment.
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }));
    }
    {
        // Docker's driver protocol, as dockerd drives it: endpoints created, joined, left and
        // deleted on a network of its own.
        let driver = driver.clone();
        let docker = move |method: &str, body: serde_json::Value| {
            let headers = "Accept: application/vnd.docker.plugins.v1.2+json\r\n";
            let answer =
                api_request(&driver, "POST", &format!("/NetworkDriver.{method}"), headers, Some(&body.to_string()));
            matches!(answer, Ok((200, _, ref text)) if !text.contains("\"Err\""))
        };
        let network_id = "50a4d0c4e1f2a3b4c5d6e7f8a9b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8";
        assert!(docker(
            "CreateNetwork",
            json!({"NetworkID": network_id, "Options": {"com.docker.network.generic": {}},
                   "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.241.0.0/24", "Gateway": "10.241.0.1/24"}],
                   "IPv6Data": []})
        ));
        let (done, ok, stop, docker_ok) = (done.clone(), succeeded.clone(), stop.clone(), docker_ok.clone());
        clients.push(std::thread::spawn(move || {
            for i in 0..ops {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let n = (i / 4) % 3;
                let endpoint = format!("{:064x}", 0xe0 + n);
                let ids = json!({"NetworkID": network_id, "EndpointID": endpoint});
                let worked = match i % 4 {
                    0 => docker(
                        "CreateEndpoint",
                        json!({"NetworkID": network_id, "EndpointID": endpoint,
                               "Interface": {"Address": format!("10.241.0.{}/24", 10 + n), "MacAddress": ""}}),
                    ),
                    1 => docker(
                        "Join",
                        json!({"NetworkID": network_id, "EndpointID": endpoint, "SandboxKey": "/var/run/docker/netns/x"}),
                    ),
                    2 => docker("Leave", ids),
                    _ => docker("DeleteEndpoint", ids),
                };
                ok.fetch_add(usize::from(worked), Ordering::SeqCst);
                docker_ok.fetch_add(usize::from(worked), Ordering::SeqCst);
                done.fetch_add(1, Ordering::SeqCst);
                if !worked {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }));
    }
    let started = Instant::now();
    let mut kills = 0;
    let mut random = 0x2545_f491_4f6c_dd1du64 ^ u64::from(std::process::id());
    while kills < kills_wanted && started.elapsed() < Duration::from_secs(1200) {
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        std::thread::sleep(Duration::from_millis(300 + random % 900));
        sb.stop_agent(Signal::SIGKILL);
        kills += 1;
        sb.ensure_agent();
    }
    // A last stretch with the agent up, then the clients stop after their current operation.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.join().unwrap();
    }
    eprintln!(
        "soak: {} operations ({} succeeded), the agent killed {kills} times, in {:?}",
        done.load(Ordering::SeqCst),
        succeeded.load(Ordering::SeqCst),
        started.elapsed()
    );
    assert_eq!(kills, kills_wanted, "the agent was killed {kills} times");
    let docker_ok = docker_ok.load(Ordering::SeqCst);
    eprintln!("soak: {docker_ok} of those through Docker's driver protocol");
    assert!(docker_ok > 0, "the Docker driver client got nothing done");
    assert!(succeeded.load(Ordering::SeqCst) >= 3 * kills as usize, "the clients got work done between kills");
    sb.stop_agent(Signal::SIGKILL);
    sb.ensure_agent();
    no_leaks(&sb, "the soak");
    // The kept container's published port still leads to it.
    assert!(sb.ok(&["container", "ls"]).contains("7000->80/tcp"));
    sb.teardown().unwrap();
}
