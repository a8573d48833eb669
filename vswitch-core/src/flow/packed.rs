//! The classifier's view of a [`FlowKey`]: every matchable field packed
//! into a fixed array of words, so a mask has the same shape and masking,
//! hashing and comparing are a few word operations.
//!
//! Layout (bit ranges within each word):
//!
//! | word | contents |
//! |---|---|
//! | 0 | in_port 0..32, dl_type 32..48, vlan_tci 48..64 (0x1000 = tag present) |
//! | 1 | dl_dst 0..48, nw_proto 48..56 (ARP: opcode), nw_tos 56..64 |
//! | 2 | dl_src 0..48, nw_ttl 48..56, ct_nw_proto 56..64 |
//! | 3, 4 | nw_src: IPv6 high and low halves; IPv4 (and ARP spa) in word 4 bits 0..32 |
//! | 5, 6 | nw_dst likewise (ARP tpa) |
//! | 7 | tp_src 0..16, tp_dst 16..32 (ICMP: type and code) |
//! | 8 | tun_id |
//! | 9 | tun_src 0..32, tun_dst 32..64 (IPv4 tunnel endpoints) |
//! | 10 | metadata |
//! | 11 | pkt_mark 0..32, the table being searched 32..40, ct_state 40..48, ct_zone 48..64 |
//! | 12..20 | xreg0..xreg7: word 12 + N is xregN, reg(2N) in bits 32..64 and reg(2N+1) in 0..32 |
//! | 20 | ct_mark 0..32, ct_tp_src 32..48, ct_tp_dst 48..64 |
//! | 21, 22 | ct_nw_src / ct_ipv6_src (IPv4 in word 22 bits 0..32) |
//! | 23, 24 | ct_nw_dst / ct_ipv6_dst likewise |
//! | 25, 26 | ct_label: high and low halves |
//!
//! Words 10 and up are the packet's metadata: zero when it is received,
//! written by actions (and `ct`) as it moves through the tables. So is
//! `ct_nw_proto`, kept in a header word's spare bits.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::key::{KeySink, parse_ethernet};
use super::{FlowKey, FragKind, Layer};
use crate::port::PortNo;
use crate::wire::{VlanTci, ethertype};

/// Number of words in a [`PackedKey`].
pub const WORDS: usize = 27;

/// The word holding `metadata`.
pub const METADATA_WORD: usize = 10;
/// The word holding `pkt_mark` and the table number.
pub const MARK_WORD: usize = 11;
/// Where the table number sits in [`MARK_WORD`].
pub const TABLE_SHIFT: u32 = 32;
/// The first register word (xreg0).
pub const REG_WORD: usize = 12;
/// Where `ct_state` sits in [`MARK_WORD`].
pub const CT_STATE_SHIFT: u32 = 40;
/// Where `ct_zone` sits in [`MARK_WORD`].
pub const CT_ZONE_SHIFT: u32 = 48;
/// The word holding `ct_mark`, `ct_tp_src` and `ct_tp_dst`.
pub const CT_WORD: usize = 20;
/// The first of the two words of `ct_nw_src`/`ct_ipv6_src`.
pub const CT_SRC_WORD: usize = 21;
/// The first of the two words of `ct_nw_dst`/`ct_ipv6_dst`.
pub const CT_DST_WORD: usize = 23;
/// The high word of `ct_label`.
pub const CT_LABEL_WORD: usize = 25;
/// Where `ct_nw_proto` sits in word 2.
pub const CT_PROTO_SHIFT: u32 = 56;

/// A packed flow key, or a mask over one.
#[derive(Debug, Clone, Copy, Default, PartialOrd, Ord)]
pub struct PackedKey(pub [u64; WORDS]);

impl std::hash::Hash for PackedKey {
    /// Word by word (a seeded map's hasher takes words much faster than
    /// the same 160 bytes as a slice).
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        for &w in &self.0 {
            state.write_u64(w);
        }
    }
}

impl PartialEq for PackedKey {
    /// Word-wise and branch-free (the derived comparison calls `memcmp`,
    /// which costs more than the ten words do inline).
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        let mut diff = 0u64;
        for i in 0..WORDS {
            diff |= self.0[i] ^ other.0[i];
        }
        diff == 0
    }
}

impl Eq for PackedKey {}

/// The VLAN "tag present" bit in `vlan_tci` (OpenFlow's use of the CFI bit).
pub const VLAN_PRESENT: u16 = 0x1000;

impl PackedKey {
    /// All bits set: an exact-match mask.
    pub const EXACT: PackedKey = PackedKey([u64::MAX; WORDS]);

    /// `self & mask`.
    #[inline]
    pub fn masked(&self, mask: &PackedKey) -> PackedKey {
        let mut out = [0u64; WORDS];
        for (i, o) in out.iter_mut().enumerate() {
            *o = self.0[i] & mask.0[i];
        }
        PackedKey(out)
    }

    /// True if every bit set in `self` is set in `other`.
    pub fn is_subset_of(&self, other: &PackedKey) -> bool {
        self.0.iter().zip(other.0.iter()).all(|(a, b)| a & !b == 0)
    }

    /// A fast hash of the words (for the exact-match cache, which
    /// compares whole keys, so it need only spread keys well): the words
    /// mixed in two independent lanes, the metadata words only when any is
    /// set.
    #[inline]
    pub fn hash64(&self) -> u64 {
        const K: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut lanes = [0x243f_6a88_85a3_08d3u64, 0x1319_8a2e_0370_7344];
        for (i, &w) in self.0[..METADATA_WORD].iter().enumerate() {
            let l = &mut lanes[i % 2];
            *l = (*l ^ w).wrapping_mul(K);
            *l ^= *l >> 29;
        }
        // Metadata words are mixed as the header words are, but only when
        // there are any (a packet's first lookup has none).
        if self.0[METADATA_WORD..].iter().fold(0, |a, &w| a | w) != 0 {
            for (i, &w) in self.0[METADATA_WORD..].iter().enumerate() {
                let l = &mut lanes[i % 2];
                *l = (*l ^ w).wrapping_mul(K);
                *l ^= *l >> 29;
            }
        }
        let mut h = lanes[0] ^ lanes[1].rotate_left(31);
        h = h.wrapping_mul(K);
        h ^ (h >> 32)
    }

    /// The table this key is being looked up in.
    #[inline]
    pub fn table(&self) -> u8 {
        (self.0[MARK_WORD] >> TABLE_SHIFT) as u8
    }

    /// Sets the table this key is looked up in.
    #[inline]
    pub fn set_table(&mut self, table: u8) {
        self.set(MARK_WORD, TABLE_SHIFT, 8, table as u64);
    }

    /// Reads `bits` bits at `shift` of word `word`.
    #[inline]
    pub fn get(&self, word: usize, shift: u32, bits: u32) -> u64 {
        (self.0[word] >> shift) & ones(bits)
    }

    /// Writes `bits` bits at `shift` of word `word`.
    #[inline]
    pub fn set(&mut self, word: usize, shift: u32, bits: u32, v: u64) {
        let m = ones(bits) << shift;
        self.0[word] = (self.0[word] & !m) | ((v << shift) & m);
    }
}

#[inline]
pub(crate) fn ones(bits: u32) -> u64 {
    if bits >= 64 { u64::MAX } else { (1u64 << bits) - 1 }
}

/// An address as two key words: IPv6 high and low halves; IPv4 in the
/// low half of the second.
pub(crate) fn ip_words(ip: IpAddr) -> (u64, u64) {
    match ip {
        IpAddr::V4(a) => (0, u32::from(a) as u64),
        IpAddr::V6(a) => {
            let v = u128::from(a);
            ((v >> 64) as u64, v as u64)
        }
    }
}

impl FlowKey {
    /// The key in the classifier's packed form.
    pub fn pack(&self) -> PackedKey {
        let mut w = [0u64; WORDS];
        let tci = self.vlan_tci.map_or(0, |t| (t.0 & !VLAN_PRESENT) | VLAN_PRESENT);
        w[0] = self.in_port as u64 | (self.dl_type as u64) << 32 | (tci as u64) << 48;
        let (mut proto, mut src, mut dst) = (self.nw_proto, self.nw_src, self.nw_dst);
        if self.dl_type == ethertype::ARP {
            proto = self.arp_op as u8;
            src = IpAddr::V4(self.arp_spa);
            dst = IpAddr::V4(self.arp_tpa);
        }
        w[1] = self.dl_dst.to_u64() | (proto as u64) << 48 | (self.nw_tos as u64) << 56;
        w[2] = self.dl_src.to_u64() | (self.nw_ttl as u64) << 48;
        (w[3], w[4]) = ip_words(src);
        (w[5], w[6]) = ip_words(dst);
        let (a, b) = match self.nw_proto {
            1 | 58 => (self.icmp_type as u64, self.icmp_code as u64),
            _ => (self.tp_src as u64, self.tp_dst as u64),
        };
        w[7] = a | b << 16;
        w[8] = self.tunnel.tun_id;
        let v4 = |ip: IpAddr| match ip {
            IpAddr::V4(a) => u32::from(a) as u64,
            IpAddr::V6(_) => 0,
        };
        w[9] = v4(self.tunnel.tun_src) | v4(self.tunnel.tun_dst) << 32;
        PackedKey(w)
    }
}

impl PackedKey {
    /// Puts a received packet's tunnel metadata into the key.
    #[inline]
    pub(crate) fn set_tunnel(&mut self, t: &crate::packet::TunnelMeta) {
        self.0[8] = t.id;
        self.0[9] = u32::from(t.src) as u64 | (u32::from(t.dst) as u64) << 32;
    }
}

/// Where a packet's headers are, as the parser found them: what the
/// actions that rewrite headers work from.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Headers {
    pub dl_type: u16,
    pub l3: usize,
    /// Offset of the transport header, 0 if there is none to rewrite.
    pub l4: usize,
    pub nw_proto: u8,
    /// The TCP/UDP checksum field holds only the pseudo-header sum (a
    /// kernel port's checksum offload); the rest is computed later.
    pub partial_csum: bool,
}

/// A frame parsed straight into the classifier's packed key, with the
/// header offsets its actions need: what the datapath's flow path uses
/// instead of building a whole [`FlowKey`] and packing it. Always equal to
/// `FlowKey::extract(..).pack()` (a property test holds it to that).
#[derive(Debug, Clone, Copy, Default)]
pub struct PackedParse {
    /// The packed key.
    pub key: PackedKey,
    pub(crate) headers: Headers,
    /// How far parsing got.
    pub parsed: Layer,
}

#[inline]
fn mac48(b: &[u8]) -> u64 {
    u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
}

impl PackedParse {
    /// Parses `frame`, received on `in_port`.
    #[inline]
    pub fn extract(frame: &[u8], in_port: PortNo) -> PackedParse {
        let mut p = PackedParse::default();
        p.parse(frame, in_port);
        p
    }

    /// Parses `frame` into `self`, overwriting it (the datapath parses a
    /// burst into preallocated scratch instead of copying results around).
    #[inline]
    pub fn parse(&mut self, frame: &[u8], in_port: PortNo) {
        *self = PackedParse::default();
        self.key.0[0] = in_port as u64;
        parse_ethernet(self, frame);
    }
}

impl KeySink for PackedParse {
    #[inline]
    fn ethernet(&mut self, dst: &[u8], src: &[u8]) {
        self.key.0[1] |= mac48(dst);
        self.key.0[2] |= mac48(src);
    }
    #[inline]
    fn vlan(&mut self, depth: usize, _tpid: u16, tci: VlanTci) {
        if depth == 0 {
            let t = (tci.0 & !VLAN_PRESENT) | VLAN_PRESENT;
            self.key.0[0] |= (t as u64) << 48;
        }
    }
    #[inline]
    fn dl_type(&mut self, et: u16) {
        self.key.0[0] |= (et as u64) << 32;
        self.headers.dl_type = et;
    }
    #[inline]
    fn ipv4(&mut self, src: Ipv4Addr, dst: Ipv4Addr, proto: u8, tos: u8, ttl: u8, l3: usize) {
        self.key.0[1] |= (proto as u64) << 48 | (tos as u64) << 56;
        self.key.0[2] |= (ttl as u64) << 48;
        self.key.0[4] = u32::from(src) as u64;
        self.key.0[6] = u32::from(dst) as u64;
        self.headers.nw_proto = proto;
        self.headers.l3 = l3;
    }
    #[inline]
    fn ipv6(&mut self, src: Ipv6Addr, dst: Ipv6Addr, tos: u8, ttl: u8, l3: usize) {
        self.key.0[1] |= (tos as u64) << 56;
        self.key.0[2] |= (ttl as u64) << 48;
        let (s, d) = (u128::from(src), u128::from(dst));
        (self.key.0[3], self.key.0[4]) = ((s >> 64) as u64, s as u64);
        (self.key.0[5], self.key.0[6]) = ((d >> 64) as u64, d as u64);
        self.headers.l3 = l3;
    }
    #[inline]
    fn nw_proto(&mut self, proto: u8) {
        self.key.set(1, 48, 8, proto as u64);
        self.headers.nw_proto = proto;
    }
    #[inline]
    fn frag(&mut self, _frag: FragKind) {}
    #[inline]
    fn ports(&mut self, src: u16, dst: u16, l4: usize) {
        self.key.0[7] = src as u64 | (dst as u64) << 16;
        self.headers.l4 = l4;
    }
    #[inline]
    fn icmp(&mut self, ty: u8, code: u8, l4: usize) {
        self.key.0[7] = ty as u64 | (code as u64) << 16;
        self.headers.l4 = l4;
    }
    #[inline]
    fn arp(&mut self, op: u16, spa: Ipv4Addr, tpa: Ipv4Addr, _sha: &[u8], _tha: &[u8], l3: usize) {
        self.key.set(1, 48, 8, op as u8 as u64);
        self.key.0[4] = u32::from(spa) as u64;
        self.key.0[6] = u32::from(tpa) as u64;
        self.headers.l3 = l3;
    }
    #[inline]
    fn layer(&mut self, layer: Layer) {
        self.parsed = layer;
    }
    #[inline]
    fn truncated(&mut self) {}
}
