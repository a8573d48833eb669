//! Connection tracking: the lookup of an established connection with 1K,
//! 100K and 1M connections in the table (bursts of 32 frames cycling over
//! all of them, so the large tables are measured out of cache), the setup
//! of new connections (commit, with and without SNAT port allocation),
//! and the whole pipeline `ct(table=1)` -> `ct_state=+trk+est` -> output
//! next to NORMAL switching on the same loop-port rig, in the same run.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use vswitch_benches::host_mac;
use vswitch_core::conntrack::{Conntrack, Nat, PreparedFrame};
use vswitch_core::mac::MacTableConfig;
use vswitch_core::packet::PacketPool;
use vswitch_core::port::{Port, TxOutcome};
use vswitch_core::{Packet, PortConfig, Switch};
use vswitch_tests::ip::udp;

const BURST: usize = 32;

/// Connection `i`'s original-direction frame (10.x.y.z:port -> one of 16
/// servers 10.255.N.1:53).
fn orig(i: u32) -> Vec<u8> {
    let src = Ipv4Addr::from(0x0a00_0000 + (i >> 6)).octets();
    udp(host_mac(2), host_mac(1), src, [10, 255, (i % 16) as u8, 1], 1024 + (i & 63) as u16, 53, 64, &[0; 18])
}

/// Its reply.
fn reply(i: u32) -> Vec<u8> {
    let dst = Ipv4Addr::from(0x0a00_0000 + (i >> 6)).octets();
    udp(host_mac(1), host_mac(2), [10, 255, (i % 16) as u8, 1], dst, 53, 1024 + (i & 63) as u16, 64, &[0; 18])
}

fn lookups(c: &mut Criterion) {
    let mut g = c.benchmark_group("conntrack");
    g.throughput(Throughput::Elements(BURST as u64));
    for &n in &[1_000u32, 100_000, 1_000_000] {
        let ct = Conntrack::new(n as usize);
        for i in 0..n {
            assert_ne!(ct.track(&PreparedFrame::new(&orig(i)), 1, true, None, 0), 0);
            ct.track(&PreparedFrame::new(&reply(i)), 1, false, None, 0);
        }
        assert_eq!(ct.len(), n as usize);
        // Frames of established connections, visited in a scattered order.
        let frames: Vec<PreparedFrame> = (0..n.min(262_144))
            .map(|k| PreparedFrame::new(&orig((k as u64 * 2_654_435_761 % n as u64) as u32)))
            .collect();
        assert_eq!(ct.track(&frames[0], 1, false, None, 1), 0x22, "+trk+est");
        let mut at = 0;
        g.bench_function(BenchmarkId::new("lookup_established_one_by_one", n), |b| {
            b.iter(|| {
                let mut s = 0u32;
                for _ in 0..BURST {
                    s += ct.track(&frames[at], 1, false, None, 1) as u32;
                    at = (at + 1) % frames.len();
                }
                black_box(s)
            })
        });
        // As the datapath runs a burst: buckets and entries fetched ahead.
        let frames = &frames[..frames.len() / BURST * BURST];
        let mut at = 0;
        g.bench_function(BenchmarkId::new("lookup_established_burst", n), |b| {
            b.iter(|| {
                let s = ct.track_burst(&frames[at..at + BURST], 1, 1);
                at = (at + BURST) % frames.len();
                black_box(s)
            })
        });
    }
    // Setting up connections: 100,000 fresh ones per batch, plain commit
    // and commit with SNAT to one address (port allocation: 64 sources
    // share each source port, so most need another port).
    let fresh: Vec<PreparedFrame> = (0..100_000).map(|i| PreparedFrame::new(&orig(i))).collect();
    g.throughput(Throughput::Elements(fresh.len() as u64));
    let Ok(snat) = "src=192.0.2.1".parse::<NatSpec>().map(|n| n.0) else { panic!() };
    for (name, nat) in [("commit", None), ("commit_snat_port_alloc", Some(&snat))] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || Conntrack::new(200_000),
                |ct| {
                    for f in &fresh {
                        black_box(ct.track(f, 1, true, nat, 0));
                    }
                    assert_eq!(ct.len(), fresh.len());
                    ct
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

/// `nat(...)` text to a [`Nat`], through a `ct` action's parser.
struct NatSpec(Nat);

impl std::str::FromStr for NatSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let spec = vswitch_core::flow::FlowSpec::parse(&format!("actions=ct(commit,nat({s}))"), &|_| None)
            .map_err(|e| e.to_string())?;
        match spec.actions.first() {
            Some(vswitch_core::flow::Action::Ct(ct)) => ct.nat.map(NatSpec).ok_or_else(|| "no nat".into()),
            _ => Err("not a ct action".into()),
        }
    }
}

/// A port with no queue: each receive copies the next frames of its list
/// into pool buffers; transmit hands buffers back. With `once`, the list
/// is given out one time only.
#[derive(Debug)]
struct LoopPort {
    frames: Vec<Vec<u8>>,
    next: usize,
    once: bool,
    sent: Arc<AtomicU64>,
}

impl Port for LoopPort {
    fn kind(&self) -> &'static str {
        "bench-loop"
    }

    fn rx_burst(&mut self, batch: &mut Vec<Packet>, max: usize, pool: &mut PacketPool) -> usize {
        let n = if self.once { max.min(self.frames.len() - self.next) } else { max.min(self.frames.len()) };
        for _ in 0..n {
            let mut p = pool.get();
            p.set_frame(&self.frames[self.next]);
            batch.push(p);
            self.next += 1;
            if !self.once {
                self.next %= self.frames.len();
            }
        }
        n
    }

    fn tx_burst(&mut self, batch: &mut Vec<Packet>, pool: &mut PacketPool) -> TxOutcome {
        let out = TxOutcome::sent(batch.len(), batch.iter().map(|p| p.len() as u64).sum());
        self.sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
        for p in batch.drain(..) {
            pool.put(p);
        }
        out
    }
}

/// A generator port (1) and a sink (2) on one bridge; `flows` replace the
/// default rule (none: NORMAL, the sink's hosts learned). With `replies`,
/// a second port sends each flow's reply once first, so conntrack has
/// seen both directions.
fn rig(flows: Option<&[&str]>, n: u32) -> (Switch, Arc<AtomicU64>) {
    let sw = Switch::builder().manual().mac_table(MacTableConfig::new(300, 8192)).build().unwrap();
    sw.add_bridge("br0").unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let gen_frames: Vec<Vec<u8>> = (0..n).map(orig).collect();
    let gen_port = LoopPort { frames: gen_frames, next: 0, once: false, sent: sent.clone() };
    sw.add_port("br0", "gen", Box::new(gen_port), PortConfig::default()).unwrap();
    let sink = LoopPort { frames: Vec::new(), next: 0, once: false, sent: sent.clone() };
    sw.add_port("br0", "sink", Box::new(sink), PortConfig::default()).unwrap();
    match flows {
        None => {
            sw.mac_table("br0").unwrap().learn(0, host_mac(2), 2, 0);
        }
        Some(f) => {
            sw.del_flows("br0", None, false).unwrap();
            sw.add_flows("br0", f).unwrap();
            // One pass of originals (committed), then the replies once.
            for _ in 0..n as usize / BURST + 1 {
                sw.poll().unwrap();
            }
            let rev = LoopPort { frames: (0..n).map(reply).collect(), next: 0, once: true, sent: sent.clone() };
            sw.add_port("br0", "rev", Box::new(rev), PortConfig::default()).unwrap();
            for _ in 0..n as usize / BURST + 2 {
                sw.poll().unwrap();
            }
            sw.del_port("rev").unwrap();
        }
    }
    (sw, sent)
}

fn pipeline(c: &mut Criterion) {
    let mut g = c.benchmark_group("conntrack_pipeline");
    g.throughput(Throughput::Elements(BURST as u64));
    const FLOWS: u32 = 1_000;
    let stateful: &[&str] = &[
        "table=0,priority=10,ip,actions=ct(table=1,zone=1)",
        "table=1,priority=10,ct_state=+trk+new,ip,in_port=1,actions=ct(commit,zone=1),output:2",
        "table=1,priority=10,ct_state=+trk+est,ip,actions=output:2",
    ];
    for (name, flows, n) in [
        ("normal_64B", None, FLOWS),
        ("ct_est_output_64B", Some(stateful), FLOWS),
        ("ct_est_output_64B_100K_connections", Some(stateful), 100_000),
    ] {
        let (sw, sent) = rig(flows, n);
        if flows.is_some() {
            assert_eq!(sw.conntrack().len(), n as usize);
            let est = sw.dump_flows("br0").unwrap().iter().find(|f| f.matching.contains("+est")).unwrap().n_packets;
            sw.poll().unwrap();
            let est2 = sw.dump_flows("br0").unwrap().iter().find(|f| f.matching.contains("+est")).unwrap().n_packets;
            assert_eq!(est2 - est, BURST as u64, "every frame established");
        }
        let before = sent.load(Ordering::Relaxed);
        sw.poll().unwrap();
        assert_eq!(sent.load(Ordering::Relaxed) - before, BURST as u64, "every frame delivered");
        g.bench_function(BenchmarkId::new("datapath_only", name), |b| b.iter(|| black_box(sw.poll().unwrap())));
    }
    g.finish();
}

criterion_group!(benches, lookups, pipeline);
criterion_main!(benches);
