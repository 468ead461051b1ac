//! Client addresses behind a reverse proxy or load balancer.
//!
//! Behind a proxy every connection comes from the proxy's address, so the limits keyed by
//! client address would lump every client together. With `[ingress] trusted_proxies` set, a
//! request whose TCP peer is a trusted proxy speaks for the right-most address of its
//! `X-Forwarded-For` header that is not itself a trusted proxy: the address the nearest
//! trusted proxy saw. Entries to the left of it were written by the client and are never
//! read. A request from any other peer is its peer, whatever its headers say, and a
//! malformed header from a trusted proxy falls back to the peer (and is counted in
//! [`FORWARDED_MALFORMED`](sluice_core::telemetry::FORWARDED_MALFORMED)).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use warp::http::HeaderMap;

/// An IP address or a CIDR network, written `"10.0.0.7"`, `"10.0.0.0/8"` or `"fd00::/8"`. A
/// bare address is a network of that one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct IpNetwork {
    address: IpAddr,
    prefix: u8,
}

/// Why a string is not an [`IpNetwork`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidNetwork {
    /// The part before any `/` is not an IP address.
    #[error("{0:?} is not an IP address or CIDR network (e.g. \"10.0.0.7\" or \"10.0.0.0/8\")")]
    Address(String),
    /// The prefix length is not a number within the address's bits.
    #[error("{0:?} has a prefix length that is not 0 to 32 (IPv4) or 0 to 128 (IPv6)")]
    Prefix(String),
}

impl IpNetwork {
    /// The network of `address`'s first `prefix` bits.
    pub fn new(address: IpAddr, prefix: u8) -> Result<Self, InvalidNetwork> {
        let address = address.to_canonical();
        if prefix > max_prefix(address) {
            return Err(InvalidNetwork::Prefix(format!("{address}/{prefix}")));
        }
        Ok(IpNetwork { address, prefix })
    }

    /// The prefix length, in bits.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether the written address has bits set past the prefix (`10.0.0.1/8`), which is
    /// usually a typing mistake.
    pub fn has_host_bits(&self) -> bool {
        bits(self.address) & !mask(self.address, self.prefix) != 0
    }

    /// Whether `ip` (IPv4-mapped IPv6 addresses count as IPv4) is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        if ip.is_ipv4() != self.address.is_ipv4() {
            return false;
        }
        let mask = mask(ip, self.prefix);
        bits(ip) & mask == bits(self.address) & mask
    }
}

fn max_prefix(address: IpAddr) -> u8 {
    if address.is_ipv4() {
        32
    } else {
        128
    }
}

/// The address's bits, right-aligned in a `u128`.
fn bits(address: IpAddr) -> u128 {
    match address {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The mask of the first `prefix` bits of an address of `address`'s family.
fn mask(address: IpAddr, prefix: u8) -> u128 {
    let width = u32::from(max_prefix(address));
    let all = if width == 128 {
        u128::MAX
    } else {
        (1u128 << width) - 1
    };
    let host_bits = all.checked_shr(u32::from(prefix)).unwrap_or(0);
    all & !host_bits
}

impl FromStr for IpNetwork {
    type Err = InvalidNetwork;

    fn from_str(text: &str) -> Result<Self, InvalidNetwork> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address
            .parse()
            .map_err(|_| InvalidNetwork::Address(text.to_string()))?;
        let address = address.to_canonical();
        let prefix = match prefix {
            None => max_prefix(address),
            Some(prefix) if !prefix.is_empty() && prefix.bytes().all(|b| b.is_ascii_digit()) => {
                prefix
                    .parse()
                    .map_err(|_| InvalidNetwork::Prefix(text.to_string()))?
            }
            Some(_) => return Err(InvalidNetwork::Prefix(text.to_string())),
        };
        if prefix > max_prefix(address) {
            return Err(InvalidNetwork::Prefix(text.to_string()));
        }
        Ok(IpNetwork { address, prefix })
    }
}

impl TryFrom<String> for IpNetwork {
    type Error = InvalidNetwork;

    fn try_from(text: String) -> Result<Self, InvalidNetwork> {
        text.parse()
    }
}

impl fmt::Display for IpNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix == max_prefix(self.address) {
            write!(f, "{}", self.address)
        } else {
            write!(f, "{}/{}", self.address, self.prefix)
        }
    }
}

impl From<IpNetwork> for String {
    fn from(network: IpNetwork) -> String {
        network.to_string()
    }
}

/// Where a request's client address came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientSource {
    /// The TCP peer: not a trusted proxy, or a trusted proxy that sent no `X-Forwarded-For`.
    Peer(IpAddr),
    /// `X-Forwarded-For`, as written by a trusted proxy.
    Forwarded(IpAddr),
    /// The TCP peer, because the trusted proxy's `X-Forwarded-For` could not be read.
    Malformed(IpAddr),
}

impl ClientSource {
    /// The client address.
    pub fn address(self) -> IpAddr {
        match self {
            ClientSource::Peer(ip) | ClientSource::Forwarded(ip) | ClientSource::Malformed(ip) => {
                ip
            }
        }
    }
}

/// The proxies whose `X-Forwarded-For` is believed (`[ingress] trusted_proxies`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    networks: Vec<IpNetwork>,
}

impl TrustedProxies {
    /// Trusts the proxies in `networks` (none: every request is its TCP peer).
    pub fn new(networks: &[IpNetwork]) -> Self {
        TrustedProxies {
            networks: networks.to_vec(),
        }
    }

    /// Whether `ip` is a trusted proxy.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.networks.iter().any(|network| network.contains(ip))
    }

    /// The client address of a request that came from `peer` with `headers`: `peer` unless
    /// it is a trusted proxy; then the right-most `X-Forwarded-For` entry that is not a
    /// trusted proxy (or the left-most one when every entry is). Every `X-Forwarded-For`
    /// header counts, in order, as one list.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> ClientSource {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return ClientSource::Peer(peer);
        }
        let mut entries = Vec::new();
        for value in headers.get_all("x-forwarded-for") {
            let Ok(value) = value.to_str() else {
                return ClientSource::Malformed(peer);
            };
            entries.extend(value.split(',').map(str::trim));
        }
        let mut leftmost = None;
        for entry in entries.iter().rev() {
            let Ok(ip) = entry.parse::<IpAddr>() else {
                return ClientSource::Malformed(peer);
            };
            let ip = ip.to_canonical();
            if !self.trusts(ip) {
                return ClientSource::Forwarded(ip);
            }
            leftmost = Some(ip);
        }
        leftmost.map_or(ClientSource::Peer(peer), ClientSource::Forwarded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warp::http::HeaderValue;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn proxies(networks: &[&str]) -> TrustedProxies {
        let networks: Vec<IpNetwork> = networks.iter().map(|n| n.parse().unwrap()).collect();
        TrustedProxies::new(&networks)
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn networks_parse_print_and_contain() {
        let net: IpNetwork = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains(ip("10.1.200.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(net.contains(ip("::ffff:10.1.0.9")), "IPv4-mapped counts");
        assert!(!net.contains(ip("fd00::1")));
        assert_eq!(net.to_string(), "10.1.0.0/16");
        let one: IpNetwork = "192.0.2.7".parse().unwrap();
        assert_eq!(one.prefix(), 32);
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        assert_eq!(one.to_string(), "192.0.2.7");
        let v6: IpNetwork = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        let all: IpNetwork = "::/0".parse().unwrap();
        assert!(all.contains(ip("2001:db8::1")) && !all.contains(ip("192.0.2.1")));
        let all4: IpNetwork = "0.0.0.0/0".parse().unwrap();
        assert!(all4.contains(ip("192.0.2.1")));
        assert!("10.0.0.1/8".parse::<IpNetwork>().unwrap().has_host_bits());
        assert!(!net.has_host_bits() && !one.has_host_bits() && !all.has_host_bits());
        for bad in [
            "",
            "10.0.0",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "proxy",
        ] {
            assert!(bad.parse::<IpNetwork>().is_err(), "{bad:?} parsed");
        }
        let error = "10.0.0.0/33".parse::<IpNetwork>().unwrap_err().to_string();
        assert!(
            error.contains("10.0.0.0/33") && error.contains("0 to 32"),
            "{error}"
        );
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let trusted = proxies(&["127.0.0.1"]);
        let headers = forwarded(&["198.51.100.9"]);
        assert_eq!(
            trusted.client(ip("127.0.0.2"), &headers),
            ClientSource::Peer(ip("127.0.0.2"))
        );
        assert_eq!(
            TrustedProxies::default().client(ip("127.0.0.1"), &headers),
            ClientSource::Peer(ip("127.0.0.1"))
        );
    }

    #[test]
    fn a_trusted_proxy_speaks_for_the_right_most_untrusted_entry() {
        let trusted = proxies(&["10.0.0.0/8", "127.0.0.1"]);
        let peer = ip("127.0.0.1");
        // The client forged the left entry; the proxy appended what it saw.
        let headers = forwarded(&["203.0.113.5, 198.51.100.9"]);
        assert_eq!(
            trusted.client(peer, &headers),
            ClientSource::Forwarded(ip("198.51.100.9"))
        );
        // Proxies in a chain are skipped, across several headers too.
        let headers = forwarded(&["203.0.113.5,198.51.100.9", " 10.1.2.3 ", "10.9.9.9"]);
        assert_eq!(
            trusted.client(peer, &headers),
            ClientSource::Forwarded(ip("198.51.100.9"))
        );
        // No header: the proxy itself (a health check).
        assert_eq!(
            trusted.client(peer, &HeaderMap::new()),
            ClientSource::Peer(peer)
        );
        // Only proxies: the furthest one.
        assert_eq!(
            trusted.client(peer, &forwarded(&["10.0.0.2, 10.0.0.3"])),
            ClientSource::Forwarded(ip("10.0.0.2"))
        );
        // IPv6 and IPv4-mapped entries.
        assert_eq!(
            trusted.client(peer, &forwarded(&["2001:db8::1"])),
            ClientSource::Forwarded(ip("2001:db8::1"))
        );
        assert_eq!(
            trusted.client(ip("::ffff:127.0.0.1"), &forwarded(&["::ffff:192.0.2.1"])),
            ClientSource::Forwarded(ip("192.0.2.1"))
        );
    }

    #[test]
    fn a_malformed_header_from_a_trusted_proxy_falls_back_to_the_peer() {
        let trusted = proxies(&["127.0.0.1"]);
        let peer = ip("127.0.0.1");
        for bad in [
            "not-an-address",
            "198.51.100.9,",
            "198.51.100.9:4711",
            "[2001:db8::1]:80",
            "",
            "198.51.100.9 203.0.113.5",
        ] {
            assert_eq!(
                trusted.client(peer, &forwarded(&[bad])),
                ClientSource::Malformed(peer),
                "{bad:?}"
            );
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"198.51.100.\xff").unwrap(),
        );
        assert_eq!(
            trusted.client(peer, &headers),
            ClientSource::Malformed(peer)
        );
        // A bad entry left of the client's is never read.
        assert_eq!(
            trusted.client(peer, &forwarded(&["garbage, 198.51.100.9"])),
            ClientSource::Forwarded(ip("198.51.100.9"))
        );
    }
}
