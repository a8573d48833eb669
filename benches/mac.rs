//! MAC table lookups at 1, 1K, 100K and 1M entries: the shared table
//! (read lock and hash probe) and the per-thread cache in front of it.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use vswitch_benches::host_mac;
use vswitch_core::internals::MacCache;
use vswitch_core::mac::{MacTable, MacTableConfig};

/// Lookups per iteration, in a shuffled order so caches see a real mix.
const BATCH: usize = 1024;

fn order(n: usize) -> Vec<u32> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..BATCH)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as u32
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("mac_lookup");
    g.throughput(Throughput::Elements(BATCH as u64));
    for &n in &[1usize, 1_000, 100_000, 1_000_000] {
        let table = MacTable::new(MacTableConfig::new(300, n.max(8192))).unwrap();
        for i in 0..n as u32 {
            table.learn(0, host_mac(i), i % 48 + 1, 0);
        }
        let keys: Vec<_> = order(n).into_iter().map(host_mac).collect();
        g.bench_with_input(BenchmarkId::new("table", n), &keys, |b, keys| {
            b.iter(|| {
                for &k in keys {
                    black_box(table.lookup(0, k));
                }
            })
        });
        // The peer: the simplest table one would write, std's HashMap with
        // its default SipHash, keyed the same way, with no lock.
        let mut std_map = std::collections::HashMap::new();
        for i in 0..n as u32 {
            std_map.insert(host_mac(i).to_u64(), i % 48 + 1);
        }
        g.bench_with_input(BenchmarkId::new("peer_std_hashmap", n), &keys, |b, keys| {
            b.iter(|| {
                for &k in keys {
                    black_box(std_map.get(&k.to_u64()));
                }
            })
        });
        let mut cache = MacCache::new();
        cache.begin_burst(&table);
        g.bench_with_input(BenchmarkId::new("cache", n), &keys, |b, keys| {
            b.iter(|| {
                for &k in keys {
                    black_box(cache.lookup(&table, 0, k));
                }
            })
        });
    }
    g.finish();

    // Source learning of a known address through the cache: the per-frame
    // cost the datapath pays on every packet.
    let table = MacTable::new(MacTableConfig::default()).unwrap();
    let keys: Vec<_> = order(1000).into_iter().map(host_mac).collect();
    for &k in &keys {
        table.learn(0, k, 1, 0);
    }
    let mut cache = MacCache::new();
    cache.begin_burst(&table);
    let mut g = c.benchmark_group("mac_learn_known");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("cache_1000", |b| {
        b.iter(|| {
            for &k in &keys {
                black_box(cache.learn(&table, 0, k, 1, 10));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
