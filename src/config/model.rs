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
use std::time::Duration;

pub mod plugins;
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
    /// `[[plugins]]` in file order (see `crate::plugins` for how they form per-route chains).
    pub plugins: Vec<PluginDef>,
}

/// `[server]`.
#[derive(Debug, Clone)]
pub struct ServerDef {
    /// Every address to listen on; each worker binds its own SO_REUSEPORT socket for each.
    pub listen: Vec<SocketAddr>,
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
}

#[derive(Debug, Clone, Copy)]
pub struct PoolDef {
    /// Idle connections kept per target per worker.
    pub max_idle: usize,
    pub idle_timeout: Duration,
}

/// `[[upstreams]]`: a named set of weighted targets.
#[derive(Debug, Clone)]
pub struct UpstreamDef {
    pub name: String,
    pub targets: Vec<TargetDef>,
    /// Host header sent upstream when `preserve_host` is false; `None` = the chosen target's `host[:port]`.
    pub host_header: Option<String>,
}

#[derive(Debug, Clone)]
pub struct TargetDef {
    /// As written in the config (`host:port`), used for the Host header and in messages.
    pub name: String,
    /// Resolved at load time.
    pub addr: SocketAddr,
    pub weight: u32,
}

/// `[[services]]`: where matched requests go.
#[derive(Debug, Clone)]
pub struct ServiceDef {
    pub name: String,
    /// Index into `Config::upstreams`. A `url = "http://host:port/path"` service is compiled into an
    /// anonymous upstream (named `service:<name>`) with a single target.
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
