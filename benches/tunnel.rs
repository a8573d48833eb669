//! Per-packet header work of the tunnel ports, for a 64-byte inner frame:
//! what a VXLAN or GRE port adds on top of the kernel's socket calls
//! (measured separately by `tunnel-rate`).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use vswitch_benches::{host_mac, udp_frame};
use vswitch_core::internals::tunnel_wire as wire;
use vswitch_core::packet::{PacketPool, TunnelMeta};

fn bench(c: &mut Criterion) {
    let inner = udp_frame(host_mac(2), host_mac(1), 4000);
    let mut g = c.benchmark_group("tunnel");
    g.throughput(Throughput::Elements(1));
    g.bench_function("vxlan_encap_headers_64B", |b| {
        let mut h = [0u8; 16];
        b.iter(|| {
            let d = black_box(&inner[..]);
            let src = wire::src_port(wire::flow_hash(d));
            h[..8].copy_from_slice(&wire::udp_header(src, 4789, wire::VXLAN_LEN + d.len()));
            h[8..].copy_from_slice(&wire::vxlan_header(42));
            black_box(&h);
        })
    });
    let mut vx = wire::vxlan_header(42).to_vec();
    vx.extend_from_slice(&inner);
    let mut pool = PacketPool::new(64, 2048);
    g.bench_function("vxlan_decap_64B", |b| {
        b.iter(|| {
            let d = black_box(&vx[..]);
            let (vni, at) = wire::parse_vxlan(d).unwrap();
            let mut p = pool.get();
            p.set_frame(&d[at..]);
            p.tunnel = Some(TunnelMeta { id: vni as u64, ..Default::default() });
            pool.put(black_box(p));
        })
    });
    let (gh, n) = wire::gre_header(Some(42));
    let mut gre = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 47, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
    gre.extend_from_slice(&gh[..n]);
    gre.extend_from_slice(&inner);
    let total = gre.len() as u16;
    gre[2..4].copy_from_slice(&total.to_be_bytes());
    g.bench_function("gre_decap_64B", |b| {
        b.iter(|| {
            let d = black_box(&gre[..]);
            let pkt = wire::parse_gre(d).unwrap();
            let mut p = pool.get();
            p.set_frame(&d[pkt.inner..]);
            p.tunnel = Some(TunnelMeta { id: pkt.key.unwrap_or(0) as u64, src: pkt.src, dst: pkt.dst });
            pool.put(black_box(p));
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
