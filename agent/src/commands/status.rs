use std::net::Ipv4Addr;

use anyhow::Result;
use aya::programs::{SchedClassifier, TcAttachType};
use datapath_common::program_names;
use serde_json::{json, Value};

use super::{container::describe, print_json};
use crate::{conntrack, datapath::Datapath, host::Host};

/// What the kernel says is attached to an interface's tcx ingress (program ids).
fn attached_program_ids(ifname: &str) -> Vec<u32> {
    SchedClassifier::query_tcx(ifname, TcAttachType::Ingress)
        .map(|(_, programs)| programs.iter().map(|p| p.id()).collect())
        .unwrap_or_default()
}

/// One attachment: whether the kernel has `program` on the interface's tcx ingress.
fn attachment(ifname: &str, role: &str, program_id: u32) -> Value {
    let ids = attached_program_ids(ifname);
    json!({ "interface": ifname, "role": role, "attached": ids.contains(&program_id), "program_ids": ids })
}

fn datapath_status(host_containers: &[(String, String)], dp: &Datapath) -> Result<Value> {
    let ids: serde_json::Map<String, Value> = dp.program_ids()?.into_iter().map(|(n, id)| (n.to_owned(), json!(id))).collect();
    let id_of = |name: &str| ids[name].as_u64().unwrap_or_default() as u32;
    let mut attachments: Vec<Value> = host_containers
        .iter()
        .map(|(ifname, container)| attachment(ifname, &format!("container {container}"), id_of(program_names::FROM_ENDPOINT)))
        .collect();
    for uplink in dp.uplinks()? {
        attachments.push(attachment(&uplink, "uplink", id_of(program_names::FROM_UPLINK)));
    }
    let snapshot = dp.snapshot()?;
    let as_object = |pairs: &[(&str, u64)]| -> serde_json::Map<String, Value> {
        pairs.iter().map(|(k, v)| (k.to_string(), json!(v))).collect()
    };
    let config = dp.config()?;
    Ok(json!({
        "loaded": true,
        "program_ids": ids,
        "attachments": attachments,
        "uplink": {
            "ifindex": config.uplink_ifindex,
            "masquerade_address": (config.uplink_ifindex != 0).then(|| Ipv4Addr::from(config.uplink_ip.to_ne_bytes()).to_string()),
            "nat_ports": [config.nat_port_min, config.nat_port_max],
        },
        "conntrack": { "entries": conntrack::fill(dp)?, "limit": config.ct_limit, "capacity": dp.ct_capacity()? },
        "counters": as_object(&snapshot.counters),
        "drops": as_object(&snapshot.drops),
    }))
}

pub async fn run(host: &mut Host, json_output: bool) -> Result<()> {
    let networks: Vec<_> = host.state.networks.values().cloned().collect();
    let containers: Vec<_> = host.state.containers.values().cloned().collect();
    let veths: Vec<_> = containers.iter().map(|c| (c.host_interface.clone(), c.name.clone())).collect();
    let datapath = match host.existing_datapath()? {
        Some(dp) => datapath_status(&veths, dp)?,
        None => json!({ "loaded": false }),
    };
    let status = json!({
        "host_netns": host.options.host_netns,
        "state_dir": host.options.state_dir,
        "bpffs": host.options.bpffs,
        "networks": networks.iter().map(|n| json!({"name": n.name, "subnet": n.subnet.to_string(), "gateway": n.gateway.to_string()})).collect::<Vec<_>>(),
        "containers": containers.iter().map(describe).collect::<Vec<_>>(),
        "datapath": datapath,
    });
    if json_output {
        return print_json(&status);
    }
    print_text(&status);
    Ok(())
}

fn print_text(status: &Value) {
    let dp = &status["datapath"];
    println!("host namespace: {}", status["host_netns"].as_str().unwrap_or("(the one bpfnet runs in)"));
    println!(
        "networks: {}   containers: {}",
        status["networks"].as_array().map_or(0, Vec::len),
        status["containers"].as_array().map_or(0, Vec::len)
    );
    if dp["loaded"] != json!(true) {
        println!("datapath: not loaded (no network or container created yet)");
        return;
    }
    println!("datapath programs: {}", dp["program_ids"]);
    for a in dp["attachments"].as_array().into_iter().flatten() {
        println!(
            "  {:<12} {:<28} {}",
            a["interface"].as_str().unwrap_or_default(),
            a["role"].as_str().unwrap_or_default(),
            if a["attached"] == json!(true) { "attached (tcx ingress)" } else { "NOT ATTACHED" }
        );
    }
    match dp["uplink"]["masquerade_address"].as_str() {
        Some(addr) => println!("masquerade: to {addr}, ports {}", dp["uplink"]["nat_ports"]),
        None => println!("masquerade: off (no --uplink given yet)"),
    }
    let ct = &dp["conntrack"];
    println!("conntrack: {} entries in use, limit {}, capacity {}", ct["entries"], ct["limit"], ct["capacity"]);
    for (title, section) in [("counters", "counters"), ("drops by reason", "drops")] {
        println!("{title}:");
        for (name, value) in dp[section].as_object().into_iter().flatten() {
            println!("  {name:<22} {value}");
        }
    }
}
