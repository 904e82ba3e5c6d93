//! The client IP that ip-restriction and rate limiting (`limit_by = "ip"`) see.
//!
//! Depth rules (nginx's `real_ip_recursive on`):
//! - with no `[server] trusted_proxies`, or a socket peer that is not trusted, the client IP is the
//!   socket peer, whatever `X-Forwarded-For` says (a client can write anything there);
//! - otherwise the `X-Forwarded-For` entries (all fields, in order, as one list) are walked from
//!   the right, skipping trusted addresses; the first untrusted one is the client. Entries left of
//!   it were written by parties we do not trust and are ignored;
//! - if every entry is trusted, the leftmost one is the client;
//! - an entry that is not an IP address (garbage from a trusted hop) ends the walk and the socket
//!   peer is used, so a malformed header can never make a request look like it came from an
//!   address of its choosing.
//!
//! The upstream's `X-Forwarded-For` is unaffected: the gateway always appends the socket peer.

use std::net::IpAddr;

use crate::config::model::Cidr;

/// Whether `ip` is in one of `nets`.
pub fn listed(nets: &[Cidr], ip: IpAddr) -> bool {
    let ip = canonical(ip);
    nets.iter().any(|n| n.contains(&ip))
}

/// `::ffff:1.2.3.4` -> `1.2.3.4`, so v4 rules match v4-mapped peers of a dual-stack listener.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The client of a request: `resolve` over the head's `X-Forwarded-For` fields, canonical (the
/// peer, canonical, when no proxy is trusted). What the access log and X-Real-IP say.
pub fn of_head(
    peer: IpAddr,
    trusted: &[Cidr],
    head: &crate::http::parse::RequestHead,
    buf: &[u8],
) -> IpAddr {
    if trusted.is_empty() {
        return canonical(peer);
    }
    let xff = head
        .headers
        .iter()
        .filter(|h| crate::http::headers::eq_ignore_case(h.name.get(buf), b"x-forwarded-for"))
        .map(|h| h.value.get(buf));
    canonical(resolve(peer, trusted, xff))
}

/// Resolves the client IP. `xff` yields the raw values of each `X-Forwarded-For` field, in order.
pub fn resolve<'a, I>(peer: IpAddr, trusted: &[Cidr], xff: I) -> IpAddr
where
    I: DoubleEndedIterator<Item = &'a [u8]>,
{
    if trusted.is_empty() || !listed(trusted, peer) {
        return peer;
    }
    let mut leftmost = peer;
    for field in xff.rev() {
        for entry in field.rsplit(|&b| b == b',') {
            let entry = entry.trim_ascii();
            if entry.is_empty() {
                continue;
            }
            let Some(ip) = parse_ip(entry) else {
                return peer;
            };
            if !listed(trusted, ip) {
                return canonical(ip);
            }
            leftmost = ip;
        }
    }
    canonical(leftmost)
}

/// An address as proxies write it: `1.2.3.4`, `2001:db8::1`, `[2001:db8::1]`.
/// An X-Forwarded-For entry: an address, also with a port as some proxies write it
/// (`1.2.3.4:5678`, `[2001:db8::1]:443`: Azure Application Gateway). Unparsed, such an entry made
/// every client behind that trusted proxy the proxy itself (one rate-limit key for all: found by
/// a review).
fn parse_ip(s: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(s).ok()?;
    if let Some(rest) = s.strip_prefix('[') {
        // `[v6]` or `[v6]:port`.
        let (addr, after) = rest.split_once(']')?;
        let port_ok = after.is_empty()
            || after
                .strip_prefix(':')
                .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        return if port_ok { addr.parse().ok() } else { None };
    }
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    // `v4:port` (a bare IPv6 address has several ':' and parsed above).
    let (addr, port) = s.rsplit_once(':')?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    addr.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|s| s.parse().expect("test cidr")).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test ip")
    }

    #[test]
    fn untrusted_peer_is_the_client() {
        let t = nets(&["10.0.0.0/8"]);
        let xff: [&[u8]; 1] = [b"1.1.1.1"];
        assert_eq!(
            resolve(ip("192.0.2.9"), &t, xff.into_iter()),
            ip("192.0.2.9")
        );
        assert_eq!(
            resolve(ip("10.0.0.1"), &[], xff.into_iter()),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn entries_with_a_port_are_their_address() {
        let t = nets(&["10.0.0.0/8"]);
        for (entry, want) in [
            (&b"1.2.3.4:5678"[..], "1.2.3.4"),
            (b"[2001:db8::1]:443", "2001:db8::1"),
            (b"[2001:db8::1]", "2001:db8::1"),
            (b"2001:db8::1", "2001:db8::1"),
        ] {
            let xff: [&[u8]; 1] = [entry];
            assert_eq!(
                resolve(ip("10.0.0.1"), &t, xff.into_iter()),
                ip(want),
                "{entry:?}"
            );
        }
        for bad in [&b"1.2.3.4:"[..], b"1.2.3.4:x", b"[2001:db8::1]x", b"[::1]:"] {
            let xff: [&[u8]; 1] = [bad];
            assert_eq!(
                resolve(ip("10.0.0.1"), &t, xff.into_iter()),
                ip("10.0.0.1"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn walks_from_the_right_skipping_trusted() {
        let t = nets(&["10.0.0.0/8", "192.168.0.0/16"]);
        let xff: [&[u8]; 2] = [b"6.6.6.6, 1.2.3.4", b"10.1.1.1, 192.168.0.5"];
        // 6.6.6.6 was written by the client itself and is ignored.
        assert_eq!(resolve(ip("10.0.0.1"), &t, xff.into_iter()), ip("1.2.3.4"));
    }

    #[test]
    fn all_trusted_gives_leftmost_and_garbage_gives_peer() {
        let t = nets(&["10.0.0.0/8"]);
        let all: [&[u8]; 1] = [b"10.0.0.7, 10.0.0.8"];
        assert_eq!(resolve(ip("10.0.0.1"), &t, all.into_iter()), ip("10.0.0.7"));
        let bad: [&[u8]; 1] = [b"1.2.3.4, evil"];
        assert_eq!(resolve(ip("10.0.0.1"), &t, bad.into_iter()), ip("10.0.0.1"));
        let none: [&[u8]; 0] = [];
        assert_eq!(
            resolve(ip("10.0.0.1"), &t, none.into_iter()),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn v6_and_mapped() {
        let t = nets(&["::1/128", "127.0.0.0/8"]);
        let xff: [&[u8]; 1] = [b"[2001:db8::5]"];
        assert_eq!(resolve(ip("::1"), &t, xff.into_iter()), ip("2001:db8::5"));
        assert_eq!(
            resolve(ip("::ffff:127.0.0.1"), &t, xff.into_iter()),
            ip("2001:db8::5")
        );
        assert!(listed(&nets(&["1.2.3.0/24"]), ip("::ffff:1.2.3.4")));
    }
}
