//! `bpfnet agent`: the service. It owns one host (state directory lock, pinned datapath),
//! reconciles the kernel with the state when it starts, serves the API, expires idle flows,
//! follows the uplink (`uplink_follower`), reads the datapath's events (`monitor`) and serves
//! its metrics (`metrics`). The datapath
//! never depends on it: stopped (SIGTERM) or killed, it leaves everything forwarding, and the
//! next agent adopts it.
pub mod metrics;
pub mod monitor;
pub mod server;
pub mod service;
pub mod settings;
pub mod uplink_follower;

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use tokio::{signal::unix::SignalKind, sync::Mutex};

pub use settings::AgentArgs;

/// The one host the agent serves, shared by the API's handlers and the background tasks (one
/// operation at a time).
pub type SharedHost = Arc<Mutex<crate::host::Host>>;

use crate::{
    daemon::{metrics::Metrics, monitor::Monitor, uplink_follower::UplinkFollower},
    datapath::Datapath,
    host::{reconcile, HostOptions},
};

/// Reads the config file named by `--config`/BPFNET_CONFIG (if any) into environment
/// variables, for the settings that neither a flag nor the environment sets: clap then sees
/// them as it sees BPFNET_* variables, and flags still win. Runs before any thread exists.
pub fn load_config_into_env(cli: &clap::Command, args: &[String]) -> Result<()> {
    let path = args
        .iter()
        .position(|a| a == "--config")
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| args.iter().find_map(|a| a.strip_prefix("--config=").map(str::to_owned)))
        .or_else(|| std::env::var("BPFNET_CONFIG").ok());
    let Some(path) = path else { return Ok(()) };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading the config file {path}"))?;
    for setting in config_settings(cli, &text).with_context(|| format!("the config file {path}"))? {
        let given_as_flag = args.iter().any(|a| *a == setting.flag || a.starts_with(&format!("{}=", setting.flag)));
        if !given_as_flag && std::env::var_os(&setting.var).is_none() {
            // SAFETY (edition 2021: safe fn): single-threaded, before the runtime starts.
            std::env::set_var(setting.var, setting.value);
        }
    }
    Ok(())
}

/// One setting of the config file, as the flag and variable clap knows it by.
#[derive(Debug, PartialEq)]
struct ConfigSetting {
    flag: String,
    var: String,
    value: String,
}

/// The settings of a config file. Its keys are the long flags of `cli` and of its `agent`
/// subcommand that have a BPFNET_* variable, with `_` for `-`: every setting, and only
/// settings, whatever is added later.
fn config_settings(cli: &clap::Command, text: &str) -> Result<Vec<ConfigSetting>> {
    let agent = cli.find_subcommand("agent").context("no agent subcommand")?;
    let known: BTreeMap<String, &clap::Arg> = cli
        .get_arguments()
        .chain(agent.get_arguments())
        .filter(|arg| arg.get_env().is_some() && arg.get_id() != "config")
        .filter_map(|arg| Some((arg.get_long()?.replace('-', "_"), arg)))
        .collect();
    let table: BTreeMap<String, toml::Value> = toml::from_str(text).context("not valid TOML")?;
    table
        .into_iter()
        .map(|(key, value)| {
            let Some(arg) = known.get(&key) else {
                let names: Vec<&str> = known.keys().map(String::as_str).collect();
                anyhow::bail!("unknown setting {key:?}; known settings: {}", names.join(", "));
            };
            let value = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => anyhow::bail!("setting {key} must be a string, an integer or a boolean, not {other}"),
            };
            Ok(ConfigSetting {
                flag: format!("--{}", arg.get_long().expect("filtered on having one")),
                var: arg.get_env().expect("filtered on having one").to_string_lossy().into_owned(),
                value,
            })
        })
        .collect()
}

/// What the API's handlers and the background tasks share: the host (one operation at a
/// time), the event monitor and the agent's metrics.
#[derive(Clone)]
pub struct Agent {
    pub host: SharedHost,
    pub monitor: Arc<Monitor>,
    pub metrics: Arc<Metrics>,
}

/// Runs the agent until SIGTERM/SIGINT: enters the host namespace, then serves on `socket`.
pub fn run_service(args: AgentArgs, socket: PathBuf) -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        anyhow::bail!("the bpfnet agent manages network namespaces and eBPF programs and must run as root");
    }
    if args.host.datapath_log.is_some() {
        tracing::warn!("--datapath-log (BPFNET_DATAPATH_LOG, datapath_log) no longer does anything: drops are events, see `bpfnet monitor`");
    }
    let options = HostOptions::from(args.host.clone());
    // Before the runtime exists: every thread of the process then lives in the host namespace.
    options.enter_host_netns()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(run(options, args, socket))
}

async fn run(options: HostOptions, args: AgentArgs, socket: PathBuf) -> Result<()> {
    // A spec file dockerd could not use stops the agent before it changes anything.
    if let (Some(spec), Some(plugin_socket)) = (&args.docker_plugin_spec, &args.docker_plugin_socket) {
        crate::docker::SpecFile::check(spec, plugin_socket)?;
    }
    // A wrong --host-cgroup stops the agent before it changes anything.
    options.open_host_cgroup()?;
    let mut host = crate::host::Host::open(&options).await?;
    // So does a --cluster-cidr that does not fit the uplink.
    host.check_cluster_cidr().await?;
    if Datapath::is_pinned(&options.bpffs) {
        let replaced = Datapath::replace_programs(&options.bpffs, args.reload_programs)
            .context("replacing the datapath's programs")?;
        if !replaced.is_empty() {
            tracing::info!(?replaced, "replaced the running programs (atomic link update)");
        }
    }
    let report = reconcile::reconcile(&mut host).await.context("reconciling the kernel with the saved state")?;
    tracing::info!(
        rolled_back = ?report.rolled_back,
        recreated = ?report.recreated,
        removed = ?report.removed_leftovers,
        vanished = ?report.vanished,
        "reconciled {} networks and {} containers",
        host.state().networks.len(),
        host.state().containers.len()
    );
    // Subscribed before the first sync, so that the follower sees every change after it.
    let follower = host.options.uplink.as_deref().map(UplinkFollower::subscribe);
    // Uplink settings (address, ports, mode) as configured now, before the first request.
    if host.options.uplink.is_some() && host.existing_datapath()?.is_some() {
        host.sync_uplink().await.context("applying the uplink settings")?;
    }
    // The socket hooks as configured now: attached to --host-cgroup, or detached without it.
    if Datapath::is_pinned(&host.options.bpffs) {
        host.sync_host_cgroup().context("applying --host-cgroup")?;
    }
    // Bound before the API's socket, and neither serves yet: a client that finds the API
    // finds the driver too. Its socket file goes with the agent, as the API's: dockerd sees
    // the driver only while the agent serves it.
    let (plugin_listener, _plugin_socket_file) = match &args.docker_plugin_socket {
        Some(path) => {
            let (listener, file) = server::bind(path).await.context("binding --docker-plugin-socket")?;
            (Some((listener, path.clone())), Some(file))
        }
        None => (None, None),
    };
    // After the socket it names: dockerd that reads the spec finds the socket bound.
    let _plugin_spec_file = match (&args.docker_plugin_spec, &args.docker_plugin_socket) {
        (Some(spec), Some(socket)) => Some(crate::docker::SpecFile::write(spec, socket)?),
        _ => None,
    };
    let (listener, _socket_file) = server::bind(&socket).await?;
    let metrics_listener = match args.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding --metrics-listen {addr}; is another process on that port?"))?,
        ),
        None => None,
    };
    let agent = Agent {
        host: Arc::new(Mutex::new(host)),
        monitor: Monitor::new(args.drop_history as usize),
        metrics: Arc::new(Metrics::default()),
    };
    tokio::spawn(collect_garbage(agent.clone(), Duration::from_secs(args.gc_interval)));
    if let Some(follower) = follower {
        tokio::spawn(follower.run(agent.host.clone()));
    }
    tokio::spawn(agent.monitor.clone().run(agent.host.clone()));
    if let Some(listener) = metrics_listener {
        tracing::info!("serving /metrics on http://{}", listener.local_addr()?);
        let metrics =
            axum::serve(listener, server::metrics_router(agent.clone())).with_graceful_shutdown(stop_signal());
        tokio::spawn(async move {
            if let Err(e) = metrics.await {
                tracing::error!("serving /metrics over TCP: {e}");
            }
        });
    }
    if let Some((plugin_listener, path)) = plugin_listener {
        tracing::info!("serving Docker's network driver protocol on {}", path.display());
        let plugin = axum::serve(plugin_listener, crate::docker::router(agent.host.clone()))
            .with_graceful_shutdown(stop_signal());
        tokio::spawn(async move {
            if let Err(e) = plugin.await {
                tracing::error!("serving Docker's network driver protocol: {e}");
            }
        });
    }
    tracing::info!("serving the API on {}", socket.display());
    axum::serve(listener, server::router(agent.clone()))
        .with_graceful_shutdown(stop_signal())
        .await
        .context("serving the API")?;
    agent.monitor.stop(&agent.host).await;
    tracing::info!("stopped; the datapath keeps running (`bpfnet down` removes it)");
    Ok(())
}

async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Expires idle flows and frees their ports, every `interval`.
async fn collect_garbage(agent: Agent, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let mut host = agent.host.lock().await;
        match service::collect_garbage(&mut host, &agent.monitor, &agent.metrics) {
            Ok(Some(report)) if report.flows_expired > 0 => tracing::debug!(?report, "conntrack garbage collected"),
            Ok(_) => {}
            Err(e) => tracing::warn!("conntrack garbage collection failed: {e:#}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn every_key_of_the_example_config_is_a_setting() {
        let example = include_str!("../../systemd/agent.toml");
        // Its commented-out settings too: `# key = value` lines.
        let text: String = example
            .lines()
            .filter_map(|l| l.strip_prefix("# ").filter(|l| l.split_once(" = ").is_some_and(|(k, _)| !k.contains(' '))))
            .map(|l| format!("{l}\n"))
            .collect();
        let settings = config_settings(&crate::cli::Cli::command(), &text).unwrap();
        assert!(settings.len() >= 10, "{settings:?}");
        let mode = settings.iter().find(|s| s.flag == "--uplink-mode").unwrap();
        assert_eq!((mode.var.as_str(), mode.value.as_str()), ("BPFNET_UPLINK_MODE", "tc"));
        let access = settings.iter().find(|s| s.flag == "--allow-host-access").unwrap();
        assert_eq!((access.var.as_str(), access.value.as_str()), ("BPFNET_ALLOW_HOST_ACCESS", "false"));
    }

    #[test]
    fn bad_keys_and_values_are_named() {
        let cli = crate::cli::Cli::command();
        let err = format!("{:#}", config_settings(&cli, "uplnk = \"eth0\"\n").unwrap_err());
        assert!(err.starts_with("unknown setting \"uplnk\"; known settings: ") && err.contains("uplink,"), "{err}");
        assert!(!err.contains("config"), "{err}");
        let err = format!("{:#}", config_settings(&cli, "ct_size = [1]\n").unwrap_err());
        assert!(err.contains("setting ct_size must be a string, an integer or a boolean"), "{err}");
        assert!(config_settings(&cli, "uplink = ").is_err());
    }
}
