use std::time::Duration;

use anyhow::{Context, Result};
use aya_log::EbpfLogger;
use tokio::io::unix::AsyncFd;

use crate::host::Host;

/// Streams the eBPF programs' own log records (aya-log) to the log output, for `duration`
/// or until Ctrl-C. Records above the level set with --datapath-log when the datapath was
/// loaded are compiled out and never appear.
pub async fn run(host: &mut Host, duration: Option<u64>) -> Result<()> {
    let program_id = match host.existing_datapath()? {
        // Both programs log to the same ring buffer (one object, one AYA_LOGS map).
        Some(dp) => dp.program_ids()?[0].1,
        None => anyhow::bail!("no datapath is loaded on this host yet; create a network first"),
    };
    let logger = EbpfLogger::init_from_id(program_id)
        .context("attaching to the datapath's log ring buffer")?;
    // SAFETY: the AsyncFd owns the logger, so its ring buffer fd stays open for as long as it
    // is registered.
    let mut fd = unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("watching the log ring buffer")?;
    let stop = async {
        match duration {
            Some(secs) => tokio::time::sleep(Duration::from_secs(secs)).await,
            None => drop(tokio::signal::ctrl_c().await),
        }
    };
    tokio::pin!(stop);
    eprintln!("streaming datapath log records of program {program_id} (Ctrl-C to stop)");
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        }
    }
}
