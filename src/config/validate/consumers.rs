//! `[[consumers]]` and their credentials: names, uniqueness, hash formats, JWT key sources.
//!
//! Invariants of the output: see `model::auth`. Values that end up in upstream request headers
//! (username, id, custom_id, groups) are restricted to visible ASCII without commas, so they can be
//! written into a header without escaping; API keys must be unique over all consumers.

use std::collections::HashMap;
use std::path::Path;

use super::{known, push};
use crate::auth::jwt;
use crate::config::locate::{KeyPath, Problem};
use crate::config::model::{
    BasicCredentialDef, ConsumerDef, Credentials, JwtAlg, JwtCredentialDef, JwtMaterial,
    KeyCredentialDef,
};
use crate::config::raw::auth::{RawConsumer, RawJwtSecret};

const MAX_NAME: usize = 256;
const MAX_KEY: usize = 4096;

/// Consumers in file order, usernames -> index, and every credential.
pub struct Compiled {
    pub consumers: Vec<Option<ConsumerDef>>,
    pub names: HashMap<String, usize>,
    pub credentials: Credentials,
}

/// A value that goes into an upstream header as is: visible ASCII, no comma, 1..=256 bytes.
pub fn header_safe(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_NAME && s.bytes().all(|b| b.is_ascii_graphic() && b != b',')
}

pub fn compile(raw: &[Option<RawConsumer>], base: &Path, problems: &mut Vec<Problem>) -> Compiled {
    let root = KeyPath::root().key("consumers");
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut ids: HashMap<String, usize> = HashMap::new();
    let mut custom_ids: HashMap<String, usize> = HashMap::new();
    let mut keys: HashMap<String, usize> = HashMap::new();
    let mut basic_users: HashMap<String, usize> = HashMap::new();
    let mut credentials = Credentials::default();
    let mut jwt_paths: Vec<KeyPath> = Vec::new();
    let consumers = raw
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let c = c.as_ref()?;
            let p = root.index(i);
            let mut ok = true;
            let mut unique = |map: &mut HashMap<String, usize>, key: &str, value: &str| {
                if !header_safe(value) {
                    push(
                        problems,
                        p.key(key),
                        format!(
                            "{value:?} is not a valid {key}: use 1 to {MAX_NAME} visible ASCII characters, without spaces or commas"
                        ),
                    );
                    return false;
                }
                if let Some(first) = map.get(value) {
                    push(
                        problems,
                        p.key(key),
                        format!("duplicate consumer {key} {value:?}: already used by consumers[{first}]"),
                    );
                    return false;
                }
                map.insert(value.to_owned(), i);
                true
            };
            let name_ok = unique(&mut names, "username", &c.username);
            ok &= name_ok;
            // Ids must be unique too, the implicit ones (= username) included: the upstream tells
            // consumers apart by X-Consumer-ID.
            let id = c.id.clone().unwrap_or_else(|| c.username.clone());
            if c.id.is_some() {
                ok &= unique(&mut ids, "id", &id);
            } else if name_ok {
                // Reported at `username`: it is the id here (another consumer's explicit `id`).
                ok &= unique(&mut ids, "username", &id);
            }
            if let Some(cid) = &c.custom_id {
                ok &= unique(&mut custom_ids, "custom_id", cid);
            }
            let groups = c.groups.clone().unwrap_or_default();
            for (g, group) in groups.iter().enumerate() {
                if !header_safe(group) {
                    ok = false;
                    push(
                        problems,
                        p.key("groups").index(g),
                        format!("{group:?} is not a valid group name: use visible ASCII characters, without spaces or commas"),
                    );
                }
            }
            for (k, cred) in c.keyauth_credentials.iter().flatten().enumerate() {
                let kp = p.key("keyauth_credentials").index(k);
                if cred.key.is_empty()
                    || cred.key.len() > MAX_KEY
                    || !cred.key.bytes().all(|b| b.is_ascii_graphic())
                {
                    // Never echo the key itself: messages end up in logs.
                    push(
                        problems,
                        kp.key("key"),
                        format!("an API key must be 1 to {MAX_KEY} visible ASCII characters"),
                    );
                    continue;
                }
                if let Some(first) = keys.get(&cred.key) {
                    push(
                        problems,
                        kp.key("key"),
                        format!("this API key is already used by consumers[{first}]; a key must identify one consumer"),
                    );
                    continue;
                }
                keys.insert(cred.key.clone(), i);
                let id = cred
                    .id
                    .clone()
                    .unwrap_or_else(|| format!("{}-key-{}", c.username, k + 1));
                if !header_safe(&id) {
                    push(
                        problems,
                        kp.key("id"),
                        format!("{id:?} is not a valid credential id: use visible ASCII characters, without spaces or commas"),
                    );
                    continue;
                }
                credentials.keys.push(KeyCredentialDef {
                    consumer: i,
                    key: cred.key.clone(),
                    id,
                });
            }
            for (k, cred) in c.basicauth_credentials.iter().flatten().enumerate() {
                let bp = p.key("basicauth_credentials").index(k);
                if let Some(first) = basic_users.get(&cred.username) {
                    push(
                        problems,
                        bp.key("username"),
                        format!("basic-auth username {:?} is already used by consumers[{first}]", cred.username),
                    );
                    continue;
                }
                if cred.username.is_empty() || cred.username.contains(':') || !header_safe(&cred.username) {
                    push(
                        problems,
                        bp.key("username"),
                        "a basic-auth username is 1 to 256 visible ASCII characters, without ':' or ','",
                    );
                    continue;
                }
                if let Err(why) = check_password_hash(&cred.password) {
                    push(problems, bp.key("password"), why);
                    continue;
                }
                basic_users.insert(cred.username.clone(), i);
                credentials.basic.push(BasicCredentialDef {
                    consumer: i,
                    username: cred.username.clone(),
                    hash: cred.password.clone(),
                });
            }
            for (k, secret) in c.jwt_secrets.iter().flatten().enumerate() {
                let jp = p.key("jwt_secrets").index(k);
                if let Some(def) = jwt_secret(secret, i, &jp, base, problems) {
                    credentials.jwt.push(def);
                    jwt_paths.push(jp);
                }
            }
            ok.then(|| ConsumerDef {
                username: c.username.clone(),
                id,
                custom_id: c.custom_id.clone(),
                groups,
            })
        })
        .collect();
    // Clashes between credentials (a kid or key string used twice).
    for (path, e) in crate::auth::set::jwt_store(&credentials.jwt, false).1 {
        if let Some(i) = credentials.jwt.iter().position(|c| c.path == path) {
            if let Some(p) = jwt_paths.get(i) {
                push(problems, p.key("key"), e);
            }
        }
    }
    Compiled {
        consumers,
        names,
        credentials,
    }
}

/// A stored password must be a bcrypt hash (`htpasswd -nbB`); clear text is refused so a leaked
/// config does not leak passwords.
pub fn check_password_hash(hash: &str) -> Result<(), String> {
    let bcrypt = ["$2a$", "$2b$", "$2y$", "$2x$"]
        .iter()
        .any(|p| hash.starts_with(p));
    if bcrypt && hash.len() != 60 {
        // A copy-paste slip, not clear text: say what is wrong with it.
        return Err(format!(
            "not a valid bcrypt hash: {} characters, a bcrypt hash has 60",
            hash.chars().count()
        ));
    }
    if hash.starts_with("$apr1$") || hash.starts_with("$1$") {
        return Err("MD5 (apr1) hashes are not supported: create a bcrypt one with `htpasswd -nbB user password`".into());
    }
    if hash.starts_with("$argon2")
        || hash.starts_with("$5$")
        || hash.starts_with("$6$")
        || hash.starts_with("{SHA}")
    {
        return Err(
            "only bcrypt hashes are supported (create one with `htpasswd -nbB user password`)"
                .into(),
        );
    }
    if bcrypt && hash.is_ascii() {
        let cost = hash.get(4..6).and_then(|c| c.parse::<u32>().ok());
        return match cost {
            Some(4..=16) => Ok(()),
            Some(c) => Err(format!(
                "bcrypt cost {c} is outside 4..=16 (above 16 one check takes seconds)"
            )),
            None => Err("not a valid bcrypt hash (expected $2b$<cost>$<53 characters>)".into()),
        };
    }
    Err("must be a bcrypt hash such as \"$2b$10$…\" (create one with `htpasswd -nbB user password`); clear-text passwords are not accepted".into())
}

fn jwt_secret(
    s: &RawJwtSecret,
    consumer: usize,
    p: &KeyPath,
    base: &Path,
    problems: &mut Vec<Problem>,
) -> Option<JwtCredentialDef> {
    if !header_safe(&s.key) {
        push(
            problems,
            p.key("key"),
            "a JWT key is 1 to 256 visible ASCII characters, without spaces or commas",
        );
        return None;
    }
    let algorithm = match &s.algorithm {
        None => JwtAlg::HS256,
        Some(a) => match JwtAlg::from_name(a) {
            Some(alg) => alg,
            None => {
                let all: Vec<&str> = JwtAlg::ALL.iter().map(|a| a.name()).collect();
                push(
                    problems,
                    p.key("algorithm"),
                    format!("{a:?} is not supported; expected one of {}", all.join(", ")),
                );
                return None;
            }
        },
    };
    let sources: Vec<&str> = [
        ("secret", s.secret.is_some()),
        ("rsa_public_key", s.rsa_public_key.is_some()),
        ("public_key", s.public_key.is_some()),
        ("public_key_file", s.public_key_file.is_some()),
        ("jwks_file", s.jwks_file.is_some()),
    ]
    .iter()
    .filter(|(_, set)| *set)
    .map(|(k, _)| *k)
    .collect();
    let at = sources.first().map_or_else(|| p.clone(), |k| p.key(k));
    if sources.len() != 1 {
        push(
            problems,
            at,
            format!(
                "set exactly one of `secret` (HS*), `public_key`/`rsa_public_key` (inline PEM), `public_key_file` or `jwks_file`; found {}",
                if sources.is_empty() { "none".to_owned() } else { sources.join(", ") }
            ),
        );
        return None;
    }
    let hmac_source = s.secret.is_some();
    if hmac_source != algorithm.is_hmac() {
        push(
            problems,
            at,
            if algorithm.is_hmac() {
                format!("{algorithm:?} needs a `secret`, not a public key")
            } else {
                format!("{algorithm:?} verifies with a public key (`public_key`, `public_key_file` or `jwks_file`), not a `secret`")
            },
        );
        return None;
    }
    let read = |key: &str, file: &str, problems: &mut Vec<Problem>| -> Option<Vec<u8>> {
        let path = base.join(file);
        match crate::config::read_file(&path) {
            Ok(b) => Some(b),
            Err(e) => {
                push(
                    problems,
                    p.key(key),
                    format!("cannot read {}: {e}", path.display()),
                );
                None
            }
        }
    };
    let material = if let Some(secret) = &s.secret {
        if secret.is_empty() {
            push(problems, p.key("secret"), "must not be empty");
            return None;
        }
        JwtMaterial::Secret(secret.clone())
    } else if let Some(pem) = s.rsa_public_key.as_ref().or(s.public_key.as_ref()) {
        JwtMaterial::Pem(pem.as_bytes().to_vec())
    } else if let Some(file) = &s.public_key_file {
        JwtMaterial::Pem(read("public_key_file", file, problems)?)
    } else if let Some(file) = &s.jwks_file {
        JwtMaterial::Jwks(read("jwks_file", file, problems)?)
    } else {
        return None;
    };
    // Parse the key now, so `ringgate check` reports a bad key at its line.
    let parsed = match &material {
        JwtMaterial::Secret(_) => Ok(()),
        JwtMaterial::Pem(pem) => jwt::VerifyKey::from_pem(algorithm, pem).map(|_| ()),
        JwtMaterial::Jwks(json) => jwt::parse_jwks(json, Some(algorithm)).map(|_| ()),
    };
    if let Err(e) = parsed {
        push(problems, at, e);
        return None;
    }
    Some(JwtCredentialDef {
        consumer,
        key: s.key.clone(),
        algorithm,
        material,
        path: p.to_string(),
    })
}

/// Looks up a consumer by username for `anonymous` and `consumer = …` references.
pub fn lookup(
    problems: &mut Vec<Problem>,
    path: KeyPath,
    name: &str,
    names: &HashMap<String, usize>,
    broken: &std::collections::HashSet<String>,
) -> Option<usize> {
    let found = names.get(name).copied();
    if found.is_none() && !broken.contains(name) {
        push(
            problems,
            path,
            format!("no consumer with username {name:?} ({})", known(names)),
        );
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_hashes() {
        let h = "$2b$04$9bPcqcRxfK04iH3Wd9uYQOiJe0IhQgbHd6mWJQ1ZU6Q9GX5VExXoW";
        assert!(check_password_hash(h).is_ok());
        assert!(check_password_hash("hunter2").is_err());
        assert!(check_password_hash(
            "$2b$99$9bPcqcRxfK04iH3Wd9uYQOiJe0IhQgbHd6mWJQ1ZU6Q9GX5VExXoW"
        )
        .is_err());
        assert!(check_password_hash("$2b$04$short").is_err());
        // Messages say what is wrong, not "clear text" for everything that is not a valid hash.
        let msg = |h: &str| check_password_hash(h).err().unwrap_or_default();
        assert!(msg("hunter2").contains("clear-text passwords are not accepted"));
        assert!(msg(&h[..59]).contains("59 characters, a bcrypt hash has 60"));
        assert!(msg("$apr1$abc$defghijklmnopqrstuvwx").starts_with("MD5 (apr1) hashes"));
        assert!(msg("$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA").starts_with("only bcrypt"));
    }

    #[test]
    fn header_safety() {
        assert!(header_safe("alice"));
        assert!(!header_safe("a b"));
        assert!(!header_safe("a,b"));
        assert!(!header_safe(""));
        assert!(!header_safe("a\r\nX-Evil: 1"));
    }
}
