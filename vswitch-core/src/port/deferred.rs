//! A configured port whose interface is not there yet.
//!
//! A daemon replaying its configuration at start may find that a port's
//! interface does not exist (a veth not yet created, a NIC not yet
//! renamed). The port is kept, down, with the reason as its error, and is
//! opened on the first housekeeping tick after the interface appears; from
//! then on it is the real port.

use std::sync::{Arc, Mutex};

use super::{DropReason, Port, TxOutcome};
use crate::Result;
use crate::packet::{Packet, PacketPool};

/// How often a missing interface is looked for again.
const RETRY_MS: u64 = 500;

/// Opens the real port.
pub type Opener = Box<dyn FnMut() -> Result<Box<dyn Port>> + Send>;

/// Why a port is not working, shared between the port and the switch's
/// listing (`error:` in `show`).
#[derive(Debug, Clone, Default)]
pub struct PortError(Arc<Mutex<Option<String>>>);

impl PortError {
    /// The current error, if any.
    pub fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set(&self, e: Option<String>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = e;
    }
}

/// A port opened once its interface exists.
pub struct Deferred {
    kind: &'static str,
    ifname: String,
    open: Opener,
    inner: Option<Box<dyn Port>>,
    error: PortError,
    next_try_ms: u64,
}

impl std::fmt::Debug for Deferred {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deferred").field("ifname", &self.ifname).field("inner", &self.inner).finish()
    }
}

impl Deferred {
    /// A port of backend `kind` on `ifname`, opened by `open` when the
    /// interface exists; `why` is the error shown until then.
    pub fn new(kind: &'static str, ifname: &str, open: Opener, why: String, error: PortError) -> Deferred {
        error.set(Some(why));
        Deferred { kind, ifname: ifname.to_string(), open, inner: None, error, next_try_ms: 0 }
    }
}

impl Port for Deferred {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn rx_burst(&mut self, batch: &mut Vec<Packet>, max: usize, pool: &mut PacketPool) -> usize {
        self.inner.as_mut().map_or(0, |p| p.rx_burst(batch, max, pool))
    }

    fn tx_burst(&mut self, batch: &mut Vec<Packet>, pool: &mut PacketPool) -> TxOutcome {
        match self.inner.as_mut() {
            Some(p) => p.tx_burst(batch, pool),
            None => TxOutcome::drop_all(batch, pool, DropReason::LinkDown),
        }
    }

    fn rx_pending(&self) -> bool {
        self.inner.as_ref().is_some_and(|p| p.rx_pending())
    }

    fn link_up(&self) -> bool {
        self.inner.as_ref().is_some_and(|p| p.link_up())
    }

    fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        self.inner.as_ref().and_then(|p| p.wake_fd())
    }

    fn housekeeping(&mut self, now_ms: u64) {
        if let Some(p) = self.inner.as_mut() {
            return p.housekeeping(now_ms);
        }
        if now_ms < self.next_try_ms {
            return;
        }
        self.next_try_ms = now_ms + RETRY_MS;
        // A kernel port waits for its interface; an internal port (which
        // creates its own) just tries again.
        let needs_interface = self.kind != "internal";
        if needs_interface && !std::path::Path::new("/sys/class/net").join(&self.ifname).exists() {
            return;
        }
        match (self.open)() {
            Ok(mut p) => {
                p.housekeeping(now_ms);
                self.inner = Some(p);
                self.error.set(None);
            }
            Err(e) => self.error.set(Some(e.to_string())),
        }
    }

    fn take_rx_drops(&mut self, count: &mut dyn FnMut(DropReason, u64)) {
        if let Some(p) = self.inner.as_mut() {
            p.take_rx_drops(count);
        }
    }

    fn carries_offloads(&self) -> bool {
        self.inner.as_ref().map_or(self.kind == "afpacket", |p| p.carries_offloads())
    }
}
