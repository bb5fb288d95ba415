use anyhow::{Context, Result};

use crate::{container, datapath, host::Host, network};

/// Removes everything this bpfnet host created: containers, networks, pins, state. Goes on
/// past a failing item so that one broken object does not keep the rest alive.
pub async fn run(host: &mut Host) -> Result<()> {
    let mut failures = Vec::new();
    for spec in host.state.containers.values().cloned().collect::<Vec<_>>() {
        match container::teardown(host, &spec).await {
            Ok(()) => {
                host.state.containers.remove(&spec.name);
            }
            Err(e) => failures.push(format!("container {}: {e:#}", spec.name)),
        }
    }
    for spec in host.state.networks.values().cloned().collect::<Vec<_>>() {
        match network::teardown(host, &spec).await {
            Ok(()) => {
                host.state.networks.remove(&spec.name);
            }
            Err(e) => failures.push(format!("network {}: {e:#}", spec.name)),
        }
    }
    if !failures.is_empty() {
        host.save()?;
        anyhow::bail!("bpfnet down could not remove everything:\n  {}", failures.join("\n  "));
    }
    host.clear()?;
    datapath::destroy(&host.options.bpffs)
        .with_context(|| format!("removing pins under {}", host.options.bpffs.display()))?;
    println!("removed all networks, containers and pins");
    Ok(())
}
