//! Config of `request-termination` (Kong's keys): the fixed answer a route, service or consumer
//! gets instead of the upstream's (maintenance, a blocked consumer, a retired endpoint).
//!
//! Checked once here, each problem at its key: the status is a final one (200-599; a 1xx is
//! interim and would leave the request unanswered); `message` and `body` are exclusive;
//! `content_type` comes with `body` and is a valid header value; 204, 205 and 304 carry no body; and
//! `trigger` is a header-name token. Kong's `echo = true` (the request, credentials included,
//! sent back to the client) is refused.

use super::plugins::is_token;
use super::{edge, in_range, push};
use crate::config::locate::{KeyPath, Problem};
use crate::config::model::TerminationDef;
use crate::config::raw::plugins::RawTermination;

/// Kong's default for a `body` given without `content_type`.
pub const DEFAULT_CONTENT_TYPE: &str = "application/json; charset=utf-8";

pub fn request_termination(
    raw: Option<&RawTermination>,
    path: &KeyPath,
    problems: &mut Vec<Problem>,
) -> Option<TerminationDef> {
    let default = RawTermination::default();
    let c = raw.unwrap_or(&default);
    let cp = path.key("config");
    let before = problems.len();
    let status_code = match c.status_code {
        None => 503,
        Some(v) if (100..200).contains(&v.0) => {
            push(
                problems,
                cp.key("status_code"),
                format!(
                    "{} is an interim (1xx) status: the request would still need its answer; \
                     use 200..=599",
                    v.0
                ),
            );
            503
        }
        Some(v) => in_range(
            problems,
            cp.key("status_code"),
            "status_code",
            v.0,
            200,
            599,
        )
        .and_then(|n| u16::try_from(n).ok())
        .unwrap_or(503),
    };
    if c.message.is_some() && c.body.is_some() {
        push(
            problems,
            cp.key("body"),
            "`message` and `body` are exclusive: `message` answers {\"message\": …} as JSON, \
             `body` answers these bytes as `content_type`",
        );
    }
    if matches!(status_code, 204 | 205 | 304) {
        for (key, set) in [("message", c.message.is_some()), ("body", c.body.is_some())] {
            if set {
                push(
                    problems,
                    cp.key(key),
                    format!("a {status_code} answer carries no body; drop `{key}`"),
                );
            }
        }
    }
    let content_type = match (&c.content_type, &c.body) {
        (None, _) => Some(DEFAULT_CONTENT_TYPE.to_owned()),
        (Some(_), None) => {
            push(
                problems,
                cp.key("content_type"),
                "goes with `body` (a `message` answer is always application/json)",
            );
            None
        }
        (Some(t), Some(_)) => match edge::header_value(problems, cp.key("content_type"), t) {
            Some(t) if t.is_empty() => {
                push(problems, cp.key("content_type"), "must not be empty");
                None
            }
            t => t,
        },
    };
    if let Some(t) = &c.trigger {
        if !is_token(t) {
            push(
                problems,
                cp.key("trigger"),
                format!(
                    "{t:?} is not a header or query parameter name this can match (letters, \
                     digits and !#$%&'*+-.^_`|~)"
                ),
            );
        }
    }
    if c.echo == Some(true) {
        push(
            problems,
            cp.key("echo"),
            "`echo` is not supported: it sends the request back to the client, credentials \
             included (the access log records requests)",
        );
    }
    (problems.len() == before).then_some(())?;
    Some(TerminationDef {
        status_code,
        message: c.message.clone(),
        body: c.body.clone(),
        content_type: content_type?,
        trigger: c.trigger.clone(),
    })
}
