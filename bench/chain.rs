//! The plugin chain's steps, per request, on a compiled config as the workers hold it:
//! - `correlation-id` generating a UUID (and keeping one the client sent);
//! - `cors` on a simple cross-origin request and on a preflight it answers itself;
//! - `key-auth` finding the consumer by its key (a SHA-256 and a hash lookup) and hiding the key;
//! - `acl` on the identified consumer;
//! - the request head written upstream with a request-transformer's edits, against the same head
//!   written plain, and its query-string edits of the upstream target;
//! - all of them in a row, as `proxy::chain` runs them for one request.
//!
//! The rate limiter's step has its own benchmark (`limiter`). Buffers are cleared and reused across
//! iterations, as on a keep-alive connection (the proxy keeps them in its per-connection scratch),
//! so the numbers are the steady cost per request.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, Criterion};
use ringgate::auth::set::AuthSet;
use ringgate::auth::steps::{self, Edits, Identity, Req};
use ringgate::config::load_str;
use ringgate::http::parse::{parse_request, Parsed, RequestHead};
use ringgate::http::{BodyKind, Limits};
use ringgate::plugins::{self, compile_chains, Flow};
use ringgate::proxy::head::{write_request_head, Forwarded};

const CONFIG: &str = r#"
[[services]]
name = "api"
url = "http://127.0.0.1:9001"

[[routes]]
name = "api"
service = "api"
paths = ["/api"]

[[consumers]]
username = "bench"
groups = ["users"]
keyauth_credentials = [{ key = "bench-key-0123456789" }]

[[plugins]]
name = "correlation-id"
config = { header_name = "X-Request-ID", generator = "uuid", echo_downstream = true }

[[plugins]]
name = "cors"
config = { origins = ["https://app.example.com", "https://*.preview.example.com"], methods = ["GET", "POST"], headers = ["Content-Type", "Authorization"], credentials = true, max_age = 600 }

[[plugins]]
name = "key-auth"
config = { hide_credentials = true }

[[plugins]]
name = "acl"
config = { allow = ["users"] }

[[plugins]]
name = "request-transformer"
[plugins.config]
remove = { headers = ["Cookie"], querystring = ["debug"] }
add = { headers = ["X-Api-Version:2"], querystring = ["lang:en"] }
append = { headers = ["X-Gateway:ringgate"] }
"#;

/// A browser's cross-origin API call with a key.
const REQUEST: &[u8] = b"GET /api/items/42?x=1 HTTP/1.1\r\n\
Host: api.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0\r\n\
Accept: application/json\r\n\
Origin: https://app.example.com\r\n\
Cookie: session=3f2a9c1e7b6d4a58\r\n\
apikey: bench-key-0123456789\r\n\
\r\n";

const WITH_ID: &[u8] = b"GET /api/items HTTP/1.1\r\nHost: api.example.com\r\n\
X-Request-ID: 7d3c9a4e-2f1b-4c8d-9e6a-5b0f1d2c3e4a\r\n\r\n";

const PREFLIGHT: &[u8] = b"OPTIONS /api/items HTTP/1.1\r\n\
Host: api.example.com\r\n\
Origin: https://app.example.com\r\n\
Access-Control-Request-Method: POST\r\n\
Access-Control-Request-Headers: content-type, authorization\r\n\
\r\n";

const LIMITS: Limits = Limits {
    max_header_bytes: 8192,
    max_uri_bytes: 4096,
    max_headers: 100,
};

fn parsed(bytes: &[u8]) -> RequestHead {
    let mut head = RequestHead::default();
    match parse_request(bytes, &LIMITS, &mut head) {
        Ok(Parsed::Complete) => head,
        other => panic!("bench request does not parse: {other:?}"),
    }
}

fn bench(c: &mut Criterion) {
    let cfg = load_str(CONFIG, "chain.toml").expect("bench config");
    let chains = compile_chains(&cfg);
    let auth = AuthSet::build(&cfg);
    let rt = &chains.rt;
    let (corr, cors, tf) = (&rt.correlation[0], &rt.cors[0], &rt.request[0]);
    let (key_auth, acl) = (&auth.key_auth[0], &auth.acl[0]);
    let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));
    let req_head = parsed(REQUEST);
    let id_head = parsed(WITH_ID);
    let pre_head = parsed(PREFLIGHT);

    let mut edits = Edits::default();
    let mut resp = Vec::with_capacity(1024);
    let mut scratch = Vec::with_capacity(256);
    let mut out = Vec::with_capacity(2048);

    // A request without an id (one is generated), and one whose client id is kept.
    for (name, head, buf) in [
        ("correlation_id_generate", &req_head, REQUEST),
        ("correlation_id_keep_clients", &id_head, WITH_ID),
    ] {
        c.bench_function(name, |b| {
            b.iter(|| {
                edits.clear();
                resp.clear();
                plugins::correlation::on_request(corr, head, buf, &mut edits, &mut resp, None);
                black_box(edits.add.len());
            })
        });
    }
    for (name, head, buf) in [
        ("cors_simple_request", &req_head, REQUEST),
        ("cors_preflight_answer", &pre_head, PREFLIGHT),
    ] {
        c.bench_function(name, |b| {
            b.iter(|| {
                resp.clear();
                black_box(plugins::cors::on_request(cors, head, buf, &mut resp));
            })
        });
    }
    let req = Req {
        head: &req_head,
        buf: REQUEST,
        client_ip: ip,
        overridden: false,
    };
    let mut key_auth_step = |edits: &mut Edits, resp: &mut Vec<u8>| {
        let mut id = Identity::default();
        edits.clear();
        resp.clear();
        let flow = steps::key_auth(key_auth, &auth, &req, &mut id, edits, &mut scratch, resp);
        assert!(matches!(flow, Flow::Continue), "the bench key is valid");
        id
    };
    c.bench_function("key_auth_valid_key", |b| {
        b.iter(|| black_box(key_auth_step(&mut edits, &mut resp)))
    });
    let id = key_auth_step(&mut edits, &mut resp);
    c.bench_function("acl_allow", |b| {
        b.iter(|| black_box(matches!(steps::acl(acl, &id), Flow::Continue)))
    });

    let fwd = Forwarded {
        client_ip: ip,
        real_ip: ip,
        listen_port: 8080,
        client_host: b"api.example.com",
        prefix: b"",
        proto: b"http",
        close: false,
    };
    let target = b"/api/items/42?x=1";
    let host = b"127.0.0.1:9001";
    let no_edits = Edits::default();
    for (name, transform) in [
        ("request_head_plain", None),
        ("request_head_transformed", Some(tf)),
    ] {
        c.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                write_request_head(
                    &mut out,
                    REQUEST,
                    &req_head,
                    target,
                    host,
                    &fwd,
                    BodyKind::None,
                    &no_edits,
                    transform,
                );
                black_box(out.len());
            })
        });
    }

    // The upstream target with the query edited (remove `debug`, add `lang`), against the copy the
    // proxy makes without query edits.
    let query = b"x=1&debug=true&page=2";
    let mut target_buf = Vec::with_capacity(256);
    c.bench_function("request_target_query_plain", |b| {
        b.iter(|| {
            target_buf.clear();
            target_buf.extend_from_slice(b"/items/42");
            steps::push_query(&mut target_buf, black_box(query), None);
            black_box(target_buf.len());
        })
    });
    c.bench_function("request_target_query_edited", |b| {
        b.iter(|| {
            target_buf.clear();
            target_buf.extend_from_slice(b"/items/42");
            tf.query.push(&mut target_buf, black_box(query), None);
            black_box(target_buf.len());
        })
    });

    // The whole chain for one request, then its upstream head: what the plugins add per request.
    c.bench_function("chain_all_then_head", |b| {
        b.iter(|| {
            edits.clear();
            resp.clear();
            plugins::correlation::on_request(corr, &req_head, REQUEST, &mut edits, &mut resp, None);
            black_box(plugins::cors::on_request(
                cors, &req_head, REQUEST, &mut resp,
            ));
            let mut id = Identity::default();
            let flow = steps::key_auth(
                key_auth,
                &auth,
                &req,
                &mut id,
                &mut edits,
                &mut scratch,
                &mut resp,
            );
            black_box(matches!(flow, Flow::Continue));
            black_box(matches!(steps::acl(acl, &id), Flow::Continue));
            out.clear();
            write_request_head(
                &mut out,
                REQUEST,
                &req_head,
                target,
                host,
                &fwd,
                BodyKind::None,
                &edits,
                Some(tf),
            );
            black_box(out.len());
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
