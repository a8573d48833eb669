//! vswitch-ctl: drive a running vswitchd over its control socket, in the
//! manner of ovs-vsctl / ovs-ofctl / ovs-appctl.
//!
//! Exit codes: 0 success, 1 error (usage errors too), 2 only "false" for
//! predicates (br-exists).

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};
use vswitch_core::flow::{FlowStats, GroupStats, TableRow, Trace};
use vswitch_ctl::{CallError, Client, socket_path};

mod capture;
mod records;

#[derive(Parser, Debug)]
#[command(version, about = "Control a running vswitchd")]
struct Cli {
    /// Control socket (default $VSWITCH_SOCKET or /run/vswitch/vswitchd.sock).
    #[arg(long, global = true)]
    socket: Option<String>,
    /// Output format.
    #[arg(short = 'f', long, value_enum, default_value_t = Format::Text, global = true)]
    format: Format,
    /// Seconds to wait for vswitchd (longer than its own datapath deadline,
    /// so that a datapath that does not answer is reported by vswitchd).
    #[arg(short = 't', long, default_value_t = 10, global = true)]
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
    /// Add a port: settings are type=afpacket|afxdp|internal|vxlan|gre, tag=VID,
    /// trunks=V1,V2, vlan_mode=access|trunk|native-tagged|native-untagged,
    /// options:KEY=VALUE, transient=true, ofport_request=N.
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
    /// List a bridge's interfaces (here each port is one interface).
    ListIfaces { bridge: String },
    /// The bridge a port is on.
    PortToBr { port: String },
    /// The bridge an interface is on.
    IfaceToBr { iface: String },
    /// Change a port: tag=VID, trunks=V1,V2 (trunks= for all), vlan_mode=MODE,
    /// options:KEY=VALUE (options:KEY= removes it), transient=BOOL.
    SetPort { port: String, settings: Vec<String> },
    /// Set a bridge's fail mode: standalone (an empty flow table switches
    /// as NORMAL) or secure (an empty table drops).
    SetFailMode { bridge: String, mode: String },
    /// Print a bridge's fail mode (nothing if not set).
    GetFailMode { bridge: String },
    /// Unset a bridge's fail mode.
    DelFailMode { bridge: String },
    /// Print columns of a record: TABLE (Bridge, Port, Interface) RECORD
    /// COLUMN[:KEY]... (docs/cli.md lists the columns).
    Get { table: String, record: String, columns: Vec<String> },
    /// Set columns of a record: TABLE RECORD COLUMN[:KEY]=VALUE...
    /// (Bridge: fail_mode, other_config:mac-aging-time,
    /// other_config:mac-table-size; Port: tag, trunks, vlan_mode,
    /// external_ids:KEY; Interface: options:KEY).
    Set { table: String, record: String, items: Vec<String> },
    /// Reset columns of a record to their defaults: TABLE RECORD COLUMN...
    Clear { table: String, record: String, columns: Vec<String> },
    /// Every column of every record of TABLE (or of RECORD).
    List { table: String, record: Option<String> },
    /// Ports with their numbers, MACs, state and speed (ovs-ofctl show).
    ShowPorts { bridge: String },
    /// Port counters in ovs-ofctl dump-ports layout.
    DumpPorts { bridge: String, port: Option<String> },
    /// Set a port up or down (nothing received is switched, nothing sent;
    /// the kernel interface is left alone), or in or out of NORMAL's floods.
    ModPort {
        bridge: String,
        port: String,
        #[arg(value_parser = ["up", "down", "flood", "no-flood"])]
        action: String,
    },
    /// Add a port mirror (or replace the one of its name):
    /// select_all=true, select_src_port=P1,P2 (what they receive),
    /// select_dst_port=P1,P2 (what they send), select_vlan=V1,V2,
    /// output_port=P (used for nothing else).
    AddMirror { bridge: String, name: String, settings: Vec<String> },
    /// Delete a port mirror.
    DelMirror {
        bridge: String,
        name: String,
        #[arg(long)]
        if_exists: bool,
    },
    /// A bridge's mirrors with what they copied.
    ListMirrors { bridge: String },
    /// Record what a port (or every port) receives and sends: a line per
    /// frame, or pcap with -w (tcpdump/tshark read it). Stops after -c
    /// frames, --duration seconds, or Ctrl-C.
    Capture {
        bridge: String,
        port: Option<String>,
        /// Only what the port receives.
        #[arg(long)]
        rx: bool,
        /// Only what the port sends.
        #[arg(long)]
        tx: bool,
        /// Stop after this many frames.
        #[arg(short = 'c', long)]
        count: Option<u64>,
        /// Write pcap to this file (- for standard output).
        #[arg(short = 'w', long)]
        write: Option<String>,
        /// Stop after this many seconds.
        #[arg(long)]
        duration: Option<f64>,
        /// Bytes kept of each frame.
        #[arg(short = 's', long, default_value_t = 65535)]
        snaplen: usize,
    },
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
    /// Add the flows in FILE (- for standard input; one per line, #
    /// comments), all or none, however many.
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
    /// Flows with their counters; FILTER selects as del-flows does
    /// (`table=1`, `tcp,nw_dst=10.0.0.0/8`).
    DumpFlows {
        bridge: String,
        filter: Option<String>,
        /// Ascending by FIELD (priority by default; also table, cookie,
        /// n_packets, n_bytes, duration, idle_age, or a match field).
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "priority")]
        sort: Option<String>,
        /// Descending by FIELD.
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "priority")]
        rsort: Option<String>,
    },
    /// Make the flow table the flows in FILE (- for standard input), in one
    /// step; rules already there unchanged keep their counters.
    ReplaceFlows { bridge: String, file: String },
    /// Each flow table in use: rules, lookups, matches, misses.
    DumpTables { bridge: String },
    /// Add a group (`group_id=1,type=select,bucket=output:1,bucket=output:2`).
    AddGroup { bridge: String, group: String },
    /// Replace a group's type and buckets.
    ModGroup { bridge: String, group: String },
    /// Delete a group (`group_id=N`), or every group, with the flows that use it.
    DelGroups { bridge: String, group: Option<String> },
    /// Groups with their counters, per bucket.
    DumpGroups { bridge: String },
    /// Explain what the bridge does with a packet (a flow description).
    Trace { bridge: String, flow: String },
    /// Connections conntrack holds. FILTER: zone=N, ct_nw_src=A, ct_nw_dst=A,
    /// ct_nw_proto=P (or tcp, udp, icmp), ct_tp_src=N, ct_tp_dst=N.
    DumpConntrack { filter: Vec<String> },
    /// Remove every connection, or those FILTER selects (as dump-conntrack).
    FlushConntrack { filter: Vec<String> },
    /// Connections per zone and state, limits, memory, drops by reason.
    CtStats,
    /// Connection limits: default=N (zones without their own; 0: none),
    /// global=N (all zones together), zone=Z,limit=N (0: none; limit=default:
    /// back to the default).
    CtSetLimits { limits: Vec<String> },
    /// Timeouts in seconds: [zone=Z] NAME=SECS... (tcp_syn_sent, tcp_syn_recv,
    /// tcp_established, tcp_fin_wait, tcp_close_wait, tcp_last_ack,
    /// tcp_time_wait, tcp_close, udp, udp_stream, icmp, other), liberal=true|false
    /// (a zone's TCP window checks off or on), reset (back to the defaults first).
    CtSetTimeouts { settings: Vec<String> },
    /// Port counters, drops by reason.
    Stats { bridge: Option<String>, port: Option<String> },
    /// Per datapath thread: cycles in iterations that received packets
    /// (busy), that received none (idle) and asleep, packets, bursts and
    /// their sizes, busy cycles per packet (as ovs-appctl
    /// dpif-netdev/pmd-perf-show).
    PmdStats,
    /// Count pmd-stats from zero again.
    PmdStatsClear,
    /// Native tunnels' neighbour cache: address, MAC, uplink port, age (as
    /// ovs-appctl tnl/neigh/show).
    TnlNeighShow,
    /// Forget every native-tunnel neighbour (each is asked for again by
    /// ARP when next used).
    TnlNeighFlush,
    /// Show, or set, how long a neighbour is kept without being heard
    /// from (seconds, 1 to 3600; default 300).
    TnlNeighAging { seconds: Option<u64> },
    /// The kernel's IPv4 routes native tunnels choose from, with the uplink
    /// port on each route's interface (as ovs-appctl ovs/route/show).
    TnlRouteShow,
    /// Every datapath thread and port: running or failed (a port whose
    /// code panicked is taken down alone, with the reason), error (its
    /// device is missing), admin down, link down or up. Exits 1 if a thread
    /// or a port has failed.
    Health,
    /// Create a container network: a bridge, addresses from --subnet
    /// (twice for dual stack), a gateway port holding the gateway address
    /// on the host and the containers' default route.
    NetCreate {
        name: String,
        /// CIDR to hand addresses out of (IPv4 or IPv6; repeat for both).
        #[arg(long, required = true)]
        subnet: Vec<String>,
        /// The gateway of the first subnet (default: its first address).
        #[arg(long)]
        gateway: Option<String>,
        /// The bridge (default: the network's name).
        #[arg(long)]
        bridge: Option<String>,
        /// Masquerade IPv4 to the outside through this uplink interface.
        #[arg(long, requires = "uplink_address")]
        masquerade: Option<String>,
        /// The switch's own address on the uplink, A.B.C.D/N (not one of
        /// the host's).
        #[arg(long)]
        uplink_address: Option<String>,
        /// The router on the uplink, for destinations off its subnet.
        #[arg(long)]
        uplink_router: Option<String>,
        /// Drop frames whose source MAC or IP is not the container's.
        #[arg(long)]
        macspoofchk: bool,
        #[arg(long)]
        mtu: Option<u32>,
        /// Make the network's ports access ports of this VLAN.
        #[arg(long)]
        vlan: Option<u16>,
    },
    /// Delete a network without attachments.
    NetDelete {
        name: String,
        #[arg(long)]
        if_exists: bool,
    },
    /// Attach a network namespace (a name under /var/run/netns or a path)
    /// to a network.
    NetAttach {
        #[command(flatten)]
        which: Which,
        /// Ask for this address (one per subnet).
        #[arg(long)]
        ip: Vec<String>,
        /// Publish HOSTPORT:PORT[/tcp|udp] on the masquerade address.
        #[arg(long)]
        publish: Vec<String>,
        /// A label for network policy, KEY=VALUE.
        #[arg(long)]
        label: Vec<String>,
    },
    /// Detach a namespace from a network.
    NetDetach {
        #[command(flatten)]
        which: Which,
    },
    /// Networks and their attachments.
    NetList,
    /// Change an attachment's labels (policies select by them at once):
    /// KEY=VALUE sets, --remove KEY removes.
    NetLabel {
        #[command(flatten)]
        which: Which,
        labels: Vec<String>,
        #[arg(long)]
        remove: Vec<String>,
    },
    /// Add a network policy from a JSON file ("-": standard input), or
    /// replace the one of its name: this switch's form or a Kubernetes
    /// NetworkPolicy (its metadata.namespace names the network).
    PolicyAdd {
        file: String,
        /// The network, when the document does not name one.
        #[arg(long)]
        network: Option<String>,
    },
    /// Network policies: what each selects, its rules' counters.
    PolicyList {
        /// Only this network's.
        network: Option<String>,
    },
    /// Cluster networks (vswitch-agent's): this host's subnet and lease,
    /// the other hosts with their subnets, endpoints and lease TTLs, etcd,
    /// the last synchronisation and errors.
    ClusterShow {
        /// Only this network.
        network: Option<String>,
    },
    /// Delete a network policy.
    PolicyDel {
        name: String,
        #[arg(long)]
        if_exists: bool,
    },
    /// Versions of this tool and of the daemon.
    Version,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
}

/// An attachment on the command line: network, namespace, interface, id.
#[derive(clap::Args, Debug)]
struct Which {
    /// The network.
    name: String,
    /// The namespace: a name of `ip netns` or a path.
    netns: String,
    /// The interface in the namespace.
    #[arg(long, default_value = "eth0")]
    ifname: String,
    /// The attachment's id (default: the namespace's name).
    #[arg(long)]
    container_id: Option<String>,
}

/// A port's `KEY=VALUE` settings as `port.add` / `port.set` parameters:
/// `type=`, `tag=`, `trunks=`, `options:KEY=VALUE`, `transient=`,
/// `ofport_request=`. With `for_set`, `options:KEY=` (empty) removes KEY.
fn settings(items: &[String], for_set: bool) -> Result<serde_json::Map<String, Value>, String> {
    let mut p = serde_json::Map::new();
    let mut options = serde_json::Map::new();
    for item in items {
        let (k, v) = item.split_once('=').ok_or_else(|| format!("'{item}' is not KEY=VALUE"))?;
        let twice = || format!("'{k}' is given twice");
        if let Some(key) = k.strip_prefix("options:") {
            if key.is_empty() {
                return Err(format!("'{item}': options:KEY=VALUE needs a KEY"));
            }
            if options.contains_key(key) {
                return Err(twice());
            }
            options.insert(key.to_string(), if v.is_empty() && for_set { Value::Null } else { json!(v) });
            continue;
        }
        let value = match k {
            "type" if for_set => return Err("a port's type cannot be changed; delete and re-add it".into()),
            "type" => json!(v),
            "tag" => json!(v.parse::<u16>().map_err(|_| format!("tag '{v}' is not a VLAN ID"))?),
            "trunks" => {
                let list: Result<Vec<u16>, _> = v.split(',').filter(|s| !s.is_empty()).map(str::parse::<u16>).collect();
                json!(list.map_err(|_| format!("trunks '{v}' is not a list of VLAN IDs"))?)
            }
            "transient" => json!(v.parse::<bool>().map_err(|_| format!("transient '{v}' is not true or false"))?),
            "vlan_mode" => {
                v.parse::<vswitch_core::VlanModeName>().map_err(|e| e.to_string())?;
                json!(v)
            }
            "ofport_request" if !for_set => {
                json!(v.parse::<u32>().map_err(|_| format!("ofport_request '{v}' is not a port number"))?)
            }
            _ => {
                return Err(format!(
                    "unknown setting '{k}' (type, tag, trunks, vlan_mode, options:KEY, transient{})",
                    if for_set { "" } else { ", ofport_request" }
                ));
            }
        };
        if p.insert(if k == "ofport_request" { "port_no".into() } else { k.to_string() }, value).is_some() {
            return Err(twice());
        }
    }
    if !options.is_empty() {
        p.insert("options".into(), Value::Object(options));
    }
    Ok(p)
}

/// A JSON object of strings as `k=v` joined by `sep`; `None` if empty.
fn pairs(o: &Value, sep: &str) -> Option<String> {
    let o = o.as_object().filter(|o| !o.is_empty())?;
    Some(o.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("?"))).collect::<Vec<_>>().join(sep))
}

fn show(result: &Value, stats: &Value, status: &Value) -> String {
    let mut out = String::new();
    for t in status["threads"].as_array().into_iter().flatten() {
        if let Some(why) = t["failure"].as_str() {
            out.push_str(&format!("Datapath thread {} FAILED: {why}\n", t["name"].as_str().unwrap_or("?")));
        }
    }
    for b in result.as_array().into_iter().flatten() {
        out.push_str(&format!("Bridge {}\n", b["name"].as_str().unwrap_or("?")));
        if let Some(m) = b["fail_mode"].as_str() {
            out.push_str(&format!("    fail_mode: {m}\n"));
        }
        let sb = stats["bridges"].as_array().and_then(|v| v.iter().find(|x| x["name"] == b["name"]));
        for p in b["ports"].as_array().into_iter().flatten() {
            let name = p["name"].as_str().unwrap_or("?");
            out.push_str(&format!("    Port {name}\n        type: {}\n", p["type"].as_str().unwrap_or("?")));
            if let Some(tag) = p["tag"].as_u64() {
                out.push_str(&format!("        tag: {tag}\n"));
            }
            if let Some(m) = p["vlan_mode"].as_str() {
                out.push_str(&format!("        vlan_mode: {m}\n"));
            }
            if let Some(t) = p["trunks"].as_array().filter(|t| !t.is_empty()) {
                let list: Vec<String> = t.iter().map(|v| v.to_string()).collect();
                out.push_str(&format!("        trunks: [{}]\n", list.join(", ")));
            }
            if let Some(list) = pairs(&p["options"], ", ") {
                out.push_str(&format!("        options: {{{list}}}\n"));
            }
            if let Some(list) = pairs(&p["status"], ", ") {
                out.push_str(&format!("        status: {{{list}}}\n"));
            }
            if let Some(list) = pairs(&p["external_ids"], ", ") {
                out.push_str(&format!("        external_ids: {{{list}}}\n"));
            }
            if p["transient"] == true {
                out.push_str("        transient: true\n");
            }
            if let Some(n) = p["port_no"].as_u64() {
                out.push_str(&format!("        ofport: {n}\n"));
            }
            let up = sb
                .and_then(|s| s["ports"].as_array()?.iter().find(|x| x["name"] == name).map(|x| x["link_up"] == true));
            if let Some(e) = p["error"].as_str() {
                out.push_str(&format!("        error: {}\n", Value::from(e)));
            } else if up == Some(false) {
                out.push_str("        link_state: down\n");
            }
        }
    }
    out
}

/// `tnl-neigh-show` text.
fn neighbours_text(result: &Value) -> String {
    let mut out = format!("{:<16} {:<18} {:<16} {:>5}\n", "IP", "MAC", "Uplink", "Age");
    for e in result.as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<16} {:<18} {:<16} {:>5}\n",
            e["ip"].as_str().unwrap_or("?"),
            e["mac"].as_str().unwrap_or("?"),
            e["uplink"].as_str().unwrap_or("?"),
            e["age_s"].as_u64().unwrap_or(0)
        ));
    }
    out
}

/// `tnl-route-show` text: one route a line, `ip route`'s words.
fn routes_text(result: &Value) -> String {
    let mut out = String::new();
    for r in result.as_array().into_iter().flatten() {
        if let Some(kind) = r["kind"].as_str().filter(|k| *k != "unicast") {
            out.push_str(&format!("{kind} {}\n", r["prefix"].as_str().unwrap_or("?")));
            continue;
        }
        out.push_str(r["prefix"].as_str().unwrap_or("?"));
        if let Some(gw) = r["gateway"].as_str() {
            out.push_str(&format!(" via {gw}"));
        }
        out.push_str(&format!(" dev {}", r["dev"].as_str().unwrap_or("?")));
        if let Some(src) = r["src"].as_str() {
            out.push_str(&format!(" src {src}"));
        }
        if r["metric"].as_u64().unwrap_or(0) != 0 {
            out.push_str(&format!(" metric {}", r["metric"]));
        }
        if let Some(u) = r["uplink"].as_str() {
            out.push_str(&format!(" uplink {u}"));
        }
        out.push('\n');
    }
    out
}

fn fdb_text(result: &Value) -> String {
    let mut out = String::from(" port  VLAN  MAC                Age\n");
    for e in result.as_array().into_iter().flatten() {
        let age = if e["is_static"] == true { "static".to_string() } else { e["age_secs"].to_string() };
        out.push_str(&format!(
            "{:>5}  {:>4}  {}  {:>3}\n",
            e["port"].as_u64().unwrap_or(0),
            e["vlan"].as_u64().unwrap_or(0),
            e["mac"].as_str().unwrap_or("?"),
            age
        ));
    }
    out
}

/// `dump-flows` text from the core's own printer, so the text and the
/// JSON never drift.
fn flows_text(result: &Value) -> String {
    let rows: Vec<FlowStats> = serde_json::from_value(result.clone()).unwrap_or_default();
    rows.iter().map(|f| f.to_text() + "\n").collect()
}

/// The flows in FILE (`-`: standard input): one per line, `#` comments.
fn read_flows(file: &str) -> Result<Vec<String>, String> {
    let text = if file == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(|e| format!("cannot read standard input: {e}"))?
    } else {
        std::fs::read_to_string(file).map_err(|e| format!("cannot read {file}: {e}"))?
    };
    Ok(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect())
}

/// A field's value in a dump row, for sorting: counters and settings by
/// number, a match field by its text (numbers by value); `None` if the
/// rule does not name the field (those sort last, as in ovs-ofctl).
fn sort_key(f: &FlowStats, field: &str) -> Option<(u128, String)> {
    let n = |v: u64| Some((v as u128, String::new()));
    match field {
        "priority" => n(f.priority as u64),
        "table" => n(f.table as u64),
        "cookie" => n(f.cookie),
        "n_packets" => n(f.n_packets),
        "n_bytes" => n(f.n_bytes),
        "duration" => Some(((f.duration_secs * 1e6) as u128, String::new())),
        "idle_age" => n(f.idle_age_secs),
        _ => {
            let v = f.matching.split(',').find_map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k == field).then(|| v.to_string())
            })?;
            let num = v.split('/').next().and_then(|x| {
                x.strip_prefix("0x").map_or_else(|| x.parse::<u128>().ok(), |h| u128::from_str_radix(h, 16).ok())
            });
            let ip = v.split('/').next().and_then(|x| x.parse::<std::net::IpAddr>().ok()).map(|ip| match ip {
                std::net::IpAddr::V4(a) => u32::from(a) as u128,
                std::net::IpAddr::V6(a) => u128::from(a),
            });
            Some((num.or(ip).unwrap_or(0), v))
        }
    }
}

const SORT_FIELDS: &[&str] = &["priority", "table", "cookie", "n_packets", "n_bytes", "duration", "idle_age"];

fn sorted_flows_text(result: &Value, field: &str, desc: bool) -> Result<String, String> {
    if field.is_empty() || !field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("'{field}' is not a field to sort by ({}, or a match field)", SORT_FIELDS.join(", ")));
    }
    let mut rows: Vec<FlowStats> = serde_json::from_value(result.clone()).unwrap_or_default();
    // Stable: rules equal in the field keep the table's order.
    rows.sort_by(|a, b| match (sort_key(a, field), sort_key(b, field)) {
        (Some(x), Some(y)) if desc => y.cmp(&x),
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    });
    Ok(rows.iter().map(|f| f.to_text() + "\n").collect())
}

/// `show-ports` text, in ovs-ofctl show's layout.
fn show_ports_text(r: &Value) -> String {
    let mut out = String::new();
    for p in r.as_array().into_iter().flatten() {
        let mac = p["mac"].as_str().unwrap_or("none");
        out.push_str(&format!(" {}({}): addr:{mac}\n", p["port_no"], p["name"].as_str().unwrap_or("?")));
        let mut config = Vec::new();
        if p["admin_down"] == true {
            config.push("PORT_DOWN");
        }
        if p["no_flood"] == true {
            config.push("NO_FLOOD");
        }
        let state = if p["link_up"] == true { "LIVE" } else { "LINK_DOWN" };
        let config = if config.is_empty() { "0".to_string() } else { config.join(" ") };
        out.push_str(&format!("     type:       {}\n", p["type"].as_str().unwrap_or("?")));
        out.push_str(&format!("     config:     {config}\n     state:      {state}\n"));
        if let Some(speed) = p["speed_mbps"].as_u64() {
            out.push_str(&format!("     speed: {speed} Mbps now\n"));
        }
    }
    out
}

/// `dump-ports` text, in ovs-ofctl dump-ports' layout.
fn dump_ports_text(s: &Value) -> String {
    let mut out = String::new();
    for b in s["bridges"].as_array().into_iter().flatten() {
        let ports = b["ports"].as_array().cloned().unwrap_or_default();
        out.push_str(&format!("{}: {} ports\n", b["name"].as_str().unwrap_or("?"), ports.len()));
        for p in &ports {
            let sum = |dir: &str| -> u64 {
                let dir_of = |r: &str| match r {
                    "tx_queue_full"
                    | "link_down"
                    | "too_big"
                    | "tx_error"
                    | "tunnel_no_remote"
                    | "tunnel_no_route"
                    | "tunnel_no_neighbour" => "tx",
                    _ => "rx",
                };
                p["drops"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(r, _)| dir_of(r) == dir)
                    .map(|(_, n)| n.as_u64().unwrap_or(0))
                    .sum()
            };
            out.push_str(&format!(
                "  port {:>2}: rx pkts={}, bytes={}, drop={}, errs=0, frame=0, over=0, crc=0\n",
                p["port_no"],
                p["rx_packets"],
                p["rx_bytes"],
                sum("rx")
            ));
            out.push_str(&format!(
                "           tx pkts={}, bytes={}, drop={}, errs=0, coll=0\n",
                p["tx_packets"],
                p["tx_bytes"],
                sum("tx")
            ));
        }
    }
    out
}

fn mirrors_text(r: &Value) -> String {
    let mut out = String::new();
    for m in r.as_array().into_iter().flatten() {
        let list = |k: &str| -> String {
            m[k].as_array().map(|a| a.iter().map(records::text).collect::<Vec<_>>().join(",")).unwrap_or_default()
        };
        out.push_str(&format!("Mirror {}\n", m["name"].as_str().unwrap_or("?")));
        if m["select_all"] == true {
            out.push_str("    select_all: true\n");
        }
        for k in ["select_src_port", "select_dst_port", "select_vlan"] {
            let l = list(k);
            if !l.is_empty() {
                out.push_str(&format!("    {k}: {l}\n"));
            }
        }
        out.push_str(&format!("    output_port: {}\n", m["output_port"].as_str().unwrap_or("?")));
        out.push_str(&format!("    statistics: tx_packets={} tx_bytes={}\n", m["tx_packets"], m["tx_bytes"]));
        if let Some(e) = m["error"].as_str() {
            out.push_str(&format!("    error: {e}\n"));
        }
    }
    out
}

/// `add-mirror` settings as a mirror spec.
fn mirror_spec(name: &str, items: &[String]) -> Result<Value, String> {
    let mut m = serde_json::Map::new();
    m.insert("name".into(), json!(name));
    for item in items {
        let (k, v) = item.split_once('=').ok_or_else(|| format!("'{item}' is not KEY=VALUE"))?;
        let list = || v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect::<Vec<_>>();
        let value = match k.replace('-', "_").as_str() {
            "select_all" => json!(v.parse::<bool>().map_err(|_| format!("select_all '{v}' is not true or false"))?),
            "select_src_port" | "select_dst_port" => json!(list()),
            "select_vlan" => {
                let vids: Result<Vec<u16>, _> = list().iter().map(|s| s.parse::<u16>()).collect();
                json!(vids.map_err(|_| format!("select_vlan '{v}' is not a list of VLAN ids"))?)
            }
            "output_port" => json!(v),
            _ => {
                return Err(format!(
                    "unknown mirror setting '{k}' (select_all, select_src_port, select_dst_port, select_vlan, output_port)"
                ));
            }
        };
        if m.insert(k.replace('-', "_"), value).is_some() {
            return Err(format!("'{k}' is given twice"));
        }
    }
    if !m.contains_key("output_port") {
        return Err("a mirror needs output_port=PORT".into());
    }
    Ok(Value::Object(m))
}

/// `trace` text from the core's own printer.
fn trace_text(t: &Value) -> String {
    serde_json::from_value::<Trace>(t.clone()).map(|t| t.to_text() + "\n").unwrap_or_default()
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

/// `ct-set-limits` arguments as `ct.set_limits` parameters.
fn ct_limits(items: &[String]) -> Result<Value, String> {
    let mut p = serde_json::Map::new();
    let mut zones = serde_json::Map::new();
    let num = |k: &str, v: &str| v.parse::<u32>().map_err(|_| format!("{k} '{v}' is not a number"));
    for item in items {
        if let Some(rest) = item.strip_prefix("zone=") {
            let (z, l) = rest.split_once(",limit=").ok_or_else(|| format!("'{item}' must be zone=Z,limit=N"))?;
            z.parse::<u16>().map_err(|_| format!("zone '{z}' is not a zone number (0-65535)"))?;
            zones.insert(z.to_string(), if l == "default" { Value::Null } else { json!(num("limit", l)?) });
            continue;
        }
        match item.split_once('=') {
            Some(("default", v)) => p.insert("default".into(), json!(num("default", v)?)),
            Some(("global", v)) => p.insert("global".into(), json!(num("global", v)?)),
            _ => return Err(format!("'{item}' is not default=N, global=N or zone=Z,limit=N")),
        };
    }
    if p.is_empty() && zones.is_empty() {
        return Err("ct-set-limits needs default=N, global=N or zone=Z,limit=N".into());
    }
    p.insert("zones".into(), Value::Object(zones));
    Ok(Value::Object(p))
}

/// `ct-set-timeouts` arguments as `ct.set_timeouts` parameters.
fn ct_timeouts(items: &[String]) -> Result<Value, String> {
    let mut p = serde_json::Map::new();
    let mut t = serde_json::Map::new();
    for item in items {
        match item.split_once('=') {
            None if item == "reset" => {
                p.insert("reset".into(), json!(true));
            }
            Some(("zone", z)) => {
                let z = z.parse::<u16>().map_err(|_| format!("zone '{z}' is not a zone number (0-65535)"))?;
                p.insert("zone".into(), json!(z));
            }
            Some(("liberal", v)) => {
                let v = v.parse::<bool>().map_err(|_| format!("liberal '{v}' is not true or false"))?;
                p.insert("liberal".into(), json!(v));
            }
            Some((name, secs)) => {
                let secs = secs.parse::<u32>().map_err(|_| format!("{name} '{secs}' is not a number of seconds"))?;
                t.insert(name.to_string(), json!(secs));
            }
            None => return Err(format!("'{item}' is not NAME=SECONDS, zone=Z, liberal=BOOL or reset")),
        }
    }
    p.insert("timeouts".into(), Value::Object(t));
    Ok(Value::Object(p))
}

fn tuple_text(t: &Value) -> String {
    format!(
        "src={},dst={},sport={},dport={}",
        t["src"].as_str().unwrap_or("?"),
        t["dst"].as_str().unwrap_or("?"),
        t["sport"],
        t["dport"]
    )
}

/// `dump-conntrack` text, as `ovs-dpctl dump-conntrack` prints it.
fn conntrack_text(r: &Value) -> String {
    let mut out = String::new();
    for c in r.as_array().into_iter().flatten() {
        let proto = match c["proto"].as_u64() {
            Some(6) => "tcp".to_string(),
            Some(17) => "udp".to_string(),
            Some(1) => "icmp".to_string(),
            Some(58) => "icmpv6".to_string(),
            p => format!("proto={}", p.unwrap_or(0)),
        };
        let mut line = format!("{proto},orig=({}),reply=({})", tuple_text(&c["orig"]), tuple_text(&c["reply"]));
        if c["zone"].as_u64().unwrap_or(0) != 0 {
            line.push_str(&format!(",zone={}", c["zone"]));
        }
        if c["mark"].as_u64().unwrap_or(0) != 0 {
            line.push_str(&format!(",mark={}", c["mark"]));
        }
        if c["label"].as_str().is_some_and(|l| l != "0x0") {
            line.push_str(&format!(",labels={}", c["label"].as_str().unwrap_or("?")));
        }
        line.push_str(&format!(",timeout={}", c["timeout"]));
        if let Some(s) = c["tcp_state"].as_str() {
            line.push_str(&format!(",protoinfo=(state={s})"));
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

fn ct_stats_text(r: &Value) -> String {
    let mut out =
        format!("connections: {} (limit {}, {} bytes each)\n", r["connections"], r["limit"], r["bytes_per_connection"]);
    for (z, s) in r["zones"].as_object().into_iter().flatten() {
        let limit = s["limit"].as_u64().map_or("none".to_string(), |l| l.to_string());
        out.push_str(&format!("zone {z}: {} connections (limit {limit})\n", s["connections"]));
        for (what, n) in s["by_state"].as_object().into_iter().flatten() {
            out.push_str(&format!("    {what}: {n}\n"));
        }
    }
    let drops: Vec<String> = r["drops"].as_object().into_iter().flatten().map(|(k, v)| format!("{k}={v}")).collect();
    out.push_str(&format!("drops: {}\n", drops.join(" ")));
    out
}

/// `health` text: a line per datapath thread, then one per port.
fn health_text(r: &Value) -> String {
    let mut out = String::new();
    for t in r["threads"].as_array().into_iter().flatten() {
        let name = t["name"].as_str().unwrap_or("?");
        let ports = t["ports"].as_u64().unwrap_or(0);
        match t["failure"].as_str() {
            Some(why) => out.push_str(&format!("{name}: FAILED: {why} ({ports} ports)\n")),
            None => out.push_str(&format!("{name}: running ({ports} ports)\n")),
        }
    }
    for p in r["ports"].as_array().into_iter().flatten() {
        let s = |k: &str| p[k].as_str().unwrap_or("?").to_string();
        let state = s("state").replace('_', " ");
        let why = p["why"].as_str().map(|w| format!(": {w}")).unwrap_or_default();
        out.push_str(&format!(
            "{} port {} {} ({}, {}): {state}{why}\n",
            s("bridge"),
            p["port_no"],
            s("name"),
            s("type"),
            s("thread")
        ));
    }
    out
}

/// `pmd-stats` text: per thread, where its cycles went and what a packet
/// cost, laid out after ovs-appctl dpif-netdev/pmd-perf-show.
fn pmd_text(r: &Value) -> String {
    let labels = vswitch_core::PmdStats::BATCH_LABELS;
    let mut out = String::new();
    for t in r.as_array().into_iter().flatten() {
        let n = |k: &str| t[k].as_u64().unwrap_or(0);
        let hz = n("cycles_per_second").max(1) as f64;
        let (busy, idle, sleep) = (n("busy_cycles"), n("idle_cycles"), n("sleep_cycles"));
        let total = (busy + idle + sleep).max(1) as f64;
        let packets = n("packets");
        let pct = |c: u64| 100.0 * c as f64 / total;
        out.push_str(&format!(
            "{}:
",
            t["thread"].as_str().unwrap_or("?")
        ));
        out.push_str(&format!(
            "  Time: {:.3} s (cycle counter at {:.3} GHz)
",
            total / hz,
            hz / 1e9
        ));
        out.push_str(&format!(
            "  Iterations: {} busy, {} idle; {} sleeps
",
            n("busy_iterations"),
            n("idle_iterations"),
            n("sleeps")
        ));
        out.push_str(&format!(
            "  - Busy cycles:  {busy:>16} ({:5.1} %)
",
            pct(busy)
        ));
        out.push_str(&format!(
            "  - Idle cycles:  {idle:>16} ({:5.1} %)
",
            pct(idle)
        ));
        out.push_str(&format!(
            "  - Sleep cycles: {sleep:>16} ({:5.1} %)
",
            pct(sleep)
        ));
        let per_packet = if packets == 0 { "-".to_string() } else { format!("{:.0}", busy as f64 / packets as f64) };
        let busy_secs = busy as f64 / hz;
        let rate = if busy_secs > 0.0 {
            format!(", {:.3} Mpps while busy", packets as f64 / busy_secs / 1e6)
        } else {
            String::new()
        };
        out.push_str(&format!(
            "  Rx packets: {packets} ({per_packet} busy cycles/packet{rate})
"
        ));
        let batches = n("batches");
        let avg = if batches == 0 { 0.0 } else { packets as f64 / batches as f64 };
        out.push_str(&format!(
            "  Bursts: {batches} ({avg:.1} packets/burst)
"
        ));
        let hist = t["batch_histogram"].as_array().cloned().unwrap_or_default();
        let cells: Vec<String> =
            labels.iter().zip(&hist).map(|(l, c)| format!("{l}: {}", c.as_u64().unwrap_or(0))).collect();
        out.push_str(&format!(
            "  - by size: {}
",
            cells.join(", ")
        ));
    }
    out
}

fn lines_of(result: &Value, field: &str) -> String {
    result.as_array().into_iter().flatten().map(|v| format!("{}\n", v[field].as_str().unwrap_or("?"))).collect()
}

/// How a command's results are printed as text.
#[derive(Debug, Clone)]
enum Render {
    /// `get`: these columns of this record.
    Get(records::Table, String, Vec<String>),
    /// `list`: every record of the table, or one.
    List(records::Table, Option<String>),
    FailMode(String),
    /// dump-flows sorted by a field (true: descending).
    SortedFlows(String, bool),
    ShowPorts,
    DumpPorts,
    Mirrors,
    Nothing,
    /// A string result on a line of its own.
    Line,
    /// Nothing printed; a warning if the result says nothing changed.
    NoOp(&'static str),
    Show,
    Names,
    Policies,
    Fdb,
    Map,
    Flows,
    Tables,
    Groups,
    Trace,
    Stats,
    Version,
    Conntrack,
    CtStats,
    Pmd,
    Health,
    Neighbours,
    Routes,
    Networks,
    Cluster,
    Attachment,
}

/// A command as requests to the daemon.
struct Plan {
    ops: Vec<(&'static str, Value)>,
    render: Render,
    /// Rules too many for one request: staged in a bundle first, which the
    /// plan's single `flow.commit` then adds.
    staged: Option<(String, Vec<String>)>,
}

/// Bytes of rules sent in one request (the daemon takes lines up to 1 MiB).
const STAGE_BYTES: usize = 512 * 1024;

/// Stages `flows` for `bridge` in requests of at most STAGE_BYTES; the
/// bundle's id. On an error the bundle is discarded.
fn stage(c: &mut Client, bridge: &str, flows: &[String]) -> Result<u64, CallError> {
    let mut bundle: Option<u64> = None;
    let mut start = 0;
    while start < flows.len() {
        let (mut end, mut bytes) = (start, 0);
        while end < flows.len() && (end == start || bytes + flows[end].len() + 4 <= STAGE_BYTES) {
            bytes += flows[end].len() + 4;
            end += 1;
        }
        let r = c.call("flow.stage", json!({ "bridge": bridge, "flows": &flows[start..end], "bundle": bundle }));
        match r {
            Ok(v) => bundle = v["bundle"].as_u64(),
            Err(e) => {
                if let Some(id) = bundle {
                    let _ = c.call("flow.discard", json!({ "bundle": id }));
                }
                return Err(e);
            }
        }
        start = end;
    }
    bundle.ok_or_else(|| CallError::Rpc("invalid_argument".into(), "no flows to add".into()))
}

fn plan(command: Command) -> Result<Plan, String> {
    let one = |method, params, render| Plan { ops: vec![(method, params)], render, staged: None };
    let none = Render::Nothing;
    Ok(match command {
        Command::Show => {
            let ops = vec![("bridge.list", Value::Null), ("stats.get", Value::Null), ("system.status", Value::Null)];
            Plan { ops, render: Render::Show, staged: None }
        }
        Command::AddBr { bridge, may_exist } => {
            one("bridge.add", json!({ "name": bridge, "may_exist": may_exist }), none)
        }
        Command::DelBr { bridge, if_exists } => {
            one("bridge.del", json!({ "name": bridge, "if_exists": if_exists }), none)
        }
        Command::ListBr => one("bridge.list", Value::Null, Render::Names),
        Command::BrExists { .. } | Command::Completions { .. } => return Err("this command cannot be chained".into()),
        Command::AddPort { bridge, port, settings: s, may_exist } => {
            let mut p = settings(&s, false)?;
            p.insert("bridge".into(), json!(bridge));
            p.insert("name".into(), json!(port));
            p.insert("may_exist".into(), json!(may_exist));
            one("port.add", Value::Object(p), none)
        }
        Command::DelPort { names, if_exists } => {
            let port = names.last().cloned().unwrap_or_default();
            let mut p = json!({ "name": port, "if_exists": if_exists });
            if names.len() == 2 {
                p["bridge"] = json!(names[0]);
            }
            one("port.del", p, none)
        }
        Command::ListPorts { bridge } | Command::ListIfaces { bridge } => {
            one("port.list", json!({ "bridge": bridge }), Render::Names)
        }
        Command::PortToBr { port: name } | Command::IfaceToBr { iface: name } => {
            one("port.bridge", json!({ "name": name }), Render::Line)
        }
        Command::SetPort { port, settings: s } => {
            if s.is_empty() {
                return Err("set-port needs at least one KEY=VALUE".into());
            }
            let mut p = settings(&s, true)?;
            p.insert("name".into(), json!(port));
            one("port.set", Value::Object(p), none)
        }
        Command::SetFailMode { bridge, mode } => {
            mode.parse::<vswitch_core::config::FailMode>().map_err(|e| e.to_string())?;
            one("bridge.set", json!({ "name": bridge, "fail_mode": mode }), none)
        }
        Command::DelFailMode { bridge } => one("bridge.set", json!({ "name": bridge, "fail_mode": null }), none),
        Command::GetFailMode { bridge } => one("bridge.list", Value::Null, Render::FailMode(bridge)),
        Command::Get { table, record, columns } => {
            if columns.is_empty() {
                return Err("get needs TABLE RECORD COLUMN...".into());
            }
            let t = records::Table::parse(&table)?;
            let ops = vec![("bridge.list", Value::Null), ("stats.get", Value::Null)];
            Plan { ops, render: Render::Get(t, record, columns), staged: None }
        }
        Command::List { table, record } => {
            let t = records::Table::parse(&table)?;
            let ops = vec![("bridge.list", Value::Null), ("stats.get", Value::Null)];
            Plan { ops, render: Render::List(t, record), staged: None }
        }
        Command::Set { table, record, items } => {
            if items.is_empty() {
                return Err("set needs TABLE RECORD COLUMN=VALUE...".into());
            }
            let (m, p) = records::set(records::Table::parse(&table)?, &record, &items)?;
            one(m, p, none)
        }
        Command::Clear { table, record, columns } => {
            if columns.is_empty() {
                return Err("clear needs TABLE RECORD COLUMN...".into());
            }
            let (m, p) = records::clear(records::Table::parse(&table)?, &record, &columns)?;
            one(m, p, none)
        }
        Command::ShowPorts { bridge } => one("port.show", json!({ "bridge": bridge }), Render::ShowPorts),
        Command::DumpPorts { bridge, port } => {
            one("stats.get", json!({ "bridge": bridge, "port": port }), Render::DumpPorts)
        }
        Command::ModPort { bridge, port, action } => {
            let p = match action.as_str() {
                "up" => json!({ "bridge": bridge, "name": port, "down": false }),
                "down" => json!({ "bridge": bridge, "name": port, "down": true }),
                "flood" => json!({ "bridge": bridge, "name": port, "no_flood": false }),
                _ => json!({ "bridge": bridge, "name": port, "no_flood": true }),
            };
            one("port.mod", p, none)
        }
        Command::AddMirror { bridge, name, settings: s } => {
            one("mirror.add", json!({ "bridge": bridge, "mirror": mirror_spec(&name, &s)? }), none)
        }
        Command::DelMirror { bridge, name, if_exists } => {
            one("mirror.del", json!({ "bridge": bridge, "name": name, "if_exists": if_exists }), none)
        }
        Command::ListMirrors { bridge } => one("mirror.list", json!({ "bridge": bridge }), Render::Mirrors),
        Command::Capture { .. } => return Err("capture cannot be chained".into()),
        Command::ReplaceFlows { bridge, file } => {
            let flows = read_flows(&file)?;
            if flows.iter().map(|f| f.len() + 4).sum::<usize>() > STAGE_BYTES {
                let mut p = one("flow.commit", json!({ "replace": true }), none);
                p.staged = Some((bridge, flows));
                p
            } else {
                one("flow.add", json!({ "bridge": bridge, "flows": flows, "replace": true }), none)
            }
        }
        Command::FdbShow { bridge } => one("fdb.show", json!({ "bridge": bridge }), Render::Fdb),
        Command::FdbFlush { bridge } => one("fdb.flush", json!({ "bridge": bridge }), none),
        Command::FdbStats { bridge } => one("fdb.stats", json!({ "bridge": bridge }), Render::Map),
        Command::FdbAdd { bridge, port, vlan, mac } => {
            let port = port.parse::<u64>().map_or(json!(port), |n| json!(n));
            one("fdb.add", json!({ "bridge": bridge, "port": port, "vlan": vlan, "mac": mac }), none)
        }
        Command::FdbDel { bridge, vlan, mac } => {
            one("fdb.del", json!({ "bridge": bridge, "vlan": vlan, "mac": mac }), Render::NoOp("no such MAC entry"))
        }
        Command::AddFlow { bridge, flow } => one("flow.add", json!({ "bridge": bridge, "flows": [flow] }), none),
        Command::AddFlows { bridge, file } => {
            let flows = read_flows(&file)?;
            if flows.iter().map(|f| f.len() + 4).sum::<usize>() > STAGE_BYTES {
                let mut p = one("flow.commit", Value::Null, none);
                p.staged = Some((bridge, flows));
                p
            } else {
                one("flow.add", json!({ "bridge": bridge, "flows": flows }), none)
            }
        }
        Command::DelFlows { bridge, flow, strict } => one(
            "flow.del",
            json!({ "bridge": bridge, "flow": flow, "strict": strict }),
            Render::NoOp("no rule matched"),
        ),
        Command::ModFlows { bridge, flow, strict } => one(
            "flow.mod",
            json!({ "bridge": bridge, "flow": flow, "strict": strict }),
            Render::NoOp("no rule matched"),
        ),
        Command::DumpFlows { bridge, filter, sort, rsort } => {
            let render = match (sort, rsort) {
                (Some(_), Some(_)) => return Err("give --sort or --rsort, not both".into()),
                (Some(f), None) => Render::SortedFlows(f, false),
                (None, Some(f)) => Render::SortedFlows(f, true),
                (None, None) => Render::Flows,
            };
            one("flow.dump", json!({ "bridge": bridge, "filter": filter }), render)
        }
        Command::DumpTables { bridge } => one("flow.tables", json!({ "bridge": bridge }), Render::Tables),
        Command::AddGroup { bridge, group } => one("group.add", json!({ "bridge": bridge, "group": group }), none),
        Command::ModGroup { bridge, group } => one("group.mod", json!({ "bridge": bridge, "group": group }), none),
        Command::DelGroups { bridge, group } => {
            let id = match group.as_deref().map(|g| g.trim().trim_start_matches("group_id=")) {
                None | Some("") => None,
                Some(n) => Some(n.parse::<u32>().map_err(|_| format!("'{n}' is not a group number (group_id=N)"))?),
            };
            one("group.del", json!({ "bridge": bridge, "group_id": id }), none)
        }
        Command::DumpGroups { bridge } => one("group.dump", json!({ "bridge": bridge }), Render::Groups),
        Command::Trace { bridge, flow } => one("trace", json!({ "bridge": bridge, "flow": flow }), Render::Trace),
        Command::DumpConntrack { filter } => one("ct.dump", json!({ "filter": filter.join(",") }), Render::Conntrack),
        Command::FlushConntrack { filter } => one("ct.flush", json!({ "filter": filter.join(",") }), Render::Map),
        Command::CtStats => one("ct.stats", Value::Null, Render::CtStats),
        Command::CtSetLimits { limits } => one("ct.set_limits", ct_limits(&limits)?, none),
        Command::CtSetTimeouts { settings } => one("ct.set_timeouts", ct_timeouts(&settings)?, none),
        Command::Stats { bridge, port } => one("stats.get", json!({ "bridge": bridge, "port": port }), Render::Stats),
        Command::PmdStats => one("pmd.stats", Value::Null, Render::Pmd),
        Command::PmdStatsClear => one("pmd.stats_clear", Value::Null, none),
        Command::TnlNeighShow => one("tnl.neigh_show", Value::Null, Render::Neighbours),
        Command::TnlNeighFlush => one("tnl.neigh_flush", Value::Null, Render::Map),
        Command::TnlNeighAging { seconds } => one("tnl.neigh_aging", json!({ "seconds": seconds }), Render::Map),
        Command::TnlRouteShow => one("tnl.route_show", Value::Null, Render::Routes),
        Command::Health => one("system.health", Value::Null, Render::Health),
        Command::Version => one("system.version", Value::Null, Render::Version),
        Command::NetCreate {
            name,
            subnet,
            gateway,
            bridge,
            masquerade,
            uplink_address,
            uplink_router,
            macspoofchk,
            mtu,
            vlan,
        } => {
            let mut ranges: Vec<Value> = subnet.iter().map(|s| json!([{ "subnet": s }])).collect();
            if let Some(g) = gateway {
                ranges[0][0]["gateway"] = json!(g);
            }
            let mut spec = json!({
                "name": name,
                "ipam": { "type": "vswitch", "ranges": ranges },
                "is_gateway": true,
                "is_default_gateway": true,
                "macspoofchk": macspoofchk,
            });
            for (k, v) in [("bridge", json!(bridge)), ("mtu", json!(mtu)), ("vlan", json!(vlan))] {
                if !v.is_null() {
                    spec[k] = v;
                }
            }
            if let Some(uplink) = masquerade {
                spec["masquerade"] = json!({ "uplink": uplink, "address": uplink_address, "gateway": uplink_router });
            }
            one("net.create", json!({ "network": spec }), none)
        }
        Command::NetDelete { name, if_exists } => {
            one("net.delete", json!({ "name": name, "if_exists": if_exists }), none)
        }
        Command::NetAttach { which, ip, publish, label } => {
            let mut maps = Vec::new();
            for p in &publish {
                let (ports, proto) = p.split_once('/').unwrap_or((p, "tcp"));
                let (h, c) =
                    ports.split_once(':').ok_or_else(|| format!("--publish '{p}' is not HOSTPORT:PORT[/PROTO]"))?;
                let port = |s: &str| s.parse::<u16>().map_err(|_| format!("--publish '{p}': '{s}' is not a port"));
                maps.push(json!({ "hostPort": port(h)?, "containerPort": port(c)?, "protocol": proto }));
            }
            let mut labels = serde_json::Map::new();
            for l in &label {
                let (k, v) = l.split_once('=').ok_or_else(|| format!("--label '{l}' is not KEY=VALUE"))?;
                labels.insert(k.to_string(), json!(v));
            }
            let mut params = which.attachment();
            params["netns"] = json!(which.netns_path());
            params["request_ips"] = json!(ip);
            params["port_mappings"] = json!(maps);
            params["labels"] = Value::Object(labels);
            one("net.attach", params, Render::Attachment)
        }
        Command::NetDetach { which } => one("net.detach", which.attachment(), none),
        Command::NetList => one("net.list", Value::Null, Render::Networks),
        Command::NetLabel { which, labels, remove } => {
            let mut set = serde_json::Map::new();
            for l in &labels {
                let (k, v) = l.split_once('=').ok_or_else(|| format!("'{l}' is not KEY=VALUE"))?;
                set.insert(k.to_string(), json!(v));
            }
            let mut params = which.attachment();
            params["set"] = Value::Object(set);
            params["remove"] = json!(remove);
            one("net.label", params, none)
        }
        Command::PolicyAdd { file, network } => {
            let text = if file == "-" {
                std::io::read_to_string(std::io::stdin()).map_err(|e| format!("cannot read standard input: {e}"))?
            } else {
                std::fs::read_to_string(&file).map_err(|e| format!("cannot read {file}: {e}"))?
            };
            let doc: Value = serde_json::from_str(&text).map_err(|e| format!("{file} is not JSON: {e}"))?;
            one("policy.add", json!({ "policy": doc, "network": network }), none)
        }
        Command::PolicyList { network } => one("policy.list", json!({ "network": network }), Render::Policies),
        Command::ClusterShow { network } => one("net.cluster", json!({ "network": network }), Render::Cluster),
        Command::PolicyDel { name, if_exists } => {
            one("policy.del", json!({ "name": name, "if_exists": if_exists }), none)
        }
    })
}

impl Which {
    /// The namespace's path: a bare name is one of `ip netns`'s.
    fn netns_path(&self) -> String {
        if self.netns.contains('/') { self.netns.clone() } else { format!("/var/run/netns/{}", self.netns) }
    }

    /// `network`, `container_id` (the given one, else the namespace's
    /// name) and `ifname`, as `net.*` parameters.
    fn attachment(&self) -> Value {
        let id = self
            .container_id
            .clone()
            .unwrap_or_else(|| self.netns.rsplit('/').next().unwrap_or(&self.netns).to_string());
        json!({ "network": self.name, "container_id": id, "ifname": self.ifname })
    }
}

fn ips_text(ips: &Value) -> String {
    let list: Vec<&str> = ips.as_array().into_iter().flatten().filter_map(|i| i["address"].as_str()).collect();
    list.join(" ")
}

/// `net-list` text: each network, then its attachments.
fn networks_text(r: &Value) -> String {
    let mut out = String::new();
    for n in r.as_array().into_iter().flatten() {
        let spec = &n["network"];
        let subnets: Vec<String> = spec["ipam"]["ranges"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|set| {
                set.as_array().into_iter().flatten().filter_map(|r| r["subnet"].as_str().map(str::to_string))
            })
            .chain(spec["ipam"]["subnet"].as_str().map(str::to_string))
            .collect();
        let name = spec["name"].as_str().unwrap_or("?");
        out.push_str(&format!("Network {name}\n    bridge: {}\n", n["bridge"].as_str().unwrap_or("?")));
        if !subnets.is_empty() {
            out.push_str(&format!("    subnets: {}\n", subnets.join(" ")));
        }
        if let Some(p) = n["problem"].as_str() {
            out.push_str(&format!("    problem: {p}\n"));
        }
        if let Some(m) = spec.get("masquerade").filter(|m| !m.is_null()) {
            let (uplink, address) = (m["uplink"].as_str().unwrap_or("?"), m["address"].as_str().unwrap_or("?"));
            out.push_str(&format!("    masquerade: via {uplink} as {address}\n"));
        }
        for a in n["attachments"].as_array().into_iter().flatten() {
            let text = |k: &str| a[k].as_str().unwrap_or("?").to_string();
            out.push_str(&format!("    Attachment {} {}\n", text("container_id"), text("ifname")));
            out.push_str(&format!("        netns: {}\n        port: {}\n", text("netns"), text("port")));
            out.push_str(&format!("        addresses: {}\n", ips_text(&a["ips"])));
            for m in a["port_mappings"].as_array().into_iter().flatten() {
                let proto = m["protocol"].as_str().unwrap_or("tcp");
                out.push_str(&format!("        published: {} -> {}/{proto}\n", m["hostPort"], m["containerPort"]));
            }
            if let Some(list) = pairs(&a["labels"], ",") {
                out.push_str(&format!("        labels: {list}\n"));
            }
        }
    }
    out
}

/// `cluster-show` text: per cluster network, this host, etcd, the other
/// hosts (a table), what the agent could not use.
fn cluster_text(r: &Value) -> String {
    let mut out = String::new();
    let s = |v: &Value| match v {
        Value::Null => "-".to_string(),
        Value::String(t) => t.clone(),
        v => v.to_string(),
    };
    for n in r.as_array().into_iter().flatten() {
        let (c, a) = (&n["cluster"], &n["agent"]);
        let backend = &c["backend"];
        out.push_str(&format!("Cluster network {} ({})\n", s(&n["network"]), s(&c["network"])));
        out.push_str(&format!("    bridge: {}\n", s(&n["bridge"])));
        let how = match backend["type"].as_str() {
            Some("vxlan") => format!(
                "vxlan VNI {} port {} from {} VTEP {}",
                s(&backend["vni"]),
                s(&backend["port"]),
                s(&backend["local_ip"]),
                s(&backend["vtep_mac"])
            ),
            other => other.unwrap_or("?").to_string(),
        };
        out.push_str(&format!("    backend: {how}\n"));
        let subnets: Vec<String> = n["subnets"].as_array().into_iter().flatten().map(s).collect();
        out.push_str(&format!("    this host: {}", subnets.join(" ")));
        if !a["lease"].is_null() {
            out.push_str(&format!(
                " lease {} TTL {} s ({} s left)",
                s(&a["lease"]["id"]),
                s(&a["lease"]["ttl"]),
                s(&a["lease"]["ttl_left"])
            ));
        }
        out.push('\n');
        let age = n["reported_seconds_ago"].as_f64();
        if a.is_null() {
            out.push_str("    agent: no report (is vswitch-agent running?)\n");
        } else {
            let etcd = &a["etcd"];
            let state =
                if etcd["connected"] == json!(true) { "connected".to_string() } else { "unreachable".to_string() };
            out.push_str(&format!(
                "    etcd: {} {state} revision {}\n",
                etcd["endpoints"].as_array().map(|e| e.iter().map(s).collect::<Vec<_>>().join(",")).unwrap_or_default(),
                s(&etcd["revision"])
            ));
            let sync = a["last_sync"].as_f64().map_or("never".to_string(), |t| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(t);
                format!("{:.0} s ago", (now - t).max(0.0))
            });
            out.push_str(&format!(
                "    agent: pid {} reported {} s ago, last sync {sync}\n",
                s(&a["pid"]),
                age.map_or("?".into(), |x| format!("{x:.0}"))
            ));
            for e in [&etcd["error"], &a["vswitchd_error"]].into_iter().filter(|e| !e.is_null()) {
                out.push_str(&format!("    error: {}\n", s(e)));
            }
        }
        let routes = n["routes"].as_array().cloned().unwrap_or_default();
        let hosts = a["hosts"].as_array().cloned().unwrap_or_default();
        out.push_str(&format!(
            "    hosts: {} (with {} containers known as policy peers)\n",
            routes.len(),
            n["endpoints"].as_u64().unwrap_or(0)
        ));
        if !routes.is_empty() {
            let mut rows = vec![["SUBNET", "ENDPOINT", "VTEP MAC", "LEASE", "TTL LEFT"].map(str::to_string).to_vec()];
            for r in &routes {
                let h = hosts.iter().find(|h| h["subnet"] == r["subnet"]).cloned().unwrap_or(Value::Null);
                rows.push(vec![
                    s(&r["subnet"]),
                    s(&r["public_ip"]),
                    s(&r["vtep_mac"]),
                    s(&h["lease"]),
                    h["ttl_left"].as_i64().map_or("-".into(), |t| format!("{t} s")),
                ]);
            }
            let widths: Vec<usize> = (0..5).map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0)).collect();
            for r in rows {
                let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
                out.push_str(&format!("        {}\n", line.join("  ").trim_end()));
            }
        }
        for i in a["ignored"].as_array().into_iter().flatten() {
            out.push_str(&format!("    ignored {}: {}\n", s(&i["key"]), s(&i["why"])));
        }
    }
    out
}

/// `policy-list` text: each policy, what it selects, its rules' counters.
fn policies_text(r: &Value) -> String {
    let mut out = String::new();
    for p in r.as_array().into_iter().flatten() {
        let text = |v: &Value| v.as_str().unwrap_or("?").to_string();
        out.push_str(&format!("Policy {} (network {})\n", text(&p["name"]), text(&p["network"])));
        let selects: Vec<String> = p["selects"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| format!("{}/{}", text(&a["container_id"]), text(&a["ifname"])))
            .collect();
        out.push_str(&format!(
            "    selects: {}\n",
            if selects.is_empty() { "nothing".into() } else { selects.join(" ") }
        ));
        for rule in p["rules"].as_array().into_iter().flatten() {
            let d = text(&rule["direction"]).to_lowercase();
            out.push_str(&format!("    {d} rule {}: allowed {} packets\n", rule["rule"], rule["allowed_packets"]));
        }
        for (d, n) in p["network_denied_packets"].as_object().into_iter().flatten() {
            out.push_str(&format!("    {d} denied on the network: {n} packets\n"));
        }
    }
    out
}

/// A command's JSON result (its first request's) and its text.
fn render(how: Render, results: &[Value]) -> Result<(Value, String), String> {
    let r = results.first().cloned().unwrap_or(Value::Null);
    let text = match how {
        Render::Get(table, record, columns) => {
            let recs = records::records(table, &r, results.get(1).unwrap_or(&Value::Null));
            let rec = recs
                .iter()
                .find(|x| x.name == record)
                .ok_or_else(|| format!("no row \"{record}\" in table {table:?}"))?;
            records::get(table, rec, &columns)?
        }
        Render::List(table, record) => {
            let mut recs = records::records(table, &r, results.get(1).unwrap_or(&Value::Null));
            if let Some(name) = &record {
                recs.retain(|x| &x.name == name);
                if recs.is_empty() {
                    return Err(format!("no row \"{name}\" in table {table:?}"));
                }
            }
            records::list(&recs)
        }
        Render::FailMode(bridge) => {
            let b = r.as_array().and_then(|a| a.iter().find(|b| b["name"] == json!(bridge)));
            let b = b.ok_or_else(|| format!("no bridge named {bridge}"))?;
            b["fail_mode"].as_str().map(|m| format!("{m}\n")).unwrap_or_default()
        }
        Render::SortedFlows(field, desc) => sorted_flows_text(&r, &field, desc)?,
        Render::ShowPorts => show_ports_text(&r),
        Render::DumpPorts => dump_ports_text(&r),
        Render::Mirrors => mirrors_text(&r),
        Render::Nothing => String::new(),
        Render::NoOp(what) => {
            // A deletion or change that touched nothing says so (stderr;
            // still a success, as in Open vSwitch).
            if ["removed", "deleted", "modified"].iter().any(|k| r[*k] == json!(false) || r[*k] == json!(0)) {
                eprintln!("vswitch-ctl: warning: {what}: nothing changed");
            }
            String::new()
        }
        Render::Show => show(&r, results.get(1).unwrap_or(&Value::Null), results.get(2).unwrap_or(&Value::Null)),
        Render::Names => lines_of(&r, "name"),
        Render::Line => r.as_str().map(|s| format!("{s}\n")).unwrap_or_default(),
        Render::Fdb => fdb_text(&r),
        Render::Map => r.as_object().into_iter().flatten().map(|(k, v)| format!("{k}: {v}\n")).collect(),
        Render::Flows => flows_text(&r),
        Render::Policies => policies_text(&r),
        Render::Groups => {
            let rows: Vec<GroupStats> = serde_json::from_value(r.clone()).unwrap_or_default();
            rows.iter().map(|g| g.to_text() + "\n").collect()
        }
        Render::Tables => {
            let rows: Vec<TableRow> = serde_json::from_value(r.clone()).unwrap_or_default();
            rows.iter().map(|t| t.to_text() + "\n").collect()
        }
        Render::Trace => trace_text(&r),
        Render::Stats => stats_text(&r),
        Render::Conntrack => conntrack_text(&r),
        Render::CtStats => ct_stats_text(&r),
        Render::Pmd => pmd_text(&r),
        Render::Health => health_text(&r),
        Render::Neighbours => neighbours_text(&r),
        Render::Routes => routes_text(&r),
        Render::Networks => networks_text(&r),
        Render::Cluster => cluster_text(&r),
        Render::Attachment => format!("{}\n", ips_text(&r["ips"])),
        Render::Version => {
            format!("vswitch-ctl {}\nvswitchd {}\n", env!("CARGO_PKG_VERSION"), r["version"].as_str().unwrap_or("?"))
        }
    };
    Ok((r, text))
}

fn run(cli: Cli, more: Vec<Command>) -> Result<ExitCode, CallError> {
    let bad = |m: String| CallError::Rpc("invalid_argument".into(), m);
    let json = cli.format == Format::Json;
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(
            shell,
            &mut <Cli as clap::CommandFactory>::command(),
            "vswitch-ctl",
            &mut std::io::stdout(),
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut c = Client::connect(&socket_path(cli.socket.as_deref()), Duration::from_secs(cli.timeout))?;
    if let Command::Capture { bridge, port, rx, tx, count, write, duration, snaplen } = &cli.command {
        if !more.is_empty() {
            return Err(bad("capture cannot be chained with other commands".into()));
        }
        let opts = capture::Options {
            bridge: bridge.clone(),
            port: port.clone(),
            rx: *rx,
            tx: *tx,
            count: *count,
            write: write.clone(),
            duration: *duration,
            snaplen: *snaplen,
        };
        return capture::run(&mut c, &opts).map(|()| ExitCode::SUCCESS);
    }
    if let Command::BrExists { bridge } = &cli.command {
        if !more.is_empty() {
            return Err(bad("br-exists cannot be chained with other commands".into()));
        }
        let r = c.call("bridge.exists", json!({ "name": bridge }))?;
        if json {
            println!("{r}");
        }
        return Ok(if r == json!(true) { ExitCode::SUCCESS } else { ExitCode::from(2) });
    }
    let mut plans = std::iter::once(cli.command).chain(more).map(plan).collect::<Result<Vec<_>, _>>().map_err(bad)?;
    for p in &mut plans {
        if let Some((bridge, flows)) = p.staged.take() {
            let id = stage(&mut c, &bridge, &flows)?;
            if !p.ops[0].1.is_object() {
                p.ops[0].1 = json!({});
            }
            p.ops[0].1["bundle"] = json!(id);
        }
    }
    let health = plans.len() == 1 && matches!(plans[0].render, Render::Health);
    let outputs: Vec<(Value, String)> = if plans.len() == 1 {
        let results = plans[0].ops.iter().map(|(m, p)| c.call(m, p.clone())).collect::<Result<Vec<_>, _>>()?;
        vec![render(plans[0].render.clone(), &results).map_err(bad)?]
    } else {
        // Several commands joined with `--`: one transaction, all or nothing.
        let ops: Vec<Value> =
            plans.iter().flat_map(|p| &p.ops).map(|(m, p)| json!({ "method": m, "params": p })).collect();
        let all = c.call("transact", json!({ "ops": ops }))?;
        let mut results = all.as_array().cloned().unwrap_or_default().into_iter();
        plans
            .iter()
            .map(|p| render(p.render.clone(), &results.by_ref().take(p.ops.len()).collect::<Vec<_>>()))
            .collect::<Result<_, _>>()
            .map_err(bad)?
    };
    if json {
        match outputs.as_slice() {
            [(r, _)] => println!("{r}"),
            many => println!("{}", Value::Array(many.iter().map(|(r, _)| r.clone()).collect())),
        }
    } else {
        outputs.iter().for_each(|(_, t)| print!("{t}"));
    }
    if health && !healthy(&outputs[0].0) {
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether a `system.health` result has no failed thread or port.
fn healthy(r: &Value) -> bool {
    let threads_ok = r["threads"].as_array().into_iter().flatten().all(|t| t["failure"].is_null());
    let ports_ok = r["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|p| !matches!(p["state"].as_str(), Some("failed" | "thread_failed")));
    threads_ok && ports_ok
}

/// The options that apply to the whole invocation, with whether each
/// takes a value (`--socket S`, `-f json`, `--timeout=5`).
const GLOBAL_OPTIONS: &[(&str, bool)] =
    &[("--socket", true), ("--format", true), ("-f", true), ("--timeout", true), ("-t", true)];

/// One command's tokens in the order clap reads them: the global options
/// first, then the command, then its own options wherever ovs-vsctl lets
/// them stand (`--may-exist add-br br0` is `add-br br0 --may-exist`).
/// The second value says whether the part has a command at all.
fn reorder(part: &[String]) -> (Vec<String>, bool) {
    let (mut globals, mut flags) = (Vec::new(), Vec::new());
    let mut i = 0;
    while i < part.len() && part[i].starts_with('-') {
        let t = &part[i];
        let name = t.split_once('=').map_or(t.as_str(), |(n, _)| n);
        match GLOBAL_OPTIONS.iter().find(|(g, _)| *g == name) {
            Some((_, true)) if !t.contains('=') => {
                globals.extend(part[i..(i + 2).min(part.len())].iter().cloned());
                i += 2;
                continue;
            }
            Some(_) => globals.push(t.clone()),
            // --help and --version stay where clap expects them.
            None if t == "--help" || t == "-h" || t == "--version" || t == "-V" => globals.push(t.clone()),
            None => flags.push(t.clone()),
        }
        i += 1;
    }
    let mut out = globals;
    let Some(cmd) = part.get(i) else {
        out.extend(flags);
        return (out, false);
    };
    out.push(cmd.clone());
    out.extend(flags);
    out.extend(part[i + 1..].iter().cloned());
    (out, true)
}

/// Splits the command line at each `--`: each part is a command, with its
/// own options before or after it (as ovs-vsctl has them); the global
/// options may stand in any part, and a first part of options alone (a
/// leading `--`, or `vswitch-ctl -f json -- add-br br0`) goes with the
/// first command.
fn parse_args() -> Result<(Cli, Vec<Command>), clap::Error> {
    let args: Vec<String> = std::env::args().collect();
    let mut parts: Vec<Vec<String>> = args[1..].split(|a| a == "--").map(<[String]>::to_vec).collect();
    while parts.len() > 1 && !reorder(&parts[0]).1 {
        let first = parts.remove(0);
        parts[0].splice(0..0, first);
    }
    let parse = |p: &[String]| Cli::try_parse_from(std::iter::once(args[0].clone()).chain(reorder(p).0));
    let cli = parse(&parts[0])?;
    let more = parts[1..]
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| parse(p).map(|c| c.command))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((cli, more))
}

fn main() -> ExitCode {
    let (cli, more) = match parse_args() {
        Ok(p) => p,
        Err(e) => {
            // Help and version are not errors; a usage error exits 1 (2 is
            // a predicate's "false" only).
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(1) } else { ExitCode::SUCCESS };
        }
    };
    let json = cli.format == Format::Json;
    match run(cli, more) {
        Ok(code) => code,
        Err(e) => {
            if json {
                // Scripts reading JSON get the error as JSON on stdout
                // too; the exit code is the same as in text mode.
                let (code, message) = match &e {
                    CallError::Unreachable(m) => ("unreachable", m.as_str()),
                    CallError::Rpc(kind, m) => (kind.as_str(), m.as_str()),
                };
                println!("{}", json!({ "error": { "code": code, "message": message } }));
            }
            eprintln!("vswitch-ctl: {e}");
            ExitCode::from(1)
        }
    }
}
