//! Flows: what a packet *is*, and what the rules say to do with it.
//!
//! A frame's headers are parsed once, never panicking on malformed input:
//! the parser records how far it got ([`Layer`]) and whether a header was
//! cut short, and the packet stays switchable at L2.
//!
//! The OpenFlow-style flow tables: [`FlowSpec`] (a rule as `ovs-ofctl`
//! writes it), its [`Match`] and [`Action`]s, groups ([`GroupSpec`]),
//! what the tables hold ([`FlowStats`], [`TableRow`]) and
//! [`trace`](crate::Switch::trace)'s [`Trace`]. Rules are added with
//! [`Switch::add_flow`](crate::Switch::add_flow) and its siblings.

mod action;
pub(crate) mod classifier;
mod ct_action;
mod field;
mod group;
mod identity;
pub(crate) mod key;
mod matching;
pub(crate) mod packed;
mod ruleset;
mod spec;
mod synth;
pub(crate) mod table;
mod trace;

pub use action::{Action, MAX_DEPTH, MAX_LOOKUPS, actions_to_text};
pub(crate) use action::{check_action_prerequisites, groups_in};
pub(crate) use action::{dec_ttl, set_ipv4_addr, set_l4_port};
pub use ct_action::{CtAction, CtZone};
pub use field::{Field, SubField};
pub use group::{Bucket, BucketStats, GroupSpec, GroupStats, GroupType, MAX_BUCKETS, MAX_GROUP_ID};
pub(crate) use group::{Group, GroupTable};
pub(crate) use key::FlowKey;
pub use key::{FragKind, Layer, TunnelKey};
pub use matching::{FlowParseError, Match};
pub(crate) use matching::{err as matching_err, fmt_ct_state, parse_num};
pub(crate) use packed::{
    CT_DST_WORD, CT_LABEL_WORD, CT_PROTO_SHIFT, CT_SRC_WORD, CT_STATE_SHIFT, CT_WORD, CT_ZONE_SHIFT, MARK_WORD,
};
pub(crate) use packed::{Headers, ip_words};
pub(crate) use packed::{METADATA_WORD, PackedKey, PackedParse, VLAN_PRESENT, WORDS};
pub(crate) use ruleset::RuleSet;
pub use spec::{DEFAULT_PRIORITY, FlowSelector, FlowSpec, FlowStats, PortResolver, TableRow};
pub(crate) use synth::packet_for;
pub(crate) use table::default_rule;
pub use table::{DEFAULT_FLOW_LIMIT, TABLES, TableError};
pub(crate) use table::{Emc, FlowTable, RuleKey, RuleStats, TableStats, Tables};
pub use trace::{Trace, TraceOutput};

#[cfg(test)]
#[path = "flow_tests.rs"]
mod tests;
