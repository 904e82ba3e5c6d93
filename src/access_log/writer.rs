//! The writer thread and its handle on the main thread.
//!
//! `AccessLog` lives for the process (created at start whether or not the config has an access
//! log, so workers always hold a `Link`); the thread starts the first time a config has
//! `[access_log]`. The writer is the only place that does blocking writes; it recycles every batch
//! buffer to the workers and reports dropped lines in the event log at most once per
//! `WARN_EVERY`.
//!
//! Invariants: the handle opens files on the thread that calls it (main or admin, never a worker)
//! and sends the open file down the same channel as the batches, so what was handed off before a
//! reopen goes to the old file and what comes after to the new one. `stop` returns once everything
//! queued before it is written, or after its timeout (a writer stuck on a hung disk must not keep
//! the process from exiting).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::{Link, Msg, Sink, Stats, HEADROOM};
use crate::config::model::AccessLogDef;
use crate::{error, warn};

/// Dropped lines are reported at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// Control messages from the main thread wait at most this long for room in the channel.
const CONTROL_SEND: Duration = Duration::from_secs(2);

/// The main thread's handle: owns the channels and the writer thread.
pub struct AccessLog {
    tx: Sender<Msg>,
    rx: Receiver<Msg>,
    empties_tx: Sender<Vec<u8>>,
    empties_rx: Receiver<Vec<u8>>,
    stats: Arc<Stats>,
    /// Spare buffers the writer makes (besides each worker's own).
    spares: usize,
    writer: Option<JoinHandle<()>>,
    /// Whether the writer has a sink (a config with `[access_log]` is in force).
    open: bool,
}

impl AccessLog {
    /// Channels for `workers` workers; no thread yet, nothing allocated for buffers yet.
    pub fn new(workers: usize) -> AccessLog {
        // Two spares per worker: one being written while another fills, plus slack for a burst.
        let spares = 2 * workers.max(1) + 2;
        // Every buffer there is fits in the batch channel at once (plus control messages), so a
        // worker's send never finds it full: back-pressure is the lack of an empty buffer.
        let (tx, rx) = crossbeam_channel::bounded(2 * (spares + workers) + 16);
        let (empties_tx, empties_rx) = crossbeam_channel::bounded(spares + workers);
        AccessLog {
            tx,
            rx,
            empties_tx,
            empties_rx,
            stats: Arc::new(Stats::default()),
            spares,
            writer: None,
            open: false,
        }
    }

    /// What each worker holds.
    pub fn link(&self) -> Link {
        Link {
            batches: self.tx.clone(),
            empties: self.empties_rx.clone(),
            stats: self.stats.clone(),
        }
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Opens `def`'s target on this thread and hands it to the writer (starting it the first
    /// time). Called at start and on SIGUSR1 (`mv access.log access.log.1` then a signal starts a
    /// new file, as nginx's USR1 does). Err: the file cannot be opened; nothing changed.
    pub fn open(&mut self, def: &AccessLogDef) -> Result<(), String> {
        let opened = self.prepare(def)?;
        self.install(opened);
        Ok(())
    }

    /// The fallible half of `open`: starts the writer if it is not running and opens the file,
    /// without handing it over yet, so a reload can be rejected before it commits anything.
    pub fn prepare(&mut self, def: &AccessLogDef) -> Result<Opened, String> {
        let sink = Sink::open(&def.target)
            .map_err(|e| format!("access_log.path: cannot open {}: {e}", def.target))?;
        if self.writer.is_none() {
            let rx = self.rx.clone();
            let empties = self.empties_tx.clone();
            let stats = self.stats.clone();
            let spares = self.spares;
            let handle = std::thread::Builder::new()
                .name("ringgate-accesslog".to_owned())
                .spawn(move || run(&rx, &empties, &stats, spares))
                .map_err(|e| format!("access log writer thread: {e}"))?;
            self.writer = Some(handle);
        }
        Ok(Opened {
            sink,
            buffer_size: def.buffer_size,
        })
    }

    /// The infallible half of `open`: from now on the writer writes to `opened` (what workers
    /// handed off before goes to the previous file, which then closes).
    pub fn install(&mut self, opened: Opened) {
        self.control(Msg::Open {
            sink: opened.sink,
            buffer_size: opened.buffer_size,
        });
        self.open = true;
    }

    /// The access log was removed: the writer closes its sink once what workers handed off before
    /// is written. Call after the workers swapped to the config without it (they hand off first).
    pub fn close(&mut self) {
        if self.open {
            self.control(Msg::Close);
            self.open = false;
        }
    }

    /// Whether a config with `[access_log]` is in force.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Writes everything queued, then ends the writer; waits at most `timeout`. After the workers
    /// stopped (each handed off its last lines).
    pub fn stop(&mut self, timeout: Duration) {
        let Some(handle) = self.writer.take() else {
            return;
        };
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        // One deadline for both steps: queueing the stop behind a full channel, then the writer
        // getting through what is ahead of it.
        let deadline = std::time::Instant::now() + timeout;
        if self.tx.send_deadline(Msg::Stop(done_tx), deadline).is_err()
            || done_rx.recv_deadline(deadline).is_err()
        {
            error!(
                "access log writer did not finish within {}ms; lines still queued are lost",
                timeout.as_millis()
            );
            return;
        }
        let _ = handle.join();
    }

    fn control(&self, msg: Msg) {
        if self.tx.send_timeout(msg, CONTROL_SEND).is_err() {
            error!("access log writer is not taking messages (stuck on a write?)");
        }
    }
}

/// An access log file opened by `AccessLog::prepare`, not yet in use (dropping it closes it).
pub struct Opened {
    sink: Sink,
    buffer_size: usize,
}

/// The writer thread's state.
struct Writer<'a> {
    empties: &'a Sender<Vec<u8>>,
    stats: &'a Stats,
    sink: Option<Sink>,
    /// Capacity recycled buffers are brought to (`buffer_size` + headroom).
    cap: usize,
    /// Spare buffers made so far (made once, when the first sink arrives).
    made: usize,
    spares: usize,
    /// `Stats::dropped` at the last warning, and when that was.
    reported: u64,
    warned_at: Option<Instant>,
    write_error_at: Option<Instant>,
}

/// Thread body: until `Stop` (or every sender is gone).
fn run(rx: &Receiver<Msg>, empties: &Sender<Vec<u8>>, stats: &Stats, spares: usize) {
    let mut w = Writer {
        empties,
        stats,
        sink: None,
        cap: 0,
        made: 0,
        spares,
        reported: 0,
        warned_at: None,
        write_error_at: None,
    };
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(Msg::Batch { buf, lines }) => w.batch(buf, lines),
            Ok(Msg::Open { sink, buffer_size }) => w.open(sink, buffer_size),
            Ok(Msg::Close) => w.sink = None,
            Ok(Msg::Stop(done)) => {
                w.report_drops(true);
                let _ = done.send(());
                return;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        w.report_drops(false);
    }
}

impl Writer<'_> {
    fn batch(&mut self, mut buf: Vec<u8>, lines: u64) {
        match &mut self.sink {
            Some(sink) => match sink.write(&buf) {
                Ok(()) => {
                    self.stats.written.fetch_add(lines, Ordering::Relaxed);
                }
                Err(e) => {
                    self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    self.stats.add_dropped(lines);
                    // Once per WARN_EVERY: a full disk fails every write.
                    if self
                        .write_error_at
                        .is_none_or(|t| t.elapsed() >= WARN_EVERY)
                    {
                        self.write_error_at = Some(Instant::now());
                        error!("access log write failed lines={lines} error=\"{e}\"");
                    }
                }
            },
            // Handed off after a close (a worker still on the old generation): nowhere to go.
            None => self.stats.add_dropped(lines),
        }
        self.recycle(&mut buf);
        // Full (more buffers than the pool holds, e.g. after a worker re-enabled): let it go.
        let _ = self.empties.try_send(buf);
    }

    /// Clears a buffer and brings it to the current size: the writer does the reallocating, so
    /// workers never do.
    fn recycle(&self, buf: &mut Vec<u8>) {
        buf.clear();
        if buf.capacity() < self.cap {
            buf.reserve_exact(self.cap);
        } else if buf.capacity() > 2 * self.cap {
            // Grown by a huge line, or buffer_size was lowered.
            buf.shrink_to(self.cap);
        }
    }

    fn open(&mut self, sink: Sink, buffer_size: usize) {
        // The old sink (if any) closes here, after every batch queued before the swap.
        self.sink = Some(sink);
        self.cap = buffer_size + HEADROOM;
        while self.made < self.spares {
            if self.empties.try_send(Vec::with_capacity(self.cap)).is_err() {
                break;
            }
            self.made += 1;
        }
    }

    /// Warns about lines dropped since the last warning, at most once per `WARN_EVERY` (always on
    /// `last`, the shutdown).
    fn report_drops(&mut self, last: bool) {
        let total = self.stats.dropped.load(Ordering::Relaxed);
        if total == self.reported {
            return;
        }
        if !last && self.warned_at.is_some_and(|t| t.elapsed() < WARN_EVERY) {
            return;
        }
        warn!(
            "access log lines dropped count={} total={total} (the writer fell behind or writes failed; see ringgate_access_log_dropped_total)",
            total - self.reported
        );
        self.reported = total;
        self.warned_at = Some(Instant::now());
    }
}
