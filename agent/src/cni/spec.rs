//! What the CNI spec (1.1.0) says a plugin reads and writes: the environment, the network
//! configuration on stdin, the error object, and the versions. Unknown configuration keys are
//! tolerated, as the spec requires (podman passes `capabilities` through, for one).
use std::{collections::BTreeMap, path::PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The spec versions this plugin speaks, oldest first; results are shaped for the one asked.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
pub const LATEST_VERSION: &str = "1.1.0";

/// The spec's error codes (1-99 are the spec's, 100 and up the plugin's own).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const BAD_ENVIRONMENT: u32 = 4;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// bpfnet's own: the agent refused the operation (its message says why).
    pub const REFUSED: u32 = 100;
}

/// A version as a comparable triple; None for what is not `X.Y.Z`.
pub fn parse_version(version: &str) -> Option<(u32, u32, u32)> {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    let triple = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(triple)
}

/// The CNI error object, written to stdout with a non-zero exit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniError {
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self { cni_version: LATEST_VERSION.into(), code, msg: msg.into(), details: String::new() }
    }

    pub fn details(self, details: impl Into<String>) -> Self {
        Self { details: details.into(), ..self }
    }
}

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

/// The `CNI_*` environment variables, as read before anything else.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Environment {
    pub command: Option<String>,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
}

impl Environment {
    pub fn from_process() -> Self {
        let var = |name: &str| std::env::var(name).ok();
        Self {
            command: var("CNI_COMMAND"),
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
        }
    }

    pub fn command(&self) -> Result<Command, CniError> {
        match self.command.as_deref() {
            Some("ADD") => Ok(Command::Add),
            Some("DEL") => Ok(Command::Del),
            Some("CHECK") => Ok(Command::Check),
            Some("VERSION") => Ok(Command::Version),
            Some("STATUS") => Ok(Command::Status),
            Some("GC") => Ok(Command::Gc),
            Some(other) => Err(CniError::new(
                code::BAD_ENVIRONMENT,
                format!("CNI_COMMAND={other:?} is not a CNI command; use ADD, DEL, CHECK, VERSION, STATUS or GC"),
            )),
            None => Err(CniError::new(
                code::BAD_ENVIRONMENT,
                "CNI_COMMAND is not set: bpfnet-cni is a CNI plugin, run by a container runtime",
            )),
        }
    }

    /// A variable the command needs, non-empty.
    pub fn require(&self, name: &str) -> Result<&str, CniError> {
        let value = match name {
            "CNI_CONTAINERID" => &self.container_id,
            "CNI_NETNS" => &self.netns,
            "CNI_IFNAME" => &self.ifname,
            _ => unreachable!("no such CNI variable {name}"),
        };
        value.as_deref().filter(|v| !v.is_empty()).ok_or_else(|| {
            CniError::new(code::BAD_ENVIRONMENT, format!("{name} is not set; the runtime must set it for this command"))
        })
    }
}

/// The network configuration (one plugin's entry of a configuration list, with the runtime's
/// additions).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "type")]
    pub plugin_type: String,
    /// The bpfnet network; default: the configuration's `name`.
    #[serde(default)]
    pub network: Option<String>,
    /// With it, a network that does not exist yet is created with this subnet.
    #[serde(default)]
    pub subnet: Option<String>,
    /// With `subnet`, the network is created dual stack with this IPv6 subnet.
    #[serde(default)]
    pub subnet6: Option<String>,
    /// The agent's API socket.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
    #[serde(default)]
    pub prev_result: Option<Value>,
    /// GC: the attachments the runtime still knows of.
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<ValidAttachment>>,
}

impl NetConf {
    /// Decodes stdin: not JSON, or not a configuration, is the spec's decode failure (6).
    pub fn decode(stdin: &[u8]) -> Result<Self, CniError> {
        serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(code::DECODE, "the network configuration on stdin could not be decoded")
                .details(e.to_string())
        })
    }

    /// Its `cniVersion`, if this plugin speaks it.
    pub fn version(&self) -> Result<(u32, u32, u32), CniError> {
        match parse_version(&self.cni_version) {
            Some(v) if SUPPORTED_VERSIONS.contains(&self.cni_version.as_str()) => Ok(v),
            _ => Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion {:?} is not supported by bpfnet-cni; use one of {}",
                    self.cni_version,
                    SUPPORTED_VERSIONS.join(", ")
                ),
            )),
        }
    }

    /// The bpfnet network this configuration names.
    pub fn network(&self) -> Result<&str, CniError> {
        match self.network.as_deref().filter(|n| !n.is_empty()) {
            Some(network) => Ok(network),
            None if !self.name.is_empty() => Ok(&self.name),
            None => Err(CniError::new(
                code::INVALID_CONFIG,
                "the network configuration names no bpfnet network: set \"network\" (or \"name\")",
            )),
        }
    }
}

/// What the runtime adds for the capabilities the plugin declares.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// One entry of the `portMappings` capability. podman writes `hostPort`, containerd
/// `HostPort`; a range arrives as one entry per port.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PortMapping {
    #[serde(alias = "HostPort", rename = "hostPort")]
    pub host_port: u16,
    #[serde(alias = "ContainerPort", rename = "containerPort")]
    pub container_port: u16,
    #[serde(default, alias = "Protocol")]
    pub protocol: String,
    #[serde(default, alias = "HostIP", alias = "hostIp", rename = "hostIP")]
    pub host_ip: String,
}

impl PortMapping {
    /// The mapping in bpfnet's `--publish` syntax.
    pub fn publish_spec(&self) -> Result<String, CniError> {
        let invalid = |what: String| CniError::new(code::INVALID_CONFIG, format!("portMappings: {what}"));
        let protocol = match self.protocol.to_ascii_lowercase().as_str() {
            "" | "tcp" => "tcp",
            "udp" => "udp",
            other => return Err(invalid(format!("protocol {other:?} is not supported; bpfnet publishes tcp and udp"))),
        };
        let ip = match self.host_ip.as_str() {
            "" => String::new(),
            text => match text.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(ip)) => format!("{ip}:"),
                Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]:"),
                Err(_) => return Err(invalid(format!("hostIP {text:?} is not an IP address"))),
            },
        };
        Ok(format!("{ip}{}:{}/{protocol}", self.host_port, self.container_port))
    }
}

/// One entry of `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}
