//! `trace`: the path a described packet would take, worked out on the
//! datapath's live state (flow table, MAC table, port VLAN modes) without
//! sending anything, learning anything or counting anything.

use super::Datapath;
use crate::flow::{Action, Match, Trace, TraceOutput, VLAN_PRESENT};
use crate::port::{PortNo, VlanMode};
use crate::wire::{MacAddr, VlanTci, ethertype};

impl Datapath {
    /// Traces the packet `m` describes through bridge `bridge`. Output port
    /// names are left empty for the caller to fill in.
    pub(crate) fn trace(&self, bridge: usize, m: &Match) -> Option<Trace> {
        let b = self.bridges.get(bridge)?.as_ref()?;
        let key = m.value;
        let in_port = (key.0[0] & 0xffff_ffff) as PortNo;
        let flow = m.to_text();
        let Some(id) = b.flows.classify(&key) else {
            return Some(Trace {
                flow,
                rule: None,
                steps: vec!["no rule matched: dropped (no_match)".into()],
                outputs: vec![],
                verdict: "drop".into(),
            });
        };
        let rule = b.flows.rule(id).expect("classified rule exists");
        let mut steps = Vec::new();
        let mut outputs: Vec<TraceOutput> = Vec::new();
        let tci_bits = (key.0[0] >> 48) as u16;
        let mut tci = (tci_bits & VLAN_PRESENT != 0).then_some(VlanTci(tci_bits & !VLAN_PRESENT));
        let mut dl_dst = MacAddr::from_u64(key.0[1] & 0xffff_ffff_ffff);
        let dl_type = (key.0[0] >> 32) as u16;
        let ttl = (key.0[2] >> 48) as u8;
        let in_slot = b.by_port_no.get(in_port as usize).copied().flatten();
        let out = |port_no: PortNo, vlan: Option<u16>| TraceOutput { port_no, port: String::new(), vlan };
        let exists = |p: PortNo| b.by_port_no.get(p as usize).copied().flatten().is_some();
        for action in &rule.spec.actions {
            match *action {
                Action::Output(p) if p == in_port => steps.push(format!("output:{p}: skipped, it is the input port")),
                Action::Output(p) if !exists(p) => steps.push(format!("output:{p}: no such port: dropped (no_port)")),
                Action::Output(p) => outputs.push(out(p, tci.map(|t| t.vid()))),
                Action::InPort => outputs.push(out(in_port, tci.map(|t| t.vid()))),
                Action::Flood | Action::All => {
                    for &s in &b.slots {
                        let p = self.ports[s].as_ref().expect("bridge port").port_no;
                        if p != in_port {
                            outputs.push(out(p, tci.map(|t| t.vid())));
                        }
                    }
                }
                Action::Normal => {
                    let Some(slot) = in_slot else {
                        steps.push(format!("NORMAL: input port {in_port} does not exist: dropped"));
                        continue;
                    };
                    let mode = &self.ports[slot].as_ref().expect("input port").vlan;
                    let vid = tci.map_or(0, |t| t.vid());
                    let vlan = match mode {
                        VlanMode::Access(tag) if vid == 0 => *tag,
                        VlanMode::Access(_) => {
                            steps.push("NORMAL: tagged frame on an access port: dropped (tagged_on_access)".into());
                            continue;
                        }
                        VlanMode::Trunk(_) if mode.carries(vid) => vid,
                        VlanMode::Trunk(_) => {
                            steps.push(format!("NORMAL: VLAN {vid} is not carried by port {in_port}: dropped"));
                            continue;
                        }
                    };
                    let tag_for = |p: PortNo| {
                        let slot = b.by_port_no[p as usize].expect("bridge port");
                        match self.ports[slot].as_ref().expect("bridge port").vlan {
                            VlanMode::Access(_) => None,
                            VlanMode::Trunk(_) if vlan != 0 => Some(vlan),
                            VlanMode::Trunk(_) => tci.map(|t| t.vid()),
                        }
                    };
                    let learned = if dl_dst.is_unicast() { b.mac.lookup(vlan, dl_dst) } else { None };
                    match learned {
                        Some(p) if p == in_port => {
                            steps.push(format!("NORMAL: {dl_dst} was learned on the input port: dropped (same_port)"))
                        }
                        Some(p) if exists(p) => {
                            steps.push(format!("NORMAL: {dl_dst} learned on port {p} in VLAN {vlan}"));
                            outputs.push(out(p, tag_for(p)));
                        }
                        _ => {
                            let why = if dl_dst.is_unicast() { "not learned" } else { "a group address" };
                            steps.push(format!("NORMAL: {dl_dst} is {why} in VLAN {vlan}: flood"));
                            for &s in &b.slots {
                                let port = self.ports[s].as_ref().expect("bridge port");
                                if port.port_no != in_port && port.vlan.carries(vlan) {
                                    outputs.push(out(port.port_no, tag_for(port.port_no)));
                                }
                            }
                        }
                    }
                }
                Action::SetVlanVid(v) => {
                    tci = Some(VlanTci::new(v, tci.map_or(0, |t| t.pcp())));
                    steps.push(format!("set VLAN ID to {v}"));
                }
                Action::SetVlanPcp(pcp) => {
                    tci = Some(VlanTci::new(tci.map_or(0, |t| t.vid()), pcp));
                    steps.push(format!("set VLAN priority to {pcp}"));
                }
                Action::PushVlan(_) => {
                    tci = Some(VlanTci::new(0, 0));
                    steps.push("push a VLAN tag".into());
                }
                Action::StripVlan => {
                    tci = None;
                    steps.push("strip the VLAN tag".into());
                }
                Action::SetDlDst(m) => {
                    dl_dst = m;
                    steps.push(format!("set dl_dst to {m}"));
                }
                Action::DecTtl => {
                    if matches!(dl_type, ethertype::IPV4 | ethertype::IPV6) && ttl <= 1 {
                        steps.push(format!("dec_ttl: TTL {ttl} expires: dropped (ttl_expired)"));
                        break;
                    }
                    steps.push("decrement TTL".into());
                }
                other => steps.push(format!("{other}")),
            }
        }
        let verdict = if outputs.is_empty() {
            "drop".to_string()
        } else {
            outputs.iter().map(|o| o.port_no.to_string()).collect::<Vec<_>>().join(",")
        };
        Some(Trace { flow, rule: Some(rule.spec.to_text()), steps, outputs, verdict })
    }
}
