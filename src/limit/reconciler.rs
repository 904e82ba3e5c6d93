//! The reconciler thread: merges every worker's batches into global totals, answers each round with
//! one shared `View`, and in cluster mode exchanges totals with Redis (see `redis_sync`).
//!
//! Cycle: on every arrival of batches, merge them (counting estimated overshoot), run the Redis
//! exchange for cluster instances that got new counts, then send the view of every key that changed
//! (plus acks and overrides) to all workers; every `sync_interval` without arrivals, the Redis
//! exchange runs anyway (reads of recently active keys, heartbeats). The thread lives across reloads: an
//! `Install` message (sent by `ReconcilerHandle::install`) swaps the instance list, keeping the state
//! of slots that stay. It ends when the handle is dropped or `ReconcilerHandle::shutdown` is called.
//! Blocking I/O is allowed here (own thread); nothing on a worker ever waits for it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::bucket::Bucket;
use super::msg::{Batch, Delta, KeyRef, Override, ToReconciler, View, ViewRec, ViewWhat};
use super::redis_sync::{ClusterLink, PushList, RedisThreads, Reply};
use super::table::KeyTable;
use super::{InstanceDef, WorkerLink};
use crate::config::model::{Algorithm, BucketDef, Policy};

/// Counters the reconciler keeps per instance (read by metrics from any thread).
#[derive(Debug, Default)]
pub struct SharedStats {
    /// Requests admitted beyond a limit because workers decided on views up to one interval old
    /// (window count above the limit; bucket below zero).
    pub overshoot: AtomicU64,
    /// Cluster policy: whether the last Redis exchange succeeded.
    pub redis_healthy: AtomicBool,
    /// Cluster policy: live nodes at the last heartbeat (1 until known).
    pub nodes: AtomicU64,
    /// Cluster policy: failed Redis exchanges.
    pub redis_errors: AtomicU64,
    /// The instance has the cluster policy (its Redis fields mean something).
    pub cluster: AtomicBool,
}

/// A snapshot of one instance's reconciler counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReconcilerStats {
    pub overshoot: u64,
    pub redis_healthy: bool,
    pub nodes: u64,
    pub redis_errors: u64,
}

/// Owned by the main thread: installs generations, gives stats access, stops the thread.
pub struct ReconcilerHandle {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    workers: usize,
    /// This limiter's identity in Redis (hash field of its counts, heartbeat member); the same for
    /// every generation, so a reload neither double counts nor looks like a new node.
    node_id: String,
    tx: Sender<ToReconciler>,
    /// Kept until the thread starts (it takes them).
    pending: Option<ThreadEnds>,
    view_rxs: Vec<Receiver<Arc<View>>>,
    /// The current generation's instances (slots set) and their stats, in instance order.
    live: Vec<(Arc<InstanceDef>, Arc<SharedStats>)>,
    next_slot: u32,
    sync_interval: Duration,
}

/// The reconciler thread's ends of the channels.
type ThreadEnds = (Receiver<ToReconciler>, Vec<Sender<Arc<View>>>);

static NODE_SEQ: AtomicU64 = AtomicU64::new(0);

impl ReconcilerHandle {
    /// A limiter for `workers` workers with no instance yet (no thread until one is installed).
    pub fn new(workers: usize) -> ReconcilerHandle {
        let workers = workers.max(1);
        let (tx, rx) = crossbeam_channel::unbounded();
        let (view_txs, view_rxs) = (0..workers).map(|_| crossbeam_channel::unbounded()).unzip();
        ReconcilerHandle {
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
            workers,
            node_id: format!(
                "{}-{}-{}",
                std::process::id(),
                wall_ms(),
                NODE_SEQ.fetch_add(1, Ordering::Relaxed)
            ),
            tx,
            pending: Some((rx, view_txs)),
            view_rxs,
            live: Vec::new(),
            next_slot: 0,
            sync_interval: Duration::from_millis(5),
        }
    }

    /// Makes `instances` the current generation and returns one link per worker for it. An
    /// instance with `same_counts` as one of the current generation takes over its slot (and so its
    /// counts in the reconciler and, when workers build their set `with_previous`, in every
    /// worker); others get a new slot. Never blocks (one channel send); the reconciler applies it
    /// before any batch a worker sends under the new generation.
    pub fn install(&mut self, instances: Vec<InstanceDef>) -> Vec<WorkerLink> {
        let mut live = Vec::with_capacity(instances.len());
        for mut d in instances {
            let kept = self
                .live
                .iter()
                .find(|(old, _)| super::same_counts(old, &d))
                .map(|(old, stats)| (old.slot, stats.clone()));
            let stats = match kept {
                Some((slot, stats)) => {
                    d.slot = slot;
                    stats
                }
                None => {
                    d.slot = self.next_slot;
                    self.next_slot = self.next_slot.wrapping_add(1);
                    let stats = Arc::new(SharedStats::default());
                    stats.nodes.store(1, Ordering::Relaxed);
                    // A cluster instance counts as healthy until an exchange says otherwise, as
                    // its `ClusterLink` does.
                    let cluster = matches!(d.def.policy, Policy::Cluster(_));
                    stats.cluster.store(cluster, Ordering::Relaxed);
                    stats.redis_healthy.store(cluster, Ordering::Relaxed);
                    stats
                }
            };
            live.push((Arc::new(d), stats));
        }
        self.live = live;
        let defs: Vec<InstanceDef> = self.live.iter().map(|(d, _)| (**d).clone()).collect();
        self.sync_interval = super::sync_interval(&defs);
        if self.thread.is_none() && !self.live.is_empty() {
            self.spawn();
        }
        // Before the links exist, so the reconciler knows the slots before any batch uses them.
        let _ = self.tx.send(ToReconciler::Install(self.live.clone()));
        let defs: Arc<[InstanceDef]> = defs.into();
        self.view_rxs
            .iter()
            .enumerate()
            .map(|(index, rx)| WorkerLink {
                index,
                tx: self.tx.clone(),
                rx: rx.clone(),
                instances: defs.clone(),
                sync_interval: self.sync_interval,
            })
            .collect()
    }

    fn spawn(&mut self) {
        let Some((rx, txs)) = self.pending.take() else {
            return;
        };
        let (stop, workers, node_id) = (self.stop.clone(), self.workers, self.node_id.clone());
        // Built on its own thread: its tables hold `Rc` keys.
        let run = move || Reconciler::new(workers, rx, txs, stop, node_id).run();
        match std::thread::Builder::new()
            .name("ringgate-reconciler".to_owned())
            .spawn(run)
        {
            Ok(t) => self.thread = Some(t),
            Err(e) => crate::error!("reconciler thread failed to start error=\"{}\"", e),
        }
    }

    /// Counters of the current generation's `instance` (default when out of range).
    pub fn stats(&self, instance: usize) -> ReconcilerStats {
        self.live
            .get(instance)
            .map(|(_, s)| ReconcilerStats {
                overshoot: s.overshoot.load(Ordering::Relaxed),
                redis_healthy: s.redis_healthy.load(Ordering::Relaxed),
                nodes: s.nodes.load(Ordering::Relaxed),
                redis_errors: s.redis_errors.load(Ordering::Relaxed),
            })
            .unwrap_or_default()
    }

    pub fn sync_interval(&self) -> Duration {
        self.sync_interval
    }

    /// The current generation's shared counters (instance order), for a metrics collector.
    pub fn shared_stats(&self) -> Vec<Arc<SharedStats>> {
        self.live.iter().map(|(_, s)| s.clone()).collect()
    }

    /// Stops the thread and waits for it (at most one round: Redis round trips run elsewhere).
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ReconcilerHandle {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// One window's global state.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct GWin {
    pub idx: u64,
    /// Best known total (cluster-wide when Redis is healthy).
    pub curr: u64,
    pub prev: u64,
    /// This node's own totals (what `on_redis_failure = "local"` enforces).
    pub node_curr: u64,
    pub node_prev: u64,
    /// Merged here since the last Redis exchange (non-zero = push the node total).
    pub pending: u64,
    pub pending_prev: u64,
}

impl GWin {
    pub fn roll(&mut self, idx: u64) {
        if idx <= self.idx {
            return;
        }
        let adjacent = self.idx + 1 == idx;
        *self = GWin {
            idx,
            prev: if adjacent { self.curr } else { 0 },
            node_prev: if adjacent { self.node_curr } else { 0 },
            pending_prev: if adjacent { self.pending } else { 0 },
            ..GWin::default()
        };
    }
}

pub(super) enum GState {
    Windows(Box<[GWin]>),
    Bucket(GBucket),
}

/// One token bucket's global state.
#[derive(Debug, Clone, Copy)]
pub(super) struct GBucket {
    /// Best known level (cluster-wide when Redis is healthy).
    pub all: Bucket,
    /// Cluster policy: this node's own bucket at its share of the rate and burst (what
    /// `on_redis_failure = "local"` enforces), fed by this node's consumption only.
    pub node: Bucket,
    /// Cluster policy: tokens this node consumed in total (pushed as an absolute number, so a
    /// retried push never counts twice) and since the last successful push.
    pub node_total: u64,
    pub pending: u64,
}

impl GBucket {
    pub fn full(def: &BucketDef, share: u32, now_ms: u64) -> GBucket {
        GBucket {
            all: Bucket::full(def, now_ms),
            node: Bucket::full(&def.share(share), now_ms),
            node_total: 0,
            pending: 0,
        }
    }
}

pub(super) struct RInst {
    pub def: Arc<InstanceDef>,
    pub stats: Arc<SharedStats>,
    pub table: KeyTable<GState>,
    /// Slots with Redis work pending.
    pub push: PushList,
    pub cluster: Option<ClusterLink>,
}

pub(super) struct Reconciler {
    pub insts: Vec<RInst>,
    /// Slot -> index into `insts`.
    pub by_slot: HashMap<u32, usize>,
    pub workers: usize,
    pub node_id: String,
    pub acked: Vec<u64>,
    pub acked_sent: Vec<u64>,
    pub overrides_sent: Vec<(u32, Override)>,
    pub rx: Receiver<ToReconciler>,
    pub txs: Vec<Sender<Arc<View>>>,
    pub interval: Duration,
    pub stop: Arc<AtomicBool>,
    /// The Redis threads, one per endpoint, and their replies (see `redis_sync`).
    pub threads: RedisThreads,
    pub redis_rx: Receiver<Reply>,
}

/// Milliseconds since the UNIX epoch (the reconciler's clock for idle eviction and heartbeats).
pub(super) fn wall_ms() -> u64 {
    super::now_ms()
}

impl Reconciler {
    pub fn new(
        workers: usize,
        rx: Receiver<ToReconciler>,
        txs: Vec<Sender<Arc<View>>>,
        stop: Arc<AtomicBool>,
        node_id: String,
    ) -> Reconciler {
        let (redis_tx, redis_rx) = crossbeam_channel::unbounded();
        Reconciler {
            threads: RedisThreads::new(redis_tx),
            redis_rx,
            insts: Vec::new(),
            by_slot: HashMap::new(),
            acked: vec![0; workers],
            acked_sent: vec![0; workers],
            overrides_sent: Vec::new(),
            workers,
            node_id,
            rx,
            txs,
            interval: Duration::from_millis(5),
            stop,
        }
    }

    /// Takes a new generation: listed slots keep their state (with the new settings), new ones
    /// start empty, unlisted ones are dropped (late batches for them are ignored).
    fn install(&mut self, list: Vec<(Arc<InstanceDef>, Arc<SharedStats>)>) {
        let mut old: HashMap<u32, RInst> = self.insts.drain(..).map(|r| (r.def.slot, r)).collect();
        let workers = self.workers.max(1);
        let cap_for = |d: &InstanceDef| d.def.max_keys.saturating_mul(workers);
        for (def, stats) in list {
            let inst = match old.remove(&def.slot) {
                Some(mut r) => {
                    r.table.set_cap(cap_for(&def), |_, _| {});
                    if let (Some(c), Policy::Cluster(redis)) = (&mut r.cluster, &def.def.policy) {
                        c.set_def(redis.clone());
                    }
                    r.def = def;
                    r.stats = stats;
                    r
                }
                None => RInst {
                    cluster: match &def.def.policy {
                        Policy::Cluster(r) => Some(ClusterLink::new(
                            r.clone(),
                            &self.node_id,
                            &def.id,
                            def.slot,
                        )),
                        Policy::Local => None,
                    },
                    table: KeyTable::new(cap_for(&def)),
                    push: PushList::default(),
                    def,
                    stats,
                },
            };
            self.insts.push(inst);
        }
        self.by_slot = self
            .insts
            .iter()
            .enumerate()
            .map(|(i, r)| (r.def.slot, i))
            .collect();
        let defs: Vec<InstanceDef> = self.insts.iter().map(|r| (*r.def).clone()).collect();
        self.interval = super::sync_interval(&defs);
        let used: Vec<_> = self
            .insts
            .iter()
            .filter_map(|r| r.cluster.as_ref().map(|c| c.def()))
            .collect();
        self.threads.retain_used(&used);
    }

    fn receive(&mut self, msg: ToReconciler) {
        match msg {
            ToReconciler::Batch(b) => self.merge(&b),
            ToReconciler::Install(list) => self.install(list),
        }
    }

    pub fn run(mut self) {
        let mut next = Instant::now() + self.interval;
        let mut last_sweep = Instant::now();
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            // Answer every arrival at once (drained together), so a view is at most one worker
            // tick plus this hop old. Cluster instances with new counts exchange with Redis right
            // away, in the same cycle: the push (and the read of every other node's counts) does
            // not wait for the timer, so a count reaches Redis one worker tick after its request,
            // and this node's workers get the cluster total back with the answer to their batch.
            // The timer paces the reads of idle keys, heartbeats and sweeps.
            // Redis replies are applied as they come, by the same loop; the round trips themselves
            // run on the instances' Redis threads, so a slow Redis never holds up this merging.
            loop {
                let left = next.saturating_duration_since(Instant::now());
                let arrived = crossbeam_channel::select! {
                    recv(self.rx) -> msg => match msg {
                        Ok(msg) => {
                            self.receive(msg);
                            while let Ok(more) = self.rx.try_recv() {
                                self.receive(more);
                            }
                            true
                        }
                        Err(_) => return,
                    },
                    recv(self.redis_rx) -> reply => {
                        if let Ok(reply) = reply {
                            self.apply_reply(reply);
                        }
                        true
                    },
                    default(left) => false,
                };
                if !arrived {
                    break;
                }
                while let Ok(reply) = self.redis_rx.try_recv() {
                    self.apply_reply(reply);
                }
                let now = wall_ms();
                for i in 0..self.insts.len() {
                    if self.insts.get(i).is_some_and(|r| !r.push.is_empty()) {
                        self.cluster_round(i, now);
                    }
                }
                self.broadcast();
                if self.stop.load(Ordering::Relaxed) {
                    return;
                }
            }
            next = Instant::now() + self.interval;
            let now = wall_ms();
            for i in 0..self.insts.len() {
                self.cluster_round(i, now);
            }
            self.broadcast();
            if last_sweep.elapsed() >= Duration::from_secs(1) {
                last_sweep = Instant::now();
                self.sweep(now);
            }
        }
    }

    /// Adds one batch into the global state.
    pub fn merge(&mut self, batch: &Batch) {
        let now = wall_ms();
        for rec in &batch.recs {
            let Some(inst) = self
                .by_slot
                .get(&rec.slot)
                .and_then(|&i| self.insts.get_mut(i))
            else {
                continue;
            };
            let stats = &*inst.stats;
            let key = rec.key.get(&batch.keys);
            let def = &inst.def.def;
            // A shadow limit admits past its limit on purpose: that is not overshoot.
            let track_overshoot = def.mode != crate::config::model::Mode::Shadow;
            let n = def.limits.len();
            let bucket = def.bucket;
            // Nodes sharing the limit, for the per-node bucket (1 without a cluster).
            let share = inst.cluster.as_ref().map_or(1, |c| c.nodes());
            let got = inst.table.get_or_insert(
                key,
                now,
                || match bucket {
                    Some(b) => GState::Bucket(GBucket::full(&b, share, batch.now_ms)),
                    None => GState::Windows(vec![GWin::default(); n].into_boxed_slice()),
                },
                |v| match (v, bucket) {
                    (GState::Bucket(b), Some(d)) => *b = GBucket::full(&d, share, batch.now_ms),
                    (GState::Windows(w), _) => w.fill(GWin::default()),
                    _ => {}
                },
                |_, _| {},
            );
            let Some(state) = inst.table.value_mut(got.slot) else {
                continue;
            };
            match (state, rec.delta) {
                (GState::Windows(wins), Delta::Window { period, idx, count }) => {
                    let Some(w) = wins.get_mut(usize::from(period)) else {
                        continue;
                    };
                    // The limit in force now: for about one sync interval after a reload that
                    // lowered it, requests admitted under the old limit count as overshoot.
                    let limit = def
                        .limits
                        .get(usize::from(period))
                        .map_or(u64::MAX, |l| l.limit);
                    w.roll(idx);
                    let counted = if w.idx == idx {
                        let before = w.curr.saturating_sub(limit);
                        w.curr += count;
                        w.node_curr += count;
                        w.pending += count;
                        if track_overshoot {
                            stats.overshoot.fetch_add(
                                w.curr.saturating_sub(limit) - before,
                                Ordering::Relaxed,
                            );
                        }
                        true
                    } else if w.idx == idx + 1 {
                        w.prev += count;
                        w.node_prev += count;
                        w.pending_prev += count;
                        true
                    } else {
                        false
                    };
                    if counted {
                        inst.table.mark_dirty(got.slot);
                        if inst.cluster.is_some() {
                            inst.push.add(got.slot);
                        }
                    }
                }
                (GState::Bucket(g), Delta::Bucket { consumed }) => {
                    if let Some(d) = &bucket {
                        let b = &mut g.all;
                        b.refill(d, batch.now_ms);
                        let before = (-b.tokens).max(0.0);
                        b.tokens = (b.tokens - consumed as f64).max(-(d.burst as f64));
                        let after = (-b.tokens).max(0.0);
                        let over = (after - before).max(0.0).round() as u64;
                        if track_overshoot {
                            stats.overshoot.fetch_add(over, Ordering::Relaxed);
                        }
                        let nd = d.share(share);
                        g.node.refill(&nd, batch.now_ms);
                        g.node.tokens = (g.node.tokens - consumed as f64).max(-(nd.burst as f64));
                        g.node_total += consumed;
                        g.pending += consumed;
                        inst.table.mark_dirty(got.slot);
                        if inst.cluster.is_some() {
                            inst.push.add(got.slot);
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(a) = self.acked.get_mut(batch.worker) {
            *a = (*a).max(batch.seq);
        }
    }

    fn cluster_round(&mut self, i: usize, now: u64) {
        let Some(inst) = self.insts.get_mut(i) else {
            return;
        };
        let stats = &*inst.stats;
        let Some(cluster) = inst.cluster.as_mut() else {
            return;
        };
        cluster.prepare(
            &inst.def,
            &mut inst.table,
            &mut inst.push,
            now,
            stats,
            &mut self.threads,
        );
    }

    /// Applies a Redis thread's reply to its instance (dropped if the instance is gone).
    fn apply_reply(&mut self, reply: Reply) {
        let Some(inst) = self
            .by_slot
            .get(&reply.slot)
            .and_then(|&i| self.insts.get_mut(i))
        else {
            return;
        };
        let stats = &*inst.stats;
        let Some(cluster) = inst.cluster.as_mut() else {
            return;
        };
        cluster.apply(reply, &mut inst.table, &mut inst.push, wall_ms(), stats);
    }

    /// Sends the changed keys (and acks/overrides) to every worker, if anything changed.
    fn broadcast(&mut self) {
        let mut view = View::default();
        let mut dirty = Vec::new();
        let mut overrides = Vec::with_capacity(self.insts.len());
        for inst in self.insts.iter_mut() {
            let slot = inst.def.slot;
            let ovr = inst.cluster.as_ref().map_or(Override::None, |c| {
                c.override_for(inst.def.def.on_redis_failure)
            });
            overrides.push((slot, ovr));
            let node_only = matches!(ovr, Override::Share(_));
            // Entering or leaving a Redis outage's share: every key's view switches between the
            // cluster's totals and this node's, not only the keys that changed this round.
            // Otherwise a key untouched since the outage began kept the cluster total in the
            // workers, compared with limit / n: a client that had used more than its share across
            // the cluster was refused on every node until the window rolled (found by a review).
            let was_node_only = self
                .overrides_sent
                .iter()
                .find(|(s, _)| *s == slot)
                .is_some_and(|(_, o)| matches!(o, Override::Share(_)));
            if node_only != was_node_only {
                inst.table.mark_all_dirty();
            }
            inst.table.take_dirty(&mut dirty);
            for &entry in &dirty {
                let Some((key, state)) = inst.table.entry_mut(entry) else {
                    continue;
                };
                let kr = KeyRef::push(&mut view.keys, key);
                match state {
                    GState::Windows(wins) => {
                        for (p, w) in wins.iter().enumerate() {
                            let (curr, prev) = if node_only {
                                (w.node_curr, w.node_prev)
                            } else {
                                (w.curr, w.prev)
                            };
                            view.recs.push(ViewRec {
                                slot,
                                key: kr,
                                what: ViewWhat::Window {
                                    period: p as u8,
                                    idx: w.idx,
                                    curr,
                                    prev,
                                },
                            });
                        }
                    }
                    GState::Bucket(g) => {
                        let b = if node_only { g.node } else { g.all };
                        view.recs.push(ViewRec {
                            slot,
                            key: kr,
                            what: ViewWhat::Bucket {
                                tokens: b.tokens,
                                at_ms: b.at_ms,
                            },
                        })
                    }
                }
            }
        }
        let changed = !view.recs.is_empty()
            || self.acked != self.acked_sent
            || overrides != self.overrides_sent;
        if !changed {
            return;
        }
        view.acked = self.acked.clone().into_boxed_slice();
        view.overrides = overrides.clone().into_boxed_slice();
        self.acked_sent.clone_from(&self.acked);
        self.overrides_sent = overrides;
        let view = Arc::new(view);
        for tx in &self.txs {
            let _ = tx.send(view.clone());
        }
    }

    /// Drops keys idle longer than they can matter.
    fn sweep(&mut self, now: u64) {
        for inst in &mut self.insts {
            let def = &inst.def.def;
            let idle = match (def.algorithm, def.bucket) {
                // Twice the refill time, as the workers' tables (a bucket may be in debt).
                (Algorithm::TokenBucket, Some(b)) => {
                    ((2.0 * b.burst as f64 / b.rate_per_ms).ceil() as u64).max(1_000)
                }
                _ => 2 * def.limits.last().map_or(1_000, |l| l.period.millis()),
            };
            // Keys with Redis work pending stay until it is pushed (or they are evicted at the
            // cap). An exchange in flight does not hold eviction up: one is nearly always on
            // its way, and its replies are matched by key, so one for an evicted key is dropped.
            if inst.push.is_empty() {
                inst.table
                    .evict_idle(now.saturating_sub(idle.max(10_000)), |_, _| {});
            }
        }
    }
}
