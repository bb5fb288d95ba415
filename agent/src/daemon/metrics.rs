//! `GET /metrics`: Prometheus metrics, read from the pinned maps at scrape time (so the
//! datapath's counters survive agent restarts) through a datapath handle of the scrape's own,
//! without holding the host's lock. The agent's own counters (API requests, garbage
//! collections) live here. Labels name containers, networks, interfaces, programs, reasons and
//! kinds, never an address or a port.
//!
//! The encoder writes OpenMetrics text; a scraper that does not ask for OpenMetrics gets the
//! Prometheus text format (0.0.4), which differs only in how counters are named and in the
//! `# EOF` and `# UNIT` lines.
use std::{collections::HashSet, fmt::Write as _, path::PathBuf, sync::Mutex, time::Duration};

use anyhow::{Context, Result};
use datapath_common::{map_names, Counter as DatapathCounter, MAX_ENDPOINTS};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
        histogram::{exponential_buckets, Histogram},
        MetricType,
    },
    registry::Registry,
};

use crate::{
    api::{GcReport, RunningDatapath, Traffic},
    daemon::{monitor::Monitor, service, SharedHost},
    datapath::{Datapath, UplinkMode},
    host::state::ContainerSpec,
};

/// Content types of the two formats.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The agent's own counters, kept from its start.
pub struct Metrics {
    api_requests: Family<ApiRequest, Counter>,
    gc_runs: Counter,
    gc_expired_flows: Counter,
    gc_duration: Histogram,
    last_gc: Mutex<Option<GcReport>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiRequest {
    /// The route's template (`/v1/containers/{name}`), never a name.
    route: String,
    method: String,
    code: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            api_requests: Family::default(),
            gc_runs: Counter::default(),
            gc_expired_flows: Counter::default(),
            // 100 µs to 13 s.
            gc_duration: Histogram::new(exponential_buckets(0.0001, 4.0, 9)),
            last_gc: Mutex::new(None),
        }
    }
}

impl Metrics {
    pub fn count_request(&self, route: &str, method: &str, code: u16) {
        let labels = ApiRequest { route: route.into(), method: method.into(), code: code.to_string() };
        self.api_requests.get_or_create(&labels).inc();
    }

    pub fn gc_done(&self, took: Duration, report: &GcReport) {
        self.gc_runs.inc();
        self.gc_expired_flows.inc_by(report.flows_expired as u64);
        self.gc_duration.observe(took.as_secs_f64());
        *self.last_gc.lock().expect("last gc") = Some(report.clone());
    }

    /// Encodes every metric, in OpenMetrics text or in the Prometheus text format.
    pub async fn scrape(&self, host: &SharedHost, monitor: &Monitor, openmetrics: bool) -> Result<String> {
        let (bpffs, host_cgroup, containers, networks) = {
            let host = host.lock().await;
            let containers: Vec<ContainerSpec> = host.state().containers.values().cloned().collect();
            (host.options.bpffs.clone(), host.options.host_cgroup.clone(), containers, host.state().networks.len())
        };
        let last_gc = self.last_gc.lock().expect("last gc").clone();
        let slow_listener_lost = monitor.slow_listener_lost();
        let reading = tokio::task::spawn_blocking(move || {
            Reading::take(bpffs, host_cgroup, containers, networks, last_gc, slow_listener_lost)
        })
        .await
        .context("the metrics reader panicked")??;
        let mut registry = Registry::with_prefix("bpfnet");
        registry.register(
            "api_requests",
            "API requests answered, by route, method and status",
            self.api_requests.clone(),
        );
        registry.register("conntrack_gc_runs", "Conntrack garbage collections run by the agent", self.gc_runs.clone());
        registry.register(
            "conntrack_gc_expired_flows",
            "Flows the agent's conntrack garbage collection expired",
            self.gc_expired_flows.clone(),
        );
        registry.register(
            "conntrack_gc_duration_seconds",
            "How long each conntrack garbage collection took",
            self.gc_duration.clone(),
        );
        registry.register_collector(Box::new(reading));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).context("encoding the metrics")?;
        Ok(if openmetrics { text } else { to_prometheus_text(&text) })
    }
}

/// What one scrape read from the kernel.
#[derive(Debug)]
struct Reading {
    networks: usize,
    containers: Vec<(ContainerSpec, Option<Traffic>)>,
    /// None: no datapath loaded.
    datapath: Option<DatapathReading>,
    slow_listener_lost: u64,
}

#[derive(Debug)]
struct DatapathReading {
    running: RunningDatapath,
    /// (map, entries in use, capacity).
    maps: Vec<(&'static str, u64, u32)>,
    events_lost: Vec<(&'static str, u64)>,
    last_gc: Option<GcReport>,
    nat_ports: u64,
}

impl Reading {
    fn take(
        bpffs: PathBuf,
        host_cgroup: Option<PathBuf>,
        containers: Vec<ContainerSpec>,
        networks: usize,
        last_gc: Option<GcReport>,
        slow_listener_lost: u64,
    ) -> Result<Self> {
        if !Datapath::is_pinned(&bpffs) {
            let containers = containers.into_iter().map(|c| (c, None)).collect();
            return Ok(Reading { networks, containers, datapath: None, slow_listener_lost });
        }
        let dp = Datapath::open_pinned(&bpffs)?;
        let veths: Vec<(String, String)> =
            containers.iter().map(|c| (c.host_interface.clone(), c.name.clone())).collect();
        let running = service::datapath_status(&veths, host_cgroup.as_deref(), &dp)?;
        let ct = &running.conntrack;
        let gc = last_gc.as_ref();
        let published: usize = containers.iter().map(|c| c.publish.len()).sum();
        let mut maps = vec![
            ("conntrack", ct.entries, ct.capacity),
            ("conntrack_unassured", gc.map_or(0, |g| g.unassured_entries), ct.unassured_capacity),
            ("conntrack_overflow", gc.map_or(0, |g| g.overflow_entries), ct.overflow_capacity),
            ("conntrack_ipv6", ct.ipv6_entries, ct.ipv6_capacity),
            ("endpoints", containers.len() as u64, MAX_ENDPOINTS),
            ("published_ports", published as u64, dp.map_capacity(map_names::PUBLISHED_PORTS)?),
        ];
        for (map, entries, capacity) in dp.traffic_map_fill()? {
            let name = if map == map_names::FRAGS { "fragments" } else { "host_sockets" };
            maps.push((name, entries, capacity));
        }
        let events_lost = dp.events_lost()?.into_iter().map(|(cause, n)| (cause.name(), n)).collect();
        let [low, high] = running.uplink.nat_ports;
        let nat_ports = u64::from(high.saturating_sub(low)) + 1;
        let containers = containers
            .into_iter()
            .map(|c| {
                let traffic = service::traffic(&dp, &c);
                (c, traffic)
            })
            .collect();
        Ok(Reading {
            networks,
            containers,
            datapath: Some(DatapathReading { running, maps, events_lost, last_gc, nat_ports }),
            slow_listener_lost,
        })
    }
}

/// Writes one family: its descriptor, then a sample per label set.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Vec<(&'static str, String)>, M)>,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A family's only sample, without labels.
fn one<M>(value: M) -> Vec<(Vec<(&'static str, String)>, M)> {
    vec![(Vec::new(), value)]
}

fn counter(value: u64) -> ConstCounter<u64> {
    ConstCounter::new(value)
}

fn gauge(value: f64) -> ConstGauge<f64> {
    ConstGauge::new(value)
}

/// One of a container's counters.
type TrafficField = fn(&Traffic) -> u64;

/// The kinds of `COUNTERS` that count new flows, and the kind of flow each is.
const FLOW_COUNTERS: [(DatapathCounter, &str); 3] = [
    (DatapathCounter::SnatNewFlow, "snat"),
    (DatapathCounter::DnatNewFlow, "dnat"),
    (DatapathCounter::HairpinNewFlow, "hairpin"),
];

impl Collector for Reading {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        use MetricType::{Counter as C, Gauge as G};
        family(&mut enc, "networks", "Networks on this host", G, one(gauge(self.networks as f64)))?;
        family(&mut enc, "containers", "Containers on this host", G, one(gauge(self.containers.len() as f64)))?;
        let loaded = f64::from(u8::from(self.datapath.is_some()));
        family(&mut enc, "datapath_loaded", "1 when the eBPF datapath is loaded", G, one(gauge(loaded)))?;
        let per_container = |value: fn(&Traffic) -> u64| {
            self.containers.iter().filter_map(move |(c, traffic)| {
                let labels = vec![("container", c.name.clone()), ("network", c.network.clone())];
                traffic.as_ref().map(|t| (labels, counter(value(t))))
            })
        };
        let container_families: [(&str, &str, TrafficField); 6] = [
            ("container_sent_packets", "Packets the container sent (dropped ones too)", |t| t.sent_packets),
            ("container_sent_bytes", "Bytes the container sent (dropped ones too)", |t| t.sent_bytes),
            ("container_received_packets", "Packets the datapath delivered into the container", |t| t.received_packets),
            ("container_received_bytes", "Bytes the datapath delivered into the container", |t| t.received_bytes),
            ("container_drops", "Packets the container sent that the datapath dropped", |t| t.dropped_packets),
            (
                "container_conntrack_quota_hits",
                "New flows of the container over its share of the unassured conntrack table",
                |t| t.ct_quota_hits,
            ),
        ];
        for (name, help, value) in container_families {
            family(&mut enc, name, help, C, per_container(value))?;
        }
        let lost_here = [(vec![("cause", "slow_listener".to_string())], counter(self.slow_listener_lost))];
        let Some(dp) = &self.datapath else {
            return family(&mut enc, "events_lost", "Monitor events not delivered, by cause", C, lost_here);
        };
        let events_lost = dp.events_lost.iter().map(|(cause, n)| (vec![("cause", cause.to_string())], counter(*n)));
        family(&mut enc, "events_lost", "Monitor events not delivered, by cause", C, events_lost.chain(lost_here))?;
        let running = &dp.running;
        let drops = running.drops.iter().map(|(reason, n)| (vec![("reason", reason.clone())], counter(*n)));
        family(&mut enc, "drops", "Packets the datapath dropped, by reason", C, drops)?;
        let flow_counter = |name: &str| FLOW_COUNTERS.iter().find(|(c, _)| c.name() == name).map(|(_, kind)| *kind);
        let packets = running
            .counters
            .iter()
            .filter(|(name, _)| flow_counter(name).is_none())
            .map(|(kind, n)| (vec![("kind", kind.clone())], counter(*n)));
        family(&mut enc, "packets", "Packets the datapath forwarded, answered or translated, by kind", C, packets)?;
        let flows = running
            .counters
            .iter()
            .filter_map(|(name, n)| Some((vec![("kind", flow_counter(name)?.to_string())], counter(*n))));
        family(&mut enc, "flows_created", "Translated flows the datapath started, by kind", C, flows)?;
        let ct = &running.conntrack;
        let gc = dp.last_gc.as_ref();
        let table = |t: &str| vec![("table", t.to_string())];
        let ct_entries = [
            (table("assured"), gauge(ct.entries as f64)),
            (table("unassured"), gauge(gc.map_or(0, |g| g.unassured_entries) as f64)),
            (table("overflow"), gauge(gc.map_or(0, |g| g.overflow_entries) as f64)),
            // IPv6's tables (CT6, ...) by table names of their own: IPv4's series stay as they were.
            (table("ipv6_assured"), gauge(ct.ipv6_entries as f64)),
            (table("ipv6_unassured"), gauge(gc.map_or(0, |g| g.ipv6_unassured_entries) as f64)),
            (table("ipv6_overflow"), gauge(gc.map_or(0, |g| g.ipv6_overflow_entries) as f64)),
        ];
        let help = "Conntrack entries in use, two a flow (unassured tables: as of the last garbage collection)";
        family(&mut enc, "conntrack_entries", help, G, ct_entries)?;
        let help = "Entries of the assured table beyond which flows stay unassured";
        family(&mut enc, "conntrack_limit", help, G, one(gauge(f64::from(ct.limit))))?;
        let ct_capacity = [
            (table("assured"), gauge(f64::from(ct.capacity))),
            (table("unassured"), gauge(f64::from(ct.unassured_capacity))),
            (table("overflow"), gauge(f64::from(ct.overflow_capacity))),
            // IPv6's unassured tables are sized as IPv4's (datapath/load.rs).
            (table("ipv6_assured"), gauge(f64::from(ct.ipv6_capacity))),
            (table("ipv6_unassured"), gauge(f64::from(ct.unassured_capacity))),
            (table("ipv6_overflow"), gauge(f64::from(ct.overflow_capacity))),
        ];
        family(&mut enc, "conntrack_capacity", "Size of each conntrack table", G, ct_capacity)?;
        let ct_events: [(&str, &str, u64); 4] = [
            ("conntrack_promoted", "Flows moved to the assured table", ct.promoted),
            (
                "conntrack_promotion_refused",
                "Flows that became assured while that table was full",
                ct.promotion_refused,
            ),
            ("conntrack_quota_hits", "New flows sent to the overflow table by the quota", ct.quota_hits),
            ("conntrack_early_drops", "Unassured entries the LRU evicted for new ones", ct.early_drops),
        ];
        for (name, help, value) in ct_events {
            family(&mut enc, name, help, C, one(counter(value)))?;
        }
        let map = |name: &str| vec![("map", name.to_string())];
        let help = "Entries in use of the datapath's maps that fill up";
        family(&mut enc, "map_entries", help, G, dp.maps.iter().map(|(m, n, _)| (map(m), gauge(*n as f64))))?;
        let help = "Size of the datapath's maps that fill up";
        family(&mut enc, "map_capacity", help, G, dp.maps.iter().map(|(m, _, cap)| (map(m), gauge(f64::from(*cap)))))?;
        let pressure = dp.maps.iter().map(|(m, n, cap)| (map(m), gauge(*n as f64 / f64::from((*cap).max(1)))));
        family(&mut enc, "map_pressure", "Fill of the datapath's maps, 0 to 1", G, pressure)?;
        let busiest = gc.map_or(0, |g| g.busiest_destination_nat_ports);
        let help = "NAT ports held towards the destination that holds most (as of the last garbage collection)";
        family(&mut enc, "nat_busiest_destination_ports", help, G, one(gauge(busiest as f64)))?;
        let help = "NAT ports available per destination (--nat-ports)";
        family(&mut enc, "nat_ports", help, G, one(gauge(dp.nat_ports as f64)))?;
        let attached = running.attachments.iter().map(|a| {
            let program = match a.mode.as_deref() {
                Some(mode) => UplinkMode::program_of(mode),
                None => datapath_common::program_names::FROM_ENDPOINT,
            };
            let container = a.role.strip_prefix("container ").unwrap_or_default().to_string();
            let labels =
                vec![("interface", a.interface.clone()), ("program", program.to_string()), ("container", container)];
            (labels, gauge(f64::from(u8::from(a.attached))))
        });
        let help = "1 when the kernel runs bpfnet's program on the interface, 0 when it should and does not";
        family(&mut enc, "program_attached", help, G, attached)
    }
}

/// OpenMetrics text as the Prometheus text format (0.0.4): counter families are named with
/// their `_total` suffix, as their samples are, and `# UNIT` and `# EOF` go.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: HashSet<&str> =
        openmetrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        let _ = writeln!(out, "{}", renamed.as_deref().unwrap_or(line));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_names_counters_as_their_samples() {
        let openmetrics = "# HELP bpfnet_drops Packets dropped.\n# TYPE bpfnet_drops counter\n\
                           bpfnet_drops_total{reason=\"malformed\"} 3\n# HELP bpfnet_containers Containers.\n\
                           # TYPE bpfnet_containers gauge\nbpfnet_containers 2\n# UNIT bpfnet_x seconds\n# EOF\n";
        let text = to_prometheus_text(openmetrics);
        assert_eq!(
            text,
            "# HELP bpfnet_drops_total Packets dropped.\n# TYPE bpfnet_drops_total counter\n\
             bpfnet_drops_total{reason=\"malformed\"} 3\n# HELP bpfnet_containers Containers.\n\
             # TYPE bpfnet_containers gauge\nbpfnet_containers 2\n"
        );
    }
}
