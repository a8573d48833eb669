//! Connection tracking and NAT: what the `ct` action consults and
//! commits to, shared by every datapath thread of a switch.
//!
//! One entry per connection holds both directions' keys (the reply key
//! already translated when the connection is NATed), the protocol state
//! (TCP: state and both sequence windows), the mark and label, and when
//! it expires. A packet's key finds its connection and direction with one
//! lock-free probe (see its `table` module for the design). Zones
//! separate connections (each zone its own tuple space, limit and
//! timeouts). Expired connections are removed by a sweep on the switch's
//! slow-path thread, never on the datapath's.
//!
//! What Linux's nf_conntrack and Open vSwitch's userspace conntrack do
//! was the model: the TCP state machine and window checks, the timeouts
//! (Linux's defaults), NAT port selection (keep the port if free, else one
//! of the same class), ICMP errors as `+rel` with their quoted header
//! translated. docs/conntrack.md has the semantics and where they differ.

mod nat;
mod table;
mod tcp;
mod tuple;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};

pub use nat::{Nat, NatKind, NatRange, NatSelect};
pub(crate) use nat::{parse_nat, translate, translate_error};
pub(crate) use table::Found;
use table::{Entry, InsertError, LIVE, Table};
pub use tcp::TcpState;
use tcp::{Side, Tcp};
pub use tuple::Tuple;
pub(crate) use tuple::{Key, Kind, PacketInfo, Untrackable};

/// `ct_state` bits, with Open vSwitch's values.
pub mod state {
    /// The first packet(s) of a connection: not yet answered.
    pub const NEW: u8 = 0x01;
    /// Part of a connection that has seen traffic both ways.
    pub const EST: u8 = 0x02;
    /// Related to a connection (an ICMP error about it).
    pub const REL: u8 = 0x04;
    /// In the reply direction.
    pub const RPL: u8 = 0x08;
    /// Conntrack could not make sense of it.
    pub const INV: u8 = 0x10;
    /// Went through conntrack.
    pub const TRK: u8 = 0x20;
    /// Its connection is source-NATed (and `nat` was asked for).
    pub const SNAT: u8 = 0x40;
    /// Its connection is destination-NATed (and `nat` was asked for).
    pub const DNAT: u8 = 0x80;
    /// Names, in bit order, as `ct_state=+new+trk` spells them.
    pub const NAMES: [(&str, u8); 8] = [
        ("new", NEW),
        ("est", EST),
        ("rel", REL),
        ("rpl", RPL),
        ("inv", INV),
        ("trk", TRK),
        ("snat", SNAT),
        ("dnat", DNAT),
    ];
}

// The `info` word of an entry.
const SEEN_REPLY: u64 = 1 << 8;
const F_SNAT: u64 = 1 << 9;
const F_DNAT: u64 = 1 << 10;
/// The connection's mark or label is not zero.
const F_MARKED: u64 = 1 << 11;
const TCP_SHIFT: u32 = 16;
const ZONE_SHIFT: u32 = 32;
const PROTO_SHIFT: u32 = 48;

#[inline]
fn info_tcp(info: u64) -> TcpState {
    TcpState::from_u8((info >> TCP_SHIFT) as u8)
}

#[inline]
fn info_zone(info: u64) -> u16 {
    (info >> ZONE_SHIFT) as u16
}

/// Timeouts in seconds, per protocol and state. The defaults are Linux
/// nf_conntrack's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Timeouts {
    /// TCP after the first SYN.
    pub tcp_syn_sent: u32,
    /// TCP after the SYN-ACK.
    pub tcp_syn_recv: u32,
    /// TCP established.
    pub tcp_established: u32,
    /// TCP after the first FIN.
    pub tcp_fin_wait: u32,
    /// TCP after the first FIN was acknowledged.
    pub tcp_close_wait: u32,
    /// TCP after both FINs.
    pub tcp_last_ack: u32,
    /// TCP after the last FIN was acknowledged.
    pub tcp_time_wait: u32,
    /// TCP after a RST.
    pub tcp_close: u32,
    /// UDP not answered yet.
    pub udp: u32,
    /// UDP answered.
    pub udp_stream: u32,
    /// ICMP echo.
    pub icmp: u32,
    /// Any other protocol.
    pub other: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_syn_sent: 120,
            tcp_syn_recv: 60,
            tcp_established: 432_000,
            tcp_fin_wait: 120,
            tcp_close_wait: 60,
            tcp_last_ack: 30,
            tcp_time_wait: 120,
            tcp_close: 10,
            udp: 30,
            udp_stream: 120,
            icmp: 30,
            other: 600,
        }
    }
}

impl Timeouts {
    /// The names `ct-set-timeouts` takes.
    pub const NAMES: [&str; 12] = [
        "tcp_syn_sent",
        "tcp_syn_recv",
        "tcp_established",
        "tcp_fin_wait",
        "tcp_close_wait",
        "tcp_last_ack",
        "tcp_time_wait",
        "tcp_close",
        "udp",
        "udp_stream",
        "icmp",
        "other",
    ];

    fn slots(&mut self) -> [&mut u32; 12] {
        [
            &mut self.tcp_syn_sent,
            &mut self.tcp_syn_recv,
            &mut self.tcp_established,
            &mut self.tcp_fin_wait,
            &mut self.tcp_close_wait,
            &mut self.tcp_last_ack,
            &mut self.tcp_time_wait,
            &mut self.tcp_close,
            &mut self.udp,
            &mut self.udp_stream,
            &mut self.icmp,
            &mut self.other,
        ]
    }

    /// Sets the timeout called `name` to `secs`.
    ///
    /// # Errors
    /// An unknown name, or 0 seconds.
    pub fn set(&mut self, name: &str, secs: u32) -> Result<(), String> {
        let Some(i) = Self::NAMES.iter().position(|&n| n == name) else {
            return Err(format!("unknown timeout '{name}' (one of {})", Self::NAMES.join(", ")));
        };
        if secs == 0 {
            return Err(format!("timeout {name} must be at least 1 second"));
        }
        *self.slots()[i] = secs;
        Ok(())
    }

    fn as_array(mut self) -> [u32; 12] {
        self.slots().map(|s| *s)
    }
}

/// One zone's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ZoneConfig {
    /// Most connections the zone may hold (`None`: the default limit; 0:
    /// no limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Its timeouts (`None`: the defaults).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    /// No TCP window checks in this zone.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub liberal: bool,
}

/// Conntrack's settings: what `ct-set-limits` and `ct-set-timeouts`
/// change, and what the daemon saves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ConntrackConfig {
    /// Most connections in all zones together.
    pub limit: u32,
    /// Most connections in a zone without its own limit (`None` or 0: no
    /// limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_zone_limit: Option<u32>,
    /// Timeouts of zones without their own.
    pub timeouts: Timeouts,
    /// Zones with settings of their own.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", with = "zone_keys")]
    pub zones: BTreeMap<u16, ZoneConfig>,
}

/// Zone numbers as the JSON object's (string) keys, read back through
/// strings: the journal's records are an internally tagged enum, whose
/// buffered maps do not turn "4" into a number by themselves.
mod zone_keys {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::ZoneConfig;

    pub fn serialize<S: Serializer>(m: &BTreeMap<u16, ZoneConfig>, s: S) -> Result<S::Ok, S::Error> {
        m.iter().map(|(k, v)| (k.to_string(), v)).collect::<BTreeMap<String, &ZoneConfig>>().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<u16, ZoneConfig>, D::Error> {
        BTreeMap::<String, ZoneConfig>::deserialize(d)?
            .into_iter()
            .map(|(k, v)| {
                k.parse::<u16>()
                    .map(|z| (z, v))
                    .map_err(|_| serde::de::Error::custom(format!("zone '{k}' is not 0-65535")))
            })
            .collect()
    }
}

/// The default global limit.
pub const DEFAULT_LIMIT: u32 = 262_144;
/// Most zones with timeouts or `liberal` of their own.
pub const MAX_ZONE_POLICIES: usize = 255;

impl Default for ConntrackConfig {
    fn default() -> Self {
        ConntrackConfig {
            limit: DEFAULT_LIMIT,
            default_zone_limit: None,
            timeouts: Timeouts::default(),
            zones: BTreeMap::new(),
        }
    }
}

impl ConntrackConfig {
    /// Checks the settings can be applied.
    ///
    /// # Errors
    /// A limit out of range, or too many zones with their own timeouts.
    pub fn validate(&self) -> Result<(), String> {
        if self.limit == 0 || self.limit as usize > table::MAX_ENTRIES {
            return Err(format!("the conntrack limit must be 1 to {}", table::MAX_ENTRIES));
        }
        let policies = self.zones.values().filter(|z| z.timeouts.is_some() || z.liberal).count();
        if policies > MAX_ZONE_POLICIES {
            return Err(format!("at most {MAX_ZONE_POLICIES} zones may have their own timeouts or liberal setting"));
        }
        for (name, t) in std::iter::once((None, &self.timeouts))
            .chain(self.zones.iter().filter_map(|(z, c)| c.timeouts.as_ref().map(|t| (Some(z), t))))
        {
            if t.as_array().contains(&0) {
                let which = name.map_or("the default timeouts".to_string(), |z| format!("zone {z}'s timeouts"));
                return Err(format!("{which} must all be at least 1 second"));
            }
        }
        Ok(())
    }
}

/// Why conntrack dropped a packet or called it invalid (`ct-stats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CtDrop {
    /// Committing a new connection would pass the global limit (dropped).
    Full,
    /// Committing would pass the zone's limit (dropped).
    ZoneFull,
    /// No NAT mapping was free (dropped).
    NatExhausted,
    /// Not trackable or not valid for its connection (`+inv`).
    Invalid,
    /// A later fragment whose datagram's first fragment was not seen
    /// (or not within 30 seconds): `+inv`.
    Fragment,
}

impl CtDrop {
    /// Every reason.
    pub const ALL: [CtDrop; 5] =
        [CtDrop::Full, CtDrop::ZoneFull, CtDrop::NatExhausted, CtDrop::Invalid, CtDrop::Fragment];

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            CtDrop::Full => "full",
            CtDrop::ZoneFull => "zone_full",
            CtDrop::NatExhausted => "nat_exhausted",
            CtDrop::Invalid => "invalid",
            CtDrop::Fragment => "fragment",
        }
    }
}

/// One connection, as `dump-conntrack` lists it.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Connection {
    /// Its zone.
    pub zone: u16,
    /// IP protocol number.
    pub proto: u8,
    /// The original direction, as the first packet carried it.
    pub orig: Tuple,
    /// The reply direction, as replies carry it (translated by NAT).
    pub reply: Tuple,
    /// TCP state (TCP only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_state: Option<TcpState>,
    /// Seconds until it expires.
    pub timeout: u64,
    /// `ct_mark`.
    pub mark: u32,
    /// `ct_label`, as hexadecimal.
    pub label: String,
    /// Replies were seen.
    pub seen_reply: bool,
    /// Source NAT.
    pub snat: bool,
    /// Destination NAT.
    pub dnat: bool,
}

/// One zone's numbers in [`CtStats`].
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct ZoneStats {
    /// Connections now.
    pub connections: u64,
    /// Its limit (`None`: none).
    pub limit: Option<u32>,
    /// Connections by protocol and state (`tcp ESTABLISHED`, `udp`, ...).
    pub by_state: BTreeMap<String, u64>,
}

/// What `ct-stats` shows.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct CtStats {
    /// Connections in all zones.
    pub connections: u64,
    /// The global limit.
    pub limit: u32,
    /// Bytes of memory per connection (entry and its share of the index).
    pub bytes_per_connection: usize,
    /// Per zone (zones with connections or a limit of their own).
    pub zones: BTreeMap<u16, ZoneStats>,
    /// Packets dropped or marked invalid, by reason (every reason).
    pub drops: BTreeMap<CtDrop, u64>,
}

/// A zone policy slot, as the datapath reads it.
#[derive(Debug)]
struct Policy {
    /// Milliseconds, in [`Timeouts::NAMES`] order.
    timeouts: [AtomicU64; 12],
    liberal: AtomicBool,
}

impl Policy {
    fn new(t: &Timeouts, liberal: bool) -> Policy {
        let p = Policy { timeouts: Default::default(), liberal: AtomicBool::new(liberal) };
        p.store(t, liberal);
        p
    }

    fn store(&self, t: &Timeouts, liberal: bool) {
        for (slot, secs) in self.timeouts.iter().zip(t.as_array()) {
            slot.store(secs as u64 * 1000, Ordering::Relaxed);
        }
        self.liberal.store(liberal, Ordering::Relaxed);
    }

    #[inline]
    fn ms(&self, i: usize) -> u64 {
        self.timeouts[i].load(Ordering::Relaxed)
    }

    /// The timeout for a connection of `proto` in `info`'s state.
    fn timeout(&self, proto: u8, info: u64) -> u64 {
        let seen_reply = info & SEEN_REPLY != 0;
        match proto {
            tuple::TCP => match info_tcp(info) {
                TcpState::SynSent | TcpState::SynSent2 | TcpState::None => self.ms(0),
                TcpState::SynRecv => self.ms(1),
                TcpState::Established => self.ms(2),
                TcpState::FinWait => self.ms(3),
                TcpState::CloseWait => self.ms(4),
                TcpState::LastAck => self.ms(5),
                TcpState::TimeWait => self.ms(6),
                TcpState::Close => self.ms(7),
            },
            tuple::UDP | 132 => self.ms(if seen_reply { 9 } else { 8 }),
            tuple::ICMP | tuple::ICMPV6 => self.ms(10),
            _ => self.ms(11),
        }
    }
}

/// What one `ct` action asks of conntrack for a packet.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Request<'a> {
    pub zone: u16,
    pub commit: bool,
    pub force: bool,
    pub nat: Option<&'a Nat>,
    /// `exec(set_field:V/M->ct_mark)`.
    pub mark: Option<(u32, u32)>,
    /// `exec(set_field:V/M->ct_label)`.
    pub label: Option<(u128, u128)>,
    pub now_ms: u64,
    /// A `trace`: look, change nothing.
    pub dry: bool,
}

/// What conntrack made of a packet, carried with it through the tables
/// (a later `ct` in the same zone reuses it instead of looking again).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Hit {
    pub zone: u16,
    /// `ct_state`.
    pub state: u8,
    /// Its connection (`None`: new and not committed, or invalid).
    pub found: Option<Found>,
    /// The packet's key as tracked (before any NAT this pass applied).
    pub key: Key,
    /// The connection's original-direction key (`ct_nw_src`, ...).
    pub orig: Key,
    pub mark: u32,
    pub label: u128,
    /// Where an ICMP error's quoted header starts (related packets).
    pub quoted_at: usize,
    /// The packet was committed just now.
    pub committed: bool,
}

/// What the executor must do to the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rewrite {
    /// Its headers become this key's.
    Headers(Key),
    /// An ICMP error: outer addresses and the quoted packet.
    Error { outer: Key, quoted: Key, at: usize },
}

/// What `execute` decided (returned by value on the packet path: not boxed).
#[derive(Debug, Clone, Copy)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Verdict {
    /// Tracked (possibly `+inv`), and how to rewrite it for NAT.
    Tracked(Hit, Option<Rewrite>),
    /// Dropped: a limit or NAT mapping failed.
    Drop(CtDrop),
}

/// The connection table and its settings (see the [module docs](self)).
pub struct Conntrack {
    table: Table,
    /// Live connections.
    count: AtomicUsize,
    limit: AtomicUsize,
    zone_count: Box<[AtomicU32]>,
    /// 0: the default zone limit; otherwise limit + 1.
    zone_limit: Box<[AtomicU32]>,
    /// 0: none; otherwise limit + 1.
    default_zone_limit: AtomicU32,
    /// Which policy slot each zone uses (0: the default).
    zone_policy: Box<[AtomicU8]>,
    policies: Box<[Policy]>,
    drops: [AtomicU64; CtDrop::ALL.len()],
    /// The settings as set (the control side's copy; also the lock that
    /// orders changes to them).
    config: Mutex<ConntrackConfig>,
    /// Which policy slot each zone with timeouts or `liberal` of its own
    /// holds (changed under `config`'s lock).
    slots: Mutex<BTreeMap<u16, u8>>,
    sweep_at: AtomicUsize,
    salt: AtomicU64,
    /// Datagrams whose first fragment was tracked, by addresses, protocol,
    /// zone and IP identification.
    frags: Box<[Mutex<FragShard>]>,
}

/// A datagram's key to what its first fragment found and when that is forgotten.
type FragShard = std::collections::HashMap<Key, (Hit, u64)>;

/// Fragment table shards, and the datagrams each remembers.
const FRAG_SHARDS: usize = 16;
const MAX_FRAGS_PER_SHARD: usize = 256;
/// How long the later fragments of a datagram are recognised (Linux's
/// reassembly timeout).
const FRAG_TIMEOUT_MS: u64 = 30_000;

impl std::fmt::Debug for Conntrack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conntrack").field("connections", &self.count).finish_non_exhaustive()
    }
}

/// A connection's timeout is rewritten once it is this much staler than a
/// packet would make it (so at most once a second per connection, not once
/// a packet; a connection may expire this much early).
const REFRESH_MS: u64 = 1000;

/// How many entries one sweep step looks at (a whole table of a million
/// in about a second at the slow path's 100 ms rounds).
const SWEEP_STEP: usize = 100_000;

impl Conntrack {
    internal! {
        /// A table whose hash index is sized for `expected` connections (the
        /// global limit starts there too; it can be raised later, at the cost
        /// of longer chains).
        pub fn new(expected: usize) -> Conntrack {
            let expected = expected.clamp(1, table::MAX_ENTRIES);
            let zones = 1usize << 16;
            let config = ConntrackConfig { limit: expected as u32, ..ConntrackConfig::default() };
            Conntrack {
                // Two buckets per connection: each has two keys in the index.
                table: Table::new(2 * expected),
                count: AtomicUsize::new(0),
                limit: AtomicUsize::new(expected),
                zone_count: (0..zones).map(|_| AtomicU32::new(0)).collect(),
                zone_limit: (0..zones).map(|_| AtomicU32::new(0)).collect(),
                default_zone_limit: AtomicU32::new(0),
                zone_policy: (0..zones).map(|_| AtomicU8::new(0)).collect(),
                policies: (0..=MAX_ZONE_POLICIES).map(|_| Policy::new(&Timeouts::default(), false)).collect(),
                drops: Default::default(),
                config: Mutex::new(config),
                slots: Mutex::new(BTreeMap::new()),
                sweep_at: AtomicUsize::new(0),
                salt: AtomicU64::new(0x1234_5678),
                frags: (0..FRAG_SHARDS).map(|_| Mutex::new(std::collections::HashMap::new())).collect(),
            }
        }
    }

    fn config_lock(&self) -> std::sync::MutexGuard<'_, ConntrackConfig> {
        self.config.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The settings in force.
    pub fn config(&self) -> ConntrackConfig {
        self.config_lock().clone()
    }

    internal! {
        /// Applies `c` as a whole (checked first: nothing changes on error).
        ///
        /// # Errors
        /// See [`ConntrackConfig::validate`].
        pub fn apply_config(&self, c: &ConntrackConfig) -> Result<(), String> {
            c.validate()?;
            let mut cur = self.config_lock();
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            // New values are written before old ones are cleared, and a zone
            // keeps its policy slot, so a packet never sees a zone without the
            // settings it had or is getting.
            self.limit.store(c.limit as usize, Ordering::Relaxed);
            self.default_zone_limit
                .store(c.default_zone_limit.filter(|&l| l > 0).map_or(0, |l| l.saturating_add(1)), Ordering::Relaxed);
            self.policies[0].store(&c.timeouts, false);
            let has_policy = |zc: &ZoneConfig| zc.timeouts.is_some() || zc.liberal;
            let gone: Vec<u16> = slots.keys().copied().filter(|z| !c.zones.get(z).is_some_and(has_policy)).collect();
            for z in &gone {
                self.zone_policy[*z as usize].store(0, Ordering::Relaxed);
                slots.remove(z);
            }
            for (z, zc) in c.zones.iter().filter(|(_, zc)| has_policy(zc)) {
                let slot = match slots.get(z) {
                    Some(&s) => s,
                    None => {
                        let used: std::collections::BTreeSet<u8> = slots.values().copied().collect();
                        let s = (1..=MAX_ZONE_POLICIES as u8).find(|s| !used.contains(s)).expect("validated: enough slots");
                        slots.insert(*z, s);
                        s
                    }
                };
                self.policies[slot as usize].store(zc.timeouts.as_ref().unwrap_or(&c.timeouts), zc.liberal);
                self.zone_policy[*z as usize].store(slot, Ordering::Relaxed);
            }
            for (z, zc) in &c.zones {
                // 0 (or the largest number): no limit for this zone.
                let v = match zc.limit {
                    None => 0,
                    Some(0) => u32::MAX,
                    Some(l) => l.saturating_add(1),
                };
                self.zone_limit[*z as usize].store(v, Ordering::Relaxed);
            }
            for z in cur.zones.keys().filter(|z| c.zones.get(z).is_none_or(|zc| zc.limit.is_none())) {
                self.zone_limit[*z as usize].store(0, Ordering::Relaxed);
            }
            *cur = c.clone();
            Ok(())
        }
    }

    #[inline]
    fn policy(&self, zone: u16) -> &Policy {
        &self.policies[self.zone_policy[zone as usize].load(Ordering::Relaxed) as usize]
    }

    fn zone_limit_of(&self, zone: u16) -> Option<u32> {
        match self.zone_limit[zone as usize].load(Ordering::Relaxed) {
            0 => self.default_zone_limit.load(Ordering::Relaxed).checked_sub(1),
            u32::MAX => None,
            l => Some(l - 1),
        }
    }

    fn count_drop(&self, why: CtDrop) {
        self.drops[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Starts fetching what looking `keys` up will read: their buckets,
    /// then the entries they start with, so a burst's cache misses
    /// overlap instead of following one another.
    pub(crate) fn prefetch(&self, keys: &[Key]) {
        let mut buckets = [0usize; 64];
        for (b, k) in buckets.iter_mut().zip(keys) {
            *b = self.table.prefetch_bucket(k);
        }
        for &b in &buckets[..keys.len().min(64)] {
            self.table.prefetch_chain(b);
        }
    }

    /// Live connections.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// True with no connections.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn invalid(&self, zone: u16, why: CtDrop, dry: bool) -> Verdict {
        if !dry {
            self.count_drop(why);
        }
        Verdict::Tracked(Hit { zone, state: state::TRK | state::INV, ..Hit::default() }, None)
    }

    /// Runs a packet through conntrack for one `ct` action. `prev` is what
    /// an earlier `ct` in the same zone found for it (no second lookup).
    pub(crate) fn execute(
        &self,
        pkt: Result<PacketInfo, Untrackable>,
        prev: Option<Hit>,
        req: &Request<'_>,
    ) -> Verdict {
        let info = match pkt {
            Ok(i) => i,
            Err(_) => return self.invalid(req.zone, CtDrop::Invalid, req.dry),
        };
        let v = self.execute_info(&info, prev, req);
        // A first fragment's fate is its datagram's: later fragments find it.
        if let (Verdict::Tracked(hit, _), Some(key)) = (&v, info.frag_key())
            && info.frag.is_some_and(|f| f.first)
            && !req.dry
            && hit.state & state::INV == 0
        {
            self.frag_record(key, hit, req.now_ms);
        }
        v
    }

    fn execute_info(&self, info: &PacketInfo, prev: Option<Hit>, req: &Request<'_>) -> Verdict {
        let later = info.frag.is_some_and(|f| !f.first);
        // What an earlier `ct` in this zone found holds only for the packet
        // as it was then, or as that `ct`'s NAT left it; a packet rewritten
        // since is looked up again.
        let prev = prev.filter(|h| later || h.key == info.key || self.is_translated(h, &info.key));
        let mut hit = match prev {
            Some(mut h) => {
                if let Kind::Error { at, .. } = info.kind {
                    h.quoted_at = at;
                }
                h
            }
            None if later => match info.frag_key().and_then(|k| self.frag_hit(&k, req.now_ms)) {
                Some(h) => h,
                None => return self.invalid(req.zone, CtDrop::Fragment, req.dry),
            },
            None => match self.lookup(info, req) {
                Some(h) => h,
                None => return self.invalid(req.zone, CtDrop::Invalid, req.dry),
            },
        };
        if hit.state & state::INV != 0 {
            return Verdict::Tracked(hit, None);
        }
        if req.commit && !req.dry {
            if hit.found.is_none() {
                match self.commit_new(info, &hit, req) {
                    Ok(f) => {
                        hit.found = Some(f);
                        hit.committed = true;
                    }
                    Err(why) => {
                        self.count_drop(why);
                        return Verdict::Drop(why);
                    }
                }
            } else if let Some(f) = hit.found
                && (req.mark.is_some() || req.label.is_some())
                && hit.state & state::REL == 0
                && let Some((e, _g)) = self.table.lock_found(f)
            {
                set_mark_label(e, req);
            }
        }
        let Some(f) = hit.found else { return Verdict::Tracked(hit, None) };
        // Everything read, then the sequence number checked (a seqlock
        // read: the entry may have been freed and reused meanwhile).
        let e = self.table.entry(f.idx);
        let info_word = e.info.load(Ordering::Relaxed);
        let orig = e.key(0);
        let natted = req.nat.is_some() && info_word & (F_SNAT | F_DNAT) != 0;
        let reply = if natted { e.key(1) } else { Key::default() };
        let (mark, label) = if info_word & F_MARKED != 0 {
            let l = (e.label[0].load(Ordering::Relaxed) as u128) << 64 | e.label[1].load(Ordering::Relaxed) as u128;
            (e.mark.load(Ordering::Relaxed), l)
        } else {
            (0, 0)
        };
        std::sync::atomic::fence(Ordering::Acquire);
        if e.seq() != f.seq || info_word & LIVE == 0 {
            // Removed under our feet: report what was found, rewrite nothing.
            hit.found = None;
            return Verdict::Tracked(hit, None);
        }
        (hit.orig, hit.mark, hit.label) = (orig, mark, label);
        let rewrite = if natted {
            hit.state |= if info_word & F_SNAT != 0 { state::SNAT } else { 0 };
            hit.state |= if info_word & F_DNAT != 0 { state::DNAT } else { 0 };
            // A packet of this direction leaves as the other direction's
            // key reversed.
            let (this, other) = if f.dir == 0 { (orig, reply) } else { (reply, orig) };
            let target = other.reversed();
            if hit.state & state::REL != 0 {
                // The quoted packet went the other way: it becomes what the
                // other side sent. The outer header gets this direction's
                // translation, whoever sent the error (as Linux does).
                let quoted = if f.dir == 0 { reply } else { orig };
                let src = if this.src() != target.src() { target.src() } else { info.key.src() };
                let dst = if this.dst() != target.dst() { target.dst() } else { info.key.dst() };
                let outer = info.key.with_src(src, 0).with_dst(dst, 0);
                Some(Rewrite::Error { outer, quoted, at: hit.quoted_at })
            } else {
                Some(Rewrite::Headers(target))
            }
        } else {
            None
        };
        Verdict::Tracked(hit, rewrite)
    }

    /// True if `key` is what `h`'s connection's NAT makes of a packet of
    /// its direction (the same packet, after an earlier `ct(nat)`).
    fn is_translated(&self, h: &Hit, key: &Key) -> bool {
        let Some(f) = h.found else { return false };
        let e = self.table.entry(f.idx);
        let other = e.key(1 - f.dir);
        std::sync::atomic::fence(Ordering::Acquire);
        e.seq() == f.seq && other.reversed() == *key
    }

    /// Finds the packet's connection and checks the packet against it,
    /// moving its state on (not in a dry run). `None`: invalid.
    fn lookup(&self, info: &PacketInfo, req: &Request<'_>) -> Option<Hit> {
        let zone = req.zone;
        let mut hit = Hit { zone, key: info.key, orig: info.key, ..Hit::default() };
        if let Kind::Error { quoted, at } = info.kind {
            // The error travels the way a reply to the quoted packet would.
            let f = self.table.find(&quoted.reversed())?;
            let e = self.table.entry(f.idx);
            if e.expires.load(Ordering::Relaxed) <= req.now_ms {
                return None;
            }
            hit.state = state::TRK | state::REL | if f.dir == 1 { state::RPL } else { 0 };
            hit.found = Some(f);
            hit.quoted_at = at;
            return Some(hit);
        }
        let policy = self.policy(zone);
        let mut found = self.table.find(&info.key);
        if let Some(f) = found {
            let e = self.table.entry(f.idx);
            let stale = e.expires.load(Ordering::Relaxed) <= req.now_ms;
            let forced = req.force && req.commit && f.dir == 1;
            // A new SYN on a connection in TIME_WAIT or CLOSE opens a new
            // connection (fresh sequence numbers, state and NAT), as in Linux.
            let reopened = f.dir == 0
                && matches!(info.kind, Kind::Tcp(seg) if tcp::can_open(&seg))
                && matches!(info_tcp(e.info.load(Ordering::Relaxed)), TcpState::TimeWait | TcpState::Close);
            if stale || forced || reopened {
                if !req.dry {
                    self.remove(f);
                }
                found = None;
            }
        }
        let Some(f) = found else {
            // A new connection, if this packet may open one.
            let ok = match info.kind {
                Kind::Tcp(seg) => tcp::can_open(&seg),
                Kind::Echo(request) => request,
                _ => true,
            };
            if !ok {
                return None;
            }
            hit.state = state::TRK | state::NEW;
            return Some(hit);
        };
        let reply = f.dir == 1;
        let state_of = |word: u64| {
            state::TRK
                | if reply {
                    state::EST | state::RPL
                } else if word & SEEN_REPLY != 0 {
                    state::EST
                } else {
                    state::NEW
                }
        };
        if !matches!(info.kind, Kind::Tcp(_)) {
            // Without TCP's windows, an established connection usually has
            // nothing to change: then no lock and no write (its timeout is
            // refreshed once it is a second stale), a read validated by
            // the sequence number as a lookup is.
            let e = self.table.entry(f.idx);
            let word = e.info.load(Ordering::Relaxed);
            let expires = e.expires.load(Ordering::Relaxed);
            std::sync::atomic::fence(Ordering::Acquire);
            if e.seq() == f.seq && word & LIVE != 0 {
                if matches!(info.kind, Kind::Echo(request) if request == reply) {
                    return None;
                }
                let proto = (word >> PROTO_SHIFT) as u8;
                let fresh = req.now_ms + policy.timeout(proto, word) < expires + REFRESH_MS;
                if (req.dry || fresh) && !(reply && word & SEEN_REPLY == 0) {
                    hit.state = state_of(word);
                    hit.found = Some(f);
                    return Some(hit);
                }
            }
        }
        let Some((e, _g)) = self.table.lock_found(f) else {
            // Removed since the lookup: as if it had not been there.
            hit.state = state::TRK | state::NEW;
            return Some(hit);
        };
        let mut word = e.info.load(Ordering::Relaxed);
        match info.kind {
            Kind::Tcp(seg) => {
                let mut t = load_tcp(e, word);
                // A first fragment's length is not the segment's: its
                // window is not checked.
                let liberal = policy.liberal.load(Ordering::Relaxed) || info.frag.is_some();
                if !t.update(&seg, reply, liberal) {
                    return None;
                }
                if !req.dry {
                    store_tcp(e, &t);
                }
                word = (word & !(0xff << TCP_SHIFT)) | (t.state as u64) << TCP_SHIFT;
            }
            Kind::Echo(request) if request == reply => return None,
            _ => {}
        }
        if reply {
            word |= SEEN_REPLY;
        }
        if !req.dry {
            e.info.store(word, Ordering::Relaxed);
            let proto = (word >> PROTO_SHIFT) as u8;
            e.expires.store(req.now_ms + policy.timeout(proto, word), Ordering::Relaxed);
        }
        hit.state = state_of(word);
        hit.found = Some(f);
        Some(hit)
    }

    /// Commits the new connection `hit` describes, choosing its NAT.
    fn commit_new(&self, info: &PacketInfo, hit: &Hit, req: &Request<'_>) -> Result<Found, CtDrop> {
        let zone = req.zone;
        if let Some(limit) = self.zone_limit_of(zone)
            && self.zone_count[zone as usize].load(Ordering::Relaxed) >= limit
        {
            return Err(CtDrop::ZoneFull);
        }
        if self.count.load(Ordering::Relaxed) >= self.limit.load(Ordering::Relaxed) {
            return Err(CtDrop::Full);
        }
        let orig = hit.key;
        let proto = orig.proto();
        let tcp = match info.kind {
            Kind::Tcp(seg) => Some(Tcp::opened_by(&seg)),
            _ => None,
        };
        let range = match req.nat {
            Some(Nat::Range(r)) if r.addr_min.is_ipv4() != orig.is_v6() => Some(r),
            _ => None,
        };
        let flags = match range.map(|r| r.kind) {
            Some(NatKind::Src) => F_SNAT,
            Some(NatKind::Dst) => F_DNAT,
            None => 0,
        };
        let policy = self.policy(zone);
        let word = flags
            | tcp.map_or(0, |t| (t.state as u64) << TCP_SHIFT)
            | (zone as u64) << ZONE_SHIFT
            | (proto as u64) << PROTO_SHIFT;
        let fill = |e: &Entry| {
            e.info.store(word, Ordering::Relaxed);
            e.expires.store(req.now_ms + policy.timeout(proto, word), Ordering::Relaxed);
            e.mark.store(0, Ordering::Relaxed);
            e.label[0].store(0, Ordering::Relaxed);
            e.label[1].store(0, Ordering::Relaxed);
            store_tcp(e, &tcp.unwrap_or_default());
            set_mark_label(e, req);
        };
        let salt = self.salt.fetch_add(1, Ordering::Relaxed);
        let plain = [orig.reversed()];
        let mut tries: Box<dyn Iterator<Item = Key>> = match range {
            Some(r) => Box::new(nat::candidates(&orig, r, salt)),
            None => Box::new(plain.into_iter()),
        };
        // Counted before the insert (and taken back if it fails), so that a
        // concurrent removal never sees a count below its own entry's.
        self.count.fetch_add(1, Ordering::Relaxed);
        self.zone_count[zone as usize].fetch_add(1, Ordering::Relaxed);
        let uncount = || {
            self.count.fetch_sub(1, Ordering::Relaxed);
            self.zone_count[zone as usize].fetch_sub(1, Ordering::Relaxed);
        };
        for reply in &mut tries {
            match self.table.insert(&orig, &reply, fill) {
                Ok(f) => return Ok(f),
                Err(InsertError::ReplyExists) => continue,
                Err(InsertError::OrigExists) => {
                    // Another thread committed it first: use theirs.
                    uncount();
                    return self.table.find(&orig).ok_or(CtDrop::Invalid);
                }
                Err(InsertError::Full) => {
                    uncount();
                    return Err(CtDrop::Full);
                }
            }
        }
        uncount();
        Err(CtDrop::NatExhausted)
    }

    /// Remembers what a first fragment found, for the datagram's other
    /// fragments (bounded: a full shard forgets its oldest).
    fn frag_record(&self, key: Key, hit: &Hit, now_ms: u64) {
        let shard = &self.frags[(nat::mix(key.0[1] ^ key.0[3] ^ key.0[4]) as usize) % FRAG_SHARDS];
        let mut m = shard.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= MAX_FRAGS_PER_SHARD {
            m.retain(|_, (_, exp)| *exp > now_ms);
            if m.len() >= MAX_FRAGS_PER_SHARD
                && let Some(oldest) = m.iter().min_by_key(|(_, (_, exp))| *exp).map(|(k, _)| *k)
            {
                m.remove(&oldest);
            }
        }
        m.insert(key, (*hit, now_ms + FRAG_TIMEOUT_MS));
    }

    /// What the first fragment of a later fragment's datagram found.
    fn frag_hit(&self, key: &Key, now_ms: u64) -> Option<Hit> {
        let shard = &self.frags[(nat::mix(key.0[1] ^ key.0[3] ^ key.0[4]) as usize) % FRAG_SHARDS];
        let m = shard.lock().unwrap_or_else(|e| e.into_inner());
        m.get(key).filter(|(_, exp)| *exp > now_ms).map(|(h, _)| *h)
    }

    fn remove(&self, f: Found) -> bool {
        self.remove_if(f, |_| true)
    }

    fn remove_if(&self, f: Found, still: impl FnOnce(&Entry) -> bool) -> bool {
        match self.table.remove_if(f, still) {
            Some(info) => {
                self.count.fetch_sub(1, Ordering::Relaxed);
                self.zone_count[info_zone(info) as usize].fetch_sub(1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    internal! {
        /// One step of the expiry sweep (the slow-path thread calls it every
        /// round): looks at up to `SWEEP_STEP` (4,096) entries, removes those that
        /// expired. Returns how many it removed.
        pub fn sweep(&self, now_ms: u64) -> usize {
            let mut expired = Vec::new();
            let from = self.sweep_at.load(Ordering::Relaxed);
            let next = self.table.scan(from, SWEEP_STEP, |f, e| {
                if e.expires.load(Ordering::Relaxed) <= now_ms {
                    expired.push(f);
                }
                true
            });
            self.sweep_at.store(next, Ordering::Relaxed);
            // A packet may have refreshed one since: checked again under its locks.
            expired.into_iter().filter(|&f| self.remove_if(f, |e| e.expires.load(Ordering::Relaxed) <= now_ms)).count()
        }
    }

    /// Removes the connections `select` picks; returns how many.
    pub fn flush(&self, mut select: impl FnMut(&Connection) -> bool) -> usize {
        let mut gone = Vec::new();
        self.table.scan(0, usize::MAX, |f, e| {
            if let Some(c) = describe(e, f, 0)
                && select(&c)
            {
                gone.push(f);
            }
            true
        });
        gone.into_iter().filter(|&f| self.remove(f)).count()
    }

    /// Every connection (at most `limit`), as of `now_ms`.
    pub fn dump(&self, now_ms: u64, limit: usize, mut select: impl FnMut(&Connection) -> bool) -> Vec<Connection> {
        let mut out = Vec::new();
        if limit == 0 {
            return out;
        }
        self.table.scan(0, usize::MAX, |f, e| {
            if let Some(c) = describe(e, f, now_ms)
                && select(&c)
            {
                out.push(c);
            }
            out.len() < limit
        });
        out
    }

    /// The numbers `ct-stats` shows.
    pub fn stats(&self) -> CtStats {
        let mut zones: BTreeMap<u16, ZoneStats> = BTreeMap::new();
        let mut total = 0;
        self.table.scan(0, usize::MAX, |f, e| {
            if let Some(c) = describe(e, f, 0) {
                total += 1;
                let z = zones.entry(c.zone).or_default();
                z.connections += 1;
                let what = match (c.proto, c.tcp_state) {
                    (_, Some(s)) => format!("tcp {}", s.name()),
                    (tuple::UDP, _) => "udp".to_string(),
                    (tuple::ICMP | tuple::ICMPV6, _) => "icmp".to_string(),
                    (p, _) => format!("proto {p}"),
                };
                *z.by_state.entry(what).or_default() += 1;
            }
            true
        });
        let config = self.config();
        for z in config.zones.iter().filter(|(_, c)| c.limit.is_some()).map(|(z, _)| *z) {
            zones.entry(z).or_default();
        }
        for (z, s) in zones.iter_mut() {
            s.limit = self.zone_limit_of(*z);
        }
        CtStats {
            connections: total,
            limit: self.limit.load(Ordering::Relaxed) as u32,
            bytes_per_connection: std::mem::size_of::<Entry>()
                + 4 * self.table.buckets() / self.limit.load(Ordering::Relaxed).max(1),
            zones,
            drops: CtDrop::ALL.iter().map(|&d| (d, self.drops[d as usize].load(Ordering::Relaxed))).collect(),
        }
    }

    /// Connections in `zone`.
    pub fn zone_len(&self, zone: u16) -> usize {
        self.zone_count[zone as usize].load(Ordering::Relaxed) as usize
    }

    /// How many packets were dropped or called invalid for `why`.
    pub fn drops(&self, why: CtDrop) -> u64 {
        self.drops[why as usize].load(Ordering::Relaxed)
    }
}

fn set_mark_label(e: &Entry, req: &Request<'_>) {
    if let Some((v, m)) = req.mark {
        let old = e.mark.load(Ordering::Relaxed);
        e.mark.store((old & !m) | (v & m), Ordering::Relaxed);
    }
    if let Some((v, m)) = req.label {
        for (i, shift) in [(0, 64), (1, 0)] {
            let (v, m) = ((v >> shift) as u64, (m >> shift) as u64);
            let old = e.label[i].load(Ordering::Relaxed);
            e.label[i].store((old & !m) | (v & m), Ordering::Relaxed);
        }
    }
    let marked = e.mark.load(Ordering::Relaxed) != 0 || e.label.iter().any(|l| l.load(Ordering::Relaxed) != 0);
    if marked {
        e.info.fetch_or(F_MARKED, Ordering::Relaxed);
    } else {
        e.info.fetch_and(!F_MARKED, Ordering::Relaxed);
    }
}

fn load_tcp(e: &Entry, info: u64) -> Tcp {
    let w: [u64; 4] = std::array::from_fn(|i| e.tcp[i].load(Ordering::Relaxed));
    Tcp { state: info_tcp(info), sides: [Side::from_words(w[0], w[1]), Side::from_words(w[2], w[3])] }
}

fn store_tcp(e: &Entry, t: &Tcp) {
    let (a, b) = t.sides[0].to_words();
    let (c, d) = t.sides[1].to_words();
    for (slot, v) in e.tcp.iter().zip([a, b, c, d]) {
        slot.store(v, Ordering::Relaxed);
    }
}

/// An entry as a [`Connection`], read consistently (`None` if it changed
/// or went while being read).
fn describe(e: &Entry, f: Found, now_ms: u64) -> Option<Connection> {
    let info = e.info.load(Ordering::Relaxed);
    let (orig, reply) = (e.key(0), e.key(1));
    let expires = e.expires.load(Ordering::Relaxed);
    let mark = e.mark.load(Ordering::Relaxed);
    let label = (e.label[0].load(Ordering::Relaxed) as u128) << 64 | e.label[1].load(Ordering::Relaxed) as u128;
    std::sync::atomic::fence(Ordering::Acquire);
    if e.seq() != f.seq || info & LIVE == 0 {
        return None;
    }
    let proto = orig.proto();
    Some(Connection {
        zone: info_zone(info),
        proto,
        orig: orig.tuple(),
        reply: reply.tuple(),
        tcp_state: (proto == tuple::TCP).then(|| info_tcp(info)),
        timeout: expires.saturating_sub(now_ms) / 1000,
        mark,
        label: format!("{label:#x}"),
        seen_reply: info & SEEN_REPLY != 0,
        snat: info & F_SNAT != 0,
        dnat: info & F_DNAT != 0,
    })
}

impl Hit {
    /// Writes the `ct_*` fields into a packet's key: state and zone
    /// always, the connection's fields when there is one (or would be).
    pub(crate) fn write_key(&self, key: &mut crate::flow::PackedKey) {
        use crate::flow::{
            CT_DST_WORD, CT_LABEL_WORD, CT_PROTO_SHIFT, CT_SRC_WORD, CT_STATE_SHIFT, CT_WORD, CT_ZONE_SHIFT, MARK_WORD,
        };
        key.set(MARK_WORD, CT_STATE_SHIFT, 8, self.state as u64);
        key.set(MARK_WORD, CT_ZONE_SHIFT, 16, self.zone as u64);
        let o = if self.state & state::INV != 0 { Key::default() } else { self.orig };
        // ICMP: the original direction's type and code, as Open vSwitch
        // has them (an echo request; other messages are not told apart).
        let (tp_src, tp_dst) = match (o.is_echo(), o.is_icmp()) {
            (true, _) => (if o.is_v6() { 128 } else { 8 }, 0),
            (false, true) => (0, 0),
            _ => (o.sport(), o.dport()),
        };
        key.0[CT_WORD] = self.mark as u64 | (tp_src as u64) << 32 | (tp_dst as u64) << 48;
        (key.0[CT_SRC_WORD], key.0[CT_SRC_WORD + 1]) = (o.0[0], o.0[1]);
        (key.0[CT_DST_WORD], key.0[CT_DST_WORD + 1]) = (o.0[2], o.0[3]);
        (key.0[CT_LABEL_WORD], key.0[CT_LABEL_WORD + 1]) = ((self.label >> 64) as u64, self.label as u64);
        key.set(2, CT_PROTO_SHIFT, 8, o.proto() as u64);
    }

    /// Clears the `ct_*` fields of a key (`ct_clear`).
    pub(crate) fn clear_key(key: &mut crate::flow::PackedKey) {
        Hit::default().write_key(key);
    }
}

/// The expiry sweep, as the slow-path thread runs it.
pub(crate) struct Sweeper(pub std::sync::Arc<Conntrack>);

impl crate::port::upkeep::Upkeep for Sweeper {
    fn run(&mut self, now_ms: u64) {
        self.0.sweep(now_ms);
    }
}

/// Which connections `dump-conntrack` and `flush-conntrack` act on: a
/// zone and fields of the original direction, in `ovs-dpctl`'s spelling
/// (`zone=1,ct_nw_src=10.0.0.2,ct_nw_proto=6,ct_tp_dst=80`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ConnFilter {
    /// Only this zone.
    pub zone: Option<u16>,
    /// Original source address.
    pub src: Option<std::net::IpAddr>,
    /// Original destination address.
    pub dst: Option<std::net::IpAddr>,
    /// IP protocol.
    pub proto: Option<u8>,
    /// Original source port.
    pub sport: Option<u16>,
    /// Original destination port.
    pub dport: Option<u16>,
}

impl ConnFilter {
    /// Parses `zone=N` and `ct_nw_src=`, `ct_nw_dst=`, `ct_ipv6_src=`,
    /// `ct_ipv6_dst=`, `ct_nw_proto=`, `ct_tp_src=`, `ct_tp_dst=` (or
    /// `tcp`, `udp`, `icmp`), separated by commas or spaces.
    ///
    /// # Errors
    /// An unknown field or a bad value, naming it.
    pub fn parse(text: &str) -> Result<ConnFilter, String> {
        let mut f = ConnFilter::default();
        for item in text.split([',', ' ']).map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = item.split_once('=').unwrap_or((item, ""));
            let num = |max: u64| -> Result<u64, String> { crate::flow::parse_num(v, k, max).map_err(|e| e.0) };
            let addr = || v.parse::<std::net::IpAddr>().map_err(|_| format!("{k}: '{v}' is not an IP address"));
            match k {
                "zone" => f.zone = Some(num(0xffff)? as u16),
                "ct_nw_src" | "ct_ipv6_src" | "src" => f.src = Some(addr()?),
                "ct_nw_dst" | "ct_ipv6_dst" | "dst" => f.dst = Some(addr()?),
                "ct_nw_proto" | "proto" => f.proto = Some(num(0xff)? as u8),
                "ct_tp_src" | "sport" => f.sport = Some(num(0xffff)? as u16),
                "ct_tp_dst" | "dport" => f.dport = Some(num(0xffff)? as u16),
                "tcp" | "tcp6" if v.is_empty() => f.proto = Some(tuple::TCP),
                "udp" | "udp6" if v.is_empty() => f.proto = Some(tuple::UDP),
                "icmp" if v.is_empty() => f.proto = Some(tuple::ICMP),
                "icmp6" if v.is_empty() => f.proto = Some(tuple::ICMPV6),
                _ => {
                    return Err(format!(
                        "unknown connection field '{k}' (zone, ct_nw_src, ct_nw_dst, ct_ipv6_src, ct_ipv6_dst, ct_nw_proto, ct_tp_src, ct_tp_dst)"
                    ));
                }
            }
        }
        Ok(f)
    }

    /// True if `c` is selected.
    pub fn matches(&self, c: &Connection) -> bool {
        self.zone.is_none_or(|z| z == c.zone)
            && self.src.is_none_or(|a| a == c.orig.src)
            && self.dst.is_none_or(|a| a == c.orig.dst)
            && self.proto.is_none_or(|p| p == c.proto)
            && self.sport.is_none_or(|p| p == c.orig.sport)
            && self.dport.is_none_or(|p| p == c.orig.dport)
    }
}

/// A frame with its headers found, for timing conntrack alone
/// (benchmarks only; the `internals` feature).
#[cfg(feature = "internals")]
#[derive(Debug, Clone)]
pub struct PreparedFrame {
    frame: [u8; 128],
    len: usize,
    headers: crate::flow::Headers,
}

#[cfg(feature = "internals")]
impl PreparedFrame {
    /// Parses `frame` (at most 128 bytes) once.
    pub fn new(frame: &[u8]) -> PreparedFrame {
        let mut f = [0u8; 128];
        f[..frame.len()].copy_from_slice(frame);
        PreparedFrame { frame: f, len: frame.len(), headers: crate::flow::PackedParse::extract(frame, 0).headers }
    }
}

#[cfg(feature = "internals")]
impl Conntrack {
    /// Tracks `p` as `ct(zone=ZONE[,commit][,nat...])` does in the
    /// datapath (the transport header read, the connection found, its
    /// state moved on, or committed), without rewriting it; returns its
    /// `ct_state`, 0 if conntrack dropped it.
    pub fn track(&self, p: &PreparedFrame, zone: u16, commit: bool, nat: Option<&Nat>, now_ms: u64) -> u8 {
        let info = PacketInfo::parse(&p.frame[..p.len], &p.headers, zone);
        let req = Request { zone, commit, force: false, nat, mark: None, label: None, now_ms, dry: false };
        match self.execute(info, None, &req) {
            Verdict::Tracked(h, _) => h.state,
            Verdict::Drop(_) => 0,
        }
    }

    /// Tracks a burst as the datapath does: every packet's bucket and
    /// first entry fetched ahead, then each tracked; returns the sum of
    /// their `ct_state`s.
    pub fn track_burst(&self, burst: &[PreparedFrame], zone: u16, now_ms: u64) -> u32 {
        let mut keys = [Key::default(); 32];
        let n = burst.len().min(32);
        for (k, p) in keys.iter_mut().zip(&burst[..n]) {
            if let Ok(i) = PacketInfo::parse(&p.frame[..p.len], &p.headers, zone) {
                *k = i.key;
            }
        }
        self.prefetch(&keys[..n]);
        burst[..n].iter().map(|p| self.track(p, zone, false, None, now_ms) as u32).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{HashMap, HashSet};
    use std::net::{IpAddr, Ipv4Addr};

    fn udp_info(src: u32, sport: u16, dst: u32, dport: u16, zone: u16) -> PacketInfo {
        let key = Key::new(Ipv4Addr::from(src).into(), Ipv4Addr::from(dst).into(), tuple::UDP, sport, dport, zone);
        PacketInfo { key, kind: Kind::Udp, frag: None }
    }

    fn req<'a>(nat: Option<&'a Nat>) -> Request<'a> {
        Request { zone: 1, commit: true, force: false, nat, mark: None, label: None, now_ms: 0, dry: false }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Random SNAT allocation over a small address and port space
        /// never gives two connections one reply tuple, and each reply
        /// finds its own connection.
        #[test]
        fn nat_mappings_are_unique(
            conns in proptest::collection::vec((0u32..4, 1000u16..1008, 0u32..2), 1..300),
            random in any::<bool>(),
        ) {
            let ct = Conntrack::new(1024);
            let text = if random { "src=192.0.2.1-192.0.2.2:2000-2063,random" } else { "src=192.0.2.1-192.0.2.2:2000-2063" };
            let nat = parse_nat(text).unwrap();
            let mut replies: HashMap<Key, Key> = HashMap::new();
            let mut committed = HashSet::new();
            for (src, sport, dst) in conns {
                let info = udp_info(0x0a00_0000 + src, sport, 0x0808_0800 + dst, 53, 1);
                let fresh = !committed.contains(&info.key);
                match ct.execute(Ok(info), None, &req(Some(&nat))) {
                    Verdict::Tracked(h, Some(Rewrite::Headers(to))) => {
                        let f = h.found.expect("committed");
                        let reply = ct.table.entry(f.idx).key(1);
                        prop_assert_eq!(to.reversed(), reply);
                        prop_assert!(matches!(to.src(), IpAddr::V4(a) if (0xc000_0201..=0xc000_0202).contains(&u32::from(a))));
                        prop_assert!((2000..=2063).contains(&to.sport()));
                        if fresh {
                            prop_assert!(replies.insert(reply, info.key).is_none(), "reply tuple given twice");
                            committed.insert(info.key);
                        }
                    }
                    Verdict::Drop(CtDrop::NatExhausted) => prop_assert!(fresh),
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
            }
            for (reply, orig) in &replies {
                let (a, b) = (ct.table.find(reply).unwrap(), ct.table.find(orig).unwrap());
                prop_assert_eq!((a.idx, a.dir, b.dir), (b.idx, 1, 0));
            }
            prop_assert_eq!(ct.len(), replies.len());
            prop_assert_eq!(ct.zone_len(1), replies.len());
        }

        /// The shared table against a plain map: inserts (refused when a
        /// key is taken), removals and lookups of random keys agree.
        #[test]
        fn the_table_behaves_like_a_map(ops in proptest::collection::vec((0u8..3, 0u32..40, 0u32..40), 1..400)) {
            let t = table::Table::new(64);
            let mut model: HashMap<Key, (Key, bool)> = HashMap::new(); // key -> (orig key, is reply)
            let mut found: HashMap<Key, Found> = HashMap::new(); // orig -> handle
            let key = |i: u32| Key::new(Ipv4Addr::from(i).into(), Ipv4Addr::from(1000 + i % 7).into(), tuple::TCP, 1, 2, 0);
            for (op, a, b) in ops {
                let (ka, kb) = (key(a), key(b + 100));
                match op {
                    0 => {
                        let r = t.insert(&ka, &kb, |e| e.info.store(0, Ordering::Relaxed));
                        let want_ok = !model.contains_key(&ka) && !model.contains_key(&kb);
                        prop_assert_eq!(r.is_ok(), want_ok, "insert {:?}", r);
                        if let Ok(f) = r {
                            model.insert(ka, (ka, false));
                            model.insert(kb, (ka, true));
                            found.insert(ka, f);
                        }
                    }
                    1 => {
                        if let Some((orig, _)) = model.get(&ka).copied() {
                            let f = found.remove(&orig).unwrap();
                            prop_assert!(t.remove(f).is_some());
                            model.retain(|_, (o, _)| *o != orig);
                        }
                    }
                    _ => {
                        for k in [ka, kb] {
                            let got = t.find(&k).map(|f| f.dir == 1);
                            prop_assert_eq!(got, model.get(&k).map(|(_, r)| *r));
                        }
                    }
                }
            }
            let mut live = 0;
            t.scan(0, usize::MAX, |_, _| { live += 1; true });
            prop_assert_eq!(live, found.len());
        }
    }
}
