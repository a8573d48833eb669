//! Zero-copy views over packet bytes.
//!
//! Ethernet, ARP, IPv4, IPv6 (and its extension headers), ICMP, UDP and TCP
//! come from [`smoltcp::wire`], re-exported here; this module adds what
//! smoltcp lacks: 802.1Q/802.1ad tags ([`vlan`]) and a [`MacAddr`] with text
//! and serde forms. Every view is validated once with `new_checked`; after
//! that no accessor can panic.

pub(crate) mod checksum;
mod mac_addr;
pub mod vlan;

pub use mac_addr::{MacAddr, ParseMacError};
pub use smoltcp::wire::{
    ArpOperation, ArpPacket, EthernetFrame, EthernetProtocol, Icmpv4Packet, Icmpv6Packet, IpProtocol, Ipv4Packet,
    Ipv6ExtHeader, Ipv6FragmentHeader, Ipv6Packet, TcpPacket, UdpPacket,
};
pub use vlan::{VlanHeader, VlanTci};

/// Length of an Ethernet II header (destination, source, EtherType).
pub const ETHERNET_HEADER_LEN: usize = 14;
/// Offset of the EtherType (or TPID) field in an Ethernet frame.
pub const ETHERTYPE_OFFSET: usize = 12;

/// EtherType numbers the switch looks at.
pub mod ethertype {
    /// IPv4.
    pub const IPV4: u16 = 0x0800;
    /// ARP.
    pub const ARP: u16 = 0x0806;
    /// IEEE 802.1Q customer VLAN tag (C-tag).
    pub const VLAN: u16 = 0x8100;
    /// IEEE 802.1ad service VLAN tag (S-tag, QinQ outer tag).
    pub const QINQ: u16 = 0x88a8;
    /// IPv6.
    pub const IPV6: u16 = 0x86dd;
    /// Transparent Ethernet bridging (GRE payload type, RFC 1701).
    pub const TEB: u16 = 0x6558;
}

/// Where the network header of an Ethernet frame starts, past any 802.1Q
/// and 802.1ad tags, and the ethertype found there; None for a frame
/// shorter than an Ethernet header. A tag cut short ends the walk with its
/// TPID as the ethertype.
#[inline]
pub(crate) fn l3_start(frame: &[u8]) -> Option<(usize, u16)> {
    let mut l3 = ETHERNET_HEADER_LEN;
    if frame.len() < l3 {
        return None;
    }
    let mut et = be16(frame, ETHERTYPE_OFFSET);
    while matches!(et, ethertype::VLAN | ethertype::QINQ) && frame.len() >= l3 + 4 {
        et = be16(frame, l3 + 2);
        l3 += 4;
    }
    Some((l3, et))
}

/// Reads a big-endian u16 at `at`; the caller has checked the length.
#[inline]
pub(crate) fn be16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}
