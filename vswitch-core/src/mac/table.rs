use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::Serialize;

use super::{MAX_CAPACITY, mac_key, split_key};
use crate::events::{Event, EventBus};
use crate::port::PortNo;
use crate::{Error, MacAddr, Result};

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

const NIL: u32 = u32::MAX;
/// Slots examined per aging step, so one step holds the lock briefly.
const AGING_CHUNK: usize = 16 * 1024;
/// How often an aging sweep starts.
const SWEEP_INTERVAL_MS: u64 = 1000;

/// Settings of a bridge's MAC table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct MacTableConfig {
    /// Seconds after which an entry not seen again is removed.
    pub aging_secs: u64,
    /// Maximum number of entries, static ones included.
    pub capacity: usize,
}

impl MacTableConfig {
    /// Entries age out after `aging_secs`; at most `capacity` of them.
    pub fn new(aging_secs: u64, capacity: usize) -> MacTableConfig {
        MacTableConfig { aging_secs, capacity }
    }
}

impl Default for MacTableConfig {
    fn default() -> Self {
        MacTableConfig { aging_secs: 300, capacity: 8192 }
    }
}

impl MacTableConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        if self.capacity == 0 || self.capacity > MAX_CAPACITY {
            return Err(Error::invalid("mac table capacity", format!("{} must be 1 to {MAX_CAPACITY}", self.capacity)));
        }
        if self.aging_secs == 0 || self.aging_secs > 1_000_000 {
            return Err(Error::invalid("mac aging time", format!("{} s must be 1 to 1000000", self.aging_secs)));
        }
        Ok(())
    }
}

/// What learning a source address did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MacLearn {
    /// A new entry was created.
    Learned,
    /// The entry existed on this port; its age was reset.
    Refreshed,
    /// The address moved here from another port.
    Moved {
        /// Where it was before.
        from: PortNo,
    },
    /// A static entry holds the address on another port; nothing changed.
    StaticConflict {
        /// The static entry's port.
        port: PortNo,
    },
    /// The table is full of entries that cannot be evicted.
    Full,
    /// Group (multicast or broadcast) addresses are never learned.
    NotUnicast,
}

/// One row of the table, as the control plane shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct MacEntry {
    /// The port the address is behind.
    pub port: PortNo,
    /// The VLAN it was seen in.
    pub vlan: u16,
    /// The address.
    pub mac: MacAddr,
    /// Seconds since it was last seen (0 for static entries).
    pub age_secs: u64,
    /// True for entries configured by hand: they never age or move.
    pub is_static: bool,
}

/// Counters and size of a bridge's MAC table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct MacTableStats {
    /// Entries now in the table, static ones included.
    pub entries: usize,
    /// Static entries now in the table.
    pub static_entries: usize,
    /// The configured capacity.
    pub capacity: usize,
    /// The configured aging time in seconds.
    pub aging_secs: u64,
    /// Entries created by learning.
    pub learned: u64,
    /// Entries removed because they aged out.
    pub expired: u64,
    /// Entries removed to make room for new ones.
    pub evicted: u64,
    /// Addresses that moved to another port.
    pub moved: u64,
    /// Frames whose source is a static entry's address on another port.
    pub static_conflicts: u64,
    /// Addresses not learned because the table was full of static entries.
    pub refused_full: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotKind {
    Free,
    Dynamic,
    Static,
}

#[derive(Debug)]
struct Slot {
    key: u64,
    port: PortNo,
    kind: SlotKind,
    last_seen: AtomicU64,
    /// `last_seen` when the slot was put at its list's tail; a larger
    /// `last_seen` means it was refreshed since (second chance).
    stamp: u64,
    prev: u32,
    next: u32,
}

#[derive(Debug, Clone, Copy, Default)]
struct PortList {
    head: u32,
    tail: u32,
    count: usize,
}

/// Where a key's slot is, and its port: the port is kept in the index so a
/// lookup is one hash probe (one cache miss in a big table, not two).
#[derive(Debug, Clone, Copy)]
struct Loc {
    slot: u32,
    port: PortNo,
}

#[derive(Debug, Default)]
struct State {
    index: FastMap<u64, Loc>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Dynamic entries of each port, least recently placed first.
    lists: FastMap<PortNo, PortList>,
    statics: usize,
    /// Next slot the aging sweep examines, and the time it sweeps against.
    sweep_cursor: usize,
    sweep_now: u64,
}

#[derive(Debug, Default)]
struct Counters {
    learned: AtomicU64,
    expired: AtomicU64,
    evicted: AtomicU64,
    moved: AtomicU64,
    static_conflicts: AtomicU64,
    refused_full: AtomicU64,
}

/// The MAC learning table of one bridge. See the [module docs](super).
#[derive(Debug)]
pub struct MacTable {
    state: RwLock<State>,
    generation: AtomicU64,
    aging_ms: AtomicU64,
    capacity: AtomicUsize,
    sweeping: AtomicBool,
    next_sweep_ms: AtomicU64,
    counters: Counters,
    /// Where moves are told, and the bridge's name (a switch's table).
    moves: OnceLock<(Arc<EventBus>, Arc<str>)>,
}

impl MacTable {
    internal! {
        /// An empty table.
        ///
        /// # Errors
        /// [`Error::InvalidArgument`] if the capacity or aging time is out of range.
        pub fn new(config: MacTableConfig) -> Result<Self> {
            config.validate()?;
            Ok(MacTable {
                state: RwLock::new(State::default()),
                generation: AtomicU64::new(1),
                aging_ms: AtomicU64::new(config.aging_secs * 1000),
                capacity: AtomicUsize::new(config.capacity),
                sweeping: AtomicBool::new(false),
                next_sweep_ms: AtomicU64::new(0),
                counters: Counters::default(),
                moves: OnceLock::new(),
            })
        }
    }

    /// Tells moves on `events` as the bridge `bridge`'s.
    pub(crate) fn publish_moves(&self, events: Arc<EventBus>, bridge: &str) {
        let _ = self.moves.set((events, bridge.into()));
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    internal! {
        /// A number that changes whenever an entry moves or is removed; caches
        /// holding answers from an older generation must ask again.
        #[inline]
        pub fn generation(&self) -> u64 {
            self.generation.load(Ordering::Acquire)
        }
    }

    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    internal! {
        /// How stale a cached refresh may be: a tenth of the aging time, at
        /// most one second.
        #[inline]
        pub fn refresh_interval_ms(&self) -> u64 {
            (self.aging_ms.load(Ordering::Relaxed) / 10).clamp(1, 1000)
        }
    }

    /// The current settings.
    pub fn config(&self) -> MacTableConfig {
        MacTableConfig {
            aging_secs: self.aging_ms.load(Ordering::Relaxed) / 1000,
            capacity: self.capacity.load(Ordering::Relaxed),
        }
    }

    internal! {
        /// Changes the settings. Lowering the capacity below the number of
        /// entries evicts (fairly) until the table fits.
        ///
        /// # Errors
        /// [`Error::InvalidArgument`] if a value is out of range; nothing changes.
        pub fn set_config(&self, config: MacTableConfig) -> Result<()> {
            config.validate()?;
            let mut st = self.write();
            self.aging_ms.store(config.aging_secs * 1000, Ordering::Relaxed);
            self.capacity.store(config.capacity, Ordering::Relaxed);
            let mut evicted = false;
            while st.index.len() > config.capacity && self.evict_one(&mut st) {
                evicted = true;
            }
            if evicted {
                self.bump();
            }
            Ok(())
        }
    }

    internal! {
        /// Learns that `mac` in `vlan` is behind `port`, seen at `now_ms`.
        pub fn learn(&self, vlan: u16, mac: MacAddr, port: PortNo, now_ms: u64) -> MacLearn {
            if !mac.is_unicast() {
                return MacLearn::NotUnicast;
            }
            let key = mac_key(vlan, mac);
            {
                let st = self.read();
                if let Some(&Loc { slot: i, .. }) = st.index.get(&key) {
                    let s = &st.slots[i as usize];
                    if s.port == port {
                        if s.kind == SlotKind::Dynamic {
                            s.last_seen.fetch_max(now_ms, Ordering::Relaxed);
                        }
                        return MacLearn::Refreshed;
                    }
                    if s.kind == SlotKind::Static {
                        self.counters.static_conflicts.fetch_add(1, Ordering::Relaxed);
                        return MacLearn::StaticConflict { port: s.port };
                    }
                }
            }
            let mut st = self.write();
            // Re-check: another thread may have changed it between the locks.
            if let Some(&Loc { slot: i, .. }) = st.index.get(&key) {
                let (kind, old) = (st.slots[i as usize].kind, st.slots[i as usize].port);
                if old == port {
                    st.slots[i as usize].last_seen.fetch_max(now_ms, Ordering::Relaxed);
                    return MacLearn::Refreshed;
                }
                if kind == SlotKind::Static {
                    self.counters.static_conflicts.fetch_add(1, Ordering::Relaxed);
                    return MacLearn::StaticConflict { port: old };
                }
                st.unlink(i);
                st.set_port(i, port);
                st.slots[i as usize].last_seen.store(now_ms, Ordering::Relaxed);
                st.link_tail(i, now_ms);
                self.counters.moved.fetch_add(1, Ordering::Relaxed);
                self.bump();
                drop(st);
                if let Some((events, bridge)) = self.moves.get() {
                    events.publish(|| Event::MacMoved { bridge: bridge.to_string(), mac, vlan, from: old, to: port });
                }
                return MacLearn::Moved { from: old };
            }
            if st.index.len() >= self.capacity.load(Ordering::Relaxed) {
                if !self.evict_one(&mut st) {
                    self.counters.refused_full.fetch_add(1, Ordering::Relaxed);
                    return MacLearn::Full;
                }
                self.bump();
            }
            let i = st.alloc(key, port, SlotKind::Dynamic, now_ms);
            st.link_tail(i, now_ms);
            self.counters.learned.fetch_add(1, Ordering::Relaxed);
            MacLearn::Learned
        }
    }

    /// The port `mac` in `vlan` was learned on, if any.
    pub fn lookup(&self, vlan: u16, mac: MacAddr) -> Option<PortNo> {
        let st = self.read();
        st.index.get(&mac_key(vlan, mac)).map(|l| l.port)
    }

    /// Looks up many keys (made by `mac_key`) under one read lock, writing
    /// each answer to `out` (cleared first). Back-to-back probes let the
    /// CPU overlap their cache misses; one lock per burst instead of per
    /// packet keeps the read lock's atomic off the per-packet path.
    pub(crate) fn lookup_keys(&self, keys: &[u64], out: &mut Vec<Option<PortNo>>) {
        out.clear();
        let st = self.read();
        out.extend(keys.iter().map(|k| st.index.get(k).map(|l| l.port)));
    }

    internal! {
        /// Adds (or replaces) a static entry: it never ages and never moves.
        ///
        /// # Errors
        /// [`Error::InvalidArgument`] for a group address or a VLAN above 4095;
        /// [`Error::Full`] if the table is full of static entries.
        pub fn add_static(&self, vlan: u16, mac: MacAddr, port: PortNo) -> Result<()> {
            if !mac.is_unicast() {
                return Err(Error::invalid("static mac", format!("{mac} is a group address")));
            }
            if vlan > 4095 {
                return Err(Error::invalid("vlan", format!("{vlan} is above 4095")));
            }
            let key = mac_key(vlan, mac);
            let mut st = self.write();
            if let Some(&Loc { slot: i, .. }) = st.index.get(&key) {
                if st.slots[i as usize].kind == SlotKind::Dynamic {
                    st.unlink(i);
                    st.statics += 1;
                }
                st.slots[i as usize].kind = SlotKind::Static;
                st.set_port(i, port);
            } else {
                if st.index.len() >= self.capacity.load(Ordering::Relaxed) && !self.evict_one(&mut st) {
                    return Err(Error::Full("mac table"));
                }
                st.alloc(key, port, SlotKind::Static, 0);
                st.statics += 1;
            }
            self.bump();
            Ok(())
        }
    }

    /// Removes the entry for `mac` in `vlan`, static or not. Returns
    /// whether there was one.
    pub fn remove(&self, vlan: u16, mac: MacAddr) -> bool {
        let mut st = self.write();
        match st.index.get(&mac_key(vlan, mac)).map(|l| l.slot) {
            Some(i) => {
                st.release(i);
                self.bump();
                true
            }
            None => false,
        }
    }

    /// Removes every dynamic entry (static entries stay). Returns how many.
    pub fn flush(&self) -> usize {
        self.remove_where(|s| s.kind == SlotKind::Dynamic)
    }

    /// Removes every entry, static ones too, behind `port` (for a port
    /// leaving the bridge). Returns how many.
    pub fn flush_port(&self, port: PortNo) -> usize {
        self.remove_where(|s| s.port == port)
    }

    fn remove_where(&self, pred: impl Fn(&Slot) -> bool) -> usize {
        let mut st = self.write();
        let doomed: Vec<u32> = (0..st.slots.len() as u32)
            .filter(|&i| {
                let s = &st.slots[i as usize];
                s.kind != SlotKind::Free && pred(s)
            })
            .collect();
        for &i in &doomed {
            st.release(i);
        }
        if !doomed.is_empty() {
            self.bump();
        }
        doomed.len()
    }

    internal! {
        /// One step of aging at `now_ms`, called often by a datapath thread.
        ///
        /// A sweep over all slots starts once a second; each call examines at
        /// most a bounded chunk of slots under the write lock. Returns true if
        /// the sweep has more to do (call again soon). Cheap when nothing is
        /// due: two atomic loads.
        pub fn age_step(&self, now_ms: u64) -> bool {
            if !self.sweeping.load(Ordering::Relaxed) {
                if now_ms < self.next_sweep_ms.load(Ordering::Relaxed) {
                    return false;
                }
                let mut st = self.write();
                if self.sweeping.load(Ordering::Relaxed) || now_ms < self.next_sweep_ms.load(Ordering::Relaxed) {
                    return self.sweeping.load(Ordering::Relaxed);
                }
                st.sweep_cursor = 0;
                st.sweep_now = now_ms;
                self.next_sweep_ms.store(now_ms + SWEEP_INTERVAL_MS, Ordering::Relaxed);
                self.sweeping.store(true, Ordering::Relaxed);
            }
            let mut st = self.write();
            if !self.sweeping.load(Ordering::Relaxed) {
                return false;
            }
            let more = self.sweep_chunk(&mut st, AGING_CHUNK);
            self.sweeping.store(more, Ordering::Relaxed);
            more
        }
    }

    internal! {
        /// Removes every dynamic entry not seen for the aging time, now, in one
        /// sweep. Returns how many expired. (The datapath uses [`age_step`].)
        ///
        /// [`age_step`]: MacTable::age_step
        pub fn expire_now(&self, now_ms: u64) -> usize {
            let mut st = self.write();
            let before = self.counters.expired.load(Ordering::Relaxed);
            st.sweep_cursor = 0;
            st.sweep_now = now_ms;
            self.sweep_chunk(&mut st, usize::MAX);
            self.sweeping.store(false, Ordering::Relaxed);
            (self.counters.expired.load(Ordering::Relaxed) - before) as usize
        }
    }

    fn sweep_chunk(&self, st: &mut State, chunk: usize) -> bool {
        let aging = self.aging_ms.load(Ordering::Relaxed);
        let now = st.sweep_now;
        let end = st.slots.len().min(st.sweep_cursor.saturating_add(chunk));
        let mut expired = 0;
        for i in st.sweep_cursor..end {
            let s = &st.slots[i];
            if s.kind == SlotKind::Dynamic && now.saturating_sub(s.last_seen.load(Ordering::Relaxed)) >= aging {
                st.release(i as u32);
                expired += 1;
            }
        }
        st.sweep_cursor = end;
        if expired > 0 {
            self.counters.expired.fetch_add(expired, Ordering::Relaxed);
            self.bump();
        }
        end < st.slots.len()
    }

    /// Evicts the least recently used dynamic entry of the port holding the
    /// most dynamic entries. Returns false if there is none.
    fn evict_one(&self, st: &mut State) -> bool {
        let Some((&port, _)) =
            st.lists.iter().filter(|(_, l)| l.count > 0).max_by_key(|(p, l)| (l.count, std::cmp::Reverse(**p)))
        else {
            return false;
        };
        loop {
            let head = st.lists[&port].head;
            let s = &st.slots[head as usize];
            let seen = s.last_seen.load(Ordering::Relaxed);
            if seen > s.stamp {
                // Refreshed since it was queued: second chance, to the tail.
                st.unlink(head);
                st.link_tail(head, seen);
                continue;
            }
            st.release(head);
            self.counters.evicted.fetch_add(1, Ordering::Relaxed);
            return true;
        }
    }

    /// Every entry, for display, ordered by port, VLAN and address.
    pub fn entries(&self, now_ms: u64) -> Vec<MacEntry> {
        let st = self.read();
        let mut out: Vec<MacEntry> = st
            .slots
            .iter()
            .filter(|s| s.kind != SlotKind::Free)
            .map(|s| {
                let (vlan, mac) = split_key(s.key);
                let is_static = s.kind == SlotKind::Static;
                let age_ms = if is_static { 0 } else { now_ms.saturating_sub(s.last_seen.load(Ordering::Relaxed)) };
                MacEntry { port: s.port, vlan, mac, age_secs: age_ms / 1000, is_static }
            })
            .collect();
        out.sort_by_key(|e| (e.port, e.vlan, e.mac));
        out
    }

    /// Number of entries, static ones included.
    pub fn len(&self) -> usize {
        self.read().index.len()
    }

    /// True if the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    internal! {
        /// Number of dynamic entries behind each port.
        pub fn dynamic_counts(&self) -> Vec<(PortNo, usize)> {
            let st = self.read();
            let mut v: Vec<_> = st.lists.iter().filter(|(_, l)| l.count > 0).map(|(&p, l)| (p, l.count)).collect();
            v.sort_unstable();
            v
        }
    }

    /// Size and counters.
    pub fn stats(&self) -> MacTableStats {
        let (entries, static_entries) = {
            let st = self.read();
            (st.index.len(), st.statics)
        };
        let c = &self.counters;
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let cfg = self.config();
        MacTableStats {
            entries,
            static_entries,
            capacity: cfg.capacity,
            aging_secs: cfg.aging_secs,
            learned: r(&c.learned),
            expired: r(&c.expired),
            evicted: r(&c.evicted),
            moved: r(&c.moved),
            static_conflicts: r(&c.static_conflicts),
            refused_full: r(&c.refused_full),
        }
    }
}

impl State {
    fn alloc(&mut self, key: u64, port: PortNo, kind: SlotKind, now: u64) -> u32 {
        let slot = Slot { key, port, kind, last_seen: AtomicU64::new(now), stamp: now, prev: NIL, next: NIL };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(key, Loc { slot: i, port });
        i
    }

    /// Changes slot `i`'s port (the caller has unlinked a dynamic slot).
    fn set_port(&mut self, i: u32, port: PortNo) {
        let s = &mut self.slots[i as usize];
        s.port = port;
        if let Some(l) = self.index.get_mut(&s.key) {
            l.port = port;
        }
    }

    /// Frees slot `i`, unlinking it from its port's list if dynamic.
    fn release(&mut self, i: u32) {
        match self.slots[i as usize].kind {
            SlotKind::Dynamic => self.unlink(i),
            SlotKind::Static => self.statics -= 1,
            SlotKind::Free => return,
        }
        let key = self.slots[i as usize].key;
        self.index.remove(&key);
        self.slots[i as usize].kind = SlotKind::Free;
        self.free.push(i);
    }

    fn link_tail(&mut self, i: u32, stamp: u64) {
        let port = self.slots[i as usize].port;
        let list = self.lists.entry(port).or_insert(PortList { head: NIL, tail: NIL, count: 0 });
        let old_tail = list.tail;
        list.tail = i;
        if old_tail == NIL {
            list.head = i;
        }
        list.count += 1;
        if old_tail != NIL {
            self.slots[old_tail as usize].next = i;
        }
        let s = &mut self.slots[i as usize];
        s.prev = old_tail;
        s.next = NIL;
        s.stamp = stamp;
    }

    fn unlink(&mut self, i: u32) {
        let (port, prev, next) = {
            let s = &self.slots[i as usize];
            (s.port, s.prev, s.next)
        };
        if prev != NIL {
            self.slots[prev as usize].next = next;
        }
        if next != NIL {
            self.slots[next as usize].prev = prev;
        }
        if let Some(list) = self.lists.get_mut(&port) {
            if list.head == i {
                list.head = next;
            }
            if list.tail == i {
                list.tail = prev;
            }
            list.count -= 1;
            if list.count == 0 {
                self.lists.remove(&port);
            }
        }
        let s = &mut self.slots[i as usize];
        s.prev = NIL;
        s.next = NIL;
    }
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
