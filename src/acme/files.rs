//! The ACME storage directory, laid out like certbot's so operators find their way around it:
//!
//! ```text
//! {storage}/accounts/{ca host}.json               one ACME account per CA (its key: mode 0600)
//! {storage}/certificates/{name}/fullchain.pem     leaf first, then the CA's chain
//! {storage}/certificates/{name}/privkey.pem       PKCS#8 (mode 0600)
//! {storage}/certificates/{name}/directory         the directory URL of the CA that issued it
//! {storage}/certificates/{name}/backoff.json      after a failed order: when to try again
//! ```
//!
//! `{name}` is the certificate's first SNI name. A new pair is written whole as `*.new` files (mode
//! 0600, created exclusively, never through a symlink, synced) before any is renamed into place,
//! in the order chain, key, directory: the next load finishes a save a crash interrupted after its
//! staging, whichever rename it stopped at (also the first save, with no old key to fall back on). Only the manager thread,
//! startup and reloads (main thread) touch these files.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// A certificate read from storage or just issued.
#[derive(Debug, Clone)]
pub struct Issued {
    pub key: Arc<CertifiedKey>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The leaf's DNS subject alternative names, lower-case.
    pub names: Vec<String>,
    /// The ACME directory it came from (`None`: not recorded, e.g. put there by hand).
    pub directory: Option<String>,
}

impl Issued {
    /// Whether this certificate names every one of `names`.
    pub fn covers(&self, names: &[String]) -> bool {
        names.iter().all(|n| self.names.iter().any(|m| m == n))
    }

    /// When to renew: `renew_before` ahead of expiry, or (default) once two thirds of the
    /// lifetime have passed, as Let's Encrypt advises. A `renew_before` that is not shorter than
    /// the lifetime (60 days against a 45- or 6-day certificate) falls back to the default: taken
    /// literally it would order a new certificate right after each issuance, into the CA's rate
    /// limits.
    pub fn renew_at(&self, renew_before: Option<Duration>) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        let before = match renew_before {
            Some(b) if b < lifetime => b,
            _ => lifetime / 3,
        };
        self.not_after
            .checked_sub(before)
            .map_or(self.not_before, |t| t.max(self.not_before))
    }
}

/// `certificates/{first name}`; a wildcard's `*.` is written `_.` (as lego does): `_` cannot be in
/// an ACME name, and `rm -r certificates/*.example.com` would otherwise be a glob matching every
/// certificate of the domain.
fn cert_dir(storage: &Path, name: &str) -> PathBuf {
    let dir = match name.strip_prefix("*.") {
        Some(rest) => format!("_.{rest}"),
        None => name.to_owned(),
    };
    storage.join("certificates").join(dir)
}

/// DNS-01 records published for `name`'s order and not yet withdrawn, one `record value` per line:
/// written before each `present`, removed once every `cleanup` succeeded, so records a stop or
/// crash left behind are withdrawn by the next start.
pub fn dns_pending_file(storage: &Path, name: &str) -> PathBuf {
    cert_dir(storage, name).join("dns-pending")
}

/// The account for the CA at `directory`, one file per CA host (staging and production keep
/// their own accounts).
pub fn account_file(storage: &Path, directory: &str) -> PathBuf {
    let authority = directory
        .strip_prefix("https://")
        .unwrap_or(directory)
        .split('/')
        .next()
        .unwrap_or_default();
    let safe: String = authority
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    storage.join("accounts").join(format!("{safe}.json"))
}

/// The stored certificate of `name`: `Ok(None)` when there is none yet, `Err` when the files exist
/// but cannot be used (the message says why; the caller orders a new one).
pub fn load(storage: &Path, name: &str) -> Result<Option<Issued>, String> {
    let dir = cert_dir(storage, name);
    let chain = dir.join("fullchain.pem");
    let key = dir.join("privkey.pem");
    finish_interrupted_save(&dir);
    let chain_pem = match std::fs::read(&chain) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", chain.display())),
    };
    let key_pem = std::fs::read(&key).map_err(|e| format!("{}: {e}", key.display()))?;
    let mut issued = parse(&chain_pem, &key_pem).map_err(|e| format!("{}: {e}", dir.display()))?;
    issued.directory = std::fs::read_to_string(dir.join("directory"))
        .ok()
        .map(|d| d.trim().to_owned());
    Ok(Some(issued))
}

/// Parses a PEM chain (leaf first) and its PEM private key, checking that they match.
pub fn parse(chain_pem: &[u8], key_pem: &[u8]) -> Result<Issued, String> {
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("invalid certificate PEM: {e}"))?;
    let leaf = chain.first().ok_or("no certificate in the chain")?.clone();
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("invalid key PEM: {e}"))?;
    let signer = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("unsupported private key: {e}"))?;
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match()
        .map_err(|e| format!("key and certificate do not match: {e}"))?;
    let (_, x509) = x509_parser::parse_x509_certificate(&leaf)
        .map_err(|e| format!("cannot parse the certificate: {e}"))?;
    let validity = x509.validity();
    let time = |t: x509_parser::time::ASN1Time| {
        let secs = u64::try_from(t.timestamp()).unwrap_or(0);
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    };
    let mut names = Vec::new();
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    Ok(Issued {
        key: Arc::new(ck),
        not_before: time(validity.not_before),
        not_after: time(validity.not_after),
        names,
        directory: None,
    })
}

/// Finishes a save a crash interrupted after its staging (every `*.new` file is written and synced
/// before the first rename; they are renamed chain, key, directory). Where it stopped shows in
/// what is still staged:
/// - `fullchain.pem.new` too: no rename happened; finished if the staged pair matches (a pair
///   that does not was cut off while being staged, and the old one stays);
/// - `privkey.pem.new` but no staged chain: the new chain is in place, next to the old key or
///   none at all (a first save); finished if they match;
/// - only `directory.new`: the pair is in place, the CA's record not yet (without it, a
///   certificate from a new CA would look like the old CA's and be ordered again at once).
fn finish_interrupted_save(dir: &Path) {
    let staged = |f: &str| dir.join(format!("{f}.new"));
    let pair_matches = |chain: &Path, key: &Path| match (std::fs::read(chain), std::fs::read(key)) {
        (Ok(c), Ok(k)) => parse(&c, &k).is_ok(),
        _ => false,
    };
    let renames: &[&str] = if staged("fullchain.pem").exists() {
        if !pair_matches(&staged("fullchain.pem"), &staged("privkey.pem")) {
            return;
        }
        &["fullchain.pem", "privkey.pem", "directory"]
    } else if staged("privkey.pem").exists() {
        if !pair_matches(&dir.join("fullchain.pem"), &staged("privkey.pem")) {
            return;
        }
        &["privkey.pem", "directory"]
    } else if staged("directory").exists() {
        &["directory"]
    } else {
        return;
    };
    for f in renames {
        if let Err(e) = std::fs::rename(staged(f), dir.join(f)) {
            if e.kind() != std::io::ErrorKind::NotFound {
                crate::warn!(
                    "acme storage repair failed dir={} file={f} error=\"{e}\"",
                    dir.display()
                );
                return;
            }
        }
    }
    let _ = sync_dir(dir);
    crate::warn!(
        "acme storage repaired (a save was interrupted) dir={}",
        dir.display()
    );
}

/// Stores a certificate `directory` just issued: every file staged whole, then renamed into place.
pub fn save(
    storage: &Path,
    name: &str,
    chain_pem: &str,
    key_pem: &str,
    directory: &str,
) -> std::io::Result<()> {
    let dir = cert_dir(storage, name);
    make_dir(&dir)?;
    let record = format!("{directory}\n");
    let files = [
        ("fullchain.pem", chain_pem.as_bytes()),
        ("privkey.pem", key_pem.as_bytes()),
        ("directory", record.as_bytes()),
    ];
    for (file, bytes) in &files {
        stage(&dir.join(format!("{file}.new")), bytes)?;
    }
    for (file, _) in &files {
        std::fs::rename(dir.join(format!("{file}.new")), dir.join(file))?;
    }
    sync_dir(&dir)
}

/// The retry schedule after failed orders, kept across restarts: a gateway restarted in a loop
/// must not order on every start (Let's Encrypt allows 5 failed validations per name and hour).
/// It holds only for the same CA, challenge and names.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Backoff {
    pub directory: String,
    pub challenge: String,
    pub names: Vec<String>,
    pub failures: u32,
    /// Unix seconds.
    pub retry_at: u64,
    pub last_error: Option<String>,
}

fn backoff_file(storage: &Path, name: &str) -> PathBuf {
    cert_dir(storage, name).join("backoff.json")
}

pub fn save_backoff(storage: &Path, name: &str, b: &Backoff) -> std::io::Result<()> {
    let json = serde_json::to_vec(b).map_err(std::io::Error::other)?;
    make_dir(&cert_dir(storage, name))?;
    write_private(&backoff_file(storage, name), &json)
}

/// The stored schedule (`None`: none, or unreadable: then the certificate is ordered as usual).
pub fn load_backoff(storage: &Path, name: &str) -> Option<Backoff> {
    let bytes = std::fs::read(backoff_file(storage, name)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

pub fn clear_backoff(storage: &Path, name: &str) {
    let _ = std::fs::remove_file(backoff_file(storage, name));
}

/// Creates `dir` and its parents, mode 0700 (they hold private keys).
pub fn make_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Writes `bytes` to `path` through a staged file and a rename.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut staged = path.as_os_str().to_owned();
    staged.push(".new");
    let staged = PathBuf::from(staged);
    stage(&staged, bytes)?;
    std::fs::rename(&staged, path)?;
    match path.parent() {
        Some(d) => sync_dir(d),
        None => Ok(()),
    }
}

/// Writes `bytes` to a new file at `path` (mode 0600), replacing a stale one: created exclusively
/// and never through a symlink, so nobody else's file (or link) receives a private key; synced.
fn stage(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Makes the renames in `dir` durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued(not_before: u64, not_after: u64, names: &[&str]) -> Issued {
        let cert = rcgen::generate_simple_self_signed(vec!["x.test".to_owned()]).expect("cert");
        let mut i = parse(
            cert.cert.pem().as_bytes(),
            cert.signing_key.serialize_pem().as_bytes(),
        )
        .expect("parse");
        i.not_before = SystemTime::UNIX_EPOCH + Duration::from_secs(not_before);
        i.not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(not_after);
        i.names = names.iter().map(|n| (*n).to_owned()).collect();
        i
    }

    #[test]
    fn renewal_is_due_at_two_thirds_of_the_lifetime_unless_configured() {
        let day = 86_400;
        let i = issued(0, 90 * day, &["a.test"]);
        let at = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs())
        };
        assert_eq!(at(i.renew_at(None)), Some(60 * day));
        assert_eq!(
            at(i.renew_at(Some(Duration::from_secs(10 * day)))),
            Some(80 * day)
        );
        // Not shorter than the lifetime: the default, not "due from the start" (which would order
        // again right after every issuance).
        assert_eq!(
            at(i.renew_at(Some(Duration::from_secs(365 * day)))),
            Some(60 * day)
        );
    }

    #[test]
    fn a_save_interrupted_between_its_renames_is_finished_by_the_next_load() {
        let dir = std::env::temp_dir().join(format!("ringgate-acme-roll-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let old = rcgen::generate_simple_self_signed(vec!["a.test".to_owned()]).expect("cert");
        save(
            &dir,
            "a.test",
            &old.cert.pem(),
            &old.signing_key.serialize_pem(),
            "https://ca.test/dir",
        )
        .expect("save");
        // The next save got as far as renaming the new chain; the new key is still staged.
        let new = rcgen::generate_simple_self_signed(vec!["a.test".to_owned()]).expect("cert");
        let d = dir.join("certificates/a.test");
        stage(
            &d.join("privkey.pem.new"),
            new.signing_key.serialize_pem().as_bytes(),
        )
        .expect("stage");
        std::fs::write(d.join("fullchain.pem"), new.cert.pem()).expect("chain");
        let i = load(&dir, "a.test").expect("repaired").expect("stored");
        assert_eq!(i.key.cert[0].as_ref(), new.cert.der().as_ref());
        assert!(!d.join("privkey.pem.new").exists());
        // And it stays repaired.
        assert!(load(&dir, "a.test").expect("load").is_some());
        // A first save (no old key at all) that stopped after the chain's rename; then one that
        // stopped before any rename; then one that stopped before the CA's record: each finished
        // (the first used to be thrown away and ordered again: found by a review).
        for renamed in [
            &["fullchain.pem"][..],
            &[],
            &["fullchain.pem", "privkey.pem"],
        ] {
            let _ = std::fs::remove_dir_all(&d);
            make_dir(&d).expect("dir");
            let next = rcgen::generate_simple_self_signed(vec!["a.test".to_owned()]).expect("cert");
            let files = [
                ("fullchain.pem", next.cert.pem()),
                ("privkey.pem", next.signing_key.serialize_pem()),
                ("directory", "https://new-ca.test/dir\n".to_owned()),
            ];
            for (f, text) in &files {
                stage(&d.join(format!("{f}.new")), text.as_bytes()).expect("stage");
            }
            for f in renamed {
                std::fs::rename(d.join(format!("{f}.new")), d.join(f)).expect("rename");
            }
            let i = load(&dir, "a.test").expect("repaired").expect("stored");
            assert_eq!(
                i.key.cert[0].as_ref(),
                next.cert.der().as_ref(),
                "{renamed:?}"
            );
            assert_eq!(
                i.directory.as_deref(),
                Some("https://new-ca.test/dir"),
                "{renamed:?}"
            );
            for (f, _) in &files {
                assert!(!d.join(format!("{f}.new")).exists(), "{f} {renamed:?}");
            }
        }
        // A staged pair that does not match (cut off while staging): the stored pair stays.
        let kept = rcgen::generate_simple_self_signed(vec!["a.test".to_owned()]).expect("cert");
        save(
            &dir,
            "a.test",
            &kept.cert.pem(),
            &kept.signing_key.serialize_pem(),
            "https://ca.test/dir",
        )
        .expect("save");
        stage(&d.join("fullchain.pem.new"), new.cert.pem().as_bytes()).expect("stage");
        stage(
            &d.join("privkey.pem.new"),
            b"-----BEGIN PRIVATE KEY-----\ncut",
        )
        .expect("stage");
        let i = load(&dir, "a.test").expect("load").expect("stored");
        assert_eq!(i.key.cert[0].as_ref(), kept.cert.der().as_ref());
        let _ = std::fs::remove_file(d.join("fullchain.pem.new"));
        let _ = std::fs::remove_file(d.join("privkey.pem.new"));
        // A staged file is never written through a symlink someone left in its place.
        let target = dir.join("elsewhere");
        std::os::unix::fs::symlink(&target, d.join("privkey.pem.new")).expect("symlink");
        save(
            &dir,
            "a.test",
            &new.cert.pem(),
            &new.signing_key.serialize_pem(),
            "https://ca.test/dir",
        )
        .expect("save");
        assert!(!target.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn covers_needs_every_name() {
        let i = issued(0, 1, &["a.test", "b.test"]);
        assert!(i.covers(&["a.test".to_owned()]));
        assert!(i.covers(&["b.test".to_owned(), "a.test".to_owned()]));
        assert!(!i.covers(&["a.test".to_owned(), "c.test".to_owned()]));
    }

    #[test]
    fn parse_reads_names_and_validity_and_refuses_a_foreign_key() {
        let c =
            rcgen::generate_simple_self_signed(vec!["API.test".to_owned(), "b.test".to_owned()])
                .expect("cert");
        let i = parse(
            c.cert.pem().as_bytes(),
            c.signing_key.serialize_pem().as_bytes(),
        )
        .expect("parse");
        assert_eq!(i.names, ["api.test", "b.test"]);
        assert!(i.not_after > i.not_before);
        let other = rcgen::KeyPair::generate().expect("key");
        let e =
            parse(c.cert.pem().as_bytes(), other.serialize_pem().as_bytes()).expect_err("mismatch");
        assert!(e.contains("do not match"), "{e}");
        assert!(parse(b"", b"").is_err());
    }

    #[test]
    fn save_then_load_round_trips_with_private_modes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("ringgate-acme-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(load(&dir, "a.test").expect("no error").is_none());
        let c = rcgen::generate_simple_self_signed(vec!["a.test".to_owned()]).expect("cert");
        save(
            &dir,
            "a.test",
            &c.cert.pem(),
            &c.signing_key.serialize_pem(),
            "https://ca.test/dir",
        )
        .expect("save");
        let i = load(&dir, "a.test").expect("load").expect("stored");
        assert_eq!(i.directory.as_deref(), Some("https://ca.test/dir"));
        assert_eq!(i.names, ["a.test"]);
        let key = dir.join("certificates/a.test/privkey.pem");
        let mode = std::fs::metadata(&key).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let d = std::fs::metadata(dir.join("certificates/a.test")).expect("dir");
        assert_eq!(d.permissions().mode() & 0o777, 0o700);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
