//! Why the datapath dropped a packet: [`DropReason`], counted per port.
//!
//! Its own room so that packets (which report why they cannot be
//! segmented), ports and the datapath can all name a reason without
//! depending on each other.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why the datapath dropped a packet. Every drop is counted by reason on the
/// port where it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
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
    /// Resubmits and table gotos nested deeper than 64, or more than 4,096
    /// lookups for one packet: a loop in the rules (rx).
    ResubmitLimit,
    /// A `ct` action could not commit the connection: the global or the
    /// zone's limit, or no free NAT mapping (`ct-stats` says which) (rx).
    Conntrack,
    /// The port is administratively down (`mod-port PORT down`) (rx, tx).
    PortDown,
    /// Received on a mirror's output port, which switches nothing (rx).
    MirrorOutput,
    /// The port failed (its code panicked; `health` says why): what was
    /// queued for it and what is sent to it until it is removed (tx).
    PortFailed,
    /// A native tunnel port (`options:uplink`) has no route to its remote
    /// through its uplink, or no source address (tx).
    TunnelNoRoute,
    /// A native tunnel port's next hop is not resolved yet: an ARP request
    /// has gone out for it (tx).
    TunnelNoNeighbour,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 26] = [
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
        DropReason::ResubmitLimit,
        DropReason::Conntrack,
        DropReason::PortDown,
        DropReason::MirrorOutput,
        DropReason::PortFailed,
        DropReason::TunnelNoRoute,
        DropReason::TunnelNoNeighbour,
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
            DropReason::ResubmitLimit => "resubmit_limit",
            DropReason::Conntrack => "conntrack",
            DropReason::PortDown => "port_down",
            DropReason::MirrorOutput => "mirror_output",
            DropReason::PortFailed => "port_failed",
            DropReason::TunnelNoRoute => "tunnel_no_route",
            DropReason::TunnelNoNeighbour => "tunnel_no_neighbour",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
