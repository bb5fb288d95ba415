//! What the agent does for each API call: the operations of network.rs, container.rs and
//! conntrack.rs on the host it owns, answered as JSON.
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use anyhow::{Context, Result};
use aya::programs::{SchedClassifier, TcAttachType};
use datapath_common::program_names;
use serde_json::Value;

use aya_obj::generated::bpf_attach_type;

use crate::{
    api::{
        Attachment, AttachmentInfo, Call, CgroupLink, ContainerInfo, DatapathStatus, Detached, GcReport,
        HostCgroupStatus, NetworkInfo, NetworkSummary, PortChange, Removed, RunningDatapath, SocketHook, Status,
        Traffic, UplinkStatus,
    },
    daemon::{metrics::Metrics, monitor::Monitor},
    datapath,
    datapath::{Datapath, UplinkMode},
    host::attachment,
    host::conntrack,
    host::container,
    host::ipam::format_mac,
    host::network,
    host::publish,
    host::state::{Change, ContainerSpec, NetworkSpec},
    host::Host,
    sys::bpf,
    sys::cgroup::HostCgroup,
};

/// Runs `call` on `host`; `monitor` and `metrics` hear of what the garbage collection did.
pub async fn execute(host: &mut Host, call: Call, monitor: &Monitor, metrics: &Metrics) -> Result<Value> {
    let answer = match call {
        Call::CreateNetwork(c) => {
            let spec = network::create(host, &c.name, &c.subnets, &c.gateways, c.ipv6).await?;
            to_json(describe_network(host, &spec))
        }
        Call::ListNetworks => {
            to_json(host.state().networks.values().map(|n| describe_network(host, n)).collect::<Vec<_>>())
        }
        Call::InspectNetwork(name) => to_json(describe_network(host, host.state().network(&name)?)),
        Call::RemoveNetwork(name) => {
            network::remove(host, &name).await?;
            to_json(Removed { removed: name })
        }
        Call::CreateContainer(c) => {
            let mappings = parse_specs(&c.publish)?;
            let fixed = container::Fixed { ip: c.ip, ip6: c.ip6 };
            let spec = container::create(host, &c.name, &c.network, fixed, mappings).await?;
            to_json(describe_container(&spec))
        }
        Call::InspectContainer(name) => {
            let spec = host.state().container(&name)?.clone();
            to_json(container_status(host, &spec))
        }
        Call::ListContainers => {
            let specs: Vec<ContainerSpec> = host.state().containers.values().cloned().collect();
            to_json(specs.iter().map(|c| container_status(host, c)).collect::<Vec<_>>())
        }
        Call::RemoveContainer(name) => {
            container::remove(host, &name).await?;
            to_json(Removed { removed: name })
        }
        Call::Attach(a) => {
            let request = attachment::Request {
                netns: &a.netns,
                container_id: &a.container_id,
                ifname: &a.ifname,
                network: &a.network,
                fixed: container::Fixed { ip: a.ip, ip6: a.ip6 },
                publish: parse_specs(&a.publish)?,
            };
            let spec = attachment::attach(host, request).await?;
            to_json(describe_attachment(host, &spec)?)
        }
        Call::ListAttachments => {
            let attached = host.state().containers.values().filter(|c| c.attached.is_some());
            to_json(attached.map(|c| describe_attachment(host, c)).collect::<Result<Vec<_>>>()?)
        }
        Call::CheckAttachment(id, ifname) => {
            let spec = attachment::check(host, &id, &ifname).await?;
            to_json(describe_attachment(host, &spec)?)
        }
        Call::Detach(id, ifname) => {
            let detached = attachment::detach(host, &id, &ifname).await?;
            to_json(Detached { container_id: id, ifname, detached })
        }
        Call::Publish(name, specs) => {
            let mappings = parse_specs(&specs.specs)?;
            container::publish(host, &name, mappings.clone()).await?;
            let published = mappings.iter().map(ToString::to_string).collect();
            to_json(PortChange { published, unpublished: vec![], port_count: port_count(host, &name)?, name })
        }
        Call::Unpublish(name, specs) => {
            let mappings = parse_specs(&specs.specs)?;
            container::unpublish(host, &name, mappings.clone()).await?;
            let unpublished = mappings.iter().map(ToString::to_string).collect();
            to_json(PortChange { published: vec![], unpublished, port_count: port_count(host, &name)?, name })
        }
        Call::Status => to_json(status(host)?),
        Call::ListConntrack => to_json(conntrack::list(loaded(host)?)?),
        Call::CollectConntrack => {
            loaded(host)?;
            to_json(collect_garbage(host, monitor, metrics)?.expect("a datapath is loaded"))
        }
        Call::Down => to_json(down(host).await?),
        Call::Monitor(_) => anyhow::bail!("the monitor is a stream, served by its own route"),
    };
    Ok(answer)
}

/// Expires idle flows now, telling the monitor's listeners of each; None when no datapath
/// is loaded.
pub fn collect_garbage(host: &mut Host, monitor: &Monitor, metrics: &Metrics) -> Result<Option<GcReport>> {
    let timeouts = host.options.ct_timeouts.clone();
    let Some(dp) = host.existing_datapath()? else { return Ok(None) };
    let started = Instant::now();
    let report = conntrack::collect_garbage(dp, &timeouts, &mut |key, entry| monitor.flow_expired(key, entry))?;
    metrics.gc_done(started.elapsed(), &report);
    Ok(Some(report))
}

fn to_json(answer: impl serde::Serialize) -> Value {
    serde_json::to_value(answer).expect("API answers always serialize")
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

fn port_count(host: &Host, name: &str) -> Result<usize> {
    Ok(host.state().container(name)?.publish.len())
}

fn describe_network(host: &Host, spec: &NetworkSpec) -> NetworkInfo {
    NetworkInfo {
        name: spec.name.clone(),
        id: spec.id,
        subnet: spec.subnet.to_string(),
        gateway: spec.gateway.to_string(),
        subnet6: spec.ipv6.map(|v6| v6.subnet.to_string()),
        gateway6: spec.ipv6.map(|v6| v6.gateway.to_string()),
        containers: host.state().containers_of(&spec.name).map(|c| c.name.clone()).collect(),
    }
}

fn describe_attachment(host: &Host, spec: &ContainerSpec) -> Result<AttachmentInfo> {
    let attached = spec.attached.as_ref().context("not an attachment")?;
    let net = host.state().network(&spec.network)?;
    Ok(AttachmentInfo {
        container_id: attached.container_id.clone(),
        ifname: attached.ifname.clone(),
        netns: attached.netns.display().to_string(),
        network: spec.network.clone(),
        address: format!("{}/{}", spec.ip, net.subnet.prefix_len()),
        gateway: net.gateway.to_string(),
        address6: spec.ip6.zip(net.ipv6).map(|(ip6, v6)| format!("{ip6}/{}", v6.subnet.prefix_len())),
        gateway6: spec.ip6.and(net.ipv6).map(|v6| v6.gateway.to_string()),
        mac: format_mac(&spec.mac),
        host_interface: spec.host_interface.clone(),
        host_mac: format_mac(&crate::host::ipam::gateway_mac(net.id)),
        ports: spec.publish.iter().map(ToString::to_string).collect(),
    })
}

fn describe_container(spec: &ContainerSpec) -> ContainerInfo {
    ContainerInfo {
        name: spec.name.clone(),
        network: spec.network.clone(),
        ip: spec.ip.to_string(),
        ip6: spec.ip6.map(|ip6| ip6.to_string()),
        mac: format_mac(&spec.mac),
        netns: match &spec.handed_over {
            Some(h) => format!("{}'s (endpoint {})", h.engine, h.endpoint_id),
            None => spec.netns().to_string(),
        },
        host_interface: spec.host_interface.clone(),
        ports: spec.publish.iter().map(ToString::to_string).collect(),
        traffic: None,
    }
}

/// What the kernel says is attached to an interface's tcx ingress (program ids).
fn attached_program_ids(ifname: &str) -> Vec<u32> {
    SchedClassifier::query_tcx(ifname, TcAttachType::Ingress)
        .map(|(_, programs)| programs.iter().map(|p| p.id()).collect())
        .unwrap_or_default()
}

/// One attachment: whether the kernel has `program` on the interface's tcx ingress.
fn attachment(ifname: &str, role: &str, program_id: u32) -> Attachment {
    let ids = attached_program_ids(ifname);
    Attachment {
        interface: ifname.to_owned(),
        role: role.to_owned(),
        attached: ids.contains(&program_id),
        program_ids: ids,
        mode: None,
    }
}

/// The socket hooks on the host cgroup (`--host-cgroup`): per hook, whether the kernel runs
/// bpfnet's program on that cgroup (BPF_PROG_QUERY), and whether its link is pinned. None
/// when the option is off and nothing is attached.
fn host_cgroup_status(
    option: Option<&std::path::Path>,
    dp: &Datapath,
    program_id: impl Fn(&str) -> u32,
) -> Result<Option<HostCgroupStatus>> {
    let links = dp.host_cgroup_links()?;
    let as_api = |links: &[datapath::HostCgroupLink]| -> Vec<CgroupLink> {
        links.iter().map(|l| CgroupLink { cgroup_id: l.cgroup_id, program: l.program.clone() }).collect()
    };
    let empty = HostCgroupStatus { path: None, cgroup_id: None, error: None, hooks: vec![], links: vec![] };
    let Some(path) = option else {
        return Ok((!links.is_empty()).then(|| HostCgroupStatus { links: as_api(&links), ..empty }));
    };
    let cgroup = match HostCgroup::open(path) {
        Ok(cgroup) => cgroup,
        Err(e) => {
            return Ok(Some(HostCgroupStatus {
                path: Some(path.to_owned()),
                error: Some(format!("{e:#}")),
                links: as_api(&links),
                ..empty
            }))
        }
    };
    let hooks = datapath::HOST_SOCKET_PROGRAMS
        .into_iter()
        .map(|(name, attach_type)| {
            let query = bpf::cgroup_program_ids(cgroup.fd(), bpf_attach_type::from(attach_type) as u32);
            let hook = SocketHook {
                hook: datapath::hook_name(attach_type).to_owned(),
                program: name.to_owned(),
                pinned: links.iter().any(|l| l.cgroup_id == cgroup.id && l.program == name),
                attached: false,
                program_ids: vec![],
                error: None,
            };
            match query {
                Ok(ids) => SocketHook { attached: ids.contains(&program_id(name)), program_ids: ids, ..hook },
                Err(e) => SocketHook { error: Some(e.to_string()), ..hook },
            }
        })
        .collect();
    Ok(Some(HostCgroupStatus { path: Some(path.to_owned()), cgroup_id: Some(cgroup.id), hooks, ..empty }))
}

pub(super) fn datapath_status(
    host_containers: &[(String, String)],
    host_cgroup: Option<&std::path::Path>,
    dp: &Datapath,
) -> Result<RunningDatapath> {
    let program_ids: BTreeMap<String, u32> = dp.program_ids()?.into_iter().map(|(n, id)| (n.to_owned(), id)).collect();
    let id_of = |name: &str| program_ids.get(name).copied().unwrap_or_default();
    let mut attachments: Vec<Attachment> = host_containers
        .iter()
        .map(|(ifname, container)| {
            attachment(ifname, &format!("container {container}"), id_of(program_names::FROM_ENDPOINT))
        })
        .collect();
    for (uplink, mode) in dp.uplinks()? {
        let program_id = id_of(mode.program());
        let entry = match mode {
            UplinkMode::Tc => attachment(&uplink, "uplink", program_id),
            // XDP has one program per interface, named by the link the agent pinned.
            UplinkMode::Xdp => {
                let linked = dp.uplink_link_program_id(&uplink, mode)?;
                Attachment {
                    interface: uplink.clone(),
                    role: "uplink".into(),
                    attached: linked == Some(program_id),
                    program_ids: Vec::from_iter(linked),
                    mode: None,
                }
            }
        };
        attachments.push(Attachment { mode: Some(mode.name().to_owned()), ..entry });
    }
    let snapshot = dp.snapshot()?;
    let as_map = |pairs: &[(&str, u64)]| pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    let config = dp.config()?;
    let config6 = dp.config6()?;
    Ok(RunningDatapath {
        attachments,
        uplink: UplinkStatus {
            ifindex: config.uplink_ifindex,
            masquerade_address: (config.uplink_ifindex != 0)
                .then(|| Ipv4Addr::from(config.uplink_ip.to_ne_bytes()).to_string()),
            masquerade_address6: (config6.uplink_ip != [0; 4])
                .then(|| Ipv6Addr::from(datapath_common::ipv6_octets(config6.uplink_ip)).to_string()),
            nat_ports: [config.nat_port_min, config.nat_port_max],
            cluster_cidr: (config.cluster_mask != 0).then(|| {
                let prefix = u32::from_be(config.cluster_mask).leading_ones();
                format!("{}/{prefix}", Ipv4Addr::from(config.cluster_net.to_ne_bytes()))
            }),
        },
        host_cgroup: host_cgroup_status(host_cgroup, dp, id_of)?,
        program_ids: program_ids.clone(),
        conntrack: conntrack::status(dp)?,
        counters: as_map(&snapshot.counters),
        drops: as_map(&snapshot.drops),
    })
}

/// A container with its traffic counters, when a datapath is loaded.
fn container_status(host: &mut Host, spec: &ContainerSpec) -> ContainerInfo {
    let traffic = host.existing_datapath().ok().flatten().and_then(|dp| traffic(dp, spec));
    ContainerInfo { traffic, ..describe_container(spec) }
}

/// A container's counters: its traffic, its drops, and its new flows that were over their
/// conntrack quota.
pub(super) fn traffic(dp: &Datapath, spec: &ContainerSpec) -> Option<Traffic> {
    let s = dp.endpoint_stats(spec.stats_slot).ok()?;
    Some(Traffic {
        sent_packets: s.sent_packets,
        sent_bytes: s.sent_bytes,
        received_packets: s.received_packets,
        received_bytes: s.received_bytes,
        dropped_packets: dp.endpoint_drops(spec.stats_slot).ok()?,
        ct_quota_hits: dp.ct_quota_hits(spec.stats_slot).ok()?,
    })
}

fn status(host: &mut Host) -> Result<Status> {
    let networks: Vec<_> = host.state().networks.values().cloned().collect();
    let containers: Vec<_> = host.state().containers.values().cloned().collect();
    let veths: Vec<_> = containers.iter().map(|c| (c.host_interface.clone(), c.name.clone())).collect();
    let host_cgroup = host.options.host_cgroup.clone();
    let running = match host.existing_datapath()? {
        Some(dp) => Some(datapath_status(&veths, host_cgroup.as_deref(), dp)?),
        None => None,
    };
    Ok(Status {
        host_netns: host.options.host_netns.clone(),
        state_dir: host.options.state_dir.clone(),
        bpffs: host.options.bpffs.clone(),
        networks: networks
            .iter()
            .map(|n| NetworkSummary {
                name: n.name.clone(),
                subnet: n.subnet.to_string(),
                gateway: n.gateway.to_string(),
                subnet6: n.ipv6.map(|v6| v6.subnet.to_string()),
                gateway6: n.ipv6.map(|v6| v6.gateway.to_string()),
            })
            .collect(),
        containers: containers.iter().map(|c| container_status(host, c)).collect(),
        datapath: DatapathStatus { loaded: running.is_some(), running },
    })
}

/// Removes everything this bpfnet host created: containers, networks, pins, state. Goes on
/// past a failing item so that one broken object does not keep the rest alive.
async fn down(host: &mut Host) -> Result<Removed> {
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
    Ok(Removed { removed: "all networks, containers and pins".into() })
}
