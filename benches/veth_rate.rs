//! Forwarding rate over veth: generator namespace -> device under test ->
//! sink namespace, 64-byte frames, this switch (AF_PACKET ports, then
//! AF_XDP ports) and the Linux bridge measured in the same run with the
//! same generator; then
//! iperf3 TCP through each (default offloads).
//!
//! Run as root: `cargo run --release -p vswitch-benches --bin veth-rate -- [SECONDS] [FLOWS]`
//!
//! The generator is this program re-run inside the generator namespace
//! (`--generate`): it sends prebuilt frames through an AF_PACKET port of
//! the switch's own code (sendmmsg, 32 frames a call) as fast as it can.
//! The sink is the receiving veth's own counter, so receiving costs no
//! user-space work. Everything shares this machine's cores: read the
//! ratio between the devices, not the absolute rates.

use std::process::Command;
use std::time::{Duration, Instant};

use vswitch_benches::{counter, generate, mac_of};
use vswitch_core::{MacAddr, PortConfig, Switch};
use vswitch_tests::cpu_seconds;
use vswitch_tests::netns::{NetNs, Veth, iperf3, run, unique};

struct Measured {
    device: &'static str,
    offered_pps: f64,
    delivered_pps: f64,
    dut_cpu: Option<f64>,
    tcp_gbps: f64,
}

/// iperf3 TCP for `seconds` from the generator to the sink namespace,
/// with the kernel's default offloads; Gbit/s received.
fn tcp_gbps(generator: &NetNs, sink: &NetNs, seconds: u64) -> f64 {
    iperf3(generator, sink, "10.96.0.2", seconds as u32).bits_per_second / 1e9
}

/// Runs the generator for `seconds` and measures what reaches the sink.
fn measure(
    device: &'static str,
    generator: &NetNs,
    gen_if: &str,
    sink: &NetNs,
    sink_if: &str,
    seconds: u64,
    flows: u32,
) -> Measured {
    let me = std::env::current_exe().expect("own path");
    let dst = mac_of(sink, sink_if);
    let before = counter(sink, sink_if, "rx_packets");
    let (t0, c0) = (Instant::now(), cpu_seconds());
    let out = generator.exec(&[
        me.to_str().unwrap(),
        "--generate",
        gen_if,
        &dst.to_string(),
        &seconds.to_string(),
        &flows.to_string(),
    ]);
    assert!(out.status.success(), "generator failed: {}", String::from_utf8_lossy(&out.stderr));
    std::thread::sleep(Duration::from_millis(200)); // let queues drain
    let secs = t0.elapsed().as_secs_f64() - 0.2;
    let cpu = (cpu_seconds() - c0) / secs;
    let sent: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
    let got = counter(sink, sink_if, "rx_packets") - before;
    Measured {
        device,
        offered_pps: sent as f64 / seconds as f64,
        delivered_pps: got as f64 / seconds as f64,
        dut_cpu: (device != "linux-bridge").then_some(cpu),
        tcp_gbps: tcp_gbps(generator, sink, seconds.min(3)),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--generate") {
        let dst: MacAddr = args[3].parse().expect("MAC");
        generate(&args[2], dst, args[4].parse().unwrap(), args[5].parse().unwrap());
        return;
    }
    let seconds: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let flows: u32 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1);
    let (generator, sink) = (NetNs::new(), NetNs::new());
    let (vg, vs) = (Veth::new(&generator, "10.96.0.1/24"), Veth::new(&sink, "10.96.0.2/24"));
    let mut results = Vec::new();
    for device in ["vswitch-afpacket", "vswitch-afxdp"] {
        let sw = Switch::builder().build().expect("switch");
        sw.add_bridge("br0").unwrap();
        for host in [&vg.host, &vs.host] {
            match device {
                "vswitch-afpacket" => sw.add_afpacket_port("br0", host, PortConfig::default()).unwrap(),
                _ => sw.add_afxdp_port("br0", host, PortConfig::default()).unwrap(),
            };
        }
        // The sink's MAC must be learned or every frame is flooded.
        assert!(sink.ping("10.96.0.1", 1), "the topology works");
        results.push(measure(device, &generator, &vg.inner, &sink, &vs.inner, seconds, flows));
        std::thread::sleep(Duration::from_millis(200)); // a housekeeping tick reads the kernel's ring drops
        for p in &sw.stats().bridges[0].ports {
            let drops: Vec<String> = p.drops.iter().filter(|(_, n)| **n > 0).map(|(r, n)| format!("{r}={n}")).collect();
            eprintln!("{device} port {}: rx {} tx {} drops [{}]", p.name, p.rx_packets, p.tx_packets, drops.join(" "));
        }
    }
    {
        // The Linux bridge, same veths, same generator.
        for f in ["iptables", "ip6tables", "arptables"] {
            let _ = std::fs::write(format!("/proc/sys/net/bridge/bridge-nf-call-{f}"), "0");
        }
        let br = unique("vbr");
        run(&["ip", "link", "add", &br, "type", "bridge"]);
        run(&["ip", "link", "set", &vg.host, "master", &br]);
        run(&["ip", "link", "set", &vs.host, "master", &br]);
        run(&["ip", "link", "set", &br, "up"]);
        assert!(sink.ping("10.96.0.1", 1), "the bridge works");
        results.push(measure("linux-bridge", &generator, &vg.inner, &sink, &vs.inner, seconds, flows));
        let _ = Command::new("ip").args(["link", "del", &br]).status();
    }
    println!("\n64-byte frames, {flows} flow(s), {seconds} s per device, same run:\n");
    println!("| device | offered (Mpps) | delivered (Mpps) | loss | DUT CPU (cores) | iperf3 TCP (Gbit/s) |");
    println!("|---|---:|---:|---:|---:|---:|");
    for r in &results {
        let loss = (1.0 - r.delivered_pps / r.offered_pps.max(1.0)).max(0.0);
        let cpu = r.dut_cpu.map_or("in softirq".to_string(), |c| format!("{c:.2}"));
        println!(
            "| {} | {:.3} | {:.3} | {:.1} % | {cpu} | {:.1} |",
            r.device,
            r.offered_pps / 1e6,
            r.delivered_pps / 1e6,
            loss * 100.0,
            r.tcp_gbps
        );
    }
    let bridge = results.iter().find(|r| r.device == "linux-bridge").expect("measured");
    println!();
    for v in results.iter().filter(|r| r.device != "linux-bridge") {
        println!(
            "{} / linux-bridge: delivered {:.2}x, TCP {:.2}x",
            v.device,
            v.delivered_pps / bridge.delivered_pps.max(1.0),
            v.tcp_gbps / bridge.tcp_gbps.max(1e-9)
        );
    }
}
