//! One worker = one thread pinned to one core, running its own monoio runtime (io_uring, or epoll where
//! io_uring is refused), its own SO_REUSEPORT listeners and its own `Shard` of mutable state.
//!
//! Invariants:
//! - a `Shard` never leaves its thread (`Rc`, `Cell`, `RefCell`); what crosses threads is read-only
//!   (`Arc<Config>`, `Arc<Router>`) or the `Control` flags polled off the request path;
//! - no `RefCell` borrow is held across an `.await`;
//! - the worker returns (and its thread ends) once draining finished or the drain deadline passed.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::{Duration, Instant};

use monoio::io::Canceller;
use monoio::net::TcpListener;

use crate::access_log::{self, WorkerLog};
use crate::acme::AcmeStore;
use crate::auth::cache::DigestCache;
use crate::auth::jwt::TokenCache;
use crate::auth::AuthSet;
use crate::config::model::{Config, ListenKind};
use crate::limit::board::LimitBoard;
use crate::limit::{LimiterSet, WorkerLink};
use crate::metrics::consumers::{ConsumerBoard, ConsumerCounts};
use crate::metrics::hub::MetricsSink;
use crate::metrics::worker::{GenMetrics, WorkerMetrics};
use crate::metrics::Layout;
use crate::plugins::Chains;
use crate::proxy::parking::{self, ParkingLot};
use crate::proxy::Scratch;
use crate::router::Router;
use crate::tls::TlsContext;
use crate::upstream::balancer::Swrr;
use crate::upstream::health::{Ejection, HealthTable};
use crate::upstream::inflight::InFlightTable;
use crate::upstream::pool::Pool;
use crate::upstream::probe::HealthEvent;

/// Flags the main thread sets and workers poll (every `CONTROL_TICK`), never on the request path.
#[derive(Default)]
pub struct Control {
    pub drain: AtomicBool,
    /// A binary upgrade handed the listening sockets to a new process: the drain must leave them
    /// open (set before `drain`).
    pub handed_over: AtomicBool,
}

const CONTROL_TICK: Duration = Duration::from_millis(50);
/// How often (in control ticks: 500 ms) workers hand freed memory back to the OS (`control_loop`).
const COLLECT_TICKS: u64 = 10;

/// A compiled configuration generation, built on the main thread (file reads, DNS, regex compilation
/// all happen there) and handed to every worker.
pub struct Compiled {
    pub generation: u64,
    pub config: Arc<Config>,
    pub router: Arc<Router>,
    /// Certificates for TLS listeners (files were read by the config loader).
    pub tls: Arc<TlsContext>,
    /// The ACME store when `[acme]` uses HTTP-01: plain and redirect listeners answer
    /// `/.well-known/acme-challenge/` from it.
    pub acme_http: Option<Arc<AcmeStore>>,
    /// Metric names for this generation's route and target indices.
    pub layout: Arc<Layout>,
    /// Per-route plugin chains (index = route), compiled once per generation.
    pub chains: Arc<Chains>,
    /// Consumers, credentials and auth plugin tables (read-only).
    pub auth: Arc<AuthSet>,
    /// One limiter link per worker (taken by that worker when it installs this generation).
    pub limiter_links: Mutex<Vec<Option<WorkerLink>>>,
    /// Where workers publish their rate-limit counters for `/metrics`.
    pub limit_board: Arc<LimitBoard>,
    /// Per-consumer request counts (process lifetime) and this generation's consumer -> label slot
    /// (empty when `per_consumer_labels` is off).
    pub consumer_board: Arc<ConsumerBoard>,
    pub consumer_slots: Arc<Vec<u32>>,
}

/// A worker's view of one config generation. Connections take an `Rc` of the current snapshot at the
/// start of each request and use it to the end of that request, so in-flight requests finish under the
/// config they started with and the next request sees the new one.
pub struct Snapshot {
    pub generation: u64,
    pub config: Arc<Config>,
    pub router: Arc<Router>,
    /// New TLS connections handshake with this; established ones keep theirs.
    pub tls: Arc<TlsContext>,
    pub acme_http: Option<Arc<AcmeStore>>,
    pub chains: Arc<Chains>,
    pub auth: Arc<AuthSet>,
    /// Pool slot of each forward-auth instance's service (keyed by address, like targets).
    pub forward_slots: Vec<usize>,
    /// Per jwt instance: tokens this worker verified (bounded; honours exp). Shared with the
    /// previous snapshot when the auth tables are the same `Arc` (never borrowed across an await).
    pub jwt_caches: Rc<[RefCell<TokenCache>]>,
    /// Per basic-auth instance: credentials this worker verified (bcrypt is too slow to repeat).
    pub basic_caches: Rc<[RefCell<DigestCache>]>,
    /// This worker's rate-limit state for this generation (decides locally, syncs periodically);
    /// `None` only if the generation carried no link for this worker.
    pub limiters: Option<Rc<LimiterSet>>,
    pub limit_board: Arc<LimitBoard>,
    pub consumer_slots: Arc<Vec<u32>>,
    /// One balancer per upstream (index = upstream index).
    pub balancers: Vec<RefCell<Swrr>>,
    /// `slots[target_base[u] + t]` is the pool slot of target `t` of upstream `u`.
    pub target_base: Vec<usize>,
    pub slots: Vec<usize>,
    /// `health_slots[target_base[u] + t]` is the `Shard::health` slot of target `t` of upstream
    /// `u` (by target identity, so health survives reloads that move targets around).
    pub health_slots: Vec<usize>,
    /// By flat target, for least_conn upstreams and targets with `max_conns`: requests in flight
    /// to the target on this worker, by target identity (`Shard::inflight`), so a reload or DNS
    /// change does not forget requests and tunnels still running.
    pub loads: Vec<Option<Load>>,
    /// This generation's metric slots: requests record here, by this generation's route and target
    /// indices, even if they end after a reload (the worker flushes it under its own layout).
    pub metrics: Rc<GenMetrics>,
}

/// A target's in-flight counter on this worker and its share of the target's `max_conns`.
pub struct Load {
    pub count: Rc<Cell<u32>>,
    /// `u32::MAX`: no limit.
    pub cap: u32,
}

/// `Snapshot::loads`: the counter of each target of a least_conn upstream and of each target with
/// `max_conns`, from the worker's `InFlightTable` (the one its running requests hold, also across a
/// generation that did not list it). A worker's share of `max_conns` is an equal part, rounded up.
fn target_loads(config: &Config, table: &InFlightTable, workers: usize) -> Vec<Option<Load>> {
    use crate::config::model::Balance;
    let workers = u32::try_from(workers.max(1)).unwrap_or(u32::MAX);
    let loads = config
        .upstreams
        .iter()
        .flat_map(|u| {
            u.targets.iter().map(move |t| {
                (u.balance == Balance::LeastConn || t.max_conns.is_some()).then(|| Load {
                    count: table.counter((u.name.clone(), t.name.clone(), t.addr)),
                    cap: t.max_conns.map_or(u32::MAX, |m| m.div_ceil(workers)),
                })
            })
        })
        .collect();
    table.prune();
    loads
}

impl Snapshot {
    /// Builds this worker's view of `compiled`; pool slots are found by target address, so idle
    /// connections to targets that survive a reload stay pooled, and the rate limiter takes over
    /// `prev`'s counts of unchanged limits. `metrics`: the worker's slots for this generation.
    fn new(
        compiled: &Compiled,
        pool: &Pool,
        health: &HealthTable,
        inflight: &InFlightTable,
        (worker, workers): (usize, usize),
        prev: Option<&Snapshot>,
        metrics: Rc<GenMetrics>,
    ) -> Snapshot {
        let config = compiled.config.clone();
        let mut target_base = Vec::with_capacity(config.upstreams.len());
        let mut slots = Vec::new();
        for u in &config.upstreams {
            target_base.push(slots.len());
            slots.extend(u.targets.iter().enumerate().map(|(i, t)| {
                match u
                    .tls
                    .as_ref()
                    .and_then(|tls| Some((tls.names.get(i)?, tls)))
                {
                    Some((name, tls)) => pool.slot_for_tls(t.addr, name, tls.roots.as_ref()),
                    None => pool.slot_for(t.addr),
                }
            }));
        }
        let health_slots = config
            .upstreams
            .iter()
            .flat_map(|u| {
                u.targets
                    .iter()
                    .map(|t| health.slot_for((u.name.clone(), t.name.clone(), t.addr)))
            })
            .collect();
        let seed = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_usize(worker);
            h.finish()
        };
        let balancers = config
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let weights = || u.targets.iter().map(|t| t.weight);
                // The previous generation's balancer of the same upstream, if its targets are the
                // same (names, addresses, weights, order): continue its rotation. Otherwise start
                // at a random point, so a reload does not send the next request to target 0.
                let carried = prev.and_then(|p| {
                    let pi = p.config.upstreams.iter().position(|pu| pu.name == u.name)?;
                    let pu = p.config.upstreams.get(pi)?;
                    let same = pu.targets.len() == u.targets.len()
                        && pu
                            .targets
                            .iter()
                            .zip(&u.targets)
                            .all(|(a, b)| a.name == b.name && a.addr == b.addr);
                    let b = p.balancers.get(pi)?.try_borrow().ok()?;
                    (same && b.same_weights(weights())).then(|| b.clone())
                });
                RefCell::new(carried.unwrap_or_else(|| {
                    Swrr::new_spread(weights(), seed.rotate_left(i as u32 % 64))
                }))
            })
            .collect();
        let loads = target_loads(&config, inflight, workers);
        Snapshot {
            generation: compiled.generation,
            router: compiled.router.clone(),
            tls: compiled.tls.clone(),
            acme_http: compiled.acme_http.clone(),
            chains: compiled.chains.clone(),
            auth: compiled.auth.clone(),
            forward_slots: compiled
                .auth
                .forward
                .iter()
                .map(|f| pool.slot_for(f.conf.def.addr))
                .collect(),
            // The same credentials and auth plugins (a generation that only moved upstream or
            // auth-service addresses): the caches stay valid and are shared, so no burst of cold
            // bcrypt and signature checks follows.
            // Verified tokens also survive a reload that leaves the JWT credentials and plugin
            // instances alone (each costs a signature check to make again).
            jwt_caches: match prev.filter(|p| {
                Arc::ptr_eq(&p.auth.cache_id, &compiled.auth.cache_id)
                    || compiled.auth.jwt_caches_carry_over(&p.auth)
            }) {
                Some(p) => p.jwt_caches.clone(),
                None => compiled
                    .auth
                    .jwt
                    .iter()
                    .map(|j| RefCell::new(TokenCache::new(j.def.cache_size)))
                    .collect(),
            },
            // Verified passwords also survive a reload (SIGHUP) that leaves the basic-auth
            // credentials and instances alone: each entry costs a bcrypt check to make again,
            // tens of milliseconds, and every active client would need one at once.
            basic_caches: match prev.filter(|p| {
                Arc::ptr_eq(&p.auth.cache_id, &compiled.auth.cache_id)
                    || p.auth.basic_fingerprint == compiled.auth.basic_fingerprint
            }) {
                Some(p) => p.basic_caches.clone(),
                None => compiled
                    .auth
                    .basic_auth
                    .iter()
                    .map(|b| RefCell::new(DigestCache::new(b.def.cache_size)))
                    .collect(),
            },
            limiters: take_limiter(compiled, worker, prev.and_then(|p| p.limiters.as_deref()))
                .map(Rc::new),
            limit_board: compiled.limit_board.clone(),
            consumer_slots: compiled.consumer_slots.clone(),
            config,
            balancers,
            target_base,
            slots,
            health_slots,
            loads,
            metrics,
        }
    }

    /// The in-flight count of target `t` of upstream `u` (least_conn upstreams and targets with
    /// `max_conns` only).
    pub fn load(&self, u: usize, t: usize) -> Option<&Load> {
        self.loads.get(self.flat_target(u, t))?.as_ref()
    }

    /// Index of target `t` of upstream `u` in flat config order (metrics' target index).
    pub fn flat_target(&self, u: usize, t: usize) -> usize {
        self.target_base.get(u).map_or(usize::MAX, |b| b + t)
    }

    /// Pool slot of target `t` of upstream `u`.
    pub fn slot(&self, u: usize, t: usize) -> Option<usize> {
        let base = self.target_base.get(u)?;
        self.slots.get(base + t).copied()
    }

    /// `Shard::health` slot of target `t` of upstream `u` (`usize::MAX`, which no slot has, if out
    /// of range).
    #[inline]
    pub fn health_slot(&self, u: usize, t: usize) -> usize {
        self.target_base
            .get(u)
            .and_then(|b| self.health_slots.get(b + t))
            .copied()
            .unwrap_or(usize::MAX)
    }
}

/// This worker's limiter for `compiled` (each link is taken once, by its worker), inheriting the
/// counts of unchanged limits from `prev` (this worker's current set).
fn take_limiter(
    compiled: &Compiled,
    worker: usize,
    prev: Option<&LimiterSet>,
) -> Option<LimiterSet> {
    let link = match compiled.limiter_links.lock() {
        Ok(mut links) => links.get_mut(worker).and_then(Option::take),
        Err(poisoned) => poisoned.into_inner().get_mut(worker).and_then(Option::take),
    };
    link.map(|l| LimiterSet::with_previous(l, prev))
}

/// Counts as one `Shard::active` while alive: the drain waits for it. Made synchronously where work
/// starts (an accept loop, a TLS handshake about to be spawned), so a drain that begins before the
/// task first runs still waits for it.
pub struct Busy(Rc<Shard>);

impl Busy {
    pub fn new(shard: &Rc<Shard>) -> Busy {
        shard.active.set(shard.active.get() + 1);
        Busy(shard.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.active.set(self.0.active.get().saturating_sub(1));
    }
}

/// A connection waiting for its first bytes outside `proxy` (a TLS handshake, a redirect listener's
/// request): registered as a fresh idle wait while alive, so a drain ends a silent one after
/// `FRESH_GRACE` instead of waiting for its own timeout (the `Busy` its task holds keeps the drain
/// waiting until then).
pub struct FirstWait {
    shard: Rc<Shard>,
    slot: usize,
}

impl FirstWait {
    pub fn new(shard: &Rc<Shard>, fd: RawFd) -> FirstWait {
        let slot = shard.idle.register();
        shard.idle.set_idle(slot, fd);
        FirstWait {
            shard: shard.clone(),
            slot,
        }
    }
}

impl Drop for FirstWait {
    fn drop(&mut self) {
        self.shard.idle.release(self.slot);
    }
}

/// A generation this worker swapped out, and the pool and health slots it holds a use of: they are
/// released once the last request holding the snapshot is done (`Shard::release_retired`), so a
/// slot index is never reused while anything that knows it is running.
struct Retired {
    snap: Weak<Snapshot>,
    pool_slots: Vec<usize>,
    health_slots: Vec<usize>,
}

/// Everything a worker's connections share. Lives on one thread only.
pub struct Shard {
    worker: usize,
    /// How many workers the process runs (this worker's share of each `max_conns`).
    workers: usize,
    current: RefCell<Rc<Snapshot>>,
    /// Plain per-worker counters and histograms, flushed to the metrics thread by the control loop.
    pub metrics: WorkerMetrics,
    /// This worker's access log buffer (off unless the config has `[access_log]`).
    pub access_log: WorkerLog,
    /// Per-consumer request counts (opt-in), published to `consumer_board` on flush ticks.
    pub consumer_counts: ConsumerCounts,
    consumer_board: Arc<ConsumerBoard>,
    pub pool: Pool,
    /// Target health on this worker (passive ejections, active verdicts), by target identity.
    pub health: HealthTable,
    /// least_conn's requests in flight per target, by target identity.
    pub inflight: InFlightTable,
    /// Swapped-out generations whose slots are not released yet.
    retired: RefCell<Vec<Retired>>,
    /// The other workers' health channels (empty until `worker_main` sets them).
    health_peers: Vec<crossbeam_channel::Sender<HealthEvent>>,
    /// Set once SIGTERM/SIGINT arrived: finish in-flight requests, close idle connections.
    pub draining: Cell<bool>,
    /// Open client connections, and other work the drain waits for (see `Busy`).
    pub active: Cell<usize>,
    /// Connections waiting for their next request; drain wakes them.
    pub idle: IdleRegistry,
    /// Set when the drain deadline passed with work in flight: each connection task ends what it is
    /// doing (see `IdleRegistry::wake_tasks`), answers or logs it, and closes.
    pub cut: Cell<bool>,
    /// Connections idle long enough to have given up their task (see `proxy::parking`).
    pub parked: ParkingLot,
    /// Upstream read buffers, lent to a connection only while its request is upstream, so idle
    /// keep-alive connections hold no large buffer.
    bufs: RefCell<Vec<Vec<u8>>>,
    /// Per-request working memory, lent the same way.
    scratch: RefCell<Vec<Scratch>>,
    /// Gzip compressors, lent for one compressed response each (`plugins::compression`).
    pub gzip: crate::plugins::compression::Pool,
    /// Fewest buffers / scratches the pools held since the last `trim_pools`: that many sat unused
    /// the whole time.
    bufs_low: Cell<usize>,
    scratch_low: Cell<usize>,
}

impl Shard {
    /// `(worker, workers)`: this worker's index and how many the process runs.
    pub fn new(
        compiled: &Compiled,
        (worker, workers): (usize, usize),
        sink: MetricsSink,
        log: access_log::Link,
    ) -> Shard {
        let pool_def = compiled.config.server.pool;
        let pool = Pool::new(pool_def.max_idle, pool_def.idle_timeout);
        let metrics = WorkerMetrics::new(worker, compiled.layout.clone(), sink);
        let health = HealthTable::default();
        let inflight = InFlightTable::default();
        let snapshot = Snapshot::new(
            compiled,
            &pool,
            &health,
            &inflight,
            (worker, workers),
            None,
            metrics.current(),
        );
        let access_log = WorkerLog::new(log, worker);
        access_log.configure(compiled.config.access_log.as_ref());
        Shard {
            worker,
            workers,
            current: RefCell::new(Rc::new(snapshot)),
            metrics,
            access_log,
            consumer_counts: ConsumerCounts::new(compiled.consumer_board.slots()),
            consumer_board: compiled.consumer_board.clone(),
            pool,
            health,
            inflight,
            retired: RefCell::new(Vec::new()),
            health_peers: Vec::new(),
            draining: Cell::new(false),
            active: Cell::new(0),
            idle: IdleRegistry::default(),
            cut: Cell::new(false),
            parked: ParkingLot::default(),
            bufs: RefCell::new(Vec::new()),
            scratch: RefCell::new(Vec::new()),
            gzip: Default::default(),
            bufs_low: Cell::new(0),
            scratch_low: Cell::new(0),
        }
    }

    /// This worker's index (for log lines).
    pub fn worker(&self) -> usize {
        self.worker
    }

    /// Tells the other workers that this one ejected the target in health slot `slot` (rare: a
    /// breaker opening; a channel send each, never blocking).
    pub fn share_ejection(&self, slot: usize, e: Ejection) {
        let Some(key) = self.health.key_of(slot) else {
            return;
        };
        for peer in &self.health_peers {
            // A worker that exited (drain) no longer needs it.
            let _ = peer.send(HealthEvent::Ejected {
                key: key.clone(),
                until: e.until,
            });
        }
    }

    /// Per target of the current generation (flat config order): whether this worker skips it.
    fn skipped_by_target(&self) -> Vec<bool> {
        self.health
            .skipped_flags(&self.snapshot().health_slots, Instant::now())
    }

    /// The current config generation (an `Rc` clone: no atomics).
    pub fn snapshot(&self) -> Rc<Snapshot> {
        self.current.borrow().clone()
    }

    /// Swaps in a new generation; requests already running keep the snapshot they hold. Called from
    /// the control loop (never inside a request); the rate limiter's hand-over happens here.
    pub fn install(&self, compiled: &Compiled) {
        let pool_def = compiled.config.server.pool;
        self.pool
            .set_limits(pool_def.max_idle, pool_def.idle_timeout);
        let prev = self.snapshot();
        // The old generation's metric slots stay with the requests that hold `prev`.
        self.metrics.reconfigure(compiled.layout.clone());
        let snapshot = Snapshot::new(
            compiled,
            &self.pool,
            &self.health,
            &self.inflight,
            (self.worker, self.workers),
            Some(&prev),
            self.metrics.current(),
        );
        // The new snapshot took its uses of the slots it shares with `prev` above, so a slot both
        // use never drops to zero uses in between.
        self.retired.borrow_mut().push(Retired {
            snap: Rc::downgrade(&prev),
            pool_slots: prev
                .slots
                .iter()
                .chain(&prev.forward_slots)
                .copied()
                .collect(),
            health_slots: prev.health_slots.clone(),
        });
        drop(prev);
        // Passive checks turned off for an upstream: the targets they ejected take traffic again
        // at once, not at the end of a cooldown that no check will ever renew (found by a review).
        for (u, ups) in snapshot.config.upstreams.iter().enumerate() {
            if ups.health.passive.max_fails == 0 {
                for t in 0..ups.targets.len() {
                    self.health.forgive(snapshot.health_slot(u, t));
                }
            }
        }
        *self.current.borrow_mut() = Rc::new(snapshot);
        // Turned off: what is buffered is handed off now, before this worker acknowledges the
        // generation (the main thread closes the file only after every acknowledgement).
        self.access_log
            .configure(compiled.config.access_log.as_ref());
    }

    /// Releases the slots of swapped-out generations no request holds any more (control loop):
    /// idle connections to targets no live generation has are closed, and their health is
    /// forgotten.
    pub fn release_retired(&self) {
        let mut retired = self.retired.borrow_mut();
        retired.retain(|r| {
            if r.snap.strong_count() > 0 {
                return true;
            }
            for &slot in &r.pool_slots {
                self.pool.release(slot);
            }
            for &slot in &r.health_slots {
                self.health.release(slot);
            }
            false
        });
    }

    /// Idle pooled connections per target, indexed like `Layout::targets` (flat config order).
    pub fn idle_by_target(&self) -> Vec<usize> {
        let snap = self.snapshot();
        snap.slots
            .iter()
            .map(|&slot| self.pool.idle_count(slot))
            .collect()
    }

    /// An empty buffer with at least `min_capacity` (pooled when possible).
    pub fn take_buf(&self, min_capacity: usize) -> Vec<u8> {
        let want = min_capacity.max(UPSTREAM_BUF);
        let mut bufs = self.bufs.borrow_mut();
        let mut buf = bufs.pop().unwrap_or_default();
        self.bufs_low.set(self.bufs_low.get().min(bufs.len()));
        drop(bufs);
        if buf.capacity() < want {
            buf.reserve_exact(want);
        }
        buf
    }

    /// Request working memory (pooled; a fresh one starts with room for typical requests).
    pub fn take_scratch(&self) -> Scratch {
        let mut pool = self.scratch.borrow_mut();
        let scratch = pool.pop();
        self.scratch_low.set(self.scratch_low.get().min(pool.len()));
        drop(pool);
        scratch.unwrap_or_else(Scratch::with_capacity)
    }

    pub fn give_scratch(&self, scratch: Scratch) {
        let mut pool = self.scratch.borrow_mut();
        if scratch.reusable() && pool.len() < MAX_POOLED_BUFS {
            pool.push(scratch);
        }
    }

    /// Frees the pooled buffers and scratches that sat unused since the last call (the coldest: the
    /// pools are LIFO), so what a burst of concurrent requests took goes back once it is over; steady
    /// traffic keeps what it cycles through. The control loop's `mi_collect` then purges the pages
    /// that emptied. Control loop only, every `TRIM_TICKS`; costs nothing unless something was
    /// unused.
    fn trim_pools(&self) {
        let freed = drop_unused(&self.bufs, &self.bufs_low)
            + drop_unused(&self.scratch, &self.scratch_low)
            + self.gzip.trim();
        if freed > 0 {
            crate::debug!("pools trimmed worker={} freed={}", self.worker, freed);
        }
    }

    /// Returns a buffer to the pool (buffers lost to a cancelled operation come back empty and are dropped).
    pub fn give_buf(&self, mut buf: Vec<u8>) {
        let mut bufs = self.bufs.borrow_mut();
        if buf.capacity() >= UPSTREAM_BUF && bufs.len() < MAX_POOLED_BUFS {
            buf.clear();
            bufs.push(buf);
        }
    }
}

/// Drops the `low` bottom (least recently pooled) entries of a LIFO pool, which no taker reached
/// since `low` was last reset, and resets `low` to the new length; returns how many were dropped.
fn drop_unused<T>(pool: &RefCell<Vec<T>>, low: &Cell<usize>) -> usize {
    let Ok(mut pool) = pool.try_borrow_mut() else {
        return 0;
    };
    let unused = low.get().min(pool.len());
    pool.drain(..unused);
    low.set(pool.len());
    unused
}

/// How often the control loop trims the buffer pools (in control ticks: 5 s).
const TRIM_TICKS: u64 = 100;

/// Upstream read buffer size: holds a response head and a 16 KiB body in one read.
const UPSTREAM_BUF: usize = 32 * 1024;
const MAX_POOLED_BUFS: usize = 1024;

/// Which connections are idle (waiting in their own task with a read timeout for a request), by
/// socket, so draining can end their wait: `shutdown(SHUT_RD)` makes a pending read return EOF,
/// for plain and TLS connections alike. Parked connections are not here but in the parking lot
/// (a drain closes them at once). Slots are reused; no allocation once grown to the peak
/// connection count.
///
/// The drain ends these waits `FRESH_GRACE` after it began (`wake_all`), not at once: a request
/// may be on its way on any of them. A fresh connection (accepted as the drain began, or one of
/// the last a binary upgrade's old process accepted) is waiting for its first request, and a
/// keep-alive one that just got a response (written without `Connection: close` before the drain
/// began) for the next one, which a busy client sends microseconds later. Closing would lose that
/// request, POST included; within the grace it is served, with `Connection: close`. A plain
/// connection silent for the park threshold (0.5 s) is closed before that, as it parks.
#[derive(Default)]
pub struct IdleRegistry {
    /// Per slot: `BUSY`, `FREE`, or the fd of an idle connection.
    slots: RefCell<Vec<RawFd>>,
    /// Per slot: the waker of the connection's task (set once per active period), so the drain
    /// deadline can make it stop waiting (`wake_tasks`).
    wakers: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

/// How long the connections cut at the drain deadline get to write their 503 and log it.
const CUT_GRACE: Duration = Duration::from_millis(500);

/// How long a drain lets idle connections deliver a request (see `IdleRegistry`).
pub const FRESH_GRACE: Duration = Duration::from_secs(1);

const BUSY: RawFd = -1;
const FREE: RawFd = -2;

impl IdleRegistry {
    pub fn register(&self) -> usize {
        let mut slots = self.slots.borrow_mut();
        if let Some(i) = self.free.borrow_mut().pop() {
            if let Some(s) = slots.get_mut(i) {
                *s = BUSY;
                return i;
            }
        }
        slots.push(BUSY);
        slots.len() - 1
    }

    fn set(&self, slot: usize, fd: RawFd) {
        if let Some(s) = self.slots.borrow_mut().get_mut(slot) {
            *s = fd;
        }
    }

    pub fn release(&self, slot: usize) {
        self.set(slot, FREE);
        self.clear_waker(slot);
        self.free.borrow_mut().push(slot);
    }

    /// Forgets the task of `slot`'s connection: its active period ended. A waker keeps its task's
    /// memory alive (the whole connection future), so a parked connection must not leave one.
    pub fn clear_waker(&self, slot: usize) {
        if let Some(w) = self.wakers.borrow_mut().get_mut(slot) {
            *w = None;
        }
    }

    /// Idle, with the connection's own read timeout running.
    pub fn set_idle(&self, slot: usize, fd: RawFd) {
        self.set(slot, fd);
    }

    pub fn set_busy(&self, slot: usize) {
        self.set(slot, BUSY);
    }

    /// Notes the task serving the connection in `slot` (one waker clone per active period, not per
    /// request).
    pub fn set_waker(&self, slot: usize, waker: &Waker) {
        let mut wakers = self.wakers.borrow_mut();
        if wakers.len() <= slot {
            wakers.resize(slot + 1, None);
        }
        if let Some(w) = wakers.get_mut(slot) {
            *w = Some(waker.clone());
        }
    }

    /// Wakes every connection task, so each one sees `Shard::cut` whatever it is waiting for (an
    /// upstream that does not answer, a quiet tunnel).
    pub fn wake_tasks(&self) {
        let wakers: Vec<Waker> = self.wakers.borrow().iter().flatten().cloned().collect();
        for w in wakers {
            w.wake();
        }
    }

    /// Ends every idle wait: the connections see EOF and close.
    pub fn wake_all(&self) {
        for &fd in self.slots.borrow().iter() {
            if fd >= 0 {
                // SAFETY: the fd belongs to a live connection task of this thread (slots are reset
                // before a connection's socket is closed); shutdown does not close it.
                unsafe {
                    libc::shutdown(fd, libc::SHUT_RD);
                }
            }
        }
    }
}

type UringRuntime = monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>;

/// Submission queue entries of a worker's ring (the completion queue gets twice as many). They bound
/// only what one event-loop turn submits, not operations in flight (the kernel queues overflowing
/// completions, IORING_FEAT_NODROP), and a full queue costs one extra `io_uring_enter`. The rings are
/// kernel memory mapped into the process and fully resident: 4096 entries were 404 KiB of RSS per
/// worker, 1024 are ~100 KiB.
const RING_ENTRIES: u32 = 1024;

/// Builds this thread's io_uring runtime. `lean`: the ring is only ever entered from this thread, so
/// the kernel may defer completion work until we ask for events (SINGLE_ISSUER + DEFER_TASKRUN, 6.1+)
/// instead of interrupting the worker for each one (COOP_TASKRUN). Measured: -5..-10% gateway-core
/// CPU per proxied request (loadtest A/B, /small at c=1, 64, 256).
fn uring_runtime(lean: bool) -> std::io::Result<UringRuntime> {
    let mut ring = io_uring::IoUring::builder();
    if lean {
        ring.setup_coop_taskrun()
            .setup_single_issuer()
            .setup_defer_taskrun();
    }
    monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(RING_ENTRIES)
        .uring_builder(ring)
        .enable_timer()
        .build()
}

/// What a worker thread is given at spawn.
pub struct WorkerSpec {
    pub index: usize,
    /// CPU to pin to, if pinning is possible.
    pub cpu: Option<usize>,
    /// Each with what it speaks (plain, TLS, https redirect).
    pub listeners: Vec<(std::net::TcpListener, ListenKind)>,
    pub compiled: Arc<Compiled>,
    pub control: Arc<Control>,
    /// Where this worker's metric flushes go.
    pub metrics: MetricsSink,
    /// This worker's ends of the access log writer's channels.
    pub access_log: access_log::Link,
    /// New config generations; each is acknowledged on `acks` with (worker index, generation).
    pub reloads: crossbeam_channel::Receiver<Arc<Compiled>>,
    pub acks: crossbeam_channel::Sender<(usize, u64)>,
    /// Active health-check transitions from the prober thread.
    pub health_events: crossbeam_channel::Receiver<HealthEvent>,
    /// The other workers' health channels: this worker's passive ejections go there.
    pub health_peers: Vec<crossbeam_channel::Sender<HealthEvent>>,
    pub use_uring: bool,
}

/// Thread body: pin, build the runtime, serve until drained.
pub fn run(spec: WorkerSpec) {
    if let Some(cpu) = spec.cpu {
        if let Err(e) = pin_to_cpu(cpu) {
            crate::warn!(
                "pin failed worker={} cpu={} error=\"{}\"",
                spec.index,
                cpu,
                e
            );
        }
    }
    let index = spec.index;
    let result = if spec.use_uring {
        uring_runtime(true)
            .or_else(|e| {
                crate::warn!(
                    "io_uring without DEFER_TASKRUN (kernel older than 6.1?) worker={} error=\"{}\"",
                    index,
                    e
                );
                uring_runtime(false)
            })
            .map(|mut rt| rt.block_on(worker_main(spec)))
    } else {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .map(|mut rt| rt.block_on(worker_main(spec)))
    };
    if let Err(e) = result {
        crate::error!("worker runtime failed worker={} error=\"{}\"", index, e);
    }
}

async fn worker_main(mut spec: WorkerSpec) {
    let mut shard = Shard::new(
        &spec.compiled,
        // The other workers' health channels, plus this one.
        (spec.index, spec.health_peers.len() + 1),
        spec.metrics.clone(),
        spec.access_log.clone(),
    );
    shard.health_peers = std::mem::take(&mut spec.health_peers);
    let shard = Rc::new(shard);
    let accept_cancel = Canceller::new();
    let mut listening: Vec<RawFd> = Vec::new();
    for (std_listener, kind) in std::mem::take(&mut spec.listeners) {
        let port = std_listener.local_addr().map(|a| a.port()).unwrap_or(0);
        match TcpListener::from_std(std_listener) {
            Ok(listener) => {
                listening.push(listener.as_raw_fd());
                monoio::spawn(accept_loop(
                    listener,
                    port,
                    kind,
                    Busy::new(&shard),
                    accept_cancel.handle(),
                ));
            }
            Err(e) => crate::error!(
                "listener setup failed worker={} error=\"{}\"",
                spec.index,
                e
            ),
        }
    }
    monoio::spawn(limiter_sync(shard.clone()));
    monoio::spawn(parking::watch(shard.clone()));
    control_loop(&shard, &spec, accept_cancel, &listening).await;
}

/// Exchanges this worker's rate-limit counts with the reconciler every `sync_interval` (never blocks:
/// channel sends and non-blocking receives only). Between two sends the worker picks up views every
/// `VIEW_PICKUP`: the reconciler answers every arrival at once (other workers' batches, and in
/// cluster mode the Redis totals), so the totals it decides on are at most a millisecond older than
/// the reconciler's instead of up to a whole interval. A pickup is a `try_recv` per millisecond, off
/// the request path.
async fn limiter_sync(shard: Rc<Shard>) {
    const VIEW_PICKUP: Duration = Duration::from_millis(1);
    while !shard.draining.get() {
        let Some(limiters) = shard.snapshot().limiters.clone().filter(|l| !l.is_empty()) else {
            monoio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let interval = limiters.sync_interval();
        let deadline = Instant::now() + interval;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left <= VIEW_PICKUP {
                monoio::time::sleep(left).await;
                break;
            }
            monoio::time::sleep(VIEW_PICKUP).await;
            limiters.apply_views(crate::limit::now_ms());
        }
        limiters.sync(crate::limit::now_ms());
    }
}

/// Polls the control flags; on drain stops accepting, closes idle connections and waits for
/// in-flight requests up to `drain_timeout`. `listening`: the fds of this worker's listeners, open
/// until drain starts (their accept tasks hold them and end only through `accept_cancel`).
async fn control_loop(
    shard: &Rc<Shard>,
    spec: &WorkerSpec,
    accept_cancel: Canceller,
    listening: &[RawFd],
) {
    let mut ticks: u64 = 0;
    while !spec.control.drain.load(Ordering::Acquire) {
        monoio::time::sleep(CONTROL_TICK).await;
        ticks += 1;
        if ticks % 20 == 0 {
            shard.release_retired();
            shard.pool.reap();
        }
        if ticks % COLLECT_TICKS == 0 {
            // mimalloc returns freed pages to the OS only from its collects, once they have been
            // free for its purge delay (`server::tune_allocator`: 250 ms): an idle worker (say,
            // after 10,000 connections parked) would otherwise keep their freed request state
            // resident. So memory a burst freed is back with the OS within ~1.3 s of its end
            // (parking after 500 ms, then the delay and this period). Not forced: a forced collect
            // purges everything at once, even what steady traffic is about to reuse.
            // SAFETY: plain FFI call without arguments to the linked allocator.
            unsafe { libmimalloc_sys::mi_collect(false) };
        }
        // Lines wait at most `flush_interval` (plus a tick) before they reach the writer.
        shard.access_log.tick(Instant::now());
        if ticks % 4 == 0 {
            // Parked connections' keep-alive deadlines hold to within ~200 ms.
            shard.parked.sweep(shard, Instant::now());
        }
        if ticks % TRIM_TICKS == 0 {
            shard.trim_pools();
        }
        // Active-check verdicts (rare: transitions only), then ejections whose cooldown is over.
        while let Ok(ev) = spec.health_events.try_recv() {
            match ev {
                HealthEvent::Active { key, healthy } => shard.health.set_active(key, healthy),
                HealthEvent::Ejected { key, until } => {
                    // Only where this worker's generation checks that upstream passively (a
                    // message from before a reload that turned it off changes nothing).
                    let snap = shard.snapshot();
                    let passive = snap
                        .config
                        .upstreams
                        .iter()
                        .any(|u| u.name == key.0 && u.health.passive.max_fails > 0);
                    if passive {
                        let e = Ejection {
                            until,
                            shared: true,
                        };
                        shard.health.apply_ejection(&key, e, Instant::now());
                    }
                }
            }
        }
        shard.health.sweep(Instant::now());
        let flush_every = shard.snapshot().config.metrics.flush_interval.as_millis()
            / CONTROL_TICK.as_millis().max(1);
        // Also on the first tick: `/health` counts a worker as serving once it has flushed, so a
        // new process (a start, a binary upgrade) reports healthy within a tick, not an interval.
        let flush = |shard: &Shard| {
            shard.metrics.set_skipped(shard.skipped_by_target());
            shard.metrics.flush(&shard.idle_by_target());
            let snap = shard.snapshot();
            if let Some(limiters) = &snap.limiters {
                snap.limit_board.publish(spec.index, limiters);
            }
            shard
                .consumer_board
                .publish(spec.index, &shard.consumer_counts);
        };
        if ticks == 1 || ticks % (flush_every.max(1) as u64) == 0 {
            flush(shard);
        }
        // Never blocks: a new generation is swapped in between two ticks.
        while let Ok(compiled) = spec.reloads.try_recv() {
            shard.install(&compiled);
            // Flushed (and the new rate-limit board published) before the reload is confirmed:
            // `/health` judges each worker's last flush against the new generation's
            // `flush_interval` from now on, so a shorter one (60 s to 10 s) would otherwise count
            // this worker as not serving until its next flush, up to the new interval away.
            flush(shard);
            let _ = spec.acks.send((spec.index, compiled.generation));
        }
    }
    shard.draining.set(true);
    // Leave the SO_REUSEPORT group now, before anything is awaited. Cancelling the accept is not
    // enough: a worker with nothing in flight returns at once, and its runtime ends before the
    // accept task drops the listener. The socket then stays listening until the process exits, and
    // the kernel keeps handing it new connections that nobody accepts: clients hang for the whole
    // drain instead of being refused and retrying elsewhere. shutdown(SHUT_RD) on a listening socket
    // closes it for new connections (they are refused, like nginx closing its listeners) and wakes
    // the pending accept.
    // After a binary upgrade the sockets are the new process's too: shutting them down would refuse
    // its connections. It accepts from them, so cancelling our accepts is enough.
    if !spec.control.handed_over.load(Ordering::SeqCst) {
        for &fd in listening {
            // SAFETY: the fd is open: its accept task has not run since `draining` was set (no await
            // in between), and it drops the listener only after seeing `draining` or the cancel.
            unsafe {
                libc::shutdown(fd, libc::SHUT_RD);
            }
        }
    }
    let _ = accept_cancel.cancel();
    shard.parked.close_all(shard);
    let start = Instant::now();
    let deadline = start + shard.snapshot().config.server.drain_timeout;
    let mut fresh_woken = false;
    while shard.active.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(10)).await;
        if !fresh_woken && start.elapsed() >= FRESH_GRACE {
            shard.idle.wake_all();
            fresh_woken = true;
        }
    }
    let cut = shard.active.get();
    if cut > 0 {
        // What an operator must know after a stop: these clients got a 503 and a close, a cut-off
        // response or a closed tunnel, not the answer they waited for.
        crate::warn!(
            "drain timed out worker={} timeout_ms={} connections_cut={cut}",
            spec.index,
            shard.snapshot().config.server.drain_timeout.as_millis()
        );
        // Each request still in flight stops where it is, answers 503 if nothing was sent yet, and
        // gets its access-log line (before, the runtime's end dropped them without a trace).
        shard.cut.set(true);
        shard.idle.wake_tasks();
        let until = Instant::now() + CUT_GRACE;
        while shard.active.get() > 0 && Instant::now() < until {
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    shard.metrics.flush_last(&shard.idle_by_target());
    // Every request of this worker that will ever complete has completed (or the drain deadline
    // passed): hand off the lines, so the writer has them before the main thread stops it.
    shard.access_log.finish();
}

/// Accepts until the drain begins. `busy` keeps the drain waiting until this loop has ended, and a
/// connection the kernel handed over as the drain began (an accept that completed before its
/// cancel) is served like any other, not dropped: after a binary upgrade the new process serves
/// the rest of the queue, so nothing accepted here may be lost.
async fn accept_loop(
    listener: TcpListener,
    port: u16,
    kind: ListenKind,
    busy: Busy,
    cancel: monoio::io::CancelHandle,
) {
    let shard = busy.0.clone();
    loop {
        let accepted = listener.cancelable_accept(cancel.clone()).await;
        let draining = shard.draining.get();
        match accepted {
            Ok((stream, peer)) => {
                // Nagle + delayed ACK would stall split head/body writes by 40 ms (DESIGN.md §9).
                let _ = stream.set_nodelay(true);
                match kind {
                    ListenKind::Http => {
                        let fd = stream.as_raw_fd();
                        let listener = crate::proxy::Listener { port, tls: false };
                        monoio::spawn(crate::proxy::serve(
                            stream,
                            fd,
                            peer,
                            listener,
                            shard.clone(),
                            false,
                        ));
                    }
                    ListenKind::Https => {
                        let busy = Busy::new(&shard);
                        let serve = crate::tls::accept::serve(stream, peer, port, shard.clone());
                        monoio::spawn(async move {
                            serve.await;
                            drop(busy);
                        });
                    }
                    ListenKind::RedirectHttps { status, https_port } => {
                        let busy = Busy::new(&shard);
                        let serve = crate::tls::redirect::serve(
                            stream,
                            peer,
                            status,
                            https_port,
                            shard.clone(),
                        );
                        monoio::spawn(async move {
                            serve.await;
                            drop(busy);
                        });
                    }
                }
                if draining {
                    break;
                }
            }
            Err(e) => {
                if draining {
                    break;
                }
                accept_error(&e).await;
            }
        }
    }
    drop(listener);
    drop(busy);
}

/// Out of descriptors or memory: back off instead of spinning; other errors are per-connection.
/// The warning is logged at most once per `ACCEPT_WARN_EVERY` per worker (`warn_every!`), with
/// how many backoffs it stands for as `suppressed=N` (it was 20 lines a second while descriptors
/// ran out).
async fn accept_error(e: &std::io::Error) {
    const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(5);
    match e.raw_os_error() {
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM) => {
            crate::warn_every!(
                ACCEPT_WARN_EVERY,
                "accept failed, backing off error=\"{}\"",
                e
            );
            monoio::time::sleep(Duration::from_millis(50)).await;
        }
        _ => crate::debug!("accept failed error=\"{}\"", e),
    }
}

/// CPUs this process may run on (respects `taskset`), in ascending order.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// `workers = "auto"`: one per CPU this process may run on, but no more than its cgroup's CPU
/// quota allows (a container limited to 2 CPUs on a 64-core host gets 2 workers, not 64 workers
/// throttled in turn; found by a review). The quota is the smallest `cpu.max` on the way from the
/// process's cgroup (v2) to the root, rounded up.
pub fn auto_workers(cpus: &[usize]) -> usize {
    let n = cpus.len().max(1);
    match cgroup_cpu_quota() {
        Some(q) if q < n => q,
        _ => n,
    }
}

/// CPUs the cgroup (v2) quota allows this process, if any limits it (read at start, on the main
/// thread).
fn cgroup_cpu_quota() -> Option<usize> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    // cgroup v2: the one line `0::/path`.
    let path = cgroups.lines().find_map(|l| l.strip_prefix("0::"))?;
    if path.split('/').any(|part| part == "..") {
        return None;
    }
    let mut dir = std::path::PathBuf::from("/sys/fs/cgroup");
    dir.push(path.trim_start_matches('/'));
    let root = std::path::Path::new("/sys/fs/cgroup");
    let mut least: Option<usize> = None;
    loop {
        if let Some(q) = std::fs::read_to_string(dir.join("cpu.max"))
            .ok()
            .and_then(|t| quota_cpus(&t))
        {
            least = Some(least.map_or(q, |l| l.min(q)));
        }
        if dir == root || !dir.pop() || !dir.starts_with(root) {
            break;
        }
    }
    least
}

/// The CPUs a `cpu.max` line (`QUOTA PERIOD`, or `max PERIOD`) allows, rounded up, at least 1;
/// `None` for no limit or an unreadable line.
pub fn quota_cpus(cpu_max: &str) -> Option<usize> {
    let mut parts = cpu_max.split_whitespace();
    let quota: u64 = parts.next()?.parse().ok()?;
    let period: u64 = parts.next()?.parse().ok().filter(|&p| p > 0)?;
    usize::try_from(quota.div_ceil(period).max(1)).ok()
}

fn pin_to_cpu(cpu: usize) -> std::io::Result<()> {
    // SAFETY: plain data set, applied to the calling thread only (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Binds one SO_REUSEPORT listener for `addr`. Workers each bind their own; the kernel spreads
/// connections across them.
pub fn bind_reuseport(addr: SocketAddr, v6only: bool) -> std::io::Result<std::net::TcpListener> {
    let socket = listen_socket(addr, v6only)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.set_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// A TCP socket for listening on `addr`, not bound yet: SO_REUSEADDR (as std's bind: connections
/// in TIME_WAIT from a previous run do not count) and, with `v6only`, IPv6-only (beside an IPv4
/// listener on the same port, `0.0.0.0:80` + `[::]:80`, a dual-stack `[::]` would take the IPv4
/// port too and fail to bind). The listeners and `server`'s already-taken probe are made alike.
pub fn listen_socket(addr: SocketAddr, v6only: bool) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if v6only {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    Ok(socket)
}

/// Steers the new connections of `listener`'s SO_REUSEPORT group to the group's first `n` sockets,
/// picked at random (a classic BPF program on the group: `random % n`; it replaces any program an
/// earlier process attached). The first `n` are the workers' own sockets, in the order they joined
/// the group; sockets beyond them are those a binary upgrade to fewer workers kept (see
/// `server::bind_all`), which then get no new connections. Were the group's order ever different,
/// connections would only spread unevenly: every socket of the group is accepted from.
pub fn steer_reuseport(listener: impl std::os::fd::AsFd, n: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let n = u32::try_from(n.max(1)).unwrap_or(u32::MAX);
    let op = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let mut code = [
        // A = a random u32 (an ancillary load, not packet data)
        op(
            libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
            (libc::SKF_AD_OFF + libc::SKF_AD_RANDOM) as u32,
        ),
        op(libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K, n),
        op(libc::BPF_RET | libc::BPF_A, 0),
    ];
    let prog = libc::sock_fprog {
        len: code.len() as u16,
        filter: code.as_mut_ptr(),
    };
    // SAFETY: setsockopt on an open socket with a valid program that outlives the call (the
    // kernel copies it).
    let rc = unsafe {
        libc::setsockopt(
            listener.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_cpu_max_lines() {
        assert_eq!(quota_cpus("max 100000\n"), None);
        assert_eq!(quota_cpus("200000 100000\n"), Some(2));
        assert_eq!(quota_cpus("150000 100000"), Some(2), "rounded up");
        assert_eq!(quota_cpus("50000 100000"), Some(1), "at least one");
        assert_eq!(quota_cpus("100000 0"), None);
        assert_eq!(quota_cpus("garbage"), None);
        assert_eq!(quota_cpus(""), None);
    }

    #[test]
    fn steering_sends_new_connections_to_the_first_n_sockets_of_the_group() {
        let first = bind_reuseport("127.0.0.1:0".parse().expect("addr"), false).expect("bind");
        let addr = first.local_addr().expect("addr");
        let group = [
            first,
            bind_reuseport(addr, false).expect("bind"),
            bind_reuseport(addr, false).expect("bind"),
        ];
        steer_reuseport(&group[0], 2).expect("attach");
        let clients: Vec<std::net::TcpStream> = (0..60)
            .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
            .collect();
        // Loopback handshakes complete in softirq context, possibly just after `connect` returns.
        std::thread::sleep(Duration::from_millis(100));
        let accepted: Vec<usize> = group
            .iter()
            .map(|l| std::iter::from_fn(|| l.accept().ok()).count())
            .collect();
        assert_eq!(
            accepted.iter().sum::<usize>(),
            clients.len(),
            "{accepted:?}"
        );
        assert_eq!(
            accepted[2], 0,
            "the surplus socket got connections: {accepted:?}"
        );
        assert!(accepted[0] > 0 && accepted[1] > 0, "{accepted:?}");
    }

    #[test]
    fn drop_unused_frees_what_no_taker_reached() {
        let pool = RefCell::new(vec![1, 2, 3, 4, 5]);
        let low = Cell::new(5);
        // Takers went down to 2 entries left: the bottom 2 were never used.
        low.set(2);
        assert_eq!(drop_unused(&pool, &low), 2);
        assert_eq!(*pool.borrow(), vec![3, 4, 5], "the hot (top) entries stay");
        assert_eq!(low.get(), 3);
        // Untouched for a whole interval: everything goes.
        assert_eq!(drop_unused(&pool, &low), 3);
        assert!(pool.borrow().is_empty());
        assert_eq!(drop_unused(&pool, &low), 0);
        // Steady use that empties the pool each time keeps it whole.
        pool.borrow_mut().extend([7, 8]);
        low.set(0);
        assert_eq!(drop_unused(&pool, &low), 0);
        assert_eq!(pool.borrow().len(), 2);
    }
}
