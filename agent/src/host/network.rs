//! Networks: a subnet and a gateway, and on a dual-stack network an IPv6 subnet and gateway
//! besides. The gateway addresses live on the host namespace's `lo` (there is no bridge to
//! carry them); the datapath answers ARP (and neighbour solicitations) for them and passes
//! traffic to them up to the host stack.
use std::net::IpAddr;

use anyhow::{bail, Context, Result};
use datapath_common::{ipv4_be, Network};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::{
    host::ipam,
    host::ipam::Subnet,
    host::names,
    host::state::{Change, NetworkSpec, NetworkV6, Pending},
    host::Host,
};

const GATEWAY_DEVICE: &str = "lo";

/// The gateway addresses the network puts on `lo`: host routes, so that `lo` claims no subnet.
fn gateway_addresses(spec: &NetworkSpec) -> Vec<IpNet> {
    let v4 = IpNet::V4(Ipv4Net::new(spec.gateway, 32).expect("/32 is a valid prefix"));
    let v6 = spec.ipv6.map(|v6| IpNet::V6(Ipv6Net::new(v6.gateway, 128).expect("/128 is a valid prefix")));
    std::iter::once(v4).chain(v6).collect()
}

fn datapath_network(spec: &NetworkSpec) -> Network {
    Network {
        subnet: ipv4_be(spec.subnet.network().octets()),
        gateway: ipv4_be(spec.gateway.octets()),
        gateway_mac: ipam::gateway_mac(spec.id),
        prefix_len: spec.subnet.prefix_len(),
        _pad: 0,
    }
}

/// Creates a network from `--subnet` (repeatable, one per family), `--gateway` (likewise) and
/// `--ipv6` (see [`ipam::plan`]). Every check comes before anything is made.
pub async fn create(
    host: &mut Host,
    name: &str,
    subnets: &[String],
    gateways: &[IpAddr],
    ipv6: bool,
) -> Result<NetworkSpec> {
    names::validate("network", name)?;
    if host.state().networks.contains_key(name) {
        bail!("a network named {name:?} already exists; choose another name or remove it first");
    }
    let networks = &host.state().networks;
    let v6_overlap = |net: &Ipv6Net| networks.values().find(|n| n.ipv6.is_some_and(|v6| v6.subnet.overlaps(net)));
    let plan = ipam::plan(subnets, gateways, ipv6, |net| v6_overlap(net).is_some())?;
    let (subnet, gateway) = plan.v4;
    if let Some(other) = networks.values().find(|n| n.subnet.overlaps(&subnet)) {
        bail!("--subnet {subnet} overlaps network {:?} ({}); choose a subnet that does not", other.name, other.subnet);
    }
    if let Some((subnet6, _)) = plan.v6 {
        if let Some(other) = v6_overlap(&subnet6) {
            let theirs = other.ipv6.expect("found by its IPv6 subnet").subnet;
            bail!("--subnet {subnet6} overlaps network {:?} ({theirs}); choose a subnet that does not", other.name);
        }
    }
    let ipv6 = plan.v6.map(|(subnet, gateway)| NetworkV6 { subnet, gateway });
    let id = host.state().networks.values().map(|n| n.id).max().unwrap_or(0) + 1;
    let spec = NetworkSpec { name: name.to_owned(), id, subnet, gateway, ipv6, pending: Some(Pending::Create) };
    host.sync_uplink().await?;
    host.commit(Change::AddNetwork(spec.clone()))?;
    if let Err(err) = apply(host, &spec).await {
        if let Err(cleanup) = teardown(host, &spec).await {
            tracing::error!("rolling back network {name}: {cleanup:#}");
            return Err(
                err.context(format!("creating network {name} (the agent finishes the roll-back when it restarts)"))
            );
        }
        host.commit(Change::RemoveNetwork { name: name.to_owned() })?;
        return Err(err.context(format!("creating network {name}")));
    }
    host.commit(Change::SetNetworkPending { name: name.to_owned(), pending: None })?;
    Ok(NetworkSpec { pending: None, ..spec })
}

/// Puts a network into the kernel. Idempotent, so it also serves to repair.
pub async fn apply(host: &mut Host, spec: &NetworkSpec) -> Result<()> {
    host.netlink.set_up(GATEWAY_DEVICE).await?;
    for address in gateway_addresses(spec) {
        host.netlink.add_address(GATEWAY_DEVICE, address).await?;
    }
    host.datapath()?.upsert_network(spec.id, &datapath_network(spec))
}

/// Removes what a network put into the kernel. Idempotent.
pub async fn teardown(host: &mut Host, spec: &NetworkSpec) -> Result<()> {
    for address in gateway_addresses(spec) {
        host.netlink.del_address(GATEWAY_DEVICE, address).await?;
    }
    if let Some(datapath) = host.existing_datapath()? {
        datapath.remove_network(spec.id)?;
    }
    Ok(())
}

pub async fn remove(host: &mut Host, name: &str) -> Result<()> {
    let spec = host.state().network(name)?.clone();
    let members: Vec<_> = host.state().containers_of(name).map(|c| c.name.clone()).collect();
    if !members.is_empty() {
        bail!(
            "network {name:?} still has containers ({}); remove them first (bpfnet container rm NAME)",
            members.join(", ")
        );
    }
    host.commit(Change::SetNetworkPending { name: name.to_owned(), pending: Some(Pending::Remove) })?;
    teardown(host, &spec).await.with_context(|| format!("removing network {name}"))?;
    host.commit(Change::RemoveNetwork { name: name.to_owned() })
}
