//! `[acme]`: the ACME CA (RFC 8555) that issues `[[certificates]]` entries with `acme = true`.
//!
//! Only what can be checked offline is checked here (`ringgate check` contacts no CA and creates
//! nothing): the directory is an https URL (or a known alias), the contact looks like an address,
//! `storage` is a writable directory no other user can write (it holds private keys) or can be
//! created, `ca_file` holds at least one certificate,
//! the challenge has a listener to answer it on, and DNS-01's hook is an executable file.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use super::push;
use crate::config::locate::{KeyPath, Problem};
use crate::config::model::{AcmeChallenge, AcmeDef, DnsHook, Eab, ListenDef, ListenKind};
use crate::config::raw::{Int, RawAcme};

pub const LETSENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
pub const LETSENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// `None` when `[acme]` is absent (or invalid: then a problem was recorded).
pub fn compile(
    raw: Option<&RawAcme>,
    base: &Path,
    listeners: &[ListenDef],
    problems: &mut Vec<Problem>,
) -> Option<AcmeDef> {
    let raw = raw?;
    let p = KeyPath::root().key("acme");
    let before = problems.len();
    let directory = match raw.directory.as_deref() {
        None => {
            push(
                problems,
                p.key("directory"),
                "`directory` is required: the CA's ACME directory URL, or \"letsencrypt\" / \"letsencrypt-staging\"",
            );
            None
        }
        Some("letsencrypt") => Some(LETSENCRYPT.to_owned()),
        Some("letsencrypt-staging") => Some(LETSENCRYPT_STAGING.to_owned()),
        Some(url) if url.starts_with("https://") && url.len() > "https://".len() => {
            Some(url.to_owned())
        }
        Some(url) => {
            push(
                problems,
                p.key("directory"),
                format!("{url:?} is not an ACME directory: expected an https:// URL (RFC 8555 requires HTTPS), or \"letsencrypt\" / \"letsencrypt-staging\""),
            );
            None
        }
    };
    let mut contact = Vec::new();
    if let Some(email) = &raw.email {
        let ok = email
            .split_once('@')
            .is_some_and(|(user, domain)| !user.is_empty() && domain.contains('.'))
            && !email
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b",;<>".contains(&b));
        if ok {
            contact.push(format!("mailto:{email}"));
        } else {
            push(
                problems,
                p.key("email"),
                format!("{email:?} is not an email address like \"ops@example.com\""),
            );
        }
    }
    let storage = base.join(raw.storage.as_deref().unwrap_or("acme"));
    check_storage(&storage, &p.key("storage"), problems);
    let ca_file = raw.ca_file.as_ref().map(|f| {
        let file = base.join(f);
        if let Err(e) = super::tls::read_certs(&file) {
            push(problems, p.key("ca_file"), e);
        }
        file
    });
    let challenge = match raw.challenge.as_deref() {
        None | Some("http-01") => AcmeChallenge::Http01,
        Some("tls-alpn-01") => AcmeChallenge::TlsAlpn01,
        Some("dns-01") => AcmeChallenge::Dns01,
        Some(other) => {
            push(
                problems,
                p.key("challenge"),
                format!("unknown challenge {other:?}: expected \"http-01\", \"tls-alpn-01\" or \"dns-01\""),
            );
            AcmeChallenge::Http01
        }
    };
    let dns = dns_hook(raw, base, challenge, &p, problems);
    let answered = listeners.iter().any(|l| match challenge {
        AcmeChallenge::Http01 => l.kind != ListenKind::Https,
        AcmeChallenge::TlsAlpn01 => l.kind == ListenKind::Https,
        AcmeChallenge::Dns01 => true,
    });
    if !answered {
        let (what, fix) = match challenge {
            AcmeChallenge::Http01 => ("http-01 is answered on plain HTTP (the CA connects to port 80)", "add a plain or redirect_https listener on port 80, or use challenge = \"tls-alpn-01\""),
            AcmeChallenge::TlsAlpn01 | AcmeChallenge::Dns01 => ("tls-alpn-01 is answered on TLS listeners (the CA connects to port 443)", "add { addr = \"0.0.0.0:443\", tls = true } to server.listen"),
        };
        push(
            problems,
            p.key("challenge"),
            format!("no listener can answer the challenge: {what}; {fix}"),
        );
    }
    let renew_before = raw.renew_before_days.map(|Int(days)| {
        if !(1..=365).contains(&days) {
            push(
                problems,
                p.key("renew_before_days"),
                format!("must be 1..=365 days, got {days}"),
            );
        }
        Duration::from_secs(u64::try_from(days.clamp(1, 365)).unwrap_or(30) * 86_400)
    });
    let eab = match (&raw.eab_kid, &raw.eab_hmac_key) {
        (None, None) => None,
        (Some(kid), Some(key)) => {
            use base64::Engine as _;
            let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(key.0.trim_end_matches('='))
                .ok()
                .filter(|k| !k.is_empty());
            match (kid.is_empty(), decoded) {
                (false, Some(hmac_key)) => Some(Eab {
                    kid: kid.clone(),
                    hmac_key,
                }),
                (true, _) => {
                    push(problems, p.key("eab_kid"), "must not be empty");
                    None
                }
                (false, None) => {
                    push(
                        problems,
                        p.key("eab_hmac_key"),
                        "is not base64url (the HMAC key as the CA gives it out, e.g. \"zWNDZM6eQGHW…\")",
                    );
                    None
                }
            }
        }
        (Some(_), None) => {
            push(
                problems,
                p.key("eab_kid"),
                "needs `eab_hmac_key` too: External Account Binding takes the key id and its HMAC key",
            );
            None
        }
        (None, Some(_)) => {
            push(
                problems,
                p.key("eab_hmac_key"),
                "needs `eab_kid` too: External Account Binding takes the key id and its HMAC key",
            );
            None
        }
    };
    if problems.len() > before {
        return None;
    }
    Some(AcmeDef {
        directory: directory?,
        contact,
        storage,
        ca_file,
        challenge,
        dns,
        renew_before,
        eab,
    })
}

/// DNS-01's hook: required with it (an executable file), refused without it.
fn dns_hook(
    raw: &RawAcme,
    base: &Path,
    challenge: AcmeChallenge,
    p: &KeyPath,
    problems: &mut Vec<Problem>,
) -> Option<DnsHook> {
    if challenge != AcmeChallenge::Dns01 {
        for (key, set) in [
            ("dns_hook", raw.dns_hook.is_some()),
            ("dns_delay", raw.dns_delay.is_some()),
        ] {
            if set {
                push(
                    problems,
                    p.key(key),
                    format!("`{key}` is only used with challenge = \"dns-01\""),
                );
            }
        }
        return None;
    }
    let Some(hook) = &raw.dns_hook else {
        push(
            problems,
            p.key("challenge"),
            "dns-01 needs `dns_hook`: the program that publishes the TXT records, called as `HOOK present _acme-challenge.NAME. VALUE` and `HOOK cleanup _acme-challenge.NAME. VALUE` (lego's exec convention)",
        );
        return None;
    };
    // Absolute: a bare `hook.sh` (the config in the working directory) would otherwise be looked
    // up in PATH when run.
    let program = std::path::absolute(base.join(hook)).unwrap_or_else(|_| base.join(hook));
    let shown = program.display();
    match std::fs::metadata(&program) {
        Ok(m) if !m.is_file() || m.permissions().mode() & 0o111 == 0 => push(
            problems,
            p.key("dns_hook"),
            format!("{shown} is not an executable file"),
        ),
        Ok(m) if m.permissions().mode() & 0o022 != 0 => push(
            problems,
            p.key("dns_hook"),
            format!(
                "{shown} is writable by other users (mode {:o}): it runs as the gateway, which holds the private keys; chmod go-w it",
                m.permissions().mode() & 0o7777
            ),
        ),
        Ok(_) if !access(&program, libc::X_OK) => push(
            problems,
            p.key("dns_hook"),
            format!("{shown}: this process may not execute it"),
        ),
        Ok(_) => {}
        Err(e) => push(
            problems,
            p.key("dns_hook"),
            format!("{}: {e}", program.display()),
        ),
    }
    let delay = raw.dns_delay.as_ref().map_or(Duration::ZERO, |d| d.0);
    if delay > Duration::from_secs(600) {
        push(
            problems,
            p.key("dns_delay"),
            "must be at most \"10m\" (the CA's order would expire meanwhile)",
        );
    }
    Some(DnsHook { program, delay })
}

/// `storage` must be a directory this process can write, or not exist yet with a parent it can
/// create it in (it is created on first use; `check` creates nothing).
fn check_storage(dir: &Path, at: &KeyPath, problems: &mut Vec<Problem>) {
    let shown = dir.display();
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => push(
            problems,
            at.clone(),
            format!("{shown} exists and is not a directory"),
        ),
        Ok(m) if m.permissions().mode() & 0o022 != 0 => push(
            problems,
            at.clone(),
            format!(
                "{shown} is writable by other users (mode {:o}): the account key and the certificates' keys are kept there; chmod 700 it, or name a directory of the gateway's own",
                m.permissions().mode() & 0o7777
            ),
        ),
        Ok(_) if !writable(dir) => push(
            problems,
            at.clone(),
            format!("{shown}: this process may not write here (the account key and certificates are kept in it)"),
        ),
        Ok(_) => {}
        Err(_) => {
            // Created with its missing parents: the nearest existing ancestor must be writable.
            let mut up = dir.parent();
            while let Some(d) = up {
                if d.as_os_str().is_empty() || d.exists() {
                    break;
                }
                up = d.parent();
            }
            let ancestor = match up {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            if !ancestor.is_dir() || !writable(ancestor) {
                push(
                    problems,
                    at.clone(),
                    format!(
                        "{shown} does not exist and cannot be created: {} is not a writable directory",
                        ancestor.display()
                    ),
                );
            }
        }
    }
}

fn writable(dir: &Path) -> bool {
    access(dir, libc::W_OK | libc::X_OK)
}

/// access(2) for this process's real ids.
fn access(path: &Path, mode: libc::c_int) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    unsafe { libc::access(c.as_ptr(), mode) == 0 }
}
