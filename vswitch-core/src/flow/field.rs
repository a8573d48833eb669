//! Fields as actions name them: the targets of `set_field`, `load` and
//! `move`, and the sources of `move`, with `ovs-fields(7)` names (and the
//! `NXM_*`/`OXM_*` spellings `ovs-ofctl` accepts), located in the packed
//! key. A [`SubField`] is a field's bit range: `reg0[0..15]`.
//!
//! Metadata fields (registers, `metadata`, `pkt_mark`, `in_port`) live
//! only in the key; header fields are written to the packet as well (see
//! the executor), so a later table sees what the packet now carries.

use std::fmt;

use serde::{Serialize, Serializer};

use super::matching::{FlowParseError, err};
use super::packed::{MARK_WORD, METADATA_WORD, PackedKey, REG_WORD, ones};

/// A field an action can read or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Field {
    /// `reg0`..`reg15` (32 bits).
    Reg(u8),
    /// `xreg0`..`xreg7` (64 bits: `reg(2N)` high, `reg(2N+1)` low).
    Xreg(u8),
    /// `metadata` (64 bits).
    Metadata,
    /// `pkt_mark` (32 bits).
    PktMark,
    /// `in_port` (32 bits; writing it changes what `output` and matches
    /// see as the input port).
    InPort,
    /// `eth_src` (48 bits).
    EthSrc,
    /// `eth_dst` (48 bits).
    EthDst,
    /// `ip_src` (IPv4, 32 bits).
    IpSrc,
    /// `ip_dst` (IPv4, 32 bits).
    IpDst,
    /// `tp_src` (`tcp_src`, `udp_src`; 16 bits).
    TpSrc,
    /// `tp_dst` (`tcp_dst`, `udp_dst`; 16 bits).
    TpDst,
    /// `vlan_vid` (12 bits).
    VlanVid,
    /// `tun_id` (64 bits).
    TunId,
    /// `tun_dst` (IPv4, 32 bits).
    TunDst,
    /// `eth_type` (read only).
    EthType,
    /// `ip_proto` (read only).
    IpProto,
    /// `ct_state` (read only).
    CtState,
    /// `ct_zone` (read only).
    CtZone,
    /// `ct_mark` (read only here; `ct(commit,exec(...))` sets it).
    CtMark,
}

impl Field {
    /// Finds a field by any of its names (case-insensitive).
    pub fn from_name(name: &str) -> Option<Field> {
        let n = name.to_ascii_lowercase();
        let indexed = |prefix: &str, max: u8| {
            n.strip_prefix(prefix).and_then(|d| d.parse::<u8>().ok()).filter(|&i| i < max && !n.contains('+'))
        };
        if let Some(i) = indexed("reg", 16).or_else(|| indexed("nxm_nx_reg", 16)) {
            return Some(Field::Reg(i));
        }
        if let Some(i) = indexed("xreg", 8).or_else(|| indexed("oxm_of_pkt_reg", 8)) {
            return Some(Field::Xreg(i));
        }
        Some(match n.as_str() {
            "metadata" | "oxm_of_metadata" => Field::Metadata,
            "pkt_mark" | "nxm_nx_pkt_mark" => Field::PktMark,
            "in_port" | "nxm_of_in_port" => Field::InPort,
            "eth_src" | "dl_src" | "nxm_of_eth_src" => Field::EthSrc,
            "eth_dst" | "dl_dst" | "nxm_of_eth_dst" => Field::EthDst,
            "ip_src" | "nw_src" | "nxm_of_ip_src" => Field::IpSrc,
            "ip_dst" | "nw_dst" | "nxm_of_ip_dst" => Field::IpDst,
            "tp_src" | "tcp_src" | "udp_src" | "nxm_of_tcp_src" | "nxm_of_udp_src" => Field::TpSrc,
            "tp_dst" | "tcp_dst" | "udp_dst" | "nxm_of_tcp_dst" | "nxm_of_udp_dst" => Field::TpDst,
            "vlan_vid" | "dl_vlan" => Field::VlanVid,
            "tun_id" | "tunnel_id" | "nxm_nx_tun_id" => Field::TunId,
            "tun_dst" | "nxm_nx_tun_ipv4_dst" => Field::TunDst,
            "eth_type" | "dl_type" | "nxm_of_eth_type" => Field::EthType,
            "ip_proto" | "nw_proto" | "nxm_of_ip_proto" => Field::IpProto,
            "ct_state" | "nxm_nx_ct_state" => Field::CtState,
            "ct_zone" | "nxm_nx_ct_zone" => Field::CtZone,
            "ct_mark" | "nxm_nx_ct_mark" => Field::CtMark,
            _ => return None,
        })
    }

    /// Its canonical name.
    pub fn name(self) -> String {
        match self {
            Field::Reg(i) => format!("reg{i}"),
            Field::Xreg(i) => format!("xreg{i}"),
            other => match other {
                Field::Metadata => "metadata",
                Field::PktMark => "pkt_mark",
                Field::InPort => "in_port",
                Field::EthSrc => "eth_src",
                Field::EthDst => "eth_dst",
                Field::IpSrc => "ip_src",
                Field::IpDst => "ip_dst",
                Field::TpSrc => "tp_src",
                Field::TpDst => "tp_dst",
                Field::VlanVid => "vlan_vid",
                Field::TunId => "tun_id",
                Field::TunDst => "tun_dst",
                Field::EthType => "eth_type",
                Field::IpProto => "ip_proto",
                Field::CtState => "ct_state",
                Field::CtZone => "ct_zone",
                Field::CtMark => "ct_mark",
                Field::Reg(_) | Field::Xreg(_) => unreachable!("handled above"),
            }
            .to_string(),
        }
    }

    /// Where it lives in the packed key: word, shift, width.
    pub(crate) fn location(self) -> (usize, u32, u32) {
        match self {
            Field::Reg(i) => (REG_WORD + i as usize / 2, if i % 2 == 0 { 32 } else { 0 }, 32),
            Field::Xreg(i) => (REG_WORD + i as usize, 0, 64),
            Field::Metadata => (METADATA_WORD, 0, 64),
            Field::PktMark => (MARK_WORD, 0, 32),
            Field::InPort => (0, 0, 32),
            Field::EthSrc => (2, 0, 48),
            Field::EthDst => (1, 0, 48),
            Field::IpSrc => (4, 0, 32),
            Field::IpDst => (6, 0, 32),
            Field::TpSrc => (7, 0, 16),
            Field::TpDst => (7, 16, 16),
            Field::VlanVid => (0, 48, 12),
            Field::TunId => (8, 0, 64),
            Field::TunDst => (9, 32, 32),
            Field::EthType => (0, 32, 16),
            Field::IpProto => (1, 48, 8),
            Field::CtState => (MARK_WORD, super::packed::CT_STATE_SHIFT, 8),
            Field::CtZone => (MARK_WORD, super::packed::CT_ZONE_SHIFT, 16),
            Field::CtMark => (super::packed::CT_WORD, 0, 32),
        }
    }

    /// Width in bits.
    pub fn bits(self) -> u32 {
        self.location().2
    }

    /// True for the fields that only live in the switch (no header bytes).
    pub fn is_metadata(self) -> bool {
        matches!(
            self,
            Field::Reg(_)
                | Field::Xreg(_)
                | Field::Metadata
                | Field::PktMark
                | Field::InPort
                | Field::CtState
                | Field::CtZone
                | Field::CtMark
        )
    }

    /// True if actions may write it.
    pub fn is_writable(self) -> bool {
        !matches!(self, Field::EthType | Field::IpProto | Field::CtState | Field::CtZone | Field::CtMark)
    }

    /// Its value in `key`.
    #[inline]
    pub(crate) fn get(self, key: &PackedKey) -> u64 {
        let (w, s, b) = self.location();
        key.get(w, s, b)
    }

    /// Writes its value into `key` (the key only).
    #[inline]
    pub(crate) fn set(self, key: &mut PackedKey, v: u64) {
        let (w, s, b) = self.location();
        key.set(w, s, b, v);
    }
}

/// A field's bit range, `NAME[start..end]` (inclusive), `NAME[bit]` or
/// `NAME[]` (the whole field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubField {
    /// The field.
    pub field: Field,
    /// The lowest bit.
    pub ofs: u8,
    /// How many bits.
    pub n_bits: u8,
}

impl SubField {
    /// The whole of `field`.
    pub fn whole(field: Field) -> SubField {
        SubField { field, ofs: 0, n_bits: field.bits() as u8 }
    }

    /// The mask of the range within the field.
    pub fn mask(self) -> u64 {
        ones(self.n_bits as u32) << self.ofs
    }

    /// Parses `NAME`, `NAME[]`, `NAME[a]` or `NAME[a..b]`.
    ///
    /// # Errors
    /// An unknown field, or a range outside it.
    pub fn parse(s: &str) -> Result<SubField, FlowParseError> {
        let s = s.trim();
        let (name, range) = match s.split_once('[') {
            Some((n, r)) => {
                let Some(r) = r.strip_suffix(']') else {
                    return err(format!("'{s}' is missing its closing ']'"));
                };
                (n, Some(r))
            }
            None => (s, None),
        };
        let Some(field) = Field::from_name(name) else {
            return err(format!("unknown field '{name}'"));
        };
        let bits = field.bits();
        let (lo, hi) = match range.map(str::trim) {
            None | Some("") => (0, bits - 1),
            Some(r) => {
                let num = |t: &str| {
                    t.trim().parse::<u32>().map_err(|_| FlowParseError(format!("'{s}': '{t}' is not a bit number")))
                };
                match r.split_once("..") {
                    Some((a, b)) => (num(a)?, num(b)?),
                    None => {
                        let b = num(r)?;
                        (b, b)
                    }
                }
            }
        };
        if lo > hi || hi >= bits {
            return err(format!("'{s}': bits {lo}..{hi} are not within {} (0..{})", field.name(), bits - 1));
        }
        Ok(SubField { field, ofs: lo as u8, n_bits: (hi - lo + 1) as u8 })
    }

    /// Its bits' value in `key`, shifted down.
    #[inline]
    pub(crate) fn read(self, key: &PackedKey) -> u64 {
        (self.field.get(key) >> self.ofs) & ones(self.n_bits as u32)
    }
}

impl fmt::Display for SubField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.field.name();
        if self.ofs == 0 && self.n_bits as u32 == self.field.bits() {
            write!(f, "{name}[]")
        } else if self.n_bits == 1 {
            write!(f, "{name}[{}]", self.ofs)
        } else {
            write!(f, "{name}[{}..{}]", self.ofs, self.ofs as u32 + self.n_bits as u32 - 1)
        }
    }
}

impl Serialize for SubField {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Serialize for Field {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_ranges_and_locations() {
        assert_eq!(
            SubField::parse("NXM_NX_REG3[0..15]").unwrap(),
            SubField { field: Field::Reg(3), ofs: 0, n_bits: 16 }
        );
        assert_eq!(SubField::parse("reg0[]").unwrap().to_string(), "reg0[]");
        assert_eq!(SubField::parse("metadata[63]").unwrap().to_string(), "metadata[63]");
        assert_eq!(SubField::parse("xreg1[8..15]").unwrap().to_string(), "xreg1[8..15]");
        assert!(SubField::parse("reg16").unwrap_err().0.contains("unknown field"));
        assert!(SubField::parse("reg0[0..32]").unwrap_err().0.contains("not within reg0"));
        assert!(SubField::parse("reg0[5..2]").is_err());
        // xreg0 is reg0 (high half) and reg1 (low half).
        let mut k = PackedKey::default();
        Field::Reg(0).set(&mut k, 0xaaaa_aaaa);
        Field::Reg(1).set(&mut k, 0x5555_5555);
        assert_eq!(Field::Xreg(0).get(&k), 0xaaaa_aaaa_5555_5555);
        assert_eq!(SubField::parse("reg1[4..7]").unwrap().read(&k), 0x5);
    }
}
