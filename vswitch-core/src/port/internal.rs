//! Internal ports (`type=internal`): a TAP device named after the port that
//! gives the host its own leg on the bridge, as Open vSwitch's internal
//! interfaces and docker0 do. The host can put an address on it and reach
//! whatever is on the bridge:
//!
//! ```text
//! vswitch-ctl add-port br0 br0-gw type=internal
//! ip addr add 10.0.0.1/24 dev br0-gw && ip link set br0-gw up
//! ```
//!
//! The device is created down (like Open vSwitch's), exists while the port
//! does, and is removed with it. It carries offloads both ways with a
//! virtio-net header on every frame (`IFF_VNET_HDR`, see `sys::tap`): the
//! host's TCP hands it 64 KiB super-frames with checksums left to do, which
//! cross to AF_PACKET ports whole (the datapath segments them only for a
//! port that cannot take offload metadata), and GSO frames from AF_PACKET
//! ports reach the host's stack whole.

use std::sync::Arc;

use super::upkeep::{Mailbox, SlowHalf, Upkeep};
use super::{DropReason, Port, TxOutcome};
use crate::packet::{Packet, PacketPool};
use crate::sys::tap::{Tap, TapPlace, TapRead, TapWatch};
use crate::{Error, Result};

/// Largest read from the device: a 64 KiB GSO frame (or one of the
/// largest MTU) behind its virtio-net header, with room to tell a frame
/// that fills the buffer, cut, from one that fits.
const MAX_FRAME: usize = 65_536 + 256;

/// A TAP device on the bridge: one the switch created (`type=internal`)
/// or one a runtime opened and handed over ([`InternalPort::adopt`]).
#[derive(Debug)]
pub struct InternalPort {
    tap: Tap,
    /// `internal`, or `tap` for an adopted descriptor.
    kind: &'static str,
    scratch: Vec<u8>,
    /// Frames read cut short (longer than the buffer), since last taken.
    truncated: u64,
    /// The device is gone (its descriptor reads and writes EBADFD).
    gone: bool,
    link: Arc<Mailbox<()>>,
    /// The slow half (the link state), until the switch takes it.
    upkeep: SlowHalf<LinkWatch>,
}

/// An internal port's slow half: the TAP device's link state, asked of
/// the device itself each round (through a descriptor of its own). In
/// this network namespace sysfs says, under the device's current name; in
/// another one (a runtime may move it into a container's or a VM's) it is
/// taken to be up, since its descriptor works wherever the device is and
/// a write to a device that is down fails (counted `link_down`); once the
/// device is gone (its namespace deleted) the link is down for good.
#[derive(Debug)]
struct LinkWatch {
    watch: Option<TapWatch>,
    link: Arc<Mailbox<()>>,
}

impl Upkeep for LinkWatch {
    fn run(&mut self, _now_ms: u64) {
        let up = match self.watch.as_ref().map(TapWatch::place) {
            Some(TapPlace::Here(name)) => super::afpacket::link_is_up(&name),
            Some(TapPlace::Elsewhere) => true,
            Some(TapPlace::Gone) | None => false,
        };
        self.link.set_link(up);
    }
}

impl InternalPort {
    /// Creates TAP device `name`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a name the kernel cannot take or one
    /// already in use; [`Error::Io`] without `CAP_NET_ADMIN`.
    pub fn create(name: &str) -> Result<InternalPort> {
        let tap = Tap::create(name).map_err(|e| match e.raw_os_error() {
            Some(libc::EBUSY) | Some(libc::EEXIST) => {
                Error::invalid("interface", format!("an interface named '{name}' already exists"))
            }
            _ if e.kind() == std::io::ErrorKind::InvalidInput => Error::invalid("interface", e.to_string()),
            _ => Error::io("create the TAP device", e),
        })?;
        Ok(InternalPort::with_tap(tap, "internal"))
    }

    /// Takes over a TAP device a runtime opened: `/dev/net/tun` attached
    /// with `IFF_TAP | IFF_NO_PI`, with or without `IFF_VNET_HDR` (see
    /// [`open_tap`]), not `IFF_MULTI_QUEUE`. With the header, GSO and
    /// checksum offloads pass through both ways (TCP offloads are turned
    /// on for the device); without it the device carries finished frames
    /// and the datapath segments GSO frames for it. The device may live in
    /// another network namespace, and be moved or renamed later.
    ///
    /// The hand-over is exclusive: the descriptor is made non-blocking
    /// (a file status flag, shared with any duplicate of it), and a
    /// duplicate the runtime kept would read frames meant for the switch.
    /// Dropping the port closes the descriptor; the device goes with its
    /// last descriptor unless it was made persistent.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the descriptor is not an attached TAP
    /// device opened with `IFF_NO_PI`.
    pub fn adopt(fd: std::os::fd::OwnedFd) -> Result<InternalPort> {
        let tap = Tap::adopt(fd).map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidInput => Error::invalid("tap descriptor", e.to_string()),
            _ => Error::io("adopt the TAP device", e),
        })?;
        Ok(InternalPort::with_tap(tap, "tap"))
    }

    fn with_tap(tap: Tap, kind: &'static str) -> InternalPort {
        let link = Mailbox::new(false);
        // Without a second descriptor (EMFILE) the link reads down.
        let upkeep = SlowHalf::new(LinkWatch { watch: tap.watch().ok(), link: link.clone() });
        InternalPort { tap, kind, scratch: vec![0; MAX_FRAME], truncated: 0, gone: false, link, upkeep }
    }

    /// The TAP device's name.
    pub fn ifname(&self) -> &str {
        self.tap.name()
    }
}

/// Opens TAP device `name` as a runtime would before handing it to
/// [`crate::Switch::add_tap_fd_port`]: `/dev/net/tun` with `IFF_TAP |
/// IFF_NO_PI`, and `IFF_VNET_HDR` if `vnet_hdr`. Creates the device (it
/// lives while the descriptor does) or attaches to a persistent one of
/// that name (`ip tuntap add NAME mode tap`).
///
/// # Errors
/// [`Error::InvalidArgument`] for a bad name; [`Error::Io`] without
/// `CAP_NET_ADMIN`, or if a persistent device's flags differ.
pub fn open_tap(name: &str, vnet_hdr: bool) -> Result<std::os::fd::OwnedFd> {
    crate::sys::tap::open(name, vnet_hdr).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidInput => Error::invalid("interface", e.to_string()),
        _ => Error::io("open the TAP device", e),
    })
}

impl Port for InternalPort {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn rx_burst(&mut self, batch: &mut Vec<Packet>, max: usize, pool: &mut PacketPool) -> usize {
        let mut n = 0;
        while n < max {
            match self.tap.recv(&mut self.scratch) {
                Ok(Some(TapRead::Frame(vnet, frame))) => {
                    let mut p = pool.get();
                    p.set_frame(&self.scratch[frame]);
                    p.offload = vnet;
                    batch.push(p);
                    n += 1;
                }
                Ok(Some(TapRead::Truncated)) => self.truncated += 1,
                Err(e) if e.raw_os_error() == Some(libc::EBADFD) => {
                    self.gone = true;
                    break;
                }
                Ok(None) | Err(_) => break,
            }
        }
        n
    }

    fn tx_burst(&mut self, batch: &mut Vec<Packet>, pool: &mut PacketPool) -> TxOutcome {
        let mut out = TxOutcome::default();
        for p in batch.drain(..) {
            if self.gone {
                out = out.with_drops(1, DropReason::LinkDown);
                pool.put(p);
                continue;
            }
            match self.tap.send(p.offload, p.data()) {
                Ok(true) => {
                    out.sent += 1;
                    out.sent_bytes += p.len() as u64;
                }
                Ok(false) => out = out.with_drops(1, DropReason::TxQueueFull),
                Err(e) => {
                    // EIO: the device is administratively down; EBADFD:
                    // it is gone, and stays so.
                    self.gone |= e.raw_os_error() == Some(libc::EBADFD);
                    let reason = match e.raw_os_error() {
                        Some(libc::EIO) | Some(libc::EBADFD) => DropReason::LinkDown,
                        _ => DropReason::TxError,
                    };
                    out = out.with_drops(1, reason);
                }
            }
            pool.put(p);
        }
        out
    }

    fn link_up(&self) -> bool {
        !self.gone && self.link.link_up()
    }

    fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(self.tap.fd())
    }

    fn carries_offloads(&self) -> bool {
        self.tap.has_vnet_hdr()
    }

    fn take_rx_drops(&mut self, count: &mut dyn FnMut(DropReason, u64)) {
        count(DropReason::Truncated, std::mem::take(&mut self.truncated));
    }

    fn housekeeping(&mut self, now_ms: u64) {
        self.upkeep.run_here(now_ms);
    }

    fn upkeep(&mut self) -> Option<Box<dyn Upkeep>> {
        self.upkeep.take()
    }
}
