//! `bpfnet-devkit`: developer tools that the shipped `bpfnet` binary does not carry (built
//! with the `devkit` feature; `cargo xtask bench` and the tests use it).
use std::process::ExitCode;

use bpfnet::devkit::{
    floor_attach::{self, FloorAttachArgs},
    map_update_cost::{self, MapUpdateCostArgs},
    program_cost::{self, ProgramCostArgs},
};
use clap::Parser;

#[derive(Parser)]
#[command(name = "bpfnet-devkit", version, about = "bpfnet's developer tools")]
enum DevCommand {
    /// Per-packet cost of each eBPF program on each path, in ns, timed by the kernel
    /// (BPF_PROG_TEST_RUN) on a throwaway namespace and datapath of its own.
    ProgramCost(ProgramCostArgs),
    /// Time of the one map update that publishing a port is, on a running datapath.
    MapUpdateCost(MapUpdateCostArgs),
    /// The bench's structural floor: a program that only redirects (not bpfnet's datapath),
    /// attached to interfaces of a namespace, its links pinned.
    FloorAttach(FloorAttachArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    // No tokio runtime: the testbed drives its namespace from threads of its own.
    let result = match DevCommand::parse() {
        DevCommand::ProgramCost(args) => program_cost::run(args),
        DevCommand::MapUpdateCost(args) => map_update_cost::run(args),
        DevCommand::FloorAttach(args) => floor_attach::run(args),
    };
    if let Err(err) = result {
        eprintln!("bpfnet-devkit: error: {err:#}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
