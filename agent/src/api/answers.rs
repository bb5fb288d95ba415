//! What the agent answers, one type per kind of answer. The daemon serializes them and the CLI
//! deserializes the very same types: a renamed field is a compile error on both sides, not a
//! blank column. Plain data with no behaviour, so every layer may build them.
use std::{collections::BTreeMap, path::PathBuf};

use serde::{Deserialize, Serialize};

/// A network (create, inspect, list).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInfo {
    pub name: String,
    pub id: u32,
    pub subnet: String,
    pub gateway: String,
    /// A dual-stack network's IPv6 subnet and gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<String>,
    /// Names of its containers.
    pub containers: Vec<String>,
}

/// A container (create, list; in `status` with its traffic).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    pub name: String,
    pub network: String,
    pub ip: String,
    /// Its IPv6 address, on a dual-stack network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<String>,
    pub mac: String,
    /// Its network namespace: a name under /run/netns, or the path an attached one was given by.
    pub netns: String,
    pub host_interface: String,
    /// Published ports, `HOST_IP:HOST_PORT->PORT/PROTO`.
    pub ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<Traffic>,
}

/// An attached namespace (attach, check, list): what a CNI result is made of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentInfo {
    pub container_id: String,
    pub ifname: String,
    /// The path it was attached by.
    pub netns: String,
    pub network: String,
    /// Its address with the network's prefix length (`10.88.0.2/24`).
    pub address: String,
    pub gateway: String,
    /// On a dual-stack network: its IPv6 address with the prefix length (`fd00:88::2/64`) and
    /// the IPv6 gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address6: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<String>,
    /// Of `ifname`.
    pub mac: String,
    /// The host side of its veth, and that end's MAC.
    pub host_interface: String,
    pub host_mac: String,
    /// Published ports, `HOST_IP:HOST_PORT->PORT/PROTO`.
    pub ports: Vec<String>,
}

/// What a detach did: `detached` is false when nothing was attached (a repeated detach).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Detached {
    pub container_id: String,
    pub ifname: String,
    pub detached: bool,
}

/// A container's counters, summed over the CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    pub sent_packets: u64,
    pub sent_bytes: u64,
    pub received_packets: u64,
    pub received_bytes: u64,
    /// Packets it sent that the datapath dropped (`bpfnet monitor --container` says why).
    #[serde(default)]
    pub dropped_packets: u64,
    /// Its new flows (or its published ports') over their share of the unassured conntrack
    /// table, sent to the overflow table.
    pub ct_quota_hits: u64,
}

/// What a removal removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    pub removed: String,
}

/// The answer to publish/unpublish: the ports it changed and how many the container now
/// publishes (not the whole list, which may be thousands long: `container ls` has it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortChange {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub published: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unpublished: Vec<String>,
    pub port_count: usize,
}

/// `bpfnet status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The namespace that plays the host; none: the one the agent runs in.
    pub host_netns: Option<String>,
    pub state_dir: PathBuf,
    pub bpffs: PathBuf,
    pub networks: Vec<NetworkSummary>,
    pub containers: Vec<ContainerInfo>,
    pub datapath: DatapathStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSummary {
    pub name: String,
    pub subnet: String,
    pub gateway: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<String>,
}

/// The datapath as the kernel reports it; only `loaded` before the first network exists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatapathStatus {
    pub loaded: bool,
    #[serde(flatten)]
    pub running: Option<RunningDatapath>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunningDatapath {
    /// Kernel program id by program name.
    pub program_ids: BTreeMap<String, u32>,
    pub attachments: Vec<Attachment>,
    pub uplink: UplinkStatus,
    /// The socket hooks of `--host-cgroup`; none when the option is off and nothing is attached.
    pub host_cgroup: Option<HostCgroupStatus>,
    pub conntrack: ConntrackStatus,
    /// Event counters and drops by reason, summed over the CPUs.
    pub counters: BTreeMap<String, u64>,
    pub drops: BTreeMap<String, u64>,
}

/// Whether the kernel runs bpfnet's program on an interface (asked from the kernel, not from
/// bpfnet's bookkeeping).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub interface: String,
    /// `uplink`, or `container NAME`.
    pub role: String,
    pub attached: bool,
    /// What the kernel reports on the hook.
    pub program_ids: Vec<u32>,
    /// The uplink's: `tc` or `xdp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UplinkStatus {
    /// 0: no uplink set yet.
    pub ifindex: u32,
    pub masquerade_address: Option<String>,
    /// The uplink's global IPv6 address that IPv6 flows are masqueraded to (CONFIG6); none
    /// when the uplink has none.
    #[serde(default)]
    pub masquerade_address6: Option<String>,
    pub nat_ports: [u16; 2],
    /// `--cluster-cidr` as the datapath has it: routed untranslated (native routing). None:
    /// everything leaving the host is masqueraded.
    #[serde(default)]
    pub cluster_cidr: Option<String>,
}

/// The socket hooks on the host cgroup. With the option set: `path` and either `cgroup_id`
/// and `hooks`, or `error`; without it: `path` null and the `links` still pinned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCgroupStatus {
    pub path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<SocketHook>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<CgroupLink>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketHook {
    pub hook: String,
    pub program: String,
    pub pinned: bool,
    pub attached: bool,
    #[serde(default)]
    pub program_ids: Vec<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A pinned link of a socket hook and the cgroup it is on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupLink {
    pub cgroup_id: u64,
    pub program: String,
}

/// The conntrack tables' fill, settings and events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConntrackStatus {
    /// Entries of the assured table in use (as the datapath counts them), the fill limit
    /// beyond which flows stay unassured, and the table's size.
    pub entries: u64,
    pub limit: u32,
    pub capacity: u32,
    pub unassured_capacity: u32,
    pub overflow_capacity: u32,
    /// Most unassured flows one container or published port holds before its new flows go
    /// to the overflow table.
    pub unassured_quota: u32,
    /// Flows moved to the assured table; flows that became assured while it was at its limit.
    pub promoted: u64,
    pub promotion_refused: u64,
    /// New flows sent to the overflow table by the quota.
    pub quota_hits: u64,
    /// Unassured entries evicted by new ones (nf_conntrack's early_drop), as of the last
    /// garbage collection. Nobody sees the kernel's LRU evict, so the collection derives it:
    /// entries made, less those moved to the assured table, expired, and still there.
    pub early_drops: u64,
    /// IPv6's assured table (`CT6`): entries in use and its size (its unassured and overflow
    /// tables are sized as IPv4's; the limit is the same).
    #[serde(default)]
    pub ipv6_entries: u64,
    #[serde(default)]
    pub ipv6_capacity: u32,
}

fn ipv4() -> String {
    "ipv4".to_owned()
}

/// Both directions of one tracked flow (`conntrack ls`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    /// ipv4 or ipv6 (answers of agents from before IPv6 had only IPv4 flows).
    #[serde(default = "ipv4")]
    pub family: String,
    pub protocol: String,
    /// snat, dnat or hairpin.
    pub kind: String,
    /// As the flow's first packet carried them.
    pub source: String,
    pub destination: String,
    /// After translation.
    pub translated_source: String,
    pub translated_destination: String,
    pub state: FlowState,
    /// Whether the flow is assured (nf_conntrack's word): then it is never evicted, unless the
    /// assured table was at its limit when it became so (`table` then says where it is).
    pub assured: bool,
    pub table: ConntrackTable,
    /// Seconds since the last packet in either direction.
    pub idle_seconds: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub packets_in: u64,
    pub bytes_in: u64,
}

/// A flow's state, nf_conntrack's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowState {
    /// TCP: the originator's SYN, no answer yet.
    SynSent,
    /// TCP: answered with a SYN-ACK; the handshake's last ACK has not come.
    SynRecv,
    Established,
    /// TCP: one side sent a FIN, not acknowledged yet.
    FinWait,
    /// TCP: the first FIN was acknowledged; the other side has not closed.
    CloseWait,
    /// TCP: both sides sent a FIN; the last one is not acknowledged yet.
    LastAck,
    /// TCP: both FINs acknowledged.
    TimeWait,
    /// TCP: reset.
    Close,
    /// UDP/ICMP: nothing came back yet.
    Unreplied,
    /// UDP/ICMP: replies seen.
    Replied,
}

/// The conntrack table a flow lives in (the discriminant: its index in the agent's handles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConntrackTable {
    /// Assured flows, never evicted.
    Assured = 0,
    /// Flows not assured yet; when full, a new flow evicts the oldest (early drop).
    Unassured = 1,
    /// New flows of a container or published port over its share of the unassured table.
    Overflow = 2,
}

/// What one garbage collection did, and the tables after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    pub flows_expired: usize,
    pub entries_removed: u64,
    /// Entries of the assured table in use, and its size.
    pub entries_in_use: u64,
    pub capacity: u32,
    /// Entries of the unassured tables in use.
    pub unassured_entries: u64,
    pub overflow_entries: u64,
    /// Source-translated flows (snat, hairpin) to the one destination (address, port,
    /// protocol) that has the most: each holds a NAT port of `--nat-ports` for it.
    #[serde(default)]
    pub busiest_destination_nat_ports: u64,
    /// Flows removed because a container they were of is gone, whatever their timeout.
    #[serde(default)]
    pub flows_of_removed_containers: usize,
    /// IPv6's tables: the assured one's entries in use and size, and the unassured ones'
    /// entries (the fields above are IPv4's, as before IPv6).
    #[serde(default)]
    pub ipv6_entries_in_use: u64,
    #[serde(default)]
    pub ipv6_capacity: u32,
    #[serde(default)]
    pub ipv6_unassured_entries: u64,
    #[serde(default)]
    pub ipv6_overflow_entries: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datapath_not_loaded_is_only_that() {
        let not_loaded = DatapathStatus { loaded: false, running: None };
        let json = serde_json::to_value(&not_loaded).unwrap();
        assert_eq!(json, serde_json::json!({ "loaded": false }));
        assert_eq!(serde_json::from_value::<DatapathStatus>(json).unwrap(), not_loaded);
    }

    #[test]
    fn a_running_datapath_reads_back_as_it_was_written() {
        let running = DatapathStatus {
            loaded: true,
            running: Some(RunningDatapath {
                program_ids: BTreeMap::from([("from_endpoint".to_owned(), 7)]),
                attachments: vec![Attachment {
                    interface: "up0".into(),
                    role: "uplink".into(),
                    attached: true,
                    program_ids: vec![7],
                    mode: Some("tc".into()),
                }],
                uplink: UplinkStatus {
                    ifindex: 2,
                    masquerade_address: Some("10.0.0.1".into()),
                    masquerade_address6: Some("2001:db8::1".into()),
                    nat_ports: [1, 2],
                    cluster_cidr: Some("10.128.0.0/14".into()),
                },
                host_cgroup: None,
                conntrack: ConntrackStatus {
                    entries: 1,
                    limit: 2,
                    capacity: 3,
                    unassured_capacity: 4,
                    overflow_capacity: 5,
                    unassured_quota: 6,
                    promoted: 7,
                    promotion_refused: 8,
                    quota_hits: 9,
                    early_drops: 10,
                    ipv6_entries: 11,
                    ipv6_capacity: 12,
                },
                counters: BTreeMap::from([("forwarded".to_owned(), 1)]),
                drops: BTreeMap::new(),
            }),
        };
        let json = serde_json::to_value(&running).unwrap();
        assert_eq!(json["conntrack"]["quota_hits"], 9, "flattened: {json}");
        assert_eq!(serde_json::from_value::<DatapathStatus>(json).unwrap(), running);
    }
}
