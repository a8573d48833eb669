//! Connection tracking and NAT on in-process ports: a stateful firewall
//! (replies pass, strangers do not), SNAT with port allocation, DNAT
//! port mapping with hairpin, TCP windows (`+inv` for an out-of-window
//! RST), zone limits, `ct_mark`, `ct_clear`, dump/flush, and `trace`
//! showing each conntrack lookup.

use vswitch_core::conntrack::{ConntrackConfig, CtDrop, ZoneConfig};
use vswitch_core::{DropReason, ManualClock, MemoryPortHandle, PortConfig, Switch};
use vswitch_tests::ip::{checksums_ok, fields, tcp_syn, udp};
use vswitch_tests::{drain, mac};

const IN1: [u8; 4] = [10, 88, 0, 2];
const IN2: [u8; 4] = [10, 88, 0, 3];
const OUT: [u8; 4] = [192, 0, 2, 50];
const HOST: [u8; 4] = [192, 0, 2, 1];

/// A manual switch with ports in1, in2 (inside) and out (3), no rules.
fn setup() -> (Switch, ManualClock, Vec<MemoryPortHandle>) {
    let clock = ManualClock::new();
    let sw = Switch::builder().manual().clock(clock.clone()).build().unwrap();
    sw.add_bridge("br0").unwrap();
    let p: Vec<_> =
        ["in1", "in2", "out"].iter().map(|n| sw.add_memory_port("br0", n, PortConfig::default()).unwrap()).collect();
    sw.del_flows("br0", None, false).unwrap();
    (sw, clock, p)
}

fn send(sw: &Switch, port: &MemoryPortHandle, frame: &[u8]) {
    port.send_frame(frame).unwrap();
    sw.run_until_idle().unwrap();
}

/// The 16-bit one's-complement sum of `b` (odd length padded), added to `sum`.
fn sum16(b: &[u8], sum: u32) -> u32 {
    b.chunks(2).map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32).sum::<u32>() + sum
}

/// The Internet checksum of a sum: folded and complemented.
fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A TCP segment with the given flags, sequence and acknowledgement.
fn tcp(sip: [u8; 4], dip: [u8; 4], sport: u16, dport: u16, flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    let mut f = tcp_syn(mac(9), mac(8), sip, dip, sport, dport);
    f[34 + 4..34 + 8].copy_from_slice(&seq.to_be_bytes());
    f[34 + 8..34 + 12].copy_from_slice(&ack.to_be_bytes());
    f[34 + 13] = flags;
    fix_tcp_checksum(&mut f);
    f
}

fn fix_tcp_checksum(f: &mut [u8]) {
    f[34 + 16..34 + 18].copy_from_slice(&[0, 0]);
    let pseudo = sum16(&f[26..34], 6 + (f.len() - 34) as u32);
    let c = fold(sum16(&f[34..], pseudo));
    f[34 + 16..34 + 18].copy_from_slice(&c.to_be_bytes());
}

/// Inside (ports 1, 2) may start connections to the outside (3); the
/// outside may only answer.
const FIREWALL: &[&str] = &[
    "table=0,priority=10,ip,actions=ct(table=1,zone=1)",
    "table=1,priority=10,ct_state=+trk+new,ip,in_port=1,actions=ct(commit,zone=1),output:3",
    "table=1,priority=10,ct_state=+trk+new,ip,in_port=2,actions=ct(commit,zone=1),output:3",
    "table=1,priority=10,ct_state=+trk+est,ip,in_port=3,nw_dst=10.88.0.2,actions=output:1",
    "table=1,priority=10,ct_state=+trk+est,ip,in_port=3,nw_dst=10.88.0.3,actions=output:2",
    "table=1,priority=10,ct_state=+trk+est,ip,in_port=1,actions=output:3",
    "table=1,priority=10,ct_state=+trk+est,ip,in_port=2,actions=output:3",
    "table=1,priority=20,ct_state=+trk+inv,ip,actions=drop",
    "table=1,priority=0,actions=drop",
];

fn n_packets(sw: &Switch, filter: &str) -> u64 {
    sw.dump_flows_matching("br0", filter).unwrap().iter().map(|f| f.n_packets).sum()
}

#[test]
fn stateful_firewall_passes_replies_and_blocks_strangers() {
    let (sw, _clock, p) = setup();
    sw.add_flows("br0", FIREWALL).unwrap();
    // A stranger's datagram from outside: new, not from inside: dropped.
    send(&sw, &p[2], &udp(mac(1), mac(3), OUT, IN1, 53, 5000, 64, b"hi"));
    assert!(drain(&p[0]).is_empty(), "an outside-initiated flow is blocked");
    // Inside starts one; its reply passes.
    send(&sw, &p[0], &udp(mac(3), mac(1), IN1, OUT, 5000, 53, 64, b"q"));
    assert_eq!(drain(&p[2]).len(), 1);
    send(&sw, &p[2], &udp(mac(1), mac(3), OUT, IN1, 53, 5000, 64, b"a"));
    assert_eq!(drain(&p[0]).len(), 1, "the reply passes");
    // The same outside host on another port is still a stranger.
    send(&sw, &p[2], &udp(mac(1), mac(3), OUT, IN1, 54, 5000, 64, b"x"));
    assert!(drain(&p[0]).is_empty());
    let default_drop: u64 =
        sw.dump_flows("br0").unwrap().iter().filter(|f| f.table == 1 && f.priority == 0).map(|f| f.n_packets).sum();
    assert_eq!(default_drop, 2, "two strangers hit the default drop");
    let conns = sw.conntrack().dump(sw.now_ms(), usize::MAX, |_| true);
    assert_eq!(conns.len(), 1);
    let c = &conns[0];
    assert_eq!((c.zone, c.proto, c.seen_reply), (1, 17, true));
    assert_eq!(
        (c.orig.src.to_string(), c.orig.sport, c.reply.src.to_string()),
        ("10.88.0.2".into(), 5000, "192.0.2.50".into())
    );
    // An unrelated rule change leaves the connection and its replies alone.
    sw.add_flows("br0", &["table=1,priority=5,udp,tp_dst=9999,actions=drop"]).unwrap();
    send(&sw, &p[2], &udp(mac(1), mac(3), OUT, IN1, 53, 5000, 64, b"b"));
    assert_eq!(drain(&p[0]).len(), 1);
}

#[test]
fn tcp_windows_make_an_out_of_window_rst_invalid() {
    use vswitch_core::conntrack::TcpState;
    let (sw, _clock, p) = setup();
    sw.add_flows("br0", FIREWALL).unwrap();
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    const RST: u8 = 0x04;
    // Outside cannot open a connection.
    send(&sw, &p[2], &tcp(OUT, IN1, 80, 40000, SYN, 7, 0));
    assert!(drain(&p[0]).is_empty());
    // Inside opens one: the handshake passes both ways.
    send(&sw, &p[0], &tcp(IN1, OUT, 40000, 80, SYN, 1000, 0));
    assert_eq!(drain(&p[2]).len(), 1);
    send(&sw, &p[2], &tcp(OUT, IN1, 80, 40000, SYN | ACK, 5000, 1001));
    assert_eq!(drain(&p[0]).len(), 1);
    send(&sw, &p[0], &tcp(IN1, OUT, 40000, 80, ACK, 1001, 5001));
    assert_eq!(drain(&p[2]).len(), 1);
    let state = |sw: &Switch| sw.conntrack().dump(0, 10, |_| true)[0].tcp_state;
    assert_eq!(state(&sw), Some(TcpState::Established));
    // A RST far outside the window: invalid, dropped, and the connection lives.
    let invalid_before = sw.conntrack().drops(CtDrop::Invalid);
    send(&sw, &p[2], &tcp(OUT, IN1, 80, 40000, RST | ACK, 5001 + 50_000_000, 1001));
    assert!(drain(&p[0]).is_empty(), "the forged RST is dropped");
    assert_eq!(n_packets(&sw, "table=1,ct_state=+inv+trk"), 1);
    assert_eq!(sw.conntrack().drops(CtDrop::Invalid), invalid_before + 1);
    assert_eq!(state(&sw), Some(TcpState::Established));
    // The real one closes it.
    send(&sw, &p[2], &tcp(OUT, IN1, 80, 40000, RST | ACK, 5001, 1001));
    assert_eq!(drain(&p[0]).len(), 1);
    assert_eq!(state(&sw), Some(TcpState::Close));
}

/// Masquerade: inside sources become HOST's, each connection on its own
/// port; replies are translated back.
const MASQUERADE: &[&str] = &[
    "table=0,priority=10,ip,in_port=1,actions=ct(table=1,zone=5,nat)",
    "table=0,priority=10,ip,in_port=2,actions=ct(table=1,zone=5,nat)",
    "table=0,priority=10,ip,in_port=3,actions=ct(table=2,zone=5,nat)",
    "table=1,priority=10,ct_state=+trk+new,ip,actions=ct(commit,zone=5,nat(src=192.0.2.1)),output:3",
    "table=1,priority=10,ct_state=+trk+est,ip,actions=output:3",
    "table=2,priority=10,ct_state=+trk+est,ip,nw_dst=10.88.0.2,actions=output:1",
    "table=2,priority=10,ct_state=+trk+est,ip,nw_dst=10.88.0.3,actions=output:2",
];

#[test]
fn masquerade_translates_both_ways_and_allocates_ports() {
    let (sw, _clock, p) = setup();
    sw.add_flows("br0", MASQUERADE).unwrap();
    send(&sw, &p[0], &udp(mac(3), mac(1), IN1, OUT, 5000, 53, 64, b"one"));
    send(&sw, &p[1], &udp(mac(3), mac(2), IN2, OUT, 5000, 53, 64, b"two"));
    let out = drain(&p[2]);
    assert_eq!(out.len(), 2);
    let (a, b) = (fields(out[0].data()), fields(out[1].data()));
    assert_eq!((a.0, b.0), (HOST, HOST), "both leave with the host's address");
    assert_eq!(a.3, 5000, "the first keeps its port");
    assert_ne!(b.3, 5000, "the second, same port and destination, gets another");
    assert!(b.3 >= 1024);
    assert!(out.iter().all(|f| checksums_ok(f.data())));
    // Replies to each mapped port reach their own inside host, translated.
    send(&sw, &p[2], &udp(mac(1), mac(3), OUT, HOST, 53, a.3, 64, b"r1"));
    send(&sw, &p[2], &udp(mac(1), mac(3), OUT, HOST, 53, b.3, 64, b"r2"));
    let (r1, r2) = (drain(&p[0]), drain(&p[1]));
    assert_eq!((r1.len(), r2.len()), (1, 1));
    assert_eq!(fields(r1[0].data()), (OUT, IN1, 64, 53, 5000));
    assert_eq!(fields(r2[0].data()), (OUT, IN2, 64, 53, 5000));
    assert!(checksums_ok(r1[0].data()) && checksums_ok(r2[0].data()));
    // A reply to a port nobody was given is not translated or delivered.
    send(&sw, &p[2], &udp(mac(1), mac(3), OUT, HOST, 53, 1, 64, b"?"));
    assert!(drain(&p[0]).is_empty() && drain(&p[1]).is_empty());
    let conns = sw.conntrack().dump(0, 10, |_| true);
    assert_eq!(conns.len(), 2);
    assert!(conns.iter().all(|c| c.snat && !c.dnat && c.zone == 5));
}

/// Port mapping: HOST:8080 reaches in1:80, from outside and (hairpin)
/// from in2 through the host's address.
const PORT_MAP: &[&str] = &[
    "table=0,priority=10,ip,actions=ct(table=1,zone=7,nat)",
    "table=1,priority=20,ct_state=+trk+new,tcp,nw_dst=192.0.2.1,tp_dst=8080,actions=ct(commit,zone=7,nat(dst=10.88.0.2:80)),output:1",
    "table=1,priority=10,ct_state=+trk+est,ip,nw_dst=10.88.0.2,actions=output:1",
    "table=1,priority=10,ct_state=+trk+est,ip,nw_dst=10.88.0.3,actions=output:2",
    "table=1,priority=10,ct_state=+trk+est,ip,nw_dst=192.0.2.50,actions=output:3",
];

#[test]
fn port_mapping_and_hairpin() {
    let (sw, _clock, p) = setup();
    sw.add_flows("br0", PORT_MAP).unwrap();
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    send(&sw, &p[2], &tcp(OUT, HOST, 33000, 8080, SYN, 100, 0));
    let got = drain(&p[0]);
    assert_eq!(got.len(), 1);
    assert_eq!(fields(got[0].data()), (OUT, IN1, 64, 33000, 80));
    assert!(checksums_ok(got[0].data()));
    send(&sw, &p[0], &tcp(IN1, OUT, 80, 33000, SYN | ACK, 900, 101));
    let back = drain(&p[2]);
    assert_eq!(back.len(), 1);
    assert_eq!(fields(back[0].data()), (HOST, OUT, 64, 8080, 33000), "the reply is un-NATed");
    assert!(checksums_ok(back[0].data()));
    // Hairpin: in2 reaches the service through the host's address.
    send(&sw, &p[1], &tcp(IN2, HOST, 41000, 8080, SYN, 5, 0));
    let got = drain(&p[0]);
    assert_eq!(got.len(), 1);
    assert_eq!(fields(got[0].data()), (IN2, IN1, 64, 41000, 80));
    send(&sw, &p[0], &tcp(IN1, IN2, 80, 41000, SYN | ACK, 77, 6));
    let back = drain(&p[1]);
    assert_eq!(back.len(), 1);
    assert_eq!(fields(back[0].data()), (HOST, IN2, 64, 8080, 41000), "in2 sees the host answer");
    assert!(checksums_ok(back[0].data()));
}

#[test]
fn zone_limits_refuse_new_connections_without_touching_other_zones() {
    let (sw, _clock, p) = setup();
    sw.add_flows(
        "br0",
        &[
            "table=0,priority=10,ip,in_port=1,actions=ct(commit,zone=1),output:3",
            "table=0,priority=10,ip,in_port=2,actions=ct(commit,zone=2),output:3",
        ],
    )
    .unwrap();
    let mut cfg = ConntrackConfig::default();
    let mut zone = ZoneConfig::default();
    zone.limit = Some(3);
    cfg.zones.insert(1, zone);
    sw.conntrack().apply_config(&cfg).unwrap();
    for i in 0..2 {
        send(&sw, &p[1], &udp(mac(3), mac(2), IN2, OUT, 7000 + i, 53, 64, b"b"));
    }
    for i in 0..10 {
        send(&sw, &p[0], &udp(mac(3), mac(1), IN1, OUT, 6000 + i, 53, 64, b"a"));
    }
    assert_eq!(drain(&p[2]).len(), 2 + 3, "zone 1 took 3 connections, zone 2 both of its own");
    assert_eq!(sw.conntrack().zone_len(1), 3);
    assert_eq!(sw.conntrack().zone_len(2), 2);
    assert_eq!(sw.conntrack().drops(CtDrop::ZoneFull), 7);
    assert_eq!(sw.stats().port("in1").unwrap().drops[&DropReason::Conntrack], 7);
    let s = sw.conntrack().stats();
    assert_eq!((s.zones[&1].connections, s.zones[&1].limit), (3, Some(3)));
    assert_eq!(s.zones[&2].by_state["udp"], 2);
    assert!(s.bytes_per_connection <= 256, "{} bytes per connection", s.bytes_per_connection);
    // Zone 2 still takes new connections; flushing zone 1 frees it.
    send(&sw, &p[1], &udp(mac(3), mac(2), IN2, OUT, 7100, 53, 64, b"b"));
    assert_eq!(drain(&p[2]).len(), 1);
    assert_eq!(sw.conntrack().flush(|c| c.zone == 1), 3);
    send(&sw, &p[0], &udp(mac(3), mac(1), IN1, OUT, 6100, 53, 64, b"a"));
    assert_eq!(drain(&p[2]).len(), 1);
}

#[test]
fn connections_expire_on_the_switch_clock() {
    let (sw, clock, p) = setup();
    sw.add_flows("br0", &["table=0,priority=10,ip,actions=ct(commit),output:3"]).unwrap();
    let mut cfg = ConntrackConfig::default();
    cfg.timeouts.udp = 5;
    sw.conntrack().apply_config(&cfg).unwrap();
    send(&sw, &p[0], &udp(mac(3), mac(1), IN1, OUT, 6000, 53, 64, b"a"));
    assert_eq!(sw.conntrack().len(), 1);
    assert_eq!(sw.conntrack().dump(sw.now_ms(), 10, |_| true)[0].timeout, 5);
    clock.advance(std::time::Duration::from_secs(4));
    assert_eq!(sw.conntrack().sweep(sw.now_ms()), 0);
    clock.advance(std::time::Duration::from_secs(2));
    assert_eq!(sw.conntrack().sweep(sw.now_ms()), 1);
    assert!(sw.conntrack().is_empty());
}

#[test]
fn marks_labels_and_ct_clear() {
    let (sw, _clock, p) = setup();
    sw.add_flows(
        "br0",
        &[
            "table=0,priority=10,ip,actions=ct(table=1)",
            "table=1,priority=10,ct_state=+new,ip,actions=ct(commit,exec(set_field:0x2a->ct_mark,set_field:0x1/0x1->ct_label)),resubmit(,2)",
            "table=1,priority=20,ct_mark=0x2a,ip,actions=ct_clear,resubmit(,2)",
            "table=2,priority=10,ct_state=-trk,actions=output:3",
            "table=2,priority=10,ct_state=+trk,actions=output:2",
        ],
    )
    .unwrap();
    // The first packet is tracked (+trk): to port 2.
    send(&sw, &p[0], &udp(mac(3), mac(1), IN1, OUT, 6000, 53, 64, b"a"));
    assert_eq!(drain(&p[1]).len(), 1);
    // The next matches the mark, has its ct fields cleared: -trk, to port 3.
    send(&sw, &p[0], &udp(mac(3), mac(1), IN1, OUT, 6000, 53, 64, b"b"));
    assert_eq!(drain(&p[2]).len(), 1);
    let c = &sw.conntrack().dump(0, 1, |_| true)[0];
    assert_eq!((c.mark, c.label.as_str()), (0x2a, "0x1"));
}

#[test]
fn trace_shows_each_conntrack_lookup_and_changes_nothing() {
    let (sw, _clock, p) = setup();
    sw.add_flows("br0", MASQUERADE).unwrap();
    let t = sw.trace("br0", "in_port=1,udp,nw_src=10.88.0.2,nw_dst=192.0.2.50,tp_src=5000,tp_dst=53").unwrap();
    let text = t.steps.join("\n");
    assert!(text.contains("ct(table=1,zone=5,nat): zone 5 new connection: ct_state=+new+trk"), "{text}");
    assert!(text.contains("table 1: priority=10,ip,ct_state=+new+trk"), "{text}");
    assert!(text.contains("(would be committed)"), "{text}");
    assert_eq!(t.verdict, "3");
    assert!(sw.conntrack().is_empty(), "a trace commits nothing");
    send(&sw, &p[0], &udp(mac(3), mac(1), IN1, OUT, 5000, 53, 64, b"one"));
    drain(&p[2]);
    let t = sw.trace("br0", "in_port=3,udp,nw_src=192.0.2.50,nw_dst=192.0.2.1,tp_src=53,tp_dst=5000").unwrap();
    let text = t.steps.join("\n");
    assert!(text.contains("connection, reply direction: ct_state=+est+rpl+trk+snat"), "{text}");
    assert!(text.contains("NAT to 192.0.2.50:53 -> 10.88.0.2:5000"), "{text}");
    assert_eq!(t.verdict, "1");
}

/// Splits an Ethernet/IPv4 frame's payload into two fragments at `at`
/// bytes of IP payload (a multiple of 8).
fn fragments(frame: &[u8], at: usize) -> (Vec<u8>, Vec<u8>) {
    let (eth, ip) = (&frame[..14], &frame[14..]);
    let payload = &ip[20..];
    let mk = |part: &[u8], offset: usize, more: bool| {
        let mut h = ip[..20].to_vec();
        h[2..4].copy_from_slice(&((20 + part.len()) as u16).to_be_bytes());
        h[4..6].copy_from_slice(&0x4242u16.to_be_bytes());
        let fo = (offset / 8) as u16 | if more { 0x2000 } else { 0 };
        h[6..8].copy_from_slice(&fo.to_be_bytes());
        h[10..12].copy_from_slice(&[0, 0]);
        let c = fold(sum16(&h, 0));
        h[10..12].copy_from_slice(&c.to_be_bytes());
        [eth, &h, part].concat()
    };
    (mk(&payload[..at], 0, true), mk(&payload[at..], at, false))
}

#[test]
fn fragments_follow_their_first_fragment_through_nat() {
    let (sw, _clock, p) = setup();
    sw.add_flows("br0", MASQUERADE).unwrap();
    let big = udp(mac(3), mac(1), IN1, OUT, 5000, 53, 64, &[7u8; 1000]);
    let (first, second) = fragments(&big, 512);
    send(&sw, &p[0], &first);
    send(&sw, &p[0], &second);
    let out = drain(&p[2]);
    assert_eq!(out.len(), 2, "both fragments pass");
    for f in &out {
        assert_eq!(&f.data()[26..30], &HOST, "each fragment leaves with the host's address");
    }
    // Reassembled, the datagram's UDP checksum still verifies.
    let mut whole = out[0].data()[..34].to_vec();
    whole.extend_from_slice(&out[0].data()[34..]);
    whole.extend_from_slice(&out[1].data()[34..]);
    let total = (whole.len() - 14) as u16;
    whole[16..18].copy_from_slice(&total.to_be_bytes());
    whole[20..22].copy_from_slice(&[0, 0]);
    whole[24..26].copy_from_slice(&[0, 0]);
    let c = fold(sum16(&whole[14..34], 0));
    whole[24..26].copy_from_slice(&c.to_be_bytes());
    assert!(checksums_ok(&whole), "the reassembled datagram's checksums verify");
    // A later fragment of a datagram nobody saw the start of is invalid.
    let before = sw.conntrack().drops(CtDrop::Fragment);
    let (_, orphan) = fragments(&udp(mac(3), mac(1), IN2, OUT, 6000, 53, 64, &[1u8; 1000]), 512);
    send(&sw, &p[1], &orphan);
    assert!(drain(&p[2]).is_empty());
    assert_eq!(sw.conntrack().drops(CtDrop::Fragment), before + 1);
}

/// A service VIP balanced over three backends by a select group whose
/// buckets commit with DNAT: the spread, a removed bucket, and existing
/// connections kept on their backend by conntrack.
#[test]
fn select_group_balances_connections_and_conntrack_keeps_them() {
    let (sw, _clock, p) = setup();
    let bucket = |id: u8| format!("bucket=bucket_id:{id},actions=ct(commit,zone=3,nat(dst=10.1.0.{id}:53)),output:3");
    sw.add_group("br0", &format!("group_id=1,type=select,{},{},{}", bucket(1), bucket(2), bucket(3))).unwrap();
    sw.add_flows(
        "br0",
        &[
            "table=0,priority=10,ip,actions=ct(table=1,zone=3,nat)",
            "table=1,priority=20,ct_state=+new+trk,udp,nw_dst=10.96.0.10,tp_dst=53,actions=group:1",
            "table=1,priority=10,ct_state=+trk,ip,actions=output:3",
        ],
    )
    .unwrap();
    const VIP: [u8; 4] = [10, 96, 0, 10];
    let flows: Vec<Vec<u8>> = (0..1000u16).map(|i| udp(mac(3), mac(1), IN1, VIP, 10_000 + i, 53, 64, b"q")).collect();
    let backends = |sw: &Switch| -> Vec<u8> {
        let mut got = Vec::new();
        for f in &flows {
            send(sw, &p[0], f);
            let out = drain(&p[2]);
            assert_eq!(out.len(), 1);
            let (_, dst, _, _, dport) = fields(out[0].data());
            assert_eq!((dst[..3].to_vec(), dport), (vec![10, 1, 0], 53));
            got.push(dst[3]);
        }
        got
    };
    let first = backends(&sw);
    for b in 1..=3 {
        let n = first.iter().filter(|&&x| x == b).count();
        assert!((283..=383).contains(&n), "backend {b} has {n} of 1000 connections (333 ± 15 %)");
    }
    // Bucket 2 goes: existing connections stay where conntrack put them.
    sw.mod_group("br0", &format!("group_id=1,type=select,{},{}", bucket(1), bucket(3))).unwrap();
    assert_eq!(backends(&sw), first, "established mappings are kept by conntrack");
    // New connections: only bucket 2's move.
    sw.conntrack().flush(|_| true);
    let after = backends(&sw);
    for (old, new) in first.iter().zip(&after) {
        if *old == 2 {
            assert_ne!(*new, 2);
        } else {
            assert_eq!(old, new, "a connection of a remaining bucket did not move");
        }
    }
}

/// An Ethernet/IPv4/ICMP echo request (`request`) or reply with valid
/// checksums.
fn echo(sip: [u8; 4], dip: [u8; 4], id: u16, request: bool) -> Vec<u8> {
    let mut f = udp(mac(9), mac(8), sip, dip, 0, 0, 64, &[0u8; 8]);
    f[23] = 1; // protocol ICMP
    f[24..26].copy_from_slice(&[0, 0]);
    let c = fold(sum16(&f[14..34], 0));
    f[24..26].copy_from_slice(&c.to_be_bytes());
    let icmp = &mut f[34..];
    icmp.fill(0);
    icmp[0] = if request { 8 } else { 0 };
    icmp[4..6].copy_from_slice(&id.to_be_bytes());
    icmp[6..8].copy_from_slice(&1u16.to_be_bytes());
    let c = fold(sum16(icmp, 0));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    f
}

fn icmp_ok(f: &[u8]) -> bool {
    fold(sum16(&f[34..], 0)) == 0
}

#[test]
fn ping_through_masquerade_has_its_identifier_mapped() {
    let (sw, _clock, p) = setup();
    sw.add_flows("br0", MASQUERADE).unwrap();
    // Two hosts ping the same server with the same identifier.
    send(&sw, &p[0], &echo(IN1, OUT, 77, true));
    send(&sw, &p[1], &echo(IN2, OUT, 77, true));
    let out = drain(&p[2]);
    assert_eq!(out.len(), 2);
    let ids: Vec<u16> = out.iter().map(|f| u16::from_be_bytes([f.data()[38], f.data()[39]])).collect();
    assert_eq!(ids[0], 77, "the first keeps its identifier");
    assert_ne!(ids[1], 77, "the second gets another");
    assert!(out.iter().all(|f| f.data()[26..30] == HOST && icmp_ok(f.data()) && checksums_ok(f.data())));
    // The replies find their connections (+est+rpl) and go back translated.
    send(&sw, &p[2], &echo(OUT, HOST, ids[0], false));
    send(&sw, &p[2], &echo(OUT, HOST, ids[1], false));
    let (r1, r2) = (drain(&p[0]), drain(&p[1]));
    assert_eq!((r1.len(), r2.len()), (1, 1), "both replies delivered");
    for (r, ip) in [(&r1[0], IN1), (&r2[0], IN2)] {
        assert_eq!(&r.data()[30..34], &ip);
        assert_eq!(u16::from_be_bytes([r.data()[38], r.data()[39]]), 77, "the reply carries the host's own identifier");
        assert!(icmp_ok(r.data()) && checksums_ok(r.data()));
    }
    // An echo reply nobody asked for is invalid.
    let before = sw.conntrack().drops(CtDrop::Invalid);
    send(&sw, &p[2], &echo(OUT, HOST, 4242, false));
    assert_eq!(sw.conntrack().drops(CtDrop::Invalid), before + 1);
}

#[test]
fn a_syn_after_time_wait_opens_a_fresh_connection_and_commit_after_output_commits() {
    let (sw, _clock, p) = setup();
    sw.add_flows("br0", FIREWALL).unwrap();
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    const FIN: u8 = 0x01;
    let steps: &[(usize, Vec<u8>)] = &[
        (0, tcp(IN1, OUT, 40000, 80, SYN, 1000, 0)),
        (2, tcp(OUT, IN1, 80, 40000, SYN | ACK, 5000, 1001)),
        (0, tcp(IN1, OUT, 40000, 80, ACK, 1001, 5001)),
        (0, tcp(IN1, OUT, 40000, 80, FIN | ACK, 1001, 5001)),
        (2, tcp(OUT, IN1, 80, 40000, FIN | ACK, 5001, 1002)),
        (0, tcp(IN1, OUT, 40000, 80, ACK, 1002, 5002)),
    ];
    for (i, (port, f)) in steps.iter().enumerate() {
        send(&sw, &p[*port], f);
        let to = if *port == 0 { 2 } else { 0 };
        assert_eq!(drain(&p[to]).len(), 1, "step {i} passes");
    }
    let state = |sw: &Switch| sw.conntrack().dump(0, 10, |_| true)[0].tcp_state;
    assert_eq!(state(&sw), Some(vswitch_core::conntrack::TcpState::TimeWait));
    // The same 4-tuple again, with a new initial sequence number.
    send(&sw, &p[0], &tcp(IN1, OUT, 40000, 80, SYN, 0x8000_0000, 0));
    assert_eq!(drain(&p[2]).len(), 1, "the new SYN opens a new connection");
    let c = &sw.conntrack().dump(0, 10, |_| true)[0];
    assert_eq!((c.tcp_state, c.seen_reply), (Some(vswitch_core::conntrack::TcpState::SynSent), false));
    send(&sw, &p[2], &tcp(OUT, IN1, 80, 40000, SYN | ACK, 9, 0x8000_0001));
    assert_eq!(drain(&p[0]).len(), 1, "and its SYN-ACK is its reply");

    // `output` then `ct(commit)`: the copy goes out and the connection is committed.
    let (sw, _clock, p) = setup();
    sw.add_flows("br0", &["table=0,priority=10,ip,actions=output:3,ct(commit,zone=9)"]).unwrap();
    send(&sw, &p[0], &udp(mac(3), mac(1), IN1, OUT, 6000, 53, 64, b"a"));
    assert_eq!(drain(&p[2]).len(), 1);
    assert_eq!(sw.conntrack().zone_len(9), 1, "committed after the output");
}

/// docs/embedding.md's "Connection tracking in code", as written there.
#[test]
fn the_embedding_guides_pipeline_in_code() -> vswitch_core::Result<()> {
    let (sw, _clock, p) = setup();
    use vswitch_core::conntrack::{Nat, state};
    use vswitch_core::flow::{Action, CtAction, CtZone, Field, FlowSpec, Match};

    let ip = Match::any().with(Field::EthType, 0x0800);
    // Table 0: every IPv4 packet through zone 1, on to table 1.
    let track = FlowSpec::new(
        ip,
        vec![Action::Ct(Box::new(CtAction {
            zone: CtZone::Value(1),
            table: Some(1),
            nat: Some(Nat::Existing),
            ..CtAction::default()
        }))],
    );
    // Table 1: connections from port 1 are committed; established ones pass.
    let (new, est) = ((state::TRK | state::NEW) as u64, (state::TRK | state::EST) as u64);
    let mut open = FlowSpec::new(
        ip.with(Field::InPort, 1).with_masked(Field::CtState, new, new),
        vec![
            Action::Ct(Box::new(CtAction { commit: true, zone: CtZone::Value(1), ..CtAction::default() })),
            Action::Output(2),
        ],
    );
    open.matching.set_table(1);
    let mut pass = FlowSpec::new(ip.with_masked(Field::CtState, est, est), vec![Action::Normal]);
    pass.matching.set_table(1);
    sw.add_flow_specs("br0", &[track, open, pass])?;
    assert_eq!(sw.conntrack().len(), 0);

    send(&sw, &p[0], &udp(mac(2), mac(1), IN1, IN2, 7000, 53, 64, b"q"));
    assert_eq!(drain(&p[1]).len(), 1);
    assert_eq!(sw.conntrack().len(), 1);
    send(&sw, &p[1], &udp(mac(1), mac(2), IN2, IN1, 53, 7000, 64, b"a"));
    assert_eq!(drain(&p[0]).len(), 1, "the reply passes (NORMAL)");
    send(&sw, &p[1], &udp(mac(1), mac(2), IN2, IN1, 54, 7000, 64, b"x"));
    assert!(drain(&p[0]).is_empty(), "a stranger does not");
    Ok(())
}

/// An Ethernet/IPv6/UDP frame with a valid checksum.
fn udp6(src: &str, dst: &str, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let (s, d): (std::net::Ipv6Addr, std::net::Ipv6Addr) = (src.parse().unwrap(), dst.parse().unwrap());
    let len = 8 + payload.len();
    let mut f = Vec::new();
    f.extend_from_slice(&mac(9).0);
    f.extend_from_slice(&mac(8).0);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend_from_slice(&(len as u16).to_be_bytes());
    f.extend_from_slice(&[17, 64]);
    f.extend_from_slice(&s.octets());
    f.extend_from_slice(&d.octets());
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&(len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    let c = fold(sum16(&f[22..54], 17 + len as u32) + sum16(&f[54..], 0));
    f[60..62].copy_from_slice(&c.to_be_bytes());
    f
}

fn udp6_ok(f: &[u8]) -> bool {
    let len = f.len() - 54;
    fold(sum16(&f[22..54], 17 + len as u32) + sum16(&f[54..], 0)) == 0
}

#[test]
fn ipv6_is_tracked_and_translated() {
    let (sw, _clock, p) = setup();
    sw.add_flows(
        "br0",
        &[
            "table=0,priority=10,ipv6,in_port=1,actions=ct(table=1,zone=6,nat)",
            "table=0,priority=10,ipv6,in_port=3,actions=ct(table=2,zone=6,nat)",
            "table=1,priority=10,ct_state=+new+trk,ipv6,actions=ct(commit,zone=6,nat(src=[2001:db8::1])),output:3",
            "table=1,priority=10,ct_state=+est+trk,ipv6,actions=output:3",
            "table=2,priority=10,ct_state=+est+trk,ipv6,ct_ipv6_src=fd00::2,actions=output:1",
        ],
    )
    .unwrap();
    let out = udp6("fd00::2", "2001:db8::50", 5000, 53, b"query");
    assert!(udp6_ok(&out), "the test's own frame");
    send(&sw, &p[0], &out);
    let got = drain(&p[2]);
    assert_eq!(got.len(), 1);
    let f = got[0].data();
    assert_eq!(&f[22..38], &"2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap().octets(), "source translated");
    assert_eq!(u16::from_be_bytes([f[54], f[55]]), 5000);
    assert!(udp6_ok(f), "the UDP checksum follows the new address");
    send(&sw, &p[2], &udp6("2001:db8::50", "2001:db8::1", 53, 5000, b"answer"));
    let back = drain(&p[0]);
    assert_eq!(back.len(), 1, "the reply matches ct_ipv6_src and goes back");
    let f = back[0].data();
    assert_eq!(&f[38..54], &"fd00::2".parse::<std::net::Ipv6Addr>().unwrap().octets(), "destination translated back");
    assert!(udp6_ok(f));
    let c = &sw.conntrack().dump(0, 10, |_| true)[0];
    assert_eq!(
        (c.orig.src.to_string(), c.reply.dst.to_string(), c.snat),
        ("fd00::2".into(), "2001:db8::1".into(), true)
    );
}
