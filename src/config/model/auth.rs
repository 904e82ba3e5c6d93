//! Compiled `[[consumers]]`, their credentials, and the auth plugins' typed configs.
//!
//! Invariants (established by `validate::consumers` and `validate::auth`): every `consumer` index is
//! in bounds of `Config::consumers`; usernames and ids are unique; API keys are unique over all
//! consumers (one key identifies exactly one consumer); basic-auth usernames are unique; JWT key
//! material has been read from its files (on the main thread, at load) but not yet parsed: the auth
//! module parses it when a generation is compiled, and `config::load` reports a key that does not
//! parse at its file:line:key like any other error.

/// One consumer: who a request is, once an auth plugin identified it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerDef {
    pub username: String,
    /// `X-Consumer-ID` (defaults to the username).
    pub id: String,
    pub custom_id: Option<String>,
    pub groups: Vec<String>,
}

/// Every credential of every consumer, by kind.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub keys: Vec<KeyCredentialDef>,
    pub basic: Vec<BasicCredentialDef>,
    pub jwt: Vec<JwtCredentialDef>,
}

#[derive(Clone)]
pub struct KeyCredentialDef {
    pub consumer: usize,
    pub key: String,
    /// `X-Credential-Identifier` (never the key).
    pub id: String,
}

#[derive(Clone)]
pub struct BasicCredentialDef {
    pub consumer: usize,
    pub username: String,
    /// bcrypt or argon2 PHC string.
    pub hash: String,
}

#[derive(Debug, Clone)]
pub struct JwtCredentialDef {
    pub consumer: usize,
    /// Matched against the token's key claim (`iss` by default); also `X-Credential-Identifier`.
    pub key: String,
    pub algorithm: JwtAlg,
    pub material: JwtMaterial,
    /// Where it was written (`consumers[0].jwt_secrets[1]`), for errors found when parsing keys.
    pub path: String,
}

/// The JWS algorithm a JWT credential is verified with: the verifier's own type, so config and
/// verification cannot disagree on names or sets.
pub use crate::auth::jwt::Alg as JwtAlg;

/// Key material as configured (files already read).
#[derive(Clone, PartialEq, Eq)]
pub enum JwtMaterial {
    /// HMAC secret (base64-decoded later when the plugin says `secret_is_base64`).
    Secret(String),
    /// PEM public key.
    Pem(Vec<u8>),
    /// A JWKS document; keys are selected by `kid`.
    Jwks(Vec<u8>),
}

/// What `anonymous` names: the consumer a failed authentication falls back to.
pub type Anonymous = Option<usize>;

#[derive(Debug, Clone)]
pub struct KeyAuthDef {
    /// Header names (matched case-insensitively) and query parameter names (exact), in order.
    pub key_names: Vec<String>,
    pub in_header: bool,
    pub in_query: bool,
    pub hide_credentials: bool,
    pub anonymous: Anonymous,
    pub realm: String,
    pub run_on_preflight: bool,
}

#[derive(Debug, Clone)]
pub struct BasicAuthDef {
    pub hide_credentials: bool,
    pub anonymous: Anonymous,
    pub realm: String,
    /// Credentials from `htpasswd_file` (on top of the consumers' `basicauth_credentials`).
    pub htpasswd: Vec<BasicCredentialDef>,
    pub cache_size: usize,
    pub run_on_preflight: bool,
}

#[derive(Debug, Clone)]
pub struct JwtDef {
    /// Lower-case header names; `authorization` expects `Bearer <token>`, others the bare token.
    pub header_names: Vec<String>,
    pub uri_param_names: Vec<String>,
    pub cookie_names: Vec<String>,
    pub verify_exp: bool,
    pub verify_nbf: bool,
    pub key_claim_name: String,
    pub secret_is_base64: bool,
    /// Seconds; a token must expire at most this far in the future (and must carry `exp`).
    pub maximum_expiration: Option<u64>,
    pub leeway_seconds: u64,
    /// Accepted `iss` values (empty = not checked).
    pub issuer: Vec<String>,
    /// Accepted `aud` values (empty = not checked).
    pub audience: Vec<String>,
    pub max_token_bytes: usize,
    pub cache_size: usize,
    pub anonymous: Anonymous,
    pub run_on_preflight: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclDef {
    pub groups: Vec<String>,
    /// `deny` list (else `allow`).
    pub deny: bool,
}

/// An IPv4/IPv6 network (`10.0.0.0/8`, `::1/128`; a bare address is a /32 or /128).
pub type Cidr = ipnet::IpNet;

#[derive(Debug, Clone)]
pub struct IpRestrictionDef {
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
    pub status: u16,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct ForwardAuthConf {
    /// Where and what to ask (address resolved at load, header lists lower-case and validated).
    pub def: crate::auth::forward::ForwardAuthDef,
    /// Let requests through when the auth service is down or slow.
    pub fail_open: bool,
    pub unavailable_status: u16,
    pub timeout_status: u16,
    /// A refusal (non-2xx) identifies this consumer instead of being relayed.
    pub anonymous: Anonymous,
}

// Secrets never appear in `Debug` output (configs are debug-printed in tests and could be logged).

impl std::fmt::Debug for KeyCredentialDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCredentialDef")
            .field("consumer", &self.consumer)
            .field("key", &"<redacted>")
            .field("id", &self.id)
            .finish()
    }
}

impl std::fmt::Debug for BasicCredentialDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicCredentialDef")
            .field("consumer", &self.consumer)
            .field("username", &self.username)
            .field("hash", &"<redacted>")
            .finish()
    }
}

impl std::fmt::Debug for JwtMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwtMaterial::Secret(_) => f.write_str("Secret(<redacted>)"),
            JwtMaterial::Pem(p) => write!(f, "Pem({} bytes)", p.len()),
            JwtMaterial::Jwks(j) => write!(f, "Jwks({} bytes)", j.len()),
        }
    }
}
