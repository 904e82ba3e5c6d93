//! Token bucket decisions: pure, clock passed in (ms). `rate_per_ms` tokens are added per ms up to
//! `burst`; a request takes one token. Tokens may go negative only through merged views of other
//! workers' consumption (over-admission is then paid back before new requests are admitted).

use super::window::Verdict;
use crate::config::model::BucketDef;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub tokens: f64,
    pub at_ms: u64,
}

impl Bucket {
    pub fn full(def: &BucketDef, now_ms: u64) -> Bucket {
        Bucket {
            tokens: def.burst as f64,
            at_ms: now_ms,
        }
    }

    /// Adds the tokens earned since `at_ms`, keeping the level within `-burst..=burst`.
    pub fn refill(&mut self, def: &BucketDef, now_ms: u64) {
        if now_ms > self.at_ms {
            let earned = (now_ms - self.at_ms) as f64 * def.rate_per_ms;
            self.tokens += earned;
            self.at_ms = now_ms;
        }
        // Also without time passing: a reload that lowered the burst keeps the stored level
        // (`limit::same_counts`), which may be above the new burst, or a debt (shadow mode, an
        // overshoot) below its negative, which would otherwise set Retry-After by the old burst.
        let burst = def.burst as f64;
        self.tokens = self.tokens.clamp(-burst, burst);
    }

    /// Decides one request at `now_ms`, taking a token when admitted.
    pub fn take(&mut self, def: &BucketDef, now_ms: u64) -> Verdict {
        self.refill(def, now_ms);
        let allowed = self.tokens >= 1.0;
        if allowed {
            self.tokens -= 1.0;
        }
        let to_full = ((def.burst as f64 - self.tokens).max(0.0) / def.rate_per_ms).ceil();
        let retry = if allowed {
            0.0
        } else {
            ((1.0 - self.tokens) / def.rate_per_ms).ceil().max(1.0)
        };
        Verdict {
            allowed,
            remaining: self.tokens.max(0.0).floor() as u64,
            reset_ms: to_full as u64,
            retry_ms: retry as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        // 10 per second, burst 5.
        let def = BucketDef {
            rate_per_ms: 0.01,
            burst: 5,
        };
        let mut b = Bucket::full(&def, 1_000);
        for i in 0..5 {
            let v = b.take(&def, 1_000);
            assert!(v.allowed, "request {i}");
            assert_eq!(v.remaining, 4 - i);
        }
        let v = b.take(&def, 1_000);
        assert!(!v.allowed);
        assert_eq!(v.retry_ms, 100);
        assert!(!b.take(&def, 1_099).allowed);
        assert!(b.take(&def, 1_100).allowed);
        // Long idle: capped at burst.
        let v = b.take(&def, 100_000);
        assert!(v.allowed);
        assert_eq!(v.remaining, 4);
        assert_eq!(v.reset_ms, 100);
    }

    #[test]
    fn negative_tokens_are_paid_back() {
        let def = BucketDef {
            rate_per_ms: 0.001,
            burst: 2,
        };
        let mut b = Bucket {
            tokens: -1.0,
            at_ms: 0,
        };
        assert!(!b.take(&def, 1_000).allowed); // back to 0
        assert!(!b.take(&def, 1_999).allowed);
        assert!(b.take(&def, 2_000).allowed);
    }

    #[test]
    fn a_level_above_a_lowered_burst_is_cut_to_it() {
        // Full at burst 10, then a reload to burst 3: the same millisecond already sees 3.
        let old = BucketDef {
            rate_per_ms: 0.01,
            burst: 10,
        };
        let new = BucketDef { burst: 3, ..old };
        let mut b = Bucket::full(&old, 5);
        let v = b.take(&new, 5);
        assert!(v.allowed);
        assert_eq!(v.remaining, 2);
        // A debt below the new -burst is cut to it too: Retry-After follows the new burst.
        let mut b = Bucket {
            tokens: -10.0,
            at_ms: 5,
        };
        let v = b.take(&new, 5);
        assert!(!v.allowed);
        assert_eq!(v.retry_ms, 400); // (1 - -3) / 0.01
    }
}
