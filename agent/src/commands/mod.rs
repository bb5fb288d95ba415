//! The CLI's verbs: each turns into one API call to the agent and prints its answer.
pub mod conntrack;
pub mod container;
pub mod network;
pub mod publish;
pub mod status;

/// Prints a value as pretty JSON on stdout.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
