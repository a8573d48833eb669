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
#[non_exhaustive]
pub enum VlanMode {
    /// `tag=VID`: frames are untagged on the wire and belong to `VID`
    /// inside the bridge. Frames arriving with a VLAN tag (other than a
    /// priority tag, VID 0) are dropped.
    Access(u16),
    /// `trunks=...`: frames carry their VLAN as an 802.1Q tag on the wire;
    /// untagged frames belong to VLAN 0. `None` means every VLAN.
    Trunk(Option<VlanSet>),
    /// `vlan_mode=native-tagged`: a trunk whose untagged (and
    /// priority-tagged) frames belong to `native`; frames of `native`
    /// leave tagged. `trunks: None` means every VLAN.
    NativeTagged {
        /// The native VLAN (`tag=`).
        native: u16,
        /// The other VLANs it carries (`trunks=`); `None`: all.
        trunks: Option<VlanSet>,
    },
    /// `vlan_mode=native-untagged`: as [`VlanMode::NativeTagged`], but
    /// frames of `native` leave untagged.
    NativeUntagged {
        /// The native VLAN (`tag=`).
        native: u16,
        /// The other VLANs it carries (`trunks=`); `None`: all.
        trunks: Option<VlanSet>,
    },
}

/// Open vSwitch's `vlan_mode` column: how `tag` and `trunks` combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum VlanModeName {
    /// `tag` only: untagged on the wire.
    Access,
    /// `trunks` only (or neither): tagged on the wire, untagged is VLAN 0.
    Trunk,
    /// `tag` is the native VLAN, sent tagged.
    NativeTagged,
    /// `tag` is the native VLAN, sent untagged.
    NativeUntagged,
}

impl VlanModeName {
    /// Its name, as `vlan_mode=` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            VlanModeName::Access => "access",
            VlanModeName::Trunk => "trunk",
            VlanModeName::NativeTagged => "native-tagged",
            VlanModeName::NativeUntagged => "native-untagged",
        }
    }
}

impl std::str::FromStr for VlanModeName {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        [VlanModeName::Access, VlanModeName::Trunk, VlanModeName::NativeTagged, VlanModeName::NativeUntagged]
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                Error::invalid("vlan_mode", format!("'{s}' is not access, trunk, native-tagged or native-untagged"))
            })
    }
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

    /// A port in `mode` (`None`: what `tag` and `trunks` imply) with
    /// `tag` and `trunks` as Open vSwitch's columns: access needs a tag
    /// and no trunks, trunk no tag, the native modes a tag (the native
    /// VLAN) and any trunks (none: every VLAN).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad VLAN or a contradiction.
    pub fn from_columns(mode: Option<VlanModeName>, tag: Option<u16>, trunks: &[u16]) -> Result<Self> {
        let set = |vids: &[u16]| match VlanMode::trunk(vids)? {
            VlanMode::Trunk(s) => Ok(s),
            _ => unreachable!("trunk() makes a trunk"),
        };
        match (mode, tag) {
            (None, Some(_)) if !trunks.is_empty() => Err(Error::invalid(
                "port",
                "give 'tag' or 'trunks', not both (or vlan_mode=native-tagged|native-untagged for both)",
            )),
            (None | Some(VlanModeName::Access), Some(t)) if trunks.is_empty() => VlanMode::access(t),
            (Some(VlanModeName::Access), Some(_)) => Err(Error::invalid("port", "an access port takes no 'trunks'")),
            (Some(VlanModeName::Access), None) => Err(Error::invalid("port", "vlan_mode=access needs a 'tag'")),
            (None | Some(VlanModeName::Trunk), None) => VlanMode::trunk(trunks),
            (Some(VlanModeName::Trunk), Some(_)) => {
                Err(Error::invalid("port", "vlan_mode=trunk takes no 'tag' (a native mode does)"))
            }
            (Some(m @ (VlanModeName::NativeTagged | VlanModeName::NativeUntagged)), Some(native)) => {
                check_vid(native, 1)?;
                let trunks = set(trunks)?;
                Ok(if m == VlanModeName::NativeTagged {
                    VlanMode::NativeTagged { native, trunks }
                } else {
                    VlanMode::NativeUntagged { native, trunks }
                })
            }
            (Some(m), None) => {
                Err(Error::invalid("port", format!("vlan_mode={} needs a 'tag' (the native VLAN)", m.as_str())))
            }
            (None, Some(_)) => unreachable!("handled above"),
        }
    }

    /// True if frames of VLAN `vid` may leave (or enter) through this port.
    #[inline]
    pub fn carries(&self, vid: u16) -> bool {
        match self {
            VlanMode::Access(tag) => *tag == vid,
            VlanMode::Trunk(None) => true,
            VlanMode::Trunk(Some(set)) => set.contains(vid),
            VlanMode::NativeTagged { native, trunks } | VlanMode::NativeUntagged { native, trunks } => {
                *native == vid || (vid != 0 && trunks.as_ref().is_none_or(|s| s.contains(vid)))
            }
        }
    }

    /// The VLAN an untagged (or priority-tagged) frame arriving here
    /// belongs to; `None` if such frames are refused.
    #[inline]
    pub fn untagged_vlan(&self) -> Option<u16> {
        match self {
            VlanMode::Access(tag) => Some(*tag),
            VlanMode::Trunk(set) => set.as_ref().is_none_or(|s| s.contains(0)).then_some(0),
            VlanMode::NativeTagged { native, .. } | VlanMode::NativeUntagged { native, .. } => Some(*native),
        }
    }

    /// True if frames of `vid` leave this port untagged.
    #[inline]
    pub fn sends_untagged(&self, vid: u16) -> bool {
        match self {
            VlanMode::Access(_) => true,
            VlanMode::Trunk(_) | VlanMode::NativeTagged { .. } => vid == 0,
            VlanMode::NativeUntagged { native, .. } => vid == *native || vid == 0,
        }
    }

    /// The serializable description (`tag` / `trunks` / `vlan_mode`).
    pub fn describe(&self) -> VlanDescription {
        let list = |s: &Option<VlanSet>| s.as_ref().map(|s| s.iter().collect()).unwrap_or_default();
        match self {
            VlanMode::Access(t) => VlanDescription { tag: Some(*t), trunks: vec![], mode: None },
            VlanMode::Trunk(s) => VlanDescription { tag: None, trunks: list(s), mode: None },
            VlanMode::NativeTagged { native, trunks } => {
                VlanDescription { tag: Some(*native), trunks: list(trunks), mode: Some(VlanModeName::NativeTagged) }
            }
            VlanMode::NativeUntagged { native, trunks } => {
                VlanDescription { tag: Some(*native), trunks: list(trunks), mode: Some(VlanModeName::NativeUntagged) }
            }
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
    /// A native mode (`tag` is then the native VLAN); absent for access
    /// and trunk ports, which `tag` and `trunks` describe.
    #[serde(default, rename = "vlan_mode", skip_serializing_if = "Option::is_none")]
    pub mode: Option<VlanModeName>,
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
    fn native_modes() {
        let m = VlanMode::from_columns(Some(VlanModeName::NativeUntagged), Some(10), &[20, 30]).unwrap();
        assert!(m.carries(10) && m.carries(20) && !m.carries(0) && !m.carries(40));
        assert_eq!(m.untagged_vlan(), Some(10));
        assert!(m.sends_untagged(10) && !m.sends_untagged(20));
        let t = VlanMode::from_columns(Some(VlanModeName::NativeTagged), Some(10), &[]).unwrap();
        assert!(t.carries(999) && !t.sends_untagged(10));
        assert!(VlanMode::from_columns(None, Some(10), &[20]).is_err());
        assert!(VlanMode::from_columns(Some(VlanModeName::NativeTagged), None, &[20]).is_err());
        assert!(VlanMode::from_columns(Some(VlanModeName::Trunk), Some(3), &[]).is_err());
        assert_eq!(VlanMode::trunk(&[5]).unwrap().untagged_vlan(), None);
        assert_eq!(m.describe().mode, Some(VlanModeName::NativeUntagged));
    }

    #[test]
    fn describe_round_trip() {
        assert_eq!(VlanMode::trunk(&[20, 10]).unwrap().describe().trunks, vec![10, 20]);
        assert_eq!(VlanMode::access(5).unwrap().describe().tag, Some(5));
    }
}
