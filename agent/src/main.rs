//! The `bpfnet` binary: the agent (`bpfnet agent`) and its CLI. Everything lives in the
//! library; this file parses the command line and hands over.
use std::process::ExitCode;

use bpfnet::{
    cli::{self, Cli, Command},
    daemon,
};
use clap::{CommandFactory, Parser};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    // The agent's config file becomes environment variables before the real parse, so that
    // clap sees its settings as it sees BPFNET_* variables (flags still win).
    let subcommand = Cli::command().ignore_errors(true).try_get_matches_from(&args).ok();
    if subcommand.as_ref().and_then(|m| m.subcommand_name()) == Some("agent") {
        if let Err(err) = daemon::load_config_into_env(&Cli::command(), &args) {
            eprintln!("bpfnet: error: {err:#}");
            return ExitCode::FAILURE;
        }
    }
    let cli = Cli::parse();
    let filter = EnvFilter::try_new(&cli.log).unwrap_or_else(|e| {
        eprintln!("bpfnet: invalid --log {:?} ({e}); using `warn`", cli.log);
        EnvFilter::new("warn")
    });
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let result = match cli.command {
        Command::Agent(args) => daemon::run_service(*args, cli.socket),
        command => cli::run_client(command, cli.socket),
    };
    if let Err(err) = result {
        eprintln!("bpfnet: error: {err:#}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
