//! The whole NORMAL pipeline, per 64-byte frame, in bursts of 32 across
//! memory ports: queue into the input port, one datapath pass (receive,
//! parse L2, learn the source, look up the destination, VLAN handling,
//! per-port tx batching, transmit), and taking the frames off the output
//! ports. Both memory-port queue hops are inside the measurement, since an
//! embedder pays them too.

use std::collections::VecDeque;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use vswitch_benches::{host_mac, udp_frame};
use vswitch_core::mac::MacTableConfig;
use vswitch_core::packet::PacketPool;
use vswitch_core::port::{Port, TxOutcome};
use vswitch_core::{MacAddr, MemoryPortHandle, Packet, PortConfig, Switch};

const BURST: usize = 32;
const PORTS: u32 = 4;

struct Rig {
    sw: Switch,
    ports: Vec<MemoryPortHandle>,
    frames: VecDeque<Packet>,
    burst: Vec<Packet>,
}

/// A bridge of four memory ports whose MAC table knows `macs` hosts spread
/// over ports 2 to 4, and a stream of frames from port 1 to them (or
/// broadcasts, with `broadcast`).
fn rig(macs: u32, broadcast: bool) -> Rig {
    let sw = Switch::builder()
        .manual()
        .mac_table(MacTableConfig::new(300, (macs as usize + 1024).max(8192)))
        .memory_queue_len(4096)
        .build()
        .unwrap();
    sw.add_bridge("br0").unwrap();
    let ports: Vec<_> =
        (0..PORTS).map(|i| sw.add_memory_port("br0", &format!("p{i}"), PortConfig::default()).unwrap()).collect();
    // Teach the switch where every destination host is.
    for h in 0..macs {
        let port = &ports[1 + (h % (PORTS - 1)) as usize];
        port.send_frame(&udp_frame(MacAddr::BROADCAST, host_mac(h), 0)).unwrap();
        if h % 512 == 511 {
            sw.run_until_idle().unwrap();
            ports.iter().for_each(|p| while p.recv().is_some() {});
        }
    }
    sw.run_until_idle().unwrap();
    ports.iter().for_each(|p| while p.recv().is_some() {});
    // 32 sources behind port 1, destinations cycling over every host.
    let n = (macs as usize).clamp(BURST * 8, 65_536);
    let frames = (0..n)
        .map(|i| {
            let dst =
                if broadcast { MacAddr::BROADCAST } else { host_mac((i as u64 * 2_654_435_761 % macs as u64) as u32) };
            Packet::from_frame(&udp_frame(dst, host_mac(0x8000_0000 + (i % BURST) as u32), i as u16))
        })
        .collect();
    Rig { sw, ports, frames, burst: Vec::with_capacity(BURST * 4) }
}

impl Rig {
    /// One burst through the switch; returns frames delivered.
    fn burst(&mut self) -> usize {
        self.burst.extend(self.frames.drain(..BURST));
        assert_eq!(self.ports[0].send_burst(&mut self.burst), BURST);
        self.sw.poll().unwrap();
        let mut out = 0;
        for port in &self.ports[1..] {
            out += port.recv_burst(&mut self.burst, BURST * 4);
            for p in self.burst.drain(..) {
                if self.frames.len() < 65_536 + BURST {
                    self.frames.push_back(p);
                } else {
                    // Surplus flood copies go back to the switch for reuse.
                    port.recycle(p);
                }
            }
        }
        out
    }
}

/// A port with no queue: on receive it copies the next frames of a fixed
/// list into pool buffers (as a NIC backend copies from its ring), on
/// transmit it hands the buffers straight back to the pool. Measures the
/// datapath alone.
#[derive(Debug)]
struct LoopPort {
    frames: Vec<Vec<u8>>,
    next: usize,
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Port for LoopPort {
    fn kind(&self) -> &'static str {
        "bench-loop"
    }

    fn rx_burst(&mut self, batch: &mut Vec<Packet>, max: usize, pool: &mut PacketPool) -> usize {
        for _ in 0..max.min(self.frames.len()) {
            let mut p = pool.get();
            p.set_frame(&self.frames[self.next]);
            batch.push(p);
            self.next = (self.next + 1) % self.frames.len();
        }
        max.min(self.frames.len())
    }

    fn tx_burst(&mut self, batch: &mut Vec<Packet>, pool: &mut PacketPool) -> TxOutcome {
        let out = TxOutcome::sent(batch.len(), batch.iter().map(|p| p.len() as u64).sum());
        self.sent.fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
        for p in batch.drain(..) {
            pool.put(p);
        }
        out
    }
}

/// Four loop ports; port 1 generates unicast to `macs` hosts learned on
/// ports 2 to 4, which only sink.
fn loop_rig(macs: u32) -> (Switch, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    let sw = Switch::builder()
        .manual()
        .mac_table(MacTableConfig::new(300, (macs as usize + 1024).max(8192)))
        .build()
        .unwrap();
    sw.add_bridge("br0").unwrap();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let n = (macs as usize).clamp(BURST * 8, 65_536);
    let frames = (0..n)
        .map(|i| {
            udp_frame(
                host_mac((i as u64 * 2_654_435_761 % macs as u64) as u32),
                host_mac(0x8000_0000 + (i % BURST) as u32),
                i as u16,
            )
        })
        .collect();
    sw.add_port("br0", "gen", Box::new(LoopPort { frames, next: 0, sent: sent.clone() }), PortConfig::default())
        .unwrap();
    for i in 1..PORTS {
        let sink = LoopPort { frames: Vec::new(), next: 0, sent: sent.clone() };
        sw.add_port("br0", &format!("sink{i}"), Box::new(sink), PortConfig::default()).unwrap();
    }
    let table = sw.mac_table("br0").unwrap();
    for h in 0..macs {
        table.learn(0, host_mac(h), 2 + h % (PORTS - 1), 0);
    }
    (sw, sent)
}

/// Benchmarks the flow path on the loop rig with `rules` installed, once
/// every flow is in the exact-match cache (checking each frame is steered).
fn steering(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, name: &str, rules: &[String]) {
    let (sw, sent) = loop_rig(1_000);
    sw.add_flows("br0", &rules.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    for _ in 0..64 {
        sw.poll().unwrap();
    }
    let before = sent.load(std::sync::atomic::Ordering::Relaxed);
    sw.poll().unwrap();
    assert_eq!(sent.load(std::sync::atomic::Ordering::Relaxed) - before, BURST as u64, "every frame steered");
    g.bench_function(BenchmarkId::new("datapath_flows_emc_hit_64B", name), |b| {
        b.iter(|| black_box(sw.poll().unwrap()))
    });
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("normal_pipeline");
    g.throughput(Throughput::Elements(BURST as u64));
    for &macs in &[1_000u32, 100_000, 1_000_000] {
        let mut r = rig(macs, false);
        assert_eq!(r.burst(), BURST, "every frame delivered to one port");
        g.bench_function(BenchmarkId::new("unicast_64B", macs), |b| b.iter(|| black_box(r.burst())));
        assert_eq!(r.sw.stats().bridges[0].ports.iter().map(|p| p.total_drops()).sum::<u64>(), 0);
    }
    // The flow-table path: 1,000 steering rules (one per UDP source
    // port), every flow already in the exact-match cache, next to the
    // NORMAL fast path measured just below on the same rig.
    let one_table: Vec<String> =
        (0..1_000u32).map(|i| format!("priority=100,udp,tp_src={i},actions=output:{}", 2 + i % (PORTS - 1))).collect();
    steering(&mut g, "1000rules", &one_table);
    // The same steering as a three-table pipeline: table 0 classifies,
    // table 1 marks the flow in a register, table 2 outputs by register:
    // three lookups per packet, each an exact-match cache hit.
    let mut three_tables: Vec<String> = vec!["table=0,priority=10,udp,actions=goto_table:1".into()];
    for i in 0..1_000u32 {
        three_tables.push(format!("table=1,priority=100,udp,tp_src={i},actions=set_field:{i}->reg0,goto_table:2"));
        three_tables.push(format!("table=2,priority=100,reg0={i},actions=output:{}", 2 + i % (PORTS - 1)));
    }
    steering(&mut g, "3tables_2001rules", &three_tables);
    for &macs in &[1_000u32, 1_000_000] {
        let (sw, sent) = loop_rig(macs);
        sw.poll().unwrap();
        assert_eq!(sent.load(std::sync::atomic::Ordering::Relaxed), BURST as u64, "one burst, every frame delivered");
        g.bench_function(BenchmarkId::new("datapath_only_64B", macs), |b| b.iter(|| black_box(sw.poll().unwrap())));
    }
    let mut r = rig(1_000, true);
    assert_eq!(r.burst(), BURST * 3, "every broadcast copied to three ports");
    g.bench_function("broadcast_64B_to_3_ports", |b| b.iter(|| black_box(r.burst())));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
