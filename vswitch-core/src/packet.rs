//! Packet buffers: an owned frame with headroom, and a per-thread pool.
//!
//! A [`Packet`] keeps [`HEADROOM`] free bytes in front of the frame so that
//! pushing a VLAN tag (or, later, a tunnel header) moves only the bytes in
//! front of the insertion point, never the payload. Buffers are recycled
//! through a [`PacketPool`] so that the steady state allocates nothing.

use crate::drop_reason::DropReason;

mod gro;
pub(crate) use crate::sys::packet_ring::VnetHdr;
pub(crate) use gro::coalesce_tcp;

/// A packet's offload state: the virtio-net header (`struct
/// virtio_net_hdr`) that the kernel's packet sockets and TAP devices use
/// for GSO super-frames and checksums left to do. The default is none:
/// a finished frame.
pub use crate::sys::packet_ring::VnetHdr as Offload;
pub(crate) use crate::wire::checksum::{checksum_over, internet_checksum};
use crate::wire::{ETHERTYPE_OFFSET, be16, ethertype};
pub use crate::wire::{Tag, VlanTci};

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the L4 checksum field holds only the
/// pseudo-header sum; the rest is still to be computed.
pub(crate) const NEEDS_CSUM: u8 = 1;

/// Bytes kept free in front of every frame.
pub const HEADROOM: usize = 128;
/// Default buffer size: headroom plus a maximum-size tagged frame.
pub const DEFAULT_BUFFER: usize = HEADROOM + 1536;

/// An owned Ethernet frame.
///
/// ```
/// use vswitch_core::Packet;
/// let mut p = Packet::from_frame(&[0u8; 60]);
/// p.push_vlan(vswitch_core::packet::VlanTci::new(10, 0));
/// assert_eq!(p.len(), 64);
/// assert_eq!(p.pop_vlan().map(|t| t.vid()), Some(10));
/// assert_eq!(p.len(), 60);
/// ```
#[derive(Clone)]
pub struct Packet {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Offload state from a kernel port: a checksum still to be completed,
    /// or a GSO frame larger than the MTU to be segmented on transmit.
    pub(crate) offload: VnetHdr,
    /// Tunnel metadata: set by a tunnel port on receive (the key and the
    /// outer addresses) or by `set_tunnel` actions for a tunnel port to
    /// use on transmit.
    pub tunnel: Option<TunnelMeta>,
}

/// A packet's tunnel metadata (IPv4 endpoints).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelMeta {
    /// The VXLAN VNI or GRE key (0 if none).
    pub id: u64,
    /// The outer source address (the remote end, on receive).
    pub src: std::net::Ipv4Addr,
    /// The outer destination address (this end on receive; the remote to
    /// send to when set by `set_field:IP->tun_dst`).
    pub dst: std::net::Ipv4Addr,
}

impl Default for TunnelMeta {
    fn default() -> Self {
        TunnelMeta { id: 0, src: std::net::Ipv4Addr::UNSPECIFIED, dst: std::net::Ipv4Addr::UNSPECIFIED }
    }
}

/// The frame's bytes, as [`Packet::data`].
impl AsRef<[u8]> for Packet {
    fn as_ref(&self) -> &[u8] {
        self.data()
    }
}

impl std::fmt::Debug for Packet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Packet").field("len", &self.len()).finish()
    }
}

impl Packet {
    /// The packet's offload state (see [`Offload`]): what a kernel port
    /// received with it, or what a port should pass on with it. A custom
    /// port that carries offloads ([`crate::port::Port::carries_offloads`])
    /// reads it on transmit.
    pub fn offload(&self) -> Offload {
        self.offload
    }

    /// Sets the packet's offload state: a custom port that receives GSO
    /// frames or partial checksums (a TAP or virtio device of its own)
    /// says so here, and the datapath segments or completes them for
    /// ports that cannot carry them.
    ///
    /// # Errors
    /// [`crate::Error::InvalidArgument`] (the state is left unchanged) for
    /// flags other than `NEEDS_CSUM` (1) and `DATA_VALID` (2), a GSO type
    /// other than none, TCPv4 (1), UDP (3) or TCPv6 (4) (ECN bit 0x80
    /// allowed), a GSO size under 64 bytes, or a checksum position
    /// outside the frame.
    pub fn set_offload(&mut self, offload: Offload) -> crate::Result<()> {
        let bad = |why: String| Err(crate::Error::invalid("offload", why));
        if offload.flags & !3 != 0 {
            return bad(format!("flags {:#x}: only NEEDS_CSUM (1) and DATA_VALID (2)", offload.flags));
        }
        if !matches!(offload.gso_type & !0x80, 0 | 1 | 3 | 4) {
            return bad(format!("gso_type {:#x}: none (0), TCPv4 (1), UDP (3) or TCPv6 (4)", offload.gso_type));
        }
        if offload.gso_type != 0 && offload.gso_size < 64 {
            return bad(format!("gso_size {} is under 64 bytes", offload.gso_size));
        }
        let end = offload.csum_start as usize + offload.csum_offset as usize + 2;
        if offload.flags & 1 != 0 && end > self.len() {
            return bad(format!("the checksum at {} is outside the {}-byte frame", end - 2, self.len()));
        }
        self.offload = offload;
        Ok(())
    }

    /// An empty packet with room for a frame of `frame_capacity` bytes.
    pub fn with_capacity(frame_capacity: usize) -> Packet {
        Packet {
            buf: vec![0; HEADROOM + frame_capacity],
            start: HEADROOM,
            end: HEADROOM,
            offload: VnetHdr::default(),
            tunnel: None,
        }
    }

    /// A packet holding a copy of `frame`.
    pub fn from_frame(frame: &[u8]) -> Packet {
        let mut p = Packet::with_capacity(frame.len().max(DEFAULT_BUFFER - HEADROOM));
        p.set_frame(frame);
        p
    }

    /// Replaces the contents with a copy of `frame`, growing if needed.
    pub fn set_frame(&mut self, frame: &[u8]) {
        let need = HEADROOM + frame.len();
        if self.buf.len() < need {
            self.buf.resize(need, 0);
        }
        self.start = HEADROOM;
        self.end = HEADROOM + frame.len();
        self.buf[self.start..self.end].copy_from_slice(frame);
        self.offload = VnetHdr::default();
        self.tunnel = None;
    }

    /// Makes the frame `len` bytes long (contents unspecified) and returns
    /// it for writing; used to fill a buffer in place.
    pub fn reset_with_len(&mut self, len: usize) -> &mut [u8] {
        let need = HEADROOM + len;
        if self.buf.len() < need {
            self.buf.resize(need, 0);
        }
        self.start = HEADROOM;
        self.end = HEADROOM + len;
        self.offload = VnetHdr::default();
        self.tunnel = None;
        &mut self.buf[self.start..self.end]
    }

    /// The frame's bytes.
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// The frame's bytes, writable.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.end]
    }

    /// The frame's length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// True if the frame is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// Copies `other`'s frame into this buffer.
    pub fn copy_from(&mut self, other: &Packet) {
        self.set_frame(other.data());
        self.offload = other.offload;
        self.tunnel = other.tunnel;
    }

    /// True if the frame carries a checksum still to be completed.
    pub(crate) fn needs_csum(&self) -> bool {
        self.offload.flags & NEEDS_CSUM != 0
    }

    /// Moves offload offsets when `by` bytes are inserted (or removed)
    /// in front of the network header.
    fn shift_offload(&mut self, by: i32) {
        if self.needs_csum() {
            self.offload.csum_start = (self.offload.csum_start as i32 + by) as u16;
        }
        if self.offload.gso_type != 0 {
            self.offload.hdr_len = (self.offload.hdr_len as i32 + by) as u16;
        }
    }

    /// For a TCP frame whose IP packet is longer than `ip_mtu` (segments
    /// that arrived merged, with nothing to say so: a tunnel's payload from
    /// a veth underlay), describes it as a GSO frame of `ip_mtu`-sized
    /// segments with the checksum to complete, as the kernel's own GRO
    /// would, so the datapath (or the kernel, for an AF_PACKET port)
    /// segments it on transmit. Returns false, changing nothing, for any
    /// other frame.
    pub(crate) fn mark_tcp_gso(&mut self, ip_mtu: usize) -> bool {
        let d = self.data();
        let Some((l3, et)) = crate::wire::l3_start(d) else { return false };
        let (gso_type, ip_hl, pseudo) = match et {
            ethertype::IPV4 if d.len() >= l3 + 20 => {
                let hl = (d[l3] & 0x0f) as usize * 4;
                let fragment = be16(d, l3 + 6) & 0x3fff != 0;
                if d[l3 + 9] != 6 || fragment || hl < 20 {
                    return false;
                }
                let mut ph = [0u8; 12];
                ph[..8].copy_from_slice(&d[l3 + 12..l3 + 20]);
                ph[9] = 6;
                (1, hl, ph.to_vec())
            }
            ethertype::IPV6 if d.len() >= l3 + 40 && d[l3 + 6] == 6 => {
                let mut ph = vec![0u8; 40];
                ph[..32].copy_from_slice(&d[l3 + 8..l3 + 40]);
                ph[39] = 6;
                (4, 40, ph)
            }
            _ => return false,
        };
        let l4 = l3 + ip_hl;
        if d.len() < l4 + 20 || d.len() - l3 <= ip_mtu {
            return false;
        }
        let tcp_hl = (d[l4 + 12] >> 4) as usize * 4;
        if tcp_hl < 20 || l4 + tcp_hl > d.len() || ip_mtu <= ip_hl + tcp_hl {
            return false;
        }
        // The checksum field holds the pseudo-header sum (uncomplemented),
        // as for any frame whose checksum is left to offload.
        let mut pseudo = pseudo;
        let tcp_len = (d.len() - l4) as u32;
        let n = pseudo.len();
        if gso_type == 1 {
            pseudo[10..12].copy_from_slice(&(tcp_len as u16).to_be_bytes());
        } else {
            pseudo[32..36].copy_from_slice(&tcp_len.to_be_bytes());
        }
        let sum = !internet_checksum(&pseudo[..n]);
        self.data_mut()[l4 + 16..l4 + 18].copy_from_slice(&sum.to_be_bytes());
        self.offload = VnetHdr {
            flags: NEEDS_CSUM,
            gso_type,
            hdr_len: (l4 + tcp_hl) as u16,
            gso_size: (ip_mtu - ip_hl - tcp_hl) as u16,
            csum_start: l4 as u16,
            csum_offset: 16,
        };
        true
    }

    /// True if the frame is a GSO frame holding more than one segment.
    pub(crate) fn is_multi_segment(&self) -> bool {
        let o = self.offload;
        o.gso_type != 0 && self.len() > o.hdr_len as usize + o.gso_size as usize
    }

    /// Makes the frame self-contained for a port that takes no offload
    /// metadata: completes a pending checksum in software.
    ///
    /// # Errors
    /// [`DropReason::TooBig`] for a GSO frame of several segments (use
    /// [`Packet::segment`] for those).
    pub(crate) fn resolve_offloads(&mut self) -> Result<(), DropReason> {
        if self.is_multi_segment() {
            return Err(DropReason::TooBig);
        }
        let o = self.offload;
        if self.needs_csum() {
            let (start, at) = (o.csum_start as usize, o.csum_start as usize + o.csum_offset as usize);
            let d = self.data_mut();
            if at + 2 <= d.len() && start < d.len() {
                // The field holds the pseudo-header sum; summing the whole
                // range over it and folding gives the final checksum.
                let mut csum = internet_checksum(&d[start..]);
                // A UDP checksum that computes to zero is sent as all ones.
                if csum == 0 && o.csum_offset == 6 {
                    csum = 0xffff;
                }
                d[at..at + 2].copy_from_slice(&csum.to_be_bytes());
            }
        }
        self.offload = VnetHdr::default();
        Ok(())
    }

    /// Segments a TCP GSO frame (IPv4, or IPv6 without extension headers)
    /// into frames of at most `gso_size` payload bytes, as the kernel's GSO
    /// would: each with its own IPv4 ID, sequence number, length and
    /// checksums; FIN and PSH only on the last segment, CWR only on the
    /// first. The segments are appended to `out`, buffers from `pool`.
    ///
    /// # Errors
    /// [`DropReason::TooBig`] for anything else (UDP GSO, extension
    /// headers, inconsistent headers); nothing is appended.
    pub(crate) fn segment(&self, pool: &mut PacketPool, out: &mut Vec<Packet>) -> Result<(), DropReason> {
        const FIN: u8 = 0x01;
        const PSH: u8 = 0x08;
        const CWR: u8 = 0x80;
        let d = self.data();
        let bad = DropReason::TooBig;
        let (l3, et) = crate::wire::l3_start(d).ok_or(bad)?;
        let (v4, ip_hl, proto_at) = match et {
            ethertype::IPV4 if d.len() > l3 + 20 => (true, (d[l3] & 0x0f) as usize * 4, l3 + 9),
            ethertype::IPV6 if d.len() > l3 + 40 => (false, 40, l3 + 6),
            _ => return Err(bad),
        };
        let l4 = l3 + ip_hl;
        if ip_hl < 20 || d[proto_at] != 6 || d.len() < l4 + 20 {
            return Err(bad);
        }
        let tcp_hl = (d[l4 + 12] >> 4) as usize * 4;
        let hdr = l4 + tcp_hl;
        let mss = self.offload.gso_size as usize;
        // Nothing to carry (found by the `offloads` fuzz target: the frame
        // would have vanished, uncounted): refused like the rest.
        if tcp_hl < 20 || hdr >= d.len() || mss == 0 {
            return Err(bad);
        }
        let seq = u32::from_be_bytes([d[l4 + 4], d[l4 + 5], d[l4 + 6], d[l4 + 7]]);
        let ip_id = if v4 { be16(d, l3 + 4) } else { 0 };
        let chunks = d[hdr..].chunks(mss);
        let n = chunks.len();
        for (i, chunk) in chunks.enumerate() {
            let mut p = pool.get();
            let buf = p.reset_with_len(hdr + chunk.len());
            buf[..hdr].copy_from_slice(&d[..hdr]);
            buf[hdr..].copy_from_slice(chunk);
            if v4 {
                buf[l3 + 2..l3 + 4].copy_from_slice(&((ip_hl + tcp_hl + chunk.len()) as u16).to_be_bytes());
                buf[l3 + 4..l3 + 6].copy_from_slice(&ip_id.wrapping_add(i as u16).to_be_bytes());
                buf[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
                let c = internet_checksum(&buf[l3..l3 + ip_hl]);
                buf[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
            } else {
                buf[l3 + 4..l3 + 6].copy_from_slice(&((tcp_hl + chunk.len()) as u16).to_be_bytes());
            }
            let s = seq.wrapping_add((i * mss) as u32);
            buf[l4 + 4..l4 + 8].copy_from_slice(&s.to_be_bytes());
            let mut flags = buf[l4 + 13];
            if i + 1 < n {
                flags &= !(FIN | PSH);
            }
            if i > 0 {
                flags &= !CWR;
            }
            buf[l4 + 13] = flags;
            crate::wire::checksum::complete_l4_checksum(buf);
            p.tunnel = self.tunnel;
            out.push(p);
        }
        Ok(())
    }

    /// Inserts an 802.1Q tag after the MAC addresses.
    ///
    /// The frame must be at least 12 bytes long (callers check the Ethernet
    /// header first); a shorter frame is left unchanged.
    pub fn push_vlan(&mut self, tci: VlanTci) {
        self.push_tag(ethertype::VLAN, tci);
    }

    /// The frame's outer tag (TPID 0x8100 or 0x88a8), if it has a whole one.
    pub fn outer_tag(&self) -> Option<crate::wire::Tag> {
        crate::wire::vlan::walk(self.data()).and_then(|t| t.outer())
    }

    /// True if the frame carries a whole outer VLAN tag.
    pub fn is_tagged(&self) -> bool {
        self.outer_tag().is_some()
    }

    /// The outer tag's TCI, if the frame is tagged.
    pub fn vlan_tci(&self) -> Option<VlanTci> {
        self.outer_tag().map(|t| t.tci)
    }

    /// Makes room for `n` bytes of headers in front of the frame and
    /// returns them (contents unspecified), for the caller to fill: an
    /// encapsulation's outer headers. Offload offsets move with the frame.
    pub(crate) fn push_front(&mut self, n: usize) -> &mut [u8] {
        if self.start < n {
            let len = self.len();
            let grow = n.max(HEADROOM);
            self.buf.splice(self.start..self.start, std::iter::repeat_n(0, grow));
            self.start += grow;
            self.end = self.start + len;
        }
        self.start -= n;
        self.shift_offload(n as i32);
        &mut self.buf[self.start..self.start + n]
    }

    /// Appends `bytes` to the frame, growing the buffer as needed.
    pub(crate) fn extend_frame(&mut self, bytes: &[u8]) {
        let end = self.end + bytes.len();
        if self.buf.len() < end {
            self.buf.resize(end, 0);
        }
        self.buf[self.end..end].copy_from_slice(bytes);
        self.end = end;
    }

    /// Cuts the frame to its first `len` bytes (Ethernet padding after an
    /// IP packet); nothing if it is shorter.
    pub(crate) fn truncate(&mut self, len: usize) {
        if len < self.len() {
            self.end = self.start + len;
        }
    }

    /// Drops the first `n` bytes of the frame (a decapsulation's outer
    /// headers) without copying what follows; offload metadata is cleared
    /// (it described the outer packet). False, unchanged, if the frame is
    /// shorter.
    pub(crate) fn pull_front(&mut self, n: usize) -> bool {
        if n > self.len() {
            return false;
        }
        self.start += n;
        self.offload = VnetHdr::default();
        true
    }

    /// Inserts a tag with TPID `tpid` (0x8100 or 0x88a8) after the MACs.
    pub fn push_tag(&mut self, tpid: u16, tci: VlanTci) {
        if self.len() < ETHERTYPE_OFFSET {
            return;
        }
        if self.start < 4 {
            // Headroom used up (only by repeated pushes): make room again.
            let len = self.len();
            self.buf.splice(self.start..self.start, std::iter::repeat_n(0, HEADROOM));
            self.start += HEADROOM;
            self.end = self.start + len;
        }
        self.buf.copy_within(self.start..self.start + ETHERTYPE_OFFSET, self.start - 4);
        self.start -= 4;
        self.shift_offload(4);
        let tag = &mut self.buf[self.start + ETHERTYPE_OFFSET..self.start + ETHERTYPE_OFFSET + 4];
        tag[..2].copy_from_slice(&tpid.to_be_bytes());
        tag[2..].copy_from_slice(&tci.0.to_be_bytes());
    }

    /// Removes the outer VLAN tag (TPID 0x8100 or 0x88a8) and returns its
    /// TCI, or `None` (frame unchanged) if the frame is not tagged.
    pub fn pop_vlan(&mut self) -> Option<VlanTci> {
        let tci = self.outer_tag()?.tci;
        self.buf.copy_within(self.start..self.start + ETHERTYPE_OFFSET, self.start + 4);
        self.start += 4;
        self.shift_offload(-4);
        Some(tci)
    }

    /// Rewrites the outer tag's TCI in place; the frame must be tagged.
    pub fn set_vlan_tci(&mut self, tci: VlanTci) {
        if self.outer_tag().is_some() {
            let d = self.data_mut();
            d[ETHERTYPE_OFFSET + 2..ETHERTYPE_OFFSET + 4].copy_from_slice(&tci.0.to_be_bytes());
        }
    }
}

/// A switch-wide, bounded, lock-free queue of spare buffers: runtimes
/// return buffers here when their own free lists are full, and datapath
/// pools draw on it before they allocate. It closes the loop for flood
/// copies, which are made in the datapath and consumed by runtimes.
pub(crate) type SpareBuffers = std::sync::Arc<crossbeam::queue::ArrayQueue<Packet>>;

/// A free list of packet buffers owned by one thread (no atomics on the
/// fast path), backed by the switch's shared spare buffers.
///
/// Bounded: buffers returned beyond `max` go to the spare queue or are
/// freed, so a burst of floods cannot grow memory without limit.
#[derive(Debug)]
pub struct PacketPool {
    free: Vec<Packet>,
    max: usize,
    buffer_size: usize,
    allocated: u64,
    spare: Option<SpareBuffers>,
}

impl PacketPool {
    /// A pool that keeps at most `max` free buffers of `buffer_size` bytes.
    pub fn new(max: usize, buffer_size: usize) -> Self {
        PacketPool { free: Vec::with_capacity(max), max, buffer_size, allocated: 0, spare: None }
    }

    /// Draws on (and overflows into) `spare` when the local list runs out.
    pub(crate) fn with_spare(mut self, spare: SpareBuffers) -> Self {
        self.spare = Some(spare);
        self
    }

    /// A buffer from the pool, or a new one.
    #[inline]
    pub fn get(&mut self) -> Packet {
        if let Some(p) = self.free.pop() {
            return p;
        }
        if let Some(p) = self.spare.as_ref().and_then(|s| s.pop()) {
            return p;
        }
        self.allocated += 1;
        Packet::with_capacity(self.buffer_size - HEADROOM)
    }

    /// A copy of `src` in a pooled buffer.
    #[inline]
    pub fn clone_packet(&mut self, src: &Packet) -> Packet {
        let mut p = self.get();
        p.copy_from(src);
        p
    }

    /// Returns a buffer to the pool.
    #[inline]
    pub fn put(&mut self, p: Packet) {
        if self.free.len() < self.max {
            self.free.push(p);
        } else if let Some(s) = &self.spare {
            let _ = s.push(p);
        }
    }

    /// How many buffers this pool has had to allocate so far.
    pub fn allocated(&self) -> u64 {
        self.allocated
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn set_offload_refuses_what_the_datapath_cannot_do() {
        let mut p = Packet::from_frame(&[0u8; 100]);
        let tcp = Offload { flags: 1, gso_type: 1, hdr_len: 54, gso_size: 1448, csum_start: 34, csum_offset: 16 };
        assert!(p.set_offload(tcp).is_ok());
        assert_eq!(p.offload(), tcp);
        for bad in [
            Offload { flags: 4, ..tcp },
            Offload { gso_type: 5, ..tcp },
            Offload { gso_size: 1, ..tcp },
            Offload { csum_start: 90, ..tcp },
        ] {
            let e = p.set_offload(bad).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument, "{bad:?}");
            assert_eq!(p.offload(), tcp, "left unchanged");
        }
        assert!(p.set_offload(Offload { gso_type: 0x81, ..tcp }).is_ok(), "ECN");
        assert!(p.set_offload(Offload::default()).is_ok());
    }

    use super::*;

    fn frame() -> Vec<u8> {
        let mut f = vec![0u8; 60];
        f[..6].copy_from_slice(&[1, 2, 3, 4, 5, 6]);
        f[6..12].copy_from_slice(&[7, 8, 9, 10, 11, 12]);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        for (i, b) in f[14..].iter_mut().enumerate() {
            *b = i as u8;
        }
        f
    }

    #[test]
    fn push_then_pop_restores_frame() {
        let f = frame();
        let mut p = Packet::from_frame(&f);
        p.push_vlan(VlanTci::new(100, 3));
        assert_eq!(p.len(), 64);
        let d = p.data();
        assert_eq!(&d[..12], &f[..12]);
        assert_eq!(&d[12..16], &[0x81, 0x00, 0x60, 0x64]);
        assert_eq!(&d[16..], &f[12..]);
        assert_eq!(p.pop_vlan(), Some(VlanTci::new(100, 3)));
        assert_eq!(p.data(), &f[..]);
        assert_eq!(p.pop_vlan(), None);
    }

    #[test]
    fn push_beyond_headroom_grows() {
        let f = frame();
        let mut p = Packet::from_frame(&f);
        for i in 0..(HEADROOM / 4 + 3) {
            p.push_vlan(VlanTci::new(i as u16, 0));
        }
        assert_eq!(p.len(), f.len() + 4 * (HEADROOM / 4 + 3));
        assert_eq!(&p.data()[..12], &f[..12]);
        assert_eq!(&p.data()[p.len() - 48..], &f[12..]);
    }

    #[test]
    fn set_tci_and_short_frames() {
        let mut p = Packet::from_frame(&frame());
        p.push_vlan(VlanTci::new(5, 0));
        p.set_vlan_tci(VlanTci::new(6, 1));
        assert_eq!(p.pop_vlan(), Some(VlanTci::new(6, 1)));
        let mut short = Packet::from_frame(&[0u8; 8]);
        short.push_vlan(VlanTci::new(1, 0));
        assert_eq!(short.len(), 8);
        assert_eq!(short.pop_vlan(), None);
    }

    /// A TCP GSO frame as veth hands it over: one super-frame, a partial
    /// checksum, and the virtio-net header saying how to cut it.
    fn gso_frame(v6: bool, payload: usize, mss: u16) -> Packet {
        use smoltcp::wire::{IpAddress, Ipv4Address, Ipv6Address, TcpPacket};
        let (l3, ip_hl) = (14, if v6 { 40 } else { 20 });
        let mut f = vec![0u8; l3 + ip_hl + 20 + payload];
        f[12..14].copy_from_slice(if v6 { &[0x86, 0xdd] } else { &[0x08, 0x00] });
        let (src, dst): (IpAddress, IpAddress) = if v6 {
            f[l3] = 0x60;
            f[l3 + 4..l3 + 6].copy_from_slice(&((20 + payload) as u16).to_be_bytes());
            f[l3 + 6] = 6;
            f[l3 + 7] = 64;
            f[l3 + 8..l3 + 24].copy_from_slice(&Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 1).octets());
            f[l3 + 24..l3 + 40].copy_from_slice(&Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 2).octets());
            (Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 1).into(), Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 2).into())
        } else {
            f[l3] = 0x45;
            f[l3 + 2..l3 + 4].copy_from_slice(&((20 + 20 + payload) as u16).to_be_bytes());
            f[l3 + 4..l3 + 6].copy_from_slice(&[0x10, 0x00]);
            f[l3 + 8] = 64;
            f[l3 + 9] = 6;
            f[l3 + 12..l3 + 16].copy_from_slice(&[10, 0, 0, 1]);
            f[l3 + 16..l3 + 20].copy_from_slice(&[10, 0, 0, 2]);
            (Ipv4Address::new(10, 0, 0, 1).into(), Ipv4Address::new(10, 0, 0, 2).into())
        };
        let l4 = l3 + ip_hl;
        for (i, b) in f[l4 + 20..].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let mut tcp = TcpPacket::new_unchecked(&mut f[l4..]);
        tcp.set_src_port(40000);
        tcp.set_dst_port(5001);
        tcp.set_seq_number(smoltcp::wire::TcpSeqNumber(1_000_000));
        tcp.set_header_len(20);
        tcp.set_ack(true);
        tcp.set_psh(true);
        tcp.set_fin(true);
        tcp.set_cwr(true);
        tcp.fill_checksum(&src, &dst);
        let mut p = Packet::from_frame(&f);
        p.offload = VnetHdr {
            flags: NEEDS_CSUM,
            gso_type: if v6 { 4 } else { 1 },
            hdr_len: (l4 + 20) as u16,
            gso_size: mss,
            csum_start: l4 as u16,
            csum_offset: 16,
        };
        p
    }

    #[test]
    fn merged_tcp_segments_are_described_as_gso() {
        for v6 in [false, true] {
            // What a veth underlay hands over: a merged frame, no metadata.
            let mut merged = gso_frame(v6, 4000, 1);
            merged.offload = VnetHdr::default();
            assert!(!merged.clone().mark_tcp_gso(8000), "fits: left alone");
            assert!(merged.mark_tcp_gso(1450));
            let ip_hl = if v6 { 40 } else { 20 };
            assert_eq!(merged.offload.gso_size as usize, 1450 - ip_hl - 20);
            let mut pool = PacketPool::new(8, DEFAULT_BUFFER);
            let mut segs = Vec::new();
            merged.segment(&mut pool, &mut segs).unwrap();
            assert_eq!(segs.len(), 3, "4000 bytes in 1410/1390-byte segments");
            for s in &segs {
                assert!(s.len() - 14 <= 1450);
                let mut check = s.clone();
                crate::wire::checksum::complete_l4_checksum(check.data_mut());
                assert_eq!(check.data(), s.data(), "each segment's checksum is complete");
            }
            // Not TCP (or not IP): nothing to describe.
            let mut other = Packet::from_frame(&[0u8; 3000]);
            assert!(!other.mark_tcp_gso(1450));
        }
    }

    #[test]
    fn tcp_gso_frames_are_segmented_like_the_kernel_does() {
        use smoltcp::wire::{EthernetFrame, EthernetProtocol, Ipv4Packet, Ipv6Packet, TcpPacket};
        for v6 in [false, true] {
            let gso = gso_frame(v6, 2500, 1000);
            assert!(gso.is_multi_segment());
            let mut pool = PacketPool::new(8, DEFAULT_BUFFER);
            let mut segs = Vec::new();
            gso.segment(&mut pool, &mut segs).unwrap();
            assert_eq!(segs.len(), 3);
            let mut payload = Vec::new();
            for (i, s) in segs.iter().enumerate() {
                let eth = EthernetFrame::new_checked(s.data()).unwrap();
                let (src, dst, l4): (smoltcp::wire::IpAddress, smoltcp::wire::IpAddress, &[u8]) =
                    if eth.ethertype() == EthernetProtocol::Ipv4 {
                        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
                        assert!(ip.verify_checksum(), "IPv4 header checksum of segment {i}");
                        assert_eq!(ip.ident(), 0x1000 + i as u16);
                        (ip.src_addr().into(), ip.dst_addr().into(), ip.payload())
                    } else {
                        let ip = Ipv6Packet::new_checked(eth.payload()).unwrap();
                        (ip.src_addr().into(), ip.dst_addr().into(), ip.payload())
                    };
                let tcp = TcpPacket::new_checked(l4).unwrap();
                assert!(tcp.verify_checksum(&src, &dst), "TCP checksum of segment {i} (v6 {v6})");
                assert_eq!(tcp.seq_number().0, 1_000_000 + 1000 * i as i32);
                let last = i == 2;
                assert_eq!((tcp.fin(), tcp.psh(), tcp.cwr(), tcp.ack()), (last, last, i == 0, true), "flags of {i}");
                payload.extend_from_slice(tcp.payload());
                assert!(s.offload == VnetHdr::default());
            }
            let expected: Vec<u8> = (0..2500).map(|i| (i % 251) as u8).collect();
            assert_eq!(payload, expected, "the payload reassembles exactly");
        }
    }

    #[test]
    fn single_segment_gso_and_partial_checksums_resolve_in_place() {
        use smoltcp::wire::{EthernetFrame, Ipv4Packet, TcpPacket};
        let mut p = gso_frame(false, 500, 1000);
        assert!(!p.is_multi_segment());
        // Only the pseudo-header sum in the field, as offload leaves it.
        let l4 = 34;
        let pseudo = {
            let d = p.data();
            let mut ph = Vec::new();
            ph.extend_from_slice(&d[26..34]);
            ph.extend_from_slice(&[0, 6]);
            ph.extend_from_slice(&((d.len() - l4) as u16).to_be_bytes());
            !internet_checksum(&ph)
        };
        p.data_mut()[l4 + 16..l4 + 18].copy_from_slice(&pseudo.to_be_bytes());
        p.resolve_offloads().unwrap();
        let eth = EthernetFrame::new_checked(p.data()).unwrap();
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(tcp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()));
    }

    #[test]
    fn pool_recycles_and_is_bounded() {
        let mut pool = PacketPool::new(2, DEFAULT_BUFFER);
        let a = pool.get();
        let b = pool.get();
        let c = pool.get();
        assert_eq!(pool.allocated(), 3);
        pool.put(a);
        pool.put(b);
        pool.put(c);
        let _ = pool.get();
        let _ = pool.get();
        let _ = pool.get();
        assert_eq!(pool.allocated(), 4);
    }
}
