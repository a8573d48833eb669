//! Switching semantics on in-process ports, deterministic: a manual
//! datapath driven by the test and a virtual clock.

use std::collections::HashMap;
use std::time::Duration;

use vswitch_core::mac::MacTableConfig;
use vswitch_core::{DropReason, ErrorKind, ManualClock, MemoryPortHandle, PortConfig, Switch, VlanMode};
use vswitch_tests::{drain, frame, mac, recv_n, seq_of, tagged, vid_of};

fn manual_switch() -> (Switch, ManualClock) {
    manual_switch_with(MacTableConfig::default())
}

/// A switch whose datapath the test drives, on a virtual clock, with one
/// bridge "br0".
fn manual_switch_with(mac: MacTableConfig) -> (Switch, ManualClock) {
    let clock = ManualClock::new();
    let sw = Switch::builder().manual().clock(clock.clone()).mac_table(mac).build().unwrap();
    sw.add_bridge("br0").unwrap();
    (sw, clock)
}

fn ports(sw: &Switch, names: &[&str]) -> Vec<MemoryPortHandle> {
    names.iter().map(|n| sw.add_memory_port("br0", n, PortConfig::default()).unwrap()).collect()
}

fn access(vid: u16) -> PortConfig {
    PortConfig::with_vlan(VlanMode::access(vid).unwrap())
}

fn trunk(vids: &[u16]) -> PortConfig {
    PortConfig::with_vlan(VlanMode::trunk(vids).unwrap())
}

#[test]
fn learns_then_forwards_unicast_only_to_its_port() {
    let (sw, _) = manual_switch();
    let p = ports(&sw, &["a", "b", "c"]);
    // a -> b, b unknown: flooded to b and c.
    p[0].send_frame(&frame(mac(2), mac(1), 1)).unwrap();
    sw.run_until_idle().unwrap();
    assert_eq!(drain(&p[1]).len(), 1);
    assert_eq!(drain(&p[2]).len(), 1);
    // b -> a: a is known, only a gets it.
    p[1].send_frame(&frame(mac(1), mac(2), 2)).unwrap();
    sw.run_until_idle().unwrap();
    assert_eq!(drain(&p[0]).iter().map(|f| seq_of(f.data())).collect::<Vec<_>>(), vec![2]);
    assert!(drain(&p[2]).is_empty());
    // a -> b again: now b is known too.
    p[0].send_frame(&frame(mac(2), mac(1), 3)).unwrap();
    sw.run_until_idle().unwrap();
    assert_eq!(drain(&p[1]).len(), 1);
    assert!(drain(&p[2]).is_empty(), "known unicast is not flooded");

    let fdb = sw.fdb("br0").unwrap();
    assert_eq!(fdb.iter().map(|e| (e.port, e.mac)).collect::<Vec<_>>(), vec![(1, mac(1)), (2, mac(2))]);
    let stats = sw.stats();
    assert_eq!(stats.port("a").unwrap().rx_packets, 2);
    assert_eq!(stats.port("a").unwrap().tx_packets, 1);
    assert_eq!(stats.port("c").unwrap().tx_packets, 1);
    assert_eq!(stats.bridges[0].mac_table.learned, 2);
}

#[test]
fn never_sends_back_out_of_the_input_port() {
    let (sw, _) = manual_switch();
    let p = ports(&sw, &["a", "b"]);
    p[0].send_frame(&frame(MacAddr::BROADCAST, mac(1), 1)).unwrap();
    // a frame for a host learned on the same port: dropped, counted.
    p[0].send_frame(&frame(mac(1), mac(3), 2)).unwrap();
    sw.run_until_idle().unwrap();
    assert!(drain(&p[0]).is_empty());
    assert_eq!(drain(&p[1]).len(), 1);
    assert_eq!(sw.stats().port("a").unwrap().drops[&DropReason::SamePort], 1);
}

use vswitch_core::MacAddr;

#[test]
fn broadcast_and_multicast_flood_and_are_not_learned() {
    let (sw, _) = manual_switch();
    let p = ports(&sw, &["a", "b", "c", "d"]);
    p[0].send_frame(&frame(MacAddr::BROADCAST, mac(1), 1)).unwrap();
    p[0].send_frame(&frame(MacAddr([0x01, 0, 0x5e, 0, 0, 1]), mac(1), 2)).unwrap();
    // A frame with a group source address is forwarded but never learned.
    p[1].send_frame(&frame(MacAddr::BROADCAST, MacAddr([0x01, 0, 0, 0, 0, 9]), 3)).unwrap();
    sw.run_until_idle().unwrap();
    for h in &p[1..] {
        let got: Vec<u32> = drain(h).iter().map(|f| seq_of(f.data())).collect();
        assert!(got.starts_with(&[1, 2]), "{} got {got:?}", h.name());
    }
    assert_eq!(sw.fdb("br0").unwrap().len(), 1);
}

#[test]
fn reserved_link_local_groups_are_not_forwarded() {
    let (sw, _) = manual_switch();
    let p = ports(&sw, &["a", "b"]);
    p[0].send_frame(&frame(MacAddr([0x01, 0x80, 0xc2, 0, 0, 0]), mac(1), 1)).unwrap();
    sw.run_until_idle().unwrap();
    assert!(drain(&p[1]).is_empty());
    assert_eq!(sw.stats().port("a").unwrap().drops[&DropReason::ReservedGroup], 1);
}

#[test]
fn runts_are_dropped_and_counted() {
    let (sw, _) = manual_switch();
    let p = ports(&sw, &["a", "b"]);
    p[0].send_frame(&[0xff; 13]).unwrap();
    p[0].send_frame(&[]).unwrap();
    // A tag cut short.
    let t = tagged(mac(2), mac(1), 10, 0, 1);
    p[0].send_frame(&t[..16]).unwrap();
    sw.run_until_idle().unwrap();
    assert!(drain(&p[1]).is_empty());
    let s = sw.stats();
    let a = s.port("a").unwrap();
    assert_eq!((a.rx_packets, a.drops[&DropReason::Runt], a.drops[&DropReason::TruncatedVlan]), (3, 2, 1));
}

#[test]
fn vlan_access_ports_are_isolated_and_trunks_are_tagged() {
    let (sw, _) = manual_switch();
    let a1 = sw.add_memory_port("br0", "a1", access(10)).unwrap();
    let a2 = sw.add_memory_port("br0", "a2", access(10)).unwrap();
    let b1 = sw.add_memory_port("br0", "b1", access(20)).unwrap();
    let b2 = sw.add_memory_port("br0", "b2", access(20)).unwrap();
    let t = sw.add_memory_port("br0", "t", trunk(&[])).unwrap();

    a1.send_frame(&frame(MacAddr::BROADCAST, mac(1), 1)).unwrap();
    sw.run_until_idle().unwrap();
    let got = drain(&a2);
    assert_eq!(got.len(), 1);
    assert_eq!(vid_of(got[0].data()), None, "access ports are untagged on the wire");
    assert_eq!(got[0].data(), &frame(MacAddr::BROADCAST, mac(1), 1)[..]);
    assert!(drain(&b1).is_empty() && drain(&b2).is_empty(), "VLAN 20 does not see VLAN 10");
    let got = drain(&t);
    assert_eq!(got.len(), 1);
    assert_eq!(vid_of(got[0].data()), Some(10), "the trunk carries VLAN 10 tagged");
    assert_eq!(got[0].data(), &tagged(MacAddr::BROADCAST, mac(1), 10, 0, 1)[..]);

    // From the trunk, tagged 20: to b1 and b2 untagged, not to VLAN 10.
    t.send_frame(&tagged(MacAddr::BROADCAST, mac(9), 20, 5, 2)).unwrap();
    sw.run_until_idle().unwrap();
    for h in [&b1, &b2] {
        let got = drain(h);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].data(), &frame(MacAddr::BROADCAST, mac(9), 2)[..]);
    }
    assert!(drain(&a1).is_empty() && drain(&a2).is_empty());

    // Unicast reply from b1 to the host behind the trunk: tagged 20, only there.
    b1.send_frame(&frame(mac(9), mac(21), 3)).unwrap();
    sw.run_until_idle().unwrap();
    let got = drain(&t);
    assert_eq!(got.len(), 1);
    assert_eq!(vid_of(got[0].data()), Some(20));
    assert!(drain(&b2).is_empty());

    // The same MAC in two VLANs is two entries.
    a1.send_frame(&frame(MacAddr::BROADCAST, mac(9), 4)).unwrap();
    sw.run_until_idle().unwrap();
    let fdb = sw.fdb("br0").unwrap();
    let m9: Vec<(u16, u32)> = fdb.iter().filter(|e| e.mac == mac(9)).map(|e| (e.vlan, e.port)).collect();
    assert_eq!(m9, vec![(10, a1.port_no()), (20, t.port_no())]);
    assert_eq!(drain(&a2).len(), 1);
    assert_eq!(drain(&t).len(), 1);

    // A tagged frame on an access port is dropped.
    a1.send_frame(&tagged(MacAddr::BROADCAST, mac(1), 20, 0, 5)).unwrap();
    sw.run_until_idle().unwrap();
    assert!(drain(&b1).is_empty() && drain(&t).is_empty() && drain(&a2).is_empty());
    assert_eq!(sw.stats().port("a1").unwrap().drops[&DropReason::TaggedOnAccess], 1);
}

#[test]
fn priority_tagged_frames_on_access_ports_are_accepted() {
    let (sw, _) = manual_switch();
    let a = sw.add_memory_port("br0", "a", access(10)).unwrap();
    let b = sw.add_memory_port("br0", "b", access(10)).unwrap();
    let t = sw.add_memory_port("br0", "t", trunk(&[10])).unwrap();
    a.send_frame(&tagged(MacAddr::BROADCAST, mac(1), 0, 6, 1)).unwrap();
    sw.run_until_idle().unwrap();
    assert_eq!(drain(&b)[0].data(), &frame(MacAddr::BROADCAST, mac(1), 1)[..]);
    // Onto the trunk: VID set to 10, the priority kept.
    assert_eq!(drain(&t)[0].data(), &tagged(MacAddr::BROADCAST, mac(1), 10, 6, 1)[..]);
}

#[test]
fn trunk_vlan_sets_filter_both_ways() {
    let (sw, _) = manual_switch();
    let t1 = sw.add_memory_port("br0", "t1", trunk(&[10, 20])).unwrap();
    let t2 = sw.add_memory_port("br0", "t2", trunk(&[10])).unwrap();
    let all = sw.add_memory_port("br0", "all", trunk(&[])).unwrap();
    t1.send_frame(&tagged(MacAddr::BROADCAST, mac(1), 20, 0, 1)).unwrap();
    t1.send_frame(&tagged(MacAddr::BROADCAST, mac(1), 10, 0, 2)).unwrap();
    t1.send_frame(&tagged(MacAddr::BROADCAST, mac(1), 30, 0, 3)).unwrap();
    // Untagged frames on a trunk belong to VLAN 0 and stay untagged.
    all.send_frame(&frame(MacAddr::BROADCAST, mac(2), 4)).unwrap();
    sw.run_until_idle().unwrap();
    let on_t2: Vec<(Option<u16>, u32)> = drain(&t2).iter().map(|p| (vid_of(p.data()), seq_of(p.data()))).collect();
    assert_eq!(on_t2, vec![(Some(10), 2)]);
    let on_all: Vec<(Option<u16>, u32)> = drain(&all).iter().map(|p| (vid_of(p.data()), seq_of(p.data()))).collect();
    assert_eq!(on_all, vec![(Some(20), 1), (Some(10), 2)]);
    assert!(drain(&t1).is_empty(), "VLAN 0 is not in t1's set");
    let s = sw.stats();
    assert_eq!(s.port("t1").unwrap().drops[&DropReason::VlanNotAllowed], 1);
    assert_eq!(s.port("all").unwrap().drops[&DropReason::VlanNotAllowed], 0);
}

#[test]
fn aging_through_the_switch_with_a_virtual_clock() {
    let (sw, clock) = manual_switch_with(MacTableConfig::new(60, 100));
    let p = ports(&sw, &["a", "b", "c"]);
    p[1].send_frame(&frame(MacAddr::BROADCAST, mac(2), 0)).unwrap();
    sw.run_until_idle().unwrap();
    drain(&p[0]);
    drain(&p[2]);
    clock.advance(Duration::from_secs(59));
    sw.poll().unwrap();
    p[0].send_frame(&frame(mac(2), mac(1), 1)).unwrap();
    sw.run_until_idle().unwrap();
    assert!(drain(&p[2]).is_empty(), "still known at 59 s");
    assert_eq!(drain(&p[1]).len(), 1);
    clock.advance(Duration::from_secs(2));
    // The datapath runs an aging step on every pass.
    sw.poll().unwrap();
    p[0].send_frame(&frame(mac(2), mac(1), 2)).unwrap();
    sw.run_until_idle().unwrap();
    assert_eq!(drain(&p[2]).len(), 1, "flooded again once aged out");
    assert_eq!(sw.stats().bridges[0].mac_table.expired, 1);
}

#[test]
fn datapath_ages_entries_without_help() {
    let (sw, clock) = manual_switch_with(MacTableConfig::new(5, 100));
    let p = ports(&sw, &["a", "b"]);
    p[0].send_frame(&frame(MacAddr::BROADCAST, mac(1), 0)).unwrap();
    sw.run_until_idle().unwrap();
    assert_eq!(sw.fdb("br0").unwrap().len(), 1);
    for _ in 0..7 {
        clock.advance(Duration::from_secs(1));
        sw.poll().unwrap();
    }
    assert!(sw.fdb("br0").unwrap().is_empty());
}

#[test]
fn a_host_that_moves_is_followed() {
    let (sw, _) = manual_switch();
    let p = ports(&sw, &["a", "b", "c"]);
    p[0].send_frame(&frame(MacAddr::BROADCAST, mac(1), 0)).unwrap();
    sw.run_until_idle().unwrap();
    p.iter().for_each(|h| drop(drain(h)));
    p[2].send_frame(&frame(MacAddr::BROADCAST, mac(1), 1)).unwrap();
    sw.run_until_idle().unwrap();
    p.iter().for_each(|h| drop(drain(h)));
    p[1].send_frame(&frame(mac(1), mac(2), 2)).unwrap();
    sw.run_until_idle().unwrap();
    assert!(drain(&p[0]).is_empty());
    assert_eq!(drain(&p[2]).len(), 1);
    assert_eq!(sw.stats().bridges[0].mac_table.moved, 1);
}

#[test]
fn static_entries_hold_against_spoofing() {
    let (sw, _) = manual_switch();
    let p = ports(&sw, &["a", "b", "c"]);
    sw.mac_table("br0").unwrap().add_static(0, mac(1), 1).unwrap();
    // A spoofer on c claims mac 1.
    p[2].send_frame(&frame(MacAddr::BROADCAST, mac(1), 0)).unwrap();
    p[1].send_frame(&frame(mac(1), mac(2), 1)).unwrap();
    sw.run_until_idle().unwrap();
    assert_eq!(drain(&p[0]).iter().filter(|f| seq_of(f.data()) == 1).count(), 1);
    assert!(drain(&p[2]).iter().all(|f| seq_of(f.data()) != 1));
    assert_eq!(sw.stats().bridges[0].mac_table.static_conflicts, 1);
}

#[test]
fn link_down_port_is_skipped_and_counted() {
    let (sw, _) = manual_switch();
    let p = ports(&sw, &["a", "b", "c"]);
    p[2].set_link_up(false);
    p[0].send_frame(&frame(MacAddr::BROADCAST, mac(1), 0)).unwrap();
    sw.run_until_idle().unwrap();
    assert_eq!(drain(&p[1]).len(), 1);
    assert!(drain(&p[2]).is_empty());
    let s = sw.stats();
    assert!(!s.port("c").unwrap().link_up);
    assert_eq!(s.port("c").unwrap().drops[&DropReason::LinkDown], 1);
    p[2].set_link_up(true);
    p[0].send_frame(&frame(MacAddr::BROADCAST, mac(1), 1)).unwrap();
    sw.run_until_idle().unwrap();
    assert_eq!(drain(&p[2]).len(), 1);
}

#[test]
fn removing_a_port_forgets_its_hosts() {
    let (sw, _) = manual_switch();
    let p = ports(&sw, &["a", "b", "c"]);
    p[1].send_frame(&frame(MacAddr::BROADCAST, mac(2), 0)).unwrap();
    sw.run_until_idle().unwrap();
    sw.del_port("b").unwrap();
    assert!(p[1].is_detached());
    assert!(p[1].send_frame(&frame(MacAddr::BROADCAST, mac(2), 0)).is_err());
    p[0].send_frame(&frame(mac(2), mac(1), 1)).unwrap();
    sw.run_until_idle().unwrap();
    assert_eq!(drain(&p[2]).iter().filter(|f| seq_of(f.data()) == 1).count(), 1, "unknown again: flooded");
    assert!(sw.fdb("br0").unwrap().iter().all(|e| e.mac != mac(2)));
    // Its number is free for the next port.
    let d = sw.add_memory_port("br0", "d", PortConfig::default()).unwrap();
    assert_eq!(d.port_no(), 2);
}

#[test]
fn full_transmit_queue_drops_are_counted() {
    let sw = Switch::builder().manual().memory_queue_len(8).build().unwrap();
    sw.add_bridge("br0").unwrap();
    let a = sw.add_memory_port("br0", "a", PortConfig::default()).unwrap();
    let b = sw.add_memory_port("br0", "b", PortConfig::default()).unwrap();
    for i in 0..8 {
        a.send_frame(&frame(MacAddr::BROADCAST, mac(1), i)).unwrap();
    }
    assert!(a.send_frame(&frame(MacAddr::BROADCAST, mac(1), 99)).is_err(), "back-pressure to the sender");
    sw.run_until_idle().unwrap();
    for i in 8..12 {
        a.send_frame(&frame(MacAddr::BROADCAST, mac(1), i)).unwrap();
    }
    sw.run_until_idle().unwrap();
    assert_eq!(drain(&b).len(), 8);
    let s = sw.stats();
    assert_eq!(s.port("b").unwrap().tx_packets, 8);
    assert_eq!(s.port("b").unwrap().drops[&DropReason::TxQueueFull], 4);
}

/// One burst to a port drops frames for two reasons: both are counted,
/// each under its own.
#[test]
fn a_burst_dropped_for_two_reasons_counts_both() {
    let sw = Switch::builder().manual().memory_queue_len(8).build().unwrap();
    sw.add_bridge("br0").unwrap();
    let a = sw.add_memory_port("br0", "a", PortConfig::default()).unwrap();
    let mut b = sw.add_memory_port("br0", "b", PortConfig::default()).unwrap();
    b.set_mtu(500).unwrap();
    let sized = |i: u32, len: usize| {
        let mut f = frame(MacAddr::BROADCAST, mac(1), i);
        f.resize(len, 0);
        f
    };
    // b's queue of eight is left with two free slots...
    for i in 0..6 {
        a.send_frame(&sized(i, 60)).unwrap();
    }
    sw.run_until_idle().unwrap();
    // ...when one burst brings it two frames above its MTU and six that
    // fit: two are sent, two are too big, four find the queue full.
    for i in 6..14 {
        a.send_frame(&sized(i, if i % 4 == 0 { 1000 } else { 60 })).unwrap();
    }
    sw.run_until_idle().unwrap();
    assert_eq!(drain(&b).len(), 8);
    let s = sw.stats();
    let b_stats = s.port("b").unwrap();
    assert_eq!(b_stats.tx_packets, 8);
    assert_eq!((b_stats.drops[&DropReason::TooBig], b_stats.drops[&DropReason::TxQueueFull]), (2, 4));
}

#[test]
fn broadcast_storm_loses_and_duplicates_nothing() {
    storm(1);
}

/// Two datapath threads: ports alternate between them, so every flood
/// crosses threads (received by one, sent by both).
#[test]
fn broadcast_storm_across_two_datapath_threads() {
    storm(2);
}

fn storm(threads: usize) {
    // Threaded datapath, four senders at once, every frame to every port.
    let sw = Switch::builder().pmd_threads(threads).memory_queue_len(1 << 16).build().unwrap();
    sw.add_bridge("br0").unwrap();
    let names = ["p0", "p1", "p2", "p3", "p4", "p5"];
    let p: Vec<MemoryPortHandle> =
        names.iter().map(|n| sw.add_memory_port("br0", n, PortConfig::default()).unwrap()).collect();
    const PER_SENDER: u32 = 5000;
    let senders = 4;
    std::thread::scope(|s| {
        for (i, h) in p.iter().enumerate().take(senders) {
            s.spawn(move || {
                for seq in 0..PER_SENDER {
                    let f = frame(MacAddr::BROADCAST, mac(i as u16 + 1), (i as u32) << 24 | seq);
                    while h.send_frame(&f).is_err() {
                        std::thread::yield_now();
                    }
                }
            });
        }
    });
    for (i, h) in p.iter().enumerate() {
        let expected = if i < senders { (senders - 1) * PER_SENDER as usize } else { senders * PER_SENDER as usize };
        let got = recv_n(h, expected, Duration::from_secs(30));
        assert_eq!(got.len(), expected, "port {i} received every flooded frame");
        let mut seen: HashMap<u32, u32> = HashMap::new();
        let mut last_from: HashMap<u32, u32> = HashMap::new();
        for f in &got {
            let s = seq_of(f.data());
            *seen.entry(s).or_default() += 1;
            let (from, n) = (s >> 24, s & 0xff_ffff);
            if let Some(prev) = last_from.insert(from, n) {
                assert!(n > prev, "frames from one sender stay in order");
            }
            assert_ne!(from as usize, i, "nothing comes back to its sender");
        }
        assert!(seen.values().all(|&c| c == 1), "no duplicates on port {i}");
        std::thread::sleep(Duration::from_millis(20));
        assert!(h.recv().is_none(), "and nothing extra");
    }
    let s = sw.stats();
    for n in names {
        assert_eq!(s.port(n).unwrap().total_drops(), 0, "{n}");
    }
}

#[test]
fn control_errors_are_clear_and_change_nothing() {
    let (sw, _) = manual_switch();
    let _a = sw.add_memory_port("br0", "a", PortConfig::default()).unwrap();
    assert_eq!(sw.add_bridge("br0").unwrap_err().kind(), ErrorKind::Exists);
    assert_eq!(sw.add_memory_port("nope", "x", PortConfig::default()).unwrap_err().kind(), ErrorKind::NotFound);
    sw.add_bridge("br1").unwrap();
    let e = sw.add_memory_port("br1", "a", PortConfig::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Exists);
    assert_eq!(e.to_string(), "port 'a' already exists on bridge 'br0'");
    assert_eq!(sw.add_bridge("bad name").unwrap_err().kind(), ErrorKind::InvalidArgument);
    assert_eq!(sw.add_bridge("").unwrap_err().kind(), ErrorKind::InvalidArgument);
    assert_eq!(sw.del_port("zz").unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(VlanMode::access(4095).unwrap_err().kind(), ErrorKind::InvalidArgument);
    let bad = MacTableConfig::new(300, 0);
    assert_eq!(sw.add_bridge_with("br2", bad).unwrap_err().kind(), ErrorKind::InvalidArgument);
    let names: Vec<String> = sw.bridges().into_iter().map(|b| b.name).collect();
    assert_eq!(names, vec!["br0", "br1"]);
    assert_eq!(sw.bridges()[0].ports.len(), 1);
    sw.del_bridge("br1").unwrap();
    assert_eq!(sw.del_bridge("br1").unwrap_err().kind(), ErrorKind::NotFound);
}

#[test]
fn deleting_a_bridge_detaches_its_ports() {
    let (sw, _) = manual_switch();
    let p = ports(&sw, &["a", "b"]);
    sw.del_bridge("br0").unwrap();
    assert!(p.iter().all(|h| h.is_detached()));
    sw.add_bridge("br0").unwrap();
    sw.add_memory_port("br0", "a", PortConfig::default()).unwrap();
}

#[test]
fn changing_a_ports_vlan_applies_and_forgets_its_hosts() {
    let (sw, _) = manual_switch();
    let a = sw.add_memory_port("br0", "a", access(10)).unwrap();
    let b = sw.add_memory_port("br0", "b", access(10)).unwrap();
    a.send_frame(&frame(MacAddr::BROADCAST, mac(1), 0)).unwrap();
    sw.run_until_idle().unwrap();
    assert_eq!(drain(&b).len(), 1);
    sw.set_port_vlan("b", VlanMode::access(20).unwrap()).unwrap();
    assert!(sw.fdb("br0").unwrap().iter().all(|e| e.port != b.port_no()));
    a.send_frame(&frame(MacAddr::BROADCAST, mac(1), 1)).unwrap();
    sw.run_until_idle().unwrap();
    assert!(drain(&b).is_empty());
    assert_eq!(sw.bridges()[0].ports[1].vlan.tag, Some(20));
}

#[test]
fn stats_and_listings_serialize_with_documented_fields() {
    let (sw, _) = manual_switch();
    let _p = ports(&sw, &["a"]);
    let v = serde_json::to_value(sw.stats()).unwrap();
    let port = &v["bridges"][0]["ports"][0];
    for f in ["name", "port_no", "type", "link_up", "rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "drops"] {
        assert!(port.get(f).is_some(), "{f} in {port}");
    }
    assert_eq!(port["drops"]["tx_queue_full"], 0);
    for f in ["entries", "capacity", "aging_secs", "learned", "expired", "evicted", "moved"] {
        assert!(v["bridges"][0]["mac_table"].get(f).is_some(), "{f}");
    }
    let b = serde_json::to_value(sw.bridges()).unwrap();
    assert_eq!(b[0]["ports"][0]["type"], "memory");
    assert_eq!(b[0]["mac_table"]["capacity"], 8192);
}

#[test]
fn datapath_threads_are_pinned_when_asked() {
    let sw = Switch::builder().pmd_threads(2).pin_cpus(&[0]).build().unwrap();
    sw.add_bridge("br0").unwrap();
    let mut pinned = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim().starts_with("vswitch-pmd") {
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            let cpus = status.lines().find(|l| l.starts_with("Cpus_allowed_list:")).unwrap_or("");
            // Other tests' switches run unpinned in this process too: count ours.
            if cpus.split_whitespace().nth(1) == Some("0") {
                pinned += 1;
            }
        }
    }
    assert!(pinned >= 2, "both datapath threads run on CPU 0 only");
    assert_eq!(Switch::builder().pmd_threads(0).build().unwrap_err().kind(), ErrorKind::InvalidArgument);
}
