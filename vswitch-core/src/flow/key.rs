use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;
use smoltcp::wire::{ArpHardware, ArpPacket, Ipv4Packet, Ipv6ExtHeader, Ipv6Packet, TcpPacket, UdpPacket};

use crate::port::PortNo;
use crate::wire::{MacAddr, VlanTci, be16, ethertype};

/// How far the parser understood a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Layer {
    /// Not even a whole Ethernet header.
    #[default]
    None,
    /// Ethernet (and VLAN tags) parsed; the payload is unknown or malformed.
    Ethernet,
    /// The network header (IPv4, IPv6 or ARP) parsed.
    Network,
    /// The transport header (TCP, UDP, SCTP, ICMP, ICMPv6) parsed.
    Transport,
}

/// IP fragmentation state (OVS's `nw_frag`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FragKind {
    /// Not a fragment.
    #[default]
    No,
    /// The first fragment: it carries the transport header.
    First,
    /// A later fragment: no transport header.
    Later,
}

/// Tunnel metadata of a packet that arrived through a tunnel port; all zero
/// otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct TunnelKey {
    /// VXLAN VNI or GRE key.
    pub tun_id: u64,
    /// Outer source address.
    pub tun_src: IpAddr,
    /// Outer destination address.
    pub tun_dst: IpAddr,
}

impl Default for TunnelKey {
    fn default() -> Self {
        TunnelKey { tun_id: 0, tun_src: IpAddr::V4(Ipv4Addr::UNSPECIFIED), tun_dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED) }
    }
}

/// Every header field the switch can match on, extracted from one frame.
///
/// Fields of layers that were not parsed are zero. Field names follow
/// `ovs-ofctl`. `dl_type` is the EtherType after any VLAN tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct FlowKey {
    /// Tunnel metadata.
    pub tunnel: TunnelKey,
    /// The port the frame came in on.
    pub in_port: PortNo,
    /// Ethernet source.
    pub dl_src: MacAddr,
    /// Ethernet destination.
    pub dl_dst: MacAddr,
    /// EtherType of the payload after VLAN tags (0 if the header was cut).
    pub dl_type: u16,
    /// The outer VLAN tag's TPID (0x8100 or 0x88a8), 0 when untagged.
    pub vlan_tpid: u16,
    /// The outer VLAN tag, if any.
    #[serde(serialize_with = "ser_tci")]
    pub vlan_tci: Option<VlanTci>,
    /// The inner VLAN tag of a double-tagged (QinQ) frame.
    #[serde(serialize_with = "ser_tci")]
    pub vlan_tci_inner: Option<VlanTci>,
    /// IPv4/IPv6 source.
    pub nw_src: IpAddr,
    /// IPv4/IPv6 destination.
    pub nw_dst: IpAddr,
    /// IP protocol (after IPv6 extension headers).
    pub nw_proto: u8,
    /// The whole IPv4 TOS / IPv6 traffic class byte (DSCP and ECN).
    pub nw_tos: u8,
    /// IPv4 TTL or IPv6 hop limit.
    pub nw_ttl: u8,
    /// Fragmentation state.
    pub nw_frag: FragKind,
    /// TCP/UDP/SCTP source port.
    pub tp_src: u16,
    /// TCP/UDP/SCTP destination port.
    pub tp_dst: u16,
    /// ICMP or ICMPv6 type.
    pub icmp_type: u8,
    /// ICMP or ICMPv6 code.
    pub icmp_code: u8,
    /// ARP operation.
    pub arp_op: u16,
    /// ARP sender protocol address.
    pub arp_spa: Ipv4Addr,
    /// ARP target protocol address.
    pub arp_tpa: Ipv4Addr,
    /// ARP sender hardware address.
    pub arp_sha: MacAddr,
    /// ARP target hardware address.
    pub arp_tha: MacAddr,
    /// How far parsing got.
    pub parsed: Layer,
    /// True when parsing stopped because a header was cut short or
    /// inconsistent (rather than because the protocol is not one we parse).
    pub truncated: bool,
    /// Offset of the network header in the frame (0 if none).
    pub l3_offset: u16,
    /// Offset of the transport header in the frame (0 if none).
    pub l4_offset: u16,
}

fn ser_tci<S: serde::Serializer>(t: &Option<VlanTci>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_some(&t.0),
        None => s.serialize_none(),
    }
}

impl Default for FlowKey {
    fn default() -> Self {
        FlowKey {
            tunnel: TunnelKey::default(),
            in_port: 0,
            dl_src: MacAddr::ZERO,
            dl_dst: MacAddr::ZERO,
            dl_type: 0,
            vlan_tpid: 0,
            vlan_tci: None,
            vlan_tci_inner: None,
            nw_src: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            nw_dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            nw_proto: 0,
            nw_tos: 0,
            nw_ttl: 0,
            nw_frag: FragKind::No,
            tp_src: 0,
            tp_dst: 0,
            icmp_type: 0,
            icmp_code: 0,
            arp_op: 0,
            arp_spa: Ipv4Addr::UNSPECIFIED,
            arp_tpa: Ipv4Addr::UNSPECIFIED,
            arp_sha: MacAddr::ZERO,
            arp_tha: MacAddr::ZERO,
            parsed: Layer::None,
            truncated: false,
            l3_offset: 0,
            l4_offset: 0,
        }
    }
}

/// IP protocol numbers the extractor understands.
mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const SCTP: u8 = 132;
    pub const ICMPV6: u8 = 58;
    pub const HOPOPTS: u8 = 0;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const AH: u8 = 51;
    pub const DSTOPTS: u8 = 60;
    pub const MOBILITY: u8 = 135;
    pub const HIP: u8 = 139;
    pub const SHIM6: u8 = 140;
}

/// At most this many IPv6 extension headers are walked; a chain longer than
/// that is treated as malformed (it bounds the work a crafted packet costs).
const MAX_IPV6_EXT_HEADERS: usize = 8;

/// Where the parser writes what it finds. Parsing is written once, over
/// this trait; [`FlowKey`] is the full, named form and
/// [`PackedParse`](super::PackedParse) the classifier's packed form, filled
/// directly without building a `FlowKey` first.
pub(crate) trait KeySink {
    fn ethernet(&mut self, dst: &[u8], src: &[u8]);
    fn vlan(&mut self, depth: usize, tpid: u16, tci: VlanTci);
    fn dl_type(&mut self, et: u16);
    fn ipv4(&mut self, src: Ipv4Addr, dst: Ipv4Addr, proto: u8, tos: u8, ttl: u8, l3: usize);
    fn ipv6(&mut self, src: Ipv6Addr, dst: Ipv6Addr, tos: u8, ttl: u8, l3: usize);
    fn nw_proto(&mut self, proto: u8);
    fn frag(&mut self, frag: FragKind);
    fn ports(&mut self, src: u16, dst: u16, l4: usize);
    fn icmp(&mut self, ty: u8, code: u8, l4: usize);
    fn arp(&mut self, op: u16, spa: Ipv4Addr, tpa: Ipv4Addr, sha: &[u8], tha: &[u8], l3: usize);
    fn layer(&mut self, layer: Layer);
    fn truncated(&mut self);
}

impl KeySink for FlowKey {
    #[inline]
    fn ethernet(&mut self, dst: &[u8], src: &[u8]) {
        self.dl_dst = MacAddr::from_slice(dst);
        self.dl_src = MacAddr::from_slice(src);
    }
    #[inline]
    fn vlan(&mut self, depth: usize, tpid: u16, tci: VlanTci) {
        if depth == 0 {
            self.vlan_tpid = tpid;
            self.vlan_tci = Some(tci);
        } else {
            self.vlan_tci_inner = Some(tci);
        }
    }
    #[inline]
    fn dl_type(&mut self, et: u16) {
        self.dl_type = et;
    }
    #[inline]
    fn ipv4(&mut self, src: Ipv4Addr, dst: Ipv4Addr, proto: u8, tos: u8, ttl: u8, l3: usize) {
        (self.nw_src, self.nw_dst) = (IpAddr::V4(src), IpAddr::V4(dst));
        (self.nw_proto, self.nw_tos, self.nw_ttl, self.l3_offset) = (proto, tos, ttl, l3 as u16);
    }
    #[inline]
    fn ipv6(&mut self, src: Ipv6Addr, dst: Ipv6Addr, tos: u8, ttl: u8, l3: usize) {
        (self.nw_src, self.nw_dst) = (IpAddr::V6(src), IpAddr::V6(dst));
        (self.nw_tos, self.nw_ttl, self.l3_offset) = (tos, ttl, l3 as u16);
    }
    #[inline]
    fn nw_proto(&mut self, proto: u8) {
        self.nw_proto = proto;
    }
    #[inline]
    fn frag(&mut self, frag: FragKind) {
        self.nw_frag = frag;
    }
    #[inline]
    fn ports(&mut self, src: u16, dst: u16, l4: usize) {
        (self.tp_src, self.tp_dst, self.l4_offset) = (src, dst, l4 as u16);
    }
    #[inline]
    fn icmp(&mut self, ty: u8, code: u8, l4: usize) {
        (self.icmp_type, self.icmp_code, self.l4_offset) = (ty, code, l4 as u16);
    }
    #[inline]
    fn arp(&mut self, op: u16, spa: Ipv4Addr, tpa: Ipv4Addr, sha: &[u8], tha: &[u8], l3: usize) {
        (self.arp_op, self.arp_spa, self.arp_tpa, self.l3_offset) = (op, spa, tpa, l3 as u16);
        self.arp_sha = MacAddr::from_slice(sha);
        self.arp_tha = MacAddr::from_slice(tha);
    }
    #[inline]
    fn layer(&mut self, layer: Layer) {
        self.parsed = layer;
    }
    #[inline]
    fn truncated(&mut self) {
        self.truncated = true;
    }
}

impl FlowKey {
    /// Extracts the key of `frame`, received on `in_port`.
    ///
    /// Never panics. A header that is cut short or inconsistent (an IPv4
    /// total length beyond the frame, a TCP data offset below 5, ...) stops
    /// parsing at the layer before it and marks the key truncated.
    pub fn extract(frame: &[u8], in_port: PortNo) -> FlowKey {
        let mut key = FlowKey { in_port, ..FlowKey::default() };
        parse_ethernet(&mut key, frame);
        key
    }
}

/// Parses `frame` into `sink`.
#[inline]
pub(crate) fn parse_ethernet<S: KeySink>(sink: &mut S, frame: &[u8]) {
    let Some(tags) = crate::wire::vlan::walk(frame) else {
        sink.truncated();
        return;
    };
    sink.ethernet(&frame[0..6], &frame[6..12]);
    sink.layer(Layer::Ethernet);
    for (depth, tag) in tags.tags.iter().enumerate() {
        let Some(tag) = tag else { break };
        sink.vlan(depth, tag.tpid, tag.tci);
    }
    if tags.cut {
        sink.truncated();
        return;
    }
    let (et, l3) = (tags.ethertype, tags.l3);
    sink.dl_type(et);
    let payload = &frame[l3..];
    match et {
        ethertype::IPV4 => parse_ipv4(sink, payload, l3),
        ethertype::IPV6 => parse_ipv6(sink, payload, l3),
        ethertype::ARP => parse_arp(sink, payload, l3),
        _ => {}
    }
}

#[inline]
fn parse_ipv4<S: KeySink>(sink: &mut S, buf: &[u8], l3: usize) {
    let Ok(ip) = Ipv4Packet::new_checked(buf) else {
        sink.truncated();
        return;
    };
    if ip.version() != 4 {
        sink.truncated();
        return;
    }
    let proto: u8 = ip.next_header().into();
    sink.ipv4(ip.src_addr(), ip.dst_addr(), proto, (ip.dscp() << 2) | ip.ecn(), ip.hop_limit(), l3);
    sink.layer(Layer::Network);
    if ip.frag_offset() != 0 {
        sink.frag(FragKind::Later);
        return;
    }
    if ip.more_frags() {
        sink.frag(FragKind::First);
    }
    let hl = ip.header_len() as usize;
    parse_l4(sink, proto, ip.payload(), l3 + hl);
}

fn parse_ipv6<S: KeySink>(sink: &mut S, buf: &[u8], l3: usize) {
    let Ok(ip) = Ipv6Packet::new_checked(buf) else {
        sink.truncated();
        return;
    };
    if ip.version() != 6 {
        sink.truncated();
        return;
    }
    sink.ipv6(ip.src_addr(), ip.dst_addr(), ip.traffic_class(), ip.hop_limit(), l3);
    sink.layer(Layer::Network);

    let mut next: u8 = ip.next_header().into();
    let mut rest = ip.payload();
    let mut off = l3 + ip.header_len();
    let stop = |sink: &mut S, proto: u8| {
        sink.nw_proto(proto);
        sink.truncated();
    };
    for _ in 0..=MAX_IPV6_EXT_HEADERS {
        // RFC 8200 §4: extension headers are walked in order until an
        // upper-layer header (or one we do not skip) is reached.
        let len = match next {
            proto::HOPOPTS | proto::ROUTING | proto::DSTOPTS | proto::MOBILITY | proto::HIP | proto::SHIM6 => {
                match Ipv6ExtHeader::new_checked(rest) {
                    // Hdr Ext Len counts 8-octet units beyond the first 8.
                    Ok(h) => 8 + 8 * h.header_len() as usize,
                    Err(_) => return stop(sink, next),
                }
            }
            proto::AH => {
                // RFC 4302 §2.2: Payload Len counts 4-octet units, minus 2.
                if rest.len() < 2 {
                    return stop(sink, next);
                }
                (rest[1] as usize + 2) * 4
            }
            proto::FRAGMENT => {
                // RFC 8200 §4.5: fixed 8 octets; offset in the top 13 bits.
                if rest.len() < 8 {
                    return stop(sink, next);
                }
                let frag = be16(rest, 2);
                if frag >> 3 != 0 {
                    sink.frag(FragKind::Later);
                    sink.nw_proto(rest[0]);
                    return;
                }
                if frag & 1 != 0 {
                    sink.frag(FragKind::First);
                }
                8
            }
            _ => {
                sink.nw_proto(next);
                parse_l4(sink, next, rest, off);
                return;
            }
        };
        if rest.len() < len {
            return stop(sink, next);
        }
        next = rest[0];
        rest = &rest[len..];
        off += len;
    }
    // An extension chain longer than we are willing to walk.
    stop(sink, next);
}

#[inline]
fn parse_l4<S: KeySink>(sink: &mut S, nw_proto: u8, buf: &[u8], l4: usize) {
    match nw_proto {
        proto::TCP => match TcpPacket::new_checked(buf) {
            Ok(tcp) => sink.ports(tcp.src_port(), tcp.dst_port(), l4),
            Err(_) => return sink.truncated(),
        },
        proto::UDP => match UdpPacket::new_checked(buf) {
            Ok(udp) => sink.ports(udp.src_port(), udp.dst_port(), l4),
            Err(_) => return sink.truncated(),
        },
        proto::SCTP => {
            // RFC 9260 §3.1: a 12-octet common header, ports first.
            if buf.len() < 12 {
                return sink.truncated();
            }
            sink.ports(be16(buf, 0), be16(buf, 2), l4);
        }
        proto::ICMP | proto::ICMPV6 => {
            // Type, code, checksum: RFC 792 and RFC 4443 §2.1.
            if buf.len() < 4 {
                return sink.truncated();
            }
            sink.icmp(buf[0], buf[1], l4);
        }
        _ => return,
    }
    sink.layer(Layer::Transport);
}

fn parse_arp<S: KeySink>(sink: &mut S, buf: &[u8], l3: usize) {
    let Ok(arp) = ArpPacket::new_checked(buf) else {
        sink.truncated();
        return;
    };
    // Only Ethernet/IPv4 ARP has the fields OpenFlow matches on.
    if arp.hardware_type() != ArpHardware::Ethernet
        || u16::from(arp.protocol_type()) != ethertype::IPV4
        || arp.hardware_len() != 6
        || arp.protocol_len() != 4
    {
        return;
    }
    let spa: [u8; 4] = arp.source_protocol_addr().try_into().unwrap_or([0; 4]);
    let tpa: [u8; 4] = arp.target_protocol_addr().try_into().unwrap_or([0; 4]);
    sink.arp(
        arp.operation().into(),
        Ipv4Addr::from(spa),
        Ipv4Addr::from(tpa),
        arp.source_hardware_addr(),
        arp.target_hardware_addr(),
        l3,
    );
    sink.layer(Layer::Network);
}

#[cfg(test)]
#[path = "key_tests.rs"]
mod tests;
