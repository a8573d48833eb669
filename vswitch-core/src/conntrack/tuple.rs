//! Connection tuples, and what the tracker reads from a packet.
//!
//! A [`Key`] is one direction of a connection as five words: source and
//! destination address (IPv4 in the low half of the second word of each),
//! then ports, protocol, zone and family. Both directions of every
//! connection are in the table under their own key; the reply key of a
//! NATed connection is the translated one, so a packet of either
//! direction finds its connection with one probe.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

use crate::flow::{Headers, ip_words};
use crate::wire::{be16, ethertype};

/// Words in a [`Key`].
pub(crate) const KEY_WORDS: usize = 5;

/// One direction of a connection (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub(crate) struct Key(pub [u64; KEY_WORDS]);

/// `dport` of an ICMP echo's key (other ICMP keys have 0): echoes carry an
/// identifier NAT may change, other messages nothing of the kind.
pub(crate) const ECHO: u16 = 1;

/// ICMP and ICMPv6 protocol numbers.
pub(crate) const ICMP: u8 = 1;
pub(crate) const ICMPV6: u8 = 58;
pub(crate) const TCP: u8 = 6;
pub(crate) const UDP: u8 = 17;

impl Key {
    /// A key from its parts.
    pub(crate) fn new(src: IpAddr, dst: IpAddr, proto: u8, sport: u16, dport: u16, zone: u16) -> Key {
        let (s0, s1) = ip_words(src);
        let (d0, d1) = ip_words(dst);
        let v6 = matches!(src, IpAddr::V6(_)) as u64;
        Key([
            s0,
            s1,
            d0,
            d1,
            sport as u64 | (dport as u64) << 16 | (proto as u64) << 32 | (zone as u64) << 40 | v6 << 56,
        ])
    }

    /// True for an IPv6 connection.
    #[inline]
    pub(crate) fn is_v6(&self) -> bool {
        self.0[4] >> 56 & 1 == 1
    }

    fn addr(&self, hi: u64, lo: u64) -> IpAddr {
        if self.is_v6() {
            IpAddr::V6(Ipv6Addr::from((hi as u128) << 64 | lo as u128))
        } else {
            IpAddr::V4(Ipv4Addr::from(lo as u32))
        }
    }

    /// The source address.
    pub(crate) fn src(&self) -> IpAddr {
        self.addr(self.0[0], self.0[1])
    }

    /// The destination address.
    pub(crate) fn dst(&self) -> IpAddr {
        self.addr(self.0[2], self.0[3])
    }

    /// The source port (ICMP: the echo identifier).
    #[inline]
    pub(crate) fn sport(&self) -> u16 {
        self.0[4] as u16
    }

    /// The destination port (ICMP: [`ECHO`] for an echo, otherwise 0).
    #[inline]
    pub(crate) fn dport(&self) -> u16 {
        (self.0[4] >> 16) as u16
    }

    /// The IP protocol.
    #[inline]
    pub(crate) fn proto(&self) -> u8 {
        (self.0[4] >> 32) as u8
    }

    /// The zone.
    #[cfg(test)]
    pub(crate) fn zone(&self) -> u16 {
        (self.0[4] >> 40) as u16
    }

    /// The key with `other`'s zone.
    pub(crate) fn with_zone_of(mut self, other: &Key) -> Key {
        self.0[4] = (self.0[4] & !(0xffff << 40)) | (other.0[4] & (0xffff << 40));
        self
    }

    /// The key of the other direction: addresses and ports swapped (an
    /// ICMP echo's identifier stays where it is: both directions carry it).
    #[inline]
    pub(crate) fn reversed(&self) -> Key {
        let w = &self.0;
        let ports = if self.is_icmp() { w[4] & 0xffff_ffff } else { (w[4] & 0xffff) << 16 | (w[4] >> 16) & 0xffff };
        Key([w[2], w[3], w[0], w[1], (w[4] & !0xffff_ffff) | ports])
    }

    /// True for ICMP and ICMPv6 keys.
    #[inline]
    pub(crate) fn is_icmp(&self) -> bool {
        matches!(self.proto(), ICMP | ICMPV6)
    }

    /// True for an ICMP(v6) echo's key (its identifier is `sport`, and
    /// `dport` is [`ECHO`]).
    #[inline]
    pub(crate) fn is_echo(&self) -> bool {
        self.is_icmp() && self.dport() == ECHO
    }

    /// The key with a new source address and port.
    pub(crate) fn with_src(&self, src: IpAddr, sport: u16) -> Key {
        let (a, b) = ip_words(src);
        Key([a, b, self.0[2], self.0[3], (self.0[4] & !0xffff) | sport as u64])
    }

    /// The key with a new destination address and port.
    pub(crate) fn with_dst(&self, dst: IpAddr, dport: u16) -> Key {
        let (a, b) = ip_words(dst);
        Key([self.0[0], self.0[1], a, b, (self.0[4] & !0xffff_0000) | (dport as u64) << 16])
    }

    /// The public description.
    pub(crate) fn tuple(&self) -> Tuple {
        let dport = if self.is_icmp() { 0 } else { self.dport() };
        Tuple { src: self.src(), dst: self.dst(), proto: self.proto(), sport: self.sport(), dport }
    }
}

/// One direction of a connection, as `dump-conntrack` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Tuple {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol number.
    pub proto: u8,
    /// Source port (ICMP: the echo identifier).
    pub sport: u16,
    /// Destination port (ICMP: 0).
    pub dport: u16,
}

/// What TCP tracking reads from a segment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Segment {
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    pub win: u16,
    /// Payload bytes.
    pub len: u32,
    /// The window scale option (SYN segments).
    pub wscale: Option<u8>,
}

/// TCP flag bits.
pub(crate) mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// What kind of packet it is, for the tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Tcp(Segment),
    Udp,
    /// An ICMP(v6) echo request (`true`) or reply.
    Echo(bool),
    /// An ICMP(v6) error about the packet whose header it quotes: the
    /// quoted packet's key, and where its IP header starts in the frame.
    Error {
        quoted: Key,
        at: usize,
    },
    /// Another IP protocol (tracked by addresses only) or an ICMP type
    /// that is neither an echo nor an error.
    Other,
}

/// A fragment's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Frag {
    /// The IP identification.
    pub id: u32,
    /// The first fragment (it carries the transport header).
    pub first: bool,
}

/// A packet as the tracker sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PacketInfo {
    /// Its key, as on the wire (in the zone it is tracked in).
    pub key: Key,
    pub kind: Kind,
    /// Set for a fragment.
    pub frag: Option<Frag>,
}

impl PacketInfo {
    /// The key fragments of one datagram share: addresses, protocol, zone
    /// and the IP identification in place of the ports.
    pub(crate) fn frag_key(&self) -> Option<Key> {
        let f = self.frag?;
        Some(
            Key::new(self.key.src(), self.key.dst(), self.key.proto(), f.id as u16, (f.id >> 16) as u16, 0)
                .with_zone_of(&self.key),
        )
    }
}

/// Why a packet cannot be tracked (`+inv`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Untrackable {
    /// Not IPv4 or IPv6.
    NotIp,
    /// Headers cut short or inconsistent.
    Malformed,
}

pub(crate) type IpHeader = (IpAddr, IpAddr, u8, usize, usize, Option<Frag>);

/// Reads the IP addresses and protocol at `l3`, the transport offset and
/// where the packet ends, and whether it is a fragment.
#[inline]
pub(crate) fn ip_header(d: &[u8], l3: usize, dl_type: u16) -> Result<IpHeader, Untrackable> {
    match dl_type {
        ethertype::IPV4 => {
            let ip = d.get(l3..l3 + 20).ok_or(Untrackable::Malformed)?;
            let ihl = (ip[0] & 0xf) as usize * 4;
            if ip[0] >> 4 != 4 || ihl < 20 {
                return Err(Untrackable::Malformed);
            }
            let total = be16(ip, 2) as usize;
            let fo = be16(ip, 6);
            let frag = (fo & 0x3fff != 0).then_some(Frag { id: be16(ip, 4) as u32, first: fo & 0x1fff == 0 });
            let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
            let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
            // A GSO super-frame may carry 0 as its total length.
            let end = if total == 0 { d.len() } else { (l3 + total).min(d.len()) };
            Ok((src.into(), dst.into(), ip[9], l3 + ihl, end, frag))
        }
        ethertype::IPV6 => {
            let ip = d.get(l3..l3 + 40).ok_or(Untrackable::Malformed)?;
            let mut a = [0u8; 16];
            a.copy_from_slice(&ip[8..24]);
            let src = Ipv6Addr::from(a);
            a.copy_from_slice(&ip[24..40]);
            let dst = Ipv6Addr::from(a);
            let payload = be16(ip, 4) as usize;
            let end = if payload == 0 { d.len() } else { (l3 + 40 + payload).min(d.len()) };
            // Walk the extension headers to the transport header.
            let (mut next, mut at, mut frag) = (ip[6], l3 + 40, None);
            for _ in 0..8 {
                match next {
                    0 | 43 | 60 => {
                        let h = d.get(at..at + 2).ok_or(Untrackable::Malformed)?;
                        next = h[0];
                        at += (h[1] as usize + 1) * 8;
                    }
                    44 => {
                        let h = d.get(at..at + 8).ok_or(Untrackable::Malformed)?;
                        next = h[0];
                        let fo = be16(h, 2);
                        if fo & 0xfff9 != 0 {
                            let id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                            frag = Some(Frag { id, first: fo & 0xfff8 == 0 });
                        }
                        at += 8;
                    }
                    _ => break,
                }
            }
            Ok((src.into(), dst.into(), next, at, end, frag))
        }
        _ => Err(Untrackable::NotIp),
    }
}

/// The ports (or echo identifier) and kind of the transport header at `l4`.
#[inline]
fn transport(d: &[u8], proto: u8, l4: usize, end: usize, v6: bool) -> Result<(u16, u16, Kind), Untrackable> {
    let need = |n: usize| d.get(l4..l4 + n).filter(|_| l4 + n <= end).ok_or(Untrackable::Malformed);
    match proto {
        TCP => {
            let t = need(20)?;
            let doff = (t[12] >> 4) as usize * 4;
            if doff < 20 || l4 + doff > end {
                return Err(Untrackable::Malformed);
            }
            let flags = t[13];
            let mut wscale = None;
            if flags & flags::SYN != 0 {
                let opts = &d[l4 + 20..l4 + doff];
                let mut i = 0;
                while i < opts.len() {
                    match opts[i] {
                        0 => break,
                        1 => i += 1,
                        k => {
                            let Some(&len) = opts.get(i + 1) else { break };
                            if len < 2 || i + len as usize > opts.len() {
                                break;
                            }
                            if k == 3 && len == 3 {
                                wscale = Some(opts[i + 2].min(14));
                            }
                            i += len as usize;
                        }
                    }
                }
            }
            let seg = Segment {
                flags,
                seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
                ack: u32::from_be_bytes([t[8], t[9], t[10], t[11]]),
                win: be16(t, 14),
                len: (end - l4 - doff) as u32,
                wscale,
            };
            Ok((be16(t, 0), be16(t, 2), Kind::Tcp(seg)))
        }
        UDP | 132 => {
            let t = need(8)?;
            Ok((be16(t, 0), be16(t, 2), Kind::Udp))
        }
        ICMP | ICMPV6 if (proto == ICMPV6) == v6 => {
            let t = need(8)?;
            let (echo_req, echo_rep) = if v6 { (128, 129) } else { (8, 0) };
            let error = if v6 { matches!(t[0], 1..=4) } else { matches!(t[0], 3 | 4 | 5 | 11 | 12) };
            if t[0] == echo_req || t[0] == echo_rep {
                Ok((be16(t, 4), ECHO, Kind::Echo(t[0] == echo_req)))
            } else if error {
                Ok((0, 0, Kind::Error { quoted: Key::default(), at: l4 + 8 }))
            } else {
                Ok((0, 0, Kind::Other))
            }
        }
        _ => Ok((0, 0, Kind::Other)),
    }
}

impl PacketInfo {
    /// Reads a packet whose headers the flow parser found at `h`.
    #[inline]
    pub(crate) fn parse(d: &[u8], h: &Headers, zone: u16) -> Result<PacketInfo, Untrackable> {
        let (src, dst, proto, l4, end, frag) = ip_header(d, h.l3, h.dl_type)?;
        if frag.is_some_and(|f| !f.first) {
            // No transport header: the datagram's first fragment decides.
            return Ok(PacketInfo { key: Key::new(src, dst, proto, 0, 0, zone), kind: Kind::Other, frag });
        }
        let v6 = h.dl_type == ethertype::IPV6;
        let (sport, dport, mut kind) = transport(d, proto, l4, end, v6)?;
        if let Kind::Error { at, .. } = kind {
            // The quoted header: as much of it as identifies the packet.
            let (qs, qd, qp, ql4, _, qfrag) = ip_header(d, at, h.dl_type)?;
            if qfrag.is_some_and(|f| !f.first) {
                return Err(Untrackable::Malformed);
            }
            let ports = d.get(ql4..ql4 + 8).ok_or(Untrackable::Malformed)?;
            let (qsp, qdp) = match qp {
                TCP | UDP | 132 => (be16(ports, 0), be16(ports, 2)),
                ICMP | ICMPV6 if matches!(ports[0], 0 | 8 | 128 | 129) => (be16(ports, 4), ECHO),
                _ => (0, 0),
            };
            kind = Kind::Error { quoted: Key::new(qs, qd, qp, qsp, qdp, zone), at };
        }
        Ok(PacketInfo { key: Key::new(src, dst, proto, sport, dport, zone), kind, frag })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_reverse_and_keep_their_parts() {
        let k = Key::new("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap(), TCP, 1000, 80, 7);
        let r = k.reversed();
        assert_eq!(r.src(), k.dst());
        assert_eq!((r.sport(), r.dport(), r.proto(), r.zone()), (80, 1000, TCP, 7));
        assert_eq!(r.reversed(), k);
        let v6 = Key::new("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap(), UDP, 1, 2, 0);
        assert!(v6.is_v6() && !k.is_v6());
        assert_eq!(v6.dst().to_string(), "fd00::2");
        let n = k.with_src("1.2.3.4".parse().unwrap(), 5555);
        assert_eq!((n.src().to_string().as_str(), n.sport(), n.dport()), ("1.2.3.4", 5555, 80));
    }
}
