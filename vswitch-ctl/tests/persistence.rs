//! What vswitchd saves and restores: a large flow load in one command,
//! timed rules that expire, and a journal that is compacted into a new
//! snapshot, each across a restart.

mod common;

use std::time::Duration;

use common::Daemon;
use vswitch_core::config::{Loaded, Store};
use vswitch_tests::netns::unique;

fn saved_flows(db: &str, bridge: &str) -> Vec<String> {
    match Store::new(db).unwrap().load().unwrap() {
        Loaded::Config(c) => c.bridge(bridge).expect("the bridge is saved").flows.clone(),
        other => panic!("the configuration does not load: {other:?}"),
    }
}

fn restart(d: &mut Daemon, dir: &std::path::Path) -> Daemon {
    d.owns_dir = false;
    assert!(d.stop().success());
    Daemon::start_in(dir)
}

#[test]
fn a_hundred_thousand_rules_in_one_add_flows_survive_a_restart() {
    let dir = std::env::temp_dir().join(unique("vsp"));
    let mut d = Daemon::start_in(&dir);
    d.ok(&["add-br", "br0"]);
    let rules: String = (0..100_000u32)
        .map(|i| {
            format!("priority=100,tcp,nw_dst=10.{}.{}.{},tp_dst=80,actions=drop\n", i >> 16, (i >> 8) & 255, i & 255)
        })
        .collect();
    let file = dir.join("rules.txt");
    std::fs::write(&file, &rules).unwrap();
    // Far more than one request line holds: staged, then added at once.
    d.ok(&["add-flows", "br0", file.to_str().unwrap()]);
    assert_eq!(d.json(&["dump-flows", "br0"]).as_array().unwrap().len(), 100_001);
    assert_eq!(saved_flows(&d.db, "br0").len(), 100_001, "saved in full");

    // A bad rule anywhere in a large load: nothing is added.
    let bad = format!("{rules}priority=1,nw_dts=1,actions=drop\n");
    std::fs::write(&file, bad).unwrap();
    let out = d.ctl(&["add-flows", "br0", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("flow 100001: unknown field 'nw_dts'"));

    let d2 = restart(&mut d, &dir);
    let flows = d2.json(&["dump-flows", "br0"]);
    assert_eq!(flows.as_array().unwrap().len(), 100_001, "every rule is back");
    assert_eq!(flows[0]["match"], "tcp,nw_dst=10.0.0.0,tp_dst=80");
    drop(d2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_expired_timed_rule_is_not_restored() {
    let dir = std::env::temp_dir().join(unique("vsp"));
    let mut d = Daemon::start_in(&dir);
    d.ok(&["add-br", "br0"]);
    d.ok(&["add-flow", "br0", "hard_timeout=1,priority=50,ip,actions=drop"]);
    d.ok(&["add-flow", "br0", "hard_timeout=3600,priority=60,arp,actions=drop"]);
    assert!(saved_flows(&d.db, "br0").iter().any(|f| f.contains("priority=50")));
    // Expired after a second; swept and saved within the next.
    std::thread::sleep(Duration::from_millis(2600));
    assert!(!d.ok(&["dump-flows", "br0"]).contains("priority=50"));
    let saved = saved_flows(&d.db, "br0");
    assert!(!saved.iter().any(|f| f.contains("priority=50")), "removed from the saved configuration: {saved:?}");
    assert!(saved.iter().any(|f| f.contains("hard_timeout=3600,priority=60")), "{saved:?}");

    let d2 = restart(&mut d, &dir);
    let flows = d2.ok(&["dump-flows", "br0"]);
    assert!(!flows.contains("priority=50"), "the expired rule stays gone: {flows}");
    assert!(flows.contains("hard_timeout=3600") && flows.contains("priority=60"), "{flows}");
    drop(d2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_journal_is_compacted_into_a_snapshot_and_both_restore() {
    let dir = std::env::temp_dir().join(unique("vsp"));
    let mut d = Daemon::start_in(&dir);
    d.ok(&["add-br", "br0"]);
    // Each change is a line in the journal, not a rewrite of the file.
    let journal = format!("{}.journal", d.db);
    let snapshot = std::fs::read(&d.db).unwrap();
    for i in 0..50 {
        d.ok(&["add-flow", "br0", &format!("priority={},udp,tp_dst={i},actions=drop", 100 + i)]);
    }
    assert_eq!(std::fs::read(&d.db).unwrap(), snapshot, "the snapshot was not rewritten for small changes");
    let lines = std::fs::read_to_string(&journal).unwrap().lines().count();
    assert_eq!(lines, 51, "a header and one line per change");
    // A journal larger than the snapshot (and 1 MiB) makes a new snapshot.
    let big: String = (0..30_000).map(|i| format!("priority=5,udp,tp_src={i},actions=drop\n")).collect();
    let file = dir.join("big.txt");
    std::fs::write(&file, big).unwrap();
    d.ok(&["add-flows", "br0", file.to_str().unwrap()]);
    d.ok(&["add-flow", "br0", "priority=9,icmp,actions=drop"]);
    assert_ne!(std::fs::read(&d.db).unwrap(), snapshot, "compacted");
    assert!(std::fs::read_to_string(&journal).unwrap().lines().count() <= 2);
    let before = d.json(&["dump-flows", "br0"]).as_array().unwrap().len();
    let d2 = restart(&mut d, &dir);
    assert_eq!(d2.json(&["dump-flows", "br0"]).as_array().unwrap().len(), before);
    drop(d2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn groups_are_saved_restored_and_undone_with_their_transaction() {
    let dir = std::env::temp_dir().join(unique("vsp"));
    let mut d = Daemon::start_in(&dir);
    d.ok(&["add-br", "br0"]);
    d.ok(&["add-group", "br0", "group_id=1,type=select,bucket=output:1,bucket=weight:2,output:2"]);
    d.ok(&["add-flow", "br0", "table=0,priority=10,udp,actions=group:1"]);
    // A transaction that fails after adding a group leaves no group.
    let e = d.ctl(&["add-group", "br0", "group_id=2,type=all,bucket=output:1", "--", "add-flow", "br0", "bad"]);
    assert_eq!(e.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&e.stderr).contains("nothing was changed"),
        "{}",
        String::from_utf8_lossy(&e.stderr)
    );
    let groups = d.json(&["dump-groups", "br0"]);
    assert_eq!(groups.as_array().unwrap().len(), 1, "{groups}");
    let text = d.ok(&["dump-groups", "br0"]);
    assert!(text.contains("group_id=1,type=select") && text.contains("ref_count=1"), "{text}");
    let d2 = restart(&mut d, &dir);
    let groups = d2.json(&["dump-groups", "br0"]);
    assert_eq!(
        groups[0]["group"],
        "group_id=1,type=select,bucket=bucket_id:0,actions=output:1,bucket=bucket_id:1,weight:2,actions=output:2"
    );
    assert!(d2.ok(&["dump-flows", "br0"]).contains("actions=group:1"));
    // Deleting the group takes its rule along, and that is saved too.
    d2.ok(&["del-groups", "br0", "group_id=1"]);
    assert!(!d2.ok(&["dump-flows", "br0"]).contains("group:1"));
    let mut d2 = d2;
    let d3 = restart(&mut d2, &dir);
    assert!(d3.json(&["dump-groups", "br0"]).as_array().unwrap().is_empty());
    drop(d3);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn conntrack_settings_survive_a_restart_and_a_failed_transaction_leaves_them() {
    let dir = std::env::temp_dir().join(unique("vsp"));
    let mut d = Daemon::start_in(&dir);
    d.ok(&["ct-set-limits", "global=5000", "default=300", "zone=4,limit=40"]);
    d.ok(&["ct-set-timeouts", "zone=4", "tcp_established=600", "liberal=true"]);
    d.ok(&["ct-set-timeouts", "icmp=9"]);
    // A transaction whose second part fails takes its first part back.
    let e = d.ctl(&["ct-set-limits", "zone=5,limit=1", "--", "add-flow", "nobr", "actions=drop"]);
    assert_eq!(e.status.code(), Some(1));
    let before = d.json(&["ct-stats"]);
    assert!(before["zones"].get("5").is_none(), "undone: {before}");
    let mut d = restart(&mut d, &dir);
    let cfg = match Store::new(&d.db).unwrap().load().unwrap() {
        Loaded::Config(c) => c.conntrack.expect("conntrack settings are saved"),
        other => panic!("{other:?}: {}", d.log()),
    };
    assert_eq!((cfg.limit, cfg.default_zone_limit, cfg.timeouts.icmp), (5000, Some(300), 9));
    let z = &cfg.zones[&4];
    assert_eq!((z.limit, z.timeouts.unwrap().tcp_established, z.liberal), (Some(40), 600, true));
    let stats = d.json(&["ct-stats"]);
    assert_eq!((stats["limit"].as_u64(), stats["zones"]["4"]["limit"].as_u64()), (Some(5000), Some(40)), "{stats}");
    d.owns_dir = true;
    d.stop();
}
