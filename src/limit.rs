//! Rate limiting: per-worker local decisions, reconciled across cores every few ms and, with
//! `policy = "cluster"`, across machines through Redis.
//!
//! ```text
//! main thread   limit::start(&cfg, workers) -> (ReconcilerHandle, Vec<WorkerLink>)
//!               reload: handle.install(instances(&new_cfg)) -> Vec<WorkerLink>
//! worker i      LimiterSet::new(link)            (in the Shard; !Send, Cell/RefCell only)
//!               reload: LimiterSet::with_previous(link, Some(&old))   (control loop, off requests)
//!               per request: build_key + check    (no lock, no channel, no allocation on a warm key)
//!               every sync_interval: sync(now)    (try_recv views, send one batch; never blocks)
//! reconciler    merges batches, sends one Arc<View> per round to every worker; Redis (cluster)
//! ```
//!
//! Reload: the reconciler thread and the channels live as long as the process. Each limit has a
//! *slot* that survives a reload while `same_counts` holds; the reconciler keeps that slot's tables
//! and Redis link, and each worker's new `LimiterSet` shares the slot's per-worker counts (`Rc`, same
//! thread) with the previous generation's. A changed limit value keeps its slot; a changed algorithm,
//! period set, `limit_by` or policy, or a new limit, gets a new slot (fresh counts);
//! slots no generation lists any more are dropped.
//!
//! Accuracy: a worker admits while `global + inflight + unsynced < limit`, where `global` is at most
//! one round old. Other workers' admissions during that round are unseen, so the worst case
//! over-admission per window is about `rate x sync_interval x (workers - 1)` requests (rate = the
//! key's per-worker arrival rate), plus one round of each node's traffic in cluster mode. The
//! reconciler measures what actually happened (`ReconcilerStats::overshoot`).
//!
//! Memory: each worker keeps at most `max_keys` keys per instance (least recently used evicted at the
//! cap, idle keys evicted at `sync`), the reconciler at most `max_keys x workers`.
//!
//! Clock: `now_ms` is milliseconds since the UNIX epoch (wall clock: windows are calendar-aligned and
//! cluster nodes must agree on window boundaries). `limit::now_ms()` reads it.

pub mod bucket;
mod key;
pub mod msg;
mod reconciler;
mod redis_sync;
pub mod table;
pub mod window;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::config::model::{Config, PluginConfig, Policy, RateLimitDef};
pub mod board;

pub use key::{build_key, RequestInfo, MAX_KEY};
pub use reconciler::{ReconcilerHandle, ReconcilerStats};
pub use worker::{header_owned, Decision, InstanceStats, LimiterSet};

/// One enabled `rate-limiting` plugin (an "instance"; index = position in `instances(cfg)`).
#[derive(Debug, Clone)]
pub struct InstanceDef {
    /// Index into `Config::plugins`.
    pub plugin: usize,
    /// `global`, `service:<name>` or `route:<name>` (stable across nodes; used in Redis keys).
    pub id: String,
    pub def: RateLimitDef,
    /// Stable number of this limit across reloads (see `msg`); set by `ReconcilerHandle::install`.
    pub slot: u32,
}

/// The enabled rate-limiting plugins of `cfg`, in file order (other plugins are skipped).
/// `compile_chains` and `LimiterSet` number instances the same way.
pub fn instances(cfg: &Config) -> Vec<InstanceDef> {
    cfg.plugins
        .iter()
        .enumerate()
        .filter(|(_, p)| p.enabled)
        .filter_map(|(i, p)| match &p.config {
            PluginConfig::RateLimiting(def) => Some(InstanceDef {
                plugin: i,
                id: p.scope.id(cfg),
                def: def.clone(),
                slot: 0,
            }),
            _ => None,
        })
        .collect()
}

/// Whether a reloaded instance `b` keeps the counts of `a`: same scope, and the same settings that
/// give the counts their meaning (algorithm, the periods counted, `limit_by`, policy with its Redis
/// url and prefix). Everything else may change without a reset, the limits themselves included: a
/// limit lowered at 3 a.m. applies to what was already counted (a client over the new limit is
/// refused at once) and a raised one does not hand every client a fresh window, as Kong's and
/// nginx's counters (keyed by client and period, not by limit) behave. So do a bucket's rate and
/// burst (a level above a lowered burst is cut to it), `mode`, `error_code`, `error_message`,
/// `hide_client_headers`, `on_redis_failure`, `sync_interval`, `max_keys` (a lower cap evicts least
/// recently used keys at install) and the Redis `timeout`. Adding or removing a period starts
/// fresh: each key's counts are laid out by period.
pub fn same_counts(a: &InstanceDef, b: &InstanceDef) -> bool {
    let (x, y) = (&a.def, &b.def);
    let policy = match (&x.policy, &y.policy) {
        (Policy::Local, Policy::Local) => true,
        (Policy::Cluster(r), Policy::Cluster(s)) => r.url == s.url && r.prefix == s.prefix,
        _ => false,
    };
    a.id == b.id
        && x.algorithm == y.algorithm
        && (x.limits.iter().map(|l| l.period)).eq(y.limits.iter().map(|l| l.period))
        && x.bucket.is_some() == y.bucket.is_some()
        && x.limit_by == y.limit_by
        && policy
}

/// What one worker needs to build its `LimiterSet` for one generation (Send; moved into the
/// worker thread). The channels are the same for every generation.
pub struct WorkerLink {
    pub index: usize,
    pub(crate) tx: Sender<msg::ToReconciler>,
    pub(crate) rx: Receiver<Arc<msg::View>>,
    pub(crate) instances: Arc<[InstanceDef]>,
    pub(crate) sync_interval: Duration,
}

/// The smallest `sync_interval` over all instances (5 ms when there are none).
pub fn sync_interval(instances: &[InstanceDef]) -> Duration {
    instances
        .iter()
        .map(|i| i.def.sync_interval)
        .min()
        .unwrap_or(Duration::from_millis(5))
}

/// Starts the rate limiter for `cfg` and returns one link per worker (index = worker index). The
/// reconciler thread starts with the first generation that has an enabled rate-limiting plugin.
/// On reload call `ReconcilerHandle::install` with the new config's instances: unchanged limits
/// keep their counts.
pub fn start(cfg: &Config, workers: usize) -> (ReconcilerHandle, Vec<WorkerLink>) {
    start_instances(instances(cfg), workers)
}

/// `start` for an explicit instance list (tests, benches).
pub fn start_instances(
    instances: Vec<InstanceDef>,
    workers: usize,
) -> (ReconcilerHandle, Vec<WorkerLink>) {
    let mut handle = ReconcilerHandle::new(workers);
    let links = handle.install(instances);
    (handle, links)
}

/// Milliseconds since the UNIX epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
