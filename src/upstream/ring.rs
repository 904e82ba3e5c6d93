//! Consistent hashing (`algorithm = "consistent_hash"`): a hash ring of weighted points per target,
//! and the stable hash that places request keys on it.
//!
//! Each target gets about `POINTS_PER_TARGET × its share of the weight × the target count` points
//! (so 160 for equal weights, as ketama and nginx's `hash … consistent`), placed by hashing its
//! address and the point's number. A key goes to the target of the first point at or after its
//! hash, wrapping around. Adding or removing a target moves only the keys whose points it takes or
//! gives up (about `1/n` of them); every other key stays where it was.
//!
//! Invariants:
//! - the hash is FNV-1a with a murmur3 finalizer, fixed in this file: every worker, every process
//!   and every build of ringgate places a key on the same target for the same target list, so a
//!   fleet of gateways sends one user to one backend (a cache's or a session's affinity);
//! - a target's points depend on its address and weight only, not on its index, so reordering the
//!   targets in the file changes nothing;
//! - the ring is built once per config generation (and again when `dns_refresh` changes an
//!   address), never per request; a lookup is a binary search with no allocation.

use std::fmt;
use std::net::IpAddr;

use crate::config::model::TargetDef;

/// Points per target at equal weights (ketama's 160: the split of keys between targets stays
/// within a few percent of their weights).
const POINTS_PER_TARGET: u64 = 160;

/// The ring: points sorted by position, each naming a target index.
#[derive(Clone)]
pub struct Ring {
    points: Box<[(u64, u32)]>,
}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ring({} points)", self.points.len())
    }
}

impl Ring {
    /// The ring of `targets` (weights ≥ 1, at most 64 targets per name: config validation).
    pub fn new(targets: &[TargetDef]) -> Ring {
        let n = targets.len() as u64;
        let total: u64 = targets
            .iter()
            .map(|t| u64::from(t.weight))
            .sum::<u64>()
            .max(1);
        let mut points = Vec::new();
        let mut name = String::new();
        for (i, t) in targets.iter().enumerate() {
            let share = POINTS_PER_TARGET * n * u64::from(t.weight);
            let count = ((share + total / 2) / total).max(1);
            for k in 0..count {
                use std::fmt::Write as _;
                name.clear();
                let _ = write!(name, "{}-{k}", t.addr);
                points.push((hash(name.as_bytes()), u32::try_from(i).unwrap_or(u32::MAX)));
            }
        }
        // Ties (two points at one position) break by target index, so the ring is the same
        // however the points were pushed.
        points.sort_unstable();
        Ring {
            points: points.into_boxed_slice(),
        }
    }

    /// The target for a key hashed to `key`: the first point at or after it whose target `usable`
    /// accepts, walking on around the ring past the others (their keys spread over the remaining
    /// targets instead of all landing on one neighbour). With none usable, the key's own target:
    /// health checking fails open. `None` only for an empty ring.
    pub fn pick(&self, key: u64, mut usable: impl FnMut(usize) -> bool) -> Option<usize> {
        let len = self.points.len();
        let start = self.points.partition_point(|p| p.0 < key) % len.max(1);
        let target = |i: usize| {
            self.points
                .get((start + i) % len)
                .map(|p| usize::try_from(p.1).unwrap_or(usize::MAX))
        };
        let first = target(0)?;
        let mut last = None;
        for i in 0..len {
            let t = target(i)?;
            // A run of points of one skipped target asks about it once.
            if last == Some(t) {
                continue;
            }
            if usable(t) {
                return Some(t);
            }
            last = Some(t);
        }
        Some(first)
    }
}

/// 64-bit FNV-1a, then murmur3's finalizer (FNV alone leaves short keys that differ in their last
/// byte close together on the ring). Stable: see the module invariants.
pub fn hash(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
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

/// The value of cookie `name` in one `Cookie` header value (`a=1; b=2`), as sent (quotes kept);
/// names compare exactly (RFC 6265: a cookie name is case-sensitive).
pub fn cookie<'a>(header: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        let (n, v) = (pair.get(..eq)?, pair.get(eq + 1..)?);
        (n.trim_ascii() == name).then(|| v.trim_ascii())
    })
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
            })
            .collect()
    }

    /// Where keys `user-0..n` go.
    fn placement(ring: &Ring, n: usize, usable: impl Fn(usize) -> bool) -> Vec<usize> {
        (0..n)
            .map(|i| {
                ring.pick(hash(format!("user-{i}").as_bytes()), &usable)
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
        let ring = Ring::new(&targets(&[100, 100, 100, 100]));
        for s in shares(&placement(&ring, 40_000, |_| true), 4) {
            assert!((0.20..0.30).contains(&s), "{s}");
        }
        let ring = Ring::new(&targets(&[300, 100]));
        let s = shares(&placement(&ring, 40_000, |_| true), 2);
        assert!((0.68..0.82).contains(&s[0]), "{s:?}");
    }

    #[test]
    fn removing_a_target_moves_only_its_keys() {
        let all = targets(&[100, 100, 100, 100, 100]);
        let before = placement(&Ring::new(&all), 10_000, |_| true);
        // Target 2 leaves the list (a DNS answer without it, an edited config).
        let mut fewer = all.clone();
        fewer.remove(2);
        let after: Vec<usize> = placement(&Ring::new(&fewer), 10_000, |_| true)
            .into_iter()
            .map(|t| if t >= 2 { t + 1 } else { t })
            .collect();
        let mut moved_elsewhere = 0;
        for (b, a) in before.iter().zip(&after) {
            if *b == 2 {
                assert_ne!(*a, 2);
            } else if a != b {
                moved_elsewhere += 1;
            }
        }
        assert_eq!(moved_elsewhere, 0, "a key not on the removed target moved");
        // Its keys spread over the others rather than all landing on one neighbour.
        let spread: std::collections::HashSet<_> = before
            .iter()
            .zip(&after)
            .filter(|(b, _)| **b == 2)
            .map(|(_, a)| *a)
            .collect();
        assert!(spread.len() >= 3, "{spread:?}");
    }

    #[test]
    fn a_skipped_target_moves_only_its_keys_and_all_skipped_fails_open() {
        let ring = Ring::new(&targets(&[100, 100, 100]));
        let before = placement(&ring, 5_000, |_| true);
        let after = placement(&ring, 5_000, |t| t != 1);
        for (b, a) in before.iter().zip(&after) {
            if *b == 1 {
                assert_ne!(*a, 1);
            } else {
                assert_eq!(a, b);
            }
        }
        assert_eq!(placement(&ring, 5_000, |_| false), before);
    }

    #[test]
    fn the_order_of_targets_changes_nothing() {
        let all = targets(&[100, 50, 100]);
        let before = placement(&Ring::new(&all), 5_000, |_| true);
        let reversed: Vec<TargetDef> = all.iter().rev().cloned().collect();
        let after: Vec<usize> = placement(&Ring::new(&reversed), 5_000, |_| true)
            .into_iter()
            .map(|t| 2 - t)
            .collect();
        assert_eq!(before, after);
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
    }

    #[test]
    fn cookies_by_exact_name() {
        let h = b"theme=dark; sid=abc123;  Sid=other ; empty=; x=\"q\"";
        assert_eq!(cookie(h, b"sid"), Some(&b"abc123"[..]));
        assert_eq!(cookie(h, b"Sid"), Some(&b"other"[..]));
        assert_eq!(cookie(h, b"empty"), Some(&b""[..]));
        assert_eq!(cookie(h, b"x"), Some(&b"\"q\""[..]));
        assert_eq!(cookie(h, b"theme"), Some(&b"dark"[..]));
        assert_eq!(cookie(h, b"missing"), None);
        assert_eq!(cookie(b"sidx=1; xsid=2", b"sid"), None);
    }
}
