//! Bad input gets a clear error naming the input, a non-zero exit, and creates nothing.
use bpfnet_tests::{links_in, namespaces_with_prefix, pinned_map_len, Sandbox};

/// Nothing of the sandbox exists besides its host namespace with `lo`, and the state is as given.
#[track_caller]
fn assert_unchanged(sb: &Sandbox, networks: usize, containers: usize) {
    assert_eq!(sb.json(&["network", "ls", "--json"]).as_array().unwrap().len(), networks);
    assert_eq!(sb.json(&["container", "ls", "--json"]).as_array().unwrap().len(), containers);
    assert_eq!(namespaces_with_prefix(sb.prefix()).len(), 1 + containers, "namespaces");
    assert_eq!(links_in(sb.host_netns()).len(), 1 + containers, "host links");
}

#[test]
fn bad_network_input_is_refused_and_creates_nothing() {
    let sb = Sandbox::new();
    let net = sb.name("net");
    for (args, needle) in [
        (vec!["--subnet", "10.220.0.0/33"], "invalid --subnet"),
        (vec!["--subnet", "not-a-cidr"], "invalid --subnet"),
        (vec!["--subnet", "10.220.0.7/24"], "did you mean 10.220.0.0/24"),
        (vec!["--subnet", "fd00::/64"], "IPv6-only network"),
        (vec!["--subnet", "10.220.0.0/24", "--gateway", "10.221.0.1"], "outside the subnet"),
        (vec!["--subnet", "10.220.0.0/24", "--gateway", "10.220.0.255"], "broadcast"),
    ] {
        let mut full = vec!["network", "create", net.as_str()];
        full.extend(args.iter().copied());
        let err = sb.fails(&full);
        assert!(err.contains(needle), "{full:?}: {err}");
    }
    let long = "n".repeat(300);
    let err = sb.fails(&["network", "create", &long, "--subnet", "10.220.0.0/24"]);
    assert!(err.contains("longer than the kernel allows"), "{err}");
    let err = sb.fails(&["network", "create", "bad/name", "--subnet", "10.220.0.0/24"]);
    assert!(err.contains("invalid"), "{err}");
    assert_unchanged(&sb, 0, 0);

    sb.ok(&["network", "create", &net, "--subnet", "10.220.0.0/24"]);
    let err = sb.fails(&["network", "create", &net, "--subnet", "10.222.0.0/24"]);
    assert!(err.contains("already exists"), "{err}");
    let err = sb.fails(&["network", "create", &sb.name("other"), "--subnet", "10.220.0.0/16"]);
    assert!(err.contains("overlaps"), "{err}");
    let err = sb.fails(&["network", "rm", &sb.name("nope")]);
    assert!(err.contains("no network named"), "{err}");
    assert_unchanged(&sb, 1, 0);
}

#[test]
fn bad_container_input_is_refused_and_creates_nothing() {
    let sb = Sandbox::new();
    let net = sb.name("net");
    sb.ok(&["network", "create", &net, "--subnet", "10.223.0.0/29"]);
    let c1 = sb.name("c1");
    sb.ok(&["container", "create", &c1, "--network", &net, "--ip", "10.223.0.2"]);
    let c2 = sb.name("c2");
    for (args, needle) in [
        (vec!["--network", "nosuchnet"], "no network named"),
        (vec!["--network", net.as_str(), "--ip", "10.223.0.2"], "already in use by container"),
        (vec!["--network", net.as_str(), "--ip", "10.224.0.2"], "outside the subnet"),
        (vec!["--network", net.as_str(), "--ip", "10.223.0.1"], "gateway"),
        (vec!["--network", net.as_str(), "--ip", "10.223.0.7"], "broadcast"),
        (vec!["--network", net.as_str(), "--ip", "banana"], "invalid value 'banana'"),
    ] {
        let mut full = vec!["container", "create", c2.as_str()];
        full.extend(args.iter().copied());
        let err = sb.fails(&full);
        assert!(err.contains(needle), "{full:?}: {err}");
    }
    let err = sb.fails(&["container", "create", &c1, "--network", &net]);
    assert!(err.contains("already exists"), "{err}");
    let long = format!("{}-{}", sb.prefix(), "c".repeat(300));
    let err = sb.fails(&["container", "create", &long, "--network", &net]);
    assert!(err.contains("longer than the kernel allows"), "{err}");
    assert_unchanged(&sb, 1, 1);
    assert_eq!(pinned_map_len(sb.bpffs_dir(), "ENDPOINTS"), 1);

    // A /29 has 6 host addresses: gateway + 5 containers, then it is full.
    for i in 2..=5 {
        sb.ok(&["container", "create", &sb.name(&format!("f{i}")), "--network", &net]);
    }
    let err = sb.fails(&["container", "create", &c2, "--network", &net]);
    assert!(err.contains("no free address"), "{err}");
    assert_unchanged(&sb, 1, 5);
}

/// Only `bpfnet agent` reads the agent's config file. A client verb with an argument that
/// happens to be `agent` (a network or container of that name) goes to the agent as asked; it
/// used to load the config file first and fail on it.
#[test]
fn only_the_agent_subcommand_reads_the_config_file() {
    let sb = Sandbox::new();
    sb.ensure_agent();
    let out = std::process::Command::new(bpfnet_tests::bpfnet_bin())
        .args(["network", "inspect", "agent"])
        .env("BPFNET_SOCKET", sb.socket())
        .env("BPFNET_CONFIG", "/nonexistent/bpfnet-agent.toml")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("no network named \"agent\""), "the agent's answer, not a config error: {err}");
}
