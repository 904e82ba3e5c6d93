//! Serde mirror of `[[consumers]]` and of the auth plugins' `config` tables.
//!
//! Same rules as the rest of `raw`: `deny_unknown_fields`, every optional key an `Option`, values
//! checked in `validate::consumers` and `validate::auth`. Key names follow Kong where Kong has the
//! concept (`keyauth_credentials`, `jwt_secrets`, `key_names`, `hide_credentials`, `anonymous`), and
//! Traefik's forwardAuth otherwise.

use serde::Deserialize;

use super::{Dur, Int};

/// One `[[consumers]]` entry.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a consumer table ([[consumers]]) with at least `username`"
)]
pub struct RawConsumer {
    pub username: String,
    /// Sent upstream as `X-Consumer-ID`; defaults to `username`.
    pub id: Option<String>,
    pub custom_id: Option<String>,
    pub groups: Option<Vec<String>>,
    pub keyauth_credentials: Option<Vec<RawKeyCredential>>,
    pub basicauth_credentials: Option<Vec<RawBasicCredential>>,
    pub jwt_secrets: Option<Vec<RawJwtSecret>>,
}

/// `keyauth_credentials = [{ key = "…", id = "…" }]`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a key credential like { key = \"…\" }"
)]
pub struct RawKeyCredential {
    pub key: String,
    /// `X-Credential-Identifier`; defaults to `<username>-key-<n>` (never the key itself).
    pub id: Option<String>,
}

/// `basicauth_credentials = [{ username = "…", password = "$2b$…" }]`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a basic-auth credential like { username = \"…\", password = \"$2b$12$…\" } (a bcrypt hash)"
)]
pub struct RawBasicCredential {
    pub username: String,
    /// A bcrypt (`$2a$`/`$2b$`/`$2y$`/`$2x$`) hash; never a clear-text password.
    pub password: String,
}

/// `jwt_secrets = [{ key = "issuer", algorithm = "HS256", secret = "…" }]`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a JWT credential like { key = \"my-issuer\", algorithm = \"HS256\", secret = \"…\" }"
)]
pub struct RawJwtSecret {
    /// Matched against the token's `key_claim_name` claim (default `iss`).
    pub key: String,
    /// Default `HS256`.
    pub algorithm: Option<String>,
    /// HMAC secret (HS*).
    pub secret: Option<String>,
    /// Inline PEM public key (RS*/PS*/ES*/EdDSA).
    pub rsa_public_key: Option<String>,
    pub public_key: Option<String>,
    /// PEM public key file, relative to the config file.
    pub public_key_file: Option<String>,
    /// JWKS file (keys selected by `kid`), re-read on every reload.
    pub jwks_file: Option<String>,
}

/// `config` of `key-auth`.
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a key-auth config table, e.g. { key_names = [\"apikey\"] }"
)]
pub struct RawKeyAuth {
    pub key_names: Option<Vec<String>>,
    pub key_in_header: Option<bool>,
    pub key_in_query: Option<bool>,
    pub hide_credentials: Option<bool>,
    pub anonymous: Option<String>,
    pub realm: Option<String>,
    pub run_on_preflight: Option<bool>,
}

/// `config` of `basic-auth`.
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a basic-auth config table, e.g. { hide_credentials = true }"
)]
pub struct RawBasicAuth {
    pub hide_credentials: Option<bool>,
    pub anonymous: Option<String>,
    pub realm: Option<String>,
    /// htpasswd file (bcrypt entries); each user authenticates as the consumer of the same
    /// username, or as a consumer of its own when none is configured.
    pub htpasswd_file: Option<String>,
    /// Verified credentials kept per worker (a bcrypt check costs milliseconds).
    pub cache_size: Option<Int>,
    pub run_on_preflight: Option<bool>,
}

/// `config` of `jwt`.
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a jwt config table, e.g. { claims_to_verify = [\"exp\"] }"
)]
pub struct RawJwt {
    pub header_names: Option<Vec<String>>,
    pub uri_param_names: Option<Vec<String>>,
    pub cookie_names: Option<Vec<String>>,
    pub claims_to_verify: Option<Vec<String>>,
    pub key_claim_name: Option<String>,
    pub secret_is_base64: Option<bool>,
    pub maximum_expiration: Option<Int>,
    pub leeway_seconds: Option<Int>,
    pub issuer: Option<Vec<String>>,
    pub audience: Option<Vec<String>>,
    pub max_token_bytes: Option<Int>,
    pub cache_size: Option<Int>,
    pub anonymous: Option<String>,
    pub run_on_preflight: Option<bool>,
}

/// `config` of `acl`.
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an acl config table, e.g. { allow = [\"admins\"] }"
)]
pub struct RawAcl {
    pub allow: Option<Vec<String>>,
    pub deny: Option<Vec<String>>,
}

/// `config` of `ip-restriction`.
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an ip-restriction config table, e.g. { allow = [\"10.0.0.0/8\"] }"
)]
pub struct RawIpRestriction {
    pub allow: Option<Vec<String>>,
    pub deny: Option<Vec<String>>,
    pub status: Option<Int>,
    pub message: Option<String>,
}

/// `config` of `forward-auth`.
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a forward-auth config table, e.g. { address = \"http://127.0.0.1:9000/auth\" }"
)]
pub struct RawForwardAuth {
    pub address: Option<String>,
    pub request_headers: Option<Vec<String>>,
    pub response_headers: Option<Vec<String>>,
    pub timeout: Option<Dur>,
    /// Let requests through when the auth service is down or slow (default false: fail closed).
    pub fail_open: Option<bool>,
    /// Status when the auth service is unreachable or answers garbage (default 502).
    pub unavailable_status: Option<Int>,
    /// Status when it does not answer within `timeout` (default 504).
    pub timeout_status: Option<Int>,
    /// On a refusal, continue as this consumer instead of relaying the refusal.
    pub anonymous: Option<String>,
}
