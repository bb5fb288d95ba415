//! Bringing the kernel in line with the saved state when the agent starts: operations that
//! were cut off are finished (removals) or rolled back (creations), what is missing is
//! recreated, what exists is adopted as it is (pinned programs, maps and conntrack are kept:
//! no packet notices the restart), and what no longer belongs is removed.
use std::collections::HashSet;

use anyhow::Result;
use datapath_common::{ipv4_be, ipv6_be};

use crate::{
    host::attachment,
    host::container,
    host::network,
    host::state::{Change, Pending},
    host::Host,
    sys::netns,
};

/// What reconciliation changed, for the log.
#[derive(Debug, Default)]
pub struct Report {
    pub rolled_back: Vec<String>,
    pub recreated: Vec<String>,
    pub removed_leftovers: Vec<String>,
    /// Attachments whose namespace the engine removed (or that could not be made again).
    pub vanished: Vec<String>,
}

pub async fn reconcile(host: &mut Host) -> Result<Report> {
    let mut report = Report::default();
    // 1. Operations cut off: a pending creation is rolled back (the client got no answer and
    //    may retry it), a pending removal finished.
    for spec in host.state().containers.values().filter(|c| c.pending.is_some()).cloned().collect::<Vec<_>>() {
        container::teardown(host, &spec).await?;
        host.commit(Change::RemoveContainer { name: spec.name.clone() })?;
        report.rolled_back.push(format!("container {} ({:?})", spec.name, spec.pending.unwrap_or(Pending::Create)));
    }
    for spec in host.state().networks.values().filter(|n| n.pending.is_some()).cloned().collect::<Vec<_>>() {
        network::teardown(host, &spec).await?;
        host.commit(Change::RemoveNetwork { name: spec.name.clone() })?;
        report.rolled_back.push(format!("network {}", spec.name));
    }
    if host.state().networks.is_empty() && !crate::datapath::Datapath::is_pinned(&host.options.bpffs) {
        return Ok(report);
    }

    // 2. Everything in the state, in the kernel (each step is idempotent).
    for spec in host.state().networks.values().cloned().collect::<Vec<_>>() {
        network::apply(host, &spec).await?;
    }
    for spec in host.state().containers.values().cloned().collect::<Vec<_>>() {
        let net = host.state().network(&spec.network)?.clone();
        if let Some(attached) = &spec.attached {
            // The engine's namespace: gone (the engine removed it without a detach), only
            // bpfnet's part is cleaned up; present, it is repaired like a container's.
            if !attachment::namespace_alive(attached) {
                container::teardown(host, &spec).await?;
                host.commit(Change::RemoveContainer { name: spec.name.clone() })?;
                report.vanished.push(spec.name.clone());
                continue;
            }
        }
        let host_end = host.netlink.link_by_name(&spec.host_interface).await?.is_some();
        if spec.handed_over.is_some() && !host_end {
            // The pair went with the container its engine moved the other end into: the
            // engine's endpoint is gone (its delete may have come while the agent was down).
            container::teardown(host, &spec).await?;
            host.commit(Change::RemoveContainer { name: spec.name.clone() })?;
            report.vanished.push(spec.name.clone());
            continue;
        }
        let intact = (!spec.in_own_netns() || netns::exists(&spec.name)) && host_end;
        if intact {
            container::register(host, &spec, &net).await?;
            continue;
        }
        container::teardown(host, &spec).await?;
        match container::apply(host, &spec, &net).await {
            Ok(()) => report.recreated.push(spec.name.clone()),
            // Something else took the interface's place in the engine's namespace: an agent
            // that cannot start is worse than one attachment fewer.
            Err(e) if spec.attached.is_some() => {
                tracing::warn!("attachment {} could not be made again, removed: {e:#}", spec.name);
                container::teardown(host, &spec).await?;
                host.commit(Change::RemoveContainer { name: spec.name.clone() })?;
                report.vanished.push(spec.name.clone());
            }
            Err(e) => return Err(e),
        }
    }

    // 3. Nothing else: entries, links and veths that no container or network of the state owns.
    let state = host.state().clone();
    let ips: HashSet<u32> = state.containers.values().map(|c| ipv4_be(c.ip.octets())).collect();
    let ips6: HashSet<_> = state.containers.values().filter_map(|c| c.ip6).map(|ip| ipv6_be(ip.octets())).collect();
    let ids: HashSet<u32> = state.networks.values().map(|n| n.id).collect();
    let published: HashSet<_> =
        state.containers.values().flat_map(|c| c.publish.iter().filter_map(|m| m.map_key())).collect();
    let published6: HashSet<_> = state
        .containers
        .values()
        .filter(|c| c.ip6.is_some())
        .flat_map(|c| c.publish.iter().filter_map(|m| m.map_key6()))
        .collect();
    // A handed-over endpoint's container end is in the host namespace until its engine moves it.
    let peers: Vec<String> =
        state.containers.values().filter(|c| c.handed_over.is_some()).map(container::peer_interface).collect();
    let veths: HashSet<&str> =
        state.containers.values().map(|c| c.host_interface.as_str()).chain(peers.iter().map(String::as_str)).collect();
    let datapath = host.datapath()?;
    let contents = datapath.contents()?;
    for ip in contents.endpoint_ips.into_iter().filter(|ip| !ips.contains(ip)) {
        datapath.remove_endpoint(ip)?;
        report.removed_leftovers.push(format!("endpoint {}", std::net::Ipv4Addr::from(ip.to_ne_bytes())));
    }
    for ip in contents.endpoint6_ips.into_iter().filter(|ip| !ips6.contains(ip)) {
        datapath.remove_endpoint6(ip)?;
        let address = std::net::Ipv6Addr::from(datapath_common::ipv6_octets(ip));
        report.removed_leftovers.push(format!("endpoint {address}"));
    }
    for id in contents.networks.into_iter().filter(|id| !ids.contains(id)) {
        datapath.remove_network(id)?;
        report.removed_leftovers.push(format!("network id {id}"));
    }
    for key in contents.published_ports.into_iter().filter(|k| !published.contains(k)) {
        datapath.unpublish(&key)?;
        report.removed_leftovers.push(format!("published port {}", u16::from_be(key.port)));
    }
    for key in contents.published_ports6.into_iter().filter(|k| !published6.contains(k)) {
        datapath.unpublish6(&key)?;
        report.removed_leftovers.push(format!("published port {} (IPv6)", u16::from_be(key.port)));
    }
    for ifname in contents.linked_interfaces.into_iter().filter(|i| !veths.contains(i.as_str())) {
        datapath.detach_endpoint(&ifname)?;
        report.removed_leftovers.push(format!("link of {ifname}"));
    }
    for link in host.netlink.links().await? {
        let ours = crate::host::names::is_host_interface(&link.name);
        if ours && !veths.contains(link.name.as_str()) && link.kind.as_deref() == Some("veth") {
            host.netlink.delete_link(&link.name).await?;
            report.removed_leftovers.push(format!("veth {}", link.name));
        }
    }
    Ok(report)
}
