//! The flow table end to end on in-process ports: ACLs, steering,
//! rewrites, multiple outputs, timeouts, counters, trace, and rules
//! changing under traffic.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use vswitch_core::{
    DropReason, ErrorKind, MacAddr, ManualClock, MemoryPortHandle, Packet, PortConfig, Switch, VlanMode,
};
use vswitch_tests::ip::{checksums_ok, fields, tcp_syn, udp};
use vswitch_tests::{drain, frame, mac, recv_n, vid_of};

const A: [u8; 4] = [10, 0, 0, 1];
const B: [u8; 4] = [10, 0, 0, 2];

/// A manual switch with ports a, b, c (1, 2, 3) whose hosts have been
/// learned (each sent a broadcast).
fn setup() -> (Switch, ManualClock, Vec<MemoryPortHandle>) {
    let clock = ManualClock::new();
    let sw = Switch::builder().manual().clock(clock.clone()).build().unwrap();
    sw.add_bridge("br0").unwrap();
    let p: Vec<_> =
        ["a", "b", "c"].iter().map(|n| sw.add_memory_port("br0", n, PortConfig::default()).unwrap()).collect();
    for (i, h) in p.iter().enumerate() {
        h.send_frame(&frame(MacAddr::BROADCAST, mac(i as u16 + 1), 0)).unwrap();
    }
    sw.run_until_idle().unwrap();
    p.iter().for_each(|h| drop(drain(h)));
    (sw, clock, p)
}

fn dport(p: &Packet) -> u16 {
    fields(p.data()).4
}

#[test]
fn acl_drops_ssh_and_allows_the_rest() {
    let (sw, _, p) = setup();
    sw.add_flow("br0", "priority=100,tcp,tp_dst=22,actions=drop").unwrap();
    p[0].send_frame(&tcp_syn(mac(2), mac(1), A, B, 40000, 22)).unwrap();
    p[0].send_frame(&tcp_syn(mac(2), mac(1), A, B, 40001, 80)).unwrap();
    p[0].send_frame(&udp(mac(2), mac(1), A, B, 5000, 22, 64, b"x")).unwrap();
    sw.run_until_idle().unwrap();
    let got: Vec<u16> = drain(&p[1]).iter().map(dport).collect();
    assert_eq!(got, vec![80, 22], "TCP 80 and UDP 22 pass, TCP 22 does not");
    assert!(drain(&p[2]).is_empty(), "learned unicast is not flooded");
    let flows = sw.dump_flows("br0").unwrap();
    assert_eq!((flows[0].priority, flows[0].n_packets), (100, 1));
    assert_eq!(flows[0].n_bytes, 54);
    // The default rule also counted setup()'s three broadcasts.
    assert_eq!((flows[1].priority, flows[1].n_packets), (0, 3 + 2));
    assert_eq!(sw.stats().port("a").unwrap().drops[&DropReason::FlowDrop], 1);
    // Deleting the ACL lets SSH through again.
    assert_eq!(sw.del_flows("br0", Some("tcp,tp_dst=22"), false).unwrap(), 1);
    p[0].send_frame(&tcp_syn(mac(2), mac(1), A, B, 40002, 22)).unwrap();
    sw.run_until_idle().unwrap();
    assert_eq!(drain(&p[1]).iter().map(dport).collect::<Vec<_>>(), vec![22]);
}

#[test]
fn steering_by_port_and_protocol() {
    let (sw, _, p) = setup();
    // DNS from a goes to c whatever its destination MAC says.
    sw.add_flow("br0", "priority=100,in_port=a,udp,tp_dst=53,actions=output:c").unwrap();
    p[0].send_frame(&udp(mac(2), mac(1), A, B, 5000, 53, 64, b"q")).unwrap();
    p[0].send_frame(&udp(mac(2), mac(1), A, B, 5000, 54, 64, b"q")).unwrap();
    sw.run_until_idle().unwrap();
    assert_eq!(drain(&p[2]).iter().map(dport).collect::<Vec<_>>(), vec![53]);
    assert_eq!(drain(&p[1]).iter().map(dport).collect::<Vec<_>>(), vec![54]);
}

#[test]
fn vlan_push_rewrite_and_strip() {
    let (sw, _, p) = setup();
    sw.add_flows(
        "br0",
        &[
            "priority=100,in_port=1,actions=mod_vlan_vid:20,output:2",
            "priority=100,in_port=2,dl_vlan=20,actions=strip_vlan,output:1",
            "priority=100,in_port=2,dl_vlan=30,actions=mod_vlan_vid:31,mod_vlan_pcp:5,output:3",
        ],
    )
    .unwrap();
    p[0].send_frame(&udp(mac(2), mac(1), A, B, 1, 2, 64, b"v")).unwrap();
    sw.run_until_idle().unwrap();
    let got = drain(&p[1]);
    assert_eq!(vid_of(got[0].data()), Some(20));
    assert!(checksums_ok(&[&got[0].data()[..12], &got[0].data()[16..]].concat()));
    // Back from port 2 tagged 20: untagged at port 1, byte for byte what a sent.
    p[1].send_frame(got[0].data()).unwrap();
    sw.run_until_idle().unwrap();
    assert_eq!(drain(&p[0])[0].data(), &udp(mac(2), mac(1), A, B, 1, 2, 64, b"v")[..]);
    // A tag rewritten in place, priority set.
    let mut t = udp(mac(3), mac(2), B, A, 1, 2, 64, b"v");
    t.splice(12..12, [0x81, 0x00, 0x00, 30]);
    p[1].send_frame(&t).unwrap();
    sw.run_until_idle().unwrap();
    let d = drain(&p[2]);
    assert_eq!(&d[0].data()[12..16], &[0x81, 0x00, 0xa0, 31]);
}

#[test]
fn mac_and_ip_rewrite_keep_checksums_valid() {
    let (sw, _, p) = setup();
    // A "virtual IP" 10.0.0.99 served by b: rewrite and deliver.
    sw.add_flow(
        "br0",
        "priority=100,udp,nw_dst=10.0.0.99,actions=mod_dl_dst:02:00:00:00:00:02,mod_nw_dst:10.0.0.2,mod_tp_dst:5353,dec_ttl,output:2",
    )
    .unwrap();
    p[0].send_frame(&udp(MacAddr([2, 0, 0, 0, 0, 0x99]), mac(1), A, [10, 0, 0, 99], 4000, 53, 64, b"query")).unwrap();
    sw.run_until_idle().unwrap();
    let got = drain(&p[1]);
    assert_eq!(got.len(), 1);
    let d = got[0].data();
    assert_eq!(&d[..6], &mac(2).0);
    assert_eq!(fields(d), (A, B, 63, 4000, 5353));
    assert!(checksums_ok(d), "smoltcp verifies the rewritten IPv4 and UDP checksums");
    // TCP too.
    sw.add_flow("br0", "priority=100,tcp,actions=mod_nw_src:10.0.0.50,mod_tp_src:1234,output:2").unwrap();
    p[0].send_frame(&tcp_syn(mac(2), mac(1), A, B, 40000, 80)).unwrap();
    sw.run_until_idle().unwrap();
    let d = drain(&p[1]);
    assert_eq!(fields(d[0].data()), ([10, 0, 0, 50], B, 64, 1234, 80));
    assert!(checksums_ok(d[0].data()));
}

#[test]
fn several_outputs_each_see_the_packet_as_it_was() {
    let (sw, _, p) = setup();
    sw.add_flow("br0", "priority=100,in_port=1,actions=output:2,mod_vlan_vid:7,output:3").unwrap();
    p[0].send_frame(&frame(mac(9), mac(1), 1)).unwrap();
    sw.run_until_idle().unwrap();
    assert_eq!(vid_of(drain(&p[1])[0].data()), None, "the first output went before the rewrite");
    assert_eq!(vid_of(drain(&p[2])[0].data()), Some(7));
    // FLOOD and IN_PORT.
    sw.add_flow("br0", "priority=100,in_port=2,actions=FLOOD,IN_PORT").unwrap();
    p[1].send_frame(&frame(mac(9), mac(2), 2)).unwrap();
    sw.run_until_idle().unwrap();
    assert_eq!((drain(&p[0]).len(), drain(&p[1]).len(), drain(&p[2]).len()), (1, 1, 1));
}

#[test]
fn dec_ttl_drops_expiring_packets() {
    let (sw, _, p) = setup();
    sw.add_flow("br0", "priority=100,ip,actions=dec_ttl,NORMAL").unwrap();
    p[0].send_frame(&udp(mac(2), mac(1), A, B, 1, 2, 1, b"t")).unwrap();
    p[0].send_frame(&udp(mac(2), mac(1), A, B, 1, 2, 2, b"t")).unwrap();
    sw.run_until_idle().unwrap();
    let got = drain(&p[1]);
    assert_eq!(got.len(), 1);
    assert_eq!(fields(got[0].data()).2, 1);
    assert!(checksums_ok(got[0].data()));
    assert_eq!(sw.stats().port("a").unwrap().drops[&DropReason::TtlExpired], 1);
}

#[test]
fn output_to_a_missing_port_or_back_in_is_dropped_and_counted() {
    let (sw, _, p) = setup();
    sw.add_flow("br0", "priority=100,in_port=1,actions=output:9,output:1").unwrap();
    p[0].send_frame(&frame(mac(2), mac(1), 1)).unwrap();
    sw.run_until_idle().unwrap();
    assert!(p.iter().all(|h| drain(h).is_empty()));
    let s = sw.stats();
    let a = s.port("a").unwrap();
    assert_eq!((a.drops[&DropReason::NoPort], a.drops[&DropReason::SamePort]), (1, 1));
}

#[test]
fn an_empty_table_drops_everything() {
    let (sw, _, p) = setup();
    assert_eq!(sw.del_flows("br0", None, false).unwrap(), 1);
    p[0].send_frame(&frame(MacAddr::BROADCAST, mac(1), 1)).unwrap();
    sw.run_until_idle().unwrap();
    assert!(drain(&p[1]).is_empty());
    assert_eq!(sw.stats().port("a").unwrap().drops[&DropReason::NoMatch], 1);
    sw.add_flow("br0", "priority=0,actions=NORMAL").unwrap();
    p[0].send_frame(&frame(MacAddr::BROADCAST, mac(1), 2)).unwrap();
    sw.run_until_idle().unwrap();
    assert_eq!(drain(&p[1]).len(), 1, "back to a learning switch");
}

#[test]
fn timeouts_with_a_virtual_clock() {
    let (sw, clock, p) = setup();
    sw.add_flow("br0", "idle_timeout=5,priority=100,in_port=1,actions=output:3").unwrap();
    sw.add_flow("br0", "hard_timeout=20,priority=90,in_port=2,actions=output:3").unwrap();
    for _ in 0..3 {
        clock.advance(Duration::from_secs(3));
        p[0].send_frame(&frame(mac(2), mac(1), 1)).unwrap();
        sw.run_until_idle().unwrap();
    }
    assert_eq!(drain(&p[2]).len(), 3, "kept alive by traffic past 5 s");
    assert_eq!(sw.dump_flows("br0").unwrap().len(), 3);
    // 15 s: the idle rule, last used at 9 s, has expired.
    clock.advance(Duration::from_secs(6));
    sw.poll().unwrap();
    let flows = sw.dump_flows("br0").unwrap();
    assert_eq!(flows.iter().map(|f| f.priority).collect::<Vec<_>>(), vec![90, 0], "idle rule expired");
    clock.advance(Duration::from_secs(4));
    sw.poll().unwrap();
    assert_eq!(sw.dump_flows("br0").unwrap().len(), 2, "hard rule still there at 19 s");
    clock.advance(Duration::from_secs(1));
    sw.poll().unwrap();
    assert_eq!(sw.dump_flows("br0").unwrap().len(), 1, "hard rule expired at 20 s");
    p[0].send_frame(&frame(mac(2), mac(1), 1)).unwrap();
    sw.run_until_idle().unwrap();
    assert_eq!(drain(&p[1]).len(), 1, "NORMAL again");
}

#[test]
fn modify_keeps_counters_and_changes_actions() {
    let (sw, _, p) = setup();
    sw.add_flow("br0", "priority=100,in_port=1,actions=output:2").unwrap();
    p[0].send_frame(&frame(mac(9), mac(1), 1)).unwrap();
    sw.run_until_idle().unwrap();
    assert_eq!(sw.mod_flows("br0", "in_port=1,actions=output:3", false).unwrap(), 1);
    p[0].send_frame(&frame(mac(9), mac(1), 2)).unwrap();
    sw.run_until_idle().unwrap();
    assert_eq!((drain(&p[1]).len(), drain(&p[2]).len()), (1, 1));
    let f = &sw.dump_flows("br0").unwrap()[0];
    assert_eq!((f.n_packets, f.actions.as_str()), (2, "output:3"));
    assert!(f.to_text().contains("n_packets=2, n_bytes=128,"), "{}", f.to_text());
}

#[test]
fn control_errors() {
    let sw = Switch::builder().manual().flow_limit(3).build().unwrap();
    sw.add_bridge("br0").unwrap();
    let e = sw.add_flow("br0", "priority=1,nw_dts=1.2.3.4,actions=drop").unwrap_err();
    assert_eq!(
        (e.kind(), e.to_string().as_str()),
        (ErrorKind::InvalidArgument, "invalid flow: unknown field 'nw_dts'")
    );
    let e = sw
        .add_flows("br0", &["priority=1,in_port=1,actions=drop", "priority=1,tcp,tp_dst=x,actions=drop"])
        .unwrap_err();
    assert!(e.to_string().contains("flow 2: tp_dst value 'x' is not a number"), "{e}");
    assert_eq!(sw.dump_flows("br0").unwrap().len(), 1, "a refused batch adds nothing");
    sw.add_flows("br0", &["priority=1,in_port=1,actions=drop", "priority=1,in_port=2,actions=drop"]).unwrap();
    assert_eq!(sw.add_flow("br0", "priority=1,in_port=3,actions=drop").unwrap_err().kind(), ErrorKind::Full);
    assert_eq!(sw.add_flow("nope", "actions=drop").unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(sw.trace("br0", "in_port=1,actions=drop").unwrap_err().kind(), ErrorKind::InvalidArgument);
}

#[test]
fn trace_explains_rules_and_normal() {
    let (sw, _, _p) = setup();
    let t = sw.trace("br0", "in_port=1,dl_dst=02:00:00:00:00:02").unwrap();
    assert_eq!(t.rule.as_deref(), Some("priority=0 actions=NORMAL"));
    assert_eq!(t.outputs.iter().map(|o| (o.port_no, o.port.as_str())).collect::<Vec<_>>(), vec![(2, "b")]);
    assert!(t.steps.join("\n").contains("learned on port 2 in VLAN 0"), "{:?}", t.steps);
    let t = sw.trace("br0", "in_port=1,dl_dst=02:00:00:00:00:77").unwrap();
    assert_eq!(t.outputs.iter().map(|o| o.port_no).collect::<Vec<_>>(), vec![2, 3]);
    assert!(t.steps.join("\n").contains("not learned"), "{:?}", t.steps);
    sw.add_flow("br0", "priority=100,tcp,tp_dst=22,actions=drop").unwrap();
    let t = sw.trace("br0", "in_port=a,dl_dst=02:00:00:00:00:02,tcp,tp_dst=22").unwrap();
    assert_eq!(t.rule.as_deref(), Some("priority=100,tcp,tp_dst=22 actions=drop"));
    assert_eq!(t.verdict, "drop");
    let text = t.to_text();
    assert!(text.contains("Flow: tcp,in_port=1,dl_dst=02:00:00:00:00:02,tp_dst=22"), "{text}");
    assert!(text.ends_with("Datapath actions: drop"), "{text}");
    // Nothing was counted by tracing.
    assert_eq!(sw.dump_flows("br0").unwrap()[0].n_packets, 0);
    // VLAN tagging in the trace.
    sw.set_port_vlan("c", VlanMode::trunk(&[]).unwrap()).unwrap();
    sw.set_port_vlan("a", VlanMode::access(5).unwrap()).unwrap();
    let t = sw.trace("br0", "in_port=1,dl_dst=ff:ff:ff:ff:ff:ff").unwrap();
    // b and c are trunks of every VLAN: VLAN 5 leaves tagged on both.
    assert_eq!(t.outputs.iter().map(|o| (o.port_no, o.vlan)).collect::<Vec<_>>(), vec![(2, Some(5)), (3, Some(5))]);
    sw.set_port_vlan("b", VlanMode::access(6).unwrap()).unwrap();
    let t = sw.trace("br0", "in_port=1,dl_dst=ff:ff:ff:ff:ff:ff").unwrap();
    assert_eq!(t.outputs.iter().map(|o| (o.port_no, o.vlan)).collect::<Vec<_>>(), vec![(3, Some(5))]);
}

/// Two policies swapped atomically, again and again, under traffic. A
/// burst of two packets (tp_dst 7 and 8) is always switched by one table:
/// policy 1 delivers only the first (to b), policy 2 only the second (to
/// c). A half-applied table would deliver both or neither.
#[test]
fn rule_changes_under_traffic_are_atomic() {
    policy_swaps(1);
}

#[test]
fn rule_changes_under_traffic_are_atomic_with_two_threads() {
    policy_swaps(2);
}

/// Ports owned by two datapath threads hit one rule: its counters add up
/// both threads' packets.
#[test]
fn rule_counters_add_up_across_threads() {
    let sw = Switch::builder().pmd_threads(2).build().unwrap();
    sw.add_bridge("br0").unwrap();
    let p: Vec<_> =
        ["a", "b", "c", "d"].iter().map(|n| sw.add_memory_port("br0", n, PortConfig::default()).unwrap()).collect();
    sw.add_flow("br0", "priority=100,udp,tp_dst=9,actions=output:4").unwrap();
    for (i, h) in p.iter().take(3).enumerate() {
        for seq in 0..100u32 {
            h.send_frame(&udp(mac(4), mac(i as u16 + 1), A, B, 1, 9, 64, &seq.to_be_bytes())).unwrap();
        }
    }
    assert_eq!(recv_n(&p[3], 300, Duration::from_secs(10)).len(), 300);
    let f = &sw.dump_flows("br0").unwrap()[0];
    assert_eq!((f.priority, f.n_packets), (100, 300), "a rule's counters are shared by all threads");
}

fn policy_swaps(threads: usize) {
    let sw = Arc::new(Switch::builder().pmd_threads(threads).memory_queue_len(1 << 16).build().unwrap());
    sw.add_bridge("br0").unwrap();
    let a = sw.add_memory_port("br0", "a", PortConfig::default()).unwrap();
    let b = sw.add_memory_port("br0", "b", PortConfig::default()).unwrap();
    let c = sw.add_memory_port("br0", "c", PortConfig::default()).unwrap();
    let p1 = ["priority=100,in_port=1,udp,tp_dst=7,actions=output:2", "priority=50,in_port=1,udp,actions=drop"];
    let p2 = ["priority=100,in_port=1,udp,tp_dst=7,actions=drop", "priority=50,in_port=1,udp,actions=output:3"];
    sw.add_flows("br0", &p1).unwrap();
    const PAIRS: u32 = 20_000;
    let done = Arc::new(AtomicBool::new(false));
    let flipper = {
        let (sw, done) = (sw.clone(), done.clone());
        std::thread::spawn(move || {
            let mut flips = 0;
            while !done.load(Ordering::Relaxed) {
                sw.add_flows("br0", if flips % 2 == 0 { &p2 } else { &p1 }).unwrap();
                flips += 1;
            }
            flips
        })
    };
    let mut burst = Vec::new();
    for i in 0..PAIRS {
        let payload = i.to_be_bytes();
        burst.push(Packet::from_frame(&udp(mac(2), mac(1), A, B, 1, 7, 64, &payload)));
        burst.push(Packet::from_frame(&udp(mac(3), mac(1), A, B, 1, 8, 64, &payload)));
        while !burst.is_empty() {
            if a.send_burst(&mut burst) == 0 {
                std::thread::yield_now();
            }
        }
    }
    // Everything sent; wait for the datapath to finish, then stop flipping.
    let mut delivered: HashMap<u32, u32> = HashMap::new();
    let mut count = |h: &MemoryPortHandle| {
        let got = recv_n(h, usize::MAX, Duration::from_millis(500));
        for p in &got {
            let d = p.data();
            let seq = u32::from_be_bytes([d[42], d[43], d[44], d[45]]);
            *delivered.entry(seq).or_default() += 1;
        }
        got.len()
    };
    let (nb, nc) = (count(&b), count(&c));
    done.store(true, Ordering::Relaxed);
    let flips = flipper.join().unwrap();
    assert!(flips > 10, "the policy changed only {flips} times");
    assert!(nb > 0 && nc > 0, "both policies were in force at some point ({nb}, {nc})");
    assert_eq!(delivered.len(), PAIRS as usize, "every pair had exactly one packet delivered");
    assert!(delivered.values().all(|&n| n == 1), "never both of a pair");
    assert_eq!(sw.stats().port("a").unwrap().rx_packets, 2 * PAIRS as u64);
}
