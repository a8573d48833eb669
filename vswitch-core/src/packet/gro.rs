//! Receive-side coalescing of TCP segments (what the kernel's GRO does):
//! consecutive in-order segments of one IPv4 TCP flow in a burst become
//! one GSO frame, so a port that carries offloads (AF_PACKET with
//! PACKET_VNET_HDR, a TAP, vhost-user) hands the receiver one super-frame
//! instead of dozens of segments, and the datapath switches it once. A
//! port that takes no offloads gets the segments back from the datapath's
//! software segmentation.
//!
//! The rules are the kernel's (net/ipv4/tcp_offload.c, tcp_gro_receive):
//! same addresses, ports, TOS, TTL, DF, ACK number, window and TCP
//! options (so timestamps must be equal: segments of one sender's
//! super-frame); the next sequence number exactly; flags ACK only, or PSH
//! on the last; every segment the size of the first but the last, which
//! may be shorter and closes the run. No IP options, no fragments, no
//! VLAN tags, no pending offload on either side; at most 64,000 bytes.

use super::{Packet, PacketPool};

/// Largest IP packet a merged frame may become.
const MAX_IP: usize = 64_000;
const ACK: u8 = 0x10;
const PSH: u8 = 0x08;

/// Where a candidate segment's parts are.
struct Seg {
    /// TCP header length.
    thl: usize,
    seq: u32,
    payload: usize,
    flags: u8,
}

/// The segment `p` is, if it can take part in coalescing at all.
fn seg(p: &Packet) -> Option<Seg> {
    let d = p.data();
    if p.offload != Default::default() || d.len() < 14 + 20 + 20 || d[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &d[14..];
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    // IPv4, no options, TCP, not a fragment, and the frame exactly the IP
    // packet (no padding).
    if ip[0] != 0x45 || ip[9] != 6 || u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 || total != ip.len() {
        return None;
    }
    let t = &ip[20..];
    let thl = (t[12] >> 4) as usize * 4;
    if thl < 20 || t.len() < thl {
        return None;
    }
    let flags = t[13];
    if flags & !(ACK | PSH) != 0 || flags & ACK == 0 {
        return None;
    }
    // A segment is merged only if its checksum is right: the merged frame's
    // is left to offload, which would hide a bad one from the receiver.
    let mut pseudo = [0u8; 12];
    pseudo[..8].copy_from_slice(&ip[12..20]);
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&(t.len() as u16).to_be_bytes());
    if super::checksum_over(&[&pseudo, t]) != 0 {
        return None;
    }
    Some(Seg { thl, seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]), payload: t.len() - thl, flags })
}

/// True if `p` (segment `s`) continues the run `head` (segment `h`, its
/// payload now `len` bytes): the same flow and headers but for the
/// sequence number, which follows on.
fn follows(head: &Packet, h: &Seg, len: usize, p: &Packet, s: &Seg) -> bool {
    let (a, b) = (&head.data()[14..], &p.data()[14..]);
    s.thl == h.thl
        && s.payload > 0
        && s.payload <= h.payload
        && h.seq.wrapping_add(len as u32) == s.seq
        && 20 + h.thl + len + s.payload <= MAX_IP
        && head.tunnel == p.tunnel
        && a[1] == b[1]                   // TOS (ECN included)
        && a[6] == b[6]                   // DF
        && a[8] == b[8]                   // TTL
        && a[12..20] == b[12..20]         // addresses
        && a[20..24] == b[20..24]         // ports
        && a[28..32] == b[28..32]         // ACK number
        && a[34..36] == b[34..36]         // window
        && a[40..20 + h.thl] == b[40..20 + s.thl] // options
}

/// Coalesces runs of TCP segments in `batch[from..]`, in place; packets
/// that are not merged keep their order, and a merged frame takes its
/// first segment's place. Freed buffers go to `pool`.
pub(crate) fn coalesce_tcp(batch: &mut Vec<Packet>, from: usize, pool: &mut PacketPool) {
    if batch.len() < from + 2 {
        return;
    }
    let mut out: Vec<Packet> = Vec::with_capacity(batch.len() - from);
    // The run being built: its head's index in `out`, its first segment,
    // its payload so far, and whether it is closed (a short or PSH one).
    let mut run: Option<(usize, Seg, usize, bool)> = None;
    for p in batch.drain(from..) {
        let s = seg(&p);
        if let (Some((at, h, len, closed)), Some(s)) = (run.as_mut(), s.as_ref())
            && !*closed
            && follows(&out[*at], h, *len, &p, s)
        {
            let head = &mut out[*at];
            head.extend_frame(&p.data()[14 + 20 + s.thl..]);
            *len += s.payload;
            // The merged frame carries the last segment's PSH.
            head.data_mut()[14 + 20 + 13] |= s.flags & PSH;
            *closed = s.payload < h.payload || s.flags & PSH != 0;
            pool.put(p);
            continue;
        }
        if let Some((at, h, len, _)) = run.take() {
            finish(&mut out[at], &h, len);
        }
        if let Some(s) = s {
            let closed = s.flags & PSH != 0;
            let len = s.payload;
            run = Some((out.len(), s, len, closed));
        }
        out.push(p);
    }
    if let Some((at, h, len, _)) = run.take() {
        finish(&mut out[at], &h, len);
    }
    batch.append(&mut out);
}

/// Makes the head of a run of more than one segment the GSO frame they
/// stand for: IPv4 length and checksum for the whole, the TCP checksum
/// left to offload, segments of the first one's size.
fn finish(head: &mut Packet, h: &Seg, len: usize) {
    if len == h.payload {
        return;
    }
    let ip_len = 20 + h.thl + len;
    let d = head.data_mut();
    d[16..18].copy_from_slice(&(ip_len as u16).to_be_bytes());
    d[24..26].copy_from_slice(&[0, 0]);
    let csum = super::internet_checksum(&d[14..34]);
    d[24..26].copy_from_slice(&csum.to_be_bytes());
    let marked = head.mark_tcp_gso(20 + h.thl + h.payload);
    debug_assert!(marked, "a merged run is a TCP frame longer than one segment");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 TCP segment of `payload` bytes at `seq` with `flags`, its
    /// checksum right.
    fn segment(seq: u32, payload: usize, flags: u8, sport: u16) -> Packet {
        let mut f = vec![0u8; 14 + 20 + 32 + payload];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip_len = (20 + 32 + payload) as u16;
        f[14] = 0x45;
        f[16..18].copy_from_slice(&ip_len.to_be_bytes());
        f[20] = 0x40;
        f[22] = 64;
        f[23] = 6;
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[10, 0, 0, 2]);
        let c = super::super::internet_checksum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        let t = 34;
        f[t..t + 2].copy_from_slice(&sport.to_be_bytes());
        f[t + 2..t + 4].copy_from_slice(&80u16.to_be_bytes());
        f[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
        f[t + 8..t + 12].copy_from_slice(&7u32.to_be_bytes());
        f[t + 12] = 8 << 4;
        f[t + 13] = flags;
        f[t + 14..t + 16].copy_from_slice(&500u16.to_be_bytes());
        // Timestamps option, the same in every segment.
        f[t + 20..t + 32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 3]);
        for (i, b) in f[t + 32..].iter_mut().enumerate() {
            *b = (seq as usize + i) as u8;
        }
        let mut pseudo = [0u8; 12];
        pseudo[..8].copy_from_slice(&f[26..34]);
        pseudo[9] = 6;
        pseudo[10..12].copy_from_slice(&((32 + payload) as u16).to_be_bytes());
        let c = super::super::checksum_over(&[&pseudo, &f[t..]]);
        f[t + 16..t + 18].copy_from_slice(&c.to_be_bytes());
        Packet::from_frame(&f)
    }

    #[test]
    fn a_run_becomes_one_gso_frame_that_segments_back_to_the_same_bytes() {
        let mut pool = PacketPool::new(64, 2048);
        let segs: Vec<Packet> = (0..5u32)
            .map(|i| segment(1000 + i * 1448, if i == 4 { 500 } else { 1448 }, if i == 4 { ACK | PSH } else { ACK }, 1))
            .collect();
        let mut batch = segs.clone();
        coalesce_tcp(&mut batch, 0, &mut pool);
        assert_eq!(batch.len(), 1);
        let m = &batch[0];
        assert_eq!(m.len(), 14 + 20 + 32 + 4 * 1448 + 500);
        assert_eq!(m.offload.gso_type, 1);
        assert_eq!(m.offload.gso_size, 1448);
        assert_eq!(super::super::internet_checksum(&m.data()[14..34]), 0, "IPv4 header checksum");
        assert_eq!(m.data()[34 + 13], ACK | PSH);
        let mut out = Vec::new();
        m.segment(&mut pool, &mut out).unwrap();
        assert_eq!(out.len(), 5);
        for (a, b) in out.iter().zip(&segs) {
            // Same sequence numbers, flags (PSH on the last only) and
            // payload as the originals.
            let (a, b) = (a.data(), b.data());
            assert_eq!(a.len(), b.len());
            assert_eq!(a[38..42], b[38..42], "seq");
            assert_eq!(a[47], b[47], "flags");
            assert_eq!(a[66..], b[66..], "payload");
        }
    }

    #[test]
    fn other_flows_gaps_and_flags_break_runs_and_keep_order() {
        let mut pool = PacketPool::new(64, 2048);
        let mut batch = vec![
            segment(0, 100, ACK, 1),
            segment(100, 100, ACK, 1),
            segment(0, 100, ACK, 2),          // another flow
            segment(300, 100, ACK, 1),        // a gap
            segment(400, 100, ACK | 0x01, 1), // FIN
            segment(500, 100, ACK, 1),
        ];
        // A bad checksum is never merged.
        let mut bad = segment(600, 100, ACK, 1);
        bad.data_mut()[70] ^= 1;
        batch.push(bad);
        coalesce_tcp(&mut batch, 0, &mut pool);
        let seqs: Vec<(u16, u32, usize)> = batch
            .iter()
            .map(|p| {
                let d = p.data();
                (u16::from_be_bytes([d[34], d[35]]), u32::from_be_bytes([d[38], d[39], d[40], d[41]]), d.len())
            })
            .collect();
        assert_eq!(
            seqs,
            vec![(1, 0, 14 + 52 + 200), (2, 0, 166), (1, 300, 166), (1, 400, 166), (1, 500, 166), (1, 600, 166)],
            "merged only the first two"
        );
    }
}
