use std::path::Path;

use clap::Subcommand;

use super::client;
use crate::api::{Call, Flow, GcReport};

#[derive(Subcommand, Debug)]
pub enum ConntrackCommand {
    /// List tracked flows with their translations.
    #[command(alias = "list")]
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Expire idle flows now (by the agent's --ct-timeout-* settings) and free their NAT ports.
    Gc {
        #[arg(long)]
        json: bool,
    },
}

impl ConntrackCommand {
    pub fn call(&self) -> Call {
        match self {
            ConntrackCommand::Ls { .. } => Call::ListConntrack,
            ConntrackCommand::Gc { .. } => Call::CollectConntrack,
        }
    }

    /// Runs the verb: one API call, its answer printed as JSON where asked for, else as text.
    pub async fn run(&self, socket: &Path) -> anyhow::Result<()> {
        match self {
            ConntrackCommand::Ls { json } => {
                let flows: Vec<Flow> = client::call(socket, &self.call()).await?;
                if *json {
                    return super::print_json(&flows);
                }
                println!(
                    "{:<6} {:<7} {:<22} {:<22} {:<22} {:<22} {:<11} {:<9} {:>6} {:>9} {:>9}",
                    "PROTO",
                    "KIND",
                    "SOURCE",
                    "DESTINATION",
                    "TRANSLATED SOURCE",
                    "TRANSLATED DEST",
                    "STATE",
                    "TABLE",
                    "IDLE",
                    "PKTS OUT",
                    "PKTS IN"
                );
                for f in &flows {
                    println!(
                        "{:<6} {:<7} {:<22} {:<22} {:<22} {:<22} {:<11} {:<9} {:>5}s {:>9} {:>9}",
                        f.protocol,
                        f.kind,
                        f.source,
                        f.destination,
                        f.translated_source,
                        f.translated_destination,
                        name_of(&f.state),
                        name_of(&f.table),
                        f.idle_seconds,
                        f.packets_out,
                        f.packets_in
                    );
                }
            }
            ConntrackCommand::Gc { json } => {
                let report: GcReport = client::call(socket, &self.call()).await?;
                if *json {
                    return super::print_json(&report);
                }
                println!(
                    "expired {} flows and {} of removed containers ({} entries); {} of {} assured entries in use, \
                     {} unassured, {} in overflow; IPv6: {} of {} assured entries in use, {} unassured, {} in overflow",
                    report.flows_expired,
                    report.flows_of_removed_containers,
                    report.entries_removed,
                    report.entries_in_use,
                    report.capacity,
                    report.unassured_entries,
                    report.overflow_entries,
                    report.ipv6_entries_in_use,
                    report.ipv6_capacity,
                    report.ipv6_unassured_entries,
                    report.ipv6_overflow_entries
                );
            }
        }
        Ok(())
    }
}

/// A state's or table's name as the JSON answer has it (snake_case).
fn name_of(value: &impl serde::Serialize) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}
