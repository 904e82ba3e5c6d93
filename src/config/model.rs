//! The compiled, validated runtime configuration: what `config::load` produces and every worker reads.
//!
//! Invariants (established by `config::load`, relied on everywhere else):
//! - every `RouteDef::service` and `ServiceDef::target` index is in bounds;
//! - every upstream has at least one target with weight >= 1;
//! - names are unique per entity kind; durations and sizes are non-zero where zero makes no sense;
//! - socket addresses are already resolved (no DNS on a worker's event loop).
//!
//! A `Config` is immutable once built and is shared between workers behind an `Arc`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::upstream::hashing::Rendezvous;

pub mod auth;
pub mod plugins;
pub use auth::*;
pub use plugins::*;

/// The whole compiled configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was loaded from (for messages and reload).
    pub source: PathBuf,
    pub server: ServerDef,
    pub upstreams: Vec<UpstreamDef>,
    pub services: Vec<ServiceDef>,
    pub routes: Vec<RouteDef>,
    /// `[[certificates]]`, already read and parsed (on the main thread, at load).
    pub certificates: Vec<CertificateDef>,
    /// `[[certificates]]` entries with `acme = true`: issued and renewed at run time (`crate::acme`).
    pub acme_certificates: Vec<AcmeCertDef>,
    /// `[acme]`; `None` = no ACME (then `acme_certificates` is empty).
    pub acme: Option<AcmeDef>,
    /// `[admin]`; `None` = no admin listener.
    pub admin: Option<AdminDef>,
    /// `[metrics]` (defaults when absent).
    pub metrics: MetricsDef,
    /// `[access_log]`; `None` = no access log.
    pub access_log: Option<AccessLogDef>,
    /// `[[plugins]]` in file order (see `crate::plugins` for how they form per-route chains).
    pub plugins: Vec<PluginDef>,
    /// `[[consumers]]` in file order, then consumers implied by htpasswd files.
    pub consumers: Vec<ConsumerDef>,
    pub credentials: Credentials,
}

/// `[server]`.
#[derive(Debug, Clone)]
pub struct ServerDef {
    /// Every address to listen on; each worker binds its own SO_REUSEPORT socket for each.
    pub listen: Vec<SocketAddr>,
    /// The same addresses, in the same order, with what each listener speaks.
    pub listeners: Vec<ListenDef>,
    /// `None` means "auto": one worker per available core.
    pub workers: Option<usize>,
    /// Request line + header section limit, in bytes (431 when exceeded; 414 when the target alone is).
    pub max_header_bytes: usize,
    /// Request-target limit in bytes (414).
    pub max_uri_bytes: usize,
    /// Maximum number of header fields (431).
    pub max_headers: usize,
    /// Server-wide request body limit (413); routes may override. 0 = unlimited.
    pub max_body_bytes: u64,
    pub timeouts: Timeouts,
    /// Upstream connection pool, per worker and per target.
    pub pool: PoolDef,
    /// How long SIGTERM waits for in-flight requests.
    pub drain_timeout: Duration,
    /// How often upstream targets given by host name are resolved again; `None` = only at load.
    pub dns_refresh: Option<Duration>,
    /// Peers whose `X-Forwarded-For` is believed when finding the client IP (see `auth::client_ip`).
    pub trusted_proxies: Vec<Cidr>,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Reading a client's request head, from its first byte (slowloris).
    pub client_header: Duration,
    /// Between two reads of a client's request body.
    pub client_body: Duration,
    /// Idle keep-alive: waiting for the first byte of the next request.
    pub keepalive: Duration,
    pub upstream_connect: Duration,
    /// Between two reads from the upstream (also: waiting for the response head).
    pub upstream_read: Duration,
    /// Between two writes to the upstream.
    pub upstream_write: Duration,
    /// How long failover may go on (services' `retry_timeout` default); `None` = no limit.
    pub upstream_retry: Option<Duration>,
    /// A TLS handshake must complete within this, from accept.
    pub tls_handshake: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct PoolDef {
    /// Idle connections kept per target per worker.
    pub max_idle: usize,
    pub idle_timeout: Duration,
}

/// `[admin]`: the admin API (health, status, metrics, reload, histograms).
#[derive(Debug, Clone)]
pub struct AdminDef {
    /// Loopback unless a `token` is set.
    pub listen: SocketAddr,
    /// When set, every admin request needs `Authorization: Bearer <token>`. Visible ASCII only.
    pub token: Option<String>,
}

/// `[metrics]`.
#[derive(Debug, Clone)]
pub struct MetricsDef {
    /// Per-request recording (counts, bytes, latency histograms, and the clock reads behind them).
    /// `false` leaves only connection and pool gauges and error counters; `/metrics` and `/histograms`
    /// then show no requests. For measuring what metrics cost.
    pub enabled: bool,
    /// How often each worker sends its counters to the aggregator (scrapes are at most this stale).
    pub flush_interval: Duration,
    /// Where the HDR latency reports are written at shutdown; `None` = not written.
    pub histogram_file: Option<PathBuf>,
    /// Opt-in `consumer` label (arrives with `[[consumers]]`).
    pub per_consumer_labels: bool,
    /// At most this many distinct consumer label values; the rest are counted as `(other)`.
    pub max_consumer_labels: usize,
}

impl Default for MetricsDef {
    fn default() -> MetricsDef {
        MetricsDef {
            enabled: true,
            flush_interval: Duration::from_secs(1),
            histogram_file: None,
            per_consumer_labels: false,
            max_consumer_labels: 100,
        }
    }
}

/// `[access_log]`: one JSON line per finished request (see `crate::access_log`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogDef {
    pub target: AccessLogTarget,
    /// A worker hands its buffer to the writer thread once it holds this many bytes.
    pub buffer_size: usize,
    /// ... or once its oldest line has waited this long (checked on the 50 ms control tick).
    pub flush_interval: Duration,
}

/// Where access log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    Stderr,
    /// A relative `path` in the file was joined to the config file's directory at load.
    File(PathBuf),
}

impl std::fmt::Display for AccessLogTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AccessLogTarget::Stdout => f.write_str("stdout"),
            AccessLogTarget::Stderr => f.write_str("stderr"),
            AccessLogTarget::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// `[[upstreams]]`: a named set of weighted targets.
#[derive(Debug, Clone)]
pub struct UpstreamDef {
    pub name: String,
    pub targets: Vec<TargetDef>,
    /// Host header sent upstream when `preserve_host` is false; `None` = the chosen target's `host[:port]`.
    pub host_header: Option<String>,
    /// `Some` for https upstreams (`tls = true`, or an `https://` service url).
    pub tls: Option<UpstreamTls>,
    /// Passive (circuit breaking) and active health checking of the targets.
    pub health: HealthDef,
    /// How a request's target is chosen.
    pub balance: Balance,
    /// The consistent-hash scores of `targets`, for `Balance::Hash` only (rebuilt by `set_addrs`).
    pub hashing: Option<Rendezvous>,
    /// Some target has `max_conns` (the request path checks room only then).
    pub capped: bool,
}

/// `algorithm` of an upstream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Balance {
    /// Smooth weighted round-robin (the default).
    #[default]
    RoundRobin,
    /// The fewest requests in flight on this worker for the target's weight.
    LeastConn,
    /// Consistent hashing of `on`; a request without that value is balanced round-robin, or by
    /// its client address with `fallback_ip`.
    Hash { on: HashOn, fallback_ip: bool },
}

/// What `consistent_hash` hashes (`hash_on`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    /// The client address (the one ip-restriction sees).
    Ip,
    /// The authenticated consumer's username (an anonymous consumer counts as none).
    Consumer,
    /// A request header's value (lower-case name; the first occurrence).
    Header(String),
    /// A cookie's value (name as written: cookie names are case-sensitive). With `set` (the
    /// cookie's `Path`), a request without the cookie gets one: a random value it is balanced by,
    /// sent back in a `Set-Cookie` (sticky sessions, as Kong's `hash_on_cookie_path`).
    Cookie { name: String, set: Option<String> },
    /// A query parameter's value (the first occurrence), names and values compared form-decoded.
    QueryArg(String),
    /// The normalized request path.
    Path,
}

impl UpstreamDef {
    /// The addresses of the targets written as `name` (one per address it resolved to; they sit
    /// next to each other, in the order of `addrs`).
    pub fn addrs_of(&self, name: &str) -> Vec<SocketAddr> {
        self.targets
            .iter()
            .filter(|t| t.name == name)
            .map(|t| t.addr)
            .collect()
    }

    /// Makes the targets written as `name` be one per address of `addrs` (`dns_refresh`), where
    /// they were and with their weight and TLS server name; the other targets are untouched. Does
    /// nothing when no target has that name or `addrs` is empty (a name never loses every address).
    pub fn set_addrs(&mut self, name: &str, addrs: &[SocketAddr]) {
        let Some(at) = self.targets.iter().position(|t| t.name == name) else {
            return;
        };
        let Some(template) = self.targets.get(at).cloned().filter(|_| !addrs.is_empty()) else {
            return;
        };
        let end = at
            + self.targets[at..]
                .iter()
                .take_while(|t| t.name == name)
                .count();
        let replacement = addrs.iter().map(|&addr| TargetDef {
            addr,
            ..template.clone()
        });
        self.targets.splice(at..end, replacement);
        if self.hashing.is_some() {
            self.hashing = Some(Rendezvous::new(&self.targets));
        }
        if let Some(tls) = &mut self.tls {
            if let Some(sni) = tls.names.get(at).cloned() {
                let end = end.min(tls.names.len());
                tls.names
                    .splice(at..end, std::iter::repeat_n(sni, addrs.len()));
            }
        }
    }
}

/// `[upstreams.health]`: how a target is judged healthy (see `upstream::health` and `upstream::probe`).
#[derive(Debug, Clone, Default)]
pub struct HealthDef {
    pub passive: PassiveDef,
    /// `None` = no active checks (the default).
    pub active: Option<ActiveDef>,
}

/// `[upstreams.health.passive]`: eject a target after consecutive failed requests.
#[derive(Debug, Clone)]
pub struct PassiveDef {
    /// Consecutive failures that eject a target; 0 = passive health off.
    pub max_fails: u32,
    /// How long an ejected target is skipped (doubling on each re-ejection, up to 8x).
    pub fail_timeout: Duration,
    /// Response statuses that count as failures (none by default).
    pub http_statuses: StatusSet,
}

impl Default for PassiveDef {
    fn default() -> PassiveDef {
        PassiveDef {
            max_fails: 3,
            fail_timeout: Duration::from_secs(10),
            http_statuses: StatusSet::default(),
        }
    }
}

/// `[upstreams.health.active]`: periodic probes from the prober thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveDef {
    /// Request path of the probe (`GET path HTTP/1.1`), starting with '/'.
    pub path: String,
    pub interval: Duration,
    /// Connect + request + response head, end to end.
    pub timeout: Duration,
    /// Consecutive passing probes that bring an unhealthy target back.
    pub healthy_threshold: u32,
    /// Consecutive failing probes that take a healthy target out.
    pub unhealthy_threshold: u32,
    /// Statuses that pass (default 200..=399).
    pub healthy_statuses: StatusSet,
    /// Host header of the probe; `None` = the upstream's `host_header`, else the target's name.
    pub host: Option<String>,
}

/// A set of HTTP status codes (100..=599) as a bitmap: membership is a shift and a mask, with no
/// allocation, so checking a response status on the request path costs a couple of instructions.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusSet([u64; 10]);

impl StatusSet {
    /// Every status in `lo..=hi` (clamped to 0..=639).
    pub fn range(lo: u16, hi: u16) -> StatusSet {
        let mut s = StatusSet::default();
        for code in lo..=hi.min(639) {
            s.insert(code);
        }
        s
    }

    pub fn insert(&mut self, code: u16) {
        if let Some(w) = self.0.get_mut(usize::from(code / 64)) {
            *w |= 1 << (code % 64);
        }
    }

    #[inline]
    pub fn contains(&self, code: u16) -> bool {
        self.0
            .get(usize::from(code / 64))
            .is_some_and(|w| w & (1 << (code % 64)) != 0)
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&w| w == 0)
    }
}

impl std::fmt::Debug for StatusSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set()
            .entries((0..640u16).filter(|&c| self.contains(c)))
            .finish()
    }
}

/// How to speak TLS to an upstream's targets.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// Roots (system or `ca_file`), ALPN http/1.1, TLS 1.2 and 1.3.
    pub config: Arc<rustls::ClientConfig>,
    /// Per target (same index as `UpstreamDef::targets`): the name sent as SNI and verified.
    pub names: Vec<rustls::pki_types::ServerName<'static>>,
    /// The `ca_file` the certificates are verified against; `None` = the system roots. Part of the
    /// pool key, with the name: a connection verified for one is never reused for another.
    pub roots: Option<RootsId>,
}

/// Which CA file, and what was in it at load: a reload after the file's contents changed (a CA no
/// longer trusted) gets new pools, so no connection verified against the old roots is reused.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RootsId {
    pub path: std::path::PathBuf,
    /// A hash of the certificates read from it.
    pub digest: u64,
}

/// One `listen` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenDef {
    pub addr: SocketAddr,
    pub kind: ListenKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenKind {
    /// Plain HTTP/1.1.
    Http,
    /// TLS (certificates from `Config::certificates`), then HTTP/1.1.
    Https,
    /// Plain HTTP that answers every request with a redirect to `https://host[:https_port]/path?query`.
    RedirectHttps { status: u16, https_port: u16 },
}

/// One `[[certificates]]` entry with `acme = true`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeCertDef {
    /// Lower-case DNS names (`*.` wildcards only with DNS-01: the other challenges cannot prove one),
    /// at least one;
    /// the first names the certificate (its storage directory, metrics and log lines).
    pub snis: Vec<String>,
    /// Served when no SNI matches (or the client sent none).
    pub default: bool,
}

/// `[acme]`: the CA that issues `AcmeCertDef`s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeDef {
    /// The directory URL (https).
    pub directory: String,
    /// Account contacts (`mailto:` URLs).
    pub contact: Vec<String>,
    /// The account key and the issued certificates live here (resolved against the config's directory).
    pub storage: PathBuf,
    /// Roots for the directory's HTTPS certificate; `None` = the system's.
    pub ca_file: Option<PathBuf>,
    pub challenge: AcmeChallenge,
    /// DNS-01's hook (`Some` exactly when `challenge` is `Dns01`).
    pub dns: Option<DnsHook>,
    /// Renew when less than this is left; `None` = when a third of the certificate's lifetime is left.
    pub renew_before: Option<Duration>,
    /// External Account Binding: the key id and the decoded HMAC key.
    pub eab: Option<Eab>,
}

/// An External Account Binding key (RFC 8555 §7.3.4). Never in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Eab {
    pub kid: String,
    pub hmac_key: Vec<u8>,
}

impl std::fmt::Debug for Eab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Eab")
            .field("kid", &self.kid)
            .field("hmac_key", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcmeChallenge {
    /// The CA fetches `http://{name}/.well-known/acme-challenge/{token}` (port 80): answered by plain
    /// and redirect listeners.
    Http01,
    /// The CA connects to port 443 offering ALPN `acme-tls/1`: answered by TLS listeners.
    TlsAlpn01,
    /// The CA looks up TXT `_acme-challenge.{name}`, published by the `dns_hook`; the only one that
    /// proves a wildcard.
    Dns01,
}

impl AcmeChallenge {
    /// The name in RFC 8555 and in the config.
    pub fn name(self) -> &'static str {
        match self {
            AcmeChallenge::Http01 => "http-01",
            AcmeChallenge::TlsAlpn01 => "tls-alpn-01",
            AcmeChallenge::Dns01 => "dns-01",
        }
    }
}

/// `[acme] dns_hook` and `dns_delay`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsHook {
    /// An executable, resolved against the config's directory.
    pub program: PathBuf,
    pub delay: Duration,
}

/// One `[[certificates]]` entry, parsed.
#[derive(Debug, Clone)]
pub struct CertificateDef {
    /// Resolved paths (relative ones are relative to the config file's directory).
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Lower-case exact names and `*.suffix` wildcards (one label).
    pub snis: Vec<String>,
    /// Served when no SNI matches (or the client sent none).
    pub default: bool,
    pub key: Arc<rustls::sign::CertifiedKey>,
    /// The leaf's validity (`None` if x509-parser could not read it; rustls still serves it).
    pub validity: Option<(std::time::SystemTime, std::time::SystemTime)>,
}

#[derive(Debug, Clone)]
pub struct TargetDef {
    /// As written in the config (`host:port`), used for the Host header and in messages.
    pub name: String,
    /// Resolved at load time.
    pub addr: SocketAddr,
    pub weight: u32,
    /// Requests in flight to this address at once, per gateway process (each worker takes an
    /// equal share, rounded up); `None` = no limit.
    pub max_conns: Option<u32>,
}

/// `[[services]]`: where matched requests go.
#[derive(Debug, Clone)]
pub struct ServiceDef {
    pub name: String,
    /// Index into `Config::upstreams`. A `url = "http://host:port/path"` service is compiled into an
    /// anonymous upstream (named `service:<name>`) with one target per address of its host.
    pub upstream: usize,
    /// Path prefix prepended to the upstream request path ("" or starting with '/', no trailing '/'
    /// unless it is exactly "/").
    pub path: String,
    /// Host header used when `preserve_host` is false: the url's host (with `:port` when not 80),
    /// or the upstream's `host_header`; `None` = the chosen target's name.
    pub host_header: Option<String>,
    /// Per-service timeout overrides, already merged with `[server.timeouts]`.
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// After a failed connect (refused, reset, timed out), how many other targets are tried
    /// (Kong's `retries`, default 5): bounds a request's wait at `(1 + retries)` connect timeouts.
    pub retries: usize,
    /// nginx's `proxy_next_upstream_timeout`: no retry starts later than this after the request's
    /// first upstream attempt began, and a retry's connect ends by then; `None` = no limit.
    pub retry_timeout: Option<Duration>,
}

/// `[[routes]]`.
#[derive(Debug, Clone)]
pub struct RouteDef {
    pub name: String,
    /// Index into `Config::services`.
    pub service: usize,
    /// Lower-cased. Exact names, or `*.example.com` wildcards (stored with the leading `*`).
    pub hosts: Vec<String>,
    pub paths: Vec<PathMatch>,
    /// Upper-case method names; empty = any.
    pub methods: Vec<String>,
    /// All must match. Header names lower-cased.
    pub headers: Vec<HeaderMatch>,
    /// All must match.
    pub query: Vec<QueryMatch>,
    pub strip_path: bool,
    pub preserve_host: bool,
    /// Higher wins; see the router's priority rules.
    pub priority: i32,
    /// Overrides `server.max_body_bytes` when set (0 = unlimited).
    pub max_body_bytes: Option<u64>,
}

#[derive(Debug, Clone)]
pub enum PathMatch {
    /// Segment-aware prefix: `/users` matches `/users` and `/users/1`, not `/users-admin`.
    /// Stored without a trailing '/', except the root prefix "/".
    Prefix(String),
    /// Written `=/path` in the config.
    Exact(String),
    /// Written `~^/regex$` in the config; anchored at the start of the path.
    Regex(regex::Regex),
}

#[derive(Debug, Clone)]
pub struct HeaderMatch {
    /// Lower-case.
    pub name: String,
    pub value: ValueMatch,
}

#[derive(Debug, Clone)]
pub struct QueryMatch {
    pub name: String,
    pub value: ValueMatch,
}

#[derive(Debug, Clone)]
pub enum ValueMatch {
    /// Present, any value (written `"*"`).
    Present,
    /// Any of these exact values.
    Exact(Vec<String>),
    /// Written `"~regex"`.
    Regex(regex::Regex),
}
