//! The metrics thread: owns the `Aggregate`, receives worker flushes and control messages over one
//! crossbeam channel, answers queries (from the admin thread) with rendered text.
//!
//! One thread and one channel, so merging never waits for a slow admin client and nothing is locked:
//! a query is a message with a reply channel, answered after every flush queued before it. The
//! channel is unbounded so a worker's `flush` never blocks; the thread drains it continuously (a flush
//! per worker per interval is a few KiB at most).

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::aggregate::{Aggregate, Collector, HistKind, StatusSection};
use super::worker::WorkerFlush;
use super::{prom, Family, Layout};
use crate::config::model::{Config, MetricsDef};

/// What the metrics thread receives.
pub enum Msg {
    Flush(Box<WorkerFlush>),
    Layout(Arc<Layout>),
    Workers(usize),
    FlushInterval(Duration),
    /// `metrics.histogram_file` of the config in use (a reload may set, move or drop it).
    HistogramFile(Option<PathBuf>),
    Reload(bool),
    /// The drain began (`/health` answers 503 from now on).
    Draining,
    Families(String, Vec<Family>),
    Collector(Collector),
    StatusSection(StatusSection),
    Query(Query, Sender<Reply>),
    Stop(Sender<()>),
}

/// What the admin API can ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    Metrics,
    Status,
    Health,
    HistogramSummary,
    Histogram { route: String, kind: HistKind },
}

/// A rendered answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

pub const JSON: &str = "application/json";
pub const TEXT: &str = "text/plain; charset=utf-8";

/// Answers one query from the aggregate (also usable without the thread, in tests and benches).
pub fn answer(agg: &Aggregate, q: &Query) -> Reply {
    let now = Instant::now();
    match q {
        Query::Metrics => {
            let mut body = String::with_capacity(64 * 1024);
            agg.render_metrics(&mut body);
            Reply {
                status: 200,
                content_type: prom::CONTENT_TYPE,
                body,
            }
        }
        Query::Status => Reply {
            status: 200,
            content_type: JSON,
            body: agg.status_json(now),
        },
        Query::Health => {
            let (ok, body) = agg.health(now);
            Reply {
                status: if ok { 200 } else { 503 },
                content_type: JSON,
                body,
            }
        }
        Query::HistogramSummary => Reply {
            status: 200,
            content_type: TEXT,
            body: agg.histogram_summary(),
        },
        Query::Histogram { route, kind } => match agg.histogram_report(route, *kind) {
            Some(body) => Reply {
                status: 200,
                content_type: TEXT,
                body,
            },
            None => Reply {
                status: 404,
                content_type: JSON,
                body: format!(
                    "{{\"message\":{}}}\n",
                    super::json::string(&format!("no route named {route:?}"))
                ),
            },
        },
    }
}

/// The sending end a worker's `WorkerMetrics` holds.
#[derive(Clone)]
pub struct MetricsSink {
    tx: Sender<Msg>,
}

impl MetricsSink {
    pub fn new(tx: Sender<Msg>) -> MetricsSink {
        MetricsSink { tx }
    }

    /// A sink whose messages land in the returned receiver (tests, benches).
    pub fn test() -> (MetricsSink, Receiver<Msg>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        (MetricsSink { tx }, rx)
    }

    /// Never blocks; dropped when the metrics thread is gone.
    pub fn send(&self, m: Msg) {
        let _ = self.tx.send(m);
    }
}

/// A cloneable handle for the main thread, the admin thread and other subsystems.
#[derive(Clone)]
pub struct MetricsHandle {
    tx: Sender<Msg>,
}

impl MetricsHandle {
    /// For `WorkerMetrics::new`.
    pub fn sink(&self) -> MetricsSink {
        MetricsSink::new(self.tx.clone())
    }

    /// Registers a loaded config (startup or successful reload) as generation `generation` and returns
    /// the layout the workers' `WorkerMetrics` use.
    pub fn register_config(&self, cfg: &Config, generation: u64) -> Arc<Layout> {
        let layout = Arc::new(Layout::from_config(cfg, generation));
        self.set_layout(layout.clone());
        self.set_flush_interval(cfg.metrics.flush_interval);
        let _ = self
            .tx
            .send(Msg::HistogramFile(cfg.metrics.histogram_file.clone()));
        layout
    }

    pub fn set_layout(&self, layout: Arc<Layout>) {
        let _ = self.tx.send(Msg::Layout(layout));
    }

    /// How many workers `/health` expects to be flushing.
    pub fn set_workers(&self, n: usize) {
        let _ = self.tx.send(Msg::Workers(n));
    }

    pub fn set_flush_interval(&self, d: Duration) {
        let _ = self.tx.send(Msg::FlushInterval(d));
    }

    /// The process began draining: `/health` answers 503 `draining` from now on.
    pub fn set_draining(&self) {
        let _ = self.tx.send(Msg::Draining);
    }

    /// Counts a reload (the reloader does, once per run, whatever asked for it).
    pub fn reload_outcome(&self, ok: bool) {
        let _ = self.tx.send(Msg::Reload(ok));
    }

    /// Extension point (push): replaces the families published under `source` (e.g. `"limiter"`),
    /// rendered after the built-in ones. Families named like a built-in one are ignored.
    pub fn set_families(&self, source: &str, families: Vec<Family>) {
        let _ = self.tx.send(Msg::Families(source.to_owned(), families));
    }

    /// Extension point (pull): `f` runs on the metrics thread at every scrape and appends families.
    pub fn add_collector(&self, f: impl Fn(&mut Vec<Family>) + Send + 'static) {
        let _ = self.tx.send(Msg::Collector(Box::new(f)));
    }

    /// Extension point for `/status`: `f` runs on the metrics thread for every request and appends
    /// members (`,"key":value`) to the status object.
    pub fn add_status_section(&self, f: impl Fn(&mut String) + Send + 'static) {
        let _ = self.tx.send(Msg::StatusSection(Box::new(f)));
    }

    /// Asks the metrics thread; `None` if it does not answer within `timeout`.
    pub fn query(&self, q: Query, timeout: Duration) -> Option<Reply> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.tx.send(Msg::Query(q, tx)).ok()?;
        rx.recv_timeout(timeout).ok()
    }
}

/// The running metrics thread.
pub struct Hub {
    handle: MetricsHandle,
    join: Option<JoinHandle<()>>,
}

/// How long `Hub::stop` waits for the thread to finish (merging queued flushes, writing the file).
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

impl Hub {
    /// Spawns the metrics thread.
    pub fn start(def: &MetricsDef) -> std::io::Result<Hub> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let interval = def.flush_interval;
        let file = def.histogram_file.clone();
        let join = std::thread::Builder::new()
            .name("ringgate-metrics".to_owned())
            .spawn(move || run(rx, interval, file))?;
        Ok(Hub {
            handle: MetricsHandle { tx },
            join: Some(join),
        })
    }

    pub fn handle(&self) -> MetricsHandle {
        self.handle.clone()
    }

    /// Call after the workers stopped (their final flushes are queued): merges what is queued, writes
    /// `metrics.histogram_file` if configured, ends the thread.
    pub fn stop(mut self) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self.handle.tx.send(Msg::Stop(tx)).is_ok() && rx.recv_timeout(STOP_TIMEOUT).is_ok() {
            if let Some(j) = self.join.take() {
                let _ = j.join();
            }
        }
    }
}

fn run(rx: Receiver<Msg>, interval: Duration, mut file: Option<PathBuf>) {
    let mut agg = Aggregate::new(interval);
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Flush(f) => agg.apply(*f),
            Msg::Layout(l) => agg.set_layout(l),
            Msg::Workers(n) => agg.set_workers(n),
            Msg::FlushInterval(d) => agg.set_flush_interval(d),
            Msg::HistogramFile(f) => file = f,
            Msg::Reload(ok) => agg.reload_outcome(ok),
            Msg::Draining => agg.set_draining(),
            Msg::Families(source, f) => agg.set_families(source, f),
            Msg::Collector(c) => agg.add_collector(c),
            Msg::StatusSection(f) => agg.add_status_section(f),
            Msg::Query(q, reply) => {
                let _ = reply.send(answer(&agg, &q));
            }
            Msg::Stop(done) => {
                // Flushes sent before `Stop` are already merged (one channel, FIFO).
                if let Some(path) = &file {
                    write_histograms(&agg, path);
                }
                let _ = done.send(());
                return;
            }
        }
    }
}

fn write_histograms(agg: &Aggregate, path: &PathBuf) {
    match std::fs::write(path, agg.histogram_file_text()) {
        Ok(()) => crate::info!("histograms written file={}", path.display()),
        Err(e) => crate::error!(
            "histogram file not written file={} error=\"{}\"",
            path.display(),
            e
        ),
    }
}
