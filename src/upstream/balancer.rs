//! Smooth weighted round-robin (the algorithm nginx uses): every pick adds each target's weight to its
//! running score, picks the highest score and subtracts the total from it. Over any window of
//! `sum(weights)` picks each target is chosen exactly `weight` times, and picks are spread out
//! (80/20 gives a b-target every fifth request, not 20 in a row).
//!
//! State is per worker and per upstream; with N workers the split holds per worker and so overall.
//!
//! A reload or `dns_refresh` builds new balancers: one whose upstream kept the same targets and
//! weights continues the old one's rotation (`worker.rs`); a new one starts at a random point of
//! its cycle (`new_spread`), so frequent reloads do not send every worker's next request to the
//! first target (a review saw 12 of 16 requests go to one of three equal targets).
//!
//! `pick_least` is least connections on top of the same rotation (ties rotate by weight).
//!
//! `pick_where` skips targets health checking took out the way nginx does: a skipped target neither
//! gains score nor counts in the total, so the others keep their smooth weighted split among
//! themselves, and the skipped one rejoins with the score it had.

/// At most this many picks spent on a random start (`new_spread`).
const SPREAD_MAX: u64 = 256;

#[derive(Debug, Clone)]
pub struct Swrr {
    weights: Box<[i64]>,
    current: Box<[i64]>,
    total: i64,
}

impl Swrr {
    /// `weights` must be non-empty and each >= 1 (guaranteed by config validation).
    pub fn new(weights: impl IntoIterator<Item = u32>) -> Swrr {
        let weights: Box<[i64]> = weights.into_iter().map(i64::from).collect();
        let total = weights.iter().sum();
        let current = vec![0; weights.len()].into_boxed_slice();
        Swrr {
            weights,
            current,
            total,
        }
    }

    /// `new`, advanced `seed % min(sum of weights, SPREAD_MAX)` picks into its cycle: a random
    /// seed makes it start at a random target (in proportion to the weights), at a bounded cost.
    pub fn new_spread(weights: impl IntoIterator<Item = u32>, seed: u64) -> Swrr {
        let mut b = Swrr::new(weights);
        let span = u64::try_from(b.total).unwrap_or(1).clamp(1, SPREAD_MAX);
        for _ in 0..seed % span {
            b.pick();
        }
        b
    }

    /// The same targets and weights, in the same order (so `other`'s state may continue here).
    pub fn same_weights(&self, weights: impl IntoIterator<Item = u32>) -> bool {
        self.weights
            .iter()
            .copied()
            .eq(weights.into_iter().map(i64::from))
    }

    pub fn len(&self) -> usize {
        self.weights.len()
    }

    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    /// The next target index.
    pub fn pick(&mut self) -> usize {
        let mut best = 0;
        for i in 0..self.weights.len() {
            self.current[i] += self.weights[i];
            if self.current[i] > self.current[best] {
                best = i;
            }
        }
        if let Some(c) = self.current.get_mut(best) {
            *c -= self.total;
        }
        best
    }

    /// The next target index among those `usable` accepts; `None` when it accepts none (the caller
    /// decides what that means: health checking fails open).
    pub fn pick_where(&mut self, mut usable: impl FnMut(usize) -> bool) -> Option<usize> {
        self.rotate(|i, _| usable(i))
    }

    /// `pick_where`, with each candidate's weight passed along.
    fn rotate(&mut self, mut usable: impl FnMut(usize, i64) -> bool) -> Option<usize> {
        let mut best: Option<usize> = None;
        let mut total = 0;
        for i in 0..self.weights.len() {
            let w = self.weights[i];
            if !usable(i, w) {
                continue;
            }
            self.current[i] += w;
            total += w;
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        if let Some(c) = best.and_then(|b| self.current.get_mut(b)) {
            *c -= total;
        }
        best
    }

    /// Least connections (`algorithm = "least_conn"`, nginx's `least_conn`): among the targets
    /// `usable` accepts, one with the fewest requests in flight for its weight (`load(t) / weight`,
    /// compared as cross products), ties broken by the smooth weighted rotation, so equal loads
    /// still split by weight. `None` when `usable` accepts none.
    pub fn pick_least(
        &mut self,
        load: impl Fn(usize) -> u64,
        mut usable: impl FnMut(usize) -> bool,
    ) -> Option<usize> {
        // (load, weight) of the best so far.
        let mut best: Option<(u128, u128)> = None;
        for (i, &w) in self.weights.iter().enumerate() {
            if !usable(i) {
                continue;
            }
            let (l, w) = (u128::from(load(i)), w.unsigned_abs().into());
            if best.is_none_or(|(bl, bw)| l * bw < bl * w) {
                best = Some((l, w));
            }
        }
        let (bl, bw) = best?;
        self.rotate(|i, w| {
            usable(i) && u128::from(load(i)) * bw == bl * u128::from(w.unsigned_abs())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eighty_twenty_is_exact_and_spread() {
        let mut b = Swrr::new([80, 20]);
        let picks: Vec<usize> = (0..100).map(|_| b.pick()).collect();
        assert_eq!(picks.iter().filter(|&&p| p == 0).count(), 80);
        // Never more than 4 a-picks in a row: the b picks are interleaved.
        let longest = picks.split(|&p| p == 1).map(|run| run.len()).max().unwrap();
        assert!(longest <= 4, "{picks:?}");
    }

    #[test]
    fn weights_5_1_1_match_nginx_sequence() {
        let mut b = Swrr::new([5, 1, 1]);
        let seq: Vec<usize> = (0..7).map(|_| b.pick()).collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn skipping_a_target_keeps_the_others_split() {
        let mut b = Swrr::new([5, 1, 1]);
        let picks: Vec<usize> = (0..60).filter_map(|_| b.pick_where(|i| i != 1)).collect();
        assert_eq!(picks.len(), 60);
        assert_eq!(picks.iter().filter(|&&p| p == 0).count(), 50);
        assert_eq!(picks.iter().filter(|&&p| p == 2).count(), 10);
        assert_eq!(b.pick_where(|_| false), None);
        // Back in: its share again (its score was kept, so within one pick of exact).
        let all: Vec<usize> = (0..70).map(|_| b.pick()).collect();
        let ones = all.iter().filter(|&&p| p == 1).count();
        assert!((9..=11).contains(&ones), "{all:?}");
    }

    #[test]
    fn a_spread_start_begins_at_the_seeded_point_of_the_cycle() {
        let firsts: Vec<usize> = (0..3)
            .map(|seed| Swrr::new_spread([1, 1, 1], seed).pick())
            .collect();
        assert_eq!(firsts, vec![0, 1, 2]);
        // Still exact over a cycle.
        let mut b = Swrr::new_spread([5, 1, 1], 4);
        let mut n = [0; 3];
        for _ in 0..7 {
            n[b.pick()] += 1;
        }
        assert_eq!(n, [5, 1, 1]);
        assert!(b.same_weights([5, 1, 1]) && !b.same_weights([5, 1]));
    }

    #[test]
    fn least_conn_takes_the_least_loaded_for_its_weight_and_rotates_ties() {
        let mut b = Swrr::new([100, 100, 100]);
        let loads = [3u64, 1, 2];
        assert_eq!(b.pick_least(|i| loads[i], |_| true), Some(1));
        assert_eq!(b.pick_least(|i| loads[i], |i| i != 1), Some(2));
        assert_eq!(b.pick_least(|i| loads[i], |_| false), None);
        // Equal loads rotate like round-robin.
        let picks: Vec<usize> = (0..6)
            .map(|_| b.pick_least(|_| 0, |_| true).unwrap_or(9))
            .collect();
        for t in 0..3 {
            assert_eq!(picks.iter().filter(|&&p| p == t).count(), 2, "{picks:?}");
        }
        // Weight 300 with 2 in flight (2/300) beats weight 100 with 1 (1/100).
        let mut b = Swrr::new([300, 100]);
        assert_eq!(b.pick_least(|i| [2, 1][i], |_| true), Some(0));
        assert_eq!(b.pick_least(|i| [4, 1][i], |_| true), Some(1));
        // Idle targets split by weight.
        let picks: Vec<usize> = (0..8)
            .map(|_| b.pick_least(|_| 0, |_| true).unwrap_or(9))
            .collect();
        assert_eq!(picks.iter().filter(|&&p| p == 0).count(), 6, "{picks:?}");
    }

    #[test]
    fn single_target() {
        let mut b = Swrr::new([1]);
        assert!((0..10).all(|_| b.pick() == 0));
    }
}
