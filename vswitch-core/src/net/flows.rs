//! The rules a network puts in its bridge's flow table. Each carries the
//! network's cookie in its upper 32 bits and the attachment's id in its
//! lower 32, so an attachment's rules go with it (`cookie=C/-1`) and a
//! network's all at once (`cookie=C/0xffffffff00000000`).
//!
//! Without options a network adds nothing: the bridge's default rule
//! (NORMAL) switches between the containers and the gateway port.
//!
//! `macspoofchk`, per attachment, at priorities 90-100 of table 0: from
//! its port, only frames with its MAC as source go on to NORMAL, and of
//! IPv4, ARP and IPv6 only those from one of its addresses (IPv6 also
//! link-local and the unspecified address of duplicate address
//! detection); the rest hit drop rules, whose counters (`dump-flows`) and
//! the switch's `flow_drop` count them.

use std::net::IpAddr;

use super::{Attachment, NetworkSpec};
use crate::{Result, Switch};

const SPOOF_ALLOW: u16 = 100;
const SPOOF_IP_DROP: u16 = 95;
const SPOOF_MAC_OK: u16 = 94;
const SPOOF_DROP: u16 = 90;

/// Adds `att`'s rules.
pub(super) fn add(sw: &Switch, spec: &NetworkSpec, att: &Attachment, network_cookie: u64) -> Result<()> {
    let rules = rules(spec, att, network_cookie | u64::from(att.id));
    if rules.is_empty() {
        return Ok(());
    }
    let refs: Vec<&str> = rules.iter().map(String::as_str).collect();
    sw.add_flows(spec.bridge(), &refs).map(|_| ())
}

/// Removes the rules with `cookie`: exactly, or every rule of its
/// network (`exact == false`).
pub(super) fn remove(sw: &Switch, bridge: &str, cookie: u64, exact: bool) -> Result<()> {
    let mask = if exact { u64::MAX } else { 0xffff_ffff_0000_0000 };
    sw.del_flows(bridge, Some(&format!("cookie={cookie:#x}/{mask:#x}")), false).map(|_| ())
}

fn rules(spec: &NetworkSpec, att: &Attachment, cookie: u64) -> Vec<String> {
    let mut out = Vec::new();
    if spec.macspoofchk {
        let head = format!("cookie={cookie:#x},table=0,priority={SPOOF_ALLOW},in_port={},dl_src={}", att.port, att.mac);
        for ip in &att.ips {
            match ip.address.addr() {
                IpAddr::V4(a) => {
                    out.push(format!("{head},ip,nw_src={a},actions=NORMAL"));
                    out.push(format!("{head},arp,arp_spa={a},actions=NORMAL"));
                }
                IpAddr::V6(a) => out.push(format!("{head},ipv6,ipv6_src={a},actions=NORMAL")),
            }
        }
        if att.ips.iter().any(|i| i.address.addr().is_ipv6()) {
            out.push(format!("{head},ipv6,ipv6_src=fe80::/10,actions=NORMAL"));
            out.push(format!("{head},ipv6,ipv6_src=::,actions=NORMAL"));
        }
        // Its MAC but someone else's address: dropped; its MAC and no IP
        // (LLDP, ...): switched; any other MAC: dropped.
        let own =
            format!("cookie={cookie:#x},table=0,priority={SPOOF_IP_DROP},in_port={},dl_src={}", att.port, att.mac);
        for proto in ["ip", "arp", "ipv6"] {
            out.push(format!("{own},{proto},actions=drop"));
        }
        out.push(format!(
            "cookie={cookie:#x},table=0,priority={SPOOF_MAC_OK},in_port={},dl_src={},actions=NORMAL",
            att.port, att.mac
        ));
        out.push(format!("cookie={cookie:#x},table=0,priority={SPOOF_DROP},in_port={},actions=drop", att.port));
    }
    out
}
