//! A bounded map from a 32-byte digest to a credential index, one per worker and plugin instance.
//!
//! Used to remember basic-auth credentials that passed a bcrypt check, keyed by
//! SHA-256(username ":" password), so the expensive check runs once per credential per worker and
//! generation. Invariants: at most `cap` entries (the oldest insertion is evicted first); a lookup
//! never allocates; the cache dies with its config generation, so changed credentials take effect
//! at the next reload.

use std::collections::{HashMap, VecDeque};

#[derive(Debug)]
pub struct DigestCache {
    map: HashMap<[u8; 32], usize>,
    order: VecDeque<[u8; 32]>,
    cap: usize,
}

impl DigestCache {
    pub fn new(cap: usize) -> DigestCache {
        DigestCache {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap,
        }
    }

    pub fn get(&self, key: &[u8; 32]) -> Option<usize> {
        self.map.get(key).copied()
    }

    pub fn insert(&mut self, key: [u8; 32], value: usize) {
        if self.cap == 0 || self.map.contains_key(&key) {
            return;
        }
        while self.map.len() >= self.cap {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
        self.map.insert(key, value);
        self.order.push_back(key);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_fifo() {
        let mut c = DigestCache::new(2);
        c.insert([1; 32], 1);
        c.insert([2; 32], 2);
        c.insert([3; 32], 3);
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(&[1; 32]), None);
        assert_eq!(c.get(&[3; 32]), Some(3));
        let mut off = DigestCache::new(0);
        off.insert([1; 32], 1);
        assert!(off.is_empty());
    }
}
