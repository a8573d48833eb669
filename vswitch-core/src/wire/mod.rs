//! Zero-copy views over packet bytes.
//!
//! The crate's own: views of Ethernet, ARP, IPv4, IPv6, ICMP, UDP and TCP
//! are smoltcp's (`smoltcp::wire`, used directly); this module adds what
//! smoltcp lacks: 802.1Q/802.1ad tags ([`vlan`]) and a [`MacAddr`] with text
//! and serde forms. Every view is validated once with `new_checked`; after
//! that no accessor can panic.

pub(crate) mod checksum;
mod mac_addr;
pub(crate) mod rewrite;
pub mod vlan;

pub use mac_addr::{MacAddr, ParseMacError};
pub use vlan::{Tag, VlanTci};

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

/// An Ethernet/IPv4 ARP request (op 1: broadcast, target MAC zero) or
/// reply (op 2: to `dst_mac`), padded to the 60-byte Ethernet minimum (the
/// ARP part is the first [`ARP_FRAME_LEN`] bytes).
pub(crate) fn arp_frame(
    op: u16,
    src_mac: MacAddr,
    src_ip: std::net::Ipv4Addr,
    dst_mac: MacAddr,
    dst_ip: std::net::Ipv4Addr,
) -> [u8; 60] {
    let mut f = [0u8; 60];
    let eth_dst = if op == 1 { MacAddr::BROADCAST } else { dst_mac };
    let tha = if op == 1 { MacAddr::ZERO } else { dst_mac };
    f[0..6].copy_from_slice(&eth_dst.0);
    f[6..12].copy_from_slice(&src_mac.0);
    f[12..22].copy_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, op as u8]);
    f[22..28].copy_from_slice(&src_mac.0);
    f[28..32].copy_from_slice(&src_ip.octets());
    f[32..38].copy_from_slice(&tha.0);
    f[38..42].copy_from_slice(&dst_ip.octets());
    f
}

/// The bytes of an ARP frame before padding.
pub(crate) const ARP_FRAME_LEN: usize = 42;
