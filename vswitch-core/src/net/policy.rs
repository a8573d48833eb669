//! Network policy with Kubernetes NetworkPolicy semantics, compiled to
//! flow tables and conntrack.
//!
//! A [`Policy`] belongs to one network (a Kubernetes namespace is a
//! network here) and selects that network's attachments by their labels.
//! An attachment selected by any policy with `Ingress` in its types takes
//! only the connections some ingress rule of those policies allows; the
//! same for `Egress`. A connection is judged once, by its first packet
//! (and again after a policy change, see below); its replies and related
//! ICMP follow conntrack. Traffic between an attachment and its host (the
//! gateway addresses) is always allowed, as Kubernetes says of a pod's
//! node.
//!
//! The compilation avoids the cross product of sources, destinations and
//! ports. Each direction's rules are numbered; a bit per rule, in rounds
//! of 64 (one 64-bit register each): three tables each classify one
//! dimension of the connection's original tuple (`ct_nw_src`,
//! `ct_nw_dst`, `ct_nw_proto`/`ct_tp_dst`) into the set of rules that
//! dimension agrees with, a register each; one rule per policy rule then
//! matches its bit in all three. Peers become one longest-prefix entry
//! per distinct CIDR, except or attachment address; ports become masked
//! entries per elementary range. The rules installed grow with
//! attachments + CIDRs + port ranges + policy rules, not their product
//! (`compiles_linearly` counts them for 100 attachments and 10 policies).
//!
//! Published ports: a connection to the masquerade address's host port is
//! judged as the connection to the container's port it is translated to.
//!
//! A policy change bumps the network's generation, which every commit
//! stores in `ct_mark`: an established connection with an older mark is
//! judged again by its next packet (in its original direction) and
//! either marked anew or dropped. So a change applies to established
//! connections too, at their next packet.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Attachment;
use crate::{Error, Result};

/// A direction a policy applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Direction {
    /// Connections to the selected attachments.
    Ingress,
    /// Connections from the selected attachments.
    Egress,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// A label selector (`matchLabels` and `matchExpressions`, ANDed; empty
/// selects everything).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selector {
    /// Labels that must have these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<Requirement>,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    /// The label.
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: String,
    /// The values of `In` and `NotIn`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

impl Selector {
    /// True if `labels` satisfy it.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let v = labels.get(&r.key);
                match r.operator.as_str() {
                    "In" => v.is_some_and(|v| r.values.contains(v)),
                    "NotIn" => v.is_none_or(|v| !r.values.contains(v)),
                    "Exists" => v.is_some(),
                    _ => v.is_none(),
                }
            })
    }

    fn validate(&self) -> Result<()> {
        for r in &self.match_expressions {
            match r.operator.as_str() {
                "In" | "NotIn" if r.values.is_empty() => {
                    return Err(bad(format!("matchExpressions: {} on '{}' needs values", r.operator, r.key)));
                }
                "Exists" | "DoesNotExist" if !r.values.is_empty() => {
                    return Err(bad(format!("matchExpressions: {} on '{}' takes no values", r.operator, r.key)));
                }
                "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
                other => {
                    return Err(bad(format!(
                        "matchExpressions: operator '{other}' (In, NotIn, Exists or DoesNotExist)"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// A CIDR with exceptions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpBlock {
    /// The block.
    pub cidr: IpNet,
    /// Parts of it that are not in it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<IpNet>,
}

/// A peer: the network's attachments a selector picks, or an address block.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Peer {
    /// Attachments of the policy's network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<Selector>,
    /// Refused: a network is the namespace here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<Value>,
    /// Addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
}

/// Ports of a rule: a protocol and a port or range (all of the protocol's
/// ports without one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyPort {
    /// `TCP` (the default) or `UDP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// The port (a number: named ports are refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Value>,
    /// With `port`: the range's last port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u16>,
}

/// An ingress rule: connections from any of `from` (everyone if absent
/// or empty) to any of `ports` (all if absent or empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressRule {
    /// Sources.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<Peer>,
    /// Destination ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PolicyPort>,
}

/// An egress rule: connections to any of `to` (everyone if absent or
/// empty) on any of `ports`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressRule {
    /// Destinations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<Peer>,
    /// Destination ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PolicyPort>,
}

/// A network policy (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    /// Its name (unique on the switch).
    pub name: String,
    /// The network whose attachments it selects.
    pub network: String,
    /// Which attachments (all with an empty selector).
    #[serde(default)]
    pub pod_selector: Selector,
    /// `Ingress`, `Egress` or both; by default `Ingress`, and `Egress`
    /// too when there are egress rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_types: Vec<Direction>,
    /// Allowed incoming connections (none listed: none allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<IngressRule>>,
    /// Allowed outgoing connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<EgressRule>>,
}

fn bad(why: impl Into<String>) -> Error {
    Error::invalid("policy", why.into())
}

impl Policy {
    /// A policy from a document: this form, or a Kubernetes
    /// `NetworkPolicy` (`metadata.name`; `metadata.namespace` names the
    /// network), with `network` given when the document does not name one.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] saying what is wrong with it.
    pub fn from_document(doc: Value, network: Option<&str>) -> Result<Policy> {
        let Value::Object(mut o) = doc else { return Err(bad("a policy is a JSON object")) };
        if o.contains_key("spec") || o.contains_key("kind") || o.contains_key("metadata") {
            if let Some(kind) = o.get("kind").and_then(Value::as_str)
                && kind != "NetworkPolicy"
            {
                return Err(bad(format!("kind '{kind}' is not NetworkPolicy")));
            }
            let meta = o.remove("metadata").unwrap_or_default();
            let Some(Value::Object(mut flat)) = o.remove("spec") else {
                return Err(bad("a NetworkPolicy needs a 'spec' object"));
            };
            let name = meta.get("name").cloned().ok_or_else(|| bad("metadata.name is missing"))?;
            flat.insert("name".into(), name);
            if let Some(ns) = meta.get("namespace") {
                flat.insert("network".into(), ns.clone());
            }
            o = flat;
        }
        if let Some(n) = network {
            match o.get("network").and_then(Value::as_str) {
                Some(given) if given != n => {
                    return Err(bad(format!("the policy names network '{given}', not '{n}'")));
                }
                _ => {
                    o.insert("network".into(), Value::String(n.to_string()));
                }
            }
        }
        let p: Policy = serde_json::from_value(Value::Object(o)).map_err(|e| bad(e.to_string()))?;
        p.validate()?;
        Ok(p)
    }

    /// True if it applies to direction `d`.
    pub fn applies(&self, d: Direction) -> bool {
        if self.policy_types.is_empty() {
            // Kubernetes: Egress when there are egress rules (an empty
            // list is none).
            return d == Direction::Ingress || self.egress.as_ref().is_some_and(|e| !e.is_empty());
        }
        self.policy_types.contains(&d)
    }

    /// Its rules in direction `d` as peers and ports (none if it does not
    /// apply).
    fn rules(&self, d: Direction) -> Vec<(&[Peer], &[PolicyPort])> {
        if !self.applies(d) {
            return Vec::new();
        }
        match d {
            Direction::Ingress => {
                self.ingress.iter().flatten().map(|r| (r.from.as_slice(), r.ports.as_slice())).collect()
            }
            Direction::Egress => self.egress.iter().flatten().map(|r| (r.to.as_slice(), r.ports.as_slice())).collect(),
        }
    }

    /// Checks everything the compiler relies on.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the part that is wrong.
    pub fn validate(&self) -> Result<()> {
        let ok_name = |s: &str| {
            !s.is_empty() && s.len() <= 63 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        if !ok_name(&self.name) {
            return Err(bad(format!("'{}' is not a policy name (letters, digits, '-', '_', '.')", self.name)));
        }
        self.pod_selector.validate()?;
        for d in [Direction::Ingress, Direction::Egress] {
            for (i, (peers, ports)) in self.rules(d).into_iter().enumerate() {
                let at = |what: String| bad(format!("{} rule {i}: {what}", d.name()));
                for p in peers {
                    if p.namespace_selector.is_some() {
                        return Err(at("namespaceSelector is not supported: a network is the namespace here, and \
                                       policies select peers of their own network (or ipBlock)"
                            .into()));
                    }
                    match (&p.pod_selector, &p.ip_block) {
                        (Some(s), None) => s.validate()?,
                        (None, Some(b)) => {
                            for e in &b.except {
                                if e.addr().is_ipv4() != b.cidr.addr().is_ipv4() || !b.cidr.contains(e) {
                                    return Err(at(format!("except {e} is not inside {}", b.cidr)));
                                }
                            }
                        }
                        _ => return Err(at("a peer is a podSelector or an ipBlock".into())),
                    }
                }
                for p in ports {
                    port_range(p).map_err(|e| at(e.to_string()))?;
                }
            }
        }
        Ok(())
    }
}

/// A policy port as (protocol number, first, last).
fn port_range(p: &PolicyPort) -> Result<(u8, u16, u16)> {
    let proto = match p.protocol.as_deref().unwrap_or("TCP").to_ascii_uppercase().as_str() {
        "TCP" => 6,
        "UDP" => 17,
        other => return Err(bad(format!("protocol '{other}' (TCP or UDP)"))),
    };
    let port = match &p.port {
        None => None,
        Some(Value::Number(n)) => {
            Some(n.as_u64().filter(|n| (1..=65535).contains(n)).ok_or_else(|| bad(format!("port {n}")))? as u16)
        }
        Some(Value::String(s)) => match s.parse::<u16>() {
            Ok(n) if n > 0 => Some(n),
            _ => return Err(bad(format!("named port '{s}': only port numbers are supported"))),
        },
        Some(other) => return Err(bad(format!("port {other}"))),
    };
    match (port, p.end_port) {
        (None, None) => Ok((proto, 0, u16::MAX)),
        (None, Some(_)) => Err(bad("endPort needs port")),
        (Some(a), None) => Ok((proto, a, a)),
        (Some(a), Some(b)) if b >= a => Ok((proto, a, b)),
        (Some(a), Some(b)) => Err(bad(format!("endPort {b} is below port {a}"))),
    }
}

/// A published port, as the compiler needs it: the masquerade address's
/// `host_port` goes to `to`'s `container_port`.
#[derive(Debug, Clone)]
pub(crate) struct Published {
    pub(crate) proto: u8,
    pub(crate) address: IpAddr,
    pub(crate) host_port: u16,
    pub(crate) to: IpAddr,
    pub(crate) container_port: u16,
}

/// What a network's policies compile against.
#[derive(Debug)]
pub(crate) struct Input<'a> {
    pub(crate) policies: Vec<&'a Policy>,
    pub(crate) attachments: Vec<&'a Attachment>,
    /// Containers of the same cluster network on other hosts, with their
    /// labels: peers a `podSelector` picks too (they are never selected:
    /// their own hosts apply their policies).
    pub(crate) remote: Vec<&'a super::RemoteEndpoint>,
    /// The host's addresses on the network (always allowed).
    pub(crate) host: Vec<IpAddr>,
    /// The gateway port's name and MAC, if the network has one.
    pub(crate) gateway: Option<(String, crate::wire::MacAddr)>,
    pub(crate) published: Vec<Published>,
    /// The cookie of the policy tables' rules.
    pub(crate) cookie: u64,
    /// Where an allowed connection goes on.
    pub(crate) cont: u8,
}

impl Input<'_> {
    /// The network's cookie with these low 32 bits.
    fn cookie_with(&self, low: u32) -> u64 {
        self.cookie & !0xffff_ffff | u64::from(low)
    }
}

/// A policy rule's identity.
pub(crate) type RuleId = (Direction, String, usize);

/// Registers: the three classifications and, set by the caller, where an
/// allowed connection continues.
pub(crate) const REG_RULES: &str = "xreg5";
const REG_PEERS: &str = "xreg6";
const REG_PORTS: &str = "xreg7";
/// The caller's continuation (see [`super::flows`]).
pub(crate) const REG_CONT: &str = "reg9";

/// Rules per round (one 64-bit register).
const ROUND: usize = 64;
/// Rounds per direction (tables 20-119 egress, 120-219 ingress).
const MAX_ROUNDS: usize = 25;
/// Rounds of both directions together: a connection may walk them all,
/// four lookups each, within [`crate::flow::MAX_DEPTH`] (64) with room
/// for the tables around them.
const MAX_ROUNDS_BOTH: usize = 13;
const EGRESS_BASE: u8 = 20;
const INGRESS_BASE: u8 = 120;
/// The first table of the policy check.
pub(crate) const ENTRY: u8 = EGRESS_BASE;
const _: () = assert!(INGRESS_BASE as usize + 4 * MAX_ROUNDS <= super::flows::CONT as usize);

/// The cookie low bits of policy rule `id`'s allow rule: its top bit
/// and 31 bits of a hash of the rule, so that a slot taken over by
/// another rule is another rule to the flow table (its counter starts
/// anew).
pub(crate) fn allow_cookie_bits(id: &RuleId) -> u32 {
    let (d, name, i) = id;
    let h = super::stable_hash(&[d.name(), name, &i.to_string()]);
    0x8000_0000 | (h as u32 & 0x7fff_ffff)
}

/// The cookie low bits of the rules that deny in `d`.
pub(crate) fn deny_cookie_bits(d: Direction) -> u32 {
    0x7fff_fffd + u32::from(d == Direction::Egress)
}

/// Slots: each policy rule keeps its bit while it exists, so its allow
/// rule (and counter) survives changes to other policies.
#[derive(Debug, Default)]
pub(crate) struct Slots {
    by_rule: HashMap<RuleId, usize>,
}

impl Slots {
    /// Assigns slots to exactly `rules` (in `d`): kept, freed, new ones
    /// in the lowest free slots.
    fn assign(&mut self, d: Direction, rules: &[RuleId]) -> Vec<usize> {
        let wanted: BTreeSet<&RuleId> = rules.iter().collect();
        self.by_rule.retain(|k, _| k.0 != d || wanted.contains(k));
        let mut used: BTreeSet<usize> = self.by_rule.iter().filter(|(k, _)| k.0 == d).map(|(_, s)| *s).collect();
        rules
            .iter()
            .map(|r| {
                *self.by_rule.entry(r.clone()).or_insert_with(|| {
                    let s = (0..).find(|s| !used.contains(s)).unwrap_or_default();
                    used.insert(s);
                    s
                })
            })
            .collect()
    }
}

/// One direction's view: the rules (by slot) and who is isolated.
struct Side<'a> {
    d: Direction,
    /// Slot of each rule, with its peers and ports.
    rules: Vec<(usize, RuleId, &'a [Peer], &'a [PolicyPort])>,
    /// Per isolated attachment address: the slots of its policies' rules
    /// and the policies' names.
    isolated: Vec<(IpAddr, Vec<usize>, Vec<&'a str>, &'a Attachment)>,
    /// The isolated attachments themselves (with or without addresses).
    selected: Vec<&'a Attachment>,
    rounds: usize,
}

fn family(a: IpAddr) -> &'static str {
    if a.is_ipv4() { "ip" } else { "ipv6" }
}

fn note(text: &str) -> String {
    let hex: Vec<String> = text.bytes().map(|b| format!("{b:02x}")).collect();
    format!("note:{}", hex.join("."))
}

/// The bits of `slots` in round `k`.
fn bits(slots: impl IntoIterator<Item = usize>, k: usize) -> u64 {
    slots.into_iter().filter(|s| s / ROUND == k).fold(0, |b, s| b | 1 << (s % ROUND))
}

/// Value/mask pairs covering `lo..=hi` exactly.
fn range_masks(lo: u16, hi: u16) -> Vec<(u16, u16)> {
    let (mut lo, hi) = (u32::from(lo), u32::from(hi));
    let mut out = Vec::new();
    while lo <= hi {
        // The largest aligned block starting at lo that fits.
        let mut size = if lo == 0 { 1 << 16 } else { 1 << lo.trailing_zeros() };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out.push((lo as u16, !(size - 1) as u16));
        lo += size;
    }
    out
}

/// Compiled policies: the rules, and each policy rule's allow-rule cookie.
pub(crate) type Compiled = (Vec<String>, Vec<(RuleId, u64)>);

/// Compiles `input` (slots from `slots`) into rules; also returns the
/// allow rule cookie of each policy rule.
///
/// # Errors
/// [`Error::Full`] beyond [`MAX_ROUNDS`] rounds of rules in a direction.
pub(crate) fn compile(input: &Input<'_>, slots: &mut Slots) -> Result<Compiled> {
    let mut out = Vec::new();
    let mut ids = Vec::new();
    let sides = [side(input, slots, Direction::Egress)?, side(input, slots, Direction::Ingress)?];
    // Each round is four lookups deep: both directions' rounds must fit
    // in a packet's pipeline depth.
    if sides.iter().map(|s| s.rounds).sum::<usize>() > MAX_ROUNDS_BOTH {
        return Err(Error::Full("policy rule slots of a network (13 rounds of 64 across both directions)"));
    }
    multicast(input, &sides, &mut out);
    for side in &sides {
        for (_, id, _, _) in &side.rules {
            ids.push((id.clone(), input.cookie_with(allow_cookie_bits(id))));
        }
        emit(input, side, &mut out);
    }
    Ok((out, ids))
}

fn side<'a>(input: &Input<'a>, slots: &mut Slots, d: Direction) -> Result<Side<'a>> {
    let mut rules = Vec::new();
    let mut ids = Vec::new();
    for p in &input.policies {
        for (i, (peers, ports)) in p.rules(d).into_iter().enumerate() {
            ids.push((d, p.name.clone(), i));
            rules.push((peers, ports));
        }
    }
    let assigned = slots.assign(d, &ids);
    let rounds = assigned.iter().map(|s| s / ROUND + 1).max().unwrap_or(1);
    if rounds > MAX_ROUNDS {
        return Err(Error::Full("policy rules in a direction of a network"));
    }
    let rules: Vec<_> =
        assigned.into_iter().zip(ids).zip(rules).map(|((slot, id), (peers, ports))| (slot, id, peers, ports)).collect();
    let mut isolated = Vec::new();
    let mut selected = Vec::new();
    for a in &input.attachments {
        let selecting: Vec<&Policy> =
            input.policies.iter().copied().filter(|p| p.applies(d) && p.pod_selector.matches(&a.labels)).collect();
        if selecting.is_empty() {
            continue;
        }
        selected.push(*a);
        let names: Vec<&str> = selecting.iter().map(|p| p.name.as_str()).collect();
        let mine: Vec<usize> = rules.iter().filter(|r| names.contains(&r.1.1.as_str())).map(|r| r.0).collect();
        for ip in &a.ips {
            isolated.push((ip.address.addr(), mine.clone(), names.clone(), *a));
        }
    }
    Ok(Side { d, rules, isolated, selected, rounds })
}

/// IP multicast and broadcast are flooded by NORMAL, never judged as
/// connections: with isolated attachments, the network's table 1 sends
/// them to every port but the ingress-isolated attachments' instead, and
/// drops them from egress-isolated ones (neighbour discovery and MLD,
/// above these, go everywhere).
fn multicast(input: &Input<'_>, sides: &[Side<'_>; 2], out: &mut Vec<String>) {
    let [egress, ingress] = sides;
    if egress.selected.is_empty() && ingress.selected.is_empty() {
        return;
    }
    let c = format!("cookie={:#x}", input.cookie);
    let group = "dl_dst=01:00:00:00:00:00/01:00:00:00:00:00";
    for a in &egress.selected {
        let cd = format!("cookie={:#x}", input.cookie_with(deny_cookie_bits(Direction::Egress)));
        for f in ["ip", "ipv6"] {
            out.push(format!(
                "{cd},table=1,priority=26,in_port={},{f},{group},actions={}",
                a.port,
                note(&format!("egress denied: multicast or broadcast from {} {}", a.container_id, a.ifname))
            ));
        }
    }
    if ingress.selected.is_empty() {
        return;
    }
    let isolated: BTreeSet<&str> = ingress.selected.iter().map(|a| a.port.as_str()).collect();
    let mut to: Vec<String> = input
        .attachments
        .iter()
        .filter(|a| !isolated.contains(a.port.as_str()))
        .map(|a| format!("output:{}", a.port))
        .collect();
    to.extend(input.gateway.as_ref().map(|(p, _)| format!("output:{p}")));
    let actions = if to.is_empty() { "drop".to_string() } else { to.join(",") };
    for f in ["ip", "ipv6"] {
        out.push(format!("{c},table=1,priority=25,{f},{group},actions={actions}"));
    }
}

/// The tables of round `k`: (select, then the two classifications in
/// order, allow). Egress: by source, destination, port; ingress: by
/// destination, port, source.
fn tables(d: Direction, k: usize) -> [u8; 4] {
    let base = if d == Direction::Egress { EGRESS_BASE } else { INGRESS_BASE } + 4 * k as u8;
    [base, base + 1, base + 2, base + 3]
}

fn emit(input: &Input<'_>, side: &Side<'_>, out: &mut Vec<String>) {
    let c = format!("cookie={:#x}", input.cookie);
    let d = side.d;
    // Denials count under a cookie of their own per direction.
    let cd = format!("cookie={:#x}", input.cookie_with(deny_cookie_bits(d)));
    let dir = d.name();
    // Where a connection goes when this direction allows it.
    let done = if d == Direction::Egress {
        format!("goto_table:{}", tables(Direction::Ingress, 0)[0])
    } else {
        format!("goto_table:{}", input.cont)
    };
    let last = side.rounds - 1;
    let next_round = |k: usize, table: u8, what: &str| {
        if k < last {
            format!("{c},table={table},priority=0,actions=goto_table:{}", tables(d, k + 1)[0])
        } else {
            format!("{cd},table={table},priority=0,actions={}", note(&format!("{dir} denied: {what}")))
        }
    };
    // Which end of the connection is the selected attachment's, which the peer's.
    let (own, peer) = if d == Direction::Egress { ("ct_nw_src", "ct_nw_dst") } else { ("ct_nw_dst", "ct_nw_src") };
    let v6 = |f: &str| f.replace("nw", "ipv6");
    let field = |f: &str, a: IpAddr| if a.is_ipv4() { f.to_string() } else { v6(f) };
    let any_peer: Vec<usize> = side.rules.iter().filter(|r| r.2.is_empty()).map(|r| r.0).collect();
    let any_port: Vec<usize> = side.rules.iter().filter(|r| r.3.is_empty()).map(|r| r.0).collect();

    for k in 0..side.rounds {
        let [select, first, second, allow] = tables(d, k);
        let (peer_t, port_t) = if d == Direction::Egress { (first, second) } else { (second, first) };
        let after_peer = if d == Direction::Egress { port_t } else { allow };
        let after_port = if d == Direction::Egress { allow } else { peer_t };
        // Selection: the attachment's rules in this round.
        if k == 0 {
            // An isolated attachment's new connections at addresses the
            // policies do not know (IPv6 link-local: what the select
            // entries do not catch) are denied, by its MAC: to it for
            // ingress, from it for egress. (New only: a reply's MACs are
            // the other way round.)
            let (mac_field, end) = if d == Direction::Egress { ("dl_src", "from") } else { ("dl_dst", "to") };
            for a in &side.selected {
                out.push(format!(
                    "{cd},table={select},priority=90,ct_state=+new+trk,{mac_field}={},actions={}",
                    a.mac,
                    note(&format!("{dir} denied: {end} {} {} at an address no policy knows", a.container_id, a.ifname))
                ));
            }
            // The host is always allowed, both ways: at its addresses,
            // and at its link-local ones (by the gateway port's MAC).
            if let Some((_, gw_mac)) = &input.gateway {
                let (ll, mac) =
                    if d == Direction::Egress { ("ct_ipv6_dst", "dl_dst") } else { ("ct_ipv6_src", "dl_src") };
                out.push(format!(
                    "{c},table={select},priority=300,ipv6,{ll}=fe80::/10,{mac}={gw_mac},actions={},{done}",
                    note(&format!("{dir} allowed: the host (link-local)"))
                ));
            }
            for h in &input.host {
                out.push(format!(
                    "{c},table={select},priority=300,{},{}={h},actions={},{done}",
                    family(*h),
                    field(peer, *h),
                    note(&format!("{dir} allowed: the host ({h})"))
                ));
            }
        }
        for (ip, slots, names, a) in &side.isolated {
            let b = bits(slots.iter().copied(), k);
            let who = format!("{dir} of {} {} ({ip}): selected by {}", a.container_id, a.ifname, names.join(", "));
            let (cookie, then) = if b != 0 {
                let next = if d == Direction::Egress { peer_t } else { port_t };
                (&c, format!("{},set_field:{b:#x}->{REG_RULES},goto_table:{next}", note(&who)))
            } else if k < last {
                (&c, format!("goto_table:{}", tables(d, k + 1)[0]))
            } else {
                (&cd, note(&format!("{dir} denied: {who}, which allow nothing")))
            };
            out.push(format!(
                "{cookie},table={select},priority=100,{},{}={ip},actions={then}",
                family(*ip),
                field(own, *ip)
            ));
        }
        // Published ports (ingress: to an isolated attachment; egress: to
        // any): judged as the connection to the container's port.
        for p in &input.published {
            let port_bits = port_bits_for(side, p.proto, p.container_port, k, &any_port);
            let head = |cookie: &str, table: u8| {
                format!(
                    "{cookie},table={table},priority=200,ip,ct_nw_proto={},ct_nw_dst={},ct_tp_dst={}",
                    p.proto, p.address, p.host_port
                )
            };
            match d {
                Direction::Ingress => {
                    let Some((_, slots, names, _)) = side.isolated.iter().find(|i| i.0 == p.to) else { continue };
                    let b = bits(slots.iter().copied(), k);
                    let (cookie, then) = if b != 0 {
                        let what = format!("{dir} to {}:{} published as {}", p.to, p.container_port, p.host_port);
                        let regs = format!("set_field:{b:#x}->{REG_RULES},set_field:{port_bits:#x}->{REG_PORTS}");
                        (&c, format!("{},{regs},goto_table:{peer_t}", note(&what)))
                    } else if k < last {
                        (&c, format!("goto_table:{}", tables(d, k + 1)[0]))
                    } else {
                        (&cd, note(&format!("{dir} denied: selected by {}, which allow nothing", names.join(", "))))
                    };
                    out.push(format!("{},actions={then}", head(cookie, select)));
                }
                Direction::Egress => {
                    let peers = peer_bits_for(side, input, p.to, k, &any_peer);
                    out.push(format!(
                        "{},actions=set_field:{peers:#x}->{REG_PEERS},set_field:{port_bits:#x}->{REG_PORTS},goto_table:{allow}",
                        head(&c, peer_t)
                    ));
                }
            }
        }
        if k == 0 {
            let why = if d == Direction::Egress { "the source" } else { "the destination" };
            out.push(format!(
                "{c},table={select},priority=0,actions={},{done}",
                note(&format!("{dir} allowed: {why} is not selected by an {dir} policy"))
            ));
        } else {
            out.push(next_round(last, select, "unreachable"));
        }
        // Peers: one entry per distinct prefix.
        for (net, b) in peer_entries(side, input, k, &any_peer) {
            let a = net.addr();
            out.push(format!(
                "{c},table={peer_t},priority={},{},{}={net},actions=set_field:{b:#x}->{REG_PEERS},goto_table:{after_peer}",
                100 + u16::from(net.prefix_len()),
                family(a),
                field(peer, a)
            ));
        }
        out.push(format!(
            "{c},table={peer_t},priority=0,actions=set_field:{:#x}->{REG_PEERS},goto_table:{after_peer}",
            bits(any_peer.iter().copied(), k)
        ));
        // Ports: masked entries per elementary range.
        for (proto, lo, hi, b) in port_entries(side, k, &any_port) {
            for (v, m) in range_masks(lo, hi) {
                out.push(format!(
                    "{c},table={port_t},priority=100,ct_nw_proto={proto},ct_tp_dst={v:#x}/{m:#x},actions=set_field:{b:#x}->{REG_PORTS},goto_table:{after_port}"
                ));
            }
        }
        out.push(format!(
            "{c},table={port_t},priority=0,actions=set_field:{:#x}->{REG_PORTS},goto_table:{after_port}",
            bits(any_port.iter().copied(), k)
        ));
        // Allow: a rule's bit in all three.
        for (slot, id, _, _) in side.rules.iter().filter(|r| r.0 / ROUND == k) {
            let (_, name, i) = id;
            let b = 1u64 << (slot % ROUND);
            let cookie = input.cookie_with(allow_cookie_bits(id));
            out.push(format!(
                "cookie={cookie:#x},table={allow},priority=100,{REG_RULES}={b:#x}/{b:#x},{REG_PEERS}={b:#x}/{b:#x},{REG_PORTS}={b:#x}/{b:#x},actions={},{done}",
                note(&format!("{dir} allowed by policy {name}, rule {i}"))
            ));
        }
        out.push(next_round(k, allow, "no rule of the selecting policies allows it"));
    }
}

/// The rules whose peers contain address `a`, in round `k`.
fn peer_bits_for(side: &Side<'_>, input: &Input<'_>, a: IpAddr, k: usize, any: &[usize]) -> u64 {
    let host = IpNet::from(a);
    let mut b = bits(any.iter().copied(), k);
    for (slot, _, peers, _) in &side.rules {
        if slot / ROUND == k && peers.iter().any(|p| peer_contains(p, input, &host)) {
            b |= 1 << (slot % ROUND);
        }
    }
    b
}

/// True if every address of `net` not covered by a more specific listed
/// prefix is a peer `p` names.
fn peer_contains(p: &Peer, input: &Input<'_>, net: &IpNet) -> bool {
    if let Some(b) = &p.ip_block {
        return b.cidr.contains(net) && !b.except.iter().any(|e| e.contains(net));
    }
    let Some(sel) = &p.pod_selector else { return false };
    let single = net.prefix_len() == net.max_prefix_len();
    single
        && (input
            .attachments
            .iter()
            .any(|a| sel.matches(&a.labels) && a.ips.iter().any(|i| i.address.addr() == net.addr()))
            || input.remote.iter().any(|r| sel.matches(&r.labels) && r.ip == net.addr()))
}

/// Every distinct prefix the round's peers name, with the rules that
/// contain it. All are kept, even those with the default's bits: a
/// prefix inside another (an except) must shadow the outer one.
fn peer_entries(side: &Side<'_>, input: &Input<'_>, k: usize, any: &[usize]) -> Vec<(IpNet, u64)> {
    let mut nets: BTreeSet<IpNet> = BTreeSet::new();
    for (slot, _, peers, _) in &side.rules {
        if slot / ROUND != k {
            continue;
        }
        for p in *peers {
            if let Some(b) = &p.ip_block {
                nets.insert(b.cidr.trunc());
                nets.extend(b.except.iter().map(IpNet::trunc));
            }
            if let Some(sel) = &p.pod_selector {
                for a in input.attachments.iter().filter(|a| sel.matches(&a.labels)) {
                    nets.extend(a.ips.iter().map(|i| IpNet::from(i.address.addr())));
                }
                nets.extend(input.remote.iter().filter(|r| sel.matches(&r.labels)).map(|r| IpNet::from(r.ip)));
            }
        }
    }
    let default = bits(any.iter().copied(), k);
    nets.into_iter()
        .map(|n| {
            let mut b = default;
            for (slot, _, peers, _) in &side.rules {
                if slot / ROUND == k && peers.iter().any(|p| peer_contains(p, input, &n)) {
                    b |= 1 << (slot % ROUND);
                }
            }
            (n, b)
        })
        .collect()
}

/// The rules whose ports contain `port` of `proto`, in round `k`.
fn port_bits_for(side: &Side<'_>, proto: u8, port: u16, k: usize, any: &[usize]) -> u64 {
    let mut b = bits(any.iter().copied(), k);
    for (slot, _, _, ports) in &side.rules {
        let hit =
            ports.iter().filter_map(|p| port_range(p).ok()).any(|(pr, lo, hi)| pr == proto && lo <= port && port <= hi);
        if slot / ROUND == k && hit {
            b |= 1 << (slot % ROUND);
        }
    }
    b
}

/// The round's elementary port ranges per protocol with their rules
/// (ranges no rule names more than the default are left out: the
/// default entry gives them the same bits).
fn port_entries(side: &Side<'_>, k: usize, any: &[usize]) -> Vec<(u8, u16, u16, u64)> {
    let mut ranges: BTreeMap<u8, Vec<(u16, u16, usize)>> = BTreeMap::new();
    for (slot, _, _, ports) in side.rules.iter().filter(|r| r.0 / ROUND == k) {
        for (proto, lo, hi) in ports.iter().filter_map(|p| port_range(p).ok()) {
            ranges.entry(proto).or_default().push((lo, hi, *slot));
        }
    }
    let default = bits(any.iter().copied(), k);
    let mut out = Vec::new();
    for (proto, rs) in ranges {
        let mut cuts: BTreeSet<u32> = BTreeSet::new();
        for (lo, hi, _) in &rs {
            cuts.insert(u32::from(*lo));
            cuts.insert(u32::from(*hi) + 1);
        }
        let cuts: Vec<u32> = cuts.into_iter().collect();
        for w in cuts.windows(2) {
            let (lo, hi) = (w[0] as u16, (w[1] - 1) as u16);
            let b = rs
                .iter()
                .filter(|(a, z, _)| *a <= lo && hi <= *z)
                .fold(default, |b, (_, _, slot)| b | 1 << (slot % ROUND));
            if b != default {
                out.push((proto, lo, hi, b));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::IpConfig;
    use crate::wire::MacAddr;

    fn att(id: u32, ip: &str, labels: &[(&str, &str)]) -> Attachment {
        Attachment {
            network: "n".into(),
            container_id: format!("c{id}"),
            ifname: "eth0".into(),
            netns: String::new(),
            port: format!("p{id}"),
            mac: MacAddr([2, 0, 0, 0, 0, id as u8]),
            host_mac: MacAddr([2, 0, 0, 0, 1, id as u8]),
            ips: vec![IpConfig { address: format!("{ip}/16").parse().unwrap(), gateway: None }],
            routes: Vec::new(),
            dns: Value::Null,
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            builtin_ipam: false,
            port_mappings: Vec::new(),
            id,
        }
    }

    fn policy(v: Value) -> Policy {
        Policy::from_document(v, Some("n")).unwrap()
    }

    #[test]
    fn range_masks_cover_exactly() {
        for (lo, hi) in [(0u16, 65535u16), (80, 80), (1000, 2000), (1, 65534), (32768, 60999)] {
            let ms = range_masks(lo, hi);
            for p in [lo.saturating_sub(1), lo, hi, hi.saturating_add(1), lo / 2 + hi / 2] {
                let inside = lo <= p && p <= hi;
                assert_eq!(ms.iter().any(|(v, m)| p & m == *v), inside, "{p} in {lo}..={hi}: {ms:?}");
            }
        }
        assert_eq!(range_masks(0, 65535), vec![(0, 0)]);
        assert!(range_masks(1000, 2000).len() <= 2 * 16);
    }

    #[test]
    fn selectors_and_kubernetes_documents() {
        let p = Policy::from_document(
            serde_json::json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": "web", "namespace": "n"},
                "spec": {"podSelector": {"matchLabels": {"app": "web"},
                         "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}]},
                         "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                                      "ports": [{"protocol": "TCP", "port": 80, "endPort": 90}]}]}
            }),
            None,
        )
        .unwrap();
        assert_eq!((p.name.as_str(), p.network.as_str()), ("web", "n"));
        assert!(p.applies(Direction::Ingress) && !p.applies(Direction::Egress));
        let l = |v: &[(&str, &str)]| v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        assert!(p.pod_selector.matches(&l(&[("app", "web")])));
        assert!(!p.pod_selector.matches(&l(&[("app", "web"), ("tier", "db")])));
        for bad in [
            serde_json::json!({"name": "x", "ingress": [{"from": [{"namespaceSelector": {}}]}]}),
            serde_json::json!({"name": "x", "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]}]}),
            serde_json::json!({"name": "x", "ingress": [{"ports": [{"port": "http"}]}]}),
            serde_json::json!({"name": "x", "ingress": [{"ports": [{"port": 90, "endPort": 80}]}]}),
            serde_json::json!({"name": "x", "ingress": [{"ports": [{"protocol": "SCTP"}]}]}),
            serde_json::json!({"name": "x", "podSelector": {"matchExpressions": [{"key": "a", "operator": "Has"}]}}),
            serde_json::json!({"name": "x", "unknown": 1}),
        ] {
            assert!(Policy::from_document(bad.clone(), Some("n")).is_err(), "{bad}");
        }
    }

    #[test]
    fn slots_stay_with_their_rules() {
        let mut s = Slots::default();
        let r = |p: &str, i| (Direction::Ingress, p.to_string(), i);
        assert_eq!(s.assign(Direction::Ingress, &[r("a", 0), r("b", 0), r("b", 1)]), vec![0, 1, 2]);
        // a goes: b keeps its slots; c takes the free one.
        assert_eq!(s.assign(Direction::Ingress, &[r("b", 0), r("b", 1), r("c", 0)]), vec![1, 2, 0]);
    }

    #[test]
    fn rounds_must_fit_the_pipeline() {
        let atts = [att(1, "10.0.0.2", &[])];
        let many = |n: usize| {
            let rules: Vec<Value> = (0..n).map(|i| serde_json::json!({"ports": [{"port": i + 1}]})).collect();
            policy(serde_json::json!({"name": "big", "ingress": rules}))
        };
        for (n, fits) in [(64 * 12, true), (64 * 12 + 1, false)] {
            let p = many(n);
            let input = Input {
                policies: vec![&p],
                attachments: atts.iter().collect(),
                remote: Vec::new(),
                host: Vec::new(),
                gateway: None,
                published: Vec::new(),
                cookie: 0x1234_0000_0000,
                cont: crate::net::flows::CONT,
            };
            // Plus the one round of egress every network has.
            assert_eq!(compile(&input, &mut Slots::default()).is_ok(), fits, "{n} rules");
        }
    }

    /// Containers of other hosts (a cluster network) are podSelector peers
    /// by their labels, never selected themselves.
    #[test]
    fn remote_endpoints_are_peers_by_their_labels() {
        let atts = [att(1, "10.0.1.2", &[("app", "db")])];
        let l = |v: &[(&str, &str)]| v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        let remote = [
            super::super::RemoteEndpoint { ip: "10.0.2.2".parse().unwrap(), labels: l(&[("app", "client")]) },
            super::super::RemoteEndpoint { ip: "10.0.2.3".parse().unwrap(), labels: l(&[("app", "db")]) },
        ];
        let p = policy(serde_json::json!({
            "name": "db-in",
            "podSelector": {"matchLabels": {"app": "db"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}]
        }));
        let input = Input {
            policies: vec![&p],
            attachments: atts.iter().collect(),
            remote: remote.iter().collect(),
            host: Vec::new(),
            gateway: None,
            published: Vec::new(),
            cookie: 0x1234_0000_0000,
            cont: crate::net::flows::CONT,
        };
        let (rules, _) = compile(&input, &mut Slots::default()).unwrap();
        let text = rules.join("\n");
        assert!(text.contains("nw_src=10.0.2.2"), "the remote client is a peer:\n{text}");
        assert!(!text.contains("10.0.2.3"), "the remote db is neither a peer nor selected here:\n{text}");
    }

    /// 100 attachments, 10 policies of 2 rules each (labels, an ipBlock
    /// with an except, ports and a range): the rules grow with the sum of
    /// the parts, not their product.
    #[test]
    fn compiles_linearly() {
        let atts: Vec<Attachment> = (0..100u32)
            .map(|i| {
                let app = format!("app{}", i % 10);
                att(i + 1, &format!("10.0.{}.{}", i / 200, i % 200 + 2), &[("app", app.as_str())])
            })
            .collect();
        let policies: Vec<Policy> = (0..10)
            .map(|i| {
                policy(serde_json::json!({
                    "name": format!("p{i}"),
                    "podSelector": {"matchLabels": {"app": format!("app{i}")}},
                    "policyTypes": ["Ingress", "Egress"],
                    "ingress": [
                        {"from": [{"podSelector": {"matchLabels": {"app": format!("app{}", (i + 1) % 10)}}}],
                         "ports": [{"port": 80 + i}, {"protocol": "UDP", "port": 5000, "endPort": 5100}]},
                        {"from": [{"ipBlock": {"cidr": "192.168.0.0/16", "except": [format!("192.168.{i}.0/24")]}}]}
                    ],
                    "egress": [{"to": [{"podSelector": {}}]}, {"ports": [{"port": 53}, {"protocol": "UDP", "port": 53}]}]
                }))
            })
            .collect();
        let input = Input {
            policies: policies.iter().collect(),
            attachments: atts.iter().collect(),
            remote: Vec::new(),
            host: vec!["10.0.0.1".parse().unwrap()],
            gateway: Some(("gw".into(), MacAddr([2, 0, 0, 0, 0, 0xfe]))),
            published: Vec::new(),
            cookie: 0x1234_0000_0000,
            cont: crate::net::flows::CONT,
        };
        let (rules, ids) = compile(&input, &mut Slots::default()).unwrap();
        assert_eq!(ids.len(), 40);
        // Per direction: 100 selections and 100 link-local guards by
        // MAC, 100 peer prefixes (ingress: 11 ipBlock prefixes more), a
        // few port ranges, 20 allows, a few defaults; 200 multicast
        // guards (IPv4 and IPv6 per egress-isolated attachment). A cross
        // product would be 100 x 100 x ports.
        assert!(rules.len() < 1000, "{} rules", rules.len());
        let sw = crate::Switch::builder().manual().build().unwrap();
        sw.add_bridge("b").unwrap();
        // The ports the rules name (the multicast rules output to them).
        let _ports: Vec<_> = atts
            .iter()
            .map(|a| a.port.as_str())
            .chain(["gw"])
            .map(|p| sw.add_memory_port("b", p, crate::PortConfig::default()).unwrap())
            .collect();
        let refs: Vec<&str> = rules.iter().map(String::as_str).collect();
        sw.add_flows("b", &refs).unwrap();
        eprintln!("100 attachments x 10 policies: {} rules", rules.len());
    }
}
