use std::net::{IpAddr, Ipv4Addr};

use serde::Serialize;
use smoltcp::wire::{ArpHardware, ArpPacket, Ipv4Packet, Ipv6ExtHeader, Ipv6Packet, TcpPacket, UdpPacket};

use crate::port::PortNo;
use crate::wire::{MacAddr, VlanTci, be16, ethertype, vlan::VLAN_TAG_LEN};

/// How far [`FlowKey::extract`] understood a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
#[serde(rename_all = "snake_case")]
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

impl FlowKey {
    /// Extracts the key of `frame`, received on `in_port`.
    ///
    /// Never panics. A header that is cut short or inconsistent (an IPv4
    /// total length beyond the frame, a TCP data offset below 5, ...) stops
    /// parsing at the layer before it and sets [`FlowKey::truncated`].
    ///
    /// ```
    /// use vswitch_core::flow::{FlowKey, Layer};
    /// let frame = [0xffu8; 10];
    /// let key = FlowKey::extract(&frame, 1);
    /// assert_eq!(key.parsed, Layer::None);
    /// assert!(key.truncated);
    /// ```
    pub fn extract(frame: &[u8], in_port: PortNo) -> FlowKey {
        let mut key = FlowKey { in_port, ..FlowKey::default() };
        key.parse_ethernet(frame);
        key
    }

    fn parse_ethernet(&mut self, frame: &[u8]) {
        if frame.len() < crate::wire::ETHERNET_HEADER_LEN {
            self.truncated = true;
            return;
        }
        self.dl_dst = MacAddr::from_slice(&frame[0..6]);
        self.dl_src = MacAddr::from_slice(&frame[6..12]);
        self.parsed = Layer::Ethernet;
        let mut off = crate::wire::ETHERTYPE_OFFSET;
        let mut et = be16(frame, off);
        // Up to two tags (802.1ad S-tag over 802.1Q C-tag, or two C-tags).
        for depth in 0..2 {
            if et != ethertype::VLAN && et != ethertype::QINQ {
                break;
            }
            if frame.len() < off + 2 + VLAN_TAG_LEN {
                self.truncated = true;
                return;
            }
            let tci = VlanTci(be16(frame, off + 2));
            if depth == 0 {
                self.vlan_tpid = et;
                self.vlan_tci = Some(tci);
            } else {
                self.vlan_tci_inner = Some(tci);
            }
            off += VLAN_TAG_LEN;
            et = be16(frame, off);
        }
        self.dl_type = et;
        let l3 = off + 2;
        let payload = &frame[l3..];
        match et {
            ethertype::IPV4 => self.parse_ipv4(payload, l3),
            ethertype::IPV6 => self.parse_ipv6(payload, l3),
            ethertype::ARP => self.parse_arp(payload, l3),
            _ => {}
        }
    }

    fn parse_ipv4(&mut self, buf: &[u8], l3: usize) {
        let Ok(ip) = Ipv4Packet::new_checked(buf) else {
            self.truncated = true;
            return;
        };
        if ip.version() != 4 {
            self.truncated = true;
            return;
        }
        self.nw_src = IpAddr::V4(ip.src_addr());
        self.nw_dst = IpAddr::V4(ip.dst_addr());
        self.nw_proto = ip.next_header().into();
        self.nw_tos = (ip.dscp() << 2) | ip.ecn();
        self.nw_ttl = ip.hop_limit();
        self.l3_offset = l3 as u16;
        self.parsed = Layer::Network;
        if ip.frag_offset() != 0 {
            self.nw_frag = FragKind::Later;
            return;
        }
        if ip.more_frags() {
            self.nw_frag = FragKind::First;
        }
        let hl = ip.header_len() as usize;
        self.parse_l4(ip.payload(), l3 + hl);
    }

    fn parse_ipv6(&mut self, buf: &[u8], l3: usize) {
        let Ok(ip) = Ipv6Packet::new_checked(buf) else {
            self.truncated = true;
            return;
        };
        if ip.version() != 6 {
            self.truncated = true;
            return;
        }
        self.nw_src = IpAddr::V6(ip.src_addr());
        self.nw_dst = IpAddr::V6(ip.dst_addr());
        self.nw_tos = ip.traffic_class();
        self.nw_ttl = ip.hop_limit();
        self.l3_offset = l3 as u16;
        self.parsed = Layer::Network;

        let mut next: u8 = ip.next_header().into();
        let mut rest = ip.payload();
        let mut off = l3 + ip.header_len();
        for _ in 0..=MAX_IPV6_EXT_HEADERS {
            // RFC 8200 §4: extension headers are walked in order until an
            // upper-layer header (or one we do not skip) is reached.
            let len = match next {
                proto::HOPOPTS | proto::ROUTING | proto::DSTOPTS | proto::MOBILITY | proto::HIP | proto::SHIM6 => {
                    match Ipv6ExtHeader::new_checked(rest) {
                        // Hdr Ext Len counts 8-octet units beyond the first 8.
                        Ok(h) => 8 + 8 * h.header_len() as usize,
                        Err(_) => return self.stop_truncated(next),
                    }
                }
                proto::AH => {
                    // RFC 4302 §2.2: Payload Len counts 4-octet units, minus 2.
                    if rest.len() < 2 {
                        return self.stop_truncated(next);
                    }
                    (rest[1] as usize + 2) * 4
                }
                proto::FRAGMENT => {
                    // RFC 8200 §4.5: fixed 8 octets; offset in the top 13 bits.
                    if rest.len() < 8 {
                        return self.stop_truncated(next);
                    }
                    let frag = be16(rest, 2);
                    if frag >> 3 != 0 {
                        self.nw_frag = FragKind::Later;
                        self.nw_proto = rest[0];
                        return;
                    }
                    if frag & 1 != 0 {
                        self.nw_frag = FragKind::First;
                    }
                    8
                }
                _ => {
                    self.nw_proto = next;
                    self.parse_l4(rest, off);
                    return;
                }
            };
            if rest.len() < len {
                return self.stop_truncated(next);
            }
            next = rest[0];
            rest = &rest[len..];
            off += len;
        }
        // An extension chain longer than we are willing to walk.
        self.stop_truncated(next);
    }

    fn stop_truncated(&mut self, proto: u8) {
        self.nw_proto = proto;
        self.truncated = true;
    }

    fn parse_l4(&mut self, buf: &[u8], l4: usize) {
        match self.nw_proto {
            proto::TCP => match TcpPacket::new_checked(buf) {
                Ok(tcp) => {
                    self.tp_src = tcp.src_port();
                    self.tp_dst = tcp.dst_port();
                }
                Err(_) => return self.truncated = true,
            },
            proto::UDP => match UdpPacket::new_checked(buf) {
                Ok(udp) => {
                    self.tp_src = udp.src_port();
                    self.tp_dst = udp.dst_port();
                }
                Err(_) => return self.truncated = true,
            },
            proto::SCTP => {
                // RFC 9260 §3.1: a 12-octet common header, ports first.
                if buf.len() < 12 {
                    return self.truncated = true;
                }
                self.tp_src = be16(buf, 0);
                self.tp_dst = be16(buf, 2);
            }
            proto::ICMP | proto::ICMPV6 => {
                // Type, code, checksum: RFC 792 and RFC 4443 §2.1.
                if buf.len() < 4 {
                    return self.truncated = true;
                }
                self.icmp_type = buf[0];
                self.icmp_code = buf[1];
            }
            _ => return,
        }
        self.l4_offset = l4 as u16;
        self.parsed = Layer::Transport;
    }

    fn parse_arp(&mut self, buf: &[u8], l3: usize) {
        let Ok(arp) = ArpPacket::new_checked(buf) else {
            self.truncated = true;
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
        self.arp_op = arp.operation().into();
        self.arp_sha = MacAddr::from_slice(arp.source_hardware_addr());
        self.arp_tha = MacAddr::from_slice(arp.target_hardware_addr());
        let spa: [u8; 4] = arp.source_protocol_addr().try_into().unwrap_or([0; 4]);
        let tpa: [u8; 4] = arp.target_protocol_addr().try_into().unwrap_or([0; 4]);
        self.arp_spa = Ipv4Addr::from(spa);
        self.arp_tpa = Ipv4Addr::from(tpa);
        self.l3_offset = l3 as u16;
        self.parsed = Layer::Network;
    }
}

#[cfg(test)]
#[path = "key_tests.rs"]
mod tests;
