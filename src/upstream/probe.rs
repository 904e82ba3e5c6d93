//! Active health checks: one prober thread for the process probes every target of every upstream
//! with `[upstreams.health.active]`, with blocking std sockets and timeouts, never on a worker.
//!
//! A probe is `GET <path> HTTP/1.1` with `Host` and `Connection: close`; it passes when the status
//! line arrives within `timeout` (connect included) with a status in `healthy_statuses`. Targets of
//! TLS upstreams are probed over TLS, as requests reach them: the same client config (roots,
//! `ca_file`), the same SNI and verified name, so a certificate that expired or no longer names the
//! target fails the check too.
//!
//! Invariants:
//! - every target starts healthy (a reload or a restart never holds back traffic waiting for a first
//!   probe); `unhealthy_threshold` failing probes in a row take it out, `healthy_threshold` passing
//!   ones bring it back;
//! - only transitions travel: `(target identity, healthy)` over one crossbeam channel per worker,
//!   applied in the worker's control tick (`HealthTable::set_active`), so the request path reads a
//!   plain per-worker flag and never a lock;
//! - checks are keyed by target identity; a reload keeps the state of targets that stay, starts new
//!   ones healthy, and for a removed target that was unhealthy sends `healthy` first, so no worker
//!   keeps a stale verdict for an identity that may come back later;
//! - probes run on a small pool of threads (`PROBE_THREADS`), fed by the scheduler: a target that
//!   hangs until its `timeout` holds one pool thread, not the others' schedule. A target's next
//!   probe is due `interval` after its previous one ended, and it never has two in flight.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use rustls::pki_types::ServerName;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::health::TargetKey;
use crate::config::model::{ActiveDef, Config};

/// What a worker learns about a target from outside: applied in its control tick.
#[derive(Debug, Clone)]
pub enum HealthEvent {
    /// An active-check transition, from the prober to every worker.
    Active { key: TargetKey, healthy: bool },
    /// Another worker's passive breaker opened for the target until `until`: the other workers
    /// skip it too, instead of each paying `max_fails` failed requests of its own.
    Ejected { key: TargetKey, until: Instant },
}

/// How long the prober sleeps when nothing is due (it wakes at once for a new config).
const IDLE_WAIT: Duration = Duration::from_secs(3600);
/// Probes in flight at once, at most (threads are made as checks need them, one per check up to
/// this). A name with many addresses is many checks: with 8, nine hanging pods held every thread
/// and delayed the healthy targets' probes by seconds.
const PROBE_THREADS: usize = 32;
/// Status lines longer than this are a failed probe.
const MAX_STATUS_LINE: usize = 1024;

/// The running prober; dropping it (with every clone of its sender) ends the thread.
pub struct Prober {
    configs: Sender<Arc<Config>>,
    _thread: Option<JoinHandle<()>>,
}

impl Prober {
    /// Starts the thread with `config`'s checks; transitions go to `workers`.
    pub fn start(
        config: Arc<Config>,
        workers: Vec<Sender<HealthEvent>>,
    ) -> std::io::Result<Prober> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let _ = tx.send(config);
        let thread = std::thread::Builder::new()
            .name("ringgate-prober".to_owned())
            .spawn(move || run(rx, workers))?;
        Ok(Prober {
            configs: tx,
            _thread: Some(thread),
        })
    }

    /// A reloaded config: targets added, removed or re-configured take effect at once.
    pub fn update(&self, config: Arc<Config>) {
        let _ = self.configs.send(config);
    }
}

/// One target's check.
struct Check {
    def: ActiveDef,
    addr: SocketAddr,
    host: String,
    /// For TLS upstreams: the client config and the name sent and verified (as for requests).
    tls: Option<TlsProbe>,
    healthy: bool,
    /// Consecutive probes against the current verdict.
    streak: u32,
    next: Instant,
    /// The probe of it on a pool thread, by job number: a verdict of any other job (one sent
    /// before a reload changed its settings, or for a target removed and added back) is stale.
    in_flight: Option<u64>,
}

/// One probe to run on a pool thread: what it needs, copied out of its `Check`.
struct Job {
    key: TargetKey,
    seq: u64,
    addr: SocketAddr,
    host: String,
    path: String,
    timeout: Duration,
    tls: Option<TlsProbe>,
}

/// The client config and the name to send and verify (`None` would be a config bug: the probe
/// then fails saying so, rather than probing a TLS target in plain text).
type TlsProbe = (Arc<rustls::ClientConfig>, Option<ServerName<'static>>);

impl Job {
    fn of(key: &TargetKey, seq: u64, c: &Check) -> Job {
        Job {
            key: key.clone(),
            seq,
            addr: c.addr,
            host: c.host.clone(),
            path: c.def.path.clone(),
            timeout: c.def.timeout,
            tls: c.tls.clone(),
        }
    }
}

type Verdict = Result<u16, String>;

/// Runs probes until the scheduler goes away.
fn probe_thread(jobs: Receiver<Job>, verdicts: Sender<(TargetKey, u64, Verdict)>) {
    while let Ok(job) = jobs.recv() {
        let v = probe(&job);
        if verdicts.send((job.key, job.seq, v)).is_err() {
            return;
        }
    }
}

fn run(configs: Receiver<Arc<Config>>, workers: Vec<Sender<HealthEvent>>) {
    let mut checks: HashMap<TargetKey, Check> = HashMap::new();
    let (job_tx, job_rx) = crossbeam_channel::unbounded::<Job>();
    let (verdict_tx, verdict_rx) = crossbeam_channel::unbounded::<(TargetKey, u64, Verdict)>();
    let mut threads = 0;
    let mut seq: u64 = 0;
    // After a failed spawn (EAGAIN), the next try waits a minute (and logs again only then).
    let mut spawn_again = Instant::now();
    loop {
        // More probe threads as checks need them (never more than PROBE_THREADS).
        while threads < checks.len().min(PROBE_THREADS) && Instant::now() >= spawn_again {
            let (jobs, verdicts) = (job_rx.clone(), verdict_tx.clone());
            let spawned = std::thread::Builder::new()
                .name("ringgate-probe".to_owned())
                .spawn(move || probe_thread(jobs, verdicts));
            if let Err(e) = spawned {
                crate::error!("health probe thread spawn failed threads={threads} error=\"{e}\"");
                spawn_again = Instant::now() + Duration::from_secs(60);
                break;
            }
            threads += 1;
        }
        if threads == 0 && !checks.is_empty() {
            // No thread to run them on: probe here, one after another, rather than never.
            for (key, check) in checks.iter_mut() {
                if check.next <= Instant::now() {
                    let v = probe(&Job::of(key, 0, check));
                    record(key, check, &v, &workers);
                }
            }
        }
        let now = Instant::now();
        for (key, check) in checks.iter_mut() {
            if check.in_flight.is_none() && check.next <= now && threads > 0 {
                seq += 1;
                check.in_flight = Some(seq);
                let _ = job_tx.send(Job::of(key, seq, check));
            }
        }
        let wait = checks
            .values()
            .filter(|c| c.in_flight.is_none())
            .map(|c| c.next.saturating_duration_since(now))
            .min()
            .unwrap_or(IDLE_WAIT);
        crossbeam_channel::select! {
            recv(configs) -> cfg => match cfg {
                Ok(cfg) => {
                    // Only the newest of several queued configs matters.
                    let cfg = configs.try_iter().last().unwrap_or(cfg);
                    apply(&mut checks, &cfg, &workers);
                }
                Err(_) => return,
            },
            recv(verdict_rx) -> v => {
                if let Ok((key, job, v)) = v {
                    // Stale (a target a reload removed or re-configured meanwhile): not recorded.
                    if let Some(check) = checks.get_mut(&key).filter(|c| c.in_flight == Some(job)) {
                        check.in_flight = None;
                        record(&key, check, &v, &workers);
                    }
                }
            },
            default(wait) => {}
        }
    }
}

/// A probe of `check` ended with `v`: schedule the next, and send a transition if this made one.
fn record(key: &TargetKey, check: &mut Check, v: &Verdict, workers: &[Sender<HealthEvent>]) {
    check.next = Instant::now() + check.def.interval;
    if let Some(healthy) = judge(check, v) {
        log_transition(key, healthy, v);
        send(workers, key, healthy);
    }
}

/// Replaces the set of checks with `cfg`'s, keeping the state of targets that stay.
fn apply(checks: &mut HashMap<TargetKey, Check>, cfg: &Config, workers: &[Sender<HealthEvent>]) {
    let now = Instant::now();
    let mut next: HashMap<TargetKey, Check> = HashMap::new();
    for u in &cfg.upstreams {
        let Some(def) = &u.health.active else {
            continue;
        };
        for (i, t) in u.targets.iter().enumerate() {
            let key: TargetKey = (u.name.clone(), t.name.clone(), t.addr);
            let tls = u
                .tls
                .as_ref()
                .map(|tls| (tls.config.clone(), tls.names.get(i).cloned()));
            let host = def
                .host
                .clone()
                .or_else(|| u.host_header.clone())
                .unwrap_or_else(|| t.name.clone());
            let check = match checks.remove(&key) {
                Some(mut kept) => {
                    if kept.def != *def {
                        // New settings: probe soon (a probe in flight has the old ones: its
                        // verdict will be ignored), keep the verdict.
                        kept.next = now;
                        kept.streak = 0;
                        kept.in_flight = None;
                    }
                    Check {
                        def: def.clone(),
                        host,
                        tls,
                        ..kept
                    }
                }
                None => Check {
                    def: def.clone(),
                    addr: t.addr,
                    host,
                    tls,
                    healthy: true,
                    streak: 0,
                    next: now,
                    in_flight: None,
                },
            };
            next.insert(key, check);
        }
    }
    for (key, gone) in checks.drain() {
        if !gone.healthy {
            send(workers, &key, true);
        }
    }
    *checks = next;
}

/// Counts `verdict` into the streak; returns the new health on a transition.
fn judge(check: &mut Check, verdict: &Result<u16, String>) -> Option<bool> {
    let passed = verdict
        .as_ref()
        .is_ok_and(|&s| check.def.healthy_statuses.contains(s));
    if passed == check.healthy {
        check.streak = 0;
        return None;
    }
    check.streak += 1;
    let needed = if passed {
        check.def.healthy_threshold
    } else {
        check.def.unhealthy_threshold
    };
    if check.streak < needed {
        return None;
    }
    check.healthy = passed;
    check.streak = 0;
    Some(passed)
}

fn send(workers: &[Sender<HealthEvent>], key: &TargetKey, healthy: bool) {
    for w in workers {
        // A worker that exited (drain) no longer needs it.
        let _ = w.send(HealthEvent::Active {
            key: key.clone(),
            healthy,
        });
    }
}

fn log_transition(key: &TargetKey, healthy: bool, verdict: &Result<u16, String>) {
    let why = match verdict {
        Ok(s) => format!("status {s}"),
        Err(e) => e.clone(),
    };
    if healthy {
        crate::warn!(
            "upstream target healthy (active check) upstream={} target={} address={} result=\"{}\"",
            key.0,
            key.1,
            key.2,
            why
        );
    } else {
        crate::warn!(
            "upstream target unhealthy (active check) upstream={} target={} address={} result=\"{}\"",
            key.0,
            key.1,
            key.2,
            why
        );
    }
}

/// One probe: the response status, or why it failed.
fn probe(check: &Job) -> Result<u16, String> {
    let deadline = Instant::now() + check.timeout;
    let tcp = TcpStream::connect_timeout(&check.addr, check.timeout)
        .map_err(|e| format!("connect: {e}"))?;
    let mut sock = Deadlined {
        tcp: &tcp,
        deadline,
    };
    match &check.tls {
        None => exchange(check, sock),
        Some((config, Some(name))) => {
            let mut conn = rustls::ClientConnection::new(config.clone(), name.clone())
                .map_err(|e| format!("tls: {e}"))?;
            exchange(check, rustls::Stream::new(&mut conn, &mut sock))
        }
        Some((_, None)) => Err("tls: no server name for this target".to_owned()),
    }
}

/// The probe's socket, every read and write bounded by what is left until `deadline`: the timeout
/// is set anew before each syscall, so a peer trickling bytes (a TLS handshake a byte at a time)
/// cannot stretch the probe past its `timeout`.
struct Deadlined<'a> {
    tcp: &'a TcpStream,
    deadline: Instant,
}

impl Deadlined<'_> {
    fn left(&self) -> std::io::Result<Duration> {
        let d = self.deadline.saturating_duration_since(Instant::now());
        if d.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "timed out",
            ));
        }
        Ok(d)
    }
}

impl Read for Deadlined<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.tcp.set_read_timeout(Some(self.left()?))?;
        (&mut &*self.tcp).read(buf)
    }
}

impl Write for Deadlined<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tcp.set_write_timeout(Some(self.left()?))?;
        (&mut &*self.tcp).write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends the probe request over `stream` (plain or TLS; the handshake happens in the first write)
/// and reads the status line; `stream`'s socket enforces the deadline.
fn exchange(check: &Job, mut stream: impl Read + Write) -> Result<u16, String> {
    let timed_out = |e: &std::io::Error| {
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ringgate-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        check.path, check.host
    );
    stream.write_all(request.as_bytes()).map_err(|e| {
        if timed_out(&e) {
            "timed out".to_owned()
        } else {
            format!("send: {e}")
        }
    })?;
    let mut buf = [0u8; MAX_STATUS_LINE];
    let mut have = 0;
    loop {
        if let Some(end) = buf[..have].windows(2).position(|w| w == b"\r\n") {
            return status_of(&buf[..end]).ok_or_else(|| "malformed status line".to_owned());
        }
        if have == buf.len() {
            return Err("status line too long".to_owned());
        }
        match stream.read(&mut buf[have..]) {
            Ok(0) => return Err("closed before a status line".to_owned()),
            Ok(n) => have += n,
            Err(e) if timed_out(&e) => return Err("timed out".to_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

/// `HTTP/1.x NNN reason` -> NNN.
fn status_of(line: &[u8]) -> Option<u16> {
    let rest = line
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| line.strip_prefix(b"HTTP/1.0 "))?;
    let digits = rest.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) || rest.get(3).is_some_and(|&b| b != b' ') {
        return None;
    }
    digits
        .iter()
        .try_fold(0u16, |n, &d| Some(n * 10 + u16::from(d - b'0')))
        .filter(|s| (100..=599).contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::StatusSet;

    #[test]
    fn status_lines() {
        assert_eq!(status_of(b"HTTP/1.1 200 OK"), Some(200));
        assert_eq!(status_of(b"HTTP/1.0 503"), Some(503));
        assert_eq!(status_of(b"HTTP/1.1 20"), None);
        assert_eq!(status_of(b"HTTP/1.1 2000"), None);
        assert_eq!(status_of(b"HTTP/2 200"), None);
        assert_eq!(status_of(b"HTTP/1.1 099 x"), None);
    }

    #[test]
    fn thresholds_need_streaks() {
        let mut c = Check {
            def: ActiveDef {
                path: "/".to_owned(),
                interval: Duration::from_secs(1),
                timeout: Duration::from_secs(1),
                healthy_threshold: 2,
                unhealthy_threshold: 3,
                healthy_statuses: StatusSet::range(200, 399),
                host: None,
            },
            addr: "127.0.0.1:1".parse().unwrap_or_else(|e| panic!("{e}")),
            host: String::new(),
            tls: None,
            healthy: true,
            streak: 0,
            next: Instant::now(),
            in_flight: None,
        };
        let bad: Result<u16, String> = Ok(500);
        assert_eq!(judge(&mut c, &bad), None);
        assert_eq!(judge(&mut c, &Ok(204)), None, "a pass breaks the streak");
        assert_eq!(judge(&mut c, &bad), None);
        assert_eq!(judge(&mut c, &Err("x".to_owned())), None);
        assert_eq!(judge(&mut c, &bad), Some(false));
        assert_eq!(judge(&mut c, &Ok(200)), None);
        assert_eq!(judge(&mut c, &Ok(301)), Some(true));
    }
}
