//! vswitch-cni: a CNI plugin (specification 1.1.0; configurations of
//! 0.3.0 to 1.1.0 accepted) that attaches containers to `vswitchd`'s
//! container networks. A thin client: it reads the runtime's environment
//! and network configuration, runs a delegated IPAM plugin from CNI_PATH
//! when `ipam.type` is not `vswitch`, asks the daemon over its control
//! socket (`net.attach`, `net.detach`, `net.check`, `net.gc`), and prints
//! the result or the error in the configuration's version. The daemon
//! keeps every attachment's state (docs/containers.md).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use vswitch_ctl::{CallError, Client};

/// The versions this plugin speaks, oldest first.
const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// How long one request to the daemon may take (20 ADDs at once queue).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The spec's well-known error codes.
mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// Plugin-specific: the network has no free address.
    pub const NO_ADDRESS: u32 = 100;
    /// Plugin-specific: anything else the daemon refused.
    pub const INTERNAL: u32 = 999;
}

/// A CNI error: code, message, details.
#[derive(Debug)]
struct CniError {
    code: u32,
    msg: String,
    details: String,
    /// A delegated plugin's own error JSON, passed on as it came.
    raw: Option<Value>,
}

fn err(code: u32, msg: impl Into<String>) -> CniError {
    CniError { code, msg: msg.into(), details: String::new(), raw: None }
}

impl CniError {
    fn details(mut self, d: impl Into<String>) -> Self {
        self.details = d.into();
        self
    }
}

/// The runtime's call.
struct Call {
    command: String,
    container_id: String,
    netns: String,
    ifname: String,
    args: BTreeMap<String, String>,
    path: Vec<String>,
    /// stdin as it came (passed on to a delegated IPAM plugin).
    raw: Vec<u8>,
    conf: Value,
    version: String,
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_default()
}

fn version_index(v: &str) -> Option<usize> {
    SUPPORTED.iter().position(|s| *s == v)
}

fn read_call() -> Result<Call, CniError> {
    let command = env("CNI_COMMAND");
    if command.is_empty() {
        return Err(err(code::INVALID_ENV, "CNI_COMMAND is not set"));
    }
    let mut raw = Vec::new();
    std::io::stdin()
        .read_to_end(&mut raw)
        .map_err(|e| err(code::IO, format!("cannot read the network configuration: {e}")))?;
    let conf: Value = if raw.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(&raw)
            .map_err(|e| err(code::DECODE, format!("the network configuration is not JSON: {e}")))?
    };
    if !conf.is_object() {
        return Err(err(code::DECODE, "the network configuration is not a JSON object"));
    }
    // A configuration list's `cniVersions` (1.1.0): the newest we speak.
    let version = match (conf.get("cniVersion").and_then(Value::as_str), conf.get("cniVersions")) {
        (Some(v), _) => v.to_string(),
        (None, Some(Value::Array(vs))) => vs
            .iter()
            .filter_map(Value::as_str)
            .filter_map(version_index)
            .max()
            .map(|i| SUPPORTED[i].to_string())
            .ok_or_else(|| err(code::INCOMPATIBLE_VERSION, "none of the configuration's cniVersions is supported"))?,
        _ => "0.1.0".to_string(),
    };
    let mut args = BTreeMap::new();
    for kv in env("CNI_ARGS").split(';').filter(|s| !s.is_empty()) {
        let (k, v) =
            kv.split_once('=').ok_or_else(|| err(code::INVALID_ENV, format!("CNI_ARGS: '{kv}' is not KEY=VALUE")))?;
        args.insert(k.to_string(), v.to_string());
    }
    Ok(Call {
        command,
        container_id: env("CNI_CONTAINERID"),
        netns: env("CNI_NETNS"),
        ifname: env("CNI_IFNAME"),
        args,
        path: env("CNI_PATH").split(':').filter(|s| !s.is_empty()).map(str::to_string).collect(),
        raw,
        conf,
        version,
    })
}

impl Call {
    fn require(&self, names: &[&str]) -> Result<(), CniError> {
        let missing: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| match *n {
                "CNI_CONTAINERID" => self.container_id.is_empty(),
                "CNI_NETNS" => self.netns.is_empty(),
                "CNI_IFNAME" => self.ifname.is_empty(),
                "CNI_PATH" => self.path.is_empty(),
                _ => false,
            })
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(err(code::INVALID_ENV, format!("{} must be set for {}", missing.join(", "), self.command)))
        }
    }

    fn str(&self, key: &str) -> Option<&str> {
        self.conf.get(key).and_then(Value::as_str)
    }

    fn flag(&self, key: &str) -> Result<bool, CniError> {
        match self.conf.get(key) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(err(code::INVALID_CONFIG, format!("'{key}' must be true or false"))),
        }
    }

    fn name(&self) -> Result<String, CniError> {
        self.str("name").map(str::to_string).ok_or_else(|| err(code::INVALID_CONFIG, "the configuration has no 'name'"))
    }

    fn ipam_type(&self) -> Option<&str> {
        self.conf.get("ipam").and_then(|i| i.get("type")).and_then(Value::as_str).filter(|t| !t.is_empty())
    }

    fn delegated(&self) -> Option<&str> {
        self.ipam_type().filter(|t| *t != "vswitch")
    }

    fn runtime(&self, key: &str) -> Option<&Value> {
        self.conf.get("runtimeConfig").and_then(|r| r.get(key)).filter(|v| !v.is_null())
    }

    fn cni_arg(&self, key: &str) -> Option<&Value> {
        self.conf.get("args").and_then(|a| a.get("cni")).and_then(|c| c.get(key)).filter(|v| !v.is_null())
    }

    /// A network `vswitch-agent` defines (`"cluster": true`): this host's
    /// part of a cluster network, its subnet the agent's lease.
    fn cluster(&self) -> Result<bool, CniError> {
        if !self.flag("cluster")? {
            return Ok(false);
        }
        const DEFINING: &[&str] =
            &["bridge", "ipam", "masquerade", "ipMasq", "mtu", "vlan", "isGateway", "isDefaultGateway"];
        if let Some(k) = DEFINING.iter().find(|k| self.conf.get(**k).is_some_and(|v| !v.is_null())) {
            return Err(err(
                code::INVALID_CONFIG,
                format!(
                    "'{k}': with \"cluster\": true the network is vswitch-agent's (its --bridge, --mtu, --masquerade-*, and the subnet it leases): leave '{k}' out"
                ),
            ));
        }
        Ok(true)
    }

    /// The network as the daemon knows it, from this configuration: none
    /// for a cluster network (the agent's).
    fn spec(&self) -> Result<Option<Value>, CniError> {
        if self.cluster()? {
            return Ok(None);
        }
        let num = |key: &str, max: u64| -> Result<Option<u64>, CniError> {
            match self.conf.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_u64()
                    .filter(|n| *n <= max)
                    .map(Some)
                    .ok_or_else(|| err(code::INVALID_CONFIG, format!("'{key}' must be a number up to {max}"))),
            }
        };
        const CAPABILITIES: &[&str] = &["portMappings", "ips", "mac", "labels"];
        if let Some(caps) = self.conf.get("capabilities").and_then(Value::as_object)
            && let Some((c, _)) =
                caps.iter().find(|(c, on)| on.as_bool() == Some(true) && !CAPABILITIES.contains(&c.as_str()))
        {
            return Err(err(
                code::UNSUPPORTED_FIELD,
                format!("capabilities: '{c}' is not supported (supported: {})", CAPABILITIES.join(", ")),
            ));
        }
        // "masquerade" says where; an explicit "ipMasq": false turns it off.
        let masq_off = self.conf.get("ipMasq").is_some_and(|v| v == &Value::Bool(false));
        let masquerade = self.conf.get("masquerade").filter(|m| !m.is_null() && !masq_off);
        if self.flag("ipMasq")? && masquerade.is_none() {
            return Err(err(
                code::INVALID_CONFIG,
                "ipMasq needs \"masquerade\": {\"uplink\": IFACE, \"address\": \"A.B.C.D/N\"} (the switch masquerades behind an address of its own on that uplink)",
            ));
        }
        let mut spec = json!({
            "name": self.name()?,
            "bridge": self.str("bridge").unwrap_or("cni0"),
            "is_gateway": self.flag("isGateway")?,
            "is_default_gateway": self.flag("isDefaultGateway")?,
            "macspoofchk": self.flag("macspoofchk")?,
            "hairpin": self.flag("hairpinMode")?,
        });
        if let Some(mtu) = num("mtu", 65535)? {
            spec["mtu"] = json!(mtu);
        }
        if let Some(vlan) = num("vlan", 4094)?.filter(|v| *v != 0) {
            spec["vlan"] = json!(vlan);
        }
        if self.ipam_type() == Some("vswitch") {
            spec["ipam"] = self.conf["ipam"].clone();
        }
        if let Some(m) = masquerade {
            spec["masquerade"] = m.clone();
        }
        Ok(Some(spec))
    }

    /// Addresses asked for: CNI_ARGS `IP=` (comma-separated), `args.cni.ips`,
    /// `runtimeConfig.ips`.
    fn requested_ips(&self) -> Result<Vec<String>, CniError> {
        let mut out = Vec::new();
        if let Some(ips) = self.args.get("IP") {
            out.extend(ips.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()));
        }
        for v in [self.cni_arg("ips"), self.runtime("ips")].into_iter().flatten() {
            for ip in v.as_array().into_iter().flatten().filter_map(Value::as_str) {
                out.push(ip.to_string());
            }
        }
        // An address may come with its prefix (runtimeConfig "10.0.0.5/24").
        Ok(out.into_iter().map(|s| s.split('/').next().unwrap_or_default().to_string()).collect())
    }

    fn mac(&self) -> Option<String> {
        self.args
            .get("MAC")
            .cloned()
            .or_else(|| self.cni_arg("mac").and_then(Value::as_str).map(str::to_string))
            .or_else(|| self.runtime("mac").and_then(Value::as_str).map(str::to_string))
    }

    /// Labels: `LABELS=k=v,k2=v2` in CNI_ARGS, `args.cni.labels` and
    /// `runtimeConfig.labels` (objects).
    fn labels(&self) -> Result<BTreeMap<String, String>, CniError> {
        let mut out = BTreeMap::new();
        for v in [self.cni_arg("labels"), self.runtime("labels")].into_iter().flatten() {
            for (k, v) in v.as_object().into_iter().flatten() {
                out.insert(k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_string));
            }
        }
        if let Some(l) = self.args.get("LABELS") {
            for kv in l.split(',').filter(|s| !s.is_empty()) {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| err(code::INVALID_ENV, format!("CNI_ARGS LABELS: '{kv}' is not KEY=VALUE")))?;
                out.insert(k.to_string(), v.to_string());
            }
        }
        Ok(out)
    }

    fn check_args(&self) -> Result<(), CniError> {
        const KNOWN: &[&str] = &["IP", "MAC", "LABELS", "IgnoreUnknown"];
        let ignore = self.args.get("IgnoreUnknown").is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
        match self.args.keys().find(|k| !KNOWN.contains(&k.as_str()) && !k.starts_with("K8S_")) {
            Some(k) if !ignore => {
                Err(err(code::INVALID_ENV, format!("CNI_ARGS: unknown key '{k}' (add IgnoreUnknown=1 to allow it)")))
            }
            _ => Ok(()),
        }
    }

    fn socket(&self) -> String {
        vswitch_ctl::socket_path(self.str("socket"))
    }

    fn daemon(&self, method: &str, params: Value, unreachable_code: u32) -> Result<Value, CniError> {
        let mut c = Client::connect(&self.socket(), CALL_TIMEOUT)
            .map_err(|e| err(unreachable_code, format!("vswitchd is not available: {e}")))?;
        c.call(method, params).map_err(|e| match e {
            CallError::Unreachable(why) => err(unreachable_code, format!("vswitchd is not available: {why}")),
            CallError::Rpc(kind, message) => {
                let code = match kind.as_str() {
                    "not_found" if message.contains("network namespace") => code::UNKNOWN_CONTAINER,
                    "exists" if message.contains("interface") => code::INVALID_ENV,
                    "invalid_argument" | "invalid_params" => code::INVALID_CONFIG,
                    "full" if message.contains("address range") => code::NO_ADDRESS,
                    "io" => code::IO,
                    "timeout" | "unavailable" | "datapath_failed" => code::TRY_AGAIN,
                    _ => code::INTERNAL,
                };
                let message = if code == code::INVALID_ENV { format!("CNI_IFNAME: {message}") } else { message };
                err(code, message).details(format!("vswitchd {method}: {kind}"))
            }
        })
    }

    /// Runs the delegated IPAM plugin with `command`; its result.
    fn ipam(&self, command: &str) -> Result<Value, CniError> {
        let kind = self.delegated().unwrap_or_default();
        if self.path.is_empty() {
            return Err(err(code::INVALID_ENV, format!("CNI_PATH must be set to find the IPAM plugin '{kind}'")));
        }
        if kind.contains('/') {
            return Err(err(code::INVALID_CONFIG, format!("ipam.type '{kind}' is not a plugin name")));
        }
        let bin =
            self.path.iter().map(|d| std::path::Path::new(d).join(kind)).find(|p| p.is_file()).ok_or_else(|| {
                err(code::INVALID_CONFIG, format!("IPAM plugin '{kind}' is not in CNI_PATH ({})", self.path.join(":")))
            })?;
        let mut child = Command::new(&bin)
            .env("CNI_COMMAND", command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| err(code::IO, format!("cannot run {}: {e}", bin.display())))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(&self.raw);
        }
        let out = child.wait_with_output().map_err(|e| err(code::IO, format!("{} failed: {e}", bin.display())))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let v: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .map_err(|e| err(code::DECODE, format!("{kind} printed what is not JSON: {e}")))?
        };
        if !out.status.success() {
            let msg = v.get("msg").and_then(Value::as_str).unwrap_or("failed").to_string();
            return Err(CniError {
                code: v.get("code").and_then(Value::as_u64).unwrap_or(u64::from(code::INTERNAL)) as u32,
                msg: format!("IPAM plugin {kind}: {msg}"),
                details: v.get("details").and_then(Value::as_str).unwrap_or_default().to_string(),
                raw: Some(v),
            });
        }
        Ok(v)
    }

    fn add(&self) -> Result<Value, CniError> {
        self.require(&["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"])?;
        self.check_args()?;
        let spec = self.spec()?;
        let cluster = spec.is_none();
        let mut params = json!({
            "network": self.name()?,
            "container_id": self.container_id,
            "ifname": self.ifname,
            "netns": self.netns,
            "request_ips": self.requested_ips()?,
            "labels": self.labels()?,
        });
        if let Some(spec) = spec {
            params["spec"] = spec;
        }
        if let Some(mac) = self.mac() {
            params["mac"] = json!(mac);
        }
        if let Some(maps) = self.runtime("portMappings") {
            params["port_mappings"] = maps.clone();
        }
        if let Some(dns) = self.conf.get("dns").filter(|d| !d.is_null()) {
            params["dns"] = dns.clone();
        }
        let delegated = self.delegated().is_some();
        if delegated {
            let r = self.ipam("ADD")?;
            let ips: Vec<Value> = r["ips"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| {
                    let mut v = json!({ "address": i["address"] });
                    if i.get("gateway").is_some_and(|g| !g.is_null()) {
                        v["gateway"] = i["gateway"].clone();
                    }
                    v
                })
                .collect();
            params["ips"] = json!(ips);
            params["routes"] = r.get("routes").cloned().filter(|r| !r.is_null()).unwrap_or(json!([]));
            if let Some(dns) = r.get("dns").filter(|d| d.as_object().is_some_and(|o| !o.is_empty())) {
                params["dns"] = dns.clone();
            }
        }
        match self.daemon("net.attach", params, code::TRY_AGAIN) {
            Ok(r) => Ok(r),
            Err(e) if cluster && e.details.ends_with(": not_found") && e.msg.starts_with("no network named") => {
                Err(err(
                    code::TRY_AGAIN,
                    format!(
                        "network '{}' is vswitch-agent's and it has not made it yet: is vswitch-agent running and joined to its cluster?",
                        self.name()?
                    ),
                ))
            }
            Err(e) => {
                // The daemon may not have seen the request, or may still
                // be carrying it out (a timeout): a detach, which it runs
                // after the attach, undoes whatever it did.
                if e.code == code::TRY_AGAIN {
                    let p =
                        json!({ "network": self.name()?, "container_id": self.container_id, "ifname": self.ifname });
                    let _ = self.daemon("net.detach", p, code::TRY_AGAIN);
                }
                // The spec: a failed ADD releases what IPAM handed out;
                // not when the attachment already existed (it holds them).
                let existed =
                    e.code == code::INTERNAL && e.details.ends_with(": exists") && e.msg.contains("already has");
                if delegated && !existed {
                    let _ = self.ipam("DEL");
                }
                Err(e)
            }
        }
    }

    fn del(&self) -> Result<Value, CniError> {
        self.require(&["CNI_CONTAINERID", "CNI_IFNAME"])?;
        let spec = self.spec().ok().flatten();
        let mut params = json!({ "network": self.name()?, "container_id": self.container_id, "ifname": self.ifname });
        if let Some(s) = spec {
            params["spec"] = s;
        }
        self.daemon("net.detach", params, code::TRY_AGAIN)?;
        if self.delegated().is_some() {
            self.ipam("DEL")?;
        }
        Ok(Value::Null)
    }

    fn check(&self) -> Result<Value, CniError> {
        self.require(&["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"])?;
        if version_index(&self.version) < version_index("0.4.0") {
            return Err(err(
                code::INCOMPATIBLE_VERSION,
                format!("CHECK needs cniVersion 0.4.0 or later, not {}", self.version),
            ));
        }
        let prev = self
            .conf
            .get("prevResult")
            .filter(|p| !p.is_null())
            .ok_or_else(|| err(code::INVALID_CONFIG, "CHECK needs prevResult"))?;
        let ips: Vec<Value> =
            prev["ips"].as_array().into_iter().flatten().map(|i| json!({ "address": i["address"] })).collect();
        if self.delegated().is_some() {
            self.ipam("CHECK")?;
        }
        self.daemon(
            "net.check",
            json!({ "network": self.name()?, "container_id": self.container_id, "ifname": self.ifname, "ips": ips }),
            code::TRY_AGAIN,
        )?;
        Ok(Value::Null)
    }

    fn needs_1_1(&self) -> Result<(), CniError> {
        if version_index(&self.version) < version_index("1.1.0") {
            return Err(err(
                code::INCOMPATIBLE_VERSION,
                format!("{} needs cniVersion 1.1.0, not {}", self.command, self.version),
            ));
        }
        Ok(())
    }

    fn gc(&self) -> Result<Value, CniError> {
        self.needs_1_1()?;
        self.require(&["CNI_PATH"])?;
        let valid: Vec<Value> = self
            .conf
            .get("cni.dev/valid-attachments")
            .and_then(Value::as_array)
            .ok_or_else(|| err(code::INVALID_CONFIG, "GC needs \"cni.dev/valid-attachments\" (a list, maybe empty)"))?
            .iter()
            .map(|a| json!([a["containerID"].as_str().unwrap_or_default(), a["ifname"].as_str().unwrap_or_default()]))
            .collect();
        let mut params = json!({ "network": self.name()?, "valid": valid });
        if let Ok(Some(s)) = self.spec() {
            params["spec"] = s;
        }
        self.daemon("net.gc", params, code::TRY_AGAIN)?;
        if self.delegated().is_some() {
            self.ipam("GC")?;
        }
        Ok(Value::Null)
    }

    fn status(&self) -> Result<Value, CniError> {
        self.needs_1_1()?;
        self.daemon("system.status", json!({}), code::NOT_AVAILABLE)?;
        if self.delegated().is_some() {
            self.ipam("STATUS")?;
        }
        Ok(Value::Null)
    }
}

/// A 1.x result in `version`'s layout (0.3.x/0.4.0 give each address a
/// `version`).
fn in_version(mut r: Value, version: &str) -> Value {
    if version_index(version) < version_index("1.0.0")
        && let Some(ips) = r.get_mut("ips").and_then(Value::as_array_mut)
    {
        for ip in ips {
            let v6 = ip["address"].as_str().is_some_and(|a| a.contains(':'));
            ip["version"] = json!(if v6 { "6" } else { "4" });
        }
    }
    r["cniVersion"] = json!(version);
    if r.get("dns").is_none() {
        r["dns"] = json!({});
    }
    r
}

fn main() {
    let call = match read_call() {
        Ok(c) => c,
        Err(e) => finish("1.1.0", Err(e)),
    };
    if call.command == "VERSION" {
        let version = if version_index(&call.version).is_some() { call.version.as_str() } else { "1.1.0" };
        finish(version, Ok(json!({ "cniVersion": version, "supportedVersions": SUPPORTED })));
    }
    if version_index(&call.version).is_none() {
        let e = err(
            code::INCOMPATIBLE_VERSION,
            format!("cniVersion {} is not supported (supported: {})", call.version, SUPPORTED.join(", ")),
        );
        finish("1.1.0", Err(e));
    }
    let r = match call.command.as_str() {
        "ADD" => call.add().map(|r| in_version(r, &call.version)),
        "DEL" => call.del(),
        "CHECK" => call.check(),
        "GC" => call.gc(),
        "STATUS" => call.status(),
        other => {
            Err(err(code::INVALID_ENV, format!("CNI_COMMAND '{other}' is not ADD, DEL, CHECK, GC, STATUS or VERSION")))
        }
    };
    finish(&call.version, r);
}

/// Prints the result (nothing for a null one) or the error, and exits.
fn finish(version: &str, r: Result<Value, CniError>) -> ! {
    let mut out = std::io::stdout().lock();
    match r {
        Ok(Value::Null) => std::process::exit(0),
        Ok(v) => {
            let _ = writeln!(out, "{v}");
            std::process::exit(0)
        }
        Err(e) => {
            let v = e.raw.unwrap_or_else(|| {
                let mut v = json!({ "cniVersion": version, "code": e.code, "msg": e.msg });
                if !e.details.is_empty() {
                    v["details"] = json!(e.details);
                }
                v
            });
            let _ = writeln!(out, "{v}");
            std::process::exit(1)
        }
    }
}
