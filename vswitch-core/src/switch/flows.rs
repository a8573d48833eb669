//! Flow table operations (`ovs-ofctl` add-flow, mod-flows, del-flows,
//! dump-flows, dump-tables) and `trace`: the control side's [`RuleSet`]
//! is the truth listings and selections read; the datapath threads get
//! the changes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::{ParsedRule, Switch, flow_error, groups, lock_rules, took_effect};
use crate::config::ConfigChange;
use crate::flow::{
    FlowSelector, FlowSpec, FlowStats, RuleKey, RuleSet, RuleStats, TableError, TableRow, Trace, TraceOutput,
};
use crate::port::PortNo;
use crate::{Error, Result};

impl Switch {
    /// The bridge's datapath index, with a resolver of its port names.
    pub(super) fn bridge_ports(&self, bridge: &str) -> Result<(usize, BTreeMap<String, PortNo>)> {
        let reg = self.registry();
        let b = reg.bridges.get(bridge).ok_or_else(|| Error::BridgeNotFound(bridge.to_string()))?;
        Ok((b.index, b.ports.iter().map(|(n, p)| (n.clone(), p.port_no)).collect()))
    }

    /// Adds a rule to `bridge`'s flow table, in `ovs-ofctl add-flow`
    /// syntax; a rule with the same match and priority is replaced.
    ///
    /// ```
    /// # use vswitch_core::Switch;
    /// let sw = Switch::builder().manual().build()?;
    /// sw.add_bridge("br0")?;
    /// sw.add_flow("br0", "priority=100,tcp,tp_dst=22,actions=drop")?;
    /// assert_eq!(sw.dump_flows("br0")?.len(), 2); // and priority=0,actions=NORMAL
    /// # Ok::<(), vswitch_core::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] with the parser's message for bad text,
    /// [`Error::Full`] when the table is at its limit, [`Error::BridgeNotFound`].
    pub fn add_flow(&self, bridge: &str, flow: &str) -> Result<()> {
        self.add_flows(bridge, &[flow]).map(|_| ())
    }

    /// Parses `flows` for `bridge` (port names resolved), each with its
    /// counters (one set per rule, shared by every thread's copy); the
    /// bridge's datapath index with them. Nothing changes.
    pub(crate) fn parse_rules(&self, bridge: &str, flows: &[impl AsRef<str>]) -> Result<(usize, Vec<ParsedRule>)> {
        let (index, ports) = self.bridge_ports(bridge)?;
        let groups = self.group_ids(bridge)?;
        let resolve = |n: &str| ports.get(n).copied();
        let (now, threads) = (self.now_ms(), self.threads());
        let rules = flows
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let spec = FlowSpec::parse(f.as_ref(), &resolve)
                    .and_then(|s| groups::known_groups(&s.actions, &groups).map(|()| s))
                    .map_err(|e| {
                        let why = if flows.len() > 1 { format!("flow {}: {}", i + 1, e.0) } else { e.0 };
                        Error::invalid("flow", why)
                    })?;
                Ok((spec, RuleStats::new(now, threads)))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((index, rules))
    }

    /// Adds several rules atomically: all of them, or (on any error) none.
    ///
    /// # Errors
    /// As [`Switch::add_flow`]; the message says which line was refused.
    pub fn add_flows(&self, bridge: &str, flows: &[&str]) -> Result<usize> {
        let _change = self.change();
        self.sweep_expired(false);
        let (index, rules) = self.parse_rules(bridge, flows)?;
        // The rules' lock is held only to read and to commit, never across
        // the wait for the datapath (the change lock keeps writers apart),
        // so listings go on meanwhile.
        let set = self.rule_set(bridge)?;
        lock_rules(&set).check_room(&rules).map_err(|TableError::Full| Error::Full("flow table"))?;
        let n = rules.len();
        let copy = Arc::new(rules.clone());
        let r = self.apply_sized(n, move |dp| {
            if let Some(t) = dp.flows_mut(index) {
                let _ = t.add_with_stats(copy.to_vec());
            }
        });
        if took_effect(&r) {
            self.record(|| ConfigChange::AddFlows {
                bridge: bridge.to_string(),
                flows: rules.iter().map(|(s, _)| s.to_text()).collect(),
            });
            lock_rules(&set).add(rules);
        }
        r.map(|()| n)
    }

    /// Makes the rules `selector` selects (loosely, as `del-flows`) be
    /// exactly `flows`, in one step the datapath sees at once: rules of
    /// `flows` already there unchanged are left alone (with their
    /// counters), changed ones are replaced (counters kept if the cookie
    /// is the same), the selected
    /// rules not in `flows` go, and the new ones come. What a controller
    /// reinstalling its rule set needs: no packet sees the table half
    /// old, half new. Returns how many rules were added or changed and
    /// how many removed.
    ///
    /// ```
    /// # use vswitch_core::Switch;
    /// let sw = Switch::builder().manual().build()?;
    /// sw.add_bridge("br0")?;
    /// sw.add_flows("br0", &["cookie=0x1,priority=5,ip,actions=drop", "cookie=0x1,priority=6,arp,actions=NORMAL"])?;
    /// let mine = "cookie=0x1/0xffffffffffffffff";
    /// let now = ["cookie=0x1,priority=5,ip,actions=drop", "cookie=0x1,priority=7,ipv6,actions=drop"];
    /// assert_eq!(sw.sync_flows("br0", mine, &now)?, (1, 1)); // ipv6 added, arp gone, ip kept
    /// assert_eq!(sw.dump_flows("br0")?.len(), 3); // and priority=0,actions=NORMAL
    /// # Ok::<(), vswitch_core::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Switch::add_flows`]; nothing changes on error.
    pub fn sync_flows(&self, bridge: &str, selector: &str, flows: &[&str]) -> Result<(usize, usize)> {
        let _change = self.change();
        self.sweep_expired(false);
        let (index, mut rules) = self.parse_rules(bridge, flows)?;
        let (_, ports) = self.bridge_ports(bridge)?;
        let sel = FlowSelector::parse(selector, &|n: &str| ports.get(n).copied()).map_err(flow_error)?;
        let set = self.rule_set(bridge)?;
        let stale = {
            let rs = lock_rules(&set);
            let new_keys: std::collections::HashSet<RuleKey> = rules.iter().map(|(s, _)| s.identity()).collect();
            rules.retain_mut(|(spec, stats)| match rs.get(&spec.identity()) {
                Some((old, _)) if old == spec => false,
                // The same rule with other actions keeps counting; one
                // with another cookie is someone else's and starts anew.
                Some((old, old_stats)) if old.cookie == spec.cookie => {
                    *stats = old_stats.clone();
                    true
                }
                _ => true,
            });
            rs.check_room(&rules).map_err(|TableError::Full| Error::Full("flow table"))?;
            let mut stale = rs.select(&sel, false);
            stale.retain(|k| !new_keys.contains(k));
            stale
        };
        if rules.is_empty() && stale.is_empty() {
            return Ok((0, 0));
        }
        let (added, removed) = (rules.len(), stale.len());
        let (copy, keys) = (Arc::new(rules.clone()), Arc::new(stale.clone()));
        let r = self.apply_sized(added + removed, move |dp| {
            if let Some(t) = dp.flows_mut(index) {
                t.delete_keys(&keys);
                let _ = t.add_with_stats(copy.to_vec());
            }
        });
        if took_effect(&r) {
            let mut rs = lock_rules(&set);
            let gone = rs.remove(&stale);
            self.record(|| ConfigChange::DelFlows {
                bridge: bridge.to_string(),
                flows: gone.iter().map(FlowSpec::to_text).collect(),
            });
            self.record(|| ConfigChange::AddFlows {
                bridge: bridge.to_string(),
                flows: rules.iter().map(|(s, _)| s.to_text()).collect(),
            });
            rs.add(rules);
        }
        r.map(|()| (added, removed))
    }

    /// Adds rules built in code (see [`Match::with`](crate::flow::Match::with)
    /// and [`Action`](crate::flow::Action)), all or none, checked exactly
    /// as their text would be (prerequisites, tables, groups).
    ///
    /// ```
    /// # use vswitch_core::Switch;
    /// use vswitch_core::flow::{Action, Field, FlowSpec, Match};
    /// let sw = Switch::builder().manual().build()?;
    /// sw.add_bridge("br0")?;
    /// let mut classify = FlowSpec::new(Match::any().with(Field::InPort, 1), vec![
    ///     Action::SetField { field: Field::Reg(0), value: 7, mask: 0xffff_ffff },
    ///     Action::GotoTable(1),
    /// ]);
    /// classify.priority = 10;
    /// let mut steer = FlowSpec::new(Match::any().with(Field::Reg(0), 7), vec![Action::Output(2)]);
    /// steer.matching.set_table(1);
    /// sw.add_flow_specs("br0", &[classify, steer])?;
    /// assert_eq!(sw.dump_flows_matching("br0", "table=1")?[0].matching, "reg0=0x7");
    /// # Ok::<(), vswitch_core::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Switch::add_flows`].
    pub fn add_flow_specs(&self, bridge: &str, specs: &[FlowSpec]) -> Result<usize> {
        let texts: Vec<String> = specs.iter().map(FlowSpec::to_text).collect();
        self.add_flows(bridge, &texts.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// Replaces the actions of the rules `flow` selects (its match, and
    /// with `strict` its priority too), keeping their counters; returns
    /// how many rules changed.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for bad text, [`Error::BridgeNotFound`].
    pub fn mod_flows(&self, bridge: &str, flow: &str, strict: bool) -> Result<usize> {
        let _change = self.change();
        self.sweep_expired(false);
        let (index, ports) = self.bridge_ports(bridge)?;
        let spec = FlowSpec::parse(flow, &|n: &str| ports.get(n).copied())
            .and_then(|s| groups::known_groups(&s.actions, &self.group_ids(bridge).unwrap_or_default()).map(|()| s))
            .map_err(flow_error)?;
        let mut sel = FlowSelector { matching: spec.matching, priority: Some(spec.priority), cookie: None };
        if !flow.split([',', ' ']).any(|item| item.trim_start().starts_with("table=")) {
            // No table named: every table, as ovs-ofctl does.
            sel.matching.clear_table();
        }
        let set = self.rule_set(bridge)?;
        let keys = lock_rules(&set).select(&sel, strict);
        if keys.is_empty() {
            return Ok(0);
        }
        // The new actions must suit every rule they land on (a rule in a
        // later table than the one the text was checked against).
        for (m, prio) in &keys {
            crate::flow::check_action_prerequisites(&spec.actions, m).map_err(|e| {
                Error::invalid(
                    "flow",
                    format!("for the rule table={},priority={prio}: {}", m.table().unwrap_or(0), e.0),
                )
            })?;
        }
        let (k, actions) = (keys.clone(), spec.actions.clone());
        let r = self.apply_sized(keys.len(), move |dp| {
            if let Some(t) = dp.flows_mut(index) {
                t.modify_keys(&k, &actions);
            }
        });
        if took_effect(&r) {
            let changed = lock_rules(&set).modify(&keys, &spec.actions);
            self.record(|| ConfigChange::ModFlows {
                bridge: bridge.to_string(),
                flows: changed.iter().map(FlowSpec::to_text).collect(),
            });
        }
        r.map(|()| keys.len())
    }

    /// Deletes the rules `flow` selects (all of them for `None`); with
    /// `strict`, only the rule with exactly that match and priority.
    /// Returns how many were deleted. Deleting every rule leaves a table
    /// that drops everything, as in OpenFlow.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for bad text, [`Error::BridgeNotFound`].
    pub fn del_flows(&self, bridge: &str, flow: Option<&str>, strict: bool) -> Result<usize> {
        let _change = self.change();
        self.sweep_expired(false);
        let (_, ports) = self.bridge_ports(bridge)?;
        let sel = match flow {
            Some(f) => FlowSelector::parse(f, &|n: &str| ports.get(n).copied()).map_err(flow_error)?,
            None => FlowSelector::default(),
        };
        let set = self.rule_set(bridge)?;
        let keys = lock_rules(&set).select(&sel, strict);
        self.remove_rules(bridge, &keys).map(|()| keys.len())
    }

    /// Removes the rules with identities `keys` from `bridge`, on the
    /// datapath and here (under the change lock).
    pub(super) fn remove_rules(&self, bridge: &str, keys: &[RuleKey]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let (index, _) = self.bridge_ports(bridge)?;
        let set = self.rule_set(bridge)?;
        let k = Arc::new(keys.to_vec());
        let r = self.apply_sized(keys.len(), move |dp| {
            if let Some(t) = dp.flows_mut(index) {
                t.delete_keys(&k);
            }
        });
        if took_effect(&r) {
            let removed = lock_rules(&set).remove(keys);
            self.record(|| ConfigChange::DelFlows {
                bridge: bridge.to_string(),
                flows: removed.iter().map(FlowSpec::to_text).collect(),
            });
        }
        r
    }

    /// Removes the rules whose idle or hard timeout has passed, from the
    /// datapath and from the switch's listings and configuration; returns
    /// how many. The datapath stops matching an expired rule by itself;
    /// this is what makes it gone for good. A daemon calls it every
    /// second; changes to the flow table call it at most once a second.
    pub fn expire_flows(&self) -> usize {
        let _change = self.change();
        self.sweep_expired(true)
    }

    /// [`expire_flows`](Self::expire_flows) under the change lock; unless
    /// `always`, at most once a second.
    pub(super) fn sweep_expired(&self, always: bool) -> usize {
        let now = self.now_ms();
        {
            let mut next = self.next_sweep_ms.lock().unwrap_or_else(|e| e.into_inner());
            if !always && now < *next {
                return 0;
            }
            *next = now + 1000;
        }
        let sets: Vec<(String, Arc<Mutex<RuleSet>>)> =
            self.registry().bridges.iter().map(|(n, b)| (n.clone(), b.rules.clone())).collect();
        let mut removed = 0;
        for (bridge, set) in sets {
            let keys = lock_rules(&set).expired(now);
            if self.remove_rules(&bridge, &keys).is_ok() {
                removed += keys.len();
            }
        }
        removed
    }

    /// Every rule of `bridge` with its counters, highest priority first.
    /// Read on the control side: no datapath thread is involved.
    ///
    /// # Errors
    /// [`Error::BridgeNotFound`].
    pub fn dump_flows(&self, bridge: &str) -> Result<Vec<FlowStats>> {
        let now = self.now_ms();
        let set = self.rule_set(bridge)?;
        Ok(lock_rules(&set).dump(now))
    }

    /// The rules of `bridge` that `filter` covers (a loose selection, as
    /// `del-flows` takes: `table=1`, `tcp,nw_dst=10.0.0.0/8`,
    /// `cookie=0x5/-1`), in the order of [`dump_flows`](Self::dump_flows).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for bad text, [`Error::BridgeNotFound`].
    pub fn dump_flows_matching(&self, bridge: &str, filter: &str) -> Result<Vec<FlowStats>> {
        let (_, ports) = self.bridge_ports(bridge)?;
        let sel = FlowSelector::parse(filter, &|n: &str| ports.get(n).copied()).map_err(flow_error)?;
        let now = self.now_ms();
        let set = self.rule_set(bridge)?;
        Ok(lock_rules(&set).dump_selected(&sel, now))
    }

    /// Each table of `bridge` that has rules or has been looked up in:
    /// its rule count, lookups and matches (the rest are table misses).
    ///
    /// # Errors
    /// [`Error::BridgeNotFound`].
    pub fn dump_tables(&self, bridge: &str) -> Result<Vec<TableRow>> {
        let (sizes, stats) = {
            let reg = self.registry();
            let b = reg.bridges.get(bridge).ok_or_else(|| Error::BridgeNotFound(bridge.to_string()))?;
            (lock_rules(&b.rules).table_sizes(), b.table_stats.clone())
        };
        Ok((0..crate::flow::TABLES as u8)
            .map(|t| TableRow {
                table: t,
                active: sizes.get(&t).copied().unwrap_or(0),
                lookups: stats.lookups(t),
                matched: stats.matched(t),
            })
            .filter(|r| r.active > 0 || r.lookups > 0)
            .collect())
    }

    /// The control side's rules of `bridge`.
    pub(super) fn rule_set(&self, bridge: &str) -> Result<Arc<Mutex<RuleSet>>> {
        let reg = self.registry();
        Ok(reg.bridges.get(bridge).ok_or_else(|| Error::BridgeNotFound(bridge.to_string()))?.rules.clone())
    }

    /// Explains what `bridge` would do with the packet `flow` describes
    /// (`in_port=1,dl_dst=02:00:00:00:00:02,tcp,tp_dst=80`): the rule that
    /// matches, the MAC table's answer for NORMAL, the output ports.
    /// Nothing is sent, learned or counted.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for bad text, [`Error::BridgeNotFound`].
    pub fn trace(&self, bridge: &str, flow: &str) -> Result<Trace> {
        let (index, ports) = self.bridge_ports(bridge)?;
        let sel = FlowSelector::parse(flow, &|n: &str| ports.get(n).copied()).map_err(flow_error)?;
        let now_ms = self.clock.now_ms();
        let mut trace = self
            .on_first(move |dp| dp.trace(index, &sel.matching, now_ms))?
            .ok_or_else(|| Error::BridgeNotFound(bridge.to_string()))?;
        for o in &mut trace.outputs {
            o.port = ports.iter().find(|(_, n)| **n == o.port_no).map(|(name, _)| name.clone()).unwrap_or_default();
            // Through a tunnel port: the encapsulation, before the port.
            if let Ok((_, Some(spec))) = self.port_spec(&o.port)
                && spec.kind.is_tunnel()
            {
                let meta = o.tunnel.unwrap_or_default();
                let remote = match spec.options.get("remote_ip").map(String::as_str) {
                    Some("flow") | None => meta.dst.to_string(),
                    Some(ip) => ip.to_string(),
                };
                let key = match spec.options.get("out_key").or(spec.options.get("key")).map(String::as_str) {
                    Some("flow") | None => meta.id.to_string(),
                    Some(k) => k.to_string(),
                };
                let at = o.action.rfind(',').map_or(0, |i| i + 1);
                o.action.insert_str(at, &format!("tunnel({},remote_ip={remote},key={key}),", spec.kind));
            }
        }
        trace.verdict = TraceOutput::verdict(&trace.outputs);
        Ok(trace)
    }
}
