//! Cluster policy: the reconciler's exchange with Redis, pipelined in one round trip.
//!
//! The reconciler builds each exchange (`ClusterLink::prepare`) and applies its replies
//! (`ClusterLink::apply`); the round trip itself runs on a Redis thread (`ringgate-redis`), one per
//! endpoint (url, credentials, certificates and timeout: `RedisThreads`), so a Redis that is slow
//! or hangs (accepts, never answers) delays only the cluster totals, never the merging of the
//! workers' counts on this machine. Every cluster instance naming the same endpoint shares its
//! thread and its one connection: a hundred cluster limits cost one connection per process, not a
//! hundred. The thread sends the exchanges queued for it together, back to back, and reads their
//! replies in order: one round trip for all of them, so sharing adds no wait per instance. At most
//! one exchange per instance is in flight; counts merged meanwhile are pushed by the next one. No
//! request ever waits on Redis.
//!
//! Per round and cluster instance, for every window whose node total changed since the last
//! exchange: `HSET <window key> <field> <node total>` + `EXPIRE`, then `HVALS` (the reply, summed,
//! is the cluster total; `field` is the node id and a number per link, see `ClusterLink::field`); `HVALS` alone for recently active keys with nothing to push (to learn
//! other nodes' counts); and every second a heartbeat in the sorted set `<prefix>:nodes` (`ZADD`
//! node id with the wall clock, `ZREMRANGEBYSCORE` entries older than `NODE_TTL_MS`, `ZCARD`) so
//! each node knows how many share the limit. Window keys are
//! `<prefix>:rl:<instance id>:<fw|sw>:<period>:<window index>:<limiter key>`, hashes of
//! per-node absolute counts that expire two periods after their window (the sliding window reads the
//! previous one). The node id is the limiter's for the process lifetime, so a reload neither looks
//! like a new node nor resets this node's field of a limit it keeps.
//! Absolute per-node counts make every write idempotent: a pipeline that timed out (say, Redis was
//! stopped) and is applied later, or is sent again after reconnecting, can never count twice.
//!
//! Redis may come back empty (restarted without persistence, or failed over): after any failure
//! the next exchanges write every window total and bucket this node has again (`REASSERT_MAX` keys
//! per exchange), whether or not it changed; a bucket that is gone is recreated from the pushing
//! node's last view of its level rather than full. Otherwise each node would see only its own counts
//! until its next admission, and together they would admit up to the limit again.
//!
//! On any error (connect, timeout, reply) the connection is dropped, the instance is unhealthy, and
//! reconnecting is tried every `RETRY_MS`; merged counts stay pending and are pushed on recovery, so
//! totals converge by themselves. While unhealthy, `override_for` tells workers what to do. Until
//! the first exchange has an outcome the instance counts as healthy (its totals are this node's
//! own), so `"closed"` does not reject at start-up; the first failure is logged like any other.

use std::sync::atomic::Ordering;

use crossbeam_channel::{Receiver, Sender};
use redis::Value;

use super::bucket::Bucket;
use super::msg::Override;
use super::reconciler::{GState, SharedStats};
use super::table::KeyTable;
use super::InstanceDef;
use crate::config::model::{Algorithm, PeriodLimit, RedisDef, RedisFailure, RedisTls};

/// How long after a failure the next connection attempt is made.
pub const RETRY_MS: u64 = 500;
/// Heartbeat period and how long a silent node still counts.
pub const HEARTBEAT_MS: u64 = 1_000;
pub const NODE_TTL_MS: u64 = 5_000;
/// Keys seen this recently are refreshed from Redis every round even without local changes.
const REFRESH_RECENT_MS: u64 = 2_000;
/// At most this many keys refreshed per round (the most recently active).
const REFRESH_MAX: usize = 4_096;
/// Numbers the links made in this process (see `ClusterLink::field`).
static LINKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// At most this many keys' totals written again per exchange after a failure.
const REASSERT_MAX: usize = 4_096;

pub struct ClusterLink {
    def: RedisDef,
    node_id: String,
    /// This link's field in window and bucket hashes: the node id and a number of its own. A limit
    /// that reloads took out and put back (its counts restarted here) writes a new field, so the
    /// totals the earlier one wrote still count until their window ends.
    field: String,
    inst_id: String,
    /// The instance's slot: tags the replies of its exchanges.
    slot: u32,
    health: Health,
    retry_at: u64,
    last_heartbeat: u64,
    nodes: u32,
    key_buf: Vec<u8>,
    /// The exchange on its way (at most one), and a number for the next one.
    in_flight: Option<InFlight>,
    seq: u64,
    /// Set by a failure: the next exchange lists every key's slot in `reassert`.
    reassert_all: bool,
    /// Slots whose window totals are still to be written again since the last failure.
    reassert: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    /// No exchange has had an outcome yet.
    Unknown,
    Up,
    Down,
}

/// An exchange sent to the Redis thread, and what it was built from.
struct InFlight {
    seq: u64,
    /// The Redis thread it went to (see `RedisThreads::forget`).
    line: u64,
    /// When it was sent (wall ms): one that takes far longer than its timeouts allow is given
    /// up (its thread died), so the instance goes on.
    sent_ms: u64,
    ops: Vec<Op>,
    /// The slots whose pending counts it pushes (back to `push` if it fails).
    slots: Vec<u32>,
}

/// One pipelined round trip for the Redis thread: exchange `seq` of the instance at `slot`.
pub struct Job {
    slot: u32,
    seq: u64,
    /// Every command's reply is read (nothing is `ignore`d), one `Op` each.
    pipe: redis::Pipeline,
}

/// A Redis url and the credentials for it (and, for `rediss://`, the certificates): what a
/// connection is made for, so what a Redis thread serves.
/// The timeout is part of it: exchanges sent together share one round trip, so a limit with a
/// short timeout must not make one with a longer timeout fail (each timeout gets its own thread).
#[derive(Clone, PartialEq, Eq)]
struct Endpoint {
    url: String,
    username: Option<String>,
    password: Option<crate::config::model::Secret>,
    tls: Option<crate::config::model::RedisTls>,
    timeout: std::time::Duration,
}

impl Endpoint {
    fn of(def: &RedisDef) -> Endpoint {
        Endpoint {
            url: def.url.clone(),
            username: def.username.clone(),
            password: def.password.clone(),
            tls: def.tls.clone(),
            timeout: def.timeout,
        }
    }

    fn is(&self, def: &RedisDef) -> bool {
        self.url == def.url
            && self.username == def.username
            && self.password == def.password
            && self.tls == def.tls
            && self.timeout == def.timeout
    }
}

/// Slots with counts still to be pushed to Redis, each listed once, in the order they came.
#[derive(Default)]
pub struct PushList {
    slots: Vec<u32>,
    listed: std::collections::HashSet<u32>,
}

impl PushList {
    pub fn add(&mut self, slot: u32) {
        if self.listed.insert(slot) {
            self.slots.push(slot);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    fn contains(&self, slot: u32) -> bool {
        self.listed.contains(&slot)
    }

    /// The slots, in order, leaving the list empty.
    fn take(&mut self) -> Vec<u32> {
        self.listed.clear();
        std::mem::take(&mut self.slots)
    }
}

/// The reconciler's Redis threads, one per endpoint, each started by the first exchange for it.
/// The job queue is unbounded because it is bounded anyway: an instance has at most one exchange
/// in flight, so a thread never has more jobs queued than instances share it.
pub struct RedisThreads {
    /// Endpoint, job queue, and a number for the thread (never reused).
    lines: Vec<(Endpoint, Sender<Job>, u64)>,
    started: u64,
    replies: Sender<Reply>,
}

impl RedisThreads {
    /// Threads whose replies go to `replies`.
    pub fn new(replies: Sender<Reply>) -> RedisThreads {
        RedisThreads {
            lines: Vec::new(),
            started: 0,
            replies,
        }
    }

    /// Hands `job` to the thread of `def`'s endpoint (a reload that changes it moves to another),
    /// starting the thread first if there is none; returns the thread's number.
    fn send(&mut self, def: &RedisDef, job: Job) -> Result<u64, &'static str> {
        let at = match self.lines.iter().position(|(to, _, _)| to.is(def)) {
            Some(at) => at,
            None => {
                let (tx, rx) = crossbeam_channel::unbounded::<Job>();
                let replies = self.replies.clone();
                let to = Endpoint::of(def);
                let ends = to.clone();
                let started = std::thread::Builder::new()
                    .name("ringgate-redis".to_owned())
                    .spawn(move || redis_thread(&ends, rx, replies));
                if let Err(e) = started {
                    crate::error!("rate limit redis thread failed to start error=\"{}\"", e);
                    return Err("redis thread failed to start");
                }
                self.started += 1;
                self.lines.push((to, tx, self.started));
                self.lines.len() - 1
            }
        };
        let Some((_, tx, line)) = self.lines.get(at) else {
            return Err("redis thread ended");
        };
        let line = *line;
        if tx.send(job).is_err() {
            // The thread is gone (it panicked): the next exchange starts another.
            self.lines.swap_remove(at);
            return Err("redis thread ended");
        }
        Ok(line)
    }

    /// Lets go of thread `line` (if it is still the one for its endpoint), which ends once its
    /// queue is empty; the next exchange for that endpoint starts a new one. For an exchange that
    /// never came back (the thread is stuck or gone).
    fn forget(&mut self, line: u64) {
        self.lines.retain(|(_, _, l)| *l != line);
    }

    /// Keeps only the threads of endpoints one of `defs` names (after a reload): the others end
    /// once their queues are empty, closing their connections.
    pub fn retain_used(&mut self, defs: &[&RedisDef]) {
        self.lines
            .retain(|(to, _, _)| defs.iter().any(|d| to.is(d)));
    }
}

/// What the Redis thread sends back: the replies to job `seq` of the instance at `slot`.
pub struct Reply {
    pub slot: u32,
    seq: u64,
    result: Result<Vec<Value>, String>,
}

/// What one pipelined reply belongs to. `key` is the limiter key the op was built for: the slot
/// may hold another key by the time the reply is in (evicted meanwhile), and then it is dropped.
enum Op {
    /// A write whose reply says nothing (`HSET`, `EXPIRE`, `ZADD`, `ZREMRANGEBYSCORE`).
    Skip,
    /// This node's total `total` of window `idx` was written, `sent` of it new.
    Push {
        slot: u32,
        key: Vec<u8>,
        period: usize,
        idx: u64,
        total: u64,
        sent: u64,
    },
    Get {
        slot: u32,
        key: Vec<u8>,
        period: usize,
        idx: u64,
    },
    Nodes,
    /// Token bucket: the script's reply (level after applying `sent` tokens of this node's).
    PushBucket {
        slot: u32,
        key: Vec<u8>,
        sent: u64,
    },
    /// Token bucket: `HMGET t ts` (the level other nodes left).
    GetBucket {
        slot: u32,
        key: Vec<u8>,
    },
}

/// Applies one node's consumption to a shared token bucket, idempotently: the node sends its
/// absolute total (`ARGV[2]`) and what it consumed since its last successful push (`ARGV[3]`, used
/// only when the hash has no field for the node yet, i.e. first push or expired). A push applied
/// twice (a timed-out pipeline that Redis ran late, then retried) adds nothing the second time.
/// Refill is `rate_per_ms` per ms of the pushing node's clock (never backwards), capped at `burst`;
/// the level never goes below `-burst`. A bucket that is gone (expired, or Redis restarted empty)
/// starts from the pushing node's last view of the level (`ARGV[8]` at `ARGV[9]`: full for a new
/// key). Returns `{level, at_ms}` (level as a string: Lua numbers would be truncated to integers in
/// the reply).
const BUCKET_SCRIPT: &str = r#"
local h = KEYS[1]
local f = 'n:' .. ARGV[1]
local total = tonumber(ARGV[2])
local seen = redis.call('HGET', h, f)
local add
if seen then add = total - tonumber(seen) else add = tonumber(ARGV[3]) end
if add < 0 then add = 0 end
local now = tonumber(ARGV[4])
local rate = tonumber(ARGV[5])
local burst = tonumber(ARGV[6])
local t = tonumber(redis.call('HGET', h, 't') or ARGV[8])
local ts = tonumber(redis.call('HGET', h, 'ts') or ARGV[9])
if now > ts then
  t = t + (now - ts) * rate
  ts = now
end
t = math.max(math.min(burst, math.max(t, -burst)) - add, -burst)
redis.call('HSET', h, 't', tostring(t), 'ts', ts, f, total)
redis.call('PEXPIRE', h, ARGV[7])
return {tostring(t), ts}
"#;

impl ClusterLink {
    /// A link for the instance at `slot` (its exchanges' replies are tagged with it).
    pub fn new(def: RedisDef, node_id: &str, inst_id: &str, slot: u32) -> ClusterLink {
        ClusterLink {
            def,
            node_id: node_id.to_owned(),
            field: format!("{node_id}.{}", LINKS.fetch_add(1, Ordering::Relaxed)),
            inst_id: inst_id.to_owned(),
            slot,
            health: Health::Unknown,
            retry_at: 0,
            last_heartbeat: 0,
            nodes: 1,
            key_buf: Vec::new(),
            in_flight: None,
            seq: 0,
            reassert_all: false,
            reassert: Vec::new(),
        }
    }

    /// New settings for the same url and prefix (a reload); the next exchange uses them.
    pub fn set_def(&mut self, def: RedisDef) {
        self.def = def;
    }

    /// Where this instance's exchanges go.
    pub fn def(&self) -> &RedisDef {
        &self.def
    }

    /// Nodes sharing the limit at the last heartbeat (1 until known).
    pub fn nodes(&self) -> u32 {
        self.nodes
    }

    /// `<prefix>:tb:<instance id>:<limiter key>`: a hash with the level (`t`), its time (`ts`) and
    /// each node's absolute consumption (`n:<node id>`). The rate and burst are not in the name: a
    /// reload that changes them keeps the level (`limit::same_counts`), on every node. (Before
    /// 2026-11-24 the name carried them, `tb:<instance id>:<rate>-<burst>:<limiter key>`; limiter
    /// keys start with a letter tag, so the two forms never collide, and a rolling upgrade splits a
    /// bucket between them until every node runs the new one.)
    fn bucket_key(&mut self, key: &[u8]) -> Vec<u8> {
        self.key_buf.clear();
        self.key_buf.extend_from_slice(self.def.prefix.as_bytes());
        self.key_buf.extend_from_slice(b":tb:");
        self.key_buf.extend_from_slice(self.inst_id.as_bytes());
        self.key_buf.push(b':');
        self.key_buf.extend_from_slice(key);
        self.key_buf.clone()
    }

    /// What workers do now (no override while Redis answers, or before it was ever asked).
    pub fn override_for(&self, policy: RedisFailure) -> Override {
        if self.health != Health::Down {
            return Override::None;
        }
        match policy {
            RedisFailure::Open => Override::Open,
            RedisFailure::Closed => Override::Closed,
            RedisFailure::Local => Override::Share(self.nodes.max(1)),
        }
    }

    /// `<prefix>:rl:<instance id>:<fw|sw>:<period>:<window index>:<limiter key>`. The algorithm
    /// is part of the name: a changed algorithm (which restarts this node's counts, see
    /// `limit::same_counts`) starts fresh cluster-wide too, instead of overwriting this node's
    /// field of the old algorithm's hash. The limit is not: a reload that changes only the limit
    /// keeps the counts, on every node, and nodes briefly on different limits (a staggered
    /// reload) share one count, each refusing at its own limit. (Before 2026-11-24 the name
    /// carried the limit, `…:<period>-<limit>:…`; a rolling upgrade splits a window's count
    /// between the two forms until every node runs the new one.)
    fn window_key(&mut self, sliding: bool, lim: &PeriodLimit, idx: u64, key: &[u8]) -> Vec<u8> {
        self.key_buf.clear();
        self.key_buf.extend_from_slice(self.def.prefix.as_bytes());
        self.key_buf.extend_from_slice(b":rl:");
        self.key_buf.extend_from_slice(self.inst_id.as_bytes());
        self.key_buf
            .extend_from_slice(if sliding { b":sw:" } else { b":fw:" });
        self.key_buf.extend_from_slice(lim.period.key().as_bytes());
        self.key_buf.push(b':');
        self.key_buf.extend_from_slice(idx.to_string().as_bytes());
        self.key_buf.push(b':');
        self.key_buf.extend_from_slice(key);
        self.key_buf.clone()
    }

    fn fail(&mut self, now: u64, stats: &SharedStats, why: &str) {
        if self.health != Health::Down {
            crate::warn!(
                "rate limit redis unavailable instance={} error=\"{}\"",
                self.inst_id,
                why
            );
        }
        self.health = Health::Down;
        self.retry_at = now + RETRY_MS;
        // Redis may come back without what was written (see the module's invariants).
        self.reassert_all = true;
        stats.redis_healthy.store(false, Ordering::Relaxed);
        stats.redis_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Builds the next exchange and hands it to the Redis thread, unless one is on its way or a
    /// retry is not due. `push` lists slots with pending counts; they go with the exchange (and
    /// come back to `push` if it fails).
    pub fn prepare(
        &mut self,
        inst: &InstanceDef,
        table: &mut KeyTable<GState>,
        push: &mut PushList,
        now: u64,
        stats: &SharedStats,
        threads: &mut RedisThreads,
    ) {
        if let Some(f) = &self.in_flight {
            // An exchange may wait for the batch running when it arrived, then run in the next:
            // two connects and two replies late, each bounded by the timeout. Much longer means
            // the Redis thread is gone (a panic). Give the exchange up; a late reply is ignored by
            // seq.
            let bound = 4 * self.def.timeout.as_millis() as u64 + 5_000;
            if now.saturating_sub(f.sent_ms) <= bound {
                return;
            }
            threads.forget(f.line);
            let slots = self.in_flight.take().map(|f| f.slots).unwrap_or_default();
            self.fail(now, stats, "redis exchange never came back");
            for slot in slots {
                push.add(slot);
            }
            return;
        }
        if self.health == Health::Down && now < self.retry_at {
            return;
        }
        let limits = &inst.def.limits;
        let sliding = inst.def.algorithm == Algorithm::SlidingWindow;
        let mut pipe = redis::pipe();
        let mut ops = Vec::new();
        let bucket_ttl_ms = inst.def.bucket.map_or(10_000, |d| {
            ((2.0 * d.burst as f64 / d.rate_per_ms).ceil() as u64).max(10_000)
        });
        // After a failure, once Redis answers again (not while each retry would fail): every
        // key's window totals and bucket views, a chunk per exchange (a bucket that is still there
        // takes nothing from a push of 0 tokens; a lost one is recreated from this node's view of
        // its level). A slot with pending counts too is pushed whole, previous window included.
        let mut forced: Vec<u32> = Vec::new();
        if self.health == Health::Up {
            if self.reassert_all {
                self.reassert_all = false;
                self.reassert.clear();
                table.recent(0, usize::MAX, &mut self.reassert);
                // Popped from the end: the most recently active first.
                self.reassert.reverse();
            }
            let keep = self.reassert.len().saturating_sub(REASSERT_MAX);
            forced = self.reassert.split_off(keep);
            forced.sort_unstable();
        }
        let is_forced = |slot: u32| forced.binary_search(&slot).is_ok();
        let slots = push.slots.iter().map(|&s| (s, is_forced(s)));
        let rest = forced.iter().filter(|&&s| !push.contains(s));
        // Slots whose totals this exchange reads back anyway (no separate refresh read).
        let mut written: Vec<u32> = Vec::new();
        for (slot, force) in slots.chain(rest.map(|&s| (s, true))) {
            if let (Some(bdef), Some((key, GState::Bucket(g)))) =
                (inst.def.bucket, table.entry_mut(slot))
            {
                let (key, g) = (key.to_vec(), *g);
                let k = self.bucket_key(&key);
                // This node's last view of the level, before what it consumed since.
                let view = (g.all.tokens + g.pending as f64).min(bdef.burst as f64);
                pipe.cmd("EVAL")
                    .arg(BUCKET_SCRIPT)
                    .arg(1)
                    .arg(&k[..])
                    .arg(&self.field)
                    .arg(g.node_total)
                    .arg(g.pending)
                    .arg(now)
                    .arg(bdef.rate_per_ms)
                    .arg(bdef.burst)
                    .arg(bucket_ttl_ms)
                    .arg(view.to_string())
                    .arg(g.all.at_ms);
                ops.push(Op::PushBucket {
                    slot,
                    key,
                    sent: g.pending,
                });
                written.push(slot);
                continue;
            }
            let Some((key, GState::Windows(wins))) = table.entry_mut(slot) else {
                continue;
            };
            let key = key.to_vec();
            let wins = wins.to_vec();
            for (p, w) in wins.iter().enumerate() {
                let Some(lim) = limits.get(p) else { continue };
                let ttl = 2 * lim.period.millis() / 1000 + 1;
                for (changed, total, idx) in [
                    (w.pending, w.node_curr, w.idx),
                    (w.pending_prev, w.node_prev, w.idx.wrapping_sub(1)),
                ] {
                    if changed == 0 && !(force && total > 0) {
                        continue;
                    }
                    let k = self.window_key(sliding, lim, idx, &key);
                    pipe.cmd("HSET").arg(&k[..]).arg(&self.field).arg(total);
                    pipe.cmd("EXPIRE").arg(&k[..]).arg(ttl);
                    ops.extend([Op::Skip, Op::Skip]);
                    pipe.cmd("HVALS").arg(&k[..]);
                    ops.push(Op::Push {
                        slot,
                        key: key.clone(),
                        period: p,
                        idx,
                        total,
                        sent: changed,
                    });
                    written.push(slot);
                }
            }
        }
        written.sort_unstable();
        let mut recent = Vec::new();
        table.recent(
            now.saturating_sub(REFRESH_RECENT_MS),
            REFRESH_MAX,
            &mut recent,
        );
        for slot in recent {
            if push.contains(slot) || written.binary_search(&slot).is_ok() {
                continue;
            }
            if let (Some(_), Some((key, GState::Bucket(_)))) =
                (inst.def.bucket, table.entry_mut(slot))
            {
                let key = key.to_vec();
                let k = self.bucket_key(&key);
                pipe.cmd("HMGET").arg(&k[..]).arg("t").arg("ts");
                ops.push(Op::GetBucket { slot, key });
                continue;
            }
            let Some((key, GState::Windows(wins))) = table.entry_mut(slot) else {
                continue;
            };
            let key = key.to_vec();
            let idxs: Vec<u64> = wins.iter().map(|w| w.idx).collect();
            for (p, idx) in idxs.into_iter().enumerate() {
                let Some(lim) = limits.get(p) else { continue };
                let wanted = if sliding {
                    vec![idx, idx.wrapping_sub(1)]
                } else {
                    vec![idx]
                };
                for idx in wanted {
                    let k = self.window_key(sliding, lim, idx, &key);
                    pipe.cmd("HVALS").arg(&k[..]);
                    ops.push(Op::Get {
                        slot,
                        key: key.clone(),
                        period: p,
                        idx,
                    });
                }
            }
        }
        if now >= self.last_heartbeat + HEARTBEAT_MS || self.health != Health::Up {
            let nodes_key = format!("{}:nodes", self.def.prefix);
            pipe.cmd("ZADD").arg(&nodes_key).arg(now).arg(&self.node_id);
            pipe.cmd("ZREMRANGEBYSCORE")
                .arg(&nodes_key)
                .arg("-inf")
                .arg(now.saturating_sub(NODE_TTL_MS));
            ops.extend([Op::Skip, Op::Skip]);
            pipe.cmd("ZCARD").arg(&nodes_key);
            ops.push(Op::Nodes);
        }
        if ops.is_empty() {
            return;
        }
        self.seq += 1;
        let job = Job {
            slot: self.slot,
            seq: self.seq,
            pipe,
        };
        let line = match threads.send(&self.def, job) {
            Ok(line) => line,
            Err(why) => {
                self.fail(now, stats, why);
                return;
            }
        };
        self.in_flight = Some(InFlight {
            seq: self.seq,
            line,
            sent_ms: now,
            ops,
            slots: push.take(),
        });
    }

    /// Applies the replies of the exchange in flight (`reply` of another one is ignored).
    pub fn apply(
        &mut self,
        reply: Reply,
        table: &mut KeyTable<GState>,
        push: &mut PushList,
        now: u64,
        stats: &SharedStats,
    ) {
        if self.in_flight.as_ref().is_none_or(|f| f.seq != reply.seq) {
            return;
        }
        let Some(flight) = self.in_flight.take() else {
            return;
        };
        let replies = match reply.result {
            Ok(r) if r.len() == flight.ops.len() => r,
            failed => {
                let why = failed
                    .err()
                    .unwrap_or_else(|| "unexpected number of replies".into());
                self.fail(now, stats, &why);
                // Their counts are still pending: the next exchange pushes them.
                for slot in flight.slots {
                    push.add(slot);
                }
                return;
            }
        };
        for (op, reply) in flight.ops.iter().zip(&replies) {
            let n = sum(reply);
            match op {
                Op::Push {
                    slot,
                    key,
                    period,
                    idx,
                    total,
                    sent,
                } => {
                    if let Some(w) = window(table, *slot, key, *period, *idx) {
                        // The sum includes the total written; counts merged since come on top.
                        let since = w.node.saturating_sub(*total);
                        let seen = n.saturating_add(since).max(w.node);
                        // A re-assert (nothing new sent) into a Redis that came back empty reads
                        // a partial sum until the other nodes have written theirs again: it must
                        // not lower what this node knew.
                        *w.all = if *sent == 0 { seen.max(*w.all) } else { seen };
                        *w.pending = w.pending.saturating_sub(*sent);
                        table.mark_dirty(*slot);
                    }
                }
                Op::Get {
                    slot,
                    key,
                    period,
                    idx,
                } => {
                    if let Some(w) = window(table, *slot, key, *period, *idx) {
                        // Redis has what every node pushed; this node's counts merged since the
                        // exchange was built are not there yet.
                        let seen = n.saturating_add(*w.pending);
                        if seen > *w.all {
                            *w.all = seen;
                            table.mark_dirty(*slot);
                        }
                    }
                }
                Op::PushBucket { slot, key, sent } => {
                    if let (Some(g), Some((t, ts))) = (bucket(table, *slot, key), level(reply)) {
                        g.pending = g.pending.saturating_sub(*sent);
                        // Redis' level has what was sent; what was consumed since comes off it.
                        g.all = Bucket {
                            tokens: t - g.pending as f64,
                            at_ms: ts,
                        };
                        table.mark_dirty(*slot);
                    }
                }
                Op::GetBucket { slot, key } => {
                    if let (Some(g), Some((t, ts))) = (bucket(table, *slot, key), level(reply)) {
                        let fresh = Bucket {
                            tokens: t - g.pending as f64,
                            at_ms: ts,
                        };
                        if fresh != g.all {
                            g.all = fresh;
                            table.mark_dirty(*slot);
                        }
                    }
                }
                Op::Skip => {}
                Op::Nodes => {
                    self.nodes = u32::try_from(n.max(1)).unwrap_or(u32::MAX);
                    self.last_heartbeat = now;
                    stats.nodes.store(u64::from(self.nodes), Ordering::Relaxed);
                }
            }
        }
        if self.health == Health::Down {
            crate::info!("rate limit redis available instance={}", self.inst_id);
        }
        self.health = Health::Up;
        stats.redis_healthy.store(true, Ordering::Relaxed);
    }
}

/// The Redis thread of one endpoint: sends the exchanges queued for it together on its
/// connection (connecting first when it has none: at the start and after an error) and sends each
/// its replies. Ends when no instance uses its endpoint any more (the job queue closes) or the
/// reconciler is gone (the reply queue closes).
fn redis_thread(to: &Endpoint, jobs: Receiver<Job>, replies: Sender<Reply>) {
    let mut conn: Option<redis::Connection> = None;
    let mut batch: Vec<Job> = Vec::new();
    while let Ok(first) = jobs.recv() {
        batch.clear();
        batch.push(first);
        // Whatever else waits goes in the same round trip: each instance has at most one
        // exchange queued, so this is bounded by the instances sharing the endpoint.
        batch.extend(jobs.try_iter());
        let results = match run_batch(&mut conn, to, &batch) {
            Ok(results) => results,
            Err(why) => {
                conn = None;
                vec![Err(why); batch.len()]
            }
        };
        for (job, result) in batch.iter().zip(results) {
            let reply = Reply {
                slot: job.slot,
                seq: job.seq,
                result,
            };
            if replies.send(reply).is_err() {
                return;
            }
        }
    }
}

/// Runs `batch` (jobs for `to`) in one round trip: every job's commands back to back,
/// then their replies in order, each job's own. `Err`: the connection failed (no connection, a
/// timeout, a broken socket), and every job with it; an error reply fails only its own job.
fn run_batch(
    conn: &mut Option<redis::Connection>,
    to: &Endpoint,
    batch: &[Job],
) -> Result<Vec<Result<Vec<Value>, String>>, String> {
    let why = |e: redis::RedisError| {
        // A read timeout surfaces as EAGAIN ("Resource temporarily unavailable").
        if e.is_timeout() {
            format!("no answer within the timeout ({:?})", to.timeout)
        } else {
            e.to_string()
        }
    };
    let c = match conn {
        Some(c) => c,
        None => conn.insert(connect(to).map_err(why)?),
    };
    c.set_read_timeout(Some(to.timeout)).map_err(why)?;
    c.set_write_timeout(Some(to.timeout)).map_err(why)?;
    for job in batch {
        c.send_packed_command(&job.pipe.get_packed_pipeline())
            .map_err(why)?;
    }
    // Read reply by reply, stopping at the first failure: a Redis that stopped answering costs
    // one timeout, not one per command still due.
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        let mut values = Vec::with_capacity(job.pipe.len());
        let mut refused = None;
        while values.len() < job.pipe.len() {
            match c.recv_response().map_err(why)? {
                // RESP3 out-of-band data, not a reply.
                Value::Push { .. } => continue,
                Value::ServerError(e) => {
                    refused.get_or_insert_with(|| {
                        format!("{} {}", e.code(), e.details().unwrap_or_default())
                    });
                    values.push(Value::Nil);
                }
                v => values.push(v),
            }
        }
        results.push(match refused {
            Some(e) => Err(e),
            None => Ok(values),
        });
    }
    Ok(results)
}

fn connect(to: &Endpoint) -> redis::RedisResult<redis::Connection> {
    use redis::IntoConnectionInfo;
    let mut info = to.url.as_str().into_connection_info()?;
    if let Some(p) = &to.password {
        // AUTH on connect (redis-rs sends it before anything else).
        let mut settings = info.redis_settings().clone().set_password(&p.0);
        if let Some(u) = &to.username {
            settings = settings.set_username(u);
        }
        info = info.set_redis_settings(settings);
    }
    let client = match &to.tls {
        // The system's roots and no client certificate: what `rediss://` alone means.
        None
        | Some(RedisTls {
            ca_pem: None,
            client: None,
        }) => redis::Client::open(info)?,
        Some(tls) => redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: tls
                    .client
                    .as_ref()
                    .map(|(cert, key)| redis::ClientTlsConfig {
                        client_cert: cert.clone(),
                        client_key: key.0.clone().into_bytes(),
                    }),
                root_cert: tls.ca_pem.clone(),
            },
        )?,
    };
    client.get_connection_with_timeout(to.timeout)
}

/// A window's fields, matched by window index: `all` (best known total), `node` (this node's),
/// `pending` (not pushed yet). `None` when the slot holds another key by now or the window is gone.
struct WinFields<'a> {
    all: &'a mut u64,
    node: u64,
    pending: &'a mut u64,
}

fn window<'a>(
    table: &'a mut KeyTable<GState>,
    slot: u32,
    key: &[u8],
    period: usize,
    idx: u64,
) -> Option<WinFields<'a>> {
    let (k, state) = table.entry_mut(slot)?;
    if k != key {
        return None;
    }
    let GState::Windows(wins) = state else {
        return None;
    };
    let w = wins.get_mut(period)?;
    if w.idx == idx {
        Some(WinFields {
            all: &mut w.curr,
            node: w.node_curr,
            pending: &mut w.pending,
        })
    } else if w.idx == idx.wrapping_add(1) {
        Some(WinFields {
            all: &mut w.prev,
            node: w.node_prev,
            pending: &mut w.pending_prev,
        })
    } else {
        None
    }
}

fn bucket<'a>(
    table: &'a mut KeyTable<GState>,
    slot: u32,
    key: &[u8],
) -> Option<&'a mut super::reconciler::GBucket> {
    match table.entry_mut(slot)? {
        (k, GState::Bucket(g)) if k == key => Some(g),
        _ => None,
    }
}

/// A bucket level reply: `[level, at_ms]` (script) or `[t, ts]` (HMGET); `None` when absent.
fn level(v: &Value) -> Option<(f64, u64)> {
    let Value::Array(items) = v else {
        return None;
    };
    let num = |v: &Value| -> Option<f64> {
        match v {
            Value::Int(n) => Some(*n as f64),
            Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse::<f64>().ok(),
            _ => None,
        }
    };
    let t = num(items.first()?)?;
    let ts = num(items.get(1)?)?;
    (t.is_finite() && ts >= 0.0).then_some((t, ts as u64))
}

/// An integer reply (ZCARD), a number as a bulk string, or an array of them (HVALS) summed;
/// anything else counts as 0.
fn sum(v: &Value) -> u64 {
    match v {
        Value::Int(n) => u64::try_from(*n).unwrap_or(0),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0),
        Value::Array(items) => items.iter().fold(0u64, |acc, i| acc.saturating_add(sum(i))),
        _ => 0,
    }
}
