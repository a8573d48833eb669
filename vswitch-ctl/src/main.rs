//! vswitch-ctl: drive a running vswitchd over its control socket, in the
//! manner of ovs-vsctl / ovs-ofctl / ovs-appctl.
//!
//! Exit codes: 0 success, 1 error, 2 "false" for predicates (br-exists).

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};
use vswitch_ctl::{CallError, Client, socket_path};

#[derive(Parser, Debug)]
#[command(version, about = "Control a running vswitchd")]
struct Cli {
    /// Control socket (default $VSWITCH_SOCKET or /run/vswitch/vswitchd.sock).
    #[arg(long, global = true)]
    socket: Option<String>,
    /// Output format.
    #[arg(short = 'f', long, value_enum, default_value_t = Format::Text, global = true)]
    format: Format,
    /// Seconds to wait for vswitchd.
    #[arg(short = 't', long, default_value_t = 5, global = true)]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Bridges, their ports and settings, as a tree.
    Show,
    /// Add a bridge.
    AddBr {
        bridge: String,
        #[arg(long)]
        may_exist: bool,
    },
    /// Delete a bridge and its ports.
    DelBr {
        bridge: String,
        #[arg(long)]
        if_exists: bool,
    },
    /// List bridges.
    ListBr,
    /// Exit 0 if the bridge exists, 2 if not.
    BrExists { bridge: String },
    /// Add a port: settings are type=afpacket|afxdp, tag=VID, trunks=V1,V2.
    AddPort {
        bridge: String,
        port: String,
        settings: Vec<String>,
        #[arg(long)]
        may_exist: bool,
    },
    /// Delete a port (the bridge may be omitted).
    DelPort {
        /// [BRIDGE] PORT
        #[arg(num_args = 1..=2, required = true)]
        names: Vec<String>,
        #[arg(long)]
        if_exists: bool,
    },
    /// List a bridge's ports.
    ListPorts { bridge: String },
    /// Change a port's VLAN settings: tag=VID or trunks=V1,V2 (trunks= for all).
    SetPort { port: String, settings: Vec<String> },
    /// The MAC learning table.
    FdbShow { bridge: String },
    /// Forget every learned (not static) entry.
    FdbFlush { bridge: String },
    /// MAC table size and counters.
    FdbStats { bridge: String },
    /// Add a static entry.
    FdbAdd { bridge: String, port: String, vlan: u16, mac: String },
    /// Delete an entry.
    FdbDel { bridge: String, vlan: u16, mac: String },
    /// Add a flow (ovs-ofctl syntax).
    AddFlow { bridge: String, flow: String },
    /// Add the flows in FILE (one per line, # comments), all or none.
    AddFlows { bridge: String, file: String },
    /// Delete flows matching FLOW (all without one).
    DelFlows {
        bridge: String,
        flow: Option<String>,
        #[arg(long)]
        strict: bool,
    },
    /// Change the actions of flows matching FLOW.
    ModFlows {
        bridge: String,
        flow: String,
        #[arg(long)]
        strict: bool,
    },
    /// Flows with their counters.
    DumpFlows { bridge: String },
    /// Explain what the bridge does with a packet (a flow description).
    Trace { bridge: String, flow: String },
    /// Port counters, drops by reason.
    Stats { bridge: Option<String>, port: Option<String> },
    /// Versions of this tool and of the daemon.
    Version,
}

/// `type=`, `tag=` and `trunks=` settings of a port.
type PortSettings = (Option<String>, Option<u16>, Option<Vec<u16>>);

/// KEY=VALUE settings into tag / trunks / type.
fn settings(items: &[String]) -> Result<PortSettings, String> {
    let (mut kind, mut tag, mut trunks) = (None, None, None);
    for item in items {
        let (k, v) = item.split_once('=').ok_or_else(|| format!("'{item}' is not KEY=VALUE"))?;
        match k {
            "type" => kind = Some(v.to_string()),
            "tag" => tag = Some(v.parse::<u16>().map_err(|_| format!("tag '{v}' is not a VLAN ID"))?),
            "trunks" => {
                let list: Result<Vec<u16>, _> = v.split(',').filter(|s| !s.is_empty()).map(str::parse::<u16>).collect();
                trunks = Some(list.map_err(|_| format!("trunks '{v}' is not a list of VLAN IDs"))?);
            }
            _ => return Err(format!("unknown setting '{k}' (type, tag, trunks)")),
        }
    }
    Ok((kind, tag, trunks))
}

fn show(result: &Value, stats: &Value) -> String {
    let mut out = String::new();
    for b in result.as_array().into_iter().flatten() {
        out.push_str(&format!("Bridge {}\n", b["name"].as_str().unwrap_or("?")));
        let sb = stats["bridges"].as_array().and_then(|v| v.iter().find(|x| x["name"] == b["name"]));
        for p in b["ports"].as_array().into_iter().flatten() {
            let name = p["name"].as_str().unwrap_or("?");
            out.push_str(&format!("    Port {name}\n        type: {}\n", p["type"].as_str().unwrap_or("?")));
            if let Some(tag) = p["tag"].as_u64() {
                out.push_str(&format!("        tag: {tag}\n"));
            }
            if let Some(t) = p["trunks"].as_array().filter(|t| !t.is_empty()) {
                let list: Vec<String> = t.iter().map(|v| v.to_string()).collect();
                out.push_str(&format!("        trunks: [{}]\n", list.join(", ")));
            }
            let up = sb
                .and_then(|s| s["ports"].as_array()?.iter().find(|x| x["name"] == name).map(|x| x["link_up"] == true));
            if up == Some(false) {
                out.push_str("        error: \"link down or interface missing\"\n");
            }
        }
    }
    out
}

fn fdb_text(result: &Value) -> String {
    let mut out = String::from(" port  VLAN  MAC                Age\n");
    for e in result.as_array().into_iter().flatten() {
        let age = if e["is_static"] == true { "static".to_string() } else { e["age_secs"].to_string() };
        out.push_str(&format!(
            "{:>5}  {:>4}  {}  {:>3}\n",
            e["port"],
            e["vlan"],
            e["mac"].as_str().unwrap_or("?"),
            age
        ));
    }
    out
}

fn flows_text(result: &Value) -> String {
    let mut out = String::new();
    for f in result.as_array().into_iter().flatten() {
        let mut line = format!(
            " cookie={:#x}, duration={:.3}s, table=0, n_packets={}, n_bytes={}, ",
            f["cookie"].as_u64().unwrap_or(0),
            f["duration_secs"].as_f64().unwrap_or(0.0),
            f["n_packets"],
            f["n_bytes"]
        );
        for t in ["idle_timeout", "hard_timeout"] {
            if f[t].as_u64().unwrap_or(0) != 0 {
                line.push_str(&format!("{t}={}, ", f[t]));
            }
        }
        line.push_str(&format!("idle_age={}, priority={}", f["idle_age_secs"], f["priority"]));
        let m = f["match"].as_str().unwrap_or("");
        if !m.is_empty() {
            line.push(',');
            line.push_str(m);
        }
        line.push_str(&format!(" actions={}\n", f["actions"].as_str().unwrap_or("")));
        out.push_str(&line);
    }
    out
}

fn trace_text(t: &Value) -> String {
    let mut out = format!("Flow: {}\n", t["flow"].as_str().unwrap_or(""));
    out.push_str(&format!("Rule: {}\n", t["rule"].as_str().unwrap_or("none matched")));
    for s in t["steps"].as_array().into_iter().flatten() {
        out.push_str(&format!("  {}\n", s.as_str().unwrap_or("")));
    }
    out.push_str(&format!("Datapath actions: {}\n", t["verdict"].as_str().unwrap_or("")));
    out
}

fn stats_text(s: &Value) -> String {
    let mut out = String::new();
    for b in s["bridges"].as_array().into_iter().flatten() {
        out.push_str(&format!("Bridge {}\n", b["name"].as_str().unwrap_or("?")));
        for p in b["ports"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "  port {} ({}): link {}\n    rx pkts {} bytes {}\n    tx pkts {} bytes {}\n",
                p["port_no"],
                p["name"].as_str().unwrap_or("?"),
                if p["link_up"] == true { "up" } else { "down" },
                p["rx_packets"],
                p["rx_bytes"],
                p["tx_packets"],
                p["tx_bytes"]
            ));
            let drops: Vec<String> = p["drops"]
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
                .map(|(r, n)| format!("{r}={n}"))
                .collect();
            if !drops.is_empty() {
                out.push_str(&format!("    drops {}\n", drops.join(" ")));
            }
        }
    }
    out
}

fn lines_of(result: &Value, field: &str) -> String {
    result.as_array().into_iter().flatten().map(|v| format!("{}\n", v[field].as_str().unwrap_or("?"))).collect()
}

fn run(cli: Cli) -> Result<ExitCode, CallError> {
    let mut c = Client::connect(&socket_path(cli.socket.as_deref()), Duration::from_secs(cli.timeout))?;
    let json = cli.format == Format::Json;
    let bad = |m: String| CallError::Rpc("invalid_argument".into(), m);
    let (result, text) = match cli.command {
        Command::Show => {
            let r = c.call("bridge.list", Value::Null)?;
            let s = c.call("stats.get", Value::Null)?;
            let t = show(&r, &s);
            (r, t)
        }
        Command::AddBr { bridge, may_exist } => {
            (c.call("bridge.add", json!({ "name": bridge, "may_exist": may_exist }))?, String::new())
        }
        Command::DelBr { bridge, if_exists } => {
            (c.call("bridge.del", json!({ "name": bridge, "if_exists": if_exists }))?, String::new())
        }
        Command::ListBr => {
            let r = c.call("bridge.list", Value::Null)?;
            let t = lines_of(&r, "name");
            (r, t)
        }
        Command::BrExists { bridge } => {
            let r = c.call("bridge.exists", json!({ "name": bridge }))?;
            if json {
                println!("{r}");
            }
            return Ok(if r == json!(true) { ExitCode::SUCCESS } else { ExitCode::from(2) });
        }
        Command::AddPort { bridge, port, settings: s, may_exist } => {
            let (kind, tag, trunks) = settings(&s).map_err(bad)?;
            let mut p = json!({ "bridge": bridge, "name": port, "may_exist": may_exist });
            if let Some(k) = kind {
                p["type"] = json!(k);
            }
            if let Some(t) = tag {
                p["tag"] = json!(t);
            }
            if let Some(t) = trunks {
                p["trunks"] = json!(t);
            }
            (c.call("port.add", p)?, String::new())
        }
        Command::DelPort { names, if_exists } => {
            let port = names.last().cloned().unwrap_or_default();
            (c.call("port.del", json!({ "name": port, "if_exists": if_exists }))?, String::new())
        }
        Command::ListPorts { bridge } => {
            let r = c.call("port.list", json!({ "bridge": bridge }))?;
            let t = lines_of(&r, "name");
            (r, t)
        }
        Command::SetPort { port, settings: s } => {
            let (kind, tag, trunks) = settings(&s).map_err(bad)?;
            if kind.is_some() {
                return Err(bad("a port's type cannot be changed; delete and re-add it".into()));
            }
            (
                c.call("port.set", json!({ "name": port, "tag": tag, "trunks": trunks.unwrap_or_default() }))?,
                String::new(),
            )
        }
        Command::FdbShow { bridge } => {
            let r = c.call("fdb.show", json!({ "bridge": bridge }))?;
            let t = fdb_text(&r);
            (r, t)
        }
        Command::FdbFlush { bridge } => (c.call("fdb.flush", json!({ "bridge": bridge }))?, String::new()),
        Command::FdbStats { bridge } => {
            let r = c.call("fdb.stats", json!({ "bridge": bridge }))?;
            let t = r.as_object().into_iter().flatten().map(|(k, v)| format!("{k}: {v}\n")).collect();
            (r, t)
        }
        Command::FdbAdd { bridge, port, vlan, mac } => {
            let port = port.parse::<u64>().map_or(json!(port), |n| json!(n));
            (c.call("fdb.add", json!({ "bridge": bridge, "port": port, "vlan": vlan, "mac": mac }))?, String::new())
        }
        Command::FdbDel { bridge, vlan, mac } => {
            (c.call("fdb.del", json!({ "bridge": bridge, "vlan": vlan, "mac": mac }))?, String::new())
        }
        Command::AddFlow { bridge, flow } => {
            (c.call("flow.add", json!({ "bridge": bridge, "flows": [flow] }))?, String::new())
        }
        Command::AddFlows { bridge, file } => {
            let text = std::fs::read_to_string(&file).map_err(|e| bad(format!("cannot read {file}: {e}")))?;
            let flows: Vec<&str> =
                text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
            (c.call("flow.add", json!({ "bridge": bridge, "flows": flows }))?, String::new())
        }
        Command::DelFlows { bridge, flow, strict } => {
            (c.call("flow.del", json!({ "bridge": bridge, "flow": flow, "strict": strict }))?, String::new())
        }
        Command::ModFlows { bridge, flow, strict } => {
            (c.call("flow.mod", json!({ "bridge": bridge, "flow": flow, "strict": strict }))?, String::new())
        }
        Command::DumpFlows { bridge } => {
            let r = c.call("flow.dump", json!({ "bridge": bridge }))?;
            let t = flows_text(&r);
            (r, t)
        }
        Command::Trace { bridge, flow } => {
            let r = c.call("trace", json!({ "bridge": bridge, "flow": flow }))?;
            let t = trace_text(&r);
            (r, t)
        }
        Command::Stats { bridge, port } => {
            let r = c.call("stats.get", json!({ "bridge": bridge, "port": port }))?;
            let t = stats_text(&r);
            (r, t)
        }
        Command::Version => {
            let r = c.call("system.version", Value::Null)?;
            let t = format!(
                "vswitch-ctl {}\nvswitchd {}\n",
                env!("CARGO_PKG_VERSION"),
                r["version"].as_str().unwrap_or("?")
            );
            (r, t)
        }
    };
    if json {
        println!("{result}");
    } else {
        print!("{text}");
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vswitch-ctl: {e}");
            ExitCode::from(1)
        }
    }
}
