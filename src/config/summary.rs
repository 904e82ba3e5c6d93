//! The human summary `ringgate check` prints for a valid config.
//!
//! One line per fact: listen addresses, workers, limits, then one line per route in file order:
//! `name  hosts  methods  paths  -> service -> targets (weights)`. Pure formatting, no I/O.

use std::fmt::Write as _;

use super::model::{Balance, Config, HashOn, ListenKind, PathMatch, TargetDef, ValueMatch};

fn or_any(items: Vec<String>) -> String {
    if items.is_empty() {
        "*".to_owned()
    } else {
        items.join(",")
    }
}

fn value(v: &ValueMatch) -> String {
    match v {
        ValueMatch::Present => "*".to_owned(),
        ValueMatch::Exact(vals) => vals.join("|"),
        ValueMatch::Regex(re) => format!("~{}", re.as_str()),
    }
}

/// ` (least_conn)`, ` (consistent_hash on header x-user, else ip)`; nothing for round-robin.
fn push_balance(line: &mut String, balance: &Balance) {
    match balance {
        Balance::RoundRobin => {}
        Balance::LeastConn => line.push_str(" (least_conn)"),
        Balance::Hash { on, fallback_ip } => {
            let _ = match on {
                HashOn::Ip => write!(line, " (consistent_hash on ip"),
                HashOn::Consumer => write!(line, " (consistent_hash on consumer"),
                HashOn::Path => write!(line, " (consistent_hash on path"),
                HashOn::Header(h) => write!(line, " (consistent_hash on header {h}"),
                HashOn::Cookie { name, .. } => write!(line, " (consistent_hash on cookie {name}"),
                HashOn::QueryArg(q) => write!(line, " (consistent_hash on query_arg {q}"),
            };
            line.push_str(match (on, fallback_ip) {
                (HashOn::Ip, _) => ")",
                (HashOn::Cookie { set: Some(_), .. }, _) => ", set when missing)",
                (_, true) => ", else ip)",
                (_, false) => ", else round_robin)",
            });
        }
    }
}

/// `name weight W [max_conns M]` per target as written, plus the addresses it resolved to when the name is not
/// already one (`name (a, b) weight W`: a name stands for one target per address).
fn targets(list: &[TargetDef]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut rest = list;
    while let Some(t) = rest.first() {
        let n = rest.iter().take_while(|u| u.name == t.name).count();
        let (same, after) = rest.split_at(n);
        rest = after;
        let addrs: Vec<String> = same.iter().map(|u| u.addr.to_string()).collect();
        let mut entry = if addrs.len() == 1 && addrs.first() == Some(&t.name) {
            format!("{} weight {}", t.name, t.weight)
        } else {
            format!("{} ({}) weight {}", t.name, addrs.join(", "), t.weight)
        };
        if let Some(m) = t.max_conns {
            let _ = write!(entry, " max_conns {m}");
        }
        out.push(entry);
    }
    out.join(", ")
}

/// Summary of a loaded config (multi-line, ends with a newline).
pub fn summary(cfg: &Config) -> String {
    let mut out = String::new();
    let listen: Vec<String> = cfg
        .server
        .listeners
        .iter()
        .map(|l| match l.kind {
            ListenKind::Http => l.addr.to_string(),
            ListenKind::Https => format!("{} (tls)", l.addr),
            ListenKind::RedirectHttps { status, https_port } => {
                format!("{} (redirect {status} to https port {https_port})", l.addr)
            }
        })
        .collect();
    let _ = writeln!(out, "listen:  {}", listen.join(", "));
    for c in &cfg.certificates {
        let names = if c.snis.is_empty() {
            "-".to_owned()
        } else {
            c.snis.join(",")
        };
        let _ = writeln!(
            out,
            "certificate: {} snis {names}{}",
            c.cert_file.display(),
            if c.default { " (default)" } else { "" }
        );
    }
    if let Some(acme) = &cfg.acme {
        let mut challenge = acme.challenge.name().to_owned();
        if let Some(d) = &acme.dns {
            let _ = write!(challenge, " via {}", d.program.display());
            if !d.delay.is_zero() {
                let _ = write!(challenge, ", then {} s", d.delay.as_secs_f64());
            }
        }
        let _ = writeln!(
            out,
            "acme: {} ({challenge}), storage {}",
            acme.directory,
            acme.storage.display()
        );
    }
    for c in &cfg.acme_certificates {
        let _ = writeln!(
            out,
            "certificate: acme snis {}{}",
            c.snis.join(","),
            if c.default { " (default)" } else { "" }
        );
    }
    let workers = cfg
        .server
        .workers
        .map_or_else(|| "auto (one per core)".to_owned(), |n| n.to_string());
    let _ = writeln!(out, "workers: {workers}");
    if let Some(log) = &cfg.access_log {
        let _ = writeln!(
            out,
            "access log: {} (buffer {} bytes, flush every {} ms)",
            log.target,
            log.buffer_size,
            log.flush_interval.as_millis()
        );
    }
    let _ = writeln!(
        out,
        "{} upstream(s), {} service(s), {} route(s)",
        cfg.upstreams
            .iter()
            .filter(|u| !u.name.starts_with("service:"))
            .count(),
        cfg.services.len(),
        cfg.routes.len()
    );
    let chains = crate::plugins::compile_chains(cfg);
    let instances = crate::limit::instances(cfg);
    for (ri, r) in cfg.routes.iter().enumerate() {
        let paths = r
            .paths
            .iter()
            .map(|p| match p {
                PathMatch::Prefix(s) => s.clone(),
                PathMatch::Exact(s) => format!("={s}"),
                PathMatch::Regex(re) => format!("~{}", re.as_str()),
            })
            .collect();
        let mut line = format!(
            "  route {}  hosts: {}  methods: {}  paths: {}",
            r.name,
            or_any(r.hosts.clone()),
            or_any(r.methods.clone()),
            or_any(paths)
        );
        for h in &r.headers {
            let _ = write!(line, "  header {}: {}", h.name, value(&h.value));
        }
        for q in &r.query {
            let _ = write!(line, "  query {}: {}", q.name, value(&q.value));
        }
        if r.priority != 0 {
            let _ = write!(line, "  priority: {}", r.priority);
        }
        if let Some(s) = cfg.services.get(r.service) {
            let _ = write!(line, "  -> service {}", s.name);
            if !s.path.is_empty() {
                let _ = write!(line, " (path {})", s.path);
            }
            if let Some(u) = cfg.upstreams.get(s.upstream) {
                let _ = write!(line, " -> upstream {} [{}]", u.name, targets(&u.targets));
                push_balance(&mut line, &u.balance);
            }
        }
        let chain = chains.get(ri).map(|c| &c[..]).unwrap_or_default();
        if !chain.is_empty() {
            let names: Vec<String> = chain
                .iter()
                .map(|p| match *p {
                    crate::plugins::Plugin::RateLimiting { instance } => instances
                        .get(instance)
                        .map_or_else(|| p.name().to_owned(), rate_limiting),
                    other => other.name().to_owned(),
                })
                .collect();
            let _ = write!(line, "  plugins: {}", names.join(", "));
        }
        let _ = writeln!(out, "{line}");
    }
    if !cfg.consumers.is_empty() {
        let _ = writeln!(
            out,
            "{} consumer(s): {} API key(s), {} basic-auth user(s), {} JWT credential(s)",
            cfg.consumers.len(),
            cfg.credentials.keys.len(),
            cfg.credentials.basic.len(),
            cfg.credentials.jwt.len()
        );
    }
    out
}

/// `rate-limiting[route:r](minute=100 by ip)`, then ` sliding`, ` cluster`, ` shadow` where they
/// apply (a token bucket shows as one).
fn rate_limiting(inst: &crate::limit::InstanceDef) -> String {
    use super::model::Policy;
    let d = &inst.def;
    let mut limits: Vec<String> = d
        .limits
        .iter()
        .map(|l| format!("{}={}", l.period.key(), l.limit))
        .collect();
    if let Some(b) = d.bucket {
        limits.push(format!(
            "bucket {}/s burst {}",
            b.rate_per_ms * 1000.0,
            b.burst
        ));
    }
    let mut s = format!(
        "rate-limiting[{}]({} by {:?}",
        inst.id,
        limits.join(","),
        d.limit_by
    )
    .to_lowercase();
    if d.algorithm == super::model::Algorithm::SlidingWindow {
        s.push_str(" sliding");
    }
    if matches!(d.policy, Policy::Cluster(_)) {
        s.push_str(" cluster");
    }
    if d.mode == super::model::Mode::Shadow {
        s.push_str(" shadow");
    }
    s.push(')');
    s
}
