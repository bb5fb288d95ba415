//! `bpfnet-devkit floor-attach`: the benchmark's structural floor on interfaces of a
//! namespace. Loads datapath-ebpf's `bench-floor` object (a program that only redirects; not
//! bpfnet's datapath), fills its map of container addresses, attaches the program to the tcx
//! ingress of each `--ifname` and pins each link under `--pin-dir`, then exits: the pins keep
//! the program attached; removing them (or the interfaces) detaches it.
use std::{net::Ipv4Addr, path::PathBuf};

use anyhow::{bail, Context, Result};
use aya::{
    maps::HashMap,
    programs::{links::FdLink, tc::TcAttachOptions, LinkOrder, SchedClassifier, TcAttachType},
    EbpfLoader,
};
use datapath_common::{
    bench_floor::{FloorDest, DESTS_MAP, PROGRAM},
    ipv4_be, Ipv4Be,
};

use crate::sys::netns;

/// The object build.rs built from datapath-ebpf's `bench-floor` binary.
static FLOOR_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench_floor.bpf.o"));

#[derive(clap::Args, Debug)]
pub struct FloorAttachArgs {
    /// The network namespace (a name under /run/netns) the interfaces are in.
    #[arg(long)]
    netns: String,
    /// An interface whose tcx ingress gets the floor program (repeat for each).
    #[arg(long = "ifname", required = true)]
    ifnames: Vec<String>,
    /// A container, `ADDRESS=HOST_IFNAME,MAC`: packets to ADDRESS get MAC as destination
    /// and go into the container behind HOST_IFNAME (`bpf_redirect_peer`). Repeat for each.
    #[arg(long = "dest", value_parser = parse_dest)]
    dests: Vec<DestSpec>,
    /// The source MAC of what is delivered to a container (bpfnet writes its gateway's).
    #[arg(long, value_parser = parse_mac)]
    gateway_mac: [u8; 6],
    /// A new directory on bpffs for the links' pins.
    #[arg(long, value_name = "DIR")]
    pin_dir: PathBuf,
}

#[derive(Clone, Debug, PartialEq)]
struct DestSpec {
    address: Ipv4Addr,
    host_ifname: String,
    mac: [u8; 6],
}

fn parse_mac(text: &str) -> Result<[u8; 6]> {
    crate::docker::driver::parse_mac(text)
}

fn parse_dest(text: &str) -> Result<DestSpec> {
    let usage = || format!("--dest {text:?} is not ADDRESS=HOST_IFNAME,MAC (such as 10.0.0.2=bn1,02:00:00:00:00:02)");
    let (address, rest) = text.split_once('=').with_context(usage)?;
    let (host_ifname, mac) = rest.split_once(',').with_context(usage)?;
    let address = address.parse().with_context(usage)?;
    if host_ifname.is_empty() {
        bail!(usage());
    }
    Ok(DestSpec { address, host_ifname: host_ifname.to_string(), mac: parse_mac(mac).with_context(usage)? })
}

pub fn run(args: FloorAttachArgs) -> Result<()> {
    if args.pin_dir.exists() {
        bail!("--pin-dir {} exists already: give a new directory on bpffs", args.pin_dir.display());
    }
    std::fs::create_dir_all(&args.pin_dir).with_context(|| format!("creating {}", args.pin_dir.display()))?;
    let netns_name = args.netns.clone();
    // Interface names resolve, and tcx links attach, in the namespace of the calling thread.
    netns::run_in(&netns_name, move || attach(&args))
}

fn attach(args: &FloorAttachArgs) -> Result<()> {
    if FLOOR_OBJECT.is_empty() {
        bail!("this bpfnet-devkit was built with BPFNET_SKIP_EBPF: it has no floor program");
    }
    let mut ebpf = EbpfLoader::new().load(FLOOR_OBJECT).context("loading the bench-floor eBPF object")?;
    {
        let mut dests: HashMap<_, Ipv4Be, FloorDest> = HashMap::try_from(
            ebpf.map_mut(DESTS_MAP).with_context(|| format!("the bench-floor object has no {DESTS_MAP} map"))?,
        )?;
        for dest in &args.dests {
            let host_ifindex = nix::net::if_::if_nametoindex(dest.host_ifname.as_str())
                .with_context(|| format!("no interface {} in namespace {}", dest.host_ifname, args.netns))?;
            let value = FloorDest { host_ifindex, mac: dest.mac, gateway_mac: args.gateway_mac };
            dests.insert(ipv4_be(dest.address.octets()), value, 0).with_context(|| format!("adding {dest:?}"))?;
        }
    }
    let program: &mut SchedClassifier = ebpf
        .program_mut(PROGRAM)
        .with_context(|| format!("the bench-floor object has no {PROGRAM} program"))?
        .try_into()?;
    program.load().context("loading the floor program (see the verifier log above)")?;
    for ifname in &args.ifnames {
        let link_id = program
            .attach_with_options(ifname, TcAttachType::Ingress, TcAttachOptions::TcxOrder(LinkOrder::default()))
            .with_context(|| format!("attaching {PROGRAM} to tcx ingress of {ifname} in {}", args.netns))?;
        let link: FdLink = program.take_link(link_id)?.try_into().context("a tcx attachment should be an fd link")?;
        let pin = args.pin_dir.join(ifname);
        link.pin(&pin).with_context(|| format!("pinning the link of {ifname} at {}", pin.display()))?;
    }
    println!(
        "{PROGRAM} on {} in {}, links pinned under {}",
        args.ifnames.join(", "),
        args.netns,
        args.pin_dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dest_specs() {
        let dest = parse_dest("10.202.0.3=bnc2,02:00:0a:ca:00:03").unwrap();
        assert_eq!(dest.address, Ipv4Addr::new(10, 202, 0, 3));
        assert_eq!((dest.host_ifname.as_str(), dest.mac), ("bnc2", [2, 0, 0x0a, 0xca, 0, 3]));
        for bad in [
            "10.202.0.3",
            "10.202.0.3=bnc2",
            "x=bnc2,02:00:0a:ca:00:03",
            "10.202.0.3=,02:00:0a:ca:00:03",
            "10.202.0.3=bnc2,02:00",
        ] {
            let err = parse_dest(bad).unwrap_err();
            assert!(format!("{err:#}").contains("ADDRESS=HOST_IFNAME,MAC"), "{bad}: {err:#}");
        }
    }
}
