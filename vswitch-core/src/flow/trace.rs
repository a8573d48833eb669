//! `trace`: how the switch would handle a packet, step by step.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// One port a traced packet leaves through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TraceOutput {
    /// The port's number.
    pub port_no: u32,
    /// The port's name.
    pub port: String,
    /// The 802.1Q VLAN it would carry on the wire, if tagged.
    pub vlan: Option<u16>,
    /// What is done to the packet on its way out, then the port number,
    /// as the datapath actions say it: `push_vlan(vid=10),2`,
    /// `pop_vlan,3`, `tunnel(vxlan,remote_ip=192.0.2.2,key=5),4`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub action: String,
    /// The tunnel metadata the packet leaves with (a tunnel port's).
    #[serde(skip)]
    pub tunnel: Option<crate::packet::TunnelMeta>,
}

impl TraceOutput {
    /// The verdict of `outputs`: each one's action, or `drop`.
    pub fn verdict(outputs: &[TraceOutput]) -> String {
        if outputs.is_empty() {
            return "drop".to_string();
        }
        let each = |o: &TraceOutput| if o.action.is_empty() { o.port_no.to_string() } else { o.action.clone() };
        outputs.iter().map(each).collect::<Vec<_>>().join(",")
    }
}

/// The explanation of one packet's path through a bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Trace {
    /// The traced packet, as canonical flow text.
    pub flow: String,
    /// The rule that matched, as `dump-flows` would show it, if any.
    pub rule: Option<String>,
    /// What happened, in order.
    pub steps: Vec<String>,
    /// Where the packet goes.
    pub outputs: Vec<TraceOutput>,
    /// One line: the outcome.
    pub verdict: String,
}

impl Trace {
    /// Multi-line text in the spirit of `ovs-appctl ofproto/trace`.
    pub fn to_text(&self) -> String {
        let mut s = format!("Flow: {}\n", self.flow);
        match &self.rule {
            Some(r) => {
                let _ = writeln!(s, "Rule: {r}");
            }
            None => s.push_str("Rule: none matched\n"),
        }
        for step in &self.steps {
            let _ = writeln!(s, "  {step}");
        }
        let _ = write!(s, "Datapath actions: {}", self.verdict);
        s
    }
}
