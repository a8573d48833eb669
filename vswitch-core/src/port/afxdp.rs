//! AF_XDP ports: a kernel interface on the bridge through XDP sockets.
//!
//! On attach, an XDP program (six instructions of bytecode, loaded with
//! bpf(2); see `sys::bpf`) redirects each receive queue's frames into that
//! queue's AF_XDP socket; frames of a queue without a socket go on to the
//! kernel (`XDP_PASS`). The program is attached in native (driver) mode if
//! the driver supports it and in generic (skb) mode otherwise, replacing a
//! stale program a crashed switch may have left; it is detached when the
//! port goes away. Sockets bind zero-copy where the driver offers it and
//! copy mode otherwise, with `need_wakeup`.
//!
//! Checksums: a virtual interface (veth, tap) with checksum offload hands
//! over TCP and UDP segments whose checksum holds only the pseudo-header
//! sum, and XDP frames carry nothing that says so. On virtual interfaces,
//! which cannot corrupt a frame in flight, the port therefore computes the
//! TCP/UDP checksum of every received frame afresh (so default offloads
//! work); on physical NICs frames are left as received, so real corruption
//! is never masked.
//!
//! The interface is made promiscuous (a packet socket's membership the
//! kernel drops on close) so the NIC's MAC filter passes every frame.
//!
//! Frames are at most one UMEM frame (2 KiB): AF_XDP carries no GSO
//! metadata, so the datapath segments a TCP GSO frame from another port in
//! software before it gets here. On
//! veth in native mode the kernel turns GSO off on the peer while an XDP
//! program is attached, so TCP from a container still works (in smaller
//! segments); in generic mode it does not, which is why native is tried
//! first.

use std::sync::Arc;

use super::afpacket::{AttachLock, Reattach, claim, link_is_up};
use super::upkeep::{Mailbox, SlowHalf, Upkeep};
use super::{DropReason, Port, TxOutcome};
use crate::packet::{Packet, PacketPool};
use crate::sys::bpf::{XdpMode, XdpProgram, set_link_xdp};
use crate::sys::packet_ring::PromiscGuard;
use crate::sys::xsk::{BindMode, FRAME_SIZE, XskSocket};
use crate::wire::checksum::complete_l4_checksum;
use crate::{Error, Result};

/// How an AF_XDP port is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum XdpModeRequest {
    /// Native (driver) mode, falling back to generic mode.
    #[default]
    BestEffort,
    /// Native mode or fail.
    Native,
    /// Generic (skb) mode.
    Generic,
}

impl XdpModeRequest {
    /// The attach mode a port spec gives in its option `xdp_mode`
    /// (`best-effort`, `native`, `generic`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an unknown option or a bad value.
    pub fn from_spec(spec: &super::spec::PortSpec) -> Result<XdpModeRequest> {
        spec.no_options(&["xdp_mode"])?;
        match spec.options.get("xdp_mode").map(String::as_str) {
            None | Some("best-effort") => Ok(XdpModeRequest::BestEffort),
            Some("native") => Ok(XdpModeRequest::Native),
            Some("generic") => Ok(XdpModeRequest::Generic),
            Some(v) => Err(Error::invalid("option", format!("xdp_mode={v}: expected best-effort, native or generic"))),
        }
    }
}

/// The interface's attached state.
#[derive(Debug)]
struct Attached {
    ifindex: u32,
    mode: XdpMode,
    queues: Vec<XskSocket>,
    // A switch port must see frames for every MAC, past the NIC's filter.
    _promisc: PromiscGuard,
    // Dropped last: the program stays loaded while sockets reference it.
    _prog: XdpProgram,
}

impl Drop for Attached {
    fn drop(&mut self) {
        // Detach first so the kernel stops redirecting into sockets that
        // are about to close. Fails harmlessly if the interface is gone.
        let _ = set_link_xdp(self.ifindex, None, self.mode);
        // Then take the sockets out of the map, so closing them releases
        // them (and their queues) at once.
        for q in 0..self.queues.len() as u32 {
            let _ = self._prog.clear_socket(q);
        }
    }
}

fn rx_queues(ifname: &str) -> u32 {
    std::fs::read_dir(format!("/sys/class/net/{ifname}/queues"))
        .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("rx-")).count() as u32)
        .unwrap_or(1)
        .max(1)
}

fn attach(ifname: &str, ifindex: u32, request: XdpModeRequest) -> std::io::Result<Attached> {
    let n = rx_queues(ifname);
    let prog = XdpProgram::load(n)?;
    let modes: &[XdpMode] = match request {
        XdpModeRequest::BestEffort => &[XdpMode::Native, XdpMode::Generic],
        XdpModeRequest::Native => &[XdpMode::Native],
        XdpModeRequest::Generic => &[XdpMode::Generic],
    };
    let mut last = None;
    for &mode in modes {
        if let Err(e) = set_link_xdp(ifindex, Some(prog.fd()), mode) {
            last = Some(e);
            continue;
        }
        // The program runs from here; sockets come next, so until a queue
        // has one its frames still go to the kernel (XDP_PASS).
        let mut queues = Vec::with_capacity(n as usize);
        let mut failed = None;
        let promisc = match PromiscGuard::new(ifindex) {
            Ok(p) => p,
            Err(e) => {
                let _ = set_link_xdp(ifindex, None, mode);
                return Err(e);
            }
        };
        for q in 0..n {
            match XskSocket::open(ifindex, q, mode == XdpMode::Native)
                .and_then(|s| prog.set_socket(q, s.fd()).map(|_| s))
            {
                Ok(s) => queues.push(s),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let attached = Attached { ifindex, mode, queues, _promisc: promisc, _prog: prog };
        return match failed {
            None => Ok(attached),
            Some(e) => Err(e), // dropping `attached` detaches the program
        };
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no XDP mode to try")))
}

/// A kernel interface on the bridge through AF_XDP.
#[derive(Debug)]
pub struct AfXdpPort {
    attached: Option<Attached>,
    mailbox: Arc<Mailbox<Attached>>,
    /// The slow half (its attach retries the bind for seconds), until
    /// the switch takes it.
    upkeep: SlowHalf<Reattach<Attached>>,
    /// Recompute received TCP/UDP checksums (a virtual interface).
    fix_checksums: bool,
    next_queue: usize,
    /// Kernel-side rx drops already reported, per queue.
    drops_seen: Vec<u64>,
    drops: u64,
    _lock: AttachLock,
}

impl AfXdpPort {
    /// Attaches interface `ifname`.
    ///
    /// # Errors
    /// [`Error::InterfaceNotFound`] if there is no such interface;
    /// [`Error::InvalidArgument`] if it is a
    /// kernel bridge's port, or another switch holds it; [`Error::Io`] if
    /// the program, the sockets or the attachment fail (with the kernel's
    /// reason, e.g. the verifier's log).
    pub fn open(ifname: &str, request: XdpModeRequest) -> Result<AfXdpPort> {
        let (index, lock) = claim(ifname)?;
        let attached = attach(ifname, index, request).map_err(|e| Error::io("AF_XDP setup", e))?;
        let mailbox = Mailbox::new(link_is_up(ifname));
        let name = ifname.to_string();
        let upkeep = Reattach::new(ifname, index, mailbox.clone(), move |i| attach(&name, i, request).ok());
        Ok(AfXdpPort {
            drops_seen: vec![0; attached.queues.len()],
            attached: Some(attached),
            mailbox,
            upkeep: SlowHalf::new(upkeep),
            fix_checksums: std::path::Path::new(&format!("/sys/devices/virtual/net/{ifname}")).exists(),
            next_queue: 0,
            drops: 0,
            _lock: lock,
        })
    }

    /// `"native"` or `"generic"`, and `"zero-copy"` or `"copy"`: how the
    /// port ended up attached (None while the interface is gone).
    pub fn mode(&self) -> Option<(&'static str, &'static str)> {
        let a = self.attached.as_ref()?;
        let xdp = if a.mode == XdpMode::Native { "native" } else { "generic" };
        let bind = match a.queues.first().map(XskSocket::mode) {
            Some(BindMode::ZeroCopy) => "zero-copy",
            _ => "copy",
        };
        Some((xdp, bind))
    }
}

impl Port for AfXdpPort {
    fn kind(&self) -> &'static str {
        "afxdp"
    }

    fn rx_burst(&mut self, batch: &mut Vec<Packet>, max: usize, pool: &mut PacketPool) -> usize {
        let Some(a) = self.attached.as_mut() else { return 0 };
        let nq = a.queues.len();
        let fix = self.fix_checksums;
        let mut n = 0;
        // Round-robin over the queues so none starves.
        for k in 0..nq {
            if n >= max {
                break;
            }
            let q = &mut a.queues[(self.next_queue + k) % nq];
            n += q.recv_burst(max - n, |frame| {
                let mut p = pool.get();
                p.set_frame(frame);
                if fix {
                    complete_l4_checksum(p.data_mut());
                }
                batch.push(p);
            });
        }
        self.next_queue = (self.next_queue + 1) % nq;
        n
    }

    fn tx_burst(&mut self, batch: &mut Vec<Packet>, pool: &mut PacketPool) -> TxOutcome {
        let Some(a) = self.attached.as_mut() else {
            return TxOutcome::drop_all(batch, pool, DropReason::LinkDown);
        };
        let mut out = TxOutcome::default();
        let too_big = batch.iter().filter(|p| p.len() > FRAME_SIZE as usize).count();
        let fits = batch.iter().filter(|p| p.len() <= FRAME_SIZE as usize);
        let sent = a.queues[0].send_burst(fits.clone().map(Packet::data));
        out.sent = sent;
        out.sent_bytes = fits.take(sent).map(|p| p.len() as u64).sum();
        let full = batch.len() - sent - too_big;
        batch.drain(..).for_each(|p| pool.put(p));
        out.with_drops(too_big, DropReason::TooBig).with_drops(full, DropReason::TxQueueFull)
    }

    fn rx_pending(&self) -> bool {
        self.attached.as_ref().is_some_and(|a| a.queues.iter().any(XskSocket::rx_ready))
    }

    fn link_up(&self) -> bool {
        self.mailbox.link_up() && self.attached.is_some()
    }

    fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        // One descriptor to wake on; other queues are polled on each pass.
        self.attached.as_ref().and_then(|a| a.queues.first()).map(XskSocket::fd)
    }

    fn take_rx_drops(&mut self, count: &mut dyn FnMut(DropReason, u64)) {
        count(DropReason::RxRingFull, std::mem::take(&mut self.drops));
    }

    fn housekeeping(&mut self, now_ms: u64) {
        self.upkeep.run_here(now_ms);
        if let Some(a) = &self.attached {
            for (q, seen) in a.queues.iter().zip(self.drops_seen.iter_mut()) {
                let total = q.rx_drops();
                self.drops += total.saturating_sub(*seen);
                *seen = total;
            }
        }
        if let Some(next) = self.mailbox.collect() {
            self.drops_seen = vec![0; next.as_ref().map_or(0, |a| a.queues.len())];
            self.next_queue = 0;
            if let Some(old) = std::mem::replace(&mut self.attached, next) {
                self.mailbox.retire(old);
            }
        }
    }

    fn upkeep(&mut self) -> Option<Box<dyn Upkeep>> {
        self.upkeep.take()
    }
}
