//! VXLAN and GRE tunnel ports, as root, between network namespaces that
//! play hosts: interop with the kernel's own VXLAN (and gretap, where the
//! kernel has it), two switches joined by tunnels, flow-based tunnels,
//! headers checked by tcpdump, malformed packets counted, MTU enforced.
//!
//! Every host runs its own vswitchd (`ip netns exec`), so its tunnel
//! sockets and ports live in that host's namespace. All links live inside
//! namespaces and go with them.

mod common;

use std::io::BufRead;
use std::process::{Child, Command, Stdio};

use common::Daemon;
use serde_json::Value;
use vswitch_tests::netns::{NetNs, iperf3, unique, veth_between};

/// Two hosts joined by an underlay link: `a` is 192.168.S.1, `b` .2.
struct Hosts {
    a: NetNs,
    b: NetNs,
    a_if: String,
    b_if: String,
    subnet: u8,
}

impl Hosts {
    fn new(subnet: u8) -> Hosts {
        let (a, b) = (NetNs::new(), NetNs::new());
        let (a_if, b_if) = (unique("u"), unique("u"));
        veth_between(&a, &a_if, &b, &b_if);
        for (ns, dev, ip) in [(&a, &a_if, 1), (&b, &b_if, 2)] {
            ns.run(&["ip", "addr", "add", &format!("192.168.{subnet}.{ip}/24"), "dev", dev]);
            ns.run(&["ip", "link", "set", "lo", "up"]);
        }
        Hosts { a, b, a_if, b_if, subnet }
    }

    fn ip(&self, host: u8) -> String {
        format!("192.168.{}.{host}", self.subnet)
    }
}

/// A container namespace behind `host`: its eth0 addressed `cidr` with
/// `mtu`, the other end (returned) in the host namespace, up.
fn container(host: &NetNs, cidr: &str, mtu: u32) -> (NetNs, String) {
    let c = NetNs::new();
    let port = unique("c");
    veth_between(host, &port, &c, "eth0");
    c.run(&["ip", "addr", "add", cidr, "dev", "eth0"]);
    c.run(&["ip", "link", "set", "eth0", "mtu", &mtu.to_string()]);
    c.run(&["ip", "link", "set", "lo", "up"]);
    (c, port)
}

/// A Linux bridge in `host` joining `ports` (the kernel's side of an
/// interop test).
fn kernel_bridge(host: &NetNs, ports: &[&str]) {
    host.run(&["ip", "link", "add", "kbr0", "type", "bridge"]);
    for p in ports {
        host.run(&["ip", "link", "set", p, "master", "kbr0"]);
        host.run(&["ip", "link", "set", p, "up"]);
    }
    host.run(&["ip", "link", "set", "kbr0", "up"]);
}

/// tcpdump on `dev` in `ns`, started (listening) before this returns.
fn capture(ns: &NetNs, dev: &str, filter: &str, count: u32) -> Child {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name, "timeout", "10", "tcpdump", "-l", "-nn", "-vv", "-i", dev, "-c"])
        .arg(count.to_string())
        .args(filter.split_whitespace())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcpdump (Debian: tcpdump; .ci/run installs it)");
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    if !line.contains("listening") {
        line.clear();
        err.read_line(&mut line).unwrap();
    }
    assert!(line.contains("listening on"), "tcpdump did not start: {line}");
    child
}

fn captured(child: Child) -> String {
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The drop counter `reason` of `port` in `stats`.
fn drops(d: &Daemon, port: &str, reason: &str) -> u64 {
    let s = d.json(&["stats", "br0", port]);
    s["bridges"][0]["ports"][0]["drops"][reason].as_u64().unwrap_or_else(|| panic!("no {reason} in {s}"))
}

fn port_row(d: &Daemon, bridge: &str, port: &str) -> Value {
    let ports = d.json(&["list-ports", bridge]);
    ports.as_array().unwrap().iter().find(|p| p["name"] == port).cloned().unwrap_or_else(|| panic!("{port}: {ports}"))
}

/// The interop layout: a container behind host A (for this switch to
/// serve) and one behind host B, where the kernel's VXLAN device `vx0`
/// (VNI `vni`, towards host A) and a Linux bridge join it to the overlay.
/// Returns (container A, its port on host A, container B).
fn kernel_vxlan_site(h: &Hosts, vni: &str) -> (NetNs, String, NetNs) {
    let s = h.subnet;
    let (ca, pa) = container(&h.a, &format!("10.{s}.0.1/24"), 1450);
    let (cb, pb) = container(&h.b, &format!("10.{s}.0.2/24"), 1450);
    let (r, l) = (h.ip(1), h.ip(2));
    h.b.run(&["ip", "link", "add", "vx0", "type", "vxlan", "id", vni, "remote", &r, "local", &l, "dstport", "4789"]);
    kernel_bridge(&h.b, &["vx0", &pb]);
    (ca, pa, cb)
}

#[test]
fn vxlan_interoperates_with_the_kernels_vxlan() {
    let h = Hosts::new(41);
    // Host A: this switch, a container behind it. Host B: the kernel's
    // VXLAN device bridged to a container.
    let (ca, pa, cb) = kernel_vxlan_site(&h, "42");
    let d = Daemon::start_netns(&h.a);
    let remote = format!("options:remote_ip={}", h.ip(2));
    d.ok(&["add-br", "br0", "--", "add-port", "br0", &pa, "--", "add-port", "br0", "vxa", "type=vxlan", &remote]);
    d.ok(&["set-port", "vxa", "options:key=42"]);

    let dump = capture(&h.b, &h.b_if, "udp port 4789", 4);
    assert!(ca.ping("10.41.0.2", 3), "container A -> container B over VXLAN");
    assert!(cb.ping("10.41.0.1", 3), "and back");
    let seen = captured(dump);
    assert!(seen.contains("VXLAN, flags [I] (0x08), vni 42"), "tcpdump decodes our VXLAN: {seen}");
    assert!(seen.contains(&format!("{}.", h.ip(1))) && seen.contains(".4789:"), "outer UDP to 4789: {seen}");
    assert!(seen.contains("udp sum ok") || seen.contains("[no cksum]"), "outer UDP checksum: {seen}");

    // trace names the encapsulation in its datapath actions.
    let t = d.ok(&["trace", "br0", &format!("in_port={pa},dl_dst=ff:ff:ff:ff:ff:ff")]);
    assert!(t.contains(&format!("tunnel(vxlan,remote_ip={},key=42),", h.ip(2))), "{t}");

    // The far container's MAC is learned behind the tunnel port.
    let fdb = d.json(&["fdb-show", "br0"]);
    let tun_no = port_row(&d, "br0", "vxa")["port_no"].clone();
    assert!(fdb.as_array().unwrap().iter().any(|e| e["port"] == tun_no), "{fdb}");

    // TCP both ways, with the kernel's offloads on every veth.
    for (from, to, ip) in [(&ca, &cb, "10.41.0.2"), (&cb, &ca, "10.41.0.1")] {
        let r = iperf3(from, to, ip, 2);
        let stats = d.json(&["stats"]);
        assert!(
            r.bytes > 5_000_000,
            "iperf3 across VXLAN: {}; {stats}",
            r.output.chars().take(600).collect::<String>()
        );
    }

    // MTU: the inner MTU is reported; a frame too big once encapsulated is
    // dropped and counted, not fragmented or truncated.
    assert_eq!(port_row(&d, "br0", "vxa")["status"]["inner_mtu"], "1450");
    ca.run(&["ip", "link", "set", "eth0", "mtu", "1500"]);
    let before = drops(&d, "vxa", "too_big");
    let big = ca.exec(&["ping", "-c", "2", "-W", "1", "-s", "1472", "-M", "do", "10.41.0.2"]);
    assert!(!big.status.success(), "a 1514-byte frame does not fit a 1500-byte underlay after 50 bytes of VXLAN");
    assert!(drops(&d, "vxa", "too_big") >= before + 2, "counted as too_big");
    assert!(ca.ping("10.41.0.2", 2), "smaller frames still pass");
}

#[test]
fn malformed_and_unknown_tunnel_packets_are_counted_and_harmless() {
    let h = Hosts::new(42);
    let (ca, pa, cb) = kernel_vxlan_site(&h, "7");
    let d = Daemon::start_netns(&h.a);
    let remote = format!("options:remote_ip={}", h.ip(2));
    d.ok(&[
        "add-br",
        "br0",
        "--",
        "add-port",
        "br0",
        &pa,
        "--",
        "add-port",
        "br0",
        "vxa",
        "type=vxlan",
        &remote,
        "options:key=7",
    ]);
    assert!(ca.ping("10.42.0.2", 2));
    // From host B's address: a short header, a header without the I flag,
    // an inner frame cut short, and a well-formed packet for VNI 99.
    let to = format!("/dev/udp/{}/4789", h.ip(1));
    let send = |bytes: &str| h.b.run(&["bash", "-c", &format!("printf '{bytes}' > {to}")]);
    send(r"\x08\x00\x00");
    send(r"\x00\x00\x00\x00\x00\x00\x07\x00\xff\xff\xff\xff\xff\xff\x02\x00\x00\x00\x00\x01\x08\x06");
    send(r"\x08\x00\x00\x00\x00\x00\x07\x00\xff\xff\xff");
    send(&format!(
        r"\x08\x00\x00\x00\x00\x00\x63\x00\xff\xff\xff\xff\xff\xff\x02\x00\x00\x00\x00\x01\x08\x06{}",
        r"\x00".repeat(46)
    ));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while drops(&d, "vxa", "tunnel_malformed") < 3 || drops(&d, "vxa", "tunnel_unknown") < 1 {
        assert!(std::time::Instant::now() < deadline, "not counted: {}", d.json(&["stats", "br0", "vxa"]));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(drops(&d, "vxa", "tunnel_malformed"), 3);
    assert_eq!(drops(&d, "vxa", "tunnel_unknown"), 1);
    assert!(cb.ping("10.42.0.1", 2), "traffic is undisturbed");
}

#[test]
fn two_switches_join_their_containers_over_vxlan() {
    let h = Hosts::new(43);
    let (c1, p1) = container(&h.a, "10.43.0.1/24", 1450);
    let (c2, p2) = container(&h.a, "10.43.0.2/24", 1450);
    let (c3, p3) = container(&h.b, "10.43.0.3/24", 1450);
    let (c4, p4) = container(&h.b, "10.43.0.4/24", 1450);
    let da = Daemon::start_netns(&h.a);
    let db = Daemon::start_netns(&h.b);
    for (d, ports, remote) in [(&da, [&p1, &p2], h.ip(2)), (&db, [&p3, &p4], h.ip(1))] {
        let r = format!("options:remote_ip={remote}");
        d.ok(&[
            "add-br",
            "br0",
            "--",
            "add-port",
            "br0",
            ports[0],
            "--",
            "add-port",
            "br0",
            ports[1],
            "--",
            "add-port",
            "br0",
            "vx",
            "type=vxlan",
            &r,
            "options:key=100",
        ]);
    }
    let all = [(&c1, "10.43.0.1"), (&c2, "10.43.0.2"), (&c3, "10.43.0.3"), (&c4, "10.43.0.4")];
    for (from, _) in all {
        for (_, ip) in all {
            assert!(from.ping(ip, 1), "{} -> {ip}", from.name);
        }
    }
    // Each switch has the other side's two containers behind its tunnel.
    for d in [&da, &db] {
        let tun = port_row(d, "br0", "vx")["port_no"].clone();
        let fdb = d.json(&["fdb-show", "br0"]);
        let behind = fdb.as_array().unwrap().iter().filter(|e| e["port"] == tun).count();
        assert_eq!(behind, 2, "two remote MACs behind the tunnel: {fdb}");
    }
    let r = iperf3(&c1, &c4, "10.43.0.4", 2);
    assert!(r.bytes > 5_000_000, "switch to switch TCP: {}", r.output.chars().take(3000).collect::<String>());
}

/// True if this kernel can create gretap devices (CONFIG_NET_IPGRE).
fn kernel_has_gretap() -> bool {
    let ns = NetNs::new();
    ns.exec(&["ip", "link", "add", "g0", "type", "gretap", "local", "1.1.1.1", "remote", "1.1.1.2"]).status.success()
}

#[test]
fn gre_with_and_without_a_key() {
    let h = Hosts::new(44);
    // Two bridges on each side, one GRE port each to the same remote: no
    // key on br0, key 5 on br1; one local endpoint tells them apart.
    let (a0, pa0) = container(&h.a, "10.44.0.1/24", 1400);
    let (a1, pa1) = container(&h.a, "10.44.1.1/24", 1400);
    let (b0, pb0) = container(&h.b, "10.44.0.2/24", 1400);
    let (b1, pb1) = container(&h.b, "10.44.1.2/24", 1400);
    // Two datapath threads with the GRE ports on different ones (a port
    // goes to the thread with fewer): whichever thread reads the shared
    // socket hands the other's packets over and wakes it.
    let da = Daemon::start_netns_with(&h.a, &["--pmd-threads", "2"]);
    let remote = format!("options:remote_ip={}", h.ip(2));
    da.ok(&["add-br", "br0", "--", "add-port", "br0", &pa0, "--", "add-port", "br0", "gre0", "type=gre", &remote]);
    let key = "options:key=5";
    da.ok(&["add-br", "br1", "--", "add-port", "br1", "gre5", "type=gre", &remote, key, "--", "add-port", "br1", &pa1]);
    // Host B: the kernel's gretap where the kernel has it, else a second
    // switch (this machine's kernel is built without GRE).
    let kernel = kernel_has_gretap();
    let _db = if kernel {
        for (dev, key) in [("gt0", None), ("gt5", Some("5"))] {
            let mut args = vec!["ip", "link", "add", dev, "type", "gretap", "local", "", "remote", ""];
            let (l, r) = (h.ip(2), h.ip(1));
            args[7] = &l;
            args[9] = &r;
            if let Some(k) = key {
                args.extend(["key", k]);
            }
            h.b.run(&args);
        }
        kernel_bridge(&h.b, &["gt0", &pb0]);
        h.b.run(&["ip", "link", "add", "kbr1", "type", "bridge"]);
        for p in ["gt5", pb1.as_str()] {
            h.b.run(&["ip", "link", "set", p, "master", "kbr1"]);
            h.b.run(&["ip", "link", "set", p, "up"]);
        }
        h.b.run(&["ip", "link", "set", "kbr1", "up"]);
        None
    } else {
        eprintln!("this kernel has no gretap (CONFIG_NET_IPGRE): host B is a second vswitchd");
        let db = Daemon::start_netns(&h.b);
        let r = format!("options:remote_ip={}", h.ip(1));
        db.ok(&["add-br", "br0", "--", "add-port", "br0", &pb0, "--", "add-port", "br0", "gre0", "type=gre", &r]);
        db.ok(&[
            "add-br",
            "br1",
            "--",
            "add-port",
            "br1",
            &pb1,
            "--",
            "add-port",
            "br1",
            "gre5",
            "type=gre",
            &r,
            "options:key=5",
        ]);
        Some(db)
    };
    let dump = capture(&h.b, &h.b_if, "ip proto 47", 4);
    assert!(a0.ping("10.44.0.2", 2) && b0.ping("10.44.0.1", 2), "GRE without a key");
    let seen = captured(dump);
    assert!(seen.contains("GREv0, Flags [none]") && seen.contains("ICMP echo"), "tcpdump decodes our GRE: {seen}");
    let dump = capture(&h.b, &h.b_if, "ip proto 47", 4);
    assert!(a1.ping("10.44.1.2", 2) && b1.ping("10.44.1.1", 2), "GRE with key 5");
    let seen = captured(dump);
    assert!(seen.contains("key=0x5") && seen.contains("ICMP echo"), "and keyed GRE: {seen}");
    // The key separates the bridges: nothing of br1's crossed into br0.
    assert_eq!(da.json(&["fdb-show", "br0"]).as_array().unwrap().len(), 2);
    let r = iperf3(&a1, &b1, "10.44.1.2", 2);
    assert!(r.bytes > 5_000_000, "TCP over keyed GRE: {}", r.output.chars().take(3000).collect::<String>());

    // Malformed GRE (version 1; the routing bit) is counted on the port that
    // read it; traffic goes on.
    let py = format!(
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 47)\n\
         for pkt in (b'\\x00\\x01\\x65\\x58' + bytes(60), b'\\x40\\x00\\x65\\x58' + bytes(60)): s.sendto(pkt, ('{}', 0))",
        h.ip(1)
    );
    h.b.run(&["python3", "-c", &py]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let s = da.json(&["stats"]);
    let malformed: u64 = s["bridges"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["ports"].as_array().unwrap())
        .map(|p| p["drops"]["tunnel_malformed"].as_u64().unwrap())
        .sum();
    assert_eq!(malformed, 2, "{s}");
    assert!(a0.ping("10.44.0.2", 1), "still forwarding");
}

#[test]
fn flow_based_tunnel_chooses_key_and_remote_per_packet() {
    let h = Hosts::new(45);
    let (ca, pa, cb) = kernel_vxlan_site(&h, "4242");
    let d = Daemon::start_netns(&h.a);
    d.ok(&[
        "add-br",
        "br0",
        "--",
        "add-port",
        "br0",
        &pa,
        "--",
        "add-port",
        "br0",
        "vxf",
        "type=vxlan",
        "options:remote_ip=flow",
        "options:key=flow",
    ]);
    d.ok(&["del-flows", "br0"]);
    d.ok(&[
        "add-flow",
        "br0",
        &format!("in_port={pa},actions=set_tunnel:4242,set_field:{}->tun_dst,output:vxf", h.ip(2)),
    ]);
    d.ok(&["add-flow", "br0", &format!("in_port=vxf,tun_id=4242,tun_src={},actions=output:{pa}", h.ip(2))]);
    d.ok(&["add-flow", "br0", "priority=10,in_port=vxf,actions=drop"]);
    assert!(ca.ping("10.45.0.2", 3), "out with the key and remote the rule chose");
    assert!(cb.ping("10.45.0.1", 2), "and back, matched on tun_id and tun_src");
    let flows = d.json(&["dump-flows", "br0"]);
    let hits = flows.as_array().unwrap().iter().find(|f| f["match"].as_str().unwrap().contains("tun_id=0x1092"));
    assert!(hits.is_some_and(|f| f["n_packets"].as_u64().unwrap() >= 5), "{flows}");
    let t = d.ok(&["trace", "br0", &format!("in_port={pa},ip")]);
    assert!(t.contains(&format!("tunnel(vxlan,remote_ip={},key=4242),", h.ip(2))), "the rule's remote and key: {t}");
    // Without a tun_dst there is nowhere to send: counted, not guessed.
    d.ok(&["mod-flows", "br0", &format!("in_port={pa},actions=set_tunnel:4242,output:vxf")]);
    assert!(!ca.exec(&["ping", "-c", "1", "-W", "1", "10.45.0.2"]).status.success());
    assert!(drops(&d, "vxf", "tunnel_no_remote") >= 1);
}

/// examples/overlay.sh, on the binaries this test built.
#[test]
fn the_overlay_example_runs() {
    let text = common::run_script("examples/overlay.sh");
    assert_eq!(text.matches(": ok").count(), 12, "every pair of containers: {text}");
    assert!(text.ends_with("overlay ok\n"), "{text}");
}

/// The MAC of `dev` in `ns`.
fn mac_of(ns: &NetNs, dev: &str) -> String {
    let out = ns.exec(&["cat", &format!("/sys/class/net/{dev}/address")]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Native tunnelling against the kernel's vxlan: host A's switch sends and
/// receives VXLAN through an uplink port of type `uplink_type` on its
/// underlay interface (its own outer headers, next hop resolved by ARP),
/// host B is the kernel's vxlan device and bridge.
fn native_vxlan_interop(subnet: u8, uplink_type: &str) {
    let h = Hosts::new(subnet);
    let vni = (subnet as u32 + 100).to_string();
    let (ca, pa, cb) = kernel_vxlan_site(&h, &vni);
    let c_b = format!("10.{subnet}.0.2");
    let c_a = format!("10.{subnet}.0.1");
    let d = Daemon::start_netns(&h.a);
    let ty = format!("type={uplink_type}");
    d.ok(&["add-br", "br-phy", "--", "add-port", "br-phy", &h.a_if, &ty]);
    d.ok(&["add-br", "br0", "--", "add-port", "br0", &pa]);
    let (remote, key, uplink) =
        (format!("options:remote_ip={}", h.ip(2)), format!("options:key={vni}"), format!("options:uplink={}", h.a_if));
    d.ok(&["add-port", "br0", "vxa", "type=vxlan", &remote, &key, &uplink]);
    let row = port_row(&d, "br0", "vxa");
    assert_eq!(row["status"]["uplink"], h.a_if.as_str(), "{row}");
    assert_eq!(row["status"]["local_endpoint"], format!("{}:4789", h.ip(1)), "{row}");
    assert_eq!(row["status"]["inner_mtu"], "1450", "{row}");
    // The tunnel's next hop: the connected route through the uplink.
    let routes = d.ok(&["tnl-route-show"]);
    assert!(routes.contains(&format!("192.168.{subnet}.0/24 dev {} ", h.a_if)), "{routes}");
    assert!(routes.contains(&format!("uplink {}", h.a_if)), "{routes}");

    let dump = capture(&h.b, &h.b_if, &format!("src host {} and udp port 4789", h.ip(1)), 4);
    assert!(ca.ping(&c_b, 3), "container A -> container B over native VXLAN ({uplink_type} uplink)");
    assert!(cb.ping(&c_a, 3), "and back");
    let seen = captured(dump);
    assert!(seen.contains(&format!("VXLAN, flags [I] (0x08), vni {vni}")), "tcpdump decodes our VXLAN: {seen}");
    assert!(seen.contains(&format!("{}.", h.ip(1))) && seen.contains(".4789:"), "outer UDP to 4789: {seen}");
    assert!(seen.contains("udp sum ok") || seen.contains("[no cksum]"), "outer UDP checksum: {seen}");

    // Resolved by ARP: host B's MAC behind the uplink.
    let neigh = d.json(&["tnl-neigh-show"]);
    let b_mac = mac_of(&h.b, &h.b_if);
    assert!(
        neigh
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["ip"] == h.ip(2) && n["mac"] == b_mac.as_str() && n["uplink"] == h.a_if.as_str()),
        "{neigh} (want {} at {b_mac})",
        h.ip(2)
    );

    // TCP both ways.
    for (from, to, ip) in [(&ca, &cb, &c_b), (&cb, &ca, &c_a)] {
        let r = iperf3(from, to, ip, 2);
        let stats = d.json(&["stats"]);
        assert!(
            r.bytes > 5_000_000,
            "iperf3 across native VXLAN ({uplink_type}): {}; {stats}",
            r.output.chars().take(600).collect::<String>()
        );
    }

    // The outer frames went through the uplink port and were counted there
    // (and the tunnel's own packets on the tunnel port).
    let up = d.json(&["stats", "br-phy", &h.a_if]);
    let up = &up["bridges"][0]["ports"][0];
    assert!(up["tx_packets"].as_u64().unwrap() > 1000 && up["rx_packets"].as_u64().unwrap() > 1000, "{up}");
    let tun = d.json(&["stats", "br0", "vxa"]);
    let tun = &tun["bridges"][0]["ports"][0];
    assert!(tun["tx_packets"].as_u64().unwrap() > 1000 && tun["rx_packets"].as_u64().unwrap() > 1000, "{tun}");

    // Too big once encapsulated: dropped and counted on the tunnel port.
    ca.run(&["ip", "link", "set", "eth0", "mtu", "1500"]);
    let before = drops(&d, "vxa", "too_big");
    let big = ca.exec(&["ping", "-c", "2", "-W", "1", "-s", "1472", "-M", "do", &c_b]);
    assert!(!big.status.success(), "a 1514-byte frame does not fit a 1500-byte underlay after 50 bytes of VXLAN");
    assert!(drops(&d, "vxa", "too_big") >= before + 2, "counted as too_big");
    assert!(ca.ping(&c_b, 2), "smaller frames still pass");

    // Taking the uplink away takes the tunnel's link down; putting it back
    // brings it up again.
    d.ok(&["del-port", &h.a_if]);
    let link = |d: &Daemon| d.json(&["stats", "br0", "vxa"])["bridges"][0]["ports"][0]["link_up"].clone();
    // The datapath reads link states at its housekeeping, ten times a second.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while link(&d) != false && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(link(&d), false, "the tunnel's link is down without its uplink");
    d.ok(&["add-port", "br-phy", &h.a_if, &ty]);
    assert!(ca.ping(&c_b, 5), "the tunnel works again through the re-added uplink");
}

#[test]
fn native_vxlan_through_an_afxdp_uplink_interoperates_with_the_kernels_vxlan() {
    native_vxlan_interop(43, "afxdp");
}

#[test]
fn native_vxlan_through_an_afpacket_uplink_interoperates_with_the_kernels_vxlan() {
    native_vxlan_interop(44, "afpacket");
}

#[test]
fn native_tunnel_resolves_its_next_hop_by_arp_ages_it_and_follows_route_changes() {
    // Host B's VTEP address sits behind a gateway: 172.31.45.2 on its lo,
    // reached from A via 192.168.45.2 at first, then via 192.168.45.3 (a
    // second address of B's underlay interface).
    let h = Hosts::new(45);
    let (ca, pa) = container(&h.a, "10.45.0.1/24", 1450);
    let (cb, pb) = container(&h.b, "10.45.0.2/24", 1450);
    h.b.run(&["ip", "addr", "add", "172.31.45.2/32", "dev", "lo"]);
    h.b.run(&["ip", "addr", "add", "192.168.45.3/24", "dev", &h.b_if]);
    h.b.run(&[
        "ip",
        "link",
        "add",
        "vx0",
        "type",
        "vxlan",
        "id",
        "45",
        "remote",
        "192.168.45.1",
        "local",
        "172.31.45.2",
        "dstport",
        "4789",
    ]);
    kernel_bridge(&h.b, &["vx0", &pb]);
    h.a.run(&["ip", "route", "add", "172.31.45.2/32", "via", "192.168.45.2"]);
    // No unprompted IPv6 (router solicitations, MLD reports) from the
    // containers or host B: the only traffic over the tunnel is the test's,
    // so the first ARP request is the one the test's first packet causes.
    for ns in [&ca, &cb, &h.b] {
        ns.run(&["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"]);
        ns.run(&["sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=1"]);
    }

    let d = Daemon::start_netns(&h.a);
    d.ok(&["tnl-neigh-aging", "4"]);
    assert!(d.ok(&["tnl-neigh-aging"]).contains("seconds: 4"));
    let uplink = format!("options:uplink={}", h.a_if);
    d.ok(&["add-br", "br-phy", "--", "add-port", "br-phy", &h.a_if, "type=afxdp"]);
    d.ok(&["add-br", "br0", "--", "add-port", "br0", &pa]);
    d.ok(&["add-port", "br0", "vxa", "type=vxlan", "options:remote_ip=172.31.45.2", "options:key=45", &uplink]);
    assert!(d.json(&["tnl-neigh-show"]).as_array().unwrap().is_empty(), "nothing resolved before any traffic");
    let routes = d.ok(&["tnl-route-show"]);
    assert!(routes.contains(&format!("172.31.45.2/32 via 192.168.45.2 dev {}", h.a_if)), "{routes}");

    // The first packet to the unresolved next hop sends an ARP request for
    // the gateway (not the remote), and is counted as a neighbour miss.
    let arp = capture(&h.b, &h.b_if, "arp", 1);
    assert!(ca.ping("10.45.0.2", 5), "over native VXLAN behind a gateway");
    let seen = captured(arp);
    assert!(seen.contains("Request who-has 192.168.45.2 tell 192.168.45.1"), "{seen}");
    assert!(drops(&d, "vxa", "tunnel_no_neighbour") >= 1);
    let gw = |d: &Daemon, ip: &str| d.json(&["tnl-neigh-show"]).as_array().unwrap().iter().any(|n| n["ip"] == ip);
    assert!(gw(&d, "192.168.45.2"));
    assert!(!gw(&d, "172.31.45.2"), "the remote itself is not a neighbour");

    // In use, the entry is asked for again at half its aging: 7 s of pings
    // with a 4 s aging lose none once resolved.
    let misses = drops(&d, "vxa", "tunnel_no_neighbour");
    let out = ca.exec(&["ping", "-c", "20", "-i", "0.35", "-W", "1", "10.45.0.2"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("20 received"), "a busy flow never sees its neighbour expire: {text}");
    assert_eq!(drops(&d, "vxa", "tunnel_no_neighbour"), misses, "no miss while in use");

    // Idle, it ages out.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while gw(&d, "192.168.45.2") && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    assert!(!gw(&d, "192.168.45.2"), "aged out: {}", d.ok(&["tnl-neigh-show"]));

    // A route change is followed: the next hop becomes .3, which is
    // resolved in its turn.
    h.a.run(&["ip", "route", "replace", "172.31.45.2/32", "via", "192.168.45.3"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !d.ok(&["tnl-route-show"]).contains("172.31.45.2/32 via 192.168.45.3") && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let arp = capture(&h.b, &h.b_if, "arp and host 192.168.45.3", 1);
    assert!(ca.ping("10.45.0.2", 5), "through the new next hop");
    let seen = captured(arp);
    assert!(seen.contains("Request who-has 192.168.45.3 tell 192.168.45.1"), "{seen}");
    assert!(gw(&d, "192.168.45.3"), "{}", d.ok(&["tnl-neigh-show"]));
    assert!(cb.ping("10.45.0.1", 2), "and back");

    // A multipath route: one of its next hops (both through the uplink).
    h.a.run(&[
        "ip",
        "route",
        "replace",
        "172.31.45.2/32",
        "nexthop",
        "via",
        "192.168.45.2",
        "nexthop",
        "via",
        "192.168.45.3",
    ]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while d.ok(&["tnl-route-show"]).matches("172.31.45.2/32 via").count() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(d.ok(&["tnl-route-show"]).matches("172.31.45.2/32 via").count(), 2, "{}", d.ok(&["tnl-route-show"]));
    assert!(ca.ping("10.45.0.2", 5), "over a multipath route");
    // A blackhole route refuses, as the kernel would: counted, nothing sent.
    h.a.run(&["ip", "route", "replace", "blackhole", "172.31.45.2/32"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !d.ok(&["tnl-route-show"]).contains("blackhole 172.31.45.2/32") && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let before = drops(&d, "vxa", "tunnel_no_route");
    assert!(!ca.ping("10.45.0.2", 2), "a blackholed remote is not reached");
    assert!(drops(&d, "vxa", "tunnel_no_route") > before, "counted as tunnel_no_route");
    h.a.run(&["ip", "route", "replace", "172.31.45.2/32", "via", "192.168.45.3"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !d.ok(&["tnl-route-show"]).contains("172.31.45.2/32 via 192.168.45.3") && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // Flushed, it is resolved again on demand.
    assert!(d.ok(&["tnl-neigh-flush"]).contains("flushed: "));
    assert!(!gw(&d, "192.168.45.3"));
    assert!(ca.ping("10.45.0.2", 5));
    assert!(gw(&d, "192.168.45.3"));

    // A bad aging time is refused and changes nothing.
    assert!(!d.ctl(&["tnl-neigh-aging", "0"]).status.success());
    assert!(d.ok(&["tnl-neigh-aging"]).contains("seconds: 4"));
}

#[test]
fn a_native_tunnel_refuses_a_bad_uplink() {
    let h = Hosts::new(46);
    let (_ca, pa) = container(&h.a, "10.46.0.1/24", 1450);
    let d = Daemon::start_netns(&h.a);
    d.ok(&["add-br", "br0", "--", "add-port", "br0", &pa]);
    let no = d.ctl(&["add-port", "br0", "vx", "type=vxlan", "options:remote_ip=192.168.46.2", "options:uplink=nope"]);
    assert!(!no.status.success() && String::from_utf8_lossy(&no.stderr).contains("no such port"), "{no:?}");
    let same = format!("options:uplink={pa}");
    let loopy = d.ctl(&["add-port", "br0", "vx", "type=vxlan", "options:remote_ip=192.168.46.2", &same]);
    assert!(!loopy.status.success() && String::from_utf8_lossy(&loopy.stderr).contains("another bridge"), "{loopy:?}");
    assert_eq!(d.json(&["list-ports", "br0"]).as_array().unwrap().len(), 1, "nothing half added");
}

/// Two switches joined by a native `kind` tunnel over AF_PACKET uplinks:
/// a sender's super-frames enter whole, are cut to the underlay's MTU only
/// to cross it, and are merged again before the far container.
fn native_between_two_switches(subnet: u8, kind: &str) {
    let h = Hosts::new(subnet);
    let (ca, pa) = container(&h.a, &format!("10.{subnet}.0.1/24"), 1450);
    let (cb, pb) = container(&h.b, &format!("10.{subnet}.0.2/24"), 1450);
    let (ip_a, ip_b) = (format!("10.{subnet}.0.1"), format!("10.{subnet}.0.2"));
    let ty = format!("type={kind}");
    let mut daemons = Vec::new();
    for (ns, uplink, port, remote) in [(&h.a, &h.a_if, &pa, h.ip(2)), (&h.b, &h.b_if, &pb, h.ip(1))] {
        let d = Daemon::start_netns(ns);
        d.ok(&["add-br", "br-phy", "--", "add-port", "br-phy", uplink]);
        d.ok(&["add-br", "br0", "--", "add-port", "br0", port]);
        let (remote, uplink) = (format!("options:remote_ip={remote}"), format!("options:uplink={uplink}"));
        d.ok(&["add-port", "br0", "vx", &ty, &remote, "options:key=47", &uplink]);
        daemons.push(d);
    }
    assert!(ca.ping(&ip_b, 5), "across the native {kind} overlay");
    assert!(cb.ping(&ip_a, 2), "and back");
    let r = iperf3(&ca, &cb, &ip_b, 2);
    assert!(r.bytes > 5_000_000, "iperf3: {}", r.output.chars().take(600).collect::<String>());
    let port_stats = |d: &Daemon, port: &str| {
        let s = d.json(&["stats", "br0", port]);
        s["bridges"][0]["ports"][0].clone()
    };
    // Sender's side: the container port receives super-frames.
    let a = port_stats(&daemons[0], &pa);
    let a_avg = a["rx_bytes"].as_u64().unwrap() / a["rx_packets"].as_u64().unwrap().max(1);
    // Receiver's side: what the container port sends is merged again.
    let b = port_stats(&daemons[1], &pb);
    let b_avg = b["tx_bytes"].as_u64().unwrap() / b["tx_packets"].as_u64().unwrap().max(1);
    // The tunnel ports between them carried MTU-sized segments.
    let vx = port_stats(&daemons[1], "vx");
    let vx_avg = vx["rx_bytes"].as_u64().unwrap() / vx["rx_packets"].as_u64().unwrap().max(1);
    assert!(a_avg > 4_000, "frames from the sender average {a_avg} bytes: {a}");
    assert!(b_avg > 4_000, "frames to the receiver average {b_avg} bytes: {b}");
    assert!(vx_avg > 4_000, "the far tunnel port hands over merged frames ({vx_avg} bytes on average): {vx}");
}

#[test]
fn tcp_super_frames_cross_a_native_vxlan_overlay_whole_on_both_sides() {
    native_between_two_switches(47, "vxlan");
}

#[test]
fn native_gre_joins_two_switches_with_super_frames_whole_on_both_sides() {
    native_between_two_switches(48, "gre");
}
