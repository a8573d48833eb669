//! A port as the switch creates it from configuration: [`PortSpec`].
//!
//! The spec is data (what `add-port` says, what the daemon saves); each
//! port kind reads and checks its own options from it
//! ([`AfPacketConfig::from_spec`](super::afpacket::AfPacketConfig::from_spec),
//! [`XdpModeRequest::from_spec`](super::afxdp::XdpModeRequest::from_spec),
//! [`TunnelConfig::from_spec`](super::tunnel::TunnelConfig::from_spec)).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{PortNo, VlanMode};
use crate::{Error, Result};

/// A port the switch creates itself (not an embedder's in-process port).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    /// The port's name: the kernel interface it attaches (afpacket, afxdp)
    /// or creates (internal); any name for a tunnel.
    pub name: String,
    /// `afpacket`, `afxdp`, `internal`, `vxlan` or `gre`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its number on the bridge; chosen by the switch when `None`, and
    /// always recorded in a saved configuration so flow rules that name
    /// port numbers keep meaning the same port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_no: Option<PortNo>,
    /// `tag=N`: an access port of VLAN N.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<u16>,
    /// `trunks=A,B`: the VLANs a trunk carries (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trunks: Vec<u16>,
    /// Backend options (`options:KEY=VALUE`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    /// Not saved: the port lasts until the daemon stops.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub transient: bool,
}

/// The port types [`PortSpec::kind`] can name.
pub const PORT_TYPES: &[&str] = &["afpacket", "afxdp", "internal", "vxlan", "gre"];

/// The backend a port on an existing kernel interface gets without `type=`.
pub const DEFAULT_KERNEL_TYPE: &str = "afpacket";

impl PortSpec {
    /// A port of type `kind` named `name`, every setting at its default.
    pub fn new(name: &str, kind: &str) -> PortSpec {
        PortSpec {
            name: name.to_string(),
            kind: kind.to_string(),
            port_no: None,
            tag: None,
            trunks: Vec::new(),
            options: BTreeMap::new(),
            transient: false,
        }
    }

    /// Its VLAN membership.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad VLAN or both `tag` and `trunks`.
    pub fn vlan_mode(&self) -> Result<VlanMode> {
        match (self.tag, self.trunks.is_empty()) {
            (Some(_), false) => Err(Error::invalid("port", "give 'tag' or 'trunks', not both")),
            (Some(t), true) => VlanMode::access(t),
            (None, _) => VlanMode::trunk(&self.trunks),
        }
    }

    /// Sets `tag` and `trunks` to describe `vlan`.
    pub fn set_vlan(&mut self, vlan: &VlanMode) {
        let d = vlan.describe();
        (self.tag, self.trunks) = (d.tag, d.trunks);
    }

    /// Checks the type, the VLAN settings and every option, so a bad port
    /// is refused before anything is changed.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming what is wrong.
    pub fn validate(&self) -> Result<()> {
        self.vlan_mode()?;
        match self.kind.as_str() {
            "afpacket" => super::afpacket::AfPacketConfig::from_spec(self).map(|_| ()),
            "afxdp" => super::afxdp::XdpModeRequest::from_spec(self).map(|_| ()),
            "internal" => self.no_options(&[]),
            "vxlan" | "gre" => crate::port::tunnel::TunnelConfig::from_spec(self).map(|_| ()),
            other => Err(Error::invalid(
                "port type",
                format!("'{other}' is not a port type this switch creates ({})", PORT_TYPES.join(", ")),
            )),
        }
    }

    pub(crate) fn no_options(&self, known: &[&str]) -> Result<()> {
        match self.options.keys().find(|k| !known.contains(&k.as_str())) {
            None => Ok(()),
            Some(k) => Err(Error::invalid(
                "option",
                format!(
                    "'{k}' is not an option of {} ports{}",
                    self.kind,
                    if known.is_empty() { String::new() } else { format!(" ({})", known.join(", ")) }
                ),
            )),
        }
    }

    pub(crate) fn option<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>> {
        self.options
            .get(key)
            .map(|v| v.parse().map_err(|_| Error::invalid("option", format!("{key}={v} is not a valid value"))))
            .transpose()
    }
}
