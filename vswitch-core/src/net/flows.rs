//! The rules a network puts in its bridge's flow table. Each carries the
//! network's cookie in its upper 32 bits and, in its lower 32, the
//! attachment's id (0 for the network's own rules, [`POLICY_ID`] and up
//! for its policies'); the neighbour agent's rules have a cookie of their
//! own ([`super::neighbour_cookie`]). The whole set is made what it
//! should be in one step after every change ([`sync`]): rules that stay
//! keep their counters, and no packet sees half a change.
//!
//! Tables (docs/containers.md draws them):
//!
//! - 0: `macspoofchk` per attachment at priorities 90-100: from its port
//!   only frames with its MAC, and of IPv4/ARP/IPv6 only those from its
//!   addresses (IPv6 also link-local and `::`), go on; the rest are
//!   dropped and counted by the drop rules. With masquerade: the agent's
//!   frames go out of the uplink, the uplink's to table 3. Everything
//!   else goes on to table 1.
//! - 1, from the network: IP through conntrack (the network's zone, NAT
//!   undone) to table 2 (IPv6 neighbour discovery stays out of it); the
//!   rest NORMAL. Every network tracks its connections, so that its
//!   first policy finds them known.
//! - 2: invalid packets dropped; established ones (of the current policy
//!   generation) and related ones to 232; new ones to 231, through the
//!   policy tables (20-219, [`super::policy`]) when there are policies,
//!   as are established ones of an older generation.
//! - 231, new from the network: to the host's gateway addresses
//!   switched; to a published port DNATed (hairpin); through the gateway
//!   MAC masqueraded behind the uplink address; between containers
//!   switched; each committed with the generation in `ct_mark`.
//! - 232, established from the network: through the gateway MAC routed,
//!   the rest switched.
//! - 3, from the uplink: ARP to the agent; IPv4 to the switch's address
//!   and MAC through conntrack to table 4; the rest is not the switch's.
//! - 4: as 2 for the uplink: established and related routed, new ones
//!   (to 233: published ports DNATed) through the policy tables.
//! - 230: where the policy tables send what they allow, by `reg9`.
//! - 240, routing by destination: containers (gateway MAC as source, TTL
//!   decremented); on-link uplink neighbours and the default gateway by
//!   the agent's rules; unresolved ones to the agent.

use std::net::IpAddr;

use super::policy::{ENTRY, REG_CONT};
use super::{Attachment, NetworkSpec, PortMapping};
use crate::{Result, Switch};

/// The routing table.
pub(crate) const ROUTE: u8 = 240;
/// Priority of an on-link neighbour's route.
pub(crate) const ROUTE_NEIGHBOUR: u16 = 20;
/// Priority of the default route.
pub(crate) const ROUTE_DEFAULT: u16 = 5;
/// Where the policy tables send an allowed connection.
pub(crate) const CONT: u8 = 230;
/// The low cookie bits of the policy tables' rules (allow and deny rules
/// have their own, see [`super::policy`]).
pub(crate) const POLICY_ID: u32 = 0x7fff_ffff;

const FROM_NET: u8 = 1;
const NET_CT: u8 = 2;
const FROM_UPLINK: u8 = 3;
const UPLINK_CT: u8 = 4;
const NET_NEW: u8 = 231;
const NET_EST: u8 = 232;
const UPLINK_NEW: u8 = 233;

/// What `reg9` says to the continuation table: which check it was.
const NEW_FROM_NET: u32 = 1;
const OLD_FROM_NET: u32 = 2;
const NEW_FROM_UPLINK: u32 = 3;
const OLD_FROM_UPLINK: u32 = 4;

/// The masquerade side's part of the wiring.
#[derive(Debug, Clone)]
pub(crate) struct MasqWiring {
    /// The gateway port's MAC.
    pub(crate) gw_mac: crate::wire::MacAddr,
    /// The gateway's IPv4 addresses (the host's, on the gateway port).
    pub(crate) gw_ips: Vec<std::net::Ipv4Addr>,
    /// The switch's MAC on the uplink.
    pub(crate) uplink_mac: crate::wire::MacAddr,
    /// The agent's port.
    pub(crate) agent: String,
}

/// A cluster network's part of the wiring.
#[derive(Debug, Clone)]
pub(crate) struct ClusterWiring {
    /// The cluster's block.
    pub(crate) network: ipnet::IpNet,
    /// This host's subnets of it.
    pub(crate) local: Vec<ipnet::IpNet>,
    /// The gateway's IPv4 addresses (the host's, on the gateway port).
    pub(crate) gw_ips: Vec<std::net::Ipv4Addr>,
    /// The gateway port's MAC (what routed packets are addressed to).
    pub(crate) gw_mac: crate::wire::MacAddr,
    /// The other hosts' subnets.
    pub(crate) routes: Vec<super::RemoteSubnet>,
    /// VXLAN: the tunnel port and this host's VTEP MAC; host-gw: none
    /// (the masquerade uplink and agent carry it).
    pub(crate) vxlan: Option<(String, crate::wire::MacAddr)>,
}

/// What the network-wide rules need besides the spec.
#[derive(Debug, Clone, Default)]
pub(crate) struct Wiring {
    /// The network's conntrack zone.
    pub(crate) zone: Option<u16>,
    /// With masquerade.
    pub(crate) masq: Option<MasqWiring>,
    /// With policies: the generation committed connections carry in
    /// `ct_mark`.
    pub(crate) policy_gen: Option<u32>,
    /// With a cluster.
    pub(crate) cluster: Option<ClusterWiring>,
}

impl Wiring {
    /// The gateway MAC when the switch routes for the network (with
    /// masquerade or a cluster): containers' routes are its rules then.
    fn routing_mac(&self) -> Option<crate::wire::MacAddr> {
        self.masq.as_ref().map(|m| m.gw_mac).or(self.cluster.as_ref().map(|c| c.gw_mac))
    }

    /// `ct(commit,...)` in the network's zone, marked with the policy
    /// generation, with `nat` inside if given.
    fn commit(&self, zone: u16, nat: &str) -> String {
        let mark = self.policy_gen.map_or(String::new(), |g| format!(",exec(set_field:{g:#x}->ct_mark)"));
        format!("ct(commit,zone={zone}{nat}{mark})")
    }
}

/// Makes the network's rules (its own, its attachments', its policies')
/// exactly what they should be.
pub(super) fn sync(
    sw: &Switch,
    spec: &NetworkSpec,
    atts: &[&Attachment],
    w: &Wiring,
    policy_rules: Vec<String>,
    network_cookie: u64,
) -> Result<()> {
    let mut rules = network_rules(spec, w, network_cookie);
    for att in atts {
        rules.extend(attachment_rules(spec, att, w, network_cookie | u64::from(att.id)));
    }
    rules.extend(policy_rules);
    let refs: Vec<&str> = rules.iter().map(String::as_str).collect();
    sw.sync_flows(spec.bridge(), &format!("cookie={network_cookie:#x}/0xffffffff00000000"), &refs).map(|_| ())
}

/// Removes the rules with `cookie`: exactly, or every rule of its
/// network (`exact == false`).
pub(super) fn remove(sw: &Switch, bridge: &str, cookie: u64, exact: bool) -> Result<()> {
    let mask = if exact { u64::MAX } else { 0xffff_ffff_0000_0000 };
    sw.del_flows(bridge, Some(&format!("cookie={cookie:#x}/{mask:#x}")), false).map(|_| ())
}

fn network_rules(spec: &NetworkSpec, w: &Wiring, cookie: u64) -> Vec<String> {
    let c = format!("cookie={cookie:#x}");
    let mut out = vec![
        format!("{c},table=0,priority=1,actions=goto_table:{FROM_NET}"),
        format!("{c},table={FROM_NET},priority=0,actions=NORMAL"),
    ];
    let Some(z) = w.zone else { return out };
    let policies = w.policy_gen.is_some();
    let commit = w.commit(z, "");
    let mark = w.policy_gen.map_or(String::new(), |g| format!(",ct_mark={g:#x}"));
    // New connections: judged by the policy tables (which come back to
    // the continuation table), or straight on.
    let check = |cont: u32, fallback: u8| {
        if policies {
            format!("set_field:{cont}->{REG_CONT},goto_table:{ENTRY}")
        } else {
            format!("goto_table:{fallback}")
        }
    };
    for f in ["ip", "ipv6"] {
        out.push(format!("{c},table={FROM_NET},priority=10,{f},actions=ct(table={NET_CT},zone={z},nat)"));
        out.push(format!("{c},table={NET_NEW},priority=10,{f},actions={commit},NORMAL"));
    }
    // Neighbour discovery and MLD are the link's, not connections.
    for t in [130, 131, 132, 133, 134, 135, 136, 137, 143] {
        out.push(format!("{c},table={FROM_NET},priority=30,icmp6,icmp_type={t},actions=NORMAL"));
    }
    out.extend([
        // Invalid: dropped where it matters (NAT, policies); on a plain
        // network switched, as without conntrack (a connection from
        // before a restart is mid-stream to it).
        format!(
            "{c},table={NET_CT},priority=50,ct_state=+inv+trk,actions={}",
            if policies || spec.masquerade.is_some() { "drop" } else { "NORMAL" }
        ),
        format!("{c},table={NET_CT},priority=40,ct_state=+est+trk{mark},actions=goto_table:{NET_EST}"),
        format!("{c},table={NET_CT},priority=40,ct_state=+rel+trk,actions=goto_table:{NET_EST}"),
        format!("{c},table={NET_CT},priority=30,ct_state=+new+trk,actions={}", check(NEW_FROM_NET, NET_NEW)),
        format!("{c},table={NET_CT},priority=0,actions=NORMAL"),
        format!("{c},table={NET_EST},priority=0,actions=NORMAL"),
    ]);
    if policies {
        out.extend([
            format!("{c},table={NET_CT},priority=20,ct_state=+est+trk,actions={}", check(OLD_FROM_NET, NET_EST)),
            format!("{c},table={CONT},priority=10,{REG_CONT}={NEW_FROM_NET},actions=goto_table:{NET_NEW}"),
            format!("{c},table={CONT},priority=10,{REG_CONT}={OLD_FROM_NET},actions={commit},goto_table:{NET_EST}"),
            format!("{c},table={CONT},priority=10,{REG_CONT}={NEW_FROM_UPLINK},actions=goto_table:{UPLINK_NEW}"),
            format!("{c},table={CONT},priority=10,{REG_CONT}={OLD_FROM_UPLINK},actions={commit},goto_table:{ROUTE}"),
            format!("{c},table={CONT},priority=0,actions=drop"),
        ]);
    }
    if let Some(cw) = &w.cluster {
        out.extend(cluster_rules(&c, z, &commit, cw, w.masq.as_ref()));
    }
    let (Some(m), Some(mw)) = (&spec.masquerade, &w.masq) else { return out };
    let (x, u, a, gw) = (m.address.addr(), &m.uplink, &mw.agent, mw.gw_mac);
    out.extend([
        format!("{c},table=0,priority=60,in_port={a},actions=output:{u}"),
        format!("{c},table=0,priority=50,in_port={u},actions=goto_table:{FROM_UPLINK}"),
        format!(
            "{c},table={NET_NEW},priority=20,ip,dl_dst={gw},actions={},goto_table:{ROUTE}",
            w.commit(z, &format!(",nat(src={x})"))
        ),
        format!("{c},table={NET_EST},priority=15,ip,dl_dst={gw},actions=goto_table:{ROUTE}"),
        format!("{c},table={FROM_UPLINK},priority=30,arp,actions=output:{a}"),
        format!(
            "{c},table={FROM_UPLINK},priority=20,ip,dl_dst={},nw_dst={x},actions=ct(table={UPLINK_CT},zone={z},nat)",
            mw.uplink_mac
        ),
        format!("{c},table={FROM_UPLINK},priority=0,actions=drop"),
        format!("{c},table={UPLINK_CT},priority=50,ct_state=+inv+trk,actions=drop"),
        format!("{c},table={UPLINK_CT},priority=40,ct_state=+est+trk{mark},actions=goto_table:{ROUTE}"),
        format!("{c},table={UPLINK_CT},priority=40,ct_state=+rel+trk,actions=goto_table:{ROUTE}"),
        format!("{c},table={UPLINK_CT},priority=30,ct_state=+new+trk,actions={}", check(NEW_FROM_UPLINK, UPLINK_NEW)),
        format!("{c},table={UPLINK_CT},priority=0,actions=drop"),
        format!("{c},table={UPLINK_NEW},priority=0,actions=drop"),
        format!(
            "{c},table={ROUTE},priority=10,ip,nw_dst={},actions=mod_dl_src:{},dec_ttl,output:{a}",
            m.address.trunc(),
            mw.uplink_mac
        ),
    ]);
    if policies {
        out.push(format!(
            "{c},table={UPLINK_CT},priority=20,ct_state=+est+trk,actions={}",
            check(OLD_FROM_UPLINK, ROUTE)
        ));
    }
    // The host at its gateway addresses: tracked like the rest (its
    // replies come back through table 1), switched, never routed.
    for g in &mw.gw_ips {
        let to_host = format!("ip,dl_dst={gw},nw_dst={g}");
        out.push(format!("{c},table={NET_NEW},priority=31,{to_host},actions={commit},NORMAL"));
        out.push(format!("{c},table={NET_EST},priority=30,{to_host},actions=NORMAL"));
    }
    // With an uplink router the agent owns the default route (to the
    // router's MAC once resolved); without one there is none.
    if m.gateway.is_none() {
        out.push(format!("{c},table={ROUTE},priority={ROUTE_DEFAULT},ip,actions=drop"));
    }
    out
}

/// A cluster network's rules: its block is never masqueraded but routed,
/// to the host whose subnet holds the destination (through the VXLAN
/// port, or host-gw through the uplink to that host's switch address),
/// and what other hosts route here enters as if sent to the gateway
/// (conntrack, policies, the containers' routes).
fn cluster_rules(c: &str, z: u16, commit: &str, cw: &ClusterWiring, masq: Option<&MasqWiring>) -> Vec<String> {
    let (gw, block) = (cw.gw_mac, cw.network);
    let mut out = vec![
        format!("{c},table={NET_NEW},priority=25,ip,dl_dst={gw},nw_dst={block},actions={commit},goto_table:{ROUTE}"),
        format!("{c},table={NET_EST},priority=16,ip,dl_dst={gw},nw_dst={block},actions=goto_table:{ROUTE}"),
        // A part of the block no host holds: nowhere to go.
        format!("{c},table={ROUTE},priority=15,ip,nw_dst={block},actions=drop"),
    ];
    // The host at its gateway addresses, switched (with masquerade its
    // rules do this).
    if masq.is_none() {
        for g in &cw.gw_ips {
            let to_host = format!("ip,dl_dst={gw},nw_dst={g}");
            out.push(format!("{c},table={NET_NEW},priority=31,{to_host},actions={commit},NORMAL"));
            out.push(format!("{c},table={NET_EST},priority=30,{to_host},actions=NORMAL"));
        }
    }
    // Into conntrack as if from a container to the gateway (table 1
    // does the same; the uplink's table 3 is past it, hence ct directly).
    let arrive = |head: &str, mac: crate::wire::MacAddr, out: &mut Vec<String>| {
        for l in &cw.local {
            out.push(format!(
                "{head},ip,dl_dst={mac},nw_dst={l},actions=mod_dl_dst:{gw},ct(table={NET_CT},zone={z},nat)"
            ));
        }
    };
    match (&cw.vxlan, masq) {
        (Some((port, vtep)), _) => {
            arrive(&format!("{c},table=0,priority=70,in_port={port}"), *vtep, &mut out);
            out.push(format!("{c},table=0,priority=69,in_port={port},actions=drop"));
            for r in &cw.routes {
                let Some(rmac) = r.vtep_mac else { continue };
                out.push(format!(
                    "{c},table={ROUTE},priority=25,ip,nw_dst={},actions=mod_dl_src:{vtep},mod_dl_dst:{rmac},dec_ttl,set_field:{}->tun_dst,output:{port}",
                    r.subnet, r.public_ip
                ));
            }
        }
        (None, Some(mw)) => {
            arrive(&format!("{c},table={FROM_UPLINK},priority=25"), mw.uplink_mac, &mut out);
            // To the agent until it has the next hop's MAC (its own rule,
            // priority 26, then sends straight to it).
            for r in &cw.routes {
                out.push(format!(
                    "{c},table={ROUTE},priority=24,ip,nw_dst={},actions=mod_dl_src:{},dec_ttl,output:{}",
                    r.subnet, mw.uplink_mac, mw.agent
                ));
            }
        }
        (None, None) => {}
    }
    out
}

fn mapping_rule(c: &str, table: u8, x: IpAddr, w: &Wiring, z: u16, m: &PortMapping, to: IpAddr) -> String {
    format!(
        "{c},table={table},priority=40,{},nw_dst={x},tp_dst={},actions={},goto_table:{ROUTE}",
        m.protocol,
        m.host_port,
        w.commit(z, &format!(",nat(dst={to}:{})", m.container_port))
    )
}

fn attachment_rules(spec: &NetworkSpec, att: &Attachment, w: &Wiring, cookie: u64) -> Vec<String> {
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
        // IPv6 link-local and the unspecified address (DAD) are every
        // interface's, with or without a global IPv6 address.
        out.push(format!("{head},ipv6,ipv6_src=fe80::/10,actions={next}"));
        out.push(format!("{head},ipv6,ipv6_src=::,actions={next}"));
        // Its MAC but someone else's address: dropped; its MAC and no IP
        // (LLDP, ...): switched; any other MAC: dropped.
        let own = format!("{c},table=0,priority=95,in_port={},dl_src={}", att.port, att.mac);
        for proto in ["ip", "arp", "ipv6"] {
            out.push(format!("{own},{proto},actions=drop"));
        }
        out.push(format!("{c},table=0,priority=94,in_port={},dl_src={},actions={next}", att.port, att.mac));
        out.push(format!("{c},table=0,priority=90,in_port={},actions=drop", att.port));
    }
    if let (Some(gw), Some(_)) = (w.routing_mac(), w.zone) {
        for ip in att.ips.iter().filter(|i| i.address.addr().is_ipv4()) {
            out.push(format!(
                "{c},table={ROUTE},priority=30,ip,nw_dst={},actions=mod_dl_src:{gw},mod_dl_dst:{},dec_ttl,output:{}",
                ip.address.addr(),
                att.mac,
                att.port
            ));
        }
    }
    if let (Some(m), Some(_), Some(z)) = (&spec.masquerade, &w.masq, w.zone)
        && let Some(to) = att.ips.iter().map(|i| i.address.addr()).find(IpAddr::is_ipv4)
    {
        for pm in &att.port_mappings {
            out.push(mapping_rule(&c, UPLINK_NEW, m.address.addr(), w, z, pm, to));
            out.push(mapping_rule(&c, NET_NEW, m.address.addr(), w, z, pm, to));
        }
    }
    out
}
