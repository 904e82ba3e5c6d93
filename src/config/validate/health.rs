//! `[upstreams.health]`: passive (circuit breaking) and active health-check settings, with the
//! documented defaults applied here and nowhere else.
//!
//! Invariants of the result: `max_fails` 0..=1000 (0 = passive health off); every duration > 0;
//! thresholds 1..=100; status sets hold only 100..=599 and the active one is never empty; an active
//! `path` starts with '/' and is visible ASCII (it goes into a request line as written).

use std::time::Duration;

use super::{in_range, positive, push};
use crate::config::locate::{KeyPath, Problem};
use crate::config::model::{ActiveDef, HealthDef, PassiveDef, StatusSet};
use crate::config::raw::{Int, RawActive, RawHealth, RawPassive};

const MAX_FAILS: i64 = 1000;
const MAX_THRESHOLD: i64 = 100;
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_HEALTHY_THRESHOLD: i64 = 2;
const DEFAULT_UNHEALTHY_THRESHOLD: i64 = 3;

/// Compiles `health` (absent: passive defaults, no active checks). `valid_host`: the Host-header
/// check the upstream's `host_header` uses.
pub fn compile(
    raw: Option<&RawHealth>,
    path: &KeyPath,
    valid_host: fn(&str) -> bool,
    problems: &mut Vec<Problem>,
) -> HealthDef {
    let Some(raw) = raw else {
        return HealthDef::default();
    };
    let path = path.key("health");
    HealthDef {
        passive: raw
            .passive
            .as_ref()
            .map(|p| passive(p, &path.key("passive"), problems))
            .unwrap_or_default(),
        active: raw
            .active
            .as_ref()
            .map(|a| active(a, &path.key("active"), valid_host, problems)),
    }
}

fn passive(raw: &RawPassive, path: &KeyPath, problems: &mut Vec<Problem>) -> PassiveDef {
    let d = PassiveDef::default();
    let max_fails = raw
        .max_fails
        .map(|Int(n)| {
            in_range(
                problems,
                path.key("max_fails"),
                "max_fails",
                n,
                0,
                MAX_FAILS,
            )
        })
        .map_or(d.max_fails, |n| {
            n.and_then(|n| u32::try_from(n).ok()).unwrap_or(d.max_fails)
        });
    PassiveDef {
        max_fails,
        fail_timeout: positive(
            problems,
            path.key("fail_timeout"),
            raw.fail_timeout,
            d.fail_timeout,
        ),
        http_statuses: raw.http_statuses.as_deref().map_or(d.http_statuses, |v| {
            // A 1xx/2xx counted as a failure would eject targets for answering.
            for (i, &Int(code)) in v.iter().enumerate() {
                if (100..300).contains(&code) {
                    push(
                        problems,
                        path.key("http_statuses").index(i),
                        format!("{code} is a success: http_statuses lists failure statuses (e.g. 500, 502, 503)"),
                    );
                }
            }
            statuses(v, &path.key("http_statuses"), problems)
        }),
    }
}

fn active(
    raw: &RawActive,
    path: &KeyPath,
    valid_host: fn(&str) -> bool,
    problems: &mut Vec<Problem>,
) -> ActiveDef {
    let probe_path = match raw.path.as_deref() {
        None => {
            push(
                problems,
                path.clone(),
                "active health checks need a `path`, e.g. path = \"/healthz\"",
            );
            String::from("/")
        }
        Some(p) if !p.starts_with('/') || !p.bytes().all(|b| b.is_ascii_graphic()) => {
            push(
                problems,
                path.key("path"),
                format!("{p:?} is not a probe path: it must start with '/' and contain no spaces or control characters"),
            );
            String::from("/")
        }
        Some(p) => p.to_owned(),
    };
    let threshold = |key: &str, v: Option<Int>, default: i64, problems: &mut Vec<Problem>| {
        let n = v.map_or(default, |Int(n)| n);
        in_range(problems, path.key(key), key, n, 1, MAX_THRESHOLD)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(1)
    };
    let healthy_threshold = threshold(
        "healthy_threshold",
        raw.healthy_threshold,
        DEFAULT_HEALTHY_THRESHOLD,
        problems,
    );
    let unhealthy_threshold = threshold(
        "unhealthy_threshold",
        raw.unhealthy_threshold,
        DEFAULT_UNHEALTHY_THRESHOLD,
        problems,
    );
    let healthy_statuses = match raw.healthy_statuses.as_deref() {
        None => StatusSet::range(200, 399),
        Some([]) => {
            push(
                problems,
                path.key("healthy_statuses"),
                "must list at least one status (default: any 200..=399)",
            );
            StatusSet::range(200, 399)
        }
        Some(v) => statuses(v, &path.key("healthy_statuses"), problems),
    };
    if let Some(h) = &raw.host {
        if !valid_host(h) {
            push(
                problems,
                path.key("host"),
                format!(
                    "{h:?} is not a valid Host header value; expected \"host\" or \"host:port\""
                ),
            );
        }
    }
    let interval = positive(
        problems,
        path.key("interval"),
        raw.interval,
        DEFAULT_INTERVAL,
    );
    // Each probe is a new connection per target and worker: a 1 ms interval is a flood.
    if interval < MIN_INTERVAL {
        push(
            problems,
            path.key("interval"),
            format!(
                "interval must be at least {} ms (each probe opens a connection per target and worker)",
                MIN_INTERVAL.as_millis()
            ),
        );
    }
    ActiveDef {
        path: probe_path,
        interval,
        timeout: positive(problems, path.key("timeout"), raw.timeout, DEFAULT_TIMEOUT),
        healthy_threshold,
        unhealthy_threshold,
        healthy_statuses,
        host: raw.host.clone(),
    }
}

/// The shortest active-check interval.
const MIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// A list of status codes, each 100..=599 (reported at its own index).
fn statuses(raw: &[Int], path: &KeyPath, problems: &mut Vec<Problem>) -> StatusSet {
    let mut set = StatusSet::default();
    for (i, &Int(code)) in raw.iter().enumerate() {
        if let Some(c) = in_range(problems, path.index(i), "a status", code, 100, 599) {
            set.insert(c as u16);
        }
    }
    set
}
