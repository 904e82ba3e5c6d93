//! Re-resolving upstream targets and forward-auth services given by host name, on the
//! `ringgate-dns` thread.
//!
//! Every `[server] dns_refresh` (default 30 s) each such name is resolved again (getaddrinfo
//! blocks, so never on a worker). A target name stands for every address it resolves to (one
//! family, see `net::resolve_target`), each a target of its own. When the answers differ from the
//! addresses a name has, the serving config is installed again with the new set as the next
//! generation (`Reloader::apply_resolved`): the same path as a reload, so nothing in flight is
//! dropped, a new address gets its own pool slot and health state, and a removed one's are
//! released (its idle connections closed) once no connection holds the old generation. An auth
//! service is one address; a moved one also rebuilds the auth tables (they hold its address; the
//! workers' auth caches carry over).
//!
//! Invariants:
//! - order does not matter: DNS that rotates its answers (round robin) changes nothing;
//! - a new address is added at once; an address leaves only when it is missing from two answers
//!   in a row, so DNS that answers with a subset of a larger pool (weighted or multivalue records)
//!   does not add and remove it every round, and a name that moves serves from both addresses for
//!   one round before the old one goes;
//! - a failed or empty resolution changes nothing: the last good addresses stay, since a DNS
//!   outage must not take targets away (logged once per failure streak, and again on recovery);
//!   nor does an answer with none of the family a name has (a failed A query next to a working
//!   AAAA one);
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// Index into `Config::upstreams`, and the target as written there (all its addresses).
    Target { upstream: usize, name: String },
    /// Index into `Config::plugins` of a `forward-auth` plugin (its auth service's address).
    ForwardAuth { plugin: usize },
}

/// A target name or auth service whose addresses change: `to` is the whole new set, sorted (one
/// address for an auth service), never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub place: Place,
    pub from: Vec<SocketAddr>,
    pub to: Vec<SocketAddr>,
}

/// `a,b,c` for a log line.
fn list(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(SocketAddr::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// How often the thread looks at the drain flag and at a reloaded `dns_refresh`.
const TICK: Duration = Duration::from_millis(200);

/// What the thread remembers between rounds.
#[derive(Debug, Default)]
pub struct Memory {
    /// Host names whose last resolution failed (a failure streak is logged once).
    failing: HashSet<String>,
    /// (name as written, address) missing from the last round's answers: an address leaves only
    /// when it is missing twice in a row (see the module's invariants).
    missed: HashSet<(String, SocketAddr)>,
    /// The host names resolved in the last round.
    hosts: Vec<String>,
    /// Host names that answered IPv6 only while an IPv4 target uses them: the targets keep their
    /// IPv4 addresses (a failed A query next to a working AAAA one must not move them), which is
    /// logged once and shown as failing.
    v4_lost: HashSet<String>,
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
                "1 while the last dns_refresh of a host name failed, or answered IPv6 only for IPv4 targets (its targets and auth services keep their addresses).",
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
                .map(|h| {
                    let failing = memory.failing.contains(h) || memory.v4_lost.contains(h);
                    (h.clone(), failing)
                })
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
                    match &c.place {
                        Place::Target { upstream, name } => info!(
                            "upstream target re-resolved upstream={} target={name} from={} to={} generation={g}",
                            config.upstreams.get(*upstream).map_or("?", |u| u.name.as_str()),
                            list(&c.from),
                            list(&c.to)
                        ),
                        Place::ForwardAuth { plugin } => info!(
                            "forward-auth service re-resolved plugin={} from={} to={} generation={g}",
                            config.plugins.get(*plugin).map_or("?".to_owned(), |p| p.scope.id(config)),
                            list(&c.from),
                            list(&c.to)
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
                warn!(
                    "upstream addresses not installed: {}; the next refresh looks again",
                    e.join("; ")
                )
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

/// Everything given by host name: (name as written, current addresses, where it is used).
fn named(config: &Config) -> Vec<(&str, Vec<SocketAddr>, Place)> {
    let targets = config.upstreams.iter().enumerate().flat_map(|(ui, u)| {
        // Each name once, with all its addresses (its targets sit next to each other).
        u.targets
            .iter()
            .enumerate()
            .filter(|&(ti, t)| {
                ti.checked_sub(1)
                    .and_then(|p| u.targets.get(p))
                    .is_none_or(|p| p.name != t.name)
            })
            .map(move |(_, t)| {
                let place = Place::Target {
                    upstream: ui,
                    name: t.name.clone(),
                };
                (t.name.as_str(), u.addrs_of(&t.name), place)
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
                vec![f.def.addr],
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

/// Where an auth service at `current` goes, given its name's answers: nowhere while `current` is
/// among them; else the first address of its family, or IPv4 for an IPv6 one (the load-time
/// preference). `None` also when no address would do: an answer of the other family only (a
/// failed A query next to a working AAAA one) keeps it where it is.
fn destination(current: SocketAddr, ips: &[IpAddr]) -> Option<SocketAddr> {
    if ips.contains(&current.ip()) {
        return None;
    }
    ips.iter()
        .find(|ip| ip.is_ipv4())
        .or_else(|| ips.iter().find(|_| current.is_ipv6()))
        .map(|ip| SocketAddr::new(*ip, current.port()))
}

/// The addresses a target name at `current` takes from an answer (`net::target_ips`): every answer,
/// plus those of `current` that are missing for the first time (`missed_before` says which were
/// missing last round; the first-time ones go into `missed_now`). `None` when that is what it has,
/// or the answer has none of its family.
fn next_addrs(
    name: &str,
    current: &[SocketAddr],
    answer: &[IpAddr],
    missed_before: &HashSet<(String, SocketAddr)>,
    missed_now: &mut HashSet<(String, SocketAddr)>,
) -> Option<Vec<SocketAddr>> {
    let port = current.first()?.port();
    let ips = net::target_ips(answer);
    let v4 = current.iter().any(SocketAddr::is_ipv4);
    if v4 && !ips.iter().any(IpAddr::is_ipv4) {
        return None;
    }
    let mut next: Vec<SocketAddr> = ips.iter().map(|&ip| SocketAddr::new(ip, port)).collect();
    for &a in current {
        if next.contains(&a) {
            continue;
        }
        let key = (name.to_owned(), a);
        if !missed_before.contains(&key) {
            missed_now.insert(key);
            // Kept for a round only where it fits: the answer's addresses come first.
            if next.len() < net::MAX_TARGET_ADDRS {
                next.push(a);
            }
        }
    }
    next.sort_unstable();
    let mut now = current.to_vec();
    now.sort_unstable();
    (next != now).then_some(next)
}

/// Resolves every host name targets and auth services use (each once) and returns what changes:
/// target names whose set of addresses differs (new ones at once, missing ones after two rounds;
/// see `next_addrs`), and auth services whose address was missing from the answers in this round
/// and the one before.
pub fn changes(
    config: &Config,
    resolve: impl Fn(&str) -> Result<Vec<IpAddr>, String>,
    memory: &mut Memory,
) -> Vec<Change> {
    let mut answers: HashMap<&str, Option<Vec<IpAddr>>> = HashMap::new();
    let mut missed = HashSet::new();
    let mut v4_lost = HashSet::new();
    let mut out = Vec::new();
    for (name, current, place) in named(config) {
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
        let Some(ips) = got.as_deref() else {
            continue;
        };
        if current.iter().any(SocketAddr::is_ipv4) && !ips.iter().any(IpAddr::is_ipv4) {
            // `next_addrs` and `destination` keep such targets where they are.
            if !memory.v4_lost.contains(host) && !v4_lost.contains(host) {
                warn!(
                    "upstream host answers IPv6 only host={host}; its IPv4 targets keep their addresses"
                );
            }
            v4_lost.insert(host.to_owned());
        }
        if let Place::Target { .. } = place {
            if let Some(to) = next_addrs(name, &current, ips, &memory.missed, &mut missed) {
                out.push(Change {
                    place,
                    from: current,
                    to,
                });
            }
            continue;
        }
        let Some(&addr) = current.first() else {
            continue;
        };
        let Some(to) = destination(addr, ips) else {
            continue;
        };
        let key = (name.to_owned(), addr);
        if memory.missed.contains(&key) {
            out.push(Change {
                place,
                from: current,
                to: vec![to],
            });
        } else {
            missed.insert(key);
        }
    }
    memory.missed = missed;
    for host in memory.v4_lost.difference(&v4_lost) {
        if answers.get(host.as_str()).is_some_and(Option::is_some) {
            info!("upstream host answers IPv4 again host={host}");
        }
    }
    memory.v4_lost = v4_lost;
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

    /// What `Reloader::apply_resolved` does to the config.
    fn apply(cfg: &mut Config, changes: &[Change]) {
        for c in changes {
            match &c.place {
                Place::Target { upstream, name } => cfg.upstreams[*upstream].set_addrs(name, &c.to),
                Place::ForwardAuth { plugin } => {
                    if let PluginConfig::ForwardAuth(f) = &mut cfg.plugins[*plugin].config {
                        f.def.addr = c.to[0];
                    }
                }
            }
        }
    }

    fn target(upstream: usize, name: &str) -> Place {
        Place::Target {
            upstream,
            name: name.to_owned(),
        }
    }

    #[test]
    fn a_name_gains_addresses_at_once_and_loses_them_after_two_misses() {
        let mut cfg = config();
        let was = cfg.upstreams[0].targets[0].addr;
        let new = addr("10.0.0.9:9001");
        let mut memory = Memory::default();
        let calls = std::cell::Cell::new(0);
        // The same answer: nothing. The literal is never resolved, and the name two targets and an
        // auth service use is resolved once.
        let same = changes(
            &cfg,
            |_| {
                calls.set(calls.get() + 1);
                Ok(vec![was.ip()])
            },
            &mut memory,
        );
        assert!(same.is_empty(), "{same:?}");
        assert_eq!(calls.get(), 1);
        // A second address: both upstreams' targets of that name gain it at once, sorted; the
        // auth service (one address) stays where it is.
        let grown = changes(&cfg, |_| Ok(vec![was.ip(), new.ip()]), &mut memory);
        let both = vec![new, was];
        assert_eq!(
            grown,
            vec![
                Change {
                    place: target(0, "localhost:9001"),
                    from: vec![was],
                    to: both.clone()
                },
                Change {
                    place: target(1, "localhost:9001"),
                    from: vec![was],
                    to: both.clone()
                },
            ]
        );
        apply(&mut cfg, &grown);
        let u = &cfg.upstreams[0];
        assert_eq!(u.addrs_of("localhost:9001"), both);
        assert_eq!(
            u.targets.len(),
            3,
            "the literal target stays: {:?}",
            u.targets
        );
        assert_eq!(u.targets[2].addr, addr("127.0.0.1:9002"));
        assert!(u.targets.iter().all(|t| t.weight == 100));
        // The same set in another order (round robin): nothing.
        assert!(changes(&cfg, |_| Ok(vec![new.ip(), was.ip()]), &mut memory).is_empty());
        // `was` missing once (a subset answer): kept.
        let without = |m: &mut Memory| changes(&cfg, |_| Ok(vec![ip("::1"), new.ip()]), m);
        assert!(without(&mut memory).is_empty());
        // Back, then missing once more: still kept (the streak restarted).
        assert!(changes(&cfg, |_| Ok(vec![was.ip(), new.ip()]), &mut memory).is_empty());
        assert!(without(&mut memory).is_empty());
        // Missing twice in a row: the targets lose it, and the auth service with that name moves
        // to the IPv4 answer (the one given by an IP literal stays, the disabled one is not
        // resolved).
        assert_eq!(
            without(&mut memory),
            vec![
                Change {
                    place: target(0, "localhost:9001"),
                    from: both.clone(),
                    to: vec![new]
                },
                Change {
                    place: target(1, "localhost:9001"),
                    from: both.clone(),
                    to: vec![new]
                },
                Change {
                    // Its index among all plugins.
                    place: Place::ForwardAuth { plugin: 2 },
                    from: vec![SocketAddr::new(was.ip(), 9100)],
                    to: vec![addr("10.0.0.9:9100")]
                },
            ]
        );
        // A TLS upstream's server names follow its targets.
        let mut tls = load_str(
            r#"
[[upstreams]]
name = "t"
tls = true
targets = [{ target = "127.0.0.1:9443" }, { target = "localhost:9443", weight = 7 }]

[[services]]
name = "s"
upstream = "t"

[[routes]]
name = "r"
service = "s"
paths = ["/"]
"#,
            "tls.toml",
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let u = &mut tls.upstreams[0];
        u.set_addrs(
            "localhost:9443",
            &[addr("127.0.0.2:9443"), addr("127.0.0.3:9443")],
        );
        let names = &u.tls.as_ref().map(|t| t.names.clone()).unwrap_or_default();
        assert_eq!(names.len(), 3);
        assert_eq!(format!("{:?}", names[2]), format!("{:?}", names[1]));
        assert_eq!(u.targets[2].weight, 7);
        // Never emptied.
        u.set_addrs("localhost:9443", &[]);
        assert_eq!(u.targets.len(), 3);
    }

    #[test]
    fn the_family_is_kept_and_failures_keep_the_address() {
        let v4 = addr("127.0.0.1:80");
        // An IPv6-only answer (a failed A query) does not move an IPv4 target...
        assert_eq!(destination(v4, &[ip("::1")]), None);
        // ...and is shown as failing until IPv4 comes back.
        let cfg = config();
        let mut memory = Memory::default();
        assert!(changes(&cfg, |_| Ok(vec![ip("::1")]), &mut memory).is_empty());
        assert!(memory.v4_lost.contains("localhost"));
        assert!(changes(&cfg, |_| Ok(vec![ip("::1")]), &mut memory).is_empty());
        assert!(memory.v4_lost.contains("localhost"));
        let was = cfg.upstreams[0].targets[0].addr;
        assert!(changes(&cfg, |_| Ok(vec![was.ip(), ip("::1")]), &mut memory).is_empty());
        assert!(memory.v4_lost.is_empty());
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
