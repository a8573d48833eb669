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
//! | 2 | dl_src 0..48, nw_ttl 48..56 |
//! | 3, 4 | nw_src: IPv6 high and low halves; IPv4 (and ARP spa) in word 4 bits 0..32 |
//! | 5, 6 | nw_dst likewise (ARP tpa) |
//! | 7 | tp_src 0..16, tp_dst 16..32 (ICMP: type and code) |
//! | 8 | tun_id |
//! | 9 | tun_src 0..32, tun_dst 32..64 (IPv4 tunnel endpoints) |

use std::net::IpAddr;

use super::FlowKey;
use crate::wire::ethertype;

/// Number of words in a [`PackedKey`].
pub const WORDS: usize = 10;

/// A packed flow key, or a mask over one.
#[derive(Debug, Clone, Copy, Hash, Default, PartialOrd, Ord)]
pub struct PackedKey(pub [u64; WORDS]);

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

    /// A fast, well-mixed hash of the words (for the exact-match cache).
    #[inline]
    pub fn hash64(&self) -> u64 {
        let mut h: u64 = 0x243f_6a88_85a3_08d3;
        for &w in &self.0 {
            h = (h ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            h ^= h >> 29;
        }
        h
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

fn ip_words(ip: IpAddr) -> (u64, u64) {
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
