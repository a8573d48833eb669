//! The embedding API: a [`Switch`] of named bridges and ports.
//!
//! The switch keeps the control-plane view (names, numbers, settings) and
//! hands changes to the datapath, which applies them between bursts; a call
//! returns once its change is live in the datapath. Every type returned
//! here is `serde::Serialize`, for the daemon's control protocol.

use crate::datapath::perf::PmdStats;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam::queue::ArrayQueue;
use serde::Serialize;

use crate::clock::{Clock, MonotonicClock};
use crate::config::ConfigChange;
use crate::datapath::SharedPort;
pub use crate::datapath::thread::IdlePolicy;
use crate::datapath::thread::{DatapathThread, FailureHook};
use crate::datapath::{Datapath, Wakeup};
use crate::events::{DEFAULT_EVENT_QUEUE, Event, EventBus, Events};
use crate::flow::{DEFAULT_FLOW_LIMIT, FlowSpec, FlowTable, RuleSet, RuleStats, TableStats};
use crate::mac::{MacEntry, MacTable, MacTableConfig, MacTableStats};
use crate::packet::SpareBuffers;
use crate::port::deferred::PortStatus;
use crate::port::memory::{self, DEFAULT_QUEUE_LEN, MemoryPortHandle};
use crate::port::spec::PortSpec;
use crate::port::tunnel::native::PortRef;
use crate::port::upkeep::SlowPath;
use crate::port::vlan_mode::VlanDescription;
use crate::port::{DropReason, Port, PortConfig, PortCounters, PortNo, VlanMode};
use crate::{Error, Outcome, Result};

mod configure;
mod conntrack;
mod flows;
mod groups;
mod settings;
mod tunnels;
pub use configure::OnOpenError;
pub use settings::{MAX_MIRRORS, MirrorInfo};
pub use tunnels::MAX_NEIGH_AGING_S;

/// A parsed rule with its counters, ready for a flow table.
type ParsedRule = (FlowSpec, Arc<RuleStats>);

/// Buffers the switch-wide spare queue holds at most.
const SPARE_BUFFERS: usize = 8192;

/// Highest port number (OpenFlow reserves the numbers above it).
pub const MAX_PORT_NO: PortNo = 0xff00;

/// How long a call waits for the datapath threads by default.
pub const DEFAULT_DATAPATH_TIMEOUT: Duration = Duration::from_secs(3);

/// Builds a [`Switch`].
#[derive(Clone)]
pub struct SwitchBuilder {
    clock: Option<Arc<dyn Clock>>,
    idle: IdlePolicy,
    manual: bool,
    mac: MacTableConfig,
    queue_len: usize,
    flow_limit: usize,
    pmd_threads: usize,
    pin_cpus: Vec<usize>,
    timeout: Duration,
    on_failure: Option<FailureHook>,
    ct_size: usize,
}

impl std::fmt::Debug for SwitchBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwitchBuilder")
            .field("idle", &self.idle)
            .field("manual", &self.manual)
            .field("pmd_threads", &self.pmd_threads)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Default for SwitchBuilder {
    fn default() -> Self {
        SwitchBuilder {
            clock: None,
            idle: IdlePolicy::default(),
            manual: false,
            mac: MacTableConfig::default(),
            queue_len: DEFAULT_QUEUE_LEN,
            flow_limit: DEFAULT_FLOW_LIMIT,
            pmd_threads: 1,
            pin_cpus: Vec::new(),
            timeout: DEFAULT_DATAPATH_TIMEOUT,
            on_failure: None,
            ct_size: crate::conntrack::DEFAULT_LIMIT as usize,
        }
    }
}

impl SwitchBuilder {
    /// Uses `clock` for aging and timeouts instead of the system's
    /// monotonic clock (e.g. a [`crate::ManualClock`] in tests).
    pub fn clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// What the datapath thread does when idle.
    pub fn idle_policy(mut self, idle: IdlePolicy) -> Self {
        self.idle = idle;
        self
    }

    /// Runs no datapath thread: the embedder drives the datapath by
    /// calling [`Switch::poll`] (simulators, deterministic tests, benches).
    pub fn manual(mut self) -> Self {
        self.manual = true;
        self
    }

    /// MAC table settings for new bridges.
    pub fn mac_table(mut self, config: MacTableConfig) -> Self {
        self.mac = config;
        self
    }

    /// Number of poll-mode datapath threads (default 1). Each port's
    /// receive side belongs to one thread (the one with the fewest ports
    /// when it is added); any thread transmits to any port.
    pub fn pmd_threads(mut self, n: usize) -> Self {
        self.pmd_threads = n;
        self
    }

    /// Pins datapath thread `i` to CPU `cpus[i % cpus.len()]`.
    pub fn pin_cpus(mut self, cpus: &[usize]) -> Self {
        self.pin_cpus = cpus.to_vec();
        self
    }

    /// Most rules a bridge's flow table holds (default 1,000,000).
    pub fn flow_limit(mut self, limit: usize) -> Self {
        self.flow_limit = limit;
        self
    }

    /// How long a call waits for the datapath threads to take and carry
    /// out a change or a read (default [`DEFAULT_DATAPATH_TIMEOUT`](crate::DEFAULT_DATAPATH_TIMEOUT)). A
    /// call that waits longer returns [`Error::Timeout`], which names the
    /// thread and says whether the change was made.
    pub fn datapath_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Called (on the failing thread, with its name and what happened)
    /// when a datapath thread fails: a port or the pipeline panicked. The
    /// thread's ports stop forwarding and every later call that needs the
    /// thread returns [`Error::DatapathFailed`]. `vswitchd` logs it and
    /// exits non-zero so that its supervisor restarts it from the saved
    /// configuration.
    pub fn on_datapath_failure(mut self, hook: impl Fn(&str, &str) + Send + Sync + 'static) -> Self {
        self.on_failure = Some(Arc::new(hook));
        self
    }

    /// How many connections conntrack's index is sized for, and its
    /// initial global limit (default 262,144; the limit can be changed
    /// later with [`Switch::set_conntrack_config`]).
    pub fn conntrack_size(mut self, connections: usize) -> Self {
        self.ct_size = connections;
        self
    }

    /// Depth of each queue of a memory port (default 1024).
    pub fn memory_queue_len(mut self, len: usize) -> Self {
        self.queue_len = len;
        self
    }

    /// Creates the switch and, unless [`manual`](Self::manual), starts its
    /// datapath thread.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for bad settings; [`Error::Io`] if the
    /// thread or its event loop cannot be created.
    pub fn build(self) -> Result<Switch> {
        self.mac.validate()?;
        if self.queue_len == 0 || self.queue_len > 1 << 20 {
            return Err(Error::invalid("memory queue length", format!("{} must be 1 to 1048576", self.queue_len)));
        }
        let clock = self.clock.unwrap_or_else(|| Arc::new(MonotonicClock::new()));
        if self.flow_limit == 0 {
            return Err(Error::invalid("flow limit", "must be at least 1"));
        }
        if self.pmd_threads == 0 || self.pmd_threads > 256 {
            return Err(Error::invalid("pmd threads", format!("{} must be 1 to 256", self.pmd_threads)));
        }
        if self.timeout.is_zero() {
            return Err(Error::invalid("datapath timeout", "must be above zero"));
        }
        let events = Arc::new(EventBus::default());
        let hook = self.on_failure;
        let bus = events.clone();
        let on_failure: FailureHook = Arc::new(move |thread: &str, why: &str| {
            bus.publish(|| Event::DatapathFailed { thread: thread.to_string(), why: why.to_string() });
            if let Some(hook) = &hook {
                hook(thread, why);
            }
        });
        if self.ct_size == 0 || self.ct_size > 1 << 24 {
            return Err(Error::invalid("conntrack size", format!("{} must be 1 to 16777216", self.ct_size)));
        }
        let ct = Arc::new(crate::conntrack::Conntrack::new(self.ct_size));
        let spare: SpareBuffers = Arc::new(ArrayQueue::new(SPARE_BUFFERS));
        let runner = if self.manual {
            Runner::Manual {
                dp: Box::new(Mutex::new(Datapath::with_spare(spare.clone(), ct.clone(), events.clone()))),
                wakeup: Arc::new(Wakeup::new(None)),
            }
        } else {
            let threads = (0..self.pmd_threads)
                .map(|i| {
                    let cpu = (!self.pin_cpus.is_empty()).then(|| self.pin_cpus[i % self.pin_cpus.len()]);
                    let dp = Datapath::with_spare(spare.clone(), ct.clone(), events.clone());
                    let name = format!("vswitch-pmd{i}");
                    DatapathThread::spawn(dp, clock.clone(), self.idle, name, cpu, on_failure.clone())
                })
                .collect::<Result<Vec<_>>>()?;
            Runner::Threads(threads)
        };
        let threads = match &runner {
            Runner::Threads(t) => t.len(),
            Runner::Manual { .. } => 1,
        };
        let slow = SlowPath::spawn(clock.clone())?;
        slow.add(Box::new(crate::conntrack::Sweeper(ct.clone())), Box::new(|_| {}));
        Ok(Switch {
            registry: Mutex::new(Registry { bridges: BTreeMap::new(), owned: vec![0; threads] }),
            changes: Mutex::new(()),
            journal: Mutex::new(None),
            next_sweep_ms: Mutex::new(0),
            timeout: self.timeout,
            runner,
            slow,
            ct,
            clock,
            mac_defaults: self.mac,
            queue_len: self.queue_len,
            flow_limit: self.flow_limit,
            spare,
            pmd_base: Mutex::new(Vec::new()),
            events,
            close_panics: Mutex::new(Vec::new()),
            native: Arc::default(),
            closed: false,
        })
    }
}

#[derive(Debug)]
enum Runner {
    Threads(Vec<DatapathThread>),
    Manual { dp: Box<Mutex<Datapath>>, wakeup: Arc<Wakeup> },
}

#[derive(Debug)]
struct Registry {
    bridges: BTreeMap<String, BridgeEntry>,
    /// Ports whose receive side each datapath thread owns.
    owned: Vec<usize>,
}

#[derive(Debug)]
struct BridgeEntry {
    index: usize,
    /// The rules, as the control side keeps them (see [`RuleSet`]).
    rules: Arc<Mutex<RuleSet>>,
    mac: Arc<MacTable>,
    /// Per-table lookup counts, shared with every thread's copy.
    table_stats: Arc<TableStats>,
    /// Its groups, by number (the datapath threads hold the same `Arc`s).
    groups: BTreeMap<u32, Arc<crate::flow::Group>>,
    ports: BTreeMap<String, PortEntry>,
    fail_mode: Option<crate::config::FailMode>,
    mirrors: Vec<settings::Mirror>,
}

#[derive(Debug)]
struct PortEntry {
    /// The datapath thread that receives from the port.
    owner: usize,
    port_no: PortNo,
    slot: usize,
    kind: &'static str,
    vlan: VlanMode,
    counters: Arc<PortCounters>,
    /// How the switch created the port (None: an embedder's port).
    spec: Option<PortSpec>,
    /// Its slow half on the slow-path thread, if it has one.
    upkeep: Option<u64>,
    /// Why the port does not work, if it does not.
    status: PortStatus,
    /// What `mod-port` set.
    flags: crate::datapath::PortFlags,
}

/// A bridge, as listed by [`Switch::bridges`].
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct BridgeInfo {
    /// The bridge's name.
    pub name: String,
    /// Its ports, by port number.
    pub ports: Vec<PortInfo>,
    /// Its MAC table settings.
    pub mac_table: MacTableConfig,
    /// Its fail mode, if set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fail_mode: Option<crate::config::FailMode>,
    /// Its mirrors' names.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<String>,
}

/// A port, as listed by [`Switch::bridges`].
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct PortInfo {
    /// The port's name.
    pub name: String,
    /// Its number on the bridge.
    pub port_no: PortNo,
    /// Its backend (`memory`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// VLAN membership.
    #[serde(flatten)]
    pub vlan: VlanDescription,
    /// Backend options.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    /// What the port is to whoever made it (a container network's port:
    /// `container_id`, `ifname`, `network`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub external_ids: BTreeMap<String, String>,
    /// True for a port that is not saved in the daemon's configuration.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub transient: bool,
    /// Why the port is not working (its interface is missing, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the port reports about itself (a tunnel's `inner_mtu`, ...).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub status: BTreeMap<String, String>,
}

/// Counters of one port.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct PortStats {
    /// The port's name.
    pub name: String,
    /// Its number on the bridge.
    pub port_no: PortNo,
    /// Its backend.
    #[serde(rename = "type")]
    pub kind: String,
    /// Whether its link is up.
    pub link_up: bool,
    /// Packets received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Drops by reason (every reason, zero or not, so the shape is fixed).
    pub drops: BTreeMap<DropReason, u64>,
    /// Administratively down (`mod-port PORT down`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub admin_down: bool,
    /// Left out of NORMAL's floods (`mod-port PORT no-flood`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub no_flood: bool,
    /// Why the port failed, if its code panicked (see [`Switch::health`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

impl PortStats {
    /// Drops of every reason added up.
    pub fn total_drops(&self) -> u64 {
        self.drops.values().sum()
    }
}

/// Counters of one bridge.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct BridgeStats {
    /// The bridge's name.
    pub name: String,
    /// Its ports' counters, by port number.
    pub ports: Vec<PortStats>,
    /// Its MAC table's size and counters.
    pub mac_table: MacTableStats,
}

/// Counters of the whole switch.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct SwitchStats {
    /// Every bridge, by name.
    pub bridges: Vec<BridgeStats>,
}

impl SwitchStats {
    /// The counters of the port named `name`, on any bridge.
    pub fn port(&self, name: &str) -> Option<&PortStats> {
        self.bridges.iter().flat_map(|b| &b.ports).find(|p| p.name == name)
    }
}

/// A virtual switch: named bridges of ports, forwarding with MAC learning.
///
/// See the [crate docs](crate) for an example.
#[derive(Debug)]
pub struct Switch {
    /// The control-plane view: names, numbers, specs. Held only briefly,
    /// never across a device open or a wait for the datapath.
    registry: Mutex<Registry>,
    /// Serialises changes, so that one change sees the registry as the
    /// last one left it while readers go on reading.
    changes: Mutex<()>,
    /// Changes recorded for a daemon's journal (None: not recording).
    journal: Mutex<Option<Vec<ConfigChange>>>,
    /// When expired rules are next looked for.
    next_sweep_ms: Mutex<u64>,
    timeout: Duration,
    runner: Runner,
    /// Runs the ports' slow halves (see [`crate::port::upkeep`]).
    slow: SlowPath,
    clock: Arc<dyn Clock>,
    mac_defaults: MacTableConfig,
    queue_len: usize,
    flow_limit: usize,
    spare: SpareBuffers,
    /// The connection table the datapath threads share.
    ct: Arc<crate::conntrack::Conntrack>,
    /// What `pmd_stats_clear` last read, per thread: later reads are
    /// counted from there.
    pmd_base: Mutex<Vec<PmdStats>>,
    /// Where events are published (see [`Switch::subscribe`]).
    events: Arc<EventBus>,
    /// Ports whose closing panicked, for [`Switch::shutdown`] to report.
    close_panics: Mutex<Vec<String>>,
    /// Native tunnelling: routes, neighbours, uplinks.
    pub(crate) native: Arc<crate::port::tunnel::native::Native>,
    /// Torn down already (by `shutdown`).
    closed: bool,
}

/// Dropping a switch tears it down as [`Switch::shutdown`] does: every
/// port is removed (and told as `PortRemoved`) and closed on this thread,
/// its own panics caught, before the threads stop; what went wrong is
/// not reported.
impl Drop for Switch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Unwinding already (a manual datapath may be half way through
            // a change): the threads stop as the fields drop, nothing more.
            return;
        }
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.close()));
    }
}

fn check_name(what: &'static str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(what, format!("'{name}' must be 1 to 64 characters of letters, digits and -_.:@")))
    }
}

impl Switch {
    /// A builder with default settings.
    pub fn builder() -> SwitchBuilder {
        SwitchBuilder::default()
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serialises a change against every other change.
    fn change(&self) -> MutexGuard<'_, ()> {
        self.changes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on every datapath thread between bursts (all threads at
    /// once) and returns once all have run it, with each one's result.
    ///
    /// Waits at most the switch's deadline. A thread that has not taken
    /// `f` by then has it withdrawn if no thread has run it yet
    /// ([`Outcome::NotApplied`]); otherwise it stays queued there, to run
    /// in order when the thread resumes ([`Outcome::WillApply`]), so every
    /// thread ends up with the same state.
    fn broadcast<R: Send + 'static>(
        &self,
        f: impl Fn(&mut Datapath, usize) -> R + Send + Sync + 'static,
    ) -> Result<Vec<R>> {
        self.broadcast_within(self.timeout, f)
    }

    /// As [`broadcast`](Self::broadcast), waiting at most `timeout`.
    fn broadcast_within<R: Send + 'static>(
        &self,
        timeout: Duration,
        f: impl Fn(&mut Datapath, usize) -> R + Send + Sync + 'static,
    ) -> Result<Vec<R>> {
        let threads = match &self.runner {
            Runner::Threads(threads) => threads,
            Runner::Manual { dp, .. } => return Ok(vec![f(&mut dp.lock().unwrap_or_else(|e| e.into_inner()), 0)]),
        };
        // A failed thread takes nothing: refuse before any thread has the
        // change, rather than apply it on some and report a failure.
        if let Some(dead) = threads.iter().find(|t| t.failure().is_some()) {
            return Err(dead.gone());
        }
        let f = Arc::new(f);
        let submit = |i: usize| {
            let f = f.clone();
            threads[i].submit(move |dp| f(dp, i))
        };
        let pending = (0..threads.len()).map(submit).collect::<Result<Vec<_>>>()?;
        let deadline = Instant::now() + timeout;
        let mut results = Vec::with_capacity(pending.len());
        for (i, p) in pending.iter().enumerate() {
            results.push(p.wait(deadline).map_err(|()| threads[i].gone())?);
        }
        let Some(late) = results.iter().position(Option::is_none) else {
            return Ok(results.into_iter().flatten().collect());
        };
        let mut outcome = Outcome::WillApply;
        if results.iter().all(Option::is_none) {
            let withdrawn: Vec<bool> = pending.iter().map(|p| p.withdraw()).collect();
            if withdrawn.iter().all(|&w| w) {
                outcome = Outcome::NotApplied;
            } else {
                // A thread took it just before the deadline: the others
                // must run it too.
                for (i, _) in withdrawn.iter().enumerate().filter(|(_, w)| **w) {
                    submit(i)?;
                }
            }
        }
        Err(Error::Timeout { thread: threads[late].name().to_string(), waited: timeout, outcome })
    }

    /// As [`apply`](Self::apply), for a change that depends on the thread.
    fn apply_each<R: Send + 'static>(
        &self,
        f: impl Fn(&mut Datapath, usize) -> R + Send + Sync + 'static,
    ) -> Result<R> {
        self.broadcast(f)?.into_iter().next().ok_or(Error::Unavailable)
    }

    /// As [`broadcast`](Self::broadcast), for changes every thread applies
    /// alike: the first thread's result.
    fn apply<R: Send + 'static>(&self, f: impl Fn(&mut Datapath) -> R + Send + Sync + 'static) -> Result<R> {
        self.broadcast(move |dp, _| f(dp))?.into_iter().next().ok_or(Error::Unavailable)
    }

    /// Runs `f` on the first datapath thread only (reads of state every
    /// thread shares: counters, the flow table's rules), waiting at most
    /// the switch's deadline.
    fn on_first<R: Send + 'static>(&self, f: impl FnOnce(&mut Datapath) -> R + Send + 'static) -> Result<R> {
        match &self.runner {
            Runner::Threads(threads) => {
                let t = &threads[0];
                let pending = t.submit(f)?;
                match pending.wait(Instant::now() + self.timeout).map_err(|()| t.gone())? {
                    Some(r) => Ok(r),
                    None => {
                        let outcome = if pending.withdraw() { Outcome::NotApplied } else { Outcome::WillApply };
                        Err(Error::Timeout { thread: t.name().to_string(), waited: self.timeout, outcome })
                    }
                }
            }
            Runner::Manual { dp, .. } => Ok(f(&mut dp.lock().unwrap_or_else(|e| e.into_inner()))),
        }
    }

    /// Queues `f` on datapath thread `thread` and returns at once (the
    /// control protocol's test hooks).
    pub(crate) fn run_on_thread(&self, thread: usize, f: impl FnOnce(&mut Datapath) + Send + 'static) -> Result<()> {
        match &self.runner {
            Runner::Threads(t) => {
                let t =
                    t.get(thread).ok_or_else(|| Error::invalid("thread", format!("no datapath thread {thread}")))?;
                t.submit(f).map(drop)
            }
            Runner::Manual { .. } => Err(Error::invalid("thread", "a manual switch runs no datapath thread")),
        }
    }

    /// Every datapath thread: its name, how many ports it receives from,
    /// and whether it runs or has failed (and why).
    pub fn datapath_threads(&self) -> Vec<DatapathThreadInfo> {
        let owned = self.registry().owned.clone();
        match &self.runner {
            Runner::Threads(threads) => threads
                .iter()
                .zip(owned)
                .map(|(t, ports)| DatapathThreadInfo { name: t.name().to_string(), ports, failure: t.failure() })
                .collect(),
            Runner::Manual { .. } => {
                vec![DatapathThreadInfo { name: "manual".into(), ports: owned[0], failure: None }]
            }
        }
    }

    /// Each datapath thread's cycles, iterations and bursts since the
    /// switch started or since [`Switch::pmd_stats_clear`]
    /// (`vswitch-ctl pmd-stats`). A switch its embedder polls
    /// ([`SwitchBuilder::manual`]) counts bursts but not cycles.
    pub fn pmd_stats(&self) -> Vec<PmdStats> {
        let now = self.pmd_totals();
        let base = self.pmd_base.lock().unwrap_or_else(|e| e.into_inner());
        now.iter().enumerate().map(|(i, s)| base.get(i).map_or_else(|| s.clone(), |b| s.since(b))).collect()
    }

    /// Starts [`Switch::pmd_stats`] counting from zero again.
    pub fn pmd_stats_clear(&self) {
        let now = self.pmd_totals();
        *self.pmd_base.lock().unwrap_or_else(|e| e.into_inner()) = now;
    }

    fn pmd_totals(&self) -> Vec<PmdStats> {
        // Measured once (20 ms), before any lock is taken.
        crate::sys::cycles_per_second();
        match &self.runner {
            Runner::Threads(threads) => threads.iter().map(|t| t.perf().snapshot(t.name())).collect(),
            Runner::Manual { dp, .. } => {
                vec![dp.lock().unwrap_or_else(|e| e.into_inner()).perf().snapshot("manual")]
            }
        }
    }

    fn threads(&self) -> usize {
        match &self.runner {
            Runner::Threads(t) => t.len(),
            Runner::Manual { .. } => 1,
        }
    }

    fn thread_wakeup(&self, thread: usize) -> Arc<Wakeup> {
        match &self.runner {
            Runner::Threads(t) => t[thread].wakeup(),
            Runner::Manual { wakeup, .. } => wakeup.clone(),
        }
    }

    /// What a port of the embedder's own must call ([`Wakeup::notify`])
    /// after queueing packets for the switch, so the datapath thread that
    /// receives from it wakes at once rather than at its next housekeeping
    /// tick.
    ///
    /// # Errors
    /// [`Error::PortNotFound`].
    pub fn port_wakeup(&self, name: &str) -> Result<Arc<Wakeup>> {
        let reg = self.registry();
        let owner = reg
            .bridges
            .values()
            .find_map(|b| b.ports.get(name))
            .map(|p| p.owner)
            .ok_or_else(|| Error::PortNotFound(name.to_string()))?;
        Ok(self.thread_wakeup(owner))
    }

    /// The switch's current time in milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// For a switch built with [`SwitchBuilder::manual`]: one pass of the
    /// datapath over every port. Returns the packets received.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the switch runs its own thread.
    pub fn poll(&self) -> Result<usize> {
        match &self.runner {
            Runner::Manual { dp, .. } => Ok(dp.lock().unwrap_or_else(|e| e.into_inner()).poll(self.clock.now_ms())),
            Runner::Threads(_) => Err(Error::invalid("poll", "the switch runs its own datapath threads")),
        }
    }

    /// For a manual switch: polls until a pass receives nothing.
    ///
    /// # Errors
    /// As [`Switch::poll`].
    pub fn run_until_idle(&self) -> Result<usize> {
        let mut total = 0;
        loop {
            let n = self.poll()?;
            if n == 0 {
                return Ok(total);
            }
            total += n;
        }
    }

    /// Adds a bridge with the builder's MAC table settings.
    ///
    /// # Errors
    /// [`Error::BridgeExists`], or [`Error::InvalidArgument`] for a bad name.
    pub fn add_bridge(&self, name: &str) -> Result<()> {
        self.add_bridge_with(name, self.mac_defaults)
    }

    /// Adds a bridge with its own MAC table settings.
    ///
    /// # Errors
    /// As [`Switch::add_bridge`], and [`Error::InvalidArgument`] for bad settings.
    pub fn add_bridge_with(&self, name: &str, mac: MacTableConfig) -> Result<()> {
        check_name("bridge name", name)?;
        let _change = self.change();
        let index = {
            let reg = self.registry();
            if reg.bridges.contains_key(name) {
                return Err(Error::BridgeExists(name.to_string()));
            }
            (0..).find(|i| !reg.bridges.values().any(|b| b.index == *i)).expect("an unused index")
        };
        let table = Arc::new(MacTable::new(mac)?);
        table.publish_moves(self.events.clone(), name);
        let (t, limit) = (table.clone(), self.flow_limit);
        // Every thread's copy of the default rule counts into the same stats.
        let stats = RuleStats::new(self.now_ms(), self.threads());
        let table_stats = TableStats::new(self.threads());
        let mut rules = RuleSet::new(limit);
        rules.add(vec![(crate::flow::default_rule(), stats.clone())]);
        let ts = table_stats.clone();
        let r = self.apply_each(move |dp, i| {
            dp.add_bridge(index, t.clone(), FlowTable::for_thread(limit, stats.clone(), Some(ts.clone()), i))
        });
        if took_effect(&r) {
            self.record(|| ConfigChange::NewBridge { name: name.to_string(), mac_table: mac });
            let rules = Arc::new(Mutex::new(rules));
            let entry = BridgeEntry {
                index,
                rules,
                mac: table,
                table_stats,
                groups: BTreeMap::new(),
                ports: BTreeMap::new(),
                fail_mode: None,
                mirrors: Vec::new(),
            };
            self.registry().bridges.insert(name.to_string(), entry);
        }
        r
    }

    /// Removes a bridge and every port on it.
    ///
    /// # Errors
    /// [`Error::BridgeNotFound`].
    pub fn del_bridge(&self, name: &str) -> Result<()> {
        let _change = self.change();
        let (index, names): (usize, Vec<String>) = {
            let reg = self.registry();
            let b = reg.bridges.get(name).ok_or_else(|| Error::BridgeNotFound(name.to_string()))?;
            (b.index, b.ports.keys().cloned().collect())
        };
        // Native tunnels stop sending through its ports first.
        let leaving: Vec<_> = names.iter().map(|p| (p, self.native.port_leaving(p))).collect();
        // The ports come back to be closed here, not on a datapath thread.
        let r = self.broadcast(move |dp, _| dp.del_bridge(index)).map(|ports| {
            close_ports(ports.into_iter().flatten(), &self.close_panics);
        });
        if !took_effect(&r) {
            leaving.into_iter().for_each(|(p, r)| self.native.port_stayed(p, r));
        }
        if took_effect(&r) {
            self.record(|| ConfigChange::DelBridge { name: name.to_string() });
            let upkeeps: Vec<u64> = {
                let mut reg = self.registry();
                let ports = reg.bridges.remove(name).map(|b| b.ports).unwrap_or_default();
                for (port, p) in &ports {
                    reg.owned[p.owner] -= 1;
                    self.native.port_removed(port);
                    self.events.publish(|| Event::PortRemoved {
                        bridge: name.to_string(),
                        port: port.clone(),
                        port_no: p.port_no,
                    });
                }
                ports.values().filter_map(|p| p.upkeep).collect()
            };
            for id in upkeeps {
                self.slow.remove(id);
            }
        }
        r
    }

    /// Adds an in-process port to `bridge` and returns the runtime's end.
    ///
    /// # Errors
    /// [`Error::BridgeNotFound`], [`Error::PortExists`], [`Error::Full`]
    /// when the bridge has no free port number, or a bad name.
    pub fn add_memory_port(&self, bridge: &str, name: &str, config: PortConfig) -> Result<MemoryPortHandle> {
        let (queue_len, spare) = (self.queue_len, self.spare.clone());
        let mut handle = None;
        self.attach(bridge, name, config, |port_no, wakeup| {
            let (port, h) = memory::pair(name, port_no, queue_len, wakeup, spare);
            handle = Some(h);
            Ok(Box::new(port))
        })?;
        Ok(handle.expect("attach created the port"))
    }

    /// Attaches kernel interface `ifname` to `bridge` through AF_PACKET
    /// (the port takes the interface's name); returns its port number.
    ///
    /// ```no_run
    /// # use vswitch_core::{PortConfig, Switch};
    /// let sw = Switch::builder().build()?;
    /// sw.add_bridge("br0")?;
    /// sw.add_afpacket_port("br0", "veth-a", PortConfig::default())?;
    /// # Ok::<(), vswitch_core::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InterfaceNotFound`] if there is no such interface;
    /// [`Error::InvalidArgument`] if it is a kernel bridge's port, or
    /// another switch holds it; [`Error::Io`] if the socket cannot be set
    /// up (EPERM without CAP_NET_RAW); as [`Switch::add_port`].
    pub fn add_afpacket_port(&self, bridge: &str, ifname: &str, config: PortConfig) -> Result<PortNo> {
        self.attach(bridge, ifname, config, |_, _| {
            let p = crate::port::afpacket::AfPacketPort::open(ifname, Default::default())?;
            Ok(Box::new(p))
        })
    }

    /// Adds a TAP device the caller opened (a runtime's, for a VM or a
    /// container) to `bridge` as port `name`: see
    /// the descriptor is `/dev/net/tun` attached with `IFF_TAP | IFF_NO_PI`,
    /// with or without `IFF_VNET_HDR` (see [`open_tap`](crate::port::open_tap)),
    /// not `IFF_MULTI_QUEUE`. With `IFF_VNET_HDR` TCP super-frames and
    /// partial checksums pass through whole both ways (TCP offloads are
    /// turned on for the device); without it the device carries finished
    /// frames and the datapath segments GSO frames for it. The device may
    /// live in another network namespace, and be moved or renamed later.
    ///
    /// The port owns the descriptor from now on, exclusively: it is made
    /// non-blocking (a file status flag, shared with any duplicate of it),
    /// and a duplicate the runtime kept would read frames meant for the
    /// switch. Removing the port closes it; the device goes with its last
    /// descriptor unless it was made persistent.
    ///
    /// ```no_run
    /// # use vswitch_core::{PortConfig, Switch};
    /// let sw = Switch::builder().build()?;
    /// sw.add_bridge("br0")?;
    /// // What a VMM does before it hands the TAP to its guest's switch.
    /// let fd = vswitch_core::port::open_tap("vm1-tap", true)?;
    /// sw.add_tap_fd_port("br0", "vm1", fd, PortConfig::default())?;
    /// # Ok::<(), vswitch_core::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `fd` is not a TAP device opened with
    /// `IFF_NO_PI`; as [`Switch::add_port`]. On an error the descriptor is
    /// closed.
    pub fn add_tap_fd_port(
        &self,
        bridge: &str,
        name: &str,
        fd: std::os::fd::OwnedFd,
        config: PortConfig,
    ) -> Result<PortNo> {
        let port = crate::port::internal::InternalPort::adopt(fd)?;
        self.add_port(bridge, name, Box::new(port), config)
    }

    /// Adds a vhost-user-net port to `bridge`: a VM's virtio-net device
    /// served over the vhost-user socket `config.socket`, the switch
    /// listening on it ([`VhostUserConfig::server`](crate::port::vhost_user::VhostUserConfig::server)) or connecting to the
    /// VMM's ([`VhostUserConfig::client`](crate::port::vhost_user::VhostUserConfig::client)); see
    /// [`port::vhost_user`](crate::port::vhost_user). The port's link is up
    /// while a frontend is connected; one that disconnects is waited for
    /// (or reconnected to). Removing the port ends the connection.
    ///
    /// ```no_run
    /// # use vswitch_core::{PortConfig, Switch};
    /// use vswitch_core::port::vhost_user::VhostUserConfig;
    /// let sw = Switch::builder().build()?;
    /// sw.add_bridge("br0")?;
    /// // QEMU: -chardev socket,id=c0,path=/run/vm1.sock,reconnect=1
    /// //       -netdev vhost-user,id=n0,chardev=c0 -device virtio-net-pci,netdev=n0
    /// //       -object memory-backend-memfd,id=m0,size=1G,share=on -numa node,memdev=m0
    /// sw.add_vhost_user_port("br0", "vm1", &VhostUserConfig::server("/run/vm1.sock"), PortConfig::default())?;
    /// # Ok::<(), vswitch_core::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad socket path or MTU;
    /// [`Error::NotFound`] if a server socket's directory does not exist;
    /// [`Error::Io`] if the socket cannot be made; as [`Switch::add_port`].
    pub fn add_vhost_user_port(
        &self,
        bridge: &str,
        name: &str,
        config: &crate::port::vhost_user::VhostUserConfig,
        port_config: PortConfig,
    ) -> Result<PortNo> {
        crate::port::vhost_user::check_socket_path(&config.socket)?;
        let (queue_len, spare) = (self.queue_len, self.spare.clone());
        self.attach(bridge, name, port_config, |port_no, wakeup| {
            let (queues, handle) = memory::pair(name, port_no, queue_len, wakeup, spare);
            let port = crate::port::vhost_user::VhostUserPort::start(name, queues, handle, config)?;
            Ok(Box::new(port))
        })
    }

    /// Attaches kernel interface `ifname` to `bridge` through AF_XDP (native
    /// XDP where the driver supports it, generic otherwise); returns its
    /// port number.
    ///
    /// # Errors
    /// [`Error::InterfaceNotFound`] if there is no such interface;
    /// [`Error::InvalidArgument`] if it is a kernel bridge's port, or
    /// another switch holds it; [`Error::Io`] if the program, the sockets
    /// or the attachment fail (with the kernel's reason, e.g. the
    /// verifier's log); as [`Switch::add_port`].
    pub fn add_afxdp_port(&self, bridge: &str, ifname: &str, config: PortConfig) -> Result<PortNo> {
        self.attach(bridge, ifname, config, |_, _| {
            let p = crate::port::afxdp::AfXdpPort::open(ifname, Default::default())?;
            Ok(Box::new(p))
        })
    }

    /// Adds a port of any backend (an embedder's own [`Port`]
    /// implementation included) to `bridge`; returns its port number.
    ///
    /// # Errors
    /// As [`Switch::add_memory_port`].
    pub fn add_port(&self, bridge: &str, name: &str, port: Box<dyn Port>, config: PortConfig) -> Result<PortNo> {
        self.attach(bridge, name, config, |_, _| Ok(port))
    }

    fn attach(
        &self,
        bridge: &str,
        name: &str,
        config: PortConfig,
        make: impl FnOnce(PortNo, Arc<Wakeup>) -> Result<Box<dyn Port>>,
    ) -> Result<PortNo> {
        self.attach_as(bridge, name, config, None, PortStatus::default(), make)
    }

    /// As [`attach`](Self::attach), with the port number asked for and
    /// the spec and error handle kept for listings and the configuration.
    fn attach_as(
        &self,
        bridge: &str,
        name: &str,
        config: PortConfig,
        spec: Option<PortSpec>,
        status: PortStatus,
        make: impl FnOnce(PortNo, Arc<Wakeup>) -> Result<Box<dyn Port>>,
    ) -> Result<PortNo> {
        check_name("port name", name)?;
        let _change = self.change();
        let (index, port_no, owner, slot) = {
            let reg = self.registry();
            if let Some((b, _)) = reg.bridges.iter().find(|(_, b)| b.ports.contains_key(name)) {
                return Err(Error::PortExists { name: name.to_string(), bridge: b.clone() });
            }
            let br = reg.bridges.get(bridge).ok_or_else(|| Error::BridgeNotFound(bridge.to_string()))?;
            let taken = |n: PortNo| br.ports.values().any(|p| p.port_no == n);
            let port_no = match spec.as_ref().and_then(|s| s.port_no) {
                Some(n) if n == 0 || n > MAX_PORT_NO => {
                    return Err(Error::invalid("port number", format!("{n} must be 1 to {MAX_PORT_NO}")));
                }
                Some(n) if taken(n) => {
                    return Err(Error::invalid("port number", format!("{n} is taken on bridge '{bridge}'")));
                }
                Some(n) => n,
                None => (1..=MAX_PORT_NO).find(|&n| !taken(n)).ok_or(Error::Full("bridge port numbers"))?,
            };
            // The thread with the fewest ports receives from this one.
            let owner = (0..reg.owned.len()).min_by_key(|&i| reg.owned[i]).unwrap_or(0);
            let used: Vec<usize> = reg.bridges.values().flat_map(|b| b.ports.values().map(|p| p.slot)).collect();
            let slot = (0..).find(|s| !used.contains(s)).expect("an unused slot");
            (br.index, port_no, owner, slot)
        };
        // The device is opened with no lock held but the change lock:
        // listings and counters go on being served meanwhile.
        let mut port = make(port_no, self.thread_wakeup(owner))?;
        let kind = port.kind();
        let upkeep = port.upkeep();
        let counters = Arc::new(PortCounters::for_port(bridge, name, port_no));
        counters.link_up.store(port.link_up(), Ordering::Relaxed);
        let shared: SharedPort = Arc::new(Mutex::new(port));
        let weak = Arc::downgrade(&shared);
        let (vlan, c, events) = (config.vlan.clone(), counters.clone(), self.events.clone());
        let r = self.apply_each(move |dp, i| {
            dp.add_port(slot, index, port_no, shared.clone(), i == owner, vlan.clone(), c.clone());
            if i == owner {
                // Told by the thread that polls the port, before it does:
                // nothing about the port comes before this.
                events.publish(|| Event::PortAdded {
                    bridge: c.bridge.to_string(),
                    port: c.name.to_string(),
                    port_no,
                    kind: kind.to_string(),
                });
            }
        });
        if took_effect(&r) {
            let spec = spec.map(|s| PortSpec { port_no: Some(port_no), ..s });
            let mut reg = self.registry();
            let br = reg.bridges.get_mut(bridge).expect("bridges change only under the change lock");
            let upkeep = upkeep.map(|u| self.slow.add(u, upkeep_failed(counters.clone())));
            let uplink_ref = PortRef { port: weak, counters: counters.clone(), kind, bridge: bridge.to_string() };
            br.ports.insert(
                name.to_string(),
                PortEntry {
                    port_no,
                    slot,
                    kind,
                    vlan: config.vlan,
                    counters,
                    owner,
                    spec,
                    status,
                    upkeep,
                    flags: Default::default(),
                },
            );
            reg.owned[owner] += 1;
            drop(reg);
            self.native.port_added(name, uplink_ref);
            self.refresh_mirrors(bridge);
        }
        r.map(|()| port_no)
    }

    /// Removes the port named `name` from whichever bridge has it.
    ///
    /// # Errors
    /// [`Error::PortNotFound`].
    pub fn del_port(&self, name: &str) -> Result<()> {
        let _change = self.change();
        let slot = self.port_entry(name, |p| p.slot)?;
        // Native tunnels stop sending through it first.
        let leaving = self.native.port_leaving(name);
        // Each thread hands its reference back: the port is closed here,
        // when the last one drops, not on a datapath thread.
        let r = self
            .broadcast(move |dp, _| dp.del_port(slot))
            .map(|ports| close_ports(ports.into_iter().flatten(), &self.close_panics));
        if !took_effect(&r) {
            self.native.port_stayed(name, leaving);
        }
        if took_effect(&r) {
            let (upkeep, bridge) = {
                let mut reg = self.registry();
                let removed = reg.bridges.iter_mut().find_map(|(n, b)| Some((b.ports.remove(name)?, n.clone())));
                match removed {
                    Some((p, bridge)) => {
                        reg.owned[p.owner] -= 1;
                        self.native.port_removed(name);
                        // Every thread has let go of it: nothing more is
                        // told about the port after this.
                        self.events.publish(|| Event::PortRemoved {
                            bridge: bridge.clone(),
                            port: name.to_string(),
                            port_no: p.port_no,
                        });
                        (p.upkeep, Some(bridge))
                    }
                    None => (None, None),
                }
            };
            if let Some(b) = bridge {
                self.refresh_mirrors(&b);
            }
            // Waits for the slow half to be gone, with no lock but the
            // change lock held.
            if let Some(id) = upkeep {
                self.slow.remove(id);
            }
        }
        r
    }

    /// `f` of the registry entry of port `name`.
    fn port_entry<T>(&self, name: &str, f: impl FnOnce(&PortEntry) -> T) -> Result<T> {
        let reg = self.registry();
        reg.bridges.values().find_map(|b| b.ports.get(name)).map(f).ok_or_else(|| Error::PortNotFound(name.to_string()))
    }

    /// Changes a port's VLAN membership. The MAC entries learned on it are
    /// forgotten.
    ///
    /// # Errors
    /// [`Error::PortNotFound`].
    pub fn set_port_vlan(&self, name: &str, vlan: VlanMode) -> Result<()> {
        let _change = self.change();
        let slot = self.port_entry(name, |p| p.slot)?;
        let v = vlan.clone();
        let r = self.apply(move |dp| dp.set_port_vlan(slot, v.clone()));
        if took_effect(&r) {
            let mut reg = self.registry();
            if let Some(entry) = reg.bridges.values_mut().find_map(|b| b.ports.get_mut(name)) {
                if let Some(spec) = entry.spec.as_mut() {
                    spec.set_vlan(&vlan);
                }
                entry.vlan = vlan;
            }
        }
        r
    }

    /// Port `name`'s VLAN membership.
    ///
    /// # Errors
    /// [`Error::PortNotFound`].
    pub fn port_vlan(&self, name: &str) -> Result<VlanMode> {
        self.port_entry(name, |p| p.vlan.clone())
    }

    /// Adds a static MAC table entry on `bridge`: `mac` in `vlan` is
    /// behind port `port` (a port of the bridge that carries the VLAN).
    /// Static entries never age or move; they are part of the bridge's
    /// configuration ([`BridgeConfig::static_macs`](crate::config::BridgeConfig::static_macs)).
    ///
    /// # Errors
    /// [`Error::BridgeNotFound`], [`Error::PortNotFound`] for a port not on
    /// the bridge, [`Error::InvalidArgument`] for a port that does not carry
    /// the VLAN or a group address, [`Error::Full`] for a table full of
    /// static entries.
    pub fn add_static_mac(&self, bridge: &str, port: &str, vlan: u16, mac: crate::MacAddr) -> Result<()> {
        let table = self.mac_table(bridge)?;
        let (_, ports) = self.bridge_ports(bridge)?;
        let port_no =
            ports.get(port).copied().ok_or_else(|| Error::PortNotFound(format!("{port} on bridge '{bridge}'")))?;
        if !self.port_vlan(port)?.carries(vlan) {
            return Err(Error::invalid(
                "static mac",
                format!("port '{port}' does not carry VLAN {vlan} (see its tag, trunks and vlan_mode)"),
            ));
        }
        table.add_static(vlan, mac, port_no)
    }

    /// The MAC learning table of `bridge` (shared with the datapath): its
    /// entries, counters and settings; static entries are added with
    /// [`Switch::add_static_mac`].
    ///
    /// # Errors
    /// [`Error::BridgeNotFound`].
    pub fn mac_table(&self, bridge: &str) -> Result<Arc<MacTable>> {
        let reg = self.registry();
        Ok(reg.bridges.get(bridge).ok_or_else(|| Error::BridgeNotFound(bridge.to_string()))?.mac.clone())
    }

    /// The rows of `bridge`'s MAC table, with ages as of now.
    ///
    /// # Errors
    /// [`Error::BridgeNotFound`].
    pub fn fdb(&self, bridge: &str) -> Result<Vec<MacEntry>> {
        Ok(self.mac_table(bridge)?.entries(self.now_ms()))
    }

    /// Every bridge and its ports.
    pub fn bridges(&self) -> Vec<BridgeInfo> {
        let reg = self.registry();
        reg.bridges
            .iter()
            .map(|(name, b)| {
                let mut ports: Vec<PortInfo> = b
                    .ports
                    .iter()
                    .map(|(n, p)| PortInfo {
                        name: n.clone(),
                        port_no: p.port_no,
                        kind: p.kind.to_string(),
                        vlan: p.vlan.describe(),
                        options: p.spec.as_ref().map(|s| s.options.clone()).unwrap_or_default(),
                        external_ids: p.spec.as_ref().map(|s| s.external_ids.clone()).unwrap_or_default(),
                        transient: p.spec.as_ref().is_none_or(|s| s.transient),
                        error: p.status.error(),
                        status: p.status.info(),
                    })
                    .collect();
                ports.sort_by_key(|p| p.port_no);
                BridgeInfo {
                    name: name.clone(),
                    ports,
                    mac_table: b.mac.config(),
                    fail_mode: b.fail_mode,
                    mirrors: b.mirrors.iter().map(|m| m.spec.name.clone()).collect(),
                }
            })
            .collect()
    }

    /// The connection table (`ct` actions): dump, flush, statistics and
    /// settings.
    pub fn conntrack(&self) -> &crate::conntrack::Conntrack {
        &self.ct
    }

    /// Subscribes to the switch's [`Event`]s: ports added, removed and
    /// failed, link changes, MAC moves and datapath failures, from now on,
    /// in order (see [`events`](crate::events)). The queue holds
    /// [`DEFAULT_EVENT_QUEUE`] events; more are dropped and counted in
    /// [`Events::missed`].
    ///
    /// # Errors
    /// [`Error::Io`] if the subscription's eventfd cannot be made.
    pub fn subscribe(&self) -> Result<Events> {
        self.events.subscribe(DEFAULT_EVENT_QUEUE)
    }

    /// As [`subscribe`](Self::subscribe), with a queue of `capacity` events.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a capacity of 0 or above 2^20; as
    /// [`subscribe`](Self::subscribe).
    pub fn subscribe_with_capacity(&self, capacity: usize) -> Result<Events> {
        self.events.subscribe(capacity)
    }

    /// The state of every datapath thread and every port: what an
    /// embedder's health check reads. A port whose code panicked is
    /// [`PortState::Failed`] with the panic's message; it forwards nothing
    /// (what is sent to it is counted as
    /// [`DropReason::PortFailed`]) until it is removed, and can then be
    /// added again. The other ports are not affected.
    ///
    /// ```
    /// # use vswitch_core::{PortConfig, Switch};
    /// let sw = Switch::builder().build()?;
    /// sw.add_bridge("br0")?;
    /// let _nic = sw.add_memory_port("br0", "vm1", PortConfig::default())?;
    /// let health = sw.health();
    /// assert!(health.is_ok());
    /// assert_eq!(health.ports[0].state, vswitch_core::PortState::Up);
    /// # Ok::<(), vswitch_core::Error>(())
    /// ```
    pub fn health(&self) -> Health {
        let threads = self.datapath_threads();
        let reg = self.registry();
        let mut ports: Vec<PortHealth> = reg
            .bridges
            .iter()
            .flat_map(|(bridge, b)| b.ports.iter().map(move |(name, p)| (bridge, name, p)))
            .map(|(bridge, name, p)| {
                let thread = threads.get(p.owner);
                let link_up = p.counters.link_up.load(Ordering::Relaxed);
                let (state, why) = if let Some(why) = p.counters.failure() {
                    (PortState::Failed, Some(why.to_string()))
                } else if let Some(why) = thread.and_then(|t| t.failure.clone()) {
                    (PortState::ThreadFailed, Some(why))
                } else if let Some(why) = p.status.error() {
                    (PortState::Error, Some(why))
                } else if p.flags.down {
                    (PortState::AdminDown, None)
                } else if !link_up {
                    (PortState::LinkDown, None)
                } else {
                    (PortState::Up, None)
                };
                PortHealth {
                    bridge: bridge.clone(),
                    name: name.clone(),
                    port_no: p.port_no,
                    kind: p.kind.to_string(),
                    thread: thread.map(|t| t.name.clone()).unwrap_or_default(),
                    link_up,
                    state,
                    why,
                }
            })
            .collect();
        ports.sort_by(|a, b| (&a.bridge, a.port_no).cmp(&(&b.bridge, b.port_no)));
        Health { threads, ports }
    }

    /// Tears the switch down and says what did not go cleanly: every
    /// bridge and port is removed (ports closed, XDP programs detached,
    /// AF_PACKET sockets and TAP devices released), then the datapath
    /// threads and the slow-path thread are stopped and joined. Dropping
    /// the switch does the same but cannot report.
    ///
    /// # Errors
    /// [`Error::ShutdownIncomplete`] listing each problem: a datapath
    /// thread that had failed or did not stop within the switch's
    /// datapath timeout (it is left behind), a bridge that could not be
    /// removed, a port whose closing panicked. Everything else is torn
    /// down all the same.
    pub fn shutdown(mut self) -> Result<()> {
        let problems = self.close();
        if problems.is_empty() { Ok(()) } else { Err(Error::ShutdownIncomplete { problems }) }
    }

    /// What [`shutdown`](Self::shutdown) and dropping the switch do, once:
    /// returns the problems. Nothing it removes is recorded for a
    /// daemon's journal (the configuration outlives the switch).
    fn close(&mut self) -> Vec<String> {
        if self.closed {
            return Vec::new();
        }
        self.closed = true;
        *self.journal.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let mut problems = Vec::new();
        for t in self.datapath_threads() {
            if let Some(why) = t.failure {
                problems.push(format!("datapath thread {} had failed: {why}", t.name));
            }
        }
        // The slow path first, once (its current round finished, every
        // upkeep dropped), rather than each port's upkeep removed in turn,
        // each waiting on a round that may be long (an AF_XDP bind).
        self.slow.stop();
        let bridges: Vec<String> = self.registry().bridges.keys().cloned().collect();
        for b in bridges {
            if let Err(e) = self.del_bridge(&b) {
                problems.push(format!("bridge {b}: {e}"));
            }
        }
        if let Runner::Threads(threads) = &mut self.runner {
            for t in std::mem::take(threads) {
                let name = t.name().to_string();
                let wait = self.timeout.max(Duration::from_secs(1));
                if !t.stop(wait) {
                    problems.push(format!("datapath thread {name} did not stop within {} ms", wait.as_millis()));
                }
            }
        }
        problems.append(&mut self.close_panics.lock().unwrap_or_else(|e| e.into_inner()));
        problems
    }

    /// Counters of every bridge, port and MAC table.
    pub fn stats(&self) -> SwitchStats {
        let reg = self.registry();
        let bridges = reg
            .bridges
            .iter()
            .map(|(name, b)| {
                let mut ports: Vec<PortStats> = b.ports.iter().map(|(n, p)| port_stats(n, p)).collect();
                ports.sort_by_key(|p| p.port_no);
                BridgeStats { name: name.clone(), ports, mac_table: b.mac.stats() }
            })
            .collect();
        SwitchStats { bridges }
    }
}

/// Whether a datapath change took effect, or will: it succeeded, or timed
/// out on a thread that still has it queued.
fn took_effect<T>(r: &Result<T>) -> bool {
    matches!(r, Ok(_) | Err(Error::Timeout { outcome: Outcome::WillApply, .. }))
}

/// What [`Switch::health`] found.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Health {
    /// Every datapath thread, and whether it runs.
    pub threads: Vec<DatapathThreadInfo>,
    /// Every port, by bridge and port number.
    pub ports: Vec<PortHealth>,
}

impl Health {
    /// True if no datapath thread and no port has failed (ports that are
    /// down or missing their interface are not failures).
    pub fn is_ok(&self) -> bool {
        self.threads.iter().all(|t| t.failure.is_none())
            && self.ports.iter().all(|p| !matches!(p.state, PortState::Failed | PortState::ThreadFailed))
    }

    /// The entry of port `name`.
    pub fn port(&self, name: &str) -> Option<&PortHealth> {
        self.ports.iter().find(|p| p.name == name)
    }
}

/// One port's state, as [`Switch::health`] reports it.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct PortHealth {
    /// Its bridge.
    pub bridge: String,
    /// The port's name.
    pub name: String,
    /// Its number on the bridge.
    pub port_no: PortNo,
    /// Its backend.
    #[serde(rename = "type")]
    pub kind: String,
    /// The datapath thread that receives from it.
    pub thread: String,
    /// Whether its link is up.
    pub link_up: bool,
    /// What state it is in.
    pub state: PortState,
    /// Why, for the failed and error states.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// The state of a port, worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PortState {
    /// Its code panicked: it was taken down alone and forwards nothing
    /// until it is removed (and may then be added again).
    Failed,
    /// The datapath thread that receives from it failed.
    ThreadFailed,
    /// Its device is missing or broken (an interface that vanished); the
    /// switch reopens it when it can.
    Error,
    /// Administratively down (`mod-port PORT down`).
    AdminDown,
    /// Its link is down.
    LinkDown,
    /// Forwarding.
    Up,
}

/// A datapath thread, as listed by [`Switch::datapath_threads`].
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct DatapathThreadInfo {
    /// The thread's name (`vswitch-pmd0`, ...).
    pub name: String,
    /// Ports it receives from.
    pub ports: usize,
    /// Why it stopped, if it failed (`panicked: MESSAGE`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

fn lock_rules(set: &Mutex<RuleSet>) -> MutexGuard<'_, RuleSet> {
    set.lock().unwrap_or_else(|e| e.into_inner())
}

fn flow_error(e: crate::flow::FlowParseError) -> Error {
    Error::invalid("flow", e.0)
}

/// Changes as the datapath and the journal see them.
impl Switch {
    /// As [`apply`](Self::apply) for a change of `n` rules: the deadline
    /// grows by 20 µs a rule, so that a million-rule load is not cut short.
    fn apply_sized(&self, n: usize, f: impl Fn(&mut Datapath) + Send + Sync + 'static) -> Result<()> {
        let extra = Duration::from_micros(20).saturating_mul(n.min(u32::MAX as usize) as u32);
        self.broadcast_within(self.timeout + extra, move |dp, _| f(dp)).map(drop)
    }

    /// Starts recording every change to the configuration, for
    /// [`take_changes`](Self::take_changes): what a daemon journals.
    pub fn record_changes(&self) {
        let mut j = self.journal.lock().unwrap_or_else(|e| e.into_inner());
        j.get_or_insert_with(Vec::new);
    }

    /// The changes recorded since the last call (see
    /// [`record_changes`](Self::record_changes)), oldest first.
    pub fn take_changes(&self) -> Vec<ConfigChange> {
        let mut j = self.journal.lock().unwrap_or_else(|e| e.into_inner());
        j.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Records the change `change` makes, if recording (the record is
    /// only made then: formatting a million rules is not free).
    pub(crate) fn record(&self, change: impl FnOnce() -> ConfigChange) {
        if let Some(j) = self.journal.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            j.push(change());
        }
    }
}

fn port_stats(name: &str, p: &PortEntry) -> PortStats {
    let c = &p.counters;
    PortStats {
        name: name.to_string(),
        port_no: p.port_no,
        kind: p.kind.to_string(),
        link_up: c.link_up.load(Ordering::Relaxed),
        rx_packets: c.rx_packets(),
        rx_bytes: c.rx_bytes(),
        tx_packets: c.tx_packets(),
        tx_bytes: c.tx_bytes(),
        drops: DropReason::ALL.iter().map(|&r| (r, c.dropped(r))).collect(),
        admin_down: p.flags.down,
        no_flood: p.flags.no_flood,
        failure: c.failure().map(str::to_string),
    }
}

/// Closes ports the datapath threads handed back (each thread returns its
/// reference; the last one dropped closes the port), here on the caller's
/// thread. A failed port's own code may panic again as it is closed: that
/// is caught, the rest are closed all the same.
fn close_ports(ports: impl IntoIterator<Item = SharedPort>, panics: &Mutex<Vec<String>>) {
    for port in ports {
        if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(port))) {
            let why = crate::datapath::thread::panic_message(&*payload);
            panics.lock().unwrap_or_else(|e| e.into_inner()).push(format!("closing a port panicked: {why}"));
        }
    }
}

/// What the slow-path thread calls when a port's slow half panics: the
/// port is marked failed, and the datapath takes it down at its next pass.
fn upkeep_failed(counters: Arc<PortCounters>) -> Box<dyn Fn(String) + Send> {
    Box::new(move |why| {
        counters.fail(why);
    })
}
