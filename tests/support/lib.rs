//! Helpers shared by the end-to-end tests: frame builders and port drains.

use std::time::Duration;

use vswitch_core::{MacAddr, MemoryPortHandle, Packet};

/// A MAC address 02:00:00:00:xx:yy for host `n`.
pub fn mac(n: u16) -> MacAddr {
    let b = n.to_be_bytes();
    MacAddr([0x02, 0, 0, 0, b[0], b[1]])
}

/// An untagged 64-byte frame carrying `seq` in its payload.
pub fn frame(dst: MacAddr, src: MacAddr, seq: u32) -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[..6].copy_from_slice(&dst.0);
    f[6..12].copy_from_slice(&src.0);
    f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes()); // local experimental EtherType
    f[14..18].copy_from_slice(&seq.to_be_bytes());
    f
}

/// A frame with an 802.1Q tag of `vid` (PCP `pcp`) after the addresses.
pub fn tagged(dst: MacAddr, src: MacAddr, vid: u16, pcp: u8, seq: u32) -> Vec<u8> {
    let untagged = frame(dst, src, seq);
    let mut f = Vec::with_capacity(68);
    f.extend_from_slice(&untagged[..12]);
    f.extend_from_slice(&0x8100u16.to_be_bytes());
    f.extend_from_slice(&(((pcp as u16) << 13) | vid).to_be_bytes());
    f.extend_from_slice(&untagged[12..]);
    f
}

/// The VLAN ID of a frame's 802.1Q tag, if it has one.
pub fn vid_of(f: &[u8]) -> Option<u16> {
    (f.len() >= 16 && f[12..14] == [0x81, 0x00]).then(|| u16::from_be_bytes([f[14], f[15]]) & 0x0fff)
}

/// The sequence number `frame` or `tagged` wrote.
pub fn seq_of(f: &[u8]) -> u32 {
    let at = if vid_of(f).is_some() { 18 } else { 14 };
    u32::from_be_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]])
}

/// Every packet waiting on `h`.
pub fn drain(h: &MemoryPortHandle) -> Vec<Packet> {
    std::iter::from_fn(|| h.recv()).collect()
}

/// Receives packets on `h` until `n` have arrived or `timeout` passes.
pub fn recv_n(h: &MemoryPortHandle, n: usize, timeout: Duration) -> Vec<Packet> {
    let deadline = std::time::Instant::now() + timeout;
    let mut got = Vec::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        if let Some(p) = h.recv_timeout(left) {
            got.push(p);
        }
    }
    got
}
