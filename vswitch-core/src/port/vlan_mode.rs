use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A set of VLAN IDs (0..=4095) as a 4096-bit map.
#[derive(Clone, PartialEq, Eq)]
pub struct VlanSet {
    bits: Box<[u64; 64]>,
}

impl VlanSet {
    /// The empty set.
    pub fn new() -> Self {
        VlanSet { bits: Box::new([0; 64]) }
    }
    /// Adds `vid` (masked to 12 bits).
    pub fn insert(&mut self, vid: u16) {
        let v = (vid & 0x0fff) as usize;
        self.bits[v / 64] |= 1 << (v % 64);
    }
    /// True if `vid` is in the set.
    #[inline]
    pub fn contains(&self, vid: u16) -> bool {
        let v = (vid & 0x0fff) as usize;
        self.bits[v / 64] & (1 << (v % 64)) != 0
    }
    /// True if the set is empty.
    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|&w| w == 0)
    }
    /// The members, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        (0u16..4096).filter(|&v| self.contains(v))
    }
}

impl Default for VlanSet {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for VlanSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// A port's VLAN membership (OVS's `vlan_mode` access and trunk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VlanMode {
    /// `tag=VID`: frames are untagged on the wire and belong to `VID`
    /// inside the bridge. Frames arriving with a VLAN tag (other than a
    /// priority tag, VID 0) are dropped.
    Access(u16),
    /// `trunks=...`: frames carry their VLAN as an 802.1Q tag on the wire;
    /// untagged frames belong to VLAN 0. `None` means every VLAN.
    Trunk(Option<VlanSet>),
}

impl Default for VlanMode {
    fn default() -> Self {
        VlanMode::Trunk(None)
    }
}

impl VlanMode {
    /// An access port in VLAN `vid` (1..=4094).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `vid` is 0 or above 4094.
    pub fn access(vid: u16) -> Result<Self> {
        check_vid(vid, 1)?;
        Ok(VlanMode::Access(vid))
    }

    /// A trunk carrying `vids` (0..=4094); an empty list means every VLAN.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if a VID is above 4094.
    pub fn trunk(vids: &[u16]) -> Result<Self> {
        if vids.is_empty() {
            return Ok(VlanMode::Trunk(None));
        }
        let mut set = VlanSet::new();
        for &v in vids {
            check_vid(v, 0)?;
            set.insert(v);
        }
        Ok(VlanMode::Trunk(Some(set)))
    }

    /// True if frames of VLAN `vid` may leave (or enter) through this port.
    #[inline]
    pub fn carries(&self, vid: u16) -> bool {
        match self {
            VlanMode::Access(tag) => *tag == vid,
            VlanMode::Trunk(None) => true,
            VlanMode::Trunk(Some(set)) => set.contains(vid),
        }
    }

    /// The serializable description (`tag` / `trunks`).
    pub fn describe(&self) -> VlanDescription {
        match self {
            VlanMode::Access(t) => VlanDescription { tag: Some(*t), trunks: vec![] },
            VlanMode::Trunk(None) => VlanDescription { tag: None, trunks: vec![] },
            VlanMode::Trunk(Some(s)) => VlanDescription { tag: None, trunks: s.iter().collect() },
        }
    }
}

/// A [`VlanMode`] as the control plane shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct VlanDescription {
    /// The access VLAN, if an access port.
    pub tag: Option<u16>,
    /// The trunk's VLANs; empty means all (when `tag` is absent).
    pub trunks: Vec<u16>,
}

fn check_vid(vid: u16, min: u16) -> Result<()> {
    if vid < min || vid > 4094 {
        return Err(Error::invalid("vlan id", format!("{vid}: a VLAN id is {min} to 4094")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership() {
        let t = VlanMode::trunk(&[0, 10, 4094]).unwrap();
        assert!(t.carries(0) && t.carries(10) && t.carries(4094) && !t.carries(11));
        assert!(VlanMode::trunk(&[]).unwrap().carries(1234));
        let a = VlanMode::access(7).unwrap();
        assert!(a.carries(7) && !a.carries(0));
    }

    #[test]
    fn out_of_range_rejected() {
        assert!(VlanMode::access(0).is_err());
        assert!(VlanMode::access(4095).is_err());
        assert!(VlanMode::trunk(&[1, 4095]).is_err());
    }

    #[test]
    fn describe_round_trip() {
        assert_eq!(VlanMode::trunk(&[20, 10]).unwrap().describe().trunks, vec![10, 20]);
        assert_eq!(VlanMode::access(5).unwrap().describe().tag, Some(5));
    }
}
