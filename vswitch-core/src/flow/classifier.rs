//! Tuple-space search: one hash table per distinct mask (Open vSwitch's
//! dpcls idea). A lookup masks the key with each subtable's mask and
//! probes that subtable's table. Subtables are visited in order of the
//! highest priority they hold, and the search stops as soon as the best
//! match found outranks every rule left unvisited, so a table whose
//! high-priority rules catch most traffic probes few subtables.
//!
//! Ties between rules of equal priority that both match (OpenFlow leaves
//! that undefined) go to the rule added first.

use std::collections::{BTreeMap, HashMap};

use super::matching::Match;
use super::packed::PackedKey;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Rank of a rule: higher priority first, then earlier insertion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    priority: u16,
    seq: u64,
    id: u32,
}

impl Entry {
    #[inline]
    fn beats(&self, other: &Entry) -> bool {
        self.priority > other.priority || (self.priority == other.priority && self.seq < other.seq)
    }
}

#[derive(Debug)]
struct Subtable {
    mask: PackedKey,
    /// Masked value to the rules with it, best first.
    buckets: FastMap<PackedKey, Vec<Entry>>,
    /// How many rules hold each priority (for the maximum).
    priorities: BTreeMap<u16, usize>,
    /// The highest priority held, kept for the lookup's early exit.
    max_priority: u16,
}

/// A set of rules (by id) searched for the best match of a packed key.
#[derive(Debug, Default)]
pub struct Classifier {
    subtables: Vec<Subtable>,
    by_mask: FastMap<PackedKey, usize>,
    /// Subtable indices by descending maximum priority.
    order: Vec<usize>,
    len: usize,
}

impl Classifier {
    /// An empty classifier.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if there are no rules.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of distinct masks (subtables).
    pub fn subtables(&self) -> usize {
        self.subtables.len()
    }

    /// Adds rule `id`; `seq` orders rules of equal priority (lower wins).
    pub fn insert(&mut self, id: u32, m: &Match, priority: u16, seq: u64) {
        let si = match self.by_mask.get(&m.mask) {
            Some(&i) => i,
            None => {
                self.subtables.push(Subtable {
                    mask: m.mask,
                    buckets: FastMap::default(),
                    priorities: BTreeMap::new(),
                    max_priority: 0,
                });
                let i = self.subtables.len() - 1;
                self.by_mask.insert(m.mask, i);
                i
            }
        };
        let st = &mut self.subtables[si];
        let e = Entry { priority, seq, id };
        let bucket = st.buckets.entry(m.value).or_default();
        let pos = bucket.partition_point(|x| x.beats(&e));
        bucket.insert(pos, e);
        *st.priorities.entry(priority).or_default() += 1;
        self.len += 1;
        self.reorder();
    }

    /// Removes rule `id`, which was inserted with `m` and `priority`.
    pub fn remove(&mut self, id: u32, m: &Match, priority: u16) {
        let Some(&si) = self.by_mask.get(&m.mask) else { return };
        let st = &mut self.subtables[si];
        let Some(bucket) = st.buckets.get_mut(&m.value) else { return };
        let Some(pos) = bucket.iter().position(|e| e.id == id) else { return };
        bucket.remove(pos);
        if bucket.is_empty() {
            st.buckets.remove(&m.value);
        }
        if let Some(n) = st.priorities.get_mut(&priority) {
            *n -= 1;
            if *n == 0 {
                st.priorities.remove(&priority);
            }
        }
        self.len -= 1;
        if st.buckets.is_empty() {
            // Drop the empty subtable, moving the last one into its place.
            self.by_mask.remove(&m.mask);
            self.subtables.swap_remove(si);
            if si < self.subtables.len() {
                let moved = self.subtables[si].mask;
                self.by_mask.insert(moved, si);
            }
        }
        self.reorder();
    }

    fn reorder(&mut self) {
        for st in &mut self.subtables {
            st.max_priority = st.priorities.keys().next_back().copied().unwrap_or(0);
        }
        self.order.clear();
        self.order.extend(0..self.subtables.len());
        let st = &self.subtables;
        self.order.sort_by_key(|&i| std::cmp::Reverse(st[i].max_priority));
    }

    /// The id of the best rule matching `key`, if any.
    #[inline]
    pub fn lookup(&self, key: &PackedKey) -> Option<u32> {
        let mut best: Option<Entry> = None;
        for &si in &self.order {
            let st = &self.subtables[si];
            if best.is_some_and(|b| b.priority > st.max_priority) {
                break;
            }
            if let Some(bucket) = st.buckets.get(&key.masked(&st.mask))
                && let Some(e) = bucket.first()
                && best.is_none_or(|b| e.beats(&b))
            {
                best = Some(*e);
            }
        }
        best.map(|e| e.id)
    }
}
