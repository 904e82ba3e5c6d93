//! JWT (compact JWS) verification for the `jwt` auth plugin, Kong-compatible in its rules.
//!
//! ```text
//! load (main thread)    VerifyKey::hmac / from_pem / parse_jwks -> KeyStoreBuilder::add_* -> KeyStore (Arc'd)
//! worker, per request   store.authenticate(token, &rules, now_secs, &mut cache) -> Verified { owner, .. }
//!   cache hit           hash 32 bytes + memcmp + time re-check: no JSON, no crypto, no allocation
//!   cold path           split -> header (alg, kid, crit) -> claims -> key lookup -> alg == key's alg
//!                       -> signature -> exp / nbf / maximum_expiration / iss / aud -> cache insert
//! reload                build a new KeyStore; the workers keep their caches only when the store's
//!                       content id and the rules are unchanged (a cache also empties itself when
//!                       it meets a store with another id)
//! ```
//!
//! Invariants:
//! - a key's algorithm is fixed at load; a token is only ever verified with the algorithm of the
//!   key it selected, and only if its `alg` names exactly that algorithm (no alg confusion, no
//!   `none`).
//! - key selection: the header's `kid` if a key has that kid; otherwise the string value of the
//!   claim `rules.key_claim_name` (default `iss`; when that claim is `kid` and absent from the
//!   claims, the header's `kid` is used, as Kong does), matched against the keys' registered key
//!   strings. A key string may hold several keys of one owner (a JWKS credential): the ones whose
//!   algorithm matches the token are tried in order, so the cost of a token without `kid` grows with
//!   that credential's key count.
//! - errors ([`JwtError`]) are fixed reasons: no token bytes, claim values or key material ever
//!   reach a message. Load errors are `String`s that explain the problem (the caller adds where).
//! - nothing here panics on input: tokens, PEM and JWKS are only read through checked accessors.
//!
//! Time: `now_secs` is UNIX seconds (wall clock, since exp/nbf are). Claim checks follow Kong:
//! exp/nbf are checked only when `Rules::verify_exp` / `verify_nbf` are set (Kong's
//! `claims_to_verify`), and then they are required; `maximum_expiration` requires exp.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

mod alg;
mod cache;
mod der;
mod error;
mod jwks;
mod token;

#[cfg(test)]
mod tests;

pub use alg::{Alg, VerifyKey};
pub use cache::TokenCache;
pub use error::{JwtError, Part};
pub use jwks::{parse_jwks, Jwk, Jwks};

/// Per plugin instance verification rules (Kong's jwt plugin options, plus iss/aud).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    /// Claim whose string value selects the key when no `kid` matches (Kong: `key_claim_name`).
    pub key_claim_name: String,
    /// Check `exp` (required when set): `claims_to_verify` contains "exp".
    pub verify_exp: bool,
    /// Check `nbf` (required when set): `claims_to_verify` contains "nbf".
    pub verify_nbf: bool,
    /// Clock skew allowed on exp and nbf (Kong: `leeway`).
    pub leeway_seconds: u64,
    /// Reject tokens whose exp is further than this from now; implies exp is required.
    pub maximum_expiration: Option<u64>,
    /// Allowed `iss` values; empty = not checked.
    pub issuers: Vec<String>,
    /// Allowed audiences (the token's `aud`, string or array, must contain one); empty = not checked.
    pub audiences: Vec<String>,
    /// Tokens longer than this are rejected before any parsing.
    pub max_token_bytes: usize,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            key_claim_name: "iss".into(),
            verify_exp: false,
            verify_nbf: false,
            leeway_seconds: 0,
            maximum_expiration: None,
            issuers: Vec::new(),
            audiences: Vec::new(),
            max_token_bytes: 8192,
        }
    }
}

/// A successful authentication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The caller's index registered with the key (credential / consumer).
    pub owner: usize,
    /// The key that verified the token; [`KeyStore::key_name`] gives its key string or kid.
    pub key: usize,
    /// The token's exp (whole seconds), if it has one.
    pub exp: Option<u64>,
    /// Served from the cache.
    pub cached: bool,
}

struct Entry {
    key: VerifyKey,
    owner: usize,
    kid: Option<Box<str>>,
    key_string: Option<Box<str>>,
}

/// All verification keys of one config generation, immutable after `build` (share it in an `Arc`).
/// Full verifications (cache misses) by result, process-wide: [verified, rejected]. One atomic add
/// on a path that parses JSON and checks a signature; cache hits count nothing.
static COLD: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

fn count_cold(ok: bool) {
    COLD[usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
}

/// `ringgate_jwt_verifications_total{result}` for `/metrics`.
pub fn family() -> crate::metrics::Family {
    use crate::metrics::{Family, FamilyKind};
    let n = |i: usize| COLD[i].load(Ordering::Relaxed) as f64;
    Family::new(
        "ringgate_jwt_verifications_total",
        "Full verifications of JWTs (parse, key lookup, signature, claims): the token caches' \
         misses, by result. Tokens served from a cache are not counted.",
        FamilyKind::Counter,
    )
    .sample(&[("result", "verified")], n(0))
    .sample(&[("result", "rejected")], n(1))
}

/// Marks a `KeyStore` id derived from the store's content.
const CONTENT_ID: u64 = 1 << 63;

pub struct KeyStore {
    /// What a `TokenCache` binds to: a token verified under one store with this id verifies the
    /// same way under any other with it.
    id: u64,
    entries: Vec<Entry>,
    by_kid: HashMap<Box<str>, u32>,
    by_key: HashMap<Box<str>, Box<[u32]>>,
}

/// Collects keys, checking that kids and key strings are unambiguous.
#[derive(Default)]
pub struct KeyStoreBuilder {
    entries: Vec<Entry>,
    by_kid: HashMap<Box<str>, u32>,
    by_key: HashMap<Box<str>, Vec<u32>>,
}

impl KeyStoreBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `key` for `owner`, findable by `kid` (a token header's kid) and/or by `key_string`
    /// (the value of the key claim, Kong's jwt_secrets.key). Returns the key's index. A kid may
    /// belong to one key only; a key string to one owner only (it may hold several of its keys).
    pub fn add_key(
        &mut self,
        key: VerifyKey,
        kid: Option<&str>,
        key_string: Option<&str>,
        owner: usize,
    ) -> Result<usize, String> {
        if kid.is_none() && key_string.is_none() {
            return Err("a key needs a kid or a key string to be found".into());
        }
        let index = self.entries.len();
        let idx32 = u32::try_from(index).map_err(|_| "too many keys".to_string())?;
        if let Some(kid) = kid {
            if self.by_kid.contains_key(kid) {
                return Err(format!("kid {kid:?} is used by two keys"));
            }
        }
        if let Some(ks) = key_string {
            if let Some(&first) = self.by_key.get(ks).and_then(|v| v.first()) {
                let other = self.entries.get(first as usize).map(|e| e.owner);
                if other != Some(owner) {
                    return Err(format!("key {ks:?} is already used by another credential"));
                }
            }
        }
        if let Some(kid) = kid {
            self.by_kid.insert(kid.into(), idx32);
        }
        if let Some(ks) = key_string {
            self.by_key.entry(ks.into()).or_default().push(idx32);
        }
        self.entries.push(Entry {
            key,
            owner,
            kid: kid.map(Into::into),
            key_string: key_string.map(Into::into),
        });
        Ok(index)
    }

    /// Registers every usable key of a JWKS document for `owner`, each under its kid and, if given,
    /// under `key_string`. Returns the skip notes of [`parse_jwks`] for the caller to log.
    pub fn add_jwks(
        &mut self,
        json: &[u8],
        default_alg: Option<Alg>,
        key_string: Option<&str>,
        owner: usize,
    ) -> Result<Vec<String>, String> {
        let jwks = parse_jwks(json, default_alg)?;
        for jwk in jwks.keys {
            if jwk.kid.is_none() && key_string.is_none() {
                return Err("a JWKS key without kid can only be used with a key string".into());
            }
            self.add_key(jwk.key, jwk.kid.as_deref(), key_string, owner)?;
        }
        Ok(jwks.skipped)
    }

    /// A store with an id of its own (no other store shares it).
    pub fn build(self) -> KeyStore {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        // The top bit stays clear, so these never meet a content id (`build_as`).
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed) & !CONTENT_ID;
        self.build_as(id)
    }

    /// A store whose id says what it holds: stores built from the same keys, kids, key strings and
    /// owners get the same `content_id` and so may share caches (a reload that left the JWT
    /// credentials alone keeps the workers' verified tokens).
    pub fn build_with_content_id(self, content_id: u64) -> KeyStore {
        self.build_as(content_id | CONTENT_ID)
    }

    fn build_as(self, id: u64) -> KeyStore {
        KeyStore {
            id,
            entries: self.entries,
            by_kid: self.by_kid,
            by_key: self
                .by_key
                .into_iter()
                .map(|(k, v)| (k, v.into_boxed_slice()))
                .collect(),
        }
    }
}

/// Largest signature: an RSA-8192 signature; plus slack for base64's decoded-length estimate.
const SIG_BUF: usize = alg::RSA_MAX_BITS / 8 + 8;

impl KeyStore {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The owner registered with key `key`.
    pub fn owner(&self, key: usize) -> Option<usize> {
        self.entries.get(key).map(|e| e.owner)
    }

    /// See `id`.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The key string of key `key`, else its kid (for X-Credential-Identifier style headers).
    pub fn key_name(&self, key: usize) -> Option<&str> {
        let e = self.entries.get(key)?;
        e.key_string.as_deref().or(e.kid.as_deref())
    }

    /// Verifies `token` (the raw compact JWS) under `rules` at `now_secs`, through `cache`.
    pub fn authenticate(
        &self,
        token: &[u8],
        rules: &Rules,
        now_secs: u64,
        cache: &mut TokenCache,
    ) -> Result<Verified, JwtError> {
        if token.len() > rules.max_token_bytes {
            return Err(JwtError::TooLarge);
        }
        cache.bind(self.id);
        if let Some(hit) = cache.lookup(token, rules, now_secs) {
            return Ok(hit);
        }
        let cold = self.verify_cold(token, rules, now_secs);
        count_cold(cold.is_ok());
        let (verified, nbf) = cold?;
        cache.insert(token, &verified, nbf, rules, now_secs);
        Ok(verified)
    }

    /// Full verification; returns the verdict and the token's nbf (for the cache).
    fn verify_cold(
        &self,
        token: &[u8],
        rules: &Rules,
        now: u64,
    ) -> Result<(Verified, Option<u64>), JwtError> {
        let seg = token::split(token)?;
        let header = token::parse_header(seg.header)?;
        let claims = token::parse_claims(seg.claims)?;
        let mut sig_buf = [0u8; SIG_BUF];
        // Longer than any supported signature could be: it cannot verify.
        if seg.signature.len() > SIG_BUF / 3 * 4 {
            return Err(JwtError::BadSignature);
        }
        let sig_len = token::b64_decode_into(seg.signature, &mut sig_buf, Part::Signature)?;
        let sig = sig_buf.get(..sig_len).unwrap_or_default();

        let index = self.select_and_verify(&header, &claims, rules, seg.signing_input, sig)?;
        let entry = self
            .entries
            .get(index as usize)
            .ok_or(JwtError::UnknownKey)?;

        // Claims are checked only once the signature proved who wrote them.
        let exp = claims.numeric_date("exp", false)?;
        let nbf = claims.numeric_date("nbf", true)?;
        if rules.verify_exp || rules.maximum_expiration.is_some() {
            let e = exp.ok_or(JwtError::MissingClaim("exp"))?;
            if rules.verify_exp && now >= e.saturating_add(rules.leeway_seconds) {
                return Err(JwtError::Expired);
            }
            if rules
                .maximum_expiration
                .is_some_and(|max| e.saturating_sub(now) > max)
            {
                return Err(JwtError::ExpirationTooFar);
            }
        }
        if rules.verify_nbf {
            let n = nbf.ok_or(JwtError::MissingClaim("nbf"))?;
            if now.saturating_add(rules.leeway_seconds) < n {
                return Err(JwtError::NotYetValid);
            }
        }
        if !rules.issuers.is_empty() {
            let iss = claims.string("iss")?.ok_or(JwtError::MissingClaim("iss"))?;
            if !rules.issuers.iter().any(|i| i == iss) {
                return Err(JwtError::IssuerMismatch);
            }
        }
        if !rules.audiences.is_empty() {
            check_audience(&claims, &rules.audiences)?;
        }
        let verified = Verified {
            owner: entry.owner,
            key: index as usize,
            exp,
            cached: false,
        };
        Ok((verified, nbf))
    }

    /// Finds the candidate keys and returns the index of the one that verifies the signature.
    fn select_and_verify(
        &self,
        header: &token::Header,
        claims: &token::Claims,
        rules: &Rules,
        signing_input: &[u8],
        sig: &[u8],
    ) -> Result<u32, JwtError> {
        let by_kid = header.kid.as_deref().and_then(|k| self.by_kid.get(k));
        let candidates: &[u32] = match by_kid {
            Some(i) => std::slice::from_ref(i),
            None => {
                let value = match claims.0.get(rules.key_claim_name.as_str()) {
                    Some(serde_json::Value::String(s)) => s.as_str(),
                    None if rules.key_claim_name == "kid" => {
                        header.kid.as_deref().ok_or(JwtError::MissingKeyClaim)?
                    }
                    _ => return Err(JwtError::MissingKeyClaim),
                };
                self.by_key.get(value).ok_or(JwtError::UnknownKey)?
            }
        };
        // Only keys of the token's algorithm are tried; if there were none, say so (this is where
        // an HS256 token against an RSA key ends, whatever secret it was signed with).
        let mut tried = false;
        let mut key_alg = None;
        for &i in candidates {
            let Some(entry) = self.entries.get(i as usize) else {
                continue;
            };
            if entry.key.alg() != header.alg {
                key_alg.get_or_insert(entry.key.alg());
                continue;
            }
            tried = true;
            if entry.key.verify(signing_input, sig) {
                return Ok(i);
            }
        }
        match key_alg {
            Some(key) if !tried => Err(JwtError::AlgMismatch {
                token: header.alg,
                key,
            }),
            _ if tried => Err(JwtError::BadSignature),
            _ => Err(JwtError::UnknownKey),
        }
    }
}

/// `aud` may be a string or an array of strings (RFC 7519 section 4.1.3); one must be allowed.
fn check_audience(claims: &token::Claims, allowed: &[String]) -> Result<(), JwtError> {
    use serde_json::Value;
    let ok = |s: &str| allowed.iter().any(|a| a == s);
    match claims.0.get("aud") {
        None => Err(JwtError::MissingClaim("aud")),
        Some(Value::String(s)) => ok(s).then_some(()).ok_or(JwtError::AudienceMismatch),
        Some(Value::Array(list)) => {
            let mut any = false;
            for v in list {
                let s = v.as_str().ok_or(JwtError::BadClaimType("aud"))?;
                any |= ok(s);
            }
            any.then_some(()).ok_or(JwtError::AudienceMismatch)
        }
        Some(_) => Err(JwtError::BadClaimType("aud")),
    }
}
