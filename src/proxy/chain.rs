//! Running a route's plugin chain for one request, between routing and forwarding.
//!
//! The chain is a slice of `Plugin` values walked by priority (`plugins::Walk`, which merges in
//! the identified consumer's plugins); each step is a `match` arm calling into `auth::steps` or the
//! limiter. Steps that must wait (a bcrypt check on the verifier pool) are awaited inline; no
//! `RefCell` borrow is held across those awaits.
//!
//! Invariants: `ChainState` is reset at the start of every request, so identity and edits never
//! leak from one request on a keep-alive connection to the next; a plugin's answer (401, 403, 429,
//! …) is written with `plugins::write_response` and sent through `Conn::send_answer`, like every
//! other gateway-generated response.

use std::net::IpAddr;

use super::{ClientIo, Conn, HeadView, Next, Prepared};
use crate::auth::set::AuthSet;
use crate::auth::steps::{self, Basic, Edits, Identity, Req};
use crate::auth::{client_ip, forward, verifier};
use crate::limit::{self, Decision, RequestInfo};
use crate::plugins::{self, Flow, Plugin, Walk};
use crate::proxy::head::ResponseEdits;
use crate::worker::Shard;

/// Per-request plugin state, kept in the pooled `Scratch` so its buffers are reused.
#[derive(Debug)]
pub struct ChainState {
    /// Limiter key being built.
    key: Vec<u8>,
    /// Decoded credentials (a query key, a Basic payload); wiped after use.
    secret: Vec<u8>,
    pub edits: Edits,
    pub id: Identity,
    pub client_ip: IpAddr,
    /// Forward-auth: the auth answer's buffers, and the header lines it approved.
    fwd: forward::Scratch,
    fwd_headers: Vec<u8>,
    /// The `X-Forwarded-Uri` sent to the auth service.
    fwd_uri: Vec<u8>,
    /// Header transforms due on this request (indices into `plugins::Runtime`), applied when the
    /// heads are written.
    pub request_tf: Option<usize>,
    pub response_tf: Option<usize>,
    /// The cors plugin ran: the upstream's own `Access-Control-*` headers are dropped.
    pub cors_ran: bool,
    /// A rate-limiting instance wrote its headers: the upstream's own are dropped.
    pub limit_headers: bool,
    /// The correlation-id instance that echoes its id (index into `plugins::Runtime`): the
    /// upstream's own header of that name is dropped.
    pub echo_id: Option<usize>,
    /// The compression instance that ran (index into `plugins::Runtime::compression`), and
    /// whether the client takes gzip.
    pub compress: Option<usize>,
    pub gzip_ok: bool,
}

impl Default for ChainState {
    fn default() -> ChainState {
        ChainState {
            key: Vec::new(),
            secret: Vec::new(),
            edits: Edits::default(),
            id: Identity::default(),
            client_ip: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            fwd: forward::Scratch::default(),
            fwd_headers: Vec::new(),
            fwd_uri: Vec::new(),
            request_tf: None,
            response_tf: None,
            cors_ran: false,
            limit_headers: false,
            echo_id: None,
            compress: None,
            gzip_ok: false,
        }
    }
}

impl ChainState {
    fn reset(&mut self, client_ip: IpAddr) {
        self.edits.clear();
        self.id = Identity::default();
        self.client_ip = client_ip;
        self.request_tf = None;
        self.response_tf = None;
        self.cors_ran = false;
        self.limit_headers = false;
        self.echo_id = None;
        self.compress = None;
        self.gzip_ok = false;
    }

    /// What this request's plugins do to an answer relayed to the client: `extra` (the lines they
    /// add), the upstream's CORS and echoed-id fields dropped, and with `transform` the
    /// response-transformer's edits (upstream responses only, not upgrades or auth denials).
    pub fn response_edits<'a>(
        &self,
        extra: &'a [u8],
        rt: &'a plugins::Runtime,
        transform: bool,
    ) -> ResponseEdits<'a> {
        ResponseEdits {
            extra,
            drop_cors: self.cors_ran,
            drop_rate_limit: self.limit_headers,
            replaced: self
                .echo_id
                .and_then(|i| rt.correlation.get(i))
                .and_then(|c| c.echoed()),
            transform: self
                .response_tf
                .filter(|_| transform)
                .and_then(|i| rt.response.get(i)),
            gzip: false,
            vary: false,
        }
    }

    /// Overwrites decoded credential bytes so they do not linger in a pooled buffer.
    fn wipe_secret(&mut self) {
        self.secret.fill(0);
        self.secret.clear();
    }
}

impl<S: ClientIo> Conn<S> {
    /// Runs the route's plugin chain. `Some` when a plugin answered the request itself.
    pub(super) async fn run_plugins(&mut self, shard: &Shard, p: &Prepared) -> Option<Next> {
        self.s.plugin_headers.clear();
        self.s.chain.reset(self.peer.ip());
        let snap = self.snap.clone();
        if snap.chains.routes.get(p.route).is_none_or(|c| c.is_empty()) {
            return None;
        }
        let auth = &*snap.auth;
        if !auth.trusted_proxies.is_empty() {
            self.s.chain.client_ip = client_ip::of_head(
                self.peer.ip(),
                &auth.trusted_proxies,
                &self.s.head,
                &self.buf,
            );
        }
        let service = snap.config.routes.get(p.route).map_or(0, |r| r.service);
        let now_ms = limit::now_ms();
        let mut walk = Walk::default();
        // Whether a forward-auth answer ends the connection, taken once for the whole chain (before
        // `st` borrows the scratch): no step reads the body, and a drain that starts meanwhile is
        // seen by the next read_head.
        let closing = self.closing(shard, p.client_close);
        loop {
            let st = &mut self.s.chain;
            let Some(step) = walk.next(&snap.chains, p.route, st.id.consumer) else {
                break;
            };
            let req = Req {
                head: &self.s.head,
                buf: &self.buf,
                client_ip: st.client_ip,
                overridden: !self.s.override_method.is_empty(),
            };
            let resp_headers = &mut self.s.plugin_headers;
            let flow = match step {
                Plugin::CorrelationId(n) => {
                    if let Some(rt) = snap.chains.rt.correlation.get(n) {
                        if rt.echoed().is_some() {
                            st.echo_id = Some(n);
                        }
                        plugins::correlation::on_request(
                            rt,
                            &self.s.head,
                            &self.buf,
                            &mut st.edits,
                            resp_headers,
                            self.log_on.then_some(&mut self.s.log),
                        );
                    }
                    Flow::Continue
                }
                Plugin::Cors(n) => {
                    let Some(rt) = snap.chains.rt.cors.get(n) else {
                        continue;
                    };
                    st.cors_ran = true;
                    match plugins::cors::on_request(rt, &self.s.head, &self.buf, resp_headers) {
                        plugins::cors::Outcome::AnswerPreflight => Flow::Respond {
                            status: 204,
                            body: b"",
                        },
                        plugins::cors::Outcome::Continue => Flow::Continue,
                    }
                }
                Plugin::RequestTransformer(n) => {
                    st.request_tf = Some(n);
                    Flow::Continue
                }
                Plugin::Compression(n) => {
                    st.compress = Some(n);
                    st.gzip_ok = plugins::compression::accepts_gzip(
                        HeadView::new(&self.s.head, &self.buf).values(b"accept-encoding"),
                    );
                    Flow::Continue
                }
                Plugin::ResponseTransformer(n) => {
                    st.response_tf = Some(n);
                    // JSON body edits need a body they can read.
                    st.edits.whole_body =
                        matches!(snap.chains.rt.response_json.get(n), Some(Some(_)));
                    Flow::Continue
                }
                Plugin::RequestTermination(n) => match snap.chains.rt.termination.get(n) {
                    Some(rt) if rt.applies(&self.s.head, &self.buf) => Flow::RespondAs {
                        status: rt.status,
                        content_type: &rt.content_type,
                        body: &rt.body,
                    },
                    _ => Flow::Continue,
                },
                Plugin::RateLimiting { instance } => {
                    let Some(limiters) = snap.limiters.as_deref() else {
                        continue;
                    };
                    let Some(by) = limiters.limit_by(instance) else {
                        continue;
                    };
                    let info = ReqInfo {
                        client_ip: st.client_ip,
                        view: HeadView::new(&self.s.head, &self.buf),
                        path: &self.s.path,
                        route: snap
                            .config
                            .routes
                            .get(p.route)
                            .map_or(&[][..], |r| r.name.as_bytes()),
                        service: snap
                            .config
                            .services
                            .get(service)
                            .map_or(&[][..], |s| s.name.as_bytes()),
                        auth,
                        id: st.id,
                    };
                    limit::build_key(by, &info, &mut st.key);
                    let written = resp_headers.len();
                    let decision = limiters.check(instance, &st.key, now_ms, resp_headers);
                    st.limit_headers |= resp_headers.len() > written;
                    match decision {
                        Decision::Reject { status, body } => Flow::Respond { status, body },
                        _ => Flow::Continue,
                    }
                }
                Plugin::KeyAuth(n) => match auth.key_auth.get(n) {
                    Some(rt) => {
                        let f = steps::key_auth(
                            rt,
                            auth,
                            &req,
                            &mut st.id,
                            &mut st.edits,
                            &mut st.secret,
                            resp_headers,
                        );
                        st.wipe_secret();
                        f
                    }
                    None => Flow::Continue,
                },
                Plugin::BasicAuth(n) => {
                    let (Some(rt), Some(cache)) =
                        (auth.basic_auth.get(n), snap.basic_caches.get(n))
                    else {
                        continue;
                    };
                    let first = steps::basic_auth(
                        rt,
                        auth,
                        &req,
                        &mut st.id,
                        &mut st.edits,
                        &cache.borrow(),
                        &mut st.secret,
                        resp_headers,
                    );
                    match first {
                        Basic::Done(f) => {
                            st.wipe_secret();
                            f
                        }
                        Basic::Verify {
                            cred,
                            key,
                            pass,
                            header,
                        } => {
                            let password =
                                st.secret.get(pass.0..pass.1).unwrap_or_default().to_vec();
                            st.wipe_secret();
                            let hash = cred
                                .and_then(|c| auth.basic_creds.get(c))
                                .map(|c| c.hash.clone());
                            // One sprayer may not queue work ahead of everyone else (see
                            // `verifier`); the slot is held until the verdict is in.
                            let slot = verifier::take_slot(st.client_ip);
                            let verdict = match slot {
                                Some(_) => verifier::verify(hash, rt.dummy_cost, password).await,
                                None => {
                                    let mut password = password;
                                    password.fill(0);
                                    verifier::Verdict::Busy
                                }
                            };
                            drop(slot);
                            let st = &mut self.s.chain;
                            steps::basic_verified(
                                rt,
                                auth,
                                verdict,
                                cred,
                                key,
                                header,
                                &mut st.id,
                                &mut st.edits,
                                &mut cache.borrow_mut(),
                                &mut self.s.plugin_headers,
                            )
                        }
                    }
                }
                Plugin::Acl(n) => match auth.acl.get(n) {
                    Some(rt) => steps::acl(rt, &st.id),
                    None => Flow::Continue,
                },
                Plugin::IpRestriction { at: n, .. } => match auth.ip.get(n) {
                    Some(rt) => steps::ip_restriction(rt, st.client_ip),
                    None => Flow::Continue,
                },
                Plugin::ForwardAuth(n) => {
                    let (Some(rt), Some(&slot)) = (auth.forward.get(n), snap.forward_slots.get(n))
                    else {
                        continue;
                    };
                    // Whatever happens next (skipped for a consumer another plugin identified, any
                    // verdict, fail_open), client copies of the headers the auth service vouches
                    // for never reach the upstream: set before the skip, or a key holder could
                    // send `X-User-Id: admin` past an `anonymous` forward-auth (found by a review).
                    st.edits.skip_names = Some(rt.copied.clone());
                    // Like every auth plugin with `anonymous`: skipped once a real consumer is known.
                    if rt.conf.anonymous.is_some() && st.id.authenticated() {
                        continue;
                    }
                    let buf = &self.buf;
                    let head = &self.s.head;
                    // The auth service judges the client's request as routed: the normalized
                    // path (never the raw target, or `/public/../admin` would be judged as
                    // /public), and the query without a key key-auth hid. A request-transformer's
                    // edits come after it, as in Kong (auth runs first).
                    st.fwd_uri.clear();
                    st.fwd_uri.extend_from_slice(&self.s.path);
                    if let Some(q) = head.query.map(|q| q.get(buf)) {
                        steps::push_query(&mut st.fwd_uri, q, st.edits.query_cut);
                    }
                    let headers = forward::SpanHeaders {
                        headers: &head.headers,
                        buf,
                        added: &st.edits.add,
                    };
                    // The method the upstream will run: an override's, when there is one.
                    let method = match self.s.override_method.as_slice() {
                        [] => head.method.get(buf),
                        m => m,
                    };
                    let areq = forward::AuthRequest {
                        method,
                        uri: &st.fwd_uri,
                        host: head
                            .effective_host()
                            .map(|h| h.get(buf))
                            .unwrap_or_default(),
                        proto: if self.listener.tls { b"https" } else { b"http" },
                        client_ip: st.client_ip,
                        headers: &headers,
                        client_close: closing,
                        http10: p.http10,
                        // A denial answers the client: it carries CORS and the echoed id like
                        // the gateway's own 401s.
                        answer: st.response_edits(&self.s.plugin_headers, &snap.chains.rt, false),
                    };
                    let mut copied = std::mem::take(&mut st.fwd_headers);
                    copied.clear();
                    self.s.out.clear();
                    let verdict = forward::check(
                        &shard.pool,
                        slot,
                        &rt.conf.def,
                        &areq,
                        &mut st.fwd,
                        &mut copied,
                        &mut self.s.out,
                    )
                    .await;
                    let st = &mut self.s.chain;
                    match verdict {
                        forward::Verdict::Allow => {
                            st.edits.add.extend_from_slice(&copied);
                            st.fwd_headers = copied;
                            Flow::Continue
                        }
                        forward::Verdict::Deny { .. } if rt.conf.anonymous.is_some() => {
                            // A refusal identifies the anonymous consumer instead of being relayed.
                            st.fwd_headers = copied;
                            if let Some(a) = rt.conf.anonymous {
                                st.id.set_anonymous(a);
                            }
                            Flow::Continue
                        }
                        forward::Verdict::Deny { status, close } => {
                            st.fwd_headers = copied;
                            self.detail = Some(Plugin::ForwardAuth(n).answered_by());
                            // The auth service's answer is already in `out`, relayed as it is.
                            let sent = self.send_answer(status, close).await;
                            return Some(if sent && !close {
                                Next::KeepAlive
                            } else {
                                Next::Close
                            });
                        }
                        forward::Verdict::Unavailable { why } => {
                            st.fwd_headers = copied;
                            crate::warn_every!(
                                crate::proxy::LOG_EVERY,
                                "forward-auth unavailable reason=\"{}\" fail_open={}",
                                why,
                                rt.conf.fail_open
                            );
                            self.detail = Some("forward-auth service unavailable");
                            forward_failed(rt.conf.fail_open, rt.conf.unavailable_status)
                        }
                        forward::Verdict::Timeout => {
                            st.fwd_headers = copied;
                            crate::warn_every!(
                                crate::proxy::LOG_EVERY,
                                "forward-auth timed out fail_open={}",
                                rt.conf.fail_open
                            );
                            self.detail = Some("forward-auth service timed out");
                            forward_failed(rt.conf.fail_open, rt.conf.timeout_status)
                        }
                    }
                }
                Plugin::Jwt(n) => {
                    let (Some(rt), Some(cache)) = (auth.jwt.get(n), snap.jwt_caches.get(n)) else {
                        continue;
                    };
                    steps::jwt(
                        rt,
                        auth,
                        &req,
                        &mut st.id,
                        &mut cache.borrow_mut(),
                        now_ms / 1000,
                        resp_headers,
                    )
                }
            };
            if let Some((status, content_type, body)) = flow.answer() {
                // A sharper reason set by the step (the auth service failed) stays.
                self.detail.get_or_insert(step.answered_by());
                let close = closing;
                self.s.out.clear();
                plugins::write_response(
                    &mut self.s.out,
                    status,
                    &self.s.plugin_headers,
                    content_type,
                    body,
                    close,
                );
                let sent = self.send_answer(status, close).await;
                return Some(if sent && !close {
                    Next::KeepAlive
                } else {
                    Next::Close
                });
            }
        }
        let st = &mut self.s.chain;
        steps::identity_headers(auth, &st.id, &mut st.edits.add);
        None
    }
}

/// The auth service failed: let the request through (`fail_open`) or answer `status`.
fn forward_failed(fail_open: bool, status: u16) -> Flow<'static> {
    if fail_open {
        return Flow::Continue;
    }
    Flow::Respond {
        status,
        body: if status == 504 {
            b"{\"message\":\"The authentication service timed out\"}"
        } else {
            b"{\"message\":\"The authentication service is unavailable\"}"
        },
    }
}

/// What the limiter keys on, straight from the request and the identity auth found.
struct ReqInfo<'a> {
    client_ip: IpAddr,
    view: HeadView<'a>,
    path: &'a [u8],
    /// The route's and the service's names.
    route: &'a [u8],
    service: &'a [u8],
    auth: &'a AuthSet,
    id: Identity,
}

impl RequestInfo for ReqInfo<'_> {
    fn client_ip(&self) -> IpAddr {
        self.client_ip
    }
    fn header(&self, name_lower: &[u8]) -> Option<&[u8]> {
        use crate::router::RequestView as _;
        self.view.header(name_lower)
    }
    fn path(&self) -> &[u8] {
        self.path
    }
    fn route(&self) -> &[u8] {
        self.route
    }
    fn service(&self) -> &[u8] {
        self.service
    }
    fn consumer(&self) -> Option<&[u8]> {
        let c = self.id.consumer?;
        self.auth.consumers.get(c).map(|c| c.username.as_bytes())
    }
    fn credential(&self) -> Option<&[u8]> {
        if self.id.anonymous {
            return None;
        }
        self.id.credential.map(|c| self.auth.credential_id(c))
    }
    fn credential_kind(&self) -> u8 {
        use crate::auth::set::CredRef;
        match self.id.credential {
            Some(CredRef::Basic(_)) => b'b',
            Some(CredRef::Jwt(_)) => b'j',
            _ => b'k',
        }
    }
}
