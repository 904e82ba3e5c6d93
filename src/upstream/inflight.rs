//! Requests in flight per target on one worker, for `least_conn` and `max_conns`: one counter per
//! target identity (upstream name, target as written, address), shared by every snapshot that
//! lists the target and every request that holds it.
//!
//! Invariants:
//! - a request takes its hold (`InFlight`) at the pick, before connecting, and the hold gives it
//!   back on drop, so no path (a failed connect, an error answer, a tunnel's end, the drain deadline
//!   dropping the request) can leak one or give one back twice;
//! - the table keeps only weak references: a counter lives while a snapshot or a hold has it, so a
//!   target that leaves the config or a DNS answer for a while and comes back finds the counter its
//!   running requests and tunnels still hold, and one nobody holds any more is forgotten (`prune`);
//! - `!Send`, worker-local; no `RefCell` borrow outlives a method call.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};

use super::health::TargetKey;

#[derive(Default)]
pub struct InFlightTable {
    counters: RefCell<HashMap<TargetKey, Weak<Cell<u32>>>>,
}

impl InFlightTable {
    /// The counter of the target `key` (made at config install, never per request).
    pub fn counter(&self, key: TargetKey) -> Rc<Cell<u32>> {
        let mut counters = self.counters.borrow_mut();
        if let Some(c) = counters.get(&key).and_then(Weak::upgrade) {
            return c;
        }
        let c = Rc::new(Cell::new(0));
        counters.insert(key, Rc::downgrade(&c));
        c
    }

    /// Forgets the counters no snapshot and no request holds.
    pub fn prune(&self) {
        self.counters
            .borrow_mut()
            .retain(|_, c| c.strong_count() > 0);
    }

    pub fn len(&self) -> usize {
        self.counters.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One request's hold on a target's counter.
pub struct InFlight(Rc<Cell<u32>>);

impl InFlight {
    pub fn take(counter: &Rc<Cell<u32>>) -> InFlight {
        counter.set(counter.get().saturating_add(1));
        InFlight(Rc::clone(counter))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn key(t: &str) -> TargetKey {
        ("u".into(), t.into(), SocketAddr::from(([10, 0, 0, 1], 80)))
    }

    #[test]
    fn a_target_back_after_a_gap_finds_the_count_its_holders_keep() {
        let table = InFlightTable::default();
        let c = table.counter(key("a"));
        let hold = InFlight::take(&c);
        // The snapshot listing it goes (the target left a DNS answer); the request runs on.
        drop(c);
        table.prune();
        assert_eq!(table.len(), 1, "a held counter is kept");
        let back = table.counter(key("a"));
        assert_eq!(back.get(), 1);
        drop(hold);
        assert_eq!(back.get(), 0);
        drop(back);
        table.prune();
        assert!(table.is_empty());
        assert_eq!(table.counter(key("a")).get(), 0);
        assert_ne!(
            Rc::as_ptr(&table.counter(key("a"))),
            Rc::as_ptr(&table.counter(key("b")))
        );
    }
}
