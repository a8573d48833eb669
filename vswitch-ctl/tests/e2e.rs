//! vswitchd and vswitch-ctl end to end, as root: a bridge of veth ports
//! from namespaces built with the CLI only, a flow that blocks ICMP and is
//! removed again, listings in text and JSON, exit codes, shutdown.

use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use vswitch_tests::netns::{NetNs, Veth, is_promiscuous, unique};

/// A running vswitchd on its own socket, stopped with SIGTERM on drop.
struct Daemon {
    child: Child,
    socket: String,
}

impl Daemon {
    fn start() -> Daemon {
        let socket = std::env::temp_dir().join(unique("vsd")).join("vswitchd.sock").display().to_string();
        let child =
            Command::new(env!("CARGO_BIN_EXE_vswitchd")).args(["--socket", &socket]).spawn().expect("start vswitchd");
        let d = Daemon { child, socket };
        let deadline = Instant::now() + Duration::from_secs(10);
        while d.ctl(&["list-br"]).status.code() != Some(0) {
            assert!(Instant::now() < deadline, "vswitchd did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    fn ctl(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_vswitch-ctl"))
            .args(["--socket", &self.socket])
            .args(args)
            .output()
            .expect("run vswitch-ctl")
    }

    /// Runs vswitch-ctl and expects success; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(out.status.success(), "vswitch-ctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["-f", "json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).unwrap_or_else(|e| panic!("{args:?}: not JSON: {e}"))
    }

    fn stop(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        self.child.wait().expect("vswitchd exits")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.stop();
        }
        if let Some(dir) = std::path::Path::new(&self.socket).parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

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
    assert!(String::from_utf8_lossy(&second.stderr).contains("another switch daemon is running"));

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
