//! Compact JWS parsing for the cold path: split the three segments, decode the header (algorithm,
//! `kid`, `crit`) and the claims object, read NumericDate claims.
//!
//! Invariants: nothing here trusts the token: every slice access is checked, JSON is parsed with
//! serde_json (no recursion-depth or size surprises beyond the caller's token-size limit, which is
//! enforced before this runs), duplicate claim names are rejected (so no two readers of the same
//! token can disagree on which `exp` or `sub` counts), and errors carry only a fixed reason.

use std::borrow::Cow;
use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Number, Value};

use super::alg::Alg;
use super::{JwtError, Part};

/// The three segments of a compact JWS, still base64url-encoded.
pub(crate) struct Segments<'t> {
    pub header: &'t [u8],
    pub claims: &'t [u8],
    pub signature: &'t [u8],
    /// `header.claims`, the bytes the signature covers.
    pub signing_input: &'t [u8],
}

pub(crate) fn split(token: &[u8]) -> Result<Segments<'_>, JwtError> {
    let mut parts = token.split(|&b| b == b'.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::MalformedSegments);
    };
    if header.is_empty() || claims.is_empty() {
        return Err(JwtError::MalformedSegments);
    }
    let signing_input = token
        .get(..header.len() + 1 + claims.len())
        .ok_or(JwtError::MalformedSegments)?;
    Ok(Segments {
        header,
        claims,
        signature,
        signing_input,
    })
}

/// Strict base64url without padding (RFC 7515 section 2); non-canonical trailing bits rejected.
pub(crate) fn b64_decode(segment: &[u8], part: Part) -> Result<Vec<u8>, JwtError> {
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| JwtError::MalformedBase64(part))
}

/// Decodes into `out` without allocating; returns the decoded length.
pub(crate) fn b64_decode_into(
    segment: &[u8],
    out: &mut [u8],
    part: Part,
) -> Result<usize, JwtError> {
    URL_SAFE_NO_PAD
        .decode_slice(segment, out)
        .map_err(|_| JwtError::MalformedBase64(part))
}

/// What the verifier needs from the JOSE header.
pub(crate) struct Header {
    pub alg: Alg,
    pub kid: Option<String>,
}

#[derive(Deserialize)]
struct RawHeader<'a> {
    #[serde(borrow, default)]
    alg: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    kid: Option<Cow<'a, str>>,
    #[serde(default)]
    crit: Option<IgnoredAny>,
}

pub(crate) fn parse_header(segment: &[u8]) -> Result<Header, JwtError> {
    let json = b64_decode(segment, Part::Header)?;
    let raw: RawHeader<'_> =
        serde_json::from_slice(&json).map_err(|_| JwtError::MalformedJson(Part::Header))?;
    let alg = match raw.alg.as_deref() {
        None => return Err(JwtError::UnsupportedAlg),
        // "none" is case-sensitive in RFC 7515, but any spelling of it is an attack worth naming.
        Some(a) if a.eq_ignore_ascii_case("none") => return Err(JwtError::AlgNone),
        Some(a) => Alg::from_name(a).ok_or(JwtError::UnsupportedAlg)?,
    };
    // RFC 7515 section 4.1.11: extensions listed in crit must be understood; we understand none.
    if raw.crit.is_some() {
        return Err(JwtError::UnsupportedCrit);
    }
    Ok(Header {
        alg,
        kid: raw.kid.map(Cow::into_owned),
    })
}

/// The claims object, with duplicate names rejected.
pub(crate) struct Claims(pub Map<String, Value>);

impl<'de> Deserialize<'de> for Claims {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = Claims;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Claims, A::Error> {
                let mut map = Map::new();
                while let Some(name) = access.next_key::<String>()? {
                    let value: Value = access.next_value()?;
                    if map.insert(name, value).is_some() {
                        return Err(de::Error::custom("duplicate claim"));
                    }
                }
                Ok(Claims(map))
            }
        }
        d.deserialize_map(ObjectVisitor)
    }
}

pub(crate) fn parse_claims(segment: &[u8]) -> Result<Claims, JwtError> {
    let json = b64_decode(segment, Part::Claims)?;
    serde_json::from_slice(&json).map_err(|_| JwtError::MalformedJson(Part::Claims))
}

impl Claims {
    /// A NumericDate claim in whole seconds: absent -> `None`, not a number -> error. Fractions
    /// round toward the stricter side (`round_up` for nbf, down for exp), negatives clamp to 0 and
    /// huge values to `u64::MAX` (the float-to-int cast saturates).
    pub fn numeric_date(
        &self,
        name: &'static str,
        round_up: bool,
    ) -> Result<Option<u64>, JwtError> {
        match self.0.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => seconds(n, round_up)
                .map(Some)
                .ok_or(JwtError::BadClaimType(name)),
            Some(_) => Err(JwtError::BadClaimType(name)),
        }
    }

    /// A claim that must be a string when present (e.g. `iss`).
    pub fn string(&self, name: &'static str) -> Result<Option<&str>, JwtError> {
        match self.0.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(JwtError::BadClaimType(name)),
        }
    }
}

/// `None` for a number no float holds (`1e400`: numbers keep their text, so such a claim parses).
fn seconds(n: &Number, round_up: bool) -> Option<u64> {
    if let Some(u) = n.as_u64() {
        return Some(u);
    }
    if n.is_i64() {
        return Some(0); // a negative integer
    }
    let f = n.as_f64().filter(|f| f.is_finite())?;
    let f = if round_up { f.ceil() } else { f.floor() };
    Some(f as u64)
}
