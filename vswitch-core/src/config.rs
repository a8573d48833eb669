//! The switch's configuration as data, and where a daemon keeps it.
//!
//! [`SwitchConfig`] is what [`Switch::config`](crate::Switch::config)
//! reports and [`Switch::apply_config`](crate::Switch::apply_config)
//! rebuilds: bridges with their MAC-table settings, ports with their type,
//! options, VLAN settings and port numbers, flow rules and static MACs.
//! Learned MACs and counters are state, not configuration, and are not in
//! it. [`Store`] writes it to a JSON file atomically (temporary file, fsync,
//! rename, fsync of the directory) and reads it back, setting aside a file
//! it cannot read instead of overwriting it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::mac::MacTableConfig;
use crate::port::afpacket::AfPacketConfig;
use crate::port::afxdp::XdpModeRequest;
use crate::wire::MacAddr;
use crate::{Error, PortNo, Result, VlanMode};

/// The file format's version, written into every file.
pub const FORMAT_VERSION: u32 = 1;

/// Everything a daemon persists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchConfig {
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// The bridges, by name.
    pub bridges: Vec<BridgeConfig>,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        SwitchConfig { version: FORMAT_VERSION, bridges: Vec::new() }
    }
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
}

/// A static MAC table entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticMac {
    /// The port's name.
    pub port: String,
    /// The VLAN.
    pub vlan: u16,
    /// The address.
    pub mac: MacAddr,
}

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
            "afpacket" => self.afpacket_config().map(|_| ()),
            "afxdp" => self.xdp_mode().map(|_| ()),
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

    /// The AF_PACKET ring settings from `block_size`, `blocks` and
    /// `block_timeout_ms`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an unknown option or a bad value.
    pub fn afpacket_config(&self) -> Result<AfPacketConfig> {
        self.no_options(&["block_size", "blocks", "block_timeout_ms"])?;
        let d = AfPacketConfig::default();
        let c = AfPacketConfig {
            block_size: self.option("block_size")?.unwrap_or(d.block_size),
            blocks: self.option("blocks")?.unwrap_or(d.blocks),
            block_timeout_ms: self.option("block_timeout_ms")?.unwrap_or(d.block_timeout_ms),
        };
        c.validate()?;
        Ok(c)
    }

    /// The XDP attach mode from `xdp_mode` (`best-effort`, `native`,
    /// `generic`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an unknown option or a bad value.
    pub fn xdp_mode(&self) -> Result<XdpModeRequest> {
        self.no_options(&["xdp_mode"])?;
        match self.options.get("xdp_mode").map(String::as_str) {
            None | Some("best-effort") => Ok(XdpModeRequest::BestEffort),
            Some("native") => Ok(XdpModeRequest::Native),
            Some("generic") => Ok(XdpModeRequest::Generic),
            Some(v) => Err(Error::invalid("option", format!("xdp_mode={v}: expected best-effort, native or generic"))),
        }
    }
}

fn file_error(what: String, e: std::io::Error) -> Error {
    Error::io("configuration file", std::io::Error::new(e.kind(), format!("{what}: {e}")))
}

/// A configuration file.
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
}

/// What [`Store::load`] found.
#[derive(Debug)]
pub enum Loaded {
    /// No file yet: a first start.
    Missing,
    /// The configuration.
    Config(SwitchConfig),
    /// The file could not be read as a configuration; it was renamed to
    /// `kept` and nothing was loaded.
    Corrupt {
        /// Why it could not be read.
        reason: String,
        /// Where it is now.
        kept: PathBuf,
    },
}

impl Store {
    /// A store at `path`, creating its directory.
    ///
    /// # Errors
    /// [`Error::Io`] if the directory cannot be created.
    pub fn new(path: impl Into<PathBuf>) -> Result<Store> {
        let path = path.into();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| file_error(format!("create {}", dir.display()), e))?;
        }
        Ok(Store { path })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file. One that cannot be parsed is moved aside to
    /// `PATH.corrupt-SECONDS` (never overwritten) and reported.
    ///
    /// # Errors
    /// [`Error::Io`] if the file exists but cannot be read or moved.
    pub fn load(&self) -> Result<Loaded> {
        let text = match std::fs::read(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::Missing),
            Err(e) => return Err(file_error(format!("read {}", self.path.display()), e)),
        };
        let reason = match serde_json::from_slice::<SwitchConfig>(&text) {
            Ok(c) if c.version == FORMAT_VERSION => return Ok(Loaded::Config(c)),
            Ok(c) => format!("format version {} (this vswitchd reads {FORMAT_VERSION})", c.version),
            Err(e) => e.to_string(),
        };
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut kept = PathBuf::from(format!("{}.corrupt-{secs}", self.path.display()));
        let mut n = 1;
        while kept.exists() {
            kept = PathBuf::from(format!("{}.corrupt-{secs}-{n}", self.path.display()));
            n += 1;
        }
        std::fs::rename(&self.path, &kept)
            .map_err(|e| file_error(format!("move {} aside to {}", self.path.display(), kept.display()), e))?;
        Ok(Loaded::Corrupt { reason, kept })
    }

    /// Writes `config` atomically: a reader (or a crash) sees the old file
    /// or the new one, never a mix.
    ///
    /// # Errors
    /// [`Error::Io`] if any step fails; the old file is then untouched.
    pub fn save(&self, config: &SwitchConfig) -> Result<()> {
        let io = |what: &str, e| file_error(format!("{what} {}", self.path.display()), e);
        let mut text = serde_json::to_vec_pretty(config).map_err(|e| io("serialize", std::io::Error::other(e)))?;
        text.push(b'\n');
        let tmp = PathBuf::from(format!("{}.tmp", self.path.display()));
        let mut f = std::fs::File::create(&tmp).map_err(|e| io("create a temporary file for", e))?;
        f.write_all(&text).and_then(|_| f.sync_all()).map_err(|e| io("write", e))?;
        drop(f);
        std::fs::rename(&tmp, &self.path).map_err(|e| io("replace", e))?;
        // The rename itself is durable once the directory is synced.
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io("sync the directory of", e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("vswitch-config-{}-{name}", std::process::id())).join("conf.json")
    }

    #[test]
    fn save_then_load_round_trips() {
        let path = temp("rt");
        let store = Store::new(&path).unwrap();
        assert!(matches!(store.load().unwrap(), Loaded::Missing));
        let mut p = PortSpec::new("veth0", "afxdp");
        p.port_no = Some(3);
        p.tag = Some(10);
        p.options.insert("xdp_mode".into(), "generic".into());
        let cfg = SwitchConfig {
            version: FORMAT_VERSION,
            bridges: vec![BridgeConfig {
                name: "br0".into(),
                mac_table: MacTableConfig::default(),
                ports: vec![p],
                flows: vec!["priority=0,actions=NORMAL".into()],
                static_macs: vec![StaticMac {
                    port: "veth0".into(),
                    vlan: 10,
                    mac: "02:00:00:00:00:01".parse().unwrap(),
                }],
            }],
        };
        store.save(&cfg).unwrap();
        match store.load().unwrap() {
            Loaded::Config(c) => assert_eq!(c, cfg),
            other => panic!("{other:?}"),
        }
        assert!(!PathBuf::from(format!("{}.tmp", path.display())).exists());
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn a_corrupt_file_is_set_aside_not_overwritten() {
        let path = temp("corrupt");
        let store = Store::new(&path).unwrap();
        std::fs::write(&path, b"{\"version\":1,\"bridges\":[{\"name\":").unwrap();
        let Loaded::Corrupt { reason, kept } = store.load().unwrap() else { panic!("not reported") };
        assert!(reason.contains("EOF"), "{reason}");
        assert_eq!(std::fs::read(&kept).unwrap(), b"{\"version\":1,\"bridges\":[{\"name\":");
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn port_specs_are_checked_whole() {
        let mut p = PortSpec::new("x", "afpacket");
        p.options.insert("blocks".into(), "lots".into());
        assert!(p.validate().unwrap_err().to_string().contains("blocks=lots"));
        p.options.clear();
        p.options.insert("remote_ip".into(), "1.2.3.4".into());
        assert!(p.validate().unwrap_err().to_string().contains("'remote_ip' is not an option of afpacket"));
        assert!(PortSpec::new("x", "patch").validate().is_err());
        assert!(PortSpec::new("x", "vxlan").validate().unwrap_err().to_string().contains("remote_ip"));
        let mut p = PortSpec::new("x", "internal");
        p.tag = Some(5000);
        assert!(p.validate().is_err());
        p.tag = Some(5);
        p.validate().unwrap();
    }
}
