//! One function per auth plugin, run by the plugin chain for each request.
//!
//! Each step reads the request (parsed spans into the client buffer), may identify a consumer
//! (`Identity`), may ask for edits of the upstream request (`Edits`: hidden credentials, consumer
//! headers), and returns `Flow::Continue` or a response. Failure responses follow Kong: 401 with a
//! `WWW-Authenticate` challenge for missing or bad credentials, 403 for authenticated-but-refused.
//!
//! Invariants: no allocation on the success path once the reused buffers have grown; credential
//! bytes are never written to logs or into response bodies; a step given `anonymous` never
//! rejects for a missing or invalid credential, it identifies the anonymous consumer instead, and
//! skips itself when a previous auth plugin already identified a real consumer (Kong's "logical
//! OR" of auth plugins).

use std::net::IpAddr;

use base64::Engine as _;

use super::cache::DigestCache;
use super::client_ip::listed;
use super::set::{digest, AclRt, AuthSet, BasicAuthRt, CredRef, IpRt, KeyAuthRt};
use crate::http::headers::eq_ignore_case;
use crate::http::parse::RequestHead;
use crate::http::query;
use crate::plugins::Flow;

/// Who the request is, as far as auth plugins have found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// Index into `Config::consumers` (and `AuthSet::consumers`).
    pub consumer: Option<usize>,
    pub credential: Option<CredRef>,
    /// The consumer is a plugin's `anonymous` fallback, not an authenticated one.
    pub anonymous: bool,
}

impl Identity {
    /// An auth plugin with `anonymous` set skips when a real consumer is already identified.
    pub fn authenticated(&self) -> bool {
        self.consumer.is_some() && !self.anonymous
    }

    fn set(&mut self, consumer: usize, credential: CredRef) {
        *self = Identity {
            consumer: Some(consumer),
            credential: Some(credential),
            anonymous: false,
        };
    }

    /// Falls back to `anonymous`, unless some consumer (real or anonymous) is already set.
    pub fn set_anonymous(&mut self, consumer: usize) {
        if self.consumer.is_none() {
            *self = Identity {
                consumer: Some(consumer),
                credential: None,
                anonymous: true,
            };
        }
    }
}

/// Changes to the upstream request that plugins ask for. Reused per connection.
#[derive(Debug, Default)]
pub struct Edits {
    /// Header lines (`Name: value\r\n`) added to the upstream request.
    pub add: Vec<u8>,
    /// Indices of client headers not forwarded (hidden credentials).
    pub skip: Vec<u16>,
    /// Lower-case names of client headers not forwarded (replaced by forward-auth's copies).
    pub skip_names: Option<std::sync::Arc<[Box<[u8]>]>>,
    /// Byte range of the query (relative to its start) not forwarded: a hidden `?apikey=…`,
    /// including one adjacent `&`.
    pub query_cut: Option<(usize, usize)>,
    /// A response-transformer edits the JSON body, which it must get whole and readable: the
    /// client's `Accept-Encoding`, `Range` and `If-Range` are not forwarded (a partial body would
    /// not parse and would go out unedited, `remove`d fields and all).
    pub whole_body: bool,
}

impl Edits {
    pub fn clear(&mut self) {
        self.add.clear();
        self.skip.clear();
        self.skip_names = None;
        self.query_cut = None;
        self.whole_body = false;
    }

    pub fn is_empty(&self) -> bool {
        self.add.is_empty()
            && self.skip.is_empty()
            && self.skip_names.is_none()
            && self.query_cut.is_none()
            && !self.whole_body
    }

    /// Whether client header `i` named `name` is dropped.
    pub fn skips(&self, i: usize, name: &[u8]) -> bool {
        (self.whole_body
            && (eq_ignore_case(name, b"accept-encoding")
                || eq_ignore_case(name, b"range")
                || eq_ignore_case(name, b"if-range")))
            || self.skip.iter().any(|&s| usize::from(s) == i)
            || self
                .skip_names
                .iter()
                .flat_map(|n| n.iter())
                .any(|n| eq_ignore_case(n, name))
    }
}

/// The request as auth steps see it.
pub struct Req<'a> {
    pub head: &'a RequestHead,
    pub buf: &'a [u8],
    pub client_ip: IpAddr,
    /// The request carries a method override (the upstream runs another method).
    pub overridden: bool,
}

impl<'a> Req<'a> {
    /// A CORS preflight, as the CORS spec defines it: an OPTIONS with `Origin` and
    /// `Access-Control-Request-Method`, and no method override. Any OPTIONS counted before (as in
    /// Kong), so `run_on_preflight = false` let `OPTIONS /admin/users/1` +
    /// `X-HTTP-Method-Override: DELETE` through without credentials to a framework that honours
    /// the override on any method (Werkzeug's middleware does).
    fn is_preflight(&self) -> bool {
        self.head.method.get(self.buf) == b"OPTIONS"
            && !self.overridden
            && self.headers_named(b"origin").next().is_some()
            && self
                .headers_named(b"access-control-request-method")
                .next()
                .is_some()
    }

    fn query(&self) -> &[u8] {
        self.head.query.map(|q| q.get(self.buf)).unwrap_or_default()
    }

    /// `(index, value)` of every header named `name`, in order.
    fn headers_named<'s>(&'s self, name: &'s [u8]) -> impl Iterator<Item = (usize, &'s [u8])> + 's {
        self.head
            .headers
            .iter()
            .enumerate()
            .filter(move |(_, h)| eq_ignore_case(h.name.get(self.buf), name))
            .map(|(i, h)| (i, h.value.get(self.buf)))
    }
}

pub const MSG_NO_KEY: &[u8] = b"{\"message\":\"No API key found in request\"}";
pub const MSG_DUPLICATE_KEY: &[u8] = b"{\"message\":\"Duplicate API key found\"}";
pub const MSG_INVALID: &[u8] = b"{\"message\":\"Invalid authentication credentials\"}";
pub const MSG_UNAUTHORIZED: &[u8] = b"{\"message\":\"Unauthorized\"}";
pub const MSG_ACL: &[u8] = b"{\"message\":\"You cannot consume this service\"}";
pub const MSG_BUSY: &[u8] = b"{\"message\":\"Authentication is temporarily unavailable\"}";

/// 401 with the plugin's challenge.
fn unauthorized(
    challenge: &[u8],
    resp_headers: &mut Vec<u8>,
    body: &'static [u8],
) -> Flow<'static> {
    resp_headers.extend_from_slice(challenge);
    Flow::Respond { status: 401, body }
}

/// Where a key was found.
enum KeyAt {
    Header(usize),
    /// Byte range of the whole `name=value` parameter within the query.
    Query(usize, usize),
}

/// Whether an auth step has nothing to do: a CORS preflight it is not asked to check, or a request
/// an earlier auth plugin already identified while this one only offers an anonymous fallback.
fn stands_aside(run_on_preflight: bool, has_anonymous: bool, req: &Req<'_>, id: &Identity) -> bool {
    (!run_on_preflight && req.is_preflight()) || (has_anonymous && id.authenticated())
}

/// `key-auth`: an API key in a header or query parameter, looked up by SHA-256 digest.
pub fn key_auth(
    rt: &KeyAuthRt,
    set: &AuthSet,
    req: &Req<'_>,
    id: &mut Identity,
    edits: &mut Edits,
    scratch: &mut Vec<u8>,
    resp_headers: &mut Vec<u8>,
) -> Flow<'static> {
    let def = &rt.def;
    if stands_aside(def.run_on_preflight, def.anonymous.is_some(), req, id) {
        return Flow::Continue;
    }
    // Every configured place is searched: more than one key in a request (two headers, header
    // and query, a repeated parameter) is ambiguous, and a backend reading the other one would act
    // on a credential nobody checked.
    let mut found: Option<(KeyAt, &[u8])> = None;
    let mut count = 0usize;
    for name in &def.key_names {
        if def.in_header {
            for (i, v) in req.headers_named(name.as_bytes()) {
                count += 1;
                found.get_or_insert((KeyAt::Header(i), v));
            }
        }
        if def.in_query {
            for (start, end, v) in query_params(req.query(), name.as_bytes()) {
                count += 1;
                found.get_or_insert((KeyAt::Query(start, end), v));
            }
        }
    }
    if count > 1 {
        return fail(
            def.anonymous,
            id,
            &rt.challenge,
            resp_headers,
            MSG_DUPLICATE_KEY,
        );
    }
    scratch.clear();
    let found = found.map(|(at, v)| {
        match at {
            KeyAt::Header(_) => scratch.extend_from_slice(v),
            KeyAt::Query(..) => percent_decode(v, scratch),
        }
        at
    });
    let Some(at) = found.filter(|_| !scratch.is_empty()) else {
        return fail(def.anonymous, id, &rt.challenge, resp_headers, MSG_NO_KEY);
    };
    let Some(&cred) = set.keys.get(&digest(scratch)) else {
        return fail(def.anonymous, id, &rt.challenge, resp_headers, MSG_INVALID);
    };
    let Some(c) = set.key_creds.get(cred) else {
        return fail(def.anonymous, id, &rt.challenge, resp_headers, MSG_INVALID);
    };
    id.set(c.consumer, CredRef::Key(cred));
    if def.hide_credentials {
        match at {
            KeyAt::Header(i) => edits.skip.push(u16::try_from(i).unwrap_or(u16::MAX)),
            KeyAt::Query(s, e) => edits.query_cut = Some(cut_with_separator(req.query(), s, e)),
        }
    }
    Flow::Continue
}

/// Missing/invalid credential: the anonymous consumer when configured, else 401.
fn fail(
    anonymous: Option<usize>,
    id: &mut Identity,
    challenge: &[u8],
    resp_headers: &mut Vec<u8>,
    body: &'static [u8],
) -> Flow<'static> {
    match anonymous {
        Some(a) => {
            id.set_anonymous(a);
            Flow::Continue
        }
        None => unauthorized(challenge, resp_headers, body),
    }
}

/// What `basic_auth` needs next.
pub enum Basic {
    Done(Flow<'static>),
    /// Not in the worker's cache: check `scratch[pass]` against credential `cred`'s hash off the
    /// worker (`cred` None: unknown user, checked against a dummy hash so timing does not tell
    /// which usernames exist), then call `basic_verified`.
    Verify {
        cred: Option<usize>,
        key: [u8; 32],
        pass: (usize, usize),
        header: usize,
    },
}

/// Largest `Authorization: Basic` payload accepted (decoded).
const MAX_BASIC: usize = 1024;

/// `basic-auth`, first half: parse the header, consult the worker's cache of verified credentials.
#[allow(clippy::too_many_arguments)]
pub fn basic_auth(
    rt: &BasicAuthRt,
    set: &AuthSet,
    req: &Req<'_>,
    id: &mut Identity,
    edits: &mut Edits,
    cache: &DigestCache,
    scratch: &mut Vec<u8>,
    resp_headers: &mut Vec<u8>,
) -> Basic {
    let def = &rt.def;
    if stands_aside(def.run_on_preflight, def.anonymous.is_some(), req, id) {
        return Basic::Done(Flow::Continue);
    }
    let mut hits = req.headers_named(b"authorization");
    let Some((header, value)) = hits.next() else {
        return Basic::Done(fail(
            def.anonymous,
            id,
            &rt.challenge,
            resp_headers,
            MSG_UNAUTHORIZED,
        ));
    };
    if hits.next().is_some() {
        return Basic::Done(fail(
            def.anonymous,
            id,
            &rt.challenge,
            resp_headers,
            MSG_INVALID,
        ));
    }
    let Some(b64) = strip_scheme(value, b"basic") else {
        return Basic::Done(fail(
            def.anonymous,
            id,
            &rt.challenge,
            resp_headers,
            MSG_UNAUTHORIZED,
        ));
    };
    scratch.clear();
    scratch.resize(MAX_BASIC, 0);
    let decoded = base64::engine::general_purpose::STANDARD.decode_slice(b64, scratch);
    let Ok(n) = decoded else {
        scratch.clear();
        return Basic::Done(fail(
            def.anonymous,
            id,
            &rt.challenge,
            resp_headers,
            MSG_INVALID,
        ));
    };
    scratch.truncate(n);
    let Some(colon) = memchr::memchr(b':', scratch) else {
        return Basic::Done(fail(
            def.anonymous,
            id,
            &rt.challenge,
            resp_headers,
            MSG_INVALID,
        ));
    };
    let key = digest(scratch);
    if let Some(cred) = cache.get(&key) {
        return Basic::Done(basic_ok(set, cred, header, def.hide_credentials, id, edits));
    }
    let cred = rt.users.get(&scratch[..colon]).copied();
    Basic::Verify {
        cred,
        key,
        pass: (colon + 1, scratch.len()),
        header,
    }
}

/// `basic-auth`, second half: the verifier's answer for a `Basic::Verify`.
#[allow(clippy::too_many_arguments)]
pub fn basic_verified(
    rt: &BasicAuthRt,
    set: &AuthSet,
    verdict: super::verifier::Verdict,
    cred: Option<usize>,
    key: [u8; 32],
    header: usize,
    id: &mut Identity,
    edits: &mut Edits,
    cache: &mut DigestCache,
    resp_headers: &mut Vec<u8>,
) -> Flow<'static> {
    use super::verifier::Verdict;
    match (verdict, cred) {
        (Verdict::Match, Some(cred)) => {
            cache.insert(key, cred);
            basic_ok(set, cred, header, rt.def.hide_credentials, id, edits)
        }
        (Verdict::Busy, _) => Flow::Respond {
            status: 503,
            body: MSG_BUSY,
        },
        _ => fail(
            rt.def.anonymous,
            id,
            &rt.challenge,
            resp_headers,
            MSG_INVALID,
        ),
    }
}

fn basic_ok(
    set: &AuthSet,
    cred: usize,
    header: usize,
    hide: bool,
    id: &mut Identity,
    edits: &mut Edits,
) -> Flow<'static> {
    let Some(c) = set.basic_creds.get(cred) else {
        return Flow::Respond {
            status: 401,
            body: MSG_INVALID,
        };
    };
    id.set(c.consumer, CredRef::Basic(cred));
    if hide {
        edits.skip.push(u16::try_from(header).unwrap_or(u16::MAX));
    }
    Flow::Continue
}

/// `acl`: 401 without a consumer, 403 when the consumer's groups are not allowed.
pub fn acl(rt: &AclRt, id: &Identity) -> Flow<'static> {
    let Some(c) = id.consumer else {
        return Flow::Respond {
            status: 401,
            body: MSG_UNAUTHORIZED,
        };
    };
    if rt.allowed.get(c).copied().unwrap_or(false) {
        Flow::Continue
    } else {
        Flow::Respond {
            status: 403,
            body: MSG_ACL,
        }
    }
}

/// `ip-restriction`: deny wins over allow; a non-empty allow list admits only its members.
pub fn ip_restriction<'a>(rt: &'a IpRt, client_ip: IpAddr) -> Flow<'a> {
    let def = &rt.def;
    let denied = listed(&def.deny, client_ip);
    let allowed = def.allow.is_empty() || listed(&def.allow, client_ip);
    if denied || !allowed {
        Flow::Respond {
            status: def.status,
            body: &rt.body,
        }
    } else {
        Flow::Continue
    }
}

/// `Scheme credentials` with a case-insensitive scheme; returns the trimmed credentials.
pub fn strip_scheme<'a>(value: &'a [u8], scheme: &[u8]) -> Option<&'a [u8]> {
    let head = value.get(..scheme.len())?;
    if !eq_ignore_case(head, scheme) || value.get(scheme.len()) != Some(&b' ') {
        return None;
    }
    let rest = value.get(scheme.len() + 1..)?.trim_ascii();
    (!rest.is_empty()).then_some(rest)
}

/// Finds parameter `name` in `query`: `(start, end)` of the whole `name=value` and the raw value.
pub fn query_param<'q>(query: &'q [u8], name: &[u8]) -> Option<(usize, usize, &'q [u8])> {
    query_params(query, name).next()
}

/// Every occurrence of parameter `name` in `query`, as `query_param` describes them. Names compare
/// form-decoded, as applications read them: `api%6Bey=…` is an `apikey` too, so it counts as a
/// duplicate and `hide_credentials` cuts it, never leaving the upstream a key nobody checked.
pub fn query_params<'q, 'n>(
    query: &'q [u8],
    name: &'n [u8],
) -> impl Iterator<Item = (usize, usize, &'q [u8])> + use<'q, 'n> {
    query::params(query)
        .filter(move |p| {
            p.name == name
                || (p.name.iter().any(|&b| b == b'%' || b == b'+')
                    && query::decode(p.name).eq(name.iter().copied()))
        })
        .map(|p| (p.start, p.end, p.value))
}

/// Widens `start..end` to take one `&` with it, so `a=1&apikey=x&b=2` becomes `a=1&b=2`.
fn cut_with_separator(query: &[u8], start: usize, end: usize) -> (usize, usize) {
    if query.get(end) == Some(&b'&') {
        (start, end + 1)
    } else if start > 0 {
        (start - 1, end)
    } else {
        (start, end)
    }
}

/// Appends `query` without the bytes in `cut`.
pub fn push_query_without(out: &mut Vec<u8>, query: &[u8], cut: (usize, usize)) {
    out.extend_from_slice(query.get(..cut.0).unwrap_or_default());
    out.extend_from_slice(query.get(cut.1..).unwrap_or_default());
}

/// Appends `?query` to a request target, minus what key-auth's `hide_credentials` cut out; nothing
/// when no query is left.
pub fn push_query(out: &mut Vec<u8>, query: &[u8], cut: Option<(usize, usize)>) {
    match cut {
        Some(cut) if query.len() <= cut.1.saturating_sub(cut.0) => {}
        Some(cut) => {
            out.push(b'?');
            push_query_without(out, query, cut);
        }
        None => {
            out.push(b'?');
            out.extend_from_slice(query);
        }
    }
}

/// Decodes `%XX` and `+` (form encoding) into `out`; malformed escapes are kept as they are.
pub fn percent_decode(v: &[u8], out: &mut Vec<u8>) {
    out.extend(query::decode(v));
}

/// Appends the identity's upstream headers: the consumer block, `X-Credential-Identifier`, and
/// `X-Anonymous-Consumer: true` for the anonymous fallback.
pub fn identity_headers(set: &AuthSet, id: &Identity, out: &mut Vec<u8>) {
    let Some(c) = id.consumer.and_then(|c| set.consumers.get(c)) else {
        return;
    };
    out.extend_from_slice(&c.headers);
    if id.anonymous {
        out.extend_from_slice(b"X-Anonymous-Consumer: true\r\n");
    } else if let Some(cred) = id.credential {
        out.extend_from_slice(b"X-Credential-Identifier: ");
        out.extend_from_slice(set.credential_id(cred));
        out.extend_from_slice(b"\r\n");
    }
}

pub const MSG_BAD_TOKEN: &[u8] = b"{\"message\":\"Invalid token\"}";
pub const MSG_EXPIRED: &[u8] = b"{\"message\":\"Token expired\"}";
/// Kong's "exp: exceeds maximum allowed expiration", in this gateway's message form.
pub const MSG_TOO_FAR: &[u8] = b"{\"message\":\"Token expiration exceeds the maximum allowed\"}";
pub const MSG_NOT_YET: &[u8] = b"{\"message\":\"Token not valid yet\"}";
pub const MSG_BAD_SIG: &[u8] = b"{\"message\":\"Invalid signature\"}";
pub const MSG_NO_CRED: &[u8] = b"{\"message\":\"No credentials found for the given key\"}";
pub const MSG_MULTIPLE: &[u8] = b"{\"message\":\"Multiple tokens provided\"}";

/// `jwt`: a token from a header, query parameter or cookie, verified (or found in the worker's
/// cache of verified tokens) against the consumers' JWT credentials.
#[allow(clippy::too_many_arguments)]
pub fn jwt(
    rt: &super::set::JwtRt,
    set: &AuthSet,
    req: &Req<'_>,
    id: &mut Identity,
    cache: &mut super::jwt::TokenCache,
    now_secs: u64,
    resp_headers: &mut Vec<u8>,
) -> Flow<'static> {
    use super::jwt::JwtError;
    let def = &rt.def;
    if stands_aside(def.run_on_preflight, def.anonymous.is_some(), req, id) {
        return Flow::Continue;
    }
    let token = match find_jwt(def, req) {
        JwtAt::Token(t) => t,
        JwtAt::Missing => {
            return fail(
                def.anonymous,
                id,
                &rt.challenge_missing,
                resp_headers,
                MSG_UNAUTHORIZED,
            )
        }
        JwtAt::Duplicate => {
            return fail(
                def.anonymous,
                id,
                &rt.challenge_invalid,
                resp_headers,
                MSG_MULTIPLE,
            )
        }
    };
    match rt.store.authenticate(token, &rt.rules, now_secs, cache) {
        Ok(v) => match set.jwt_ids.get(v.owner) {
            Some(&(consumer, _)) => {
                id.set(consumer, CredRef::Jwt(v.owner));
                Flow::Continue
            }
            None => fail(
                def.anonymous,
                id,
                &rt.challenge_invalid,
                resp_headers,
                MSG_BAD_TOKEN,
            ),
        },
        Err(e) => {
            let body = match e {
                JwtError::Expired => MSG_EXPIRED,
                JwtError::ExpirationTooFar => MSG_TOO_FAR,
                JwtError::NotYetValid => MSG_NOT_YET,
                JwtError::BadSignature => MSG_BAD_SIG,
                JwtError::UnknownKey => MSG_NO_CRED,
                _ => MSG_BAD_TOKEN,
            };
            fail(def.anonymous, id, &rt.challenge_invalid, resp_headers, body)
        }
    }
}

/// What `find_jwt` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtAt<'r> {
    Missing,
    Token(&'r [u8]),
    /// The same header twice: ambiguous, rejected.
    Duplicate,
}

/// Where a JWT is. Order: headers (`authorization` expects `Bearer <token>`, other headers that or
/// the bare token), then
/// query parameters, then cookies, each in configured order; the first name present wins.
pub fn find_jwt<'r>(def: &'r crate::config::model::JwtDef, req: &'r Req<'r>) -> JwtAt<'r> {
    // Every configured place is searched; two tokens in one request are ambiguous (a backend
    // decoding the other one would trust claims nobody verified).
    let mut first: Option<&'r [u8]> = None;
    let mut count = 0usize;
    let mut note = |t: Option<&'r [u8]>| {
        if let Some(t) = t.filter(|t| !t.is_empty()) {
            count += 1;
            first.get_or_insert(t);
        }
    };
    for name in &def.header_names {
        for (_, v) in req.headers_named(name.as_bytes()) {
            // A present header that is not a bearer token (e.g. Basic) holds no token.
            // Other headers take `Bearer <token>` (Kong's only form) or the bare token.
            note(if name == "authorization" {
                strip_scheme(v, b"bearer")
            } else {
                strip_scheme(v, b"bearer").or(Some(v.trim_ascii()))
            });
        }
    }
    let query = req.head.query.map(|q| q.get(req.buf)).unwrap_or_default();
    for name in &def.uri_param_names {
        for (_, _, v) in query_params(query, name.as_bytes()) {
            note(Some(v));
        }
    }
    for name in &def.cookie_names {
        for (_, header) in req.headers_named(b"cookie") {
            for v in cookies(header, name.as_bytes()) {
                note(Some(v));
            }
        }
    }
    match (count, first) {
        (0, _) | (_, None) => JwtAt::Missing,
        (1, Some(t)) => JwtAt::Token(t),
        _ => JwtAt::Duplicate,
    }
}

/// The value of cookie `name` in a `Cookie` header (`a=1; b=2`).
pub fn cookie<'v>(header: &'v [u8], name: &[u8]) -> Option<&'v [u8]> {
    cookies(header, name).next()
}

/// Every value of cookie `name` in a `Cookie` header.
pub fn cookies<'v, 'n>(
    header: &'v [u8],
    name: &'n [u8],
) -> impl Iterator<Item = &'v [u8]> + use<'v, 'n> {
    header.split(|&b| b == b';').filter_map(move |pair| {
        let pair = pair.trim_ascii();
        let eq = memchr::memchr(b'=', pair)?;
        (pair.get(..eq)? == name).then(|| pair.get(eq + 1..).unwrap_or_default().trim_ascii())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_and_cuts() {
        let q = b"a=1&apikey=s%20x&b=2";
        let (s, e, v) = query_param(q, b"apikey").expect("found");
        assert_eq!(v, b"s%20x");
        let mut dec = Vec::new();
        percent_decode(v, &mut dec);
        assert_eq!(dec, b"s x");
        let mut out = Vec::new();
        push_query_without(&mut out, q, cut_with_separator(q, s, e));
        assert_eq!(out, b"a=1&b=2");
        let q = b"apikey=k";
        let (s, e, _) = query_param(q, b"apikey").expect("found");
        out.clear();
        push_query_without(&mut out, q, cut_with_separator(q, s, e));
        assert_eq!(out, b"");
        let q = b"a=1&apikey=k";
        let (s, e, _) = query_param(q, b"apikey").expect("found");
        out.clear();
        push_query_without(&mut out, q, cut_with_separator(q, s, e));
        assert_eq!(out, b"a=1");
        assert!(query_param(b"apikeyx=1", b"apikey").is_none());
        // Names compare decoded: an encoded `apikey` is found (and cut) like a plain one.
        let q = b"a=1&api%6Bey=k&b=2";
        let (s, e, v) = query_param(q, b"apikey").expect("found");
        assert_eq!(v, b"k");
        out.clear();
        push_query_without(&mut out, q, cut_with_separator(q, s, e));
        assert_eq!(out, b"a=1&b=2");
        assert_eq!(query_params(b"apikey=a&%61pikey=b", b"apikey").count(), 2);
        assert!(query_param(b"api%6Bey2=1", b"apikey").is_none());
    }

    #[test]
    fn schemes() {
        assert_eq!(
            strip_scheme(b"Basic YWxhZGRpbg==", b"basic"),
            Some(&b"YWxhZGRpbg=="[..])
        );
        assert_eq!(strip_scheme(b"bearer  t ", b"bearer"), Some(&b"t"[..]));
        assert_eq!(strip_scheme(b"Basicx", b"basic"), None);
        assert_eq!(strip_scheme(b"Basic ", b"basic"), None);
        assert_eq!(strip_scheme(b"Ba", b"basic"), None);
    }

    #[test]
    fn cookies() {
        assert_eq!(cookie(b"a=1; jwt=tok; b=2", b"jwt"), Some(&b"tok"[..]));
        assert_eq!(cookie(b"jwt=", b"jwt"), Some(&b""[..]));
        assert_eq!(cookie(b"xjwt=1", b"jwt"), None);
        assert_eq!(cookie(b"garbage", b"jwt"), None);
    }

    #[test]
    fn cookies_by_exact_name_for_consistent_hashing() {
        let h = b"theme=dark; sid=abc123;  Sid=other ; empty=; x=\"q\"";
        assert_eq!(cookie(h, b"sid"), Some(&b"abc123"[..]));
        assert_eq!(cookie(h, b"Sid"), Some(&b"other"[..]));
        assert_eq!(cookie(h, b"empty"), Some(&b""[..]));
        assert_eq!(cookie(h, b"x"), Some(&b"\"q\""[..]));
        assert_eq!(cookie(h, b"theme"), Some(&b"dark"[..]));
        assert_eq!(cookie(h, b"missing"), None);
        assert_eq!(cookie(b"sidx=1; xsid=2", b"sid"), None);
    }

    #[test]
    fn percent_decoding_keeps_malformed() {
        let mut out = Vec::new();
        percent_decode(b"%zz%4", &mut out);
        assert_eq!(out, b"%zz%4");
    }
}
