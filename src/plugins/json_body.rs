//! The transformers' JSON body edits (Kong's `json` keys): remove, rename, replace, add, append,
//! in that order, on the top-level keys of a JSON object body.
//!
//! The proxy buffers the whole body (at most `max_bytes`, see `proxy::body::read_whole` and
//! `read_request_whole`) only for a message this applies to: a JSON content type
//! (`application/json`, `application/*+json`), no content coding, and a body (for a response, a
//! status and method that carry one). Keys keep their order (serde_json's
//! `preserve_order`); an added key goes last. A body that is not a JSON object (an array, a
//! scalar, invalid JSON) is passed on unchanged, as Kong does.
//!
//! This path allocates (the parsed document and the new body); routes without `json` edits never
//! reach it.

use serde_json::{Map, Value};

use crate::config::model::TransformDef;
use crate::http::headers::eq_ignore_case;

/// Whether two keys are equal under case folding: ASCII case, then Unicode lower case with the
/// long s (`ſ`) as `s` (the Kelvin sign already lower-cases to `k`), as Go's `EqualFold` reads them.
fn key_fold_eq(a: &str, b: &str) -> bool {
    if a.is_ascii() && b.is_ascii() {
        return a.eq_ignore_ascii_case(b);
    }
    let fold = |s: &str| {
        s.chars()
            .map(|c| if c == '\u{17F}' { 's' } else { c })
            .flat_map(char::to_lowercase)
            .collect::<Vec<char>>()
    };
    fold(a) == fold(b)
}

#[derive(Debug, Clone, PartialEq)]
pub struct JsonTransform {
    remove: Vec<String>,
    rename: Vec<(String, String)>,
    replace: Vec<(String, Value)>,
    add: Vec<(String, Value)>,
    append: Vec<(String, Value)>,
    /// The largest body buffered to edit; a larger one is a 502 (never sent unedited: `remove`
    /// may be hiding something).
    pub max_bytes: u64,
    /// `remove` takes keys in any case (a request's: the upstream's binder may fold case). A
    /// response's remove is exact: JavaScript clients read `id` and `ID` as two fields.
    fold_remove: bool,
}

impl JsonTransform {
    /// The body edits of a response-transformer, `None` when it has none.
    pub fn new(def: &TransformDef) -> Option<JsonTransform> {
        let j = &def.json;
        if j.is_empty() {
            return None;
        }
        // Values were checked at load as JSON text.
        let values = |v: &[(String, String)]| {
            v.iter()
                .map(|(k, text)| {
                    let value = serde_json::from_str(text).unwrap_or(Value::String(text.clone()));
                    (k.clone(), value)
                })
                .collect()
        };
        Some(JsonTransform {
            remove: j.remove.clone(),
            rename: j.rename.clone(),
            replace: values(&j.replace),
            add: values(&j.add),
            append: values(&j.append),
            max_bytes: def.max_json_bytes,
            fold_remove: false,
        })
    }

    /// A request-transformer's edits: `remove` folds case, as the binders behind may (Go's
    /// `encoding/json`, ASP.NET Core bind `IS_ADMIN` to an `is_admin` field).
    pub fn for_request(def: &TransformDef) -> Option<JsonTransform> {
        JsonTransform::new(def).map(|t| JsonTransform {
            fold_remove: true,
            ..t
        })
    }

    /// Edits `body`. A valid JSON document that is not an object has no top-level keys to edit
    /// and goes on unchanged; one the parser cannot read (invalid, nested deeper than 128, a lone
    /// surrogate, not UTF-8) is `Unreadable`, and the caller refuses it rather than pass on a key
    /// a `remove` should have hidden. A leading UTF-8 BOM is skipped (RFC 8259 §8.1 lets a parser
    /// ignore it; it is not sent on). `empty_is_object`: an empty body is `{}` (Kong's request side,
    /// so `add` applies), otherwise it goes on unchanged.
    pub fn apply(&self, body: &[u8], empty_is_object: bool) -> Applied {
        let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
        let mut doc = if body.trim_ascii().is_empty() {
            if !empty_is_object {
                return Applied::Unchanged;
            }
            Map::new()
        } else {
            // Only an object has keys to edit: anything that starts as another JSON value goes on
            // without being parsed into a tree (a 1 MiB `[1,1,…]` would cost tens of MiB).
            let first = body.iter().find(|b| !b.is_ascii_whitespace()).copied();
            if matches!(
                first,
                Some(b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n')
            ) {
                return Applied::Unchanged;
            }
            match serde_json::from_slice::<Value>(body) {
                Ok(Value::Object(doc)) => doc,
                Ok(_) => return Applied::Unchanged,
                Err(_) => return Applied::Unreadable,
            }
        };
        let was_empty = doc.is_empty() && body.trim_ascii().is_empty();
        // A request's case-insensitively: Go's encoding/json and ASP.NET Core bind `IS_ADMIN` (Go
        // also the `ſ` and Kelvin sign folds) to an `is_admin` field, so a remove that left them
        // would hide nothing from those upstreams.
        if self.fold_remove {
            doc.retain(|k, _| !self.remove.iter().any(|r| key_fold_eq(k, r)));
        } else {
            for k in &self.remove {
                doc.shift_remove(k);
            }
        }
        // A renamed key keeps its place (a rebuild, only when a source is there). The document's
        // own key of the target name gives way to it, as Kong overwrites.
        if self.rename.iter().any(|(from, _)| doc.contains_key(from)) {
            let overwritten: Vec<&String> = self
                .rename
                .iter()
                .filter(|(from, to)| from != to && doc.contains_key(from))
                .map(|(_, to)| to)
                .collect();
            doc = doc
                .into_iter()
                .filter(|(k, _)| !overwritten.contains(&k))
                .map(
                    |(k, v)| match self.rename.iter().find(|(from, _)| *from == k) {
                        Some((_, to)) => (to.clone(), v),
                        None => (k, v),
                    },
                )
                .collect();
        }
        for (k, v) in &self.replace {
            if let Some(slot) = doc.get_mut(k) {
                *slot = v.clone();
            }
        }
        for (k, v) in &self.add {
            if !doc.contains_key(k) {
                doc.insert(k.clone(), v.clone());
            }
        }
        for (k, v) in &self.append {
            append(&mut doc, k, v);
        }
        if was_empty && doc.is_empty() {
            return Applied::Unchanged;
        }
        match serde_json::to_vec(&Value::Object(doc)) {
            Ok(edited) => Applied::Edited(edited),
            Err(_) => Applied::Unreadable,
        }
    }
}

/// What `JsonTransform::apply` made of a body.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    Edited(Vec<u8>),
    /// Nothing to edit (a JSON array or scalar; an empty body): sent as it came.
    Unchanged,
    /// Declared JSON but unreadable: refused (400 for a request, 502 for a response).
    Unreadable,
}

/// Kong's append: an array gets the value pushed, a missing key becomes `[value]`, any other value
/// becomes `[old, value]` (Kong drops a non-string old value; keeping it loses nothing).
fn append(doc: &mut Map<String, Value>, k: &str, v: &Value) {
    match doc.get_mut(k) {
        Some(Value::Array(a)) => a.push(v.clone()),
        Some(old) => {
            let prev = old.take();
            *old = Value::Array(vec![prev, v.clone()]);
        }
        None => {
            doc.insert(k.to_owned(), Value::Array(vec![v.clone()]));
        }
    }
}

/// Whether a Content-Type value names JSON: `application/json` or `application/<x>+json`, any
/// parameters after `;` (the type ends as `http::headers::media_type` ends it).
pub fn is_json_type(value: &[u8]) -> bool {
    let essence = crate::http::headers::media_type(value);
    let Some(sub) = essence
        .get(..12)
        .filter(|p| eq_ignore_case(p, b"application/"))
        .and_then(|_| essence.get(12..))
    else {
        return false;
    };
    eq_ignore_case(sub, b"json")
        || (sub.len() > 5
            && sub
                .get(sub.len() - 5..)
                .is_some_and(|s| eq_ignore_case(s, b"+json")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::EditsDef;

    use crate::plugins::pairs;

    fn tf(json: EditsDef) -> JsonTransform {
        let def = TransformDef {
            json,
            max_json_bytes: 1 << 20,
            ..TransformDef::default()
        };
        JsonTransform::new(&def).unwrap_or_else(|| panic!("no edits"))
    }

    fn run(t: &JsonTransform, body: &str) -> Option<String> {
        match t.apply(body.as_bytes(), false) {
            Applied::Edited(b) => Some(String::from_utf8(b).unwrap_or_default()),
            _ => None,
        }
    }

    /// A remove takes every key a case-insensitive binder reads as that name (found by a review:
    /// `IS_ADMIN` and `Is_Admin` reached Go and ASP.NET upstreams as `is_admin`).
    #[test]
    fn remove_folds_case_as_go_and_asp_net_bind_keys() {
        let def = TransformDef {
            json: EditsDef {
                remove: vec!["is_admin".into(), "Kind".into()],
                ..EditsDef::default()
            },
            max_json_bytes: 1 << 20,
            ..TransformDef::default()
        };
        // A response's remove is exact (`id` and `ID` are two fields to a JavaScript client).
        let exact = JsonTransform::new(&def).unwrap_or_else(|| panic!("no edits"));
        assert_eq!(
            run(&exact, r#"{"is_admin":1,"IS_ADMIN":2}"#).as_deref(),
            Some(r#"{"IS_ADMIN":2}"#)
        );
        let t = JsonTransform::for_request(&def).unwrap_or_else(|| panic!("no edits"));
        assert_eq!(
            run(
                &t,
                r#"{"is_admin":true,"IS_ADMIN":true,"Is_Admin":1,"i\u017f_admin":2,"\u212aind":3,"kind":4,"keep":5}"#
            )
            .as_deref(),
            Some(r#"{"keep":5}"#)
        );
        assert!(key_fold_eq("\u{17F}", "S"));
        assert!(!key_fold_eq("is_admin", "is_admins"));
    }

    #[test]
    fn kong_order_on_top_level_keys_keeping_key_order() {
        let t = tf(EditsDef {
            remove: vec!["secret".into()],
            rename: pairs(&[("old", "new")]),
            replace: pairs(&[("v", "2"), ("absent", "\"x\"")]),
            add: pairs(&[("env", "\"prod\""), ("id", "0")]),
            append: pairs(&[("tags", "\"b\""), ("one", "true"), ("none", "1")]),
        });
        assert_eq!(
            run(
                &t,
                r#"{"id":7,"secret":"s","old":{"a":1},"v":1,"tags":["a"],"one":"x"}"#
            )
            .as_deref(),
            Some(
                r#"{"id":7,"new":{"a":1},"v":2,"tags":["a","b"],"one":["x",true],"env":"prod","none":[1]}"#
            )
        );
        // The target of a rename gives way to the source, wherever it stands.
        for body in [r#"{"new":1,"old":2}"#, r#"{"old":2,"new":1}"#] {
            assert_eq!(
                run(&t, body).as_deref(),
                Some(r#"{"new":2,"env":"prod","id":0,"tags":["b"],"one":[true],"none":[1]}"#),
                "{body}"
            );
        }
        // Valid JSON that is not an object, or nothing: unchanged.
        for body in [r#"[{"secret":1}]"#, "42", "", " \n"] {
            assert_eq!(
                t.apply(body.as_bytes(), false),
                Applied::Unchanged,
                "{body}"
            );
        }
        // Declared JSON the parser cannot read: refused, never passed on with its keys.
        let deep = format!(
            "{{\"secret\":1,\"v\":{}1{}}}",
            "[".repeat(200),
            "]".repeat(200)
        );
        for body in [
            "{not json",
            "<html>",
            r#"{"a":"#,
            r#"{"secret":1,"v":"\ud800"}"#,
            deep.as_str(),
        ] {
            assert_eq!(
                t.apply(body.as_bytes(), false),
                Applied::Unreadable,
                "{body}"
            );
        }
        // Numbers keep their digits (arbitrary_precision; an exponent gets its sign): 1e400 is
        // read, 1e15 does not grow to 1000000000000000.0.
        assert_eq!(
            run(
                &t,
                r#"{"secret":1,"big":1e400,"f":1e15,"i":123456789012345678901234567890}"#
            )
            .as_deref(),
            Some(
                r#"{"big":1e+400,"f":1e+15,"i":123456789012345678901234567890,"env":"prod","id":0,"tags":["b"],"one":[true],"none":[1]}"#
            )
        );
        // A BOM is skipped; an empty request body is `{}` when asked.
        assert!(run(&t, "\u{feff}{\"secret\":1}").is_some_and(|b| !b.contains("secret")));
        let add_only = tf(EditsDef {
            add: pairs(&[("k", "1")]),
            ..EditsDef::default()
        });
        assert_eq!(
            add_only.apply(b"", true),
            Applied::Edited(br#"{"k":1}"#.to_vec())
        );
        let remove_only = tf(EditsDef {
            remove: vec!["k".into()],
            ..EditsDef::default()
        });
        assert_eq!(remove_only.apply(b"", true), Applied::Unchanged);
    }

    #[test]
    fn json_content_types() {
        for (v, yes) in [
            (&b"application/json"[..], true),
            (b"Application/JSON; charset=utf-8", true),
            (b"application/problem+json", true),
            (b"application/vnd.api+JSON ;x=1", true),
            (b"application/jsonx", false),
            (b"text/json", false),
            (b"application/+json", false),
            (b"application/x-ndjson", false),
            (b"", false),
            // Ended where the most lenient reader ends it.
            (b"application/json,text/plain", true),
            (b" application/json x", true),
        ] {
            assert_eq!(is_json_type(v), yes, "{:?}", String::from_utf8_lossy(v));
        }
    }
}
