//! Native tunnelling: VXLAN and GRE ports that send and receive through an
//! **uplink port** of the switch (`options:uplink=PORT`: an AF_XDP or
//! AF_PACKET port on the underlay interface) instead of kernel sockets,
//! the idea behind Open vSwitch's `tnl_push` / `tnl_pop`.
//!
//! * **Transmit.** The port builds the whole outer frame itself: Ethernet
//!   (the uplink's MAC to the next hop's), IPv4 (DF set, `tos`, `ttl`,
//!   header checksum), UDP (source port from the inner flow's hash,
//!   checksum zero) and VXLAN, or GRE, in the packet's headroom, and hands
//!   the burst to the uplink's `tx_burst` from its own thread. What the
//!   header needs per remote (next hop, its MAC, the source address) is
//!   resolved once and cached in the port until the routes or neighbours
//!   change.
//! * **Routes** are the kernel's main table, dumped by the switch's slow
//!   path and again whenever rtnetlink announces a change to links,
//!   addresses or routes; the longest prefix (then the lowest metric)
//!   wins, and it must leave through the uplink's interface.
//! * **Neighbours** come from ARP on the uplinks: replies, requests aimed
//!   at a local endpoint and anything from a host already known refresh
//!   the cache. A packet to a next hop not in it sends an ARP request (at
//!   most one a second per address) and is dropped
//!   (`tunnel_no_neighbour`); an entry in use is asked for again once it is
//!   half its aging old, so a busy flow never sees it expire; an entry is
//!   forgotten after the aging time (300 s by default, as `tnl-neigh-aging`
//!   sets it).
//! * **Receive.** Before the uplink's bridge sees a burst, the datapath
//!   gives it to the uplink's tunnels: IPv4 to a local endpoint, UDP to a
//!   VXLAN port's `dst_port` or GRE, is decapsulated in place (no copy) and
//!   queued on the tunnel port whose remote and key match, the same
//!   ranking as the kernel-socket mode; ARP is learnt from, and a request
//!   for a local endpoint that the kernel will not answer (an AF_XDP
//!   uplink takes every frame from it; a `local_ip` that is not the
//!   interface's own) is answered. Everything else goes on into the
//!   uplink's bridge as before.
//!
//! IPv4 underlays only; an IPv6 `remote_ip` is refused when the port is
//! created.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};

use serde::Serialize;

use super::wire::{self, Malformed};
use super::{Encap, Key, Member, QUEUE_MAX, Remote, TunnelConfig};
use crate::datapath::Wakeup;
use crate::packet::{Packet, PacketPool, TunnelMeta};
use crate::port::deferred::PortStatus;
use crate::port::upkeep::Upkeep;
use crate::port::{DropReason, Port, PortCounters, TxOutcome};
use crate::sys::netlink::{Rtnl, RtnlMonitor};
use crate::wire::MacAddr;
use crate::{Error, Result};

/// Default neighbour aging, as OVS's is (tnl/neigh/aging), in seconds.
pub const DEFAULT_NEIGH_AGING_S: u64 = 300;
/// Least time between two ARP requests for one address.
const ASK_EVERY_MS: u64 = 1_000;
/// A cached "unresolved" is tried again after this long.
const MISS_RETRY_MS: u64 = 1_000;
/// Remotes a port keeps resolved (`remote_ip=flow` may name many).
const MAX_HOPS: usize = 4_096;
/// Outer Ethernet + IPv4 bytes.
const OUTER_L3: usize = 14 + 20;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A route of the kernel's main table, as `tnl-route-show` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TunnelRoute {
    /// Destination prefix, `a.b.c.d/len`.
    pub prefix: String,
    /// Output interface.
    pub dev: String,
    /// Gateway, if not on-link.
    pub gateway: Option<Ipv4Addr>,
    /// Preferred source address.
    pub src: Option<Ipv4Addr>,
    /// Metric.
    pub metric: u32,
    /// `unicast`, or `blackhole`, `unreachable`, `prohibit`: routes that
    /// refuse what they cover (a tunnel to such a remote counts
    /// `tunnel_no_route`, as the kernel would refuse it).
    pub kind: String,
    /// The uplink port on that interface, if one is on the switch.
    pub uplink: Option<String>,
}

/// A resolved neighbour, as `tnl-neigh-show` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TunnelNeighbour {
    /// The next hop's address.
    pub ip: Ipv4Addr,
    /// Its MAC.
    pub mac: String,
    /// The uplink port it was learnt on.
    pub uplink: String,
    /// Seconds since it was last heard from.
    pub age_s: u64,
}

#[derive(Debug, Clone, Copy)]
struct Route4 {
    dst: u32,
    prefix: u8,
    gateway: Option<Ipv4Addr>,
    oif: Option<u32>,
    prefsrc: Option<Ipv4Addr>,
    metric: u32,
    rtype: u8,
}

impl Route4 {
    fn covers(&self, ip: Ipv4Addr) -> bool {
        let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - self.prefix) };
        u32::from(ip) & mask == self.dst & mask
    }
}

#[derive(Debug, Clone, Copy)]
struct Neigh {
    mac: MacAddr,
    learned_ms: u64,
}

/// An address on one uplink's segment.
type NeighKey = (Arc<str>, Ipv4Addr);

#[derive(Debug, Default)]
struct Neighbours {
    known: HashMap<NeighKey, Neigh>,
    /// When each address was last asked for.
    asked: HashMap<NeighKey, u64>,
}

/// What an ARP packet may do to the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Learn {
    /// Refresh an entry that exists (any ARP from a known host).
    Refresh,
    /// Make an entry: a request aimed at a local endpoint (its sender is
    /// about to talk to us), as the kernel does.
    Request,
    /// A reply: makes an entry only if we asked for it (an unsolicited one
    /// refreshes at most, as the kernel's `arp_accept=0`).
    Reply,
}

/// The switch's native-tunnelling state: routes, neighbours, uplinks.
#[derive(Debug)]
pub(crate) struct Native {
    routes: RwLock<Vec<Route4>>,
    /// Interface names by index, from the last refresh.
    ifnames: RwLock<HashMap<u32, String>>,
    neigh: Mutex<Neighbours>,
    /// Bumped whenever a route or neighbour changes: ports' caches
    /// compare it.
    generation: AtomicU64,
    /// The clock of neighbour timing (monotonic, the datapath threads'
    /// own: it keeps running if the slow half does not).
    base: std::time::Instant,
    aging_ms: AtomicU64,
    /// Something asked for the kernel's tables to be read again.
    stale: AtomicBool,
    /// Uplinks tunnels use, by port name.
    uplinks: Mutex<HashMap<String, Weak<Uplink>>>,
    /// Every port of the switch, for uplinks to bind to.
    ports: Mutex<HashMap<String, PortRef>>,
    /// The slow half has been handed to the switch.
    upkeep_taken: AtomicBool,
    /// Sockets that hold the tunnels' UDP ports and GRE from the kernel.
    claims: Mutex<HashMap<(i32, Ipv4Addr, u16), Weak<OwnedFd>>>,
}

impl Default for Native {
    fn default() -> Self {
        Native {
            routes: RwLock::default(),
            ifnames: RwLock::default(),
            neigh: Mutex::default(),
            generation: AtomicU64::new(1),
            base: std::time::Instant::now(),
            aging_ms: AtomicU64::new(DEFAULT_NEIGH_AGING_S * 1000),
            stale: AtomicBool::new(true),
            uplinks: Mutex::default(),
            ports: Mutex::default(),
            upkeep_taken: AtomicBool::new(false),
            claims: Mutex::default(),
        }
    }
}

/// A port of the switch an uplink can bind to.
#[derive(Debug, Clone)]
pub(crate) struct PortRef {
    pub(crate) port: Weak<Mutex<Box<dyn Port>>>,
    pub(crate) counters: Arc<PortCounters>,
    pub(crate) kind: &'static str,
    pub(crate) bridge: String,
}

impl Native {
    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn now(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    /// The slow half panicked (and is gone): the next native tunnel port
    /// added hands out a new one. Neighbour timing goes on meanwhile;
    /// route changes are followed again once it is back.
    pub(crate) fn upkeep_failed(&self) {
        self.upkeep_taken.store(false, Ordering::Release);
        self.stale.store(true, Ordering::Release);
    }

    /// The slow half (route and address refresh, neighbour aging), once.
    pub(crate) fn take_upkeep(self: &Arc<Self>) -> Option<Box<dyn Upkeep>> {
        if self.upkeep_taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        Some(Box::new(NativeUpkeep { native: self.clone(), monitor: None, rtnl: None, next_sweep_ms: 0 }))
    }

    /// The socket that keeps the kernel from answering a tunnel's packets
    /// (see [`claim`](crate::sys::tunnel_sock::claim)), shared by the
    /// ports of one endpoint; None if it cannot be had (another socket
    /// holds the port: that one answers them).
    fn claim(&self, proto: i32, local: Ipv4Addr, port: u16) -> Option<Arc<OwnedFd>> {
        let mut all = lock(&self.claims);
        all.retain(|_, w| w.strong_count() > 0);
        if let Some(c) = all.get(&(proto, local, port)).and_then(Weak::upgrade) {
            return Some(c);
        }
        let c = Arc::new(crate::sys::tunnel_sock::claim(proto, local, port).ok()?);
        all.insert((proto, local, port), Arc::downgrade(&c));
        Some(c)
    }

    /// The claim socket for a tunnel endpoint (see [`claim`](Self::claim)).
    fn claim_for(&self, encap: Encap, local: Option<Ipv4Addr>, dst_port: u16) -> Option<Arc<OwnedFd>> {
        match (encap, local) {
            (Encap::Vxlan, Some(l)) => self.claim(libc::IPPROTO_UDP, l, dst_port),
            (Encap::Gre, Some(_)) => self.claim(libc::IPPROTO_GRE, Ipv4Addr::UNSPECIFIED, 0),
            (_, None) => None,
        }
    }

    /// A port joined the switch.
    pub(crate) fn port_added(&self, name: &str, r: PortRef) {
        lock(&self.ports).insert(name.to_string(), r.clone());
        let up = lock(&self.uplinks).get(name).and_then(Weak::upgrade);
        if let Some(up) = up {
            up.bind(Some(r));
            self.stale.store(true, Ordering::Release);
            self.bump();
        }
    }

    /// A port left the switch.
    pub(crate) fn port_removed(&self, name: &str) {
        lock(&self.ports).remove(name);
        let up = lock(&self.uplinks).get(name).and_then(Weak::upgrade);
        if let Some(up) = up {
            up.bind(None);
            self.bump();
        }
    }

    /// Port `name` is about to be removed: its uplink lets go of it first,
    /// so no tunnel's transmit holds the port when its last reference is
    /// dropped (it is closed on the caller's thread, not a datapath's).
    /// Returns the port's entry, for [`port_stayed`](Self::port_stayed)
    /// should the removal fail; meanwhile no tunnel opening binds to it.
    pub(crate) fn port_leaving(&self, name: &str) -> Option<PortRef> {
        let r = lock(&self.ports).remove(name);
        let up = lock(&self.uplinks).get(name).and_then(Weak::upgrade);
        if let Some(up) = up {
            up.bind(None);
            self.bump();
        }
        r
    }

    /// Port `name` was not removed after all (the datapath refused): it is
    /// an uplink candidate again, and its uplink takes it back.
    pub(crate) fn port_stayed(&self, name: &str, r: Option<PortRef>) {
        let Some(r) = r else { return };
        lock(&self.ports).insert(name.to_string(), r);
        self.rebind(name);
    }

    /// Binds uplink `name` again to its port if it is unbound and the port
    /// is on the switch: after a port comes back, or after the tunnels
    /// using it changed (a refusal may no longer hold, or may now).
    fn rebind(&self, name: &str) {
        let r = lock(&self.ports).get(name).cloned();
        let up = lock(&self.uplinks).get(name).and_then(Weak::upgrade);
        if let (Some(r), Some(up)) = (r, up) {
            let unbound = lock(&up.bound).is_none();
            if unbound {
                up.bind(Some(r));
                self.bump();
            }
        }
    }

    /// The uplink for port `name`, made (and bound, if the port is there)
    /// if no tunnel uses it yet.
    fn uplink(self: &Arc<Self>, name: &str) -> Arc<Uplink> {
        let mut all = lock(&self.uplinks);
        all.retain(|_, w| w.strong_count() > 0);
        if let Some(u) = all.get(name).and_then(Weak::upgrade) {
            return u;
        }
        let u = Arc::new(Uplink {
            name: name.into(),
            native: Arc::downgrade(self),
            bound: Mutex::new(None),
            members: Mutex::default(),
            info: RwLock::new(UplinkInfo::derived(name)),
        });
        all.insert(name.to_string(), Arc::downgrade(&u));
        drop(all);
        if let Some(r) = lock(&self.ports).get(name).cloned() {
            u.bind(Some(r));
        }
        u.refresh_info(&mut Rtnl::open().ok());
        self.stale.store(true, Ordering::Release);
        u
    }

    /// Sets the neighbour aging time.
    pub(crate) fn set_aging(&self, seconds: u64) {
        self.aging_ms.store(seconds.max(1) * 1000, Ordering::Relaxed);
    }

    /// The neighbour aging time, in seconds.
    pub(crate) fn aging(&self) -> u64 {
        self.aging_ms.load(Ordering::Relaxed) / 1000
    }

    /// Forgets every neighbour; returns how many there were.
    pub(crate) fn flush_neighbours(&self) -> usize {
        let mut n = lock(&self.neigh);
        let had = n.known.len();
        n.known.clear();
        n.asked.clear();
        drop(n);
        self.bump();
        had
    }

    /// The neighbour cache, by address.
    pub(crate) fn neighbours(&self) -> Vec<TunnelNeighbour> {
        let now = self.now();
        let mut v: Vec<_> = lock(&self.neigh)
            .known
            .iter()
            .map(|((up, ip), n)| TunnelNeighbour {
                ip: *ip,
                mac: n.mac.to_string(),
                uplink: up.to_string(),
                age_s: now.saturating_sub(n.learned_ms) / 1000,
            })
            .collect();
        v.sort_by(|a, b| a.ip.cmp(&b.ip).then_with(|| a.uplink.cmp(&b.uplink)));
        v
    }

    /// The IPv4 routes the tunnels choose from, most specific first.
    pub(crate) fn routes(&self) -> Vec<TunnelRoute> {
        if self.stale.load(Ordering::Acquire) || self.routes.read().unwrap_or_else(|e| e.into_inner()).is_empty() {
            // Nobody has read them yet (no native tunnel, or a moment ago).
            self.refresh(&mut Rtnl::open().ok());
        }
        let names = self.ifnames.read().unwrap_or_else(|e| e.into_inner());
        let uplinks: HashMap<u32, String> = lock(&self.uplinks)
            .values()
            .filter_map(Weak::upgrade)
            .filter_map(|u| Some((u.info().ifindex?, u.name.to_string())))
            .collect();
        self.routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|r| TunnelRoute {
                prefix: format!("{}/{}", Ipv4Addr::from(r.dst), r.prefix),
                dev: r.oif.and_then(|i| names.get(&i).cloned()).unwrap_or_else(|| "?".into()),
                gateway: r.gateway,
                src: r.prefsrc,
                metric: r.metric,
                kind: match r.rtype {
                    crate::sys::netlink::RTN_UNICAST => "unicast",
                    6 => "blackhole",
                    7 => "unreachable",
                    _ => "prohibit",
                }
                .to_string(),
                uplink: r.oif.and_then(|i| uplinks.get(&i).cloned()),
            })
            .collect()
    }

    /// Reads the kernel's routes and the uplinks' interfaces again.
    fn refresh(&self, rtnl: &mut Option<Rtnl>) {
        self.stale.store(false, Ordering::Release);
        if rtnl.is_none() {
            *rtnl = Rtnl::open().ok();
        }
        let Some(r) = rtnl.as_mut() else { return };
        match r.routes() {
            Ok(all) => {
                let mut v: Vec<Route4> = all
                    .into_iter()
                    .filter_map(|r| match r.dst {
                        IpAddr::V4(d) => Some(Route4 {
                            dst: u32::from(d),
                            prefix: r.prefix,
                            gateway: r.gateway.and_then(v4),
                            oif: r.oif,
                            prefsrc: r.prefsrc.and_then(v4),
                            metric: r.metric,
                            rtype: r.rtype,
                        }),
                        IpAddr::V6(_) => None,
                    })
                    .collect();
                v.sort_by(|a, b| b.prefix.cmp(&a.prefix).then(a.metric.cmp(&b.metric)));
                *self.routes.write().unwrap_or_else(|e| e.into_inner()) = v;
            }
            Err(_) => *rtnl = None,
        }
        *self.ifnames.write().unwrap_or_else(|e| e.into_inner()) = interface_names();
        let ups: Vec<_> = lock(&self.uplinks).values().filter_map(Weak::upgrade).collect();
        for u in ups {
            u.refresh_info(rtnl);
        }
        self.bump();
    }

    /// The route to `ip` as the kernel would choose it, preferring among
    /// equals (the same prefix and metric: a multipath route's next hops,
    /// or the same prefix on two interfaces) the one out of `ifindex`.
    /// None if no route covers it or the best one refuses it.
    fn route(&self, ip: Ipv4Addr, ifindex: u32) -> Option<Route4> {
        let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
        let best = routes.iter().find(|r| r.covers(ip))?;
        if best.rtype != crate::sys::netlink::RTN_UNICAST {
            return None;
        }
        let equal =
            |r: &&Route4| r.covers(ip) && r.prefix == best.prefix && r.metric == best.metric && r.rtype == best.rtype;
        routes.iter().filter(equal).find(|r| r.oif == Some(ifindex)).or(Some(best)).copied()
    }

    /// Records that `ip` is at `mac` on `uplink`'s segment, as `how`
    /// allows. The generation moves (ports resolve again) only when an
    /// entry is made or its MAC changes.
    fn learn(&self, uplink: &Arc<str>, ip: Ipv4Addr, mac: MacAddr, how: Learn) {
        if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || !mac.is_unicast() {
            return;
        }
        let now = self.now();
        let key = (uplink.clone(), ip);
        let mut n = lock(&self.neigh);
        let asked = n.asked.contains_key(&key);
        let changed = match n.known.get_mut(&key) {
            Some(e) => {
                let moved = e.mac != mac;
                *e = Neigh { mac, learned_ms: now };
                moved
            }
            None if how == Learn::Refresh || (how == Learn::Reply && !asked) => return,
            None => {
                n.known.insert(key.clone(), Neigh { mac, learned_ms: now });
                true
            }
        };
        n.asked.remove(&key);
        drop(n);
        if changed {
            self.bump();
        }
    }

    /// The neighbour `ip` on `uplink`'s segment, and whether to ask for it
    /// (none known, or known and half aged), at most once a second.
    fn neighbour(&self, uplink: &Arc<str>, ip: Ipv4Addr) -> (Option<Neigh>, bool) {
        let now = self.now();
        let aging = self.aging_ms.load(Ordering::Relaxed);
        let key = (uplink.clone(), ip);
        let mut n = lock(&self.neigh);
        let known = n.known.get(&key).copied().filter(|e| now.saturating_sub(e.learned_ms) < aging);
        let due = known.is_none_or(|e| now.saturating_sub(e.learned_ms) >= aging / 2);
        let ask = due && n.asked.get(&key).is_none_or(|&t| now.saturating_sub(t) >= ASK_EVERY_MS);
        if ask {
            n.asked.insert(key, now);
        }
        (known, ask)
    }

    /// Forgets entries older than the aging time; true if any.
    fn age(&self) -> bool {
        let now = self.now();
        let aging = self.aging_ms.load(Ordering::Relaxed);
        let mut n = lock(&self.neigh);
        let had = n.known.len();
        n.known.retain(|_, e| now.saturating_sub(e.learned_ms) < aging);
        n.asked.retain(|_, t| now.saturating_sub(*t) < 60_000);
        had != n.known.len()
    }
}

fn v4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    }
}

/// Interface names by index, from sysfs.
fn interface_names() -> HashMap<u32, String> {
    let mut out = HashMap::new();
    for e in std::fs::read_dir("/sys/class/net").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(i) = std::fs::read_to_string(e.path().join("ifindex")).ok().and_then(|s| s.trim().parse().ok()) {
            out.insert(i, name);
        }
    }
    out
}

/// The native tunnelling slow half: every 100 ms, the kernel's tables read
/// again if rtnetlink said they changed, and neighbours aged.
struct NativeUpkeep {
    native: Arc<Native>,
    monitor: Option<RtnlMonitor>,
    rtnl: Option<Rtnl>,
    next_sweep_ms: u64,
}

impl Upkeep for NativeUpkeep {
    fn run(&mut self, now_ms: u64) {
        let n = &self.native;
        if self.monitor.is_none() {
            self.monitor = RtnlMonitor::open().ok();
            n.stale.store(true, Ordering::Release);
        }
        let announced = self.monitor.as_mut().is_some_and(RtnlMonitor::changed);
        if announced || n.stale.load(Ordering::Acquire) {
            n.refresh(&mut self.rtnl);
        }
        if now_ms >= self.next_sweep_ms {
            self.next_sweep_ms = now_ms + 1_000;
            if n.age() {
                n.bump();
            }
        }
    }
}

/// What an uplink's interface is.
#[derive(Debug, Clone)]
struct UplinkInfo {
    ifindex: Option<u32>,
    mac: MacAddr,
    mtu: u32,
    /// Its IPv4 addresses.
    addrs: Vec<Ipv4Addr>,
    /// A virtual interface (veth): senders on the same machine leave
    /// inner checksums to an offload and may hand over merged segments.
    is_virtual: bool,
}

impl UplinkInfo {
    /// For a port with no kernel interface (an in-process uplink): a
    /// locally administered MAC from its name, 1500 bytes, no address.
    fn derived(name: &str) -> UplinkInfo {
        let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        let b = h.to_be_bytes();
        UplinkInfo {
            ifindex: None,
            mac: MacAddr([0x02, b[1], b[2], b[3], b[4], b[5]]),
            mtu: 1500,
            addrs: Vec::new(),
            is_virtual: false,
        }
    }
}

/// The port an uplink sends through, while it is on the switch.
#[derive(Debug)]
struct Bound {
    port: Weak<Mutex<Box<dyn Port>>>,
    counters: Arc<PortCounters>,
    /// The kernel sees what the port receives (AF_PACKET) and answers ARP
    /// for its own addresses.
    kernel_sees: bool,
}

/// A tunnel port receiving through an uplink.
struct NativeMember {
    m: Member,
    encap: Encap,
    local: Option<Ipv4Addr>,
    dst_port: u16,
    /// The tunnel port's bridge (its uplink must be on another).
    bridge: String,
    status: PortStatus,
    /// Holds the tunnel's UDP port (or GRE) from the kernel, while the
    /// uplink is one the kernel sees (AF_PACKET).
    claim: Option<Arc<OwnedFd>>,
}

impl std::fmt::Debug for NativeMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeMember").field("name", &self.m.name).field("queued", &self.m.queue.len()).finish()
    }
}

#[derive(Debug, Default)]
struct Members {
    list: Vec<NativeMember>,
    next_id: u64,
}

/// An uplink: a port of the switch that native tunnels send and receive
/// through.
#[derive(Debug)]
pub(crate) struct Uplink {
    name: Arc<str>,
    native: Weak<Native>,
    bound: Mutex<Option<Bound>>,
    members: Mutex<Members>,
    info: RwLock<UplinkInfo>,
}

/// On every port: the uplink its received bursts go through first, if
/// native tunnels use it.
#[derive(Debug, Default)]
pub(crate) struct UplinkHook {
    on: AtomicBool,
    to: Mutex<Option<Arc<Uplink>>>,
}

impl UplinkHook {
    /// The uplink, if the port is one (one relaxed load if it is not).
    #[inline]
    pub(crate) fn get(&self) -> Option<Arc<Uplink>> {
        if !self.on.load(Ordering::Relaxed) {
            return None;
        }
        lock(&self.to).clone()
    }

    fn set(&self, to: Option<Arc<Uplink>>) {
        let mut t = lock(&self.to);
        self.on.store(to.is_some(), Ordering::Relaxed);
        *t = to;
    }
}

impl Uplink {
    fn info(&self) -> UplinkInfo {
        self.info.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Binds the uplink to port `to` (None: unbinds it), unless that port
    /// cannot be one for its tunnels (see [`refusal`]): then it stays
    /// unbound and the tunnels show why as their error. Locks: `bound`,
    /// then `members`, as everywhere.
    fn bind(self: &Arc<Self>, to: Option<PortRef>) {
        let mut b = lock(&self.bound);
        if let Some(old) = b.take() {
            old.counters.uplink.set(None);
        }
        let mut ms = lock(&self.members);
        let Some(r) = to else {
            // Gone: what a refusal said no longer holds.
            ms.list.iter().for_each(|m| m.status.set_error(None));
            return;
        };
        if let Some(why) = ms.list.iter().find_map(|m| refusal(&self.name, &r, &m.bridge)) {
            ms.list.iter().for_each(|m| m.status.set_error(Some(why.clone())));
            return;
        }
        ms.list.iter().for_each(|m| m.status.set_error(None));
        if !ms.list.is_empty() {
            r.counters.uplink.set(Some(self.clone()));
        }
        let kernel_sees = r.kind == "afpacket";
        if kernel_sees && let Some(native) = self.native.upgrade() {
            let addr = self.info().addrs.first().copied();
            for m in ms.list.iter_mut().filter(|m| m.claim.is_none()) {
                m.claim = native.claim_for(m.encap, m.local.or(addr), m.dst_port);
            }
        }
        drop(ms);
        *b = Some(Bound { port: r.port, counters: r.counters, kernel_sees });
    }

    fn refresh_info(&self, rtnl: &mut Option<Rtnl>) {
        let Some(r) = rtnl.as_mut() else { return };
        let Ok(link) = r.link(&self.name) else { return };
        let info = match link {
            Some(l) => {
                let addrs = r
                    .addrs()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|a| a.index == l.index)
                    .filter_map(|a| v4(a.ip))
                    .collect();
                let is_virtual = std::path::Path::new("/sys/devices/virtual/net").join(&self.name[..]).exists();
                UplinkInfo { ifindex: Some(l.index), mac: MacAddr(l.mac), mtu: l.mtu, addrs, is_virtual }
            }
            None => UplinkInfo::derived(&self.name),
        };
        *self.info.write().unwrap_or_else(|e| e.into_inner()) = info;
    }

    fn link_up(&self) -> bool {
        lock(&self.bound)
            .as_ref()
            .is_some_and(|b| b.port.strong_count() > 0 && b.counters.link_up.load(Ordering::Relaxed))
    }

    /// Sends finished frames out of the uplink, counted on it; the uplink's
    /// own panic fails the uplink, not the caller.
    fn send(&self, frames: &mut Vec<Packet>, pool: &mut PacketPool) -> TxOutcome {
        let (port, counters) = match lock(&self.bound).as_ref() {
            Some(b) => (b.port.upgrade(), b.counters.clone()),
            None => (None, Arc::new(PortCounters::default())),
        };
        let Some(port) = port else { return TxOutcome::drop_all(frames, pool, DropReason::LinkDown) };
        if counters.failure().is_some() {
            return TxOutcome::drop_all(frames, pool, DropReason::LinkDown);
        }
        let handed = frames.len();
        let sent = {
            let mut p = port.lock().unwrap_or_else(|e| e.into_inner());
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                if p.link_up() { Some(p.tx_burst(frames, pool)) } else { None }
            }))
        };
        let out = match sent {
            Ok(Some(out)) => out,
            Ok(None) => TxOutcome::drop_all(frames, pool, DropReason::LinkDown),
            Err(payload) => {
                let why = crate::datapath::thread::panic_message(&*payload);
                counters.fail(format!("tx_burst panicked: {why}"));
                // What the uplink had taken went down with it, as the
                // datapath counts a failed port's burst.
                counters.count_drop(DropReason::PortFailed, handed.saturating_sub(frames.len()) as u64);
                return TxOutcome::drop_all(frames, pool, DropReason::LinkDown);
            }
        };
        PortCounters::add(&counters.tx_packets, out.sent as u64);
        PortCounters::add(&counters.tx_bytes, out.sent_bytes);
        for (reason, n) in out.drops() {
            counters.count_drop(reason, n as u64);
        }
        out
    }

    /// The interface's MTU and MAC, read without copying the rest.
    fn mtu(&self) -> u32 {
        self.info.read().unwrap_or_else(|e| e.into_inner()).mtu
    }

    fn mac(&self) -> MacAddr {
        self.info.read().unwrap_or_else(|e| e.into_inner()).mac
    }

    /// Takes out of `rx` (a burst the uplink received) what is for its
    /// tunnels: decapsulated and queued on them. Learns from ARP and puts
    /// answers to ARP requests for a local endpoint in `replies`, for the
    /// uplink. What stays in `rx` goes on to its bridge. Counts what it
    /// took as received on the uplink, and malformed or unknown tunnel
    /// packets as dropped there.
    pub(crate) fn intercept(
        &self,
        rx: &mut Vec<Packet>,
        keep: &mut Vec<Packet>,
        replies: &mut Vec<Packet>,
        counters: &PortCounters,
        pool: &mut PacketPool,
    ) {
        let Some(native) = self.native.upgrade() else { return };
        let info = self.info.read().unwrap_or_else(|e| e.into_inner());
        let kernel_sees = lock(&self.bound).as_ref().is_some_and(|b| b.kernel_sees);
        let mut members = lock(&self.members);
        let (mut taken, mut taken_bytes, mut malformed, mut unknown) = (0u64, 0u64, 0u64, 0u64);
        keep.clear();
        for mut p in rx.drain(..) {
            let d = p.data();
            if d.len() < 14 {
                keep.push(p);
                continue;
            }
            match u16::from_be_bytes([d[12], d[13]]) {
                0x0806 => {
                    let Some(a) = Arp::parse(&d[14..]) else {
                        keep.push(p);
                        continue;
                    };
                    let for_us = is_local(&members, &info, a.tpa);
                    // A reply makes an entry only if we asked (see Learn).
                    let how = match a.op {
                        1 if for_us => Learn::Request,
                        2 => Learn::Reply,
                        _ => Learn::Refresh,
                    };
                    native.learn(&self.name, a.spa, a.sha, how);
                    let answer = !kernel_sees || !info.addrs.contains(&a.tpa);
                    if a.op == 1 && for_us && answer {
                        let mut r = pool.get();
                        r.set_frame(&crate::wire::arp_frame(2, info.mac, a.tpa, a.sha, a.spa));
                        replies.push(r);
                        taken += 1;
                        taken_bytes += p.len() as u64;
                        pool.put(p);
                    } else if a.op == 2 && for_us && a.tha == info.mac {
                        taken += 1;
                        taken_bytes += p.len() as u64;
                        pool.put(p);
                    } else {
                        keep.push(p);
                    }
                }
                0x0800 => match classify_ipv4(d, p.offload != Default::default(), &info, &members) {
                    Ipv4Fate::Pass => keep.push(p),
                    Ipv4Fate::Malformed => {
                        malformed += 1;
                        pool.put(p);
                    }
                    Ipv4Fate::Tunnel { src, dst, ecn: outer_ecn, key, inner, end, encap, dst_port } => {
                        taken += 1;
                        taken_bytes += p.len() as u64;
                        let best = members
                            .list
                            .iter_mut()
                            .filter(|m| m.encap == encap && (encap == Encap::Gre || m.dst_port == dst_port))
                            .filter(|m| m.local.is_none_or(|l| l == dst))
                            .filter_map(|m| Some((m.m.rank(src, key)?, m)))
                            .min_by_key(|(r, _)| *r);
                        let Some((_, m)) = best else {
                            unknown += 1;
                            pool.put(p);
                            continue;
                        };
                        if m.m.queue.len() >= QUEUE_MAX {
                            m.m.overflow += 1;
                            pool.put(p);
                            continue;
                        }
                        let offloaded = p.offload.gso_type != 0 || p.needs_csum();
                        p.truncate(end);
                        p.pull_front(inner);
                        if !ecn::decapsulate(outer_ecn, p.data_mut()) {
                            // Congestion marked on a packet that cannot
                            // carry the mark (RFC 6040 §4.2: drop).
                            malformed += 1;
                            pool.put(p);
                            continue;
                        }
                        // Without metadata (AF_XDP) a virtual uplink is
                        // taken to carry such frames.
                        if offloaded || (info.is_virtual && !kernel_sees) {
                            // From a sender on this machine (a veth
                            // underlay): inner checksums may be left to an
                            // offload, and segments merged. A long TCP
                            // frame is described as the segments it stands
                            // for; any other gets its checksum.
                            let ip_mtu = info.mtu.saturating_sub(encap.overhead(key.is_some()) + 14) as usize;
                            if !p.mark_tcp_gso(ip_mtu) {
                                crate::wire::checksum::complete_l4_checksum(p.data_mut());
                            }
                        }
                        p.tunnel = Some(TunnelMeta { id: key.unwrap_or(0) as u64, src, dst });
                        let was_empty = m.m.queue.is_empty();
                        m.m.queue.push_back(p);
                        if was_empty {
                            m.m.wakeup.notify();
                        }
                    }
                },
                _ => keep.push(p),
            }
        }
        drop(members);
        std::mem::swap(rx, keep);
        PortCounters::add(&counters.rx_packets, taken);
        PortCounters::add(&counters.rx_bytes, taken_bytes);
        counters.count_drop(DropReason::TunnelMalformed, malformed);
        counters.count_drop(DropReason::TunnelUnknown, unknown);
    }
}

/// True if `ip` is a local endpoint of the uplink's tunnels: one's own
/// `local_ip`, or an address of the interface if a tunnel takes its
/// default. (A few tunnels per uplink: a scan, no set built per burst.)
fn is_local(members: &Members, info: &UplinkInfo, ip: Ipv4Addr) -> bool {
    members.list.iter().any(|m| match m.local {
        Some(l) => l == ip,
        None => info.addrs.contains(&ip),
    })
}

enum Ipv4Fate {
    Pass,
    Malformed,
    Tunnel {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        /// The outer header's ECN field.
        ecn: u8,
        key: Option<u32>,
        /// Where the inner frame starts and the IP packet ends.
        inner: usize,
        end: usize,
        encap: Encap,
        dst_port: u16,
    },
}

/// Whether an IPv4 frame is a tunnel packet for a local endpoint;
/// `offloaded`: it came with offload metadata (a merged frame whose IPv4
/// length may not say all it holds).
fn classify_ipv4(d: &[u8], offloaded: bool, info: &UplinkInfo, members: &Members) -> Ipv4Fate {
    let ip = &d[14..];
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return Ipv4Fate::Pass;
    }
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    if !is_local(members, info, dst) {
        return Ipv4Fate::Pass;
    }
    let proto = ip[9];
    let udp_port = |ihl: usize| ip.get(ihl + 2..ihl + 4).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let ihl = (ip[0] & 0x0f) as usize * 4;
    let ours = match proto {
        17 => udp_port(ihl).is_some_and(|p| {
            members.list.iter().any(|m| m.encap == Encap::Vxlan && m.dst_port == p && m.local.is_none_or(|l| l == dst))
        }),
        47 => members.list.iter().any(|m| m.encap == Encap::Gre && m.local.is_none_or(|l| l == dst)),
        _ => false,
    };
    if !ours {
        return Ipv4Fate::Pass;
    }
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    let frag = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff;
    // A GSO frame from a virtual underlay may say 0 or less than it holds.
    let total = if offloaded || total < ihl { ip.len() } else { total.min(ip.len()) };
    if ihl < 20 || frag != 0 || crate::packet::internet_checksum(&ip[..ihl]) != 0 {
        return Ipv4Fate::Malformed;
    }
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    match proto {
        17 => {
            let udp = &ip[ihl..total];
            if udp.len() < wire::UDP_LEN {
                return Ipv4Fate::Malformed;
            }
            let dst_port = u16::from_be_bytes([udp[2], udp[3]]);
            match wire::parse_vxlan(&udp[wire::UDP_LEN..]) {
                Ok((vni, at)) => Ipv4Fate::Tunnel {
                    src,
                    dst,
                    ecn: ip[1] & ecn::MASK,
                    key: Some(vni),
                    inner: 14 + ihl + wire::UDP_LEN + at,
                    end: 14 + total,
                    encap: Encap::Vxlan,
                    dst_port,
                },
                Err(_) => Ipv4Fate::Malformed,
            }
        }
        _ => {
            // parse_gre reads the total length; only a merged frame's may
            // be off, and only that one is copied to set it right.
            let fixed;
            let pkt = if u16::from_be_bytes([ip[2], ip[3]]) as usize == total {
                &ip[..total]
            } else {
                let mut v = ip[..total].to_vec();
                v[2..4].copy_from_slice(&(total.min(0xffff) as u16).to_be_bytes());
                fixed = v;
                &fixed[..]
            };
            match wire::parse_gre(pkt) {
                Ok(g) => Ipv4Fate::Tunnel {
                    src,
                    dst,
                    ecn: ip[1] & ecn::MASK,
                    key: g.key,
                    inner: 14 + g.inner,
                    end: 14 + total,
                    encap: Encap::Gre,
                    dst_port: 0,
                },
                Err(Malformed::Short | Malformed::InnerTruncated | Malformed::GreHeader | Malformed::GreChecksum)
                | Err(Malformed::VxlanFlags) => Ipv4Fate::Malformed,
            }
        }
    }
}

/// The fields of an Ethernet/IPv4 ARP packet.
struct Arp {
    op: u16,
    sha: MacAddr,
    spa: Ipv4Addr,
    tha: MacAddr,
    tpa: Ipv4Addr,
}

impl Arp {
    fn parse(a: &[u8]) -> Option<Arp> {
        if a.len() < 28 || a[0..2] != [0, 1] || a[2..4] != [8, 0] || a[4] != 6 || a[5] != 4 {
            return None;
        }
        Some(Arp {
            op: u16::from_be_bytes([a[6], a[7]]),
            sha: MacAddr::from_slice(&a[8..14]),
            spa: Ipv4Addr::new(a[14], a[15], a[16], a[17]),
            tha: MacAddr::from_slice(&a[18..24]),
            tpa: Ipv4Addr::new(a[24], a[25], a[26], a[27]),
        })
    }
}

/// What a native port resolved for one remote.
#[derive(Debug, Clone, Copy)]
struct Hop {
    generation: u64,
    /// Until when a miss stands (a hit stands until the generation moves).
    until_ms: u64,
    /// The outer Ethernet and IPv4 headers, lengths and checksum to fill.
    head: Result<[u8; OUTER_L3], DropReason>,
    /// The neighbour is due to be asked for again.
    refresh_at_ms: u64,
    next_hop: Ipv4Addr,
    src: Ipv4Addr,
}

/// A VXLAN or GRE port sending and receiving through an uplink.
pub struct NativeTunnelPort {
    cfg: TunnelConfig,
    native: Arc<Native>,
    uplink: Arc<Uplink>,
    id: u64,
    hops: HashMap<Ipv4Addr, Hop>,
    ip_id: u16,
    frames: Vec<Packet>,
    /// ARP requests to send before the burst.
    arps: Vec<Packet>,
    overflow_seen: u64,
    status: PortStatus,
    /// What the port dropped itself, by reason, until the datapath
    /// collects it (a burst may drop for several reasons).
    drops: Vec<(DropReason, u64)>,
}

impl std::fmt::Debug for NativeTunnelPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeTunnelPort").field("cfg", &self.cfg).field("uplink", &self.uplink.name).finish()
    }
}

impl NativeTunnelPort {
    /// Opens native tunnel port `name`, on `bridge`, on the uplink its
    /// config names.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a multicast `remote_ip`, a port that
    /// would receive what another already does, or an uplink that cannot
    /// be one (on `bridge`, or a tunnel).
    pub(crate) fn open(
        name: &str,
        bridge: &str,
        cfg: TunnelConfig,
        native: &Arc<Native>,
        wakeup: Arc<Wakeup>,
        status: PortStatus,
    ) -> Result<NativeTunnelPort> {
        let up_name = cfg.uplink.clone().ok_or_else(|| Error::invalid("option", "a native tunnel needs an uplink"))?;
        if let Remote::Ip(r) = cfg.remote
            && (r.is_multicast() || r.is_broadcast() || r.is_unspecified())
        {
            return Err(Error::invalid("option", format!("remote_ip={r}: a native tunnel needs a unicast remote")));
        }
        if let Some(why) = lock(&native.ports).get(&up_name).and_then(|r| refusal(&up_name, r, bridge)) {
            return Err(Error::invalid("option", why));
        }
        let uplink = native.uplink(&up_name);
        let dst_port = if cfg.encap == Encap::Vxlan { cfg.dst_port } else { 0 };
        // Locks in bind's order: `bound`, then `members`.
        let bound = lock(&uplink.bound);
        let mut ms = lock(&uplink.members);
        if let Some(m) = ms.list.iter().find(|m| {
            m.encap == cfg.encap
                && m.dst_port == dst_port
                && m.local == cfg.local
                && m.m.remote == cfg.remote
                && m.m.key == cfg.in_key
        }) {
            return Err(Error::invalid(
                "tunnel",
                format!("port '{}' already receives this remote_ip and key through uplink '{up_name}'", m.m.name),
            ));
        }
        ms.next_id += 1;
        let id = ms.next_id;
        ms.list.push(NativeMember {
            m: Member::new(id, name, &cfg, wakeup),
            encap: cfg.encap,
            local: cfg.local,
            dst_port,
            bridge: bridge.to_string(),
            status: status.clone(),
            // Only the kernel that sees the uplink's frames answers them:
            // hold the UDP port (or GRE) on the endpoint's address from it.
            claim: match bound.as_ref() {
                Some(b) if b.kernel_sees => {
                    native.claim_for(cfg.encap, cfg.local.or_else(|| uplink.info().addrs.first().copied()), dst_port)
                }
                _ => None,
            },
        });
        drop(ms);
        if let Some(b) = bound.as_ref() {
            b.counters.uplink.set(Some(uplink.clone()));
        }
        let unbound = bound.is_none();
        drop(bound);
        if unbound {
            // Refused before, perhaps for a tunnel that has gone.
            native.rebind(&up_name);
        }
        status.set_info("uplink", &up_name);
        let p = NativeTunnelPort {
            cfg,
            native: native.clone(),
            uplink,
            id,
            hops: HashMap::new(),
            ip_id: 0,
            frames: Vec::new(),
            arps: Vec::new(),
            overflow_seen: 0,
            status,
            drops: Vec::new(),
        };
        p.show_status();
        Ok(p)
    }

    fn show_status(&self) {
        let info = self.uplink.info();
        let keyed = self.cfg.out_key != Key::None;
        let inner = info.mtu.saturating_sub(self.cfg.encap.overhead(keyed) + 14);
        self.status.set_info("inner_mtu", inner);
        let local = self.cfg.local.or_else(|| info.addrs.first().copied());
        let port = if self.cfg.encap == Encap::Vxlan { format!(":{}", self.cfg.dst_port) } else { String::new() };
        match local {
            Some(l) => self.status.set_info("local_endpoint", format!("{l}{port}")),
            None => self.status.set_info("local_endpoint", format!("none (uplink has no IPv4 address){port}")),
        }
    }

    /// The outer headers towards `remote`, from the cache or resolved
    /// again; an ARP request for the next hop goes into `self.arps` when
    /// one is due.
    fn hop(&mut self, remote: Ipv4Addr, pool: &mut PacketPool) -> Result<[u8; OUTER_L3], DropReason> {
        let generation = self.native.generation.load(Ordering::Acquire);
        let now = self.native.now();
        let cached = self
            .hops
            .get(&remote)
            .copied()
            .filter(|h| h.generation == generation && (h.head.is_ok() || now < h.until_ms));
        let Some(h) = cached else {
            if self.hops.len() >= MAX_HOPS {
                // remote_ip=flow to ever new remotes: start over.
                self.hops.clear();
            }
            let hop = self.resolve(remote, generation, now, pool);
            self.hops.insert(remote, hop);
            return hop.head;
        };
        if h.head.is_ok() && now >= h.refresh_at_ms {
            // Half aged and in use: ask again while it still works (an
            // answer only refreshes the entry; this learns when it is due).
            let (known, ask) = self.native.neighbour(&self.uplink.name, h.next_hop);
            if ask {
                self.ask(h.src, h.next_hop, pool);
            }
            let aging = self.native.aging_ms.load(Ordering::Relaxed);
            let due = known.map_or(0, |k| k.learned_ms + aging / 2);
            if let Some(c) = self.hops.get_mut(&remote) {
                c.refresh_at_ms = due.max(now + ASK_EVERY_MS);
            }
        }
        h.head
    }

    fn resolve(&mut self, remote: Ipv4Addr, generation: u64, now: u64, pool: &mut PacketPool) -> Hop {
        let info = self.uplink.info();
        let miss = |why, next_hop, src| Hop {
            generation,
            until_ms: now + MISS_RETRY_MS,
            head: Err(why),
            refresh_at_ms: u64::MAX,
            next_hop,
            src,
        };
        let (next_hop, prefsrc) = match info.ifindex {
            // No kernel interface (an in-process uplink): on-link.
            None => (remote, None),
            Some(ifindex) => match self.native.route(remote, ifindex) {
                Some(r) if r.oif == Some(ifindex) => (r.gateway.unwrap_or(remote), r.prefsrc),
                _ => return miss(DropReason::TunnelNoRoute, remote, Ipv4Addr::UNSPECIFIED),
            },
        };
        let Some(src) = self.cfg.local.or(prefsrc).or_else(|| info.addrs.first().copied()) else {
            return miss(DropReason::TunnelNoRoute, next_hop, Ipv4Addr::UNSPECIFIED);
        };
        let (neigh, ask) = self.native.neighbour(&self.uplink.name, next_hop);
        if ask {
            self.ask(src, next_hop, pool);
        }
        let Some(n) = neigh else { return miss(DropReason::TunnelNoNeighbour, next_hop, src) };
        let mut h = [0u8; OUTER_L3];
        h[0..6].copy_from_slice(&n.mac.0);
        h[6..12].copy_from_slice(&info.mac.0);
        h[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip = &mut h[14..];
        ip[0] = 0x45;
        ip[1] = self.cfg.tos;
        ip[6] = 0x40; // DF
        ip[8] = self.cfg.ttl;
        ip[9] = if self.cfg.encap == Encap::Vxlan { 17 } else { 47 };
        ip[12..16].copy_from_slice(&src.octets());
        ip[16..20].copy_from_slice(&remote.octets());
        let aging = self.native.aging_ms.load(Ordering::Relaxed);
        Hop { generation, until_ms: u64::MAX, head: Ok(h), refresh_at_ms: n.learned_ms + aging / 2, next_hop, src }
    }

    fn ask(&mut self, src: Ipv4Addr, ip: Ipv4Addr, pool: &mut PacketPool) {
        let mac = self.uplink.mac();
        let mut p = pool.get();
        p.set_frame(&crate::wire::arp_frame(1, mac, src, MacAddr::ZERO, ip));
        self.arps.push(p);
    }

    /// Counts `n` packets the port dropped itself for `why`.
    fn dropped(&mut self, why: DropReason, n: u64) {
        match self.drops.iter_mut().find(|(r, _)| *r == why) {
            Some((_, c)) => *c += n,
            None => self.drops.push((why, n)),
        }
    }
}

impl Drop for NativeTunnelPort {
    fn drop(&mut self) {
        // Locks in bind's order: `bound`, then `members`.
        let bound = lock(&self.uplink.bound);
        let mut ms = lock(&self.uplink.members);
        ms.list.retain(|m| m.m.id != self.id);
        if ms.list.is_empty()
            && let Some(b) = bound.as_ref()
        {
            b.counters.uplink.set(None);
        }
        let unbound = bound.is_none();
        drop(ms);
        drop(bound);
        if unbound {
            // This port may have been why the uplink was refused.
            self.native.rebind(&self.uplink.name);
        }
    }
}

impl Port for NativeTunnelPort {
    fn kind(&self) -> &'static str {
        self.cfg.encap.name()
    }

    fn rx_burst(&mut self, batch: &mut Vec<Packet>, max: usize, pool: &mut PacketPool) -> usize {
        let mut ms = lock(&self.uplink.members);
        let Some(me) = ms.list.iter_mut().find(|m| m.m.id == self.id) else { return 0 };
        let n = me.m.queue.len().min(max);
        let from = batch.len();
        batch.extend(me.m.queue.drain(..n));
        drop(ms);
        // A sender's super-frame arrives cut to the underlay's MTU: merged
        // again here (GRO), it crosses the rest of the switch whole.
        crate::packet::coalesce_tcp(batch, from, pool);
        batch.len() - from
    }

    fn tx_burst(&mut self, batch: &mut Vec<Packet>, pool: &mut PacketPool) -> TxOutcome {
        let mtu = self.uplink.mtu() as usize;
        let keyed = |k: Key, p: &Packet| match k {
            Key::None => None,
            Key::Fixed(k) => Some(k),
            Key::Flow => Some(p.tunnel.map_or(0, |t| t.id as u32)),
        };
        let mut bytes = 0u64;
        let mut frames = std::mem::take(&mut self.frames);
        for mut p in batch.drain(..) {
            let remote = match self.cfg.remote {
                Remote::Ip(a) => Some(a),
                Remote::Flow => p.tunnel.map(|t| t.dst).filter(|a| !a.is_unspecified()),
            };
            let head = match remote {
                Some(remote) => self.hop(remote, pool),
                None => Err(DropReason::TunnelNoRemote),
            };
            let head = match head {
                Ok(h) => h,
                Err(why) => {
                    self.dropped(why, 1);
                    pool.put(p);
                    continue;
                }
            };
            let inner = p.len();
            let (l4, l4_len) = match self.cfg.encap {
                Encap::Vxlan => {
                    let src = wire::src_port(wire::flow_hash(p.data()));
                    let vni = keyed(self.cfg.out_key, &p).unwrap_or(0) & 0xff_ffff;
                    let mut b = [0u8; 16];
                    b[..8].copy_from_slice(&wire::udp_header(src, self.cfg.dst_port, wire::VXLAN_LEN + inner));
                    b[8..].copy_from_slice(&wire::vxlan_header(vni));
                    (b, 16)
                }
                Encap::Gre => {
                    let (g, n) = wire::gre_header(keyed(self.cfg.out_key, &p));
                    let mut b = [0u8; 16];
                    b[..n].copy_from_slice(&g[..n]);
                    (b, n)
                }
            };
            let ip_len = 20 + l4_len + inner;
            if ip_len > mtu {
                self.dropped(DropReason::TooBig, 1);
                pool.put(p);
                continue;
            }
            self.ip_id = self.ip_id.wrapping_add(1);
            let ecn = ecn::encapsulated(p.data());
            let h = p.push_front(OUTER_L3 + l4_len);
            h[..OUTER_L3].copy_from_slice(&head);
            h[15] = (h[15] & !ecn::MASK) | ecn;
            h[OUTER_L3..].copy_from_slice(&l4[..l4_len]);
            h[16..18].copy_from_slice(&(ip_len as u16).to_be_bytes());
            h[18..20].copy_from_slice(&self.ip_id.to_be_bytes());
            let csum = crate::packet::internet_checksum(&h[14..34]);
            h[24..26].copy_from_slice(&csum.to_be_bytes());
            p.tunnel = None;
            bytes += inner as u64;
            frames.push(p);
        }
        if !self.arps.is_empty() {
            // Counted on the uplink, not here.
            let mut arps = std::mem::take(&mut self.arps);
            self.uplink.send(&mut arps, pool);
            self.arps = arps;
        }
        let tunneled = frames.len();
        let mut out = TxOutcome::default();
        if tunneled > 0 {
            let sent = self.uplink.send(&mut frames, pool);
            // The uplink counts the outer frames (and what it dropped);
            // this port the inner ones it handed over.
            out.sent = sent.sent.min(tunneled);
            out.sent_bytes = if out.sent == tunneled { bytes } else { bytes * out.sent as u64 / tunneled as u64 };
            // The inner frames that did not go, under the uplink's reasons.
            let mut left = tunneled - out.sent;
            for (reason, n) in sent.drops() {
                let n = n.min(left);
                out = out.with_drops(n, reason);
                left -= n;
            }
            out = out.with_drops(left, DropReason::TxError);
        }
        self.frames = frames;
        out
    }

    fn rx_pending(&self) -> bool {
        lock(&self.uplink.members).list.iter().any(|m| m.m.id == self.id && !m.m.queue.is_empty())
    }

    fn link_up(&self) -> bool {
        self.uplink.link_up()
    }

    fn housekeeping(&mut self, _now_ms: u64) {
        self.show_status();
    }

    fn take_rx_drops(&mut self, count: &mut dyn FnMut(DropReason, u64)) {
        let overflow = lock(&self.uplink.members).list.iter().find(|m| m.m.id == self.id).map_or(0, |m| m.m.overflow);
        count(DropReason::RxRingFull, overflow - self.overflow_seen);
        self.overflow_seen = overflow;
        // The port's own transmit drops (no route, no neighbour, too big).
        for (why, n) in self.drops.drain(..) {
            count(why, n);
        }
    }
}

/// Why port `r` cannot be uplink `name` of a tunnel on `bridge`: a tunnel
/// port (the tunnel would send through itself, or encapsulate twice), or
/// a port on the tunnel's own bridge (the overlay would loop into its own
/// underlay).
fn refusal(name: &str, r: &PortRef, bridge: &str) -> Option<String> {
    if r.kind == "vxlan" || r.kind == "gre" {
        Some(format!("uplink={name}: a tunnel port cannot be an uplink"))
    } else if r.bridge == bridge {
        Some(format!("uplink={name}: the uplink must be on another bridge than the tunnel ('{bridge}')"))
    } else {
        None
    }
}

/// Checks that a native tunnel naming `uplink` could be added to `bridge`
/// (see [`refusal`]); with `must_exist`, that the uplink is on the switch.
pub(crate) fn check_uplink(native: &Native, bridge: &str, uplink: &str, must_exist: bool) -> Result<()> {
    match lock(&native.ports).get(uplink) {
        Some(r) => refusal(uplink, r, bridge).map_or(Ok(()), |why| Err(Error::invalid("option", why))),
        None if must_exist => Err(Error::invalid("option", format!("uplink={uplink}: no such port on the switch"))),
        None => Ok(()),
    }
}

/// ECN through the tunnel (RFC 6040, normal mode, as the kernel's own
/// tunnels do it): the outer header carries the inner one's ECN field (CE
/// as ECT(0)), and a CE mark the underlay put on the outer header is put
/// on the inner one when it is ECN-capable.
mod ecn {
    /// The ECN bits of the IPv4 TOS / IPv6 traffic class.
    pub(super) const MASK: u8 = 0x03;
    const CE: u8 = 0x03;
    const ECT0: u8 = 0x02;

    /// Where an untagged inner IP header keeps its ECN field: IPv4's TOS
    /// byte, or IPv6's traffic class (its low bits in byte 1).
    fn inner(frame: &[u8]) -> Option<(usize, bool)> {
        match frame.get(12..14)? {
            [0x08, 0x00] if frame.len() >= 34 => Some((15, true)),
            [0x86, 0xdd] if frame.len() >= 54 => Some((15, false)),
            _ => None,
        }
    }

    fn field(frame: &[u8], at: usize, v4: bool) -> u8 {
        if v4 { frame[at] & MASK } else { (frame[at] >> 4) & MASK }
    }

    /// The outer ECN field for inner frame `frame`.
    pub(super) fn encapsulated(frame: &[u8]) -> u8 {
        match inner(frame).map(|(at, v4)| field(frame, at, v4)) {
            Some(CE) => ECT0,
            Some(e) => e,
            None => 0,
        }
    }

    /// Applies outer ECN `outer` to the decapsulated `frame`; false if the
    /// packet must be dropped (CE on a non-ECN-capable inner packet).
    pub(super) fn decapsulate(outer: u8, frame: &mut [u8]) -> bool {
        if outer != CE {
            return true;
        }
        let Some((at, v4)) = inner(frame) else { return true };
        match field(frame, at, v4) {
            0 => false,
            CE => true,
            _ if v4 => {
                let old = u16::from_be_bytes([frame[14], frame[15]]);
                frame[at] |= CE;
                let new = u16::from_be_bytes([frame[14], frame[15]]);
                let csum = u16::from_be_bytes([frame[24], frame[25]]);
                let csum = crate::wire::checksum::csum_replace(csum, old, new);
                frame[24..26].copy_from_slice(&csum.to_be_bytes());
                true
            }
            _ => {
                frame[at] |= CE << 4;
                true
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn v4(tos: u8) -> Vec<u8> {
            let mut f = vec![0u8; 34];
            f[12..14].copy_from_slice(&[0x08, 0x00]);
            f[14] = 0x45;
            f[15] = tos;
            f[16..18].copy_from_slice(&20u16.to_be_bytes());
            f[22] = 64;
            let c = crate::wire::checksum::internet_checksum(&f[14..34]);
            f[24..26].copy_from_slice(&c.to_be_bytes());
            f
        }

        #[test]
        fn rfc_6040_normal_mode() {
            assert_eq!(encapsulated(&v4(0xb8 | 0x01)), 0x01, "ECT(1) copied, DSCP not");
            assert_eq!(encapsulated(&v4(CE)), ECT0, "CE goes out as ECT(0)");
            assert_eq!(encapsulated(&[0u8; 20]), 0, "not IP: Not-ECT");
            let mut f = v4(ECT0);
            assert!(decapsulate(CE, &mut f));
            assert_eq!(f[15] & MASK, CE, "CE put on an ECN-capable packet");
            assert_eq!(crate::wire::checksum::internet_checksum(&f[14..34]), 0, "IPv4 checksum kept right");
            assert!(!decapsulate(CE, &mut v4(0)), "CE on Not-ECT: dropped");
            let mut f = v4(0);
            assert!(decapsulate(ECT0, &mut f) && f[15] == 0, "no mark, no change");
        }
    }
}
