//! The agent's side of `bpfnet monitor`: the one reader of the datapath's event ring buffer.
//! It names each event's interface, container and network, keeps the most recent drops (for
//! `--last N`), and fans events out to the API's listeners, each through its filter. It also
//! says which events the programs write: drops while anyone listens or the agent keeps a drop
//! history (`--drop-history`), new flows only while a listener wants them; otherwise each
//! costs the programs one load and a branch.
use std::{
    collections::{HashMap, VecDeque},
    net::Ipv4Addr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime},
};

use datapath_common::{ct_kind, event_kind, host_config_flags, CtEntry, CtKey, DatapathEvent, DropReason, EventLoss};
use tokio::sync::{broadcast, Notify};

use crate::{
    api::{DropEvent, EventType, FlowChange, FlowEvent, LostEvents, MonitorEvent, MonitorFilter, Protocol, Tuple},
    daemon::SharedHost,
    datapath::{pinned_map_id, EventRing},
};

/// Events buffered for each listener; a listener further behind loses the oldest and is told
/// how many (`slow_listener`).
const LISTENER_BUFFER: usize = 4_096;
/// How often lost events are reported and the event settings checked.
const TICK: Duration = Duration::from_secs(1);
/// Names are read again on an unknown interface, at most this often.
const NAMES_MAX_AGE: Duration = Duration::from_millis(200);

pub struct Monitor {
    events: broadcast::Sender<MonitorEvent>,
    /// The most recent drops, oldest first, at most `history` of them.
    recent_drops: Mutex<VecDeque<MonitorEvent>>,
    history: usize,
    listeners: Mutex<Listeners>,
    /// A listener came or went: the event settings change.
    listeners_changed: Notify,
    names: Mutex<Names>,
    /// Events listeners missed because they read too slowly.
    slow_listener_lost: AtomicU64,
    /// The datapath's lost-event counters as last reported.
    /// The datapath's lost-event counters as last reported, and the kernel id of the map they
    /// were read from: a datapath loaded anew (`bpfnet down`, then a network) starts from 0.
    datapath_lost_reported: Mutex<Option<LostCounts>>,
}

/// The kernel id of the EVENTS_LOST map, and its counts by cause.
type LostCounts = (u32, Vec<(EventLoss, u64)>);

#[derive(Default)]
struct Listeners {
    drops: usize,
    flows: usize,
}

/// Who is behind an interface index and an address, as of `read_at`.
#[derive(Default)]
struct Names {
    interfaces: HashMap<u32, Interface>,
    containers_by_ip: HashMap<Ipv4Addr, String>,
    read_at: Option<Instant>,
}

#[derive(Clone)]
struct Interface {
    name: String,
    container: Option<String>,
    network: Option<String>,
}

/// What a listener gets: the recent drops it asked for, then the live events.
pub struct Subscription {
    pub replay: Vec<MonitorEvent>,
    live: broadcast::Receiver<MonitorEvent>,
    filter: MonitorFilter,
    _listener: ListenerGuard,
}

/// Counts a listener while it exists.
struct ListenerGuard {
    monitor: Arc<Monitor>,
    drops: bool,
    flows: bool,
}

impl Drop for ListenerGuard {
    fn drop(&mut self) {
        let mut listeners = self.monitor.listeners.lock().expect("listener counts");
        listeners.drops -= usize::from(self.drops);
        listeners.flows -= usize::from(self.flows);
        drop(listeners);
        self.monitor.listeners_changed.notify_one();
    }
}

impl Subscription {
    /// The next live event that passes the filter; None once the agent stops.
    pub async fn next(&mut self) -> Option<MonitorEvent> {
        loop {
            match self.live.recv().await {
                Ok(event) if self.filter.matches(&event) => return Some(event),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    self._listener.monitor.slow_listener_lost.fetch_add(missed, Ordering::Relaxed);
                    return Some(MonitorEvent::Lost(LostEvents {
                        time_ns: now_ns(),
                        cause: "slow_listener".into(),
                        count: missed,
                    }));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

impl Monitor {
    /// A monitor that keeps the `history` most recent drops (0: none, and drops are then
    /// written only while someone listens).
    pub fn new(history: usize) -> Arc<Self> {
        Arc::new(Self {
            events: broadcast::channel(LISTENER_BUFFER).0,
            recent_drops: Mutex::new(VecDeque::with_capacity(history)),
            history,
            listeners: Mutex::default(),
            listeners_changed: Notify::new(),
            names: Mutex::default(),
            slow_listener_lost: AtomicU64::new(0),
            datapath_lost_reported: Mutex::default(),
        })
    }

    /// Listens through `filter` (checked by the caller: [`MonitorFilter::validate`]).
    pub fn subscribe(self: &Arc<Self>, filter: MonitorFilter) -> Subscription {
        let (drops, flows) = (filter.wants(EventType::Drop), filter.wants(EventType::Flow));
        let live = self.events.subscribe();
        let replay = match filter.last {
            Some(n) if drops => {
                let recent = self.recent_drops.lock().expect("recent drops");
                let matching: Vec<&MonitorEvent> = recent.iter().filter(|e| filter.matches(e)).collect();
                matching[matching.len().saturating_sub(n)..].iter().map(|e| (*e).clone()).collect()
            }
            _ => Vec::new(),
        };
        {
            let mut listeners = self.listeners.lock().expect("listener counts");
            listeners.drops += usize::from(drops);
            listeners.flows += usize::from(flows);
        }
        self.listeners_changed.notify_one();
        Subscription { replay, live, filter, _listener: ListenerGuard { monitor: self.clone(), drops, flows } }
    }

    /// Events listeners missed because they read too slowly, since the agent started.
    pub fn slow_listener_lost(&self) -> u64 {
        self.slow_listener_lost.load(Ordering::Relaxed)
    }

    /// The `host_config_flags::EVENTS_*` bits the programs should have now.
    fn wanted_events(&self) -> u32 {
        let listeners = self.listeners.lock().expect("listener counts");
        let mut flags = 0;
        if listeners.drops > 0 || self.history > 0 {
            flags |= host_config_flags::EVENTS_DROPS;
        }
        if listeners.flows > 0 {
            flags |= host_config_flags::EVENTS_FLOWS;
        }
        flags
    }

    /// Tells the listeners of a flow the garbage collection expired (called under the host's
    /// lock: names come from what was read before).
    pub fn flow_expired(&self, original: &CtKey, entry: &CtEntry) {
        if self.events.receiver_count() == 0 {
            return;
        }
        let names = self.names.lock().expect("names");
        let event = FlowEvent {
            time_ns: now_ns(),
            event: FlowChange::Expired,
            kind: ct_kind::name(entry.kind).into(),
            container: flow_container(&names, None, original, &entry.to),
            original: tuple(original),
            translated: tuple(&entry.to),
        };
        let _ = self.events.send(MonitorEvent::Flow(event));
    }

    /// Reads the datapath's events for as long as the agent runs, following the datapath as
    /// it is loaded, removed (`bpfnet down`) and loaded again.
    pub async fn run(self: Arc<Self>, host: SharedHost) {
        let bpffs = host.lock().await.options.bpffs.clone();
        let mut tick = tokio::time::interval(TICK);
        loop {
            let mut ring = match EventRing::open(&bpffs) {
                Ok(ring) => ring,
                Err(_) => {
                    tick.tick().await; // no datapath yet
                    continue;
                }
            };
            self.sync(&host).await;
            loop {
                tokio::select! {
                    batch = ring.next_batch() => match batch {
                        Ok(batch) => self.publish_all(&batch, &host).await,
                        Err(e) => {
                            tracing::warn!("reading datapath events: {e:#}");
                            break;
                        }
                    },
                    _ = self.listeners_changed.notified() => self.sync(&host).await,
                    _ = tick.tick() => {
                        self.sync(&host).await;
                        if pinned_map_id(&bpffs, datapath_common::map_names::EVENTS) != Some(ring.map_id()) {
                            break; // the datapath was removed (and maybe loaded anew)
                        }
                    }
                }
            }
        }
    }

    /// Turns events off in the datapath: the agent stops, and nobody will read them.
    pub async fn stop(&self, host: &SharedHost) {
        if let Ok(Some(datapath)) = host.lock().await.existing_datapath() {
            if let Err(e) = datapath.set_event_flags(0) {
                tracing::warn!("turning the datapath's events off: {e:#}");
            }
        }
    }

    /// Brings the datapath's event settings in line with the listeners, and reports the events
    /// it could not write since the last time.
    pub async fn sync(&self, host: &SharedHost) {
        let wanted = self.wanted_events();
        let mut host = host.lock().await;
        let Ok(Some(datapath)) = host.existing_datapath() else { return };
        if let Err(e) = datapath.set_event_flags(wanted) {
            tracing::warn!("setting which events the datapath writes: {e:#}");
        }
        let Ok(lost) = datapath.events_lost() else { return };
        let Some(map_id) = pinned_map_id(&host.options.bpffs, datapath_common::map_names::EVENTS_LOST) else { return };
        drop(host);
        let mut reported = self.datapath_lost_reported.lock().expect("lost counts");
        // The first reading of a datapath (at the agent's start, or of one loaded anew) is the
        // baseline, not news: what was lost before nobody was told of.
        if let Some((_, before)) = reported.as_ref().filter(|(id, _)| *id == map_id) {
            for (cause, count) in &lost {
                let before = before.iter().find(|(c, _)| c == cause).map_or(0, |(_, n)| *n);
                if *count > before {
                    let event = LostEvents { time_ns: now_ns(), cause: cause.name().into(), count: count - before };
                    let _ = self.events.send(MonitorEvent::Lost(event));
                }
            }
        }
        *reported = Some((map_id, lost));
    }

    async fn publish_all(&self, batch: &[DatapathEvent], host: &SharedHost) {
        let unknown = {
            let names = self.names.lock().expect("names");
            batch.iter().any(|e| !names.interfaces.contains_key(&e.ifindex))
        };
        if unknown {
            self.read_names(host).await;
        }
        let events: Vec<MonitorEvent> = {
            let names = self.names.lock().expect("names");
            batch.iter().filter_map(|e| describe(e, &names)).collect()
        };
        let mut recent = self.recent_drops.lock().expect("recent drops");
        for event in events {
            if self.history > 0 && matches!(event, MonitorEvent::Drop(_)) {
                if recent.len() == self.history {
                    recent.pop_front();
                }
                recent.push_back(event.clone());
            }
            let _ = self.events.send(event);
        }
    }

    /// Reads which container is behind each interface and address (at most every
    /// NAMES_MAX_AGE); interfaces of no container (the uplink) are named by the kernel.
    async fn read_names(&self, host: &SharedHost) {
        if self.names.lock().expect("names").read_at.is_some_and(|at| at.elapsed() < NAMES_MAX_AGE) {
            return;
        }
        let containers: Vec<(String, String, String, Ipv4Addr)> = {
            let host = host.lock().await;
            host.state()
                .containers
                .values()
                .map(|c| (c.name.clone(), c.network.clone(), c.host_interface.clone(), c.ip))
                .collect()
        };
        let mut names = Names { read_at: Some(Instant::now()), ..Names::default() };
        for (container, network, interface, ip) in containers {
            if let Ok(index) = nix::net::if_::if_nametoindex(interface.as_str()) {
                let named = Interface { name: interface, container: Some(container.clone()), network: Some(network) };
                names.interfaces.insert(index, named);
            }
            names.containers_by_ip.insert(ip, container);
        }
        for (index, name) in kernel_interfaces() {
            names.interfaces.entry(index).or_insert(Interface { name, container: None, network: None });
        }
        *self.names.lock().expect("names") = names;
    }
}

/// Every interface of the namespace the agent runs in (the host's), by index.
fn kernel_interfaces() -> Vec<(u32, String)> {
    nix::net::if_::if_nameindex()
        .map(|list| list.iter().map(|i| (i.index(), i.name().to_string_lossy().into_owned())).collect())
        .unwrap_or_default()
}

/// The API's form of a datapath event.
fn describe(event: &DatapathEvent, names: &Names) -> Option<MonitorEvent> {
    let interface = names.interfaces.get(&event.ifindex).cloned().unwrap_or_else(|| Interface {
        name: format!("ifindex {}", event.ifindex),
        container: None,
        network: None,
    });
    match event.kind {
        event_kind::DROP => Some(MonitorEvent::Drop(DropEvent {
            time_ns: now_ns(),
            reason: DropReason::ALL.get(usize::from(event.detail)).map_or("unknown", |r| r.name()).into(),
            interface: interface.name,
            container: interface.container,
            network: interface.network,
            length: event.len,
            packet: (event.tuple.proto != 0).then(|| tuple(&event.tuple)),
        })),
        event_kind::NEW_FLOW => Some(MonitorEvent::Flow(FlowEvent {
            time_ns: now_ns(),
            event: FlowChange::New,
            kind: ct_kind::name(event.detail).into(),
            container: flow_container(names, interface.container, &event.tuple, &event.translated),
            original: tuple(&event.tuple),
            translated: tuple(&event.translated),
        })),
        _ => None,
    }
}

/// Whose flow it is: the container it came from (snat, hairpin), else the one it was
/// translated to (dnat).
fn flow_container(names: &Names, from: Option<String>, original: &CtKey, translated: &CtKey) -> Option<String> {
    let by_ip = |addr: u32| names.containers_by_ip.get(&Ipv4Addr::from(addr.to_ne_bytes())).cloned();
    from.or_else(|| by_ip(original.saddr)).or_else(|| by_ip(translated.daddr))
}

fn tuple(key: &CtKey) -> Tuple {
    let protocol = Protocol::from_number(key.proto);
    let has_ports = matches!(protocol, Protocol::Tcp | Protocol::Udp) && (key.sport != 0 || key.dport != 0);
    let port = |p: u16| has_ports.then(|| u16::from_be(p));
    Tuple {
        protocol,
        source: Ipv4Addr::from(key.saddr.to_ne_bytes()),
        source_port: port(key.sport),
        destination: Ipv4Addr::from(key.daddr.to_ne_bytes()),
        destination_port: port(key.dport),
    }
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}
