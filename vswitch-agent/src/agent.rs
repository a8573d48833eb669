//! The agent's life: a session with etcd (configuration, lease, listing,
//! watch) that starts again with backoff whenever etcd fails, and what it
//! keeps telling `vswitchd` (the network, the routes, its report).
//!
//! Nothing in `vswitchd` is undone when etcd is unreachable: the routes
//! it has stay until a listing or a watch event says a host is gone.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant, SystemTime};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use ipnet::{IpNet, Ipv4Net};
use serde_json::{Value, json};
use tokio::signal::unix::{SignalKind, signal};
use vswitch_core::net::{RemoteEndpoint, RemoteSubnet};
use vswitch_ctl::CallError;

use crate::Opts;
use crate::flannel::{Backend, Config, Host, LeaseAttrs, parse_subnet_key, subnet_key};

/// How long one etcd request may take.
const REQUEST: Duration = Duration::from_secs(5);
/// How long one vswitchd request may take.
const DAEMON: Duration = Duration::from_secs(10);
/// Backoff between sessions: from, to.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(5));
/// How often this host's containers and labels are read from vswitchd
/// and, if they changed, published.
const PUBLISH: Duration = Duration::from_secs(1);
/// Hosts whose lease TTL is looked up for the report (beyond that only
/// the count matters to a reader).
const TTL_LOOKUPS: usize = 64;

macro_rules! log {
    ($($arg:tt)*) => { eprintln!("vswitch-agent: {}", format_args!($($arg)*)) };
}

/// This host's lease.
#[derive(Debug, Clone)]
struct Own {
    subnet: Ipv4Net,
    key: String,
    /// The etcd lease (0 once lost: acquired again by the next session).
    lease: i64,
    ttl: i64,
    expires: Instant,
}

/// Why a session ended: try again at once (a lost lease, a compacted
/// watch) or after the backoff (etcd failing).
enum End {
    Now(String),
    Later(String),
}

impl From<String> for End {
    fn from(s: String) -> End {
        End::Later(s)
    }
}

struct Agent {
    o: Opts,
    socket: String,
    client: Option<Client>,
    /// The member the client talks to (an index into the endpoints).
    pin: usize,
    cfg: Option<Config>,
    own: Option<Own>,
    /// The task keeping the lease alive.
    alive: Option<KeepAlive>,
    /// The subnet this host had before, and its lease (the state file's).
    remembered: Option<Ipv4Net>,
    remembered_lease: i64,
    /// A lease granted for a transaction whose outcome is unknown (its
    /// reply was lost): a record on it is this host's.
    pending: i64,
    hosts: BTreeMap<String, Host>,
    /// Each host's containers and labels, by its subnet.
    endpoints: BTreeMap<Ipv4Net, Vec<RemoteEndpoint>>,
    /// What this host published last (on which lease).
    published: Option<(i64, Vec<RemoteEndpoint>)>,
    /// Records under the prefix that are not a usable lease, and why.
    ignored: BTreeMap<String, String>,
    revision: i64,
    connected: bool,
    etcd_error: Option<String>,
    daemon_error: Option<String>,
    /// The network definition vswitchd last accepted.
    applied: Option<Value>,
    pushed: Option<Vec<RemoteSubnet>>,
    last_sync: Option<SystemTime>,
    ttls: BTreeMap<i64, (i64, Instant)>,
    seed: u64,
}

/// What a lease's keepalive task last heard.
#[derive(Debug, Clone)]
enum Alive {
    /// Kept: alive until then (counted from when the request was sent).
    Until(Instant),
    /// etcd says the lease is gone.
    Lost,
}

/// A lease kept alive by a task of its own, on a connection of its own:
/// nothing the session does (a slow vswitchd, a failed watch, a bad
/// configuration, the backoff between sessions) delays it. Aborted on
/// drop.
struct KeepAlive {
    rx: tokio::sync::watch::Receiver<Alive>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn options() -> ConnectOptions {
    // No per-request timeout on the channel: it would end the watch and
    // keepalive streams too (unary requests get theirs in `t`).
    ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        .with_keep_alive_while_idle(true)
}

/// Keeps `lease` alive every TTL/3 through the members in turn (from
/// `pin`), until etcd says it is gone.
fn keep_alive(endpoints: Vec<String>, pin: usize, lease: i64, ttl: i64) -> KeepAlive {
    let ttl = Duration::from_secs(ttl.max(1) as u64);
    let (tx, rx) = tokio::sync::watch::channel(Alive::Until(Instant::now() + ttl));
    let period = ttl / 3;
    let task = tokio::spawn(async move {
        for k in pin.. {
            let ep = endpoints[k % endpoints.len().max(1)].as_str();
            if let Ok(Ok(mut c)) = tokio::time::timeout(REQUEST, Client::connect([ep], Some(options()))).await {
                let mut sent = Instant::now();
                // `lease_keep_alive` sends the first request and reads its
                // reply itself (an error if the lease is gone).
                match tokio::time::timeout(REQUEST, c.lease_keep_alive(lease)).await {
                    Ok(Ok((mut keeper, mut stream))) => {
                        let _ = tx.send(Alive::Until(sent + ttl));
                        loop {
                            tokio::time::sleep(period).await;
                            sent = Instant::now();
                            if keeper.keep_alive().await.is_err() {
                                break;
                            }
                            match tokio::time::timeout(REQUEST, stream.message()).await {
                                Ok(Ok(Some(r))) if r.ttl() > 0 => {
                                    let _ = tx.send(Alive::Until(sent + Duration::from_secs(r.ttl() as u64)));
                                }
                                Ok(Ok(Some(_))) => {
                                    let _ = tx.send(Alive::Lost);
                                    return;
                                }
                                _ => break,
                            }
                        }
                    }
                    Ok(Err(etcd_client::Error::LeaseKeepAliveError(why))) if why.contains("not found") => {
                        let _ = tx.send(Alive::Lost);
                        return;
                    }
                    _ => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    KeepAlive { rx, task }
}

/// A watch's next response (started at revision `from`), or why the
/// session ends: a compacted start lists again at once.
fn watched(
    m: Result<Option<etcd_client::WatchResponse>, etcd_client::Error>,
    from: i64,
) -> Result<etcd_client::WatchResponse, End> {
    let Some(w) = m.map_err(|e| format!("watch: {e}"))? else {
        return Err("the watch ended".to_string().into());
    };
    if w.compact_revision() > 0 {
        return Err(End::Now(format!(
            "watch from revision {from} compacted (now {}): listing again",
            w.compact_revision()
        )));
    }
    if w.canceled() {
        return Err(format!("etcd cancelled the watch: {}", w.cancel_reason()).into());
    }
    Ok(w)
}

/// An etcd request with a deadline.
async fn t<T>(f: impl Future<Output = Result<T, etcd_client::Error>>) -> Result<T, String> {
    match tokio::time::timeout(REQUEST, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("etcd: {e}")),
        Err(_) => Err(format!("etcd did not answer within {} s", REQUEST.as_secs())),
    }
}

/// A vswitchd request (its client blocks: on the blocking pool).
async fn daemon(socket: &str, method: &'static str, params: Value) -> Result<Value, CallError> {
    let socket = socket.to_string();
    tokio::task::spawn_blocking(move || vswitch_ctl::Client::connect(&socket, DAEMON)?.call(method, params))
        .await
        .unwrap_or_else(|e| Err(CallError::Unreachable(e.to_string())))
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Runs the agent until SIGTERM or SIGINT, which revoke the lease.
///
/// # Errors
/// Only what stops it from starting (bad options, no signal handlers).
pub async fn run(o: Opts, report: Duration) -> Result<(), String> {
    if let (Some(u), Some(p)) = (o.uplink_address, o.public_ip)
        && o.uplink.is_some()
        && u.addr() == p
    {
        log!("note: --public-ip is the switch's uplink address, which only host-gw uses as its endpoint");
    }
    let socket = vswitch_ctl::socket_path(o.socket.as_deref());
    std::fs::create_dir_all(&o.state_dir).map_err(|e| format!("state directory {}: {e}", o.state_dir.display()))?;
    let state = std::fs::read_to_string(o.state_dir.join(format!("{}.json", o.network)))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .unwrap_or_default();
    let remembered = state["subnet"].as_str().and_then(|s| s.parse().ok());
    let remembered_lease = state["lease"].as_str().and_then(|l| i64::from_str_radix(l, 16).ok()).unwrap_or(0);
    let seed = unix_seconds(SystemTime::now()).to_bits() ^ u64::from(std::process::id()).rotate_left(32);
    let mut a = Agent {
        o,
        socket,
        client: None,
        pin: 0,
        cfg: None,
        own: None,
        alive: None,
        remembered,
        remembered_lease,
        pending: 0,
        hosts: BTreeMap::new(),
        endpoints: BTreeMap::new(),
        published: None,
        ignored: BTreeMap::new(),
        revision: 0,
        connected: false,
        etcd_error: None,
        daemon_error: None,
        applied: None,
        pushed: None,
        last_sync: None,
        ttls: BTreeMap::new(),
        seed,
    };
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT handler: {e}"))?;
    let mut backoff = BACKOFF.0;
    log!("joining through etcd at {} (prefix {})", a.o.etcd_endpoints.join(","), a.o.etcd_prefix);
    loop {
        let started = Instant::now();
        let end = tokio::select! {
            e = a.session(report) => e,
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        a.connected = false;
        let (why, wait) = match end {
            End::Now(why) => (why, Duration::ZERO),
            End::Later(why) => {
                if started.elapsed() > BACKOFF.1 * 2 {
                    backoff = BACKOFF.0;
                }
                let w = backoff;
                backoff = (backoff * 2).min(BACKOFF.1);
                (why, w)
            }
        };
        if a.etcd_error.as_deref() != Some(why.as_str()) {
            log!("{why}{}", if wait.is_zero() { String::new() } else { format!(" (again in {wait:?})") });
        }
        a.etcd_error = Some(why);
        a.push().await;
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    a.stop().await;
    Ok(())
}

impl Agent {
    fn prefix(&self) -> &str {
        self.o.etcd_prefix.trim_end_matches('/')
    }

    fn subnets_prefix(&self) -> String {
        format!("{}/subnets/", self.prefix())
    }

    /// This host's endpoint for `backend`.
    fn public_ip(&self, backend: &Backend) -> Result<Ipv4Addr, String> {
        match backend {
            Backend::Vxlan { .. } => self.o.public_ip.ok_or_else(|| {
                "the cluster's backend is vxlan: give --public-ip, this host's underlay address".to_string()
            }),
            Backend::HostGw => {
                let (Some(_), Some(u)) = (&self.o.uplink, self.o.uplink_address) else {
                    return Err("the cluster's backend is host-gw: give --uplink and --uplink-address (the switch's own address on the shared segment, which other hosts route through)".into());
                };
                match self.o.public_ip {
                    Some(p) if p != u.addr() => Err(format!(
                        "with host-gw the endpoint is the switch's uplink address {}, not --public-ip {p}",
                        u.addr()
                    )),
                    _ => Ok(u.addr()),
                }
            }
        }
    }

    fn attrs(&self, cfg: &Config) -> Result<LeaseAttrs, String> {
        let ip = self.public_ip(&cfg.backend)?;
        let mac =
            matches!(cfg.backend, Backend::Vxlan { .. }).then(|| vswitch_core::net::vtep_mac(&self.o.network, ip));
        Ok(LeaseAttrs::new(ip, &cfg.backend, mac))
    }

    /// A client pinned to one member: the one that worked last, else the
    /// next that answers (a balanced channel over every member would
    /// keep sending requests to a dead one).
    async fn connect(&mut self) -> Result<Client, String> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let eps = &self.o.etcd_endpoints;
        let mut why = Vec::new();
        for k in 0..eps.len() {
            let i = (self.pin + k) % eps.len();
            match tokio::time::timeout(REQUEST, Client::connect([eps[i].as_str()], Some(options()))).await {
                Ok(Ok(c)) => {
                    if i != self.pin || self.etcd_error.is_some() {
                        log!("talking to etcd at {}", eps[i]);
                    }
                    self.pin = i;
                    self.client = Some(c.clone());
                    return Ok(c);
                }
                Ok(Err(e)) => why.push(format!("{}: {e}", eps[i])),
                Err(_) => why.push(format!("{}: no answer", eps[i])),
            }
        }
        Err(format!("cannot reach etcd: {}", why.join("; ")))
    }

    async fn session(&mut self, report: Duration) -> End {
        match self.session_inner(report).await {
            Ok(never) => match never {},
            Err(e) => {
                if matches!(e, End::Later(_)) && self.client.take().is_some() {
                    // A fresh channel next time, to the next member first
                    // (this one may be gone).
                    self.pin = (self.pin + 1) % self.o.etcd_endpoints.len().max(1);
                }
                e
            }
        }
    }

    async fn session_inner(&mut self, report: Duration) -> Result<std::convert::Infallible, End> {
        let mut c = self.connect().await?;
        let key = format!("{}/config", self.prefix());
        let r = t(c.get(key.as_str(), None)).await?;
        let text = r.kvs().first().map(|kv| kv.value_str().unwrap_or_default().to_string()).ok_or_else(|| {
            format!("no cluster configuration at {key}: write one (docs/cluster.md), e.g. {{\"Network\": \"10.244.0.0/16\", \"Backend\": {{\"Type\": \"vxlan\"}}}}")
        })?;
        let cfg = Config::parse(&text).map_err(|e| format!("{key}: {e}"))?;
        if self.cfg.as_ref() != Some(&cfg) {
            if self.cfg.is_some() {
                log!("the cluster configuration changed");
            }
            if let Some(own) = &self.own
                && !cfg.allows(own.subnet)
            {
                log!("subnet {} is not in the new configuration: leasing another", own.subnet);
                self.alive = None;
                let _ = t(c.lease_revoke(own.lease)).await;
                self.own = None;
                self.remembered = None;
            }
            self.cfg = Some(cfg.clone());
        }
        let attrs = self.attrs(&cfg)?;
        self.ensure_lease(&mut c, &cfg, &attrs).await?;
        self.connected = true;
        self.etcd_error = None;
        self.apply_network().await;
        // Everything as it is now, then every change after it.
        let r = t(c.get(self.subnets_prefix(), Some(GetOptions::new().with_prefix()))).await?;
        self.revision = r.header().map_or(0, |h| h.revision());
        self.hosts.clear();
        self.ignored.clear();
        for kv in r.kvs() {
            self.record(kv.key_str().unwrap_or_default(), kv.value_str().unwrap_or_default(), kv.lease());
        }
        self.check_own()?;
        // The other hosts' containers (policy peers), the same way.
        let r = t(c.get(self.endpoints_prefix(), Some(GetOptions::new().with_prefix()))).await?;
        let endpoints_rev = r.header().map_or(0, |h| h.revision());
        self.endpoints.clear();
        for kv in r.kvs() {
            self.endpoint_record(kv.key_str().unwrap_or_default(), Some(kv.value_str().unwrap_or_default()));
        }
        self.published = None;
        self.publish(&mut c).await?;
        self.push().await;
        let own = self.own.clone().ok_or_else(|| End::Now("no lease".into()))?;
        let mut alive = self.alive.as_ref().map(|k| k.rx.clone()).ok_or_else(|| End::Now("no keepalive".into()))?;
        let mut watch = t(c.watch(
            self.subnets_prefix(),
            Some(WatchOptions::new().with_prefix().with_start_revision(self.revision + 1)),
        ))
        .await?;
        let mut peers = t(c.watch(
            self.endpoints_prefix(),
            Some(WatchOptions::new().with_prefix().with_start_revision(endpoints_rev + 1)),
        ))
        .await?;
        let mut tick = tokio::time::interval(report);
        tick.tick().await;
        let mut labels = tokio::time::interval(PUBLISH);
        loop {
            tokio::select! {
                m = peers.message() => {
                    let w = watched(m, endpoints_rev + 1)?;
                    for ev in w.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let value = match ev.event_type() {
                            EventType::Put => Some(kv.value_str().unwrap_or_default()),
                            EventType::Delete => None,
                        };
                        self.endpoint_record(kv.key_str().unwrap_or_default(), value);
                    }
                    self.push().await;
                }
                _ = labels.tick() => self.publish(&mut c).await?,
                r = alive.changed() => {
                    let now = if r.is_ok() { alive.borrow_and_update().clone() } else { Alive::Lost };
                    match now {
                        Alive::Until(t) => {
                            if let Some(o) = &mut self.own {
                                o.expires = t;
                            }
                        }
                        Alive::Lost => return Err(self.lost(format!("lease {:x} of {} expired", own.lease, own.subnet))),
                    }
                }
                m = watch.message() => {
                    let w = watched(m, self.revision + 1)?;
                    if let Some(h) = w.header() {
                        self.revision = self.revision.max(h.revision());
                    }
                    for ev in w.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let key = kv.key_str().unwrap_or_default().to_string();
                        match ev.event_type() {
                            EventType::Put => self.record(&key, kv.value_str().unwrap_or_default(), kv.lease()),
                            EventType::Delete => {
                                self.ignored.remove(&key);
                                if self.hosts.remove(&key).is_some() {
                                    log!("host {} left", key.rsplit('/').next().unwrap_or_default());
                                }
                            }
                        }
                    }
                    self.check_own()?;
                    self.push().await;
                }
                _ = tick.tick() => {
                    // A changed configuration: a new session reads it.
                    let r = t(c.get(key.as_str(), None)).await?;
                    if r.kvs().first().map(|kv| kv.value_str().unwrap_or_default()) != Some(text.as_str()) {
                        return Err(End::Now(format!("{key} changed: reading it again")));
                    }
                    self.apply_network().await;
                    self.lookup_ttls(&mut c).await;
                    self.push().await;
                }
            }
        }
    }

    /// Our record is still ours (else the lease is lost: acquired again).
    fn check_own(&mut self) -> Result<(), End> {
        let Some(own) = &self.own else { return Err(End::Now("no lease".into())) };
        match self.hosts.get(&own.key) {
            Some(h) if h.lease == own.lease => Ok(()),
            Some(_) => Err(self.lost(format!("the record of {} was replaced by another", own.subnet))),
            None => Err(self.lost(format!("the record of {} is gone", own.subnet))),
        }
    }

    /// The lease is gone: the next session leases again (the same subnet
    /// if it is still free).
    fn lost(&mut self, why: String) -> End {
        if let Some(o) = &mut self.own {
            o.lease = 0;
        }
        self.alive = None;
        End::Now(format!("{why}: leasing again"))
    }

    fn endpoints_prefix(&self) -> String {
        format!("{}/vswitch/endpoints/", self.prefix())
    }

    /// A record under `vswitch/endpoints/` (a host's containers and their
    /// labels), or its removal.
    fn endpoint_record(&mut self, key: &str, value: Option<&str>) {
        let Some(subnet) = key.strip_prefix(&self.endpoints_prefix()).and_then(|rest| {
            let (a, l) = rest.split_once('-')?;
            Ipv4Net::new(a.parse().ok()?, l.parse().ok()?).ok()
        }) else {
            return;
        };
        self.ignored.remove(key);
        match value.map(serde_json::from_str::<Vec<RemoteEndpoint>>) {
            None => {
                self.endpoints.remove(&subnet);
            }
            Some(Ok(list)) => {
                self.endpoints.insert(subnet, list);
            }
            Some(Err(e)) => {
                self.endpoints.remove(&subnet);
                self.ignored.insert(key.into(), format!("not a list of endpoints: {e}"));
            }
        }
    }

    /// Publishes this host's containers with their labels (what other
    /// hosts' policies select peers by), attached to the lease, when
    /// they changed.
    async fn publish(&mut self, c: &mut Client) -> Result<(), End> {
        let Some(own) = self.own.clone().filter(|o| o.lease != 0) else { return Ok(()) };
        let Ok(list) = daemon(&self.socket, "net.list", Value::Null).await else { return Ok(()) };
        let mut mine: Vec<RemoteEndpoint> = list
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| n["network"]["name"] == json!(self.o.network))
            .flat_map(|n| n["attachments"].as_array().cloned().unwrap_or_default())
            .flat_map(|a| {
                let labels: BTreeMap<String, String> = serde_json::from_value(a["labels"].clone()).unwrap_or_default();
                a["ips"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i["address"].as_str()?.split('/').next()?.parse::<Ipv4Addr>().ok())
                    .filter(|ip| own.subnet.contains(ip))
                    .map(|ip| RemoteEndpoint { ip: IpAddr::V4(ip), labels: labels.clone() })
                    .collect::<Vec<_>>()
            })
            .collect();
        mine.sort_by_key(|e| e.ip);
        if self.published.as_ref().is_some_and(|p| p.0 == own.lease && p.1 == mine) {
            return Ok(());
        }
        let key = format!("{}{}-{}", self.endpoints_prefix(), own.subnet.network(), own.subnet.prefix_len());
        let value = serde_json::to_string(&mine).unwrap_or_default();
        t(c.put(key, value, Some(PutOptions::new().with_lease(own.lease)))).await?;
        self.published = Some((own.lease, mine));
        Ok(())
    }

    /// A record under `subnets/`: a host, or why it is not one.
    fn record(&mut self, key: &str, value: &str, lease: i64) {
        self.ignored.remove(key);
        let Some(subnet) = parse_subnet_key(self.prefix(), key) else {
            self.ignored.insert(key.into(), "not a subnet key (A.B.C.D-LEN)".into());
            return;
        };
        match serde_json::from_str::<LeaseAttrs>(value) {
            Ok(attrs) => {
                let h = Host { subnet, attrs, lease };
                if self.hosts.insert(key.into(), h.clone()).as_ref() != Some(&h)
                    && self.own.as_ref().is_none_or(|o| o.key != key)
                {
                    log!("host {} at {} ({})", subnet, h.attrs.public_ip, h.attrs.backend_type);
                }
            }
            Err(e) => {
                self.hosts.remove(key);
                self.ignored.insert(key.into(), format!("not a lease record: {e}"));
            }
        }
    }

    fn random(&mut self) -> u64 {
        // xorshift64*: spreads hosts that start together over the block.
        self.seed ^= self.seed >> 12;
        self.seed ^= self.seed << 25;
        self.seed ^= self.seed >> 27;
        self.seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Makes sure this host holds a live lease, kept alive: the one it
    /// has, else its own record from before (this host's PublicIP on the
    /// lease the state file names, or on one granted for a transaction
    /// whose reply was lost), else the subnet it remembers, else a free
    /// one at random; each taken in a transaction that fails if another
    /// host got there first. A record with this host's PublicIP on
    /// someone else's lease (another agent with the same address) is
    /// another host's.
    async fn ensure_lease(&mut self, c: &mut Client, cfg: &Config, attrs: &LeaseAttrs) -> Result<(), End> {
        let value = serde_json::to_string(attrs).unwrap_or_default();
        if let Some(own) = self.own.clone()
            && own.lease != 0
        {
            let r = t(c.get(own.key.as_str(), None)).await?;
            let live = t(c.lease_time_to_live(own.lease, None)).await.is_ok_and(|r| r.ttl() > 0);
            if live
                && r.kvs().first().is_some_and(|kv| kv.lease() == own.lease && kv.value_str().is_ok_and(|v| v == value))
            {
                if self.alive.as_ref().is_none_or(|k| matches!(*k.rx.borrow(), Alive::Lost)) {
                    self.alive = Some(keep_alive(self.o.etcd_endpoints.clone(), self.pin, own.lease, own.ttl));
                }
                return Ok(());
            }
            self.alive = None;
        }
        let grant = t(c.lease_grant(self.o.lease_ttl, None)).await?;
        let id = grant.id();
        let before = [self.remembered_lease, self.pending, self.own.as_ref().map_or(0, |o| o.lease)];
        let ours = |lease: i64| lease != 0 && before.contains(&lease);
        for _ in 0..16 {
            let r = t(c.get(self.subnets_prefix(), Some(GetOptions::new().with_prefix()))).await?;
            let mut taken = BTreeMap::new();
            for kv in r.kvs() {
                let Some(n) = parse_subnet_key(self.prefix(), kv.key_str().unwrap_or_default()) else { continue };
                let a = serde_json::from_str::<LeaseAttrs>(kv.value_str().unwrap_or_default()).ok();
                taken.insert(n, (a, kv.mod_revision(), kv.lease()));
            }
            let is_mine = |a: &Option<LeaseAttrs>, lease: i64| {
                ours(lease) && a.as_ref().is_some_and(|a| a.public_ip == attrs.public_ip)
            };
            let prefer = self.own.as_ref().map(|o| o.subnet).or(self.remembered);
            // Ours from before: the remembered subnet's record first.
            let mine = taken
                .iter()
                .filter(|(n, (a, _, lease))| cfg.allows(**n) && is_mine(a, *lease))
                .min_by_key(|(n, _)| Some(**n) != prefer)
                .map(|(n, (_, rev, lease))| (*n, *rev, *lease));
            let (subnet, cmp, old) = if let Some((n, rev, lease)) = mine {
                (n, Compare::mod_revision(subnet_key(self.prefix(), n), CompareOp::Equal, rev), lease)
            } else {
                let n = match prefer.filter(|n| cfg.allows(*n) && !taken.contains_key(n)) {
                    Some(n) => n,
                    None => {
                        let free: Vec<Ipv4Net> = cfg.candidates().filter(|n| !taken.contains_key(n)).collect();
                        if free.is_empty() {
                            let _ = t(c.lease_revoke(id)).await;
                            return Err(format!(
                                "no free /{} left in {} ({} hosts hold one)",
                                cfg.subnet_len,
                                cfg.network,
                                taken.len()
                            )
                            .into());
                        }
                        free[(self.random() % free.len() as u64) as usize]
                    }
                };
                (n, Compare::create_revision(subnet_key(self.prefix(), n), CompareOp::Equal, 0), 0)
            };
            let key = subnet_key(self.prefix(), subnet);
            let txn = Txn::new().when([cmp]).and_then([TxnOp::put(
                key.as_str(),
                value.as_str(),
                Some(PutOptions::new().with_lease(id)),
            )]);
            // Should the reply be lost, a record on this lease is ours.
            self.pending = id;
            if t(c.txn(txn)).await?.succeeded() {
                let how = if mine.is_some() { "kept" } else { "leased" };
                log!("{how} subnet {subnet} (lease {id:x}, TTL {} s) for {}", grant.ttl(), attrs.public_ip);
                self.own = Some(Own {
                    subnet,
                    key: key.clone(),
                    lease: id,
                    ttl: grant.ttl(),
                    expires: Instant::now() + Duration::from_secs(grant.ttl().max(0) as u64),
                });
                self.alive = Some(keep_alive(self.o.etcd_endpoints.clone(), self.pin, id, grant.ttl()));
                self.remembered = Some(subnet);
                self.remembered_lease = id;
                self.pending = 0;
                self.save_state(cfg, subnet, id);
                // Our leases from before hold nothing of use now: the
                // record moved, or another subnet's record is stale.
                let stale: BTreeSet<i64> = taken
                    .iter()
                    .filter(|(n, (a, _, lease))| **n != subnet && is_mine(a, *lease))
                    .map(|(_, (_, _, lease))| *lease)
                    .chain((old != 0).then_some(old))
                    .filter(|l| *l != id)
                    .collect();
                for l in stale {
                    let _ = t(c.lease_revoke(l)).await;
                }
                return Ok(());
            }
            // Another host got there first: look again.
            tokio::time::sleep(Duration::from_millis(5 + self.random() % 45)).await;
        }
        let _ = t(c.lease_revoke(id)).await;
        self.pending = 0;
        Err("could not lease a subnet: 16 tries lost races with other hosts".to_string().into())
    }

    /// The state file (the subnet, kept across restarts) and NETWORK.env
    /// (flannel's subnet.env variables, for scripts and other plugins).
    fn save_state(&self, cfg: &Config, subnet: Ipv4Net, lease: i64) {
        let dir = &self.o.state_dir;
        let state = json!({
            "subnet": subnet,
            "lease": format!("{lease:x}"),
            "public_ip": self.public_ip(&cfg.backend).ok(),
            "network": cfg.network,
        });
        let gw = Ipv4Addr::from(u32::from(subnet.network()) + 1);
        let env = format!(
            "FLANNEL_NETWORK={}\nFLANNEL_SUBNET={gw}/{}\nFLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n",
            cfg.network,
            subnet.prefix_len(),
            self.mtu(cfg).unwrap_or(1500),
            self.o.uplink.is_some()
        );
        for (name, text) in
            [(format!("{}.json", self.o.network), state.to_string()), (format!("{}.env", self.o.network), env)]
        {
            let tmp = dir.join(format!(".{name}.tmp"));
            if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, dir.join(&name))) {
                log!("cannot write {}: {e}", dir.join(&name).display());
            }
        }
    }

    fn mtu(&self, cfg: &Config) -> Option<u32> {
        self.o.mtu.or(matches!(cfg.backend, Backend::Vxlan { .. }).then_some(1450))
    }

    /// The network as vswitchd should have it.
    fn spec(&self) -> Option<Value> {
        let (cfg, own) = (self.cfg.as_ref()?, self.own.as_ref()?);
        let backend = match cfg.backend {
            Backend::Vxlan { vni, port } => {
                let ip = self.public_ip(&cfg.backend).ok()?;
                json!({
                    "type": "vxlan",
                    "vni": vni,
                    "port": port,
                    "local_ip": ip,
                    "vtep_mac": vswitch_core::net::vtep_mac(&self.o.network, ip),
                })
            }
            Backend::HostGw => json!({ "type": "host-gw" }),
        };
        let mut spec = json!({
            "name": self.o.network,
            "bridge": self.o.bridge,
            "is_gateway": true,
            "is_default_gateway": true,
            "ipam": { "type": "vswitch", "subnet": own.subnet },
            "cluster": { "network": cfg.network, "backend": backend },
        });
        if let Some(mtu) = self.mtu(cfg) {
            spec["mtu"] = json!(mtu);
        }
        if let (Some(u), Some(a)) = (&self.o.uplink, self.o.uplink_address) {
            spec["masquerade"] = json!({ "uplink": u, "address": a });
            if let Some(r) = self.o.uplink_router {
                spec["masquerade"]["gateway"] = json!(r);
            }
        }
        Some(spec)
    }

    /// Gives vswitchd the network (again, if it lost it or it changed).
    async fn apply_network(&mut self) {
        let Some(spec) = self.spec() else { return };
        match daemon(&self.socket, "net.create", json!({ "network": spec, "update": true })).await {
            Ok(r) => {
                if r["changed"] == json!(true) {
                    log!("network '{}' on bridge {} now has {}", self.o.network, self.o.bridge, spec["ipam"]["subnet"]);
                    self.pushed = None;
                }
                self.applied = Some(spec);
                self.daemon_error = None;
            }
            Err(e) => self.daemon_failed(format!("vswitchd net.create: {e}")),
        }
    }

    fn daemon_failed(&mut self, why: String) {
        if self.daemon_error.as_deref() != Some(why.as_str()) {
            log!("{why}");
        }
        self.daemon_error = Some(why);
        self.pushed = None;
    }

    /// The other hosts' TTLs, for the report.
    async fn lookup_ttls(&mut self, c: &mut Client) {
        let own = self.own.as_ref().map_or(0, |o| o.lease);
        let leases: Vec<i64> =
            self.hosts.values().map(|h| h.lease).filter(|l| *l != 0 && *l != own).take(TTL_LOOKUPS).collect();
        self.ttls.retain(|l, _| leases.contains(l));
        for l in leases {
            // Only for the report: a slow etcd does not hold the session up.
            if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(1), c.lease_time_to_live(l, None)).await {
                self.ttls.insert(l, (r.ttl(), Instant::now()));
            }
        }
    }

    /// The routes to the other hosts, and the records that give none.
    fn routes(&self) -> (Vec<RemoteSubnet>, Vec<(String, String)>) {
        let Some(cfg) = &self.cfg else { return (Vec::new(), Vec::new()) };
        let mut skipped: Vec<(String, String)> = self.ignored.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let own_key = self.own.as_ref().map(|o| o.key.as_str());
        let mut hosts: Vec<(&String, &Host)> = self.hosts.iter().filter(|(k, _)| Some(k.as_str()) != own_key).collect();
        hosts.sort_by_key(|(_, h)| h.subnet);
        let own = self.own.as_ref().map(|o| o.subnet);
        let own_ip = self.public_ip(&cfg.backend).ok();
        let mut out: Vec<RemoteSubnet> = Vec::new();
        for (k, h) in hosts {
            let why = if Some(h.attrs.public_ip) == own_ip {
                Some(format!(
                    "{} carries this host's PublicIP {} (a stale record of this host, or another host with the same address)",
                    h.subnet, h.attrs.public_ip
                ))
            } else if !cfg.network.contains(&h.subnet) {
                Some(format!("{} is outside the cluster network {}", h.subnet, cfg.network))
            } else if own.is_some_and(|o| o.contains(&h.subnet.network()) || h.subnet.contains(&o.network())) {
                Some(format!("{} overlaps this host's subnet", h.subnet))
            } else if out.last().is_some_and(|l| l.subnet.contains(&IpNet::V4(h.subnet))) {
                Some(format!("{} overlaps another host's subnet", h.subnet))
            } else {
                None
            };
            match why.map_or_else(|| h.route(&cfg.backend), Err) {
                Ok(r) => out.push(r),
                Err(why) => skipped.push((k.clone(), why)),
            }
        }
        (out, skipped)
    }

    fn report(&self, skipped: &[(String, String)]) -> Value {
        let now = Instant::now();
        let own_key = self.own.as_ref().map(|o| o.key.as_str());
        let hosts: Vec<Value> = self
            .hosts
            .iter()
            .filter(|(k, _)| Some(k.as_str()) != own_key)
            .map(|(_, h)| {
                let ttl = self.ttls.get(&h.lease).map(|(t, at)| (*t - now.duration_since(*at).as_secs() as i64).max(0));
                json!({
                    "subnet": h.subnet,
                    "public_ip": h.attrs.public_ip,
                    "backend": h.attrs.backend_type,
                    "vtep_mac": h.attrs.vtep_mac(),
                    "lease": format!("{:x}", h.lease),
                    "ttl_left": ttl,
                })
            })
            .collect();
        json!({
            "pid": std::process::id(),
            "subnet": self.own.as_ref().map(|o| o.subnet),
            "public_ip": self.cfg.as_ref().and_then(|c| self.public_ip(&c.backend).ok()),
            "backend": self.cfg.as_ref().map(|c| c.backend.name()),
            "cluster_network": self.cfg.as_ref().map(|c| c.network),
            "lease": self.own.as_ref().map(|o| json!({
                "id": format!("{:x}", o.lease),
                "ttl": o.ttl,
                "ttl_left": o.expires.saturating_duration_since(now).as_secs(),
                // Not kept alive for longer than its TTL (etcd away): it
                // may be gone, and the subnet another host's.
                "expired": o.lease != 0 && o.expires < now,
            })),
            "etcd": {
                "endpoints": self.o.etcd_endpoints,
                "prefix": self.prefix(),
                "connected": self.connected,
                "revision": self.revision,
                "error": self.etcd_error,
            },
            "vswitchd_error": self.daemon_error,
            "last_sync": self.last_sync.map(unix_seconds),
            "hosts": hosts,
            "ignored": skipped.iter().map(|(k, why)| json!({ "key": k, "why": why })).collect::<Vec<_>>(),
        })
    }

    /// Sends vswitchd the routes (the whole set) with the report.
    async fn push(&mut self) {
        if self.applied.is_none() {
            self.apply_network().await;
            if self.applied.is_none() {
                return;
            }
        }
        let (routes, skipped) = self.routes();
        // The routed hosts' containers, each inside its host's subnet.
        let endpoints: Vec<&RemoteEndpoint> = routes
            .iter()
            .filter_map(|r| match r.subnet {
                IpNet::V4(n) => Some(n),
                IpNet::V6(_) => None,
            })
            .flat_map(|n| self.endpoints.get(&n).into_iter().flatten().filter(move |e| IpNet::V4(n).contains(&e.ip)))
            .collect();
        let params = json!({
            "network": self.o.network,
            "routes": routes,
            "endpoints": endpoints,
            "agent": self.report(&skipped),
        });
        match daemon(&self.socket, "net.routes", params).await {
            Ok(r) => {
                if r["changed"] == json!(true) || self.pushed.is_none() {
                    log!("{} routes to other hosts", routes.len());
                }
                self.daemon_error = None;
                if self.connected {
                    self.last_sync = Some(SystemTime::now());
                }
                self.pushed = Some(routes);
            }
            Err(CallError::Rpc(kind, m)) if kind == "not_found" => {
                // vswitchd lost the network (a restart without its
                // configuration): given again at once.
                self.applied = None;
                self.daemon_failed(format!("vswitchd net.routes: {m}"));
            }
            Err(e) => self.daemon_failed(format!("vswitchd net.routes: {e}")),
        }
    }

    /// A clean stop: the lease revoked, so the other hosts drop this
    /// host's routes at once (vswitchd keeps the network and the routes
    /// it has).
    async fn stop(&mut self) {
        // Keepalives stop first; a client is made if the session had none.
        self.alive = None;
        if self.own.as_ref().is_some_and(|o| o.lease != 0) && self.client.is_none() {
            let _ = tokio::time::timeout(Duration::from_secs(3), self.connect()).await;
        }
        if let (Some(c), Some(own)) = (&mut self.client, &self.own)
            && own.lease != 0
        {
            let revoke = tokio::time::timeout(Duration::from_secs(2), c.lease_revoke(own.lease));
            match revoke.await.map_err(|_| "etcd did not answer".to_string()).and_then(|r| r.map_err(|e| e.to_string()))
            {
                Ok(_) => {
                    log!("revoked lease {:x} of {}", own.lease, own.subnet);
                    if let Some(o) = &mut self.own {
                        o.lease = 0;
                    }
                }
                Err(e) => log!("could not revoke lease {:x} (it expires in its TTL): {e}", own.lease),
            }
        }
        self.connected = false;
        self.etcd_error = Some("stopped".into());
        self.push().await;
    }
}
