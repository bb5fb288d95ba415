use anyhow::Result;
use aya::programs::{SchedClassifier, TcAttachType};
use serde_json::json;

use super::{container::describe, print_json};
use crate::host::Host;

/// What the kernel says is attached to an interface's tcx ingress (program ids).
fn attached_program_ids(ifname: &str) -> Result<Vec<u32>> {
    let (_, programs) = SchedClassifier::query_tcx(ifname, TcAttachType::Ingress)?;
    Ok(programs.iter().map(|p| p.id()).collect())
}

pub async fn run(host: &mut Host, json_output: bool) -> Result<()> {
    let networks: Vec<_> = host.state.networks.values().cloned().collect();
    let containers: Vec<_> = host.state.containers.values().cloned().collect();
    let (program_id, snapshot) = match host.existing_datapath()? {
        Some(dp) => (Some(dp.program_id()?), Some(dp.snapshot()?)),
        None => (None, None),
    };
    let attachments: Vec<_> = containers
        .iter()
        .map(|c| {
            let ids = attached_program_ids(&c.host_interface).unwrap_or_default();
            json!({
                "interface": c.host_interface,
                "container": c.name,
                "attached": program_id.is_some_and(|id| ids.contains(&id)),
                "program_ids": ids,
            })
        })
        .collect();
    let as_object = |pairs: &[(&str, u64)]| -> serde_json::Map<String, serde_json::Value> {
        pairs.iter().map(|(k, v)| (k.to_string(), json!(v))).collect()
    };
    let counters = snapshot.as_ref().map(|s| as_object(&s.counters));
    let drops = snapshot.as_ref().map(|s| as_object(&s.drops));
    let status = json!({
        "host_netns": host.options.host_netns,
        "state_dir": host.options.state_dir,
        "bpffs": host.options.bpffs,
        "networks": networks.iter().map(|n| json!({"name": n.name, "subnet": n.subnet.to_string(), "gateway": n.gateway.to_string()})).collect::<Vec<_>>(),
        "containers": containers.iter().map(describe).collect::<Vec<_>>(),
        "datapath": {
            "loaded": program_id.is_some(),
            "program_id": program_id,
            "attachments": attachments,
            "counters": counters,
            "drops": drops,
        },
    });
    if json_output {
        return print_json(&status);
    }
    println!("host namespace: {}", host.options.host_netns.as_deref().unwrap_or("(the one bpfnet runs in)"));
    println!("networks: {}   containers: {}", networks.len(), containers.len());
    match (program_id, snapshot) {
        (Some(id), Some(snapshot)) => {
            println!("datapath: from_endpoint program id {id}");
            for a in &attachments {
                println!(
                    "  {} ({}): {}",
                    a["interface"].as_str().unwrap_or_default(),
                    a["container"].as_str().unwrap_or_default(),
                    if a["attached"] == json!(true) { "attached (tcx ingress)" } else { "NOT ATTACHED" }
                );
            }
            println!("counters:");
            for (name, value) in &snapshot.counters {
                println!("  {name:<20} {value}");
            }
            println!("drops by reason:");
            for (name, value) in &snapshot.drops {
                println!("  {name:<20} {value}");
            }
        }
        _ => println!("datapath: not loaded (no network or container created yet)"),
    }
    Ok(())
}
