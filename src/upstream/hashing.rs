//! Consistent hashing (`algorithm = "consistent_hash"`) by weighted rendezvous hashing (highest
//! random weight): every target scores a request's key, `weight / -ln(u)` with `u` a uniform draw
//! from hashing the key with the target's identity, and the highest score wins.
//!
//! Why rendezvous rather than a ring of points (ketama): a target's chance is exactly its share of
//! the weight whatever the weights are, and its score depends on itself and the key alone. So
//! adding, removing or ejecting a target moves only the keys it takes or gives up (its share,
//! spread over the others in proportion to their weights), also with unequal weights. A ring keeps
//! that only if a target's point count follows its own weight alone (counts following weight
//! *shares* change for everyone when one target comes or goes), and then its size follows the
//! weights' scale, up to 65,535 here. There is no walk past ejected targets either: they just do
//! not compete. The cost is one score per target and request (see bench/balance.rs), small for the
//! handful of targets an upstream usually has.
//!
//! Invariants:
//! - the hash is FNV-1a with murmur3's finalizer, fixed in this file, and a target's identity is
//!   its name as written (in lower case) and its address: every worker, every process and every
//!   build of ringgate places a key on the same target for the same targets, so a fleet of
//!   gateways sends one user to one backend (a cache's or a session's affinity). Reordering the
//!   targets in the file changes nothing;
//! - built once per config generation (and again when `dns_refresh` changes an address), never per
//!   request; a pick allocates nothing.

use std::net::IpAddr;

use crate::config::model::TargetDef;

/// Each target's identity hash and weight.
#[derive(Debug, Clone)]
pub struct Rendezvous {
    ids: Box<[u64]>,
    weights: Box<[f64]>,
    /// All weights are equal: the highest draw wins (the order the scores would give).
    equal: bool,
}

impl Rendezvous {
    pub fn new(targets: &[TargetDef]) -> Rendezvous {
        // Name and address: two spellings of one address (`localhost:80`, `127.0.0.1:80`, which
        // validation cannot tell apart before resolving) are two targets, as for round-robin,
        // not one identity whose tie the order in the file would break.
        let ids = targets
            .iter()
            .map(|t| hash(format!("{}@{}", t.name.to_ascii_lowercase(), t.addr).as_bytes()))
            .collect();
        let weights: Box<[f64]> = targets.iter().map(|t| f64::from(t.weight)).collect();
        let equal = weights.windows(2).all(|w| w[0] == w[1]);
        Rendezvous {
            ids,
            weights,
            equal,
        }
    }

    /// The target for a key hashed to `key`: the best scoring one among those `usable` accepts;
    /// with none usable, the best of all (health checking fails open). `None` only with no
    /// targets.
    pub fn pick(&self, key: u64, mut usable: impl FnMut(usize) -> bool) -> Option<usize> {
        self.pick_among(key, &mut usable)
            .or_else(|| self.pick_among(key, &mut |_| true))
    }

    /// The best scoring target among those `usable` accepts; `None` when it accepts none.
    pub fn pick_among(&self, key: u64, usable: &mut impl FnMut(usize) -> bool) -> Option<usize> {
        self.next_below(key, None, usable).map(|(i, _)| i)
    }

    /// Where target `t` ranks for a key (`None` for no such target): the bound `next_below`
    /// starts failover from.
    pub fn rank(&self, key: u64, t: usize) -> Option<Rank> {
        let (&id, &w) = self.ids.get(t).zip(self.weights.get(t))?;
        Some(self.score(key, id, w, t))
    }

    /// The best scoring target that ranks strictly below `below` (any, when `None`) among those
    /// `usable` accepts, with its rank; `None` when there is none. Failover walks the targets in
    /// score order with it: the target a key goes to when its own fails is the one it would go to
    /// with that target removed or ejected, so a failing target's keys spread over the others by
    /// weight (a walk down the list would pile them all on its neighbour), and every gateway of a
    /// fleet fails them over alike. `usable` is asked only about targets below the bound.
    pub fn next_below(
        &self,
        key: u64,
        below: Option<Rank>,
        usable: &mut impl FnMut(usize) -> bool,
    ) -> Option<(usize, Rank)> {
        let mut best: Option<Rank> = None;
        for (i, (&id, &w)) in self.ids.iter().zip(self.weights.iter()).enumerate() {
            let rank = self.score(key, id, w, i);
            if let Some(b) = &below {
                if !rank.below(b) {
                    continue;
                }
            }
            if let Some(b) = &best {
                if !b.below(&rank) {
                    continue;
                }
            }
            if usable(i) {
                best = Some(rank);
            }
        }
        best.map(|r| (r.index, r))
    }

    #[inline]
    fn score(&self, key: u64, id: u64, w: f64, index: usize) -> Rank {
        let draw = mix(key ^ id);
        // With equal weights the draw alone orders the targets as the scores would, without a
        // logarithm per target.
        let score = if self.equal {
            0.0
        } else {
            // u in (0, 1]: 53 random bits, never 0 (ln(0) is -inf). The top draw, u = 1, is the
            // best score (w / 0), as it is with equal weights.
            let u = ((draw >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64);
            let d = -u.ln();
            if d > 0.0 {
                w / d
            } else {
                f64::INFINITY
            }
        };
        Rank { score, draw, index }
    }
}

/// A target's standing for one key: by score, then by draw. Draws of different targets tie only
/// if their identity hashes do (a 64-bit collision), so the order of targets in the file decides
/// nothing in practice; the index breaks that tie only to keep the order strict (failover visits
/// each target once).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rank {
    score: f64,
    draw: u64,
    index: usize,
}

impl Rank {
    /// Strictly worse than `other`. Scores are never NaN (weights are at least 1, `-ln(u)` is
    /// positive or handled as infinite).
    #[inline]
    fn below(&self, other: &Rank) -> bool {
        // Spelled out rather than as a tuple comparison: it runs once per target and request.
        if self.score != other.score {
            return self.score < other.score;
        }
        if self.draw != other.draw {
            return self.draw < other.draw;
        }
        self.index > other.index
    }
}

/// 64-bit FNV-1a, then murmur3's finalizer (FNV alone leaves keys that differ in their last byte
/// close together). Stable: see the module invariants.
pub fn hash(data: &[u8]) -> u64 {
    hash_bytes(data.iter().copied())
}

/// `hash` of bytes as an iterator yields them (a form-decoded query value, decoded as it is
/// hashed: no buffer).
pub fn hash_bytes(data: impl Iterator<Item = u8>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// murmur3's 64-bit finalizer: every input bit flips each output bit with probability ~1/2.
fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The hash of a client address: an IPv4-mapped IPv6 address hashes as its IPv4 address, so a
/// dual-stack listener places a client where an IPv4 one does.
pub fn hash_ip(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => hash(&v4.octets()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => hash(&v4.octets()),
            None => hash(&v6.octets()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn targets(weights: &[u32]) -> Vec<TargetDef> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| TargetDef {
                name: format!("t{i}"),
                addr: SocketAddr::from(([10, 0, 0, i as u8 + 1], 8080)),
                weight,
                max_conns: None,
            })
            .collect()
    }

    /// Where keys `user-0..n` go.
    fn placement(r: &Rendezvous, n: usize, usable: impl Fn(usize) -> bool) -> Vec<usize> {
        (0..n)
            .map(|i| {
                r.pick(hash(format!("user-{i}").as_bytes()), &usable)
                    .expect("a target")
            })
            .collect()
    }

    fn shares(placed: &[usize], targets: usize) -> Vec<f64> {
        let mut counts = vec![0usize; targets];
        for &t in placed {
            counts[t] += 1;
        }
        counts
            .iter()
            .map(|&c| c as f64 / placed.len() as f64)
            .collect()
    }

    #[test]
    fn keys_split_by_weight() {
        let r = Rendezvous::new(&targets(&[100, 100, 100, 100]));
        for s in shares(&placement(&r, 40_000, |_| true), 4) {
            assert!((0.24..0.26).contains(&s), "{s}");
        }
        let r = Rendezvous::new(&targets(&[300, 100]));
        let s = shares(&placement(&r, 40_000, |_| true), 2);
        assert!((0.74..0.76).contains(&s[0]), "{s:?}");
        let r = Rendezvous::new(&targets(&[1, 2, 5]));
        let s = shares(&placement(&r, 40_000, |_| true), 3);
        for (got, want) in s.iter().zip([0.125, 0.25, 0.625]) {
            assert!((got - want).abs() < 0.01, "{s:?}");
        }
    }

    /// Only the removed target's keys move, with equal and with unequal weights (where a ring
    /// whose points follow weight shares reshuffles the others too), spread over the others.
    #[test]
    fn removing_a_target_moves_only_its_keys() {
        for weights in [&[100, 100, 100, 100, 100][..], &[200, 100, 100, 50, 7]] {
            let all = targets(weights);
            let before = placement(&Rendezvous::new(&all), 10_000, |_| true);
            let mut fewer = all.clone();
            fewer.remove(2);
            let after: Vec<usize> = placement(&Rendezvous::new(&fewer), 10_000, |_| true)
                .into_iter()
                .map(|t| if t >= 2 { t + 1 } else { t })
                .collect();
            let mut spread = std::collections::HashSet::new();
            for (b, a) in before.iter().zip(&after) {
                if *b == 2 {
                    assert_ne!(*a, 2);
                    spread.insert(*a);
                } else {
                    assert_eq!(a, b, "{weights:?}: a key not on the removed target moved");
                }
            }
            assert_eq!(spread.len(), 4, "{weights:?}: {spread:?}");
        }
    }

    #[test]
    fn a_skipped_target_moves_only_its_keys_and_all_skipped_fails_open() {
        for weights in [&[100, 100, 100][..], &[100, 30, 60]] {
            let r = Rendezvous::new(&targets(weights));
            let before = placement(&r, 5_000, |_| true);
            let after = placement(&r, 5_000, |t| t != 1);
            for (b, a) in before.iter().zip(&after) {
                if *b == 1 {
                    assert_ne!(*a, 1);
                } else {
                    assert_eq!(a, b);
                }
            }
            assert_eq!(placement(&r, 5_000, |_| false), before);
        }
        assert_eq!(Rendezvous::new(&[]).pick(1, |_| true), None);
    }

    /// Failover walks every target once, best score first, and the target after each is where
    /// the key goes with the ones before it taken out (ejected, or removed from the file).
    #[test]
    fn failover_walks_the_targets_in_score_order() {
        for weights in [&[100, 100, 100, 100, 100][..], &[200, 100, 100, 50, 7]] {
            let all = targets(weights);
            let r = Rendezvous::new(&all);
            for k in 0..2_000 {
                let key = hash(format!("user-{k}").as_bytes());
                let mut walked = Vec::new();
                let mut below = None;
                while let Some((t, rank)) = r.next_below(key, below, &mut |_| true) {
                    assert_eq!(r.rank(key, t), Some(rank));
                    // The oracle: a pick among the targets not yet walked, as a config without
                    // the walked ones builds them (mapped back to indices by name).
                    let rest: Vec<TargetDef> = (0..all.len())
                        .filter(|i| !walked.contains(i))
                        .map(|i| all[i].clone())
                        .collect();
                    let picked = Rendezvous::new(&rest)
                        .pick(key, |_| true)
                        .map(|i| &rest[i].name);
                    assert_eq!(picked, Some(&all[t].name), "{weights:?} key {k}");
                    walked.push(t);
                    below = Some(rank);
                }
                let mut sorted = walked.clone();
                sorted.sort_unstable();
                assert_eq!(sorted, vec![0, 1, 2, 3, 4], "{weights:?}");
                // Starting below a target skips it and every better one; `usable` is honoured.
                let third = r.rank(key, walked[2]);
                let rest = r.next_below(key, third, &mut |i| i != walked[3]);
                assert_eq!(rest.map(|(t, _)| t), Some(walked[4]));
            }
        }
        assert_eq!(Rendezvous::new(&targets(&[1])).rank(1, 1), None);
    }

    #[test]
    fn the_order_of_targets_changes_nothing() {
        for weights in [&[100, 100, 100][..], &[100, 50, 100]] {
            let all = targets(weights);
            let before = placement(&Rendezvous::new(&all), 5_000, |_| true);
            let reversed: Vec<TargetDef> = all.iter().rev().cloned().collect();
            let after: Vec<usize> = placement(&Rendezvous::new(&reversed), 5_000, |_| true)
                .into_iter()
                .map(|t| 2 - t)
                .collect();
            assert_eq!(before, after);
        }
    }

    #[test]
    fn the_hash_is_fixed() {
        // A change here re-shuffles every fleet's users on upgrade: it must be deliberate.
        assert_eq!(hash(b""), 17_280_346_270_528_514_342);
        assert_eq!(hash(b"alice"), 3_821_251_815_001_557_236);
        assert_ne!(hash(b"alice"), hash(b"alicf"));
        assert_eq!(
            hash_ip("::ffff:10.1.2.3".parse().expect("ip")),
            hash_ip("10.1.2.3".parse().expect("ip"))
        );
        assert_ne!(
            hash_ip("10.1.2.3".parse().expect("ip")),
            hash_ip("10.1.2.4".parse().expect("ip"))
        );
        // And so are the picks built on it.
        let r = Rendezvous::new(&targets(&[100, 100, 100]));
        let w = Rendezvous::new(&targets(&[100, 200, 300]));
        let got: Vec<(usize, usize)> = ["alice", "bob", "carol", "dave"]
            .iter()
            .map(|k| {
                let h = hash(k.as_bytes());
                (
                    r.pick(h, |_| true).unwrap_or(9),
                    w.pick(h, |_| true).unwrap_or(9),
                )
            })
            .collect();
        assert_eq!(got, vec![(2, 2), (2, 2), (1, 1), (0, 2)]);
    }

    /// Two spellings of one address are two identities: both get keys, and which key goes to
    /// which does not depend on their order in the file.
    #[test]
    fn two_names_for_one_address_are_two_targets() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 80));
        let t = |name: &str| TargetDef {
            name: name.into(),
            addr,
            weight: 100,
            max_conns: None,
        };
        let both = [t("localhost:80"), t("127.0.0.1:80")];
        let before = placement(&Rendezvous::new(&both), 2_000, |_| true);
        let s = shares(&before, 2);
        assert!(s[0] > 0.4 && s[1] > 0.4, "{s:?}");
        let swapped = [t("127.0.0.1:80"), t("LocalHost:80")];
        let after: Vec<usize> = placement(&Rendezvous::new(&swapped), 2_000, |_| true)
            .into_iter()
            .map(|i| 1 - i)
            .collect();
        assert_eq!(before, after);
    }
}
