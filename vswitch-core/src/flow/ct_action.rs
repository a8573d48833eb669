//! The `ct` action: `ct([commit][,force][,zone=N|zone=FIELD[a..b]]
//! [,table=T][,nat[(...)]][,exec(set_field:V->ct_mark|ct_label)])`, as
//! `ovs-actions(7)` defines it. The executor runs it (see
//! `datapath/exec.rs`); conntrack itself is [`crate::conntrack`].

use std::fmt;

use serde::Serialize;

use super::action::split_top_level;
use super::field::SubField;
use super::matching::{FlowParseError, err, parse_num, parse_u128 as parse_wide};
use crate::conntrack::{Nat, parse_nat};

/// The zone a `ct` action tracks in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum CtZone {
    /// `zone=N`.
    Value(u16),
    /// `zone=reg0[0..15]`: read from the packet's metadata.
    Field(SubField),
}

/// A `ct` action (see docs/conntrack.md).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct CtAction {
    /// Commit the connection (create its entry) if it is new.
    pub commit: bool,
    /// With `commit`: a connection seen in its reply direction is
    /// removed and committed anew in this direction.
    pub force: bool,
    /// The zone.
    pub zone: CtZone,
    /// Continue in this table with the `ct_*` fields set (on a copy of
    /// the packet unless the action is the packet's last use); `None`: the
    /// packet goes on through the following actions, translated if `nat`.
    pub table: Option<u8>,
    /// NAT to apply or, on commit, set up.
    pub nat: Option<Nat>,
    /// `exec(set_field:V/M->ct_mark)` on commit: value and mask.
    pub mark: Option<(u32, u32)>,
    /// `exec(set_field:V/M->ct_label)` on commit: value and mask.
    pub label: Option<(u128, u128)>,
}

impl Default for CtAction {
    fn default() -> Self {
        CtAction {
            commit: false,
            force: false,
            zone: CtZone::Value(0),
            table: None,
            nat: None,
            mark: None,
            label: None,
        }
    }
}

/// One `exec(...)` action: sets the mark or label bits.
fn parse_exec_item(ct: &mut CtAction, item: &str) -> Result<(), FlowParseError> {
    let (value, target) = if let Some(a) = item.strip_prefix("set_field:") {
        let Some((v, f)) = a.split_once("->") else {
            return err(format!("ct exec: '{item}' must be 'set_field:VALUE[/MASK]->ct_mark|ct_label'"));
        };
        let (v, m) = v.split_once('/').map_or((v, None), |(v, m)| (v, Some(m)));
        let mask = m.map(|m| parse_wide(m, "ct exec mask")).transpose()?;
        (Some((parse_wide(v, "ct exec")?, mask)), f.trim().to_ascii_lowercase())
    } else if let Some(a) = item.strip_prefix("load:") {
        let Some((v, dst)) = a.split_once("->") else {
            return err(format!("ct exec: '{item}' must be 'load:VALUE->ct_mark[a..b]'"));
        };
        let (name, range) = dst.split_once('[').unwrap_or((dst, ""));
        let range = range.trim_end_matches(']');
        let (lo, hi) = match range.split_once("..") {
            Some((a, b)) => (parse_num(a.trim(), "ct exec bit", 127)?, parse_num(b.trim(), "ct exec bit", 127)?),
            None if range.is_empty() => (0, 127),
            None => {
                let b = parse_num(range.trim(), "ct exec bit", 127)?;
                (b, b)
            }
        };
        if lo > hi {
            return err(format!("ct exec: '{dst}' is not a bit range"));
        }
        let width = hi - lo + 1;
        let ones = if width >= 128 { u128::MAX } else { (1u128 << width) - 1 };
        let v = parse_wide(v, "ct exec")?;
        if v > ones {
            return err(format!("ct exec: {v:#x} does not fit in {dst}"));
        }
        (Some((v << lo, Some(ones << lo))), name.trim().to_ascii_lowercase())
    } else {
        return err(format!("ct exec can only set ct_mark or ct_label ('{item}')"));
    };
    let Some((v, m)) = value else { unreachable!("set above") };
    match target.as_str() {
        "ct_mark" | "nxm_nx_ct_mark" => {
            let m = m.unwrap_or(u32::MAX as u128);
            if v > u32::MAX as u128 || m > u32::MAX as u128 {
                return err(format!("ct exec: {v:#x} does not fit in ct_mark (32 bits)"));
            }
            ct.mark = Some(((v & m) as u32, m as u32));
        }
        "ct_label" | "nxm_nx_ct_label" => {
            let m = m.unwrap_or(u128::MAX);
            ct.label = Some((v & m, m));
        }
        other => return err(format!("ct exec can only set ct_mark or ct_label, not '{other}'")),
    }
    Ok(())
}

/// Parses the inside of `ct(...)`.
pub(crate) fn parse_ct(arg: &str) -> Result<CtAction, FlowParseError> {
    let mut ct = CtAction::default();
    for item in split_top_level(arg)? {
        let lower = item.to_ascii_lowercase();
        match lower.as_str() {
            "commit" => ct.commit = true,
            "force" => ct.force = true,
            "nat" => ct.nat = Some(Nat::Existing),
            _ if lower.starts_with("nat(") && lower.ends_with(')') => {
                ct.nat = Some(parse_nat(&item[4..item.len() - 1])?);
            }
            _ if lower.starts_with("exec(") && lower.ends_with(')') => {
                for a in split_top_level(&item[5..item.len() - 1])? {
                    parse_exec_item(&mut ct, a)?;
                }
            }
            _ if lower.starts_with("zone=") => {
                let z = &item[5..];
                ct.zone = if z.contains('[') || z.chars().next().is_some_and(|c| c.is_ascii_alphabetic()) {
                    let sub = SubField::parse(z)?;
                    if sub.n_bits > 16 {
                        return err(format!("ct zone={z}: at most 16 bits"));
                    }
                    CtZone::Field(sub)
                } else {
                    CtZone::Value(parse_num(z, "ct zone", 0xffff)? as u16)
                };
            }
            _ if lower.starts_with("table=") => ct.table = Some(parse_num(&item[6..], "ct table", 254)? as u8),
            _ if lower.starts_with("alg=") => {
                return err(format!("ct: application helpers ('{item}') are not supported"));
            }
            _ => return err(format!("ct: unknown argument '{item}'")),
        }
    }
    if ct.force && !ct.commit {
        return err("ct: 'force' needs 'commit'");
    }
    if (ct.mark.is_some() || ct.label.is_some()) && !ct.commit {
        return err("ct: exec(...) needs 'commit'");
    }
    if matches!(ct.nat, Some(Nat::Range(_))) && !ct.commit {
        return err("ct: a nat(src=...)/nat(dst=...) range needs 'commit' (use 'nat' alone for existing connections)");
    }
    Ok(ct)
}

impl fmt::Display for CtAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if self.commit {
            parts.push("commit".into());
        }
        if self.force {
            parts.push("force".into());
        }
        if let Some(t) = self.table {
            parts.push(format!("table={t}"));
        }
        match self.zone {
            CtZone::Value(0) => {}
            CtZone::Value(z) => parts.push(format!("zone={z}")),
            CtZone::Field(s) => parts.push(format!("zone={s}")),
        }
        let mut exec = Vec::new();
        if let Some((v, m)) = self.mark {
            exec.push(if m == u32::MAX {
                format!("set_field:{v:#x}->ct_mark")
            } else {
                format!("set_field:{v:#x}/{m:#x}->ct_mark")
            });
        }
        if let Some((v, m)) = self.label {
            exec.push(if m == u128::MAX {
                format!("set_field:{v:#x}->ct_label")
            } else {
                format!("set_field:{v:#x}/{m:#x}->ct_label")
            });
        }
        if !exec.is_empty() {
            parts.push(format!("exec({})", exec.join(",")));
        }
        if let Some(n) = &self.nat {
            parts.push(n.to_string());
        }
        write!(f, "ct({})", parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for (text, canonical) in [
            ("", "ct()"),
            ("commit", "ct(commit)"),
            ("zone=5,table=1", "ct(table=1,zone=5)"),
            ("table=1,zone=NXM_NX_REG6[0..15],nat", "ct(table=1,zone=reg6[0..15],nat)"),
            ("commit,nat(src=192.0.2.1:1024-65535)", "ct(commit,nat(src=192.0.2.1:1024-65535))"),
            ("commit,exec(set_field:0x1->ct_mark)", "ct(commit,exec(set_field:0x1->ct_mark))"),
            ("commit,exec(load:1->NXM_NX_CT_LABEL[3])", "ct(commit,exec(set_field:0x8/0x8->ct_label))"),
            ("commit,force,zone=65535", "ct(commit,force,zone=65535)"),
        ] {
            let ct = parse_ct(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(ct.to_string(), canonical, "{text}");
            let inner = &canonical[3..canonical.len() - 1];
            assert_eq!(parse_ct(inner).unwrap(), ct, "{canonical} parses back");
        }
        for bad in [
            "force",
            "exec(set_field:1->ct_mark)",
            "nat(src=1.2.3.4)",
            "zone=65536",
            "table=255",
            "commit,exec(set_field:1->reg0)",
            "commit,exec(set_field:0x100000000->ct_mark)",
            "alg=ftp",
            "bogus",
        ] {
            assert!(parse_ct(bad).is_err(), "{bad}");
        }
    }
}
