//! Rewriting a packet's IP addresses and transport ports in place, with
//! every checksum they are in kept right by incremental update (RFC
//! 1624): the IPv4 header's, the TCP/UDP/ICMPv6 checksum's pseudo-header
//! (or, for a checksum left to offload, the pseudo-header sum it holds),
//! a UDP checksum of zero left as "none". The flow actions that rewrite
//! headers and conntrack's NAT both use it.

use std::net::IpAddr;

use super::be16;
use super::checksum::csum_replace;

const ICMP: u8 = 1;
const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMPV6: u8 = 58;

/// Writes the 16-bit word at `at` and fixes the checksum at `csum`
/// (`None`: there is none; `Some((at, udp))`: a UDP checksum of 0 means
/// "none" and stays 0).
fn put16(d: &mut [u8], at: usize, new: u16, csums: &[Option<(usize, bool)>]) {
    let old = be16(d, at);
    if old == new {
        return;
    }
    for &(c, udp) in csums.iter().flatten() {
        let v = be16(d, c);
        if udp && v == 0 {
            continue;
        }
        let mut n = csum_replace(v, old, new);
        if udp && n == 0 {
            n = 0xffff;
        }
        d[c..c + 2].copy_from_slice(&n.to_be_bytes());
    }
    d[at..at + 2].copy_from_slice(&new.to_be_bytes());
}

fn addr_words(a: IpAddr) -> ([u16; 8], usize) {
    match a {
        IpAddr::V4(v) => {
            let o = v.octets();
            ([u16::from_be_bytes([o[0], o[1]]), u16::from_be_bytes([o[2], o[3]]), 0, 0, 0, 0, 0, 0], 2)
        }
        IpAddr::V6(v) => (v.segments(), 8),
    }
}

/// Where a packet's headers are, for rewriting one IP header and the
/// transport header behind it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout {
    l3: usize,
    l4: usize,
    v6: bool,
    proto: u8,
    /// The transport checksum is the pseudo-header sum only (offload).
    partial: bool,
    /// The transport header is complete enough to hold its checksum.
    pub(crate) l4_csum: Option<(usize, bool)>,
}

impl Layout {
    pub(crate) fn new(d: &[u8], l3: usize, l4: usize, v6: bool, proto: u8, partial: bool) -> Layout {
        let off = match proto {
            TCP => Some((16, false)),
            UDP => Some((6, true)),
            ICMP | ICMPV6 => Some((2, false)),
            _ => None,
        };
        let l4_csum = off.filter(|(o, _)| l4 != 0 && l4 + o + 2 <= d.len()).map(|(o, udp)| (l4 + o, udp));
        Layout { l3, l4, v6, proto, partial, l4_csum }
    }

    /// The checksums an address change touches.
    fn addr_csums(&self) -> [Option<(usize, bool)>; 2] {
        let ip = (!self.v6).then_some((self.l3 + 10, false));
        // ICMPv4 has no pseudo-header; a partial checksum is fixed apart.
        let l4 = if self.proto == ICMP || self.partial { None } else { self.l4_csum };
        [ip, l4]
    }

    pub(crate) fn set_addr(&self, d: &mut [u8], src: bool, a: IpAddr) {
        let (words, n) = addr_words(a);
        let base = if self.v6 { self.l3 + if src { 8 } else { 24 } } else { self.l3 + if src { 12 } else { 16 } };
        if base + 2 * n > d.len() || a.is_ipv6() != self.v6 {
            return;
        }
        for (i, &w) in words[..n].iter().enumerate() {
            let at = base + 2 * i;
            if self.partial
                && let Some((c, _)) = self.l4_csum
            {
                // The field holds the uncomplemented pseudo-header sum.
                let (old, v) = (be16(d, at), be16(d, c));
                d[c..c + 2].copy_from_slice(&(!csum_replace(!v, old, w)).to_be_bytes());
            }
            put16(d, at, w, &self.addr_csums());
        }
    }

    pub(crate) fn set_port(&self, d: &mut [u8], src: bool, p: u16, echo: bool) {
        let at = match self.proto {
            TCP | UDP if src => self.l4,
            TCP | UDP => self.l4 + 2,
            // Only an echo's identifier: other ICMP messages have other
            // data there.
            ICMP | ICMPV6 if src && echo => self.l4 + 4,
            _ => return,
        };
        if self.l4 == 0 || at + 2 > d.len() {
            return;
        }
        let csum = if self.partial { None } else { self.l4_csum };
        put16(d, at, p, &[csum]);
    }
}
