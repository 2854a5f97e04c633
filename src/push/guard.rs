//! The SSRF guard for user-supplied push endpoints (SPEC §6).
//!
//! A push endpoint is a URL a client hands us; the server then POSTs to it.
//! Only `https` URLs whose host resolves to public addresses are accepted,
//! except for origins the operator explicitly allows (tests use a loopback
//! push service that way). Two checks:
//! - [`EndpointGuard::check_url`], syntactic, when a subscription is stored;
//! - [`EndpointGuard::resolve`] / [`EndpointGuard::resolve_uri`], at send
//!   time: the only way the push client learns which address to connect to,
//!   so what was vetted is what gets connected to (no DNS-rebinding gap).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The longest endpoint URL accepted.
pub const MAX_ENDPOINT_LEN: usize = 2048;

/// Whether `ip` is a public unicast address a push service may live at.
///
/// False for loopback, private (RFC 1918), shared (CGNAT 100.64/10),
/// link-local, unique-local, multicast, unspecified, broadcast,
/// documentation, benchmarking and reserved ranges. IPv6 addresses that embed
/// an IPv4 address (mapped, compatible, NAT64 `64:ff9b::/96`, 6to4
/// `2002::/16`) are judged by that IPv4 address; otherwise only the global
/// unicast block `2000::/3` is accepted, minus its special-purpose parts.
pub fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_global_v4(v4),
        IpAddr::V6(v6) => is_global_v6(v6),
    }
}

fn is_global_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let special = a == 0 // "this network", incl. 0.0.0.0
        || a == 10 // private
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || a == 127 // loopback
        || (a == 169 && b == 254) // link-local, incl. cloud metadata
        || (a == 172 && (16..32).contains(&b)) // private
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // TEST-NET-1
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast (deprecated)
        || (a == 192 && b == 168) // private
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || (a == 198 && b == 51 && c == 100) // TEST-NET-2
        || (a == 203 && b == 0 && c == 113) // TEST-NET-3
        || a >= 224; // multicast 224/4, reserved 240/4, broadcast
    !special
}

fn is_global_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = embedded_v4(ip) {
        return is_global_v4(v4);
    }
    let s = ip.segments();
    // Only 2000::/3 is allocated as global unicast: this refuses ::/128,
    // ::1, 64:ff9b:1::/48, 100::/64, fc00::/7, fe80::/10, fec0::/10,
    // ff00::/8 and everything unallocated.
    if s[0] & 0xe000 != 0x2000 {
        return false;
    }
    // 2001::/23: IETF protocol assignments (Teredo, ORCHID, benchmarking…);
    // 2001:db8::/32 and 3fff::/20: documentation.
    let special =
        (s[0] == 0x2001 && (s[1] < 0x0200 || s[1] == 0x0db8)) || (s[0] == 0x3fff && s[1] < 0x1000);
    !special
}

/// The IPv4 address an IPv6 address stands for, if it embeds one.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let o = ip.octets();
    let tail = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    if s[..5] == [0; 5] && (s[5] == 0xffff || s[5] == 0) {
        // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible; :: and ::1
        // land on 0.0.0.0 and 0.0.0.1, both refused).
        return Some(tail);
    }
    if s[0] == 0x0064 && s[1] == 0xff9b && s[2..6] == [0; 4] {
        return Some(tail); // NAT64 well-known prefix
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5])); // 6to4
    }
    None
}

/// Why an endpoint was refused. Messages are lowercase and name no URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// Longer than [`MAX_ENDPOINT_LEN`].
    #[error("push endpoint is too long")]
    TooLong,
    /// Not an absolute URL with a host.
    #[error("push endpoint is not an absolute url")]
    InvalidUrl,
    /// Not `https` (plain `http` only for allowed origins).
    #[error("push endpoint must use https")]
    NotHttps,
    /// Has `user:password@`.
    #[error("push endpoint must not contain user info")]
    UserInfo,
    /// The host is not a valid DNS name or IP literal.
    #[error("push endpoint host is not a valid host name")]
    InvalidHost,
    /// The host is, or resolves only to, non-public addresses.
    #[error("push endpoint host is not a public address")]
    NotPublic,
    /// DNS resolution failed (possibly temporary).
    #[error("push endpoint host could not be resolved: {0}")]
    Resolve(String),
}

impl GuardError {
    /// True when the endpoint is refused by policy; false for a failed DNS
    /// lookup, which may succeed later.
    pub fn is_policy(&self) -> bool {
        !matches!(self, GuardError::Resolve(_))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    scheme: &'static str,
    /// Lower-case, without brackets or a trailing dot.
    host: String,
    port: u16,
}

/// A URL's parts once it passed the syntactic checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `http` or `https`.
    pub scheme: &'static str,
    /// Lower-case, IPv6 without brackets.
    pub host: String,
    /// Explicit or default port.
    pub port: u16,
    /// Whether the operator allowed this origin (then no address checks).
    pub allowed: bool,
}

/// Vets push endpoints; see the module documentation.
#[derive(Debug, Clone, Default)]
pub struct EndpointGuard {
    allowed: Vec<Origin>,
}

impl EndpointGuard {
    /// A guard that allows no internal or insecure origin.
    pub fn strict() -> Self {
        Self::default()
    }

    /// A guard allowing the comma-separated origins in `allowed` (the
    /// operator setting, e.g. `http://127.0.0.1:9999,http://localhost:8081`)
    /// to use plain `http` and internal addresses. Empty means none.
    pub fn new(allowed: &str) -> Result<Self, String> {
        let mut origins = Vec::new();
        for item in allowed.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let origin = parse_origin(item).ok_or_else(|| {
                format!("`{item}` is not an origin like http://127.0.0.1:9999 (scheme://host[:port], nothing after)")
            })?;
            if !origins.contains(&origin) {
                origins.push(origin);
            }
        }
        Ok(EndpointGuard { allowed: origins })
    }

    /// Whether any origins are allowed (worth a warning at start).
    pub fn allows_any(&self) -> bool {
        !self.allowed.is_empty()
    }

    /// Syntactic check when a subscription is stored: an absolute `https`
    /// URL (or one on an allowed origin), no user info, at most
    /// [`MAX_ENDPOINT_LEN`] bytes, and an IP-literal host must be public.
    pub fn check_url(&self, endpoint: &str) -> Result<(), GuardError> {
        if endpoint.len() > MAX_ENDPOINT_LEN {
            return Err(GuardError::TooLong);
        }
        let uri: http::Uri = endpoint.parse().map_err(|_| GuardError::InvalidUrl)?;
        self.check_uri(&uri).map(|_| ())
    }

    /// [`check_url`](Self::check_url) on a parsed URI, returning its parts.
    pub fn check_uri(&self, uri: &http::Uri) -> Result<Target, GuardError> {
        let scheme = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
            Some("https") => "https",
            Some("http") => "http",
            Some(_) => return Err(GuardError::NotHttps),
            None => return Err(GuardError::InvalidUrl),
        };
        let authority = uri.authority().ok_or(GuardError::InvalidUrl)?;
        if authority.as_str().contains('@') {
            return Err(GuardError::UserInfo);
        }
        let host = normalize_host(authority.host());
        if host.is_empty() {
            return Err(GuardError::InvalidUrl);
        }
        let port = match authority.port_u16() {
            Some(0) => return Err(GuardError::InvalidUrl),
            Some(p) => p,
            None if authority.as_str().ends_with(':') => return Err(GuardError::InvalidUrl),
            None if scheme == "https" => 443,
            None => 80,
        };
        let allowed = self
            .allowed
            .iter()
            .any(|o| o.scheme == scheme && o.host == host && o.port == port);
        let target = Target {
            scheme,
            host,
            port,
            allowed,
        };
        if allowed {
            return Ok(target);
        }
        if scheme != "https" {
            return Err(GuardError::NotHttps);
        }
        match target.host.parse::<IpAddr>() {
            Ok(ip) if is_global(ip) => {}
            Ok(_) => return Err(GuardError::NotPublic),
            Err(_) => check_dns_name(&target.host)?,
        }
        Ok(target)
    }

    /// Resolves `host` and keeps only public addresses (all of them when
    /// `host:port` belongs to an allowed origin); an error if none remain.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, GuardError> {
        let host = normalize_host(host);
        let allowed = self
            .allowed
            .iter()
            .any(|o| o.host == host && o.port == port);
        resolve_host(&host, port, allowed).await
    }

    /// The send-time check: [`check_uri`](Self::check_uri), then resolution
    /// keeping only public addresses (all for an allowed origin).
    pub async fn resolve_uri(&self, uri: &http::Uri) -> Result<Vec<SocketAddr>, GuardError> {
        let target = self.check_uri(uri)?;
        resolve_host(&target.host, target.port, target.allowed).await
    }
}

async fn resolve_host(host: &str, port: u16, allowed: bool) -> Result<Vec<SocketAddr>, GuardError> {
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| GuardError::Resolve(e.to_string()))?
            .collect(),
    };
    let total = addrs.len();
    let kept: Vec<SocketAddr> = if allowed {
        addrs
    } else {
        addrs.into_iter().filter(|a| is_global(a.ip())).collect()
    };
    if kept.is_empty() {
        return Err(if total == 0 {
            GuardError::Resolve("no addresses".to_owned())
        } else {
            GuardError::NotPublic
        });
    }
    Ok(kept)
}

/// Lower-case, without IPv6 brackets or a trailing dot.
fn normalize_host(host: &str) -> String {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let host = host.strip_suffix('.').unwrap_or(host);
    host.to_ascii_lowercase()
}

/// A plausible public DNS name: LDH labels (underscore tolerated), at least
/// two of them, not `localhost`, and not a number in disguise (`127.1`, `0x7f.1`,
/// `2130706433` are IPv4 addresses to many resolvers).
fn check_dns_name(host: &str) -> Result<(), GuardError> {
    if host.len() > 253 {
        return Err(GuardError::InvalidHost);
    }
    let labels: Vec<&str> = host.split('.').collect();
    for label in &labels {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(GuardError::InvalidHost);
        }
    }
    let last = labels.last().copied().unwrap_or_default();
    if last.bytes().all(|b| b.is_ascii_digit()) || last.starts_with("0x") {
        return Err(GuardError::InvalidHost);
    }
    // A single label (`intranet`) is completed by the resolver's search
    // domains: a name on the server's own network, never a push service.
    if last == "localhost" || labels.len() < 2 {
        return Err(GuardError::NotPublic);
    }
    Ok(())
}

fn parse_origin(text: &str) -> Option<Origin> {
    let uri: http::Uri = text.parse().ok()?;
    let scheme = match uri.scheme_str()?.to_ascii_lowercase().as_str() {
        "https" => "https",
        "http" => "http",
        _ => return None,
    };
    let authority = uri.authority()?;
    if authority.as_str().contains('@') || authority.as_str().ends_with(':') {
        return None;
    }
    // Nothing after the authority but an optional "/".
    let after = &text[text.find("://")? + 3 + authority.as_str().len()..];
    if !(after.is_empty() || after == "/") {
        return None;
    }
    let host = normalize_host(authority.host());
    if host.is_empty() {
        return None;
    }
    let port = match authority.port_u16() {
        Some(0) => return None,
        Some(p) => p,
        None if scheme == "https" => 443,
        None => 80,
    };
    Some(Origin { scheme, host, port })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_table() {
        let cases: &[(&str, bool)] = &[
            // IPv4 public
            ("8.8.8.8", true),
            ("1.1.1.1", true),
            ("142.250.74.78", true),
            ("100.63.255.255", true),
            ("100.128.0.0", true),
            ("172.15.255.255", true),
            ("172.32.0.0", true),
            ("192.0.1.1", true),
            ("192.0.3.1", true),
            ("198.17.255.255", true),
            ("198.20.0.0", true),
            ("223.255.255.255", true),
            // IPv4 internal or special
            ("0.0.0.0", false),
            ("0.1.2.3", false),
            ("10.0.0.1", false),
            ("10.255.255.255", false),
            ("100.64.0.1", false),
            ("100.127.255.255", false),
            ("127.0.0.1", false),
            ("127.255.255.254", false),
            ("169.254.0.1", false),
            ("169.254.169.254", false),
            ("172.16.0.1", false),
            ("172.31.255.255", false),
            ("192.0.0.8", false),
            ("192.0.2.1", false),
            ("192.88.99.1", false),
            ("192.168.1.1", false),
            ("198.18.0.1", false),
            ("198.19.255.255", false),
            ("198.51.100.7", false),
            ("203.0.113.9", false),
            ("224.0.0.1", false),
            ("239.255.255.250", false),
            ("240.0.0.1", false),
            ("255.255.255.255", false),
            // IPv6 public
            ("2001:4860:4860::8888", true),
            ("2606:4700:4700::1111", true),
            ("2a00:1450:4001:82a::200e", true),
            ("2001:200::1", true),
            ("3ffe::1", true),
            // IPv6 internal or special
            ("::", false),
            ("::1", false),
            ("fe80::1", false),
            ("febf::1", false),
            ("fec0::1", false),
            ("fc00::1", false),
            ("fd12:3456:789a::1", false),
            ("ff02::1", false),
            ("ff0e::1", false),
            ("100::1", false),
            ("2001:db8::1", false),
            ("2001:db8:ffff::1", false),
            ("2001::1", false),    // Teredo
            ("2001:10::1", false), // ORCHID
            ("2001:2::1", false),  // benchmarking
            ("3fff::1", false),
            ("64:ff9b:1::1", false),
            ("4000::1", false),
            // IPv4-mapped / compatible: judged by the IPv4 address
            ("::ffff:127.0.0.1", false),
            ("::ffff:10.1.2.3", false),
            ("::ffff:169.254.169.254", false),
            ("::ffff:8.8.8.8", true),
            ("::127.0.0.1", false),
            ("::8.8.8.8", true),
            ("::ffff:0:8.8.8.8", false), // SIIT, not globally routed
            // NAT64
            ("64:ff9b::8.8.8.8", true),
            ("64:ff9b::7f00:1", false),
            ("64:ff9b::a9fe:a9fe", false),
            ("64:ff9b::c0a8:101", false),
            // 6to4
            ("2002:0808:0808::1", true),
            ("2002:7f00:0001::1", false),
            ("2002:0a00:0001::1", false),
            ("2002:c0a8:0101::1", false),
        ];
        for (text, expected) in cases {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(is_global(ip), *expected, "{text}");
        }
    }

    #[test]
    fn urls_for_a_strict_guard() {
        let g = EndpointGuard::strict();
        let ok = [
            "https://fcm.googleapis.com/fcm/send/abc:def",
            "https://updates.push.services.mozilla.com/wpush/v2/gAAAA",
            "https://web.push.apple.com/QGuQyavXutnMH",
            "https://Push.Example.COM:8443/x?y=1",
            "https://push.example.com./x",
            "https://8.8.8.8/x",
            "https://[2001:4860:4860::8888]/x",
            "https://push_service.example.com/x",
        ];
        for url in ok {
            assert_eq!(g.check_url(url), Ok(()), "{url}");
        }
        let refused: &[(&str, GuardError)] = &[
            ("http://push.example.com/x", GuardError::NotHttps),
            ("ftp://push.example.com/x", GuardError::NotHttps),
            ("/relative/path", GuardError::InvalidUrl),
            ("push.example.com/x", GuardError::InvalidUrl),
            ("not a url", GuardError::InvalidUrl),
            ("", GuardError::InvalidUrl),
            ("https://user:pw@push.example.com/x", GuardError::UserInfo),
            ("https://user@push.example.com/x", GuardError::UserInfo),
            ("https://127.0.0.1/", GuardError::NotPublic),
            ("https://10.0.0.1/", GuardError::NotPublic),
            (
                "https://169.254.169.254/latest/meta-data",
                GuardError::NotPublic,
            ),
            ("https://[::1]/", GuardError::NotPublic),
            ("https://[::ffff:127.0.0.1]/", GuardError::NotPublic),
            ("https://[fe80::1]/", GuardError::NotPublic),
            ("https://0.0.0.0/", GuardError::NotPublic),
            ("https://localhost/", GuardError::NotPublic),
            ("https://api.localhost/", GuardError::NotPublic),
            ("https://LOCALHOST./", GuardError::NotPublic),
            ("https://intranet/x", GuardError::NotPublic),
            ("https://intranet./x", GuardError::NotPublic),
            ("https://intranet:8443/x", GuardError::NotPublic),
            ("https://127.1/", GuardError::InvalidHost),
            ("https://2130706433/", GuardError::InvalidHost),
            ("https://0x7f.1/", GuardError::InvalidHost),
            ("https://exa mple.com/", GuardError::InvalidUrl),
            ("https://-bad.example.com/", GuardError::InvalidHost),
            ("https://push.example.com:0/", GuardError::InvalidUrl),
            ("http://127.0.0.1:9999/push/a", GuardError::NotHttps),
        ];
        for (url, err) in refused {
            assert_eq!(g.check_url(url).as_ref(), Err(err), "{url}");
        }
        let long = format!("https://push.example.com/{}", "a".repeat(MAX_ENDPOINT_LEN));
        assert_eq!(g.check_url(&long), Err(GuardError::TooLong));
        let just = format!(
            "https://push.example.com/{}",
            "a".repeat(MAX_ENDPOINT_LEN - 25)
        );
        assert_eq!(just.len(), MAX_ENDPOINT_LEN);
        assert_eq!(g.check_url(&just), Ok(()));
    }

    #[test]
    fn allowed_origins_are_exact() {
        let g = EndpointGuard::new(" http://127.0.0.1:9999 , http://LocalHost:8081/,").unwrap();
        assert!(g.allows_any());
        assert_eq!(g.check_url("http://127.0.0.1:9999/push/a"), Ok(()));
        assert_eq!(g.check_url("http://127.0.0.1:9999"), Ok(()));
        assert_eq!(g.check_url("http://localhost:8081/push/b"), Ok(()));
        assert_eq!(
            g.check_url("http://127.0.0.1:9998/push/a"),
            Err(GuardError::NotHttps)
        );
        assert_eq!(
            g.check_url("http://127.0.0.2:9999/push/a"),
            Err(GuardError::NotHttps)
        );
        assert_eq!(
            g.check_url("http://localhost:9999/push/a"),
            Err(GuardError::NotHttps)
        );
        assert_eq!(
            g.check_url("https://127.0.0.1:9999/push/a"),
            Err(GuardError::NotPublic)
        );
        assert_eq!(
            g.check_url("http://127.0.0.1/push/a"),
            Err(GuardError::NotHttps)
        );
        assert_eq!(
            g.check_url("http://user@127.0.0.1:9999/push/a"),
            Err(GuardError::UserInfo)
        );
        let t = g
            .check_uri(&"http://127.0.0.1:9999/p".parse().unwrap())
            .unwrap();
        assert!(t.allowed);
        assert_eq!(
            (t.scheme, t.host.as_str(), t.port),
            ("http", "127.0.0.1", 9999)
        );

        let g = EndpointGuard::new("https://[::1]:8443").unwrap();
        assert_eq!(g.check_url("https://[::1]:8443/x"), Ok(()));
        assert_eq!(g.check_url("https://[::1]/x"), Err(GuardError::NotPublic));

        assert!(!EndpointGuard::new("").unwrap().allows_any());
        assert!(!EndpointGuard::new(" , ").unwrap().allows_any());
    }

    #[test]
    fn malformed_allow_lists_are_reported() {
        for bad in [
            "127.0.0.1:9999",
            "http://127.0.0.1:9999/push",
            "http://127.0.0.1:9999?x",
            "ftp://127.0.0.1:21",
            "http://u@127.0.0.1:9999",
            "http://127.0.0.1:0",
            "http://127.0.0.1:",
            "http://127.0.0.1:9999,nonsense",
        ] {
            let err = EndpointGuard::new(bad).unwrap_err();
            assert!(err.contains("is not an origin"), "{bad}: {err}");
        }
    }

    #[tokio::test]
    async fn resolution_keeps_only_public_addresses() {
        let g = EndpointGuard::strict();
        assert_eq!(
            g.resolve("localhost", 443).await,
            Err(GuardError::NotPublic)
        );
        assert_eq!(
            g.resolve("127.0.0.1", 443).await,
            Err(GuardError::NotPublic)
        );
        assert_eq!(g.resolve("[::1]", 443).await, Err(GuardError::NotPublic));
        assert_eq!(
            g.resolve("8.8.8.8", 443).await,
            Ok(vec!["8.8.8.8:443".parse().unwrap()])
        );
        assert_eq!(
            g.resolve("[2001:4860:4860::8888]", 443).await,
            Ok(vec!["[2001:4860:4860::8888]:443".parse().unwrap()])
        );
        // What the system resolver makes of a number in disguise is vetted too.
        assert_eq!(g.resolve("127.1", 443).await, Err(GuardError::NotPublic));
        assert_eq!(
            g.resolve("2130706433", 443).await,
            Err(GuardError::NotPublic)
        );

        // An allowed origin keeps its internal addresses, on its port only.
        let g = EndpointGuard::new("http://localhost:8081,http://127.0.0.1:9999").unwrap();
        let addrs = g.resolve("localhost", 8081).await.unwrap();
        assert!(!addrs.is_empty());
        assert!(
            addrs
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 8081)
        );
        assert_eq!(
            g.resolve("127.0.0.1", 9999).await,
            Ok(vec!["127.0.0.1:9999".parse().unwrap()])
        );
        assert_eq!(
            g.resolve("localhost", 443).await,
            Err(GuardError::NotPublic)
        );

        let uri: http::Uri = "http://127.0.0.1:9999/push/a".parse().unwrap();
        assert_eq!(
            g.resolve_uri(&uri).await,
            Ok(vec!["127.0.0.1:9999".parse().unwrap()])
        );
        let uri: http::Uri = "https://127.0.0.1:9999/push/a".parse().unwrap();
        assert_eq!(g.resolve_uri(&uri).await, Err(GuardError::NotPublic));
        let uri: http::Uri = "https://localhost/push/a".parse().unwrap();
        assert_eq!(g.resolve_uri(&uri).await, Err(GuardError::NotPublic));
    }
}
