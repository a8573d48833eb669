//! In-process ports: lock-free queues between the datapath and a runtime.
//!
//! [`MemoryPortHandle`] is the runtime's end (a VM's virtual NIC, a
//! simulated host, a smoltcp stack through its [`smoltcp::phy::Device`]
//! implementation); the switch's end is a [`Port`] the datapath owns. Each
//! direction is a bounded `crossbeam` queue; buffers come back through a
//! free queue so that steady traffic allocates nothing.
//!
//! Back-pressure: a full queue towards the switch makes
//! [`MemoryPortHandle::send_frame`] fail (the runtime decides); a full queue
//! towards the runtime drops the packet in the datapath, counted as
//! [`DropReason::TxQueueFull`](super::DropReason::TxQueueFull).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crossbeam::queue::ArrayQueue;

use super::{DropReason, Port, PortNo, TxOutcome};
use crate::datapath::Wakeup;
use crate::packet::{DEFAULT_BUFFER, HEADROOM, Packet, PacketPool};
use crate::{Error, Result};

/// Default depth of each queue of a memory port.
pub const DEFAULT_QUEUE_LEN: usize = 1024;

#[derive(Debug)]
struct Shared {
    to_switch: ArrayQueue<Packet>,
    to_host: ArrayQueue<Packet>,
    free: ArrayQueue<Packet>,
    link_up: AtomicBool,
    detached: AtomicBool,
    host_signal: HostSignal,
    wakeup: Arc<Wakeup>,
    host_tx_dropped: AtomicU64,
}

/// Wakes runtime threads blocked in [`MemoryPortHandle::recv_timeout`].
///
/// The datapath looks at `waiters` (one load after a fence) and takes the
/// lock only when someone waits; a waiter registers and re-checks the queue
/// under the lock, so a packet queued in between is never slept through.
#[derive(Debug, Default)]
struct HostSignal {
    waiters: AtomicUsize,
    lock: Mutex<()>,
    cond: Condvar,
}

impl HostSignal {
    fn notify(&self) {
        fence(Ordering::SeqCst);
        if self.waiters.load(Ordering::Relaxed) > 0 {
            let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.cond.notify_all();
        }
    }

    fn wait_unless(&self, ready: impl Fn() -> bool, timeout: Duration) {
        let g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.waiters.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if !ready() {
            let _ = self.cond.wait_timeout(g, timeout);
        }
        self.waiters.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The switch's end of a memory port.
#[derive(Debug)]
pub(crate) struct MemoryPort {
    shared: Arc<Shared>,
}

/// A runtime's end of a memory port: send frames into the switch and
/// receive what the switch forwards to this port.
///
/// It implements [`smoltcp::phy::Device`], so a smoltcp `Interface` can use
/// it directly as its NIC. It is `Sync`: one thread may send while another
/// receives.
#[derive(Debug)]
pub struct MemoryPortHandle {
    shared: Arc<Shared>,
    name: String,
    port_no: PortNo,
    mtu: usize,
}

/// Creates both ends of a memory port with queues of `queue_len` packets.
pub(crate) fn pair(
    name: &str,
    port_no: PortNo,
    queue_len: usize,
    wakeup: Arc<Wakeup>,
) -> (MemoryPort, MemoryPortHandle) {
    let shared = Arc::new(Shared {
        to_switch: ArrayQueue::new(queue_len),
        to_host: ArrayQueue::new(queue_len),
        free: ArrayQueue::new(queue_len),
        link_up: AtomicBool::new(true),
        detached: AtomicBool::new(false),
        host_signal: HostSignal::default(),
        wakeup,
        host_tx_dropped: AtomicU64::new(0),
    });
    let handle = MemoryPortHandle { shared: shared.clone(), name: name.to_string(), port_no, mtu: 1500 };
    (MemoryPort { shared }, handle)
}

impl Port for MemoryPort {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn rx_burst(&mut self, batch: &mut Vec<Packet>, max: usize, _pool: &mut PacketPool) -> usize {
        let mut n = 0;
        while n < max {
            match self.shared.to_switch.pop() {
                Some(p) => {
                    batch.push(p);
                    n += 1;
                }
                None => break,
            }
        }
        n
    }

    fn tx_burst(&mut self, batch: &mut Vec<Packet>, pool: &mut PacketPool) -> TxOutcome {
        let mut out = TxOutcome::default();
        for p in batch.drain(..) {
            let len = p.len() as u64;
            match self.shared.to_host.push(p) {
                Ok(()) => {
                    out.sent += 1;
                    out.sent_bytes += len;
                }
                Err(p) => {
                    pool.put(p);
                    out.dropped += 1;
                    out.drop_reason = Some(DropReason::TxQueueFull);
                }
            }
        }
        if out.sent > 0 {
            self.shared.host_signal.notify();
        }
        out
    }

    fn rx_pending(&self) -> bool {
        !self.shared.to_switch.is_empty()
    }

    fn link_up(&self) -> bool {
        self.shared.link_up.load(Ordering::Relaxed)
    }
}

impl Drop for MemoryPort {
    fn drop(&mut self) {
        self.shared.detached.store(true, Ordering::Release);
        self.shared.host_signal.notify();
    }
}

impl MemoryPortHandle {
    /// The port's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The port's number on its bridge.
    pub fn port_no(&self) -> PortNo {
        self.port_no
    }

    /// Sets the IP MTU reported to smoltcp (default 1500).
    pub fn set_mtu(&mut self, mtu: usize) {
        self.mtu = mtu;
    }

    /// True once the port has been removed from the switch.
    pub fn is_detached(&self) -> bool {
        self.shared.detached.load(Ordering::Acquire)
    }

    /// Brings the simulated link up or down. A down port neither receives
    /// from the switch nor is flooded to (the drops are counted).
    pub fn set_link_up(&self, up: bool) {
        self.shared.link_up.store(up, Ordering::Relaxed);
    }

    /// A buffer to build a frame in: recycled if one is free.
    pub fn alloc(&self) -> Packet {
        self.shared.free.pop().unwrap_or_else(|| Packet::with_capacity(DEFAULT_BUFFER - HEADROOM))
    }

    /// Hands a received packet's buffer back for reuse.
    pub fn recycle(&self, p: Packet) {
        let _ = self.shared.free.push(p);
    }

    /// Sends a packet into the switch.
    ///
    /// # Errors
    /// Gives the packet back if the queue towards the switch is full or
    /// the port was removed.
    pub fn try_send(&self, p: Packet) -> std::result::Result<(), Packet> {
        if self.is_detached() {
            return Err(p);
        }
        self.shared.to_switch.push(p)?;
        self.shared.wakeup.notify();
        Ok(())
    }

    /// Copies `frame` into a buffer and sends it into the switch.
    ///
    /// # Errors
    /// [`Error::Full`] if the queue towards the switch is full;
    /// [`Error::Unavailable`] if the port was removed.
    pub fn send_frame(&self, frame: &[u8]) -> Result<()> {
        let mut p = self.alloc();
        p.set_frame(frame);
        self.try_send(p).map_err(|p| {
            let detached = self.is_detached();
            self.recycle(p);
            if detached { Error::Unavailable } else { Error::Full("memory port queue") }
        })
    }

    /// A packet the switch forwarded to this port, if one is waiting.
    pub fn recv(&self) -> Option<Packet> {
        self.shared.to_host.pop()
    }

    /// Waits up to `timeout` for a packet.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Packet> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(p) = self.recv() {
                return Some(p);
            }
            if Instant::now() >= deadline || self.is_detached() {
                return None;
            }
            self.wait(deadline - Instant::now());
        }
    }

    /// Blocks until a packet is waiting or `timeout` passes, without
    /// taking it (for event loops such as a smoltcp host's).
    pub fn wait(&self, timeout: Duration) {
        self.shared.host_signal.wait_unless(|| !self.shared.to_host.is_empty() || self.is_detached(), timeout);
    }

    /// Packets waiting to be received.
    pub fn pending(&self) -> usize {
        self.shared.to_host.len()
    }

    /// Frames smoltcp built that could not be queued (the switch was not
    /// keeping up).
    pub fn host_tx_dropped(&self) -> u64 {
        self.shared.host_tx_dropped.load(Ordering::Relaxed)
    }
}

/// smoltcp receive token: one packet from the switch.
#[derive(Debug)]
pub struct MemoryRxToken<'a> {
    packet: Packet,
    shared: &'a Shared,
}

/// smoltcp transmit token: room for one frame towards the switch.
#[derive(Debug)]
pub struct MemoryTxToken<'a> {
    shared: &'a Shared,
}

impl smoltcp::phy::RxToken for MemoryRxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let r = f(self.packet.data());
        let _ = self.shared.free.push(self.packet);
        r
    }
}

impl smoltcp::phy::TxToken for MemoryTxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut p = self.shared.free.pop().unwrap_or_else(|| Packet::with_capacity(len.max(DEFAULT_BUFFER - HEADROOM)));
        let r = f(p.reset_with_len(len));
        if self.shared.detached.load(Ordering::Acquire) || self.shared.to_switch.push(p).is_err() {
            self.shared.host_tx_dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            self.shared.wakeup.notify();
        }
        r
    }
}

impl smoltcp::phy::Device for MemoryPortHandle {
    type RxToken<'a> = MemoryRxToken<'a>;
    type TxToken<'a> = MemoryTxToken<'a>;

    fn receive(&mut self, _now: smoltcp::time::Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let packet = self.shared.to_host.pop()?;
        Some((MemoryRxToken { packet, shared: &self.shared }, MemoryTxToken { shared: &self.shared }))
    }

    fn transmit(&mut self, _now: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        if self.shared.to_switch.is_full() || self.is_detached() {
            return None;
        }
        Some(MemoryTxToken { shared: &self.shared })
    }

    fn capabilities(&self) -> smoltcp::phy::DeviceCapabilities {
        let mut caps = smoltcp::phy::DeviceCapabilities::default();
        caps.medium = smoltcp::phy::Medium::Ethernet;
        // For Ethernet, smoltcp's MTU counts the 14-byte header.
        caps.max_transmission_unit = self.mtu + crate::wire::ETHERNET_HEADER_LEN;
        caps.max_burst_size = Some(super::BURST);
        caps
    }
}
