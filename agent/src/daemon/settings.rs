//! The agent's settings as the command line, environment variables and config file give them
//! (clap lives here only), turned into the plain settings types of the layers below.
use std::path::PathBuf;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use serde::de::DeserializeOwned;

use crate::{
    datapath::UplinkMode,
    host::{conntrack::Timeouts, HostOptions},
};

#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    #[command(flatten)]
    pub host: HostArgs,
    /// TOML file with the agent's settings (the keys are the long flags with `_` for `-`, e.g.
    /// `uplink = "eth0"`); flags and environment variables win over it.
    #[arg(long, env = "BPFNET_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Replace the pinned programs with this binary's even if their code is the same; they are
    /// replaced anyway when it differs. Atomic per link.
    #[arg(long, env = "BPFNET_RELOAD_PROGRAMS", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    pub reload_programs: bool,
    /// Seconds between conntrack garbage collections.
    #[arg(long, env = "BPFNET_GC_INTERVAL", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub gc_interval: u64,
    /// Also serve `/metrics` over TCP on this address (IP:PORT), for Prometheus. Off by
    /// default: the metrics name containers. The API socket always serves `/metrics`.
    #[arg(long, env = "BPFNET_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Most recent drops the agent keeps for `bpfnet monitor --last N`. 0 keeps none, and the
    /// datapath then reports drops only while a monitor listens.
    #[arg(long, env = "BPFNET_DROP_HISTORY", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub drop_history: u64,
    /// Also serve Docker's remote network driver protocol on this unix socket. dockerd
    /// discovers `/run/docker/plugins/NAME.sock` as the driver NAME (`docker network create
    /// -d NAME`); see docs/docker.md.
    #[arg(long, env = "BPFNET_DOCKER_PLUGIN_SOCKET", value_name = "PATH")]
    pub docker_plugin_socket: Option<PathBuf>,
    /// Also write a plugin spec file here naming --docker-plugin-socket's URL, for a socket
    /// outside /run/docker/plugins: dockerd also finds `/etc/docker/plugins/NAME.spec` as the
    /// driver NAME. Written once the socket is bound, removed when the agent stops.
    #[arg(long, env = "BPFNET_DOCKER_PLUGIN_SPEC", value_name = "FILE", requires = "docker_plugin_socket")]
    pub docker_plugin_spec: Option<PathBuf>,
}

/// The settings of the host the agent serves ([`HostOptions`]).
#[derive(clap::Args, Debug, Clone)]
pub struct HostArgs {
    /// Network namespace (a name under /run/netns) that plays the host: host-side veths,
    /// programs and routes live there. Default: the namespace bpfnet runs in.
    #[arg(long, global = true, env = "BPFNET_HOST_NETNS", value_name = "NAME")]
    pub host_netns: Option<String>,
    /// Directory of the declarative state (networks, containers).
    #[arg(long, global = true, env = "BPFNET_STATE_DIR", default_value = "/var/lib/bpfnet", value_name = "DIR")]
    pub state_dir: PathBuf,
    /// bpffs directory where programs, maps and links are pinned.
    #[arg(long, global = true, env = "BPFNET_BPFFS", default_value = "/sys/fs/bpf/bpfnet", value_name = "DIR")]
    pub bpffs: PathBuf,
    /// Retired: the programs no longer log; drops are events (`bpfnet monitor`). Still
    /// accepted, so that an older config file keeps working, and warned about.
    #[arg(long, global = true, env = "BPFNET_DATAPATH_LOG", hide = true)]
    pub datapath_log: Option<String>,
    /// The host's interface to the outside world: containers' traffic leaving through it is
    /// masqueraded to its IPv4 address (and its replies translated back).
    #[arg(long, global = true, env = "BPFNET_UPLINK", value_name = "IFACE")]
    pub uplink: Option<String>,
    /// Where the uplink's program runs: tcx ingress, or XDP (before the kernel allocates an
    /// skb; replies and published-port traffic are redirected into containers from there).
    #[arg(long, global = true, env = "BPFNET_UPLINK_MODE", default_value = "tc",
          value_parser = serde_enum::<UplinkMode>(&["tc", "xdp"]))]
    pub uplink_mode: UplinkMode,
    /// The cluster's pod CIDR (Kubernetes' cluster CIDR, Cilium's native-routing CIDR), e.g.
    /// 10.128.0.0/14: a container's traffic to it (other nodes' pods) is routed by the host's
    /// routing table untranslated, and traffic on the uplink to a container inside it is
    /// delivered; everything else leaving the host is masqueraded as without it. Needs
    /// --uplink, and may not overlap the uplink's own subnet. Default: none.
    #[arg(long, global = true, env = "BPFNET_CLUSTER_CIDR", value_name = "CIDR", value_parser = parse_cluster_cidr)]
    pub cluster_cidr: Option<ipnet::Ipv4Net>,
    /// Source ports for masquerading, inclusive.
    #[arg(long, global = true, env = "BPFNET_NAT_PORTS", default_value = "32768-60999", value_parser = parse_port_range)]
    pub nat_ports: (u16, u16),
    /// Size of the conntrack table of assured flows, in entries (two per flow); the table of
    /// flows not assured yet is half as large, its overflow an eighth (each at least 16,384).
    /// Takes effect when the datapath is first loaded.
    #[arg(long, global = true, env = "BPFNET_CT_SIZE", default_value_t = crate::datapath::DEFAULT_CT_ENTRIES,
          value_parser = clap::value_parser!(u32).range(4_096..=16_777_216))]
    pub ct_size: u32,
    /// Most of the unassured conntrack table (handshakes, unanswered datagrams) that one
    /// container's new flows, or one published port's, may hold, in percent. Its further new
    /// flows go to an overflow table where they compete only with each other: a flood from
    /// one container or at one port cannot crowd out everyone else's new connections.
    #[arg(long, global = true, env = "BPFNET_CT_UNASSURED_SHARE", default_value_t = 25, value_name = "PERCENT",
          value_parser = clap::value_parser!(u8).range(1..=100))]
    pub ct_unassured_share: u8,
    #[command(flatten)]
    pub ct_timeouts: TimeoutArgs,
    /// Let containers reach the host's own addresses (its services), not only their gateway.
    #[arg(long, global = true, env = "BPFNET_ALLOW_HOST_ACCESS", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    pub allow_host_access: bool,
    /// cgroup v2 directory whose processes (of the host namespace) reach published ports at
    /// the uplink's address, 127.0.0.0/8 and ::1, also from IPv6 sockets by IPv4-mapped
    /// addresses, through socket hooks (connect4/6, sendmsg4, recvmsg4/6, getpeername4/6). On a
    /// real host: the root of the cgroup v2 hierarchy (/sys/fs/cgroup). Default: none (host
    /// processes do not reach published ports).
    #[arg(long, global = true, env = "BPFNET_HOST_CGROUP", value_name = "DIR")]
    pub host_cgroup: Option<PathBuf>,
}

impl From<HostArgs> for HostOptions {
    fn from(args: HostArgs) -> Self {
        HostOptions {
            host_netns: args.host_netns,
            state_dir: args.state_dir,
            bpffs: args.bpffs,
            uplink: args.uplink,
            uplink_mode: args.uplink_mode,
            nat_ports: args.nat_ports,
            cluster_cidr: args.cluster_cidr,
            ct_size: args.ct_size,
            ct_unassured_share: args.ct_unassured_share,
            allow_host_access: args.allow_host_access,
            host_cgroup: args.host_cgroup,
            ct_timeouts: args.ct_timeouts.into(),
        }
    }
}

/// Conntrack timeouts by flow state ([`Timeouts`]), in seconds; the defaults are nf_conntrack's.
#[derive(clap::Args, Debug, Clone)]
pub struct TimeoutArgs {
    /// TCP flow whose SYN got no answer yet (nf_conntrack_tcp_timeout_syn_sent).
    #[arg(
        long = "ct-timeout-tcp-syn",
        env = "BPFNET_CT_TIMEOUT_TCP_SYN",
        global = true,
        default_value_t = 120,
        value_name = "SECS"
    )]
    pub tcp_syn_sent: u64,
    /// TCP flow answered with a SYN-ACK, waiting for the handshake's last ACK
    /// (nf_conntrack_tcp_timeout_syn_recv). A spoofed SYN flood leaves its flows here.
    #[arg(
        long = "ct-timeout-tcp-syn-recv",
        env = "BPFNET_CT_TIMEOUT_TCP_SYN_RECV",
        global = true,
        default_value_t = 60,
        value_name = "SECS"
    )]
    pub tcp_syn_recv: u64,
    /// Established TCP flow (nf_conntrack_tcp_timeout_established).
    #[arg(
        long = "ct-timeout-tcp-established",
        env = "BPFNET_CT_TIMEOUT_TCP_ESTABLISHED",
        global = true,
        default_value_t = 432_000,
        value_name = "SECS"
    )]
    pub tcp_established: u64,
    /// TCP flow one side closed with a FIN not acknowledged yet (nf_conntrack_tcp_timeout_fin_wait).
    #[arg(
        long = "ct-timeout-tcp-fin",
        env = "BPFNET_CT_TIMEOUT_TCP_FIN",
        global = true,
        default_value_t = 120,
        value_name = "SECS"
    )]
    pub tcp_fin_wait: u64,
    /// TCP flow whose first FIN was acknowledged, the other side not closed yet
    /// (nf_conntrack_tcp_timeout_close_wait).
    #[arg(
        long = "ct-timeout-tcp-close-wait",
        env = "BPFNET_CT_TIMEOUT_TCP_CLOSE_WAIT",
        global = true,
        default_value_t = 60,
        value_name = "SECS"
    )]
    pub tcp_close_wait: u64,
    /// TCP flow closed by both sides, the last FIN not acknowledged yet
    /// (nf_conntrack_tcp_timeout_last_ack).
    #[arg(
        long = "ct-timeout-tcp-last-ack",
        env = "BPFNET_CT_TIMEOUT_TCP_LAST_ACK",
        global = true,
        default_value_t = 30,
        value_name = "SECS"
    )]
    pub tcp_last_ack: u64,
    /// TCP flow closed by both sides and acknowledged (nf_conntrack_tcp_timeout_time_wait).
    #[arg(
        long = "ct-timeout-tcp-time-wait",
        env = "BPFNET_CT_TIMEOUT_TCP_TIME_WAIT",
        global = true,
        default_value_t = 120,
        value_name = "SECS"
    )]
    pub tcp_time_wait: u64,
    /// TCP flow reset (nf_conntrack_tcp_timeout_close).
    #[arg(
        long = "ct-timeout-tcp-close",
        env = "BPFNET_CT_TIMEOUT_TCP_CLOSE",
        global = true,
        default_value_t = 10,
        value_name = "SECS"
    )]
    pub tcp_close: u64,
    /// UDP flow with no reply yet (nf_conntrack_udp_timeout).
    #[arg(
        long = "ct-timeout-udp",
        env = "BPFNET_CT_TIMEOUT_UDP",
        global = true,
        default_value_t = 30,
        value_name = "SECS"
    )]
    pub udp: u64,
    /// UDP flow that saw replies (nf_conntrack_udp_timeout_stream).
    #[arg(
        long = "ct-timeout-udp-stream",
        env = "BPFNET_CT_TIMEOUT_UDP_STREAM",
        global = true,
        default_value_t = 120,
        value_name = "SECS"
    )]
    pub udp_stream: u64,
    /// ICMP echo (nf_conntrack_icmp_timeout).
    #[arg(
        long = "ct-timeout-icmp",
        env = "BPFNET_CT_TIMEOUT_ICMP",
        global = true,
        default_value_t = 30,
        value_name = "SECS"
    )]
    pub icmp: u64,
}

impl From<TimeoutArgs> for Timeouts {
    fn from(args: TimeoutArgs) -> Self {
        Timeouts {
            tcp_syn_sent: args.tcp_syn_sent,
            tcp_syn_recv: args.tcp_syn_recv,
            tcp_established: args.tcp_established,
            tcp_fin_wait: args.tcp_fin_wait,
            tcp_close_wait: args.tcp_close_wait,
            tcp_last_ack: args.tcp_last_ack,
            tcp_time_wait: args.tcp_time_wait,
            tcp_close: args.tcp_close,
            udp: args.udp,
            udp_stream: args.udp_stream,
            icmp: args.icmp,
        }
    }
}

/// A value parser for an enum of the layers below by its serde name, listing the names in
/// `--help`, so that those types need no clap.
fn serde_enum<T: DeserializeOwned + Clone + Send + Sync + 'static>(
    names: &'static [&'static str],
) -> impl TypedValueParser<Value = T> {
    PossibleValuesParser::new(names)
        .map(|name| serde_json::from_value(serde_json::Value::String(name)).expect("every listed name is a variant"))
}

/// Parses an IPv4 prefix without host bits (`10.128.0.0/14`).
fn parse_cluster_cidr(text: &str) -> Result<ipnet::Ipv4Net, String> {
    let net: ipnet::Ipv4Net = text
        .trim()
        .parse()
        .map_err(|e| format!("{text:?} is not an IPv4 CIDR ({e}); write it as ADDRESS/PREFIX, e.g. 10.128.0.0/14"))?;
    if net.trunc() != net {
        return Err(format!("{text:?} has host bits set; the cluster CIDR is the prefix itself, {}", net.trunc()));
    }
    if net.prefix_len() == 0 {
        return Err(format!(
            "{text:?} covers every address, so nothing would be masqueraded; give the cluster's pod CIDR"
        ));
    }
    Ok(net)
}

/// Parses `LOW-HIGH` (e.g. 32768-60999) into an inclusive port range.
fn parse_port_range(text: &str) -> Result<(u16, u16), String> {
    let (low, high) = text
        .split_once('-')
        .ok_or_else(|| format!("{text:?} is not a port range; write it as LOW-HIGH, e.g. 32768-60999"))?;
    let parse =
        |p: &str| p.trim().parse::<u16>().map_err(|e| format!("{p:?} in {text:?} is not a port (1-65535): {e}"));
    let (low, high) = (parse(low)?, parse(high)?);
    if low == 0 || low > high {
        return Err(format!("{text:?}: the range must be LOW-HIGH with 1 <= LOW <= HIGH"));
    }
    Ok((low, high))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_cidr_is_a_prefix_without_host_bits() {
        assert_eq!(parse_cluster_cidr("10.128.0.0/14").unwrap().to_string(), "10.128.0.0/14");
        let err = parse_cluster_cidr("10.129.0.0/14").unwrap_err();
        assert!(err.contains("host bits") && err.contains("10.128.0.0/14"), "{err}");
        let err = parse_cluster_cidr("10.128.0.0").unwrap_err();
        assert!(err.contains("ADDRESS/PREFIX"), "{err}");
        assert!(parse_cluster_cidr("0.0.0.0/0").unwrap_err().contains("every address"));
    }

    #[test]
    fn each_state_has_its_own_timeout_with_nf_conntracks_defaults() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            timeouts: TimeoutArgs,
        }
        let t = Timeouts::from(Cli::parse_from(["bpfnet"]).timeouts);
        let secs = |state, proto| t.timeout(state, proto).as_secs();
        use crate::api::FlowState::*;
        let tcp = [
            (SynSent, 120),
            (SynRecv, 60),
            (Established, 432_000),
            (FinWait, 120),
            (CloseWait, 60),
            (LastAck, 30),
            (TimeWait, 120),
            (Close, 10),
        ];
        for (state, want) in tcp {
            assert_eq!(secs(state, datapath_common::IPPROTO_TCP), want, "{state:?}");
        }
        assert_eq!(
            (secs(Unreplied, datapath_common::IPPROTO_UDP), secs(Replied, datapath_common::IPPROTO_UDP)),
            (30, 120)
        );
        assert_eq!(secs(Replied, datapath_common::IPPROTO_ICMP), 30);
        let t = Timeouts::from(Cli::parse_from(["bpfnet", "--ct-timeout-tcp-syn-recv", "5"]).timeouts);
        assert_eq!(t.timeout(SynRecv, datapath_common::IPPROTO_TCP).as_secs(), 5);
    }
}
