//! `request-transformer` and `response-transformer`: header edits compiled once at load, applied
//! while a head is written.
//!
//! Kong's order, per header: remove, rename, replace (only if present; one line replaces every
//! occurrence), then after the last header add (only if no header of that name was written) and
//! append (always). A rename overwrites: when the head has the rename's source, its own header of
//! the target name is dropped (Kong sets the target to the source's value), so the upstream never
//! gets both; `start` finds those sources before the first header is written. Names and values were checked at load (`config::validate::edge`): no framing,
//! hop-by-hop, Host or identity names, no CR/LF/NUL. Every line to write is prebuilt
//! (`Name: value\r\n`), so applying a transform is compares and copies into the head buffer the
//! writer already reuses; per-request state is two `u64` bitmasks on the stack (`Seen`).
//!
//! A transform only sees the headers it is handed: on the request side the client's plain headers
//! (not the lines plugins add, such as consumer headers or a generated correlation id), on the
//! response side the upstream's end-to-end headers (not the gateway's own lines).
//!
//! A request-transformer also edits the upstream request target: its query string
//! (`query_transform`) and, with `replace.uri`, its path (`RequestTransform`); and with
//! `http_method`, the method (except a HEAD's).

use crate::config::model::{EditsDef, TransformDef};
use crate::http::headers::eq_ignore_case;
use crate::plugins::query_transform::QueryTransform;

/// (name, bytes): a rename's (from, to) or an edit's (name, whole `Name: value\r\n` line).
type Pairs = Box<[(Box<[u8]>, Box<[u8]>)]>;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HeaderTransform {
    remove: Box<[Box<[u8]>]>,
    /// (from, to as written).
    rename: Pairs,
    /// (name, whole line).
    replace: Pairs,
    add: Pairs,
    /// Whole lines.
    append: Box<[u8]>,
}

/// Which replace lines were written, which add names were seen and which rename sources the head
/// has, for one head. At most 64 of each (checked at load).
#[derive(Debug, Default, Clone, Copy)]
pub struct Seen {
    replaced: u64,
    present: u64,
    renamed: u64,
}

fn line(name: &str, value: &str) -> Box<[u8]> {
    format!("{name}: {value}\r\n")
        .into_bytes()
        .into_boxed_slice()
}

fn bit(k: usize) -> u64 {
    1u64.checked_shl(k as u32).unwrap_or(0)
}

impl HeaderTransform {
    pub fn new(def: &EditsDef) -> HeaderTransform {
        let name = |n: &str| n.as_bytes().into();
        HeaderTransform {
            remove: def.remove.iter().map(|n| name(n)).collect(),
            rename: def.rename.iter().map(|(f, t)| (name(f), name(t))).collect(),
            replace: def
                .replace
                .iter()
                .map(|(n, v)| (name(n), line(n, v)))
                .collect(),
            add: def.add.iter().map(|(n, v)| (name(n), line(n, v))).collect(),
            append: def
                .append
                .iter()
                .flat_map(|(n, v)| line(n, v).into_vec())
                .collect(),
        }
    }

    /// The state for one head whose header names are `names`: which renames will overwrite. Costs
    /// nothing without renames.
    pub fn start<'a>(&self, names: impl IntoIterator<Item = &'a [u8]>) -> Seen {
        let mut seen = Seen::default();
        if self.rename.is_empty() {
            return seen;
        }
        for name in names {
            // A removed source is gone before renames run (Kong's order).
            if self.remove.iter().any(|n| eq_ignore_case(n, name)) {
                continue;
            }
            for (k, (from, _)) in self.rename.iter().enumerate() {
                if eq_ignore_case(from, name) {
                    seen.renamed |= bit(k);
                }
            }
        }
        seen
    }

    /// Whether `remove` takes header `name` out.
    pub fn removes(&self, name: &[u8]) -> bool {
        self.remove.iter().any(|n| eq_ignore_case(n, name))
    }

    /// Writes header `name: value` as transformed (or nothing, when removed, already replaced, or
    /// overwritten by a rename).
    pub fn emit(&self, out: &mut Vec<u8>, name: &[u8], value: &[u8], seen: &mut Seen) {
        if self.removes(name) {
            return;
        }
        if seen.renamed != 0
            && self.rename.iter().enumerate().any(|(k, (from, to))| {
                seen.renamed & bit(k) != 0
                    && eq_ignore_case(to, name)
                    && !eq_ignore_case(from, name)
            })
        {
            return;
        }
        let name = self
            .rename
            .iter()
            .find(|(from, _)| eq_ignore_case(from, name))
            .map_or(name, |(_, to)| &to[..]);
        for (k, (n, _)) in self.add.iter().enumerate() {
            if eq_ignore_case(n, name) {
                seen.present |= bit(k);
            }
        }
        if let Some(k) = self
            .replace
            .iter()
            .position(|(n, _)| eq_ignore_case(n, name))
        {
            if seen.replaced & bit(k) == 0 {
                seen.replaced |= bit(k);
                if let Some((_, l)) = self.replace.get(k) {
                    out.extend_from_slice(l);
                }
            }
            return;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }

    /// After the last header: the adds whose name was not written, then the appends.
    pub fn finish(&self, out: &mut Vec<u8>, seen: &Seen) {
        for (k, (_, l)) in self.add.iter().enumerate() {
            if seen.present & bit(k) == 0 {
                out.extend_from_slice(l);
            }
        }
        out.extend_from_slice(&self.append);
    }
}

/// A request-transformer: its header edits, its query-string edits, `replace.uri`, `http_method`
/// and its JSON and form body edits.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RequestTransform {
    pub headers: HeaderTransform,
    pub query: QueryTransform,
    /// The upstream path in place of the route's and service's (checked at load: origin-form,
    /// visible ASCII, no query).
    pub uri: Option<Box<[u8]>>,
    /// `http_method`: the upstream request's method (checked at load: upper-case letters, not
    /// HEAD or CONNECT). A client's HEAD is sent as HEAD regardless.
    pub method: Option<Box<[u8]>>,
    /// `json` edits of a JSON request body (which is then read whole before it goes upstream).
    pub json: Option<super::json_body::JsonTransform>,
    /// `form` edits of a url-encoded form body (read whole too).
    pub form: Option<super::form_body::FormTransform>,
}

impl RequestTransform {
    pub fn new(def: &TransformDef) -> RequestTransform {
        RequestTransform {
            headers: HeaderTransform::new(&def.headers),
            query: QueryTransform::new(&def.query),
            uri: def.uri.as_ref().map(|u| u.as_bytes().into()),
            method: def.method.as_ref().map(|m| m.as_bytes().into()),
            json: super::json_body::JsonTransform::for_request(def),
            form: super::form_body::FormTransform::new(def),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::plugins::pairs;

    fn run(t: &HeaderTransform, headers: &[(&str, &str)]) -> String {
        let mut out = Vec::new();
        let mut seen = t.start(headers.iter().map(|(n, _)| n.as_bytes()));
        for (n, v) in headers {
            t.emit(&mut out, n.as_bytes(), v.as_bytes(), &mut seen);
        }
        t.finish(&mut out, &seen);
        String::from_utf8(out).unwrap_or_default()
    }

    #[test]
    fn kong_order() {
        let t = HeaderTransform::new(&EditsDef {
            remove: vec!["x-secret".into()],
            rename: pairs(&[("x-old", "X-New")]),
            replace: pairs(&[("x-ver", "2")]),
            add: pairs(&[("X-New", "added"), ("X-Env", "prod")]),
            append: pairs(&[("X-Tag", "a")]),
        });
        let got = run(
            &t,
            &[
                ("X-Secret", "s"),
                ("X-Old", "o"),
                ("X-Ver", "1"),
                ("x-ver", "1b"),
                ("Accept", "*/*"),
                ("X-Tag", "z"),
            ],
        );
        assert_eq!(
            got,
            "X-New: o\r\nx-ver: 2\r\nAccept: */*\r\nX-Tag: z\r\nX-Env: prod\r\nX-Tag: a\r\n"
        );
        // Replace only if present; add when absent.
        assert_eq!(run(&t, &[]), "X-New: added\r\nX-Env: prod\r\nX-Tag: a\r\n");
    }

    #[test]
    fn a_rename_overwrites_the_target_only_when_the_source_is_there() {
        let t = HeaderTransform::new(&EditsDef {
            rename: pairs(&[("x-old", "X-New")]),
            ..EditsDef::default()
        });
        // Either order: the client's own X-New goes, the renamed one stays (Kong overwrites).
        let want = "X-New: o\r\nAccept: a\r\n";
        assert_eq!(
            run(&t, &[("x-new", "mine"), ("X-Old", "o"), ("Accept", "a")]),
            want
        );
        assert_eq!(
            run(&t, &[("X-Old", "o"), ("X-NEW", "mine"), ("Accept", "a")]),
            want
        );
        // No source: the target header is the client's and stays.
        assert_eq!(run(&t, &[("X-New", "mine")]), "X-New: mine\r\n");
        // A removed source renames nothing, so overwrites nothing.
        let t = HeaderTransform::new(&EditsDef {
            remove: vec!["x-old".into()],
            rename: pairs(&[("x-old", "X-New")]),
            ..EditsDef::default()
        });
        assert_eq!(
            run(&t, &[("X-Old", "o"), ("X-New", "mine")]),
            "X-New: mine\r\n"
        );
    }
}
