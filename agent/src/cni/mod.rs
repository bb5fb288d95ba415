//! `bpfnet-cni`, a CNI plugin (spec 1.1.0; results also for 0.3.0 to 1.0.0): a thin client of
//! the agent's API, which owns IPAM and everything in the kernel. ADD attaches the runtime's
//! namespace to a bpfnet network (`POST /v1/attachments`), DEL detaches it, CHECK asks the
//! agent to check it against the kernel, GC detaches what the runtime no longer knows, STATUS
//! says whether the agent answers. Parallel calls for different containers are safe: the agent
//! runs one operation at a time.
//!
//! Network configuration keys: `type` (`bpfnet-cni`), `network` (the bpfnet network; default
//! the configuration's `name`), `subnet` (creates the network if it does not exist) and
//! `subnet6` (with `subnet`: creates it dual stack), `socket` (the agent's API socket), and the
//! `portMappings` capability. Unknown keys are ignored. On a dual-stack network the result
//! holds both addresses and a default route per family.
pub mod result;
pub mod spec;

use std::path::PathBuf;

use serde::Serialize;

use crate::{
    api::{self, Attach, AttachmentInfo, Call, CreateNetwork, Detached, NetworkInfo},
    cli::client,
};
use result::CniResult;
use spec::{code, CniError, Command, Environment, NetConf, SUPPORTED_VERSIONS};

/// What a command prints on success: a result, the version answer, or nothing.
pub type Output = Option<serde_json::Value>;

/// Runs one plugin invocation. The error carries the configuration's version when it was
/// readable.
pub async fn run(env: &Environment, stdin: &[u8]) -> Result<Output, CniError> {
    let command = env.command()?;
    if command == Command::Version {
        return Ok(Some(version_answer(stdin)));
    }
    let conf = NetConf::decode(stdin)?;
    let version = conf.version()?;
    let with_version = |e: CniError| CniError { cni_version: conf.cni_version.clone(), ..e };
    let needs = |since: (u32, u32, u32), what: &str| {
        if version < since {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "{what} needs cniVersion {}.{}.{} or later, the configuration says {}",
                    since.0, since.1, since.2, conf.cni_version
                ),
            ));
        }
        Ok(())
    };
    let plugin = Plugin { socket: conf.socket.clone().unwrap_or_else(|| PathBuf::from(api::DEFAULT_SOCKET)) };
    let outcome = match command {
        Command::Version => unreachable!("answered above"),
        Command::Add => plugin.add(env, &conf, version).await,
        Command::Del => plugin.del(env).await.map(|()| None),
        Command::Check => match needs((0, 4, 0), "CHECK") {
            Ok(()) => plugin.check(env, &conf).await.map(|()| None),
            Err(e) => Err(e),
        },
        Command::Gc => match needs((1, 1, 0), "GC") {
            Ok(()) => plugin.gc(&conf).await.map(|()| None),
            Err(e) => Err(e),
        },
        Command::Status => match needs((1, 1, 0), "STATUS") {
            Ok(()) => plugin.status(&conf).await.map(|()| None),
            Err(e) => Err(e),
        },
    };
    outcome.map_err(with_version)
}

/// VERSION: the versions this plugin speaks, whatever the configuration says.
fn version_answer(stdin: &[u8]) -> serde_json::Value {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct VersionAnswer {
        cni_version: String,
        supported_versions: [&'static str; 5],
    }
    let asked = serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v["cniVersion"].as_str().map(str::to_owned))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| spec::LATEST_VERSION.to_owned());
    serde_json::to_value(VersionAnswer { cni_version: asked, supported_versions: SUPPORTED_VERSIONS })
        .expect("the version answer always serializes")
}

struct Plugin {
    socket: PathBuf,
}

impl Plugin {
    async fn call<T: serde::de::DeserializeOwned>(&self, call: &Call) -> Result<T, CniError> {
        client::call(&self.socket, call).await.map_err(agent_error)
    }

    async fn add(&self, env: &Environment, conf: &NetConf, version: (u32, u32, u32)) -> Result<Output, CniError> {
        let container_id = env.require("CNI_CONTAINERID")?;
        let netns = env.require("CNI_NETNS")?;
        let ifname = env.require("CNI_IFNAME")?;
        let network = conf.network()?;
        let mut publish: Vec<String> = Vec::new();
        for mapping in &conf.runtime_config.port_mappings {
            let spec = mapping.publish_spec()?;
            if !publish.contains(&spec) {
                publish.push(spec);
            }
        }
        let mut result = CniResult::previous(conf.prev_result.as_ref())?;
        self.ensure_network(network, conf.subnet.as_deref(), conf.subnet6.as_deref()).await?;
        let attach = Attach {
            netns: PathBuf::from(netns),
            container_id: container_id.to_owned(),
            ifname: ifname.to_owned(),
            network: network.to_owned(),
            ip: None,
            ip6: None,
            publish,
        };
        let attached: AttachmentInfo = self.call(&Call::Attach(attach)).await?;
        tracing::info!("attached {container_id}/{ifname} ({netns}) to {network}: {}", attached.address);
        result.add_attachment(&attached);
        let shaped = result.shaped_for(&conf.cni_version, version);
        Ok(Some(serde_json::to_value(shaped).expect("CNI results always serialize")))
    }

    /// The network exists, or is made when the configuration gives its subnet. Two ADDs that
    /// both make it: the second finds it made.
    async fn ensure_network(&self, network: &str, subnet: Option<&str>, subnet6: Option<&str>) -> Result<(), CniError> {
        let networks: Vec<NetworkInfo> = self.call(&Call::ListNetworks).await?;
        if networks.iter().any(|n| n.name == network) {
            return Ok(());
        }
        let Some(subnet) = subnet else {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!(
                    "the bpfnet network {network:?} does not exist: create it (bpfnet network create {network} \
                     --subnet CIDR) or give \"subnet\" in the network configuration"
                ),
            ));
        };
        let subnets = std::iter::once(subnet).chain(subnet6).map(str::to_owned).collect();
        let create =
            Call::CreateNetwork(CreateNetwork { name: network.to_owned(), subnets, gateways: vec![], ipv6: false });
        match self.call::<NetworkInfo>(&create).await {
            Ok(_) => Ok(()),
            Err(refused) => {
                let networks: Vec<NetworkInfo> = self.call(&Call::ListNetworks).await?;
                match networks.iter().any(|n| n.name == network) {
                    true => Ok(()),
                    false => Err(CniError { code: code::INVALID_CONFIG, ..refused }),
                }
            }
        }
    }

    /// DEL needs only the container id and interface name: the namespace may be gone already
    /// (empty CNI_NETNS), and a repeated DEL finds nothing to do.
    async fn del(&self, env: &Environment) -> Result<(), CniError> {
        let container_id = env.require("CNI_CONTAINERID")?;
        let ifname = env.require("CNI_IFNAME")?;
        let answer: Detached = self.call(&Call::Detach(container_id.to_owned(), ifname.to_owned())).await?;
        tracing::info!("DEL {container_id}/{ifname}: detached={}", answer.detached);
        Ok(())
    }

    async fn check(&self, env: &Environment, conf: &NetConf) -> Result<(), CniError> {
        let container_id = env.require("CNI_CONTAINERID")?;
        env.require("CNI_NETNS")?;
        let ifname = env.require("CNI_IFNAME")?;
        let attached: AttachmentInfo =
            self.call(&Call::CheckAttachment(container_id.to_owned(), ifname.to_owned())).await?;
        if attached.network != conf.network()? {
            return Err(CniError::new(
                code::REFUSED,
                format!(
                    "{container_id}/{ifname} is attached to network {:?}, not {:?}",
                    attached.network,
                    conf.network()?
                ),
            ));
        }
        if let Some(prev) = &conf.prev_result {
            let prev = CniResult::previous(Some(prev))?;
            if !prev.ips.iter().any(|ip| ip.address == attached.address) {
                return Err(CniError::new(
                    code::REFUSED,
                    format!("prevResult does not hold {container_id}/{ifname}'s address {}", attached.address),
                ));
            }
        }
        Ok(())
    }

    /// Detaches this network's attachments that the runtime does not list as valid, going on
    /// past a failure; the failures are reported at the end.
    async fn gc(&self, conf: &NetConf) -> Result<(), CniError> {
        let network = conf.network()?;
        let valid = conf.valid_attachments.clone().unwrap_or_default();
        let attachments: Vec<AttachmentInfo> = self.call(&Call::ListAttachments).await?;
        let mut failures = Vec::new();
        for stale in attachments.iter().filter(|a| {
            a.network == network && !valid.iter().any(|v| v.container_id == a.container_id && v.ifname == a.ifname)
        }) {
            let call = Call::Detach(stale.container_id.clone(), stale.ifname.clone());
            match self.call::<Detached>(&call).await {
                Ok(_) => tracing::info!("GC: detached {}/{}", stale.container_id, stale.ifname),
                Err(e) => failures.push(format!("{}/{}: {}", stale.container_id, stale.ifname, e.msg)),
            }
        }
        if failures.is_empty() {
            return Ok(());
        }
        Err(CniError::new(code::REFUSED, format!("GC could not detach {} attachment(s)", failures.len()))
            .details(failures.join("; ")))
    }

    /// Ready for ADDs when the agent answers and the network exists (or can be made).
    async fn status(&self, conf: &NetConf) -> Result<(), CniError> {
        let network = conf.network()?;
        let networks: Vec<NetworkInfo> = self.call(&Call::ListNetworks).await.map_err(|e| match e.code {
            code::TRY_AGAIN_LATER => CniError { code: code::NOT_AVAILABLE, ..e },
            _ => e,
        })?;
        if conf.subnet.is_none() && !networks.iter().any(|n| n.name == network) {
            return Err(CniError::new(
                code::NOT_AVAILABLE,
                format!(
                    "the bpfnet network {network:?} does not exist and the configuration gives no subnet to make it"
                ),
            ));
        }
        Ok(())
    }
}

/// An agent that does not answer: try again later (11); one that refused: its message.
fn agent_error(err: anyhow::Error) -> CniError {
    if let Some(unreachable) = err.downcast_ref::<client::Unreachable>() {
        return CniError::new(code::TRY_AGAIN_LATER, unreachable.to_string());
    }
    if let Some(client::Refused(message)) = err.downcast_ref::<client::Refused>() {
        return CniError::new(code::REFUSED, message.clone());
    }
    CniError::new(code::TRY_AGAIN_LATER, "talking to the bpfnet agent failed").details(format!("{err:#}"))
}

#[cfg(test)]
mod tests;
