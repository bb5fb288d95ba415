use anyhow::Result;

use super::container::parse_all;
use crate::{container, host::Host};

/// `bpfnet publish NAME SPEC...`: publishes ports of a running container.
pub async fn publish(host: &mut Host, name: &str, specs: &[String]) -> Result<()> {
    let mappings = parse_all(specs)?;
    let count = mappings.len();
    container::publish(host, name, mappings).await?;
    println!("{name}: published {count} port(s)");
    Ok(())
}

/// `bpfnet unpublish NAME SPEC...`
pub async fn unpublish(host: &mut Host, name: &str, specs: &[String]) -> Result<()> {
    let mappings = parse_all(specs)?;
    let count = mappings.len();
    container::unpublish(host, name, mappings).await?;
    println!("{name}: unpublished {count} port(s)");
    Ok(())
}
