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

use super::msg::Override;
use super::reconciler::{GState, SharedStats};
use super::table::KeyTable;
use super::InstanceDef;
use crate::config::model::{Algorithm, PeriodLimit, RedisDef, RedisFailure};

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
}

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
        for &slot in push.iter() {
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
