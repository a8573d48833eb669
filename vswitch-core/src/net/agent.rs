//! The neighbour agent of a masquerading network: the switch's own
//! presence on the uplink segment, where it owns an IPv4 address and a
//! MAC of its own (the host's kernel keeps its addresses; frames to the
//! switch's MAC are "other host" to it and it ignores them).
//!
//! The agent is an in-process port of the bridge served by a thread of
//! the daemon, never by a datapath thread. It answers ARP requests for
//! the switch's uplink address, learns neighbours from every ARP it sees
//! on the uplink (snooped) and from the replies to its own requests
//! (solicited), and turns each neighbour into a route rule of table
//! [`ROUTE`](super::flows::ROUTE): `nw_dst=N → set MACs, dec_ttl, output
//! to the uplink`, or for the default gateway the table's default. A
//! packet routed while its next hop is unresolved reaches the agent
//! instead, waits (a few per neighbour) for the reply, and is sent on.
//! Neighbours are asked again every [`REFRESH`]; one that stops answering
//! loses its rule after [`TRIES`] requests.
//!
//! A host-gw cluster network gives it next hops for whole subnets (the
//! other hosts' switch addresses, [`Agent::set_vias`]): each is asked for
//! at once, and once resolved its subnet's route sends straight to it.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use ipnet::IpNet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::wire::{ARP_FRAME_LEN, MacAddr, arp_frame};
use crate::{MemoryPortHandle, Switch};

/// How often a known neighbour is asked again.
pub(crate) const REFRESH: Duration = Duration::from_secs(30);
/// Requests without a reply before a neighbour is forgotten.
const TRIES: u32 = 3;
/// Between two requests for the same address.
const RETRY: Duration = Duration::from_millis(500);
/// Packets held per unresolved neighbour.
const QUEUE: usize = 16;
/// Priority of a resolved host-gw subnet route (above the network's own
/// rule that sends its packets here).
pub(crate) const ROUTE_VIA: u16 = 26;

/// What the agent needs to know of its network.
#[derive(Debug, Clone)]
pub(crate) struct AgentConfig {
    pub(crate) bridge: String,
    pub(crate) uplink: String,
    pub(crate) addr: Ipv4Addr,
    pub(crate) prefix: u8,
    pub(crate) mac: MacAddr,
    pub(crate) gateway: Option<Ipv4Addr>,
    /// The cookie of the rules it installs.
    pub(crate) cookie: u64,
}

impl AgentConfig {
    fn on_link(&self, ip: Ipv4Addr) -> bool {
        let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix)) };
        u32::from(ip) & mask == u32::from(self.addr) & mask
    }
}

/// A running agent; stopped when dropped.
#[derive(Debug)]
pub(crate) struct Agent {
    stop: Arc<AtomicBool>,
    vias: Arc<Mutex<Vec<(IpNet, Ipv4Addr)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Agent {
    /// The subnets routed through next hops on the uplink (host-gw): the
    /// whole set.
    pub(crate) fn set_vias(&self, vias: Vec<(IpNet, Ipv4Addr)>) {
        *self.vias.lock().unwrap_or_else(|e| e.into_inner()) = vias;
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Neighbour {
    mac: Option<MacAddr>,
    asked: Option<Instant>,
    unanswered: u32,
    seen: Instant,
    queue: Vec<Vec<u8>>,
}

struct State {
    sw: Arc<Switch>,
    port: MemoryPortHandle,
    cfg: AgentConfig,
    neigh: HashMap<Ipv4Addr, Neighbour>,
    vias: Arc<Mutex<Vec<(IpNet, Ipv4Addr)>>>,
    /// The subnet routes installed: their next hop and its MAC.
    via_rules: BTreeMap<IpNet, (Ipv4Addr, MacAddr)>,
}

/// Starts the agent on `port`.
pub(crate) fn start(sw: Arc<Switch>, port: MemoryPortHandle, cfg: AgentConfig) -> Agent {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let vias = Arc::new(Mutex::new(Vec::new()));
    let mut st = State { sw, port, cfg, neigh: HashMap::new(), vias: vias.clone(), via_rules: BTreeMap::new() };
    // The default route is the agent's: to itself until the router is
    // resolved.
    if let Some(gw) = st.cfg.gateway {
        st.install(gw, None);
    }
    let thread = std::thread::Builder::new()
        .name(format!("net-agent-{}", st.cfg.bridge))
        .spawn(move || {
            if let Some(gw) = st.cfg.gateway {
                st.ask(gw);
            }
            while !flag.load(Ordering::Relaxed) && !st.port.is_detached() {
                if let Some(p) = st.port.recv_timeout(Duration::from_millis(100)) {
                    let frame = p.data().to_vec();
                    st.port.recycle(p);
                    st.frame(&frame);
                }
                st.tick();
            }
        })
        .ok();
    Agent { stop, vias, thread }
}

impl State {
    /// Neighbour `ip`'s entry, a new unresolved one if it had none.
    fn neighbour(&mut self, ip: Ipv4Addr, now: Instant) -> &mut Neighbour {
        self.neigh.entry(ip).or_insert_with(|| Neighbour {
            mac: None,
            asked: None,
            unanswered: 0,
            seen: now,
            queue: Vec::new(),
        })
    }

    fn send(&self, frame: &[u8]) {
        // A full queue loses this frame; ARP asks again.
        let _ = self.port.send_frame(frame);
    }

    fn ask(&mut self, ip: Ipv4Addr) {
        let now = Instant::now();
        let n = self.neighbour(ip, now);
        if n.asked.is_some_and(|t| now.duration_since(t) < RETRY) {
            return;
        }
        n.asked = Some(now);
        n.unanswered += 1;
        let f = arp_frame(1, self.cfg.mac, self.cfg.addr, MacAddr([0; 6]), ip);
        self.send(&f[..ARP_FRAME_LEN]);
    }

    fn frame(&mut self, f: &[u8]) {
        if f.len() < 14 {
            return;
        }
        match u16::from_be_bytes([f[12], f[13]]) {
            0x0806 if f.len() >= 42 => self.arp(f),
            // Only what table 5 routed here (its source is the agent's
            // MAC); anything else that reached the port is not its job.
            0x0800 if f.len() >= 34 && f[6..12] == self.cfg.mac.0 => {
                let dst = Ipv4Addr::new(f[30], f[31], f[32], f[33]);
                let hop = if self.cfg.on_link(dst) { Some(dst) } else { self.via(dst).or(self.cfg.gateway) };
                let Some(hop) = hop else { return };
                match self.neigh.get(&hop).and_then(|n| n.mac) {
                    Some(mac) => {
                        let mut out = f.to_vec();
                        out[0..6].copy_from_slice(&mac.0);
                        self.send(&out);
                    }
                    None => {
                        self.ask(hop);
                        if let Some(n) = self.neigh.get_mut(&hop)
                            && n.queue.len() < QUEUE
                        {
                            n.queue.push(f.to_vec());
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn arp(&mut self, f: &[u8]) {
        let op = u16::from_be_bytes([f[20], f[21]]);
        let sha = MacAddr(f[22..28].try_into().unwrap_or_default());
        let spa = Ipv4Addr::new(f[28], f[29], f[30], f[31]);
        let tpa = Ipv4Addr::new(f[38], f[39], f[40], f[41]);
        if spa.is_unspecified() || spa == self.cfg.addr || sha == self.cfg.mac {
            return;
        }
        if op == 1 && tpa == self.cfg.addr {
            let reply = arp_frame(2, self.cfg.mac, self.cfg.addr, sha, spa);
            self.send(&reply[..ARP_FRAME_LEN]);
        }
        // Learn only neighbours someone routes to (or asks for us): the
        // segment's other hosts stay out of the flow table.
        let wanted = self.neigh.contains_key(&spa) || tpa == self.cfg.addr;
        if wanted && self.cfg.on_link(spa) {
            self.learn(spa, sha);
        }
    }

    fn learn(&mut self, ip: Ipv4Addr, mac: MacAddr) {
        let now = Instant::now();
        let n = self.neighbour(ip, now);
        let changed = n.mac != Some(mac);
        n.mac = Some(mac);
        n.unanswered = 0;
        n.asked = None;
        n.seen = now;
        let queued = std::mem::take(&mut n.queue);
        if changed {
            self.install(ip, Some(mac));
        }
        for mut p in queued {
            p[0..6].copy_from_slice(&mac.0);
            self.send(&p);
        }
    }

    /// The route rules for neighbour `ip`: to `mac`, or (`None`) gone.
    /// The default gateway's MAC is also the table's default route, and
    /// without it that route leads back to the agent, which resolves it.
    fn install(&self, ip: Ipv4Addr, mac: Option<MacAddr>) {
        let c = &self.cfg;
        let route = super::flows::ROUTE;
        let to = |mac: MacAddr| format!("mod_dl_src:{},mod_dl_dst:{mac},dec_ttl,output:{}", c.mac, c.uplink);
        if Some(ip) == c.gateway {
            let back = format!("mod_dl_src:{},dec_ttl,output:{}", c.mac, self.port.name());
            let rule = format!(
                "cookie={:#x},table={route},priority={},ip,actions={}",
                c.cookie,
                super::flows::ROUTE_DEFAULT,
                mac.map_or(back, to)
            );
            let _ = self.sw.add_flow(&c.bridge, &rule);
        }
        let _ = match mac {
            Some(mac) => self.sw.add_flow(
                &c.bridge,
                &format!(
                    "cookie={:#x},table={route},priority={},ip,nw_dst={ip},actions={}",
                    c.cookie,
                    super::flows::ROUTE_NEIGHBOUR,
                    to(mac)
                ),
            ),
            None => self
                .sw
                .del_flows(
                    &c.bridge,
                    Some(&format!("table={route},priority={},ip,nw_dst={ip}", super::flows::ROUTE_NEIGHBOUR)),
                    true,
                )
                .map(|_| ()),
        };
    }

    /// The next hop of the most specific subnet route holding `dst`.
    fn via(&self, dst: Ipv4Addr) -> Option<Ipv4Addr> {
        let vias = self.vias.lock().unwrap_or_else(|e| e.into_inner());
        vias.iter()
            .filter(|(n, _)| n.contains(&std::net::IpAddr::V4(dst)))
            .max_by_key(|(n, _)| n.prefix_len())
            .map(|(_, h)| *h)
    }

    /// The subnet routes made what the vias and the resolved neighbours
    /// say; unresolved next hops asked for.
    fn sync_vias(&mut self) {
        let vias = self.vias.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut want = BTreeMap::new();
        for (net, hop) in vias {
            match self.neigh.get(&hop).and_then(|n| n.mac) {
                Some(mac) => {
                    want.insert(net, (hop, mac));
                }
                None if self.cfg.on_link(hop) => self.ask(hop),
                None => {}
            }
        }
        if want == self.via_rules {
            return;
        }
        let c = &self.cfg;
        let route = super::flows::ROUTE;
        for (net, v) in &self.via_rules {
            if want.get(net) != Some(v) {
                let m = format!("table={route},priority={ROUTE_VIA},ip,nw_dst={net}");
                let _ = self.sw.del_flows(&c.bridge, Some(&m), true);
            }
        }
        for (net, (_, mac)) in &want {
            if self.via_rules.get(net).map(|v| v.1) != Some(*mac) {
                let rule = format!(
                    "cookie={:#x},table={route},priority={ROUTE_VIA},ip,nw_dst={net},actions=mod_dl_src:{},mod_dl_dst:{mac},dec_ttl,output:{}",
                    c.cookie, c.mac, c.uplink
                );
                let _ = self.sw.add_flow(&c.bridge, &rule);
            }
        }
        self.via_rules = want;
    }

    fn tick(&mut self) {
        self.sync_vias();
        let now = Instant::now();
        let mut ask = Vec::new();
        let mut forget = Vec::new();
        for (ip, n) in &mut self.neigh {
            let stale = n.mac.is_some() && now.duration_since(n.seen) >= REFRESH;
            let waiting = n.asked.is_some_and(|t| now.duration_since(t) >= RETRY);
            if n.unanswered >= TRIES && waiting {
                forget.push(*ip);
            } else if stale && n.asked.is_none() || waiting {
                ask.push(*ip);
            }
        }
        for ip in forget {
            if let Some(n) = self.neigh.remove(&ip)
                && n.mac.is_some()
            {
                self.install(ip, None);
            }
            // (The gateway is asked for again when traffic needs it.)
        }
        for ip in ask {
            self.ask(ip);
        }
    }
}
