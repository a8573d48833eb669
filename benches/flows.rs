//! Flow table costs: classification per packet with 1, 1K and 100K rules
//! spread over 1, 10 and 50 masks, through the exact-match cache (hit)
//! and without it (miss: the tuple-space search); and the rate of rule
//! additions into a table already holding 100K rules.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use vswitch_core::flow::{FlowSelector, FlowSpec};
use vswitch_core::internals::{FlowKey, FlowTable, PackedKey};
use vswitch_core::{PortConfig, Switch};

/// Keys classified per iteration.
const BATCH: usize = 1024;

/// The text of rule `r` of a table whose rules use `masks` distinct masks:
/// mask `j` is an nw_dst prefix of 8 + (j mod 25) bits, with tp_dst exact
/// for j >= 25.
fn rule_text(r: u32, masks: u32) -> String {
    let j = r % masks;
    let prefix = 8 + j % 25;
    let addr = (r.wrapping_mul(2_654_435_761) | 0x0a00_0000) & (u32::MAX << (32 - prefix));
    let a = std::net::Ipv4Addr::from(addr);
    let tp = if j >= 25 { format!(",tp_dst={}", r % 60_000 + 1) } else { String::new() };
    format!("priority={},tcp,nw_dst={a}/{prefix}{tp},actions=output:2", 100 + r % 1000)
}

/// A packet that rule `r` matches.
fn key_for(r: u32, masks: u32) -> PackedKey {
    let j = r % masks;
    let prefix = 8 + j % 25;
    let addr = (r.wrapping_mul(2_654_435_761) | 0x0a00_0000) & (u32::MAX << (32 - prefix));
    let mut k = FlowKey { in_port: 1, dl_type: 0x0800, nw_proto: 6, ..FlowKey::default() };
    k.nw_dst = std::net::Ipv4Addr::from(addr | 1 >> prefix.min(31)).into();
    k.tp_dst = (r % 60_000 + 1) as u16;
    k.tp_src = 40_000;
    k.pack()
}

fn table(rules: u32, masks: u32) -> FlowTable {
    let mut t = FlowTable::new(2_000_000, 0);
    let specs: Vec<FlowSpec> = (0..rules).map(|r| FlowSpec::parse(&rule_text(r, masks), &|_| None).unwrap()).collect();
    t.add_all(specs, 0).unwrap();
    t
}

fn lookups(c: &mut Criterion) {
    let mut g = c.benchmark_group("flow_lookup");
    g.throughput(Throughput::Elements(BATCH as u64));
    for &(rules, masks) in
        &[(1u32, 1u32), (1_000, 1), (1_000, 10), (1_000, 50), (100_000, 1), (100_000, 10), (100_000, 50)]
    {
        let mut t = table(rules, masks);
        assert_eq!(t.masks(), masks as usize + 1, "the rules' masks plus the default rule's");
        let keys: Vec<PackedKey> = (0..BATCH as u32).map(|i| key_for((i * 7919) % rules, masks)).collect();
        for k in &keys {
            assert!(t.classify(k).is_some());
        }
        let id = format!("{rules}rules_{masks}masks");
        // Miss: every lookup runs the tuple-space search.
        g.bench_with_input(BenchmarkId::new("classifier", &id), &keys, |b, keys| {
            b.iter(|| {
                for k in keys {
                    black_box(t.classify(k));
                }
            })
        });
        // Hit: the same 1,024 flows again and again, from the cache.
        g.bench_with_input(BenchmarkId::new("emc_hit", &id), &keys, |b, keys| {
            b.iter(|| {
                for k in keys {
                    black_box(t.lookup(k));
                }
            })
        });
    }
    // The worst case: nothing matches but the default rule, so no early
    // exit; every subtable is probed.
    let t = table(1_000, 10);
    let mut k = FlowKey { dl_type: 0x0806, ..FlowKey::default() };
    k.arp_op = 1;
    let unmatched = vec![k.pack(); BATCH];
    g.bench_with_input(BenchmarkId::new("classifier", "1000rules_10masks_no_rule"), &unmatched, |b, keys| {
        b.iter(|| {
            for k in keys {
                black_box(t.classify(k));
            }
        })
    });
    g.finish();
}

fn adds(c: &mut Criterion) {
    let mut g = c.benchmark_group("flow_add");
    g.throughput(Throughput::Elements(1));
    g.sample_size(20);
    // Into the table directly, 10 masks, 100K rules installed; each timed
    // batch of adds is deleted again, untimed, so the table stays at 100K.
    let mut t = table(100_000, 10);
    let mut next = 1_000_000u32;
    g.bench_function("table_100k_installed", |b| {
        b.iter_custom(|iters| {
            let specs: Vec<FlowSpec> =
                (0..iters as u32).map(|i| FlowSpec::parse(&rule_text(next + i, 10), &|_| None).unwrap()).collect();
            let start = Instant::now();
            for s in specs.iter().cloned() {
                t.add(s, 0).unwrap();
            }
            let took = start.elapsed();
            for s in &specs {
                let sel = FlowSelector { matching: s.matching, priority: Some(s.priority), cookie: None };
                t.delete(&sel, true);
            }
            next += iters as u32;
            took
        })
    });
    // Through the embedding API: parsing text and handing batches of
    // 1,000 to a running datapath thread, 100K rules installed.
    let sw = Switch::builder().build().unwrap();
    sw.add_bridge("br0").unwrap();
    let _a = sw.add_memory_port("br0", "a", PortConfig::default()).unwrap();
    let installed: Vec<String> = (0..100_000).map(|r| rule_text(r, 10)).collect();
    for chunk in installed.chunks(10_000) {
        sw.add_flows("br0", &chunk.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    }
    let mut next = 2_000_000u32;
    g.bench_function("switch_api_text_batches_of_1000", |b| {
        b.iter_custom(|iters| {
            let texts: Vec<String> = (0..iters as u32).map(|i| rule_text(next + i, 10)).collect();
            let start = Instant::now();
            for chunk in texts.chunks(1000) {
                sw.add_flows("br0", &chunk.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
            }
            let took = start.elapsed();
            for chunk in texts.chunks(1000) {
                for t in chunk {
                    let sel = t.replace(",actions=output:2", "");
                    sw.del_flows("br0", Some(&sel), true).unwrap();
                }
            }
            next += iters as u32;
            took.max(Duration::from_nanos(1))
        })
    });
    g.finish();
}

criterion_group!(benches, lookups, adds);
criterion_main!(benches);
