//! A CRI client: the calls the kubelet makes to run a pod's sandbox (RunPodSandbox with its
//! port mappings, PodSandboxStatus, StopPodSandbox, RemovePodSandbox), over the runtime's
//! gRPC Unix socket. crictl is not packaged for Debian 12, so the tests speak CRI themselves,
//! with the client generated from the vendored `proto/cri/api.proto` (see build.rs).
//!
//! Blocking on purpose: each call runs on a current-thread runtime of the client's own, so the
//! tests stay plain synchronous code.
use std::{collections::HashMap, net::Ipv4Addr, path::PathBuf, time::Duration};

use anyhow::{bail, Context, Result};
use hyper_util::rt::TokioIo;
use tokio::{net::UnixStream, runtime::Runtime};
use tonic::transport::{Channel, Endpoint, Uri};

/// The generated messages and client of `runtime.v1`.
pub mod v1 {
    tonic::include_proto!("runtime.v1");
}

use v1::runtime_service_client::RuntimeServiceClient;

/// Bound on one CRI call: RunPodSandbox starts the pause container and runs the CNI plugin.
const CALL_LIMIT: Duration = Duration::from_secs(60);

/// A published port of a pod, as the kubelet passes a container's `hostPort`.
#[derive(Clone, Copy, Debug)]
pub struct HostPort {
    pub host_port: u16,
    pub container_port: u16,
}

/// What PodSandboxStatus says of a sandbox.
#[derive(Clone, Debug)]
pub struct SandboxStatus {
    pub ready: bool,
    /// The pod's IP, as the CNI plugin's result gave it to the runtime.
    pub ip: Option<Ipv4Addr>,
    /// The path of the pod's network namespace (from the verbose info).
    pub netns: Option<PathBuf>,
    /// The pause process (from the verbose info).
    pub pid: Option<u32>,
}

pub struct CriClient {
    runtime: Runtime,
    client: RuntimeServiceClient<Channel>,
}

impl CriClient {
    /// Connects to the CRI socket at `socket` and checks that it answers Version.
    pub fn connect(socket: PathBuf) -> Result<CriClient> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let path = socket.clone();
        let channel = runtime
            .block_on(async move {
                // The URI is not used: every connection goes to the Unix socket.
                Endpoint::from_static("http://[::1]:50051")
                    .connect_timeout(Duration::from_secs(5))
                    .timeout(CALL_LIMIT)
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
                    }))
                    .await
            })
            .with_context(|| format!("connecting to the CRI socket {}", socket.display()))?;
        let mut cri = CriClient { runtime, client: RuntimeServiceClient::new(channel) };
        let version = cri.call(|mut c| async move { c.version(v1::VersionRequest { version: "v1".into() }).await })?;
        if version.runtime_api_version != "v1" {
            bail!("the runtime at {} speaks CRI {}, not v1", socket.display(), version.runtime_api_version);
        }
        Ok(cri)
    }

    fn call<T, F>(&mut self, call: impl FnOnce(RuntimeServiceClient<Channel>) -> F) -> Result<T>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = self.client.clone();
        match self.runtime.block_on(call(client)) {
            Ok(answer) => Ok(answer.into_inner()),
            Err(status) => bail!("CRI call failed: {:?}: {}", status.code(), status.message()),
        }
    }

    /// RunPodSandbox: a pod `name` (its uid made from the name) in `namespace`, its cgroups
    /// under `cgroup_parent`, with `ports` published. Returns the sandbox id.
    pub fn run_pod_sandbox(
        &mut self,
        name: &str,
        namespace: &str,
        cgroup_parent: &str,
        ports: &[HostPort],
    ) -> Result<String> {
        let config = v1::PodSandboxConfig {
            metadata: Some(v1::PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: namespace.into(),
                attempt: 0,
            }),
            hostname: name.into(),
            port_mappings: ports
                .iter()
                .map(|p| v1::PortMapping {
                    protocol: v1::Protocol::Tcp as i32,
                    container_port: i32::from(p.container_port),
                    host_port: i32::from(p.host_port),
                    host_ip: String::new(),
                })
                .collect(),
            labels: HashMap::from([("bpfnet-test".into(), name.into())]),
            linux: Some(v1::LinuxPodSandboxConfig {
                cgroup_parent: cgroup_parent.into(),
                security_context: Some(v1::LinuxSandboxSecurityContext {
                    namespace_options: Some(v1::NamespaceOption {
                        network: v1::NamespaceMode::Pod as i32,
                        pid: v1::NamespaceMode::Container as i32,
                        ipc: v1::NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let request = v1::RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() };
        let answer = self
            .call(|mut c| async move { c.run_pod_sandbox(request).await })
            .with_context(|| format!("RunPodSandbox {namespace}/{name}"))?;
        Ok(answer.pod_sandbox_id)
    }

    /// PodSandboxStatus (verbose, for the namespace and the pause process).
    pub fn pod_sandbox_status(&mut self, id: &str) -> Result<SandboxStatus> {
        let request = v1::PodSandboxStatusRequest { pod_sandbox_id: id.into(), verbose: true };
        let answer = self
            .call(|mut c| async move { c.pod_sandbox_status(request).await })
            .with_context(|| format!("PodSandboxStatus {id}"))?;
        let status = answer.status.with_context(|| format!("PodSandboxStatus {id}: no status"))?;
        let ip = match status.network.as_ref().map(|n| n.ip.as_str()) {
            None | Some("") => None,
            Some(text) => Some(text.parse().with_context(|| format!("the pod's IP {text:?}"))?),
        };
        // containerd puts its own view of the sandbox, as JSON, under "info".
        let info: serde_json::Value = answer
            .info
            .get("info")
            .map(|text| serde_json::from_str(text))
            .transpose()
            .context("the verbose info is not JSON")?
            .unwrap_or_default();
        Ok(SandboxStatus {
            ready: status.state == v1::PodSandboxState::SandboxReady as i32,
            ip,
            netns: netns_of(&info),
            pid: info["pid"].as_u64().and_then(|pid| u32::try_from(pid).ok()),
        })
    }

    /// StopPodSandbox: the pause container is killed and the CNI plugin's DEL runs.
    pub fn stop_pod_sandbox(&mut self, id: &str) -> Result<()> {
        let request = v1::StopPodSandboxRequest { pod_sandbox_id: id.into() };
        self.call(|mut c| async move { c.stop_pod_sandbox(request).await })
            .with_context(|| format!("StopPodSandbox {id}"))?;
        Ok(())
    }

    /// RemovePodSandbox: the sandbox and its network namespace go.
    pub fn remove_pod_sandbox(&mut self, id: &str) -> Result<()> {
        let request = v1::RemovePodSandboxRequest { pod_sandbox_id: id.into() };
        self.call(|mut c| async move { c.remove_pod_sandbox(request).await })
            .with_context(|| format!("RemovePodSandbox {id}"))?;
        Ok(())
    }

    /// The ids of every sandbox the runtime knows.
    pub fn list_pod_sandboxes(&mut self) -> Result<Vec<String>> {
        let request = v1::ListPodSandboxRequest { filter: None };
        let answer = self.call(|mut c| async move { c.list_pod_sandbox(request).await }).context("ListPodSandbox")?;
        Ok(answer.items.into_iter().map(|s| s.id).collect())
    }
}

/// The network namespace in containerd's verbose sandbox info: the path its runtime spec
/// gives the pause container's network namespace.
fn netns_of(info: &serde_json::Value) -> Option<PathBuf> {
    let namespaces = info["runtimeSpec"]["linux"]["namespaces"].as_array()?;
    let network = namespaces.iter().find(|ns| ns["type"] == "network")?;
    network["path"].as_str().filter(|p| !p.is_empty()).map(PathBuf::from)
}
