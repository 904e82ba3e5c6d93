//! Rate-limit counters for `/metrics`, per config generation.
//!
//! Each worker publishes its own instances' counters here once per metrics flush tick (plain
//! stores into cells only it writes: no read-modify-write, never on the request path); a collector
//! on the metrics thread sums the workers at scrape time and adds the reconciler's overshoot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::reconciler::SharedStats;
use super::{InstanceStats, LimiterSet};
use crate::metrics::prom::{Family, FamilyKind};

/// Counters kept per (worker, instance).
const FIELDS: usize = 3;

pub struct LimitBoard {
    /// Instance ids (`global`, `service:NAME`, `route:NAME`), the `limit` label.
    ids: Vec<String>,
    workers: usize,
    cells: Vec<AtomicU64>,
    /// Per instance (same order as `ids`).
    reconciler: Vec<Arc<SharedStats>>,
}

impl LimitBoard {
    pub fn new(ids: Vec<String>, workers: usize, reconciler: Vec<Arc<SharedStats>>) -> LimitBoard {
        let cells = (0..ids.len() * workers * FIELDS)
            .map(|_| AtomicU64::new(0))
            .collect();
        LimitBoard {
            ids,
            workers,
            cells,
            reconciler,
        }
    }

    fn cell(&self, worker: usize, instance: usize, field: usize) -> Option<&AtomicU64> {
        if worker >= self.workers || instance >= self.ids.len() {
            return None;
        }
        self.cells
            .get((worker * self.ids.len() + instance) * FIELDS + field)
    }

    /// Called by `worker` (only) from its control loop.
    pub fn publish(&self, worker: usize, limiters: &LimiterSet) {
        for i in 0..limiters.len().min(self.ids.len()) {
            let InstanceStats {
                admitted,
                rejected,
                shadow_rejected,
                ..
            } = limiters.stats(i);
            for (field, v) in [admitted, rejected, shadow_rejected]
                .into_iter()
                .enumerate()
            {
                if let Some(c) = self.cell(worker, i, field) {
                    c.store(v, Ordering::Relaxed);
                }
            }
        }
    }

    /// Carries `prev`'s counters over into this board (a reload): an instance whose counts survived
    /// the reload (the reconciler kept its slot, so both boards hold the same `SharedStats`) starts
    /// from what `prev` showed, so `/metrics` counters never dip between the swap and the workers'
    /// next publish. `fetch_max`, because a worker may already have published its (never smaller)
    /// counts here.
    pub fn absorb(&self, prev: &LimitBoard) {
        if std::ptr::eq(self, prev) {
            return;
        }
        for (i, stats) in self.reconciler.iter().enumerate() {
            let Some(j) = prev.reconciler.iter().position(|s| Arc::ptr_eq(s, stats)) else {
                continue;
            };
            for w in 0..self.workers {
                for field in 0..FIELDS {
                    if let (Some(new), Some(old)) = (self.cell(w, i, field), prev.cell(w, j, field))
                    {
                        new.fetch_max(old.load(Ordering::Relaxed), Ordering::Relaxed);
                    }
                }
            }
        }
    }

    fn sum(&self, instance: usize, field: usize) -> u64 {
        (0..self.workers)
            .filter_map(|w| self.cell(w, instance, field))
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// The Prometheus families, summed over workers.
    pub fn families(&self) -> Vec<Family> {
        let per_limit = |name: &str, help: &str, kind: FamilyKind, value: &dyn Fn(usize) -> u64| {
            self.ids
                .iter()
                .enumerate()
                .fold(Family::new(name, help, kind), |f, (i, id)| {
                    f.sample(&[("limit", id)], value(i) as f64)
                })
        };
        // Redis families list cluster-policy limits only.
        let per_cluster_limit =
            |name: &str, help: &str, kind: FamilyKind, value: &dyn Fn(&SharedStats) -> u64| {
                self.ids.iter().zip(&self.reconciler).fold(
                    Family::new(name, help, kind),
                    |f, (id, s)| {
                        if s.cluster.load(Ordering::Relaxed) {
                            f.sample(&[("limit", id)], value(s) as f64)
                        } else {
                            f
                        }
                    },
                )
            };
        vec![
            per_cluster_limit(
                "ringgate_ratelimit_redis_up",
                "Cluster-policy limits: 1 while the last Redis exchange succeeded (or none has \
                 had an outcome yet), 0 while on_redis_failure applies.",
                FamilyKind::Gauge,
                &|s| u64::from(s.redis_healthy.load(Ordering::Relaxed)),
            ),
            per_cluster_limit(
                "ringgate_ratelimit_redis_errors_total",
                "Cluster-policy limits: failed Redis exchanges (connect, timeout, reply).",
                FamilyKind::Counter,
                &|s| s.redis_errors.load(Ordering::Relaxed),
            ),
            per_cluster_limit(
                "ringgate_ratelimit_cluster_nodes",
                "Cluster-policy limits: gateway processes sharing the limit at the last heartbeat.",
                FamilyKind::Gauge,
                &|s| s.nodes.load(Ordering::Relaxed),
            ),
            per_limit(
                "ringgate_ratelimit_admitted_total",
                "Requests the rate limiter admitted.",
                FamilyKind::Counter,
                &|i| self.sum(i, 0),
            ),
            per_limit(
                "ringgate_ratelimit_rejected_total",
                "Requests the rate limiter rejected.",
                FamilyKind::Counter,
                &|i| self.sum(i, 1),
            ),
            per_limit(
                "ringgate_ratelimit_shadow_rejected_total",
                "Requests shadow mode would have rejected (and admitted).",
                FamilyKind::Counter,
                &|i| self.sum(i, 2),
            ),
            per_limit(
                "ringgate_ratelimit_overshoot_total",
                "Requests admitted beyond a limit because workers decided on views up to one sync interval old.",
                FamilyKind::Counter,
                &|i| {
                    self.reconciler
                        .get(i)
                        .map_or(0, |s| s.overshoot.load(Ordering::Relaxed))
                },
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(b: &LimitBoard, worker: usize, instance: usize, v: [u64; FIELDS]) {
        for (field, v) in v.into_iter().enumerate() {
            if let Some(c) = b.cell(worker, instance, field) {
                c.store(v, Ordering::Relaxed);
            }
        }
    }

    fn get(b: &LimitBoard, worker: usize, instance: usize) -> Vec<u64> {
        (0..FIELDS)
            .map(|f| {
                b.cell(worker, instance, f)
                    .map_or(0, |c| c.load(Ordering::Relaxed))
            })
            .collect()
    }

    #[test]
    fn absorb_carries_kept_limits_over_by_identity_and_never_goes_back() {
        let kept = Arc::new(SharedStats::default());
        let changed = Arc::new(SharedStats::default());
        let old = LimitBoard::new(
            vec!["route:a".into(), "global".into()],
            2,
            vec![changed.clone(), kept.clone()],
        );
        set(&old, 0, 0, [7, 7, 7]);
        set(&old, 0, 1, [5, 1, 0]);
        set(&old, 1, 1, [3, 2, 1]);
        // The new generation lists the kept limit first, and a new limit where `changed` was.
        let new = LimitBoard::new(
            vec!["global".into(), "route:a".into()],
            2,
            vec![kept, Arc::new(SharedStats::default())],
        );
        // Worker 1 already published its (newer) counts to the new board.
        set(&new, 1, 0, [4, 2, 1]);
        new.absorb(&old);
        assert_eq!(
            get(&new, 0, 0),
            [5, 1, 0],
            "carried over by identity, not index"
        );
        assert_eq!(
            get(&new, 1, 0),
            [4, 2, 1],
            "a newer publish is not overwritten"
        );
        assert_eq!(get(&new, 0, 1), [0, 0, 0], "a new slot starts fresh");
        new.absorb(&new);
        assert_eq!(get(&new, 0, 0), [5, 1, 0]);
        assert_eq!(new.sum(0, 0), 9);
    }
}
