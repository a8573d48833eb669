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

/// User plus system CPU time of this process so far, in seconds, from
/// /proc/self/stat (utime and stime, fields 14 and 15, in USER_HZ = 100).
pub fn cpu_seconds() -> f64 {
    process_cpu_seconds("self").expect("read /proc/self/stat")
}

/// CPU seconds (user + system) used so far by process `pid` (a number,
/// or `self`); None if it does not exist.
pub fn process_cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
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

/// IPv4 frames built with smoltcp's emitters (valid checksums), and
/// checked with its verifiers: an implementation this project did not
/// write judges our header rewrites.
pub mod ip {
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol, Ipv4Address, Ipv4Packet,
        Ipv4Repr, TcpPacket, UdpPacket, UdpRepr,
    };
    use vswitch_core::MacAddr;

    fn eth_ip(
        dst: MacAddr,
        src: MacAddr,
        sip: [u8; 4],
        dip: [u8; 4],
        proto: IpProtocol,
        l4_len: usize,
        ttl: u8,
    ) -> Vec<u8> {
        let mut buf = vec![0u8; 14 + 20 + l4_len];
        let eth = EthernetRepr {
            src_addr: EthernetAddress(src.0),
            dst_addr: EthernetAddress(dst.0),
            ethertype: EthernetProtocol::Ipv4,
        };
        eth.emit(&mut EthernetFrame::new_unchecked(&mut buf[..]));
        let ip = Ipv4Repr {
            src_addr: Ipv4Address::from(sip),
            dst_addr: Ipv4Address::from(dip),
            next_header: proto,
            payload_len: l4_len,
            hop_limit: ttl,
        };
        ip.emit(&mut Ipv4Packet::new_unchecked(&mut buf[14..]), &ChecksumCapabilities::default());
        buf
    }

    /// An Ethernet/IPv4/UDP frame with valid checksums.
    #[allow(clippy::too_many_arguments)]
    pub fn udp(
        dst: MacAddr,
        src: MacAddr,
        sip: [u8; 4],
        dip: [u8; 4],
        sport: u16,
        dport: u16,
        ttl: u8,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut buf = eth_ip(dst, src, sip, dip, IpProtocol::Udp, 8 + payload.len(), ttl);
        let udp = UdpRepr { src_port: sport, dst_port: dport };
        udp.emit(
            &mut UdpPacket::new_unchecked(&mut buf[34..]),
            &IpAddress::Ipv4(Ipv4Address::from(sip)),
            &IpAddress::Ipv4(Ipv4Address::from(dip)),
            payload.len(),
            |p| p.copy_from_slice(payload),
            &ChecksumCapabilities::default(),
        );
        buf
    }

    /// An Ethernet/IPv4/TCP SYN with valid checksums.
    pub fn tcp_syn(dst: MacAddr, src: MacAddr, sip: [u8; 4], dip: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut buf = eth_ip(dst, src, sip, dip, IpProtocol::Tcp, 20, 64);
        let mut tcp = TcpPacket::new_unchecked(&mut buf[34..]);
        tcp.set_src_port(sport);
        tcp.set_dst_port(dport);
        tcp.set_header_len(20);
        tcp.set_syn(true);
        tcp.set_window_len(65535);
        tcp.fill_checksum(&IpAddress::Ipv4(Ipv4Address::from(sip)), &IpAddress::Ipv4(Ipv4Address::from(dip)));
        buf
    }

    /// True if the frame's IPv4 header checksum and its TCP or UDP
    /// checksum (with the pseudo-header) verify, by smoltcp.
    pub fn checksums_ok(frame: &[u8]) -> bool {
        let Ok(ip) = Ipv4Packet::new_checked(&frame[14..]) else { return false };
        if !ip.verify_checksum() {
            return false;
        }
        let (s, d) = (IpAddress::Ipv4(ip.src_addr()), IpAddress::Ipv4(ip.dst_addr()));
        match ip.next_header() {
            IpProtocol::Udp => UdpPacket::new_checked(ip.payload()).is_ok_and(|u| u.verify_checksum(&s, &d)),
            IpProtocol::Tcp => TcpPacket::new_checked(ip.payload()).is_ok_and(|t| t.verify_checksum(&s, &d)),
            _ => true,
        }
    }

    /// (source, destination, TTL, source port, destination port) of an
    /// Ethernet/IPv4/TCP-or-UDP frame.
    pub fn fields(frame: &[u8]) -> ([u8; 4], [u8; 4], u8, u16, u16) {
        let ip = Ipv4Packet::new_checked(&frame[14..]).expect("an IPv4 frame");
        let l4 = ip.payload();
        (
            ip.src_addr().octets(),
            ip.dst_addr().octets(),
            ip.hop_limit(),
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        )
    }
}

pub mod netns;
