//! Ports: where packets enter and leave the switch.
//!
//! A [`Port`] moves packets in bursts. The datapath owns every port and is
//! the only one to call it; counting is done by the datapath, the same way
//! for every backend, from what the port reports.
//!
//! What an embedder uses from here: [`memory`] ports (in-process queues a
//! runtime plugs its virtual NICs into), the [`vhost_user`] backend's
//! settings, [`open_tap`] for a runtime that opens its own TAP devices,
//! and what a port of its own needs: the [`Port`] trait, [`TxOutcome`], [`Wakeup`] and the
//! slow-path [`upkeep`]. The kernel, TAP and tunnel backends themselves
//! are the switch's own and are opened through
//! [`Switch`](crate::Switch)'s `add_*_port` methods or a
//! [`PortSpec`](crate::PortSpec).

pub(crate) mod afpacket;
pub(crate) mod afxdp;
pub(crate) mod deferred;
pub(crate) mod internal;
pub mod memory;
pub(crate) mod spec;
pub(crate) mod tunnel;
pub mod upkeep;
pub mod vhost_user;
pub(crate) mod vlan_mode;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

pub use crate::datapath::Wakeup;
pub use crate::drop_reason::DropReason;
use crate::packet::{Packet, PacketPool};
pub use internal::open_tap;
pub use vlan_mode::{VlanDescription, VlanMode, VlanModeName, VlanSet};

/// A port's number on its bridge (OpenFlow's `ofport`), from 1.
pub type PortNo = u32;

/// Most packets a port hands over or takes in one call.
pub const BURST: usize = 32;

/// A packet-moving endpoint owned by the datapath.
pub trait Port: Send + fmt::Debug {
    /// The backend's name, as `type=` in the CLI (`memory`, `afpacket`, ...).
    fn kind(&self) -> &'static str;

    /// Receives at most `max` packets, appending them to `batch`; returns
    /// how many. Buffers come from `pool` (or are moved in by the port).
    fn rx_burst(&mut self, batch: &mut Vec<Packet>, max: usize, pool: &mut PacketPool) -> usize;

    /// Sends every packet in `batch`, draining it. Packets the port could
    /// not send go back to `pool`; the return value says how many were sent
    /// and why the rest were dropped.
    fn tx_burst(&mut self, batch: &mut Vec<Packet>, pool: &mut PacketPool) -> TxOutcome;

    /// True if packets are waiting to be received without a file descriptor
    /// to wake on (in-process ports); the datapath re-checks this before it
    /// sleeps.
    fn rx_pending(&self) -> bool {
        false
    }

    /// Whether the link is up; the datapath does not send to a down port.
    fn link_up(&self) -> bool {
        true
    }

    /// A descriptor that becomes readable when packets arrive, for the
    /// datapath's sleep (epoll). Ports without one wake it themselves.
    fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }

    /// Periodic housekeeping on the datapath thread (about ten times a
    /// second): cheap work only, such as collecting what the port's
    /// [`upkeep`](Port::upkeep) made. The wake descriptor may change.
    fn housekeeping(&mut self, _now_ms: u64) {}

    /// The port's slow half (see [`upkeep`]), taken
    /// once by the switch when the port is attached and run on its
    /// slow-path thread: looking for a vanished interface, reopening it,
    /// reading the link state. None for a port that needs none.
    fn upkeep(&mut self) -> Option<Box<dyn upkeep::Upkeep>> {
        None
    }

    /// Reports (and forgets) the packets the port or its kernel dropped on
    /// receive since the last call: `count(reason, how_many)` per reason.
    fn take_rx_drops(&mut self, _count: &mut dyn FnMut(DropReason, u64)) {}

    /// True if the port passes offload metadata (GSO, partial checksums)
    /// to its peer; otherwise the datapath resolves it before transmit.
    fn carries_offloads(&self) -> bool {
        false
    }
}

/// What [`Port::tx_burst`] did with a batch.
///
/// Drops are counted under up to two reasons per burst (a frame too big
/// and a full queue, say): [`with_drops`](TxOutcome::with_drops) adds
/// them. `dropped` is the total; `drop_reason` is the reason of all of
/// them but those added under a second reason.
///
/// ```
/// use vswitch_core::DropReason;
/// use vswitch_core::port::TxOutcome;
/// let out = TxOutcome::sent(30, 1800)
///     .with_drops(1, DropReason::TooBig)
///     .with_drops(2, DropReason::TxQueueFull)
///     .with_drops(1, DropReason::TooBig);
/// assert_eq!(out.dropped, 4);
/// assert_eq!(out.drops().collect::<Vec<_>>(), [(DropReason::TooBig, 2), (DropReason::TxQueueFull, 2)]);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TxOutcome {
    /// Packets handed on.
    pub sent: usize,
    /// Bytes in those packets.
    pub sent_bytes: u64,
    /// Packets dropped, in all.
    pub dropped: usize,
    /// Why they were dropped (`tx_error` if unset).
    pub drop_reason: Option<DropReason>,
    /// Drops under a second reason, part of `dropped`.
    second: Option<(DropReason, usize)>,
}

impl TxOutcome {
    /// `packets` packets of `bytes` bytes in all were handed on, none
    /// dropped.
    pub fn sent(packets: usize, bytes: u64) -> TxOutcome {
        TxOutcome { sent: packets, sent_bytes: bytes, ..TxOutcome::default() }
    }

    /// Adds `dropped` packets dropped for `reason`. A third reason in one
    /// burst is counted under the first.
    pub fn with_drops(mut self, dropped: usize, reason: DropReason) -> TxOutcome {
        if dropped == 0 {
            return self;
        }
        match (self.drop_reason, &mut self.second) {
            (None, _) if self.dropped == 0 => self.drop_reason = Some(reason),
            (Some(first), _) if first == reason => {}
            (_, Some((second, n))) if *second == reason => *n += dropped,
            (_, second @ None) => *second = Some((reason, dropped)),
            _ => {}
        }
        self.dropped += dropped;
        self
    }

    /// Drops the whole batch for `reason`, returning its buffers to `pool`.
    pub fn drop_all(batch: &mut Vec<Packet>, pool: &mut PacketPool, reason: DropReason) -> TxOutcome {
        let dropped = batch.len();
        batch.drain(..).for_each(|p| pool.put(p));
        TxOutcome::default().with_drops(dropped, reason)
    }

    /// The drops by reason: `(reason, count)`, at most two, none empty.
    pub fn drops(&self) -> impl Iterator<Item = (DropReason, usize)> {
        let second = self.second.map(|(r, n)| (r, n.min(self.dropped)));
        let first = self.dropped - second.map_or(0, |(_, n)| n);
        let first = (self.drop_reason.unwrap_or(DropReason::TxError), first);
        [Some(first), second].into_iter().flatten().filter(|&(_, n)| n > 0)
    }
}

/// A port's counters, written by the datapath, read by anyone.
#[derive(Debug, Default)]
pub(crate) struct PortCounters {
    pub(crate) rx_packets: AtomicU64,
    pub(crate) rx_bytes: AtomicU64,
    pub(crate) tx_packets: AtomicU64,
    pub(crate) tx_bytes: AtomicU64,
    pub(crate) drops: [AtomicU64; DropReason::ALL.len()],
    pub(crate) link_up: AtomicBool,
    /// Why the port failed (its code panicked), once it has.
    pub(crate) failure: OnceLock<String>,
    /// The datapath has put a stand-in in the failed port's place.
    pub(crate) stood_in: AtomicBool,
    /// Who the port is, for events.
    pub(crate) bridge: Arc<str>,
    pub(crate) name: Arc<str>,
    pub(crate) port_no: PortNo,
    /// The uplink its received bursts go through first, while native
    /// tunnels use the port as one.
    pub(crate) uplink: tunnel::native::UplinkHook,
}

impl PortCounters {
    #[inline]
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        if n != 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    #[inline]
    pub(crate) fn count_drop(&self, reason: DropReason, n: u64) {
        Self::add(&self.drops[reason as usize], n);
    }

    /// Packets received.
    pub fn rx_packets(&self) -> u64 {
        self.rx_packets.load(Ordering::Relaxed)
    }
    /// Bytes received.
    pub fn rx_bytes(&self) -> u64 {
        self.rx_bytes.load(Ordering::Relaxed)
    }
    /// Packets sent.
    pub fn tx_packets(&self) -> u64 {
        self.tx_packets.load(Ordering::Relaxed)
    }
    /// Bytes sent.
    pub fn tx_bytes(&self) -> u64 {
        self.tx_bytes.load(Ordering::Relaxed)
    }
    /// Packets dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].load(Ordering::Relaxed)
    }

    /// Why the port failed, if it has (see [`Switch::health`](crate::Switch::health)).
    pub fn failure(&self) -> Option<&str> {
        self.failure.get().map(String::as_str)
    }

    /// Counters of port `name`, number `port_no` on `bridge`.
    pub(crate) fn for_port(bridge: &str, name: &str, port_no: PortNo) -> Self {
        PortCounters { bridge: bridge.into(), name: name.into(), port_no, ..PortCounters::default() }
    }

    /// Records that the port failed, for `why`; false if it had already.
    pub(crate) fn fail(&self, why: String) -> bool {
        self.failure.set(why).is_ok()
    }
}

/// How a port joins its bridge's VLANs.
///
/// ```
/// use vswitch_core::{PortConfig, VlanMode};
/// let access = PortConfig::with_vlan(VlanMode::access(10).unwrap());
/// let trunk = PortConfig::with_vlan(VlanMode::trunk(&[10, 20]).unwrap());
/// assert!(trunk.vlan.carries(20) && !access.vlan.carries(20));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PortConfig {
    /// VLAN membership; the default is a trunk of every VLAN.
    pub vlan: VlanMode,
}

impl PortConfig {
    /// A port with VLAN membership `vlan`.
    pub fn with_vlan(vlan: VlanMode) -> PortConfig {
        PortConfig { vlan }
    }
}
