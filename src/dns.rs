//! Re-resolving upstream targets and forward-auth services given by host name, on the
//! `ringgate-dns` thread.
//!
//! Every `[server] dns_refresh` (default 30 s) each such name is resolved again (getaddrinfo
//! blocks, so never on a worker). When a target's (or auth service's) address is no longer among
//! the answers, the serving config is installed again with the new address as the next generation
//! (`Reloader::apply_resolved`): the same path as a reload, so nothing in flight is dropped, the
//! new address gets its own pool slot and health state, and the old one's are released (its idle
//! connections closed) once no connection holds the old generation. A moved auth service also
//! rebuilds the auth tables (they hold its address; the workers' auth caches carry over).
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
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::admin::ReloadFailure;
use crate::config::model::{Config, PluginConfig};
use crate::config::net;
use crate::metrics::{Family, FamilyKind, MetricsHandle};
use crate::server::Reloader;
use crate::{info, warn};

/// What a resolved name is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Indices into `Config::upstreams` and its `targets`.
    Target { upstream: usize, target: usize },
    /// Index into `Config::plugins` of a `forward-auth` plugin (its auth service's address).
    ForwardAuth { plugin: usize },
}

/// A target or auth service whose name now resolves elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub place: Place,
    pub from: SocketAddr,
    pub to: SocketAddr,
}

/// How often the thread looks at the drain flag and at a reloaded `dns_refresh`.
const TICK: Duration = Duration::from_millis(200);

/// What the thread remembers between rounds.
#[derive(Debug, Default)]
pub struct Memory {
    /// Host names whose last resolution failed (a failure streak is logged once).
    failing: HashSet<String>,
    /// (target as written, address) missing from the last round's answers: a target moves only
    /// when its address is missing twice in a row, so DNS that answers with a subset of a larger
    /// pool (weighted or multivalue records) does not move it back and forth every round.
    missed: HashSet<(String, SocketAddr)>,
    /// The host names resolved in the last round.
    hosts: Vec<String>,
}

/// What `/metrics` shows of the thread's work (the thread and the metrics thread share it; never a
/// worker).
#[derive(Debug, Default)]
struct Stats {
    /// Target moves installed.
    changes: u64,
    /// Each host name of the last round: whether its resolution failed.
    hosts: std::collections::BTreeMap<String, bool>,
}

/// Starts the thread (it ends when the gateway drains) and its metrics:
/// `ringgate_upstream_dns_changes_total` and `ringgate_upstream_dns_resolution_failing{host}`.
pub fn spawn(reloader: Arc<Reloader>, metrics: &MetricsHandle) -> std::io::Result<()> {
    let stats = Arc::new(Mutex::new(Stats::default()));
    let seen = stats.clone();
    metrics.add_collector(move |out| {
        let Ok(s) = seen.lock() else { return };
        out.push(
            Family::new(
                "ringgate_upstream_dns_changes_total",
                "Upstream targets and forward-auth services moved to a new address by dns_refresh.",
                FamilyKind::Counter,
            )
            .sample(&[], s.changes as f64),
        );
        out.push(s.hosts.iter().fold(
            Family::new(
                "ringgate_upstream_dns_resolution_failing",
                "1 while the last dns_refresh of a host name failed (its targets and auth services keep their addresses).",
                FamilyKind::Gauge,
            ),
            |f, (host, failing)| f.sample(&[("host", host)], if *failing { 1.0 } else { 0.0 }),
        ));
    });
    std::thread::Builder::new()
        .name("ringgate-dns".to_owned())
        .spawn(move || run(&reloader, &stats))
        .map(drop)
}

fn run(reloader: &Reloader, stats: &Mutex<Stats>) {
    let mut memory = Memory::default();
    let mut next: Option<Instant> = None;
    loop {
        std::thread::sleep(TICK);
        if reloader.draining() {
            return;
        }
        let current = reloader.current();
        let config = &current.config;
        let Some(every) = config.server.dns_refresh.filter(|_| has_names(config)) else {
            next = None;
            continue;
        };
        let now = Instant::now();
        // The first round one period after start (load just resolved everything); a reload that
        // shortened the period takes effect at once.
        let due = *next.get_or_insert(now + every);
        if now < due {
            next = Some(due.min(now + every));
            continue;
        }
        next = Some(now + every);
        let changes = changes(config, net::resolve_ips, &mut memory);
        if let Ok(mut s) = stats.lock() {
            s.hosts = memory
                .hosts
                .iter()
                .map(|h| (h.clone(), memory.failing.contains(h)))
                .collect();
        }
        if changes.is_empty() {
            continue;
        }
        match reloader.apply_resolved(current.generation, &changes) {
            Ok(g) => {
                if let Ok(mut s) = stats.lock() {
                    s.changes += changes.len() as u64;
                }
                for c in &changes {
                    match c.place {
                        Place::Target { upstream, target } => {
                            let u = config.upstreams.get(upstream);
                            let t = u.and_then(|u| u.targets.get(target));
                            info!(
                                "upstream target re-resolved upstream={} target={} from={} to={} generation={g}",
                                u.map_or("?", |u| u.name.as_str()),
                                t.map_or("?", |t| t.name.as_str()),
                                c.from,
                                c.to
                            );
                        }
                        Place::ForwardAuth { plugin } => info!(
                            "forward-auth service re-resolved plugin={} from={} to={} generation={g}",
                            config.plugins.get(plugin).map_or("?".to_owned(), |p| p.scope.id(config)),
                            c.from,
                            c.to
                        ),
                    }
                }
            }
            // A reload came first: it resolved every name itself.
            Err(ReloadFailure::Unavailable {
                generation: None, ..
            }) => info!("upstream addresses superseded by a reload"),
            Err(ReloadFailure::Unavailable {
                message,
                generation: Some(_),
            }) => warn!("upstream addresses installed, not confirmed: {message}"),
            Err(ReloadFailure::Rejected(e)) => {
                warn!("upstream addresses not installed: {e}; the next refresh looks again")
            }
        }
    }
}

/// The host name in `name` (`host:port`, or a bare host for an auth service's authority), or
/// `None` for an IP literal.
fn host_name(name: &str) -> Option<&str> {
    let host = net::split_host_port(name).map_or(name, |(h, _)| h);
    (!host.starts_with('[') && net::ip_literal(host).is_none()).then_some(host)
}

/// Everything given by host name: (name as written, current address, where it is used).
fn named(config: &Config) -> Vec<(&str, SocketAddr, Place)> {
    let targets = config.upstreams.iter().enumerate().flat_map(|(ui, u)| {
        u.targets.iter().enumerate().map(move |(ti, t)| {
            let place = Place::Target {
                upstream: ui,
                target: ti,
            };
            (t.name.as_str(), t.addr, place)
        })
    });
    let auth = config
        .plugins
        .iter()
        .enumerate()
        .filter(|(_, p)| p.enabled)
        .filter_map(|(i, p)| match &p.config {
            PluginConfig::ForwardAuth(f) => Some((
                f.def.host.as_str(),
                f.def.addr,
                Place::ForwardAuth { plugin: i },
            )),
            _ => None,
        });
    targets
        .chain(auth)
        .filter(|(name, _, _)| host_name(name).is_some())
        .collect()
}

/// Whether any target or auth service is given by host name.
fn has_names(config: &Config) -> bool {
    !named(config).is_empty()
}

/// Where a target at `current` goes, given its name's answers: nowhere while `current` is among
/// them; else the first address of its family, or IPv4 for an IPv6 target (the load-time
/// preference). `None` also when no address would do: an answer of the other family only (a
/// failed A query next to a working AAAA one) keeps the target where it is.
fn destination(current: SocketAddr, ips: &[IpAddr]) -> Option<SocketAddr> {
    if ips.contains(&current.ip()) {
        return None;
    }
    ips.iter()
        .find(|ip| ip.is_ipv4())
        .or_else(|| ips.iter().find(|_| current.is_ipv6()))
        .map(|ip| SocketAddr::new(*ip, current.port()))
}

/// Resolves every host name targets use (each once) and returns the targets to move: those whose
/// address was missing from the answers in this round and the one before (see `Memory`).
pub fn changes(
    config: &Config,
    resolve: impl Fn(&str) -> Result<Vec<IpAddr>, String>,
    memory: &mut Memory,
) -> Vec<Change> {
    let mut answers: HashMap<&str, Option<Vec<IpAddr>>> = HashMap::new();
    let mut missed = HashSet::new();
    let mut out = Vec::new();
    for (name, addr, place) in named(config) {
        let Some(host) = host_name(name) else {
            continue;
        };
        let got = answers
            .entry(host)
            .or_insert_with(|| match resolve(host) {
                Ok(ips) if !ips.is_empty() => {
                    if memory.failing.remove(host) {
                        info!("upstream host resolves again host={host}");
                    }
                    Some(ips)
                }
                result => {
                    if memory.failing.insert(host.to_owned()) {
                        let e = result.err().unwrap_or_else(|| "no addresses".to_owned());
                        warn!(
                            "upstream host resolution failed host={host} error=\"{}\"; its users keep their addresses",
                            e.replace('"', "'")
                        );
                    }
                    None
                }
            });
        let Some(to) = got.as_deref().and_then(|ips| destination(addr, ips)) else {
            continue;
        };
        let key = (name.to_owned(), addr);
        if memory.missed.contains(&key) {
            out.push(Change {
                place,
                from: addr,
                to,
            });
        } else {
            missed.insert(key);
        }
    }
    memory.missed = missed;
    memory.hosts = answers.keys().map(|h| (*h).to_owned()).collect();
    memory.hosts.sort();
    // A host no target uses any more is forgotten.
    memory.failing.retain(|h| answers.contains_key(h.as_str()));
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

[[plugins]]
name = "correlation-id"

[[plugins]]
name = "forward-auth"
service = "s"
enabled = false
config = { address = "http://localhost:9102/auth" }

[[plugins]]
name = "forward-auth"
route = "r"
config = { address = "http://localhost:9100/auth" }

[[plugins]]
name = "forward-auth"
config = { address = "http://127.0.0.1:9101/auth" }
"#,
            "dns.toml",
        )
        .unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn a_target_moves_after_its_address_is_missing_twice() {
        let cfg = config();
        let was = cfg.upstreams[0].targets[0].addr;
        let mut memory = Memory::default();
        let calls = std::cell::Cell::new(0);
        // Still among the answers (rotated): nothing. The literal is never resolved, and the name
        // two targets use is resolved once.
        let same = changes(
            &cfg,
            |_| {
                calls.set(calls.get() + 1);
                Ok(vec![ip("10.0.0.9"), was.ip()])
            },
            &mut memory,
        );
        assert!(same.is_empty(), "{same:?}");
        assert_eq!(calls.get(), 1);
        // Missing once (a subset answer): nothing yet.
        let moved = |m: &mut Memory| changes(&cfg, |_| Ok(vec![ip("::1"), ip("10.0.0.7")]), m);
        assert!(moved(&mut memory).is_empty());
        // Back, then missing once more: still nothing (the streak restarted).
        assert!(changes(&cfg, |_| Ok(vec![was.ip()]), &mut memory).is_empty());
        assert!(moved(&mut memory).is_empty());
        // Missing twice in a row: both targets and the auth service with that name move, to IPv4
        // (the auth service given by an IP literal stays).
        let to = addr("10.0.0.7:9001");
        assert_eq!(
            moved(&mut memory),
            vec![
                Change {
                    place: Place::Target {
                        upstream: 0,
                        target: 0
                    },
                    from: was,
                    to
                },
                Change {
                    place: Place::Target {
                        upstream: 1,
                        target: 0
                    },
                    from: was,
                    to
                },
                Change {
                    // Its index among all plugins (the disabled one is not resolved).
                    place: Place::ForwardAuth { plugin: 2 },
                    from: SocketAddr::new(was.ip(), 9100),
                    to: addr("10.0.0.7:9100")
                },
            ]
        );
    }

    #[test]
    fn the_family_is_kept_and_failures_keep_the_address() {
        let v4 = addr("127.0.0.1:80");
        // An IPv6-only answer (a failed A query) does not move an IPv4 target...
        assert_eq!(destination(v4, &[ip("::1")]), None);
        // ...an IPv6 target goes back to IPv4 when it can, or to another IPv6 address.
        let v6 = addr("[::1]:80");
        assert_eq!(
            destination(v6, &[ip("::2"), ip("10.0.0.1")]),
            Some(addr("10.0.0.1:80"))
        );
        assert_eq!(destination(v6, &[ip("::2")]), Some(addr("[::2]:80")));
        let cfg = config();
        let mut memory = Memory::default();
        for _ in 0..3 {
            assert!(changes(&cfg, |_| Err("SERVFAIL".to_owned()), &mut memory).is_empty());
            assert!(changes(&cfg, |_| Ok(Vec::new()), &mut memory).is_empty());
        }
        assert!(memory.failing.contains("localhost"));
        assert_eq!(memory.hosts, ["localhost"], "what /metrics lists");
        let was = cfg.upstreams[0].targets[0].addr;
        assert!(changes(&cfg, |_| Ok(vec![was.ip()]), &mut memory).is_empty());
        assert!(memory.failing.is_empty(), "recovered");
        // Names as written: `host:port`, or an auth service's bare authority.
        assert_eq!(host_name("auth.local"), Some("auth.local"));
        assert_eq!(host_name("auth.local:9000"), Some("auth.local"));
        assert_eq!(host_name("10.0.0.1:80"), None);
        assert_eq!(host_name("10.0.0.1"), None);
        assert_eq!(host_name("[::1]:80"), None);
        assert_eq!(host_name("[::1]"), None);
    }
}
