//! Networks: a subnet and a gateway. The gateway address lives on the host namespace's `lo`
//! (there is no bridge to carry it); the datapath answers ARP for it and passes traffic to it
//! up to the host stack.
use std::net::Ipv4Addr;

use anyhow::{bail, Context, Result};
use datapath_common::{ipv4_be, Network};
use ipnet::{IpNet, Ipv4Net};

use crate::{
    host::ipam,
    host::names,
    host::state::{Change, NetworkSpec, Pending},
    host::Host,
};

const GATEWAY_DEVICE: &str = "lo";

fn gateway_address(spec: &NetworkSpec) -> IpNet {
    IpNet::V4(Ipv4Net::new(spec.gateway, 32).expect("/32 is a valid prefix"))
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

pub async fn create(host: &mut Host, name: &str, subnet: &str, gateway: Option<Ipv4Addr>) -> Result<NetworkSpec> {
    names::validate("network", name)?;
    if host.state().networks.contains_key(name) {
        bail!("a network named {name:?} already exists; choose another name or remove it first");
    }
    let subnet = ipam::parse_subnet(subnet)?;
    if let Some(other) = host
        .state()
        .networks
        .values()
        .find(|n| n.subnet.contains(&subnet.network()) || subnet.contains(&n.subnet.network()))
    {
        bail!("--subnet {subnet} overlaps network {:?} ({}); choose a subnet that does not", other.name, other.subnet);
    }
    let gateway = ipam::gateway(subnet, gateway)?;
    let id = host.state().networks.values().map(|n| n.id).max().unwrap_or(0) + 1;
    let spec = NetworkSpec { name: name.to_owned(), id, subnet, gateway, pending: Some(Pending::Create) };
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
    host.netlink.add_address(GATEWAY_DEVICE, gateway_address(spec)).await?;
    host.datapath()?.upsert_network(spec.id, &datapath_network(spec))
}

/// Removes what a network put into the kernel. Idempotent.
pub async fn teardown(host: &mut Host, spec: &NetworkSpec) -> Result<()> {
    host.netlink.del_address(GATEWAY_DEVICE, gateway_address(spec)).await?;
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
