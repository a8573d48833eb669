use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::config::{BridgeConfig, DEFAULT_KERNEL_TYPE, PortKind, PortSpec, Store};
use crate::wire::MacAddr;
use crate::{Error, ErrorKind, OnOpenError, PortNo, Switch, VlanMode};

/// Every method the control protocol serves.
pub const METHODS: &[&str] = &[
    "system.version",
    "system.list_methods",
    "system.status",
    "bridge.add",
    "bridge.del",
    "bridge.list",
    "bridge.exists",
    "port.add",
    "port.del",
    "port.list",
    "port.bridge",
    "port.set",
    "fdb.show",
    "fdb.flush",
    "fdb.stats",
    "fdb.add",
    "fdb.del",
    "flow.add",
    "flow.stage",
    "flow.commit",
    "flow.discard",
    "flow.del",
    "flow.mod",
    "flow.dump",
    "flow.tables",
    "group.add",
    "group.mod",
    "group.del",
    "group.dump",
    "ct.dump",
    "ct.flush",
    "ct.stats",
    "ct.set_limits",
    "ct.set_timeouts",
    "trace",
    "stats.get",
    "pmd.stats",
    "pmd.stats_clear",
    "tnl.route_show",
    "tnl.neigh_show",
    "tnl.neigh_flush",
    "tnl.neigh_aging",
    "system.health",
    "config.get",
    "bridge.set",
    "port.mod",
    "port.show",
    "mirror.add",
    "mirror.del",
    "mirror.list",
    "capture.start",
    "capture.read",
    "capture.stop",
    "transact",
];

/// Methods that change the configuration: saved after they succeed, and
/// the ones `transact` can undo.
const CHANGES: &[&str] = &[
    "bridge.add",
    "bridge.del",
    "port.add",
    "port.del",
    "port.set",
    "fdb.add",
    "fdb.del",
    "flow.add",
    "flow.commit",
    "flow.del",
    "flow.mod",
    "group.add",
    "group.mod",
    "group.del",
    "ct.set_limits",
    "ct.set_timeouts",
    "bridge.set",
    "mirror.add",
    "mirror.del",
];

/// A JSON-RPC error.
struct RpcError {
    code: i64,
    message: String,
    kind: &'static str,
    /// The change is recorded although the call failed: a datapath thread
    /// that timed out will apply it when it resumes. It is saved.
    recorded: bool,
}

impl RpcError {
    fn new(code: i64, kind: &'static str, message: impl Into<String>) -> Self {
        RpcError { code, message: message.into(), kind, recorded: false }
    }

    fn params(message: impl Into<String>) -> Self {
        Self::new(-32602, "invalid_params", message)
    }
}

impl From<Error> for RpcError {
    fn from(e: Error) -> Self {
        let kind = match e.kind() {
            ErrorKind::NotFound => "not_found",
            ErrorKind::Exists => "exists",
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::Full => "full",
            ErrorKind::Io => "io",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::DatapathFailed => "datapath_failed",
        };
        let recorded = matches!(e, Error::Timeout { outcome: crate::Outcome::WillApply, .. });
        RpcError { recorded, ..RpcError::new(-32000, kind, e.to_string()) }
    }
}

fn params<T: DeserializeOwned>(p: Value) -> Result<T, RpcError> {
    let p = if p.is_null() { json!({}) } else { p };
    serde_json::from_value(p).map_err(|e| RpcError::params(format!("invalid params: {e}")))
}

fn ok<T: serde::Serialize>(v: T) -> Result<Value, RpcError> {
    serde_json::to_value(v).map_err(|e| RpcError::new(-32603, "internal", e.to_string()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Named {
    name: String,
    /// For `port.del`: the bridge the port must be on.
    #[serde(default)]
    bridge: Option<String>,
    #[serde(default)]
    may_exist: bool,
    #[serde(default)]
    if_exists: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BridgeArg {
    bridge: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PortName {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PortAdd {
    bridge: String,
    name: String,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    tag: Option<u16>,
    #[serde(default)]
    trunks: Vec<u16>,
    #[serde(default)]
    vlan_mode: Option<crate::VlanModeName>,
    #[serde(default)]
    options: BTreeMap<String, String>,
    #[serde(default)]
    port_no: Option<PortNo>,
    #[serde(default)]
    transient: bool,
    #[serde(default)]
    external_ids: BTreeMap<String, String>,
    #[serde(default)]
    may_exist: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PortSet {
    name: String,
    /// With `trunks`, replaces the VLAN settings (neither: unchanged);
    /// with `columns`, only the tag (null: none).
    #[serde(default, deserialize_with = "present")]
    tag: Option<Option<u16>>,
    #[serde(default, deserialize_with = "present")]
    trunks: Option<Option<Vec<u16>>>,
    /// `vlan_mode` (null: back to what `tag` and `trunks` imply).
    #[serde(default, deserialize_with = "present")]
    vlan_mode: Option<Option<crate::VlanModeName>>,
    /// Each VLAN column given is set alone, the others kept (as
    /// `ovs-vsctl set`); without, `tag`/`trunks` replace the VLAN settings.
    #[serde(default)]
    columns: bool,
    /// Options to set; a null value removes the option.
    #[serde(default)]
    options: BTreeMap<String, Option<String>>,
    /// External ids to set; a null value removes the id.
    #[serde(default)]
    external_ids: BTreeMap<String, Option<String>>,
    #[serde(default)]
    transient: Option<bool>,
}

/// A field that may be absent (`None`), null (`Some(None)`) or set.
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Op {
    method: String,
    #[serde(default)]
    params: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Transact {
    ops: Vec<Op>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FdbEntry {
    bridge: String,
    #[serde(default)]
    port: Option<Value>,
    #[serde(default)]
    vlan: u16,
    mac: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlowsAdd {
    bridge: String,
    flows: Vec<String>,
    /// The table becomes exactly `flows` (rules already there unchanged
    /// keep their counters), as `ovs-ofctl replace-flows`.
    #[serde(default)]
    replace: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Commit {
    bundle: u64,
    /// As [`FlowsAdd::replace`].
    #[serde(default)]
    replace: bool,
}

/// Adds `flows` to `bridge`, or with `replace` makes them the table.
fn add_or_replace(sw: &Switch, bridge: &str, flows: &[String], replace: bool) -> Result<Value, RpcError> {
    let flows: Vec<&str> = flows.iter().map(String::as_str).collect();
    if replace {
        let (changed, removed) = sw.sync_flows(bridge, "", &flows)?;
        return ok(json!({ "added": changed, "removed": removed }));
    }
    ok(json!({ "added": sw.add_flows(bridge, &flows)? }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlowsStage {
    bridge: String,
    flows: Vec<String>,
    /// Adds to this bundle (none: starts one).
    #[serde(default)]
    bundle: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BundleArg {
    bundle: u64,
}

/// Most bundles open at once.
const MAX_BUNDLES: usize = 16;
/// Most rules one bundle holds.
const MAX_BUNDLE_RULES: usize = 4_000_000;
/// A bundle untouched this long is dropped.
const BUNDLE_IDLE: std::time::Duration = std::time::Duration::from_secs(120);

/// Rules staged for one `flow.commit`: how a load too large for one
/// request line (see [`MAX_LINE`](super::MAX_LINE)) is still added all at
/// once or not at all, as Open vSwitch's bundles are.
#[derive(Debug)]
struct Bundle {
    bridge: String,
    flows: Vec<String>,
    touched: std::time::Instant,
}

/// The open bundles.
#[derive(Debug, Default)]
pub(crate) struct Bundles {
    open: std::sync::Mutex<(u64, BTreeMap<u64, Bundle>)>,
}

impl Bundles {
    fn stage(&self, a: FlowsStage) -> Result<Value, RpcError> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let (next, bundles) = &mut *open;
        bundles.retain(|_, b| b.touched.elapsed() < BUNDLE_IDLE);
        let id = match a.bundle {
            Some(id) => id,
            None if bundles.len() >= MAX_BUNDLES => {
                return Err(Error::Full("open bundles (commit or discard one)").into());
            }
            None => {
                *next += 1;
                bundles.insert(
                    *next,
                    Bundle { bridge: a.bridge.clone(), flows: Vec::new(), touched: std::time::Instant::now() },
                );
                *next
            }
        };
        let b = bundles.get_mut(&id).ok_or_else(|| RpcError::params(format!("no open bundle {id}")))?;
        if b.bridge != a.bridge {
            return Err(RpcError::params(format!("bundle {id} is for bridge '{}'", b.bridge)));
        }
        if b.flows.len() + a.flows.len() > MAX_BUNDLE_RULES {
            return Err(Error::Full("bundle").into());
        }
        b.flows.extend(a.flows);
        b.touched = std::time::Instant::now();
        ok(json!({ "bundle": id, "staged": b.flows.len() }))
    }

    /// The bridge bundle `id` is for, if it is open.
    fn bridge_of(&self, id: u64) -> Option<String> {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).1.get(&id).map(|b| b.bridge.clone())
    }

    fn take(&self, id: u64) -> Result<Bundle, RpcError> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.1.remove(&id).ok_or_else(|| RpcError::params(format!("no open bundle {id}")))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlowSel {
    bridge: String,
    #[serde(default)]
    flow: Option<String>,
    #[serde(default)]
    strict: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupArg {
    bridge: String,
    /// The group, in `add-group` syntax.
    group: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupDel {
    bridge: String,
    /// The group to delete; every group without one.
    #[serde(default)]
    group_id: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DumpArg {
    bridge: String,
    /// A loose selection (`table=1,tcp`); every rule without one.
    #[serde(default)]
    filter: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CtSelect {
    /// `zone=N,ct_nw_src=...` (see `ConnFilter::parse`); all without.
    #[serde(default)]
    filter: Option<String>,
    /// Most connections to list.
    #[serde(default)]
    limit: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CtLimits {
    /// The limit of zones without their own (0: none).
    #[serde(default)]
    default: Option<u32>,
    /// The limit of all zones together.
    #[serde(default)]
    global: Option<u32>,
    /// Zone number to its limit (0: none; null: back to the default).
    #[serde(default)]
    zones: BTreeMap<u16, Option<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CtTimeouts {
    /// The zone (none: the default timeouts).
    #[serde(default)]
    zone: Option<u16>,
    /// Timeout name to seconds.
    #[serde(default)]
    timeouts: BTreeMap<String, u32>,
    /// The zone's TCP window checks off (true) or on.
    #[serde(default)]
    liberal: Option<bool>,
    /// Back to the defaults first.
    #[serde(default)]
    reset: bool,
}

fn ct_filter(f: Option<&str>) -> Result<crate::conntrack::ConnFilter, RpcError> {
    crate::conntrack::ConnFilter::parse(f.unwrap_or_default())
        .map_err(|e| RpcError::from(Error::invalid("connection filter", e)))
}

fn set_ct_limits(sw: &Switch, a: CtLimits) -> crate::Result<crate::conntrack::ConntrackConfig> {
    sw.set_conntrack_config(|c| {
        if let Some(d) = a.default {
            c.default_zone_limit = (d > 0).then_some(d);
        }
        if let Some(g) = a.global {
            c.limit = g;
        }
        for (z, l) in a.zones {
            let zc = c.zones.entry(z).or_default();
            zc.limit = l.map(|l| if l == 0 { u32::MAX } else { l });
        }
        c.zones.retain(|_, zc| *zc != crate::conntrack::ZoneConfig::default());
        Ok(())
    })
}

fn set_ct_timeouts(sw: &Switch, a: CtTimeouts) -> crate::Result<crate::conntrack::ConntrackConfig> {
    sw.set_conntrack_config(|c| {
        let base = c.timeouts;
        let t = match a.zone {
            None => &mut c.timeouts,
            Some(z) => {
                let zc = c.zones.entry(z).or_default();
                if let Some(l) = a.liberal {
                    zc.liberal = l;
                }
                if a.reset {
                    zc.timeouts = None;
                }
                if a.timeouts.is_empty() {
                    c.zones.retain(|_, zc| *zc != crate::conntrack::ZoneConfig::default());
                    return Ok(());
                }
                zc.timeouts.get_or_insert(base)
            }
        };
        if a.zone.is_none() {
            if a.liberal.is_some() {
                return Err("liberal is set per zone (zone=N)".into());
            }
            if a.reset {
                *t = crate::conntrack::Timeouts::default();
            }
        }
        for (name, secs) in &a.timeouts {
            t.set(name, *secs)?;
        }
        Ok(())
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BridgeSet {
    name: String,
    /// Seconds a learned MAC lasts unseen.
    #[serde(default)]
    mac_aging_secs: Option<u64>,
    /// Most MAC entries.
    #[serde(default)]
    mac_table_size: Option<usize>,
    /// `standalone`, `secure` (null: unset).
    #[serde(default, deserialize_with = "present")]
    fail_mode: Option<Option<crate::config::FailMode>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PortMod {
    name: String,
    /// The bridge the port must be on.
    #[serde(default)]
    bridge: Option<String>,
    #[serde(default)]
    down: Option<bool>,
    #[serde(default)]
    no_flood: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MirrorAdd {
    bridge: String,
    mirror: crate::config::MirrorSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MirrorDel {
    bridge: String,
    name: String,
    #[serde(default)]
    if_exists: bool,
}

/// A kernel interface's MAC address and speed, from sysfs (none for a
/// port without a kernel interface, or a speed the driver does not know).
fn interface_facts(name: &str, kind: &str) -> (Option<String>, Option<u64>) {
    if !matches!(kind, "afpacket" | "afxdp" | "internal") || name.contains('/') || name.starts_with('.') {
        return (None, None);
    }
    let read = |what: &str| std::fs::read_to_string(format!("/sys/class/net/{name}/{what}")).ok();
    let mac = read("address").map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    let speed = read("speed").and_then(|s| s.trim().parse::<i64>().ok()).filter(|s| *s > 0).map(|s| s as u64);
    (mac, speed)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TraceArg {
    bridge: String,
    flow: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatsArg {
    #[serde(default)]
    bridge: Option<String>,
    #[serde(default)]
    port: Option<String>,
}

fn vlan_mode(tag: Option<u16>, trunks: &[u16]) -> Result<VlanMode, RpcError> {
    match (tag, trunks.is_empty()) {
        (Some(_), false) => Err(RpcError::params("give 'tag' or 'trunks', not both")),
        (Some(t), true) => Ok(VlanMode::access(t)?),
        (None, _) => Ok(VlanMode::trunk(trunks)?),
    }
}

fn port_no(sw: &Switch, bridge: &str, port: Option<Value>) -> Result<u32, RpcError> {
    match port {
        Some(Value::Number(n)) => {
            n.as_u64().map(|n| n as u32).ok_or_else(|| RpcError::params("'port' must be a port number or name"))
        }
        Some(Value::String(name)) => sw
            .bridges()
            .into_iter()
            .find(|b| b.name == bridge)
            .and_then(|b| b.ports.into_iter().find(|p| p.name == name))
            .map(|p| p.port_no)
            .ok_or_else(|| Error::PortNotFound(name).into()),
        _ => Err(RpcError::params("'port' (a number or a name) is required")),
    }
}

/// Refuses a request that names port `name` with a `bridge` it is not on
/// (a port that does not exist is left for the request to report).
fn on_bridge(sw: &Switch, name: &str, bridge: Option<&str>) -> Result<(), RpcError> {
    match (bridge, sw.port_spec(name)) {
        (Some(b), Ok((on, _))) if on != b => {
            Err(Error::invalid("port", format!("'{name}' is on bridge '{on}', not '{b}'")).into())
        }
        _ => Ok(()),
    }
}

fn call(sw: &Switch, kernel_type: PortKind, bundles: &Bundles, method: &str, p: Value) -> Result<Value, RpcError> {
    match method {
        "system.version" => ok(json!({ "version": env!("CARGO_PKG_VERSION") })),
        "system.list_methods" => ok(METHODS),
        "system.status" => ok(json!({ "threads": sw.datapath_threads() })),
        "system.health" => ok(sw.health()),
        "pmd.stats" => ok(sw.pmd_stats()),
        "pmd.stats_clear" => {
            sw.pmd_stats_clear();
            ok(Value::Null)
        }
        "tnl.route_show" => ok(sw.tunnel_routes()),
        "tnl.neigh_show" => ok(sw.tunnel_neighbours()),
        "tnl.neigh_flush" => ok(json!({ "flushed": sw.flush_tunnel_neighbours() })),
        "tnl.neigh_aging" => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Aging {
                seconds: Option<u64>,
            }
            let a: Aging = params(p)?;
            if let Some(s) = a.seconds {
                sw.set_tunnel_neigh_aging(s)?;
            }
            ok(json!({ "seconds": sw.tunnel_neigh_aging() }))
        }
        "bridge.add" => {
            let a: Named = params(p)?;
            match sw.add_bridge(&a.name) {
                Err(Error::BridgeExists(_)) if a.may_exist => ok(Value::Null),
                r => ok(r.map(|_| Value::Null)?),
            }
        }
        "bridge.del" => {
            let a: Named = params(p)?;
            match sw.del_bridge(&a.name) {
                Err(Error::BridgeNotFound(_)) if a.if_exists => ok(Value::Null),
                r => ok(r.map(|_| Value::Null)?),
            }
        }
        "bridge.list" => ok(sw.bridges()),
        "bridge.exists" => {
            let a: Named = params(p)?;
            ok(sw.bridges().iter().any(|b| b.name == a.name))
        }
        "port.add" => {
            let a: PortAdd = params(p)?;
            VlanMode::from_columns(a.vlan_mode, a.tag, &a.trunks)?;
            let spec = PortSpec {
                name: a.name,
                kind: a.kind.as_deref().map_or(Ok(kernel_type), str::parse)?,
                port_no: a.port_no,
                tag: a.tag,
                trunks: a.trunks,
                vlan_mode: a.vlan_mode,
                options: a.options,
                transient: a.transient,
                external_ids: a.external_ids,
            };
            match sw.add_port_spec(&a.bridge, &spec, OnOpenError::Fail) {
                Err(Error::PortExists { .. }) if a.may_exist => ok(Value::Null),
                r => ok(json!({ "port_no": r? })),
            }
        }
        "port.del" => {
            let a: Named = params(p)?;
            on_bridge(sw, &a.name, a.bridge.as_deref())?;
            match sw.del_port(&a.name) {
                Err(Error::PortNotFound(_)) if a.if_exists => ok(Value::Null),
                r => ok(r.map(|_| Value::Null)?),
            }
        }
        "port.list" => {
            let a: BridgeArg = params(p)?;
            let b = sw.bridges().into_iter().find(|b| b.name == a.bridge).ok_or(Error::BridgeNotFound(a.bridge))?;
            ok(b.ports)
        }
        "port.bridge" => {
            let a: PortName = params(p)?;
            ok(sw.port_spec(&a.name)?.0)
        }
        "port.set" => {
            let a: PortSet = params(p)?;
            let vlan = if a.columns || a.vlan_mode.is_some() {
                if a.tag.is_none() && a.trunks.is_none() && a.vlan_mode.is_none() {
                    None
                } else {
                    let now = sw.port_vlan(&a.name)?.describe();
                    let tag = a.tag.unwrap_or(now.tag);
                    let trunks = a.trunks.unwrap_or(Some(now.trunks)).unwrap_or_default();
                    let mode = a.vlan_mode.unwrap_or(now.mode);
                    Some(VlanMode::from_columns(mode, tag, &trunks)?)
                }
            } else {
                match (a.tag, &a.trunks) {
                    (None, None) => None,
                    (tag, trunks) => {
                        Some(vlan_mode(tag.flatten(), trunks.clone().flatten().as_deref().unwrap_or_default())?)
                    }
                }
            };
            match sw.port_spec(&a.name)? {
                (_, Some(old)) => {
                    let mut new = old;
                    if let Some(v) = &vlan {
                        new.set_vlan(v);
                    }
                    for (k, v) in a.options {
                        match v {
                            Some(v) => new.options.insert(k, v),
                            None => new.options.remove(&k),
                        };
                    }
                    for (k, v) in a.external_ids {
                        match v {
                            Some(v) => new.external_ids.insert(k, v),
                            None => new.external_ids.remove(&k),
                        };
                    }
                    new.transient = a.transient.unwrap_or(new.transient);
                    sw.set_port_spec(&new)?;
                }
                (_, None) if a.options.is_empty() && a.external_ids.is_empty() && a.transient.is_none() => {
                    if let Some(v) = vlan {
                        sw.set_port_vlan(&a.name, v)?;
                    }
                }
                (_, None) => {
                    return Err(RpcError::params(format!(
                        "'{}' is an embedder's port: only its VLAN settings can be set",
                        a.name
                    )));
                }
            }
            ok(Value::Null)
        }
        "fdb.show" => {
            let a: BridgeArg = params(p)?;
            ok(sw.fdb(&a.bridge)?)
        }
        "fdb.flush" => {
            let a: BridgeArg = params(p)?;
            ok(json!({ "removed": sw.mac_table(&a.bridge)?.flush() }))
        }
        "fdb.stats" => {
            let a: BridgeArg = params(p)?;
            ok(sw.mac_table(&a.bridge)?.stats())
        }
        "fdb.add" | "fdb.del" => {
            let a: FdbEntry = params(p)?;
            let mac: MacAddr =
                a.mac.parse().map_err(|e: crate::wire::ParseMacError| RpcError::params(e.to_string()))?;
            let table = sw.mac_table(&a.bridge)?;
            if method == "fdb.add" {
                let port = port_no(sw, &a.bridge, a.port)?;
                let name = sw
                    .bridges()
                    .into_iter()
                    .find(|b| b.name == a.bridge)
                    .and_then(|b| b.ports.into_iter().find(|p| p.port_no == port))
                    .map(|p| p.name)
                    .ok_or_else(|| Error::PortNotFound(format!("port {port} of bridge '{}'", a.bridge)))?;
                sw.add_static_mac(&a.bridge, &name, a.vlan, mac)?;
                ok(Value::Null)
            } else {
                ok(json!({ "removed": table.remove(a.vlan, mac) }))
            }
        }
        "flow.add" => {
            let a: FlowsAdd = params(p)?;
            add_or_replace(sw, &a.bridge, &a.flows, a.replace)
        }
        "flow.stage" => bundles.stage(params(p)?),
        "flow.commit" => {
            let a: Commit = params(p)?;
            let b = bundles.take(a.bundle)?;
            add_or_replace(sw, &b.bridge, &b.flows, a.replace)
        }
        "flow.discard" => {
            let a: BundleArg = params(p)?;
            ok(json!({ "discarded": bundles.take(a.bundle)?.flows.len() }))
        }
        "flow.del" => {
            let a: FlowSel = params(p)?;
            ok(json!({ "deleted": sw.del_flows(&a.bridge, a.flow.as_deref(), a.strict)? }))
        }
        "flow.mod" => {
            let a: FlowSel = params(p)?;
            let flow = a.flow.ok_or_else(|| RpcError::params("'flow' is required"))?;
            ok(json!({ "modified": sw.mod_flows(&a.bridge, &flow, a.strict)? }))
        }
        "flow.dump" => {
            let a: DumpArg = params(p)?;
            match a.filter.as_deref().map(str::trim).filter(|f| !f.is_empty()) {
                Some(f) => ok(sw.dump_flows_matching(&a.bridge, f)?),
                None => ok(sw.dump_flows(&a.bridge)?),
            }
        }
        "flow.tables" => {
            let a: BridgeArg = params(p)?;
            ok(sw.dump_tables(&a.bridge)?)
        }
        "group.add" | "group.mod" => {
            let a: GroupArg = params(p)?;
            if method == "group.add" {
                sw.add_group(&a.bridge, &a.group)?;
            } else {
                sw.mod_group(&a.bridge, &a.group)?;
            }
            ok(Value::Null)
        }
        "group.del" => {
            let a: GroupDel = params(p)?;
            ok(json!({ "deleted": sw.del_groups(&a.bridge, a.group_id)? }))
        }
        "group.dump" => {
            let a: BridgeArg = params(p)?;
            ok(sw.dump_groups(&a.bridge)?)
        }
        "ct.dump" => {
            let a: CtSelect = params(p)?;
            let f = ct_filter(a.filter.as_deref())?;
            ok(sw.conntrack().dump(sw.now_ms(), a.limit.unwrap_or(usize::MAX), |c| f.matches(c)))
        }
        "ct.flush" => {
            let a: CtSelect = params(p)?;
            let f = ct_filter(a.filter.as_deref())?;
            ok(json!({ "flushed": sw.conntrack().flush(|c| f.matches(c)) }))
        }
        "ct.stats" => ok(sw.conntrack().stats()),
        "ct.set_limits" => ok(set_ct_limits(sw, params(p)?)?),
        "ct.set_timeouts" => ok(set_ct_timeouts(sw, params(p)?)?),
        "trace" => {
            let a: TraceArg = params(p)?;
            ok(sw.trace(&a.bridge, &a.flow)?)
        }
        "stats.get" => {
            let a: StatsArg = params(p)?;
            let mut s = sw.stats();
            if let Some(b) = &a.bridge {
                s.bridges.retain(|x| &x.name == b);
                if s.bridges.is_empty() {
                    return Err(Error::BridgeNotFound(b.clone()).into());
                }
            }
            if let Some(port) = &a.port {
                for b in &mut s.bridges {
                    b.ports.retain(|x| &x.name == port);
                }
                if s.bridges.iter().all(|b| b.ports.is_empty()) {
                    return Err(Error::PortNotFound(port.clone()).into());
                }
            }
            ok(s)
        }
        "config.get" => ok(sw.config(false)?),
        "bridge.set" => {
            let a: BridgeSet = params(p)?;
            let mut mac = sw.mac_table(&a.name)?.config();
            mac.aging_secs = a.mac_aging_secs.unwrap_or(mac.aging_secs);
            mac.capacity = a.mac_table_size.unwrap_or(mac.capacity);
            mac.validate()?;
            if let Some(mode) = a.fail_mode {
                sw.set_fail_mode(&a.name, mode)?;
            }
            sw.set_mac_table_config(&a.name, mac)?;
            ok(Value::Null)
        }
        "port.mod" => {
            let a: PortMod = params(p)?;
            on_bridge(sw, &a.name, a.bridge.as_deref())?;
            let mut f = sw.port_flags(&a.name)?;
            f.down = a.down.unwrap_or(f.down);
            f.no_flood = a.no_flood.unwrap_or(f.no_flood);
            sw.set_port_flags(&a.name, f)?;
            ok(Value::Null)
        }
        "port.show" => {
            let a: BridgeArg = params(p)?;
            let s = sw.stats();
            let b = s.bridges.into_iter().find(|b| b.name == a.bridge).ok_or(Error::BridgeNotFound(a.bridge))?;
            let rows: Vec<Value> = b
                .ports
                .iter()
                .map(|p| {
                    let (mac, speed) = interface_facts(&p.name, &p.kind);
                    json!({
                        "port_no": p.port_no,
                        "name": p.name,
                        "type": p.kind,
                        "mac": mac,
                        "admin_down": p.admin_down,
                        "link_up": p.link_up,
                        "no_flood": p.no_flood,
                        "speed_mbps": speed,
                    })
                })
                .collect();
            ok(rows)
        }
        "mirror.add" => {
            let a: MirrorAdd = params(p)?;
            sw.add_mirror(&a.bridge, a.mirror)?;
            ok(Value::Null)
        }
        "mirror.del" => {
            let a: MirrorDel = params(p)?;
            match sw.del_mirror(&a.bridge, &a.name)? {
                false if !a.if_exists => {
                    Err(Error::NotFound(format!("mirror '{}' on bridge '{}'", a.name, a.bridge)).into())
                }
                _ => ok(Value::Null),
            }
        }
        "mirror.list" => {
            let a: BridgeArg = params(p)?;
            ok(sw.mirrors(&a.bridge)?)
        }
        _ => Err(RpcError::new(-32601, "method_not_found", format!("unknown method '{method}'"))),
    }
}

/// Handles one request line; returns the response line (no newline).
///
/// Never fails: malformed input gets a structured error response.
///
/// ```
/// use vswitch_core::{Switch, control::dispatch};
/// let sw = Switch::builder().manual().build().unwrap();
/// let r = dispatch(&sw, r#"{"jsonrpc":"2.0","id":1,"method":"bridge.add","params":{"name":"br0"}}"#);
/// assert_eq!(r, r#"{"id":1,"jsonrpc":"2.0","result":null}"#);
/// let r = dispatch(&sw, "not json");
/// assert!(r.contains(r#""code":-32700"#) && r.contains("parse_error"));
/// ```
pub fn dispatch(sw: &Switch, line: &str) -> String {
    // Stateless: a bundle staged here is gone with the call.
    let bundles = Bundles::default();
    respond(line, |method, p| match method {
        "transact" => transact(sw, DEFAULT_KERNEL_TYPE, &bundles, p),
        _ => call(sw, DEFAULT_KERNEL_TYPE, &bundles, method, p),
    })
}

/// Parses a request line and answers it with `handle(method, params)`.
fn respond(line: &str, handle: impl FnOnce(&str, Value) -> Result<Value, RpcError>) -> String {
    let reply = |id: Value, r: Result<Value, RpcError>| {
        let v = match r {
            Ok(result) => json!({ "jsonrpc": "2.0", "id": id, "result": result }),
            Err(e) => json!({
                "jsonrpc": "2.0",
                "id": id,
                "error": { "code": e.code, "message": e.message, "data": { "kind": e.kind } }
            }),
        };
        v.to_string()
    };
    let req: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return reply(Value::Null, Err(RpcError::new(-32700, "parse_error", format!("invalid JSON: {e}")))),
    };
    let id = req.get("id").cloned().unwrap_or(Value::Null);
    let Some(obj) = req.as_object() else {
        return reply(id, Err(RpcError::new(-32600, "invalid_request", "a request is a JSON object")));
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return reply(id, Err(RpcError::new(-32600, "invalid_request", "\"jsonrpc\" must be \"2.0\"")));
    }
    let Some(method) = obj.get("method").and_then(Value::as_str) else {
        return reply(id, Err(RpcError::new(-32600, "invalid_request", "\"method\" must be a string")));
    };
    let p = obj.get("params").cloned().unwrap_or(Value::Null);
    reply(id, handle(method, p))
}

/// How to take back one change of a transaction.
enum Undo {
    Nothing,
    DelBridge(String),
    AddBridge(BridgeConfig),
    DelPort(String),
    /// Re-add the port, and its static MACs.
    AddPort(String, PortSpec, Vec<(u16, MacAddr)>),
    SetPort(PortSpec),
    Flows(String, Vec<String>),
    /// Put the groups back, then the flows (which may send to them).
    Groups(String, Vec<String>, Vec<String>),
    DelStatic(String, u16, MacAddr),
    AddStatic(String, u16, MacAddr, String),
    Conntrack(crate::conntrack::ConntrackConfig),
    /// A bridge's settings, mirrors and flows as they were.
    Settings(BridgeConfig),
}

fn str_param<'a>(p: &'a Value, key: &str) -> &'a str {
    p.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// What undoes `method(p)`, from the state before it runs.
fn undo_for(sw: &Switch, bundles: &Bundles, method: &str, p: &Value) -> Result<Undo, RpcError> {
    if !CHANGES.contains(&method) {
        return Ok(Undo::Nothing);
    }
    // The configuration as it is, read only by the operations that need
    // it (it dumps every bridge's flow table).
    let before = || sw.config(true);
    let bridge = str_param(p, "bridge");
    let name = str_param(p, "name");
    Ok(match method {
        "bridge.add" if !sw.bridges().iter().any(|b| b.name == name) => Undo::DelBridge(name.to_string()),
        "bridge.del" => before()?.bridge(name).cloned().map_or(Undo::Nothing, Undo::AddBridge),
        "port.add" if sw.port_spec(name).is_err() => Undo::DelPort(name.to_string()),
        "port.del" => match sw.port_spec(name) {
            Ok((b, Some(spec))) => Undo::AddPort(b, spec, sw.static_macs_on(name)?),
            _ => Undo::Nothing,
        },
        "port.set" => match sw.port_spec(name) {
            Ok((_, Some(spec))) => Undo::SetPort(spec),
            _ => Undo::Nothing,
        },
        "flow.commit" => {
            let id = p.get("bundle").and_then(Value::as_u64).unwrap_or_default();
            let Some(b) = bundles.bridge_of(id) else { return Ok(Undo::Nothing) };
            before()?.bridge(&b).map_or(Undo::Nothing, |c| Undo::Flows(b.clone(), c.flows.clone()))
        }
        "ct.set_limits" | "ct.set_timeouts" => Undo::Conntrack(sw.conntrack().config()),
        "bridge.set" => before()?.bridge(name).cloned().map_or(Undo::Nothing, Undo::Settings),
        "mirror.add" | "mirror.del" => before()?.bridge(bridge).cloned().map_or(Undo::Nothing, Undo::Settings),
        "group.add" | "group.mod" | "group.del" => before()?
            .bridge(bridge)
            .map_or(Undo::Nothing, |b| Undo::Groups(bridge.to_string(), b.groups.clone(), b.flows.clone())),
        "flow.add" | "flow.del" | "flow.mod" => {
            before()?.bridge(bridge).map_or(Undo::Nothing, |b| Undo::Flows(bridge.to_string(), b.flows.clone()))
        }
        "fdb.add" | "fdb.del" => {
            let vlan = p.get("vlan").and_then(Value::as_u64).unwrap_or(0) as u16;
            let Ok(mac) = str_param(p, "mac").parse::<MacAddr>() else { return Ok(Undo::Nothing) };
            let old = before()?
                .bridge(bridge)
                .and_then(|b| b.static_macs.iter().find(|s| s.vlan == vlan && s.mac == mac))
                .map(|s| s.port.clone());
            match (method, old) {
                (_, Some(port)) => Undo::AddStatic(bridge.to_string(), vlan, mac, port),
                ("fdb.add", None) => Undo::DelStatic(bridge.to_string(), vlan, mac),
                _ => Undo::Nothing,
            }
        }
        _ => Undo::Nothing,
    })
}

fn run_undo(sw: &Switch, u: Undo) -> crate::Result<()> {
    match u {
        Undo::Nothing => Ok(()),
        Undo::DelBridge(b) => sw.del_bridge(&b),
        Undo::AddBridge(b) => sw.add_bridge_config(&b),
        Undo::DelPort(p) => sw.del_port(&p),
        Undo::AddPort(b, spec, macs) => {
            sw.add_port_spec(&b, &spec, OnOpenError::Defer)?;
            sw.put_static_macs(&spec.name, &macs);
            Ok(())
        }
        Undo::SetPort(spec) => sw.set_port_spec(&spec),
        Undo::Flows(b, flows) => sw.replace_flows(&b, &flows),
        // (Later operations, which might send to a group being taken
        // back, were undone first.)
        Undo::Groups(b, groups, flows) => sw.replace_groups(&b, &groups).and_then(|()| sw.replace_flows(&b, &flows)),
        Undo::Conntrack(c) => sw
            .set_conntrack_config(|cur| {
                *cur = c;
                Ok(())
            })
            .map(|_| ()),
        Undo::Settings(b) => sw.restore_settings(&b),
        Undo::DelStatic(b, vlan, mac) => sw.mac_table(&b).map(|t| {
            t.remove(vlan, mac);
        }),
        Undo::AddStatic(b, vlan, mac, port) => {
            let no = port_no(sw, &b, Some(Value::String(port))).map_err(|e| Error::invalid("static mac", e.message))?;
            sw.mac_table(&b)?.add_static(vlan, mac, no)
        }
    }
}

/// Runs every operation in order; if one fails, the ones before it are
/// undone (newest first) and the error names the failing operation.
/// Returns each operation's result.
fn transact(sw: &Switch, kernel_type: PortKind, bundles: &Bundles, p: Value) -> Result<Value, RpcError> {
    let t: Transact = params(p)?;
    let mut undo = Vec::with_capacity(t.ops.len());
    let mut results = Vec::with_capacity(t.ops.len());
    for (i, op) in t.ops.into_iter().enumerate() {
        let outcome = if op.method == "transact" {
            Err(RpcError::params("a transaction cannot contain 'transact'"))
        } else {
            undo_for(sw, bundles, &op.method, &op.params)
                .and_then(|u| call(sw, kernel_type, bundles, &op.method, op.params).map(|r| (u, r)))
        };
        match outcome {
            Ok((u, r)) => {
                undo.push(u);
                results.push(r);
            }
            // Recorded, and live where the datapath answered: it stays,
            // and so do the operations before it; the rest are not run.
            Err(mut e) if e.recorded => {
                e.message = format!(
                    "operation {} ({}): {}; it and the {i} operation(s) before it stay applied, the rest were not run",
                    i + 1,
                    op.method,
                    e.message
                );
                return Err(e);
            }
            Err(mut e) => {
                let mut failed_undo = Vec::new();
                for u in undo.into_iter().rev() {
                    if let Err(e) = run_undo(sw, u) {
                        failed_undo.push(e.to_string());
                    }
                }
                e.message = if failed_undo.is_empty() {
                    format!("operation {} ({}): {}; nothing was changed", i + 1, op.method, e.message)
                } else {
                    format!(
                        "operation {} ({}): {}; undoing the earlier operations failed: {}",
                        i + 1,
                        op.method,
                        e.message,
                        failed_undo.join("; ")
                    )
                };
                return Err(e);
            }
        }
    }
    ok(results)
}

/// The control protocol over a switch, optionally saving the configuration
/// to a [`Store`] after every change that succeeds (what `vswitchd` runs).
#[derive(Debug)]
pub struct Control {
    switch: Arc<Switch>,
    store: Option<Store>,
    kernel_type: PortKind,
    /// Held by a change from its first step to its save, so that changes
    /// from several clients apply and save one at a time; reads need not.
    writer: std::sync::Mutex<()>,
    test_hooks: bool,
    bundles: Bundles,
    networks: Option<Arc<crate::net::Networks>>,
    captures: super::capture::Captures,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HookArg {
    thread: usize,
    #[serde(default)]
    ms: u64,
}

/// The test hooks' methods: make a datapath thread misbehave.
fn test_hook(sw: &Switch, method: &str, p: Value) -> Result<Value, RpcError> {
    let a: HookArg = params(p)?;
    match method {
        "debug.stall_datapath" => {
            let ms = a.ms;
            sw.run_on_thread(a.thread, move |_| std::thread::sleep(std::time::Duration::from_millis(ms)))?;
        }
        _ => sw.run_on_thread(a.thread, |_| panic!("test hook: debug.panic_datapath"))?,
    }
    ok(Value::Null)
}

impl Control {
    /// Serves `switch` without saving anything.
    pub fn new(switch: Arc<Switch>) -> Control {
        Control {
            switch,
            store: None,
            kernel_type: DEFAULT_KERNEL_TYPE,
            writer: Default::default(),
            test_hooks: false,
            bundles: Bundles::default(),
            networks: None,
            captures: Default::default(),
        }
    }

    /// Serves `switch`, saving its configuration to `store` after each
    /// change: the change itself is appended to the store's journal, and
    /// a new snapshot is written when the journal has outgrown the last.
    pub fn with_store(switch: Arc<Switch>, store: Store) -> Control {
        switch.record_changes();
        Control {
            switch,
            store: Some(store),
            kernel_type: DEFAULT_KERNEL_TYPE,
            writer: Default::default(),
            test_hooks: false,
            bundles: Bundles::default(),
            networks: None,
            captures: Default::default(),
        }
    }

    /// The backend `port.add` uses without a `type` (`afpacket` unless
    /// set here).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a type that is not a kernel backend.
    pub fn default_port_type(mut self, kind: &str) -> crate::Result<Control> {
        match kind.parse::<PortKind>() {
            Ok(k) if k.needs_interface() => self.kernel_type = k,
            _ => return Err(Error::invalid("default port type", format!("'{kind}' is not afpacket or afxdp"))),
        }
        Ok(self)
    }

    /// Serves the test hooks too: `debug.stall_datapath` `{thread, ms}`
    /// makes a datapath thread sleep for `ms` between bursts, and
    /// `debug.panic_datapath` `{thread}` makes it panic. For tests of what
    /// the daemon does when its datapath misbehaves; never in production.
    pub fn with_test_hooks(mut self) -> Control {
        self.test_hooks = true;
        self
    }

    /// Serves container networks too: the `net.*` methods (see
    /// [`crate::net`]).
    pub fn with_networks(mut self, networks: Arc<crate::net::Networks>) -> Control {
        self.networks = Some(networks);
        self
    }

    /// The switch served.
    pub fn switch(&self) -> &Arc<Switch> {
        &self.switch
    }

    /// Handles one request line, as [`dispatch`], then saves what it
    /// changed. A change that is live but could not be saved is reported
    /// as an `io` error saying so.
    pub fn dispatch(&self, line: &str) -> String {
        let sw = &*self.switch;
        respond(line, |method, p| {
            let net = self.networks.as_ref().filter(|_| crate::net::NET_METHODS.contains(&method));
            let changes =
                method == "transact" || CHANGES.contains(&method) || crate::net::NET_CHANGES.contains(&method);
            let _writer = changes.then(|| self.writer.lock().unwrap_or_else(|e| e.into_inner()));
            let before = (changes && self.store.is_some()).then(|| sw.bridge_settings());
            let r = match method {
                "transact" => transact(sw, self.kernel_type, &self.bundles, p),
                "debug.stall_datapath" | "debug.panic_datapath" if self.test_hooks => test_hook(sw, method, p),
                "capture.start" | "capture.read" | "capture.stop" => {
                    self.captures.call(sw, method, p).map_err(RpcError::from)
                }
                "system.list_methods" if self.networks.is_some() => {
                    ok(METHODS.iter().chain(crate::net::NET_METHODS).collect::<Vec<_>>())
                }
                _ if net.is_some() => net.map_or(Ok(Value::Null), |n| n.call(method, p).map_err(RpcError::from)),
                _ => call(sw, self.kernel_type, &self.bundles, method, p),
            };
            // Whatever changed is saved, even by a request that failed (a
            // transaction's undone steps, a change a late thread will
            // apply): the journal then says what the switch holds.
            if let Some(before) = before {
                let mut records = sw.take_changes();
                for (name, now) in sw.bridge_settings() {
                    if before.get(&name) != Some(&now) {
                        records.push(now);
                    }
                }
                self.persist(&records)
                    .map_err(|e| RpcError::new(-32000, "io", format!("the change is live but was not saved: {e}")))?;
            }
            r
        })
    }

    /// Journals `records`, or writes a snapshot when the journal asks.
    fn persist(&self, records: &[crate::config::ConfigChange]) -> crate::Result<()> {
        let Some(store) = &self.store else { return Ok(()) };
        if records.is_empty() || store.append(records)? {
            return Ok(());
        }
        store.save(&self.switch.config(false)?)
    }

    /// Housekeeping a server runs about once a second: rules whose
    /// timeout passed are removed, and the removal saved.
    pub fn tick(&self) {
        self.captures.expire(&self.switch);
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        self.switch.expire_flows();
        // A failure stops the journal, so the next save is a whole
        // snapshot, which holds this too.
        let _ = self.persist(&self.switch.take_changes());
    }
}
