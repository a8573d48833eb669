//! What an Open vSwitch operator does, through vswitch-ctl against a live
//! vswitchd, as root: docs/cli.md's mapping table run row by row, bridge
//! settings on live traffic and across a restart, mirrors and capture
//! seen with tshark.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Daemon;
use vswitch_tests::netns::{NetNs, Veth, unique};

/// The vswitch-ctl commands of docs/cli.md's "From Open vSwitch" table,
/// in order.
fn mapping_table() -> Vec<Vec<String>> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/cli.md")).expect("docs/cli.md");
    let section = doc.split("## From Open vSwitch").nth(1).expect("the mapping section");
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .filter_map(|l| {
            let cell = l.trim_end_matches('|').rsplit('|').next()?.trim();
            let cmd = cell.strip_prefix("`vswitch-ctl ")?.strip_suffix('`')?;
            Some(cmd.split_whitespace().map(str::to_string).collect())
        })
        .collect()
}

#[test]
fn every_command_of_the_mapping_table_runs() {
    let rows = mapping_table();
    assert!(rows.len() >= 50, "the table has {} commands", rows.len());
    // The daemon runs in a namespace of its own, so the table's plain
    // names (p1, p2, p3) are that namespace's interfaces.
    let ns = NetNs::new();
    let peer = NetNs::new();
    for p in ["p1", "p2", "p3"] {
        vswitch_tests::netns::veth_between(&ns, p, &peer, p);
    }
    let d = Daemon::start_netns(&ns);
    for args in &rows {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = Command::new(env!("CARGO_BIN_EXE_vswitch-ctl"))
            .args(["--socket", &d.socket])
            .args(&a)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run vswitch-ctl");
        // `add-flows br0 -` and `replace-flows br0 -` read these.
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(b"# a comment\npriority=5,ip,actions=NORMAL\npriority=10,arp,actions=NORMAL\n");
        drop(stdin);
        let out = child.wait_with_output().expect("vswitch-ctl");
        assert!(
            out.status.success(),
            "vswitch-ctl {}: exit {:?}: {}{}",
            args.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        // What some rows must print.
        match a.as_slice() {
            ["get", "port", "p1", ..] => assert_eq!(text, "native-untagged\n10\n[20, 30]\n"),
            ["get-fail-mode", _] => assert_eq!(text, "secure\n"),
            ["get", "bridge", _, _] => assert_eq!(text, "\"60\"\n"),
            ["dump-flows", _, "--rsort"] => {
                let first = text.lines().next().unwrap_or_default();
                assert!(first.contains("priority=10"), "{text}");
            }
            ["show-ports", _] => assert!(text.contains(" 1(p1): addr:") && text.contains("LIVE"), "{text}"),
            // p1 is native-untagged in VLAN 10 (all VLANs, trunks cleared),
            // p2 an access port of 10, p3 a trunk: the tag is pushed for p3.
            ["trace", ..] => assert!(text.contains("Datapath actions: 2,push_vlan(vid=10),3"), "{text}"),
            _ => {}
        }
    }
}

/// Bridge and port settings on live traffic, and after a restart.
#[test]
fn settings_take_effect_on_live_traffic_and_survive_a_restart() {
    let (a, b) = (NetNs::new(), NetNs::new());
    for ns in [&a, &b] {
        ns.run(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
    }
    let (va, vb) = (Veth::new(&a, "10.77.0.1/24"), Veth::new(&b, "10.77.0.2/24"));
    let dir = std::env::temp_dir().join(unique("vsd"));
    let mut d = Daemon::start_in(&dir);
    d.owns_dir = false;
    let br = unique("st");
    d.ok(&["add-br", &br, "--", "add-port", &br, &va.host, "--", "add-port", &br, &vb.host]);
    // fail_mode secure: the default rule goes and an empty table drops.
    d.ok(&["set-fail-mode", &br, "secure"]);
    assert_eq!(d.ok(&["dump-flows", &br]), "");
    assert!(!a.ping("10.77.0.2", 2), "a secure bridge with an empty table drops");
    // (The failed resolution would hold the next pings back.)
    a.run(&["ip", "neigh", "flush", "all"]);
    // standalone: the empty table switches as NORMAL.
    d.ok(&["set", "bridge", &br, "fail_mode=standalone"]);
    assert!(a.ping("10.77.0.2", 3), "standalone switches an empty table");
    assert!(d.ok(&["trace", &br, &format!("in_port={},dl_dst=ff:ff:ff:ff:ff:ff", va.host)]).contains("standalone"));

    // MAC aging: entries go after the new time.
    d.ok(&["set", "bridge", &br, "other_config:mac-aging-time=2"]);
    assert!(a.ping("10.77.0.2", 2));
    let learned = || d.ok(&["fdb-show", &br]).lines().skip(1).count();
    assert_eq!(learned(), 2, "{}", d.ok(&["fdb-show", &br]));
    let deadline = Instant::now() + Duration::from_secs(8);
    while learned() > 0 {
        assert!(Instant::now() < deadline, "entries outlived a 2 s aging time: {}", d.ok(&["fdb-show", &br]));
        std::thread::sleep(Duration::from_millis(200));
    }
    // Table size: a smaller cap evicts.
    d.ok(&["set", "bridge", &br, "other_config:mac-aging-time=300"]);
    assert!(a.ping("10.77.0.2", 2));
    assert_eq!(learned(), 2);
    d.ok(&["set", "bridge", &br, "other_config:mac-table-size=1"]);
    assert_eq!(learned(), 1, "{}", d.ok(&["fdb-show", &br]));
    d.ok(&["clear", "bridge", &br, "other_config"]);
    assert_eq!(d.ok(&["get", "bridge", &br, "other_config:mac-table-size"]), "\"8192\"\n");

    // Native-untagged: a's untagged frames are VLAN 10 on a trunk of 20.
    d.ok(&["set", "port", &va.host, "vlan_mode=native-untagged", "tag=10", "trunks=20"]);
    d.ok(&["set", "port", &vb.host, "tag=10"]);
    assert!(a.ping("10.77.0.2", 3), "native VLAN 10 carries untagged frames to an access port of VLAN 10");
    d.ok(&["set", "port", &vb.host, "tag=20"]);
    assert!(!a.ping("10.77.0.2", 2), "a's untagged frames are VLAN 10, not 20");
    a.run(&["ip", "neigh", "flush", "all"]);
    // VLAN 20 is a trunk VLAN on a's port: b's untagged broadcasts leave
    // there tagged 20 (this kernel has no VLAN devices to answer them).
    let mut dump = a.spawn(&["timeout", "10", "tcpdump", "-e", "-n", "-c", "1", "-i", &va.inner, "vlan 20 and arp"]);
    vswitch_tests::netns::wait_listening(&mut dump);
    let _ = b.ping("10.77.0.1", 2);
    let seen = dump.wait_with_output().expect("tcpdump");
    let text = String::from_utf8_lossy(&seen.stdout);
    assert!(text.contains("vlan 20") && text.contains("Request who-has 10.77.0.1"), "a's wire saw: {text}");
    b.run(&["ip", "neigh", "flush", "all"]);
    let bad = d.ctl(&["set", "port", &vb.host, "trunks=30"]);
    assert_eq!(bad.status.code(), Some(1), "tag and trunks without a native mode are refused");
    d.ok(&["set", "port", &vb.host, "tag=10"]);
    d.ok(&["set", "bridge", &br, "other_config:mac-aging-time=77"]);
    a.run(&["ip", "neigh", "flush", "all"]);
    assert!(a.ping("10.77.0.2", 2));
    // mod-port down: nothing a sends is switched; up again, it is.
    d.ok(&["mod-port", &br, &va.host, "down"]);
    assert!(!a.ping("10.77.0.2", 2), "a port that is down switches nothing");
    d.ok(&["mod-port", &br, &va.host, "up"]);
    a.run(&["ip", "neigh", "flush", "all"]);
    assert!(a.ping("10.77.0.2", 3));
    // A saved mirror whose output port is not saved (transient) does not
    // stop the restart.
    let tap = unique("mt");
    d.ok(&["add-port", &br, &tap, "type=internal", "transient=true"]);
    d.ok(&["add-mirror", &br, "mt", &format!("select_src_port={}", va.host), &format!("output_port={tap}")]);

    // All of it after a restart.
    d.stop();
    let mut d = Daemon::start_in(&dir);
    assert_eq!(d.ok(&["get-fail-mode", &br]), "standalone\n");
    assert_eq!(d.ok(&["get", "bridge", &br, "other_config:mac-aging-time"]), "\"77\"\n");
    assert_eq!(d.ok(&["get", "port", &va.host, "vlan_mode", "tag", "trunks"]), "native-untagged\n10\n[20]\n");
    assert!(a.ping("10.77.0.2", 3), "{}", d.ok(&["show"]));
    assert!(d.ok(&["list-mirrors", &br]).contains("is not on the bridge"), "{}", d.ok(&["list-mirrors", &br]));
    d.stop();
    d.owns_dir = true;
}

fn tshark(file: &str) -> String {
    let out = Command::new("tshark").args(["-n", "-r", file]).output().expect("tshark (Debian's tshark package)");
    assert!(out.status.success(), "tshark -r {file}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A mirror's output port and `capture` both see a port's two directions.
#[test]
fn a_mirror_and_capture_see_both_directions() {
    let (a, b, m) = (NetNs::new(), NetNs::new(), NetNs::new());
    for ns in [&a, &b, &m] {
        ns.run(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
    }
    let (va, vb, vm) = (Veth::new(&a, "10.78.0.1/24"), Veth::new(&b, "10.78.0.2/24"), Veth::new(&m, "10.78.0.9/24"));
    let d = Daemon::start();
    let br = unique("mi");
    for v in [&va, &vb, &vm] {
        d.ok(&["--may-exist", "add-br", &br, "--", "add-port", &br, &v.host]);
    }
    let src = format!("select_src_port={}", va.host);
    let dst = format!("select_dst_port={}", va.host);
    let out = format!("output_port={}", vm.host);
    d.ok(&["add-mirror", &br, "m0", &src, &dst, &out]);
    assert!(d.ctl(&["add-mirror", &br, "m1", &src, &format!("output_port={}", va.host)]).status.code() == Some(1));

    // The mirror's output, seen from inside m with tcpdump.
    let dir = std::env::temp_dir().join(unique("cap"));
    std::fs::create_dir_all(&dir).unwrap();
    let mirrored = dir.join("mirror.pcap").display().to_string();
    let mut dump = m.spawn(&["tcpdump", "-i", &vm.inner, "-n", "-U", "-c", "4", "-w", &mirrored, "icmp"]);
    vswitch_tests::netns::wait_listening(&mut dump);
    // And `capture` of the same port, to a pcap file.
    let captured = dir.join("capture.pcap").display().to_string();
    let cap = Command::new(env!("CARGO_BIN_EXE_vswitch-ctl"))
        .args(["--socket", &d.socket, "capture", &br, &va.host, "-c", "8", "--duration", "10", "-w", &captured])
        .stderr(Stdio::piped())
        .spawn()
        .expect("vswitch-ctl capture");
    std::thread::sleep(Duration::from_millis(500));
    assert!(a.ping("10.78.0.2", 3));
    let cap = cap.wait_with_output().expect("capture ends");
    assert!(cap.status.success(), "{}", String::from_utf8_lossy(&cap.stderr));
    let deadline = Instant::now() + Duration::from_secs(5);
    while dump.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = dump.kill();
    let _ = dump.wait();

    let seen = tshark(&mirrored);
    assert!(seen.contains("Echo (ping) request") && seen.contains("Echo (ping) reply"), "mirror port saw:\n{seen}");
    let seen = tshark(&captured);
    assert!(seen.contains("Echo (ping) request") && seen.contains("Echo (ping) reply"), "capture saw:\n{seen}");
    assert!(seen.contains("ARP") || seen.lines().count() >= 6, "capture saw:\n{seen}");

    // What the mirror's output port sends is dropped, not switched.
    m.run(&["ip", "neigh", "flush", "all"]);
    assert!(!m.ping("10.78.0.2", 2), "a mirror's output port switches nothing");
    let stats = d.json(&["stats", &br, &vm.host]);
    assert!(stats["bridges"][0]["ports"][0]["drops"]["mirror_output"].as_u64().unwrap_or(0) >= 1, "{stats}");
    let listed = d.json(&["list-mirrors", &br]);
    assert!(listed[0]["tx_packets"].as_u64().unwrap_or(0) >= 4, "{listed}");
    // The capture's port and mirror are gone, and were never saved.
    let shown = d.ok(&["show"]);
    assert!(!shown.contains(".capture"), "{shown}");
    let saved = std::fs::read_to_string(&d.db).unwrap_or_default()
        + &std::fs::read_to_string(format!("{}.journal", d.db)).unwrap_or_default();
    assert!(saved.contains("m0") && !saved.contains(".capture"), "{saved}");
    d.ok(&["del-mirror", &br, "m0"]);
    assert_eq!(d.ctl(&["del-mirror", &br, "m0"]).status.code(), Some(1));
    d.ok(&["del-mirror", &br, "m0", "--if-exists"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A script's view of the exit codes: 0, 2 only for a predicate's
/// "false", 1 for every class of error, each with its kind under `-f json`.
#[test]
fn exit_codes_of_every_predicate_and_error_class() {
    let d = Daemon::start();
    let br = unique("ex");
    d.ok(&["add-br", &br]);
    let code = |args: &[&str]| d.ctl(args).status.code();
    let kind = |args: &[&str]| {
        let mut a = vec!["-f", "json"];
        a.extend_from_slice(args);
        let out = d.ctl(&a);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["error"]["code"].as_str().unwrap_or_default().to_string()
    };
    // The one predicate.
    assert_eq!(code(&["br-exists", &br]), Some(0));
    assert_eq!(code(&["br-exists", "nope"]), Some(2));
    // Usage errors: exit 1 with what was expected.
    for usage in [&["br-exists"][..], &["get", "bridge"], &["set", "bridge", &br], &["mod-port", &br, "p", "sideways"]]
    {
        let out = d.ctl(usage);
        assert_eq!(out.status.code(), Some(1), "{usage:?}");
        assert!(!out.stderr.is_empty(), "{usage:?} says why");
    }
    // The daemon's error classes.
    assert_eq!(kind(&["del-br", "nope"]), "not_found");
    assert_eq!(kind(&["get", "bridge", "nope", "fail_mode"]), "invalid_argument");
    assert_eq!(kind(&["add-br", &br]), "exists");
    assert_eq!(kind(&["add-flow", &br, "priority=1,bogus=2,actions=drop"]), "invalid_argument");
    assert_eq!(kind(&["set", "bridge", &br, "other_config:mac-table-size=0"]), "invalid_argument");
    assert_eq!(kind(&["set", "bridge", &br, "fail_mode=open"]), "invalid_argument");
    assert_eq!(kind(&["del-mirror", &br, "nope"]), "not_found");
    let tap = unique("exp");
    d.ok(&["add-port", &br, &tap, "type=internal", "tag=10", "transient=true"]);
    assert_eq!(kind(&["fdb-add", &br, &tap, "20", "02:00:00:00:00:09"]), "invalid_argument");
    d.ok(&["fdb-add", &br, &tap, "10", "02:00:00:00:00:09"]);
    assert_eq!(kind(&["add-mirror", &br, "m", "select_all=true", "output_port=nope"]), "invalid_argument");
    let out = Command::new(env!("CARGO_BIN_EXE_vswitch-ctl"))
        .args(["--socket", "/nonexistent/x.sock", "-f", "json", "list-br"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("unreachable"));
    // A failed transaction leaves nothing behind.
    assert_eq!(code(&["set-fail-mode", &br, "secure", "--", "add-port", &br, "nope-not-here"]), Some(1));
    assert_eq!(d.ok(&["get-fail-mode", &br]), "");
    assert!(d.ok(&["dump-flows", &br]).contains("actions=NORMAL"), "the default rule is back");
}
