//! `bpfnet monitor`: the datapath's drops and flows as they happen, filtered by the agent.
use std::path::Path;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use datapath_common::DropReason;
use ipnet::Ipv4Net;

use super::client;
use crate::api::{parse_ip_filter, Call, EventType, MonitorEvent, MonitorFilter, Protocol};

#[derive(clap::Args, Debug)]
pub struct MonitorArgs {
    /// Only drops, or only flows (new and expired).
    #[arg(long = "type", value_enum)]
    kind: Option<EventType>,
    /// Only this container's events.
    #[arg(long, value_name = "NAME")]
    container: Option<String>,
    /// Only drops for this reason (as `bpfnet status` names them).
    #[arg(long, value_parser = PossibleValuesParser::new(DropReason::ALL.map(|r| r.name())))]
    reason: Option<String>,
    /// Only packets from or to this address or network.
    #[arg(long, value_name = "CIDR", value_parser = parse_ip_filter)]
    ip: Option<Ipv4Net>,
    /// Only packets from or to this port.
    #[arg(long)]
    port: Option<u16>,
    /// Only this protocol.
    #[arg(long, value_parser = PossibleValuesParser::new(Protocol::FILTERABLE)
        .map(|p| Protocol::from_name(&p).expect("one of the possible values")))]
    proto: Option<Protocol>,
    /// First show the N most recent drops the agent kept (that pass the filters).
    #[arg(long, value_name = "N")]
    last: Option<usize>,
    /// Stop after N events (notices of lost events not counted).
    #[arg(long, value_name = "N")]
    count: Option<usize>,
    /// One JSON object a line, as the API streams them.
    #[arg(long)]
    json: bool,
}

impl MonitorArgs {
    fn filter(&self) -> MonitorFilter {
        MonitorFilter {
            kind: self.kind,
            container: self.container.clone(),
            reason: self.reason.clone(),
            ip: self.ip,
            port: self.port,
            proto: self.proto,
            last: self.last,
        }
    }

    pub async fn run(&self, socket: &Path) -> anyhow::Result<()> {
        let mut left = self.count;
        let started = || eprintln!("bpfnet monitor: listening; Ctrl-C stops");
        client::stream(socket, &Call::Monitor(self.filter()), started, |event: MonitorEvent| {
            if self.json {
                println!("{}", serde_json::to_string(&event)?);
            } else {
                println!("{}", describe(&event));
            }
            if !matches!(event, MonitorEvent::Lost(_)) {
                if let Some(n) = left.as_mut() {
                    *n -= 1;
                    return Ok(*n > 0);
                }
            }
            Ok(true)
        })
        .await
    }
}

/// One line of text per event.
fn describe(event: &MonitorEvent) -> String {
    match event {
        MonitorEvent::Drop(d) => {
            let owner = d.container.as_ref().map_or(String::new(), |c| format!(" container {c}"));
            let packet = d.packet.map_or("not IPv4".to_owned(), |t| t.to_string());
            format!("{} drop {} on {}{owner}: {packet}, {} bytes", clock(d.time_ns), d.reason, d.interface, d.length)
        }
        MonitorEvent::Flow(f) => {
            let owner = f.container.as_ref().map_or(String::new(), |c| format!(" container {c}"));
            let change = match f.event {
                crate::api::FlowChange::New => "new",
                crate::api::FlowChange::Expired => "expired",
            };
            format!("{} flow {change} {}{owner}: {} => {}", clock(f.time_ns), f.kind, f.original, f.translated)
        }
        MonitorEvent::Lost(l) => format!("{} {} events lost ({})", clock(l.time_ns), l.count, l.cause),
    }
}

/// HH:MM:SS.mmm (UTC) of a time in nanoseconds since the epoch.
fn clock(time_ns: u64) -> String {
    let ms = time_ns / 1_000_000;
    let s = ms / 1000;
    format!("{:02}:{:02}:{:02}.{:03}", s / 3600 % 24, s / 60 % 60, s % 60, ms % 1000)
}
