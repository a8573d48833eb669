//! vswitch-cni driven exactly as a container runtime drives it (the
//! CNI_* environment and the network configuration on stdin; the result
//! or error JSON on stdout and the exit code read back), and the same
//! networks through `vswitch-ctl net-*`, as root. Each test runs its
//! vswitchd in a "host" namespace of its own; containers are namespaces
//! beside it. IPAM is the built-in one or the reference host-local
//! plugin (Debian's containernetworking-plugins, which .ci/run installs).

mod common;

use std::process::{Command, Stdio};

use common::Daemon;
use serde_json::{Value, json};
use vswitch_tests::netns::{NetNs, unique, veth_between};

/// Where Debian's containernetworking-plugins puts host-local.
const CNI_PATH: &str = "/usr/lib/cni";

/// A CNI call's outcome: exit code and stdout as JSON (null if empty).
#[derive(Debug)]
struct Reply {
    code: i32,
    out: Value,
}

impl Reply {
    fn ok(self) -> Value {
        assert_eq!(self.code, 0, "the plugin failed: {}", self.out);
        self.out
    }

    /// The error's CNI code (the call must have failed).
    fn err(&self) -> u64 {
        assert_ne!(self.code, 0, "the plugin succeeded: {}", self.out);
        self.out["code"].as_u64().unwrap_or_else(|| panic!("no error code in {}", self.out))
    }
}

/// Runs vswitch-cni in `host` with `command` and the CNI_* variables in
/// `env`, `conf` on stdin.
fn cni(host: &NetNs, command: &str, env: &[(&str, &str)], conf: &Value) -> Reply {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &host.name, env!("CARGO_BIN_EXE_vswitch-cni")])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_COMMAND", command)
        .env("CNI_PATH", CNI_PATH)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().expect("run vswitch-cni");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {text}"))
    };
    assert!(text.trim().is_empty() || text.trim().lines().count() == 1, "one JSON object: {text}");
    Reply { code: out.status.code().unwrap_or(-1), out: v }
}

fn netns_path(ns: &NetNs) -> String {
    format!("/var/run/netns/{}", ns.name)
}

/// The CNI_* variables of a container.
fn vars<'a>(id: &'a str, netns: &'a str, ifname: &'a str) -> Vec<(&'static str, &'a str)> {
    vec![("CNI_CONTAINERID", id), ("CNI_NETNS", netns), ("CNI_IFNAME", ifname)]
}

fn addrs(ns: &NetNs, ifname: &str) -> String {
    String::from_utf8_lossy(&ns.exec(&["ip", "-br", "addr", "show", "dev", ifname]).stdout).into_owned()
}

/// A configuration with the built-in IPAM, dual stack.
fn builtin_conf(d: &Daemon, name: &str, bridge: &str, v4: &str, v6: &str, version: &str) -> Value {
    json!({
        "cniVersion": version,
        "name": name,
        "type": "vswitch-cni",
        "socket": d.socket,
        "bridge": bridge,
        "isGateway": true,
        "isDefaultGateway": true,
        "ipam": {
            "type": "vswitch",
            "ranges": [[{ "subnet": v4 }], [{ "subnet": v6 }]],
            "dataDir": std::path::Path::new(&d.socket).parent().unwrap().join("ipam"),
        }
    })
}

#[test]
fn every_cni_command_as_a_runtime_calls_it() {
    let host = NetNs::new();
    let (c1, c2, c3) = (NetNs::new(), NetNs::new(), NetNs::new());
    let mut d = Daemon::start_netns(&host);
    let br = unique("cb");
    let conf = builtin_conf(&d, "n1", &br, "10.61.0.0/24", "fd61::/64", "1.1.0");
    let (p1, p2, p3) = (netns_path(&c1), netns_path(&c2), netns_path(&c3));

    // VERSION, in every version this plugin speaks; an unknown one refused.
    for v in ["0.4.0", "1.0.0", "1.1.0"] {
        let r = cni(&host, "VERSION", &[], &json!({ "cniVersion": v })).ok();
        assert_eq!(r["cniVersion"], v);
        let supported: Vec<&str> =
            r["supportedVersions"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
        assert!(supported.contains(&"0.4.0") && supported.contains(&"1.0.0") && supported.contains(&"1.1.0"));
    }
    let mut old = conf.clone();
    old["cniVersion"] = json!("9.9.9");
    assert_eq!(cni(&host, "ADD", &vars("c1", &p1, "eth0"), &old).err(), 1);
    // A configuration list's cniVersions: the newest supported one is used.
    let mut listed = conf.clone();
    listed.as_object_mut().unwrap().remove("cniVersion");
    listed["cniVersions"] = json!(["0.4.0", "1.1.0", "7.0.0"]);
    assert_eq!(cni(&host, "STATUS", &[], &listed).code, 0);

    // ADD: the result, the interface, its addresses and routes, the port.
    let r = cni(&host, "ADD", &vars("c1", &p1, "eth0"), &conf).ok();
    assert_eq!(r["cniVersion"], "1.1.0");
    let ifs = r["interfaces"].as_array().unwrap();
    assert_eq!(ifs.len(), 3, "gateway, host end, container: {r}");
    assert_eq!(ifs[0]["name"], br.as_str());
    assert_eq!(ifs[2]["name"], "eth0");
    assert_eq!(ifs[2]["sandbox"], p1.as_str());
    let ips: Vec<&str> = r["ips"].as_array().unwrap().iter().map(|i| i["address"].as_str().unwrap()).collect();
    assert_eq!(ips, ["10.61.0.2/24", "fd61::2/64"]);
    assert!(r["ips"].as_array().unwrap().iter().all(|i| i["interface"] == 2 && i.get("version").is_none()));
    assert_eq!(r["ips"][0]["gateway"], "10.61.0.1");
    let a = addrs(&c1, "eth0");
    assert!(a.contains("10.61.0.2/24") && a.contains("fd61::2/64"), "{a}");
    let routes = String::from_utf8_lossy(&c1.exec(&["ip", "route"]).stdout).into_owned();
    assert!(routes.contains("default via 10.61.0.1 dev eth0"), "{routes}");
    let host_end = ifs[1]["name"].as_str().unwrap().to_string();
    let ports = d.json(&["list-ports", &br]);
    let port =
        ports.as_array().unwrap().iter().find(|p| p["name"] == host_end.as_str()).expect("the host end is a port");
    assert_eq!(port["external_ids"], json!({ "container_id": "c1", "ifname": "eth0", "network": "n1" }));
    assert!(d.ok(&["show"]).contains("external_ids: {container_id=c1, ifname=eth0, network=n1}"));

    // A 0.4.0 caller gets 0.4.0's layout (each address with its version).
    let mut v04 = conf.clone();
    v04["cniVersion"] = json!("0.4.0");
    let r2 = cni(&host, "ADD", &vars("c2", &p2, "eth0"), &v04).ok();
    assert_eq!(r2["cniVersion"], "0.4.0");
    assert_eq!(r2["ips"][0]["version"], "4");
    assert_eq!(r2["ips"][1]["version"], "6");
    assert!(c1.ping("10.61.0.3", 2), "c1 cannot ping c2");
    assert!(c1.exec(&["ping", "-6", "-c", "2", "-W", "2", "fd61::3"]).status.success(), "c1 cannot ping c2 over IPv6");
    assert!(c2.ping("10.61.0.1", 1), "c2 cannot ping the gateway");

    // The same (container, ifname) twice; an ifname the namespace has; a
    // namespace that does not exist.
    assert_ne!(cni(&host, "ADD", &vars("c1", &p1, "eth0"), &conf).code, 0);
    c3.run(&["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "taken0"]);
    let r = cni(&host, "ADD", &vars("c3", &p3, "eth0"), &conf);
    assert_eq!(r.err(), 4, "{}", r.out);
    assert!(r.out["msg"].as_str().unwrap().contains("CNI_IFNAME"), "{}", r.out);
    assert_eq!(cni(&host, "ADD", &vars("c4", "/var/run/netns/no-such-ns", "eth0"), &conf).err(), 3);
    // Neither failure kept an address or a port.
    let reservations =
        std::fs::read_dir(std::path::Path::new(&d.socket).parent().unwrap().join("ipam/n1")).unwrap().count();
    assert_eq!(reservations, 4 + 2, "two containers' addresses and two last_reserved_ip files");
    let missing = cni(&host, "ADD", &[("CNI_CONTAINERID", "c5")], &conf);
    assert_eq!(missing.err(), 4);
    assert!(missing.out["msg"].as_str().unwrap().contains("CNI_NETNS"), "{}", missing.out);

    // CHECK passes, then fails once an address is gone.
    let mut check = conf.clone();
    check["prevResult"] = cni_result_without_version(&r2);
    assert_eq!(cni(&host, "CHECK", &vars("c2", &p2, "eth0"), &check).code, 0);
    c2.run(&["ip", "addr", "del", "10.61.0.3/24", "dev", "eth0"]);
    let r = cni(&host, "CHECK", &vars("c2", &p2, "eth0"), &check);
    assert_ne!(r.code, 0);
    assert!(r.out["msg"].as_str().unwrap().contains("10.61.0.3"), "{}", r.out);

    // GC keeps only what the runtime lists.
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{ "containerID": "c2", "ifname": "eth0" }]);
    assert_eq!(cni(&host, "GC", &[], &gc).code, 0);
    assert!(!c1.exec(&["ip", "link", "show", "eth0"]).status.success(), "GC left c1's interface");
    let names: Vec<String> = d
        .json(&["list-ports", &br])
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    assert!(!names.contains(&host_end), "GC left c1's port: {names:?}");
    let att = d.json(&["net-list"]);
    assert_eq!(att[0]["attachments"].as_array().unwrap().len(), 1, "{att}");

    // DEL twice, and DEL after the namespace is gone, all succeed.
    for _ in 0..2 {
        assert_eq!(cni(&host, "DEL", &vars("c2", &p2, "eth0"), &conf).code, 0);
    }
    let gone = NetNs::new();
    let pg = netns_path(&gone);
    cni(&host, "ADD", &vars("cg", &pg, "eth0"), &conf).ok();
    drop(gone);
    assert_eq!(cni(&host, "DEL", &vars("cg", &pg, "eth0"), &conf).code, 0);
    assert_eq!(cni(&host, "DEL", &vars("never", &pg, "eth0"), &conf).code, 0);
    assert_eq!(d.json(&["net-list"])[0]["attachments"], json!([]));

    // STATUS: fine while vswitchd runs, 50 once it is gone.
    assert_eq!(cni(&host, "STATUS", &[], &conf).code, 0);
    d.stop();
    assert_eq!(cni(&host, "STATUS", &[], &conf).err(), 50);
}

/// A 0.4.0 result as prevResult for a 1.1.0 CHECK.
fn cni_result_without_version(r: &Value) -> Value {
    let mut r = r.clone();
    for ip in r["ips"].as_array_mut().unwrap() {
        ip.as_object_mut().unwrap().remove("version");
    }
    r["cniVersion"] = json!("1.1.0");
    r
}

#[test]
fn host_local_ipam_through_cni_path_dual_stack() {
    assert!(
        std::path::Path::new(CNI_PATH).join("host-local").is_file(),
        "the reference host-local plugin is missing from {CNI_PATH} (Debian: containernetworking-plugins; .ci/run installs it)"
    );
    let host = NetNs::new();
    let (c1, c2) = (NetNs::new(), NetNs::new());
    let d = Daemon::start_netns(&host);
    let data = std::path::Path::new(&d.socket).parent().unwrap().join("host-local");
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "hl",
        "type": "vswitch-cni",
        "socket": d.socket,
        "bridge": unique("hb"),
        "isGateway": true,
        "isDefaultGateway": true,
        "ipam": {
            "type": "host-local",
            "ranges": [[{ "subnet": "10.62.0.0/24" }], [{ "subnet": "fd62::/64" }]],
            "dataDir": data,
        }
    });
    let (p1, p2) = (netns_path(&c1), netns_path(&c2));
    let r1 = cni(&host, "ADD", &vars("h1", &p1, "eth0"), &conf).ok();
    let r2 = cni(&host, "ADD", &vars("h2", &p2, "eth0"), &conf).ok();
    let first = |r: &Value| r["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_string();
    assert_ne!(first(&r1), first(&r2));
    assert!(c1.ping(&first(&r2), 2), "c1 cannot ping c2");
    let v6 = r2["ips"][1]["address"].as_str().unwrap().split('/').next().unwrap().to_string();
    assert!(c1.exec(&["ping", "-6", "-c", "2", "-W", "2", &v6]).status.success(), "c1 cannot ping c2 over IPv6");
    // host-local's own reservation files, then CHECK through it.
    let reserved = std::fs::read_to_string(data.join("hl").join(first(&r1))).expect("host-local's reservation");
    assert!(reserved.starts_with("h1"), "{reserved}");
    let mut check = conf.clone();
    check["prevResult"] = r1.clone();
    assert_eq!(cni(&host, "CHECK", &vars("h1", &p1, "eth0"), &check).code, 0);
    // DEL hands the addresses back to host-local; a failed ADD does too.
    assert_eq!(cni(&host, "DEL", &vars("h1", &p1, "eth0"), &conf).code, 0);
    assert!(!data.join("hl").join(first(&r1)).exists(), "DEL left host-local's reservation");
    c1.run(&["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "taken0"]);
    assert_eq!(cni(&host, "ADD", &vars("h3", &p1, "eth0"), &conf).err(), 4);
    let left: Vec<String> = std::fs::read_dir(data.join("hl"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .filter(|t| t.starts_with("h3"))
        .collect();
    assert!(left.is_empty(), "a failed ADD kept host-local's addresses: {left:?}");
}

#[test]
fn twenty_concurrent_adds_get_distinct_addresses() {
    let host = NetNs::new();
    let containers: Vec<NetNs> = (0..20).map(|_| NetNs::new()).collect();
    let d = Daemon::start_netns(&host);
    let conf = builtin_conf(&d, "many", &unique("mb"), "10.63.0.0/24", "fd63::/64", "1.1.0");
    let results: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = containers
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                let (host, conf) = (&host, &conf);
                s.spawn(move || {
                    let id = format!("k{i}");
                    cni(host, "ADD", &vars(&id, &netns_path(ns), "eth0"), conf).ok()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut seen = std::collections::BTreeSet::new();
    for r in &results {
        for ip in r["ips"].as_array().unwrap() {
            assert!(seen.insert(ip["address"].as_str().unwrap().to_string()), "duplicate address {ip}");
        }
    }
    assert_eq!(seen.len(), 40);
    // Every container answers, from the host over the gateway port and
    // from the first container across the bridge.
    std::thread::scope(|s| {
        for r in &results {
            let ip = r["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_string();
            let (host, first) = (&host, &containers[0]);
            s.spawn(move || {
                assert!(host.ping(&ip, 1), "the host cannot reach {ip}");
                assert!(first.ping(&ip, 1), "the first container cannot reach {ip}");
            });
        }
    });
}

/// Runs a small python3 program in `ns`; its stdout.
fn py(ns: &NetNs, program: &str) -> String {
    let out = ns.exec(&["python3", "-c", program]);
    assert!(out.status.success(), "python in {}: {}", ns.name, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Waits (up to 30 s: python3 starts slowly on a busy machine) until a
/// socket listens on `addr` in `ns` (`-t` TCP, `-u` UDP).
fn wait_listening(ns: &NetNs, proto: &str, addr: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = ns.exec(&["ss", "-ln", proto]);
        if String::from_utf8_lossy(&out.stdout).contains(&format!("{addr} ")) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "nothing listens on {addr} in {}", ns.name);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// An HTTP fetch from `ns`, retried while the server starts.
fn fetch(ns: &NetNs, url: &str) -> bool {
    let program = format!(
        "import time, urllib.request\nfor _ in range(40):\n    try:\n        urllib.request.urlopen('{url}', timeout=2).read(); print('ok'); break\n    except OSError:\n        time.sleep(0.25)\nelse:\n    print('failed')"
    );
    py(ns, &program) == "ok"
}

/// A UDP exchange from `ns` to `addr:port`: the reply's source as seen.
fn udp_echo(ns: &NetNs, addr: &str, port: u16) -> String {
    py(
        ns,
        &format!(
            "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(1)\nfor _ in range(20):\n    s.sendto(b'ping',('{addr}',{port}))\n    try:\n        d,a=s.recvfrom(100); print(d.decode()); break\n    except OSError:\n        pass"
        ),
    )
}

#[test]
fn docker_style_network_masquerade_published_port_macspoofchk() {
    let host = NetNs::new();
    let (c1, c2, outside) = (NetNs::new(), NetNs::new(), NetNs::new());
    let uplink = unique("up");
    veth_between(&host, &uplink, &outside, "eth0");
    outside.run(&["ip", "addr", "add", "192.0.2.50/24", "dev", "eth0"]);
    let mut d = Daemon::start_netns(&host);
    let net = unique("w");
    d.ok(&[
        "net-create",
        &net,
        "--subnet",
        "10.64.0.0/24",
        "--masquerade",
        &uplink,
        "--uplink-address",
        "192.0.2.1/24",
        "--uplink-router",
        "192.0.2.50",
        "--macspoofchk",
    ]);
    // Beyond the uplink's router: an address of the outside's own.
    outside.run(&["ip", "addr", "add", "198.51.100.7/32", "dev", "lo"]);
    let a1 = d.ok(&["net-attach", &net, &c1.name, "--publish", "8080:80/tcp", "--publish", "5353:53/udp"]);
    assert_eq!(a1.trim(), "10.64.0.2/24");
    d.ok(&["net-attach", &net, &c2.name, "--ip", "10.64.0.77"]);
    assert!(c1.ping("10.64.0.77", 2), "c1 cannot ping c2");
    assert!(c1.ping("10.64.0.1", 1), "c1 cannot ping the gateway");

    // Masquerade: TCP (iperf3) and UDP to the outside, which sees only
    // the switch's uplink address.
    let run = vswitch_tests::netns::iperf3(&c1, &outside, "192.0.2.50", 2);
    assert!(run.bytes > 1_000_000, "iperf3 through masquerade: {}", run.output);
    let mut echo = outside.spawn(&[
        "python3",
        "-c",
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('192.0.2.50',7000))\nwhile True:\n    d,a=s.recvfrom(100); s.sendto(a[0].encode(),a)",
    ]);
    wait_listening(&outside, "-u", "192.0.2.50:7000");
    assert_eq!(udp_echo(&c2, "192.0.2.50", 7000), "192.0.2.1", "the outside saw another source");
    let _ = echo.kill();
    let _ = echo.wait();
    // Off the uplink's segment, via its router: once the router is
    // resolved, the default route goes straight to its MAC (not through
    // the neighbour agent).
    assert!(c1.ping("198.51.100.7", 2), "c1 cannot reach beyond the uplink router");
    let default_route = d
        .json(&["dump-flows", &net, "table=240"])
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["priority"] == 5)
        .map(|f| f["actions"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default();
    assert!(default_route.contains("mod_dl_dst:"), "the default route is not resolved: {default_route}");
    let ct = d.ok(&["dump-conntrack", "ct_nw_src=10.64.0.77"]);
    assert!(ct.contains("reply=(src=192.0.2.50,dst=192.0.2.1,"), "{ct}");

    // Published ports: from the outside, and from c2 by hairpin; UDP too.
    let mut web = c1.spawn(&["python3", "-m", "http.server", "80", "--bind", "10.64.0.2"]);
    let mut dns = c1.spawn(&[
        "python3",
        "-c",
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('10.64.0.2',53))\nwhile True:\n    d,a=s.recvfrom(100); s.sendto(b'c1',a)",
    ]);
    wait_listening(&c1, "-t", "10.64.0.2:80");
    wait_listening(&c1, "-u", "10.64.0.2:53");
    assert!(fetch(&outside, "http://192.0.2.1:8080/"), "the published port from outside");
    assert!(fetch(&c2, "http://192.0.2.1:8080/"), "the published port by hairpin");
    assert_eq!(udp_echo(&outside, "192.0.2.1", 5353), "c1");
    // A policy on the published port's container: the outside's block
    // may reach its port 80 (through 8080), c2 by hairpin may not.
    let file = std::path::Path::new(&d.socket).parent().unwrap().join("c1-in.json");
    let doc = json!({"name": "c1-in", "network": net, "podSelector": {},
                     "ingress": [{"from": [{"ipBlock": {"cidr": "192.0.2.0/24"}}], "ports": [{"port": 80}]}]});
    std::fs::write(&file, doc.to_string()).unwrap();
    d.ok(&["policy-add", file.to_str().unwrap()]);
    assert!(fetch(&outside, "http://192.0.2.1:8080/"), "the published port from the allowed block");
    assert!(!fetch_once(&c2, "http://192.0.2.1:8080/"), "hairpin from a container the policy does not allow");
    assert!(c1.ping("192.0.2.50", 1), "c1's own connections out (not egress-isolated)");
    d.ok(&["policy-del", "c1-in"]);
    assert!(fetch(&c2, "http://192.0.2.1:8080/"), "hairpin once the policy is gone");
    // Nothing else is reachable from outside.
    outside.run(&["ip", "route", "add", "10.64.0.0/24", "via", "192.0.2.1"]);
    let refused = py(
        &outside,
        "import socket\ntry:\n    socket.create_connection(('10.64.0.2', 80), timeout=2); print('open')\nexcept OSError:\n    print('closed')",
    );
    assert_eq!(refused, "closed");

    // macspoofchk: c2 sending from an address it was not given is dropped
    // and counted.
    c2.run(&["ip", "addr", "add", "10.64.0.99/24", "dev", "eth0"]);
    assert!(!c2.exec(&["ping", "-c", "2", "-W", "1", "-I", "10.64.0.99", "10.64.0.2"]).status.success());
    let drops: u64 = d
        .json(&["dump-flows", &net])
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["priority"] == 95 && f["actions"].as_str().unwrap_or_default() == "drop")
        .map(|f| f["n_packets"].as_u64().unwrap_or(0))
        .sum();
    assert!(drops >= 2, "the spoofed packets were not counted");
    assert!(c2.ping("10.64.0.2", 1), "c2's own address stopped working");

    // A restart keeps the network: masquerade and the published port.
    let dir = std::path::Path::new(&d.socket).parent().unwrap().to_path_buf();
    d.owns_dir = false;
    d.stop();
    drop(d);
    // The uplink gone while the daemon was down: it starts anyway, and
    // the network works again once the uplink is back.
    host.run(&["ip", "link", "del", &uplink]);
    let d = Daemon::start_in_netns(&host, &dir);
    veth_between(&host, &uplink, &outside, "eth0");
    outside.run(&["ip", "addr", "add", "192.0.2.50/24", "dev", "eth0"]);
    let listed = d.json(&["net-list"]);
    assert!(listed[0].get("problem").is_none(), "{listed}");
    assert!(fetch(&outside, "http://192.0.2.1:8080/"), "the published port after a restart");
    assert!(c2.ping("192.0.2.50", 2), "masquerade after a restart");

    // Detach removes the attachment's rules, port and veth.
    let listed = d.json(&["net-list"]);
    let port = listed[0]["attachments"][0]["port"].as_str().unwrap().to_string();
    d.ok(&["net-detach", &net, &c1.name]);
    d.ok(&["net-detach", &net, &c1.name]);
    assert!(!c1.exec(&["ip", "link", "show", "eth0"]).status.success());
    assert!(!d.ok(&["dump-flows", &net]).contains(&port), "detach left rules for {port}");
    assert!(!fetch_once(&outside, "http://192.0.2.1:8080/"), "the published port outlived its container");
    let _ = web.kill();
    let _ = dns.kill();
    let _ = web.wait();
    let _ = dns.wait();
    d.ok(&["net-detach", &net, &c2.name]);
    d.ok(&["net-delete", &net]);
    assert!(d.json(&["net-list"]).as_array().unwrap().is_empty());
}

fn fetch_once(ns: &NetNs, url: &str) -> bool {
    let program = format!(
        "import urllib.request\ntry:\n    urllib.request.urlopen('{url}', timeout=2).read(); print('ok')\nexcept OSError:\n    print('failed')"
    );
    py(ns, &program) == "ok"
}

/// A TCP connection attempt from `ns`: true if it opens within a second.
fn tcp_opens(ns: &NetNs, addr: &str, port: u16) -> bool {
    let program = format!(
        "import socket\ntry:\n    socket.create_connection(('{addr}', {port}), timeout=1); print('open')\nexcept OSError:\n    print('closed')"
    );
    py(ns, &program) == "open"
}

/// A UDP exchange from `ns` (three tries, half a second each): true if
/// `addr:port` answers.
fn udp_answers(ns: &NetNs, addr: &str, port: u16) -> bool {
    let program = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(0.5)\nfor _ in range(3):\n    s.sendto(b'x',('{addr}',{port}))\n    try:\n        s.recvfrom(100); print('yes'); break\n    except OSError:\n        pass\nelse:\n    print('no')"
    );
    py(ns, &program) == "yes"
}

/// A long-lived TCP exchange from `ns`: a line every 0.2 s for `rounds`,
/// each echo printed as it comes ("ok"), then "done"; "broken" when an
/// echo does not come back within a second.
fn chatter(ns: &NetNs, addr: &str, port: u16, rounds: u32) -> std::process::Child {
    ns.spawn(&[
        "python3",
        "-u",
        "-c",
        &format!(
            "import socket,time\ns=socket.create_connection(('{addr}',{port}),timeout=5)\ns.settimeout(1)\nf=s.makefile('rb')\nfor i in range({rounds}):\n    s.sendall(b'x\\n')\n    try:\n        l=f.readline()\n    except OSError:\n        print('broken'); break\n    print('ok' if l else 'closed')\n    if not l: break\n    time.sleep(0.2)\nelse:\n    print('done')"
        ),
    ])
}

/// Reads `child`'s stdout lines until `n` "ok" have come; returns the reader.
fn after_oks(
    child: &mut std::process::Child,
    n: usize,
) -> std::io::Lines<std::io::BufReader<std::process::ChildStdout>> {
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut oks = 0;
    while oks < n {
        let l = lines.next().expect("the exchange ended early").unwrap();
        assert_eq!(l, "ok", "the exchange failed before the change");
        oks += 1;
    }
    lines
}

#[test]
fn network_policy_default_deny_labels_ipblock_ports_replies_counters_and_change_under_traffic() {
    let host = NetNs::new();
    let (web, client, other, client2) = (NetNs::new(), NetNs::new(), NetNs::new(), NetNs::new());
    let d = Daemon::start_netns(&host);
    let net = unique("pol");
    d.ok(&["net-create", &net, "--subnet", "10.66.0.0/24", "--subnet", "fd66::/64"]);
    d.ok(&["net-attach", &net, &web.name, "--ip", "10.66.0.2", "--label", "app=web"]);
    d.ok(&["net-attach", &net, &client.name, "--ip", "10.66.0.3", "--label", "app=client"]);
    d.ok(&["net-attach", &net, &other.name, "--ip", "10.66.0.4", "--label", "app=other"]);
    d.ok(&["net-attach", &net, &client2.name, "--ip", "10.66.0.5", "--label", "app=client"]);
    let mut servers = vec![
        web.spawn(&[
            "python3",
            "-c",
            "import socketserver,threading\nclass H(socketserver.StreamRequestHandler):\n    def handle(self):\n        for l in self.rfile:\n            self.wfile.write(l)\nsocketserver.ThreadingTCPServer.allow_reuse_address=True\nfor p in (80,7000):\n    s=socketserver.ThreadingTCPServer(('10.66.0.2',p),H)\n    threading.Thread(target=s.serve_forever).start()",
        ]),
        web.spawn(&[
            "python3",
            "-c",
            "import socket,threading\ndef serve(p):\n    s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n    s.bind(('10.66.0.2',p))\n    while True:\n        d,a=s.recvfrom(100); s.sendto(d,a)\nfor p in (5005,5011):\n    threading.Thread(target=serve,args=(p,)).start()",
        ]),
    ];
    wait_listening(&web, "-t", "10.66.0.2:7000");
    wait_listening(&web, "-u", "10.66.0.2:5011");
    // No policy: everything is open, link-local too.
    assert!(tcp_opens(&other, "10.66.0.2", 80));
    assert!(other.ping("10.66.0.2", 1));
    let ll =
        String::from_utf8_lossy(&web.exec(&["ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link"]).stdout)
            .split_whitespace()
            .nth(3)
            .and_then(|a| a.split('/').next())
            .map(|a| format!("{a}%eth0"))
            .expect("web has a link-local address");
    assert!(other.ping(&ll, 3), "other cannot reach web at {ll} without policies");

    let dir = std::path::Path::new(&d.socket).parent().unwrap().to_path_buf();
    let add = |name: &str, doc: Value| {
        let file = dir.join(format!("{name}.json"));
        std::fs::write(&file, doc.to_string()).unwrap();
        d.ok(&["policy-add", file.to_str().unwrap(), "--network", &net]);
    };
    // web takes TCP 80 and 7000 from clients (by label) and UDP
    // 5000-5010 from the subnet but 10.66.0.5 (a Kubernetes document);
    // "web-other" lets app=other in on anything, for now.
    add(
        "web",
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "web"},
            "spec": {
                "podSelector": {"matchLabels": {"app": "web"}},
                "ingress": [
                    {"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                     "ports": [{"protocol": "TCP", "port": 80}, {"port": 7000}]},
                    {"from": [{"ipBlock": {"cidr": "10.66.0.0/24", "except": ["10.66.0.5/32"]}}],
                     "ports": [{"protocol": "UDP", "port": 5000, "endPort": 5010}]}
                ]
            }
        }),
    );
    add(
        "web-other",
        json!({"name": "web-other", "podSelector": {"matchLabels": {"app": "web"}},
               "ingress": [{"from": [{"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["other"]}]}}]}]}),
    );
    // Labels and ports.
    assert!(tcp_opens(&client, "10.66.0.2", 80), "client to web:80 (allowed by label)");
    assert!(tcp_opens(&client2, "10.66.0.2", 80), "client2 to web:80 (allowed by label)");
    assert!(!client.ping("10.66.0.2", 1), "client's ping (no rule allows ICMP from it)");
    // ipBlock with except, and a port range.
    assert!(udp_answers(&client, "10.66.0.2", 5005), "UDP 5005 from the block");
    assert!(!udp_answers(&client, "10.66.0.2", 5011), "UDP 5011 is past endPort");
    assert!(!udp_answers(&client2, "10.66.0.2", 5005), "10.66.0.5 is the block's except");
    // Replies always pass: web is isolated for ingress, not egress.
    assert!(web.ping("10.66.0.3", 1), "web's own ping to client (its replies come back)");
    // Neighbour discovery is not policed; IPv6 is.
    assert!(other.ping("fd66::2", 3) || other.ping("fd66::2", 3), "other to web over IPv6 (web-other)");

    // Multicast is not a connection: it reaches client2, not web (isolated).
    let listen = |ns: &NetNs, ip: &str| {
        ns.spawn(&[
            "python3",
            "-c",
            &format!(
                "import socket,struct\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('',5400))\ns.setsockopt(socket.IPPROTO_IP,socket.IP_ADD_MEMBERSHIP,struct.pack('4s4s',socket.inet_aton('239.1.1.1'),socket.inet_aton('{ip}')))\ns.settimeout(10)\ntry:\n    s.recvfrom(100); print('got')\nexcept OSError:\n    print('none')"
            ),
        ])
    };
    let receivers = [listen(&web, "10.66.0.2"), listen(&client2, "10.66.0.5")];
    wait_listening(&web, "-u", "0.0.0.0:5400");
    wait_listening(&client2, "-u", "0.0.0.0:5400");
    py(
        &other,
        "import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.setsockopt(socket.IPPROTO_IP,socket.IP_MULTICAST_IF,socket.inet_aton('10.66.0.4'))\nfor _ in range(10):\n    s.sendto(b'm',('239.1.1.1',5400)); time.sleep(0.2)",
    );
    let heard: Vec<String> =
        receivers.map(|r| String::from_utf8_lossy(&r.wait_with_output().unwrap().stdout).trim().to_string()).into();
    assert_eq!(heard, ["none", "got"], "multicast to the isolated web and to client2");

    // trace names the policy and rule that decided.
    let listed = d.json(&["net-list"]);
    let port_of = |id: &str| {
        listed[0]["attachments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["container_id"] == id)
            .map(|a| (a["port"].as_str().unwrap().to_string(), a["mac"].as_str().unwrap().to_string()))
            .unwrap()
    };
    let (cport, cmac) = port_of(&client.name);
    let traced = |src: &str, port: u16| {
        d.ok(&[
            "trace",
            &net,
            &format!("in_port={cport},dl_src={cmac},tcp,nw_src={src},nw_dst=10.66.0.2,tp_dst={port}"),
        ])
    };
    assert!(traced("10.66.0.3", 80).contains("ingress allowed by policy web, rule 0"), "{}", traced("10.66.0.3", 80));
    let denied = traced("10.66.0.3", 81);
    assert!(denied.contains("selected by web, web-other") && denied.contains("ingress denied"), "{denied}");

    // A policy change under traffic: established connections are judged
    // again at their next packet. other's goes (web-other deleted);
    // client's, still allowed, goes on without a loss.
    let mut kept = chatter(&client, "10.66.0.2", 7000, 40);
    let mut cut = chatter(&other, "10.66.0.2", 7000, 200);
    let mut kept_lines = after_oks(&mut kept, 3);
    let cut_lines = after_oks(&mut cut, 3);
    d.ok(&["policy-del", "web-other"]);
    let rest: Vec<String> = cut_lines.map(Result::unwrap).collect();
    assert_eq!(rest.last().map(String::as_str), Some("broken"), "other's connection outlived its policy: {rest:?}");
    assert!(rest.len() < 30, "other's connection went on for {} exchanges after the change", rest.len());
    let rest: Vec<String> = kept_lines.by_ref().map(Result::unwrap).collect();
    assert_eq!(rest.last().map(String::as_str), Some("done"), "client's connection broke: {rest:?}");
    assert!(rest.iter().all(|l| l == "ok" || l == "done"), "{rest:?}");
    let _ = (kept.wait(), cut.wait());
    assert!(!tcp_opens(&other, "10.66.0.2", 7000), "a new connection from other after the change");
    assert!(!other.ping("fd66::2", 1), "IPv6 from other after the change");
    // Nor at web's link-local address, which no policy names.
    assert!(!other.ping(&ll, 1), "other reached web at {ll}");

    // Egress: client may reach web:80 only; its replies still come back.
    add(
        "client-out",
        json!({"name": "client-out", "podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
               "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": 80}]}]}),
    );
    assert!(tcp_opens(&client, "10.66.0.2", 80), "client to web:80 (egress and ingress allow it)");
    assert!(!client.ping("10.66.0.4", 1), "client's ping to other (egress denies it)");
    assert!(other.ping("10.66.0.3", 1), "other's ping to client (client's replies are not egress)");

    // Relabelled, other is a client: web lets it in on port 80, and
    // client-out's egress rule now applies to it.
    d.ok(&["net-label", &net, &other.name, "app=client"]);
    assert!(tcp_opens(&other, "10.66.0.2", 80), "other as a client to web:80");
    assert!(!other.ping("10.66.0.3", 1), "other, a client now, is egress-isolated");
    d.ok(&["net-label", &net, &other.name, "app=other"]);
    assert!(!tcp_opens(&other, "10.66.0.2", 80), "other relabelled back");

    // Counters: per rule, and the denials.
    let policies = d.json(&["policy-list", &net]);
    let web_p = policies.as_array().unwrap().iter().find(|p| p["name"] == "web").unwrap();
    let count = |dir: &str, i: u64| {
        web_p["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["direction"] == dir && r["rule"] == i)
            .map(|r| r["allowed_packets"].as_u64().unwrap())
            .unwrap()
    };
    assert!(count("Ingress", 0) >= 4, "{web_p}");
    assert!(count("Ingress", 1) >= 1, "{web_p}");
    assert!(web_p["network_denied_packets"]["ingress"].as_u64().unwrap() >= 4, "{web_p}");
    assert_eq!(web_p["selects"].as_array().unwrap().len(), 1);
    let text = d.ok(&["policy-list"]);
    assert!(text.contains("Policy client-out") && text.contains("ingress rule 0: allowed"), "{text}");

    // Bad documents are refused whole; the network refuses to go while
    // it has policies.
    let file = dir.join("bad.json");
    std::fs::write(&file, r#"{"name": "bad", "ingress": [{"ports": [{"port": "http"}]}]}"#).unwrap();
    assert!(!d.ctl(&["policy-add", file.to_str().unwrap(), "--network", &net]).status.success());
    assert!(!d.ctl(&["net-delete", &net]).status.success());
    for p in ["web", "client-out"] {
        d.ok(&["policy-del", p]);
    }
    assert!(tcp_opens(&other, "10.66.0.2", 7000), "with no policy left everything is open again");
    for s in &mut servers {
        let _ = s.kill();
        let _ = s.wait();
    }
}
