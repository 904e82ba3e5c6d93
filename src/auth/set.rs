//! `AuthSet`: everything the auth steps look up, built once per config generation on the main
//! thread and shared read-only (behind an `Arc`) by all workers.
//!
//! Invariants:
//! - instance `n` of each kind (`key_auth[n]`, `basic_auth[n]`, …) is the `n`-th enabled plugin of
//!   that kind in file order, the numbering `plugins::steps` gives the chain's `Plugin` values;
//! - API keys are stored only as SHA-256 digests: a lookup hashes the presented key first, so
//!   timing reveals nothing about stored keys, and a memory dump does not reveal them either;
//! - consumer header blocks are pre-rendered (`X-Consumer-ID: …\r\n…`), so identifying a consumer
//!   costs one `extend_from_slice` per request.

use std::collections::HashMap;
use std::sync::Arc;

use super::jwt::{KeyStore, KeyStoreBuilder, Rules, VerifyKey};
use crate::config::model::{
    AclDef, BasicAuthDef, BasicCredentialDef, Cidr, Config, ForwardAuthConf, IpRestrictionDef,
    JwtCredentialDef, JwtDef, JwtMaterial, KeyAuthDef, PluginConfig,
};

/// A consumer as the request path needs it.
#[derive(Debug)]
pub struct ConsumerRt {
    pub username: String,
    /// `X-Consumer-ID`, `X-Consumer-Custom-ID`, `X-Consumer-Username`, `X-Consumer-Groups` lines.
    pub headers: Vec<u8>,
}

/// Which credential identified the request (for `X-Credential-Identifier` and
/// `limit_by = "credential"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredRef {
    Key(usize),
    Basic(usize),
    Jwt(usize),
}

#[derive(Debug)]
pub struct KeyCredRt {
    pub consumer: usize,
    pub id: String,
}

pub struct BasicCredRt {
    pub consumer: usize,
    pub username: String,
    pub hash: Arc<str>,
}

#[derive(Debug)]
pub struct KeyAuthRt {
    pub def: KeyAuthDef,
    /// `WWW-Authenticate: Key realm="…"\r\n`.
    pub challenge: Vec<u8>,
}

#[derive(Debug)]
pub struct BasicAuthRt {
    pub def: BasicAuthDef,
    /// `WWW-Authenticate: Basic realm="…"\r\n`.
    pub challenge: Vec<u8>,
    /// Username -> index into `AuthSet::basic_creds` (the consumers' credentials, then this
    /// instance's htpasswd users, which win on a clash).
    pub users: HashMap<Vec<u8>, usize>,
    /// bcrypt cost of the dummy check for unknown users: the highest cost among `users`.
    pub dummy_cost: u32,
}

#[derive(Debug)]
pub struct AclRt {
    /// Index = consumer: may this consumer pass?
    pub allowed: Vec<bool>,
}

pub struct JwtRt {
    pub def: JwtDef,
    pub rules: Rules,
    /// Every consumer's JWT credential; owner = index into `Config::credentials.jwt`.
    pub store: KeyStore,
    /// `WWW-Authenticate: Bearer realm="ringgate"` (no token) and `… error="invalid_token"`.
    pub challenge_missing: Vec<u8>,
    pub challenge_invalid: Vec<u8>,
}

impl std::fmt::Debug for JwtRt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtRt")
            .field("keys", &self.store.len())
            .finish()
    }
}

/// Builds the key store of a jwt plugin instance from every consumer's JWT credentials. Errors
/// name the credential (`consumers[0].jwt_secrets[1]: …`); validation reports them at load, so
/// at run time they cannot happen (a failing key would simply be left out).
pub fn jwt_store(
    creds: &[JwtCredentialDef],
    secret_is_base64: bool,
) -> (KeyStore, Vec<(String, String)>) {
    let mut b = KeyStoreBuilder::new();
    let mut errors = Vec::new();
    for (i, c) in creds.iter().enumerate() {
        let alg = c.algorithm;
        let added = match &c.material {
            JwtMaterial::Secret(s) => VerifyKey::hmac(alg, s.as_bytes(), secret_is_base64)
                .and_then(|k| b.add_key(k, None, Some(&c.key), i).map(|_| ())),
            JwtMaterial::Pem(pem) => VerifyKey::from_pem(alg, pem)
                .and_then(|k| b.add_key(k, None, Some(&c.key), i).map(|_| ())),
            JwtMaterial::Jwks(json) => b.add_jwks(json, Some(alg), Some(&c.key), i).map(|_| ()),
        };
        if let Err(e) = added {
            errors.push((c.path.clone(), e));
        }
    }
    (
        b.build_with_content_id(jwt_content_id(creds, secret_is_base64)),
        errors,
    )
}

/// What a jwt key store holds, as a number: every credential's consumer, key string, algorithm
/// and key material, in order (a verdict's owner is the credential's index), and how secrets are
/// read. Length-prefixed fields, SHA-256, first 8 bytes.
fn jwt_content_id(creds: &[JwtCredentialDef], secret_is_base64: bool) -> u64 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut field = |b: &[u8]| {
        ctx.update(&(b.len() as u64).to_le_bytes());
        ctx.update(b);
    };
    field(&[u8::from(secret_is_base64)]);
    for c in creds {
        field(&(c.consumer as u64).to_le_bytes());
        field(c.key.as_bytes());
        field(format!("{:?}", c.algorithm).as_bytes());
        let (kind, bytes): (&[u8], &[u8]) = match &c.material {
            JwtMaterial::Secret(s) => (b"secret", s.as_bytes()),
            JwtMaterial::Pem(p) => (b"pem", p),
            JwtMaterial::Jwks(j) => (b"jwks", j),
        };
        field(kind);
        field(bytes);
    }
    let d = ctx.finish();
    let mut id = [0u8; 8];
    id.copy_from_slice(&d.as_ref()[..8]);
    u64::from_le_bytes(id)
}

#[derive(Debug)]
pub struct ForwardRt {
    pub conf: ForwardAuthConf,
    /// The response header names copied upstream on a 2xx: client copies of them are dropped.
    pub copied: Arc<[Box<[u8]>]>,
}

#[derive(Debug)]
pub struct IpRt {
    pub def: IpRestrictionDef,
    /// `{"message":"…"}`.
    pub body: Box<[u8]>,
}

#[derive(Default, Debug)]
pub struct AuthSet {
    pub consumers: Vec<ConsumerRt>,
    /// SHA-256(key) -> index into `key_creds`.
    pub keys: HashMap<[u8; 32], usize>,
    pub key_creds: Vec<KeyCredRt>,
    pub basic_creds: Vec<BasicCredRt>,
    /// Identifier of `CredRef::Jwt(i)`: the credential's `key`.
    pub jwt_ids: Vec<(usize, String)>,
    pub key_auth: Vec<KeyAuthRt>,
    pub basic_auth: Vec<BasicAuthRt>,
    pub jwt: Vec<JwtRt>,
    pub acl: Vec<AclRt>,
    pub ip: Vec<IpRt>,
    pub forward: Vec<ForwardRt>,
    pub trusted_proxies: Vec<Cidr>,
    /// Who the credentials and auth plugins are: workers keep their JWT and basic-auth caches
    /// across generations with the same one. Made fresh by `build`; a set built again only for a
    /// moved forward-auth address takes over the previous set's (`with_caches_of`).
    pub cache_id: Arc<()>,
    /// What a basic-auth cache entry (`user:password` digest -> credential index) depends on: every
    /// instance's cache size and username table, and every credential's username, hash and
    /// consumer. Equal in two generations: an entry verified under one holds under the other, so a
    /// reload that leaves them alone keeps the workers' caches (no bcrypt storm after a reload).
    pub basic_fingerprint: [u8; 32],
}

impl std::fmt::Debug for BasicCredRt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicCredRt")
            .field("consumer", &self.consumer)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// SHA-256 of `data`.
pub fn digest(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn header_line(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

impl AuthSet {
    /// `self`, declared to hold the same credentials and plugins as `prev` (only forward-auth
    /// addresses differ), so the workers' caches carry over.
    pub fn with_caches_of(self, prev: &AuthSet) -> AuthSet {
        AuthSet {
            cache_id: prev.cache_id.clone(),
            ..self
        }
    }

    pub fn build(cfg: &Config) -> AuthSet {
        let consumers = cfg
            .consumers
            .iter()
            .map(|c| {
                let mut headers = Vec::new();
                header_line(&mut headers, "X-Consumer-ID", &c.id);
                if let Some(cid) = &c.custom_id {
                    header_line(&mut headers, "X-Consumer-Custom-ID", cid);
                }
                header_line(&mut headers, "X-Consumer-Username", &c.username);
                if !c.groups.is_empty() {
                    header_line(&mut headers, "X-Consumer-Groups", &c.groups.join(", "));
                }
                ConsumerRt {
                    username: c.username.clone(),
                    headers,
                }
            })
            .collect();
        let mut set = AuthSet {
            consumers,
            trusted_proxies: cfg.server.trusted_proxies.clone(),
            ..AuthSet::default()
        };
        for k in &cfg.credentials.keys {
            set.keys
                .insert(digest(k.key.as_bytes()), set.key_creds.len());
            set.key_creds.push(KeyCredRt {
                consumer: k.consumer,
                id: k.id.clone(),
            });
        }
        let global_basic = set.add_basic(&cfg.credentials.basic);
        set.jwt_ids = cfg
            .credentials
            .jwt
            .iter()
            .map(|j| (j.consumer, j.key.clone()))
            .collect();
        for p in cfg.plugins.iter().filter(|p| p.enabled) {
            match &p.config {
                PluginConfig::KeyAuth(def) => set.key_auth.push(KeyAuthRt {
                    challenge: format!("WWW-Authenticate: Key realm=\"{}\"\r\n", def.realm)
                        .into_bytes(),
                    def: def.clone(),
                }),
                PluginConfig::BasicAuth(def) => {
                    let mut users = global_basic.clone();
                    let own = set.add_basic(&def.htpasswd);
                    users.extend(own);
                    let dummy_cost = users
                        .values()
                        .filter_map(|&i| set.basic_creds.get(i))
                        .filter_map(|c| c.hash.get(4..6).and_then(|n| n.parse::<u32>().ok()))
                        .max()
                        .unwrap_or(bcrypt::DEFAULT_COST);
                    set.basic_auth.push(BasicAuthRt {
                        challenge: format!("WWW-Authenticate: Basic realm=\"{}\"\r\n", def.realm)
                            .into_bytes(),
                        def: def.clone(),
                        users,
                        dummy_cost,
                    });
                }
                PluginConfig::Acl(def) => set.acl.push(AclRt {
                    allowed: acl_table(def, cfg),
                }),
                PluginConfig::IpRestriction(def) => set.ip.push(IpRt {
                    body: crate::plugins::json_message(&def.message),
                    def: def.clone(),
                }),
                PluginConfig::ForwardAuth(conf) => set.forward.push(ForwardRt {
                    copied: conf
                        .def
                        .response_headers
                        .iter()
                        .map(|h| h.as_bytes().into())
                        .collect(),
                    conf: conf.clone(),
                }),
                PluginConfig::Jwt(def) => set.jwt.push(JwtRt {
                    rules: Rules {
                        key_claim_name: def.key_claim_name.clone(),
                        verify_exp: def.verify_exp,
                        verify_nbf: def.verify_nbf,
                        leeway_seconds: def.leeway_seconds,
                        maximum_expiration: def.maximum_expiration,
                        issuers: def.issuer.clone(),
                        audiences: def.audience.clone(),
                        max_token_bytes: def.max_token_bytes,
                    },
                    store: jwt_store(&cfg.credentials.jwt, def.secret_is_base64).0,
                    challenge_missing: b"WWW-Authenticate: Bearer realm=\"ringgate\"\r\n".to_vec(),
                    challenge_invalid:
                        b"WWW-Authenticate: Bearer realm=\"ringgate\", error=\"invalid_token\"\r\n"
                            .to_vec(),
                    def: def.clone(),
                }),
                PluginConfig::RateLimiting(_)
                | PluginConfig::CorrelationId(_)
                | PluginConfig::Cors(_)
                | PluginConfig::RequestTransformer(_)
                | PluginConfig::ResponseTransformer(_)
                | PluginConfig::RequestTermination(_)
                | PluginConfig::Compression(_) => {}
            }
        }
        set.basic_fingerprint = set.basic_fingerprint();
        set
    }

    /// Whether the workers' JWT caches of `prev` serve this set as they are: the same instances in
    /// the same order, each with the same key store content (`KeyStore::id`), the same rules (the
    /// issuer and audience checks are made only when a token is cached) and the same cache size.
    pub fn jwt_caches_carry_over(&self, prev: &AuthSet) -> bool {
        self.jwt.len() == prev.jwt.len()
            && self.jwt.iter().zip(&prev.jwt).all(|(a, b)| {
                a.store.id() == b.store.id()
                    && a.rules == b.rules
                    && a.def.cache_size == b.def.cache_size
            })
    }

    /// See `basic_fingerprint`. Each field is length-prefixed, so no two tables hash alike.
    fn basic_fingerprint(&self) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut field = |b: &[u8]| {
            ctx.update(&(b.len() as u64).to_le_bytes());
            ctx.update(b);
        };
        for c in &self.basic_creds {
            field(&(c.consumer as u64).to_le_bytes());
            field(c.username.as_bytes());
            field(c.hash.as_bytes());
        }
        for b in &self.basic_auth {
            field(&(b.def.cache_size as u64).to_le_bytes());
            let mut users: Vec<(&Vec<u8>, &usize)> = b.users.iter().collect();
            users.sort();
            for (name, i) in users {
                field(name);
                field(&(*i as u64).to_le_bytes());
            }
            field(b"/instance");
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    fn add_basic(&mut self, creds: &[BasicCredentialDef]) -> HashMap<Vec<u8>, usize> {
        let mut users = HashMap::new();
        for c in creds {
            users.insert(c.username.as_bytes().to_vec(), self.basic_creds.len());
            self.basic_creds.push(BasicCredRt {
                consumer: c.consumer,
                username: c.username.clone(),
                hash: Arc::from(c.hash.as_str()),
            });
        }
        users
    }

    /// `X-Credential-Identifier` value of `cred`.
    pub fn credential_id(&self, cred: CredRef) -> &[u8] {
        match cred {
            CredRef::Key(i) => self.key_creds.get(i).map_or(&b""[..], |c| c.id.as_bytes()),
            CredRef::Basic(i) => self
                .basic_creds
                .get(i)
                .map_or(&b""[..], |c| c.username.as_bytes()),
            CredRef::Jwt(i) => self.jwt_ids.get(i).map_or(&b""[..], |c| c.1.as_bytes()),
        }
    }
}

/// For each consumer: does `def` let it through?
fn acl_table(def: &AclDef, cfg: &Config) -> Vec<bool> {
    cfg.consumers
        .iter()
        .map(|c| {
            let member = c.groups.iter().any(|g| def.groups.contains(g));
            member != def.deny
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_stored_as_digests_and_never_debug_printed() {
        let cfg = crate::config::load_str(
            r#"
[[services]]
name = "s"
url = "http://127.0.0.1:9"
[[routes]]
name = "r"
service = "s"
paths = ["/"]
[[consumers]]
username = "a"
keyauth_credentials = [{ key = "plain-text-key-123" }]
basicauth_credentials = [{ username = "a", password = "$2b$04$9bPcqcRxfK04iH3Wd9uYQOiJe0IhQgbHd6mWJQ1ZU6Q9GX5VExXoW" }]
jwt_secrets = [{ key = "iss", secret = "jwt-secret-456" }]
[[plugins]]
name = "key-auth"
[[plugins]]
name = "jwt"
"#,
            "t.toml",
        )
        .expect("config");
        let set = AuthSet::build(&cfg);
        // Lookups go through SHA-256: the table holds the digest, not the key.
        assert!(set.keys.contains_key(&digest(b"plain-text-key-123")));
        for text in [format!("{cfg:?}"), format!("{set:?}")] {
            for secret in ["plain-text-key-123", "jwt-secret-456", "9bPcqcRxfK04"] {
                assert!(!text.contains(secret), "{secret} in Debug output");
            }
        }
    }
}
