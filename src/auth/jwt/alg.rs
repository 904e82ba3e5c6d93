//! Signature algorithms and verification keys.
//!
//! Invariants:
//! - a [`VerifyKey`]'s algorithm is fixed when the key is built, and its material always fits that
//!   algorithm (an HMAC secret for HS*, an RSA modulus/exponent ring accepts for RS*/PS256, an
//!   uncompressed point of the right curve size for ES*, 32 bytes for EdDSA). Verification never lets
//!   a token's `alg` choose how the material is used: the caller compares the token's `alg` with
//!   [`VerifyKey::alg`] first, and `verify` only ever runs the key's own algorithm. That is what
//!   defeats the HS256-with-the-RSA-public-key confusion attack.
//! - nothing here formats key material or token bytes into an error or `Debug` output.

use std::fmt;

use base64::engine::general_purpose::{STANDARD_PAD_INDIFFERENT, URL_SAFE_PAD_INDIFFERENT};
use base64::Engine;
use ring::{hmac, signature};

use super::der::{self, PublicKey};

/// A JWS algorithm this module verifies (RFC 7518 names; `EdDSA` means Ed25519 here).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Alg {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    ES256,
    ES384,
    EdDSA,
}

/// Which kind of key material an algorithm needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    Hmac,
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl Alg {
    pub const ALL: [Alg; 10] = [
        Alg::HS256,
        Alg::HS384,
        Alg::HS512,
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::ES256,
        Alg::ES384,
        Alg::EdDSA,
    ];

    /// The algorithm named `name` (case-sensitive, as RFC 7515 requires), or `None`.
    pub fn from_name(name: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Alg::HS256 => "HS256",
            Alg::HS384 => "HS384",
            Alg::HS512 => "HS512",
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::EdDSA => "EdDSA",
        }
    }

    pub(crate) fn family(self) -> Family {
        match self {
            Alg::HS256 | Alg::HS384 | Alg::HS512 => Family::Hmac,
            Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 => Family::Rsa,
            Alg::ES256 => Family::EcP256,
            Alg::ES384 => Family::EcP384,
            Alg::EdDSA => Family::Ed25519,
        }
    }

    /// True for the HMAC algorithms (shared secret rather than public key).
    pub fn is_hmac(self) -> bool {
        self.family() == Family::Hmac
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Key material, already checked against the key's algorithm.
enum Material {
    Hmac(hmac::Key),
    /// Big-endian modulus and exponent without leading zero bytes (ring rejects them).
    Rsa {
        n: Box<[u8]>,
        e: Box<[u8]>,
    },
    /// ES*: the uncompressed SEC1 point; EdDSA: the 32-byte public key.
    Raw(Box<[u8]>),
}

/// One verification key with its fixed algorithm.
pub struct VerifyKey {
    alg: Alg,
    material: Material,
}

impl fmt::Debug for VerifyKey {
    // Never prints material: an HMAC secret is a credential.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyKey")
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// Largest RSA modulus ring verifies, in bits; also bounds the signature buffer.
pub(crate) const RSA_MAX_BITS: usize = 8192;
const RSA_MIN_BITS: usize = 2048;

impl VerifyKey {
    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// An HS256/384/512 key from a shared secret. With `secret_is_base64` (Kong's option of the
    /// same name) the secret is base64 text (standard or URL-safe alphabet, padding optional,
    /// surrounding whitespace ignored) and its decoded bytes are the key.
    pub fn hmac(alg: Alg, secret: &[u8], secret_is_base64: bool) -> Result<VerifyKey, String> {
        let algorithm = match alg {
            Alg::HS256 => hmac::HMAC_SHA256,
            Alg::HS384 => hmac::HMAC_SHA384,
            Alg::HS512 => hmac::HMAC_SHA512,
            other => {
                return Err(format!(
                    "{other} verifies with a public key, not a shared secret; use an HS* algorithm for a secret"
                ))
            }
        };
        let decoded;
        let key: &[u8] = if secret_is_base64 {
            let text = secret.trim_ascii();
            decoded = STANDARD_PAD_INDIFFERENT
                .decode(text)
                .or_else(|_| URL_SAFE_PAD_INDIFFERENT.decode(text))
                .map_err(|_| "secret is not valid base64 (secret_is_base64 is set)".to_string())?;
            &decoded
        } else {
            secret
        };
        if key.is_empty() {
            return Err("secret is empty".into());
        }
        Ok(VerifyKey {
            alg,
            material: Material::Hmac(hmac::Key::new(algorithm, key)),
        })
    }

    /// A public key from PEM text: `PUBLIC KEY` (SPKI; RSA, EC P-256/P-384 or Ed25519) or
    /// `RSA PUBLIC KEY` (PKCS#1). The key type must fit `alg` (RS*/PS256 need RSA, ES256 a P-256
    /// key, ES384 a P-384 key, EdDSA an Ed25519 key).
    pub fn from_pem(alg: Alg, pem: &[u8]) -> Result<VerifyKey, String> {
        if alg.is_hmac() {
            return Err(format!(
                "{alg} takes a shared secret, not a PEM public key; use an RS*/PS256/ES*/EdDSA algorithm for a public key"
            ));
        }
        match der::parse_public_pem(pem)? {
            PublicKey::Rsa { n, e } => VerifyKey::rsa(alg, &n, &e),
            PublicKey::EcP256(point) => VerifyKey::ec(alg, Family::EcP256, &point),
            PublicKey::EcP384(point) => VerifyKey::ec(alg, Family::EcP384, &point),
            PublicKey::Ed25519(raw) => VerifyKey::ed25519(alg, &raw),
        }
    }

    /// An RSA key from big-endian modulus and exponent (leading zero bytes allowed).
    pub(crate) fn rsa(alg: Alg, n: &[u8], e: &[u8]) -> Result<VerifyKey, String> {
        if alg.family() != Family::Rsa {
            return Err(format!("the key is an RSA key, which cannot verify {alg}"));
        }
        let n = strip_leading_zeros(n);
        let e = strip_leading_zeros(e);
        let bits = match n.first() {
            Some(&top) => n.len() * 8 - top.leading_zeros() as usize,
            None => 0,
        };
        if bits < RSA_MIN_BITS {
            return Err(format!(
                "RSA key has {bits} bits; at least {RSA_MIN_BITS} are required"
            ));
        }
        if bits > RSA_MAX_BITS {
            return Err(format!(
                "RSA key has {bits} bits; at most {RSA_MAX_BITS} are supported"
            ));
        }
        if n.last().is_some_and(|b| b & 1 == 0) {
            return Err("RSA modulus is even, so not a valid RSA key".into());
        }
        // ring accepts exponents in [3, 2^33 - 1], odd.
        let e_value = if e.len() <= 5 {
            e.iter().fold(0u64, |v, &b| (v << 8) | u64::from(b))
        } else {
            0
        };
        if !(3..(1 << 33)).contains(&e_value) || e_value & 1 == 0 {
            return Err("RSA public exponent must be odd, at least 3 and below 2^33".into());
        }
        Ok(VerifyKey {
            alg,
            material: Material::Rsa {
                n: n.into(),
                e: e.into(),
            },
        })
    }

    /// An EC key from an uncompressed SEC1 point on `curve`.
    pub(crate) fn ec(alg: Alg, curve: Family, point: &[u8]) -> Result<VerifyKey, String> {
        let (name, len) = match curve {
            Family::EcP256 => ("P-256", 65),
            Family::EcP384 => ("P-384", 97),
            _ => return Err("not an EC curve".into()),
        };
        if alg.family() != curve {
            let wanted = match alg.family() {
                Family::EcP256 => "ES256 needs a P-256 key",
                Family::EcP384 => "ES384 needs a P-384 key",
                _ => "an EC key verifies only ES256 (P-256) or ES384 (P-384)",
            };
            return Err(format!(
                "the key is an EC {name} key, which cannot verify {alg}: {wanted}"
            ));
        }
        if point.len() != len || point.first() != Some(&4) {
            return Err(format!(
                "EC {name} public key must be an uncompressed point of {len} bytes (compressed points are not supported)"
            ));
        }
        // On-curve validity is checked by ring at each verification; an invalid point never verifies.
        Ok(VerifyKey {
            alg,
            material: Material::Raw(point.into()),
        })
    }

    /// An Ed25519 key from its 32 raw bytes.
    pub(crate) fn ed25519(alg: Alg, raw: &[u8]) -> Result<VerifyKey, String> {
        if alg != Alg::EdDSA {
            return Err(format!(
                "the key is an Ed25519 key, which verifies only EdDSA, not {alg}"
            ));
        }
        if raw.len() != 32 {
            return Err("Ed25519 public key must be 32 bytes".into());
        }
        Ok(VerifyKey {
            alg,
            material: Material::Raw(raw.into()),
        })
    }

    /// Checks `sig` over `msg` with this key's own algorithm. Constant-time for HMAC (ring).
    pub(crate) fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        match &self.material {
            Material::Hmac(key) => hmac::verify(key, msg, sig).is_ok(),
            Material::Rsa { n, e } => {
                let params: &signature::RsaParameters = match self.alg {
                    Alg::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                    Alg::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                    Alg::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                    Alg::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
                    _ => return false,
                };
                let key = signature::RsaPublicKeyComponents {
                    n: &n[..],
                    e: &e[..],
                };
                key.verify(params, msg, sig).is_ok()
            }
            Material::Raw(raw) => {
                let algorithm: &dyn signature::VerificationAlgorithm = match self.alg {
                    Alg::ES256 => &signature::ECDSA_P256_SHA256_FIXED,
                    Alg::ES384 => &signature::ECDSA_P384_SHA384_FIXED,
                    Alg::EdDSA => &signature::ED25519,
                    _ => return false,
                };
                signature::UnparsedPublicKey::new(algorithm, &raw[..])
                    .verify(msg, sig)
                    .is_ok()
            }
        }
    }
}

fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    b.get(start..).unwrap_or_default()
}
