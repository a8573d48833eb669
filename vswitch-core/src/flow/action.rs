//! Actions: what a rule does with the packets it matches, in `ovs-ofctl`
//! syntax, and the header rewrites they perform.
//!
//! Rewrites keep checksums right with incremental updates (RFC 1624 §3):
//! the IPv4 header checksum for address and TTL changes, and the TCP or UDP
//! checksum for address (pseudo-header) and port changes. A UDP checksum
//! of zero means "none" (RFC 768) and stays zero.

use super::ct_action::CtAction;
use std::fmt;
use std::net::Ipv4Addr;

use serde::Serialize;

use super::field::{Field, SubField};
use super::matching::{FlowParseError, Match, err, parse_num};
use super::packed::Headers;
use crate::packet::Packet;
use crate::port::PortNo;
use crate::wire::checksum::csum_replace;
use crate::wire::rewrite::Layout;
use crate::wire::{MacAddr, be16, ethertype};

/// One action of a rule. Actions run in order; every output action sends
/// the packet as it is at that point.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case", tag = "type", content = "arg")]
#[non_exhaustive]
pub enum Action {
    /// `output:PORT`: send out of that port (never back out of the input
    /// port; use `in_port` for that).
    Output(PortNo),
    /// `normal`: switch as a learning bridge (MAC learning, VLANs).
    Normal,
    /// `flood`: every port but the input port.
    Flood,
    /// `all`: every port but the input port (there is no per-port
    /// no-flood setting yet, so the same as `flood`).
    All,
    /// `in_port`: back out of the input port.
    InPort,
    /// `mod_vlan_vid:VID`: set the VLAN ID, pushing a tag if there is none.
    SetVlanVid(u16),
    /// `mod_vlan_pcp:PCP`: set the priority, pushing a tag if there is none.
    SetVlanPcp(u8),
    /// `push_vlan:TPID`: push a new outer tag (VID 0).
    PushVlan(u16),
    /// `strip_vlan` (or `pop_vlan`): remove the outer tag, if any.
    StripVlan,
    /// `mod_dl_src:MAC`.
    SetDlSrc(MacAddr),
    /// `mod_dl_dst:MAC`.
    SetDlDst(MacAddr),
    /// `mod_nw_src:IPv4`.
    SetNwSrc(Ipv4Addr),
    /// `mod_nw_dst:IPv4`.
    SetNwDst(Ipv4Addr),
    /// `mod_tp_src:PORT`.
    SetTpSrc(u16),
    /// `mod_tp_dst:PORT`.
    SetTpDst(u16),
    /// `dec_ttl`: decrement the IPv4 TTL or IPv6 hop limit; a packet whose
    /// TTL would reach zero is dropped (counted as `ttl_expired`).
    DecTtl,
    /// `set_tunnel:ID` (or `set_field:ID->tun_id`): the tunnel key used by
    /// a tunnel port the packet is output to.
    SetTunnelId(u64),
    /// `set_field:IP->tun_dst`: the remote endpoint, for flow-based tunnel
    /// ports.
    SetTunnelDst(Ipv4Addr),
    /// `set_field:VALUE[/MASK]->FIELD` or `load:VALUE->FIELD[a..b]`: the
    /// field's bits under `mask` become those of `value` (registers,
    /// `metadata`, `pkt_mark`, or a header field, which is rewritten in
    /// the packet too).
    SetField {
        /// The field written.
        field: Field,
        /// The new bits (already within `mask`).
        value: u64,
        /// Which bits change.
        mask: u64,
    },
    /// `move:SRC[a..b]->DST[c..d]`: copies bits from one field to another.
    Move {
        /// Where the bits come from.
        src: SubField,
        /// Where they go (as wide as `src`).
        dst: SubField,
    },
    /// `resubmit(PORT,TABLE)` / `resubmit(,TABLE)` / `resubmit:PORT`: looks
    /// the packet up again in `table` (this rule's table when `None`), as
    /// if it came from `port` (its input port when `None`), runs that
    /// rule's actions, and carries on here.
    Resubmit {
        /// The input port for the lookup (`None`: unchanged).
        port: Option<PortNo>,
        /// The table (`None`: the current one).
        table: Option<u8>,
    },
    /// `goto_table:N`: continues in a later table; the last action.
    GotoTable(u8),
    /// `clone(ACTIONS)`: runs `ACTIONS` on a copy of the packet; changes
    /// they make are not seen by the actions after it.
    Clone(Vec<Action>),
    /// `note:HEX`: does nothing; carries bytes for people reading rules.
    Note(Vec<u8>),
    /// `group:N`: runs the group's buckets (see [`GroupSpec`](super::GroupSpec)).
    Group(u32),
    /// `ct(...)`: connection tracking (see [`CtAction`]).
    Ct(Box<CtAction>),
    /// `ct_clear`: forgets what conntrack found (the `ct_*` fields are
    /// zero again).
    CtClear,
}

/// Appends the groups `actions` send to (inside `clone` too).
pub(crate) fn groups_in(actions: &[Action], out: &mut Vec<u32>) {
    for a in actions {
        match a {
            Action::Group(g) => out.push(*g),
            Action::Clone(inner) => groups_in(inner, out),
            _ => {}
        }
    }
}

/// How deep resubmits and gotos may nest for one packet before it is
/// dropped (as `resubmit_limit`); Open vSwitch's limit too.
pub const MAX_DEPTH: u32 = 64;
/// How many lookups one packet may make in all (Open vSwitch: 4096).
pub const MAX_LOOKUPS: u32 = 4096;

impl Action {
    /// True for the actions that send the packet somewhere.
    pub fn is_output(&self) -> bool {
        matches!(self, Action::Output(_) | Action::Normal | Action::Flood | Action::All | Action::InPort)
    }

    /// True for the actions that use the packet as it is at that point:
    /// outputs, and those that run more actions on it.
    pub fn uses_packet(&self) -> bool {
        self.is_output()
            || matches!(self, Action::Resubmit { .. } | Action::GotoTable(_) | Action::Clone(_) | Action::Group(_))
            // Every `ct`: one after the packet's last output still commits.
            || matches!(self, Action::Ct(_))
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Output(p) => write!(f, "output:{p}"),
            Action::Normal => f.write_str("NORMAL"),
            Action::Flood => f.write_str("FLOOD"),
            Action::All => f.write_str("ALL"),
            Action::InPort => f.write_str("IN_PORT"),
            Action::SetVlanVid(v) => write!(f, "mod_vlan_vid:{v}"),
            Action::SetVlanPcp(v) => write!(f, "mod_vlan_pcp:{v}"),
            Action::PushVlan(t) => write!(f, "push_vlan:{t:#06x}"),
            Action::StripVlan => f.write_str("strip_vlan"),
            Action::SetDlSrc(m) => write!(f, "mod_dl_src:{m}"),
            Action::SetDlDst(m) => write!(f, "mod_dl_dst:{m}"),
            Action::SetNwSrc(a) => write!(f, "mod_nw_src:{a}"),
            Action::SetNwDst(a) => write!(f, "mod_nw_dst:{a}"),
            Action::SetTpSrc(p) => write!(f, "mod_tp_src:{p}"),
            Action::SetTpDst(p) => write!(f, "mod_tp_dst:{p}"),
            Action::DecTtl => f.write_str("dec_ttl"),
            Action::SetTunnelId(id) => write!(f, "set_tunnel:{id:#x}"),
            Action::SetTunnelDst(a) => write!(f, "set_field:{a}->tun_dst"),
            Action::SetField { field, value, mask } => {
                let full = super::packed::ones(field.bits());
                let name = field.name();
                if *mask == 0 {
                    write!(f, "set_field:{value:#x}/0x0->{name}")
                } else if *mask == full && field.is_metadata() {
                    write!(f, "set_field:{value:#x}->{name}")
                } else if *mask == full {
                    // (`set_field` on a header field means its own action.)
                    write!(f, "load:{value:#x}->{name}[]")
                } else if mask.count_ones() == 64 - mask.leading_zeros() - mask.trailing_zeros() {
                    let sub =
                        SubField { field: *field, ofs: mask.trailing_zeros() as u8, n_bits: mask.count_ones() as u8 };
                    write!(f, "load:{:#x}->{sub}", value >> mask.trailing_zeros())
                } else {
                    write!(f, "set_field:{value:#x}/{mask:#x}->{name}")
                }
            }
            Action::Move { src, dst } => write!(f, "move:{src}->{dst}"),
            Action::Resubmit { port, table } => {
                let p =
                    port.map_or(if table.is_none() { "in_port".to_string() } else { String::new() }, |p| p.to_string());
                match table {
                    Some(t) => write!(f, "resubmit({p},{t})"),
                    None => write!(f, "resubmit({p},)"),
                }
            }
            Action::GotoTable(t) => write!(f, "goto_table:{t}"),
            Action::Group(g) => write!(f, "group:{g}"),
            Action::Clone(inner) => write!(f, "clone({})", actions_to_text(inner)),
            Action::Ct(ct) => write!(f, "{ct}"),
            Action::CtClear => f.write_str("ct_clear"),
            Action::Note(bytes) => {
                f.write_str("note:")?;
                for (i, b) in bytes.iter().enumerate() {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }
    }
}

/// Splits `text` at the commas that are not inside parentheses.
pub(crate) fn split_top_level(text: &str) -> Result<Vec<&str>, FlowParseError> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth.checked_sub(1).ok_or_else(|| FlowParseError(format!("unbalanced ')' in '{text}'")))?;
            }
            ',' if depth == 0 => {
                out.push(text[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return err(format!("unbalanced '(' in '{text}'"));
    }
    out.push(text[start..].trim());
    Ok(out.into_iter().filter(|s| !s.is_empty()).collect())
}

/// Parses a `set_field`/`load` value for `field`: a number, or for
/// address fields an address.
fn parse_field_value(field: Field, v: &str) -> Result<u64, FlowParseError> {
    let v = v.trim();
    match field {
        Field::EthSrc | Field::EthDst if v.contains(':') => Ok(parse_mac(v, "set_field")?.to_u64()),
        Field::IpSrc | Field::IpDst | Field::TunDst if v.contains('.') => {
            Ok(u32::from(parse_v4(v, "set_field")?) as u64)
        }
        _ => parse_num(v, "set_field", super::packed::ones(field.bits())),
    }
}

fn parse_resubmit(arg: &str, ports: &dyn Fn(&str) -> Option<u32>) -> Result<Action, FlowParseError> {
    let (p, t) = arg.split_once(',').map_or((arg, None), |(p, t)| (p, Some(t)));
    let port = match p.trim() {
        "" | "in_port" => None,
        p => Some(parse_port(p, ports)?),
    };
    let table = match t.map(str::trim) {
        None | Some("") | Some("255") => None,
        Some(t) => Some(parse_num(t, "resubmit table", 254)? as u8),
    };
    if port.is_none() && table.is_none() && !p.trim().eq_ignore_ascii_case("in_port") {
        return err("resubmit needs a port or a table ('resubmit(,1)')");
    }
    Ok(Action::Resubmit { port, table })
}

fn parse_note(arg: &str) -> Result<Action, FlowParseError> {
    let hex: String = arg.chars().filter(|c| !matches!(c, '.' | ' ')).collect();
    if !hex.is_ascii() {
        return err(format!("note '{arg}' is not hex bytes"));
    }
    if !hex.len().is_multiple_of(2) {
        return err(format!("note '{arg}' must be whole hex bytes"));
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map(Action::Note)
        .map_err(|_| FlowParseError(format!("note '{arg}' is not hex bytes")))
}

/// `set_field:VALUE[/MASK]->FIELD` for fields with no dedicated action.
fn parse_set_field(value: &str, field: &str) -> Result<Action, FlowParseError> {
    let Some(f) = Field::from_name(field) else {
        return err(format!("set_field cannot set '{field}'"));
    };
    if !f.is_writable() {
        return err(format!("set_field cannot set '{field}'"));
    }
    let full = super::packed::ones(f.bits());
    let (v, m) = value.split_once('/').map_or((value, None), |(v, m)| (v, Some(m)));
    let v = parse_field_value(f, v)?;
    let mask = match m {
        Some(m) => parse_field_value(f, m)?,
        None => full,
    };
    if mask == 0 {
        return err(format!("set_field mask 0 on {field} sets nothing"));
    }
    Ok(Action::SetField { field: f, value: v & mask, mask })
}

/// `load:VALUE->DST[a..b]`.
fn parse_load(arg: &str) -> Result<Action, FlowParseError> {
    let Some((value, dst)) = arg.split_once("->") else {
        return err(format!("load argument '{arg}' must be 'VALUE->FIELD[a..b]'"));
    };
    let dst = SubField::parse(dst)?;
    if !dst.field.is_writable() {
        return err(format!("load cannot write '{}'", dst.field.name()));
    }
    let v = parse_num(value.trim(), "load", super::packed::ones(dst.n_bits as u32))?;
    Ok(Action::SetField { field: dst.field, value: v << dst.ofs, mask: dst.mask() })
}

/// `move:SRC[a..b]->DST[c..d]`.
fn parse_move(arg: &str) -> Result<Action, FlowParseError> {
    let Some((src, dst)) = arg.split_once("->") else {
        return err(format!("move argument '{arg}' must be 'SRC[a..b]->DST[c..d]'"));
    };
    let (src, dst) = (SubField::parse(src)?, SubField::parse(dst)?);
    if src.n_bits != dst.n_bits {
        return err(format!("move: {src} is {} bits but {dst} is {}", src.n_bits, dst.n_bits));
    }
    if !dst.field.is_writable() {
        return err(format!("move cannot write '{}'", dst.field.name()));
    }
    Ok(Action::Move { src, dst })
}

/// Formats an action list as `ovs-ofctl` does (`drop` when empty).
pub fn actions_to_text(actions: &[Action]) -> String {
    if actions.is_empty() {
        return "drop".into();
    }
    actions.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

fn parse_port(s: &str, ports: &dyn Fn(&str) -> Option<u32>) -> Result<PortNo, FlowParseError> {
    match parse_num(s, "output port", 0xff00) {
        Ok(n) if n > 0 => Ok(n as PortNo),
        _ => ports(s)
            .ok_or_else(|| FlowParseError(format!("output port '{s}' is not a port number (1 to 65280) or name"))),
    }
}

fn parse_mac(s: &str, what: &str) -> Result<MacAddr, FlowParseError> {
    s.parse().map_err(|_| FlowParseError(format!("{what} argument '{s}' is not a MAC address")))
}

fn parse_v4(s: &str, what: &str) -> Result<Ipv4Addr, FlowParseError> {
    s.parse().map_err(|_| FlowParseError(format!("{what} argument '{s}' is not an IPv4 address")))
}

/// Parses the text after `actions=`.
pub(crate) fn parse_actions(text: &str, ports: &dyn Fn(&str) -> Option<u32>) -> Result<Vec<Action>, FlowParseError> {
    parse_actions_nested(text, ports, 0)
}

/// How deep `clone(...)` may nest in one rule (each level is a copy of
/// the packet; the executor's nesting limit applies as well).
pub const MAX_NESTING: u32 = 16;

fn parse_actions_nested(
    text: &str,
    ports: &dyn Fn(&str) -> Option<u32>,
    depth: u32,
) -> Result<Vec<Action>, FlowParseError> {
    if depth > MAX_NESTING {
        return err(format!("clone() nests deeper than {MAX_NESTING} levels"));
    }
    let items = split_top_level(text)?;
    if items.is_empty() {
        return err("'actions=' needs at least one action (or 'drop')");
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        // `name(args)` for the actions that nest or take a list.
        if let Some(open) = item.find('(')
            && item.ends_with(')')
            && !item[..open].contains(':')
        {
            let (name, inner) = (item[..open].trim().to_ascii_lowercase(), &item[open + 1..item.len() - 1]);
            out.push(match name.as_str() {
                "resubmit" => parse_resubmit(inner, ports)?,
                "clone" => Action::Clone(parse_actions_nested(inner, ports, depth + 1)?),
                "ct" => Action::Ct(Box::new(super::ct_action::parse_ct(inner)?)),
                other => return err(format!("unknown action '{other}'")),
            });
            continue;
        }
        let (name, arg) = match item.split_once(':') {
            Some((n, a)) => (n.trim(), Some(a.trim())),
            None => (*item, None),
        };
        let need =
            |what: &str| arg.ok_or_else(|| FlowParseError(format!("action '{what}' needs an argument ('{what}:...')")));
        let lname = name.to_ascii_lowercase();
        let a = match lname.as_str() {
            "output" => Action::Output(parse_port(need("output")?, ports)?),
            "normal" => Action::Normal,
            "flood" => Action::Flood,
            "all" => Action::All,
            "in_port" => Action::InPort,
            "drop" => {
                if items.len() > 1 {
                    return err("'drop' must be the only action");
                }
                return Ok(Vec::new());
            }
            "mod_vlan_vid" => Action::SetVlanVid(parse_num(need("mod_vlan_vid")?, "mod_vlan_vid", 4095)? as u16),
            "mod_vlan_pcp" => Action::SetVlanPcp(parse_num(need("mod_vlan_pcp")?, "mod_vlan_pcp", 7)? as u8),
            "push_vlan" => {
                let t = parse_num(need("push_vlan")?, "push_vlan", 0xffff)? as u16;
                if t != ethertype::VLAN && t != ethertype::QINQ {
                    return err(format!("push_vlan TPID {t:#06x} must be 0x8100 or 0x88a8"));
                }
                Action::PushVlan(t)
            }
            "strip_vlan" | "pop_vlan" => Action::StripVlan,
            "mod_dl_src" => Action::SetDlSrc(parse_mac(need("mod_dl_src")?, "mod_dl_src")?),
            "mod_dl_dst" => Action::SetDlDst(parse_mac(need("mod_dl_dst")?, "mod_dl_dst")?),
            "mod_nw_src" => Action::SetNwSrc(parse_v4(need("mod_nw_src")?, "mod_nw_src")?),
            "mod_nw_dst" => Action::SetNwDst(parse_v4(need("mod_nw_dst")?, "mod_nw_dst")?),
            "mod_tp_src" => Action::SetTpSrc(parse_num(need("mod_tp_src")?, "mod_tp_src", 0xffff)? as u16),
            "mod_tp_dst" => Action::SetTpDst(parse_num(need("mod_tp_dst")?, "mod_tp_dst", 0xffff)? as u16),
            "dec_ttl" => Action::DecTtl,
            "ct" => Action::Ct(Box::default()),
            "ct_clear" => Action::CtClear,
            "resubmit" => parse_resubmit(need("resubmit")?, ports)?,
            "goto_table" => {
                let t = parse_num(need("goto_table")?, "goto_table", 254)? as u8;
                if i + 1 != items.len() {
                    return err("goto_table must be the last action");
                }
                Action::GotoTable(t)
            }
            "load" => parse_load(need("load")?)?,
            "group" => Action::Group(parse_num(need("group")?, "group", super::group::MAX_GROUP_ID as u64)? as u32),
            "move" => parse_move(need("move")?)?,
            "note" => parse_note(need("note")?)?,
            "set_tunnel" | "set_tunnel64" => {
                Action::SetTunnelId(parse_num(need("set_tunnel")?, "set_tunnel", u64::MAX)?)
            }
            "set_field" => {
                let a = need("set_field")?;
                let Some((value, field)) = a.split_once("->") else {
                    return err(format!("set_field argument '{a}' must be 'VALUE->FIELD'"));
                };
                match field.trim() {
                    // A masked value is a partial write: the general form.
                    f if value.contains('/') => parse_set_field(value, f)?,
                    "tun_id" | "tunnel_id" => Action::SetTunnelId(parse_num(value, "set_field", u64::MAX)?),
                    "tun_dst" => Action::SetTunnelDst(parse_v4(value, "set_field")?),
                    "eth_src" | "dl_src" => Action::SetDlSrc(parse_mac(value, "set_field")?),
                    "eth_dst" | "dl_dst" => Action::SetDlDst(parse_mac(value, "set_field")?),
                    "ip_src" | "nw_src" => Action::SetNwSrc(parse_v4(value, "set_field")?),
                    "ip_dst" | "nw_dst" => Action::SetNwDst(parse_v4(value, "set_field")?),
                    "tp_src" | "tcp_src" | "udp_src" => Action::SetTpSrc(parse_num(value, "set_field", 0xffff)? as u16),
                    "tp_dst" | "tcp_dst" | "udp_dst" => Action::SetTpDst(parse_num(value, "set_field", 0xffff)? as u16),
                    "vlan_vid" => Action::SetVlanVid(parse_num(value, "set_field", 4095)? as u16),
                    other => parse_set_field(value, other)?,
                }
            }
            _ if arg.is_none() && name.bytes().all(|b| b.is_ascii_digit()) => Action::Output(parse_port(name, ports)?),
            _ => return err(format!("unknown action '{name}'")),
        };
        out.push(a);
    }
    Ok(out)
}

/// Checks that header rewrites have the match they need (OpenFlow's
/// action prerequisites), and that `goto_table` goes forward from the
/// rule's table.
pub(crate) fn check_action_prerequisites(actions: &[Action], m: &Match) -> Result<(), FlowParseError> {
    let ip = m.dl_type() == Some(ethertype::IPV4);
    let l4 = matches!(m.nw_proto(), Some(6 | 17));
    for a in actions {
        let header_field = |f: &Field| match f {
            Field::IpSrc | Field::IpDst if !ip => Some("an IPv4 match ('ip,')"),
            Field::TpSrc | Field::TpDst if !(ip || m.dl_type() == Some(ethertype::IPV6)) || !l4 => {
                Some("a tcp or udp match")
            }
            _ => None,
        };
        match a {
            Action::GotoTable(t) if *t <= m.table().unwrap_or(0) => {
                return err(format!(
                    "goto_table:{t} must go to a later table than this rule's ({})",
                    m.table().unwrap_or(0)
                ));
            }
            Action::SetField { field, .. } | Action::Move { dst: SubField { field, .. }, .. }
                if header_field(field).is_some() =>
            {
                return err(format!("{a} requires {}", header_field(field).expect("checked")));
            }
            Action::Move { src: SubField { field, .. }, .. } if header_field(field).is_some() => {
                return err(format!("{a} requires {}", header_field(field).expect("checked")));
            }
            Action::Clone(inner) => check_action_prerequisites(inner, m)?,
            Action::SetNwSrc(_) | Action::SetNwDst(_) if m.dl_type() != Some(ethertype::IPV4) => {
                return err(format!("{a} requires an IPv4 match ('ip,')"));
            }
            Action::SetTpSrc(_) | Action::SetTpDst(_) if !matches!(m.nw_proto(), Some(6 | 17)) => {
                return err(format!("{a} requires a tcp or udp match"));
            }
            Action::DecTtl if !matches!(m.dl_type(), Some(ethertype::IPV4 | ethertype::IPV6)) => {
                return err("dec_ttl requires an ip or ipv6 match");
            }
            _ => {}
        }
    }
    Ok(())
}

fn get16(d: &[u8], at: usize) -> u16 {
    be16(d, at)
}

fn put16(d: &mut [u8], at: usize, v: u16) {
    d[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// The rewriter for the headers `h` locates (checksums as the parser and
/// the packet's offload state say).
fn layout(d: &[u8], h: &Headers) -> Layout {
    Layout::new(d, h.l3, h.l4, h.dl_type == ethertype::IPV6, h.nw_proto, h.partial_csum)
}

/// Rewrites the IPv4 source (`src`) or destination address.
pub(crate) fn set_ipv4_addr(p: &mut Packet, h: &Headers, src: bool, addr: Ipv4Addr) {
    if h.dl_type != ethertype::IPV4 {
        return;
    }
    let d = p.data_mut();
    layout(d, h).set_addr(d, src, addr.into());
}

/// Rewrites the TCP/UDP source (`src`) or destination port.
pub(crate) fn set_l4_port(p: &mut Packet, h: &Headers, src: bool, port: u16) {
    let d = p.data_mut();
    layout(d, h).set_port(d, src, port, false);
}

/// Decrements the TTL / hop limit; false if the packet must be dropped.
pub(crate) fn dec_ttl(p: &mut Packet, h: &Headers) -> bool {
    let d = p.data_mut();
    match h.dl_type {
        ethertype::IPV4 if h.l3 + 20 <= d.len() => {
            let ttl = d[h.l3 + 8];
            if ttl <= 1 {
                return false;
            }
            let old = get16(d, h.l3 + 8);
            d[h.l3 + 8] = ttl - 1;
            let c = csum_replace(get16(d, h.l3 + 10), old, get16(d, h.l3 + 8));
            put16(d, h.l3 + 10, c);
            true
        }
        ethertype::IPV6 if h.l3 + 40 <= d.len() => {
            if d[h.l3 + 7] <= 1 {
                return false;
            }
            d[h.l3 + 7] -= 1;
            true
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::checksum::complete_l4_checksum;

    #[test]
    fn completes_a_partial_udp_checksum() {
        let mut p = udp_packet();
        let good = p.data().to_vec();
        // A partial checksum: only the pseudo-header sum, as offload leaves it.
        p.data_mut()[40..42].copy_from_slice(&[0x12, 0x34]);
        complete_l4_checksum(p.data_mut());
        assert_eq!(p.data(), &good[..]);
    }

    // The Internet checksum computed from scratch, to check updates.
    use crate::wire::checksum::internet_checksum as checksum;

    fn udp_packet() -> Packet {
        let mut f = vec![0u8; 14 + 20 + 8 + 6];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&34u16.to_be_bytes());
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
        ip[16..20].copy_from_slice(&[10, 0, 0, 2]);
        let c = checksum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        f[34..36].copy_from_slice(&1000u16.to_be_bytes());
        f[36..38].copy_from_slice(&53u16.to_be_bytes());
        f[38..40].copy_from_slice(&14u16.to_be_bytes());
        f[42..48].copy_from_slice(b"hello!");
        let c = udp_checksum(&f);
        f[40..42].copy_from_slice(&c.to_be_bytes());
        Packet::from_frame(&f)
    }

    fn udp_checksum(f: &[u8]) -> u16 {
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&f[26..34]);
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&f[38..40]);
        let mut seg = f[34..].to_vec();
        seg[6] = 0;
        seg[7] = 0;
        pseudo.extend_from_slice(&seg);
        checksum(&pseudo)
    }

    const H: Headers = Headers { dl_type: 0x0800, l3: 14, l4: 34, nw_proto: 17, partial_csum: false };

    #[test]
    fn address_rewrite_keeps_checksums_valid() {
        let mut p = udp_packet();
        set_ipv4_addr(&mut p, &H, true, Ipv4Addr::new(192, 168, 77, 9));
        set_ipv4_addr(&mut p, &H, false, Ipv4Addr::new(172, 16, 0, 200));
        let d = p.data();
        assert_eq!(&d[26..34], &[192, 168, 77, 9, 172, 16, 0, 200]);
        assert_eq!(checksum(&d[14..34]), 0, "IPv4 header checksum verifies");
        assert_eq!(u16::from_be_bytes([d[40], d[41]]), udp_checksum(d), "UDP checksum matches a fresh one");
    }

    #[test]
    fn port_rewrite_and_ttl() {
        let mut p = udp_packet();
        set_l4_port(&mut p, &H, false, 5353);
        assert!(dec_ttl(&mut p, &H));
        let d = p.data();
        assert_eq!(u16::from_be_bytes([d[36], d[37]]), 5353);
        assert_eq!(d[22], 63);
        assert_eq!(checksum(&d[14..34]), 0);
        assert_eq!(u16::from_be_bytes([d[40], d[41]]), udp_checksum(d));
        let mut p = udp_packet();
        p.data_mut()[22] = 1;
        assert!(!dec_ttl(&mut p, &H), "TTL 1 cannot be forwarded");
    }

    #[test]
    fn zero_udp_checksum_stays_zero() {
        let mut p = udp_packet();
        p.data_mut()[40..42].copy_from_slice(&[0, 0]);
        set_ipv4_addr(&mut p, &H, true, Ipv4Addr::new(1, 2, 3, 4));
        assert_eq!(&p.data()[40..42], &[0, 0]);
    }

    #[test]
    fn parse_and_format_every_action() {
        let ports = |s: &str| (s == "vm2").then_some(2);
        let text = "output:3,NORMAL,FLOOD,ALL,IN_PORT,mod_vlan_vid:10,mod_vlan_pcp:5,push_vlan:0x8100,strip_vlan,\
                    mod_dl_src:02:00:00:00:00:01,mod_dl_dst:02:00:00:00:00:02,mod_nw_src:10.1.1.1,mod_nw_dst:10.2.2.2,\
                    mod_tp_src:1,mod_tp_dst:2,dec_ttl,set_tunnel:0x2a,set_field:192.168.0.9->tun_dst";
        let a = parse_actions(text, &ports).unwrap();
        assert_eq!(a.len(), 18);
        assert_eq!(actions_to_text(&a), text);
        assert_eq!(parse_actions("output:vm2,4", &ports).unwrap(), vec![Action::Output(2), Action::Output(4)]);
        assert_eq!(parse_actions("drop", &ports).unwrap(), vec![]);
        assert_eq!(parse_actions("set_field:0x10->tun_id", &ports).unwrap(), vec![Action::SetTunnelId(16)]);
    }

    #[test]
    fn pipeline_actions_parse_and_print() {
        let ports = |s: &str| (s == "vm2").then_some(2);
        let text = "set_field:0x5->reg0,load:0x3->reg1[4..7],set_field:0x1/0x5->metadata,move:reg0[0..7]->pkt_mark[8..15],\
                    resubmit(,3),resubmit(2,),resubmit(2,4),clone(mod_vlan_vid:7,output:2),note:01.ab,goto_table:9";
        let a = parse_actions(text, &ports).unwrap();
        assert_eq!(actions_to_text(&a), text);
        assert_eq!(a[1], Action::SetField { field: Field::Reg(1), value: 0x30, mask: 0xf0 });
        assert_eq!(parse_actions(&actions_to_text(&a), &ports).unwrap(), a);
        // A whole header field loaded prints as a load, which parses back
        // to the same action (set_field on it would be the field's own).
        for text in
            ["load:0xa000001->ip_src[]", "load:0x2a->tun_id[]", "set_field:0x3->in_port", "load:0x1->vlan_vid[0]"]
        {
            let a = parse_actions(text, &ports).unwrap();
            assert_eq!(actions_to_text(&a), text);
        }
        for text in ["set_field:0x1/0x5->dl_vlan", "set_field:0x1/0x5->ETH_SRC", "set_field:0x10->NXM_NX_TUN_ID"] {
            let a = parse_actions(text, &ports).unwrap();
            assert_eq!(parse_actions(&actions_to_text(&a), &ports).unwrap(), a, "{text}");
        }
        assert_eq!(
            parse_actions("resubmit:vm2,load:1->NXM_NX_REG3[],set_field:7->xreg2", &ports).unwrap(),
            vec![
                Action::Resubmit { port: Some(2), table: None },
                Action::SetField { field: Field::Reg(3), value: 1, mask: 0xffff_ffff },
                Action::SetField { field: Field::Xreg(2), value: 7, mask: u64::MAX },
            ]
        );
        for (bad, why) in [
            ("goto_table:3,output:1", "last action"),
            ("load:0x10->reg0[0..3]", "out of range"),
            ("move:reg0[0..3]->reg1[0..4]", "is 4 bits but"),
            ("clone(output:1", "unbalanced"),
            ("resubmit(,)", "needs a port or a table"),
            ("note:abc", "whole hex bytes"),
            ("set_field:1->eth_type", "cannot set"),
            ("frobnicate(1)", "unknown action 'frobnicate'"),
            ("note:a\u{20ac}", "not hex bytes"),
            ("set_field:0/0->reg0", "sets nothing"),
            (format!("{}drop{}", "clone(".repeat(40), ")".repeat(40)).leak(), "nests deeper"),
        ] {
            let e = parse_actions(bad, &ports).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn action_errors_name_the_token() {
        let ports = |_: &str| None;
        for (text, msg) in [
            ("outptu:1", "unknown action 'outptu'"),
            ("output:vm9", "output port 'vm9'"),
            ("mod_vlan_vid:5000", "out of range"),
            ("drop,output:1", "'drop' must be the only action"),
            ("mod_nw_src:zz", "'zz' is not an IPv4 address"),
            ("push_vlan:0x0800", "must be 0x8100 or 0x88a8"),
            ("set_field:1->nw_ttl", "cannot set 'nw_ttl'"),
            ("output", "needs an argument"),
            ("", "at least one action"),
        ] {
            let e = parse_actions(text, &ports).unwrap_err().to_string();
            assert!(e.contains(msg), "{text}: {e}");
        }
    }
}
