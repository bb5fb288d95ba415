//! bpfnet: container networking on eBPF, without a Linux bridge or iptables.
//!
//! `bpfnet agent` is the service that owns a host's datapath; every other command is a client
//! of its API (a Unix socket), as `docker` is of dockerd.
mod agent;
mod api;
mod bpf_syscall;
mod client;
mod commands;
mod conntrack;
mod container;
mod datapath;
#[cfg(test)]
mod datapath_tests;
mod ethtool;
mod failpoint;
mod host;
mod host_cgroup;
mod ipam;
mod names;
mod netlink;
mod netns;
mod network;
mod program_cost;
mod publish;
mod reconcile;
mod server;
mod service;
mod state;
mod testbed;
mod testrun;
mod uplink_follower;

use std::{path::PathBuf, process::ExitCode};

use clap::{CommandFactory, Parser, Subcommand};
use commands::{container::ContainerCommand, conntrack::ConntrackCommand, network::NetworkCommand};
use tracing_subscriber::EnvFilter;

use crate::api::{Call, PortSpecs};

#[derive(Parser, Debug)]
#[command(name = "bpfnet", version, about = "Container networking on eBPF: no bridge, no iptables")]
struct Cli {
    /// The agent's API socket.
    #[arg(long, global = true, env = "BPFNET_SOCKET", default_value = api::DEFAULT_SOCKET, value_name = "PATH")]
    socket: PathBuf,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `bpfnet=debug`.
    #[arg(long, global = true, env = "BPFNET_LOG", default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the agent: the service that owns this host's datapath and serves the API.
    Agent(Box<agent::AgentArgs>),
    /// Manage networks.
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Manage containers (network namespaces attached to a network).
    #[command(subcommand)]
    Container(ContainerCommand),
    /// Publish ports of a running container (`[HOST_IP:]HOST_PORT:PORT[/tcp|/udp]`).
    Publish {
        name: String,
        #[arg(required = true, value_name = "SPEC")]
        specs: Vec<String>,
    },
    /// Unpublish ports of a container: new connections are refused at once, established
    /// ones keep going until they end.
    Unpublish {
        name: String,
        #[arg(required = true, value_name = "SPEC")]
        specs: Vec<String>,
    },
    /// Tracked flows and their translations.
    #[command(subcommand)]
    Conntrack(ConntrackCommand),
    /// Show networks, containers, attached programs, conntrack fill, counters and drop reasons.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Remove everything bpfnet created on this host: containers, networks, pinned programs and maps.
    Down,
    /// Developer tools, not for production hosts (hidden from --help).
    #[command(subcommand, hide = true)]
    Debug(DebugCommand),
}

#[derive(Subcommand, Debug)]
enum DebugCommand {
    /// Per-packet cost of each eBPF program on each path, in ns, timed by the kernel
    /// (BPF_PROG_TEST_RUN) on a throwaway namespace and datapath of its own.
    ProgramCost(program_cost::ProgramCostArgs),
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "agent") {
        if let Err(err) = agent::load_config_into_env(&Cli::command(), &args) {
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
        Command::Agent(args) => run_agent(*args, cli.socket),
        // No tokio runtime: the testbed drives its namespace from threads of its own.
        Command::Debug(DebugCommand::ProgramCost(args)) => program_cost::run(args),
        command => run_client(command, cli.socket),
    };
    if let Err(err) = result {
        eprintln!("bpfnet: error: {err:#}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn run_agent(args: agent::AgentArgs, socket: PathBuf) -> anyhow::Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        anyhow::bail!("the bpfnet agent manages network namespaces and eBPF programs and must run as root");
    }
    // Before the runtime exists: every thread of the process then lives in the host namespace.
    args.host.enter_host_netns()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(agent::run(args, socket))
}

fn run_client(command: Command, socket: PathBuf) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        match command {
            Command::Agent(_) => unreachable!("handled by run_agent"),
            Command::Debug(_) => unreachable!("handled without a client"),
            Command::Network(cmd) => {
                let answer = client::call(&socket, &cmd.call()).await?;
                cmd.print(&answer)
            }
            Command::Container(cmd) => {
                let answer = client::call(&socket, &cmd.call()).await?;
                cmd.print(&answer)
            }
            Command::Publish { name, specs } => {
                let answer = client::call(&socket, &Call::Publish(name, PortSpecs { specs })).await?;
                commands::publish::print(&answer);
                Ok(())
            }
            Command::Unpublish { name, specs } => {
                let answer = client::call(&socket, &Call::Unpublish(name, PortSpecs { specs })).await?;
                commands::publish::print(&answer);
                Ok(())
            }
            Command::Conntrack(cmd) => {
                let answer = client::call(&socket, &cmd.call()).await?;
                cmd.print(&answer)
            }
            Command::Status { json } => {
                let answer = client::call(&socket, &Call::Status).await?;
                if json {
                    commands::print_json(&answer)
                } else {
                    commands::status::print_text(&answer);
                    Ok(())
                }
            }
            Command::Down => {
                let answer = client::call(&socket, &Call::Down).await?;
                println!("{}", answer["removed"].as_str().unwrap_or("removed"));
                Ok(())
            }
        }
    })
}
