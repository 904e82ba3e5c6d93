//! The request's part in choosing its target: the key a `consistent_hash` upstream hashes, and the
//! first pick by the upstream's algorithm (`connect` then fails over from there).
//!
//! Invariants: nothing here allocates or awaits; the balancer's `RefCell` is borrowed only inside
//! `first_pick`. The key is taken from the request head before any body is read (a streamed body
//! reuses the buffer the head sits in). The in-flight counts (least_conn's load, `max_conns`' room)
//! are the worker's `InFlightTable` counters, which the snapshot lists per target and a request
//! holds from its pick to its end.

use std::net::IpAddr;

use super::{ClientIo, Conn, HeadView};
use crate::auth::client_ip;
use crate::config::model::{Balance, HashOn, UpstreamDef};
use crate::http::query;
use crate::router::RequestView;
use crate::upstream::hashing;
use crate::upstream::inflight::InFlight;
use crate::worker::Snapshot;

impl<S: ClientIo> Conn<S> {
    /// This request's consistent-hash key for `ups`: `None` for other algorithms, and for a request
    /// without the value hashed on (no such header, cookie or query parameter, an empty one, no
    /// consumer or only the anonymous one), which is balanced round-robin unless `hash_fallback =
    /// "ip"`, or given a cookie of its own with `hash_on_cookie_path`.
    pub(super) fn balance_key(&mut self, ups: &UpstreamDef) -> Option<u64> {
        let Balance::Hash { on, fallback_ip } = &ups.balance else {
            return None;
        };
        let view = HeadView::new(&self.s.head, &self.buf);
        let value = match on {
            HashOn::Ip => None,
            HashOn::Consumer => {
                let id = self.s.chain.id;
                id.consumer
                    .filter(|_| !id.anonymous)
                    .and_then(|c| self.snap.auth.consumers.get(c))
                    .map(|c| c.username.as_bytes())
            }
            HashOn::Header(name) => view.header(name.as_bytes()),
            HashOn::Cookie { name, .. } => view
                .values(b"cookie")
                .find_map(|v| crate::auth::steps::cookie(v, name.as_bytes())),
            HashOn::QueryArg(name) => {
                let query = self.s.head.query.map(|q| q.get(&self.buf));
                let value = query
                    .and_then(|q| crate::auth::steps::query_param(q, name.as_bytes()))
                    .map(|(_, _, v)| v);
                // Form-decoded, as the application reads it: `a+b` and `a%20b` are one key.
                if let Some(v) = value.filter(|v| !v.trim_ascii().is_empty()) {
                    return Some(hashing::hash_bytes(query::decode(v)));
                }
                None
            }
            HashOn::Path => Some(&self.s.path[..]),
        };
        if let Some(v) = value.filter(|v| !v.trim_ascii().is_empty()) {
            return Some(hashing::hash(v));
        }
        match on {
            HashOn::Cookie {
                name,
                set: Some(path),
            } => Some(self.sticky_cookie(name, path)),
            _ if *fallback_ip || *on == HashOn::Ip => Some(hashing::hash_ip(self.balance_ip())),
            _ => None,
        }
    }

    /// A new sticky-session cookie for a request without one: a random value (a UUID v4's 32 hex
    /// digits, from the thread-local generator correlation-id uses: no syscall, no allocation),
    /// set on the answer whatever it is (an error too: the client keeps its target for the retry),
    /// and the key it hashes to. Kong's attributes (`HttpOnly; SameSite=Lax`,
    /// no expiry: the session lasts as long as the browser's), plus `Secure` on a TLS listener.
    fn sticky_cookie(&mut self, name: &str, path: &str) -> u64 {
        let mut text = [0u8; uuid::fmt::Simple::LENGTH];
        let value = uuid::Uuid::new_v4().simple().encode_lower(&mut text);
        let out = &mut self.s.plugin_headers;
        out.extend_from_slice(b"Set-Cookie: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'=');
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"; Path=");
        out.extend_from_slice(path.as_bytes());
        out.extend_from_slice(b"; HttpOnly; SameSite=Lax");
        if self.listener.tls {
            out.extend_from_slice(b"; Secure");
        }
        out.extend_from_slice(b"\r\n");
        hashing::hash(value.as_bytes())
    }

    /// The client address ip-restriction and rate limiting see (behind `trusted_proxies`, the one
    /// they forwarded for), also on a route whose plugin chain did not run to work it out.
    fn balance_ip(&self) -> IpAddr {
        let trusted = &self.snap.auth.trusted_proxies;
        if trusted.is_empty() {
            return self.peer.ip();
        }
        client_ip::of_head(self.peer.ip(), trusted, &self.s.head, &self.buf)
    }
}

/// The first target to try for a request to upstream `u` by its algorithm, among the targets with
/// room under their `max_conns` that `usable` accepts. Failing that: a usable target even if full
/// (`connect` passes full ones over and answers 503, rather than sending the request to a target
/// health checking took out), and only with no usable target at all, one with room (health
/// checking fails open, as nginx does and Envoy's panic mode; a limit never does). `all`: every
/// target is usable (no health lookups).
pub(super) fn first_pick(
    snap: &Snapshot,
    ups: &UpstreamDef,
    u: usize,
    key: Option<u64>,
    all: bool,
    usable: &mut impl FnMut(usize) -> bool,
) -> usize {
    let room = |t| !ups.capped || has_room(snap, u, t);
    // Only `ok` and `healthy` look at health (`usable` is `FnMut`: it caches the clock).
    let usable = std::cell::RefCell::new(usable);
    let healthy = |t| all || (usable.borrow_mut())(t);
    let ok = |t| room(t) && healthy(t);
    if let (Some(hashing), Some(key)) = (&ups.hashing, key) {
        return hashing
            .pick_among(key, &mut |t| ok(t))
            .or_else(|| hashing.pick_among(key, &mut |t| healthy(t)))
            .or_else(|| hashing.pick_among(key, &mut |t| room(t)))
            .unwrap_or(0);
    }
    let Some(b) = snap.balancers.get(u) else {
        return 0;
    };
    let mut b = b.borrow_mut();
    if ups.balance == Balance::LeastConn {
        let load = |t| u64::from(snap.load(u, t).map_or(0, |l| l.count.get()));
        return b
            .pick_least(load, ok)
            .or_else(|| b.pick_least(load, healthy))
            .or_else(|| b.pick_least(load, room))
            .unwrap_or(0);
    }
    if all && !ups.capped {
        return b.pick();
    }
    b.pick_where(ok)
        .or_else(|| b.pick_where(healthy))
        .or_else(|| b.pick_where(room))
        .unwrap_or(0)
}

/// Whether target `t` of upstream `u` is below this worker's share of its `max_conns`.
pub(super) fn has_room(snap: &Snapshot, u: usize, t: usize) -> bool {
    snap.load(u, t).is_none_or(|l| l.count.get() < l.cap)
}

/// A hold on target `t` of upstream `u` for a least_conn upstream or a target with `max_conns`;
/// `None` for the others (no counter to keep).
pub(super) fn hold(snap: &Snapshot, u: usize, t: usize) -> Option<InFlight> {
    snap.load(u, t).map(|l| InFlight::take(&l.count))
}
