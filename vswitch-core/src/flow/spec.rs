//! A flow rule as text: `priority=100,cookie=0x5,idle_timeout=30,tcp,
//! tp_dst=80,actions=output:2`, parsed and formatted as `ovs-ofctl` does.

use serde::{Deserialize, Serialize};

use super::action::{Action, actions_to_text, check_action_prerequisites, parse_actions};
use super::matching::{FlowParseError, Match, apply_match_item, check_prerequisites, err, parse_num};

/// The default priority of a rule that names none (OpenFlow's).
pub const DEFAULT_PRIORITY: u16 = 32768;

/// A rule's definition: what it matches, at which priority, and what it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowSpec {
    /// 0 to 65535; the highest-priority matching rule wins.
    pub priority: u16,
    /// Which packets it applies to.
    pub matching: Match,
    /// What it does with them; empty means drop.
    pub actions: Vec<Action>,
    /// An opaque tag for the controller's use (and for selecting rules).
    pub cookie: u64,
    /// Seconds without a matching packet after which the rule is removed (0: never).
    pub idle_timeout: u16,
    /// Seconds after which the rule is removed regardless (0: never).
    pub hard_timeout: u16,
}

/// A selection of rules, for modify, delete and dump: a match, and for
/// `--strict` a priority; optionally a cookie under a mask.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FlowSelector {
    /// Rules this covers (loose) or equals (strict) are selected.
    pub matching: Match,
    /// The priority given, if any (used by strict selection).
    pub priority: Option<u16>,
    /// `cookie=VALUE/MASK`: only rules whose cookie agrees under the mask.
    pub cookie: Option<(u64, u64)>,
}

/// Port-name resolution used while parsing (`in_port=vm1`, `output:vm2`).
pub type PortResolver<'a> = &'a dyn Fn(&str) -> Option<u32>;

fn split_items(text: &str) -> impl Iterator<Item = &str> {
    text.split([',', ' ', '\t']).map(str::trim).filter(|s| !s.is_empty())
}

/// Splits `text` at `actions=`; returns the match part and the actions part.
fn split_actions(text: &str) -> (&str, Option<&str>) {
    for key in ["actions=", "action="] {
        if let Some(i) = text.find(key) {
            let boundary = i == 0 || text[..i].ends_with([',', ' ', '\t']);
            if boundary {
                return (&text[..i], Some(&text[i + key.len()..]));
            }
        }
    }
    (text, None)
}

struct Parsed {
    matching: Match,
    table: Option<u8>,
    priority: Option<u16>,
    cookie: Option<(u64, u64)>,
    idle: u16,
    hard: u16,
}

fn parse_match_part(text: &str, ports: PortResolver<'_>) -> Result<Parsed, FlowParseError> {
    let mut p = Parsed { matching: Match::any(), table: None, priority: None, cookie: None, idle: 0, hard: 0 };
    let mut names = Vec::new();
    for item in split_items(text) {
        let (name, value) = match item.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (item, None),
        };
        let need = || value.ok_or_else(|| FlowParseError(format!("'{name}' needs a value")));
        match name {
            "priority" => p.priority = Some(parse_num(need()?, "priority", 0xffff)? as u16),
            "idle_timeout" => p.idle = parse_num(need()?, "idle_timeout", 0xffff)? as u16,
            "hard_timeout" => p.hard = parse_num(need()?, "hard_timeout", 0xffff)? as u16,
            "table" => p.table = Some(parse_num(need()?, "table", 254)? as u8),
            "cookie" => {
                let v = need()?;
                let (c, m) = v.split_once('/').map_or((v, None), |(c, m)| (c, Some(m)));
                let c = parse_num(c, "cookie", u64::MAX)?;
                let m = m.map_or(Ok(u64::MAX), |m| parse_num(m, "cookie mask", u64::MAX))?;
                p.cookie = Some((c & m, m));
            }
            _ => {
                apply_match_item(&mut p.matching, name, value, ports)?;
                names.push(name);
            }
        }
    }
    check_prerequisites(&p.matching, &names)?;
    Ok(p)
}

impl FlowSpec {
    /// Parses a rule as given to `add-flow`.
    ///
    /// ```
    /// use vswitch_core::flow::FlowSpec;
    /// let f = FlowSpec::parse("priority=100,tcp,nw_dst=10.0.0.0/24,tp_dst=80,actions=output:2", &|_| None).unwrap();
    /// assert_eq!(f.to_text(), "priority=100,tcp,nw_dst=10.0.0.0/24,tp_dst=80 actions=output:2");
    /// let e = FlowSpec::parse("nw_dts=10.0.0.1,actions=drop", &|_| None).unwrap_err();
    /// assert_eq!(e.to_string(), "unknown field 'nw_dts'");
    /// ```
    ///
    /// # Errors
    /// A [`FlowParseError`] naming the offending token.
    pub fn parse(text: &str, ports: PortResolver<'_>) -> Result<FlowSpec, FlowParseError> {
        let (m, a) = split_actions(text);
        let Some(a) = a else {
            return err("a flow needs 'actions=' (e.g. 'actions=normal' or 'actions=drop')");
        };
        let mut p = parse_match_part(m, ports)?;
        p.matching.set_table(p.table.unwrap_or(0));
        if p.cookie.is_some_and(|(_, mask)| mask != u64::MAX) {
            return err("a cookie mask only applies when selecting flows");
        }
        let actions = parse_actions(a, ports)?;
        check_action_prerequisites(&actions, &p.matching)?;
        Ok(FlowSpec {
            priority: p.priority.unwrap_or(DEFAULT_PRIORITY),
            matching: p.matching,
            actions,
            cookie: p.cookie.map_or(0, |c| c.0),
            idle_timeout: p.idle,
            hard_timeout: p.hard,
        })
    }

    /// A rule of the default priority in table 0 (unless `matching` names
    /// another, with [`Match::set_table`]), no cookie, no timeouts.
    pub fn new(matching: Match, actions: Vec<Action>) -> FlowSpec {
        FlowSpec { priority: DEFAULT_PRIORITY, matching, actions, cookie: 0, idle_timeout: 0, hard_timeout: 0 }
    }

    /// Its identity in its table set: match (with the table) and priority.
    pub fn identity(&self) -> super::RuleKey {
        (self.matching, self.priority)
    }

    /// The table the rule is in (its match carries it; 0 unless `table=`).
    pub fn table(&self) -> u8 {
        self.matching.table().unwrap_or(0)
    }

    /// The canonical text: parses back to an equal spec.
    pub fn to_text(&self) -> String {
        let mut head = Vec::new();
        if self.cookie != 0 {
            head.push(format!("cookie={:#x}", self.cookie));
        }
        if self.idle_timeout != 0 {
            head.push(format!("idle_timeout={}", self.idle_timeout));
        }
        if self.hard_timeout != 0 {
            head.push(format!("hard_timeout={}", self.hard_timeout));
        }
        if self.table() != 0 {
            head.push(format!("table={}", self.table()));
        }
        head.push(format!("priority={}", self.priority));
        let m = self.matching.to_text();
        if !m.is_empty() {
            head.push(m);
        }
        format!("{} actions={}", head.join(","), actions_to_text(&self.actions))
    }
}

impl FlowSelector {
    /// The identities a strict selection names: its match in its table,
    /// or in every table when it names none (as `ovs-ofctl` does).
    pub(crate) fn strict_keys(&self) -> impl Iterator<Item = (Match, u16)> + '_ {
        let prio = self.priority.unwrap_or(DEFAULT_PRIORITY);
        let tables = match self.matching.table() {
            Some(t) => t..=t,
            None => 0..=(super::table::TABLES - 1) as u8,
        };
        tables.map(move |t| {
            let mut m = self.matching;
            m.set_table(t);
            (m, prio)
        })
    }

    /// Whether the cookie condition (if any) admits `cookie`.
    pub fn cookie_matches(&self, cookie: u64) -> bool {
        self.cookie.is_none_or(|(v, m)| cookie & m == v)
    }

    /// Parses a selection as given to `del-flows` or `mod-flows` (without
    /// the actions) or `trace` (a flow description).
    ///
    /// # Errors
    /// A [`FlowParseError`] naming the offending token.
    pub fn parse(text: &str, ports: PortResolver<'_>) -> Result<FlowSelector, FlowParseError> {
        let (m, a) = split_actions(text);
        if a.is_some() {
            return err("'actions=' does not belong in a flow selection");
        }
        let mut p = parse_match_part(m, ports)?;
        if let Some(t) = p.table {
            p.matching.set_table(t);
        }
        Ok(FlowSelector { matching: p.matching, priority: p.priority, cookie: p.cookie })
    }
}

/// One table's use, as `dump-tables` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TableRow {
    /// The table's number.
    pub table: u8,
    /// Rules in it.
    pub active: usize,
    /// Packets looked up in it (including `resubmit` and `goto_table`).
    pub lookups: u64,
    /// Lookups that found a rule; the others were table misses.
    pub matched: u64,
}

impl TableRow {
    /// One line in `ovs-ofctl dump-tables` spirit.
    pub fn to_text(&self) -> String {
        format!(
            "  table {}: active={}, lookup={}, matched={}, missed={}",
            self.table,
            self.active,
            self.lookups,
            self.matched,
            self.lookups.saturating_sub(self.matched)
        )
    }
}

/// A rule and its counters, as `dump-flows` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FlowStats {
    /// The rule's cookie.
    pub cookie: u64,
    /// Seconds since the rule was added.
    pub duration_secs: f64,
    /// Packets that matched it.
    pub n_packets: u64,
    /// Bytes in those packets.
    pub n_bytes: u64,
    /// Its table.
    #[serde(default)]
    pub table: u8,
    /// Its priority.
    pub priority: u16,
    /// Its match, canonical text (without the table).
    #[serde(rename = "match")]
    pub matching: String,
    /// Its actions, canonical text.
    pub actions: String,
    /// Its idle timeout in seconds (0: none).
    pub idle_timeout: u16,
    /// Its hard timeout in seconds (0: none).
    pub hard_timeout: u16,
    /// Seconds since a packet last matched it (or since it was added).
    pub idle_age_secs: u64,
}

impl FlowStats {
    /// One line in `ovs-ofctl dump-flows` layout.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            " cookie={:#x}, duration={:.3}s, table={}, n_packets={}, n_bytes={}, ",
            self.cookie, self.duration_secs, self.table, self.n_packets, self.n_bytes
        );
        if self.idle_timeout != 0 {
            s.push_str(&format!("idle_timeout={}, ", self.idle_timeout));
        }
        if self.hard_timeout != 0 {
            s.push_str(&format!("hard_timeout={}, ", self.hard_timeout));
        }
        s.push_str(&format!("idle_age={}, ", self.idle_age_secs));
        // As ovs-ofctl: the priority only when it is not the default.
        let mut head: Vec<String> = Vec::new();
        if self.priority != DEFAULT_PRIORITY {
            head.push(format!("priority={}", self.priority));
        }
        if !self.matching.is_empty() {
            head.push(self.matching.clone());
        }
        if head.is_empty() {
            s.pop();
        } else {
            s.push_str(&head.join(","));
        }
        s.push_str(" actions=");
        s.push_str(&self.actions);
        s
    }
}
