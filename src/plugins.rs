//! Plugins: a closed enum, one variant per plugin, and per-route chains compiled once at load.
//!
//! Chain compilation (`compile_chains`), per route:
//! 1. Scope resolution, one instance per plugin name (Kong's rule): the most specific enabled
//!    instance wins — route > service (the route's) > global. Consumer scope will rank above route
//!    once consumers exist (it needs auth to run first, so it is resolved per request then).
//! 2. Order: by plugin priority, highest first (Kong's numbers: auth plugins ~1000-1450 run before
//!    rate limiting at 910), ties by name. Disabled plugins are skipped (a disabled route-level
//!    instance does not hide the global one, as in Kong).
//!
//! Per request (`on_request`): a loop over `&[Plugin]` with a `match` per variant; no allocation,
//! no dynamic dispatch. The chain for route `r` is `chains[r]`.

use crate::config::model::{Config, PluginScope};
use crate::limit::{self, Decision, LimiterSet, RequestInfo};

/// One compiled plugin step. `Copy`; indices point into per-worker state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plugin {
    /// Instance index into the worker's `LimiterSet` (see `limit::instances`).
    RateLimiting { instance: usize },
}

impl Plugin {
    /// Kong-style priority: higher runs first.
    pub fn priority(self) -> u32 {
        match self {
            Plugin::RateLimiting { .. } => 910,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Plugin::RateLimiting { .. } => "rate-limiting",
        }
    }
}

/// Per-route chains (index = route index), in execution order.
pub fn compile_chains(cfg: &Config) -> Vec<Box<[Plugin]>> {
    // plugin index -> its compiled step
    let mut step: Vec<Option<Plugin>> = vec![None; cfg.plugins.len()];
    for (instance, inst) in limit::instances(cfg).iter().enumerate() {
        if let Some(s) = step.get_mut(inst.plugin) {
            *s = Some(Plugin::RateLimiting { instance });
        }
    }
    cfg.routes
        .iter()
        .enumerate()
        .map(|(r, route)| {
            // (name, specificity, step); keep the most specific per name.
            let mut picked: Vec<(&str, u8, Plugin)> = Vec::new();
            for (i, p) in cfg.plugins.iter().enumerate() {
                let Some(Some(s)) = step.get(i).copied() else {
                    continue;
                };
                let rank = match p.scope {
                    PluginScope::Route(x) if x == r => 3,
                    PluginScope::Service(x) if x == route.service => 2,
                    PluginScope::Global => 1,
                    _ => continue,
                };
                match picked.iter_mut().find(|(n, _, _)| *n == p.name) {
                    Some(e) if e.1 < rank => *e = (p.name.as_str(), rank, s),
                    Some(_) => {}
                    None => picked.push((p.name.as_str(), rank, s)),
                }
            }
            let mut chain: Vec<Plugin> = picked.into_iter().map(|(_, _, s)| s).collect();
            chain.sort_by(|a, b| b.priority().cmp(&a.priority()).then(a.name().cmp(b.name())));
            chain.into_boxed_slice()
        })
        .collect()
}

/// What the request path does after the chain ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow<'a> {
    Continue,
    /// Answer now with `status` and this JSON body (headers were appended to `resp_headers`).
    Respond {
        status: u16,
        body: &'a [u8],
    },
}

/// Per-request scratch the proxy keeps per connection and reuses.
#[derive(Debug, Default)]
pub struct Scratch {
    pub key: Vec<u8>,
}

/// Runs the request phase of `chain`. Response headers plugins add (rate-limit headers) are
/// appended to `resp_headers` as `Name: value\r\n` lines: on `Continue` the proxy adds them to the
/// upstream's response head, on `Respond` to the error response. `now_ms` = `limit::now_ms()`.
pub fn on_request<'a, R: RequestInfo + ?Sized>(
    chain: &[Plugin],
    req: &R,
    limiters: &'a LimiterSet,
    scratch: &mut Scratch,
    now_ms: u64,
    resp_headers: &mut Vec<u8>,
) -> Flow<'a> {
    for p in chain {
        match *p {
            Plugin::RateLimiting { instance } => {
                let Some(by) = limiters.limit_by(instance) else {
                    continue;
                };
                limit::build_key(by, req, &mut scratch.key);
                if let Decision::Reject { status, body } =
                    limiters.check(instance, &scratch.key, now_ms, resp_headers)
                {
                    return Flow::Respond { status, body };
                }
            }
        }
    }
    Flow::Continue
}

/// Writes a complete plugin-generated response: status line, `extra_headers` (from `on_request`),
/// JSON content type and length, optional `Connection: close`, then `body`.
pub fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    extra_headers: &[u8],
    body: &[u8],
    close: bool,
) {
    use std::io::Write as _;
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        reason(status),
        body.len()
    );
    out.extend_from_slice(extra_headers);
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ if status < 500 => "Client Error",
        _ => "Server Error",
    }
}
