//! One bpfnet host: the namespace that plays the host, its state directory and its pinned
//! datapath, opened together for one operation.
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::{
    datapath::{Datapath, DatapathLogLevel},
    netlink::Netlink,
    netns,
    state::{State, StateStore},
};

/// Where a bpfnet host lives. Several hosts (each with its own namespace, state directory and
/// pin directory) can be driven side by side on one machine, as the tests do.
#[derive(clap::Args, Debug, Clone)]
pub struct HostOptions {
    /// Network namespace (a name under /run/netns) that plays the host: host-side veths,
    /// programs and routes live there. Default: the namespace bpfnet runs in.
    #[arg(long, global = true, env = "BPFNET_HOST_NETNS", value_name = "NAME")]
    pub host_netns: Option<String>,
    /// Directory of the declarative state (networks, containers).
    #[arg(long, global = true, env = "BPFNET_STATE_DIR", default_value = "/var/lib/bpfnet", value_name = "DIR")]
    pub state_dir: PathBuf,
    /// bpffs directory where programs, maps and links are pinned.
    #[arg(long, global = true, env = "BPFNET_BPFFS", default_value = "/sys/fs/bpf/bpfnet", value_name = "DIR")]
    pub bpffs: PathBuf,
    /// Most verbose level of the eBPF programs' own log records (fixed when they are loaded;
    /// read them with `bpfnet monitor`).
    #[arg(long, global = true, env = "BPFNET_DATAPATH_LOG", value_enum, default_value = "info")]
    pub datapath_log: DatapathLogLevel,
}

impl HostOptions {
    /// Moves the whole process into the host namespace. Must run before any other thread
    /// exists (before the tokio runtime is built), so that every thread lives there.
    pub fn enter_host_netns(&self) -> Result<()> {
        if let Some(name) = &self.host_netns {
            if !netns::exists(name) {
                anyhow::bail!(
                    "the host network namespace {name:?} does not exist; create it \
                     (ip netns add {name}) or leave out --host-netns"
                );
            }
            netns::enter_process(name).with_context(|| format!("entering host namespace {name}"))?;
        }
        Ok(())
    }
}

pub struct Host {
    pub options: HostOptions,
    store: StateStore,
    pub state: State,
    pub netlink: Netlink,
    datapath: Option<Datapath>,
}

impl Host {
    /// Locks the state directory and reads the state. The datapath is opened on first use.
    pub async fn open(options: &HostOptions) -> Result<Self> {
        let store = StateStore::open(&options.state_dir)?;
        let state = store.load()?;
        let netlink = Netlink::connect().context("opening a netlink socket in the host namespace")?;
        Ok(Self { options: options.clone(), store, state, netlink, datapath: None })
    }

    /// The pinned datapath, loaded and pinned if this host has none yet.
    pub fn datapath(&mut self) -> Result<&mut Datapath> {
        if self.datapath.is_none() {
            self.datapath = Some(Datapath::open_or_load(&self.options.bpffs, self.options.datapath_log)?);
        }
        Ok(self.datapath.as_mut().expect("just opened"))
    }

    /// The datapath if one is pinned, without loading one.
    pub fn existing_datapath(&mut self) -> Result<Option<&mut Datapath>> {
        if self.datapath.is_none() && !Datapath::is_pinned(&self.options.bpffs) {
            return Ok(None);
        }
        self.datapath().map(Some)
    }

    pub fn save(&self) -> Result<()> {
        self.store.save(&self.state)
    }

    /// Forgets the datapath handles and the saved state (after `down` removed everything).
    pub fn clear(&mut self) -> Result<()> {
        self.datapath = None;
        self.state = State::default();
        self.store.clear()
    }
}
