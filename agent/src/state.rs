//! The declarative state of one bpfnet host: its networks and containers. Kept as JSON in the
//! state directory, replaced atomically (write + fsync + rename), and guarded by an exclusive
//! lock so that concurrent `bpfnet` invocations on the same host run one after the other.
use std::{
    collections::BTreeMap,
    fs::{File, OpenOptions},
    io::Write,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use ipnet::Ipv4Net;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

/// Bumped when the file's meaning changes; an unknown version is refused, never guessed at.
pub const STATE_VERSION: u32 = 1;
const STATE_FILE: &str = "state.json";
const LOCK_FILE: &str = "lock";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub version: u32,
    #[serde(default)]
    pub networks: BTreeMap<String, NetworkSpec>,
    #[serde(default)]
    pub containers: BTreeMap<String, ContainerSpec>,
}

impl Default for State {
    fn default() -> Self {
        Self { version: STATE_VERSION, networks: BTreeMap::new(), containers: BTreeMap::new() }
    }
}

/// An operation that was started and not yet finished: written before the kernel is touched,
/// cleared once it completed, so that an agent killed in the middle finishes it (removal) or
/// rolls it back (creation) when it starts again.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Pending {
    Create,
    Remove,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    pub name: String,
    /// The datapath's key for the network (NETWORKS map, Endpoint::network_id).
    pub id: u32,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Pending>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    /// Also the name of its network namespace (/run/netns/NAME).
    pub name: String,
    pub network: String,
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    /// The host-side veth end, where from_endpoint is attached.
    pub host_interface: String,
    /// Slot of the container's traffic counters in ENDPOINT_STATS.
    #[serde(default)]
    pub stats_slot: u32,
    /// Ports published on the host (`--publish`).
    #[serde(default)]
    pub publish: Vec<crate::publish::PortMapping>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Pending>,
}

impl State {
    pub fn network(&self, name: &str) -> Result<&NetworkSpec> {
        self.networks.get(name).with_context(|| {
            format!("no network named {name:?}; `bpfnet network ls` lists the networks")
        })
    }

    pub fn container(&self, name: &str) -> Result<&ContainerSpec> {
        self.containers.get(name).with_context(|| {
            format!("no container named {name:?}; `bpfnet container ls` lists the containers")
        })
    }

    pub fn containers_of<'a>(&'a self, network: &'a str) -> impl Iterator<Item = &'a ContainerSpec> + 'a {
        self.containers.values().filter(move |c| c.network == network)
    }
}

/// The state directory, locked for as long as this value lives.
pub struct StateStore {
    dir: PathBuf,
    _lock: Flock<File>,
}

impl StateStore {
    /// Creates the directory if needed and takes its lock; refuses when another process (an
    /// agent) holds it.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating state directory {}", dir.display()))?;
        let lock_path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => bail!(
                "another bpfnet agent is running with the state directory {}; stop it first, or \
                 give this one its own --state-dir",
                dir.display()
            ),
            Err((_, errno)) => return Err(errno).with_context(|| format!("locking {}", lock_path.display())),
        };
        Ok(Self { dir: dir.to_owned(), _lock: lock })
    }

    fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// The saved state, or an empty one when none was saved yet.
    pub fn load(&self) -> Result<State> {
        let path = self.path();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let state: State = serde_json::from_str(&text).with_context(|| {
            format!(
                "the state file {} is not valid bpfnet state; restore it from a backup or \
                 move it away (the datapath keeps running without it)",
                path.display()
            )
        })?;
        if state.version != STATE_VERSION {
            bail!(
                "the state file {} has version {}, this bpfnet understands version {}; \
                 use the bpfnet release that wrote it",
                path.display(),
                state.version,
                STATE_VERSION
            );
        }
        Ok(state)
    }

    pub fn save(&self, state: &State) -> Result<()> {
        let path = self.path();
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let mut file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        file.write_all(serde_json::to_string_pretty(state)?.as_bytes())
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("replacing {} with {}", path.display(), tmp.display()))?;
        Ok(())
    }

    /// Removes the state file (the lock file stays while locked). Used by `bpfnet down`.
    pub fn clear(&self) -> Result<()> {
        match std::fs::remove_file(self.path()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("bpfnet-state-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn round_trip_and_refusals() {
        let dir = temp_dir("rt");
        let store = StateStore::open(&dir).unwrap();
        assert_eq!(store.load().unwrap(), State::default());
        let mut state = State::default();
        state.networks.insert(
            "n".into(),
            NetworkSpec { name: "n".into(), id: 1, subnet: "10.1.0.0/24".parse().unwrap(), gateway: "10.1.0.1".parse().unwrap(), pending: None },
        );
        store.save(&state).unwrap();
        assert_eq!(store.load().unwrap(), state);

        std::fs::write(dir.join(STATE_FILE), "{ not json").unwrap();
        let err = format!("{:#}", store.load().unwrap_err());
        assert!(err.contains("not valid bpfnet state"), "{err}");

        std::fs::write(dir.join(STATE_FILE), r#"{"version": 99}"#).unwrap();
        let err = format!("{:#}", store.load().unwrap_err());
        assert!(err.contains("version 99"), "{err}");

        let second = StateStore::open(&dir).err().expect("a second holder is refused");
        assert!(second.to_string().contains("another bpfnet agent"), "{second}");
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
