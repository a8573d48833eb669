//! The cluster's records in etcd, in flannel's layout (docs/cluster.md):
//!
//! - `PREFIX/config`: the cluster network (`Network`, `SubnetLen`,
//!   `SubnetMin`, `SubnetMax`, `Backend` with `Type` `vxlan` (`VNI`,
//!   `Port`) or `host-gw`);
//! - `PREFIX/subnets/A.B.C.D-LEN`: one host's lease (`PublicIP`,
//!   `BackendType`, `BackendData` with the VXLAN `VNI` and `VtepMAC`),
//!   attached to an etcd lease so that it goes when the host does.

use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use vswitch_core::MacAddr;

/// flannel's default VXLAN UDP port (the Linux kernel's, not IANA's 4789).
pub const VXLAN_PORT: u16 = 8472;

/// The backend: how packets reach another host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// Encapsulated in VXLAN.
    Vxlan {
        /// The VXLAN network identifier.
        vni: u32,
        /// The UDP port.
        port: u16,
    },
    /// Routed on a shared segment.
    HostGw,
}

impl Backend {
    /// Its `Type` in the configuration and the leases.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Vxlan { .. } => "vxlan",
            Backend::HostGw => "host-gw",
        }
    }
}

/// `PREFIX/config`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The cluster's block.
    pub network: Ipv4Net,
    /// Each host's subnet's prefix length.
    pub subnet_len: u8,
    /// The first and last subnets handed out.
    pub subnet_min: Ipv4Addr,
    #[allow(missing_docs)]
    pub subnet_max: Ipv4Addr,
    /// The backend.
    pub backend: Backend,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawConfig {
    network: Option<String>,
    subnet_len: Option<u8>,
    subnet_min: Option<String>,
    subnet_max: Option<String>,
    #[serde(default)]
    backend: Option<Value>,
    #[serde(default, rename = "EnableIPv4")]
    enable_ipv4: Option<bool>,
    #[serde(default, rename = "EnableIPv6")]
    enable_ipv6: Option<bool>,
}

fn u32_of(a: Ipv4Addr) -> u32 {
    u32::from(a)
}

impl Config {
    /// Parses and checks `PREFIX/config` as flannel reads it (its
    /// defaults: `SubnetLen` 24 or 2 bits more than a smaller block,
    /// `SubnetMin` the block's second subnet, `SubnetMax` its last,
    /// backend `vxlan` with VNI 1 on port 8472).
    ///
    /// # Errors
    /// Why the configuration cannot be used.
    pub fn parse(text: &str) -> Result<Config, String> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| format!("not a flannel configuration: {e}"))?;
        if raw.enable_ipv6 == Some(true) || raw.enable_ipv4 == Some(false) {
            return Err("only IPv4 cluster networks are supported (EnableIPv6 is not)".into());
        }
        let network: Ipv4Net =
            raw.network.as_deref().ok_or("'Network' is missing")?.parse().map_err(|e| format!("'Network': {e}"))?;
        if network != network.trunc() {
            return Err(format!("'Network' {network} has host bits set"));
        }
        let subnet_len =
            raw.subnet_len.unwrap_or(if network.prefix_len() < 24 { 24 } else { network.prefix_len() + 2 });
        if subnet_len <= network.prefix_len() || subnet_len > 30 {
            return Err(format!(
                "'SubnetLen' {subnet_len} must be longer than the network's /{} and at most 30",
                network.prefix_len()
            ));
        }
        let size = 1u32 << (32 - subnet_len);
        let first = u32_of(network.network());
        let last = u32_of(network.broadcast()) - (size - 1);
        let parse_at = |key: &str, v: &Option<String>, default: u32| -> Result<Ipv4Addr, String> {
            let Some(v) = v else { return Ok(Ipv4Addr::from(default)) };
            let a: Ipv4Addr = v.parse().map_err(|e| format!("'{key}': {e}"))?;
            if !network.contains(&a) || !(u32_of(a) - first).is_multiple_of(size) {
                return Err(format!("'{key}' {a} is not the start of a /{subnet_len} in {network}"));
            }
            Ok(a)
        };
        let subnet_min = parse_at("SubnetMin", &raw.subnet_min, first + size)?;
        let subnet_max = parse_at("SubnetMax", &raw.subnet_max, last)?;
        if subnet_min > subnet_max {
            return Err(format!("'SubnetMin' {subnet_min} is after 'SubnetMax' {subnet_max}"));
        }
        let backend = match raw.backend {
            None | Some(Value::Null) => Backend::Vxlan { vni: 1, port: VXLAN_PORT },
            Some(b) => {
                let kind = b.get("Type").and_then(Value::as_str).unwrap_or("vxlan");
                let num = |key: &str, default: u64, max: u64| -> Result<u64, String> {
                    match b.get(key) {
                        None | Some(Value::Null) => Ok(default),
                        Some(v) => v
                            .as_u64()
                            .filter(|n| *n <= max)
                            .ok_or_else(|| format!("Backend '{key}' must be a number up to {max}")),
                    }
                };
                match kind {
                    "vxlan" => Backend::Vxlan {
                        vni: u32::try_from(num("VNI", 1, (1 << 24) - 1)?).unwrap_or(1),
                        port: match u16::try_from(num("Port", u64::from(VXLAN_PORT), 65535)?) {
                            Ok(0) | Err(_) => VXLAN_PORT,
                            Ok(p) => p,
                        },
                    },
                    "host-gw" => Backend::HostGw,
                    other => return Err(format!("backend '{other}' is not supported (vxlan, host-gw)")),
                }
            }
        };
        Ok(Config { network, subnet_len, subnet_min, subnet_max, backend })
    }

    /// Every subnet that may be handed out, in order.
    pub fn candidates(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        let size = 1u32 << (32 - self.subnet_len);
        let (lo, hi) = (u32_of(self.subnet_min), u32_of(self.subnet_max));
        (0..=(hi - lo) / size).map(move |i| {
            Ipv4Net::new(Ipv4Addr::from(lo + i * size), self.subnet_len).expect("a prefix length checked above")
        })
    }

    /// True if `subnet` is one this configuration hands out.
    pub fn allows(&self, subnet: Ipv4Net) -> bool {
        subnet.prefix_len() == self.subnet_len
            && subnet == subnet.trunc()
            && subnet.network() >= self.subnet_min
            && subnet.network() <= self.subnet_max
    }
}

/// A subnet's key under `PREFIX/subnets/`: `A.B.C.D-LEN`.
pub fn subnet_key(prefix: &str, subnet: Ipv4Net) -> String {
    format!("{prefix}/subnets/{}-{}", subnet.network(), subnet.prefix_len())
}

/// The subnet a key under `PREFIX/subnets/` names.
pub fn parse_subnet_key(prefix: &str, key: &str) -> Option<Ipv4Net> {
    let rest = key.strip_prefix(prefix)?.strip_prefix("/subnets/")?;
    let (addr, len) = rest.split_once('-')?;
    let net = Ipv4Net::new(addr.parse().ok()?, len.parse().ok()?).ok()?;
    (net == net.trunc()).then_some(net)
}

/// A host's lease record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LeaseAttrs {
    /// Its underlay address.
    #[serde(rename = "PublicIP")]
    pub public_ip: Ipv4Addr,
    /// `vxlan` or `host-gw`.
    pub backend_type: String,
    /// VXLAN: `{"VNI": n, "VtepMAC": "..."}`; host-gw: null.
    #[serde(default)]
    pub backend_data: Value,
}

impl LeaseAttrs {
    /// The record this host publishes.
    pub fn new(public_ip: Ipv4Addr, backend: &Backend, vtep_mac: Option<MacAddr>) -> LeaseAttrs {
        let backend_data = match (backend, vtep_mac) {
            (Backend::Vxlan { vni, .. }, Some(mac)) => serde_json::json!({ "VNI": vni, "VtepMAC": mac.to_string() }),
            _ => Value::Null,
        };
        LeaseAttrs { public_ip, backend_type: backend.name().into(), backend_data }
    }

    /// The VXLAN VTEP MAC, if it has a usable one.
    pub fn vtep_mac(&self) -> Option<MacAddr> {
        let s = self.backend_data.get("VtepMAC")?.as_str()?;
        let mac: MacAddr = s.parse().ok()?;
        (mac.0[0] & 1 == 0 && mac.0 != [0; 6]).then_some(mac)
    }
}

/// Another host, as its lease says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Its subnet.
    pub subnet: Ipv4Net,
    /// Its record.
    pub attrs: LeaseAttrs,
    /// Its etcd lease (0: none, a record that never expires).
    pub lease: i64,
}

impl Host {
    /// The route to it for `backend`, or why there is none.
    pub fn route(&self, backend: &Backend) -> Result<vswitch_core::net::RemoteSubnet, String> {
        if self.attrs.backend_type != backend.name() {
            return Err(format!(
                "{}: its backend is '{}', the cluster's is '{}'",
                self.subnet,
                self.attrs.backend_type,
                backend.name()
            ));
        }
        let vtep_mac = match backend {
            Backend::Vxlan { .. } => {
                Some(self.attrs.vtep_mac().ok_or_else(|| format!("{}: its lease has no usable VtepMAC", self.subnet))?)
            }
            Backend::HostGw => None,
        };
        Ok(vswitch_core::net::RemoteSubnet {
            subnet: IpNet::V4(self.subnet),
            public_ip: self.attrs.public_ip,
            vtep_mac,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_flannels() {
        let c = Config::parse(r#"{"Network": "10.244.0.0/16"}"#).unwrap();
        assert_eq!(c.subnet_len, 24);
        assert_eq!(c.subnet_min, "10.244.1.0".parse::<Ipv4Addr>().unwrap());
        assert_eq!(c.subnet_max, "10.244.255.0".parse::<Ipv4Addr>().unwrap());
        assert_eq!(c.backend, Backend::Vxlan { vni: 1, port: 8472 });
        assert_eq!(c.candidates().count(), 255);
        let c = Config::parse(r#"{"Network": "10.1.0.0/24", "Backend": {"Type": "host-gw"}}"#).unwrap();
        assert_eq!((c.subnet_len, &c.backend), (26, &Backend::HostGw));
        assert_eq!(
            c.candidates().map(|n| n.to_string()).collect::<Vec<_>>(),
            ["10.1.0.64/26", "10.1.0.128/26", "10.1.0.192/26"]
        );
    }

    #[test]
    fn bad_configurations_say_why() {
        for (text, why) in [
            (r#"{}"#, "'Network' is missing"),
            (r#"{"Network": "10.0.0.1/16"}"#, "host bits"),
            (r#"{"Network": "10.0.0.0/16", "SubnetLen": 16}"#, "longer than"),
            (r#"{"Network": "10.0.0.0/16", "SubnetMin": "10.0.0.5"}"#, "not the start"),
            (r#"{"Network": "10.0.0.0/16", "Backend": {"Type": "udp"}}"#, "not supported"),
            (r#"{"Network": "10.0.0.0/16", "Backend": {"VNI": 16777216}}"#, "VNI"),
            (r#"{"Network": "10.0.0.0/16", "EnableIPv6": true}"#, "IPv4"),
            ("not json", "not a flannel"),
        ] {
            let e = Config::parse(text).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn keys_round_trip() {
        let n: Ipv4Net = "10.5.3.0/24".parse().unwrap();
        let k = subnet_key("/coreos.com/network", n);
        assert_eq!(k, "/coreos.com/network/subnets/10.5.3.0-24");
        assert_eq!(parse_subnet_key("/coreos.com/network", &k), Some(n));
        assert_eq!(parse_subnet_key("/coreos.com/network", "/coreos.com/network/subnets/10.5.3.1-24"), None);
        assert_eq!(parse_subnet_key("/coreos.com/network", "/other/subnets/10.5.3.0-24"), None);
    }

    #[test]
    fn lease_records_are_flannels() {
        let mac: MacAddr = "0a:58:0a:f4:01:00".parse().unwrap();
        let a = LeaseAttrs::new("192.168.1.5".parse().unwrap(), &Backend::Vxlan { vni: 1, port: 8472 }, Some(mac));
        let text = serde_json::to_string(&a).unwrap();
        assert_eq!(
            text,
            r#"{"PublicIP":"192.168.1.5","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:58:0a:f4:01:00"}}"#
        );
        // What flannel itself writes (with fields this agent ignores).
        let theirs: LeaseAttrs = serde_json::from_str(
            r#"{"PublicIP":"10.0.0.2","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"82:1f:4e:0c:3a:11"},"BackendV6Data":null}"#,
        )
        .unwrap_or_else(|_| panic!("flannel's record"));
        assert_eq!(theirs.vtep_mac(), Some("82:1f:4e:0c:3a:11".parse().unwrap()));
    }
}
