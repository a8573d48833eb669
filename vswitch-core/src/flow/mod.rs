//! Flows: what a packet *is*, and what the rules say to do with it.
//!
//! [`FlowKey`] is extracted from a frame and its input port in one pass,
//! never panicking on malformed input: it records how far parsing got and
//! whether a header was cut short, and the packet stays switchable at L2.
//!
//! The OpenFlow-style flow table: [`FlowSpec`] (a rule as `ovs-ofctl`
//! writes it), [`Match`] over a [`PackedKey`], [`Action`], the
//! tuple-space `Classifier` and the `FlowTable` with its exact-match
//! cache, and [`trace`](crate::Switch::trace)'s [`Trace`].

mod action;
mod ct_action;
// Without `internals`, what only the benchmarks and tests call is unused.
#[cfg_attr(not(feature = "internals"), allow(dead_code))]
mod classifier;
mod field;
mod group;
mod identity;
mod key;
mod matching;
mod packed;
mod ruleset;
mod spec;
mod synth;
#[cfg_attr(not(feature = "internals"), allow(dead_code))]
mod table;
mod trace;

pub use action::{Action, MAX_DEPTH, MAX_LOOKUPS, actions_to_text};
pub(crate) use action::{check_action_prerequisites, groups_in};
pub(crate) use action::{dec_ttl, set_ipv4_addr, set_l4_port};
#[cfg(feature = "internals")]
pub use classifier::Classifier;
pub use ct_action::{CtAction, CtZone};
pub use field::{Field, SubField};
pub use group::{Bucket, BucketStats, GroupSpec, GroupStats, GroupType, MAX_BUCKETS, MAX_GROUP_ID};
pub(crate) use group::{Group, GroupTable};
pub use key::{FlowKey, FragKind, Layer, TunnelKey};
pub use matching::{FlowParseError, Match};
pub(crate) use matching::{err as matching_err, fmt_ct_state, parse_num};
pub(crate) use packed::{
    CT_DST_WORD, CT_LABEL_WORD, CT_PROTO_SHIFT, CT_SRC_WORD, CT_STATE_SHIFT, CT_WORD, CT_ZONE_SHIFT, MARK_WORD,
};
pub(crate) use packed::{Headers, ip_words};
pub use packed::{METADATA_WORD, PackedKey, PackedParse, VLAN_PRESENT, WORDS};
pub(crate) use ruleset::RuleSet;
pub use spec::{DEFAULT_PRIORITY, FlowSelector, FlowSpec, FlowStats, PortResolver, TableRow};
pub(crate) use synth::packet_for;
pub use table::{DEFAULT_FLOW_LIMIT, TABLES, TableError, default_rule};
#[cfg(feature = "internals")]
pub use table::{Emc, FlowTable, Rule, RuleKey, RuleStats, TableStats, Tables};
#[cfg(not(feature = "internals"))]
pub(crate) use table::{Emc, FlowTable, RuleKey, RuleStats, TableStats, Tables};
pub use trace::{Trace, TraceOutput};

#[cfg(test)]
#[path = "flow_tests.rs"]
mod tests;
