//! Serde mirror of the TOML file: exactly the keys the config reference documents, nothing more.
//!
//! Invariants: every struct is `deny_unknown_fields` (a typo is an error, never silently ignored) and
//! nothing uses `flatten` (it disables `deny_unknown_fields` and loses spans). Optional keys are
//! `Option`s so `validate` knows what was written and applies the documented defaults in one place.
//! Scalars with a format (durations, sizes, workers) are parsed here, in their visitors, so a
//! malformed one is reported at its exact position; range checks happen in `validate`.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::units;

pub mod auth;
pub mod plugins;

/// `[server]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table ([server])")]
pub struct RawServer {
    pub listen: Option<Vec<RawListen>>,
    pub workers: Option<Workers>,
    pub max_header_bytes: Option<Size>,
    pub max_uri_bytes: Option<Size>,
    pub max_headers: Option<Int>,
    pub max_body_bytes: Option<Size>,
    pub drain_timeout: Option<Dur>,
    /// How often upstream target host names are resolved again (`"0s"`: only at load).
    pub dns_refresh: Option<Dur>,
    pub timeouts: Option<RawTimeouts>,
    pub pool: Option<RawPool>,
    pub trusted_proxies: Option<Vec<String>>,
}

/// `[server.timeouts]`.
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table of timeouts ([server.timeouts])"
)]
pub struct RawTimeouts {
    pub client_header: Option<Dur>,
    pub client_body: Option<Dur>,
    pub keepalive: Option<Dur>,
    pub upstream_connect: Option<Dur>,
    pub upstream_read: Option<Dur>,
    pub upstream_write: Option<Dur>,
    pub upstream_retry: Option<Dur>,
    pub tls_handshake: Option<Dur>,
}

/// `[server.pool]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table ([server.pool])")]
pub struct RawPool {
    pub max_idle: Option<Int>,
    pub idle_timeout: Option<Dur>,
}

/// One `[[upstreams]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an upstream table ([[upstreams]])")]
pub struct RawUpstream {
    pub name: String,
    pub targets: Vec<RawTarget>,
    pub host_header: Option<String>,
    pub tls: Option<bool>,
    pub ca_file: Option<String>,
    pub tls_server_name: Option<String>,
    pub health: Option<RawHealth>,
    pub algorithm: Option<String>,
    pub hash_on: Option<String>,
    pub hash_on_header: Option<String>,
    pub hash_on_cookie: Option<String>,
    pub hash_on_cookie_path: Option<String>,
    pub hash_on_query_arg: Option<String>,
    pub hash_fallback: Option<String>,
}

/// `[upstreams.health]`.
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table with `passive` and/or `active` ([upstreams.health])"
)]
pub struct RawHealth {
    pub passive: Option<RawPassive>,
    pub active: Option<RawActive>,
}

/// `[upstreams.health.passive]`.
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table ([upstreams.health.passive])"
)]
pub struct RawPassive {
    pub max_fails: Option<Int>,
    pub fail_timeout: Option<Dur>,
    pub http_statuses: Option<Vec<Int>>,
}

/// `[upstreams.health.active]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table ([upstreams.health.active])")]
pub struct RawActive {
    pub path: Option<String>,
    pub interval: Option<Dur>,
    pub timeout: Option<Dur>,
    pub healthy_threshold: Option<Int>,
    pub unhealthy_threshold: Option<Int>,
    pub healthy_statuses: Option<Vec<Int>>,
    pub host: Option<String>,
}

/// One `{ target = "host:port", weight = 100 }`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a target table like { target = \"host:port\", weight = 100 }"
)]
pub struct RawTarget {
    pub target: String,
    pub weight: Option<Int>,
    pub max_conns: Option<Int>,
}

/// One `[[services]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a service table ([[services]])")]
pub struct RawService {
    pub name: String,
    pub url: Option<String>,
    pub upstream: Option<String>,
    pub path: Option<String>,
    pub connect_timeout: Option<Dur>,
    pub read_timeout: Option<Dur>,
    pub write_timeout: Option<Dur>,
    pub ca_file: Option<String>,
    pub tls_server_name: Option<String>,
    /// Kong's key: how many other targets a failed connect may move on to.
    pub retries: Option<Int>,
    /// nginx's `proxy_next_upstream_timeout`: how long failover may go on.
    pub retry_timeout: Option<Dur>,
}

/// One `[[certificates]]` entry.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a certificate table ([[certificates]])"
)]
pub struct RawCertificate {
    /// PEM files; both required unless `acme = true` (then neither is allowed).
    pub cert: Option<String>,
    pub key: Option<String>,
    /// Obtained and renewed through `[acme]` for `snis`, instead of read from files.
    pub acme: Option<bool>,
    pub snis: Option<Vec<String>>,
    pub default: Option<bool>,
}

/// `[acme]`: the ACME CA that issues `acme = true` certificates (absent = none are).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table ([acme])")]
pub struct RawAcme {
    /// The CA's directory URL, or `"letsencrypt"` / `"letsencrypt-staging"`.
    pub directory: Option<String>,
    /// Contact address for the account (expiry warnings from the CA).
    pub email: Option<String>,
    /// Where the account key and the certificates are kept (default `"acme"`).
    pub storage: Option<String>,
    /// PEM roots that the directory's HTTPS certificate must chain to (default: the system's).
    pub ca_file: Option<String>,
    /// `"http-01"` (default), `"tls-alpn-01"` or `"dns-01"`.
    pub challenge: Option<String>,
    /// DNS-01: the program that publishes and withdraws the TXT records (lego's `exec` convention:
    /// `HOOK present|cleanup _acme-challenge.NAME. VALUE`).
    pub dns_hook: Option<String>,
    /// DNS-01: how long to wait after the records are published before the CA looks (default 0 s:
    /// the hook returns once its DNS serves them).
    pub dns_delay: Option<Dur>,
    /// Renew this many days before expiry (default: when a third of the lifetime is left).
    pub renew_before_days: Option<Int>,
    /// External Account Binding (RFC 8555 §7.3.4), for CAs that require it (ZeroSSL, Google
    /// Trust Services): the key id and the base64url HMAC key the CA gave out. Both or neither.
    pub eab_kid: Option<String>,
    pub eab_hmac_key: Option<RawSecret>,
}

/// A secret as written in the file; never in `Debug` output.
#[derive(Deserialize)]
#[serde(transparent)]
pub struct RawSecret(pub String);

impl fmt::Debug for RawSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One `listen` entry: `"ip:port"` (plain HTTP) or a table with options.
#[derive(Debug)]
pub enum RawListen {
    Addr(String),
    Table(RawListenTable),
}

/// `{ addr = "ip:port", tls = true }` or `{ addr = "ip:port", redirect_https = 308, https_port = 443 }`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a listener table like { addr = \"0.0.0.0:8443\", tls = true }"
)]
pub struct RawListenTable {
    pub addr: String,
    pub tls: Option<bool>,
    pub redirect_https: Option<Int>,
    pub https_port: Option<Int>,
}

impl RawListen {
    pub fn addr(&self) -> &str {
        match self {
            RawListen::Addr(a) => a,
            RawListen::Table(t) => &t.addr,
        }
    }
}

impl<'de> Deserialize<'de> for RawListen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawListen;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "an address \"ip:port\" or a table like { addr = \"ip:port\", tls = true }",
                )
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RawListen, E> {
                Ok(RawListen::Addr(s.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawListen, A::Error> {
                RawListenTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawListen::Table)
            }
        }
        d.deserialize_any(V)
    }
}

/// One `[[routes]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a route table ([[routes]])")]
pub struct RawRoute {
    pub name: String,
    pub service: String,
    pub hosts: Option<Vec<String>>,
    pub paths: Option<Vec<String>>,
    pub methods: Option<Vec<String>>,
    pub headers: Option<OrderedMap<MatchValues>>,
    pub query: Option<OrderedMap<MatchValues>>,
    pub strip_path: Option<bool>,
    pub preserve_host: Option<bool>,
    pub priority: Option<Int>,
    pub max_body_bytes: Option<Size>,
}

/// `[admin]`: the admin API listener (absent = no admin listener).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table ([admin])")]
pub struct RawAdmin {
    pub listen: Option<String>,
    pub token: Option<String>,
}

/// `[metrics]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table ([metrics])")]
pub struct RawMetrics {
    pub enabled: Option<bool>,
    pub flush_interval: Option<Dur>,
    pub histogram_file: Option<String>,
    pub per_consumer_labels: Option<bool>,
    pub max_consumer_labels: Option<Int>,
}

/// `[access_log]` (absent = no access log).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table ([access_log])")]
pub struct RawAccessLog {
    pub path: Option<String>,
    pub buffer_size: Option<Size>,
    pub flush_interval: Option<Dur>,
}

/// A duration string, already parsed (see `units::parse_duration`).
#[derive(Debug, Clone, Copy)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(units::DURATION_HINT)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Dur, E> {
                units::parse_duration(s).map(Dur).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A size in bytes: a TOML integer or a string with a unit (see `units::parse_size`).
#[derive(Debug, Clone, Copy)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(units::SIZE_HINT)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Size, E> {
                units::size_from_int(n).map(Size).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Size, E> {
                Ok(Size(n))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Size, E> {
                units::parse_size(s).map(Size).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// `workers`: `"auto"` or an integer (range-checked in `validate`).
#[derive(Debug, Clone, Copy)]
pub enum Workers {
    Auto,
    Count(i64),
}

const WORKERS_HINT: &str = "\"auto\" or a number of workers (1..=1024)";

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Workers;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(WORKERS_HINT)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Workers, E> {
                Ok(Workers::Count(n))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Workers, E> {
                Ok(Workers::Count(i64::try_from(n).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Workers, E> {
                if s == "auto" {
                    Ok(Workers::Auto)
                } else {
                    Err(E::custom(format!(
                        "{s:?} is not valid; expected {WORKERS_HINT}"
                    )))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// An integer, range-checked later (so the message can say which range; serde's would say "u32").
#[derive(Debug, Clone, Copy)]
pub struct Int(pub i64);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Int;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Int, E> {
                Ok(Int(n))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Int, E> {
                // Saturate: anything this large fails every range check anyway.
                Ok(Int(i64::try_from(n).unwrap_or(i64::MAX)))
            }
        }
        d.deserialize_any(V)
    }
}

/// A header/query match value: one string or an array of strings (`"*"`, `"~regex"` or exact values).
#[derive(Debug, Clone)]
pub struct MatchValues(pub Vec<String>);

impl<'de> Deserialize<'de> for MatchValues {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MatchValues;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<MatchValues, E> {
                Ok(MatchValues(vec![s.to_owned()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<MatchValues, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(MatchValues(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A TOML table with arbitrary keys, kept in file order (so errors and matching order follow the file).
#[derive(Debug, Clone)]
pub struct OrderedMap<T>(pub Vec<(String, T)>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OrderedMap<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = OrderedMap<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a table of name = value(s)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedMap<T>, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, T>()? {
                    out.push((k, v));
                }
                Ok(OrderedMap(out))
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}
