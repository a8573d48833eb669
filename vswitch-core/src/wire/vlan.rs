//! IEEE 802.1Q tags (and 802.1ad S-tags, which have the same layout).
//!
//! A tag sits between the source MAC and the EtherType: a 16-bit TPID
//! (0x8100 or 0x88a8) that takes the EtherType's place, then the 16-bit tag
//! control information (PCP:3, DEI:1, VID:12), then the encapsulated
//! EtherType.

use super::be16;

/// Tag control information: priority code point, drop eligible, VLAN ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct VlanTci(pub u16);

impl VlanTci {
    /// Builds a TCI from its parts; `vid` is masked to 12 bits, `pcp` to 3.
    pub fn new(vid: u16, pcp: u8) -> Self {
        VlanTci(((pcp as u16 & 7) << 13) | (vid & 0x0fff))
    }
    /// The 12-bit VLAN identifier (0 means priority-tagged only).
    pub fn vid(self) -> u16 {
        self.0 & 0x0fff
    }
    /// The 3-bit priority code point.
    pub fn pcp(self) -> u8 {
        (self.0 >> 13) as u8
    }
    /// The drop eligible indicator (formerly CFI).
    pub fn dei(self) -> bool {
        self.0 & 0x1000 != 0
    }
}

/// One tag of a frame: its TPID and TCI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag {
    /// 0x8100 (802.1Q) or 0x88a8 (802.1ad).
    pub tpid: u16,
    /// The tag control information.
    pub tci: VlanTci,
}

/// The tags at the front of an Ethernet frame, as [`walk`] found them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tags {
    /// The outer tag and, for a double-tagged frame, the inner one.
    pub tags: [Option<Tag>; MAX_TAGS],
    /// The EtherType after the tags (a TPID if a tag was cut short, or if
    /// the frame carries more than [`MAX_TAGS`] tags).
    pub ethertype: u16,
    /// Where the bytes after that EtherType start: the network header.
    pub l3: usize,
    /// A tag was cut short by the end of the frame.
    pub cut: bool,
}

impl Tags {
    /// The outer tag, if any.
    #[inline]
    pub fn outer(&self) -> Option<Tag> {
        self.tags[0]
    }
}

/// How many tags the walk reads (an 802.1ad S-tag over an 802.1Q C-tag, or
/// two C-tags), as Open vSwitch's flow extraction does.
pub const MAX_TAGS: usize = 2;

/// True for the TPIDs that start a tag.
#[inline]
pub fn is_tpid(ethertype: u16) -> bool {
    ethertype == super::ethertype::VLAN || ethertype == super::ethertype::QINQ
}

/// Walks the tags of an Ethernet frame: the one place the switch reads
/// them (flow keys, NORMAL switching, tag push/pop, segmentation and
/// checksums, tunnel hashing all go through it). `None` for a frame
/// shorter than an Ethernet header.
#[inline]
pub fn walk(frame: &[u8]) -> Option<Tags> {
    let mut off = super::ETHERTYPE_OFFSET;
    if frame.len() < off + 2 {
        return None;
    }
    let mut t = Tags { tags: [None; MAX_TAGS], ethertype: be16(frame, off), l3: off + 2, cut: false };
    for slot in &mut t.tags {
        if !is_tpid(t.ethertype) {
            break;
        }
        if frame.len() < off + 2 + VLAN_TAG_LEN {
            t.cut = true;
            break;
        }
        *slot = Some(Tag { tpid: t.ethertype, tci: VlanTci(be16(frame, off + 2)) });
        off += VLAN_TAG_LEN;
        t.ethertype = be16(frame, off);
        t.l3 = off + 2;
    }
    Some(t)
}

/// Length of a whole tag, TPID included.
pub const VLAN_TAG_LEN: usize = 4;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_reads_two_tags_and_notices_a_cut_one() {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x88, 0xa8, 0x00, 0x0a, 0x81, 0x00, 0x20, 0x14, 0x08, 0x00, 0x45]);
        let t = walk(&f).unwrap();
        assert_eq!(t.outer(), Some(Tag { tpid: 0x88a8, tci: VlanTci(10) }));
        assert_eq!(t.tags[1], Some(Tag { tpid: 0x8100, tci: VlanTci(0x2014) }));
        assert_eq!((t.ethertype, t.l3, t.cut), (0x0800, 22, false));
        let t = walk(&f[..19]).unwrap();
        assert_eq!((t.tags[1], t.ethertype, t.l3, t.cut), (None, 0x8100, 18, true));
        assert_eq!(walk(&f[..14]).unwrap().ethertype, 0x88a8);
        assert!(walk(&f[..13]).is_none());
        let untagged = [0u8; 14];
        assert_eq!(walk(&untagged).unwrap(), Tags { tags: [None; 2], ethertype: 0, l3: 14, cut: false });
    }

    #[test]
    fn tci_masks_fields() {
        let t = VlanTci::new(0xffff, 0xff);
        assert_eq!(t.vid(), 0x0fff);
        assert_eq!(t.pcp(), 7);
    }
}
