//! Cluster policy: the reconciler's exchange with Redis, once per round, pipelined in one round
//! trip. Only the reconciler thread runs this; no request ever waits on Redis.
//!
//! Per round and cluster instance, for every window whose node total changed since the last
//! exchange: `HSET <window key> <node id> <node total>` + `EXPIRE`, then `HVALS` (the reply, summed,
//! is the cluster total); `HVALS` alone for recently active keys with nothing to push (to learn
//! other nodes' counts); and every second a heartbeat in the sorted set `<prefix>:nodes` (`ZADD`
//! node id with the wall clock, `ZREMRANGEBYSCORE` entries older than `NODE_TTL_MS`, `ZCARD`) so
//! each node knows how many share the limit. Window keys are
//! `<prefix>:rl:<instance id>:<fw|sw>:<period>-<limit>:<window index>:<limiter key>`, hashes of
//! per-node absolute counts that expire two periods after their window (the sliding window reads the
//! previous one). The node id is the limiter's for the process lifetime, so a reload neither looks
//! like a new node nor resets this node's field.
//! Absolute per-node counts make every write idempotent: a pipeline that timed out (say, Redis was
//! stopped) and is applied later, or is sent again after reconnecting, can never count twice.
//!
//! On any error (connect, timeout, reply) the connection is dropped, the instance is unhealthy, and
//! reconnecting is tried every `RETRY_MS`; merged counts stay pending and are pushed on recovery, so
//! totals converge by themselves. While unhealthy, `override_for` tells workers what to do.

use std::sync::atomic::Ordering;

use redis::Value;

use super::bucket::Bucket;
use super::msg::Override;
use super::reconciler::{GState, SharedStats};
use super::table::KeyTable;
use super::InstanceDef;
use crate::config::model::{Algorithm, BucketDef, PeriodLimit, RedisDef, RedisFailure};

/// How long after a failure the next connection attempt is made.
pub const RETRY_MS: u64 = 500;
/// Heartbeat period and how long a silent node still counts.
pub const HEARTBEAT_MS: u64 = 1_000;
pub const NODE_TTL_MS: u64 = 5_000;
/// Keys seen this recently are refreshed from Redis every round even without local changes.
const REFRESH_RECENT_MS: u64 = 2_000;
/// At most this many keys refreshed per round (the most recently active).
const REFRESH_MAX: usize = 4_096;

pub struct ClusterLink {
    def: RedisDef,
    node_id: String,
    inst_id: String,
    conn: Option<redis::Connection>,
    healthy: bool,
    retry_at: u64,
    last_heartbeat: u64,
    nodes: u32,
    key_buf: Vec<u8>,
}

/// What one pipelined reply belongs to.
enum Op {
    Push {
        slot: u32,
        period: usize,
        prev: bool,
    },
    Get {
        slot: u32,
        period: usize,
        prev: bool,
    },
    Nodes,
    /// Token bucket: the script's reply (level after applying this node's consumption).
    PushBucket {
        slot: u32,
    },
    /// Token bucket: `HMGET t ts` (the level other nodes left).
    GetBucket {
        slot: u32,
    },
}

/// Applies one node's consumption to a shared token bucket, idempotently: the node sends its
/// absolute total (`ARGV[2]`) and what it consumed since its last successful push (`ARGV[3]`, used
/// only when the hash has no field for the node yet, i.e. first push or expired). A push applied
/// twice (a timed-out pipeline that Redis ran late, then retried) adds nothing the second time.
/// Refill is `rate_per_ms` per ms of the pushing node's clock (never backwards), capped at `burst`;
/// the level never goes below `-burst`. Returns `{level, at_ms}` (level as a string: Lua numbers
/// would be truncated to integers in the reply).
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
local t = tonumber(redis.call('HGET', h, 't') or burst)
local ts = tonumber(redis.call('HGET', h, 'ts') or now)
if now > ts then
  t = math.min(burst, t + (now - ts) * rate)
  ts = now
end
t = math.max(t - add, -burst)
redis.call('HSET', h, 't', tostring(t), 'ts', ts, f, total)
redis.call('PEXPIRE', h, ARGV[7])
return {tostring(t), ts}
"#;

impl ClusterLink {
    pub fn new(def: RedisDef, node_id: &str, inst_id: &str) -> ClusterLink {
        ClusterLink {
            def,
            node_id: node_id.to_owned(),
            inst_id: inst_id.to_owned(),
            conn: None,
            healthy: false,
            retry_at: 0,
            last_heartbeat: 0,
            nodes: 1,
            key_buf: Vec::new(),
        }
    }

    /// New settings for the same url and prefix (a reload).
    pub fn set_def(&mut self, def: RedisDef) {
        if let Some(c) = &self.conn {
            let _ = c.set_read_timeout(Some(def.timeout));
            let _ = c.set_write_timeout(Some(def.timeout));
        }
        self.def = def;
    }

    /// Nodes sharing the limit at the last heartbeat (1 until known).
    pub fn nodes(&self) -> u32 {
        self.nodes
    }

    /// `<prefix>:tb:<instance id>:<tokens per second>-<burst>:<limiter key>`: a hash with the
    /// level (`t`), its time (`ts`) and each node's absolute consumption (`n:<node id>`).
    fn bucket_key(&mut self, def: &BucketDef, key: &[u8]) -> Vec<u8> {
        self.key_buf.clear();
        self.key_buf.extend_from_slice(self.def.prefix.as_bytes());
        self.key_buf.extend_from_slice(b":tb:");
        self.key_buf.extend_from_slice(self.inst_id.as_bytes());
        self.key_buf.push(b':');
        let shape = format!("{}-{}", def.rate_per_ms * 1000.0, def.burst);
        self.key_buf.extend_from_slice(shape.as_bytes());
        self.key_buf.push(b':');
        self.key_buf.extend_from_slice(key);
        self.key_buf.clone()
    }

    /// What workers do now (no override while Redis answers).
    pub fn override_for(&self, policy: RedisFailure) -> Override {
        if self.healthy {
            return Override::None;
        }
        match policy {
            RedisFailure::Open => Override::Open,
            RedisFailure::Closed => Override::Closed,
            RedisFailure::Local => Override::Share(self.nodes.max(1)),
        }
    }

    /// `<prefix>:rl:<instance id>:<fw|sw>:<period>-<limit>:<window index>:<limiter key>`. The
    /// algorithm and limit are part of the name so that a changed limit (which restarts this node's
    /// counts, see `limit::same_counts`) starts fresh cluster-wide too, instead of overwriting this
    /// node's field of the old limit's hash.
    fn window_key(&mut self, sliding: bool, lim: &PeriodLimit, idx: u64, key: &[u8]) -> Vec<u8> {
        self.key_buf.clear();
        self.key_buf.extend_from_slice(self.def.prefix.as_bytes());
        self.key_buf.extend_from_slice(b":rl:");
        self.key_buf.extend_from_slice(self.inst_id.as_bytes());
        self.key_buf
            .extend_from_slice(if sliding { b":sw:" } else { b":fw:" });
        self.key_buf.extend_from_slice(lim.period.key().as_bytes());
        self.key_buf.push(b'-');
        self.key_buf
            .extend_from_slice(lim.limit.to_string().as_bytes());
        self.key_buf.push(b':');
        self.key_buf.extend_from_slice(idx.to_string().as_bytes());
        self.key_buf.push(b':');
        self.key_buf.extend_from_slice(key);
        self.key_buf.clone()
    }

    fn fail(&mut self, now: u64, stats: &SharedStats, why: &str) {
        if self.healthy || self.conn.is_some() {
            crate::warn!(
                "rate limit redis unavailable instance={} error=\"{}\"",
                self.inst_id,
                why
            );
        }
        self.healthy = false;
        self.conn = None;
        self.retry_at = now + RETRY_MS;
        stats.redis_healthy.store(false, Ordering::Relaxed);
        stats.redis_errors.fetch_add(1, Ordering::Relaxed);
    }

    fn connect(&mut self) -> redis::RedisResult<()> {
        let client = redis::Client::open(self.def.url.as_str())?;
        let conn = client.get_connection_with_timeout(self.def.timeout)?;
        conn.set_read_timeout(Some(self.def.timeout))?;
        conn.set_write_timeout(Some(self.def.timeout))?;
        self.conn = Some(conn);
        Ok(())
    }

    /// One exchange. `push` lists slots with pending counts; it is drained on success.
    pub fn round(
        &mut self,
        inst: &InstanceDef,
        table: &mut KeyTable<GState>,
        push: &mut Vec<u32>,
        queued: &mut std::collections::HashSet<u32>,
        now: u64,
        stats: &SharedStats,
    ) {
        if self.conn.is_none() {
            if now < self.retry_at {
                return;
            }
            if let Err(e) = self.connect() {
                self.fail(now, stats, &e.to_string());
                return;
            }
        }
        let limits = &inst.def.limits;
        let sliding = inst.def.algorithm == Algorithm::SlidingWindow;
        let mut pipe = redis::pipe();
        let mut ops = Vec::new();
        let bucket_ttl_ms = inst.def.bucket.map_or(10_000, |d| {
            ((2.0 * d.burst as f64 / d.rate_per_ms).ceil() as u64).max(10_000)
        });
        for &slot in push.iter() {
            if let (Some(bdef), Some((key, GState::Bucket(g)))) =
                (inst.def.bucket, table.entry_mut(slot))
            {
                let (key, g) = (key.to_vec(), *g);
                let k = self.bucket_key(&bdef, &key);
                pipe.cmd("EVAL")
                    .arg(BUCKET_SCRIPT)
                    .arg(1)
                    .arg(&k[..])
                    .arg(&self.node_id)
                    .arg(g.node_total)
                    .arg(g.pending)
                    .arg(now)
                    .arg(bdef.rate_per_ms)
                    .arg(bdef.burst)
                    .arg(bucket_ttl_ms);
                ops.push(Op::PushBucket { slot });
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
                for (prev, changed, total, idx) in [
                    (false, w.pending, w.node_curr, w.idx),
                    (true, w.pending_prev, w.node_prev, w.idx.wrapping_sub(1)),
                ] {
                    if changed == 0 {
                        continue;
                    }
                    let k = self.window_key(sliding, lim, idx, &key);
                    pipe.cmd("HSET")
                        .arg(&k[..])
                        .arg(&self.node_id)
                        .arg(total)
                        .ignore();
                    pipe.cmd("EXPIRE").arg(&k[..]).arg(ttl).ignore();
                    pipe.cmd("HVALS").arg(&k[..]);
                    ops.push(Op::Push {
                        slot,
                        period: p,
                        prev,
                    });
                }
            }
        }
        let mut recent = Vec::new();
        table.recent(
            now.saturating_sub(REFRESH_RECENT_MS),
            REFRESH_MAX,
            &mut recent,
        );
        for slot in recent {
            if queued.contains(&slot) {
                continue;
            }
            if let (Some(bdef), Some((key, GState::Bucket(_)))) =
                (inst.def.bucket, table.entry_mut(slot))
            {
                let key = key.to_vec();
                let k = self.bucket_key(&bdef, &key);
                pipe.cmd("HMGET").arg(&k[..]).arg("t").arg("ts");
                ops.push(Op::GetBucket { slot });
                continue;
            }
            let Some((key, GState::Windows(wins))) = table.entry_mut(slot) else {
                continue;
            };
            let key = key.to_vec();
            let idxs: Vec<u64> = wins.iter().map(|w| w.idx).collect();
            for (p, idx) in idxs.into_iter().enumerate() {
                let Some(lim) = limits.get(p) else { continue };
                let k = self.window_key(sliding, lim, idx, &key);
                pipe.cmd("HVALS").arg(&k[..]);
                ops.push(Op::Get {
                    slot,
                    period: p,
                    prev: false,
                });
                if sliding {
                    let k = self.window_key(sliding, lim, idx.wrapping_sub(1), &key);
                    pipe.cmd("HVALS").arg(&k[..]);
                    ops.push(Op::Get {
                        slot,
                        period: p,
                        prev: true,
                    });
                }
            }
        }
        if now >= self.last_heartbeat + HEARTBEAT_MS || !self.healthy {
            let nodes_key = format!("{}:nodes", self.def.prefix);
            pipe.cmd("ZADD")
                .arg(&nodes_key)
                .arg(now)
                .arg(&self.node_id)
                .ignore();
            pipe.cmd("ZREMRANGEBYSCORE")
                .arg(&nodes_key)
                .arg("-inf")
                .arg(now.saturating_sub(NODE_TTL_MS))
                .ignore();
            pipe.cmd("ZCARD").arg(&nodes_key);
            ops.push(Op::Nodes);
        }
        if ops.is_empty() {
            return;
        }
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let replies: Vec<Value> = match pipe.query(conn) {
            Ok(r) => r,
            Err(e) => {
                self.fail(now, stats, &e.to_string());
                return;
            }
        };
        if replies.len() != ops.len() {
            self.fail(now, stats, "unexpected number of replies");
            return;
        }
        for (op, reply) in ops.iter().zip(&replies) {
            let n = sum(reply);
            match *op {
                Op::Push { slot, period, prev } => {
                    if let Some(w) = window(table, slot, period) {
                        // The sum includes this node's total just written.
                        if prev {
                            w.prev = n.max(w.node_prev);
                            w.pending_prev = 0;
                        } else {
                            w.curr = n.max(w.node_curr);
                            w.pending = 0;
                        }
                        table.mark_dirty(slot);
                    }
                }
                Op::Get { slot, period, prev } => {
                    if let Some(w) = window(table, slot, period) {
                        let target = if prev { &mut w.prev } else { &mut w.curr };
                        if n > *target {
                            *target = n;
                            table.mark_dirty(slot);
                        }
                    }
                }
                Op::PushBucket { slot } => {
                    if let (Some(GState::Bucket(g)), Some((t, ts))) =
                        (table.value_mut(slot), level(reply))
                    {
                        g.all = Bucket {
                            tokens: t,
                            at_ms: ts,
                        };
                        g.pending = 0;
                        table.mark_dirty(slot);
                    }
                }
                Op::GetBucket { slot } => {
                    // Nothing of ours is pending here, so Redis' level includes all of it.
                    if let (Some(GState::Bucket(g)), Some((t, ts))) =
                        (table.value_mut(slot), level(reply))
                    {
                        let fresh = Bucket {
                            tokens: t,
                            at_ms: ts,
                        };
                        if fresh != g.all {
                            g.all = fresh;
                            table.mark_dirty(slot);
                        }
                    }
                }
                Op::Nodes => {
                    self.nodes = u32::try_from(n.max(1)).unwrap_or(u32::MAX);
                    self.last_heartbeat = now;
                    stats.nodes.store(u64::from(self.nodes), Ordering::Relaxed);
                }
            }
        }
        push.clear();
        queued.clear();
        if !self.healthy {
            crate::info!("rate limit redis available instance={}", self.inst_id);
        }
        self.healthy = true;
        stats.redis_healthy.store(true, Ordering::Relaxed);
    }
}

fn window(
    table: &mut KeyTable<GState>,
    slot: u32,
    period: usize,
) -> Option<&mut super::reconciler::GWin> {
    match table.value_mut(slot)? {
        GState::Windows(w) => w.get_mut(period),
        GState::Bucket(_) => None,
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
