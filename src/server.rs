//! Process lifecycle on the main thread: load config, bind listeners, spawn pinned workers, wait for
//! signals, drain on SIGTERM/SIGINT, and on SIGUSR2 hand the listeners to a new process (see
//! `upgrade`) and drain.
//!
//! The main thread does everything that may block (file reads, DNS during config load, binding) so
//! workers never do. Listeners are bound here, one SO_REUSEPORT socket per worker per address (or
//! taken over from the process that started this one), and handed over; a `listen` port of 0 is
//! resolved once so every worker shares the same port.

use crossbeam_channel::RecvTimeoutError;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::access_log::AccessLog;
use crate::acme::AcmeManager;
use crate::admin::{AdminServer, AdminSettings, ReloadFailure, Reloaded};
use crate::config;
use crate::config::model::{Config, ListenKind, PluginConfig};
use crate::config::ConfigError;
use crate::limit::board::LimitBoard;
use crate::limit::{self, ReconcilerHandle};
use crate::metrics::consumers::ConsumerBoard;
use crate::metrics::hub::{Hub, MetricsHandle};
use crate::plugins;
use crate::router::Router;
use crate::tls::{TlsContext, TlsShared};
use crate::upgrade;
use crate::upstream::probe::Prober;
use crate::worker::{self, Compiled, Control, WorkerSpec};
use crate::{error, info, warn};

/// Runs the gateway until a termination signal; returns the process exit code.
pub fn run(path: &Path, workers_override: Option<usize>, pid_file: Option<&Path>) -> i32 {
    // First, before any thread exists: it reads and clears environment variables.
    let mut inherited = upgrade::Inherited::from_env();
    // From here on no thread blocks on stderr (see `crate::log`); main flushes it before exit.
    crate::log::start();
    install_panic_hook();
    let cfg = match config::load(path) {
        Ok(cfg) => {
            crate::tls::expiry::note(&cfg);
            Arc::new(cfg)
        }
        Err(errors) => {
            for e in &errors {
                error!("config error: {e}");
            }
            return 1;
        }
    };
    raise_nofile_limit();
    tune_allocator();
    let cpus = worker::allowed_cpus();
    let workers = workers_override
        .or(cfg.server.workers)
        .unwrap_or_else(|| worker::auto_workers(&cpus))
        .max(1);
    let usable = worker::auto_workers(&cpus);
    if workers > usable {
        warn!(
            "more workers than CPUs this process may use workers={workers} cpus={usable}; workers share cores"
        );
    }
    for w in config::worker_warnings(&cfg, workers) {
        warn!("{w}");
    }
    let use_uring =
        std::env::var_os("RINGGATE_FORCE_EPOLL").is_none() && monoio::utils::detect_uring();
    if !use_uring {
        warn!("io_uring unavailable or disabled, falling back to the epoll driver");
    }
    let hub = match Hub::start(&cfg.metrics) {
        Ok(h) => h,
        Err(e) => {
            error!("metrics thread failed error=\"{e}\"");
            return 1;
        }
    };
    let metrics = hub.handle();
    metrics.set_workers(workers);
    let mut limiter = ReconcilerHandle::new(workers);
    // Per-consumer label slots are capped once, at start (label cardinality never grows past it).
    let consumer_board = Arc::new(ConsumerBoard::new(consumer_cap(&cfg), workers));
    let scrape_consumers = consumer_board.clone();
    metrics.add_collector(move |out| out.extend(scrape_consumers.families()));
    // What every generation's TLS context shares: the ACME store (stored certificates are loaded
    // into it before any worker accepts a connection) and the session ticket keys.
    let tls_shared = match TlsShared::new() {
        Ok(t) => Arc::new(t),
        Err(e) => {
            error!("TLS setup failed error=\"{e}\"");
            return 1;
        }
    };
    let compiled = match compile(
        cfg,
        1,
        workers,
        &metrics,
        &mut limiter,
        &consumer_board,
        &tls_shared,
    ) {
        Ok(c) => Arc::new(c),
        Err(errors) => {
            for e in &errors {
                error!("config error: {e}");
            }
            return 1;
        }
    };
    // The writer's channels exist whether or not the config logs, so a reload can turn it on.
    let mut access_log = AccessLog::new(workers);
    let log_stats = access_log.stats();
    metrics.add_collector(move |out| out.extend(log_stats.families()));
    metrics.add_collector(|out| out.push(crate::auth::verifier::family()));
    metrics.add_collector(|out| out.push(crate::auth::jwt::family()));
    metrics.add_collector(|out| out.push(crate::tls::expiry::family()));
    metrics.add_collector(|out| out.push(crate::tls::accept::family()));
    crate::auth::verifier::start();
    if let Some(def) = &compiled.config.access_log {
        if let Err(e) = access_log.open(def) {
            error!("config error: {e}");
            return 1;
        }
        info!("access log path={}", def.target);
    }

    let mut listeners: Vec<Vec<(std::net::TcpListener, ListenKind)>> =
        (0..workers).map(|_| Vec::new()).collect();
    // What a binary upgrade hands over, in the order the new process looks for it.
    let mut handover = upgrade::Handover {
        fds: Vec::new(),
        workers,
    };
    let all = &compiled.config.server.listeners;
    for (entry, l) in all.iter().enumerate() {
        // An IPv6 socket is IPv6-only when an IPv4 entry shares its port (`0.0.0.0:80` +
        // `[::]:80`, nginx's pair); alone, `[::]:80` stays dual-stack as Linux makes it, so a
        // config listening on it serves IPv4 clients too.
        let v6only = l.addr.is_ipv6()
            && all
                .iter()
                .any(|o| o.addr.is_ipv4() && o.addr.port() == l.addr.port());
        match bind_all(
            l.addr,
            v6only,
            l.kind,
            upgrade::Role::Listener(entry),
            &mut listeners,
            &mut inherited,
            &mut handover,
        ) {
            Ok(actual) => info!("listening addr={actual} kind={}", kind_name(l.kind)),
            Err(e) => {
                error!(
                    "bind failed addr={} error=\"{e}\"{}",
                    l.addr,
                    bind_hint(&e, l.addr)
                );
                return 1;
            }
        }
    }

    // The admin listener too, before any worker accepts: a process that cannot bind it exits
    // before it has taken a connection (after a binary upgrade, one from the shared queues).
    let admin_listener = match &compiled.config.admin {
        Some(def) => match inherited.take(upgrade::Role::Admin, def.listen) {
            Some(l) => Some(l),
            None => match std::net::TcpListener::bind(def.listen) {
                Ok(l) => Some(l),
                Err(e) => {
                    error!(
                        "admin bind failed addr={} error=\"{e}\"{}",
                        def.listen,
                        bind_hint(&e, def.listen)
                    );
                    return 1;
                }
            },
        },
        None => None,
    };

    // After binding (the CA's validation requests wait in the listen backlog until workers
    // accept), before the workers start (stored certificates are in the store by then).
    let acme = match AcmeManager::start(&compiled.config, tls_shared.acme.clone()) {
        Ok(a) => a,
        Err(e) => {
            error!("acme thread spawn failed error=\"{e}\"");
            return 1;
        }
    };
    let acme_status = acme.status();
    let acme_status_json = acme_status.clone();
    metrics.add_collector(move |out| out.extend(acme_status.families()));
    metrics.add_status_section(move |out| acme_status_json.status_json(out));

    let control = Arc::new(Control::default());
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<usize>();
    let (ack_tx, ack_rx) = crossbeam_channel::unbounded::<(usize, u64)>();
    let mut reload_txs = Vec::with_capacity(workers);
    // Each worker's health channel: the prober's verdicts and the other workers' ejections.
    let (health_txs, health_rxs): (Vec<_>, Vec<_>) =
        (0..workers).map(|_| crossbeam_channel::unbounded()).unzip();
    for ((index, listeners), health_rx) in listeners.into_iter().enumerate().zip(health_rxs) {
        let (reload_tx, reload_rx) = crossbeam_channel::unbounded();
        reload_txs.push(reload_tx);
        let health_peers = health_txs
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != index)
            .map(|(_, tx)| tx.clone())
            .collect();
        let spec = WorkerSpec {
            index,
            cpu: if cpus.is_empty() {
                None
            } else {
                cpus.get(index % cpus.len()).copied()
            },
            listeners,
            compiled: compiled.clone(),
            control: control.clone(),
            metrics: metrics.sink(),
            access_log: access_log.link(),
            reloads: reload_rx,
            acks: ack_tx.clone(),
            health_events: health_rx,
            health_peers,
            use_uring,
        };
        let done = done_tx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("ringgate-w{index}"))
            .spawn(move || {
                worker::run(spec);
                let _ = done.send(index);
            });
        if let Err(e) = spawned {
            error!("worker spawn failed worker={index} error=\"{e}\"");
            return 1;
        }
    }
    // Active health checks: one thread for the process; verdicts reach workers over `health_txs`.
    let prober = match Prober::start(compiled.config.clone(), health_txs) {
        Ok(p) => p,
        Err(e) => {
            error!("health prober spawn failed error=\"{e}\"");
            return 1;
        }
    };
    // Handlers go in before `ready` is announced: a SIGHUP arriving earlier would otherwise take the
    // default action and terminate the process.
    let signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        // nginx's graceful stop, and the STOPSIGNAL of its official container image: someone
        // moving from nginx sends it, and its default action would cut every connection at once.
        signal_hook::consts::SIGQUIT,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGUSR1,
        signal_hook::consts::SIGUSR2,
    ]) {
        Ok(s) => s,
        Err(e) => {
            error!("signal setup failed error=\"{e}\"");
            return 1;
        }
    };
    // The rate-limit counters of the serving generation, summed at scrape time.
    let board = Arc::new(Mutex::new(compiled.limit_board.clone()));
    let scrape_board = board.clone();
    metrics.add_collector(move |out| {
        if let Ok(b) = scrape_board.lock() {
            out.extend(b.families());
        }
    });
    let admin_settings = compiled.config.admin.as_ref().map(AdminSettings::new);
    let reloader = Arc::new(Reloader {
        board,
        path: path.to_path_buf(),
        metrics: metrics.clone(),
        control: control.clone(),
        running: Running::of(&compiled.config),
        admin: admin_settings.clone(),
        prober,
        acme,
        tls_shared,
        queue: Mutex::new(ReloadQueue::default()),
        queue_moved: std::sync::Condvar::new(),
        state: Mutex::new(ReloadState {
            current: compiled.clone(),
            limiter,
            workers,
            reload_txs,
            acks: ack_rx,
            access_log,
        }),
    });
    let admin = match admin_settings {
        Some(settings) => {
            let r = reloader.clone();
            let addr = settings.listen();
            match AdminServer::start(
                settings,
                metrics.clone(),
                Box::new(move || r.reload()),
                admin_listener,
            ) {
                Ok(a) => {
                    handover.fds.push((upgrade::Role::Admin, a.listener_fd()));
                    Some(a)
                }
                Err(e) => {
                    error!("admin bind failed addr={addr} error=\"{e}\"");
                    return 1;
                }
            }
        }
        None => None,
    };
    if let Err(e) = crate::dns::spawn(reloader.clone(), &metrics) {
        // Serving goes on with the addresses resolved at load, as with dns_refresh = "0s".
        error!("dns refresh thread not started error=\"{e}\"");
    }
    // Before `ready` is said, and before the old process (after an upgrade) is told: it exits
    // only once the file names us.
    if let Some(p) = pid_file {
        if let Err(e) = write_pid_file(p) {
            error!("pid file not written path={} error=\"{e}\"", p.display());
            return 1;
        }
    }
    // Which binary and which file: after a binary upgrade (USR2) this line is how an operator
    // tells which version now serves.
    info!(
        "ready workers={workers} driver={} generation=1 pid={} version={} config={}",
        if use_uring { "io_uring" } else { "epoll" },
        std::process::id(),
        env!("CARGO_PKG_VERSION"),
        path.display()
    );
    upgrade::notify_ready(inherited.close_unused());

    let mut signals = signals;
    let handed_over = wait_for_termination(&mut signals, &reloader, &handover, pid_file);
    // Not after a handover: the new process is the service's main process now, and a STOPPING=1
    // from this one would make systemd stop the unit.
    if !handed_over {
        upgrade::notify_stopping();
    }
    // Set before the drain flag, so no worker shuts down a socket the new process now serves on.
    control.handed_over.store(handed_over, Ordering::SeqCst);
    // The flag goes up first: from here on a reload is refused, and one waiting for acknowledgements
    // (holding the reload lock `current` takes) stops waiting at once.
    control.drain.store(true, Ordering::SeqCst);
    // Not after a handover: the new process answers /health on the same socket now, and this
    // one's admin closes below.
    if !handed_over {
        metrics.set_draining();
    }
    // After an upgrade the new process answers the admin API (on the same socket).
    let mut admin = admin;
    if handed_over {
        if let Some(a) = admin.take() {
            a.stop();
        }
    }
    let drain_timeout = reloader.current().config.server.drain_timeout;
    info!("draining timeout={}ms", drain_timeout.as_millis());
    // Workers stop by themselves at the drain deadline; the margin covers their last tick.
    let deadline = Instant::now() + drain_timeout + Duration::from_secs(2);
    let mut stopped = 0;
    while stopped < workers {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            warn!("drain deadline passed workers_left={}", workers - stopped);
            break;
        }
        match done_rx.recv_timeout(left.min(SIGNAL_POLL)) {
            Ok(_) => stopped += 1,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if second_signal(&mut signals) {
            warn!(
                "exiting without waiting for in-flight requests workers_left={}",
                workers - stopped
            );
            break;
        }
    }
    // Workers handed off their last access log lines before finishing: write them, then stop.
    reloader.stop_access_log();
    reloader.acme.stop();
    // Workers flushed their last metrics before finishing; stop the readers, then the merger (which
    // writes the histogram file).
    if let Some(a) = admin {
        a.stop();
    }
    hub.stop();
    if let Some(p) = pid_file {
        remove_pid_file(p);
    }
    info!("stopped");
    0
}

/// Everything derived from a config that workers share read-only.
/// Also installs this generation's rate limits in the process's limiter (last, once nothing can
/// fail any more): unchanged limits keep their counts (see `limit::same_counts`).
fn compile(
    config: Arc<Config>,
    generation: u64,
    workers: usize,
    metrics: &MetricsHandle,
    limiter: &mut ReconcilerHandle,
    consumer_board: &Arc<ConsumerBoard>,
    tls_shared: &TlsShared,
) -> Result<Compiled, Vec<ConfigError>> {
    let tls = TlsContext::build(&config, tls_shared)?;
    let acme_http = config
        .acme
        .as_ref()
        .is_some_and(|a| a.challenge == crate::config::model::AcmeChallenge::Http01)
        .then(|| tls_shared.acme.clone());
    let router = Arc::new(Router::new(&config.routes));
    let chains = Arc::new(plugins::compile_chains(&config));
    let auth = Arc::new(crate::auth::AuthSet::build(&config));
    let instances = limit::instances(&config);
    let ids = instances.iter().map(|i| i.id.clone()).collect();
    let links = limiter.install(instances);
    let limit_board = Arc::new(LimitBoard::new(ids, workers, limiter.shared_stats()));
    let layout = metrics.register_config(&config, generation);
    let consumer_slots = Arc::new(consumer_board.register(&config));
    let compiled = Compiled {
        generation,
        config,
        router,
        tls,
        acme_http,
        layout,
        chains,
        auth,
        limiter_links: Mutex::new(links.into_iter().map(Some).collect()),
        limit_board,
        consumer_slots,
        consumer_board: consumer_board.clone(),
    };
    Ok(compiled)
}

/// Hot reload: re-read, validate fully, compile off the workers, then hand the new generation to every
/// worker, which swaps it in at request boundaries. A config that fails validation is rejected whole
/// and the old one keeps serving. Callable from any thread (SIGHUP on the main thread, the admin API).
pub struct Reloader {
    path: PathBuf,
    /// The limit board `/metrics` reads; swapped with each generation.
    board: Arc<Mutex<Arc<LimitBoard>>>,
    metrics: MetricsHandle,
    /// `drain` refuses reloads: draining workers no longer take new generations.
    control: Arc<Control>,
    /// What only a restart changes, as the process started.
    running: Running,
    /// The running admin listener's reloadable settings (`None`: no admin listener).
    admin: Option<Arc<AdminSettings>>,
    /// Active health checks: told about every committed generation (targets added or removed).
    prober: Prober,
    /// ACME certificates: told about every committed generation.
    acme: AcmeManager,
    tls_shared: Arc<TlsShared>,
    state: Mutex<ReloadState>,
    /// Reload requests (SIGHUP and `POST /reload`), run one at a time in order (`request_reload`).
    queue: Mutex<ReloadQueue>,
    /// Signalled when a run finished (`wait_reload`).
    queue_moved: std::sync::Condvar,
}

/// Reload requests and the outcomes of the runs that served them. One `ringgate-reload` thread at
/// a time runs reloads while requests are waiting; every request that came while a run was going
/// is served by the next run, which reads the file after they came. So a load that began earlier
/// never commits over one that began later (the newest file wins, even when an older load was
/// slow), and any number of requests during a slow load make one more reload, not one each.
#[derive(Default)]
struct ReloadQueue {
    /// Requests so far; a request's ticket is the count after it.
    requested: u64,
    /// Every ticket up to this has its outcome in `outcomes` (or had, before it was trimmed).
    done: u64,
    running: bool,
    /// The last runs' outcomes, oldest first: (the highest ticket the run served, its outcome).
    outcomes: std::collections::VecDeque<(u64, Result<Reloaded, ReloadFailure>)>,
}

/// Outcomes kept for requests still to pick theirs up (runs are rare; a waiter wakes within
/// milliseconds of its run).
const RELOAD_OUTCOMES_KEPT: usize = 16;

/// How long `POST /reload` waits for its reload: a load normally takes milliseconds, seconds when
/// names resolve slowly. Past this the admin answers 503 and the reload goes on (its outcome is
/// logged), so a hung load (a dead resolver, a file on a hung mount) holds no admin connection.
pub const RELOAD_WAIT: Duration = Duration::from_secs(30);

/// The settings a reload cannot apply, as bound at start: a config that differs gets the restart
/// warning on every reload until the process restarts (not just on the reload that changed them).
struct Running {
    /// Addresses and kinds (plain, TLS, redirect): each worker's listeners are fixed at start.
    listeners: Vec<crate::config::model::ListenDef>,
    workers: Option<usize>,
    admin_listen: Option<std::net::SocketAddr>,
    /// Per-consumer label slots, sized once at start (0: labels were off).
    consumer_cap: usize,
}

/// The per-consumer label slots `config` asks for (0 when the labels are off).
fn consumer_cap(config: &Config) -> usize {
    if config.metrics.per_consumer_labels {
        config.metrics.max_consumer_labels
    } else {
        0
    }
}

impl Running {
    fn of(config: &Config) -> Running {
        Running {
            listeners: config.server.listeners.clone(),
            workers: config.server.workers,
            admin_listen: config.admin.as_ref().map(|a| a.listen),
            consumer_cap: consumer_cap(config),
        }
    }

    /// The settings of `config` that differ from the running ones, as config keys.
    fn needs_restart(&self, config: &Config) -> Vec<&'static str> {
        let mut keys = Vec::new();
        // A listener's kind too: a port turned to TLS or to redirects would otherwise go on
        // serving plain HTTP with no word said.
        if config.server.listeners != self.listeners {
            keys.push("listen");
        }
        if config.server.workers != self.workers {
            keys.push("workers");
        }
        match (self.admin_listen, config.admin.as_ref()) {
            (Some(running), Some(new)) if new.listen != running => keys.push("admin.listen"),
            (None, Some(_)) => keys.push("[admin] (added)"),
            (Some(_), None) => keys.push("[admin] (removed)"),
            _ => {}
        }
        // Turning the labels off applies live; turning them on or resizing them does not (label
        // cardinality is fixed at start).
        let cap = consumer_cap(config);
        if cap != 0 && cap != self.consumer_cap {
            keys.push("metrics.per_consumer_labels/max_consumer_labels");
        }
        keys
    }
}

struct ReloadState {
    current: Arc<Compiled>,
    /// The process's rate limiter (reconciler thread); each successful reload installs into it.
    limiter: ReconcilerHandle,
    workers: usize,
    reload_txs: Vec<crossbeam_channel::Sender<Arc<Compiled>>>,
    acks: crossbeam_channel::Receiver<(usize, u64)>,
    /// The access log writer; every reload reopens its file (see `reopen_access_log`).
    access_log: AccessLog,
}

/// How long shutdown waits for the access log writer to write what is queued.
const ACCESS_LOG_STOP: Duration = Duration::from_secs(5);

/// How long a reload waits for every worker to confirm the swap (workers poll every 50 ms).
const RELOAD_ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// How often that wait looks at the drain flag.
const RELOAD_ACK_POLL: Duration = Duration::from_millis(50);

impl Reloader {
    pub fn current(&self) -> Arc<Compiled> {
        self.state().current.clone()
    }

    /// The reload state, also after a panic while it was held: a failed reload must not also stop
    /// later reloads, log rotation and shutdown.
    fn state(&self) -> std::sync::MutexGuard<'_, ReloadState> {
        match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    pub(crate) fn draining(&self) -> bool {
        self.control.drain.load(Ordering::SeqCst)
    }

    /// SIGUSR1 (and every reload, also a rejected one): reopen the access log file at its
    /// configured path, so `mv access.log access.log.1` followed by a signal starts a new file, as
    /// nginx's USR1 does. Lines handed off before go to the old file. The file is opened on this
    /// thread (main for SIGUSR1, `ringgate-reload` for a reload), never on a worker.
    pub fn reopen_access_log(&self) {
        let mut state = self.state();
        reopen(&mut state);
    }

    /// Shutdown, after the workers stopped: write what they handed off, then end the writer.
    fn stop_access_log(&self) {
        let mut state = self.state();
        state.access_log.stop(ACCESS_LOG_STOP);
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, ReloadQueue> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Asks for a reload and returns its ticket at once (for `wait_reload`). The reload runs on a
    /// `ringgate-reload` thread, after any that is running (see `ReloadQueue`).
    pub fn request_reload(self: &Arc<Self>) -> u64 {
        let mut q = self.queue();
        q.requested += 1;
        let ticket = q.requested;
        if !q.running {
            q.running = true;
            drop(q);
            let r = self.clone();
            if let Err(e) = std::thread::Builder::new()
                .name("ringgate-reload".into())
                .spawn(move || r.run_queue())
            {
                warn!("reload thread not started, reloading on this thread error=\"{e}\"");
                self.run_queue();
            }
        }
        ticket
    }

    /// Runs reloads until no request is waiting.
    fn run_queue(&self) {
        /// Clears `running` if a reload panicked (debug builds unwind): later requests must not
        /// wait for a runner that is gone. (A normal end clears it under the lock that saw the
        /// queue empty; clearing it again then could let a second runner start beside a new one.)
        struct OnPanic<'a>(&'a Reloader);
        impl Drop for OnPanic<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.queue().running = false;
                }
            }
        }
        let _on_panic = OnPanic(self);
        let mut q = self.queue();
        while q.done < q.requested {
            let serves = q.requested;
            drop(q);
            let outcome = self.reload_now();
            self.metrics.reload_outcome(outcome.is_ok());
            q = self.queue();
            q.done = serves;
            q.outcomes.push_back((serves, outcome));
            if q.outcomes.len() > RELOAD_OUTCOMES_KEPT {
                q.outcomes.pop_front();
            }
            self.queue_moved.notify_all();
        }
        q.running = false;
    }

    /// The outcome of the reload `ticket` asked for, waiting for it at most `limit`.
    pub fn wait_reload(&self, ticket: u64, limit: Duration) -> Result<Reloaded, ReloadFailure> {
        let deadline = std::time::Instant::now() + limit;
        let mut q = self.queue();
        while q.done < ticket {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(ReloadFailure::Unavailable {
                    message: format!(
                        "the reload is still running after {}s (the config load is slow: a resolver, a file on a hung mount?); its outcome will be logged",
                        limit.as_secs()
                    ),
                    generation: None,
                });
            }
            q = match self.queue_moved.wait_timeout(q, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        // The first run that served this ticket, or (if more than RELOAD_OUTCOMES_KEPT runs
        // finished before this waiter woke) the oldest kept, which also read the file after the
        // request came.
        q.outcomes
            .iter()
            .find(|(served, _)| *served >= ticket)
            .map_or_else(
                || {
                    Err(ReloadFailure::Unavailable {
                        message: "reload outcome lost".to_owned(),
                        generation: None,
                    })
                },
                |(_, o)| o.clone(),
            )
    }

    /// Reloads through the queue and waits for the outcome (at most `RELOAD_WAIT`): the new
    /// generation once every worker serves it. Otherwise: the config's errors (nothing changed),
    /// or `Unavailable` when draining (nothing loaded), when a worker did not confirm the new
    /// generation (installed; the rest of the workers may serve the old one), or when the load
    /// is still running.
    pub fn reload(self: &Arc<Self>) -> Result<Reloaded, ReloadFailure> {
        let ticket = self.request_reload();
        self.wait_reload(ticket, RELOAD_WAIT)
    }

    /// One reload, now, on this thread (only `run_queue` calls it: reloads never overlap).
    fn reload_now(&self) -> Result<Reloaded, ReloadFailure> {
        let refused = || {
            warn!("reload refused: draining");
            Err(ReloadFailure::Unavailable {
                message: "the gateway is draining (shutting down); nothing was reloaded".to_owned(),
                generation: None,
            })
        };
        if self.draining() {
            return refused();
        }
        // Read and resolved before the lock: a slow load (a resolver that does not answer, the
        // file on a hung mount) must not hold up the drain, which takes the lock at its end.
        let loaded = config::load(&self.path);
        let mut state = self.state();
        // Checked again under the lock: a reload queued behind another, or one whose load was
        // slow, learns about a drain that began meanwhile.
        if self.draining() {
            return refused();
        }
        let config = match loaded {
            Ok(c) => c,
            Err(errors) => return Err(rejected(&mut state, &errors)),
        };
        let installed = self.install(&mut state, config);
        if installed.is_ok() {
            crate::tls::expiry::note(&state.current.config);
            for w in config::worker_warnings(&state.current.config, state.workers) {
                warn!("{w}");
            }
        }
        installed
    }

    /// Upstream targets given by host name resolved to new addresses (`dns`): installs the serving
    /// config with those addresses as the next generation, through the same path as a reload (so
    /// nothing in flight is dropped). Nothing is re-read from the file: an edit waiting there is
    /// not applied behind the operator's back. Skipped when a reload or drain came first
    /// (`generation` is no longer the serving one); the next refresh looks again.
    pub fn apply_resolved(
        &self,
        generation: u64,
        changes: &[crate::dns::Change],
    ) -> Result<u64, ReloadFailure> {
        let mut state = self.state();
        if self.draining() || state.current.generation != generation {
            return Err(ReloadFailure::Unavailable {
                message: "superseded".to_owned(),
                generation: None,
            });
        }
        let mut config = (*state.current.config).clone();
        let mut auth_moved = false;
        for c in changes {
            match &c.place {
                crate::dns::Place::Target { upstream, name } => {
                    if let Some(u) = config.upstreams.get_mut(*upstream) {
                        u.set_addrs(name, &c.to);
                    }
                    // What a reload falls back to if the name cannot be resolved then.
                    if let Ok((host, port)) = crate::config::net::split_host_port(name) {
                        crate::config::net::remember_target(host, port, &c.to);
                    }
                }
                crate::dns::Place::ForwardAuth { plugin } => {
                    if let (Some(PluginConfig::ForwardAuth(f)), Some(&to)) = (
                        config.plugins.get_mut(*plugin).map(|p| &mut p.config),
                        c.to.first(),
                    ) {
                        f.def.addr = to;
                        auth_moved = true;
                        // `host` is the authority sent as Host: `name[:port]`.
                        let name = crate::config::net::split_host_port(&f.def.host)
                            .map_or(f.def.host.as_str(), |(h, _)| h);
                        crate::config::net::remember_target(name, to.port(), &[to]);
                    }
                }
            }
        }
        // Only addresses changed: everything compiled from the rest is the serving generation's
        // (the auth tables, so workers keep their JWT and basic-auth caches; the rate-limit board,
        // so /metrics counters do not dip). No file is reopened and no reload warning repeats.
        // A moved auth service: the auth tables hold its address, so they are built again (pure,
        // no file read); the credentials are the same, so the workers' caches carry over.
        let prev = state.current.clone();
        let auth = if auth_moved {
            Arc::new(crate::auth::AuthSet::build(&config).with_caches_of(&prev.auth))
        } else {
            prev.auth.clone()
        };
        let instances = limit::instances(&config);
        let links = state.limiter.install(instances);
        let compiled = Compiled {
            generation: prev.generation + 1,
            layout: self.metrics.register_config(&config, prev.generation + 1),
            config: Arc::new(config),
            router: prev.router.clone(),
            tls: prev.tls.clone(),
            acme_http: prev.acme_http.clone(),
            chains: prev.chains.clone(),
            auth,
            limiter_links: Mutex::new(links.into_iter().map(Some).collect()),
            limit_board: prev.limit_board.clone(),
            consumer_slots: prev.consumer_slots.clone(),
            consumer_board: prev.consumer_board.clone(),
        };
        self.commit(
            &mut state,
            Arc::new(compiled),
            "upstream addresses installed",
        )
    }

    /// Compiles `config` as the next generation and hands it to every worker (see `reload`).
    fn install(&self, state: &mut ReloadState, config: Config) -> Result<Reloaded, ReloadFailure> {
        let generation = state.current.generation + 1;
        let workers = state.workers;
        let consumer_board = state.current.consumer_board.clone();
        // Opened before anything is committed (`compile` installs the rate limits): a path that
        // cannot be opened rejects the reload, and the previous file stays in use.
        let log = match config
            .access_log
            .as_ref()
            .map(|def| state.access_log.prepare(def))
        {
            None => None,
            Some(Ok(opened)) => Some(opened),
            Some(Err(e)) => {
                let e = format!("{}: {e}", self.path.display());
                error!("reload rejected: {e}");
                reopen(state);
                return Err(ReloadFailure::Rejected(vec![e]));
            }
        };
        let compiled = match compile(
            Arc::new(config),
            generation,
            workers,
            &self.metrics,
            &mut state.limiter,
            &consumer_board,
            &self.tls_shared,
        ) {
            Ok(c) => Arc::new(c),
            Err(errors) => return Err(rejected(state, &errors)),
        };
        // Every reload reopens the file: `mv` + SIGHUP rotates like SIGUSR1.
        if let Some(opened) = log {
            state.access_log.install(opened);
        }
        let restart = self.running.needs_restart(&compiled.config);
        if !restart.is_empty() {
            warn!(
                "reload: changes to {} take effect only after a restart",
                restart.join(", ")
            );
        }
        // Before the workers get it: stored certificates of names it adds are in service when
        // the generation is.
        self.acme.update(&compiled.config);
        // The admin token is in effect from here on, whatever the workers do: the generation is
        // committed.
        if let (Some(settings), Some(def)) = (&self.admin, &compiled.config.admin) {
            settings.apply(def);
        }
        self.commit(state, compiled, "reloaded")
            .map(|generation| Reloaded {
                generation,
                restart_required: restart,
            })
    }

    /// Hands `compiled` to every worker and waits (bounded) for each to serve it; logs `done` with
    /// the generation once they all do.
    fn commit(
        &self,
        state: &mut ReloadState,
        compiled: Arc<Compiled>,
        done: &str,
    ) -> Result<u64, ReloadFailure> {
        let generation = compiled.generation;
        let workers = state.workers;
        while state.acks.try_recv().is_ok() {}
        // A worker whose channel is closed has exited: it cannot confirm, so it is not waited for,
        // but it counts as unconfirmed.
        let mut pending = 0;
        let mut gone = 0;
        for tx in &state.reload_txs {
            if tx.send(compiled.clone()).is_ok() {
                pending += 1;
            } else {
                gone += 1;
            }
        }
        if let Ok(mut b) = self.board.lock() {
            compiled.limit_board.absorb(&b);
            *b = compiled.limit_board.clone();
        }
        self.prober.update(compiled.config.clone());
        state.current = compiled;
        let deadline = Instant::now() + RELOAD_ACK_TIMEOUT;
        // Draining workers take no new generation: stop waiting as soon as the drain begins.
        while pending > 0 && !self.draining() {
            let wait = deadline
                .saturating_duration_since(Instant::now())
                .min(RELOAD_ACK_POLL);
            if wait.is_zero() {
                break;
            }
            match state.acks.recv_timeout(wait) {
                Ok((_, g)) if g == generation => pending -= 1,
                Ok(_) | Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            }
        }
        if compiled_has_no_log(state) {
            // Workers handed off their buffered lines before acknowledging; the writer closes
            // the file after writing them. (A worker that did not confirm may still hand lines
            // off: they are counted as dropped.)
            state.access_log.close();
        }
        let pending = pending + gone;
        if pending > 0 {
            let why = if self.draining() {
                "the gateway began draining".to_owned()
            } else {
                format!("no answer within {}s", RELOAD_ACK_TIMEOUT.as_secs())
            };
            warn!(
                "reload not confirmed generation={generation} unconfirmed_workers={pending} workers={workers} reason=\"{why}\""
            );
            return Err(ReloadFailure::Unavailable {
                message: format!(
                    "generation {generation} is installed, but {pending} of {workers} worker(s) did not confirm it ({why}); they may still serve the previous generation"
                ),
                generation: Some(generation),
            });
        }
        info!("{done} generation={generation}");
        Ok(generation)
    }
}

/// A rejected reload: logs the errors and reopens the access log (the signal still rotates it,
/// whatever became of the config).
fn rejected(state: &mut ReloadState, errors: &[ConfigError]) -> ReloadFailure {
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    for e in &text {
        error!("reload rejected: {e}");
    }
    reopen(state);
    ReloadFailure::Rejected(text)
}

/// Reopens the access log of the generation in force (if it has one); a failure keeps the old file.
fn reopen(state: &mut ReloadState) {
    let current = state.current.clone();
    if let Some(def) = &current.config.access_log {
        match state.access_log.open(def) {
            Ok(()) => info!("access log reopened path={}", def.target),
            Err(e) => error!("access log reopen failed, still writing to the previous file: {e}"),
        }
    }
}

/// Whether the generation in force has no `[access_log]` while the writer still has a file open.
fn compiled_has_no_log(state: &ReloadState) -> bool {
    state.current.config.access_log.is_none() && state.access_log.is_open()
}

/// One listening socket per worker for `addr`: the ones a binary upgrade handed over first, new
/// SO_REUSEPORT ones for the rest; returns the address actually bound (port 0 resolved). Each fd
/// is also listed in `handover`.
fn bind_all(
    addr: std::net::SocketAddr,
    v6only: bool,
    kind: ListenKind,
    role: upgrade::Role,
    listeners: &mut [Vec<(std::net::TcpListener, ListenKind)>],
    inherited: &mut upgrade::Inherited,
    handover: &mut upgrade::Handover,
) -> std::io::Result<std::net::SocketAddr> {
    use std::os::fd::AsRawFd;
    let mut actual = addr;
    let listeners_len = listeners.len().max(1);
    for (i, slot) in listeners.iter_mut().enumerate() {
        let l = match inherited.take(role, actual) {
            Some(l) => {
                // Monoio registers it as it is; a fresh one is non-blocking too.
                l.set_nonblocking(true)?;
                l
            }
            None => {
                if i == 0 && actual.port() != 0 {
                    refuse_if_taken(actual, v6only)?;
                }
                worker::bind_reuseport(actual, v6only)?
            }
        };
        if i == 0 {
            actual = l.local_addr()?;
            if let Err(e) = worker::steer_reuseport(&l, listeners_len) {
                warn!("reuseport steering failed addr={actual} error=\"{e}\"; the kernel spreads connections over all sockets");
            }
        }
        handover.fds.push((role, l.as_raw_fd()));
        slot.push((l, kind));
    }
    // More sockets inherited than workers (an upgrade to fewer workers): closing the surplus
    // would reset the connections queued on them. They stay open, spread over the workers, and
    // get no new connections (`steer_reuseport`); a later upgrade hands them on. A restart drops
    // them.
    let mut kept = 0;
    while let Some(l) = inherited.take(role, actual) {
        l.set_nonblocking(true)?;
        handover.fds.push((role, l.as_raw_fd()));
        if let Some(slot) = listeners.get_mut(kept % listeners_len) {
            slot.push((l, kind));
        }
        kept += 1;
    }
    if kept > 0 {
        info!("upgrade: surplus sockets kept addr={actual} count={kept}");
    }
    Ok(actual)
}

/// Fails when another process listens on `addr` already. With SO_REUSEPORT alone a second
/// ringgate (same user) would join the first one's socket group and start "ready": while the first
/// runs it gets no connections (its steering program sends them to its own workers), and when the
/// first stops, the forgotten second one serves with its own config. A plain bind of the address
/// is refused while any socket listens on it, as nginx's is. (A binary upgrade inherits its
/// sockets and skips this.)
fn refuse_if_taken(addr: std::net::SocketAddr, v6only: bool) -> std::io::Result<()> {
    // Made as the listener will be: an IPv6-only one must not clash with this process's own
    // `0.0.0.0:80`.
    let probe = worker::listen_socket(addr, v6only).and_then(|s| {
        s.bind(&addr.into())?;
        s.listen(1)?;
        Ok(s)
    });
    match probe {
        Ok(probe) => {
            drop(probe);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && someone_listens(addr) => {
            Err(std::io::Error::new(
                e.kind(),
                format!(
                    "{e}: another process listens on {addr} (is another ringgate running? to \
                     replace a running one without dropping connections, send it SIGUSR2)"
                ),
            ))
        }
        // Taken, and nobody listens: an outgoing connection's local port (a port inside
        // `ip_local_port_range` is handed to connections too), or a socket bound and not
        // listening (found by a review: the message blamed a listener that did not exist).
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(std::io::Error::new(
            e.kind(),
            format!(
                "{e}: {addr} is taken by a socket that does not listen, such as an outgoing \
                 connection's local port; a listen port inside net.ipv4.ip_local_port_range can \
                 be taken that way: reserve it with net.ipv4.ip_local_reserved_ports or pick a \
                 port outside the range"
            ),
        )),
        Err(e) => Err(e),
    }
}

/// Whether some socket listens on `addr`'s port at an address that overlaps it (the same one, or
/// either side a wildcard), by the kernel's socket tables (`/proc/net/tcp`, `/proc/net/tcp6`):
/// exact, and it connects to nobody. When the tables cannot be read, it says yes (the old message).
fn someone_listens(addr: std::net::SocketAddr) -> bool {
    let mut readable = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        readable = true;
        if text
            .lines()
            .skip(1)
            .filter_map(listening_entry)
            .any(|(ip, port)| {
                port == addr.port()
                    && (ip == addr.ip() || ip.is_unspecified() || addr.ip().is_unspecified())
            })
        {
            return true;
        }
    }
    !readable
}

/// The local (address, port) of a `/proc/net/tcp{,6}` line in state LISTEN (`0A`).
fn listening_entry(line: &str) -> Option<(std::net::IpAddr, u16)> {
    let mut fields = line.split_whitespace();
    let local = fields.nth(1)?;
    let state = fields.nth(1)?;
    if state != "0A" {
        return None;
    }
    let (ip_hex, port_hex) = local.split_once(':')?;
    let port = u16::from_str_radix(port_hex, 16).ok()?;
    // The address is in host byte order, 32 bits at a time (little-endian here).
    let words: Vec<u32> = (0..ip_hex.len() / 8)
        .map(|i| {
            ip_hex
                .get(i * 8..i * 8 + 8)
                .and_then(|w| u32::from_str_radix(w, 16).ok())
        })
        .collect::<Option<_>>()?;
    let ip = match words.as_slice() {
        [w] => std::net::IpAddr::from(w.to_le_bytes()),
        [a, b, c, d] => {
            let mut bytes = [0u8; 16];
            for (chunk, w) in bytes.chunks_exact_mut(4).zip([a, b, c, d]) {
                chunk.copy_from_slice(&w.to_le_bytes());
            }
            let v6 = std::net::Ipv6Addr::from(bytes);
            // An IPv4-mapped listener (`::ffff:a.b.c.d`) is that IPv4 address.
            v6.to_ipv4_mapped()
                .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4)
        }
        _ => return None,
    };
    Some((ip, port))
}

/// What to do about a bind error an operator meets often: a privileged port without the right.
fn bind_hint(e: &std::io::Error, addr: std::net::SocketAddr) -> &'static str {
    if e.kind() == std::io::ErrorKind::PermissionDenied && addr.port() < 1024 {
        " hint=\"ports below 1024 need root or CAP_NET_BIND_SERVICE (setcap cap_net_bind_service=+ep on the binary, or AmbientCapabilities= in a systemd unit)\""
    } else {
        ""
    }
}

/// For the `listening` log line.
fn kind_name(kind: ListenKind) -> &'static str {
    match kind {
        ListenKind::Http => "http",
        ListenKind::Https => "https",
        ListenKind::RedirectHttps { .. } => "redirect-https",
    }
}

/// Writes this process's pid to `path`: into a temporary file beside it, then renamed over it, so
/// a supervisor never reads a half-written pid (and after an upgrade the new process's replaces the
/// old one's in one step).
fn write_pid_file(path: &Path) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    // A new file, never one that is there (a link planted in a shared directory would make a root
    // process write through it): a stale one of ours is removed once and the create retried.
    let create = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
    };
    let mut file = match create() {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(&tmp)?;
            create()?
        }
        other => other?,
    };
    let written =
        std::io::Write::write_all(&mut file, format!("{}\n", std::process::id()).as_bytes());
    drop(file);
    written
        .and_then(|()| std::fs::rename(&tmp, path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
}

/// Whether the pid file at `path` names this process.
fn pid_file_names_us(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|s| s.trim().parse::<u32>() == Ok(std::process::id()))
}

/// Removes the pid file at exit if it still names this process (after a handover it names the
/// new one, which keeps it).
fn remove_pid_file(path: &Path) {
    if pid_file_names_us(path) {
        if let Err(e) = std::fs::remove_file(path) {
            warn!("pid file not removed path={} error=\"{e}\"", path.display());
        }
    }
}

/// The name a log line gives a signal ringgate handles.
fn signal_name(sig: i32) -> &'static str {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
    match sig {
        SIGTERM => "SIGTERM",
        SIGINT => "SIGINT",
        SIGQUIT => "SIGQUIT",
        SIGHUP => "SIGHUP",
        SIGUSR1 => "SIGUSR1",
        SIGUSR2 => "SIGUSR2",
        _ => "other",
    }
}

/// How often a drain looks for a second SIGTERM/SIGINT.
const SIGNAL_POLL: Duration = Duration::from_millis(100);

/// During a drain: true once a second SIGTERM, SIGINT or SIGQUIT came (the operator wants out now, as with a
/// second Ctrl-C; otherwise only SIGKILL could cut a long `drain_timeout` short). A SIGHUP is not
/// acted on: the workers no longer take new generations.
fn second_signal(signals: &mut signal_hook::iterator::Signals) -> bool {
    use signal_hook::consts::{SIGINT, SIGQUIT, SIGTERM};
    let mut stop = false;
    for sig in signals.pending() {
        match sig {
            SIGTERM | SIGINT | SIGQUIT => {
                info!("signal received signal={} draining=true", signal_name(sig));
                stop = true;
            }
            // A reload, a log reopen or an upgrade has nothing to act on any more (an upgrade: the
            // sockets are handed over already, or closing); a repeated USR2 must not end the drain.
            _ => warn!("signal ignored while draining signal={}", signal_name(sig)),
        }
    }
    stop
}

/// Asks for a reload and returns at once: it runs on a `ringgate-reload` thread, so the main
/// thread goes on taking signals. A reload whose config load hangs (names resolved against a
/// resolver that does not answer, each lookup taking its timeouts in turn) would otherwise hold a
/// SIGTERM until it returned, past a supervisor's stop timeout. SIGHUPs that come while one runs
/// make one more reload after it (`ReloadQueue`).
fn reload_on_sighup(reloader: &Arc<Reloader>) {
    reloader.request_reload();
}

/// Blocks until SIGTERM or SIGINT, or until a binary upgrade (SIGUSR2) handed the sockets over
/// (then returns true); SIGHUP reloads the config (which also reopens the access log), SIGUSR1
/// only reopens the access log.
fn wait_for_termination(
    signals: &mut signal_hook::iterator::Signals,
    reloader: &Arc<Reloader>,
    handover: &upgrade::Handover,
    pid_file: Option<&Path>,
) -> bool {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
    let name = signal_name;
    // Signals that came while an upgrade was starting, handled once it is over.
    let mut queued: Vec<i32> = Vec::new();
    loop {
        let sig = match queued.pop() {
            Some(s) => s,
            None => match signals.forever().next() {
                Some(s) => s,
                None => return false,
            },
        };
        match sig {
            SIGUSR2 => {
                info!("signal received signal=SIGUSR2");
                // The wait for the new process (up to a minute) must not hold a stop request up:
                // systemd would SIGKILL us at its stop timeout. SIGTERM/SIGINT give the upgrade up
                // and drain; SIGHUP and SIGUSR1 are handled after it; another SIGUSR2 is moot.
                let mut stop_sig = None;
                let outcome = handover.run(upgrade::UPGRADE_WAIT, &mut || {
                    for s in signals.pending() {
                        match s {
                            SIGTERM | SIGINT | SIGQUIT => stop_sig = Some(s),
                            SIGUSR2 => {
                                info!("signal received signal=SIGUSR2; an upgrade is already starting")
                            }
                            other => {
                                info!(
                                    "signal received signal={}; handled once the upgrade is over",
                                    name(other)
                                );
                                queued.insert(0, other);
                            }
                        }
                    }
                    stop_sig.is_some()
                });
                // A new process that wrote the pid file and then did not come up (given up, timed
                // out) leaves it naming a dead process: this one serves on, so it names this one.
                if let (upgrade::Outcome::Failed, Some(p)) = (&outcome, pid_file) {
                    if !pid_file_names_us(p) {
                        if let Err(e) = write_pid_file(p) {
                            warn!("pid file not restored path={} error=\"{e}\"", p.display());
                        }
                    }
                }
                if let Some(s) = stop_sig {
                    info!("signal received signal={}", name(s));
                    return false;
                }
                if let upgrade::Outcome::Ready { .. } = outcome {
                    // The new process serves now, with its own config and log file.
                    for s in queued.drain(..) {
                        info!("signal ignored: the new process serves signal={}", name(s));
                    }
                    return true;
                }
            }
            SIGHUP => {
                info!("signal received signal=SIGHUP");
                reload_on_sighup(reloader);
            }
            SIGUSR1 => {
                info!("signal received signal=SIGUSR1");
                reloader.reopen_access_log();
            }
            _ => {
                info!("signal received signal={}", name(sig));
                return false;
            }
        }
    }
}

/// Turns transparent huge pages off for this process (`prctl(PR_SET_THP_DISABLE)`), unless
/// `MIMALLOC_ALLOW_THP` is set (then mimalloc's own setting applies).
///
/// Why: mimalloc reserves its arena with `MADV_HUGEPAGE`, so with the common `madvise` THP setting
/// (and with `always`) every 2 MiB of arena the process touches becomes a whole resident huge page.
/// The heap is a few MiB of scattered objects, so ~1.7 MiB of live heap showed as 14 MiB of RSS after
/// a few hundred requests. Measured (one worker, loadtest config): after 300 requests RSS 20.4 -> 7.8
/// MiB; peak over a loadtest run 30.5 -> 18.7 MiB. The heap is small enough for 4 KiB pages' TLB reach
/// (no measurable CPU change per request).
///
/// The binary calls this from `.init_array`, before mimalloc's constructor and the Rust runtime:
/// huge pages faulted earlier stay huge, and by `main` the first allocations have faulted 4 MiB.
/// So it runs before `main`: libc calls only, no allocation.
pub extern "C" fn disable_transparent_huge_pages() {
    // SAFETY: getenv reads the environment libc set up before constructors run (nothing writes it
    // concurrently this early); PR_SET_THP_DISABLE only sets a flag on this process's mm (and is
    // inherited by children, of which the gateway has none). Its result needs no handling: where it
    // fails there are no huge pages to turn off.
    unsafe {
        if libc::getenv(c"MIMALLOC_ALLOW_THP".as_ptr()).is_null() {
            libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        }
    }
}

/// mimalloc's `mi_option_purge_delay` (its index in v2's and v3's `mimalloc.h`; the crate does not
/// export it).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;
/// How long freed pages stay committed before a collect may return them to the OS.
const PURGE_DELAY_MS: std::ffi::c_long = 250;
/// mimalloc v3's default purge delay.
const MI_V3_PURGE_DELAY_MS: std::ffi::c_long = 1000;

/// Freed memory goes back to the OS sooner: mimalloc v3 keeps freed pages committed for 1 s, so
/// with the workers' collect every 500 ms what a burst freed (say, 10,000 connections' request
/// state when they park) stayed resident up to 2.5 s after it; the load test's 2 s reading of
/// idle connections caught it in 3 of 14 runs (2-3 KiB per connection instead of ~0.4). 250 ms
/// still keeps what steady traffic cycles through (v2's default was 10 ms). Set only where the
/// option reads v3's default, so another allocator version, or `MIMALLOC_PURGE_DELAY` in the
/// environment, is left alone.
fn tune_allocator() {
    // SAFETY: plain FFI calls to the linked allocator; options are process-wide values mimalloc
    // reads on each purge decision.
    unsafe {
        if libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) == MI_V3_PURGE_DELAY_MS {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
        }
    }
}

/// Many client and upstream sockets per worker: lift the soft descriptor limit to the hard one.
fn raise_nofile_limit() {
    // SAFETY: plain struct filled by getrlimit, passed back to setrlimit.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// A panic on a worker is a bug: log it on one line and abort, so a supervisor restarts a whole
/// process instead of one silently running with a dead core.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        error!("panic: {info}");
        // The line goes through the log thread: let it out before the process is gone (bounded,
        // so a stalled stderr still ends in the abort a supervisor restarts on).
        crate::log::flush(std::time::Duration::from_millis(500));
        std::process::abort();
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_sockets_from_the_kernel_tables() {
        let v4 = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1234 1 0 100 0 0 10 0";
        assert_eq!(
            listening_entry(v4),
            Some(("127.0.0.1".parse().unwrap(), 8080))
        );
        let connected = "   1: 0100007F:A2C4 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 1235 1 0 20 4 30 10 -1";
        assert_eq!(listening_entry(connected), None, "not listening");
        let v6 = "   0: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 99 1 0 100 0 0 10 0";
        assert_eq!(listening_entry(v6), Some(("::1".parse().unwrap(), 80)));
        let mapped = "   0: 0000000000000000FFFF00000100007F:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 99 1 0 100 0 0 10 0";
        assert_eq!(
            listening_entry(mapped),
            Some(("127.0.0.1".parse().unwrap(), 80))
        );
        assert_eq!(listening_entry("garbage"), None);
    }

    #[test]
    fn a_privileged_port_denied_gets_a_hint() {
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let at = |s: &str| {
            s.parse::<std::net::SocketAddr>()
                .unwrap_or_else(|e| panic!("{e}"))
        };
        assert!(bind_hint(&denied, at("0.0.0.0:443")).contains("CAP_NET_BIND_SERVICE"));
        assert_eq!(bind_hint(&denied, at("0.0.0.0:8443")), "");
        let in_use = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        assert_eq!(bind_hint(&in_use, at("0.0.0.0:443")), "");
    }

    fn cfg(metrics: &str) -> Config {
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n\n[[services]]\nname = \"s\"\nurl = \"http://127.0.0.1:9\"\n\n[[routes]]\nname = \"r\"\nservice = \"s\"\npaths = [\"/\"]\n\n[metrics]\n{metrics}"
        );
        config::load_str(&text, "t.toml").unwrap_or_else(|e| panic!("{e:?}"))
    }

    #[test]
    fn consumer_labels_turned_on_or_resized_by_a_reload_need_a_restart() {
        const KEY: &str = "metrics.per_consumer_labels/max_consumer_labels";
        let off = Running::of(&cfg(""));
        let on = "per_consumer_labels = true\nmax_consumer_labels = 5\n";
        assert_eq!(off.needs_restart(&cfg(on)), [KEY], "turned on");
        let running = Running::of(&cfg(on));
        assert!(running.needs_restart(&cfg(on)).is_empty(), "unchanged");
        assert!(
            running.needs_restart(&cfg("")).is_empty(),
            "turning off applies live"
        );
        let resized = "per_consumer_labels = true\nmax_consumer_labels = 9\n";
        assert_eq!(running.needs_restart(&cfg(resized)), [KEY], "resized");
    }

    /// A listener whose kind changed (here to a redirect) needs a restart like a moved one: each
    /// worker's listeners are fixed at start. Before, only addresses were compared, so the port
    /// went on serving plain HTTP and the reload said nothing (found by a review).
    #[test]
    fn a_listener_kind_change_needs_a_restart() {
        let running = Running::of(&cfg(""));
        let redirect = cfg("").clone();
        let mut redirect = redirect;
        for l in &mut redirect.server.listeners {
            l.kind = crate::config::model::ListenKind::RedirectHttps {
                status: 308,
                https_port: 443,
            };
        }
        assert_eq!(running.needs_restart(&redirect), ["listen"]);
        assert!(running.needs_restart(&cfg("")).is_empty());
    }
}
