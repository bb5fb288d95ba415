//! Namespaces that someone else made (a container engine, through `bpfnet container attach`
//! or the CNI plugin), attached to a network by path: the same veth, address, routes, program
//! and published ports as a bpfnet container (`container::create_endpoint`), but the namespace
//! is the engine's. bpfnet never creates or deletes it; detaching removes only what bpfnet
//! made. An attachment is identified by the engine's container id and the interface name, and
//! lives in the state as a container named `CONTAINER_ID/IFNAME`.
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::{
    host::container,
    host::names,
    host::publish::PortMapping,
    host::state::{Attached, ContainerSpec},
    host::Host,
    sys::netns::{self, Identity, Netns},
};

/// The state's name of an attachment. A `/` never occurs in a bpfnet container's name, so the
/// two kinds cannot collide.
pub fn key(container_id: &str, ifname: &str) -> String {
    format!("{container_id}/{ifname}")
}

/// What the caller asks to attach.
pub struct Request<'a> {
    pub netns: &'a Path,
    pub container_id: &'a str,
    pub ifname: &'a str,
    pub network: &'a str,
    pub fixed: container::Fixed,
    pub publish: Vec<PortMapping>,
}

pub async fn attach(host: &mut Host, request: Request<'_>) -> Result<ContainerSpec> {
    let Request { netns: path, container_id, ifname, network, fixed, publish } = request;
    names::validate("container id", container_id)?;
    validate_ifname(ifname)?;
    if !path.is_absolute() {
        bail!(
            "the namespace path {} is not absolute; give one such as /proc/PID/ns/net or /run/netns/NAME",
            path.display()
        );
    }
    let name = key(container_id, ifname);
    if let Some(existing) = host.state().containers.get(&name) {
        bail!(
            "container {container_id} already has {ifname} attached (network {:?}); detach it first or choose another interface name",
            existing.network
        );
    }
    host.state().network(network)?;
    let identity = Identity::of(&netns::open_path(path)?)?;
    refuse_host_namespace(path, identity)?;
    let target = Netns::Path(path.to_owned());
    let wanted = ifname.to_owned();
    if target.netlink_in(move |nl| async move { nl.link_by_name(&wanted).await }).await?.is_some() {
        bail!(
            "an interface named {ifname} already exists in the namespace {}; choose another interface name",
            path.display()
        );
    }
    let attached =
        Attached { netns: path.to_owned(), identity, container_id: container_id.to_owned(), ifname: ifname.to_owned() };
    container::create_endpoint(host, &name, network, fixed, publish, container::Placement::Attached(attached)).await
}

/// Removes what bpfnet made for the attachment (veth, entries, published ports); the
/// namespace stays. False if nothing was attached (so a repeated detach succeeds).
pub async fn detach(host: &mut Host, container_id: &str, ifname: &str) -> Result<bool> {
    let name = key(container_id, ifname);
    if !host.state().containers.contains_key(&name) {
        return Ok(false);
    }
    container::remove(host, &name).await?;
    Ok(true)
}

/// The attachment, checked against the kernel: its namespace is still the one attached, the
/// host-side veth exists, and the interface inside carries its address.
pub async fn check(host: &mut Host, container_id: &str, ifname: &str) -> Result<ContainerSpec> {
    let name = key(container_id, ifname);
    let spec = host
        .state()
        .containers
        .get(&name)
        .cloned()
        .with_context(|| format!("container {container_id} has no interface {ifname} attached by bpfnet"))?;
    let attached = spec.attached.as_ref().expect("a name with '/' is an attachment");
    check_identity(attached)?;
    if host.netlink.link_by_name(&spec.host_interface).await?.is_none() {
        bail!("the host side {} of {name} is gone; detach and attach again", spec.host_interface);
    }
    let inside = ifname.to_owned();
    let addresses = spec
        .netns()
        .netlink_in(move |nl| async move {
            match nl.link_by_name(&inside).await? {
                Some(_) => nl.addresses(&inside).await.map(Some),
                None => Ok(None),
            }
        })
        .await?
        .with_context(|| format!("{ifname} is gone from the namespace {}", attached.netns.display()))?;
    let own: Vec<std::net::IpAddr> = std::iter::once(spec.ip.into()).chain(spec.ip6.map(Into::into)).collect();
    if let Some(missing) = own.iter().find(|ip| !addresses.iter().any(|a| a.addr() == **ip)) {
        bail!("{ifname} in {} no longer has its address {missing}", attached.netns.display());
    }
    Ok(spec)
}

/// Fails unless the path still names the namespace that was attached.
pub fn check_identity(attached: &Attached) -> Result<()> {
    let now = netns::open_path(&attached.netns).and_then(|fd| Identity::of(&fd));
    match now {
        Ok(identity) if identity == attached.identity => Ok(()),
        Ok(_) => bail!(
            "{} names another network namespace than the one attached (the engine removed that one)",
            attached.netns.display()
        ),
        Err(e) => Err(e.context("the attached network namespace is gone (the engine removed it)")),
    }
}

/// Whether the attached namespace still exists (for reconcile).
pub fn namespace_alive(attached: &Attached) -> bool {
    check_identity(attached).is_ok()
}

/// Attaching the host's own namespace (or init's) would put a container's address and default
/// route on the host itself.
fn refuse_host_namespace(path: &Path, identity: Identity) -> Result<()> {
    let init = netns::open_path(Path::new("/proc/1/ns/net")).and_then(|fd| Identity::of(&fd)).ok();
    if identity == Identity::own()? || Some(identity) == init {
        bail!(
            "{} is the host's own network namespace; attach a container's namespace (/proc/PID/ns/net of a process in it)",
            path.display()
        );
    }
    Ok(())
}

/// An interface name as the kernel and the CNI spec allow it: 1 to 15 bytes, no `/`, `:`,
/// whitespace, and not `.` or `..`.
pub fn validate_ifname(ifname: &str) -> Result<()> {
    let bad_char = ifname.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0');
    if ifname.is_empty() || ifname.len() > 15 || bad_char || ifname == "." || ifname == ".." {
        bail!(
            "the interface name {ifname:?} is invalid: use 1 to 15 characters without '/', ':' or spaces, such as eth0"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names() {
        validate_ifname("eth0").unwrap();
        validate_ifname("net1-a.b").unwrap();
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "sixteen-chars-xx"] {
            assert!(validate_ifname(bad).is_err(), "{bad:?}");
        }
        assert_eq!(key("abc123", "eth0"), "abc123/eth0");
    }
}
