//! Containers: a named network namespace with eth0, one end of a veth pair whose host-side end
//! carries the from_endpoint program. Creating one either completes or is rolled back by
//! `teardown`, which removes whatever part of it exists and is safe to run at any point.
use std::{
    io::Read,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{bail, Context, Result};
use datapath_common::{ipv4_be, ipv6_be, Endpoint, Endpoint6};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

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

/// Addresses asked for (`--ip`, `--ip6`); none: the lowest free ones.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fixed {
    pub ip: Option<Ipv4Addr>,
    pub ip6: Option<Ipv6Addr>,
}

pub async fn create(
    host: &mut Host,
    name: &str,
    network: &str,
    fixed: Fixed,
    publish: Vec<PortMapping>,
) -> Result<ContainerSpec> {
    names::validate("container", name)?;
    if host.state().containers.contains_key(name) {
        bail!("a container named {name:?} already exists; choose another name or remove it first");
    }
    if netns::exists(name) {
        bail!("a network namespace named {name:?} already exists on this machine (not made by this bpfnet host); choose another name");
    }
    create_endpoint(host, name, network, fixed, publish, Placement::OwnNamespace).await
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
    fixed: Fixed,
    publish: Vec<PortMapping>,
    placement: Placement,
) -> Result<ContainerSpec> {
    let net = host.state().network(network)?.clone();
    let members: Vec<&ContainerSpec> = host.state().containers_of(network).collect();
    let ip = match fixed.ip {
        Some(ip) => ipam::check_fixed("--ip", ip, net.subnet, net.gateway, network, |ip| {
            members.iter().find(|c| c.ip == *ip).map(|c| c.name.clone())
        })?,
        None => ipam::allocate(net.subnet, net.gateway, &members.iter().map(|c| c.ip).collect::<Vec<_>>())?,
    };
    let ip6 = match (net.ipv6, fixed.ip6) {
        (None, None) => None,
        (None, Some(ip6)) => bail!(
            "--ip6 {ip6}: network {network:?} has no IPv6 subnet; leave --ip6 out, or use a dual-stack \
             network (bpfnet network create NAME --subnet 10.88.0.0/24 --subnet fd00:88::/64)"
        ),
        (Some(v6), Some(ip6)) => Some(ipam::check_fixed("--ip6", ip6, v6.subnet, v6.gateway, network, |ip6| {
            members.iter().find(|c| c.ip6 == Some(*ip6)).map(|c| c.name.clone())
        })?),
        (Some(v6), None) => {
            let used: Vec<Ipv6Addr> = members.iter().filter_map(|c| c.ip6).collect();
            Some(ipam::allocate(v6.subnet, v6.gateway, &used)?)
        }
    };
    check_families(name, ip6, &publish)?;
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
        ip6,
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

/// A port published on an IPv6 host address needs a container with an IPv6 address.
fn check_families(name: &str, ip6: Option<Ipv6Addr>, mappings: &[PortMapping]) -> Result<()> {
    if ip6.is_some() {
        return Ok(());
    }
    if let Some(mapping) = mappings.iter().find(|m| m.host_ip.is_some_and(|ip| ip.is_ipv6())) {
        bail!(
            "{mapping}: {name:?} has no IPv6 address (its network is IPv4 only); publish it on an IPv4 \
             address or on all (-p {}:{})",
            mapping.host_port,
            mapping.container_port
        );
    }
    Ok(())
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
            // On an IPv4-only network, as Docker does for such networks, no IPv6 inside (no
            // router solicitations or MLD reports that the datapath would only drop). On a
            // dual-stack one IPv6 stays on, and its interface is configured below.
            if spec.ip6.is_none() {
                netns::run_in(&spec.name, || {
                    for conf in ["all", "default"] {
                        write_sysctl(&format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6"), "1")?;
                    }
                    Ok(())
                })?;
            }
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
    // The IPv6 address with its subnet's prefix (on-link, as the IPv4 one), and the gateway.
    let v6 = match (spec.ip6, net.ipv6) {
        (Some(ip6), Some(v6)) => Some((IpNet::V6(Ipv6Net::new(ip6, v6.subnet.prefix_len())?), v6.gateway)),
        _ => None,
    };
    let own_netns = spec.attached.is_none();
    let inside = ifname.clone();
    netns
        .netlink_in(move |nl| async move {
            nl.rename(&peer, &inside).await?;
            if own_netns {
                nl.set_up("lo").await?;
            }
            // The rest of an engine's namespace is the engine's: only this interface is set.
            // IPv6 on it is off on an IPv4-only network; on a dual-stack one it is on, without
            // router advertisements (the routes are bpfnet's; nobody on the link sends any).
            let conf = format!("/proc/sys/net/ipv6/conf/{inside}");
            if std::path::Path::new(&conf).exists() {
                write_sysctl(&format!("{conf}/disable_ipv6"), if v6.is_some() { "0" } else { "1" })?;
                if v6.is_some() {
                    write_sysctl(&format!("{conf}/accept_ra"), "0")?;
                }
            }
            nl.add_address(&inside, address).await?;
            if let Some((address6, _)) = v6 {
                nl.add_address(&inside, address6).await?;
            }
            nl.set_up(&inside).await?;
            nl.replace_default_route(gateway, &inside).await?;
            match v6 {
                Some((_, gateway6)) => nl.replace_default_route(gateway6, &inside).await,
                None => Ok(()),
            }
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
    // On an IPv4-only network: no router solicitations or MLD reports from it. On a dual-stack
    // one the engine configures its IPv6 address and routes.
    let path = format!("/proc/sys/net/ipv6/conf/{peer}/disable_ipv6");
    if spec.ip6.is_none() && std::path::Path::new(&path).exists() {
        write_sysctl(&path, "1")?;
    }
    host_side(host, spec, net).await?;
    register(host, spec, net).await
}

/// Writes a sysctl under /proc/sys (of the calling thread's network namespace).
fn write_sysctl(path: &str, value: &str) -> Result<()> {
    std::fs::write(path, value).with_context(|| format!("writing {value} to {path}"))
}

/// The host end of the pair: forwarding on, up, and the route and neighbour to the container,
/// for each of its addresses.
async fn host_side(host: &mut Host, spec: &ContainerSpec, net: &NetworkSpec) -> Result<()> {
    // bpf_fib_lookup answers for packets from this interface only if it may forward (for each
    // family); the host stack itself never forwards them (the datapath redirects or hands over
    // only the gateway's).
    let mut families = vec!["ipv4"];
    if spec.ip6.is_some() {
        families.push("ipv6");
    }
    for family in families {
        write_sysctl(&format!("/proc/sys/net/{family}/conf/{}/forwarding", spec.host_interface), "1")?;
    }
    // The host reaches the container over its veth, from the gateway address, with no ARP (or
    // neighbour discovery).
    host.netlink.set_up(&spec.host_interface).await?;
    let mut routes = vec![(IpNet::V4(Ipv4Net::new(spec.ip, 32)?), IpAddr::V4(net.gateway))];
    if let (Some(ip6), Some(v6)) = (spec.ip6, net.ipv6) {
        routes.push((IpNet::V6(Ipv6Net::new(ip6, 128)?), IpAddr::V6(v6.gateway)));
    }
    for (address, gateway) in routes {
        host.netlink.replace_neighbour(&spec.host_interface, address.addr(), spec.mac).await?;
        host.netlink.replace_route(address, &spec.host_interface, Some(gateway)).await?;
    }
    Ok(())
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
    // The IPv6 side after the IPv4 one: a packet finds its interface's IPv6 entry only once
    // the rest of the container is there.
    if let (Some(ip6), Some(v6)) = (spec.ip6, net.ipv6) {
        datapath.upsert_endpoint6(&Endpoint6 {
            host_ifindex: ifindex,
            network_id: net.id,
            ip: ipv6_be(ip6.octets()),
            gateway: ipv6_be(v6.gateway.octets()),
            mac: spec.mac,
            gateway_mac: ipam::gateway_mac(net.id),
            stats_slot: spec.stats_slot,
            ip4: ipv4_be(spec.ip.octets()),
        })?;
    }
    for mapping in &spec.publish {
        mapping.publish(datapath, spec.ip, spec.ip6)?;
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
            mapping.unpublish(datapath)?;
        }
        datapath.detach_endpoint(&spec.host_interface)?;
        if let Some(ip6) = spec.ip6 {
            datapath.remove_endpoint6(ipv6_be(ip6.octets()))?;
        }
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
    let (ip, ip6) = host.state().container(name).map(|c| (c.ip, c.ip6))?;
    check_families(name, ip6, &mappings)?;
    host.ensure_uplink().await?;
    let datapath = host.datapath()?;
    for (done, mapping) in mappings.iter().enumerate() {
        if let Err(err) = mapping.publish(datapath, ip, ip6) {
            // Both families of the one that failed too: what it wrote before failing.
            for undo in &mappings[..=done] {
                undo.unpublish(datapath)?;
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
            undo.unpublish(datapath)?;
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
    let (ip, ip6) = host.state().container(name).map(|c| (c.ip, c.ip6))?;
    let datapath = host.datapath()?;
    for mapping in &mappings {
        mapping.unpublish(datapath)?;
    }
    // Killed before the record is written, the restarted agent publishes them again.
    crate::host::failpoint::hit("unpublish:unmapped");
    if let Err(err) = host.commit(change) {
        let datapath = host.datapath()?;
        for undo in &mappings {
            undo.publish(datapath, ip, ip6)?;
        }
        return Err(err.context(format!("unpublishing ports of {name}")));
    }
    crate::host::failpoint::hit("unpublish:journaled");
    Ok(())
}
