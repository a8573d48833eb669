//! The control protocol and its socket server: every method, structured
//! errors for malformed requests, and a server that keeps serving whatever
//! its clients do.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use vswitch_core::config::{Loaded, Store};
use vswitch_core::control::{Control, ControlServer, METHODS, dispatch};
use vswitch_core::{PortConfig, Switch};

fn rpc(sw: &Switch, method: &str, params: Value) -> Value {
    let line = json!({ "jsonrpc": "2.0", "id": 7, "method": method, "params": params }).to_string();
    let v: Value = serde_json::from_str(&dispatch(sw, &line)).expect("responses are JSON");
    assert_eq!(v["id"], 7);
    v
}

fn ok(sw: &Switch, method: &str, params: Value) -> Value {
    let v = rpc(sw, method, params);
    assert!(v.get("error").is_none(), "{method}: {v}");
    v["result"].clone()
}

fn err_kind(sw: &Switch, method: &str, params: Value) -> String {
    let v = rpc(sw, method, params);
    v["error"]["data"]["kind"].as_str().unwrap_or_else(|| panic!("{method} should fail: {v}")).to_string()
}

#[test]
fn every_method_answers() {
    let sw = Switch::builder().manual().build().unwrap();
    assert_eq!(ok(&sw, "system.version", json!(null))["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(ok(&sw, "system.list_methods", json!({})).as_array().unwrap().len(), METHODS.len());
    ok(&sw, "bridge.add", json!({ "name": "br0" }));
    assert_eq!(err_kind(&sw, "bridge.add", json!({ "name": "br0" })), "exists");
    ok(&sw, "bridge.add", json!({ "name": "br0", "may_exist": true }));
    assert_eq!(ok(&sw, "bridge.exists", json!({ "name": "br0" })), json!(true));
    assert_eq!(ok(&sw, "bridge.exists", json!({ "name": "nope" })), json!(false));
    assert_eq!(ok(&sw, "bridge.list", json!({}))[0]["name"], "br0");
    // Ports over the socket are kernel ports; a memory port added in
    // process shows up in the listings.
    let _h = sw.add_memory_port("br0", "vm1", PortConfig::default()).unwrap();
    assert_eq!(
        err_kind(&sw, "port.add", json!({ "bridge": "br0", "name": "x", "type": "memory" })),
        "invalid_argument"
    );
    assert_eq!(err_kind(&sw, "port.add", json!({ "bridge": "br0", "name": "vsnosuch9" })), "not_found");
    ok(&sw, "port.add", json!({ "bridge": "br0", "name": "vm1", "may_exist": true }));
    assert_eq!(ok(&sw, "port.list", json!({ "bridge": "br0" }))[0]["name"], "vm1");
    ok(&sw, "port.set", json!({ "name": "vm1", "tag": 10 }));
    assert_eq!(ok(&sw, "port.list", json!({ "bridge": "br0" }))[0]["tag"], 10);
    assert_eq!(err_kind(&sw, "port.set", json!({ "name": "vm1", "tag": 5, "trunks": [1] })), "invalid_params");
    assert_eq!(err_kind(&sw, "port.set", json!({ "name": "vm1", "tag": 4095 })), "invalid_argument");
    ok(&sw, "fdb.add", json!({ "bridge": "br0", "port": "vm1", "vlan": 10, "mac": "02:00:00:00:00:01" }));
    assert_eq!(ok(&sw, "fdb.show", json!({ "bridge": "br0" }))[0]["mac"], "02:00:00:00:00:01");
    assert_eq!(ok(&sw, "fdb.stats", json!({ "bridge": "br0" }))["static_entries"], 1);
    assert_eq!(ok(&sw, "fdb.flush", json!({ "bridge": "br0" }))["removed"], 0, "statics survive a flush");
    assert_eq!(ok(&sw, "fdb.del", json!({ "bridge": "br0", "vlan": 10, "mac": "02:00:00:00:00:01" }))["removed"], true);
    assert_eq!(err_kind(&sw, "fdb.add", json!({ "bridge": "br0", "port": 1, "mac": "zz" })), "invalid_params");
    assert_eq!(
        ok(&sw, "flow.add", json!({ "bridge": "br0", "flows": ["priority=100,tcp,tp_dst=22,actions=drop"] }))["added"],
        1
    );
    let flows = ok(&sw, "flow.dump", json!({ "bridge": "br0" }));
    assert_eq!(flows[0]["match"], "tcp,tp_dst=22");
    for f in ["cookie", "duration_secs", "n_packets", "n_bytes", "priority", "match", "actions"] {
        assert!(flows[0].get(f).is_some(), "{f} in {}", flows[0]);
    }
    assert_eq!(
        ok(&sw, "flow.mod", json!({ "bridge": "br0", "flow": "tcp,tp_dst=22,actions=output:1" }))["modified"],
        1
    );
    assert_eq!(
        err_kind(&sw, "flow.add", json!({ "bridge": "br0", "flows": ["nw_dts=1,actions=drop"] })),
        "invalid_argument"
    );
    let t = ok(&sw, "trace", json!({ "bridge": "br0", "flow": "in_port=1,tcp,tp_dst=22" }));
    assert_eq!(t["verdict"], "drop", "{t}");
    assert_eq!(ok(&sw, "flow.del", json!({ "bridge": "br0", "flow": "tcp,tp_dst=22" }))["deleted"], 1);
    assert_eq!(
        ok(&sw, "stats.get", json!({ "bridge": "br0", "port": "vm1" }))["bridges"][0]["ports"][0]["name"],
        "vm1"
    );
    assert_eq!(err_kind(&sw, "stats.get", json!({ "bridge": "br9" })), "not_found");
    assert_eq!(err_kind(&sw, "port.del", json!({ "name": "vm1", "bridge": "br7" })), "invalid_argument");
    ok(&sw, "port.del", json!({ "name": "vm1", "bridge": "br0" }));
    ok(&sw, "port.del", json!({ "name": "vm1", "if_exists": true }));
    assert_eq!(err_kind(&sw, "port.del", json!({ "name": "vm1" })), "not_found");
    ok(&sw, "bridge.del", json!({ "name": "br0" }));
    ok(&sw, "bridge.del", json!({ "name": "br0", "if_exists": true }));
}

#[test]
fn malformed_requests_get_structured_errors() {
    let sw = Switch::builder().manual().build().unwrap();
    let kind = |line: &str| {
        let v: Value = serde_json::from_str(&dispatch(&sw, line)).unwrap();
        (v["error"]["code"].as_i64().unwrap(), v["error"]["data"]["kind"].as_str().unwrap().to_string())
    };
    assert_eq!(kind("\u{1}\u{2}garbage"), (-32700, "parse_error".into()));
    assert_eq!(kind("[1,2]"), (-32600, "invalid_request".into()));
    assert_eq!(kind(r#"{"id":1,"method":"bridge.list"}"#), (-32600, "invalid_request".into()));
    assert_eq!(kind(r#"{"jsonrpc":"2.0","id":1,"method":5}"#), (-32600, "invalid_request".into()));
    assert_eq!(kind(r#"{"jsonrpc":"2.0","id":1,"method":"bridge.frob"}"#), (-32601, "method_not_found".into()));
    assert_eq!(
        kind(r#"{"jsonrpc":"2.0","id":1,"method":"bridge.add","params":{"name":5}}"#),
        (-32602, "invalid_params".into())
    );
    assert_eq!(
        kind(r#"{"jsonrpc":"2.0","id":1,"method":"bridge.add","params":{}}"#),
        (-32602, "invalid_params".into())
    );
    assert_eq!(
        kind(r#"{"jsonrpc":"2.0","id":1,"method":"bridge.add","params":{"name":"b","colour":1}}"#),
        (-32602, "invalid_params".into())
    );
    assert!(sw.bridges().is_empty(), "nothing was half-applied");
}

fn connect(path: &std::path::Path) -> (UnixStream, BufReader<UnixStream>) {
    let s = UnixStream::connect(path).expect("connect to the control socket");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let r = BufReader::new(s.try_clone().unwrap());
    (s, r)
}

fn ask(s: &mut UnixStream, r: &mut BufReader<UnixStream>, line: &str) -> Value {
    s.write_all(line.as_bytes()).unwrap();
    s.write_all(b"\n").unwrap();
    let mut reply = String::new();
    r.read_line(&mut reply).expect("a reply");
    serde_json::from_str(&reply).expect("a JSON reply")
}

#[test]
fn the_server_keeps_serving_whatever_clients_do() {
    let dir = std::env::temp_dir().join(format!("vsctl{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("vswitchd.sock");
    let sw = Arc::new(Switch::builder().build().unwrap());
    let server = ControlServer::start(sw.clone(), &path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "without a group, only the owner (and root) may connect");
    assert!(ControlServer::start(sw.clone(), &path).is_err(), "a second server on a live socket is refused");

    let (mut s, mut r) = connect(&path);
    // Garbage, invalid JSON, unknown methods: errors, and the connection lives on.
    assert_eq!(ask(&mut s, &mut r, "\u{7f}\u{0}garbage")["error"]["data"]["kind"], "parse_error");
    assert_eq!(ask(&mut s, &mut r, r#"{"jsonrpc":"2.0","id":2,"method":"nope"}"#)["error"]["code"], -32601);
    assert_eq!(
        ask(&mut s, &mut r, r#"{"jsonrpc":"2.0","id":3,"method":"bridge.add","params":{"name":"br0"}}"#)["result"],
        Value::Null
    );

    // A client that connects and never sends; one that leaves mid-request.
    let idle = UnixStream::connect(&path).unwrap();
    {
        let mut half = UnixStream::connect(&path).unwrap();
        half.write_all(br#"{"jsonrpc":"2.0","id":9,"method":"bridge.li"#).unwrap();
    }
    // A 10 MiB line: an error, then the server closes that connection.
    {
        let (mut big, mut big_r) = connect(&path);
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..10 {
            if big.write_all(&chunk).is_err() {
                break;
            }
        }
        let mut reply = String::new();
        let _ = big_r.read_line(&mut reply);
        assert!(reply.contains("longer than"), "{reply}");
        let mut rest = Vec::new();
        let _ = big_r.read_to_end(&mut rest);
    }
    // 200 clients at once, each with its own request.
    let handles: Vec<_> = (0..200)
        .map(|i| {
            let path = path.clone();
            std::thread::spawn(move || {
                let (mut s, mut r) = connect(&path);
                let v = ask(
                    &mut s,
                    &mut r,
                    &format!(r#"{{"jsonrpc":"2.0","id":{i},"method":"bridge.exists","params":{{"name":"br0"}}}}"#),
                );
                assert_eq!((v["id"].as_i64(), v["result"].as_bool()), (Some(i), Some(true)));
            })
        })
        .collect();
    for h in handles {
        h.join().expect("every client got its answer");
    }
    // And the first client, still connected, still works.
    assert_eq!(ask(&mut s, &mut r, r#"{"jsonrpc":"2.0","id":4,"method":"bridge.list"}"#)["result"][0]["name"], "br0");
    drop(idle);
    drop(server);
    assert!(!path.exists(), "the socket file is removed on shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}

fn transact(sw: &Switch, ops: Value) -> Value {
    rpc(sw, "transact", json!({ "ops": ops }))
}

#[test]
fn transactions_apply_all_or_nothing() {
    let sw = Switch::builder().manual().build().unwrap();
    // The second operation fails: the first is undone.
    let v = transact(
        &sw,
        json!([
            { "method": "bridge.add", "params": { "name": "br1" } },
            { "method": "flow.add", "params": { "bridge": "br1", "flows": ["nw_dts=1,actions=drop"] } },
        ]),
    );
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("operation 2 (flow.add)") && msg.contains("nothing was changed"), "{msg}");
    assert_eq!(v["error"]["data"]["kind"], "invalid_argument");
    assert_eq!(ok(&sw, "bridge.exists", json!({ "name": "br1" })), json!(false));

    // All succeed: each result in order, reads included.
    let r = ok(
        &sw,
        "transact",
        json!({ "ops": [
            { "method": "bridge.add", "params": { "name": "br2" } },
            { "method": "flow.add", "params": { "bridge": "br2", "flows": ["priority=9,udp,actions=drop"] } },
            { "method": "bridge.list" },
        ]}),
    );
    assert_eq!(r[1]["added"], 1);
    assert_eq!(r[2][0]["name"], "br2");

    // Flow deletions, port VLAN changes and static MACs are undone too.
    let _vm = sw.add_memory_port("br2", "vm", PortConfig::default()).unwrap();
    ok(&sw, "fdb.add", json!({ "bridge": "br2", "port": "vm", "vlan": 0, "mac": "02:00:00:00:00:07" }));
    let v = transact(
        &sw,
        json!([
            { "method": "flow.del", "params": { "bridge": "br2" } },
            { "method": "fdb.del", "params": { "bridge": "br2", "vlan": 0, "mac": "02:00:00:00:00:07" } },
            { "method": "fdb.add", "params": { "bridge": "br2", "port": "vm", "vlan": 0, "mac": "02:00:00:00:00:08" } },
            { "method": "bridge.add", "params": { "name": "br2" } },
        ]),
    );
    assert!(v["error"]["message"].as_str().unwrap().contains("operation 4 (bridge.add)"), "{v}");
    let flows = ok(&sw, "flow.dump", json!({ "bridge": "br2" }));
    assert_eq!(flows.as_array().unwrap().len(), 2, "both rules are back: {flows}");
    let fdb = ok(&sw, "fdb.show", json!({ "bridge": "br2" }));
    assert_eq!(fdb.as_array().unwrap().len(), 1, "{fdb}");
    assert_eq!(fdb[0]["mac"], "02:00:00:00:00:07");

    // A transaction inside a transaction is refused.
    let v = transact(&sw, json!([{ "method": "transact", "params": { "ops": [] } }]));
    assert_eq!(v["error"]["data"]["kind"], "invalid_params");
    // Bad shapes are structured errors.
    assert_eq!(err_kind(&sw, "transact", json!({ "ops": "no" })), "invalid_params");
    assert_eq!(err_kind(&sw, "transact", json!({ "ops": [{ "method": "nope" }] })), "method_not_found");
}

#[test]
fn changes_are_saved_and_failures_leave_the_file_alone() {
    let dir = std::env::temp_dir().join(format!("vswitch-control-store-{}", std::process::id()));
    let path = dir.join("conf.json");
    let sw = Arc::new(Switch::builder().manual().build().unwrap());
    let control = Control::with_store(sw.clone(), Store::new(&path).unwrap());
    let call = |method: &str, params: Value| -> Value {
        let line = json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params }).to_string();
        serde_json::from_str(&control.dispatch(&line)).unwrap()
    };
    assert!(call("bridge.list", json!({})).get("result").is_some());
    assert!(!path.exists(), "reads save nothing");
    call("bridge.add", json!({ "name": "br0" }));
    call("flow.add", json!({ "bridge": "br0", "flows": ["priority=5,arp,actions=flood"] }));
    let saved = std::fs::read(&path).unwrap();
    let Loaded::Config(c) = Store::new(&path).unwrap().load().unwrap() else { panic!("not loadable") };
    assert_eq!(c.bridges[0].name, "br0");
    assert_eq!(c.bridges[0].flows, vec!["priority=5,arp actions=FLOOD", "priority=0 actions=NORMAL"]);
    assert_eq!(call("config.get", json!({}))["result"], serde_json::to_value(&c).unwrap());

    let v = call("bridge.add", json!({ "name": "br0" }));
    assert_eq!(v["error"]["data"]["kind"], "exists");
    assert_eq!(std::fs::read(&path).unwrap(), saved, "a refused change rewrites nothing");

    // The saved configuration rebuilds the same switch.
    let again = Switch::builder().manual().build().unwrap();
    again.apply_config(&c).unwrap();
    assert_eq!(again.config(false).unwrap(), c);
    let _ = std::fs::remove_dir_all(&dir);
}
