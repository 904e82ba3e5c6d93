//! `request-transformer`'s `form` edits: the fields of an `application/x-www-form-urlencoded`
//! request body (Kong's `body` keys for form bodies), edited exactly as the query string is.
//!
//! A url-encoded body is a query string without its `?`, and applications read it with the same
//! parser, so the edits are `query_transform`'s: Kong's order, names compared form-decoded,
//! `remove` dropping every name a lenient framework reads as the removed one, untouched fields
//! copied byte for byte (a `;` as `%3B`), what the gateway writes percent-encoded.
//!
//! The proxy buffers the whole body (at most `max_bytes`) only for a request this applies to: a
//! form content type, no content coding. Multipart bodies are not edited (they stream as they
//! came). This path allocates the new body; routes without `form` edits never reach it.

use crate::config::model::TransformDef;
use crate::http::headers::eq_ignore_case;

use super::query_transform::QueryTransform;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormTransform {
    edits: QueryTransform,
    /// The largest body buffered to edit; a larger one is a 413 (never sent unedited: `remove`
    /// may be hiding something).
    pub max_bytes: u64,
}

impl FormTransform {
    /// The form edits of a request-transformer, `None` when it has none.
    pub fn new(def: &TransformDef) -> Option<FormTransform> {
        (!def.form.is_empty()).then(|| FormTransform {
            edits: QueryTransform::new(&def.form),
            max_bytes: def.max_form_bytes,
        })
    }

    /// The edited body (an empty one gets only what `add` and `append` write, as in Kong).
    pub fn apply(&self, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(body.len() + 64);
        self.edits.push_form(&mut out, body);
        out
    }
}

/// Whether a Content-Type value is `application/x-www-form-urlencoded` (parameters aside).
pub fn is_form_type(value: &[u8]) -> bool {
    eq_ignore_case(
        crate::http::headers::media_type(value),
        b"application/x-www-form-urlencoded",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::EditsDef;

    use crate::plugins::pairs;

    fn run(form: EditsDef, body: &str) -> String {
        let def = TransformDef {
            form,
            max_form_bytes: 1 << 20,
            ..TransformDef::default()
        };
        let t = FormTransform::new(&def).unwrap_or_else(|| panic!("no edits"));
        String::from_utf8(t.apply(body.as_bytes())).unwrap_or_default()
    }

    #[test]
    fn edits_fields_in_kong_order_without_a_leading_separator() {
        let def = EditsDef {
            remove: vec!["role".into()],
            rename: pairs(&[("user", "username")]),
            replace: pairs(&[("v", "2")]),
            add: pairs(&[("source", "gw x")]),
            append: pairs(&[("via", "gw")]),
        };
        assert_eq!(
            run(def.clone(), "user=ann+b&role=admin&v=1&note=a%26b"),
            "username=ann+b&v=2&note=a%26b&source=gw%20x&via=gw"
        );
        // Lenient names go with remove, as PHP and qs read them.
        assert_eq!(
            run(def.clone(), "role[]=admin&%20role=admin&ROLE=1&x=1"),
            "x=1&source=gw%20x&via=gw"
        );
        // An empty body gets what add and append write; a body with nothing left stays empty.
        assert_eq!(run(def, ""), "source=gw%20x&via=gw");
        let only_remove = EditsDef {
            remove: vec!["a".into()],
            ..EditsDef::default()
        };
        assert_eq!(run(only_remove, "a=1&a=2"), "");
    }

    #[test]
    fn form_types() {
        assert!(is_form_type(b"application/x-www-form-urlencoded"));
        assert!(is_form_type(
            b" Application/X-WWW-Form-Urlencoded ; charset=UTF-8"
        ));
        assert!(!is_form_type(b"multipart/form-data; boundary=x"));
        assert!(!is_form_type(b"application/x-www-form-urlencodedx"));
        assert!(!is_form_type(b"text/plain"));
        // Where PHP ends the type: a `,` or a space after it still makes a form there.
        assert!(is_form_type(b"application/x-www-form-urlencoded,x"));
        assert!(is_form_type(b"application/x-www-form-urlencoded x"));
        assert!(FormTransform::new(&TransformDef::default()).is_none());
    }
}
