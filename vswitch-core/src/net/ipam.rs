//! The built-in IPAM (`"ipam": {"type": "vswitch", ...}`): the reference
//! `host-local` plugin's configuration and on-disk layout, kept by the
//! daemon so that concurrent ADDs are serialised in one place.
//!
//! Every range set (`ranges[i]`, or the single `subnet`) gives an
//! attachment one address. A reservation is a file named after the
//! address in `dataDir/NETWORK/`, created with `O_EXCL` and holding
//! `CONTAINER_ID\r\nIFNAME` (host-local's format); `last_reserved_ip.I`
//! remembers where set I's round-robin search resumes.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One range of a range set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpRange {
    /// The subnet; its prefix is the attachment's.
    pub subnet: IpNet,
    /// First address handed out (default: the subnet's second).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_start: Option<IpAddr>,
    /// Last address handed out (default: the last before IPv4's broadcast).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_end: Option<IpAddr>,
    /// The gateway (default: the subnet's first address); never handed out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

/// A route handed to attachments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteConfig {
    /// Destination.
    pub dst: IpNet,
    /// Next hop (default: the attachment's gateway of that family).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// The built-in IPAM's configuration: host-local's keys, plus `reserved`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpamConfig {
    /// `vswitch`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Range sets: each gives an attachment one address (IPv4 and IPv6
    /// sets side by side make a dual-stack network).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<Vec<IpRange>>,
    /// The single-range form: `subnet`, `rangeStart`, `rangeEnd`, `gateway`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<IpNet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub range_start: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub range_end: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub gateway: Option<IpAddr>,
    /// Routes for every attachment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteConfig>,
    /// Where reservations live (default: the daemon's IPAM directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Addresses or CIDRs never handed out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reserved: Vec<String>,
}

/// An address given to an attachment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address and prefix (`10.88.0.5/16`).
    pub address: IpNet,
    /// The gateway of its subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(v: u128, like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::from(std::net::Ipv4Addr::from(v as u32)),
        IpAddr::V6(_) => IpAddr::from(std::net::Ipv6Addr::from(v)),
    }
}

impl IpRange {
    /// The gateway: given, or the subnet's first host.
    pub fn gateway(&self) -> IpAddr {
        self.gateway.unwrap_or_else(|| from_u128(to_u128(self.subnet.network()) + 1, self.subnet.addr()))
    }

    /// First and last address handed out.
    fn bounds(&self) -> (u128, u128) {
        let net = to_u128(self.subnet.network());
        let last = to_u128(self.subnet.broadcast());
        let first = self.range_start.map_or(net + 1, to_u128);
        let end = self.range_end.map_or(if self.subnet.addr().is_ipv4() { last - 1 } else { last }, to_u128);
        (first, end)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let s = self.subnet.trunc();
        if s.addr().is_ipv4() && s.prefix_len() > 30 || s.addr().is_ipv6() && s.prefix_len() > 126 {
            return Err(format!("subnet {s} is too small to hand out addresses"));
        }
        for (what, ip) in [("rangeStart", self.range_start), ("rangeEnd", self.range_end), ("gateway", self.gateway)] {
            if let Some(ip) = ip
                && !s.contains(&ip)
            {
                return Err(format!("{what} {ip} is not in subnet {s}"));
            }
        }
        let (first, last) = self.bounds();
        if first > last {
            return Err(format!("rangeStart is after rangeEnd in {s}"));
        }
        // The network address (and IPv4's broadcast) is no host's.
        if first == to_u128(s.network()) || s.addr().is_ipv4() && last == to_u128(s.broadcast()) {
            return Err(format!("the range of {s} includes its network or broadcast address"));
        }
        Ok(())
    }
}

impl IpamConfig {
    /// The range sets, the single-range form included; checked.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for no ranges, a range outside its
    /// subnet, or a set mixing address families.
    pub fn range_sets(&self) -> Result<Vec<Vec<IpRange>>> {
        let mut sets = self.ranges.clone();
        if let Some(subnet) = self.subnet {
            sets.insert(
                0,
                vec![IpRange {
                    subnet,
                    range_start: self.range_start,
                    range_end: self.range_end,
                    gateway: self.gateway,
                }],
            );
        }
        if sets.is_empty() || sets.iter().any(Vec::is_empty) {
            return Err(Error::invalid("ipam", "no 'subnet' or 'ranges' to hand addresses out of"));
        }
        for set in &sets {
            let v4 = set[0].subnet.addr().is_ipv4();
            for r in set {
                r.validate().map_err(|e| Error::invalid("ipam", e))?;
                if r.subnet.addr().is_ipv4() != v4 {
                    return Err(Error::invalid("ipam", "a range set mixes IPv4 and IPv6"));
                }
            }
        }
        self.reserved_nets()?;
        Ok(sets)
    }

    fn reserved_nets(&self) -> Result<Vec<IpNet>> {
        self.reserved
            .iter()
            .map(|r| {
                r.parse::<IpNet>()
                    .or_else(|_| r.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| Error::invalid("ipam", format!("reserved '{r}' is not an address or CIDR")))
            })
            .collect()
    }
}

/// The reservations of one network's directory.
#[derive(Debug)]
pub(crate) struct Pool {
    dir: PathBuf,
}

/// `CONTAINER_ID\r\nIFNAME`, host-local's reservation content.
fn owner_text(container_id: &str, ifname: &str) -> String {
    format!("{container_id}\r\n{ifname}")
}

fn parse_owner(text: &str) -> (String, String) {
    let mut lines = text.lines().map(str::trim);
    (lines.next().unwrap_or_default().to_string(), lines.next().unwrap_or_default().to_string())
}

impl Pool {
    /// The pool of network `network` under `data_dir`.
    pub(crate) fn new(data_dir: &Path, network: &str) -> Pool {
        Pool { dir: data_dir.join(network) }
    }

    /// Every reservation: (address, container id, ifname).
    pub(crate) fn reservations(&self) -> Result<Vec<(IpAddr, String, String)>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("reading the IPAM directory", e)),
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(ip) = name.to_str().and_then(|n| n.parse::<IpAddr>().ok()) else { continue };
            if let Ok(text) = std::fs::read_to_string(e.path()) {
                let (id, ifname) = parse_owner(&text);
                out.push((ip, id, ifname));
            }
        }
        Ok(out)
    }

    /// Reserves one address per range set for (`container_id`,
    /// `ifname`): the `requested` address that falls in a set, else the
    /// one it holds already (a retried ADD), else the next free one after
    /// the set's last reservation. All or nothing.
    ///
    /// # Errors
    /// [`Error::Exists`] if a requested address is taken;
    /// [`Error::Full`] if a set has no free address; [`Error::InvalidArgument`]
    /// for a requested address in no set; [`Error::Io`].
    pub(crate) fn allocate(
        &self,
        cfg: &IpamConfig,
        container_id: &str,
        ifname: &str,
        requested: &[IpAddr],
    ) -> Result<Vec<IpConfig>> {
        let sets = cfg.range_sets()?;
        let reserved = cfg.reserved_nets()?;
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io("creating the IPAM directory", e))?;
        let held = self.reservations()?;
        let taken: BTreeSet<IpAddr> = held.iter().map(|(ip, ..)| *ip).collect();
        let mine: Vec<IpAddr> =
            held.iter().filter(|(_, id, i)| id == container_id && i == ifname).map(|(ip, ..)| *ip).collect();
        for ip in requested {
            if !sets.iter().flatten().any(|r| r.subnet.contains(ip)) {
                return Err(Error::invalid("IP", format!("requested address {ip} is in none of the network's ranges")));
            }
        }
        let mut made: Vec<IpAddr> = Vec::new();
        let mut out = Vec::new();
        let result = (|| {
            for (i, set) in sets.iter().enumerate() {
                let in_set = |ip: &IpAddr| set.iter().find(|r| r.subnet.contains(ip));
                let (ip, range) = if let Some((ip, r)) = requested.iter().find_map(|ip| Some((*ip, in_set(ip)?))) {
                    if !mine.contains(&ip) {
                        let (first, last) = r.bounds();
                        if ip == r.gateway() || reserved.iter().any(|n| n.contains(&ip)) {
                            return Err(Error::invalid("IP", format!("{ip} is reserved in this network")));
                        }
                        if !(first..=last).contains(&to_u128(ip)) {
                            return Err(Error::invalid("IP", format!("{ip} is outside the range handed out")));
                        }
                        if taken.contains(&ip) || !self.reserve(ip, container_id, ifname)? {
                            return Err(Error::Exists(format!("address {ip} is in use in this network")));
                        }
                        made.push(ip);
                    }
                    (ip, r)
                } else if let Some((ip, r)) = mine.iter().find_map(|ip| Some((*ip, in_set(ip)?))) {
                    (ip, r)
                } else {
                    let ip = self.next_free(i, set, &taken, &reserved, container_id, ifname)?;
                    made.push(ip);
                    (ip, in_set(&ip).unwrap_or(&set[0]))
                };
                let address =
                    IpNet::new(ip, range.subnet.prefix_len()).map_err(|e| Error::invalid("ipam", e.to_string()))?;
                out.push(IpConfig { address, gateway: Some(range.gateway()) });
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(out),
            Err(e) => {
                for ip in made {
                    let _ = std::fs::remove_file(self.dir.join(ip.to_string()));
                }
                Err(e)
            }
        }
    }

    /// Creates the reservation file; `Ok(false)` if it exists.
    fn reserve(&self, ip: IpAddr, container_id: &str, ifname: &str) -> Result<bool> {
        let path = self.dir.join(ip.to_string());
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut f) => {
                f.write_all(owner_text(container_id, ifname).as_bytes())
                    .and_then(|()| f.sync_all())
                    .map_err(|e| Error::io("writing an IPAM reservation", e))?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(Error::io("writing an IPAM reservation", e)),
        }
    }

    fn next_free(
        &self,
        set_index: usize,
        set: &[IpRange],
        taken: &BTreeSet<IpAddr>,
        reserved: &[IpNet],
        container_id: &str,
        ifname: &str,
    ) -> Result<IpAddr> {
        let last_path = self.dir.join(format!("last_reserved_ip.{set_index}"));
        let last = std::fs::read_to_string(&last_path).ok().and_then(|s| s.trim().parse::<IpAddr>().ok());
        // Positions run over the set's ranges in order; the search starts
        // after the last reservation and wraps around.
        let sizes: Vec<u128> = set.iter().map(|r| r.bounds().1 - r.bounds().0 + 1).collect();
        let total: u128 = sizes.iter().sum();
        let at = |mut pos: u128| {
            for (r, size) in set.iter().zip(&sizes) {
                if pos < *size {
                    return (from_u128(r.bounds().0 + pos, r.subnet.addr()), r);
                }
                pos -= size;
            }
            (set[0].subnet.addr(), &set[0])
        };
        let mut start = 0;
        if let Some(l) = last {
            let mut offset = 0;
            for (r, size) in set.iter().zip(&sizes) {
                let (first, end) = r.bounds();
                if r.subnet.contains(&l) && (first..=end).contains(&to_u128(l)) {
                    start = (offset + to_u128(l) - first + 1) % total;
                }
                offset += size;
            }
        }
        // Reserved CIDRs are jumped over whole; past them a free address
        // turns up within (reservations + a few) probes, so the scan is
        // bounded even over a /64.
        let budget = (taken.len() as u128 + 1) * 2 + (1 << 16);
        let (mut k, mut probes) = (0u128, 0u128);
        while k < total && probes < budget {
            let (ip, r) = at((start + k) % total);
            if let Some(n) = reserved.iter().find(|n| n.contains(&ip)) {
                // Positions are contiguous within a range: skip to the
                // first past the reserved block (or the range's end).
                let end = to_u128(n.broadcast()).min(r.bounds().1);
                k += end - to_u128(ip) + 1;
                continue;
            }
            k += 1;
            probes += 1;
            if ip == r.gateway() || taken.contains(&ip) {
                continue;
            }
            if self.reserve(ip, container_id, ifname)? {
                let _ = std::fs::write(&last_path, ip.to_string());
                return Ok(ip);
            }
        }
        Err(Error::Full("the network's address range"))
    }

    /// Releases every address of (`container_id`, `ifname`); returns them.
    pub(crate) fn release(&self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        let mut out = Vec::new();
        for (ip, id, i) in self.reservations()? {
            if id == container_id && i == ifname {
                std::fs::remove_file(self.dir.join(ip.to_string()))
                    .or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) })
                    .map_err(|e| Error::io("removing an IPAM reservation", e))?;
                out.push(ip);
            }
        }
        Ok(out)
    }

    /// Releases every reservation whose owner is not in `valid`.
    pub(crate) fn gc(&self, valid: &BTreeSet<(String, String)>) -> Result<Vec<IpAddr>> {
        let mut out = Vec::new();
        for (ip, id, i) in self.reservations()? {
            if !valid.contains(&(id, i)) {
                let _ = std::fs::remove_file(self.dir.join(ip.to_string()));
                out.push(ip);
            }
        }
        Ok(out)
    }

    /// Whether (`container_id`, `ifname`) holds `ip`.
    pub(crate) fn holds(&self, ip: IpAddr, container_id: &str, ifname: &str) -> bool {
        std::fs::read_to_string(self.dir.join(ip.to_string()))
            .is_ok_and(|t| parse_owner(&t) == (container_id.to_string(), ifname.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> (Pool, PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("vswitch-ipam-{}-{:?}", std::process::id(), std::thread::current().id()));
        let _ = std::fs::remove_dir_all(&dir);
        (Pool::new(&dir, "net"), dir)
    }

    fn cfg(json: &str) -> IpamConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_reserved_block_larger_than_the_scan_is_jumped() {
        let dir = std::env::temp_dir().join(format!("vswitch-ipam-jump-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let c = cfg(r#"{"type":"vswitch","subnet":"fd00::/64","reserved":["fd00::/100"]}"#);
        let pool = Pool::new(&dir, "n");
        let ips = pool.allocate(&c, "c1", "eth0", &[]).unwrap();
        assert_eq!(ips[0].address.addr().to_string(), "fd00::1000:0");
        let bad = cfg(r#"{"type":"vswitch","subnet":"10.0.0.0/24","rangeEnd":"10.0.0.255"}"#);
        assert!(bad.range_sets().is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn allocates_round_robin_skipping_gateway_and_reserved() {
        let (p, dir) = pool();
        let c = cfg(r#"{"type":"vswitch","subnet":"10.9.0.0/29","reserved":["10.9.0.3"]}"#);
        let a = p.allocate(&c, "c1", "eth0", &[]).unwrap();
        assert_eq!(a[0].address.to_string(), "10.9.0.2/29");
        assert_eq!(a[0].gateway, Some("10.9.0.1".parse().unwrap()));
        let b = p.allocate(&c, "c2", "eth0", &[]).unwrap();
        assert_eq!(b[0].address.to_string(), "10.9.0.4/29");
        // A retried ADD gets the same address.
        assert_eq!(p.allocate(&c, "c1", "eth0", &[]).unwrap(), a);
        p.release("c1", "eth0").unwrap();
        // Round robin: the freed .2 is not reused before .5 and .6.
        let got: Vec<String> = ["c3", "c4", "c5"]
            .iter()
            .map(|id| p.allocate(&c, id, "eth0", &[]).unwrap()[0].address.to_string())
            .collect();
        assert_eq!(got, ["10.9.0.5/29", "10.9.0.6/29", "10.9.0.2/29"]);
        assert!(matches!(p.allocate(&c, "c6", "eth0", &[]), Err(Error::Full(_))));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn dual_stack_requested_and_conflicts() {
        let (p, dir) = pool();
        let c = cfg(
            r#"{"type":"vswitch","ranges":[[{"subnet":"10.10.0.0/24","rangeStart":"10.10.0.10","rangeEnd":"10.10.0.20"}],[{"subnet":"fd00:10::/64"}]]}"#,
        );
        let a = p.allocate(&c, "c1", "eth0", &["10.10.0.15".parse().unwrap()]).unwrap();
        assert_eq!(a[0].address.to_string(), "10.10.0.15/24");
        assert_eq!(a[1].address.to_string(), "fd00:10::2/64");
        assert!(matches!(p.allocate(&c, "c2", "eth0", &["10.10.0.15".parse().unwrap()]), Err(Error::Exists(_))));
        assert!(matches!(
            p.allocate(&c, "c2", "eth0", &["10.10.0.30".parse().unwrap()]),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            p.allocate(&c, "c2", "eth0", &["10.11.0.1".parse().unwrap()]),
            Err(Error::InvalidArgument { .. })
        ));
        // The failed calls left nothing behind.
        assert_eq!(p.reservations().unwrap().len(), 2);
        assert!(p.holds("fd00:10::2".parse().unwrap(), "c1", "eth0"));
        let valid = BTreeSet::new();
        assert_eq!(p.gc(&valid).unwrap().len(), 2);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn bad_configurations_are_refused() {
        for bad in [
            r#"{"type":"vswitch"}"#,
            r#"{"subnet":"10.0.0.0/24","rangeStart":"10.1.0.1"}"#,
            r#"{"subnet":"10.0.0.0/24","rangeStart":"10.0.0.9","rangeEnd":"10.0.0.3"}"#,
            r#"{"ranges":[[{"subnet":"10.0.0.0/24"},{"subnet":"fd00::/64"}]]}"#,
            r#"{"subnet":"10.0.0.0/24","reserved":["nope"]}"#,
        ] {
            assert!(cfg(bad).range_sets().is_err(), "{bad}");
        }
    }
}
