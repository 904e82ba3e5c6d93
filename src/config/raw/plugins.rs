//! Serde mirror of `[[plugins]]` entries and each plugin's `config` table.
//!
//! A plugin entry is decoded in two steps (see `decode::decode_plugin`): its `name` is read first,
//! then the whole entry is deserialized as `RawPlugin<C>` with `C` the config struct of that plugin,
//! so a typo inside `config` is reported with its exact key path (`plugins[0].config.minut`). Every
//! struct is `deny_unknown_fields`; values are checked in `validate::plugins`.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::auth::{RawAcl, RawBasicAuth, RawForwardAuth, RawIpRestriction, RawJwt, RawKeyAuth};
use super::{Dur, Int};

/// One `[[plugins]]` entry with the config struct `C` of its plugin.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a plugin table ([[plugins]])")]
pub struct RawPlugin<C> {
    pub name: String,
    pub route: Option<String>,
    pub service: Option<String>,
    pub consumer: Option<String>,
    pub enabled: Option<bool>,
    pub config: Option<C>,
}

/// A decoded plugin entry: the common keys plus its plugin-specific config.
#[derive(Debug)]
pub struct DecodedPlugin {
    pub name: String,
    pub route: Option<String>,
    pub service: Option<String>,
    pub consumer: Option<String>,
    pub enabled: Option<bool>,
    pub config: RawPluginConfig,
}

/// One variant per known plugin (the closed set `decode` knows by name).
#[derive(Debug)]
pub enum RawPluginConfig {
    RateLimiting(Option<RawRateLimiting>),
    KeyAuth(Option<RawKeyAuth>),
    BasicAuth(Option<RawBasicAuth>),
    Jwt(Option<RawJwt>),
    Acl(Option<RawAcl>),
    IpRestriction(Option<RawIpRestriction>),
    ForwardAuth(Option<RawForwardAuth>),
    CorrelationId(Option<RawCorrelationId>),
    Cors(Option<RawCors>),
    RequestTransformer(Option<RawTransformer>),
    ResponseTransformer(Option<RawTransformer>),
    RequestTermination(Option<RawTermination>),
    Compression(Option<RawCompression>),
}

impl<C> RawPlugin<C> {
    /// Splits off the config, wrapping it with `wrap`.
    pub fn into_decoded(self, wrap: impl FnOnce(Option<C>) -> RawPluginConfig) -> DecodedPlugin {
        DecodedPlugin {
            name: self.name,
            route: self.route,
            service: self.service,
            consumer: self.consumer,
            enabled: self.enabled,
            config: wrap(self.config),
        }
    }
}

/// `config` of `name = "rate-limiting"`.
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a rate-limiting config table, e.g. { minute = 100 }"
)]
pub struct RawRateLimiting {
    pub algorithm: Option<String>,
    pub second: Option<Int>,
    pub minute: Option<Int>,
    pub hour: Option<Int>,
    pub day: Option<Int>,
    /// Token bucket, Traefik's spelling: `average` requests per `period`, bucket size `burst`.
    pub average: Option<Int>,
    pub period: Option<Dur>,
    pub burst: Option<Int>,
    /// Token bucket, AWS API Gateway's spelling: `rate_limit` requests per second, `burst_limit`.
    pub rate_limit: Option<Num>,
    pub burst_limit: Option<Int>,
    pub limit_by: Option<String>,
    pub header_name: Option<String>,
    pub error_code: Option<Int>,
    pub error_message: Option<String>,
    pub hide_client_headers: Option<bool>,
    pub mode: Option<String>,
    pub policy: Option<String>,
    pub on_redis_failure: Option<String>,
    pub sync_interval: Option<Dur>,
    pub max_keys: Option<Int>,
    pub redis: Option<RawRedis>,
}

/// `redis = { url = "redis://127.0.0.1:6379", timeout = "50ms", prefix = "ringgate" }`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table like { url = \"redis://127.0.0.1:6379\", timeout = \"50ms\", prefix = \"ringgate\" }"
)]
pub struct RawRedis {
    pub url: String,
    pub timeout: Option<Dur>,
    pub prefix: Option<String>,
    /// Redis 6 ACL user (`AUTH username password`); with a password only, `AUTH password`.
    pub username: Option<String>,
    /// Never shown by `Debug`.
    pub password: Option<crate::config::model::Secret>,
    /// The name of an environment variable holding the password (read at load and reload).
    pub password_env: Option<String>,
    /// `rediss://` only: PEM CA certificates that verify Redis (default: the system's roots).
    pub ca_file: Option<String>,
    /// `rediss://` only: a client certificate and key, for a Redis with `tls-auth-clients yes`.
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
}

/// A number: TOML integer or float (AWS's `rate_limit` may be fractional).
#[derive(Debug, Clone, Copy)]
pub struct Num(pub f64);

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Num;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number (requests per second)")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Num, E> {
                Ok(Num(n as f64))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Num, E> {
                Ok(Num(n as f64))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Num, E> {
                Ok(Num(n))
            }
        }
        d.deserialize_any(V)
    }
}

/// `config` of `correlation-id` (Kong's keys).
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a correlation-id config table, e.g. { header_name = \"X-Request-ID\", echo_downstream = true }"
)]
pub struct RawCorrelationId {
    pub header_name: Option<String>,
    pub generator: Option<String>,
    pub echo_downstream: Option<bool>,
}

/// `config` of `compression`.
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a compression config table, e.g. { min_length = 1024, level = 1 }"
)]
pub struct RawCompression {
    pub min_length: Option<Int>,
    pub level: Option<Int>,
    pub content_types: Option<Vec<String>>,
}

/// `config` of `request-termination` (Kong's keys).
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a request-termination config table, e.g. { status_code = 503, message = \"Down for maintenance\" }"
)]
pub struct RawTermination {
    pub status_code: Option<Int>,
    pub message: Option<String>,
    pub body: Option<String>,
    pub content_type: Option<String>,
    pub trigger: Option<String>,
    /// Kong's debugging echo; read so that `true` gets its own error (not supported).
    pub echo: Option<bool>,
}

/// `config` of `cors` (Kong's keys).
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a cors config table, e.g. { origins = [\"https://app.example.com\"], credentials = true }"
)]
pub struct RawCors {
    pub origins: Option<Vec<String>>,
    pub methods: Option<Vec<String>>,
    pub headers: Option<Vec<String>>,
    pub exposed_headers: Option<Vec<String>>,
    pub credentials: Option<bool>,
    pub max_age: Option<Int>,
    pub preflight_continue: Option<bool>,
}

/// `config` of `request-transformer` and `response-transformer`: Kong's header and query-string
/// subset, each a table `{ headers = [...], querystring = [...] }` (`"name"` for remove,
/// `"name:value"` / `"old:new"` for the others), plus `replace.uri` and `http_method`. The
/// validator refuses the request-only keys on the response side.
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a transformer config table, e.g. { add = { headers = [\"X-Env:prod\"] } }"
)]
pub struct RawTransformer {
    pub remove: Option<RawEdits>,
    pub rename: Option<RawEdits>,
    pub replace: Option<RawEdits>,
    pub add: Option<RawEdits>,
    pub append: Option<RawEdits>,
    pub http_method: Option<String>,
    /// The largest JSON body it buffers to edit.
    pub max_json_bytes: Option<super::Size>,
    /// request-transformer: the largest url-encoded form body it buffers to edit.
    pub max_form_bytes: Option<super::Size>,
}

/// `{ headers = ["…"], querystring = ["…"] }`, `uri = "/path"` under `replace`, `json = ["…"]`
/// with `json_types`, and (request side) `form = ["…"]`.
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table like { headers = [\"X-Name:value\"], querystring = [\"name:value\"] }"
)]
pub struct RawEdits {
    pub headers: Option<Vec<String>>,
    pub querystring: Option<Vec<String>>,
    pub uri: Option<String>,
    /// response-transformer: top-level keys of a JSON body (`"key"`, `"old:new"`, `"key:value"`).
    pub json: Option<Vec<String>>,
    /// The type of each `json` value, in order: `"string"` (the default), `"number"`, `"boolean"`.
    pub json_types: Option<Vec<String>>,
    /// request-transformer: fields of an `application/x-www-form-urlencoded` body, as `querystring`.
    pub form: Option<Vec<String>>,
}
