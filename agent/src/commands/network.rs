use std::net::Ipv4Addr;

use anyhow::Result;
use clap::Subcommand;
use serde_json::json;

use super::print_json;
use crate::{host::Host, network, state::NetworkSpec};

#[derive(Subcommand, Debug)]
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

fn describe(host: &Host, spec: &NetworkSpec) -> serde_json::Value {
    let containers: Vec<_> = host.state.containers_of(&spec.name).map(|c| c.name.clone()).collect();
    json!({
        "name": spec.name,
        "id": spec.id,
        "subnet": spec.subnet.to_string(),
        "gateway": spec.gateway.to_string(),
        "containers": containers,
    })
}

pub async fn run(host: &mut Host, command: NetworkCommand) -> Result<()> {
    match command {
        NetworkCommand::Create { name, subnet, gateway } => {
            let spec = network::create(host, &name, &subnet, gateway).await?;
            println!("{}", spec.name);
        }
        NetworkCommand::Ls { json } => {
            let all: Vec<_> = host.state.networks.values().map(|n| describe(host, n)).collect();
            if json {
                print_json(&all)?;
            } else {
                println!("{:<24} {:<20} {:<16} CONTAINERS", "NAME", "SUBNET", "GATEWAY");
                for n in host.state.networks.values() {
                    println!(
                        "{:<24} {:<20} {:<16} {}",
                        n.name,
                        n.subnet.to_string(),
                        n.gateway.to_string(),
                        host.state.containers_of(&n.name).count()
                    );
                }
            }
        }
        NetworkCommand::Inspect { name } => {
            let spec = host.state.network(&name)?;
            print_json(&describe(host, spec))?;
        }
        NetworkCommand::Rm { name } => {
            network::remove(host, &name).await?;
            println!("{name}");
        }
    }
    Ok(())
}
