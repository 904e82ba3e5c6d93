//! `[[plugins]]`: scope references, one plugin of a name per scope, and each plugin's config.
//!
//! Invariants of the output: see `model::plugins`. Every problem is reported at the exact key
//! (`plugins[0].config.minute`); a missing key is reported at its nearest written ancestor.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use super::{auth, compression, edge, in_range, known, one_of, push, termination};
use crate::config::locate::{KeyPath, Problem};
use crate::config::model::{
    Algorithm, BucketDef, LimitBy, Mode, Period, PeriodLimit, PluginConfig, PluginDef, PluginScope,
    Policy, RateLimitDef, RedisDef, RedisFailure, RedisTls,
};
use crate::config::raw::plugins::{DecodedPlugin, RawPluginConfig, RawRateLimiting, RawRedis};
use crate::config::raw::Int;

/// Names and broken names of the entities plugins may reference.
pub struct Refs<'a> {
    pub services: &'a HashMap<String, usize>,
    pub broken_services: &'a HashSet<String>,
    pub routes: &'a HashMap<String, usize>,
    pub broken_routes: &'a HashSet<String>,
}

pub const DEFAULT_ERROR_MESSAGE: &str = "API rate limit exceeded";
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_millis(5);
pub const DEFAULT_MAX_KEYS: i64 = 100_000;
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(50);

pub fn compile(
    raw: &[Option<DecodedPlugin>],
    refs: &Refs<'_>,
    ctx: &mut auth::Ctx<'_>,
    problems: &mut Vec<Problem>,
) -> Vec<Option<PluginDef>> {
    let base = KeyPath::root().key("plugins");
    // (name, scope) -> index of the first entry, for duplicate detection.
    let mut seen: HashMap<(String, PluginScope), usize> = HashMap::new();
    // basic-auth instances first: their htpasswd users become consumers, which any plugin may
    // name (`anonymous`, `consumer = …`) wherever it stands in the file.
    let basic_first = |p: &Option<DecodedPlugin>| {
        !matches!(
            p.as_ref().map(|p| &p.config),
            Some(RawPluginConfig::BasicAuth(_))
        )
    };
    let mut order: Vec<usize> = (0..raw.len()).collect();
    order.sort_by_key(|&i| raw.get(i).is_some_and(basic_first));
    // Every index keeps its place (a broken entry as `None`).
    let mut compiled: Vec<(usize, Option<PluginDef>)> = order
        .into_iter()
        .map(|i| {
            let p = raw.get(i).and_then(Option::as_ref);
            (
                i,
                p.and_then(|p| compile_one(i, p, &mut seen, refs, ctx, problems)),
            )
        })
        .collect();
    compiled.sort_by_key(|(i, _)| *i);
    let defs: Vec<Option<PluginDef>> = compiled.into_iter().map(|(_, d)| d).collect();
    correlation_vs_api_keys(&defs, &base, problems);
    defs
}

/// One `[[plugins]]` entry (`i`: its index in the file); `seen` finds duplicates.
fn compile_one(
    i: usize,
    p: &DecodedPlugin,
    seen: &mut HashMap<(String, PluginScope), usize>,
    refs: &Refs<'_>,
    ctx: &mut auth::Ctx<'_>,
    problems: &mut Vec<Problem>,
) -> Option<PluginDef> {
    let path = KeyPath::root().key("plugins").index(i);
    let scope = scope(p, &path, refs, ctx, problems);
    if let Some(scope) = scope {
        if let Some(first) = seen.get(&(p.name.clone(), scope)) {
            push(
                    problems,
                    path.key("name"),
                    format!(
                        "duplicate plugin {:?} for the same scope: already attached by plugins[{first}] \
                         (one instance per plugin name per global/service/route scope)",
                        p.name
                    ),
                );
        } else {
            seen.insert((p.name.clone(), scope), i);
        }
    }
    let config = match &p.config {
        RawPluginConfig::RateLimiting(c) => {
            rate_limiting(c.as_ref(), &path, ctx.base, problems).map(PluginConfig::RateLimiting)
        }
        RawPluginConfig::KeyAuth(c) => {
            auth::key_auth(c.as_ref(), &path, ctx, problems).map(PluginConfig::KeyAuth)
        }
        RawPluginConfig::BasicAuth(c) => {
            auth::basic_auth(c.as_ref(), &path, ctx, problems).map(PluginConfig::BasicAuth)
        }
        RawPluginConfig::Jwt(c) => {
            auth::jwt(c.as_ref(), &path, ctx, problems).map(PluginConfig::Jwt)
        }
        RawPluginConfig::Acl(c) => auth::acl(c.as_ref(), &path, problems).map(PluginConfig::Acl),
        RawPluginConfig::IpRestriction(c) => {
            auth::ip_restriction(c.as_ref(), &path, problems).map(PluginConfig::IpRestriction)
        }
        RawPluginConfig::ForwardAuth(c) => {
            auth::forward_auth(c.as_ref(), &path, ctx, problems).map(PluginConfig::ForwardAuth)
        }
        RawPluginConfig::CorrelationId(c) => {
            edge::correlation_id(c.as_ref(), &path, problems).map(PluginConfig::CorrelationId)
        }
        RawPluginConfig::Cors(c) => edge::cors(c.as_ref(), &path, problems).map(PluginConfig::Cors),
        RawPluginConfig::RequestTransformer(c) => {
            edge::transformer(c.as_ref(), &path, edge::Side::Request, problems)
                .map(PluginConfig::RequestTransformer)
        }
        RawPluginConfig::ResponseTransformer(c) => {
            edge::transformer(c.as_ref(), &path, edge::Side::Response, problems)
                .map(PluginConfig::ResponseTransformer)
        }
        RawPluginConfig::RequestTermination(c) => {
            termination::request_termination(c.as_ref(), &path, problems)
                .map(PluginConfig::RequestTermination)
        }
        RawPluginConfig::Compression(c) => {
            compression::compression(c.as_ref(), &path, problems).map(PluginConfig::Compression)
        }
    };
    Some(PluginDef {
        name: p.name.clone(),
        scope: scope?,
        enabled: p.enabled.unwrap_or(true),
        config: config?,
    })
}

/// A correlation-id header that key-auth reads an API key from: the key would be written to the
/// access log as the request id, and echoed back with `echo_downstream`.
fn correlation_vs_api_keys(
    defs: &[Option<PluginDef>],
    base: &KeyPath,
    problems: &mut Vec<Problem>,
) {
    let key_names: Vec<&str> = defs
        .iter()
        .flatten()
        .filter_map(|d| match &d.config {
            PluginConfig::KeyAuth(k) if k.in_header => Some(&k.key_names),
            _ => None,
        })
        .flatten()
        .map(String::as_str)
        .collect();
    for (i, d) in defs.iter().enumerate() {
        let Some(PluginConfig::CorrelationId(c)) = d.as_ref().map(|d| &d.config) else {
            continue;
        };
        if key_names
            .iter()
            .any(|k| k.eq_ignore_ascii_case(&c.header_name))
        {
            push(
                problems,
                base.index(i).key("config").key("header_name"),
                format!(
                    "{:?} is where key-auth reads API keys: the key would be logged as the request \
                     id (and echoed with echo_downstream)",
                    c.header_name
                ),
            );
        }
    }
}

/// Plugins that may attach to a consumer (they run after auth has identified one). Auth plugins
/// cannot: they are what identifies the consumer (Kong's rule too).
const CONSUMER_SCOPED: &[&str] = &["rate-limiting", "ip-restriction", "request-termination"];

fn scope(
    p: &DecodedPlugin,
    path: &KeyPath,
    refs: &Refs<'_>,
    ctx: &auth::Ctx<'_>,
    problems: &mut Vec<Problem>,
) -> Option<PluginScope> {
    if let Some(consumer) = &p.consumer {
        if p.route.is_some() || p.service.is_some() {
            push(
                problems,
                path.key("consumer"),
                "a plugin attaches to one scope: set one of `consumer`, `route` or `service`",
            );
            return None;
        }
        if !CONSUMER_SCOPED.contains(&p.name.as_str()) {
            push(
                problems,
                path.key("consumer"),
                format!(
                    "{:?} cannot be attached to a consumer (only {} can)",
                    p.name,
                    CONSUMER_SCOPED.join(", ")
                ),
            );
            return None;
        }
        return super::consumers::lookup(
            problems,
            path.key("consumer"),
            consumer,
            ctx.names,
            ctx.broken,
        )
        .map(PluginScope::Consumer);
    }
    match (&p.route, &p.service) {
        (Some(_), Some(_)) => {
            push(
                problems,
                path.key("service"),
                "a plugin attaches to one scope: set either `route` or `service`, not both",
            );
            None
        }
        (Some(r), None) => lookup(
            problems,
            path.key("route"),
            "route",
            r,
            refs.routes,
            refs.broken_routes,
        )
        .map(PluginScope::Route),
        (None, Some(s)) => lookup(
            problems,
            path.key("service"),
            "service",
            s,
            refs.services,
            refs.broken_services,
        )
        .map(PluginScope::Service),
        (None, None) => Some(PluginScope::Global),
    }
}

fn lookup(
    problems: &mut Vec<Problem>,
    path: KeyPath,
    kind: &str,
    name: &str,
    names: &HashMap<String, usize>,
    broken: &HashSet<String>,
) -> Option<usize> {
    let found = names.get(name).copied();
    if found.is_none() && !broken.contains(name) {
        push(
            problems,
            path,
            format!("no {kind} named {name:?} ({})", known(names)),
        );
    }
    found
}

fn positive_int(problems: &mut Vec<Problem>, path: KeyPath, what: &str, v: Int) -> Option<u64> {
    in_range(problems, path, what, v.0, 1, 1_000_000_000_000).and_then(|n| u64::try_from(n).ok())
}

/// An RFC 9110 token (what a field name may be).
pub(super) fn is_token(name: &str) -> bool {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    !name.is_empty() && name.bytes().all(tchar)
}

/// An HTTP field name (RFC 9110 token), lower-cased.
fn header_name(name: &str) -> Option<String> {
    is_token(name).then(|| name.to_ascii_lowercase())
}

fn rate_limiting(
    raw: Option<&RawRateLimiting>,
    path: &KeyPath,
    base: &Path,
    problems: &mut Vec<Problem>,
) -> Option<RateLimitDef> {
    let Some(c) = raw else {
        push(
            problems,
            path.clone(),
            "rate-limiting needs a `config` table with at least one limit, e.g. config = { minute = 100 }",
        );
        return None;
    };
    let cp = path.key("config");
    let before = problems.len();

    let algorithm = match &c.algorithm {
        None => Some(Algorithm::FixedWindow),
        Some(a) => one_of(
            problems,
            cp.key("algorithm"),
            a,
            &[
                ("fixed_window", Algorithm::FixedWindow),
                ("sliding_window", Algorithm::SlidingWindow),
                ("token_bucket", Algorithm::TokenBucket),
            ],
        ),
    };
    let (limits, bucket) = match algorithm {
        Some(Algorithm::TokenBucket) => (Vec::new(), token_bucket(c, &cp, problems)),
        Some(_) => (windows(c, &cp, problems), None),
        None => (Vec::new(), None),
    };

    let limit_by = limit_by(c, &cp, problems);
    let error_code = match c.error_code {
        None => Some(429),
        Some(v) => in_range(problems, cp.key("error_code"), "error_code", v.0, 400, 599)
            .and_then(|n| u16::try_from(n).ok()),
    };
    let error_message = c
        .error_message
        .clone()
        .unwrap_or_else(|| DEFAULT_ERROR_MESSAGE.to_owned());
    if error_message.chars().any(char::is_control) {
        push(
            problems,
            cp.key("error_message"),
            "must not contain control characters",
        );
    }
    let mode = match &c.mode {
        None => Some(Mode::Enforce),
        Some(m) => one_of(
            problems,
            cp.key("mode"),
            m,
            &[("enforce", Mode::Enforce), ("shadow", Mode::Shadow)],
        ),
    };
    let sync_interval = match c.sync_interval {
        None => DEFAULT_SYNC_INTERVAL,
        Some(d) if d.0.is_zero() || d.0 > Duration::from_secs(1) => {
            push(
                problems,
                cp.key("sync_interval"),
                "must be between \"1ms\" and \"1s\" (a few ms keeps the over-admission bound small)",
            );
            DEFAULT_SYNC_INTERVAL
        }
        Some(d) => d.0,
    };
    let max_keys = in_range(
        problems,
        cp.key("max_keys"),
        "max_keys",
        c.max_keys.map_or(DEFAULT_MAX_KEYS, |v| v.0),
        1,
        100_000_000,
    )
    .and_then(|n| usize::try_from(n).ok());
    let (policy, on_redis_failure) = policy(c, &cp, base, problems);

    if problems.len() != before {
        return None;
    }
    Some(RateLimitDef {
        algorithm: algorithm?,
        limits,
        bucket,
        limit_by: limit_by?,
        error_code: error_code?,
        error_message,
        hide_client_headers: c.hide_client_headers.unwrap_or(false),
        mode: mode?,
        policy: policy?,
        on_redis_failure,
        sync_interval,
        max_keys: max_keys?,
    })
}

/// Period limits of the window algorithms (shortest first); Kong's ordering rule applies: a longer
/// period may not allow fewer requests than a shorter one.
fn windows(c: &RawRateLimiting, cp: &KeyPath, problems: &mut Vec<Problem>) -> Vec<PeriodLimit> {
    for (key, set) in [
        ("average", c.average.is_some()),
        ("period", c.period.is_some()),
        ("burst", c.burst.is_some()),
        ("rate_limit", c.rate_limit.is_some()),
        ("burst_limit", c.burst_limit.is_some()),
    ] {
        if set {
            push(
                problems,
                cp.key(key),
                format!("`{key}` is a token bucket setting; set algorithm = \"token_bucket\" or use second/minute/hour/day"),
            );
        }
    }
    let written = [c.second, c.minute, c.hour, c.day];
    let mut limits = Vec::new();
    for (period, value) in Period::ALL.into_iter().zip(written) {
        let Some(v) = value else { continue };
        let Some(limit) = positive_int(problems, cp.key(period.key()), period.key(), v) else {
            continue;
        };
        if let Some(prev) = limits.last().copied() {
            let PeriodLimit {
                period: p,
                limit: l,
            } = prev;
            if limit < l {
                push(
                    problems,
                    cp.key(period.key()),
                    format!(
                        "the limit per {} ({limit}) is lower than the limit per {} ({l})",
                        period.key(),
                        p.key()
                    ),
                );
            }
        }
        limits.push(PeriodLimit { period, limit });
    }
    if written.iter().all(Option::is_none) {
        push(
            problems,
            cp.clone(),
            "no limits set: set at least one of `second`, `minute`, `hour`, `day` (e.g. minute = 100)",
        );
    }
    limits
}

/// Token bucket from Traefik's (`average`/`period`/`burst`) or AWS's (`rate_limit`/`burst_limit`)
/// spelling; exactly one spelling.
fn token_bucket(
    c: &RawRateLimiting,
    cp: &KeyPath,
    problems: &mut Vec<Problem>,
) -> Option<BucketDef> {
    for period in Period::ALL {
        let set = match period {
            Period::Second => c.second.is_some(),
            Period::Minute => c.minute.is_some(),
            Period::Hour => c.hour.is_some(),
            Period::Day => c.day.is_some(),
        };
        if set {
            push(
                problems,
                cp.key(period.key()),
                format!(
                    "`{}` is a window limit; token_bucket takes average/period/burst or rate_limit/burst_limit",
                    period.key()
                ),
            );
        }
    }
    let traefik = c.average.is_some() || c.period.is_some() || c.burst.is_some();
    let aws = c.rate_limit.is_some() || c.burst_limit.is_some();
    match (traefik, aws) {
        (false, false) => {
            push(
                problems,
                cp.key("algorithm"),
                "token_bucket needs `average` (with optional `period` and `burst`) or `rate_limit` and `burst_limit`",
            );
            None
        }
        (true, true) => {
            let key = if c.rate_limit.is_some() {
                "rate_limit"
            } else {
                "burst_limit"
            };
            push(
                problems,
                cp.key(key),
                "use one token bucket spelling: average/period/burst or rate_limit/burst_limit, not both",
            );
            None
        }
        (true, false) => {
            let Some(avg) = c.average else {
                push(
                    problems,
                    cp.clone(),
                    "`average` (requests per `period`) is required with `period`/`burst`",
                );
                return None;
            };
            let average = positive_int(problems, cp.key("average"), "average", avg);
            let period = match c.period {
                None => Some(Duration::from_secs(1)),
                Some(d) if d.0.is_zero() => {
                    push(problems, cp.key("period"), "must be greater than zero");
                    None
                }
                Some(d) => Some(d.0),
            };
            let burst = match c.burst {
                None => Some(1),
                Some(b) => positive_int(problems, cp.key("burst"), "burst", b),
            };
            let rate_per_ms = average? as f64 / period?.as_millis() as f64;
            Some(BucketDef {
                rate_per_ms,
                burst: burst?,
            })
        }
        (false, true) => {
            let rate = match c.rate_limit {
                Some(r) if r.0.is_finite() && r.0 > 0.0 && r.0 <= 1e12 => Some(r.0),
                Some(r) => {
                    push(
                        problems,
                        cp.key("rate_limit"),
                        format!(
                            "rate_limit must be a positive number of requests per second, got {}",
                            r.0
                        ),
                    );
                    None
                }
                None => {
                    push(
                        problems,
                        cp.clone(),
                        "`rate_limit` (requests per second) is required with `burst_limit`",
                    );
                    None
                }
            };
            let burst = match c.burst_limit {
                Some(b) => positive_int(problems, cp.key("burst_limit"), "burst_limit", b),
                None => {
                    push(
                        problems,
                        cp.clone(),
                        "`burst_limit` (bucket size) is required with `rate_limit`",
                    );
                    None
                }
            };
            Some(BucketDef {
                rate_per_ms: rate? / 1000.0,
                burst: burst?,
            })
        }
    }
}

fn limit_by(c: &RawRateLimiting, cp: &KeyPath, problems: &mut Vec<Problem>) -> Option<LimitBy> {
    #[derive(Clone, Copy, PartialEq)]
    enum K {
        Ip,
        Consumer,
        Credential,
        Header,
        Path,
        Service,
        Route,
    }
    let kind = match &c.limit_by {
        None => Some(K::Consumer),
        Some(s) => one_of(
            problems,
            cp.key("limit_by"),
            s,
            &[
                ("ip", K::Ip),
                ("consumer", K::Consumer),
                ("credential", K::Credential),
                ("header", K::Header),
                ("path", K::Path),
                ("service", K::Service),
                ("route", K::Route),
            ],
        ),
    }?;
    match (kind, &c.header_name) {
        (K::Header, None) => {
            push(
                problems,
                cp.key("limit_by"),
                "limit_by = \"header\" needs `header_name` (e.g. header_name = \"X-Api-Key\")",
            );
            None
        }
        (K::Header, Some(h)) => match header_name(h) {
            Some(lower) => Some(LimitBy::Header(lower)),
            None => {
                push(
                    problems,
                    cp.key("header_name"),
                    format!("{h:?} is not a valid header name"),
                );
                None
            }
        },
        (_, Some(_)) => {
            push(
                problems,
                cp.key("header_name"),
                "`header_name` is only used with limit_by = \"header\"",
            );
            None
        }
        (K::Ip, None) => Some(LimitBy::Ip),
        (K::Consumer, None) => Some(LimitBy::Consumer),
        (K::Credential, None) => Some(LimitBy::Credential),
        (K::Path, None) => Some(LimitBy::Path),
        (K::Service, None) => Some(LimitBy::Service),
        (K::Route, None) => Some(LimitBy::Route),
    }
}

/// `policy`, `redis` and `on_redis_failure` together.
fn policy(
    c: &RawRateLimiting,
    cp: &KeyPath,
    base: &Path,
    problems: &mut Vec<Problem>,
) -> (Option<Policy>, RedisFailure) {
    let cluster = match &c.policy {
        None => Some(false),
        Some(p) => one_of(
            problems,
            cp.key("policy"),
            p,
            &[("local", false), ("cluster", true)],
        ),
    };
    let failure = match &c.on_redis_failure {
        None => Some(RedisFailure::Local),
        Some(f) => one_of(
            problems,
            cp.key("on_redis_failure"),
            f,
            &[
                ("open", RedisFailure::Open),
                ("closed", RedisFailure::Closed),
                ("local", RedisFailure::Local),
            ],
        ),
    }
    .unwrap_or(RedisFailure::Local);
    match cluster {
        Some(false) => {
            for (key, set) in [
                ("redis", c.redis.is_some()),
                ("on_redis_failure", c.on_redis_failure.is_some()),
            ] {
                if set {
                    push(
                        problems,
                        cp.key(key),
                        format!("`{key}` only applies to policy = \"cluster\""),
                    );
                }
            }
            (Some(Policy::Local), failure)
        }
        Some(true) => {
            let Some(r) = &c.redis else {
                push(
                    problems,
                    cp.key("policy"),
                    "policy = \"cluster\" needs redis = { url = \"redis://host:6379\" }",
                );
                return (None, failure);
            };
            (
                redis(r, &cp.key("redis"), base, problems).map(Policy::Cluster),
                failure,
            )
        }
        None => (None, failure),
    }
}

fn redis(
    r: &RawRedis,
    path: &KeyPath,
    base: &Path,
    problems: &mut Vec<Problem>,
) -> Option<RedisDef> {
    let before = problems.len();
    let tls_url = r.url.starts_with("rediss://");
    let rest = r
        .url
        .strip_prefix("redis://")
        .or_else(|| r.url.strip_prefix("rediss://"));
    let authority = rest.map(|s| s.split('/').next().unwrap_or_default());
    if r.url.contains('@') {
        // Not echoed: the url holds a password, and this message goes to logs and to the admin
        // API's reload answer.
        push(
            problems,
            path.key("url"),
            "credentials in the Redis url are not supported (the url shows up in messages): set `username` and `password` or `password_env` beside it",
        );
    } else if authority.is_none_or(str::is_empty) {
        push(
            problems,
            path.key("url"),
            format!(
                "{:?} is not a supported Redis url; expected \"redis://host:port[/db]\", or \"rediss://host:port[/db]\" for TLS",
                r.url
            ),
        );
    } else if r.url.contains('?') {
        // redis-rs ignores every query parameter but `protocol`, so `?password=…` would load
        // and then never authenticate (the limit quietly on `on_redis_failure`). Not echoed: it
        // may hold that password.
        push(
            problems,
            path.key("url"),
            "a Redis url takes no `?` query (the client would ignore it): set `username` and `password` or `password_env` beside the url",
        );
    } else if r.url.contains('#') {
        // redis-rs reads `#insecure` as "do not verify the certificate": not offered (set
        // `ca_file` for a private CA instead), and no other fragment means anything.
        push(
            problems,
            path.key("url"),
            "a Redis url takes no `#` fragment (certificate checks cannot be turned off: for a private CA, set `ca_file`)",
        );
    } else if let Err(e) = redis::Client::open(r.url.as_str()) {
        // Parsing only (no I/O): a url the client cannot use would otherwise be accepted here and
        // then fail every connection attempt at runtime, leaving the limit on `on_redis_failure`.
        push(
            problems,
            path.key("url"),
            format!(
                "{:?} is not a usable Redis url ({e}); expected \"redis://host:port[/db]\" (or rediss://) with a port 1..=65535 and a numeric db",
                r.url
            ),
        );
    }
    let timeout = match r.timeout {
        None => DEFAULT_REDIS_TIMEOUT,
        Some(d) if d.0.is_zero() || d.0 > Duration::from_secs(10) => {
            push(
                problems,
                path.key("timeout"),
                "must be between \"1ms\" and \"10s\"",
            );
            DEFAULT_REDIS_TIMEOUT
        }
        Some(d) => d.0,
    };
    let prefix = r.prefix.clone().unwrap_or_else(|| "ringgate".to_owned());
    if prefix.is_empty()
        || prefix.len() > 64
        || !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:{}".contains(&b))
    {
        push(
            problems,
            path.key("prefix"),
            "must be 1 to 64 letters, digits, '.', '_', '-', ':', '{' or '}'",
        );
    }
    let password = match (&r.password, &r.password_env) {
        (Some(_), Some(_)) => {
            push(
                problems,
                path.key("password_env"),
                "set `password` or `password_env`, not both",
            );
            None
        }
        (Some(p), None) => Some(p.0.clone()),
        (None, Some(var)) => match std::env::var(var) {
            Ok(p) => Some(p),
            Err(_) => {
                push(
                    problems,
                    path.key("password_env"),
                    format!("the environment variable {var:?} is not set (or not UTF-8)"),
                );
                None
            }
        },
        (None, None) => None,
    };
    if password.as_deref() == Some("") {
        let key = if r.password.is_some() {
            "password"
        } else {
            "password_env"
        };
        push(problems, path.key(key), "the password must not be empty");
    }
    if r.username.is_some() && password.is_none() && r.password_env.is_none() {
        push(
            problems,
            path.key("username"),
            "a Redis user needs `password` or `password_env`",
        );
    }
    let tls = if tls_url {
        redis_tls(r, path, base, problems)
    } else {
        for (key, set) in [
            ("ca_file", r.ca_file.is_some()),
            ("cert_file", r.cert_file.is_some()),
            ("key_file", r.key_file.is_some()),
        ] {
            if set {
                push(
                    problems,
                    path.key(key),
                    format!(
                        "`{key}` only applies to a TLS url: write it as \"rediss://host:port\""
                    ),
                );
            }
        }
        None
    };
    (problems.len() == before).then(|| RedisDef {
        url: r.url.clone(),
        timeout,
        prefix,
        username: r.username.clone(),
        password: password.map(crate::config::model::Secret),
        tls,
    })
}

/// The files of a `rediss://` connection, read and checked now: the CA certificates, and the
/// client certificate with its key (both or neither).
fn redis_tls(
    r: &RawRedis,
    path: &KeyPath,
    base: &Path,
    problems: &mut Vec<Problem>,
) -> Option<RedisTls> {
    let before = problems.len();
    // Each file is read once: the bytes kept are the ones checked.
    let ca_pem = r.ca_file.as_deref().and_then(|ca| {
        let file = base.join(ca);
        let (certs, pem) = super::tls::read_certs_pem(&file)
            .map_err(|e| push(problems, path.key("ca_file"), e))
            .ok()?;
        let mut roots = rustls::RootCertStore::empty();
        if roots.add_parsable_certificates(certs).0 == 0 {
            push(
                problems,
                path.key("ca_file"),
                format!("{}: no usable CA certificate in it", file.display()),
            );
            return None;
        }
        Some(pem)
    });
    let client = match (&r.cert_file, &r.key_file) {
        (None, None) => None,
        (Some(_), None) => {
            push(
                problems,
                path.key("key_file"),
                "`cert_file` needs `key_file`: the client certificate's private key",
            );
            None
        }
        (None, Some(_)) => {
            push(
                problems,
                path.key("cert_file"),
                "`key_file` needs `cert_file`: the client certificate it belongs to",
            );
            None
        }
        (Some(cert), Some(key)) => {
            let at = ["cert_file", "key_file"];
            let (_, [cert_pem, key_pem]) =
                super::tls::certified_key_pem(cert, key, at, path, base, problems)?;
            let key_pem = String::from_utf8(key_pem)
                .map_err(|_| {
                    push(
                        problems,
                        path.key("key_file"),
                        format!("{key}: not PEM text (not UTF-8)"),
                    )
                })
                .ok()?;
            Some((cert_pem, crate::config::model::Secret(key_pem)))
        }
    };
    (problems.len() == before).then_some(RedisTls { ca_pem, client })
}

/// Checks on the compiled chains: an `acl` on a route where no key-auth, basic-auth or jwt runs
/// can never pass (no consumer is ever identified: ip-restriction identifies none, forward-auth
/// only an `anonymous` fallback), so every request there would be a 401. Reported once per acl, naming the routes.
pub fn check_chains(cfg: &crate::config::model::Config, problems: &mut Vec<Problem>) {
    use crate::plugins::Plugin;
    let chains = crate::plugins::compile_chains(cfg);
    // Step -> its `[[plugins]]` index, once (chains hold steps).
    let index: HashMap<Plugin, usize> = crate::plugins::steps(cfg)
        .iter()
        .enumerate()
        .filter_map(|(i, s)| Some(((*s)?, i)))
        .collect();
    let mut stranded: Vec<(Plugin, Vec<&str>)> = Vec::new();
    for (r, chain) in chains.iter().enumerate() {
        // forward-auth identifies a consumer only as an `anonymous` fallback.
        let anonymous_fallback = |p: &Plugin| {
            index.get(p).and_then(|&i| cfg.plugins.get(i)).is_some_and(
                |def| matches!(&def.config, PluginConfig::ForwardAuth(f) if f.anonymous.is_some()),
            )
        };
        let identifies = chain.iter().any(|p| match p {
            Plugin::KeyAuth(_) | Plugin::BasicAuth(_) | Plugin::Jwt(_) => true,
            Plugin::ForwardAuth(_) => anonymous_fallback(p),
            _ => false,
        });
        if identifies {
            continue;
        }
        let name = cfg.routes.get(r).map_or("?", |route| route.name.as_str());
        for acl in chain.iter().filter(|p| matches!(p, Plugin::Acl(_))) {
            match stranded.iter_mut().find(|(p, _)| p == acl) {
                Some((_, routes)) => routes.push(name),
                None => stranded.push((*acl, vec![name])),
            }
        }
    }
    header_conflicts(cfg, &chains.routes, &index, problems);
    for (acl, routes) in stranded {
        let Some(&i) = index.get(&acl) else {
            continue;
        };
        let shown: Vec<String> = routes.iter().take(5).map(|r| format!("{r:?}")).collect();
        let more = routes.len().saturating_sub(5);
        push(
            problems,
            KeyPath::root().key("plugins").index(i).key("name"),
            format!(
                "acl can never pass on route{} {}{}: no key-auth, basic-auth or jwt runs there to identify a consumer (forward-auth and ip-restriction identify none), so every request would be a 401; add an auth plugin or disable acl there",
                if routes.len() == 1 { "" } else { "s" },
                shown.join(", "),
                if more > 0 { format!(" and {more} more") } else { String::new() },
            ),
        );
    }
}

/// A transformer that writes a header another plugin of the same chain owns: the correlation id
/// (the upstream and the client would get two ids, which the README promises they never do), or,
/// on the response side beside cors, an `Access-Control-*` field (two `-Allow-Origin` values,
/// which browsers refuse, or a policy wider than the cors plugin's). Transformers do not see the
/// lines plugins add, so the two would go out side by side. Reported once per transformer.
/// Route chains only: consumers carry none of these plugins (`CONSUMER_SCOPED`).
fn header_conflicts(
    cfg: &crate::config::model::Config,
    routes: &[Box<[crate::plugins::Plugin]>],
    index: &HashMap<crate::plugins::Plugin, usize>,
    problems: &mut Vec<Problem>,
) {
    use crate::config::model::TransformDef;
    use crate::plugins::Plugin;
    let def_of = |p: &Plugin| {
        let &i = index.get(p)?;
        Some((i, cfg.plugins.get(i)?))
    };
    // Names a transformer writes (add, append, replace and rename targets), with their list.
    let written = |t: &TransformDef| -> Vec<(&'static str, String)> {
        let h = &t.headers;
        let named = |list: &'static str, v: &[(String, String)]| -> Vec<(&'static str, String)> {
            v.iter().map(|(n, _)| (list, n.clone())).collect()
        };
        let mut out = named("add", &h.add);
        out.extend(named("append", &h.append));
        out.extend(named("replace", &h.replace));
        out.extend(h.rename.iter().map(|(_, to)| ("rename", to.clone())));
        out
    };
    let mut reported: Vec<usize> = Vec::new();
    for chain in routes {
        // The id header, and whether it is echoed to the client too.
        let ids: Vec<(&str, bool)> = chain
            .iter()
            .filter_map(|p| match def_of(p).map(|(_, d)| &d.config) {
                Some(PluginConfig::CorrelationId(c)) => {
                    Some((c.header_name.as_str(), c.echo_downstream))
                }
                _ => None,
            })
            .collect();
        let cors = chain.iter().any(|p| matches!(p, Plugin::Cors(_)));
        for p in chain.iter() {
            let Some((i, def)) = def_of(p) else { continue };
            let (t, response) = match &def.config {
                PluginConfig::RequestTransformer(t) => (t, false),
                PluginConfig::ResponseTransformer(t) => (t, true),
                _ => continue,
            };
            if reported.contains(&i) {
                continue;
            }
            for (list, name) in written(t) {
                // Response side: a conflict only when correlation-id echoes the id.
                let owned_id = ids
                    .iter()
                    .any(|&(id, echoed)| id.eq_ignore_ascii_case(&name) && (echoed || !response));
                let why = if owned_id {
                    format!("writes {name:?}, the header correlation-id sets on this route: the {} would get two ids; leave the id to correlation-id", if response { "client" } else { "upstream" })
                } else if response && cors && crate::plugins::cors::owned(name.as_bytes()) {
                    format!("writes {name:?} beside the cors plugin on this route: Access-Control-* fields are the cors plugin's (two values make browsers refuse the response); set them in its config")
                } else {
                    continue;
                };
                reported.push(i);
                push(
                    problems,
                    super::plugin_config_key(i, list).key("headers"),
                    why,
                );
                break;
            }
        }
    }
}
