//! The switch's insides, for this workspace's benchmarks, fuzz targets and
//! tests only (feature `internals`). Not part of the library's API: no
//! stability is promised and nothing here is documented for embedders.

pub use crate::conntrack::PreparedFrame;
pub use crate::flow::classifier::Classifier;
pub use crate::flow::key::FlowKey;
pub use crate::flow::packed::{METADATA_WORD, PackedKey, PackedParse, VLAN_PRESENT, WORDS};
pub use crate::flow::table::{Emc, FlowTable, Rule, RuleKey, RuleStats, TableStats, Tables};
pub use crate::mac::cache::MacCache;
pub use crate::port::afpacket::{AfPacketConfig, AfPacketPort, AfPacketRx};
pub use crate::port::afxdp::{AfXdpPort, XdpModeRequest};
pub use crate::port::internal::InternalPort;
pub use crate::port::tunnel::TunnelPort;
pub use crate::port::tunnel::native::NativeTunnelPort;

/// The tunnel headers' builders and parsers.
pub mod tunnel_wire {
    pub use crate::port::tunnel::wire::*;
}
