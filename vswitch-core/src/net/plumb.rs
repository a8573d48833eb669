//! The host side of an attachment: a veth pair with one end in the
//! container's network namespace, its addresses and routes, the
//! announcement of its addresses, and the checks CHECK makes.

use std::net::IpAddr;

use ipnet::IpNet;

use super::ipam::{IpConfig, RouteConfig};
use crate::sys::netlink::{self, Route, Rtnl};
use crate::wire::MacAddr;
use crate::{Error, Result};

fn nl(call: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |e| Error::io(call, e)
}

/// Link `name`, or the error `missing` makes.
fn link_or(r: &mut Rtnl, name: &str, missing: impl FnOnce() -> Error) -> Result<netlink::Link> {
    r.link(name).map_err(nl("reading links"))?.ok_or_else(missing)
}

fn open_netns(path: &str) -> Result<std::fs::File> {
    std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound(format!("no network namespace at {path}")),
        _ => Error::io("opening the network namespace", e),
    })
}

/// Runs `f` with an rtnetlink socket of the namespace at `path`, on a
/// thread of its own that enters the namespace and ends afterwards (a
/// thread's namespace is its own; no other thread moves).
pub(crate) fn in_netns<T: Send>(path: &str, f: impl FnOnce(&mut Rtnl) -> Result<T> + Send) -> Result<T> {
    let ns = open_netns(path)?;
    std::thread::scope(|s| {
        s.spawn(move || {
            netlink::enter_netns(&ns).map_err(nl("entering the network namespace"))?;
            let mut rtnl = Rtnl::open().map_err(nl("opening rtnetlink"))?;
            f(&mut rtnl)
        })
        .join()
        .unwrap_or_else(|_| Err(Error::invalid("netns", "the namespace worker panicked")))
    })
}

/// Runs `f` with an rtnetlink socket of the daemon's own namespace.
pub(crate) fn here<T>(f: impl FnOnce(&mut Rtnl) -> Result<T>) -> Result<T> {
    f(&mut Rtnl::open().map_err(nl("opening rtnetlink"))?)
}

/// What the container side got.
#[derive(Debug, Clone)]
pub(crate) struct Plumbed {
    pub(crate) host_mac: MacAddr,
    pub(crate) container_mac: MacAddr,
}

/// What to build.
#[derive(Debug)]
pub(crate) struct Plan<'a> {
    pub(crate) netns: &'a str,
    pub(crate) ifname: &'a str,
    pub(crate) host_if: &'a str,
    pub(crate) mtu: Option<u32>,
    pub(crate) mac: Option<MacAddr>,
    pub(crate) ips: &'a [IpConfig],
    pub(crate) routes: &'a [RouteConfig],
}

/// A route's next hop: its own, else the gateway of its family.
fn next_hop(r: &RouteConfig, ips: &[IpConfig]) -> Option<IpAddr> {
    r.gw.or_else(|| ips.iter().find(|c| c.address.addr().is_ipv4() == r.dst.addr().is_ipv4())?.gateway)
}

/// Builds the pair: `plan.ifname` in the namespace (EEXIST there is an
/// [`Error::Exists`]), `plan.host_if` here, both up; addresses, routes,
/// then a gratuitous ARP / unsolicited NA for each address. On failure
/// the pair is removed.
pub(crate) fn create(plan: &Plan<'_>) -> Result<Plumbed> {
    let ns = open_netns(plan.netns)?;
    let exists = in_netns(plan.netns, |r| r.link(plan.ifname).map_err(nl("reading links")))?;
    if exists.is_some() {
        return Err(Error::Exists(format!("interface '{}' already exists in {}", plan.ifname, plan.netns)));
    }
    let host = here(|r| {
        // A leftover of ours (a crash between creating and recording) goes.
        r.del_link(plan.host_if).map_err(nl("removing a stale veth"))?;
        r.add_veth(plan.host_if, plan.ifname, std::os::fd::AsRawFd::as_raw_fd(&ns), plan.mtu, plan.mac.map(|m| m.0))
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EEXIST) => {
                    Error::Exists(format!("interface '{}' already exists in {}", plan.ifname, plan.netns))
                }
                _ => Error::io("creating the veth pair", e),
            })?;
        let link = link_or(r, plan.host_if, || {
            Error::io("creating the veth pair", std::io::Error::other("the host end vanished"))
        })?;
        quiet_host_end(plan.host_if)?;
        r.set_up(link.index, None).map_err(nl("setting the host end up"))?;
        Ok(link)
    });
    let host = match host {
        Ok(h) => h,
        Err(e) => {
            let _ = here(|r| r.del_link(plan.host_if).map_err(nl("removing the veth")));
            return Err(e);
        }
    };
    let inside = in_netns(plan.netns, |r| {
        let link =
            link_or(r, plan.ifname, || Error::NotFound(format!("'{}' did not appear in {}", plan.ifname, plan.netns)))?;
        r.set_up(link.index, None).map_err(nl("setting the interface up"))?;
        for ip in plan.ips {
            r.add_addr(link.index, ip.address.addr(), ip.address.prefix_len()).map_err(nl("adding an address"))?;
        }
        for route in plan.routes {
            let gateway = next_hop(route, plan.ips);
            r.add_route(&Route {
                dst: route.dst.network(),
                prefix: route.dst.prefix_len(),
                gateway,
                oif: Some(link.index),
                prefsrc: None,
                metric: 0,
                rtype: crate::sys::netlink::RTN_UNICAST,
            })
            .map_err(nl("adding a route"))?;
        }
        Ok(MacAddr(link.mac))
    });
    match inside {
        Ok(container_mac) => Ok(Plumbed { host_mac: MacAddr(host.mac), container_mac }),
        Err(e) => {
            let _ = remove(plan.host_if);
            Err(e)
        }
    }
}

/// Announces the container's addresses from inside (gratuitous ARP,
/// unsolicited NA), once its port is on the bridge. Best effort: the
/// addresses work without it; the switch and the neighbours learn from
/// the first packet anyway.
pub(crate) fn announce(netns: &str, ifname: &str, ips: &[IpConfig]) {
    let _ = in_netns(netns, |r| {
        let link = link_or(r, ifname, || Error::NotFound(format!("'{ifname}' is not in {netns}")))?;
        for ip in ips {
            let _ = netlink::send_frame(link.index, &announcement(MacAddr(link.mac), ip.address.addr()));
        }
        Ok(())
    });
}

/// The host end is a switch port, not an interface of the host's: the
/// host's kernel sees its frames as well (AF_PACKET), and would answer
/// ARP for the gateway address with the veth's MAC (its addresses are
/// the host's, on any interface) and chatter IPv6 link-local on it.
fn quiet_host_end(ifname: &str) -> Result<()> {
    let set = |path: String, value: &str| {
        std::fs::write(&path, value).map_err(|e| Error::io("setting the host end's sysctls", e))
    };
    set(format!("/proc/sys/net/ipv4/conf/{ifname}/arp_ignore"), "8")?;
    let v6 = format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6");
    if std::path::Path::new(&v6).exists() {
        set(v6, "1")?;
    }
    Ok(())
}

/// Removes the host end (and with it the container end); `Ok(false)` if
/// it was gone.
pub(crate) fn remove(host_if: &str) -> Result<bool> {
    here(|r| r.del_link(host_if).map_err(nl("removing the veth")))
}

/// Checks that the namespace holds `ifname`, up, with `ips` and `routes`;
/// the first thing missing is the error.
pub(crate) fn check(netns: &str, ifname: &str, ips: &[IpConfig], routes: &[RouteConfig]) -> Result<()> {
    in_netns(netns, |r| {
        let link = link_or(r, ifname, || Error::NotFound(format!("interface '{ifname}' is missing from {netns}")))?;
        if !link.up {
            return Err(Error::invalid("attachment", format!("interface '{ifname}' in {netns} is down")));
        }
        let addrs = r.addrs().map_err(nl("reading addresses"))?;
        for ip in ips {
            let there = addrs
                .iter()
                .any(|a| a.index == link.index && a.ip == ip.address.addr() && a.prefix == ip.address.prefix_len());
            if !there {
                return Err(Error::NotFound(format!("address {} is missing from '{ifname}' in {netns}", ip.address)));
            }
        }
        let table = r.routes().map_err(nl("reading routes"))?;
        for route in routes {
            let gateway = next_hop(route, ips);
            let there = table.iter().any(|t| {
                !t.rejects()
                    && t.prefix == route.dst.prefix_len()
                    && IpNet::new(t.dst, t.prefix).is_ok_and(|n| n.network() == route.dst.network())
                    && t.gateway == gateway
            });
            if !there {
                return Err(Error::NotFound(format!("route to {} is missing from {netns}", route.dst)));
            }
        }
        Ok(())
    })
}

/// Makes host interface `ifname` a network's gateway port: its MAC
/// `mac` (the same across restarts, so containers' neighbour entries stay
/// right), up with `mtu`, holding `ips` (with their prefixes).
pub(crate) fn gateway_port(ifname: &str, mac: MacAddr, ips: &[IpNet], mtu: Option<u32>) -> Result<()> {
    here(|r| {
        let link = link_or(r, ifname, || Error::NotFound(format!("no interface '{ifname}'")))?;
        if link.mac != mac.0 {
            r.set_mac(link.index, mac.0).map_err(nl("setting the gateway's MAC"))?;
        }
        r.set_up(link.index, mtu).map_err(nl("setting the gateway up"))?;
        for ip in ips {
            r.add_addr(link.index, ip.addr(), ip.prefix_len()).map_err(nl("adding the gateway address"))?;
        }
        Ok(())
    })
}

/// A gratuitous ARP request (IPv4) or an unsolicited neighbour
/// advertisement to all nodes (IPv6) for `ip` at `mac`.
pub(crate) fn announcement(mac: MacAddr, ip: IpAddr) -> Vec<u8> {
    let mut f = Vec::with_capacity(86);
    match ip {
        IpAddr::V4(a) => {
            f.extend_from_slice(&[0xff; 6]);
            f.extend_from_slice(&mac.0);
            f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
            f.extend_from_slice(&mac.0);
            f.extend_from_slice(&a.octets());
            f.extend_from_slice(&[0; 6]);
            f.extend_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            let dst: std::net::Ipv6Addr = "ff02::1".parse().unwrap_or(std::net::Ipv6Addr::UNSPECIFIED);
            f.extend_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
            f.extend_from_slice(&mac.0);
            f.extend_from_slice(&[0x86, 0xdd]);
            // ICMPv6 NA: type 136, override flag, target, option 2 (our MAC).
            let mut icmp = vec![136, 0, 0, 0, 0x20, 0, 0, 0];
            icmp.extend_from_slice(&a.octets());
            icmp.extend_from_slice(&[2, 1]);
            icmp.extend_from_slice(&mac.0);
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
            f.extend_from_slice(&[58, 255]);
            f.extend_from_slice(&a.octets());
            f.extend_from_slice(&dst.octets());
            let mut pseudo = Vec::with_capacity(40 + icmp.len());
            pseudo.extend_from_slice(&a.octets());
            pseudo.extend_from_slice(&dst.octets());
            pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 58]);
            pseudo.extend_from_slice(&icmp);
            let sum = crate::wire::checksum::internet_checksum(&pseudo);
            icmp[2..4].copy_from_slice(&sum.to_be_bytes());
            f.extend_from_slice(&icmp);
        }
    }
    f
}
