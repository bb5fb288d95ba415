//! The sandbox: throwaway network namespaces that play a host and the outside world, a
//! `bpfnet agent` of their own, and the guard that removes everything again. The black-box
//! tests and `cargo xtask demo`/`bench` all use it.
//!
//! Nothing here touches the root network namespace: a namespace `{prefix}-host` plays the
//! host (the agent is told so), [`Sandbox::add_uplink`] gives it an uplink veth to a namespace
//! `{prefix}-out` that plays the outside world, every step runs inside those namespaces
//! (`ip -n NS`), and every name carries a per-run prefix, so cleanup removes only what this
//! sandbox made. Dropping the sandbox cleans up, also when a test panicked or a step failed;
//! [`Sandbox::teardown`] cleans up and also reports what `bpfnet down` left behind.

use std::cell::{Cell, RefCell};
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::process::{announce, display, wait_bounded};

/// The uplink's name in the host namespace, and its peer's in the outside namespace.
pub const UPLINK: &str = "up0";
pub const UPLINK_PEER: &str = "up0o";
/// Addresses of the uplink between the sandbox host and its outside namespace (/24).
pub const UPLINK_HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
pub const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);
/// The same link's IPv6 addresses (/64, documentation prefix), once
/// [`Sandbox::add_uplink_ipv6`] gave it them.
pub const UPLINK_HOST_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x250, 0, 0, 0, 0, 1);
pub const OUTSIDE_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x250, 0, 0, 0, 0, 2);
/// The link between the outside namespace and one behind it ([`Sandbox::add_behind_outside`]):
/// the outside's address on it, and the one behind's (/64).
pub const ROUTER_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x251, 0, 0, 0, 0, 1);
pub const BEHIND_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x251, 0, 0, 0, 0, 2);

const NETNS_DIR: &str = "/run/netns";
const BPFFS: &str = "/sys/fs/bpf";
/// Limit for one `ip` command or `bpfnet down`: a hung one must not keep the rest from running.
const STEP_LIMIT: Duration = Duration::from_secs(30);
/// How long a starting agent may take to serve (it loads and verifies the programs).
const AGENT_START_LIMIT: Duration = Duration::from_secs(30);
/// How long a signalled agent may take to exit before it is killed.
const AGENT_STOP_LIMIT: Duration = Duration::from_secs(10);

/// Sandboxes made by this process so far: part of the prefix, so that the tests' sandboxes,
/// made side by side in one process, never share a name.
static SANDBOXES: AtomicU32 = AtomicU32::new(0);

/// Where the output of the sandbox's own commands and of its agent goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Kept: a failed command's stderr goes into its error, the agent's log into a file
    /// ([`Sandbox::agent_log_text`], printed when a test panics). For the tests.
    Captured,
    /// On the terminal: each command is printed as `$ cmd` before it runs, and the agent logs
    /// to stderr. For `cargo xtask demo` and `bench`.
    Terminal,
}

/// The host's uplink made by [`Sandbox::add_uplink`]: a veth `name` in the host namespace with
/// `host_ip`/24, its peer [`UPLINK_PEER`] in `outside_netns` with `outside_ip`/24, and the
/// host's default route via `outside_ip`, as a host's first NIC and its router would be.
#[derive(Clone, Debug)]
pub struct Uplink {
    pub name: &'static str,
    pub host_ip: Ipv4Addr,
    pub outside_netns: String,
    pub outside_ip: Ipv4Addr,
}

/// The Linux bridge of an [`Underlay`].
pub const UNDERLAY_BRIDGE: &str = "br0";

/// A network that several sandboxes share, as the nodes of a cluster share theirs: a
/// namespace holding a Linux bridge, made by one sandbox ([`Sandbox::add_underlay`], which
/// also removes it), that the others' uplinks plug into ([`Sandbox::attach_uplink`]) and other
/// namespaces of the owner too ([`Sandbox::add_underlay_member`], e.g. the outside world).
/// Addresses on it are the caller's, all in one /`prefix_len` subnet.
#[derive(Clone, Debug)]
pub struct Underlay {
    pub netns: String,
    pub prefix_len: u8,
}

impl Underlay {
    /// The bridge port of whatever has `ip` on the underlay (unique while addresses are).
    fn port_name(ip: Ipv4Addr) -> String {
        let [_, _, c, d] = ip.octets();
        format!("p{c}x{d}")
    }
}

/// Handle for a process started with [`Sandbox::spawn`].
#[derive(Clone, Copy, Debug)]
pub struct BackgroundId(usize);

/// A background process (a server in a container) and its stdout, when piped.
struct Background {
    label: String,
    child: Child,
    stdout: Option<BufReader<ChildStdout>>,
}

pub struct Sandbox {
    prefix: String,
    output: Output,
    bpfnet_bin: PathBuf,
    host_netns: String,
    outside_netns: String,
    /// Namespaces the sandbox made itself (the host, the outside): the others of its prefix
    /// are bpfnet's (containers), which `bpfnet down` must remove.
    own_netns: Vec<String>,
    state_dir: PathBuf,
    bpffs_dir: PathBuf,
    /// Scripts and copies the caller writes, and the agent's log when captured.
    scratch_dir: PathBuf,
    socket: PathBuf,
    /// Settings of the agent (BPFNET_UPLINK, BPFNET_CT_SIZE, ...), from its next start on.
    agent_env: Vec<(String, String)>,
    /// The sandbox's agent, while it runs; the CLI talks to it on `socket`.
    agent: RefCell<Option<Child>>,
    /// Whether an agent ever served: then cleanup needs `bpfnet down`.
    agent_served: Cell<bool>,
    background: Vec<Option<Background>>,
    /// Threads that serve the sandbox (the tests' echo servers): told to stop, then joined.
    threads: Vec<JoinHandle<()>>,
    stop_threads: Arc<AtomicBool>,
    /// A cgroup v2 directory of the sandbox's own, made by [`Sandbox::cgroup`].
    cgroup: Option<PathBuf>,
    torn_down: bool,
}

impl Sandbox {
    /// Creates the host namespace `{stem}{pid}x{n}-host` (lo up) and a scratch folder. Needs
    /// root; `bpfnet_bin` is the binary whose agent and CLI the sandbox runs.
    pub fn create(stem: &str, bpfnet_bin: PathBuf, output: Output) -> Result<Sandbox> {
        if !nix::unistd::Uid::effective().is_root() {
            bail!("a sandbox needs root (network namespaces, bpffs): run as root");
        }
        let n = SANDBOXES.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("{stem}{:x}x{n}", std::process::id());
        let host = format!("{prefix}-host");
        // Checked before the guard exists, whose cleanup would delete the other run's namespace.
        if Path::new(NETNS_DIR).join(&host).exists() {
            bail!(
                "network namespace {host} exists already: is another run using it? (if not: `ip netns delete {host}`)"
            );
        }
        let tmp = std::env::temp_dir();
        let sandbox = Sandbox {
            output,
            bpfnet_bin,
            outside_netns: format!("{prefix}-out"),
            own_netns: vec![host.clone()],
            host_netns: host,
            state_dir: tmp.join(format!("{prefix}-state")),
            bpffs_dir: Path::new(BPFFS).join(&prefix),
            scratch_dir: tmp.join(format!("{prefix}-scratch")),
            socket: tmp.join(format!("{prefix}.sock")),
            agent_env: Vec::new(),
            agent: RefCell::new(None),
            agent_served: Cell::new(false),
            background: Vec::new(),
            threads: Vec::new(),
            stop_threads: Arc::new(AtomicBool::new(false)),
            cgroup: None,
            torn_down: false,
            prefix,
        };
        // From here on the guard exists: whatever follows fails, Drop cleans up.
        sandbox.step(Command::new("ip").args(["netns", "add", &sandbox.host_netns]))?;
        sandbox.ip(&sandbox.host_netns, &["link", "set", "lo", "up"])?;
        fs::create_dir_all(&sandbox.scratch_dir)
            .with_context(|| format!("creating {}", sandbox.scratch_dir.display()))?;
        Ok(sandbox)
    }

    /// The network namespaces of this sandbox's prefix that the sandbox did not make itself:
    /// bpfnet's containers (and anything bpfnet leaked).
    pub fn bpfnet_namespaces(&self) -> Vec<String> {
        namespaces_with_prefix(&format!("{}-", self.prefix))
            .into_iter()
            .filter(|n| !self.own_netns.contains(n))
            .collect()
    }

    /// The per-run prefix of every name of this sandbox.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `{prefix}-{suffix}`: every namespace and bpfnet object of this run is named so.
    pub fn name(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.prefix)
    }

    /// The namespace that plays the host.
    pub fn host_netns(&self) -> &str {
        &self.host_netns
    }

    /// The namespace that plays the outside world, once [`Sandbox::add_uplink`] made it.
    pub fn outside_netns(&self) -> &str {
        &self.outside_netns
    }

    /// The API socket of this sandbox's agent.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The agent's state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Where this sandbox's bpfnet pins its programs and maps.
    pub fn bpffs_dir(&self) -> &Path {
        &self.bpffs_dir
    }

    /// Gives the host an uplink to a new namespace `{prefix}-out`, the outside world (see
    /// [`Uplink`]), and tells the agent to use it (BPFNET_UPLINK) from its next start: make it
    /// before the agent starts, which reads the uplink's address to masquerade to.
    pub fn add_uplink(&mut self) -> Result<Uplink> {
        let uplink = Uplink {
            name: UPLINK,
            host_ip: UPLINK_HOST_IP,
            outside_netns: self.outside_netns.clone(),
            outside_ip: OUTSIDE_IP,
        };
        let (host, out) = (self.host_netns.clone(), uplink.outside_netns.as_str());
        if Path::new(NETNS_DIR).join(out).exists() {
            bail!("network namespace {out} exists already: is another run using it? (if not: `ip netns delete {out}`)");
        }
        self.step(Command::new("ip").args(["netns", "add", out]))?;
        // Counted as the sandbox's at once, so a failure below does not blame `bpfnet down`.
        self.own_netns.push(out.to_string());
        let host_cidr = format!("{}/24", uplink.host_ip);
        let out_cidr = format!("{}/24", uplink.outside_ip);
        let gateway = uplink.outside_ip.to_string();
        let steps: [(&str, &[&str]); 7] = [
            (out, &["link", "set", "lo", "up"]),
            (&host, &["link", "add", UPLINK, "type", "veth", "peer", "name", UPLINK_PEER, "netns", out]),
            (&host, &["addr", "add", &host_cidr, "dev", UPLINK]),
            (&host, &["link", "set", UPLINK, "up"]),
            (out, &["addr", "add", &out_cidr, "dev", UPLINK_PEER]),
            (out, &["link", "set", UPLINK_PEER, "up"]),
            (&host, &["route", "add", "default", "via", &gateway]),
        ];
        for (netns, args) in steps {
            self.ip(netns, args).context("building the sandbox's uplink")?;
        }
        self.set_agent_env("BPFNET_UPLINK", UPLINK);
        Ok(uplink)
    }

    /// Gives the uplink that [`Sandbox::add_uplink`] made IPv6 too: [`UPLINK_HOST_IP6`] on the
    /// host's end, [`OUTSIDE_IP6`] on the outside's (both /64, without duplicate address
    /// detection, so that they are usable at once), and the host's IPv6 default route via the
    /// outside. Made before the agent starts, its address is the IPv6 masquerade address
    /// from the start; made later, the agent's uplink follower picks it up.
    pub fn add_uplink_ipv6(&mut self) -> Result<()> {
        let (host, out) = (self.host_netns.clone(), self.outside_netns.clone());
        let host_cidr = format!("{UPLINK_HOST_IP6}/64");
        let out_cidr = format!("{OUTSIDE_IP6}/64");
        let gateway = OUTSIDE_IP6.to_string();
        let steps: [(&str, &[&str]); 3] = [
            (&out, &["-6", "addr", "add", &out_cidr, "dev", UPLINK_PEER, "nodad"]),
            (&host, &["-6", "addr", "add", &host_cidr, "dev", UPLINK, "nodad"]),
            (&host, &["-6", "route", "add", "default", "via", &gateway, "dev", UPLINK]),
        ];
        for (netns, args) in steps {
            self.ip(netns, args).context("giving the sandbox's uplink IPv6")?;
        }
        Ok(())
    }

    /// Makes a namespace `{prefix}-{suffix}` behind the outside one, as a server further away
    /// on the internet: a veth link of `mtu` bytes between them ([`ROUTER_IP6`] on the
    /// outside's end, [`BEHIND_IP6`] on its own, /64), its default route via the outside, and
    /// the outside forwarding IPv6 between that link and the uplink's. A small `mtu` makes the
    /// outside send Packet Too Big for larger packets towards it. Returns the namespace's name.
    pub fn add_behind_outside(&mut self, suffix: &str, mtu: u32) -> Result<String> {
        let (out, behind) = (self.outside_netns.clone(), self.name(suffix));
        if Path::new(NETNS_DIR).join(&behind).exists() {
            bail!("network namespace {behind} exists already: is another run using it? (if not: `ip netns delete {behind}`)");
        }
        self.step(Command::new("ip").args(["netns", "add", &behind]))?;
        self.own_netns.push(behind.clone());
        let mtu = mtu.to_string();
        let (router_cidr, behind_cidr) = (format!("{ROUTER_IP6}/64"), format!("{BEHIND_IP6}/64"));
        let router = ROUTER_IP6.to_string();
        let steps: [(&str, &[&str]); 7] = [
            (&behind, &["link", "set", "lo", "up"]),
            (
                &out,
                &[
                    "link", "add", "far0", "mtu", &mtu, "type", "veth", "peer", "name", "far0b", "mtu", &mtu, "netns",
                    &behind,
                ],
            ),
            (&out, &["-6", "addr", "add", &router_cidr, "dev", "far0", "nodad"]),
            (&out, &["link", "set", "far0", "up"]),
            (&behind, &["-6", "addr", "add", &behind_cidr, "dev", "far0b", "nodad"]),
            (&behind, &["link", "set", "far0b", "up"]),
            (&behind, &["-6", "route", "add", "default", "via", &router, "dev", "far0b"]),
        ];
        for (netns, args) in steps {
            self.ip(netns, args).context("making the namespace behind the outside")?;
        }
        // The outside namespace is the sandbox's own: a router there, never in the root one.
        self.step(Command::new("ip").args(["netns", "exec", &out, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]))
            .context("letting the outside namespace forward IPv6")?;
        Ok(behind)
    }

    /// Makes a shared underlay (see [`Underlay`]): a namespace `{prefix}-under` with a bridge.
    /// This sandbox removes it at cleanup, with every uplink still plugged into it.
    pub fn add_underlay(&mut self, prefix_len: u8) -> Result<Underlay> {
        let netns = self.add_engine_netns("under")?;
        self.ip(&netns, &["link", "add", UNDERLAY_BRIDGE, "type", "bridge"])?;
        self.ip(&netns, &["link", "set", UNDERLAY_BRIDGE, "up"])?;
        Ok(Underlay { netns, prefix_len })
    }

    /// A namespace `{prefix}-{suffix}` of this sandbox on `underlay` (the outside world, a
    /// router): its `eth0` has `ip` and is plugged into the bridge.
    pub fn add_underlay_member(&mut self, underlay: &Underlay, suffix: &str, ip: Ipv4Addr) -> Result<String> {
        let netns = self.add_engine_netns(suffix)?;
        let port = Underlay::port_name(ip);
        let cidr = format!("{ip}/{}", underlay.prefix_len);
        let under = underlay.netns.as_str();
        let steps: [(&str, &[&str]); 5] = [
            (under, &["link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &netns]),
            (under, &["link", "set", &port, "master", UNDERLAY_BRIDGE, "up"]),
            (&netns, &["addr", "add", &cidr, "dev", "eth0"]),
            (&netns, &["link", "set", "eth0", "up"]),
            (&netns, &["link", "set", "lo", "up"]),
        ];
        for (ns, args) in steps {
            self.ip(ns, args).with_context(|| format!("plugging {netns} into the underlay"))?;
        }
        Ok(netns)
    }

    /// Gives the host an uplink plugged into `underlay` (instead of an outside namespace of its
    /// own): veth [`UPLINK`] with `host_ip`, a default route via `gateway` (an address on the
    /// underlay), and tells the agent to use it (BPFNET_UPLINK). Removed with the host
    /// namespace (its bridge port with it).
    pub fn attach_uplink(&mut self, underlay: &Underlay, host_ip: Ipv4Addr, gateway: Ipv4Addr) -> Result<Uplink> {
        let host = self.host_netns.clone();
        let port = Underlay::port_name(host_ip);
        let cidr = format!("{host_ip}/{}", underlay.prefix_len);
        let gateway_text = gateway.to_string();
        let under = underlay.netns.as_str();
        let steps: [(&str, &[&str]); 5] = [
            (&host, &["link", "add", UPLINK, "type", "veth", "peer", "name", &port, "netns", under]),
            (under, &["link", "set", &port, "master", UNDERLAY_BRIDGE, "up"]),
            (&host, &["addr", "add", &cidr, "dev", UPLINK]),
            (&host, &["link", "set", UPLINK, "up"]),
            (&host, &["route", "add", "default", "via", &gateway_text]),
        ];
        for (ns, args) in steps {
            self.ip(ns, args).context("plugging the sandbox's uplink into the underlay")?;
        }
        self.set_agent_env("BPFNET_UPLINK", UPLINK);
        Ok(Uplink { name: UPLINK, host_ip, outside_netns: underlay.netns.clone(), outside_ip: gateway })
    }

    /// A route in the host namespace: `dest` (a CIDR) via `via`, e.g. another node's pod subnet
    /// via its underlay address.
    pub fn add_host_route(&self, dest: &str, via: Ipv4Addr) -> Result<()> {
        self.ip(&self.host_netns, &["route", "add", dest, "via", &via.to_string()])
    }

    /// A network namespace `{prefix}-{suffix}` (lo up) that the sandbox makes itself, as a
    /// container engine would, for bpfnet to attach (`container attach`, the CNI plugin).
    /// bpfnet must never delete it: the sandbox does, at cleanup.
    pub fn add_engine_netns(&mut self, suffix: &str) -> Result<String> {
        let name = self.name(suffix);
        if Path::new(NETNS_DIR).join(&name).exists() {
            bail!(
                "network namespace {name} exists already: is another run using it? (if not: `ip netns delete {name}`)"
            );
        }
        self.step(Command::new("ip").args(["netns", "add", &name]))?;
        self.own_netns.push(name.clone());
        self.ip(&name, &["link", "set", "lo", "up"])?;
        Ok(name)
    }

    /// Names a namespace an engine made, by a process inside it (`ip netns attach`), as
    /// `{prefix}-{suffix}`, so that `ip netns exec` reaches it (the bench runs its load
    /// generator in Docker's containers so). The sandbox removes the name at cleanup; the
    /// namespace itself goes with its container.
    pub fn attach_engine_netns(&mut self, suffix: &str, pid: u32) -> Result<String> {
        let name = self.name(suffix);
        if Path::new(NETNS_DIR).join(&name).exists() {
            bail!(
                "network namespace {name} exists already: is another run using it? (if not: `ip netns delete {name}`)"
            );
        }
        self.step(Command::new("ip").args(["netns", "attach", &name, &pid.to_string()]))?;
        self.own_netns.push(name.clone());
        Ok(name)
    }

    /// Sets a setting of the agent, as its environment variable (e.g. BPFNET_UPLINK_MODE); it
    /// takes effect when the agent next starts.
    pub fn set_agent_env(&mut self, key: &str, value: &str) {
        self.agent_env.retain(|(k, _)| k != key);
        self.agent_env.push((key.to_owned(), value.to_owned()));
    }

    /// Removes a setting of the agent (from its next start on).
    pub fn remove_agent_env(&mut self, key: &str) {
        self.agent_env.retain(|(k, _)| k != key);
    }

    /// The agent's command line for this sandbox: its host namespace, state and pin
    /// directories and socket, and the settings; as environment variables, so a caller's own
    /// `.env(..)` overrides any of them.
    pub fn agent_command(&self) -> Command {
        let mut cmd = Command::new(&self.bpfnet_bin);
        cmd.arg("agent")
            .env("BPFNET_HOST_NETNS", &self.host_netns)
            .env("BPFNET_STATE_DIR", &self.state_dir)
            .env("BPFNET_BPFFS", &self.bpffs_dir)
            .env("BPFNET_SOCKET", &self.socket)
            .envs(self.agent_env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Starts the agent unless it runs, and waits until it serves on its socket.
    pub fn start_agent(&self) -> Result<()> {
        let mut agent = self.agent.borrow_mut();
        if let Some(child) = agent.as_mut() {
            if child.try_wait().ok().flatten().is_none() {
                return Ok(());
            }
        }
        let mut cmd = self.agent_command();
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        if self.output == Output::Captured {
            let log = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.agent_log())
                .with_context(|| format!("opening the agent's log {}", self.agent_log().display()))?;
            cmd.stderr(log);
        } else {
            announce(&cmd);
        }
        let mut child = cmd.spawn().with_context(|| format!("could not start `{}`", display(&cmd)))?;
        let deadline = Instant::now() + AGENT_START_LIMIT;
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            if let Some(status) = child.try_wait().context("waiting for bpfnet agent")? {
                bail!("bpfnet agent exited ({status}) before serving: {}", self.agent_log_hint());
            }
            if Instant::now() > deadline {
                let _killed = child.kill();
                let _reaped = child.wait();
                bail!(
                    "bpfnet agent did not serve on {} within {AGENT_START_LIMIT:?}: {}",
                    self.socket.display(),
                    self.agent_log_hint()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        *agent = Some(child);
        self.agent_served.set(true);
        Ok(())
    }

    /// The agent's process id, while it runs.
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.borrow().as_ref().map(|child| child.id())
    }

    /// Whether the agent runs (started, not stopped since, and not exited).
    pub fn agent_running(&self) -> bool {
        self.agent.borrow_mut().as_mut().is_some_and(|child| child.try_wait().ok().flatten().is_none())
    }

    /// Stops the agent with `signal` (SIGTERM: a clean stop; SIGKILL: a crash); it is killed
    /// if it has not exited within 10 s. The datapath stays either way.
    pub fn stop_agent(&self, signal: Signal) {
        let agent = self.agent.borrow_mut().take();
        if let Some(mut child) = agent {
            self.say("stopping bpfnet agent");
            // It may have exited already: then kill fails and the wait reaps it.
            let _sent = kill(Pid::from_raw(child.id() as i32), signal);
            let _stopped = wait_bounded(&mut child, AGENT_STOP_LIMIT);
        }
    }

    /// Stops the agent (SIGTERM: the datapath keeps running) and starts it again, with the
    /// settings as they are now (e.g. another BPFNET_UPLINK_MODE).
    pub fn restart_agent(&self) -> Result<()> {
        self.stop_agent(Signal::SIGTERM);
        self.start_agent()
    }

    /// What the agent logged so far (captured output only; empty otherwise).
    pub fn agent_log_text(&self) -> String {
        fs::read_to_string(self.agent_log()).unwrap_or_default()
    }

    fn agent_log(&self) -> PathBuf {
        self.scratch_dir.join("agent.log")
    }

    /// Where to look for why the agent failed.
    fn agent_log_hint(&self) -> String {
        match self.output {
            Output::Captured => format!("its log:\n{}", self.agent_log_text()),
            Output::Terminal => "see its errors above".to_owned(),
        }
    }

    /// The bpfnet CLI aimed at this sandbox's agent (whether it runs or not).
    pub fn cli(&self) -> Command {
        let mut cmd = Command::new(&self.bpfnet_bin);
        // BPFNET_LOG is the caller's: the CLI's output is then only its answer.
        cmd.arg("--socket").arg(&self.socket).env_remove("BPFNET_LOG");
        cmd
    }

    /// A path in the scratch folder (removed with the sandbox), e.g. for a socket.
    pub fn scratch_path(&self, file: &str) -> PathBuf {
        self.scratch_dir.join(file)
    }

    /// Writes a file (a script for the containers to run) into the scratch folder.
    pub fn write_scratch(&self, file: &str, contents: &str) -> Result<PathBuf> {
        let path = self.scratch_dir.join(file);
        fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Starts a background process with the stdio `cmd` was given ([`Sandbox::read_line`] and
    /// [`Sandbox::finish`] read its stdout if piped); the guard kills and reaps it.
    pub fn spawn(&mut self, label: &str, mut cmd: Command) -> Result<BackgroundId> {
        if self.output == Output::Terminal {
            announce(&cmd);
        }
        let mut child = cmd.spawn().with_context(|| format!("could not start {label}: `{}`", display(&cmd)))?;
        let stdout = child.stdout.take().map(BufReader::new);
        self.background.push(Some(Background { label: label.to_string(), child, stdout }));
        Ok(BackgroundId(self.background.len() - 1))
    }

    fn background(&mut self, id: BackgroundId) -> Result<&mut Background> {
        self.background[id.0].as_mut().ok_or_else(|| anyhow!("background process #{} has finished already", id.0))
    }

    /// The next line the process prints (a server says when it listens).
    pub fn read_line(&mut self, id: BackgroundId) -> Result<String> {
        let process = self.background(id)?;
        let label = &process.label;
        let stdout = process.stdout.as_mut().ok_or_else(|| anyhow!("{label} was started without a piped stdout"))?;
        let mut line = String::new();
        let read = stdout.read_line(&mut line).with_context(|| format!("reading the output of {label}"))?;
        if read == 0 {
            bail!("{label} exited before it printed a line: see its errors above");
        }
        Ok(line.trim_end().to_string())
    }

    /// Waits (at most `limit`) for the process to exit 0, and returns the rest of its output.
    pub fn finish(&mut self, id: BackgroundId, limit: Duration) -> Result<String> {
        let mut process =
            self.background[id.0].take().ok_or_else(|| anyhow!("background process #{} has finished already", id.0))?;
        let status = wait_bounded(&mut process.child, limit).with_context(|| process.label.clone())?;
        let mut rest = String::new();
        if let Some(stdout) = process.stdout.as_mut() {
            stdout.read_to_string(&mut rest).with_context(|| format!("reading the output of {}", process.label))?;
        }
        if !status.success() {
            bail!("{} failed ({status}); its output: {rest}", process.label);
        }
        Ok(rest)
    }

    /// Runs `serve` on a thread of its own (a server of a test) until it returns; it gets a
    /// flag that turns true when the sandbox goes, which then waits for it.
    pub fn serve(&mut self, serve: impl FnOnce(Arc<AtomicBool>) + Send + 'static) {
        let stop = self.stop_threads.clone();
        self.threads.push(std::thread::spawn(move || serve(stop)));
    }

    /// A cgroup v2 directory of this sandbox's own (`<cgroup2 mount>/{prefix}-cg`, made on
    /// first use), for the clients of `--host-cgroup`: only processes the caller starts ever
    /// join it. Removed with the sandbox, after `bpfnet down` detached everything from it.
    pub fn cgroup(&mut self) -> Result<PathBuf> {
        if let Some(dir) = &self.cgroup {
            return Ok(dir.clone());
        }
        let mount = cgroup2_mount().context("no cgroup v2 hierarchy is mounted (see /proc/self/mountinfo)")?;
        let dir = mount.join(self.name("cg"));
        fs::create_dir(&dir).with_context(|| format!("creating the cgroup {}", dir.display()))?;
        self.cgroup = Some(dir.clone());
        Ok(dir)
    }

    /// Removes everything, and fails if bpfnet left anything behind or a step of the
    /// removal failed.
    pub fn teardown(mut self) -> Result<()> {
        self.torn_down = true;
        crate::process::all_done("teardown", self.cleanup(true))
    }

    /// Every step runs, whatever failed before it; the errors are returned. `strict`: also
    /// count what `bpfnet down` should have removed but left. Never panics.
    fn cleanup(&mut self, strict: bool) -> Vec<anyhow::Error> {
        let mut errors = Vec::new();
        if self.output == Output::Captured && std::thread::panicking() {
            eprintln!("--- agent log of sandbox {} ---\n{}", self.prefix, self.agent_log_text());
        }

        for mut process in std::mem::take(&mut self.background).into_iter().flatten() {
            self.say(&format!("stopping {}", process.label));
            // It may have exited already: then kill fails and wait reaps it.
            let _killed = process.child.kill();
            if let Err(err) = process.child.wait() {
                errors.push(anyhow!("reaping {}: {err}", process.label));
            }
        }

        // `bpfnet down` needs an agent: the sandbox's own, or a new one if it was stopped or
        // died (a new agent also reconciles whatever was left half-done). Nothing to take
        // down if no agent ever made anything.
        if self.agent_served.get() || self.state_dir.exists() || self.bpffs_dir.exists() {
            let down = self.start_agent().context("no agent could be started for `bpfnet down`").and_then(|()| {
                let mut down = self.cli();
                down.arg("down");
                self.step(&mut down).context("`bpfnet down` failed")
            });
            if let Err(err) = down {
                errors.push(err);
            }
        }
        self.stop_agent(Signal::SIGTERM);
        let _ = fs::remove_file(&self.socket);

        // What bpfnet down should have removed; removed anyway.
        let mut netns = namespaces_with_prefix(&format!("{}-", self.prefix));
        netns.sort_by_key(|netns| *netns == self.host_netns); // the host namespace last
        for netns in netns {
            if strict && !self.own_netns.contains(&netns) {
                errors.push(anyhow!("`bpfnet down` left network namespace {netns} behind"));
            }
            if let Err(err) = self.step(Command::new("ip").args(["netns", "delete", &netns])) {
                errors.push(err);
            }
        }

        if let Some(dir) = self.cgroup.take() {
            if let Err(err) = remove_cgroup(&dir) {
                errors.push(err);
            }
        }
        if strict && dir_has_entries(&self.bpffs_dir) {
            errors.push(anyhow!("`bpfnet down` left pins in {}", self.bpffs_dir.display()));
        }
        for dir in [&self.bpffs_dir, &self.state_dir, &self.scratch_dir] {
            if dir.exists() {
                self.say(&format!("$ rm -r {}", dir.display()));
                // Pins in bpffs go with unlink, their folders with rmdir, as any files'.
                if let Err(err) = fs::remove_dir_all(dir) {
                    errors.push(anyhow!("removing {}: {err}", dir.display()));
                }
            }
        }

        self.stop_threads.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                errors.push(anyhow!("a server thread of the sandbox panicked"));
            }
        }
        errors
    }

    /// `ip -n NETNS ARGS`: runs in a sandbox namespace, never in the root one.
    fn ip(&self, netns: &str, args: &[&str]) -> Result<()> {
        self.step(Command::new("ip").arg("-n").arg(netns).args(args))
    }

    /// Runs one command of the sandbox's own, bounded in time; fails unless it exits 0.
    fn step(&self, cmd: &mut Command) -> Result<()> {
        cmd.stdin(Stdio::null());
        let captured = self.output == Output::Captured;
        if captured {
            cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        } else {
            announce(cmd);
        }
        let mut child = cmd.spawn().with_context(|| format!("could not start `{}`", display(cmd)))?;
        // Read on another thread so a chatty command cannot block on a full pipe.
        let stderr = child.stderr.take().map(|mut stderr| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = stderr.read_to_string(&mut text);
                text
            })
        });
        let status = wait_bounded(&mut child, STEP_LIMIT).with_context(|| format!("`{}`", display(cmd)))?;
        let stderr = stderr.and_then(|reader| reader.join().ok()).unwrap_or_default();
        match (status.success(), captured) {
            (true, _) => Ok(()),
            (false, true) => bail!("`{}` failed ({status}): {}", display(cmd), stderr.trim()),
            (false, false) => bail!("`{}` failed ({status})", display(cmd)),
        }
    }

    /// A line about the cleanup, on the terminal only.
    fn say(&self, line: &str) {
        if self.output == Output::Terminal {
            println!("{line}");
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        self.say(&format!("\n==> cleaning up sandbox {}", self.prefix));
        for err in self.cleanup(false) {
            eprintln!("warning: sandbox {} cleanup: {err:#}", self.prefix);
        }
    }
}

/// `ip netns exec NETNS PROGRAM ARGS`.
pub fn netns_exec<I, S>(netns: &str, program: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns, program]).args(args);
    cmd
}

/// Network namespaces whose names start with `prefix`.
pub fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    let Ok(entries) = fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(prefix))
        .collect()
}

fn dir_has_entries(dir: &Path) -> bool {
    fs::read_dir(dir).map(|mut entries| entries.next().is_some()).unwrap_or(false)
}

/// Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on a
/// hybrid host).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        if fs.split_whitespace().next() != Some("cgroup2") {
            return None;
        }
        mount.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// Removes a sandbox's cgroup. Only the caller's own client processes ever join one, and they
/// have normally exited; any still in it (a test that failed mid-way) are killed first, by PID.
fn remove_cgroup(dir: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() >= deadline => bail!("removing cgroup {}: {e}", dir.display()),
            Err(_) => {
                let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}
