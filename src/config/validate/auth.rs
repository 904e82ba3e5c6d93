//! The auth plugins' configs (`key-auth`, `basic-auth`, `jwt`, `acl`, `ip-restriction`,
//! `forward-auth`), and CIDR lists (also used by `[server] trusted_proxies`).
//!
//! Defaults follow Kong (key names `apikey`, key claim `iss`, preflight authenticated) and Traefik's
//! forwardAuth; each default is documented in the README's auth section.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::consumers::{check_password_hash, header_safe, lookup};
use super::{in_range, push};
use crate::auth::forward::ForwardAuthDef;
use crate::config::locate::{KeyPath, Problem};
use crate::config::model::{
    AclDef, BasicAuthDef, BasicCredentialDef, Cidr, ConsumerDef, ForwardAuthConf, IpRestrictionDef,
    JwtDef, KeyAuthDef,
};
use crate::config::net;
use crate::config::raw::auth::{
    RawAcl, RawBasicAuth, RawForwardAuth, RawIpRestriction, RawJwt, RawKeyAuth,
};
use crate::config::raw::Int;

pub const DEFAULT_REALM: &str = "ringgate";
const DEFAULT_CACHE: i64 = 10_000;
/// Caches are allocated when a config generation is installed; keep them a sane size.
const MAX_CACHE: i64 = 1_000_000;
const DEFAULT_MAX_TOKEN: i64 = 8192;

/// What auth plugin configs may reference, and where htpasswd users become consumers.
pub struct Ctx<'a> {
    pub consumers: &'a mut Vec<Option<ConsumerDef>>,
    pub names: &'a mut HashMap<String, usize>,
    pub broken: &'a HashSet<String>,
    /// The config file's directory (relative file paths).
    pub base: &'a Path,
}

/// Parses `10.0.0.0/8`, `::1`, `192.168.1.7` (a bare address is a single-host network).
pub fn cidrs(list: &[String], path: &KeyPath, problems: &mut Vec<Problem>) -> Vec<Cidr> {
    list.iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let parsed = s
                .parse::<Cidr>()
                .ok()
                .or_else(|| s.parse::<std::net::IpAddr>().ok().map(Cidr::from));
            if parsed.is_none() {
                push(
                    problems,
                    path.index(i),
                    format!("{s:?} is not an IP address or CIDR block (e.g. \"10.0.0.0/8\", \"2001:db8::/32\")"),
                );
            }
            // `trunc` normalizes 10.1.2.3/8 to 10.0.0.0/8 (matching is the same either way). An
            // IPv4-mapped block (`::ffff:10.0.0.0/104`) is the IPv4 one: clients' mapped
            // addresses are compared as IPv4, so as written it could never match.
            parsed.map(|n| match n {
                Cidr::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
                    Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                        .map_or(n, Cidr::V4)
                        .trunc(),
                    None => n.trunc(),
                },
                _ => n.trunc(),
            })
        })
        .collect()
}

fn anonymous(
    ctx: &Ctx<'_>,
    raw: Option<&String>,
    p: &KeyPath,
    problems: &mut Vec<Problem>,
) -> Option<Option<usize>> {
    match raw {
        None => Some(None),
        Some(name) => lookup(problems, p.key("anonymous"), name, ctx.names, ctx.broken).map(Some),
    }
}

fn realm(raw: Option<&String>, p: &KeyPath, problems: &mut Vec<Problem>) -> Option<String> {
    let r = raw.map_or(DEFAULT_REALM, String::as_str);
    // Goes into a quoted-string of WWW-Authenticate.
    if r.is_empty()
        || r.len() > 128
        || !r
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
    {
        push(
            problems,
            p.key("realm"),
            "a realm is 1 to 128 printable ASCII characters, without '\"' or '\\'",
        );
        return None;
    }
    Some(r.to_owned())
}

fn header_names(list: &[String], p: &KeyPath, problems: &mut Vec<Problem>) -> Vec<String> {
    list.iter()
        .enumerate()
        .filter_map(|(i, n)| {
            if !super::plugins::is_token(n) {
                push(
                    problems,
                    p.index(i),
                    format!("{n:?} is not a valid name (letters, digits and -_.!#$%&'*+^`|~)"),
                );
                return None;
            }
            Some(n.clone())
        })
        .collect()
}

/// Header names a credential must not be read from: ones the access log records (the key would
/// be written to it) and ones the gateway sets or replaces itself (the identity headers, the
/// `X-Forwarded-*` family, framing), where the upstream would see the gateway's value or the key.
const NOT_CREDENTIAL_HEADERS: &[&str] = &[
    "x-request-id",
    "user-agent",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "x-consumer-id",
    "x-consumer-username",
    "x-consumer-custom-id",
    "x-consumer-groups",
    "x-credential-identifier",
    "x-anonymous-consumer",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-real-ip",
];

/// Refuses credential header names in `NOT_CREDENTIAL_HEADERS`.
fn credential_headers(list: &[String], p: &KeyPath, problems: &mut Vec<Problem>) {
    for (i, n) in list.iter().enumerate() {
        if NOT_CREDENTIAL_HEADERS
            .iter()
            .any(|h| n.eq_ignore_ascii_case(h))
        {
            let why = if n.eq_ignore_ascii_case("x-request-id")
                || n.eq_ignore_ascii_case("user-agent")
            {
                "the access log records it, so every key would be written there"
            } else {
                "the gateway sets or replaces it, so the upstream would not see what the client sent"
            };
            push(
                problems,
                p.index(i),
                format!("{n:?} cannot carry credentials: {why}"),
            );
        }
    }
}

fn cache_size(raw: Option<Int>, p: &KeyPath, problems: &mut Vec<Problem>) -> usize {
    raw.map_or(Some(DEFAULT_CACHE), |n| {
        in_range(
            problems,
            p.key("cache_size"),
            "cache_size",
            n.0,
            0,
            MAX_CACHE,
        )
    })
    .and_then(|n| usize::try_from(n).ok())
    .unwrap_or(0)
}

pub fn key_auth(
    raw: Option<&RawKeyAuth>,
    p: &KeyPath,
    ctx: &Ctx<'_>,
    problems: &mut Vec<Problem>,
) -> Option<KeyAuthDef> {
    let d = RawKeyAuth::default();
    let c = raw.unwrap_or(&d);
    let cp = p.key("config");
    let names = c
        .key_names
        .clone()
        .unwrap_or_else(|| vec!["apikey".to_owned()]);
    if names.is_empty() {
        push(
            problems,
            cp.key("key_names"),
            "needs at least one name (default [\"apikey\"])",
        );
    }
    let key_names = header_names(&names, &cp.key("key_names"), problems);
    let in_header = c.key_in_header.unwrap_or(true);
    if in_header {
        credential_headers(&key_names, &cp.key("key_names"), problems);
    }
    let in_query = c.key_in_query.unwrap_or(true);
    if !in_header && !in_query {
        push(
            problems,
            cp.key("key_in_query"),
            "key_in_header and key_in_query are both false: no key could ever be found",
        );
    }
    Some(KeyAuthDef {
        key_names,
        in_header,
        in_query,
        hide_credentials: c.hide_credentials.unwrap_or(false),
        anonymous: anonymous(ctx, c.anonymous.as_ref(), &cp, problems)?,
        realm: realm(c.realm.as_ref(), &cp, problems)?,
        run_on_preflight: c.run_on_preflight.unwrap_or(true),
    })
}

pub fn basic_auth(
    raw: Option<&RawBasicAuth>,
    p: &KeyPath,
    ctx: &mut Ctx<'_>,
    problems: &mut Vec<Problem>,
) -> Option<BasicAuthDef> {
    let d = RawBasicAuth::default();
    let c = raw.unwrap_or(&d);
    let cp = p.key("config");
    let mut htpasswd = Vec::new();
    if let Some(file) = &c.htpasswd_file {
        let path = ctx.base.join(file);
        let text = crate::config::read_file(&path).and_then(|b| {
            String::from_utf8(b).map_err(|_| std::io::Error::other("it is not UTF-8 text"))
        });
        match text {
            Err(e) => push(
                problems,
                cp.key("htpasswd_file"),
                format!("cannot read {}: {e}", path.display()),
            ),
            Ok(text) => {
                // user -> its line: Apache takes the first of two lines for one user, a map the
                // last, so a duplicate is refused rather than silently picking one password.
                let mut lines_of: std::collections::HashMap<String, usize> = Default::default();
                for (n, line) in text.lines().enumerate() {
                    let line = line.trim();
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    let Some((user, hash)) = line.split_once(':') else {
                        push(
                            problems,
                            cp.key("htpasswd_file"),
                            format!("{}:{}: expected `user:hash`", path.display(), n + 1),
                        );
                        continue;
                    };
                    if let Err(why) = check_password_hash(hash) {
                        push(
                            problems,
                            cp.key("htpasswd_file"),
                            format!("{}:{} (user {user:?}): {why}", path.display(), n + 1),
                        );
                        continue;
                    }
                    if !header_safe(user) {
                        push(
                            problems,
                            cp.key("htpasswd_file"),
                            format!(
                                "{}:{}: {user:?} is not a valid user name (visible ASCII, no ',')",
                                path.display(),
                                n + 1
                            ),
                        );
                        continue;
                    }
                    let first = *lines_of.entry(user.to_owned()).or_insert(n + 1);
                    if first != n + 1 {
                        push(
                            problems,
                            cp.key("htpasswd_file"),
                            format!(
                                "{}:{}: user {user:?} is already defined at line {first}; keep one of them",
                                path.display(),
                                n + 1
                            ),
                        );
                        continue;
                    }
                    // The user is the consumer of the same username, or a consumer of its own.
                    let consumer = match ctx.names.get(user) {
                        Some(&i) => i,
                        None if ctx.consumers.iter().flatten().any(|c| c.id == user) => {
                            push(problems, cp.key("htpasswd_file"), format!("{}:{}: user {user:?} would be a consumer whose id clashes with another consumer's id", path.display(), n + 1));
                            continue;
                        }
                        None => {
                            let i = ctx.consumers.len();
                            ctx.consumers.push(Some(ConsumerDef {
                                username: user.to_owned(),
                                id: user.to_owned(),
                                custom_id: None,
                                groups: Vec::new(),
                            }));
                            ctx.names.insert(user.to_owned(), i);
                            i
                        }
                    };
                    htpasswd.push(BasicCredentialDef {
                        consumer,
                        username: user.to_owned(),
                        hash: hash.to_owned(),
                    });
                }
            }
        }
    }
    Some(BasicAuthDef {
        hide_credentials: c.hide_credentials.unwrap_or(false),
        anonymous: anonymous(ctx, c.anonymous.as_ref(), &cp, problems)?,
        realm: realm(c.realm.as_ref(), &cp, problems)?,
        htpasswd,
        cache_size: cache_size(c.cache_size, &cp, problems),
        run_on_preflight: c.run_on_preflight.unwrap_or(true),
    })
}

pub fn jwt(
    raw: Option<&RawJwt>,
    p: &KeyPath,
    ctx: &Ctx<'_>,
    problems: &mut Vec<Problem>,
) -> Option<JwtDef> {
    let d = RawJwt::default();
    let c = raw.unwrap_or(&d);
    let cp = p.key("config");
    let header_list = c
        .header_names
        .clone()
        .unwrap_or_else(|| vec!["authorization".to_owned()]);
    let header_names: Vec<String> = header_names(&header_list, &cp.key("header_names"), problems)
        .into_iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    credential_headers(&header_names, &cp.key("header_names"), problems);
    let uri_param_names = header_names_or(
        c.uri_param_names.as_ref(),
        &["jwt"],
        &cp.key("uri_param_names"),
        problems,
    );
    let cookie_names = header_names_or(
        c.cookie_names.as_ref(),
        &[],
        &cp.key("cookie_names"),
        problems,
    );
    let mut verify_exp = false;
    let mut verify_nbf = false;
    for (i, claim) in c.claims_to_verify.iter().flatten().enumerate() {
        match claim.as_str() {
            "exp" => verify_exp = true,
            "nbf" => verify_nbf = true,
            other => push(
                problems,
                cp.key("claims_to_verify").index(i),
                format!("{other:?} cannot be verified; expected \"exp\" or \"nbf\""),
            ),
        }
    }
    let maximum_expiration = match c.maximum_expiration {
        None | Some(Int(0)) => None,
        Some(n) => in_range(
            problems,
            cp.key("maximum_expiration"),
            "maximum_expiration (seconds)",
            n.0,
            0,
            31_536_000,
        )
        .and_then(|n| u64::try_from(n).ok()),
    };
    if maximum_expiration.is_some() && !verify_exp {
        push(
            problems,
            cp.key("maximum_expiration"),
            "needs claims_to_verify = [\"exp\"] (a token without exp would never expire)",
        );
    }
    let leeway_seconds = c
        .leeway_seconds
        .map_or(Some(0), |n| {
            in_range(
                problems,
                cp.key("leeway_seconds"),
                "leeway_seconds",
                n.0,
                0,
                3600,
            )
        })
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0);
    let key_claim_name = c.key_claim_name.clone().unwrap_or_else(|| "iss".to_owned());
    if key_claim_name.is_empty() || key_claim_name.len() > 128 {
        push(
            problems,
            cp.key("key_claim_name"),
            "must be 1 to 128 characters",
        );
    }
    let max_token_bytes = c
        .max_token_bytes
        .map_or(Some(DEFAULT_MAX_TOKEN), |n| {
            in_range(
                problems,
                cp.key("max_token_bytes"),
                "max_token_bytes",
                n.0,
                64,
                65_536,
            )
        })
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(0);
    if header_names.is_empty() && uri_param_names.is_empty() && cookie_names.is_empty() {
        push(problems, cp.clone(), "header_names, uri_param_names and cookie_names are all empty: no token could ever be found");
    }
    Some(JwtDef {
        header_names,
        uri_param_names,
        cookie_names,
        verify_exp,
        verify_nbf,
        key_claim_name,
        secret_is_base64: c.secret_is_base64.unwrap_or(false),
        maximum_expiration,
        leeway_seconds,
        issuer: c.issuer.clone().unwrap_or_default(),
        audience: c.audience.clone().unwrap_or_default(),
        max_token_bytes,
        cache_size: cache_size(c.cache_size, &cp, problems),
        anonymous: anonymous(ctx, c.anonymous.as_ref(), &cp, problems)?,
        run_on_preflight: c.run_on_preflight.unwrap_or(true),
    })
}

fn header_names_or(
    raw: Option<&Vec<String>>,
    default: &[&str],
    p: &KeyPath,
    problems: &mut Vec<Problem>,
) -> Vec<String> {
    match raw {
        Some(list) => header_names(list, p, problems),
        None => default.iter().map(|s| (*s).to_owned()).collect(),
    }
}

pub fn acl(raw: Option<&RawAcl>, p: &KeyPath, problems: &mut Vec<Problem>) -> Option<AclDef> {
    let cp = p.key("config");
    let Some(c) = raw else {
        push(problems, p.clone(), "acl needs a config with `allow` or `deny` groups, e.g. config = { allow = [\"admins\"] }");
        return None;
    };
    let (groups, deny) = match (&c.allow, &c.deny) {
        (Some(_), Some(_)) => {
            push(
                problems,
                cp.key("deny"),
                "set either `allow` or `deny`, not both",
            );
            return None;
        }
        (Some(g), None) => (g, false),
        (None, Some(g)) => (g, true),
        (None, None) => {
            push(
                problems,
                cp,
                "needs `allow` or `deny` (a list of consumer groups)",
            );
            return None;
        }
    };
    let key = if deny { "deny" } else { "allow" };
    if groups.is_empty() {
        push(problems, cp.key(key), "needs at least one group");
        return None;
    }
    // Consumer groups are `header_safe`; any other name could never match a consumer, so an
    // allow list would refuse everyone and a deny list would refuse no one.
    let before = problems.len();
    for (i, g) in groups.iter().enumerate() {
        if !header_safe(g) {
            push(
                problems,
                cp.key(key).index(i),
                format!("{g:?} can never match a consumer group: group names are 1 to 256 visible ASCII characters, without spaces or commas"),
            );
        }
    }
    if problems.len() != before {
        return None;
    }
    Some(AclDef {
        groups: groups.clone(),
        deny,
    })
}

pub fn ip_restriction(
    raw: Option<&RawIpRestriction>,
    p: &KeyPath,
    problems: &mut Vec<Problem>,
) -> Option<IpRestrictionDef> {
    let cp = p.key("config");
    let Some(c) = raw else {
        push(problems, p.clone(), "ip-restriction needs a config with `allow` and/or `deny`, e.g. config = { deny = [\"10.0.0.0/8\"] }");
        return None;
    };
    if c.allow.as_ref().is_none_or(Vec::is_empty) && c.deny.as_ref().is_none_or(Vec::is_empty) {
        push(
            problems,
            cp.clone(),
            "needs a non-empty `allow` or `deny` list",
        );
        return None;
    }
    let status = c
        .status
        .map_or(Some(403), |s| {
            in_range(problems, cp.key("status"), "status", s.0, 400, 599)
        })
        .and_then(|s| u16::try_from(s).ok())?;
    let message = c
        .message
        .clone()
        .unwrap_or_else(|| "Your IP address is not allowed".to_owned());
    Some(IpRestrictionDef {
        allow: cidrs(
            c.allow.as_deref().unwrap_or_default(),
            &cp.key("allow"),
            problems,
        ),
        deny: cidrs(
            c.deny.as_deref().unwrap_or_default(),
            &cp.key("deny"),
            problems,
        ),
        status,
        message,
    })
}

pub fn forward_auth(
    raw: Option<&RawForwardAuth>,
    p: &KeyPath,
    ctx: &Ctx<'_>,
    problems: &mut Vec<Problem>,
) -> Option<ForwardAuthConf> {
    let cp = p.key("config");
    let Some(c) = raw else {
        push(problems, p.clone(), "forward-auth needs a config with `address`, e.g. config = { address = \"http://127.0.0.1:9000/auth\" }");
        return None;
    };
    let Some(address) = &c.address else {
        push(
            problems,
            cp,
            "needs `address` (e.g. \"http://127.0.0.1:9000/auth\")",
        );
        return None;
    };
    let url = match net::parse_url(address) {
        Ok(u) => u,
        Err(e) => {
            push(problems, cp.key("address"), e);
            return None;
        }
    };
    if url.tls {
        push(problems, cp.key("address"), "https:// auth services are not supported yet; use http:// on a trusted network or loopback");
        return None;
    }
    let addr = match net::resolve(&url.host, url.port) {
        Ok(a) => a,
        Err(e) => {
            push(problems, cp.key("address"), e);
            return None;
        }
    };
    let lower = |v: Option<&Vec<String>>, key: &str, problems: &mut Vec<Problem>| -> Vec<String> {
        header_names(v.map_or(&[][..], Vec::as_slice), &cp.key(key), problems)
            .into_iter()
            .map(|s| s.to_ascii_lowercase())
            .collect()
    };
    let request_headers = lower(c.request_headers.as_ref(), "request_headers", problems);
    let response_headers = lower(c.response_headers.as_ref(), "response_headers", problems);
    let status = |v: Option<Int>, key: &str, default: i64, problems: &mut Vec<Problem>| {
        v.map_or(Some(default), |s| {
            in_range(problems, cp.key(key), key, s.0, 500, 599)
        })
        .and_then(|s| u16::try_from(s).ok())
    };
    let unavailable_status = status(c.unavailable_status, "unavailable_status", 502, problems)?;
    let timeout_status = status(c.timeout_status, "timeout_status", 504, problems)?;
    let timeout = match c.timeout {
        Some(d) if d.0.is_zero() => {
            push(problems, cp.key("timeout"), "must be greater than zero");
            return None;
        }
        Some(d) => d.0,
        None => std::time::Duration::from_secs(5),
    };
    let def = ForwardAuthDef {
        addr,
        host: url.authority(),
        path: if url.path.is_empty() {
            "/".to_owned()
        } else {
            url.path
        },
        request_headers,
        response_headers,
        timeout,
        max_body: crate::auth::forward::DEFAULT_MAX_BODY,
    };
    if let Err(e) = def.validate() {
        push(problems, cp, e);
        return None;
    }
    Some(ForwardAuthConf {
        def,
        anonymous: anonymous(ctx, c.anonymous.as_ref(), &cp, problems)?,
        fail_open: c.fail_open.unwrap_or(false),
        unavailable_status,
        timeout_status,
    })
}
