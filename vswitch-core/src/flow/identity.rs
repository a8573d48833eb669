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

/// Identity → slot, for slots whose identity `key_of` reads.
#[derive(Debug, Default)]
pub(crate) struct IdentityIndex {
    table: HashTable<(u64, u32)>,
    /// Seeded per index, so rules cannot be chosen to collide.
    seed: foldhash::fast::RandomState,
}

impl IdentityIndex {
    #[inline]
    fn hash_of(&self, key: &RuleKey) -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut h = self.seed.build_hasher();
        for w in key.0.value.0.iter().chain(key.0.mask.0.iter()) {
            h.write_u64(*w);
        }
        h.write_u16(key.1);
        h.finish()
    }

    /// The slot of `slots` holding `key` (`key_of` reads an entry's).
    #[inline]
    pub(crate) fn get<T>(&self, key: &RuleKey, slots: &[Option<T>], key_of: impl Fn(&T) -> RuleKey) -> Option<u32> {
        let h = self.hash_of(key);
        let holds = holds(key, slots, key_of);
        self.table.find(h, |&(eh, slot)| eh == h && holds(slot)).map(|&(_, slot)| slot)
    }

    /// Records that `slot` holds `key` (which no slot held).
    #[inline]
    pub(crate) fn insert(&mut self, key: &RuleKey, slot: u32) {
        let h = self.hash_of(key);
        self.table.insert_unique(h, (h, slot), |&(eh, _)| eh);
    }

    /// Forgets `key`; returns the slot of `slots` that held it.
    #[inline]
    pub(crate) fn remove<T>(
        &mut self,
        key: &RuleKey,
        slots: &[Option<T>],
        key_of: impl Fn(&T) -> RuleKey,
    ) -> Option<u32> {
        let h = self.hash_of(key);
        let holds = holds(key, slots, key_of);
        match self.table.find_entry(h, |&(eh, slot)| eh == h && holds(slot)) {
            Ok(e) => Some(e.remove().0.1),
            Err(_) => None,
        }
    }
}

/// Whether a slot of `slots` holds an entry whose identity is `key`.
#[inline]
fn holds<'a, T>(
    key: &'a RuleKey,
    slots: &'a [Option<T>],
    key_of: impl Fn(&T) -> RuleKey + 'a,
) -> impl Fn(u32) -> bool + 'a {
    move |slot| slots.get(slot as usize).and_then(Option::as_ref).is_some_and(|e| key_of(e) == *key)
}
