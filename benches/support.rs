//! Frame builders and the traffic generator shared by the benchmarks.

use std::time::{Duration, Instant};

use vswitch_core::internals::AfPacketConfig;
use vswitch_core::internals::AfPacketPort;
use vswitch_core::packet::PacketPool;
use vswitch_core::port::Port;
use vswitch_core::{MacAddr, Packet};
use vswitch_tests::netns::NetNs;

/// Sends 64-byte UDP frames to `dst` out of `ifname` for `seconds`, as fast
/// as an AF_PACKET port of the switch's own code can (sendmmsg, 32 frames a
/// call), cycling through `flows` source ports; prints how many were sent.
pub fn generate(ifname: &str, dst: MacAddr, seconds: u64, flows: u32) {
    let mut port = AfPacketPort::open(ifname, AfPacketConfig::default()).expect("open the generator's port");
    let mut pool = PacketPool::new(1024, 2048);
    let frames: Vec<Packet> = (0..flows.max(1))
        .map(|i| Packet::from_frame(&udp_frame(dst, host_mac(1), 1024 + (i % 60_000) as u16)))
        .collect();
    let mut batch = Vec::with_capacity(32);
    let (mut sent, mut next) = (0u64, 0usize);
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        for _ in 0..32 {
            batch.push(frames[next].clone());
            next = (next + 1) % frames.len();
        }
        sent += port.tx_burst(&mut batch, &mut pool).sent as u64;
    }
    println!("{sent}");
}

/// An interface counter from sysfs (`rx_packets`, ...) inside `ns`.
pub fn counter(ns: &NetNs, ifname: &str, what: &str) -> u64 {
    let out = ns.exec(&["cat", &format!("/sys/class/net/{ifname}/statistics/{what}")]);
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

/// The MAC address of `ifname` inside `ns`.
pub fn mac_of(ns: &NetNs, ifname: &str) -> MacAddr {
    let out = ns.exec(&["cat", &format!("/sys/class/net/{ifname}/address")]);
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("a MAC address")
}

/// A locally administered unicast MAC address for host `n`.
pub fn host_mac(n: u32) -> MacAddr {
    let b = n.to_be_bytes();
    MacAddr([0x02, 0x10, b[0], b[1], b[2], b[3]])
}

/// A 64-byte Ethernet/IPv4/UDP frame from `src` to `dst` (FCS excluded:
/// 60 bytes on the wire plus the 4 the NIC adds), checksums valid (a Linux
/// bridge with br_netfilter drops frames without a valid IP checksum).
pub fn udp_frame(dst: MacAddr, src: MacAddr, sport: u16) -> Vec<u8> {
    vswitch_tests::ip::udp(dst, src, [10, 0, 0, 1], [10, 0, 0, 2], sport, 9, 64, &[0; 18])
}
