//! Ports: where packets enter and leave the switch.
//!
//! A [`Port`] moves packets in bursts. The datapath owns every port and is
//! the only one to call it; counting is done by the datapath, the same way
//! for every backend, from what the port reports. Backends: [`memory`]
//! (in-process queues a runtime plugs its virtual NICs into); kernel and
//! tunnel backends build on the same trait.

pub mod afpacket;
pub mod afxdp;
pub mod deferred;
pub mod internal;
pub mod memory;
pub mod tunnel;
pub mod upkeep;
pub(crate) mod vlan_mode;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::packet::{Packet, PacketPool};
pub use vlan_mode::{VlanDescription, VlanMode, VlanSet};

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

    /// The port's slow half (see [`upkeep`](crate::port::upkeep)), taken
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxOutcome {
    /// Packets handed on.
    pub sent: usize,
    /// Bytes in those packets.
    pub sent_bytes: u64,
    /// Packets dropped, and why.
    pub dropped: usize,
    /// The reason for the drops (one reason per burst).
    pub drop_reason: Option<DropReason>,
}

impl TxOutcome {
    /// Drops the whole batch for `reason`, returning its buffers to `pool`.
    pub fn drop_all(batch: &mut Vec<Packet>, pool: &mut PacketPool, reason: DropReason) -> TxOutcome {
        let dropped = batch.len();
        batch.drain(..).for_each(|p| pool.put(p));
        TxOutcome { dropped, drop_reason: Some(reason), ..TxOutcome::default() }
    }
}

/// Why the datapath dropped a packet. Every drop is counted by reason on the
/// port where it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// Shorter than an Ethernet header (rx).
    Runt,
    /// A VLAN tag that was cut short (rx).
    TruncatedVlan,
    /// A tagged frame (VID other than 0) arrived on an access port (rx).
    TaggedOnAccess,
    /// The frame's VLAN is not in the trunk port's set (rx).
    VlanNotAllowed,
    /// The destination was learned on the port the frame came in on (rx).
    SamePort,
    /// The frame's destination is a reserved link-local group address
    /// (01:80:c2:00:00:0x, e.g. STP, LACP, pause) that bridges must not
    /// forward (IEEE 802.1Q §8.6.3) (rx).
    ReservedGroup,
    /// The port's transmit queue was full (tx).
    TxQueueFull,
    /// The port's link is down (tx).
    LinkDown,
    /// The frame is larger than the port can carry (tx).
    TooBig,
    /// The port's backend failed to send (tx).
    TxError,
    /// No flow rule matched the packet (rx).
    NoMatch,
    /// The matching flow rule's actions drop it (`actions=drop`) (rx).
    FlowDrop,
    /// `dec_ttl` found a TTL or hop limit that would reach zero (rx).
    TtlExpired,
    /// A flow rule's `output:` names a port that does not exist (rx).
    NoPort,
    /// The kernel delivered only part of the frame (rx).
    Truncated,
    /// The kernel's receive ring was full: the switch fell behind (rx).
    RxRingFull,
    /// A tunnel packet with a bad header (short, wrong flags or version, a
    /// bad GRE checksum, an inner frame cut short), counted on the tunnel
    /// port that read it from the shared socket (rx).
    TunnelMalformed,
    /// A tunnel packet whose remote address and key (VNI) match no tunnel
    /// port, counted on the tunnel port that read it (rx).
    TunnelUnknown,
    /// Sent to a flow-based tunnel port (`remote_ip=flow`) without a
    /// `set_field:IP->tun_dst` (tx).
    TunnelNoRemote,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 19] = [
        DropReason::Runt,
        DropReason::TruncatedVlan,
        DropReason::TaggedOnAccess,
        DropReason::VlanNotAllowed,
        DropReason::SamePort,
        DropReason::ReservedGroup,
        DropReason::TxQueueFull,
        DropReason::LinkDown,
        DropReason::TooBig,
        DropReason::TxError,
        DropReason::NoMatch,
        DropReason::FlowDrop,
        DropReason::TtlExpired,
        DropReason::NoPort,
        DropReason::Truncated,
        DropReason::RxRingFull,
        DropReason::TunnelMalformed,
        DropReason::TunnelUnknown,
        DropReason::TunnelNoRemote,
    ];

    /// The reason's snake_case name, as in JSON and text output.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Runt => "runt",
            DropReason::TruncatedVlan => "truncated_vlan",
            DropReason::TaggedOnAccess => "tagged_on_access",
            DropReason::VlanNotAllowed => "vlan_not_allowed",
            DropReason::SamePort => "same_port",
            DropReason::ReservedGroup => "reserved_group",
            DropReason::TxQueueFull => "tx_queue_full",
            DropReason::LinkDown => "link_down",
            DropReason::TooBig => "too_big",
            DropReason::TxError => "tx_error",
            DropReason::NoMatch => "no_match",
            DropReason::FlowDrop => "flow_drop",
            DropReason::TtlExpired => "ttl_expired",
            DropReason::NoPort => "no_port",
            DropReason::Truncated => "truncated",
            DropReason::RxRingFull => "rx_ring_full",
            DropReason::TunnelMalformed => "tunnel_malformed",
            DropReason::TunnelUnknown => "tunnel_unknown",
            DropReason::TunnelNoRemote => "tunnel_no_remote",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A port's counters, written by the datapath, read by anyone.
#[derive(Debug, Default)]
pub struct PortCounters {
    pub(crate) rx_packets: AtomicU64,
    pub(crate) rx_bytes: AtomicU64,
    pub(crate) tx_packets: AtomicU64,
    pub(crate) tx_bytes: AtomicU64,
    pub(crate) drops: [AtomicU64; DropReason::ALL.len()],
    pub(crate) link_up: AtomicBool,
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
}

/// How a port joins its bridge's VLANs.
///
/// ```
/// use vswitch_core::{PortConfig, VlanMode};
/// let access = PortConfig { vlan: VlanMode::access(10).unwrap(), ..Default::default() };
/// let trunk = PortConfig { vlan: VlanMode::trunk(&[10, 20]).unwrap(), ..Default::default() };
/// assert!(trunk.vlan.carries(20) && !access.vlan.carries(20));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortConfig {
    /// VLAN membership; the default is a trunk of every VLAN.
    pub vlan: VlanMode,
}
