//! Native tunnelling without root: two switches in this process joined by
//! VXLAN through in-process uplinks (memory ports whose frames this test
//! carries between them, as a wire would), and the uplinks a tunnel must
//! never bind to, refused even when they appear after it.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use vswitch_core::config::{PortKind, PortSpec};
use vswitch_core::{MemoryPortHandle, OnOpenError, PortConfig, Switch};
use vswitch_tests::{ip, mac, recv_n};

fn vxlan(name: &str, local: &str, remote: &str, uplink: &str) -> PortSpec {
    let mut s = PortSpec::new(name, PortKind::Vxlan);
    for (k, v) in [("local_ip", local), ("remote_ip", remote), ("key", "77"), ("uplink", uplink)] {
        s.options.insert(k.into(), v.into());
    }
    s
}

/// A switch with a host port `h` on br0, a native VXLAN port on br0 and
/// its uplink `up` on br-phy; returns the switch and the two handles.
fn site(local: &str, remote: &str) -> (Switch, MemoryPortHandle, MemoryPortHandle) {
    let sw = Switch::builder().build().unwrap();
    sw.add_bridge("br0").unwrap();
    sw.add_bridge("br-phy").unwrap();
    let up = sw.add_memory_port("br-phy", "up", PortConfig::default()).unwrap();
    let h = sw.add_memory_port("br0", "h", PortConfig::default()).unwrap();
    sw.add_port_spec("br0", &vxlan("vx", local, remote, "up"), OnOpenError::Fail).unwrap();
    (sw, h, up)
}

/// Carries what one uplink sends to the other, both ways, for `for_`;
/// returns the frames that crossed from `a` to `b`.
fn wire(a: &MemoryPortHandle, b: &MemoryPortHandle, for_: Duration) -> Vec<Vec<u8>> {
    let mut seen = Vec::new();
    let end = Instant::now() + for_;
    while Instant::now() < end {
        let mut moved = false;
        while let Some(p) = a.recv() {
            seen.push(p.data().to_vec());
            b.send_frame(p.data()).unwrap();
            moved = true;
        }
        while let Some(p) = b.recv() {
            a.send_frame(p.data()).unwrap();
            moved = true;
        }
        if !moved {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    seen
}

#[test]
fn two_switches_talk_native_vxlan_through_in_process_uplinks() {
    let (sa, ha, ua) = site("10.77.0.1", "10.77.0.2");
    let (sb, hb, ub) = site("10.77.0.2", "10.77.0.1");
    let (ma, mb) = (mac(1), mac(2));
    let frame = ip::udp(mb, ma, [192, 168, 7, 1], [192, 168, 7, 2], 1000, 2000, 64, b"over the overlay");
    // The first frame finds no neighbour: it is dropped, counted, and an
    // ARP request for the remote goes out of the uplink, which the far
    // switch answers for its local_ip.
    ha.send_frame(&frame).unwrap();
    let first = wire(&ua, &ub, Duration::from_millis(300));
    assert!(first.iter().any(|f| f[12..14] == [0x08, 0x06] && f[38..42] == [10, 77, 0, 2]), "an ARP request");
    let vx = |sw: &Switch| {
        let s = sw.stats();
        s.bridges.iter().find(|b| b.name == "br0").unwrap().ports.iter().find(|p| p.name == "vx").unwrap().clone()
    };
    assert_eq!(
        vx(&sa).drops.get(&vswitch_core::DropReason::TunnelNoNeighbour).copied().unwrap_or(0),
        1,
        "{:?}",
        vx(&sa).drops
    );
    let neigh = sa.tunnel_neighbours();
    assert_eq!(neigh.len(), 1, "{neigh:?}");
    assert_eq!((neigh[0].ip, neigh[0].uplink.as_str()), (Ipv4Addr::new(10, 77, 0, 2), "up"));

    // Resolved: the frame crosses, encapsulated as VXLAN VNI 77 to 4789
    // with a correct outer IPv4 header, and arrives as it was sent.
    ha.send_frame(&frame).unwrap();
    let crossed = wire(&ua, &ub, Duration::from_millis(300));
    let outer = crossed.iter().find(|f| f[12..14] == [0x08, 0x00]).expect("an encapsulated frame");
    assert_eq!(outer.len(), 14 + 20 + 8 + 8 + frame.len());
    assert_eq!(outer[14 + 9], 17, "UDP");
    assert_eq!(outer[14 + 6] & 0x40, 0x40, "DF");
    assert_eq!(&outer[26..34], &[10, 77, 0, 1, 10, 77, 0, 2]);
    assert_eq!(u16::from_be_bytes([outer[36], outer[37]]), 4789);
    assert_eq!(&outer[42..50], &[0x08, 0, 0, 0, 0, 0, 77, 0], "VXLAN header, VNI 77");
    assert_eq!(&outer[50..], &frame[..], "the inner frame whole");
    let sum = outer[14..34].chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]]) as u32).sum::<u32>();
    assert_eq!((sum & 0xffff) + (sum >> 16), 0xffff, "outer IPv4 checksum");
    let got = recv_n(&hb, 1, Duration::from_secs(2));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data(), &frame[..]);

    // ECN crosses: an ECT(1) inner packet goes out with ECT(1) outside.
    let mut ect = frame.clone();
    ect[15] = 0x01;
    ect[24..26].copy_from_slice(&[0, 0]);
    let sum = ect[14..34].chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]]) as u32).sum::<u32>();
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    ect[24..26].copy_from_slice(&sum.to_be_bytes());
    ha.send_frame(&ect).unwrap();
    let crossed = wire(&ua, &ub, Duration::from_millis(300));
    let outer = crossed.iter().find(|f| f[12..14] == [0x08, 0x00]).expect("an encapsulated frame");
    assert_eq!(outer[15] & 3, 1, "the outer header carries the inner ECN field");
    assert_eq!(recv_n(&hb, 1, Duration::from_secs(2))[0].data(), &ect[..]);

    // And back, B having learnt A from A's request.
    let back = ip::udp(ma, mb, [192, 168, 7, 2], [192, 168, 7, 1], 2000, 1000, 64, b"and back");
    hb.send_frame(&back).unwrap();
    wire(&ua, &ub, Duration::from_millis(300));
    let got = recv_n(&ha, 1, Duration::from_secs(2));
    assert_eq!(got.len(), 1, "B answered without a miss of its own");
    assert_eq!(got[0].data(), &back[..]);
    assert_eq!(vx(&sb).drops.get(&vswitch_core::DropReason::TunnelNoNeighbour).copied().unwrap_or(0), 0);

    // Flushed, the next frame asks again.
    assert_eq!(sa.flush_tunnel_neighbours(), 1);
    ha.send_frame(&frame).unwrap();
    let again = wire(&ua, &ub, Duration::from_millis(300));
    assert!(again.iter().any(|f| f[12..14] == [0x08, 0x06]));
    assert_eq!(sa.tunnel_neighbours().len(), 1);
}

#[test]
fn an_uplink_that_cannot_be_one_is_refused_even_when_it_comes_later() {
    let sw = Switch::builder().build().unwrap();
    sw.add_bridge("br0").unwrap();
    let h = sw.add_memory_port("br0", "h", PortConfig::default()).unwrap();
    // A replayed configuration may name an uplink before it exists: the
    // tunnel is accepted, down. Here the uplink turns out to be itself...
    sw.add_port_spec("br0", &vxlan("vx", "10.78.0.1", "10.78.0.2", "vx"), OnOpenError::Defer).unwrap();
    // ...and another's uplink turns out to be on its own bridge.
    sw.add_port_spec("br0", &vxlan("vy", "10.78.0.1", "10.78.0.3", "later"), OnOpenError::Defer).unwrap();
    let _later = sw.add_memory_port("br0", "later", PortConfig::default()).unwrap();
    let info = |name: &str| {
        let b = sw.bridges();
        b.iter().flat_map(|b| b.ports.clone()).find(|p| p.name == name).unwrap()
    };
    let (vx, vy) = (info("vx"), info("vy"));
    assert!(vx.error.as_deref().is_some_and(|e| e.contains("a tunnel port cannot be an uplink")), "{vx:?}");
    assert!(vy.error.as_deref().is_some_and(|e| e.contains("another bridge")), "{vy:?}");
    // Flooding to both (their links down) neither hangs a datapath thread
    // nor loops: the switch goes on serving, and nothing comes back.
    for seq in 0..10 {
        h.send_frame(&vswitch_tests::frame(vswitch_core::MacAddr::BROADCAST, mac(9), seq)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    let s = sw.stats();
    let ports = &s.bridges.iter().find(|b| b.name == "br0").unwrap().ports;
    let vx_stats = ports.iter().find(|p| p.name == "vx").unwrap();
    assert!(!vx_stats.link_up && vx_stats.tx_packets == 0, "{vx_stats:?}");
    assert!(h.recv().is_none(), "nothing looped back");
    // An operator adding such a tunnel is told at once.
    let e = sw.add_port_spec("br0", &vxlan("vz", "10.78.0.1", "10.78.0.4", "later"), OnOpenError::Fail);
    assert!(e.is_err_and(|e| e.to_string().contains("another bridge")));
}

#[test]
fn a_refused_uplink_is_taken_once_the_tunnel_it_was_refused_for_goes() {
    let sw = Switch::builder().build().unwrap();
    for b in ["br-a", "br-b"] {
        sw.add_bridge(b).unwrap();
    }
    sw.add_port_spec("br-a", &vxlan("t1", "10.79.0.1", "10.79.0.2", "up"), OnOpenError::Defer).unwrap();
    sw.add_port_spec("br-b", &vxlan("t2", "10.79.0.1", "10.79.0.3", "up"), OnOpenError::Defer).unwrap();
    // The uplink arrives on t2's bridge: refused, for both.
    let _up = sw.add_memory_port("br-b", "up", PortConfig::default()).unwrap();
    let port = |name: &str| sw.bridges().iter().flat_map(|b| b.ports.clone()).find(|p| p.name == name).unwrap();
    assert!(port("t1").error.is_some_and(|e| e.contains("another bridge")));
    // t2 goes: t1 gets its uplink, and its error is cleared.
    sw.del_port("t2").unwrap();
    assert_eq!(port("t1").error, None);
    let deadline = Instant::now() + Duration::from_secs(2);
    let up = || sw.stats().bridges.iter().flat_map(|b| b.ports.clone()).find(|p| p.name == "t1").unwrap().link_up;
    while !up() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(up(), "t1's link is up through the uplink it was refused before");
}
