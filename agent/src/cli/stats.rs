//! `bpfnet stats`: each container's packet and byte rates in and out, and its drops, from two
//! readings of its counters a second apart, refreshed every second as `docker stats` does.
use std::{
    collections::BTreeMap,
    io::IsTerminal,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::bail;
use serde::Serialize;

use super::client;
use crate::api::{Call, ContainerInfo, Traffic};

#[derive(clap::Args, Debug)]
pub struct StatsArgs {
    /// Containers to show (all when none is named).
    #[arg(value_name = "CONTAINER")]
    containers: Vec<String>,
    /// Show one reading (rates over one second) and exit.
    #[arg(long)]
    no_stream: bool,
    /// One JSON array a reading, a line each.
    #[arg(long)]
    json: bool,
}

/// One container's rates over the last interval, and its totals.
#[derive(Debug, Serialize)]
struct Rates {
    name: String,
    network: String,
    received_packets_per_sec: f64,
    received_bytes_per_sec: f64,
    sent_packets_per_sec: f64,
    sent_bytes_per_sec: f64,
    drops_per_sec: f64,
    dropped_packets: u64,
}

const INTERVAL: Duration = Duration::from_secs(1);

impl StatsArgs {
    pub async fn run(&self, socket: &Path) -> anyhow::Result<()> {
        let mut before = self.read(socket).await?;
        let mut at = Instant::now();
        loop {
            tokio::time::sleep(INTERVAL).await;
            let now = self.read(socket).await?;
            let seconds = at.elapsed().as_secs_f64();
            at = Instant::now();
            let rates: Vec<Rates> = now
                .values()
                .filter_map(|c| Some(rates(c, before.get(&c.name)?.traffic?, c.traffic?, seconds)))
                .collect();
            if self.json {
                println!("{}", serde_json::to_string(&rates)?);
            } else {
                if !self.no_stream && std::io::stdout().is_terminal() {
                    print!("\x1b[2J\x1b[H"); // clear the screen, as docker stats does
                }
                print_table(&rates);
            }
            if self.no_stream {
                return Ok(());
            }
            before = now;
        }
    }

    /// The containers asked for (all by default), by name.
    async fn read(&self, socket: &Path) -> anyhow::Result<BTreeMap<String, ContainerInfo>> {
        let all: Vec<ContainerInfo> = client::call(socket, &Call::ListContainers).await?;
        let mut by_name: BTreeMap<String, ContainerInfo> = all.into_iter().map(|c| (c.name.clone(), c)).collect();
        if self.containers.is_empty() {
            return Ok(by_name);
        }
        let mut chosen = BTreeMap::new();
        for name in &self.containers {
            match by_name.remove(name) {
                Some(c) => chosen.insert(name.clone(), c),
                None => bail!("no such container: {name} (see `bpfnet container ls`)"),
            };
        }
        Ok(chosen)
    }
}

fn rates(c: &ContainerInfo, before: Traffic, now: Traffic, seconds: f64) -> Rates {
    let rate = |then: u64, now: u64| now.saturating_sub(then) as f64 / seconds;
    Rates {
        name: c.name.clone(),
        network: c.network.clone(),
        received_packets_per_sec: rate(before.received_packets, now.received_packets),
        received_bytes_per_sec: rate(before.received_bytes, now.received_bytes),
        sent_packets_per_sec: rate(before.sent_packets, now.sent_packets),
        sent_bytes_per_sec: rate(before.sent_bytes, now.sent_bytes),
        drops_per_sec: rate(before.dropped_packets, now.dropped_packets),
        dropped_packets: now.dropped_packets,
    }
}

fn print_table(rates: &[Rates]) {
    println!(
        "{:<20} {:<14} {:>10} {:>11} {:>10} {:>11} {:>9} {:>10}",
        "NAME", "NETWORK", "RX PKT/S", "RX BYTES/S", "TX PKT/S", "TX BYTES/S", "DROPS/S", "DROPS"
    );
    for r in rates {
        println!(
            "{:<20} {:<14} {:>10.0} {:>11} {:>10.0} {:>11} {:>9.0} {:>10}",
            r.name,
            r.network,
            r.received_packets_per_sec,
            human_bytes(r.received_bytes_per_sec),
            r.sent_packets_per_sec,
            human_bytes(r.sent_bytes_per_sec),
            r.drops_per_sec,
            r.dropped_packets
        );
    }
}

/// 1.2kB, 3.4MB: as docker stats shows sizes (powers of 1000).
fn human_bytes(bytes: f64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1000.0 && unit < units.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0}{}", units[unit])
    } else {
        format!("{value:.1}{}", units[unit])
    }
}
