use super::*;

fn mac(n: u32) -> MacAddr {
    let b = n.to_be_bytes();
    MacAddr([0x02, 0, b[0], b[1], b[2], b[3]])
}

fn table(capacity: usize, aging_secs: u64) -> MacTable {
    MacTable::new(MacTableConfig { aging_secs, capacity }).unwrap()
}

#[test]
fn learns_per_vlan() {
    let t = table(16, 300);
    assert_eq!(t.learn(10, mac(1), 1, 0), MacLearn::Learned);
    assert_eq!(t.learn(20, mac(1), 2, 0), MacLearn::Learned);
    assert_eq!(t.lookup(10, mac(1)), Some(1));
    assert_eq!(t.lookup(20, mac(1)), Some(2));
    assert_eq!(t.lookup(30, mac(1)), None);
    assert_eq!(t.len(), 2);
    assert_eq!(t.stats().learned, 2);
}

#[test]
fn group_addresses_never_learned() {
    let t = table(16, 300);
    assert_eq!(t.learn(0, MacAddr::BROADCAST, 1, 0), MacLearn::NotUnicast);
    assert_eq!(t.learn(0, MacAddr([0x01, 0, 0x5e, 0, 0, 1]), 1, 0), MacLearn::NotUnicast);
    assert!(t.is_empty());
    assert!(t.add_static(0, MacAddr([0x33, 0x33, 0, 0, 0, 1]), 1).is_err());
}

#[test]
fn aging_with_virtual_clock() {
    let t = table(16, 300);
    t.learn(0, mac(1), 1, 0);
    t.learn(0, mac(2), 1, 100_000);
    assert_eq!(t.expire_now(299_999), 0);
    assert_eq!(t.expire_now(300_000), 1, "mac 1 expires exactly at the aging time");
    assert_eq!(t.lookup(0, mac(1)), None);
    assert_eq!(t.lookup(0, mac(2)), Some(1));
    // Refreshing resets the age.
    assert_eq!(t.learn(0, mac(2), 1, 350_000), MacLearn::Refreshed);
    assert_eq!(t.expire_now(649_999), 0);
    assert_eq!(t.expire_now(650_000), 1);
    assert_eq!(t.stats().expired, 2);
}

#[test]
fn age_step_sweeps_once_a_second_in_chunks() {
    let t = table(100_000, 1);
    for i in 0..40_000 {
        t.learn(0, mac(i), 1, 0);
    }
    // First step at t=1000 starts a sweep; chunks of 16K slots: 3 steps.
    let mut steps = 1;
    while t.age_step(1000) {
        steps += 1;
    }
    assert_eq!(steps, 3);
    assert!(t.is_empty());
    assert_eq!(t.stats().expired, 40_000);
    // The next sweep is not due for a second.
    t.learn(0, mac(1), 1, 1000);
    assert!(!t.age_step(1500));
    assert_eq!(t.len(), 1);
    while t.age_step(2000) {}
    assert!(t.is_empty());
}

#[test]
fn entry_ages_are_reported() {
    let t = table(16, 300);
    t.learn(5, mac(1), 3, 1_000);
    t.add_static(5, mac(2), 4).unwrap();
    let e = t.entries(11_500);
    assert_eq!(e.len(), 2);
    assert_eq!((e[0].port, e[0].vlan, e[0].mac, e[0].age_secs, e[0].is_static), (3, 5, mac(1), 10, false));
    assert_eq!((e[1].port, e[1].age_secs, e[1].is_static), (4, 0, true));
}

#[test]
fn moves_are_counted_and_bump_generation() {
    let t = table(16, 300);
    t.learn(0, mac(1), 1, 0);
    let g = t.generation();
    assert_eq!(t.learn(0, mac(1), 2, 10), MacLearn::Moved { from: 1 });
    assert!(t.generation() > g);
    assert_eq!(t.lookup(0, mac(1)), Some(2));
    assert_eq!(t.stats().moved, 1);
    assert_eq!(t.dynamic_counts(), vec![(2, 1)]);
}

#[test]
fn static_entries_never_age_or_move() {
    let t = table(16, 300);
    t.add_static(0, mac(1), 7).unwrap();
    assert_eq!(t.learn(0, mac(1), 2, 0), MacLearn::StaticConflict { port: 7 });
    assert_eq!(t.learn(0, mac(1), 7, 0), MacLearn::Refreshed);
    assert_eq!(t.expire_now(10_000_000), 0);
    assert_eq!(t.lookup(0, mac(1)), Some(7));
    let s = t.stats();
    assert_eq!((s.static_entries, s.static_conflicts, s.moved), (1, 1, 0));
    // A dynamic entry turned static stops aging; flush keeps statics.
    t.learn(0, mac(2), 1, 0);
    t.add_static(0, mac(2), 1).unwrap();
    assert_eq!(t.flush(), 0);
    assert_eq!(t.expire_now(10_000_000), 0);
    assert_eq!(t.len(), 2);
    assert!(t.remove(0, mac(1)));
    assert!(!t.remove(0, mac(1)));
    assert_eq!(t.stats().static_entries, 1);
}

#[test]
fn flood_from_one_port_evicts_only_that_port() {
    let t = table(1000, 300);
    // Ten well-behaved ports with 50 hosts each.
    for p in 1..=10u32 {
        for h in 0..50 {
            t.learn(0, mac(p * 1000 + h), p, 0);
        }
    }
    // Port 11 sprays 100,000 random source addresses.
    let mut x: u32 = 0x1234_5678;
    for i in 0..100_000u64 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        t.learn(0, mac(0x8000_0000 | (x & 0x7fff_ffff)), 11, 1 + i / 1000);
    }
    assert_eq!(t.len(), 1000, "capacity holds");
    for p in 1..=10u32 {
        for h in 0..50 {
            assert_eq!(t.lookup(0, mac(p * 1000 + h)), Some(p), "port {p} host {h} kept");
        }
    }
    let counts = t.dynamic_counts();
    assert_eq!(counts.last(), Some(&(11, 500)));
    assert!(t.stats().evicted >= 99_000);
}

#[test]
fn eviction_takes_least_recently_used_of_largest_port() {
    let t = table(4, 300);
    t.learn(0, mac(1), 1, 0);
    t.learn(0, mac(2), 1, 1);
    t.learn(0, mac(3), 1, 2);
    t.learn(0, mac(4), 2, 3);
    // mac 1 is the oldest on port 1, but it is seen again.
    t.learn(0, mac(1), 1, 10);
    assert_eq!(t.learn(0, mac(5), 2, 11), MacLearn::Learned);
    assert_eq!(t.lookup(0, mac(2)), None, "least recently used of port 1 evicted");
    assert_eq!(t.lookup(0, mac(1)), Some(1));
    assert_eq!(t.lookup(0, mac(3)), Some(1));
    assert_eq!(t.stats().evicted, 1);
}

#[test]
fn full_of_statics_refuses_learning() {
    let t = table(2, 300);
    t.add_static(0, mac(1), 1).unwrap();
    t.add_static(0, mac(2), 1).unwrap();
    assert_eq!(t.learn(0, mac(3), 2, 0), MacLearn::Full);
    assert!(matches!(t.add_static(0, mac(3), 1), Err(Error::Full(_))));
    assert_eq!(t.stats().refused_full, 1);
}

#[test]
fn lowering_capacity_evicts_fairly() {
    let t = table(100, 300);
    for i in 0..60 {
        t.learn(0, mac(i), 1, i as u64);
    }
    for i in 100..120 {
        t.learn(0, mac(i), 2, i as u64);
    }
    t.set_config(MacTableConfig { aging_secs: 300, capacity: 40 }).unwrap();
    assert_eq!(t.len(), 40);
    assert_eq!(t.dynamic_counts(), vec![(1, 20), (2, 20)]);
    assert!(t.set_config(MacTableConfig { aging_secs: 300, capacity: 0 }).is_err());
    assert_eq!(t.config().capacity, 40, "a refused setting changes nothing");
}

#[test]
fn capacity_up_to_a_million() {
    let t = table(1_000_000, 300);
    for i in 0..1_000_000 {
        t.learn(0, mac(i), (i % 64) + 1, 0);
    }
    assert_eq!(t.len(), 1_000_000);
    assert_eq!(t.lookup(0, mac(999_999)), Some(999_999 % 64 + 1));
    t.learn(0, mac(2_000_000), 1, 1);
    assert_eq!(t.len(), 1_000_000);
    assert_eq!(t.stats().evicted, 1);
}

#[test]
fn flush_port_removes_its_entries_statics_too() {
    let t = table(16, 300);
    t.learn(0, mac(1), 1, 0);
    t.learn(0, mac(2), 2, 0);
    t.add_static(0, mac(3), 1).unwrap();
    assert_eq!(t.flush_port(1), 2);
    assert_eq!(t.len(), 1);
    assert_eq!(t.stats().static_entries, 0);
}

#[test]
fn concurrent_refresh_and_learning() {
    let t = std::sync::Arc::new(table(10_000, 300));
    std::thread::scope(|s| {
        for th in 0..4u32 {
            let t = t.clone();
            s.spawn(move || {
                for round in 0..50u64 {
                    for i in 0..1000 {
                        t.learn(0, mac(th * 100_000 + i), th + 1, round);
                    }
                }
            });
        }
    });
    assert_eq!(t.len(), 4000);
    assert_eq!(t.stats().learned, 4000);
    assert_eq!(t.expire_now(300_048), 0);
    assert_eq!(t.expire_now(300_049), 4000);
}
