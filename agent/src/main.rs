//! bpfnet: container networking on eBPF, without a Linux bridge or iptables.
mod commands;
mod conntrack;
mod container;
mod datapath;
mod host;
mod ipam;
mod names;
mod netlink;
mod netns;
mod network;
mod publish;
mod state;
mod testrun;
#[cfg(test)] mod datapath_tests;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use commands::{container::ContainerCommand, conntrack::ConntrackCommand, network::NetworkCommand};
use host::{Host, HostOptions};
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(name = "bpfnet", version, about = "Container networking on eBPF: no bridge, no iptables")]
struct Cli {
    #[command(flatten)]
    host: HostOptions,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `bpfnet=debug`.
    #[arg(long, global = true, env = "BPFNET_LOG", default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
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
    /// Show networks, containers, attached programs, counters and drop reasons.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Stream the eBPF programs' log records.
    Monitor {
        /// Stop after this many seconds (default: until Ctrl-C).
        #[arg(long)]
        duration: Option<u64>,
    },
    /// Remove everything bpfnet created on this host: containers, networks, pinned programs and maps.
    Down,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_new(&cli.log).unwrap_or_else(|e| {
        eprintln!("bpfnet: invalid --log {:?} ({e}); using `warn`", cli.log);
        EnvFilter::new("warn")
    });
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    if let Err(err) = run(cli) {
        eprintln!("bpfnet: error: {err:#}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        anyhow::bail!("bpfnet manages network namespaces and eBPF programs and must run as root");
    }
    // Before the runtime exists: every thread of the process then lives in the host namespace.
    cli.host.enter_host_netns()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut host = Host::open(&cli.host).await?;
        match cli.command {
            Command::Network(cmd) => commands::network::run(&mut host, cmd).await,
            Command::Container(cmd) => commands::container::run(&mut host, cmd).await,
            Command::Publish { name, specs } => commands::publish::publish(&mut host, &name, &specs).await,
            Command::Unpublish { name, specs } => commands::publish::unpublish(&mut host, &name, &specs).await,
            Command::Conntrack(cmd) => commands::conntrack::run(&mut host, cmd).await,
            Command::Status { json } => commands::status::run(&mut host, json).await,
            Command::Monitor { duration } => commands::monitor::run(&mut host, duration).await,
            Command::Down => commands::down::run(&mut host).await,
        }
    })
}
