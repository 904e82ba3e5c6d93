//! PEM armor and the few DER structures public keys come in: SPKI (`PUBLIC KEY`, RFC 5280) for
//! RSA, EC P-256/P-384 and Ed25519, and PKCS#1 `RSAPublicKey` (`RSA PUBLIC KEY`, RFC 8017).
//!
//! Hand-written because ring verifies from raw components but does not parse SPKI, and these
//! structures are tiny: a strict definite-length TLV reader is all it takes. Invariants: every
//! read is bounds-checked (input is an operator's file, possibly wrong or truncated), trailing data
//! is an error, and error strings never quote the key material.

use base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT;
use base64::Engine;

/// A public key as found in a PEM file, before it is bound to an algorithm.
pub(crate) enum PublicKey {
    /// Big-endian modulus and exponent, as encoded (may carry a leading zero byte).
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed (or, wrongly, compressed) SEC1 points; the length check happens later.
    EcP256(Vec<u8>),
    EcP384(Vec<u8>),
    Ed25519(Vec<u8>),
}

const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_NULL: u8 = 0x05;
const TAG_OID: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;

// OID contents (the bytes after tag and length).
const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_RSASSA_PSS: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_P521: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x23];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];
const OID_ED448: &[u8] = &[0x2b, 0x65, 0x71];

/// Decodes the first PEM block of `input`: returns its label and DER bytes.
pub(crate) fn pem_decode(input: &[u8]) -> Result<(String, Vec<u8>), String> {
    const BEGIN: &[u8] = b"-----BEGIN ";
    const DASHES: &[u8] = b"-----";
    let start = find(input, BEGIN)
        .ok_or("no PEM block found (expected a line like -----BEGIN PUBLIC KEY-----)")?;
    let after_begin = input.get(start + BEGIN.len()..).unwrap_or_default();
    let label_len = find(after_begin, DASHES).ok_or("PEM BEGIN line is not closed by -----")?;
    let label = after_begin.get(..label_len).unwrap_or_default();
    if label.len() > 64
        || !label
            .iter()
            .all(|&b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b' ')
    {
        return Err("PEM BEGIN line has an invalid label".into());
    }
    let label = String::from_utf8_lossy(label).into_owned();
    let body_and_rest = after_begin
        .get(label_len + DASHES.len()..)
        .unwrap_or_default();
    let end_marker = format!("-----END {label}-----");
    let body_len = find(body_and_rest, end_marker.as_bytes())
        .ok_or_else(|| format!("PEM block {label} has no matching {end_marker} line"))?;
    let body = body_and_rest.get(..body_len).unwrap_or_default();
    if body.contains(&b':') {
        return Err(format!(
            "PEM block {label} has headers (encrypted PEM is not supported)"
        ));
    }
    let text: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let der = STANDARD_PAD_INDIFFERENT
        .decode(&text)
        .map_err(|_| format!("PEM block {label} does not contain valid base64"))?;
    Ok((label, der))
}

/// Parses a PEM public key (`PUBLIC KEY` or `RSA PUBLIC KEY`), explaining common mistakes.
pub(crate) fn parse_public_pem(input: &[u8]) -> Result<PublicKey, String> {
    let (label, der) = pem_decode(input)?;
    match label.as_str() {
        "PUBLIC KEY" => parse_spki(&der),
        "RSA PUBLIC KEY" => {
            let (n, e) = parse_pkcs1(&der)?;
            Ok(PublicKey::Rsa { n, e })
        }
        "CERTIFICATE" => Err(
            "PEM holds a certificate, not a public key; extract it with `openssl x509 -pubkey -noout`".into(),
        ),
        l if l.contains("PRIVATE KEY") => Err(
            "PEM holds a private key; configure the public key instead (`openssl pkey -pubout`)".into(),
        ),
        l => Err(format!("PEM block {l} is not a public key (expected PUBLIC KEY or RSA PUBLIC KEY)")),
    }
}

/// SubjectPublicKeyInfo ::= SEQUENCE { algorithm AlgorithmIdentifier, subjectPublicKey BIT STRING }
pub(crate) fn parse_spki(der: &[u8]) -> Result<PublicKey, String> {
    let mut outer = Reader::new(der);
    let mut spki = Reader::new(outer.expect(TAG_SEQUENCE, "SubjectPublicKeyInfo")?);
    outer.finish("SubjectPublicKeyInfo")?;
    let mut alg = Reader::new(spki.expect(TAG_SEQUENCE, "AlgorithmIdentifier")?);
    let bits = spki.expect(TAG_BIT_STRING, "subjectPublicKey")?;
    spki.finish("SubjectPublicKeyInfo")?;
    let key = match bits.split_first() {
        Some((0, key)) => key,
        _ => return Err("SPKI: subjectPublicKey BIT STRING is malformed".into()),
    };
    let oid = alg.expect(TAG_OID, "algorithm OID")?;
    if oid == OID_RSA_ENCRYPTION {
        // Parameters must be NULL (or, leniently, absent).
        if !alg.is_empty() {
            alg.expect(TAG_NULL, "RSA parameters")?;
        }
        alg.finish("RSA AlgorithmIdentifier")?;
        let (n, e) = parse_pkcs1(key)?;
        Ok(PublicKey::Rsa { n, e })
    } else if oid == OID_EC_PUBLIC_KEY {
        let curve = alg.expect(
            TAG_OID,
            "EC named curve (explicit curve parameters are not supported)",
        )?;
        alg.finish("EC AlgorithmIdentifier")?;
        if curve == OID_P256 {
            Ok(PublicKey::EcP256(key.to_vec()))
        } else if curve == OID_P384 {
            Ok(PublicKey::EcP384(key.to_vec()))
        } else if curve == OID_P521 {
            Err(
                "EC P-521 keys (ES512) are not supported; use P-256 (ES256) or P-384 (ES384)"
                    .into(),
            )
        } else {
            Err("EC key on an unsupported curve; use P-256 (ES256) or P-384 (ES384)".into())
        }
    } else if oid == OID_ED25519 {
        alg.finish("Ed25519 AlgorithmIdentifier (must have no parameters)")?;
        Ok(PublicKey::Ed25519(key.to_vec()))
    } else if oid == OID_RSASSA_PSS {
        Err("RSASSA-PSS-restricted SPKI keys are not supported; export the key as rsaEncryption (PS256 works with it)".into())
    } else if oid == OID_ED448 {
        Err("Ed448 keys are not supported; EdDSA here means Ed25519".into())
    } else {
        Err("public key of an unsupported type (expected RSA, EC P-256/P-384 or Ed25519)".into())
    }
}

/// RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }
pub(crate) fn parse_pkcs1(der: &[u8]) -> Result<(Vec<u8>, Vec<u8>), String> {
    let mut outer = Reader::new(der);
    let mut seq = Reader::new(outer.expect(TAG_SEQUENCE, "RSAPublicKey")?);
    outer.finish("RSAPublicKey")?;
    let n = seq.expect(TAG_INTEGER, "RSA modulus")?;
    let e = seq.expect(TAG_INTEGER, "RSA exponent")?;
    seq.finish("RSAPublicKey")?;
    for (v, what) in [(n, "modulus"), (e, "exponent")] {
        if v.first().is_none_or(|&b| b & 0x80 != 0) {
            return Err(format!("RSA {what} is empty or negative"));
        }
    }
    Ok((n.to_vec(), e.to_vec()))
}

/// A strict DER reader over one level of TLVs.
struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Reads one TLV with tag `tag` and returns its contents; `what` names it in errors.
    fn expect(&mut self, tag: u8, what: &str) -> Result<&'a [u8], String> {
        let bad = || format!("DER: malformed or missing {what}");
        let (&t, rest) = self.data.split_first().ok_or_else(bad)?;
        if t != tag {
            return Err(bad());
        }
        let (&l, mut rest) = rest.split_first().ok_or_else(bad)?;
        let len = if l < 0x80 {
            usize::from(l)
        } else {
            // Long form: 1..=3 length bytes is plenty for any public key (and stops overflow).
            let count = usize::from(l & 0x7f);
            if count == 0 || count > 3 {
                return Err(bad());
            }
            let (bytes, after) = rest.split_at_checked(count).ok_or_else(bad)?;
            rest = after;
            bytes.iter().fold(0usize, |v, &b| (v << 8) | usize::from(b))
        };
        let (value, after) = rest.split_at_checked(len).ok_or_else(bad)?;
        self.data = after;
        Ok(value)
    }

    fn finish(&self, what: &str) -> Result<(), String> {
        if self.data.is_empty() {
            Ok(())
        } else {
            Err(format!("DER: trailing data after {what}"))
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}
