//! A frame built from a flow description: what `trace` sends through the
//! real pipeline (in a dry run), so the path it reports is the path a
//! packet takes, rewrites included.
//!
//! Fields the description leaves out are zero, except the TTL (64, so a
//! `dec_ttl` does not drop the packet the description never gave one).

use std::net::Ipv4Addr;

use super::matching::Match;
use super::packed::{PackedKey, VLAN_PRESENT};
use crate::packet::{Packet, TunnelMeta};
use crate::wire::checksum::{complete_l4_checksum, internet_checksum};
use crate::wire::ethertype;

fn put(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.extend_from_slice(bytes);
}

/// Builds the frame (and tunnel metadata) the match's values describe.
pub(crate) fn packet_for(m: &Match) -> Packet {
    let k: &PackedKey = &m.value;
    let ttl = if m.mask.get(2, 48, 8) == 0 { 64 } else { k.get(2, 48, 8) as u8 };
    let mut f = Vec::with_capacity(128);
    put(&mut f, &k.get(1, 0, 48).to_be_bytes()[2..]);
    put(&mut f, &k.get(2, 0, 48).to_be_bytes()[2..]);
    let tci = k.get(0, 48, 16) as u16;
    if tci & VLAN_PRESENT != 0 {
        put(&mut f, &ethertype::VLAN.to_be_bytes());
        put(&mut f, &(tci & !VLAN_PRESENT).to_be_bytes());
    }
    let dl_type = k.get(0, 32, 16) as u16;
    put(&mut f, &dl_type.to_be_bytes());
    let proto = k.get(1, 48, 8) as u8;
    let tos = k.get(1, 56, 8) as u8;
    let (a, b) = (k.get(7, 0, 16) as u16, k.get(7, 16, 16) as u16);
    let l4 = |f: &mut Vec<u8>| match proto {
        6 => {
            put(f, &a.to_be_bytes());
            put(f, &b.to_be_bytes());
            put(f, &[0; 8]);
            put(f, &[0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
        }
        17 => {
            put(f, &a.to_be_bytes());
            put(f, &b.to_be_bytes());
            put(f, &[0, 8, 0xff, 0xff]);
        }
        132 => {
            put(f, &a.to_be_bytes());
            put(f, &b.to_be_bytes());
            put(f, &[0; 8]);
        }
        1 | 58 => put(f, &[a as u8, b as u8, 0, 0, 0, 0, 0, 0]),
        _ => {}
    };
    let l3 = f.len();
    match dl_type {
        ethertype::IPV4 => {
            put(&mut f, &[0x45, tos, 0, 0, 0, 0, 0x40, 0, ttl, proto, 0, 0]);
            put(&mut f, &(k.0[4] as u32).to_be_bytes());
            put(&mut f, &(k.0[6] as u32).to_be_bytes());
            l4(&mut f);
            let total = (f.len() - l3) as u16;
            f[l3 + 2..l3 + 4].copy_from_slice(&total.to_be_bytes());
            let c = internet_checksum(&f[l3..l3 + 20]);
            f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
            if proto == 1 {
                let c = internet_checksum(&f[l3 + 20..]);
                f[l3 + 22..l3 + 24].copy_from_slice(&c.to_be_bytes());
            }
        }
        ethertype::IPV6 => {
            put(&mut f, &[0x60 | tos >> 4, tos << 4, 0, 0, 0, 0, proto, ttl]);
            for w in [3, 4, 5, 6] {
                put(&mut f, &k.0[w].to_be_bytes());
            }
            l4(&mut f);
            let payload = (f.len() - l3 - 40) as u16;
            f[l3 + 4..l3 + 6].copy_from_slice(&payload.to_be_bytes());
        }
        ethertype::ARP => {
            put(&mut f, &[0, 1, 8, 0, 6, 4, 0, proto]);
            let sha = f[6..12].to_vec();
            put(&mut f, &sha);
            put(&mut f, &(k.0[4] as u32).to_be_bytes());
            put(&mut f, &[0; 6]);
            put(&mut f, &(k.0[6] as u32).to_be_bytes());
        }
        _ => {}
    }
    complete_l4_checksum(&mut f);
    while f.len() < 60 {
        f.push(0);
    }
    let mut p = Packet::from_frame(&f);
    if k.0[8] != 0 || k.0[9] != 0 {
        p.tunnel = Some(TunnelMeta {
            id: k.0[8],
            src: Ipv4Addr::from(k.get(9, 0, 32) as u32),
            dst: Ipv4Addr::from(k.get(9, 32, 32) as u32),
        });
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{FlowSelector, PackedParse};

    /// The frame parses back to the key the description gave, field for
    /// field (under the description's mask).
    #[test]
    fn frames_parse_back_to_their_description() {
        for text in [
            "in_port=3,dl_src=02:00:00:00:00:01,dl_dst=02:00:00:00:00:02,dl_vlan=10,tcp,nw_src=10.0.0.1,nw_dst=10.0.0.2,tp_src=1234,tp_dst=80,nw_ttl=9",
            "udp,nw_dst=192.168.1.1,tp_dst=53,nw_tos=32",
            "icmp,icmp_type=8,icmp_code=0",
            "tcp6,ipv6_src=2001:db8::1,ipv6_dst=2001:db8::2,tp_dst=443",
            "icmp6,icmpv6_type=135",
            "arp,arp_op=1,arp_spa=10.0.0.1,arp_tpa=10.0.0.9",
            "dl_type=0x88cc",
        ] {
            let m = FlowSelector::parse(text, &|_| None).unwrap().matching;
            let p = packet_for(&m);
            let parsed = PackedParse::extract(p.data(), m.value.get(0, 0, 32) as u32);
            let mut key = parsed.key;
            if let Some(t) = &p.tunnel {
                key.set_tunnel(t);
            }
            assert!(m.matches(&key), "{text}: {:x?} vs {:x?}", key.masked(&m.mask), m.value);
        }
    }

    #[test]
    fn checksums_are_valid_and_ttl_defaults_to_64() {
        let m = FlowSelector::parse("udp,nw_src=10.0.0.1,nw_dst=10.0.0.2,tp_dst=53", &|_| None).unwrap().matching;
        let p = packet_for(&m);
        let d = p.data();
        assert_eq!(d[22], 64);
        assert_eq!(internet_checksum(&d[14..34]), 0);
        let mut copy = d.to_vec();
        complete_l4_checksum(&mut copy);
        assert_eq!(copy, d, "the UDP checksum was already right");
    }
}
