//! The admin API: a small blocking HTTP/1.1 server on its own listener and threads, off the request
//! path. Loopback by default; with `[admin] token` every request needs `Authorization: Bearer <token>`
//! (compared in constant time). The token is in `AdminSettings`, which a reload updates while the
//! listener keeps running; the listen address is fixed until a restart.
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /health` | 200 when every worker flushed its metrics within 3 flush intervals, else 503; 503 `draining` from the start of a drain |
//! | `GET /status` | JSON: config generation, loaded-at, workers, routes, upstream targets and pools |
//! | `GET /metrics` | Prometheus text |
//! | `POST /reload` | runs the reload callback: 200 `{"generation":N,"restart_required":[...]}`, 400 `{"message","errors"}`, or 503 `{"message"}` when not (or not fully) applied |
//! | `GET /histograms` | p50/p90/p99/p99.9/max per route (µs) |
//! | `GET /histograms?route=NAME&kind=added\|total` | the HDR percentile report of one route |
//!
//! `HEAD` works wherever `GET` does (same head, no body; RFC 9110 §9.3.2).
//!
//! Invariants: every request is bounded (head size, body size, head and request deadlines, write
//! timeout), at most `MAX_CONNS` are served at once and `MAX_CONNS_PER_PEER` per client address (more
//! get a 503), every connection is closed after one response, a request is acted on only once it
//! arrived whole, and nothing a client sends can panic the server.

mod http;

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::config::model::AdminDef;
use crate::metrics::aggregate::HistKind;
use crate::metrics::hub::JSON;
use crate::metrics::{json, MetricsHandle, Query, Reply};

/// What `POST /reload` runs: load and apply the config file; the new generation once every worker
/// serves it, or why not. Called on admin connection threads, possibly several at once (the
/// reloader queues them and counts the outcome in the reload metrics).
pub type ReloadFn = Box<dyn Fn() -> Result<Reloaded, ReloadFailure> + Send + Sync>;

/// A reload every worker serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    pub generation: u64,
    /// Settings of the serving file that only a restart applies (`listen`, `workers`, …), as
    /// config keys; empty when the file is all in effect.
    pub restart_required: Vec<&'static str>,
}

/// Why a reload did not (fully) happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadFailure {
    /// The config failed to load or validate (one entry per error; an entry may span lines); the
    /// previous generation keeps serving. Answered 400.
    Rejected(Vec<String>),
    /// Nothing was loaded (the process is draining), or `generation` was installed but not every
    /// worker confirmed it. Answered 503: the caller cannot assume the new config is serving.
    Unavailable {
        message: String,
        generation: Option<u64>,
    },
}

// Connection limits. Admin clients are a few machines: a Prometheus server or two scraping every few
// seconds, load-balancer health probes (one at a time per balancer node, each node its own address),
// an operator's curl. None holds more than a couple of connections at once, and every request is one
// packet-sized head answered in milliseconds. So: 8 per address is several times what an honest
// client needs (a few scrapers behind one NAT or on the same host still fit), and keeps one client
// (which, before authenticating, may be anyone who can reach the port) from taking every slot; 64 in
// all (one thread each, off the request path) leaves room for 8 such clients at their cap. Only
// distinct addresses get distinct shares: IPv6 peers are grouped by /64 (one host usually has a whole
// /64 to pick from), and local clients all share 127.0.0.1 unless they bind another 127/8 address.
/// Connections served at once, in all.
const MAX_CONNS: usize = 64;
/// Connections served at once per client address (`peer_key`).
const MAX_CONNS_PER_PEER: usize = 8;
/// The request head must arrive within this: honest clients send it in one packet, so this only
/// bounds how long a silent or trickling connection holds its slot.
const HEAD_DEADLINE: Duration = Duration::from_secs(2);
/// Head and body (`POST /reload` takes none; at most 64 KiB are read and ignored) within this.
const READ_DEADLINE: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the metrics thread.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// The `[admin]` settings a reload changes on the running listener (the token). Read by every
/// connection thread once per request, written by the reloader; the lock is never held across I/O.
pub struct AdminSettings {
    /// The address the listener binds; a reload cannot move it (that needs a restart).
    listen: SocketAddr,
    token: RwLock<Option<String>>,
}

impl AdminSettings {
    pub fn new(def: &AdminDef) -> Arc<AdminSettings> {
        Arc::new(AdminSettings {
            listen: def.listen,
            token: RwLock::new(def.token.clone()),
        })
    }

    /// The configured listen address (port 0 not resolved; see `AdminServer::local_addr`).
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// Takes a reloaded `[admin]`'s token: requests from now on are checked against it (one already
    /// past the check finishes). `def.listen` is ignored: the listener stays where it is.
    ///
    /// A token is never dropped or shortened below `MIN_PUBLIC_TOKEN` while the running listener
    /// is reachable from elsewhere: validation allows either only on loopback, but it judged the
    /// *new* `listen`, which takes effect only after a restart. Then the old token stays required,
    /// with a warning.
    pub fn apply(&self, def: &AdminDef) {
        let mut token = self.token.write().unwrap_or_else(|p| p.into_inner());
        if *token == def.token {
            return;
        }
        let weak = def
            .token
            .as_ref()
            .is_none_or(|t| t.len() < crate::config::MIN_PUBLIC_TOKEN);
        if weak && !self.listen.ip().is_loopback() {
            crate::warn!(
                "reload: admin.token kept: the running admin listener addr={} is not loopback and \
                 keeps requiring a token of at least {} characters until a restart",
                self.listen,
                crate::config::MIN_PUBLIC_TOKEN
            );
            return;
        }
        *token = def.token.clone();
        // Never the token itself.
        crate::info!(
            "admin token changed auth={}",
            if token.is_some() { "bearer" } else { "none" }
        );
    }
}

struct Shared {
    settings: Arc<AdminSettings>,
    metrics: MetricsHandle,
    reload: ReloadFn,
    conns: Mutex<Conns>,
    stop: AtomicBool,
}

/// Connections being served: in all and per `peer_key`.
#[derive(Default)]
struct Conns {
    total: usize,
    per_peer: HashMap<IpAddr, usize>,
}

/// One admitted connection's slot, given back on drop (also when its thread never started).
struct Slot {
    shared: Arc<Shared>,
    peer: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = lock(&self.shared.conns);
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_peer.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per_peer.remove(&self.peer);
            }
        }
    }
}

/// A slot for a connection from `peer`, or the 503 message when the caps are reached.
fn admit(shared: &Arc<Shared>, peer: IpAddr) -> Result<Slot, &'static str> {
    let key = peer_key(peer);
    let mut c = lock(&shared.conns);
    if c.total >= MAX_CONNS {
        return Err("too many admin connections");
    }
    let n = c.per_peer.entry(key).or_insert(0);
    if *n >= MAX_CONNS_PER_PEER {
        return Err("too many admin connections from this address");
    }
    *n += 1;
    c.total += 1;
    Ok(Slot {
        shared: shared.clone(),
        peer: key,
    })
}

/// Whose share a connection counts against: the IPv4 address (also when IPv4-mapped), or the IPv6
/// /64 prefix.
fn peer_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The running admin listener.
pub struct AdminServer {
    addr: SocketAddr,
    listener_fd: std::os::fd::RawFd,
    shared: Arc<Shared>,
    join: Option<JoinHandle<()>>,
}

impl AdminServer {
    /// Serves on a new thread, on `listener` (bound already, or handed over by a binary upgrade)
    /// or else on a new listener bound to `settings.listen()`; `settings` stays shared with
    /// whoever applies reloads.
    pub fn start(
        settings: Arc<AdminSettings>,
        metrics: MetricsHandle,
        reload: ReloadFn,
        listener: Option<TcpListener>,
    ) -> std::io::Result<AdminServer> {
        let listener = match listener {
            Some(l) => l,
            None => TcpListener::bind(settings.listen)?,
        };
        // Polled, not blocked on: `stop` must not depend on waking the accept with a connection of
        // its own, which a process sharing the socket (a binary upgrade) could take instead.
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            settings,
            metrics,
            reload,
            conns: Mutex::new(Conns::default()),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let listener_fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
        let join = std::thread::Builder::new()
            .name("ringgate-admin".to_owned())
            .spawn(move || accept_loop(listener, s))?;
        crate::info!("admin listening addr={addr}");
        Ok(AdminServer {
            addr,
            listener_fd,
            shared,
            join: Some(join),
        })
    }

    /// The bound address (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The listening socket (handed to the new process in a binary upgrade).
    pub fn listener_fd(&self) -> std::os::fd::RawFd {
        self.listener_fd
    }

    /// Stops accepting (in-flight admin requests finish on their own threads, bounded by timeouts);
    /// returns within one `ACCEPT_POLL`.
    pub fn stop(mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

/// How often the accept loop looks at the stop flag while nothing arrives.
const ACCEPT_POLL: Duration = Duration::from_millis(100);

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    use std::os::fd::AsRawFd;
    while !shared.stop.load(Ordering::SeqCst) {
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the listener this thread owns.
        if unsafe { libc::poll(&mut pfd, 1, ACCEPT_POLL.as_millis() as libc::c_int) } <= 0 {
            continue;
        }
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            // Another process sharing the socket (a binary upgrade) took it.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                crate::debug!("admin accept failed error=\"{e}\"");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        // Accepted: answered even if `stop` came meanwhile (closing it unanswered would lose it).
        // Accepted sockets do not inherit O_NONBLOCK on Linux; said anyway, as the reads rely on it.
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
        let slot = match admit(&shared, peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                // A few dozen bytes into an empty send buffer: does not block this thread.
                let _ = respond(stream, &error_reply(503, why), &[], false);
                continue;
            }
        };
        // On a spawn failure the closure, and with it the slot, is dropped.
        let _ = std::thread::Builder::new()
            .name("ringgate-admin-conn".to_owned())
            .spawn(move || serve(stream, &slot.shared));
    }
}

fn serve(mut stream: TcpStream, shared: &Shared) {
    let req = match http::read_request(&mut stream, HEAD_DEADLINE, READ_DEADLINE) {
        Ok(r) => r,
        Err(http::ReadError::Closed) => return,
        Err(http::ReadError::Status(status, why)) => {
            let _ = respond(stream, &error_reply(status, why), &[], false);
            return;
        }
    };
    // A HEAD answer is the GET answer's head (errors included), without the body.
    let head_only = req.method == "HEAD";
    // `/health` answers without the token: load balancers' probes (AWS ALB and NLB, GCP) send no
    // headers, and a token-gated health check is unusable exactly where the admin listener is
    // public. It tells only `ok`/`draining`/`unavailable` and worker counts (Kong's
    // `status_listen` and Traefik's ping are open too).
    let open = req.path == "/health" && matches!(req.method.as_str(), "GET" | "HEAD");
    let allowed = open || {
        let token = shared
            .settings
            .token
            .read()
            .unwrap_or_else(|p| p.into_inner());
        match token.as_deref() {
            Some(token) => authorized(req.authorization.as_deref(), token),
            None => true,
        }
    };
    if !allowed {
        let _ = respond(
            stream,
            &error_reply(401, "missing or wrong bearer token"),
            &[("WWW-Authenticate", "Bearer")],
            head_only,
        );
        return;
    }
    let (reply, extra) = route(&req, shared);
    let _ = respond(stream, &reply, extra, head_only);
}

/// Dispatches one request; the extra headers to send.
fn route(req: &http::Request, shared: &Shared) -> (Reply, &'static [(&'static str, &'static str)]) {
    const GET: &[(&str, &str)] = &[("Allow", "GET, HEAD")];
    const POST: &[(&str, &str)] = &[("Allow", "POST")];
    let get = matches!(req.method.as_str(), "GET" | "HEAD");
    let query = |q: Query| {
        shared
            .metrics
            .query(q, QUERY_TIMEOUT)
            .unwrap_or_else(|| error_reply(503, "metrics are not available"))
    };
    match (req.path.as_str(), get) {
        ("/health", true) => (query(Query::Health), &[]),
        ("/status", true) => (query(Query::Status), &[]),
        ("/metrics", true) => (query(Query::Metrics), &[]),
        ("/histograms", true) => match histogram_query(&req.query) {
            Ok(q) => (query(q), &[]),
            Err(why) => (error_reply(400, &why), &[]),
        },
        ("/reload", _) if req.method == "POST" => (reload(shared), &[]),
        ("/reload", _) => (error_reply(405, "use POST"), POST),
        ("/health" | "/status" | "/metrics" | "/histograms", false) => {
            (error_reply(405, "use GET"), GET)
        }
        _ => (error_reply(404, "not found"), &[]),
    }
}

fn histogram_query(query: &str) -> Result<Query, String> {
    let mut route = None;
    let mut kind = HistKind::Total;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = http::percent_decode(v).ok_or("invalid percent-encoding in the query")?;
        match k {
            "route" => route = Some(v),
            "kind" => {
                kind = HistKind::parse(&v)
                    .ok_or_else(|| format!("kind must be \"added\" or \"total\", got {v:?}"))?
            }
            _ => {
                return Err(format!(
                    "unknown query parameter {k:?} (use route and kind)"
                ))
            }
        }
    }
    Ok(match route {
        Some(route) => Query::Histogram { route, kind },
        None if query.contains("kind=") => {
            return Err("kind needs route=NAME".to_owned());
        }
        None => Query::HistogramSummary,
    })
}

fn reload(shared: &Shared) -> Reply {
    // Not under a lock: the reloader queues requests itself (one run at a time, the newest file
    // wins, waiting bounded), so a slow load holds no admin thread past its wait.
    let result = (shared.reload)();
    match result {
        Ok(Reloaded {
            generation,
            restart_required,
        }) => {
            crate::info!("config reloaded via admin generation={generation}");
            let keys: Vec<String> = restart_required.iter().map(|k| json::string(k)).collect();
            Reply {
                status: 200,
                content_type: JSON,
                body: format!(
                    "{{\"generation\":{generation},\"restart_required\":[{}]}}\n",
                    keys.join(",")
                ),
            }
        }
        Err(ReloadFailure::Unavailable {
            message,
            generation,
        }) => {
            crate::warn!("config reload via admin not applied: {message}");
            let generation = generation
                .map(|g| format!(",\"generation\":{g}"))
                .unwrap_or_default();
            Reply {
                status: 503,
                content_type: JSON,
                body: format!("{{\"message\":{}{generation}}}\n", json::string(&message)),
            }
        }
        Err(ReloadFailure::Rejected(errors)) => {
            crate::warn!("config reload via admin failed");
            // One entry per error, as the reloader gave them: a message that spans lines (a TOML
            // parser's) stays one entry.
            let list: Vec<String> = errors.iter().map(|e| json::string(e)).collect();
            Reply {
                status: 400,
                content_type: JSON,
                body: format!(
                    "{{\"message\":\"reload failed; the previous config stays in use\",\"errors\":[{}]}}\n",
                    list.join(",")
                ),
            }
        }
    }
}

/// `Authorization: Bearer <token>` (scheme case-insensitive), token compared in constant time.
fn authorized(header: Option<&str>, token: &str) -> bool {
    let Some(h) = header else {
        return false;
    };
    let Some((scheme, given)) = h.trim().split_once(' ') else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer") && ct_eq(given.trim().as_bytes(), token.as_bytes())
}

/// Equality whose time depends only on `expected`'s length, not on where the inputs differ.
fn ct_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != expected.len());
    for (i, e) in expected.iter().enumerate() {
        diff |= given.get(i).copied().unwrap_or(0) ^ e;
    }
    std::hint::black_box(diff) == 0
}

fn error_reply(status: u16, message: &str) -> Reply {
    Reply {
        status,
        content_type: JSON,
        body: format!("{{\"message\":{}}}\n", json::string(message)),
    }
}

/// Writes the answer and closes; `head_only` (a HEAD request) leaves out the body but keeps its
/// Content-Length.
fn respond(
    mut stream: TcpStream,
    reply: &Reply,
    extra: &[(&str, &str)],
    head_only: bool,
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        reply.status,
        http::reason(reply.status),
        reply.content_type,
        reply.body.len()
    );
    for (k, v) in extra {
        head.push_str(k);
        head.push_str(": ");
        head.push_str(v);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if !head_only {
        stream.write_all(reply.body.as_bytes())?;
    }
    stream.flush()?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_compare() {
        assert!(ct_eq(b"secret", b"secret"));
        assert!(!ct_eq(b"secreT", b"secret"));
        assert!(!ct_eq(b"secret1", b"secret"));
        assert!(!ct_eq(b"", b"secret"));
        assert!(!ct_eq(b"sec", b"secret"));
        assert!(authorized(Some("Bearer secret"), "secret"));
        assert!(authorized(Some("bearer  secret "), "secret"));
        assert!(!authorized(Some("Basic secret"), "secret"));
        assert!(!authorized(Some("Bearer"), "secret"));
        assert!(!authorized(None, "secret"));
    }

    #[test]
    fn peers_share_by_address_and_ipv6_prefix() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(peer_key(ip("10.0.0.7")), ip("10.0.0.7"));
        assert_eq!(peer_key(ip("::ffff:10.0.0.7")), ip("10.0.0.7"));
        assert_eq!(peer_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            peer_key(ip("2001:db8:1:2:ffff:1:2:3")),
            peer_key(ip("2001:db8:1:2::9"))
        );
        assert_ne!(
            peer_key(ip("2001:db8:1:3::1")),
            peer_key(ip("2001:db8:1:2::1"))
        );
    }

    fn def(listen: &str, token: Option<&str>) -> AdminDef {
        AdminDef {
            listen: listen.parse().unwrap_or_else(|e| panic!("{listen}: {e}")),
            token: token.map(Into::into),
        }
    }

    fn token_of(s: &AdminSettings) -> Option<String> {
        s.token.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    #[test]
    fn reloaded_tokens_apply_but_never_open_a_public_listener() {
        let s = AdminSettings::new(&def("127.0.0.1:9901", Some("old")));
        s.apply(&def("127.0.0.1:9901", Some("new")));
        assert_eq!(token_of(&s).as_deref(), Some("new"));
        s.apply(&def("127.0.0.1:9901", None));
        assert_eq!(token_of(&s), None, "loopback may run without a token");
        s.apply(&def("127.0.0.1:9901", Some("again")));
        assert_eq!(token_of(&s).as_deref(), Some("again"));

        // The new config moves to loopback and drops the token, or shortens it; the running
        // listener is still public, so the old one stays.
        let old = "old-token-0123456789";
        let public = AdminSettings::new(&def("0.0.0.0:9901", Some(old)));
        public.apply(&def("127.0.0.1:9901", None));
        assert_eq!(token_of(&public).as_deref(), Some(old));
        public.apply(&def("127.0.0.1:9901", Some("abc")));
        assert_eq!(token_of(&public).as_deref(), Some(old));
        public.apply(&def("127.0.0.1:9901", Some("rotated-0123456789")));
        assert_eq!(token_of(&public).as_deref(), Some("rotated-0123456789"));
    }

    #[test]
    fn histogram_queries() {
        assert_eq!(histogram_query(""), Ok(Query::HistogramSummary));
        assert_eq!(
            histogram_query("route=r1&kind=added"),
            Ok(Query::Histogram {
                route: "r1".into(),
                kind: HistKind::Added
            })
        );
        assert_eq!(
            histogram_query("route=%28none%29"),
            Ok(Query::Histogram {
                route: "(none)".into(),
                kind: HistKind::Total
            })
        );
        assert!(histogram_query("route=r1&kind=p99").is_err());
        assert!(histogram_query("kind=added").is_err());
        assert!(histogram_query("route=%zz").is_err());
        assert!(histogram_query("x=1").is_err());
    }
}
