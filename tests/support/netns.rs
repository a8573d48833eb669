//! Network namespaces and veth pairs for tests, removed on drop (also
//! when the test panics). Names are unique per process and call, so tests
//! run in parallel. Everything here needs root: without it, or without
//! iproute2, the helpers panic with the reason instead of skipping.

use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A short unique name (interface names are at most 15 bytes).
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}x{}", std::process::id() % 100_000, NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Panics unless this process can create namespaces and links.
pub fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2)).unwrap_or("?");
    assert_eq!(euid, "0", "these tests need root (network namespaces, veth, AF_PACKET); run them as root, as CI does");
    for tool in ["ip", "ping"] {
        assert!(
            Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success()),
            "these tests need '{tool}' (Debian: iproute2, iputils-ping); .ci/run installs them"
        );
    }
}

/// Runs a command and panics with its output if it fails.
pub fn run(args: &[&str]) -> Output {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{}: {e}", args[0]));
    assert!(out.status.success(), "{} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    out
}

/// True if interface `ifname` (in this namespace) is promiscuous.
pub fn is_promiscuous(ifname: &str) -> bool {
    let flags = std::fs::read_to_string(format!("/sys/class/net/{ifname}/flags")).expect("interface flags");
    u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).expect("hex flags") & 0x100 != 0
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    /// Its name (`ip netns`).
    pub name: String,
}

impl NetNs {
    /// A new namespace with its loopback up.
    // Creating a namespace is a side effect, not a default value.
    #[allow(clippy::new_without_default)]
    pub fn new() -> NetNs {
        require_root();
        let name = unique("vsn");
        run(&["ip", "netns", "add", &name]);
        let ns = NetNs { name };
        run(&["ip", "-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside the namespace; returns its output.
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec: {e}"))
    }

    /// Runs a command inside the namespace; panics with its stderr if it
    /// fails.
    pub fn run(&self, args: &[&str]) {
        let out = self.exec(args);
        assert!(out.status.success(), "{args:?} in {}: {}", self.name, String::from_utf8_lossy(&out.stderr));
    }

    /// Starts a command inside the namespace.
    pub fn spawn(&self, args: &[&str]) -> Child {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("ip netns exec: {e}"))
    }

    /// True if `count` pings to `dst` are all answered.
    pub fn ping(&self, dst: &str, count: u32) -> bool {
        self.exec(&["ping", "-c", &count.to_string(), "-i", "0.2", "-W", "2", dst]).status.success()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A veth pair: one end (`host`) in the root namespace for the switch, the
/// other inside a namespace with an address. Deleted on drop.
#[derive(Debug)]
pub struct Veth {
    /// The root-namespace end.
    pub host: String,
    /// The end inside the namespace.
    pub inner: String,
}

impl Veth {
    /// A pair into `ns`, the inner end addressed `cidr` (e.g. 10.99.0.1/24).
    pub fn new(ns: &NetNs, cidr: &str) -> Veth {
        Self::named(&unique("vh"), ns, cidr)
    }

    /// The same with a chosen root-side name (to recreate a deleted one).
    pub fn named(host: &str, ns: &NetNs, cidr: &str) -> Veth {
        require_root();
        let inner = unique("vi");
        run(&["ip", "link", "add", host, "type", "veth", "peer", "name", &inner]);
        let v = Veth { host: host.to_string(), inner };
        run(&["ip", "link", "set", &v.inner, "netns", &ns.name]);
        run(&["ip", "-n", &ns.name, "addr", "add", cidr, "dev", &v.inner]);
        run(&["ip", "-n", &ns.name, "link", "set", &v.inner, "up"]);
        run(&["ip", "link", "set", &v.host, "up"]);
        v
    }
}

/// A veth pair between two namespaces, `a_name` in `a` and `b_name` in
/// `b`, both up; it goes when either namespace does.
pub fn veth_between(a: &NetNs, a_name: &str, b: &NetNs, b_name: &str) {
    require_root();
    run(&["ip", "link", "add", a_name, "netns", &a.name, "type", "veth", "peer", "name", b_name, "netns", &b.name]);
    a.run(&["ip", "link", "set", a_name, "up"]);
    b.run(&["ip", "link", "set", b_name, "up"]);
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.host]).stderr(Stdio::null()).status();
    }
}

/// What an iperf3 TCP run measured at the receiver.
#[derive(Debug, Clone, Default)]
pub struct Iperf3 {
    /// Bytes received.
    pub bytes: u64,
    /// Receive rate in bits per second.
    pub bits_per_second: f64,
    /// iperf3's own output, for failure messages.
    pub output: String,
}

/// Runs iperf3 TCP for `seconds` from `client` to a one-shot server in
/// `server` listening on `server_ip` (retrying while the server starts,
/// each client run bounded by `timeout`).
pub fn iperf3(client: &NetNs, server: &NetNs, server_ip: &str, seconds: u32) -> Iperf3 {
    iperf3_streams(client, server, server_ip, seconds, 1)
}

/// iperf3 TCP both ways between `a` (at `a_ip`) and `b` (at `b_ip`), one
/// after the other: (from `a` to `b`, from `b` to `a`). Panics unless at
/// least `min_bytes` crossed each way.
pub fn iperf3_both_ways(
    a: &NetNs,
    a_ip: &str,
    b: &NetNs,
    b_ip: &str,
    seconds: u32,
    min_bytes: u64,
) -> (Iperf3, Iperf3) {
    let there = iperf3(a, b, b_ip, seconds);
    let back = iperf3(b, a, a_ip, seconds);
    assert!(there.bytes > min_bytes, "iperf3 to {b_ip}: {}", there.output);
    assert!(back.bytes > min_bytes, "iperf3 to {a_ip}: {}", back.output);
    (there, back)
}

/// [`iperf3`] with `streams` parallel TCP connections (`-P`); the rate
/// is their sum.
pub fn iperf3_streams(client: &NetNs, server: &NetNs, server_ip: &str, seconds: u32, streams: u32) -> Iperf3 {
    let start_server = || server.spawn(&["iperf3", "-s", "-1", "-B", server_ip]);
    let mut srv = start_server();
    let mut server_log = String::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let limit = (seconds + 17).to_string();
    let out = loop {
        let out = client.exec(&[
            "timeout",
            &limit,
            "iperf3",
            "-c",
            server_ip,
            "-t",
            &seconds.to_string(),
            "-P",
            &streams.max(1).to_string(),
            "-J",
        ]);
        // iperf3 3.12 exits 0 even when it could not connect (the error is
        // only in its JSON), so success is judged from the report itself.
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let ok = out.status.success() && report.get("end").is_some() && report.get("error").is_none();
        if ok || std::time::Instant::now() > deadline {
            break out;
        }
        // A one-shot server that has exited (or never came up) is started
        // again; what it said is kept for the failure message.
        if srv.try_wait().ok().flatten().is_some() {
            let done = std::mem::replace(&mut srv, start_server());
            if let Ok(o) = done.wait_with_output() {
                server_log.push_str(&String::from_utf8_lossy(&o.stdout));
                server_log.push_str(&String::from_utf8_lossy(&o.stderr));
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let _ = srv.kill();
    if let Ok(o) = srv.wait_with_output() {
        server_log.push_str(&String::from_utf8_lossy(&o.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let received = &v["end"]["sum_received"];
    Iperf3 {
        bytes: received["bytes"].as_u64().unwrap_or(0),
        bits_per_second: received["bits_per_second"].as_f64().unwrap_or(0.0),
        output: format!(
            "client: {}{} server: {server_log}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Waits (up to 10 s) until a tcpdump started with [`NetNs::spawn`] says
/// it is listening, so that what a test sends next is seen (a fixed
/// sleep is not enough on a loaded machine). Its stderr is read here.
pub fn wait_listening(tcpdump: &mut Child) {
    let err = tcpdump.stderr.take().expect("tcpdump's stderr is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            if line.contains("listening on") {
                let _ = tx.send(());
            }
        }
    });
    let _ = rx.recv_timeout(std::time::Duration::from_secs(10));
}
