//! vswitchd and vswitch-ctl end to end, as root: a bridge of veth ports
//! from namespaces built with the CLI only, a flow that blocks ICMP and is
//! removed again, listings in text and JSON, exit codes, shutdown.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::Daemon;
use serde_json::Value;
use vswitch_tests::netns::{NetNs, Veth, is_promiscuous, unique};

#[test]
fn build_a_bridge_with_the_cli_and_filter_with_flows() {
    let (n0, n1) = (NetNs::new(), NetNs::new());
    let (v0, v1) = (Veth::new(&n0, "10.95.0.1/24"), Veth::new(&n1, "10.95.0.2/24"));
    let mut d = Daemon::start();
    d.ok(&["add-br", "br0"]);
    d.ok(&["add-port", "br0", &v0.host]);
    d.ok(&["add-port", "br0", &v1.host, "type=afpacket"]);
    assert!(n0.ping("10.95.0.2", 2), "ping across the bridge");

    d.ok(&["add-flow", "br0", "priority=100,icmp,actions=drop"]);
    assert!(!n0.exec(&["ping", "-c", "2", "-W", "1", "10.95.0.2"]).status.success(), "ICMP is blocked");
    d.ok(&["del-flows", "br0", "icmp"]);
    assert!(n0.ping("10.95.0.2", 2), "and allowed again");

    let fdb = d.ok(&["fdb-show", "br0"]);
    assert!(fdb.starts_with(" port  VLAN  MAC"), "{fdb}");
    assert_eq!(fdb.lines().count(), 3, "both hosts learned: {fdb}");
    let flows = d.ok(&["dump-flows", "br0"]);
    assert!(flows.contains("priority=0 actions=NORMAL"), "{flows}");
    let n_packets: u64 = d.json(&["dump-flows", "br0"])[0]["n_packets"].as_u64().unwrap();
    assert!(n_packets > 0, "the default rule counted the pings");

    let show = d.ok(&["show"]);
    assert!(
        show.contains("Bridge br0") && show.contains(&format!("Port {}", v0.host)) && show.contains("type: afpacket"),
        "{show}"
    );
    assert_eq!(d.ok(&["list-br"]), "br0\n");
    assert_eq!(d.json(&["list-ports", "br0"]).as_array().unwrap().len(), 2);
    assert!(d.json(&["fdb-show", "br0"])[0].get("mac").is_some());
    assert!(d.json(&["stats", "br0"])["bridges"][0]["ports"][0].get("rx_packets").is_some());
    assert!(d.json(&["fdb-stats", "br0"]).get("learned").is_some());
    let t = d.ok(&["trace", "br0", &format!("in_port={},dl_dst=ff:ff:ff:ff:ff:ff", v0.host)]);
    assert!(t.contains("Datapath actions: 2"), "{t}");

    // Exit codes: 0, 2 for "false", 1 for errors, with one clear line.
    assert_eq!(d.ctl(&["br-exists", "br0"]).status.code(), Some(0));
    assert_eq!(d.ctl(&["br-exists", "nope"]).status.code(), Some(2));
    let e = d.ctl(&["add-flow", "br0", "nw_dts=1,actions=drop"]);
    assert_eq!(e.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&e.stderr).contains("unknown field 'nw_dts'"));
    assert_eq!(d.ctl(&["add-br", "br0"]).status.code(), Some(1));
    assert_eq!(d.ctl(&["add-br", "br0", "--may-exist"]).status.code(), Some(0));

    // A second daemon on the same socket refuses to start.
    let second = Command::new(env!("CARGO_BIN_EXE_vswitchd")).args(["--socket", &d.socket]).output().unwrap();
    assert_eq!(second.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&second.stderr).contains("another vswitchd is running"));

    // SIGTERM: a clean exit, the socket removed, the interfaces released.
    assert!(d.stop().success());
    assert!(!std::path::Path::new(&d.socket).exists(), "socket unlinked");
    assert!(!is_promiscuous(&v0.host), "promiscuous mode released");
}

#[test]
fn no_daemon_is_one_clear_line_and_exit_1() {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_vswitch-ctl"))
        .args(["--socket", "/nonexistent/vswitchd.sock", "-t", "2", "show"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("is vswitchd running?"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(3));
}

/// `show` and `dump-flows` without what changes by itself (counters, ages).
fn config_view(d: &Daemon) -> (String, Vec<(Value, Value, Value)>) {
    let flows = d.json(&["dump-flows", "br0"]);
    let flows =
        flows.as_array().unwrap().iter().map(|f| (f["priority"].clone(), f["match"].clone(), f["actions"].clone()));
    (d.ok(&["show"]).replace("        link_state: down\n", ""), flows.collect())
}

#[test]
fn restart_replays_the_saved_configuration() {
    let (n0, n1, n2) = (NetNs::new(), NetNs::new(), NetNs::new());
    let (v0, v1) = (Veth::new(&n0, "10.94.0.1/24"), Veth::new(&n1, "10.94.0.2/24"));
    let v2 = Veth::new(&n2, "10.94.0.3/24");
    let gw = unique("vg");
    let dir = std::env::temp_dir().join(unique("vsd"));
    let mut d = Daemon::start_in(&dir);
    // One transaction builds the bridge; the third port is transient.
    d.ok(&[
        "add-br",
        "br0",
        "--",
        "add-port",
        "br0",
        &v0.host,
        "tag=7",
        "--",
        "add-port",
        "br0",
        &v1.host,
        "tag=7",
        "options:blocks=16",
        "--",
        "add-port",
        "br0",
        &v2.host,
        "transient=true",
        "--",
        "add-port",
        "br0",
        &gw,
        "type=internal",
        "tag=7",
        "--",
        "add-flow",
        "br0",
        "priority=50,tcp,tp_dst=9,actions=drop",
        "--",
        "fdb-add",
        "br0",
        &v0.host,
        "7",
        "02:00:00:00:94:01",
    ]);
    assert!(n0.ping("10.94.0.2", 2), "ping across the bridge");
    // The internal port gives the host a leg on the bridge.
    vswitch_tests::netns::run(&["ip", "addr", "add", "10.94.0.254/24", "dev", &gw]);
    vswitch_tests::netns::run(&["ip", "link", "set", &gw, "up"]);
    assert!(n0.ping("10.94.0.254", 2), "namespace -> host over the internal port");
    let before = config_view(&d);
    assert!(before.0.contains(&format!("Port {gw}\n        type: internal\n        tag: 7")), "{}", before.0);
    assert!(before.0.contains("options: {blocks=16}"), "{}", before.0);
    let saved = std::fs::read_to_string(&d.db).unwrap();
    assert!(!saved.contains(&v2.host), "transient ports are not saved: {saved}");

    d.owns_dir = false;
    assert!(d.stop().success());
    assert!(!std::path::Path::new(&format!("/sys/class/net/{gw}")).exists(), "the TAP device went with the daemon");
    // One interface disappears while the daemon is down.
    let v1_name = v1.host.clone();
    drop(v1);

    let d = Daemon::start_in(&dir);
    let after = config_view(&d);
    assert_eq!(after.1, before.1, "the same flows");
    assert!(!after.0.contains(&v2.host), "the transient port is gone: {}", after.0);
    assert!(after.0.contains("error: \"no network interface named"), "{}", after.0);
    assert_eq!(d.json(&["fdb-show", "br0"])[0]["mac"], "02:00:00:00:94:01", "static MAC restored");
    // The interface comes back: the port attaches by itself.
    let _v1 = Veth::named(&v1_name, &n1, "10.94.0.2/24");
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.ok(&["show"]).contains("error:") {
        assert!(Instant::now() < deadline, "the port did not attach: {}", d.ok(&["show"]));
        std::thread::sleep(Duration::from_millis(100));
    }
    let restored = config_view(&d);
    assert_eq!(
        restored.0,
        before.0.replace(
            &format!("    Port {}\n        type: afpacket\n        transient: true\n        ofport: 3\n", v2.host),
            ""
        )
    );
    // The recreated veth has a new MAC: n0 must not wait out its stale ARP entry.
    n0.exec(&["ip", "neigh", "flush", "all"]);
    assert!(n0.ping("10.94.0.2", 3), "traffic flows again after the restart");
    vswitch_tests::netns::run(&["ip", "addr", "add", "10.94.0.254/24", "dev", &gw]);
    vswitch_tests::netns::run(&["ip", "link", "set", &gw, "up"]);
    assert!(n0.ping("10.94.0.254", 2), "and to the host over the recreated internal port");
}

#[test]
fn an_unusable_configuration_stops_the_daemon_until_reset_on_purpose() {
    let dir = std::env::temp_dir().join(unique("vsd"));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("conf.json");
    let socket = dir.join("vswitchd.sock").display().to_string();
    let daemon = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_vswitchd"))
            .args(["--socket", &socket, "--db", &db.display().to_string()])
            .args(extra)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    for (text, why) in [
        ("{ not json", "not a configuration"),
        ("{\"version\":1,\"bridges\":[{\"name\":\"br", "truncated"),
        ("{\"version\":999,\"bridges\":[]}", "newer vswitchd"),
    ] {
        std::fs::write(&db, text).unwrap();
        let out = daemon(&[]).wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "vswitchd started over an unusable file: {err}");
        assert!(err.contains(why) && err.contains("--reset-config"), "{err}");
        assert_eq!(std::fs::read_to_string(&db).unwrap(), text, "the file is untouched");
    }
    // --reset-config: moved aside, and an empty switch that serves.
    let mut child = daemon(&["--reset-config"]);
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut err, &mut first).unwrap();
    assert!(first.contains("moved to") && first.contains("starting empty"), "{first}");
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    let kept: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("conf.json.reset-"))
        .filter(|e| !e.file_name().to_string_lossy().ends_with(".journal"))
        .collect();
    assert_eq!(kept.len(), 1, "the bad file is kept");
    assert_eq!(std::fs::read_to_string(kept[0].path()).unwrap(), "{\"version\":999,\"bridges\":[]}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn json_listings_have_their_documented_fields() {
    let ns = NetNs::new();
    let v = Veth::new(&ns, "10.93.0.1/24");
    let d = Daemon::start();
    d.ok(&["add-br", "br0", "--", "add-port", "br0", &v.host, "tag=3"]);
    assert!(!ns.exec(&["ping", "-c", "1", "-W", "1", "10.93.0.9"]).status.success());
    let has = |v: &Value, fields: &[&str]| {
        for f in fields {
            assert!(v.get(*f).is_some(), "'{f}' missing in {v}");
        }
    };
    let show = d.json(&["show"]);
    has(&show[0], &["name", "ports", "mac_table"]);
    has(&show[0]["ports"][0], &["name", "port_no", "type", "tag", "trunks"]);
    has(&d.json(&["list-br"])[0], &["name", "ports"]);
    has(&d.json(&["list-ports", "br0"])[0], &["name", "port_no", "type"]);
    has(&d.json(&["fdb-show", "br0"])[0], &["port", "vlan", "mac", "age_secs", "is_static"]);
    has(
        &d.json(&["fdb-stats", "br0"]),
        &["entries", "capacity", "aging_secs", "learned", "expired", "evicted", "moved"],
    );
    has(
        &d.json(&["dump-flows", "br0"])[0],
        &["cookie", "duration_secs", "n_packets", "n_bytes", "priority", "match", "actions", "idle_age_secs"],
    );
    let stats = d.json(&["stats"]);
    has(&stats["bridges"][0]["ports"][0], &["name", "port_no", "type", "link_up", "rx_packets", "tx_packets", "drops"]);
    has(&d.json(&["trace", "br0", "in_port=1"]), &["flow", "rule", "steps", "verdict", "outputs"]);
    has(&d.json(&["version"]), &["version"]);
    // Chained commands give one result per command.
    let both = d.json(&["list-br", "--", "fdb-stats", "br0"]);
    assert_eq!(both.as_array().map(Vec::len), Some(2), "{both}");
    // Completions need no daemon.
    let out = Command::new(env!("CARGO_BIN_EXE_vswitch-ctl")).args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("add-port"));
}

/// The README's run command, as root, on the binaries this test built.
#[test]
fn the_readme_demo_runs() {
    let text = common::run_script("demo.sh");
    assert!(text.contains("(no replies, as intended)") && text.contains("rule removed: ping works again"), "{text}");
    assert!(text.contains("\"type\": \"internal\""), "the saved configuration is shown: {text}");
    assert!(text.contains("through the published port") && text.contains("the outside: fetched"), "{text}");
    assert!(text.contains("denied by web-in") && text.contains("Policy web-in"), "the policy step: {text}");
}

/// A port's static MACs survive what re-creates the port: a transaction
/// that deletes it and then fails (the undo re-adds it), and a set-port
/// that changes its options (the port is reopened).
#[test]
fn static_macs_survive_undo_and_reopen() {
    let ns = NetNs::new();
    let v = Veth::new(&ns, "10.91.0.1/24");
    let d = Daemon::start();
    d.ok(&["add-br", "br0"]);
    d.ok(&["add-port", "br0", &v.host]);
    d.ok(&["fdb-add", "br0", &v.host, "0", "02:00:00:00:00:77"]);
    let statics = || {
        d.json(&["fdb-show", "br0"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["is_static"] == true && e["mac"] == "02:00:00:00:00:77")
            .count()
    };
    assert_eq!(statics(), 1);
    let out = d.ctl(&["del-port", &v.host, "--", "del-br", "nope"]);
    assert_eq!(out.status.code(), Some(1), "the transaction fails");
    assert_eq!(statics(), 1, "undoing the del-port put the static MAC back");
    d.ok(&["set-port", &v.host, "options:blocks=32"]);
    assert_eq!(statics(), 1, "reopening the port kept it");
}

/// ovs-vsctl's placement: a command's options before it, a leading `--`,
/// global options in any part; usage errors exit 1, 2 is only a
/// predicate's "false".
#[test]
fn options_where_ovs_vsctl_puts_them_and_exit_codes() {
    let d = Daemon::start();
    let name = unique("pl");
    d.ok(&["--may-exist", "add-br", &name]);
    d.ok(&["--may-exist", "add-br", &name]);
    d.ok(&["add-br", &name, "--may-exist"]);
    d.ok(&["--", "--may-exist", "add-br", &name]);
    d.ok(&["-f", "json", "--", "--if-exists", "del-br", "nope", "--", "--may-exist", "add-br", &name]);
    d.ok(&["--if-exists", "del-br", "nope"]);
    let listed = d.json(&["--", "list-br"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(d.ctl(&["--timeout=5", "br-exists", &name]).status.code(), Some(0));
    assert_eq!(d.ctl(&["br-exists", "nope"]).status.code(), Some(2), "a predicate's false");
    assert_eq!(d.ctl(&["br-exists"]).status.code(), Some(1), "a usage error is not 'false'");
    assert_eq!(d.ctl(&["no-such-command"]).status.code(), Some(1));
    assert_eq!(d.ctl(&["del-br", "nope"]).status.code(), Some(1));
    assert_eq!(d.ctl(&["--help"]).status.code(), Some(0));
    // port-to-br, iface-to-br, list-ifaces; port numbers in show.
    d.ok(&["add-port", &name, "p-y", "type=internal", "transient=true"]);
    assert_eq!(d.ok(&["port-to-br", "p-y"]).trim(), name);
    assert_eq!(d.ok(&["iface-to-br", "p-y"]).trim(), name);
    assert_eq!(d.ok(&["list-ifaces", &name]).trim(), "p-y");
    assert_eq!(d.ctl(&["port-to-br", "nope"]).status.code(), Some(1));
    assert!(d.ok(&["show"]).contains("ofport: 1"), "{}", d.ok(&["show"]));
    // dump-flows prints the priority as ovs-ofctl does: not when default.
    d.ok(&["add-flow", &name, "tcp,tp_dst=7,actions=drop"]);
    let dumped = d.ok(&["dump-flows", &name]);
    assert!(dumped.contains(", tcp,tp_dst=7 actions=drop"), "{dumped}");
    assert!(!dumped.contains("priority=32768") && dumped.contains("priority=0 actions=NORMAL"), "{dumped}");
    // Contradictions are errors in words; no-ops say so.
    let out = d.ctl(&["add-port", &name, "p-x", "type=internal", "tag=10", "tag=20"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("'tag' is given twice"));
    let out = d.ctl(&["add-port", &name, "p-x", "type=internal", "tag=5000"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("a VLAN id is 1 to 4094"), "{out:?}");
    for args in [
        vec!["mod-flows", name.as_str(), "tcp,tp_dst=1,actions=drop"],
        vec!["del-flows", name.as_str(), "tcp,tp_dst=1"],
        vec!["fdb-del", name.as_str(), "0", "02:00:00:00:00:99"],
    ] {
        let out = d.ctl(&args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("nothing changed"), "{args:?}: {out:?}");
    }
}

/// An internal port carries TCP super-frames both ways: the host's TCP
/// sends 64 KiB frames into its TAP device and gets them whole from the
/// switch (IFF_VNET_HDR with TUNSETOFFLOAD), so the frames it counts
/// average far above the MTU, with nothing cut or dropped as too big.
#[test]
fn internal_port_carries_tcp_super_frames_both_ways() {
    let (host, c) = (NetNs::new(), NetNs::new());
    let d = Daemon::start_netns(&host);
    let (hv, cv) = (unique("vh"), unique("vc"));
    vswitch_tests::netns::veth_between(&host, &hv, &c, &cv);
    c.run(&["ip", "addr", "add", "10.93.0.1/24", "dev", &cv]);
    let (br, gw) = (unique("ib"), unique("ig"));
    d.ok(&["add-br", &br, "--", "add-port", &br, &hv, "--", "add-port", &br, &gw, "type=internal"]);
    host.run(&["ip", "addr", "add", "10.93.0.254/24", "dev", &gw]);
    host.run(&["ip", "link", "set", &gw, "up"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.ping("10.93.0.254", 1) {
        assert!(Instant::now() < deadline, "no ping from the namespace to the host's internal port");
    }
    let (to_host, from_host) =
        vswitch_tests::netns::iperf3_both_ways(&c, "10.93.0.1", &host, "10.93.0.254", 2, 50_000_000);
    println!(
        "TCP through an internal port: to the host {:.2} Gbit/s, from it {:.2} Gbit/s",
        to_host.bits_per_second / 1e9,
        from_host.bits_per_second / 1e9
    );
    let stats = d.json(&["stats", &br, &gw]);
    let p = &stats["bridges"][0]["ports"][0];
    let n = |k: &str| p[k].as_u64().unwrap_or(0);
    assert_eq!(p["name"], gw.as_str(), "{stats}");
    let (rx, tx) = (n("rx_bytes") / n("rx_packets").max(1), n("tx_bytes") / n("tx_packets").max(1));
    assert!(rx > 4000, "the host's super-frames came in whole: {rx} bytes per frame on average: {p}");
    assert!(tx > 4000, "and went out to it whole: {tx} bytes per frame on average: {p}");
    for reason in ["too_big", "truncated", "tx_error"] {
        assert_eq!(p["drops"][reason].as_u64().unwrap_or(0), 0, "{reason}: {p}");
    }
    // pmd-stats saw the same traffic: every packet received in a burst,
    // busy cycles spent on them; cleared, it counts from zero again.
    let pmd = d.json(&["pmd-stats"]);
    let t = &pmd[0];
    let m = |k: &str| t[k].as_u64().unwrap_or(0);
    assert_eq!(t["thread"], "vswitch-pmd0", "{pmd}");
    assert!(m("packets") > n("rx_packets") && m("busy_cycles") > 0 && m("cycles_per_second") > 0, "{pmd}");
    let histogram: u64 = t["batch_histogram"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(histogram, m("batches"), "every burst in the histogram: {pmd}");
    let text = d.ok(&["pmd-stats"]);
    assert!(text.contains("vswitch-pmd0:") && text.contains("busy cycles/packet"), "{text}");
    d.ok(&["pmd-stats-clear"]);
    let after = d.json(&["pmd-stats"]);
    assert!(after[0]["packets"].as_u64().unwrap() < m("packets") / 10, "cleared: {after}");
}
