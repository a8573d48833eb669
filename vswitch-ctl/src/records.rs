//! ovs-vsctl's database commands over a fixed set of columns: `get`,
//! `set`, `clear` and `list` on the Bridge, Port and Interface tables.
//! Values print as ovs-vsctl prints them: integers bare, strings quoted
//! unless they are plain words, sets as `[a, b]`, maps as `{k=v}`.

use serde_json::{Value, json};

/// The tables these commands know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Bridge,
    Port,
    Interface,
}

/// The columns of each table, in `list` order. Columns marked `false`
/// are read-only.
const BRIDGE_COLUMNS: &[(&str, bool)] =
    &[("name", false), ("fail_mode", true), ("mirrors", false), ("other_config", true), ("ports", false)];
const PORT_COLUMNS: &[(&str, bool)] = &[
    ("name", false),
    ("external_ids", true),
    ("interfaces", false),
    ("tag", true),
    ("trunks", true),
    ("vlan_mode", true),
];
const INTERFACE_COLUMNS: &[(&str, bool)] = &[
    ("name", false),
    ("admin_state", false),
    ("error", false),
    ("link_state", false),
    ("ofport", false),
    ("options", true),
    ("status", false),
    ("type", false),
];

impl Table {
    pub fn parse(s: &str) -> Result<Table, String> {
        match s.to_ascii_lowercase().as_str() {
            "bridge" => Ok(Table::Bridge),
            "port" => Ok(Table::Port),
            "interface" => Ok(Table::Interface),
            _ => Err(format!("unknown table '{s}' (Bridge, Port or Interface)")),
        }
    }

    fn columns(self) -> &'static [(&'static str, bool)] {
        match self {
            Table::Bridge => BRIDGE_COLUMNS,
            Table::Port => PORT_COLUMNS,
            Table::Interface => INTERFACE_COLUMNS,
        }
    }

    fn column(self, name: &str) -> Result<(&'static str, bool), String> {
        self.columns().iter().copied().find(|(c, _)| *c == name).ok_or_else(|| {
            let all: Vec<&str> = self.columns().iter().map(|(c, _)| *c).collect();
            format!("{self:?} has no column '{name}' (columns: {})", all.join(", "))
        })
    }
}

/// A string as ovs-vsctl prints it: bare if it is a plain word.
fn atom(s: &str) -> String {
    let word = s.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !matches!(s, "true" | "false");
    if word { s.to_string() } else { Value::from(s).to_string() }
}

fn set_of(items: impl IntoIterator<Item = String>) -> String {
    format!("[{}]", items.into_iter().collect::<Vec<_>>().join(", "))
}

fn map_of(o: &Value) -> String {
    let items: Vec<String> = o
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{}={}", atom(k), atom(v.as_str().unwrap_or(&v.to_string()))))
        .collect();
    format!("{{{}}}", items.join(", "))
}

/// One record: its name and each column's value, as JSON (maps as
/// objects of strings, sets as arrays, an empty optional as `[]`).
pub struct Record {
    pub name: String,
    pub columns: Vec<(&'static str, Value)>,
}

/// Every record of `table`, from `bridge.list` and `stats.get` results.
pub fn records(table: Table, bridges: &Value, stats: &Value) -> Vec<Record> {
    let mut out = Vec::new();
    let opt = |v: &Value| if v.is_null() { json!([]) } else { v.clone() };
    for b in bridges.as_array().into_iter().flatten() {
        let ports = b["ports"].as_array().cloned().unwrap_or_default();
        let bname = b["name"].as_str().unwrap_or("?").to_string();
        match table {
            Table::Bridge => {
                let mut names: Vec<Value> = ports.iter().map(|p| p["name"].clone()).collect();
                names.sort_by_key(|v| v.as_str().unwrap_or("").to_string());
                let oc = json!({
                    "mac-aging-time": b["mac_table"]["aging_secs"].to_string(),
                    "mac-table-size": b["mac_table"]["capacity"].to_string(),
                });
                out.push(Record {
                    name: bname.clone(),
                    columns: vec![
                        ("name", json!(bname)),
                        ("fail_mode", opt(&b["fail_mode"])),
                        ("mirrors", b.get("mirrors").cloned().unwrap_or(json!([]))),
                        ("other_config", oc),
                        ("ports", Value::Array(names)),
                    ],
                });
            }
            Table::Port => {
                for p in &ports {
                    let name = p["name"].as_str().unwrap_or("?").to_string();
                    out.push(Record {
                        name: name.clone(),
                        columns: vec![
                            ("name", json!(name)),
                            ("external_ids", p.get("external_ids").cloned().unwrap_or(json!({}))),
                            ("interfaces", json!([name])),
                            ("tag", opt(&p["tag"])),
                            ("trunks", p.get("trunks").cloned().unwrap_or(json!([]))),
                            ("vlan_mode", opt(&p["vlan_mode"])),
                        ],
                    });
                }
            }
            Table::Interface => {
                let sb = stats["bridges"].as_array().and_then(|v| v.iter().find(|x| x["name"] == b["name"]));
                for p in &ports {
                    let name = p["name"].as_str().unwrap_or("?").to_string();
                    let st = sb.and_then(|s| s["ports"].as_array()?.iter().find(|x| x["name"] == p["name"]));
                    let updown = |up: bool| json!(if up { "up" } else { "down" });
                    let link = st.map_or(json!([]), |s| updown(s["link_up"] == true));
                    let admin = st.map_or(json!([]), |s| updown(s["admin_down"] != true));
                    out.push(Record {
                        name: name.clone(),
                        columns: vec![
                            ("name", json!(name)),
                            ("admin_state", admin),
                            ("error", opt(&p["error"])),
                            ("link_state", link),
                            ("ofport", p["port_no"].clone()),
                            ("options", p.get("options").cloned().unwrap_or(json!({}))),
                            ("status", p.get("status").cloned().unwrap_or(json!({}))),
                            ("type", p["type"].clone()),
                        ],
                    });
                }
            }
        }
    }
    out
}

/// A column's value as ovs-vsctl prints it.
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => atom(s),
        Value::Array(a) => set_of(a.iter().map(text)),
        Value::Object(_) => map_of(v),
        Value::Null => "[]".into(),
        v => v.to_string(),
    }
}

/// `get TABLE RECORD COLUMN[:KEY]...`: each value on a line.
pub fn get(table: Table, rec: &Record, columns: &[String]) -> Result<String, String> {
    let mut out = String::new();
    for c in columns {
        let (col, key) = c.split_once(':').map_or((c.as_str(), None), |(c, k)| (c, Some(k)));
        table.column(col)?;
        let v = rec.columns.iter().find(|(n, _)| *n == col).map(|(_, v)| v.clone()).unwrap_or(Value::Null);
        match key {
            None => out.push_str(&text(&v)),
            Some(k) => match v.get(k) {
                Some(v) => out.push_str(&text(v)),
                None => return Err(format!("no key \"{k}\" in {table:?} record \"{}\" column {col}", rec.name)),
            },
        }
        out.push('\n');
    }
    Ok(out)
}

/// `list`: each record's columns, as ovs-vsctl lays them out.
pub fn list(recs: &[Record]) -> String {
    let width = recs.iter().flat_map(|r| r.columns.iter().map(|(c, _)| c.len())).max().unwrap_or(0);
    let blocks: Vec<String> = recs
        .iter()
        .map(|r| r.columns.iter().map(|(c, v)| format!("{c:<width$} : {}\n", text(v))).collect::<String>())
        .collect();
    blocks.join("\n")
}

fn unquote(v: &str) -> &str {
    v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v)
}

fn number<T: std::str::FromStr>(what: &str, v: &str) -> Result<T, String> {
    unquote(v).parse().map_err(|_| format!("{what} '{v}' is not a number"))
}

/// `set TABLE RECORD COLUMN[:KEY]=VALUE...` as one request.
pub fn set(table: Table, record: &str, items: &[String]) -> Result<(&'static str, Value), String> {
    let mut p = serde_json::Map::new();
    let mut maps: serde_json::Map<String, Value> = serde_json::Map::new();
    for item in items {
        let (lhs, v) = item.split_once('=').ok_or_else(|| format!("'{item}' is not COLUMN=VALUE"))?;
        let (col, key) = lhs.split_once(':').map_or((lhs, None), |(c, k)| (c, Some(k)));
        let (col, writable) = table.column(col)?;
        if !writable {
            return Err(format!("{table:?} column {col} cannot be set here"));
        }
        let (field, value) = match (table, col, key) {
            (Table::Bridge, "fail_mode", None) => {
                let m = unquote(v);
                if !matches!(m, "standalone" | "secure") {
                    return Err(format!("fail_mode '{m}' is not standalone or secure"));
                }
                ("fail_mode".to_string(), json!(m))
            }
            (Table::Bridge, "other_config", Some("mac-aging-time")) => {
                ("mac_aging_secs".into(), json!(number::<u64>("mac-aging-time", v)?))
            }
            (Table::Bridge, "other_config", Some("mac-table-size")) => {
                ("mac_table_size".into(), json!(number::<u64>("mac-table-size", v)?))
            }
            (Table::Bridge, "other_config", _) => {
                return Err("other_config keys here: mac-aging-time, mac-table-size".into());
            }
            (Table::Port, "tag", None) => ("tag".into(), json!(number::<u16>("tag", v)?)),
            (Table::Port, "trunks", None) => {
                let list = unquote(v).trim_start_matches('[').trim_end_matches(']');
                let vids: Result<Vec<u16>, _> =
                    list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::parse::<u16>).collect();
                ("trunks".into(), json!(vids.map_err(|_| format!("trunks '{v}' is not a list of VLAN ids"))?))
            }
            (Table::Port, "vlan_mode", None) => ("vlan_mode".into(), json!(unquote(v))),
            (Table::Port, "external_ids", Some(k)) | (Table::Interface, "options", Some(k)) => {
                let m = maps.entry(col).or_insert_with(|| json!({}));
                if m.get(k).is_some() {
                    return Err(format!("'{col}:{k}' is given twice"));
                }
                m[k] = json!(unquote(v));
                continue;
            }
            (_, c, None) if matches!(c, "external_ids" | "options") => {
                return Err(format!("set one key at a time: {c}:KEY=VALUE"));
            }
            (_, c, _) => return Err(format!("'{c}' takes no key here")),
        };
        if p.insert(field, value).is_some() {
            return Err(format!("'{lhs}' is given twice"));
        }
    }
    p.extend(maps);
    Ok(request(table, record, p))
}

/// The request that changes `record` of `table` with parameters `p`.
fn request(table: Table, record: &str, mut p: serde_json::Map<String, Value>) -> (&'static str, Value) {
    p.insert("name".into(), json!(record));
    match table {
        Table::Bridge => ("bridge.set", Value::Object(p)),
        _ => {
            p.insert("columns".into(), json!(true));
            ("port.set", Value::Object(p))
        }
    }
}

/// `clear TABLE RECORD COLUMN[:KEY]...` as one request (`COLUMN:KEY`
/// removes one key of a map column).
pub fn clear(table: Table, record: &str, columns: &[String]) -> Result<(&'static str, Value), String> {
    let mut p = serde_json::Map::new();
    let mut maps: serde_json::Map<String, Value> = serde_json::Map::new();
    for c in columns {
        if let Some((col, key)) = c.split_once(':') {
            let col = match (table, table.column(col)?.0) {
                (Table::Port, "external_ids") => "external_ids",
                (Table::Interface, "options") => "options",
                (_, other) => return Err(format!("{table:?} column {other} has no keys to clear")),
            };
            maps.entry(col).or_insert_with(|| json!({}))[key] = Value::Null;
            continue;
        }
        let (col, writable) = table.column(c)?;
        match (table, col) {
            (Table::Bridge, "fail_mode") => p.insert("fail_mode".into(), Value::Null),
            (Table::Bridge, "other_config") => {
                p.insert("mac_aging_secs".into(), json!(vswitch_core::mac::MacTableConfig::default().aging_secs));
                p.insert("mac_table_size".into(), json!(vswitch_core::mac::MacTableConfig::default().capacity))
            }
            (Table::Port, "tag" | "trunks" | "vlan_mode") => p.insert(col.into(), Value::Null),
            _ if !writable => return Err(format!("{table:?} column {col} cannot be cleared")),
            _ => return Err(format!("{table:?} column {col} is cleared a key at a time: clear ... {col}:KEY")),
        };
    }
    p.extend(maps);
    Ok(request(table, record, p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_print_as_ovs_vsctl_prints_them() {
        assert_eq!(text(&json!("secure")), "secure");
        assert_eq!(text(&json!("10.0.0.1")), "\"10.0.0.1\"");
        assert_eq!(text(&json!([10, 20])), "[10, 20]");
        assert_eq!(text(&json!(null)), "[]");
        assert_eq!(text(&json!({ "remote_ip": "10.0.0.2", "key": "5" })), "{key=\"5\", remote_ip=\"10.0.0.2\"}");
    }

    #[test]
    fn set_maps_columns_to_requests() {
        let (m, p) =
            set(Table::Bridge, "br0", &["other_config:mac-aging-time=60".into(), "fail_mode=secure".into()]).unwrap();
        assert_eq!(m, "bridge.set");
        assert_eq!(p, json!({ "name": "br0", "mac_aging_secs": 60, "fail_mode": "secure" }));
        let (_, p) = set(Table::Port, "p1", &["trunks=[10,20]".into(), "vlan_mode=native-untagged".into()]).unwrap();
        assert_eq!(p["trunks"], json!([10, 20]));
        assert!(set(Table::Interface, "p1", &["ofport=3".into()]).is_err());
        assert!(set(Table::Port, "p1", &["tag=1".into(), "tag=2".into()]).is_err());
        let (_, p) = clear(Table::Port, "p1", &["external_ids:owner".into(), "tag".into()]).unwrap();
        assert_eq!(p, json!({ "name": "p1", "columns": true, "tag": null, "external_ids": { "owner": null } }));
        assert!(clear(Table::Bridge, "br0", &["fail_mode:x".into()]).is_err());
    }
}
