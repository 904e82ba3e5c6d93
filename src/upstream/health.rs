//! Per-worker target health: the passive circuit breaker (consecutive failures eject a target for
//! a cooldown) and the verdicts of the active prober (`probe`), which the control loop applies.
//!
//! ```text
//! closed --max_fails consecutive failures--> open (skipped) --cooldown over--> probation
//! probation --success--> closed          probation --one failure--> open, cooldown doubled (<= 8x)
//! ```
//!
//! Invariants:
//! - state is keyed by target *identity* (upstream name, target as written, resolved address), never
//!   by index: a reload that moves a target to another index keeps its state, and a different
//!   target that takes an index starts clean. Each snapshot maps its flat target index to a slot
//!   here once, when it is built (control loop), like pool slots;
//! - slots are counted like pool slots: each live snapshot holds one use of each of its targets'
//!   slots, and when the last is released (`worker::Retired`) the target's state is forgotten and
//!   the slot reused, so targets that reloads and `dns_refresh` left behind do not pile up. A
//!   target that comes back starts clean, as the prober restarts it healthy;
//! - `skipped` counts slots that are open or actively down, `noted` slots with anything to remember
//!   (a failure count, probation, skipped). When nothing is failing both are 0, and the request
//!   path costs one integer compare in `all_usable` and one in `success`: no allocation, no lock, no
//!   syscall, no clock read;
//! - `!Send` like the rest of the shard; no `RefCell` borrow outlives a method call.
//!
//! Workers share ejections, not counts: the worker whose breaker opens tells the others (over their
//! health channels, applied in their next control tick, ≤ 50 ms), and they skip the target until
//! the same instant. So a dead target costs about `max_fails` failed requests in all, not `max_fails`
//! per worker. Failure counts below the threshold stay per worker (sharing them would put a message
//! on the request path for every failure); recovery is per worker too (each one's first request
//! after the cooldown is its trial).
//!
//! Probation instead of a single trial request (a strict half-open): once the cooldown is over the
//! target takes traffic again, as with nginx's `fail_timeout`, but the first failure re-ejects it
//! at once (with a doubled cooldown), and the first success closes the breaker. No trial can get
//! lost (a trial whose request never ends would otherwise keep the target out for good).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::config::model::PassiveDef;

/// A re-ejected target's cooldown doubles per ejection, up to this multiple of `fail_timeout`.
const MAX_COOLDOWN_FACTOR: u32 = 8;

/// Who a target is, across reloads: (upstream name, target as written, resolved address).
pub type TargetKey = (String, String, SocketAddr);

#[derive(Clone, Copy, Default)]
struct TargetHealth {
    /// Consecutive failed requests (reset by a success).
    fails: u32,
    /// Ejected (skipped) until then.
    open_until: Option<Instant>,
    /// The cooldown is over: the next outcome closes or re-opens the breaker.
    probation: bool,
    /// Ejections without a success in between (the cooldown doubles with each).
    strikes: u32,
    /// The active prober's verdict.
    active_down: bool,
}

impl TargetHealth {
    fn skipped(&self) -> bool {
        self.active_down || self.open_until.is_some()
    }

    fn noted(&self) -> bool {
        self.fails > 0 || self.probation || self.skipped()
    }
}

/// Names for log lines (only formatted on a transition).
#[derive(Clone, Copy)]
pub struct Who<'a> {
    pub upstream: &'a str,
    pub target: &'a str,
    /// The address connected to: a target name with several addresses has one state per address.
    pub addr: std::net::SocketAddr,
    pub worker: usize,
}

/// An ejection this worker decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    pub until: Instant,
    /// Tell the other workers: the breaker opened from closed (`max_fails` in a row). A failed
    /// trial in probation is this worker's evidence alone (others may have seen the target answer
    /// since the cooldown ended).
    pub shared: bool,
}

/// One worker's health of every target its live snapshots use (and of targets the prober reported
/// before a generation with them arrived).
#[derive(Default)]
pub struct HealthTable {
    index: RefCell<HashMap<TargetKey, usize>>,
    /// `keys[slot]`: who the slot is (to tell other workers about an ejection).
    keys: RefCell<Vec<TargetKey>>,
    /// Per slot: how many live snapshots use it (see `slot_for` and `release`).
    users: RefCell<Vec<u32>>,
    /// Released slots, reused before new ones are made.
    free: RefCell<Vec<usize>>,
    slots: RefCell<Vec<TargetHealth>>,
    skipped: Cell<usize>,
    noted: Cell<usize>,
}

fn adjust(count: &Cell<usize>, before: bool, after: bool) {
    match (before, after) {
        (false, true) => count.set(count.get() + 1),
        (true, false) => count.set(count.get().saturating_sub(1)),
        _ => {}
    }
}

impl HealthTable {
    /// The slot of `key` for a snapshot being built, made on first sight (control loop only: may
    /// allocate). Counts as one use until `release`.
    pub fn slot_for(&self, key: TargetKey) -> usize {
        let slot = self.slot_of(key);
        if let Some(n) = self.users.borrow_mut().get_mut(slot) {
            *n += 1;
        }
        slot
    }

    /// The slot of `key`, made on first sight (a free slot is reused), without counting a use.
    fn slot_of(&self, key: TargetKey) -> usize {
        let mut index = self.index.borrow_mut();
        if let Some(&slot) = index.get(&key) {
            return slot;
        }
        let mut keys = self.keys.borrow_mut();
        let slot = match self.free.borrow_mut().pop() {
            Some(slot) => {
                if let Some(k) = keys.get_mut(slot) {
                    *k = key.clone();
                }
                slot
            }
            None => {
                keys.push(key.clone());
                self.users.borrow_mut().push(0);
                self.slots.borrow_mut().push(TargetHealth::default());
                keys.len() - 1
            }
        };
        index.insert(key, slot);
        slot
    }

    /// One use of `slot` ended (a snapshot that held it is gone). With the last one the target's
    /// state is forgotten (a target that comes back starts clean, as a new one) and the slot is
    /// reused for another.
    pub fn release(&self, slot: usize) {
        {
            let mut users = self.users.borrow_mut();
            let Some(n) = users.get_mut(slot) else {
                return;
            };
            if *n == 0 {
                return;
            }
            *n -= 1;
            if *n > 0 {
                return;
            }
        }
        self.forget(slot);
    }

    /// Resets `slot`, drops its key and frees it for reuse.
    fn forget(&self, slot: usize) {
        self.update(slot, |h| *h = TargetHealth::default());
        if let Some(key) = self.keys.borrow().get(slot) {
            self.index.borrow_mut().remove(key);
        }
        self.free.borrow_mut().push(slot);
    }

    /// Slots that hold a target (for tests).
    pub fn slots_in_use(&self) -> usize {
        self.index.borrow().len()
    }

    /// Changes one slot, keeping the `skipped` / `noted` counts right.
    fn update<R>(&self, slot: usize, f: impl FnOnce(&mut TargetHealth) -> R) -> Option<R> {
        let mut slots = self.slots.try_borrow_mut().ok()?;
        let h = slots.get_mut(slot)?;
        let (skipped, noted) = (h.skipped(), h.noted());
        let r = f(h);
        adjust(&self.skipped, skipped, h.skipped());
        adjust(&self.noted, noted, h.noted());
        Some(r)
    }

    /// Nothing is ejected or down on this worker: the balancer may pick without asking.
    #[inline]
    pub fn all_usable(&self) -> bool {
        self.skipped.get() == 0
    }

    /// Whether `slot` may take a request at `now`. An ejection whose cooldown is over turns into
    /// probation here (or in `sweep`).
    pub fn usable(&self, slot: usize, now: Instant) -> bool {
        let Some(h) = self
            .slots
            .try_borrow()
            .ok()
            .and_then(|s| s.get(slot).copied())
        else {
            return true;
        };
        if h.active_down {
            return false;
        }
        match h.open_until {
            None => true,
            Some(until) if now < until => false,
            Some(_) => {
                self.update(slot, |h| {
                    h.open_until = None;
                    h.probation = true;
                });
                true
            }
        }
    }

    /// A response arrived (and its status is not a configured failure): the failure count resets;
    /// a target in probation (or ejected, when tried because every target was) is closed again.
    #[inline]
    pub fn success(&self, slot: usize, who: Who<'_>) {
        if self.noted.get() == 0 {
            return;
        }
        let recovered = self.update(slot, |h| {
            let recovered = h.probation || h.open_until.is_some();
            h.fails = 0;
            h.probation = false;
            h.open_until = None;
            h.strikes = 0;
            recovered
        });
        if recovered == Some(true) {
            crate::warn!(
                "upstream target recovered upstream={} target={} address={} worker={}",
                who.upstream,
                who.target,
                who.addr,
                who.worker
            );
        }
    }

    /// A request to `slot` failed (connect refused/reset/timed out, TLS handshake, read timeout,
    /// malformed or cut-short response, or a configured status). Returns the ejection when this
    /// failure opened the breaker.
    pub fn failure(
        &self,
        slot: usize,
        policy: &PassiveDef,
        now: Instant,
        who: Who<'_>,
    ) -> Option<Ejection> {
        if policy.max_fails == 0 {
            return None;
        }
        let ejected = self.update(slot, |h| {
            if h.open_until.is_some() {
                // Already out (a request started before the ejection, or every target is out and
                // this one was tried anyway): the cooldown runs as it was set.
                return None;
            }
            h.fails = h.fails.saturating_add(1);
            if !h.probation && h.fails < policy.max_fails {
                return None;
            }
            let shared = !h.probation;
            h.strikes = (h.strikes + 1).min(MAX_COOLDOWN_FACTOR.trailing_zeros() + 1);
            let cooldown = policy.fail_timeout.saturating_mul(1 << (h.strikes - 1));
            h.open_until = Some(now + cooldown);
            let fails = h.fails;
            h.probation = false;
            h.fails = 0;
            Some((fails, cooldown, shared))
        });
        match ejected.flatten() {
            Some((fails, cooldown, shared)) => {
                crate::warn!(
                    "upstream target ejected upstream={} target={} address={} worker={} failures={} cooldown_ms={}",
                    who.upstream,
                    who.target,
                    who.addr,
                    who.worker,
                    fails,
                    cooldown.as_millis()
                );
                Some(Ejection {
                    until: now + cooldown,
                    shared,
                })
            }
            None => None,
        }
    }

    /// Forgets what passive checks noted about `slot` (failures, an ejection, probation), keeping
    /// the active prober's verdict: for a target whose upstream turned passive checks off.
    pub fn forgive(&self, slot: usize) {
        self.update(slot, |h| {
            *h = TargetHealth {
                active_down: h.active_down,
                ..TargetHealth::default()
            };
        });
    }

    /// Who `slot` is.
    pub fn key_of(&self, slot: usize) -> Option<TargetKey> {
        self.keys.try_borrow().ok()?.get(slot).cloned()
    }

    /// Another worker ejected `key` (control tick): skip it until the same instant. A later
    /// ejection of our own is kept; a stale message (its cooldown already over) and a target this
    /// worker has never had change nothing. This worker's strikes are its own: a shared ejection
    /// does not lengthen its next cooldown.
    pub fn apply_ejection(&self, key: &TargetKey, e: Ejection, now: Instant) {
        if e.until <= now {
            return;
        }
        let Some(slot) = self
            .index
            .try_borrow()
            .ok()
            .and_then(|i| i.get(key).copied())
        else {
            return;
        };
        self.update(slot, |h| {
            if h.open_until.is_some_and(|u| u >= e.until) {
                return;
            }
            h.open_until = Some(e.until);
            h.fails = 0;
            h.probation = false;
        });
    }

    /// Applies the active prober's verdict on `key` (made on first sight, so a verdict may arrive
    /// before the generation that has the target).
    pub fn set_active(&self, key: TargetKey, healthy: bool) {
        // Healthy is what an unknown target is anyway: no slot for it (the prober sends `healthy`
        // for a removed target, which may be forgotten here already).
        if healthy && self.index.try_borrow().is_ok_and(|i| !i.contains_key(&key)) {
            return;
        }
        let slot = self.slot_of(key);
        self.update(slot, |h| h.active_down = !healthy);
        // A slot only a verdict made (no snapshot uses it: a `down` that came before the
        // generation with the target, or after this worker forgot it) goes with the all-clear.
        if healthy && self.users.borrow().get(slot) == Some(&0) {
            self.forget(slot);
        }
    }

    /// Control tick: cooldowns that are over become probation, so the request path gets back to its
    /// fast path even for targets nobody picked since.
    pub fn sweep(&self, now: Instant) {
        if self.skipped.get() == 0 {
            return;
        }
        let n = self.slots.try_borrow().map_or(0, |s| s.len());
        for slot in 0..n {
            self.usable(slot, now);
        }
    }

    /// Whether each of `slots` is skipped at `now` (for the metrics gauge).
    pub fn skipped_flags(&self, slots: &[usize], now: Instant) -> Vec<bool> {
        let table = self.slots.try_borrow();
        slots
            .iter()
            .map(|&s| {
                table
                    .as_ref()
                    .ok()
                    .and_then(|t| t.get(s))
                    .is_some_and(|h| h.active_down || h.open_until.is_some_and(|u| now < u))
            })
            .collect()
    }
}

/// The cooldown after `strikes` ejections in a row (for docs and tests).
pub fn cooldown(fail_timeout: Duration, strikes: u32) -> Duration {
    let s = strikes.clamp(1, MAX_COOLDOWN_FACTOR.trailing_zeros() + 1);
    fail_timeout.saturating_mul(1 << (s - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(t: &str) -> TargetKey {
        (
            "u".to_owned(),
            t.to_owned(),
            "127.0.0.1:1".parse().unwrap_or_else(|e| panic!("{e}")),
        )
    }

    const WHO: Who<'static> = Who {
        upstream: "u",
        target: "t",
        addr: std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 1),
        worker: 0,
    };

    fn policy(max_fails: u32) -> PassiveDef {
        PassiveDef {
            max_fails,
            fail_timeout: Duration::from_secs(10),
            ..PassiveDef::default()
        }
    }

    #[test]
    fn ejects_after_max_fails_consecutive_and_a_success_resets() {
        let t = HealthTable::default();
        let s = t.slot_for(key("a"));
        let now = Instant::now();
        let p = policy(3);
        assert!(t.failure(s, &p, now, WHO).is_none());
        assert!(t.failure(s, &p, now, WHO).is_none());
        t.success(s, WHO);
        assert!(t.failure(s, &p, now, WHO).is_none());
        assert!(t.failure(s, &p, now, WHO).is_none());
        assert!(t.all_usable());
        assert!(
            t.failure(s, &p, now, WHO).is_some(),
            "third in a row ejects"
        );
        assert!(!t.all_usable());
        assert!(!t.usable(s, now + Duration::from_secs(9)));
        assert!(t.usable(s, now + Duration::from_secs(10)), "probation");
        assert!(t.all_usable());
        // Probation: one failure re-ejects, for twice as long (on this worker only: not shared).
        let later = now + Duration::from_secs(10);
        assert!(t.failure(s, &p, later, WHO).is_some_and(|e| !e.shared));
        assert!(!t.usable(s, later + Duration::from_secs(19)));
        assert!(t.usable(s, later + Duration::from_secs(20)));
        t.success(s, WHO);
        assert_eq!((t.skipped.get(), t.noted.get()), (0, 0), "closed again");
    }

    #[test]
    fn max_fails_zero_never_ejects() {
        let t = HealthTable::default();
        let s = t.slot_for(key("a"));
        for _ in 0..100 {
            assert!(t.failure(s, &policy(0), Instant::now(), WHO).is_none());
        }
        assert!(t.all_usable());
    }

    #[test]
    fn cooldown_doubles_up_to_eight_times() {
        let ft = Duration::from_secs(1);
        let got: Vec<u64> = (1..=6).map(|k| cooldown(ft, k).as_secs()).collect();
        assert_eq!(got, vec![1, 2, 4, 8, 8, 8]);
    }

    #[test]
    fn identity_not_index_and_active_verdicts() {
        let t = HealthTable::default();
        let a = t.slot_for(key("a"));
        let b = t.slot_for(key("b"));
        assert_ne!(a, b);
        assert_eq!(t.slot_for(key("a")), a, "same identity, same slot");
        t.set_active(key("b"), false);
        let now = Instant::now();
        assert!(t.usable(a, now) && !t.usable(b, now));
        assert_eq!(t.skipped_flags(&[a, b], now), vec![false, true]);
        t.set_active(key("b"), true);
        assert!(t.all_usable());
    }

    #[test]
    fn a_released_target_is_forgotten_and_its_slot_reused() {
        let t = HealthTable::default();
        let now = Instant::now();
        let a = t.slot_for(key("a"));
        assert_eq!(t.slot_for(key("a")), a, "a second snapshot shares it");
        t.failure(a, &policy(1), now, WHO).expect("ejected");
        t.release(a);
        assert!(!t.usable(a, now), "one snapshot still uses it");
        t.release(a);
        assert!(t.all_usable(), "the ejection went with the last use");
        assert_eq!(t.slots_in_use(), 0);
        // Another worker's news about a forgotten target changes nothing.
        let e = Ejection {
            until: now + Duration::from_secs(10),
            shared: true,
        };
        t.apply_ejection(&key("a"), e, now);
        assert!(t.all_usable());
        let b = t.slot_for(key("b"));
        assert_eq!(b, a, "the index is reused");
        assert_eq!(t.key_of(b), Some(key("b")));
        assert!(t.usable(b, now), "and starts clean");
        let back = t.slot_for(key("a"));
        assert_ne!(back, b);
        assert!(t.usable(back, now), "a target that comes back starts clean");
        // Active verdicts do not count as a use: releasing below zero changes nothing.
        t.set_active(key("c"), false);
        let c = t.slot_for(key("c"));
        assert!(!t.usable(c, now));
        t.release(c);
        t.release(c);
        assert_eq!(t.slots_in_use(), 2);
        // The prober's all-clear for a removed (forgotten) target makes no slot...
        t.release(back);
        t.set_active(key("a"), true);
        assert_eq!(t.slots_in_use(), 1);
        // ...and frees one that only a verdict made (a late `down` for a forgotten target).
        t.set_active(key("d"), false);
        assert_eq!(t.slots_in_use(), 2);
        t.set_active(key("d"), true);
        assert_eq!(t.slots_in_use(), 1);
        assert!(t.all_usable());
    }

    #[test]
    fn an_ejection_from_another_worker_is_applied_until_its_instant() {
        let t = HealthTable::default();
        let now = Instant::now();
        let s = t.slot_for(key("a"));
        let e = Ejection {
            until: now + Duration::from_secs(10),
            shared: true,
        };
        t.apply_ejection(&key("a"), e, now);
        assert!(!t.usable(s, now));
        assert!(!t.all_usable());
        // Over at the same instant as on the worker that decided it, then probation.
        assert!(t.usable(s, now + Duration::from_secs(10)));
        // A stale message changes nothing; neither does one for a target this worker never had.
        t.apply_ejection(&key("a"), e, now + Duration::from_secs(11));
        assert!(t.usable(s, now + Duration::from_secs(11)));
        t.apply_ejection(&key("new"), e, now);
        assert!(t.all_usable());
        assert_eq!(t.key_of(s), Some(key("a")));
        // The deciding worker shares a breaker it opened from closed...
        let p = policy(1);
        let own = t.slot_for(key("b"));
        let first = t.failure(own, &p, now, WHO).expect("ejected");
        assert!(first.shared && first.until > now);
        // ...but not a failed trial: other workers may have seen it answer meanwhile.
        let later = first.until;
        assert!(t.usable(own, later), "probation");
        let again = t.failure(own, &p, later, WHO).expect("re-ejected");
        assert!(!again.shared);
        assert!(!t.usable(own, later));
    }
}
