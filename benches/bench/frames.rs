//! The generator's frames: Ethernet/IPv4/UDP of a given size, with a
//! number of distinct flows and an optional VLAN tag, every checksum valid.

use vswitch_core::MacAddr;

/// Smallest and largest frame sizes, FCS included (as a NIC counts them).
pub const MIN_SIZE: usize = 64;
pub const MAX_SIZE: usize = 1518;

/// The generated traffic's destination address: on the sink's subnet, owned
/// by no one (the frames' MAC address is not the sink's either, so its
/// kernel drops them before IP).
pub const SINK_DST: [u8; 4] = [10, 98, 0, 99];

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traffic {
    /// Frame size in bytes, FCS included (64..=1518).
    pub size: usize,
    /// Distinct flows (source address and port pairs).
    pub flows: u32,
    /// An 802.1Q tag to carry, if any.
    pub vlan: Option<u16>,
}

impl Traffic {
    /// Checks the settings.
    pub fn check(&self) -> Result<(), String> {
        if !(MIN_SIZE..=MAX_SIZE).contains(&self.size) {
            return Err(format!("frame size {} is not in {MIN_SIZE}..={MAX_SIZE}", self.size));
        }
        if self.flows == 0 || self.flows > 1 << 24 {
            return Err(format!("{} flows: give 1 to 16777216", self.flows));
        }
        if self.vlan.is_some_and(|v| v == 0 || v > 4094) {
            return Err("VLAN IDs are 1..=4094".into());
        }
        Ok(())
    }
}

/// The source address and UDP port of flow `i`: 10.(1 + i>>16).(i>>8).(i),
/// port 1024 + i % 50000.
pub fn flow_source(i: u32) -> ([u8; 4], u16) {
    let b = i.to_be_bytes();
    ([10, 1 + b[1], b[2], b[3]], 1024 + (i % 50_000) as u16)
}

/// One frame per flow, `t.size - 4` bytes each (the NIC adds the FCS).
pub fn build(t: &Traffic, dst: MacAddr, src: MacAddr) -> Vec<Vec<u8>> {
    (0..t.flows).map(|i| frame(t, dst, src, i)).collect()
}

fn frame(t: &Traffic, dst: MacAddr, src: MacAddr, flow: u32) -> Vec<u8> {
    let tag = if t.vlan.is_some() { 4 } else { 0 };
    let payload: Vec<u8> = (0..t.size - 4 - 42 - tag).map(|i| i as u8).collect();
    let (saddr, sport) = flow_source(flow);
    let mut f = vswitch_tests::ip::udp(dst, src, saddr, SINK_DST, sport, 9, 64, &payload);
    if let Some(vid) = t.vlan {
        let b = vid.to_be_bytes();
        f.splice(12..12, [0x81, 0x00, b[0], b[1]]);
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use pnet_packet::Packet as _;
    use pnet_packet::ethernet::EthernetPacket;
    use pnet_packet::ipv4::{Ipv4Packet, checksum as ip_checksum};
    use pnet_packet::udp::{UdpPacket, ipv4_checksum};

    fn mac(n: u8) -> MacAddr {
        MacAddr([2, 0, 0, 0, 0, n])
    }

    #[test]
    fn sizes_and_checksums_are_right() {
        for size in [64, 128, 512, 1024, 1518] {
            for vlan in [None, Some(100)] {
                let t = Traffic { size, flows: 3, vlan };
                t.check().unwrap();
                for f in build(&t, mac(2), mac(1)) {
                    assert_eq!(f.len(), size - 4);
                    let eth = EthernetPacket::new(&f).unwrap();
                    let ip_bytes = if vlan.is_some() {
                        assert_eq!(&f[12..16], &[0x81, 0, 0, 100]);
                        &f[18..]
                    } else {
                        assert_eq!(eth.get_ethertype().0, 0x0800);
                        &f[14..]
                    };
                    let ip = Ipv4Packet::new(ip_bytes).unwrap();
                    assert_eq!(ip.get_total_length() as usize, ip_bytes.len());
                    assert_eq!(ip.get_checksum(), ip_checksum(&ip));
                    let udp = UdpPacket::new(ip.payload()).unwrap();
                    assert_eq!(udp.get_checksum(), ipv4_checksum(&udp, &ip.get_source(), &ip.get_destination()));
                }
            }
        }
    }

    #[test]
    fn flows_are_distinct() {
        let t = Traffic { size: 64, flows: 70_000, vlan: None };
        let sources: std::collections::HashSet<_> = (0..t.flows).map(flow_source).collect();
        assert_eq!(sources.len(), 70_000);
        let frames = build(&Traffic { flows: 1000, ..t }, mac(2), mac(1));
        let keys: std::collections::HashSet<_> = frames.iter().map(|f| f[26..36].to_vec()).collect();
        assert_eq!(keys.len(), 1000, "1000 frames, 1000 different (address, port) pairs");
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(Traffic { size: 63, flows: 1, vlan: None }.check().is_err());
        assert!(Traffic { size: 1519, flows: 1, vlan: None }.check().is_err());
        assert!(Traffic { size: 64, flows: 0, vlan: None }.check().is_err());
        assert!(Traffic { size: 64, flows: 1, vlan: Some(4095) }.check().is_err());
    }
}
