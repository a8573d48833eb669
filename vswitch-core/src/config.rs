//! The switch's configuration as data, and where a daemon keeps it.
//!
//! [`SwitchConfig`] is what [`Switch::config`](crate::Switch::config)
//! reports and [`Switch::apply_config`](crate::Switch::apply_config)
//! rebuilds: bridges with their MAC-table settings, ports with their type,
//! options, VLAN settings and port numbers, flow rules and static MACs.
//! Learned MACs and counters are state, not configuration, and are not in
//! it. With the `daemon` feature, `Store` writes it to a JSON file
//! atomically (temporary file, fsync, rename, fsync of the directory) and
//! reads it back, setting aside a file it cannot read instead of
//! overwriting it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::conntrack::ConntrackConfig;
use crate::mac::MacTableConfig;
pub use crate::port::spec::{DEFAULT_KERNEL_TYPE, PortKind, PortSpec};
use crate::wire::MacAddr;
use crate::{Error, Result};
#[cfg(feature = "daemon")]
pub use store::{Loaded, Store};

#[cfg(feature = "daemon")]
mod store;

/// The file format's version, written into every file.
pub const FORMAT_VERSION: u32 = 1;

/// Everything a daemon persists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct SwitchConfig {
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// Which snapshot of a daemon's store this is (0 outside a file).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: u64,
    /// The bridges, by name.
    pub bridges: Vec<BridgeConfig>,
    /// Conntrack's limits and timeouts (shared by every bridge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conntrack: Option<ConntrackConfig>,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        SwitchConfig { version: FORMAT_VERSION, generation: 0, bridges: Vec::new(), conntrack: None }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl SwitchConfig {
    /// The bridge named `name`.
    pub fn bridge(&self, name: &str) -> Option<&BridgeConfig> {
        self.bridges.iter().find(|b| b.name == name)
    }

    /// The port named `name` and the name of its bridge.
    pub fn port(&self, name: &str) -> Option<(&str, &PortSpec)> {
        self.bridges.iter().find_map(|b| b.ports.iter().find(|p| p.name == name).map(|p| (b.name.as_str(), p)))
    }
}

/// One bridge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct BridgeConfig {
    /// Its name.
    pub name: String,
    /// MAC learning settings.
    #[serde(default)]
    pub mac_table: MacTableConfig,
    /// Its ports, by port number.
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    /// Its flow table, one `ovs-ofctl` rule per entry (with priority and
    /// cookie), highest priority first.
    #[serde(default)]
    pub flows: Vec<String>,
    /// MAC table entries configured by hand.
    #[serde(default)]
    pub static_macs: Vec<StaticMac>,
    /// Its groups, one `ovs-ofctl add-group` text per entry, by number.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// What it does with a packet when its flow table is empty (absent:
    /// drop, with the default rule put in at creation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_mode: Option<FailMode>,
    /// Its port mirrors, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<MirrorSpec>,
}

/// Open vSwitch's `fail_mode`, for a switch that has no controller: what
/// a bridge does when its flow table holds no rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum FailMode {
    /// An empty table switches as NORMAL (a learning switch), as Open
    /// vSwitch's fail-open mode.
    Standalone,
    /// An empty table drops everything; setting it removes a lone default
    /// rule (`priority=0,actions=NORMAL`), which a secure bridge of Open
    /// vSwitch never gets.
    Secure,
}

impl FailMode {
    /// Its name, as `fail_mode=` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            FailMode::Standalone => "standalone",
            FailMode::Secure => "secure",
        }
    }
}

impl std::str::FromStr for FailMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "standalone" => Ok(FailMode::Standalone),
            "secure" => Ok(FailMode::Secure),
            _ => Err(Error::invalid("fail_mode", format!("'{s}' is not standalone or secure"))),
        }
    }
}

/// A port mirror (Open vSwitch's Mirror table): copies of what the
/// selected ports receive (`select_src_port`) and send
/// (`select_dst_port`), optionally only of some VLANs, go out of
/// `output_port`, as they were on the wire. The output port is used for
/// nothing else: NORMAL never floods to it and what it receives is dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct MirrorSpec {
    /// Its name, unique on the bridge.
    pub name: String,
    /// Every port's traffic, both directions (the output port's aside).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub select_all: bool,
    /// Ports whose received frames are copied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub select_src_port: Vec<String>,
    /// Ports whose sent frames are copied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub select_dst_port: Vec<String>,
    /// Only frames of these VLANs (as the bridge sees them); empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub select_vlan: Vec<u16>,
    /// Where the copies go.
    pub output_port: String,
}

impl BridgeConfig {
    /// A bridge named `name` with the default MAC-table settings and
    /// nothing on it; fill in the rest field by field.
    pub fn new(name: &str) -> BridgeConfig {
        BridgeConfig {
            name: name.to_string(),
            mac_table: MacTableConfig::default(),
            ports: Vec::new(),
            flows: Vec::new(),
            static_macs: Vec::new(),
            groups: Vec::new(),
            fail_mode: None,
            mirrors: Vec::new(),
        }
    }
}

impl MirrorSpec {
    /// A mirror named `name` whose copies go out of `output_port`,
    /// selecting nothing yet: set `select_all`, `select_src_port` or
    /// `select_dst_port` (and `select_vlan`).
    ///
    /// ```
    /// use vswitch_core::config::MirrorSpec;
    /// let mut m = MirrorSpec::new("span", "tap0");
    /// m.select_src_port = vec!["vm1".into()];
    /// assert!(m.validate().is_ok());
    /// ```
    pub fn new(name: &str, output_port: &str) -> MirrorSpec {
        MirrorSpec {
            name: name.to_string(),
            select_all: false,
            select_src_port: Vec::new(),
            select_dst_port: Vec::new(),
            select_vlan: Vec::new(),
            output_port: output_port.to_string(),
        }
    }

    /// Checks what can be checked without the bridge.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the problem.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| Err(Error::invalid("mirror", format!("'{}': {why}", self.name)));
        if self.name.is_empty() || self.name.len() > 64 {
            return bad("a mirror's name is 1 to 64 characters".into());
        }
        if !self.select_all && self.select_src_port.is_empty() && self.select_dst_port.is_empty() {
            return bad("it selects nothing (select_all, select_src_port or select_dst_port)".into());
        }
        let all = self.select_src_port.iter().chain(&self.select_dst_port);
        if let Some(p) = all.clone().find(|p| **p == self.output_port) {
            return bad(format!("'{p}' is its output port and cannot also be selected"));
        }
        if let Some(v) = self.select_vlan.iter().find(|v| **v > 4094) {
            return bad(format!("select_vlan {v}: a VLAN id is 0 to 4094"));
        }
        Ok(())
    }
}

/// A static MAC table entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct StaticMac {
    /// The port's name.
    pub port: String,
    /// The VLAN.
    pub vlan: u16,
    /// The address.
    pub mac: MacAddr,
}

impl StaticMac {
    /// `mac` in `vlan`, behind port `port`.
    pub fn new(port: &str, vlan: u16, mac: MacAddr) -> StaticMac {
        StaticMac { port: port.to_string(), vlan, mac }
    }
}

/// One change to the configuration, as a daemon journals it between two
/// snapshots (its `Store`, feature `daemon`), or as
/// [`Switch::take_changes`](crate::Switch::take_changes) reports it. Each says what a part of the configuration
/// now is, so replaying them in order rebuilds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum ConfigChange {
    /// A bridge was added, with no ports and the default rule.
    NewBridge {
        /// Its name.
        name: String,
        /// Its MAC table settings.
        mac_table: MacTableConfig,
    },
    /// A bridge was removed, with everything on it.
    DelBridge {
        /// Its name.
        name: String,
    },
    /// A bridge's settings, ports and static MACs are now these (its flows
    /// are unchanged).
    SetBridge {
        /// Its name.
        name: String,
        /// MAC learning settings.
        mac_table: MacTableConfig,
        /// Its ports.
        ports: Vec<PortSpec>,
        /// Its static MACs.
        static_macs: Vec<StaticMac>,
        /// Its fail mode.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fail_mode: Option<FailMode>,
        /// Its mirrors.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        mirrors: Vec<MirrorSpec>,
    },
    /// Rules were added, each replacing any rule of the same priority and
    /// match.
    AddFlows {
        /// The bridge.
        bridge: String,
        /// The rules, as text.
        flows: Vec<String>,
    },
    /// Conntrack's settings are now these.
    SetConntrack {
        /// The whole of them.
        config: ConntrackConfig,
    },
    /// A bridge's groups are now these (after any group change: groups
    /// are few, so the whole list is recorded).
    SetGroups {
        /// The bridge.
        bridge: String,
        /// Its groups, as `add-group` text.
        groups: Vec<String>,
    },
    /// Rules' actions were changed in place (each keeps its place in the
    /// table's order; its priority and match identify it).
    ModFlows {
        /// The bridge.
        bridge: String,
        /// The rules as they now are, as text.
        flows: Vec<String>,
    },
    /// Rules were removed (each named by its text: its priority and match
    /// identify it).
    DelFlows {
        /// The bridge.
        bridge: String,
        /// The rules, as text.
        flows: Vec<String>,
    },
    /// A bridge's whole flow table was replaced.
    SetFlows {
        /// The bridge.
        bridge: String,
        /// The rules, as text.
        flows: Vec<String>,
    },
}

/// A bridge's rules while a journal is replayed: by identity, in order.
#[derive(Default)]
struct FlowList {
    /// (priority, text), in order of addition.
    texts: Vec<Option<(u16, String)>>,
    index: std::collections::HashMap<crate::flow::RuleKey, usize>,
}

impl FlowList {
    fn key(text: &str) -> Result<crate::flow::RuleKey> {
        let s = crate::flow::FlowSpec::parse(text, &|_: &str| None)
            .map_err(|e| Error::invalid("journal", format!("rule '{text}': {}", e.0)))?;
        Ok((s.matching, s.priority))
    }

    fn of(flows: &[String]) -> Result<FlowList> {
        let mut l = FlowList::default();
        for f in flows {
            l.add(f)?;
        }
        Ok(l)
    }

    fn add(&mut self, text: &str) -> Result<()> {
        let key = Self::key(text)?;
        if let Some(&i) = self.index.get(&key) {
            self.texts[i] = None;
        }
        self.index.insert(key, self.texts.len());
        self.texts.push(Some((key.1, text.to_string())));
        Ok(())
    }

    fn modify(&mut self, text: &str) -> Result<()> {
        let key = Self::key(text)?;
        match self.index.get(&key) {
            Some(&i) => self.texts[i] = Some((key.1, text.to_string())),
            None => self.add(text)?,
        }
        Ok(())
    }

    fn remove(&mut self, text: &str) -> Result<()> {
        if let Some(i) = self.index.remove(&Self::key(text)?) {
            self.texts[i] = None;
        }
        Ok(())
    }

    /// The rules as a switch lists them: highest priority first, then in
    /// order of addition.
    fn into_texts(self) -> Vec<String> {
        let mut v: Vec<(u16, String)> = self.texts.into_iter().flatten().collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.0));
        v.into_iter().map(|(_, t)| t).collect()
    }
}

/// The rules of bridge `name` while replaying (made from the bridge's
/// flows on first use); None if there is no such bridge.
fn flow_list<'a>(
    bridges: &[BridgeConfig],
    lists: &'a mut BTreeMap<String, FlowList>,
    name: &str,
) -> Result<Option<&'a mut FlowList>> {
    if !lists.contains_key(name) {
        let Some(b) = bridges.iter().find(|b| b.name == name) else { return Ok(None) };
        lists.insert(name.to_string(), FlowList::of(&b.flows)?);
    }
    Ok(lists.get_mut(name))
}

impl SwitchConfig {
    /// Applies journalled `changes` in order.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a rule text that does not parse.
    pub fn replay(&mut self, changes: &[ConfigChange]) -> Result<()> {
        let mut lists: BTreeMap<String, FlowList> = BTreeMap::new();
        for c in changes {
            match c {
                ConfigChange::NewBridge { name, mac_table } => {
                    self.bridges.retain(|b| &b.name != name);
                    lists.remove(name);
                    self.bridges.push(BridgeConfig {
                        name: name.clone(),
                        mac_table: *mac_table,
                        ports: Vec::new(),
                        flows: vec![crate::flow::default_rule().to_text()],
                        static_macs: Vec::new(),
                        groups: Vec::new(),
                        fail_mode: None,
                        mirrors: Vec::new(),
                    });
                }
                ConfigChange::DelBridge { name } => {
                    self.bridges.retain(|b| &b.name != name);
                    lists.remove(name);
                }
                ConfigChange::SetBridge { name, mac_table, ports, static_macs, fail_mode, mirrors } => {
                    if let Some(b) = self.bridges.iter_mut().find(|b| &b.name == name) {
                        b.mac_table = *mac_table;
                        b.ports = ports.clone();
                        b.static_macs = static_macs.clone();
                        b.fail_mode = *fail_mode;
                        b.mirrors = mirrors.clone();
                    }
                }
                ConfigChange::AddFlows { bridge, flows } => {
                    if let Some(l) = flow_list(&self.bridges, &mut lists, bridge)? {
                        flows.iter().try_for_each(|f| l.add(f))?;
                    }
                }
                ConfigChange::ModFlows { bridge, flows } => {
                    if let Some(l) = flow_list(&self.bridges, &mut lists, bridge)? {
                        flows.iter().try_for_each(|f| l.modify(f))?;
                    }
                }
                ConfigChange::DelFlows { bridge, flows } => {
                    if let Some(l) = flow_list(&self.bridges, &mut lists, bridge)? {
                        flows.iter().try_for_each(|f| l.remove(f))?;
                    }
                }
                ConfigChange::SetFlows { bridge, flows } => {
                    if self.bridges.iter().any(|b| &b.name == bridge) {
                        lists.insert(bridge.clone(), FlowList::of(flows)?);
                    }
                }
                ConfigChange::SetConntrack { config } => self.conntrack = Some(config.clone()),
                ConfigChange::SetGroups { bridge, groups } => {
                    if let Some(b) = self.bridges.iter_mut().find(|b| &b.name == bridge) {
                        b.groups = groups.clone();
                    }
                }
            }
        }
        for (name, l) in lists {
            if let Some(b) = self.bridges.iter_mut().find(|b| b.name == name) {
                b.flows = l.into_texts();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_specs_are_checked_whole() {
        let mut p = PortSpec::new("x", PortKind::AfPacket);
        p.options.insert("blocks".into(), "lots".into());
        assert!(p.validate().unwrap_err().to_string().contains("blocks=lots"));
        p.options.clear();
        p.options.insert("remote_ip".into(), "1.2.3.4".into());
        assert!(p.validate().unwrap_err().to_string().contains("'remote_ip' is not an option of afpacket"));
        assert!(
            "patch"
                .parse::<PortKind>()
                .unwrap_err()
                .to_string()
                .contains("afpacket, afxdp, internal, vxlan, gre, vhostuser")
        );
        assert!(PortSpec::new("x", PortKind::Vxlan).validate().unwrap_err().to_string().contains("remote_ip"));
        let mut p = PortSpec::new("x", PortKind::Internal);
        p.tag = Some(5000);
        assert!(p.validate().is_err());
        p.tag = Some(5);
        p.validate().unwrap();
    }

    #[test]
    fn vhostuser_ports_need_a_socket_and_take_a_mode_and_mtu() {
        let mut p = PortSpec::new("vm1", PortKind::VhostUser);
        assert!(p.validate().unwrap_err().to_string().contains("options:socket=PATH"));
        p.options.insert("socket".into(), "/run/vm1.sock".into());
        p.validate().unwrap();
        p.options.insert("mode".into(), "sideways".into());
        assert!(p.validate().unwrap_err().to_string().contains("mode=sideways"));
        p.options.insert("mode".into(), "client".into());
        p.options.insert("mtu".into(), "9000".into());
        let cfg = crate::port::vhost_user::VhostUserConfig::from_spec(&p).unwrap();
        assert_eq!((cfg.mode, cfg.mtu), (crate::port::vhost_user::VhostUserMode::Client, 9000));
        p.options.insert("mtu".into(), "20".into());
        assert!(p.validate().is_err());
        assert_eq!("vhostuser".parse::<PortKind>().unwrap(), PortKind::VhostUser);
    }

    #[test]
    fn an_unknown_port_type_in_a_file_is_an_error_not_a_guess() {
        let text = r#"{"version":1,"bridges":[{"name":"br0","ports":[{"name":"p","type":"patch"}]}]}"#;
        let e = serde_json::from_str::<SwitchConfig>(text).unwrap_err().to_string();
        assert!(e.contains("unknown variant `patch`") && e.contains("afpacket"), "{e}");
        let ok = text.replace("patch", "afxdp");
        let c: SwitchConfig = serde_json::from_str(&ok).unwrap();
        assert_eq!(c.bridges[0].ports[0].kind, PortKind::AfXdp);
    }
}
