//! Metrics and gateway-side latency histograms, counted per worker without atomics and merged off the
//! request path.
//!
//! ```text
//! worker i (request path)  WorkerMetrics: plain counters + fixed Prometheus buckets + per-route HDR
//!                          histograms in one RefCell (never borrowed across an .await)
//! worker i (control loop)  every metrics.flush_interval: flush() sends the deltas since the last flush
//!                          (and its gauges) as one message over a crossbeam channel
//! metrics thread           Aggregate: merges flushes by route/target *name* (so series survive
//!                          reloads), renders Prometheus text, status JSON, HDR reports on request
//! admin thread             HTTP on its own listener; asks the metrics thread over a channel
//! ```
//!
//! Invariants:
//! - the request path (`GenMetrics::request_done` and friends) never allocates after a route's first
//!   request in a generation (its HDR histograms are allocated lazily, once; a request that outlives
//!   its generation's switch may allocate them again, see `worker`), never locks, never uses atomics;
//! - a scrape is at most `flush_interval` stale (plus the time the metrics thread takes to merge);
//! - status codes map to a fixed table ([`CODES`]): common codes have their own slot, the rest are
//!   counted per class (`code="4xx"`), anything outside 100..=599 as `code="other"`.
//!
//! Layouts: a [`Layout`] names the route, service and upstream-target indices of one config generation.
//! Workers record by index into per-generation slots ([`GenMetrics`]) that each request reaches through
//! the snapshot it started under, so a request ending after a reload still counts under its own
//! generation; every flush carries each live generation with its layout, and the aggregator maps
//! indices to names once per layout.

pub mod aggregate;
pub mod consumers;
pub mod hdr;
pub mod hub;
pub(crate) mod json;
pub mod prom;
pub mod worker;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::model::Config;

pub use aggregate::Aggregate;
pub use hub::{Hub, MetricsHandle, MetricsSink, Msg, Query, Reply};
pub use prom::{Family, FamilyKind, Sample};
pub use worker::{GenFlush, GenMetrics, RouteDelta, TargetDelta, WorkerFlush, WorkerMetrics};

/// Status codes with their own slot; everything else is counted per class.
/// 499 (the client went away before its answer) has its own: folded into `4xx` it could not be
/// told from the client errors it is not.
pub const CODES: [u16; 32] = [
    200, 201, 202, 204, 206, 301, 302, 303, 304, 307, 308, 400, 401, 403, 404, 405, 406, 408, 409,
    410, 413, 414, 415, 422, 429, 431, 499, 500, 501, 502, 503, 504,
];
/// Slots: `CODES`, then the classes 1xx..5xx, then `other`.
pub const NCODES: usize = CODES.len() + 6;

const fn code_table() -> [u8; 600] {
    let mut t = [0u8; 600];
    let mut s = 100;
    while s < 600 {
        // Class slot by default.
        t[s] = (CODES.len() + s / 100 - 1) as u8;
        s += 1;
    }
    let mut i = 0;
    while i < CODES.len() {
        t[CODES[i] as usize] = i as u8;
        i += 1;
    }
    t
}

static CODE_INDEX: [u8; 600] = code_table();

/// The fixed slot of `status` (see [`CODES`]).
#[inline]
pub fn code_index(status: u16) -> usize {
    match CODE_INDEX.get(usize::from(status)) {
        Some(&i) if status >= 100 => usize::from(i),
        _ => NCODES - 1,
    }
}

/// The `code` label of slot `i`.
pub fn code_label(i: usize) -> &'static str {
    const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];
    const NAMES: [&str; 32] = [
        "200", "201", "202", "204", "206", "301", "302", "303", "304", "307", "308", "400", "401",
        "403", "404", "405", "406", "408", "409", "410", "413", "414", "415", "422", "429", "431",
        "499", "500", "501", "502", "503", "504",
    ];
    NAMES
        .get(i)
        .or_else(|| CLASSES.get(i.wrapping_sub(NAMES.len())))
        .copied()
        .unwrap_or("other")
}

/// Upper bounds of the Prometheus latency buckets, in nanoseconds (`+Inf` is implicit). They reach
/// 60 s, the default `upstream_read`: a slow upstream's requests are resolved by
/// `histogram_quantile` up to the timeout, not lumped into `+Inf` past 10 s.
pub const BUCKETS_NS: [u64; 16] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
    60_000_000_000,
];
/// The same bounds as `le` label values, in seconds.
pub const BUCKETS_LE: [&str; 16] = [
    "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1",
    "2.5", "5", "10", "30", "60",
];
/// Bucket slots: `BUCKETS_NS` then `+Inf`.
pub const NBUCKETS: usize = BUCKETS_NS.len() + 1;

/// HDR histograms record nanoseconds from 1 ns up to this (larger values are clamped), with 2
/// significant digits (1 % precision): about 17 KiB per histogram with u32 counts on a worker.
pub const HDR_MAX_NS: u64 = 600_000_000_000;
pub const HDR_SIGFIG: u8 = 2;

/// When the phases of one request happened. The proxy fills it as the request goes; phases that did
/// not happen (no route, connect failure, error before a response head) stay `None`.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// The request head was completely parsed.
    pub head_in: Instant,
    /// The request head (and any body bytes sent with it) was written upstream.
    pub upstream_head_out: Option<Instant>,
    /// The response head was completely parsed.
    pub upstream_head_in: Option<Instant>,
    /// The response head was written to the client.
    pub client_head_out: Option<Instant>,
    /// The response was completely written (or the request failed).
    pub end: Instant,
    /// Time spent opening upstream connections between `head_in` and `upstream_head_out` (zero when
    /// a pooled connection was used), and waiting for a request body read whole before it is
    /// sent (request-transformer `json`); not counted as latency the gateway added.
    pub connect: Duration,
}

impl Timings {
    /// All phases at `head_in`; set the others as they happen.
    pub fn new(head_in: Instant) -> Timings {
        Timings {
            head_in,
            upstream_head_out: None,
            upstream_head_in: None,
            client_head_out: None,
            end: head_in,
            connect: Duration::ZERO,
        }
    }

    /// head in -> end.
    pub fn total_ns(&self) -> u64 {
        nanos(self.end.saturating_duration_since(self.head_in))
    }

    /// Upstream request head written -> response head parsed (the upstream's header time).
    pub fn upstream_ns(&self) -> Option<u64> {
        Some(nanos(
            self.upstream_head_in?
                .saturating_duration_since(self.upstream_head_out?),
        ))
    }

    /// What the gateway added: (head in -> head out upstream, minus connecting) + (response head in ->
    /// response head out). `None` unless all four phases happened.
    pub fn added_ns(&self) -> Option<u64> {
        let before = self
            .upstream_head_out?
            .saturating_duration_since(self.head_in)
            .saturating_sub(self.connect);
        let after = self
            .client_head_out?
            .saturating_duration_since(self.upstream_head_in?);
        Some(nanos(before).saturating_add(nanos(after)))
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Prometheus bucket slot of a latency in nanoseconds.
#[inline]
pub fn bucket_index(ns: u64) -> usize {
    BUCKETS_NS
        .iter()
        .position(|&b| ns <= b)
        .unwrap_or(BUCKETS_NS.len())
}

/// Names behind the indices of one config generation.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    pub generation: u64,
    /// Index = route index in `Config::routes`.
    pub routes: Vec<RouteName>,
    /// Index = pool slot (`Shard::target_base[u] + t`): upstreams in order, their targets in order.
    pub targets: Vec<TargetName>,
}

#[derive(Debug, Clone)]
pub struct RouteName {
    pub name: String,
    pub service: String,
}

#[derive(Debug, Clone)]
pub struct TargetName {
    pub upstream: String,
    /// As written in the config: a name stands for one target per address it resolved to.
    pub target: String,
    /// The address connected to (`ip:port`).
    pub address: String,
}

impl TargetName {
    /// A target written as an address (tests and benches).
    pub fn at(upstream: &str, target: &str) -> TargetName {
        TargetName {
            upstream: upstream.to_owned(),
            target: target.to_owned(),
            address: target.to_owned(),
        }
    }
}

impl Layout {
    pub fn from_config(cfg: &Config, generation: u64) -> Layout {
        let routes = cfg
            .routes
            .iter()
            .map(|r| RouteName {
                name: r.name.clone(),
                service: cfg
                    .services
                    .get(r.service)
                    .map(|s| s.name.clone())
                    .unwrap_or_default(),
            })
            .collect();
        let targets = cfg
            .upstreams
            .iter()
            .flat_map(|u| {
                u.targets.iter().map(|t| TargetName {
                    upstream: u.name.clone(),
                    target: t.name.clone(),
                    address: t.addr.to_string(),
                })
            })
            .collect();
        Layout {
            generation,
            routes,
            targets,
        }
    }

    /// Convenience for tests and benches: `n` routes `r0..` on services `s0..` (`services` of them)
    /// and `targets` targets of upstream `u`.
    pub fn synthetic(routes: usize, services: usize, targets: usize) -> Arc<Layout> {
        Arc::new(Layout {
            generation: 1,
            routes: (0..routes)
                .map(|i| RouteName {
                    name: format!("r{i}"),
                    service: format!("s{}", i % services.max(1)),
                })
                .collect(),
            targets: (0..targets)
                .map(|i| TargetName::at("u", &format!("10.0.0.{i}:80")))
                .collect(),
        })
    }
}

/// The `route` label of requests that matched no route (route names cannot contain parentheses).
pub const NO_ROUTE: &str = "(none)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_slots() {
        assert_eq!(code_label(code_index(200)), "200");
        assert_eq!(code_label(code_index(504)), "504");
        assert_eq!(code_label(code_index(299)), "2xx");
        assert_eq!(code_label(code_index(418)), "4xx");
        assert_eq!(code_label(code_index(101)), "1xx");
        assert_eq!(code_label(code_index(599)), "5xx");
        assert_eq!(code_label(code_index(600)), "other");
        assert_eq!(code_label(code_index(99)), "other");
        assert_eq!(code_label(code_index(0)), "other");
        assert_eq!(code_label(code_index(u16::MAX)), "other");
        for (i, c) in CODES.iter().enumerate() {
            assert_eq!(code_index(*c), i);
            assert_eq!(code_label(i), c.to_string());
        }
        assert_eq!(code_label(NCODES - 1), "other");
    }

    #[test]
    fn buckets() {
        assert_eq!(bucket_index(0), 0);
        assert_eq!(bucket_index(500_000), 0);
        assert_eq!(bucket_index(500_001), 1);
        assert_eq!(bucket_index(10_000_000_000), 13);
        assert_eq!(bucket_index(10_000_000_001), 14);
        assert_eq!(bucket_index(60_000_000_000), 15);
        assert_eq!(bucket_index(u64::MAX), 16);
        for (ns, le) in BUCKETS_NS.iter().zip(BUCKETS_LE) {
            let secs: f64 = le.parse().unwrap_or(-1.0);
            assert_eq!((secs * 1e9).round() as u64, *ns);
        }
    }

    #[test]
    fn timings() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let t = Timings {
            head_in: t0,
            upstream_head_out: Some(t0 + ms(5)),
            upstream_head_in: Some(t0 + ms(20)),
            client_head_out: Some(t0 + ms(21)),
            end: t0 + ms(30),
            connect: ms(4),
        };
        assert_eq!(t.total_ns(), 30_000_000);
        assert_eq!(t.upstream_ns(), Some(15_000_000));
        assert_eq!(t.added_ns(), Some(2_000_000));
        let mut partial = Timings::new(t0);
        partial.end = t0 + ms(1);
        assert_eq!(partial.added_ns(), None);
        assert_eq!(partial.upstream_ns(), None);
        assert_eq!(partial.total_ns(), 1_000_000);
    }
}
