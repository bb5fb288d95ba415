//! One bpfnet host: the namespace that plays the host, its state directory and its pinned
//! datapath, opened together for one operation.
pub mod attachment;
pub mod conntrack;
pub mod container;
pub mod failpoint;
pub mod ipam;
pub mod names;
pub mod network;
pub mod publish;
pub mod reconcile;
pub mod state;

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::{
    datapath::{Datapath, UplinkMode},
    host::state::{Change, State, StateStore},
    sys::cgroup::HostCgroup,
    sys::netlink::Netlink,
    sys::netns,
};

/// Where a bpfnet host lives. Several hosts (each with its own namespace, state directory and
/// pin directory) can be driven side by side on one machine, as the tests do.
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// Network namespace (a name under /run/netns) that plays the host: host-side veths,
    /// programs and routes live there. Default: the namespace bpfnet runs in.
    pub host_netns: Option<String>,
    /// Directory of the declarative state (networks, containers).
    pub state_dir: PathBuf,
    /// bpffs directory where programs, maps and links are pinned.
    pub bpffs: PathBuf,
    /// The host's interface to the outside world: containers' traffic leaving through it is
    /// masqueraded to its IPv4 address (and its replies translated back).
    pub uplink: Option<String>,
    /// Where the uplink's program runs: tcx ingress, or XDP (before the kernel allocates an
    /// skb; replies and published-port traffic are redirected into containers from there).
    pub uplink_mode: UplinkMode,
    /// Source ports for masquerading, inclusive.
    pub nat_ports: (u16, u16),
    /// The cluster's pod CIDR (native routing): a container's traffic to it is routed
    /// untranslated, and traffic on the uplink to a container inside it delivered. See
    /// [`check_cluster_cidr`].
    pub cluster_cidr: Option<ipnet::Ipv4Net>,
    /// Size of the conntrack table of assured flows, in entries (two per flow); the table of
    /// flows not assured yet is half as large, its overflow an eighth (each at least 16,384).
    /// Takes effect when the datapath is first loaded.
    pub ct_size: u32,
    /// Most of the unassured conntrack table (handshakes, unanswered datagrams) that one
    /// container's new flows, or one published port's, may hold, in percent. Its further new
    /// flows go to an overflow table where they compete only with each other: a flood from
    /// one container or at one port cannot crowd out everyone else's new connections.
    pub ct_unassured_share: u8,
    pub ct_timeouts: conntrack::Timeouts,
    /// Let containers reach the host's own addresses (its services), not only their gateway.
    pub allow_host_access: bool,
    /// cgroup v2 directory whose processes (of the host namespace) reach published ports at
    /// the uplink's address, 127.0.0.0/8 and ::1, also from IPv6 sockets by IPv4-mapped
    /// addresses, through socket hooks (connect4/6, sendmsg4, recvmsg4/6, getpeername4/6). On a
    /// real host: the root of the cgroup v2 hierarchy (/sys/fs/cgroup). Default: none (host
    /// processes do not reach published ports).
    pub host_cgroup: Option<PathBuf>,
}

impl HostOptions {
    /// Opens the `--host-cgroup` directory, if one is given: the error says what is wrong
    /// with it before anything is changed.
    pub fn open_host_cgroup(&self) -> Result<Option<HostCgroup>> {
        self.host_cgroup.as_deref().map(HostCgroup::open).transpose()
    }

    /// Moves the whole process into the host namespace. Must run before any other thread
    /// exists (before the tokio runtime is built), so that every thread lives there.
    pub fn enter_host_netns(&self) -> Result<()> {
        if let Some(name) = &self.host_netns {
            if !netns::exists(name) {
                anyhow::bail!(
                    "the host network namespace {name:?} does not exist; create it \
                     (ip netns add {name}) or leave out --host-netns"
                );
            }
            netns::enter_process(name).with_context(|| format!("entering host namespace {name}"))?;
        }
        Ok(())
    }
}

pub struct Host {
    pub options: HostOptions,
    /// The state, changed only through [`Host::commit`].
    store: StateStore,
    pub netlink: Netlink,
    datapath: Option<Datapath>,
    /// Whether [`Host::ensure_uplink`] put the uplink settings in place already.
    uplink_synced: bool,
    /// Whether the socket hooks were synced with the options for the opened datapath.
    host_cgroup_synced: bool,
}

impl Host {
    /// Locks the state directory and reads the state. The datapath is opened on first use.
    pub async fn open(options: &HostOptions) -> Result<Self> {
        let store = StateStore::open(&options.state_dir)?;
        let netlink = Netlink::connect().context("opening a netlink socket in the host namespace")?;
        Ok(Self {
            options: options.clone(),
            store,
            netlink,
            datapath: None,
            uplink_synced: false,
            host_cgroup_synced: false,
        })
    }

    /// The pinned datapath, loaded and pinned if this host has none yet. The socket hooks
    /// are brought in line with `--host-cgroup` once per opened datapath (also one loaded
    /// after `down`); a failure there does not stop the operation that needed the datapath
    /// (the agent's start already checked the option): it is logged, shown by `status`, and
    /// retried on the next use.
    pub fn datapath(&mut self) -> Result<&mut Datapath> {
        self.open_datapath()?;
        if !self.host_cgroup_synced {
            if let Err(e) = self.sync_host_cgroup() {
                tracing::warn!("applying --host-cgroup: {e:#}");
            }
        }
        Ok(self.datapath.as_mut().expect("opened above"))
    }

    fn open_datapath(&mut self) -> Result<&mut Datapath> {
        if self.datapath.is_none() {
            let options = &self.options;
            self.datapath = Some(Datapath::open_or_load_with(&options.bpffs, options.ct_size)?);
            self.host_cgroup_synced = false;
        }
        Ok(self.datapath.as_mut().expect("just opened"))
    }

    /// Brings the socket hooks in line with `--host-cgroup`: attached to that cgroup (and to
    /// no other), with the host namespace's cookie in CONFIG so that they act for its sockets
    /// only; or, without the option, detached. Idempotent.
    pub fn sync_host_cgroup(&mut self) -> Result<()> {
        let cgroup = self.options.open_host_cgroup()?;
        let datapath = self.open_datapath()?;
        let mut config = datapath.config()?;
        match cgroup {
            Some(cgroup) => {
                // The agent lives in the host namespace (all its threads).
                config.host_netns_cookie = crate::sys::netns::own_cookie()?;
                datapath.set_config(&config)?;
                datapath.attach_host_cgroup(&cgroup)?;
            }
            None => {
                datapath.detach_host_cgroup()?;
                config.host_netns_cookie = 0;
                datapath.set_config(&config)?;
            }
        }
        self.host_cgroup_synced = true;
        Ok(())
    }

    /// Brings the uplink settings of the datapath in line with the options: the program on the
    /// uplink, and the masquerade address (the uplink's current primary IPv4 address), port
    /// range and conntrack limit in CONFIG, and the IPv6 masquerade address (its first global
    /// IPv6 address that is neither tentative nor deprecated; none: all zero) in CONFIG6. Without `--uplink`, what was set before stays.
    pub async fn sync_uplink(&mut self) -> Result<()> {
        let Some(uplink) = self.options.uplink.clone() else {
            return Ok(());
        };
        let link =
            self.netlink.link_by_name(&uplink).await?.with_context(|| {
                format!("the uplink {uplink:?} does not exist in the host namespace; check --uplink")
            })?;
        let uplink_subnets = self.uplink_subnets(&uplink).await?;
        let address = uplink_subnets
            .first()
            .map(|net| net.addr())
            .with_context(|| format!("the uplink {uplink} has no IPv4 address to masquerade to; add one first"))?;
        let address6 = self.netlink.usable_global_ipv6(&uplink).await?.into_iter().next();
        check_cluster_cidr(self.options.cluster_cidr, Some((&uplink, &uplink_subnets)))?;
        let (cluster_net, cluster_mask) = match self.options.cluster_cidr {
            Some(cidr) => {
                (datapath_common::ipv4_be(cidr.network().octets()), datapath_common::ipv4_be(cidr.netmask().octets()))
            }
            None => (0, 0),
        };
        let (nat_port_min, nat_port_max) = self.options.nat_ports;
        let mode = self.options.uplink_mode;
        if mode == crate::datapath::UplinkMode::Xdp && link.kind.as_deref() == Some("veth") {
            // Once per agent start is enough: the follower re-syncs on every change of the uplink.
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(
                    "XDP uplink on veth {uplink}: its peer must send complete checksums \
                     (`ethtool -K PEER tx off`), as a NIC delivers them; partial ones cannot be \
                     recognized at XDP and would be rewritten wrong"
                )
            });
        }
        let flags =
            if self.options.allow_host_access { datapath_common::host_config_flags::ALLOW_HOST_ACCESS } else { 0 };
        let share = self.options.ct_unassured_share;
        let datapath = self.datapath()?;
        let ct_limit = crate::host::conntrack::fill_limit(datapath.ct_capacity(crate::datapath::CtTable::Assured)?)?;
        let ct_unassured_quota =
            crate::host::conntrack::unassured_quota(datapath.ct_capacity(crate::datapath::CtTable::Unassured)?, share);
        let current = datapath.config()?;
        let config = datapath_common::HostConfig {
            uplink_ifindex: link.index,
            uplink_ip: datapath_common::ipv4_be(address.octets()),
            nat_port_min,
            nat_port_max,
            ct_limit,
            // Which events are written is the monitor's to say.
            flags: flags | (current.flags & datapath_common::host_config_flags::EVENTS),
            ct_unassured_quota,
            cluster_net,
            cluster_mask,
            // The host cgroup's setting (`sync_host_cgroup`) stays as it is.
            ..current
        };
        datapath.set_config(&config)?;
        // IPv6 is masqueraded to the uplink's first usable global address; all zero (none)
        // leaves IPv6 from the networks untranslated, to the host stack.
        let uplink_ip = address6.map_or([0; 4], |ip| datapath_common::ipv6_be(ip.octets()));
        datapath.set_config6(&datapath_common::HostConfig6 { uplink_ip })?;
        datapath.attach_uplink(&uplink, mode)
    }

    /// Checks `--cluster-cidr` against the uplink as it is now (see [`check_cluster_cidr`]),
    /// before the agent changes anything. An uplink that does not exist yet is checked when
    /// it is synced.
    pub async fn check_cluster_cidr(&self) -> Result<()> {
        let Some(uplink) = self.options.uplink.as_deref() else {
            return check_cluster_cidr(self.options.cluster_cidr, None);
        };
        if self.netlink.link_by_name(uplink).await?.is_none() {
            return Ok(());
        }
        let subnets = self.uplink_subnets(uplink).await?;
        check_cluster_cidr(self.options.cluster_cidr, Some((uplink, &subnets)))
    }

    /// The uplink's IPv4 addresses with their prefixes, the primary first.
    async fn uplink_subnets(&self, uplink: &str) -> Result<Vec<ipnet::Ipv4Net>> {
        Ok(self
            .netlink
            .addresses(uplink)
            .await?
            .into_iter()
            .filter_map(|a| match a {
                ipnet::IpNet::V4(v4) => Some(v4),
                ipnet::IpNet::V6(_) => None,
            })
            .collect())
    }

    /// [`Host::sync_uplink`] the first time only: the agent's uplink follower keeps the
    /// settings current, so an operation that only needs them in place (publish) skips the
    /// netlink round trips.
    pub async fn ensure_uplink(&mut self) -> Result<()> {
        if !self.uplink_synced {
            self.sync_uplink().await?;
            self.uplink_synced = true;
        }
        Ok(())
    }

    /// The datapath if one is pinned, without loading one.
    pub fn existing_datapath(&mut self) -> Result<Option<&mut Datapath>> {
        if self.datapath.is_none() && !Datapath::is_pinned(&self.options.bpffs) {
            return Ok(None);
        }
        self.datapath().map(Some)
    }

    pub fn state(&self) -> &State {
        self.store.state()
    }

    /// Checks a change of the state, makes it durable, and applies it (see [`StateStore`]).
    pub fn commit(&mut self, change: Change) -> Result<()> {
        self.store.commit(change)
    }

    /// Forgets the datapath handles and the saved state (after `down` removed everything).
    pub fn clear(&mut self) -> Result<()> {
        self.datapath = None;
        self.uplink_synced = false;
        self.store.clear()
    }
}

/// Whether `--cluster-cidr` fits the uplink (its name and IPv4 addresses with their prefixes):
///
/// - It needs an uplink: other nodes' pods are reached through it, and their packets arrive
///   on it.
/// - It may not overlap the uplink's own subnet. Whatever lies in the cluster CIDR counts as
///   a pod and is sent untranslated; the uplink's subnet holds the node itself and its
///   neighbours (its gateway to the world, other hosts), which have no route back to a pod
///   address, so their traffic must stay masqueraded. It would also make the other nodes'
///   pods look on-link. Nodes' addresses belong outside the pod CIDR, as in Kubernetes.
/// - It need not contain this host's networks: a network outside it stays node-local
///   (masqueraded to other nodes too, reached from them only through published ports).
pub fn check_cluster_cidr(cluster: Option<ipnet::Ipv4Net>, uplink: Option<(&str, &[ipnet::Ipv4Net])>) -> Result<()> {
    let Some(cluster) = cluster else { return Ok(()) };
    let Some((name, subnets)) = uplink else {
        anyhow::bail!(
            "--cluster-cidr {cluster} needs --uplink: other nodes' pods are reached through the uplink \
             and their packets arrive on it; give the node's interface to the other nodes"
        );
    };
    for subnet in subnets.iter().map(|s| s.trunc()) {
        if cluster.contains(&subnet.network()) || subnet.contains(&cluster.network()) {
            anyhow::bail!(
                "--cluster-cidr {cluster} overlaps the uplink {name}'s subnet {subnet}: the node's own \
                 address and its neighbours there would be taken for pods and sent pod addresses they \
                 cannot answer; give the pods' CIDR alone, outside the nodes' network"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_cidr_needs_an_uplink_and_stays_off_its_subnet() {
        let net = |s: &str| s.parse::<ipnet::Ipv4Net>().unwrap();
        let uplink = [net("192.168.50.2/24")];
        assert!(check_cluster_cidr(None, None).is_ok());
        assert!(check_cluster_cidr(Some(net("10.128.0.0/14")), Some(("eth0", &uplink))).is_ok());
        let err = format!("{:#}", check_cluster_cidr(Some(net("10.128.0.0/14")), None).unwrap_err());
        assert!(err.contains("needs --uplink"), "{err}");
        // Containing the uplink's subnet, inside it, or equal to it: refused, naming both.
        for cluster in ["192.168.0.0/16", "192.168.50.128/25", "192.168.50.0/24"] {
            let err = format!("{:#}", check_cluster_cidr(Some(net(cluster)), Some(("eth0", &uplink))).unwrap_err());
            assert!(err.contains(cluster) && err.contains("eth0") && err.contains("192.168.50.0/24"), "{err}");
        }
        // A neighbouring prefix is fine.
        assert!(check_cluster_cidr(Some(net("192.168.51.0/24")), Some(("eth0", &uplink))).is_ok());
    }
}
