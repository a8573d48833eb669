use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::wire::MacAddr;
use crate::{Error, ErrorKind, PortConfig, Switch, VlanMode};

/// Every method the control protocol serves.
pub const METHODS: &[&str] = &[
    "system.version",
    "system.list_methods",
    "bridge.add",
    "bridge.del",
    "bridge.list",
    "bridge.exists",
    "port.add",
    "port.del",
    "port.list",
    "port.set",
    "fdb.show",
    "fdb.flush",
    "fdb.stats",
    "fdb.add",
    "fdb.del",
    "flow.add",
    "flow.del",
    "flow.mod",
    "flow.dump",
    "trace",
    "stats.get",
];

/// A JSON-RPC error.
struct RpcError {
    code: i64,
    message: String,
    kind: &'static str,
}

impl RpcError {
    fn new(code: i64, kind: &'static str, message: impl Into<String>) -> Self {
        RpcError { code, message: message.into(), kind }
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
        };
        RpcError::new(-32000, kind, e.to_string())
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
    may_exist: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PortSet {
    name: String,
    #[serde(default)]
    tag: Option<u16>,
    #[serde(default)]
    trunks: Vec<u16>,
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

fn call(sw: &Switch, method: &str, p: Value) -> Result<Value, RpcError> {
    match method {
        "system.version" => ok(json!({ "version": env!("CARGO_PKG_VERSION") })),
        "system.list_methods" => ok(METHODS),
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
            let config = PortConfig { vlan: vlan_mode(a.tag, &a.trunks)? };
            let added = match a.kind.as_deref().unwrap_or("afpacket") {
                "afpacket" => sw.add_afpacket_port(&a.bridge, &a.name, config),
                "afxdp" => sw.add_afxdp_port(&a.bridge, &a.name, config),
                other => {
                    return Err(RpcError::params(format!(
                        "port type '{other}' cannot be added over the control socket (afpacket, afxdp)"
                    )));
                }
            };
            match added {
                Err(Error::PortExists { .. }) if a.may_exist => ok(Value::Null),
                r => ok(json!({ "port_no": r? })),
            }
        }
        "port.del" => {
            let a: Named = params(p)?;
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
        "port.set" => {
            let a: PortSet = params(p)?;
            sw.set_port_vlan(&a.name, vlan_mode(a.tag, &a.trunks)?)?;
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
                table.add_static(a.vlan, mac, port)?;
                ok(Value::Null)
            } else {
                ok(json!({ "removed": table.remove(a.vlan, mac) }))
            }
        }
        "flow.add" => {
            let a: FlowsAdd = params(p)?;
            let flows: Vec<&str> = a.flows.iter().map(String::as_str).collect();
            ok(json!({ "added": sw.add_flows(&a.bridge, &flows)? }))
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
            let a: BridgeArg = params(p)?;
            ok(sw.dump_flows(&a.bridge)?)
        }
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
    reply(id, call(sw, method, p))
}
