//! Tests for JWT verification: every algorithm, every rejection, key lookup, JWKS, the cache, and
//! garbage inputs. Test tokens are signed with ring from the fixtures in `tests/data/jwt/`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::{Rng, SeedableRng};
use ring::rand::SystemRandom;
use ring::signature as sig;

use super::*;

const NOW: u64 = 1_700_000_000;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/jwt/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// Signs `msg` with `private` (a secret for HS*, PKCS#8 DER otherwise).
fn sign(alg: Alg, private: &[u8], msg: &[u8]) -> Vec<u8> {
    let rng = SystemRandom::new();
    let hmac = |a| {
        ring::hmac::sign(&ring::hmac::Key::new(a, private), msg)
            .as_ref()
            .to_vec()
    };
    let rsa = |enc: &'static dyn sig::RsaEncoding| {
        let kp = sig::RsaKeyPair::from_pkcs8(private).unwrap();
        let mut out = vec![0; kp.public().modulus_len()];
        kp.sign(enc, &rng, msg, &mut out).unwrap();
        out
    };
    let ec = |a| {
        let kp = sig::EcdsaKeyPair::from_pkcs8(a, private, &rng).unwrap();
        kp.sign(&rng, msg).unwrap().as_ref().to_vec()
    };
    match alg {
        Alg::HS256 => hmac(ring::hmac::HMAC_SHA256),
        Alg::HS384 => hmac(ring::hmac::HMAC_SHA384),
        Alg::HS512 => hmac(ring::hmac::HMAC_SHA512),
        Alg::RS256 => rsa(&sig::RSA_PKCS1_SHA256),
        Alg::RS384 => rsa(&sig::RSA_PKCS1_SHA384),
        Alg::RS512 => rsa(&sig::RSA_PKCS1_SHA512),
        Alg::PS256 => rsa(&sig::RSA_PSS_SHA256),
        Alg::ES256 => ec(&sig::ECDSA_P256_SHA256_FIXED_SIGNING),
        Alg::ES384 => ec(&sig::ECDSA_P384_SHA384_FIXED_SIGNING),
        Alg::EdDSA => {
            let kp = sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(private).unwrap();
            kp.sign(msg).as_ref().to_vec()
        }
    }
}

/// A token with header `{"alg":alg[,"kid":kid]}` and the given claims JSON.
fn make(alg: Alg, private: &[u8], kid: Option<&str>, claims: &str) -> String {
    let header = match kid {
        Some(k) => format!(r#"{{"alg":"{alg}","typ":"JWT","kid":"{k}"}}"#),
        None => format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#),
    };
    make_raw(&header, claims, |m| sign(alg, private, m))
}

fn make_raw(header: &str, claims: &str, signer: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
    let s = signer(input.as_bytes());
    format!("{input}.{}", b64(&s))
}

const SECRET: &[u8] = b"a-test-secret-of-32-bytes-length";

/// Private key and verification key for `alg` from the fixtures.
fn keypair(alg: Alg) -> (Vec<u8>, VerifyKey) {
    match alg {
        Alg::HS256 | Alg::HS384 | Alg::HS512 => (
            SECRET.to_vec(),
            VerifyKey::hmac(alg, SECRET, false).unwrap(),
        ),
        Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 => (
            fixture("rsa_a.pk8.der"),
            VerifyKey::from_pem(alg, &fixture("rsa_a.pub.pem")).unwrap(),
        ),
        Alg::ES256 => (
            fixture("ec_p256.pk8.der"),
            VerifyKey::from_pem(alg, &fixture("ec_p256.pub.pem")).unwrap(),
        ),
        Alg::ES384 => (
            fixture("ec_p384.pk8.der"),
            VerifyKey::from_pem(alg, &fixture("ec_p384.pub.pem")).unwrap(),
        ),
        Alg::EdDSA => (
            fixture("ed25519.pk8.der"),
            VerifyKey::from_pem(alg, &fixture("ed25519.pub.pem")).unwrap(),
        ),
    }
}

/// A store with one key for `alg` under key string "issuer", owner 42.
fn single(alg: Alg) -> (Vec<u8>, KeyStore) {
    let (private, key) = keypair(alg);
    let mut b = KeyStoreBuilder::new();
    b.add_key(key, None, Some("issuer"), 42).unwrap();
    (private, b.build())
}

fn auth(store: &KeyStore, token: &str, rules: &Rules, now: u64) -> Result<Verified, JwtError> {
    store.authenticate(token.as_bytes(), rules, now, &mut TokenCache::new(0))
}

#[test]
fn every_algorithm_verifies() {
    let mut b = KeyStoreBuilder::new();
    let mut privates = Vec::new();
    for (i, alg) in Alg::ALL.into_iter().enumerate() {
        let (private, key) = keypair(alg);
        assert_eq!(key.alg(), alg);
        b.add_key(key, None, Some(&format!("k-{alg}")), i).unwrap();
        privates.push(private);
    }
    let store = b.build();
    for (i, alg) in Alg::ALL.into_iter().enumerate() {
        let claims = format!(r#"{{"iss":"k-{alg}","sub":"u1"}}"#);
        let t = make(alg, &privates[i], None, &claims);
        let v = auth(&store, &t, &Rules::default(), NOW).unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!((v.owner, v.key, v.cached), (i, i, false), "{alg}");
        assert_eq!(store.key_name(v.key), Some(format!("k-{alg}").as_str()));
        assert_eq!(Alg::from_name(alg.name()), Some(alg));
    }
}

#[test]
fn pkcs1_pem_and_fresh_rcgen_keys() {
    let key = VerifyKey::from_pem(Alg::RS256, &fixture("rsa_a.pkcs1.pem")).unwrap();
    let mut b = KeyStoreBuilder::new();
    b.add_key(key, Some("p1"), None, 1).unwrap();
    for (alg, rc) in [
        (Alg::ES256, &rcgen::PKCS_ECDSA_P256_SHA256),
        (Alg::ES384, &rcgen::PKCS_ECDSA_P384_SHA384),
        (Alg::EdDSA, &rcgen::PKCS_ED25519),
    ] {
        let kp = rcgen::KeyPair::generate_for(rc).unwrap();
        let key = VerifyKey::from_pem(alg, kp.public_key_pem().as_bytes()).unwrap();
        b.add_key(key, Some(alg.name()), None, 2).unwrap();
        let store_tmp = {
            let mut b2 = KeyStoreBuilder::new();
            let k = VerifyKey::from_pem(alg, kp.public_key_pem().as_bytes()).unwrap();
            b2.add_key(k, Some("x"), None, 3).unwrap();
            b2.build()
        };
        let t = make(alg, &kp.serialize_der(), Some("x"), "{}");
        assert_eq!(
            auth(&store_tmp, &t, &Rules::default(), NOW).unwrap().owner,
            3,
            "{alg}"
        );
    }
    let store = b.build();
    let t = make(Alg::RS256, &fixture("rsa_a.pk8.der"), Some("p1"), "{}");
    assert_eq!(auth(&store, &t, &Rules::default(), NOW).unwrap().owner, 1);
}

#[test]
fn base64_secret() {
    let text = URL_SAFE_NO_PAD.encode(b"\x00\xffbinary secret\x01");
    let std_text = base64::engine::general_purpose::STANDARD.encode(b"\x00\xffbinary secret\x01");
    for t in [&text, &std_text] {
        let key = VerifyKey::hmac(Alg::HS256, t.as_bytes(), true).unwrap();
        let mut b = KeyStoreBuilder::new();
        b.add_key(key, None, Some("issuer"), 0).unwrap();
        let store = b.build();
        let good = make(
            Alg::HS256,
            b"\x00\xffbinary secret\x01",
            None,
            r#"{"iss":"issuer"}"#,
        );
        assert!(auth(&store, &good, &Rules::default(), NOW).is_ok());
        let text_signed = make(Alg::HS256, t.as_bytes(), None, r#"{"iss":"issuer"}"#);
        assert_eq!(
            auth(&store, &text_signed, &Rules::default(), NOW),
            Err(JwtError::BadSignature)
        );
    }
    let err = VerifyKey::hmac(Alg::HS256, b"SECRETMARKER!!*", true).unwrap_err();
    assert!(
        err.contains("base64") && !err.contains("SECRETMARKER"),
        "{err}"
    );
    assert!(VerifyKey::hmac(Alg::HS256, b"", false).is_err());
    assert!(VerifyKey::hmac(Alg::HS256, b"  ", true).is_err());
    assert!(VerifyKey::hmac(Alg::RS256, SECRET, false)
        .unwrap_err()
        .contains("public key"));
    assert!(
        !format!("{:?}", VerifyKey::hmac(Alg::HS256, SECRET, false).unwrap()).contains("secret")
    );
}

#[test]
fn alg_none_and_unsupported() {
    let (_, store) = single(Alg::HS256);
    let r = Rules::default();
    for none in ["none", "NONE", "None"] {
        let t = format!(
            "{}.{}.",
            b64(format!(r#"{{"alg":"{none}"}}"#).as_bytes()),
            b64(br#"{"iss":"issuer"}"#)
        );
        assert_eq!(auth(&store, &t, &r, NOW), Err(JwtError::AlgNone));
    }
    let claims = r#"{"iss":"issuer"}"#;
    let hs = |h: &str| make_raw(h, claims, |m| sign(Alg::HS256, SECRET, m));
    assert_eq!(
        auth(&store, &hs(r#"{"alg":"HS1"}"#), &r, NOW),
        Err(JwtError::UnsupportedAlg)
    );
    assert_eq!(
        auth(&store, &hs(r#"{"alg":"hs256"}"#), &r, NOW),
        Err(JwtError::UnsupportedAlg)
    );
    assert_eq!(
        auth(&store, &hs(r#"{"typ":"JWT"}"#), &r, NOW),
        Err(JwtError::UnsupportedAlg)
    );
    assert_eq!(
        auth(
            &store,
            &hs(r#"{"alg":"HS256","crit":["b64"],"b64":false}"#),
            &r,
            NOW
        ),
        Err(JwtError::UnsupportedCrit)
    );
    assert_eq!(
        auth(&store, &hs(r#"{"alg":"HS256","alg":"HS256"}"#), &r, NOW),
        Err(JwtError::MalformedJson(Part::Header))
    );
    assert_eq!(
        auth(&store, &hs(r#"{"alg":256}"#), &r, NOW),
        Err(JwtError::MalformedJson(Part::Header))
    );
    assert!(auth(
        &store,
        &hs(r#"{"alg":"HS256","typ":"JWT","x":[1,{}]}"#),
        &r,
        NOW
    )
    .is_ok());
}

#[test]
fn alg_confusion_is_rejected() {
    let pem = fixture("rsa_a.pub.pem");
    let mut b = KeyStoreBuilder::new();
    b.add_key(
        VerifyKey::from_pem(Alg::RS256, &pem).unwrap(),
        Some("rsa"),
        Some("issuer"),
        1,
    )
    .unwrap();
    b.add_key(
        VerifyKey::from_pem(Alg::ES384, &fixture("ec_p384.pub.pem")).unwrap(),
        Some("ec"),
        None,
        2,
    )
    .unwrap();
    b.add_key(
        VerifyKey::hmac(Alg::HS256, SECRET, false).unwrap(),
        Some("hs"),
        None,
        3,
    )
    .unwrap();
    let store = b.build();
    let r = Rules::default();
    // The classic attack: HS256 with the RSA public key PEM as the HMAC secret.
    let forged = make(Alg::HS256, &pem, None, r#"{"iss":"issuer"}"#);
    assert_eq!(
        auth(&store, &forged, &r, NOW),
        Err(JwtError::AlgMismatch {
            token: Alg::HS256,
            key: Alg::RS256
        })
    );
    let forged_kid = make(Alg::HS256, &pem, Some("rsa"), "{}");
    assert!(matches!(
        auth(&store, &forged_kid, &r, NOW),
        Err(JwtError::AlgMismatch { .. })
    ));
    // Same key family, other algorithm: still refused.
    let ps = make(Alg::PS256, &fixture("rsa_a.pk8.der"), Some("rsa"), "{}");
    assert_eq!(
        auth(&store, &ps, &r, NOW),
        Err(JwtError::AlgMismatch {
            token: Alg::PS256,
            key: Alg::RS256
        })
    );
    let es = make(Alg::ES256, &fixture("ec_p256.pk8.der"), Some("ec"), "{}");
    assert!(matches!(
        auth(&store, &es, &r, NOW),
        Err(JwtError::AlgMismatch { .. })
    ));
    let rs = make(Alg::RS256, &fixture("rsa_a.pk8.der"), Some("hs"), "{}");
    assert!(matches!(
        auth(&store, &rs, &r, NOW),
        Err(JwtError::AlgMismatch { .. })
    ));
}

#[test]
fn malformed_tokens() {
    let (_, store) = single(Alg::HS256);
    let r = Rules::default();
    let good = make(Alg::HS256, SECRET, None, r#"{"iss":"issuer"}"#);
    let parts: Vec<&str> = good.split('.').collect();
    let cases: Vec<(String, JwtError)> = vec![
        ("".into(), JwtError::MalformedSegments),
        ("abc".into(), JwtError::MalformedSegments),
        ("a.b".into(), JwtError::MalformedSegments),
        (format!("{good}.x"), JwtError::MalformedSegments),
        (
            format!(".{}.{}", parts[1], parts[2]),
            JwtError::MalformedSegments,
        ),
        (
            format!("{}..{}", parts[0], parts[2]),
            JwtError::MalformedSegments,
        ),
        (
            format!("!!.{}.{}", parts[1], parts[2]),
            JwtError::MalformedBase64(Part::Header),
        ),
        (
            format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
            JwtError::MalformedBase64(Part::Header),
        ),
        (
            format!("{}.{}.{}", b64(b"not json"), parts[1], parts[2]),
            JwtError::MalformedJson(Part::Header),
        ),
        (
            format!("{}.{}.{}", b64(b"[1]"), parts[1], parts[2]),
            JwtError::MalformedJson(Part::Header),
        ),
        (
            format!("{}.%%.{}", parts[0], parts[2]),
            JwtError::MalformedBase64(Part::Claims),
        ),
        (
            format!("{}.{}.{}", parts[0], b64(b"[1,2]"), parts[2]),
            JwtError::MalformedJson(Part::Claims),
        ),
        (
            format!("{}.{}.{}", parts[0], b64(b"{\"iss\":"), parts[2]),
            JwtError::MalformedJson(Part::Claims),
        ),
        (
            format!("{}.{}.***", parts[0], parts[1]),
            JwtError::MalformedBase64(Part::Signature),
        ),
        (
            format!("{}.{}.{}=", parts[0], parts[1], parts[2]),
            JwtError::MalformedBase64(Part::Signature),
        ),
        (
            format!("{}.{}.{}", parts[0], parts[1], "A".repeat(5000)),
            JwtError::BadSignature,
        ),
        (
            format!("{}.{}.", parts[0], parts[1]),
            JwtError::BadSignature,
        ),
        (
            format!("{}.{}.{}", parts[0], parts[1], &parts[2][..20]),
            JwtError::BadSignature,
        ),
    ];
    let big = Rules {
        max_token_bytes: 1 << 20,
        ..Rules::default()
    };
    for (t, want) in cases {
        assert_eq!(auth(&store, &t, &big, NOW), Err(want), "{t}");
    }
    // Duplicate claim names: ambiguous, so rejected even when correctly signed.
    let dup = make(
        Alg::HS256,
        SECRET,
        None,
        r#"{"iss":"issuer","sub":"a","sub":"b"}"#,
    );
    assert_eq!(
        auth(&store, &dup, &r, NOW),
        Err(JwtError::MalformedJson(Part::Claims))
    );
    assert!(auth(&store, &good, &r, NOW).is_ok());
}

#[test]
fn oversized_token() {
    let (_, store) = single(Alg::HS256);
    let t = make(Alg::HS256, SECRET, None, r#"{"iss":"issuer"}"#);
    let exact = Rules {
        max_token_bytes: t.len(),
        ..Rules::default()
    };
    assert!(auth(&store, &t, &exact, NOW).is_ok());
    let less = Rules {
        max_token_bytes: t.len() - 1,
        ..Rules::default()
    };
    assert_eq!(auth(&store, &t, &less, NOW), Err(JwtError::TooLarge));
    let huge = "a".repeat(100_000);
    assert_eq!(
        auth(&store, &huge, &Rules::default(), NOW),
        Err(JwtError::TooLarge)
    );
}

#[test]
fn bad_signatures() {
    let (private, store) = single(Alg::RS256);
    let r = Rules::default();
    let t = make(
        Alg::RS256,
        &private,
        None,
        r#"{"iss":"issuer","sub":"alice"}"#,
    );
    assert!(auth(&store, &t, &r, NOW).is_ok());
    // Claims swapped for others, signature kept.
    let other = make(
        Alg::RS256,
        &private,
        None,
        r#"{"iss":"issuer","sub":"admin"}"#,
    );
    let (a, b) = (
        t.split('.').collect::<Vec<_>>(),
        other.split('.').collect::<Vec<_>>(),
    );
    let spliced = format!("{}.{}.{}", a[0], b[1], a[2]);
    assert_eq!(auth(&store, &spliced, &r, NOW), Err(JwtError::BadSignature));
    // Signed by another RSA key.
    let wrong = make(
        Alg::RS256,
        &fixture("rsa_b.pk8.der"),
        None,
        r#"{"iss":"issuer"}"#,
    );
    assert_eq!(auth(&store, &wrong, &r, NOW), Err(JwtError::BadSignature));
    // HMAC with the wrong secret.
    let (_, hs) = single(Alg::HS512);
    let wrong = make(Alg::HS512, b"another secret", None, r#"{"iss":"issuer"}"#);
    assert_eq!(auth(&hs, &wrong, &r, NOW), Err(JwtError::BadSignature));
}

fn hs_claims(
    store: &KeyStore,
    claims: &str,
    rules: &Rules,
    now: u64,
) -> Result<Verified, JwtError> {
    auth(store, &make(Alg::HS256, SECRET, None, claims), rules, now)
}

#[test]
fn exp_nbf_and_leeway() {
    let (_, store) = single(Alg::HS256);
    let exp = Rules {
        verify_exp: true,
        ..Rules::default()
    };
    let c = |e: &str| format!(r#"{{"iss":"issuer","exp":{e}}}"#);
    assert_eq!(
        hs_claims(&store, &c("1700000001"), &exp, NOW).unwrap().exp,
        Some(1_700_000_001)
    );
    assert_eq!(
        hs_claims(&store, &c("1700000000"), &exp, NOW),
        Err(JwtError::Expired)
    );
    assert_eq!(
        hs_claims(&store, &c("-5"), &exp, NOW),
        Err(JwtError::Expired)
    );
    assert_eq!(
        hs_claims(&store, &c("1700000000.9"), &exp, NOW),
        Err(JwtError::Expired)
    );
    assert!(hs_claims(&store, &c("1700000001.5"), &exp, NOW).is_ok());
    assert!(hs_claims(&store, &c("1e30"), &exp, NOW).is_ok());
    assert_eq!(
        hs_claims(&store, &c("\"1800000000\""), &exp, NOW),
        Err(JwtError::BadClaimType("exp"))
    );
    assert_eq!(
        hs_claims(&store, r#"{"iss":"issuer"}"#, &exp, NOW),
        Err(JwtError::MissingClaim("exp"))
    );
    // Not verified: an expired (even a mistyped) exp is not checked for time...
    assert!(hs_claims(&store, &c("1"), &Rules::default(), NOW).is_ok());
    // ...but a wrong type is still malformed.
    assert_eq!(
        hs_claims(&store, &c("null"), &Rules::default(), NOW),
        Err(JwtError::BadClaimType("exp"))
    );
    let lee = Rules {
        verify_exp: true,
        verify_nbf: true,
        leeway_seconds: 30,
        ..Rules::default()
    };
    let both = |e: u64, n: u64| format!(r#"{{"iss":"issuer","exp":{e},"nbf":{n}}}"#);
    assert!(hs_claims(&store, &both(NOW - 29, NOW - 100), &lee, NOW).is_ok());
    assert_eq!(
        hs_claims(&store, &both(NOW - 30, NOW - 100), &lee, NOW),
        Err(JwtError::Expired)
    );
    assert!(hs_claims(&store, &both(NOW + 100, NOW + 30), &lee, NOW).is_ok());
    assert_eq!(
        hs_claims(&store, &both(NOW + 100, NOW + 31), &lee, NOW),
        Err(JwtError::NotYetValid)
    );
    let nbf = Rules {
        verify_nbf: true,
        ..Rules::default()
    };
    assert_eq!(
        hs_claims(&store, &c("1"), &nbf, NOW),
        Err(JwtError::MissingClaim("nbf"))
    );
    let n = |v: &str| format!(r#"{{"iss":"issuer","nbf":{v}}}"#);
    assert!(hs_claims(&store, &n("1700000000"), &nbf, NOW).is_ok());
    assert_eq!(
        hs_claims(&store, &n("1700000000.2"), &nbf, NOW),
        Err(JwtError::NotYetValid)
    );
    assert_eq!(
        hs_claims(&store, &n("1700000001"), &nbf, NOW),
        Err(JwtError::NotYetValid)
    );
}

#[test]
fn maximum_expiration() {
    let (_, store) = single(Alg::HS256);
    let r = Rules {
        maximum_expiration: Some(3600),
        ..Rules::default()
    };
    let c = |e: u64| format!(r#"{{"iss":"issuer","exp":{e}}}"#);
    assert!(hs_claims(&store, &c(NOW + 3600), &r, NOW).is_ok());
    assert_eq!(
        hs_claims(&store, &c(NOW + 3601), &r, NOW),
        Err(JwtError::ExpirationTooFar)
    );
    assert_eq!(
        hs_claims(&store, r#"{"iss":"issuer"}"#, &r, NOW),
        Err(JwtError::MissingClaim("exp"))
    );
    // Without verify_exp, an expired token passes maximum_expiration (Kong semantics)...
    assert!(hs_claims(&store, &c(NOW - 10), &r, NOW).is_ok());
    // ...and with it, it is expired.
    let both = Rules {
        verify_exp: true,
        ..r
    };
    assert_eq!(
        hs_claims(&store, &c(NOW - 10), &both, NOW),
        Err(JwtError::Expired)
    );
}

#[test]
fn issuer_and_audience() {
    let (_, store) = single(Alg::HS256);
    let r = Rules {
        key_claim_name: "key".into(),
        issuers: vec!["https://idp".into(), "https://idp2".into()],
        audiences: vec!["api".into()],
        ..Rules::default()
    };
    let c = |iss: &str, aud: &str| format!(r#"{{"key":"issuer","iss":{iss},"aud":{aud}}}"#);
    assert!(hs_claims(&store, &c("\"https://idp2\"", "\"api\""), &r, NOW).is_ok());
    assert!(hs_claims(&store, &c("\"https://idp\"", r#"["web","api"]"#), &r, NOW).is_ok());
    assert_eq!(
        hs_claims(&store, &c("\"https://evil\"", "\"api\""), &r, NOW),
        Err(JwtError::IssuerMismatch)
    );
    assert_eq!(
        hs_claims(&store, &c("7", "\"api\""), &r, NOW),
        Err(JwtError::BadClaimType("iss"))
    );
    assert_eq!(
        hs_claims(&store, &c("\"https://idp\"", "\"web\""), &r, NOW),
        Err(JwtError::AudienceMismatch)
    );
    assert_eq!(
        hs_claims(&store, &c("\"https://idp\"", "[]"), &r, NOW),
        Err(JwtError::AudienceMismatch)
    );
    assert_eq!(
        hs_claims(&store, &c("\"https://idp\"", r#"["api",1]"#), &r, NOW),
        Err(JwtError::BadClaimType("aud"))
    );
    assert_eq!(
        hs_claims(&store, &c("\"https://idp\"", "{}"), &r, NOW),
        Err(JwtError::BadClaimType("aud"))
    );
    let no_aud = r#"{"key":"issuer","iss":"https://idp"}"#;
    assert_eq!(
        hs_claims(&store, no_aud, &r, NOW),
        Err(JwtError::MissingClaim("aud"))
    );
    let no_iss = r#"{"key":"issuer","aud":"api"}"#;
    assert_eq!(
        hs_claims(&store, no_iss, &r, NOW),
        Err(JwtError::MissingClaim("iss"))
    );
}

#[test]
fn kid_then_key_claim_lookup() {
    let (a, b) = (fixture("rsa_a.pk8.der"), fixture("rsa_b.pk8.der"));
    let mut sb = KeyStoreBuilder::new();
    let ka = VerifyKey::from_pem(Alg::RS256, &fixture("rsa_a.pub.pem")).unwrap();
    let kb = VerifyKey::from_pem(Alg::RS256, &fixture("rsa_b.pub.pem")).unwrap();
    assert_eq!(sb.add_key(ka, Some("kid-1"), None, 1).unwrap(), 0);
    assert_eq!(sb.add_key(kb, None, Some("iss-2"), 2).unwrap(), 1);
    let store = sb.build();
    let r = Rules::default();
    let v = auth(
        &store,
        &make(Alg::RS256, &a, Some("kid-1"), r#"{"iss":"iss-2"}"#),
        &r,
        NOW,
    );
    assert_eq!(v.map(|v| v.owner), Ok(1));
    assert_eq!(store.key_name(0), Some("kid-1"));
    // Unknown kid: falls back to the key claim.
    let v = auth(
        &store,
        &make(Alg::RS256, &b, Some("nope"), r#"{"iss":"iss-2"}"#),
        &r,
        NOW,
    );
    assert_eq!(v.map(|v| (v.owner, v.key)), Ok((2, 1)));
    // A known kid is authoritative: no fallback when its key does not verify.
    let t = make(Alg::RS256, &b, Some("kid-1"), r#"{"iss":"iss-2"}"#);
    assert_eq!(auth(&store, &t, &r, NOW), Err(JwtError::BadSignature));
    let t = make(Alg::RS256, &b, None, r#"{"sub":"x"}"#);
    assert_eq!(auth(&store, &t, &r, NOW), Err(JwtError::MissingKeyClaim));
    let t = make(Alg::RS256, &b, None, r#"{"iss":5}"#);
    assert_eq!(auth(&store, &t, &r, NOW), Err(JwtError::MissingKeyClaim));
    let t = make(Alg::RS256, &b, None, r#"{"iss":"iss-3"}"#);
    assert_eq!(auth(&store, &t, &r, NOW), Err(JwtError::UnknownKey));
    // Custom key claim.
    let sub = Rules {
        key_claim_name: "sub".into(),
        ..Rules::default()
    };
    let t = make(Alg::RS256, &b, None, r#"{"iss":"x","sub":"iss-2"}"#);
    assert_eq!(auth(&store, &t, &sub, NOW).map(|v| v.owner), Ok(2));
    // key_claim_name = "kid" reads the header kid when the claims have none (Kong).
    let kid = Rules {
        key_claim_name: "kid".into(),
        ..Rules::default()
    };
    let t = make(Alg::RS256, &b, Some("iss-2"), "{}");
    assert_eq!(auth(&store, &t, &kid, NOW).map(|v| v.owner), Ok(2));
}

#[test]
fn builder_rejects_ambiguity() {
    let key = || VerifyKey::hmac(Alg::HS256, SECRET, false).unwrap();
    let mut b = KeyStoreBuilder::new();
    b.add_key(key(), Some("k"), Some("s"), 1).unwrap();
    assert!(b
        .add_key(key(), Some("k"), None, 2)
        .unwrap_err()
        .contains("kid"));
    assert!(b
        .add_key(key(), None, Some("s"), 2)
        .unwrap_err()
        .contains("another"));
    assert!(b.add_key(key(), None, None, 2).is_err());
    // The same owner may put several keys under one key string (rotation).
    b.add_key(key(), Some("k2"), Some("s"), 1).unwrap();
    let store = b.build();
    assert_eq!(
        (store.len(), store.owner(1), store.owner(9)),
        (2, Some(1), None)
    );
}

#[test]
fn jwks_keys() {
    let json = fixture("jwks.json");
    let err = parse_jwks(&json, None).unwrap_err();
    assert!(err.contains("rsa-b") && err.contains("no \"alg\""), "{err}");
    let set = parse_jwks(&json, Some(Alg::PS256)).unwrap();
    let kids: Vec<_> = set
        .keys
        .iter()
        .map(|k| (k.kid.as_deref().unwrap(), k.key.alg()))
        .collect();
    assert_eq!(
        kids,
        [
            ("rsa-a", Alg::RS256),
            ("rsa-b", Alg::PS256),
            ("ec-1", Alg::ES256),
            ("ed-1", Alg::EdDSA)
        ]
    );
    assert_eq!(set.skipped.len(), 2, "{:?}", set.skipped);
    assert!(set.skipped[0].contains("enc-1") && set.skipped[1].contains("P-521"));

    let mut b = KeyStoreBuilder::new();
    let skipped = b.add_jwks(&json, Some(Alg::PS256), None, 7).unwrap();
    assert_eq!(skipped.len(), 2);
    let store = b.build();
    let r = Rules::default();
    let ok =
        |alg, der: &str, kid| auth(&store, &make(alg, &fixture(der), Some(kid), "{}"), &r, NOW);
    assert_eq!(
        ok(Alg::RS256, "rsa_a.pk8.der", "rsa-a").map(|v| v.owner),
        Ok(7)
    );
    assert_eq!(
        ok(Alg::PS256, "rsa_b.pk8.der", "rsa-b").map(|v| v.owner),
        Ok(7)
    );
    assert_eq!(
        ok(Alg::ES256, "ec_p256.pk8.der", "ec-1").map(|v| v.owner),
        Ok(7)
    );
    assert_eq!(
        ok(Alg::EdDSA, "ed25519.pk8.der", "ed-1").map(|v| v.owner),
        Ok(7)
    );
    assert!(matches!(
        ok(Alg::RS256, "rsa_b.pk8.der", "rsa-b"),
        Err(JwtError::AlgMismatch { .. })
    ));
    assert_eq!(
        ok(Alg::RS256, "rsa_b.pk8.der", "rsa-a"),
        Err(JwtError::BadSignature)
    );
    // The encryption key was skipped, so its kid is unknown (and there is no key claim).
    assert_eq!(
        ok(Alg::RS256, "rsa_b.pk8.der", "enc-1"),
        Err(JwtError::MissingKeyClaim)
    );
}

#[test]
fn jwks_without_kids_under_a_key_string() {
    let n = |pem: &str| {
        let der = der::pem_decode(&fixture(pem)).unwrap().1;
        match der::parse_spki(&der).unwrap() {
            der::PublicKey::Rsa { n, .. } => b64(&n),
            _ => unreachable!(),
        }
    };
    let json = format!(
        r#"{{"keys":[{{"kty":"RSA","n":"{}","e":"AQAB"}},{{"kty":"RSA","n":"{}","e":"AQAB"}},
            {{"kty":"oct","alg":"HS384","k":"{}"}}]}}"#,
        n("rsa_a.pub.pem"),
        n("rsa_b.pub.pem"),
        b64(SECRET)
    );
    let mut b = KeyStoreBuilder::new();
    assert!(b
        .add_jwks(json.as_bytes(), Some(Alg::RS256), None, 1)
        .is_err());
    b.add_jwks(json.as_bytes(), Some(Alg::RS256), Some("idp"), 1)
        .unwrap();
    let store = b.build();
    let r = Rules::default();
    let claims = r#"{"iss":"idp"}"#;
    for (alg, private, key) in [
        (Alg::RS256, fixture("rsa_a.pk8.der"), 0),
        (Alg::RS256, fixture("rsa_b.pk8.der"), 1),
        (Alg::HS384, SECRET.to_vec(), 2),
    ] {
        let v = auth(&store, &make(alg, &private, None, claims), &r, NOW).unwrap();
        assert_eq!((v.owner, v.key), (1, key));
        assert_eq!(store.key_name(key), Some("idp"));
    }
    let t = make(
        Alg::RS256,
        &fixture("rsa_b.pk8.der"),
        None,
        r#"{"iss":"idp","x":1}"#,
    );
    let mut t = t.into_bytes();
    let last = t.len() - 3;
    t[last] = if t[last] == b'A' { b'B' } else { b'A' };
    let res = store.authenticate(&t, &r, NOW, &mut TokenCache::new(0));
    assert!(matches!(
        res,
        Err(JwtError::BadSignature | JwtError::MalformedBase64(_))
    ));
    let es = make(Alg::ES256, &fixture("ec_p256.pk8.der"), None, claims);
    assert!(matches!(
        auth(&store, &es, &r, NOW),
        Err(JwtError::AlgMismatch { .. })
    ));
}

#[test]
fn jwks_load_errors() {
    let bad = |json: &str| parse_jwks(json.as_bytes(), Some(Alg::RS256)).unwrap_err();
    assert!(bad("not json").contains("JSON"));
    assert!(bad(r#"{"kids":[]}"#).contains("keys"));
    assert!(bad(r#"{"keys":[]}"#).contains("no usable"));
    assert!(bad(r#"{"keys":[{"kty":"RSA","n":"***","e":"AQAB"}]}"#).contains("base64url"));
    assert!(bad(r#"{"keys":[{"kty":"RSA","alg":"ES256","n":"AQAB","e":"AQAB"}]}"#).contains("fit"));
    assert!(bad(r#"{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}"#).contains("bits"));
    assert!(
        bad(r#"{"keys":[{"kty":"EC","crv":"P-256","x":"AQAB","y":"AQAB"}]}"#).contains("32 bytes")
    );
    assert!(bad(r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AQAB"}]}"#).contains("32 bytes"));
    assert!(bad(r#"{"keys":[{"kty":"oct","k":"AQAB"}]}"#).contains("alg"));
    assert!(bad(r#"{"keys":[{"kty":7}]}"#).contains("kty"));
    assert!(bad(r#"{"keys":[5]}"#).contains("object"));
    assert!(bad(r#"{"keys":[{"kty":"RSA","use":"enc"}]}"#).contains("skipped"));
    assert!(bad(r#"{"keys":[{"kty":"RSA","key_ops":["encrypt"]}]}"#).contains("skipped"));
    assert!(bad(r#"{"keys":[{"kty":"RSA","alg":"RS1"}]}"#).contains("not supported"));
    let secret = r#"{"keys":[{"kty":"oct","alg":"HS256","k":"SECRETMARKER*"}]}"#;
    assert!(!bad(secret).contains("SECRETMARKER"));
}

#[test]
fn pem_load_errors() {
    let rsa = fixture("rsa_a.pub.pem");
    let e = |alg, pem: &[u8]| VerifyKey::from_pem(alg, pem).unwrap_err();
    assert!(e(Alg::HS256, &rsa).contains("secret"));
    assert!(e(Alg::ES256, &rsa).contains("RSA"));
    assert!(e(Alg::ES256, &fixture("ec_p384.pub.pem")).contains("P-256"));
    assert!(e(Alg::ES384, &fixture("ec_p256.pub.pem")).contains("P-384"));
    assert!(e(Alg::RS256, &fixture("ed25519.pub.pem")).contains("Ed25519"));
    assert!(e(Alg::EdDSA, &fixture("ec_p256.pub.pem")).contains("EC"));
    assert!(e(Alg::RS256, &fixture("rsa_1024.pub.pem")).contains("1024 bits"));
    assert!(e(Alg::RS256, b"hello").contains("no PEM"));
    assert!(e(
        Alg::RS256,
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    )
    .contains("private"));
    assert!(e(
        Alg::RS256,
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    )
    .contains("certificate"));
    assert!(e(Alg::RS256, b"-----BEGIN PUBLIC KEY-----\nAAAA\n").contains("END"));
    assert!(e(
        Alg::RS256,
        b"-----BEGIN PUBLIC KEY-----\n*\n-----END PUBLIC KEY-----"
    )
    .contains("base64"));
    assert!(e(
        Alg::RS256,
        b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"
    )
    .contains("DER"));
    // Truncated DER (a valid PEM of the first half of the key).
    let der = der::pem_decode(&rsa).unwrap().1;
    let half = base64::engine::general_purpose::STANDARD.encode(&der[..der.len() / 2]);
    let pem = format!("-----BEGIN PUBLIC KEY-----\n{half}\n-----END PUBLIC KEY-----\n");
    assert!(e(Alg::RS256, pem.as_bytes()).contains("DER"));
    // Text around the block (as in a bundle with comments) is fine.
    let mut padded = b"# comment\n".to_vec();
    padded.extend_from_slice(&rsa);
    assert!(VerifyKey::from_pem(Alg::RS384, &padded).is_ok());
}

#[test]
fn cache_hit_skips_verification_and_honours_time() {
    let (_, store) = single(Alg::HS256);
    let r = Rules {
        verify_exp: true,
        verify_nbf: true,
        leeway_seconds: 5,
        ..Rules::default()
    };
    let mut cache = TokenCache::new(16);
    let t = make(
        Alg::HS256,
        SECRET,
        None,
        &format!(
            r#"{{"iss":"issuer","exp":{},"nbf":{}}}"#,
            NOW + 60,
            NOW - 10
        ),
    );
    let v = store
        .authenticate(t.as_bytes(), &r, NOW, &mut cache)
        .unwrap();
    assert!(!v.cached);
    let hit = store
        .authenticate(t.as_bytes(), &r, NOW + 10, &mut cache)
        .unwrap();
    assert_eq!(hit, Verified { cached: true, ..v });
    assert_eq!(cache.len(), 1);
    // Within leeway of exp: still a hit; past it: a miss that then fails as expired.
    assert!(
        store
            .authenticate(t.as_bytes(), &r, NOW + 64, &mut cache)
            .unwrap()
            .cached
    );
    assert_eq!(
        store.authenticate(t.as_bytes(), &r, NOW + 65, &mut cache),
        Err(JwtError::Expired)
    );
    assert_eq!(cache.len(), 0);
    // nbf re-checked on hits (a clock stepping back).
    store
        .authenticate(t.as_bytes(), &r, NOW, &mut cache)
        .unwrap();
    assert_eq!(
        store.authenticate(t.as_bytes(), &r, NOW - 16, &mut cache),
        Err(JwtError::NotYetValid)
    );
    // maximum_expiration re-checked too.
    store
        .authenticate(t.as_bytes(), &r, NOW, &mut cache)
        .unwrap();
    let max = Rules {
        maximum_expiration: Some(30),
        ..r.clone()
    };
    assert_eq!(
        store.authenticate(t.as_bytes(), &max, NOW, &mut cache),
        Err(JwtError::ExpirationTooFar)
    );
    // Rejected tokens are never cached; a collision-shaped token (same tail) is not a hit.
    let mut cache = TokenCache::new(16);
    store
        .authenticate(t.as_bytes(), &r, NOW, &mut cache)
        .unwrap();
    let other = make(Alg::HS256, SECRET, None, r#"{"iss":"issuer","exp":1}"#);
    let tail = t.rsplit('.').next().unwrap();
    let forged = format!("{}.{}", other.rsplit_once('.').unwrap().0, tail);
    assert_eq!(
        store.authenticate(forged.as_bytes(), &r, NOW, &mut cache),
        Err(JwtError::BadSignature)
    );
    assert_eq!(
        store.authenticate(forged.as_bytes(), &r, NOW, &mut cache),
        Err(JwtError::BadSignature)
    );
    assert_eq!(cache.len(), 1);
}

#[test]
fn cache_is_bounded_and_evicts() {
    let (_, store) = single(Alg::HS256);
    let r = Rules::default();
    let mut cache = TokenCache::new(10);
    assert_eq!(cache.capacity(), 12);
    let tokens: Vec<String> = (0..200)
        .map(|i| {
            make(
                Alg::HS256,
                SECRET,
                None,
                &format!(r#"{{"iss":"issuer","jti":{i}}}"#),
            )
        })
        .collect();
    for t in &tokens {
        assert!(
            !store
                .authenticate(t.as_bytes(), &r, NOW, &mut cache)
                .unwrap()
                .cached
        );
        // The token just inserted is always a hit.
        assert!(
            store
                .authenticate(t.as_bytes(), &r, NOW, &mut cache)
                .unwrap()
                .cached
        );
        assert!(cache.len() <= cache.capacity());
    }
    assert!(cache.len() >= 4, "{}", cache.len());
    // Some early tokens were evicted (bounded), and they verify again cold.
    let misses = tokens
        .iter()
        .filter(|t| {
            !store
                .authenticate(t.as_bytes(), &r, NOW, &mut cache)
                .unwrap()
                .cached
        })
        .count();
    assert!(misses >= 188, "{misses}");
    // Capacity 0 disables caching.
    let mut none = TokenCache::new(0);
    for _ in 0..2 {
        assert!(
            !store
                .authenticate(tokens[0].as_bytes(), &r, NOW, &mut none)
                .unwrap()
                .cached
        );
    }
    assert_eq!((none.len(), none.capacity()), (0, 0));
    cache.clear();
    assert!(cache.is_empty());
}

#[test]
fn cache_empties_on_a_new_store() {
    let (_, a) = single(Alg::HS256);
    let mut b = KeyStoreBuilder::new();
    b.add_key(
        VerifyKey::hmac(Alg::HS256, b"rotated", false).unwrap(),
        None,
        Some("issuer"),
        42,
    )
    .unwrap();
    let b = b.build();
    let r = Rules::default();
    let mut cache = TokenCache::new(8);
    let t = make(Alg::HS256, SECRET, None, r#"{"iss":"issuer"}"#);
    a.authenticate(t.as_bytes(), &r, NOW, &mut cache).unwrap();
    assert!(
        a.authenticate(t.as_bytes(), &r, NOW, &mut cache)
            .unwrap()
            .cached
    );
    assert_eq!(
        b.authenticate(t.as_bytes(), &r, NOW, &mut cache),
        Err(JwtError::BadSignature)
    );
    assert!(cache.is_empty());
}

#[test]
fn errors_never_leak_token_bytes() {
    for e in [
        JwtError::TooLarge,
        JwtError::MalformedJson(Part::Claims),
        JwtError::AlgMismatch {
            token: Alg::HS256,
            key: Alg::RS256,
        },
        JwtError::MissingClaim("exp"),
    ] {
        let s = e.to_string();
        assert!(!s.is_empty() && !e.code().is_empty(), "{s}");
    }
    let (_, store) = single(Alg::HS256);
    let t = make(
        Alg::HS256,
        b"wrong",
        None,
        r#"{"iss":"issuer","sub":"SECRETMARKER"}"#,
    );
    let e = auth(&store, &t, &Rules::default(), NOW).unwrap_err();
    assert!(!format!("{e} {e:?}").contains("SECRETMARKER"));
}

#[test]
fn garbage_never_panics() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x6a_7774);
    let mut b = KeyStoreBuilder::new();
    b.add_jwks(&fixture("jwks.json"), Some(Alg::RS256), Some("issuer"), 1)
        .unwrap();
    b.add_key(
        VerifyKey::hmac(Alg::HS256, SECRET, false).unwrap(),
        Some("hs"),
        None,
        2,
    )
    .unwrap();
    let store = b.build();
    let r = Rules {
        verify_exp: true,
        verify_nbf: true,
        audiences: vec!["a".into()],
        ..Rules::default()
    };
    let good = make(
        Alg::HS256,
        SECRET,
        Some("hs"),
        &format!(r#"{{"exp":{},"nbf":1,"aud":["a"]}}"#, NOW + 9),
    );
    assert!(auth(&store, &good, &r, NOW).is_ok());
    let mut cache = TokenCache::new(8);
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/";
    for i in 0..3000 {
        let t: Vec<u8> = match i % 3 {
            0 => (0..rng.gen_range(0..300)).map(|_| rng.gen()).collect(),
            1 => (0..rng.gen_range(0..300))
                .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())])
                .collect(),
            _ => {
                let mut t = good.clone().into_bytes();
                for _ in 0..rng.gen_range(1..4) {
                    let at = rng.gen_range(0..t.len().max(1));
                    match rng.gen_range(0..3) {
                        0 if at < t.len() => t[at] = ALPHABET[rng.gen_range(0..ALPHABET.len())],
                        1 => t.truncate(at),
                        _ => t.insert(at, rng.gen()),
                    }
                }
                t
            }
        };
        let res = store.authenticate(&t, &r, NOW, &mut cache);
        assert!(
            res.is_err() || t == good.as_bytes(),
            "accepted a mutated token"
        );
        // Key loaders take operator input: they must not panic either.
        let _ = VerifyKey::from_pem(Alg::RS256, &t);
        let _ = parse_jwks(&t, None);
    }
    // Mutated fixtures through the loaders.
    for name in [
        "rsa_a.pub.pem",
        "ec_p256.pub.pem",
        "ed25519.pub.pem",
        "jwks.json",
    ] {
        let base = fixture(name);
        for _ in 0..300 {
            let mut m = base.clone();
            let at = rng.gen_range(0..m.len());
            m[at] = rng.gen();
            m.truncate(rng.gen_range(at..=m.len()));
            let _ = VerifyKey::from_pem(Alg::ES256, &m);
            let _ = VerifyKey::from_pem(Alg::RS256, &m);
            let _ = parse_jwks(&m, Some(Alg::RS256));
        }
    }
}

/// A NumericDate no float holds (`1e400`, which parses now that numbers keep their text) is a
/// bad claim, not "since the epoch" (nbf) or "expired" (exp); huge finite ones still saturate.
#[test]
fn numeric_dates_beyond_a_float_are_bad_claims() {
    let claims = |json: &str| {
        token::parse_claims(URL_SAFE_NO_PAD.encode(json).as_bytes()).expect("claims parse")
    };
    for name in ["exp", "nbf"] {
        let c = claims(&format!(r#"{{"{name}":1e400}}"#));
        assert!(
            matches!(c.numeric_date(name, false), Err(JwtError::BadClaimType(_))),
            "{name}"
        );
    }
    let c = claims(r#"{"exp":1e300,"nbf":-5,"iat":1.5}"#);
    assert_eq!(c.numeric_date("exp", false).ok(), Some(Some(u64::MAX)));
    assert_eq!(c.numeric_date("nbf", true).ok(), Some(Some(0)));
    assert_eq!(c.numeric_date("iat", true).ok(), Some(Some(2)));
}
