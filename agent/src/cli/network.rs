use std::{net::Ipv4Addr, path::Path};

use clap::Subcommand;

use super::client;
use crate::api::{Call, CreateNetwork, NetworkInfo, Removed};

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
            NetworkCommand::Create { name, subnet, gateway } => {
                Call::CreateNetwork(CreateNetwork { name, subnet, gateway })
            }
            NetworkCommand::Ls { .. } => Call::ListNetworks,
            NetworkCommand::Inspect { name } => Call::InspectNetwork(name),
            NetworkCommand::Rm { name } => Call::RemoveNetwork(name),
        }
    }

    /// Runs the verb: one API call, its answer printed as JSON where asked for, else as text.
    pub async fn run(&self, socket: &Path) -> anyhow::Result<()> {
        match self {
            NetworkCommand::Create { name, .. } => {
                let _: NetworkInfo = client::call(socket, &self.call()).await?;
                println!("{name}");
            }
            NetworkCommand::Rm { name } => {
                let _: Removed = client::call(socket, &self.call()).await?;
                println!("{name}");
            }
            NetworkCommand::Inspect { .. } => {
                let network: NetworkInfo = client::call(socket, &self.call()).await?;
                super::print_json(&network)?;
            }
            NetworkCommand::Ls { json } => {
                let networks: Vec<NetworkInfo> = client::call(socket, &self.call()).await?;
                if *json {
                    return super::print_json(&networks);
                }
                println!("{:<24} {:<20} {:<16} CONTAINERS", "NAME", "SUBNET", "GATEWAY");
                for n in &networks {
                    println!("{:<24} {:<20} {:<16} {}", n.name, n.subnet, n.gateway, n.containers.len());
                }
            }
        }
        Ok(())
    }
}
