//! Ports the switch creates from a [`PortSpec`], and the whole
//! configuration as data ([`Switch::config`], [`Switch::apply_config`]):
//! what a daemon saves after each change and replays at start.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::Switch;
use crate::config::ConfigChange;
use crate::config::{BridgeConfig, FailMode, MirrorSpec, PortKind, PortSpec, StaticMac, SwitchConfig};
use crate::flow::{RuleSet, TableError};
use crate::packet::SpareBuffers;
use crate::port::afpacket::{AfPacketConfig, AfPacketPort};
use crate::port::afxdp::{AfXdpPort, XdpModeRequest};
use crate::port::deferred::{Deferred, Opener, PortStatus};
use crate::port::internal::InternalPort;
use crate::port::memory;
use crate::port::tunnel::native::{Native, NativeTunnelPort, check_uplink};
use crate::port::tunnel::{TunnelConfig, TunnelPort};
use crate::port::vhost_user::{VhostUserConfig, VhostUserPort};
use crate::port::{Port, PortConfig, PortNo};
use crate::{Error, Result};

/// What to do when a kernel port cannot be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnOpenError {
    /// Fail the call and change nothing (an operator adding a port).
    Fail,
    /// Keep the port, down, with the error shown, and open it once it can
    /// be (a daemon replaying its saved configuration).
    Defer,
}

/// Opens the backend `spec` names (checked by [`PortSpec::validate`]);
/// in-process queues (a vhost-user port's) are `queue_len` deep and draw
/// on `spare`.
fn opener(
    bridge: &str,
    spec: &PortSpec,
    status: &PortStatus,
    queue_len: usize,
    spare: SpareBuffers,
    native: &Arc<Native>,
) -> Result<Opener> {
    let name = spec.name.clone();
    Ok(match spec.kind {
        PortKind::AfPacket => {
            let cfg = AfPacketConfig::from_spec(spec)?;
            Box::new(move |_| Ok(Box::new(AfPacketPort::open(&name, cfg)?) as Box<dyn Port>))
        }
        PortKind::AfXdp => {
            let mode = XdpModeRequest::from_spec(spec)?;
            Box::new(move |_| Ok(Box::new(AfXdpPort::open(&name, mode)?) as Box<dyn Port>))
        }
        PortKind::Internal => Box::new(move |_| Ok(Box::new(InternalPort::create(&name)?) as Box<dyn Port>)),
        PortKind::Vxlan | PortKind::Gre if spec.options.contains_key("uplink") => {
            let cfg = TunnelConfig::from_spec(spec)?;
            let (status, native, bridge) = (status.clone(), native.clone(), bridge.to_string());
            Box::new(move |wakeup| {
                let p = NativeTunnelPort::open(&name, &bridge, cfg.clone(), &native, wakeup.clone(), status.clone())?;
                Ok(Box::new(p) as Box<dyn Port>)
            })
        }
        PortKind::Vxlan | PortKind::Gre => {
            let cfg = TunnelConfig::from_spec(spec)?;
            let status = status.clone();
            Box::new(move |wakeup| {
                Ok(Box::new(TunnelPort::open(&name, cfg.clone(), wakeup.clone(), status.clone())?) as Box<dyn Port>)
            })
        }
        PortKind::VhostUser => {
            let cfg = VhostUserConfig::from_spec(spec)?;
            Box::new(move |wakeup| {
                let (queues, handle) = memory::pair(&name, 0, queue_len, wakeup.clone(), spare.clone());
                Ok(Box::new(VhostUserPort::start(&name, queues, handle, &cfg)?) as Box<dyn Port>)
            })
        }
    })
}

impl Switch {
    /// Creates the port `spec` describes on `bridge`: attaches a kernel
    /// interface (`afpacket`, `afxdp`) or creates a TAP device
    /// (`internal`), with the spec's VLAN settings, options and port number
    /// (the lowest free one if it names none). Returns the port number.
    ///
    /// With [`OnOpenError::Defer`], a port whose interface is missing or
    /// cannot be opened is added anyway, down, with the reason as its
    /// `error`, and opened once the interface appears.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad spec (checked before anything
    /// changes), as [`Switch::add_port`], and with [`OnOpenError::Fail`]
    /// the backend's error.
    pub fn add_port_spec(&self, bridge: &str, spec: &PortSpec, on_error: OnOpenError) -> Result<PortNo> {
        spec.validate()?;
        let config = PortConfig { vlan: spec.vlan_mode()? };
        let status = PortStatus::default();
        if let Some(up) = spec.options.get("uplink").filter(|_| spec.kind.is_tunnel()) {
            check_uplink(&self.native, bridge, up, on_error == OnOpenError::Fail)?;
            if let Some(u) = self.native.take_upkeep() {
                let native = self.native.clone();
                self.slow.add(u, Box::new(move |_| native.upkeep_failed()));
            }
        }
        let mut open = opener(bridge, spec, &status, self.queue_len, self.spare.clone(), &self.native)?;
        let s = status.clone();
        self.attach_as(bridge, &spec.name, config, Some(spec.clone()), status, move |_, wakeup| match open(&wakeup) {
            Ok(p) => Ok(p),
            Err(why) if on_error == OnOpenError::Defer => {
                Ok(Box::new(Deferred::new(spec.kind, &spec.name, open, why.to_string(), s, wakeup)))
            }
            Err(why) => Err(why),
        })
    }

    /// The spec of the port named `name` and its bridge; `None` for a port
    /// the switch did not create (an in-process or embedder's port).
    ///
    /// # Errors
    /// [`Error::PortNotFound`].
    pub fn port_spec(&self, name: &str) -> Result<(String, Option<PortSpec>)> {
        let reg = self.registry();
        reg.bridges
            .iter()
            .find_map(|(b, e)| e.ports.get(name).map(|p| (b.clone(), p.spec.clone())))
            .ok_or_else(|| Error::PortNotFound(name.to_string()))
    }

    /// Changes a port the switch created to match `spec` (same name): the
    /// VLAN settings in place, anything else (type, options) by reopening
    /// the port under the same port number. Nothing changes if the new
    /// spec is invalid or the port cannot be reopened.
    ///
    /// # Errors
    /// [`Error::PortNotFound`]; [`Error::InvalidArgument`] for a bad spec
    /// or a port the switch did not create; the backend's error.
    pub fn set_port_spec(&self, spec: &PortSpec) -> Result<()> {
        spec.validate()?;
        let (bridge, old) = self.port_spec(&spec.name)?;
        let old = old.ok_or_else(|| {
            Error::invalid("port", format!("'{}' is an embedder's port; only its VLAN can be set", spec.name))
        })?;
        // VLANs, persistence and external ids change in place.
        let backend = |s: &PortSpec| PortSpec {
            tag: None,
            trunks: vec![],
            vlan_mode: None,
            port_no: None,
            transient: false,
            external_ids: Default::default(),
            ..s.clone()
        };
        let same_backend = backend(spec) == backend(&old);
        if same_backend {
            self.set_port_vlan(&spec.name, spec.vlan_mode()?)?;
            let mut reg = self.registry();
            if let Some(e) = reg.bridges.get_mut(&bridge).and_then(|b| b.ports.get_mut(&spec.name)) {
                e.spec = Some(PortSpec { port_no: old.port_no, ..spec.clone() });
            }
            return Ok(());
        }
        let new = PortSpec { port_no: old.port_no, ..spec.clone() };
        // Removing the port forgets its static MACs: they come back with it.
        let macs = self.static_macs_on(&spec.name)?;
        self.del_port(&spec.name)?;
        let r = match self.add_port_spec(&bridge, &new, OnOpenError::Fail) {
            Ok(_) => Ok(()),
            Err(e) => {
                // Put the old port back as it was; its interface was fine.
                let _ = self.add_port_spec(&bridge, &old, OnOpenError::Defer);
                Err(e)
            }
        };
        self.put_static_macs(&spec.name, &macs);
        r
    }

    /// The static MAC entries (VLAN, MAC) on port `name`.
    ///
    /// # Errors
    /// [`Error::PortNotFound`].
    pub(crate) fn static_macs_on(&self, name: &str) -> Result<Vec<(u16, crate::MacAddr)>> {
        let (table, port_no) = self.port_mac_table(name)?;
        Ok(table
            .entries(self.now_ms())
            .into_iter()
            .filter(|e| e.is_static && e.port == port_no)
            .map(|e| (e.vlan, e.mac))
            .collect())
    }

    /// Puts `macs` back as static entries on port `name` (as many as its
    /// bridge takes; a port that is gone takes none).
    pub(crate) fn put_static_macs(&self, name: &str, macs: &[(u16, crate::MacAddr)]) {
        if let Ok((table, port_no)) = self.port_mac_table(name) {
            for &(vlan, mac) in macs {
                let _ = table.add_static(vlan, mac, port_no);
            }
        }
    }

    /// The MAC table of port `name`'s bridge, and the port's number.
    fn port_mac_table(&self, name: &str) -> Result<(Arc<crate::mac::MacTable>, PortNo)> {
        let reg = self.registry();
        reg.bridges
            .values()
            .find_map(|b| b.ports.get(name).map(|p| (b.mac.clone(), p.port_no)))
            .ok_or_else(|| Error::PortNotFound(name.to_string()))
    }

    /// Replaces `bridge`'s whole flow table with `flows` (`ovs-ofctl`
    /// text) in one step: the datapath sees the old table or the new one.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the bad rule (nothing changes),
    /// [`Error::Full`], [`Error::BridgeNotFound`].
    pub fn replace_flows(&self, bridge: &str, flows: &[String]) -> Result<()> {
        let _change = self.change();
        let (index, rules) = self.parse_rules(bridge, flows)?;
        let mut fresh = RuleSet::new(self.flow_limit);
        fresh.check_room(&rules).map_err(|TableError::Full| Error::Full("flow table"))?;
        let set = self.rule_set(bridge)?;
        let copy = Arc::new(rules.clone());
        let r = self.apply_sized(rules.len(), move |dp| {
            if let Some(t) = dp.flows_mut(index) {
                t.delete(&Default::default(), false);
                let _ = t.add_with_stats(copy.to_vec());
            }
        });
        if super::took_effect(&r) {
            self.record(|| ConfigChange::SetFlows {
                bridge: bridge.to_string(),
                flows: rules.iter().map(|(s, _)| s.to_text()).collect(),
            });
            fresh.add(rules);
            *super::lock_rules(&set) = fresh;
        }
        r
    }

    /// The configuration: every bridge with its MAC-table settings, the
    /// ports the switch created (with `include_transient`, the transient
    /// ones too; an embedder's ports never), flow rules and static MACs.
    /// Read on the control side: no datapath thread is involved.
    ///
    /// # Errors
    /// None today; kept for configurations that may need the datapath.
    pub fn config(&self, include_transient: bool) -> Result<SwitchConfig> {
        let ct = self.ct.config();
        let conntrack = (ct != crate::conntrack::ConntrackConfig::default()).then_some(ct);
        Ok(SwitchConfig { bridges: self.bridge_configs(include_transient, true), conntrack, ..SwitchConfig::default() })
    }

    /// Every bridge's settings, ports and static MACs as journal records,
    /// by name (what [`Switch::config`] says less the flows).
    pub(crate) fn bridge_settings(&self) -> BTreeMap<String, ConfigChange> {
        self.bridge_configs(false, false)
            .into_iter()
            .map(|b| {
                let c = ConfigChange::SetBridge {
                    name: b.name.clone(),
                    mac_table: b.mac_table,
                    ports: b.ports,
                    static_macs: b.static_macs,
                    fail_mode: b.fail_mode,
                    mirrors: b.mirrors,
                };
                (b.name, c)
            })
            .collect()
    }

    fn bridge_configs(&self, include_transient: bool, with_flows: bool) -> Vec<BridgeConfig> {
        // Read under the registry lock; flows are read after it.
        type Snapshot = (
            String,
            Arc<crate::mac::MacTable>,
            Vec<PortSpec>,
            BTreeMap<PortNo, String>,
            Arc<Mutex<RuleSet>>,
            (Option<FailMode>, Vec<MirrorSpec>),
        );
        let groups: BTreeMap<String, Vec<String>> = {
            let reg = self.registry();
            reg.bridges
                .iter()
                .map(|(n, b)| (n.clone(), b.groups.values().map(|g| g.spec.to_text()).collect()))
                .collect()
        };
        let bridges: Vec<Snapshot> = {
            let reg = self.registry();
            reg.bridges
                .iter()
                .map(|(name, b)| {
                    let mut ports: Vec<PortSpec> = b
                        .ports
                        .values()
                        .filter_map(|p| p.spec.clone())
                        .filter(|s| include_transient || !s.transient)
                        .collect();
                    ports.sort_by_key(|s| s.port_no);
                    // Static MACs are kept for the ports listed; with
                    // `include_transient` (an undo snapshot), every port.
                    let listed = |p: &super::PortEntry| p.spec.as_ref().is_some_and(|s| !s.transient);
                    let names = b
                        .ports
                        .iter()
                        .filter(|(_, p)| include_transient || listed(p))
                        .map(|(n, p)| (p.port_no, n.clone()))
                        .collect();
                    let mirrors = b.mirrors.iter().filter(|m| !m.transient).map(|m| m.spec.clone()).collect();
                    let settings = (b.fail_mode, mirrors);
                    (name.clone(), b.mac.clone(), ports, names, b.rules.clone(), settings)
                })
                .collect()
        };
        let now = self.now_ms();
        bridges
            .into_iter()
            .map(|(name, mac, ports, names, rules, (fail_mode, mirrors))| {
                let flows = if with_flows { super::lock_rules(&rules).texts(now) } else { Vec::new() };
                let static_macs = mac
                    .entries(now)
                    .into_iter()
                    .filter(|e| e.is_static)
                    .filter_map(|e| Some(StaticMac { port: names.get(&e.port)?.clone(), vlan: e.vlan, mac: e.mac }))
                    .collect();
                let groups = if with_flows { groups.get(&name).cloned().unwrap_or_default() } else { Vec::new() };
                BridgeConfig { name, mac_table: mac.config(), ports, flows, static_macs, groups, fail_mode, mirrors }
            })
            .collect()
    }

    /// Adds the bridge `b` describes, whole: its ports (a kernel port that
    /// cannot be opened yet is kept down with its error, see
    /// [`OnOpenError::Defer`]), flow table and static MACs. If any part is
    /// refused, the bridge is removed again and the error returned.
    ///
    /// # Errors
    /// [`Error::BridgeExists`], [`Error::InvalidArgument`] for a bad port
    /// spec, rule or static MAC.
    pub fn add_bridge_config(&self, b: &BridgeConfig) -> Result<()> {
        for p in &b.ports {
            p.validate().map_err(|e| Error::invalid("port", format!("'{}': {e}", p.name)))?;
        }
        self.add_bridge_with(&b.name, b.mac_table)?;
        let filled = (|| {
            for p in &b.ports {
                self.add_port_spec(&b.name, p, OnOpenError::Defer)?;
            }
            self.replace_groups(&b.name, &b.groups)?;
            self.replace_flows(&b.name, &b.flows)?;
            let table = self.mac_table(&b.name)?;
            let (_, ports) = self.bridge_ports(&b.name)?;
            for s in &b.static_macs {
                let port = ports.get(&s.port).copied().ok_or_else(|| {
                    Error::invalid("static mac", format!("{} names port '{}', not on the bridge", s.mac, s.port))
                })?;
                table.add_static(s.vlan, s.mac, port)?;
            }
            // After the flows: a secure bridge's saved table is as it was.
            if b.fail_mode.is_some() {
                self.set_fail_mode_only(&b.name, b.fail_mode)?;
            }
            for m in &b.mirrors {
                self.replay_mirror(&b.name, m.clone())?;
            }
            Ok(())
        })();
        if filled.is_err() {
            let _ = self.del_bridge(&b.name);
        }
        filled
    }

    /// Builds everything in `config` on a switch that has none of its
    /// bridges: all of it, or (on an error) none of it.
    ///
    /// # Errors
    /// As [`Switch::add_bridge_config`], naming the bridge.
    pub fn apply_config(&self, config: &SwitchConfig) -> Result<()> {
        if let Some(ct) = &config.conntrack {
            ct.validate().map_err(|why| Error::invalid("conntrack settings", why))?;
        }
        for (i, b) in config.bridges.iter().enumerate() {
            if let Err(e) = self.add_bridge_config(b) {
                for done in &config.bridges[..i] {
                    let _ = self.del_bridge(&done.name);
                }
                return Err(match e {
                    Error::InvalidArgument { what, why } => {
                        Error::InvalidArgument { what, why: format!("bridge '{}': {why}", b.name) }
                    }
                    e => e,
                });
            }
        }
        if let Some(ct) = &config.conntrack {
            self.ct.apply_config(ct).map_err(|why| Error::invalid("conntrack settings", why))?;
        }
        Ok(())
    }
}
