//! What a port does besides switching: port mirrors (copies of what a
//! port receives and sends, out of another port), administrative state
//! (`mod-port up|down`) and flooding (`mod-port flood|no-flood`).
//!
//! Mirrors are held per bridge by port number, as the control side
//! resolved them; each port's slot gets its *taps* (where copies of its
//! traffic go), recomputed whenever a mirror or a port of the bridge
//! changes. A port with no taps pays one branch per burst received and
//! one per frame queued.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Datapath;
use crate::packet::Packet;
use crate::port::{DropReason, PortNo, VlanMode, VlanSet};
use crate::wire::{VlanTci, ethertype};

/// Counters of one mirror, shared by every thread's copy.
#[derive(Debug, Default)]
pub(crate) struct MirrorCounters {
    /// Copies queued on the output port.
    pub packets: AtomicU64,
    /// Their bytes.
    pub bytes: AtomicU64,
}

/// A mirror as the datapath holds it.
#[derive(Debug, Clone)]
pub(crate) struct DpMirror {
    pub all: bool,
    pub src: Vec<PortNo>,
    pub dst: Vec<PortNo>,
    pub vlans: Option<Arc<VlanSet>>,
    pub out: PortNo,
    pub counters: Arc<MirrorCounters>,
}

/// Where copies of one port's traffic go.
#[derive(Debug, Clone)]
pub(super) struct Tap {
    out_slot: usize,
    pub(super) rx: bool,
    pub(super) tx: bool,
    vlans: Option<Arc<VlanSet>>,
    counters: Arc<MirrorCounters>,
}

/// Per-port flags `mod-port` sets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortFlags {
    /// Administratively down: nothing received is switched, nothing is sent.
    pub down: bool,
    /// NORMAL does not flood to it.
    pub no_flood: bool,
}

/// The VLAN a frame is in as the bridge sees it on a port in `mode`.
fn frame_vlan(d: &[u8], mode: &VlanMode) -> Option<u16> {
    if d.len() >= 16 && u16::from_be_bytes([d[12], d[13]]) == ethertype::VLAN {
        let vid = VlanTci(u16::from_be_bytes([d[14], d[15]])).vid();
        if vid != 0 {
            return Some(vid);
        }
    }
    mode.untagged_vlan()
}

impl Tap {
    #[inline]
    fn wants(&self, d: &[u8], mode: &VlanMode) -> bool {
        self.vlans.as_ref().is_none_or(|set| frame_vlan(d, mode).is_some_and(|v| set.contains(v)))
    }
}

impl Datapath {
    /// Replaces bridge `bridge`'s mirrors.
    pub(crate) fn set_mirrors(&mut self, bridge: usize, mirrors: Vec<DpMirror>) {
        if let Some(b) = self.bridges.get_mut(bridge).and_then(Option::as_mut) {
            b.mirrors = mirrors;
        }
        self.resync_taps(bridge);
    }

    /// Sets the `mod-port` flags of the port in `slot`.
    pub(crate) fn set_port_flags(&mut self, slot: usize, flags: PortFlags) {
        if let Some(p) = self.ports.get_mut(slot).and_then(Option::as_mut) {
            p.flags = flags;
            p.refresh_special();
        }
    }

    /// Recomputes the taps of bridge `bridge`'s ports from its mirrors.
    pub(super) fn resync_taps(&mut self, bridge: usize) {
        let Some(b) = self.bridges.get(bridge).and_then(Option::as_ref) else { return };
        let slots = b.slots.clone();
        let slot_of = |n: PortNo| b.by_port_no.get(n as usize).copied().flatten();
        let outs: Vec<(usize, &DpMirror)> = b.mirrors.iter().filter_map(|m| Some((slot_of(m.out)?, m))).collect();
        let mut taps: Vec<(usize, Tap)> = Vec::new();
        for &(out_slot, m) in &outs {
            for &s in &slots {
                let Some(p) = self.ports[s].as_ref() else { continue };
                if outs.iter().any(|(o, _)| *o == s) {
                    continue;
                }
                let rx = m.all || m.src.contains(&p.port_no);
                let tx = m.all || m.dst.contains(&p.port_no);
                if rx || tx {
                    let t = Tap { out_slot, rx, tx, vlans: m.vlans.clone(), counters: m.counters.clone() };
                    taps.push((s, t));
                }
            }
        }
        let outs: Vec<usize> = outs.iter().map(|(o, _)| *o).collect();
        for &s in &slots {
            if let Some(p) = self.ports[s].as_mut() {
                p.taps = taps.iter().filter(|(t, _)| *t == s).map(|(_, t)| t.clone()).collect();
                p.mirror_out = outs.contains(&s);
                p.refresh_special();
            }
        }
    }

    /// Before a received burst is switched: copies for the port's
    /// mirrors; a port that is down or a mirror's output switches nothing.
    /// Returns false if the burst was dropped.
    pub(super) fn rx_taps(&mut self, slot: usize, rx: &mut Vec<Packet>) -> bool {
        let Some(p) = self.ports[slot].as_ref() else { return false };
        if p.flags.down || p.mirror_out {
            let why = if p.flags.down { DropReason::PortDown } else { DropReason::MirrorOutput };
            p.counters.count_drop(why, rx.len() as u64);
            for pkt in rx.drain(..) {
                self.pool.put(pkt);
            }
            return false;
        }
        let taps: Vec<Tap> = p.taps.iter().filter(|t| t.rx).cloned().collect();
        let mode = p.vlan.clone();
        for pkt in rx.iter() {
            for t in &taps {
                if t.wants(pkt.data(), &mode) {
                    self.copy_to(t, pkt);
                }
            }
        }
        true
    }

    /// Before a frame is queued on `slot`: dropped if the port is down,
    /// copied for its mirrors. Returns the frame if it is to be sent.
    pub(super) fn tx_taps(&mut self, slot: usize, pkt: Packet) -> Option<Packet> {
        let p = self.ports[slot].as_ref()?;
        if p.flags.down {
            p.counters.count_drop(DropReason::PortDown, 1);
            self.pool.put(pkt);
            return None;
        }
        for i in 0..p.taps.len() {
            let p = self.ports[slot].as_ref()?;
            let t = &p.taps[i];
            if t.tx && t.wants(pkt.data(), &p.vlan) {
                let t = t.clone();
                self.copy_to(&t, &pkt);
            }
        }
        Some(pkt)
    }

    fn copy_to(&mut self, t: &Tap, pkt: &Packet) {
        t.counters.packets.fetch_add(1, Ordering::Relaxed);
        t.counters.bytes.fetch_add(pkt.len() as u64, Ordering::Relaxed);
        let copy = self.pool.clone_packet(pkt);
        self.enqueue_raw(t.out_slot, copy);
    }
}
