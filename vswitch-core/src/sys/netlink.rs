//! rtnetlink: links (veth pairs), addresses and routes, in this thread's
//! network namespace, and [`enter_netns`] to move a thread into another.
//!
//! Messages are built and parsed here by hand: the handful the switch
//! needs (RTM_NEWLINK/DELLINK/GETLINK, RTM_SETLINK for XDP programs,
//! RTM_NEWADDR/GETADDR, RTM_NEWROUTE/GETROUTE) are a few lines each on
//! top of one TLV builder.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::cvt;

const NLMSG_HDR: usize = 16;
const IFINFOMSG: usize = 16;
const IFADDRMSG: usize = 8;
const RTMSG: usize = 12;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_FD: u16 = 1;
const IFLA_XDP_FLAGS: u16 = 3;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_F_NODAD: u8 = 0x02;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;
const RTA_PREFSRC: u16 = 7;
const RTA_MULTIPATH: u16 = 9;
/// struct rtnexthop: length, flags, hops, ifindex.
const RTNEXTHOP: usize = 8;
const RTA_TABLE: u16 = 15;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
pub(crate) const RTN_UNICAST: u8 = 1;
const RTN_BLACKHOLE: u8 = 6;
const RTN_PROHIBIT: u8 = 8;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// The messages of a reply: type and payload each.
type Replies = Vec<(u16, Vec<u8>)>;

/// One request being built: the netlink header, the family header, then
/// attributes (nests closed with [`Msg::end`]).
#[derive(Clone)]
struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Msg {
    fn new(kind: u16, flags: u16) -> Msg {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&(flags | libc::NLM_F_REQUEST as u16).to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // sequence, set when sent
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        Msg { buf, nests: Vec::new() }
    }

    fn align(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn bytes(mut self, b: &[u8]) -> Msg {
        self.buf.extend_from_slice(b);
        self.align();
        self
    }

    fn attr(mut self, ty: u16, data: &[u8]) -> Msg {
        self.buf.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.align();
        self
    }

    fn attr_str(self, ty: u16, s: &str) -> Msg {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.attr(ty, &v)
    }

    fn attr_u32(self, ty: u16, v: u32) -> Msg {
        self.attr(ty, &v.to_ne_bytes())
    }

    fn nest(mut self, ty: u16) -> Msg {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        self
    }

    fn end(mut self) -> Msg {
        let at = self.nests.pop().expect("end() without nest()");
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }
}

/// An ifinfomsg: family, type, index, flags, change mask.
fn ifinfomsg(index: u32, flags: u32, change: u32) -> [u8; IFINFOMSG] {
    let mut h = [0u8; IFINFOMSG];
    h[4..8].copy_from_slice(&(index as i32).to_ne_bytes());
    h[8..12].copy_from_slice(&flags.to_ne_bytes());
    h[12..16].copy_from_slice(&change.to_ne_bytes());
    h
}

fn family(ip: &IpAddr) -> u8 {
    if ip.is_ipv4() { libc::AF_INET as u8 } else { libc::AF_INET6 as u8 }
}

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn ip_from(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}

/// The attributes in `data`: (type without flags, payload).
fn attrs(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let ty = u16::from_ne_bytes([data[2], data[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > data.len() {
            return None;
        }
        let payload = &data[4..len];
        data = &data[len.next_multiple_of(4).min(data.len())..];
        Some((ty, payload))
    })
}

fn c_str(b: &[u8]) -> String {
    String::from_utf8_lossy(b.split(|&c| c == 0).next().unwrap_or_default()).into_owned()
}

/// A link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Link {
    pub(crate) index: u32,
    pub(crate) name: String,
    pub(crate) mac: [u8; 6],
    pub(crate) mtu: u32,
    pub(crate) up: bool,
}

/// An address on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Addr {
    pub(crate) index: u32,
    pub(crate) ip: IpAddr,
    pub(crate) prefix: u8,
}

/// A route of the main table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Route {
    pub(crate) dst: IpAddr,
    pub(crate) prefix: u8,
    pub(crate) gateway: Option<IpAddr>,
    pub(crate) oif: Option<u32>,
    /// The preferred source address (RTA_PREFSRC), in dumps only.
    pub(crate) prefsrc: Option<IpAddr>,
    /// The route's metric (RTA_PRIORITY): lower wins among equal prefixes.
    pub(crate) metric: u32,
    /// RTN_UNICAST, or a route that refuses: RTN_BLACKHOLE,
    /// RTN_UNREACHABLE, RTN_PROHIBIT (in dumps; added routes are unicast).
    pub(crate) rtype: u8,
}

impl Route {
    /// True for a route that refuses what it covers (blackhole,
    /// unreachable, prohibit).
    pub(crate) fn rejects(&self) -> bool {
        self.rtype != RTN_UNICAST
    }
}

/// A NETLINK_ROUTE socket of the calling thread's network namespace (the
/// namespace is fixed when it is opened).
#[derive(Debug)]
pub(crate) struct Rtnl {
    fd: OwnedFd,
    seq: u32,
}

impl Rtnl {
    pub(crate) fn open() -> io::Result<Rtnl> {
        // SAFETY: plain socket(2) call; the result is checked.
        let fd =
            cvt(unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) })?;
        // SAFETY: `fd` was just returned by the kernel and is owned by no one.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // Replies wait at most this long (the kernel answers at once; a
        // lost reply must not hang the daemon).
        let tv = libc::timeval { tv_sec: 5, tv_usec: 0 };
        // SAFETY: `tv` is a valid timeval for the size passed.
        cvt(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        })?;
        Ok(Rtnl { fd, seq: 0 })
    }

    fn send(&mut self, mut msg: Msg) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let len = msg.buf.len() as u32;
        msg.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        msg.buf[8..12].copy_from_slice(&self.seq.to_ne_bytes());
        // SAFETY: sockaddr_nl is plain data; all-zero is the kernel's address.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: `msg.buf` and `kernel` are valid for the lengths passed.
        cvt(unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.buf.as_ptr().cast(),
                msg.buf.len(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            ) as libc::c_int
        })?;
        Ok(self.seq)
    }

    /// Reads replies to `seq` until an acknowledgement (requests) or
    /// NLMSG_DONE (dumps); returns the payload of every other message,
    /// and whether the kernel flagged the dump as interrupted (the table
    /// changed under it: NLM_F_DUMP_INTR).
    fn replies(&mut self, seq: u32) -> io::Result<(Replies, bool)> {
        let mut out = Vec::new();
        let mut interrupted = false;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: `buf` is valid for writes of its length. MSG_TRUNC:
            // the datagram's real length comes back even if longer.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_TRUNC) };
            let n = cvt(n as libc::c_int)? as usize;
            if n > buf.len() {
                return Err(io::Error::other(format!("an rtnetlink reply of {n} bytes did not fit")));
            }
            let mut at = 0;
            while at + NLMSG_HDR <= n {
                let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap_or_default()) as usize;
                let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
                let flags = u16::from_ne_bytes([buf[at + 6], buf[at + 7]]);
                let got = u32::from_ne_bytes(buf[at + 8..at + 12].try_into().unwrap_or_default());
                if len < NLMSG_HDR || at + len > n {
                    return Err(io::Error::other("truncated rtnetlink reply"));
                }
                let payload = &buf[at + NLMSG_HDR..at + len];
                at += len.next_multiple_of(4);
                if got != seq {
                    continue;
                }
                interrupted |= flags & libc::NLM_F_DUMP_INTR as u16 != 0;
                // Both carry an error number: 0, or a negative errno.
                let err = payload.get(..4).map_or(0, |b| i32::from_ne_bytes(b.try_into().unwrap_or_default()));
                match kind as libc::c_int {
                    libc::NLMSG_ERROR | libc::NLMSG_DONE => {
                        return if err >= 0 { Ok((out, interrupted)) } else { Err(io::Error::from_raw_os_error(-err)) };
                    }
                    _ => out.push((kind, payload.to_vec())),
                }
            }
        }
    }

    fn request(&mut self, msg: Msg) -> io::Result<()> {
        let seq = self.send(msg)?;
        self.replies(seq).map(|_| ())
    }

    /// A dump, taken again (a few times) while the kernel says it was
    /// interrupted by a change.
    fn dump(&mut self, msg: Msg) -> io::Result<Replies> {
        for _ in 0..4 {
            let seq = self.send(msg.clone())?;
            let (out, interrupted) = self.replies(seq)?;
            if !interrupted {
                return Ok(out);
            }
        }
        Err(io::Error::other("an rtnetlink dump kept being interrupted by changes"))
    }

    /// Creates veth pair `host` (here) and `peer` (in the namespace
    /// `peer_netns`, a descriptor of /proc/PID/ns/net or a bind mount of
    /// one), both with `mtu`, the peer with `peer_mac` if given. Fails
    /// with EEXIST if either name is taken.
    pub(crate) fn add_veth(
        &mut self,
        host: &str,
        peer: &str,
        peer_netns: RawFd,
        mtu: Option<u32>,
        peer_mac: Option<[u8; 6]>,
    ) -> io::Result<()> {
        let flags = (libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
        let mut m = Msg::new(libc::RTM_NEWLINK, flags).bytes(&ifinfomsg(0, 0, 0)).attr_str(IFLA_IFNAME, host);
        if let Some(mtu) = mtu {
            m = m.attr_u32(IFLA_MTU, mtu);
        }
        m = m
            .nest(IFLA_LINKINFO)
            .attr_str(IFLA_INFO_KIND, "veth")
            .nest(IFLA_INFO_DATA)
            .nest(VETH_INFO_PEER)
            .bytes(&ifinfomsg(0, 0, 0))
            .attr_str(IFLA_IFNAME, peer)
            .attr_u32(IFLA_NET_NS_FD, peer_netns as u32);
        if let Some(mtu) = mtu {
            m = m.attr_u32(IFLA_MTU, mtu);
        }
        if let Some(mac) = peer_mac {
            m = m.attr(IFLA_ADDRESS, &mac);
        }
        self.request(m.end().end().end())
    }

    /// The link called `name`; `None` if there is none.
    pub(crate) fn link(&mut self, name: &str) -> io::Result<Option<Link>> {
        let m =
            Msg::new(libc::RTM_GETLINK, libc::NLM_F_ACK as u16).bytes(&ifinfomsg(0, 0, 0)).attr_str(IFLA_IFNAME, name);
        match self.dump(m) {
            Ok(replies) => Ok(replies.iter().find_map(|(_, p)| parse_link(p))),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sets link `index` up, and its MTU if given.
    pub(crate) fn set_up(&mut self, index: u32, mtu: Option<u32>) -> io::Result<()> {
        let up = libc::IFF_UP as u32;
        let mut m = Msg::new(libc::RTM_NEWLINK, libc::NLM_F_ACK as u16).bytes(&ifinfomsg(index, up, up));
        if let Some(mtu) = mtu {
            m = m.attr_u32(IFLA_MTU, mtu);
        }
        self.request(m)
    }

    /// Attaches XDP program `prog` (or detaches, with `None`) on link
    /// `index` with `flags` (IFLA_XDP { IFLA_XDP_FD, IFLA_XDP_FLAGS }).
    pub(crate) fn set_xdp(&mut self, index: u32, prog: Option<RawFd>, flags: u32) -> io::Result<()> {
        let m = Msg::new(libc::RTM_SETLINK, libc::NLM_F_ACK as u16)
            .bytes(&ifinfomsg(index, 0, 0))
            .nest(IFLA_XDP)
            .attr(IFLA_XDP_FD, &prog.unwrap_or(-1).to_ne_bytes())
            .attr_u32(IFLA_XDP_FLAGS, flags)
            .end();
        self.request(m)
    }

    /// Sets link `index`'s MAC address.
    pub(crate) fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> io::Result<()> {
        let m =
            Msg::new(libc::RTM_NEWLINK, libc::NLM_F_ACK as u16).bytes(&ifinfomsg(index, 0, 0)).attr(IFLA_ADDRESS, &mac);
        self.request(m)
    }

    /// Deletes link `name`; `Ok(false)` if there was none.
    pub(crate) fn del_link(&mut self, name: &str) -> io::Result<bool> {
        let m =
            Msg::new(libc::RTM_DELLINK, libc::NLM_F_ACK as u16).bytes(&ifinfomsg(0, 0, 0)).attr_str(IFLA_IFNAME, name);
        match self.request(m) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Adds `ip/prefix` to link `index` (IPv6 without duplicate address
    /// detection: the address is the container's by allocation). An
    /// address already there is not an error.
    pub(crate) fn add_addr(&mut self, index: u32, ip: IpAddr, prefix: u8) -> io::Result<()> {
        let mut h = [0u8; IFADDRMSG];
        h[0] = family(&ip);
        h[1] = prefix;
        h[2] = if ip.is_ipv6() { IFA_F_NODAD } else { 0 };
        h[4..8].copy_from_slice(&index.to_ne_bytes());
        let flags = (libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
        let mut m = Msg::new(libc::RTM_NEWADDR, flags).bytes(&h);
        if ip.is_ipv4() {
            m = m.attr(IFA_LOCAL, &ip_bytes(&ip));
        }
        m = m.attr(IFA_ADDRESS, &ip_bytes(&ip));
        match self.request(m) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            r => r,
        }
    }

    /// Every address of the namespace.
    pub(crate) fn addrs(&mut self) -> io::Result<Vec<Addr>> {
        let m = Msg::new(libc::RTM_GETADDR, libc::NLM_F_DUMP as u16).bytes(&[0u8; IFADDRMSG]);
        let mut out = Vec::new();
        for (kind, p) in self.dump(m)? {
            if kind != libc::RTM_NEWADDR || p.len() < IFADDRMSG {
                continue;
            }
            let prefix = p[1];
            let index = u32::from_ne_bytes(p[4..8].try_into().unwrap_or_default());
            let (mut local, mut address) = (None, None);
            for (ty, v) in attrs(&p[IFADDRMSG..]) {
                match ty {
                    IFA_LOCAL => local = ip_from(v),
                    IFA_ADDRESS => address = ip_from(v),
                    _ => {}
                }
            }
            if let Some(ip) = local.or(address) {
                out.push(Addr { index, ip, prefix });
            }
        }
        Ok(out)
    }

    /// Adds a route to `dst/prefix` via `gateway` (or on-link) out of link
    /// `oif`, in the main table. A route already there is not an error.
    pub(crate) fn add_route(&mut self, r: &Route) -> io::Result<()> {
        let mut h = [0u8; RTMSG];
        h[0] = family(&r.dst);
        h[1] = r.prefix;
        h[4] = RT_TABLE_MAIN;
        h[5] = RTPROT_BOOT;
        h[6] = if r.gateway.is_some() { RT_SCOPE_UNIVERSE } else { RT_SCOPE_LINK };
        h[7] = RTN_UNICAST;
        let flags = (libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
        let mut m = Msg::new(libc::RTM_NEWROUTE, flags).bytes(&h);
        if r.prefix > 0 {
            m = m.attr(RTA_DST, &ip_bytes(&r.dst));
        }
        if let Some(gw) = &r.gateway {
            m = m.attr(RTA_GATEWAY, &ip_bytes(gw));
        }
        if let Some(oif) = r.oif {
            m = m.attr_u32(RTA_OIF, oif);
        }
        match self.request(m) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            r => r,
        }
    }

    /// The main table's unicast routes, IPv4 and IPv6, and those that
    /// refuse (blackhole, unreachable, prohibit: see [`Route::rejects`]).
    /// A multipath route comes as one route per next hop, each with the
    /// prefix and metric of the whole.
    pub(crate) fn routes(&mut self) -> io::Result<Vec<Route>> {
        let mut out = Vec::new();
        for fam in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            let mut h = [0u8; RTMSG];
            h[0] = fam;
            let m = Msg::new(libc::RTM_GETROUTE, libc::NLM_F_DUMP as u16).bytes(&h);
            for (kind, p) in self.dump(m)? {
                if kind != libc::RTM_NEWROUTE
                    || p.len() < RTMSG
                    || !(p[7] == RTN_UNICAST || (RTN_BLACKHOLE..=RTN_PROHIBIT).contains(&p[7]))
                {
                    continue;
                }
                let (prefix, mut table) = (p[1], u32::from(p[4]));
                let mut r = Route {
                    dst: if fam == libc::AF_INET as u8 { IpAddr::from([0u8; 4]) } else { IpAddr::from([0u8; 16]) },
                    prefix,
                    gateway: None,
                    oif: None,
                    prefsrc: None,
                    metric: 0,
                    rtype: p[7],
                };
                let mut hops = Vec::new();
                for (ty, v) in attrs(&p[RTMSG..]) {
                    match ty {
                        RTA_DST => r.dst = ip_from(v).unwrap_or(r.dst),
                        RTA_GATEWAY => r.gateway = ip_from(v),
                        RTA_OIF => r.oif = v.try_into().ok().map(u32::from_ne_bytes),
                        RTA_PREFSRC => r.prefsrc = ip_from(v),
                        RTA_PRIORITY => r.metric = v.try_into().map(u32::from_ne_bytes).unwrap_or(0),
                        RTA_TABLE => table = v.try_into().map(u32::from_ne_bytes).unwrap_or(table),
                        RTA_MULTIPATH => hops = nexthops(v),
                        _ => {}
                    }
                }
                if table != u32::from(RT_TABLE_MAIN) {
                    continue;
                }
                if hops.is_empty() {
                    out.push(r);
                }
                for (gateway, oif) in hops {
                    out.push(Route { gateway, oif: Some(oif), ..r });
                }
            }
        }
        Ok(out)
    }
}

/// The next hops of an RTA_MULTIPATH attribute: (gateway, interface) of
/// each struct rtnexthop and the RTA_GATEWAY inside it.
fn nexthops(mut v: &[u8]) -> Vec<(Option<IpAddr>, u32)> {
    let mut out = Vec::new();
    while v.len() >= RTNEXTHOP {
        let len = u16::from_ne_bytes([v[0], v[1]]) as usize;
        if len < RTNEXTHOP || len > v.len() {
            break;
        }
        let oif = u32::from_ne_bytes([v[4], v[5], v[6], v[7]]);
        let gateway = attrs(&v[RTNEXTHOP..len]).find(|(ty, _)| *ty == RTA_GATEWAY).and_then(|(_, g)| ip_from(g));
        // RTNH_F_DEAD (1) and RTNH_F_LINKDOWN (16): the kernel skips them.
        if v[2] & (1 | 16) == 0 {
            out.push((gateway, oif));
        }
        v = &v[len.next_multiple_of(4).min(v.len())..];
    }
    out
}

/// A NETLINK_ROUTE socket subscribed to the kernel's announcements of
/// changed links, addresses and routes (IPv4 and IPv6), read without
/// blocking: whoever keeps a copy of those tables dumps them again when
/// [`changed`](RtnlMonitor::changed) says so.
#[derive(Debug)]
pub(crate) struct RtnlMonitor {
    fd: OwnedFd,
}

impl RtnlMonitor {
    pub(crate) fn open() -> io::Result<RtnlMonitor> {
        // SAFETY: plain socket(2) call; the result is checked.
        let fd = cvt(unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_ROUTE,
            )
        })?;
        // SAFETY: `fd` was just returned by the kernel and is owned by no one.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data; zero is a valid start.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = (libc::RTMGRP_LINK
            | libc::RTMGRP_IPV4_IFADDR
            | libc::RTMGRP_IPV4_ROUTE
            | libc::RTMGRP_IPV6_IFADDR
            | libc::RTMGRP_IPV6_ROUTE) as u32;
        // SAFETY: `addr` is a valid sockaddr_nl for the size passed.
        cvt(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        })?;
        Ok(RtnlMonitor { fd })
    }

    /// Reads every waiting announcement; true if there was any (or the
    /// socket overflowed, so some were lost).
    pub(crate) fn changed(&mut self) -> bool {
        let mut buf = [0u8; 8192];
        let mut changed = false;
        loop {
            // SAFETY: `buf` is valid for writes of its length.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                // ENOBUFS: announcements were lost; the tables are read again.
                return changed || e.raw_os_error() == Some(libc::ENOBUFS);
            }
            if n == 0 {
                return changed;
            }
            let n = n as usize;
            let mut at = 0;
            while at + NLMSG_HDR <= n {
                let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap_or_default()) as usize;
                if len < NLMSG_HDR {
                    break;
                }
                changed = true;
                at += len.next_multiple_of(4);
            }
        }
    }
}

fn parse_link(p: &[u8]) -> Option<Link> {
    if p.len() < IFINFOMSG {
        return None;
    }
    let index = i32::from_ne_bytes(p[4..8].try_into().ok()?) as u32;
    let flags = u32::from_ne_bytes(p[8..12].try_into().ok()?);
    let mut link = Link { index, name: String::new(), mac: [0; 6], mtu: 0, up: flags & libc::IFF_UP as u32 != 0 };
    for (ty, v) in attrs(&p[IFINFOMSG..]) {
        match ty {
            IFLA_IFNAME => link.name = c_str(v),
            IFLA_ADDRESS if v.len() == 6 => link.mac.copy_from_slice(v),
            IFLA_MTU => link.mtu = v.try_into().map(u32::from_ne_bytes).unwrap_or(0),
            _ => {}
        }
    }
    Some(link)
}

/// Moves the calling thread into the network namespace `netns` (an open
/// namespace file). Only for a thread of its own that ends afterwards:
/// see `net::plumb::in_netns`.
pub(crate) fn enter_netns(netns: &std::fs::File) -> io::Result<()> {
    // SAFETY: setns(2) on a descriptor we hold open; it changes only the
    // calling thread's namespace.
    cvt(unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) }).map(|_| ())
}

/// Sends `frame` out of link `index` of this namespace through a
/// throwaway AF_PACKET socket (gratuitous ARP, unsolicited NA).
pub(crate) fn send_frame(index: u32, frame: &[u8]) -> io::Result<()> {
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = cvt(unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` was just returned by the kernel and is owned by no one.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; all-zero is valid.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_ifindex = index as i32;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(frame.get(..6).ok_or_else(|| io::Error::other("short frame"))?);
    // SAFETY: `frame` and `to` are valid for the lengths passed.
    cvt(unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&to as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        ) as libc::c_int
    })
    .map(|_| ())
}
