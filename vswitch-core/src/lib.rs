//! # vswitch-core
//!
//! An embeddable userspace virtual switch: a poll-mode datapath that moves
//! packets between ports in bursts, MAC learning with VLANs, and an API a
//! container runtime, VMM or network simulator can link against.
//!
//! Everything starts at [`Switch`]: build one, add bridges, attach ports
//! (in-process [memory ports](port::memory), a runtime's own TAP
//! descriptors, [vhost-user](port::vhost_user) sockets for VMs, AF_PACKET
//! and AF_XDP kernel interfaces, VXLAN and GRE tunnels, or a [`Port`](port::Port)
//! of your own), then program it with flow rules and read its counters,
//! [`health`](Switch::health) and [`events`]. docs/embedding.md in the
//! repository is the guide for runtime authors.
//!
//! The modules an embedder uses:
//!
//! | module | what is in it |
//! |---|---|
//! | the crate root | [`Switch`] and its builder, stats, health, errors |
//! | [`port`] | memory ports, vhost-user settings, the [`Port`](port::Port) trait and what a custom port needs |
//! | [`packet`] | [`Packet`] (frames, VLAN tags, offload metadata) and [`PacketPool`](packet::PacketPool) |
//! | [`events`] | subscriptions to port, link, MAC and datapath events |
//! | [`asyncio`] | memory ports and events on tokio (feature `tokio`) |
//! | [`flow`] | OpenFlow-style rules, groups, trace |
//! | [`conntrack`] | connection tracking and NAT settings and state |
//! | [`mac`] | MAC-table settings and entries |
//! | [`config`] | the switch's configuration as data ([`PortSpec`] for every port type) |
//! | [`clock`] | real and virtual time |
//!
//! Features: `smoltcp` (on by default) makes memory ports smoltcp
//! devices and re-exports [`smoltcp`]; `tokio` adds [`asyncio`]; `daemon`
//! adds what `vswitchd` is built from (the control server, the
//! configuration store, container networks). The datapath, classifier,
//! caches and wire formats are private.
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

// What only the daemon, the benchmarks or the fuzz targets call is unused
// in a build without their features. Dead code is still found: the
// workspace's build (and CI's clippy) turns every feature on.
#![cfg_attr(not(feature = "internals"), allow(dead_code))]
#![warn(missing_docs)]

/// A method public to this workspace's benchmarks, fuzz targets and tests
/// (feature `internals`) and crate-private otherwise, for a type that is
/// itself part of the API.
macro_rules! internal {
    ($(#[$m:meta])* pub fn $($rest:tt)*) => {
        #[cfg(feature = "internals")]
        $(#[$m])* pub fn $($rest)*
        #[cfg(not(feature = "internals"))]
        $(#[$m])* pub(crate) fn $($rest)*
    };
}

#[cfg(feature = "tokio")]
pub mod asyncio;
pub mod clock;
pub mod config;
pub mod conntrack;
#[cfg(feature = "daemon")]
pub mod control;
mod datapath;
mod drop_reason;
mod error;
pub mod events;
pub mod flow;
#[cfg(any(test, feature = "internals"))]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod internals;
pub mod mac;
#[cfg(feature = "daemon")]
pub mod net;
pub mod packet;
pub mod port;
mod switch;
mod sys;
mod wire;

pub use clock::{Clock, ManualClock, MonotonicClock};
pub use config::{PortKind, PortSpec};
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
#[cfg(feature = "smoltcp")]
pub use smoltcp;
pub use switch::{
    BridgeInfo, BridgeStats, DEFAULT_DATAPATH_TIMEOUT, DatapathThreadInfo, Health, IdlePolicy, MAX_MIRRORS,
    MAX_NEIGH_AGING_S, MirrorInfo, OnOpenError, PortHealth, PortInfo, PortState, PortStats, Switch, SwitchBuilder,
    SwitchStats,
};
pub use wire::{MacAddr, ParseMacError};

/// docs/embedding.md, whose Rust blocks are compiled (and, but for the
/// `no_run` ones, run) as this crate's doc tests.
#[cfg(all(doctest, feature = "tokio"))]
#[doc = include_str!("../../docs/embedding.md")]
struct EmbeddingGuide;
