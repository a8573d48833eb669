//! Connection tracking and NAT with real traffic, as root: containers in
//! namespaces behind vswitchd running docs/conntrack.md's container-host
//! recipe (examples/conntrack/host.flows), an "outside" namespace beyond
//! the uplink. The kernel's own TCP, UDP and ICMP stacks at both ends:
//! masquerade (iperf3 TCP and UDP, two containers on the same source
//! port), a published port with hairpin, outside-initiated connections
//! refused, the ICMP error of a closed port translated back, datagrams
//! larger than the MTU through NAT, and the CLI's conntrack commands.

mod common;

use std::process::Child;
use std::time::Duration;

use common::Daemon;
use serde_json::Value;
use vswitch_tests::netns::{NetNs, Veth};

const GW_MAC: &str = "02:00:00:00:00:01";

/// The recipe's topology: c1, c2 (containers), ext (the outside), and a
/// vswitchd with ports 1, 2, 3 and the recipe's flows.
struct Host {
    d: Daemon,
    c1: NetNs,
    c2: NetNs,
    ext: NetNs,
    _veths: Vec<Veth>,
}

/// A namespace with one veth to the switch, its MAC, address, route and
/// static neighbour as docs/conntrack.md sets them up.
fn attach(ns: &NetNs, mac: &str, cidr: &str, gateway: &str) -> Veth {
    let v = Veth::new(ns, cidr);
    ns.run(&["ip", "link", "set", "dev", &v.inner, "address", mac]);
    ns.run(&["ip", "neigh", "replace", gateway, "lladdr", GW_MAC, "dev", &v.inner, "nud", "permanent"]);
    v
}

fn host() -> Host {
    let (c1, c2, ext) = (NetNs::new(), NetNs::new(), NetNs::new());
    let v1 = attach(&c1, "02:88:00:00:00:02", "10.88.0.2/24", "10.88.0.1");
    let v2 = attach(&c2, "02:88:00:00:00:03", "10.88.0.3/24", "10.88.0.1");
    let ve = attach(&ext, "02:00:02:00:00:32", "192.0.2.50/24", "192.0.2.1");
    for (ns, v) in [(&c1, &v1), (&c2, &v2)] {
        ns.run(&["ip", "route", "add", "default", "via", "10.88.0.1", "dev", &v.inner]);
    }
    let d = Daemon::start();
    d.ok(&["add-br", "br0"]);
    for (v, n) in [(&v1, "1"), (&v2, "2"), (&ve, "3")] {
        d.ok(&["add-port", "br0", &v.host, &format!("ofport_request={n}")]);
    }
    let flows = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/conntrack/host.flows");
    d.ok(&["del-flows", "br0"]);
    d.ok(&["add-flows", "br0", flows.to_str().unwrap()]);
    Host { d, c1, c2, ext, _veths: vec![v1, v2, ve] }
}

/// A python3 program run in `ns`; its stdout (panics on failure).
fn py(ns: &NetNs, program: &str, args: &[&str]) -> String {
    let mut all = vec!["python3", "-c", program];
    all.extend_from_slice(args);
    let out = ns.exec(&all);
    assert!(
        out.status.success(),
        "python3 in {} failed: {}{}",
        ns.name,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn spawn_py(ns: &NetNs, program: &str, args: &[&str]) -> Child {
    let mut all = vec!["python3", "-c", program];
    all.extend_from_slice(args);
    ns.spawn(&all)
}

/// A UDP server: answers `count` datagrams with "ADDR:PORT LEN " and the
/// datagram itself.
const UDP_ECHO: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(30)
for _ in range(int(sys.argv[3])):
    d, a = s.recvfrom(65535)
    s.sendto(("%s:%d %d " % (a[0], a[1], len(d))).encode() + d, a)
"#;

/// A UDP client from source port argv[3]: sends argv[4] bytes, prints the
/// answer's header, checks the echoed bytes came back whole.
const UDP_CLIENT: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("", int(sys.argv[3])))
s.settimeout(2)
data = bytes(i % 251 for i in range(int(sys.argv[4])))
for attempt in range(int(sys.argv[5]) if len(sys.argv) > 5 else 10):
    s.sendto(data, (sys.argv[1], int(sys.argv[2])))
    try:
        r, _ = s.recvfrom(65535)
        break
    except socket.timeout:
        continue
else:
    sys.exit("no answer")
head, _, body = r.partition(b" ")
n, _, body = body.partition(b" ")
assert body == data, "the echo came back changed"
print(head.decode(), n.decode())
"#;

/// A TCP server: answers each of `count` connections with a greeting
/// naming the peer it saw.
const TCP_SERVER: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(8)
s.settimeout(30)
for _ in range(int(sys.argv[3])):
    c, a = s.accept()
    c.sendall(("hello %s:%d from %s" % (a[0], a[1], sys.argv[1])).encode())
    c.close()
"#;

const TCP_CLIENT: &str = r#"
import socket, sys, time
deadline = time.time() + float(sys.argv[3])
while True:
    try:
        c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
        print(c.recv(200).decode())
        break
    except OSError as e:
        if time.time() > deadline:
            print("failed: %s" % e)
            break
        time.sleep(0.2)
"#;

#[test]
fn masquerade_carries_tcp_udp_and_large_datagrams() {
    let h = host();
    // iperf3 TCP, then UDP, from a container to the outside.
    let r = vswitch_tests::netns::iperf3(&h.c1, &h.ext, "192.0.2.50", 2);
    assert!(r.bytes > 1_000_000, "TCP through the masquerade: {}", r.output);
    let conns = h.d.json(&["dump-conntrack", "zone=1", "tcp"]);
    assert!(
        conns.as_array().unwrap().iter().any(|c| c["orig"]["src"] == "10.88.0.2" && c["reply"]["dst"] == "192.0.2.1"),
        "{conns}"
    );
    let mut srv = h.ext.spawn(&["iperf3", "-s", "-1", "-B", "192.0.2.50"]);
    std::thread::sleep(Duration::from_millis(500));
    let out = h.c1.exec(&["iperf3", "-u", "-b", "20M", "-t", "2", "-c", "192.0.2.50", "-J"]);
    let _ = srv.kill();
    let _ = srv.wait();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let sum = &v["end"]["sum"];
    assert!(sum["packets"].as_u64().unwrap_or(0) > 1000, "iperf3 UDP: {}", String::from_utf8_lossy(&out.stdout));
    assert!(sum["lost_percent"].as_f64().unwrap_or(100.0) < 10.0, "UDP loss: {sum}");

    // Two containers, the same source port, the same server: each gets
    // its own mapping and its own answer.
    let echo = spawn_py(&h.ext, UDP_ECHO, &["192.0.2.50", "9000", "3"]);
    std::thread::sleep(Duration::from_millis(300));
    let a = py(&h.c1, UDP_CLIENT, &["192.0.2.50", "9000", "40000", "100"]);
    let b = py(&h.c2, UDP_CLIENT, &["192.0.2.50", "9000", "40000", "100"]);
    let (pa, pb) = (a.split(' ').next().unwrap(), b.split(' ').next().unwrap());
    assert!(pa.starts_with("192.0.2.1:") && pb.starts_with("192.0.2.1:"), "the server sees the host: {a} / {b}");
    assert_ne!(pa, pb, "two mappings for one source port");
    // A datagram larger than the MTU, both ways through NAT, intact.
    let big = py(&h.c1, UDP_CLIENT, &["192.0.2.50", "9000", "40001", "4000"]);
    assert!(big.ends_with(" 4000"), "{big}");
    drop(echo);
    let stats = h.d.json(&["ct-stats"]);
    assert!(stats["zones"]["1"]["connections"].as_u64().unwrap() >= 4, "{stats}");
    assert_eq!(stats["drops"]["fragment"], 0, "{stats}");
}

#[test]
fn published_port_hairpin_and_outside_connections_refused() {
    let h = host();
    let mut srv = spawn_py(&h.c1, TCP_SERVER, &["10.88.0.2", "80", "2"]);
    // From outside, through the host's address.
    let r = py(&h.ext, TCP_CLIENT, &["192.0.2.1", "8080", "10"]);
    assert!(
        r.starts_with("hello 192.0.2.50:"),
        "DNAT to the container, the client's own address kept: {r}\n{}\n{}\n{}",
        h.d.ok(&["dump-flows", "br0"]),
        h.d.ok(&["dump-conntrack"]),
        h.d.ok(&["stats"])
    );
    // From the other container, through the host's address (hairpin).
    let r = py(&h.c2, TCP_CLIENT, &["192.0.2.1", "8080", "10"]);
    assert!(r.starts_with("hello 10.88.0.3:"), "{r}");
    let _ = srv.wait();
    // Outside cannot start connections to a container, only to the published port.
    h.ext.run(&["ip", "route", "add", "10.88.0.0/24", "via", "192.0.2.1"]);
    let mut srv = spawn_py(&h.c1, TCP_SERVER, &["10.88.0.2", "81", "1"]);
    let r = py(&h.ext, TCP_CLIENT, &["10.88.0.2", "81", "2"]);
    assert!(r.starts_with("failed"), "an outside-initiated connection is blocked: {r}");
    let _ = srv.kill();
    let _ = srv.wait();
    let dump = h.d.ok(&["dump-conntrack", "zone=1"]);
    assert!(dump.contains("reply=(src=10.88.0.2,dst=192.0.2.50,sport=80,"), "{dump}");
    assert!(dump.contains("protoinfo=(state="), "{dump}");
    // flush-conntrack with a 5-tuple removes only that connection.
    let n = h.d.json(&["dump-conntrack"]).as_array().unwrap().len();
    let f = h.d.json(&["flush-conntrack", "zone=1", "ct_nw_src=10.88.0.3", "ct_tp_dst=8080"]);
    assert_eq!(f["flushed"], 1, "{f}");
    assert_eq!(h.d.json(&["dump-conntrack"]).as_array().unwrap().len(), n - 1);
}

#[test]
fn the_icmp_error_of_a_closed_port_comes_back_translated() {
    let h = host();
    // A connected UDP socket learns of the port-unreachable only if the
    // ICMP error's quoted header names it: its own address and port.
    const PROBE: &str = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect(("192.0.2.50", 9))
s.settimeout(3)
for _ in range(3):
    s.send(b"anyone?")
    try:
        s.recv(100)
    except ConnectionRefusedError:
        print("refused")
        break
    except socket.timeout:
        pass
else:
    print("no error came back")
"#;
    assert_eq!(py(&h.c1, PROBE, &[]), "refused");
    let stats = h.d.json(&["ct-stats"]);
    assert_eq!(stats["drops"]["invalid"], 0, "{stats}");
}

#[test]
fn limits_and_timeouts_are_set_shown_and_saved() {
    let h = host();
    h.d.ok(&["ct-set-limits", "default=100", "zone=1,limit=2"]);
    h.d.ok(&["ct-set-timeouts", "zone=1", "udp=7", "liberal=true"]);
    let e = h.d.ctl(&["ct-set-timeouts", "udp=0"]);
    assert_eq!(e.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&e.stderr).contains("at least 1 second"));
    let e = h.d.ctl(&["ct-set-timeouts", "bogus=3"]);
    assert!(String::from_utf8_lossy(&e.stderr).contains("unknown timeout 'bogus'"));
    // Zone 1 takes two connections (one never answered); the third is
    // refused and counted.
    const SEND: &str =
        "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('192.0.2.50', 9001))";
    py(&h.c1, SEND, &[]);
    let echo = spawn_py(&h.ext, UDP_ECHO, &["192.0.2.50", "9000", "1"]);
    std::thread::sleep(Duration::from_millis(300));
    py(&h.c1, UDP_CLIENT, &["192.0.2.50", "9000", "41001", "10"]);
    drop(echo);
    let third = h.c1.exec(&["python3", "-c", UDP_CLIENT, "192.0.2.50", "9000", "41002", "10", "1"]);
    assert!(!third.status.success(), "a full zone refuses a new connection");
    let stats = h.d.json(&["ct-stats"]);
    assert_eq!(stats["zones"]["1"]["limit"], 2, "{stats}");
    assert!(stats["drops"]["zone_full"].as_u64().unwrap() >= 1, "{stats}");
    let text = h.d.ok(&["ct-stats"]);
    assert!(text.contains("zone 1: 2 connections (limit 2)"), "{text}");
    // The unanswered one has the zone's own UDP timeout.
    let conns = h.d.json(&["dump-conntrack", "ct_tp_dst=9001"]);
    assert_eq!(conns.as_array().unwrap().len(), 1, "{conns}");
    assert!(conns[0]["timeout"].as_u64().unwrap() <= 7, "{conns}");
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&h.d.db).unwrap_or_default()).unwrap_or_default();
    let journal = std::fs::read_to_string(format!("{}.journal", h.d.db)).unwrap_or_default();
    assert!(
        saved["conntrack"]["zones"]["1"]["limit"] == 2 || journal.contains("set_conntrack"),
        "the settings are saved: {saved} {journal}"
    );
}

/// Each container in its own zone (chosen into reg0 and passed to `ct` as
/// `zone=reg0[0..15]`), zone 10 limited to 50 connections.
const ZONED: &[&str] = &[
    "table=0,priority=10,ip,in_port=1,actions=load:10->reg0[0..15],ct(table=1,zone=reg0[0..15])",
    "table=0,priority=10,ip,in_port=2,actions=load:20->reg0[0..15],ct(table=1,zone=reg0[0..15])",
    "table=0,priority=10,ip,in_port=3,nw_dst=10.88.0.2,actions=load:10->reg0[0..15],ct(table=2,zone=reg0[0..15])",
    "table=0,priority=10,ip,in_port=3,nw_dst=10.88.0.3,actions=load:20->reg0[0..15],ct(table=2,zone=reg0[0..15])",
    "table=0,priority=0,actions=drop",
    "table=1,priority=10,ct_state=+new+trk,ip,actions=ct(commit,zone=reg0[0..15]),mod_dl_src:02:00:00:00:00:01,mod_dl_dst:02:00:02:00:00:32,dec_ttl,output:3",
    "table=1,priority=10,ct_state=+est+trk,ip,actions=mod_dl_src:02:00:00:00:00:01,mod_dl_dst:02:00:02:00:00:32,dec_ttl,output:3",
    "table=2,priority=10,ct_state=+est+trk,ip,nw_dst=10.88.0.2,actions=mod_dl_src:02:00:00:00:00:01,mod_dl_dst:02:88:00:00:00:02,dec_ttl,output:1",
    "table=2,priority=10,ct_state=+est+trk,ip,nw_dst=10.88.0.3,actions=mod_dl_src:02:00:00:00:00:01,mod_dl_dst:02:88:00:00:00:03,dec_ttl,output:2",
    "table=2,priority=0,actions=drop",
];

#[test]
fn a_syn_flood_fills_its_own_zone_and_no_other() {
    let h = host();
    h.d.ok(&["del-flows", "br0"]);
    for f in ZONED {
        h.d.ok(&["add-flow", "br0", f]);
    }
    h.ext.run(&["ip", "route", "add", "10.88.0.0/24", "via", "192.0.2.1"]);
    h.d.ok(&["ct-set-limits", "zone=10,limit=50"]);
    // c2 holds a connection open across the flood.
    const ECHO_SERVER: &str = r#"
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("192.0.2.50", 7000))
s.listen(1)
s.settimeout(30)
c, _ = s.accept()
c.settimeout(30)
while True:
    d = c.recv(100)
    if not d:
        break
    c.sendall(d)
"#;
    const HOLDER: &str = r#"
import socket, sys, time
deadline = time.time() + 10
while True:
    try:
        c = socket.create_connection(("192.0.2.50", 7000), timeout=2)
        break
    except OSError:
        if time.time() > deadline:
            sys.exit("cannot connect")
        time.sleep(0.2)
c.settimeout(5)
c.sendall(b"before")
assert c.recv(100) == b"before"
open(sys.argv[1], "w").write("connected")
time.sleep(4)
c.sendall(b"after")
assert c.recv(100) == b"after"
print("held")
"#;
    const FLOOD: &str = r#"
import socket, time
socks = []
for i in range(300):
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex(("192.0.2.50", 20000 + i))
    socks.append(s)
time.sleep(1)
"#;
    let mut server = spawn_py(&h.ext, ECHO_SERVER, &[]);
    let marker = std::env::temp_dir().join(vswitch_tests::netns::unique("held"));
    let holder = spawn_py(&h.c2, HOLDER, &[marker.to_str().unwrap()]);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !marker.exists() {
        assert!(std::time::Instant::now() < deadline, "c2's connection did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    py(&h.c1, FLOOD, &[]);
    let stats = h.d.json(&["ct-stats"]);
    assert_eq!(stats["zones"]["10"]["connections"], 50, "zone 10 is full: {stats}");
    assert!(stats["drops"]["zone_full"].as_u64().unwrap() >= 250, "{stats}");
    assert_eq!(stats["zones"]["20"]["by_state"]["tcp ESTABLISHED"], 1, "zone 20's connection is untouched: {stats}");
    let out = holder.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "held", "{}", String::from_utf8_lossy(&out.stderr));
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_file(&marker);
}

#[test]
fn the_container_host_example_runs() {
    let text = common::run_script("examples/conntrack/host.sh");
    for line in ["masquerade: ok", "published port from outside: ok", "hairpin from c2: ok", "outside blocked: ok"] {
        assert!(text.contains(line), "{line}: {text}");
    }
    assert!(text.ends_with("conntrack ok\n"), "{text}");
}

/// A connection from a container, and a RST forged by the outside host
/// with a sequence number far outside the window (a raw socket, so its
/// own kernel's stack stays out of it): conntrack calls it `+inv`, the
/// recipe drops it, and the connection carries on.
#[test]
fn a_forged_out_of_window_rst_is_dropped_and_the_connection_lives() {
    let h = host();
    const SERVER: &str = r#"
import socket, struct, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("192.0.2.50", 7100))
s.listen(1)
s.settimeout(20)
c, (peer, port) = s.accept()
c.settimeout(10)
assert c.recv(100) == b"one"
# The forged RST: from the server's address and port to the client's
# mapped address, 100 MB beyond any sequence number in use.
def csum(b):
    if len(b) % 2:
        b += b"\0"
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while t >> 16:
        t = (t & 0xffff) + (t >> 16)
    return (~t) & 0xffff
src, dst = socket.inet_aton("192.0.2.50"), socket.inet_aton(peer)
tcp = struct.pack("!HHIIBBHHH", 7100, port, 0x12345678, 0, 0x50, 0x04, 0, 0, 0)
tcp = tcp[:16] + struct.pack("!H", csum(src + dst + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)) + tcp[18:]
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 1, 0, 64, 6, 0, src, dst)
ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
r.sendto(ip + tcp, (peer, 0))
print("forged", flush=True)
time.sleep(0.5)
c.sendall(b"two")
assert c.recv(100) == b"three"
print("alive")
"#;
    const CLIENT: &str = r#"
import socket, time
deadline = time.time() + 10
while True:
    try:
        c = socket.create_connection(("192.0.2.50", 7100), timeout=2)
        break
    except OSError:
        if time.time() > deadline:
            raise
        time.sleep(0.2)
c.settimeout(10)
c.sendall(b"one")
assert c.recv(100) == b"two", "the connection was reset"
c.sendall(b"three")
print("client ok")
"#;
    let invalid = |h: &Host| h.d.json(&["ct-stats"])["drops"]["invalid"].as_u64().unwrap();
    let before = invalid(&h);
    let server = spawn_py(&h.ext, SERVER, &[]);
    let client = py(&h.c1, CLIENT, &[]);
    let out = server.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("forged") && said.contains("alive"), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(client, "client ok");
    assert!(invalid(&h) > before, "the forged RST was counted invalid");
    let conns = h.d.json(&["dump-conntrack", "ct_tp_dst=7100"]);
    // The connection was closed since by both ends' FINs (a first attempt
    // before the server listened may be there too, closed by its RST).
    assert!(conns.as_array().unwrap().iter().any(|c| c["tcp_state"] == "TIME_WAIT"), "{conns}");
}
