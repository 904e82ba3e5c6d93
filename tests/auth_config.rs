//! `[[consumers]]` and auth plugin configs: valid forms load into the model; each mistake is
//! reported once with its key path, line and a message that never echoes a secret.

use ringgate::config::model::{JwtAlg, JwtMaterial, PluginConfig, PluginScope};
use ringgate::config::{load_str, ConfigError};

const BASE: &str = r#"[[services]]
name = "s"
url = "http://127.0.0.1:9001"

[[routes]]
name = "r"
service = "s"
paths = ["/"]
"#;

fn errors(text: &str) -> Vec<ConfigError> {
    match load_str(&format!("{BASE}{text}"), "test.toml") {
        Ok(_) => panic!("config loaded but should not:\n{text}"),
        Err(e) => e,
    }
}

/// Exactly one error, at `key`, whose message contains `fragment`; returns it.
#[track_caller]
fn expect_one(text: &str, key: &str, fragment: &str) -> ConfigError {
    let errs = errors(text);
    let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert_eq!(
        errs.len(),
        1,
        "expected one error, got:\n{}",
        shown.join("\n")
    );
    let e = errs.into_iter().next().expect("one error");
    assert_eq!(e.key, key, "{e}");
    assert!(
        e.message.contains(fragment),
        "message lacks {fragment:?}: {e}"
    );
    assert!(e.line > 9, "error must point into the file: {e}");
    e
}

#[test]
fn valid_consumers_and_plugins_load() {
    let cfg = load_str(
        &format!(
            r#"{BASE}
[[consumers]]
username = "alice"
groups = ["a"]
keyauth_credentials = [{{ key = "k-0123456789" }}]
jwt_secrets = [{{ key = "iss-a", secret = "s3cret" }}, {{ key = "iss-b", algorithm = "RS256", public_key_file = "{dir}/tests/data/jwt/rsa_a.pub.pem" }}]

[[plugins]]
name = "key-auth"
config = {{ anonymous = "alice", hide_credentials = true }}

[[plugins]]
name = "acl"
route = "r"
config = {{ deny = ["b"] }}

[[plugins]]
name = "rate-limiting"
consumer = "alice"
config = {{ minute = 5 }}
"#,
            dir = env!("CARGO_MANIFEST_DIR")
        ),
        "test.toml",
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(cfg.consumers.len(), 1);
    assert_eq!(cfg.consumers[0].id, "alice");
    assert_eq!(cfg.credentials.keys[0].id, "alice-key-1");
    assert_eq!(cfg.credentials.jwt[0].algorithm, JwtAlg::HS256);
    assert_eq!(
        cfg.credentials.jwt[0].material,
        JwtMaterial::Secret("s3cret".into())
    );
    assert!(
        matches!(&cfg.plugins[0].config, PluginConfig::KeyAuth(k) if k.anonymous == Some(0) && k.key_names == ["apikey"])
    );
    assert_eq!(cfg.plugins[2].scope, PluginScope::Consumer(0));
}

#[test]
fn consumer_mistakes() {
    expect_one(
        "[[consumers]]\nusername = \"a\"\n[[consumers]]\nusername = \"a\"\n",
        "consumers[1].username",
        "duplicate consumer username \"a\"",
    );
    expect_one(
        "[[consumers]]\nusername = \"m\"\nid = \"a\"\n[[consumers]]\nusername = \"a\"\n",
        "consumers[1].username",
        "already used by consumers[0]",
    );
    expect_one(
        "[[consumers]]\nusername = \"a b\"\n",
        "consumers[0].username",
        "not a valid username",
    );
    expect_one(
        "[[consumers]]\nusername = \"a\"\ngroup = [\"x\"]\n",
        "consumers[0].group",
        "unknown field",
    );
    let e = expect_one(
        "[[consumers]]\nusername = \"a\"\nkeyauth_credentials = [{ key = \"dup-secret-1\" }]\n[[consumers]]\nusername = \"b\"\nkeyauth_credentials = [{ key = \"dup-secret-1\" }]\n",
        "consumers[1].keyauth_credentials[0].key",
        "already used by consumers[0]",
    );
    assert!(
        !e.to_string().contains("dup-secret-1"),
        "a key must never be echoed: {e}"
    );
    let e = expect_one(
        "[[consumers]]\nusername = \"a\"\nbasicauth_credentials = [{ username = \"a\", password = \"hunter2\" }]\n",
        "consumers[0].basicauth_credentials[0].password",
        "bcrypt hash",
    );
    assert!(!e.to_string().contains("hunter2"), "{e}");
    expect_one(
        "[[consumers]]\nusername = \"a\"\njwt_secrets = [{ key = \"i\", secret = \"x\", public_key_file = \"k.pem\" }]\n",
        "consumers[0].jwt_secrets[0].secret",
        "exactly one of",
    );
    expect_one(
        "[[consumers]]\nusername = \"a\"\njwt_secrets = [{ key = \"i\", algorithm = \"RS256\", secret = \"x\" }]\n",
        "consumers[0].jwt_secrets[0].secret",
        "public key",
    );
    expect_one(
        "[[consumers]]\nusername = \"a\"\njwt_secrets = [{ key = \"i\", algorithm = \"none\", secret = \"x\" }]\n",
        "consumers[0].jwt_secrets[0].algorithm",
        "not supported",
    );
    expect_one(
        "[[consumers]]\nusername = \"a\"\njwt_secrets = [{ key = \"i\", algorithm = \"RS256\", public_key = \"-----BEGIN PUBLIC KEY-----\" }]\n",
        "consumers[0].jwt_secrets[0].public_key",
        "PEM",
    );
    expect_one(
        "[[consumers]]\nusername = \"a\"\njwt_secrets = [{ key = \"i\", secret = \"x\" }]\n[[consumers]]\nusername = \"b\"\njwt_secrets = [{ key = \"i\", secret = \"y\" }]\n",
        "consumers[1].jwt_secrets[0].key",
        "already used",
    );
    expect_one(
        "[[consumers]]\nusername = \"a\"\njwt_secrets = [{ key = \"i\", algorithm = \"RS256\", public_key_file = \"/nonexistent/k.pem\" }]\n",
        "consumers[0].jwt_secrets[0].public_key_file",
        "cannot read",
    );
}

#[test]
fn auth_plugin_mistakes() {
    // A key read from a header the access log records would be logged; one from a header the
    // gateway sets would be replaced on the way up.
    expect_one(
        "[[plugins]]\nname = \"key-auth\"\nconfig = { key_names = [\"apikey\", \"X-Request-ID\"] }\n",
        "plugins[0].config.key_names[1]",
        "the access log records it",
    );
    expect_one(
        "[[plugins]]\nname = \"key-auth\"\nconfig = { key_names = [\"X-Consumer-ID\"] }\n",
        "plugins[0].config.key_names[0]",
        "the gateway sets or replaces it",
    );
    expect_one(
        "[[plugins]]\nname = \"jwt\"\nconfig = { header_names = [\"user-agent\"] }\n",
        "plugins[0].config.header_names[0]",
        "the access log records it",
    );
    expect_one(
        "[[plugins]]\nname = \"acl\"\nconfig = { allow = [\"a\"], deny = [\"b\"] }\n",
        "plugins[0].config.deny",
        "not both",
    );
    // A group no consumer can have (consumer groups are checked the same way) used to be accepted:
    // an allow list then refused everyone.
    for (bad, index) in [("\"a b\"", 0), ("\"\"", 0), ("\"ok\", \"x,y\"", 1)] {
        let e = expect_one(
            &format!("[[plugins]]\nname = \"acl\"\nconfig = {{ allow = [{bad}] }}\n"),
            &format!("plugins[0].config.allow[{index}]"),
            "can never match a consumer group",
        );
        assert_eq!(e.line, 11, "{e}");
    }
    expect_one(
        "[[plugins]]\nname = \"ip-restriction\"\nconfig = { allow = [\"10.0.0.0/33\"] }\n",
        "plugins[0].config.allow[0]",
        "not an IP address or CIDR",
    );
    expect_one(
        "[[plugins]]\nname = \"key-auth\"\nconfig = { anonymous = \"ghost\" }\n",
        "plugins[0].config.anonymous",
        "no consumer with username \"ghost\"",
    );
    expect_one(
        "[[plugins]]\nname = \"forward-auth\"\nconfig = { address = \"https://auth.local/x\" }\n",
        "plugins[0].config.address",
        "not supported yet",
    );
    expect_one(
        "[[plugins]]\nname = \"jwt\"\nconfig = { claims_to_verify = [\"iat\"] }\n",
        "plugins[0].config.claims_to_verify[0]",
        "cannot be verified",
    );
    expect_one(
        "[[plugins]]\nname = \"jwt\"\nconfig = { maximum_expiration = 60 }\n",
        "plugins[0].config.maximum_expiration",
        "claims_to_verify",
    );
    expect_one(
        "[[plugins]]\nname = \"key-auth\"\nconfig = { key_names = [\"bad name\"] }\n",
        "plugins[0].config.key_names[0]",
        "not a valid name",
    );
    expect_one(
        "[server]\ntrusted_proxies = [\"nope\"]\n",
        "server.trusted_proxies[0]",
        "not an IP address",
    );
    expect_one(
        "[[plugins]]\nname = \"basic-auth\"\nconfig = { htpasswd_file = \"/nonexistent/htpasswd\" }\n",
        "plugins[0].config.htpasswd_file",
        "cannot read",
    );
}

/// An acl where no key-auth, basic-auth or jwt runs can never pass (forward-auth identifies no
/// consumer): every request would be a 401, so the config is refused, naming the routes. With an
/// auth plugin on the route (here global, so for every route) it loads.
#[test]
fn acl_without_an_identifying_auth_plugin_is_refused() {
    for auth in [
        "",
        "[[plugins]]\nname = \"forward-auth\"\nconfig = { address = \"http://127.0.0.1:9002/auth\" }\n",
    ] {
        let e = expect_one(
            &format!("{auth}[[plugins]]\nname = \"acl\"\nconfig = {{ allow = [\"admins\"] }}\n"),
            if auth.is_empty() { "plugins[0].name" } else { "plugins[1].name" },
            "acl can never pass on route \"r\"",
        );
        assert!(e.message.contains("forward-auth"), "{e}");
    }
    let text = format!(
        "{BASE}[[plugins]]\nname = \"key-auth\"\n\n[[plugins]]\nname = \"acl\"\nroute = \"r\"\nconfig = {{ allow = [\"admins\"] }}\n"
    );
    assert!(load_str(&text, "test.toml").is_ok());
}

/// An htpasswd file in the temp dir with one line per user (a repeated name is a repeated line),
/// all with one bcrypt hash; returns its path and the hash.
fn htpasswd(name: &str, users: &[&str]) -> (std::path::PathBuf, String) {
    let file =
        std::env::temp_dir().join(format!("ringgate-{name}-{}.htpasswd", std::process::id()));
    let hash = bcrypt::hash("pw", 4).expect("bcrypt");
    let text: String = users.iter().map(|u| format!("{u}:{hash}\n")).collect();
    std::fs::write(&file, text).expect("write htpasswd");
    (file, hash)
}

/// An htpasswd user that is also a consumer's basic-auth credential is one username with two
/// passwords (the htpasswd one won, silently): refused, naming both.
#[test]
fn an_htpasswd_user_clashing_with_a_credential_is_refused() {
    let (file, hash) = htpasswd("clash", &["alice", "bob"]);
    let e = expect_one(
        &format!(
            "[[consumers]]\nusername = \"alice\"\nbasicauth_credentials = [{{ username = \"alice\", password = \"{hash}\" }}]\n\n[[plugins]]\nname = \"basic-auth\"\nconfig = {{ htpasswd_file = \"{}\" }}\n",
            file.display()
        ),
        "plugins[0].config.htpasswd_file",
        "user \"alice\" is also a basicauth_credentials username (consumer \"alice\")",
    );
    let _ = std::fs::remove_file(&file);
    assert!(!e.message.contains(&hash), "no hash in the message: {e}");
}

/// A user listed twice in one htpasswd file is refused, naming both lines (Apache takes the
/// first line, a map the last: before, the last won silently).
#[test]
fn an_htpasswd_user_listed_twice_is_refused() {
    let (file, hash) = htpasswd("dup", &["alice", "bob", "alice"]);
    let e = expect_one(
        &format!(
            "[[plugins]]\nname = \"basic-auth\"\nconfig = {{ htpasswd_file = \"{}\" }}\n",
            file.display()
        ),
        "plugins[0].config.htpasswd_file",
        ":3: user \"alice\" is already defined at line 1",
    );
    let _ = std::fs::remove_file(&file);
    assert!(!e.message.contains(&hash), "no hash in the message: {e}");
}

/// htpasswd users are consumers wherever the basic-auth plugin stands in the file: a key-auth
/// `anonymous` or a consumer-scoped plugin above it may name one. Before, only plugins after the
/// basic-auth entry could, so swapping two blocks made a config invalid.
#[test]
fn htpasswd_consumers_can_be_named_from_plugins_above() {
    let (file, _) = htpasswd("order", &["guest"]);
    let text = format!(
        "[[plugins]]\nname = \"key-auth\"\nroute = \"r\"\nconfig = {{ anonymous = \"guest\" }}\n\n[[plugins]]\nname = \"rate-limiting\"\nconsumer = \"guest\"\nconfig = {{ minute = 5 }}\n\n[[plugins]]\nname = \"basic-auth\"\nconfig = {{ htpasswd_file = \"{}\" }}\n",
        file.display()
    );
    let loaded = load_str(&format!("{BASE}{text}"), "test.toml");
    let _ = std::fs::remove_file(&file);
    let cfg = loaded.unwrap_or_else(|e| panic!("{e:?}"));
    // File order is kept.
    let names: Vec<&str> = cfg.plugins.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["key-auth", "rate-limiting", "basic-auth"]);
}

/// An IPv4-mapped IPv6 block is read as the IPv4 block it maps (clients' mapped addresses are
/// compared as IPv4, so `::ffff:10.0.0.0/104` as written never matched); other IPv6 blocks stay.
#[test]
fn ipv4_mapped_blocks_are_ipv4() {
    let cfg = load_str(
        &format!(
            "{BASE}[[plugins]]\nname = \"ip-restriction\"\nconfig = {{ allow = [\"::ffff:10.0.0.0/104\", \"::ffff:192.168.1.7\", \"2001:db8::/32\"] }}\n"
        ),
        "test.toml",
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    let Some(PluginConfig::IpRestriction(def)) = cfg.plugins.first().map(|p| &p.config) else {
        panic!("no ip-restriction");
    };
    let shown: Vec<String> = def.allow.iter().map(ToString::to_string).collect();
    assert_eq!(shown, ["10.0.0.0/8", "192.168.1.7/32", "2001:db8::/32"]);
}
