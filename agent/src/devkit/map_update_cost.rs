//! `bpfnet-devkit map-update-cost`: the control plane's map update alone. bpfnet publishes a
//! port with one BPF_MAP_UPDATE_ELEM on its pinned SERVICES map; this times that same update
//! on a running datapath: it takes the entry bpfnet wrote, deletes it (not timed) and writes it
//! back (timed), on the real map holding every other published port. The entry is in place
//! again afterwards.
use std::{path::PathBuf, time::Instant};

use anyhow::{bail, Context, Result};
use aya::maps::{HashMap, Map, MapData};
use datapath_common::{map_names, PublishedPortKey, PublishedPortTarget, IPPROTO_TCP, IPPROTO_UDP};

/// BPF_NOEXIST: a new entry, as publishing a new port writes it.
const BPF_NOEXIST: u64 = 1;

#[derive(clap::Args, Debug)]
pub struct MapUpdateCostArgs {
    /// The running datapath's bpffs directory (the agent's --bpffs).
    #[arg(long, value_name = "DIR")]
    bpffs: PathBuf,
    /// A host port published on every host address, by bpfnet, already.
    #[arg(long)]
    port: u16,
    #[arg(long, default_value = "tcp", value_parser = ["tcp", "udp"])]
    protocol: String,
    /// Timed updates.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    samples: u32,
}

/// Prints `{"update_us": [...]}`, one figure per timed update.
pub fn run(args: MapUpdateCostArgs) -> Result<()> {
    let pin = args.bpffs.join("maps").join(map_names::PUBLISHED_PORTS);
    let map = MapData::from_pin(&pin).with_context(|| format!("opening the pinned map {}", pin.display()))?;
    let mut published: HashMap<MapData, PublishedPortKey, PublishedPortTarget> = HashMap::try_from(Map::HashMap(map))?;
    let proto = if args.protocol == "tcp" { IPPROTO_TCP } else { IPPROTO_UDP };
    // What `HOST_PORT:PORT` without an address publishes: address 0, port in network order.
    let key = PublishedPortKey { addr: 0, port: args.port.to_be(), proto, _pad: 0 };
    let Ok(target) = published.get(&key, 0) else {
        bail!("{} has no entry for {}/{}: publish the port first", pin.display(), args.port, args.protocol);
    };
    let mut update_us = Vec::with_capacity(args.samples as usize);
    for _ in 0..args.samples {
        published.remove(&key).context("deleting the entry (not timed)")?;
        let started = Instant::now();
        let inserted = published.insert(key, target, BPF_NOEXIST);
        update_us.push(started.elapsed().as_secs_f64() * 1e6);
        inserted.context("writing the entry back")?;
    }
    println!("{}", serde_json::json!({ "update_us": update_us }));
    Ok(())
}
