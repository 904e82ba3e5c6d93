//! Fixed and sliding window decisions: pure functions of counts and a clock (ms since the UNIX
//! epoch), so they are unit-testable without threads.
//!
//! Windows are calendar-aligned (Kong's semantics): window `idx` of a period of `P` ms covers
//! `[idx * P, (idx + 1) * P)`, so a minute window starts at :00 of the minute and a day window at
//! 00:00 UTC. The sliding window estimate is `prev * (P - elapsed) / P + curr` (the previous window
//! weighted by how much of it still overlaps the last `P` ms), computed in integers.

/// One window's counts as one worker sees them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Win {
    /// Window index (`now / P`).
    pub idx: u64,
    /// Total across all workers (and nodes) as of the last merged view.
    pub global: u64,
    /// Sent to the reconciler in batch `seq`, not yet reflected in `global`.
    pub inflight: u64,
    pub seq: u64,
    /// Admitted here since the last send.
    pub unsynced: u64,
}

impl Win {
    pub fn at(idx: u64) -> Win {
        Win {
            idx,
            ..Win::default()
        }
    }

    /// Best local estimate of the window's total, given the last acknowledged batch `acked`.
    pub fn used(&self, acked: u64) -> u64 {
        let inflight = if self.seq <= acked { 0 } else { self.inflight };
        self.global
            .saturating_add(inflight)
            .saturating_add(self.unsynced)
    }
}

/// The current and previous window of one period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WinPair {
    pub curr: Win,
    pub prev: Win,
}

impl WinPair {
    /// Advances to window `idx` (no-op if already there or `idx` is older).
    pub fn roll(&mut self, idx: u64) {
        if idx <= self.curr.idx {
            return;
        }
        self.prev = if self.curr.idx + 1 == idx {
            self.curr
        } else {
            Win::at(idx - 1)
        };
        self.curr = Win::at(idx);
    }

    /// The previous window's total, if it is the one right before the current.
    pub fn prev_used(&self, acked: u64) -> u64 {
        if self.prev.idx + 1 == self.curr.idx {
            self.prev.used(acked)
        } else {
            0
        }
    }
}

/// The outcome for one period (or the bucket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// Requests left after this one (0 when rejected).
    pub remaining: u64,
    /// Until the quota resets (window end; bucket full).
    pub reset_ms: u64,
    /// When rejected: until a request would be admitted again.
    pub retry_ms: u64,
}

/// Fixed window: admit while `used + 1 <= limit`.
pub fn fixed(used: u64, limit: u64, now_ms: u64, period_ms: u64) -> Verdict {
    let reset_ms = period_ms - now_ms % period_ms;
    let allowed = used < limit;
    Verdict {
        allowed,
        remaining: if allowed { limit - used - 1 } else { 0 },
        reset_ms,
        retry_ms: if allowed { 0 } else { reset_ms },
    }
}

/// Sliding window: admit while `prev * (P - elapsed) / P + used + 1 <= limit`.
pub fn sliding(prev: u64, used: u64, limit: u64, now_ms: u64, period_ms: u64) -> Verdict {
    let p = u128::from(period_ms);
    let elapsed = u128::from(now_ms % period_ms);
    let weighted = u128::from(prev) * (p - elapsed);
    let allowed = weighted + (u128::from(used) + 1) * p <= u128::from(limit) * p;
    let after = used.saturating_add(u64::from(allowed));
    let reset_ms = (p - elapsed) as u64;
    let retry_ms = if allowed {
        0
    } else {
        sliding_retry(prev, used, limit, elapsed, p)
    };
    Verdict {
        allowed,
        remaining: sliding_left(prev, after, limit, now_ms, period_ms),
        reset_ms,
        retry_ms,
    }
}

/// Requests left under the sliding estimate when `used` are counted in the current window:
/// `limit - ceil(prev * (P - elapsed) / P + used)`, never below 0.
pub fn sliding_left(prev: u64, used: u64, limit: u64, now_ms: u64, period_ms: u64) -> u64 {
    let p = u128::from(period_ms);
    let elapsed = u128::from(now_ms % period_ms);
    let estimate = (u128::from(prev) * (p - elapsed) + u128::from(used) * p).div_ceil(p);
    let left = u128::from(limit).saturating_sub(estimate);
    u64::try_from(left).unwrap_or(u64::MAX)
}

/// How long until the sliding estimate leaves room for one request (assuming no other traffic).
fn sliding_retry(prev: u64, used: u64, limit: u64, elapsed: u128, p: u128) -> u64 {
    let (prev, used, limit) = (u128::from(prev), u128::from(used), u128::from(limit));
    let wait = if used < limit && prev > 0 {
        // Need prev * (P - e') <= (limit - used - 1) * P with e' >= elapsed.
        let e = p - ((limit - used - 1) * p / prev).min(p);
        e.saturating_sub(elapsed).max(1)
    } else {
        // This window is full: wait for the next one, where this window's count is `prev`.
        let rest = p - elapsed;
        let next = if used == 0 || limit == 0 {
            0
        } else {
            p - ((limit.saturating_sub(1)) * p / used).min(p)
        };
        rest + next
    };
    u64::try_from(wait).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    #[test]
    fn fixed_window_is_calendar_aligned() {
        // 12:00:59.500 -> window ends at 12:01:00.000
        let now = 12 * 3_600_000 + 59_500;
        let v = fixed(0, 10, now, MIN);
        assert_eq!(v.reset_ms, 500);
        assert!(v.allowed);
        assert_eq!(v.remaining, 9);
        let v = fixed(10, 10, now, MIN);
        assert!(!v.allowed);
        assert_eq!((v.remaining, v.retry_ms), (0, 500));
        // The window index moves at :00 exactly.
        assert_eq!((now + 500) / MIN, now / MIN + 1);
    }

    #[test]
    fn roll_keeps_previous_window() {
        let mut p = WinPair::default();
        p.roll(5);
        p.curr.unsynced = 7;
        p.roll(6);
        assert_eq!(p.prev.idx, 5);
        assert_eq!(p.prev.unsynced, 7);
        assert_eq!(p.prev_used(0), 7);
        p.roll(8); // skipped a window: previous is empty
        assert_eq!(p.prev, Win::at(7));
        assert_eq!(p.prev_used(0), 0);
        p.roll(3); // older: ignored
        assert_eq!(p.curr.idx, 8);
    }

    #[test]
    fn inflight_counts_until_acked() {
        let w = Win {
            idx: 1,
            global: 10,
            inflight: 5,
            seq: 3,
            unsynced: 2,
        };
        assert_eq!(w.used(2), 17);
        assert_eq!(w.used(3), 12);
    }

    #[test]
    fn sliding_weights_previous_window() {
        // 25% into the window: 75% of the previous window still counts.
        let now = 10 * MIN + MIN / 4;
        // prev 100 * 0.75 = 75, + curr 20 = 95; limit 100: 5 left before this request.
        let v = sliding(100, 20, 100, now, MIN);
        assert!(v.allowed);
        assert_eq!(v.remaining, 4);
        let v = sliding(100, 25, 100, now, MIN);
        assert!(!v.allowed);
        // Room for one when 100 * (1 - e) <= 100 - 25 - 1 = 74 -> e >= 0.26 -> 0.01 min from now.
        assert_eq!(v.retry_ms, MIN * 26 / 100 - MIN / 4);
        // At the end of the window the previous one has (almost) no weight.
        let v = sliding(1_000, 99, 100, 11 * MIN - 1, MIN);
        assert!(!v.allowed); // 1000 * 1/60000 rounds up to 1 in the estimate -> 99 + 1 + 0.0167 > 100
        let v = sliding(1_000, 98, 100, 11 * MIN - 1, MIN);
        assert!(v.allowed);
    }

    #[test]
    fn sliding_left_counts_nothing_extra() {
        // A fresh window with nothing in either window: the whole limit is left.
        assert_eq!(sliding_left(0, 0, 10, 10 * MIN, MIN), 10);
        // Half-way, an empty current window and 10 in the previous one weigh 5.
        assert_eq!(sliding_left(10, 0, 10, 10 * MIN + MIN / 2, MIN), 5);
        assert_eq!(sliding_left(10, 3, 10, 10 * MIN + MIN / 2, MIN), 2);
        // Agrees with what `sliding` reports after admitting one more.
        let now = 10 * MIN + MIN / 4;
        assert_eq!(
            sliding(100, 20, 100, now, MIN).remaining,
            sliding_left(100, 21, 100, now, MIN)
        );
    }

    #[test]
    fn sliding_full_window_waits_for_next() {
        let now = 10 * MIN + MIN / 2;
        let v = sliding(0, 100, 100, now, MIN);
        assert!(!v.allowed);
        // Rest of this window (30 s), then the full window weighs 100 -> room once 100*(1-e) <= 99.
        assert_eq!(v.retry_ms, MIN / 2 + (MIN - 99 * MIN / 100));
    }
}
