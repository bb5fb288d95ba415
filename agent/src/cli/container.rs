use std::net::Ipv4Addr;

use clap::Subcommand;
use serde_json::Value;

use crate::api::{Call, CreateContainer};

#[derive(Subcommand, Debug, Clone)]
pub enum ContainerCommand {
    /// Create a container: a network namespace NAME (enter it with `ip netns exec NAME`)
    /// with eth0 on the given network and a default route via its gateway.
    Create {
        name: String,
        #[arg(long)]
        network: String,
        /// Address in the network's subnet; default: the lowest free one.
        #[arg(long)]
        ip: Option<Ipv4Addr>,
        /// Publish a port on the host: [HOST_IP:]HOST_PORT:PORT[/tcp|/udp], ranges as
        /// 8000-8010:8000-8010 (repeatable; Docker's syntax and defaults).
        #[arg(long, short = 'p', value_name = "SPEC")]
        publish: Vec<String>,
    },
    /// List containers.
    #[command(alias = "list")]
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove a container and its namespace.
    #[command(alias = "remove")]
    Rm { name: String },
}

impl ContainerCommand {
    pub fn call(&self) -> Call {
        match self.clone() {
            ContainerCommand::Create { name, network, ip, publish } => {
                Call::CreateContainer(CreateContainer { name, network, ip, publish })
            }
            ContainerCommand::Ls { .. } => Call::ListContainers,
            ContainerCommand::Rm { name } => Call::RemoveContainer(name),
        }
    }

    pub fn print(&self, answer: &Value) -> anyhow::Result<()> {
        match self {
            ContainerCommand::Create { .. } => {
                println!("{} {}", answer["name"].as_str().unwrap_or_default(), answer["ip"].as_str().unwrap_or_default())
            }
            ContainerCommand::Rm { name } => println!("{name}"),
            ContainerCommand::Ls { json: true } => super::print_json(answer)?,
            ContainerCommand::Ls { json: false } => {
                println!("{:<24} {:<20} {:<16} {:<18} {:<11} PORTS", "NAME", "NETWORK", "IP", "MAC", "HOST IFACE");
                for c in answer.as_array().into_iter().flatten() {
                    let field = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
                    println!(
                        "{:<24} {:<20} {:<16} {:<18} {:<11} {}",
                        field("name"),
                        field("network"),
                        field("ip"),
                        field("mac"),
                        field("host_interface"),
                        ports_summary(&c["ports"])
                    );
                }
            }
        }
        Ok(())
    }
}

/// A few ports in full, many as the first and a count.
fn ports_summary(ports: &Value) -> String {
    let ports: Vec<&str> = ports.as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    match ports.len() {
        0..=3 => ports.join(", "),
        n => format!("{}, ... ({n} ports)", ports[0]),
    }
}
