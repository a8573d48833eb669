//! Forwarding rate through a VXLAN overlay over veth: generator namespace
//! -> host A -> underlay veth -> host B -> sink namespace, with the overlay
//! made by this switch on both hosts (an AF_PACKET port and a VXLAN port
//! each) and then by the kernel (a `vxlan` device and a Linux bridge on
//! each host), measured in the same run with the same generator; then
//! iperf3 TCP through each.
//!
//! Run as root: `cargo run --release -p vswitch-benches --bin tunnel-rate -- [SECONDS] [FLOWS]`
//!
//! Each host's switch is this program re-run in the host's namespace
//! (`--switch`), so its tunnel socket is that namespace's. The generator
//! and the sink are as in `veth-rate`. Four parties share this machine's
//! two cores: read the ratio between the two overlays, not the absolute
//! rates.

use std::process::Child;
use std::time::{Duration, Instant};

use vswitch_benches::{counter, generate, mac_of};
use vswitch_core::config::PortSpec;
use vswitch_core::{MacAddr, OnOpenError, PortConfig, Switch};
use vswitch_tests::netns::{NetNs, iperf3, veth_between};
use vswitch_tests::process_cpu_seconds;

const VNI: &str = "42";

/// `--switch ACCESS REMOTE`: a switch joining `ACCESS` to a VXLAN port
/// towards `REMOTE`, until killed.
fn run_switch(access: &str, remote: &str) {
    let sw = Switch::builder().build().expect("switch");
    sw.add_bridge("br0").unwrap();
    sw.add_afpacket_port("br0", access, PortConfig::default()).expect("access port");
    let mut vx = PortSpec::new("vx0", vswitch_core::config::PortKind::Vxlan);
    vx.options.insert("remote_ip".into(), remote.into());
    vx.options.insert("key".into(), VNI.into());
    sw.add_port_spec("br0", &vx, OnOpenError::Fail).expect("vxlan port");
    println!("ready");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

struct Lab {
    generator: NetNs,
    a: NetNs,
    b: NetNs,
    sink: NetNs,
}

impl Lab {
    fn new() -> Lab {
        let lab = Lab { generator: NetNs::new(), a: NetNs::new(), b: NetNs::new(), sink: NetNs::new() };
        veth_between(&lab.generator, "eth0", &lab.a, "ga");
        veth_between(&lab.a, "ua", &lab.b, "ub");
        veth_between(&lab.b, "sb", &lab.sink, "eth0");
        for (ns, cidr) in [(&lab.generator, "10.97.0.1/24"), (&lab.sink, "10.97.0.2/24")] {
            ns.run(&["ip", "addr", "add", cidr, "dev", "eth0"]);
            // The overlay's inner MTU over a 1500-byte underlay.
            ns.run(&["ip", "link", "set", "eth0", "mtu", "1450"]);
        }
        lab.a.run(&["ip", "addr", "add", "192.168.97.1/24", "dev", "ua"]);
        lab.b.run(&["ip", "addr", "add", "192.168.97.2/24", "dev", "ub"]);
        lab
    }
}

struct Measured {
    device: &'static str,
    offered_pps: f64,
    delivered_pps: f64,
    cpu: Option<f64>,
    tcp_gbps: f64,
}

fn measure(device: &'static str, lab: &Lab, seconds: u64, flows: u32, switches: &[u32]) -> Measured {
    let me = std::env::current_exe().expect("own path");
    let dst: MacAddr = mac_of(&lab.sink, "eth0");
    let before = counter(&lab.sink, "eth0", "rx_packets");
    let c0: f64 = switches.iter().map(|&p| process_cpu_seconds(&p.to_string()).unwrap_or(0.0)).sum();
    let t0 = Instant::now();
    let args = [me.to_str().unwrap(), "--generate", "eth0", &dst.to_string(), &seconds.to_string(), &flows.to_string()];
    let out = lab.generator.exec(&args);
    assert!(out.status.success(), "generator failed: {}", String::from_utf8_lossy(&out.stderr));
    std::thread::sleep(Duration::from_millis(300)); // let queues drain
    let secs = t0.elapsed().as_secs_f64();
    let c1: f64 = switches.iter().map(|&p| process_cpu_seconds(&p.to_string()).unwrap_or(0.0)).sum();
    let sent: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
    let got = counter(&lab.sink, "eth0", "rx_packets") - before;
    let tcp = iperf3(&lab.generator, &lab.sink, "10.97.0.2", seconds.min(3) as u32);
    Measured {
        device,
        offered_pps: sent as f64 / seconds as f64,
        delivered_pps: got as f64 / seconds as f64,
        cpu: (!switches.is_empty()).then_some((c1 - c0) / secs),
        tcp_gbps: tcp.bits_per_second / 1e9,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--generate") => {
            return generate(
                &args[2],
                args[3].parse().expect("MAC"),
                args[4].parse().unwrap(),
                args[5].parse().unwrap(),
            );
        }
        Some("--switch") => return run_switch(&args[2], &args[3]),
        _ => {}
    }
    let seconds: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let flows: u32 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1);
    let lab = Lab::new();
    let me = std::env::current_exe().expect("own path");
    let mut results = Vec::new();
    {
        // This switch on both hosts.
        let mut hosts: Vec<Child> = [(&lab.a, "ga", "192.168.97.2"), (&lab.b, "sb", "192.168.97.1")]
            .into_iter()
            .map(|(ns, access, remote)| ns.spawn(&[me.to_str().unwrap(), "--switch", access, remote]))
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        assert!(lab.generator.ping("10.97.0.2", 2), "the overlay works");
        let pids: Vec<u32> = hosts.iter().map(Child::id).collect();
        results.push(measure("vswitch-vxlan", &lab, seconds, flows, &pids));
        for h in &mut hosts {
            let _ = h.kill();
            let _ = h.wait();
        }
    }
    {
        // The kernel: a vxlan device and a Linux bridge on each host.
        for (ns, access, remote) in [(&lab.a, "ga", "192.168.97.2"), (&lab.b, "sb", "192.168.97.1")] {
            // A plain bridge: no iptables on bridged frames (these settings
            // are per namespace, and exist only with br_netfilter loaded).
            for f in ["iptables", "ip6tables", "arptables"] {
                let _ = ns.exec(&["sysctl", "-qw", &format!("net.bridge.bridge-nf-call-{f}=0")]);
            }
            ns.run(&["ip", "link", "add", "vx0", "type", "vxlan", "id", VNI, "remote", remote, "dstport", "4789"]);
            ns.run(&["ip", "link", "add", "kbr", "type", "bridge"]);
            for dev in ["vx0", access] {
                ns.run(&["ip", "link", "set", dev, "master", "kbr"]);
                ns.run(&["ip", "link", "set", dev, "up"]);
            }
            ns.run(&["ip", "link", "set", "kbr", "up"]);
        }
        assert!(lab.generator.ping("10.97.0.2", 2), "the kernel overlay works");
        results.push(measure("kernel-vxlan+bridge", &lab, seconds, flows, &[]));
    }
    println!("\nVXLAN overlay, 64-byte inner frames, {flows} flow(s), {seconds} s per device, same run:\n");
    println!(
        "| overlay | offered (Mpps) | delivered (Mpps) | loss | switch CPU (cores, both hosts) | iperf3 TCP (Gbit/s) |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for r in &results {
        let loss = (1.0 - r.delivered_pps / r.offered_pps.max(1.0)).max(0.0);
        let cpu = r.cpu.map_or("in softirq".to_string(), |c| format!("{c:.2}"));
        println!(
            "| {} | {:.3} | {:.3} | {:.1} % | {cpu} | {:.2} |",
            r.device,
            r.offered_pps / 1e6,
            r.delivered_pps / 1e6,
            loss * 100.0,
            r.tcp_gbps
        );
    }
    let (v, k) = (&results[0], &results[1]);
    println!(
        "\nvswitch-vxlan / kernel: delivered {:.2}x, TCP {:.2}x",
        v.delivered_pps / k.delivered_pps.max(1.0),
        v.tcp_gbps / k.tcp_gbps.max(1e-9)
    );
}
