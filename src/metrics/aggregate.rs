//! The merged view: every worker's flushes added up by route and target *name*, per-worker gauges kept
//! separately and summed when read. Owned by the metrics thread (see `hub`); nothing here is shared.
//!
//! Invariants:
//! - counters only grow while a route is listed; a route a reload removed or renamed drops out of
//!   `/metrics` and `/histograms` `ROUTE_LINGER_FLUSHES` flush intervals after its last counts, and
//!   its slot is reused by a new name once no kept layout maps it (one renamed starts new series);
//! - a target is (upstream, target as written, address): a name that resolves to several addresses
//!   is one series per address. A target the serving generation no longer has drops out of
//!   `/metrics` once no worker has connections to it, and its slot is reused by the next new target
//!   once no kept layout maps it, so addresses that come and go (`dns_refresh`) do not pile up;
//! - one series per label set: a route is aggregated by name, so its `route="…"` histograms and
//!   bandwidth stay one series when a reload moves it to another service; its request counts are
//!   kept per service it has had (`route="…",service="…"`), and moving back continues the old ones;
//! - gauges are each worker's latest report, so a stopped worker's connections stop counting at its
//!   last flush; a report adds up the worker's generations (requests that started before a reload
//!   are counted on their own generation's targets until they end, then drop out);
//! - rendering allocates one output `String` (plus extension families); label strings are built once
//!   per route when its name is first seen.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Sender;
use hdrhistogram::Histogram;

use super::prom::{self, header, line_u64, push_secs, push_u64, Family};
use super::worker::{Buckets, Counts, Hdr, RouteDelta, TargetDelta, WorkerFlush};
use super::{code_label, hdr, json, Layout, BUCKETS_LE, HDR_MAX_NS, HDR_SIGFIG, NCODES, NO_ROUTE};

/// Which latency an HDR report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistKind {
    /// Latency the gateway added (see `Timings::added_ns`).
    Added,
    /// Head in -> response complete.
    Total,
}

impl HistKind {
    pub fn parse(s: &str) -> Option<HistKind> {
        match s {
            "added" => Some(HistKind::Added),
            "total" => Some(HistKind::Total),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            HistKind::Added => "added",
            HistKind::Total => "total",
        }
    }
}

struct RouteAgg {
    name: String,
    /// `route="…"`
    route_only: String,
    /// Bytes and latency buckets (its `codes` are unused: see `services`).
    counts: Counts,
    /// Status codes per service the route has belonged to, in first-seen order.
    services: Vec<ServiceCodes>,
    added: Option<Histogram<u64>>,
    total: Option<Histogram<u64>>,
    /// When a flush last brought anything recorded for it.
    touched: Option<Instant>,
}

struct ServiceCodes {
    service: String,
    /// `route="…",service="…"`
    route_service: String,
    codes: [u64; NCODES],
}

impl RouteAgg {
    fn new(name: &str) -> RouteAgg {
        RouteAgg {
            name: name.to_owned(),
            route_only: prom::label_pairs(&[("route", name)]),
            counts: Counts::default(),
            services: Vec::new(),
            added: None,
            total: None,
            touched: None,
        }
    }

    /// Index into `services` for `service`, added on first sight.
    fn service_index(&mut self, service: &str) -> usize {
        if let Some(i) = self.services.iter().position(|s| s.service == service) {
            return i;
        }
        self.services.push(ServiceCodes {
            service: service.to_owned(),
            route_service: prom::label_pairs(&[("route", &self.name), ("service", service)]),
            codes: [0; NCODES],
        });
        self.services.len() - 1
    }

    fn hist(&self, kind: HistKind) -> Option<&Histogram<u64>> {
        match kind {
            HistKind::Added => self.added.as_ref(),
            HistKind::Total => self.total.as_ref(),
        }
    }
}

/// (upstream, target as written, address).
type TargetKey = (String, String, String);

struct TargetAgg {
    /// (upstream, target as written, address): its key in `Aggregate::target_index`.
    key: TargetKey,
    /// `upstream="…",target="…",address="…"`
    labels: String,
    connect_errors: u64,
    timeouts: u64,
    ejections: u64,
}

#[derive(Default)]
struct WorkerAgg {
    last_flush: Option<Instant>,
    stopped: bool,
    conns_open: u64,
    /// (idle, active) per aggregated target index.
    pool: Vec<(u64, u64)>,
    /// Per aggregated target index: `None` when the worker's current generation does not have the
    /// target, else whether the worker skips it (ejected or failing its active check).
    skipped: Vec<Option<bool>>,
}

/// A layout's indices translated to aggregate indices.
struct LayoutMap {
    layout: Arc<Layout>,
    /// (index into `Aggregate::routes`, index into that route's `services`).
    routes: Vec<(usize, usize)>,
    targets: Vec<usize>,
}

/// Most layouts kept at once. Old generations linger while requests hold them: a WebSocket or a
/// long poll keeps its generation as long as it lives, so reloads or `dns_refresh` changes every
/// few minutes can keep dozens alive. Past this, the oldest map that is not the serving one is
/// dropped (and built again if a flush still brings it); the serving one never is, or `/metrics`
/// and `/status` would lose its targets.
const MAX_LAYOUT_MAPS: usize = 64;
/// How many flush intervals a route the serving config no longer has stays in `/metrics` after
/// anything was last recorded for it (its in-flight requests' counts are scraped before it goes).
const ROUTE_LINGER_FLUSHES: u32 = 5;
/// Worker indices above this are ignored (config allows at most 1024 workers).
const MAX_WORKERS: usize = 4096;

/// Families rendered by `render_metrics` itself; extension families may not reuse these names.
pub const BUILTIN: &[&str] = &[
    "ringgate_http_requests_total",
    "ringgate_request_duration_seconds",
    "ringgate_upstream_duration_seconds",
    "ringgate_bandwidth_bytes_total",
    "ringgate_downstream_connections",
    "ringgate_downstream_connections_accepted_total",
    "ringgate_upstream_connections",
    "ringgate_upstream_connect_errors_total",
    "ringgate_upstream_timeouts_total",
    "ringgate_upstream_target_healthy",
    "ringgate_upstream_target_unhealthy_workers",
    "ringgate_upstream_ejections_total",
    "ringgate_config_generation",
    "ringgate_config_loaded_timestamp_seconds",
    "ringgate_config_reloads_total",
    "ringgate_config_last_reload_successful",
    "ringgate_workers",
    "ringgate_build_info",
    "process_start_time_seconds",
];

pub type Collector = Box<dyn Fn(&mut Vec<Family>) + Send>;

/// Extension of `/status`: appends `"key":<JSON value>` members (with their leading commas).
pub type StatusSection = Box<dyn Fn(&mut String) + Send>;

pub struct Aggregate {
    started: Instant,
    /// The same instant on the wall clock (`process_start_time_seconds`).
    started_at: SystemTime,
    flush_interval: Duration,
    expected_workers: usize,
    generation: u64,
    loaded_at: Option<SystemTime>,
    layout: Arc<Layout>,
    reloads_ok: u64,
    reloads_failed: u64,
    /// The last reload failed (a broken file is still on disk): an alert on it stays on until a
    /// reload succeeds, which a rate of the failure counter does not.
    last_reload_failed: bool,
    /// The process is shutting down (SIGTERM/SIGINT): `/health` says so at once.
    draining: bool,
    routes: Vec<RouteAgg>,
    route_index: HashMap<String, usize>,
    none: RouteAgg,
    targets: Vec<TargetAgg>,
    target_index: HashMap<TargetKey, usize>,
    workers: Vec<WorkerAgg>,
    maps: Vec<LayoutMap>,
    conns_accepted: u64,
    extra: BTreeMap<String, Vec<Family>>,
    collectors: Vec<Collector>,
    status_sections: Vec<StatusSection>,
}

impl Aggregate {
    pub fn new(flush_interval: Duration) -> Aggregate {
        Aggregate {
            started: Instant::now(),
            started_at: SystemTime::now(),
            flush_interval,
            expected_workers: 0,
            generation: 0,
            loaded_at: None,
            layout: Arc::new(Layout::default()),
            reloads_ok: 0,
            reloads_failed: 0,
            last_reload_failed: false,
            draining: false,
            routes: Vec::new(),
            route_index: HashMap::new(),
            none: {
                let mut none = RouteAgg::new(NO_ROUTE);
                none.service_index(NO_ROUTE);
                none
            },
            targets: Vec::new(),
            target_index: HashMap::new(),
            workers: Vec::new(),
            maps: Vec::new(),
            conns_accepted: 0,
            extra: BTreeMap::new(),
            collectors: Vec::new(),
            status_sections: Vec::new(),
        }
    }

    /// A config generation was loaded (at startup or by a reload): it becomes the current one.
    pub fn set_layout(&mut self, layout: Arc<Layout>) {
        self.generation = layout.generation;
        self.loaded_at = Some(SystemTime::now());
        self.map_index(&layout);
        self.layout = layout;
    }

    /// How many workers `/health` waits for.
    pub fn set_workers(&mut self, n: usize) {
        self.expected_workers = n.min(MAX_WORKERS);
    }

    pub fn set_flush_interval(&mut self, d: Duration) {
        self.flush_interval = d;
    }

    pub fn reload_outcome(&mut self, ok: bool) {
        if ok {
            self.reloads_ok += 1;
        } else {
            self.reloads_failed += 1;
        }
        self.last_reload_failed = !ok;
    }

    /// Replaces the extension families published under `source`.
    pub fn set_families(&mut self, source: String, families: Vec<Family>) {
        self.extra.insert(source, families);
    }

    /// Adds a function called at every scrape to append extension families.
    pub fn add_collector(&mut self, f: Collector) {
        self.collectors.push(f);
    }

    /// Adds a function called for every `/status` to append members to its object.
    pub fn add_status_section(&mut self, f: StatusSection) {
        self.status_sections.push(f);
    }

    /// Index into `maps` for `layout`, registering its names on first sight.
    fn map_index(&mut self, layout: &Arc<Layout>) -> usize {
        if let Some(i) = self
            .maps
            .iter()
            .position(|m| Arc::ptr_eq(&m.layout, layout))
        {
            return i;
        }
        // A route name no kept layout maps and nothing recorded lately (a reload renamed or removed
        // it) gives its slot to a new one, as targets do: config generators that put versions in
        // route names would otherwise grow the series, and the memory of their histograms, with
        // every reload.
        let mut taken = self.routes_shown(Instant::now());
        for &(i, _) in self.maps.iter().flat_map(|m| m.routes.iter()) {
            if let Some(x) = taken.get_mut(i) {
                *x = true;
            }
        }
        for r in &layout.routes {
            if let Some(x) = self
                .route_index
                .get(&r.name)
                .and_then(|&i| taken.get_mut(i))
            {
                *x = true;
            }
        }
        let mut routes = Vec::with_capacity(layout.routes.len());
        // Slots only go from free to taken below: the search goes on from the last one taken.
        let mut free_from = 0;
        for r in &layout.routes {
            let i = match self.route_index.get(&r.name) {
                Some(&i) => i,
                None => {
                    let free = taken
                        .iter()
                        .skip(free_from)
                        .position(|&x| !x)
                        .map(|p| p + free_from);
                    let i = match free {
                        Some(free) => {
                            if let Some(old) = self.routes.get_mut(free) {
                                self.route_index.remove(&old.name);
                                *old = RouteAgg::new(&r.name);
                            }
                            free
                        }
                        None => {
                            self.routes.push(RouteAgg::new(&r.name));
                            taken.push(false);
                            self.routes.len() - 1
                        }
                    };
                    if let Some(x) = taken.get_mut(i) {
                        *x = true;
                    }
                    free_from = i + 1;
                    self.route_index.insert(r.name.clone(), i);
                    i
                }
            };
            // A route that moved to another service gets request counts of its own there.
            let s = self
                .routes
                .get_mut(i)
                .map_or(0, |a| a.service_index(&r.service));
            routes.push((i, s));
        }
        // A target no layout here maps and no worker has connections to (a reload or
        // `dns_refresh` took it away) gives its slot to a new one, so addresses that come and go
        // (pods, autoscaling) do not pile up: the slots stay within what the kept layouts use.
        let mut taken = self.targets_in_use();
        for t in &layout.targets {
            let key = (t.upstream.clone(), t.target.clone(), t.address.clone());
            if let Some(&i) = self.target_index.get(&key) {
                if let Some(x) = taken.get_mut(i) {
                    *x = true;
                }
            }
        }
        let mut targets = Vec::with_capacity(layout.targets.len());
        for t in &layout.targets {
            let key = (t.upstream.clone(), t.target.clone(), t.address.clone());
            if let Some(&i) = self.target_index.get(&key) {
                targets.push(i);
                continue;
            }
            let agg = TargetAgg {
                labels: prom::label_pairs(&[
                    ("upstream", &t.upstream),
                    ("target", &t.target),
                    ("address", &t.address),
                ]),
                key: key.clone(),
                connect_errors: 0,
                timeouts: 0,
                ejections: 0,
            };
            let i = match taken.iter().position(|&x| !x) {
                Some(free) => {
                    if let Some(old) = self.targets.get_mut(free) {
                        self.target_index.remove(&old.key);
                        *old = agg;
                    }
                    for w in &mut self.workers {
                        if let Some(s) = w.skipped.get_mut(free) {
                            *s = None;
                        }
                    }
                    free
                }
                None => {
                    self.targets.push(agg);
                    taken.push(false);
                    self.targets.len() - 1
                }
            };
            if let Some(x) = taken.get_mut(i) {
                *x = true;
            }
            self.target_index.insert(key, i);
            targets.push(i);
        }
        if self.maps.len() >= MAX_LAYOUT_MAPS {
            if let Some(i) = self
                .maps
                .iter()
                .position(|m| !Arc::ptr_eq(&m.layout, &self.layout))
            {
                self.maps.remove(i);
            }
        }
        self.maps.push(LayoutMap {
            layout: layout.clone(),
            routes,
            targets,
        });
        self.maps.len() - 1
    }

    /// Merges one worker flush: its current generation, then the retired ones requests still held,
    /// each translated by its own layout (so counts land on the route and target they were recorded
    /// for). The worker's gauges are replaced by this flush's: the sum over its generations.
    pub fn apply(&mut self, f: WorkerFlush) {
        if f.worker >= MAX_WORKERS {
            return;
        }
        let mut f = f;
        if self.workers.len() <= f.worker {
            self.workers.resize_with(f.worker + 1, WorkerAgg::default);
        }
        if let Some(w) = self.workers.get_mut(f.worker) {
            w.last_flush = Some(f.at);
            w.stopped = f.last;
            w.conns_open = f.conns_open;
            // A retired generation left out of this flush has nothing in use any more: its
            // connections stop counting here, like those of targets a reload removed.
            w.pool.clear();
            w.skipped.clear();
        }
        let layout = f.layout.clone();
        self.apply_gen(
            f.worker,
            &layout,
            &mut f.routes,
            &f.targets,
            &f.recycle,
            true,
        );
        for g in &mut f.retired {
            self.apply_gen(
                f.worker,
                &g.layout,
                &mut g.routes,
                &g.targets,
                &f.recycle,
                false,
            );
        }
        self.conns_accepted = self.conns_accepted.saturating_add(f.conns_accepted);
    }

    /// Adds one generation's deltas, and its gauges to `worker`'s (health gauges only from the
    /// worker's `current` generation).
    fn apply_gen(
        &mut self,
        worker: usize,
        layout: &Arc<Layout>,
        routes: &mut [RouteDelta],
        targets: &[TargetDelta],
        recycle: &Sender<Hdr>,
        current: bool,
    ) {
        let m = self.map_index(layout);
        let Some(map) = self.maps.get(m) else {
            return;
        };
        let now = Instant::now();
        for d in routes {
            let (agg, s) = match d.route {
                None => (&mut self.none, 0),
                Some(r) => match map
                    .routes
                    .get(r as usize)
                    .and_then(|&(i, s)| Some((self.routes.get_mut(i)?, s)))
                {
                    Some(found) => found,
                    None => (&mut self.none, 0),
                },
            };
            agg.counts.add(&d.counts);
            agg.touched = Some(now);
            if let Some(sc) = agg.services.get_mut(s) {
                for (a, b) in sc.codes.iter_mut().zip(d.counts.codes.iter()) {
                    *a = a.saturating_add(*b);
                }
            }
            for (into, from) in [
                (&mut agg.added, d.added.take()),
                (&mut agg.total, d.total.take()),
            ] {
                if let Some(mut h) = from {
                    merge_hdr(into, &h);
                    h.reset();
                    // The worker may be gone (last flush): then the box is simply dropped.
                    let _ = recycle.send(h);
                }
            }
        }
        let ntargets = self.targets.len();
        let Some(w) = self.workers.get_mut(worker) else {
            return;
        };
        if w.pool.len() < ntargets {
            w.pool.resize(ntargets, (0, 0));
        }
        if current && w.skipped.len() < ntargets {
            w.skipped.resize(ntargets, None);
        }
        for (i, t) in targets.iter().enumerate() {
            let Some(&ti) = map.targets.get(i) else {
                continue;
            };
            if let Some(g) = w.pool.get_mut(ti) {
                g.0 = g.0.saturating_add(t.idle);
                g.1 = g.1.saturating_add(t.active);
            }
            if current {
                if let Some(s) = w.skipped.get_mut(ti) {
                    *s = Some(t.skipped);
                }
            }
            if let Some(agg) = self.targets.get_mut(ti) {
                agg.connect_errors = agg.connect_errors.saturating_add(t.connect_errors);
                agg.timeouts = agg.timeouts.saturating_add(t.timeouts);
                agg.ejections = agg.ejections.saturating_add(t.ejections);
            }
        }
    }

    fn expected(&self) -> usize {
        self.expected_workers.max(self.workers.len())
    }

    fn worker_serving(&self, i: usize, now: Instant) -> bool {
        let limit = self.flush_interval.saturating_mul(3);
        self.workers.get(i).is_some_and(|w| {
            !w.stopped
                && w.last_flush
                    .is_some_and(|t| now.saturating_duration_since(t) <= limit)
        })
    }

    /// The process began its drain: from now on `/health` answers 503 `draining`.
    pub fn set_draining(&mut self) {
        self.draining = true;
    }

    /// `(healthy, JSON body)`: healthy when every worker flushed within 3 flush intervals and the
    /// process is not draining. A drain is said at once, so a load balancer stops sending new
    /// connections while the ones in flight finish (workers still flush for a while, and stop
    /// only at the end of the drain).
    pub fn health(&self, now: Instant) -> (bool, String) {
        let expected = self.expected();
        let serving = (0..expected)
            .filter(|&i| self.worker_serving(i, now))
            .count();
        let ok = expected > 0 && serving == expected && !self.draining;
        let status = if self.draining {
            "draining"
        } else if ok {
            "ok"
        } else {
            "unavailable"
        };
        let body =
            format!("{{\"status\":\"{status}\",\"workers\":{expected},\"serving\":{serving}}}\n");
        (ok, body)
    }

    /// `/status` as JSON.
    pub fn status_json(&self, now: Instant) -> String {
        let mut o = String::with_capacity(256 + 64 * self.layout.routes.len());
        o.push_str("{\"generation\":");
        push_u64(&mut o, self.generation);
        o.push_str(",\"loaded_at\":");
        match self.loaded_at {
            Some(t) => {
                let mut b = Vec::new();
                crate::log::push_rfc3339(&mut b, t);
                json::push_str(&mut o, &String::from_utf8_lossy(&b));
            }
            None => o.push_str("null"),
        }
        o.push_str(",\"uptime_seconds\":");
        push_u64(
            &mut o,
            now.saturating_duration_since(self.started).as_secs(),
        );
        o.push_str(",\"flush_interval_ms\":");
        push_u64(&mut o, self.flush_interval.as_millis() as u64);
        o.push_str(",\"reloads\":{\"success\":");
        push_u64(&mut o, self.reloads_ok);
        o.push_str(",\"failure\":");
        push_u64(&mut o, self.reloads_failed);
        o.push_str("},\"workers\":[");
        for i in 0..self.expected() {
            if i > 0 {
                o.push(',');
            }
            let w = self.workers.get(i);
            o.push_str("{\"index\":");
            push_u64(&mut o, i as u64);
            o.push_str(",\"serving\":");
            o.push_str(if self.worker_serving(i, now) {
                "true"
            } else {
                "false"
            });
            o.push_str(",\"last_flush_ms_ago\":");
            match w.and_then(|w| w.last_flush) {
                Some(t) => push_u64(&mut o, now.saturating_duration_since(t).as_millis() as u64),
                None => o.push_str("null"),
            }
            o.push_str(",\"connections\":");
            push_u64(&mut o, w.map_or(0, |w| w.conns_open));
            o.push('}');
        }
        o.push_str("],\"routes\":[");
        for (i, r) in self.layout.routes.iter().enumerate() {
            if i > 0 {
                o.push(',');
            }
            o.push_str("{\"name\":");
            json::push_str(&mut o, &r.name);
            o.push_str(",\"service\":");
            json::push_str(&mut o, &r.service);
            o.push('}');
        }
        o.push_str("],\"upstreams\":[");
        let current = self
            .maps
            .iter()
            .find(|m| Arc::ptr_eq(&m.layout, &self.layout));
        let mut first_upstream = true;
        let mut open_upstream: Option<&str> = None;
        for (li, t) in self.layout.targets.iter().enumerate() {
            if open_upstream != Some(t.upstream.as_str()) {
                if open_upstream.is_some() {
                    o.push_str("]}");
                }
                if !first_upstream {
                    o.push(',');
                }
                first_upstream = false;
                o.push_str("{\"name\":");
                json::push_str(&mut o, &t.upstream);
                o.push_str(",\"targets\":[");
                open_upstream = Some(t.upstream.as_str());
            } else {
                o.push(',');
            }
            let (idle, active) = current
                .and_then(|m| m.targets.get(li))
                .map_or((0, 0), |&ti| self.pool_gauges(ti));
            o.push_str("{\"target\":");
            json::push_str(&mut o, &t.target);
            o.push_str(",\"address\":");
            json::push_str(&mut o, &t.address);
            o.push_str(",\"idle\":");
            push_u64(&mut o, idle);
            o.push_str(",\"active\":");
            push_u64(&mut o, active);
            let (healthy, skipping) = current
                .and_then(|m| m.targets.get(li))
                .and_then(|&ti| self.health_gauges(ti))
                .unwrap_or((true, 0));
            o.push_str(",\"healthy\":");
            o.push_str(if healthy { "true" } else { "false" });
            o.push_str(",\"unhealthy_workers\":");
            push_u64(&mut o, skipping);
            o.push('}');
        }
        if open_upstream.is_some() {
            o.push_str("]}");
        }
        o.push(']');
        for section in &self.status_sections {
            section(&mut o);
        }
        o.push_str("}\n");
        o
    }

    /// (healthy, workers skipping it) of an aggregated target: healthy unless every running worker
    /// that has the target in its current generation skips it (requests then only reach it because
    /// health checking fails open). `None` when no running worker has it.
    fn health_gauges(&self, target: usize) -> Option<(bool, u64)> {
        let (mut have, mut skipping) = (0u64, 0u64);
        for w in self.workers.iter().filter(|w| !w.stopped) {
            match w.skipped.get(target).copied().flatten() {
                Some(true) => {
                    have += 1;
                    skipping += 1;
                }
                Some(false) => have += 1,
                None => {}
            }
        }
        (have > 0).then_some((skipping < have, skipping))
    }

    /// Per aggregated route: whether `/metrics` and `/histograms` list it: the serving generation
    /// has it, or something was recorded for it within `ROUTE_LINGER_FLUSHES` flush intervals (a
    /// route a reload removed drops out once its last requests are counted and that time passed).
    fn routes_shown(&self, now: Instant) -> Vec<bool> {
        let mut shown = vec![false; self.routes.len()];
        if let Some(m) = self
            .maps
            .iter()
            .find(|m| Arc::ptr_eq(&m.layout, &self.layout))
        {
            for &(i, _) in &m.routes {
                if let Some(s) = shown.get_mut(i) {
                    *s = true;
                }
            }
        }
        let linger = self.flush_interval.saturating_mul(ROUTE_LINGER_FLUSHES);
        for (s, r) in shown.iter_mut().zip(&self.routes) {
            *s = *s
                || r.touched
                    .is_some_and(|t| now.saturating_duration_since(t) < linger);
        }
        shown
    }

    /// The routes `/metrics` and `/histograms` list (see `routes_shown`), then requests that
    /// matched none.
    fn listed_routes(&self) -> impl Iterator<Item = &RouteAgg> {
        let shown = self.routes_shown(Instant::now());
        self.routes
            .iter()
            .zip(shown)
            .filter(|(_, s)| *s)
            .map(|(r, _)| r)
            .chain(std::iter::once(&self.none))
    }

    /// Per aggregated target: whether a layout in `maps` maps it or a worker has connections to it
    /// (its slot may not be given to another target).
    fn targets_in_use(&self) -> Vec<bool> {
        let mut used = vec![false; self.targets.len()];
        for &i in self.maps.iter().flat_map(|m| m.targets.iter()) {
            if let Some(u) = used.get_mut(i) {
                *u = true;
            }
        }
        for (i, u) in used.iter_mut().enumerate() {
            *u = *u || self.pool_gauges(i) != (0, 0);
        }
        used
    }

    /// Per aggregated target: whether `/metrics` lists it: the serving generation has it, or a
    /// worker still has connections to it (a target a reload or `dns_refresh` took away drops out
    /// once its last request ends).
    fn targets_shown(&self) -> Vec<bool> {
        let mut shown = vec![false; self.targets.len()];
        if let Some(m) = self
            .maps
            .iter()
            .find(|m| Arc::ptr_eq(&m.layout, &self.layout))
        {
            for &i in &m.targets {
                if let Some(s) = shown.get_mut(i) {
                    *s = true;
                }
            }
        }
        for (i, s) in shown.iter_mut().enumerate() {
            *s = *s || self.pool_gauges(i) != (0, 0);
        }
        shown
    }

    /// (idle, active) summed over workers.
    fn pool_gauges(&self, target: usize) -> (u64, u64) {
        self.workers
            .iter()
            .filter_map(|w| w.pool.get(target))
            .fold((0, 0), |(i, a), (wi, wa)| {
                (i.saturating_add(*wi), a.saturating_add(*wa))
            })
    }

    /// The Prometheus exposition (see the README's metrics table).
    pub fn render_metrics(&self, out: &mut String) {
        let listed: Vec<&RouteAgg> = self.listed_routes().collect();
        let all = || listed.iter().copied();

        const REQS: &str = "ringgate_http_requests_total";
        header(out, REQS, "Requests answered, by route, service and status code (rare codes are counted by class, e.g. 4xx).", "counter");
        for sc in all().flat_map(|r| r.services.iter()) {
            for (i, &n) in sc.codes.iter().enumerate() {
                if n == 0 {
                    continue;
                }
                out.push_str(REQS);
                out.push('{');
                out.push_str(&sc.route_service);
                out.push_str(",code=\"");
                out.push_str(code_label(i));
                out.push_str("\"} ");
                push_u64(out, n);
                out.push('\n');
            }
        }

        histogram(
            out,
            "ringgate_request_duration_seconds",
            "Time from the request head received to the response completely sent, by route.",
            all().map(|r| (r.route_only.as_str(), &r.counts.request)),
        );
        histogram(
            out,
            "ringgate_upstream_duration_seconds",
            "Time from the request head sent upstream to the response head received, by route.",
            all().map(|r| (r.route_only.as_str(), &r.counts.upstream)),
        );

        const BW: &str = "ringgate_bandwidth_bytes_total";
        header(
            out,
            BW,
            "Bytes read from (ingress) and written to (egress) clients, by route.",
            "counter",
        );
        for r in all() {
            if r.counts.bytes_in == 0 && r.counts.bytes_out == 0 {
                continue;
            }
            for (dir, n) in [
                ("ingress", r.counts.bytes_in),
                ("egress", r.counts.bytes_out),
            ] {
                out.push_str(BW);
                out.push_str("{direction=\"");
                out.push_str(dir);
                out.push_str("\",");
                out.push_str(&r.route_only);
                out.push_str("} ");
                push_u64(out, n);
                out.push('\n');
            }
        }

        let open: u64 = self.workers.iter().map(|w| w.conns_open).sum();
        header(
            out,
            "ringgate_downstream_connections",
            "Open client connections.",
            "gauge",
        );
        line_u64(out, "ringgate_downstream_connections", "", open);
        header(
            out,
            "ringgate_downstream_connections_accepted_total",
            "Client connections accepted.",
            "counter",
        );
        line_u64(
            out,
            "ringgate_downstream_connections_accepted_total",
            "",
            self.conns_accepted,
        );

        const POOL: &str = "ringgate_upstream_connections";
        header(
            out,
            POOL,
            "Upstream connections per target: idle in the pools, or active (in use by a request or an open tunnel).",
            "gauge",
        );
        let shown = self.targets_shown();
        let listed = || {
            self.targets
                .iter()
                .zip(&shown)
                .filter(|(_, s)| **s)
                .map(|(t, _)| t)
        };
        for (i, t) in self.targets.iter().enumerate() {
            if !shown.get(i).copied().unwrap_or(false) {
                continue;
            }
            let (idle, active) = self.pool_gauges(i);
            for (state, n) in [("idle", idle), ("active", active)] {
                out.push_str(POOL);
                out.push('{');
                out.push_str(&t.labels);
                out.push_str(",state=\"");
                out.push_str(state);
                out.push_str("\"} ");
                push_u64(out, n);
                out.push('\n');
            }
        }
        header(
            out,
            "ringgate_upstream_connect_errors_total",
            "Failed connection attempts per upstream target.",
            "counter",
        );
        for t in listed() {
            line_u64(
                out,
                "ringgate_upstream_connect_errors_total",
                &t.labels,
                t.connect_errors,
            );
        }
        header(
            out,
            "ringgate_upstream_timeouts_total",
            "Connect, read or write timeouts per upstream target.",
            "counter",
        );
        for t in listed() {
            line_u64(
                out,
                "ringgate_upstream_timeouts_total",
                &t.labels,
                t.timeouts,
            );
        }

        const HEALTHY: &str = "ringgate_upstream_target_healthy";
        header(
            out,
            HEALTHY,
            "1 unless every worker skips the target (passively ejected or failing its active health check).",
            "gauge",
        );
        let health: Vec<(usize, bool, u64)> = self
            .maps
            .iter()
            .find(|m| Arc::ptr_eq(&m.layout, &self.layout))
            .map(|m| {
                m.targets
                    .iter()
                    .filter_map(|&ti| self.health_gauges(ti).map(|(h, n)| (ti, h, n)))
                    .collect()
            })
            .unwrap_or_default();
        for &(ti, healthy, _) in &health {
            if let Some(t) = self.targets.get(ti) {
                line_u64(out, HEALTHY, &t.labels, u64::from(healthy));
            }
        }
        const UNHEALTHY: &str = "ringgate_upstream_target_unhealthy_workers";
        header(
            out,
            UNHEALTHY,
            "Workers that currently skip the target (each worker judges health on its own).",
            "gauge",
        );
        for &(ti, _, n) in &health {
            if let Some(t) = self.targets.get(ti) {
                line_u64(out, UNHEALTHY, &t.labels, n);
            }
        }
        const EJECTIONS: &str = "ringgate_upstream_ejections_total";
        header(
            out,
            EJECTIONS,
            "Passive health ejections per upstream target, summed over workers.",
            "counter",
        );
        for t in listed() {
            line_u64(out, EJECTIONS, &t.labels, t.ejections);
        }

        header(
            out,
            "ringgate_config_generation",
            "Generation of the config in use (1 at startup, +1 per successful reload or upstream address change, see dns_refresh).",
            "gauge",
        );
        line_u64(out, "ringgate_config_generation", "", self.generation);
        header(
            out,
            "ringgate_config_loaded_timestamp_seconds",
            "Unix time the config in use was loaded.",
            "gauge",
        );
        let loaded = self
            .loaded_at
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        line_u64(out, "ringgate_config_loaded_timestamp_seconds", "", loaded);
        header(
            out,
            "ringgate_config_reloads_total",
            "Config reloads, by result.",
            "counter",
        );
        line_u64(
            out,
            "ringgate_config_reloads_total",
            "result=\"success\"",
            self.reloads_ok,
        );
        line_u64(
            out,
            "ringgate_config_reloads_total",
            "result=\"failure\"",
            self.reloads_failed,
        );
        header(
            out,
            "ringgate_config_last_reload_successful",
            "1 unless the last reload failed (the file on disk is not the config in use).",
            "gauge",
        );
        line_u64(
            out,
            "ringgate_config_last_reload_successful",
            "",
            u64::from(!self.last_reload_failed),
        );
        header(
            out,
            "ringgate_build_info",
            "Always 1; the running binary's version is in the label (after a SIGUSR2 upgrade, the new one's).",
            "gauge",
        );
        line_u64(
            out,
            "ringgate_build_info",
            concat!("version=\"", env!("CARGO_PKG_VERSION"), "\""),
            1,
        );
        header(
            out,
            "process_start_time_seconds",
            "Unix time the process started (a change means a restart or an upgrade).",
            "gauge",
        );
        let started = self
            .started_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        line_u64(out, "process_start_time_seconds", "", started);

        let now = Instant::now();
        header(
            out,
            "ringgate_workers",
            "Workers, and how many flushed their metrics within 3 flush intervals (serving).",
            "gauge",
        );
        let expected = self.expected();
        let serving = (0..expected)
            .filter(|&i| self.worker_serving(i, now))
            .count();
        line_u64(
            out,
            "ringgate_workers",
            "state=\"configured\"",
            expected as u64,
        );
        line_u64(out, "ringgate_workers", "state=\"serving\"", serving as u64);

        // Extension families; a name already rendered is skipped (duplicates break the format).
        let mut seen: HashSet<String> = HashSet::new();
        let mut collected = Vec::new();
        for c in &self.collectors {
            c(&mut collected);
        }
        for f in self.extra.values().flatten().chain(collected.iter()) {
            if BUILTIN.contains(&f.name.as_str()) || !seen.insert(f.name.clone()) {
                continue;
            }
            prom::render_family(out, f);
        }
    }

    /// `GET /histograms`: one line per route and kind with samples (µs).
    pub fn histogram_summary(&self) -> String {
        let mut out = String::from(hdr::SUMMARY_HEADER);
        for r in self.listed_routes() {
            for kind in [HistKind::Added, HistKind::Total] {
                if let Some(h) = r.hist(kind).filter(|h| !h.is_empty()) {
                    hdr::summary_line(&mut out, &r.name, kind.as_str(), h);
                }
            }
        }
        out
    }

    /// The percentile report of one route; `None` when the route is unknown.
    pub fn histogram_report(&self, route: &str, kind: HistKind) -> Option<String> {
        let r = if route == NO_ROUTE {
            &self.none
        } else {
            // Only a listed route: one a reload removed is gone here too once `/histograms` and
            // `/metrics` dropped it.
            let i = *self.route_index.get(route)?;
            if !self
                .routes_shown(Instant::now())
                .get(i)
                .copied()
                .unwrap_or(false)
            {
                return None;
            }
            self.routes.get(i)?
        };
        Some(match r.hist(kind) {
            Some(h) => hdr::percentile_report(h),
            None => hdr::percentile_report(&empty_hdr()?),
        })
    }

    /// What `metrics.histogram_file` receives at shutdown: the summary, then every route's reports.
    pub fn histogram_file_text(&self) -> String {
        let mut out = self.histogram_summary();
        for r in self.listed_routes() {
            for kind in [HistKind::Added, HistKind::Total] {
                if let Some(h) = r.hist(kind).filter(|h| !h.is_empty()) {
                    out.push_str(&format!(
                        "\n# route={} kind={} unit=us\n",
                        r.name,
                        kind.as_str()
                    ));
                    out.push_str(&hdr::percentile_report(h));
                }
            }
        }
        out
    }
}

#[cfg(test)]
#[path = "aggregate_tests.rs"]
mod tests;

fn empty_hdr() -> Option<Histogram<u64>> {
    Histogram::new_with_bounds(1, HDR_MAX_NS, HDR_SIGFIG).ok()
}

fn merge_hdr(into: &mut Option<Histogram<u64>>, from: &Histogram<u32>) {
    if into.is_none() {
        *into = empty_hdr();
    }
    let Some(h) = into else {
        return;
    };
    for v in from.iter_recorded() {
        h.saturating_record_n(v.value_iterated_to(), u64::from(v.count_at_value()));
    }
}

/// One Prometheus histogram family; series with no observations are left out.
fn histogram<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    series: impl Iterator<Item = (&'a str, &'a Buckets)>,
) {
    header(out, name, help, "histogram");
    for (labels, b) in series {
        let count = b.count();
        if count == 0 {
            continue;
        }
        let mut cumulative = 0u64;
        for (i, n) in b.counts.iter().enumerate() {
            cumulative = cumulative.saturating_add(*n);
            out.push_str(name);
            out.push_str("_bucket{");
            out.push_str(labels);
            out.push_str(",le=\"");
            out.push_str(BUCKETS_LE.get(i).copied().unwrap_or("+Inf"));
            out.push_str("\"} ");
            push_u64(out, cumulative);
            out.push('\n');
        }
        out.push_str(name);
        out.push_str("_sum{");
        out.push_str(labels);
        out.push_str("} ");
        push_secs(out, b.sum_ns);
        out.push('\n');
        out.push_str(name);
        out.push_str("_count{");
        out.push_str(labels);
        out.push_str("} ");
        push_u64(out, count);
        out.push('\n');
    }
}
