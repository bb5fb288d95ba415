//! The declarative state of one bpfnet host: its networks and containers, and who publishes
//! which port (indexed, for conflict checks). Every change is one [`Change`] record, and costs
//! what its record does, not what the whole state does (10,000 published ports or not):
//!
//! - `state.json`: a snapshot, replaced atomically (write, fsync, rename, fsync the directory),
//!   naming its generation;
//! - `journal.<generation>`: the changes since that snapshot, one line each (`CRC32 JSON`: the
//!   record's CRC-32 in hex, then the change), appended and fdatasync'ed before the change is
//!   acted on as done (write-ahead: a change the agent answered is never lost). Replayed on
//!   load; folded into a new snapshot (the next generation) when the agent starts and when the
//!   journal outgrows the snapshot.
//!
//! A crash at any point leaves either the old snapshot with its journal or the new snapshot
//! (whose generation has no journal yet): journals of any other generation are stale and
//! removed. A last record that a crash tore (cut off, or written only in part: its checksum
//! fails) was never answered and is dropped with a warning. Any other record that fails its
//! checksum or does not read is corruption: the agent refuses to start and names the file and
//! the record, and the datapath, which does not depend on the agent, keeps forwarding. The
//! directory is guarded by an exclusive lock: one agent at a time.
use std::{
    collections::{BTreeMap, HashSet},
    fs::{File, OpenOptions},
    io::Write,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use ipnet::{Ipv4Net, Ipv6Net};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::host::publish::{PortMapping, PublishedPorts};

/// Bumped when the files' meaning changes; an unknown version is refused, never guessed at.
/// 1: `state.json` alone, rewritten whole on every change. 2: a snapshot and a journal. 3:
/// the journal's records carry a checksum.
pub const STATE_VERSION: u32 = 3;
/// The version whose journal records are bare JSON lines.
const UNCHECKED_JOURNAL_VERSION: u32 = 2;
const STATE_FILE: &str = "state.json";
const JOURNAL_PREFIX: &str = "journal.";
const LOCK_FILE: &str = "lock";
/// The journal is folded into a snapshot once it is larger than the snapshot and than this,
/// so that the rewrite costs each record a constant share, whatever the state's size.
const MIN_JOURNAL_BYTES_BEFORE_SNAPSHOT: u64 = 1 << 20;
/// Journal space allocated ahead of the records at a time (fallocate, the file's size
/// unchanged).
const JOURNAL_RESERVE: u64 = 64 * 1024;
/// A record that begins an operation is written only with this much allocated beyond it, for
/// the operation's other records: a full disk then fails an operation at its start, before
/// anything is made, and never halfway through.
const OPERATION_HEADROOM: u64 = 16 * 1024;

/// The state in memory: what the snapshot and the journal describe, with its index of
/// published ports. Changed only by [`State::apply`] (through [`StateStore::commit`]), so the
/// index always matches the containers.
#[derive(Debug, Clone, Default)]
pub struct State {
    pub networks: BTreeMap<String, NetworkSpec>,
    pub containers: BTreeMap<String, ContainerSpec>,
    ports: PublishedPorts,
}

impl PartialEq for State {
    fn eq(&self, other: &Self) -> bool {
        // The index is derived from the containers.
        self.networks == other.networks && self.containers == other.containers
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
    /// The IPv6 side of a dual-stack network; none (IPv4 only) in the state of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<NetworkV6>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Pending>,
}

/// A network's IPv6 subnet and gateway (on the host's `lo`, as the IPv4 gateway).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NetworkV6 {
    pub subnet: Ipv6Net,
    pub gateway: Ipv6Addr,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    /// Also the name of its network namespace (/run/netns/NAME).
    pub name: String,
    pub network: String,
    pub ip: Ipv4Addr,
    /// Its IPv6 address, on a dual-stack network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
    pub mac: [u8; 6],
    /// The host-side veth end, where from_endpoint is attached.
    pub host_interface: String,
    /// Slot of the container's traffic counters in ENDPOINT_STATS.
    #[serde(default)]
    pub stats_slot: u32,
    /// Ports published on the host (`--publish`).
    #[serde(default)]
    pub publish: Vec<crate::host::publish::PortMapping>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Pending>,
    /// Set for a namespace someone else made (a container engine's), attached by path; then
    /// `name` is `CONTAINER_ID/IFNAME` and bpfnet never creates or deletes the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attached: Option<Attached>,
    /// Set for an endpoint whose container end an engine moves into its container and
    /// configures itself (Docker's remote network driver, `crate::docker`): bpfnet makes the
    /// veth pair in the host namespace, keeps the host end and hands the other over; it never
    /// enters the container's namespace. Then `name` is `ENGINE:ENDPOINT_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handed_over: Option<HandedOver>,
}

/// The engine that takes an endpoint's container end (see [`ContainerSpec::handed_over`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HandedOver {
    /// Which engine: `docker`.
    pub engine: String,
    /// The engine's id of the endpoint.
    pub endpoint_id: String,
}

/// A namespace that a container engine made, attached to a network by bpfnet
/// (`host::attachment`): identified by the engine's container id and the interface name.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Attached {
    /// The path it was given by (`/proc/PID/ns/net`, `/run/netns/cni-...`).
    pub netns: PathBuf,
    /// The namespace behind that path when it was attached. When the path is gone or names
    /// another namespace (a reused PID), the engine removed it: reconcile cleans up.
    pub identity: crate::sys::netns::Identity,
    pub container_id: String,
    pub ifname: String,
}

impl ContainerSpec {
    /// Whether bpfnet made its namespace (named after it), rather than an engine.
    pub fn in_own_netns(&self) -> bool {
        self.attached.is_none() && self.handed_over.is_none()
    }

    /// Its network namespace: the one bpfnet named after it, or the engine's.
    pub fn netns(&self) -> crate::sys::netns::Netns {
        match &self.attached {
            None => crate::sys::netns::Netns::Named(self.name.clone()),
            Some(attached) => crate::sys::netns::Netns::Path(attached.netns.clone()),
        }
    }

    /// Its interface inside the namespace.
    pub fn ifname(&self) -> &str {
        match &self.attached {
            None => crate::host::container::CONTAINER_IFNAME,
            Some(attached) => &attached.ifname,
        }
    }
}

/// One change of the state: a line of the journal. Each is checked against the state before
/// it is written, so a journal replays without error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Change {
    AddNetwork(NetworkSpec),
    SetNetworkPending { name: String, pending: Option<Pending> },
    RemoveNetwork { name: String },
    AddContainer(ContainerSpec),
    SetContainerPending { name: String, pending: Option<Pending> },
    RemoveContainer { name: String },
    Publish { container: String, ports: Vec<PortMapping> },
    Unpublish { container: String, ports: Vec<PortMapping> },
}

impl Change {
    /// Whether the change begins an operation whose other records follow (a create or a
    /// removal marked pending, a publish) rather than ending one.
    fn begins_operation(&self) -> bool {
        match self {
            Change::AddNetwork(_) | Change::AddContainer(_) | Change::Publish { .. } | Change::Unpublish { .. } => true,
            Change::SetNetworkPending { pending, .. } | Change::SetContainerPending { pending, .. } => {
                pending.is_some()
            }
            Change::RemoveNetwork { .. } | Change::RemoveContainer { .. } => false,
        }
    }
}

impl State {
    pub fn network(&self, name: &str) -> Result<&NetworkSpec> {
        self.networks
            .get(name)
            .with_context(|| format!("no network named {name:?}; `bpfnet network ls` lists the networks"))
    }

    pub fn container(&self, name: &str) -> Result<&ContainerSpec> {
        self.containers
            .get(name)
            .with_context(|| format!("no container named {name:?}; `bpfnet container ls` lists the containers"))
    }

    pub fn containers_of<'a>(&'a self, network: &'a str) -> impl Iterator<Item = &'a ContainerSpec> + 'a {
        self.containers.values().filter(move |c| c.network == network)
    }

    /// Who publishes which port on this host.
    pub fn published(&self) -> &PublishedPorts {
        &self.ports
    }

    /// Fails, saying why, if `change` does not fit this state. Costs what the change's own
    /// content does (one index lookup per port), not what the state holds.
    pub fn check(&self, change: &Change) -> Result<()> {
        match change {
            Change::AddNetwork(spec) => {
                if self.networks.contains_key(&spec.name) {
                    bail!("a network named {:?} already exists; choose another name or remove it first", spec.name);
                }
            }
            Change::SetNetworkPending { name, .. } | Change::RemoveNetwork { name } => {
                self.network(name)?;
            }
            Change::AddContainer(spec) => {
                if self.containers.contains_key(&spec.name) {
                    bail!("a container named {:?} already exists; choose another name or remove it first", spec.name);
                }
                self.network(&spec.network)?;
                self.ports.check_free(&spec.publish)?;
            }
            Change::SetContainerPending { name, .. } | Change::RemoveContainer { name } => {
                self.container(name)?;
            }
            Change::Publish { container, ports } => {
                self.container(container)?;
                self.ports.check_free(ports)?;
            }
            Change::Unpublish { container, ports } => {
                let spec = self.container(container)?;
                if let Some(missing) = ports.iter().find(|m| !self.ports.publishes(container, m)) {
                    bail!(
                        "container {container:?} does not publish {missing}; it publishes: {}",
                        some_ports(&spec.publish)
                    );
                }
            }
        }
        Ok(())
    }

    /// Applies a change that passed [`State::check`].
    fn apply_checked(&mut self, change: Change) {
        match change {
            Change::AddNetwork(spec) => {
                self.networks.insert(spec.name.clone(), spec);
            }
            Change::SetNetworkPending { name, pending } => {
                self.networks.get_mut(&name).expect("checked").pending = pending;
            }
            Change::RemoveNetwork { name } => {
                self.networks.remove(&name);
            }
            Change::AddContainer(spec) => {
                self.ports.add(&spec.name, &spec.publish);
                self.containers.insert(spec.name.clone(), spec);
            }
            Change::SetContainerPending { name, pending } => {
                self.containers.get_mut(&name).expect("checked").pending = pending;
            }
            Change::RemoveContainer { name } => {
                let spec = self.containers.remove(&name).expect("checked");
                self.ports.remove(&name, &spec.publish);
            }
            Change::Publish { container, ports } => {
                self.ports.add(&container, &ports);
                self.containers.get_mut(&container).expect("checked").publish.extend(ports);
            }
            Change::Unpublish { container, ports } => {
                let gone: HashSet<PortMapping> = ports.into_iter().collect();
                self.ports.remove(&container, &gone.iter().copied().collect::<Vec<_>>());
                // The container's own list (in publishing order): one pass over it.
                self.containers.get_mut(&container).expect("checked").publish.retain(|m| !gone.contains(m));
            }
        }
    }

    /// Checks and applies a change.
    pub fn apply(&mut self, change: Change) -> Result<()> {
        self.check(&change)?;
        self.apply_checked(change);
        Ok(())
    }

    fn from_maps(networks: BTreeMap<String, NetworkSpec>, containers: BTreeMap<String, ContainerSpec>) -> Result<Self> {
        let mut state = State { networks, ..State::default() };
        for spec in containers.into_values() {
            state.apply(Change::AddContainer(spec)).context("the saved containers are inconsistent")?;
        }
        Ok(state)
    }
}

/// A few of `ports`, for a message.
fn some_ports(ports: &[PortMapping]) -> String {
    const SHOWN: usize = 5;
    if ports.is_empty() {
        return "nothing".to_owned();
    }
    let shown: Vec<String> = ports.iter().take(SHOWN).map(ToString::to_string).collect();
    match ports.len().checked_sub(SHOWN) {
        Some(more) if more > 0 => format!("{} and {more} more (`bpfnet container ls` lists them)", shown.join(", ")),
        _ => shown.join(", "),
    }
}

/// What `state.json` holds (version 1 had no generation: it reads as generation 0).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Snapshot {
    #[allow(dead_code)] // read first, through `Versioned`
    version: u32,
    #[serde(default)]
    generation: u64,
    #[serde(default)]
    networks: BTreeMap<String, NetworkSpec>,
    #[serde(default)]
    containers: BTreeMap<String, ContainerSpec>,
}

/// [`Snapshot`], written from the state in place.
#[derive(Serialize)]
struct SnapshotRef<'a> {
    version: u32,
    generation: u64,
    networks: &'a BTreeMap<String, NetworkSpec>,
    containers: &'a BTreeMap<String, ContainerSpec>,
}

/// Only the version, read first so that an unknown version is refused as such.
#[derive(Deserialize)]
struct Versioned {
    version: u32,
}

/// A journal line: the CRC-32 of the change's JSON (8 hex digits), a space, the JSON, a newline.
fn encode_record(change: &Change) -> Vec<u8> {
    let json = serde_json::to_vec(change).expect("state changes always serialize");
    let mut line = format!("{:08x} ", crc32fast::hash(&json)).into_bytes();
    line.extend_from_slice(&json);
    line.push(b'\n');
    line
}

/// The change of a journal line (without its newline), or why it is not one.
fn decode_record(record: &[u8]) -> Result<Change, String> {
    let (stored, json) = match record.split_first_chunk::<9>() {
        Some((head, json)) if head[8] == b' ' => (&head[..8], json),
        _ => return Err("no checksum".into()),
    };
    let stored = std::str::from_utf8(stored).ok().and_then(|hex| u32::from_str_radix(hex, 16).ok());
    let computed = crc32fast::hash(json);
    match stored {
        Some(stored) if stored == computed => serde_json::from_slice(json).map_err(|e| e.to_string()),
        Some(stored) => Err(format!("checksum {stored:08x} stored, {computed:08x} computed")),
        None => Err("no checksum".into()),
    }
}

/// The state directory, locked for as long as this value lives, and the state it holds.
pub struct StateStore {
    dir: PathBuf,
    _lock: Flock<File>,
    state: State,
    /// The snapshot's generation; its journal is `journal.<generation>`.
    generation: u64,
    journal: Option<File>,
    journal_bytes: u64,
    /// Where the journal's allocated space ends (JOURNAL_RESERVE).
    journal_allocated: u64,
    snapshot_bytes: u64,
    /// [`MIN_JOURNAL_BYTES_BEFORE_SNAPSHOT`], smaller in tests.
    min_journal_bytes: u64,
}

impl StateStore {
    /// Creates the directory if needed, takes its lock (refused when another process, an
    /// agent, holds it), reads the snapshot and replays its journal, then folds them into a
    /// new snapshot. An unreadable or unknown-version state is refused with nothing written.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating state directory {}", dir.display()))?;
        let lock_path = dir.join(LOCK_FILE);
        let file = match OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path) {
            Ok(file) => file,
            Err(e) if e.raw_os_error() == Some(libc::EROFS) => bail!(
                "the state directory {} is on a read-only filesystem: bpfnet writes its state there; \
                 remount it read-write or give --state-dir (BPFNET_STATE_DIR) a writable directory",
                dir.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("opening {}", lock_path.display())),
        };
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => bail!(
                "another bpfnet agent is running with the state directory {}; stop it first, or \
                 give this one its own --state-dir",
                dir.display()
            ),
            Err((_, errno)) => return Err(errno).with_context(|| format!("locking {}", lock_path.display())),
        };
        let mut store = Self {
            dir: dir.to_owned(),
            _lock: lock,
            state: State::default(),
            generation: 0,
            journal: None,
            journal_bytes: 0,
            journal_allocated: 0,
            snapshot_bytes: 0,
            min_journal_bytes: MIN_JOURNAL_BYTES_BEFORE_SNAPSHOT,
        };
        let (state, generation) = store.load()?;
        store.state = state;
        store.generation = generation;
        store.snapshot()?;
        Ok(store)
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    fn snapshot_path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    fn journal_path(&self, generation: u64) -> PathBuf {
        self.dir.join(format!("{JOURNAL_PREFIX}{generation}"))
    }

    /// The saved snapshot with its journal replayed, and the snapshot's generation; an empty
    /// state when nothing was saved yet.
    fn load(&self) -> Result<(State, u64)> {
        let path = self.snapshot_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((State::default(), 0)),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let invalid = || {
            format!(
                "the state file {} is not valid bpfnet state; restore it from a backup or \
                 move it away (the datapath keeps running without it)",
                path.display()
            )
        };
        let version = serde_json::from_str::<Versioned>(&text).with_context(invalid)?.version;
        if !(1..=STATE_VERSION).contains(&version) {
            bail!(
                "the state file {} has version {version}, this bpfnet understands versions 1 to {STATE_VERSION}; \
                 use the bpfnet release that wrote it",
                path.display(),
            );
        }
        let snapshot: Snapshot = serde_json::from_str(&text).with_context(invalid)?;
        let mut state = State::from_maps(snapshot.networks, snapshot.containers).with_context(invalid)?;
        if version >= UNCHECKED_JOURNAL_VERSION {
            self.replay(&mut state, snapshot.generation, version > UNCHECKED_JOURNAL_VERSION)?;
        }
        Ok((state, snapshot.generation))
    }

    /// Applies the records of `journal.<generation>` (`checksummed`: as this version writes
    /// them), if there is one. The last line may have been torn by a crash while it was
    /// written (never answered): it is dropped. Any other bad line is corruption, refused.
    fn replay(&self, state: &mut State, generation: u64, checksummed: bool) -> Result<()> {
        let path = self.journal_path(generation);
        let text = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let lines: Vec<&[u8]> = text.split_inclusive(|b| *b == b'\n').collect();
        for (i, line) in lines.iter().enumerate() {
            let last = i + 1 == lines.len();
            let record = line.strip_suffix(b"\n").ok_or("cut off before its end".to_owned()).and_then(|record| {
                if checksummed {
                    decode_record(record)
                } else {
                    serde_json::from_slice::<Change>(record).map_err(|e| e.to_string())
                }
            });
            match record {
                Ok(change) => state.apply(change).with_context(|| {
                    format!(
                        "record {} of the state journal {} does not fit the state; restore the state \
                         directory from a backup",
                        i + 1,
                        path.display()
                    )
                })?,
                Err(why) if last => {
                    tracing::warn!(
                        "dropping the last record of {} ({why}): torn by a crash while it was written, never answered",
                        path.display()
                    );
                }
                Err(why) => bail!(
                    "record {} of {} lines of the state journal {} is corrupt ({why}); the datapath keeps \
                     forwarding: restore the state directory from a backup, or move the journal away to \
                     start from the snapshot (the changes after it are then lost)",
                    i + 1,
                    lines.len(),
                    path.display()
                ),
            }
        }
        Ok(())
    }

    /// Checks `change` against the state, makes it durable (one journal record, fdatasync'ed),
    /// then applies it. On error nothing changed.
    pub fn commit(&mut self, change: Change) -> Result<()> {
        self.state.check(&change)?;
        if self.journal.is_none() {
            // A write failed earlier: that journal may hold a partial record; start a new one.
            self.snapshot()?;
        }
        let line = encode_record(&change);
        self.allocate(line.len() as u64, change.begins_operation())?;
        let journal = self.journal.as_mut().expect("opened by snapshot()");
        if let Err(e) = journal.write_all(&line).and_then(|()| journal.sync_data()) {
            // Best effort: cut the partial record; the next change starts a new generation
            // anyway, which abandons this journal.
            let _ = journal.set_len(self.journal_bytes);
            self.journal = None;
            return Err(e).with_context(|| format!("writing to {}", self.journal_path(self.generation).display()));
        }
        self.journal_bytes += line.len() as u64;
        self.state.apply_checked(change);
        if self.journal_bytes > self.snapshot_bytes.max(self.min_journal_bytes) {
            if let Err(e) = self.snapshot() {
                // The change is durable in the journal; the fold is retried with the next one.
                tracing::warn!("folding the state journal into a new snapshot: {e:#}");
            }
        }
        Ok(())
    }

    /// Makes sure the disk holds a record of `len` bytes (and, for one that begins an
    /// operation, OPERATION_HEADROOM after it), allocating JOURNAL_RESERVE more when short.
    /// A record that ends an operation is written into what is allocated even when more
    /// cannot be.
    fn allocate(&mut self, len: u64, begins_operation: bool) -> Result<()> {
        let fits = |extra: u64| self.journal_bytes + len + extra <= self.journal_allocated;
        if fits(OPERATION_HEADROOM) {
            return Ok(());
        }
        let journal = self.journal.as_ref().expect("opened by snapshot()");
        let length = (len + OPERATION_HEADROOM).max(JOURNAL_RESERVE);
        let flags = nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE;
        match nix::fcntl::fallocate(journal, flags, self.journal_bytes as i64, length as i64) {
            Ok(()) => {
                self.journal_allocated = self.journal_bytes + length;
                Ok(())
            }
            Err(_) if !begins_operation && fits(0) => Ok(()),
            Err(errno) => Err(errno).with_context(|| {
                format!(
                    "making room in the state journal {} ({} bytes); nothing was changed: free space on \
                     the state directory's filesystem",
                    self.journal_path(self.generation).display(),
                    length
                )
            }),
        }
    }

    /// Writes the state as the snapshot of the next generation, with an empty journal, and
    /// removes the journals of other generations.
    fn snapshot(&mut self) -> Result<()> {
        let generation = self.generation + 1;
        let text = serde_json::to_string_pretty(&SnapshotRef {
            version: STATE_VERSION,
            generation,
            networks: &self.state.networks,
            containers: &self.state.containers,
        })?;
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let mut file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        let journal_path = self.journal_path(generation);
        let journal = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&journal_path)
            .with_context(|| format!("creating {}", journal_path.display()))?;
        let path = self.snapshot_path();
        std::fs::rename(&tmp, &path).with_context(|| format!("replacing {} with {}", path.display(), tmp.display()))?;
        // The new names (snapshot and journal) are durable before any record is answered.
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .with_context(|| format!("syncing the state directory {}", self.dir.display()))?;
        self.generation = generation;
        self.journal = Some(journal);
        self.journal_bytes = 0;
        self.journal_allocated = 0;
        self.snapshot_bytes = text.len() as u64;
        self.remove_stale_journals()
    }

    fn remove_stale_journals(&self) -> Result<()> {
        let current = format!("{JOURNAL_PREFIX}{}", self.generation);
        for entry in std::fs::read_dir(&self.dir).with_context(|| format!("listing {}", self.dir.display()))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(JOURNAL_PREFIX) && name != current {
                std::fs::remove_file(entry.path()).with_context(|| format!("removing {}", entry.path().display()))?;
            }
        }
        Ok(())
    }

    /// Forgets everything (`bpfnet down`): an empty snapshot.
    pub fn clear(&mut self) -> Result<()> {
        self.state = State::default();
        self.snapshot()
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

    fn network(name: &str, id: u32) -> NetworkSpec {
        NetworkSpec {
            name: name.into(),
            id,
            subnet: format!("10.{id}.0.0/24").parse().unwrap(),
            gateway: format!("10.{id}.0.1").parse().unwrap(),
            ipv6: None,
            pending: None,
        }
    }

    fn container(name: &str, network: &str, publish: &str) -> ContainerSpec {
        ContainerSpec {
            name: name.into(),
            network: network.into(),
            ip: "10.1.0.2".parse().unwrap(),
            ip6: None,
            mac: [2, 0x42, 10, 1, 0, 2],
            host_interface: format!("bn{name}"),
            stats_slot: 0,
            publish: crate::host::publish::parse(publish).unwrap(),
            pending: None,
            attached: None,
            handed_over: None,
        }
    }

    fn ports(spec: &str) -> Vec<PortMapping> {
        crate::host::publish::parse(spec).unwrap()
    }

    #[test]
    fn round_trip_and_refusals() {
        let dir = temp_dir("rt");
        let mut store = StateStore::open(&dir).unwrap();
        assert_eq!(*store.state(), State::default());
        store.commit(Change::AddNetwork(network("n", 1))).unwrap();
        let state = store.state().clone();
        drop(store);
        let store = StateStore::open(&dir).unwrap();
        assert_eq!(*store.state(), state);
        drop(store);

        std::fs::write(dir.join(STATE_FILE), "{ not json").unwrap();
        let err = format!("{:#}", StateStore::open(&dir).err().unwrap());
        assert!(err.contains("not valid bpfnet state"), "{err}");

        std::fs::write(dir.join(STATE_FILE), r#"{"version": 99}"#).unwrap();
        let err = format!("{:#}", StateStore::open(&dir).err().unwrap());
        assert!(err.contains("version 99"), "{err}");

        std::fs::remove_file(dir.join(STATE_FILE)).unwrap();
        let store = StateStore::open(&dir).unwrap();
        let second = StateStore::open(&dir).err().expect("a second holder is refused");
        assert!(second.to_string().contains("another bpfnet agent"), "{second}");
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn changes_are_journaled_replayed_and_folded() {
        let dir = temp_dir("journal");
        let mut store = StateStore::open(&dir).unwrap();
        let generation = store.generation;
        store.commit(Change::AddNetwork(network("n", 1))).unwrap();
        store.commit(Change::AddContainer(container("a", "n", "8000-8099:8000-8099"))).unwrap();
        store.commit(Change::AddContainer(container("b", "n", "9000:90/udp"))).unwrap();
        store.commit(Change::Publish { container: "a".into(), ports: ports("7000:70") }).unwrap();
        store.commit(Change::Unpublish { container: "a".into(), ports: ports("8000-8009:8000-8009") }).unwrap();
        store.commit(Change::SetContainerPending { name: "b".into(), pending: Some(Pending::Remove) }).unwrap();
        store.commit(Change::RemoveContainer { name: "b".into() }).unwrap();
        assert_eq!(store.generation, generation, "no snapshot for small changes");
        assert_eq!(store.state().published().count(), 91);
        assert_eq!(store.state().container("a").unwrap().publish.last().unwrap().host_port, 7000);
        // Refused changes leave no record and no change.
        let before = std::fs::read(dir.join(format!("journal.{generation}"))).unwrap();
        let twice: Vec<PortMapping> = ports("3:3").into_iter().chain(ports("3:4")).collect();
        for refused in [
            Change::Publish { container: "a".into(), ports: ports("8050:1") },
            Change::Publish { container: "a".into(), ports: twice },
            Change::Unpublish { container: "a".into(), ports: ports("8000:8000") },
            Change::Publish { container: "nope".into(), ports: ports("2:2") },
            Change::AddNetwork(network("n", 2)),
            Change::RemoveContainer { name: "b".into() },
        ] {
            assert!(store.commit(refused.clone()).is_err(), "{refused:?}");
        }
        assert_eq!(std::fs::read(dir.join(format!("journal.{generation}"))).unwrap(), before);
        assert_eq!(store.state().published().count(), 91);
        store.commit(Change::Publish { container: "a".into(), ports: ports("1:1") }).unwrap();
        store.commit(Change::Unpublish { container: "a".into(), ports: ports("1:1") }).unwrap();
        let expected = store.state().clone();
        assert!(std::fs::read(dir.join(format!("journal.{generation}"))).unwrap().len() > before.len());
        drop(store);

        // Replayed on open, then folded into the next generation's snapshot.
        let store = StateStore::open(&dir).unwrap();
        assert_eq!(*store.state(), expected);
        assert_eq!(store.state().published().count(), 91);
        assert!(store.state().published().publishes("a", &ports("7000:70")[0]));
        assert_eq!(store.generation, generation + 1);
        let files: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(!files.contains(&format!("journal.{generation}")), "stale journal removed: {files:?}");
        assert_eq!(std::fs::read(dir.join(format!("journal.{}", generation + 1))).unwrap(), b"");
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_journal_larger_than_the_snapshot_is_folded_into_the_next_one() {
        let dir = temp_dir("grow");
        let mut store = StateStore::open(&dir).unwrap();
        store.min_journal_bytes = 0;
        store.commit(Change::AddNetwork(network("n", 1))).unwrap();
        store.commit(Change::AddContainer(container("a", "n", "8000-8019:8000-8019"))).unwrap();
        let generation = store.generation;
        let mut port = 9000;
        while store.generation == generation {
            store.commit(Change::Publish { container: "a".into(), ports: ports(&format!("{port}:80")) }).unwrap();
            port += 1;
            assert!(port < 9100, "never folded");
        }
        assert!(store.journal_bytes == 0 && store.snapshot_bytes > 0);
        assert!(!dir.join(format!("journal.{generation}")).exists());
        let expected = store.state().clone();
        drop(store);
        assert_eq!(*StateStore::open(&dir).unwrap().state(), expected);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_cut_off_last_record_is_dropped_and_a_bad_one_before_it_refused() {
        let dir = temp_dir("torn");
        let mut store = StateStore::open(&dir).unwrap();
        store.commit(Change::AddNetwork(network("n", 1))).unwrap();
        store.commit(Change::AddContainer(container("a", "n", "8080:80"))).unwrap();
        let expected = store.state().clone();
        let journal = dir.join(format!("journal.{}", store.generation));
        drop(store);
        let good = std::fs::read(&journal).unwrap();
        let mut torn = good.clone();
        torn.extend_from_slice(br#"0badc0de {"publish":{"container":"a","ports":[{"host_ip":nu"#);
        std::fs::write(&journal, &torn).unwrap();
        let store = StateStore::open(&dir).unwrap();
        assert_eq!(*store.state(), expected, "the cut-off record is dropped");
        let journal = dir.join(format!("journal.{}", store.generation));
        drop(store);

        let mut corrupt = b"{\"bogus\": 1}\n".to_vec();
        corrupt.extend_from_slice(&good);
        std::fs::write(&journal, &corrupt).unwrap();
        let err = format!("{:#}", StateStore::open(&dir).err().unwrap());
        assert!(err.contains("record 1 of 3 lines of the state journal") && err.contains("no checksum"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A bit flipped in a record (a host port 8080 read as 8081: still valid JSON, still a
    /// change that fits) is caught by its checksum; in the last record, whose write a power
    /// loss may have left half done, it is taken for a torn write and dropped.
    #[test]
    fn a_record_that_fails_its_checksum_is_refused_unless_it_is_the_last() {
        let dir = temp_dir("crc");
        let mut store = StateStore::open(&dir).unwrap();
        store.commit(Change::AddNetwork(network("n", 1))).unwrap();
        store.commit(Change::AddContainer(container("a", "n", "8080:80"))).unwrap();
        let before_last = store.state().clone();
        store.commit(Change::AddContainer(container("b", "n", "9090:80"))).unwrap();
        let journal = dir.join(format!("journal.{}", store.generation));
        drop(store);
        let good = std::fs::read_to_string(&journal).unwrap();
        let lines: Vec<&str> = good.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines.iter().all(|l| l.len() > 9 && l.as_bytes()[8] == b' '), "{good}");

        let flipped = good.replacen("8080", "8081", 1);
        std::fs::write(&journal, &flipped).unwrap();
        let err = format!("{:#}", StateStore::open(&dir).err().unwrap());
        assert!(
            err.contains("record 2 of 3 lines of the state journal")
                && err.contains(&journal.display().to_string())
                && err.contains("stored")
                && err.contains("computed")
                && err.contains("the datapath keeps forwarding"),
            "{err}"
        );

        let torn = good.replacen("9090", "9091", 1);
        std::fs::write(&journal, &torn).unwrap();
        let store = StateStore::open(&dir).unwrap();
        assert_eq!(*store.state(), before_last, "the torn last record is dropped, the rest replayed");
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A state directory of version 2 (journal records without checksums) is read, and
    /// folded into this version's.
    #[test]
    fn a_version_2_journal_is_replayed() {
        let dir = temp_dir("v2");
        std::fs::create_dir_all(&dir).unwrap();
        let snapshot = serde_json::json!({"version": 2, "generation": 4, "networks": {}, "containers": {}});
        std::fs::write(dir.join(STATE_FILE), snapshot.to_string()).unwrap();
        let mut journal = serde_json::to_vec(&Change::AddNetwork(network("n", 1))).unwrap();
        journal.push(b'\n');
        journal.extend_from_slice(&serde_json::to_vec(&Change::AddContainer(container("a", "n", "8080:80"))).unwrap());
        journal.push(b'\n');
        std::fs::write(dir.join("journal.4"), &journal).unwrap();
        let store = StateStore::open(&dir).unwrap();
        assert!(store.state().containers.contains_key("a"));
        let text = std::fs::read_to_string(dir.join(STATE_FILE)).unwrap();
        assert_eq!(serde_json::from_str::<Versioned>(&text).unwrap().version, STATE_VERSION);
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_crash_between_snapshot_and_journal_removal_converges() {
        let dir = temp_dir("fold");
        let mut store = StateStore::open(&dir).unwrap();
        store.commit(Change::AddNetwork(network("n", 1))).unwrap();
        let old = dir.join(format!("journal.{}", store.generation));
        let kept = std::fs::read(&old).unwrap();
        store.snapshot().unwrap();
        let expected = store.state().clone();
        drop(store);
        // As if the old journal's removal had not happened: its records are in the snapshot
        // already and must not be applied twice (AddNetwork twice would be refused).
        std::fs::write(&old, &kept).unwrap();
        let store = StateStore::open(&dir).unwrap();
        assert_eq!(*store.state(), expected);
        assert!(!old.exists());
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn version_1_is_migrated() {
        let dir = temp_dir("v1");
        std::fs::create_dir_all(&dir).unwrap();
        let v1 = r#"{
  "version": 1,
  "networks": { "n": { "name": "n", "id": 1, "subnet": "10.1.0.0/24", "gateway": "10.1.0.1" } },
  "containers": { "a": { "name": "a", "network": "n", "ip": "10.1.0.2", "mac": [2, 66, 10, 1, 0, 2],
                         "host_interface": "bna", "stats_slot": 0,
                         "publish": [{ "host_ip": null, "host_port": 8080, "container_port": 80, "protocol": "tcp" }],
                         "pending": "create" } }
}"#;
        std::fs::write(dir.join(STATE_FILE), v1).unwrap();
        let store = StateStore::open(&dir).unwrap();
        let a = store.state().container("a").unwrap();
        assert_eq!((a.pending, a.publish.len()), (Some(Pending::Create), 1));
        assert!(store.state().published().publishes("a", &ports("8080:80")[0]));
        let saved: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(STATE_FILE)).unwrap()).unwrap();
        assert_eq!(
            (saved["version"].as_u64(), saved["generation"].as_u64()),
            (Some(u64::from(STATE_VERSION)), Some(1))
        );
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A dual-stack network and container survive the journal and the snapshot; the IPv4-only
    /// ones of older versions are written as before (no `ipv6`/`ip6` key), so an older agent
    /// still reads a state with no dual-stack network in it.
    #[test]
    fn dual_stack_round_trips_and_ipv4_only_stays_as_it_was() {
        let dir = temp_dir("dual");
        let mut store = StateStore::open(&dir).unwrap();
        let v6 = NetworkV6 { subnet: "fd00:1::/64".parse().unwrap(), gateway: "fd00:1::1".parse().unwrap() };
        store.commit(Change::AddNetwork(NetworkSpec { ipv6: Some(v6), ..network("n", 1) })).unwrap();
        store.commit(Change::AddNetwork(network("old", 2))).unwrap();
        let dual = ContainerSpec { ip6: Some("fd00:1::2".parse().unwrap()), ..container("a", "n", "8080:80") };
        store.commit(Change::AddContainer(dual)).unwrap();
        let expected = store.state().clone();
        drop(store);
        let store = StateStore::open(&dir).unwrap();
        assert_eq!(*store.state(), expected, "replayed from the journal");
        drop(store);
        let store = StateStore::open(&dir).unwrap();
        assert_eq!(*store.state(), expected, "read from the snapshot");
        assert_eq!(store.state().container("a").unwrap().ip6, Some("fd00:1::2".parse().unwrap()));
        let saved: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(STATE_FILE)).unwrap()).unwrap();
        assert!(saved["networks"]["old"].get("ipv6").is_none(), "{saved}");
        assert_eq!(saved["networks"]["n"]["ipv6"]["subnet"], "fd00:1::/64");
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
