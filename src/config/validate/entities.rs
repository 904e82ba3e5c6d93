//! `[[upstreams]]` and `[[services]]`: targets, weights, address resolution, the balancing
//! algorithm, urls, references.
//!
//! Invariants: the returned upstream list starts with the named upstreams at their file index, then
//! one anonymous `service:<name>` upstream per `url` service; a service's `upstream` index points
//! into that list. Slots are `None` where an element failed to decode or compile.

use std::collections::{HashMap, HashSet};

use super::tls::{self as tls_cfg, ClientConfigs};
use super::{in_range, index_names, known, one_of, positive, push};
use crate::config::locate::{KeyPath, Problem};
use crate::config::model::{
    Balance, HashOn, ServiceDef, TargetDef, Timeouts, UpstreamDef, UpstreamTls,
};
use crate::config::net;
use crate::config::raw::{RawService, RawTarget, RawUpstream};
use crate::upstream::hashing::Rendezvous;

const DEFAULT_WEIGHT: i64 = 100;
const MAX_WEIGHT: i64 = 65_535;
const MAX_CONNS: i64 = 1_000_000;

/// Compiles upstreams; returns them (by file index) and name -> index.
pub fn upstreams(
    raw: &[Option<RawUpstream>],
    tls: &mut ClientConfigs,
    problems: &mut Vec<Problem>,
) -> (Vec<Option<UpstreamDef>>, HashMap<String, usize>) {
    let names = index_names(
        problems,
        "upstream",
        "upstreams",
        raw.iter()
            .enumerate()
            .filter_map(|(i, u)| u.as_ref().map(|u| (i, u.name.as_str()))),
    );
    let base = KeyPath::root().key("upstreams");
    let compiled = raw
        .iter()
        .enumerate()
        .map(|(i, u)| {
            u.as_ref()
                .map(|u| upstream(u, &base.index(i), tls, problems))
        })
        .collect();
    (compiled, names)
}

/// What makes two targets the same: the address, not its spelling (`127.0.0.1:080` is
/// `127.0.0.1:80`, `[::0:1]:80` is `[::1]:80`; names compare without case). A name and an IP that
/// resolve alike are not caught: that is only known after resolving.
fn target_key(target: &str) -> String {
    match crate::config::net::split_host_port(target) {
        Ok((host, port)) => match crate::config::net::ip_literal(host) {
            Some(ip) => std::net::SocketAddr::new(ip, port).to_string(),
            None => format!("{}:{port}", host.to_ascii_lowercase()),
        },
        Err(_) => target.to_ascii_lowercase(),
    }
}

fn upstream(
    raw: &RawUpstream,
    path: &KeyPath,
    tls: &mut ClientConfigs,
    problems: &mut Vec<Problem>,
) -> UpstreamDef {
    if raw.targets.is_empty() {
        push(
            problems,
            path.key("targets"),
            "an upstream needs at least one target, e.g. [{ target = \"127.0.0.1:9001\" }]",
        );
    }
    let mut seen = HashSet::new();
    let mut targets = Vec::new();
    for (i, t) in raw.targets.iter().enumerate() {
        let tp = path.key("targets").index(i);
        if !seen.insert(target_key(&t.target)) {
            push(
                problems,
                tp.key("target"),
                format!("duplicate target {:?} in this upstream (the same address as an earlier one: it would get that target's weight again)", t.target),
            );
            continue;
        }
        targets.extend(target(t, &tp, problems));
    }
    if let Some(h) = &raw.host_header {
        if !valid_authority(h) {
            push(
                problems,
                path.key("host_header"),
                format!(
                    "{h:?} is not a valid Host header value; expected \"host\" or \"host:port\""
                ),
            );
        }
    }
    let tls = upstream_tls(raw, path, &targets, tls, problems);
    let health = super::health::compile(raw.health.as_ref(), path, valid_authority, problems);
    let balance = balance(raw, path, problems);
    let hashing = matches!(balance, Balance::Hash { .. }).then(|| Rendezvous::new(&targets));
    let capped = targets.iter().any(|t| t.max_conns.is_some());
    UpstreamDef {
        name: raw.name.clone(),
        targets,
        host_header: raw.host_header.clone(),
        tls,
        health,
        balance,
        hashing,
        capped,
    }
}

/// `algorithm`, with `hash_on` and its companions for `consistent_hash`. Keys that only apply to
/// another algorithm or another `hash_on` are errors, not silently ignored.
fn balance(raw: &RawUpstream, path: &KeyPath, problems: &mut Vec<Problem>) -> Balance {
    #[derive(Clone, Copy, PartialEq)]
    enum A {
        RoundRobin,
        LeastConn,
        Hash,
    }
    #[derive(Clone, Copy, PartialEq)]
    enum On {
        Ip,
        Consumer,
        Header,
        Cookie,
        QueryArg,
        Path,
    }
    let algorithm = match &raw.algorithm {
        None => Some(A::RoundRobin),
        Some(a) => one_of(
            problems,
            path.key("algorithm"),
            a,
            &[
                ("round_robin", A::RoundRobin),
                ("least_conn", A::LeastConn),
                ("consistent_hash", A::Hash),
            ],
        ),
    };
    // A misspelt algorithm is its one error, not also every hash key it would have used.
    let Some(algorithm) = algorithm else {
        return Balance::RoundRobin;
    };
    let on = raw.hash_on.as_deref().and_then(|h| {
        one_of(
            problems,
            path.key("hash_on"),
            h,
            &[
                ("ip", On::Ip),
                ("consumer", On::Consumer),
                ("header", On::Header),
                ("cookie", On::Cookie),
                ("query_arg", On::QueryArg),
                ("path", On::Path),
            ],
        )
    });
    let mut only = |key: &str, set: bool, when: &str| {
        if set {
            push(
                problems,
                path.key(key),
                format!("`{key}` only applies with {when}"),
            );
        }
    };
    if algorithm != A::Hash {
        only(
            "hash_on",
            raw.hash_on.is_some(),
            "algorithm = \"consistent_hash\"",
        );
    }
    // Likewise a misspelt hash_on.
    if raw.hash_on.is_some() && on.is_none() {
        return Balance::RoundRobin;
    }
    if on != Some(On::Header) {
        only(
            "hash_on_header",
            raw.hash_on_header.is_some(),
            "hash_on = \"header\"",
        );
    }
    if on != Some(On::Cookie) {
        only(
            "hash_on_cookie",
            raw.hash_on_cookie.is_some(),
            "hash_on = \"cookie\"",
        );
        only(
            "hash_on_cookie_path",
            raw.hash_on_cookie_path.is_some(),
            "hash_on = \"cookie\"",
        );
    }
    if on != Some(On::QueryArg) {
        only(
            "hash_on_query_arg",
            raw.hash_on_query_arg.is_some(),
            "hash_on = \"query_arg\"",
        );
    }
    if on.is_none() || on == Some(On::Ip) {
        only(
            "hash_fallback",
            raw.hash_fallback.is_some(),
            "a hash_on value a request can lack (consumer, header, cookie, query_arg, path)",
        );
    } else if on == Some(On::Cookie)
        && raw.hash_on_cookie_path.is_some()
        && raw.hash_fallback.is_some()
    {
        push(
            problems,
            path.key("hash_fallback"),
            "`hash_fallback` does not apply with `hash_on_cookie_path`: a request without the cookie is given one",
        );
    }
    if algorithm != A::Hash {
        return match algorithm {
            A::LeastConn => Balance::LeastConn,
            _ => Balance::RoundRobin,
        };
    }
    let fallback_ip = match raw.hash_fallback.as_deref() {
        None => false,
        Some(f) => one_of(
            problems,
            path.key("hash_fallback"),
            f,
            &[("round_robin", false), ("ip", true)],
        )
        .unwrap_or(false),
    };
    let named =
        |key: &str, value: &Option<String>, example: &str, problems: &mut Vec<Problem>| match value
        {
            None => {
                push(
                    problems,
                    path.key("hash_on"),
                    format!(
                        "hash_on = {:?} needs `{key}` (e.g. {key} = {example:?})",
                        key.trim_start_matches("hash_on_")
                    ),
                );
                None
            }
            // Header and cookie names are tokens; a query parameter's may also hold brackets
            // and the like (`user[id]`), compared form-decoded: any visible ASCII but the
            // query's own separators.
            Some(v) if key == "hash_on_query_arg" && !query_arg_name(v) => {
                push(
                    problems,
                    path.key(key),
                    format!(
                        "{v:?} is not a valid query parameter name (visible ASCII without & = # ?)"
                    ),
                );
                None
            }
            Some(v) if key != "hash_on_query_arg" && !super::plugins::is_token(v) => {
                push(
                    problems,
                    path.key(key),
                    format!("{v:?} is not a valid name (letters, digits and !#$%&'*+-.^_`|~)"),
                );
                None
            }
            Some(v) => Some(v.clone()),
        };
    let on = match on {
        Some(On::Ip) => Some(HashOn::Ip),
        Some(On::Consumer) => Some(HashOn::Consumer),
        Some(On::Path) => Some(HashOn::Path),
        Some(On::Header) => named("hash_on_header", &raw.hash_on_header, "X-User-Id", problems)
            .map(|h| HashOn::Header(h.to_ascii_lowercase())),
        Some(On::Cookie) => {
            let set = raw
                .hash_on_cookie_path
                .as_deref()
                .and_then(|p| cookie_path(p, &path.key("hash_on_cookie_path"), problems));
            let name = named("hash_on_cookie", &raw.hash_on_cookie, "session", problems);
            // A browser silently refuses a `__Host-` cookie whose Path is not `/` (RFC 6265bis
            // §4.1.3.2): every request would then get a new cookie and a random target.
            if let (Some(n), Some(p)) = (&name, &set) {
                if n.get(..7)
                    .is_some_and(|h| h.eq_ignore_ascii_case("__Host-"))
                    && p != "/"
                {
                    push(
                        problems,
                        path.key("hash_on_cookie_path"),
                        format!("a {n:?} cookie must have hash_on_cookie_path = \"/\" (browsers refuse a __Host- cookie with another path)"),
                    );
                }
            }
            name.map(|name| HashOn::Cookie { name, set })
        }
        Some(On::QueryArg) => named(
            "hash_on_query_arg",
            &raw.hash_on_query_arg,
            "user",
            problems,
        )
        .map(HashOn::QueryArg),
        None => {
            if raw.hash_on.is_none() {
                push(
                    problems,
                    path.key("algorithm"),
                    "algorithm = \"consistent_hash\" needs `hash_on`: \"ip\", \"consumer\", \"header\", \"cookie\", \"query_arg\" or \"path\"",
                );
            }
            None
        }
    };
    match on {
        Some(on) => Balance::Hash { on, fallback_ip },
        // Reported above; compilation goes on to find more problems.
        None => Balance::RoundRobin,
    }
}

/// A query parameter name `hash_on_query_arg` may have.
fn query_arg_name(v: &str) -> bool {
    !v.is_empty()
        && v.bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && !matches!(b, b'&' | b'=' | b'#' | b'?'))
}

/// `hash_on_cookie_path`: the `Path` of the cookie the gateway sets, written into a `Set-Cookie`
/// line as it is: `/` and then visible ASCII without `;` (which would start another attribute).
fn cookie_path(p: &str, at: &KeyPath, problems: &mut Vec<Problem>) -> Option<String> {
    let ok = p.starts_with('/')
        && p.len() <= 1024
        && p.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b';');
    if !ok {
        push(
            problems,
            at.clone(),
            format!(
                "{p:?} is not a cookie path: it starts with '/' and has at most 1024 visible ASCII characters, none of them ';'"
            ),
        );
        return None;
    }
    Some(p.to_owned())
}

/// `tls = true` on an upstream: the client config and, per target, the name sent as SNI and verified
/// (`tls_server_name`, else the host of `host_header`, else the target's host).
fn upstream_tls(
    raw: &RawUpstream,
    path: &KeyPath,
    targets: &[TargetDef],
    configs: &mut ClientConfigs,
    problems: &mut Vec<Problem>,
) -> Option<UpstreamTls> {
    if raw.tls != Some(true) {
        for (key, set) in [
            ("ca_file", raw.ca_file.is_some()),
            ("tls_server_name", raw.tls_server_name.is_some()),
        ] {
            if set {
                push(
                    problems,
                    path.key(key),
                    format!("`{key}` only applies to TLS upstreams: add `tls = true`"),
                );
            }
        }
        return None;
    }
    let config = configs.get(raw.ca_file.as_deref(), &path.key("ca_file"), problems);
    let fixed = match raw.tls_server_name.as_deref().or_else(|| {
        raw.host_header
            .as_deref()
            .map(|h| net::split_host_port(h).map_or(h, |(host, _)| host))
    }) {
        Some(name) => {
            let at = if raw.tls_server_name.is_some() {
                path.key("tls_server_name")
            } else {
                path.key("host_header")
            };
            Some(
                tls_cfg::server_name(name)
                    .map_err(|e| push(problems, at, e))
                    .ok()?,
            )
        }
        None => None,
    };
    // Checked per target as written (its index is the one in the file); a name that resolved to
    // several addresses is several targets with the one server name.
    let mut by_name = HashMap::new();
    for (i, t) in raw.targets.iter().enumerate() {
        let name = match &fixed {
            Some(n) => n.clone(),
            None => {
                let host = net::split_host_port(&t.target).map_or(t.target.as_str(), |(h, _)| h);
                tls_cfg::server_name(host)
                    .map_err(|e| push(problems, path.key("targets").index(i).key("target"), e))
                    .ok()?
            }
        };
        by_name.insert(t.target.as_str(), name);
    }
    let names = targets
        .iter()
        .map(|t| by_name.get(t.name.as_str()).cloned())
        .collect::<Option<Vec<_>>>()?;
    Some(UpstreamTls {
        config: config?,
        names,
        roots: configs.roots_id(raw.ca_file.as_deref()),
    })
}

/// `host` or `host:port`, as sent in a Host header.
fn valid_authority(s: &str) -> bool {
    net::is_host(s) || net::split_host_port(s).is_ok()
}

/// One target as written: one `TargetDef` per address its name resolves to (`net::resolve_target`),
/// each with the written weight (as nginx gives each address of a server name the server's weight).
fn target(raw: &RawTarget, path: &KeyPath, problems: &mut Vec<Problem>) -> Vec<TargetDef> {
    let weight = raw.weight.map_or(DEFAULT_WEIGHT, |w| w.0);
    let weight = in_range(
        problems,
        path.key("weight"),
        "weight",
        weight,
        1,
        MAX_WEIGHT,
    );
    let addrs = net::split_host_port(&raw.target)
        .and_then(|(host, port)| net::resolve_target(host, port))
        .map_err(|e| push(problems, path.key("target"), e))
        .unwrap_or_default();
    let max_conns = raw.max_conns.map(|m| {
        in_range(
            problems,
            path.key("max_conns"),
            "max_conns",
            m.0,
            1,
            MAX_CONNS,
        )
        .and_then(|m| u32::try_from(m).ok())
    });
    let Some(weight) = weight.and_then(|w| u32::try_from(w).ok()) else {
        return Vec::new();
    };
    // Reported above; compilation goes on without the limit.
    let max_conns = max_conns.flatten();
    addrs
        .into_iter()
        .map(|addr| TargetDef {
            name: raw.target.clone(),
            addr,
            weight,
            max_conns,
        })
        .collect()
}

/// Compiles services, appending the anonymous upstreams of `url` services to `upstreams`.
pub fn services(
    raw: &[Option<RawService>],
    upstream_names: &HashMap<String, usize>,
    broken_upstreams: &HashSet<String>,
    defaults: &Timeouts,
    upstreams: &mut Vec<Option<UpstreamDef>>,
    tls: &mut ClientConfigs,
    problems: &mut Vec<Problem>,
) -> (Vec<Option<ServiceDef>>, HashMap<String, usize>) {
    let names = index_names(
        problems,
        "service",
        "services",
        raw.iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i, s.name.as_str()))),
    );
    let base = KeyPath::root().key("services");
    let mut out = Vec::with_capacity(raw.len());
    for (i, s) in raw.iter().enumerate() {
        let compiled = s.as_ref().and_then(|s| {
            let path = base.index(i);
            let target = Target {
                names: upstream_names,
                broken: broken_upstreams,
            };
            service(s, &path, target, defaults, upstreams, tls, problems)
        });
        out.push(compiled);
    }
    (out, names)
}

/// What a service may point at.
#[derive(Clone, Copy)]
struct Target<'a> {
    names: &'a HashMap<String, usize>,
    broken: &'a HashSet<String>,
}

fn service(
    raw: &RawService,
    path: &KeyPath,
    target: Target<'_>,
    defaults: &Timeouts,
    upstreams: &mut Vec<Option<UpstreamDef>>,
    tls: &mut ClientConfigs,
    problems: &mut Vec<Problem>,
) -> Option<ServiceDef> {
    let connect_timeout = positive(
        problems,
        path.key("connect_timeout"),
        raw.connect_timeout,
        defaults.upstream_connect,
    );
    let read_timeout = positive(
        problems,
        path.key("read_timeout"),
        raw.read_timeout,
        defaults.upstream_read,
    );
    let write_timeout = positive(
        problems,
        path.key("write_timeout"),
        raw.write_timeout,
        defaults.upstream_write,
    );
    // Zero: no limit, also where `[server.timeouts] upstream_retry` sets one.
    let retry_timeout = match raw.retry_timeout {
        Some(d) => (!d.0.is_zero()).then_some(d.0),
        None => defaults.upstream_retry,
    };
    let retries = raw.retries.map_or(Some(DEFAULT_RETRIES), |n| {
        in_range(problems, path.key("retries"), "retries", n.0, 0, 100)
            .and_then(|n| usize::try_from(n).ok())
    })?;

    let (upstream, base_path, host_header) = match (&raw.url, &raw.upstream) {
        (Some(url), None) => {
            if raw.path.is_some() {
                push(
                    problems,
                    path.key("path"),
                    "`path` is only allowed with `upstream`; with `url`, put the path in the url",
                );
            }
            url_upstream(raw, url, path, upstreams, tls, problems)?
        }
        (None, Some(name)) => {
            for (key, set) in [
                ("ca_file", raw.ca_file.is_some()),
                ("tls_server_name", raw.tls_server_name.is_some()),
            ] {
                if set {
                    push(
                        problems,
                        path.key(key),
                        format!("with `upstream`, set `{key}` (and `tls = true`) on the [[upstreams]] entry"),
                    );
                }
            }
            let Some(&index) = target.names.get(name) else {
                if !target.broken.contains(name) {
                    push(
                        problems,
                        path.key("upstream"),
                        format!("no upstream named {name:?} ({})", known(target.names)),
                    );
                }
                return None;
            };
            let base = raw.path.as_deref().unwrap_or("");
            let base = net::clean_base_path(base, base)
                .map_err(|e| push(problems, path.key("path"), e))
                .ok()?;
            let host_header = upstreams
                .get(index)
                .and_then(|u| u.as_ref())
                .and_then(|u| u.host_header.clone());
            (index, base, host_header)
        }
        (Some(_), Some(_)) => {
            push(
                problems,
                path.key("upstream"),
                "a service has either `url` or `upstream`, not both",
            );
            return None;
        }
        (None, None) => {
            push(
                problems,
                path.clone(),
                "a service needs `url = \"http://host:port\"` or `upstream = \"<name>\"`",
            );
            return None;
        }
    };
    Some(ServiceDef {
        name: raw.name.clone(),
        upstream,
        path: base_path,
        host_header,
        connect_timeout,
        read_timeout,
        write_timeout,
        retries,
        retry_timeout,
    })
}

/// Kong's default: a failed connect moves on to at most 5 other targets.
const DEFAULT_RETRIES: usize = 5;

/// A `url` service's single-target upstream: returns (its index, base path, Host header).
fn url_upstream(
    raw: &RawService,
    url: &str,
    service_path: &KeyPath,
    upstreams: &mut Vec<Option<UpstreamDef>>,
    configs: &mut ClientConfigs,
    problems: &mut Vec<Problem>,
) -> Option<(usize, String, Option<String>)> {
    let path = service_path.key("url");
    let parsed = net::parse_url(url)
        .map_err(|e| push(problems, path.clone(), e))
        .ok()?;
    let tls = if parsed.tls {
        let config = configs.get(
            raw.ca_file.as_deref(),
            &service_path.key("ca_file"),
            problems,
        );
        let (name, at) = match &raw.tls_server_name {
            Some(n) => (n.as_str(), service_path.key("tls_server_name")),
            None => (parsed.host.as_str(), path.clone()),
        };
        let name = tls_cfg::server_name(name).map_err(|e| push(problems, at, e));
        Some(UpstreamTls {
            config: config?,
            names: vec![name.ok()?],
            roots: configs.roots_id(raw.ca_file.as_deref()),
        })
    } else {
        for (key, set) in [
            ("ca_file", raw.ca_file.is_some()),
            ("tls_server_name", raw.tls_server_name.is_some()),
        ] {
            if set {
                push(
                    problems,
                    service_path.key(key),
                    format!("`{key}` only applies to https:// urls"),
                );
            }
        }
        None
    };
    let addrs = net::resolve_target(&parsed.host, parsed.port)
        .map_err(|e| push(problems, path.clone(), e))
        .ok()?;
    let name = format!("{}:{}", parsed.host, parsed.port);
    // A name with several addresses balances over them, like an upstream's target.
    let tls = tls.and_then(|t| {
        Some(UpstreamTls {
            names: vec![t.names.first()?.clone(); addrs.len()],
            ..t
        })
    });
    upstreams.push(Some(UpstreamDef {
        name: format!("service:{}", raw.name),
        targets: addrs
            .into_iter()
            .map(|addr| TargetDef {
                name: name.clone(),
                addr,
                weight: DEFAULT_WEIGHT as u32,
                max_conns: None,
            })
            .collect(),
        host_header: None,
        tls,
        health: Default::default(),
        balance: Balance::RoundRobin,
        hashing: None,
        capped: false,
    }));
    Some((
        upstreams.len() - 1,
        parsed.path.clone(),
        Some(parsed.authority()),
    ))
}
