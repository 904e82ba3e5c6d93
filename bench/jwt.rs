//! JWT verification cost: `KeyStore::authenticate` cold (full parse + signature, cache disabled)
//! versus a cache hit, for HS256 and RS256, plus ES256 cold. Before measuring, checks with a
//! counting allocator that a cache hit does not allocate (the hot-path promise).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use criterion::{criterion_group, criterion_main, Criterion};
use ring::rand::SystemRandom;
use ring::signature as sig;
use ringgate::auth::jwt::{Alg, KeyStore, KeyStoreBuilder, Rules, TokenCache, VerifyKey};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const NOW: u64 = 1_700_000_000;
const SECRET: &[u8] = b"a-bench-secret-of-32-bytes-long!";
const CLAIMS: &str = r#"{"iss":"issuer","sub":"user-1234","aud":"api","exp":1700003600,"nbf":1699999000,"iat":1699999000,"scope":"read write"}"#;

fn token(alg: Alg, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let header = format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#);
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(CLAIMS)
    );
    let s = sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(s))
}

fn store(key: VerifyKey) -> KeyStore {
    let mut b = KeyStoreBuilder::new();
    b.add_key(key, None, Some("issuer"), 0).expect("bench key");
    b.build()
}

fn cases() -> Vec<(&'static str, KeyStore, String)> {
    let rng = SystemRandom::new();
    let hs = token(Alg::HS256, |m| {
        ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET), m)
            .as_ref()
            .to_vec()
    });
    let rsa = sig::RsaKeyPair::from_pkcs8(include_bytes!("../tests/data/jwt/rsa_a.pk8.der"))
        .expect("rsa fixture");
    let rs = token(Alg::RS256, |m| {
        let mut out = vec![0; rsa.public().modulus_len()];
        rsa.sign(&sig::RSA_PKCS1_SHA256, &rng, m, &mut out)
            .expect("rsa sign");
        out
    });
    let ec = sig::EcdsaKeyPair::from_pkcs8(
        &sig::ECDSA_P256_SHA256_FIXED_SIGNING,
        include_bytes!("../tests/data/jwt/ec_p256.pk8.der"),
        &rng,
    )
    .expect("ec fixture");
    let es = token(Alg::ES256, |m| {
        ec.sign(&rng, m).expect("ec sign").as_ref().to_vec()
    });
    let pem = |bytes: &[u8], alg| VerifyKey::from_pem(alg, bytes).expect("pem fixture");
    vec![
        (
            "HS256",
            store(VerifyKey::hmac(Alg::HS256, SECRET, false).expect("secret")),
            hs,
        ),
        (
            "RS256",
            store(pem(
                include_bytes!("../tests/data/jwt/rsa_a.pub.pem"),
                Alg::RS256,
            )),
            rs,
        ),
        (
            "ES256",
            store(pem(
                include_bytes!("../tests/data/jwt/ec_p256.pub.pem"),
                Alg::ES256,
            )),
            es,
        ),
    ]
}

fn bench(c: &mut Criterion) {
    let rules = Rules {
        verify_exp: true,
        verify_nbf: true,
        leeway_seconds: 30,
        audiences: vec!["api".into()],
        ..Rules::default()
    };
    for (name, store, tok) in cases() {
        let t = tok.as_bytes();
        let mut cold = TokenCache::new(0);
        let mut warm = TokenCache::new(1024);
        assert!(
            !store
                .authenticate(t, &rules, NOW, &mut warm)
                .expect("valid token")
                .cached
        );
        let before = ALLOCS.load(Ordering::Relaxed);
        for _ in 0..100 {
            assert!(
                store
                    .authenticate(t, &rules, NOW, &mut warm)
                    .expect("cached")
                    .cached
            );
        }
        let allocs = ALLOCS.load(Ordering::Relaxed) - before;
        assert_eq!(allocs, 0, "{name}: a cache hit allocated");
        c.bench_function(&format!("jwt/{name}/cold"), |b| {
            b.iter(|| black_box(store.authenticate(black_box(t), &rules, NOW, &mut cold)))
        });
        if name != "ES256" {
            c.bench_function(&format!("jwt/{name}/cached"), |b| {
                b.iter(|| black_box(store.authenticate(black_box(t), &rules, NOW, &mut warm)))
            });
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
