//! Internet checksums (RFC 1071) and the TCP/UDP checksum of a whole
//! frame, for the datapath's rewrites, GSO segmentation and ports whose
//! frames arrive with a checksum left to do.

use super::ethertype;

/// The Internet checksum (RFC 1071) of `bytes`, complemented.
/// RFC 1624 eqn. 3: a checksum after one of the 16-bit words it covers
/// changed from `old` to `new`.
#[inline]
pub(crate) fn csum_replace(csum: u16, old: u16, new: u16) -> u16 {
    let mut sum = (!csum as u32) + (!old as u32 & 0xffff) + new as u32;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

pub(crate) fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    for c in bytes.chunks(2) {
        sum += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u64;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The internet checksum of `parts` one after another (every part but the
/// last of even length, as a pseudo-header is), 8 bytes at a time.
pub(crate) fn checksum_over(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    for part in parts {
        let mut words = part.chunks_exact(8);
        for w in &mut words {
            let v = u64::from_be_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
            // Four 16-bit words at once: add the halves, carry folded later.
            sum += (v >> 32) + (v & 0xffff_ffff);
        }
        for c in words.remainder().chunks(2) {
            sum += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u64;
        }
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Computes the TCP or UDP checksum of an Ethernet frame afresh (IPv4 or
/// IPv6 without extension headers, not a fragment), writing it into the
/// frame. For frames that may carry a partial checksum with nothing to say
/// so (AF_XDP from a virtual interface with checksum offload). Anything
/// else is left as it is.
pub(crate) fn complete_l4_checksum(frame: &mut [u8]) {
    use smoltcp::wire::{IpAddress, IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket};
    let Some((l3, et)) = super::l3_start(frame) else { return };
    let fill = |proto: IpProtocol, payload: &mut [u8], src: IpAddress, dst: IpAddress| match proto {
        IpProtocol::Tcp => {
            if let Ok(mut t) = TcpPacket::new_checked(payload) {
                t.fill_checksum(&src, &dst);
            }
        }
        IpProtocol::Udp => {
            if let Ok(mut u) = UdpPacket::new_checked(payload)
                && u.checksum() != 0
            {
                u.fill_checksum(&src, &dst);
            }
        }
        _ => {}
    };
    match et {
        ethertype::IPV4 => {
            let Ok(mut ip) = Ipv4Packet::new_checked(&mut frame[l3..]) else { return };
            if ip.more_frags() || ip.frag_offset() != 0 {
                return;
            }
            let (src, dst, proto) = (ip.src_addr().into(), ip.dst_addr().into(), ip.next_header());
            fill(proto, ip.payload_mut(), src, dst);
        }
        ethertype::IPV6 => {
            let Ok(mut ip) = Ipv6Packet::new_checked(&mut frame[l3..]) else { return };
            let (src, dst, proto) = (ip.src_addr().into(), ip.dst_addr().into(), ip.next_header());
            fill(proto, ip.payload_mut(), src, dst);
        }
        _ => {}
    }
}

#[cfg(test)]
mod over_tests {
    use super::*;

    #[test]
    fn checksum_over_parts_is_the_checksum_of_the_whole() {
        let data: Vec<u8> = (0..1501u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for split in [0, 2, 12, 40, 1500] {
            let (a, b) = data.split_at(split);
            assert_eq!(checksum_over(&[a, b]), internet_checksum(&data), "split at {split}");
        }
    }
}
