//! The state directory's disk failing under the agent: full (a small tmpfs filled up), a
//! change fails with a clear error, nothing is half-made, running containers keep their
//! traffic, and the next change after space is freed works; read-only at start, the agent
//! refuses to start and says why.
use std::{net::SocketAddrV4, path::Path, process::Command};

use bpfnet_tests::{leaks, run, tcp_exchange, Sandbox};
use nix::sys::signal::Signal;

/// A tmpfs mounted on a directory for the test's lifetime, unmounted when dropped (also when
/// the test fails).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, options: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        run("mount", &["-t", "tmpfs", "-o", options, "bpfnet-test", dir.to_str().unwrap()]).unwrap();
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("--lazy").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn a_full_state_disk_fails_a_change_cleanly_and_the_next_one_works_once_freed() {
    let mut sb = Sandbox::with_uplink();
    // The agent's state on a 256 KiB disk of its own (unmounted after the sandbox's teardown).
    let disk = std::env::temp_dir().join(format!("{}-disk", sb.prefix()));
    let tmpfs = Tmpfs::mount(&disk, "size=256k,mode=0700");
    sb.set_agent_env("BPFNET_STATE_DIR", disk.to_str().unwrap());
    let net = sb.name("net");
    sb.ok(&["network", "create", &net, "--subnet", "10.237.0.0/24"]);
    let (c1, c2, c3) = (sb.name("c1"), sb.name("c2"), sb.name("c3"));
    sb.ok(&["container", "create", &c1, "--network", &net]);
    sb.ok(&["container", "create", &c2, "--network", &net]);
    let c2_ip = sb.container_ip(&c2);
    sb.tcp_echo_server(&c2, SocketAddrV4::new(c2_ip, 7000), 3);

    // Fill the disk: a file as large as it takes (the write stops at ENOSPC).
    let filler = disk.join("filler");
    let out = Command::new("dd").args(["if=/dev/zero", "bs=4k"]).arg(format!("of={}", filler.display())).output();
    assert!(!out.unwrap().status.success(), "dd stops when the disk is full");
    // The journal's space allocated ahead lasts a while: creates and removals go on until it
    // is used up, and the first that needs more fails at its start (bounded: each is a few
    // hundred bytes of journal).
    let mut refused = None;
    let mut left = None;
    for i in 0..400 {
        let name = sb.name(&format!("x{i}"));
        let created = sb.bpfnet(&["container", "create", &name, "--network", &net]);
        if !created.status.success() {
            refused = Some(String::from_utf8_lossy(&created.stderr).into_owned());
            break;
        }
        let removed = sb.bpfnet(&["container", "rm", &name]);
        if !removed.status.success() {
            refused = Some(String::from_utf8_lossy(&removed.stderr).into_owned());
            left = Some(name);
            break;
        }
    }
    let err = refused.expect("a change is refused once the disk is full");
    assert!(err.contains("No space left on device") && err.contains("journal"), "{err}");
    assert_eq!(leaks(&sb), Vec::<String>::new(), "the refused change made nor removed anything");
    let err = sb.fails(&["container", "create", &c3, "--network", &net, "-p", "8080:80"]);
    assert!(err.contains("nothing was changed: free space"), "{err}");
    let listed = sb.json(&["container", "ls", "--json"]);
    let names: Vec<&str> = listed.as_array().unwrap().iter().filter_map(|c| c["name"].as_str()).collect();
    assert!(!names.contains(&c3.as_str()), "nothing of {c3} in the state: {listed}");
    assert_eq!(names.len(), 2 + usize::from(left.is_some()), "{listed}");
    assert_eq!(leaks(&sb), Vec::<String>::new(), "nothing of {c3} in the kernel");
    assert_eq!(tcp_exchange(&c1, SocketAddrV4::new(c2_ip, 7000), b"still").unwrap(), b"still");

    std::fs::remove_file(&filler).unwrap();
    if let Some(name) = left {
        sb.ok(&["container", "rm", &name]);
    }
    sb.ok(&["container", "create", &c3, "--network", &net, "-p", "8080:80"]);
    assert_eq!(sb.json(&["container", "ls", "--json"]).as_array().unwrap().len(), 3);
    // The change is durable: a restarted agent has it.
    sb.stop_agent(Signal::SIGKILL);
    assert_eq!(sb.json(&["container", "ls", "--json"]).as_array().unwrap().len(), 3);
    assert_eq!(leaks(&sb), Vec::<String>::new());
    sb.teardown().unwrap();
    drop(tmpfs);
}

#[test]
fn a_read_only_state_directory_at_start_is_a_clear_error() {
    let sb = Sandbox::with_uplink();
    let net = sb.name("net");
    sb.ok(&["network", "create", &net, "--subnet", "10.238.0.0/24"]);
    sb.stop_agent(Signal::SIGTERM);
    let state = sb.state_dir().to_owned();
    // The state as it is, on a read-only tmpfs mounted over the directory.
    let saved = std::env::temp_dir().join(format!("{}-state-copy", sb.prefix()));
    run("cp", &["-a", state.to_str().unwrap(), saved.to_str().unwrap()]).unwrap();
    let tmpfs = Tmpfs::mount(&state, "size=256k,mode=0700");
    run("cp", &["-a", &format!("{}/.", saved.display()), state.to_str().unwrap()]).unwrap();
    run("mount", &["-o", "remount,ro", state.to_str().unwrap()]).unwrap();
    let out = sb.agent_command().output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("read-only") && err.contains(state.to_str().unwrap()) && err.contains("--state-dir"), "{err}");
    drop(tmpfs);
    std::fs::remove_dir_all(&saved).unwrap();
    sb.ensure_agent();
    assert_eq!(sb.json(&["network", "ls", "--json"]).as_array().unwrap().len(), 1);
    sb.teardown().unwrap();
}
