//! One ACME conversation (RFC 8555), through the `instant-acme` client: the account (created once,
//! then kept in storage), and an order for one certificate's names: publish each challenge's
//! answer in the `AcmeStore`, tell the CA, wait for validation, finalize with a fresh key, fetch the
//! chain.
//!
//! Runs on the ACME manager thread's own single-threaded tokio runtime: the CA's latency, DNS and
//! file writes never reach a worker. Whatever the outcome, the challenge answers are withdrawn from
//! the store when the order ends (`Published`'s drop).
//!
//! DNS-01 publishes through `[acme] dns_hook`, lego's `exec` convention: `HOOK present
//! _acme-challenge.NAME. VALUE` for every name first, then `dns_delay`, then the CA is told to
//! look; `HOOK cleanup _acme-challenge.NAME. VALUE` for each when the order ends. A wildcard
//! `*.example.com` and `example.com` in one order put two values under the same record name, so
//! a hook must add values, not replace them. The hook runs on this thread (blocking it is fine:
//! nothing else runs on an order's runtime), killed after `HOOK_TIMEOUT`.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, ExternalAccountKey,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use super::files;
use super::store::AcmeStore;
use crate::config::model::{AcmeChallenge, AcmeDef, DnsHook};

/// How long one `dns_hook` call may take.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(120);

/// How long the CA gets to validate, and then to issue (each; instant-acme polls with backoff).
const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(std::time::Duration::from_millis(250))
    .timeout(std::time::Duration::from_secs(90));

/// The account for `def.directory`: the stored one when it was made for this directory, else a new
/// one (stored, mode 0600: its key signs every request to the CA).
pub async fn account(def: &AcmeDef) -> Result<Account, String> {
    let builder = match &def.ca_file {
        Some(f) => Account::builder_with_root(f),
        None => Account::builder(),
    }
    .map_err(|e| format!("ACME client setup failed: {e}"))?;
    let file = files::account_file(&def.storage, &def.directory);
    if let Ok(bytes) = std::fs::read(&file) {
        let stored: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
        let same_ca = stored
            .as_ref()
            .and_then(|v| v.get("directory"))
            .and_then(|d| d.as_str())
            == Some(def.directory.as_str());
        if let (true, Some(v)) = (same_ca, stored) {
            let creds: AccountCredentials =
                serde_json::from_value(v).map_err(|e| format!("{}: {e}", file.display()))?;
            return builder
                .from_credentials(creds)
                .await
                .map_err(|e| format!("restoring the ACME account from {}: {e}", file.display()));
        }
    }
    let contact: Vec<&str> = def.contact.iter().map(String::as_str).collect();
    let eab = def
        .eab
        .as_ref()
        .map(|e| ExternalAccountKey::new(e.kid.clone(), &e.hmac_key));
    let (account, creds) = builder
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            def.directory.clone(),
            eab.as_ref(),
        )
        .await
        .map_err(|e| format!("creating an ACME account at {}: {e}", def.directory))?;
    let json = serde_json::to_vec_pretty(&creds).map_err(|e| e.to_string())?;
    files::make_dir(file.parent().unwrap_or(&def.storage))
        .and_then(|()| files::write_private(&file, &json))
        .map_err(|e| format!("storing the ACME account in {}: {e}", file.display()))?;
    crate::info!("acme account created directory={}", def.directory);
    Ok(account)
}

/// DNS-01: the hook and where the records not yet withdrawn are listed (`files::dns_pending_file`).
pub struct Dns<'a> {
    pub hook: &'a DnsHook,
    pub pending: PathBuf,
}

/// Orders a certificate for `names`; returns (PEM chain, PEM private key). `dns` is set when
/// `challenge` is DNS-01.
pub async fn order(
    account: &Account,
    names: &[String],
    challenge: AcmeChallenge,
    dns: Option<Dns<'_>>,
    store: &Arc<AcmeStore>,
) -> Result<(String, String), String> {
    let ids: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .map_err(|e| format!("new order: {e}"))?;
    let mut published = Published {
        store,
        tokens: Vec::new(),
        alpn: Vec::new(),
        records: Vec::new(),
        dns: dns.as_ref(),
    };
    let kind = match challenge {
        AcmeChallenge::Http01 => ChallengeType::Http01,
        AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        AcmeChallenge::Dns01 => ChallengeType::Dns01,
    };
    // DNS-01 publishes every record before the CA is told to look at any (two names may share
    // one record name), so it takes two passes; the others answer and tell in one.
    let passes = if challenge == AcmeChallenge::Dns01 {
        2
    } else {
        1
    };
    for pass in 0..passes {
        if pass == 1 {
            if let Some(delay) = dns
                .as_ref()
                .map(|d| d.hook.delay)
                .filter(|d| !d.is_zero() && !published.records.is_empty())
            {
                tokio::time::sleep(delay).await;
            }
        }
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(|e| format!("authorization: {e}"))?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(format!("authorization is {other:?}")),
            }
            let mut ch = authz
                .challenge(kind.clone())
                .ok_or_else(|| format!("the CA offers no {kind:?} challenge"))?;
            // Lower-case, as the TLS resolver looks names up.
            let name = ch.identifier().to_string().to_ascii_lowercase();
            if pass == 0 {
                let ka = ch.key_authorization();
                match challenge {
                    AcmeChallenge::Http01 => {
                        store.add_token(&ch.token, ka.as_str());
                        published.tokens.push(ch.token.clone());
                    }
                    AcmeChallenge::TlsAlpn01 => {
                        let cert = alpn_cert(&name, ka.digest().as_ref())?;
                        store.add_alpn_cert(&name, cert);
                        published.alpn.push(name.clone());
                    }
                    AcmeChallenge::Dns01 => {
                        let Identifier::Dns(base) = ch.identifier().identifier else {
                            return Err(format!("{name}: not a DNS identifier"));
                        };
                        let record = format!("_acme-challenge.{}.", base.to_ascii_lowercase());
                        let value = ka.dns_value();
                        let dns = published.dns.ok_or("dns-01 without a dns_hook")?;
                        // Listed before `present` runs: a hook that published and then failed,
                        // or was killed, still gets its `cleanup`.
                        published.records.push((record.clone(), value.clone()));
                        write_pending(&dns.pending, &published.records)?;
                        run_hook(&dns.hook.program, "present", &record, &value)?;
                        crate::info!("acme dns-01 record published record={record} for={name}");
                        continue;
                    }
                }
            }
            ch.set_ready()
                .await
                .map_err(|e| format!("challenge for {name}: {e}"))?;
        }
    }
    let status = order
        .poll_ready(&POLL)
        .await
        .map_err(|e| format!("validation: {e}"))?;
    if status != OrderStatus::Ready {
        return Err(format!("the order is {status:?} after validation"));
    }
    drop(published);
    let key_pem = order
        .finalize()
        .await
        .map_err(|e| format!("finalize: {e}"))?;
    let chain = order
        .poll_certificate(&POLL)
        .await
        .map_err(|e| format!("certificate: {e}"))?;
    Ok((chain, key_pem))
}

/// Challenge answers this order put in the store or in DNS; withdrawn when the order is done or
/// abandoned.
struct Published<'a> {
    store: &'a AcmeStore,
    tokens: Vec<String>,
    alpn: Vec<String>,
    /// DNS-01: (record name, value) published (or being published) through the hook.
    records: Vec<(String, String)>,
    dns: Option<&'a Dns<'a>>,
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        for t in &self.tokens {
            self.store.remove_token(t);
        }
        for n in &self.alpn {
            self.store.remove_alpn_cert(n);
        }
        if let Some(dns) = self.dns {
            withdraw(dns.hook, &dns.pending, &self.records);
        }
    }
}

/// Runs `cleanup` for `records`; forgets them (the pending file) only when every one succeeded.
fn withdraw(hook: &DnsHook, pending: &Path, records: &[(String, String)]) {
    let mut ok = true;
    for (record, value) in records {
        // A record left behind is harmless to the next order (a new value is added); say so.
        if let Err(e) = run_hook(&hook.program, "cleanup", record, value) {
            crate::warn!("acme dns-01 record not withdrawn record={record} error={e:?}");
            ok = false;
        }
    }
    if ok {
        let _ = std::fs::remove_file(pending);
    }
}

/// Records an earlier run listed in `pending` and did not withdraw (it was stopped or crashed
/// mid-order, or a cleanup failed): withdrawn now, before a new order publishes more.
pub fn withdraw_stale(hook: &DnsHook, pending: &Path) {
    let Ok(text) = std::fs::read_to_string(pending) else {
        return;
    };
    let records: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(r, v)| (r.to_owned(), v.to_owned()))
        .collect();
    crate::info!(
        "acme dns-01 withdrawing records left by an earlier order count={} file={}",
        records.len(),
        pending.display()
    );
    withdraw(hook, pending, &records);
}

fn write_pending(file: &Path, records: &[(String, String)]) -> Result<(), String> {
    let text: String = records.iter().map(|(r, v)| format!("{r} {v}\n")).collect();
    file.parent()
        .map_or(Ok(()), files::make_dir)
        .and_then(|()| files::write_private(file, text.as_bytes()))
        .map_err(|e| format!("recording the DNS-01 records in {}: {e}", file.display()))
}

/// Runs `hook action record value` to its end, or kills it after `HOOK_TIMEOUT`. Its output goes
/// to the gateway's own (the log stream).
fn run_hook(hook: &Path, action: &str, record: &str, value: &str) -> Result<(), String> {
    let shown = hook.display();
    // Its own process group, so a timeout ends what it started too (a `curl` or `nsupdate` left
    // running could publish after the order gave up).
    let mut child = Command::new(hook)
        .args([action, record, value])
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("dns_hook {shown}: {e}"))?;
    let deadline = Instant::now() + HOOK_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(()),
            Ok(Some(st)) => return Err(format!("dns_hook {shown} {action} {record}: {st}")),
            Ok(None) if Instant::now() >= deadline => {
                if let Ok(pgid) = i32::try_from(child.id()) {
                    // SAFETY: signals the process group the child leads; no memory involved.
                    unsafe { libc::kill(-pgid, libc::SIGKILL) };
                }
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "dns_hook {shown} {action} {record}: still running after {}s, killed",
                    HOOK_TIMEOUT.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("dns_hook {shown}: {e}")),
        }
    }
}

/// The TLS-ALPN-01 certificate for `name` (RFC 8737): self-signed, the name as its only SAN, and
/// the critical acmeIdentifier extension carrying the SHA-256 of the key authorization.
fn alpn_cert(name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let fail = |e: rcgen::Error| format!("tls-alpn-01 certificate for {name}: {e}");
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(fail)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(fail)?;
    let cert = params.self_signed(&key).map_err(fail)?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signer = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| format!("tls-alpn-01 key: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signer,
    )))
}
