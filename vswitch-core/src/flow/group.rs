//! Group tables: `ovs-ofctl add-group` syntax and semantics.
//!
//! ```text
//! group_id=1,type=select,selection_method=hash,fields(ip_src,tp_dst),
//!     bucket=bucket_id:0,weight:100,actions=output:2,
//!     bucket=bucket_id:1,weight:50,actions=mod_dl_dst:02:00:00:00:00:09,output:3
//! ```
//!
//! `all` runs every bucket (each on a copy), `select` one bucket chosen by
//! a hash of the packet's fields, `indirect` its only bucket,
//! `fast_failover` the first bucket whose `watch_port` is up. As in Open
//! vSwitch, a bucket's actions run as inside `clone`: what they change is
//! not seen by the actions after the `group` action.
//!
//! `select` chooses by weighted rendezvous hashing: each live bucket scores
//! the packet's hash with its own id, weighted, and the best score wins.
//! So a bucket's share follows its weight, and removing (or adding) a
//! bucket moves only the flows that were (or will be) on it.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::action::{Action, actions_to_text, parse_actions, split_top_level};
use super::field::Field;
use super::matching::{FlowParseError, err, parse_num};
use super::packed::PackedKey;
use super::table::RuleStats;
use crate::port::PortNo;

/// How a group picks its buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum GroupType {
    /// Every bucket.
    All,
    /// One bucket, by a hash of the packet.
    Select,
    /// The one bucket.
    Indirect,
    /// The first bucket whose watched port is up.
    FastFailover,
}

impl GroupType {
    /// Its name, as `type=` spells it.
    pub fn name(self) -> &'static str {
        match self {
            GroupType::All => "all",
            GroupType::Select => "select",
            GroupType::Indirect => "indirect",
            GroupType::FastFailover => "fast_failover",
        }
    }
}

/// One bucket of a group.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Bucket {
    /// Its id (unique in the group; numbered in order when not given).
    pub bucket_id: u32,
    /// Its share of a select group's flows (default 1; 0: never chosen).
    pub weight: u16,
    /// For fast_failover: the port whose link decides whether it is live.
    pub watch_port: Option<PortNo>,
    /// What it does.
    pub actions: Vec<Action>,
}

/// A group as `add-group` gives it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupSpec {
    /// Its number (what `group:N` names), 0 to 0xffffff00.
    pub group_id: u32,
    /// How it picks buckets.
    pub kind: GroupType,
    /// For select: the fields hashed (`fields(...)`); empty: the
    /// addresses, protocol and ports (the 5-tuple, or the MACs for non-IP).
    pub fields: Vec<Field>,
    /// Its buckets.
    pub buckets: Vec<Bucket>,
}

/// The highest group number (OpenFlow's OFPG_MAX).
pub const MAX_GROUP_ID: u32 = 0xffff_ff00;

/// The most buckets a group may have.
pub const MAX_BUCKETS: usize = 256;

fn parse_bucket(text: &str, index: usize, ports: &dyn Fn(&str) -> Option<u32>) -> Result<Bucket, FlowParseError> {
    let mut b = Bucket { bucket_id: index as u32, weight: 1, watch_port: None, actions: Vec::new() };
    let items = split_top_level(text)?;
    let mut rest = Vec::new();
    for (i, item) in items.iter().enumerate() {
        if let Some(a) = item.strip_prefix("actions=") {
            rest.push(a);
            rest.extend(items[i + 1..].iter().copied());
            break;
        }
        match item.split_once(':') {
            Some(("bucket_id", v)) => b.bucket_id = parse_num(v, "bucket_id", 0xffff_ff00)? as u32,
            Some(("weight", v)) => b.weight = parse_num(v, "weight", 0xffff)? as u16,
            Some(("watch_port", v)) => {
                b.watch_port = Some(match parse_num(v, "watch_port", 0xff00) {
                    Ok(n) => n as PortNo,
                    Err(_) => ports(v).ok_or_else(|| FlowParseError(format!("watch_port '{v}' is not a port")))?,
                })
            }
            Some(("watch_group", _)) => return err("watch_group is not supported; use watch_port"),
            _ => rest.push(item),
        }
    }
    if !rest.is_empty() {
        b.actions = parse_actions(&rest.join(","), ports)?;
    }
    if b.actions.iter().any(|a| matches!(a, Action::GotoTable(_))) {
        return err("goto_table cannot be used in a group bucket (resubmit can)");
    }
    Ok(b)
}

impl GroupSpec {
    /// Parses a group as given to `add-group` (and `mod-group`).
    ///
    /// # Errors
    /// A [`FlowParseError`] naming the offending part.
    pub fn parse(text: &str, ports: &dyn Fn(&str) -> Option<u32>) -> Result<GroupSpec, FlowParseError> {
        // Buckets run to the next `bucket=`; everything before the first
        // is the group's own settings.
        let mut parts = text.split("bucket=");
        let head = parts.next().unwrap_or_default();
        let mut g = GroupSpec { group_id: u32::MAX, kind: GroupType::All, fields: Vec::new(), buckets: Vec::new() };
        let mut have_type = false;
        for item in split_top_level(head)? {
            let (name, value) = item.split_once('=').map_or((item, None), |(n, v)| (n.trim(), Some(v.trim())));
            match (name, value) {
                ("group_id", Some(v)) => g.group_id = parse_num(v, "group_id", MAX_GROUP_ID as u64)? as u32,
                ("type", Some(v)) => {
                    have_type = true;
                    g.kind = match v {
                        "all" => GroupType::All,
                        "select" => GroupType::Select,
                        "indirect" => GroupType::Indirect,
                        "fast_failover" | "ff" => GroupType::FastFailover,
                        other => {
                            return err(format!("group type '{other}' is not all, select, indirect or fast_failover"));
                        }
                    };
                }
                ("selection_method", Some("hash" | "dp_hash")) => {}
                ("selection_method", Some(other)) => {
                    return err(format!("selection_method '{other}' is not hash or dp_hash"));
                }
                _ if name.starts_with("fields(") && name.ends_with(')') => {
                    for f in name["fields(".len()..name.len() - 1].split(['+', ',']).filter(|s| !s.is_empty()) {
                        g.fields.push(
                            Field::from_name(f.trim())
                                .ok_or_else(|| FlowParseError(format!("unknown field '{f}' in fields()")))?,
                        );
                    }
                }
                _ => return err(format!("'{item}' is not a group setting (group_id, type, selection_method, fields)")),
            }
        }
        if g.group_id == u32::MAX {
            return err("a group needs 'group_id='");
        }
        if !have_type {
            return err("a group needs 'type=' (all, select, indirect or fast_failover)");
        }
        for (i, b) in parts.enumerate() {
            let b = b.trim().trim_end_matches(',');
            g.buckets.push(parse_bucket(b, i, ports)?);
        }
        if g.buckets.len() > MAX_BUCKETS {
            return err(format!("a group has at most {MAX_BUCKETS} buckets"));
        }
        let mut ids: Vec<u32> = g.buckets.iter().map(|b| b.bucket_id).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return err("two buckets have the same bucket_id");
        }
        if g.kind == GroupType::Indirect && g.buckets.len() != 1 {
            return err("an indirect group has exactly one bucket");
        }
        if !g.fields.is_empty() && g.kind != GroupType::Select {
            return err("fields() applies to select groups only");
        }
        if g.kind == GroupType::FastFailover && g.buckets.iter().any(|b| b.watch_port.is_none()) {
            return err("every bucket of a fast_failover group needs a watch_port");
        }
        Ok(g)
    }

    /// The group numbers this group's buckets send to (`group:N`).
    pub fn referenced_groups(&self) -> Vec<u32> {
        let mut v = Vec::new();
        for b in &self.buckets {
            super::action::groups_in(&b.actions, &mut v);
        }
        v
    }

    /// The canonical text: parses back to an equal group.
    pub fn to_text(&self) -> String {
        self.to_string()
    }

    /// The packet's hash for a select group: its fields (or the default
    /// ones) from the key.
    #[inline]
    pub(crate) fn select_hash(&self, key: &PackedKey) -> u64 {
        let mut h: u64 = 0x9ae1_6a3b_2f90_404f;
        let mut mix = |v: u64| {
            h = (h ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            h ^= h >> 31;
        };
        if self.fields.is_empty() {
            let ip = matches!(key.get(0, 32, 16) as u16, 0x0800 | 0x86dd);
            if ip {
                for w in [3, 4, 5, 6, 7] {
                    mix(key.0[w]);
                }
                mix(key.get(1, 48, 8));
            } else {
                mix(key.get(1, 0, 48));
                mix(key.get(2, 0, 48));
            }
        } else {
            for f in &self.fields {
                mix(f.get(key));
            }
        }
        h
    }

    /// The select bucket for a packet of hash `hash` among the buckets
    /// `live` admits: weighted rendezvous hashing.
    pub(crate) fn choose(&self, hash: u64, live: impl Fn(&Bucket) -> bool) -> Option<usize> {
        let mut best: Option<(f64, usize)> = None;
        for (i, b) in self.buckets.iter().enumerate() {
            if b.weight == 0 || !live(b) {
                continue;
            }
            let mut x = hash ^ (b.bucket_id as u64).wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
            x ^= x >> 33;
            x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
            x ^= x >> 33;
            // A uniform number in (0, 1), then -w / ln(u): the largest wins
            // with probability proportional to w.
            let u = ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            let score = -(b.weight as f64) / u.ln();
            if best.is_none_or(|(s, _)| score > s) {
                best = Some((score, i));
            }
        }
        best.map(|(_, i)| i)
    }
}

impl fmt::Display for GroupSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "group_id={},type={}", self.group_id, self.kind.name())?;
        if !self.fields.is_empty() {
            let names: Vec<String> = self.fields.iter().map(|f| f.name()).collect();
            write!(f, ",selection_method=hash,fields({})", names.join(","))?;
        }
        for b in &self.buckets {
            write!(f, ",bucket=bucket_id:{}", b.bucket_id)?;
            if b.weight != 1 {
                write!(f, ",weight:{}", b.weight)?;
            }
            if let Some(p) = b.watch_port {
                write!(f, ",watch_port:{p}")?;
            }
            write!(f, ",actions={}", actions_to_text(&b.actions))?;
        }
        Ok(())
    }
}

/// A group as the datapath runs it: its spec, and counters for it and for
/// each bucket, shared by every datapath thread's copy and the control side.
#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) spec: GroupSpec,
    pub(crate) stats: Arc<RuleStats>,
    pub(crate) buckets: Vec<Arc<RuleStats>>,
}

/// A bridge's groups, by number.
pub(crate) type GroupTable = HashMap<u32, Arc<Group>, foldhash::fast::RandomState>;

impl Group {
    /// A group with fresh counters for `threads` threads.
    pub(crate) fn new(spec: GroupSpec, now_ms: u64, threads: usize) -> Arc<Group> {
        let buckets = spec.buckets.iter().map(|_| RuleStats::new(now_ms, threads)).collect();
        Arc::new(Group { spec, stats: RuleStats::new(now_ms, threads), buckets })
    }

    /// Its row in `dump-groups`.
    pub(crate) fn dump(&self, ref_count: usize) -> GroupStats {
        GroupStats {
            group_id: self.spec.group_id,
            group: self.spec.to_text(),
            ref_count,
            packet_count: self.stats.packets(),
            byte_count: self.stats.bytes(),
            buckets: self
                .spec
                .buckets
                .iter()
                .zip(&self.buckets)
                .map(|(b, s)| BucketStats { bucket_id: b.bucket_id, packet_count: s.packets(), byte_count: s.bytes() })
                .collect(),
        }
    }
}

/// A bucket's counters, as `dump-groups` shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BucketStats {
    /// The bucket's id.
    pub bucket_id: u32,
    /// Packets it handled.
    pub packet_count: u64,
    /// Bytes in them.
    pub byte_count: u64,
}

/// A group with its counters, as `dump-groups` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct GroupStats {
    /// The group's number.
    pub group_id: u32,
    /// The group as text (canonical).
    pub group: String,
    /// Rules that send to it.
    pub ref_count: usize,
    /// Packets sent to it.
    pub packet_count: u64,
    /// Bytes in them.
    pub byte_count: u64,
    /// Per bucket.
    pub buckets: Vec<BucketStats>,
}

impl GroupStats {
    /// Two lines in `ovs-ofctl dump-groups` / `dump-group-stats` spirit.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            " {}\n  ref_count={},packet_count={},byte_count={}",
            self.group, self.ref_count, self.packet_count, self.byte_count
        );
        for b in &self.buckets {
            s.push_str(&format!(",bucket{}:packet_count={},byte_count={}", b.bucket_id, b.packet_count, b.byte_count));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> GroupSpec {
        GroupSpec::parse(s, &|n| (n == "vm2").then_some(2)).unwrap()
    }

    #[test]
    fn parse_print_round_trip() {
        for text in [
            "group_id=1,type=all,bucket=bucket_id:0,actions=output:1,bucket=bucket_id:1,actions=output:2",
            "group_id=7,type=select,selection_method=hash,fields(ip_src,tp_dst),bucket=bucket_id:0,weight:100,actions=output:2,bucket=bucket_id:5,weight:50,actions=mod_dl_dst:02:00:00:00:00:09,output:3",
            "group_id=3,type=fast_failover,bucket=bucket_id:0,watch_port:1,actions=output:1,bucket=bucket_id:1,watch_port:2,actions=output:2",
            "group_id=9,type=indirect,bucket=bucket_id:0,actions=drop",
        ] {
            let g = parse(text);
            assert_eq!(g.to_text(), text);
            assert_eq!(parse(&g.to_text()), g);
        }
        // Old-style buckets (actions straight after bucket=), port names.
        let g = parse("group_id=2,type=all,bucket=output:vm2,bucket=weight:3,output:1");
        assert_eq!(g.buckets[0].actions, vec![Action::Output(2)]);
        assert_eq!((g.buckets[1].bucket_id, g.buckets[1].weight), (1, 3));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        for (text, why) in [
            ("type=all,bucket=output:1", "group_id"),
            ("group_id=1,bucket=output:1", "type="),
            ("group_id=1,type=round_robin", "is not all, select"),
            ("group_id=1,type=indirect,bucket=output:1,bucket=output:2", "exactly one bucket"),
            ("group_id=1,type=fast_failover,bucket=output:1", "watch_port"),
            ("group_id=1,type=all,bucket=bucket_id:1,output:1,bucket=bucket_id:1,output:2", "same bucket_id"),
            ("group_id=1,type=all,fields(ip_src),bucket=output:1", "select groups only"),
            ("group_id=1,type=all,bucket=outptu:1", "unknown action"),
            ("group_id=1,type=all,bucket=goto_table:3", "cannot be used in a group bucket"),
        ] {
            let e = GroupSpec::parse(text, &|_| None).unwrap_err().0;
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn select_follows_weights_and_moves_only_a_removed_buckets_flows() {
        let g =
            parse("group_id=1,type=select,bucket=weight:1,output:1,bucket=weight:1,output:2,bucket=weight:2,output:3");
        let mut counts = [0usize; 3];
        let mut first = Vec::new();
        for flow in 0..40_000u64 {
            let h = flow.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let i = g.choose(h, |_| true).unwrap();
            counts[i] += 1;
            first.push(i);
        }
        for (i, want) in [(0, 10_000.0), (1, 10_000.0), (2, 20_000.0)] {
            assert!((counts[i] as f64 - want).abs() < want * 0.05, "{counts:?}");
        }
        // Bucket 1 gone: its flows move, nobody else's.
        for (flow, &was) in first.iter().enumerate() {
            let h = (flow as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let now = g.choose(h, |b| b.bucket_id != 1).unwrap();
            if was != 1 {
                assert_eq!(now, was);
            } else {
                assert_ne!(now, 1);
            }
        }
    }
}
