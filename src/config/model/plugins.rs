//! Compiled `[[plugins]]`: where each plugin attaches and its validated, typed config.
//!
//! Invariants (established by `validate::plugins`): scope indices are in bounds; at most one plugin
//! of a given name per scope; every `RateLimitDef` is internally consistent (window algorithms have
//! at least one period limit, token bucket has a positive rate and burst, cluster policy has a
//! `RedisDef`, `header_name` is set exactly when `limit_by` is `Header`).

use std::time::Duration;

use super::auth::{AclDef, BasicAuthDef, ForwardAuthConf, IpRestrictionDef, JwtDef, KeyAuthDef};

/// One `[[plugins]]` entry.
#[derive(Debug, Clone)]
pub struct PluginDef {
    /// The plugin's name as written (`"rate-limiting"`).
    pub name: String,
    pub scope: PluginScope,
    /// Disabled plugins are validated but never compiled into a chain.
    pub enabled: bool,
    pub config: PluginConfig,
}

/// Where a plugin applies. Specificity (most specific wins per plugin name): Route > Service > Global.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PluginScope {
    Global,
    /// Index into `Config::services`.
    Service(usize),
    /// Index into `Config::routes`.
    Route(usize),
    /// Index into `Config::consumers`: applies once auth identified that consumer, and then
    /// replaces the route/service/global instance of the same plugin.
    Consumer(usize),
}

impl PluginScope {
    /// Stable identity across processes with the same config, used in Redis keys:
    /// `global`, `service:<name>`, `route:<name>`, `consumer:<username>`.
    pub fn id(self, cfg: &super::Config) -> String {
        match self {
            PluginScope::Global => "global".to_owned(),
            PluginScope::Service(i) => format!(
                "service:{}",
                cfg.services.get(i).map_or("?", |s| s.name.as_str())
            ),
            PluginScope::Route(i) => format!(
                "route:{}",
                cfg.routes.get(i).map_or("?", |r| r.name.as_str())
            ),
            PluginScope::Consumer(i) => format!(
                "consumer:{}",
                cfg.consumers.get(i).map_or("?", |c| c.username.as_str())
            ),
        }
    }
}

/// One variant per plugin.
#[derive(Debug, Clone)]
pub enum PluginConfig {
    RateLimiting(RateLimitDef),
    KeyAuth(KeyAuthDef),
    BasicAuth(BasicAuthDef),
    Jwt(JwtDef),
    Acl(AclDef),
    IpRestriction(IpRestrictionDef),
    ForwardAuth(ForwardAuthConf),
    CorrelationId(CorrelationIdDef),
    Cors(CorsDef),
    RequestTransformer(TransformDef),
    ResponseTransformer(TransformDef),
    RequestTermination(TerminationDef),
    Compression(CompressionDef),
}

/// `compression`'s config: gzip for responses whose client accepts it, of the listed media types,
/// at least `min_length` bytes when their length is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompressionDef {
    pub min_length: u64,
    /// zlib's levels, 1 (fastest) ..= 9 (smallest).
    pub level: u32,
    /// Lower-case `type/subtype`, or `type/*` for a whole type.
    pub content_types: Vec<String>,
}

/// `request-termination`'s config, checked at load: a status of 200-599; `message` and `body`
/// exclusive; `content_type` only with `body`; neither with 204, 205 or 304 (they carry no body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TerminationDef {
    pub status_code: u16,
    /// Sent as `{"message":"…"}`; `None` with no `body` either: the status's reason phrase.
    pub message: Option<String>,
    /// Sent as it is, with `content_type`.
    pub body: Option<String>,
    pub content_type: String,
    /// Only requests carrying this header (any case) or query parameter (exact, form-decoded) are
    /// answered; the others go on. `None`: every request.
    pub trigger: Option<String>,
}

/// `correlation-id`'s config. The only generator is `uuid` (v4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorrelationIdDef {
    /// As written (a plain end-to-end header name, checked at load).
    pub header_name: String,
    pub echo_downstream: bool,
}

/// `cors`'s config, validated (origins are `*`, `scheme://host[:port]` or `scheme://*.suffix`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsDef {
    pub origins: Vec<String>,
    pub methods: Vec<String>,
    /// `None`: a preflight's `Access-Control-Request-Headers` is echoed (Kong's default).
    pub headers: Option<Vec<String>>,
    pub exposed_headers: Vec<String>,
    pub credentials: bool,
    pub max_age: Option<u64>,
    pub preflight_continue: bool,
}

/// A request- or response-transformer's config, checked at load.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransformDef {
    pub headers: EditsDef,
    /// Query-string edits (request side only).
    pub query: EditsDef,
    /// `replace.uri` (request side only): the upstream path, instead of the route's and service's.
    pub uri: Option<String>,
    /// `http_method` (request side only): the upstream request's method.
    pub method: Option<String>,
    /// JSON body edits; values are JSON text (`"\"v\""`, `1`, `true`).
    pub json: EditsDef,
    /// The largest JSON body buffered to edit.
    pub max_json_bytes: u64,
    /// Url-encoded form body edits (request side only); names and values as for `query`.
    pub form: EditsDef,
    /// The largest form body buffered to edit.
    pub max_form_bytes: u64,
}

/// One kind of edits (header fields, query parameters, JSON keys or form fields), applied in Kong's order: remove, rename,
/// replace (only if present), add (only if absent), append. Names and values as written (query
/// ones decoded; `plugins::query_transform` encodes them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EditsDef {
    pub remove: Vec<String>,
    /// (from, to).
    pub rename: Vec<(String, String)>,
    /// (name, value) for replace, add and append.
    pub replace: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
    pub append: Vec<(String, String)>,
}

impl EditsDef {
    /// Whether there is no edit of this kind.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.rename.is_empty()
            && self.replace.is_empty()
            && self.add.is_empty()
            && self.append.is_empty()
    }
}

/// `rate-limiting`'s config.
#[derive(Debug, Clone)]
pub struct RateLimitDef {
    pub algorithm: Algorithm,
    /// Window algorithms: one entry per configured period, shortest period first. Empty for
    /// `TokenBucket`.
    pub limits: Vec<PeriodLimit>,
    /// Token bucket parameters (only for `Algorithm::TokenBucket`).
    pub bucket: Option<BucketDef>,
    pub limit_by: LimitBy,
    pub error_code: u16,
    pub error_message: String,
    pub hide_client_headers: bool,
    pub mode: Mode,
    pub policy: Policy,
    pub on_redis_failure: RedisFailure,
    /// How often workers and the reconciler exchange counts (the smallest over all instances is used).
    pub sync_interval: Duration,
    /// Keys kept per worker for this instance; the least recently used key is evicted at the cap.
    pub max_keys: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    FixedWindow,
    SlidingWindow,
    TokenBucket,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Period {
    Second,
    Minute,
    Hour,
    Day,
}

impl Period {
    pub const ALL: [Period; 4] = [Period::Second, Period::Minute, Period::Hour, Period::Day];

    pub fn millis(self) -> u64 {
        match self {
            Period::Second => 1_000,
            Period::Minute => 60_000,
            Period::Hour => 3_600_000,
            Period::Day => 86_400_000,
        }
    }

    /// Config key (`minute`).
    pub fn key(self) -> &'static str {
        match self {
            Period::Second => "second",
            Period::Minute => "minute",
            Period::Hour => "hour",
            Period::Day => "day",
        }
    }

    /// Header suffix (`X-RateLimit-Limit-Minute`).
    pub fn title(self) -> &'static str {
        match self {
            Period::Second => "Second",
            Period::Minute => "Minute",
            Period::Hour => "Hour",
            Period::Day => "Day",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeriodLimit {
    pub period: Period,
    /// Requests allowed per window, >= 1.
    pub limit: u64,
}

/// A token bucket: `tokens` per `period_ms` refill, at most `burst` stored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketDef {
    /// Refill rate in tokens per millisecond (> 0).
    pub rate_per_ms: f64,
    /// Bucket capacity (>= 1).
    pub burst: u64,
}

impl BucketDef {
    /// One of `n` nodes' share: rate / n and burst / n (rounded up, at least 1).
    pub fn share(&self, n: u32) -> BucketDef {
        let n = n.max(1);
        BucketDef {
            rate_per_ms: self.rate_per_ms / f64::from(n),
            burst: self.burst.div_ceil(u64::from(n)).max(1),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitBy {
    Ip,
    Consumer,
    Credential,
    /// Lower-case header name.
    Header(String),
    Path,
    Service,
    Route,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    /// Counts and logs would-be rejections, never rejects.
    Shadow,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    Local,
    Cluster(RedisDef),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisDef {
    /// `redis://host:port[/db]`.
    pub url: String,
    /// Connect, read and write timeout of the reconciler's Redis connection.
    pub timeout: Duration,
    /// Prefix of every Redis key this instance uses.
    pub prefix: String,
    /// `AUTH` on connect: the ACL user (if any) and the password.
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Set exactly when the url is `rediss://`.
    pub tls: Option<RedisTls>,
}

/// `rediss://`: what verifies Redis' certificate and what this node shows when Redis asks.
/// The files' contents, read at load (and reload): a changed file reconnects with the new one.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct RedisTls {
    /// PEM CA certificates; `None`: the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM client certificate chain and private key (Redis' `tls-auth-clients yes`).
    pub client: Option<(Vec<u8>, Secret)>,
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTls")
            .field(
                "ca",
                &if self.ca_pem.is_some() {
                    "ca_file"
                } else {
                    "system roots"
                },
            )
            .field("client_certificate", &self.client.is_some())
            .finish()
    }
}

/// A credential from the config: compared like a string, never shown by `Debug`.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// What a cluster-policy limiter does while Redis is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisFailure {
    /// Admit everything (counting goes on locally).
    Open,
    /// Reject everything with `error_code`.
    Closed,
    /// Each node enforces limit / (last known node count).
    Local,
}
