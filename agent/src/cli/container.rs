use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use clap::Subcommand;

use super::client;
use crate::api::{Attach, AttachmentInfo, Call, ContainerInfo, CreateContainer, Detached, Removed};

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
        /// IPv6 address in a dual-stack network's IPv6 subnet; default: the lowest free one.
        #[arg(long)]
        ip6: Option<Ipv6Addr>,
        /// Publish a port on the host: [HOST_IP:]HOST_PORT:PORT[/tcp|/udp], ranges as
        /// 8000-8010:8000-8010, IPv6 host addresses in brackets ([2001:db8::1]:8080:80)
        /// (repeatable; Docker's syntax and defaults: without a host address, on IPv4 and,
        /// when the container has an IPv6 address, on IPv6).
        #[arg(long, short = 'p', value_name = "SPEC")]
        publish: Vec<String>,
    },
    /// Attach a network namespace that someone else made (a container engine's) to a network:
    /// a veth named IFNAME inside it, an address, a default route, published ports. The
    /// namespace stays the engine's: detach removes only what bpfnet made.
    Attach {
        /// The namespace's path: /proc/PID/ns/net, /run/netns/NAME, /var/run/netns/cni-...
        netns: PathBuf,
        #[arg(long)]
        network: String,
        /// The engine's container id; with --ifname, what names the attachment.
        #[arg(long)]
        id: String,
        /// The interface's name inside the namespace.
        #[arg(long, default_value = "eth0")]
        ifname: String,
        /// Address in the network's subnet; default: the lowest free one.
        #[arg(long)]
        ip: Option<Ipv4Addr>,
        /// IPv6 address on a dual-stack network; default: the lowest free one.
        #[arg(long)]
        ip6: Option<Ipv6Addr>,
        /// Publish a port on the host, as for `create`.
        #[arg(long, short = 'p', value_name = "SPEC")]
        publish: Vec<String>,
    },
    /// Detach what `attach` made (nothing to detach is no error); the namespace stays.
    Detach {
        #[arg(long)]
        id: String,
        #[arg(long, default_value = "eth0")]
        ifname: String,
    },
    /// List containers.
    #[command(alias = "list")]
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show one container as JSON: its addresses, ports and traffic.
    Inspect { name: String },
    /// Remove a container and its namespace.
    #[command(alias = "remove")]
    Rm { name: String },
}

impl ContainerCommand {
    pub fn call(&self) -> Call {
        match self.clone() {
            ContainerCommand::Create { name, network, ip, ip6, publish } => {
                Call::CreateContainer(CreateContainer { name, network, ip, ip6, publish })
            }
            ContainerCommand::Attach { netns, network, id, ifname, ip, ip6, publish } => {
                Call::Attach(Attach { netns, container_id: id, ifname, network, ip, ip6, publish })
            }
            ContainerCommand::Inspect { name } => Call::InspectContainer(name),
            ContainerCommand::Detach { id, ifname } => Call::Detach(id, ifname),
            ContainerCommand::Ls { .. } => Call::ListContainers,
            ContainerCommand::Rm { name } => Call::RemoveContainer(name),
        }
    }

    /// Runs the verb: one API call, its answer printed as JSON where asked for, else as text.
    pub async fn run(&self, socket: &Path) -> anyhow::Result<()> {
        match self {
            ContainerCommand::Create { .. } => {
                let container: ContainerInfo = client::call(socket, &self.call()).await?;
                match &container.ip6 {
                    Some(ip6) => println!("{} {} {ip6}", container.name, container.ip),
                    None => println!("{} {}", container.name, container.ip),
                }
            }
            ContainerCommand::Inspect { .. } => {
                let container: ContainerInfo = client::call(socket, &self.call()).await?;
                super::print_json(&container)?;
            }
            ContainerCommand::Attach { .. } => {
                let attached: AttachmentInfo = client::call(socket, &self.call()).await?;
                match &attached.address6 {
                    Some(a6) => println!("{}/{} {} {a6}", attached.container_id, attached.ifname, attached.address),
                    None => println!("{}/{} {}", attached.container_id, attached.ifname, attached.address),
                }
            }
            ContainerCommand::Detach { id, ifname } => {
                let answer: Detached = client::call(socket, &self.call()).await?;
                match answer.detached {
                    true => println!("{id}/{ifname}"),
                    false => println!("{id}/{ifname} was not attached"),
                }
            }
            ContainerCommand::Rm { name } => {
                let _: Removed = client::call(socket, &self.call()).await?;
                println!("{name}");
            }
            ContainerCommand::Ls { json } => {
                let containers: Vec<ContainerInfo> = client::call(socket, &self.call()).await?;
                if *json {
                    return super::print_json(&containers);
                }
                println!(
                    "{:<24} {:<20} {:<16} {:<26} {:<18} {:<11} PORTS",
                    "NAME", "NETWORK", "IP", "IPV6", "MAC", "HOST IFACE"
                );
                for c in &containers {
                    println!(
                        "{:<24} {:<20} {:<16} {:<26} {:<18} {:<11} {}",
                        c.name,
                        c.network,
                        c.ip,
                        c.ip6.as_deref().unwrap_or("-"),
                        c.mac,
                        c.host_interface,
                        ports_summary(&c.ports)
                    );
                }
            }
        }
        Ok(())
    }
}

/// A few ports in full, many as the first and a count.
fn ports_summary(ports: &[String]) -> String {
    match ports.len() {
        0..=3 => ports.join(", "),
        n => format!("{}, ... ({n} ports)", ports[0]),
    }
}
