//! FlowKey extraction: byte fixtures, frames built by pnet (an independent
//! implementation) read back field for field, truncation at every length,
//! and random bytes.

use super::*;
use pnet_packet::MutablePacket;
use pnet_packet::arp::{ArpHardwareTypes, ArpOperations, MutableArpPacket};
use pnet_packet::ethernet::{EtherType, EtherTypes, MutableEthernetPacket};
use pnet_packet::icmp::{IcmpCode, IcmpType, MutableIcmpPacket};
use pnet_packet::icmpv6::{Icmpv6Code, Icmpv6Type, MutableIcmpv6Packet};
use pnet_packet::ip::{IpNextHeaderProtocol, IpNextHeaderProtocols};
use pnet_packet::ipv4::MutableIpv4Packet;
use pnet_packet::ipv6::MutableIpv6Packet;
use pnet_packet::tcp::MutableTcpPacket;
use pnet_packet::udp::MutableUdpPacket;
use pnet_packet::vlan::{ClassOfService, MutableVlanPacket};
use proptest::prelude::*;

const SRC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const DST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

fn pmac(m: [u8; 6]) -> pnet_base::MacAddr {
    pnet_base::MacAddr::new(m[0], m[1], m[2], m[3], m[4], m[5])
}

/// Writes an Ethernet header (with `tags`, outer first) and returns the
/// offset of the payload.
fn ethernet(buf: &mut [u8], tags: &[(u16, u16, u8)], et: u16) -> usize {
    let mut eth = MutableEthernetPacket::new(buf).unwrap();
    eth.set_destination(pmac(DST));
    eth.set_source(pmac(SRC));
    let first = tags.first().map_or(et, |t| t.0);
    eth.set_ethertype(EtherType(first));
    let mut off = 14;
    for (i, &(_tpid, vid, pcp)) in tags.iter().enumerate() {
        let next = tags.get(i + 1).map_or(et, |t| t.0);
        let mut v = MutableVlanPacket::new(&mut buf[off..]).unwrap();
        v.set_vlan_identifier(vid);
        v.set_priority_code_point(ClassOfService::new(pcp));
        v.set_ethertype(EtherType(next));
        off += 4;
    }
    off
}

fn ipv4(buf: &mut [u8], proto: IpNextHeaderProtocol, payload_len: usize, options: usize) -> usize {
    let hl = 20 + options;
    let mut ip = MutableIpv4Packet::new(buf).unwrap();
    ip.set_version(4);
    ip.set_header_length((hl / 4) as u8);
    ip.set_total_length((hl + payload_len) as u16);
    ip.set_dscp(46);
    ip.set_ecn(1);
    ip.set_ttl(61);
    ip.set_next_level_protocol(proto);
    ip.set_source("10.0.0.1".parse().unwrap());
    ip.set_destination("10.0.0.2".parse().unwrap());
    for b in &mut ip.packet_mut()[20..hl] {
        *b = 1; // NOP options
    }
    hl
}

fn tcp_v4_frame(tags: &[(u16, u16, u8)], options: usize) -> Vec<u8> {
    let mut buf = vec![0u8; 128];
    let l3 = ethernet(&mut buf, tags, 0x0800);
    let l4 = l3 + ipv4(&mut buf[l3..], IpNextHeaderProtocols::Tcp, 20 + 6, options);
    let mut tcp = MutableTcpPacket::new(&mut buf[l4..]).unwrap();
    tcp.set_source(40000);
    tcp.set_destination(80);
    tcp.set_data_offset(5);
    buf.truncate(l4 + 26);
    buf
}

fn udp_v6_frame() -> Vec<u8> {
    let mut buf = vec![0u8; 128];
    let l3 = ethernet(&mut buf, &[], 0x86dd);
    let mut ip = MutableIpv6Packet::new(&mut buf[l3..]).unwrap();
    ip.set_version(6);
    ip.set_traffic_class(0xb8);
    ip.set_payload_length(8 + 8 + 4);
    ip.set_next_header(IpNextHeaderProtocols::Hopopt);
    ip.set_hop_limit(64);
    ip.set_source("fd00::1".parse().unwrap());
    ip.set_destination("fd00::2".parse().unwrap());
    // A hop-by-hop header (8 octets, PadN) in front of UDP.
    let hbh = l3 + 40;
    buf[hbh] = 17;
    buf[hbh + 1] = 0;
    buf[hbh + 2] = 1;
    buf[hbh + 3] = 4;
    let mut udp = MutableUdpPacket::new(&mut buf[hbh + 8..]).unwrap();
    udp.set_source(5353);
    udp.set_destination(53);
    udp.set_length(12);
    buf.truncate(hbh + 8 + 12);
    buf
}

fn arp_frame() -> Vec<u8> {
    let mut buf = vec![0u8; 60];
    let l3 = ethernet(&mut buf, &[], 0x0806);
    let mut arp = MutableArpPacket::new(&mut buf[l3..]).unwrap();
    arp.set_hardware_type(ArpHardwareTypes::Ethernet);
    arp.set_protocol_type(EtherTypes::Ipv4);
    arp.set_hw_addr_len(6);
    arp.set_proto_addr_len(4);
    arp.set_operation(ArpOperations::Request);
    arp.set_sender_hw_addr(pmac(SRC));
    arp.set_sender_proto_addr("10.0.0.1".parse().unwrap());
    arp.set_target_hw_addr(pmac([0; 6]));
    arp.set_target_proto_addr("10.0.0.2".parse().unwrap());
    buf
}

fn icmp_v4_frame() -> Vec<u8> {
    let mut buf = vec![0u8; 128];
    let l3 = ethernet(&mut buf, &[], 0x0800);
    let l4 = l3 + ipv4(&mut buf[l3..], IpNextHeaderProtocols::Icmp, 8, 0);
    let mut icmp = MutableIcmpPacket::new(&mut buf[l4..]).unwrap();
    icmp.set_icmp_type(IcmpType(8));
    icmp.set_icmp_code(IcmpCode(0));
    buf.truncate(l4 + 8);
    buf
}

fn icmp_v6_frame() -> Vec<u8> {
    let mut buf = vec![0u8; 128];
    let l3 = ethernet(&mut buf, &[(0x8100, 30, 0)], 0x86dd);
    let mut ip = MutableIpv6Packet::new(&mut buf[l3..]).unwrap();
    ip.set_version(6);
    ip.set_payload_length(8);
    ip.set_next_header(IpNextHeaderProtocols::Icmpv6);
    ip.set_hop_limit(255);
    ip.set_source("fe80::1".parse().unwrap());
    ip.set_destination("ff02::1".parse().unwrap());
    let mut icmp = MutableIcmpv6Packet::new(&mut buf[l3 + 40..]).unwrap();
    icmp.set_icmpv6_type(Icmpv6Type(135));
    icmp.set_icmpv6_code(Icmpv6Code(0));
    buf.truncate(l3 + 48);
    buf
}

#[test]
fn tcp_over_ipv4_fields() {
    let f = tcp_v4_frame(&[], 0);
    let k = FlowKey::extract(&f, 3);
    assert_eq!(k.in_port, 3);
    assert_eq!(k.dl_src, MacAddr(SRC));
    assert_eq!(k.dl_dst, MacAddr(DST));
    assert_eq!(k.dl_type, 0x0800);
    assert_eq!(k.vlan_tci, None);
    assert_eq!(k.nw_src, "10.0.0.1".parse::<IpAddr>().unwrap());
    assert_eq!(k.nw_dst, "10.0.0.2".parse::<IpAddr>().unwrap());
    assert_eq!((k.nw_proto, k.nw_tos, k.nw_ttl), (6, (46 << 2) | 1, 61));
    assert_eq!((k.tp_src, k.tp_dst), (40000, 80));
    assert_eq!((k.parsed, k.truncated, k.nw_frag), (Layer::Transport, false, FragKind::No));
    assert_eq!((k.l3_offset, k.l4_offset), (14, 34));
}

#[test]
fn ipv4_options_are_skipped() {
    let k = FlowKey::extract(&tcp_v4_frame(&[], 12), 1);
    assert_eq!((k.tp_src, k.tp_dst, k.l4_offset), (40000, 80, 46));
}

#[test]
fn single_and_double_vlan_tags() {
    let k = FlowKey::extract(&tcp_v4_frame(&[(0x8100, 100, 5)], 0), 1);
    assert_eq!(k.vlan_tpid, 0x8100);
    assert_eq!(k.vlan_tci, Some(VlanTci::new(100, 5)));
    assert_eq!((k.dl_type, k.tp_dst, k.l3_offset), (0x0800, 80, 18));

    let k = FlowKey::extract(&tcp_v4_frame(&[(0x88a8, 200, 1), (0x8100, 100, 0)], 0), 1);
    assert_eq!(k.vlan_tpid, 0x88a8);
    assert_eq!(k.vlan_tci.map(|t| t.vid()), Some(200));
    assert_eq!(k.vlan_tci_inner.map(|t| t.vid()), Some(100));
    assert_eq!((k.dl_type, k.tp_dst, k.l3_offset), (0x0800, 80, 22));
}

#[test]
fn udp_over_ipv6_after_hop_by_hop() {
    let k = FlowKey::extract(&udp_v6_frame(), 1);
    assert_eq!(k.dl_type, 0x86dd);
    assert_eq!(k.nw_src, "fd00::1".parse::<IpAddr>().unwrap());
    assert_eq!(k.nw_dst, "fd00::2".parse::<IpAddr>().unwrap());
    assert_eq!((k.nw_proto, k.nw_tos, k.nw_ttl), (17, 0xb8, 64));
    assert_eq!((k.tp_src, k.tp_dst), (5353, 53));
    assert_eq!((k.parsed, k.l4_offset), (Layer::Transport, 14 + 48));
}

#[test]
fn arp_fields() {
    let k = FlowKey::extract(&arp_frame(), 1);
    assert_eq!((k.dl_type, k.arp_op, k.parsed), (0x0806, 1, Layer::Network));
    assert_eq!(k.arp_spa, Ipv4Addr::new(10, 0, 0, 1));
    assert_eq!(k.arp_tpa, Ipv4Addr::new(10, 0, 0, 2));
    assert_eq!(k.arp_sha, MacAddr(SRC));
    assert_eq!(k.arp_tha, MacAddr::ZERO);
}

#[test]
fn icmp_type_and_code() {
    let k = FlowKey::extract(&icmp_v4_frame(), 1);
    assert_eq!((k.nw_proto, k.icmp_type, k.icmp_code, k.parsed), (1, 8, 0, Layer::Transport));
    let k = FlowKey::extract(&icmp_v6_frame(), 1);
    assert_eq!(k.vlan_tci.map(|t| t.vid()), Some(30));
    assert_eq!((k.nw_proto, k.icmp_type, k.nw_ttl, k.parsed), (58, 135, 255, Layer::Transport));
}

#[test]
fn ipv4_fragments() {
    let mut f = tcp_v4_frame(&[], 0);
    // More-fragments set, offset 0: the first fragment keeps its ports.
    f[14 + 6] = 0x20;
    let k = FlowKey::extract(&f, 1);
    assert_eq!((k.nw_frag, k.tp_dst), (FragKind::First, 80));
    // A later fragment has no transport header to read.
    f[14 + 6] = 0x00;
    f[14 + 7] = 0x10;
    let k = FlowKey::extract(&f, 1);
    assert_eq!((k.nw_frag, k.tp_dst, k.parsed), (FragKind::Later, 0, Layer::Network));
}

#[test]
fn ipv6_fragment_header() {
    let mut f = udp_v6_frame();
    // Turn the hop-by-hop header into a fragment header, offset 8.
    f[14 + 6] = 44;
    f[14 + 40 + 2] = 0x00;
    f[14 + 40 + 3] = 0x40;
    let k = FlowKey::extract(&f, 1);
    assert_eq!((k.nw_frag, k.nw_proto, k.tp_dst, k.parsed), (FragKind::Later, 17, 0, Layer::Network));
}

#[test]
fn byte_fixture_tcp_syn() {
    // A hand-written TCP SYN from 192.168.1.10:51000 to 192.168.1.1:22.
    #[rustfmt::skip]
    let f: [u8; 54] = [
        0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0x08, 0x00,
        0x45, 0x00, 0x00, 0x28, 0x12, 0x34, 0x40, 0x00, 0x40, 0x06, 0x00, 0x00,
        192, 168, 1, 10, 192, 168, 1, 1,
        0xc7, 0x38, 0x00, 0x16, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0,
    ];
    let k = FlowKey::extract(&f, 9);
    assert_eq!(k.dl_dst.to_string(), "00:11:22:33:44:55");
    assert_eq!(k.dl_src.to_string(), "66:77:88:99:aa:bb");
    assert_eq!(k.nw_src, IpAddr::V4(Ipv4Addr::new(192, 168, 1, 10)));
    assert_eq!((k.nw_proto, k.nw_ttl, k.tp_src, k.tp_dst), (6, 64, 51000, 22));
}

#[test]
fn inconsistent_headers_stop_parsing() {
    // IPv4 total length larger than the frame.
    let mut f = tcp_v4_frame(&[], 0);
    f[14 + 2] = 0x05;
    let k = FlowKey::extract(&f, 1);
    assert_eq!((k.parsed, k.truncated, k.nw_proto), (Layer::Ethernet, true, 0));
    // IHL below 5.
    let mut f = tcp_v4_frame(&[], 0);
    f[14] = 0x44;
    assert!(FlowKey::extract(&f, 1).truncated);
    // Wrong IP version under an IPv4 EtherType.
    let mut f = tcp_v4_frame(&[], 0);
    f[14] = 0x65;
    assert!(FlowKey::extract(&f, 1).truncated);
    // TCP data offset below 5.
    let mut f = tcp_v4_frame(&[], 0);
    f[34 + 12] = 0x40;
    let k = FlowKey::extract(&f, 1);
    assert_eq!((k.parsed, k.truncated, k.tp_dst), (Layer::Network, true, 0));
    // An ARP for another hardware type parses to L2 only, not truncated.
    let mut f = arp_frame();
    f[15] = 6;
    let k = FlowKey::extract(&f, 1);
    assert_eq!((k.parsed, k.truncated), (Layer::Ethernet, false));
}

#[test]
fn ipv6_extension_chain_is_bounded() {
    // 12 destination-options headers: more than we walk.
    let mut buf = vec![0u8; 14 + 40 + 12 * 8 + 8];
    let l3 = ethernet(&mut buf, &[], 0x86dd);
    let n = buf.len() - l3 - 40;
    let mut ip = MutableIpv6Packet::new(&mut buf[l3..]).unwrap();
    ip.set_version(6);
    ip.set_payload_length(n as u16);
    ip.set_next_header(IpNextHeaderProtocols::Ipv6Opts);
    for i in 0..12 {
        buf[l3 + 40 + i * 8] = if i == 11 { 17 } else { 60 };
    }
    let k = FlowKey::extract(&buf, 1);
    assert_eq!((k.parsed, k.truncated), (Layer::Network, true));
}

/// Every prefix of a valid frame parses without panicking, never claims a
/// deeper layer than the whole frame, and what it did parse agrees with the
/// whole frame's key.
fn check_every_truncation(frame: &[u8]) {
    let full = FlowKey::extract(frame, 1);
    assert!(!full.truncated);
    let mut last = Layer::None;
    for n in 0..frame.len() {
        let k = FlowKey::extract(&frame[..n], 1);
        assert!(k.parsed <= full.parsed, "len {n}");
        assert!(k.parsed >= last, "parsing depth is monotonic in length (len {n})");
        last = k.parsed;
        if n < frame.len() && k.parsed < full.parsed {
            assert!(k.truncated, "a cut frame is flagged (len {n})");
        }
        if k.parsed >= Layer::Ethernet {
            assert_eq!((k.dl_src, k.dl_dst), (full.dl_src, full.dl_dst));
        }
        if k.parsed >= Layer::Network {
            assert_eq!(
                (k.nw_src, k.nw_dst, k.nw_proto, k.arp_op),
                (full.nw_src, full.nw_dst, full.nw_proto, full.arp_op)
            );
        }
        if k.parsed == Layer::Transport {
            assert_eq!(k, FlowKey { truncated: k.truncated, ..full });
        }
    }
}

#[test]
fn truncation_at_every_length() {
    check_every_truncation(&tcp_v4_frame(&[], 0));
    check_every_truncation(&tcp_v4_frame(&[], 8));
    check_every_truncation(&tcp_v4_frame(&[(0x88a8, 200, 1), (0x8100, 100, 0)], 0));
    check_every_truncation(&udp_v6_frame());
    check_every_truncation(&arp_frame()[..42]);
    check_every_truncation(&icmp_v4_frame());
    check_every_truncation(&icmp_v6_frame());
}

/// The packed parser must agree with packing the full key, always (the
/// `flow_key` fuzz target's check).
fn check_packed_agrees(frame: &[u8], in_port: u32) {
    let mut data = in_port.to_be_bytes().to_vec();
    data.extend_from_slice(frame);
    crate::fuzzing::flow_key(&data);
}

#[test]
fn packed_parser_agrees_on_fixtures_and_their_truncations() {
    let frames = [
        tcp_v4_frame(&[], 0),
        tcp_v4_frame(&[], 8),
        tcp_v4_frame(&[(0x88a8, 200, 1), (0x8100, 100, 0)], 0),
        udp_v6_frame(),
        arp_frame(),
        icmp_v4_frame(),
        icmp_v6_frame(),
    ];
    for f in &frames {
        for n in 0..=f.len() {
            check_packed_agrees(&f[..n], 7);
        }
    }
}

proptest! {
    #[test]
    fn packed_parser_agrees_on_random_frames(
        tail in proptest::collection::vec(any::<u8>(), 0..80),
        et in prop_oneof![Just(0x0800u16), Just(0x86dd), Just(0x0806), Just(0x8100), Just(0x88a8), any::<u16>()],
        in_port in any::<u32>(),
    ) {
        let mut f = vec![0u8; 14];
        f[..6].copy_from_slice(&DST);
        f[6..12].copy_from_slice(&SRC);
        f[12..14].copy_from_slice(&et.to_be_bytes());
        f.extend_from_slice(&tail);
        check_packed_agrees(&f, in_port);
    }

    /// Valid frames with a few bytes changed reach every layer's error
    /// paths: both parsers must still agree.
    #[test]
    fn packed_parser_agrees_on_mutated_frames(
        which in 0usize..6,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
    ) {
        let mut f = [tcp_v4_frame(&[], 8), tcp_v4_frame(&[(0x8100, 5, 0)], 0), udp_v6_frame(), arp_frame(), icmp_v4_frame(), icmp_v6_frame()]
            [which]
            .clone();
        for (at, v) in edits {
            let n = f.len();
            f[at % n] = v;
        }
        check_packed_agrees(&f, 3);
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), in_port in 0u32..100) {
        let k = FlowKey::extract(&bytes, in_port);
        prop_assert_eq!(k.in_port, in_port);
        if bytes.len() < 14 {
            prop_assert_eq!(k.parsed, Layer::None);
        } else {
            prop_assert_eq!(&k.dl_dst.0[..], &bytes[..6]);
            prop_assert_eq!(&k.dl_src.0[..], &bytes[6..12]);
        }
        if k.parsed >= Layer::Network {
            prop_assert!(matches!(k.dl_type, 0x0800 | 0x86dd | 0x0806));
            prop_assert!((k.l3_offset as usize) < bytes.len());
        }
        if k.parsed == Layer::Transport {
            prop_assert!(matches!(k.nw_proto, 1 | 6 | 17 | 58 | 132));
            prop_assert!(k.l4_offset > k.l3_offset && (k.l4_offset as usize) < bytes.len());
        }
    }

    #[test]
    fn random_tails_after_valid_headers(tail in proptest::collection::vec(any::<u8>(), 0..80), et in prop_oneof![Just(0x0800u16), Just(0x86dd), Just(0x0806), Just(0x8100), Just(0x88a8)]) {
        let mut f = vec![0u8; 14];
        f[..6].copy_from_slice(&DST);
        f[6..12].copy_from_slice(&SRC);
        f[12..14].copy_from_slice(&et.to_be_bytes());
        f.extend_from_slice(&tail);
        let k = FlowKey::extract(&f, 1);
        prop_assert!(k.parsed >= Layer::Ethernet);
    }
}
