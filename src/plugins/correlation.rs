//! `correlation-id`: every request reaches the upstream with exactly one id header, kept from the
//! client when sane, generated (UUID v4) otherwise, and echoed to the client when asked.
//!
//! A client's value is kept when it is the only one and is 1 to `MAX_LEN` visible ASCII bytes;
//! anything else (empty, overlong, spaces or control bytes, repeated header, or a name the client's
//! `Connection` lists, which would not be forwarded) is dropped and replaced
//! by a generated id, so logs and upstreams never see a giant or ambiguous id. Kong keeps any value;
//! we are stricter because the id ends up in log lines.
//!
//! Ids come from the `uuid` crate (`v4` + `fast-rng`): a thread-local ChaCha generator from `rand`,
//! seeded from the OS, so ids are unpredictable and unique across workers and processes without a
//! syscall per request; the 36 characters are formatted into a stack array and copied into the
//! reused edits buffer: no allocation.

use crate::auth::steps::Edits;
use crate::config::model::CorrelationIdDef;
use crate::http::headers::{eq_ignore_case, is_listed};
use crate::http::parse::RequestHead;

/// Longest client-supplied id kept.
pub const MAX_LEN: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorrelationRt {
    /// As configured (written this way when generated or echoed).
    name: Box<[u8]>,
    echo: bool,
}

impl CorrelationRt {
    pub fn new(def: &CorrelationIdDef) -> CorrelationRt {
        CorrelationRt {
            name: def.header_name.as_bytes().into(),
            echo: def.echo_downstream,
        }
    }

    /// The header name the plugin writes on responses itself, when it echoes: the upstream's own
    /// copies are dropped (Kong sets the header, it does not add a second one).
    pub fn echoed(&self) -> Option<&[u8]> {
        self.echo.then_some(&self.name[..])
    }
}

/// Whether a client's id is kept as it is.
pub fn acceptable(v: &[u8]) -> bool {
    (1..=MAX_LEN).contains(&v.len()) && v.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// Runs the step: edits towards the upstream, the echo line in `resp_headers`, and with the access
/// log on, `"correlation_id":"…",` appended to the line's staged request part (`log`): the id the
/// upstream saw, kept or generated, so the gateway's log line and the upstream's logs share a key.
pub fn on_request(
    rt: &CorrelationRt,
    head: &RequestHead,
    buf: &[u8],
    edits: &mut Edits,
    resp_headers: &mut Vec<u8>,
    log: Option<&mut Vec<u8>>,
) {
    let mut found: Option<&[u8]> = None;
    let mut count = 0usize;
    for h in &head.headers {
        if eq_ignore_case(h.name.get(buf), &rt.name) {
            count += 1;
            found.get_or_insert(h.value.get(buf));
        }
    }
    // A name the client's `Connection` nominates is hop-by-hop: the head writer drops it, so
    // keeping it would leave the upstream without an id.
    let nominated = !head.conn_tokens.is_empty() && is_listed(&rt.name, &head.conn_tokens, buf);
    if let (1, Some(v), false) = (count, found, nominated) {
        if acceptable(v) {
            if rt.echo {
                push_line(resp_headers, &rt.name, v);
            }
            log_id(log, v);
            return;
        }
    }
    if count > 0 {
        for (i, h) in head.headers.iter().enumerate() {
            if eq_ignore_case(h.name.get(buf), &rt.name) {
                if let Ok(i) = u16::try_from(i) {
                    edits.skip.push(i);
                }
            }
        }
    }
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
    push_line(&mut edits.add, &rt.name, id.as_bytes());
    if rt.echo {
        push_line(resp_headers, &rt.name, id.as_bytes());
    }
    log_id(log, id.as_bytes());
}

fn log_id(log: Option<&mut Vec<u8>>, id: &[u8]) {
    if let Some(out) = log {
        out.extend_from_slice(b"\"correlation_id\":");
        // Escaped: a kept client id may hold a quote or a backslash.
        crate::access_log::format::push_str(out, id);
        out.push(b',');
    }
}

fn push_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_kept() {
        assert!(acceptable(b"abc-123"));
        assert!(acceptable(&[b'a'; MAX_LEN]));
        assert!(!acceptable(&[b'a'; MAX_LEN + 1]));
        assert!(!acceptable(b""));
        assert!(!acceptable(b"a b"));
        assert!(!acceptable(b"a\x01"));
    }
}
