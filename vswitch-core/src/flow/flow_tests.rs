//! Flow table tests: text round trips, parse errors, table operations,
//! and the classifier against a naive reference.

use std::net::{Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::*;

fn no_ports(_: &str) -> Option<u32> {
    None
}

fn parse(text: &str) -> FlowSpec {
    FlowSpec::parse(text, &no_ports).unwrap_or_else(|e| panic!("{text}: {e}"))
}

#[test]
fn every_field_round_trips() {
    for text in [
        "priority=32768 actions=NORMAL",
        "priority=1,in_port=3 actions=output:2",
        "priority=5,dl_src=02:00:00:00:00:01,dl_dst=02:00:00:00:00:02 actions=drop",
        "priority=5,dl_dst=01:00:00:00:00:00/01:00:00:00:00:00 actions=FLOOD",
        "priority=5,dl_type=0x88cc actions=drop",
        "priority=5,dl_vlan=10 actions=strip_vlan,NORMAL",
        "priority=5,dl_vlan_pcp=3 actions=drop",
        "priority=5,dl_vlan=10,dl_vlan_pcp=3 actions=drop",
        "priority=5,dl_vlan=0xffff actions=mod_vlan_vid:7,output:1",
        "priority=5,vlan_tci=0x1000/0x1000 actions=drop",
        "priority=5,ip,nw_src=10.0.0.1,nw_dst=10.1.0.0/16 actions=dec_ttl,output:2",
        "priority=5,ip,nw_src=10.0.0.0/255.0.255.0 actions=drop",
        "priority=5,ip,nw_tos=184,nw_ttl=64 actions=drop",
        "priority=5,tcp,tp_src=1024,tp_dst=80 actions=mod_tp_dst:8080,output:2",
        "priority=5,udp,tp_dst=0x1000/0xf000 actions=drop",
        "priority=5,sctp,tp_dst=9 actions=drop",
        "priority=5,icmp,icmp_type=8,icmp_code=0 actions=drop",
        "priority=5,ipv6,ipv6_src=fd00::1,ipv6_dst=fd00::/64 actions=NORMAL",
        "priority=5,tcp6,tp_dst=443 actions=drop",
        "priority=5,icmp6,icmpv6_type=135 actions=NORMAL",
        "priority=5,arp,arp_op=1,arp_spa=10.0.0.1,arp_tpa=10.0.0.0/24 actions=NORMAL",
        "priority=5,ip,nw_proto=89 actions=drop",
        "priority=5,tun_id=0x2a,tun_src=192.0.2.1,tun_dst=192.0.2.2 actions=NORMAL",
        "priority=5,tun_id=0x100/0xff00 actions=drop",
        "cookie=0xbeef,idle_timeout=30,hard_timeout=60,priority=9,in_port=1 actions=output:2,output:3",
        "priority=65535,ip actions=mod_dl_src:02:00:00:00:00:0a,mod_dl_dst:02:00:00:00:00:0b,mod_nw_src:10.9.9.9,output:4",
        "priority=0 actions=set_tunnel:0x5,set_field:192.0.2.9->tun_dst,output:1",
    ] {
        let spec = parse(text);
        assert_eq!(spec.to_text(), text, "canonical text");
        assert_eq!(parse(&spec.to_text()), spec, "parses back equal");
    }
}

#[test]
fn shorthands_and_synonyms_canonicalise() {
    for (input, canonical) in [
        ("actions=normal", "priority=32768 actions=NORMAL"),
        (
            "priority=100,ip,nw_dst=10.0.0.0/24,tcp,tp_dst=80,actions=mod_dl_dst:02:00:00:00:00:09,output:2",
            "priority=100,tcp,nw_dst=10.0.0.0/24,tp_dst=80 actions=mod_dl_dst:02:00:00:00:00:09,output:2",
        ),
        ("dl_type=0x0800,nw_proto=6,priority=7,actions=2", "priority=7,tcp actions=output:2"),
        ("priority=3 tcp tp_dst=22 actions=drop", "priority=3,tcp,tp_dst=22 actions=drop"),
        ("priority=3,ip_src=1.2.3.4,actions=drop", "priority=3,ip,nw_src=1.2.3.4 actions=drop"),
        ("priority=3,nw_src=fd00::1,actions=drop", "priority=3,ipv6,ipv6_src=fd00::1 actions=drop"),
        ("priority=3,ip,nw_dst=10.0.0.7/32,actions=drop", "priority=3,ip,nw_dst=10.0.0.7 actions=drop"),
        ("priority=3,tcp,tcp_dst=22,actions=pop_vlan,in_port", "priority=3,tcp,tp_dst=22 actions=strip_vlan,IN_PORT"),
        ("priority=3,table=0,actions=all", "priority=3 actions=ALL"),
    ] {
        assert_eq!(parse(input).to_text(), canonical, "{input}");
    }
}

#[test]
fn port_names_resolve() {
    let ports = |n: &str| match n {
        "vm1" => Some(1),
        "vm2" => Some(2),
        _ => None,
    };
    let s = FlowSpec::parse("in_port=vm1,actions=output:vm2", &ports).unwrap();
    assert_eq!(s.to_text(), "priority=32768,in_port=1 actions=output:2");
}

#[test]
fn errors_point_at_the_token() {
    for (text, msg) in [
        ("nw_dts=10.0.0.1,actions=drop", "unknown field 'nw_dts'"),
        ("tp_dst=80,actions=drop", "tp_dst requires nw_proto tcp, udp or sctp"),
        ("ip,tp_dst=80,actions=drop", "tp_dst requires nw_proto"),
        ("nw_src=10.0.0.1,ipv6,actions=drop", "conflicts"),
        ("icmp_type=8,actions=drop", "icmp_type requires icmp or icmp6"),
        ("arp_spa=1.2.3.4,actions=drop", "arp_spa requires dl_type arp"),
        ("nw_ttl=3,actions=drop", "nw_ttl requires dl_type ip"),
        ("priority=70000,actions=drop", "priority value '70000' is out of range"),
        ("in_port=vmx,actions=drop", "in_port value 'vmx' is not a port number or name"),
        ("dl_dst=02:00:00:00:00,actions=drop", "dl_dst value '02:00:00:00:00' is not a MAC address"),
        ("ip,nw_dst=10.0.0.0/33,actions=drop", "out of range"),
        ("ip,nw_dst=10.0.0.300,actions=drop", "is not an IPv4 address"),
        ("dl_vlan=5000,actions=drop", "dl_vlan value '5000' is out of range"),
        ("tcp,tp_dst=80", "needs 'actions='"),
        ("ip,actions=mod_tp_dst:1", "requires a tcp or udp match"),
        ("actions=mod_nw_src:1.2.3.4", "requires an IPv4 match"),
        ("ip,nw_tos=3,actions=drop", "ECN bits"),
        ("tcp,nw_proto=17,actions=drop", "conflicts"),
        ("nw_proto=6/0xf,actions=drop", "cannot be masked"),
        ("table=255,actions=drop", "out of range"),
        ("table=2,actions=goto_table:1", "later table"),
        ("cookie=1/1,actions=drop", "cookie mask"),
        ("ip,actions=", "at least one action"),
    ] {
        let e = FlowSpec::parse(text, &no_ports).unwrap_err().to_string();
        assert!(e.contains(msg), "{text}: got '{e}', wanted '{msg}'");
    }
}

fn key(f: impl FnOnce(&mut FlowKey)) -> PackedKey {
    let mut k = FlowKey::default();
    f(&mut k);
    k.pack()
}

#[test]
fn matches_follow_the_packed_key() {
    let m = parse("priority=1,tcp,nw_dst=10.0.0.0/24,tp_dst=80,actions=drop").matching;
    let hit = key(|k| {
        k.dl_type = 0x0800;
        k.nw_proto = 6;
        k.nw_dst = Ipv4Addr::new(10, 0, 0, 9).into();
        k.tp_dst = 80;
        k.tp_src = 5555;
    });
    assert!(m.matches(&hit));
    let miss = key(|k| {
        k.dl_type = 0x0800;
        k.nw_proto = 6;
        k.nw_dst = Ipv4Addr::new(10, 0, 1, 9).into();
        k.tp_dst = 80;
    });
    assert!(!m.matches(&miss));
    let v6 = parse("priority=1,ipv6,ipv6_dst=fd00::/16,actions=drop").matching;
    assert!(v6.matches(&key(|k| {
        k.dl_type = 0x86dd;
        k.nw_dst = "fd00::5".parse::<Ipv6Addr>().unwrap().into();
    })));
    let vlan = parse("priority=1,dl_vlan=10,actions=drop").matching;
    assert!(vlan.matches(&key(|k| k.vlan_tci = Some(crate::wire::VlanTci::new(10, 3)))));
    assert!(!vlan.matches(&key(|k| k.vlan_tci = None)));
    let untagged = parse("priority=1,dl_vlan=0xffff,actions=drop").matching;
    assert!(untagged.matches(&key(|k| k.vlan_tci = None)));
    assert!(!untagged.matches(&key(|k| k.vlan_tci = Some(crate::wire::VlanTci::new(0, 0)))));
}

#[test]
fn table_add_replace_modify_delete() {
    let mut t = FlowTable::new(100, 0);
    assert!(t.is_default_normal());
    t.add(parse("priority=10,tcp,tp_dst=22,actions=drop"), 0).unwrap();
    assert!(!t.is_default_normal());
    t.add(parse("priority=10,tcp,tp_dst=80,actions=output:2"), 0).unwrap();
    t.add(parse("priority=20,tcp,tp_dst=80,actions=output:3"), 0).unwrap();
    assert_eq!(t.len(), 4);
    // Same match and priority: replaced, not added.
    t.add(parse("priority=10,tcp,tp_dst=80,actions=output:4"), 0).unwrap();
    assert_eq!(t.len(), 4);
    let sel = |s: &str| FlowSelector::parse(s, &no_ports).unwrap();
    // Loose modify: every TCP rule.
    assert_eq!(t.modify(&sel("tcp"), false, &[Action::Output(9)]), 3);
    // Strict delete needs the exact match and priority.
    assert_eq!(t.delete(&sel("priority=10,tcp"), true), 0);
    assert_eq!(t.delete(&sel("priority=10,tcp,tp_dst=80"), true), 1);
    // Loose delete of tcp,tp_dst=22 does not touch the default rule.
    assert_eq!(t.delete(&sel("tcp,tp_dst=22"), false), 1);
    assert_eq!(t.len(), 2);
    // Delete by cookie.
    t.add(parse("cookie=0x51,priority=5,ip,actions=drop"), 0).unwrap();
    assert_eq!(t.delete(&sel("cookie=0x50/0xf0"), false), 1);
    // Delete everything: an empty table drops all.
    assert_eq!(t.delete(&FlowSelector::default(), false), 2);
    assert!(t.is_empty());
    let any = key(|_| {});
    assert_eq!(t.lookup(&any), None);
}

#[test]
fn table_limit_refuses_and_changes_nothing() {
    let mut t = FlowTable::new(3, 0);
    t.add(parse("priority=1,in_port=1,actions=drop"), 0).unwrap();
    t.add(parse("priority=1,in_port=2,actions=drop"), 0).unwrap();
    let batch = vec![parse("priority=1,in_port=3,actions=drop"), parse("priority=1,in_port=4,actions=drop")];
    assert_eq!(t.add_all(batch, 0), Err(TableError::Full));
    assert_eq!(t.len(), 3, "a refused batch adds nothing");
    // Replacing an existing rule fits even when full.
    t.add(parse("priority=1,in_port=2,actions=output:5"), 0).unwrap();
    assert_eq!(t.len(), 3);
}

#[test]
fn timeouts_expire_rules() {
    let mut t = FlowTable::new(100, 0);
    t.add(parse("idle_timeout=10,priority=5,in_port=1,actions=drop"), 0).unwrap();
    t.add(parse("hard_timeout=30,priority=5,in_port=2,actions=drop"), 0).unwrap();
    let k1 = key(|k| k.in_port = 1);
    let id = t.lookup(&k1).unwrap();
    t.hit(id, 1, 60, 9_000);
    assert_eq!(t.expire(18_999), 0, "idle rule was used at 9 s");
    assert_eq!(t.expire(19_500), 0, "checked at most once a second");
    assert_eq!(t.expire(20_000), 1, "the next check removes it");
    assert_eq!(t.lookup(&k1), t.lookup(&key(|_| {})), "falls through to the default rule");
    assert_eq!(t.expire(29_000), 0);
    assert_eq!(t.expire(30_000), 1);
    assert!(t.is_default_normal());
}

#[test]
fn equal_priorities_go_to_the_older_rule() {
    let mut t = FlowTable::new(100, 0);
    t.add(parse("priority=50,ip,actions=output:1"), 0).unwrap();
    t.add(parse("priority=50,tcp,actions=output:2"), 0).unwrap();
    let k = key(|k| {
        k.dl_type = 0x0800;
        k.nw_proto = 6;
    });
    let id = t.lookup(&k).unwrap();
    assert_eq!(t.rule(id).unwrap().spec.actions, vec![Action::Output(1)]);
}

/// A small universe of field values so random rules overlap often.
fn arb_rule() -> impl Strategy<Value = (u16, Vec<(usize, u64)>)> {
    let field = prop_oneof![
        (0..4u64).prop_map(|v| (0usize, v)), // in_port 0..4
        prop_oneof![Just(0x0800u64), Just(0x86dd)].prop_map(|v| (1, v)),
        (0..3u64).prop_map(|v| (2, v)), // dl_dst low byte
        (0..4u64).prop_map(|v| (3, v)), // nw_dst low byte, /30 or exact
        (0..3u64).prop_map(|v| (4, v)), // tp_dst
    ];
    (0..8u16, proptest::collection::vec(field, 0..4))
}

/// Applies the generated fields to a Match directly (bypassing text).
fn build_match(fields: &[(usize, u64)]) -> Match {
    let mut value = PackedKey::default();
    let mut mask = PackedKey::default();
    for &(f, v) in fields {
        match f {
            0 => {
                value.set(0, 0, 32, v);
                mask.set(0, 0, 32, u64::MAX);
            }
            1 => {
                value.set(0, 32, 16, v);
                mask.set(0, 32, 16, u64::MAX);
            }
            2 => {
                value.set(1, 0, 8, v);
                mask.set(1, 0, 8, u64::MAX);
            }
            3 => {
                // Even values: exact; odd: a /30-like prefix on the low bits.
                let m = if v % 2 == 0 { 0xff } else { 0xfc };
                value.set(6, 0, 8, v & m);
                mask.set(6, 0, 8, m);
            }
            _ => {
                value.set(7, 16, 16, v);
                mask.set(7, 16, 16, u64::MAX);
            }
        }
    }
    Match { value: value.masked(&mask), mask }
}

fn arb_key() -> impl Strategy<Value = PackedKey> {
    (0..4u64, prop_oneof![Just(0x0800u64), Just(0x86dd)], 0..3u64, 0..8u64, 0..3u64).prop_map(|(p, t, d, n, tp)| {
        let mut k = PackedKey::default();
        k.set(0, 0, 32, p);
        k.set(0, 32, 16, t);
        k.set(1, 0, 8, d);
        k.set(6, 0, 8, n);
        k.set(7, 16, 16, tp);
        k
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// For random rule sets (with deletions) and random packets, the
    /// classifier and the cached lookup agree with a linear scan by
    /// priority, earliest rule first among equals.
    #[test]
    fn classifier_agrees_with_linear_scan(
        rules in proptest::collection::vec(arb_rule(), 1..40),
        deletes in proptest::collection::vec(0usize..40, 0..10),
        keys in proptest::collection::vec(arb_key(), 1..30),
    ) {
        let mut t = FlowTable::new(1000, 0);
        t.delete(&FlowSelector::default(), false);
        // Reference: (seq, priority, match, live).
        let mut reference: Vec<(u16, Match, u32, bool)> = Vec::new();
        for (i, (prio, fields)) in rules.iter().enumerate() {
            let m = build_match(fields);
            let spec = FlowSpec { priority: *prio, matching: m, actions: vec![Action::Output(i as u32 + 1)], cookie: 0, idle_timeout: 0, hard_timeout: 0 };
            // A replaced rule goes to the back of the line, like a new one.
            for r in reference.iter_mut() {
                if r.0 == *prio && r.1 == m {
                    r.3 = false;
                }
            }
            reference.push((*prio, m, i as u32 + 1, true));
            t.add(spec, 0).unwrap();
        }
        for &d in &deletes {
            if let Some(r) = reference.get_mut(d) && r.3 {
                r.3 = false;
                let sel = FlowSelector { matching: r.1, priority: Some(r.0), cookie: None };
                prop_assert_eq!(t.delete(&sel, true), 1);
            }
        }
        for k in &keys {
            let expected = reference
                .iter()
                .filter(|r| r.3 && r.1.matches(k))
                .max_by(|a, b| a.0.cmp(&b.0).then(b.2.cmp(&a.2)))
                .map(|r| vec![Action::Output(r.2)]);
            let got = t.classify(k).map(|id| t.rule(id).unwrap().spec.actions.clone());
            prop_assert_eq!(&got, &expected);
            // Twice through the exact-match cache: miss, then hit.
            for _ in 0..2 {
                let cached = t.lookup(k).map(|id| t.rule(id).unwrap().spec.actions.clone());
                prop_assert_eq!(&cached, &expected);
            }
        }
    }

    /// Formatting then parsing any rule built from text pieces is stable.
    #[test]
    fn random_specs_round_trip(
        prio in 0u16..=65535,
        port in proptest::option::of(1u32..100),
        proto in prop_oneof![Just(""), Just("ip"), Just("tcp"), Just("udp6"), Just("arp"), Just("icmp")],
        tp in proptest::option::of(0u16..=65535),
        prefix in 0u8..=32,
    ) {
        let mut parts = vec![format!("priority={prio}")];
        if let Some(p) = port { parts.push(format!("in_port={p}")); }
        if !proto.is_empty() { parts.push(proto.to_string()); }
        if matches!(proto, "tcp" | "udp6") && let Some(tp) = tp { parts.push(format!("tp_dst={tp}")); }
        if matches!(proto, "ip" | "tcp" | "icmp") { parts.push(format!("nw_dst=10.20.30.40/{prefix}")); }
        if proto == "arp" { parts.push(format!("arp_tpa=10.20.30.40/{prefix}")); }
        parts.push("actions=output:1".into());
        let spec = parse(&parts.join(","));
        prop_assert_eq!(parse(&spec.to_text()), spec);
    }
}
