//! The CNI result: what ADD prints, shaped for the version asked (before 1.0.0 each IP names
//! its `version`; from 1.0.0 on it does not). A result from earlier plugins of a chain
//! (`prevResult`) is read in any of those shapes and amended, keeping what this plugin does not
//! know about.
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::spec::{code, CniError};
use crate::api::AttachmentInfo;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Dns,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// The namespace's path, for an interface inside a container; none on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    /// "4" or "6" before 1.0.0; gone from 1.0.0 on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl CniResult {
    /// An earlier plugin's result, or an empty one.
    pub fn previous(prev: Option<&Value>) -> Result<Self, CniError> {
        match prev {
            None => Ok(Self::default()),
            Some(value) => serde_json::from_value(value.clone()).map_err(|e| {
                CniError::new(code::DECODE, "prevResult could not be decoded as a CNI result").details(e.to_string())
            }),
        }
    }

    /// Adds an attachment: the host-side veth and the interface inside, its address (naming the
    /// inside interface by its index) and the default route through the gateway, for each
    /// family it has.
    pub fn add_attachment(&mut self, attached: &AttachmentInfo) {
        self.interfaces.push(Interface {
            name: attached.host_interface.clone(),
            mac: attached.host_mac.clone(),
            ..Interface::default()
        });
        self.interfaces.push(Interface {
            name: attached.ifname.clone(),
            mac: attached.mac.clone(),
            sandbox: Some(attached.netns.clone()),
            ..Interface::default()
        });
        let v4 = Some((&attached.address, &attached.gateway, "0.0.0.0/0"));
        let v6 = attached.address6.as_ref().zip(attached.gateway6.as_ref()).map(|(a, g)| (a, g, "::/0"));
        for (address, gateway, default) in v4.into_iter().chain(v6) {
            self.ips.push(IpConfig {
                address: address.clone(),
                gateway: Some(gateway.clone()),
                interface: Some(self.interfaces.len() - 1),
                ..IpConfig::default()
            });
            self.routes.push(Route { dst: default.into(), gw: Some(gateway.clone()), ..Route::default() });
        }
    }

    /// The result as `version` writes it.
    pub fn shaped_for(mut self, version: &str, parsed: (u32, u32, u32)) -> Self {
        self.cni_version = version.to_owned();
        for ip in &mut self.ips {
            ip.version = (parsed < (1, 0, 0)).then(|| {
                let v6 = ip.address.contains(':');
                if v6 { "6" } else { "4" }.to_owned()
            });
        }
        self
    }
}
