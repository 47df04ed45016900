//! A pool's network section (`[pool.network]`) and the addresses it hands out.
//!
//! A pool with a network section moves each pod's VF netdev into the pod's own network namespace
//! and gives it one IPv4 address from the pool's range, the way sriov-cni with host-local IPAM
//! does, except that the address is booked in the ledger together with the VF (one atomic write),
//! so a crash can never hand one address to two pods. IPv4 only: RoCEv2 fabrics are addressed
//! with IPv4 in every deployment this targets, and one family keeps the refusals exact.

use std::collections::HashSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{ApiError, Result};
use crate::request::KEY_ADDRESS;

/// The interface name a moved VF gets inside the pod unless the pool names another.
pub const DEFAULT_IFNAME: &str = "rdma0";

/// An IPv4 address with its prefix length, e.g. `10.77.0.5/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> std::result::Result<Cidr, String> {
        let (a, p) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} has no prefix length (write it as 10.77.0.0/24)"))?;
        let addr =
            Ipv4Addr::from_str(a.trim()).map_err(|_| format!("{a:?} is not an IPv4 address"))?;
        let prefix: u8 = p
            .trim()
            .parse()
            .ok()
            .filter(|n| *n <= 32)
            .ok_or_else(|| format!("prefix length {p:?} is not a number from 0 to 32"))?;
        Ok(Cidr { addr, prefix })
    }

    fn mask(self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    pub fn network(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    pub fn broadcast(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network())
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl TryFrom<String> for Cidr {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Cidr, String> {
        Cidr::parse(&s)
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.to_string()
    }
}

/// `[pool.network]` as written in the node config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// Required: the fabric subnet; its presence turns the move on for the pool.
    pub subnet: String,
    /// `FIRST-LAST`; default: the subnet minus network, broadcast and gateway.
    #[serde(default)]
    pub range: Option<String>,
    #[serde(default)]
    pub gateway: Option<String>,
    /// Destinations (CIDR) routed via the gateway.
    #[serde(default)]
    pub routes: Vec<String>,
    #[serde(default)]
    pub ifname: Option<String>,
    #[serde(default)]
    pub mtu: Option<u32>,
}

/// A validated network section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolNetwork {
    pub subnet: Cidr,
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
    pub gateway: Option<Ipv4Addr>,
    pub routes: Vec<Cidr>,
    pub ifname: String,
    pub mtu: Option<u32>,
}

impl NetworkConfig {
    /// Validates the section of pool `pool`; errors name the key (`pool.network.<key>`).
    pub fn validate(&self, pool: &str) -> std::result::Result<PoolNetwork, String> {
        let key = |k: &str| format!("pool {pool:?}: network.{k}");
        let subnet = Cidr::parse(&self.subnet).map_err(|e| format!("{}: {e}", key("subnet")))?;
        if subnet.prefix > 30 {
            return Err(format!(
                "{} = {:?} leaves no host addresses: use a prefix of /30 or shorter",
                key("subnet"),
                self.subnet
            ));
        }
        let subnet = Cidr {
            addr: subnet.network(),
            prefix: subnet.prefix,
        };
        let gateway = match &self.gateway {
            None => None,
            Some(g) => {
                let ip = Ipv4Addr::from_str(g)
                    .map_err(|_| format!("{} = {g:?} is not an IPv4 address", key("gateway")))?;
                if !host_of(subnet, ip) {
                    return Err(format!(
                        "{} = {g} is not a host address of subnet {subnet}",
                        key("gateway")
                    ));
                }
                Some(ip)
            }
        };
        let (first, last) = match &self.range {
            None => (
                Ipv4Addr::from(u32::from(subnet.network()) + 1),
                Ipv4Addr::from(u32::from(subnet.broadcast()) - 1),
            ),
            Some(r) => {
                let bad = || {
                    format!(
                        "{} = {r:?} is not FIRST-LAST with both host addresses of {subnet} and FIRST <= LAST",
                        key("range")
                    )
                };
                let (a, b) = r.split_once('-').ok_or_else(bad)?;
                let a = Ipv4Addr::from_str(a.trim()).map_err(|_| bad())?;
                let b = Ipv4Addr::from_str(b.trim()).map_err(|_| bad())?;
                if !host_of(subnet, a) || !host_of(subnet, b) || u32::from(a) > u32::from(b) {
                    return Err(bad());
                }
                (a, b)
            }
        };
        let mut routes = Vec::new();
        for r in &self.routes {
            let c = Cidr::parse(r).map_err(|e| format!("{}: {e}", key("routes")))?;
            routes.push(Cidr {
                addr: c.network(),
                prefix: c.prefix,
            });
        }
        if !routes.is_empty() && gateway.is_none() {
            return Err(format!(
                "{} needs network.gateway: routes go via the gateway",
                key("routes")
            ));
        }
        let ifname = self.ifname.clone().unwrap_or_else(|| DEFAULT_IFNAME.into());
        if !valid_ifname(&ifname) {
            return Err(format!(
                "{} = {ifname:?} is not an interface name: 1 to 15 characters, no '/', ':', whitespace, and not \".\" or \"..\"",
                key("ifname")
            ));
        }
        if let Some(m) = self.mtu {
            if !(576..=65535).contains(&m) {
                return Err(format!(
                    "{} = {m} is out of range: use 576 to 65535",
                    key("mtu")
                ));
            }
        }
        let net = PoolNetwork {
            subnet,
            first,
            last,
            gateway,
            routes,
            ifname,
            mtu: self.mtu,
        };
        if net.free(&HashSet::new()).is_none() {
            return Err(format!(
                "{}: the range holds no address but the gateway",
                key("range")
            ));
        }
        Ok(net)
    }
}

impl PoolNetwork {
    /// The lowest address of the range that is neither the gateway nor in `used`.
    pub fn free(&self, used: &HashSet<Ipv4Addr>) -> Option<Cidr> {
        (u32::from(self.first)..=u32::from(self.last))
            .map(Ipv4Addr::from)
            .find(|ip| Some(*ip) != self.gateway && !used.contains(ip))
            .map(|addr| Cidr {
                addr,
                prefix: self.subnet.prefix,
            })
    }

    /// How many addresses the range offers (the gateway excluded).
    pub fn size(&self) -> u64 {
        let n = u64::from(u32::from(self.last) - u32::from(self.first)) + 1;
        let gw_in = self.gateway.is_some_and(|g| {
            (u32::from(self.first)..=u32::from(self.last)).contains(&u32::from(g))
        });
        n - u64::from(gw_in)
    }

    /// Checks a pod's static address (`rdma.conrdma.io/address`) against this subnet; the refusal
    /// names the key and the reason.
    pub fn check_static(&self, pool: &str, want: &StaticAddress) -> Result<Cidr> {
        let refuse = |reason: String| ApiError::InvalidAnnotation {
            key: KEY_ADDRESS.into(),
            value: want.text.clone(),
            reason,
            accepted: format!(
                "a host address of pool {pool}'s subnet {}, e.g. \"{}\"",
                self.subnet,
                self.free(&HashSet::new())
                    .map_or_else(String::new, |c| c.to_string())
            ),
        };
        if let Some(p) = want.prefix {
            if p != self.subnet.prefix {
                return Err(refuse(format!(
                    "prefix /{p} differs from pool {pool}'s subnet {}",
                    self.subnet
                )));
            }
        }
        if !host_of(self.subnet, want.addr) {
            return Err(refuse(format!(
                "{} is not a host address of pool {pool}'s subnet {}",
                want.addr, self.subnet
            )));
        }
        if Some(want.addr) == self.gateway {
            return Err(refuse(format!("{} is the pool's gateway", want.addr)));
        }
        Ok(Cidr {
            addr: want.addr,
            prefix: self.subnet.prefix,
        })
    }
}

/// A pod's `rdma.conrdma.io/address` annotation: an IPv4 address with an optional prefix length
/// (default: the pool subnet's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticAddress {
    pub addr: Ipv4Addr,
    pub prefix: Option<u8>,
    /// As written, for refusals.
    pub text: String,
}

impl StaticAddress {
    pub fn parse(text: &str) -> Result<StaticAddress> {
        let bad = |reason: String| ApiError::InvalidAnnotation {
            key: KEY_ADDRESS.into(),
            value: text.into(),
            reason,
            accepted: "an IPv4 address with an optional prefix length, e.g. \"10.77.0.5/24\""
                .into(),
        };
        let t = text.trim();
        let (addr, prefix) = match t.split_once('/') {
            Some(_) => {
                let c = Cidr::parse(t).map_err(bad)?;
                (c.addr, Some(c.prefix))
            }
            None => (
                Ipv4Addr::from_str(t).map_err(|_| bad(format!("{t:?} is not an IPv4 address")))?,
                None,
            ),
        };
        Ok(StaticAddress {
            addr,
            prefix,
            text: text.into(),
        })
    }
}

/// A usable host address of `subnet`: neither its network nor its broadcast address.
fn host_of(subnet: Cidr, ip: Ipv4Addr) -> bool {
    subnet.contains(ip) && ip != subnet.network() && ip != subnet.broadcast()
}

/// What Linux accepts as an interface name (dev_valid_name).
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(toml_text: &str) -> std::result::Result<PoolNetwork, String> {
        let c: NetworkConfig = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        c.validate("fabric-a")
    }

    #[test]
    fn defaults_take_the_whole_subnet_but_its_edges() {
        let n = net("subnet = \"10.77.0.9/24\"").unwrap();
        assert_eq!(n.subnet.to_string(), "10.77.0.0/24");
        assert_eq!(
            (n.first, n.last),
            ([10, 77, 0, 1].into(), [10, 77, 0, 254].into())
        );
        assert_eq!(n.ifname, "rdma0");
        assert_eq!(n.size(), 254);
    }

    #[test]
    fn allocation_skips_the_gateway_and_used_addresses() {
        let n = net("subnet = \"10.77.0.0/29\"\ngateway = \"10.77.0.1\"").unwrap();
        assert_eq!(n.size(), 5);
        let mut used = HashSet::new();
        let mut got = Vec::new();
        while let Some(c) = n.free(&used) {
            used.insert(c.addr);
            got.push(c.to_string());
        }
        assert_eq!(
            got,
            [
                "10.77.0.2/29",
                "10.77.0.3/29",
                "10.77.0.4/29",
                "10.77.0.5/29",
                "10.77.0.6/29"
            ]
        );
    }

    #[test]
    fn a_full_section_is_read() {
        let n = net(
            "subnet = \"10.77.0.0/24\"\nrange = \"10.77.0.10-10.77.0.250\"\ngateway = \"10.77.0.1\"\nroutes = [\"10.78.0.0/16\"]\nifname = \"fab0\"\nmtu = 4200",
        )
        .unwrap();
        assert_eq!(
            n.free(&HashSet::new()).unwrap().to_string(),
            "10.77.0.10/24"
        );
        assert_eq!(n.routes[0].to_string(), "10.78.0.0/16");
        assert_eq!((n.ifname.as_str(), n.mtu), ("fab0", Some(4200)));
    }

    #[test]
    fn bad_sections_are_refused_naming_the_key() {
        for (text, needle) in [
            ("subnet = \"10.77.0.0\"", "network.subnet"),
            ("subnet = \"10.77.0.0/31\"", "network.subnet"),
            ("subnet = \"10.77.0.300/24\"", "network.subnet"),
            ("subnet = \"10.77.0.0/24\"\nrange = \"10.77.1.1-10.77.1.9\"", "network.range"),
            ("subnet = \"10.77.0.0/24\"\nrange = \"10.77.0.9-10.77.0.1\"", "network.range"),
            ("subnet = \"10.77.0.0/24\"\nrange = \"10.77.0.0-10.77.0.9\"", "network.range"),
            ("subnet = \"10.77.0.0/24\"\ngateway = \"10.78.0.1\"", "network.gateway"),
            ("subnet = \"10.77.0.0/24\"\nroutes = [\"10.78.0.0/16\"]", "network.routes"),
            ("subnet = \"10.77.0.0/24\"\nifname = \"a/b\"", "network.ifname"),
            ("subnet = \"10.77.0.0/24\"\nifname = \"abcdefghijklmnop\"", "network.ifname"),
            ("subnet = \"10.77.0.0/24\"\nmtu = 9", "network.mtu"),
            (
                "subnet = \"10.77.0.0/24\"\nrange = \"10.77.0.1-10.77.0.1\"\ngateway = \"10.77.0.1\"",
                "network.range",
            ),
        ] {
            let e = net(text).expect_err(text);
            assert!(e.contains(needle) && e.contains("fabric-a"), "{text}: {e}");
        }
    }

    #[test]
    fn static_addresses_must_be_host_addresses_of_the_subnet() {
        let n = net("subnet = \"10.77.0.0/24\"\ngateway = \"10.77.0.1\"").unwrap();
        let ok = |t: &str| n.check_static("fabric-a", &StaticAddress::parse(t).unwrap());
        assert_eq!(ok("10.77.0.5/24").unwrap().to_string(), "10.77.0.5/24");
        assert_eq!(ok("10.77.0.5").unwrap().to_string(), "10.77.0.5/24");
        for (t, needle) in [
            ("10.78.0.5/24", "not a host address"),
            ("10.77.0.5/16", "prefix /16"),
            ("10.77.0.255", "not a host address"),
            ("10.77.0.1", "gateway"),
        ] {
            let e = ok(t).expect_err(t).to_string();
            assert!(e.contains(KEY_ADDRESS) && e.contains(needle), "{e}");
        }
        for t in ["10.77.0.5/33", "fe80::1", "ten"] {
            let e = StaticAddress::parse(t).expect_err(t).to_string();
            assert!(e.contains(KEY_ADDRESS), "{e}");
        }
    }
}
