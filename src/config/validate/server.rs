//! `[server]`: defaults (the config reference's table) and range checks.
//!
//! Invariant: always returns a complete `ServerDef` (defaults where a value is missing or invalid) so
//! later checks (service timeouts) can proceed; invalid values are recorded as problems.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use super::{in_range, positive, push};
use crate::config::locate::{KeyPath, Problem};
use crate::config::model::{ListenDef, ListenKind, PoolDef, ServerDef, Timeouts};
use crate::config::raw::{RawListen, RawServer, Workers};

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
pub const DEFAULT_MAX_HEADER_BYTES: u64 = 32 << 10;
pub const DEFAULT_MAX_URI_BYTES: u64 = 8 << 10;
pub const DEFAULT_MAX_HEADERS: i64 = 100;
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1 << 20;
pub const DEFAULT_MAX_IDLE: i64 = 64;
pub const MAX_WORKERS: i64 = 1024;
pub const MAX_POOL_IDLE: i64 = 10_000;
const MIN_HEADER_BYTES: u64 = 1 << 10;
const MAX_HEADER_BYTES: u64 = 1 << 20;
const MIN_URI_BYTES: u64 = 64;

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub fn compile(raw: Option<&RawServer>, problems: &mut Vec<Problem>) -> ServerDef {
    let default = RawServer::default();
    let raw = raw.unwrap_or(&default);
    let p = KeyPath::root().key("server");

    let workers = match raw.workers {
        None | Some(Workers::Auto) => None,
        Some(Workers::Count(n)) => {
            in_range(problems, p.key("workers"), "workers", n, 1, MAX_WORKERS)
                .and_then(|n| usize::try_from(n).ok())
        }
    };
    let max_headers = raw.max_headers.map_or(DEFAULT_MAX_HEADERS, |i| i.0);
    let max_headers = in_range(
        problems,
        p.key("max_headers"),
        "max_headers",
        max_headers,
        1,
        crate::http::MAX_HEADERS_CAP as i64,
    )
    .unwrap_or(DEFAULT_MAX_HEADERS);

    let (max_header_bytes, max_uri_bytes) = header_limits(raw, &p, problems);

    let t = raw.timeouts.as_ref();
    let tp = p.key("timeouts");
    let timeouts = Timeouts {
        client_header: positive(
            problems,
            tp.key("client_header"),
            t.and_then(|t| t.client_header),
            secs(60),
        ),
        client_body: positive(
            problems,
            tp.key("client_body"),
            t.and_then(|t| t.client_body),
            secs(60),
        ),
        // Zero is allowed: no keep-alive, the connection closes after each response.
        keepalive: t.and_then(|t| t.keepalive).map_or(secs(75), |d| d.0),
        upstream_connect: positive(
            problems,
            tp.key("upstream_connect"),
            t.and_then(|t| t.upstream_connect),
            secs(5),
        ),
        upstream_read: positive(
            problems,
            tp.key("upstream_read"),
            t.and_then(|t| t.upstream_read),
            secs(60),
        ),
        upstream_write: positive(
            problems,
            tp.key("upstream_write"),
            t.and_then(|t| t.upstream_write),
            secs(60),
        ),
        // Zero is allowed: no limit (nginx's `proxy_next_upstream_timeout 0`).
        upstream_retry: t
            .and_then(|t| t.upstream_retry)
            .and_then(|d| (!d.0.is_zero()).then_some(d.0)),
        tls_handshake: positive(
            problems,
            tp.key("tls_handshake"),
            t.and_then(|t| t.tls_handshake),
            secs(10),
        ),
    };

    let pool_raw = raw.pool.as_ref();
    let pp = p.key("pool");
    let max_idle = pool_raw
        .and_then(|r| r.max_idle)
        .map_or(DEFAULT_MAX_IDLE, |i| i.0);
    let pool = PoolDef {
        max_idle: in_range(
            problems,
            pp.key("max_idle"),
            "max_idle",
            max_idle,
            0,
            MAX_POOL_IDLE,
        )
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(0),
        idle_timeout: positive(
            problems,
            pp.key("idle_timeout"),
            pool_raw.and_then(|r| r.idle_timeout),
            secs(60),
        ),
    };

    let listeners = listen(raw.listen.as_deref(), &p.key("listen"), problems);
    ServerDef {
        listen: listeners.iter().map(|l| l.addr).collect(),
        listeners,
        workers,
        max_header_bytes,
        max_uri_bytes,
        max_headers: usize::try_from(max_headers).unwrap_or(0),
        max_body_bytes: raw.max_body_bytes.map_or(DEFAULT_MAX_BODY_BYTES, |s| s.0),
        timeouts,
        pool,
        drain_timeout: positive(
            problems,
            p.key("drain_timeout"),
            raw.drain_timeout,
            secs(30),
        ),
        dns_refresh: dns_refresh(raw, &p, problems),
        trusted_proxies: super::auth::cidrs(
            raw.trusted_proxies.as_deref().unwrap_or_default(),
            &p.key("trusted_proxies"),
            problems,
        ),
    }
}

/// `max_header_bytes` in 1k..=1m and `max_uri_bytes` in 64..=max_header_bytes. When the conflict comes
/// from a default, the error points at the key the user actually wrote.
fn header_limits(raw: &RawServer, p: &KeyPath, problems: &mut Vec<Problem>) -> (usize, usize) {
    let header = raw
        .max_header_bytes
        .map_or(DEFAULT_MAX_HEADER_BYTES, |s| s.0);
    let header_ok = (MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&header);
    if !header_ok {
        push(
            problems,
            p.key("max_header_bytes"),
            format!(
                "max_header_bytes must be between 1k (1024) and 1m (1048576) bytes, got {header}"
            ),
        );
    }
    // The default follows a lowered header limit instead of contradicting it (like nginx, where the
    // request line simply has to fit the header buffer).
    let default_uri = if header_ok {
        DEFAULT_MAX_URI_BYTES.min(header)
    } else {
        DEFAULT_MAX_URI_BYTES
    };
    let uri = raw.max_uri_bytes.map_or(default_uri, |s| s.0);
    if uri < MIN_URI_BYTES {
        push(
            problems,
            p.key("max_uri_bytes"),
            format!("max_uri_bytes must be at least 64, got {uri}"),
        );
    } else if header_ok && uri > header {
        push(
            problems,
            p.key("max_uri_bytes"),
            format!("max_uri_bytes ({uri}) must not exceed max_header_bytes ({header})"),
        );
    }
    let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    (to_usize(header), to_usize(uri))
}

/// `listen`: a non-empty list of distinct `ip:port` addresses, each plain, TLS or an https redirect.
fn listen(
    raw: Option<&[RawListen]>,
    path: &KeyPath,
    problems: &mut Vec<Problem>,
) -> Vec<ListenDef> {
    let Some(raw) = raw else {
        return DEFAULT_LISTEN
            .parse()
            .map(|addr| {
                vec![ListenDef {
                    addr,
                    kind: ListenKind::Http,
                }]
            })
            .unwrap_or_default();
    };
    if raw.is_empty() {
        push(
            problems,
            path.clone(),
            "needs at least one address, e.g. [\"127.0.0.1:8080\"]",
        );
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, entry) in raw.iter().enumerate() {
        let s = entry.addr();
        let at = match entry {
            RawListen::Addr(_) => path.index(i),
            RawListen::Table(_) => path.index(i).key("addr"),
        };
        let addr = match s.parse::<SocketAddr>() {
            Ok(a) if a.port() != 0 && !seen.insert(a) => {
                push(problems, at, format!("{s:?} is listed twice"));
                continue;
            }
            // An IPv4-mapped IPv6 address: written as the IPv4 address it is (beside an IPv4
            // listener on its port the IPv6 socket is IPv6-only, and could not bind it).
            Ok(SocketAddr::V6(a)) if a.ip().to_ipv4_mapped().is_some() => {
                let v4 = a
                    .ip()
                    .to_ipv4_mapped()
                    .map_or_else(String::new, |ip| format!("{ip}:{}", a.port()));
                push(
                    problems,
                    at,
                    format!("{s:?} is an IPv4-mapped address: write it as {v4:?}"),
                );
                continue;
            }
            // The wildcard and a specific address of the same family on one port cannot both
            // bind (`run` would refuse what `check` passed). IPv4 and IPv6 do not clash: an IPv6
            // socket beside an IPv4 listener on its port is IPv6-only, as nginx binds, so
            // `0.0.0.0:80` and `[::]:80` go together (alone, `[::]:80` is dual-stack).
            Ok(a) if a.port() != 0 => match out.iter().find(|d: &&ListenDef| {
                d.addr.port() == a.port()
                    && d.addr.is_ipv4() == a.is_ipv4()
                    && (d.addr.ip().is_unspecified() || a.ip().is_unspecified())
            }) {
                Some(d) => {
                    push(
                        problems,
                        at,
                        format!("{s:?} overlaps \"{}\" listed before it (the wildcard address takes every address of its family on that port): list one or the other", d.addr),
                    );
                    continue;
                }
                None => a,
            },
            Ok(a) => a,
            Err(_) => {
                push(
                    problems,
                    at,
                    format!("{s:?} is not an ip:port address (e.g. \"127.0.0.1:8080\" or \"[::1]:8080\"; host names are not allowed)"),
                );
                continue;
            }
        };
        let kind = match entry {
            RawListen::Addr(_) => ListenKind::Http,
            RawListen::Table(t) => listen_kind(t, &path.index(i), problems),
        };
        out.push(ListenDef { addr, kind });
    }
    out
}

/// The options of a `{ addr = …, … }` listener.
fn listen_kind(
    t: &crate::config::raw::RawListenTable,
    path: &KeyPath,
    problems: &mut Vec<Problem>,
) -> ListenKind {
    let tls = t.tls.unwrap_or(false);
    if let Some(port) = t.https_port {
        if t.redirect_https.is_none() {
            push(
                problems,
                path.key("https_port"),
                "`https_port` only goes with `redirect_https = 301` or `308`",
            );
        } else {
            let _ = in_range(
                problems,
                path.key("https_port"),
                "https_port",
                port.0,
                1,
                65535,
            );
        }
    }
    let Some(code) = t.redirect_https else {
        return if tls {
            ListenKind::Https
        } else {
            ListenKind::Http
        };
    };
    if tls {
        push(
            problems,
            path.key("redirect_https"),
            "a listener either terminates TLS (`tls = true`) or redirects to https, not both",
        );
    }
    let status = match code.0 {
        301 => 301,
        308 => 308,
        other => {
            push(
                problems,
                path.key("redirect_https"),
                format!("redirect_https must be 301 (moved permanently) or 308 (permanent redirect, keeps the method), got {other}"),
            );
            308
        }
    };
    let https_port = t
        .https_port
        .and_then(|p| u16::try_from(p.0).ok())
        .filter(|p| *p > 0)
        .unwrap_or(443);
    ListenKind::RedirectHttps { status, https_port }
}

/// `dns_refresh`: default 30 s; `"0s"` turns it off; otherwise at least 1 s (durations are at most 24 h).
fn dns_refresh(raw: &RawServer, p: &KeyPath, problems: &mut Vec<Problem>) -> Option<Duration> {
    let d = raw.dns_refresh.as_ref().map_or(secs(30), |d| d.0);
    if d.is_zero() {
        return None;
    }
    if d < secs(1) {
        push(
            problems,
            p.key("dns_refresh"),
            "must be \"0s\" (resolve only at load) or at least \"1s\"",
        );
    }
    Some(d)
}
