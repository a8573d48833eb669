//! The connection table every datapath thread shares.
//!
//! Entries live in chunks of [`CHUNK`] that are allocated on demand and
//! never freed (a freed entry goes on a lock-free free list and is
//! reused), so any entry a reader reaches is always valid memory. Each
//! entry is two nodes, one per direction, each chained into the hash
//! bucket of its own key. The bucket heads and chain links are atomic
//! entry references.
//!
//! - **Lookups take no lock.** Each entry carries a sequence number that
//!   is odd while the entry is being rewritten; a reader reads it, the
//!   node's key, link and home bucket, and the number again, and starts
//!   the walk over if anything moved (a seqlock). After a few restarts it
//!   walks under the bucket's lock instead, so a reader cannot starve.
//! - **Inserts and removals** lock the one or two bucket shards the two
//!   keys hash to (of [`SHARDS`]), in order, and check there that neither
//!   key exists, so a tuple is never in the table twice.
//! - **Per-connection state** (TCP windows, marks) changes under the
//!   entry's own small lock, after checking the sequence number still
//!   names the connection the lookup found.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Mutex, MutexGuard, OnceLock};

use crossbeam::queue::SegQueue;

use super::tuple::{KEY_WORDS, Key};

/// Entries per chunk (6 MiB: whole 2 MiB huge pages inside each).
pub(crate) const CHUNK: usize = 32768;
const CHUNK_SHIFT: u32 = CHUNK.trailing_zeros();
/// Most entries a table can hold.
pub(crate) const MAX_ENTRIES: usize = 1 << 24;
/// Bucket lock shards.
pub(crate) const SHARDS: usize = 256;

/// `info` bits.
pub(crate) const LIVE: u64 = 1;

/// One direction of a connection: its key and its link in the chain of
/// the bucket it hashes to.
#[derive(Debug, Default)]
#[repr(C)]
pub(crate) struct Node {
    next: AtomicU32,
    /// The bucket the node is chained in.
    home: AtomicU32,
    key: [AtomicU64; KEY_WORDS],
}

/// One connection: both directions' keys, links and state. 192 bytes,
/// laid out so that a lookup in the original direction reads one cache
/// line (sequence number, state word, node 0) and one in the reply
/// direction two.
#[derive(Debug, Default)]
#[repr(C, align(64))]
pub(crate) struct Entry {
    /// Odd while the entry is being (re)written; bumped when it is freed.
    seq: AtomicU32,
    /// Guards changes to a live connection's state.
    lock: AtomicU32,
    /// LIVE, protocol state and flags (see `super::Info`).
    pub info: AtomicU64,
    nodes: [Node; 2],
    /// When the connection expires (milliseconds on the switch's clock).
    pub expires: AtomicU64,
    pub mark: AtomicU32,
    pub label: [AtomicU64; 2],
    /// TCP: each direction's sequence space, two words each.
    pub tcp: [AtomicU64; 4],
}

/// A node: entry index and direction, plus one (0 is "none").
#[inline]
fn node(idx: u32, dir: usize) -> u32 {
    ((idx << 1) | dir as u32) + 1
}

#[inline]
fn unnode(n: u32) -> (u32, usize) {
    let v = n - 1;
    (v >> 1, (v & 1) as usize)
}

/// Where a lookup found a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Found {
    pub idx: u32,
    /// 0: the key is the connection's original direction; 1: its reply.
    pub dir: usize,
    /// The entry's sequence number when found.
    pub seq: u32,
}

/// Why an insert did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InsertError {
    /// The original key is in the table (another thread committed it).
    OrigExists,
    /// The reply key is taken (try another NAT mapping).
    ReplyExists,
    /// No entry could be allocated.
    Full,
}

/// The shared table (see the [module docs](self)).
pub(crate) struct Table {
    chunks: Box<[OnceLock<Box<[Entry]>>]>,
    next_chunk: AtomicUsize,
    free: SegQueue<u32>,
    heads: Box<[AtomicU32]>,
    bucket_mask: usize,
    shards: Box<[Mutex<()>]>,
    seed: [u64; 2],
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table").field("buckets", &self.heads.len()).finish_non_exhaustive()
    }
}

/// Walks restarted this often fall back to the bucket's lock.
const RETRIES: usize = 4;

impl Table {
    /// A table with `buckets` hash buckets (rounded up to a power of two).
    pub(crate) fn new(buckets: usize) -> Table {
        let n = buckets.clamp(64, 2 * MAX_ENTRIES).next_power_of_two();
        let s = foldhash::fast::RandomState::default();
        use std::hash::BuildHasher;
        Table {
            chunks: (0..MAX_ENTRIES / CHUNK).map(|_| OnceLock::new()).collect(),
            next_chunk: AtomicUsize::new(0),
            free: SegQueue::new(),
            heads: {
                let mut v: Vec<AtomicU32> = Vec::with_capacity(n);
                crate::sys::advise_huge_pages(v.spare_capacity_mut());
                v.extend((0..n).map(|_| AtomicU32::new(0)));
                v.into_boxed_slice()
            },
            bucket_mask: n - 1,
            shards: (0..SHARDS).map(|_| Mutex::new(())).collect(),
            seed: [s.hash_one(1u64) | 1, s.hash_one(2u64)],
        }
    }

    /// The bucket `key` hashes to.
    #[inline]
    pub(crate) fn bucket(&self, key: &Key) -> usize {
        let mut h = self.seed[1];
        for &w in &key.0 {
            h = (h ^ w).wrapping_mul(self.seed[0] | 0x9e37_79b9_7f4a_7c15);
            h ^= h >> 29;
        }
        h = h.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (h ^ (h >> 32)) as usize & self.bucket_mask
    }

    /// Entry `idx` (which was handed out, so its chunk exists).
    #[inline]
    pub(crate) fn entry(&self, idx: u32) -> &Entry {
        let chunk = self.chunks[(idx >> CHUNK_SHIFT) as usize].get().expect("entries are handed out from live chunks");
        &chunk[idx as usize & (CHUNK - 1)]
    }

    /// Starts fetching `key`'s bucket; returns it.
    #[inline]
    pub(crate) fn prefetch_bucket(&self, key: &Key) -> usize {
        let b = self.bucket(key);
        crate::sys::prefetch(&self.heads[b]);
        b
    }

    /// Starts fetching the node bucket `b`'s chain starts with.
    #[inline]
    pub(crate) fn prefetch_chain(&self, b: usize) {
        let n = self.heads[b].load(Ordering::Relaxed);
        if n != 0 {
            let (idx, dir) = unnode(n);
            let e = self.entry(idx);
            crate::sys::prefetch(e);
            crate::sys::prefetch(&e.nodes[dir]);
            // The expiry time, written by every packet.
            crate::sys::prefetch(&e.expires);
        }
    }

    /// Finds `key` without taking a lock.
    #[inline]
    pub(crate) fn find(&self, key: &Key) -> Option<Found> {
        let b = self.bucket(key);
        'walk: for _ in 0..RETRIES {
            let mut n = self.heads[b].load(Ordering::Acquire);
            while n != 0 {
                let (idx, dir) = unnode(n);
                let e = self.entry(idx);
                let seq = e.seq.load(Ordering::Acquire);
                if seq & 1 == 1 {
                    std::hint::spin_loop();
                    continue 'walk;
                }
                let mut same = true;
                for (i, w) in key.0.iter().enumerate() {
                    same &= e.nodes[dir].key[i].load(Ordering::Relaxed) == *w;
                }
                let next = e.nodes[dir].next.load(Ordering::Relaxed);
                let home = e.nodes[dir].home.load(Ordering::Relaxed);
                let live = e.info.load(Ordering::Relaxed) & LIVE != 0;
                fence(Ordering::Acquire);
                if e.seq.load(Ordering::Relaxed) != seq || home as usize != b {
                    continue 'walk;
                }
                if same && live {
                    return Some(Found { idx, dir, seq });
                }
                n = next;
            }
            return None;
        }
        let _g = self.lock_shards(b, b);
        self.find_locked(b, key)
    }

    /// Finds `key` in bucket `b`, whose shard the caller holds.
    fn find_locked(&self, b: usize, key: &Key) -> Option<Found> {
        let mut n = self.heads[b].load(Ordering::Acquire);
        while n != 0 {
            let (idx, dir) = unnode(n);
            let e = self.entry(idx);
            if e.info.load(Ordering::Relaxed) & LIVE != 0 && e.key_is(dir, key) {
                return Some(Found { idx, dir, seq: e.seq.load(Ordering::Relaxed) });
            }
            n = e.nodes[dir].next.load(Ordering::Relaxed);
        }
        None
    }

    /// Locks the shards of buckets `a` and `b` (once if they share one),
    /// always in the same order.
    fn lock_shards(&self, a: usize, b: usize) -> (MutexGuard<'_, ()>, Option<MutexGuard<'_, ()>>) {
        let (sa, sb) = (a % SHARDS, b % SHARDS);
        let (lo, hi) = (sa.min(sb), sa.max(sb));
        let lock = |i: usize| self.shards[i].lock().unwrap_or_else(|e| e.into_inner());
        let first = lock(lo);
        let second = (hi != lo).then(|| lock(hi));
        (first, second)
    }

    fn alloc(&self) -> Option<u32> {
        if let Some(i) = self.free.pop() {
            return Some(i);
        }
        let c = self.next_chunk.fetch_add(1, Ordering::Relaxed);
        if c >= self.chunks.len() {
            self.next_chunk.store(self.chunks.len(), Ordering::Relaxed);
            return None;
        }
        self.chunks[c].get_or_init(|| {
            let mut v: Vec<Entry> = Vec::with_capacity(CHUNK);
            // Huge pages before the first touch: a lookup in a large table
            // then costs no page walk for the entry.
            crate::sys::advise_huge_pages(v.spare_capacity_mut());
            v.extend((0..CHUNK).map(|_| Entry::default()));
            v.into_boxed_slice()
        });
        let base = (c * CHUNK) as u32;
        for i in 1..CHUNK as u32 {
            self.free.push(base + i);
        }
        Some(base)
    }

    /// Inserts a connection with keys `orig` and `reply`; `fill` writes
    /// its state (the entry is not visible to lookups until it returns).
    pub(crate) fn insert(&self, orig: &Key, reply: &Key, fill: impl FnOnce(&Entry)) -> Result<Found, InsertError> {
        let (b0, b1) = (self.bucket(orig), self.bucket(reply));
        let _g = self.lock_shards(b0, b1);
        if self.find_locked(b0, orig).is_some() {
            return Err(InsertError::OrigExists);
        }
        if self.find_locked(b1, reply).is_some() || orig == reply {
            return Err(InsertError::ReplyExists);
        }
        let idx = self.alloc().ok_or(InsertError::Full)?;
        let e = self.entry(idx);
        let seq = e.seq.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        fence(Ordering::Release);
        for (dir, key) in [orig, reply].into_iter().enumerate() {
            for (i, w) in key.0.iter().enumerate() {
                e.nodes[dir].key[i].store(*w, Ordering::Relaxed);
            }
        }
        e.nodes[0].home.store(b0 as u32, Ordering::Relaxed);
        e.nodes[1].home.store(b1 as u32, Ordering::Relaxed);
        fill(e);
        e.info.fetch_or(LIVE, Ordering::Relaxed);
        let (n0, n1) = (node(idx, 0), node(idx, 1));
        if b0 == b1 {
            e.nodes[0].next.store(self.heads[b0].load(Ordering::Relaxed), Ordering::Relaxed);
            e.nodes[1].next.store(n0, Ordering::Relaxed);
        } else {
            e.nodes[0].next.store(self.heads[b0].load(Ordering::Relaxed), Ordering::Relaxed);
            e.nodes[1].next.store(self.heads[b1].load(Ordering::Relaxed), Ordering::Relaxed);
        }
        e.seq.store(seq.wrapping_add(1), Ordering::Release);
        if b0 == b1 {
            self.heads[b0].store(n1, Ordering::Release);
        } else {
            self.heads[b0].store(n0, Ordering::Release);
            self.heads[b1].store(n1, Ordering::Release);
        }
        Ok(Found { idx, dir: 0, seq: seq.wrapping_add(1) })
    }

    /// Removes the connection `f` found, if it is still that connection.
    /// Returns its `info` word if it removed it.
    #[cfg(test)]
    pub(crate) fn remove(&self, f: Found) -> Option<u64> {
        self.remove_if(f, |_| true)
    }

    /// Removes the connection `f` found if it is still that connection and
    /// `still` says so (asked with the connection locked). Returns its
    /// `info` word if it removed it.
    pub(crate) fn remove_if(&self, f: Found, still: impl FnOnce(&Entry) -> bool) -> Option<u64> {
        let e = self.entry(f.idx);
        let (b0, b1) =
            (e.nodes[0].home.load(Ordering::Relaxed) as usize, e.nodes[1].home.load(Ordering::Relaxed) as usize);
        let _g = self.lock_shards(b0, b1);
        // Homes are stable while the entry is live and the shards held.
        if e.seq.load(Ordering::Relaxed) != f.seq
            || e.info.load(Ordering::Relaxed) & LIVE == 0
            || e.nodes[0].home.load(Ordering::Relaxed) as usize != b0
            || e.nodes[1].home.load(Ordering::Relaxed) as usize != b1
        {
            return None;
        }
        // Held to the end, so no packet refreshes what `still` judged.
        let guard = self.lock_entry(e);
        if !still(e) {
            return None;
        }
        for (dir, b) in [(0, b0), (1, b1)] {
            let me = node(f.idx, dir);
            let after = e.nodes[dir].next.load(Ordering::Relaxed);
            let mut at = &self.heads[b];
            loop {
                let n = at.load(Ordering::Relaxed);
                if n == 0 {
                    break;
                }
                if n == me {
                    at.store(after, Ordering::Release);
                    break;
                }
                let (i, d) = unnode(n);
                at = &self.entry(i).nodes[d].next;
            }
        }
        let info = e.info.fetch_and(!LIVE, Ordering::Relaxed);
        e.seq.store(f.seq.wrapping_add(2), Ordering::Release);
        drop(guard);
        self.free.push(f.idx);
        Some(info)
    }

    /// Takes entry `e`'s state lock.
    pub(crate) fn lock_entry<'a>(&self, e: &'a Entry) -> EntryGuard<'a> {
        while e.lock.compare_exchange_weak(0, 1, Ordering::Acquire, Ordering::Relaxed).is_err() {
            std::hint::spin_loop();
        }
        EntryGuard(e)
    }

    /// Locks the connection `f` found, if it is still that connection.
    pub(crate) fn lock_found(&self, f: Found) -> Option<(&Entry, EntryGuard<'_>)> {
        let e = self.entry(f.idx);
        let g = self.lock_entry(e);
        (e.seq.load(Ordering::Acquire) == f.seq && e.info.load(Ordering::Relaxed) & LIVE != 0).then_some((e, g))
    }

    /// Calls `each` with every live entry of chunks `from..` (at most
    /// `limit` entries), stopping early when it returns false; returns
    /// the index to resume from (0 after the last).
    pub(crate) fn scan(&self, from: usize, limit: usize, mut each: impl FnMut(Found, &Entry) -> bool) -> usize {
        let end = self.next_chunk.load(Ordering::Acquire).min(self.chunks.len()) * CHUNK;
        let stop = from.saturating_add(limit).min(end);
        for i in from..stop {
            let Some(chunk) = self.chunks[i >> CHUNK_SHIFT].get() else { continue };
            let e = &chunk[i & (CHUNK - 1)];
            let seq = e.seq.load(Ordering::Acquire);
            if seq & 1 == 0
                && e.info.load(Ordering::Relaxed) & LIVE != 0
                && !each(Found { idx: i as u32, dir: 0, seq }, e)
            {
                return i + 1;
            }
        }
        if stop >= end { 0 } else { stop }
    }

    /// Hash buckets.
    pub(crate) fn buckets(&self) -> usize {
        self.heads.len()
    }
}
/// An entry's state lock, released on drop.
pub(crate) struct EntryGuard<'a>(&'a Entry);

impl Drop for EntryGuard<'_> {
    fn drop(&mut self) {
        self.0.lock.store(0, Ordering::Release);
    }
}

impl Entry {
    fn key_is(&self, dir: usize, key: &Key) -> bool {
        key.0.iter().enumerate().all(|(i, w)| self.nodes[dir].key[i].load(Ordering::Relaxed) == *w)
    }

    /// Direction `dir`'s key.
    pub(crate) fn key(&self, dir: usize) -> Key {
        let mut k = Key::default();
        for (i, w) in k.0.iter_mut().enumerate() {
            *w = self.nodes[dir].key[i].load(Ordering::Relaxed);
        }
        k
    }

    /// The entry's sequence number.
    pub(crate) fn seq(&self) -> u32 {
        self.seq.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::tuple::{TCP, UDP};
    use std::sync::Arc;

    fn key(i: u32) -> Key {
        Key::new(std::net::Ipv4Addr::from(0x0a00_0000 + i).into(), "10.1.0.1".parse().unwrap(), TCP, 1000, 80, 0)
    }

    #[test]
    fn entries_are_about_the_size_promised() {
        assert_eq!(std::mem::size_of::<Entry>(), 192);
    }

    #[test]
    fn insert_find_remove() {
        let t = Table::new(64);
        let k = key(1);
        let f = t.insert(&k, &k.reversed(), |_| {}).unwrap();
        assert_eq!(t.find(&k), Some(Found { dir: 0, ..f }));
        assert_eq!(t.find(&k.reversed()).map(|x| x.dir), Some(1));
        assert_eq!(t.insert(&k, &key(2), |_| {}), Err(InsertError::OrigExists));
        assert_eq!(t.insert(&key(3), &k.reversed(), |_| {}), Err(InsertError::ReplyExists));
        assert!(t.remove(f).is_some());
        assert!(t.remove(f).is_none(), "removed once");
        assert_eq!(t.find(&k), None);
        assert_eq!(t.find(&k.reversed()), None);
        // The old handle no longer names a connection.
        let g = t.insert(&key(4), &key(4).reversed(), |_| {}).unwrap();
        assert!(t.lock_found(f).is_none());
        assert!(t.lock_found(g).is_some());
    }

    /// Many keys in few buckets (long chains, both directions in one
    /// bucket sometimes): every key is found until removed.
    #[test]
    fn chains_stay_consistent() {
        let t = Table::new(64);
        let mut found = Vec::new();
        for i in 0..2000 {
            let k = Key::new(std::net::Ipv4Addr::from(i).into(), std::net::Ipv4Addr::from(i).into(), UDP, 1, 1, 0);
            found.push((k, t.insert(&k, &k.reversed().with_src(k.dst(), 2), |_| {}).unwrap()));
        }
        for (i, (_, f)) in found.iter().enumerate() {
            if i % 3 == 0 {
                t.remove(*f).unwrap();
            }
        }
        for (i, (k, _)) in found.iter().enumerate() {
            assert_eq!(t.find(k).is_some(), i % 3 != 0, "key {i}");
        }
        let mut live = 0;
        assert_eq!(
            t.scan(0, usize::MAX, |_, _| {
                live += 1;
                true
            }),
            0
        );
        assert_eq!(live, 2000 - 667);
    }

    /// Readers on one thread while another inserts and removes: a key
    /// that stays in the table is always found.
    #[test]
    fn lookups_race_with_changes() {
        let t = Arc::new(Table::new(64));
        let stable: Vec<Key> = (0..50).map(|i| key(10_000 + i)).collect();
        for k in &stable {
            t.insert(k, &k.reversed(), |_| {}).unwrap();
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (t, stop) = (t.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let k = key(i % 500);
                    if let Ok(f) = t.insert(&k, &k.reversed(), |_| {}) {
                        t.remove(f);
                    }
                    i += 1;
                }
            })
        };
        for _ in 0..20_000 {
            for k in &stable {
                assert!(t.find(k).is_some());
                assert!(t.find(&k.reversed()).is_some());
            }
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
    }
}
