//! A port as the switch creates it from configuration: [`PortSpec`].
//!
//! The spec is data (what `add-port` says, what the daemon saves); each
//! port kind reads and checks its own options from it
//! ([`AfPacketConfig::from_spec`](super::afpacket::AfPacketConfig::from_spec),
//! [`XdpModeRequest::from_spec`](super::afxdp::XdpModeRequest::from_spec),
//! [`TunnelConfig::from_spec`](super::tunnel::TunnelConfig::from_spec)).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{PortNo, VlanMode, VlanModeName};
use crate::{Error, Result};

/// A port the switch creates itself (not an embedder's in-process port).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    /// The port's name: the kernel interface it attaches (afpacket, afxdp)
    /// or creates (internal); any name for a tunnel.
    pub name: String,
    /// What backs the port (`type` in the saved file and the protocol).
    #[serde(rename = "type")]
    pub kind: PortKind,
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
    /// `vlan_mode=`: how `tag` and `trunks` combine (absent: access with a
    /// tag, trunk without); `native-tagged` and `native-untagged` take both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan_mode: Option<VlanModeName>,
    /// Backend options (`options:KEY=VALUE`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    /// Not saved: the port lasts until the daemon stops.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub transient: bool,
    /// What the port is to whoever made it (`external_ids:KEY=VALUE`, as
    /// Open vSwitch's column): a container network's port carries its
    /// `container_id`, `ifname` and `network`. The switch never reads them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub external_ids: BTreeMap<String, String>,
}

/// The kinds of port the switch creates itself. An unknown name is an
/// error wherever it is read (a request, a saved file), never a guess.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum PortKind {
    /// An existing kernel interface through an AF_PACKET ring.
    AfPacket,
    /// An existing kernel interface through AF_XDP sockets.
    AfXdp,
    /// A TAP device the switch creates (the host's own port).
    Internal,
    /// A VXLAN tunnel endpoint.
    Vxlan,
    /// A GRE tunnel endpoint.
    Gre,
    /// A VM's virtio-net device over a vhost-user socket
    /// (`options:socket=PATH`, `options:mode=server|client`).
    VhostUser,
}

impl PortKind {
    /// Every kind, in the order the docs list them.
    pub const ALL: [PortKind; 6] =
        [PortKind::AfPacket, PortKind::AfXdp, PortKind::Internal, PortKind::Vxlan, PortKind::Gre, PortKind::VhostUser];

    /// Its name, as `type=` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            PortKind::AfPacket => "afpacket",
            PortKind::AfXdp => "afxdp",
            PortKind::Internal => "internal",
            PortKind::Vxlan => "vxlan",
            PortKind::Gre => "gre",
            PortKind::VhostUser => "vhostuser",
        }
    }

    /// A port on an existing kernel interface (it waits for the interface
    /// to exist); the others create their own device or socket.
    pub fn needs_interface(self) -> bool {
        matches!(self, PortKind::AfPacket | PortKind::AfXdp)
    }

    /// A tunnel endpoint.
    pub fn is_tunnel(self) -> bool {
        matches!(self, PortKind::Vxlan | PortKind::Gre)
    }
}

impl std::fmt::Display for PortKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for PortKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<PortKind> {
        PortKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| {
            let names: Vec<&str> = PortKind::ALL.iter().map(|k| k.as_str()).collect();
            Error::invalid("port type", format!("'{s}' is not a port type this switch creates ({})", names.join(", ")))
        })
    }
}

/// The backend a port on an existing kernel interface gets without `type=`.
pub const DEFAULT_KERNEL_TYPE: PortKind = PortKind::AfPacket;

impl PortSpec {
    /// A port of type `kind` named `name`, every setting at its default.
    pub fn new(name: &str, kind: PortKind) -> PortSpec {
        PortSpec {
            name: name.to_string(),
            kind,
            port_no: None,
            tag: None,
            trunks: Vec::new(),
            vlan_mode: None,
            options: BTreeMap::new(),
            transient: false,
            external_ids: BTreeMap::new(),
        }
    }

    /// Its VLAN membership.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad VLAN or settings that
    /// contradict each other (see [`VlanMode::from_columns`]).
    pub fn vlan_mode(&self) -> Result<VlanMode> {
        VlanMode::from_columns(self.vlan_mode, self.tag, &self.trunks)
    }

    /// Sets `tag`, `trunks` and `vlan_mode` to describe `vlan`.
    pub fn set_vlan(&mut self, vlan: &VlanMode) {
        let d = vlan.describe();
        (self.tag, self.trunks, self.vlan_mode) = (d.tag, d.trunks, d.mode);
    }

    /// Checks the VLAN settings and every option, so a bad port
    /// is refused before anything is changed.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming what is wrong.
    pub fn validate(&self) -> Result<()> {
        self.vlan_mode()?;
        match self.kind {
            PortKind::AfPacket => super::afpacket::AfPacketConfig::from_spec(self).map(|_| ()),
            PortKind::AfXdp => super::afxdp::XdpModeRequest::from_spec(self).map(|_| ()),
            PortKind::Internal => self.no_options(&[]),
            PortKind::Vxlan | PortKind::Gre => crate::port::tunnel::TunnelConfig::from_spec(self).map(|_| ()),
            PortKind::VhostUser => crate::port::vhost_user::VhostUserConfig::from_spec(self).map(|_| ()),
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
