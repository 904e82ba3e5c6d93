//! Config of the header plugins: `correlation-id`, `cors`, `request-transformer`,
//! `response-transformer`.
//!
//! Everything a request will carry is checked here, once: header names are RFC 9110 tokens, values
//! have no CR, LF, NUL or other control bytes (a value with CRLF would inject header lines), and
//! names the gateway derives itself (framing, hop-by-hop, Host, X-Forwarded-*, X-Consumer-*) are
//! refused with a message saying why, so no plugin can corrupt framing or spoof identity. Each
//! problem is reported at its exact key (`plugins[2].config.add.headers[1]`).

use super::plugins::is_token;
use super::{in_range, push};
use crate::config::locate::{KeyPath, Problem};
use crate::config::matchers::{origin_is_regex, origin_regex, origin_regex_trap, plain_origin};
use crate::config::model::{CorrelationIdDef, CorsDef, EditsDef, TransformDef};
use crate::config::raw::plugins::{RawCorrelationId, RawCors, RawEdits, RawTransformer};
use crate::proxy::head::{classify, Class};

/// Kong's default: every method a preflight may ask about.
const DEFAULT_METHODS: &[&str] = &[
    "GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS", "TRACE", "CONNECT",
];

/// Add and replace entries are tracked per request in a `u64` bitmask (no allocation).
pub const MAX_TRACKED: usize = 64;

/// Which side of the proxy a header name is used on.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Towards the upstream: only plain end-to-end names (the gateway sets or drops the others).
    Request,
    /// Towards the client: everything but framing and hop-by-hop names.
    Response,
}

/// Why `name` may not be set or edited by a plugin on `side`, if it may not.
fn reserved(name: &str, side: Side) -> Option<&'static str> {
    let why = match classify(name.as_bytes()) {
        Class::Plain => None,
        Class::ContentLength | Class::HopByHop | Class::Upgrade => Some(
            "is a framing or hop-by-hop header: the gateway derives it from what it actually sends",
        ),
        Class::Host => Some("is set by the gateway from the route and service (see preserve_host)"),
        Class::Expect => Some("is handled by the gateway (100-continue)"),
        Class::XForwardedFor | Class::ProxySet => {
            Some("is set by the gateway from the connection, never taken from config or clients")
        }
        Class::AuthSet => Some("is set by auth plugins only (identity headers cannot be spoofed)"),
        Class::UrlOverride => Some(
            "is read as the request's URI by some frameworks (IIS, old Symfony): the gateway drops it from requests",
        ),
    };
    match side {
        Side::Request => why.or_else(|| {
            // The gateway drops names with '_' towards the upstream (CGI smuggling of identity
            // headers), so an edit to one would silently do nothing.
            name.contains('_')
                .then_some("contains '_': such headers are never forwarded upstream")
        }),
        // Towards the client only framing matters; X-Forwarded-* or Host there is harmless.
        Side::Response => why.filter(|_| {
            matches!(
                classify(name.as_bytes()),
                Class::ContentLength | Class::HopByHop | Class::Upgrade
            )
        }),
    }
}

/// A header name usable on `side`; reports at `path` otherwise.
pub fn header_name(
    problems: &mut Vec<Problem>,
    path: KeyPath,
    name: &str,
    side: Side,
) -> Option<String> {
    if !is_token(name) {
        push(
            problems,
            path,
            format!("{name:?} is not a valid header name (letters, digits and !#$%&'*+-.^_`|~)"),
        );
        return None;
    }
    if let Some(why) = reserved(name, side) {
        push(
            problems,
            path,
            format!("{name:?} {why}; it cannot be used here"),
        );
        return None;
    }
    Some(name.to_owned())
}

/// A header value: no control bytes but HTAB (CR/LF/NUL would split or end the head), trimmed of
/// surrounding spaces (`"X-A: 1"` means `1`).
pub(super) fn header_value(
    problems: &mut Vec<Problem>,
    path: KeyPath,
    value: &str,
) -> Option<String> {
    let v = value.trim_matches([' ', '\t']);
    if v.chars().any(|c| c.is_control() && c != '\t') {
        push(
            problems,
            path,
            "header values must not contain control characters (CR, LF, NUL, …)",
        );
        return None;
    }
    Some(v.to_owned())
}

pub fn correlation_id(
    raw: Option<&RawCorrelationId>,
    path: &KeyPath,
    problems: &mut Vec<Problem>,
) -> Option<CorrelationIdDef> {
    let default = RawCorrelationId::default();
    let c = raw.unwrap_or(&default);
    let cp = path.key("config");
    let before = problems.len();
    let header_name = header_name(
        problems,
        cp.key("header_name"),
        c.header_name.as_deref().unwrap_or("X-Request-ID"),
        Side::Request,
    );
    // The id is written to the access log and, with echo_downstream, back to the client: a header
    // that carries credentials would put them in both.
    if let Some(n) = &header_name {
        if [
            "authorization",
            "proxy-authorization",
            "cookie",
            "set-cookie",
        ]
        .iter()
        .any(|c| n.eq_ignore_ascii_case(c))
        {
            push(
                problems,
                cp.key("header_name"),
                format!(
                    "{n:?} carries credentials; the id is logged and may be echoed to the client"
                ),
            );
        }
    }
    // Echoed, the id replaces the upstream's header of that name on every response: a name that
    // means something there (the body's type, a redirect, caching, auth challenges, CORS, rate
    // limits) would be overwritten with a UUID, or with whatever the client sent.
    if let (Some(n), Some(true)) = (&header_name, c.echo_downstream) {
        let lower = n.to_ascii_lowercase();
        let meaningful = ["content-", "access-control-", "ratelimit", "x-ratelimit-"]
            .iter()
            .any(|p| lower.starts_with(p))
            || [
                "location",
                "vary",
                "www-authenticate",
                "proxy-authenticate",
                "retry-after",
                "cache-control",
                "etag",
                "last-modified",
                "expires",
                "age",
                "date",
                "server",
                "link",
                "strict-transport-security",
            ]
            .contains(&lower.as_str());
        if meaningful {
            push(
                problems,
                cp.key("header_name"),
                format!(
                    "{n:?} means something in a response: with echo_downstream the id would \
                     replace the upstream's {n}"
                ),
            );
        }
    }
    if let Some(g) = &c.generator {
        if g != "uuid" {
            push(
                problems,
                cp.key("generator"),
                format!("{g:?} is not supported; expected \"uuid\" (random, version 4)"),
            );
        }
    }
    (problems.len() == before).then_some(())?;
    Some(CorrelationIdDef {
        header_name: header_name?,
        echo_downstream: c.echo_downstream.unwrap_or(false),
    })
}

pub fn cors(raw: Option<&RawCors>, path: &KeyPath, problems: &mut Vec<Problem>) -> Option<CorsDef> {
    let default = RawCors::default();
    let c = raw.unwrap_or(&default);
    let cp = path.key("config");
    let before = problems.len();
    let origins = c.origins.clone().unwrap_or_else(|| vec!["*".to_owned()]);
    if origins.is_empty() {
        push(
            problems,
            cp.key("origins"),
            "must list at least one origin (or \"*\")",
        );
    }
    for (i, o) in origins.iter().enumerate() {
        if plain_origin(o) {
            continue;
        }
        if origin_is_regex(o) {
            if let Some(e) = origin_regex_trap(o).map_or_else(|| origin_regex(o).err(), Some) {
                push(problems, cp.key("origins").index(i), e);
            }
            continue;
        }
        push(
            problems,
            cp.key("origins").index(i),
            format!(
                "{o:?} is not an origin; expected \"*\", \"https://host[:port]\" (no path, no trailing '/'), \"https://*.example.com\" or a regex such as \"https://[a-z0-9-]+\\\\.example\\\\.com\""
            ),
        );
    }
    let methods = match &c.methods {
        None => DEFAULT_METHODS.iter().map(|m| (*m).to_owned()).collect(),
        Some(ms) => {
            // Upper-cased, as route `methods` are: browsers compare the methods of
            // Access-Control-Allow-Methods case-sensitively, so a "delete" would fail every
            // DELETE preflight (while GET and POST, never preflighted, go on working).
            let mut upper: Vec<String> = Vec::with_capacity(ms.len());
            for (i, m) in ms.iter().enumerate() {
                if !is_token(m) {
                    push(
                        problems,
                        cp.key("methods").index(i),
                        format!("{m:?} is not an HTTP method"),
                    );
                }
                let m = m.to_ascii_uppercase();
                if !upper.contains(&m) {
                    upper.push(m);
                }
            }
            upper
        }
    };
    let mut names = |key: &str, list: &Option<Vec<String>>| -> Option<Vec<String>> {
        let list = list.as_ref()?;
        for (i, h) in list.iter().enumerate() {
            if !is_token(h) {
                push(
                    problems,
                    cp.key(key).index(i),
                    format!("{h:?} is not a valid header name"),
                );
            }
        }
        Some(list.clone())
    };
    let headers = names("headers", &c.headers);
    let exposed_headers = names("exposed_headers", &c.exposed_headers).unwrap_or_default();
    let max_age = match c.max_age {
        None => None,
        Some(v) => in_range(problems, cp.key("max_age"), "max_age", v.0, 0, 86_400 * 365)
            .and_then(|n| u64::try_from(n).ok()),
    };
    (problems.len() == before).then_some(())?;
    Some(CorsDef {
        origins,
        methods,
        headers,
        exposed_headers,
        credentials: c.credentials.unwrap_or(false),
        max_age,
        preflight_continue: c.preflight_continue.unwrap_or(false),
    })
}

pub fn transformer(
    raw: Option<&RawTransformer>,
    path: &KeyPath,
    side: Side,
    problems: &mut Vec<Problem>,
) -> Option<TransformDef> {
    let Some(c) = raw else {
        push(
            problems,
            path.clone(),
            "a transformer needs a `config` table, e.g. config = { add = { headers = [\"X-Env:prod\"] } }",
        );
        return None;
    };
    let cp = path.key("config");
    let before = problems.len();
    let headers = edits(c, &cp, Field::Header(side), problems);
    let query = match side {
        Side::Request => edits(c, &cp, Field::Query, problems),
        Side::Response => EditsDef::default(),
    };
    let json = edits(c, &cp, Field::Json, problems);
    let form = match side {
        Side::Request => edits(c, &cp, Field::Form, problems),
        Side::Response => EditsDef::default(),
    };
    // Whether a request body is JSON or a form is read from the client's Content-Type: a
    // transformer that also edits that header would send the upstream a body the edits never
    // looked at.
    let ct = |n: &String| n.eq_ignore_ascii_case("content-type");
    let h = &headers;
    if side == Side::Request
        && !(json.is_empty() && form.is_empty())
        && (h.remove.iter().any(ct)
            || h.rename.iter().any(|(a, b)| ct(a) || ct(b))
            || [&h.replace, &h.add, &h.append]
                .iter()
                .any(|l| l.iter().any(|(n, _)| ct(n))))
    {
        push(
            problems,
            cp.clone(),
            "a request-transformer with `json` or `form` edits cannot also edit the Content-Type header: the edits apply to bodies the client declared JSON or a form, and the upstream would read a body they never looked at",
        );
    }
    let mut uri = None;
    for (key, e) in sections(c) {
        let at = cp.key(key);
        if e.json_types.is_some() && matches!(key, "remove" | "rename") {
            push(
                problems,
                at.key("json_types"),
                "`json_types` types the values of `replace`, `add` and `append`; remove and rename have none",
            );
        }
        if side == Side::Response {
            if e.querystring.is_some() {
                push(problems, at.key("querystring"), RESPONSE_HEADERS_ONLY);
            }
            if e.uri.is_some() {
                push(problems, at.key("uri"), RESPONSE_HEADERS_ONLY);
            }
            if e.form.is_some() {
                push(problems, at.key("form"), RESPONSE_HEADERS_ONLY);
            }
            continue;
        }
        match (&e.uri, key) {
            (Some(u), "replace") => uri = upstream_uri(problems, at.key("uri"), u),
            (Some(_), _) => push(
                problems,
                at.key("uri"),
                "`uri` is a `replace` key: replace = { uri = \"/new/path\" }",
            ),
            (None, _) => {}
        }
    }
    let method = c.http_method.as_deref().and_then(|m| {
        let at = cp.key("http_method");
        let why = if side == Side::Response {
            Some(RESPONSE_HEADERS_ONLY)
        } else if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
            Some("must be an upper-case method name such as \"POST\" (Kong's rule: letters A-Z only)")
        } else if m == "HEAD" {
            Some("\"HEAD\" is refused: the upstream's answer would have no body where the client expects one")
        } else if m == "CONNECT" {
            Some("\"CONNECT\" is refused: the gateway does not tunnel CONNECT")
        } else {
            None
        };
        match why {
            Some(why) => {
                push(problems, at, why);
                None
            }
            None => Some(m.to_owned()),
        }
    });
    let mut buffer_limit = |key: &str, size: &Option<crate::config::raw::Size>| match size {
        None => DEFAULT_MAX_BODY_EDIT_BYTES,
        Some(s) if (1..=MAX_MAX_BODY_EDIT_BYTES).contains(&s.0) => s.0,
        Some(s) => {
            push(
                problems,
                cp.key(key),
                format!("{key} must be 1 byte to 1 GiB, got {}", s.0),
            );
            DEFAULT_MAX_BODY_EDIT_BYTES
        }
    };
    let max_json_bytes = buffer_limit("max_json_bytes", &c.max_json_bytes);
    let max_form_bytes = if side == Side::Response && c.max_form_bytes.is_some() {
        push(problems, cp.key("max_form_bytes"), RESPONSE_HEADERS_ONLY);
        DEFAULT_MAX_BODY_EDIT_BYTES
    } else {
        buffer_limit("max_form_bytes", &c.max_form_bytes)
    };
    (problems.len() == before).then_some(TransformDef {
        headers,
        query,
        uri,
        method,
        json,
        max_json_bytes,
        form,
        max_form_bytes,
    })
}

/// How large a JSON or form body a transformer buffers by default, and at most.
pub const DEFAULT_MAX_BODY_EDIT_BYTES: u64 = 1 << 20;
const MAX_MAX_BODY_EDIT_BYTES: u64 = 1 << 30;

const RESPONSE_HEADERS_ONLY: &str =
    "the response-transformer edits headers and JSON bodies only (`querystring`, `form`, `uri`, `http_method` and `max_form_bytes` are request-transformer keys)";

/// What an edit list names.
#[derive(Clone, Copy)]
enum Field {
    /// `headers`, on this side of the proxy.
    Header(Side),
    /// `querystring` (request side).
    Query,
    /// `json`: top-level keys of a JSON body (request or response).
    Json,
    /// `form`: fields of a url-encoded form body (request side).
    Form,
}

impl Field {
    fn key(self) -> &'static str {
        match self {
            Field::Header(_) => "headers",
            Field::Query => "querystring",
            Field::Json => "json",
            Field::Form => "form",
        }
    }

    /// Whether two names are one (header names ignore case; query names do not, as applications
    /// read them).
    fn same(self, a: &str, b: &str) -> bool {
        match self {
            Field::Header(_) => a.eq_ignore_ascii_case(b),
            Field::Query | Field::Json | Field::Form => a == b,
        }
    }

    /// The entries of this kind in one edit table (`remove = { headers = [...] }`), numbered.
    fn entries(self, e: &Option<RawEdits>) -> impl Iterator<Item = (usize, &str)> {
        e.iter()
            .flat_map(move |e| match self {
                Field::Header(_) => e.headers.as_deref(),
                Field::Query => e.querystring.as_deref(),
                Field::Json => e.json.as_deref(),
                Field::Form => e.form.as_deref(),
            })
            .flat_map(|l| l.iter().map(String::as_str).enumerate())
    }

    fn name(self, problems: &mut Vec<Problem>, at: KeyPath, name: &str) -> Option<String> {
        match self {
            Field::Header(side) => header_name(problems, at, name.trim(), side),
            Field::Query | Field::Form => query_text(problems, at, name, true),
            Field::Json => json_key(problems, at, name),
        }
    }

    fn value(self, problems: &mut Vec<Problem>, at: KeyPath, value: &str) -> Option<String> {
        match self {
            Field::Header(_) => header_value(problems, at, value),
            Field::Query | Field::Form => query_text(problems, at, value, false),
            // Typed by `json_value`, which knows the entry's `json_types`.
            Field::Json => Some(value.to_owned()),
        }
    }
}

/// `(key, table)` for each of remove, rename, replace, add, append that is set.
fn sections(c: &RawTransformer) -> impl Iterator<Item = (&'static str, &RawEdits)> {
    [
        ("remove", &c.remove),
        ("rename", &c.rename),
        ("replace", &c.replace),
        ("add", &c.add),
        ("append", &c.append),
    ]
    .into_iter()
    .filter_map(|(k, e)| Some((k, e.as_ref()?)))
}

/// One kind of edits, checked.
fn edits(c: &RawTransformer, cp: &KeyPath, field: Field, problems: &mut Vec<Problem>) -> EditsDef {
    let mut def = EditsDef::default();
    let fkey = field.key();
    for (i, h) in field.entries(&c.remove) {
        let at = cp.key("remove").key(fkey).index(i);
        def.remove.extend(field.name(problems, at, h));
    }
    for (i, h) in field.entries(&c.rename) {
        let at = cp.key("rename").key(fkey).index(i);
        let Some((from, to)) = h.split_once(':') else {
            push(
                problems,
                at,
                format!("{h:?}: expected \"old-name:new-name\""),
            );
            continue;
        };
        let from = field.name(problems, at.clone(), from);
        let to = field.name(problems, at.clone(), to);
        let (Some(from), Some(to)) = (from, to) else {
            continue;
        };
        // Renames apply side by side, not one after another (as Kong's do): two onto one name, or
        // a chain, would be read differently by the two, so neither is accepted.
        let clash = def.rename.iter().find_map(|(f, t)| {
            if field.same(t, &to) {
                Some(format!("{t:?} is already the target of {f:?}"))
            } else if field.same(f, &to) || field.same(t, &from) {
                Some(format!("renames cannot chain ({f:?} -> {t:?})"))
            } else if field.same(f, &from) {
                Some(format!("{f:?} is already renamed"))
            } else {
                None
            }
        });
        match clash {
            Some(why) => push(problems, at, format!("{h:?}: {why}")),
            None => def.rename.push((from, to)),
        }
    }
    if def.rename.len() > MAX_TRACKED {
        push(
            problems,
            cp.key("rename").key(fkey),
            format!("at most {MAX_TRACKED} entries"),
        );
    }
    let example = match field {
        Field::Header(_) => "\"Header-Name:value\"",
        Field::Query | Field::Json | Field::Form => "\"name:value\"",
    };
    for (key, raw, out) in [
        ("replace", &c.replace, &mut def.replace),
        ("add", &c.add, &mut def.add),
        ("append", &c.append, &mut def.append),
    ] {
        let types = json_types(problems, cp.key(key), raw, field);
        for (i, h) in field.entries(raw) {
            let at = cp.key(key).key(fkey).index(i);
            let Some((name, value)) = h.split_once(':') else {
                push(problems, at, format!("{h:?}: expected {example}"));
                continue;
            };
            let name = field.name(problems, at.clone(), name);
            let value = match field {
                Field::Json => json_value(problems, at, value, types.get(i).copied()),
                _ => field.value(problems, at, value),
            };
            if let (Some(n), Some(v)) = (name, value) {
                out.push((n, v));
            }
        }
        if key != "append" && out.len() > MAX_TRACKED {
            push(
                problems,
                cp.key(key).key(fkey),
                format!("at most {MAX_TRACKED} entries"),
            );
        }
    }
    def
}

/// The type of a `json` value.
#[derive(Clone, Copy)]
enum JsonType {
    String,
    Number,
    Boolean,
}

/// One section's `json_types` (checked against its `json` entries); empty when not set or not
/// about JSON.
fn json_types(
    problems: &mut Vec<Problem>,
    at: KeyPath,
    raw: &Option<RawEdits>,
    field: Field,
) -> Vec<JsonType> {
    let (Field::Json, Some(e)) = (field, raw.as_ref()) else {
        return Vec::new();
    };
    let Some(types) = &e.json_types else {
        return Vec::new();
    };
    let entries = e.json.as_ref().map_or(0, Vec::len);
    let mut out = Vec::new();
    for (i, t) in types.iter().enumerate() {
        let at = at.key("json_types").index(i);
        if i >= entries {
            push(
                problems,
                at,
                format!("{t:?} has no `json` entry {i} to type"),
            );
            continue;
        }
        out.push(match t.as_str() {
            "string" => JsonType::String,
            "number" => JsonType::Number,
            "boolean" => JsonType::Boolean,
            _ => {
                push(
                    problems,
                    at,
                    format!("{t:?}: expected \"string\", \"number\" or \"boolean\""),
                );
                JsonType::String
            }
        });
    }
    out
}

/// A top-level JSON key, trimmed of surrounding spaces like the other entries.
fn json_key(problems: &mut Vec<Problem>, at: KeyPath, key: &str) -> Option<String> {
    let k = key.trim_matches([' ', '\t']);
    if k.is_empty() {
        push(problems, at, "a JSON key must not be empty");
        return None;
    }
    if k.chars().any(char::is_control) {
        push(
            problems,
            at,
            "JSON keys must not contain control characters",
        );
        return None;
    }
    Some(k.to_owned())
}

/// A `json` value of type `t` (a string when untyped), as JSON text.
fn json_value(
    problems: &mut Vec<Problem>,
    at: KeyPath,
    value: &str,
    t: Option<JsonType>,
) -> Option<String> {
    let v = value.trim_matches([' ', '\t']);
    let parsed = match t.unwrap_or(JsonType::String) {
        JsonType::String => Some(serde_json::Value::String(v.to_owned())),
        JsonType::Number => serde_json::from_str::<serde_json::Number>(v)
            .ok()
            .map(serde_json::Value::Number),
        JsonType::Boolean => match v {
            "true" => Some(serde_json::Value::Bool(true)),
            "false" => Some(serde_json::Value::Bool(false)),
            _ => None,
        },
    };
    match parsed {
        Some(p) => Some(p.to_string()),
        None => {
            let want = match t {
                Some(JsonType::Number) => "a number",
                _ => "true or false",
            };
            push(
                problems,
                at,
                format!("{v:?} is not {want}, as its `json_types` entry says"),
            );
            None
        }
    }
}

/// A query parameter's name or value as written, trimmed of surrounding spaces like header
/// entries; it is percent-encoded when written, so only control characters (a typo, never
/// intended) are refused, and an empty name.
fn query_text(problems: &mut Vec<Problem>, at: KeyPath, text: &str, name: bool) -> Option<String> {
    let t = text.trim_matches([' ', '\t']);
    let what = if name { "name" } else { "value" };
    if name && t.is_empty() {
        push(problems, at, "a query parameter needs a name");
        return None;
    }
    if t.chars().any(char::is_control) {
        push(
            problems,
            at,
            format!("query parameter {what}s must not contain control characters"),
        );
        return None;
    }
    Some(t.to_owned())
}

/// `replace.uri`: an origin-form path, sent as written (so already percent-encoded): `/`, then
/// visible ASCII without `?` or `#` (the client's query is kept; edit it with `querystring`), and
/// nothing an upstream could resolve to somewhere else (`//host`, dot segments, backslashes).
fn upstream_uri(problems: &mut Vec<Problem>, at: KeyPath, uri: &str) -> Option<String> {
    let b = uri.as_bytes();
    let bad_escape = b.iter().enumerate().any(|(i, &c)| {
        c == b'%'
            && !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    });
    // `.` and `..` segments, plain or encoded (`%2e`): upstreams resolve them differently.
    let dot_segment = uri.split('/').any(|seg| {
        let seg = seg.to_ascii_lowercase().replace("%2e", ".");
        seg == "." || seg == ".."
    });
    let why = if b.first() != Some(&b'/') {
        Some("must start with `/` (a path; the upstream's address comes from the service)")
    } else if b.starts_with(b"//") {
        Some("must not start with `//` (read as a host name by some upstreams)")
    } else if dot_segment || b.contains(&b'\\') {
        Some("must not have `.` or `..` segments or backslashes (upstreams resolve them differently)")
    } else if b.iter().any(|&c| !(0x21..=0x7e).contains(&c)) {
        Some("must be visible ASCII: percent-encode spaces and other bytes (`%20`)")
    } else if b.iter().any(|&c| c == b'?' || c == b'#') {
        Some("is a path: no `?` or `#` (the client's query is kept; edit it with `querystring`)")
    } else if bad_escape {
        Some("has a `%` not followed by two hex digits")
    } else {
        None
    };
    match why {
        Some(why) => {
            push(problems, at, format!("{uri:?} {why}"));
            None
        }
        None => Some(uri.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        for ok in [
            "*",
            "https://app.example.com",
            "http://localhost:3000",
            "https://*.example.com",
            "http://[::1]:8080",
        ] {
            assert!(plain_origin(ok), "{ok}");
        }
        // Neither plain nor a regex: mistyped origins.
        for bad in [
            "",
            "app.example.com",
            "https://app.example.com/",
            "https://a.example.com/path",
            "https://",
            "ftp://x",
        ] {
            assert!(!plain_origin(bad) && !origin_is_regex(bad), "{bad}");
        }
        // A wildcard over one label would admit a whole top-level domain.
        for bad in ["https://*.com", "https://*.com."] {
            assert!(!plain_origin(bad), "{bad}");
            assert!(origin_regex_trap(bad).is_some(), "{bad}");
        }
        // Regexes (Kong's rule), anchored at both ends, case-insensitive.
        let re = |o: &str| origin_regex(o).unwrap_or_else(|e| panic!("{o}: {e}"));
        assert!(origin_is_regex(r"https://.*\.example\.com"));
        let sub = re(r"https://[a-z0-9-]+\.example\.com");
        assert!(sub.is_match("https://app.example.com"));
        assert!(sub.is_match("HTTPS://App.Example.com"));
        assert!(!sub.is_match("https://app.example.com.evil.net"));
        assert!(!sub.is_match("https://evil.net/https://app.example.com"));
        assert!(!sub.is_match("https://a.b.example.com"));
        assert!(re(r"^https://(a|b)\.example\.com$").is_match("https://b.example.com"));
        assert!(origin_regex(r"https://(unclosed\.example\.com").is_err());
        // Globs and unescaped dots would let registrable look-alikes through: refused.
        for trap in [
            "https://app.example.com/*",
            "https://*.example.com:*",
            "https://*.*.example.com",
            "https://(app|www).example.com",
            r"https://[a-z0-9-]+.example\.com",
            r"https://(app|www).corp\.com",
            r"https://app\..example\.com",
            r"https://(www.)?example\.com",
            r"https://app.(example|corp)\.com",
            r"https://app.[a-z]+\.com",
            r"https://app.?example\.com",
            "https://app.",
            "*",
        ] {
            assert!(origin_regex_trap(trap).is_some(), "{trap}");
        }
        for fine in [
            r"https://[a-z0-9-]+\.example\.com",
            r"https://.*\.example\.com",
            r"^http://localhost:(3000|8080)$",
            r"https://app\*x",
            r"https://[.a-z0-9-]+\.example\.com",
            r"https://.+\.example\.com",
            r"https://(www\.)?example\.com",
            r"https://.{1,20}\.example\.com",
        ] {
            assert!(origin_regex_trap(fine).is_none(), "{fine}");
        }
        // Brackets only around an IPv6 literal.
        assert!(plain_origin("http://[::1]:8080") && plain_origin("http://[::1]"));
        assert!(!plain_origin("https://app[0-9].example.com"));
        assert!(!plain_origin("http://[::1]x") && !plain_origin("http://a:b:c"));
    }

    #[test]
    fn reserved_names() {
        for n in [
            "Content-Length",
            "transfer-encoding",
            "Connection",
            "Host",
            "X-Forwarded-For",
            "X-Consumer-ID",
            "X_Thing",
        ] {
            assert!(reserved(n, Side::Request).is_some(), "{n}");
        }
        assert!(reserved("Content-Length", Side::Response).is_some());
        assert!(reserved("Connection", Side::Response).is_some());
        assert!(reserved("X-Cache", Side::Response).is_none());
        assert!(reserved("X-Env", Side::Request).is_none());
    }
}
