//! Per-worker cache of tokens that already passed full verification.
//!
//! Layout: a fixed array of `sets x 4` slots allocated once in `new`; a token's hash picks a set,
//! the 4 ways of the set are searched, and a full insert evicts an expired way or else the least
//! recently used one. Memory is bounded: at most `capacity` (rounded up to a multiple of 4) entries,
//! each holding a copy of its token (bounded by the caller's token-size limit; a slot's buffer is
//! reused, so steady state does not allocate even on inserts of same-size tokens).
//!
//! Invariants:
//! - only verified tokens are inserted (by `KeyStore::authenticate`), and a hit requires the stored
//!   token to equal the presented one byte for byte, so a hash collision can cost a miss but never
//!   authenticate anything.
//! - a hit re-checks time against the current rules (exp + leeway, nbf - leeway,
//!   maximum_expiration), so an entry never outlives its token; the issuer/audience checks done at
//!   insert are not repeated, which is why a cache must serve a single `Rules` (one cache per plugin
//!   instance per worker).
//! - the cache is bound to one `KeyStore` id and empties itself when used with a store of another
//!   id, so a reload that forgets to drop it cannot serve tokens of removed keys. A store's id
//!   comes from its content (keys, key strings, owners), so stores with equal ids verify alike.
//! - the lookup path does not allocate: hashing reads at most the last 32 bytes of the token.
//! - the byte comparison is not constant-time, and need not be: it only runs once the seeded hash
//!   of the presented token's last 32 bytes (signature bytes) equals a cached one's, i.e. once the
//!   caller already holds the secret part of that token.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use super::{Rules, Verified};

const WAYS: usize = 4;

#[derive(Default)]
struct Slot {
    hash: u64,
    /// Empty = free slot (a verified token is never empty).
    token: Vec<u8>,
    owner: usize,
    key: u32,
    exp: Option<u64>,
    nbf: Option<u64>,
    last_used: u64,
}

/// A bounded cache of verified tokens; see the module docs. Not shared between threads.
pub struct TokenCache {
    slots: Box<[Slot]>,
    sets: usize,
    seed: u64,
    tick: u64,
    store_id: u64,
    len: usize,
}

impl TokenCache {
    /// A cache for up to `capacity` tokens (rounded up to a multiple of 4); 0 disables caching.
    pub fn new(capacity: usize) -> TokenCache {
        let sets = capacity.div_ceil(WAYS);
        let mut slots = Vec::with_capacity(sets * WAYS);
        slots.resize_with(sets * WAYS, Slot::default);
        // A per-cache random seed makes set placement unpredictable from outside.
        let seed = RandomState::new().hash_one(0x6a77_7463_6163_6865_u64);
        TokenCache {
            slots: slots.into_boxed_slice(),
            sets,
            seed,
            tick: 0,
            store_id: 0,
            len: 0,
        }
    }

    /// Number of slots (the bound on cached tokens).
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Number of tokens cached now.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every token (buffers are kept for reuse).
    pub fn clear(&mut self) {
        for s in self.slots.iter_mut() {
            s.token.clear();
        }
        self.len = 0;
    }

    /// Empties the cache if it was last used with another key store.
    pub(crate) fn bind(&mut self, store_id: u64) {
        if self.store_id != store_id {
            self.clear();
            self.store_id = store_id;
        }
    }

    /// The cached verdict for `token`, if present and still valid at `now`.
    pub(crate) fn lookup(&mut self, token: &[u8], rules: &Rules, now: u64) -> Option<Verified> {
        let hash = self.hash(token);
        let set = self.set_range(hash);
        let slots = self.slots.get_mut(set)?;
        let slot = slots
            .iter_mut()
            .find(|s| s.hash == hash && s.token.as_slice() == token)?;
        if !time_valid(slot.exp, slot.nbf, rules, now) {
            // Expired for good (or clock moved back): free the slot; the cold path will say why.
            slot.token.clear();
            self.len -= 1;
            return None;
        }
        self.tick += 1;
        slot.last_used = self.tick;
        Some(Verified {
            owner: slot.owner,
            key: slot.key as usize,
            exp: slot.exp,
            cached: true,
        })
    }

    /// Remembers a verified token. `nbf` is the token's not-before, for re-checks on hits.
    pub(crate) fn insert(
        &mut self,
        token: &[u8],
        v: &Verified,
        nbf: Option<u64>,
        rules: &Rules,
        now: u64,
    ) {
        let Ok(key) = u32::try_from(v.key) else {
            return;
        };
        let hash = self.hash(token);
        let set = self.set_range(hash);
        let Some(slots) = self.slots.get_mut(set) else {
            return;
        };
        // Prefer a free way, then one whose token has expired, then the least recently used.
        let Some(victim) = slots.iter_mut().min_by_key(|s| {
            if s.token.is_empty() {
                (0, 0)
            } else if !time_valid(s.exp, s.nbf, rules, now) {
                (1, s.last_used)
            } else {
                (2, s.last_used)
            }
        }) else {
            return;
        };
        if victim.token.is_empty() {
            self.len += 1;
        }
        self.tick += 1;
        victim.hash = hash;
        victim.token.clear();
        victim.token.extend_from_slice(token);
        victim.owner = v.owner;
        victim.key = key;
        victim.exp = v.exp;
        victim.nbf = nbf;
        victim.last_used = self.tick;
    }

    fn set_range(&self, hash: u64) -> std::ops::Range<usize> {
        // Multiply-shift maps the hash onto [0, sets) without a power-of-two table.
        let set = ((u128::from(hash) * self.sets as u128) >> 64) as usize;
        set * WAYS..set * WAYS + WAYS
    }

    /// Hashes the token's last 32 bytes and its length. For any token that can be in the cache
    /// those bytes are signature bytes (at least 43 base64 characters for every algorithm), which
    /// nobody can choose without the signing key, so they spread entries as well as hashing the
    /// whole token would, at a fixed cost. Collisions are harmless (see module invariants).
    fn hash(&self, token: &[u8]) -> u64 {
        let tail = token
            .get(token.len().saturating_sub(32)..)
            .unwrap_or_default();
        let mut w = [0u64; 4];
        for (word, chunk) in w.iter_mut().zip(tail.chunks(8)) {
            let mut b = [0u8; 8];
            for (d, s) in b.iter_mut().zip(chunk) {
                *d = *s;
            }
            *word = u64::from_le_bytes(b);
        }
        let [a, b, c, d] = w;
        let h = fold(a ^ self.seed, b ^ 0x9e37_79b9_7f4a_7c15)
            ^ fold(c ^ 0xc2b2_ae3d_27d4_eb4f, d ^ self.seed.rotate_left(29));
        fold(h ^ token.len() as u64, 0x1656_67b1_9e37_79f9)
    }
}

/// The time checks of `authenticate`, on stored claims.
fn time_valid(exp: Option<u64>, nbf: Option<u64>, rules: &Rules, now: u64) -> bool {
    if rules.verify_exp && exp.is_some_and(|e| now >= e.saturating_add(rules.leeway_seconds)) {
        return false;
    }
    if rules.verify_nbf && nbf.is_some_and(|n| now.saturating_add(rules.leeway_seconds) < n) {
        return false;
    }
    if let (Some(max), Some(e)) = (rules.maximum_expiration, exp) {
        if e.saturating_sub(now) > max {
            return false;
        }
    }
    true
}

/// 64x64 -> 128 multiply folded to 64 bits: a cheap, well-mixing combiner.
fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}
