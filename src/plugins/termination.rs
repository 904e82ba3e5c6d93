//! `request-termination`: answers a request with a fixed status and body instead of proxying it
//! (Kong's plugin). Its uses: a service or route down for maintenance, a consumer blocked, an
//! endpoint retired, all by a config reload.
//!
//! It runs last (Kong's priority 2), after auth, ACLs and rate limiting: a blocked consumer is
//! still identified, counted and logged as that consumer, and CORS and correlation-id headers
//! still go out on the answer.
//!
//! The answer's bytes are built once at load. Per request the only work is the optional trigger
//! lookup: one pass over the header names and one over the query, with no allocation.

use crate::config::model::TerminationDef;
use crate::http::headers::eq_ignore_case;
use crate::http::parse::RequestHead;
use crate::http::query;

/// One instance's answer.
#[derive(Debug)]
pub struct TerminationRt {
    pub status: u16,
    /// The `Content-Type` value; unused for 204 and 304, which carry no body.
    pub content_type: Box<[u8]>,
    pub body: Box<[u8]>,
    /// Only requests with a header (any case) or query parameter (decoded, exact) of this name
    /// are answered.
    trigger: Option<Box<[u8]>>,
}

impl TerminationRt {
    pub fn new(d: &TerminationDef) -> TerminationRt {
        let (content_type, body): (&[u8], Box<[u8]>) = match (&d.body, &d.message) {
            (Some(b), _) => (d.content_type.as_bytes(), b.as_bytes().into()),
            (None, m) => (
                b"application/json",
                super::json_message(m.as_deref().unwrap_or(super::reason(d.status_code))),
            ),
        };
        TerminationRt {
            status: d.status_code,
            content_type: content_type.into(),
            body: if matches!(d.status_code, 204 | 205 | 304) {
                Box::default()
            } else {
                body
            },
            trigger: d.trigger.as_deref().map(|t| t.as_bytes().into()),
        }
    }

    /// Whether this request gets the answer: always without a trigger; with one, when the request
    /// carries a header or a query parameter of that name (an empty value counts, as in Kong).
    pub fn applies(&self, head: &RequestHead, buf: &[u8]) -> bool {
        let Some(t) = self.trigger.as_deref() else {
            return true;
        };
        head.headers
            .iter()
            .any(|h| eq_ignore_case(h.name.get(buf), t))
            || head.query.is_some_and(|q| {
                query::params(q.get(buf)).any(|p| query::decode(p.name).eq(t.iter().copied()))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse::parse_request;
    use crate::http::Limits;

    fn def(trigger: Option<&str>) -> TerminationDef {
        TerminationDef {
            status_code: 503,
            message: None,
            body: None,
            content_type: String::new(),
            trigger: trigger.map(str::to_owned),
        }
    }

    fn applies(rt: &TerminationRt, req: &[u8]) -> bool {
        let mut head = RequestHead::default();
        let limits = Limits {
            max_header_bytes: 8192,
            max_uri_bytes: 2048,
            max_headers: 100,
        };
        parse_request(req, &limits, &mut head).expect("parses");
        rt.applies(&head, req)
    }

    #[test]
    fn the_default_answer_is_the_reason_phrase_as_json() {
        let rt = TerminationRt::new(&def(None));
        assert_eq!(rt.status, 503);
        assert_eq!(&*rt.content_type, b"application/json");
        assert_eq!(&*rt.body, b"{\"message\":\"Service Unavailable\"}\n");
        assert!(applies(&rt, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
    }

    #[test]
    fn a_message_is_escaped_and_a_body_goes_as_written() {
        let mut d = def(None);
        d.message = Some("say \"hi\"\\\n".into());
        assert_eq!(
            &*TerminationRt::new(&d).body,
            b"{\"message\":\"say \\\"hi\\\"\\\\\\u000a\"}\n"
        );
        d.message = None;
        d.body = Some("<h1>down</h1>".into());
        d.content_type = "text/html".into();
        let rt = TerminationRt::new(&d);
        assert_eq!(&*rt.body, b"<h1>down</h1>");
        assert_eq!(&*rt.content_type, b"text/html");
        d.status_code = 204;
        assert!(TerminationRt::new(&d).body.is_empty());
    }

    #[test]
    fn a_trigger_matches_a_header_in_any_case_or_a_decoded_query_name() {
        let rt = TerminationRt::new(&def(Some("X-Debug")));
        assert!(applies(
            &rt,
            b"GET / HTTP/1.1\r\nHost: a\r\nx-debug:\r\n\r\n"
        ));
        assert!(applies(&rt, b"GET /?X-Debug HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(applies(
            &rt,
            b"GET /?a=1&X%2DDebug=0 HTTP/1.1\r\nHost: a\r\n\r\n"
        ));
        // Query names are exact, as Kong's `get_query_arg`.
        assert!(!applies(
            &rt,
            b"GET /?x-debug=1 HTTP/1.1\r\nHost: a\r\n\r\n"
        ));
        assert!(!applies(
            &rt,
            b"GET /?a=X-Debug HTTP/1.1\r\nHost: a\r\nX-Debugger: 1\r\n\r\n"
        ));
    }
}
