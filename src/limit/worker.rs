//! `LimiterSet`: one worker's rate-limiter state for every instance. `!Send` (Cell/RefCell); lives in
//! the worker's `Shard` and never leaves its thread.
//!
//! `check` decides locally from plain integers: `global (last merged view) + inflight (sent, not yet
//! merged) + unsynced (admitted since the last send)`, never waits on anything, and allocates nothing
//! for a key already in the table (a new key allocates its bytes once). `sync` (every sync interval,
//! from a worker task) applies the views the reconciler sent, sends this worker's deltas and evicts
//! idle keys; it never blocks (try_recv / unbounded send). Views also bring in keys other workers
//! use (while the table has room), so a worker's first request for such a key decides on their
//! counts. RefCell borrows never outlive a call.
//!
//! Reload: a generation's set is built `with_previous` (the worker's current set), at install time
//! in the worker's control loop. It shares the previous set's `Core` (channels, batch numbering,
//! acks) and, for every instance whose slot is unchanged, its `Counts` (the key table and counters):
//! `Rc`s on one thread, so requests still running under the old generation and new ones count into
//! the same table, and nothing crosses threads or locks.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use super::bucket::Bucket;
use super::msg::{Batch, Delta, DeltaRec, KeyRef, Override, ToReconciler, View, ViewWhat};
use super::table::KeyTable;
use super::window::{self, Verdict, WinPair};
use super::{InstanceDef, WorkerLink};
use crate::config::model::{Algorithm, BucketDef, Mode, Period};
use crate::proxy::head::push_u64;

/// The decision for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision<'a> {
    Allow,
    /// Answer with `status` and this JSON body (`{"message":"…"}\n`), plus the headers `check`
    /// appended (always including `Retry-After`).
    Reject {
        status: u16,
        body: &'a [u8],
    },
}

/// Per-instance counters of one worker (sum them over workers for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InstanceStats {
    pub admitted: u64,
    pub rejected: u64,
    /// Admitted in `mode = "shadow"` although over the limit.
    pub shadow_rejected: u64,
    /// Keys currently in this worker's table.
    pub keys: u64,
    /// Keys evicted at the `max_keys` cap (least recently used first).
    pub evicted_at_cap: u64,
}

/// A token bucket as one worker sees it.
#[derive(Debug, Clone, Copy)]
struct BucketState {
    local: Bucket,
    inflight: u64,
    seq: u64,
    unsynced: u64,
}

enum Table {
    Windows(KeyTable<Box<[WinPair]>>),
    Bucket(KeyTable<BucketState>),
}

/// What survives a reload for an unchanged limit (shared by the generations' sets).
struct Counts {
    slot: u32,
    table: RefCell<Table>,
    ovr: Cell<Override>,
    stats: Cell<InstanceStats>,
}

/// One instance in one generation: its settings and its (possibly inherited) counts.
struct Inst {
    def: Arc<InstanceDef>,
    counts: Rc<Counts>,
    body: Box<[u8]>,
    /// Keys idle this long are evicted at `sync`.
    idle_ms: u64,
}

/// Per worker, for the process lifetime (shared by the generations' sets): the channels and the
/// batch numbering the reconciler acknowledges.
struct Core {
    worker: usize,
    tx: Sender<ToReconciler>,
    rx: Receiver<Arc<View>>,
    seq: Cell<u64>,
    acked: Cell<u64>,
    /// Deltas of keys evicted since the last sync (sent with the next batch).
    evicted: RefCell<Batch>,
    dirty: RefCell<Vec<u32>>,
}

pub struct LimiterSet {
    core: Rc<Core>,
    insts: Box<[Inst]>,
    /// Slot -> index into `insts` (views name slots).
    by_slot: HashMap<u32, usize>,
    sync_interval: Duration,
}

impl LimiterSet {
    /// Builds the worker's state from the link `limit::start` returned for it.
    pub fn new(link: WorkerLink) -> LimiterSet {
        LimiterSet::with_previous(link, None)
    }

    /// Builds the worker's set for a new generation, taking over `prev`'s counts for every
    /// instance whose slot is unchanged (see `limit::same_counts`); other instances start empty.
    /// Runs on the worker thread, off the request path (it allocates).
    pub fn with_previous(link: WorkerLink, prev: Option<&LimiterSet>) -> LimiterSet {
        let core = match prev {
            Some(p) => p.core.clone(),
            None => Rc::new(Core {
                worker: link.index,
                tx: link.tx,
                rx: link.rx,
                seq: Cell::new(0),
                acked: Cell::new(0),
                evicted: RefCell::new(Batch::default()),
                dirty: RefCell::new(Vec::new()),
            }),
        };
        let insts: Box<[Inst]> = link
            .instances
            .iter()
            .map(|d| {
                let def = Arc::new(d.clone());
                let cap = d.def.max_keys;
                let longest = d.def.limits.last().map_or(1_000, |l| l.period.millis());
                let idle_ms = match (d.def.algorithm, d.def.bucket) {
                    // Twice the refill time: a bucket can be in debt down to -burst (shadow mode,
                    // an overshoot), and one evicted after one refill time would come back full
                    // instead of at about 0 (found by a review).
                    (Algorithm::TokenBucket, Some(b)) => {
                        ((2.0 * b.burst as f64 / b.rate_per_ms).ceil() as u64).max(1_000)
                    }
                    (Algorithm::SlidingWindow, _) => 2 * longest,
                    _ => longest,
                };
                let inherited = prev
                    .and_then(|p| p.by_slot.get(&d.slot).and_then(|&i| p.insts.get(i)))
                    .map(|i| i.counts.clone());
                let counts = match inherited {
                    Some(c) => {
                        // A lower `max_keys` applies now; evicted keys' counts still reach the
                        // reconciler with the next batch.
                        let mut evicted = core.evicted.borrow_mut();
                        match &mut *c.table.borrow_mut() {
                            Table::Windows(t) => {
                                t.set_cap(cap, |k, v| flush_windows(&mut evicted, d.slot, k, v))
                            }
                            Table::Bucket(t) => {
                                t.set_cap(cap, |k, v| flush_bucket(&mut evicted, d.slot, k, v))
                            }
                        }
                        c
                    }
                    None => Rc::new(Counts {
                        slot: d.slot,
                        table: RefCell::new(match d.def.algorithm {
                            Algorithm::TokenBucket => Table::Bucket(KeyTable::new(cap)),
                            _ => Table::Windows(KeyTable::new(cap)),
                        }),
                        ovr: Cell::new(Override::None),
                        stats: Cell::new(InstanceStats::default()),
                    }),
                };
                Inst {
                    body: crate::plugins::json_message(&d.def.error_message),
                    def,
                    counts,
                    idle_ms,
                }
            })
            .collect();
        let by_slot = insts
            .iter()
            .enumerate()
            .map(|(i, inst)| (inst.counts.slot, i))
            .collect();
        LimiterSet {
            core,
            insts,
            by_slot,
            sync_interval: link.sync_interval,
        }
    }

    /// How often the worker should call `sync`.
    pub fn sync_interval(&self) -> Duration {
        self.sync_interval
    }

    /// Number of instances (`instance` arguments are `0..len()`).
    pub fn len(&self) -> usize {
        self.insts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.insts.is_empty()
    }

    /// The instance's `limit_by` (for building the key).
    pub fn limit_by(&self, instance: usize) -> Option<&crate::config::model::LimitBy> {
        self.insts.get(instance).map(|i| &i.def.def.limit_by)
    }

    /// Decides one request of `instance` for `key` at `now_ms` (ms since the UNIX epoch; windows
    /// are calendar-aligned on it). Appends the client headers (unless hidden; `Retry-After` on a
    /// reject always) to `resp_headers` as `Name: value\r\n` lines. An unknown `instance` allows.
    pub fn check(
        &self,
        instance: usize,
        key: &[u8],
        now_ms: u64,
        resp_headers: &mut Vec<u8>,
    ) -> Decision<'_> {
        let Some(inst) = self.insts.get(instance) else {
            return Decision::Allow;
        };
        let def = &inst.def.def;
        let counts = &*inst.counts;
        let slot = counts.slot;
        let ovr = counts.ovr.get();
        let mut verdicts: [Option<(Option<Period>, u64, Verdict)>; 4] = [None; 4];
        let mut allowed = true;
        {
            let mut table = counts.table.borrow_mut();
            let mut evicted = self.core.evicted.borrow_mut();
            let mut evicted_at_cap = false;
            let acked = self.core.acked.get();
            match &mut *table {
                Table::Windows(t) => {
                    let n = def.limits.len();
                    let got = t.get_or_insert(
                        key,
                        now_ms,
                        || vec![WinPair::default(); n].into_boxed_slice(),
                        |v| v.fill(WinPair::default()),
                        |k, v| {
                            evicted_at_cap = true;
                            flush_windows(&mut evicted, slot, k, v);
                        },
                    );
                    let Some(pairs) = t.value_mut(got.slot) else {
                        return Decision::Allow;
                    };
                    for (i, (pair, lim)) in pairs.iter_mut().zip(&def.limits).enumerate() {
                        let p = lim.period.millis();
                        pair.roll(now_ms / p);
                        let limit = effective(lim.limit, ovr);
                        let used = pair.curr.used(acked);
                        let v = if def.algorithm == Algorithm::SlidingWindow {
                            window::sliding(pair.prev_used(acked), used, limit, now_ms, p)
                        } else {
                            window::fixed(used, limit, now_ms, p)
                        };
                        allowed &= v.allowed;
                        if let Some(out) = verdicts.get_mut(i) {
                            *out = Some((Some(lim.period), limit, v));
                        }
                    }
                    allowed = resolve(allowed, ovr, def.mode, inst);
                    if allowed {
                        for pair in pairs.iter_mut() {
                            pair.curr.unsynced += 1;
                        }
                        t.mark_dirty(got.slot);
                    }
                }
                Table::Bucket(t) => {
                    let Some(bdef) = def.bucket.map(|b| effective_bucket(b, ovr)) else {
                        return Decision::Allow;
                    };
                    let got = t.get_or_insert(
                        key,
                        now_ms,
                        || BucketState {
                            local: Bucket::full(&bdef, now_ms),
                            inflight: 0,
                            seq: 0,
                            unsynced: 0,
                        },
                        |v| {
                            *v = BucketState {
                                local: Bucket::full(&bdef, now_ms),
                                inflight: 0,
                                seq: 0,
                                unsynced: 0,
                            }
                        },
                        |k, v| {
                            evicted_at_cap = true;
                            flush_bucket(&mut evicted, slot, k, v);
                        },
                    );
                    let Some(b) = t.value_mut(got.slot) else {
                        return Decision::Allow;
                    };
                    let mut trial = b.local;
                    let v = trial.take(&bdef, now_ms);
                    verdicts[0] = Some((None, bdef.burst, v));
                    allowed = resolve(v.allowed, ovr, def.mode, inst);
                    if allowed {
                        if v.allowed {
                            b.local = trial;
                        } else {
                            // Shadow/open: admitted without a token; the debt is recorded.
                            b.local.refill(&bdef, now_ms);
                            b.local.tokens -= 1.0;
                        }
                        b.unsynced += 1;
                        t.mark_dirty(got.slot);
                    }
                }
            }
            let mut s = counts.stats.get();
            if evicted_at_cap {
                s.evicted_at_cap += 1;
            }
            if allowed {
                s.admitted += 1;
            } else {
                s.rejected += 1;
            }
            counts.stats.set(s);
        }
        // An admitted request (shadow and `open` included) was counted in every period, a rejected
        // one in none.
        let mut quotas =
            verdicts.map(|v| v.map(|(p, limit, v)| (p, Quota::of(limit, &v, allowed))));
        if !allowed && matches!(ovr, Override::Closed) {
            // Rejected because Redis is away (`on_redis_failure = "closed"`): no period has room
            // the client can use, and the answer is "try again in a second", the same in
            // `RateLimit-*` as in `Retry-After` (before, the headers showed the room the periods
            // had and their window resets).
            for (_, q) in quotas.iter_mut().flatten() {
                q.remaining = 0;
                q.reset_ms = CLOSED_RETRY_MS;
                q.blocking = true;
            }
        }
        let worst = most_constraining(&quotas);
        if !def.hide_client_headers {
            write_headers(resp_headers, &quotas, worst);
        }
        if allowed {
            Decision::Allow
        } else {
            // The period that rejected longest (a second when `on_redis_failure = "closed"` did).
            let retry_ms = worst
                .filter(|q| q.blocking)
                .map_or(CLOSED_RETRY_MS, |q| q.reset_ms);
            resp_headers.extend_from_slice(b"Retry-After: ");
            push_u64(resp_headers, secs(retry_ms));
            resp_headers.extend_from_slice(b"\r\n");
            Decision::Reject {
                status: def.error_code,
                body: &inst.body,
            }
        }
    }

    /// Applies the reconciler's views, sends this worker's deltas, evicts idle keys. Call every
    /// `sync_interval()` from a worker task (not per request). Never blocks.
    pub fn sync(&self, now_ms: u64) {
        self.apply_views(now_ms);
        let core = &*self.core;
        let mut batch = std::mem::take(&mut *core.evicted.borrow_mut());
        let seq = core.seq.get() + 1;
        let acked = core.acked.get();
        let mut dirty = core.dirty.borrow_mut();
        for inst in self.insts.iter() {
            let slot = inst.counts.slot;
            let mut table = inst.counts.table.borrow_mut();
            match &mut *table {
                Table::Windows(t) => {
                    t.take_dirty(&mut dirty);
                    for &entry in dirty.iter() {
                        let Some((key, pairs)) = t.entry_mut(entry) else {
                            continue;
                        };
                        let kr = KeyRef::push(&mut batch.keys, key);
                        for (p, pair) in pairs.iter_mut().enumerate() {
                            for w in [&mut pair.prev, &mut pair.curr] {
                                if w.unsynced == 0 {
                                    continue;
                                }
                                batch.recs.push(DeltaRec {
                                    slot,
                                    key: kr,
                                    delta: Delta::Window {
                                        period: p as u8,
                                        idx: w.idx,
                                        count: w.unsynced,
                                    },
                                });
                                if w.seq <= acked {
                                    w.inflight = 0;
                                }
                                w.inflight += w.unsynced;
                                w.unsynced = 0;
                                w.seq = seq;
                            }
                        }
                    }
                    let idle = now_ms.saturating_sub(inst.idle_ms);
                    t.evict_idle(idle, |k, v| flush_windows(&mut batch, slot, k, v));
                }
                Table::Bucket(t) => {
                    t.take_dirty(&mut dirty);
                    for &entry in dirty.iter() {
                        let Some((key, b)) = t.entry_mut(entry) else {
                            continue;
                        };
                        if b.unsynced == 0 {
                            continue;
                        }
                        let key = KeyRef::push(&mut batch.keys, key);
                        batch.recs.push(DeltaRec {
                            slot,
                            key,
                            delta: Delta::Bucket {
                                consumed: b.unsynced,
                            },
                        });
                        if b.seq <= acked {
                            b.inflight = 0;
                        }
                        b.inflight += b.unsynced;
                        b.unsynced = 0;
                        b.seq = seq;
                    }
                    let idle = now_ms.saturating_sub(inst.idle_ms);
                    t.evict_idle(idle, |k, v| flush_bucket(&mut batch, slot, k, v));
                }
            }
            let mut s = inst.counts.stats.get();
            s.keys = match &*table {
                Table::Windows(t) => t.len() as u64,
                Table::Bucket(t) => t.len() as u64,
            };
            inst.counts.stats.set(s);
        }
        if batch.recs.is_empty() {
            // Keep the buffers for next time.
            batch.keys.clear();
            *core.evicted.borrow_mut() = batch;
            return;
        }
        batch.worker = core.worker;
        batch.seq = seq;
        batch.now_ms = now_ms;
        core.seq.set(seq);
        // The reconciler gone (shutdown) is not an error here: decisions stay local.
        let _ = core.tx.send(ToReconciler::Batch(batch));
    }

    /// Applies every view the reconciler has sent so far (never blocks). `now_ms` is when keys
    /// this worker learns from them count as last seen (for idle eviction).
    pub fn apply_views(&self, now_ms: u64) {
        while let Ok(view) = self.core.rx.try_recv() {
            self.apply(&view, now_ms);
        }
    }

    fn inst_of(&self, slot: u32) -> Option<&Inst> {
        let &i = self.by_slot.get(&slot)?;
        self.insts.get(i)
    }

    /// Takes in the reconciler's totals. A key this worker has not seen yet is added while its
    /// table has room: other workers are using it, and without their counts this worker's first
    /// requests for it would decide on a count of 0 and could admit up to a whole limit more
    /// (in the round before its own batch is answered). A full table keeps its own keys instead
    /// (their counts are what this worker decides on); such a key then starts from local counts.
    fn apply(&self, view: &View, now_ms: u64) {
        let core = &*self.core;
        if let Some(&a) = view.acked.get(core.worker) {
            core.acked.set(core.acked.get().max(a));
        }
        let acked = core.acked.get();
        for &(slot, ovr) in view.overrides.iter() {
            if let Some(inst) = self.inst_of(slot) {
                inst.counts.ovr.set(ovr);
            }
        }
        for rec in &view.recs {
            let Some(inst) = self.inst_of(rec.slot) else {
                continue;
            };
            let key = rec.key.get(&view.keys);
            let mut table = inst.counts.table.borrow_mut();
            match (&mut *table, rec.what) {
                (
                    Table::Windows(t),
                    ViewWhat::Window {
                        period,
                        idx,
                        curr,
                        prev,
                    },
                ) => {
                    let n = inst.def.def.limits.len();
                    let found = t.find(key).or_else(|| {
                        t.insert_if_room(
                            key,
                            now_ms,
                            || vec![WinPair::default(); n].into_boxed_slice(),
                            |v| v.fill(WinPair::default()),
                        )
                    });
                    let Some(slot) = found else { continue };
                    let Some(pair) = t
                        .value_mut(slot)
                        .and_then(|p| p.get_mut(usize::from(period)))
                    else {
                        continue;
                    };
                    pair.roll(idx);
                    if pair.curr.idx == idx {
                        pair.curr.global = curr;
                        if pair.prev.idx + 1 == idx {
                            pair.prev.global = prev;
                        }
                    } else if pair.prev.idx == idx {
                        pair.prev.global = curr;
                    }
                }
                (Table::Bucket(t), ViewWhat::Bucket { tokens, at_ms }) => {
                    let shared = BucketState {
                        local: Bucket { tokens, at_ms },
                        inflight: 0,
                        seq: 0,
                        unsynced: 0,
                    };
                    let found = t
                        .find(key)
                        .or_else(|| t.insert_if_room(key, now_ms, || shared, |v| *v = shared));
                    let Some(slot) = found else { continue };
                    let Some(b) = t.value_mut(slot) else { continue };
                    let inflight = if b.seq <= acked { 0 } else { b.inflight };
                    b.local = Bucket {
                        tokens: tokens - (inflight + b.unsynced) as f64,
                        at_ms,
                    };
                }
                _ => {}
            }
        }
    }

    /// This worker's counters for `instance`.
    pub fn stats(&self, instance: usize) -> InstanceStats {
        self.insts
            .get(instance)
            .map(|i| i.counts.stats.get())
            .unwrap_or_default()
    }

    /// Requests left for `key` in the most constraining period, without counting a request (for
    /// tests). `None` if the key is unknown here.
    pub fn remaining(&self, instance: usize, key: &[u8], now_ms: u64) -> Option<u64> {
        let inst = self.insts.get(instance)?;
        let def = &inst.def.def;
        let table = inst.counts.table.borrow();
        let acked = self.core.acked.get();
        let ovr = inst.counts.ovr.get();
        match &*table {
            Table::Windows(t) => {
                let pairs = t.value(t.find(key)?)?;
                pairs
                    .iter()
                    .zip(&def.limits)
                    .map(|(pair, lim)| {
                        let mut pair = *pair;
                        let p = lim.period.millis();
                        pair.roll(now_ms / p);
                        let limit = effective(lim.limit, ovr);
                        let used = pair.curr.used(acked);
                        if def.algorithm == Algorithm::SlidingWindow {
                            let prev = pair.prev_used(acked);
                            window::sliding_left(prev, used, limit, now_ms, p)
                        } else {
                            limit.saturating_sub(used)
                        }
                    })
                    .min()
            }
            Table::Bucket(t) => {
                let mut b = t.value(t.find(key)?)?.local;
                b.refill(&effective_bucket(def.bucket?, ovr), now_ms);
                Some(b.tokens.max(0.0) as u64)
            }
        }
    }
}

/// The limit in force: the node's share while Redis is down with `on_redis_failure = "local"`.
fn effective(limit: u64, ovr: Override) -> u64 {
    match ovr {
        Override::Share(n) if n > 1 => limit.div_ceil(u64::from(n)),
        _ => limit,
    }
}

/// The bucket in force: the node's share of rate and burst while Redis is down with
/// `on_redis_failure = "local"` (the reconciler then sends this node's own bucket).
fn effective_bucket(b: BucketDef, ovr: Override) -> BucketDef {
    match ovr {
        Override::Share(n) if n > 1 => b.share(n),
        _ => b,
    }
}

/// Applies overrides and shadow mode; counts shadow rejections.
fn resolve(allowed: bool, ovr: Override, mode: Mode, inst: &Inst) -> bool {
    let allowed = match ovr {
        Override::Open => true,
        Override::Closed => false,
        _ => allowed,
    };
    if !allowed && mode == Mode::Shadow {
        let mut s = inst.counts.stats.get();
        s.shadow_rejected += 1;
        inst.counts.stats.set(s);
        crate::debug!("rate limit exceeded (shadow mode) instance={}", inst.def.id);
        return true;
    }
    allowed
}

fn flush_windows(batch: &mut Batch, slot: u32, key: &[u8], pairs: &mut [WinPair]) {
    let mut kr = None;
    for (p, pair) in pairs.iter_mut().enumerate() {
        for w in [&mut pair.prev, &mut pair.curr] {
            if w.unsynced > 0 {
                let key = *kr.get_or_insert_with(|| KeyRef::push(&mut batch.keys, key));
                batch.recs.push(DeltaRec {
                    slot,
                    key,
                    delta: Delta::Window {
                        period: p as u8,
                        idx: w.idx,
                        count: w.unsynced,
                    },
                });
                w.unsynced = 0;
            }
        }
    }
}

fn flush_bucket(batch: &mut Batch, slot: u32, key: &[u8], b: &mut BucketState) {
    if b.unsynced > 0 {
        let key = KeyRef::push(&mut batch.keys, key);
        batch.recs.push(DeltaRec {
            slot,
            key,
            delta: Delta::Bucket {
                consumed: b.unsynced,
            },
        });
        b.unsynced = 0;
    }
}

/// When a client rejected because Redis is away (`on_redis_failure = "closed"`) is told to try
/// again: the reconciler retries Redis twice a second.
const CLOSED_RETRY_MS: u64 = 1_000;

/// Seconds, rounded up, at least 1.
fn secs(ms: u64) -> u64 {
    ms.div_ceil(1_000).max(1)
}

/// What the client is told about one period (or the bucket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Quota {
    limit: u64,
    /// Requests really left: after this request if it was counted, else before it (a rejected
    /// request is counted nowhere, so a period that would have admitted it still has its room).
    remaining: u64,
    /// Until the quota resets; for a period that rejected the request, until a request is
    /// admitted again (so `RateLimit-Reset` and `Retry-After` agree on a rejection).
    reset_ms: u64,
    /// This period rejected a request that was not admitted.
    blocking: bool,
}

impl Quota {
    fn of(limit: u64, v: &Verdict, counted: bool) -> Quota {
        // `v.remaining` is what is left with this request counted (0 when the period rejects).
        let remaining = if v.allowed && !counted {
            v.remaining.saturating_add(1)
        } else {
            v.remaining
        };
        let blocking = !v.allowed && !counted;
        Quota {
            limit,
            remaining,
            reset_ms: if blocking { v.retry_ms } else { v.reset_ms },
            blocking,
        }
    }
}

/// The quota `RateLimit-*` describe (Kong's choice, and the IETF draft's): on a rejection the
/// period that rejected, the one that does so longest if several (what `Retry-After` says);
/// otherwise the one with the fewest requests left, on a tie the later reset (the longer period:
/// windows are calendar-aligned).
fn most_constraining(quotas: &[Option<(Option<Period>, Quota)>; 4]) -> Option<Quota> {
    quotas
        .iter()
        .flatten()
        .map(|&(_, q)| q)
        .max_by_key(|q| (q.blocking, std::cmp::Reverse(q.remaining), q.reset_ms))
}

/// Whether `name` is one of the fields `write_headers` writes (`X-RateLimit-*`, `RateLimit-*`,
/// `RateLimit`): an upstream's own copies give way to the gateway's, as Kong sets (replaces) them,
/// so a client never reads two `RateLimit-Remaining` values.
pub fn header_owned(name: &[u8]) -> bool {
    use crate::http::headers::{eq_ignore_case, starts_with_ignore_case};
    starts_with_ignore_case(name, b"x-ratelimit-")
        || starts_with_ignore_case(name, b"ratelimit-")
        || eq_ignore_case(name, b"ratelimit")
}

/// `X-RateLimit-Limit-<P>`/`X-RateLimit-Remaining-<P>` per window period, then `RateLimit-Limit`,
/// `-Remaining`, `-Reset` for `worst` (see `most_constraining`). Written without `fmt`, which was
/// about half of the plugin's own CPU per request (a profile of stop 29).
fn write_headers(
    out: &mut Vec<u8>,
    quotas: &[Option<(Option<Period>, Quota)>; 4],
    worst: Option<Quota>,
) {
    let line = |out: &mut Vec<u8>, name: &[&[u8]], n: u64| {
        for part in name {
            out.extend_from_slice(part);
        }
        out.extend_from_slice(b": ");
        push_u64(out, n);
        out.extend_from_slice(b"\r\n");
    };
    for (period, q) in quotas.iter().flatten() {
        if let Some(p) = period {
            let t = p.title().as_bytes();
            line(out, &[b"X-RateLimit-Limit-", t], q.limit);
            line(out, &[b"X-RateLimit-Remaining-", t], q.remaining);
        }
    }
    if let Some(q) = worst {
        line(out, &[b"RateLimit-Limit"], q.limit);
        line(out, &[b"RateLimit-Remaining"], q.remaining);
        line(out, &[b"RateLimit-Reset"], secs(q.reset_ms));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_header_names() {
        for n in [
            "X-RateLimit-Remaining-Minute",
            "x-ratelimit-limit-day",
            "RateLimit-Reset",
            "ratelimit",
            "RateLimit-Policy",
        ] {
            assert!(header_owned(n.as_bytes()), "{n}");
        }
        for n in ["RateLimiter", "X-RateLimit", "Retry-After", "X-Rate"] {
            assert!(!header_owned(n.as_bytes()), "{n}");
        }
    }

    fn v(allowed: bool, remaining: u64, reset_ms: u64, retry_ms: u64) -> Verdict {
        Verdict {
            allowed,
            remaining,
            reset_ms,
            retry_ms,
        }
    }

    fn quotas(
        vs: &[(Period, u64, Verdict)],
        counted: bool,
    ) -> [Option<(Option<Period>, Quota)>; 4] {
        let mut out = [None; 4];
        for (o, &(p, limit, v)) in out.iter_mut().zip(vs) {
            *o = Some((Some(p), Quota::of(limit, &v, counted)));
        }
        out
    }

    fn text(q: &[Option<(Option<Period>, Quota)>; 4]) -> String {
        let mut out = Vec::new();
        write_headers(&mut out, q, most_constraining(q));
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn admitted_request_shows_what_is_left_after_it() {
        // second: 0 left after this one, minute: 2 left; the second is most constraining.
        let q = quotas(
            &[
                (Period::Second, 2, v(true, 0, 400, 0)),
                (Period::Minute, 3, v(true, 2, 30_400, 0)),
            ],
            true,
        );
        assert_eq!(
            text(&q),
            "X-RateLimit-Limit-Second: 2\r\nX-RateLimit-Remaining-Second: 0\r\n\
             X-RateLimit-Limit-Minute: 3\r\nX-RateLimit-Remaining-Minute: 2\r\n\
             RateLimit-Limit: 2\r\nRateLimit-Remaining: 0\r\nRateLimit-Reset: 1\r\n"
        );
        // Shadow mode admitted (and counted) over the limit: 0 left, not a blocking period.
        let q = Quota::of(5, &v(false, 0, 9_000, 9_000), true);
        assert_eq!((q.remaining, q.blocking), (0, false));
    }

    #[test]
    fn rejected_request_is_charged_nowhere() {
        // The hour rejects; the day would have admitted: 98 left after, so 99 without it.
        let q = quotas(
            &[
                (Period::Hour, 2, v(false, 0, 1_785_000, 1_785_000)),
                (Period::Day, 100, v(true, 98, 41_385_000, 0)),
            ],
            false,
        );
        assert!(text(&q).contains("X-RateLimit-Remaining-Day: 99\r\n"));
        assert_eq!(most_constraining(&q).map(|w| w.limit), Some(2));
        // A sliding window's rejecting period: reset = when a request fits again.
        let q = Quota::of(2, &v(false, 0, 980, 1_480), false);
        assert_eq!((q.reset_ms, q.blocking), (1_480, true));
        // `on_redis_failure = "closed"` rejects with room left: nothing blocks, the real remaining
        // is shown and the fewest-left rule picks the period.
        let q = quotas(
            &[
                (Period::Minute, 5, v(true, 4, 45_000, 0)),
                (Period::Hour, 100, v(true, 99, 1_785_000, 0)),
            ],
            false,
        );
        let w = most_constraining(&q);
        assert_eq!(
            w.map(|w| (w.limit, w.remaining, w.blocking)),
            Some((5, 5, false))
        );
    }
}
