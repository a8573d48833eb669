use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A 48-bit IEEE 802 MAC address.
///
/// ```
/// use vswitch_core::MacAddr;
/// let mac: MacAddr = "02:00:00:00:00:0a".parse().unwrap();
/// assert!(mac.is_unicast());
/// assert_eq!(mac.to_string(), "02:00:00:00:00:0a");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// ff:ff:ff:ff:ff:ff
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    /// 00:00:00:00:00:00
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// Reads a MAC address from the first six bytes of `b`.
    ///
    /// # Panics
    /// If `b` is shorter than six bytes.
    #[inline]
    pub fn from_slice(b: &[u8]) -> MacAddr {
        let mut m = [0u8; 6];
        m.copy_from_slice(&b[..6]);
        MacAddr(m)
    }

    /// The address as the low 48 bits of a `u64`.
    #[inline]
    pub fn to_u64(self) -> u64 {
        let b = self.0;
        u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
    }

    /// The address held in the low 48 bits of `v`.
    #[inline]
    pub fn from_u64(v: u64) -> MacAddr {
        let b = v.to_be_bytes();
        MacAddr([b[2], b[3], b[4], b[5], b[6], b[7]])
    }

    /// True for group addresses (the I/G bit set), broadcast included.
    #[inline]
    pub fn is_multicast(self) -> bool {
        self.0[0] & 1 != 0
    }

    /// True for ff:ff:ff:ff:ff:ff.
    #[inline]
    pub fn is_broadcast(self) -> bool {
        self == Self::BROADCAST
    }

    /// True for individual (unicast) addresses.
    #[inline]
    pub fn is_unicast(self) -> bool {
        !self.is_multicast()
    }
}

#[cfg(feature = "smoltcp")]
impl From<smoltcp::wire::EthernetAddress> for MacAddr {
    fn from(a: smoltcp::wire::EthernetAddress) -> Self {
        MacAddr(a.0)
    }
}

#[cfg(feature = "smoltcp")]
impl From<MacAddr> for smoltcp::wire::EthernetAddress {
    fn from(a: MacAddr) -> Self {
        smoltcp::wire::EthernetAddress(a.0)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a string is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a MAC address (expected six hex octets like 02:00:00:00:00:01)")]
pub struct ParseMacError(pub String);

impl FromStr for MacAddr {
    type Err = ParseMacError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseMacError(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in out.iter_mut() {
            let p = parts.next().ok_or_else(err)?;
            if p.is_empty() || p.len() > 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip() {
        let m: MacAddr = "02:1A:ff:00:09:10".parse().unwrap();
        assert_eq!(m.0, [0x02, 0x1a, 0xff, 0x00, 0x09, 0x10]);
        assert_eq!(m.to_string(), "02:1a:ff:00:09:10");
        assert_eq!("02-1a-ff-00-09-10".parse::<MacAddr>().unwrap(), m);
    }

    #[test]
    fn rejects_malformed() {
        for bad in ["", "02:00:00:00:00", "02:00:00:00:00:00:01", "0g:00:00:00:00:00", "002:00:00:00:00:0"] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn u64_round_trip_and_classes() {
        let m = MacAddr([0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb]);
        assert_eq!(MacAddr::from_u64(m.to_u64()), m);
        assert!(m.is_multicast() && !m.is_broadcast() && !m.is_unicast());
        assert!(MacAddr::BROADCAST.is_broadcast() && MacAddr::BROADCAST.is_multicast());
    }

    #[test]
    fn serde_as_string() {
        let m: MacAddr = "02:00:00:00:00:01".parse().unwrap();
        let j = serde_json::to_string(&m).unwrap();
        assert_eq!(j, "\"02:00:00:00:00:01\"");
        assert_eq!(serde_json::from_str::<MacAddr>(&j).unwrap(), m);
    }
}
