//! Rejection reasons for `KeyStore::authenticate`.
//!
//! Invariant: every variant is a fixed reason (plus, at most, a claim name or an algorithm from a
//! closed set), so `Display`/`Debug` can go to logs without leaking token bytes, claim values or
//! key material.

use std::fmt;

use super::Alg;

/// Which part of a token an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Header,
    Claims,
    Signature,
}

/// Why a token was rejected. Each variant is a fixed reason, safe to log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JwtError {
    /// Longer than `Rules::max_token_bytes`.
    TooLarge,
    /// Not three `.`-separated segments with non-empty header and claims (JWE, JSON JWS, garbage).
    MalformedSegments,
    MalformedBase64(Part),
    /// Header or claims not a JSON object (or duplicate claim names, or a non-string alg/kid).
    MalformedJson(Part),
    /// A registered claim of the wrong JSON type (exp/nbf not a number, iss not a string, ...).
    BadClaimType(&'static str),
    /// `alg: none` (any capitalization).
    AlgNone,
    /// `alg` missing or not one this module supports.
    UnsupportedAlg,
    /// The header has `crit`: extensions we would have to understand.
    UnsupportedCrit,
    /// The token's `alg` is not the selected key's algorithm.
    AlgMismatch {
        token: Alg,
        key: Alg,
    },
    /// No `kid` matched and the key claim is absent (or not a string).
    MissingKeyClaim,
    /// No key is registered for the token's kid / key claim.
    UnknownKey,
    BadSignature,
    /// A claim the rules require is absent (`exp` when verified or with maximum_expiration, `nbf`
    /// when verified, `iss`/`aud` when restricted).
    MissingClaim(&'static str),
    Expired,
    NotYetValid,
    /// exp - now exceeds `Rules::maximum_expiration`.
    ExpirationTooFar,
    IssuerMismatch,
    AudienceMismatch,
}

impl JwtError {
    /// A short stable code for logs and metrics labels.
    pub fn code(&self) -> &'static str {
        match self {
            JwtError::TooLarge => "too_large",
            JwtError::MalformedSegments => "malformed_segments",
            JwtError::MalformedBase64(_) => "malformed_base64",
            JwtError::MalformedJson(_) => "malformed_json",
            JwtError::BadClaimType(_) => "bad_claim_type",
            JwtError::AlgNone => "alg_none",
            JwtError::UnsupportedAlg => "unsupported_alg",
            JwtError::UnsupportedCrit => "unsupported_crit",
            JwtError::AlgMismatch { .. } => "alg_mismatch",
            JwtError::MissingKeyClaim => "missing_key_claim",
            JwtError::UnknownKey => "unknown_key",
            JwtError::BadSignature => "bad_signature",
            JwtError::MissingClaim(_) => "missing_claim",
            JwtError::Expired => "expired",
            JwtError::NotYetValid => "not_yet_valid",
            JwtError::ExpirationTooFar => "expiration_too_far",
            JwtError::IssuerMismatch => "issuer_mismatch",
            JwtError::AudienceMismatch => "audience_mismatch",
        }
    }
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let part = |p: &Part| match p {
            Part::Header => "header",
            Part::Claims => "claims",
            Part::Signature => "signature",
        };
        match self {
            JwtError::TooLarge => f.write_str("token exceeds the size limit"),
            JwtError::MalformedSegments => f.write_str("token is not three base64url segments"),
            JwtError::MalformedBase64(p) => write!(f, "token {} is not valid base64url", part(p)),
            JwtError::MalformedJson(p) => write!(f, "token {} is not a valid JSON object", part(p)),
            JwtError::BadClaimType(c) => write!(f, "claim {c} has the wrong type"),
            JwtError::AlgNone => f.write_str("unsigned token (alg none)"),
            JwtError::UnsupportedAlg => f.write_str("token alg is missing or unsupported"),
            JwtError::UnsupportedCrit => f.write_str("token has critical header extensions"),
            JwtError::AlgMismatch { token, key } => {
                write!(
                    f,
                    "token alg {token} does not match the key's algorithm {key}"
                )
            }
            JwtError::MissingKeyClaim => f.write_str("token has no kid or key claim to find a key"),
            JwtError::UnknownKey => f.write_str("no key for the token's kid or key claim"),
            JwtError::BadSignature => f.write_str("invalid signature"),
            JwtError::MissingClaim(c) => write!(f, "required claim {c} is missing"),
            JwtError::Expired => f.write_str("token expired"),
            JwtError::NotYetValid => f.write_str("token not valid yet"),
            JwtError::ExpirationTooFar => f.write_str("token exp exceeds the maximum expiration"),
            JwtError::IssuerMismatch => f.write_str("token issuer not allowed"),
            JwtError::AudienceMismatch => f.write_str("token audience not allowed"),
        }
    }
}

impl std::error::Error for JwtError {}
