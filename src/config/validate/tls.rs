//! TLS material, read and parsed at load time on the main thread (workers never touch files):
//! `[[certificates]]` (certificate chain + private key + SNI names) and the client configs of https
//! upstreams (system roots or a `ca_file`).
//!
//! Invariants: a returned `CertificateDef` has a non-empty chain whose leaf parses, a private key that
//! rustls can sign with and that matches the leaf, and SNI names that the leaf covers; SNI names are
//! unique across certificates and at most one certificate is marked `default`. Relative paths are
//! relative to the config file's directory.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore};

use super::push;
use crate::config::locate::{KeyPath, Problem};
use crate::config::model::{AcmeCertDef, CertificateDef, ListenDef, ListenKind};
use crate::config::net;
use crate::config::raw::RawCertificate;

/// The crypto provider for every TLS config ringgate builds: *ring* (no cmake/clang needed), whose
/// defaults are modern: TLS 1.3 suites and ECDHE + AEAD suites for TLS 1.2, X25519 and P-256/P-384.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Resolves `file` against the config file's directory.
fn resolve_path(base: &Path, file: &str) -> PathBuf {
    base.join(file)
}

/// The certificates of a PEM file (at least one), or why not.
pub(super) fn read_certs(file: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    read_certs_pem(file).map(|(certs, _)| certs)
}

/// `read_certs`, with the file's bytes (for a client that takes PEM: read once, checked as used).
pub(super) fn read_certs_pem(
    file: &Path,
) -> Result<(Vec<CertificateDer<'static>>, Vec<u8>), String> {
    if file.as_os_str().is_empty() {
        return Err("`cert` is empty: name a PEM certificate file".to_owned());
    }
    let bytes = crate::config::read_file(file)
        .map_err(|e| format!("cannot read certificate file {}: {e}", file.display()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {}", file.display(), pem_problem(&e)))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no \"BEGIN CERTIFICATE\" PEM block found",
            file.display()
        ));
    }
    Ok((certs, bytes))
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1), with the file's bytes, or why not.
fn read_key_pem(file: &Path) -> Result<(PrivateKeyDer<'static>, Vec<u8>), String> {
    if file.as_os_str().is_empty() {
        return Err("`key` is empty: name a PEM private key file".to_owned());
    }
    let bytes = crate::config::read_file(file)
        .map_err(|e| format!("cannot read key file {}: {e}", file.display()))?;
    if bytes.windows(b"ENCRYPTED".len()).any(|w| w == b"ENCRYPTED") {
        return Err(format!(
            "{}: the private key is encrypted; the gateway reads unencrypted keys only (decrypt it with `openssl pkey -in KEY -out KEY.plain` and protect the file's permissions instead)",
            file.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!(
            "{}: no private key PEM block found (expected \"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\")",
            file.display()
        ),
        e => format!("{}: {}", file.display(), pem_problem(&e)),
    })?;
    Ok((key, bytes))
}

/// A PEM error in words (the error's own text can dump a section name as a list of bytes).
fn pem_problem(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::MissingSectionEnd { .. } => {
            "invalid PEM: a block has no END line (is the file cut short?)".to_owned()
        }
        Error::IllegalSectionStart { .. } => "invalid PEM: a BEGIN line is malformed".to_owned(),
        Error::Base64Decode(_) => {
            "invalid PEM: a block's base64 is corrupt (is the file cut short or edited?)".to_owned()
        }
        other => format!("invalid PEM: {other}"),
    }
}

/// `name` as rustls wants it: a DNS name, or an IP address (brackets of `[v6]` removed).
pub fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(bare.to_owned()).map_err(|_| {
        format!("{name:?} is not a valid TLS server name (a DNS name or an IP address)")
    })
}

/// Compiles `[[certificates]]` (reading the files): file certificates, then `acme = true` ones.
/// `acme_configured`: `[acme]` is present (or failed to decode: then its problem was reported and an
/// `acme = true` entry gets no second one).
pub fn certificates(
    raw: &[Option<RawCertificate>],
    base: &Path,
    acme_configured: bool,
    acme_dns01: bool,
    problems: &mut Vec<Problem>,
) -> (Vec<Option<CertificateDef>>, Vec<AcmeCertDef>) {
    let array = KeyPath::root().key("certificates");
    let mut files = Vec::with_capacity(raw.len());
    let mut acme = Vec::new();
    // Per file entry: (its index in `files` or `acme`, whether it is an acme one).
    let mut slot: Vec<Option<(usize, bool)>> = Vec::with_capacity(raw.len());
    let mut sni_owner: HashMap<String, usize> = HashMap::new();
    let mut default_at: Option<usize> = None;
    for (i, c) in raw.iter().enumerate() {
        let Some(c) = c else {
            slot.push(None);
            continue;
        };
        let path = array.index(i);
        if c.default == Some(true) {
            match default_at {
                Some(first) => push(
                    problems,
                    path.key("default"),
                    format!(
                        "only one certificate can be the default; certificates[{first}] already is"
                    ),
                ),
                None => default_at = Some(i),
            }
        }
        if c.acme == Some(true) {
            acme_entry(c, &path, acme_configured, acme_dns01, problems);
            let snis = snis(c, &path, i, None, None, &mut sni_owner, problems);
            slot.push(Some((acme.len(), true)));
            acme.push(AcmeCertDef {
                snis,
                default: false,
            });
            continue;
        }
        let (Some(cert), Some(key_file)) = (&c.cert, &c.key) else {
            for (k, v) in [("cert", &c.cert), ("key", &c.key)] {
                if v.is_none() {
                    push(
                        problems,
                        path.clone(),
                        format!("missing `{k}`: a certificate is read from `cert` and `key` PEM files, or obtained from the ACME CA with `acme = true`"),
                    );
                }
            }
            // Counted as a certificate all the same (no "TLS listener without certificates" on top).
            slot.push(Some((files.len(), false)));
            files.push(None);
            continue;
        };
        let key = certified_key(cert, key_file, ["cert", "key"], &path, base, problems);
        let snis = snis(
            c,
            &path,
            i,
            Some(cert),
            key.as_deref(),
            &mut sni_owner,
            problems,
        );
        slot.push(Some((files.len(), false)));
        files.push(key.map(|key| CertificateDef {
            cert_file: resolve_path(base, cert),
            key_file: resolve_path(base, key_file),
            snis,
            default: false,
            validity: key.cert.first().and_then(|leaf| leaf_validity(leaf)),
            key,
        }));
    }
    // The default: the one marked so, else the first.
    let default = default_at.unwrap_or(0);
    for (i, c) in raw.iter().enumerate() {
        let Some(c) = c else { continue };
        let has_snis = c.snis.as_ref().is_some_and(|s| !s.is_empty());
        if i != default && !has_snis && c.acme != Some(true) {
            push(
                problems,
                array.index(i),
                format!("this certificate can never be served: it has no `snis` and is not the default (certificates[{default}] is); add `snis = [\"…\"]` or `default = true`"),
            );
        }
    }
    match slot.get(default).copied().flatten() {
        Some((j, false)) => {
            if let Some(Some(d)) = files.get_mut(j) {
                d.default = true;
            }
        }
        Some((j, true)) => {
            if let Some(d) = acme.get_mut(j) {
                d.default = true;
            }
        }
        None => {}
    }
    (files, acme)
}

/// The rules only an `acme = true` entry has: no files, `[acme]` present, at least one name, no
/// wildcards unless the challenge is DNS-01 (the others cannot prove one).
fn acme_entry(
    c: &RawCertificate,
    path: &KeyPath,
    configured: bool,
    dns01: bool,
    problems: &mut Vec<Problem>,
) {
    for (k, v) in [("cert", &c.cert), ("key", &c.key)] {
        if v.is_some() {
            push(
                problems,
                path.key(k),
                format!("`{k}` cannot be combined with `acme = true`: the certificate and its key come from the ACME CA (remove `{k}`, or `acme`)"),
            );
        }
    }
    if !configured {
        push(
            problems,
            path.key("acme"),
            "`acme = true` needs an [acme] table naming the CA, e.g. [acme] directory = \"letsencrypt\", email = \"ops@example.com\"",
        );
    }
    match &c.snis {
        Some(list) if !list.is_empty() => {
            for (j, name) in list.iter().enumerate() {
                let bare = name.strip_prefix("*.").unwrap_or(name);
                let public = bare.contains('.') && !bare.contains('_') && !bare.ends_with('.');
                if !public {
                    push(
                        problems,
                        path.key("snis").index(j),
                        format!("{name:?}: a CA issues certificates only for public DNS names like \"api.example.com\" or \"*.example.com\" (at least two labels, no '_')"),
                    );
                }
                if name.starts_with("*.") && !dns01 {
                    push(
                        problems,
                        path.key("snis").index(j),
                        format!("{name:?}: a wildcard can only be proven with the DNS-01 challenge; set [acme] challenge = \"dns-01\" with a dns_hook, or list the names"),
                    );
                }
            }
        }
        _ => push(
            problems,
            path.key("snis"),
            "an `acme = true` certificate needs `snis`: the DNS names to obtain it for, e.g. snis = [\"api.example.com\"]",
        ),
    }
}

/// Reads and checks one certificate's chain and key; problems go to `path`'s keys `at` (the
/// certificate's and the key's).
fn certified_key(
    cert_file: &str,
    key_file: &str,
    at: [&str; 2],
    path: &KeyPath,
    base: &Path,
    problems: &mut Vec<Problem>,
) -> Option<Arc<CertifiedKey>> {
    certified_key_pem(cert_file, key_file, at, path, base, problems).map(|(key, _)| key)
}

/// `certified_key`, with the files' bytes (certificate chain, key) as they were read and checked.
pub(super) fn certified_key_pem(
    cert_file: &str,
    key_file: &str,
    at: [&str; 2],
    path: &KeyPath,
    base: &Path,
    problems: &mut Vec<Problem>,
) -> Option<(Arc<CertifiedKey>, [Vec<u8>; 2])> {
    let certs = read_certs_pem(&resolve_path(base, cert_file))
        .map_err(|e| push(problems, path.key(at[0]), e))
        .ok();
    let key = read_key_pem(&resolve_path(base, key_file))
        .map_err(|e| push(problems, path.key(at[1]), e))
        .ok();
    let ((certs, cert_pem), (key, key_pem)) = (certs?, key?);
    if let Some(leaf) = certs.first() {
        if let Err(e) = webpki::EndEntityCert::try_from(leaf) {
            push(
                problems,
                path.key(at[0]),
                format!(
                    "the first certificate in {cert_file} is not a valid X.509 certificate ({e}); \
                     the leaf certificate must come first, then its intermediates"
                ),
            );
            return None;
        }
    }
    let signer = match provider().key_provider.load_private_key(key) {
        Ok(s) => s,
        Err(e) => {
            push(
                problems,
                path.key(at[1]),
                format!(
                    "unsupported private key in {key_file} ({e}): rustls on ring takes RSA keys \
                     of 2048 to 8192 bits, ECDSA P-256 or P-384, and Ed25519"
                ),
            );
            return None;
        }
    };
    let ck = CertifiedKey::new(certs, signer);
    match ck.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Some((Arc::new(ck), [cert_pem, key_pem]))
        }
        Err(rustls::Error::InconsistentKeys(_)) => {
            push(
                problems,
                path.key(at[1]),
                format!(
                    "the private key in {key_file} does not match the first certificate in \
                     {cert_file} (the leaf must come first, then its intermediates)"
                ),
            );
            None
        }
        Err(e) => {
            push(
                problems,
                path.key(at[0]),
                format!("invalid certificate in {cert_file}: {e}"),
            );
            None
        }
    }
}

/// Validates `snis`: DNS names or `*.` wildcards, covered by the certificate, unique overall.
fn snis(
    c: &RawCertificate,
    path: &KeyPath,
    index: usize,
    cert_file: Option<&str>,
    key: Option<&CertifiedKey>,
    owner: &mut HashMap<String, usize>,
    problems: &mut Vec<Problem>,
) -> Vec<String> {
    let Some(list) = &c.snis else {
        return Vec::new();
    };
    let leaf = key
        .and_then(|k| k.cert.first())
        .and_then(|der| webpki::EndEntityCert::try_from(der).ok());
    let mut out = Vec::with_capacity(list.len());
    for (j, name) in list.iter().enumerate() {
        let at = path.key("snis").index(j);
        let lower = name.to_ascii_lowercase();
        let bare = lower.strip_prefix("*.").unwrap_or(&lower);
        if !net::is_hostname(bare) || bare.parse::<IpAddr>().is_ok() {
            push(
                problems,
                at,
                format!("{name:?} is not a valid SNI name: expected a DNS name like \"api.example.com\" or a wildcard like \"*.example.com\" (clients never send IP addresses as SNI)"),
            );
            continue;
        }
        if let Some(&first) = owner.get(&lower) {
            let whose = if first == index {
                "is listed twice in this certificate".to_owned()
            } else {
                format!("is already served by certificates[{first}]")
            };
            push(problems, at, format!("SNI {name:?} {whose}"));
            continue;
        }
        owner.insert(lower.clone(), index);
        // A wildcard covers exactly one label: probe it with one.
        let probe = if lower.starts_with("*.") {
            format!("ringgate-probe.{bare}")
        } else {
            lower.clone()
        };
        if let (Some(leaf), Ok(sn)) = (&leaf, ServerName::try_from(probe.as_str())) {
            if leaf.verify_is_valid_for_subject_name(&sn).is_err() {
                push(
                    problems,
                    at,
                    format!(
                        "the certificate in {} is not valid for {name:?} (not in its subject alternative names)",
                        cert_file.unwrap_or("?")
                    ),
                );
            }
        }
        out.push(lower);
    }
    out
}

/// A TLS listener needs a certificate, and certificates need a TLS listener (without one they would
/// be silently unused: `listen = ["0.0.0.0:443"]` next to a certificate serves plain HTTP on 443).
pub fn check_listeners(listeners: &[ListenDef], certificates: usize, problems: &mut Vec<Problem>) {
    if certificates > 0 {
        // Not when `[server]` has a problem: a refused listen entry may be the TLS one, and a
        // `[server]` that failed to decode is replaced by the default (plain) listener.
        let server = KeyPath::root().key("server");
        let server_broken = problems.iter().any(|p| p.path.0.starts_with(&server.0));
        if !server_broken && !listeners.iter().any(|l| l.kind == ListenKind::Https) {
            push(
                problems,
                KeyPath::root().key("certificates").index(0),
                "no listener has `tls = true`, so no certificate would ever be served: write the HTTPS listener as { addr = \"0.0.0.0:8443\", tls = true } in server.listen",
            );
        }
        return;
    }
    let path = KeyPath::root().key("server").key("listen");
    for (i, l) in listeners.iter().enumerate() {
        if l.kind == ListenKind::Https {
            push(
                problems,
                path.index(i),
                format!(
                    "TLS listener {} has no certificate: add a [[certificates]] entry with cert and key files",
                    l.addr
                ),
            );
        }
    }
}

/// Builds (and caches) the rustls client configs of https upstreams, reading CA files at load.
pub struct ClientConfigs {
    base: PathBuf,
    system: Option<Result<Arc<ClientConfig>, String>>,
    by_ca: HashMap<PathBuf, (Arc<ClientConfig>, u64)>,
}

impl ClientConfigs {
    pub fn new(base: PathBuf) -> ClientConfigs {
        ClientConfigs {
            base,
            system: None,
            by_ca: HashMap::new(),
        }
    }

    /// The identity of `ca_file`'s roots (after `get` read it): where it resolves and what it held;
    /// `None` for the system roots.
    pub fn roots_id(&self, ca_file: Option<&str>) -> Option<crate::config::model::RootsId> {
        ca_file.map(|ca| {
            let path = resolve_path(&self.base, ca);
            let digest = self.by_ca.get(&path).map_or(0, |(_, d)| *d);
            crate::config::model::RootsId { path, digest }
        })
    }

    /// The client config verifying against `ca_file` (PEM, one or more CA certificates) or, without
    /// one, the system's roots. Problems are recorded at `at`.
    pub fn get(
        &mut self,
        ca_file: Option<&str>,
        at: &KeyPath,
        problems: &mut Vec<Problem>,
    ) -> Option<Arc<ClientConfig>> {
        match ca_file {
            Some(ca) => {
                let file = resolve_path(&self.base, ca);
                if let Some((c, _)) = self.by_ca.get(&file) {
                    return Some(c.clone());
                }
                let mut digest = 0;
                let built = read_certs(&file).and_then(|certs| {
                    use std::hash::{Hash, Hasher};
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    for c in &certs {
                        c.as_ref().hash(&mut h);
                    }
                    digest = h.finish();
                    let mut roots = RootCertStore::empty();
                    let (added, _ignored) = roots.add_parsable_certificates(certs);
                    if added == 0 {
                        return Err(format!(
                            "{}: no usable CA certificate in it",
                            file.display()
                        ));
                    }
                    client_config(roots)
                });
                match built {
                    Ok(c) => {
                        self.by_ca.insert(file, (c.clone(), digest));
                        Some(c)
                    }
                    Err(e) => {
                        push(problems, at.clone(), e);
                        None
                    }
                }
            }
            None => {
                let system = self.system.get_or_insert_with(system_config);
                match system {
                    Ok(c) => Some(c.clone()),
                    Err(e) => {
                        push(problems, at.clone(), e.clone());
                        None
                    }
                }
            }
        }
    }
}

/// The operating system's trust store (rustls-native-certs reads the same files OpenSSL would, so
/// operators manage trust the usual way: `update-ca-certificates`, `SSL_CERT_FILE`, `SSL_CERT_DIR`).
fn system_config() -> Result<Arc<ClientConfig>, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        return Err(format!(
            "no system root certificates found{why}; install ca-certificates or set `ca_file`"
        ));
    }
    client_config(roots)
}

fn client_config(roots: RootCertStore) -> Result<Arc<ClientConfig>, String> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS client setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The not-before and not-after times of a DER certificate.
fn leaf_validity(der: &[u8]) -> Option<(std::time::SystemTime, std::time::SystemTime)> {
    let (_, x509) = x509_parser::parse_x509_certificate(der).ok()?;
    let at = |t: x509_parser::time::ASN1Time| {
        let secs = u64::try_from(t.timestamp()).unwrap_or(0);
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)
    };
    let v = x509.validity();
    Some((at(v.not_before), at(v.not_after)))
}
