//! The datapath: bursts of packets through the bridge pipeline.
//!
//! `Datapath` owns the ports and runs to completion: receive a burst of
//! up to [`BURST`] frames from a port, decide each one's output ports
//! (NORMAL: MAC learning and VLANs), queue them per output port and flush
//! each port's batch once. It takes `now` as an argument and makes no
//! syscalls of its own, so it runs the same under a test's virtual clock,
//! a simulator's loop or the poll-mode thread of its `thread` module.
//!
//! The control plane never touches a running datapath's state directly: it
//! sends closures that the thread runs between bursts.

pub mod perf;
mod pipeline;
pub(crate) mod thread;
mod wakeup;

pub(crate) use pipeline::Datapath;
pub use pipeline::PortFlags;
pub(crate) use pipeline::SharedPort;
pub(crate) use pipeline::{DpMirror, MirrorCounters};
pub use wakeup::Wakeup;
