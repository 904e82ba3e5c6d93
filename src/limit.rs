//! Rate limiting: per-worker local decisions, reconciled across cores every few ms and, with
//! `policy = "cluster"`, across machines through Redis.
//!
//! ```text
//! main thread   limit::start(&cfg, workers) -> (ReconcilerHandle, Vec<WorkerLink>)
//! worker i      LimiterSet::new(link)            (in the Shard; !Send, Cell/RefCell only)
//!               per request: build_key + check    (no lock, no channel, no allocation on a warm key)
//!               every sync_interval: sync(now)    (try_recv views, send one batch; never blocks)
//! reconciler    merges batches, sends one Arc<View> per round to every worker; Redis (cluster)
//! ```
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

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::config::model::{Config, PluginConfig, RateLimitDef};
pub mod board;

pub use key::{build_key, RequestInfo, MAX_KEY};
pub use reconciler::{ReconcilerHandle, ReconcilerStats};
pub use worker::{Decision, InstanceStats, LimiterSet};

/// One enabled `rate-limiting` plugin (an "instance"; index = position in `instances(cfg)`).
#[derive(Debug, Clone)]
pub struct InstanceDef {
    /// Index into `Config::plugins`.
    pub plugin: usize,
    /// `global`, `service:<name>` or `route:<name>` (stable across nodes; used in Redis keys).
    pub id: String,
    pub def: RateLimitDef,
}

/// The enabled rate-limiting plugins of `cfg`, in file order. `compile_chains` and `LimiterSet`
/// number instances the same way.
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
            }),
            _ => None,
        })
        .collect()
}

/// What one worker needs to build its `LimiterSet` (Send; moved into the worker thread).
pub struct WorkerLink {
    pub index: usize,
    pub(crate) tx: Sender<msg::Batch>,
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

/// Starts the reconciler thread for `cfg` and returns one link per worker (index = worker index).
/// With no enabled rate-limiting plugin no thread is started. Call once at startup (and again with
/// a new config on reload: the old handle is dropped, which stops its thread).
pub fn start(cfg: &Config, workers: usize) -> (ReconcilerHandle, Vec<WorkerLink>) {
    start_instances(instances(cfg), workers)
}

static NODE_SEQ: AtomicU64 = AtomicU64::new(0);

/// `start` for an explicit instance list (tests, benches).
pub fn start_instances(
    instances: Vec<InstanceDef>,
    workers: usize,
) -> (ReconcilerHandle, Vec<WorkerLink>) {
    let workers = workers.max(1);
    let interval = sync_interval(&instances);
    let instances: Arc<[InstanceDef]> = instances.into();
    let stats: Arc<[reconciler::SharedStats]> = (0..instances.len())
        .map(|_| reconciler::SharedStats::default())
        .collect();
    let (batch_tx, batch_rx) = crossbeam_channel::unbounded();
    let mut view_txs = Vec::with_capacity(workers);
    let mut links = Vec::with_capacity(workers);
    for index in 0..workers {
        let (tx, rx) = crossbeam_channel::unbounded();
        view_txs.push(tx);
        links.push(WorkerLink {
            index,
            tx: batch_tx.clone(),
            rx,
            instances: instances.clone(),
            sync_interval: interval,
        });
    }
    drop(batch_tx);
    let stop = Arc::new(AtomicBool::new(false));
    let thread = if instances.is_empty() {
        None
    } else {
        let node_id = format!(
            "{}-{}-{}",
            std::process::id(),
            now_ms(),
            NODE_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let defs: Vec<Arc<InstanceDef>> = instances.iter().cloned().map(Arc::new).collect();
        let (stop, stats) = (stop.clone(), stats.clone());
        // Built on its own thread: its tables hold `Rc` keys.
        let run = move || {
            reconciler::Reconciler::new(
                &defs, workers, batch_rx, view_txs, interval, stop, stats, &node_id,
            )
            .run()
        };
        match std::thread::Builder::new()
            .name("ringgate-reconciler".to_owned())
            .spawn(run)
        {
            Ok(t) => Some(t),
            Err(e) => {
                crate::error!("reconciler thread failed to start error=\"{}\"", e);
                None
            }
        }
    };
    (
        ReconcilerHandle {
            stop,
            thread,
            stats,
            sync_interval: interval,
        },
        links,
    )
}

/// Milliseconds since the UNIX epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
