//! Zero-copy views over packet bytes.
//!
//! Ethernet, ARP, IPv4, IPv6 (and its extension headers), ICMP, UDP and TCP
//! come from [`smoltcp::wire`], re-exported here; this module adds what
//! smoltcp lacks: 802.1Q/802.1ad tags ([`vlan`]) and a [`MacAddr`] with text
//! and serde forms. Every view is validated once with `new_checked`; after
//! that no accessor can panic.

pub(crate) mod checksum;
mod mac_addr;
pub(crate) mod rewrite;
pub mod vlan;

pub use mac_addr::{MacAddr, ParseMacError};
pub use smoltcp::wire::{
    ArpOperation, ArpPacket, EthernetFrame, EthernetProtocol, Icmpv4Packet, Icmpv6Packet, IpProtocol, Ipv4Packet,
    Ipv6ExtHeader, Ipv6FragmentHeader, Ipv6Packet, TcpPacket, UdpPacket,
};
pub use vlan::{Tag, Tags, VlanHeader, VlanTci};

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

/// Where the network header of an Ethernet frame starts, past its tags
/// ([`vlan::walk`]), and the EtherType found there; None for a frame
/// shorter than an Ethernet header.
#[inline]
pub(crate) fn l3_start(frame: &[u8]) -> Option<(usize, u16)> {
    vlan::walk(frame).map(|t| (t.l3, t.ethertype))
}

/// Reads a big-endian u16 at `at`; the caller has checked the length.
#[inline]
pub(crate) fn be16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}
