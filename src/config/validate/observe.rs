//! `[admin]` and `[metrics]`: defaults and checks.
//!
//! The admin API can reload the config and reveals the topology, so it listens on loopback unless a
//! token protects it: a non-loopback `listen` without `token` is an error.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::{in_range, push};
use crate::config::locate::{KeyPath, Problem};
use crate::config::model::{AdminDef, MetricsDef};
use crate::config::raw::{RawAdmin, RawMetrics};

pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
/// The worker control loop ticks every 50 ms; flushes happen on ticks.
const MIN_FLUSH: Duration = Duration::from_millis(50);
const MAX_FLUSH: Duration = Duration::from_secs(60);
const MAX_TOKEN: usize = 1024;
const MAX_CONSUMER_LABELS: i64 = 10_000;

/// `None` when `[admin]` is absent (no admin listener).
/// `server_listen`: the proxy's own addresses, which the admin listener must not collide with.
pub fn admin(
    raw: Option<&RawAdmin>,
    server_listen: &[SocketAddr],
    problems: &mut Vec<Problem>,
) -> Option<AdminDef> {
    let raw = raw?;
    let p = KeyPath::root().key("admin");
    let listen_str = raw.listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN);
    let listen = match listen_str.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            push(
                problems,
                p.key("listen"),
                format!("{listen_str:?} is not an ip:port address (e.g. \"127.0.0.1:9901\"; host names are not allowed)"),
            );
            return None;
        }
    };
    let token = match raw.token.as_deref() {
        None => None,
        Some(t) if t.is_empty() || t.len() > MAX_TOKEN => {
            push(
                problems,
                p.key("token"),
                format!("must be 1 to {MAX_TOKEN} characters"),
            );
            None
        }
        Some(t) if !t.bytes().all(|b| b.is_ascii_graphic()) => {
            push(
                problems,
                p.key("token"),
                "may contain only visible ASCII characters (no spaces or control characters)",
            );
            None
        }
        Some(t) => Some(t.to_owned()),
    };
    // Same port on an overlapping address (equal, or either one the wildcard): both could not bind,
    // and `check` would pass a config that `run` then refuses. Port 0 (any free port) never clashes.
    if let Some(clash) = server_listen.iter().find(|s| {
        listen.port() != 0
            && s.port() == listen.port()
            && (s.ip() == listen.ip() || s.ip().is_unspecified() || listen.ip().is_unspecified())
    }) {
        push(
            problems,
            p.key("listen"),
            format!("{listen} overlaps the server listen address {clash}: the admin API needs a port of its own"),
        );
    }
    if !listen.ip().is_loopback() && raw.token.is_none() {
        push(
            problems,
            p.key("listen"),
            format!("{listen} is not a loopback address: set admin.token to expose the admin API beyond this host"),
        );
    }
    // Beyond this host the token is all that guards `/reload`: one that can be guessed is no guard.
    if let (false, Some(t)) = (listen.ip().is_loopback(), token.as_deref()) {
        let min = super::MIN_PUBLIC_TOKEN;
        if t.len() < min {
            push(
                problems,
                p.key("token"),
                format!("{listen} is not a loopback address, so the token must be at least {min} characters (e.g. the output of `openssl rand -hex 16`), got {}", t.len()),
            );
        }
    }
    Some(AdminDef { listen, token })
}

/// Always a complete `MetricsDef` (defaults where missing or invalid).
pub fn metrics(raw: Option<&RawMetrics>, base: &Path, problems: &mut Vec<Problem>) -> MetricsDef {
    let mut def = MetricsDef::default();
    let Some(raw) = raw else {
        return def;
    };
    let p = KeyPath::root().key("metrics");
    if let Some(b) = raw.enabled {
        def.enabled = b;
    }
    if let Some(d) = raw.flush_interval {
        if (MIN_FLUSH..=MAX_FLUSH).contains(&d.0) {
            def.flush_interval = d.0;
        } else {
            push(
                problems,
                p.key("flush_interval"),
                "must be between \"50ms\" and \"60s\" (workers flush on their 50 ms control tick)",
            );
        }
    }
    match raw.histogram_file.as_deref() {
        None => {}
        Some("") => push(
            problems,
            p.key("histogram_file"),
            "must be a file path (omit the key to not write histograms)",
        ),
        Some(f) => {
            // Written at shutdown: a missing directory found then would lose the whole run's data.
            // Relative to the config file's directory (`base.join` keeps an absolute path as is).
            let path = base.join(f);
            match path.parent() {
                Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => push(
                    problems,
                    p.key("histogram_file"),
                    format!("directory {} does not exist", dir.display()),
                ),
                _ if path.is_dir() => push(
                    problems,
                    p.key("histogram_file"),
                    format!(
                        "{} is a directory; name a file in it (e.g. {})",
                        path.display(),
                        path.join("ringgate-hdr.txt").display()
                    ),
                ),
                _ => {
                    // Created or replaced at shutdown: the directory (or the file) must be
                    // writable, or the report is lost after the whole run.
                    let dir = path
                        .parent()
                        .filter(|d| !d.as_os_str().is_empty())
                        .unwrap_or(std::path::Path::new("."));
                    let probe = if path.exists() { path.as_path() } else { dir };
                    match super::access_log::writable(probe) {
                        Ok(()) => def.histogram_file = Some(path),
                        Err(e) => push(
                            problems,
                            p.key("histogram_file"),
                            format!(
                                "{} is not writable by this process (uid {}): {e}",
                                probe.display(),
                                // SAFETY: geteuid has no preconditions and cannot fail.
                                unsafe { libc::geteuid() }
                            ),
                        ),
                    }
                }
            }
        }
    }
    if let Some(b) = raw.per_consumer_labels {
        def.per_consumer_labels = b;
    }
    if let Some(n) = raw.max_consumer_labels {
        if raw.per_consumer_labels.is_none() {
            // The cap of a feature left off by default would be silently ignored. An explicit
            // `per_consumer_labels = false` keeps the cap (turning the labels off by reload).
            push(
                problems,
                p.key("max_consumer_labels"),
                "`max_consumer_labels` has no effect unless per_consumer_labels = true (per-consumer labels are off by default)",
            );
        } else if let Some(n) = in_range(
            problems,
            p.key("max_consumer_labels"),
            "max_consumer_labels",
            n.0,
            1,
            MAX_CONSUMER_LABELS,
        ) {
            def.max_consumer_labels = usize::try_from(n).unwrap_or(def.max_consumer_labels);
        }
    }
    def
}
