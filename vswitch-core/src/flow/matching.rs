//! Matches: which packets a rule applies to, in `ovs-ofctl` syntax.
//!
//! A [`Match`] is a value and a mask over a [`PackedKey`]. Text is parsed
//! field by field (`in_port=1,dl_dst=02:00:00:00:00:01/ff:ff:ff:00:00:00,
//! tcp,tp_dst=80`) and checked for OpenFlow's prerequisites (a transport
//! port needs a transport protocol, which needs IPv4 or IPv6); formatting
//! gives one canonical text that parses back to the same match.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::packed::{
    CT_DST_WORD, CT_LABEL_WORD, CT_PROTO_SHIFT, CT_SRC_WORD, CT_STATE_SHIFT, CT_WORD, CT_ZONE_SHIFT, MARK_WORD,
    METADATA_WORD, PackedKey, REG_WORD, TABLE_SHIFT, VLAN_PRESENT, ones,
};
use crate::conntrack::state as ct_state;
use crate::wire::{MacAddr, ethertype};

/// A value and mask over a packed key. `value` has no bits outside `mask`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Match {
    /// The bits to compare, already masked.
    pub(crate) value: PackedKey,
    /// Which bits matter.
    pub(crate) mask: PackedKey,
}

/// Why a flow's text was refused; the message names the offending token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FlowParseError(pub String);

pub(crate) fn err<T>(msg: impl Into<String>) -> Result<T, FlowParseError> {
    Err(FlowParseError(msg.into()))
}

impl Match {
    /// The match that matches everything.
    pub fn any() -> Match {
        Match::default()
    }

    /// True if the packed key `key` is matched.
    #[cfg(test)]
    pub(crate) fn matches(&self, key: &PackedKey) -> bool {
        key.masked(&self.mask) == self.value
    }

    /// OpenFlow's non-strict selection: true if every packet `other`
    /// matches is matched by `self` too, i.e. `other` is at least as
    /// specific and agrees on every bit `self` looks at.
    pub fn covers(&self, other: &Match) -> bool {
        self.mask.is_subset_of(&other.mask) && other.value.masked(&self.mask) == self.value
    }

    fn set_field(&mut self, f: &FieldDef, value: u64, mask: u64) -> Result<(), FlowParseError> {
        let old_mask = self.mask.get(f.word, f.shift, f.bits);
        let old_value = self.value.get(f.word, f.shift, f.bits);
        let mask = mask & ones(f.bits);
        if old_mask & mask != 0 && (old_value & mask & old_mask) != (value & mask & old_mask) {
            return err(format!("'{}' conflicts with an earlier field in the same match", f.name));
        }
        self.mask.set(f.word, f.shift, f.bits, old_mask | mask);
        self.value.set(f.word, f.shift, f.bits, (old_value & !mask) | (value & mask));
        Ok(())
    }

    fn field(&self, f: &FieldDef) -> (u64, u64) {
        (self.value.get(f.word, f.shift, f.bits), self.mask.get(f.word, f.shift, f.bits))
    }

    fn exact(&self, f: &FieldDef) -> Option<u64> {
        let (v, m) = self.field(f);
        (m == ones(f.bits)).then_some(v)
    }

    /// The EtherType this match fixes, if it does.
    pub fn dl_type(&self) -> Option<u16> {
        self.exact(&DL_TYPE).map(|v| v as u16)
    }

    /// The IP protocol this match fixes, if it does.
    pub fn nw_proto(&self) -> Option<u8> {
        self.exact(&NW_PROTO).map(|v| v as u8)
    }

    /// The input port this match fixes, if it does.
    pub fn in_port(&self) -> Option<u32> {
        self.exact(&IN_PORT).map(|v| v as u32)
    }

    /// The table a rule with this match lives in, or a selection is
    /// limited to (`None`: every table).
    pub fn table(&self) -> Option<u8> {
        self.exact(&TABLE).map(|v| v as u8)
    }

    /// Puts the match in table `table`.
    pub fn set_table(&mut self, table: u8) {
        self.mask.set(MARK_WORD, TABLE_SHIFT, 8, 0xff);
        self.value.set(MARK_WORD, TABLE_SHIFT, 8, table as u64);
    }

    /// The match with `field` equal to `value` too (for building rules in
    /// code: `Match::any().with(Field::Reg(0), 7).with(Field::EthType, 0x0800)`).
    /// Prerequisites (`ip_src` needs `eth_type` 0x0800) are checked when
    /// the rule is added, as for text.
    pub fn with(self, field: super::Field, value: u64) -> Match {
        self.with_masked(field, value, u64::MAX)
    }

    /// The match with the bits of `field` under `mask` equal to `value`'s.
    pub fn with_masked(mut self, field: super::Field, value: u64, mask: u64) -> Match {
        let (word, shift, bits) = field.location();
        let (value, mask) = match field {
            // A VLAN ID matches tagged frames only (the "present" bit).
            super::Field::VlanVid => ((value & 0xfff) | VLAN_PRESENT as u64, (mask & 0xfff) | VLAN_PRESENT as u64),
            _ => (value, mask),
        };
        let bits = if field == super::Field::VlanVid { 13 } else { bits };
        let mask = mask & ones(bits);
        let old_mask = self.mask.get(word, shift, bits);
        let old_value = self.value.get(word, shift, bits);
        self.mask.set(word, shift, bits, old_mask | mask);
        self.value.set(word, shift, bits, (old_value & !mask) | (value & mask));
        self
    }

    /// Makes the match cover every table (a selection with no `table=`).
    pub fn clear_table(&mut self) {
        self.mask.set(MARK_WORD, TABLE_SHIFT, 8, 0);
        self.value.set(MARK_WORD, TABLE_SHIFT, 8, 0);
    }

    /// The same match with the metadata words (registers, `metadata`,
    /// `pkt_mark`, the table) left out: what describes a packet's headers.
    pub(crate) fn headers_only(&self) -> Match {
        let mut m = *self;
        for w in METADATA_WORD..super::packed::WORDS {
            m.value.0[w] = 0;
            m.mask.0[w] = 0;
        }
        m.value.set(2, CT_PROTO_SHIFT, 8, 0);
        m.mask.set(2, CT_PROTO_SHIFT, 8, 0);
        m
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Port,
    Hex16,
    Dec8,
    Tos,
    Mac,
    Ip,
    Ipv4,
    Ports,
    Icmp,
    /// Maskable, printed in hexadecimal (tun_id, registers, metadata).
    Hex,
    /// `ct_state`: flags (`+trk+est-new`) or a value and mask.
    CtState,
    /// 128 bits over two words, high first (`ct_label`).
    Hex128,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prereq {
    None,
    /// IPv4 or IPv6 (or ARP, for nw_proto).
    Ip,
    Arp,
    Transport,
    Icmp,
}

#[derive(Debug)]
struct FieldDef {
    name: &'static str,
    word: usize,
    shift: u32,
    bits: u32,
    kind: Kind,
    prereq: Prereq,
}

const fn fd(name: &'static str, word: usize, shift: u32, bits: u32, kind: Kind, prereq: Prereq) -> FieldDef {
    FieldDef { name, word, shift, bits, kind, prereq }
}

const IN_PORT: FieldDef = fd("in_port", 0, 0, 32, Kind::Port, Prereq::None);
const DL_TYPE: FieldDef = fd("dl_type", 0, 32, 16, Kind::Hex16, Prereq::None);
const VLAN_TCI: FieldDef = fd("vlan_tci", 0, 48, 16, Kind::Hex16, Prereq::None);
const DL_DST: FieldDef = fd("dl_dst", 1, 0, 48, Kind::Mac, Prereq::None);
const DL_SRC: FieldDef = fd("dl_src", 2, 0, 48, Kind::Mac, Prereq::None);
const NW_PROTO: FieldDef = fd("nw_proto", 1, 48, 8, Kind::Dec8, Prereq::Ip);
const NW_TOS: FieldDef = fd("nw_tos", 1, 56, 8, Kind::Tos, Prereq::Ip);
const NW_TTL: FieldDef = fd("nw_ttl", 2, 48, 8, Kind::Dec8, Prereq::Ip);
const NW_SRC: FieldDef = fd("nw_src", 3, 0, 64, Kind::Ip, Prereq::Ip);
const NW_DST: FieldDef = fd("nw_dst", 5, 0, 64, Kind::Ip, Prereq::Ip);
const ARP_OP: FieldDef = fd("arp_op", 1, 48, 8, Kind::Dec8, Prereq::Arp);
const ARP_SPA: FieldDef = fd("arp_spa", 4, 0, 32, Kind::Ipv4, Prereq::Arp);
const ARP_TPA: FieldDef = fd("arp_tpa", 6, 0, 32, Kind::Ipv4, Prereq::Arp);
const TP_SRC: FieldDef = fd("tp_src", 7, 0, 16, Kind::Ports, Prereq::Transport);
const TP_DST: FieldDef = fd("tp_dst", 7, 16, 16, Kind::Ports, Prereq::Transport);
const ICMP_TYPE: FieldDef = fd("icmp_type", 7, 0, 16, Kind::Icmp, Prereq::Icmp);
const ICMP_CODE: FieldDef = fd("icmp_code", 7, 16, 16, Kind::Icmp, Prereq::Icmp);
const TUN_ID: FieldDef = fd("tun_id", 8, 0, 64, Kind::Hex, Prereq::None);
const TUN_SRC: FieldDef = fd("tun_src", 9, 0, 32, Kind::Ipv4, Prereq::None);
const TUN_DST: FieldDef = fd("tun_dst", 9, 32, 32, Kind::Ipv4, Prereq::None);
const METADATA: FieldDef = fd("metadata", METADATA_WORD, 0, 64, Kind::Hex, Prereq::None);
const PKT_MARK: FieldDef = fd("pkt_mark", MARK_WORD, 0, 32, Kind::Hex, Prereq::None);
/// Not a match field as text (`table=` is the rule's, parsed with the
/// priority), but matched like one: a lookup's key carries its table.
const TABLE: FieldDef = fd("table", MARK_WORD, TABLE_SHIFT, 8, Kind::Dec8, Prereq::None);
const CT_STATE: FieldDef = fd("ct_state", MARK_WORD, CT_STATE_SHIFT, 8, Kind::CtState, Prereq::None);
const CT_ZONE: FieldDef = fd("ct_zone", MARK_WORD, CT_ZONE_SHIFT, 16, Kind::Ports, Prereq::None);
const CT_MARK: FieldDef = fd("ct_mark", CT_WORD, 0, 32, Kind::Hex, Prereq::None);
const CT_LABEL: FieldDef = fd("ct_label", CT_LABEL_WORD, 0, 64, Kind::Hex128, Prereq::None);
const CT_NW_SRC: FieldDef = fd("ct_nw_src", CT_SRC_WORD, 0, 64, Kind::Ip, Prereq::Ip);
const CT_NW_DST: FieldDef = fd("ct_nw_dst", CT_DST_WORD, 0, 64, Kind::Ip, Prereq::Ip);
const CT_NW_PROTO: FieldDef = fd("ct_nw_proto", 2, CT_PROTO_SHIFT, 8, Kind::Dec8, Prereq::None);
const CT_TP_SRC: FieldDef = fd("ct_tp_src", CT_WORD, 32, 16, Kind::Ports, Prereq::None);
const CT_TP_DST: FieldDef = fd("ct_tp_dst", CT_WORD, 48, 16, Kind::Ports, Prereq::None);

const REG_NAMES: [&str; 16] = [
    "reg0", "reg1", "reg2", "reg3", "reg4", "reg5", "reg6", "reg7", "reg8", "reg9", "reg10", "reg11", "reg12", "reg13",
    "reg14", "reg15",
];

/// `reg0`..`reg15`: reg(2N) is the high half of word REG_WORD + N.
static REGS: [FieldDef; 16] = {
    let mut regs = [const { fd("", 0, 0, 0, Kind::Hex, Prereq::None) }; 16];
    let mut i = 0;
    while i < 16 {
        regs[i] = fd(REG_NAMES[i], REG_WORD + i / 2, if i % 2 == 0 { 32 } else { 0 }, 32, Kind::Hex, Prereq::None);
        i += 1;
    }
    regs
};

/// `xreg0`..`xreg7`: the register pairs as 64-bit fields.
static XREGS: [FieldDef; 8] = {
    const NAMES: [&str; 8] = ["xreg0", "xreg1", "xreg2", "xreg3", "xreg4", "xreg5", "xreg6", "xreg7"];
    let mut x = [const { fd("", 0, 0, 0, Kind::Hex, Prereq::None) }; 8];
    let mut i = 0;
    while i < 8 {
        x[i] = fd(NAMES[i], REG_WORD + i, 0, 64, Kind::Hex, Prereq::None);
        i += 1;
    }
    x
};

/// Fields in canonical print order (dl_type, nw_proto and the VLAN fields
/// are printed specially; registers after these).
const PRINTED: [&FieldDef; 27] = [
    &CT_STATE,
    &CT_ZONE,
    &CT_MARK,
    &CT_LABEL,
    &CT_NW_SRC,
    &CT_NW_DST,
    &CT_NW_PROTO,
    &CT_TP_SRC,
    &CT_TP_DST,
    &IN_PORT,
    &METADATA,
    &PKT_MARK,
    &DL_SRC,
    &DL_DST,
    &NW_SRC,
    &NW_DST,
    &ARP_SPA,
    &ARP_TPA,
    &NW_TOS,
    &NW_TTL,
    &TP_SRC,
    &TP_DST,
    &ICMP_TYPE,
    &ICMP_CODE,
    &TUN_ID,
    &TUN_SRC,
    &TUN_DST,
];

fn lookup_field(name: &str) -> Option<&'static FieldDef> {
    if let Some(i) = REG_NAMES.iter().position(|&n| n == name) {
        return Some(&REGS[i]);
    }
    if let Some(i) = name.strip_prefix("xreg").and_then(|d| d.parse::<usize>().ok()).filter(|&i| i < 8)
        && name == XREGS[i].name
    {
        return Some(&XREGS[i]);
    }
    Some(match name {
        "metadata" => &METADATA,
        "pkt_mark" => &PKT_MARK,
        "in_port" => &IN_PORT,
        "dl_type" | "eth_type" => &DL_TYPE,
        "vlan_tci" => &VLAN_TCI,
        "dl_dst" | "eth_dst" => &DL_DST,
        "dl_src" | "eth_src" => &DL_SRC,
        "nw_proto" | "ip_proto" => &NW_PROTO,
        "nw_tos" => &NW_TOS,
        "nw_ttl" => &NW_TTL,
        "nw_src" | "ip_src" | "ipv6_src" => &NW_SRC,
        "nw_dst" | "ip_dst" | "ipv6_dst" => &NW_DST,
        "arp_op" => &ARP_OP,
        "arp_spa" => &ARP_SPA,
        "arp_tpa" => &ARP_TPA,
        "tp_src" | "tcp_src" | "udp_src" | "sctp_src" => &TP_SRC,
        "tp_dst" | "tcp_dst" | "udp_dst" | "sctp_dst" => &TP_DST,
        "icmp_type" | "icmpv6_type" => &ICMP_TYPE,
        "icmp_code" | "icmpv6_code" => &ICMP_CODE,
        "tun_id" | "tunnel_id" => &TUN_ID,
        "tun_src" => &TUN_SRC,
        "tun_dst" => &TUN_DST,
        "ct_state" => &CT_STATE,
        "ct_zone" => &CT_ZONE,
        "ct_mark" => &CT_MARK,
        "ct_label" => &CT_LABEL,
        "ct_nw_src" | "ct_ipv6_src" => &CT_NW_SRC,
        "ct_nw_dst" | "ct_ipv6_dst" => &CT_NW_DST,
        "ct_nw_proto" => &CT_NW_PROTO,
        "ct_tp_src" => &CT_TP_SRC,
        "ct_tp_dst" => &CT_TP_DST,
        _ => return None,
    })
}

/// Shorthands: name, EtherType, IP protocol.
const SHORTHANDS: [(&str, u16, Option<u8>); 11] = [
    ("ip", ethertype::IPV4, None),
    ("ipv6", ethertype::IPV6, None),
    ("arp", ethertype::ARP, None),
    ("tcp", ethertype::IPV4, Some(6)),
    ("udp", ethertype::IPV4, Some(17)),
    ("sctp", ethertype::IPV4, Some(132)),
    ("icmp", ethertype::IPV4, Some(1)),
    ("tcp6", ethertype::IPV6, Some(6)),
    ("udp6", ethertype::IPV6, Some(17)),
    ("sctp6", ethertype::IPV6, Some(132)),
    ("icmp6", ethertype::IPV6, Some(58)),
];

/// Parses an unsigned number, decimal or `0x` hexadecimal.
pub(crate) fn parse_num(s: &str, what: &str, max: u64) -> Result<u64, FlowParseError> {
    let v = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse::<u64>(),
    };
    match v {
        Ok(v) if v <= max => Ok(v),
        Ok(_) => err(format!("{what} value '{s}' is out of range (at most {max})")),
        Err(_) => err(format!("{what} value '{s}' is not a number")),
    }
}

fn parse_ipv4_masked(s: &str, what: &str) -> Result<(u32, u32), FlowParseError> {
    let (addr, mask) = s.split_once('/').map_or((s, None), |(a, m)| (a, Some(m)));
    let a: Ipv4Addr =
        addr.parse().map_err(|_| FlowParseError(format!("{what} value '{addr}' is not an IPv4 address")))?;
    let m = match mask {
        None => u32::MAX,
        Some(m) if m.contains('.') => u32::from(
            m.parse::<Ipv4Addr>().map_err(|_| FlowParseError(format!("{what} mask '{m}' is not an IPv4 mask")))?,
        ),
        Some(m) => {
            let len = parse_num(m, what, 32)? as u32;
            if len == 0 { 0 } else { u32::MAX << (32 - len) }
        }
    };
    Ok((u32::from(a) & m, m))
}

fn parse_ipv6_masked(s: &str, what: &str) -> Result<(u128, u128), FlowParseError> {
    let (addr, mask) = s.split_once('/').map_or((s, None), |(a, m)| (a, Some(m)));
    let a: Ipv6Addr =
        addr.parse().map_err(|_| FlowParseError(format!("{what} value '{addr}' is not an IP address")))?;
    let m = match mask {
        None => u128::MAX,
        Some(m) if m.contains(':') => u128::from(
            m.parse::<Ipv6Addr>().map_err(|_| FlowParseError(format!("{what} mask '{m}' is not an IPv6 mask")))?,
        ),
        Some(m) => {
            let len = parse_num(m, what, 128)? as u32;
            if len == 0 { 0 } else { u128::MAX << (128 - len) }
        }
    };
    Ok((u128::from(a) & m, m))
}

/// One parsed `name[=value]` item of a match.
pub(crate) fn apply_match_item(
    m: &mut Match,
    name: &str,
    value: Option<&str>,
    ports: &dyn Fn(&str) -> Option<u32>,
) -> Result<(), FlowParseError> {
    if let Some(&(_, et, proto)) = SHORTHANDS.iter().find(|(n, ..)| *n == name) {
        if value.is_some() {
            return err(format!("'{name}' is a shorthand and takes no value"));
        }
        m.set_field(&DL_TYPE, et as u64, u64::MAX)?;
        if let Some(p) = proto {
            m.set_field(&NW_PROTO, p as u64, u64::MAX)?;
        }
        return Ok(());
    }
    if name == "dl_vlan" || name == "dl_vlan_pcp" {
        let v = value.ok_or_else(|| FlowParseError(format!("'{name}' needs a value")))?;
        return if name == "dl_vlan" {
            let vid = parse_num(v, name, 0xffff)?;
            if vid == 0xffff {
                m.set_field(&VLAN_TCI, 0, 0xffff)
            } else if vid > 4095 {
                err(format!("dl_vlan value '{v}' is out of range (0 to 4095, or 0xffff for untagged)"))
            } else {
                m.set_field(&VLAN_TCI, vid | VLAN_PRESENT as u64, 0x1fff)
            }
        } else {
            let pcp = parse_num(v, name, 7)?;
            m.set_field(&VLAN_TCI, pcp << 13 | VLAN_PRESENT as u64, 0xf000)
        };
    }
    let Some(f) = lookup_field(name) else {
        return err(format!("unknown field '{name}'"));
    };
    let Some(v) = value else {
        return err(format!("field '{name}' needs a value ('{name}=...')"));
    };
    let split =
        |v: &str| v.split_once('/').map_or((v.to_string(), None), |(a, b)| (a.to_string(), Some(b.to_string())));
    match f.kind {
        Kind::Port => {
            let n = match parse_num(v, name, u32::MAX as u64) {
                Ok(n) => n,
                Err(_) => ports(v)
                    .ok_or_else(|| FlowParseError(format!("in_port value '{v}' is not a port number or name")))?
                    as u64,
            };
            m.set_field(f, n, u64::MAX)
        }
        Kind::Hex16 | Kind::Dec8 | Kind::Ports | Kind::Icmp | Kind::Hex => {
            let maskable = matches!(f.kind, Kind::Hex16 | Kind::Ports | Kind::Hex);
            let (val, mask) = split(v);
            let max = match f.kind {
                Kind::Dec8 | Kind::Icmp => 0xff,
                _ => ones(f.bits),
            };
            let n = parse_num(&val, name, max)?;
            let mk = match mask {
                Some(_) if !maskable => return err(format!("field '{name}' cannot be masked")),
                Some(mk) => parse_num(&mk, name, ones(f.bits))?,
                None => u64::MAX,
            };
            m.set_field(f, n & mk, mk)
        }
        Kind::CtState => {
            let (val, mask) = parse_ct_state(v)?;
            m.set_field(f, val as u64, mask as u64)
        }
        Kind::Hex128 => {
            let (val, mask) = split(v);
            let n = parse_u128(&val, name)?;
            let mk = match mask {
                Some(mk) => parse_u128(&mk, name)?,
                None => u128::MAX,
            };
            let lo = FieldDef { word: f.word + 1, ..*f };
            m.set_field(f, ((n & mk) >> 64) as u64, (mk >> 64) as u64)?;
            m.set_field(&lo, (n & mk) as u64, mk as u64)
        }
        Kind::Tos => {
            let n = parse_num(v, name, 0xff)?;
            if n & 3 != 0 {
                return err(format!("nw_tos value '{v}' has ECN bits set (nw_tos matches the DSCP bits, 0xfc)"));
            }
            m.set_field(f, n, 0xfc)
        }
        Kind::Mac => {
            let (val, mask) = split(v);
            let a: MacAddr =
                val.parse().map_err(|_| FlowParseError(format!("{name} value '{val}' is not a MAC address")))?;
            let mk = match mask {
                Some(mk) => mk
                    .parse::<MacAddr>()
                    .map_err(|_| FlowParseError(format!("{name} mask '{mk}' is not a MAC mask")))?,
                None => MacAddr::BROADCAST,
            };
            m.set_field(f, a.to_u64() & mk.to_u64(), mk.to_u64())
        }
        Kind::Ipv4 => {
            let (a, mk) = parse_ipv4_masked(v, name)?;
            m.set_field(f, a as u64, mk as u64)
        }
        Kind::Ip => {
            let lo = FieldDef { word: f.word + 1, ..*f };
            if v.split('/').next().is_some_and(|a| a.contains(':')) {
                let (a, mk) = parse_ipv6_masked(v, name)?;
                m.set_field(f, (a >> 64) as u64, (mk >> 64) as u64)?;
                m.set_field(&lo, a as u64, mk as u64)?;
                m.set_field(&DL_TYPE, ethertype::IPV6 as u64, u64::MAX)
                    .map_err(|_| FlowParseError(format!("{name} value '{v}' is IPv6 but the match is not")))
            } else {
                let (a, mk) = parse_ipv4_masked(v, name)?;
                m.set_field(&lo, a as u64, mk as u64)?;
                m.set_field(&DL_TYPE, ethertype::IPV4 as u64, u64::MAX)
                    .map_err(|_| FlowParseError(format!("{name} value '{v}' is IPv4 but the match is not")))
            }
        }
    }
}

/// Checks OpenFlow's prerequisites once every field is in: `names` are
/// the field names as written (fields that share bits, like `tp_dst` and
/// `icmp_code`, have different prerequisites).
pub(crate) fn check_prerequisites(m: &Match, names: &[&str]) -> Result<(), FlowParseError> {
    let dl_type = m.dl_type();
    let proto = m.nw_proto();
    let is_ip = matches!(dl_type, Some(ethertype::IPV4 | ethertype::IPV6));
    let arp = dl_type == Some(ethertype::ARP);
    for &name in names {
        let Some(f) = lookup_field(name) else { continue };
        let ok = match f.prereq {
            Prereq::None => true,
            Prereq::Ip => is_ip || (arp && f.kind == Kind::Dec8 && f.shift == 48 && f.word == 1),
            Prereq::Arp => arp,
            Prereq::Transport => is_ip && matches!(proto, Some(6 | 17 | 132)),
            Prereq::Icmp => {
                (dl_type == Some(ethertype::IPV4) && proto == Some(1))
                    || (dl_type == Some(ethertype::IPV6) && proto == Some(58))
            }
        };
        if !ok {
            let need = match f.prereq {
                Prereq::None => "",
                Prereq::Ip => "dl_type ip or ipv6 (e.g. 'ip,')",
                Prereq::Arp => "dl_type arp ('arp,')",
                Prereq::Transport => "nw_proto tcp, udp or sctp (e.g. 'tcp,')",
                Prereq::Icmp => "icmp or icmp6",
            };
            return err(format!("{name} requires {need}"));
        }
    }
    if arp && (m.field(&NW_SRC).1 != 0 || m.field(&NW_DST).1 != 0) {
        return err("nw_src and nw_dst do not apply to arp; use arp_spa and arp_tpa");
    }
    Ok(())
}

/// Parses `ct_state`: `+trk+est-new` (each flag set or clear, others
/// ignored) or a number with an optional mask.
fn parse_ct_state(v: &str) -> Result<(u8, u8), FlowParseError> {
    if !v.starts_with(['+', '-']) {
        let (val, mask) = v.split_once('/').map_or((v, None), |(a, b)| (a, Some(b)));
        let n = parse_num(val, "ct_state", 0xff)? as u8;
        let m = match mask {
            Some(mk) => parse_num(mk, "ct_state", 0xff)? as u8,
            None => 0xff,
        };
        return Ok((n & m, m));
    }
    let (mut val, mut mask) = (0u8, 0u8);
    let mut rest = v;
    while !rest.is_empty() {
        let set = rest.starts_with('+');
        if !set && !rest.starts_with('-') {
            return err(format!("ct_state '{v}': flags must each start with '+' or '-'"));
        }
        let end = rest[1..].find(['+', '-']).map_or(rest.len(), |i| i + 1);
        let name = &rest[1..end];
        let Some(&(_, bit)) = ct_state::NAMES.iter().find(|(n, _)| *n == name) else {
            let known: Vec<&str> = ct_state::NAMES.iter().map(|(n, _)| *n).collect();
            return err(format!("ct_state '{v}': unknown flag '{name}' (one of {})", known.join(", ")));
        };
        if mask & bit != 0 && (val & bit != 0) != set {
            return err(format!("ct_state '{v}': '{name}' is both set and cleared"));
        }
        mask |= bit;
        if set {
            val |= bit;
        }
        rest = &rest[end..];
    }
    Ok((val, mask))
}

/// `ct_state` as flags, in bit order (`+` for bits of `v`, `-` for the
/// other bits of `m`).
pub(crate) fn fmt_ct_state(v: u8, m: u8) -> String {
    let mut out = String::new();
    for (name, bit) in ct_state::NAMES {
        if m & bit != 0 {
            out.push(if v & bit != 0 { '+' } else { '-' });
            out.push_str(name);
        }
    }
    out
}

/// Parses an unsigned number of up to 128 bits, decimal or `0x` hex.
pub(crate) fn parse_u128(s: &str, what: &str) -> Result<u128, FlowParseError> {
    let s = s.trim();
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u128::from_str_radix(h, 16),
        None => s.parse::<u128>(),
    };
    r.map_err(|_| FlowParseError(format!("{what} value '{s}' is not a 128-bit number")))
}

fn fmt_ipv4(v: u64, m: u64) -> String {
    let a = Ipv4Addr::from(v as u32);
    let m = m as u32;
    if m == u32::MAX {
        a.to_string()
    } else if m.leading_ones() + m.trailing_zeros() == 32 {
        format!("{a}/{}", m.leading_ones())
    } else {
        format!("{a}/{}", Ipv4Addr::from(m))
    }
}

fn fmt_ipv6(v: u128, m: u128) -> String {
    let a = Ipv6Addr::from(v);
    if m == u128::MAX {
        a.to_string()
    } else if m.leading_ones() + m.trailing_zeros() == 128 {
        format!("{a}/{}", m.leading_ones())
    } else {
        format!("{a}/{}", Ipv6Addr::from(m))
    }
}

impl Match {
    /// The canonical `ovs-ofctl` text of this match (empty for match-all).
    pub fn to_text(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        let dl_type = self.dl_type();
        let proto = self.nw_proto();
        let short = SHORTHANDS
            .iter()
            .find(|(_, et, p)| Some(*et) == dl_type && p.is_some() && *p == proto)
            .or_else(|| SHORTHANDS.iter().find(|(_, et, p)| Some(*et) == dl_type && p.is_none()));
        let (mut print_type, mut print_proto) = (self.field(&DL_TYPE).1 != 0, self.field(&NW_PROTO).1 != 0);
        if let Some((name, _, p)) = short {
            parts.push(name.to_string());
            print_type = false;
            if p.is_some() {
                print_proto = false;
            }
        }
        if print_type {
            let (v, m) = self.field(&DL_TYPE);
            parts.push(if m == 0xffff { format!("dl_type={v:#06x}") } else { format!("dl_type={v:#06x}/{m:#06x}") });
        }
        let (tv, tm) = self.field(&VLAN_TCI);
        if tm != 0 {
            let present = tv & VLAN_PRESENT as u64 != 0;
            match tm {
                0xffff if tv == 0 => parts.push("dl_vlan=0xffff".into()),
                0x1fff if present => parts.push(format!("dl_vlan={}", tv & 0xfff)),
                0xf000 if present => parts.push(format!("dl_vlan_pcp={}", tv >> 13)),
                0xffff if present => {
                    parts.push(format!("dl_vlan={}", tv & 0xfff));
                    parts.push(format!("dl_vlan_pcp={}", tv >> 13));
                }
                _ => parts.push(format!("vlan_tci={tv:#06x}/{tm:#06x}")),
            }
        }
        if print_proto {
            let (v, _) = self.field(&NW_PROTO);
            let name = if dl_type == Some(ethertype::ARP) { "arp_op" } else { "nw_proto" };
            parts.push(format!("{name}={v}"));
        }
        let v6 = dl_type == Some(ethertype::IPV6);
        let arp = dl_type == Some(ethertype::ARP);
        let icmp = matches!(proto, Some(1 | 58));
        for f in PRINTED.iter().copied().chain(REGS.iter()) {
            // Fields that share bits: print the one the match's type means.
            let applies = match f.prereq {
                Prereq::Arp => arp,
                Prereq::Ip => !arp,
                Prereq::Icmp => icmp,
                Prereq::Transport => !icmp,
                Prereq::None => true,
            };
            if !applies {
                continue;
            }
            let (v, m) = self.field(f);
            if f.kind == Kind::Hex128 {
                let lo = FieldDef { word: f.word + 1, ..*f };
                let (vl, ml) = self.field(&lo);
                let (v, m) = ((v as u128) << 64 | vl as u128, (m as u128) << 64 | ml as u128);
                if m != 0 {
                    parts.push(if m == u128::MAX {
                        format!("{}={v:#x}", f.name)
                    } else {
                        format!("{}={v:#x}/{m:#x}", f.name)
                    });
                }
                continue;
            }
            if f.kind == Kind::CtState {
                if m != 0 {
                    parts.push(format!("ct_state={}", fmt_ct_state(v as u8, m as u8)));
                }
                continue;
            }
            if f.kind == Kind::Ip {
                let lo = FieldDef { word: f.word + 1, ..*f };
                let (vl, ml) = self.field(&lo);
                if m == 0 && ml == 0 {
                    continue;
                }
                let text = if v6 {
                    fmt_ipv6((v as u128) << 64 | vl as u128, (m as u128) << 64 | ml as u128)
                } else {
                    fmt_ipv4(vl, ml)
                };
                let name = if v6 { f.name.replace("nw_", "ipv6_") } else { f.name.to_string() };
                parts.push(format!("{name}={text}"));
                continue;
            }
            if m == 0 {
                continue;
            }
            let full = m == ones(f.bits);
            let text = match f.kind {
                Kind::Mac if full => MacAddr::from_u64(v).to_string(),
                Kind::Mac => format!("{}/{}", MacAddr::from_u64(v), MacAddr::from_u64(m)),
                Kind::Ipv4 => fmt_ipv4(v, m),
                Kind::Tos => format!("{v}"),
                Kind::Hex if full => format!("{v:#x}"),
                Kind::Hex => format!("{v:#x}/{m:#x}"),
                Kind::Ports if !full => format!("{v:#x}/{m:#x}"),
                _ => format!("{v}"),
            };
            let name = if f.kind == Kind::Icmp && v6 { f.name.replace("icmp_", "icmpv6_") } else { f.name.to_string() };
            parts.push(format!("{name}={text}"));
        }
        let mut out = String::new();
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{p}");
        }
        out
    }
}
