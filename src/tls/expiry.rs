//! File certificates' validity for operators: a warning at start and at every reload for one that
//! is expired, not valid yet or expiring soon (`config::certificate_warnings`), and the metric
//! `ringgate_tls_certificate_expiry_timestamp_seconds{certificate}` (ACME certificates have their
//! own, `ringgate_acme_certificate_expiry_timestamp_seconds`).
//!
//! The serving config's expiry times sit in a process-wide list, replaced by the main thread when a
//! config is installed and read by the metrics thread at scrape time; nothing on a worker touches it.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::model::Config;
use crate::metrics::{Family, FamilyKind};

/// (certificate file, not-after as Unix seconds) of the serving config.
static EXPIRY: Mutex<Vec<(String, u64)>> = Mutex::new(Vec::new());

/// Notes `cfg`'s certificates: logs the warnings and makes its expiry times the exported ones.
pub fn note(cfg: &Config) {
    for w in crate::config::certificate_warnings(cfg, SystemTime::now()) {
        crate::warn!("{w}");
    }
    for w in crate::config::config_warnings(cfg) {
        crate::warn!("{w}");
    }
    let list = cfg
        .certificates
        .iter()
        .filter_map(|c| {
            let (_, not_after) = c.validity?;
            let secs = not_after.duration_since(UNIX_EPOCH).ok()?.as_secs();
            Some((c.cert_file.display().to_string(), secs))
        })
        .collect();
    if let Ok(mut e) = EXPIRY.lock() {
        *e = list;
    }
}

/// `ringgate_tls_certificate_expiry_timestamp_seconds{certificate}` for `/metrics`.
pub fn family() -> Family {
    let f = Family::new(
        "ringgate_tls_certificate_expiry_timestamp_seconds",
        "When each file certificate in service expires (Unix time).",
        FamilyKind::Gauge,
    );
    match EXPIRY.lock() {
        Ok(e) => e.iter().fold(f, |f, (file, at)| {
            f.sample(&[("certificate", file)], *at as f64)
        }),
        Err(_) => f,
    }
}
