//! A bounded key table with least-recently-used eviction and a dirty list, used per limiter instance
//! by each worker (`LimiterSet`) and by the reconciler.
//!
//! Invariants: at most `cap` live keys; slots form a doubly linked list from most (`head`) to least
//! (`tail`) recently used; a key is stored once (`Rc<[u8]>` shared by the map and its slot). Lookups
//! of a present key never allocate; inserting a new key allocates its bytes once (slot storage is
//! reused after eviction). Keys are attacker-controlled, so the map keeps std's randomly seeded
//! SipHash (hash flooding resistance) rather than a fast unkeyed hasher.

use std::collections::HashMap;
use std::rc::Rc;

const NIL: u32 = u32::MAX;

struct Slot<V> {
    key: Option<Rc<[u8]>>,
    prev: u32,
    next: u32,
    /// Last time (ms) `get_or_insert` touched it.
    last_seen: u64,
    dirty: bool,
    value: V,
}

pub struct KeyTable<V> {
    map: HashMap<Rc<[u8]>, u32>,
    slots: Vec<Slot<V>>,
    free: Vec<u32>,
    head: u32,
    tail: u32,
    cap: usize,
    dirty: Vec<u32>,
}

/// What `get_or_insert` did.
pub struct Got {
    pub slot: u32,
    /// The key was not present: its value was reset with the `init` callback.
    pub fresh: bool,
}

impl<V> KeyTable<V> {
    pub fn new(cap: usize) -> KeyTable<V> {
        KeyTable {
            map: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            cap: cap.max(1),
            dirty: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Changes the cap; keys beyond a lower cap are evicted now, least recently used first
    /// (`on_evict` sees each first).
    pub fn set_cap(&mut self, cap: usize, mut on_evict: impl FnMut(&[u8], &mut V)) {
        self.cap = cap.max(1);
        while self.map.len() > self.cap && self.tail != NIL {
            let t = self.tail;
            if let Some(s) = self.slots.get_mut(t as usize) {
                if let Some(k) = &s.key {
                    on_evict(k, &mut s.value);
                }
            }
            self.unlink_and_forget(t);
            self.free.push(t);
        }
    }

    /// The slot of `key` without touching recency.
    pub fn find(&self, key: &[u8]) -> Option<u32> {
        self.map.get(key).copied()
    }

    /// The slot of `key`, made most recently used. A new key takes a free slot, or evicts the least
    /// recently used one at the cap (`on_evict` sees its key and value first, e.g. to flush counts);
    /// its value is then reset by `init`.
    pub fn get_or_insert(
        &mut self,
        key: &[u8],
        now_ms: u64,
        new_value: impl FnOnce() -> V,
        init: impl FnOnce(&mut V),
        on_evict: impl FnOnce(&[u8], &mut V),
    ) -> Got {
        if let Some(&slot) = self.map.get(key) {
            self.touch(slot, now_ms);
            return Got { slot, fresh: false };
        }
        let rc: Rc<[u8]> = Rc::from(key);
        let slot = if let Some(s) = self.free.pop() {
            s
        } else if self.map.len() >= self.cap && self.tail != NIL {
            let victim = self.tail;
            if let Some(v) = self.slots.get_mut(victim as usize) {
                if let Some(k) = &v.key {
                    on_evict(k, &mut v.value);
                }
            }
            self.unlink_and_forget(victim);
            victim
        } else {
            self.slots.push(Slot {
                key: None,
                prev: NIL,
                next: NIL,
                last_seen: now_ms,
                dirty: false,
                value: new_value(),
            });
            (self.slots.len() - 1) as u32
        };
        if let Some(s) = self.slots.get_mut(slot as usize) {
            s.key = Some(rc.clone());
            s.last_seen = now_ms;
            s.dirty = false;
            init(&mut s.value);
        }
        self.map.insert(rc, slot);
        self.push_front(slot);
        Got { slot, fresh: true }
    }

    /// Inserts `key` (most recently used, seen at `now_ms`) only while the table is below its cap,
    /// so nothing is evicted for it; its value is reset by `init`. `None` if the key is present or
    /// the table is full.
    pub fn insert_if_room(
        &mut self,
        key: &[u8],
        now_ms: u64,
        new_value: impl FnOnce() -> V,
        init: impl FnOnce(&mut V),
    ) -> Option<u32> {
        if self.map.len() >= self.cap || self.map.contains_key(key) {
            return None;
        }
        Some(
            self.get_or_insert(key, now_ms, new_value, init, |_, _| {})
                .slot,
        )
    }

    pub fn value(&self, slot: u32) -> Option<&V> {
        self.slots
            .get(slot as usize)
            .filter(|s| s.key.is_some())
            .map(|s| &s.value)
    }

    pub fn value_mut(&mut self, slot: u32) -> Option<&mut V> {
        self.slots
            .get_mut(slot as usize)
            .filter(|s| s.key.is_some())
            .map(|s| &mut s.value)
    }

    /// Key and value of a live slot.
    pub fn entry_mut(&mut self, slot: u32) -> Option<(&[u8], &mut V)> {
        let s = self.slots.get_mut(slot as usize)?;
        let k = s.key.as_deref()?;
        Some((k, &mut s.value))
    }

    /// Puts a live slot on the dirty list (once until `take_dirty`).
    pub fn mark_dirty(&mut self, slot: u32) {
        if let Some(s) = self.slots.get_mut(slot as usize) {
            if s.key.is_some() && !s.dirty {
                s.dirty = true;
                self.dirty.push(slot);
            }
        }
    }

    /// Puts every live slot on the dirty list.
    pub fn mark_all_dirty(&mut self) {
        for (i, s) in self.slots.iter_mut().enumerate() {
            if s.key.is_some() && !s.dirty {
                s.dirty = true;
                self.dirty.push(i as u32);
            }
        }
    }

    /// Moves the dirty list into `out` (cleared first) and clears the flags; slots evicted since are
    /// skipped.
    pub fn take_dirty(&mut self, out: &mut Vec<u32>) {
        out.clear();
        for &slot in &self.dirty {
            if let Some(s) = self.slots.get_mut(slot as usize) {
                if s.dirty && s.key.is_some() {
                    s.dirty = false;
                    out.push(slot);
                }
            }
        }
        self.dirty.clear();
    }

    /// Evicts keys not seen since `older_than_ms`, least recently used first (stops at the first
    /// recent one, so the cost is proportional to what is evicted). `on_evict` sees each first.
    pub fn evict_idle(&mut self, older_than_ms: u64, mut on_evict: impl FnMut(&[u8], &mut V)) {
        while self.tail != NIL {
            let t = self.tail;
            let Some(s) = self.slots.get_mut(t as usize) else {
                break;
            };
            if s.last_seen >= older_than_ms {
                break;
            }
            if let Some(k) = &s.key {
                on_evict(k, &mut s.value);
            }
            self.unlink_and_forget(t);
            self.free.push(t);
        }
    }

    /// Slots seen at or after `since_ms`, most recent first, at most `max` (appended to `out`).
    pub fn recent(&self, since_ms: u64, max: usize, out: &mut Vec<u32>) {
        let mut at = self.head;
        while at != NIL && out.len() < max {
            let Some(s) = self.slots.get(at as usize) else {
                break;
            };
            if s.last_seen < since_ms {
                break;
            }
            out.push(at);
            at = s.next;
        }
    }

    fn touch(&mut self, slot: u32, now_ms: u64) {
        if let Some(s) = self.slots.get_mut(slot as usize) {
            s.last_seen = s.last_seen.max(now_ms);
        }
        if self.head != slot {
            self.unlink(slot);
            self.push_front(slot);
        }
    }

    fn unlink_and_forget(&mut self, slot: u32) {
        self.unlink(slot);
        if let Some(s) = self.slots.get_mut(slot as usize) {
            s.dirty = false;
            if let Some(k) = s.key.take() {
                self.map.remove(&k);
            }
        }
    }

    fn unlink(&mut self, slot: u32) {
        let (prev, next) = match self.slots.get(slot as usize) {
            Some(s) => (s.prev, s.next),
            None => return,
        };
        match self.slots.get_mut(prev as usize) {
            Some(p) => p.next = next,
            None => self.head = next,
        }
        match self.slots.get_mut(next as usize) {
            Some(n) => n.prev = prev,
            None => self.tail = prev,
        }
        if let Some(s) = self.slots.get_mut(slot as usize) {
            s.prev = NIL;
            s.next = NIL;
        }
    }

    fn push_front(&mut self, slot: u32) {
        let old = self.head;
        if let Some(s) = self.slots.get_mut(slot as usize) {
            s.prev = NIL;
            s.next = old;
        }
        if let Some(h) = self.slots.get_mut(old as usize) {
            h.prev = slot;
        }
        self.head = slot;
        if self.tail == NIL {
            self.tail = slot;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ins(t: &mut KeyTable<u32>, k: &[u8], now: u64, evicted: &mut Vec<Vec<u8>>) -> Got {
        t.get_or_insert(k, now, || 0, |v| *v = 0, |k, _| evicted.push(k.to_vec()))
    }

    #[test]
    fn lru_eviction_at_cap() {
        let mut t = KeyTable::new(2);
        let mut ev = Vec::new();
        assert!(ins(&mut t, b"a", 1, &mut ev).fresh);
        assert!(ins(&mut t, b"b", 2, &mut ev).fresh);
        assert!(!ins(&mut t, b"a", 3, &mut ev).fresh); // a is now most recent
        assert!(ins(&mut t, b"c", 4, &mut ev).fresh); // evicts b
        assert_eq!(ev, vec![b"b".to_vec()]);
        assert_eq!(t.len(), 2);
        assert!(t.find(b"b").is_none());
        assert!(t.find(b"a").is_some() && t.find(b"c").is_some());
    }

    #[test]
    fn idle_eviction_and_dirty() {
        let mut t = KeyTable::new(10);
        let mut ev = Vec::new();
        let a = ins(&mut t, b"a", 1, &mut ev).slot;
        let b = ins(&mut t, b"b", 5, &mut ev).slot;
        t.mark_dirty(a);
        t.mark_dirty(a);
        t.mark_dirty(b);
        t.evict_idle(3, |k, _| ev.push(k.to_vec()));
        assert_eq!(ev, vec![b"a".to_vec()]);
        let mut d = Vec::new();
        t.take_dirty(&mut d);
        assert_eq!(d, vec![b]);
        // The freed slot is reused.
        assert_eq!(ins(&mut t, b"z", 6, &mut ev).slot, a);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn insert_if_room_never_evicts() {
        let mut t = KeyTable::new(2);
        let mut ev = Vec::new();
        ins(&mut t, b"a", 1, &mut ev);
        assert!(
            t.insert_if_room(b"a", 2, || 0, |v| *v = 0).is_none(),
            "present"
        );
        let b = t.insert_if_room(b"b", 2, || 7, |v| *v = 0);
        assert_eq!(b.and_then(|s| t.value(s)), Some(&0));
        assert!(
            t.insert_if_room(b"c", 3, || 0, |v| *v = 0).is_none(),
            "full"
        );
        assert!(t.find(b"a").is_some() && t.find(b"c").is_none());
        assert!(ev.is_empty());
    }

    #[test]
    fn rotating_keys_stay_bounded() {
        let mut t = KeyTable::new(100);
        let mut ev = Vec::new();
        for i in 0..10_000u32 {
            ins(&mut t, &i.to_le_bytes(), u64::from(i), &mut ev);
        }
        assert_eq!(t.len(), 100);
        assert_eq!(t.slots.len(), 100);
        assert_eq!(ev.len(), 9_900);
    }
}
