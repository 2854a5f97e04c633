//! Who is on the other end of a request, as far as limits are concerned.
//!
//! The connection acceptor records the TCP peer (`PeerAddr`) on every
//! request; `ClientIp` is the address the per-client limits count against;
//! `IpKey` groups addresses that one client controls, so that an IPv6 user
//! cannot escape a per-address limit by hopping inside their /64.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

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

#[cfg(test)]
mod tests {
    use super::*;

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
