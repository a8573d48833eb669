//! A bridge's flow tables (0 to 254): the rules, their counters and
//! timeouts, one classifier per table, and the exact-match cache in front
//! of them all (its key carries the table being searched, so a packet's
//! trip through several tables is one probe per table).
//!
//! The table is owned by the datapath thread and changed only between
//! bursts (the control plane sends the change as a closure), so a packet
//! sees the table entirely before or entirely after a change, and the fast
//! path takes no lock. Every change moves the table's generation, which
//! invalidates the exact-match cache.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::action::Action;
use super::classifier::Classifier;
use super::matching::Match;
use super::packed::{METADATA_WORD, PackedKey, PackedParse, WORDS};
use super::spec::{FlowSelector, FlowSpec, FlowStats};

/// Exact-match cache sets (a power of two), of two entries each.
const EMC_SETS: usize = 4096;
/// "No rule matched", cached.
const NO_RULE: u32 = u32::MAX;
/// How often timeouts are checked.
const EXPIRY_INTERVAL_MS: u64 = 1000;

/// Default maximum number of rules in one table.
pub const DEFAULT_FLOW_LIMIT: usize = 1_000_000;

/// One datapath thread's counts for a rule.
#[derive(Debug, Default)]
struct ThreadCounts {
    packets: AtomicU64,
    bytes: AtomicU64,
    last_used_ms: AtomicU64,
}

/// A rule's counters, shared by the copies of the rule that several
/// datapath threads hold, so counts and idle timeouts see every thread's
/// traffic. Each thread writes only its own cache-padded slot, with plain
/// loads and stores (no locked instruction on the fast path); readers add
/// the slots up, as Open vSwitch does with its per-thread flow stats.
#[derive(Debug)]
pub struct RuleStats {
    created_ms: u64,
    per_thread: Box<[crossbeam::utils::CachePadded<ThreadCounts>]>,
}

impl RuleStats {
    /// Fresh counters for a rule added at `now_ms`, for `threads` threads.
    pub fn new(now_ms: u64, threads: usize) -> Arc<RuleStats> {
        let per_thread = (0..threads.max(1))
            .map(|_| {
                crossbeam::utils::CachePadded::new(ThreadCounts {
                    last_used_ms: AtomicU64::new(now_ms),
                    ..ThreadCounts::default()
                })
            })
            .collect();
        Arc::new(RuleStats { created_ms: now_ms, per_thread })
    }

    /// Counts for thread `thread` (its single writer).
    #[inline]
    pub(crate) fn record(&self, thread: usize, packets: u64, bytes: u64, now_ms: u64) {
        let Some(c) = self.per_thread.get(thread) else { return };
        // One writer per slot: load and store, no read-modify-write.
        c.packets.store(c.packets.load(Ordering::Relaxed) + packets, Ordering::Relaxed);
        c.bytes.store(c.bytes.load(Ordering::Relaxed) + bytes, Ordering::Relaxed);
        if c.last_used_ms.load(Ordering::Relaxed) < now_ms {
            c.last_used_ms.store(now_ms, Ordering::Relaxed);
        }
    }

    /// Packets matched.
    pub fn packets(&self) -> u64 {
        self.per_thread.iter().map(|c| c.packets.load(Ordering::Relaxed)).sum()
    }

    /// Bytes matched.
    pub fn bytes(&self) -> u64 {
        self.per_thread.iter().map(|c| c.bytes.load(Ordering::Relaxed)).sum()
    }

    /// When a packet last matched (or the rule was added), on any thread.
    pub fn last_used_ms(&self) -> u64 {
        self.per_thread.iter().map(|c| c.last_used_ms.load(Ordering::Relaxed)).max().unwrap_or(self.created_ms)
    }
}

/// The rule a new bridge's table holds: `priority=0,actions=NORMAL`.
pub fn default_rule() -> FlowSpec {
    let mut matching = Match::any();
    matching.set_table(0);
    FlowSpec { priority: 0, matching, actions: vec![Action::Normal], cookie: 0, idle_timeout: 0, hard_timeout: 0 }
}

use super::identity::IdentityIndex;
pub use super::identity::RuleKey;

/// Whether `spec`, counting into `stats`, has passed its idle or hard
/// timeout at `now_ms`.
pub(crate) fn is_expired(spec: &FlowSpec, stats: &RuleStats, now_ms: u64) -> bool {
    let idle = spec.idle_timeout != 0 && now_ms >= stats.last_used_ms() + spec.idle_timeout as u64 * 1000;
    let hard = spec.hard_timeout != 0 && now_ms >= stats.created_ms + spec.hard_timeout as u64 * 1000;
    idle || hard
}

/// A rule's row in a dump.
pub(crate) fn flow_stats(spec: &FlowSpec, stats: &RuleStats, now_ms: u64) -> FlowStats {
    FlowStats {
        cookie: spec.cookie,
        duration_secs: now_ms.saturating_sub(stats.created_ms) as f64 / 1000.0,
        n_packets: stats.packets(),
        n_bytes: stats.bytes(),
        table: spec.table(),
        priority: spec.priority,
        matching: spec.matching.to_text(),
        actions: super::action::actions_to_text(&spec.actions),
        idle_timeout: spec.idle_timeout,
        hard_timeout: spec.hard_timeout,
        idle_age_secs: now_ms.saturating_sub(stats.last_used_ms()) / 1000,
    }
}

/// A rule with its counters.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Its definition.
    pub spec: FlowSpec,
    /// Its counters.
    pub stats: Arc<RuleStats>,
    seq: u64,
}

/// One cached lookup of a key's first `W` words (the rest zero). The
/// fields checked first share the entry's first cache line with the start
/// of the key, and an entry is a whole number of lines.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct EmcEntry<const W: usize> {
    hash: u64,
    generation: u64,
    rule: u32,
    key: [u64; W],
}

/// One two-way set-associative cache of keys `W` words long.
#[derive(Debug)]
struct Ways<const W: usize> {
    entries: Box<[EmcEntry<W>]>,
}

impl<const W: usize> Ways<W> {
    fn new(sets: usize) -> Self {
        let empty = EmcEntry { hash: 0, generation: 0, rule: NO_RULE, key: [0; W] };
        Ways { entries: vec![empty; sets * 2].into_boxed_slice() }
    }

    #[inline]
    fn set_of(&self, hash: u64) -> usize {
        ((hash as usize) & (self.entries.len() / 2 - 1)) * 2
    }

    /// Reads the first way of `hash`'s set (to bring it into the cache).
    #[inline]
    fn touch(&self, hash: u64) -> u64 {
        self.entries[self.set_of(hash)].hash
    }

    #[inline]
    fn lookup(&mut self, tables: &Tables, key: &PackedKey, hash: u64) -> Option<u32> {
        let set = self.set_of(hash);
        let words: &[u64; W] = key.0[..W].try_into().expect("W fits in a key");
        for way in set..set + 2 {
            let e = &self.entries[way];
            if e.hash == hash && e.generation == tables.generation && e.key == *words {
                return (e.rule != NO_RULE).then_some(e.rule);
            }
        }
        let found = tables.classify(key);
        self.entries[set + 1] = self.entries[set];
        self.entries[set] =
            EmcEntry { hash, generation: tables.generation, rule: found.unwrap_or(NO_RULE), key: *words };
        found
    }
}

/// Number of flow tables (0 to 254; 255 means "all" in selections).
pub const TABLES: usize = 255;

/// Per-table lookup counts, shared by every datapath thread's copy of a
/// bridge's tables (each thread writes its own cache-padded slot).
#[derive(Debug)]
pub struct TableStats {
    per_thread: Box<[crossbeam::utils::CachePadded<TableCounts>]>,
}

#[derive(Debug)]
struct TableCounts {
    // 256 so that any table number indexes without a check.
    lookups: [AtomicU64; 256],
    matched: [AtomicU64; 256],
}

impl TableStats {
    /// Zeroed counts for `threads` threads.
    pub fn new(threads: usize) -> Arc<TableStats> {
        let per_thread = (0..threads.max(1))
            .map(|_| {
                crossbeam::utils::CachePadded::new(TableCounts {
                    lookups: std::array::from_fn(|_| AtomicU64::new(0)),
                    matched: std::array::from_fn(|_| AtomicU64::new(0)),
                })
            })
            .collect();
        Arc::new(TableStats { per_thread })
    }

    #[inline]
    fn record(&self, thread: usize, table: u8, matched: bool) {
        let Some(c) = self.per_thread.get(thread) else { return };
        let t = table as usize;
        c.lookups[t].store(c.lookups[t].load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        if matched {
            c.matched[t].store(c.matched[t].load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        }
    }

    /// Lookups in `table` (every thread).
    pub fn lookups(&self, table: u8) -> u64 {
        self.per_thread.iter().map(|c| c.lookups[table as usize].load(Ordering::Relaxed)).sum()
    }

    /// Lookups in `table` that found a rule.
    pub fn matched(&self, table: u8) -> u64 {
        self.per_thread.iter().map(|c| c.matched[table as usize].load(Ordering::Relaxed)).sum()
    }
}

/// Why a change to the table was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TableError {
    /// The table holds its maximum number of rules.
    Full,
}

/// The flow tables of one bridge and the cache in front of them. See the
/// [module docs](self). Derefs to its [`Tables`].
#[derive(Debug)]
pub struct FlowTable {
    tables: Tables,
    emc: Emc,
}

/// The exact-match cache: a key (with its table) to the rule it matched.
///
/// Two caches in one: keys whose metadata words are all zero (a packet's
/// first lookup, in table 0, before any register is written: by far the
/// commonest) are cached by their header words alone, in entries of two
/// cache lines; the others (later tables, registers set) whole, in entries
/// of three. Each is two-way set associative: a new entry goes in the
/// first way and pushes the old first way into the second, so a set keeps
/// its two most recently missed flows.
#[derive(Debug)]
pub struct Emc {
    headers: Ways<METADATA_WORD>,
    whole: Ways<WORDS>,
}

impl Default for Emc {
    fn default() -> Self {
        Emc { headers: Ways::new(EMC_SETS), whole: Ways::new(EMC_SETS) }
    }
}

/// A rule's match as its table's classifier holds it: without the table
/// bits (every rule there has the same), so subtables hash and compare
/// one word fewer.
fn in_table(m: &Match) -> Match {
    let mut m = *m;
    m.clear_table();
    m
}

#[inline]
fn no_metadata(key: &PackedKey) -> bool {
    key.0[METADATA_WORD..].iter().fold(0, |acc, &w| acc | w) == 0
}

impl Emc {
    /// The rule `key` matches in `tables` (in the table the key names),
    /// using and filling the cache, and counting the lookup.
    #[inline]
    pub fn lookup(&mut self, tables: &Tables, key: &PackedKey) -> Option<u32> {
        self.lookup_hashed(tables, key, key.hash64())
    }

    /// Looks up a burst of keys (each with its result slot, `u32::MAX` for
    /// no rule): hashes them all and touches their cache sets first, so the
    /// burst's memory accesses overlap rather than follow one another.
    pub fn lookup_burst(&mut self, tables: &Tables, keys: &mut [(PackedParse, u32)]) {
        const CHUNK: usize = 32;
        for chunk in keys.chunks_mut(CHUNK) {
            let mut hashes = [0u64; CHUNK];
            let mut touched = 0u64;
            for (h, (p, _)) in hashes.iter_mut().zip(chunk.iter()) {
                *h = p.key.hash64();
                touched ^= if no_metadata(&p.key) { self.headers.touch(*h) } else { self.whole.touch(*h) };
            }
            std::hint::black_box(touched);
            for (h, (p, rule)) in hashes.iter().zip(chunk.iter_mut()) {
                *rule = self.lookup_hashed(tables, &p.key, *h).unwrap_or(NO_RULE);
            }
        }
    }

    #[inline]
    fn lookup_hashed(&mut self, tables: &Tables, key: &PackedKey, hash: u64) -> Option<u32> {
        let found = if no_metadata(key) {
            self.headers.lookup(tables, key, hash)
        } else {
            self.whole.lookup(tables, key, hash)
        };
        if let Some(s) = &tables.table_stats {
            s.record(tables.thread, key.table(), found.is_some());
        }
        found
    }
}

impl std::ops::Deref for FlowTable {
    type Target = Tables;
    fn deref(&self) -> &Tables {
        &self.tables
    }
}

impl std::ops::DerefMut for FlowTable {
    fn deref_mut(&mut self) -> &mut Tables {
        &mut self.tables
    }
}

/// A bridge's rules in their tables, with one classifier per table.
#[derive(Debug)]
pub struct Tables {
    rules: Vec<Option<Rule>>,
    free: Vec<u32>,
    identity: IdentityIndex,
    /// Indexed by table; grown as tables get rules.
    classifiers: Vec<Classifier>,
    table_stats: Option<Arc<TableStats>>,
    generation: u64,
    next_seq: u64,
    limit: usize,
    timed: usize,
    next_expiry_ms: u64,
    /// The id of the only rule when the table is `priority=0,actions=normal`.
    default_normal: Option<u32>,
    /// Which slot of the rules' stats this copy's hits go to.
    thread: usize,
    len: usize,
}

impl FlowTable {
    /// A table holding only `priority=0,actions=normal`: a learning switch.
    pub fn new(limit: usize, now_ms: u64) -> Self {
        Self::for_thread(limit, RuleStats::new(now_ms, 1), None, 0)
    }

    /// The copy of a table held by datapath thread `thread`: its default
    /// rule counts into `stats` (shared by every thread's copy), its
    /// lookups into `table_stats`, and its hits go to the thread's slot of
    /// each rule's stats.
    pub fn for_thread(
        limit: usize,
        stats: Arc<RuleStats>,
        table_stats: Option<Arc<TableStats>>,
        thread: usize,
    ) -> Self {
        let mut tables = Tables {
            rules: Vec::new(),
            free: Vec::new(),
            identity: IdentityIndex::default(),
            classifiers: Vec::new(),
            table_stats,
            generation: 1,
            next_seq: 0,
            limit,
            timed: 0,
            next_expiry_ms: 0,
            default_normal: None,
            thread,
            len: 0,
        };
        let _ = tables.add_with_stats(vec![(default_rule(), stats)]);
        FlowTable { tables, emc: Emc::default() }
    }

    /// The rule `key` matches in the table it names, through the cache.
    #[inline]
    pub fn lookup(&mut self, key: &PackedKey) -> Option<u32> {
        self.emc.lookup(&self.tables, key)
    }

    /// The rules, and the cache to look them up through, borrowed apart
    /// (the executor reads one rule's actions while it looks up the next).
    #[inline]
    pub fn split(&mut self) -> (&Tables, &mut Emc) {
        (&self.tables, &mut self.emc)
    }
}

impl Tables {
    /// Number of rules.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if the table has no rules (every packet is dropped).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of distinct masks, over every table.
    pub fn masks(&self) -> usize {
        self.classifiers.iter().map(Classifier::subtables).sum()
    }

    /// Rules in each table that has any: (table, rules).
    pub fn table_sizes(&self) -> Vec<(u8, usize)> {
        self.classifiers.iter().enumerate().filter(|(_, c)| !c.is_empty()).map(|(t, c)| (t as u8, c.len())).collect()
    }

    /// True if the table is exactly `priority=0,actions=normal`; the
    /// datapath then skips classification altogether.
    #[inline]
    pub fn is_default_normal(&self) -> bool {
        self.default_normal.is_some()
    }

    /// The single default rule's id, when [`is_default_normal`] holds.
    ///
    /// [`is_default_normal`]: FlowTable::is_default_normal
    #[inline]
    pub fn default_rule(&self) -> Option<u32> {
        self.default_normal
    }

    fn changed(&mut self) {
        self.generation += 1;
        self.default_normal = None;
        if self.len() == 1
            && let Some((id, r)) = self.rules.iter().enumerate().find_map(|(i, r)| r.as_ref().map(|r| (i, r)))
            && r.spec.matching == default_rule().matching
            && r.spec.actions == [Action::Normal]
            && r.spec.idle_timeout == 0
            && r.spec.hard_timeout == 0
        {
            self.default_normal = Some(id as u32);
        }
    }

    /// Adds a rule, replacing one with the same match and priority (whose
    /// counters restart).
    ///
    /// # Errors
    /// [`TableError::Full`] if the table is at its limit; nothing changes.
    pub fn add(&mut self, spec: FlowSpec, now_ms: u64) -> Result<(), TableError> {
        self.add_all(vec![spec], now_ms)
    }

    /// Adds several rules at once with fresh counters, or none if they do
    /// not all fit.
    ///
    /// # Errors
    /// [`TableError::Full`]; nothing changes.
    pub fn add_all(&mut self, specs: Vec<FlowSpec>, now_ms: u64) -> Result<(), TableError> {
        let threads = self.thread + 1;
        self.add_with_stats(specs.into_iter().map(|s| (s, RuleStats::new(now_ms, threads))).collect())
    }

    /// Adds several rules at once, each counting into the stats given (the
    /// same ones for every thread's copy), or none if they do not all fit.
    ///
    /// # Errors
    /// [`TableError::Full`]; nothing changes.
    pub fn add_with_stats(&mut self, specs: Vec<(FlowSpec, Arc<RuleStats>)>) -> Result<(), TableError> {
        let new = specs.iter().filter(|(s, _)| self.id_of(&s.identity()).is_none()).count();
        if self.len() + new > self.limit {
            return Err(TableError::Full);
        }
        for (mut spec, stats) in specs {
            if spec.matching.table().is_none() {
                spec.matching.set_table(0);
            }
            if let Some(id) = self.id_of(&spec.identity()) {
                self.remove_id(id);
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            if spec.idle_timeout != 0 || spec.hard_timeout != 0 {
                self.timed += 1;
            }
            let rule = Rule { spec, stats, seq };
            let id = match self.free.pop() {
                Some(id) => {
                    self.rules[id as usize] = Some(rule);
                    id
                }
                None => {
                    self.rules.push(Some(rule));
                    (self.rules.len() - 1) as u32
                }
            };
            let r = self.rules[id as usize].as_ref().expect("just inserted");
            let table = r.spec.table() as usize;
            if self.classifiers.len() <= table {
                self.classifiers.resize_with(table + 1, Classifier::new);
            }
            self.classifiers[table].insert(id, &in_table(&r.spec.matching), r.spec.priority, seq);
            self.identity.insert(&r.spec.identity(), id);
            self.len += 1;
        }
        self.changed();
        Ok(())
    }

    /// The rule with this identity.
    #[inline]
    fn id_of(&self, key: &RuleKey) -> Option<u32> {
        self.identity.get(key, &self.rules, |r| r.spec.identity())
    }

    fn remove_id(&mut self, id: u32) -> Option<Rule> {
        let key = self.rules.get(id as usize)?.as_ref()?.spec.identity();
        self.identity.remove(&key, &self.rules, |r| r.spec.identity());
        let r = self.rules.get_mut(id as usize)?.take()?;
        self.classifiers[r.spec.table() as usize].remove(id, &in_table(&r.spec.matching), r.spec.priority);
        self.len -= 1;
        if r.spec.idle_timeout != 0 || r.spec.hard_timeout != 0 {
            self.timed -= 1;
        }
        self.free.push(id);
        Some(r)
    }

    fn selected(&self, sel: &FlowSelector, strict: bool) -> Vec<u32> {
        if strict {
            return sel.strict_keys().filter_map(|k| self.id_of(&k)).filter(|&id| self.cookie_ok(id, sel)).collect();
        }
        self.rules
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().map(|r| (i as u32, r)))
            .filter(|(id, r)| sel.matching.covers(&r.spec.matching) && self.cookie_ok(*id, sel))
            .map(|(id, _)| id)
            .collect()
    }

    fn cookie_ok(&self, id: u32, sel: &FlowSelector) -> bool {
        self.rules[id as usize].as_ref().is_some_and(|r| sel.cookie_matches(r.spec.cookie))
    }

    /// Removes the rules with these identities (those still there).
    pub(crate) fn delete_keys(&mut self, keys: &[RuleKey]) -> usize {
        let mut n = 0;
        for key in keys {
            if let Some(id) = self.id_of(key) {
                self.remove_id(id);
                n += 1;
            }
        }
        if n > 0 {
            self.changed();
        }
        n
    }

    /// Replaces the actions of the rules with these identities.
    pub(crate) fn modify_keys(&mut self, keys: &[RuleKey], actions: &[Action]) {
        for key in keys {
            if let Some(r) = self.id_of(key).and_then(|id| self.rules[id as usize].as_mut()) {
                r.spec.actions = actions.to_vec();
            }
        }
        if !keys.is_empty() {
            self.changed();
        }
    }

    /// Removes the selected rules (OpenFlow's loose or strict delete);
    /// returns how many.
    pub fn delete(&mut self, sel: &FlowSelector, strict: bool) -> usize {
        let ids = self.selected(sel, strict);
        for &id in &ids {
            self.remove_id(id);
        }
        if !ids.is_empty() {
            self.changed();
        }
        ids.len()
    }

    /// Replaces the actions of the selected rules, keeping their counters;
    /// returns how many.
    pub fn modify(&mut self, sel: &FlowSelector, strict: bool, actions: &[Action]) -> usize {
        let ids = self.selected(sel, strict);
        for &id in &ids {
            if let Some(r) = self.rules[id as usize].as_mut() {
                r.spec.actions = actions.to_vec();
            }
        }
        if !ids.is_empty() {
            self.changed();
        }
        ids.len()
    }

    /// The rule `key` matches in the table it names, from the classifier
    /// alone (no cache, no counters).
    #[inline]
    pub fn classify(&self, key: &PackedKey) -> Option<u32> {
        self.classifiers.get(key.table() as usize)?.lookup(key)
    }

    /// Rule `id`.
    #[inline]
    pub fn rule(&self, id: u32) -> Option<&Rule> {
        self.rules.get(id as usize).and_then(Option::as_ref)
    }

    /// Which datapath thread's slot of the shared counters this copy writes.
    #[inline]
    pub fn thread(&self) -> usize {
        self.thread
    }

    /// Counts a packet of `bytes` against `rule` (one of these tables').
    #[inline]
    pub fn hit_rule(&self, rule: &Rule, bytes: u64, now_ms: u64) {
        rule.stats.record(self.thread, 1, bytes, now_ms);
    }

    /// Counts a packet of `bytes` against rule `id`.
    #[inline]
    pub fn hit(&self, id: u32, packets: u64, bytes: u64, now_ms: u64) {
        if let Some(Some(r)) = self.rules.get(id as usize) {
            r.stats.record(self.thread, packets, bytes, now_ms);
        }
    }

    /// Removes rules whose idle or hard timeout has passed; cheap unless a
    /// check is due (once a second) and some rule has a timeout.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        if self.timed == 0 || now_ms < self.next_expiry_ms {
            return 0;
        }
        self.next_expiry_ms = now_ms + EXPIRY_INTERVAL_MS;
        let doomed: Vec<u32> = self
            .rules
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let r = r.as_ref()?;
                is_expired(&r.spec, &r.stats, now_ms).then_some(i as u32)
            })
            .collect();
        for &id in &doomed {
            self.remove_id(id);
        }
        if !doomed.is_empty() {
            self.changed();
        }
        doomed.len()
    }

    /// Every rule with its counters, highest priority first.
    pub fn dump(&self, now_ms: u64) -> Vec<FlowStats> {
        let mut rules: Vec<&Rule> = self.rules.iter().flatten().collect();
        rules.sort_by(|a, b| b.spec.priority.cmp(&a.spec.priority).then(a.seq.cmp(&b.seq)));
        rules.into_iter().map(|r| flow_stats(&r.spec, &r.stats, now_ms)).collect()
    }
}
