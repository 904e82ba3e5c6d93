//! Re-resolving upstream targets given by host name, on the `ringgate-dns` thread.
//!
//! Every `[server] dns_refresh` (default 30 s) each such target's host is resolved again
//! (getaddrinfo blocks, so never on a worker). When a target's address is no longer among the
//! answers, the serving config is installed again with the new address as the next generation
//! (`Reloader::apply_resolved`): the same path as a reload, so nothing in flight is dropped, the
//! new address gets its own pool slot and health state, and connections to the old one idle out.
//!
//! Invariants:
//! - a target keeps its address while its name still resolves to it, so DNS that rotates its
//!   answers (round robin) changes nothing;
//! - a failed or empty resolution changes nothing: the last good address stays, since a DNS outage
//!   must not take targets away (logged once per failure streak, and again on recovery);
//! - IP literals are never resolved, and nothing is re-read from the config file (an edit waiting
//!   there is applied by a reload, not behind the operator's back);
//! - a reload between resolving and applying wins: the changes are dropped and the next round
//!   looks again (the reload resolved every name itself).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::admin::ReloadFailure;
use crate::config::model::Config;
use crate::config::net;
use crate::server::Reloader;
use crate::{info, warn};

/// A target whose name now resolves elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Indices into `Config::upstreams` and its `targets`.
    pub upstream: usize,
    pub target: usize,
    pub from: SocketAddr,
    pub to: SocketAddr,
}

/// How often the thread looks at the drain flag and at a reloaded `dns_refresh`.
const TICK: Duration = Duration::from_millis(200);

/// Starts the thread; it ends when the gateway drains.
pub fn spawn(reloader: Arc<Reloader>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("ringgate-dns".to_owned())
        .spawn(move || run(&reloader))
        .map(drop)
}

fn run(reloader: &Reloader) {
    let mut failing = HashSet::new();
    let mut next = Instant::now();
    loop {
        std::thread::sleep(TICK);
        if reloader.draining() {
            return;
        }
        let current = reloader.current();
        let Some(every) = current.config.server.dns_refresh else {
            continue;
        };
        let now = Instant::now();
        if now < next {
            // A reload that shortened the period takes effect now, not after the old one.
            next = next.min(now + every);
            continue;
        }
        next = now + every;
        let changes = changes(&current.config, net::resolve_all, &mut failing);
        if changes.is_empty() {
            continue;
        }
        for c in &changes {
            let (u, t) = names(&current.config, c);
            info!(
                "upstream target re-resolved upstream={u} target={t} from={} to={}",
                c.from, c.to
            );
        }
        match reloader.apply_resolved(current.generation, &changes) {
            Ok(g) => info!("upstream addresses installed generation={g}"),
            Err(ReloadFailure::Rejected(e) | ReloadFailure::Unavailable { message: e, .. }) => {
                warn!("upstream addresses not installed: {e}; the next refresh looks again");
            }
        }
    }
}

fn names<'a>(config: &'a Config, c: &Change) -> (&'a str, &'a str) {
    let u = config.upstreams.get(c.upstream);
    let t = u.and_then(|u| u.targets.get(c.target));
    (
        u.map_or("?", |u| u.name.as_str()),
        t.map_or("?", |t| t.name.as_str()),
    )
}

/// Resolves every target given by host name (each `host:port` once) and returns those whose
/// address is no longer among the answers. `failing` holds the names whose last resolution
/// failed, so a failure streak is logged once.
pub fn changes(
    config: &Config,
    resolve: impl Fn(&str, u16) -> Result<Vec<SocketAddr>, String>,
    failing: &mut HashSet<String>,
) -> Vec<Change> {
    let mut answers: HashMap<&str, Option<Vec<SocketAddr>>> = HashMap::new();
    let mut out = Vec::new();
    for (ui, u) in config.upstreams.iter().enumerate() {
        for (ti, t) in u.targets.iter().enumerate() {
            let Ok((host, port)) = net::split_host_port(&t.name) else {
                continue;
            };
            if net::ip_literal(host).is_some() {
                continue;
            }
            let got = answers.entry(t.name.as_str()).or_insert_with(|| {
                match resolve(host, port) {
                    Ok(addrs) if !addrs.is_empty() => {
                        if failing.remove(&t.name) {
                            info!("upstream target resolves again target={}", t.name);
                        }
                        Some(addrs)
                    }
                    result => {
                        if failing.insert(t.name.clone()) {
                            let e = result.err().unwrap_or_else(|| "no addresses".to_owned());
                            warn!(
                                "upstream target resolution failed target={} error=\"{}\"; keeping addr={}",
                                t.name,
                                e.replace('"', "'"),
                                t.addr
                            );
                        }
                        None
                    }
                }
            });
            let Some(addrs) = got else { continue };
            if addrs.contains(&t.addr) {
                continue;
            }
            if let Some(to) = net::preferred(addrs) {
                out.push(Change {
                    upstream: ui,
                    target: ti,
                    from: t.addr,
                    to,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    fn config() -> Config {
        load_str(
            r#"
[[upstreams]]
name = "u"
targets = [{ target = "localhost:9001" }, { target = "127.0.0.1:9002" }]

[[upstreams]]
name = "v"
targets = [{ target = "localhost:9001" }]

[[services]]
name = "s"
upstream = "u"

[[routes]]
name = "r"
service = "s"
paths = ["/"]
"#,
            "dns.toml",
        )
        .unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn only_names_whose_address_left_the_answers_change() {
        let cfg = config();
        let was = cfg.upstreams[0].targets[0].addr;
        let mut failing = HashSet::new();
        let calls = std::cell::Cell::new(0);
        // Still among the answers (rotated): nothing changes. The literal is never resolved, and
        // the name used twice is resolved once.
        let same = changes(
            &cfg,
            |_, p| {
                calls.set(calls.get() + 1);
                Ok(vec![SocketAddr::new([10, 0, 0, 9].into(), p), was])
            },
            &mut failing,
        );
        assert!(same.is_empty(), "{same:?}");
        assert_eq!(calls.get(), 1);
        // Gone from the answers: both targets with that name move to the preferred new address.
        let moved = changes(
            &cfg,
            |_, p| {
                Ok(vec![
                    SocketAddr::new("::1".parse().unwrap_or_else(|e| panic!("{e}")), p),
                    addr("10.0.0.7:9001"),
                ])
            },
            &mut failing,
        );
        let to = addr("10.0.0.7:9001");
        assert_eq!(
            moved,
            vec![
                Change {
                    upstream: 0,
                    target: 0,
                    from: was,
                    to
                },
                Change {
                    upstream: 1,
                    target: 0,
                    from: was,
                    to
                },
            ]
        );
    }

    #[test]
    fn a_failed_or_empty_resolution_keeps_the_address_and_is_remembered() {
        let cfg = config();
        let mut failing = HashSet::new();
        assert!(changes(&cfg, |_, _| Err("SERVFAIL".to_owned()), &mut failing).is_empty());
        assert!(failing.contains("localhost:9001"));
        assert!(changes(&cfg, |_, _| Ok(Vec::new()), &mut failing).is_empty());
        let was = cfg.upstreams[0].targets[0].addr;
        assert!(changes(&cfg, |_, _| Ok(vec![was]), &mut failing).is_empty());
        assert!(failing.is_empty(), "recovered");
    }
}
