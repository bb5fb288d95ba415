//! `bpfnet-cni`: the CNI plugin (spec 1.1.0). The runtime sets `CNI_*` and writes the network
//! configuration on stdin; the answer (a result, or the spec's error object) goes to stdout,
//! logs to stderr (`BPFNET_LOG`, default `warn`). Everything lives in `bpfnet::cni`.
use std::{io::Read, process::ExitCode};

use bpfnet::cni::{
    self,
    spec::{code, CniError, Environment},
};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let filter = std::env::var("BPFNET_LOG").ok().and_then(|f| EnvFilter::try_new(f).ok());
    tracing_subscriber::fmt()
        .with_env_filter(filter.unwrap_or_else(|| EnvFilter::new("warn")))
        .with_writer(std::io::stderr)
        .init();
    let env = Environment::from_process();
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Err(e) => {
            Err(CniError::new(code::DECODE, "reading the network configuration from stdin failed")
                .details(e.to_string()))
        }
        Ok(_) => match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime.block_on(cni::run(&env, &stdin)),
            Err(e) => {
                Err(CniError::new(code::TRY_AGAIN_LATER, "starting the plugin's runtime failed").details(e.to_string()))
            }
        },
    };
    match outcome {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(answer)) => {
            println!("{answer}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::warn!("{:?} failed: {} ({})", env.command, err.msg, err.details);
            println!("{}", serde_json::to_string(&err).expect("CNI errors always serialize"));
            ExitCode::FAILURE
        }
    }
}
