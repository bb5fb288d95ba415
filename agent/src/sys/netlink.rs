//! A small typed wrapper over rtnetlink for what the agent configures:
//! veth pairs, link state, addresses, routes and static neighbours.
//!
//! A netlink socket stays bound to the network namespace it was created in,
//! so a `Netlink` always acts on one namespace: the one of the thread that
//! called `connect`. To work inside a container namespace, use
//! `netns::netlink_in`, which connects from a thread inside it.
//!
//! Idempotent operations match the one errno that means "already so"
//! (EEXIST, ENODEV, ESRCH, EADDRNOTAVAIL); every other error is returned.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, BorrowedFd};

use anyhow::{anyhow, bail, Context, Result};
use futures::channel::mpsc::UnboundedReceiver;
use futures::{StreamExt, TryStreamExt};
use ipnet::IpNet;
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressScope};
use rtnetlink::packet_route::link::LinkInfo as NlLinkInfo;
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::neighbour::NeighbourState;
use rtnetlink::packet_route::route::RouteScope;
#[cfg(test)]
use rtnetlink::packet_route::route::{RouteProtocol, RouteType};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::sys::{AsyncSocket, SocketAddr as NlSocketAddr};
use rtnetlink::{
    AddressMessageBuilder, Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, MulticastGroup, RouteMessageBuilder,
};

/// Linux limit for interface names (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

/// A netlink route socket bound to one network namespace.
pub struct Netlink {
    handle: Handle,
    /// Name of the namespace the socket lives in, for error messages; `None`
    /// for the namespace of the thread that called `connect`.
    netns: Option<String>,
}

/// What the agent needs to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    /// Link kind as the kernel names it ("veth", "bridge", ...); `None` for
    /// devices without one (loopback, most physical NICs).
    pub kind: Option<String>,
    pub mac: Option<[u8; 6]>,
    /// Administratively up (IFF_UP).
    pub up: bool,
}

/// The kernel errno of a netlink error reply, if the error is one.
fn errno_of(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        // The reply carries a negative errno.
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|code| -code.get()),
        _ => None,
    }
}

fn is_errno(err: &rtnetlink::Error, errno: i32) -> bool {
    errno_of(err) == Some(errno)
}

fn check_ifname(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > IFNAME_MAX || name.contains(['/', ':']) || name.contains(char::is_whitespace) {
        bail!("invalid interface name {name:?}: 1 to {IFNAME_MAX} bytes, no '/', ':' or whitespace");
    }
    Ok(())
}

fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn link_info(msg: LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        index: msg.header.index,
        name: String::new(),
        kind: None,
        mac: None,
        up: msg.header.flags.contains(LinkFlags::Up),
    };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(name) => info.name = name,
            LinkAttribute::Address(addr) => info.mac = <[u8; 6]>::try_from(addr.as_slice()).ok(),
            LinkAttribute::LinkInfo(infos) => {
                for nested in infos {
                    if let NlLinkInfo::Kind(kind) = nested {
                        info.kind = Some(kind.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    info
}

/// " in network namespace NAME", or "" for the caller's own namespace.
fn place(netns: Option<&str>) -> String {
    netns.map(|ns| format!(" in network namespace {ns}")).unwrap_or_default()
}

/// A netlink connection is a task of the current tokio runtime: there must be one.
fn require_runtime(label: &str) -> Result<()> {
    tokio::runtime::Handle::try_current()
        .map_err(|_| anyhow!("opening a netlink socket{label}: must be called inside a tokio runtime"))?;
    Ok(())
}

impl Netlink {
    /// Opens a netlink socket in the calling thread's current network
    /// namespace and spawns the connection task on the current tokio runtime.
    pub fn connect() -> Result<Self> {
        Self::connect_labeled(None)
    }

    /// `connect`, remembering the namespace name for error messages.
    pub(crate) fn connect_labeled(netns: Option<&str>) -> Result<Self> {
        let label = place(netns);
        require_runtime(&label)?;
        let (connection, handle, _) =
            rtnetlink::new_connection().with_context(|| format!("opening a netlink route socket{label}"))?;
        tokio::spawn(connection);
        Ok(Netlink { handle, netns: netns.map(str::to_owned) })
    }

    /// " in network namespace NAME", or "" for the caller's own namespace.
    fn place(&self) -> String {
        place(self.netns.as_deref())
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkInfo>> {
        let mut replies = self.handle.link().get().match_name(name).execute();
        match replies.try_next().await {
            Ok(msg) => Ok(msg.map(link_info)),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("looking up link {name}{}", self.place())),
        }
    }

    pub async fn links(&self) -> Result<Vec<LinkInfo>> {
        let replies = self.handle.link().get().execute();
        let msgs: Vec<LinkMessage> =
            replies.try_collect().await.with_context(|| format!("listing links{}", self.place()))?;
        Ok(msgs.into_iter().map(link_info).collect())
    }

    /// Index of link `name`; an error naming it if there is none.
    async fn index_of(&self, name: &str) -> Result<u32> {
        match self.link_by_name(name).await? {
            Some(link) => Ok(link.index),
            None => bail!("no link named {name}{}", self.place()),
        }
    }

    /// Creates a veth pair `name` <-> `peer` in this namespace with the given
    /// MACs and MTU (None = kernel default).
    pub async fn create_veth(
        &self,
        name: &str,
        mac: [u8; 6],
        peer: &str,
        peer_mac: [u8; 6],
        mtu: Option<u32>,
    ) -> Result<()> {
        let what = || format!("creating veth {name} <-> {peer}{}", self.place());
        check_ifname(name).with_context(what)?;
        check_ifname(peer).with_context(what)?;
        let mut peer_msg = LinkUnspec::new_with_name(peer).address(peer_mac.to_vec());
        let mut builder = LinkVeth::new(name, peer).address(mac.to_vec());
        if let Some(mtu) = mtu {
            peer_msg = peer_msg.mtu(mtu);
            builder = builder.mtu(mtu);
        }
        let msg = builder.set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg.build()))).build();
        match self.handle.link().add(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::EEXIST) => {
                Err(e).with_context(|| format!("{}: a link named {name} or {peer} already exists", what()))
            }
            Err(e) => Err(e).with_context(what),
        }
    }

    /// Moves link `name` into the namespace given by fd.
    pub async fn move_to_netns(&self, name: &str, netns: BorrowedFd<'_>) -> Result<()> {
        let what = || format!("moving link {name}{} to another network namespace", self.place());
        let index = self.index_of(name).await.with_context(what)?;
        // The kernel resolves the fd in our fd table while handling the
        // request, so it only has to stay open until the reply, which the
        // borrow guarantees.
        let msg = LinkUnspec::new_with_index(index).setns_by_fd(netns.as_raw_fd()).build();
        match self.handle.link().set(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::EEXIST) => {
                Err(e).with_context(|| format!("{}: a link named {name} already exists there", what()))
            }
            Err(e) => Err(e).with_context(what),
        }
    }

    /// Renames a link. The link must be down (the kernel refuses to rename
    /// an up link with EBUSY).
    pub async fn rename(&self, name: &str, new_name: &str) -> Result<()> {
        let what = || format!("renaming link {name} to {new_name}{}", self.place());
        check_ifname(new_name).with_context(what)?;
        self.set_link(name, what, |link| link.name(new_name)).await
    }

    /// Changes attributes of an existing link.
    async fn set_link(
        &self,
        name: &str,
        what: impl Fn() -> String,
        change: impl FnOnce(LinkMessageBuilder<LinkUnspec>) -> LinkMessageBuilder<LinkUnspec>,
    ) -> Result<()> {
        let index = self.index_of(name).await.with_context(&what)?;
        let msg = change(LinkUnspec::new_with_index(index)).build();
        self.handle.link().set(msg).execute().await.with_context(what)
    }

    pub async fn set_up(&self, name: &str) -> Result<()> {
        let what = || format!("setting link {name} up{}", self.place());
        self.set_link(name, what, |link| link.up()).await
    }

    #[cfg(test)] // only the tests need it so far
    pub async fn set_mtu(&self, name: &str, mtu: u32) -> Result<()> {
        let what = || format!("setting MTU {mtu} on link {name}{}", self.place());
        self.set_link(name, what, |link| link.mtu(mtu)).await
    }

    /// Deletes a link; Ok(false) when it does not exist (idempotent).
    /// Deleting one end of a veth pair deletes both.
    pub async fn delete_link(&self, name: &str) -> Result<bool> {
        let what = || format!("deleting link {name}{}", self.place());
        let Some(link) = self.link_by_name(name).await.with_context(what)? else {
            return Ok(false);
        };
        match self.handle.link().del(link.index).execute().await {
            Ok(()) => Ok(true),
            // Gone between the lookup and the delete.
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(false),
            Err(e) => Err(e).with_context(what),
        }
    }

    /// Adds an address; already present = Ok (idempotent). An IPv6 address is added without
    /// duplicate address detection (IFA_F_NODAD): bpfnet's IPAM made it unique, and DAD would
    /// keep it tentative, unusable, for a second or more.
    pub async fn add_address(&self, name: &str, addr: IpNet) -> Result<()> {
        let what = || format!("adding address {addr} to link {name}{}", self.place());
        let index = self.index_of(name).await.with_context(what)?;
        let mut request = self.handle.address().add(index, addr.addr(), addr.prefix_len());
        if addr.addr().is_ipv6() {
            let message = request.message_mut();
            message.header.flags |= AddressHeaderFlags::Nodad;
            message.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match request.execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::EEXIST) => Ok(()),
            Err(e) => Err(e).with_context(what),
        }
    }

    /// Deletes an address; Ok(false) when the link does not have it (or the
    /// link does not exist).
    pub async fn del_address(&self, name: &str, addr: IpNet) -> Result<bool> {
        let what = || format!("deleting address {addr} from link {name}{}", self.place());
        let Some(link) = self.link_by_name(name).await.with_context(what)? else {
            return Ok(false);
        };
        let msg = match addr {
            IpNet::V4(net) => {
                AddressMessageBuilder::<Ipv4Addr>::new().index(link.index).address(net.addr(), net.prefix_len()).build()
            }
            IpNet::V6(net) => {
                AddressMessageBuilder::<Ipv6Addr>::new().index(link.index).address(net.addr(), net.prefix_len()).build()
            }
        };
        match self.handle.address().del(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) if is_errno(&e, libc::EADDRNOTAVAIL) => Ok(false),
            Err(e) => Err(e).with_context(what),
        }
    }

    /// All addresses (IPv4 and IPv6, including link-local) on link `name`.
    pub async fn addresses(&self, name: &str) -> Result<Vec<IpNet>> {
        let what = || format!("listing addresses of link {name}{}", self.place());
        let index = self.index_of(name).await.with_context(what)?;
        let mut replies = self.handle.address().get().set_link_index_filter(index).execute();
        let mut out = Vec::new();
        while let Some(msg) = replies.try_next().await.with_context(what)? {
            // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the
            // peer on point-to-point links, and the only one for IPv6.
            let mut local = None;
            let mut address = None;
            for attr in &msg.attributes {
                match attr {
                    AddressAttribute::Local(ip) => local = Some(*ip),
                    AddressAttribute::Address(ip) => address = Some(*ip),
                    _ => {}
                }
            }
            if let Some(ip) = local.or(address) {
                let net = IpNet::new(ip, msg.header.prefix_len)
                    .with_context(|| format!("{}: kernel reported {ip}/{}", what(), msg.header.prefix_len))?;
                out.push(net);
            }
        }
        Ok(out)
    }

    /// The link's global IPv6 addresses that may be used as a source now, in the kernel's
    /// order: not link-local (or of host scope), not tentative (DAD still running), failed or
    /// deprecated.
    pub async fn usable_global_ipv6(&self, name: &str) -> Result<Vec<Ipv6Addr>> {
        let what = || format!("listing IPv6 addresses of link {name}{}", self.place());
        let index = self.index_of(name).await.with_context(what)?;
        let mut replies = self.handle.address().get().set_link_index_filter(index).execute();
        let unusable = AddressFlags::Tentative | AddressFlags::Dadfailed | AddressFlags::Deprecated;
        let mut out = Vec::new();
        while let Some(msg) = replies.try_next().await.with_context(what)? {
            if msg.header.family != AddressFamily::Inet6 || msg.header.scope != AddressScope::Universe {
                continue;
            }
            // IFA_FLAGS holds all 32 bits when present; the header's 8 otherwise.
            let flags = msg.attributes.iter().find_map(|attr| match attr {
                AddressAttribute::Flags(flags) => Some(*flags),
                _ => None,
            });
            let flags = flags.unwrap_or_else(|| AddressFlags::from_bits_retain(u32::from(msg.header.flags.bits())));
            if flags.intersects(unusable) {
                continue;
            }
            out.extend(msg.attributes.iter().find_map(|attr| match attr {
                AddressAttribute::Address(IpAddr::V6(ip)) => Some(*ip),
                _ => None,
            }));
        }
        Ok(out)
    }

    /// `ip route replace default via GW dev NAME`, for either family.
    pub async fn replace_default_route(&self, gateway: impl Into<IpAddr>, name: &str) -> Result<()> {
        let gateway = gateway.into();
        let what = || format!("replacing the default route via {gateway} dev {name}{}", self.place());
        let index = self.index_of(name).await.with_context(what)?;
        let any = match gateway {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let msg = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(any, 0)
            .and_then(|route| route.gateway(gateway))
            .with_context(what)?
            .output_interface(index)
            .build();
        self.handle.route().add(msg).replace().execute().await.with_context(what)
    }

    /// `ip route replace DEST dev NAME [scope link] [src SRC]`, for either family (IPv4's
    /// route is of link scope; IPv6 has none).
    pub async fn replace_route(&self, dest: impl Into<IpNet>, name: &str, src: Option<IpAddr>) -> Result<()> {
        let dest = dest.into();
        let what = || format!("replacing route {dest} dev {name}{}", self.place());
        if dest != dest.trunc() {
            bail!("{}: destination has host bits set (did you mean {}?)", what(), dest.trunc());
        }
        let index = self.index_of(name).await.with_context(what)?;
        let mut builder = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dest.network(), dest.prefix_len())
            .with_context(what)?
            .output_interface(index);
        if dest.addr().is_ipv4() {
            builder = builder.scope(RouteScope::Link);
        }
        if let Some(src) = src {
            builder = builder.pref_source(src).with_context(what)?;
        }
        self.handle.route().add(builder.build()).replace().execute().await.with_context(what)
    }

    #[cfg(test)] // only the tests need it so far
    /// `ip route del DEST dev NAME` in the main table; Ok(false) when there is
    /// no such route (or no such link).
    pub async fn del_route(&self, dest: ipnet::Ipv4Net, name: &str) -> Result<bool> {
        let what = || format!("deleting route {dest} dev {name}{}", self.place());
        let Some(link) = self.link_by_name(name).await.with_context(what)? else {
            return Ok(false);
        };
        // Like `ip route del`: scope NOWHERE, protocol and type unspecified
        // are wildcards for the kernel's match.
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dest.network(), dest.prefix_len())
            .output_interface(link.index)
            .scope(RouteScope::NoWhere)
            .protocol(RouteProtocol::Unspec)
            .kind(RouteType::Unspec)
            .build();
        match self.handle.route().del(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) if is_errno(&e, libc::ESRCH) => Ok(false),
            Err(e) => Err(e).with_context(what),
        }
    }

    /// `ip neigh replace IP lladdr MAC dev NAME nud permanent`, for either family.
    pub async fn replace_neighbour(&self, name: &str, ip: impl Into<IpAddr>, mac: [u8; 6]) -> Result<()> {
        let ip = ip.into();
        let what = || format!("replacing neighbour {ip} lladdr {} dev {name}{}", mac_string(&mac), self.place());
        let index = self.index_of(name).await.with_context(what)?;
        self.handle
            .neighbours()
            .add(index, ip)
            .link_layer_address(&mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .with_context(what)
    }
}

/// A change in a network namespace, as its rtnetlink notifications tell it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// A link appeared, changed (state, name, ...) or went away. `name` is `None` when the
    /// notification does not carry it.
    Link { index: u32, name: Option<String> },
    /// An IPv4 address was added to or removed from link `index`. `label` is the address's
    /// label: the interface's name, or an alias such as `eth0:1`.
    Ipv4Address { index: u32, label: Option<String> },
    /// An IPv6 address was added to, changed on (DAD done, deprecated) or removed from link
    /// `index`. IPv6 addresses carry no label.
    Ipv6Address { index: u32 },
    /// The kernel dropped notifications because the socket's receive buffer was full
    /// (ENOBUFS): anything may have changed since the last one received.
    Lost,
}

/// The notifications of link and address changes in one network namespace (the rtnetlink
/// multicast groups RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR and RTNLGRP_IPV6_IFADDR), on a socket of their own:
/// a burst of notifications that overflows it must not cost a request's reply, nor a reply
/// a notification.
///
/// Like [`Netlink`], the socket belongs to the namespace of the thread that subscribed.
pub struct LinkEvents {
    messages: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, NlSocketAddr)>,
    /// Name of the namespace, for error messages, as in [`Netlink`].
    netns: Option<String>,
}

impl LinkEvents {
    /// Subscribes in the calling thread's current network namespace, as [`Netlink::connect`]
    /// connects there; the connection task runs on the current tokio runtime.
    pub fn subscribe() -> Result<Self> {
        Self::subscribe_labeled(None, None)
    }

    /// `subscribe`, remembering the namespace name for error messages, with a receive buffer
    /// of `receive_buffer` bytes (`SO_RCVBUF`; `None`: the system's default).
    pub(crate) fn subscribe_labeled(netns: Option<&str>, receive_buffer: Option<usize>) -> Result<Self> {
        let label = place(netns);
        require_runtime(&label)?;
        let what = || format!("subscribing to link and IPv4 address notifications{label}");
        let groups = [MulticastGroup::Link, MulticastGroup::Ipv4Ifaddr, MulticastGroup::Ipv6Ifaddr];
        let (mut connection, _, messages) = rtnetlink::new_multicast_connection(&groups).with_context(what)?;
        if let Some(bytes) = receive_buffer {
            let bytes = libc::c_int::try_from(bytes).with_context(what)?;
            connection.socket_mut().socket_mut().set_rx_buf_sz(bytes).with_context(what)?;
        }
        // netlink-proto turns ENOBUFS into an `Overrun` message and keeps reading (see
        // `event_of`); the connection ends only on another socket error.
        tokio::spawn(connection);
        Ok(LinkEvents { messages, netns: netns.map(str::to_owned) })
    }

    /// The next change; an error once the socket is closed (after an error reading it).
    pub async fn next(&mut self) -> Result<LinkEvent> {
        loop {
            let Some((message, _)) = self.messages.next().await else {
                let label = place(self.netns.as_deref());
                bail!("the netlink socket for link and address notifications{label} was closed");
            };
            if let Some(event) = event_of(message) {
                return Ok(event);
            }
        }
    }
}

/// What a notification tells; `None` for messages of no interest (other kinds, or of the
/// subscribed groups' messages those bpfnet does not use).
fn event_of(message: NetlinkMessage<RouteNetlinkMessage>) -> Option<LinkEvent> {
    match message.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link) | RouteNetlinkMessage::DelLink(link)) => {
            let name = link.attributes.into_iter().find_map(|attr| match attr {
                LinkAttribute::IfName(name) => Some(name),
                _ => None,
            });
            Some(LinkEvent::Link { index: link.header.index, name })
        }
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(addr) | RouteNetlinkMessage::DelAddress(addr))
            if addr.header.family == AddressFamily::Inet =>
        {
            let label = addr.attributes.into_iter().find_map(|attr| match attr {
                AddressAttribute::Label(label) => Some(label),
                _ => None,
            });
            Some(LinkEvent::Ipv4Address { index: addr.header.index, label })
        }
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(addr) | RouteNetlinkMessage::DelAddress(addr))
            if addr.header.family == AddressFamily::Inet6 =>
        {
            Some(LinkEvent::Ipv6Address { index: addr.header.index })
        }
        NetlinkPayload::Overrun(_) => Some(LinkEvent::Lost),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use serde_json::Value;

    use ipnet::Ipv4Net;

    use super::*;
    use crate::{
        devkit::netns::{is_root, TestNamespaces},
        sys::netns,
    };

    fn ip_json(ns: &str, args: &[&str]) -> Value {
        let out = Command::new("ip").args(["-n", ns, "-j"]).args(args).output().unwrap();
        assert!(out.status.success(), "ip -n {ns} -j {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn ping(ns: &str, addr: Ipv4Addr) -> bool {
        Command::new("ip")
            .args(["netns", "exec", ns, "ping", "-c1", "-W1", "-q", &addr.to_string()])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    const MAC_A: [u8; 6] = [0x02, 0xb0, 0, 0, 0, 0x0a];
    const MAC_B: [u8; 6] = [0x02, 0xb0, 0, 0, 0, 0x0b];

    /// IPv6 as the agent configures it: an address usable at once (no DAD), a host route with
    /// a preferred source, a permanent neighbour, a default route; and which addresses count
    /// as the uplink's usable global one.
    #[tokio::test]
    async fn ipv6_addresses_routes_and_neighbours() {
        if !is_root() {
            return;
        }
        let ns = TestNamespaces::create(1);
        let name = ns.names[0].clone();
        let global: IpNet = "2001:db8:5::1/64".parse().unwrap();
        netns::netlink_in(&name, move |nl| async move {
            nl.create_veth("bnt6a", MAC_A, "bnt6b", MAC_B, None).await?;
            nl.set_up("bnt6a").await?;
            nl.set_up("bnt6b").await?;
            nl.set_up("lo").await?;
            nl.add_address("bnt6a", global).await?;
            nl.add_address("bnt6a", global).await?; // idempotent
            nl.add_address("lo", "2001:db8:5::fe/128".parse()?).await?;
            nl.replace_neighbour("bnt6a", "2001:db8:6::2".parse::<Ipv6Addr>()?, MAC_B).await?;
            let host: IpNet = "2001:db8:6::2/128".parse()?;
            nl.replace_route(host, "bnt6a", Some("2001:db8:5::fe".parse()?)).await?;
            nl.replace_route(host, "bnt6a", Some("2001:db8:5::fe".parse()?)).await?; // replace
            nl.replace_default_route("2001:db8:5::9".parse::<Ipv6Addr>()?, "bnt6a").await?;
            // Added without DAD: usable at once, where a plain add would be tentative.
            assert_eq!(nl.usable_global_ipv6("bnt6a").await?, ["2001:db8:5::1".parse::<Ipv6Addr>()?]);
            Ok(())
        })
        .await
        .unwrap();
        // A tentative address (DAD still running: the peer is up, so it lasts a second or
        // more) and a deprecated one are not usable; neither is a link-local one.
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(["-n", &name]).args(args).output().unwrap();
            assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        ip(&["addr", "add", "2001:db8:7::1/64", "dev", "bnt6b"]);
        ip(&["addr", "add", "2001:db8:8::1/64", "dev", "bnt6b", "nodad", "preferred_lft", "0"]);
        ip(&["addr", "add", "2001:db8:9::1/64", "dev", "bnt6b", "nodad"]);
        let usable = netns::netlink_in(&name, |nl| async move { nl.usable_global_ipv6("bnt6b").await }).await.unwrap();
        assert_eq!(usable, ["2001:db8:9::1".parse::<Ipv6Addr>().unwrap()]);

        let addrs = ip_json(&name, &["-6", "addr", "show", "bnt6a"]);
        let info = addrs[0]["addr_info"].as_array().unwrap();
        let global = info.iter().find(|a| a["local"] == "2001:db8:5::1").expect("the address");
        assert_eq!((global["prefixlen"].as_u64(), global.get("tentative")), (Some(64), None), "{global}");
        let routes = ip_json(&name, &["-6", "route", "show", "2001:db8:6::2"]);
        assert_eq!(routes.as_array().unwrap().len(), 1, "{routes}");
        assert_eq!((routes[0]["dev"].as_str(), routes[0]["prefsrc"].as_str()), (Some("bnt6a"), Some("2001:db8:5::fe")));
        let default = ip_json(&name, &["-6", "route", "show", "default"]);
        assert_eq!(default[0]["gateway"], "2001:db8:5::9");
        let neigh = ip_json(&name, &["-6", "neigh", "show", "2001:db8:6::2", "dev", "bnt6a"]);
        assert_eq!(neigh[0]["lladdr"], "02:b0:00:00:00:0b");
        assert!(neigh[0]["state"].as_array().unwrap().iter().any(|s| s == "PERMANENT"), "{neigh}");
    }

    #[tokio::test]
    async fn veth_between_two_namespaces() {
        if !is_root() {
            return;
        }
        let ns = TestNamespaces::create(2);
        let (ns_a, ns_b) = (ns.names[0].clone(), ns.names[1].clone());
        let addr_a: Ipv4Net = "10.213.0.1/24".parse().unwrap();
        let addr_b: Ipv4Net = "10.213.0.2/24".parse().unwrap();

        // Namespace A: the "host" side.
        let target = ns_b.clone();
        netns::netlink_in(&ns_a, move |nl| async move {
            nl.create_veth("bnta", MAC_A, "bntb", MAC_B, Some(1400)).await?;
            let err = nl.create_veth("bnta", MAC_A, "bntc", MAC_B, None).await.unwrap_err();
            assert!(format!("{err:#}").contains("already exists"), "{err:#}");

            let a = nl.link_by_name("bnta").await?.unwrap();
            assert_eq!((a.kind.as_deref(), a.mac, a.up), (Some("veth"), Some(MAC_A), false));
            assert_eq!(nl.link_by_name("bntb").await?.unwrap().mac, Some(MAC_B));
            assert_eq!(nl.link_by_name("nope0").await?, None);

            let fd = netns::open(&target)?;
            nl.move_to_netns("bntb", std::os::fd::AsFd::as_fd(&fd)).await?;
            assert_eq!(nl.link_by_name("bntb").await?, None);

            nl.add_address("bnta", addr_a.into()).await?;
            nl.add_address("bnta", addr_a.into()).await?; // idempotent
            nl.set_up("bnta").await?;
            nl.replace_neighbour("bnta", addr_b.addr(), MAC_B).await?;
            let host: Ipv4Net = "10.213.9.0/24".parse().unwrap();
            nl.replace_route(host, "bnta", Some(addr_a.addr().into())).await?;
            nl.replace_route(host, "bnta", None).await?; // replace, not duplicate
            assert!(nl.replace_route("10.213.9.1/24".parse::<IpNet>()?, "bnta", None).await.is_err());
            assert!(nl.set_mtu("missing0", 1500).await.is_err());
            Ok(())
        })
        .await
        .unwrap();

        // Namespace B: the "container" side.
        netns::netlink_in(&ns_b, move |nl| async move {
            nl.rename("bntb", "eth0").await?;
            nl.set_mtu("eth0", 1380).await?;
            nl.add_address("eth0", addr_b.into()).await?;
            nl.set_up("eth0").await?;
            nl.set_up("lo").await?;
            nl.replace_default_route(addr_a.addr(), "eth0").await?;
            nl.replace_neighbour("eth0", addr_a.addr(), MAC_A).await?;
            nl.replace_neighbour("eth0", addr_a.addr(), MAC_A).await?; // idempotent
            let eth0 = nl.link_by_name("eth0").await?.unwrap();
            assert_eq!((eth0.kind.as_deref(), eth0.mac, eth0.up), (Some("veth"), Some(MAC_B), true));
            assert!(nl.addresses("eth0").await?.contains(&addr_b.into()));
            let names: Vec<String> = nl.links().await?.into_iter().map(|l| l.name).collect();
            assert_eq!(names.len(), 2, "{names:?}");
            assert!(names.contains(&"lo".to_owned()) && names.contains(&"eth0".to_owned()), "{names:?}");
            Ok(())
        })
        .await
        .unwrap();

        // What iproute2 sees.
        let links = ip_json(&ns_b, &["link", "show", "eth0"]);
        assert_eq!(links[0]["address"], "02:b0:00:00:00:0b");
        assert_eq!(links[0]["mtu"], 1380);
        assert!(links[0]["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
        let addrs = ip_json(&ns_b, &["-4", "addr", "show", "eth0"]);
        assert_eq!(addrs[0]["addr_info"][0]["local"], "10.213.0.2");
        assert_eq!(addrs[0]["addr_info"][0]["prefixlen"], 24);
        let routes = ip_json(&ns_b, &["route", "show", "default"]);
        assert_eq!(routes.as_array().unwrap().len(), 1, "{routes}");
        assert_eq!(routes[0]["gateway"], "10.213.0.1");
        assert_eq!(routes[0]["dev"], "eth0");
        let neigh = ip_json(&ns_b, &["neigh", "show", "dev", "eth0"]);
        assert_eq!(neigh[0]["dst"], "10.213.0.1");
        assert_eq!(neigh[0]["lladdr"], "02:b0:00:00:00:0a");
        assert!(neigh[0]["state"].as_array().unwrap().iter().any(|s| s == "PERMANENT"), "{neigh}");
        let links_a = ip_json(&ns_a, &["link", "show", "bnta"]);
        assert_eq!(links_a[0]["mtu"], 1400);
        let routes_a = ip_json(&ns_a, &["route", "show", "10.213.9.0/24"]);
        assert_eq!(routes_a.as_array().unwrap().len(), 1, "{routes_a}");
        assert_eq!(routes_a[0]["scope"], "link");
        assert_eq!(routes_a[0]["dev"], "bnta");
        assert!(routes_a[0].get("prefsrc").is_none(), "replace dropped src: {routes_a}");

        assert!(ping(&ns_b, addr_a.addr()), "ping {ns_b} -> {}", addr_a.addr());

        // Teardown, each step idempotent.
        netns::netlink_in(&ns_a, move |nl| async move {
            let host: Ipv4Net = "10.213.9.0/24".parse()?;
            assert!(nl.del_route(host, "bnta").await?);
            assert!(!nl.del_route(host, "bnta").await?);
            assert!(nl.del_address("bnta", addr_a.into()).await?);
            assert!(!nl.del_address("bnta", addr_a.into()).await?);
            assert!(nl.addresses("bnta").await?.iter().all(|a| a.addr() != IpAddr::V4(addr_a.addr())));
            assert!(nl.delete_link("bnta").await?);
            assert!(!nl.delete_link("bnta").await?);
            assert!(!nl.del_address("bnta", addr_a.into()).await?);
            Ok(())
        })
        .await
        .unwrap();
        // Deleting one end removed the peer in the other namespace.
        let left = netns::netlink_in(&ns_b, |nl| async move { nl.link_by_name("eth0").await }).await.unwrap();
        assert_eq!(left, None);

        let names = ns.names.clone();
        drop(ns);
        for name in &names {
            assert!(!netns::exists(name));
            let st =
                Command::new("ip").args(["-n", name, "link"]).stderr(std::process::Stdio::null()).status().unwrap();
            assert!(!st.success(), "{name} still usable by ip");
        }
    }

    /// Events until `stop` says so, each within 5 s (a test that hangs is a failure).
    async fn events_until(events: &mut LinkEvents, mut stop: impl FnMut(&LinkEvent) -> bool) -> Result<Vec<LinkEvent>> {
        let mut seen = Vec::new();
        loop {
            let event = tokio::time::timeout(std::time::Duration::from_secs(5), events.next())
                .await
                .with_context(|| format!("no further event after {seen:?}"))??;
            let done = stop(&event);
            seen.push(event);
            if done {
                return Ok(seen);
            }
        }
    }

    #[tokio::test]
    async fn link_and_address_events_come_from_the_subscribed_namespace_only() {
        if !is_root() {
            return;
        }
        let ns = TestNamespaces::create(2);
        let (ns_a, ns_b) = (ns.names[0].clone(), ns.names[1].clone());
        netns::netlink_in(&ns_a.clone(), move |nl| async move {
            let mut events = LinkEvents::subscribe_labeled(Some(&ns_a), None)?;
            // A change in the other namespace first: its notification, were it delivered,
            // would come before those of this one.
            let veth = ["-n", &ns_b, "link", "add", "bnex", "type", "veth", "peer", "name", "bnexp"];
            assert!(Command::new("ip").args(veth).status()?.success(), "making a link in {ns_b}");
            nl.create_veth("bnea", MAC_A, "bneb", MAC_B, None).await?;
            let index = nl.index_of("bnea").await?;
            nl.add_address("bnea", "10.214.0.1/24".parse()?).await?;
            let seen = events_until(&mut events, |e| matches!(e, LinkEvent::Ipv4Address { .. })).await?;
            assert!(seen.contains(&LinkEvent::Link { index, name: Some("bnea".into()) }), "{seen:?}");
            assert_eq!(seen.last(), Some(&LinkEvent::Ipv4Address { index, label: Some("bnea".into()) }));
            let foreign = |e: &LinkEvent| matches!(e, LinkEvent::Link { name: Some(n), .. } if n.starts_with("bnex"));
            assert!(!seen.iter().any(foreign), "{seen:?}");
            // Deleting: a link event for it again.
            nl.delete_link("bnea").await?;
            let seen =
                events_until(&mut events, |e| matches!(e, LinkEvent::Link { index: i, .. } if *i == index)).await?;
            assert_eq!(seen.last(), Some(&LinkEvent::Link { index, name: Some("bnea".into()) }));
            Ok(())
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn a_full_receive_buffer_is_reported_as_lost_events_and_events_go_on() {
        if !is_root() {
            return;
        }
        let ns = TestNamespaces::create(1);
        let name = ns.names[0].clone();
        netns::netlink_in(&name.clone(), move |nl| async move {
            // The smallest buffer the kernel allows holds a handful of notifications.
            let mut events = LinkEvents::subscribe_labeled(Some(&name), Some(1))?;
            // Made by another process while this runtime's only thread waits for it, so the
            // connection task cannot read any of them: the buffer overflows (ENOBUFS).
            let batch: String =
                (1..=200).map(|i| format!("address add 10.215.{}.{}/32 dev lo\n", i / 250, i % 250 + 1)).collect();
            let mut ip =
                Command::new("ip").args(["-n", &name, "-batch", "-"]).stdin(std::process::Stdio::piped()).spawn()?;
            std::io::Write::write_all(&mut ip.stdin.take().context("ip's stdin")?, batch.as_bytes())?;
            assert!(ip.wait()?.success(), "ip -batch");
            let seen = events_until(&mut events, |e| *e == LinkEvent::Lost).await?;
            assert!(seen.len() < 200, "{} events before the loss was reported", seen.len());
            // The subscription goes on after the loss: a later change is notified.
            nl.add_address("lo", "10.215.9.1/32".parse()?).await?;
            let lo = nl.index_of("lo").await?;
            events_until(&mut events, |e| matches!(e, LinkEvent::Ipv4Address { index, .. } if *index == lo)).await?;
            Ok(())
        })
        .await
        .unwrap();
    }

    #[test]
    fn notifications_become_events() {
        use rtnetlink::packet_core::NetlinkHeader;
        use rtnetlink::packet_route::{address::AddressMessage, link::LinkMessage};
        let message = |payload| NetlinkMessage::new(NetlinkHeader::default(), payload);
        let mut link = LinkMessage::default();
        link.header.index = 7;
        link.attributes.push(LinkAttribute::IfName("up0".into()));
        let event = event_of(message(NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link))));
        assert_eq!(event, Some(LinkEvent::Link { index: 7, name: Some("up0".into()) }));
        let mut addr = AddressMessage::default();
        addr.header.index = 7;
        addr.header.family = AddressFamily::Inet6;
        let v6 = message(NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(addr.clone())));
        assert_eq!(event_of(v6), None, "IPv6 addresses are not followed");
        addr.header.family = AddressFamily::Inet;
        let v4 = message(NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(addr)));
        assert_eq!(event_of(v4), Some(LinkEvent::Ipv4Address { index: 7, label: None }));
        assert_eq!(event_of(message(NetlinkPayload::Overrun(Vec::new()))), Some(LinkEvent::Lost));
    }
}
