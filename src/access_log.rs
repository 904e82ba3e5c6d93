//! The JSON access log: one line per finished request, written off the workers.
//!
//! ```text
//! worker i (request path)  WorkerLog: formats the line into a worker-local buffer (no allocation,
//!                          no lock, no syscall); past `buffer_size`, and on the control tick once
//!                          `flush_interval` passed, swaps the buffer for an empty one from `empties`
//!                          and sends the full one (try_send / try_recv only, never blocking)
//! writer thread            write(2)s each batch to the file / stdout / stderr, clears the buffer
//!                          and sends it back on `empties`; warns about dropped lines
//! main (or admin) thread   AccessLog: opens the file (start, reload, SIGHUP, SIGUSR1) and hands the
//!                          open file to the writer; stops the writer after the workers drained
//! ```
//!
//! Invariants:
//! - buffers circulate: a fixed set, made by the writer (and one per worker) at start, comes back
//!   through `empties`, so steady traffic allocates nothing. A worker that finds no empty buffer
//!   (every spare is queued: the writer is behind) drops its batch and counts the lines in
//!   `Stats::dropped`; it never waits;
//! - batches and control messages share one FIFO channel, so a file swap or close takes effect
//!   after everything handed off before it (a rotation loses nothing, a close flushes first);
//! - lines are whole within a batch and a batch is one write, so lines of different workers never
//!   interleave;
//! - files are opened and closed on the main, admin or writer thread, never on a worker.

pub mod format;
mod worker;
mod writer;

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use crate::config::model::AccessLogTarget;
use crate::metrics::{Family, FamilyKind, Sample};

pub use worker::WorkerLog;
pub use writer::{AccessLog, Opened};

/// Room above `buffer_size` in every buffer: a worker hands off once it holds `buffer_size`, so a
/// typical line (a few hundred bytes) still fits without the buffer growing.
const HEADROOM: usize = 16 << 10;

/// To the writer, in order.
enum Msg {
    /// Whole lines from one worker.
    Batch { buf: Vec<u8>, lines: u64 },
    /// From now on write here (the old sink is closed once what came before is written to it);
    /// buffers are sized for `buffer_size`.
    Open { sink: Sink, buffer_size: usize },
    /// The access log was removed by a reload: close the sink after what came before.
    Close,
    /// Write what came before, answer, and end.
    Stop(Sender<()>),
}

/// A worker's ends of the writer's channels (they live as long as the process).
#[derive(Clone)]
pub struct Link {
    batches: Sender<Msg>,
    empties: Receiver<Vec<u8>>,
    stats: Arc<Stats>,
}

/// Process-wide counters, read by `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Lines lost: the writer was behind (no empty buffer), or their write failed.
    pub dropped: AtomicU64,
    /// Lines written.
    pub written: AtomicU64,
    /// Failed writes (each loses one batch).
    pub write_errors: AtomicU64,
}

impl Stats {
    fn add_dropped(&self, lines: u64) {
        if lines > 0 {
            self.dropped.fetch_add(lines, Ordering::Relaxed);
        }
    }

    /// The access log's Prometheus families.
    pub fn families(&self) -> Vec<Family> {
        let counter = |name: &str, help: &str, v: &AtomicU64| {
            let mut f = Family::new(name, help, FamilyKind::Counter);
            f.samples.push(Sample {
                labels: Vec::new(),
                value: v.load(Ordering::Relaxed) as f64,
            });
            f
        };
        vec![
            counter(
                "ringgate_access_log_dropped_total",
                "Access log lines lost: the writer thread was behind, or a write failed.",
                &self.dropped,
            ),
            counter(
                "ringgate_access_log_lines_total",
                "Access log lines written.",
                &self.written,
            ),
            counter(
                "ringgate_access_log_write_errors_total",
                "Access log writes that failed (each loses one batch of lines).",
                &self.write_errors,
            ),
        ]
    }
}

/// Where the writer writes.
enum Sink {
    Stdout,
    Stderr,
    File(File),
}

impl Sink {
    /// Opens `target` for appending (created 0640 if missing). Main or admin thread only.
    fn open(target: &AccessLogTarget) -> std::io::Result<Sink> {
        use std::os::unix::fs::OpenOptionsExt;
        Ok(match target {
            AccessLogTarget::Stdout => Sink::Stdout,
            AccessLogTarget::Stderr => Sink::Stderr,
            AccessLogTarget::File(path) => Sink::File(
                std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o640)
                    .open(path)?,
            ),
        })
    }

    /// One batch, whole. Writer thread only (blocking).
    fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::File(f) => f.write_all(buf),
            // Under the std lock, so the event log (`crate::log`) never lands inside a batch.
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(buf)?;
                out.flush()
            }
            Sink::Stderr => std::io::stderr().lock().write_all(buf),
        }
    }
}
