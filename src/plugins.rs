//! Plugins: a closed enum, one variant per plugin, and per-route chains compiled once at load.
//!
//! Chain compilation (`compile_chains`), per route:
//! 1. Scope resolution, one instance per plugin name (Kong's rule): the most specific enabled
//!    instance wins — route > service (the route's) > global. Consumer scope ranks above route; it
//!    needs auth to run first, so it is resolved per request (`Walk`).
//! 2. Order: by plugin priority, highest first (Kong's numbers: auth plugins ~1000-1450 run before
//!    rate limiting at 910), ties by name. Disabled plugins are skipped (a disabled route-level
//!    instance does not hide the global one, as in Kong).
//!
//! Header plugins (`correlation`, `cors`, `transform`) and `termination` keep their compiled
//! state in `Chains::rt`, built from the same file-order numbering as their `Plugin` indices.
//!
//! Per request (`proxy::chain`): a loop over `&[Plugin]` with a `match` per variant; no allocation,
//! no dynamic dispatch. The chain for route `r` is `chains.routes[r]`; once auth identified consumer
//! `c`, `chains.consumers[c]` is merged in (`Walk`).

pub mod compression;
pub mod correlation;
pub mod cors;
pub mod form_body;
pub mod json_body;
pub mod query_transform;
pub mod termination;
pub mod transform;

use crate::config::model::{Config, PluginConfig, PluginScope};
use crate::limit;

/// One compiled plugin step. `Copy`; indices point into per-generation state (`LimiterSet` for
/// rate limiting, `AuthSet`'s per-kind vectors for auth plugins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Plugin {
    /// Instance index into the worker's `LimiterSet` (see `limit::instances`).
    RateLimiting {
        instance: usize,
    },
    KeyAuth(usize),
    BasicAuth(usize),
    Jwt(usize),
    ForwardAuth(usize),
    Acl(usize),
    /// `at`: index into the auth set's ip rules. `early`: no consumer-scoped ip-restriction
    /// exists, so it runs before auth (see `priority`).
    IpRestriction {
        at: usize,
        early: bool,
    },
    /// Index into `Runtime::correlation`.
    CorrelationId(usize),
    /// Index into `Runtime::cors`.
    Cors(usize),
    /// Index into `Runtime::request`.
    RequestTransformer(usize),
    /// Index into `Runtime::response`.
    ResponseTransformer(usize),
    /// Index into `Runtime::termination`.
    RequestTermination(usize),
    /// Index into `Runtime::compression`.
    Compression(usize),
}

/// `Plugin::name` and `Plugin::answered_by` from one list, so a new plugin is named once.
macro_rules! plugin_names {
    ($($pat:pat => $name:literal),* $(,)?) => {
        pub fn name(self) -> &'static str {
            match self {
                $($pat => $name),*
            }
        }

        /// The access log's `detail` when this plugin answered the request itself.
        pub fn answered_by(self) -> &'static str {
            match self {
                $($pat => concat!("answered by ", $name)),*
            }
        }
    };
}

impl Plugin {
    /// Kong-style priority: higher runs first. Auth plugins (>= 1000) identify the consumer
    /// before anything that depends on it (acl 950, rate-limiting 910; ip-restriction 990 only
    /// when some consumer has one, else 1900: see the match arm).
    /// correlation-id (100001) runs first, so even answers from later plugins carry the id; cors
    /// (2000) runs before auth, so preflights are answered without credentials and 401/403/429
    /// answers carry CORS headers; the transformers (801, 800) run last, only for requests no plugin
    /// answered, and edit the client's and the upstream's own headers when the heads are written
    /// (not lines plugins add: see `transform`). request-termination (2) runs last, as in Kong:
    /// whoever it answers has been identified, checked and counted.
    pub fn priority(self) -> u32 {
        match self {
            Plugin::RequestTermination(_) => 2,
            // Only notes whether the client takes gzip; the work is on the response. Kong has no
            // such plugin: just above request-termination, after everything that may answer.
            Plugin::Compression(_) => 3,
            Plugin::CorrelationId(_) => 100_001,
            Plugin::Cors(_) => 2000,
            Plugin::RequestTransformer(_) => 801,
            Plugin::ResponseTransformer(_) => 800,
            Plugin::Jwt(_) => 1450,
            Plugin::KeyAuth(_) => 1250,
            Plugin::BasicAuth(_) => 1100,
            Plugin::ForwardAuth(_) => 1000,
            // Before auth when no consumer has an ip-restriction of its own: a denied address must
            // not learn which credentials are valid (401 for a wrong key, 403 for a right one),
            // nor spend bcrypt or forward-auth work. A consumer's instance replaces the route's
            // once auth knows the consumer, so with one of those anywhere they all run after auth
            // (Kong's 990).
            Plugin::IpRestriction { early: true, .. } => 1900,
            Plugin::IpRestriction { early: false, .. } => 990,
            Plugin::Acl(_) => 950,
            Plugin::RateLimiting { .. } => 910,
        }
    }

    plugin_names! {
        Plugin::RateLimiting { .. } => "rate-limiting",
        Plugin::KeyAuth(_) => "key-auth",
        Plugin::BasicAuth(_) => "basic-auth",
        Plugin::Jwt(_) => "jwt",
        Plugin::ForwardAuth(_) => "forward-auth",
        Plugin::Acl(_) => "acl",
        Plugin::IpRestriction { .. } => "ip-restriction",
        Plugin::CorrelationId(_) => "correlation-id",
        Plugin::Cors(_) => "cors",
        Plugin::RequestTransformer(_) => "request-transformer",
        Plugin::ResponseTransformer(_) => "response-transformer",
        Plugin::RequestTermination(_) => "request-termination",
        Plugin::Compression(_) => "compression",
    }
}

/// The step of each `cfg.plugins` entry (`None` for disabled ones). Instances are numbered per kind
/// in file order over enabled plugins, the order `LimiterSet` and `AuthSet` build theirs in.
pub fn steps(cfg: &Config) -> Vec<Option<Plugin>> {
    let mut step: Vec<Option<Plugin>> = vec![None; cfg.plugins.len()];
    for (instance, inst) in limit::instances(cfg).iter().enumerate() {
        if let Some(s) = step.get_mut(inst.plugin) {
            *s = Some(Plugin::RateLimiting { instance });
        }
    }
    let early_ip = !cfg.plugins.iter().any(|p| {
        p.enabled
            && matches!(p.scope, PluginScope::Consumer(_))
            && matches!(p.config, PluginConfig::IpRestriction(_))
    });
    let mut n = [0usize; 12];
    let mut next = |k: usize| {
        let i = n[k];
        n[k] += 1;
        i
    };
    for (i, p) in cfg.plugins.iter().enumerate() {
        if !p.enabled {
            continue;
        }
        let made = match &p.config {
            PluginConfig::RateLimiting(_) => continue,
            PluginConfig::KeyAuth(_) => Plugin::KeyAuth(next(0)),
            PluginConfig::BasicAuth(_) => Plugin::BasicAuth(next(1)),
            PluginConfig::Jwt(_) => Plugin::Jwt(next(2)),
            PluginConfig::ForwardAuth(_) => Plugin::ForwardAuth(next(3)),
            PluginConfig::Acl(_) => Plugin::Acl(next(4)),
            PluginConfig::IpRestriction(_) => Plugin::IpRestriction {
                at: next(5),
                early: early_ip,
            },
            PluginConfig::CorrelationId(_) => Plugin::CorrelationId(next(6)),
            PluginConfig::Cors(_) => Plugin::Cors(next(7)),
            PluginConfig::RequestTransformer(_) => Plugin::RequestTransformer(next(8)),
            PluginConfig::ResponseTransformer(_) => Plugin::ResponseTransformer(next(9)),
            PluginConfig::RequestTermination(_) => Plugin::RequestTermination(next(10)),
            PluginConfig::Compression(_) => Plugin::Compression(next(11)),
        };
        if let Some(s) = step.get_mut(i) {
            *s = Some(made);
        }
    }
    step
}

/// Per-route chains, plus the plugins attached to each consumer.
#[derive(Debug, Default)]
pub struct Chains {
    /// Index = route, in execution order.
    pub routes: Vec<Box<[Plugin]>>,
    /// Index = consumer, in execution order; merged into the route's chain once auth identified
    /// that consumer (see `Walk`).
    pub consumers: Vec<Box<[Plugin]>>,
    /// Compiled state of the header plugins.
    pub rt: Runtime,
}

/// Per-instance state of the header plugins and request-termination, indexed like their `Plugin`
/// variants (enabled instances of each kind in file order, as `steps` numbers them).
#[derive(Debug, Default)]
pub struct Runtime {
    pub correlation: Vec<correlation::CorrelationRt>,
    pub cors: Vec<cors::CorsRt>,
    pub request: Vec<transform::RequestTransform>,
    pub response: Vec<transform::HeaderTransform>,
    /// Each response-transformer's JSON body edits, if it has any (same index as `response`).
    pub response_json: Vec<Option<json_body::JsonTransform>>,
    pub termination: Vec<termination::TerminationRt>,
    pub compression: Vec<crate::config::model::CompressionDef>,
}

impl Runtime {
    fn build(cfg: &Config) -> Runtime {
        let mut rt = Runtime::default();
        for p in cfg.plugins.iter().filter(|p| p.enabled) {
            match &p.config {
                PluginConfig::CorrelationId(d) => {
                    rt.correlation.push(correlation::CorrelationRt::new(d))
                }
                PluginConfig::Cors(d) => rt.cors.push(cors::CorsRt::new(d)),
                PluginConfig::RequestTransformer(d) => {
                    rt.request.push(transform::RequestTransform::new(d))
                }
                PluginConfig::ResponseTransformer(d) => {
                    rt.response
                        .push(transform::HeaderTransform::new(&d.headers));
                    rt.response_json.push(json_body::JsonTransform::new(d));
                }
                PluginConfig::RequestTermination(d) => {
                    rt.termination.push(termination::TerminationRt::new(d))
                }
                PluginConfig::Compression(d) => rt.compression.push(d.clone()),
                _ => {}
            }
        }
        rt
    }
}

impl std::ops::Deref for Chains {
    type Target = [Box<[Plugin]>];
    fn deref(&self) -> &Self::Target {
        &self.routes
    }
}

fn order(chain: &mut [Plugin]) {
    chain.sort_by(|a, b| b.priority().cmp(&a.priority()).then(a.name().cmp(b.name())));
}

/// Per-route chains (index = route), in execution order, and per-consumer plugin lists.
pub fn compile_chains(cfg: &Config) -> Chains {
    let step = steps(cfg);
    let routes = cfg
        .routes
        .iter()
        .enumerate()
        .map(|(r, route)| {
            // (name, specificity, step); keep the most specific per name.
            let mut picked: Vec<(&str, u8, Plugin)> = Vec::new();
            for (i, p) in cfg.plugins.iter().enumerate() {
                let Some(Some(s)) = step.get(i).copied() else {
                    continue;
                };
                let rank = match p.scope {
                    PluginScope::Route(x) if x == r => 3,
                    PluginScope::Service(x) if x == route.service => 2,
                    PluginScope::Global => 1,
                    _ => continue,
                };
                match picked.iter_mut().find(|(n, _, _)| *n == p.name) {
                    Some(e) if e.1 < rank => *e = (p.name.as_str(), rank, s),
                    Some(_) => {}
                    None => picked.push((p.name.as_str(), rank, s)),
                }
            }
            let mut chain: Vec<Plugin> = picked.into_iter().map(|(_, _, s)| s).collect();
            order(&mut chain);
            chain.into_boxed_slice()
        })
        .collect();
    let consumers = (0..cfg.consumers.len())
        .map(|c| {
            let mut chain: Vec<Plugin> = cfg
                .plugins
                .iter()
                .zip(&step)
                .filter(|(p, _)| p.scope == PluginScope::Consumer(c))
                .filter_map(|(_, s)| *s)
                .collect();
            order(&mut chain);
            chain.into_boxed_slice()
        })
        .collect();
    Chains {
        routes,
        consumers,
        rt: Runtime::build(cfg),
    }
}

/// Walks a route's chain merged with the identified consumer's plugins, by priority. A consumer's
/// instance of a plugin replaces the route's instance of the same name (consumer scope is the most
/// specific). Consumer-scoped plugins all rank below the auth plugins, so by the time one is due
/// the consumer is known. No allocation.
#[derive(Debug, Default, Clone, Copy)]
pub struct Walk {
    route_at: usize,
    consumer_at: usize,
}

impl Walk {
    pub fn next(
        &mut self,
        chains: &Chains,
        route: usize,
        consumer: Option<usize>,
    ) -> Option<Plugin> {
        let rc: &[Plugin] = chains.routes.get(route).map_or(&[], |c| &c[..]);
        let cc: &[Plugin] = consumer
            .and_then(|c| chains.consumers.get(c))
            .map_or(&[], |c| &c[..]);
        loop {
            let r = rc.get(self.route_at).copied();
            let c = cc.get(self.consumer_at).copied();
            let take_consumer = match (r, c) {
                (None, None) => return None,
                (None, Some(_)) => true,
                (Some(_), None) => false,
                (Some(r), Some(c)) => {
                    (c.priority(), std::cmp::Reverse(c.name()))
                        >= (r.priority(), std::cmp::Reverse(r.name()))
                }
            };
            if take_consumer {
                self.consumer_at += 1;
                return c;
            }
            self.route_at += 1;
            let Some(r) = r else { continue };
            if cc.iter().any(|x| x.name() == r.name()) {
                continue;
            }
            return Some(r);
        }
    }
}

/// What the request path does after a plugin step ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow<'a> {
    Continue,
    /// Answer now with `status` and this JSON body (headers were appended to `resp_headers`).
    Respond {
        status: u16,
        body: &'a [u8],
    },
    /// Answer now with `status` and this body of type `content_type`.
    RespondAs {
        status: u16,
        content_type: &'a [u8],
        body: &'a [u8],
    },
}

impl<'a> Flow<'a> {
    /// The answer, if any: status, content type, body.
    pub fn answer(self) -> Option<(u16, &'a [u8], &'a [u8])> {
        match self {
            Flow::Continue => None,
            Flow::Respond { status, body } => Some((status, b"application/json", body)),
            Flow::RespondAs {
                status,
                content_type,
                body,
            } => Some((status, content_type, body)),
        }
    }
}

/// `{"message":"…"}` and a newline, with `message` JSON-escaped: the body of the gateway's and
/// plugins' own answers.
pub fn json_message(message: &str) -> Box<[u8]> {
    let mut out = String::from("{\"message\":\"");
    for c in message.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push_str("\"}\n");
    out.into_bytes().into_boxed_slice()
}

/// Writes a complete plugin-generated response: status line, `extra_headers` (from `on_request`),
/// content type and length, optional `Connection: close`, then `body`.
pub fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    extra_headers: &[u8],
    content_type: &[u8],
    body: &[u8],
    close: bool,
) {
    use std::io::Write as _;
    let _ = write!(out, "HTTP/1.1 {status} {}\r\n", reason(status));
    // A 204 has no content (RFC 9110 §8.6 forbids Content-Length on it), nor do a 205 and a 304:
    // content headers would describe a representation they do not carry. A 205 still says
    // `Content-Length: 0` (RFC 9110 §15.3.6), or the client would read its body until the close.
    let bodiless = matches!(status, 204 | 205 | 304);
    if status == 205 {
        out.extend_from_slice(b"Content-Length: 0\r\n");
    } else if !bodiless {
        out.extend_from_slice(b"Content-Type: ");
        out.extend_from_slice(content_type);
        let _ = write!(out, "\r\nContent-Length: {}\r\n", body.len());
    }
    out.extend_from_slice(extra_headers);
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !bodiless {
        out.extend_from_slice(body);
    }
}

/// The reason phrase of `status` (RFC 9110 §15); clients ignore it, people read it.
pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ if status < 300 => "Success",
        _ if status < 400 => "Redirection",
        _ if status < 500 => "Client Error",
        _ => "Server Error",
    }
}

/// Tests: `("name", "value")` pairs, as an `EditsDef` holds them.
#[cfg(test)]
pub(crate) fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodiless_statuses_get_no_content() {
        let head = |status: u16| {
            let mut out = Vec::new();
            write_response(&mut out, status, b"", b"text/plain", b"body", false);
            String::from_utf8(out).expect("utf-8")
        };
        assert_eq!(head(204), "HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!(head(304), "HTTP/1.1 304 Not Modified\r\n\r\n");
        assert_eq!(
            head(205),
            "HTTP/1.1 205 Reset Content\r\nContent-Length: 0\r\n\r\n"
        );
        assert_eq!(
            head(410),
            "HTTP/1.1 410 Gone\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\nbody"
        );
    }

    #[test]
    fn json_messages_are_escaped() {
        assert_eq!(
            &*json_message("a\"b\\c\n"),
            b"{\"message\":\"a\\\"b\\\\c\\u000a\"}\n"
        );
        assert_eq!(
            &*json_message("héllo"),
            "{\"message\":\"héllo\"}\n".as_bytes()
        );
    }
}
