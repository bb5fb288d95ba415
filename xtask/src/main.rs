//! Developer tasks for bpfnet, run as `cargo xtask <TASK>` (see .cargo/config.toml).
//!
//! Every external command is printed as `$ cmd args` before it runs.

mod bench;
mod cargo_cmd;
mod command;
mod demo;
mod interrupt;
mod setup;
mod test;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::cargo_cmd::Profile;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Developer tasks for bpfnet")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install and check the toolchain, tools and bpffs (idempotent; needs root).
    Setup,
    /// Setup, then build the whole workspace (the agent's build script builds the eBPF object).
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Setup, build bpfnet, then run the unit and integration tests of every workspace crate.
    Test(test::TestArgs),
    /// Setup, build bpfnet, show the whole job in throwaway network namespaces (containers talking,
    /// masquerade to an outside namespace, a published port from outside, hairpin, each checked), then
    /// `bench --quick` (about a minute).
    Demo {
        /// Use the release build of bpfnet.
        #[arg(long)]
        release: bool,
        /// Run this bpfnet binary instead of building one.
        #[arg(long, value_name = "PATH", conflicts_with = "release")]
        bpfnet: Option<PathBuf>,
    },
    /// Setup, build bpfnet (release), then benchmark it against bridge+iptables and the bare
    /// veth floor in throwaway namespaces; writes results.json, table.txt, headline.svg and ratios.svg.
    Bench(bench::BenchArgs),
    /// The benchmark's traffic tools, run by `bench` inside its namespaces.
    #[command(hide = true, subcommand)]
    Loadgen(bench::loadgen::LoadgenCommand),
}

fn main() -> ExitCode {
    match run(Cli::parse().task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // The chain, without the backtrace that RUST_BACKTRACE=1 would add to `{:?}`.
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<()> {
    match task {
        Task::Setup => setup::run(),
        Task::Build { release } => {
            setup::run()?;
            cargo_cmd::build(Profile::from_release_flag(release), &[])
        }
        Task::Test(args) => test::run(args),
        Task::Demo { release, bpfnet } => demo::run(Profile::from_release_flag(release), bpfnet),
        Task::Bench(args) => bench::run(args),
        Task::Loadgen(command) => bench::loadgen::run(command),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn test_passes_everything_after_the_separator_on() {
        let cli = Cli::try_parse_from(["xtask", "test", "--jobs", "1", "--", "ping", "--", "--nocapture"]).unwrap();
        let Task::Test(args) = cli.task else { panic!("not the test task") };
        assert_eq!(args.jobs, 1);
        assert_eq!(args.cargo_args, ["ping", "--", "--nocapture"]);
        assert!(Cli::try_parse_from(["xtask", "test", "--jobs", "0"]).is_err());
    }
}
