//! vhost-user-net ports: a VM's virtio-net device, its virtqueues served by
//! the switch over the vhost-user protocol (QEMU's `-netdev vhost-user`,
//! cloud-hypervisor's `--net vhost_user=true`), as Open vSwitch's
//! `dpdkvhostuser` (the switch listens) and `dpdkvhostuserclient` (the
//! switch connects to a socket the VMM made) ports do.
//!
//! The rust-vmm crates do the protocol (`vhost`, `vhost-user-backend`), the
//! guest memory (`vm-memory`) and the split virtqueues (`virtio-queue`).
//! The port's own thread moves frames between the guest's queues and an
//! in-process queue pair the datapath polls like a memory port's: the
//! guest's transmit queue into the switch, and what the switch forwards
//! into the guest's receive buffers (merged receive buffers when the
//! driver accepts them), woken by the queue's eventfd. A frontend that
//! disconnects (the VM shut down or its VMM restarted) takes the link down;
//! the port waits for (server) or reconnects to (client) the next one. The
//! link comes up when the guest's queues are enabled, not when its VMM
//! connects (as Open vSwitch's vhost ports do): the VMM enables them when
//! the guest's driver starts (`SET_VRING_ENABLE` once protocol features
//! are negotiated; without them a queue is enabled with its kick
//! descriptor). It goes down when the VMM stops a queue
//! (`GET_VRING_BASE`, as it does when the guest's driver resets or the VM
//! reboots) or resets the device, while still connected.
//!
//! What this port does not offer yet: checksum and TSO offloads (the guest
//! computes checksums and segments, as with a plain virtio-net device
//! without those features), multiqueue, live migration.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use vhost::vhost_user::Listener;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackendMut, VhostUserDaemon, VringEpollHandler, VringRwLock, VringT};
use virtio_queue::{QueueT, Reader, Writer};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier};

use super::memory::{MAX_MTU, MemoryPort, MemoryPortHandle};
use super::{DropReason, Port, TxOutcome};
use crate::packet::{Packet, PacketPool};
use crate::{Error, Result};

/// The virtio-net receive queue (frames towards the guest).
const RX_QUEUE: u16 = 0;
/// The virtio-net transmit queue (frames from the guest).
const TX_QUEUE: u16 = 1;
const NUM_QUEUES: usize = 2;
/// The most descriptors a queue may have.
const MAX_QUEUE_SIZE: usize = 1024;
/// The backend's own event ids (the library reserves 0 to NUM_QUEUES).
const EV_RX_READY: u16 = NUM_QUEUES as u16 + 1;
const EV_TX_ROOM: u16 = NUM_QUEUES as u16 + 2;
/// `virtio_net_hdr_v1`, with `num_buffers` at offset 10.
const HDR_LEN_V1: usize = 12;
/// The legacy header without `num_buffers`.
const HDR_LEN_LEGACY: usize = 10;
/// How often a waiting port looks for a frontend or a stop request.
const POLL: Duration = Duration::from_millis(100);

type Mem = GuestMemoryAtomic<GuestMemoryMmap<()>>;
type Vring = VringRwLock<Mem>;
type Backend = Arc<RwLock<NetBackend>>;

/// Who makes the vhost-user socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum VhostUserMode {
    /// The switch listens on the socket and the VMM connects (QEMU's
    /// `-chardev socket,path=P,reconnect=1`; OVS's `dpdkvhostuser`).
    Server,
    /// The VMM listens and the switch connects, again after each
    /// disconnect (QEMU's `-chardev socket,path=P,server=on`; OVS's
    /// `dpdkvhostuserclient`).
    Client,
}

/// How a vhost-user port is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VhostUserConfig {
    /// The vhost-user socket.
    pub socket: PathBuf,
    /// Who makes it.
    pub mode: VhostUserMode,
    /// The guest's MTU: longer frames either way are dropped, counted
    /// `too_big` (default 1500).
    pub mtu: usize,
}

impl VhostUserConfig {
    /// The switch listens on `socket` (made anew; a stale one is removed).
    pub fn server(socket: impl Into<PathBuf>) -> Self {
        VhostUserConfig { socket: socket.into(), mode: VhostUserMode::Server, mtu: 1500 }
    }

    /// The switch connects to `socket`, which the VMM made.
    pub fn client(socket: impl Into<PathBuf>) -> Self {
        VhostUserConfig { socket: socket.into(), mode: VhostUserMode::Client, mtu: 1500 }
    }
}

impl VhostUserConfig {
    /// The configuration a `type=vhostuser` port's options give:
    /// `socket=PATH` (required), `mode=server|client` (default server),
    /// `mtu=N` (default 1500).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a missing socket, an unknown option
    /// or a bad value.
    pub fn from_spec(spec: &crate::port::spec::PortSpec) -> Result<Self> {
        spec.no_options(&["socket", "mode", "mtu"])?;
        let socket: PathBuf = spec
            .option::<String>("socket")?
            .ok_or_else(|| Error::invalid("option", "a vhostuser port needs options:socket=PATH"))?
            .into();
        check_socket_path(&socket)?;
        let mode = match spec.option::<String>("mode")?.as_deref() {
            None | Some("server") => VhostUserMode::Server,
            Some("client") => VhostUserMode::Client,
            Some(m) => return Err(Error::invalid("option", format!("mode={m} is not server or client"))),
        };
        let mtu = spec.option::<usize>("mtu")?.unwrap_or(1500);
        if !(68..=MAX_MTU).contains(&mtu) {
            return Err(Error::invalid("option", format!("mtu={mtu} must be 68 to {MAX_MTU}")));
        }
        Ok(VhostUserConfig { socket, mode, mtu })
    }
}

/// The switch's end of a vhost-user port: the datapath's queue pair, and
/// the thread serving the VMM, stopped when the port is dropped.
#[derive(Debug)]
pub(crate) struct VhostUserPort {
    queues: MemoryPort,
    service: Service,
}

impl VhostUserPort {
    /// Starts serving `config`'s socket with `handle` as the guest's side of
    /// `queues`.
    pub(crate) fn start(
        name: &str,
        queues: MemoryPort,
        mut handle: MemoryPortHandle,
        config: &VhostUserConfig,
    ) -> Result<Self> {
        handle.set_mtu(config.mtu.min(MAX_MTU))?;
        // Down until a frontend is connected.
        handle.set_link_up(false);
        let listener = match config.mode {
            VhostUserMode::Server => {
                if let Some(dir) = config.socket.parent().filter(|d| !d.as_os_str().is_empty())
                    && !dir.is_dir()
                {
                    return Err(Error::NotFound(format!("no directory {} for the vhost-user socket", dir.display())));
                }
                // A stale socket (nobody listening) is replaced; a live one
                // is another port's or another switch's.
                if std::os::unix::net::UnixStream::connect(&config.socket).is_ok() {
                    return Err(Error::Exists(format!(
                        "{} is in use: something listens on it",
                        config.socket.display()
                    )));
                }
                Some(Listener::new(&config.socket, true).map_err(|e| {
                    Error::io("vhost-user socket", std::io::Error::other(format!("{}: {e}", config.socket.display())))
                })?)
            }
            VhostUserMode::Client => None,
        };
        let service = Service::spawn(name, Arc::new(handle), config.clone(), listener)?;
        Ok(VhostUserPort { queues, service })
    }
}

impl Port for VhostUserPort {
    fn kind(&self) -> &'static str {
        "vhostuser"
    }

    fn rx_burst(&mut self, batch: &mut Vec<Packet>, max: usize, pool: &mut PacketPool) -> usize {
        self.queues.rx_burst(batch, max, pool)
    }

    fn tx_burst(&mut self, batch: &mut Vec<Packet>, pool: &mut PacketPool) -> TxOutcome {
        self.queues.tx_burst(batch, pool)
    }

    fn rx_pending(&self) -> bool {
        self.queues.rx_pending()
    }

    fn link_up(&self) -> bool {
        self.queues.link_up()
    }

    fn take_rx_drops(&mut self, count: &mut dyn FnMut(DropReason, u64)) {
        self.queues.take_rx_drops(count);
        let c = &self.service.counters;
        let malformed = c.malformed.swap(0, Ordering::Relaxed);
        if malformed > 0 {
            count(DropReason::Runt, malformed);
        }
        let too_big = c.rx_too_big.swap(0, Ordering::Relaxed);
        if too_big > 0 {
            count(DropReason::TooBig, too_big);
        }
        let gone = c.disconnected.swap(0, Ordering::Relaxed);
        if gone > 0 {
            count(DropReason::LinkDown, gone);
        }
    }
}

impl Drop for VhostUserPort {
    fn drop(&mut self) {
        self.service.stop();
    }
}

/// What the port's thread counts for the datapath to report.
#[derive(Debug, Default)]
struct Counters {
    /// Frames from the guest too short for a header and an Ethernet
    /// header, too long, or unreadable (rx `runt`).
    malformed: Arc<AtomicU64>,
    /// Frames for the guest larger than its receive buffer (tx `too_big`).
    rx_too_big: Arc<AtomicU64>,
    /// Frames held for a full queue when the connection ended (either
    /// way: `link_down`).
    disconnected: Arc<AtomicU64>,
}

/// The port's thread: waits for a frontend, serves it until it goes, and
/// again.
struct Service {
    stop: Arc<AtomicBool>,
    /// Ends the current connection (None while none).
    connection: Arc<Mutex<Option<vhost_user_backend::ShutdownHandle>>>,
    counters: Arc<Counters>,
    join: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").field("stop", &self.stop).finish_non_exhaustive()
    }
}

impl Service {
    fn spawn(
        name: &str,
        handle: Arc<MemoryPortHandle>,
        config: VhostUserConfig,
        listener: Option<Listener>,
    ) -> Result<Service> {
        let stop = Arc::new(AtomicBool::new(false));
        let connection = Arc::new(Mutex::new(None));
        let counters = Arc::new(Counters::default());
        let (s, c, k, n) = (stop.clone(), connection.clone(), counters.clone(), name.to_string());
        let join = std::thread::Builder::new()
            .name(format!("vhost-{name}"))
            .spawn(move || serve(&n, &handle, &config, listener, &s, &c, &k))
            .map_err(|e| Error::io("thread spawn", e))?;
        Ok(Service { stop, connection, counters, join: Some(join) })
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(c) = self.connection.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            c.shutdown();
        }
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

/// Whether `fd` becomes readable within `timeout` (a fresh epoll each
/// time, so a connection that was already waiting is seen). If epoll
/// cannot be had (out of descriptors), waits `timeout` and says no.
fn readable_within(fd: std::os::fd::RawFd, timeout: Duration) -> bool {
    let Ok(mut poll) = mio::Poll::new() else {
        std::thread::sleep(timeout);
        return false;
    };
    let mut events = mio::Events::with_capacity(1);
    if poll.registry().register(&mut mio::unix::SourceFd(&fd), mio::Token(0), mio::Interest::READABLE).is_err() {
        std::thread::sleep(timeout);
        return false;
    }
    poll.poll(&mut events, Some(timeout)).is_ok() && !events.is_empty()
}

/// A device and the daemon serving it, ready for a frontend. (The daemon
/// holds the epoll handlers the device reaches through its `Weak`.)
type Device = (Backend, VhostUserDaemon<Backend>);

fn new_device(
    name: &str,
    handle: &Arc<MemoryPortHandle>,
    counters: &Counters,
    connection: &Arc<Mutex<Option<vhost_user_backend::ShutdownHandle>>>,
) -> Option<Device> {
    let backend = NetBackend::new(handle.clone(), counters, connection.clone()).ok()?;
    let backend: Backend = Arc::new(RwLock::new(backend));
    let daemon = VhostUserDaemon::new(name.to_string(), backend.clone(), Mem::new(GuestMemoryMmap::new())).ok()?;
    if let Some(h) = daemon.get_epoll_handlers().first() {
        write(&backend).epoll = Arc::downgrade(h);
    }
    Some((backend, daemon))
}

/// Ends a device's worker threads and drops its daemon.
fn retire((backend, daemon): Device) {
    write(&backend).exit_workers();
    drop(daemon);
}

/// The service loop: one connection at a time, each with a fresh daemon
/// (a vhost-user daemon serves one frontend: the next one's SET_OWNER
/// needs a new one). A daemon whose connection could not start is kept
/// for the next try: each one made costs descriptors (and the library
/// keeps one of them for good).
fn serve(
    name: &str,
    handle: &Arc<MemoryPortHandle>,
    config: &VhostUserConfig,
    mut listener: Option<Listener>,
    stop: &AtomicBool,
    connection: &Arc<Mutex<Option<vhost_user_backend::ShutdownHandle>>>,
    counters: &Counters,
) {
    let mut ready: Option<Device> = None;
    while !stop.load(Ordering::Acquire) {
        match &listener {
            Some(l) if !readable_within(l.as_raw_fd(), POLL) => continue,
            None if !config.socket.exists() => {
                std::thread::sleep(POLL);
                continue;
            }
            _ => {}
        }
        if ready.is_none() {
            ready = new_device(name, handle, counters, connection);
        }
        let Some((backend, daemon)) = ready.as_mut() else {
            std::thread::sleep(POLL);
            continue;
        };
        let started = match listener.as_mut() {
            Some(l) => daemon.start(l),
            None => daemon.start_client(&config.socket.to_string_lossy()),
        };
        if started.is_err() {
            std::thread::sleep(POLL);
            continue;
        }
        write(backend).listen(EV_RX_READY, true);
        *connection.lock().unwrap_or_else(|e| e.into_inner()) = daemon.shutdown_handle();
        if stop.load(Ordering::Acquire) {
            daemon.request_shutdown();
        }
        // The link follows the guest's driver (NetBackend's handle_event
        // and stop_vring), and goes down with the connection: once the
        // device's workers are gone, so none of them takes it up again.
        let _ = daemon.wait();
        *connection.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if let Some(device) = ready.take() {
            retire(device);
        }
        handle.set_link_up(false);
    }
    if let Some(device) = ready.take() {
        retire(device);
    }
    // A server's socket goes with the port.
    if listener.take().is_some() && config.mode == VhostUserMode::Server {
        let _ = std::fs::remove_file(&config.socket);
    }
}

fn write(b: &Backend) -> std::sync::RwLockWriteGuard<'_, NetBackend> {
    b.write().unwrap_or_else(|e| e.into_inner())
}

/// One connection's virtio-net device.
struct NetBackend {
    /// The guest's side of the switch's queue pair.
    handle: Arc<MemoryPortHandle>,
    mem: Mem,
    event_idx: bool,
    /// Merged receive buffers were negotiated: a frame may span chains.
    mrg_rxbuf: bool,
    hdr_len: usize,
    /// A frame for the guest that found no room in its receive queue.
    rx_stash: Option<Packet>,
    /// A frame from the guest that found the switch's queue full.
    tx_stash: Option<Packet>,
    /// Which of the backend's own events are registered.
    rx_listening: bool,
    tx_listening: bool,
    epoll: Weak<VringEpollHandler<Backend>>,
    exit: (EventConsumer, EventNotifier),
    malformed: Arc<AtomicU64>,
    /// Frames for the guest larger than its (single) receive buffer.
    rx_too_big: Arc<AtomicU64>,
    /// Frames still stashed when the device goes with its connection.
    disconnected: Arc<AtomicU64>,
    /// Ends the connection when the device cannot go on (a write into
    /// guest memory failed): the frontend reconnects to a fresh device.
    connection: Arc<Mutex<Option<vhost_user_backend::ShutdownHandle>>>,
    /// A queue of the guest's was enabled (or kicked while enabled): the
    /// link is up.
    driver_up: bool,
}

/// A device ends with its connection: what it still held for a full
/// queue is dropped, and counted.
impl Drop for NetBackend {
    fn drop(&mut self) {
        let held = u64::from(self.rx_stash.take().is_some()) + u64::from(self.tx_stash.take().is_some());
        self.disconnected.fetch_add(held, Ordering::Relaxed);
    }
}

impl NetBackend {
    /// The guest's driver stopped its queues: the link is down until one
    /// is enabled (or kicked) again.
    fn driver_stopped(&mut self) {
        if std::mem::take(&mut self.driver_up) {
            self.handle.set_link_up(false);
        }
    }

    fn new(
        handle: Arc<MemoryPortHandle>,
        counters: &Counters,
        connection: Arc<Mutex<Option<vhost_user_backend::ShutdownHandle>>>,
    ) -> std::io::Result<Self> {
        Ok(NetBackend {
            handle,
            mem: Mem::new(GuestMemoryMmap::new()),
            event_idx: false,
            mrg_rxbuf: false,
            hdr_len: HDR_LEN_V1,
            rx_stash: None,
            tx_stash: None,
            rx_listening: false,
            tx_listening: false,
            epoll: Weak::new(),
            exit: new_event_consumer_and_notifier(EventFlag::NONBLOCK)?,
            malformed: counters.malformed.clone(),
            rx_too_big: counters.rx_too_big.clone(),
            disconnected: counters.disconnected.clone(),
            connection,
            driver_up: false,
        })
    }

    /// Makes the worker thread's loop end.
    fn exit_workers(&self) {
        let _ = self.exit.1.notify();
    }

    /// Registers (or not) one of the backend's own descriptors: the
    /// switch's queue towards the guest having frames (`EV_RX_READY`), or
    /// its queue from the guest having room (`EV_TX_ROOM`). Both are level
    /// triggered: one is listened to only while it can be acted on.
    fn listen(&mut self, event: u16, on: bool) {
        let (listening, fd) = match event {
            EV_RX_READY => (&mut self.rx_listening, self.handle.rx_fd().map(|f| f.as_raw_fd())),
            _ => (&mut self.tx_listening, self.handle.tx_fd().map(|f| f.as_raw_fd())),
        };
        if *listening == on {
            return;
        }
        let (Some(epoll), Ok(fd)) = (self.epoll.upgrade(), fd) else { return };
        let r = if on {
            epoll.register_listener(fd, EventSet::IN, u64::from(event))
        } else {
            epoll.unregister_listener(fd, EventSet::IN, u64::from(event))
        };
        if r.is_ok() {
            *listening = on;
        }
    }

    /// Moves frames from the switch into the guest's receive buffers until
    /// either runs out.
    fn process_rx(&mut self, vring: &Vring) -> std::io::Result<()> {
        let mem = self.mem.memory();
        let mut state = vring.get_mut();
        if !state.is_enabled() {
            // A disabled ring takes nothing; its enabling kick restarts us.
            self.listen(EV_RX_READY, false);
            return Ok(());
        }
        let mut used = false;
        let mut result = Ok(());
        'frames: while let Some(p) = self.rx_stash.take().or_else(|| self.handle.recv()) {
            let need = self.hdr_len + p.len();
            // Where a rollback goes back to: never before a chain already
            // put in the used ring.
            let mut start = state.get_queue().next_avail();
            let mut chains: Vec<(u16, Writer<'_>)> = Vec::new();
            let mut room = 0;
            while room < need {
                let Some(chain) = state.get_queue_mut().pop_descriptor_chain(mem.clone()) else { break };
                let head = chain.head_index();
                match Writer::new(&*mem, chain) {
                    Ok(w) if w.available_bytes() > 0 => {
                        room += w.available_bytes();
                        chains.push((head, w));
                    }
                    // A chain outside the guest's memory, or with nothing
                    // writable, is given back unused and not looked at
                    // again.
                    _ => {
                        let _ = state.add_used(head, 0);
                        used = true;
                        if chains.is_empty() {
                            start = state.get_queue().next_avail();
                        }
                    }
                }
                if !self.mrg_rxbuf && !chains.is_empty() {
                    break;
                }
            }
            if room < need {
                if !self.mrg_rxbuf && !chains.is_empty() {
                    // One buffer, too small for the frame: the guest's
                    // own limit. The frame is dropped, counted; the buffer
                    // goes back unused.
                    for (head, _) in chains {
                        let _ = state.add_used(head, 0);
                    }
                    used = true;
                    self.rx_too_big.fetch_add(1, Ordering::Relaxed);
                    self.handle.recycle(p);
                    continue;
                }
                // Out of buffers: put back the good ones taken for this
                // frame and wait for the guest to post more. With
                // EVENT_IDX the guest is asked to kick at its next buffer
                // (avail_event set at what it has posted so far); if it
                // posted some meanwhile, look again.
                drop(chains);
                state.get_queue_mut().set_next_avail(start);
                self.rx_stash = Some(p);
                if self.event_idx {
                    let posted = state.get_queue().avail_idx(&*mem, Ordering::Acquire).map_or(start, |w| w.0);
                    state.get_queue_mut().set_next_avail(posted);
                    let more = state.enable_notification().unwrap_or(false);
                    state.get_queue_mut().set_next_avail(start);
                    if more {
                        continue 'frames;
                    }
                }
                self.listen(EV_RX_READY, false);
                break;
            }
            let mut header = [0u8; HDR_LEN_V1];
            header[10..12].copy_from_slice(&(chains.len() as u16).to_le_bytes());
            let mut parts = [&header[..self.hdr_len], p.data()];
            for (head, mut w) in chains {
                let mut written = 0;
                for part in parts.iter_mut() {
                    let n = part.len().min(w.available_bytes());
                    if n == 0 {
                        continue;
                    }
                    if let Err(e) = w.write_all(&part[..n]) {
                        result = Err(e);
                    }
                    *part = &part[n..];
                    written += n;
                }
                // Every chain taken is used, written or not: none is lost.
                if let Err(e) = state.add_used(head, written as u32) {
                    result = Err(std::io::Error::other(e));
                }
            }
            used = true;
            self.handle.recycle(p);
            if result.is_err() {
                break;
            }
        }
        if used && state.needs_notification().unwrap_or(true) {
            state.signal_used_queue()?;
        }
        result
    }

    /// Moves frames the guest sent into the switch until either runs out.
    fn process_tx(&mut self, vring: &Vring) -> std::io::Result<()> {
        if !vring.get_ref().is_enabled() {
            self.listen(EV_TX_ROOM, false);
            return Ok(());
        }
        if let Some(p) = self.tx_stash.take()
            && let Err(p) = self.handle.try_send(p)
        {
            self.tx_stash = Some(p);
            self.listen(EV_TX_ROOM, true);
            return Ok(());
        }
        self.listen(EV_TX_ROOM, false);
        let mem = self.mem.memory();
        let mut state = vring.get_mut();
        let mut used = false;
        'queue: loop {
            if self.event_idx {
                let _ = state.disable_notification();
            }
            while let Some(chain) = state.get_queue_mut().pop_descriptor_chain(mem.clone()) {
                let head = chain.head_index();
                let frame = Reader::new(&*mem, chain).ok().and_then(|mut r| {
                    let total = r.available_bytes();
                    let len = total.checked_sub(self.hdr_len)?;
                    if !(crate::wire::ETHERNET_HEADER_LEN..=u16::MAX as usize).contains(&len) {
                        return None;
                    }
                    let mut header = [0u8; HDR_LEN_V1];
                    r.read_exact(&mut header[..self.hdr_len]).ok()?;
                    let mut p = self.handle.alloc();
                    r.read_exact(p.reset_with_len(len)).ok()?;
                    Some(p)
                });
                state.add_used(head, 0).map_err(std::io::Error::other)?;
                used = true;
                let Some(p) = frame else {
                    self.malformed.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                if let Err(p) = self.handle.try_send(p) {
                    self.tx_stash = Some(p);
                    self.listen(EV_TX_ROOM, true);
                    break 'queue;
                }
            }
            if !self.event_idx || !state.enable_notification().unwrap_or(false) {
                break;
            }
        }
        if used && state.needs_notification().unwrap_or(true) {
            state.signal_used_queue()?;
        }
        Ok(())
    }
}

impl VhostUserBackendMut for NetBackend {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        use virtio_bindings::{virtio_config, virtio_net, virtio_ring};
        1 << virtio_config::VIRTIO_F_VERSION_1
            | 1 << virtio_net::VIRTIO_NET_F_MRG_RXBUF
            | 1 << virtio_ring::VIRTIO_RING_F_EVENT_IDX
            | vhost::vhost_user::message::VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn acked_features(&mut self, features: u64) {
        use virtio_bindings::{virtio_config, virtio_net};
        self.mrg_rxbuf = features & (1 << virtio_net::VIRTIO_NET_F_MRG_RXBUF) != 0;
        let v1 = features & (1 << virtio_config::VIRTIO_F_VERSION_1) != 0;
        self.hdr_len = if v1 || self.mrg_rxbuf { HDR_LEN_V1 } else { HDR_LEN_LEGACY };
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::REPLY_ACK | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }

    fn set_event_idx(&mut self, enabled: bool) {
        self.event_idx = enabled;
    }

    // The VMM stops a queue (GET_VRING_BASE) when the guest's driver
    // resets or the VM reboots, on the same connection: the link goes
    // down until a queue is enabled again.
    fn stop_vring(&mut self, _queue: u32) -> std::io::Result<()> {
        self.driver_stopped();
        Ok(())
    }

    fn reset_device(&mut self) {
        self.driver_stopped();
    }

    fn update_memory(&mut self, mem: Mem) -> std::io::Result<()> {
        self.mem = mem;
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        Some((self.exit.0.try_clone().ok()?, self.exit.1.try_clone().ok()?))
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Vring],
        _thread: usize,
    ) -> std::io::Result<()> {
        if !self.driver_up
            && matches!(device_event, RX_QUEUE | TX_QUEUE)
            && vrings[device_event as usize].get_ref().is_enabled()
            && vrings[device_event as usize].get_ref().get_queue().ready()
        {
            self.driver_up = true;
            self.handle.set_link_up(true);
        }
        let r = match device_event {
            // The guest gave receive buffers: frames waiting can go.
            RX_QUEUE => {
                self.listen(EV_RX_READY, true);
                self.process_rx(&vrings[RX_QUEUE as usize])
            }
            EV_RX_READY => self.process_rx(&vrings[RX_QUEUE as usize]),
            TX_QUEUE | EV_TX_ROOM => self.process_tx(&vrings[TX_QUEUE as usize]),
            _ => Ok(()),
        };
        // An error returned here would end the worker thread and leave the
        // port deaf with its link up: end the connection instead, so the
        // frontend reconnects to a fresh device.
        if r.is_err()
            && let Some(c) = self.connection.lock().unwrap_or_else(|e| e.into_inner()).as_ref()
        {
            c.shutdown();
        }
        Ok(())
    }
}

/// Whether `path` can be a vhost-user socket path (for checks before a
/// port is made).
pub(crate) fn check_socket_path(path: &Path) -> Result<()> {
    if path.as_os_str().is_empty() || path.as_os_str().len() > 107 {
        return Err(Error::invalid("vhost-user socket", format!("'{}' must be 1 to 107 bytes", path.display())));
    }
    Ok(())
}
