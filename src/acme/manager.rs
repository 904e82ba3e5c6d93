//! The ACME manager: one thread for the process that keeps every `acme = true` certificate issued
//! and fresh, and publishes it to the workers through the `AcmeStore`.
//!
//! Schedule, per certificate (keyed by its first name):
//! - at start (and when a reload adds it) the stored copy is loaded, if it covers the names and has
//!   not expired, and served at once;
//! - it is ordered when there is none, when it does not cover every configured name, when another
//!   CA directory issued it, or once its renewal time has come (`Issued::renew_at`);
//! - a failed order is retried after 1 minute, doubling up to 6 hours (Let's Encrypt allows 5
//!   failed validations per name and hour); the schedule is stored (`files::Backoff`), so a
//!   restart resumes it instead of ordering at once; a reload that changes `[acme]` clears it; the
//!   certificate in service, if any, stays in service until it expires.
//!
//! Orders run one at a time, each on a single-threaded tokio runtime made for it and dropped after
//! it (with every connection to the CA), bounded by `ORDER_TIMEOUT`. Workers never wait for any of
//! it: they read the store. Reloads send the new `[acme]` and certificate list over a channel;
//! the state of certificates that stay is kept.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::files::{self, Issued};
use super::issue;
use super::store::AcmeStore;
use crate::config::model::{AcmeCertDef, AcmeChallenge, AcmeDef, Config, ListenKind};
use crate::metrics::json;
use crate::metrics::prom::{Family, FamilyKind};
use crate::{error, info, warn};

const ORDER_TIMEOUT: Duration = Duration::from_secs(300);
const FIRST_RETRY: Duration = Duration::from_secs(60);
const MAX_RETRY: Duration = Duration::from_secs(6 * 3600);
/// Longest sleep between two looks at the schedule (clock jumps, suspended machines).
const MAX_SLEEP: Duration = Duration::from_secs(3600);

enum Msg {
    /// Boxed: the config is large next to `Stop`, and sent once per reload.
    Update(Box<Option<AcmeDef>>, Vec<AcmeCertDef>),
    Stop,
}

/// What `/metrics` and `/status` show of one certificate.
#[derive(Debug, Clone, Default)]
pub struct CertStatus {
    pub name: String,
    /// Expiry of the certificate in service (`None`: none yet).
    pub not_after: Option<SystemTime>,
    pub next_attempt: Option<SystemTime>,
    /// Failed orders since the last success.
    pub failures: u32,
    pub last_error: Option<String>,
    pub orders_ok: u64,
    pub orders_failed: u64,
}

/// The manager thread's handle (main thread).
pub struct AcmeManager {
    tx: Sender<Msg>,
    status: AcmeStatus,
    store: Arc<AcmeStore>,
}

/// Every managed certificate's state, as the manager last published it (read by `/metrics`).
#[derive(Clone, Default)]
pub struct AcmeStatus(Arc<Mutex<Vec<CertStatus>>>);

impl AcmeStatus {
    /// A copy of every managed certificate's state, sorted by name.
    pub fn get(&self) -> Vec<CertStatus> {
        match self.0.lock() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn set(&self, v: Vec<CertStatus>) {
        match self.0.lock() {
            Ok(mut s) => *s = v,
            Err(p) => *p.into_inner() = v,
        }
    }

    /// The metric families for `/metrics` (none without ACME certificates).
    pub fn families(&self) -> Vec<Family> {
        families(&self.get())
    }

    /// Appends `,"acme":[…]` to the `/status` object: per certificate, when it expires, when the
    /// next order is due, and why the last one failed (nothing without ACME certificates).
    pub fn status_json(&self, o: &mut String) {
        let all = self.get();
        if all.is_empty() {
            return;
        }
        let time = |o: &mut String, t: Option<SystemTime>| match t {
            Some(t) => {
                let mut b = Vec::new();
                crate::log::push_rfc3339(&mut b, t);
                json::push_str(o, &String::from_utf8_lossy(&b));
            }
            None => o.push_str("null"),
        };
        o.push_str(",\"acme\":[");
        for (i, c) in all.iter().enumerate() {
            if i > 0 {
                o.push(',');
            }
            o.push_str("{\"certificate\":");
            json::push_str(o, &c.name);
            o.push_str(",\"not_after\":");
            time(o, c.not_after);
            o.push_str(",\"next_attempt\":");
            time(o, c.next_attempt);
            o.push_str(",\"failures\":");
            o.push_str(&c.failures.to_string());
            o.push_str(",\"last_error\":");
            match &c.last_error {
                Some(e) => json::push_str(o, e),
                None => o.push_str("null"),
            }
            o.push_str(",\"orders_ok\":");
            o.push_str(&c.orders_ok.to_string());
            o.push_str(",\"orders_failed\":");
            o.push_str(&c.orders_failed.to_string());
            o.push('}');
        }
        o.push(']');
    }
}

impl AcmeManager {
    /// Loads stored certificates of `config` into `store` (so the first handshake can use them), then
    /// starts the thread.
    pub fn start(config: &Config, store: Arc<AcmeStore>) -> std::io::Result<AcmeManager> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let status = AcmeStatus::default();
        let mut state = State {
            store: store.clone(),
            def: None,
            certs: HashMap::new(),
            status: status.clone(),
        };
        state.update(config.acme.clone(), config.acme_certificates.clone());
        warn_ports(config);
        std::thread::Builder::new()
            .name("ringgate-acme".to_owned())
            .spawn(move || state.run(&rx))?;
        Ok(AcmeManager { tx, status, store })
    }

    /// A reload is committing `config` (called before workers get it). Stored certificates of
    /// names it adds are put in service here, on the reloading thread, so the new generation's
    /// first handshake finds them: the manager thread may be busy with an order for minutes.
    pub fn update(&self, config: &Config) {
        warn_ports(config);
        if let Some(def) = &config.acme {
            for c in &config.acme_certificates {
                let Some(primary) = c.snis.first() else {
                    continue;
                };
                if self.store.cert(primary).is_some() {
                    continue;
                }
                if let Ok(Some(issued)) = files::load(&def.storage, primary) {
                    if issued.not_after > SystemTime::now() {
                        install_covered(&self.store, &c.snis, &issued);
                    }
                }
            }
        }
        let _ = self.tx.send(Msg::Update(
            Box::new(config.acme.clone()),
            config.acme_certificates.clone(),
        ));
    }

    pub fn stop(&self) {
        let _ = self.tx.send(Msg::Stop);
    }

    /// The managed certificates' state, as the manager publishes it.
    pub fn status(&self) -> AcmeStatus {
        self.status.clone()
    }
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn families(status: &[CertStatus]) -> Vec<Family> {
    if status.is_empty() {
        return Vec::new();
    }
    let mut expiry = Family::new(
        "ringgate_acme_certificate_expiry_timestamp_seconds",
        "When the ACME certificate in service expires (Unix time; 0: none issued yet).",
        FamilyKind::Gauge,
    );
    let mut failing = Family::new(
        "ringgate_acme_renewal_failures",
        "Failed ACME orders for the certificate since its last success.",
        FamilyKind::Gauge,
    );
    let mut orders = Family::new(
        "ringgate_acme_orders_total",
        "ACME orders, by result.",
        FamilyKind::Counter,
    );
    for s in status {
        let c = [("certificate", s.name.as_str())];
        expiry = expiry.sample(&c, s.not_after.map_or(0.0, unix));
        failing = failing.sample(&c, f64::from(s.failures));
        #[allow(clippy::cast_precision_loss)]
        {
            orders = orders
                .sample(
                    &[("certificate", s.name.as_str()), ("result", "ok")],
                    s.orders_ok as f64,
                )
                .sample(
                    &[("certificate", s.name.as_str()), ("result", "error")],
                    s.orders_failed as f64,
                );
        }
    }
    vec![expiry, failing, orders]
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// How long to wait after the `failures`-th failed order in a row: 1 minute, doubling, at most 6 h.
fn backoff(failures: u32) -> Duration {
    FIRST_RETRY
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(MAX_RETRY)
}

/// One managed certificate.
struct Managed {
    def: AcmeCertDef,
    issued: Option<Issued>,
    /// Earliest time of the next order after a failure.
    retry_at: Option<SystemTime>,
    failures: u32,
    last_error: Option<String>,
    orders_ok: u64,
    orders_failed: u64,
}

impl Managed {
    /// Takes over the retry schedule a previous run stored for this certificate, if it was for
    /// the same CA, challenge and names: the failure count always (so the backoff keeps growing
    /// across restarts a crash loop spaces further apart than the wait: before, such a loop
    /// ordered at every start with a one-minute backoff, into the CA's failed-validation limit),
    /// the retry time while it has not passed. A retry time no backoff could have set (past
    /// `MAX_RETRY` from now, or one that overflows: a corrupt file) is ignored; it aborted the
    /// process at start before.
    fn resume_backoff(&mut self, def: &AcmeDef, primary: &str) {
        let Some(b) = files::load_backoff(&def.storage, primary) else {
            return;
        };
        if b.directory != def.directory
            || b.challenge != def.challenge.name()
            || b.names != self.def.snis
        {
            return;
        }
        let now = SystemTime::now();
        let Some(at) = SystemTime::UNIX_EPOCH
            .checked_add(Duration::from_secs(b.retry_at))
            .filter(|at| {
                at.duration_since(now)
                    .map_or(true, |left| left <= MAX_RETRY)
            })
        else {
            warn!("acme backoff file ignored certificate={primary} reason=\"retry time out of range\"");
            return;
        };
        self.failures = b.failures;
        self.last_error = b.last_error;
        match at.duration_since(now) {
            Ok(left) => {
                info!(
                    "acme backoff from a previous run certificate={primary} failures={} retry_in_s={}",
                    b.failures,
                    left.as_secs()
                );
                self.retry_at = Some(at);
            }
            Err(_) => info!(
                "acme backoff from a previous run certificate={primary} failures={} retry_in_s=0",
                b.failures
            ),
        }
    }

    /// When this certificate should next be ordered.
    fn due_at(&self, def: &AcmeDef) -> SystemTime {
        let wanted = match &self.issued {
            // Issued by another CA (`directory` changed, say from staging to production): replace
            // it now, serving it until then.
            Some(i) if i.directory.as_ref().is_some_and(|d| *d != def.directory) => {
                SystemTime::UNIX_EPOCH
            }
            Some(i) if i.covers(&self.def.snis) => i.renew_at(def.renew_before),
            _ => SystemTime::UNIX_EPOCH,
        };
        match self.retry_at {
            Some(r) if r > wanted => r,
            _ => wanted,
        }
    }
}

struct State {
    store: Arc<AcmeStore>,
    def: Option<AcmeDef>,
    certs: HashMap<String, Managed>,
    status: AcmeStatus,
}

impl State {
    fn run(mut self, rx: &Receiver<Msg>) {
        // DNS-01 records an earlier run left (stopped or crashed mid-order) are withdrawn first,
        // here rather than at start-up: the hook may take a while.
        if let Some(dns) = self
            .def
            .as_ref()
            .and_then(|d| Some((d.dns.as_ref()?, &d.storage)))
        {
            for name in self.certs.keys() {
                issue::withdraw_stale(dns.0, &files::dns_pending_file(dns.1, name));
            }
        }
        loop {
            let now = SystemTime::now();
            let mut next = now + MAX_SLEEP;
            if let Some(def) = self.def.clone() {
                let mut names: Vec<String> = self.certs.keys().cloned().collect();
                names.sort();
                for name in names {
                    let due = match self.certs.get(&name) {
                        Some(m) => m.due_at(&def),
                        None => continue,
                    };
                    if due <= SystemTime::now() {
                        self.attempt(&def, &name);
                        // Anything that arrived meanwhile (a reload, a stop) comes first.
                        if !rx.is_empty() {
                            break;
                        }
                    }
                    if let Some(m) = self.certs.get(&name) {
                        next = next.min(m.due_at(&def));
                    }
                }
            }
            self.publish_status();
            let wait = next
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .min(MAX_SLEEP);
            match rx.recv_timeout(wait) {
                Ok(Msg::Update(def, certs)) => self.update(*def, certs),
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    /// Applies a (re)loaded config: certificates that stay keep their state, new ones are loaded
    /// from storage, removed ones stop being served.
    fn update(&mut self, def: Option<AcmeDef>, certs: Vec<AcmeCertDef>) {
        let storage_changed =
            self.def.as_ref().map(|d| &d.storage) != def.as_ref().map(|d| &d.storage);
        // A changed [acme] (the directory fixed, the challenge switched) is tried at once, not after
        // the backoff its predecessor earned.
        let acme_changed = self.def != def;
        let mut old = std::mem::take(&mut self.certs);
        for c in certs {
            let Some(primary) = c.snis.first().cloned() else {
                continue;
            };
            let mut m = match old.remove(&primary) {
                Some(mut m) if !storage_changed => {
                    if m.def.snis != c.snis || acme_changed {
                        // New names: order at once, whatever failed before.
                        m.retry_at = None;
                        m.failures = 0;
                        if let Some(d) = &def {
                            files::clear_backoff(&d.storage, &primary);
                        }
                    }
                    m.def = c;
                    m
                }
                _ => {
                    let mut m = Managed {
                        def: c,
                        issued: None,
                        retry_at: None,
                        failures: 0,
                        last_error: None,
                        orders_ok: 0,
                        orders_failed: 0,
                    };
                    if let Some(d) = &def {
                        m.resume_backoff(d, &primary);
                    }
                    m
                }
            };
            if m.issued.is_none() {
                if let Some(d) = &def {
                    m.issued = load_stored(&d.storage, &primary);
                }
            }
            if let Some(issued) = &m.issued {
                self.serve(&m.def, issued);
            }
            self.certs.insert(primary, m);
        }
        let store_names: std::collections::HashSet<String> = self
            .certs
            .values()
            .flat_map(|m| m.def.snis.iter().cloned())
            .collect();
        self.store.retain(|n| store_names.contains(n));
        self.def = def;
        self.publish_status();
    }

    /// Puts `issued` in service for the configured names it covers.
    fn serve(&self, def: &AcmeCertDef, issued: &Issued) {
        install_covered(&self.store, &def.snis, issued);
    }

    fn attempt(&mut self, def: &AcmeDef, primary: &str) {
        let Some(snis) = self.certs.get(primary).map(|m| m.def.snis.clone()) else {
            return;
        };
        info!("acme order certificate={primary} names={}", snis.join(","));
        let result = self.order(def, &snis);
        let result = result.and_then(|(chain, key)| {
            let mut issued = files::parse(chain.as_bytes(), key.as_bytes())
                .map_err(|e| format!("the CA's certificate is unusable: {e}"))?;
            issued.directory = Some(def.directory.clone());
            if let Err(e) = files::save(&def.storage, primary, &chain, &key, &def.directory) {
                // Served anyway; the next start orders again.
                error!(
                    "acme certificate not stored certificate={primary} storage={} error=\"{e}\"",
                    def.storage.display()
                );
            }
            Ok(issued)
        });
        let Some(m) = self.certs.get_mut(primary) else {
            return;
        };
        match result {
            Ok(issued) => {
                info!(
                    "acme certificate issued certificate={primary} expires_in_days={}",
                    issued
                        .not_after
                        .duration_since(SystemTime::now())
                        .map_or(0, |d| d.as_secs() / 86_400)
                );
                m.failures = 0;
                m.retry_at = None;
                m.last_error = None;
                m.orders_ok += 1;
                files::clear_backoff(&def.storage, primary);
                m.issued = Some(issued);
                // A certificate that is already due again (a CA issuing shorter than
                // `renew_before_days`) is not re-ordered in a loop: the next try waits like a retry.
                if m.due_at(def) <= SystemTime::now() {
                    warn!("acme certificate lifetime is shorter than renew_before_days certificate={primary}");
                    m.retry_at = Some(SystemTime::now() + MAX_RETRY);
                }
            }
            Err(e) => {
                m.failures += 1;
                m.orders_failed += 1;
                let delay = backoff(m.failures);
                m.retry_at = Some(SystemTime::now() + delay);
                let kept = files::Backoff {
                    directory: def.directory.clone(),
                    challenge: def.challenge.name().to_owned(),
                    names: m.def.snis.clone(),
                    failures: m.failures,
                    retry_at: unix_secs(SystemTime::now() + delay),
                    last_error: Some(e.clone()),
                };
                if let Err(io) = files::save_backoff(&def.storage, primary, &kept) {
                    warn!("acme backoff not stored certificate={primary} error=\"{io}\"");
                }
                error!(
                    "acme order failed certificate={primary} failures={} retry_in_s={} error=\"{}\"",
                    m.failures,
                    delay.as_secs(),
                    e.replace('"', "'")
                );
                m.last_error = Some(e);
            }
        }
        if let Some(m) = self.certs.get(primary) {
            if let Some(issued) = &m.issued {
                self.serve(&m.def, issued);
            }
        }
    }

    /// One order, bounded by `ORDER_TIMEOUT`, on a runtime of its own: between orders nothing would
    /// poll the HTTP client's connections, so they are closed with the runtime rather than kept
    /// (dead, weeks later) for the next one.
    fn order(&mut self, def: &AcmeDef, names: &[String]) -> Result<(String, String), String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("ACME runtime: {e}"))?;
        let store = &self.store;
        let primary = names.first().map_or("", String::as_str);
        let dns = def.dns.as_ref().map(|hook| issue::Dns {
            hook,
            pending: files::dns_pending_file(&def.storage, primary),
        });
        if let Some(d) = &dns {
            issue::withdraw_stale(d.hook, &d.pending);
        }
        rt.block_on(async {
            let work = async {
                let account = issue::account(def).await?;
                issue::order(&account, names, def.challenge, dns, store).await
            };
            // DNS-01 adds its wait and its hook calls (present and cleanup per name).
            let limit = ORDER_TIMEOUT
                + def.dns.as_ref().map_or(Duration::ZERO, |d| {
                    d.delay + issue::HOOK_TIMEOUT * 2 * u32::try_from(names.len()).unwrap_or(1)
                });
            match tokio::time::timeout(limit, work).await {
                Ok(r) => r,
                Err(_) => Err(format!("no certificate within {}s", limit.as_secs())),
            }
        })
    }

    fn publish_status(&self) {
        let mut v: Vec<CertStatus> = self
            .certs
            .iter()
            .map(|(name, m)| CertStatus {
                name: name.clone(),
                not_after: m.issued.as_ref().map(|i| i.not_after),
                next_attempt: self.def.as_ref().map(|d| m.due_at(d)),
                failures: m.failures,
                last_error: m.last_error.clone(),
                orders_ok: m.orders_ok,
                orders_failed: m.orders_failed,
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        self.status.set(v);
    }
}

/// The CA validates on port 80 (http-01) or 443 (tls-alpn-01). A listener elsewhere is fine behind a
/// port forward (and in tests), so this is a warning, not a config error.
fn warn_ports(config: &Config) {
    let Some(def) = &config.acme else { return };
    let (port, tls, name) = match def.challenge {
        AcmeChallenge::Http01 => (80, false, "http-01"),
        AcmeChallenge::TlsAlpn01 => (443, true, "tls-alpn-01"),
        AcmeChallenge::Dns01 => return,
    };
    let answered = config
        .server
        .listeners
        .iter()
        .any(|l| l.addr.port() == port && (l.kind == ListenKind::Https) == tls);
    if !answered && !config.acme_certificates.is_empty() {
        warn!("acme {name} validation comes to port {port}, where no listener answers it; fine behind a port forward");
    }
}

/// Serves `issued` for those of `snis` it covers.
fn install_covered(store: &AcmeStore, snis: &[String], issued: &Issued) {
    let names: Vec<String> = snis
        .iter()
        .filter(|n| issued.names.contains(n))
        .cloned()
        .collect();
    store.install(&names, issued.key.clone());
}

/// The stored certificate of `name` if it can be served (parses, matches its key, not expired).
fn load_stored(storage: &std::path::Path, name: &str) -> Option<Issued> {
    match files::load(storage, name) {
        Ok(Some(i)) if i.not_after > SystemTime::now() => {
            info!(
                "acme certificate loaded certificate={name} storage={}",
                storage.display()
            );
            Some(i)
        }
        Ok(Some(_)) => {
            warn!("acme stored certificate expired certificate={name}; ordering a new one");
            None
        }
        Ok(None) => None,
        Err(e) => {
            warn!("acme stored certificate unusable certificate={name} error=\"{e}\"; ordering a new one");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(directory: &str, renew_before: Option<Duration>) -> AcmeDef {
        AcmeDef {
            directory: directory.to_owned(),
            contact: Vec::new(),
            storage: std::env::temp_dir(),
            ca_file: None,
            challenge: AcmeChallenge::Http01,
            dns: None,
            renew_before,
            eab: None,
        }
    }

    /// A certificate for `names` issued `age` ago, valid for `lifetime`, from `directory`.
    fn managed(names: &[&str], age: Duration, lifetime: Duration, directory: &str) -> Managed {
        let c = rcgen::generate_simple_self_signed(vec!["x.test".to_owned()]).expect("cert");
        let mut issued = files::parse(
            c.cert.pem().as_bytes(),
            c.signing_key.serialize_pem().as_bytes(),
        )
        .expect("parse");
        issued.not_before = SystemTime::now() - age;
        issued.not_after = issued.not_before + lifetime;
        issued.names = names.iter().map(|n| (*n).to_owned()).collect();
        issued.directory = Some(directory.to_owned());
        Managed {
            def: AcmeCertDef {
                snis: names.iter().map(|n| (*n).to_owned()).collect(),
                default: false,
            },
            issued: Some(issued),
            retry_at: None,
            failures: 0,
            last_error: None,
            orders_ok: 0,
            orders_failed: 0,
        }
    }

    const DAY: Duration = Duration::from_secs(86_400);
    const CA: &str = "https://ca.test/dir";

    #[test]
    fn backoff_doubles_from_a_minute_up_to_six_hours() {
        let secs: Vec<u64> = (1..=12).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(
            secs,
            [60, 120, 240, 480, 960, 1920, 3840, 7680, 15360, 21600, 21600, 21600]
        );
        assert_eq!(backoff(u32::MAX), MAX_RETRY);
    }

    #[test]
    fn due_when_two_thirds_of_the_lifetime_passed() {
        let now = SystemTime::now();
        let fresh = managed(&["a.test"], DAY, 90 * DAY, CA);
        assert!(fresh.due_at(&def(CA, None)) > now + 58 * DAY);
        let old = managed(&["a.test"], 61 * DAY, 90 * DAY, CA);
        assert!(old.due_at(&def(CA, None)) <= now);
        // `renew_before_days` moves it...
        assert!(fresh.due_at(&def(CA, Some(10 * DAY))) > now + 78 * DAY);
        // ...unless it is not shorter than the lifetime (then: the default, not "at once").
        let short = managed(&["a.test"], Duration::ZERO, 6 * DAY, CA);
        assert!(short.due_at(&def(CA, Some(30 * DAY))) > now + 3 * DAY);
    }

    #[test]
    fn due_at_once_without_a_certificate_with_a_new_name_or_from_another_ca() {
        let now = SystemTime::now();
        let mut m = managed(&["a.test"], DAY, 90 * DAY, CA);
        m.issued = None;
        assert!(m.due_at(&def(CA, None)) <= now);
        let mut m = managed(&["a.test"], DAY, 90 * DAY, CA);
        m.def.snis.push("b.test".to_owned());
        assert!(m.due_at(&def(CA, None)) <= now);
        let m = managed(&["a.test"], DAY, 90 * DAY, "https://staging.test/dir");
        assert!(m.due_at(&def(CA, None)) <= now);
    }

    #[test]
    fn a_failure_defers_even_a_due_certificate() {
        let mut m = managed(&["a.test"], 80 * DAY, 90 * DAY, CA);
        let later = SystemTime::now() + backoff(1);
        m.retry_at = Some(later);
        assert_eq!(m.due_at(&def(CA, None)), later);
    }

    #[test]
    fn a_stored_backoff_is_resumed_only_for_the_same_ca_challenge_and_names() {
        let storage = std::env::temp_dir().join(format!("ringgate-backoff-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&storage);
        let mut d = def(CA, None);
        d.storage = storage.clone();
        let b = files::Backoff {
            directory: CA.to_owned(),
            challenge: "http-01".to_owned(),
            names: vec!["a.test".to_owned()],
            failures: 3,
            retry_at: unix_secs(SystemTime::now() + Duration::from_secs(600)),
            last_error: Some("validation failed".to_owned()),
        };
        files::save_backoff(&storage, "a.test", &b).expect("save");
        let fresh = |names: &[&str]| {
            let mut m = managed(names, DAY, 90 * DAY, CA);
            m.issued = None;
            m
        };
        let mut m = fresh(&["a.test"]);
        m.resume_backoff(&d, "a.test");
        assert_eq!(
            (m.failures, m.last_error.as_deref()),
            (3, Some("validation failed"))
        );
        assert!(m.due_at(&d) > SystemTime::now() + Duration::from_secs(590));
        // Its retry time passed (a crash loop restarting every few minutes): due now, but the
        // failures count on, so the next backoff is longer (before, it restarted at one minute).
        let mut past = b.clone();
        past.retry_at = unix_secs(SystemTime::now() - Duration::from_secs(60));
        files::save_backoff(&storage, "a.test", &past).expect("save");
        let mut m = fresh(&["a.test"]);
        m.resume_backoff(&d, "a.test");
        assert_eq!((m.failures, m.retry_at), (3, None));
        assert!(m.due_at(&d) <= SystemTime::now());
        // A corrupt retry time (overflowing, or further out than any backoff): ignored, no panic.
        for retry_at in [u64::MAX, unix_secs(SystemTime::now() + MAX_RETRY * 4)] {
            let mut bad = b.clone();
            bad.retry_at = retry_at;
            files::save_backoff(&storage, "a.test", &bad).expect("save");
            let mut m = fresh(&["a.test"]);
            m.resume_backoff(&d, "a.test");
            assert_eq!((m.failures, m.retry_at), (0, None), "{retry_at}");
        }
        files::save_backoff(&storage, "a.test", &b).expect("save");
        // Another CA, another challenge or other names: ordered as usual.
        for (directory, challenge, names) in [
            (
                "https://other.test/dir",
                AcmeChallenge::Http01,
                &["a.test"][..],
            ),
            (CA, AcmeChallenge::TlsAlpn01, &["a.test"][..]),
            (CA, AcmeChallenge::Http01, &["a.test", "b.test"][..]),
        ] {
            let mut d2 = d.clone();
            d2.directory = directory.to_owned();
            d2.challenge = challenge;
            let mut m = fresh(names);
            m.resume_backoff(&d2, "a.test");
            assert_eq!(m.failures, 0, "{directory} {challenge:?} {names:?}");
        }
        let _ = std::fs::remove_dir_all(&storage);
    }

    #[test]
    fn a_changed_acme_table_clears_the_backoff() {
        let store = AcmeStore::new();
        let mut state = State {
            store: store.clone(),
            def: Some(def(CA, None)),
            certs: HashMap::new(),
            status: AcmeStatus::default(),
        };
        let mut m = managed(&["a.test"], DAY, 90 * DAY, CA);
        m.retry_at = Some(SystemTime::now() + MAX_RETRY);
        m.failures = 9;
        let snis = m.def.clone();
        state.certs.insert("a.test".to_owned(), m);
        // The same [acme] again (a reload for something else): the backoff stays.
        state.update(Some(def(CA, None)), vec![snis.clone()]);
        assert_eq!(state.certs["a.test"].failures, 9);
        // A different one (the directory fixed): tried at once.
        state.update(Some(def("https://fixed.test/dir", None)), vec![snis]);
        assert_eq!(state.certs["a.test"].failures, 0);
        assert_eq!(state.certs["a.test"].retry_at, None);
        // The certificate it had stays in service meanwhile.
        assert!(store.cert("a.test").is_some());
        // Removed from the config: no longer served.
        state.update(Some(def(CA, None)), Vec::new());
        assert!(store.cert("a.test").is_none());
    }
}
