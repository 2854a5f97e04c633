//! Who is on the other end of a request, as far as limits are concerned.
//!
//! The connection acceptor records the TCP peer (`PeerAddr`) on every
//! request; `ClientIp` is the address the per-client limits count against;
//! `IpKey` groups addresses that one client controls, so that an IPv6 user
//! cannot escape a per-address limit by hopping inside their /64.
//! `ClientIpLayer` replaces `ClientIp` with the address a trusted proxy
//! (`TRUSTED_PROXIES`) reports in `X-Forwarded-For` or `Forwarded`; from any
//! other peer those headers are ignored, since a client can write them.

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::Arc,
    task::{Context, Poll},
};

use http::{HeaderMap, Request};
use tower::{Layer, Service};

/// The TCP peer of the connection a request arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// The client's address: the TCP peer, or what a trusted proxy in front of
/// the server said the client's address was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl ClientIp {
    pub fn key(self) -> IpKey {
        IpKey::of(self.0)
    }
}

/// An address as one client: IPv4 as it is, IPv6 by its /64 (the smallest
/// block an ISP hands a customer); IPv4 mapped into IPv6 counts as IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpKey {
    V4([u8; 4]),
    V6Prefix64([u8; 8]),
}

impl IpKey {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => IpKey::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpKey::V4(v4.octets()),
                None => {
                    let o = v6.octets();
                    IpKey::V6Prefix64(o[..8].try_into().expect("8 of 16 bytes"))
                }
            },
        }
    }
}

impl std::fmt::Display for IpKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IpKey::V4(o) => write!(f, "{}", std::net::Ipv4Addr::from(*o)),
            IpKey::V6Prefix64(p) => {
                let mut o = [0u8; 16];
                o[..8].copy_from_slice(p);
                write!(f, "{}/64", Ipv6Addr::from(o))
            }
        }
    }
}

/// An address block: an address and a prefix length (`10.0.0.0/8`,
/// `2001:db8::/32`, or one address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpRange {
    addr: IpAddr,
    prefix: u8,
}

/// IPv4 mapped into IPv6 (as a dual-stack socket reports IPv4 peers) is IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl IpRange {
    pub fn parse(text: &str) -> Result<Self, String> {
        let wrong =
            || format!("expected an IP address or a CIDR block like 10.0.0.0/8, got {text:?}");
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr = canonical(addr.parse::<IpAddr>().map_err(|_| wrong())?);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(wrong)?,
        };
        Ok(IpRange { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |ip: IpAddr| match ip {
            IpAddr::V4(v4) => u128::from(u32::from(v4)) << 96,
            IpAddr::V6(v6) => u128::from(v6),
        };
        let ip = canonical(ip);
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        let mask = u128::MAX
            .checked_shl(128 - u32::from(self.prefix))
            .unwrap_or(0);
        (bits(ip) & mask) == (bits(self.addr) & mask)
    }
}

/// The reverse proxies whose forwarding headers are believed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpRange>);

/// Forwarding hops looked at, from the right; more are not believed anyway.
const MAX_HOPS: usize = 32;

impl TrustedProxies {
    /// A comma- or space-separated list of addresses and CIDR blocks.
    pub fn parse(list: &str) -> Result<Self, String> {
        list.split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(IpRange::parse)
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|range| range.contains(ip))
    }

    /// The client of a request from `peer`: the peer itself, unless it is a
    /// trusted proxy; then the right-most hop of `X-Forwarded-For` (or, when
    /// absent, `Forwarded`) that is not a trusted proxy. Each proxy appends
    /// the address it was connected from, so that hop is the first one a
    /// trusted party wrote; what is left of it the client may have made up.
    /// A hop that is not an address (`unknown`, an obfuscated name) stops
    /// the walk at the last trusted hop.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.contains(peer) {
            return peer;
        }
        let hops = forwarded_hops(headers);
        let mut client = peer;
        for hop in hops.iter().rev().take(MAX_HOPS) {
            match hop {
                Some(ip) => {
                    client = *ip;
                    if !self.contains(*ip) {
                        break;
                    }
                }
                None => break,
            }
        }
        client
    }
}

/// The hops of `X-Forwarded-For`, or of `Forwarded`'s `for=` parameters when
/// there is no `X-Forwarded-For`; left to right, `None` for a hop that is not
/// an address.
fn forwarded_hops(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let values = |name| {
        headers
            .get_all(name)
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("unknown").split(','))
            .map(str::trim)
            .collect::<Vec<_>>()
    };
    let xff = values("x-forwarded-for");
    if !xff.is_empty() {
        return xff.into_iter().map(parse_node).collect();
    }
    values("forwarded")
        .into_iter()
        .map(|element| {
            element
                .split(';')
                .filter_map(|pair| pair.trim().split_once('='))
                .find(|(name, _)| name.eq_ignore_ascii_case("for"))
                .and_then(|(_, value)| parse_node(value.trim_matches('"')))
        })
        .collect()
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:4711`,
/// `2001:db8::1`, `[2001:db8::1]:4711`.
fn parse_node(text: &str) -> Option<IpAddr> {
    if let Some(rest) = text.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    text.parse().ok().or_else(|| {
        let (host, port) = text.rsplit_once(':')?;
        port.parse::<u16>().ok()?;
        host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
    })
}

/// Sets `ClientIp` from a trusted proxy's headers; outermost, so every later
/// layer counts the real client.
#[derive(Clone)]
pub struct ClientIpLayer {
    proxies: Arc<TrustedProxies>,
}

impl ClientIpLayer {
    pub fn new(proxies: TrustedProxies) -> Self {
        ClientIpLayer {
            proxies: Arc::new(proxies),
        }
    }
}

impl<S> Layer<S> for ClientIpLayer {
    type Service = ClientIpService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientIpService {
            inner,
            proxies: self.proxies.clone(),
        }
    }
}

#[derive(Clone)]
pub struct ClientIpService<S> {
    inner: S,
    proxies: Arc<TrustedProxies>,
}

impl<S, B> Service<Request<B>> for ClientIpService<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if !self.proxies.is_empty()
            && let Some(PeerAddr(peer)) = req.extensions().get::<PeerAddr>().copied()
        {
            let client = self.proxies.client_ip(peer.ip(), req.headers());
            req.extensions_mut().insert(ClientIp(client));
        }
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, http::HeaderValue::from_static(value));
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_parse_and_match() {
        let r = IpRange::parse("10.0.0.0/8").unwrap();
        assert!(r.contains(ip("10.9.8.7")));
        assert!(r.contains(ip("::ffff:10.1.1.1")));
        assert!(!r.contains(ip("11.0.0.1")));
        assert!(!r.contains(ip("::1")));
        let one = IpRange::parse("::1").unwrap();
        assert!(one.contains(ip("::1")) && !one.contains(ip("::2")));
        let v6 = IpRange::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(IpRange::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/", "::/129"] {
            assert!(IpRange::parse(bad).is_err(), "{bad}");
        }
        let list = TrustedProxies::parse("127.0.0.1, 10.0.0.0/8 ::1").unwrap();
        assert_eq!(list.0.len(), 3);
        assert!(TrustedProxies::parse("").unwrap().is_empty());
    }

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_peer() {
        let proxies = TrustedProxies::parse("127.0.0.1, 10.0.0.0/8").unwrap();
        let h = headers(&[("x-forwarded-for", "198.51.100.1, 203.0.113.9, 10.1.1.1")]);
        // The client wrote 198.51.100.1; 203.0.113.9 is who our proxies saw.
        assert_eq!(proxies.client_ip(ip("127.0.0.1"), &h), ip("203.0.113.9"));
        assert_eq!(proxies.client_ip(ip("192.0.2.5"), &h), ip("192.0.2.5"));
        let only_proxies = headers(&[("x-forwarded-for", "10.2.2.2")]);
        assert_eq!(
            proxies.client_ip(ip("127.0.0.1"), &only_proxies),
            ip("10.2.2.2")
        );
        let none = HeaderMap::new();
        assert_eq!(proxies.client_ip(ip("127.0.0.1"), &none), ip("127.0.0.1"));
        let garbage = headers(&[("x-forwarded-for", "203.0.113.9, bogus")]);
        assert_eq!(
            proxies.client_ip(ip("127.0.0.1"), &garbage),
            ip("127.0.0.1")
        );
        let lines = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "198.51.100.7:5000"),
        ]);
        assert_eq!(
            proxies.client_ip(ip("127.0.0.1"), &lines),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn rfc7239_forwarded() {
        let proxies = TrustedProxies::parse("127.0.0.1").unwrap();
        let h = headers(&[(
            "forwarded",
            "for=192.0.2.60;proto=http, For=\"[2001:db8:cafe::17]:4711\";by=203.0.113.43",
        )]);
        assert_eq!(
            proxies.client_ip(ip("127.0.0.1"), &h),
            ip("2001:db8:cafe::17")
        );
        let hidden = headers(&[("forwarded", "for=192.0.2.60, for=_hidden")]);
        assert_eq!(proxies.client_ip(ip("127.0.0.1"), &hidden), ip("127.0.0.1"));
    }

    #[test]
    fn ipv6_groups_by_64_and_mapped_ipv4_is_ipv4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(IpKey::of(a), IpKey::of(b));
        assert_ne!(IpKey::of(a), IpKey::of(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(IpKey::of(mapped), IpKey::of(v4));
        assert_eq!(IpKey::of(a).to_string(), "2001:db8:1:2::/64");
        assert_eq!(IpKey::of(v4).to_string(), "192.0.2.7");
    }
}
