//! Bridge settings that change while it runs (MAC learning limits, fail
//! mode), port mirrors, and `mod-port`'s per-port flags.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;

use super::{Switch, took_effect};
use crate::config::{FailMode, MirrorSpec};
use crate::datapath::{DpMirror, MirrorCounters, PortFlags};
use crate::mac::MacTableConfig;
use crate::port::VlanSet;
use crate::{Error, Result};

/// Most mirrors on one bridge.
pub const MAX_MIRRORS: usize = 32;

/// A mirror with its counters, as [`Switch::mirrors`] lists it.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct MirrorInfo {
    /// What it is.
    #[serde(flatten)]
    pub spec: MirrorSpec,
    /// Copies sent out of the output port.
    pub tx_packets: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Why it copies nothing now (its output port is missing), if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A bridge's mirror on the control side.
#[derive(Debug, Clone)]
pub(super) struct Mirror {
    pub spec: MirrorSpec,
    pub counters: Arc<MirrorCounters>,
    /// Not saved (a capture's).
    pub transient: bool,
}

impl Switch {
    /// Changes `bridge`'s MAC learning settings at once: a shorter aging
    /// time applies to the entries there are, a smaller table evicts the
    /// oldest learned entries.
    ///
    /// # Errors
    /// [`Error::BridgeNotFound`], [`Error::InvalidArgument`] for bad settings.
    pub fn set_mac_table_config(&self, bridge: &str, config: MacTableConfig) -> Result<()> {
        let _change = self.change();
        self.mac_table(bridge)?.set_config(config)
    }

    /// `bridge`'s fail mode (`None`: not set).
    ///
    /// # Errors
    /// [`Error::BridgeNotFound`].
    pub fn fail_mode(&self, bridge: &str) -> Result<Option<FailMode>> {
        let reg = self.registry();
        Ok(reg.bridges.get(bridge).ok_or_else(|| Error::BridgeNotFound(bridge.to_string()))?.fail_mode)
    }

    /// Sets `bridge`'s fail mode (see [`FailMode`]). Setting `secure` on a
    /// bridge whose table holds only the default rule removes that rule.
    ///
    /// # Errors
    /// [`Error::BridgeNotFound`], or the datapath's.
    pub fn set_fail_mode(&self, bridge: &str, mode: Option<FailMode>) -> Result<()> {
        if mode == Some(FailMode::Secure) {
            let rows = self.dump_flows(bridge)?;
            let lone_default = matches!(&rows[..], [r] if r.table == 0
                && r.priority == 0
                && r.cookie == 0
                && r.matching.is_empty()
                && r.actions == "NORMAL"
                && r.idle_timeout == 0
                && r.hard_timeout == 0);
            if lone_default {
                self.del_flows(bridge, None, false)?;
            }
        }
        self.set_fail_mode_only(bridge, mode)
    }

    /// Sets the fail mode, the table left as it is.
    pub(super) fn set_fail_mode_only(&self, bridge: &str, mode: Option<FailMode>) -> Result<()> {
        let _change = self.change();
        let index = self.bridge_ports(bridge)?.0;
        let on = mode == Some(FailMode::Standalone);
        let r = self.apply(move |dp| dp.set_fail_open(index, on));
        if took_effect(&r)
            && let Some(b) = self.registry().bridges.get_mut(bridge)
        {
            b.fail_mode = mode;
        }
        r
    }

    /// Adds a port mirror to `bridge` (see [`MirrorSpec`]); the ports it
    /// names must be on the bridge. A mirror of the same name is replaced.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad spec or a port not on the
    /// bridge, [`Error::Full`] past [`MAX_MIRRORS`], [`Error::BridgeNotFound`].
    pub fn add_mirror(&self, bridge: &str, spec: MirrorSpec) -> Result<()> {
        self.add_mirror_with(bridge, spec, false)
    }

    /// As [`Switch::add_mirror`], for a mirror that is not part of the
    /// configuration (not in [`Switch::config`]): a packet capture's.
    ///
    /// # Errors
    /// As [`Switch::add_mirror`].
    pub fn add_mirror_transient(&self, bridge: &str, spec: MirrorSpec) -> Result<()> {
        self.add_mirror_with(bridge, spec, true)
    }

    /// A saved mirror, as it was: a port it names that is gone (deleted,
    /// or transient and not saved) is simply not mirrored, as before the
    /// restart.
    pub(super) fn replay_mirror(&self, bridge: &str, spec: MirrorSpec) -> Result<()> {
        self.add_mirror_checked(bridge, spec, false, false)
    }

    fn add_mirror_with(&self, bridge: &str, spec: MirrorSpec, transient: bool) -> Result<()> {
        self.add_mirror_checked(bridge, spec, transient, true)
    }

    fn add_mirror_checked(&self, bridge: &str, spec: MirrorSpec, transient: bool, check: bool) -> Result<()> {
        spec.validate()?;
        let _change = self.change();
        let (_, ports) = self.bridge_ports(bridge)?;
        let named = spec.select_src_port.iter().chain(&spec.select_dst_port).chain(std::iter::once(&spec.output_port));
        if let Some(p) = named.clone().find(|p| check && !ports.contains_key(*p)) {
            return Err(Error::invalid("mirror", format!("'{}': port '{p}' is not on bridge '{bridge}'", spec.name)));
        }
        let mut mirrors = self.registry().bridges.get(bridge).map(|b| b.mirrors.clone()).unwrap_or_default();
        if let Some(o) = mirrors.iter().find(|m| m.spec.name != spec.name && m.spec.output_port == spec.output_port) {
            return Err(Error::invalid(
                "mirror",
                format!("'{}': port '{}' is already mirror '{}''s output", spec.name, spec.output_port, o.spec.name),
            ));
        }
        let counters = match mirrors.iter().position(|m| m.spec.name == spec.name) {
            Some(i) => mirrors.remove(i).counters,
            None if mirrors.len() >= MAX_MIRRORS => return Err(Error::Full("mirrors")),
            None => Arc::default(),
        };
        mirrors.push(Mirror { spec, counters, transient });
        self.set_mirrors_locked(bridge, mirrors)
    }

    /// Removes `bridge`'s mirror `name`; false if there was none.
    ///
    /// # Errors
    /// [`Error::BridgeNotFound`], or the datapath's.
    pub fn del_mirror(&self, bridge: &str, name: &str) -> Result<bool> {
        let _change = self.change();
        let mut mirrors = {
            let reg = self.registry();
            reg.bridges.get(bridge).ok_or_else(|| Error::BridgeNotFound(bridge.to_string()))?.mirrors.clone()
        };
        let before = mirrors.len();
        mirrors.retain(|m| m.spec.name != name);
        if mirrors.len() == before {
            return Ok(false);
        }
        self.set_mirrors_locked(bridge, mirrors).map(|()| true)
    }

    /// `bridge`'s mirrors with their counters.
    ///
    /// # Errors
    /// [`Error::BridgeNotFound`].
    pub fn mirrors(&self, bridge: &str) -> Result<Vec<MirrorInfo>> {
        let reg = self.registry();
        let b = reg.bridges.get(bridge).ok_or_else(|| Error::BridgeNotFound(bridge.to_string()))?;
        Ok(b.mirrors
            .iter()
            .map(|m| MirrorInfo {
                spec: m.spec.clone(),
                tx_packets: m.counters.packets.load(Ordering::Relaxed),
                tx_bytes: m.counters.bytes.load(Ordering::Relaxed),
                error: (!b.ports.contains_key(&m.spec.output_port))
                    .then(|| format!("its output port '{}' is not on the bridge", m.spec.output_port)),
            })
            .collect())
    }

    /// Resolves `mirrors`' port names and hands them to the datapath (the
    /// caller holds the change lock).
    fn set_mirrors_locked(&self, bridge: &str, mirrors: Vec<Mirror>) -> Result<()> {
        let (index, ports) = self.bridge_ports(bridge)?;
        let names = |list: &[String]| list.iter().filter_map(|n| ports.get(n).copied()).collect::<Vec<_>>();
        let dp: Vec<DpMirror> = mirrors
            .iter()
            .filter_map(|m| {
                let out = *ports.get(&m.spec.output_port)?;
                let vlans = (!m.spec.select_vlan.is_empty()).then(|| {
                    let mut s = VlanSet::new();
                    m.spec.select_vlan.iter().for_each(|v| s.insert(*v));
                    Arc::new(s)
                });
                Some(DpMirror {
                    all: m.spec.select_all,
                    src: names(&m.spec.select_src_port),
                    dst: names(&m.spec.select_dst_port),
                    vlans,
                    out,
                    counters: m.counters.clone(),
                })
            })
            .collect();
        let r = self.apply(move |d| d.set_mirrors(index, dp.clone()));
        if took_effect(&r)
            && let Some(b) = self.registry().bridges.get_mut(bridge)
        {
            b.mirrors = mirrors;
        }
        r
    }

    /// After a port of `bridge` came or went: its mirrors resolved again
    /// (the caller holds the change lock).
    pub(super) fn refresh_mirrors(&self, bridge: &str) {
        let mirrors = self.registry().bridges.get(bridge).map(|b| b.mirrors.clone()).unwrap_or_default();
        if !mirrors.is_empty() {
            let _ = self.set_mirrors_locked(bridge, mirrors);
        }
    }

    /// Puts `b`'s MAC settings, fail mode, flows and mirrors back (a
    /// transaction's undo).
    pub(crate) fn restore_settings(&self, b: &crate::config::BridgeConfig) -> Result<()> {
        self.set_mac_table_config(&b.name, b.mac_table)?;
        self.set_fail_mode_only(&b.name, b.fail_mode)?;
        self.replace_flows(&b.name, &b.flows)?;
        let _change = self.change();
        let keep: Vec<Mirror> = self
            .registry()
            .bridges
            .get(&b.name)
            .map(|x| x.mirrors.iter().filter(|m| m.transient).cloned().collect())
            .unwrap_or_default();
        let mut mirrors: Vec<Mirror> =
            b.mirrors.iter().map(|m| Mirror { spec: m.clone(), counters: Arc::default(), transient: false }).collect();
        mirrors.extend(keep);
        self.set_mirrors_locked(&b.name, mirrors)
    }

    /// Port `name`'s `mod-port` flags.
    ///
    /// # Errors
    /// [`Error::PortNotFound`].
    pub fn port_flags(&self, name: &str) -> Result<PortFlags> {
        self.port_entry(name, |p| p.flags)
    }

    /// Sets port `name`'s `mod-port` flags: down (nothing received is
    /// switched, nothing sent; the kernel interface is left as it is) and
    /// no-flood. They last while the port does, as Open vSwitch's port
    /// config bits: they are not saved.
    ///
    /// # Errors
    /// [`Error::PortNotFound`], or the datapath's.
    pub fn set_port_flags(&self, name: &str, flags: PortFlags) -> Result<()> {
        let _change = self.change();
        let slot = self.port_entry(name, |p| p.slot)?;
        let r = self.apply(move |dp| dp.set_port_flags(slot, flags));
        if took_effect(&r) {
            let mut reg = self.registry();
            if let Some(p) = reg.bridges.values_mut().find_map(|b| b.ports.get_mut(name)) {
                p.flags = flags;
            }
        }
        r
    }
}
