//! # vswitch-core
//!
//! An embeddable userspace virtual switch: a poll-mode datapath that moves
//! packets between ports in bursts, MAC learning with VLANs, and an API a
//! container runtime, VMM or network simulator can link against.
//!
//! The crate is layered so that the packet pipeline is *sans-IO*: [`wire`]
//! parses headers, [`flow`] turns a frame into a [`flow::FlowKey`], [`mac`]
//! holds the learning table and [`datapath`] runs bursts of packets through
//! the bridge logic with time passed in as an argument. Platform I/O lives in
//! the port backends ([`port`]) and every `unsafe` block lives in `sys`.
//!
//! ```
//! use vswitch_core::{Switch, PortConfig};
//!
//! let switch = Switch::builder().build()?;
//! switch.add_bridge("br0")?;
//! let mut a = switch.add_memory_port("br0", "a", PortConfig::default())?;
//! let mut b = switch.add_memory_port("br0", "b", PortConfig::default())?;
//!
//! // A broadcast from `a` is flooded to `b`.
//! let mut frame = [0u8; 60];
//! frame[..6].copy_from_slice(&[0xff; 6]);
//! frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
//! frame[12..14].copy_from_slice(&[0x08, 0x06]);
//! a.send_frame(&frame)?;
//! let got = b.recv_timeout(std::time::Duration::from_secs(5)).expect("flooded");
//! assert_eq!(got.data(), &frame[..]);
//! # Ok::<(), vswitch_core::Error>(())
//! ```

#[cfg(feature = "tokio")]
pub mod asyncio;
pub mod clock;
pub mod config;
pub mod conntrack;
pub mod control;
pub mod datapath;
mod drop_reason;
mod error;
pub mod events;
pub mod flow;
#[doc(hidden)]
pub mod fuzzing;
pub mod mac;
pub mod net;
pub mod packet;
pub mod port;
mod switch;
mod sys;
pub mod wire;

pub use clock::{Clock, ManualClock, MonotonicClock};
pub use datapath::PortFlags;
pub use datapath::perf::PmdStats;
pub use error::{Error, ErrorKind, Outcome, Result};
pub use packet::Packet;
pub use port::memory::MemoryPortHandle;
pub use port::tunnel::native::{TunnelNeighbour, TunnelRoute};
pub use port::{DropReason, PortConfig, PortNo, VlanMode, VlanModeName};
/// The smoltcp this crate is built with (memory ports implement its
/// `phy::Device`): use it, rather than a version of your own, for the
/// adapter's types to match.
pub use smoltcp;
pub use switch::{
    BridgeInfo, BridgeStats, DEFAULT_DATAPATH_TIMEOUT, DatapathThreadInfo, Health, IdlePolicy, MAX_MIRRORS,
    MAX_NEIGH_AGING_S, MirrorInfo, OnOpenError, PortHealth, PortInfo, PortState, PortStats, Switch, SwitchBuilder,
    SwitchStats,
};
pub use wire::MacAddr;
