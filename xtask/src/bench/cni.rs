//! `cargo xtask bench --cni N`: a CNI plugin's ADD and DEL as a runtime makes them, through
//! the plugin processes, for N pods each publishing a port:
//!
//! - bpfnet: one plugin, `bpfnet-cni`, a client of the agent (which owns IPAM and ports);
//! - the CNI reference chain: `bridge` (with `host-local` IPAM and `ipMasq`, as podman's and
//!   the kubelet's bridge configurations have it), then `portmap`, from Debian's
//!   containernetworking-plugins (1.1.1). A runtime runs them one after the other; their
//!   figure is the sum, as a pod waits for both.
//!
//! Each in a sandbox host namespace of its own, the plugins run with `nsenter --net` into it
//! (the runtime's namespace, as the spec has it), each pod a namespace made beforehand
//! (untimed), after one pod added and deleted untimed (a node's one-time work). ADDs go from 1 pod to N, DELs back from N to 1: a window of 50 around 1, 100
//! and N pods attached makes the figures there.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bpfnet_tests::sandbox::{Output, Sandbox};
use serde::Serialize;
use serde_json::{json, Value};

use super::stats::{flatness, latencies_at, scale_points, LatencyAt};

/// Debian's containernetworking-plugins put the reference plugins here.
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";
const CNI_VERSION: &str = "1.0.0";
/// Pods at each end whose timings make the "at 1" and "at N" figures.
const EDGE: usize = 50;
/// Host ports of the pods: pod i publishes FIRST_PORT + i -> 80.
const FIRST_PORT: u16 = 30_000;
/// Bound on one plugin run.
const LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, Serialize)]
pub struct CniReport {
    pub pods: usize,
    pub bpfnet: PluginFigures,
    pub bridge_portmap: PluginFigures,
}

/// Milliseconds, p50 (with its interval) and p99, of the ADDs and the DELs at 1, 100 and N
/// pods attached.
#[derive(Debug, Serialize)]
pub struct PluginFigures {
    pub add_ms: Vec<LatencyAt>,
    pub del_ms: Vec<LatencyAt>,
}

impl PluginFigures {
    /// From the ADDs in order (1 pod to N) and the DELs in order (N to 1).
    fn of(adds: &[Duration], dels: &[Duration]) -> PluginFigures {
        let points = scale_points(adds.len());
        let mut dels = dels.to_vec();
        dels.reverse();
        PluginFigures { add_ms: latencies_at(adds, &points, EDGE), del_ms: latencies_at(&dels, &points, EDGE) }
    }
}

/// Measures both plugins with `pods` pods and writes `cni.json` into `out`.
pub fn run(bpfnet_bin: &Path, cni_bin: &Path, pods: usize, out: &Path) -> Result<CniReport> {
    for plugin in ["bridge", "host-local", "portmap"] {
        let path = Path::new(REFERENCE_PLUGINS).join(plugin);
        if !path.exists() {
            bail!("{} is missing: run `cargo xtask setup` (it installs containernetworking-plugins)", path.display());
        }
    }
    println!("==> bpfnet-cni, {pods} pods");
    let bpfnet = with_sandbox("bnc", bpfnet_bin, |sb| {
        let mut plugin = BpfnetCni::new(sb, cni_bin)?;
        measure(sb, pods, &mut plugin)
    })?;
    println!("==> bridge + host-local + portmap, {pods} pods");
    let bridge = with_sandbox("bnr", bpfnet_bin, |sb| {
        let mut plugin = BridgeChain::new(sb)?;
        measure(sb, pods, &mut plugin)
    })?;
    let report = CniReport { pods, bpfnet, bridge_portmap: bridge };
    let path = out.join("cni.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("{}", table(&report));
    Ok(report)
}

/// Runs `f` on a new sandbox and tears it down whatever happened.
fn with_sandbox<T>(stem: &str, bpfnet_bin: &Path, f: impl FnOnce(&mut Sandbox) -> Result<T>) -> Result<T> {
    let mut sandbox = Sandbox::create(stem, bpfnet_bin.to_owned(), Output::Captured)?;
    let result = f(&mut sandbox);
    sandbox.teardown()?;
    result
}

/// A plugin (or chain) as a runtime drives it.
trait Plugin {
    fn add(&mut self, pod: &Pod) -> Result<Duration>;
    fn del(&mut self, pod: &Pod) -> Result<Duration>;
}

struct Pod {
    id: String,
    netns: PathBuf,
    host_port: u16,
}

fn measure(sandbox: &mut Sandbox, count: usize, plugin: &mut dyn Plugin) -> Result<PluginFigures> {
    // One pod added and deleted untimed first: what a node does once (bpfnet's network and
    // datapath, the bridge and its rules) is not a pod's cost.
    let warmup = sandbox.add_engine_netns("warmup")?;
    let warmup = Pod {
        id: format!("{}-warmup", sandbox.prefix()),
        netns: Path::new("/run/netns").join(warmup),
        host_port: 29_999,
    };
    plugin.add(&warmup)?;
    plugin.del(&warmup)?;
    let mut pods = Vec::with_capacity(count);
    for i in 0..count {
        let netns = sandbox.add_engine_netns(&format!("p{i}"))?;
        let id = format!("{}-pod{i}", sandbox.prefix());
        pods.push(Pod { id, netns: Path::new("/run/netns").join(netns), host_port: FIRST_PORT + i as u16 });
    }
    let mut adds = Vec::with_capacity(count);
    for (i, pod) in pods.iter().enumerate() {
        adds.push(plugin.add(pod)?);
        if (i + 1) % 100 == 0 {
            println!("==> {} pods", i + 1);
        }
    }
    let mut dels = Vec::with_capacity(count);
    for pod in pods.iter().rev() {
        dels.push(plugin.del(pod)?);
    }
    Ok(PluginFigures::of(&adds, &dels))
}

/// Runs a plugin binary the way a runtime does: CNI_* environment, the configuration on
/// stdin, in the runtime's (the sandbox host's) network namespace. Returns the time and the
/// result it printed.
fn exec(host_netns: &str, plugin: &Path, command: &str, pod: &Pod, config: &Value) -> Result<(Duration, Value)> {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{host_netns}"))
        .arg(plugin)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &pod.id)
        .env("CNI_NETNS", &pod.netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", REFERENCE_PLUGINS)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("running {}", plugin.display()))?;
    child.stdin.take().expect("piped").write_all(config.to_string().as_bytes())?;
    let output = wait_output(child)?;
    let took = started.elapsed();
    if !output.status.success() {
        bail!(
            "{} {command} for {} failed ({}): {}{}",
            plugin.display(),
            pod.id,
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let result = if output.stdout.is_empty() { Value::Null } else { serde_json::from_slice(&output.stdout)? };
    Ok((took, result))
}

/// Waits for the plugin, at most LIMIT.
fn wait_output(mut child: std::process::Child) -> Result<std::process::Output> {
    let deadline = Instant::now() + LIMIT;
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("a plugin did not finish within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(child.wait_with_output()?)
}

fn port_mapping(pod: &Pod) -> Value {
    json!({ "portMappings": [{ "hostPort": pod.host_port, "containerPort": 80, "protocol": "tcp" }] })
}

/// bpfnet-cni against the sandbox's agent.
struct BpfnetCni {
    host_netns: String,
    plugin: PathBuf,
    config: Value,
}

impl BpfnetCni {
    fn new(sandbox: &mut Sandbox, plugin: &Path) -> Result<Self> {
        sandbox.add_uplink()?;
        sandbox.start_agent()?;
        let config = json!({
            "cniVersion": CNI_VERSION,
            "name": "bench",
            "type": "bpfnet-cni",
            "network": sandbox.name("pods"),
            // Created by the first ADD; a /20 holds the largest --cni.
            "subnet": "10.211.0.0/20",
            "socket": sandbox.socket(),
        });
        Ok(BpfnetCni { host_netns: sandbox.host_netns().to_owned(), plugin: plugin.to_owned(), config })
    }

    fn config(&self, pod: &Pod) -> Value {
        let mut config = self.config.clone();
        config["runtimeConfig"] = port_mapping(pod);
        config
    }
}

impl Plugin for BpfnetCni {
    fn add(&mut self, pod: &Pod) -> Result<Duration> {
        Ok(exec(&self.host_netns, &self.plugin, "ADD", pod, &self.config(pod))?.0)
    }

    fn del(&mut self, pod: &Pod) -> Result<Duration> {
        Ok(exec(&self.host_netns, &self.plugin, "DEL", pod, &self.config(pod))?.0)
    }
}

/// bridge (host-local IPAM, ipMasq) then portmap; DEL in the reverse order. Keeps each pod's
/// result for its DEL's prevResult, as a runtime does.
struct BridgeChain {
    host_netns: String,
    bridge: Value,
    portmap: Value,
    results: std::collections::HashMap<String, Value>,
}

impl BridgeChain {
    fn new(sandbox: &mut Sandbox) -> Result<Self> {
        // host-local's leases in the sandbox's scratch folder, not /var/lib/cni.
        let leases = sandbox.write_scratch("host-local-leases", "")?;
        std::fs::remove_file(&leases)?;
        let bridge = json!({
            "cniVersion": CNI_VERSION,
            "name": "bench",
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": true,
            "ipMasq": true,
            "ipam": {
                "type": "host-local",
                "dataDir": leases,
                "ranges": [[{ "subnet": "10.212.0.0/20" }]],
                "routes": [{ "dst": "0.0.0.0/0" }]
            }
        });
        let portmap = json!({
            "cniVersion": CNI_VERSION,
            "name": "bench",
            "type": "portmap",
            "capabilities": { "portMappings": true },
            "snat": true
        });
        Ok(BridgeChain { host_netns: sandbox.host_netns().to_owned(), bridge, portmap, results: Default::default() })
    }

    fn plugin(name: &str) -> PathBuf {
        Path::new(REFERENCE_PLUGINS).join(name)
    }
}

impl Plugin for BridgeChain {
    fn add(&mut self, pod: &Pod) -> Result<Duration> {
        let (bridge_took, result) = exec(&self.host_netns, &Self::plugin("bridge"), "ADD", pod, &self.bridge)?;
        let mut portmap = self.portmap.clone();
        portmap["prevResult"] = result;
        portmap["runtimeConfig"] = port_mapping(pod);
        let (portmap_took, result) = exec(&self.host_netns, &Self::plugin("portmap"), "ADD", pod, &portmap)?;
        self.results.insert(pod.id.clone(), result);
        Ok(bridge_took + portmap_took)
    }

    fn del(&mut self, pod: &Pod) -> Result<Duration> {
        let result = self.results.remove(&pod.id).unwrap_or(Value::Null);
        let mut portmap = self.portmap.clone();
        portmap["prevResult"] = result.clone();
        portmap["runtimeConfig"] = port_mapping(pod);
        let (portmap_took, _) = exec(&self.host_netns, &Self::plugin("portmap"), "DEL", pod, &portmap)?;
        let mut bridge = self.bridge.clone();
        bridge["prevResult"] = result;
        let (bridge_took, _) = exec(&self.host_netns, &Self::plugin("bridge"), "DEL", pod, &bridge)?;
        Ok(portmap_took + bridge_took)
    }
}

pub fn table(r: &CniReport) -> String {
    let mut out = format!(
        "CNI ADD and DEL through the plugin processes, {} pods each publishing a port (ms, one run)\n\
         {:<24} {:>10} {:>17} {:>8} {:>10} {:>17} {:>8} {:>8}\n",
        r.pods, "", "bpfnet p50", "95 % interval", "p99", "bridge p50", "95 % interval", "p99", "ratio"
    );
    let ci = |at: &LatencyAt| at.p50_ci.map_or_else(String::new, |ci| format!("[{:.1}..{:.1}]", ci.lo, ci.hi));
    for (what, ours, theirs) in
        [("ADD", &r.bpfnet.add_ms, &r.bridge_portmap.add_ms), ("DEL", &r.bpfnet.del_ms, &r.bridge_portmap.del_ms)]
    {
        for (a, b) in ours.iter().zip(theirs.iter()) {
            let _ = writeln!(
                out,
                "{:<24} {:>10.1} {:>17} {:>8.1} {:>10.1} {:>17} {:>8.1} {:>7.2}x",
                format!("{what}, {} {} attached", a.attached, if a.attached == 1 { "pod" } else { "pods" }),
                a.p50,
                ci(a),
                a.p99,
                b.p50,
                ci(b),
                b.p99,
                a.p50 / b.p50
            );
        }
        let _ = writeln!(
            out,
            "{:<24} bpfnet-cni {}; bridge+portmap {}",
            format!("{what}:"),
            flatness(ours),
            flatness(theirs)
        );
    }
    out.push_str("ratio: bpfnet's p50 / bridge+portmap's p50 (lower is faster)\n");
    out
}
