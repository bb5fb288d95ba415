use std::net::Ipv4Addr;

use anyhow::Result;
use clap::Subcommand;
use serde_json::json;

use super::print_json;
use crate::{container, host::Host, ipam::format_mac, state::ContainerSpec};

#[derive(Subcommand, Debug)]
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

/// Parses every `--publish` value.
pub fn parse_all(specs: &[String]) -> Result<Vec<crate::publish::PortMapping>> {
    let mut all = Vec::new();
    for spec in specs {
        all.extend(crate::publish::parse(spec)?);
    }
    Ok(all)
}

pub fn describe(spec: &ContainerSpec) -> serde_json::Value {
    json!({
        "name": spec.name,
        "network": spec.network,
        "ip": spec.ip.to_string(),
        "mac": format_mac(&spec.mac),
        "netns": spec.name,
        "host_interface": spec.host_interface,
        "ports": spec.publish.iter().map(ToString::to_string).collect::<Vec<_>>(),
    })
}

pub async fn run(host: &mut Host, command: ContainerCommand) -> Result<()> {
    match command {
        ContainerCommand::Create { name, network, ip, publish } => {
            let mappings = parse_all(&publish)?;
            let spec = container::create(host, &name, &network, ip, mappings).await?;
            println!("{} {}", spec.name, spec.ip);
        }
        ContainerCommand::Ls { json } => {
            if json {
                print_json(&host.state.containers.values().map(describe).collect::<Vec<_>>())?;
            } else {
                println!("{:<24} {:<20} {:<16} {:<18} {:<11} PORTS", "NAME", "NETWORK", "IP", "MAC", "HOST IFACE");
                for c in host.state.containers.values() {
                    let ports = match c.publish.as_slice() {
                        [] => String::new(),
                        few @ [_, _, _] | few @ [_, _] | few @ [_] => few.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                        many => format!("{}, ... ({} ports)", many[0], many.len()),
                    };
                    println!(
                        "{:<24} {:<20} {:<16} {:<18} {:<11} {ports}",
                        c.name,
                        c.network,
                        c.ip.to_string(),
                        format_mac(&c.mac),
                        c.host_interface
                    );
                }
            }
        }
        ContainerCommand::Rm { name } => {
            container::remove(host, &name).await?;
            println!("{name}");
        }
    }
    Ok(())
}
