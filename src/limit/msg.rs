//! What crosses threads between workers and the reconciler: plain data over crossbeam channels.
//!
//! A worker sends one `Batch` per sync tick (its admissions since the last one); the reconciler
//! answers every round with one `View` shared by all workers (`Arc`): the merged totals of every key
//! that changed in the round, which batches it has merged (`acked`), and per-instance overrides
//! while Redis is unreachable. Keys travel concatenated in one buffer (`keys`) to keep the number of
//! allocations per tick constant.
//!
//! Instances are named by their *slot*: a number the `ReconcilerHandle` gives each distinct limit and
//! keeps across reloads while the limit's identity is unchanged (`limit::same_counts`). Positions in a
//! generation's instance list change with the config; slots do not, so a batch or view sent under one
//! generation stays meaningful under the next.

use std::sync::Arc;

use super::reconciler::SharedStats;
use super::InstanceDef;

/// What the reconciler thread receives, in one FIFO channel: workers' batches and, from the main
/// thread, a new generation's instance list. Because both travel in the same channel, every batch a
/// worker sends after installing a generation arrives after that generation's `Install`.
#[derive(Debug)]
pub enum ToReconciler {
    Batch(Batch),
    /// The instances of the generation being installed (slots set); slots not listed are dropped.
    Install(Vec<(Arc<InstanceDef>, Arc<SharedStats>)>),
}

/// A key inside a batch's or view's `keys` buffer.
#[derive(Debug, Clone, Copy)]
pub struct KeyRef {
    pub off: u32,
    pub len: u32,
}

impl KeyRef {
    /// Appends `key` to `buf` and returns its reference.
    pub fn push(buf: &mut Vec<u8>, key: &[u8]) -> KeyRef {
        let off = buf.len() as u32;
        buf.extend_from_slice(key);
        KeyRef {
            off,
            len: key.len() as u32,
        }
    }

    pub fn get<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        let start = self.off as usize;
        buf.get(start..start + self.len as usize)
            .unwrap_or_default()
    }
}

/// One worker's admissions since its previous batch.
#[derive(Debug, Default)]
pub struct Batch {
    pub worker: usize,
    /// 1, 2, 3… per worker; the view's `acked[worker]` says up to which one it has been merged.
    pub seq: u64,
    /// The worker's clock when sending (token buckets refill on it).
    pub now_ms: u64,
    pub keys: Vec<u8>,
    pub recs: Vec<DeltaRec>,
}

#[derive(Debug, Clone, Copy)]
pub struct DeltaRec {
    pub slot: u32,
    pub key: KeyRef,
    pub delta: Delta,
}

#[derive(Debug, Clone, Copy)]
pub enum Delta {
    /// `count` admissions in window `idx` of the instance's `period`-th limit.
    Window { period: u8, idx: u64, count: u64 },
    /// `consumed` tokens.
    Bucket { consumed: u64 },
}

/// The reconciler's answer after one round.
#[derive(Debug, Default)]
pub struct View {
    /// Per worker: the highest batch `seq` merged into this view.
    pub acked: Box<[u64]>,
    /// Per slot, for every slot the reconciler serves.
    pub overrides: Box<[(u32, Override)]>,
    pub keys: Vec<u8>,
    pub recs: Vec<ViewRec>,
}

#[derive(Debug, Clone, Copy)]
pub struct ViewRec {
    pub slot: u32,
    pub key: KeyRef,
    pub what: ViewWhat,
}

#[derive(Debug, Clone, Copy)]
pub enum ViewWhat {
    /// Totals of window `idx` (`curr`) and of window `idx - 1` (`prev`).
    Window {
        period: u8,
        idx: u64,
        curr: u64,
        prev: u64,
    },
    /// The shared bucket's level at `at_ms`.
    Bucket { tokens: f64, at_ms: u64 },
}

/// How an instance decides while its cluster backend is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Override {
    /// Normal operation.
    #[default]
    None,
    /// `on_redis_failure = "open"`: admit everything.
    Open,
    /// `on_redis_failure = "closed"`: reject everything.
    Closed,
    /// `on_redis_failure = "local"`: this node enforces `limit / n` on its own counts.
    Share(u32),
}
