//! MAC learning: which port an Ethernet address lives behind, per VLAN.
//!
//! The table is the truth, shared by every datapath thread and the
//! control plane ([`Switch::fdb`](crate::Switch::fdb) reads it). The fast
//! path reaches it through a per-thread cache that answers most frames with one probe of a thread-local
//! array; the cache is invalidated by the table's generation number, which
//! moves whenever an entry moves or goes away.
//!
//! * Learning a new address or moving one takes the write lock; refreshing
//!   an existing entry only stores an atomic timestamp under the read lock,
//!   and the cache does that at most once per refresh interval per address.
//! * Capacity is bounded. When full, the port holding the most dynamic
//!   entries gives up its least recently used one (fair eviction, as Open
//!   vSwitch does), so one port spraying random source addresses only
//!   evicts its own entries.
//! * Aging runs as a sweep over the slots, in bounded chunks, so no single
//!   step holds the write lock for long even at a million entries.
//!
//! Time is passed in as milliseconds (see [`crate::clock`]).

pub(crate) mod cache;
pub(crate) mod table;

pub(crate) use cache::MacCache;
pub use table::{MacEntry, MacLearn, MacTable, MacTableConfig, MacTableStats};

/// The largest capacity a table accepts.
pub const MAX_CAPACITY: usize = 16 * 1024 * 1024;

/// Packs (VLAN, MAC) into the table's key: VLAN in bits 48..60.
#[inline]
pub(crate) fn mac_key(vlan: u16, mac: crate::MacAddr) -> u64 {
    ((vlan as u64 & 0x0fff) << 48) | mac.to_u64()
}

/// Unpacks a key made by [`mac_key`].
#[inline]
pub(crate) fn split_key(key: u64) -> (u16, crate::MacAddr) {
    ((key >> 48) as u16, crate::MacAddr::from_u64(key & 0xffff_ffff_ffff))
}
