//! The control side's copy of a bridge's rules.
//!
//! [`RuleSet`] is the truth that listings, selections and the saved
//! configuration are read from, with no datapath thread involved: a
//! `del-flows` selects its rules here and sends the datapath threads only
//! the identities to remove; `dump-flows` and a save read here. Each rule
//! shares its [`RuleStats`] with every datapath thread's copy, so the
//! counters read here are the datapath's. It has no classifier: it is
//! never asked which rule a packet matches.

use std::collections::HashMap;
use std::sync::Arc;

use super::identity::IdentityIndex;
use super::spec::{FlowSelector, FlowSpec, FlowStats};
use super::table::{RuleKey, RuleStats, TableError, flow_stats, is_expired};

#[derive(Debug)]
struct Entry {
    spec: FlowSpec,
    stats: Arc<RuleStats>,
    /// Order of addition, for a stable listing.
    seq: u64,
}

/// Entries by identity: a slab of entries and an [`IdentityIndex`] into it
/// (so the index does not hold a second copy of every match).
#[derive(Debug, Default)]
struct Rules {
    slots: Vec<Option<Entry>>,
    free: Vec<u32>,
    index: IdentityIndex,
    len: usize,
}

impl Rules {
    fn slot_of(&self, k: &RuleKey) -> Option<u32> {
        self.index.get(k, &self.slots, |e| e.spec.identity())
    }

    fn contains_key(&self, k: &RuleKey) -> bool {
        self.slot_of(k).is_some()
    }

    fn get(&self, k: &RuleKey) -> Option<&Entry> {
        self.slot_of(k).and_then(|s| self.slots[s as usize].as_ref())
    }

    fn get_mut(&mut self, k: &RuleKey) -> Option<&mut Entry> {
        self.slot_of(k).and_then(|s| self.slots[s as usize].as_mut())
    }

    fn insert(&mut self, k: RuleKey, e: Entry) -> Option<Entry> {
        if let Some(s) = self.slot_of(&k) {
            return self.slots[s as usize].replace(e);
        }
        let s = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        self.slots[s as usize] = Some(e);
        self.index.insert(&k, s);
        self.len += 1;
        None
    }

    fn remove(&mut self, k: &RuleKey) -> Option<Entry> {
        let s = self.index.remove(k, &self.slots, |e| e.spec.identity())?;
        self.free.push(s);
        self.len -= 1;
        self.slots[s as usize].take()
    }

    fn len(&self) -> usize {
        self.len
    }

    fn values(&self) -> impl Iterator<Item = &Entry> {
        self.slots.iter().flatten()
    }

    fn iter(&self) -> impl Iterator<Item = (RuleKey, &Entry)> {
        self.values().map(|e| (e.spec.identity(), e))
    }
}

/// A bridge's rules, by identity (match and priority).
#[derive(Debug)]
pub(crate) struct RuleSet {
    rules: Rules,
    next_seq: u64,
    limit: usize,
    /// Rules with a timeout (expiry is skipped while there are none).
    timed: usize,
}

fn timed(spec: &FlowSpec) -> bool {
    spec.idle_timeout != 0 || spec.hard_timeout != 0
}

impl RuleSet {
    /// An empty set holding at most `limit` rules.
    pub(crate) fn new(limit: usize) -> RuleSet {
        RuleSet { rules: Rules::default(), next_seq: 0, limit, timed: 0 }
    }

    pub(crate) fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether `specs` fit: a rule replacing one of the same identity
    /// takes no room. Counted as each datapath copy counts
    /// ([`FlowTable::add_with_stats`](super::FlowTable::add_with_stats)),
    /// so the two never disagree near the limit.
    pub(crate) fn check_room(&self, specs: &[(FlowSpec, Arc<RuleStats>)]) -> Result<(), TableError> {
        if self.len() + specs.len() <= self.limit {
            // Fits even if every one is new: no need to look.
            return Ok(());
        }
        let new = specs.iter().filter(|(s, _)| !self.rules.contains_key(&s.identity())).count();
        if self.len() + new > self.limit { Err(TableError::Full) } else { Ok(()) }
    }

    /// Adds rules, each replacing one of the same identity; the caller has
    /// checked [`check_room`](Self::check_room).
    pub(crate) fn add(&mut self, specs: Vec<(FlowSpec, Arc<RuleStats>)>) {
        for (spec, stats) in specs {
            let seq = self.next_seq;
            self.next_seq += 1;
            if timed(&spec) {
                self.timed += 1;
            }
            if let Some(old) = self.rules.insert(spec.identity(), Entry { spec, stats, seq })
                && timed(&old.spec)
            {
                self.timed -= 1;
            }
        }
    }

    /// The identities of the rules `sel` selects (OpenFlow's loose or
    /// strict selection).
    pub(crate) fn select(&self, sel: &FlowSelector, strict: bool) -> Vec<RuleKey> {
        if strict {
            return sel
                .strict_keys()
                .filter(|k| self.rules.get(k).is_some_and(|e| sel.cookie_matches(e.spec.cookie)))
                .collect();
        }
        self.rules
            .iter()
            .filter(|(_, e)| sel.matching.covers(&e.spec.matching) && sel.cookie_matches(e.spec.cookie))
            .map(|(k, _)| k)
            .collect()
    }

    /// The identities of the rules whose actions `pred` accepts.
    pub(crate) fn select_where(&self, pred: impl Fn(&[super::Action]) -> bool) -> Vec<RuleKey> {
        self.rules.iter().filter(|(_, e)| pred(&e.spec.actions)).map(|(k, _)| k).collect()
    }

    /// How many rules send to each group.
    pub(crate) fn group_refs(&self) -> HashMap<u32, usize> {
        let mut refs = HashMap::new();
        for e in self.rules.values() {
            let mut used = Vec::new();
            super::groups_in(&e.spec.actions, &mut used);
            used.sort_unstable();
            used.dedup();
            for g in used {
                *refs.entry(g).or_default() += 1;
            }
        }
        refs
    }

    /// The rule with identity `k` and its counters.
    pub(crate) fn get(&self, k: &RuleKey) -> Option<(&FlowSpec, &Arc<RuleStats>)> {
        self.rules.get(k).map(|e| (&e.spec, &e.stats))
    }

    /// Removes these rules; returns those that were there.
    pub(crate) fn remove(&mut self, keys: &[RuleKey]) -> Vec<FlowSpec> {
        let removed: Vec<FlowSpec> = keys.iter().filter_map(|k| self.rules.remove(k)).map(|e| e.spec).collect();
        self.timed -= removed.iter().filter(|s| timed(s)).count();
        removed
    }

    /// Replaces the actions of these rules (counters kept); returns the
    /// rules as they now are.
    pub(crate) fn modify(&mut self, keys: &[RuleKey], actions: &[super::Action]) -> Vec<FlowSpec> {
        let mut changed = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some(e) = self.rules.get_mut(k) {
                e.spec.actions = actions.to_vec();
                changed.push(e.spec.clone());
            }
        }
        changed
    }

    /// The identities of the rules whose timeout has passed at `now_ms`.
    pub(crate) fn expired(&self, now_ms: u64) -> Vec<RuleKey> {
        if self.timed == 0 {
            return Vec::new();
        }
        self.rules.iter().filter(|(_, e)| is_expired(&e.spec, &e.stats, now_ms)).map(|(k, _)| k).collect()
    }

    /// How many rules each table holds (tables with none left out).
    pub(crate) fn table_sizes(&self) -> std::collections::BTreeMap<u8, usize> {
        let mut sizes = std::collections::BTreeMap::new();
        for e in self.rules.values() {
            *sizes.entry(e.spec.table()).or_default() += 1;
        }
        sizes
    }

    /// The rules `sel` covers (loose), with their counters, as [`dump`](Self::dump) orders them.
    pub(crate) fn dump_selected(&self, sel: &FlowSelector, now_ms: u64) -> Vec<FlowStats> {
        self.ordered()
            .into_iter()
            .filter(|e| !is_expired(&e.spec, &e.stats, now_ms))
            .filter(|e| sel.matching.covers(&e.spec.matching) && sel.cookie_matches(e.spec.cookie))
            .map(|e| flow_stats(&e.spec, &e.stats, now_ms))
            .collect()
    }

    fn ordered(&self) -> Vec<&Entry> {
        let mut v: Vec<&Entry> = self.rules.values().collect();
        v.sort_unstable_by(|a, b| {
            (a.spec.table().cmp(&b.spec.table())).then(b.spec.priority.cmp(&a.spec.priority)).then(a.seq.cmp(&b.seq))
        });
        v
    }

    /// Every rule not expired at `now_ms`, with its counters, highest
    /// priority first, then in order of addition.
    pub(crate) fn dump(&self, now_ms: u64) -> Vec<FlowStats> {
        self.ordered()
            .into_iter()
            .filter(|e| !is_expired(&e.spec, &e.stats, now_ms))
            .map(|e| flow_stats(&e.spec, &e.stats, now_ms))
            .collect()
    }

    /// Every rule not expired at `now_ms` as canonical `ovs-ofctl` text,
    /// in [`dump`](Self::dump)'s order: what a saved configuration holds.
    pub(crate) fn texts(&self, now_ms: u64) -> Vec<String> {
        self.ordered()
            .into_iter()
            .filter(|e| !is_expired(&e.spec, &e.stats, now_ms))
            .map(|e| e.spec.to_text())
            .collect()
    }
}
