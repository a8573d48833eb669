//! The action executor: one packet's trip through a bridge's tables.
//!
//! A packet starts in table 0 with the rule its key matched there; the
//! rule's actions run in order on the packet *and* on its key (so a later
//! lookup sees rewritten headers and the registers, `metadata` and
//! `pkt_mark` actions wrote). `resubmit` looks the key up again (in
//! another table, or as if from another port) and runs that rule's
//! actions before carrying on; `goto_table` continues in a later table;
//! `clone` runs actions on a copy. Nesting is limited (`MAX_DEPTH`,
//! `MAX_LOOKUPS`): past the limit the packet is dropped as
//! `resubmit_limit`. A table miss ends that lookup's actions; a packet no
//! action sent anywhere is dropped as `no_match` (a miss) or `flow_drop`.
//!
//! Each output sends the packet as it is at that point: a copy, except
//! for the packet's last use in tail position (no action after it, at any
//! level), which takes the packet itself.
//!
//! `trace` runs this same code on a packet built from the description,
//! with the datapath in a dry run ([`TraceLog`]): outputs are recorded
//! instead of queued, nothing is learned or counted, and each step is
//! written down.

use super::{BridgeParts, Datapath, Ingress};
use crate::conntrack::{self, Hit, PacketInfo, Request, Rewrite, Untrackable, Verdict};
use crate::flow::{
    Action, CtAction, CtZone, Field, GroupType, Headers, MAX_BUCKETS, MAX_DEPTH, MAX_LOOKUPS, Match, PackedKey,
    PackedParse, Trace, TraceOutput, VLAN_PRESENT, dec_ttl, packet_for, set_ipv4_addr, set_l4_port,
};
use crate::packet::Packet;
use crate::port::{DropReason, PortNo};
use crate::wire::{ETHERNET_HEADER_LEN, MacAddr, VlanTci, ethertype};

/// Bucket indices for an `all` group (a group has at most this many).
const ALL_BUCKETS: [usize; MAX_BUCKETS] = {
    let mut a = [0; MAX_BUCKETS];
    let mut i = 0;
    while i < MAX_BUCKETS {
        a[i] = i;
        i += 1;
    }
    a
};

/// Per-reason drop counts for one burst.
pub(super) type Drops = [u64; DropReason::ALL.len()];

/// What a dry run records: the steps, and the packets it would send.
#[derive(Debug, Default)]
pub(super) struct TraceLog {
    steps: Vec<String>,
    /// The slot each output went to and the packet as it would leave.
    outputs: Vec<(usize, Packet)>,
    depth: usize,
}

/// One packet on its way through the tables.
struct InFlight<'k> {
    /// `None` once it has been given away (its last output) or dropped.
    pkt: Option<Packet>,
    /// Its key as the actions change it (the burst's own copy: not moved).
    key: &'k mut PackedKey,
    h: Headers,
    /// Some action sent it (or a copy) somewhere.
    sent: bool,
    /// Some lookup missed.
    missed: bool,
    lookups: u32,
    /// A limit was hit (and counted, once): the whole traversal stops.
    aborted: bool,
    /// What the last `ct` found (a later `ct` in its zone reuses it).
    ct: Option<Hit>,
}

impl Datapath {
    /// Writes a step of a dry run down (nothing, and no formatting, on the
    /// packet path).
    #[inline]
    pub(super) fn note(&mut self, step: impl FnOnce() -> String) {
        if let Some(t) = self.tracing.as_mut() {
            t.steps.push(format!("{:indent$}{}", "", step(), indent = t.depth * 4));
        }
    }

    /// Whether this is a dry run.
    #[inline]
    pub(super) fn dry_run(&self) -> bool {
        self.tracing.is_some()
    }

    /// Drops `pkt`, counting (or, in a dry run, noting) why.
    #[inline]
    pub(super) fn discard(&mut self, pkt: Packet, reason: DropReason, drops: &mut Drops) {
        drops[reason as usize] += 1;
        self.note(|| format!("dropped ({reason})"));
        self.pool.put(pkt);
    }

    /// Queues `pkt` on `slot` for transmission, or in a dry run records it.
    #[inline(always)]
    pub(super) fn send(&mut self, slot: usize, pkt: Packet) {
        match self.tracing.as_mut() {
            Some(t) => t.outputs.push((slot, pkt)),
            None => self.enqueue(slot, pkt),
        }
    }

    /// Runs one packet through the bridge's tables; `first` is the rule its
    /// key matched in table 0 (already looked up, with the burst's others).
    #[inline]
    pub(super) fn run_pipeline(
        &mut self,
        br: &mut BridgeParts<'_>,
        at: Ingress,
        pkt: Packet,
        parsed: &mut PackedParse,
        first: Option<u32>,
        drops: &mut Drops,
    ) {
        if br.fail_open {
            self.note(|| "the flow table is empty and fail_mode is standalone: NORMAL".to_string());
            self.normal_one(br, at, pkt, drops);
            return;
        }
        let mut h = parsed.headers;
        h.partial_csum = pkt.needs_csum();
        let mut f = InFlight {
            pkt: Some(pkt),
            key: &mut parsed.key,
            h,
            sent: false,
            missed: false,
            lookups: 1,
            aborted: false,
            ct: None,
        };
        self.apply_rule(br, at, &mut f, first, 0, true, drops);
        if let Some(p) = f.pkt.take() {
            if f.sent {
                self.pool.put(p);
            } else {
                let why = if f.missed { DropReason::NoMatch } else { DropReason::FlowDrop };
                self.discard(p, why, drops);
            }
        }
    }

    /// Looks the packet's key up in the table it names.
    #[inline]
    fn lookup(&mut self, br: &mut BridgeParts<'_>, key: &PackedKey) -> Option<u32> {
        if self.dry_run() { br.tables.classify(key) } else { br.emc.lookup(br.tables, key) }
    }

    /// Runs rule `id`'s actions (a miss when `None`).
    #[allow(clippy::too_many_arguments)]
    fn apply_rule(
        &mut self,
        br: &mut BridgeParts<'_>,
        at: Ingress,
        f: &mut InFlight<'_>,
        id: Option<u32>,
        depth: u32,
        tail: bool,
        drops: &mut Drops,
    ) {
        let table = f.key.table();
        let tables = br.tables;
        let Some(rule) = id.and_then(|id| tables.rule(id)) else {
            f.missed = true;
            self.note(|| format!("table {table}: no rule matched"));
            return;
        };
        if !self.dry_run() {
            let len = f.pkt.as_ref().map_or(0, Packet::len) as u64;
            tables.hit_rule(rule, len, at.now_ms);
        }
        self.note(|| {
            let text = rule.spec.to_text();
            let text = text.strip_prefix(&format!("table={table},")).unwrap_or(&text).to_string();
            format!("table {table}: {text}")
        });
        self.run_actions(br, at, f, &rule.spec.actions, depth, tail, drops);
    }

    /// Runs an action list on the packet in flight.
    #[allow(clippy::too_many_arguments)]
    fn run_actions(
        &mut self,
        br: &mut BridgeParts<'_>,
        at: Ingress,
        f: &mut InFlight<'_>,
        actions: &[Action],
        depth: u32,
        tail: bool,
        drops: &mut Drops,
    ) {
        let last_use = actions.iter().rposition(Action::uses_packet);
        for (i, action) in actions.iter().enumerate() {
            let Some(p) = f.pkt.as_mut() else { return };
            let final_use = tail && Some(i) == last_use;
            if action.is_output() {
                let out = if final_use { f.pkt.take().expect("present") } else { self.pool.clone_packet(p) };
                f.sent = true;
                self.output_action(br, at, f.key.get(0, 0, 32) as PortNo, action, out, drops);
                continue;
            }
            match action {
                Action::Resubmit { port, table } => {
                    let Some(next) = self.next_lookup(f, depth, drops) else { return };
                    let (saved_port, saved_table) = (f.key.get(0, 0, 32), f.key.table());
                    if let Some(p) = port {
                        f.key.set(0, 0, 32, *p as u64);
                    }
                    f.key.set_table(table.unwrap_or(saved_table));
                    self.note(|| format!("{action}"));
                    let id = self.lookup(br, f.key);
                    self.enter(|dp| dp.apply_rule(br, at, f, id, next, final_use, drops));
                    f.key.set(0, 0, 32, saved_port);
                    f.key.set_table(saved_table);
                }
                Action::GotoTable(t) => {
                    let Some(next) = self.next_lookup(f, depth, drops) else { return };
                    f.key.set_table(*t);
                    let id = self.lookup(br, f.key);
                    self.apply_rule(br, at, f, id, next, final_use, drops);
                }
                Action::Clone(inner) => {
                    if depth + 1 >= MAX_DEPTH {
                        self.note(|| "clone: nested too deep".into());
                        return self.abort(f, drops);
                    }
                    self.note(|| "clone:".into());
                    self.run_on_copy(br, at, f, inner, depth, drops);
                }
                Action::Group(id) => self.group(br, at, f, *id, depth, final_use, drops),
                Action::Ct(ct) => self.conntrack(br, at, f, ct, depth, final_use, drops),
                // A note of text (a controller's explanation) reads as text in a trace.
                Action::Note(bytes) if bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ') => {
                    self.note(|| format!("note: {}", String::from_utf8_lossy(bytes)));
                }
                _ => self.modify(f, action, drops),
            }
        }
    }

    /// `ct(...)`: tracks the packet. With `table=`, the tracked packet goes
    /// on in that table (the packet itself in tail position, otherwise a
    /// copy, and this one carries on untracked, as Open vSwitch forks it);
    /// without, the packet carries on through the following actions,
    /// translated if the action has `nat`.
    #[allow(clippy::too_many_arguments)]
    fn conntrack(
        &mut self,
        br: &mut BridgeParts<'_>,
        at: Ingress,
        f: &mut InFlight<'_>,
        ct: &CtAction,
        depth: u32,
        final_use: bool,
        drops: &mut Drops,
    ) {
        let Some(table) = ct.table else {
            self.ct_track(f, ct, at.now_ms, drops);
            return;
        };
        let Some(next) = self.next_lookup(f, depth, drops) else { return };
        // Tracked, then on in `table`: `f` itself, or a copy of it.
        let mut go_on = |dp: &mut Self, f: &mut InFlight<'_>| {
            if dp.ct_track(f, ct, at.now_ms, drops) {
                f.key.set_table(table);
                let id = dp.lookup(br, f.key);
                dp.enter(|dp| dp.apply_rule(br, at, f, id, next, true, drops));
            }
        };
        if final_use {
            return go_on(self, f);
        }
        let Some(p) = f.pkt.as_ref() else { return };
        let copy = self.pool.clone_packet(p);
        let mut key = *f.key;
        let mut c = InFlight { pkt: Some(copy), key: &mut key, h: f.h, ..*f };
        go_on(self, &mut c);
        self.join(f, c);
    }

    /// Runs the packet through conntrack, sets its `ct_*` fields and
    /// applies NAT. False if conntrack dropped it (a limit, or no NAT
    /// mapping free).
    fn ct_track(&mut self, f: &mut InFlight<'_>, ct: &CtAction, now_ms: u64, drops: &mut Drops) -> bool {
        let Some(p) = f.pkt.as_mut() else { return false };
        let zone = match ct.zone {
            CtZone::Value(z) => z,
            CtZone::Field(s) => s.read(f.key) as u16,
        };
        let info = match f.h.dl_type {
            ethertype::IPV4 | ethertype::IPV6 => PacketInfo::parse(p.data(), &f.h, zone),
            _ => Err(Untrackable::NotIp),
        };
        let prev = f.ct.filter(|h| h.zone == zone);
        let req = Request {
            zone,
            commit: ct.commit,
            force: ct.force,
            nat: ct.nat.as_ref(),
            mark: ct.mark,
            label: ct.label,
            now_ms,
            dry: self.dry_run(),
        };
        match self.ct.execute(info, prev, &req) {
            Verdict::Drop(why) => {
                let p = f.pkt.take().expect("present");
                self.note(|| format!("{ct}: {}: cannot commit", why.name()));
                self.discard(p, DropReason::Conntrack, drops);
                false
            }
            Verdict::Tracked(hit, rewrite) => {
                match rewrite {
                    Some(Rewrite::Headers(to)) => {
                        conntrack::translate(p, &f.h, &to);
                        let k = &mut *f.key;
                        (k.0[3], k.0[4], k.0[5], k.0[6]) = (to.0[0], to.0[1], to.0[2], to.0[3]);
                        if matches!(to.proto(), 6 | 17 | 132) {
                            k.0[7] = (k.0[7] & !0xffff_ffff) | to.sport() as u64 | (to.dport() as u64) << 16;
                        }
                    }
                    Some(Rewrite::Error { outer, quoted, at }) => {
                        conntrack::translate_error(p, &f.h, at, &outer, &quoted);
                        let k = &mut *f.key;
                        (k.0[3], k.0[4], k.0[5], k.0[6]) = (outer.0[0], outer.0[1], outer.0[2], outer.0[3]);
                    }
                    None => {}
                }
                hit.write_key(f.key);
                f.ct = Some(hit);
                self.note(|| ct_note(ct, &hit, prev.is_some(), req.dry, rewrite.as_ref()));
                true
            }
        }
    }

    /// `group:N`: the buckets the group's type picks, each as inside
    /// `clone` (a bucket in tail position takes the packet itself).
    #[allow(clippy::too_many_arguments)]
    fn group(
        &mut self,
        br: &mut BridgeParts<'_>,
        at: Ingress,
        f: &mut InFlight<'_>,
        id: u32,
        depth: u32,
        final_use: bool,
        drops: &mut Drops,
    ) {
        let groups = br.groups;
        let Some(g) = groups.get(&id) else {
            self.note(|| format!("group:{id}: no such group"));
            return;
        };
        if depth + 1 >= MAX_DEPTH {
            self.note(|| format!("group:{id}: nested too deep"));
            return self.abort(f, drops);
        }
        let len = f.pkt.as_ref().map_or(0, Packet::len) as u64;
        let dry = self.dry_run();
        let thread = br.tables.thread();
        if !dry {
            g.stats.record(thread, 1, len, at.now_ms);
        }
        let mut picked: [usize; 1] = [0];
        // A bucket with a watched port is live while that port's link is up.
        let live = |b: &crate::flow::Bucket| {
            b.watch_port.is_none_or(|p| {
                br.by_port_no
                    .get(p as usize)
                    .copied()
                    .flatten()
                    .and_then(|s| self.ports.get(s).and_then(Option::as_ref))
                    .is_some_and(|s| s.link_up)
            })
        };
        let chosen: &[usize] = match g.spec.kind {
            GroupType::All => &ALL_BUCKETS[..g.spec.buckets.len().min(ALL_BUCKETS.len())],
            GroupType::Indirect => &picked,
            GroupType::Select => match g.spec.choose(g.spec.select_hash(f.key), live) {
                Some(i) => {
                    picked[0] = i;
                    &picked
                }
                None => &[],
            },
            GroupType::FastFailover => match g.spec.buckets.iter().position(|b| b.watch_port.is_some() && live(b)) {
                Some(i) => {
                    picked[0] = i;
                    &picked
                }
                None => &[],
            },
        };
        if chosen.is_empty() {
            self.note(|| format!("group:{id}: no live bucket"));
            return;
        }
        for (n, &i) in chosen.iter().enumerate() {
            // Every bucket run counts as a lookup, so fan-out is bounded too.
            f.lookups += 1;
            if f.lookups > MAX_LOOKUPS {
                self.note(|| format!("group:{id}: {} lookups and bucket runs: too many", f.lookups));
                return self.abort(f, drops);
            }
            let bucket = &g.spec.buckets[i];
            if !dry {
                g.buckets[i].record(thread, 1, len, at.now_ms);
            }
            self.note(|| format!("group:{id} ({}): bucket {}", g.spec.kind.name(), bucket.bucket_id));
            if f.pkt.is_none() {
                return;
            }
            if final_use && n + 1 == chosen.len() {
                self.enter(|dp| dp.run_actions(br, at, f, &bucket.actions, depth + 1, true, drops));
            } else {
                self.run_on_copy(br, at, f, &bucket.actions, depth, drops);
            }
        }
    }

    /// Counts one more nested lookup; drops the packet past the limits.
    fn next_lookup(&mut self, f: &mut InFlight<'_>, depth: u32, drops: &mut Drops) -> Option<u32> {
        f.lookups += 1;
        if depth + 1 < MAX_DEPTH && f.lookups <= MAX_LOOKUPS {
            return Some(depth + 1);
        }
        self.note(|| format!("resubmits nested {} deep or {} lookups: too many", depth + 1, f.lookups));
        self.abort(f, drops);
        None
    }

    /// A limit was hit: the packet is dropped, counted once as
    /// `resubmit_limit`, and the traversal stops at every level.
    fn abort(&mut self, f: &mut InFlight<'_>, drops: &mut Drops) {
        if let Some(p) = f.pkt.take() {
            self.discard(p, DropReason::ResubmitLimit, drops);
        }
        (f.sent, f.aborted) = (true, true);
    }

    /// Runs `actions` one level deeper on a copy of the packet and its key
    /// (`clone`, a group's buckets), then carries the copy's outcome back.
    fn run_on_copy(
        &mut self,
        br: &mut BridgeParts<'_>,
        at: Ingress,
        f: &mut InFlight<'_>,
        actions: &[Action],
        depth: u32,
        drops: &mut Drops,
    ) {
        let Some(p) = f.pkt.as_ref() else { return };
        let copy = self.pool.clone_packet(p);
        let mut key = *f.key;
        let mut c = InFlight { pkt: Some(copy), key: &mut key, h: f.h, ..*f };
        self.enter(|dp| dp.run_actions(br, at, &mut c, actions, depth + 1, true, drops));
        self.join(f, c);
    }

    /// After running a copy `c` of the packet in flight `f`: carries its
    /// outcome back, and stops `f` too if `c` hit a limit.
    fn join(&mut self, f: &mut InFlight<'_>, c: InFlight<'_>) {
        // A copy given away or dropped (and counted) was handled.
        let handled = c.pkt.is_none();
        if let Some(p) = c.pkt {
            self.pool.put(p);
        }
        (f.sent, f.missed, f.lookups) = (f.sent || c.sent || handled, f.missed || c.missed, c.lookups);
        if c.aborted {
            // Counted already, by the copy.
            if let Some(p) = f.pkt.take() {
                self.pool.put(p);
            }
            (f.sent, f.aborted) = (true, true);
        }
    }

    /// Runs `inner` one level deeper in a dry run's notes.
    #[inline]
    fn enter(&mut self, inner: impl FnOnce(&mut Self)) {
        if let Some(t) = self.tracing.as_mut() {
            t.depth += 1;
        }
        inner(self);
        if let Some(t) = self.tracing.as_mut() {
            t.depth -= 1;
        }
    }

    /// `output`, `in_port`, `flood`/`all`, `normal`.
    #[inline]
    fn output_action(
        &mut self,
        br: &mut BridgeParts<'_>,
        at: Ingress,
        in_port: PortNo,
        action: &Action,
        pkt: Packet,
        drops: &mut Drops,
    ) {
        match *action {
            Action::Output(port) if port == in_port => {
                self.note(|| format!("output:{port}: it is the input port (use in_port to send back)"));
                self.discard(pkt, DropReason::SamePort, drops);
            }
            Action::Output(port) => match br.by_port_no.get(port as usize).copied().flatten() {
                Some(slot) => {
                    self.note(|| format!("output:{port}"));
                    self.send(slot, pkt);
                }
                None => {
                    self.note(|| format!("output:{port}: no such port"));
                    self.discard(pkt, DropReason::NoPort, drops);
                }
            },
            Action::InPort if self.ports.get(at.slot).is_some_and(Option::is_some) => {
                self.note(|| "in_port: back out of the input port".into());
                self.send(at.slot, pkt);
            }
            Action::InPort => self.discard(pkt, DropReason::NoPort, drops),
            Action::Flood | Action::All => {
                self.note(|| format!("{action}: every port but the input"));
                self.flood_raw(br.slots, at.slot, pkt);
            }
            Action::Normal => self.normal_one(br, at, pkt, drops),
            _ => unreachable!("is_output covers exactly these"),
        }
    }

    /// Rewrites the packet and its key as `action` says.
    fn modify(&mut self, f: &mut InFlight<'_>, action: &Action, drops: &mut Drops) {
        let p = f.pkt.as_mut().expect("the caller checked");
        let (k, h) = (&mut *f.key, &mut f.h);
        let shift = |h: &mut Headers, by: isize| {
            h.l3 = h.l3.saturating_add_signed(by);
            if h.l4 != 0 {
                h.l4 = h.l4.saturating_add_signed(by);
            }
        };
        match *action {
            Action::SetVlanVid(vid) => match p.vlan_tci() {
                Some(t) => p.set_vlan_tci(VlanTci::new(vid, t.pcp())),
                None => {
                    p.push_vlan(VlanTci::new(vid, 0));
                    shift(h, 4);
                }
            },
            Action::SetVlanPcp(pcp) => match p.vlan_tci() {
                Some(t) => p.set_vlan_tci(VlanTci::new(t.vid(), pcp)),
                None => {
                    p.push_vlan(VlanTci::new(0, pcp));
                    shift(h, 4);
                }
            },
            Action::PushVlan(tpid) => {
                p.push_tag(tpid, VlanTci::new(0, 0));
                shift(h, 4);
            }
            Action::StripVlan => {
                let popped = p.pop_vlan().is_some();
                shift(h, if popped { -4 } else { 0 });
            }
            Action::SetDlSrc(m) if p.len() >= ETHERNET_HEADER_LEN => {
                p.data_mut()[6..12].copy_from_slice(&m.0);
                k.set(2, 0, 48, m.to_u64());
            }
            Action::SetDlDst(m) if p.len() >= ETHERNET_HEADER_LEN => {
                p.data_mut()[0..6].copy_from_slice(&m.0);
                k.set(1, 0, 48, m.to_u64());
            }
            Action::SetNwSrc(a) => {
                set_ipv4_addr(p, h, true, a);
                if h.dl_type == ethertype::IPV4 {
                    k.0[4] = u32::from(a) as u64;
                }
            }
            Action::SetNwDst(a) => {
                set_ipv4_addr(p, h, false, a);
                if h.dl_type == ethertype::IPV4 {
                    k.0[6] = u32::from(a) as u64;
                }
            }
            Action::SetTpSrc(port) => {
                set_l4_port(p, h, true, port);
                if h.l4 != 0 && matches!(h.nw_proto, 6 | 17) {
                    k.set(7, 0, 16, port as u64);
                }
            }
            Action::SetTpDst(port) => {
                set_l4_port(p, h, false, port);
                if h.l4 != 0 && matches!(h.nw_proto, 6 | 17) {
                    k.set(7, 16, 16, port as u64);
                }
            }
            Action::DecTtl => {
                if dec_ttl(p, h) {
                    let ttl = k.get(2, 48, 8);
                    if matches!(h.dl_type, ethertype::IPV4 | ethertype::IPV6) && ttl > 0 {
                        k.set(2, 48, 8, ttl - 1);
                    }
                } else {
                    let p = f.pkt.take().expect("present");
                    self.note(|| "dec_ttl: the TTL runs out".into());
                    self.discard(p, DropReason::TtlExpired, drops);
                    return;
                }
            }
            // Carried with the packet to the tunnel port it is output to.
            Action::SetTunnelId(id) => {
                p.tunnel.get_or_insert_with(Default::default).id = id;
                k.0[8] = id;
            }
            Action::SetTunnelDst(a) => {
                p.tunnel.get_or_insert_with(Default::default).dst = a;
                k.set(9, 32, 32, u32::from(a) as u64);
            }
            Action::CtClear => {
                Hit::clear_key(k);
                f.ct = None;
            }
            Action::SetField { field, value, mask } => {
                let v = (field.get(k) & !mask) | value;
                self.write_field(f, field, v, drops);
            }
            Action::Move { src, dst } => {
                let bits = src.read(k);
                let v = (dst.field.get(k) & !dst.mask()) | (bits << dst.ofs);
                self.write_field(f, dst.field, v, drops);
            }
            _ => {}
        }
        // Tags pushed, popped or rewritten: the key's VLAN is the outer tag.
        if matches!(action, Action::SetVlanVid(_) | Action::SetVlanPcp(_) | Action::PushVlan(_) | Action::StripVlan)
            && let Some(p) = f.pkt.as_ref()
        {
            let tci = p.vlan_tci().map_or(0, |t| (t.0 & !VLAN_PRESENT) | VLAN_PRESENT);
            f.key.set(0, 48, 16, tci as u64);
        }
        self.note(|| action.to_string());
    }

    /// Writes a whole field's new value: into the key, and for a header
    /// field into the packet too (through the header action's own code).
    fn write_field(&mut self, f: &mut InFlight<'_>, field: Field, v: u64, drops: &mut Drops) {
        let header = match field {
            Field::EthSrc => Action::SetDlSrc(MacAddr::from_u64(v)),
            Field::EthDst => Action::SetDlDst(MacAddr::from_u64(v)),
            Field::IpSrc => Action::SetNwSrc((v as u32).into()),
            Field::IpDst => Action::SetNwDst((v as u32).into()),
            Field::TpSrc => Action::SetTpSrc(v as u16),
            Field::TpDst => Action::SetTpDst(v as u16),
            Field::VlanVid => Action::SetVlanVid(v as u16 & 0xfff),
            Field::TunId => Action::SetTunnelId(v),
            Field::TunDst => Action::SetTunnelDst((v as u32).into()),
            _ => {
                field.set(f.key, v);
                return;
            }
        };
        let tracing = self.tracing.take();
        self.modify(f, &header, drops);
        self.tracing = tracing;
    }

    /// Traces the packet `m` describes through bridge `bridge`: builds it,
    /// then runs it through the real pipeline in a dry run. Output port
    /// names are left empty for the caller to fill in.
    pub(crate) fn trace(&mut self, bridge: usize, m: &Match, now_ms: u64) -> Option<Trace> {
        let mut b = self.bridges.get_mut(bridge)?.take()?;
        let in_port = m.value.get(0, 0, 32) as PortNo;
        let flow = m.to_text();
        let pkt = packet_for(&m.headers_only());
        let mut parsed = PackedParse::extract(pkt.data(), in_port);
        if let Some(t) = &pkt.tunnel {
            parsed.key.set_tunnel(t);
        }
        // The description's metadata (registers, metadata, pkt_mark) too;
        // the lookup starts in table 0 whatever it says.
        for w in crate::flow::METADATA_WORD..crate::flow::WORDS {
            parsed.key.0[w] = m.value.0[w];
        }
        parsed.key.set_table(0);
        let at = Ingress {
            slot: b.by_port_no.get(in_port as usize).copied().flatten().unwrap_or(usize::MAX),
            port: in_port,
            now_ms,
        };
        let in_vlan = pkt.outer_tag().filter(|t| t.tpid == ethertype::VLAN).map(|t| t.tci.vid());
        self.tracing = Some(Box::default());
        let first = b.flows.classify(&parsed.key);
        let mut drops = [0u64; DropReason::ALL.len()];
        let rule = first.and_then(|id| b.flows.rule(id)).map(|r| r.spec.to_text());
        if at.slot == usize::MAX {
            self.note(|| format!("input port {in_port} does not exist: NORMAL cannot switch it"));
        }
        let fail_open = b.fail_open && b.flows.is_empty();
        let (tables, emc) = b.flows.split();
        let mut parts = BridgeParts {
            mac: &b.mac,
            cache: &mut b.cache,
            slots: &b.slots,
            by_port_no: &b.by_port_no,
            tables,
            emc,
            groups: &b.groups,
            fail_open,
        };
        self.run_pipeline(&mut parts, at, pkt, &mut parsed, first, &mut drops);
        let log = self.tracing.take().expect("set above");
        self.bridges[bridge] = Some(b);
        let mut outputs = Vec::new();
        for (slot, p) in log.outputs {
            let port_no = self.ports.get(slot).and_then(Option::as_ref).map_or(0, |s| s.port_no);
            let vlan = p.outer_tag().filter(|t| t.tpid == ethertype::VLAN).map(|t| t.tci.vid());
            let mut action = match (in_vlan, vlan) {
                (None, Some(v)) => format!("push_vlan(vid={v}),"),
                (Some(_), None) => "pop_vlan,".to_string(),
                (Some(a), Some(v)) if a != v => format!("set_vlan(vid={v}),"),
                _ => String::new(),
            };
            action.push_str(&port_no.to_string());
            outputs.push(TraceOutput { port_no, port: String::new(), vlan, action, tunnel: p.tunnel });
            self.pool.put(p);
        }
        let verdict = TraceOutput::verdict(&outputs);
        Some(Trace { flow, rule, steps: log.steps, outputs, verdict })
    }
}

/// A dry run's note of what a `ct` action found.
fn ct_note(ct: &CtAction, hit: &Hit, reused: bool, dry: bool, rewrite: Option<&Rewrite>) -> String {
    use conntrack::state::*;
    let st = crate::flow::fmt_ct_state(hit.state, hit.state);
    let mut s = format!("{ct}: zone {} ", hit.zone);
    s.push_str(if reused { "(tracked already in this zone) " } else { "" });
    s.push_str(match hit.state {
        x if x & INV != 0 => "invalid",
        x if x & REL != 0 => "related to a connection",
        _ if hit.found.is_none() => "new connection",
        x if x & RPL != 0 => "connection, reply direction",
        _ => "connection, original direction",
    });
    if ct.commit && hit.found.is_none() && hit.state & INV == 0 {
        s.push_str(if dry { " (would be committed)" } else { "" });
    } else if hit.committed {
        s.push_str(", committed");
    }
    s.push_str(&format!(": ct_state={st}"));
    if let Some(Rewrite::Headers(k)) = rewrite {
        s.push_str(&format!(", NAT to {}:{} -> {}:{}", k.src(), k.sport(), k.dst(), k.dport()));
    } else if let Some(Rewrite::Error { quoted, .. }) = rewrite {
        s.push_str(&format!(
            ", quoted packet translated to {}:{} -> {}:{}",
            quoted.src(),
            quoted.sport(),
            quoted.dst(),
            quoted.dport()
        ));
    }
    s
}
