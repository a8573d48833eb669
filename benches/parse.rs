//! Frame to FlowKey: the cost of full header extraction.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vswitch_benches::{host_mac, udp_frame};
use vswitch_core::internals::FlowKey;

fn tagged(f: &[u8], vid: u16) -> Vec<u8> {
    let mut t = f[..12].to_vec();
    t.extend_from_slice(&[0x81, 0x00]);
    t.extend_from_slice(&vid.to_be_bytes());
    t.extend_from_slice(&f[12..]);
    t
}

fn tcp_v6() -> Vec<u8> {
    let mut f = vec![0u8; 14 + 40 + 20];
    f[..6].copy_from_slice(&host_mac(2).0);
    f[6..12].copy_from_slice(&host_mac(1).0);
    f[12..14].copy_from_slice(&[0x86, 0xdd]);
    f[14] = 0x60;
    f[18..20].copy_from_slice(&20u16.to_be_bytes());
    f[20] = 6;
    f[21] = 64;
    f[54 + 12] = 0x50;
    f
}

fn arp() -> Vec<u8> {
    let mut f = vec![0u8; 60];
    f[..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&host_mac(1).0);
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f
}

/// The peer: pnet's views reading the same fields for the UDP frame
/// (addresses, EtherType, IPv4 addresses, protocol, TOS, TTL, ports).
fn pnet_udp4(f: &[u8]) -> u64 {
    use pnet_packet::Packet;
    use pnet_packet::ethernet::EthernetPacket;
    use pnet_packet::ipv4::Ipv4Packet;
    use pnet_packet::udp::UdpPacket;
    let eth = EthernetPacket::new(f).unwrap();
    let mut acc = u64::from(eth.get_source().0) ^ u64::from(eth.get_destination().5) ^ u64::from(eth.get_ethertype().0);
    let ip = Ipv4Packet::new(eth.payload()).unwrap();
    acc ^= u64::from(u32::from(ip.get_source())) ^ u64::from(u32::from(ip.get_destination()));
    acc ^= u64::from(ip.get_next_level_protocol().0) ^ u64::from(ip.get_dscp()) ^ u64::from(ip.get_ttl());
    let udp = UdpPacket::new(ip.payload()).unwrap();
    acc ^ u64::from(udp.get_source()) ^ u64::from(udp.get_destination())
}

fn bench(c: &mut Criterion) {
    let udp = udp_frame(host_mac(2), host_mac(1), 1000);
    let frames =
        [("udp4_64B", udp.clone()), ("udp4_vlan_68B", tagged(&udp, 100)), ("tcp6_74B", tcp_v6()), ("arp_60B", arp())];
    let mut g = c.benchmark_group("flowkey_extract");
    g.throughput(Throughput::Elements(1));
    for (name, f) in &frames {
        g.bench_function(*name, |b| b.iter(|| FlowKey::extract(black_box(f), 1)));
    }
    g.bench_function("peer_pnet_udp4_64B", |b| b.iter(|| pnet_udp4(black_box(&udp))));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
