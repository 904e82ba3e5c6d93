//! A worker's access log buffer: lines are appended on the request path and handed to the writer
//! thread in batches.
//!
//! Invariants:
//! - the request path (`append`) formats into the worker's buffer and, past `buffer_size`, swaps it
//!   for an empty one with a `try_recv` and a `try_send`: no allocation (unless one line is larger
//!   than a whole buffer's headroom), no lock of ours, no syscall, never a wait;
//! - when no empty buffer is there the writer is behind: the batch is dropped and counted, the
//!   worker's buffer is reused;
//! - `configure`, `tick` and `finish` run on the control loop, between requests; `finish` (drain)
//!   and turning the log off hand off what is buffered whether or not an empty buffer comes back,
//!   so lines of completed requests are not lost at shutdown;
//! - the `RefCell` is borrowed only inside these calls, never across an `.await`.

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant, SystemTime};

use super::format::{self, Clock, Outcome};
use super::{Link, Msg, HEADROOM};
use crate::config::model::AccessLogDef;

/// One per worker, in its `Shard`.
pub struct WorkerLog {
    /// Whether the config in force has `[access_log]` (read once per request).
    on: Cell<bool>,
    worker: usize,
    link: Link,
    st: RefCell<State>,
}

struct State {
    buf: Vec<u8>,
    /// Lines in `buf`.
    lines: u64,
    /// Hand off once `buf` holds this many bytes.
    threshold: usize,
    flush_every: Duration,
    /// The last hand-off (or when the log was turned on).
    last: Instant,
    clock: Clock,
}

impl WorkerLog {
    /// Off until `configure` turns it on; allocates nothing.
    pub fn new(link: Link, worker: usize) -> WorkerLog {
        WorkerLog {
            on: Cell::new(false),
            worker,
            link,
            st: RefCell::new(State {
                buf: Vec::new(),
                lines: 0,
                threshold: 0,
                flush_every: Duration::from_secs(1),
                last: Instant::now(),
                clock: Clock::default(),
            }),
        }
    }

    /// Whether requests are logged now.
    #[inline]
    pub fn on(&self) -> bool {
        self.on.get()
    }

    /// Applies a config generation's `[access_log]` (control loop). Turning it off hands off what is
    /// buffered first, so the writer has it before the main thread tells it to close.
    pub fn configure(&self, def: Option<&AccessLogDef>) {
        let Ok(mut st) = self.st.try_borrow_mut() else {
            return;
        };
        match def {
            None => {
                if self.on.replace(false) {
                    self.hand_off(&mut st, true);
                }
            }
            Some(def) => {
                st.threshold = def.buffer_size;
                st.flush_every = def.flush_interval;
                if st.buf.capacity() == 0 {
                    st.buf = self
                        .link
                        .empties
                        .try_recv()
                        .unwrap_or_else(|_| Vec::with_capacity(def.buffer_size + HEADROOM));
                }
                if !self.on.replace(true) {
                    st.last = Instant::now();
                }
            }
        }
    }

    /// Appends one line: `staged` is the request part (`format::push_request`). Request path.
    pub fn append(&self, staged: &[u8], outcome: &Outcome<'_>) {
        if !self.on.get() {
            return;
        }
        let Ok(mut st) = self.st.try_borrow_mut() else {
            return;
        };
        if st.buf.len() + format::worst_case(staged, outcome) > st.buf.capacity() {
            self.hand_off(&mut st, false);
        }
        let State { buf, clock, .. } = &mut *st;
        format::push_line(buf, clock, SystemTime::now(), self.worker, staged, outcome);
        st.lines += 1;
        if st.buf.len() >= st.threshold {
            self.hand_off(&mut st, false);
        }
    }

    /// Control tick: hands off lines that have waited `flush_interval` since the last hand-off.
    pub fn tick(&self, now: Instant) {
        if !self.on.get() {
            return;
        }
        let Ok(mut st) = self.st.try_borrow_mut() else {
            return;
        };
        if !st.buf.is_empty() && now.saturating_duration_since(st.last) >= st.flush_every {
            self.hand_off(&mut st, false);
        }
    }

    /// Drain is over: hands off everything (no request of this worker ends after this).
    pub fn finish(&self) {
        if let Ok(mut st) = self.st.try_borrow_mut() {
            self.hand_off(&mut st, true);
        }
        self.on.set(false);
    }

    /// Sends the buffer to the writer in exchange for an empty one. Without an empty one the batch
    /// is dropped, unless `force` (the last hand-off of a worker or of a config): then the buffer
    /// goes anyway and the worker keeps none (the batch channel has room for every buffer).
    fn hand_off(&self, st: &mut State, force: bool) {
        st.last = Instant::now();
        if st.buf.is_empty() {
            return;
        }
        let lines = std::mem::take(&mut st.lines);
        let next = match self.link.empties.try_recv() {
            Ok(empty) => empty,
            Err(_) if force => Vec::new(),
            Err(_) => {
                st.buf.clear();
                self.link.stats.add_dropped(lines);
                return;
            }
        };
        let full = std::mem::replace(&mut st.buf, next);
        if self
            .link
            .batches
            .try_send(Msg::Batch { buf: full, lines })
            .is_err()
        {
            self.link.stats.add_dropped(lines);
        }
    }
}
