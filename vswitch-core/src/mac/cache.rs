use super::{MacLearn, MacTable, mac_key};
use crate::MacAddr;
use crate::port::PortNo;

/// Entries in a thread's cache (a power of two).
const CACHE_ENTRIES: usize = 4096;

#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    key: u64,
    port: PortNo,
    /// Table generation the answer came from; 0 never matches.
    generation: u64,
    /// When this thread last pushed a refresh for the key to the table.
    refreshed_ms: u64,
}

/// A per-datapath-thread, direct-mapped cache in front of a [`MacTable`].
///
/// An answer is valid while the table's generation equals the one it was
/// cached under; [`MacCache::begin_burst`] reads the generation once per
/// burst. Source learning through the cache touches the shared table only
/// when the address is new here, moved, or due for a refresh.
#[derive(Debug)]
pub struct MacCache {
    entries: Box<[Entry]>,
    generation: u64,
    refresh_ms: u64,
}

impl Default for MacCache {
    fn default() -> Self {
        Self::new()
    }
}

#[inline]
fn slot(key: u64) -> usize {
    // Fibonacci hashing: the top bits of a multiply by 2^64/phi.
    (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - CACHE_ENTRIES.trailing_zeros())) as usize
}

impl MacCache {
    /// An empty cache.
    pub fn new() -> Self {
        MacCache { entries: vec![Entry::default(); CACHE_ENTRIES].into_boxed_slice(), generation: 0, refresh_ms: 1000 }
    }

    /// Picks up the table's generation and refresh interval; call once per
    /// burst before [`learn`](MacCache::learn) and [`lookup`](MacCache::lookup).
    #[inline]
    pub fn begin_burst(&mut self, table: &MacTable) {
        self.generation = table.generation();
        self.refresh_ms = table.refresh_interval_ms();
    }

    /// Learns `mac` on `port`; returns what the table did, or `None` when
    /// the cache answered without touching the table.
    #[inline]
    pub fn learn(&mut self, table: &MacTable, vlan: u16, mac: MacAddr, port: PortNo, now_ms: u64) -> Option<MacLearn> {
        let key = mac_key(vlan, mac);
        let e = &mut self.entries[slot(key)];
        if e.key == key
            && e.generation == self.generation
            && e.port == port
            && now_ms.wrapping_sub(e.refreshed_ms) < self.refresh_ms
        {
            return None;
        }
        let outcome = table.learn(vlan, mac, port, now_ms);
        let cached_port = match outcome {
            MacLearn::Learned | MacLearn::Refreshed | MacLearn::Moved { .. } => Some(port),
            MacLearn::StaticConflict { port } => Some(port),
            MacLearn::Full | MacLearn::NotUnicast => None,
        };
        match cached_port {
            Some(p) => *e = Entry { key, port: p, generation: self.generation, refreshed_ms: now_ms },
            None => e.generation = 0,
        }
        Some(outcome)
    }

    /// The port `mac` in `vlan` is behind, if known.
    #[inline]
    pub fn lookup(&mut self, table: &MacTable, vlan: u16, mac: MacAddr) -> Option<PortNo> {
        match self.probe(vlan, mac) {
            Ok(port) => port,
            Err(key) => {
                let port = table.lookup(vlan, mac);
                self.fill(key, port);
                port
            }
        }
    }

    /// The cache's answer for `mac` in `vlan` (`Ok(Some)` known), or the
    /// key to look up in the table (`Err`). The datapath probes a whole
    /// burst, then resolves the misses with one table call.
    #[inline]
    pub(crate) fn probe(&self, vlan: u16, mac: MacAddr) -> Result<Option<PortNo>, u64> {
        let key = mac_key(vlan, mac);
        let e = &self.entries[slot(key)];
        if e.key == key && e.generation == self.generation { Ok(Some(e.port)) } else { Err(key) }
    }

    /// Records the table's answer for `key`. Unknown addresses are not
    /// cached: they are flooded until learned, and learning does not move
    /// the generation.
    #[inline]
    pub(crate) fn fill(&mut self, key: u64, port: Option<PortNo>) {
        if let Some(port) = port {
            // refreshed_ms = 0 makes the first learn through the cache refresh.
            self.entries[slot(key)] = Entry { key, port, generation: self.generation, refreshed_ms: 0 };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mac::MacTableConfig;

    fn mac(n: u8) -> MacAddr {
        MacAddr([2, 0, 0, 0, 0, n])
    }

    #[test]
    fn answers_from_cache_until_generation_moves() {
        let t = MacTable::new(MacTableConfig::default()).unwrap();
        let mut c = MacCache::new();
        c.begin_burst(&t);
        assert_eq!(c.learn(&t, 0, mac(1), 1, 0), Some(MacLearn::Learned));
        assert_eq!(c.learn(&t, 0, mac(1), 1, 10), None, "second sighting answered by the cache");
        assert_eq!(c.lookup(&t, 0, mac(1)), Some(1));
        // Another thread moves the address: the table's generation changes.
        assert_eq!(t.learn(0, mac(1), 2, 20), MacLearn::Moved { from: 1 });
        assert_eq!(c.lookup(&t, 0, mac(1)), Some(1), "stale within the old burst");
        c.begin_burst(&t);
        assert_eq!(c.lookup(&t, 0, mac(1)), Some(2));
    }

    #[test]
    fn refreshes_table_once_per_interval() {
        let t = MacTable::new(MacTableConfig { aging_secs: 300, capacity: 16 }).unwrap();
        let mut c = MacCache::new();
        c.begin_burst(&t);
        c.learn(&t, 0, mac(1), 1, 0);
        assert_eq!(c.learn(&t, 0, mac(1), 1, 999), None);
        assert_eq!(c.learn(&t, 0, mac(1), 1, 1000), Some(MacLearn::Refreshed));
        // Table saw the refresh at 1000 ms: not expired at 300.5 s.
        assert_eq!(t.expire_now(300_500), 0);
        assert_eq!(t.expire_now(301_000), 1);
    }

    #[test]
    fn learning_moves_through_cache() {
        let t = MacTable::new(MacTableConfig::default()).unwrap();
        let mut c = MacCache::new();
        c.begin_burst(&t);
        c.learn(&t, 7, mac(9), 1, 0);
        assert_eq!(c.learn(&t, 7, mac(9), 3, 5), Some(MacLearn::Moved { from: 1 }));
        assert_eq!(c.lookup(&t, 7, mac(9)), Some(3));
    }
}
