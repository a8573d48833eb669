//! Tunnel ports: VXLAN (`type=vxlan`, RFC 7348) and GRE (`type=gre`,
//! RFC 2784/2890, transparent Ethernet bridging) overlays that talk to the
//! Linux kernel's own `vxlan` and `gretap` devices.
//!
//! The underlay is the host's IP stack: VXLAN is received on a UDP socket
//! bound to the local endpoint (`local_ip`:`dst_port`) and GRE on a raw
//! IPPROTO_GRE socket, both read in batches with `recvmmsg`; packets are
//! sent with `sendmmsg` on a raw socket per port, with our own UDP (source
//! port from a hash of the inner flow, checksum zero) or GRE header and the
//! kernel's outer IPv4 header (routing, neighbours, `tos`, `ttl`, DF set).
//! A frame that would not fit the path MTU once encapsulated is refused by
//! the kernel (EMSGSIZE) and counted as `too_big`; the inner MTU the path
//! allows is reported in the port's status (`inner_mtu`).
//!
//! Ports that share a local endpoint share its receive socket: whichever
//! port's thread reads it hands each packet to the port whose `remote_ip`
//! and key match (an exact remote before `remote_ip=flow`, an exact key
//! before `key=flow`), waking that port's thread. A packet no port matches
//! is counted as `tunnel_unknown`, a malformed one as `tunnel_malformed`,
//! on the port that read it.
//!
//! Received packets carry their key and outer addresses as tunnel metadata
//! (`tun_id`, `tun_src`, `tun_dst` in flow rules). On transmit, a port with
//! `key=flow` (or `out_key=flow`) uses the packet's `tun_id` (`set_tunnel`)
//! and one with `remote_ip=flow` its `tun_dst` (`set_field:IP->tun_dst`).

pub mod native;
pub mod wire;

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use super::deferred::PortStatus;
use super::{DropReason, Port, TxOutcome};
use crate::datapath::Wakeup;
use crate::packet::{Packet, PacketPool, TunnelMeta};
use crate::port::spec::{PortKind, PortSpec};
use crate::port::upkeep::{SlowHalf, Upkeep};
use crate::sys::tunnel_sock::{Datagram, RxSocket, TxSocket, Underlay, dup, route_mtu, underlay};
use crate::{Error, Result};
use wire::Malformed;

/// VXLAN's IANA port.
pub const VXLAN_PORT: u16 = 4789;
/// Packets a port's hand-over queue holds before more are dropped.
const QUEUE_MAX: usize = 4096;
/// How often the path MTU is looked up again.
const MTU_REFRESH_MS: u64 = 5_000;

/// The two encapsulations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encap {
    /// VXLAN over UDP.
    Vxlan,
    /// GRE carrying Ethernet.
    Gre,
}

impl Encap {
    fn name(self) -> &'static str {
        match self {
            Encap::Vxlan => "vxlan",
            Encap::Gre => "gre",
        }
    }

    /// Outer bytes in front of the inner frame, IPv4 header included.
    fn overhead(self, key: bool) -> u32 {
        match self {
            Encap::Vxlan => 20 + 8 + 8,
            Encap::Gre => 20 + 4 + if key { 4 } else { 0 },
        }
    }
}

/// A key setting: a fixed value, none (GRE without a key), or taken from
/// the packet (`flow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    /// No key (GRE only).
    None,
    /// This VNI or GRE key.
    Fixed(u32),
    /// Any key on receive; the packet's `tun_id` on transmit.
    Flow,
}

/// A remote endpoint setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Remote {
    /// This address.
    Ip(Ipv4Addr),
    /// Any remote on receive; the packet's `tun_dst` on transmit.
    Flow,
}

/// A tunnel port's settings, from its `options:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelConfig {
    /// VXLAN or GRE.
    pub encap: Encap,
    /// `remote_ip` (required): an IPv4 address or `flow`.
    pub remote: Remote,
    /// `local_ip`: the local endpoint (default: any local address).
    pub local: Option<Ipv4Addr>,
    /// `in_key` (or `key`): what received packets must carry.
    pub in_key: Key,
    /// `out_key` (or `key`): what sent packets carry.
    pub out_key: Key,
    /// `dst_port` (VXLAN, default 4789).
    pub dst_port: u16,
    /// `tos` of the outer header (default 0).
    pub tos: u8,
    /// `ttl` of the outer header (default 64).
    pub ttl: u8,
    /// `uplink`: the switch's port to send and receive through (native
    /// tunnelling, see [`native`]); none: the kernel's sockets.
    pub uplink: Option<String>,
}

fn parse_key(encap: Encap, key: &str, v: &str) -> Result<Key> {
    if v == "flow" {
        return Ok(Key::Flow);
    }
    let n = match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse::<u64>().ok(),
    };
    let max = if encap == Encap::Vxlan { 0xff_ffff } else { u32::MAX as u64 };
    match n {
        Some(n) if n <= max => Ok(Key::Fixed(n as u32)),
        _ => Err(Error::invalid("option", format!("{key}={v}: expected flow or a number up to {max:#x}"))),
    }
}

impl TunnelConfig {
    /// The settings of a `vxlan` or `gre` port spec.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming a missing, unknown or bad option.
    pub fn from_spec(spec: &PortSpec) -> Result<TunnelConfig> {
        let encap = match spec.kind {
            PortKind::Vxlan => Encap::Vxlan,
            PortKind::Gre => Encap::Gre,
            other => return Err(Error::invalid("port type", format!("'{other}' is not a tunnel"))),
        };
        let mut known = vec!["remote_ip", "local_ip", "key", "in_key", "out_key", "tos", "ttl", "uplink"];
        if encap == Encap::Vxlan {
            known.push("dst_port");
        }
        spec.no_options(&known)?;
        let o = &spec.options;
        let remote = match o.get("remote_ip").map(String::as_str) {
            None => return Err(Error::invalid("option", format!("a {} port needs options:remote_ip", encap.name()))),
            Some("flow") => Remote::Flow,
            Some(v) => {
                Remote::Ip(v.parse().map_err(|_| {
                    Error::invalid("option", format!("remote_ip={v}: expected an IPv4 address or flow"))
                })?)
            }
        };
        let local = o
            .get("local_ip")
            .map(|v| v.parse().map_err(|_| Error::invalid("option", format!("local_ip={v}: expected an IPv4 address"))))
            .transpose()?;
        let default = if encap == Encap::Vxlan { Key::Fixed(0) } else { Key::None };
        let key = o.get("key").map(|v| parse_key(encap, "key", v)).transpose()?.unwrap_or(default);
        let in_key = o.get("in_key").map(|v| parse_key(encap, "in_key", v)).transpose()?.unwrap_or(key);
        let out_key = o.get("out_key").map(|v| parse_key(encap, "out_key", v)).transpose()?.unwrap_or(key);
        let dst_port = spec.option::<u16>("dst_port")?.unwrap_or(VXLAN_PORT);
        if dst_port == 0 {
            return Err(Error::invalid("option", "dst_port=0 is not a port"));
        }
        let tos = spec.option::<u8>("tos")?.unwrap_or(0);
        let ttl = spec.option::<u8>("ttl")?.unwrap_or(64);
        if ttl == 0 {
            return Err(Error::invalid("option", "ttl=0 would never arrive"));
        }
        let uplink = o.get("uplink").cloned();
        if uplink.as_deref().is_some_and(str::is_empty) {
            return Err(Error::invalid("option", "uplink= needs a port name"));
        }
        Ok(TunnelConfig { encap, remote, local, in_key, out_key, dst_port, tos, ttl, uplink })
    }

    fn endpoint_key(&self) -> EndpointKey {
        let port = if self.encap == Encap::Vxlan { self.dst_port } else { 0 };
        (self.encap, self.local.unwrap_or(Ipv4Addr::UNSPECIFIED), port)
    }
}

/// (encapsulation, local address, UDP port): one receive socket each.
type EndpointKey = (Encap, Ipv4Addr, u16);

/// A port registered on an endpoint.
struct Member {
    id: u64,
    name: String,
    remote: Remote,
    key: Key,
    queue: VecDeque<Packet>,
    overflow: u64,
    wakeup: Arc<Wakeup>,
}

impl Member {
    /// Port `name` (number `id` on its endpoint or uplink), receiving what
    /// `cfg`'s remote and receive key select, woken through `wakeup`.
    fn new(id: u64, name: &str, cfg: &TunnelConfig, wakeup: Arc<Wakeup>) -> Member {
        Member {
            id,
            name: name.to_string(),
            remote: cfg.remote,
            key: cfg.in_key,
            queue: VecDeque::new(),
            overflow: 0,
            wakeup,
        }
    }

    /// How well the member matches a packet: lower is better, None not
    /// at all.
    fn rank(&self, src: Ipv4Addr, key: Option<u32>) -> Option<u8> {
        let remote = match self.remote {
            Remote::Ip(a) if a == src => 0,
            Remote::Ip(_) => return None,
            Remote::Flow => 2,
        };
        let k = match (self.key, key) {
            (Key::Fixed(a), Some(b)) if a == b => 0,
            (Key::None, None) => 0,
            (Key::Flow, _) => 1,
            _ => return None,
        };
        Some(remote + k)
    }
}

struct Shared {
    sock: RxSocket,
    members: Vec<Member>,
    dgrams: Vec<Datagram>,
    next_id: u64,
    /// Underlay interfaces by index.
    underlays: HashMap<u32, Underlay>,
}

/// A local tunnel endpoint: the receive socket its ports share.
struct Endpoint {
    key: EndpointKey,
    shared: Mutex<Shared>,
}

impl Endpoint {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn endpoints() -> &'static Mutex<HashMap<EndpointKey, Weak<Endpoint>>> {
    static ENDPOINTS: OnceLock<Mutex<HashMap<EndpointKey, Weak<Endpoint>>>> = OnceLock::new();
    ENDPOINTS.get_or_init(Default::default)
}

/// The endpoint for `key`, opening its socket if no port has it yet.
fn endpoint(key: EndpointKey) -> Result<Arc<Endpoint>> {
    let mut all = endpoints().lock().unwrap_or_else(|e| e.into_inner());
    all.retain(|_, w| w.strong_count() > 0);
    if let Some(ep) = all.get(&key).and_then(Weak::upgrade) {
        return Ok(ep);
    }
    let (encap, local, port) = key;
    let sock = match encap {
        Encap::Vxlan => RxSocket::udp(local, port),
        Encap::Gre => RxSocket::raw(libc::IPPROTO_GRE),
    }
    .map_err(|e| {
        let what = match encap {
            Encap::Vxlan => "bind the VXLAN UDP socket",
            Encap::Gre => "open the raw GRE socket",
        };
        Error::io(what, std::io::Error::new(e.kind(), format!("{local}:{port}: {e}")))
    })?;
    let ep = Arc::new(Endpoint {
        key,
        shared: Mutex::new(Shared {
            sock,
            members: Vec::new(),
            dgrams: Vec::new(),
            next_id: 1,
            underlays: HashMap::new(),
        }),
    });
    all.insert(key, Arc::downgrade(&ep));
    Ok(ep)
}

/// A VXLAN or GRE port.
pub struct TunnelPort {
    cfg: TunnelConfig,
    ep: Arc<Endpoint>,
    id: u64,
    tx: TxSocket,
    /// The endpoint's socket again, for this port's own epoll registration.
    wake: OwnedFd,
    malformed: u64,
    unknown: u64,
    overflow_seen: u64,
    /// The slow half (the route's MTU), until the switch takes it.
    mtu_watch: SlowHalf<MtuWatch>,
    headers: Vec<[u8; 16]>,
}

/// A tunnel port's slow half: the MTU of the route to its remote, read
/// from the kernel every few seconds and shown as the port's `inner_mtu`.
#[derive(Debug)]
struct MtuWatch {
    cfg: TunnelConfig,
    status: PortStatus,
    next_ms: u64,
}

impl Upkeep for MtuWatch {
    fn run(&mut self, now_ms: u64) {
        if now_ms < self.next_ms {
            return;
        }
        self.next_ms = now_ms + MTU_REFRESH_MS;
        let Remote::Ip(remote) = self.cfg.remote else { return };
        if let Ok(mtu) = route_mtu(remote) {
            let keyed = self.cfg.out_key != Key::None;
            let inner = mtu.saturating_sub(self.cfg.encap.overhead(keyed) + 14);
            self.status.set_info("inner_mtu", inner);
        }
    }
}

impl std::fmt::Debug for TunnelPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelPort").field("cfg", &self.cfg).field("id", &self.id).finish()
    }
}

impl TunnelPort {
    /// Opens a tunnel port named `name`: joins (or opens) its local
    /// endpoint and opens its send socket. `wakeup` is the datapath
    /// thread's, woken when another port's thread hands it packets.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if a port with the same remote and key is
    /// on the endpoint already; [`Error::Io`] if a socket cannot be opened
    /// (the UDP port is taken, no CAP_NET_RAW).
    pub fn open(name: &str, cfg: TunnelConfig, wakeup: Arc<Wakeup>, status: PortStatus) -> Result<TunnelPort> {
        let ep = endpoint(cfg.endpoint_key())?;
        let proto = match cfg.encap {
            Encap::Vxlan => libc::IPPROTO_UDP,
            Encap::Gre => libc::IPPROTO_GRE,
        };
        let tx = TxSocket::raw(proto, cfg.local, cfg.tos, Some(cfg.ttl))
            .map_err(|e| Error::io("open the tunnel's raw send socket", e))?;
        let mut sh = ep.lock();
        if let Some(m) = sh.members.iter().find(|m| m.remote == cfg.remote && m.key == cfg.in_key) {
            return Err(Error::invalid(
                "tunnel",
                format!("port '{}' already receives this remote_ip and key on the same local endpoint", m.name),
            ));
        }
        let wake = dup(sh.sock.fd()).map_err(|e| Error::io("dup the tunnel socket", e))?;
        let id = sh.next_id;
        sh.next_id += 1;
        sh.members.push(Member::new(id, name, &cfg, wakeup));
        drop(sh);
        let (_, local, port) = ep.key;
        status.set_info("local_endpoint", format!("{local}:{port}").trim_end_matches(":0"));
        let mtu_watch = SlowHalf::new(MtuWatch { cfg: cfg.clone(), status: status.clone(), next_ms: 0 });
        let mut p = TunnelPort {
            cfg,
            ep,
            id,
            tx,
            wake,
            malformed: 0,
            unknown: 0,
            overflow_seen: 0,
            mtu_watch,
            headers: Vec::new(),
        };
        p.mtu_watch.run_here(0);
        Ok(p)
    }

    /// Reads one batch from the endpoint's socket and hands each packet
    /// to its port's queue.
    fn demux(&mut self, sh: &mut Shared, pool: &mut PacketPool) {
        let Shared { sock, members, dgrams, underlays, .. } = sh;
        if sock.recv_batch(dgrams) == 0 {
            return;
        }
        let (encap, local, _) = self.ep.key;
        for (i, d) in dgrams.iter().enumerate() {
            let data = &sock.buf(i)[..d.len];
            let parsed = match encap {
                Encap::Vxlan if d.truncated => Err(Malformed::Short),
                Encap::Vxlan => wire::parse_vxlan(data).map(|(vni, at)| (d.src, d.dst, Some(vni), at)),
                Encap::Gre => match wire::parse_gre(data) {
                    // Another local address's packet (a raw socket sees all).
                    Ok(g) if !local.is_unspecified() && g.dst != local => continue,
                    Ok(_) if d.truncated => Err(Malformed::Short),
                    r => r.map(|g| (g.src, g.dst, g.key, g.inner)),
                },
            };
            let Ok((src, dst, key, at)) = parsed else {
                self.malformed += 1;
                continue;
            };
            let best = members.iter_mut().filter_map(|m| Some((m.rank(src, key)?, m))).min_by_key(|(r, _)| *r);
            let Some((_, m)) = best else {
                self.unknown += 1;
                continue;
            };
            if m.queue.len() >= QUEUE_MAX {
                m.overflow += 1;
                continue;
            }
            let mut p = pool.get();
            p.set_frame(&data[at..]);
            let under = *underlays.entry(d.ifindex).or_insert_with(|| underlay(d.ifindex));
            if under.is_virtual {
                // Over a veth the sender's GSO may arrive unsegmented and
                // its inner checksums still left to offload. A TCP frame
                // longer than the tunnel could carry is described as the
                // segments it stands for; any other gets its checksum.
                let ip_mtu = under.mtu.saturating_sub(encap.overhead(key.is_some()) + 14) as usize;
                if !p.mark_tcp_gso(ip_mtu) {
                    crate::wire::checksum::complete_l4_checksum(p.data_mut());
                }
            }
            p.tunnel = Some(TunnelMeta { id: key.unwrap_or(0) as u64, src, dst });
            let was_empty = m.queue.is_empty();
            m.queue.push_back(p);
            if m.id != self.id && was_empty {
                m.wakeup.notify();
            }
        }
    }
}

impl Drop for TunnelPort {
    fn drop(&mut self) {
        let mut sh = self.ep.lock();
        if let Some(i) = sh.members.iter().position(|m| m.id == self.id) {
            sh.members.swap_remove(i);
        }
    }
}

fn tx_reason(e: &std::io::Error) -> DropReason {
    match e.raw_os_error() {
        Some(libc::EMSGSIZE) => DropReason::TooBig,
        Some(libc::EAGAIN) | Some(libc::ENOBUFS) => DropReason::TxQueueFull,
        Some(libc::ENETDOWN) | Some(libc::ENETUNREACH) | Some(libc::EHOSTUNREACH) => DropReason::LinkDown,
        _ => DropReason::TxError,
    }
}

impl Port for TunnelPort {
    fn kind(&self) -> &'static str {
        self.cfg.encap.name()
    }

    fn rx_burst(&mut self, batch: &mut Vec<Packet>, max: usize, pool: &mut PacketPool) -> usize {
        let ep = self.ep.clone();
        let mut sh = ep.lock();
        self.demux(&mut sh, pool);
        let Some(me) = sh.members.iter_mut().find(|m| m.id == self.id) else { return 0 };
        let n = me.queue.len().min(max);
        let from = batch.len();
        batch.extend(me.queue.drain(..n));
        drop(sh);
        // Segments of a sender's super-frame that arrived one by one (a
        // physical underlay) are merged again, as the native mode does.
        crate::packet::coalesce_tcp(batch, from, pool);
        batch.len() - from
    }

    fn tx_burst(&mut self, batch: &mut Vec<Packet>, pool: &mut PacketPool) -> TxOutcome {
        let mut out = TxOutcome::default();
        let keyed = |k: Key, p: &Packet| match k {
            Key::None => None,
            Key::Fixed(k) => Some(k),
            Key::Flow => Some(p.tunnel.map_or(0, |t| t.id as u32)),
        };
        // Where each packet goes, and its header; unroutable ones leave.
        let mut dests = Vec::with_capacity(batch.len());
        self.headers.resize(batch.len(), [0; 16]);
        let mut keep = Vec::with_capacity(batch.len());
        for (i, p) in batch.drain(..).enumerate() {
            let remote = match self.cfg.remote {
                Remote::Ip(a) => a,
                Remote::Flow => match p.tunnel.map(|t| t.dst).filter(|a| !a.is_unspecified()) {
                    Some(a) => a,
                    None => {
                        out = out.with_drops(1, DropReason::TunnelNoRemote);
                        pool.put(p);
                        continue;
                    }
                },
            };
            let h = &mut self.headers[i];
            let len = match self.cfg.encap {
                Encap::Vxlan => {
                    let src = wire::src_port(wire::flow_hash(p.data()));
                    let vni = keyed(self.cfg.out_key, &p).unwrap_or(0) & 0xff_ffff;
                    h[..8].copy_from_slice(&wire::udp_header(src, self.cfg.dst_port, wire::VXLAN_LEN + p.len()));
                    h[8..16].copy_from_slice(&wire::vxlan_header(vni));
                    16
                }
                Encap::Gre => {
                    let (g, n) = wire::gre_header(keyed(self.cfg.out_key, &p));
                    h[..n].copy_from_slice(&g[..n]);
                    n
                }
            };
            dests.push((remote, i, len));
            keep.push(p);
        }
        let msgs: Vec<(Ipv4Addr, &[u8], &[u8])> =
            dests.iter().zip(&keep).map(|(&(r, i, n), p)| (r, &self.headers[i][..n], p.data())).collect();
        let mut at = 0;
        while at < msgs.len() {
            let (sent, err) = self.tx.send_batch(&msgs[at..]);
            out.sent += sent;
            out.sent_bytes += keep[at..at + sent].iter().map(|p| p.len() as u64).sum::<u64>();
            at += sent;
            if let Some(e) = err {
                // The message that failed is dropped; the rest go on.
                out = out.with_drops(1, tx_reason(&e));
                at += 1;
            }
        }
        drop(msgs);
        keep.into_iter().for_each(|p| pool.put(p));
        out
    }

    fn rx_pending(&self) -> bool {
        self.ep.lock().members.iter().any(|m| m.id == self.id && !m.queue.is_empty())
    }

    fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(self.wake.as_raw_fd())
    }

    fn housekeeping(&mut self, now_ms: u64) {
        // Only while nobody took the slow half.
        self.mtu_watch.run_here(now_ms);
    }

    fn upkeep(&mut self) -> Option<Box<dyn Upkeep>> {
        self.mtu_watch.take()
    }

    fn take_rx_drops(&mut self, count: &mut dyn FnMut(DropReason, u64)) {
        count(DropReason::TunnelMalformed, std::mem::take(&mut self.malformed));
        count(DropReason::TunnelUnknown, std::mem::take(&mut self.unknown));
        let overflow = self.ep.lock().members.iter().find(|m| m.id == self.id).map_or(0, |m| m.overflow);
        count(DropReason::RxRingFull, overflow - self.overflow_seen);
        self.overflow_seen = overflow;
    }
}
