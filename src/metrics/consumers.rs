//! Opt-in per-consumer request counts (`[metrics] per_consumer_labels = true`), capped.
//!
//! Consumers get label slots by name, on the main thread when a config generation is compiled:
//! slot 0 is `(other)`, then one slot per consumer name in first-seen order until
//! `max_consumer_labels` (the cap read at start; label cardinality can never exceed it, also
//! across reloads). Slots live as long as the process, so a consumer's counter survives reloads.
//!
//! Workers count into their own plain array (`ConsumerCounts`) on the request path and publish it
//! once per metrics flush tick with plain stores into cells only they write (no lock, no
//! read-modify-write); the scrape sums the workers.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::prom::{Family, FamilyKind};
use super::{code_index, code_label, NCODES};
use crate::config::model::Config;

pub const OTHER: &str = "(other)";

pub struct ConsumerBoard {
    /// Slot -> label value; slot 0 is `(other)`.
    names: Mutex<(Vec<String>, HashMap<String, u32>)>,
    /// Named slots at most (plus `(other)`).
    cap: usize,
    workers: usize,
    /// `[worker][slot][code]`.
    cells: Vec<AtomicU64>,
}

impl ConsumerBoard {
    /// `cap` = 0 turns counting off (no cells).
    pub fn new(cap: usize, workers: usize) -> ConsumerBoard {
        let slots = if cap == 0 { 0 } else { cap + 1 };
        ConsumerBoard {
            names: Mutex::new((vec![OTHER.to_owned()], HashMap::new())),
            cap,
            workers,
            cells: (0..workers * slots * NCODES)
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    /// Slots per worker (0 when off).
    pub fn slots(&self) -> usize {
        if self.cap == 0 {
            0
        } else {
            self.cap + 1
        }
    }

    /// Consumer index -> slot for `cfg` (empty when per-consumer labels are off). Main thread only.
    pub fn register(&self, cfg: &Config) -> Vec<u32> {
        if !cfg.metrics.per_consumer_labels || self.cap == 0 {
            return Vec::new();
        }
        let Ok(mut guard) = self.names.lock() else {
            return Vec::new();
        };
        let (names, index) = &mut *guard;
        cfg.consumers
            .iter()
            .map(|c| {
                if let Some(&s) = index.get(&c.username) {
                    return s;
                }
                if names.len() > self.cap {
                    return 0;
                }
                let s = u32::try_from(names.len()).unwrap_or(0);
                names.push(c.username.clone());
                index.insert(c.username.clone(), s);
                s
            })
            .collect()
    }

    fn cell(&self, worker: usize, slot: usize, code: usize) -> Option<&AtomicU64> {
        if worker >= self.workers || slot >= self.slots() {
            return None;
        }
        self.cells
            .get((worker * self.slots() + slot) * NCODES + code)
    }

    /// Called by `worker` (only) from its control loop.
    pub fn publish(&self, worker: usize, counts: &ConsumerCounts) {
        let Ok(c) = counts.0.try_borrow() else {
            return;
        };
        for (slot, codes) in c.iter().enumerate() {
            for (code, &n) in codes.iter().enumerate() {
                if n > 0 {
                    if let Some(cell) = self.cell(worker, slot, code) {
                        cell.store(n, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    /// `ringgate_consumer_requests_total{consumer,code}`, summed over workers.
    pub fn families(&self) -> Vec<Family> {
        if self.cap == 0 {
            return Vec::new();
        }
        let Ok(guard) = self.names.lock() else {
            return Vec::new();
        };
        let mut f = Family::new(
            "ringgate_consumer_requests_total",
            "Requests by authenticated consumer and status code (opt-in, at most max_consumer_labels consumers; the rest are (other)).",
            FamilyKind::Counter,
        );
        for (slot, name) in guard.0.iter().enumerate() {
            for code in 0..NCODES {
                let n: u64 = (0..self.workers)
                    .filter_map(|w| self.cell(w, slot, code))
                    .map(|c| c.load(Ordering::Relaxed))
                    .sum();
                if n > 0 {
                    f = f.sample(&[("consumer", name), ("code", code_label(code))], n as f64);
                }
            }
        }
        vec![f]
    }
}

/// One worker's cumulative counts, `[slot][code]`. `!Sync`; lives in the worker's shard.
pub struct ConsumerCounts(RefCell<Vec<[u64; NCODES]>>);

impl ConsumerCounts {
    pub fn new(slots: usize) -> ConsumerCounts {
        ConsumerCounts(RefCell::new(vec![[0; NCODES]; slots]))
    }

    /// One answered request of the consumer in label slot `slot`.
    #[inline]
    pub fn record(&self, slot: u32, status: u16) {
        if let Ok(mut c) = self.0.try_borrow_mut() {
            if let Some(n) = c
                .get_mut(slot as usize)
                .and_then(|codes| codes.get_mut(code_index(status)))
            {
                *n += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_slots_and_sums() {
        let cfg = crate::config::load_str(
            r#"
[metrics]
per_consumer_labels = true
[[services]]
name = "s"
url = "http://127.0.0.1:9"
[[routes]]
name = "r"
service = "s"
paths = ["/"]
[[consumers]]
username = "a"
[[consumers]]
username = "b"
[[consumers]]
username = "c"
"#,
            "t.toml",
        )
        .expect("config");
        let board = ConsumerBoard::new(2, 2);
        assert_eq!(board.register(&cfg), vec![1, 2, 0]);
        // Same names on a reload keep their slots.
        assert_eq!(board.register(&cfg), vec![1, 2, 0]);
        let w0 = ConsumerCounts::new(board.slots());
        let w1 = ConsumerCounts::new(board.slots());
        w0.record(1, 200);
        w1.record(1, 200);
        w1.record(0, 429);
        board.publish(0, &w0);
        board.publish(1, &w1);
        let text = format!("{:?}", board.families());
        assert!(text.contains("\"a\""), "{text}");
        assert!(text.contains("(other)"), "{text}");
    }
}
