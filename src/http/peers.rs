//! Who a client is: the trusted proxies, the client address behind them, and the key that the
//! per-address limits count by.
//!
//! `X-Forwarded-For` is believed only when the TCP peer is a configured trusted proxy; then the
//! client is found by walking the header from the right (the hop the nearest proxy added) past
//! every address that is itself a trusted proxy. The first address that is not is the client;
//! everything to its left was written by whoever sent the request and is ignored. When the peer
//! is not trusted, the header is ignored altogether: anyone can write it.
//!
//! Limits count an IPv6 client by its /64 (one subscriber's prefix: an attacker with a /64 has
//! 2^64 source addresses, one household has one prefix), an IPv4 client by its address.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

/// An address or a CIDR block (`10.0.0.0/8`, `::1`, `fd00::/8`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ADDR` or `ADDR/PREFIX`.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an address or CIDR block like 10.0.0.0/8"))?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr { addr, prefix })
    }

    /// Whether `ip` is in this block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let (bytes, rest) = ((bits / 8) as usize, bits % 8);
    if a[..bytes] != b[..bytes] {
        return false;
    }
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        a[bytes] & mask == b[bytes] & mask
    }
}

/// Parses a list of addresses and CIDR blocks (the `trusted_proxies` keys).
pub fn parse_trusted(list: &[String]) -> Result<Vec<Cidr>, String> {
    list.iter().map(|s| Cidr::parse(s)).collect()
}

pub(super) fn is_trusted(trusted: &[Cidr], ip: IpAddr) -> bool {
    trusted.iter().any(|c| c.contains(ip))
}

/// The client address of a request from `peer` with these `X-Forwarded-For` values.
pub(super) fn client_addr<'a>(
    peer: IpAddr,
    forwarded_for: impl Iterator<Item = &'a str>,
    trusted: &[Cidr],
) -> IpAddr {
    let peer = peer.to_canonical();
    if !is_trusted(trusted, peer) {
        return peer;
    }
    let hops: Vec<&str> = forwarded_for
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        // What a trusted proxy wrote is an address; anything else came from further left, where
        // the sender writes what it likes: stop at the last trusted hop.
        let Some(ip) = parse_hop(hop) else {
            return client;
        };
        client = ip;
        if !is_trusted(trusted, ip) {
            return ip;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]:80`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = hop.strip_prefix('[') {
        let (ip, port) = rest.split_once(']')?;
        if !port.is_empty() && !port.strip_prefix(':')?.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        return ip
            .parse::<Ipv6Addr>()
            .ok()
            .map(|ip| IpAddr::V6(ip).to_canonical());
    }
    let (ip, port) = hop.split_once(':')?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    ip.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// What the per-address limits count by: an IPv4 address, or an IPv6 address's /64.
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_blocks() {
        let net = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(net.contains(ip("10.1.200.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(net.contains(ip("::ffff:10.1.0.9")), "v4-mapped");
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let odd = Cidr::parse("192.168.0.128/25").unwrap();
        assert!(odd.contains(ip("192.168.0.200")) && !odd.contains(ip("192.168.0.127")));
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        for bad in [
            "",
            "localhost",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/x",
            "1.2.3.4/",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Cidr::parse(" ::1 ").unwrap().to_string(), "::1/128");
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = parse_trusted(&["127.0.0.1".into(), "10.0.0.0/8".into()]).unwrap();
        let client =
            |peer: &str, xff: &[&str]| client_addr(ip(peer), xff.iter().copied(), &trusted);
        // Not a trusted peer: the header is ignored.
        assert_eq!(client("203.0.113.5", &["198.51.100.1"]), ip("203.0.113.5"));
        // A trusted peer: the rightmost untrusted hop; what the sender wrote on the left is not.
        assert_eq!(client("127.0.0.1", &["198.51.100.1"]), ip("198.51.100.1"));
        assert_eq!(
            client("127.0.0.1", &["6.6.6.6, 198.51.100.1, 10.0.0.7"]),
            ip("198.51.100.1")
        );
        assert_eq!(
            client("127.0.0.1", &["6.6.6.6", "198.51.100.1"]),
            ip("198.51.100.1"),
            "several header lines are one list"
        );
        // No header, or only trusted hops: the leftmost trusted one.
        assert_eq!(client("127.0.0.1", &[]), ip("127.0.0.1"));
        assert_eq!(client("127.0.0.1", &["10.0.0.3, 10.0.0.4"]), ip("10.0.0.3"));
        // Garbage stops the walk at the last trusted hop.
        assert_eq!(client("127.0.0.1", &["unknown"]), ip("127.0.0.1"));
        assert_eq!(
            client("127.0.0.1", &["1.1.1.1, junk, 10.0.0.2"]),
            ip("10.0.0.2")
        );
        // Ports and brackets, as some proxies write them.
        assert_eq!(
            client("127.0.0.1", &["198.51.100.1:4711"]),
            ip("198.51.100.1")
        );
        assert_eq!(
            client("127.0.0.1", &["[2001:db8::1]:80"]),
            ip("2001:db8::1")
        );
        assert_eq!(client("127.0.0.1", &["2001:db8::2"]), ip("2001:db8::2"));
        assert_eq!(
            client("::ffff:127.0.0.1", &["::ffff:1.2.3.4"]),
            ip("1.2.3.4")
        );
        assert_eq!(client("127.0.0.1", &["1.2.3.4:"]), ip("127.0.0.1"));
        // Nothing trusted: never believed.
        assert_eq!(
            client_addr(ip("127.0.0.1"), ["1.2.3.4"].into_iter(), &[]),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn limits_count_ipv6_by_its_64() {
        assert_eq!(limit_key(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
        assert_eq!(limit_key(ip("2001:db8:1:2::ffff")), ip("2001:db8:1:2::"));
        assert_eq!(limit_key(ip("::ffff:1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(limit_key(ip("127.0.0.2")), ip("127.0.0.2"));
    }
}
