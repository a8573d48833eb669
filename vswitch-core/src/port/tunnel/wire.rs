//! Tunnel headers: VXLAN (RFC 7348) in UDP, and GRE (RFC 2784 with the
//! key and sequence extensions of RFC 2890) carrying Ethernet (transparent
//! Ethernet bridging, protocol 0x6558). Building and checking only; the
//! outer IPv4 header is the kernel's on transmit.

use std::net::Ipv4Addr;

use crate::wire::{ETHERNET_HEADER_LEN, ethertype};

/// VXLAN header length.
pub const VXLAN_LEN: usize = 8;
/// UDP header length.
pub const UDP_LEN: usize = 8;
/// The VXLAN "I" flag: the VNI is valid.
const VXLAN_I: u8 = 0x08;

/// GRE flag bits (first byte) and the protocol carried.
const GRE_C: u8 = 0x80;
const GRE_K: u8 = 0x20;
const GRE_S: u8 = 0x10;
/// Routing present, strict source route, recursion control: RFC 1701
/// fields that RFC 2784 receivers must discard packets for.
const GRE_RFC1701: u8 = 0x40 | 0x08 | 0x07;

/// Why a tunnel packet was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Shorter than its headers say.
    Short,
    /// VXLAN without the I flag.
    VxlanFlags,
    /// GRE with RFC 1701 bits, a version other than 0, or not carrying
    /// Ethernet.
    GreHeader,
    /// GRE checksum present and wrong.
    GreChecksum,
    /// The inner frame is shorter than an Ethernet header.
    InnerTruncated,
}

/// The VXLAN header for `vni`.
pub fn vxlan_header(vni: u32) -> [u8; VXLAN_LEN] {
    let v = (vni & 0x00ff_ffff) << 8;
    let b = v.to_be_bytes();
    [VXLAN_I, 0, 0, 0, b[0], b[1], b[2], 0]
}

/// Checks a VXLAN payload (after UDP); returns the VNI and the inner
/// frame's offset.
pub fn parse_vxlan(d: &[u8]) -> Result<(u32, usize), Malformed> {
    if d.len() < VXLAN_LEN {
        return Err(Malformed::Short);
    }
    // RFC 7348: the I flag must be set; reserved bits are ignored.
    if d[0] & VXLAN_I == 0 {
        return Err(Malformed::VxlanFlags);
    }
    if d.len() < VXLAN_LEN + ETHERNET_HEADER_LEN {
        return Err(Malformed::InnerTruncated);
    }
    Ok((u32::from_be_bytes([0, d[4], d[5], d[6]]), VXLAN_LEN))
}

/// A UDP header (checksum 0: RFC 7348 says the outer UDP checksum SHOULD
/// be zero over IPv4, and receivers accept it).
pub fn udp_header(src_port: u16, dst_port: u16, payload: usize) -> [u8; UDP_LEN] {
    let s = src_port.to_be_bytes();
    let d = dst_port.to_be_bytes();
    let l = ((UDP_LEN + payload) as u16).to_be_bytes();
    [s[0], s[1], d[0], d[1], l[0], l[1], 0, 0]
}

/// The GRE header carrying Ethernet, with `key` if given; returns the
/// bytes and how many of them are used (4 or 8).
pub fn gre_header(key: Option<u32>) -> ([u8; 8], usize) {
    let p = ethertype::TEB.to_be_bytes();
    match key {
        None => ([0, 0, p[0], p[1], 0, 0, 0, 0], 4),
        Some(k) => {
            let k = k.to_be_bytes();
            ([GRE_K, 0, p[0], p[1], k[0], k[1], k[2], k[3]], 8)
        }
    }
}

/// A received GRE packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrePacket {
    /// Outer source address.
    pub src: Ipv4Addr,
    /// Outer destination address.
    pub dst: Ipv4Addr,
    /// The key, if the K flag was set.
    pub key: Option<u32>,
    /// The inner frame's offset.
    pub inner: usize,
}

/// Checks an IPv4 packet carrying GRE (as a raw socket receives it).
pub fn parse_gre(d: &[u8]) -> Result<GrePacket, Malformed> {
    if d.len() < 20 || d[0] >> 4 != 4 {
        return Err(Malformed::Short);
    }
    let ihl = (d[0] & 0x0f) as usize * 4;
    let total = u16::from_be_bytes([d[2], d[3]]) as usize;
    if ihl < 20 || total < ihl || total > d.len() {
        return Err(Malformed::Short);
    }
    let src = Ipv4Addr::new(d[12], d[13], d[14], d[15]);
    let dst = Ipv4Addr::new(d[16], d[17], d[18], d[19]);
    let g = &d[ihl..total];
    if g.len() < 4 {
        return Err(Malformed::Short);
    }
    let (flags, version) = (g[0], g[1] & 0x07);
    // RFC 2784 §2.5.1: discard unless bits 1-5 (beyond K and S of RFC
    // 2890) are zero and the version is 0.
    if flags & GRE_RFC1701 != 0 || version != 0 || u16::from_be_bytes([g[2], g[3]]) != ethertype::TEB {
        return Err(Malformed::GreHeader);
    }
    let mut at = 4;
    if flags & GRE_C != 0 {
        if g.len() < at + 4 {
            return Err(Malformed::Short);
        }
        // The checksum covers the GRE header and payload; a correct one
        // sums to zero.
        if crate::packet::internet_checksum(g) != 0 {
            return Err(Malformed::GreChecksum);
        }
        at += 4;
    }
    let mut key = None;
    if flags & GRE_K != 0 {
        if g.len() < at + 4 {
            return Err(Malformed::Short);
        }
        key = Some(u32::from_be_bytes([g[at], g[at + 1], g[at + 2], g[at + 3]]));
        at += 4;
    }
    if flags & GRE_S != 0 {
        // RFC 2890 lets a receiver deliver out of order; the sequence
        // number is accepted and not enforced.
        if g.len() < at + 4 {
            return Err(Malformed::Short);
        }
        at += 4;
    }
    if g.len() < at + ETHERNET_HEADER_LEN {
        return Err(Malformed::InnerTruncated);
    }
    Ok(GrePacket { src, dst, key, inner: ihl + at })
}

/// A hash of the inner frame's flow (MAC addresses, and for IPv4 the
/// addresses, protocol and ports), the same for every packet of a flow:
/// the outer UDP source port, so ECMP in the underlay spreads flows, not
/// packets.
pub fn flow_hash(frame: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    let mut eat = |b: &[u8]| {
        for &x in b {
            h = (h ^ x as u32).wrapping_mul(0x0100_0193);
        }
    };
    let Some((l3, et)) = crate::wire::l3_start(frame) else {
        eat(frame);
        return h;
    };
    eat(&frame[..12]);
    if et == ethertype::IPV4 && frame.len() >= l3 + 20 {
        let ip = &frame[l3..];
        eat(&ip[9..10]);
        eat(&ip[12..20]);
        let ihl = (ip[0] & 0x0f) as usize * 4;
        let frag = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0;
        if !frag && matches!(ip[9], 6 | 17) && ip.len() >= ihl + 4 {
            eat(&ip[ihl..ihl + 4]);
        }
    }
    h
}

/// The UDP source port for a flow hash: in 49152..=65535, as RFC 7348
/// recommends.
pub fn src_port(hash: u32) -> u16 {
    49152 + (hash % 16384) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip_gre(gre: &[u8]) -> Vec<u8> {
        let total = 20 + gre.len();
        let mut d =
            vec![0x45, 0, (total >> 8) as u8, total as u8, 0, 0, 0x40, 0, 64, 47, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
        d.extend_from_slice(gre);
        d
    }

    #[test]
    fn vxlan_round_trip_and_refusals() {
        let h = vxlan_header(0x12_3456);
        assert_eq!(h, [0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
        let mut pkt = h.to_vec();
        pkt.extend_from_slice(&[0xaa; 14]);
        assert_eq!(parse_vxlan(&pkt), Ok((0x12_3456, 8)));
        assert_eq!(parse_vxlan(&pkt[..7]), Err(Malformed::Short));
        assert_eq!(parse_vxlan(&pkt[..20]), Err(Malformed::InnerTruncated));
        pkt[0] = 0;
        assert_eq!(parse_vxlan(&pkt), Err(Malformed::VxlanFlags));
        // Reserved bits are ignored on receipt.
        pkt[0] = 0x08 | 0x80;
        pkt[1] = 0xff;
        assert_eq!(parse_vxlan(&pkt).map(|r| r.0), Ok(0x12_3456));
    }

    #[test]
    fn gre_round_trip_with_and_without_key() {
        for key in [None, Some(0xdead_beef)] {
            let (h, n) = gre_header(key);
            let mut g = h[..n].to_vec();
            g.extend_from_slice(&[0x55; 60]);
            let p = parse_gre(&ip_gre(&g)).unwrap();
            assert_eq!((p.key, p.inner), (key, 20 + n));
            assert_eq!((p.src, p.dst), (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)));
        }
    }

    #[test]
    fn gre_checksum_sequence_and_bad_headers() {
        // C and S set, with a correct checksum.
        let mut g = vec![GRE_C | GRE_S, 0, 0x65, 0x58, 0, 0, 0, 0, 0, 0, 0, 7];
        g.extend_from_slice(&[0x11; 60]);
        let c = crate::packet::internet_checksum(&g);
        g[4..6].copy_from_slice(&c.to_be_bytes());
        assert_eq!(parse_gre(&ip_gre(&g)).unwrap().inner, 20 + 12);
        g[20] ^= 1;
        assert_eq!(parse_gre(&ip_gre(&g)), Err(Malformed::GreChecksum));
        let ok = |g: &[u8]| parse_gre(&ip_gre(g));
        let mut body = vec![0x22; 60];
        let with = |h: &[u8], body: &mut Vec<u8>| {
            let mut v = h.to_vec();
            v.append(&mut body.clone());
            v
        };
        assert_eq!(ok(&with(&[0x40, 0, 0x65, 0x58], &mut body)), Err(Malformed::GreHeader), "routing bit");
        assert_eq!(ok(&with(&[0, 1, 0x65, 0x58], &mut body)), Err(Malformed::GreHeader), "version 1");
        assert_eq!(ok(&with(&[0, 0, 0x08, 0x00], &mut body)), Err(Malformed::GreHeader), "IPv4, not Ethernet");
        assert_eq!(ok(&[0x20, 0, 0x65, 0x58, 0]), Err(Malformed::Short), "key cut off");
        assert_eq!(ok(&[0, 0, 0x65, 0x58, 1, 2, 3]), Err(Malformed::InnerTruncated));
        body.truncate(0);
        assert_eq!(parse_gre(&[0x45, 0, 0, 20]), Err(Malformed::Short));
    }

    #[test]
    fn flow_hash_follows_the_flow_not_the_packet() {
        let mut a = vec![0u8; 60];
        a[12] = 0x08;
        a[14] = 0x45;
        a[23] = 6;
        a[26..34].copy_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        a[34..38].copy_from_slice(&[0x30, 0x39, 0, 80]);
        let mut b = a.clone();
        b[18] = 0x77; // another IP ID, same flow
        b[50] = 0x99; // other payload
        assert_eq!(flow_hash(&a), flow_hash(&b));
        b[35] = 0x3a; // another source port
        assert_ne!(flow_hash(&a), flow_hash(&b));
        assert!(src_port(flow_hash(&a)) >= 49152);
        assert_eq!(udp_header(50000, 4789, 100), [0xc3, 0x50, 0x12, 0xb5, 0, 108, 0, 0]);
    }
}
