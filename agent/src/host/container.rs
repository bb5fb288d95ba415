//! Containers: a named network namespace with eth0, one end of a veth pair whose host-side end
//! carries the from_endpoint program. Creating one either completes or is rolled back by
//! `teardown`, which removes whatever part of it exists and is safe to run at any point.
use std::{io::Read, net::Ipv4Addr};

use anyhow::{bail, Context, Result};
use datapath_common::{ipv4_be, Endpoint};
use ipnet::{IpNet, Ipv4Net};

use crate::{
    host::ipam,
    host::names,
    host::publish::PortMapping,
    host::state::{Attached, Change, ContainerSpec, HandedOver, NetworkSpec, Pending},
    host::Host,
    sys::netns,
};

/// The container's interface, as Docker names it.
pub const CONTAINER_IFNAME: &str = "eth0";

pub async fn create(
    host: &mut Host,
    name: &str,
    network: &str,
    ip: Option<Ipv4Addr>,
    publish: Vec<PortMapping>,
) -> Result<ContainerSpec> {
    names::validate("container", name)?;
    if host.state().containers.contains_key(name) {
        bail!("a container named {name:?} already exists; choose another name or remove it first");
    }
    if netns::exists(name) {
        bail!("a network namespace named {name:?} already exists on this machine (not made by this bpfnet host); choose another name");
    }
    create_endpoint(host, name, network, ip, publish, Placement::OwnNamespace).await
}

/// Where the container end of an endpoint goes.
pub(crate) enum Placement {
    /// Into a namespace bpfnet makes, named after the container.
    OwnNamespace,
    /// Into an engine's namespace, where bpfnet configures it.
    Attached(Attached),
    /// Nowhere: it stays in the host namespace for the engine to move and configure (Docker's
    /// remote driver), with the MAC address the engine chose, if it chose one.
    HandedOver(HandedOver, Option<[u8; 6]>),
}

/// What bpfnet-made containers, attached namespaces and handed-over endpoints share: an
/// address from the network's IPAM, a veth, the datapath's entries and published ports,
/// journaled as pending first and rolled back (by `teardown`) when a step fails. `name` is
/// checked free by the caller.
pub(crate) async fn create_endpoint(
    host: &mut Host,
    name: &str,
    network: &str,
    ip: Option<Ipv4Addr>,
    publish: Vec<PortMapping>,
    placement: Placement,
) -> Result<ContainerSpec> {
    let net = host.state().network(network)?.clone();
    let used: Vec<Ipv4Addr> = host.state().containers_of(network).map(|c| c.ip).collect();
    let ip = match ip {
        Some(ip) => {
            ipam::check_host_address("--ip", ip, net.subnet)?;
            if ip == net.gateway {
                bail!("--ip {ip} is the gateway of network {network:?}; choose another address");
            }
            if let Some(owner) = host.state().containers_of(network).find(|c| c.ip == ip) {
                bail!("--ip {ip} is already in use by container {:?}; choose another address", owner.name);
            }
            ip
        }
        None => ipam::allocate(net.subnet, net.gateway, &used)?,
    };
    host.state().published().check_free(&publish)?;
    host.sync_uplink().await?;
    let (host_interface, _) = names::host_interface(unused_seed(host).await?);
    let stats_slot = (0..datapath_common::MAX_ENDPOINTS)
        .find(|slot| !host.state().containers.values().any(|c| c.stats_slot == *slot))
        .context("no counter slot left: this host has as many containers as bpfnet supports")?;
    let (attached, handed_over, mac) = match placement {
        Placement::OwnNamespace => (None, None, None),
        Placement::Attached(attached) => (Some(attached), None, None),
        Placement::HandedOver(handed_over, mac) => (None, Some(handed_over), mac),
    };
    let spec = ContainerSpec {
        name: name.to_owned(),
        network: network.to_owned(),
        ip,
        mac: mac.unwrap_or_else(|| ipam::container_mac(ip)),
        host_interface,
        stats_slot,
        publish,
        pending: Some(Pending::Create),
        attached,
        handed_over,
    };
    host.commit(Change::AddContainer(spec.clone()))?;
    crate::host::failpoint::hit("container-create:journaled");
    if let Err(err) = apply(host, &spec, &net).await {
        if let Err(cleanup) = teardown(host, &spec).await {
            tracing::error!("rolling back container {name}: {cleanup:#}");
            return Err(
                err.context(format!("creating container {name} (the agent finishes the roll-back when it restarts)"))
            );
        }
        host.commit(Change::RemoveContainer { name: name.to_owned() })?;
        return Err(err.context(format!("creating container {name}")));
    }
    crate::host::failpoint::hit("container-create:applied");
    host.commit(Change::SetContainerPending { name: name.to_owned(), pending: None })?;
    Ok(ContainerSpec { pending: None, ..spec })
}

/// A random veth suffix not used by any interface of the host.
async fn unused_seed(host: &Host) -> Result<u32> {
    loop {
        let mut bytes = [0u8; 4];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .context("reading /dev/urandom")?;
        let seed = u32::from_ne_bytes(bytes);
        let (host_if, peer) = names::host_interface(seed);
        let taken = host.state().containers.values().any(|c| c.host_interface == host_if)
            || host.netlink.link_by_name(&host_if).await?.is_some()
            || host.netlink.link_by_name(&peer).await?.is_some();
        if !taken {
            return Ok(seed);
        }
    }
}

/// The container end of the veth pair while it is in the host namespace (the name a
/// handed-over endpoint keeps until its engine moves it, and gets back when it returns).
pub fn peer_interface(spec: &ContainerSpec) -> String {
    spec.host_interface.replacen("bn", "bp", 1)
}

/// Builds the container in the kernel, in an order where every step can be undone by
/// `teardown` and where the program sees the endpoint in its maps before its first packet.
/// A bpfnet container's namespace is made here; an attached one must exist (and be the one
/// that was attached); a handed-over endpoint's container end stays in the host namespace.
pub async fn apply(host: &mut Host, spec: &ContainerSpec, net: &NetworkSpec) -> Result<()> {
    let peer = peer_interface(spec);
    if spec.handed_over.is_some() {
        return apply_handed_over(host, spec, net, &peer).await;
    }
    let netns = spec.netns();
    let ifname = spec.ifname().to_owned();
    match &spec.attached {
        None => {
            netns::create(&spec.name)?;
            // bpfnet networks are IPv4 only; as Docker does for such networks, no IPv6 inside
            // (no router solicitations or MLD reports that the datapath would only drop).
            netns::run_in(&spec.name, || {
                for conf in ["all", "default"] {
                    let path = format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6");
                    std::fs::write(&path, "1").with_context(|| format!("writing {path}"))?;
                }
                Ok(())
            })?;
        }
        Some(attached) => crate::host::attachment::check_identity(attached)?,
    }

    let gateway_mac = ipam::gateway_mac(net.id);
    host.netlink.create_veth(&spec.host_interface, gateway_mac, &peer, spec.mac, None).await?;
    crate::host::failpoint::hit("container-create:veth");
    host.datapath()?.reset_endpoint_stats(spec.stats_slot)?;
    let ns_fd = netns.open()?;
    host.netlink.move_to_netns(&peer, std::os::fd::AsFd::as_fd(&ns_fd)).await?;

    let address = IpNet::V4(Ipv4Net::new(spec.ip, net.subnet.prefix_len())?);
    let gateway = net.gateway;
    let own_netns = spec.attached.is_none();
    let inside = ifname.clone();
    netns
        .netlink_in(move |nl| async move {
            nl.rename(&peer, &inside).await?;
            if own_netns {
                nl.set_up("lo").await?;
            } else {
                // The rest of an engine's namespace is the engine's: IPv6 off on this
                // interface only.
                let path = format!("/proc/sys/net/ipv6/conf/{inside}/disable_ipv6");
                if std::path::Path::new(&path).exists() {
                    std::fs::write(&path, "1").with_context(|| format!("writing {path}"))?;
                }
            }
            nl.add_address(&inside, address).await?;
            nl.set_up(&inside).await?;
            nl.replace_default_route(gateway, &inside).await
        })
        .await
        .with_context(|| format!("configuring {ifname} in namespace {netns}"))?;

    host_side(host, spec, net).await?;
    register(host, spec, net).await
}

/// A handed-over endpoint: the pair in the host namespace. The container end is left down and
/// unaddressed: its engine moves it, renames it, and gives it the address and routes. Its MAC
/// and GRO setting travel with it.
async fn apply_handed_over(host: &mut Host, spec: &ContainerSpec, net: &NetworkSpec, peer: &str) -> Result<()> {
    host.netlink.create_veth(&spec.host_interface, ipam::gateway_mac(net.id), peer, spec.mac, None).await?;
    crate::host::failpoint::hit("container-create:veth");
    host.datapath()?.reset_endpoint_stats(spec.stats_slot)?;
    // bpfnet networks are IPv4 only: no router solicitations or MLD reports from it.
    let path = format!("/proc/sys/net/ipv6/conf/{peer}/disable_ipv6");
    if std::path::Path::new(&path).exists() {
        std::fs::write(&path, "1").with_context(|| format!("writing {path}"))?;
    }
    host_side(host, spec, net).await?;
    register(host, spec, net).await
}

/// The host end of the pair: forwarding on, up, and the route and neighbour to the container.
async fn host_side(host: &mut Host, spec: &ContainerSpec, net: &NetworkSpec) -> Result<()> {
    // bpf_fib_lookup answers for packets from this interface only if it may forward; the host
    // stack itself never forwards them (the datapath redirects or hands over only the gateway's).
    let forwarding = format!("/proc/sys/net/ipv4/conf/{}/forwarding", spec.host_interface);
    std::fs::write(&forwarding, "1").with_context(|| format!("writing {forwarding}"))?;
    // The host reaches the container over its veth, from the gateway address, with no ARP.
    host.netlink.set_up(&spec.host_interface).await?;
    host.netlink.replace_neighbour(&spec.host_interface, spec.ip, spec.mac).await?;
    host.netlink.replace_route(Ipv4Net::new(spec.ip, 32)?, &spec.host_interface, Some(net.gateway)).await
}

/// Puts a container into the datapath: its endpoint entries, its published ports, and the
/// program on its veth. Idempotent: a restarted agent runs it again for every container.
pub async fn register(host: &mut Host, spec: &ContainerSpec, net: &NetworkSpec) -> Result<()> {
    let ifindex = host
        .netlink
        .link_by_name(&spec.host_interface)
        .await?
        .with_context(|| format!("{} vanished while it was being set up", spec.host_interface))?
        .index;
    let datapath = host.datapath()?;
    datapath.upsert_endpoint(&Endpoint {
        host_ifindex: ifindex,
        network_id: net.id,
        ip: ipv4_be(spec.ip.octets()),
        mac: spec.mac,
        gateway_mac: ipam::gateway_mac(net.id),
        stats_slot: spec.stats_slot,
        gateway: ipv4_be(net.gateway.octets()),
    })?;
    for mapping in &spec.publish {
        datapath.publish(&mapping.map_key(), &mapping.map_target(spec.ip))?;
    }
    datapath.attach_endpoint(&spec.host_interface)?;
    // The XDP uplink program can deliver into the container only if its end runs NAPI (see
    // ethtool.rs). Set here, not at creation, so that containers of older agents get it too.
    if spec.handed_over.is_some() {
        // Reachable only while the container end is in the host namespace (before the engine
        // moves it, or after it returned); the setting goes with the device.
        let peer = peer_interface(spec);
        if host.netlink.link_by_name(&peer).await?.is_some() {
            crate::sys::ethtool::set_gro(&peer, true).with_context(|| format!("preparing {peer} for XDP delivery"))?;
        }
        return Ok(());
    }
    let ifname = spec.ifname().to_owned();
    let inside = ifname.clone();
    spec.netns()
        .run_in(move || crate::sys::ethtool::set_gro(&inside, true))
        .with_context(|| format!("preparing {ifname} of {} for XDP delivery", spec.name))
}

/// Removes whatever exists of a container: link pin, map entries, veth pair (with its route
/// and neighbour, and the routes it had inside), and the namespace if bpfnet made it (an
/// attached one stays: it is the engine's). Idempotent.
pub async fn teardown(host: &mut Host, spec: &ContainerSpec) -> Result<()> {
    if let Some(datapath) = host.existing_datapath()? {
        // Unpublished first: no new flow may be sent to a container that is going away.
        for mapping in &spec.publish {
            datapath.unpublish(&mapping.map_key())?;
        }
        datapath.detach_endpoint(&spec.host_interface)?;
        datapath.remove_endpoint(ipv4_be(spec.ip.octets()))?;
    }
    host.netlink.delete_link(&spec.host_interface).await?;
    // The peer is still in the host namespace if moving it failed.
    host.netlink.delete_link(&peer_interface(spec)).await?;
    if spec.in_own_netns() {
        netns::delete(&spec.name)?;
    }
    Ok(())
}

pub async fn remove(host: &mut Host, name: &str) -> Result<()> {
    host.commit(Change::SetContainerPending { name: name.to_owned(), pending: Some(Pending::Remove) })?;
    crate::host::failpoint::hit("container-remove:journaled");
    let spec = host.state().container(name)?.clone();
    teardown(host, &spec).await.with_context(|| format!("removing container {name}"))?;
    crate::host::failpoint::hit("container-remove:torn-down");
    host.commit(Change::RemoveContainer { name: name.to_owned() })
}

/// Publishes more ports of a running container: one map update each, then one journal
/// record. Nothing here depends on how many ports the host publishes already.
pub async fn publish(host: &mut Host, name: &str, mappings: Vec<PortMapping>) -> Result<()> {
    let change = Change::Publish { container: name.to_owned(), ports: mappings.clone() };
    host.state().check(&change)?;
    let ip = host.state().container(name)?.ip;
    host.ensure_uplink().await?;
    let datapath = host.datapath()?;
    for (done, mapping) in mappings.iter().enumerate() {
        if let Err(err) = datapath.publish(&mapping.map_key(), &mapping.map_target(ip)) {
            for undo in &mappings[..done] {
                datapath.unpublish(&undo.map_key())?;
            }
            return Err(err.context(format!("publishing {mapping} for {name}")));
        }
    }
    // Killed here, the agent removes these entries when it restarts (no record owns them):
    // the client got no answer and may retry.
    crate::host::failpoint::hit("publish:mapped");
    if let Err(err) = host.commit(change) {
        let datapath = host.datapath()?;
        for undo in &mappings {
            datapath.unpublish(&undo.map_key())?;
        }
        return Err(err.context(format!("publishing ports of {name}")));
    }
    // Killed here, the restarted agent keeps them: the record is durable.
    crate::host::failpoint::hit("publish:journaled");
    Ok(())
}

/// Unpublishes ports of a container: new connections to them are refused at once; flows
/// already established keep going until they end or expire (as with Docker's conntrack).
pub async fn unpublish(host: &mut Host, name: &str, mappings: Vec<PortMapping>) -> Result<()> {
    let change = Change::Unpublish { container: name.to_owned(), ports: mappings.clone() };
    host.state().check(&change)?;
    let ip = host.state().container(name)?.ip;
    let datapath = host.datapath()?;
    for mapping in &mappings {
        datapath.unpublish(&mapping.map_key())?;
    }
    // Killed before the record is written, the restarted agent publishes them again.
    crate::host::failpoint::hit("unpublish:unmapped");
    if let Err(err) = host.commit(change) {
        let datapath = host.datapath()?;
        for undo in &mappings {
            datapath.publish(&undo.map_key(), &undo.map_target(ip))?;
        }
        return Err(err.context(format!("unpublishing ports of {name}")));
    }
    crate::host::failpoint::hit("unpublish:journaled");
    Ok(())
}
