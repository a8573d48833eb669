//! vswitchd when things go wrong: a datapath thread that does not answer or
//! panics, clients that try to stall the control server, shutdown with
//! requests in flight, and who may use the socket.
//!
//! The daemon's test hooks (`--enable-test-hooks`: `debug.stall_datapath`,
//! `debug.panic_datapath`) make a datapath thread misbehave on demand.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::Daemon;
use serde_json::{Value, json};
use vswitch_core::config::{Loaded, Store};
use vswitch_tests::netns::unique;

fn line(id: u64, method: &str, params: Value) -> String {
    json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }).to_string() + "\n"
}

struct Conn {
    s: UnixStream,
    r: BufReader<UnixStream>,
}

impl Conn {
    fn open(socket: &str) -> Conn {
        let s = UnixStream::connect(socket).expect("connect to vswitchd");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let r = BufReader::new(s.try_clone().unwrap());
        Conn { s, r }
    }

    fn send(&mut self, method: &str, params: Value) {
        self.s.write_all(line(1, method, params).as_bytes()).expect("send a request");
    }

    fn reply(&mut self) -> Value {
        let mut text = String::new();
        self.r.read_line(&mut text).expect("read a reply");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not a JSON reply ({e}): {text:?}"))
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        self.send(method, params);
        self.reply()
    }
}

/// Makes datapath thread `thread` sleep for `ms` between bursts.
fn stall(d: &Daemon, thread: usize, ms: u64) {
    let r = Conn::open(&d.socket).call("debug.stall_datapath", json!({ "thread": thread, "ms": ms }));
    assert!(r.get("error").is_none(), "{r}");
}

/// A second client that asks `list-br` every 20 ms on one connection and
/// remembers the slowest answer.
struct Watcher {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<(Duration, usize)>,
}

impl Watcher {
    fn start(socket: &str) -> Watcher {
        let mut c = Conn::open(socket);
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let (mut slowest, mut answers) = (Duration::ZERO, 0);
            while !s.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = c.call("bridge.list", Value::Null);
                assert_eq!(r["result"][0]["name"], "br0", "list-br answered: {r}");
                slowest = slowest.max(t.elapsed());
                answers += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            (slowest, answers)
        });
        Watcher { stop, handle }
    }

    /// Stops; asserts every answer came within a second.
    fn finish(self, during: &str) {
        self.stop.store(true, Ordering::Relaxed);
        let (slowest, answers) = self.handle.join().expect("the watcher kept getting answers");
        assert!(answers > 0, "{during}: list-br was never answered");
        assert!(slowest < Duration::from_secs(1), "{during}: list-br took {slowest:?}");
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read the daemon's status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

#[test]
fn a_stuck_datapath_thread_times_out_with_the_truth_while_others_are_served() {
    let d = Daemon::start_with(&["--enable-test-hooks", "--datapath-timeout-ms", "400", "--pmd-threads", "2"]);
    d.ok(&["add-br", "br0"]);

    // No thread takes anything for 2 s: the change is withdrawn, and said so.
    stall(&d, 0, 2000);
    stall(&d, 1, 2000);
    let started = Instant::now();
    let out = d.ctl(&["-f", "json", "add-flow", "br0", "priority=7,actions=drop"]);
    let waited = started.elapsed();
    assert_eq!(out.status.code(), Some(1));
    let e: Value = serde_json::from_slice(&out.stdout).expect("the error as JSON");
    assert_eq!(e["error"]["code"], "timeout", "{e}");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(message.contains("vswitch-pmd") && message.contains("nothing was changed"), "{message}");
    assert!(waited < Duration::from_millis(1900), "the call gave up at its deadline, not when the thread woke");
    // Meanwhile, requests that need no datapath thread are answered at once.
    let t = Instant::now();
    assert_eq!(d.ok(&["list-br"]), "br0\n");
    assert!(t.elapsed() < Duration::from_secs(1));
    std::thread::sleep(Duration::from_millis(2100).saturating_sub(started.elapsed()));
    let flows = d.ok(&["dump-flows", "br0"]);
    assert!(!flows.contains("priority=7"), "the withdrawn change was not applied later: {flows}");

    // Thread 0 late, thread 1 answering: the change is recorded, applied
    // where the datapath answered, and applied by thread 0 when it wakes.
    // Listings and the saved configuration need no datapath thread.
    stall(&d, 0, 1500);
    let out = d.ctl(&["add-flow", "br0", "priority=8,actions=drop"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("vswitch-pmd0") && err.contains("will be applied"), "{err}");
    assert!(d.ok(&["dump-flows", "br0"]).contains("priority=8"), "recorded");
    let Ok(Loaded::Config(saved)) = Store::new(&d.db).unwrap().load() else { panic!("the configuration loads") };
    assert!(saved.bridges[0].flows.iter().any(|f| f.contains("priority=8")), "and saved: {saved:?}");
    std::thread::sleep(Duration::from_millis(1600));
    // Thread 1 has caught up: changes go through everywhere again.
    d.ok(&["add-flow", "br0", "priority=9,actions=drop"]);
    let status = d.json(&["show"]);
    assert_eq!(status[0]["name"], "br0");
}

#[test]
fn a_panicking_datapath_thread_is_reported_and_the_daemon_exits_for_its_supervisor() {
    let mut d = Daemon::start_with(&["--enable-test-hooks"]);
    d.ok(&["add-br", "br0"]);
    let r = Conn::open(&d.socket).call("debug.panic_datapath", json!({ "thread": 0 }));
    assert!(r.get("error").is_none(), "{r}");
    let status = d.wait_exit(Duration::from_secs(10)).expect("vswitchd stops after its datapath thread failed");
    assert_eq!(status.code(), Some(70), "EX_SOFTWARE, for the supervisor: {status}");
    let log = d.log();
    assert!(
        log.contains("datapath thread vswitch-pmd0 failed (panicked: test hook: debug.panic_datapath)"),
        "the log names the thread and the panic: {log}"
    );
    assert!(log.contains("stopped"), "and it shut down cleanly: {log}");
}

#[test]
fn an_embedder_serving_a_failed_switch_reports_it_in_show_and_errors() {
    use vswitch_core::Switch;
    use vswitch_core::control::{Control, ControlServer};
    let dir = std::env::temp_dir().join(unique("vsemb"));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("s.sock");
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let f = failures.clone();
    let sw = Switch::builder()
        .on_datapath_failure(move |thread, why| f.lock().unwrap().push(format!("{thread}: {why}")))
        .build()
        .unwrap();
    let server = ControlServer::serve(Control::new(Arc::new(sw)).with_test_hooks(), &socket).unwrap();
    let socket = socket.display().to_string();
    let ctl = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_vswitch-ctl")).args(["--socket", &socket]).args(args).output().unwrap()
    };
    assert!(ctl(&["add-br", "br0"]).status.success());
    Conn::open(&socket).call("debug.panic_datapath", json!({ "thread": 0 }));
    let deadline = Instant::now() + Duration::from_secs(5);
    while failures.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the failure hook was called");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(failures.lock().unwrap()[0], "vswitch-pmd0: panicked: test hook: debug.panic_datapath");
    let show = String::from_utf8_lossy(&ctl(&["show"]).stdout).into_owned();
    assert!(show.starts_with("Datapath thread vswitch-pmd0 FAILED: panicked: test hook"), "{show}");
    let out = ctl(&["add-br", "br1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("datapath thread vswitch-pmd0 has failed (panicked: test hook"), "{err}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn hostile_clients_do_not_stall_the_others() {
    let d = Daemon::start();
    d.ok(&["add-br", "br0"]);
    let before = rss_kib(d.pid());

    let w = Watcher::start(&d.socket);
    // 1 MiB of newlines, pipelined, then a request: it is answered.
    let mut c = Conn::open(&d.socket);
    c.s.write_all(&vec![b'\n'; 1 << 20]).unwrap();
    assert_eq!(c.call("bridge.exists", json!({ "name": "br0" }))["result"], true);
    w.finish("1 MiB of newlines");

    // A 10 MiB line: refused as soon as it passes the limit, then closed.
    let w = Watcher::start(&d.socket);
    let mut big = Conn::open(&d.socket);
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..10 {
        if big.s.write_all(&chunk).is_err() {
            break;
        }
    }
    let e = big.reply();
    assert_eq!(e["error"]["data"]["kind"], "invalid_request", "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("longer than"), "{e}");
    let mut rest = Vec::new();
    let _ = big.r.read_to_end(&mut rest);
    w.finish("a 10 MiB line");

    // 100K requests from a client that never reads its replies: the
    // server stops reading from it once its replies pile up.
    let w = Watcher::start(&d.socket);
    let greedy = Conn::open(&d.socket);
    greedy.s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let req = line(1, "bridge.list", Value::Null);
    let mut sent = 0;
    let mut batch = Vec::new();
    for _ in 0..1000 {
        batch.extend_from_slice(req.as_bytes());
    }
    for _ in 0..100 {
        if (&greedy.s).write_all(&batch).is_err() {
            break;
        }
        sent += 1000;
    }
    assert!(sent < 100_000, "the server pushed back: a client that does not read cannot make it read everything");
    std::thread::sleep(Duration::from_millis(500));
    let grown = rss_kib(d.pid()).saturating_sub(before);
    assert!(grown < 64 * 1024, "the daemon grew by {grown} KiB for a client that does not read");
    w.finish("100K requests never read");
    drop(greedy);
    assert_eq!(d.ok(&["list-br"]), "br0\n");
}

#[test]
fn idle_connections_past_the_descriptor_limit_do_not_lock_clients_out() {
    let d = Daemon::start_limited(256, &[]);
    d.ok(&["add-br", "br0"]);
    let w = Watcher::start(&d.socket);
    // 2,000 connections that send nothing, against 256 descriptors.
    let mut idle = Vec::new();
    let mut refused = 0;
    for _ in 0..2000 {
        match UnixStream::connect(&d.socket) {
            Ok(s) => idle.push(s),
            Err(_) => refused += 1,
        }
    }
    // Those over the limit were told so (or closed for newer ones).
    std::thread::sleep(Duration::from_millis(300));
    let (mut told, mut open) = (0, 0);
    for s in &idle {
        s.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 512];
        match (&*s).read(&mut buf) {
            Ok(0) => {}
            Ok(n) => {
                assert!(String::from_utf8_lossy(&buf[..n]).contains("too many connections"));
                told += 1;
            }
            Err(_) => open += 1,
        }
    }
    assert!(open < 256, "{open} connections held open with 256 descriptors");
    assert!(
        told + refused > 1000,
        "most of the 2,000 were told they could not be served ({told} told, {refused} refused)"
    );
    w.finish("2,000 idle connections");
    // Once idle connections have aged, a newcomer is let in in place of
    // the idlest, and when they go, accepting simply goes on.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(d.ok(&["list-br"]), "br0\n");
    drop(idle);
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..20 {
        assert_eq!(d.ok(&["list-br"]), "br0\n");
    }
}

#[test]
fn a_request_arriving_during_shutdown_is_answered() {
    let mut d = Daemon::start_with(&["--enable-test-hooks"]);
    d.ok(&["add-br", "br0"]);
    let mut late = Conn::open(&d.socket);
    // An add-flow in flight (its datapath thread asleep for 1.5 s) when
    // SIGTERM comes, and a request that arrives after it.
    stall(&d, 0, 1500);
    let mut in_flight = Conn::open(&d.socket);
    in_flight.send("flow.add", json!({ "bridge": "br0", "flows": ["priority=5,actions=drop"] }));
    std::thread::sleep(Duration::from_millis(200));
    let _ = Command::new("kill").args(["-TERM", &d.pid().to_string()]).status();
    std::thread::sleep(Duration::from_millis(200));
    let r = late.call("bridge.list", Value::Null);
    assert_eq!(r["error"]["data"]["kind"], "unavailable", "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("shutting down"), "{r}");
    let r = in_flight.reply();
    assert_eq!(r["result"]["added"], 1, "the request in flight was finished and its reply flushed: {r}");
    let status = d.wait_exit(Duration::from_secs(10)).expect("vswitchd stops");
    assert!(status.success(), "{status}");
    assert!(d.log().contains("stopping on SIGTERM"), "{}", d.log());
}

#[test]
fn only_root_the_owner_and_the_configured_group_may_use_the_socket() {
    vswitch_tests::netns::require_root();
    // Without --group: 0600.
    let d = Daemon::start();
    assert_eq!(std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777, 0o600);
    drop(d);

    // With --group 65534 (nogroup): 0660 and that group; its members get
    // in, others are refused with a clear message.
    let d = Daemon::start_with(&["--group", "65534"]);
    let meta = std::fs::metadata(&d.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), 65534);
    let dir = std::path::Path::new(&d.socket).parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    d.ok(&["add-br", "br0"]);
    let as_user = |uid: u32, gid: u32| {
        Command::new(env!("CARGO_BIN_EXE_vswitch-ctl"))
            .args(["--socket", &d.socket, "list-br"])
            .uid(uid)
            .gid(gid)
            .output()
            .unwrap()
    };
    let member = as_user(65534, 65534);
    assert!(member.status.success(), "a member: {}", String::from_utf8_lossy(&member.stderr));
    assert_eq!(String::from_utf8_lossy(&member.stdout), "br0\n");
    let stranger = as_user(65533, 65533);
    assert_eq!(stranger.status.code(), Some(1));
    let err = String::from_utf8_lossy(&stranger.stderr);
    assert!(err.contains("permission denied") && !err.contains("os error"), "{err}");
}
