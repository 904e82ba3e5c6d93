//! `request-transformer`'s query-string edits (Kong's `querystring` keys), applied while the
//! upstream request target is written.
//!
//! Kong's order: remove, rename, replace (only if present), then after the last parameter add (only
//! if absent) and append (always). As with the header edits (`transform`): a rename overwrites (when
//! the query has the rename's source, its own parameters of the target name are dropped), and a
//! replace writes one parameter in place of every occurrence. Renames apply side by side, never
//! one after another (chains were refused at load).
//!
//! Names are compared form-decoded (`%41` and `A` are the same name, `+` is a space) and
//! case-sensitively, as applications read them; `remove` drops leniently (see `push`).
//! Parameters that are not edited are copied byte for byte, in their order: the upstream sees the
//! client's own encoding, except that `;` is written `%3B` (frameworks that also split on `;` must
//! not find parameters the edits never saw). What the gateway writes is percent-encoded at load (everything but RFC 3986 unreserved bytes), so no config value can
//! inject `&`, `#` or a space into the request line.
//!
//! Cost: nothing unless configured. Applying it is compares and copies into the target buffer the
//! request path already reuses; per-request state is three `u64` bitmasks (at most 64 rename,
//! replace and add entries, checked at load).

use crate::config::model::EditsDef;
use crate::http::query::{decode, lenient_name_eq, params, Param};

/// (decoded name, bytes to write): a rename's (from, encoded to), an edit's (name, `name=value`).
type Pairs = Box<[(Box<[u8]>, Box<[u8]>)]>;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct QueryTransform {
    remove: Box<[Box<[u8]>]>,
    rename: Pairs,
    /// The rename targets, decoded (what replace and add compare a renamed parameter with).
    rename_to: Box<[Box<[u8]>]>,
    replace: Pairs,
    add: Pairs,
    /// Whole `name=value` parameters, `&`-joined.
    append: Box<[u8]>,
}

/// Percent-encodes `s` for a query string: RFC 3986 unreserved bytes stay, all others are `%XX`.
fn encode(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

fn param(name: &str, value: &str) -> Box<[u8]> {
    let mut out = Vec::with_capacity(name.len() + value.len() + 1);
    encode(name, &mut out);
    out.push(b'=');
    encode(value, &mut out);
    out.into_boxed_slice()
}

fn bit(k: usize) -> u64 {
    1u64.checked_shl(k as u32).unwrap_or(0)
}

/// Copies a client parameter as it came, but for `;`, written `%3B`: some frameworks split
/// parameters on `;` too, and `debug=0;admin=1` must not reach them as an `admin` the edits never
/// saw (Kong re-encodes the whole query).
fn copy(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    for &b in bytes.unwrap_or_default() {
        if b == b';' {
            out.extend_from_slice(b"%3B");
        } else {
            out.push(b);
        }
    }
}

/// Whether the raw (encoded) `name` decodes to `want`.
fn named(name: &[u8], want: &[u8]) -> bool {
    decode(name).eq(want.iter().copied())
}

impl QueryTransform {
    pub fn new(def: &EditsDef) -> QueryTransform {
        let name = |n: &str| n.as_bytes().into();
        QueryTransform {
            remove: def.remove.iter().map(|n| name(n)).collect(),
            rename: def
                .rename
                .iter()
                .map(|(f, t)| {
                    let mut to = Vec::new();
                    encode(t, &mut to);
                    (name(f), to.into_boxed_slice())
                })
                .collect(),
            rename_to: def.rename.iter().map(|(_, t)| name(t)).collect(),
            replace: def
                .replace
                .iter()
                .map(|(n, v)| (name(n), param(n, v)))
                .collect(),
            add: def
                .add
                .iter()
                .map(|(n, v)| (name(n), param(n, v)))
                .collect(),
            append: def
                .append
                .iter()
                .map(|(n, v)| param(n, v).into_vec())
                .collect::<Vec<_>>()
                .join(&b'&')
                .into_boxed_slice(),
        }
    }

    /// Whether there is nothing to edit (the client's query then goes up as it came).
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.rename.is_empty()
            && self.replace.is_empty()
            && self.add.is_empty()
            && self.append.is_empty()
    }

    /// Appends `?query` edited to `out` (nothing when no parameter is left); `cut` is the range
    /// key-auth's `hide_credentials` took out, whose parameters are skipped.
    pub fn push(&self, out: &mut Vec<u8>, query: &[u8], cut: Option<(usize, usize)>) {
        self.write(out, query, cut, Some(b'?'));
    }

    /// Appends `fields` (a url-encoded form body) edited to `out`, as `push` edits a query, without
    /// a leading `?`.
    pub fn push_form(&self, out: &mut Vec<u8>, fields: &[u8]) {
        self.write(out, fields, None, None);
    }

    /// `push` and `push_form`: `lead` is written before the first parameter, `&` between them.
    fn write(
        &self,
        out: &mut Vec<u8>,
        query: &[u8],
        cut: Option<(usize, usize)>,
        lead: Option<u8>,
    ) {
        // `remove` drops a parameter under every name a lenient framework reads as the removed
        // one (`%20debug`, `debug[]`, `DEBUG`: PHP, qs, ASP.NET), or it would reach them anyway.
        let kept = |p: &Param| {
            cut.is_none_or(|(s, e)| p.start < s || p.end > e)
                && !self.remove.iter().any(|n| lenient_name_eq(p.name, n))
        };
        // Which renames will overwrite: their source is in the query (and not removed).
        let mut renamed = 0u64;
        if !self.rename.is_empty() {
            for p in params(query).filter(kept) {
                for (k, (from, _)) in self.rename.iter().enumerate() {
                    if named(p.name, from) {
                        renamed |= bit(k);
                    }
                }
            }
        }
        let start = out.len();
        let sep = |out: &mut Vec<u8>| match (out.len() == start, lead) {
            (true, Some(b)) => out.push(b),
            (true, None) => {}
            (false, _) => out.push(b'&'),
        };
        let (mut replaced, mut present) = (0u64, 0u64);
        for p in params(query).filter(kept) {
            // The parameter's name after renames: (decoded, as written).
            let mut name: Option<(&[u8], &[u8])> = None;
            for (k, (from, to)) in self.rename.iter().enumerate() {
                if named(p.name, from) {
                    let to_dec = self.rename_to.get(k).map(|t| &t[..]).unwrap_or_default();
                    name = Some((to_dec, to));
                    break;
                }
            }
            if name.is_none()
                && self
                    .rename_to
                    .iter()
                    .enumerate()
                    .any(|(k, t)| renamed & bit(k) != 0 && named(p.name, t))
            {
                continue; // overwritten by a rename
            }
            let is = |want: &[u8]| match name {
                Some((dec, _)) => dec == want,
                None => named(p.name, want),
            };
            // Present for add, whether written as it came or replaced.
            for (k, (n, _)) in self.add.iter().enumerate() {
                if is(n) {
                    present |= bit(k);
                }
            }
            if let Some(k) = self.replace.iter().position(|(n, _)| is(n)) {
                if replaced & bit(k) == 0 {
                    replaced |= bit(k);
                    sep(out);
                    out.extend_from_slice(
                        self.replace.get(k).map(|r| &r.1[..]).unwrap_or_default(),
                    );
                }
                continue;
            }
            sep(out);
            match name {
                Some((_, to)) => {
                    out.extend_from_slice(to);
                    // `a` alone stays a bare name; `a=` keeps its `=`.
                    copy(out, query.get(p.start + p.name.len()..p.end));
                }
                None => copy(out, query.get(p.start..p.end)),
            }
        }
        for (k, (_, line)) in self.add.iter().enumerate() {
            if present & bit(k) == 0 {
                sep(out);
                out.extend_from_slice(line);
            }
        }
        if !self.append.is_empty() {
            sep(out);
            out.extend_from_slice(&self.append);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::plugins::pairs;

    fn run(def: &EditsDef, query: &str, cut: Option<(usize, usize)>) -> String {
        let mut out = b"/p".to_vec();
        QueryTransform::new(def).push(&mut out, query.as_bytes(), cut);
        String::from_utf8(out).unwrap_or_default()
    }

    #[test]
    fn kong_order_and_overwrites() {
        let def = EditsDef {
            remove: vec!["debug".into()],
            rename: pairs(&[("old", "new")]),
            replace: pairs(&[("v", "2")]),
            add: pairs(&[("new", "added"), ("lang", "en")]),
            append: pairs(&[("via", "gw")]),
        };
        // remove drops every `debug`; `old` becomes `new` (the client's own `new` is dropped),
        // so add's `new` is present; one `v` replaces both; `lang` is added; `via` appended.
        assert_eq!(
            run(&def, "debug=1&a=1&new=mine&old=x&v=1&v=3&debug", None),
            "/p?a=1&new=x&v=2&lang=en&via=gw"
        );
        // Nothing left of the query, nothing configured to add: no `?`.
        let only_remove = EditsDef {
            remove: vec!["a".into()],
            ..EditsDef::default()
        };
        assert_eq!(run(&only_remove, "a=1&a=2", None), "/p");
        // Without the rename's source, the client's `new` stays.
        assert_eq!(run(&def, "new=mine", None), "/p?new=mine&lang=en&via=gw");
        // Empty query: adds and appends only.
        assert_eq!(run(&def, "", None), "/p?new=added&lang=en&via=gw");
    }

    #[test]
    fn replaced_counts_as_present_and_removed_renames_nothing() {
        let def = EditsDef {
            rename: pairs(&[("a", "b")]),
            replace: pairs(&[("v", "2"), ("b", "R")]),
            add: pairs(&[("v", "3"), ("b", "A")]),
            ..EditsDef::default()
        };
        assert_eq!(run(&def, "v=1", None), "/p?v=2&b=A");
        assert_eq!(run(&def, "a=1", None), "/p?b=R&v=3");
        // A source that is also removed renames nothing: the client's own target stays.
        let def = EditsDef {
            remove: vec!["old".into()],
            rename: pairs(&[("old", "new")]),
            ..EditsDef::default()
        };
        assert_eq!(run(&def, "old=1&new=mine", None), "/p?new=mine");
    }

    #[test]
    fn remove_drops_every_name_a_lenient_framework_reads_as_it() {
        let def = EditsDef {
            remove: vec!["debug".into()],
            ..EditsDef::default()
        };
        assert_eq!(
            run(
                &def,
                "%20debug=1&+debug=2&debug[]=3&debug%5Bx%5D=4&DEBUG=5&debug%00x=6&keep=7",
                None
            ),
            "/p?keep=7"
        );
        assert_eq!(
            run(&def, "debugger=1&xdebug=2", None),
            "/p?debugger=1&xdebug=2"
        );
    }

    #[test]
    fn semicolons_cannot_hide_a_parameter() {
        let def = EditsDef {
            remove: vec!["debug".into()],
            ..EditsDef::default()
        };
        assert_eq!(run(&def, "x=1;debug=1&debug=2", None), "/p?x=1%3Bdebug=1");
    }

    #[test]
    fn names_compare_decoded_and_values_are_encoded() {
        let def = EditsDef {
            remove: vec!["a b".into()],
            rename: pairs(&[("x", "y z")]),
            replace: pairs(&[("q", "1&2 #3")]),
            add: pairs(&[("é", "ü")]),
            ..EditsDef::default()
        };
        assert_eq!(
            run(&def, "a+b=1&a%20b=2&%78=7&x&q=0", None),
            "/p?y%20z=7&y%20z&q=1%262%20%233&%C3%A9=%C3%BC"
        );
        // Renames and replaces compare names case-sensitively, as applications read them; remove
        // drops leniently.
        assert_eq!(run(&def, "X=7&Q=1", None), "/p?X=7&Q=1&%C3%A9=%C3%BC");
        assert_eq!(run(&def, "A+B=1", None), "/p?%C3%A9=%C3%BC");
    }

    #[test]
    fn hidden_credentials_stay_out() {
        let def = EditsDef {
            append: pairs(&[("v", "1")]),
            ..EditsDef::default()
        };
        // key-auth cut `apikey=s&` (its parameter and one separator).
        assert_eq!(run(&def, "apikey=s&a=1", Some((0, 9))), "/p?a=1&v=1");
        assert_eq!(run(&def, "a=1&apikey=s", Some((3, 12))), "/p?a=1&v=1");
        assert_eq!(run(&def, "apikey=s", Some((0, 8))), "/p?v=1");
        assert!(QueryTransform::new(&EditsDef::default()).is_empty());
        assert!(!QueryTransform::new(&def).is_empty());
    }
}
