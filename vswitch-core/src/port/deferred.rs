//! A configured port whose interface is not there yet.
//!
//! A daemon replaying its configuration at start may find that a port's
//! interface does not exist (a veth not yet created, a NIC not yet
//! renamed). The port is kept, down, with the reason as its error, and is
//! opened on the first housekeeping tick after the interface appears; from
//! then on it is the real port.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::spec::PortKind;
use super::upkeep::{Mailbox, SlowHalf, Upkeep};
use super::{DropReason, Port, TxOutcome};
use crate::Result;
use crate::datapath::Wakeup;
use crate::packet::{Packet, PacketPool};

/// How often a missing interface is looked for again.
const RETRY_MS: u64 = 500;

/// Opens the real port, given the wake-up of the datapath thread that
/// will receive from it.
pub type Opener = Box<dyn FnMut(&Arc<Wakeup>) -> Result<Box<dyn Port>> + Send>;

#[derive(Debug, Default)]
struct Status {
    error: Option<String>,
    info: BTreeMap<String, String>,
}

/// What a port reports about itself beyond counters, shared between the
/// port and the switch's listings: why it is not working (`error:` in
/// `show`) and facts such as a tunnel's inner MTU (`status:`).
#[derive(Debug, Clone, Default)]
pub struct PortStatus(Arc<Mutex<Status>>);

impl PortStatus {
    fn lock(&self) -> std::sync::MutexGuard<'_, Status> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current error, if any.
    pub fn error(&self) -> Option<String> {
        self.lock().error.clone()
    }

    /// The reported facts.
    pub fn info(&self) -> BTreeMap<String, String> {
        self.lock().info.clone()
    }

    pub(crate) fn set_error(&self, e: Option<String>) {
        self.lock().error = e;
    }

    pub(crate) fn set_info(&self, key: &str, value: impl ToString) {
        self.lock().info.insert(key.to_string(), value.to_string());
    }
}

/// A port opened once its interface exists.
pub struct Deferred {
    kind: PortKind,
    inner: Option<Box<dyn Port>>,
    opened: Arc<Mailbox<Box<dyn Port>>>,
    /// The slow half (the opening), until the switch takes it.
    upkeep: SlowHalf<Opening>,
}

impl std::fmt::Debug for Deferred {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deferred").field("kind", &self.kind).field("inner", &self.inner).finish()
    }
}

/// A deferred port's slow half: tries to open the real port every
/// [`RETRY_MS`] (once its interface exists, for a kernel port), then runs
/// the real port's own upkeep.
struct Opening {
    kind: PortKind,
    ifname: String,
    open: Opener,
    status: PortStatus,
    wakeup: Arc<Wakeup>,
    next_try_ms: u64,
    opened: Arc<Mailbox<Box<dyn Port>>>,
    done: bool,
    inner: Option<Box<dyn Upkeep>>,
}

impl Upkeep for Opening {
    fn run(&mut self, now_ms: u64) {
        if let Some(u) = self.inner.as_mut() {
            return u.run(now_ms);
        }
        if self.done || now_ms < self.next_try_ms {
            return;
        }
        self.next_try_ms = now_ms + RETRY_MS;
        // A kernel port waits for its interface; other ports (which
        // create their own devices or sockets) just try again.
        let needs_interface = self.kind.needs_interface();
        if needs_interface && !std::path::Path::new("/sys/class/net").join(&self.ifname).exists() {
            return;
        }
        match (self.open)(&self.wakeup) {
            Ok(mut p) => {
                self.inner = p.upkeep();
                self.done = true;
                self.status.set_error(None);
                self.opened.post(Some(p));
            }
            Err(e) => self.status.set_error(Some(e.to_string())),
        }
    }
}

impl Deferred {
    /// A port of backend `kind` on `ifname`, opened by `open` when the
    /// interface exists; `why` is the error shown until then.
    pub fn new(
        kind: PortKind,
        ifname: &str,
        open: Opener,
        why: String,
        status: PortStatus,
        wakeup: Arc<Wakeup>,
    ) -> Deferred {
        status.set_error(Some(why));
        let opened = Mailbox::new(false);
        let upkeep = Opening {
            kind,
            ifname: ifname.to_string(),
            open,
            status,
            wakeup,
            next_try_ms: 0,
            opened: opened.clone(),
            done: false,
            inner: None,
        };
        Deferred { kind, inner: None, opened, upkeep: SlowHalf::new(upkeep) }
    }
}

impl Port for Deferred {
    fn kind(&self) -> &'static str {
        self.kind.as_str()
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
        self.upkeep.run_here(now_ms);
        if self.inner.is_none()
            && let Some(Some(p)) = self.opened.collect()
        {
            self.inner = Some(p);
        }
        if let Some(p) = self.inner.as_mut() {
            p.housekeeping(now_ms);
        }
    }

    fn upkeep(&mut self) -> Option<Box<dyn Upkeep>> {
        self.upkeep.take()
    }

    fn take_rx_drops(&mut self, count: &mut dyn FnMut(DropReason, u64)) {
        if let Some(p) = self.inner.as_mut() {
            p.take_rx_drops(count);
        }
    }

    fn carries_offloads(&self) -> bool {
        self.inner.as_ref().map_or(self.kind == PortKind::AfPacket, |p| p.carries_offloads())
    }
}
