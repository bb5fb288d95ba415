//! What the agent does for each API call: the operations of network.rs, container.rs and
//! conntrack.rs on the host it owns, answered as JSON.
use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use aya::programs::{SchedClassifier, TcAttachType};
use datapath_common::program_names;
use serde_json::{json, Value};

use aya_obj::generated::bpf_attach_type;

use crate::{api::Call, sys::bpf, sys::cgroup::HostCgroup, host::conntrack, host::container, datapath, datapath::{Datapath, UplinkMode}, host::Host, host::ipam::format_mac, host::network, host::publish, host::state::{Change, ContainerSpec, NetworkSpec}};

pub async fn execute(host: &mut Host, call: Call) -> Result<Value> {
    match call {
        Call::CreateNetwork(c) => {
            let spec = network::create(host, &c.name, &c.subnet, c.gateway).await?;
            Ok(describe_network(host, &spec))
        }
        Call::ListNetworks => Ok(Value::Array(host.state().networks.values().map(|n| describe_network(host, n)).collect())),
        Call::InspectNetwork(name) => Ok(describe_network(host, host.state().network(&name)?)),
        Call::RemoveNetwork(name) => {
            network::remove(host, &name).await?;
            Ok(json!({ "removed": name }))
        }
        Call::CreateContainer(c) => {
            let mappings = parse_specs(&c.publish)?;
            let spec = container::create(host, &c.name, &c.network, c.ip, mappings).await?;
            Ok(describe_container(&spec))
        }
        Call::ListContainers => Ok(Value::Array(host.state().containers.values().map(describe_container).collect())),
        Call::RemoveContainer(name) => {
            container::remove(host, &name).await?;
            Ok(json!({ "removed": name }))
        }
        Call::Publish(name, specs) => {
            let mappings = parse_specs(&specs.specs)?;
            container::publish(host, &name, mappings.clone()).await?;
            describe_port_change(host, &name, "published", &mappings)
        }
        Call::Unpublish(name, specs) => {
            let mappings = parse_specs(&specs.specs)?;
            container::unpublish(host, &name, mappings.clone()).await?;
            describe_port_change(host, &name, "unpublished", &mappings)
        }
        Call::Status => status(host),
        Call::ListConntrack => Ok(serde_json::to_value(conntrack::flows(loaded(host)?)?)?),
        Call::CollectConntrack => {
            let timeouts = host.options.ct_timeouts.clone();
            Ok(serde_json::to_value(conntrack::collect_garbage(loaded(host)?, &timeouts)?)?)
        }
        Call::Down => down(host).await,
    }
}

fn loaded(host: &mut Host) -> Result<&mut Datapath> {
    host.existing_datapath()?.context("no datapath is loaded on this host yet; create a network first")
}

/// Parses every `--publish` value.
fn parse_specs(specs: &[String]) -> Result<Vec<publish::PortMapping>> {
    let mut all = Vec::new();
    for spec in specs {
        all.extend(publish::parse(spec)?);
    }
    Ok(all)
}

fn describe_network(host: &Host, spec: &NetworkSpec) -> Value {
    let containers: Vec<_> = host.state().containers_of(&spec.name).map(|c| c.name.clone()).collect();
    json!({
        "name": spec.name,
        "id": spec.id,
        "subnet": spec.subnet.to_string(),
        "gateway": spec.gateway.to_string(),
        "containers": containers,
    })
}

fn describe_container(spec: &ContainerSpec) -> Value {
    json!({
        "name": spec.name,
        "network": spec.network,
        "ip": spec.ip.to_string(),
        "mac": format_mac(&spec.mac),
        "netns": spec.name,
        "host_interface": spec.host_interface,
        "ports": spec.publish.iter().map(ToString::to_string).collect::<Vec<_>>(),
    })
}

/// The answer to publish/unpublish: the ports it changed and how many the container now
/// publishes (not the whole list, which may be thousands long: `container ls` has it).
fn describe_port_change(host: &Host, name: &str, what: &str, mappings: &[publish::PortMapping]) -> Result<Value> {
    Ok(json!({
        "name": name,
        what: mappings.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "port_count": host.state().container(name)?.publish.len(),
    }))
}

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

/// The socket hooks on the host cgroup (`--host-cgroup`): per hook, whether the kernel runs
/// bpfnet's program on that cgroup (BPF_PROG_QUERY), and whether its link is pinned. Null
/// when the option is off and nothing is attached.
fn host_cgroup_status(option: Option<&std::path::Path>, dp: &Datapath, program_id: impl Fn(&str) -> u32) -> Result<Value> {
    let links = dp.host_cgroup_links()?;
    let Some(path) = option else {
        return Ok(if links.is_empty() { Value::Null } else { json!({ "path": null, "links": links }) });
    };
    let cgroup = match HostCgroup::open(path) {
        Ok(cgroup) => cgroup,
        Err(e) => return Ok(json!({ "path": path, "error": format!("{e:#}"), "links": links })),
    };
    let hooks: Vec<Value> = datapath::HOST_SOCKET_PROGRAMS
        .into_iter()
        .map(|(name, attach_type)| {
            let query = bpf::cgroup_program_ids(cgroup.fd(), bpf_attach_type::from(attach_type) as u32);
            let pinned = links.iter().any(|l| l.cgroup_id == cgroup.id && l.program == name);
            match query {
                Ok(ids) => json!({
                    "hook": datapath::hook_name(attach_type), "program": name, "pinned": pinned,
                    "attached": ids.contains(&program_id(name)), "program_ids": ids,
                }),
                Err(e) => json!({ "hook": datapath::hook_name(attach_type), "program": name, "pinned": pinned, "attached": false, "error": e.to_string() }),
            }
        })
        .collect();
    Ok(json!({ "path": path, "cgroup_id": cgroup.id, "hooks": hooks }))
}

fn datapath_status(host_containers: &[(String, String)], host_cgroup: Option<&std::path::Path>, dp: &Datapath) -> Result<Value> {
    let ids: serde_json::Map<String, Value> = dp.program_ids()?.into_iter().map(|(n, id)| (n.to_owned(), json!(id))).collect();
    let id_of = |name: &str| ids[name].as_u64().unwrap_or_default() as u32;
    let mut attachments: Vec<Value> = host_containers
        .iter()
        .map(|(ifname, container)| attachment(ifname, &format!("container {container}"), id_of(program_names::FROM_ENDPOINT)))
        .collect();
    for (uplink, mode) in dp.uplinks()? {
        let program_id = id_of(mode.program());
        let mut entry = match mode {
            UplinkMode::Tc => attachment(&uplink, "uplink", program_id),
            // XDP has one program per interface, named by the link the agent pinned.
            UplinkMode::Xdp => {
                let linked = dp.uplink_link_program_id(&uplink, mode)?;
                json!({ "interface": uplink, "role": "uplink", "attached": linked == Some(program_id), "program_ids": Vec::from_iter(linked) })
            }
        };
        entry["mode"] = json!(mode);
        attachments.push(entry);
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
        "host_cgroup": host_cgroup_status(host_cgroup, dp, id_of)?,
        "conntrack": conntrack::status(dp)?,
        "counters": as_object(&snapshot.counters),
        "drops": as_object(&snapshot.drops),
    }))
}

/// A container's traffic counters, and its new flows that were over their conntrack quota.
fn host_stats(host: &mut Host, spec: &ContainerSpec) -> Option<(datapath_common::EndpointStats, u64)> {
    let dp = host.existing_datapath().ok().flatten()?;
    Some((dp.endpoint_stats(spec.stats_slot).ok()?, dp.ct_quota_hits(spec.stats_slot).ok()?))
}

/// A container with its traffic counters.
fn container_status(spec: &ContainerSpec, stats: Option<(datapath_common::EndpointStats, u64)>) -> Value {
    let mut value = describe_container(spec);
    if let Some((s, ct_quota_hits)) = stats {
        value["traffic"] = json!({
            "sent_packets": s.sent_packets, "sent_bytes": s.sent_bytes,
            "received_packets": s.received_packets, "received_bytes": s.received_bytes,
            "ct_quota_hits": ct_quota_hits,
        });
    }
    value
}

fn status(host: &mut Host) -> Result<Value> {
    let networks: Vec<_> = host.state().networks.values().cloned().collect();
    let containers: Vec<_> = host.state().containers.values().cloned().collect();
    let veths: Vec<_> = containers.iter().map(|c| (c.host_interface.clone(), c.name.clone())).collect();
    let host_cgroup = host.options.host_cgroup.clone();
    let datapath = match host.existing_datapath()? {
        Some(dp) => datapath_status(&veths, host_cgroup.as_deref(), dp)?,
        None => json!({ "loaded": false }),
    };
    Ok(json!({
        "host_netns": host.options.host_netns,
        "state_dir": host.options.state_dir,
        "bpffs": host.options.bpffs,
        "networks": networks.iter().map(|n| json!({"name": n.name, "subnet": n.subnet.to_string(), "gateway": n.gateway.to_string()})).collect::<Vec<_>>(),
        "containers": containers.iter().map(|c| container_status(c, host_stats(host, c))).collect::<Vec<_>>(),
        "datapath": datapath,
    }))
}

/// Removes everything this bpfnet host created: containers, networks, pins, state. Goes on
/// past a failing item so that one broken object does not keep the rest alive.
async fn down(host: &mut Host) -> Result<Value> {
    let mut failures = Vec::new();
    for spec in host.state().containers.values().cloned().collect::<Vec<_>>() {
        match container::teardown(host, &spec).await {
            Ok(()) => host.commit(Change::RemoveContainer { name: spec.name.clone() })?,
            Err(e) => failures.push(format!("container {}: {e:#}", spec.name)),
        }
    }
    for spec in host.state().networks.values().cloned().collect::<Vec<_>>() {
        match network::teardown(host, &spec).await {
            Ok(()) => host.commit(Change::RemoveNetwork { name: spec.name.clone() })?,
            Err(e) => failures.push(format!("network {}: {e:#}", spec.name)),
        }
    }
    if !failures.is_empty() {
        anyhow::bail!("bpfnet down could not remove everything:\n  {}", failures.join("\n  "));
    }
    host.clear()?;
    datapath::destroy(&host.options.bpffs)
        .with_context(|| format!("removing pins under {}", host.options.bpffs.display()))?;
    Ok(json!({ "removed": "all networks, containers and pins" }))
}
