//! IEEE 802.1Q tags (and 802.1ad S-tags, which have the same layout).
//!
//! A tag sits between the source MAC and the EtherType: a 16-bit TPID
//! (0x8100 or 0x88a8) that takes the EtherType's place, then the 16-bit tag
//! control information (PCP:3, DEI:1, VID:12), then the encapsulated
//! EtherType. [`VlanHeader`] views the four bytes *after* the TPID.

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

mod field {
    use std::ops::Range;
    pub const TCI: Range<usize> = 0..2;
    pub const ETHERTYPE: Range<usize> = 2..4;
}

/// A zero-copy view of the four bytes following a VLAN TPID.
#[derive(Debug, Clone, Copy)]
pub struct VlanHeader<T: AsRef<[u8]>> {
    buffer: T,
}

/// Length of the part of a tag after the TPID.
pub const VLAN_HEADER_LEN: usize = 4;
/// Length of a whole tag, TPID included.
pub const VLAN_TAG_LEN: usize = 4;

impl<T: AsRef<[u8]>> VlanHeader<T> {
    /// Wraps a buffer without checking its length.
    pub const fn new_unchecked(buffer: T) -> Self {
        VlanHeader { buffer }
    }

    /// Wraps a buffer, checking that it holds a whole header.
    pub fn new_checked(buffer: T) -> Result<Self, smoltcp::wire::Error> {
        let h = Self::new_unchecked(buffer);
        h.check_len()?;
        Ok(h)
    }

    /// Ensures no accessor will panic.
    pub fn check_len(&self) -> Result<(), smoltcp::wire::Error> {
        if self.buffer.as_ref().len() < VLAN_HEADER_LEN { Err(smoltcp::wire::Error) } else { Ok(()) }
    }

    /// The tag control information.
    pub fn tci(&self) -> VlanTci {
        VlanTci(be16(self.buffer.as_ref(), field::TCI.start))
    }

    /// The EtherType of what the tag encapsulates (possibly another TPID).
    pub fn ethertype(&self) -> u16 {
        be16(self.buffer.as_ref(), field::ETHERTYPE.start)
    }

    /// The bytes after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[VLAN_HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VlanHeader<T> {
    /// Sets the tag control information.
    pub fn set_tci(&mut self, tci: VlanTci) {
        self.buffer.as_mut()[field::TCI].copy_from_slice(&tci.0.to_be_bytes());
    }
    /// Sets the encapsulated EtherType.
    pub fn set_ethertype(&mut self, et: u16) {
        self.buffer.as_mut()[field::ETHERTYPE].copy_from_slice(&et.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 802.1Q tag: PCP 5, DEI 0, VID 100, inner IPv4.
    const TAG: [u8; 4] = [0xa0, 0x64, 0x08, 0x00];

    #[test]
    fn parse_fixture() {
        let h = VlanHeader::new_checked(&TAG[..]).unwrap();
        assert_eq!(h.tci().vid(), 100);
        assert_eq!(h.tci().pcp(), 5);
        assert!(!h.tci().dei());
        assert_eq!(h.ethertype(), 0x0800);
    }

    #[test]
    fn emit_fixture() {
        let mut buf = [0u8; 4];
        let mut h = VlanHeader::new_unchecked(&mut buf[..]);
        h.set_tci(VlanTci::new(100, 5));
        h.set_ethertype(0x0800);
        assert_eq!(buf, TAG);
    }

    #[test]
    fn truncated_rejected() {
        for n in 0..VLAN_HEADER_LEN {
            assert!(VlanHeader::new_checked(&TAG[..n]).is_err());
        }
    }

    #[test]
    fn tci_masks_fields() {
        let t = VlanTci::new(0xffff, 0xff);
        assert_eq!(t.vid(), 0x0fff);
        assert_eq!(t.pcp(), 7);
    }
}
