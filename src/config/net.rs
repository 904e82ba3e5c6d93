//! Network-ish strings: host names, `host:port`, service urls, and load-time address resolution.
//!
//! Invariants: validated host names are lower-case ASCII; ports are 1..=65535 for targets and urls;
//! resolution happens here, at load time, never on a worker (and never for IP literals, which are
//! parsed directly so the examples need no DNS). Errors are messages that say what is allowed.

use std::net::{IpAddr, Ipv6Addr, SocketAddr, ToSocketAddrs};

/// Is `s` a DNS host name (or IPv4 literal): dot-separated labels of letters, digits, `-`, `_`,
/// 1..=63 bytes each, not starting or ending with `-`, 253 bytes at most?
pub fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Is `s` a bracketed IPv6 literal such as `[::1]`?
fn is_bracketed_ipv6(s: &str) -> bool {
    s.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .is_some_and(|ip| ip.parse::<Ipv6Addr>().is_ok())
}

/// A host as written in a target, url or `host_header`: a host name, IPv4 or `[IPv6]`.
pub fn is_host(s: &str) -> bool {
    is_hostname(s) || is_bracketed_ipv6(s)
}

/// Validates and lower-cases a route's `hosts` entry: a host name, `[IPv6]`, or `*.` + host name.
pub fn route_host(s: &str) -> Result<String, String> {
    let lower = s.to_ascii_lowercase();
    let ok = match lower.strip_prefix("*.") {
        Some(rest) => is_hostname(rest),
        None => is_host(&lower),
    };
    if ok {
        return Ok(lower);
    }
    let why = if s.contains(':') && !s.starts_with('[') {
        "hosts must not include a port (the request's port is ignored when matching)"
    } else if s.contains('*') {
        "a wildcard is only allowed as a leading `*.` label, e.g. \"*.example.com\""
    } else {
        "expected a host name like \"api.example.com\", a wildcard like \"*.example.com\", or an IP"
    };
    Err(format!("{s:?} is not a valid host: {why}"))
}

/// Splits `host:port` (`[v6]:port` for IPv6). The port must be 1..=65535.
pub fn split_host_port(s: &str) -> Result<(&str, u16), String> {
    // `http://host:port` would otherwise be blamed on IPv6 brackets (its host part has a ':').
    if s.contains("://") {
        return Err(format!(
            "{s:?}: expected \"host:port\" without a scheme or path (use a service `url` for \"http://…\")"
        ));
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("{s:?} has no port; expected \"host:port\""));
    };
    if host.contains(':') && !host.starts_with('[') {
        return Err(format!(
            "{s:?}: write IPv6 addresses in brackets, e.g. \"[::1]:8080\""
        ));
    }
    if !is_host(host) {
        return Err(format!(
            "{s:?}: {host:?} is not a valid host name or IP address"
        ));
    }
    Ok((host, parse_port(s, port)?))
}

fn parse_port(whole: &str, port: &str) -> Result<u16, String> {
    // Digits only: `u16::from_str` would accept a leading '+'.
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{whole:?}: the port must be a number 1..=65535"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("{whole:?}: the port must be a number 1..=65535")),
    }
}

/// Resolves `host:port` once, now; prefers the first IPv4 address (targets are usually reached over
/// IPv4 and `localhost` often resolves to `::1` first on hosts without an IPv6 listener).
///
/// Like `resolve_target`, a name this process resolved before keeps its last address (with a
/// warning) when it cannot be resolved now, so a forward-auth service's DNS outage does not block
/// reloads.
pub fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    if let Some(ip) = ip_literal(host) {
        return Ok(SocketAddr::new(ip, port));
    }
    let resolved = resolve_all(host, port).and_then(|all| {
        preferred(&all)
            .map(|a| vec![a])
            .ok_or_else(|| format!("{host:?} resolved to no addresses"))
    });
    let addrs = or_last_good(host, port, resolved, "name", "address")?;
    addrs
        .first()
        .copied()
        .ok_or_else(|| format!("{host:?} resolved to no addresses"))
}

/// `resolved` remembered as what `host:port` resolves to; or, when it failed, the addresses it
/// last resolved to in this process (with a warning naming `what` and the `kept` noun), else the
/// error.
fn or_last_good(
    host: &str,
    port: u16,
    resolved: Result<Vec<SocketAddr>, String>,
    what: &str,
    kept: &str,
) -> Result<Vec<SocketAddr>, String> {
    match resolved {
        Ok(addrs) => {
            remember_target(host, port, &addrs);
            Ok(addrs)
        }
        Err(e) => match last_good(host, port) {
            Some(addrs) => {
                crate::warn!(
                    "{what} not resolved host={host} error=\"{}\"; keeping its last {kept}",
                    e.replace('"', "'")
                );
                Ok(addrs)
            }
            None => Err(e),
        },
    }
}

/// Most addresses one target name becomes (a longer DNS answer is cut to a subset; see
/// `target_ips`).
pub const MAX_TARGET_ADDRS: usize = 64;

/// The addresses a target written as `host:port` stands for, now: an IP literal is itself; a name
/// is every address it resolves to of one family (IPv4 when there is any: `localhost` often answers
/// `::1` and `127.0.0.1`, which are one server, and a dual-stack backend would otherwise count
/// twice), sorted and without duplicates, at most `MAX_TARGET_ADDRS`. As nginx does with a server
/// name that resolves to several addresses, each becomes a target of its own.
///
/// A name that cannot be resolved now but was before in this process (at load, a reload or a
/// `dns_refresh`) keeps its last addresses, with a warning: a backend scaled to zero (a headless
/// service answering NXDOMAIN) or a DNS outage must not block every reload of the gateway, and
/// `dns_refresh` keeps those addresses too. A process that never resolved it (a start, `check`)
/// reports the error.
pub fn resolve_target(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    if let Some(ip) = ip_literal(host) {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let resolved = resolve_ips(host).and_then(|answer| {
        let ips = target_ips(&answer);
        let Some(first) = ips.first() else {
            return Err(format!("{host:?} resolved to no addresses"));
        };
        let family = answer.iter().filter(|ip| ip.is_ipv4() == first.is_ipv4());
        if family.count() > MAX_TARGET_ADDRS {
            crate::warn!(
                "target name resolves to more than {MAX_TARGET_ADDRS} addresses host={host}; this process uses a subset of {MAX_TARGET_ADDRS} (each gateway process its own)"
            );
        }
        Ok(ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect::<Vec<_>>())
    });
    or_last_good(host, port, resolved, "target name", "addresses")
}

/// A target name (lower-case host, port) and the addresses it last resolved to.
type Resolved = ((String, u16), Vec<SocketAddr>);

/// What each target name last resolved to in this process.
static LAST_GOOD: std::sync::Mutex<Vec<Resolved>> = std::sync::Mutex::new(Vec::new());

/// Records `addrs` as what `host:port` resolves to (load, reload, `dns_refresh`).
pub fn remember_target(host: &str, port: u16, addrs: &[SocketAddr]) {
    let key = (host.to_ascii_lowercase(), port);
    if let Ok(mut all) = LAST_GOOD.lock() {
        match all.iter_mut().find(|(k, _)| *k == key) {
            Some((_, a)) => *a = addrs.to_vec(),
            None => all.push((key, addrs.to_vec())),
        }
    }
}

/// Most bytes `export_last_good` writes: an environment string over 128 KiB fails the exec.
const LAST_GOOD_EXPORT_MAX: usize = 96 * 1024;

/// `LAST_GOOD` as text for a new process (binary upgrade): `host port addr,addr;…`. Names that do
/// not fit `LAST_GOOD_EXPORT_MAX` are left out (they resolve afresh there).
pub fn export_last_good() -> String {
    let mut out = String::new();
    let Ok(all) = LAST_GOOD.lock() else {
        return out;
    };
    for ((host, port), addrs) in all.iter() {
        let addrs: Vec<String> = addrs.iter().map(SocketAddr::to_string).collect();
        let entry = format!("{host} {port} {};", addrs.join(","));
        if out.len() + entry.len() > LAST_GOOD_EXPORT_MAX {
            crate::warn!("upgrade: not every target name's last addresses fit the hand-over");
            break;
        }
        out.push_str(&entry);
    }
    out
}

/// Takes an old process's `export_last_good` as this process's memory of what names resolved to
/// (before the config is loaded). Malformed entries are skipped: the name resolves afresh.
pub fn import_last_good(text: &str) {
    for entry in text.split(';').filter(|e| !e.is_empty()) {
        let mut parts = entry.split(' ');
        let (Some(host), Some(port), Some(addrs), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Ok(port) = port.parse::<u16>() else {
            continue;
        };
        let addrs: Option<Vec<SocketAddr>> = addrs.split(',').map(|a| a.parse().ok()).collect();
        match addrs {
            Some(addrs) if !addrs.is_empty() && is_hostname(host) => {
                remember_target(host, port, &addrs)
            }
            _ => {}
        }
    }
}

fn last_good(host: &str, port: u16) -> Option<Vec<SocketAddr>> {
    let key = (host.to_ascii_lowercase(), port);
    let all = LAST_GOOD.lock().ok()?;
    all.iter().find(|(k, _)| *k == key).map(|(_, a)| a.clone())
}

/// The addresses of one answer a target name takes: those of one family (IPv4 when there is any),
/// sorted, without duplicates, at most `MAX_TARGET_ADDRS`.
///
/// A longer answer is cut by rendezvous hashing with a seed of this process: each address scores
/// `hash(seed, address)` and the highest scores are kept. So every gateway process keeps its own
/// subset (cutting to the lowest addresses sent every instance's traffic to the same 64 backends,
/// and none to the rest: found by a review), a process keeps the same subset from one answer to
/// the next, and an address added to or dropped from the answer moves at most one other in or out.
pub fn target_ips(answer: &[IpAddr]) -> Vec<IpAddr> {
    target_ips_seeded(answer, process_seed())
}

fn target_ips_seeded(answer: &[IpAddr], seed: u64) -> Vec<IpAddr> {
    let v4 = answer.iter().any(IpAddr::is_ipv4);
    let mut ips: Vec<IpAddr> = answer
        .iter()
        .copied()
        .filter(|ip| ip.is_ipv4() == v4)
        .collect();
    ips.sort_unstable();
    ips.dedup();
    if ips.len() > MAX_TARGET_ADDRS {
        let score = |ip: &IpAddr| {
            use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
            BuildHasherDefault::<DefaultHasher>::default().hash_one((seed, ip))
        };
        // Highest scores first (the address breaks ties, so the cut is a function of the set).
        ips.sort_by_cached_key(|ip| (std::cmp::Reverse(score(ip)), *ip));
        ips.truncate(MAX_TARGET_ADDRS);
        ips.sort_unstable();
    }
    ips
}

/// A random number fixed for the life of this process (the subset seed of `target_ips`).
fn process_seed() -> u64 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(|| {
        use std::hash::BuildHasher;
        std::collections::hash_map::RandomState::new().hash_one(std::process::id())
    })
}

/// The address `host` names when it is an IP literal (IPv6 with or without brackets).
pub fn ip_literal(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// Every address `host:port` resolves to now (blocking: getaddrinfo).
pub fn resolve_all(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    Ok((host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host:?}: {e}"))?
        .collect())
}

/// Every IP address `host` resolves to now (blocking: getaddrinfo), without duplicates.
pub fn resolve_ips(host: &str) -> Result<Vec<IpAddr>, String> {
    let mut ips: Vec<IpAddr> = Vec::new();
    for a in resolve_all(host, 0)? {
        // getaddrinfo lists an address once per socket type; keep its first place.
        if !ips.contains(&a.ip()) {
            ips.push(a.ip());
        }
    }
    Ok(ips)
}

/// The address a target takes from a resolution: the first IPv4 one, else the first.
pub fn preferred(addrs: &[SocketAddr]) -> Option<SocketAddr> {
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
}

/// A parsed `http(s)://host[:port][/path]` service url.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// `https://`.
    pub tls: bool,
    /// Lower-case host (IPv6 in brackets).
    pub host: String,
    pub port: u16,
    /// "" or starting with '/', without a trailing '/'.
    pub path: String,
}

impl HttpUrl {
    /// `host[:port]`, the port omitted when it is the scheme's default: the Host header value.
    pub fn authority(&self) -> String {
        if self.port == self.default_port() {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn default_port(&self) -> u16 {
        if self.tls {
            443
        } else {
            80
        }
    }
}

/// Parses a service url: `http://` or `https://`; no userinfo, query or fragment.
pub fn parse_url(s: &str) -> Result<HttpUrl, String> {
    let lower_prefix = s.get(..8).unwrap_or(s).to_ascii_lowercase();
    let (tls, rest) = if lower_prefix.starts_with("https://") {
        (true, s.get(8..))
    } else if lower_prefix.starts_with("http://") {
        (false, s.get(7..))
    } else {
        (false, None)
    };
    let Some(rest) = rest else {
        return Err(format!(
            "{s:?} is not an http url; expected \"http://host[:port][/path]\" or \"https://…\""
        ));
    };
    if rest.contains('?') || rest.contains('#') {
        return Err(format!(
            "{s:?}: a service url cannot have a query or fragment"
        ));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err(format!(
            "{s:?}: a service url cannot contain credentials (user@)"
        ));
    }
    let authority = authority.to_ascii_lowercase();
    let default_port = if tls { 443 } else { 80 };
    let (host, port) = if authority.ends_with(']') || !authority.contains(':') {
        (authority.as_str(), default_port)
    } else {
        let (h, p) = authority.rsplit_once(':').unwrap_or((&authority, ""));
        (h, parse_port(s, p)?)
    };
    if !is_host(host) {
        return Err(format!(
            "{s:?}: {host:?} is not a valid host name or IP address"
        ));
    }
    Ok(HttpUrl {
        tls,
        host: host.to_owned(),
        port,
        path: clean_base_path(s, path)?,
    })
}

/// Validates a base path (service `path`, url path) and drops trailing slashes; "/" becomes "" so the
/// proxy can always concatenate `base + request_path`.
pub fn clean_base_path(whole: &str, path: &str) -> Result<String, String> {
    if path.is_empty() {
        return Ok(String::new());
    }
    if !path.starts_with('/') {
        return Err(format!("{whole:?}: a path must start with '/'"));
    }
    if let Some(c) = path.chars().find(|&c| !is_path_char(c)) {
        return Err(format!("{whole:?}: {c:?} is not allowed in a path"));
    }
    let trimmed = path.trim_end_matches('/');
    // The base path is sent upstream as written, in front of the normalized request path: it must
    // be normalized too, or the upstream would resolve `..` (or refuse a bad escape) on its own.
    if trimmed.is_empty() {
        return Ok(String::new()); // "/" (or "///"): no base path
    }
    match unnormalized(trimmed) {
        Some(Unnormalized::BadEscape) => Err(format!("{whole:?}: {BAD_ESCAPE}")),
        Some(Unnormalized::Segments) => Err(format!(
            "{whole:?}: the path must be normalized (no '//', '.' or '..' segments)"
        )),
        None => Ok(trimmed.to_owned()),
    }
}

/// How a configured path differs from the form request paths are normalized to (see
/// `router::normalize_path`): such a route path could never match, and such a base path would be
/// resolved differently by the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unnormalized {
    /// A '%' that does not start an escape of two hex digits (requests with one get a 400).
    BadEscape,
    /// '//', '.' or '..' segments.
    Segments,
}

/// The hint for [`Unnormalized::BadEscape`].
pub const BAD_ESCAPE: &str =
    "'%' must start an escape of two hex digits (write '%' itself as \"%25\")";

/// `None` when `path` is already in normalized form.
pub fn unnormalized(path: &str) -> Option<Unnormalized> {
    if crate::router::normalize_path(path.as_bytes(), &mut Vec::new()).is_err() {
        return Some(Unnormalized::BadEscape);
    }
    if path.contains("//") || path.split('/').any(|seg| seg == "." || seg == "..") {
        return Some(Unnormalized::Segments);
    }
    None
}

/// Characters allowed in configured paths: visible ASCII except the query and fragment markers.
pub fn is_path_char(c: char) -> bool {
    c.is_ascii_graphic() && c != '?' && c != '#'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert!(is_hostname("api.example.com"));
        assert!(is_hostname("127.0.0.1"));
        assert!(is_hostname("my_host"));
        assert!(!is_hostname("-a.com"));
        assert!(!is_hostname("a..com"));
        assert!(!is_hostname("a.com."));
        assert!(!is_hostname("a b"));
        assert_eq!(route_host("*.Example.COM"), Ok("*.example.com".to_owned()));
        assert_eq!(route_host("[::1]"), Ok("[::1]".to_owned()));
        assert!(route_host("a.*.com").is_err());
        assert!(route_host("example.*").is_err());
        assert!(route_host("a.com:80").unwrap_err().contains("port"));
    }

    #[test]
    fn host_ports() {
        assert_eq!(split_host_port("127.0.0.1:9001"), Ok(("127.0.0.1", 9001)));
        assert_eq!(split_host_port("[::1]:80"), Ok(("[::1]", 80)));
        assert!(split_host_port("127.0.0.1").is_err());
        assert!(split_host_port("a:0").is_err());
        assert!(split_host_port("a:+80").is_err());
        assert!(split_host_port("a:65536").is_err());
        assert!(split_host_port("::1:80").is_err());
        assert!(split_host_port(":80").is_err());
        assert!(split_host_port("http://a:80")
            .unwrap_err()
            .contains("without a scheme"));
    }

    #[test]
    fn urls() {
        let u = parse_url("http://Example.com:8080/base/").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("example.com", 8080, "/base")
        );
        assert_eq!(u.authority(), "example.com:8080");
        let u = parse_url("HTTP://127.0.0.1").unwrap();
        assert_eq!(
            (u.port, u.path.as_str(), u.authority()),
            (80, "", "127.0.0.1".to_owned())
        );
        assert_eq!(
            parse_url("http://[::1]:81/").unwrap().authority(),
            "[::1]:81"
        );
        let u = parse_url("https://Api.example.com/v1").unwrap();
        assert!(u.tls);
        assert_eq!((u.port, u.authority()), (443, "api.example.com".to_owned()));
        let u = parse_url("https://a:8443").unwrap();
        assert_eq!(u.authority(), "a:8443");
        assert_eq!(parse_url("https://a:80").unwrap().authority(), "a:80");
        assert!(!parse_url("http://a").unwrap().tls);
        for bad in [
            "ftp://a",
            "http://",
            "https://",
            "https:/a",
            "http://a?x",
            "http://a/#f",
            "http://u@a",
            "http://a:0",
            "http://a:x",
            "http://a/b/../c",
            "http://a/./c",
            "http://a//c",
            "http://a/100%",
            "http://a/%zz",
            "a.com",
            "é",
        ] {
            assert!(parse_url(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_target_name_takes_one_family_sorted() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            target_ips(&[ip("::1"), ip("10.0.0.2"), ip("10.0.0.1"), ip("10.0.0.2")]),
            [ip("10.0.0.1"), ip("10.0.0.2")]
        );
        assert_eq!(target_ips(&[ip("::2"), ip("::1")]), [ip("::1"), ip("::2")]);
        let many: Vec<IpAddr> = (0..100u8)
            .rev()
            .map(|i| ip(&format!("10.0.1.{i}")))
            .collect();
        let kept = target_ips(&many);
        assert_eq!(kept.len(), MAX_TARGET_ADDRS);
        assert!(kept.windows(2).all(|w| w[0] < w[1]), "sorted: {kept:?}");
        assert_eq!(kept, target_ips(&many), "the same subset every time");
        assert_eq!(
            resolve_target("127.0.0.1", 80),
            Ok(vec!["127.0.0.1:80".parse().unwrap()])
        );
    }

    /// Processes keep different subsets of a long answer (they do not all pick the same 64
    /// backends), and an address added to the answer displaces at most one kept address.
    #[test]
    fn a_long_answer_is_cut_to_a_subset_per_process_that_barely_moves() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let many: Vec<IpAddr> = (0..100u8).map(|i| ip(&format!("10.0.1.{i}"))).collect();
        let subsets: Vec<Vec<IpAddr>> = (1..=8u64)
            .map(|seed| target_ips_seeded(&many, seed))
            .collect();
        assert!(subsets.iter().all(|s| s.len() == MAX_TARGET_ADDRS));
        let mut covered: Vec<IpAddr> = subsets.concat();
        covered.sort_unstable();
        covered.dedup();
        assert!(
            covered.len() > 90,
            "8 processes cover most of the 100: {}",
            covered.len()
        );
        let mut grown = many.clone();
        grown.push(ip("10.0.2.1"));
        for seed in 1..=8u64 {
            let before = target_ips_seeded(&many, seed);
            let after = target_ips_seeded(&grown, seed);
            let moved = before.iter().filter(|a| !after.contains(a)).count();
            assert!(moved <= 1, "seed {seed}: {moved} displaced");
        }
    }

    #[test]
    fn last_good_addresses_survive_the_hand_over_text() {
        let a: Vec<SocketAddr> = vec![
            "10.0.0.1:8080".parse().unwrap(),
            "[2001:db8::1]:8080".parse().unwrap(),
        ];
        remember_target("handover-test.example", 8080, &a);
        let text = export_last_good();
        assert!(
            text.contains("handover-test.example 8080 10.0.0.1:8080,[2001:db8::1]:8080;"),
            "{text}"
        );
        // Another process's text, with malformed entries that are skipped.
        import_last_good(
            "other-handover.example 9000 10.0.0.9:9000;bad;x 1 nope;-bad- 1 10.0.0.1:1;",
        );
        assert_eq!(
            last_good("other-handover.example", 9000),
            Some(vec!["10.0.0.9:9000".parse().unwrap()])
        );
        assert_eq!(last_good("x", 1), None);
        assert_eq!(last_good("-bad-", 1), None);
    }

    #[test]
    fn resolution_prefers_literals() {
        assert_eq!(
            resolve("127.0.0.1", 80),
            Ok("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(resolve("[::1]", 80), Ok("[::1]:80".parse().unwrap()));
    }
}
