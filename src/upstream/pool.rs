//! Per-worker pool of idle upstream connections, one LIFO stack per target.
//!
//! A slot is keyed by the target's address *and* how it is spoken to: plain, or TLS with a given
//! server name (SNI, and the name the certificate was verified for) and trust roots. Two upstreams
//! on one address (a shared ingress serving several names on :443) never share connections, so a
//! request for one name never goes over a connection negotiated and verified for another.
//!
//! Invariants:
//! - only connections whose last response was fully read, left no unread bytes and allowed reuse are
//!   checked in (the proxy decides; see `proxy::exchange`);
//! - a connection idle longer than `idle_timeout` is never handed out, nor one that the peer has
//!   closed or written to while it sat idle (seen with a non-blocking `MSG_PEEK` at every checkout).
//!   Bytes an upstream sends after its response (a HEAD answered with a body, a late second
//!   response) would otherwise be read as the answer to the next client's request: one response
//!   off for every later client on that connection. nginx gets the same guarantee from its
//!   keep-alive close handler (the idle connection stays registered in epoll); a completion ring has
//!   no free readiness watch, so the peek is one syscall per reuse (A/B, /small: within noise at
//!   c=64, +1.3 µs of 40 µs gateway CPU per request at c=1);
//! - `max_idle` idle connections per target are kept for `idle_timeout`; more are kept only while
//!   in demand: `reap` closes the surplus once it has sat unused for `SURPLUS_GRACE` (HAProxy's
//!   `pool-purge-delay` works the same way). Closing a surplus connection at check-in instead (nginx's
//!   `keepalive N`) makes any concurrency above the cap open and close an upstream connection every
//!   few requests: measured 0.2-0.3 connects per request at 256 clients with a cap of 64;
//! - `max_idle = 0` pools nothing.
//!
//! LIFO keeps the warmest connections busy and lets the cold ones (the bottom of a stack) age out.
//! The `RefCell` is never borrowed across an `.await`.
//!
//! Slots are counted: every worker snapshot that uses a slot holds one use of it (`slot_for*` when
//! the snapshot is built, `release` once no connection holds the snapshot, see `worker::Retired`;
//! a keep-alive connection holds the one of its last request, a WebSocket tunnel none). A slot whose
//! last use is released closes its idle connections and is reused for the next new key, so
//! addresses that reloads and `dns_refresh` left behind do not pile up. A slot index is never
//! reused while a snapshot (and so a request) that knows it is alive.

use crate::config::model::RootsId;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;

use super::conn::UpstreamConn;

/// What a pooled connection was opened as: the address, plus the TLS server name and trust roots
/// (`None` for plain TCP).
type SlotKey = (SocketAddr, Option<(ServerName<'static>, Option<RootsId>)>);

struct Idle {
    stream: UpstreamConn,
    since: Instant,
}

/// How long a connection above `max_idle` may sit unused before `reap` closes it.
pub const SURPLUS_GRACE: Duration = Duration::from_secs(1);

pub struct Pool {
    idle: RefCell<Vec<Vec<Idle>>>,
    /// Slot per target address and TLS identity, stable across config reloads so pooled
    /// connections survive them.
    slots: RefCell<HashMap<SlotKey, usize>>,
    /// Per slot: its key (`None` while free) and how many live snapshots use it.
    owners: RefCell<Vec<(Option<SlotKey>, u32)>>,
    /// Released slots, reused before new ones are made.
    free: RefCell<Vec<usize>>,
    max_idle: Cell<usize>,
    idle_timeout: Cell<Duration>,
}

impl Pool {
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Pool {
        Pool {
            idle: RefCell::new(Vec::new()),
            slots: RefCell::new(HashMap::new()),
            owners: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            max_idle: Cell::new(max_idle),
            idle_timeout: Cell::new(idle_timeout),
        }
    }

    /// The slot for plain TCP connections to `addr`, created on first use (at config load, never
    /// per request). Counts as one use until `release`.
    pub fn slot_for(&self, addr: SocketAddr) -> usize {
        self.slot_for_key((addr, None))
    }

    /// The slot for TLS connections to `addr` with server name `name`, verified against `roots`
    /// (`None`: the system roots).
    pub fn slot_for_tls(
        &self,
        addr: SocketAddr,
        name: &ServerName<'static>,
        roots: Option<&RootsId>,
    ) -> usize {
        self.slot_for_key((addr, Some((name.clone(), roots.cloned()))))
    }

    fn slot_for_key(&self, key: SlotKey) -> usize {
        let mut slots = self.slots.borrow_mut();
        let mut owners = self.owners.borrow_mut();
        if let Some(&slot) = slots.get(&key) {
            if let Some(o) = owners.get_mut(slot) {
                o.1 += 1;
            }
            return slot;
        }
        let slot = match self.free.borrow_mut().pop() {
            Some(slot) => slot,
            None => {
                owners.push((None, 0));
                self.idle.borrow_mut().push(Vec::new());
                owners.len() - 1
            }
        };
        if let Some(o) = owners.get_mut(slot) {
            *o = (Some(key.clone()), 1);
        }
        slots.insert(key, slot);
        slot
    }

    /// One use of `slot` ended (a snapshot that held it is gone). The last one closes the slot's
    /// idle connections and frees the slot for another key.
    pub fn release(&self, slot: usize) {
        let mut owners = self.owners.borrow_mut();
        let Some(o) = owners.get_mut(slot) else {
            return;
        };
        o.1 = o.1.saturating_sub(1);
        if o.1 > 0 {
            return;
        }
        let Some(key) = o.0.take() else {
            return;
        };
        self.slots.borrow_mut().remove(&key);
        if let Some(stack) = self.idle.borrow_mut().get_mut(slot) {
            *stack = Vec::new();
        }
        self.free.borrow_mut().push(slot);
    }

    /// Slots that hold a key (for tests and status).
    pub fn slots_in_use(&self) -> usize {
        self.slots.borrow().len()
    }

    /// New limits from a reloaded config.
    pub fn set_limits(&self, max_idle: usize, idle_timeout: Duration) {
        self.max_idle.set(max_idle);
        self.idle_timeout.set(idle_timeout);
    }

    /// A live idle connection to `target`, if there is one.
    pub fn checkout(&self, target: usize) -> Option<UpstreamConn> {
        let now = Instant::now();
        let mut idle = self.idle.borrow_mut();
        let stack = idle.get_mut(target)?;
        while let Some(conn) = stack.pop() {
            let idle_for = now.duration_since(conn.since);
            if idle_for >= self.idle_timeout.get() {
                continue;
            }
            if is_quiet(&conn.stream) {
                return Some(conn.stream);
            }
            // Dropped: expired, closed by the peer, or carrying unsolicited bytes.
        }
        None
    }

    pub fn checkin(&self, target: usize, stream: UpstreamConn) {
        if self.max_idle.get() == 0 {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        if let Some(stack) = idle.get_mut(target) {
            stack.push(Idle {
                stream,
                since: Instant::now(),
            });
        }
    }

    /// Closes idle connections past their timeout or closed by the peer, and the surplus above
    /// `max_idle` that has been unused for `SURPLUS_GRACE`; called by the worker about once a second.
    pub fn reap(&self) {
        self.reap_at(Instant::now());
    }

    fn reap_at(&self, now: Instant) {
        let timeout = self.idle_timeout.get();
        let max_idle = self.max_idle.get();
        for stack in self.idle.borrow_mut().iter_mut() {
            // A connection the upstream closed (or wrote to) while idle is closed now, not at its
            // next checkout or `idle_timeout`: it would sit in CLOSE_WAIT and count as idle (an
            // upstream restart left up to `max_idle` dead sockets per target). One non-blocking
            // peek per idle connection per second, as nginx's keep-alive close handler notices.
            stack.retain(|c| now.duration_since(c.since) < timeout && is_quiet(&c.stream));
            // The stack is ordered by last use (LIFO), oldest first: the cold surplus is at the bottom.
            let cold = stack
                .iter()
                .take(stack.len().saturating_sub(max_idle))
                .take_while(|c| now.duration_since(c.since) >= SURPLUS_GRACE)
                .count();
            stack.drain(..cold);
        }
    }

    /// Idle connections in one slot.
    pub fn idle_count(&self, slot: usize) -> usize {
        self.idle.borrow().get(slot).map_or(0, Vec::len)
    }

    /// Idle connection count per target (for status and metrics).
    pub fn idle_counts(&self) -> Vec<usize> {
        self.idle.borrow().iter().map(Vec::len).collect()
    }
}

/// True when the socket has nothing to read and is not at EOF: the state of a healthy idle
/// keep-alive connection. One non-blocking syscall; cheaper than a failed request and a retry.
fn is_quiet(stream: &UpstreamConn) -> bool {
    let mut byte = 0u8;
    // SAFETY: valid fd owned by `stream`, one-byte buffer on the stack.
    let n = unsafe {
        libc::recv(
            stream.raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
}

#[cfg(test)]
mod tests {
    use super::*;
    use monoio::net::TcpStream;

    /// `n` real loopback connections (the listener's side is kept open so they stay healthy).
    async fn conns(n: usize) -> (Vec<UpstreamConn>, std::net::TcpListener) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(UpstreamConn::Plain(
                TcpStream::connect(addr).await.expect("connect"),
            ));
        }
        (out, listener)
    }

    fn run(f: impl std::future::Future<Output = ()>) {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime")
            .block_on(f);
    }

    #[test]
    fn surplus_above_max_idle_is_kept_while_in_demand_then_reaped_coldest_first() {
        run(async {
            let pool = Pool::new(2, Duration::from_secs(60));
            let slot = pool.slot_for("127.0.0.1:1".parse().expect("addr"));
            let (cs, _l) = conns(5).await;
            let fds: Vec<_> = cs.iter().map(UpstreamConn::raw_fd).collect();
            for c in cs {
                pool.checkin(slot, c);
            }
            assert_eq!(pool.idle_count(slot), 5, "surplus kept at check-in");
            let now = Instant::now();
            pool.reap_at(now);
            assert_eq!(pool.idle_count(slot), 5, "not cold yet");
            pool.reap_at(now + SURPLUS_GRACE + Duration::from_millis(10));
            assert_eq!(
                pool.idle_count(slot),
                2,
                "cold surplus closed down to max_idle"
            );
            // The two checked in last (the warmest) are the ones kept, newest handed out first.
            let a = pool.checkout(slot).expect("kept");
            let b = pool.checkout(slot).expect("kept");
            assert_eq!((a.raw_fd(), b.raw_fd()), (fds[4], fds[3]));
            pool.checkin(slot, b);
            pool.reap_at(now + Duration::from_secs(61));
            assert_eq!(pool.idle_count(slot), 0, "idle_timeout applies to all");
        });
    }

    #[test]
    fn reap_closes_connections_the_peer_closed() {
        run(async {
            let pool = Pool::new(4, Duration::from_secs(60));
            let slot = pool.slot_for("127.0.0.1:1".parse().expect("addr"));
            let (gone, listener) = conns(2).await;
            let (kept, _alive) = conns(1).await;
            for c in gone.into_iter().chain(kept) {
                pool.checkin(slot, c);
            }
            pool.reap_at(Instant::now());
            assert_eq!(pool.idle_count(slot), 3, "all quiet");
            // Closing the listener resets the connections still in its accept queue.
            drop(listener);
            std::thread::sleep(Duration::from_millis(50));
            pool.reap_at(Instant::now());
            assert_eq!(
                pool.idle_count(slot),
                1,
                "the reset ones are closed at once"
            );
        });
    }

    #[test]
    fn slots_are_per_address_and_tls_identity() {
        let pool = Pool::new(4, Duration::from_secs(60));
        let addr: SocketAddr = "10.0.0.1:443".parse().expect("addr");
        let a = ServerName::try_from("a.test").expect("name");
        let b = ServerName::try_from("b.test").expect("name");
        let plain = pool.slot_for(addr);
        let tls_a = pool.slot_for_tls(addr, &a, None);
        let tls_b = pool.slot_for_tls(addr, &b, None);
        let ca = |digest| RootsId {
            path: "/etc/ca.pem".into(),
            digest,
        };
        let tls_a_ca = pool.slot_for_tls(addr, &a, Some(&ca(1)));
        // The same file with other certificates in it (a reload after the CA changed).
        let tls_a_ca2 = pool.slot_for_tls(addr, &a, Some(&ca(2)));
        let all = [plain, tls_a, tls_b, tls_a_ca, tls_a_ca2];
        for (i, x) in all.iter().enumerate() {
            assert!(!all[i + 1..].contains(x), "{all:?}");
        }
        // The same identity (a reload) finds the same slot.
        assert_eq!(pool.slot_for_tls(addr, &a, None), tls_a);
        assert_eq!(pool.slot_for_tls(addr, &a, Some(&ca(1))), tls_a_ca);
        assert_eq!(pool.slot_for(addr), plain);
    }

    #[test]
    fn a_released_slot_closes_its_connections_and_is_reused() {
        run(async {
            let pool = Pool::new(4, Duration::from_secs(60));
            let a: SocketAddr = "127.0.0.1:1".parse().expect("addr");
            let b: SocketAddr = "127.0.0.1:2".parse().expect("addr");
            let slot = pool.slot_for(a);
            assert_eq!(pool.slot_for(a), slot, "a second snapshot shares it");
            let (cs, _l) = conns(1).await;
            for c in cs {
                pool.checkin(slot, c);
            }
            pool.release(slot);
            assert_eq!(pool.idle_count(slot), 1, "still used by one snapshot");
            pool.release(slot);
            assert_eq!(pool.idle_count(slot), 0, "closed with its last use");
            assert_eq!(pool.slots_in_use(), 0);
            assert_eq!(pool.slot_for(b), slot, "the index is reused");
            assert_ne!(pool.slot_for(a), slot, "a is a new slot now");
            assert_eq!(pool.slots_in_use(), 2);
            // A stray release of a free or unknown slot changes nothing.
            pool.release(99);
            pool.release(slot);
            pool.release(slot);
            assert_eq!(pool.slots_in_use(), 1);
        });
    }

    #[test]
    fn max_idle_zero_pools_nothing() {
        run(async {
            let pool = Pool::new(0, Duration::from_secs(60));
            let slot = pool.slot_for("127.0.0.1:1".parse().expect("addr"));
            let (cs, _l) = conns(1).await;
            for c in cs {
                pool.checkin(slot, c);
            }
            assert_eq!(pool.idle_count(slot), 0);
        });
    }
}
