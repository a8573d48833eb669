//! The multi-table pipeline end to end on in-process ports: `goto_table`,
//! `resubmit`, registers and `metadata` written by `set_field`/`load`/
//! `move` and matched in later tables, header rewrites seen by later
//! tables, `clone`, table misses counted per table, the resubmit limit,
//! selections by table, and `trace` following the same path.

use vswitch_core::{DropReason, MacAddr, MemoryPortHandle, Switch};
use vswitch_core::{ManualClock, PortConfig};
use vswitch_tests::ip::{checksums_ok, fields, tcp_syn, udp};
use vswitch_tests::{drain, frame, mac, vid_of};

const A: [u8; 4] = [10, 0, 0, 1];
const B: [u8; 4] = [10, 0, 0, 2];

/// A manual switch with ports a, b, c (1, 2, 3) and an empty flow table.
fn setup() -> (Switch, Vec<MemoryPortHandle>) {
    let sw = Switch::builder().manual().clock(ManualClock::new()).build().unwrap();
    sw.add_bridge("br0").unwrap();
    let p: Vec<_> =
        ["a", "b", "c"].iter().map(|n| sw.add_memory_port("br0", n, PortConfig::default()).unwrap()).collect();
    sw.del_flows("br0", None, false).unwrap();
    (sw, p)
}

fn n_packets(sw: &Switch, filter: &str) -> Vec<u64> {
    sw.dump_flows_matching("br0", filter).unwrap().iter().map(|f| f.n_packets).collect()
}

#[test]
fn registers_carry_a_decision_to_a_later_table() {
    let (sw, p) = setup();
    sw.add_flows(
        "br0",
        &[
            "table=0,priority=10,in_port=1,actions=load:0x2a->reg0[],set_field:0x7->metadata,goto_table:1",
            "table=0,priority=10,in_port=2,actions=goto_table:1",
            "table=1,priority=20,reg0=0x2a,metadata=0x7,actions=output:2",
            "table=1,priority=0,actions=output:3",
        ],
    )
    .unwrap();
    p[0].send_frame(&frame(mac(2), mac(1), 0)).unwrap();
    p[1].send_frame(&frame(mac(1), mac(2), 0)).unwrap();
    sw.run_until_idle().unwrap();
    assert_eq!(drain(&p[1]).len(), 1, "a's packet carried reg0=0x2a into table 1");
    assert_eq!(drain(&p[2]).len(), 1, "b's packet had no register set: the table's default");
    assert_eq!(n_packets(&sw, "table=1"), vec![1, 1]);
    assert_eq!(n_packets(&sw, "table=0"), vec![1, 1]);
    let text: Vec<String> = sw.dump_flows("br0").unwrap().iter().map(|f| f.to_text()).collect();
    assert!(text[2].contains("table=1, n_packets=1") && text[2].contains("priority=20,metadata=0x7,reg0=0x2a"));
    let tables = sw.dump_tables("br0").unwrap();
    assert_eq!(
        tables.iter().map(|t| (t.table, t.active, t.lookups, t.matched)).collect::<Vec<_>>(),
        vec![(0, 2, 2, 2), (1, 2, 2, 2)]
    );
}

#[test]
fn resubmit_returns_and_rewrites_are_seen_by_later_lookups() {
    let (sw, p) = setup();
    sw.add_flows(
        "br0",
        &[
            // Rewrite, then ask table 5 where to go, then also copy to c.
            "table=0,priority=10,ip,actions=mod_nw_dst:10.9.9.9,resubmit(,5),output:3",
            "table=5,priority=10,ip,nw_dst=10.9.9.9,actions=output:2",
            "table=5,priority=5,ip,actions=drop",
        ],
    )
    .unwrap();
    p[0].send_frame(&udp(mac(2), mac(1), A, B, 1000, 53, 64, b"q")).unwrap();
    sw.run_until_idle().unwrap();
    let (to_b, to_c) = (drain(&p[1]), drain(&p[2]));
    assert_eq!((to_b.len(), to_c.len()), (1, 1));
    for f in to_b.iter().chain(&to_c) {
        assert_eq!(fields(f.data()).1, [10, 9, 9, 9]);
        assert!(checksums_ok(f.data()));
    }
    assert_eq!(n_packets(&sw, "table=5"), vec![1, 0], "table 5 saw the rewritten address");
}

#[test]
fn move_and_partial_load_write_headers_and_registers() {
    let (sw, p) = setup();
    sw.add_flows(
        "br0",
        &[
            // Copy the source MAC's low 16 bits into reg3, and load the
            // last byte of the destination IP.
            "table=0,priority=10,ip,actions=move:NXM_OF_ETH_SRC[0..15]->NXM_NX_REG3[16..31],load:0x63->NXM_OF_IP_DST[0..7],goto_table:2",
            "table=2,priority=10,reg3=0x00010000/0xffff0000,ip,nw_dst=10.0.0.99,actions=output:2",
        ],
    )
    .unwrap();
    p[0].send_frame(&tcp_syn(mac(2), mac(1), A, B, 4000, 80)).unwrap();
    sw.run_until_idle().unwrap();
    let got = drain(&p[1]);
    assert_eq!(got.len(), 1, "reg3 held mac(1)'s low bits and the rewritten address matched");
    assert_eq!(fields(got[0].data()).1, [10, 0, 0, 99]);
    assert!(checksums_ok(got[0].data()));
}

#[test]
fn clone_works_on_a_copy() {
    let (sw, p) = setup();
    sw.add_flow("br0", "priority=10,in_port=1,actions=clone(mod_vlan_vid:7,output:2),output:3").unwrap();
    p[0].send_frame(&frame(mac(2), mac(1), 0)).unwrap();
    sw.run_until_idle().unwrap();
    let (b, c) = (drain(&p[1]), drain(&p[2]));
    assert_eq!(vid_of(b[0].data()), Some(7));
    assert_eq!(vid_of(c[0].data()), None, "the tag pushed inside clone() stays inside");
}

#[test]
fn misses_and_loops_are_counted_drops() {
    let (sw, p) = setup();
    sw.add_flows(
        "br0",
        &["table=0,priority=10,in_port=1,actions=goto_table:9", "table=0,priority=10,in_port=2,actions=resubmit(,0)"],
    )
    .unwrap();
    p[0].send_frame(&frame(mac(2), mac(1), 0)).unwrap();
    p[1].send_frame(&frame(mac(1), mac(2), 0)).unwrap();
    p[2].send_frame(&frame(mac(1), mac(3), 0)).unwrap();
    sw.run_until_idle().unwrap();
    assert!(p.iter().all(|h| drain(h).is_empty()));
    let s = sw.stats();
    assert_eq!(s.port("a").unwrap().drops[&DropReason::NoMatch], 1, "table 9 has no rules");
    assert_eq!(s.port("b").unwrap().drops[&DropReason::ResubmitLimit], 1, "resubmit(,0) from table 0 loops");
    assert_eq!(s.port("c").unwrap().drops[&DropReason::NoMatch], 1, "table 0 misses");
    let t9 = sw.dump_tables("br0").unwrap().into_iter().find(|t| t.table == 9).unwrap();
    assert_eq!((t9.active, t9.lookups, t9.matched), (0, 1, 0));
    let t = sw.trace("br0", "in_port=2").unwrap();
    assert!(t.steps.last().unwrap().contains("dropped (resubmit_limit)"), "{:?}", t.steps.last());
}

#[test]
fn selections_by_table_and_strict_without_table() {
    let (sw, _p) = setup();
    sw.add_flows(
        "br0",
        &[
            "table=0,priority=5,ip,actions=goto_table:1",
            "table=1,priority=5,ip,actions=drop",
            "table=2,priority=5,ip,actions=drop",
        ],
    )
    .unwrap();
    assert_eq!(sw.mod_flows("br0", "table=2,priority=5,ip,actions=output:1", true).unwrap(), 1);
    assert_eq!(sw.dump_flows_matching("br0", "table=2").unwrap()[0].actions, "output:1");
    // No table given: every table, for strict selections too.
    assert_eq!(sw.mod_flows("br0", "ip,actions=drop", false).unwrap(), 3);
    assert_eq!(sw.del_flows("br0", Some("table=1"), false).unwrap(), 1);
    assert_eq!(sw.del_flows("br0", Some("priority=5,ip"), true).unwrap(), 2);
    assert!(sw.dump_flows("br0").unwrap().is_empty());
    let e = sw.add_flow("br0", "table=3,actions=goto_table:3").unwrap_err();
    assert!(e.to_string().contains("later table"), "{e}");
    // A mod-flows checked against table 0 may not land a backward goto on
    // a rule in table 5: refused whole, nothing changed.
    sw.add_flows("br0", &["table=5,priority=1,actions=drop", "table=0,priority=1,actions=drop"]).unwrap();
    let e = sw.mod_flows("br0", "actions=goto_table:3", false).unwrap_err();
    assert!(e.to_string().contains("table=5,priority=1"), "{e}");
    assert!(sw.dump_flows("br0").unwrap().iter().all(|f| f.actions == "drop"));
}

#[test]
fn trace_runs_the_real_pipeline() {
    let (sw, p) = setup();
    sw.add_flows(
        "br0",
        &[
            "table=0,priority=10,in_port=1,actions=load:0x5->reg1[],resubmit(,1),goto_table:2",
            "table=1,priority=10,reg1=5,actions=mod_vlan_vid:30,output:3",
            "table=2,priority=10,dl_vlan=30,actions=strip_vlan,NORMAL",
        ],
    )
    .unwrap();
    // b's address is learned on port 2 through real traffic.
    sw.add_flow("br0", "table=0,priority=10,in_port=2,actions=NORMAL").unwrap();
    p[1].send_frame(&frame(MacAddr::BROADCAST, mac(2), 0)).unwrap();
    sw.run_until_idle().unwrap();
    p.iter().for_each(|h| drop(drain(h)));
    let t = sw.trace("br0", "in_port=1,dl_src=02:00:00:00:00:01,dl_dst=02:00:00:00:00:02").unwrap();
    let steps = t.steps.join("\n");
    for want in ["table 0:", "resubmit(,1)", "    table 1:", "mod_vlan_vid:30", "table 2:", "learned on port 2"] {
        assert!(steps.contains(want), "missing '{want}' in\n{steps}");
    }
    assert_eq!(
        t.outputs.iter().map(|o| (o.port.as_str(), o.vlan)).collect::<Vec<_>>(),
        vec![("c", Some(30)), ("b", None)]
    );
    // The text says what the JSON's outputs say: port 3 gets a tag.
    assert_eq!(t.verdict, "push_vlan(vid=30),3,2");
    // A dry run: nothing sent, learned or counted.
    assert!(p.iter().all(|h| drain(h).is_empty()));
    assert_eq!(n_packets(&sw, "table=1"), vec![0]);
    assert!(sw.fdb("br0").unwrap().iter().all(|e| e.mac != mac(1)), "trace learned nothing");
    // And a real packet goes the same way.
    p[0].send_frame(&frame(mac(2), mac(1), 0)).unwrap();
    sw.run_until_idle().unwrap();
    assert_eq!(vid_of(drain(&p[2])[0].data()), Some(30));
    assert_eq!(vid_of(drain(&p[1])[0].data()), None);
}

#[test]
fn a_pipeline_built_in_code_without_text() {
    use vswitch_core::flow::{Action, Bucket, Field, FlowSpec, GroupSpec, GroupType, Match};
    let (sw, p) = setup();
    let group = GroupSpec {
        group_id: 4,
        kind: GroupType::All,
        fields: vec![],
        buckets: [2, 3]
            .into_iter()
            .enumerate()
            .map(|(i, port)| Bucket {
                bucket_id: i as u32,
                weight: 1,
                watch_port: None,
                actions: vec![Action::Output(port)],
            })
            .collect(),
    };
    sw.add_group_spec("br0", &group).unwrap();
    let mut classify = FlowSpec::new(
        Match::any().with(Field::InPort, 1),
        vec![Action::SetField { field: Field::Reg(5), value: 9, mask: 0xffff_ffff }, Action::GotoTable(3)],
    );
    classify.priority = 10;
    let mut fan_out = FlowSpec::new(Match::any().with(Field::Reg(5), 9), vec![Action::Group(4)]);
    fan_out.matching.set_table(3);
    sw.add_flow_specs("br0", &[classify, fan_out]).unwrap();
    assert_eq!(sw.dump_flows_matching("br0", "table=3").unwrap()[0].matching, "reg5=0x9");
    p[0].send_frame(&frame(mac(2), mac(1), 0)).unwrap();
    sw.run_until_idle().unwrap();
    assert_eq!((drain(&p[1]).len(), drain(&p[2]).len()), (1, 1), "through reg5 and the group");
    assert_eq!(Match::any().with(Field::VlanVid, 10).to_text(), "dl_vlan=10");
    // Checked as text is: an IPv4 rewrite needs an IPv4 match.
    let bad = FlowSpec::new(Match::any(), vec![Action::SetNwDst("10.0.0.1".parse().unwrap())]);
    assert!(sw.add_flow_specs("br0", &[bad]).unwrap_err().to_string().contains("requires an IPv4 match"));
}
