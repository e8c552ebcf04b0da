//! Address ranges such as a WebSocket listener's `trusted_proxies`: `"10.0.0.0/8"`,
//! `"fd00::/8"`, or one address.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An IPv4 or IPv6 network in CIDR notation; an address without a prefix is that address alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Whether `ip` is in the network; an IPv4-mapped IPv6 address counts as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }

    fn max_prefix(addr: IpAddr) -> u8 {
        if addr.is_ipv4() {
            32
        } else {
            128
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpNetError {
    #[error("invalid IP address {0:?}")]
    Address(String),
    #[error("invalid prefix length {prefix:?}, expected 0..={max}")]
    Prefix { prefix: String, max: u8 },
}

impl FromStr for IpNet {
    type Err = IpNetError;

    fn from_str(text: &str) -> Result<IpNet, IpNetError> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| IpNetError::Address(addr.to_owned()))?;
        let max = IpNet::max_prefix(addr);
        let prefix =
            match prefix {
                None => max,
                Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| {
                    IpNetError::Prefix {
                        prefix: p.to_owned(),
                        max,
                    }
                })?,
            };
        Ok(IpNet { addr, prefix })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix == IpNet::max_prefix(self.addr) {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

impl Serialize for IpNet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpNet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        crate::text::deserialize(
            deserializer,
            "an IP address or a network such as \"10.0.0.0/8\" or \"fd00::/8\"",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn networks_contain_their_addresses() {
        let net: IpNet = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains(ip("10.1.200.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(
            net.contains(ip("::ffff:10.1.0.9")),
            "IPv4-mapped counts as IPv4"
        );
        let any: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(any.contains(ip("192.0.2.1")));
        assert!(!any.contains(ip("::1")));
        let v6: IpNet = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")));
        assert!(!v6.contains(ip("fe80::1")));
        let host: IpNet = "::1".parse().unwrap();
        assert!(host.contains(ip("::1")));
        assert!(!host.contains(ip("::2")));
    }

    #[test]
    fn networks_print_back_and_bad_ones_are_refused() {
        for text in ["10.1.0.0/16", "127.0.0.1", "fd00::/8", "::1", "0.0.0.0/0"] {
            assert_eq!(text.parse::<IpNet>().unwrap().to_string(), text);
        }
        assert_eq!(
            "10.0.0.1/32".parse::<IpNet>().unwrap().to_string(),
            "10.0.0.1"
        );
        for bad in [
            "",
            "10.0.0",
            "10.0.0/8",
            "host",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "x/8",
            "10.0.0.0/-1",
        ] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
    }
}
