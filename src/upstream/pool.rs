//! Per-worker pool of idle upstream connections, one LIFO stack per target.
//!
//! Invariants:
//! - only connections whose last response was fully read, left no unread bytes and allowed reuse are
//!   checked in (the proxy decides; see `proxy::exchange`);
//! - a connection idle longer than `idle_timeout`, or one the peer has closed or written to while idle
//!   (seen with a non-blocking `MSG_PEEK`), is never handed out;
//! - at most `max_idle` idle connections per target; extras are closed.
//!
//! LIFO keeps the warmest connections busy and lets the cold ones age out.
//! The `RefCell` is never borrowed across an `.await`.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use super::conn::UpstreamConn;

struct Idle {
    stream: UpstreamConn,
    since: Instant,
}

pub struct Pool {
    idle: RefCell<Vec<Vec<Idle>>>,
    max_idle: usize,
    idle_timeout: Duration,
}

impl Pool {
    pub fn new(targets: usize, max_idle: usize, idle_timeout: Duration) -> Pool {
        let idle = (0..targets).map(|_| Vec::new()).collect();
        Pool {
            idle: RefCell::new(idle),
            max_idle,
            idle_timeout,
        }
    }

    /// A live idle connection to `target`, if there is one.
    pub fn checkout(&self, target: usize) -> Option<UpstreamConn> {
        let now = Instant::now();
        let mut idle = self.idle.borrow_mut();
        let stack = idle.get_mut(target)?;
        while let Some(conn) = stack.pop() {
            if now.duration_since(conn.since) < self.idle_timeout && is_quiet(&conn.stream) {
                return Some(conn.stream);
            }
            // Dropped: expired, closed by the peer, or carrying unsolicited bytes.
        }
        None
    }

    pub fn checkin(&self, target: usize, stream: UpstreamConn) {
        let mut idle = self.idle.borrow_mut();
        if let Some(stack) = idle.get_mut(target) {
            if stack.len() < self.max_idle {
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
        let timeout = self.idle_timeout;
        for stack in self.idle.borrow_mut().iter_mut() {
            stack.retain(|c| now.duration_since(c.since) < timeout);
        }
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
