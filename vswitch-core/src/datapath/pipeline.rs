use std::os::fd::RawFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use mio::unix::SourceFd;

use crate::conntrack::Conntrack;
use crate::events::{Event, EventBus};
use crate::flow::{Emc, FlowTable, GroupTable, PackedParse, Tables};
use crate::mac::{MacCache, MacTable};
use crate::packet::{DEFAULT_BUFFER, Packet, PacketPool, SpareBuffers};
use crate::port::tunnel::native::Uplink;
use crate::port::{BURST, DropReason, Port, PortCounters, PortNo, TxOutcome, VlanMode};
use crate::wire::{MacAddr, VlanTci, ethertype};

#[path = "exec.rs"]
mod exec;
#[path = "taps.rs"]
mod taps;

use exec::{Drops, TraceLog};
pub use taps::PortFlags;
pub(crate) use taps::{DpMirror, MirrorCounters};

/// How often ports get their housekeeping call.
const HOUSEKEEPING_MS: u64 = 100;

/// Connections above which a burst's lookups are fetched ahead (below,
/// the table sits in the caches and fetching ahead is only work).
const CT_PREFETCH_MIN: usize = 4_096;

/// Free buffers a datapath keeps for flood copies.
const POOL_BUFFERS: usize = 4 * BURST * 16;

/// A port as the datapath threads share it: one thread owns its receive
/// side (polls it, wakes on its descriptor, runs its housekeeping), and any
/// thread may transmit to it. The lock is taken once per burst.
pub(crate) type SharedPort = Arc<Mutex<Box<dyn Port>>>;

fn lock(port: &SharedPort) -> MutexGuard<'_, Box<dyn Port>> {
    port.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f`, a call into a port's code; a panic comes back as the reason
/// the port failed (`what panicked: MESSAGE`), the datapath unharmed.
fn guarded<R>(what: &str, f: impl FnOnce() -> R) -> Result<R, String> {
    catch_unwind(AssertUnwindSafe(f))
        .map_err(|payload| format!("{what} panicked: {}", super::thread::panic_message(&*payload)))
}

/// What stands in for a port whose code panicked: it receives nothing,
/// sends nothing and reads link down. It keeps the failed port, which is
/// closed (off the datapath threads, its own panics caught) when the port
/// is removed; nothing of it is called again.
struct FailedPort(#[allow(dead_code)] Option<Box<dyn Port>>);

impl std::fmt::Debug for FailedPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FailedPort")
    }
}

impl Port for FailedPort {
    fn kind(&self) -> &'static str {
        "failed"
    }

    fn rx_burst(&mut self, _batch: &mut Vec<Packet>, _max: usize, _pool: &mut PacketPool) -> usize {
        0
    }

    fn tx_burst(&mut self, batch: &mut Vec<Packet>, pool: &mut PacketPool) -> TxOutcome {
        TxOutcome::drop_all(batch, pool, DropReason::PortFailed)
    }

    fn link_up(&self) -> bool {
        false
    }
}

#[derive(Debug)]
struct PortSlot {
    port: SharedPort,
    /// This thread receives from the port.
    owned: bool,
    /// The port passes offload metadata on (cached: it never changes).
    carries_offloads: bool,
    bridge: usize,
    port_no: PortNo,
    vlan: VlanMode,
    counters: Arc<PortCounters>,
    link_up: bool,
    /// Where copies of its traffic go (its bridge's mirrors).
    taps: Vec<taps::Tap>,
    /// What `mod-port` set.
    flags: PortFlags,
    /// A burst received needs [`Datapath::rx_taps`] first.
    rx_special: bool,
    /// A frame queued needs [`Datapath::tx_taps`] first.
    tx_special: bool,
    /// A mirror's output port: never flooded to, its input dropped.
    mirror_out: bool,
    /// The port failed and this thread has stopped polling it.
    failed: bool,
}

impl PortSlot {
    /// Derives `rx_special` and `tx_special` from the flags, taps and
    /// mirror role.
    fn refresh_special(&mut self) {
        self.rx_special = self.flags.down || self.mirror_out || self.taps.iter().any(|t| t.rx);
        self.tx_special = self.flags.down || self.taps.iter().any(|t| t.tx);
    }

    /// Records the port's link state, publishing changes to its counters
    /// (and, on the thread that owns the port, as an event: one thread, so
    /// each change is told once and after the port's `PortAdded`).
    #[inline]
    fn set_link(&mut self, up: bool, events: &EventBus) -> bool {
        if up != self.link_up {
            self.link_up = up;
            self.counters.link_up.store(up, Ordering::Relaxed);
            if self.owned {
                let c = &self.counters;
                events.publish(|| Event::LinkChanged {
                    bridge: c.bridge.to_string(),
                    port: c.name.to_string(),
                    port_no: c.port_no,
                    up,
                });
            }
        }
        up
    }
}

#[derive(Debug)]
struct BridgeState {
    mac: Arc<MacTable>,
    cache: MacCache,
    flows: FlowTable,
    groups: GroupTable,
    /// Slots of this bridge's ports, in port-number order (flood order).
    slots: Vec<usize>,
    /// Port number to slot.
    by_port_no: Vec<Option<usize>>,
    /// Its mirrors.
    mirrors: Vec<DpMirror>,
    /// `fail_mode=standalone`: an empty table switches as NORMAL.
    fail_open: bool,
}

/// What NORMAL switching decided for one packet of a burst.
#[derive(Debug, Clone, Copy)]
enum Fate {
    Drop(DropReason),
    /// To the port the destination was learned on.
    Known(Tagging, PortNo),
    /// To every other port in the VLAN.
    Flood(Tagging),
}

/// The packet pipeline and the ports it serves. See the [module docs](super).
#[derive(Debug)]
pub struct Datapath {
    ports: Vec<Option<PortSlot>>,
    bridges: Vec<Option<BridgeState>>,
    pool: PacketPool,
    rx: Vec<Packet>,
    tx: Vec<Vec<Packet>>,
    dirty: Vec<usize>,
    flood: Vec<usize>,
    // Per-burst scratch, kept to avoid allocating.
    fates: Vec<Fate>,
    misses: Vec<(u32, u64)>,
    keys: Vec<u64>,
    answers: Vec<Option<PortNo>>,
    parsed: Vec<(PackedParse, u32)>,
    /// Scratch for software segmentation.
    segments: Vec<Packet>,
    /// Scratch for bursts through an uplink of native tunnels.
    uplink_keep: Vec<Packet>,
    uplink_replies: Vec<Packet>,
    /// Where ports' wake descriptors are registered (a threaded datapath).
    registry: Option<mio::Registry>,
    /// The descriptor registered for each slot.
    fds: Vec<Option<RawFd>>,
    next_housekeeping_ms: u64,
    /// Set for the length of a `trace`: a dry run (see the executor).
    tracing: Option<Box<TraceLog>>,
    /// The switch's connection table.
    ct: Arc<Conntrack>,
    /// Where this datapath counts its bursts (and its thread its cycles).
    perf: Arc<super::perf::PmdCounters>,
    /// Where it tells what happened (link changes, failed ports).
    events: Arc<EventBus>,
}

impl Default for Datapath {
    fn default() -> Self {
        Self::new()
    }
}

impl Datapath {
    /// A datapath with no bridges.
    pub fn new() -> Self {
        Self::with_pool(
            PacketPool::new(POOL_BUFFERS, DEFAULT_BUFFER),
            Arc::new(Conntrack::new(crate::conntrack::DEFAULT_LIMIT as usize)),
            Arc::default(),
        )
    }

    /// A datapath whose buffer pool also draws on `spare`, publishing its
    /// events on `events`.
    pub(crate) fn with_spare(spare: SpareBuffers, ct: Arc<Conntrack>, events: Arc<EventBus>) -> Self {
        Self::with_pool(PacketPool::new(POOL_BUFFERS, DEFAULT_BUFFER).with_spare(spare), ct, events)
    }

    fn with_pool(pool: PacketPool, ct: Arc<Conntrack>, events: Arc<EventBus>) -> Self {
        Datapath {
            ports: Vec::new(),
            bridges: Vec::new(),
            pool,
            rx: Vec::with_capacity(BURST),
            tx: Vec::new(),
            dirty: Vec::new(),
            flood: Vec::new(),
            fates: Vec::with_capacity(BURST),
            misses: Vec::with_capacity(BURST),
            keys: Vec::with_capacity(BURST),
            answers: Vec::with_capacity(BURST),
            parsed: Vec::with_capacity(BURST),
            segments: Vec::new(),
            uplink_keep: Vec::new(),
            uplink_replies: Vec::new(),
            registry: None,
            fds: Vec::new(),
            next_housekeeping_ms: 0,
            tracing: None,
            ct,
            perf: Arc::default(),
            events,
        }
    }

    /// The counters of this datapath's bursts and its thread's cycles.
    pub(crate) fn perf(&self) -> Arc<super::perf::PmdCounters> {
        self.perf.clone()
    }

    /// Registers ports' wake descriptors with `registry` from now on.
    pub(crate) fn set_registry(&mut self, registry: mio::Registry) {
        self.registry = Some(registry);
    }

    /// Keeps the epoll registration of `slot` in step with its port's
    /// wake descriptor (token = slot + 1; token 0 is the control waker).
    fn sync_wake_fd(&mut self, slot: usize) {
        let want = match self.ports[slot].as_ref().filter(|p| p.owned && !p.failed) {
            Some(p) => match guarded("wake_fd", || lock(&p.port).wake_fd()) {
                Ok(fd) => fd,
                Err(why) => {
                    p.counters.fail(why);
                    None
                }
            },
            None => None,
        };
        if self.fds.len() <= slot {
            self.fds.resize(slot + 1, None);
        }
        if self.fds[slot] == want {
            return;
        }
        if let Some(reg) = &self.registry {
            if let Some(old) = self.fds[slot] {
                // Fails harmlessly if the old descriptor is already closed.
                let _ = reg.deregister(&mut SourceFd(&old));
            }
            if let Some(fd) = want {
                // A failure leaves the port polled but not woken for; the
                // housekeeping tick still reaches it.
                let _ = reg.register(&mut SourceFd(&fd), mio::Token(slot + 1), mio::Interest::READABLE);
            }
        }
        self.fds[slot] = want;
    }

    /// Adds a bridge at `index` (the control side allocates indices) using
    /// `mac` as its learning table.
    pub(crate) fn add_bridge(&mut self, index: usize, mac: Arc<MacTable>, flows: FlowTable) {
        let state = BridgeState {
            mac,
            cache: MacCache::new(),
            flows,
            groups: GroupTable::default(),
            slots: Vec::new(),
            by_port_no: Vec::new(),
            mirrors: Vec::new(),
            fail_open: false,
        };
        if self.bridges.len() <= index {
            self.bridges.resize_with(index + 1, || None);
        }
        self.bridges[index] = Some(state);
    }

    /// Removes a bridge and all its ports; returns the ports, for the
    /// caller to close them off the datapath thread.
    pub(crate) fn del_bridge(&mut self, bridge: usize) -> Vec<SharedPort> {
        match self.bridges.get_mut(bridge).and_then(Option::take) {
            Some(b) => b.slots.into_iter().filter_map(|slot| self.release_slot(slot)).collect(),
            None => Vec::new(),
        }
    }

    /// Attaches `port` to `bridge` as `port_no` in slot `idx` (the control
    /// side allocates slots), receiving from it if `owned`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn add_port(
        &mut self,
        idx: usize,
        bridge: usize,
        port_no: PortNo,
        port: SharedPort,
        owned: bool,
        vlan: VlanMode,
        counters: Arc<PortCounters>,
    ) {
        let (link_up, carries_offloads) = match guarded("link_up", || {
            let p = lock(&port);
            (p.link_up(), p.carries_offloads())
        }) {
            Ok(r) => r,
            Err(why) => {
                counters.fail(why);
                (false, false)
            }
        };
        let slot = PortSlot {
            port,
            owned,
            carries_offloads,
            bridge,
            port_no,
            vlan,
            counters,
            link_up,
            taps: Vec::new(),
            flags: PortFlags::default(),
            rx_special: false,
            tx_special: false,
            mirror_out: false,
            failed: false,
        };
        if self.ports.len() <= idx {
            self.ports.resize_with(idx + 1, || None);
            self.tx.resize_with(idx + 1, || Vec::with_capacity(BURST));
        }
        self.ports[idx] = Some(slot);
        let b = self.bridges[bridge].as_mut().expect("bridge exists");
        let pos = b.slots.partition_point(|&s| self.ports[s].as_ref().is_some_and(|p| p.port_no < port_no));
        b.slots.insert(pos, idx);
        if b.by_port_no.len() <= port_no as usize {
            b.by_port_no.resize(port_no as usize + 1, None);
        }
        b.by_port_no[port_no as usize] = Some(idx);
        if !b.mirrors.is_empty() {
            self.resync_taps(bridge);
        }
        self.sync_wake_fd(idx);
    }

    /// Detaches the port in `slot`, forgetting what its bridge learned on
    /// it; returns the port, for the caller to close it off the datapath
    /// thread.
    pub(crate) fn del_port(&mut self, slot: usize) -> Option<SharedPort> {
        let p = self.ports.get(slot).and_then(Option::as_ref)?;
        let (bridge, port_no) = (p.bridge, p.port_no);
        if let Some(b) = self.bridges[bridge].as_mut() {
            b.slots.retain(|&s| s != slot);
            b.by_port_no[port_no as usize] = None;
            b.mac.flush_port(port_no);
        }
        let port = self.release_slot(slot);
        if self.bridges[bridge].as_ref().is_some_and(|b| !b.mirrors.is_empty()) {
            self.resync_taps(bridge);
        }
        port
    }

    fn release_slot(&mut self, slot: usize) -> Option<SharedPort> {
        if let (Some(reg), Some(Some(fd))) = (&self.registry, self.fds.get(slot)) {
            let _ = reg.deregister(&mut SourceFd(fd));
        }
        if let Some(f) = self.fds.get_mut(slot) {
            *f = None;
        }
        let port = self.ports[slot].take().map(|p| p.port);
        for p in self.tx[slot].drain(..) {
            self.pool.put(p);
        }
        self.dirty.retain(|&s| s != slot);
        port
    }

    /// Changes a port's VLAN membership; what its bridge learned on the
    /// port is forgotten, since it may now be in other VLANs.
    pub(crate) fn set_port_vlan(&mut self, slot: usize, vlan: VlanMode) {
        if let Some(p) = self.ports.get_mut(slot).and_then(Option::as_mut) {
            p.vlan = vlan;
            if let Some(b) = self.bridges[p.bridge].as_ref() {
                b.mac.flush_port(p.port_no);
            }
        }
    }

    /// True if some port has packets queued without an fd to wake on.
    pub fn rx_pending(&self) -> bool {
        self.ports.iter().flatten().filter(|p| p.owned && !p.failed).any(|p| {
            // A panic here is recorded; the next pass takes the port down.
            guarded("rx_pending", || lock(&p.port).rx_pending()).unwrap_or_else(|why| !p.counters.fail(why))
        })
    }

    /// Takes down the port in `slot`, whose code panicked (or whose slow
    /// half did) for `why` (None: the reason is recorded already): it
    /// is told as an event once, replaced by a [`FailedPort`] for every
    /// thread, and what was queued for it goes back to the pool, counted.
    /// The other ports go on.
    #[cold]
    fn fail_port(&mut self, slot: usize, why: Option<String>) {
        let Some(p) = self.ports[slot].as_mut() else { return };
        p.failed = true;
        if let Some(why) = why {
            p.counters.fail(why);
        }
        let c = p.counters.clone();
        if !c.stood_in.swap(true, Ordering::AcqRel) {
            let mut port = lock(&p.port);
            let failed = std::mem::replace(&mut *port, Box::new(FailedPort(None)));
            *port = Box::new(FailedPort(Some(failed)));
            drop(port);
            self.events.publish(|| Event::PortFailed {
                bridge: c.bridge.to_string(),
                port: c.name.to_string(),
                port_no: c.port_no,
                why: c.failure().unwrap_or_default().to_string(),
            });
        }
        p.set_link(false, &self.events);
        let queued = &mut self.tx[slot];
        c.count_drop(DropReason::PortFailed, queued.len() as u64);
        queued.drain(..).for_each(|pkt| self.pool.put(pkt));
        self.dirty.retain(|&s| s != slot);
        self.sync_wake_fd(slot);
    }

    /// One pass over every port: receive a burst from each, switch it, and
    /// flush the output batches; then a step of MAC aging. Returns how many
    /// packets were received.
    pub fn poll(&mut self, now_ms: u64) -> usize {
        let mut work = 0;
        for slot in 0..self.ports.len() {
            let Some(p) = self.ports[slot].as_mut().filter(|p| p.owned && !p.failed) else { continue };
            if p.counters.failure.get().is_some() {
                // Failed on another thread, or in its slow half.
                self.fail_port(slot, None);
                continue;
            }
            let mut rx = std::mem::take(&mut self.rx);
            let pool = &mut self.pool;
            let got = guarded("rx_burst", || {
                let mut port = lock(&p.port);
                (port.link_up(), port.rx_burst(&mut rx, BURST, pool))
            });
            let (up, n) = match got {
                Ok(r) => r,
                Err(why) => {
                    // What it had handed over before it panicked is not
                    // trusted: back to the pool.
                    rx.drain(..).for_each(|pkt| self.pool.put(pkt));
                    self.rx = rx;
                    self.fail_port(slot, Some(why));
                    continue;
                }
            };
            p.set_link(up, &self.events);
            let special = p.rx_special;
            let uplink = if n > 0 { p.counters.uplink.get() } else { None };
            if n > 0 && (!special || self.rx_taps(slot, &mut rx)) {
                self.perf.burst(n);
                work += n;
                if let Some(up) = uplink {
                    self.through_uplink(slot, &up, &mut rx);
                }
                if !rx.is_empty() {
                    self.switch_burst(slot, &mut rx, now_ms);
                }
                self.flush();
            }
            self.rx = rx;
        }
        for b in self.bridges.iter_mut().flatten() {
            b.mac.age_step(now_ms);
            b.flows.expire(now_ms);
        }
        if now_ms >= self.next_housekeeping_ms {
            self.next_housekeeping_ms = now_ms + HOUSEKEEPING_MS;
            for slot in 0..self.ports.len() {
                if let Some(p) = self.ports[slot].as_mut().filter(|p| p.owned && !p.failed) {
                    let up = guarded("housekeeping", || {
                        let mut port = lock(&p.port);
                        port.housekeeping(now_ms);
                        let counters = &p.counters;
                        port.take_rx_drops(&mut |reason, n| counters.count_drop(reason, n));
                        port.link_up()
                    });
                    match up {
                        Ok(up) => {
                            p.set_link(up, &self.events);
                            self.sync_wake_fd(slot);
                        }
                        Err(why) => self.fail_port(slot, Some(why)),
                    }
                }
            }
        }
        work
    }

    /// Gives a burst received on an uplink of native tunnels to them
    /// first (see [`native`](crate::port::tunnel::native)): what they take
    /// is queued on the tunnel ports, their ARP answers go out of the
    /// uplink, the rest stays in `rx` for the bridge.
    fn through_uplink(&mut self, slot: usize, up: &Uplink, rx: &mut Vec<Packet>) {
        let Some(counters) = self.ports[slot].as_ref().map(|p| p.counters.clone()) else { return };
        let mut keep = std::mem::take(&mut self.uplink_keep);
        let mut replies = std::mem::take(&mut self.uplink_replies);
        up.intercept(rx, &mut keep, &mut replies, &counters, &mut self.pool);
        for r in replies.drain(..) {
            self.enqueue_raw(slot, r);
        }
        self.uplink_keep = keep;
        self.uplink_replies = replies;
    }

    /// Sets bridge `bridge`'s fail mode: standalone (`true`) switches an
    /// empty table as NORMAL.
    pub(crate) fn set_fail_open(&mut self, bridge: usize, on: bool) {
        if let Some(b) = self.bridges.get_mut(bridge).and_then(Option::as_mut) {
            b.fail_open = on;
        }
    }

    /// Replaces bridge `bridge`'s groups.
    pub(crate) fn set_groups(&mut self, bridge: usize, groups: GroupTable) {
        if let Some(b) = self.bridges.get_mut(bridge).and_then(Option::as_mut) {
            b.groups = groups;
        }
    }

    /// The flow table of bridge `bridge`.
    pub(crate) fn flows_mut(&mut self, bridge: usize) -> Option<&mut FlowTable> {
        self.bridges.get_mut(bridge)?.as_mut().map(|b| &mut b.flows)
    }

    /// Runs one received burst: NORMAL switching when the bridge's table is
    /// the default one, the flow table otherwise.
    fn switch_burst(&mut self, in_slot: usize, rx: &mut Vec<Packet>, now_ms: u64) {
        let bridge = self.ports[in_slot].as_ref().expect("polled port exists").bridge;
        let Some(b) = self.bridges[bridge].as_ref() else { return };
        match b.flows.default_rule() {
            Some(rule) => self.switch_normal_burst(in_slot, rx, now_ms, rule),
            // No rule to count against: the fail-open switching is counted
            // only on the ports.
            None if b.fail_open && b.flows.is_empty() => self.switch_normal_burst(in_slot, rx, now_ms, u32::MAX),
            None => self.switch_flow_burst(in_slot, rx, now_ms),
        }
    }

    /// Runs one received burst through NORMAL switching, in two passes:
    /// decide every packet's fate (parse, learn, look up; the lookups the
    /// cache misses go to the MAC table together), then carry them out.
    fn switch_normal_burst(&mut self, in_slot: usize, rx: &mut Vec<Packet>, now_ms: u64, rule: u32) {
        let input = self.ports[in_slot].as_ref().expect("polled port exists");
        let (bridge_idx, in_port, counters) = (input.bridge, input.port_no, input.counters.clone());
        let Some(mut bridge) = self.bridges[bridge_idx].take() else { return };
        bridge.cache.begin_burst(&bridge.mac);

        let mut fates = std::mem::take(&mut self.fates);
        let mut misses = std::mem::take(&mut self.misses);
        let mut answers = std::mem::take(&mut self.answers);
        fates.clear();
        misses.clear();
        let mut rx_bytes = 0u64;
        let in_vlan = &self.ports[in_slot].as_ref().expect("polled port exists").vlan;
        for (i, pkt) in rx.iter().enumerate() {
            rx_bytes += pkt.len() as u64;
            let fate = match classify_l2(pkt.data(), in_vlan) {
                Err(reason) => Fate::Drop(reason),
                Ok(l2) => {
                    if l2.src.is_unicast() {
                        bridge.cache.learn(&bridge.mac, l2.tagging.vlan, l2.src, in_port, now_ms);
                    }
                    if is_reserved_group(l2.dst) {
                        Fate::Drop(DropReason::ReservedGroup)
                    } else if !l2.dst.is_unicast() {
                        Fate::Flood(l2.tagging)
                    } else {
                        match bridge.cache.probe(l2.tagging.vlan, l2.dst) {
                            Ok(Some(port)) => Fate::Known(l2.tagging, port),
                            Ok(None) => Fate::Flood(l2.tagging),
                            Err(key) => {
                                misses.push((i as u32, key));
                                Fate::Known(l2.tagging, 0)
                            }
                        }
                    }
                }
            };
            fates.push(fate);
        }
        if !misses.is_empty() {
            self.keys.clear();
            self.keys.extend(misses.iter().map(|&(_, k)| k));
            bridge.mac.lookup_keys(&self.keys, &mut answers);
            for (&(i, key), &port) in misses.iter().zip(answers.iter()) {
                bridge.cache.fill(key, port);
                if let Fate::Known(t, _) = fates[i as usize] {
                    fates[i as usize] = port.map_or(Fate::Flood(t), |p| Fate::Known(t, p));
                }
            }
        }

        let mut drops = [0u64; DropReason::ALL.len()];
        let rx_packets = rx.len() as u64;
        for (pkt, fate) in rx.drain(..).zip(fates.iter()) {
            match *fate {
                Fate::Drop(reason) => {
                    drops[reason as usize] += 1;
                    self.pool.put(pkt);
                }
                Fate::Known(_, p) if p == in_port => {
                    drops[DropReason::SamePort as usize] += 1;
                    self.pool.put(pkt);
                }
                Fate::Known(t, p) => match bridge.by_port_no.get(p as usize).copied().flatten() {
                    Some(out) if self.carries(out, t.vlan) => self.output(out, pkt, t),
                    _ => self.flood(&bridge.slots, in_slot, pkt, t),
                },
                Fate::Flood(t) => self.flood(&bridge.slots, in_slot, pkt, t),
            }
        }
        bridge.flows.hit(rule, rx_packets, rx_bytes, now_ms);
        self.bridges[bridge_idx] = Some(bridge);
        (self.fates, self.misses, self.answers) = (fates, misses, answers);

        PortCounters::add(&counters.rx_packets, rx_packets);
        PortCounters::add(&counters.rx_bytes, rx_bytes);
        for (i, &n) in drops.iter().enumerate() {
            PortCounters::add(&counters.drops[i], n);
        }
    }

    #[inline]
    fn carries(&self, slot: usize, vlan: u16) -> bool {
        self.ports[slot].as_ref().is_some_and(|p| p.vlan.carries(vlan))
    }

    /// True if NORMAL floods frames of `vlan` to `slot`.
    #[inline]
    fn floods_to(&self, slot: usize, vlan: u16) -> bool {
        self.ports[slot].as_ref().is_some_and(|p| p.vlan.carries(vlan) && !p.flags.no_flood && !p.mirror_out)
    }

    fn flood(&mut self, slots: &[usize], in_slot: usize, pkt: Packet, t: Tagging) {
        let mut targets = std::mem::take(&mut self.flood);
        targets.clear();
        targets.extend(slots.iter().copied().filter(|&s| s != in_slot && self.floods_to(s, t.vlan)));
        if let Some((&last, rest)) = targets.split_last() {
            for &out in rest {
                let copy = self.pool.clone_packet(&pkt);
                self.output(out, copy, t);
            }
            self.output(last, pkt, t);
        } else {
            self.pool.put(pkt);
        }
        self.flood = targets;
    }

    /// Queues `pkt` on `slot`, tagged as that port's VLAN mode requires.
    #[inline]
    fn output(&mut self, slot: usize, mut pkt: Packet, t: Tagging) {
        let Some(port) = self.ports[slot].as_ref() else {
            self.pool.put(pkt);
            return;
        };
        if port.vlan.sends_untagged(t.vlan) {
            // An access port, a native-untagged port's native VLAN, or a
            // trunk's untagged VLAN 0.
            // (A priority tag on VLAN 0 stays.)
            if t.tci.is_some() && t.vlan != 0 {
                pkt.pop_vlan();
            }
        } else {
            match t.tci {
                None => pkt.push_vlan(VlanTci::new(t.vlan, 0)),
                Some(tci) if tci.vid() != t.vlan => pkt.set_vlan_tci(VlanTci::new(t.vlan, tci.pcp())),
                Some(_) => {}
            }
        }
        self.send(slot, pkt);
    }

    /// Queues `pkt` on `slot` as it is (once a port that is down or
    /// mirrored has had its say), flushing a full batch.
    #[inline]
    fn enqueue(&mut self, slot: usize, pkt: Packet) {
        if self.ports[slot].as_ref().is_some_and(|p| p.tx_special) {
            if let Some(pkt) = self.tx_taps(slot, pkt) {
                self.enqueue_raw(slot, pkt);
            }
        } else {
            self.enqueue_raw(slot, pkt);
        }
    }

    /// Queues `pkt` on `slot`, flushing a full batch.
    #[inline]
    fn enqueue_raw(&mut self, slot: usize, pkt: Packet) {
        let q = &mut self.tx[slot];
        if q.is_empty() {
            self.dirty.push(slot);
        }
        q.push(pkt);
        if q.len() >= BURST {
            self.flush_slot(slot);
            self.dirty.retain(|&s| s != slot);
        }
    }

    fn flush(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &slot in &dirty {
            self.flush_slot(slot);
        }
        self.dirty = dirty;
        self.dirty.clear();
    }

    fn flush_slot(&mut self, slot: usize) {
        let Some(p) = self.ports[slot].as_mut() else { return };
        let q = &mut self.tx[slot];
        if q.is_empty() {
            return;
        }
        if p.failed || p.counters.failure.get().is_some() {
            self.fail_port(slot, None);
            return;
        }
        // One lock for the burst, as before the calls were guarded; it is
        // let go before a failure is handled (fail_port takes it again).
        let mut port = lock(&p.port);
        let up = match guarded("link_up", || port.link_up()) {
            Ok(up) => up,
            Err(why) => {
                drop(port);
                return self.fail_port(slot, Some(why));
            }
        };
        if !up {
            drop(port);
            p.set_link(false, &self.events);
            p.counters.count_drop(DropReason::LinkDown, q.len() as u64);
            for pkt in q.drain(..) {
                self.pool.put(pkt);
            }
            return;
        }
        if !p.carries_offloads && q.iter().any(|pkt| pkt.offload != Default::default()) {
            // The port takes no offload metadata: segment GSO frames in
            // software and complete pending checksums.
            let mut too_big = 0;
            let mut segments = std::mem::take(&mut self.segments);
            for mut pkt in q.drain(..) {
                if pkt.is_multi_segment() {
                    if pkt.segment(&mut self.pool, &mut segments).is_err() {
                        too_big += 1;
                    }
                    self.pool.put(pkt);
                } else if pkt.resolve_offloads().is_ok() {
                    segments.push(pkt);
                } else {
                    too_big += 1;
                    self.pool.put(pkt);
                }
            }
            q.append(&mut segments);
            self.segments = segments;
            p.counters.count_drop(DropReason::TooBig, too_big);
        }
        let pool = &mut self.pool;
        let handed = q.len();
        let sent = guarded("tx_burst", || port.tx_burst(q, pool));
        drop(port);
        let out = match sent {
            Ok(out) => out,
            Err(why) => {
                // What the port had taken from the batch went down with
                // it; what it had not is counted with the port's queue.
                p.counters.count_drop(DropReason::PortFailed, handed.saturating_sub(q.len()) as u64);
                return self.fail_port(slot, Some(why));
            }
        };
        PortCounters::add(&p.counters.tx_packets, out.sent as u64);
        PortCounters::add(&p.counters.tx_bytes, out.sent_bytes);
        for (reason, n) in out.drops() {
            p.counters.count_drop(reason, n as u64);
        }
    }
}

/// A bridge's parts the action executor uses, borrowed apart so the flow
/// table's actions can be read while the MAC cache is written.
struct BridgeParts<'a> {
    mac: &'a MacTable,
    cache: &'a mut MacCache,
    slots: &'a [usize],
    by_port_no: &'a [Option<usize>],
    tables: &'a Tables,
    emc: &'a mut Emc,
    groups: &'a GroupTable,
    /// The table is empty and the bridge is `fail_mode=standalone`.
    fail_open: bool,
}

/// The input side of a packet being executed.
#[derive(Clone, Copy)]
struct Ingress {
    slot: usize,
    port: PortNo,
    now_ms: u64,
}

impl Datapath {
    /// Runs a burst through the flow table, packet by packet: extract the
    /// key, find the rule (exact-match cache, then classifier), count it,
    /// execute its actions.
    fn switch_flow_burst(&mut self, in_slot: usize, rx: &mut Vec<Packet>, now_ms: u64) {
        let input = self.ports[in_slot].as_ref().expect("polled port exists");
        let (bridge_idx, in_port, counters) = (input.bridge, input.port_no, input.counters.clone());
        let Some(mut bridge) = self.bridges[bridge_idx].take() else { return };
        bridge.cache.begin_burst(&bridge.mac);
        let ingress = Ingress { slot: in_slot, port: in_port, now_ms };
        let mut drops = [0u64; DropReason::ALL.len()];
        let rx_packets = rx.len() as u64;
        let mut rx_bytes = 0u64;

        // Three passes over the burst, so the latencies of one packet's
        // steps overlap with the next packet's: extract every key, look
        // every key up, then execute.
        let mut parsed = std::mem::take(&mut self.parsed);
        parsed.resize(rx.len(), (PackedParse::default(), 0));
        for (pkt, (p, _)) in rx.iter().zip(parsed.iter_mut()) {
            rx_bytes += pkt.len() as u64;
            p.parse(pkt.data(), in_port);
            if let Some(t) = &pkt.tunnel {
                p.key.set_tunnel(t);
            }
        }
        let BridgeState { mac, cache, flows, groups, slots, by_port_no, fail_open, .. } = &mut bridge;
        let fail_open = *fail_open && flows.is_empty();
        let (tables, emc) = flows.split();
        emc.lookup_burst(tables, &mut parsed);
        if self.ct.len() > CT_PREFETCH_MIN {
            self.prefetch_connections(tables, rx, &parsed);
        }
        let mut parts = BridgeParts { mac, cache, slots, by_port_no, tables, emc, groups, fail_open };
        for (pkt, (p, id)) in rx.drain(..).zip(parsed.iter_mut()) {
            let id = *id;
            let first = (id != u32::MAX).then_some(id);
            self.run_pipeline(&mut parts, ingress, pkt, p, first, &mut drops);
        }
        self.parsed = parsed;
        self.bridges[bridge_idx] = Some(bridge);
        PortCounters::add(&counters.rx_packets, rx_packets);
        PortCounters::add(&counters.rx_bytes, rx_bytes);
        for (i, &n) in drops.iter().enumerate() {
            PortCounters::add(&counters.drops[i], n);
        }
    }

    /// For a large connection table: the connections the burst's `ct`
    /// actions will look up (those of table-0 rules with a `ct` of a fixed
    /// zone) are fetched ahead, so their cache misses overlap.
    fn prefetch_connections(&self, tables: &Tables, rx: &[Packet], parsed: &[(PackedParse, u32)]) {
        let mut keys = [crate::conntrack::Key::default(); 2 * BURST];
        let mut n = 0;
        for (pkt, (p, id)) in rx.iter().zip(parsed) {
            let zone = tables.rule(*id).and_then(|r| {
                r.spec.actions.iter().find_map(|a| match a {
                    crate::flow::Action::Ct(ct) => match ct.zone {
                        crate::flow::CtZone::Value(z) => Some(z),
                        crate::flow::CtZone::Field(_) => None,
                    },
                    _ => None,
                })
            });
            if let Some(z) = zone
                && n < keys.len()
                && let Ok(info) = crate::conntrack::PacketInfo::parse(pkt.data(), &p.headers, z)
            {
                keys[n] = info.key;
                n += 1;
            }
        }
        self.ct.prefetch(&keys[..n]);
    }

    /// `flood`/`all`: every port of the bridge but the input (and but a
    /// mirror's output or a `no-flood` port), as it is.
    fn flood_raw(&mut self, slots: &[usize], in_slot: usize, pkt: Packet) {
        let mut targets = std::mem::take(&mut self.flood);
        targets.clear();
        let floods = |s: usize| self.ports[s].as_ref().is_some_and(|p| !p.flags.no_flood && !p.mirror_out);
        targets.extend(slots.iter().copied().filter(|&s| s != in_slot && floods(s)));
        if let Some((&last, rest)) = targets.split_last() {
            for &out in rest {
                let copy = self.pool.clone_packet(&pkt);
                self.send(out, copy);
            }
            self.send(last, pkt);
        } else {
            self.pool.put(pkt);
        }
        self.flood = targets;
    }

    /// The NORMAL action for one packet: learn, look up, forward or flood
    /// within the VLAN, tagging per output port.
    fn normal_one(&mut self, br: &mut BridgeParts<'_>, at: Ingress, pkt: Packet, drops: &mut Drops) {
        let Some(input) = self.ports.get(at.slot).and_then(Option::as_ref) else {
            self.note(|| format!("NORMAL: input port {} does not exist", at.port));
            return self.discard(pkt, DropReason::NoPort, drops);
        };
        let l2 = match classify_l2(pkt.data(), &input.vlan) {
            Ok(l2) => l2,
            Err(reason) => {
                self.note(|| format!("NORMAL: the frame cannot enter port {} ({reason})", at.port));
                return self.discard(pkt, reason, drops);
            }
        };
        let t = l2.tagging;
        if l2.src.is_unicast() && !self.dry_run() {
            br.cache.learn(br.mac, t.vlan, l2.src, at.port, at.now_ms);
        }
        if is_reserved_group(l2.dst) {
            self.note(|| format!("NORMAL: {} is a reserved group address", l2.dst));
            return self.discard(pkt, DropReason::ReservedGroup, drops);
        }
        let known = if l2.dst.is_unicast() { br.cache.lookup(br.mac, t.vlan, l2.dst) } else { None };
        match known {
            Some(p) if p == at.port => {
                self.note(|| format!("NORMAL: {} was learned on the input port", l2.dst));
                self.discard(pkt, DropReason::SamePort, drops);
            }
            Some(p) => match br.by_port_no.get(p as usize).copied().flatten() {
                Some(out) if self.carries(out, t.vlan) => {
                    self.note(|| format!("NORMAL: {} learned on port {p} in VLAN {}", l2.dst, t.vlan));
                    self.output(out, pkt, t)
                }
                _ => {
                    self.note(|| format!("NORMAL: {} learned on port {p}, which is gone: flood", l2.dst));
                    self.flood(br.slots, at.slot, pkt, t)
                }
            },
            None => {
                self.note(|| {
                    let why = if l2.dst.is_unicast() { "not learned" } else { "a group address" };
                    format!("NORMAL: {} is {why} in VLAN {}: flood", l2.dst, t.vlan)
                });
                self.flood(br.slots, at.slot, pkt, t)
            }
        }
    }
}

/// What NORMAL switching needs from a frame.
#[derive(Debug, Clone, Copy)]
struct L2 {
    dst: MacAddr,
    src: MacAddr,
    tagging: Tagging,
}

/// A frame's VLAN inside the bridge and its tag as received: all that
/// output needs to tag it for each port (kept small: it is stored per
/// packet of a burst).
#[derive(Debug, Clone, Copy)]
struct Tagging {
    /// The VLAN the frame belongs to inside the bridge.
    vlan: u16,
    /// The frame's 802.1Q tag as received, if any.
    tci: Option<VlanTci>,
}

/// Reads the Ethernet header and decides the frame's VLAN for a port in
/// `mode`, or why it must be dropped.
#[inline]
fn classify_l2(d: &[u8], mode: &VlanMode) -> Result<L2, DropReason> {
    let tags = crate::wire::vlan::walk(d).ok_or(DropReason::Runt)?;
    let dst = MacAddr::from_slice(&d[0..6]);
    let src = MacAddr::from_slice(&d[6..12]);
    // NORMAL switches on the outer 802.1Q tag; an 802.1ad S-tag frame is
    // untagged to it, as before.
    let tci = match tags.outer() {
        Some(t) if t.tpid == ethertype::VLAN => Some(t.tci),
        Some(_) => None,
        None if tags.cut && tags.ethertype == ethertype::VLAN => return Err(DropReason::TruncatedVlan),
        None => None,
    };
    let vid = tci.map_or(0, VlanTci::vid);
    let vlan = match mode {
        VlanMode::Access(tag) => {
            if vid != 0 {
                return Err(DropReason::TaggedOnAccess);
            }
            *tag
        }
        VlanMode::Trunk(_) => {
            if !mode.carries(vid) {
                return Err(DropReason::VlanNotAllowed);
            }
            vid
        }
        VlanMode::NativeTagged { native, .. } | VlanMode::NativeUntagged { native, .. } => {
            if vid == 0 {
                *native
            } else if mode.carries(vid) {
                vid
            } else {
                return Err(DropReason::VlanNotAllowed);
            }
        }
    };
    Ok(L2 { dst, src, tagging: Tagging { vlan, tci } })
}

/// 01:80:c2:00:00:00 to 01:80:c2:00:00:0f: link-local protocols a bridge
/// consumes or filters, never forwards (IEEE 802.1Q Table 8-1).
#[inline]
fn is_reserved_group(mac: MacAddr) -> bool {
    let m = mac.0;
    m[..5] == [0x01, 0x80, 0xc2, 0x00, 0x00] && m[5] & 0xf0 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_groups() {
        assert!(is_reserved_group(MacAddr([0x01, 0x80, 0xc2, 0, 0, 0])));
        assert!(is_reserved_group(MacAddr([0x01, 0x80, 0xc2, 0, 0, 0x0e])));
        assert!(!is_reserved_group(MacAddr([0x01, 0x80, 0xc2, 0, 0, 0x10])));
        assert!(!is_reserved_group(MacAddr::BROADCAST));
    }

    #[test]
    fn classify_access_and_trunk() {
        let mut f = vec![0u8; 64];
        f[..6].copy_from_slice(&[0xff; 6]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[12..16].copy_from_slice(&[0x81, 0x00, 0x00, 0x0a]);
        let access = VlanMode::access(10).unwrap();
        assert_eq!(classify_l2(&f, &access).unwrap_err(), DropReason::TaggedOnAccess);
        let trunk = VlanMode::trunk(&[10]).unwrap();
        assert_eq!(classify_l2(&f, &trunk).unwrap().tagging.vlan, 10);
        let other = VlanMode::trunk(&[11]).unwrap();
        assert_eq!(classify_l2(&f, &other).unwrap_err(), DropReason::VlanNotAllowed);
        // Priority-tagged frames are accepted on access ports.
        f[14..16].copy_from_slice(&[0xa0, 0x00]);
        assert_eq!(classify_l2(&f, &access).unwrap().tagging.vlan, 10);
        assert_eq!(classify_l2(&f[..16], &trunk).unwrap_err(), DropReason::TruncatedVlan);
        assert_eq!(classify_l2(&f[..13], &trunk).unwrap_err(), DropReason::Runt);
    }
}
