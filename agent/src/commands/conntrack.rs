use anyhow::Result;
use clap::Subcommand;

use super::print_json;
use crate::{conntrack, host::Host};

#[derive(Subcommand, Debug)]
pub enum ConntrackCommand {
    /// List tracked flows with their translations.
    #[command(alias = "list")]
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Expire idle flows now (by the --ct-timeout-* settings) and free their NAT ports.
    Gc {
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(host: &mut Host, command: ConntrackCommand) -> Result<()> {
    let timeouts = host.options.ct_timeouts.clone();
    let Some(datapath) = host.existing_datapath()? else {
        anyhow::bail!("no datapath is loaded on this host yet; create a network first");
    };
    match command {
        ConntrackCommand::Ls { json } => {
            let flows = conntrack::flows(datapath)?;
            if json {
                return print_json(&flows);
            }
            println!("{:<5} {:<7} {:<22} {:<22} {:<22} {:<22} {:<11} {:>6} {:>9} {:>9}", "PROTO", "KIND", "SOURCE", "DESTINATION", "TRANSLATED SOURCE", "TRANSLATED DEST", "STATE", "IDLE", "PKTS OUT", "PKTS IN");
            for f in flows {
                println!(
                    "{:<5} {:<7} {:<22} {:<22} {:<22} {:<22} {:<11} {:>5}s {:>9} {:>9}",
                    f.protocol,
                    f.kind,
                    f.source,
                    f.destination,
                    f.translated_source,
                    f.translated_destination,
                    serde_json::to_value(f.state)?.as_str().unwrap_or_default(),
                    f.idle_seconds,
                    f.packets_out,
                    f.packets_in
                );
            }
        }
        ConntrackCommand::Gc { json } => {
            let report = conntrack::collect_garbage(datapath, &timeouts)?;
            if json {
                return print_json(&report);
            }
            println!(
                "expired {} flows ({} entries); {} of {} entries in use",
                report.flows_expired, report.entries_removed, report.entries_in_use, report.capacity
            );
        }
    }
    Ok(())
}
