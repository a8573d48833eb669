//! Rules by identity (match and priority) without keeping a copy of each
//! match in the index: the index holds a hash and a slot number, and the
//! match is read from the slot when a hash agrees. A table of a million
//! rules then indexes them in 16 bytes each (not a 340-byte key), so
//! growing it moves little memory.

use hashbrown::HashTable;

use super::matching::Match;

/// A rule's identity in its table set: no two rules share a match (which
/// carries the table) and a priority.
pub type RuleKey = (Match, u16);

#[inline]
fn hash_of(key: &RuleKey) -> u64 {
    let (m, prio) = key;
    let h = m.value.hash64() ^ m.mask.hash64().rotate_left(23) ^ (*prio as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h.wrapping_mul(0xff51_afd7_ed55_8ccd) ^ (h >> 29)
}

/// Identity → slot, for slots whose identity `key_of` reads.
#[derive(Debug, Default)]
pub(crate) struct IdentityIndex {
    table: HashTable<(u64, u32)>,
}

impl IdentityIndex {
    /// The slot holding `key`.
    #[inline]
    pub(crate) fn get(&self, key: &RuleKey, key_of: impl Fn(u32) -> RuleKey) -> Option<u32> {
        let h = hash_of(key);
        self.table.find(h, |&(eh, slot)| eh == h && key_of(slot) == *key).map(|&(_, slot)| slot)
    }

    /// Records that `slot` holds `key` (which no slot held).
    #[inline]
    pub(crate) fn insert(&mut self, key: &RuleKey, slot: u32) {
        let h = hash_of(key);
        self.table.insert_unique(h, (h, slot), |&(eh, _)| eh);
    }

    /// Forgets `key`; returns the slot that held it.
    #[inline]
    pub(crate) fn remove(&mut self, key: &RuleKey, key_of: impl Fn(u32) -> RuleKey) -> Option<u32> {
        let h = hash_of(key);
        match self.table.find_entry(h, |&(eh, slot)| eh == h && key_of(slot) == *key) {
            Ok(e) => Some(e.remove().0.1),
            Err(_) => None,
        }
    }
}
