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
use crate::sys::tap::{Tap, TapRead};
use crate::{Error, Result};

/// Largest read from the device: a 64 KiB GSO frame (or one of the
/// largest MTU) behind its virtio-net header, with room to tell a frame
/// that fills the buffer, cut, from one that fits.
const MAX_FRAME: usize = 65_536 + 256;

/// A TAP device on the bridge.
#[derive(Debug)]
pub struct InternalPort {
    tap: Tap,
    scratch: Vec<u8>,
    /// Frames read cut short (longer than the buffer), since last taken.
    truncated: u64,
    link: Arc<Mailbox<()>>,
    /// The slow half (the link state), until the switch takes it.
    upkeep: SlowHalf<LinkWatch>,
}

/// An internal port's slow half: the TAP device's link state, from sysfs.
#[derive(Debug)]
struct LinkWatch {
    name: String,
    link: Arc<Mailbox<()>>,
}

impl Upkeep for LinkWatch {
    fn run(&mut self, _now_ms: u64) {
        self.link.set_link(super::afpacket::link_is_up(&self.name));
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
        let link = Mailbox::new(false);
        let upkeep = SlowHalf::new(LinkWatch { name: name.to_string(), link: link.clone() });
        Ok(InternalPort { tap, scratch: vec![0; MAX_FRAME], truncated: 0, link, upkeep })
    }
}

impl Port for InternalPort {
    fn kind(&self) -> &'static str {
        "internal"
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
                Ok(None) | Err(_) => break,
            }
        }
        n
    }

    fn tx_burst(&mut self, batch: &mut Vec<Packet>, pool: &mut PacketPool) -> TxOutcome {
        let mut out = TxOutcome::default();
        for p in batch.drain(..) {
            match self.tap.send(p.offload, p.data()) {
                Ok(true) => {
                    out.sent += 1;
                    out.sent_bytes += p.len() as u64;
                }
                Ok(false) => {
                    out.dropped += 1;
                    out.drop_reason = Some(DropReason::TxQueueFull);
                }
                Err(e) => {
                    out.dropped += 1;
                    // EIO: the device is administratively down.
                    out.drop_reason = Some(if e.raw_os_error() == Some(libc::EIO) {
                        DropReason::LinkDown
                    } else {
                        DropReason::TxError
                    });
                }
            }
            pool.put(p);
        }
        out
    }

    fn link_up(&self) -> bool {
        self.link.link_up()
    }

    fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(self.tap.fd())
    }

    fn carries_offloads(&self) -> bool {
        true
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
