//! Decoding and encoding per the CNI spec, without an agent.
use serde_json::json;

use super::{
    result::CniResult,
    spec::{code, CniError, Environment, NetConf, PortMapping},
    *,
};

fn env(command: &str) -> Environment {
    Environment {
        command: Some(command.into()),
        container_id: Some("abc123".into()),
        netns: Some("/run/netns/x".into()),
        ifname: Some("eth0".into()),
    }
}

fn attached() -> AttachmentInfo {
    AttachmentInfo {
        container_id: "abc123".into(),
        ifname: "eth0".into(),
        netns: "/run/netns/x".into(),
        network: "web".into(),
        address: "10.88.0.2/24".into(),
        gateway: "10.88.0.1".into(),
        address6: None,
        gateway6: None,
        mac: "02:42:0a:58:00:02".into(),
        host_interface: "bn0000abcd".into(),
        host_mac: "02:bf:00:00:00:01".into(),
        ports: vec![],
    }
}

fn run_sync(env: &Environment, stdin: &str) -> Result<Output, CniError> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run(env, stdin.as_bytes()))
}

#[test]
fn podman_and_containerd_spell_port_mappings_differently() {
    let podman = r#"{"cniVersion": "1.0.0", "name": "web", "type": "bpfnet-cni",
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""},
            {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"}]}}"#;
    let containerd = r#"{"cniVersion": "1.1.0", "name": "web", "type": "bpfnet-cni", "network": "web",
        "someFutureKey": {"nested": [1, 2]},
        "runtimeConfig": {"portMappings": [
            {"HostPort": 8080, "ContainerPort": 80, "Protocol": "TCP", "HostIP": "0.0.0.0"}],
            "bandwidth": {"ingressRate": 1}}}"#;
    let podman = NetConf::decode(podman.as_bytes()).unwrap();
    let containerd = NetConf::decode(containerd.as_bytes()).unwrap();
    let specs =
        |c: &NetConf| c.runtime_config.port_mappings.iter().map(|m| m.publish_spec().unwrap()).collect::<Vec<_>>();
    assert_eq!(specs(&podman), ["8080:80/tcp", "127.0.0.1:5353:53/udp"]);
    assert_eq!(specs(&containerd), ["0.0.0.0:8080:80/tcp"]);
    assert_eq!((podman.network().unwrap(), containerd.network().unwrap()), ("web", "web"));
    assert_eq!(containerd.version().unwrap(), (1, 1, 0));
}

#[test]
fn bad_port_mappings_and_configs_are_invalid_configuration() {
    let sctp = PortMapping { host_port: 1, container_port: 1, protocol: "sctp".into(), host_ip: String::new() };
    assert_eq!(sctp.publish_spec().unwrap_err().code, code::INVALID_CONFIG);
    let v6 = PortMapping { host_port: 1, container_port: 2, protocol: "tcp".into(), host_ip: "2001:db8::1".into() };
    assert_eq!(v6.publish_spec().unwrap(), "[2001:db8::1]:1:2/tcp", "bracketed, as the agent parses it");
    let bad = PortMapping { host_port: 1, container_port: 1, protocol: "tcp".into(), host_ip: "nope".into() };
    let err = bad.publish_spec().unwrap_err();
    assert!(err.code == code::INVALID_CONFIG && err.msg.contains("\"nope\" is not an IP address"), "{err:?}");
    let unnamed = NetConf::decode(br#"{"cniVersion": "1.0.0", "type": "bpfnet-cni"}"#).unwrap();
    assert_eq!(unnamed.network().unwrap_err().code, code::INVALID_CONFIG);
}

#[test]
fn versions_and_decode_errors_get_the_spec_codes() {
    let out = run_sync(&env("VERSION"), r#"{"cniVersion": "0.4.0"}"#).unwrap().unwrap();
    assert_eq!(out, json!({"cniVersion": "0.4.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}));
    let out = run_sync(&env("VERSION"), "").unwrap().unwrap();
    assert_eq!(out["cniVersion"], "1.1.0");

    let err = run_sync(&env("ADD"), "{ not json").unwrap_err();
    assert_eq!(err.code, code::DECODE);
    let err = run_sync(&env("ADD"), r#"{"cniVersion": "0.2.0", "name": "n", "type": "bpfnet-cni"}"#).unwrap_err();
    assert_eq!(err.code, code::INCOMPATIBLE_VERSION);
    assert!(err.msg.contains("0.2.0") && err.msg.contains("1.1.0"), "{}", err.msg);
    let err = run_sync(&env("GC"), r#"{"cniVersion": "1.0.0", "name": "n", "type": "bpfnet-cni"}"#).unwrap_err();
    assert_eq!((err.code, err.cni_version.as_str()), (code::INCOMPATIBLE_VERSION, "1.0.0"));

    let mut no_netns = env("ADD");
    no_netns.netns = Some(String::new());
    let err = run_sync(&no_netns, r#"{"cniVersion": "1.0.0", "name": "n", "type": "bpfnet-cni"}"#).unwrap_err();
    assert!(err.code == code::BAD_ENVIRONMENT && err.msg.contains("CNI_NETNS"), "{err:?}");
    let err = run_sync(&Environment::default(), "{}").unwrap_err();
    assert_eq!(err.code, code::BAD_ENVIRONMENT);
    let err = run_sync(&env("FROB"), "{}").unwrap_err();
    assert!(err.code == code::BAD_ENVIRONMENT && err.msg.contains("FROB"), "{err:?}");
}

#[test]
fn an_unreachable_agent_is_try_again_later_and_for_status_not_available() {
    let conf = r#"{"cniVersion": "1.1.0", "name": "n", "type": "bpfnet-cni", "socket": "/nonexistent/bpfnet.sock"}"#;
    assert_eq!(run_sync(&env("ADD"), conf).unwrap_err().code, code::TRY_AGAIN_LATER);
    assert_eq!(run_sync(&env("STATUS"), conf).unwrap_err().code, code::NOT_AVAILABLE);
}

#[test]
fn the_error_object_has_the_spec_shape() {
    let err = CniError::new(code::INVALID_CONFIG, "no such network").details("more");
    let json = serde_json::to_value(&err).unwrap();
    assert_eq!(json, json!({"cniVersion": "1.1.0", "code": 7, "msg": "no such network", "details": "more"}));
    let json = serde_json::to_value(CniError::new(code::DECODE, "x")).unwrap();
    assert_eq!(json, json!({"cniVersion": "1.1.0", "code": 6, "msg": "x"}));
}

#[test]
fn results_are_shaped_for_the_version_asked() {
    let mut result = CniResult::default();
    result.add_attachment(&attached());
    let v040 = serde_json::to_value(result.clone().shaped_for("0.4.0", (0, 4, 0))).unwrap();
    assert_eq!(
        v040,
        json!({
            "cniVersion": "0.4.0",
            "interfaces": [
                {"name": "bn0000abcd", "mac": "02:bf:00:00:00:01"},
                {"name": "eth0", "mac": "02:42:0a:58:00:02", "sandbox": "/run/netns/x"}
            ],
            "ips": [{"version": "4", "address": "10.88.0.2/24", "gateway": "10.88.0.1", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.88.0.1"}],
            "dns": {}
        })
    );
    let v110 = serde_json::to_value(result.shaped_for("1.1.0", (1, 1, 0))).unwrap();
    assert_eq!(v110["cniVersion"], "1.1.0");
    assert_eq!(v110["ips"], json!([{"address": "10.88.0.2/24", "gateway": "10.88.0.1", "interface": 1}]));
}

/// On a dual-stack network: both addresses on the one interface inside, a default route per
/// family; before 1.0.0 each address names its version.
#[test]
fn a_dual_stack_result_has_both_addresses_and_routes() {
    let mut result = CniResult::default();
    result.add_attachment(&AttachmentInfo {
        address6: Some("fd00:88::2/64".into()),
        gateway6: Some("fd00:88::1".into()),
        ..attached()
    });
    let v040 = serde_json::to_value(result.clone().shaped_for("0.4.0", (0, 4, 0))).unwrap();
    assert_eq!(
        v040["ips"],
        json!([
            {"version": "4", "address": "10.88.0.2/24", "gateway": "10.88.0.1", "interface": 1},
            {"version": "6", "address": "fd00:88::2/64", "gateway": "fd00:88::1", "interface": 1}
        ])
    );
    assert_eq!(v040["routes"], json!([{"dst": "0.0.0.0/0", "gw": "10.88.0.1"}, {"dst": "::/0", "gw": "fd00:88::1"}]));
    let v110 = serde_json::to_value(result.shaped_for("1.1.0", (1, 1, 0))).unwrap();
    assert_eq!(v110["ips"][1], json!({"address": "fd00:88::2/64", "gateway": "fd00:88::1", "interface": 1}));
}

#[test]
fn a_previous_result_is_amended_and_keeps_what_it_had() {
    let prev = json!({
        "cniVersion": "0.4.0",
        "interfaces": [{"name": "lo", "sandbox": "/run/netns/x", "mtu": 65536}],
        "ips": [{"version": "4", "address": "127.0.0.1/8", "interface": 0}],
        "dns": {"nameservers": ["10.0.0.53"]},
        "vendorKey": true
    });
    let mut result = CniResult::previous(Some(&prev)).unwrap();
    result.add_attachment(&attached());
    let out = serde_json::to_value(result.shaped_for("1.0.0", (1, 0, 0))).unwrap();
    assert_eq!(out["interfaces"].as_array().unwrap().len(), 3);
    assert_eq!(out["interfaces"][0]["mtu"], 65536);
    assert_eq!(out["ips"][1]["interface"], 2, "the index counts the earlier interfaces");
    assert_eq!(out["ips"][0].get("version"), None);
    assert_eq!(out["dns"]["nameservers"], json!(["10.0.0.53"]));
    assert_eq!(out["vendorKey"], true);
    let err = CniResult::previous(Some(&json!({"ips": "nope"}))).unwrap_err();
    assert_eq!(err.code, code::DECODE);
}
