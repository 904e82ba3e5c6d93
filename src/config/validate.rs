//! Raw structs -> `model::Config`: defaults, ranges, names, references, address resolution.
//!
//! Runs on whatever `decode` produced, even when some elements failed, so that every independent
//! problem is reported in one run. Invariant: `compile` returns a `Config` only when it recorded no
//! problem; then every index in it is in bounds (named upstreams keep their file order, the anonymous
//! upstreams of `url` services follow in service order).

mod access_log;
pub mod acme;
mod auth;
mod compression;
mod consumers;
mod edge;
mod entities;
mod health;
mod observe;
mod plugins;
mod routes;
mod server;
mod termination;
mod tls;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use super::decode::Decoded;
use super::locate::{KeyPath, Problem};
use super::model::Config;
use super::raw::Dur;

/// The shortest `admin.token` accepted on an admin listener that is not loopback: beyond this host
/// the token is all that guards `/reload`.
pub const MIN_PUBLIC_TOKEN: usize = 16;

/// Records a problem at `path`.
fn push(problems: &mut Vec<Problem>, path: KeyPath, message: impl Into<String>) {
    problems.push(Problem::at(path, message));
}

/// Matches `value` against `(spelling, result)` pairs; reports the allowed spellings otherwise.
fn one_of<T: Copy>(
    problems: &mut Vec<Problem>,
    path: KeyPath,
    value: &str,
    options: &[(&str, T)],
) -> Option<T> {
    if let Some((_, v)) = options.iter().find(|(s, _)| *s == value) {
        return Some(*v);
    }
    let allowed: Vec<String> = options.iter().map(|(s, _)| format!("{s:?}")).collect();
    push(
        problems,
        path,
        format!(
            "{value:?} is not valid; expected one of {}",
            allowed.join(", ")
        ),
    );
    None
}

/// A duration that must be > 0 (all but `keepalive`, where 0 disables keep-alive); `default` when
/// absent, and also when invalid so compilation can go on.
fn positive(
    problems: &mut Vec<Problem>,
    path: KeyPath,
    value: Option<Dur>,
    default: Duration,
) -> Duration {
    match value {
        Some(Dur(v)) if v.is_zero() => {
            push(problems, path, "must be greater than zero (e.g. \"5s\")");
            default
        }
        Some(Dur(v)) => v,
        None => default,
    }
}

/// Checks an integer against an inclusive range; the message names the range.
fn in_range(
    problems: &mut Vec<Problem>,
    path: KeyPath,
    what: &str,
    value: i64,
    min: i64,
    max: i64,
) -> Option<i64> {
    if (min..=max).contains(&value) {
        Some(value)
    } else {
        push(
            problems,
            path,
            format!("{what} must be {min}..={max}, got {value}"),
        );
        None
    }
}

/// Entity names: letters, digits, `.`, `_`, `-`, `~` (so they never contain the ':' of the
/// reserved `service:<name>` upstreams, and print cleanly in logs).
pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-~".contains(&b))
}

/// Checks names of one entity kind; returns name -> array index of its first definition.
fn index_names<'a>(
    problems: &mut Vec<Problem>,
    kind: &str,
    array: &str,
    names: impl Iterator<Item = (usize, &'a str)>,
) -> HashMap<String, usize> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, name) in names {
        let path = KeyPath::root().key(array).index(i).key("name");
        if !valid_name(name) {
            push(
                problems,
                path,
                format!(
                    "{name:?} is not a valid {kind} name: use 1 to 128 letters, digits, '.', '_', '-' or '~'"
                ),
            );
        } else if let Some(first) = seen.get(name) {
            push(
                problems,
                path,
                format!("duplicate {kind} name {name:?}: already used by {array}[{first}]"),
            );
        } else {
            seen.insert(name.to_owned(), i);
        }
    }
    seen
}

/// "a, b, c" for messages listing what exists.
fn known(names: &HashMap<String, usize>) -> String {
    let mut v: Vec<(&usize, &String)> = names.iter().map(|(n, i)| (i, n)).collect();
    v.sort();
    if v.is_empty() {
        return "none are defined".to_owned();
    }
    let list: Vec<String> = v.iter().map(|(_, n)| format!("{n:?}")).collect();
    format!("defined: {}", list.join(", "))
}

pub use plugins::check_chains;

/// `plugins[i].config.<key>`, for checks that need the whole config.
fn plugin_config_key(i: usize, key: &str) -> KeyPath {
    KeyPath::root()
        .key("plugins")
        .index(i)
        .key("config")
        .key(key)
}

/// Compiles the decoded file; `None` when any problem was recorded (by `decode` or here).
pub fn compile(decoded: &Decoded, source: PathBuf, problems: &mut Vec<Problem>) -> Option<Config> {
    let server = server::compile(decoded.server.as_ref(), problems);
    // Relative file paths (certificates, CA files, key files, the access log, the histogram file)
    // are relative to the config file's directory, as nginx's are to its prefix: the meaning of a
    // config never depends on where the process was started from.
    let base = source
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    // A broken [acme] was reported: `acme = true` entries get no second "needs [acme]" problem.
    let acme_path = KeyPath::root().key("acme");
    let acme_broken = problems.iter().any(|p| p.path.0.starts_with(&acme_path.0));
    let (certificates, acme_certificates) = tls::certificates(
        &decoded.certificates,
        &base,
        decoded.acme.is_some() || acme_broken,
        decoded
            .acme
            .as_ref()
            .is_some_and(|a| a.challenge.as_deref() == Some("dns-01")),
        problems,
    );
    tls::check_listeners(
        &server.listeners,
        certificates.len() + acme_certificates.len(),
        problems,
    );
    let acme = acme::compile(decoded.acme.as_ref(), &base, &server.listeners, problems);
    let mut client_tls = tls::ClientConfigs::new(base.clone());
    let admin = observe::admin(decoded.admin.as_ref(), &server.listen, problems);
    let metrics = observe::metrics(decoded.metrics.as_ref(), &base, problems);
    let access_log = access_log::compile(decoded.access_log.as_ref(), &base, problems);
    let (mut upstreams, upstream_names) =
        entities::upstreams(&decoded.upstreams, &mut client_tls, problems);
    let (services, service_names) = entities::services(
        &decoded.services,
        &upstream_names,
        &decoded.broken_upstreams,
        &server.timeouts,
        &mut upstreams,
        &mut client_tls,
        problems,
    );
    let routes = routes::compile(
        &decoded.routes,
        &service_names,
        &decoded.broken_services,
        problems,
    );
    let routes_path = KeyPath::root().key("routes");
    // Also quiet when a top-level key was refused: `[[route]]` is the cause to show, not the
    // missing `[[routes]]` it leaves.
    let routes_broken = problems
        .iter()
        .any(|p| p.path.0.starts_with(&routes_path.0) || p.path.0.len() == 1);
    if decoded.routes.is_empty() && !routes_broken {
        // Every request would be a 404. Nobody means that: the likely cause is a file cut short by
        // a rewrite (its [server] part written, its routes not yet), which a reload must not take.
        problems.push(Problem {
            span: Some(0..0),
            ..Problem::at(
                routes_path,
                "the config defines no [[routes]], so every request would get a 404; define at least one route (a file cut short while being rewritten looks like this)",
            )
        });
    }
    let mut route_names: HashMap<String, usize> = HashMap::new();
    for (i, r) in decoded.routes.iter().enumerate() {
        if let Some(r) = r {
            route_names.entry(r.name.clone()).or_insert(i);
        }
    }
    let plugin_refs = plugins::Refs {
        services: &service_names,
        broken_services: &decoded.broken_services,
        routes: &route_names,
        broken_routes: &decoded.broken_routes,
    };
    let consumers::Compiled {
        mut consumers,
        mut names,
        credentials,
    } = consumers::compile(&decoded.consumers, &base, problems);
    let mut ctx = auth::Ctx {
        consumers: &mut consumers,
        names: &mut names,
        broken: &decoded.broken_consumers,
        base: &base,
    };
    let plugins = plugins::compile(&decoded.plugins, &plugin_refs, &mut ctx, problems);
    // An htpasswd user that is also a consumer's basic-auth credential would be one username
    // with two passwords, the htpasswd one silently winning on that instance.
    for (i, p) in plugins.iter().enumerate() {
        if let Some(crate::config::model::PluginConfig::BasicAuth(def)) =
            p.as_ref().map(|p| &p.config)
        {
            for h in &def.htpasswd {
                if let Some(c) = credentials.basic.iter().find(|c| c.username == h.username) {
                    let owner = consumers
                        .get(c.consumer)
                        .and_then(Option::as_ref)
                        .map_or("?", |c| c.username.as_str());
                    push(
                        problems,
                        plugin_config_key(i, "htpasswd_file"),
                        format!(
                            "user {:?} is also a basicauth_credentials username (consumer {owner:?}): one username with two passwords; keep one of them",
                            h.username
                        ),
                    );
                }
            }
        }
    }
    // A jwt plugin with `secret_is_base64` needs every HS secret to be base64.
    for (i, p) in plugins.iter().enumerate() {
        if let Some(crate::config::model::PluginConfig::Jwt(def)) = p.as_ref().map(|p| &p.config) {
            if def.secret_is_base64 {
                for (cred, e) in crate::auth::set::jwt_store(&credentials.jwt, true).1 {
                    push(
                        problems,
                        plugin_config_key(i, "secret_is_base64"),
                        format!("{cred}: {e}"),
                    );
                }
            }
        }
    }
    if !problems.is_empty() {
        return None;
    }
    Some(Config {
        source,
        server,
        upstreams: upstreams.into_iter().collect::<Option<Vec<_>>>()?,
        services: services.into_iter().collect::<Option<Vec<_>>>()?,
        routes: routes.into_iter().collect::<Option<Vec<_>>>()?,
        certificates: certificates.into_iter().collect::<Option<Vec<_>>>()?,
        acme_certificates,
        acme,
        admin,
        metrics,
        access_log,
        plugins: plugins.into_iter().collect::<Option<Vec<_>>>()?,
        consumers: consumers.into_iter().collect::<Option<Vec<_>>>()?,
        credentials,
    })
}
