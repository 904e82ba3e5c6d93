//! JWKS documents (RFC 7517/7518) to [`VerifyKey`]s.
//!
//! Each JWK's algorithm is fixed here, at load: its `alg` member if present, else the caller's
//! default when that fits the key type, else the only algorithm the key type allows (EC P-256 ->
//! ES256, P-384 -> ES384, Ed25519 -> EdDSA). An RSA or `oct` key with neither is an error, because
//! guessing would let either RS256 or PS256 tokens through. Keys that are not for signatures
//! (`use` other than `sig`, `key_ops` without `verify`) or of unsupported types/algorithms are
//! skipped with a reason the caller can log; a key that claims to be usable but is broken is an
//! error. Errors name keys by position and `kid` (public data), never by material.

use base64::engine::general_purpose::URL_SAFE_PAD_INDIFFERENT;
use base64::Engine;
use serde_json::Value;

use super::alg::{Alg, Family, VerifyKey};

/// One usable key from a JWKS.
#[derive(Debug)]
pub struct Jwk {
    pub kid: Option<String>,
    pub key: VerifyKey,
}

/// The usable keys of a JWKS and why the others were skipped.
#[derive(Debug)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
    pub skipped: Vec<String>,
}

/// Parses a JWKS document. `default_alg` applies to keys without an `alg` member.
pub fn parse_jwks(json: &[u8], default_alg: Option<Alg>) -> Result<Jwks, String> {
    let doc: Value =
        serde_json::from_slice(json).map_err(|e| format!("JWKS is not valid JSON: {e}"))?;
    let list = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("JWKS has no \"keys\" array")?;
    let mut out = Jwks {
        keys: Vec::new(),
        skipped: Vec::new(),
    };
    for (i, jwk) in list.iter().enumerate() {
        let kid = jwk.get("kid").and_then(Value::as_str);
        let label = match kid {
            Some(kid) => format!("JWKS keys[{i}] (kid {kid:?})"),
            None => format!("JWKS keys[{i}]"),
        };
        match parse_jwk(jwk, default_alg) {
            Ok(key) => out.keys.push(Jwk {
                kid: kid.map(str::to_string),
                key,
            }),
            Err(Skip::Skip(why)) => out.skipped.push(format!("{label} skipped: {why}")),
            Err(Skip::Bad(why)) => return Err(format!("{label}: {why}")),
        }
    }
    if out.keys.is_empty() {
        let mut msg = "JWKS has no usable signing key".to_string();
        for s in &out.skipped {
            msg.push_str("; ");
            msg.push_str(s);
        }
        return Err(msg);
    }
    Ok(out)
}

enum Skip {
    /// Not a key for us: skip it and tell why.
    Skip(String),
    /// A key that should work but is broken: a load error.
    Bad(String),
}

fn parse_jwk(jwk: &Value, default_alg: Option<Alg>) -> Result<VerifyKey, Skip> {
    if !jwk.is_object() {
        return Err(Skip::Bad("not a JSON object".into()));
    }
    let text = |name: &str| -> Result<Option<&str>, Skip> {
        match jwk.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(Skip::Bad(format!("member {name:?} is not a string"))),
        }
    };
    if let Some(u) = text("use")? {
        if u != "sig" {
            return Err(Skip::Skip(format!("use is {u:?}, not \"sig\"")));
        }
    }
    if let Some(ops) = jwk.get("key_ops") {
        let ops = ops
            .as_array()
            .ok_or_else(|| Skip::Bad("key_ops is not an array".into()))?;
        if !ops.iter().any(|o| o.as_str() == Some("verify")) {
            return Err(Skip::Skip("key_ops does not include \"verify\"".into()));
        }
    }
    let kty = text("kty")?.ok_or_else(|| Skip::Bad("missing \"kty\"".into()))?;
    let crv = text("crv")?;
    let family = match (kty, crv) {
        ("RSA", _) => Family::Rsa,
        ("oct", _) => Family::Hmac,
        ("EC", Some("P-256")) => Family::EcP256,
        ("EC", Some("P-384")) => Family::EcP384,
        ("EC", c) => return Err(Skip::Skip(format!("EC curve {c:?} is not supported"))),
        ("OKP", Some("Ed25519")) => Family::Ed25519,
        ("OKP", c) => return Err(Skip::Skip(format!("OKP curve {c:?} is not supported"))),
        (k, _) => return Err(Skip::Skip(format!("key type {k:?} is not supported"))),
    };
    let alg = match text("alg")? {
        Some(name) => match Alg::from_name(name) {
            Some(a) if a.family() == family => a,
            Some(a) => return Err(Skip::Bad(format!("alg {a} does not fit a {kty} key"))),
            None => return Err(Skip::Skip(format!("alg {name:?} is not supported"))),
        },
        None => match (default_alg.filter(|a| a.family() == family), family) {
            (Some(a), _) => a,
            (None, Family::EcP256) => Alg::ES256,
            (None, Family::EcP384) => Alg::ES384,
            (None, Family::Ed25519) => Alg::EdDSA,
            (None, _) => {
                return Err(Skip::Bad(format!(
                    "{kty} key has no \"alg\"; configure the algorithm to use for it"
                )))
            }
        },
    };
    let bytes = |name: &str| -> Result<Vec<u8>, Skip> {
        let s = text(name)?.ok_or_else(|| Skip::Bad(format!("missing {name:?}")))?;
        URL_SAFE_PAD_INDIFFERENT
            .decode(s)
            .map_err(|_| Skip::Bad(format!("member {name:?} is not valid base64url")))
    };
    let key = match family {
        Family::Rsa => VerifyKey::rsa(alg, &bytes("n")?, &bytes("e")?),
        Family::Hmac => VerifyKey::hmac(alg, &bytes("k")?, false),
        Family::EcP256 | Family::EcP384 => {
            let coord = if family == Family::EcP256 { 32 } else { 48 };
            let (x, y) = (bytes("x")?, bytes("y")?);
            if x.len() != coord || y.len() != coord {
                return Err(Skip::Bad(format!(
                    "EC coordinates must be {coord} bytes each"
                )));
            }
            let mut point = Vec::with_capacity(1 + 2 * coord);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            VerifyKey::ec(alg, family, &point)
        }
        Family::Ed25519 => VerifyKey::ed25519(alg, &bytes("x")?),
    };
    key.map_err(Skip::Bad)
}
