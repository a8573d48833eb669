//! Cluster networking end to end: a real etcd server (and a 3-member
//! cluster), "hosts" as network namespaces joined by an underlay (veth
//! pairs into a Linux bridge in a namespace of its own, where etcd runs),
//! each host with its own vswitchd and vswitch-agent, containers attached
//! through vswitch-cni with `"cluster": true`.
//!
//! Every namespace, and with it every link, goes when its guard drops
//! (also when a test fails); the processes are killed first. The tests
//! run one at a time (a lock): each builds several switches on a 2-core
//! machine.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use vswitch_tests::netns::{NetNs, require_root, unique};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// A binary of this workspace: the agent is this package's; vswitchd,
/// vswitch-ctl and vswitch-cni are built beside it by `cargo test
/// --workspace` (the README's test command).
fn bin(name: &str) -> PathBuf {
    let agent = PathBuf::from(env!("CARGO_BIN_EXE_vswitch-agent"));
    let p = if name == "vswitch-agent" { agent } else { agent.parent().unwrap().join(name) };
    assert!(p.exists(), "{} is missing: build the workspace first (cargo build --workspace)", p.display());
    p
}

fn need(tool: &str, package: &str) {
    let ok = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success());
    assert!(ok, "these tests need '{tool}' (Debian: {package}); .ci/run installs it");
}

fn kill(child: &mut Child, signal: &str) {
    let _ = Command::new("kill").args([signal, &child.id().to_string()]).status();
}

fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if f() {
            return start.elapsed();
        }
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
        assert!(start.elapsed() < within, "{what}: not within {within:?} (unix time {now})");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The underlay: a namespace holding a Linux bridge (10.99.0.254/24, and
/// .251-.253 for etcd members) that every host's links join, and etcd.
struct Underlay {
    ns: NetNs,
    dir: PathBuf,
    members: Vec<Member>,
    next_port: u32,
}

struct Member {
    name: String,
    ip: String,
    child: Option<Child>,
}

const SUBNETS: &str = "/coreos.com/network/subnets/";

impl Underlay {
    fn new() -> Underlay {
        require_root();
        need("etcd", "etcd-server");
        need("etcdctl", "etcd-client");
        let ns = NetNs::new();
        ns.run(&["ip", "link", "add", "br0", "type", "bridge"]);
        for a in ["10.99.0.254/24", "10.99.0.251/24", "10.99.0.252/24", "10.99.0.253/24"] {
            ns.run(&["ip", "addr", "add", a, "dev", "br0"]);
        }
        ns.run(&["ip", "link", "set", "br0", "up"]);
        let dir = std::env::temp_dir().join(unique("vsc"));
        std::fs::create_dir_all(&dir).unwrap();
        Underlay { ns, dir, members: Vec::new(), next_port: 0 }
    }

    /// etcd with `n` members (1 or 3), the cluster configuration written.
    fn with_etcd(n: usize, config: &str) -> Underlay {
        let mut u = Underlay::new();
        let members: Vec<(String, String)> =
            (0..n).map(|i| (format!("m{i}"), format!("10.99.0.{}", 251 + i))).collect();
        let cluster: Vec<String> = members.iter().map(|(m, ip)| format!("{m}=http://{ip}:2380")).collect();
        for (name, ip) in members {
            u.members.push(Member { name, ip, child: None });
        }
        let cluster = cluster.join(",");
        for i in 0..n {
            u.start_member(i, &cluster, "new");
        }
        wait_until("etcd answers", Duration::from_secs(30), || u.etcdctl(&["put", "/probe", "1"]).status.success());
        let out = u.etcdctl(&["put", "/coreos.com/network/config", config]);
        assert!(out.status.success(), "write the configuration: {}", text(&out));
        u
    }

    fn start_member(&mut self, i: usize, cluster: &str, state: &str) {
        let m = &self.members[i];
        let data = self.dir.join(format!("etcd-{}", m.name));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("etcd-{}.log", m.name)))
            .unwrap();
        let (peer, client) = (format!("http://{}:2380", m.ip), format!("http://{}:2379", m.ip));
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns.name, "etcd", "--name", &m.name, "--data-dir"])
            .arg(&data)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", cluster, "--initial-cluster-state", state])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.members[i].child = Some(child);
    }

    /// The members' client URLs, comma-separated.
    fn endpoints(&self) -> String {
        self.members.iter().map(|m| format!("http://{}:2379", m.ip)).collect::<Vec<_>>().join(",")
    }

    /// The initial-cluster string (to restart a member).
    fn cluster(&self) -> String {
        self.members.iter().map(|m| format!("{}=http://{}:2380", m.name, m.ip)).collect::<Vec<_>>().join(",")
    }

    fn etcdctl(&self, args: &[&str]) -> Output {
        let live: Vec<String> =
            self.members.iter().filter(|m| m.child.is_some()).map(|m| format!("http://{}:2379", m.ip)).collect();
        let mut all = vec!["etcdctl", "--dial-timeout", "2s", "--command-timeout", "5s", "--endpoints"];
        let eps = live.join(",");
        all.push(&eps);
        all.extend_from_slice(args);
        self.ns.exec(&all)
    }

    /// The subnets leased in etcd, with the PublicIP each holds.
    fn leases(&self) -> Vec<(String, String)> {
        let out = self.etcdctl(&["get", "--prefix", SUBNETS]);
        assert!(out.status.success(), "etcdctl get: {}", text(&out));
        let s = String::from_utf8_lossy(&out.stdout).to_string();
        let lines: Vec<&str> = s.lines().collect();
        lines
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| {
                let v: Value = serde_json::from_str(c[1]).unwrap_or_default();
                (c[0].trim_start_matches(SUBNETS).to_string(), v["PublicIP"].as_str().unwrap_or("?").to_string())
            })
            .collect()
    }

    fn stop_member(&mut self, i: usize, signal: &str) {
        if let Some(mut c) = self.members[i].child.take() {
            kill(&mut c, signal);
            let _ = c.wait();
        }
    }

    /// A host's links: a kernel one (10.99.0.(10+i)/24, its underlay
    /// address, etcd's and VXLAN's) and the switch's uplink, both into the
    /// bridge.
    fn plug(&mut self, host: &NetNs, i: u32) {
        self.next_port += 1;
        for (inner, outer) in [("k0", format!("pk{i}")), ("u0", format!("pu{i}"))] {
            vswitch_tests::netns::run(&[
                "ip",
                "link",
                "add",
                inner,
                "netns",
                &host.name,
                "type",
                "veth",
                "peer",
                "name",
                &outer,
                "netns",
                &self.ns.name,
            ]);
            self.ns.run(&["ip", "link", "set", &outer, "master", "br0", "up"]);
            host.run(&["ip", "link", "set", inner, "up"]);
        }
        host.run(&["ip", "addr", "add", &format!("10.99.0.{}/24", 10 + i), "dev", "k0"]);
    }
}

impl Drop for Underlay {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.stop_member(i, "-KILL");
        }
        if std::thread::panicking() {
            for m in &self.members {
                let log = std::fs::read_to_string(self.dir.join(format!("etcd-{}.log", m.name))).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                eprintln!(
                    "etcd {} log (last lines):\n{}",
                    m.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Backend {
    Vxlan,
    HostGw,
}

const VXLAN: &str = r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 7}}"#;
const HOST_GW: &str = r#"{"Network": "10.244.0.0/16", "SubnetLen": 24, "Backend": {"Type": "host-gw"}}"#;

/// A host: its namespace, vswitchd and agent.
struct Host {
    i: u32,
    dir: PathBuf,
    socket: String,
    backend: Backend,
    endpoints: String,
    ttl: u32,
    uplink: bool,
    daemon: Option<Child>,
    agent: Option<Child>,
    containers: Vec<Container>,
    ns: NetNs,
}

struct Container {
    ns: NetNs,
    ip: String,
}

impl Host {
    fn new(u: &mut Underlay, i: u32, backend: Backend, ttl: u32) -> Host {
        Self::with_uplink(u, i, backend, ttl, true)
    }

    /// `uplink`: the switch masquerades behind its own underlay address
    /// (host-gw needs it; VXLAN does without).
    fn with_uplink(u: &mut Underlay, i: u32, backend: Backend, ttl: u32, uplink: bool) -> Host {
        let ns = NetNs::new();
        u.plug(&ns, i);
        let dir = u.dir.join(format!("host{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("vswitchd.sock").display().to_string();
        let mut h = Host {
            i,
            dir,
            socket,
            backend,
            endpoints: u.endpoints(),
            ttl,
            uplink,
            daemon: None,
            agent: None,
            containers: Vec::new(),
            ns,
        };
        h.start_daemon();
        h.start_agent();
        h
    }

    fn start_daemon(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("vswitchd.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns.name])
            .arg(bin("vswitchd"))
            .args(["--socket", &self.socket, "--db"])
            .arg(self.dir.join("conf.json"))
            .stderr(log)
            .spawn()
            .expect("start vswitchd");
        self.daemon = Some(child);
        wait_until("vswitchd comes up", Duration::from_secs(10), || self.ctl(&["list-br"]).status.success());
    }

    fn agent_args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "--etcd-endpoints".into(),
            self.endpoints.clone(),
            "--socket".into(),
            self.socket.clone(),
            "--state-dir".into(),
            self.dir.join("agent").display().to_string(),
            "--lease-ttl".into(),
            self.ttl.to_string(),
            "--report-interval".into(),
            "1".into(),
        ];
        if self.uplink {
            // Outside traffic masqueraded behind the switch's own address
            // on the underlay (host-gw's endpoint).
            a.extend([
                "--uplink".into(),
                "u0".into(),
                "--uplink-address".into(),
                format!("10.99.0.{}/24", 100 + self.i),
            ]);
        }
        if self.backend == Backend::Vxlan {
            a.extend(["--public-ip".into(), format!("10.99.0.{}", 10 + self.i)]);
        }
        a
    }

    fn start_agent(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("agent.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns.name])
            .arg(bin("vswitch-agent"))
            .args(self.agent_args())
            .stderr(log)
            .spawn()
            .expect("start vswitch-agent");
        self.agent = Some(child);
    }

    fn stop_agent(&mut self, signal: &str) {
        if let Some(mut c) = self.agent.take() {
            kill(&mut c, signal);
            let _ = c.wait();
        }
    }

    fn stop_daemon(&mut self, signal: &str) {
        if let Some(mut c) = self.daemon.take() {
            kill(&mut c, signal);
            let _ = c.wait();
        }
    }

    fn ctl(&self, args: &[&str]) -> Output {
        Command::new(bin("vswitch-ctl")).args(["--socket", &self.socket]).args(args).output().expect("vswitch-ctl")
    }

    /// `cluster-show -f json`'s only network (null while there is none).
    fn cluster(&self) -> Value {
        let out = self.ctl(&["-f", "json", "cluster-show"]);
        assert!(out.status.success(), "cluster-show: {}", text(&out));
        let v: Value = serde_json::from_slice(&out.stdout).expect("cluster-show JSON");
        v.as_array().and_then(|a| a.first()).cloned().unwrap_or(Value::Null)
    }

    /// This host's subnet once the agent has given vswitchd the network.
    fn subnet(&self) -> String {
        let mut s = String::new();
        wait_until(&format!("host {} has its subnet", self.i), Duration::from_secs(30), || {
            s = self.cluster()["subnets"][0].as_str().unwrap_or_default().to_string();
            !s.is_empty() && self.cluster()["agent"]["lease"].is_object()
        });
        s
    }

    /// The subnets this host routes to other hosts.
    fn routes(&self) -> BTreeSet<String> {
        self.cluster()["routes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["subnet"].as_str().map(str::to_string))
            .collect()
    }

    fn wait_routes(&self, want: &BTreeSet<String>, within: Duration) -> Duration {
        wait_until(&format!("host {} routes to {want:?}", self.i), within, || &self.routes() == want)
    }

    /// A container attached through vswitch-cni (`"cluster": true`),
    /// publishing `publish` (host port, container port) if given.
    fn attach(&mut self, publish: Option<(u16, u16)>) -> usize {
        self.attach_labeled(publish, json!({}))
    }

    /// The same with labels (CNI `args.cni.labels`).
    fn attach_labeled(&mut self, publish: Option<(u16, u16)>, labels: Value) -> usize {
        let ns = NetNs::new();
        let mut conf = json!({
            "cniVersion": "1.0.0",
            "name": "cluster",
            "type": "vswitch",
            "cluster": true,
            "socket": self.socket,
        });
        conf["args"] = json!({ "cni": { "labels": labels } });
        if let Some((h, c)) = publish {
            conf["capabilities"] = json!({ "portMappings": true });
            conf["runtimeConfig"] =
                json!({ "portMappings": [{ "hostPort": h, "containerPort": c, "protocol": "tcp" }] });
        }
        let mut child = Command::new(bin("vswitch-cni"))
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", &ns.name)
            .env("CNI_NETNS", format!("/var/run/netns/{}", ns.name))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run vswitch-cni");
        child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "CNI ADD on host {}: {}", self.i, text(&out));
        let r: Value = serde_json::from_slice(&out.stdout).expect("CNI result");
        let ip = r["ips"][0]["address"].as_str().expect("an address").split('/').next().unwrap().to_string();
        self.containers.push(Container { ns, ip });
        self.containers.len() - 1
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.stop_agent("-KILL");
        self.stop_daemon("-KILL");
        if std::thread::panicking() {
            for f in ["agent.log", "vswitchd.log"] {
                let log = std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(25).collect();
                eprintln!(
                    "host {} {f} (last lines):\n{}",
                    self.i,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
    }
}

/// Every container of `hosts` pings every other.
fn all_pairs_ping(hosts: &[&Host]) {
    let all: Vec<(u32, &Container)> = hosts.iter().flat_map(|h| h.containers.iter().map(move |c| (h.i, c))).collect();
    let mut failed = Vec::new();
    for (hi, a) in &all {
        for (hj, b) in &all {
            if a.ip != b.ip && !a.ns.ping(&b.ip, 2) {
                failed.push(format!("{} (host {hi}) -> {} (host {hj})", a.ip, b.ip));
            }
        }
    }
    assert!(failed.is_empty(), "unanswered pings: {failed:?}");
}

/// A ping running in the background: how many of its echoes came back.
struct Pinger {
    child: Child,
}

impl Pinger {
    fn start(from: &Container, to: &str, count: u32) -> Pinger {
        Pinger { child: from.ns.spawn(&["ping", "-c", &count.to_string(), "-i", "0.05", "-W", "1", to]) }
    }

    /// (sent, received) when it is done.
    fn finish(self) -> (u32, u32, String) {
        let out = self.child.wait_with_output().unwrap();
        let s = String::from_utf8_lossy(&out.stdout).to_string();
        let num = |word: &str| -> u32 {
            s.lines()
                .find(|l| l.contains("packets transmitted"))
                .and_then(|l| l.split(',').find(|p| p.contains(word)))
                .and_then(|p| p.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        (num("transmitted"), num("received"), s)
    }
}

/// A one-shot TCP server in `c` on `port` that says `hello`.
fn tcp_server(c: &Container, port: u16) -> Child {
    let code = format!(
        "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('0.0.0.0', {port}))\ns.listen(1)\nc,_=s.accept()\nc.sendall(b'hello')\nc.close()\n"
    );
    c.ns.spawn(&["python3", "-c", &code])
}

fn tcp_read(ns: &NetNs, ip: &str, port: u16) -> String {
    let code = format!(
        "import socket,sys\ns=socket.create_connection(('{ip}', {port}), timeout=3)\nsys.stdout.write(s.recv(100).decode())\n"
    );
    String::from_utf8_lossy(&ns.exec(&["python3", "-c", &code]).stdout).to_string()
}

fn three_hosts(backend: Backend) {
    let _one = serial();
    let mut u = Underlay::with_etcd(1, if backend == Backend::Vxlan { VXLAN } else { HOST_GW });
    let mut hosts: Vec<Host> = (1..=3).map(|i| Host::new(&mut u, i, backend, 10)).collect();
    let subnets: Vec<String> = hosts.iter().map(Host::subnet).collect();
    let distinct: BTreeSet<&String> = subnets.iter().collect();
    assert_eq!(distinct.len(), 3, "every host its own subnet: {subnets:?}");
    for (h, own) in hosts.iter().zip(&subnets) {
        let others: BTreeSet<String> = subnets.iter().filter(|s| *s != own).cloned().collect();
        h.wait_routes(&others, Duration::from_secs(20));
    }
    // Host 2's first container publishes port 8080; host 3's first is a
    // "client" (for a policy below).
    for h in &mut hosts {
        let labels = if h.i == 3 { json!({ "app": "client" }) } else { json!({}) };
        h.attach_labeled(if h.i == 2 { Some((8080, 80)) } else { None }, labels);
        h.attach(None);
    }
    // Containers get addresses of their host's subnet.
    for (h, s) in hosts.iter().zip(&subnets) {
        let net: ipnet::Ipv4Net = s.parse().unwrap();
        for c in &h.containers {
            assert!(net.contains(&c.ip.parse::<std::net::Ipv4Addr>().unwrap()), "{} in {s}", c.ip);
        }
    }
    let refs: Vec<&Host> = hosts.iter().collect();
    all_pairs_ping(&refs);

    // TCP across hosts.
    let (c1, c3) = (&hosts[0].containers[0], &hosts[2].containers[1]);
    let r = vswitch_tests::netns::iperf3(&c1.ns, &c3.ns, &c3.ip, 2);
    assert!(r.bytes > 1_000_000, "iperf3 from host 1 to host 3 moved {} bytes: {}", r.bytes, r.output);

    // Masquerade per host: the underlay (which has no route to the
    // cluster's block) answers a container.
    for h in &hosts {
        assert!(h.containers[0].ns.ping("10.99.0.254", 2), "host {}'s container reaches the underlay", h.i);
    }
    // A published port, on host 2's own underlay address.
    let srv = tcp_server(&hosts[1].containers[0], 80);
    let mut got = String::new();
    wait_until("the published port answers", Duration::from_secs(10), || {
        got = tcp_read(&u.ns, "10.99.0.102", 8080);
        got == "hello"
    });
    drop(srv);

    // Policy with peers on other hosts: host 1's containers take only
    // what comes from host 2's first container.
    let allowed = hosts[1].containers[0].ip.clone();
    let policy = json!({
        "name": "from-one-peer",
        "network": "cluster",
        "podSelector": {},
        "ingress": [{ "from": [{ "ipBlock": { "cidr": format!("{allowed}/32") } }] }],
    });
    let file = u.dir.join("policy.json");
    std::fs::write(&file, policy.to_string()).unwrap();
    let out = hosts[0].ctl(&["policy-add", file.to_str().unwrap()]);
    assert!(out.status.success(), "policy-add: {}", text(&out));
    let target = hosts[0].containers[0].ip.clone();
    assert!(hosts[1].containers[0].ns.ping(&target, 2), "the allowed peer on host 2 still reaches host 1");
    assert!(!hosts[1].containers[1].ns.ping(&target, 1), "another container of host 2 no longer does");
    assert!(!hosts[2].containers[0].ns.ping(&target, 1), "nor one of host 3");
    assert!(hosts[0].containers[0].ns.ping(&hosts[2].containers[0].ip, 2), "host 1's egress is not restricted");
    // The same policy by labels: a podSelector picks host 3's "client"
    // (its host publishes its containers' labels through etcd).
    let policy = json!({
        "name": "from-one-peer",
        "network": "cluster",
        "podSelector": {},
        "ingress": [{ "from": [{ "podSelector": { "matchLabels": { "app": "client" } } }] }],
    });
    std::fs::write(&file, policy.to_string()).unwrap();
    let out = hosts[0].ctl(&["policy-add", file.to_str().unwrap()]);
    assert!(out.status.success(), "policy-add: {}", text(&out));
    wait_until("host 3's client, picked by its labels, reaches host 1", Duration::from_secs(10), || {
        hosts[2].containers[0].ns.exec(&["ping", "-c", "1", "-W", "1", &target]).status.success()
    });
    assert!(!hosts[1].containers[0].ns.ping(&target, 1), "host 2's container, no client, no longer does");
    assert!(!hosts[2].containers[1].ns.ping(&target, 1), "nor host 3's other container");

    // cluster-show's text names the other hosts.
    let out = hosts[0].ctl(&["cluster-show"]);
    let shown = text(&out);
    for s in &subnets[1..] {
        assert!(shown.contains(s.as_str()), "cluster-show lists {s}: {shown}");
    }
    assert!(shown.contains("connected"), "{shown}");
}

#[test]
fn three_hosts_over_vxlan() {
    three_hosts(Backend::Vxlan);
}

#[test]
fn three_hosts_over_host_gw() {
    three_hosts(Backend::HostGw);
}

#[test]
fn a_fourth_host_joins_while_traffic_flows() {
    let _one = serial();
    let mut u = Underlay::with_etcd(1, VXLAN);
    let mut hosts: Vec<Host> = (1..=3).map(|i| Host::new(&mut u, i, Backend::Vxlan, 10)).collect();
    let mut subnets: Vec<String> = hosts.iter().map(Host::subnet).collect();
    for h in &mut hosts {
        h.attach(None);
    }
    for (h, own) in hosts.iter().zip(&subnets) {
        h.wait_routes(&subnets.iter().filter(|s| *s != own).cloned().collect(), Duration::from_secs(20));
    }
    let flows: Vec<Pinger> = vec![
        Pinger::start(&hosts[0].containers[0], &hosts[1].containers[0].ip, 120),
        Pinger::start(&hosts[2].containers[0], &hosts[0].containers[0].ip, 120),
    ];
    std::thread::sleep(Duration::from_secs(1));
    let mut h4 = Host::new(&mut u, 4, Backend::Vxlan, 10);
    let s4 = h4.subnet();
    h4.attach(None);
    let ip4 = h4.containers[0].ip.clone();
    let reach = wait_until("host 4's container answers host 1's", Duration::from_secs(10), || {
        hosts[0].containers[0].ns.exec(&["ping", "-c", "1", "-W", "1", &ip4]).status.success()
    });
    eprintln!("host 4 reachable {reach:?} after its container came up");
    subnets.push(s4);
    for (h, own) in hosts.iter().chain([&h4]).zip(&subnets) {
        h.wait_routes(&subnets.iter().filter(|s| *s != own).cloned().collect(), Duration::from_secs(10));
    }
    for p in flows {
        let (sent, received, out) = p.finish();
        assert!(sent >= 100 && received == sent, "traffic between the first hosts lost packets: {out}");
    }
    let all: Vec<&Host> = hosts.iter().chain([&h4]).collect();
    all_pairs_ping(&all);
}

#[test]
fn a_killed_host_loses_its_routes_after_the_ttl_and_gets_its_subnet_back() {
    let _one = serial();
    let mut u = Underlay::with_etcd(1, VXLAN);
    let ttl = 4;
    // VXLAN alone, no uplink.
    let mut h1 = Host::with_uplink(&mut u, 1, Backend::Vxlan, ttl, false);
    let mut h2 = Host::with_uplink(&mut u, 2, Backend::Vxlan, ttl, false);
    let (s1, s2) = (h1.subnet(), h2.subnet());
    h1.wait_routes(&[s2.clone()].into(), Duration::from_secs(20));
    h1.attach(None);
    h2.attach(None);
    let ip2 = h2.containers[0].ip.clone();
    assert!(h1.containers[0].ns.ping(&ip2, 2));
    // Host 1 keeps one lease all along (kept alive every TTL/3).
    let lease1 = h1.cluster()["agent"]["lease"]["id"].clone();
    // The host at its gateway address, and it back.
    let gw1 = s1.replace(".0/24", ".1");
    assert!(h1.containers[0].ns.ping(&gw1, 2), "a container reaches its host's gateway address {gw1}");
    assert!(h1.ns.ping(&h1.containers[0].ip, 2), "the host reaches its container");

    // An agent restarted within its TTL keeps its subnet (its record,
    // moved to a new lease); the other host never loses the route.
    h2.stop_agent("-KILL");
    h2.start_agent();
    wait_until("host 2's agent leases again", Duration::from_secs(15), || {
        h2.cluster()["agent"]["pid"] == json!(h2.agent.as_ref().unwrap().id())
            && h2.cluster()["agent"]["etcd"]["connected"] == json!(true)
    });
    assert_eq!(h2.subnet(), s2, "the same subnet after a restart within the TTL");
    assert_eq!(h1.routes(), [s2.clone()].into());

    // Killed with its switch: the route stays until the TTL ends, then goes.
    h2.stop_agent("-KILL");
    h2.stop_daemon("-KILL");
    let killed = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(h1.routes(), [s2.clone()].into(), "kept while the lease lives");
    h1.wait_routes(&BTreeSet::new(), Duration::from_secs(u64::from(ttl) * 3 + 5));
    let gone = killed.elapsed();
    assert!(gone >= Duration::from_secs(u64::from(ttl) - 1), "the route went before the lease's TTL: {gone:?}");
    assert!(u.leases().iter().all(|(k, _)| k != &s2.replace('/', "-")), "the lease is gone from etcd");

    // Back: the same subnet (remembered), routes again both ways.
    h2.start_daemon();
    h2.start_agent();
    assert_eq!(h2.subnet(), s2, "the same subnet after the lease expired");
    h1.wait_routes(&[s2.clone()].into(), Duration::from_secs(10));
    h2.wait_routes(&[s1.clone()].into(), Duration::from_secs(10));
    // The container's attachment survived in vswitchd's configuration.
    wait_until("host 2's container answers again", Duration::from_secs(10), || {
        h1.containers[0].ns.exec(&["ping", "-c", "1", "-W", "1", &ip2]).status.success()
    });

    // vswitchd restarted with its configuration: routes and containers
    // are back at once, the agent goes on.
    h1.stop_daemon("-KILL");
    h1.start_daemon();
    assert_eq!(h1.routes(), [s2.clone()].into(), "the routes came back from vswitchd's configuration");
    wait_until("host 1's container answers after vswitchd's restart", Duration::from_secs(10), || {
        h2.containers[0].ns.exec(&["ping", "-c", "1", "-W", "1", &h1.containers[0].ip]).status.success()
    });
    assert_eq!(h1.subnet(), s1);
    assert_eq!(h1.cluster()["agent"]["lease"]["id"], lease1, "host 1's lease lived through all of it");

    // A clean stop revokes the lease: the route goes at once.
    h2.stop_agent("-TERM");
    h1.wait_routes(&BTreeSet::new(), Duration::from_secs(3));
}

#[test]
fn etcd_stopped_for_30_seconds_loses_nothing_and_converges_after() {
    let _one = serial();
    let mut u = Underlay::with_etcd(1, VXLAN);
    let mut h1 = Host::new(&mut u, 1, Backend::Vxlan, 10);
    let mut h2 = Host::new(&mut u, 2, Backend::Vxlan, 10);
    let (s1, s2) = (h1.subnet(), h2.subnet());
    h1.wait_routes(&[s2.clone()].into(), Duration::from_secs(20));
    h2.wait_routes(&[s1.clone()].into(), Duration::from_secs(20));
    h1.attach(None);
    h2.attach(None);
    // 36 s of pings at 20 a second.
    let flow = Pinger::start(&h1.containers[0], &h2.containers[0].ip, 720);
    std::thread::sleep(Duration::from_secs(2));
    u.stop_member(0, "-TERM");
    std::thread::sleep(Duration::from_secs(2));
    let c = h1.cluster();
    assert_eq!(c["agent"]["etcd"]["connected"], json!(false), "cluster-show tells etcd is unreachable: {c}");
    assert!(c["agent"]["etcd"]["error"].is_string(), "with why: {c}");
    // A host that comes up meanwhile waits for etcd.
    let mut h3 = Host::new(&mut u, 3, Backend::Vxlan, 10);
    std::thread::sleep(Duration::from_secs(26));
    assert_eq!(h1.routes(), [s2.clone()].into(), "the routes stay while etcd is away");
    let cluster = u.cluster();
    u.start_member(0, &cluster, "existing");
    let s3 = h3.subnet();
    h3.attach(None);
    let took = h1.wait_routes(&[s2.clone(), s3.clone()].into(), Duration::from_secs(30));
    eprintln!("host 3's subnet reached host 1 {took:?} after etcd came back");
    h2.wait_routes(&[s1.clone(), s3.clone()].into(), Duration::from_secs(30));
    let (sent, received, out) = flow.finish();
    assert!(sent >= 700 && received == sent, "pings lost while etcd was away: {out}");
    all_pairs_ping(&[&h1, &h2, &h3]);
    h3.stop_agent("-TERM");
}

#[test]
fn a_three_member_etcd_cluster_survives_a_member_killed() {
    let _one = serial();
    let mut u = Underlay::with_etcd(3, VXLAN);
    let mut h1 = Host::new(&mut u, 1, Backend::Vxlan, 6);
    let mut h2 = Host::new(&mut u, 2, Backend::Vxlan, 6);
    let (s1, s2) = (h1.subnet(), h2.subnet());
    h1.wait_routes(&[s2.clone()].into(), Duration::from_secs(20));
    h1.attach(None);
    h2.attach(None);
    let flow = Pinger::start(&h1.containers[0], &h2.containers[0].ip, 300);
    u.stop_member(0, "-KILL");
    // Leases are kept alive through the others: still there after two TTLs.
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(h1.routes(), [s2.clone()].into());
    assert_eq!(h2.routes(), [s1.clone()].into());
    // Changes still reach everyone: a third host joins, the second leaves.
    let mut h3 = Host::new(&mut u, 3, Backend::Vxlan, 6);
    let s3 = h3.subnet();
    h3.attach(None);
    h1.wait_routes(&[s2.clone(), s3.clone()].into(), Duration::from_secs(20));
    let (sent, received, out) = flow.finish();
    assert!(sent >= 290 && received == sent, "pings lost with a member down: {out}");
    all_pairs_ping(&[&h1, &h2, &h3]);
    h2.stop_agent("-TERM");
    h1.wait_routes(&[s3.clone()].into(), Duration::from_secs(10));
    h3.wait_routes(&[s1.clone()].into(), Duration::from_secs(10));
}

#[test]
fn racing_agents_never_share_a_subnet() {
    let _one = serial();
    // 12 agents for exactly 12 subnets, all remembering the same one (a
    // state file from before): every one of them races for it first.
    let u = Underlay::with_etcd(
        1,
        r#"{"Network": "10.50.0.0/24", "SubnetLen": 28, "SubnetMin": "10.50.0.16", "SubnetMax": "10.50.0.192"}"#,
    );
    let n = 12;
    let mut agents = Vec::new();
    for i in 0..n {
        let dir = u.dir.join(format!("racer{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cluster.json"), r#"{"subnet": "10.50.0.64/28"}"#).unwrap();
        agents.push((dir, i));
    }
    let mut children: Vec<Child> = agents
        .iter()
        .map(|(dir, i)| {
            Command::new("ip")
                .args(["netns", "exec", &u.ns.name])
                .arg(bin("vswitch-agent"))
                .args(["--etcd-endpoints", &u.endpoints(), "--public-ip", &format!("10.99.1.{}", i + 1)])
                .args(["--lease-ttl", "30", "--state-dir", dir.to_str().unwrap()])
                .args(["--socket", dir.join("no-vswitchd.sock").to_str().unwrap()])
                .stderr(std::fs::File::create(dir.join("agent.log")).unwrap())
                .spawn()
                .unwrap()
        })
        .collect();
    struct Kill<'a>(&'a mut Vec<Child>);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            for c in self.0.iter_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let _kill = Kill(&mut children);
    wait_until("every agent holds a lease", Duration::from_secs(30), || u.leases().len() == n);
    let leases = u.leases();
    let holders: BTreeSet<&String> = leases.iter().map(|(_, ip)| ip).collect();
    assert_eq!(holders.len(), n, "each lease held by a different host: {leases:?}");
    // What each agent believes it holds is what etcd says it holds.
    let mut believed = BTreeSet::new();
    for (dir, i) in &agents {
        let state = std::fs::read_to_string(dir.join("cluster.json")).unwrap();
        let v: Value = serde_json::from_str(&state).unwrap();
        let s = v["subnet"].as_str().unwrap().to_string();
        let ip = format!("10.99.1.{}", i + 1);
        let key = s.replace('/', "-");
        assert!(leases.contains(&(key, ip.clone())), "{ip} believes it has {s}; etcd: {leases:?}");
        assert!(believed.insert(s.clone()), "{s} believed twice");
    }
    // A 13th finds the block full and says so.
    let out = Command::new("timeout")
        .args(["3", "ip", "netns", "exec", &u.ns.name])
        .arg(bin("vswitch-agent"))
        .args(["--etcd-endpoints", &u.endpoints(), "--public-ip", "10.99.1.99"])
        .args(["--state-dir", u.dir.join("racer-late").to_str().unwrap(), "--socket", "/nonexistent"])
        .output()
        .unwrap();
    assert!(text(&out).contains("no free /28 left in 10.50.0.0/24"), "{}", text(&out));
}

#[test]
fn bad_configuration_and_records_are_reported_not_fatal() {
    let _one = serial();
    let mut u = Underlay::with_etcd(1, r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "udp"}}"#);
    let mut h1 = Host::new(&mut u, 1, Backend::Vxlan, 10);
    // The agent waits, telling why, until the configuration is usable.
    std::thread::sleep(Duration::from_secs(2));
    let log = std::fs::read_to_string(h1.dir.join("agent.log")).unwrap();
    assert!(log.contains("backend 'udp' is not supported"), "{log}");
    let out = u.etcdctl(&["put", "/coreos.com/network/config", VXLAN]);
    assert!(out.status.success());
    let s1 = h1.subnet();
    // A record that is not a lease, and one of another backend: skipped,
    // shown, the rest still routed.
    for (k, v) in [
        ("10.244.200.0-24", "not json"),
        ("10.244.201.0-24", r#"{"PublicIP": "10.99.0.77", "BackendType": "host-gw"}"#),
        (
            "10.244.202.0-24",
            r#"{"PublicIP": "10.99.0.78", "BackendType": "vxlan", "BackendData": {"VNI": 7, "VtepMAC": "02:00:00:00:00:78"}}"#,
        ),
    ] {
        assert!(u.etcdctl(&["put", &format!("{SUBNETS}{k}"), v]).status.success());
    }
    h1.wait_routes(&["10.244.202.0/24".to_string()].into(), Duration::from_secs(10));
    let c = h1.cluster();
    let ignored = c["agent"]["ignored"].to_string();
    assert!(ignored.contains("10.244.200.0-24") && ignored.contains("not a lease record"), "{ignored}");
    assert!(ignored.contains("10.244.201.0-24") && ignored.contains("its backend is 'host-gw'"), "{ignored}");
    assert!(!s1.is_empty());
    let _ = &mut h1;
}

/// docs/cluster.md's walkthrough, as a new user runs it.
#[test]
fn the_example_cluster_runs() {
    let _one = serial();
    require_root();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bins = bin("vswitchd").parent().unwrap().to_path_buf();
    let out = Command::new("bash")
        .arg(root.join("examples/cluster.sh"))
        .env("VSWITCH_BIN", &bins)
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "examples/cluster.sh failed: {}", text(&out));
    assert_eq!(stdout.matches(": ok").count(), 30, "{stdout}");
    assert!(stdout.contains("Cluster network cluster (10.244.0.0/16)"), "{stdout}");
}

/// `net.routes` and a cluster `net.create` refuse what cannot be, with a
/// structured error, and change nothing.
#[test]
fn bad_routes_and_cluster_definitions_are_refused_whole() {
    let _one = serial();
    let mut u = Underlay::new();
    let h = Host {
        i: 1,
        dir: u.dir.join("host1"),
        socket: u.dir.join("host1/vswitchd.sock").display().to_string(),
        backend: Backend::Vxlan,
        endpoints: String::new(),
        ttl: 10,
        uplink: false,
        daemon: None,
        agent: None,
        containers: Vec::new(),
        ns: NetNs::new(),
    };
    u.plug(&h.ns, 1);
    std::fs::create_dir_all(&h.dir).unwrap();
    let mut h = h;
    h.start_daemon();
    let call = |method: &str, params: Value| -> Result<Value, (String, String)> {
        let mut c = vswitch_ctl::Client::connect(&h.socket, Duration::from_secs(10)).expect("connect");
        c.call(method, params).map_err(|e| match e {
            vswitch_ctl::CallError::Rpc(kind, m) => (kind, m),
            vswitch_ctl::CallError::Unreachable(m) => ("unreachable".into(), m),
        })
    };
    let spec = |backend: Value| {
        json!({
            "name": "cluster", "bridge": "vsc0", "is_gateway": true, "is_default_gateway": true,
            "ipam": { "type": "vswitch", "subnet": "10.244.1.0/24" },
            "cluster": { "network": "10.244.0.0/16", "backend": backend },
        })
    };
    let vxlan =
        json!({ "type": "vxlan", "vni": 7, "port": 8472, "local_ip": "10.99.0.11", "vtep_mac": "02:00:00:00:00:11" });
    // Definitions that cannot be: nothing is made.
    for (bad, why) in [
        (spec(json!({ "type": "host-gw" })), "masquerade"),
        (
            spec(
                json!({ "type": "vxlan", "vni": 16777216, "port": 8472, "local_ip": "10.99.0.11", "vtep_mac": "02:00:00:00:00:11" }),
            ),
            "24 bits",
        ),
        (
            spec(
                json!({ "type": "vxlan", "vni": 7, "port": 8472, "local_ip": "10.99.0.11", "vtep_mac": "01:00:00:00:00:11" }),
            ),
            "unicast",
        ),
        (
            {
                let mut s = spec(vxlan.clone());
                s["ipam"]["subnet"] = json!("10.9.1.0/24");
                s
            },
            "not in the cluster network",
        ),
        (
            {
                let mut s = spec(vxlan.clone());
                s["cluster"]["network"] = json!("10.244.0.1/16");
                s
            },
            "host bits",
        ),
    ] {
        let (kind, m) = call("net.create", json!({ "network": bad, "update": true })).expect_err("refused");
        assert_eq!(kind, "invalid_argument", "{m}");
        assert!(m.contains(why), "{m}");
    }
    assert!(!h.ctl(&["list-br"]).stdout.windows(4).any(|w| w == b"vsc0"), "no bridge was made");
    call("net.create", json!({ "network": spec(vxlan.clone()), "update": true })).expect("a good definition");
    assert_eq!(call("net.create", json!({ "network": spec(vxlan), "update": true })).unwrap()["changed"], json!(false));

    let route =
        |subnet: &str, mac: Option<&str>| json!({ "subnet": subnet, "public_ip": "10.99.0.12", "vtep_mac": mac });
    let good = json!([route("10.244.2.0/24", Some("02:00:00:00:00:12"))]);
    assert_eq!(call("net.routes", json!({ "network": "cluster", "routes": good })).unwrap()["changed"], json!(true));
    for (routes, why) in [
        (json!([route("10.245.0.0/24", Some("02:00:00:00:00:12"))]), "not a subnet of the cluster network"),
        (json!([route("10.244.1.0/25", Some("02:00:00:00:00:12"))]), "overlaps this host's subnet"),
        (
            json!([
                route("10.244.2.0/24", Some("02:00:00:00:00:12")),
                route("10.244.2.0/23", Some("02:00:00:00:00:13"))
            ]),
            "overlap",
        ),
        (json!([route("10.244.3.0/24", None)]), "VTEP MAC"),
        (json!([route("10.244.3.1/24", Some("02:00:00:00:00:12"))]), "not a subnet"),
    ] {
        let (kind, m) = call("net.routes", json!({ "network": "cluster", "routes": routes })).expect_err("refused");
        assert_eq!(kind, "invalid_argument", "{m}");
        assert!(m.contains(why), "{m}");
    }
    let stray = json!({ "network": "cluster", "routes": good, "endpoints": [{ "ip": "10.244.9.9", "labels": {} }] });
    let (kind, m) = call("net.routes", stray).expect_err("an endpoint of no routed host");
    assert!(kind == "invalid_argument" && m.contains("in no other host's subnet"), "{m}");
    let (kind, _) = call("net.routes", json!({ "network": "nope", "routes": [] })).expect_err("no such network");
    assert_eq!(kind, "not_found");
    let (kind, m) = call("net.routes", json!({ "network": "cluster", "routes": "x" })).expect_err("malformed");
    assert!(kind.starts_with("invalid") && m.contains("invalid params"), "{kind}: {m}");
    // The accepted set stands, and is what the flows say.
    assert_eq!(h.routes(), ["10.244.2.0/24".to_string()].into());
    let flows = String::from_utf8_lossy(&h.ctl(&["dump-flows", "vsc0", "table=240"]).stdout).to_string();
    assert!(flows.contains("nw_dst=10.244.2.0/24") && flows.contains("10.99.0.12->tun_dst"), "{flows}");
    call("net.routes", json!({ "network": "cluster", "routes": [] })).unwrap();
    let flows = String::from_utf8_lossy(&h.ctl(&["dump-flows", "vsc0", "table=240"]).stdout).to_string();
    assert!(!flows.contains("10.244.2.0/24"), "{flows}");
}
