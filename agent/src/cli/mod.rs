//! `bpfnet`'s command line. `bpfnet agent` runs the service (`daemon`); every other verb is
//! one API call to it (`client`), whose answer its file here prints.
pub mod client;
pub mod conntrack;
pub mod container;
pub mod monitor;
pub mod network;
pub mod publish;
pub mod stats;
pub mod status;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::{
    api::{self, Call, PortChange, PortSpecs, Removed, Status},
    daemon::AgentArgs,
};

#[derive(Parser)]
#[command(name = "bpfnet", version, about = "Container networking on eBPF: no bridge, no iptables")]
pub struct Cli {
    /// The agent's API socket.
    #[arg(long, global = true, env = "BPFNET_SOCKET", default_value = api::DEFAULT_SOCKET, value_name = "PATH")]
    pub socket: PathBuf,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `bpfnet=debug`.
    #[arg(long, global = true, env = "BPFNET_LOG", default_value = "warn")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the agent: the service that owns this host's datapath and serves the API.
    Agent(Box<AgentArgs>),
    /// Manage networks.
    #[command(subcommand)]
    Network(network::NetworkCommand),
    /// Manage containers (network namespaces attached to a network).
    #[command(subcommand)]
    Container(container::ContainerCommand),
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
    Conntrack(conntrack::ConntrackCommand),
    /// Show networks, containers, attached programs, conntrack fill, counters and drop reasons.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Stream the datapath's drops and translated flows as they happen (Ctrl-C stops).
    Monitor(monitor::MonitorArgs),
    /// Each container's packet and byte rates and drops, refreshed every second.
    Stats(stats::StatsArgs),
    /// Remove everything bpfnet created on this host: containers, networks, pinned programs and maps.
    Down,
}

/// Runs a client verb: one API call on `socket`, its answer printed.
pub fn run_client(command: Command, socket: PathBuf) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        match command {
            Command::Agent(_) => unreachable!("the agent is no client"),
            Command::Network(cmd) => cmd.run(&socket).await,
            Command::Container(cmd) => cmd.run(&socket).await,
            Command::Conntrack(cmd) => cmd.run(&socket).await,
            Command::Publish { name, specs } => {
                let answer: PortChange = client::call(&socket, &Call::Publish(name, PortSpecs { specs })).await?;
                publish::print(&answer);
                Ok(())
            }
            Command::Unpublish { name, specs } => {
                let answer: PortChange = client::call(&socket, &Call::Unpublish(name, PortSpecs { specs })).await?;
                publish::print(&answer);
                Ok(())
            }
            Command::Status { json } => {
                let answer: Status = client::call(&socket, &Call::Status).await?;
                if json {
                    print_json(&answer)
                } else {
                    status::print_text(&answer);
                    Ok(())
                }
            }
            Command::Monitor(args) => args.run(&socket).await,
            Command::Stats(args) => args.run(&socket).await,
            Command::Down => {
                let answer: Removed = client::call(&socket, &Call::Down).await?;
                println!("removed {}", answer.removed);
                Ok(())
            }
        }
    })
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
