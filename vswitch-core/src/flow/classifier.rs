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
use std::hash::{BuildHasherDefault, Hasher};

use super::matching::Match;
use super::packed::{PackedKey, WORDS};

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The subtable maps are keyed by a hash the classifier computed itself
/// (over the mask's words only), so the map must not hash again.
#[derive(Debug, Default)]
struct PrehashedKey(u64);

impl Hasher for PrehashedKey {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are used; fold anything else in for completeness.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ b as u64;
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type PrehashedMap<V> = HashMap<u64, V, BuildHasherDefault<PrehashedKey>>;

/// Rules sharing one masked value.
#[derive(Debug)]
struct Bucket {
    value: PackedKey,
    /// Best first.
    entries: Vec<Entry>,
}

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
    /// Indices of the mask's non-zero words: only these are hashed and
    /// compared (a mask usually touches two or three of the ten).
    words: [u8; WORDS],
    n_words: usize,
    /// Hash of the masked words to the buckets with that hash.
    buckets: PrehashedMap<Vec<Bucket>>,
    /// How many rules hold each priority (for the maximum).
    priorities: BTreeMap<u16, usize>,
    /// The highest priority held, kept for the lookup's early exit.
    max_priority: u16,
    /// Rules in this subtable.
    len: usize,
}

impl Subtable {
    fn new(mask: PackedKey) -> Self {
        let mut words = [0u8; WORDS];
        let mut n_words = 0;
        for (i, &w) in mask.0.iter().enumerate() {
            if w != 0 {
                words[n_words] = i as u8;
                n_words += 1;
            }
        }
        Subtable {
            mask,
            words,
            n_words,
            buckets: PrehashedMap::default(),
            priorities: BTreeMap::new(),
            max_priority: 0,
            len: 0,
        }
    }

    /// Hash of `key` under this subtable's mask.
    #[inline]
    fn hash(&self, key: &PackedKey) -> u64 {
        let mut h: u64 = 0x243f_6a88_85a3_08d3;
        for &w in &self.words[..self.n_words] {
            let v = key.0[w as usize] & self.mask.0[w as usize];
            h = (h ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            h ^= h >> 32;
        }
        h
    }

    /// True if `key` under the mask equals the (masked) `value`.
    #[inline]
    fn same(&self, key: &PackedKey, value: &PackedKey) -> bool {
        self.words[..self.n_words].iter().all(|&w| key.0[w as usize] & self.mask.0[w as usize] == value.0[w as usize])
    }
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
                self.subtables.push(Subtable::new(m.mask));
                let i = self.subtables.len() - 1;
                self.by_mask.insert(m.mask, i);
                i
            }
        };
        let st = &mut self.subtables[si];
        let e = Entry { priority, seq, id };
        let h = st.hash(&m.value);
        let chain = st.buckets.entry(h).or_default();
        let bucket = match chain.iter().position(|b| b.value == m.value) {
            Some(i) => &mut chain[i],
            None => {
                chain.push(Bucket { value: m.value, entries: Vec::with_capacity(1) });
                chain.last_mut().expect("just pushed")
            }
        };
        let pos = bucket.entries.partition_point(|x| x.beats(&e));
        bucket.entries.insert(pos, e);
        st.len += 1;
        *st.priorities.entry(priority).or_default() += 1;
        self.len += 1;
        self.reorder();
    }

    /// Removes rule `id`, which was inserted with `m` and `priority`.
    pub fn remove(&mut self, id: u32, m: &Match, priority: u16) {
        let Some(&si) = self.by_mask.get(&m.mask) else { return };
        let st = &mut self.subtables[si];
        let h = st.hash(&m.value);
        let Some(chain) = st.buckets.get_mut(&h) else { return };
        let Some(bi) = chain.iter().position(|b| b.value == m.value) else { return };
        let Some(pos) = chain[bi].entries.iter().position(|e| e.id == id) else { return };
        chain[bi].entries.remove(pos);
        if chain[bi].entries.is_empty() {
            chain.swap_remove(bi);
            if chain.is_empty() {
                st.buckets.remove(&h);
            }
        }
        st.len -= 1;
        if let Some(n) = st.priorities.get_mut(&priority) {
            *n -= 1;
            if *n == 0 {
                st.priorities.remove(&priority);
            }
        }
        self.len -= 1;
        if st.len == 0 {
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
            let Some(chain) = st.buckets.get(&st.hash(key)) else { continue };
            for bucket in chain {
                if st.same(key, &bucket.value)
                    && let Some(e) = bucket.entries.first()
                    && best.is_none_or(|b| e.beats(&b))
                {
                    best = Some(*e);
                }
            }
        }
        best.map(|e| e.id)
    }
}
