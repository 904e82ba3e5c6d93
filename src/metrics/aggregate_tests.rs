//! Unit tests for `aggregate`: merging flushes from several workers, gauges, reload by name,
//! extension families, status JSON, health staleness, the HDR report and render time.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::metrics::hub::MetricsSink;
use crate::metrics::{FamilyKind, RouteName, TargetName, Timings, WorkerMetrics};

/// A strict-enough check of the text exposition format: HELP then TYPE before a family's samples,
/// one block per family, sample names belong to the family, label syntax and escapes, numeric
/// values, no duplicate series, histogram buckets cumulative and ending in `+Inf` == `_count`.
pub fn check_exposition(text: &str) -> Result<(), String> {
    let mut families: HashMap<String, String> = HashMap::new();
    let mut current: Option<(String, String)> = None;
    let mut pending_help: Option<String> = None;
    let mut series: HashSet<String> = HashSet::new();
    let mut buckets: HashMap<String, (f64, f64, bool)> = HashMap::new(); // labels-sans-le -> (last le, last count, saw inf)
    let mut counts: HashMap<String, f64> = HashMap::new();
    if !text.ends_with('\n') {
        return Err("must end with a newline".into());
    }
    for (n, line) in text.lines().enumerate() {
        let err = |m: &str| Err(format!("line {}: {m}: {line}", n + 1));
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or("");
            if families.contains_key(name) {
                return err("family declared twice");
            }
            pending_help = Some(name.to_owned());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let (name, kind) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
            if pending_help.as_deref() != Some(name) {
                return err("TYPE without HELP just before");
            }
            if !["counter", "gauge", "histogram"].contains(&kind) {
                return err("unknown type");
            }
            families.insert(name.to_owned(), kind.to_owned());
            current = Some((name.to_owned(), kind.to_owned()));
            pending_help = None;
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            return err("unexpected comment or blank line");
        }
        let Some((fam, kind)) = &current else {
            return err("sample before any TYPE");
        };
        let (name_labels, value) = line.rsplit_once(' ').ok_or("no value")?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .map_err(|_| format!("line {}: bad value", n + 1))?,
        };
        let (name, labels) = match name_labels.split_once('{') {
            Some((n, l)) => (
                n,
                l.strip_suffix('}')
                    .ok_or(format!("line {}: unclosed labels", n))?,
            ),
            None => (name_labels, ""),
        };
        let suffix_ok = if kind == "histogram" {
            [
                format!("{fam}_bucket"),
                format!("{fam}_sum"),
                format!("{fam}_count"),
            ]
            .contains(&name.to_owned())
        } else {
            name == fam
        };
        if !suffix_ok {
            return err("sample name does not belong to the current family");
        }
        // Labels: name="value" pairs with \\ \" \n escapes only.
        let mut pairs = Vec::new();
        let b = labels.as_bytes();
        let mut i = 0;
        while i < b.len() {
            let eq = labels[i..].find("=\"").ok_or("label without =\"")? + i;
            let lname = &labels[i..eq];
            if !crate::metrics::prom::valid_label_name(lname) {
                return err("bad label name");
            }
            let mut j = eq + 2;
            let mut val = String::new();
            loop {
                match b.get(j) {
                    Some(b'\\') => {
                        match b.get(j + 1) {
                            Some(b'\\') => val.push('\\'),
                            Some(b'"') => val.push('"'),
                            Some(b'n') => val.push('\n'),
                            _ => return err("bad escape"),
                        }
                        j += 2;
                    }
                    Some(b'"') => break,
                    Some(_) => {
                        let c = labels[j..].chars().next().ok_or("utf8")?;
                        val.push(c);
                        j += c.len_utf8();
                    }
                    None => return err("unterminated label value"),
                }
            }
            pairs.push((lname.to_owned(), val));
            j += 1;
            if b.get(j) == Some(&b',') {
                j += 1;
            }
            i = j;
        }
        if !series.insert(format!("{name}{{{labels}}}")) {
            return err("duplicate series");
        }
        if kind == "histogram" {
            let key: Vec<String> = pairs
                .iter()
                .filter(|(k, _)| k != "le")
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let key = format!("{fam}|{}", key.join(","));
            if name.ends_with("_bucket") {
                let le = pairs
                    .iter()
                    .find(|(k, _)| k == "le")
                    .ok_or("bucket without le")?;
                let le_v: f64 = if le.1 == "+Inf" {
                    f64::INFINITY
                } else {
                    le.1.parse().map_err(|_| "bad le")?
                };
                let e = buckets
                    .entry(key)
                    .or_insert((f64::NEG_INFINITY, 0.0, false));
                if le_v <= e.0 || value < e.1 {
                    return err("buckets not increasing/cumulative");
                }
                *e = (le_v, value, le_v.is_infinite());
                if le_v.is_infinite() {
                    counts.insert(format!("{fam}|{}", key_of(&pairs)), value);
                }
            } else if name.ends_with("_count") {
                let inf = counts.get(&format!("{fam}|{}", key_of(&pairs)));
                if inf != Some(&value) {
                    return err("_count differs from the +Inf bucket");
                }
            }
        }
    }
    if buckets.values().any(|b| !b.2) {
        return Err("a histogram lacks its +Inf bucket".into());
    }
    Ok(())
}

fn key_of(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .filter(|(k, _)| k != "le")
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn timings(total_ms: u64, upstream_ms: u64) -> Timings {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    Timings {
        head_in: t0,
        upstream_head_out: Some(t0 + ms(1)),
        upstream_head_in: Some(t0 + ms(1 + upstream_ms)),
        client_head_out: Some(t0 + ms(1 + upstream_ms)),
        end: t0 + ms(total_ms),
        connect: Duration::ZERO,
    }
}

fn render(agg: &Aggregate) -> String {
    let mut s = String::new();
    agg.render_metrics(&mut s);
    if let Err(e) = check_exposition(&s) {
        panic!("{e}\n{s}");
    }
    s
}

#[test]
fn merges_several_workers() {
    let layout = Layout::synthetic(3, 2, 2);
    let mut agg = Aggregate::new(Duration::from_secs(1));
    agg.set_layout(layout.clone());
    agg.set_workers(3);
    let workers: Vec<WorkerMetrics> = (0..3)
        .map(|i| WorkerMetrics::new(i, layout.clone(), MetricsSink::test().0))
        .collect();
    for (i, w) in workers.iter().enumerate() {
        for _ in 0..=i {
            w.current().request_done(1, 200, 100, 1000, &timings(3, 1));
        }
        w.current().request_done(2, 503, 1, 1, &timings(20, 15));
        w.current().gateway_error(None, 404, 50, 60);
        w.current().upstream_connect_error(1);
        w.current().upstream_acquired(0);
        w.conn_opened();
    }
    for w in &workers {
        agg.apply(w.take(&[2, 3], false).unwrap_or_else(|| panic!("flush")));
    }
    let s = render(&agg);
    assert!(
        s.contains("ringgate_http_requests_total{route=\"r1\",service=\"s1\",code=\"200\"} 6\n"),
        "{s}"
    );
    assert!(
        s.contains("ringgate_http_requests_total{route=\"r2\",service=\"s0\",code=\"503\"} 3\n")
    );
    assert!(s.contains(
        "ringgate_http_requests_total{route=\"(none)\",service=\"(none)\",code=\"404\"} 3\n"
    ));
    assert!(
        !s.contains("route=\"r0\""),
        "untouched routes have no series"
    );
    // 3 ms requests land in le=0.005, not le=0.0025.
    assert!(s.contains("ringgate_request_duration_seconds_bucket{route=\"r1\",le=\"0.0025\"} 0\n"));
    assert!(s.contains("ringgate_request_duration_seconds_bucket{route=\"r1\",le=\"0.005\"} 6\n"));
    assert!(s.contains("ringgate_request_duration_seconds_bucket{route=\"r1\",le=\"+Inf\"} 6\n"));
    assert!(s.contains("ringgate_request_duration_seconds_count{route=\"r1\"} 6\n"));
    assert!(s.contains("ringgate_request_duration_seconds_sum{route=\"r1\"} 0.018\n"));
    assert!(s.contains("ringgate_upstream_duration_seconds_bucket{route=\"r2\",le=\"0.01\"} 0\n"));
    assert!(s.contains("ringgate_upstream_duration_seconds_bucket{route=\"r2\",le=\"0.025\"} 3\n"));
    assert!(s.contains("ringgate_bandwidth_bytes_total{direction=\"ingress\",route=\"r1\"} 600\n"));
    assert!(s.contains("ringgate_bandwidth_bytes_total{direction=\"egress\",route=\"r1\"} 6000\n"));
    assert!(s.contains("ringgate_downstream_connections 3\n"));
    assert!(s.contains("ringgate_downstream_connections_accepted_total 3\n"));
    assert!(s.contains(
        "ringgate_upstream_connections{upstream=\"u\",target=\"10.0.0.0:80\",address=\"10.0.0.0:80\",state=\"idle\"} 6\n"
    ));
    assert!(s.contains(
        "ringgate_upstream_connections{upstream=\"u\",target=\"10.0.0.0:80\",address=\"10.0.0.0:80\",state=\"active\"} 3\n"
    ));
    assert!(s.contains(
        "ringgate_upstream_connect_errors_total{upstream=\"u\",target=\"10.0.0.1:80\",address=\"10.0.0.1:80\"} 3\n"
    ));
    assert!(s.contains("ringgate_config_generation 1\n"));
    assert!(s.contains("ringgate_workers{state=\"serving\"} 3\n"));

    // Gauges are latest-per-worker, counters add up.
    for w in &workers {
        w.conn_closed();
        agg.apply(w.take(&[0, 0], false).unwrap_or_else(|| panic!("flush")));
    }
    let s = render(&agg);
    assert!(s.contains("ringgate_downstream_connections 0\n"));
    assert!(s.contains("ringgate_downstream_connections_accepted_total 3\n"));
    assert!(
        s.contains("ringgate_http_requests_total{route=\"r1\",service=\"s1\",code=\"200\"} 6\n")
    );

    // HDR histograms merged across workers.
    let summary = agg.histogram_summary();
    let line = summary
        .lines()
        .find(|l| l.starts_with("r1 ") && l.contains(" total "))
        .unwrap_or_else(|| panic!("{summary}"));
    assert_eq!(line.split_whitespace().nth(2), Some("6"));
    let report = agg
        .histogram_report("r2", HistKind::Total)
        .unwrap_or_default();
    assert!(
        report.contains("Total count    =            3]"),
        "{report}"
    );
    assert!(agg.histogram_report("nope", HistKind::Added).is_none());
    let empty = agg
        .histogram_report("r0", HistKind::Added)
        .unwrap_or_default();
    assert!(empty.contains("Total count    =            0]"));
}

#[test]
fn escapes_labels() {
    let layout = Arc::new(Layout {
        generation: 1,
        routes: vec![RouteName {
            name: "a\"b\\c\nd".into(),
            service: "s".into(),
        }],
        targets: vec![TargetName::at("u\"", "t")],
    });
    let mut agg = Aggregate::new(Duration::from_secs(1));
    agg.set_layout(layout.clone());
    let w = WorkerMetrics::new(0, layout, MetricsSink::test().0);
    w.current().request_done(0, 200, 1, 1, &timings(1, 0));
    agg.apply(w.take(&[], false).unwrap_or_else(|| panic!("flush")));
    let s = render(&agg);
    assert!(
        s.contains(r#"{route="a\"b\\c\nd",service="s",code="200"} 1"#),
        "{s}"
    );
    assert!(s.contains(r#"upstream="u\"",target="t""#));
}

#[test]
fn health_follows_flushes() {
    let layout = Layout::synthetic(1, 1, 0);
    let mut agg = Aggregate::new(Duration::from_millis(100));
    agg.set_layout(layout.clone());
    agg.set_workers(2);
    let now = Instant::now();
    assert!(!agg.health(now).0, "nobody flushed yet");
    let w0 = WorkerMetrics::new(0, layout.clone(), MetricsSink::test().0);
    let w1 = WorkerMetrics::new(1, layout, MetricsSink::test().0);
    agg.apply(w0.take(&[], false).unwrap_or_else(|| panic!("flush")));
    assert!(!agg.health(Instant::now()).0, "worker 1 missing");
    agg.apply(w1.take(&[], false).unwrap_or_else(|| panic!("flush")));
    let (ok, body) = agg.health(Instant::now());
    assert!(ok, "{body}");
    assert!(
        !agg.health(Instant::now() + Duration::from_millis(301)).0,
        "stale"
    );
    agg.apply(w1.take(&[], true).unwrap_or_else(|| panic!("flush")));
    assert!(!agg.health(Instant::now()).0, "stopped");
}

#[test]
fn health_says_draining_at_once() {
    let layout = Layout::synthetic(1, 1, 0);
    let mut agg = Aggregate::new(Duration::from_secs(60));
    agg.set_layout(layout.clone());
    agg.set_workers(1);
    let w0 = WorkerMetrics::new(0, layout, MetricsSink::test().0);
    agg.apply(w0.take(&[], false).unwrap_or_else(|| panic!("flush")));
    assert!(agg.health(Instant::now()).0);
    agg.set_draining();
    let (ok, body) = agg.health(Instant::now());
    assert!(!ok);
    assert_eq!(
        body,
        "{\"status\":\"draining\",\"workers\":1,\"serving\":1}\n"
    );
}

/// A route a reload removed leaves `/metrics` once its last counts are in and a few flush
/// intervals passed, and route names that change with every reload (a config generator's
/// versions) reuse slots instead of piling up (found by a review: they stayed until a restart).
#[test]
fn removed_routes_leave_the_metrics_and_give_their_slots_back() {
    let l1 = Layout::synthetic(2, 1, 0);
    // Lingering 5 flush intervals: 1 s here, so a stalled test machine still sees "just counted".
    let mut agg = Aggregate::new(Duration::from_millis(200));
    agg.set_layout(l1.clone());
    let w = WorkerMetrics::new(0, l1, MetricsSink::test().0);
    w.current().request_done(1, 200, 0, 0, &timings(1, 0));
    agg.apply(w.take(&[], false).unwrap_or_else(|| panic!("flush")));
    let one_route = |generation: u64, name: &str| {
        Arc::new(Layout {
            generation,
            routes: vec![RouteName {
                name: name.into(),
                service: "s0".into(),
            }],
            targets: vec![],
        })
    };
    agg.set_layout(one_route(2, "r0"));
    assert!(
        render(&agg).contains("route=\"r1\""),
        "just counted: still listed"
    );
    std::thread::sleep(Duration::from_millis(1100));
    let s = render(&agg);
    assert!(!s.contains("route=\"r1\""), "{s}");
    assert!(!agg.histogram_summary().contains("r1 "));
    assert!(
        agg.histogram_report("r1", HistKind::Added).is_none(),
        "gone from the report too"
    );
    assert!(agg.histogram_report("r0", HistKind::Added).is_some());
    let listed =
        |agg: &Aggregate| -> Vec<String> { agg.listed_routes().map(|r| r.name.clone()).collect() };
    assert_eq!(
        listed(&agg),
        ["r0", NO_ROUTE],
        "the serving config's route stays"
    );
    for g in 3..200 {
        agg.set_layout(one_route(g, &format!("v{g}")));
    }
    assert!(
        agg.routes.len() <= MAX_LAYOUT_MAPS + 2,
        "{} route slots",
        agg.routes.len()
    );
    assert_eq!(listed(&agg), ["v199", NO_ROUTE]);
}

#[test]
fn reload_keeps_counters_by_name() {
    let l1 = Layout::synthetic(2, 1, 1);
    let mut agg = Aggregate::new(Duration::from_secs(1));
    agg.set_layout(l1.clone());
    let w = WorkerMetrics::new(0, l1, MetricsSink::test().0);
    w.current().request_done(1, 200, 0, 0, &timings(1, 0));
    let f = w.take(&[], false).unwrap_or_else(|| panic!("flush"));
    // Generation 2 puts r1 first; a flush of generation 1 arriving late still lands on r1.
    let l2 = Arc::new(Layout {
        generation: 2,
        routes: vec![RouteName {
            name: "r1".into(),
            service: "s0".into(),
        }],
        targets: vec![],
    });
    agg.set_layout(l2.clone());
    agg.reload_outcome(true);
    agg.reload_outcome(false);
    agg.apply(f);
    let w2 = WorkerMetrics::new(0, l2, MetricsSink::test().0);
    w2.current().request_done(0, 200, 0, 0, &timings(1, 0));
    agg.apply(w2.take(&[], false).unwrap_or_else(|| panic!("flush")));
    let s = render(&agg);
    assert!(
        s.contains("{route=\"r1\",service=\"s0\",code=\"200\"} 2\n"),
        "{s}"
    );
    assert!(s.contains("ringgate_config_generation 2\n"));
    assert!(s.contains("ringgate_config_reloads_total{result=\"success\"} 1\n"));
    assert!(s.contains("ringgate_config_reloads_total{result=\"failure\"} 1\n"));
    // The last one failed: 0 until one succeeds.
    assert!(
        s.contains("ringgate_config_last_reload_successful 0\n"),
        "{s}"
    );
    agg.reload_outcome(true);
    assert!(render(&agg).contains("ringgate_config_last_reload_successful 1\n"));
    assert!(s.contains(concat!(
        "ringgate_build_info{version=\"",
        env!("CARGO_PKG_VERSION"),
        "\"} 1\n"
    )));
    assert!(s.contains("process_start_time_seconds 1"), "{s}");
    let status = agg.status_json(Instant::now());
    assert!(
        status.starts_with("{\"generation\":2,\"loaded_at\":\""),
        "{status}"
    );
    assert!(status.contains("\"routes\":[{\"name\":\"r1\",\"service\":\"s0\"}]"));
}

/// A reload that moves a route to another service (and back): its `route="…"` histograms and
/// bandwidth stay one series each (they were rendered twice, a duplicate series Prometheus rejects),
/// and its request counter under the first service continues instead of restarting at 0 beside the
/// old one.
#[test]
fn route_moved_between_services_keeps_one_series_per_label_set() {
    let layout = |generation: u64, service: &str| {
        Arc::new(Layout {
            generation,
            routes: vec![RouteName {
                name: "r".into(),
                service: service.into(),
            }],
            targets: vec![],
        })
    };
    let mut agg = Aggregate::new(Duration::from_secs(1));
    for (generation, service) in [(1, "s0"), (2, "s1"), (3, "s0")] {
        let l = layout(generation, service);
        agg.set_layout(l.clone());
        let w = WorkerMetrics::new(0, l, MetricsSink::test().0);
        w.current().request_done(0, 200, 10, 100, &timings(3, 1));
        agg.apply(w.take(&[], false).unwrap_or_else(|| panic!("flush")));
        render(&agg);
    }
    let s = render(&agg);
    assert!(
        s.contains("ringgate_http_requests_total{route=\"r\",service=\"s0\",code=\"200\"} 2\n"),
        "{s}"
    );
    assert!(s.contains("ringgate_http_requests_total{route=\"r\",service=\"s1\",code=\"200\"} 1\n"));
    assert!(s.contains("ringgate_request_duration_seconds_count{route=\"r\"} 3\n"));
    assert!(s.contains("ringgate_bandwidth_bytes_total{direction=\"ingress\",route=\"r\"} 30\n"));
    let summary = agg.histogram_summary();
    assert_eq!(
        summary.lines().filter(|l| l.starts_with("r ")).count(),
        2,
        "{summary}"
    );
}

#[test]
fn extension_families() {
    let mut agg = Aggregate::new(Duration::from_secs(1));
    agg.set_families(
        "limiter".into(),
        vec![
            Family::new(
                "ringgate_ratelimit_admitted_total",
                "Admitted.",
                FamilyKind::Counter,
            )
            .sample(&[("limit", "per-ip")], 7.0),
            // Built-in names cannot be shadowed.
            Family::new("ringgate_workers", "x", FamilyKind::Gauge).sample(&[], 1.0),
        ],
    );
    agg.add_collector(Box::new(|out: &mut Vec<Family>| {
        out.push(
            Family::new(
                "ringgate_ratelimit_overshoot_total",
                "Over-admission.",
                FamilyKind::Counter,
            )
            .sample(&[("limit", "global")], 0.5),
        );
        // Duplicate of a pushed family: skipped.
        out.push(Family::new(
            "ringgate_ratelimit_admitted_total",
            "dup",
            FamilyKind::Counter,
        ));
    }));
    let s = render(&agg);
    assert!(s.contains("ringgate_ratelimit_admitted_total{limit=\"per-ip\"} 7\n"));
    assert!(s.contains("ringgate_ratelimit_overshoot_total{limit=\"global\"} 0.5\n"));
}

#[test]
fn status_lists_pools() {
    let layout = Arc::new(Layout {
        generation: 3,
        routes: vec![],
        targets: vec![
            TargetName::at("a", "1:1"),
            TargetName::at("a", "2:2"),
            TargetName::at("b", "3:3"),
        ],
    });
    let mut agg = Aggregate::new(Duration::from_secs(1));
    agg.set_layout(layout.clone());
    let w = WorkerMetrics::new(0, layout, MetricsSink::test().0);
    w.current().upstream_acquired(2);
    w.set_skipped(vec![false, true, false]);
    agg.apply(w.take(&[1, 2, 3], false).unwrap_or_else(|| panic!("flush")));
    let s = agg.status_json(Instant::now());
    assert!(
        s.contains(
            "\"upstreams\":[{\"name\":\"a\",\"targets\":[{\"target\":\"1:1\",\"address\":\"1:1\",\"idle\":1,\"active\":0,\"healthy\":true,\"unhealthy_workers\":0},\
             {\"target\":\"2:2\",\"address\":\"2:2\",\"idle\":2,\"active\":0,\"healthy\":false,\"unhealthy_workers\":1}]},\
             {\"name\":\"b\",\"targets\":[{\"target\":\"3:3\",\"address\":\"3:3\",\"idle\":3,\"active\":1,\"healthy\":true,\"unhealthy_workers\":0}]}]}"
        ),
        "{s}"
    );
    assert!(s.contains("\"workers\":[{\"index\":0,\"serving\":true,"));
}

#[test]
fn target_health_is_healthy_unless_every_worker_skips_it() {
    let layout = ab_layout(1, false);
    let mut agg = Aggregate::new(Duration::from_secs(1));
    agg.set_layout(layout.clone());
    let w0 = WorkerMetrics::new(0, layout.clone(), MetricsSink::test().0);
    let w1 = WorkerMetrics::new(1, layout, MetricsSink::test().0);
    w0.set_skipped(vec![true, true]);
    w1.set_skipped(vec![false, true]);
    w0.current().upstream_ejected(0);
    w0.current().upstream_ejected(1);
    w1.current().upstream_ejected(1);
    agg.apply(w0.take(&[], false).unwrap_or_else(|| panic!("flush")));
    agg.apply(w1.take(&[], false).unwrap_or_else(|| panic!("flush")));
    let mut m = String::new();
    agg.render_metrics(&mut m);
    for line in [
        "ringgate_upstream_target_healthy{upstream=\"ua\",target=\"ta\",address=\"ta\"} 1",
        "ringgate_upstream_target_healthy{upstream=\"ub\",target=\"tb\",address=\"tb\"} 0",
        "ringgate_upstream_target_unhealthy_workers{upstream=\"ua\",target=\"ta\",address=\"ta\"} 1",
        "ringgate_upstream_target_unhealthy_workers{upstream=\"ub\",target=\"tb\",address=\"tb\"} 2",
        "ringgate_upstream_ejections_total{upstream=\"ua\",target=\"ta\",address=\"ta\"} 1",
        "ringgate_upstream_ejections_total{upstream=\"ub\",target=\"tb\",address=\"tb\"} 2",
    ] {
        assert!(m.contains(line), "{line} missing:\n{m}");
    }
}

/// More old generations in use than maps are kept (a WebSocket held across each of many reloads):
/// the serving generation's map is never the one dropped, so its targets' health stays on
/// `/metrics` and `/status`. Before, the oldest map went, whichever it was, and with eight old
/// generations still flushing `ringgate_upstream_target_healthy` vanished (found by a review).
#[test]
fn many_old_generations_never_push_out_the_serving_one() {
    let current = ab_layout(100, false);
    let mut agg = Aggregate::new(Duration::from_secs(1));
    agg.set_layout(current.clone());
    let old: Vec<Arc<Layout>> = (1..=MAX_LAYOUT_MAPS as u64 + 3)
        .map(|g| ab_layout(g, g % 2 == 0))
        .collect();
    for _ in 0..2 {
        for l in &old {
            agg.map_index(l);
        }
    }
    let w = WorkerMetrics::new(0, current, MetricsSink::test().0);
    w.set_skipped(vec![false, true]);
    agg.apply(w.take(&[], false).unwrap_or_else(|| panic!("flush")));
    assert!(agg.maps.len() <= MAX_LAYOUT_MAPS);
    let m = render(&agg);
    for line in [
        "ringgate_upstream_target_healthy{upstream=\"ua\",target=\"ta\",address=\"ta\"} 1",
        "ringgate_upstream_target_healthy{upstream=\"ub\",target=\"tb\",address=\"tb\"} 0",
    ] {
        assert!(m.contains(line), "{line} missing:\n{m}");
    }
    let s = agg.status_json(Instant::now());
    assert!(s.contains("\"target\":\"tb\",\"address\":\"tb\""), "{s}");
}

/// Two routes `a`, `b` on services `sa`, `sb`, and their targets `ta`, `tb`, in that order or
/// (`swapped`) the other way round.
fn ab_layout(generation: u64, swapped: bool) -> Arc<Layout> {
    let mut names = ["a", "b"];
    if swapped {
        names.reverse();
    }
    Arc::new(Layout {
        generation,
        routes: names
            .iter()
            .map(|n| RouteName {
                name: (*n).into(),
                service: format!("s{n}"),
            })
            .collect(),
        targets: names
            .iter()
            .map(|n| TargetName::at(&format!("u{n}"), &format!("t{n}")))
            .collect(),
    })
}

#[test]
fn retired_generation_counts_by_its_own_names_and_its_gauges_drop_out() {
    let (l1, l2) = (ab_layout(1, false), ab_layout(2, true));
    let mut agg = Aggregate::new(Duration::from_secs(1));
    agg.set_layout(l1.clone());
    let w = WorkerMetrics::new(0, l1, MetricsSink::test().0);
    // A request on route a (index 0 in generation 1) holds a connection to ta.
    let old = w.current();
    old.upstream_acquired(0);
    agg.set_layout(l2.clone());
    w.reconfigure(l2);
    // A new request on route b (index 0 in generation 2) holds one to tb.
    let new = w.current();
    new.upstream_acquired(0);
    agg.apply(w.take(&[0, 0], false).unwrap_or_else(|| panic!("flush")));
    let active = |s: &str, t: &str, n: u64| {
        s.contains(&format!(
            "ringgate_upstream_connections{{upstream=\"u{t}\",target=\"t{t}\",address=\"t{t}\",state=\"active\"}} {n}\n"
        ))
    };
    let s = render(&agg);
    assert!(active(&s, "a", 1) && active(&s, "b", 1), "{s}");

    // The old request ends: counted on a, its connection released on ta.
    old.upstream_released(0);
    old.request_done(0, 200, 1, 1, &timings(1, 0));
    drop(old);
    agg.apply(w.take(&[0, 0], false).unwrap_or_else(|| panic!("flush")));
    let s = render(&agg);
    assert!(
        s.contains("{route=\"a\",service=\"sa\",code=\"200\"} 1\n"),
        "{s}"
    );
    assert!(!s.contains("route=\"b\""), "{s}");
    assert!(active(&s, "a", 0) && active(&s, "b", 1), "{s}");
    check_exposition(&s).unwrap_or_else(|e| panic!("{e}\n{s}"));

    // Gone from the worker: still 0 on the next flush, and counters keep their totals.
    new.request_done(0, 200, 1, 1, &timings(1, 0));
    new.upstream_released(0);
    agg.apply(w.take(&[0, 0], false).unwrap_or_else(|| panic!("flush")));
    let s = render(&agg);
    assert!(active(&s, "a", 0) && active(&s, "b", 0), "{s}");
    assert!(
        s.contains("{route=\"a\",service=\"sa\",code=\"200\"} 1\n"),
        "{s}"
    );
    assert!(
        s.contains("{route=\"b\",service=\"sb\",code=\"200\"} 1\n"),
        "{s}"
    );
}

#[test]
fn validator_rejects_bad_text() {
    assert!(check_exposition("x 1\n").is_err(), "no TYPE");
    assert!(check_exposition("# HELP x h\n# TYPE x counter\nx 1\nx 2\n").is_err());
    assert!(check_exposition(
        "# HELP h h\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n"
    )
    .is_err());
    assert!(check_exposition("# HELP x h\n# TYPE x counter\nx{a=\"\\q\"} 1\n").is_err());
    assert!(check_exposition("# HELP x h\n# TYPE x counter\nx{a=\"\\\"\"} 1\n").is_ok());
}

/// The scrape budget: 1,000 routes x 4 codes from 4 workers renders in a few milliseconds (in release;
/// debug builds get a generous bound, the bench in bench/metrics.rs measures it properly).
#[test]
fn render_1k_routes_is_fast() {
    let layout = Layout::synthetic(1000, 50, 16);
    let mut agg = Aggregate::new(Duration::from_secs(1));
    agg.set_layout(layout.clone());
    agg.set_workers(4);
    for w in 0..4 {
        let m = WorkerMetrics::new(w, layout.clone(), MetricsSink::test().0);
        for r in 0..1000 {
            for code in [200u16, 201, 404, 503] {
                m.current().request_done(r, code, 100, 1000, &timings(3, 1));
            }
        }
        agg.apply(m.take(&[3; 16], false).unwrap_or_else(|| panic!("flush")));
    }
    let mut s = String::new();
    agg.render_metrics(&mut s); // warm-up
    let t0 = Instant::now();
    let runs = 5;
    for _ in 0..runs {
        s.clear();
        agg.render_metrics(&mut s);
    }
    let per = t0.elapsed() / runs;
    if let Err(e) = check_exposition(&s) {
        panic!("{e}");
    }
    assert!(s.contains("{route=\"r999\",service=\"s49\",code=\"503\"} 4\n"));
    let budget = if cfg!(debug_assertions) {
        Duration::from_millis(250)
    } else {
        Duration::from_millis(10)
    };
    assert!(per < budget, "render took {per:?} for {} bytes", s.len());
}

#[test]
fn addresses_that_come_and_go_do_not_pile_up() {
    // One name, a new address every generation (pods replaced), a worker on each generation with
    // a connection error to its address.
    let layout = |g: u64| {
        Arc::new(Layout {
            generation: g,
            routes: vec![],
            targets: vec![TargetName {
                upstream: "u".into(),
                target: "api.test:80".into(),
                address: format!("10.0.0.{g}:80"),
            }],
        })
    };
    let mut agg = Aggregate::new(Duration::from_secs(1));
    let w = WorkerMetrics::new(0, layout(1), MetricsSink::test().0);
    for g in 1..=40 {
        let l = layout(g);
        agg.set_layout(l.clone());
        w.reconfigure(l);
        w.current().upstream_connect_error(0);
        agg.apply(w.take(&[0], false).unwrap_or_else(|| panic!("flush")));
        let s = render(&agg);
        check_exposition(&s).unwrap_or_else(|e| panic!("{e}\n{s}"));
        // Only the serving address is listed, with its own count.
        let errors: Vec<&str> = s
            .lines()
            .filter(|l| l.starts_with("ringgate_upstream_connect_errors_total{"))
            .collect();
        assert_eq!(
            errors,
            [format!(
                "ringgate_upstream_connect_errors_total{{upstream=\"u\",target=\"api.test:80\",address=\"10.0.0.{g}:80\"}} 1"
            )],
            "generation {g}"
        );
    }
    // Slots stay within what the kept layouts map (plus the one being added).
    assert!(
        agg.targets.len() <= MAX_LAYOUT_MAPS + 1,
        "{}",
        agg.targets.len()
    );
    assert_eq!(agg.target_index.len(), agg.targets.len());
}
