use std::{net::IpAddr, path::Path};

use clap::Subcommand;

use super::client;
use crate::api::{Call, CreateNetwork, NetworkInfo, Removed};

#[derive(Subcommand, Debug, Clone)]
pub enum NetworkCommand {
    /// Create a network: a subnet whose containers reach each other and their gateway. IPv4
    /// only unless an IPv6 subnet or --ipv6 is given (dual stack).
    Create {
        name: String,
        /// Subnet in CIDR notation: an IPv4 one (required), e.g. 10.88.0.0/24, and for dual
        /// stack an IPv6 one (a /64 or larger), e.g. fd00:88::/64. Repeatable, once per family.
        #[arg(long, required = true)]
        subnet: Vec<String>,
        /// Gateway address of its subnet's family; default: the subnet's first host address.
        /// Repeatable, once per family.
        #[arg(long)]
        gateway: Vec<IpAddr>,
        /// Dual stack: without an IPv6 --subnet, a unique local /64 (fdXX:XXXX:XXXX::/64,
        /// random) is chosen, as Docker 27 does.
        #[arg(long)]
        ipv6: bool,
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
            NetworkCommand::Create { name, subnet, gateway, ipv6 } => {
                Call::CreateNetwork(CreateNetwork { name, subnets: subnet, gateways: gateway, ipv6 })
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
                println!(
                    "{:<24} {:<20} {:<16} {:<26} {:<22} CONTAINERS",
                    "NAME", "SUBNET", "GATEWAY", "IPV6 SUBNET", "IPV6 GATEWAY"
                );
                for n in &networks {
                    let (subnet6, gateway6) =
                        (n.subnet6.as_deref().unwrap_or("-"), n.gateway6.as_deref().unwrap_or("-"));
                    println!(
                        "{:<24} {:<20} {:<16} {:<26} {:<22} {}",
                        n.name,
                        n.subnet,
                        n.gateway,
                        subnet6,
                        gateway6,
                        n.containers.len()
                    );
                }
            }
        }
        Ok(())
    }
}
