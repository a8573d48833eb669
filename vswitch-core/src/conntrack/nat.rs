//! NAT: what `ct(commit,nat(...))` asks for, the mapping it picks, and
//! the packet rewrites that apply it.
//!
//! A connection's NAT is its reply key: SNAT replaces the reply's
//! destination (the original source), DNAT the reply's source (the
//! original destination). A packet of the original direction is rewritten
//! to the reverse of the reply key, a reply to the reverse of the original
//! key, so one entry carries both directions and no second lookup is
//! needed.

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

use super::tuple::{ICMP, ICMPV6, Key, TCP, UDP};
use crate::flow::{FlowParseError, Headers, matching_err as err, parse_num};
use crate::packet::Packet;
use crate::wire::be16;
use crate::wire::checksum::csum_replace;
use crate::wire::rewrite::Layout;

/// Source or destination NAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum NatKind {
    /// Rewrite the source (masquerade).
    Src,
    /// Rewrite the destination (port mapping, load balancing).
    Dst,
}

/// How a mapping is chosen from a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum NatSelect {
    /// By a hash of the connection's addresses (the default; Open
    /// vSwitch's `hash`).
    #[default]
    Hash,
    /// At random.
    Random,
}

/// `nat(src=...)` / `nat(dst=...)`: a translation to set up on commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct NatRange {
    /// Which side is rewritten.
    pub kind: NatKind,
    /// The lowest address of the range.
    pub addr_min: IpAddr,
    /// The highest (equal to `addr_min` for one address).
    pub addr_max: IpAddr,
    /// The port range (`None`: keep the port if it is free, otherwise
    /// pick one of the same class, as Linux does).
    pub ports: Option<(u16, u16)>,
    /// How addresses and ports are picked.
    pub select: NatSelect,
    /// `persistent`: the address depends on the source address only.
    pub persistent: bool,
}

/// The `nat` part of a `ct` action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Nat {
    /// `nat` (or `nat(src)`/`nat(dst)`): apply the connection's existing
    /// translation, if it has one.
    Existing,
    /// `nat(src=...)` / `nat(dst=...)`: on commit, set one up.
    Range(NatRange),
}

fn addr_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v) => u32::from(v) as u128,
        IpAddr::V6(v) => u128::from(v),
    }
}

fn u128_addr(v: u128, like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4((v as u32).into()),
        IpAddr::V6(_) => IpAddr::V6(v.into()),
    }
}

fn parse_addr(s: &str) -> Result<IpAddr, FlowParseError> {
    let t = s.trim().trim_start_matches('[').trim_end_matches(']');
    t.parse().map_err(|_| FlowParseError(format!("nat: '{s}' is not an IP address")))
}

/// Parses the inside of `nat(...)`.
pub(crate) fn parse_nat(arg: &str) -> Result<Nat, FlowParseError> {
    let mut parts = arg.split(',').map(str::trim).filter(|s| !s.is_empty());
    let Some(first) = parts.next() else { return Ok(Nat::Existing) };
    let (kind, range) = match first.split_once('=') {
        Some(("src", r)) => (NatKind::Src, Some(r)),
        Some(("dst", r)) => (NatKind::Dst, Some(r)),
        None if first == "src" || first == "dst" => (NatKind::Src, None),
        _ => return err(format!("nat: '{first}' must be src=ADDRESS[-ADDRESS][:PORT[-PORT]] or dst=...")),
    };
    let mut select = NatSelect::Hash;
    let mut persistent = false;
    for flag in parts {
        match flag {
            "random" => select = NatSelect::Random,
            "hash" => select = NatSelect::Hash,
            "persistent" => persistent = true,
            other => return err(format!("nat: unknown flag '{other}' (random, hash or persistent)")),
        }
    }
    let Some(range) = range else { return Ok(Nat::Existing) };
    // Addresses, then an optional ":PORT[-PORT]" (IPv6 in brackets).
    let (addrs, ports) = if let Some(rest) = range.strip_prefix('[') {
        let close = rest.rfind(']').ok_or_else(|| FlowParseError(format!("nat: '{range}' is missing a ']'")))?;
        let tail = &rest[close + 1..];
        match tail.strip_prefix(':') {
            Some(p) => (&range[..close + 2], Some(p)),
            None if tail.is_empty() => (range, None),
            None => return err(format!("nat: '{range}' has '{tail}' after the addresses")),
        }
    } else if range.matches(':').count() > 1 {
        (range, None) // a bare IPv6 address
    } else {
        match range.split_once(':') {
            Some((a, p)) => (a, Some(p)),
            None => (range, None),
        }
    };
    let (lo, hi) = match addrs.split_once("]-[").map(|(a, b)| (format!("{a}]"), format!("[{b}"))) {
        Some((a, b)) => (parse_addr(&a)?, parse_addr(&b)?),
        None => match addrs.split_once('-') {
            Some((a, b)) => (parse_addr(a)?, parse_addr(b)?),
            None => {
                let a = parse_addr(addrs)?;
                (a, a)
            }
        },
    };
    if lo.is_ipv4() != hi.is_ipv4() || addr_u128(lo) > addr_u128(hi) {
        return err(format!("nat: '{addrs}' is not an address range (low-high, one family)"));
    }
    let ports = match ports {
        None => None,
        Some(p) => {
            let (a, b) = p.split_once('-').unwrap_or((p, p));
            let (a, b) =
                (parse_num(a.trim(), "nat port", 65535)? as u16, parse_num(b.trim(), "nat port", 65535)? as u16);
            if a == 0 || a > b {
                return err(format!("nat: '{p}' is not a port range (1-65535, low-high)"));
            }
            Some((a, b))
        }
    };
    Ok(Nat::Range(NatRange { kind, addr_min: lo, addr_max: hi, ports, select, persistent }))
}

fn fmt_addr(a: IpAddr) -> String {
    match a {
        IpAddr::V4(v) => v.to_string(),
        IpAddr::V6(v) => format!("[{v}]"),
    }
}

impl fmt::Display for Nat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Nat::Range(r) = self else { return f.write_str("nat") };
        let kind = match r.kind {
            NatKind::Src => "src",
            NatKind::Dst => "dst",
        };
        write!(f, "nat({kind}={}", fmt_addr(r.addr_min))?;
        if r.addr_max != r.addr_min {
            write!(f, "-{}", fmt_addr(r.addr_max))?;
        }
        match r.ports {
            Some((a, b)) if a == b => write!(f, ":{a}")?,
            Some((a, b)) => write!(f, ":{a}-{b}")?,
            None => {}
        }
        if r.select == NatSelect::Random {
            f.write_str(",random")?;
        }
        if r.persistent {
            f.write_str(",persistent")?;
        }
        f.write_str(")")
    }
}

/// A fast mix, for picking from ranges.
#[inline]
pub(crate) fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The ports a mapping may use for an original port `p` with no range
/// given: Linux's classes (below 512, below 1024, the rest).
fn port_class(p: u16) -> (u16, u16) {
    match p {
        0..=511 => (1, 511),
        512..=1023 => (600, 1023),
        _ => (1024, 65535),
    }
}

/// How many mappings to try before calling a range exhausted.
pub(crate) const MAX_ATTEMPTS: usize = 1024;

/// The reply keys to try, best first, for connection `orig` under `r`
/// (`salt` varies random picks).
pub(crate) fn candidates(orig: &Key, r: &NatRange, salt: u64) -> impl Iterator<Item = Key> {
    // What NAT may renumber: TCP and UDP ports, an ICMP echo's identifier
    // (source NAT only: a destination has none). SCTP is translated by
    // address only (its CRC32c would need recomputing for ports).
    let echo = orig.is_echo();
    let has_ports = matches!(orig.proto(), TCP | UDP) || (echo && r.kind == NatKind::Src);
    let base = orig.reversed();
    let (lo, hi) = (addr_u128(r.addr_min), addr_u128(r.addr_max));
    // (The whole IPv6 space has 2^128 addresses: one short is as good.)
    let n_addrs = (hi - lo).saturating_add(1);
    let h = {
        let (s, d) = (addr_u128(orig.src()), addr_u128(orig.dst()));
        let d = if r.persistent { 0 } else { d };
        mix((s as u64) ^ ((s >> 64) as u64).rotate_left(17) ^ mix(d as u64 ^ (d >> 64) as u64))
    };
    let random = r.select == NatSelect::Random;
    let pick = if random { mix(salt) } else { h };
    let old_port = match r.kind {
        NatKind::Src => orig.sport(),
        NatKind::Dst => orig.dport(),
    };
    let (pmin, pmax) = match (r.ports, r.kind, has_ports) {
        (_, _, false) => (old_port, old_port),
        (Some(p), _, _) => p,
        (None, NatKind::Src, true) if echo => (1, 65535),
        (None, NatKind::Src, true) => port_class(old_port),
        (None, NatKind::Dst, true) => (old_port, old_port),
    };
    let n_ports = (pmax - pmin) as usize + 1;
    let keep = (!random && (pmin..=pmax).contains(&old_port)).then_some(old_port);
    let kind = r.kind;
    let like = r.addr_min;
    // The hashed address first: its original port (unless random), then
    // ports from a start that differs per connection (`salt`), so clashing
    // connections do not all probe the same run of ports; then the
    // range's other addresses, fewer tries each.
    (0..n_addrs.min(16)).flat_map(move |a| {
        let addr = u128_addr(lo + ((pick as u128).wrapping_add(a) % n_addrs), like);
        let start = (mix(pick ^ salt.rotate_left(29) ^ a as u64) % n_ports as u64) as usize;
        let first = if a == 0 { keep } else { None };
        let tries = if a == 0 { MAX_ATTEMPTS } else { MAX_ATTEMPTS / 8 };
        first
            .into_iter()
            .chain((0..n_ports).map(move |i| pmin + ((start + i) % n_ports) as u16).filter(move |&p| Some(p) != first))
            .take(tries)
            .map(move |p| match (kind, echo) {
                // An echo's identifier is the reply key's sport too.
                (NatKind::Src, true) => base.with_dst(addr, base.dport()).with_src(base.src(), p),
                (NatKind::Src, false) => base.with_dst(addr, p),
                (NatKind::Dst, _) => base.with_src(addr, if echo { base.sport() } else { p }),
            })
    })
}

/// Rewrites the headers `l` locates to `to`'s addresses and ports.
fn rewrite(l: &Layout, d: &mut [u8], to: &Key) {
    l.set_addr(d, true, to.src());
    l.set_addr(d, false, to.dst());
    l.set_port(d, true, to.sport(), to.is_echo());
    l.set_port(d, false, to.dport(), to.is_echo());
}

/// Rewrites a packet's IP and transport headers to `to` (the key it must
/// carry after translation).
pub(crate) fn translate(p: &mut Packet, h: &Headers, to: &Key) {
    let partial = p.needs_csum();
    let d = p.data_mut();
    // The transport header as conntrack found it (the flow parser skips a
    // first fragment's, which is cut short); none in a later fragment.
    let l4 = match super::tuple::ip_header(d, h.l3, h.dl_type) {
        Ok((.., l4, _, None)) => l4,
        Ok((.., l4, _, Some(f))) if f.first => l4,
        _ => 0,
    };
    let l = Layout::new(d, h.l3, l4, to.is_v6(), to.proto(), partial);
    rewrite(&l, d, to);
}

/// Translates an ICMP error: its outer addresses to `outer_to`'s and the
/// quoted packet, whose header starts at `at`, to `quoted`. The ICMP checksum covers the
/// quoted packet, so it is fixed for every word changed there.
pub(crate) fn translate_error(p: &mut Packet, h: &Headers, at: usize, outer_to: &Key, quoted: &Key) {
    let d = p.data_mut();
    let v6 = quoted.is_v6();
    let outer = Layout::new(d, h.l3, h.l4, v6, if v6 { ICMPV6 } else { ICMP }, false);
    outer.set_addr(d, true, outer_to.src());
    outer.set_addr(d, false, outer_to.dst());
    let Some(icmp_csum) = outer.l4_csum.map(|(c, _)| c) else { return };
    // The quoted packet: its own header checksum and (UDP) checksum are
    // kept right, and every change is folded into the ICMP checksum.
    let ihl = if v6 { 40 } else { d.get(at).map_or(20, |b| (b & 0xf) as usize * 4) };
    let ql4 = at + ihl;
    let inner = Layout::new(d, at, ql4, v6, quoted.proto(), false);
    let before = d.to_vec();
    rewrite(&inner, d, quoted);
    // Fold the changes of the quoted bytes into the ICMP checksum.
    let mut i = at & !1;
    while i + 2 <= d.len() {
        let (o, n) = (be16(&before, i), be16(d, i));
        if o != n {
            let c = csum_replace(be16(d, icmp_csum), o, n);
            d[icmp_csum..icmp_csum + 2].copy_from_slice(&c.to_be_bytes());
        }
        i += 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_ovs_syntax() {
        for (text, canonical) in [
            ("", "nat"),
            ("src", "nat"),
            ("src=10.0.0.1", "nat(src=10.0.0.1)"),
            ("src=10.0.0.1-10.0.0.9:1000-2000,random", "nat(src=10.0.0.1-10.0.0.9:1000-2000,random)"),
            ("dst=10.1.1.2:80", "nat(dst=10.1.1.2:80)"),
            ("dst=[fd00::2]:80", "nat(dst=[fd00::2]:80)"),
            ("src=[fd00::1]-[fd00::3],persistent", "nat(src=[fd00::1]-[fd00::3],persistent)"),
            ("src=fd00::1", "nat(src=[fd00::1])"),
        ] {
            assert_eq!(parse_nat(text).unwrap().to_string(), canonical, "{text}");
        }
        for bad in ["src=10.0.0.9-10.0.0.1", "dst=1.2.3.4:0", "src=1.2.3.4:9-8", "src=x", "foo", "src=1.2.3.4,fast"] {
            assert!(parse_nat(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn candidates_keep_the_port_first_and_stay_in_range() {
        let orig = Key::new("10.0.0.2".parse().unwrap(), "8.8.8.8".parse().unwrap(), UDP, 5353, 53, 0);
        let Nat::Range(r) = parse_nat("src=192.0.2.1").unwrap() else { panic!() };
        let c: Vec<Key> = candidates(&orig, &r, 0).collect();
        assert_eq!(c.len(), MAX_ATTEMPTS);
        assert_eq!((c[0].dst().to_string().as_str(), c[0].dport()), ("192.0.2.1", 5353));
        assert!(c.iter().all(|k| k.dport() >= 1024 && k.src() == orig.dst() && k.sport() == 53));
        let Nat::Range(r) = parse_nat("dst=10.9.0.1-10.9.0.3:8000-8001").unwrap() else { panic!() };
        let c: Vec<Key> = candidates(&orig, &r, 0).collect();
        assert_eq!(c.len(), 6, "both ports of each of the three addresses");
        assert_eq!(c.iter().collect::<std::collections::BTreeSet<_>>().len(), 6);
        assert!(c.iter().all(|k| (8000..=8001).contains(&k.sport()) && k.dst() == orig.src()));
        // Clashing connections of one address pair start at different ports.
        let Nat::Range(r) = parse_nat("src=192.0.2.1").unwrap() else { panic!() };
        let starts: std::collections::BTreeSet<u16> =
            (0..20).map(|salt| candidates(&orig, &r, salt).nth(1).unwrap().dport()).collect();
        assert!(starts.len() > 10, "{starts:?}");
        // An echo's identifier is renumbered in the reply key's sport.
        let echo =
            Key::new("10.0.0.2".parse().unwrap(), "8.8.8.8".parse().unwrap(), ICMP, 77, super::super::tuple::ECHO, 0);
        let first = candidates(&echo, &r, 0).next().unwrap();
        assert_eq!(
            (first.src().to_string(), first.dst().to_string(), first.sport()),
            ("8.8.8.8".into(), "192.0.2.1".into(), 77)
        );
        assert!(first.is_echo());
        // The whole IPv6 space as a range does not overflow.
        let Nat::Range(r) = parse_nat("src=[::]-[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]").unwrap() else { panic!() };
        let v6 = Key::new("fd00::2".parse().unwrap(), "fd00::9".parse().unwrap(), UDP, 5, 6, 0);
        assert!(candidates(&v6, &r, 0).next().is_some());
    }
}
