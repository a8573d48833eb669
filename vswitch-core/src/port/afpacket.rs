//! AF_PACKET ports: a kernel network interface on the bridge through a
//! packet socket with a receive ring (see `sys::packet_ring`): by default
//! a TPACKET_V2 ring of frames, each handed over as it arrives.
//!
//! * The switch never re-reads its own transmissions
//!   (`PACKET_IGNORE_OUTGOING`), transmits bypass the qdisc
//!   (`PACKET_QDISC_BYPASS`), and the interface is made promiscuous for as
//!   long as the socket lives (a membership the kernel drops on close).
//! * VLAN tags the kernel moved into metadata are put back into the frame.
//! * GSO and checksum offload: veth hands over 64 KiB TCP super-frames
//!   with the checksum left to do. Rather than turning the offloads off
//!   (which would change the interface and cost every flow its TSO), the
//!   port reads each frame's virtio-net header (`PACKET_VNET_HDR`) and
//!   passes it on: between kernel ports a GSO frame crosses the switch
//!   whole and the kernel segments it on the far side. For a port that
//!   cannot take offload metadata (an in-process or AF_XDP port) the
//!   datapath segments TCP GSO frames and completes checksums in software;
//!   only a GSO frame it cannot segment (UDP GSO, IPv6 extension headers)
//!   is dropped, counted as `too_big`.
//! * Attach hygiene: an interface enslaved to a kernel bridge, or attached
//!   by another running switch (a lock file per interface), is refused.
//!   Nothing about the interface is changed, so detaching restores it.
//! * Link state comes from sysfs on each housekeeping tick; an interface
//!   that disappears marks the port down, and one that comes back with the
//!   same name is reattached.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use super::upkeep::{Mailbox, SlowHalf, Upkeep};
use super::{DropReason, Port, TxOutcome};
use crate::packet::{Packet, PacketPool};
use crate::sys::packet_ring::{PacketRing, RingConfig, VnetHdr};
use crate::wire::VlanTci;
use crate::{Error, Result};

/// Ring settings of an AF_PACKET port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct AfPacketConfig {
    /// Bytes per receive block; at least 128 KiB so a 64 KiB GSO frame
    /// fits in a TPACKET_V3 block. The ring is `block_size * blocks` bytes
    /// in every mode (4 MiB by default): 2,048 slots of 2 KiB for frames.
    pub block_size: u32,
    /// Receive blocks in the ring.
    pub blocks: u32,
    /// Milliseconds after which the kernel hands over a part-filled block
    /// (`rx_mode=ring` only).
    pub block_timeout_ms: u32,
    /// Receive through a ring of frames (`frames`), a ring of blocks
    /// (`ring`) or with `recvmmsg` (`socket`): see [`AfPacketRx`].
    pub rx_mode: AfPacketRx,
    /// Transmit past the interface's qdisc (option `qdisc_bypass`, on by
    /// default): off, what the switch sends goes through the qdisc, where
    /// tcpdump on the interface sees it, at a cost (docs/cli.md).
    pub qdisc_bypass: bool,
}

/// How an AF_PACKET port receives (option `rx_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AfPacketRx {
    /// A TPACKET_V2 ring of frames: each frame handed over as it arrives
    /// (a sleeping datapath is woken by the first), bursts with no system
    /// call under load; a frame larger than a slot (a GSO super-frame)
    /// comes whole through the socket.
    #[default]
    Frames,
    /// A TPACKET_V3 ring of blocks: no system call per burst, but at low
    /// rates a frame waits for its block's timeout (`block_timeout_ms`,
    /// 1 ms at least).
    Ring,
    /// `recvmmsg(2)`: a system call per burst, every frame as soon as it
    /// arrives (the ring's size becomes the socket's receive queue).
    Socket,
}

impl std::str::FromStr for AfPacketRx {
    type Err = ();
    fn from_str(s: &str) -> std::result::Result<Self, ()> {
        match s {
            "frames" => Ok(AfPacketRx::Frames),
            "ring" => Ok(AfPacketRx::Ring),
            "socket" => Ok(AfPacketRx::Socket),
            _ => Err(()),
        }
    }
}

impl Default for AfPacketConfig {
    fn default() -> Self {
        let r = RingConfig::default();
        AfPacketConfig {
            block_size: r.block_size,
            blocks: r.blocks,
            block_timeout_ms: r.block_timeout_ms,
            rx_mode: AfPacketRx::default(),
            qdisc_bypass: r.qdisc_bypass,
        }
    }
}

impl AfPacketConfig {
    /// The ring settings a port spec gives in its options `block_size`,
    /// `blocks` and `block_timeout_ms`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an unknown option or a bad value.
    pub fn from_spec(spec: &super::spec::PortSpec) -> Result<AfPacketConfig> {
        spec.no_options(&["block_size", "blocks", "block_timeout_ms", "rx_mode", "qdisc_bypass"])?;
        let d = AfPacketConfig::default();
        let c = AfPacketConfig {
            block_size: spec.option("block_size")?.unwrap_or(d.block_size),
            blocks: spec.option("blocks")?.unwrap_or(d.blocks),
            block_timeout_ms: spec.option("block_timeout_ms")?.unwrap_or(d.block_timeout_ms),
            rx_mode: spec
                .option("rx_mode")
                .map_err(|_| {
                    Error::invalid(
                        "afpacket rx_mode",
                        "must be frames (a TPACKET_V2 ring), ring (a TPACKET_V3 ring) or socket (recvmmsg)",
                    )
                })?
                .unwrap_or(d.rx_mode),
            qdisc_bypass: spec
                .option("qdisc_bypass")
                .map_err(|_| Error::invalid("afpacket qdisc_bypass", "must be true or false"))?
                .unwrap_or(d.qdisc_bypass),
        };
        c.validate()?;
        Ok(c)
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the bad setting.
    pub fn validate(&self) -> Result<()> {
        self.ring().map(|_| ())
    }

    fn ring(&self) -> Result<RingConfig> {
        if self.block_size < 128 * 1024 || !self.block_size.is_power_of_two() {
            return Err(Error::invalid(
                "afpacket block_size",
                format!("{} must be a power of two of at least 131072", self.block_size),
            ));
        }
        if self.blocks == 0 || self.blocks > 1024 {
            return Err(Error::invalid("afpacket blocks", format!("{} must be 1 to 1024", self.blocks)));
        }
        Ok(RingConfig {
            block_size: self.block_size,
            frame_size: 2048,
            blocks: self.blocks,
            block_timeout_ms: self.block_timeout_ms.max(1),
            mode: match self.rx_mode {
                AfPacketRx::Frames => crate::sys::packet_ring::RxMode::Frames,
                AfPacketRx::Ring => crate::sys::packet_ring::RxMode::Ring,
                AfPacketRx::Socket => crate::sys::packet_ring::RxMode::Socket,
            },
            qdisc_bypass: self.qdisc_bypass,
        })
    }
}

fn sysfs(name: &str, attr: &str) -> Option<String> {
    std::fs::read_to_string(format!("/sys/class/net/{name}/{attr}")).ok().map(|s| s.trim().to_string())
}

/// The interface's index, if it exists.
pub(crate) fn ifindex(name: &str) -> Option<u32> {
    sysfs(name, "ifindex")?.parse().ok()
}

/// The interface's MTU (1500 if sysfs does not say).
fn mtu(name: &str) -> u32 {
    sysfs(name, "mtu").and_then(|m| m.parse().ok()).unwrap_or(1500)
}

/// `cfg` with frame-ring slots sized for interface `name`'s MTU as it is
/// now (reattaching sizes them anew).
fn sized_for(cfg: RingConfig, name: &str) -> RingConfig {
    RingConfig { frame_size: cfg.frame_size_for_mtu(mtu(name)), ..cfg }
}

/// True if the interface is administratively up and its carrier is on.
pub(crate) fn link_is_up(name: &str) -> bool {
    let flags =
        sysfs(name, "flags").and_then(|f| u32::from_str_radix(f.trim_start_matches("0x"), 16).ok()).unwrap_or(0);
    let admin_up = flags & libc::IFF_UP as u32 != 0;
    let oper = sysfs(name, "operstate").unwrap_or_default();
    admin_up && (oper == "up" || oper == "unknown")
}

/// An exclusive claim on an interface, held for the port's lifetime, so a
/// second switch (or a second port in this one) cannot attach it too.
#[derive(Debug)]
pub(crate) struct AttachLock {
    _file: File,
}

fn lock_dir() -> PathBuf {
    match std::env::var_os("VSWITCH_RUN_DIR") {
        Some(d) => PathBuf::from(d).join("attached"),
        None => {
            let run = PathBuf::from("/run/vswitch/attached");
            if std::fs::create_dir_all(&run).is_ok() { run } else { std::env::temp_dir().join("vswitch-attached") }
        }
    }
}

impl AttachLock {
    pub(crate) fn acquire(ifname: &str) -> Result<AttachLock> {
        let dir = lock_dir();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create the attach lock directory", e))?;
        // Interface names are per network namespace: two switches in two
        // namespaces may each attach their own "eth0".
        let netns = std::fs::read_link("/proc/self/ns/net")
            .ok()
            .and_then(|l| l.to_str().map(|s| s.trim_start_matches("net:[").trim_end_matches(']').to_string()))
            .unwrap_or_default();
        let path = dir.join(format!("{netns}-{ifname}"));
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open the attach lock", e))?;
        // A lock released a moment ago can still be held by a process
        // that forked before the release and has not exec'd yet (the
        // descriptor is close-on-exec): try for half a second before
        // calling it held by another switch.
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(AttachLock { _file: file }),
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                Err(_) => {
                    return Err(Error::invalid(
                        "interface",
                        format!("'{ifname}' is already attached to a switch (lock {} is held)", path.display()),
                    ));
                }
            }
        }
    }
}

/// Checks that `ifname` exists and is free, and takes the attach lock on
/// it; returns its index and the lock.
pub(crate) fn claim(ifname: &str) -> Result<(u32, AttachLock)> {
    let index = ifindex(ifname).ok_or_else(|| Error::no_interface(ifname))?;
    if let Ok(master) = std::fs::read_link(format!("/sys/class/net/{ifname}/master")) {
        let m = master.file_name().map(|m| m.to_string_lossy().into_owned()).unwrap_or_default();
        return Err(Error::invalid(
            "interface",
            format!("'{ifname}' is a port of kernel device '{m}'; detach it first"),
        ));
    }
    Ok((index, AttachLock::acquire(ifname)?))
}

/// A kernel interface on the bridge through AF_PACKET.
#[derive(Debug)]
pub struct AfPacketPort {
    ring: Option<PacketRing>,
    truncated: u64,
    ring_full: u64,
    mailbox: Arc<Mailbox<PacketRing>>,
    /// The slow half, until the switch takes it.
    upkeep: SlowHalf<Reattach<PacketRing>>,
    _lock: AttachLock,
}

/// The slow half of a kernel port (AF_PACKET, AF_XDP): follows its
/// interface by name, attaching anew (`attach`, given the interface index)
/// when it comes back or is recreated with the same name, and reads its
/// link state. A failed attach is tried again next round.
pub(crate) struct Reattach<T> {
    name: String,
    /// The interface index the port is attached to (None: not attached).
    ifindex: Option<u32>,
    mailbox: Arc<Mailbox<T>>,
    attach: Box<dyn FnMut(u32) -> Option<T> + Send>,
}

impl<T> std::fmt::Debug for Reattach<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reattach").field("name", &self.name).field("ifindex", &self.ifindex).finish()
    }
}

impl<T> Reattach<T> {
    /// The slow half of a port attached to `name` (index `ifindex`).
    pub(crate) fn new(
        name: &str,
        ifindex: u32,
        mailbox: Arc<Mailbox<T>>,
        attach: impl FnMut(u32) -> Option<T> + Send + 'static,
    ) -> Self {
        Reattach { name: name.to_string(), ifindex: Some(ifindex), mailbox, attach: Box::new(attach) }
    }
}

impl<T: Send> Upkeep for Reattach<T> {
    fn run(&mut self, _now_ms: u64) {
        // What the port let go of is closed here, not on the datapath.
        self.mailbox.close_retired();
        match ifindex(&self.name) {
            None => {
                // The interface is gone (a deleted veth): let go of it.
                if self.ifindex.take().is_some() {
                    self.mailbox.post(None);
                }
                self.mailbox.set_link(false);
            }
            Some(index) => {
                if self.ifindex != Some(index)
                    && let Some(device) = (self.attach)(index)
                {
                    self.mailbox.post(Some(device));
                    self.ifindex = Some(index);
                }
                self.mailbox.set_link(self.ifindex == Some(index) && link_is_up(&self.name));
            }
        }
    }
}

impl AfPacketPort {
    /// Attaches interface `ifname`.
    ///
    /// # Errors
    /// [`Error::InterfaceNotFound`] if there is no such interface;
    /// [`Error::InvalidArgument`] if it is a
    /// kernel bridge's port, or another switch holds it; [`Error::Io`] if
    /// the socket cannot be set up (EPERM without CAP_NET_RAW).
    pub fn open(ifname: &str, config: AfPacketConfig) -> Result<AfPacketPort> {
        let cfg = config.ring()?;
        let index = ifindex(ifname).ok_or_else(|| Error::no_interface(ifname))?;
        if let Ok(master) = std::fs::read_link(format!("/sys/class/net/{ifname}/master")) {
            let m = master.file_name().map(|m| m.to_string_lossy().into_owned()).unwrap_or_default();
            return Err(Error::invalid(
                "interface",
                format!("'{ifname}' is a port of kernel device '{m}'; detach it first"),
            ));
        }
        let lock = AttachLock::acquire(ifname)?;
        let ring =
            PacketRing::open(index, sized_for(cfg, ifname)).map_err(|e| Error::io("AF_PACKET socket setup", e))?;
        let mailbox = Mailbox::new(link_is_up(ifname));
        let name = ifname.to_string();
        let upkeep =
            Reattach::new(ifname, index, mailbox.clone(), move |i| PacketRing::open(i, sized_for(cfg, &name)).ok());
        Ok(AfPacketPort {
            ring: Some(ring),
            truncated: 0,
            ring_full: 0,
            mailbox,
            upkeep: SlowHalf::new(upkeep),
            _lock: lock,
        })
    }
}

/// The drop reason for a transmit error.
fn tx_error_reason(e: &std::io::Error) -> DropReason {
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::ENOBUFS) => DropReason::TxQueueFull,
        Some(libc::EMSGSIZE) => DropReason::TooBig,
        Some(libc::ENETDOWN) | Some(libc::ENXIO) | Some(libc::ENODEV) => DropReason::LinkDown,
        _ => DropReason::TxError,
    }
}

impl Port for AfPacketPort {
    fn kind(&self) -> &'static str {
        "afpacket"
    }

    fn rx_burst(&mut self, batch: &mut Vec<Packet>, max: usize, pool: &mut PacketPool) -> usize {
        let Some(ring) = self.ring.as_mut() else { return 0 };
        let mut truncated = 0;
        let n = ring.recv_burst(max, |f| {
            if f.data.len() < f.wire_len {
                truncated += 1;
                return;
            }
            let mut p = pool.get();
            p.set_frame(f.data);
            p.offload = f.vnet;
            if let Some((tpid, tci)) = f.vlan {
                p.push_tag(tpid, VlanTci(tci));
            }
            batch.push(p);
        });
        self.truncated += truncated;
        n - truncated as usize
    }

    fn take_rx_drops(&mut self, count: &mut dyn FnMut(DropReason, u64)) {
        count(DropReason::Truncated, std::mem::take(&mut self.truncated));
        count(DropReason::RxRingFull, std::mem::take(&mut self.ring_full));
    }

    fn tx_burst(&mut self, batch: &mut Vec<Packet>, pool: &mut PacketPool) -> TxOutcome {
        let Some(ring) = self.ring.as_ref() else {
            return TxOutcome::drop_all(batch, pool, DropReason::LinkDown);
        };
        let mut out = TxOutcome::default();
        let frames: Vec<(VnetHdr, &[u8])> = batch.iter().map(|p| (p.offload, p.data())).collect();
        let (sent, err) = ring.send_batch(&frames);
        out.sent = sent;
        out.sent_bytes = batch[..sent].iter().map(|p| p.len() as u64).sum();
        if sent < batch.len() {
            out.dropped = batch.len() - sent;
            out.drop_reason = Some(err.as_ref().map_or(DropReason::TxQueueFull, tx_error_reason));
        }
        batch.drain(..).for_each(|p| pool.put(p));
        out
    }

    fn rx_pending(&self) -> bool {
        self.ring.as_ref().is_some_and(PacketRing::rx_ready)
    }

    fn link_up(&self) -> bool {
        self.mailbox.link_up() && self.ring.is_some()
    }

    fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        self.ring.as_ref().map(PacketRing::fd)
    }

    fn carries_offloads(&self) -> bool {
        true
    }

    fn housekeeping(&mut self, now_ms: u64) {
        self.upkeep.run_here(now_ms);
        if let Some(r) = &self.ring {
            self.ring_full += r.take_ring_drops().unwrap_or(0);
        }
        if let Some(next) = self.mailbox.collect()
            && let Some(old) = std::mem::replace(&mut self.ring, next)
        {
            self.mailbox.retire(old);
        }
    }

    fn upkeep(&mut self) -> Option<Box<dyn Upkeep>> {
        self.upkeep.take()
    }
}
