//! `[[routes]]`: names, the service reference, and the matchers (via `config::matchers`).
//!
//! Invariants: a compiled route has at least one matcher (hosts, paths, methods, headers or query),
//! its service index is in bounds, and header names are unique per route (case-insensitively).

use std::collections::{HashMap, HashSet};

use super::{index_names, known, push};
use crate::config::locate::{KeyPath, Problem};
use crate::config::matchers;
use crate::config::model::{HeaderMatch, QueryMatch, RouteDef, ValueMatch};
use crate::config::net;
use crate::config::raw::{MatchValues, OrderedMap, RawRoute};

pub fn compile(
    raw: &[Option<RawRoute>],
    service_names: &HashMap<String, usize>,
    broken_services: &HashSet<String>,
    problems: &mut Vec<Problem>,
) -> Vec<Option<RouteDef>> {
    index_names(
        problems,
        "route",
        "routes",
        raw.iter()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().map(|r| (i, r.name.as_str()))),
    );
    let base = KeyPath::root().key("routes");
    raw.iter()
        .enumerate()
        .map(|(i, r)| {
            let r = r.as_ref()?;
            let path = base.index(i);
            let service = match service_names.get(&r.service) {
                Some(&s) => Some(s),
                None => {
                    if !broken_services.contains(&r.service) {
                        push(
                            problems,
                            path.key("service"),
                            format!(
                                "no service named {:?} ({})",
                                r.service,
                                known(service_names)
                            ),
                        );
                    }
                    None
                }
            };
            let route = route(r, &path, problems);
            Some(RouteDef {
                service: service?,
                ..route
            })
        })
        .collect()
}

/// Applies `f` to each element of an optional list, recording its error at `key[i]`.
fn each<T>(
    problems: &mut Vec<Problem>,
    path: &KeyPath,
    list: Option<&Vec<String>>,
    f: impl Fn(&str) -> Result<T, String>,
) -> Vec<T> {
    let mut out = Vec::new();
    for (i, s) in list.into_iter().flatten().enumerate() {
        match f(s) {
            Ok(v) => out.push(v),
            Err(e) => push(problems, path.index(i), e),
        }
    }
    out
}

/// Everything but the service index (filled by the caller).
fn route(r: &RawRoute, path: &KeyPath, problems: &mut Vec<Problem>) -> RouteDef {
    let hosts = each(
        problems,
        &path.key("hosts"),
        r.hosts.as_ref(),
        net::route_host,
    );
    let paths = each(
        problems,
        &path.key("paths"),
        r.paths.as_ref(),
        matchers::path,
    );
    let methods = each(
        problems,
        &path.key("methods"),
        r.methods.as_ref(),
        matchers::method,
    );
    let headers = conditions(
        problems,
        &path.key("headers"),
        r.headers.as_ref(),
        header_name,
    )
    .into_iter()
    .map(|(name, value)| HeaderMatch { name, value })
    .collect::<Vec<_>>();
    let query = conditions(problems, &path.key("query"), r.query.as_ref(), query_name)
        .into_iter()
        .map(|(name, value)| QueryMatch { name, value })
        .collect::<Vec<_>>();

    let written = |l: &Option<Vec<String>>| l.as_ref().is_some_and(|l| !l.is_empty());
    let has_matcher = written(&r.hosts)
        || written(&r.paths)
        || written(&r.methods)
        || r.headers.as_ref().is_some_and(|h| !h.0.is_empty())
        || r.query.as_ref().is_some_and(|q| !q.0.is_empty());
    if !has_matcher {
        push(
            problems,
            path.clone(),
            "a route needs at least one of `hosts`, `paths`, `methods`, `headers` or `query` (use paths = [\"/\"] to match everything)",
        );
    }

    let priority = r.priority.map_or(0, |p| p.0);
    let priority = i32::try_from(priority).unwrap_or_else(|_| {
        push(
            problems,
            path.key("priority"),
            format!(
                "priority must fit in a 32-bit signed integer ({}..={}), got {priority}",
                i32::MIN,
                i32::MAX
            ),
        );
        0
    });
    RouteDef {
        name: r.name.clone(),
        service: 0,
        hosts,
        paths,
        methods,
        headers,
        query,
        strip_path: r.strip_path.unwrap_or(true),
        preserve_host: r.preserve_host.unwrap_or(false),
        priority,
        max_body_bytes: r.max_body_bytes.map(|s| s.0),
    }
}

fn header_name(name: &str) -> Result<String, String> {
    if !matchers::is_token(name) {
        return Err(format!(
            "{name:?} is not a valid header name (letters, digits and !#$%&'*+-.^_`|~)"
        ));
    }
    let lower = name.to_ascii_lowercase();
    if lower == "host" {
        return Err("match the Host header with the route's `hosts`, not `headers`".to_owned());
    }
    Ok(lower)
}

fn query_name(name: &str) -> Result<String, String> {
    if name.is_empty()
        || name
            .chars()
            .any(|c| c.is_ascii_control() || "&=#? ".contains(c))
    {
        return Err(format!("{name:?} is not a valid query parameter name"));
    }
    Ok(name.to_owned())
}

/// Header or query conditions: checked names (unique after normalization) with compiled values.
fn conditions(
    problems: &mut Vec<Problem>,
    path: &KeyPath,
    map: Option<&OrderedMap<MatchValues>>,
    name_check: fn(&str) -> Result<String, String>,
) -> Vec<(String, ValueMatch)> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (raw_name, values) in map.map(|m| m.0.as_slice()).unwrap_or_default() {
        let key = path.key(raw_name);
        let name = match name_check(raw_name) {
            Ok(n) => n,
            Err(e) => {
                push(problems, key, e);
                continue;
            }
        };
        if !seen.insert(name.clone()) {
            push(problems, key, format!("{raw_name:?} is listed twice"));
            continue;
        }
        match matchers::values(&values.0) {
            Ok(v) => out.push((name, v)),
            Err(e) => push(problems, key, e),
        }
    }
    out
}
