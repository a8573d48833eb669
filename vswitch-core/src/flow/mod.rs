//! Flows: what a packet *is*, as the switch classifies it.
//!
//! [`FlowKey`] is extracted from a frame and its input port in one pass,
//! never panicking on malformed input: it records how far parsing got and
//! whether a header was cut short, and the packet stays switchable at L2.

mod key;

pub use key::{FlowKey, FragKind, Layer, TunnelKey};
