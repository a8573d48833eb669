//! Container networks: a network is a bridge with an address plan (the
//! built-in IPAM, or addresses a delegated CNI IPAM plugin handed out),
//! an optional gateway port holding the gateway addresses on the host,
//! and per-network options (MTU, VLAN, MAC/IP spoof checks); an
//! attachment is one container interface on it: a veth pair whose host
//! end is a port of the bridge carrying the attachment's identity
//! (`external_ids`: `container_id`, `ifname`, `network`).
//!
//! [`Networks`] keeps the networks and attachments (saved in its state
//! file after each change, so DEL stays idempotent and GC is a set
//! difference across daemon restarts) and serves the `net.*` control
//! methods that `vswitch-cni` and `vswitch-ctl net-*` call.
//!
//! What a network adds to its bridge's flow table carries a cookie of the
//! network's (upper 32 bits) and the attachment's (lower 32 bits), so it
//! is removed by cookie and never touches rules someone else added.

mod agent;
mod flows;
pub mod ipam;
mod plumb;
pub mod policy;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::{PortKind, PortSpec};
use crate::wire::MacAddr;
use crate::{Error, OnOpenError, Result, Switch};
pub use ipam::{IpConfig, IpRange, IpamConfig, RouteConfig};

/// Every method [`Networks::call`] serves.
pub const NET_METHODS: &[&str] = &[
    "net.create",
    "net.delete",
    "net.list",
    "net.attach",
    "net.detach",
    "net.check",
    "net.gc",
    "net.label",
    "net.routes",
    "net.cluster",
    "policy.add",
    "policy.del",
    "policy.list",
];

/// The `net.*` methods that change something (run one at a time, and the
/// switch's configuration saved after them).
pub const NET_CHANGES: &[&str] = &[
    "net.create",
    "net.delete",
    "net.attach",
    "net.detach",
    "net.gc",
    "net.label",
    "net.routes",
    "policy.add",
    "policy.del",
];

/// A network's definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// Its name (the CNI configuration's `name`).
    pub name: String,
    /// The bridge (default: the network's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// The built-in IPAM's configuration; `None` when addresses come
    /// with each attachment (a delegated IPAM plugin) or there are none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<IpamConfig>,
    /// An internal port, named after the bridge, holds the gateway
    /// addresses on the host.
    #[serde(default)]
    pub is_gateway: bool,
    /// Containers get a default route via the gateway (implies
    /// `is_gateway`).
    #[serde(default)]
    pub is_default_gateway: bool,
    /// MTU of both ends of each veth pair and of the gateway port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The VLAN the network's ports are access ports of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    /// Frames from a container whose source MAC or IP is not its own are
    /// dropped (and counted by the rules that drop them).
    #[serde(default)]
    pub macspoofchk: bool,
    /// Accepted for the reference `bridge` plugin's configurations. The
    /// switch never sends a frame back out of the port it came in by.
    #[serde(default)]
    pub hairpin: bool,
    /// IPv4 to the outside leaves masqueraded behind an address the
    /// switch owns on an uplink; published ports are reached there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masquerade: Option<Masquerade>,
    /// The network is this host's part of a cluster network: the rest of
    /// the cluster's block is routed to the hosts that hold it (the
    /// routes `vswitch-agent` keeps with `net.routes`), never masqueraded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Cluster>,
}

/// A network's place in a cluster network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// The whole cluster's block (flannel's `Network`); this host's
    /// subnet, the network's IPAM range, is a part of it.
    pub network: IpNet,
    /// How packets reach the other hosts.
    pub backend: ClusterBackend,
}

/// How a cluster network's packets reach another host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ClusterBackend {
    /// Encapsulated in VXLAN between the hosts' underlay addresses (the
    /// kernel's UDP socket on `local_ip`:`port`), routed by VTEP MACs as
    /// flannel's `vxlan` backend is: no ARP crosses the tunnel.
    Vxlan {
        /// The VXLAN network identifier.
        vni: u32,
        /// The UDP port (flannel's default is 8472, IANA's 4789).
        port: u16,
        /// This host's underlay address (the lease's `PublicIP`).
        local_ip: std::net::Ipv4Addr,
        /// This host's VTEP MAC (the lease's `VtepMAC`).
        vtep_mac: MacAddr,
    },
    /// Routed without encapsulation to the other host's switch address
    /// on a shared segment (flannel's `host-gw`): needs `masquerade`,
    /// whose uplink and address are the switch's presence there.
    HostGw,
}

/// Another host's part of a cluster network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteSubnet {
    /// Its subnet.
    pub subnet: IpNet,
    /// Its underlay address: the VXLAN endpoint, or host-gw's next hop.
    pub public_ip: std::net::Ipv4Addr,
    /// Its VTEP MAC (VXLAN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_mac: Option<MacAddr>,
}

/// A container of a cluster network on another host, as its host
/// published it: a peer that policies' `podSelector`s pick by its labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteEndpoint {
    /// Its address (in its host's subnet).
    pub ip: IpAddr,
    /// Its labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Where a network's outside traffic leaves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Masquerade {
    /// The uplink: a kernel interface attached to the network's bridge.
    pub uplink: String,
    /// The switch's own IPv4 address on the uplink's segment, with its
    /// prefix (not an address of the host's kernel).
    pub address: IpNet,
    /// The uplink segment's router, for destinations off it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<std::net::Ipv4Addr>,
}

/// A published port: `host_port` at the masquerade address goes to
/// `container_port` of the attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    /// The port on the masquerade address.
    pub host_port: u16,
    /// The container's port.
    pub container_port: u16,
    /// `tcp` or `udp`.
    #[serde(default = "tcp")]
    pub protocol: String,
    /// Must be the masquerade address, `0.0.0.0` or absent.
    #[serde(default, rename = "hostIP", skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
}

fn tcp() -> String {
    "tcp".to_string()
}

impl NetworkSpec {
    /// The bridge's name.
    pub fn bridge(&self) -> &str {
        self.bridge.as_deref().unwrap_or(&self.name)
    }

    fn gateway(&self) -> bool {
        self.is_gateway || self.is_default_gateway
    }

    fn validate(&self) -> Result<()> {
        let ok_name = |s: &str| {
            !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        if !ok_name(&self.name) {
            return Err(Error::invalid(
                "network",
                format!("'{}' is not a network name (letters, digits, '-', '_', '.')", self.name),
            ));
        }
        if self.gateway() && (self.bridge().len() >= 16 || self.bridge().contains(['/', ' '])) {
            return Err(Error::invalid(
                "network",
                format!("bridge '{}' cannot name a gateway interface (at most 15 bytes)", self.bridge()),
            ));
        }
        if let Some(ipam) = &self.ipam {
            ipam.range_sets()?;
        }
        if let Some(v) = self.vlan {
            crate::VlanMode::access(v)?;
        }
        if self.mtu.is_some_and(|m| !(68..=65535).contains(&m)) {
            return Err(Error::invalid("network", "mtu must be 68 to 65535"));
        }
        if let Some(m) = &self.masquerade {
            if !self.gateway() {
                return Err(Error::invalid("network", "masquerade needs a gateway port (isGateway)"));
            }
            if !m.address.addr().is_ipv4() || m.address.prefix_len() == 32 {
                return Err(Error::invalid(
                    "network",
                    "the masquerade address is IPv4 with the uplink subnet's prefix (A.B.C.D/N)",
                ));
            }
            if m.uplink.is_empty() || m.uplink.len() >= 16 || m.uplink == self.bridge() {
                return Err(Error::invalid("network", format!("'{}' cannot be the uplink", m.uplink)));
            }
            if let Some(g) = m.gateway
                && !m.address.contains(&IpAddr::V4(g))
            {
                return Err(Error::invalid(
                    "network",
                    format!("the uplink gateway {g} is not in {}", m.address.trunc()),
                ));
            }
        }
        if let Some(c) = &self.cluster {
            self.validate_cluster(c)?;
        }
        Ok(())
    }

    fn validate_cluster(&self, c: &Cluster) -> Result<()> {
        let bad = |why: String| Err(Error::invalid("cluster", why));
        if !c.network.addr().is_ipv4() || c.network != c.network.trunc() {
            return bad(format!("the cluster network {} is an IPv4 block (A.B.C.D/N, host bits zero)", c.network));
        }
        if !self.gateway() {
            return bad("a cluster network needs a gateway port (isGateway)".into());
        }
        for r in self.ipam.as_ref().map(IpamConfig::range_sets).transpose()?.iter().flatten().flatten() {
            if r.subnet.addr().is_ipv4() && !c.network.contains(&r.subnet) {
                return bad(format!("this host's subnet {} is not in the cluster network {}", r.subnet, c.network));
            }
        }
        match &c.backend {
            ClusterBackend::Vxlan { vni, port, vtep_mac, local_ip } => {
                if *vni >= 1 << 24 {
                    return bad(format!("VNI {vni} is more than 24 bits"));
                }
                if *port == 0 {
                    return bad("the VXLAN UDP port is 1 to 65535".into());
                }
                if vtep_mac.0[0] & 1 != 0 || vtep_mac.0 == [0; 6] {
                    return bad(format!("VTEP MAC {vtep_mac} is not a unicast address"));
                }
                if local_ip.is_unspecified() || local_ip.is_multicast() {
                    return bad(format!("{local_ip} cannot be the VXLAN endpoint"));
                }
            }
            ClusterBackend::HostGw if self.masquerade.is_none() => {
                return bad("host-gw routes through the switch's own uplink address: give the network masquerade (uplink, address)".into());
            }
            ClusterBackend::HostGw => {}
        }
        Ok(())
    }
}

/// One container interface on a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The network.
    pub network: String,
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_IFNAME.
    pub ifname: String,
    /// CNI_NETNS.
    pub netns: String,
    /// The host end of the veth pair: the bridge port.
    pub port: String,
    /// The container interface's MAC.
    pub mac: MacAddr,
    /// The host end's MAC.
    pub host_mac: MacAddr,
    /// Its addresses.
    pub ips: Vec<IpConfig>,
    /// Its routes.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// DNS settings handed back to the runtime as they came.
    #[serde(default)]
    pub dns: Value,
    /// Labels, for network policy.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The addresses came from the built-in IPAM (and go back to it).
    #[serde(default)]
    pub builtin_ipam: bool,
    /// Its published ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_mappings: Vec<PortMapping>,
    /// The low 32 bits of its rules' cookies.
    pub id: u32,
}

/// `net.attach`'s parameters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachArgs {
    /// The network.
    pub network: String,
    /// Creates the network, or updates it to this (a CNI configuration).
    #[serde(default)]
    pub spec: Option<NetworkSpec>,
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_IFNAME.
    pub ifname: String,
    /// CNI_NETNS (a path).
    pub netns: String,
    /// Addresses from a delegated IPAM plugin (none: the built-in IPAM's).
    #[serde(default)]
    pub ips: Option<Vec<IpConfig>>,
    /// Routes from a delegated IPAM plugin.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// DNS from a delegated IPAM plugin.
    #[serde(default)]
    pub dns: Value,
    /// Addresses asked for (`IP=` in CNI_ARGS, `ips` in runtimeConfig).
    #[serde(default)]
    pub request_ips: Vec<IpAddr>,
    /// The container interface's MAC (none: the kernel's choice).
    #[serde(default)]
    pub mac: Option<MacAddr>,
    /// Labels, for network policy.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Ports to publish (CNI `portMappings`).
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateArgs {
    network: NetworkSpec,
    #[serde(default)]
    may_exist: bool,
    /// An existing network of that name takes this definition.
    #[serde(default)]
    update: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteArgs {
    name: String,
    #[serde(default)]
    if_exists: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DetachArgs {
    network: String,
    container_id: String,
    ifname: String,
    /// A network that was never created (or is gone) is still success.
    #[serde(default)]
    spec: Option<NetworkSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckArgs {
    network: String,
    container_id: String,
    ifname: String,
    /// Addresses the runtime believes the interface has (prevResult).
    #[serde(default)]
    ips: Vec<IpConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GcArgs {
    network: String,
    /// (container id, ifname) pairs that stay.
    valid: Vec<(String, String)>,
    #[serde(default)]
    spec: Option<NetworkSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelArgs {
    network: String,
    container_id: String,
    ifname: String,
    /// Labels to set (added or changed).
    #[serde(default)]
    set: BTreeMap<String, String>,
    /// Labels to remove.
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoutesArgs {
    network: String,
    /// Every other host's subnet: the whole set (what is not in it goes).
    routes: Vec<RemoteSubnet>,
    /// What the agent reports of itself (shown by `net.cluster`).
    #[serde(default)]
    agent: Value,
    /// The other hosts' containers with their labels (the whole set;
    /// absent: unchanged).
    #[serde(default)]
    endpoints: Option<Vec<RemoteEndpoint>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyAddArgs {
    /// The policy document (this switch's form or a Kubernetes
    /// NetworkPolicy).
    policy: Value,
    /// Its network, when the document does not name one.
    #[serde(default)]
    network: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyListArgs {
    #[serde(default)]
    network: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    #[serde(default)]
    networks: BTreeMap<String, NetworkSpec>,
    #[serde(default)]
    attachments: Vec<Attachment>,
    #[serde(default)]
    next_id: u32,
    /// The conntrack zone of each network with masquerade or policies.
    #[serde(default)]
    zones: BTreeMap<String, u16>,
    /// Network policies by name.
    #[serde(default)]
    policies: BTreeMap<String, policy::Policy>,
    /// Each network's policy generation (committed connections carry it).
    #[serde(default)]
    policy_gen: BTreeMap<String, u32>,
    /// A cluster network's routes to the other hosts (kept: forwarding
    /// goes on with the last known ones when the agent or its store is
    /// away, and after a restart).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    cluster_routes: BTreeMap<String, Vec<RemoteSubnet>>,
    /// A cluster network's containers on the other hosts (policy peers).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    cluster_endpoints: BTreeMap<String, Vec<RemoteEndpoint>>,
}

/// The container networks of one switch (what `vswitchd` serves as
/// `net.*`).
#[derive(Debug)]
pub struct Networks {
    switch: Arc<Switch>,
    state_path: PathBuf,
    ipam_dir: PathBuf,
    kernel_type: PortKind,
    state: Mutex<State>,
    /// The neighbour agents of masquerading networks.
    agents: Mutex<BTreeMap<String, agent::Agent>>,
    /// Each network's policy rule slots (in memory: counters do not
    /// outlive the daemon either).
    slots: Mutex<BTreeMap<String, policy::Slots>>,
    /// Networks that could not be wired when the daemon started (a
    /// missing uplink, ...), with why: tried again before every request.
    unwired: Mutex<BTreeMap<String, String>>,
    /// What each cluster network's agent last reported, and when.
    agent_reports: Mutex<BTreeMap<String, (Value, std::time::SystemTime)>>,
}

/// FNV-1a: a hash that stays the same across builds and versions (names
/// derived from it must be found again after an upgrade).
pub(crate) fn stable_hash(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// An interface or port name: `prefix` and 40 bits of `parts`' hash in
/// hex (13 bytes with a three-letter prefix, under IFNAMSIZ).
fn derived_name(prefix: &str, parts: &[&str]) -> String {
    format!("{prefix}{:010x}", stable_hash(parts) & 0xff_ffff_ffff)
}

/// The host end's name: derived, so a DEL without a record finds it.
pub fn host_ifname(network: &str, container_id: &str, ifname: &str) -> String {
    derived_name("vsw", &[network, container_id, ifname])
}

fn network_cookie(network: &str) -> u64 {
    (stable_hash(&[network]) & 0xffff_ffff) << 32
}

/// The cookie of the neighbour agent's rules (apart from the network's,
/// which are made what they should be as one set).
fn neighbour_cookie(network: &str) -> u64 {
    (stable_hash(&[network, "neighbours"]) & 0xffff_ffff) << 32
}

/// A locally administered unicast MAC derived from `parts`.
fn derived_mac(parts: &[&str]) -> MacAddr {
    let h = stable_hash(parts).to_be_bytes();
    MacAddr([0x02, h[0], h[1], h[2], h[3], h[4]])
}

/// The gateway port's MAC.
fn gateway_mac(spec: &NetworkSpec) -> MacAddr {
    derived_mac(&[&spec.name, "gateway"])
}

/// The switch's MAC on a masquerading network's uplink: derived from its
/// address there too, so that hosts sharing a segment (a cluster's, or
/// a LAN with the same network on two machines) never share it.
fn uplink_mac(spec: &NetworkSpec) -> MacAddr {
    let address = spec.masquerade.as_ref().map(|m| m.address.to_string()).unwrap_or_default();
    derived_mac(&[&spec.name, "uplink", &address])
}

/// The VLAN of a masquerading network's uplink and agent ports: one its
/// containers are not on.
fn outside_vlan(spec: &NetworkSpec) -> u16 {
    if spec.vlan == Some(4094) { 4093 } else { 4094 }
}

fn agent_port(network: &str) -> String {
    derived_name("vsa", &[network, "agent"])
}

/// True if the two blocks share an address.
fn overlap(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.addr()) || b.contains(&a.addr())
}

/// A VXLAN cluster network's tunnel port.
fn cluster_port(network: &str) -> String {
    derived_name("vsx", &[network, "vxlan"])
}

/// The VTEP MAC a host publishes for cluster network `network` at
/// underlay address `public_ip`: derived, so it stays the same across
/// restarts of the agent and the daemon.
pub fn vtep_mac(network: &str, public_ip: std::net::Ipv4Addr) -> MacAddr {
    derived_mac(&[network, &public_ip.to_string(), "vtep"])
}

impl State {
    /// Where attachment (`network`, `container_id`, `ifname`) is.
    fn position(&self, network: &str, container_id: &str, ifname: &str) -> Option<usize> {
        self.attachments
            .iter()
            .position(|x| x.network == network && x.container_id == container_id && x.ifname == ifname)
    }
}

impl Networks {
    /// The networks of `switch`, kept in `dir` (`networks.json`; the
    /// built-in IPAM's reservations under `dir/ipam` unless a network's
    /// `dataDir` says otherwise). Attachment ports use `kernel_type`.
    /// Gateway addresses are put back on their ports (an internal port
    /// is a new TAP device after a restart).
    ///
    /// # Errors
    /// [`Error::Io`] if the directory or state file cannot be read;
    /// [`Error::InvalidArgument`] if the state file is corrupt.
    pub fn open(switch: Arc<Switch>, dir: &Path, kernel_type: PortKind) -> Result<Networks> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("creating the networks directory", e))?;
        let state_path = dir.join("networks.json");
        let state = match std::fs::read(&state_path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| Error::invalid("networks state", format!("{}: {e}", state_path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(Error::io("reading the networks state", e)),
        };
        let n = Networks {
            switch,
            state_path,
            ipam_dir: dir.join("ipam"),
            kernel_type,
            state: Mutex::new(state),
            agents: Mutex::new(BTreeMap::new()),
            slots: Mutex::new(BTreeMap::new()),
            unwired: Mutex::new(BTreeMap::new()),
            agent_reports: Mutex::new(BTreeMap::new()),
        };
        let names: Vec<String> = n.lock().networks.keys().cloned().collect();
        n.unwired.lock().unwrap_or_else(|e| e.into_inner()).extend(names.into_iter().map(|k| (k, String::new())));
        n.rewire_pending();
        Ok(n)
    }

    /// Networks the daemon could not wire (at start), with why; each
    /// request tries them again first.
    pub fn unwired(&self) -> Vec<(String, String)> {
        self.unwired.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Tries to wire the networks that are not: their gateway addresses,
    /// uplink, agent and rules.
    fn rewire_pending(&self) {
        let pending: Vec<String> = self.unwired.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
        if pending.is_empty() {
            return;
        }
        let mut s = self.lock();
        for name in pending {
            // Another request may have wired it meanwhile.
            if !self.unwired.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&name) {
                continue;
            }
            let Some(spec) = s.networks.get(&name).cloned() else {
                self.unwired.lock().unwrap_or_else(|e| e.into_inner()).remove(&name);
                continue;
            };
            let r = self.gateway_addresses(&s, &spec).and_then(|()| self.wire(&mut s, &spec));
            let mut u = self.unwired.lock().unwrap_or_else(|e| e.into_inner());
            match r {
                Ok(()) => u.remove(&name),
                Err(e) => u.insert(name, e.to_string()),
            };
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn save(&self, s: &State) -> Result<()> {
        let tmp = self.state_path.with_extension(format!("json.tmp.{}", std::process::id()));
        let io = |e| Error::io("saving the networks state", e);
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&serde_json::to_vec_pretty(s).map_err(|e| Error::invalid("networks state", e.to_string()))?)
            .and_then(|()| f.sync_all())
            .map_err(io)?;
        std::fs::rename(&tmp, &self.state_path).map_err(io)
    }

    fn pool(&self, spec: &NetworkSpec) -> ipam::Pool {
        let dir = spec.ipam.as_ref().and_then(|i| i.data_dir.clone()).unwrap_or_else(|| self.ipam_dir.clone());
        ipam::Pool::new(&dir, &spec.name)
    }

    /// Serves one `net.*` method.
    ///
    /// # Errors
    /// The method's error; [`Error::InvalidArgument`] for bad parameters
    /// or an unknown method.
    pub fn call(&self, method: &str, params: Value) -> Result<Value> {
        fn args<T: serde::de::DeserializeOwned>(p: Value) -> Result<T> {
            let p = if p.is_null() { json!({}) } else { p };
            serde_json::from_value(p).map_err(|e| Error::invalid("params", e.to_string()))
        }
        if NET_CHANGES.contains(&method) {
            self.rewire_pending();
        }
        match method {
            "net.create" => {
                let a: CreateArgs = args(params)?;
                if a.update {
                    self.update(a.network).map(|changed| json!({ "changed": changed }))
                } else {
                    self.create(a.network, a.may_exist).map(|()| Value::Null)
                }
            }
            "net.delete" => {
                let a: DeleteArgs = args(params)?;
                self.delete(&a.name, a.if_exists).map(|()| Value::Null)
            }
            "net.list" => Ok(self.list()),
            "net.attach" => self.attach(args(params)?),
            "net.detach" => {
                let a: DetachArgs = args(params)?;
                self.detach(&a.network, &a.container_id, &a.ifname, a.spec.as_ref())
            }
            "net.check" => {
                let a: CheckArgs = args(params)?;
                self.check(&a.network, &a.container_id, &a.ifname, &a.ips).map(|()| Value::Null)
            }
            "net.gc" => {
                let a: GcArgs = args(params)?;
                self.gc(&a.network, a.valid.into_iter().collect(), a.spec.as_ref())
            }
            "net.label" => {
                let a: LabelArgs = args(params)?;
                self.label(&a.network, &a.container_id, &a.ifname, a.set, &a.remove).map(|()| Value::Null)
            }
            "net.routes" => {
                let a: RoutesArgs = args(params)?;
                self.set_routes(&a.network, a.routes, a.endpoints, a.agent)
            }
            "net.cluster" => {
                let a: PolicyListArgs = args(params)?;
                Ok(self.cluster_status(a.network.as_deref()))
            }
            "policy.add" => {
                let a: PolicyAddArgs = args(params)?;
                self.add_policy(policy::Policy::from_document(a.policy, a.network.as_deref())?).map(|()| Value::Null)
            }
            "policy.del" => {
                let a: DeleteArgs = args(params)?;
                self.delete_policy(&a.name, a.if_exists).map(|()| Value::Null)
            }
            "policy.list" => {
                let a: PolicyListArgs = args(params)?;
                Ok(self.list_policies(a.network.as_deref()))
            }
            _ => Err(Error::invalid("method", format!("unknown method '{method}'"))),
        }
    }

    /// Networks with their attachments.
    pub fn list(&self) -> Value {
        let s = self.lock();
        let unwired = self.unwired.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let nets: Vec<Value> = s
            .networks
            .values()
            .map(|n| {
                let atts: Vec<&Attachment> = s.attachments.iter().filter(|a| a.network == n.name).collect();
                let mut v = json!({ "network": n, "bridge": n.bridge(), "attachments": atts });
                if let Some(why) = unwired.get(&n.name) {
                    v["problem"] = json!(format!("not wired: {why}"));
                }
                v
            })
            .collect();
        json!(nets)
    }

    /// Creates network `spec.name`, or with `may_exist` accepts it as it is.
    ///
    /// # Errors
    /// [`Error::Exists`] (different or without `may_exist`), a bad spec,
    /// the bridge's or gateway port's error.
    pub fn create(&self, spec: NetworkSpec, may_exist: bool) -> Result<()> {
        let mut s = self.lock();
        if let Some(old) = s.networks.get(&spec.name) {
            if may_exist && *old == spec {
                return Ok(());
            }
            return Err(Error::Exists(format!("network '{}' already exists", spec.name)));
        }
        self.apply_network(&mut s, spec)
    }

    /// Creates the network, or gives an existing one this definition
    /// (what `vswitch-agent` does when its subnet or MTU changes); true
    /// if anything changed. Attachments keep their addresses.
    ///
    /// # Errors
    /// As [`create`](Self::create); on error the old definition stays.
    pub fn update(&self, spec: NetworkSpec) -> Result<bool> {
        let mut s = self.lock();
        // The same definition is made again if it is not working (its
        // bridge gone with a lost configuration file, say).
        let broken = self.unwired.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&spec.name)
            || !self.switch.bridges().iter().any(|b| b.name == spec.bridge());
        if s.networks.get(&spec.name) == Some(&spec) && !broken {
            return Ok(false);
        }
        self.apply_network(&mut s, spec).map(|()| true)
    }

    /// Makes `spec` the network's definition: its bridge, gateway port
    /// and addresses, network-wide rules. The old definition stays if
    /// anything fails.
    fn apply_network(&self, s: &mut State, spec: NetworkSpec) -> Result<()> {
        spec.validate()?;
        let old = s.networks.get(&spec.name).cloned();
        if let Some(old) = &old
            && old.bridge() != spec.bridge()
            && s.attachments.iter().any(|a| a.network == spec.name)
        {
            return Err(Error::invalid(
                "network",
                format!(
                    "network '{}' has attachments on bridge '{}': its bridge cannot change",
                    spec.name,
                    old.bridge()
                ),
            ));
        }
        if let Some(other) = s.networks.values().find(|n| n.name != spec.name && n.bridge() == spec.bridge()) {
            return Err(Error::Exists(format!(
                "bridge '{}' belongs to network '{}': give this network a bridge of its own",
                spec.bridge(),
                other.name
            )));
        }
        let sw = &self.switch;
        let new_bridge = !sw.bridges().iter().any(|b| b.name == spec.bridge());
        if new_bridge {
            sw.add_bridge(spec.bridge())?;
        }
        let undo = |sw: &Switch| {
            if new_bridge {
                let _ = sw.del_bridge(spec.bridge());
            }
        };
        let gw_port = spec.bridge().to_string();
        let had_gw = sw.port_spec(&gw_port).is_ok();
        if spec.gateway() {
            let mut p = PortSpec::new(&gw_port, PortKind::Internal);
            p.tag = spec.vlan;
            p.external_ids.insert("network".into(), spec.name.clone());
            p.external_ids.insert("role".into(), "gateway".into());
            let r = if had_gw {
                sw.set_port_spec(&p)
            } else {
                sw.add_port_spec(spec.bridge(), &p, OnOpenError::Fail).map(|_| ())
            };
            if let Err(e) = r {
                undo(sw);
                return Err(e);
            }
        } else if had_gw && old.as_ref().is_some_and(NetworkSpec::gateway) {
            let _ = sw.del_port(&gw_port);
        }
        if let Some(o) = &old
            && let Some(om) = &o.masquerade
            && spec.masquerade.as_ref().is_none_or(|m| m.uplink != om.uplink)
            && self.owns_port(o, &om.uplink)
        {
            let _ = sw.del_port(&om.uplink);
        }
        s.networks.insert(spec.name.clone(), spec.clone());
        let r = self
            .gateway_addresses(s, &spec)
            .and_then(|()| self.wire(s, &spec))
            .and_then(|()| if old.is_some() { self.retag_attachments(s, &spec) } else { Ok(()) })
            .and_then(|()| self.save(s));
        if r.is_ok() {
            self.unwired.lock().unwrap_or_else(|e| e.into_inner()).remove(&spec.name);
        }
        if let Err(e) = r {
            match old {
                Some(o) => {
                    // Back to the old definition, wired as it was (the
                    // gateway port's VLAN too).
                    if o.gateway()
                        && let Ok((_, Some(mut p))) = sw.port_spec(&gw_port)
                        && p.tag != o.vlan
                    {
                        p.tag = o.vlan;
                        let _ = sw.set_port_spec(&p);
                    }
                    s.networks.insert(o.name.clone(), o.clone());
                    let _ = self.gateway_addresses(s, &o);
                    let _ = self.wire(s, &o);
                    let _ = self.retag_attachments(s, &o);
                }
                None => {
                    s.networks.remove(&spec.name);
                    let _ = self.unwire(s, &spec);
                    if spec.gateway() && !had_gw {
                        let _ = sw.del_port(&gw_port);
                    }
                    undo(sw);
                }
            }
            return Err(e);
        }
        Ok(())
    }

    /// Takes down what [`wire`](Self::wire) set up: the agent and its
    /// port, the uplink port, every rule, the zone.
    ///
    /// # Errors
    /// The switch's, if the rules cannot be removed (the rest is done).
    fn unwire(&self, s: &mut State, spec: &NetworkSpec) -> Result<()> {
        let sw = &self.switch;
        if self.agents.lock().unwrap_or_else(|e| e.into_inner()).remove(&spec.name).is_some() {
            let _ = sw.del_port(&agent_port(&spec.name));
        }
        s.zones.remove(&spec.name);
        s.policy_gen.remove(&spec.name);
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).remove(&spec.name);
        let rules = if sw.bridges().iter().any(|b| b.name == spec.bridge()) {
            flows::remove(sw, spec.bridge(), network_cookie(&spec.name), false)
                .and_then(|()| flows::remove(sw, spec.bridge(), neighbour_cookie(&spec.name), false))
        } else {
            Ok(())
        };
        if let Some(m) = &spec.masquerade
            && self.owns_port(spec, &m.uplink)
        {
            let _ = sw.del_port(&m.uplink);
        }
        if self.owns_port(spec, &cluster_port(&spec.name)) {
            let _ = sw.del_port(&cluster_port(&spec.name));
        }
        rules
    }

    /// True if port `name` is on the network's bridge and marked as the
    /// network's (an uplink this network attached, not someone else's).
    fn owns_port(&self, spec: &NetworkSpec, name: &str) -> bool {
        match self.switch.port_spec(name) {
            Ok((b, Some(p))) => b == spec.bridge() && p.external_ids.get("network") == Some(&spec.name),
            _ => false,
        }
    }

    /// After a change of the network's definition: each attachment's
    /// port in the network's VLAN.
    fn retag_attachments(&self, s: &State, spec: &NetworkSpec) -> Result<()> {
        let sw = &self.switch;
        for att in s.attachments.iter().filter(|a| a.network == spec.name) {
            if let Ok((_, Some(mut p))) = sw.port_spec(&att.port)
                && p.tag != spec.vlan
            {
                p.tag = spec.vlan;
                sw.set_port_spec(&p)?;
            }
        }
        Ok(())
    }

    fn has_policies(s: &State, network: &str) -> bool {
        s.policies.values().any(|p| p.network == network)
    }

    /// The network's wiring for its rules: its zone, derived MACs and
    /// gateway addresses with masquerade, its policy generation.
    fn wiring(&self, s: &State, spec: &NetworkSpec) -> flows::Wiring {
        let gw_ips: Vec<std::net::Ipv4Addr> = self
            .gateway_set(s, spec)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|n| match n.addr() {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            })
            .collect();
        let masq = spec.masquerade.as_ref().map(|_| flows::MasqWiring {
            gw_mac: gateway_mac(spec),
            gw_ips: gw_ips.clone(),
            uplink_mac: uplink_mac(spec),
            agent: agent_port(&spec.name),
        });
        let policy_gen = Self::has_policies(s, &spec.name).then(|| s.policy_gen.get(&spec.name).copied().unwrap_or(1));
        let local = Self::local_subnets(spec);
        let cluster = spec.cluster.as_ref().map(|c| flows::ClusterWiring {
            network: c.network,
            gw_ips,
            // Only what fits the current definition (it may have changed
            // since the agent sent them).
            routes: s
                .cluster_routes
                .get(&spec.name)
                .into_iter()
                .flatten()
                .filter(|r| c.network.contains(&r.subnet) && !local.iter().any(|l| overlap(l, &r.subnet)))
                .cloned()
                .collect(),
            local,
            gw_mac: gateway_mac(spec),
            vxlan: match &c.backend {
                ClusterBackend::Vxlan { vtep_mac, .. } => Some((cluster_port(&spec.name), *vtep_mac)),
                ClusterBackend::HostGw => None,
            },
        });
        flows::Wiring { zone: s.zones.get(&spec.name).copied(), masq, policy_gen, cluster }
    }

    /// The network's IPv4 subnets (its IPAM's ranges): with a cluster,
    /// this host's part of the cluster's block.
    fn local_subnets(spec: &NetworkSpec) -> Vec<IpNet> {
        let sets = spec.ipam.as_ref().and_then(|i| i.range_sets().ok()).unwrap_or_default();
        let mut v: Vec<IpNet> =
            sets.iter().flatten().map(|r| r.subnet.trunc()).filter(|n| n.addr().is_ipv4()).collect();
        v.sort();
        v.dedup();
        v
    }

    /// A VXLAN cluster network's tunnel port made what its spec says
    /// (or removed when the network has no VXLAN cluster any more).
    fn cluster_tunnel(&self, spec: &NetworkSpec) -> Result<()> {
        let sw = &self.switch;
        let name = cluster_port(&spec.name);
        let Some(Cluster { backend: ClusterBackend::Vxlan { vni, port, local_ip, .. }, .. }) = &spec.cluster else {
            if self.owns_port(spec, &name) {
                sw.del_port(&name)?;
            }
            return Ok(());
        };
        let mut p = PortSpec::new(&name, PortKind::Vxlan);
        p.tag = Some(outside_vlan(spec));
        for (k, v) in [
            ("remote_ip", "flow".to_string()),
            ("key", vni.to_string()),
            ("dst_port", port.to_string()),
            ("local_ip", local_ip.to_string()),
        ] {
            p.options.insert(k.into(), v);
        }
        p.external_ids.insert("network".into(), spec.name.clone());
        p.external_ids.insert("role".into(), "cluster-tunnel".into());
        match sw.port_spec(&name) {
            Ok((b, Some(mut old))) if b == spec.bridge() => {
                p.port_no = old.port_no.take();
                if old != p { sw.set_port_spec(&p) } else { Ok(()) }
            }
            Ok((b, _)) => Err(Error::Exists(format!("port '{name}' is on bridge '{b}'"))),
            Err(_) => sw.add_port_spec(spec.bridge(), &p, OnOpenError::Fail).map(|_| ()),
        }
    }

    /// Makes `routes` a cluster network's routes to the other hosts (the
    /// whole set: a subnet not in it is no longer routed) and keeps what
    /// its agent reports of itself. Unchanged routes change nothing.
    ///
    /// # Errors
    /// [`Error::NotFound`] for a missing network; [`Error::InvalidArgument`]
    /// for a network without a cluster or a route that cannot be (not
    /// IPv4, outside the cluster's block, overlapping this host's subnet
    /// or another route, a VXLAN route without a VTEP MAC). Nothing
    /// changes on error.
    pub fn set_routes(
        &self,
        network: &str,
        mut routes: Vec<RemoteSubnet>,
        endpoints: Option<Vec<RemoteEndpoint>>,
        report: Value,
    ) -> Result<Value> {
        let mut s = self.lock();
        let spec =
            s.networks.get(network).cloned().ok_or_else(|| Error::NotFound(format!("no network named '{network}'")))?;
        let Some(c) = &spec.cluster else {
            return Err(Error::invalid("cluster", format!("network '{network}' is not a cluster network")));
        };
        let bad = |why: String| Err(Error::invalid("route", why));
        routes.sort_by_key(|r| r.subnet);
        routes.dedup();
        let local = Self::local_subnets(&spec);
        for r in &routes {
            if !r.subnet.addr().is_ipv4() || r.subnet != r.subnet.trunc() || !c.network.contains(&r.subnet) {
                return bad(format!("{} is not a subnet of the cluster network {}", r.subnet, c.network));
            }
            if let Some(l) = local.iter().find(|l| overlap(l, &r.subnet)) {
                return bad(format!("{} overlaps this host's subnet {l}", r.subnet));
            }
            if matches!(c.backend, ClusterBackend::Vxlan { .. }) && r.vtep_mac.is_none() {
                return bad(format!("{}: a VXLAN route needs the host's VTEP MAC", r.subnet));
            }
        }
        if let Some(w) = routes.windows(2).find(|w| w[0].subnet.contains(&w[1].subnet.addr())) {
            return bad(format!("{} and {} overlap", w[0].subnet, w[1].subnet));
        }
        let endpoints = match endpoints {
            None => s.cluster_endpoints.get(network).cloned().unwrap_or_default(),
            Some(mut e) => {
                e.sort_by_key(|x| x.ip);
                e.dedup_by_key(|x| x.ip);
                e
            }
        };
        if let Some(e) = endpoints.iter().find(|e| !routes.iter().any(|r| r.subnet.contains(&e.ip))) {
            return Err(Error::invalid(
                "endpoint",
                format!("{} is in no other host's subnet (an endpoint is a container of a routed host)", e.ip),
            ));
        }
        if !report.is_null() {
            self.agent_reports
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(network.to_string(), (report, std::time::SystemTime::now()));
        }
        let n = routes.len();
        let old = s.cluster_routes.get(network).cloned().unwrap_or_default();
        let old_endpoints = s.cluster_endpoints.get(network).cloned().unwrap_or_default();
        if old == routes && old_endpoints == endpoints {
            return Ok(json!({ "changed": false, "routes": n }));
        }
        s.cluster_routes.insert(network.to_string(), routes);
        s.cluster_endpoints.insert(network.to_string(), endpoints);
        if let Err(e) = self.sync(&s, &spec).and_then(|()| self.save(&s)) {
            s.cluster_routes.insert(network.to_string(), old);
            s.cluster_endpoints.insert(network.to_string(), old_endpoints);
            let _ = self.sync(&s, &spec);
            return Err(e);
        }
        self.agent_vias(&s, &spec);
        Ok(json!({ "changed": true, "routes": n }))
    }

    /// host-gw: the next hops the neighbour agent resolves for the routes.
    fn agent_vias(&self, s: &State, spec: &NetworkSpec) {
        if !matches!(spec.cluster, Some(Cluster { backend: ClusterBackend::HostGw, .. })) {
            return;
        }
        let vias = self.vias(s, spec);
        if let Some(a) = self.agents.lock().unwrap_or_else(|e| e.into_inner()).get(&spec.name) {
            a.set_vias(vias);
        }
    }

    /// host-gw: the routes' next hops, of the routes the wiring uses
    /// (those that fit the network's current definition).
    fn vias(&self, s: &State, spec: &NetworkSpec) -> Vec<(IpNet, std::net::Ipv4Addr)> {
        if !matches!(spec.cluster, Some(Cluster { backend: ClusterBackend::HostGw, .. })) {
            return Vec::new();
        }
        self.wiring(s, spec)
            .cluster
            .map_or_else(Vec::new, |c| c.routes.iter().map(|r| (r.subnet, r.public_ip)).collect())
    }

    /// The cluster networks (or `network`): this host's subnet, the
    /// routes to the other hosts, and the agent's last report with its
    /// age.
    pub fn cluster_status(&self, network: Option<&str>) -> Value {
        let s = self.lock();
        let reports = self.agent_reports.lock().unwrap_or_else(|e| e.into_inner());
        let out: Vec<Value> = s
            .networks
            .values()
            .filter(|n| n.cluster.is_some() && network.is_none_or(|x| x == n.name))
            .map(|n| {
                let (agent, age) = match reports.get(&n.name) {
                    Some((v, at)) => (v.clone(), json!(at.elapsed().map(|d| d.as_secs_f64()).unwrap_or(0.0))),
                    None => (Value::Null, Value::Null),
                };
                json!({
                    "network": n.name,
                    "bridge": n.bridge(),
                    "cluster": n.cluster,
                    "subnets": Self::local_subnets(n),
                    "routes": s.cluster_routes.get(&n.name).cloned().unwrap_or_default(),
                    "endpoints": s.cluster_endpoints.get(&n.name).map_or(0, Vec::len),
                    "agent": agent,
                    "reported_seconds_ago": age,
                })
            })
            .collect();
        json!(out)
    }

    /// Gives the network its conntrack zone (every network tracks its
    /// connections: a first policy then finds them known, not invalid).
    fn zone(s: &mut State, spec: &NetworkSpec) -> Result<()> {
        if !s.zones.contains_key(&spec.name) {
            let used: BTreeSet<u16> = s.zones.values().copied().collect();
            let zone = (1000..u16::MAX).find(|z| !used.contains(z)).ok_or(Error::Full("conntrack zones"))?;
            s.zones.insert(spec.name.clone(), zone);
        }
        Ok(())
    }

    /// Makes the network's rules in the flow table what its state says:
    /// its own, its attachments', its policies'.
    fn sync(&self, s: &State, spec: &NetworkSpec) -> Result<()> {
        let w = self.wiring(s, spec);
        let atts: Vec<&Attachment> = s.attachments.iter().filter(|a| a.network == spec.name).collect();
        let policies: Vec<&policy::Policy> = s.policies.values().filter(|p| p.network == spec.name).collect();
        let cookie = network_cookie(&spec.name);
        let policy_rules = if policies.is_empty() {
            Vec::new()
        } else {
            let input = self.policy_input(s, spec, policies, atts.clone());
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            policy::compile(&input, slots.entry(spec.name.clone()).or_default())?.0
        };
        flows::sync(&self.switch, spec, &atts, &w, policy_rules, cookie)
    }

    fn policy_input<'a>(
        &self,
        s: &'a State,
        spec: &NetworkSpec,
        policies: Vec<&'a policy::Policy>,
        attachments: Vec<&'a Attachment>,
    ) -> policy::Input<'a> {
        let host = if spec.gateway() {
            self.gateway_set(s, spec).unwrap_or_default().into_iter().map(|n| n.addr()).collect()
        } else {
            Vec::new()
        };
        let mut published = Vec::new();
        if let Some(m) = &spec.masquerade {
            for a in &attachments {
                let Some(to) = a.ips.iter().map(|i| i.address.addr()).find(IpAddr::is_ipv4) else { continue };
                for pm in &a.port_mappings {
                    published.push(policy::Published {
                        proto: if pm.protocol == "udp" { 17 } else { 6 },
                        address: m.address.addr(),
                        host_port: pm.host_port,
                        to,
                        container_port: pm.container_port,
                    });
                }
            }
        }
        // Only the endpoints of hosts the network routes to now.
        let routes = self.wiring(s, spec).cluster.map(|c| c.routes).unwrap_or_default();
        let remote = s
            .cluster_endpoints
            .get(&spec.name)
            .into_iter()
            .flatten()
            .filter(|e| routes.iter().any(|r| r.subnet.contains(&e.ip)))
            .collect();
        policy::Input {
            policies,
            attachments,
            remote,
            host,
            gateway: spec.gateway().then(|| (spec.bridge().to_string(), gateway_mac(spec))),
            published,
            cookie: network_cookie(&spec.name) | u64::from(flows::POLICY_ID),
            cont: flows::CONT,
        }
    }

    /// Brings the network to its spec: zone, uplink port and agent with
    /// masquerade, and every rule.
    fn wire(&self, s: &mut State, spec: &NetworkSpec) -> Result<()> {
        let sw = &self.switch;
        Self::zone(s, spec)?;
        let mut agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        // A new agent for a new configuration (its rules go with the old).
        if agents.remove(&spec.name).is_some() {
            let _ = sw.del_port(&agent_port(&spec.name));
        }
        if sw.bridges().iter().any(|b| b.name == spec.bridge()) {
            flows::remove(sw, spec.bridge(), neighbour_cookie(&spec.name), false)?;
        }
        // A VXLAN cluster's tunnel port first: the rules name it.
        self.cluster_tunnel(spec)?;
        let Some(m) = &spec.masquerade else {
            return self.sync(s, spec);
        };
        // The uplink and the agent are access ports of a VLAN no
        // container is on: NORMAL never floods container traffic to
        // them; only the routing rules send anything there.
        let outside = outside_vlan(spec);
        match sw.port_spec(&m.uplink) {
            Ok((b, p)) if b == spec.bridge() => {
                if let Some(mut p) = p
                    && (p.tag != Some(outside) || !p.trunks.is_empty())
                {
                    (p.tag, p.trunks) = (Some(outside), Vec::new());
                    sw.set_port_spec(&p)?;
                }
            }
            Ok((b, _)) => {
                return Err(Error::invalid("network", format!("the uplink '{}' is a port of bridge '{b}'", m.uplink)));
            }
            Err(_) => {
                let mut p = PortSpec::new(&m.uplink, self.kernel_type);
                p.tag = Some(outside);
                p.external_ids.insert("network".into(), spec.name.clone());
                p.external_ids.insert("role".into(), "uplink".into());
                sw.add_port_spec(spec.bridge(), &p, OnOpenError::Fail)?;
            }
        }
        let name = agent_port(&spec.name);
        let cfg = agent::AgentConfig {
            bridge: spec.bridge().to_string(),
            uplink: m.uplink.clone(),
            addr: match m.address.addr() {
                IpAddr::V4(a) => a,
                IpAddr::V6(_) => return Err(Error::invalid("network", "the masquerade address is IPv4")),
            },
            prefix: m.address.prefix_len(),
            mac: uplink_mac(spec),
            gateway: m.gateway,
            cookie: neighbour_cookie(&spec.name),
        };
        let vias = self.vias(s, spec);
        // The agent's port first: the network's rules name it.
        let port =
            sw.add_memory_port(spec.bridge(), &name, crate::PortConfig { vlan: crate::VlanMode::access(outside)? })?;
        if let Err(e) = self.sync(s, spec) {
            let _ = sw.del_port(&name);
            return Err(e);
        }
        let a = agent::start(sw.clone(), port, cfg);
        a.set_vias(vias);
        agents.insert(spec.name.clone(), a);
        Ok(())
    }

    /// Every gateway address of the network (with its prefix).
    fn gateway_set(&self, s: &State, spec: &NetworkSpec) -> Result<BTreeSet<IpNet>> {
        let mut addrs: BTreeSet<IpNet> = BTreeSet::new();
        if let Some(ipam) = &spec.ipam {
            for r in ipam.range_sets()?.iter().flatten() {
                addrs.insert(
                    IpNet::new(r.gateway(), r.subnet.prefix_len())
                        .map_err(|e| Error::invalid("ipam", e.to_string()))?,
                );
            }
        }
        for a in s.attachments.iter().filter(|a| a.network == spec.name) {
            for ip in &a.ips {
                if let Some(g) = ip.gateway
                    && let Ok(n) = IpNet::new(g, ip.address.prefix_len())
                {
                    addrs.insert(n);
                }
            }
        }
        Ok(addrs)
    }

    /// Puts every gateway address of the network on its gateway port.
    fn gateway_addresses(&self, s: &State, spec: &NetworkSpec) -> Result<()> {
        if !spec.gateway() {
            return Ok(());
        }
        let addrs = self.gateway_set(s, spec)?;
        plumb::gateway_port(spec.bridge(), gateway_mac(spec), &addrs.into_iter().collect::<Vec<_>>(), spec.mtu)
    }

    /// Deletes a network without attachments: its rules, its gateway port,
    /// and its bridge if nothing else is on it.
    ///
    /// # Errors
    /// [`Error::NotFound`] (without `if_exists`); [`Error::InvalidArgument`]
    /// while it has attachments.
    pub fn delete(&self, name: &str, if_exists: bool) -> Result<()> {
        let mut s = self.lock();
        let Some(spec) = s.networks.get(name).cloned() else {
            return if if_exists { Ok(()) } else { Err(Error::NotFound(format!("no network named '{name}'"))) };
        };
        let n = s.attachments.iter().filter(|a| a.network == name).count();
        if n > 0 {
            return Err(Error::invalid(
                "network",
                format!("network '{name}' still has {n} attachment(s): detach them first"),
            ));
        }
        if let Some(p) = s.policies.values().find(|p| p.network == name) {
            return Err(Error::invalid(
                "network",
                format!("network '{name}' still has policy '{}': delete its policies first", p.name),
            ));
        }
        let sw = &self.switch;
        self.unwire(&mut s, &spec)?;
        if sw.bridges().iter().any(|b| b.name == spec.bridge()) {
            if spec.gateway() {
                let _ = sw.del_port(spec.bridge());
            }
            if sw.bridges().iter().find(|b| b.name == spec.bridge()).is_some_and(|b| b.ports.is_empty()) {
                sw.del_bridge(spec.bridge())?;
            }
        }
        s.networks.remove(name);
        s.cluster_routes.remove(name);
        s.cluster_endpoints.remove(name);
        self.agent_reports.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
        self.save(&s)
    }

    /// Attaches a container interface (CNI ADD, `vswitch-ctl net-attach`);
    /// returns the CNI result (interfaces, ips, routes, dns). All or
    /// nothing: on failure the veth pair, the port and the addresses are
    /// gone again.
    ///
    /// # Errors
    /// [`Error::NotFound`] for a missing network or namespace,
    /// [`Error::Exists`] for an interface already in the namespace or an
    /// attachment already made; IPAM's and the switch's errors.
    pub fn attach(&self, a: AttachArgs) -> Result<Value> {
        let mut s = self.lock();
        if let Some(spec) = a.spec.clone() {
            if spec.name != a.network {
                return Err(Error::invalid("network", "the spec's name is not the network's"));
            }
            if s.networks.get(&a.network) != Some(&spec) {
                self.apply_network(&mut s, spec)?;
            }
        }
        let spec = s
            .networks
            .get(&a.network)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("no network named '{}'", a.network)))?;
        if s.position(&a.network, &a.container_id, &a.ifname).is_some() {
            return Err(Error::Exists(format!(
                "container '{}' already has '{}' on network '{}'",
                a.container_id, a.ifname, a.network
            )));
        }
        self.check_mappings(&s, &spec, &a.port_mappings)?;
        if a.container_id.is_empty() || a.ifname.is_empty() || a.ifname.len() >= 16 || a.ifname.contains(['/', ' ']) {
            return Err(Error::invalid(
                "attachment",
                "a container id and an interface name (1 to 15 bytes) are needed",
            ));
        }
        // Addresses: the delegated plugin's, or the built-in IPAM's.
        let (ips, mut routes, builtin) = match (&a.ips, &spec.ipam) {
            (Some(ips), _) => (ips.clone(), a.routes.clone(), false),
            (None, Some(cfg)) => {
                let ips = self.pool(&spec).allocate(cfg, &a.container_id, &a.ifname, &a.request_ips)?;
                (ips, cfg.routes.clone(), true)
            }
            (None, None) => (Vec::new(), a.routes.clone(), false),
        };
        let release = || {
            if builtin {
                let _ = self.pool(&spec).release(&a.container_id, &a.ifname);
            }
        };
        if spec.is_default_gateway {
            for v4 in [true, false] {
                let dst: IpNet = if v4 { "0.0.0.0/0" } else { "::/0" }.parse().unwrap_or_default();
                if ips.iter().any(|i| i.address.addr().is_ipv4() == v4 && i.gateway.is_some())
                    && !routes.iter().any(|r| r.dst == dst)
                {
                    routes.push(RouteConfig { dst, gw: None });
                }
            }
        }
        let port = host_ifname(&a.network, &a.container_id, &a.ifname);
        let plan = plumb::Plan {
            netns: &a.netns,
            ifname: &a.ifname,
            host_if: &port,
            mtu: spec.mtu,
            mac: a.mac,
            ips: &ips,
            routes: &routes,
        };
        let plumbed = match plumb::create(&plan) {
            Ok(p) => p,
            Err(e) => {
                release();
                return Err(e);
            }
        };
        s.next_id = s.next_id.wrapping_add(1).max(1);
        let att = Attachment {
            network: a.network.clone(),
            container_id: a.container_id.clone(),
            ifname: a.ifname.clone(),
            netns: a.netns.clone(),
            port: port.clone(),
            mac: plumbed.container_mac,
            host_mac: plumbed.host_mac,
            ips,
            routes,
            dns: a.dns.clone(),
            labels: a.labels.clone(),
            builtin_ipam: builtin,
            port_mappings: a.port_mappings.clone(),
            id: s.next_id,
        };
        let mut p = PortSpec::new(&port, self.kernel_type);
        p.tag = spec.vlan;
        p.external_ids.insert("network".into(), a.network.clone());
        p.external_ids.insert("container_id".into(), a.container_id.clone());
        p.external_ids.insert("ifname".into(), a.ifname.clone());
        let sw = &self.switch;
        let r = sw.add_port_spec(spec.bridge(), &p, OnOpenError::Fail).and_then(|_| {
            s.attachments.push(att.clone());
            let r = self.sync(&s, &spec).and_then(|()| self.gateway_addresses(&s, &spec)).and_then(|()| self.save(&s));
            if r.is_err() {
                s.attachments.pop();
                let _ = self.sync(&s, &spec);
                let _ = sw.del_port(&port);
            }
            r
        });
        if let Err(e) = r {
            let _ = plumb::remove(&port);
            release();
            return Err(e);
        }
        plumb::announce(&att.netns, &att.ifname, &att.ips);
        Ok(self.result(&spec, &att))
    }

    /// Published ports must be on a masquerading network, TCP or UDP, at
    /// its address, and free.
    fn check_mappings(&self, s: &State, spec: &NetworkSpec, maps: &[PortMapping]) -> Result<()> {
        if maps.is_empty() {
            return Ok(());
        }
        let Some(m) = &spec.masquerade else {
            return Err(Error::invalid(
                "port mapping",
                format!("network '{}' has no masquerade address to publish ports on", spec.name),
            ));
        };
        let mut seen = BTreeSet::new();
        for pm in maps {
            if pm.protocol != "tcp" && pm.protocol != "udp" {
                return Err(Error::invalid("port mapping", format!("protocol '{}' (tcp or udp)", pm.protocol)));
            }
            if pm.host_port == 0 || pm.container_port == 0 {
                return Err(Error::invalid("port mapping", "ports are 1 to 65535"));
            }
            let host_ip = pm.host_ip.as_deref().unwrap_or_default();
            if !host_ip.is_empty() && host_ip != "0.0.0.0" && host_ip.parse::<IpAddr>().ok() != Some(m.address.addr()) {
                return Err(Error::invalid(
                    "port mapping",
                    format!(
                        "hostIP {host_ip}: ports are published on the network's masquerade address {}",
                        m.address.addr()
                    ),
                ));
            }
            let taken = s
                .attachments
                .iter()
                .filter(|a| a.network == spec.name)
                .flat_map(|a| &a.port_mappings)
                .any(|o| o.protocol == pm.protocol && o.host_port == pm.host_port);
            if taken || !seen.insert((pm.protocol.clone(), pm.host_port)) {
                return Err(Error::Exists(format!(
                    "{}/{} is already published on network '{}'",
                    pm.host_port, pm.protocol, spec.name
                )));
            }
        }
        Ok(())
    }

    /// The CNI result of an attachment (1.x layout; the plugin converts).
    fn result(&self, spec: &NetworkSpec, att: &Attachment) -> Value {
        let mut interfaces = Vec::new();
        if spec.gateway() {
            interfaces.push(json!({ "name": spec.bridge(), "mac": gateway_mac(spec) }));
        }
        interfaces.push(json!({ "name": att.port, "mac": att.host_mac }));
        let container = interfaces.len();
        let mut c = json!({ "name": att.ifname, "mac": att.mac, "sandbox": att.netns });
        if let Some(mtu) = spec.mtu {
            c["mtu"] = json!(mtu);
        }
        interfaces.push(c);
        let ips: Vec<Value> = att
            .ips
            .iter()
            .map(|i| {
                let mut v = json!({ "address": i.address, "interface": container });
                if let Some(g) = i.gateway {
                    v["gateway"] = json!(g);
                }
                v
            })
            .collect();
        let mut r = json!({ "interfaces": interfaces, "ips": ips, "routes": att.routes });
        if !att.dns.is_null() {
            r["dns"] = att.dns.clone();
        }
        r
    }

    /// Detaches a container interface (CNI DEL): port, rules, veth pair,
    /// addresses. Whatever is already gone is skipped: a repeated DEL, a
    /// DEL after the namespace went, a DEL after a failed ADD all succeed.
    ///
    /// # Errors
    /// Only a failure to remove something that is there.
    pub fn detach(&self, network: &str, container_id: &str, ifname: &str, spec: Option<&NetworkSpec>) -> Result<Value> {
        let mut s = self.lock();
        let known = s.networks.get(network).cloned().or_else(|| spec.cloned());
        let at = s.position(network, container_id, ifname);
        let port = at.map_or_else(|| host_ifname(network, container_id, ifname), |i| s.attachments[i].port.clone());
        let sw = &self.switch;
        // Its rules go first (they name its port), with the record. With
        // policies, a new generation: its address's leftover connections
        // are judged again should the address come back with another
        // attachment. A network that is not wired (its uplink gone)
        // cannot sync; it is synced when it is wired again.
        let gone = at.map(|i| s.attachments.remove(i));
        if let (Some(att), Some(spec)) = (&gone, &known)
            && s.networks.contains_key(network)
        {
            if Self::has_policies(&s, network) {
                Self::next_generation(&mut s, network);
            }
            let unwired = self.unwired.lock().unwrap_or_else(|e| e.into_inner()).contains_key(network);
            if let Err(e) = self.sync(&s, spec)
                && !unwired
            {
                s.attachments.push(att.clone());
                return Err(e);
            }
        }
        // From here a failure leaves no record: a retried DEL finds the
        // port, the veth and the reservations by their derived names.
        let r = (|| {
            match sw.del_port(&port) {
                Ok(()) | Err(Error::PortNotFound(_)) => {}
                Err(e) => return Err(e),
            }
            let removed = plumb::remove(&port)?;
            let mut released = Vec::new();
            if let Some(spec) = &known
                && (spec.ipam.is_some() || gone.as_ref().is_some_and(|a| a.builtin_ipam))
            {
                released = self.pool(spec).release(container_id, ifname)?;
            }
            Ok((removed, released))
        })();
        if gone.is_some() {
            self.save(&s)?;
        }
        let (removed, released) = r?;
        Ok(json!({ "attachment": at.is_some(), "veth": removed, "released": released }))
    }

    /// CNI CHECK: the attachment is recorded, its port is on the bridge,
    /// its interface in the namespace has its addresses (and `ips`, the
    /// runtime's prevResult) and routes, and built-in reservations hold.
    ///
    /// # Errors
    /// The first thing that is not as it should be.
    pub fn check(&self, network: &str, container_id: &str, ifname: &str, ips: &[IpConfig]) -> Result<()> {
        let s = self.lock();
        let spec = s.networks.get(network).ok_or_else(|| Error::NotFound(format!("no network named '{network}'")))?;
        let att = s.position(network, container_id, ifname).map(|i| &s.attachments[i]).ok_or_else(|| {
            Error::NotFound(format!("container '{container_id}' has no '{ifname}' on network '{network}'"))
        })?;
        match self.switch.port_spec(&att.port) {
            Ok((b, _)) if b == spec.bridge() => {}
            _ => return Err(Error::NotFound(format!("port '{}' is not on bridge '{}'", att.port, spec.bridge()))),
        }
        if let Some(err) = self
            .switch
            .bridges()
            .iter()
            .flat_map(|b| &b.ports)
            .find(|p| p.name == att.port)
            .and_then(|p| p.error.clone())
        {
            return Err(Error::invalid("attachment", format!("port '{}' is not working: {err}", att.port)));
        }
        for ip in ips {
            if !att.ips.iter().any(|a| a.address == ip.address) {
                return Err(Error::invalid(
                    "attachment",
                    format!("address {} was not given to this attachment", ip.address),
                ));
            }
        }
        plumb::check(&att.netns, ifname, &att.ips, &att.routes)?;
        if att.builtin_ipam {
            let pool = self.pool(spec);
            for ip in &att.ips {
                if !pool.holds(ip.address.addr(), container_id, ifname) {
                    return Err(Error::NotFound(format!("the reservation of {} is missing", ip.address.addr())));
                }
            }
        }
        Ok(())
    }

    /// CNI GC: detaches every attachment of `network` not in `valid`, and
    /// releases every built-in reservation whose owner is not in it.
    ///
    /// # Errors
    /// The first detachment that fails.
    pub fn gc(&self, network: &str, valid: BTreeSet<(String, String)>, spec: Option<&NetworkSpec>) -> Result<Value> {
        let stale: Vec<(String, String)> = self
            .lock()
            .attachments
            .iter()
            .filter(|a| a.network == network && !valid.contains(&(a.container_id.clone(), a.ifname.clone())))
            .map(|a| (a.container_id.clone(), a.ifname.clone()))
            .collect();
        // One stale attachment that cannot go does not keep the rest.
        let mut first_error = None;
        let mut removed = Vec::new();
        for (id, ifname) in &stale {
            match self.detach(network, id, ifname, spec) {
                Ok(_) => removed.push(json!({ "container_id": id, "ifname": ifname })),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let known = self.lock().networks.get(network).cloned().or_else(|| spec.cloned());
        let released = match known {
            Some(spec) if spec.ipam.is_some() => self.pool(&spec).gc(&valid)?,
            _ => Vec::new(),
        };
        match first_error {
            Some(e) => Err(e),
            None => Ok(json!({ "removed": removed, "released": released })),
        }
    }

    /// Changes an attachment's labels: `set` added or changed, `remove`
    /// removed. Policies select by them at once (a new generation: its
    /// established connections are judged again at their next packet).
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown attachment; nothing changes on
    /// error.
    pub fn label(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
        set: BTreeMap<String, String>,
        remove: &[String],
    ) -> Result<()> {
        let mut s = self.lock();
        let i = s.position(network, container_id, ifname).ok_or_else(|| {
            Error::NotFound(format!("container '{container_id}' has no '{ifname}' on network '{network}'"))
        })?;
        let spec =
            s.networks.get(network).cloned().ok_or_else(|| Error::NotFound(format!("no network named '{network}'")))?;
        if let Some(k) = set.keys().chain(remove).find(|k| k.is_empty() || k.contains(['=', ','])) {
            return Err(Error::invalid("label", format!("'{k}' is not a label key")));
        }
        let before = s.attachments[i].labels.clone();
        let labels = &mut s.attachments[i].labels;
        for k in remove {
            labels.remove(k);
        }
        labels.extend(set);
        if s.attachments[i].labels == before {
            return Ok(());
        }
        let policies = Self::has_policies(&s, network);
        if policies {
            Self::next_generation(&mut s, network);
        }
        let r = if policies { self.sync(&s, &spec) } else { Ok(()) }.and_then(|()| self.save(&s));
        if r.is_err() {
            s.attachments[i].labels = before;
            if policies {
                let _ = self.sync(&s, &spec);
            }
        }
        r
    }

    /// Adds policy `p`, or replaces the one of that name, and applies it
    /// at once: new connections are judged by it, established ones at
    /// their next packet.
    ///
    /// # Errors
    /// [`Error::NotFound`] for a missing network, [`Error::Exists`] for a
    /// name another network's policy has, [`Error::Full`] beyond the
    /// rules a network's direction can hold; nothing changes then.
    pub fn add_policy(&self, p: policy::Policy) -> Result<()> {
        let mut s = self.lock();
        let spec = s
            .networks
            .get(&p.network)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("no network named '{}'", p.network)))?;
        if let Some(old) = s.policies.get(&p.name)
            && old.network != p.network
        {
            return Err(Error::Exists(format!("policy '{}' belongs to network '{}'", p.name, old.network)));
        }
        let prev = s.policies.insert(p.name.clone(), p.clone());
        self.policies_changed(&mut s, &spec, |s| match prev {
            Some(old) => {
                s.policies.insert(old.name.clone(), old);
            }
            None => {
                s.policies.remove(&p.name);
            }
        })
    }

    /// Deletes policy `name`.
    ///
    /// # Errors
    /// [`Error::NotFound`] (without `if_exists`).
    pub fn delete_policy(&self, name: &str, if_exists: bool) -> Result<()> {
        let mut s = self.lock();
        let Some(old) = s.policies.remove(name) else {
            return if if_exists { Ok(()) } else { Err(Error::NotFound(format!("no policy named '{name}'"))) };
        };
        let Some(spec) = s.networks.get(&old.network).cloned() else {
            return self.save(&s);
        };
        self.policies_changed(&mut s, &spec, |s| {
            s.policies.insert(old.name.clone(), old);
        })
    }

    /// A new policy generation for `network`: its connections are judged
    /// again at their next packet.
    fn next_generation(s: &mut State, network: &str) {
        let next = s.policy_gen.get(network).copied().unwrap_or(0).wrapping_add(1).max(1);
        s.policy_gen.insert(network.to_string(), next);
    }

    /// After a change to the network's policies (already in `s`): a new
    /// generation, the zone, the rules, saved; on failure `undo` puts
    /// the old policies back and they are applied again.
    fn policies_changed(&self, s: &mut State, spec: &NetworkSpec, undo: impl FnOnce(&mut State)) -> Result<()> {
        Self::next_generation(s, &spec.name);
        let r = Self::zone(s, spec).and_then(|()| self.sync(s, spec)).and_then(|()| self.save(s));
        if let Err(e) = r {
            // The generation only moves forward: a change that timed out
            // may still reach the datapath, and its commits must not pass
            // for a later generation's.
            undo(s);
            let _ = self.sync(s, spec);
            let _ = self.save(s);
            return Err(e);
        }
        Ok(())
    }

    /// The policies (of `network`, or all) with what each selects and
    /// its rules' counters: the packets each allowed (a connection's
    /// first, and its next after a policy change), and per direction the
    /// packets the network's policies denied.
    pub fn list_policies(&self, network: Option<&str>) -> Value {
        let s = self.lock();
        let mut out = Vec::new();
        for spec in s.networks.values().filter(|n| network.is_none_or(|x| x == n.name)) {
            let policies: Vec<&policy::Policy> = s.policies.values().filter(|p| p.network == spec.name).collect();
            if policies.is_empty() {
                continue;
            }
            let atts: Vec<&Attachment> = s.attachments.iter().filter(|a| a.network == spec.name).collect();
            let input = self.policy_input(&s, spec, policies.clone(), atts.clone());
            let ids = {
                let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
                policy::compile(&input, slots.entry(spec.name.clone()).or_default()).map(|c| c.1).unwrap_or_default()
            };
            let cookie = network_cookie(&spec.name);
            let counts: BTreeMap<u64, u64> = self
                .switch
                .dump_flows_matching(spec.bridge(), &format!("cookie={cookie:#x}/0xffffffff00000000"))
                .unwrap_or_default()
                .into_iter()
                .fold(BTreeMap::new(), |mut m, f| {
                    *m.entry(f.cookie).or_default() += f.n_packets;
                    m
                });
            let denied = |d| counts.get(&(cookie | u64::from(policy::deny_cookie_bits(d)))).copied().unwrap_or(0);
            for p in policies {
                let rules: Vec<Value> = ids
                    .iter()
                    .filter(|((_, name, _), _)| *name == p.name)
                    .map(|((d, _, i), c)| json!({ "direction": d, "rule": i, "allowed_packets": counts.get(c).copied().unwrap_or(0) }))
                    .collect();
                let selects: Vec<Value> = atts
                    .iter()
                    .filter(|a| p.pod_selector.matches(&a.labels))
                    .map(|a| json!({ "container_id": a.container_id, "ifname": a.ifname }))
                    .collect();
                let mut d = serde_json::Map::new();
                for dir in [policy::Direction::Ingress, policy::Direction::Egress] {
                    if p.applies(dir) {
                        d.insert(format!("{dir:?}").to_lowercase(), json!(denied(dir)));
                    }
                }
                out.push(json!({
                    "name": p.name,
                    "network": p.network,
                    "generation": s.policy_gen.get(&spec.name).copied().unwrap_or(1),
                    "policy": p,
                    "selects": selects,
                    "rules": rules,
                    "network_denied_packets": d,
                }));
            }
        }
        json!(out)
    }

    /// The attachments of `network` (all networks with `None`).
    pub fn attachments(&self, network: Option<&str>) -> Vec<Attachment> {
        self.lock().attachments.iter().filter(|a| network.is_none_or(|n| a.network == n)).cloned().collect()
    }
}
