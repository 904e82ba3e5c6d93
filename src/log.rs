//! Minimal structured logging to stderr: one line per event, `<RFC3339 UTC time> <LEVEL> <message>`.
//!
//! Messages use `key=value` pairs after a short event name so they stay grep- and parser-friendly.
//! Logging is for events (startup, errors, shutdown), never per request on the hot path; access
//! logs go through a separate, buffered channel.
//!
//! Invariant: once `start` ran (`ringgate run` does it first), no thread blocks on stderr. A
//! stalled reader (a full pipe, a stuck log collector, the access-log writer blocked on the same
//! stderr) would otherwise freeze every connection of a worker on its next warning, a prober
//! before it tells the workers a target is down, or the main thread's drain. Every line then goes
//! to the `ringgate-log` thread through one bounded channel (so lines keep the order they were
//! made in), and is dropped when the channel is full: counted, and the count logged once the
//! thread gets through again or within a second. `flush` waits, bounded, for queued lines: at
//! exit, and in the panic hook before it aborts. Before `start` (`ringgate check`, unit tests)
//! lines are written directly. Warnings a request can trigger go through `warn_every!`, at most
//! one line per interval per worker and call site, with how many it stands for.

use std::cell::Cell;
use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Sender, TrySendError};

/// Lines the log thread may hold before workers' lines are dropped.
const QUEUE_LINES: usize = 4_096;

static QUEUE: OnceLock<Option<Sender<Vec<u8>>>> = OnceLock::new();
/// Lines sent to the log thread and not yet written.
static PENDING: AtomicUsize = AtomicUsize::new(0);
/// Lines dropped because the queue was full, since the log thread last said so.
static DROPPED: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
        }
    }
}

static MAX_LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

/// Sets the most verbose level that is printed.
pub fn set_level(level: Level) {
    MAX_LEVEL.store(level as u8, Ordering::Relaxed);
}

#[inline]
pub fn enabled(level: Level) -> bool {
    level as u8 <= MAX_LEVEL.load(Ordering::Relaxed)
}

/// Writes one log line. The whole line goes out in one `write` so lines from different workers
/// never interleave; once `start` ran, it goes through the log thread.
pub fn write(level: Level, args: std::fmt::Arguments<'_>) {
    write_line(level, args, 0);
}

/// `write`, noting how many like lines were suppressed since the last one (`warn_every!`).
pub fn write_line(level: Level, args: std::fmt::Arguments<'_>, suppressed: u64) {
    let line = format_line(level, args, suppressed);
    if let Some(Some(tx)) = QUEUE.get() {
        PENDING.fetch_add(1, Ordering::AcqRel);
        match tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                PENDING.fetch_sub(1, Ordering::AcqRel);
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        }
        return;
    }
    let _ = std::io::stderr().lock().write_all(&line);
}

/// `<time> <LEVEL> <message>[ suppressed=N]\n`.
fn format_line(level: Level, args: std::fmt::Arguments<'_>, suppressed: u64) -> Vec<u8> {
    let mut line = Vec::with_capacity(128);
    push_rfc3339(&mut line, SystemTime::now());
    let _ = write!(line, " {} ", level.as_str());
    let _ = line.write_fmt(args);
    if suppressed > 0 {
        let _ = write!(line, " suppressed={suppressed}");
    }
    line.push(b'\n');
    line
}

/// Starts the log thread; from then on every thread's lines go through it. Idempotent. If the
/// thread cannot be started, lines stay direct.
pub fn start() {
    QUEUE.get_or_init(|| {
        let (tx, rx) = crossbeam_channel::bounded::<Vec<u8>>(QUEUE_LINES);
        std::thread::Builder::new()
            .name("ringgate-log".into())
            .spawn(move || loop {
                match rx.recv_timeout(Duration::from_secs(1)) {
                    Ok(line) => {
                        let mut err = std::io::stderr().lock();
                        let _ = err.write_all(&line);
                        write_dropped(&mut err);
                        drop(err);
                        PENDING.fetch_sub(1, Ordering::AcqRel);
                    }
                    // Drops at the end of a burst are reported without waiting for a next line.
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                        write_dropped(&mut std::io::stderr().lock());
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                }
            })
            .ok()
            .map(|_| tx)
    });
}

/// Writes how many lines were dropped since it last said so, if any. Log thread only.
fn write_dropped(err: &mut impl Write) {
    let dropped = DROPPED.swap(0, Ordering::Relaxed);
    if dropped > 0 {
        let line = format_line(Level::Warn, format_args!("{DROPPED_NOTE}{dropped}"), 0);
        let _ = err.write_all(&line);
    }
}

/// The line that says how many lines were dropped (`write_dropped`, `flush`).
const DROPPED_NOTE: &str = "log lines dropped, stderr too slow count=";

/// Waits until the log thread has written every queued line, at most `limit`: before exit, and
/// before the panic hook aborts. A drop count still unsaid goes out as a last line.
pub fn flush(limit: Duration) {
    let deadline = Instant::now() + limit;
    let wait = || {
        while PENDING.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    wait();
    let dropped = DROPPED.swap(0, Ordering::Relaxed);
    if dropped > 0 {
        write(Level::Warn, format_args!("{DROPPED_NOTE}{dropped}"));
        wait();
    }
}

/// One `warn_every!` call site's state on one thread: when it last logged, and how many lines it
/// suppressed since.
pub struct Gate {
    last: Cell<Option<Instant>>,
    quiet: Cell<u64>,
}

impl Gate {
    pub const fn new() -> Gate {
        Gate {
            last: Cell::new(None),
            quiet: Cell::new(0),
        }
    }

    /// `Some(suppressed since the last line)` when a line may go out now, `None` (counted) when
    /// one went out less than `every` ago.
    pub fn pass(&self, every: Duration) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .get()
            .is_some_and(|t| now.duration_since(t) < every)
        {
            self.quiet.set(self.quiet.get() + 1);
            return None;
        }
        self.last.set(Some(now));
        Some(self.quiet.replace(0))
    }
}

impl Default for Gate {
    fn default() -> Gate {
        Gate::new()
    }
}

/// Appends `2026-11-22T09:49:00.123Z`.
pub fn push_rfc3339(out: &mut Vec<u8>, t: SystemTime) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let _ = write!(
        out,
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        d.subsec_millis()
    );
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[macro_export]
macro_rules! error { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Error, format_args!($($t)*)) } }
#[macro_export]
macro_rules! warn { ($($t:tt)*) => { if $crate::log::enabled($crate::log::Level::Warn) { $crate::log::write($crate::log::Level::Warn, format_args!($($t)*)) } } }
#[macro_export]
macro_rules! info { ($($t:tt)*) => { if $crate::log::enabled($crate::log::Level::Info) { $crate::log::write($crate::log::Level::Info, format_args!($($t)*)) } } }
/// A warning a request can trigger (an upstream's bad certificate, an auth service down): at most
/// one line per `every` per thread and call site, carrying `suppressed=N` for the lines it stands
/// for. The state is thread-local: a worker takes no lock and shares nothing to log.
#[macro_export]
macro_rules! warn_every {
    ($every:expr, $($t:tt)*) => {{
        ::std::thread_local! {
            static GATE: $crate::log::Gate = const { $crate::log::Gate::new() };
        }
        if $crate::log::enabled($crate::log::Level::Warn) {
            if let Some(n) = GATE.with(|g| g.pass($every)) {
                $crate::log::write_line($crate::log::Level::Warn, format_args!($($t)*), n)
            }
        }
    }};
}
#[macro_export]
macro_rules! debug { ($($t:tt)*) => { if $crate::log::enabled($crate::log::Level::Debug) { $crate::log::write($crate::log::Level::Debug, format_args!($($t)*)) } } }

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_gate_passes_once_per_interval_and_counts_the_rest() {
        let g = Gate::new();
        let every = Duration::from_millis(50);
        assert_eq!(g.pass(every), Some(0));
        assert_eq!(g.pass(every), None);
        assert_eq!(g.pass(every), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(g.pass(every), Some(2));
        assert_eq!(g.pass(every), None);
    }

    #[test]
    fn formats_known_instants() {
        let mut out = Vec::new();
        push_rfc3339(&mut out, UNIX_EPOCH);
        assert_eq!(out, b"1970-01-01T00:00:00.000Z");
        out.clear();
        // 2024-02-29T12:34:56.789Z (leap day)
        push_rfc3339(
            &mut out,
            UNIX_EPOCH + Duration::from_millis(1_709_210_096_789),
        );
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "2024-02-29T12:34:56.789Z"
        );
    }
}
