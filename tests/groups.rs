//! Group tables end to end on in-process ports: `all`, `select` (spread by
//! weight, a removed bucket moving only its own flows), `indirect`,
//! `fast_failover` on a link going down, chaining, counters, the rules a
//! deleted group takes with it, saved configuration, and `trace`.

use std::collections::HashMap;

use vswitch_core::{ErrorKind, ManualClock, MemoryPortHandle, PortConfig, Switch};
use vswitch_tests::ip::udp;
use vswitch_tests::{drain, frame, mac, vid_of};

const A: [u8; 4] = [10, 0, 0, 1];
const VIP: [u8; 4] = [10, 0, 0, 100];

/// A manual switch with ports a, b, c, d (1 to 4) and an empty flow table.
fn setup() -> (Switch, Vec<MemoryPortHandle>) {
    let sw = Switch::builder().manual().clock(ManualClock::new()).memory_queue_len(4096).build().unwrap();
    sw.add_bridge("br0").unwrap();
    let p: Vec<_> =
        ["a", "b", "c", "d"].iter().map(|n| sw.add_memory_port("br0", n, PortConfig::default()).unwrap()).collect();
    sw.del_flows("br0", None, false).unwrap();
    (sw, p)
}

/// Sends one UDP datagram from a per source port, and returns which port
/// (2, 3 or 4) it left by.
fn where_does(sw: &Switch, p: &[MemoryPortHandle], sport: u16) -> usize {
    p[0].send_frame(&udp(mac(9), mac(1), A, VIP, sport, 80, 64, b"x")).unwrap();
    sw.run_until_idle().unwrap();
    let hits: Vec<usize> = (1..4).filter(|&i| !drain(&p[i]).is_empty()).collect();
    assert_eq!(hits.len(), 1, "exactly one bucket took source port {sport}");
    hits[0] + 1
}

#[test]
fn all_copies_to_every_bucket_and_counts() {
    let (sw, p) = setup();
    sw.add_group("br0", "group_id=1,type=all,bucket=output:2,bucket=mod_vlan_vid:7,output:3").unwrap();
    sw.add_flow("br0", "priority=10,in_port=1,actions=group:1,output:4").unwrap();
    p[0].send_frame(&frame(mac(2), mac(1), 0)).unwrap();
    sw.run_until_idle().unwrap();
    assert_eq!(vid_of(drain(&p[1])[0].data()), None);
    assert_eq!(vid_of(drain(&p[2])[0].data()), Some(7));
    assert_eq!(vid_of(drain(&p[3])[0].data()), None, "a bucket's rewrite stays in the bucket");
    let g = &sw.dump_groups("br0").unwrap()[0];
    assert_eq!((g.group_id, g.ref_count, g.packet_count), (1, 1, 1));
    assert_eq!(g.buckets.iter().map(|b| b.packet_count).collect::<Vec<_>>(), vec![1, 1]);
    assert!(g.to_text().contains("bucket0:packet_count=1"), "{}", g.to_text());
}

#[test]
fn select_spreads_by_weight_and_a_removed_bucket_moves_only_its_flows() {
    let (sw, p) = setup();
    sw.add_group(
        "br0",
        "group_id=5,type=select,bucket=bucket_id:0,output:2,bucket=bucket_id:1,output:3,bucket=bucket_id:2,output:4",
    )
    .unwrap();
    sw.add_flow("br0", "priority=10,udp,nw_dst=10.0.0.100,actions=group:5").unwrap();
    let before: HashMap<u16, usize> = (0..1_000u16).map(|s| (s, where_does(&sw, &p, 10_000 + s))).collect();
    for port in 2..=4 {
        let n = before.values().filter(|&&o| o == port).count();
        assert!((283..=383).contains(&n), "port {port} got {n} of 1,000 flows (333 ± 15 %)");
    }
    // The same flow always goes the same way.
    assert_eq!(where_does(&sw, &p, 10_007), before[&7]);
    // Bucket 1 (port 3) goes: only its flows move.
    sw.mod_group("br0", "group_id=5,type=select,bucket=bucket_id:0,output:2,bucket=bucket_id:2,output:4").unwrap();
    for (&s, &was) in &before {
        let now = where_does(&sw, &p, 10_000 + s);
        if was == 3 {
            assert_ne!(now, 3);
        } else {
            assert_eq!(now, was, "flow {s} stayed on its bucket");
        }
    }
    // Weights: 3:1.
    sw.mod_group(
        "br0",
        "group_id=5,type=select,bucket=bucket_id:0,weight:3,output:2,bucket=bucket_id:2,weight:1,output:4",
    )
    .unwrap();
    let to_b = (0..1_000u16).filter(|&s| where_does(&sw, &p, 20_000 + s) == 2).count();
    assert!((700..=800).contains(&to_b), "weight 3 of 4 took {to_b} of 1,000");
}

#[test]
fn fast_failover_and_chained_indirect() {
    let (sw, p) = setup();
    sw.add_group("br0", "group_id=1,type=fast_failover,bucket=watch_port:2,output:2,bucket=watch_port:3,output:3")
        .unwrap();
    sw.add_group("br0", "group_id=2,type=indirect,bucket=group:1").unwrap();
    sw.add_flow("br0", "priority=10,in_port=1,actions=group:2").unwrap();
    p[0].send_frame(&frame(mac(2), mac(1), 0)).unwrap();
    sw.run_until_idle().unwrap();
    assert_eq!((drain(&p[1]).len(), drain(&p[2]).len()), (1, 0), "the first live bucket");
    p[1].set_link_up(false);
    sw.run_until_idle().unwrap();
    p[0].send_frame(&frame(mac(2), mac(1), 1)).unwrap();
    sw.run_until_idle().unwrap();
    assert_eq!(drain(&p[2]).len(), 1, "failed over to port 3");
    let t = sw.trace("br0", "in_port=1").unwrap();
    let steps = t.steps.join("\n");
    assert!(steps.contains("group:2 (indirect)") && steps.contains("group:1 (fast_failover): bucket 1"), "{steps}");
    assert_eq!(t.verdict, "3");
}

#[test]
fn groups_are_checked_and_take_their_rules_with_them() {
    let (sw, _p) = setup();
    let e = sw.add_flow("br0", "priority=10,actions=group:9").unwrap_err();
    assert!(e.to_string().contains("group 9 does not exist"), "{e}");
    sw.add_group("br0", "group_id=9,type=all,bucket=output:2").unwrap();
    assert_eq!(
        sw.add_group("br0", "group_id=9,type=all,bucket=output:3").unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    assert!(sw.mod_group("br0", "group_id=8,type=all,bucket=output:3").is_err(), "mod-group of a missing group");
    assert!(
        sw.add_group("br0", "group_id=10,type=indirect,bucket=group:11")
            .unwrap_err()
            .to_string()
            .contains("does not exist")
    );
    sw.add_group("br0", "group_id=10,type=indirect,bucket=group:9").unwrap();
    assert!(sw.del_groups("br0", Some(9)).unwrap_err().to_string().contains("used by group 10"));
    sw.add_flows("br0", &["priority=10,actions=group:9", "priority=5,actions=output:2"]).unwrap();
    // The saved configuration carries the groups, and builds the same switch.
    let config = sw.config(false).unwrap();
    assert_eq!(config.bridges[0].groups.len(), 2);
    let again = Switch::builder().manual().build().unwrap();
    again.apply_config(&config).unwrap();
    assert_eq!(again.dump_groups("br0").unwrap().len(), 2);
    assert_eq!(again.dump_flows("br0").unwrap().len(), 2);
    // Deleting every group takes the rule that used group 9 along.
    assert_eq!(sw.del_groups("br0", None).unwrap(), 2);
    let left: Vec<String> = sw.dump_flows("br0").unwrap().iter().map(|f| f.actions.clone()).collect();
    assert_eq!(left, vec!["output:2"]);
}

#[test]
fn select_hashes_the_fields_asked_for() {
    let (sw, p) = setup();
    // Hash only the destination port: every source port of one service
    // lands on one bucket.
    sw.add_group(
        "br0",
        "group_id=3,type=select,selection_method=hash,fields(tp_dst),bucket=output:2,bucket=output:3,bucket=output:4",
    )
    .unwrap();
    sw.add_flow("br0", "priority=10,udp,actions=group:3").unwrap();
    let first = where_does(&sw, &p, 1);
    assert!((2..200).all(|s| where_does(&sw, &p, s) == first));
}

#[test]
fn loops_and_fan_out_are_bounded() {
    let (sw, p) = setup();
    sw.add_group("br0", "group_id=2,type=all,bucket=output:2").unwrap();
    sw.add_group("br0", "group_id=1,type=all,bucket=group:2,bucket=group:2").unwrap();
    let e = sw.mod_group("br0", "group_id=2,type=all,bucket=group:1,bucket=group:1").unwrap_err();
    assert!(
        e.to_string().contains("groups loop: 1 -> 2 -> 1") || e.to_string().contains("groups loop: 2 -> 1 -> 2"),
        "{e}"
    );
    assert!(sw.add_group("br0", "group_id=3,type=all,bucket=group:3").unwrap_err().to_string().contains("loop"));
    // A chain of nine groups is refused; eight is the limit.
    for g in 10..18u32 {
        let next = if g == 10 { "output:3".to_string() } else { format!("group:{}", g - 1) };
        sw.add_group("br0", &format!("group_id={g},type=indirect,bucket={next}")).unwrap();
    }
    let e = sw.add_group("br0", "group_id=18,type=indirect,bucket=group:17").unwrap_err();
    assert!(e.to_string().contains("chain of 9"), "{e}");
    // Wide fan-out within the chain limit is cut off by the lookup limit,
    // as a loop of resubmits is: dropped and counted, the thread goes on.
    let wide = |g: u32, to: &str| {
        let buckets: Vec<String> = (0..32).map(|_| format!("bucket={to}")).collect();
        format!("group_id={g},type=all,{}", buckets.join(","))
    };
    sw.add_group("br0", &wide(30, "output:4")).unwrap();
    sw.add_group("br0", &wide(31, "group:30")).unwrap();
    sw.add_group("br0", &wide(32, "group:31")).unwrap();
    sw.add_flow("br0", "priority=10,in_port=1,actions=group:32").unwrap();
    p[0].send_frame(&frame(mac(2), mac(1), 0)).unwrap();
    sw.run_until_idle().unwrap();
    let out = drain(&p[3]).len();
    assert!(out > 0 && out < 32 * 32 * 32, "{out} copies");
    assert_eq!(sw.stats().port("a").unwrap().drops[&vswitch_core::DropReason::ResubmitLimit], 1);
    // A copy dropped inside clone() is the packet's one drop.
    sw.add_flow("br0", "priority=20,in_port=1,ip,actions=clone(dec_ttl,output:2)").unwrap();
    p[0].send_frame(&udp(mac(9), mac(1), A, VIP, 1, 2, 1, b"x")).unwrap();
    sw.run_until_idle().unwrap();
    let stats = sw.stats();
    let drops = &stats.port("a").unwrap().drops;
    assert_eq!((drops[&vswitch_core::DropReason::TtlExpired], drops[&vswitch_core::DropReason::FlowDrop]), (1, 0));
}
