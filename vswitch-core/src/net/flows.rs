//! The rules a network puts in its bridge's flow table. Each carries the
//! network's cookie in its upper 32 bits and, in its lower 32, the
//! attachment's id (0 for the network's own rules, [`NEIGHBOUR_ID`] for
//! the agent's), so an attachment's rules go with it (`cookie=C/-1`) and
//! a network's all at once (`cookie=C/0xffffffff00000000`).
//!
//! Tables (docs/containers.md draws them):
//!
//! - 0: `macspoofchk` per attachment at priorities 90-100: from its port
//!   only frames with its MAC, and of IPv4/ARP/IPv6 only those from its
//!   addresses (IPv6 also link-local and `::`), go on; the rest are
//!   dropped and counted by the drop rules. With masquerade: the agent's
//!   frames go out of the uplink, the uplink's to table 3. Everything
//!   else goes on to table 1.
//! - 1, from the network: NORMAL; with masquerade, IPv4 through
//!   conntrack (zone of the network, NAT undone) to table 2.
//! - 2: IPv4 to the host's gateway addresses is switched to the gateway
//!   port; new connections to a published port are DNATed (hairpin), new
//!   ones through the gateway MAC masqueraded behind the uplink address,
//!   replies through the gateway routed; all to table 5. Invalid packets
//!   are dropped; new connections between containers committed; the
//!   rest NORMAL.
//! - 5, routing by destination: containers (gateway MAC as source, TTL
//!   decremented); on-link uplink neighbours and the default gateway by
//!   the agent's rules; unresolved ones to the agent.
//! - 3, from the uplink: ARP to the agent; IPv4 to the switch's address
//!   and MAC through conntrack to table 4; the rest is not the switch's.
//! - 4: new connections to published ports DNATed, replies routed.

use std::net::IpAddr;

use super::{Attachment, NetworkSpec, PortMapping};
use crate::{Result, Switch};

/// The routing table.
pub(crate) const ROUTE: u8 = 5;
/// Priority of an on-link neighbour's route.
pub(crate) const ROUTE_NEIGHBOUR: u16 = 20;
/// Priority of the default route.
pub(crate) const ROUTE_DEFAULT: u16 = 5;
/// The low cookie bits of the agent's rules.
pub(crate) const NEIGHBOUR_ID: u32 = u32::MAX;

const FROM_NET: u8 = 1;
const NET_CT: u8 = 2;
const FROM_UPLINK: u8 = 3;
const UPLINK_CT: u8 = 4;

/// What the network-wide rules need besides the spec.
#[derive(Debug, Clone)]
pub(crate) struct Wiring {
    /// The gateway port's MAC.
    pub(crate) gw_mac: crate::wire::MacAddr,
    /// The gateway's IPv4 addresses (the host's, on the gateway port).
    pub(crate) gw_ips: Vec<std::net::Ipv4Addr>,
    /// The switch's MAC on the uplink.
    pub(crate) uplink_mac: crate::wire::MacAddr,
    /// The agent's port.
    pub(crate) agent: String,
    /// The network's conntrack zone.
    pub(crate) zone: u16,
}

/// Adds `att`'s rules.
pub(super) fn add(
    sw: &Switch,
    spec: &NetworkSpec,
    att: &Attachment,
    w: Option<&Wiring>,
    network_cookie: u64,
) -> Result<()> {
    install(sw, spec.bridge(), &attachment_rules(spec, att, w, network_cookie | u64::from(att.id)))
}

/// Replaces the network's own rules (and forgets the agent's).
pub(super) fn network(sw: &Switch, spec: &NetworkSpec, w: Option<&Wiring>, network_cookie: u64) -> Result<()> {
    remove(sw, spec.bridge(), network_cookie, true)?;
    remove(sw, spec.bridge(), network_cookie | u64::from(NEIGHBOUR_ID), true)?;
    install(sw, spec.bridge(), &network_rules(spec, w, network_cookie))
}

fn install(sw: &Switch, bridge: &str, rules: &[String]) -> Result<()> {
    if rules.is_empty() {
        return Ok(());
    }
    let refs: Vec<&str> = rules.iter().map(String::as_str).collect();
    sw.add_flows(bridge, &refs).map(|_| ())
}

/// Removes the rules with `cookie`: exactly, or every rule of its
/// network (`exact == false`).
pub(super) fn remove(sw: &Switch, bridge: &str, cookie: u64, exact: bool) -> Result<()> {
    let mask = if exact { u64::MAX } else { 0xffff_ffff_0000_0000 };
    sw.del_flows(bridge, Some(&format!("cookie={cookie:#x}/{mask:#x}")), false).map(|_| ())
}

fn network_rules(spec: &NetworkSpec, w: Option<&Wiring>, cookie: u64) -> Vec<String> {
    let c = format!("cookie={cookie:#x}");
    let mut out = vec![
        format!("{c},table=0,priority=1,actions=goto_table:{FROM_NET}"),
        format!("{c},table={FROM_NET},priority=0,actions=NORMAL"),
    ];
    let (Some(m), Some(w)) = (&spec.masquerade, w) else { return out };
    let (x, u, a, z) = (m.address.addr(), &m.uplink, &w.agent, w.zone);
    out.extend([
        format!("{c},table=0,priority=60,in_port={a},actions=output:{u}"),
        format!("{c},table=0,priority=50,in_port={u},actions=goto_table:{FROM_UPLINK}"),
        format!("{c},table={FROM_NET},priority=10,ip,actions=ct(table={NET_CT},zone={z},nat)"),
        format!("{c},table={NET_CT},priority=50,ct_state=+inv+trk,ip,actions=drop"),
        format!(
            "{c},table={NET_CT},priority=20,ct_state=+new+trk,ip,dl_dst={},actions=ct(commit,zone={z},nat(src={x})),goto_table:{ROUTE}",
            w.gw_mac
        ),
        format!("{c},table={NET_CT},priority=15,ct_state=+est+trk,ip,dl_dst={},actions=goto_table:{ROUTE}", w.gw_mac),
        format!("{c},table={NET_CT},priority=15,ct_state=+rel+trk,ip,dl_dst={},actions=goto_table:{ROUTE}", w.gw_mac),
        // Between containers: committed, so that replies are not invalid.
        format!("{c},table={NET_CT},priority=10,ct_state=+new+trk,ip,actions=ct(commit,zone={z}),NORMAL"),
        format!("{c},table={NET_CT},priority=0,actions=NORMAL"),
        format!("{c},table={FROM_UPLINK},priority=30,arp,actions=output:{a}"),
        format!("{c},table={FROM_UPLINK},priority=20,ip,dl_dst={},nw_dst={x},actions=ct(table={UPLINK_CT},zone={z},nat)", w.uplink_mac),
        format!("{c},table={FROM_UPLINK},priority=0,actions=drop"),
        format!("{c},table={UPLINK_CT},priority=15,ct_state=+est+trk,ip,actions=goto_table:{ROUTE}"),
        format!("{c},table={UPLINK_CT},priority=15,ct_state=+rel+trk,ip,actions=goto_table:{ROUTE}"),
        format!("{c},table={UPLINK_CT},priority=0,actions=drop"),
        format!(
            "{c},table={ROUTE},priority=10,ip,nw_dst={},actions=mod_dl_src:{},dec_ttl,output:{a}",
            m.address.trunc(),
            w.uplink_mac
        ),
    ]);
    // The host at its gateway addresses: tracked like the rest (its
    // replies come back through table 1), switched, never routed.
    for g in &w.gw_ips {
        let to_host = format!("ip,dl_dst={},nw_dst={g}", w.gw_mac);
        out.push(format!(
            "{c},table={NET_CT},priority=31,ct_state=+new+trk,{to_host},actions=ct(commit,zone={z}),NORMAL"
        ));
        out.push(format!("{c},table={NET_CT},priority=30,{to_host},actions=NORMAL"));
    }
    out.push(if m.gateway.is_some() {
        format!("{c},table={ROUTE},priority={ROUTE_DEFAULT},ip,actions=mod_dl_src:{},dec_ttl,output:{a}", w.uplink_mac)
    } else {
        format!("{c},table={ROUTE},priority={ROUTE_DEFAULT},ip,actions=drop")
    });
    out
}

fn mapping_rule(c: &str, table: u8, x: IpAddr, z: u16, m: &PortMapping, to: IpAddr) -> String {
    format!(
        "{c},table={table},priority=40,ct_state=+new+trk,{},nw_dst={x},tp_dst={},actions=ct(commit,zone={z},nat(dst={to}:{})),goto_table:{ROUTE}",
        m.protocol, m.host_port, m.container_port
    )
}

fn attachment_rules(spec: &NetworkSpec, att: &Attachment, w: Option<&Wiring>, cookie: u64) -> Vec<String> {
    let c = format!("cookie={cookie:#x}");
    let mut out = Vec::new();
    if spec.macspoofchk {
        let head = format!("{c},table=0,priority=100,in_port={},dl_src={}", att.port, att.mac);
        let next = format!("goto_table:{FROM_NET}");
        for ip in &att.ips {
            match ip.address.addr() {
                IpAddr::V4(a) => {
                    out.push(format!("{head},ip,nw_src={a},actions={next}"));
                    out.push(format!("{head},arp,arp_spa={a},actions={next}"));
                }
                IpAddr::V6(a) => out.push(format!("{head},ipv6,ipv6_src={a},actions={next}")),
            }
        }
        if att.ips.iter().any(|i| i.address.addr().is_ipv6()) {
            out.push(format!("{head},ipv6,ipv6_src=fe80::/10,actions={next}"));
            out.push(format!("{head},ipv6,ipv6_src=::,actions={next}"));
        }
        // Its MAC but someone else's address: dropped; its MAC and no IP
        // (LLDP, ...): switched; any other MAC: dropped.
        let own = format!("{c},table=0,priority=95,in_port={},dl_src={}", att.port, att.mac);
        for proto in ["ip", "arp", "ipv6"] {
            out.push(format!("{own},{proto},actions=drop"));
        }
        out.push(format!("{c},table=0,priority=94,in_port={},dl_src={},actions={next}", att.port, att.mac));
        out.push(format!("{c},table=0,priority=90,in_port={},actions=drop", att.port));
    }
    if let (Some(m), Some(w)) = (&spec.masquerade, w) {
        for ip in att.ips.iter().filter(|i| i.address.addr().is_ipv4()) {
            out.push(format!(
                "{c},table={ROUTE},priority=30,ip,nw_dst={},actions=mod_dl_src:{},mod_dl_dst:{},dec_ttl,output:{}",
                ip.address.addr(),
                w.gw_mac,
                att.mac,
                att.port
            ));
        }
        let to = att.ips.iter().map(|i| i.address.addr()).find(IpAddr::is_ipv4);
        if let Some(to) = to {
            for pm in &att.port_mappings {
                out.push(mapping_rule(&c, UPLINK_CT, m.address.addr(), w.zone, pm, to));
                out.push(mapping_rule(&c, NET_CT, m.address.addr(), w.zone, pm, to));
            }
        }
    }
    out
}
