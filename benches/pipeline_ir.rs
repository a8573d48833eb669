//! Instructions per packet of the in-memory pipeline, counted by
//! callgrind: repeatable on a noisy machine, where a time is not.
//!
//! `pipeline-ir --count PACKETS MODE` pushes PACKETS 64-byte UDP frames
//! of 1,000 flows (distinct source addresses and ports) through a switch
//! its caller polls, two memory ports, bursts of 32: MODE `normal` (MAC
//! learning) or `flows` (a flow table of 1,000 rules, one per source, as
//! vswitch-bench's `-flows` devices). Every frame is checked to come out.
//!
//! `pipeline-ir [MODE...]` runs that twice per mode under
//! `valgrind --tool=callgrind` (100,000 and 200,000 packets) and prints
//! the difference in instructions over 100,000: the setup, the same in
//! both, cancels out.
//!
//! `cargo build --release -p vswitch-benches --bin pipeline-ir && target/release/pipeline-ir`

use std::process::Command;

use vswitch_benches::host_mac;
use vswitch_core::{MemoryPortHandle, Packet, PortConfig, Switch};

const BURST: usize = 32;
const FLOWS: u32 = 1000;

fn frames() -> Vec<Packet> {
    (0..FLOWS)
        .map(|i| {
            let b = i.to_be_bytes();
            let src = [10, 1 + b[1], b[2], b[3]];
            let frame =
                vswitch_tests::ip::udp(host_mac(2), host_mac(1), src, [10, 0, 0, 2], 1024 + i as u16, 9, 64, &[0; 18]);
            Packet::from_frame(&frame)
        })
        .collect()
}

fn count(packets: u64, mode: &str) {
    let sw = Switch::builder().manual().memory_queue_len(4096).build().expect("switch");
    sw.add_bridge("br0").unwrap();
    let a: MemoryPortHandle = sw.add_memory_port("br0", "a", PortConfig::default()).unwrap();
    let b: MemoryPortHandle = sw.add_memory_port("br0", "b", PortConfig::default()).unwrap();
    match mode {
        "normal" => {
            // The destination is learnt behind b.
            b.send_frame(&vswitch_benches::udp_frame(host_mac(1), host_mac(2), 0)).unwrap();
            sw.run_until_idle().unwrap();
            while a.recv().is_some() {}
        }
        "flows" => {
            let mut rules: Vec<String> = (0..FLOWS)
                .map(|i| {
                    let b = i.to_be_bytes();
                    format!("priority=100,ip,in_port=1,nw_src=10.{}.{}.{},actions=output:2", 1 + b[1], b[2], b[3])
                })
                .collect();
            rules.push("priority=10,in_port=2,actions=output:1".into());
            sw.replace_flows("br0", &rules).unwrap();
        }
        other => panic!("unknown mode '{other}' (normal, flows)"),
    }
    let mut pool = frames();
    let mut burst = Vec::with_capacity(BURST);
    let mut out = Vec::with_capacity(BURST * 2);
    let mut sent = 0u64;
    let mut got = 0u64;
    while sent < packets {
        let n = BURST.min((packets - sent) as usize).min(pool.len());
        burst.extend(pool.drain(pool.len() - n..));
        assert_eq!(a.send_burst(&mut burst), n);
        sent += n as u64;
        sw.poll().unwrap();
        let k = b.recv_burst(&mut out, BURST * 2);
        got += k as u64;
        // The frames come back unchanged: send them again.
        pool.append(&mut out);
        if pool.len() < BURST {
            pool.extend(frames());
        }
    }
    sw.run_until_idle().unwrap();
    got += b.recv_burst(&mut out, usize::MAX) as u64;
    assert_eq!(got, packets, "every frame crossed");
}

/// Total instructions of a callgrind run of `--count packets mode`.
fn instructions(packets: u64, mode: &str) -> u64 {
    let me = std::env::current_exe().expect("own path");
    let out_file = std::env::temp_dir().join(format!("pipeline-ir.{}.{packets}.{mode}", std::process::id()));
    let status = Command::new("valgrind")
        .args(["--tool=callgrind", "--quiet", &format!("--callgrind-out-file={}", out_file.display())])
        .arg(&me)
        .args(["--count", &packets.to_string(), mode])
        .status()
        .expect("valgrind (Debian's valgrind package)");
    assert!(status.success(), "callgrind run failed");
    let text = std::fs::read_to_string(&out_file).expect("callgrind output");
    let _ = std::fs::remove_file(&out_file);
    text.lines()
        .find_map(|l| l.strip_prefix("summary:").or_else(|| l.strip_prefix("totals:")))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("a summary line")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--count") {
        let packets = args.get(1).and_then(|n| n.parse().ok()).expect("--count PACKETS MODE");
        count(packets, args.get(2).map_or("normal", String::as_str));
        return;
    }
    let modes: Vec<&str> =
        if args.is_empty() { vec!["normal", "flows"] } else { args.iter().map(String::as_str).collect() };
    let (small, large) = (100_000u64, 200_000u64);
    println!("| pipeline (64 B, {FLOWS} flows, bursts of {BURST}) | instructions per packet |");
    println!("|---|---:|");
    for mode in modes {
        let (a, b) = (instructions(small, mode), instructions(large, mode));
        let per = b.saturating_sub(a) as f64 / (large - small) as f64;
        println!("| {mode} | {per:.0} |");
    }
}
