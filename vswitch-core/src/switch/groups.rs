//! A bridge's group table on the control side: `add-group`, `mod-group`,
//! `del-groups`, `dump-groups`. Every change builds the bridge's whole new
//! group set, checks it (buckets that send to groups name existing ones,
//! rules only send to groups that stay), and installs it on every datapath
//! thread in one step; a group whose definition did not change keeps its
//! counters.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::{Switch, lock_rules, took_effect};
use crate::config::ConfigChange;
use crate::flow::{Action, FlowParseError, Group, GroupSpec, GroupStats, GroupTable, groups_in};
use crate::{Error, Result};

/// Checks that every `group:N` in `actions` names one of `known`.
pub(super) fn known_groups(actions: &[Action], known: &BTreeSet<u32>) -> std::result::Result<(), FlowParseError> {
    let mut used = Vec::new();
    groups_in(actions, &mut used);
    match used.iter().find(|g| !known.contains(g)) {
        Some(g) => Err(FlowParseError(format!("group {g} does not exist (add it with add-group first)"))),
        None => Ok(()),
    }
}

/// How many groups one packet may pass through in a chain (group:1 in a
/// bucket of group 2 in a bucket of ...).
pub const MAX_GROUP_CHAIN: usize = 8;

/// Refuses group sets with a loop (a group that reaches itself through
/// the groups its buckets send to) or a chain longer than
/// [`MAX_GROUP_CHAIN`]: either would make one packet's copies explode.
fn check_chains(groups: &BTreeMap<u32, Arc<Group>>) -> Result<()> {
    // Longest chain from each group, by depth-first search with the path
    // on a stack (a group on the path again is a loop).
    fn longest(
        id: u32,
        groups: &BTreeMap<u32, Arc<Group>>,
        path: &mut Vec<u32>,
        memo: &mut BTreeMap<u32, usize>,
    ) -> Result<usize> {
        if let Some(&n) = memo.get(&id) {
            return Ok(n);
        }
        if let Some(at) = path.iter().position(|&g| g == id) {
            let cycle: Vec<String> = path[at..].iter().chain([&id]).map(|g| g.to_string()).collect();
            return Err(Error::invalid("group", format!("groups loop: {}", cycle.join(" -> "))));
        }
        path.push(id);
        let mut deepest = 0;
        if let Some(g) = groups.get(&id) {
            for used in g.spec.referenced_groups() {
                deepest = deepest.max(longest(used, groups, path, memo)?);
            }
        }
        path.pop();
        memo.insert(id, deepest + 1);
        Ok(deepest + 1)
    }
    let mut memo = BTreeMap::new();
    for &id in groups.keys() {
        let n = longest(id, groups, &mut Vec::new(), &mut memo)?;
        if n > MAX_GROUP_CHAIN {
            return Err(Error::invalid(
                "group",
                format!("group {id} starts a chain of {n} groups (at most {MAX_GROUP_CHAIN})"),
            ));
        }
    }
    Ok(())
}

impl Switch {
    /// The numbers of `bridge`'s groups.
    pub(super) fn group_ids(&self, bridge: &str) -> Result<BTreeSet<u32>> {
        let reg = self.registry();
        let b = reg.bridges.get(bridge).ok_or_else(|| Error::BridgeNotFound(bridge.to_string()))?;
        Ok(b.groups.keys().copied().collect())
    }

    fn groups_of(&self, bridge: &str) -> Result<BTreeMap<u32, Arc<Group>>> {
        let reg = self.registry();
        Ok(reg.bridges.get(bridge).ok_or_else(|| Error::BridgeNotFound(bridge.to_string()))?.groups.clone())
    }

    fn parse_group(&self, bridge: &str, text: &str) -> Result<GroupSpec> {
        let (_, ports) = self.bridge_ports(bridge)?;
        GroupSpec::parse(text, &|n: &str| ports.get(n).copied()).map_err(|e| Error::invalid("group", e.0))
    }

    /// Adds a group to `bridge`, in `ovs-ofctl add-group` syntax
    /// (`group_id=1,type=select,bucket=output:1,bucket=output:2`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for bad text, a group number in use, or
    /// a bucket sending to a group that does not exist;
    /// [`Error::BridgeNotFound`].
    pub fn add_group(&self, bridge: &str, text: &str) -> Result<()> {
        let _change = self.change();
        let spec = self.parse_group(bridge, text)?;
        let mut groups = self.groups_of(bridge)?;
        if groups.contains_key(&spec.group_id) {
            return Err(Error::invalid("group", format!("group {} exists (mod-group changes it)", spec.group_id)));
        }
        groups.insert(spec.group_id, Group::new(spec, self.now_ms(), self.threads()));
        self.install_groups(bridge, groups)
    }

    /// Adds a group built in code, checked exactly as its text would be.
    ///
    /// # Errors
    /// As [`Switch::add_group`].
    pub fn add_group_spec(&self, bridge: &str, spec: &GroupSpec) -> Result<()> {
        self.add_group(bridge, &spec.to_text())
    }

    /// Replaces a group built in code (see [`Switch::mod_group`]).
    ///
    /// # Errors
    /// As [`Switch::mod_group`].
    pub fn mod_group_spec(&self, bridge: &str, spec: &GroupSpec) -> Result<()> {
        self.mod_group(bridge, &spec.to_text())
    }

    /// Replaces a group's type and buckets (its counters restart).
    ///
    /// # Errors
    /// As [`Switch::add_group`], and for a group that does not exist.
    pub fn mod_group(&self, bridge: &str, text: &str) -> Result<()> {
        let _change = self.change();
        let spec = self.parse_group(bridge, text)?;
        let mut groups = self.groups_of(bridge)?;
        if !groups.contains_key(&spec.group_id) {
            return Err(Error::invalid("group", format!("group {} does not exist (add-group adds it)", spec.group_id)));
        }
        groups.insert(spec.group_id, Group::new(spec, self.now_ms(), self.threads()));
        self.install_groups(bridge, groups)
    }

    /// Deletes group `group_id` (every group for `None`) from `bridge`,
    /// with the rules that send to it, as Open vSwitch does. Returns how
    /// many groups were deleted.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a group another group's buckets
    /// still send to; [`Error::BridgeNotFound`].
    pub fn del_groups(&self, bridge: &str, group_id: Option<u32>) -> Result<usize> {
        let _change = self.change();
        let mut groups = self.groups_of(bridge)?;
        let doomed: BTreeSet<u32> = match group_id {
            Some(id) => groups.keys().copied().filter(|&g| g == id).collect(),
            None => groups.keys().copied().collect(),
        };
        if doomed.is_empty() {
            return Ok(0);
        }
        for (id, g) in &groups {
            if let Some(used) = g.spec.referenced_groups().into_iter().find(|u| doomed.contains(u))
                && !doomed.contains(id)
            {
                return Err(Error::invalid("group", format!("group {used} is used by group {id}; delete that first")));
            }
        }
        // The rules that send to a deleted group go with it.
        let set = self.rule_set(bridge)?;
        let keys = lock_rules(&set).select_where(|actions| {
            let mut used = Vec::new();
            groups_in(actions, &mut used);
            used.iter().any(|g| doomed.contains(g))
        });
        self.remove_rules(bridge, &keys)?;
        groups.retain(|id, _| !doomed.contains(id));
        self.install_groups(bridge, groups)?;
        Ok(doomed.len())
    }

    /// Replaces `bridge`'s whole group set with `texts` (a saved
    /// configuration, or a transaction's undo). Groups whose text is
    /// unchanged keep their counters.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad group, two with one number, or
    /// rules that send to a group not in the new set.
    pub fn replace_groups(&self, bridge: &str, texts: &[String]) -> Result<()> {
        let _change = self.change();
        let old = self.groups_of(bridge)?;
        let mut groups = BTreeMap::new();
        for t in texts {
            let spec = self.parse_group(bridge, t)?;
            let id = spec.group_id;
            let g = match old.get(&id) {
                Some(g) if g.spec == spec => g.clone(),
                _ => Group::new(spec, self.now_ms(), self.threads()),
            };
            if groups.insert(id, g).is_some() {
                return Err(Error::invalid("group", format!("group {id} is given twice")));
            }
        }
        let set = self.rule_set(bridge)?;
        let orphans = lock_rules(&set).select_where(|actions| {
            let mut used = Vec::new();
            groups_in(actions, &mut used);
            used.iter().any(|g| !groups.contains_key(g))
        });
        if !orphans.is_empty() {
            return Err(Error::invalid(
                "group",
                format!("{} rule(s) send to groups not in the new set", orphans.len()),
            ));
        }
        self.install_groups(bridge, groups)
    }

    /// Checks `groups` whole and installs it on every datapath thread.
    fn install_groups(&self, bridge: &str, groups: BTreeMap<u32, Arc<Group>>) -> Result<()> {
        for (id, g) in &groups {
            for used in g.spec.referenced_groups() {
                if !groups.contains_key(&used) {
                    return Err(Error::invalid(
                        "group",
                        format!("group {id} sends to group {used}, which does not exist"),
                    ));
                }
            }
        }
        check_chains(&groups)?;
        let (index, _) = self.bridge_ports(bridge)?;
        let table: GroupTable = groups.iter().map(|(id, g)| (*id, g.clone())).collect();
        let table = Arc::new(table);
        let r = self.apply_sized(groups.len(), move |dp| dp.set_groups(index, (*table).clone()));
        if took_effect(&r) {
            let texts = groups.values().map(|g| g.spec.to_text()).collect();
            self.record(|| ConfigChange::SetGroups { bridge: bridge.to_string(), groups: texts });
            if let Some(b) = self.registry().bridges.get_mut(bridge) {
                b.groups = groups;
            }
        }
        r
    }

    /// Every group of `bridge` with its counters and how many rules send
    /// to it, by number.
    ///
    /// # Errors
    /// [`Error::BridgeNotFound`].
    pub fn dump_groups(&self, bridge: &str) -> Result<Vec<GroupStats>> {
        let groups = self.groups_of(bridge)?;
        let set = self.rule_set(bridge)?;
        let refs = lock_rules(&set).group_refs();
        Ok(groups.values().map(|g| g.dump(refs.get(&g.spec.group_id).copied().unwrap_or(0))).collect())
    }
}
