//! Every shipped config (config/*.toml, config/examples/*.toml) loads, and compiles to what its
//! comments promise. A new example file is picked up automatically by `all_examples_load`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ringgate::config::model::{Config, PathMatch, ValueMatch};
use ringgate::config::{check, load, summary};

fn load_ok(path: &str) -> Config {
    match load(Path::new(path)) {
        Ok(c) => c,
        Err(errors) => {
            let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
            panic!("{path} does not load:\n{}", text.join("\n"))
        }
    }
}

fn toml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn route<'a>(cfg: &'a Config, name: &str) -> &'a ringgate::config::model::RouteDef {
    cfg.routes
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no route {name}"))
}

/// The upstream a route ends up at.
fn upstream_of<'a>(cfg: &'a Config, route_name: &str) -> &'a ringgate::config::model::UpstreamDef {
    let r = route(cfg, route_name);
    &cfg.upstreams[cfg.services[r.service].upstream]
}

#[test]
fn all_examples_load() {
    let mut files = toml_files("config");
    files.extend(toml_files("config/examples"));
    assert!(
        files.len() >= 4,
        "expected the demo and three examples, found {files:?}"
    );
    for f in files {
        let cfg = load_ok(&f.to_string_lossy());
        assert_eq!(cfg.source, f);
        assert!(!cfg.routes.is_empty(), "{f:?} has no routes");
        for l in &cfg.server.listen {
            assert!(
                l.ip().is_loopback(),
                "{f:?} listens on {l}, examples must use 127.0.0.1"
            );
        }
        for u in &cfg.upstreams {
            for t in &u.targets {
                assert!(
                    t.addr.ip().is_loopback(),
                    "{f:?}: target {} is not local",
                    t.name
                );
            }
        }
        let out = check(&f).unwrap_or_else(|e| panic!("check {f:?}: {e}"));
        assert!(out.starts_with("ok\n"));
    }
}

#[test]
fn demo() {
    let cfg = load_ok("config/ringgate.toml");
    let s = &cfg.server;
    assert_eq!(s.listen, vec![addr("127.0.0.1:8080")]);
    assert_eq!(s.workers, None);
    assert_eq!(
        (s.max_header_bytes, s.max_uri_bytes, s.max_headers),
        (32 << 10, 8 << 10, 100)
    );
    assert_eq!(s.max_body_bytes, 1 << 20);
    assert_eq!(s.drain_timeout, Duration::from_secs(30));
    assert_eq!(s.timeouts.keepalive, Duration::from_secs(75));
    assert_eq!(s.timeouts.upstream_connect, Duration::from_secs(5));
    assert_eq!(
        (s.pool.max_idle, s.pool.idle_timeout),
        (64, Duration::from_secs(60))
    );

    let log = cfg.access_log.as_ref().expect("the demo logs requests");
    assert_eq!(log.target, ringgate::config::model::AccessLogTarget::Stdout);
    assert_eq!(
        (log.buffer_size, log.flush_interval),
        (64 << 10, Duration::from_secs(1))
    );

    assert_eq!(cfg.upstreams.len(), 1);
    let demo = &cfg.upstreams[0];
    assert_eq!(demo.name, "demo");
    let targets: Vec<(SocketAddr, u32)> = demo.targets.iter().map(|t| (t.addr, t.weight)).collect();
    assert_eq!(
        targets,
        vec![(addr("127.0.0.1:9001"), 80), (addr("127.0.0.1:9002"), 20)]
    );
    assert_eq!(demo.targets[0].name, "127.0.0.1:9001");

    assert_eq!(cfg.services.len(), 1);
    let svc = &cfg.services[0];
    assert_eq!(
        (svc.upstream, svc.path.as_str(), svc.host_header.as_deref()),
        (0, "", None)
    );
    assert_eq!(svc.connect_timeout, Duration::from_secs(2));
    assert_eq!(svc.read_timeout, Duration::from_secs(60));

    assert_eq!(cfg.routes.len(), 2);
    let api = route(&cfg, "api");
    assert!(matches!(&api.paths[..], [PathMatch::Prefix(p)] if p == "/api"));
    assert!(api.strip_path && !api.preserve_host);
    assert!(api.methods.is_empty() && api.hosts.is_empty());
    let health = route(&cfg, "health");
    assert!(matches!(&health.paths[..], [PathMatch::Exact(p)] if p == "/health"));
    assert_eq!(health.methods, vec!["GET", "HEAD"]);
    assert!(!health.strip_path);
}

#[test]
fn kong_user_order() {
    let cfg = load_ok("config/examples/kong-user-order.toml");
    // Three named upstreams plus the anonymous one of the url service.
    assert_eq!(cfg.upstreams.len(), 4);
    assert_eq!(cfg.services.len(), 4);
    assert_eq!(cfg.routes.len(), 4);
    assert_eq!(upstream_of(&cfg, "users-v1").name, "user-v1");
    assert_eq!(upstream_of(&cfg, "users-v1").targets.len(), 2);
    assert!(upstream_of(&cfg, "users-v1")
        .targets
        .iter()
        .all(|t| t.weight == 100));
    assert_eq!(upstream_of(&cfg, "users-v2").name, "user-v2");
    let v2 = &cfg.services[route(&cfg, "users-v2").service];
    assert_eq!(
        (v2.path.as_str(), v2.host_header.as_deref()),
        ("/users", Some("users.internal"))
    );
    assert_eq!(v2.read_timeout, Duration::from_secs(10));
    let orders2 = &cfg.services[route(&cfg, "orders-v2").service];
    assert_eq!(orders2.path, "/orders");
    assert_eq!(orders2.host_header.as_deref(), Some("127.0.0.1:9401"));
    let anon = upstream_of(&cfg, "orders-v2");
    assert_eq!(anon.name, "service:order-service-v2");
    assert_eq!(anon.targets[0].addr, addr("127.0.0.1:9401"));
    assert_eq!(route(&cfg, "orders-v2").max_body_bytes, Some(64 << 10));
    assert_eq!(route(&cfg, "orders-v1").methods, vec!["GET", "POST"]);
}

#[test]
fn traefik_canary() {
    let cfg = load_ok("config/examples/traefik-canary.toml");
    assert_eq!(cfg.upstreams.len(), 1);
    let weights: Vec<u32> = cfg.upstreams[0].targets.iter().map(|t| t.weight).collect();
    assert_eq!(weights, vec![80, 20]);
    let app = route(&cfg, "app");
    assert_eq!(app.hosts, vec!["app.example.com", "*.app.example.com"]);
    assert!(matches!(&app.paths[..], [PathMatch::Prefix(p)] if p == "/"));
    assert!(app.preserve_host && !app.strip_path);
}

#[test]
fn header_versioning() {
    let cfg = load_ok("config/examples/header-versioning.toml");
    let v2 = route(&cfg, "api-v2");
    assert_eq!(v2.headers.len(), 1);
    assert_eq!(v2.headers[0].name, "x-api-version");
    assert!(matches!(&v2.headers[0].value, ValueMatch::Exact(v) if v == &["2"]));
    assert_eq!(v2.priority, 10);
    assert_eq!(
        upstream_of(&cfg, "api-v2").targets[0].addr,
        addr("127.0.0.1:9002")
    );
    let v1 = route(&cfg, "api-v1");
    assert!(v1.headers.is_empty());
    assert_eq!(v1.priority, 0);
    assert_eq!(
        upstream_of(&cfg, "api-v1").targets[0].addr,
        addr("127.0.0.1:9001")
    );
    assert_eq!(
        cfg.services[v1.service].host_header.as_deref(),
        Some("127.0.0.1:9001")
    );
}

#[test]
fn summary_lists_routes_and_targets() {
    let cfg = load_ok("config/ringgate.toml");
    let s = summary(&cfg);
    assert!(s.contains("listen:  127.0.0.1:8080"), "{s}");
    assert!(s.contains("workers: auto"), "{s}");
    assert!(s.contains("route api "), "{s}");
    assert!(s.contains("paths: =/health"), "{s}");
    assert!(
        s.contains("127.0.0.1:9001 weight 80, 127.0.0.1:9002 weight 20"),
        "{s}"
    );
    assert_eq!(
        s.lines()
            .filter(|l| l.trim_start().starts_with("route "))
            .count(),
        2
    );
}
