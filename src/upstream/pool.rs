//! Per-worker pool of idle upstream connections, one LIFO stack per target.
//!
//! Invariants:
//! - only connections whose last response was fully read, left no unread bytes and allowed reuse are
//!   checked in (the proxy decides; see `proxy::exchange`);
//! - a connection idle longer than `idle_timeout` is never handed out, nor one idle for more than
//!   `PEEK_AFTER` that the peer has closed or written to (seen with a non-blocking `MSG_PEEK`);
//! - at most `max_idle` idle connections per target; extras are closed.
//!
//! LIFO keeps the warmest connections busy and lets the cold ones age out.
//! The `RefCell` is never borrowed across an `.await`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::conn::UpstreamConn;

struct Idle {
    stream: UpstreamConn,
    since: Instant,
}

/// Idle time after which a pooled connection is peeked before reuse.
const PEEK_AFTER: Duration = Duration::from_millis(500);

pub struct Pool {
    idle: RefCell<Vec<Vec<Idle>>>,
    /// Slot per target address, stable across config reloads so pooled connections survive them.
    slots: RefCell<HashMap<SocketAddr, usize>>,
    max_idle: Cell<usize>,
    idle_timeout: Cell<Duration>,
}

impl Pool {
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Pool {
        Pool {
            idle: RefCell::new(Vec::new()),
            slots: RefCell::new(HashMap::new()),
            max_idle: Cell::new(max_idle),
            idle_timeout: Cell::new(idle_timeout),
        }
    }

    /// The slot for `addr`, created on first use (at config load, never per request).
    pub fn slot_for(&self, addr: SocketAddr) -> usize {
        let mut slots = self.slots.borrow_mut();
        let next = slots.len();
        let slot = *slots.entry(addr).or_insert(next);
        let mut idle = self.idle.borrow_mut();
        while idle.len() <= slot {
            idle.push(Vec::new());
        }
        slot
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
            // A connection reused within moments (the norm under load) skips the peek syscall: a
            // close racing that window is caught by the retry on a fresh connection.
            if idle_for < PEEK_AFTER || is_quiet(&conn.stream) {
                return Some(conn.stream);
            }
            // Dropped: expired, closed by the peer, or carrying unsolicited bytes.
        }
        None
    }

    pub fn checkin(&self, target: usize, stream: UpstreamConn) {
        let mut idle = self.idle.borrow_mut();
        if let Some(stack) = idle.get_mut(target) {
            if stack.len() < self.max_idle.get() {
                stack.push(Idle {
                    stream,
                    since: Instant::now(),
                });
            }
        }
    }

    /// Closes idle connections past their timeout; called periodically by the worker.
    pub fn reap(&self) {
        let now = Instant::now();
        let timeout = self.idle_timeout.get();
        for stack in self.idle.borrow_mut().iter_mut() {
            stack.retain(|c| now.duration_since(c.since) < timeout);
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
