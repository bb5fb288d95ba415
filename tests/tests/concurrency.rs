//! Many API clients at once: 50 parallel clients creating, publishing, unpublishing and
//! removing containers, with one client stuck halfway through sending its request. No
//! deadlock, no lost or duplicated change, and afterwards the state and the kernel agree
//! (the leak checker finds nothing), with everything created and then everything removed.
use std::{
    io::Write,
    os::unix::net::UnixStream,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bpfnet_tests::{api_request, leaks, run, Sandbox};
use serde_json::json;

const CLIENTS: usize = 50;
/// Bound on the whole run: serialized by the agent, 50 clients' 4 operations take ~10 s here.
const LIMIT: Duration = Duration::from_secs(240);

#[test]
fn fifty_parallel_clients_lose_nothing_and_a_stuck_one_blocks_no_one() {
    let sb = Sandbox::with_uplink();
    let net = sb.name("net");
    sb.ok(&["network", "create", &net, "--subnet", "10.236.0.0/22"]);
    let socket = sb.socket().to_owned();

    // A client that sends half a request and then nothing, for the whole run.
    let mut stuck = UnixStream::connect(&socket).unwrap();
    stuck.write_all(b"POST /v1/containers HTTP/1.1\r\nHost: bpfnet\r\nContent-Length: 200\r\n\r\n{\"name\":").unwrap();

    let started = Instant::now();
    let failures = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (socket, net, failures) = (socket.clone(), net.clone(), failures.clone());
            let name = sb.name(&format!("c{i}"));
            std::thread::spawn(move || {
                let port = 20_000 + i as u16;
                let steps = [
                    (
                        "POST",
                        "/v1/containers".to_owned(),
                        json!({"name": name, "network": net, "publish": [format!("{port}:80")]}),
                    ),
                    (
                        "POST",
                        format!("/v1/containers/{name}/publish"),
                        json!({"specs": [format!("{}:81", port + 1000)]}),
                    ),
                    (
                        "POST",
                        format!("/v1/containers/{name}/unpublish"),
                        json!({"specs": [format!("{}:81", port + 1000)]}),
                    ),
                ];
                for (method, path, body) in steps {
                    match api_request(&socket, method, &path, "", Some(&body.to_string())) {
                        Ok((200, _, _)) => {}
                        other => failures.lock().unwrap().push(format!("{method} {path}: {other:?}")),
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert!(started.elapsed() < LIMIT, "the clients took {:?}", started.elapsed());
    assert_eq!(*failures.lock().unwrap(), Vec::<String>::new());
    let listed = sb.json(&["container", "ls", "--json"]);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), CLIENTS, "every create made one container, none twice");
    assert!(listed.iter().all(|c| c["ports"].as_array().unwrap().len() == 1), "each kept its first port only");
    assert_eq!(leaks(&sb), Vec::<String>::new(), "state and kernel agree with {CLIENTS} containers");

    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (socket, failures) = (socket.clone(), failures.clone());
            let name = sb.name(&format!("c{i}"));
            std::thread::spawn(move || {
                match api_request(&socket, "DELETE", &format!("/v1/containers/{name}"), "", None) {
                    Ok((200, _, _)) => {}
                    other => failures.lock().unwrap().push(format!("DELETE {name}: {other:?}")),
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(*failures.lock().unwrap(), Vec::<String>::new());
    assert!(sb.json(&["container", "ls", "--json"]).as_array().unwrap().is_empty());
    assert_eq!(leaks(&sb), Vec::<String>::new(), "nothing left once all are removed");
    // The checker sees a leak: a host-side veth of no container.
    run("ip", &["-n", sb.host_netns(), "link", "add", "bnleak0", "type", "veth", "peer", "name", "bpleak0"]).unwrap();
    let found = leaks(&sb);
    run("ip", &["-n", sb.host_netns(), "link", "delete", "bnleak0"]).unwrap();
    assert_eq!(found, vec!["host-side veth bnleak0: in the kernel, of no container in the state".to_owned()]);
    drop(stuck);
    sb.teardown().unwrap();
}
