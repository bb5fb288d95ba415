use clap::Subcommand;
use serde_json::Value;

use crate::api::Call;

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

    pub fn print(&self, answer: &Value) -> anyhow::Result<()> {
        match self {
            ConntrackCommand::Ls { json: true } | ConntrackCommand::Gc { json: true } => super::print_json(answer)?,
            ConntrackCommand::Ls { json: false } => {
                println!(
                    "{:<5} {:<7} {:<22} {:<22} {:<22} {:<22} {:<11} {:<9} {:>6} {:>9} {:>9}",
                    "PROTO", "KIND", "SOURCE", "DESTINATION", "TRANSLATED SOURCE", "TRANSLATED DEST", "STATE", "TABLE", "IDLE", "PKTS OUT", "PKTS IN"
                );
                for f in answer.as_array().into_iter().flatten() {
                    let s = |k: &str| f[k].as_str().unwrap_or_default().to_owned();
                    println!(
                        "{:<5} {:<7} {:<22} {:<22} {:<22} {:<22} {:<11} {:<9} {:>5}s {:>9} {:>9}",
                        s("protocol"),
                        s("kind"),
                        s("source"),
                        s("destination"),
                        s("translated_source"),
                        s("translated_destination"),
                        s("state"),
                        s("table"),
                        f["idle_seconds"],
                        f["packets_out"],
                        f["packets_in"]
                    );
                }
            }
            ConntrackCommand::Gc { json: false } => println!(
                "expired {} flows ({} entries); {} of {} assured entries in use, {} unassured, {} in overflow",
                answer["flows_expired"],
                answer["entries_removed"],
                answer["entries_in_use"],
                answer["capacity"],
                answer["unassured_entries"],
                answer["overflow_entries"]
            ),
        }
        Ok(())
    }
}
