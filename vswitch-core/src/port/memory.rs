//! In-process ports: lock-free queues between the datapath and a runtime.
//!
//! [`MemoryPortHandle`] is the runtime's end (a VM's virtual NIC, a
//! simulated host, a smoltcp stack through its [`smoltcp::phy::Device`]
//! implementation); the switch's end is a [`Port`] the datapath owns. Each
//! direction is a bounded single-producer single-consumer ring (`rtrb`)
//! moved in chunks, so a burst costs one atomic per side; buffers come back
//! through a free queue so that steady traffic allocates nothing.
//!
//! Back-pressure: a full queue towards the switch makes
//! [`MemoryPortHandle::send_frame`] fail (the runtime decides); a full queue
//! towards the runtime drops the packet in the datapath, counted as
//! [`DropReason::TxQueueFull`].

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crossbeam::queue::ArrayQueue;
use rtrb::{Consumer, Producer, RingBuffer};

use super::{DropReason, Port, PortNo, TxOutcome};
use crate::datapath::Wakeup;
use crate::packet::{DEFAULT_BUFFER, HEADROOM, Packet, PacketPool, SpareBuffers};
use crate::sys::eventfd::EventFd;
use crate::{Error, Result};

/// Default depth of each queue of a memory port.
pub const DEFAULT_QUEUE_LEN: usize = 1024;

/// A memory port's MTU until [`MemoryPortHandle::set_mtu`] changes it.
pub const DEFAULT_MTU: usize = 1500;

/// The largest MTU a memory port takes (a frame of 64 KiB).
pub const MAX_MTU: usize = 65535 - MTU_OVERHEAD;

/// What a frame adds to its MTU: an Ethernet header and one VLAN tag.
const MTU_OVERHEAD: usize = crate::wire::ETHERNET_HEADER_LEN + 4;

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

/// One direction's readiness for a runtime that waits on a descriptor
/// (epoll, mio, tokio) rather than in [`MemoryPortHandle::wait`]: an
/// eventfd, made when first asked for, readable while the condition holds
/// (frames wait; the queue has room).
///
/// The producer writes the eventfd only when the consumer has armed it,
/// that is, found nothing and cleared it; both sides fence before they look
/// at the other's state, as in [`Wakeup`], so a producer on a busy port
/// pays one load and no system call, and no signal is lost. The descriptor
/// may read readable when the condition no longer holds (a spurious wake),
/// never the other way round.
#[derive(Debug, Default)]
struct Readiness {
    fd: OnceLock<Arc<EventFd>>,
    armed: AtomicBool,
}

impl Readiness {
    /// Producer side, after queueing (or making room).
    #[inline]
    fn notify(&self) {
        // The fence comes first: a consumer making the descriptor (set,
        // fence, look at the queue) and this producer (queue, fence, look
        // for the descriptor) then always see each other.
        fence(Ordering::SeqCst);
        let Some(fd) = self.fd.get() else { return };
        if self.armed.load(Ordering::Relaxed) && self.armed.swap(false, Ordering::AcqRel) {
            fd.signal();
        }
    }

    /// The descriptor, made on first use with the condition `ready` reads.
    fn fd(&self, ready: impl Fn() -> bool) -> Result<&Arc<EventFd>> {
        if self.fd.get().is_none() {
            let fd = EventFd::new().map_err(|e| Error::io("eventfd", e))?;
            // Another thread may have made one meanwhile: theirs stands.
            let _ = self.fd.set(Arc::new(fd));
            self.arm(ready);
        }
        Ok(self.fd.get().expect("made above"))
    }

    /// Consumer side, having found the condition false: the descriptor
    /// reads unreadable until the producer makes it true.
    #[inline]
    fn arm(&self, ready: impl Fn() -> bool) {
        let Some(fd) = self.fd.get() else { return };
        // Cleared every time, armed or not: a producer that disarmed it
        // may signal after this consumer re-armed, and the descriptor must
        // not stay readable with nothing waiting.
        fd.clear();
        self.armed.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if ready() {
            self.armed.store(false, Ordering::Relaxed);
            fd.signal();
        }
    }

    /// Readable for good: the port is gone.
    fn close(&self) {
        self.armed.store(false, Ordering::Relaxed);
        if let Some(fd) = self.fd.get() {
            fd.signal();
        }
    }
}

/// State both ends share.
#[derive(Debug)]
struct Shared {
    link_up: AtomicBool,
    detached: AtomicBool,
    /// The runtime's handle is gone: nobody would read what is sent.
    closed: AtomicBool,
    /// Longest frame either way, headers and one VLAN tag included
    /// (frames with GSO metadata excepted: they are cut to size).
    max_frame: AtomicU32,
    host_signal: HostSignal,
    wakeup: Arc<Wakeup>,
    /// Buffers the runtime handed back, for its own sends.
    free: ArrayQueue<Packet>,
    /// Switch-wide overflow for returned buffers, drawn on by the datapath.
    spare: SpareBuffers,
    host_tx_dropped: AtomicU64,
    /// Frames wait for the runtime.
    host_ready: Readiness,
    /// The queue towards the switch has room.
    switch_room: Readiness,
}

impl Shared {
    fn recycle(&self, p: Packet) {
        if let Err(p) = self.free.push(p) {
            let _ = self.spare.push(p);
        }
    }

    fn alloc(&self, len: usize) -> Packet {
        self.free
            .pop()
            .or_else(|| self.spare.pop())
            .unwrap_or_else(|| Packet::with_capacity(len.max(DEFAULT_BUFFER - HEADROOM)))
    }
}

/// The switch's end of a memory port: the consuming end of the ring
/// towards the switch and the producing end of the ring towards the host,
/// owned by the datapath outright (no locks, one atomic per burst).
#[derive(Debug)]
pub(crate) struct MemoryPort {
    rx: Consumer<Packet>,
    tx: Producer<Packet>,
    shared: Arc<Shared>,
    /// Frames from the runtime above the MTU, not yet reported.
    rx_too_big: u64,
}

/// A runtime's end of a memory port: send frames into the switch and
/// receive what the switch forwards to this port.
///
/// It implements [`smoltcp::phy::Device`] (feature `smoltcp`, on by
/// default), so a smoltcp `Interface` can use it directly as its NIC. It is `Sync`: one thread may send while another
/// receives (each direction's ring end sits behind its own, normally
/// uncontended, lock). The `_burst` methods move many packets per lock and
/// per wake-up and are the fast way in and out.
#[derive(Debug)]
pub struct MemoryPortHandle {
    tx: Mutex<Producer<Packet>>,
    rx: Mutex<Consumer<Packet>>,
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
    spare: SpareBuffers,
) -> (MemoryPort, MemoryPortHandle) {
    let (to_switch_tx, to_switch_rx) = RingBuffer::new(queue_len);
    let (to_host_tx, to_host_rx) = RingBuffer::new(queue_len);
    let shared = Arc::new(Shared {
        link_up: AtomicBool::new(true),
        detached: AtomicBool::new(false),
        closed: AtomicBool::new(false),
        max_frame: AtomicU32::new((DEFAULT_MTU + MTU_OVERHEAD) as u32),
        host_signal: HostSignal::default(),
        wakeup,
        free: ArrayQueue::new(queue_len),
        spare,
        host_tx_dropped: AtomicU64::new(0),
        host_ready: Readiness::default(),
        switch_room: Readiness::default(),
    });
    let handle = MemoryPortHandle {
        tx: Mutex::new(to_switch_tx),
        rx: Mutex::new(to_host_rx),
        shared: shared.clone(),
        name: name.to_string(),
        port_no,
        mtu: 1500,
    };
    (MemoryPort { rx: to_switch_rx, tx: to_host_tx, shared, rx_too_big: 0 }, handle)
}

impl Port for MemoryPort {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn rx_burst(&mut self, batch: &mut Vec<Packet>, max: usize, _pool: &mut PacketPool) -> usize {
        let n = self.rx.slots().min(max);
        if n == 0 {
            return 0;
        }
        let max = self.shared.max_frame.load(Ordering::Relaxed) as usize;
        let start = batch.len();
        match self.rx.read_chunk(n) {
            Ok(chunk) => {
                batch.extend(chunk);
                self.shared.switch_room.notify();
            }
            Err(_) => return 0,
        }
        // Frames above the MTU are refused here, counted `too_big`.
        let fits = |p: &Packet| p.len() <= max || p.is_multi_segment();
        if !batch[start..].iter().all(fits) {
            let kept = keep_in_order(batch, start, fits);
            for p in batch.drain(kept..) {
                self.shared.recycle(p);
                self.rx_too_big += 1;
            }
        }
        batch.len() - start
    }

    fn take_rx_drops(&mut self, count: &mut dyn FnMut(DropReason, u64)) {
        if self.rx_too_big > 0 {
            count(DropReason::TooBig, std::mem::take(&mut self.rx_too_big));
        }
    }

    fn tx_burst(&mut self, batch: &mut Vec<Packet>, pool: &mut PacketPool) -> TxOutcome {
        let max = self.shared.max_frame.load(Ordering::Relaxed) as usize;
        if batch.iter().any(|p| p.len() > max) {
            // Above the runtime's MTU: counted `too_big`, the rest sent.
            let kept = keep_in_order(batch, 0, |p| p.len() <= max);
            let dropped = batch.len() - kept;
            batch.drain(kept..).for_each(|p| pool.put(p));
            return self.tx_burst(batch, pool).with_drops(dropped, DropReason::TooBig);
        }
        let mut out = TxOutcome::default();
        let n = batch.len().min(self.tx.slots());
        if n > 0 {
            out.sent_bytes = batch[..n].iter().map(|p| p.len() as u64).sum();
            out.sent = match self.tx.write_chunk_uninit(n) {
                Ok(chunk) => chunk.fill_from_iter(batch.drain(..n)),
                Err(_) => 0,
            };
            self.shared.host_signal.notify();
            self.shared.host_ready.notify();
        }
        let full = batch.len();
        batch.drain(..).for_each(|p| pool.put(p));
        out.with_drops(full, DropReason::TxQueueFull)
    }

    fn rx_pending(&self) -> bool {
        !self.rx.is_empty()
    }

    fn link_up(&self) -> bool {
        self.shared.link_up.load(Ordering::Relaxed) && !self.shared.closed.load(Ordering::Relaxed)
    }
}

impl Drop for MemoryPort {
    fn drop(&mut self) {
        self.shared.detached.store(true, Ordering::Release);
        self.shared.host_signal.notify();
        self.shared.host_ready.close();
        self.shared.switch_room.close();
    }
}

/// Moves the packets of `batch[start..]` that `keep` accepts to the front
/// of that range, in their order; returns where the rest begin.
fn keep_in_order(batch: &mut [Packet], start: usize, keep: impl Fn(&Packet) -> bool) -> usize {
    let mut kept = start;
    for i in start..batch.len() {
        if keep(&batch[i]) {
            batch.swap(kept, i);
            kept += 1;
        }
    }
    kept
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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

    /// Sets the port's MTU (default [`DEFAULT_MTU`], at most [`MAX_MTU`]):
    /// the longest frame either way is the MTU plus an Ethernet header and
    /// one VLAN tag. Longer frames the runtime sends are dropped by the
    /// switch and counted `too_big` on the port's receive side; longer
    /// frames forwarded to the port are dropped and counted `too_big` on
    /// its transmit side (frames with GSO metadata are cut to size, not
    /// dropped). smoltcp is told the same MTU.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an MTU below 68 (IPv4's minimum) or
    /// above [`MAX_MTU`].
    pub fn set_mtu(&mut self, mtu: usize) -> Result<()> {
        if !(68..=MAX_MTU).contains(&mtu) {
            return Err(Error::invalid("mtu", format!("{mtu} must be 68 to {MAX_MTU}")));
        }
        self.mtu = mtu;
        self.shared.max_frame.store((mtu + MTU_OVERHEAD) as u32, Ordering::Relaxed);
        Ok(())
    }

    /// The port's MTU.
    pub fn mtu(&self) -> usize {
        self.mtu
    }

    /// Lets go of the runtime's end. The port stays on its bridge (it is
    /// the switch's: named in its configuration, its flows and its
    /// counters; [`Switch::del_port`](crate::Switch::del_port) removes it),
    /// and from now on reads link down: what the switch would send it is
    /// dropped, counted `link_down`, rather than queued for nobody.
    /// Dropping the handle does the same.
    pub fn close(self) {
        drop(self);
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
        self.shared.alloc(0)
    }

    /// Hands a received packet's buffer back for reuse (by this port's
    /// sends, or the switch's flood copies).
    pub fn recycle(&self, p: Packet) {
        self.shared.recycle(p);
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
        let pushed = lock(&self.tx).push(p);
        if let Err(rtrb::PushError::Full(p)) = pushed {
            self.arm_tx();
            return Err(p);
        }
        self.shared.wakeup.notify();
        Ok(())
    }

    /// Sends as many of `batch`'s packets as the queue has room for, from
    /// the front, removing them from `batch`; returns how many. One lock
    /// and one wake-up for the whole burst.
    pub fn send_burst(&self, batch: &mut Vec<Packet>) -> usize {
        if self.is_detached() || batch.is_empty() {
            return 0;
        }
        let mut tx = lock(&self.tx);
        let n = batch.len().min(tx.slots());
        let sent = match tx.write_chunk_uninit(n) {
            Ok(chunk) => chunk.fill_from_iter(batch.drain(..n)),
            Err(_) => 0,
        };
        drop(tx);
        if sent > 0 {
            self.shared.wakeup.notify();
        }
        if !batch.is_empty() {
            self.arm_tx();
        }
        sent
    }

    /// Copies `frame` into a buffer and sends it into the switch.
    ///
    /// # Errors
    /// [`Error::Full`] if the queue towards the switch is full;
    /// [`Error::Unavailable`] if the port was removed.
    pub fn send_frame(&self, frame: &[u8]) -> Result<()> {
        let mut p = self.shared.alloc(frame.len());
        p.set_frame(frame);
        self.try_send(p).map_err(|p| {
            let detached = self.is_detached();
            self.recycle(p);
            if detached { Error::Unavailable } else { Error::Full("memory port queue") }
        })
    }

    /// A packet the switch forwarded to this port, if one is waiting.
    pub fn recv(&self) -> Option<Packet> {
        let p = lock(&self.rx).pop().ok();
        if p.is_none() {
            self.arm_rx();
        }
        p
    }

    /// Moves up to `max` waiting packets into `out`; returns how many.
    pub fn recv_burst(&self, out: &mut Vec<Packet>, max: usize) -> usize {
        let mut rx = lock(&self.rx);
        let n = rx.slots().min(max);
        match rx.read_chunk(n) {
            Ok(chunk) if n > 0 => {
                out.extend(chunk);
                n
            }
            _ => {
                drop(rx);
                if max > 0 {
                    self.arm_rx();
                }
                0
            }
        }
    }

    /// A descriptor that is readable while frames wait to be received
    /// (and once the port is removed), for a runtime's epoll, mio or
    /// tokio loop; with the `tokio` feature
    /// [`AsyncMemoryPort`](crate::asyncio::AsyncMemoryPort) does the
    /// waiting. It is an eventfd made on the first call (a port nobody
    /// waits on holds no descriptor) and owned by the port: do not read
    /// or close it. It can read readable with nothing waiting, so a
    /// reader always takes what it finds with [`recv`](Self::recv) or
    /// [`recv_burst`](Self::recv_burst); a receive that finds nothing
    /// makes it unreadable again. The datapath writes it only when a
    /// receive found nothing: a busy port costs no system call.
    ///
    /// # Errors
    /// [`Error::Io`] if the eventfd cannot be made.
    pub fn rx_fd(&self) -> Result<BorrowedFd<'_>> {
        Ok(self.rx_eventfd()?.as_fd())
    }

    pub(crate) fn rx_eventfd(&self) -> Result<&Arc<EventFd>> {
        self.shared.host_ready.fd(|| self.pending() > 0 || self.is_detached())
    }

    pub(crate) fn tx_eventfd(&self) -> Result<&Arc<EventFd>> {
        self.shared.switch_room.fd(|| self.has_room() || self.is_detached())
    }

    /// A descriptor that is readable while the queue towards the switch
    /// has room (and once the port is removed): the send side of
    /// [`rx_fd`](Self::rx_fd), which a send that finds the queue full
    /// makes unreadable.
    ///
    /// # Errors
    /// [`Error::Io`] if the eventfd cannot be made.
    pub fn tx_fd(&self) -> Result<BorrowedFd<'_>> {
        Ok(self.tx_eventfd()?.as_fd())
    }

    /// Nothing waits: `rx_fd` reads unreadable until something does.
    #[inline]
    pub(crate) fn arm_rx(&self) {
        self.shared.host_ready.arm(|| self.pending() > 0 || self.is_detached());
    }

    /// The queue is full: `tx_fd` reads unreadable until it has room.
    #[inline]
    fn arm_tx(&self) {
        self.shared.switch_room.arm(|| self.has_room() || self.is_detached());
    }

    fn has_room(&self) -> bool {
        !lock(&self.tx).is_full()
    }

    /// Waits up to `timeout` for a packet.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Packet> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(p) = self.recv() {
                return Some(p);
            }
            let now = Instant::now();
            if now >= deadline || self.is_detached() {
                return None;
            }
            self.wait(deadline - now);
        }
    }

    /// Blocks until a packet is waiting or `timeout` passes, without
    /// taking it (for event loops such as a smoltcp host's).
    pub fn wait(&self, timeout: Duration) {
        self.shared.host_signal.wait_unless(|| self.pending() > 0 || self.is_detached(), timeout);
    }

    /// Packets waiting to be received.
    pub fn pending(&self) -> usize {
        lock(&self.rx).slots()
    }

    /// Frames smoltcp built that could not be queued (the switch was not
    /// keeping up, or the port was removed). Frames sent with the other
    /// calls are handed back instead, and counted by the caller.
    pub fn host_tx_dropped(&self) -> u64 {
        self.shared.host_tx_dropped.load(Ordering::Relaxed)
    }
}

impl Drop for MemoryPortHandle {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Relaxed);
        // A datapath asleep with frames queued from this handle still
        // takes them; it learns of the link at its next look.
        self.shared.wakeup.notify();
    }
}

#[cfg(feature = "smoltcp")]
/// smoltcp receive token: one packet from the switch.
#[derive(Debug)]
pub struct MemoryRxToken<'a> {
    packet: Packet,
    handle: &'a MemoryPortHandle,
}

#[cfg(feature = "smoltcp")]
/// smoltcp transmit token: room for one frame towards the switch.
#[derive(Debug)]
pub struct MemoryTxToken<'a> {
    handle: &'a MemoryPortHandle,
}

#[cfg(feature = "smoltcp")]
impl smoltcp::phy::RxToken for MemoryRxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let r = f(self.packet.data());
        self.handle.recycle(self.packet);
        r
    }
}

#[cfg(feature = "smoltcp")]
impl smoltcp::phy::TxToken for MemoryTxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut p = self.handle.shared.alloc(len);
        let r = f(p.reset_with_len(len));
        if let Err(p) = self.handle.try_send(p) {
            self.handle.shared.host_tx_dropped.fetch_add(1, Ordering::Relaxed);
            self.handle.recycle(p);
        }
        r
    }
}

#[cfg(feature = "smoltcp")]
impl smoltcp::phy::Device for MemoryPortHandle {
    type RxToken<'a> = MemoryRxToken<'a>;
    type TxToken<'a> = MemoryTxToken<'a>;

    fn receive(&mut self, _now: smoltcp::time::Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let packet = self.recv()?;
        Some((MemoryRxToken { packet, handle: self }, MemoryTxToken { handle: self }))
    }

    fn transmit(&mut self, _now: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        if self.is_detached() || lock(&self.tx).is_full() {
            return None;
        }
        Some(MemoryTxToken { handle: self })
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
