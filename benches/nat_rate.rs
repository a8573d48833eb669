//! Masquerade through veth, this switch against the Linux kernel's own,
//! in the same run: a container namespace reaches an "outside" namespace
//! through a host namespace that masquerades it behind 192.0.2.1.
//!
//! - `kernel`: a Linux bridge with the container's veth and the gateway
//!   address, IP forwarding, and nftables `masquerade` (nf_conntrack).
//! - `afpacket`, `afpsock`, `afxdp`: this switch on AF_PACKET ports (the
//!   default type; `afpsock` with `options:rx_mode=socket`, recvmmsg) or
//!   AF_XDP ports, with examples/conntrack/host.flows (ct() with
//!   nat(src=192.0.2.1)).
//!
//! Measured for each, repetitions interleaved: iperf3 TCP throughput
//! (container to outside), and TCP connections per second (a client
//! that connects, reads the greeting and closes, in a loop, against a
//! server that accepts and greets), each connection a new conntrack
//! entry with a NAT port mapping.
//!
//! Run as root: `cargo run --release -p vswitch-benches --bin nat-rate -- [SECONDS] [REPETITIONS]`

use std::time::Duration;

use vswitch_core::config::{PortKind, PortSpec};
use vswitch_core::{OnOpenError, Switch};
use vswitch_tests::netns::{NetNs, iperf3, veth_between};

const GW_MAC: &str = "02:00:00:00:00:01";

/// `--switch FLOWS TYPE`: the switch in the host namespace, until killed.
fn run_switch(flows: &str, kind: PortKind, socket: bool) {
    let sw = Switch::builder().build().expect("switch");
    sw.add_bridge("br0").unwrap();
    for (name, no) in [("hc", 1), ("hu", 3)] {
        let mut p = PortSpec::new(name, kind);
        if socket {
            p.options.insert("rx_mode".into(), "socket".into());
        }
        p.port_no = Some(no);
        sw.add_port_spec("br0", &p, OnOpenError::Fail).expect("port");
    }
    let text = std::fs::read_to_string(flows).expect("flows file");
    let rules: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    sw.del_flows("br0", None, false).unwrap();
    sw.add_flows("br0", &rules).expect("flows");
    println!("ready");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

struct Lab {
    c: NetNs,
    host: NetNs,
    ext: NetNs,
}

fn lab(kernel: bool) -> Lab {
    let l = Lab { c: NetNs::new(), host: NetNs::new(), ext: NetNs::new() };
    veth_between(&l.c, "eth0", &l.host, "hc");
    veth_between(&l.host, "hu", &l.ext, "eth0");
    l.c.run(&["ip", "addr", "add", "10.88.0.2/24", "dev", "eth0"]);
    l.ext.run(&["ip", "addr", "add", "192.0.2.50/24", "dev", "eth0"]);
    if kernel {
        let h = &l.host;
        h.run(&["ip", "link", "add", "br0", "type", "bridge"]);
        h.run(&["ip", "link", "set", "hc", "master", "br0"]);
        h.run(&["ip", "link", "set", "br0", "up"]);
        h.run(&["ip", "addr", "add", "10.88.0.1/24", "dev", "br0"]);
        h.run(&["ip", "addr", "add", "192.0.2.1/24", "dev", "hu"]);
        h.run(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
        h.run(&[
            "nft",
            "add table ip nat; add chain ip nat post { type nat hook postrouting priority 100; }; add rule ip nat post oifname hu ip saddr 10.88.0.0/24 masquerade",
        ]);
    } else {
        l.c.run(&["ip", "link", "set", "dev", "eth0", "address", "02:88:00:00:00:02"]);
        l.ext.run(&["ip", "link", "set", "dev", "eth0", "address", "02:00:02:00:00:32"]);
        l.c.run(&["ip", "neigh", "replace", "10.88.0.1", "lladdr", GW_MAC, "dev", "eth0", "nud", "permanent"]);
        l.ext.run(&["ip", "neigh", "replace", "192.0.2.1", "lladdr", GW_MAC, "dev", "eth0", "nud", "permanent"]);
    }
    l.c.run(&["ip", "route", "add", "default", "via", "10.88.0.1"]);
    l
}

const SERVER: &str = r#"
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("192.0.2.50", 8000))
s.listen(1024)
while True:
    c, _ = s.accept()
    c.sendall(b"hi")
    c.close()
"#;

const CLIENT: &str = r#"
import socket, sys, time
end = time.time() + float(sys.argv[1])
n = 0
failed = 0
while time.time() < end:
    try:
        c = socket.create_connection(("192.0.2.50", 8000), timeout=1)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        c.recv(2)
        c.close()
        n += 1
    except OSError:
        failed += 1
if failed:
    print("%d connections failed" % failed, file=sys.stderr)
print(n / float(sys.argv[1]))
"#;

/// (TCP Gbit/s, connections per second).
fn measure(l: &Lab, seconds: u32) -> (f64, f64) {
    let tcp = iperf3(&l.c, &l.ext, "192.0.2.50", seconds);
    let mut srv = l.ext.spawn(&["python3", "-c", SERVER]);
    std::thread::sleep(Duration::from_millis(300));
    let out = l.c.exec(&["python3", "-c", CLIENT, &seconds.to_string()]);
    let _ = srv.kill();
    let _ = srv.wait();
    let cps: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0.0);
    if cps == 0.0 {
        eprintln!("connection client: {}", String::from_utf8_lossy(&out.stderr));
    }
    (tcp.bits_per_second / 1e9, cps)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--switch") {
        let kind = if args.get(3).map(String::as_str) == Some("afxdp") { PortKind::AfXdp } else { PortKind::AfPacket };
        let socket = args.get(3).map(String::as_str) == Some("afpsock");
        return run_switch(&args[2], kind, socket);
    }
    let seconds: u32 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let reps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3);
    let flows = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/conntrack/host.flows");
    let me = std::env::current_exe().expect("own path");
    let mut results: Vec<(&str, Vec<f64>, Vec<f64>)> = vec![
        ("kernel", vec![], vec![]),
        ("afpacket", vec![], vec![]),
        ("afpsock", vec![], vec![]),
        ("afxdp", vec![], vec![]),
    ];
    for rep in 0..reps {
        for (name, tcp, cps) in results.iter_mut() {
            let kernel = *name == "kernel";
            let l = lab(kernel);
            let mut sw = None;
            if !kernel {
                let mut child = l.host.spawn(&[me.to_str().unwrap(), "--switch", flows.to_str().unwrap(), name]);
                std::thread::sleep(Duration::from_secs(1));
                if let Ok(Some(s)) = child.try_wait() {
                    panic!("the switch exited: {s}");
                }
                sw = Some(child);
            }
            let (t, c) = measure(&l, seconds);
            eprintln!("rep {rep} {name}: TCP {t:.2} Gbit/s, {c:.0} connections/s");
            tcp.push(t);
            cps.push(c);
            if let Some(mut s) = sw {
                let _ = s.kill();
                let _ = s.wait();
            }
        }
    }
    let mut med: Vec<(f64, f64)> = Vec::new();
    for (_, t, c) in results.iter_mut() {
        med.push((median(t), median(c)));
    }
    let (kt, kc) = med[0];
    println!("| masquerade (median of {reps}) | TCP Gbit/s | vs kernel | TCP connections/s | vs kernel |");
    println!("|---|---|---|---|---|");
    println!("| Linux bridge + nft masquerade | {kt:.2} | 1.00x | {kc:.0} | 1.00x |");
    for ((name, _, _), (t, c)) in results.iter().zip(&med).skip(1) {
        println!("| vswitch ct(nat), {name} ports | {t:.2} | {:.2}x | {c:.0} | {:.2}x |", t / kt, c / kc);
    }
}
