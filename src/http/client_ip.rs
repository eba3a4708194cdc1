//! Who the client is, by address: the socket's peer, unless the peer is a trusted proxy
//! (`SPELLHOST_TRUSTED_PROXIES`), which then names the client in `Fly-Client-IP` or
//! `X-Forwarded-For`. Those headers from anyone else are ignored: they are the client's word.

use std::net::{IpAddr, Ipv6Addr};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The client's address, as resolved for this request (in the request's extensions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// The client's address for a request from `peer`.
///
/// From a trusted proxy: `Fly-Client-IP` (Fly.io's proxy sets it), else the rightmost hop of
/// `X-Forwarded-For` that is not itself a trusted proxy (every proxy appends the address it
/// saw, so hops left of the first untrusted one are the client's own claims). Anything
/// unreadable from a trusted proxy leaves the proxy's own address.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    if !is_trusted(peer, trusted) {
        return peer;
    }
    if let Some(ip) = headers
        .get("fly-client-ip")
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.trim().parse::<IpAddr>().ok())
    {
        return ip.to_canonical();
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) => {
                client = ip.to_canonical();
                if !is_trusted(client, trusted) {
                    return client;
                }
            }
            Err(_) => return client,
        }
    }
    client
}

pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = ip.to_canonical();
    trusted.iter().any(|net| net.contains(&ip))
}

/// The key one client is counted under: its IPv4 address, or its IPv6 /64 (one subscriber
/// gets a whole /64, so counting single IPv6 addresses would count nothing).
pub fn bucket(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().expect("header value"));
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("address")
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().expect("cidr")).collect()
    }

    #[test]
    fn forwarded_headers_from_an_untrusted_peer_are_ignored() {
        let spoofed = headers(&[("x-forwarded-for", "1.2.3.4"), ("fly-client-ip", "5.6.7.8")]);
        assert_eq!(resolve(ip("9.9.9.9"), &spoofed, &[]), ip("9.9.9.9"));
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(resolve(ip("9.9.9.9"), &spoofed, &trusted), ip("9.9.9.9"));
    }

    #[test]
    fn a_trusted_proxy_names_the_rightmost_untrusted_hop() {
        let trusted = nets(&["10.0.0.0/8"]);
        let chain = headers(&[
            ("x-forwarded-for", "6.6.6.6, 1.2.3.4"),
            ("x-forwarded-for", "10.1.1.1"),
        ]);
        // 6.6.6.6 is what the client claimed; 1.2.3.4 is what the first proxy saw.
        assert_eq!(resolve(ip("10.0.0.2"), &chain, &trusted), ip("1.2.3.4"));
        let garbage = headers(&[("x-forwarded-for", "1.2.3.4, not-an-ip")]);
        assert_eq!(resolve(ip("10.0.0.2"), &garbage, &trusted), ip("10.0.0.2"));
        assert_eq!(
            resolve(ip("10.0.0.2"), &HeaderMap::new(), &trusted),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn fly_client_ip_wins_from_a_trusted_proxy() {
        let trusted = nets(&["fdaa::/16"]);
        let fly = headers(&[
            ("fly-client-ip", "2001:db8::1"),
            ("x-forwarded-for", "1.2.3.4"),
        ]);
        assert_eq!(resolve(ip("fdaa::3"), &fly, &trusted), ip("2001:db8::1"));
    }

    #[test]
    fn mapped_addresses_and_ipv6_subnets_count_as_one_client() {
        assert_eq!(
            resolve(ip("::ffff:1.2.3.4"), &HeaderMap::new(), &[]),
            ip("1.2.3.4")
        );
        assert_eq!(bucket(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(bucket(ip("1.2.3.4")), ip("1.2.3.4"));
    }
}
