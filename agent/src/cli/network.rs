use std::net::Ipv4Addr;

use clap::Subcommand;
use serde_json::Value;

use crate::api::{Call, CreateNetwork};

#[derive(Subcommand, Debug, Clone)]
pub enum NetworkCommand {
    /// Create a network: a subnet whose containers reach each other and their gateway.
    Create {
        name: String,
        /// IPv4 subnet in CIDR notation, e.g. 10.88.0.0/24.
        #[arg(long)]
        subnet: String,
        /// Gateway address; default: the subnet's first host address.
        #[arg(long)]
        gateway: Option<Ipv4Addr>,
    },
    /// List networks.
    #[command(alias = "list")]
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show one network and its containers as JSON.
    Inspect { name: String },
    /// Remove a network (it must have no containers).
    #[command(alias = "remove")]
    Rm { name: String },
}

impl NetworkCommand {
    pub fn call(&self) -> Call {
        match self.clone() {
            NetworkCommand::Create { name, subnet, gateway } => Call::CreateNetwork(CreateNetwork { name, subnet, gateway }),
            NetworkCommand::Ls { .. } => Call::ListNetworks,
            NetworkCommand::Inspect { name } => Call::InspectNetwork(name),
            NetworkCommand::Rm { name } => Call::RemoveNetwork(name),
        }
    }

    /// Prints the agent's answer: JSON where asked for, else text.
    pub fn print(&self, answer: &Value) -> anyhow::Result<()> {
        match self {
            NetworkCommand::Create { name, .. } | NetworkCommand::Rm { name } => println!("{name}"),
            NetworkCommand::Ls { json: false } => {
                println!("{:<24} {:<20} {:<16} CONTAINERS", "NAME", "SUBNET", "GATEWAY");
                for n in answer.as_array().into_iter().flatten() {
                    println!(
                        "{:<24} {:<20} {:<16} {}",
                        n["name"].as_str().unwrap_or_default(),
                        n["subnet"].as_str().unwrap_or_default(),
                        n["gateway"].as_str().unwrap_or_default(),
                        n["containers"].as_array().map_or(0, Vec::len)
                    );
                }
            }
            NetworkCommand::Ls { json: true } | NetworkCommand::Inspect { .. } => super::print_json(answer)?,
        }
        Ok(())
    }
}
