//! Process lifecycle on the main thread: load config, bind listeners, spawn pinned workers, wait for
//! signals, drain on SIGTERM/SIGINT.
//!
//! The main thread does everything that may block (file reads, DNS during config load, binding) so
//! workers never do. Listeners are bound here, one SO_REUSEPORT socket per worker per address, and
//! handed over; a `listen` port of 0 is resolved once so every worker shares the same port.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config;
use crate::config::model::ListenKind;
use crate::router::Router;
use crate::tls::TlsContext;
use crate::worker::{self, Control, WorkerSpec};
use crate::{error, info, warn};

/// Runs the gateway until a termination signal; returns the process exit code.
pub fn run(path: &Path, workers_override: Option<usize>) -> i32 {
    install_panic_hook();
    let cfg = match config::load(path) {
        Ok(cfg) => Arc::new(cfg),
        Err(errors) => {
            for e in &errors {
                error!("config error: {e}");
            }
            return 1;
        }
    };
    let tls = match TlsContext::build(&cfg) {
        Ok(t) => t,
        Err(errors) => {
            for e in &errors {
                error!("config error: {e}");
            }
            return 1;
        }
    };
    raise_nofile_limit();
    let cpus = worker::allowed_cpus();
    let workers = workers_override
        .or(cfg.server.workers)
        .unwrap_or(cpus.len())
        .max(1);
    let use_uring =
        std::env::var_os("RINGGATE_FORCE_EPOLL").is_none() && monoio::utils::detect_uring();
    if !use_uring {
        warn!("io_uring unavailable or disabled, falling back to the epoll driver");
    }
    let router = Arc::new(Router::new(&cfg.routes));

    let mut listeners: Vec<Vec<(std::net::TcpListener, ListenKind)>> =
        (0..workers).map(|_| Vec::new()).collect();
    for l in &cfg.server.listeners {
        match bind_all(l.addr, l.kind, &mut listeners) {
            Ok(actual) => info!("listening addr={actual} kind={}", kind_name(l.kind)),
            Err(e) => {
                error!("bind failed addr={} error=\"{e}\"", l.addr);
                return 1;
            }
        }
    }

    let control = Arc::new(Control::default());
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<usize>();
    for (index, listeners) in listeners.into_iter().enumerate() {
        let spec = WorkerSpec {
            index,
            cpu: if cpus.is_empty() {
                None
            } else {
                cpus.get(index % cpus.len()).copied()
            },
            listeners,
            config: cfg.clone(),
            tls: tls.clone(),
            router: router.clone(),
            control: control.clone(),
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
    info!(
        "ready workers={workers} driver={}",
        if use_uring { "io_uring" } else { "epoll" }
    );

    wait_for_termination();
    info!(
        "draining timeout={}ms",
        cfg.server.drain_timeout.as_millis()
    );
    control.drain.store(true, Ordering::Relaxed);
    // Workers stop by themselves at the drain deadline; the margin covers their last tick.
    let deadline = Instant::now() + cfg.server.drain_timeout + Duration::from_secs(2);
    let mut stopped = 0;
    while stopped < workers {
        let left = deadline.saturating_duration_since(Instant::now());
        match done_rx.recv_timeout(left) {
            Ok(_) => stopped += 1,
            Err(_) => {
                warn!("drain deadline passed workers_left={}", workers - stopped);
                break;
            }
        }
    }
    info!("stopped");
    0
}

/// Binds `addr` once per worker; returns the address actually bound (port 0 resolved).
fn bind_all(
    addr: std::net::SocketAddr,
    kind: ListenKind,
    listeners: &mut [Vec<(std::net::TcpListener, ListenKind)>],
) -> std::io::Result<std::net::SocketAddr> {
    let mut actual = addr;
    for (i, slot) in listeners.iter_mut().enumerate() {
        let l = worker::bind_reuseport(actual)?;
        if i == 0 {
            actual = l.local_addr()?;
        }
        slot.push((l, kind));
    }
    Ok(actual)
}

/// For the `listening` log line.
fn kind_name(kind: ListenKind) -> &'static str {
    match kind {
        ListenKind::Http => "http",
        ListenKind::Https => "https",
        ListenKind::RedirectHttps { .. } => "redirect-https",
    }
}

/// Blocks until SIGTERM or SIGINT. SIGHUP is acknowledged (reload arrives with the admin work).
fn wait_for_termination() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            error!("signal setup failed error=\"{e}\"");
            return;
        }
    };
    for sig in signals.forever() {
        match sig {
            SIGHUP => warn!("SIGHUP received: reload is not supported yet, ignoring"),
            _ => {
                info!(
                    "signal received signal={}",
                    if sig == SIGTERM { "SIGTERM" } else { "SIGINT" }
                );
                return;
            }
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
        std::process::abort();
    }));
}
