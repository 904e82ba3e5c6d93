//! Header classification: case-insensitive names, hop-by-hop names, comma-separated list values
//! (Connection, Transfer-Encoding) and RFC 9110 character classes shared by the parsers.
//!
//! Invariants: nothing here allocates or panics on any input; list splitting only ever trims OWS
//! (SP and HTAB) — never `trim()`, which would also strip VT, FF and friends that are not OWS.

use super::Span;
use std::ops::Range;

/// ASCII case-insensitive equality (header names and tokens are case-insensitive, RFC 9110 §5.1).
#[inline]
pub fn eq_ignore_case(a: &[u8], b: &[u8]) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Whether `v` starts with `prefix`, ASCII case-insensitively.
pub fn starts_with_ignore_case(v: &[u8], prefix: &[u8]) -> bool {
    v.get(..prefix.len())
        .is_some_and(|p| eq_ignore_case(p, prefix))
}

/// Header names a proxy must not forward (RFC 9110 §7.6.1), plus the legacy `proxy-connection`
/// and `keep-alive` that peers still send.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP: [&[u8]; 7] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    ];
    HOP.iter().any(|h| eq_ignore_case(name, h))
}

/// tchar (RFC 9110 §5.6.2): the bytes allowed in a token (header names, methods, codings).
#[inline]
pub fn is_tchar(b: u8) -> bool {
    matches!(b,
        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9'
        | b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+'
        | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~')
}

/// A non-empty token.
#[inline]
pub fn is_token(v: &[u8]) -> bool {
    !v.is_empty() && v.iter().all(|&b| is_tchar(b))
}

/// OWS (RFC 9110 §5.6.3): SP or HTAB only.
#[inline]
pub fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Range of `v[range]` with leading and trailing OWS removed.
fn trim_ows(v: &[u8], mut start: usize, mut end: usize) -> Range<usize> {
    while start < end && v.get(start).is_some_and(|&b| is_ows(b)) {
        start += 1;
    }
    while end > start && v.get(end - 1).is_some_and(|&b| is_ows(b)) {
        end -= 1;
    }
    start..end
}

/// Iterator over the elements of a comma-separated list value, each as an OWS-trimmed byte range
/// into the value. Empty elements are yielded (as empty ranges) so that strict callers
/// (Transfer-Encoding) can reject them; `for_each_token` skips them.
#[derive(Debug, Clone)]
pub struct ListItems<'a> {
    value: &'a [u8],
    pos: usize,
    done: bool,
}

/// The name of an Upgrade protocol token (RFC 9110 §7.8: `protocol-name ["/" protocol-version]`):
/// `h2c/1` names `h2c`.
pub fn protocol_name(token: &[u8]) -> &[u8] {
    token.split(|&b| b == b'/').next().unwrap_or(token)
}

/// Whether an Upgrade value offers h2c (`h2c`, `H2C`, `h2c/1`, in any item of the list).
pub fn offers_h2c(value: &[u8]) -> bool {
    list_items(value)
        .any(|r| eq_ignore_case(protocol_name(value.get(r).unwrap_or_default()), b"h2c"))
}

/// Whether a 101's Upgrade values (`switched`) name only protocols the request's (`offered`)
/// offered, compared by name case-insensitively, and at least one; never h2c (RFC 9110 §7.8: a
/// server must not switch to a protocol the client did not offer).
pub fn switch_was_offered<'a>(
    offered: impl Iterator<Item = &'a [u8]> + Clone,
    mut switched: impl Iterator<Item = &'a [u8]>,
) -> bool {
    let mut any = false;
    let all = switched.all(|value| {
        list_items(value).all(|r| {
            let name = protocol_name(value.get(r).unwrap_or_default());
            if name.is_empty() {
                return true;
            }
            any = true;
            !eq_ignore_case(name, b"h2c")
                && offered.clone().any(|o| {
                    list_items(o)
                        .any(|q| eq_ignore_case(protocol_name(o.get(q).unwrap_or_default()), name))
                })
        })
    });
    all && any
}

/// Split `value` on ',' (see `ListItems`).
pub fn list_items(value: &[u8]) -> ListItems<'_> {
    ListItems {
        value,
        pos: 0,
        done: false,
    }
}

impl Iterator for ListItems<'_> {
    type Item = Range<usize>;

    fn next(&mut self) -> Option<Range<usize>> {
        if self.done {
            return None;
        }
        let start = self.pos;
        let rest = self.value.get(start..).unwrap_or_default();
        let end = match memchr::memchr(b',', rest) {
            Some(i) => {
                self.pos = start + i + 1;
                start + i
            }
            None => {
                self.done = true;
                self.value.len()
            }
        };
        Some(trim_ows(self.value, start, end))
    }
}

/// Call `f` with every non-empty, OWS-trimmed element of a comma-separated list value.
pub fn for_each_token(value: &[u8], mut f: impl FnMut(&[u8])) {
    for r in list_items(value) {
        if let Some(tok) = value.get(r) {
            if !tok.is_empty() {
                f(tok);
            }
        }
    }
}

/// Is `name` one of the Connection tokens (`tokens` are spans into `buf`)? Used to drop the
/// extra hop-by-hop headers a Connection header nominates (RFC 9110 §7.6.1).
pub fn is_listed(name: &[u8], tokens: &[Span], buf: &[u8]) -> bool {
    tokens.iter().any(|t| {
        buf.get(t.start as usize..t.end as usize)
            .is_some_and(|tok| eq_ignore_case(tok, name))
    })
}

/// The media type of a Content-Type value (`application/json` of `application/json; charset=utf-8`),
/// ended the way the most lenient reader ends it: at the first `;`, `,` or whitespace (PHP cuts
/// there, so `application/x-www-form-urlencoded,x` is a form to it), after leading whitespace.
pub fn media_type(value: &[u8]) -> &[u8] {
    let value = value.trim_ascii_start();
    let end = value
        .iter()
        .position(|&b| matches!(b, b';' | b',' | b' ' | b'\t'))
        .unwrap_or(value.len());
    value.get(..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(v: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for_each_token(v, |t| out.push(t.to_vec()));
        out
    }

    #[test]
    fn case_insensitive_equality() {
        assert!(eq_ignore_case(b"Content-Length", b"content-length"));
        assert!(eq_ignore_case(b"", b""));
        assert!(!eq_ignore_case(b"Host", b"Hos"));
        assert!(!eq_ignore_case(b"Host", b"Hosu"));
        // Only ASCII folding: 0xC8 is not 'H' in any sense.
        assert!(!eq_ignore_case(b"\xc8ost", b"host"));
    }

    #[test]
    fn hop_by_hop_names() {
        for n in [
            &b"Connection"[..],
            b"KEEP-ALIVE",
            b"proxy-connection",
            b"TE",
            b"Trailer",
            b"transfer-encoding",
            b"Upgrade",
        ] {
            assert!(is_hop_by_hop(n), "{:?}", String::from_utf8_lossy(n));
        }
        for n in [&b"Host"[..], b"Trailers", b"te ", b"content-length", b""] {
            assert!(!is_hop_by_hop(n), "{:?}", String::from_utf8_lossy(n));
        }
    }

    #[test]
    fn token_lists() {
        assert_eq!(tokens(b"close"), vec![b"close".to_vec()]);
        assert_eq!(
            tokens(b" keep-alive ,\tUpgrade,, x-foo\t"),
            vec![
                b"keep-alive".to_vec(),
                b"Upgrade".to_vec(),
                b"x-foo".to_vec()
            ]
        );
        assert!(tokens(b"").is_empty());
        assert!(tokens(b" , ,\t").is_empty());
        // VT is not OWS and must survive trimming.
        assert_eq!(tokens(b"\x0bclose"), vec![b"\x0bclose".to_vec()]);
    }

    #[test]
    fn upgrade_protocols() {
        for v in [
            &b"h2c"[..],
            b"H2C",
            b"h2c/1",
            b"websocket, h2c/2.0",
            b" h2c ",
        ] {
            assert!(offers_h2c(v), "{v:?}");
        }
        for v in [&b"websocket"[..], b"h2", b"h2cx", b"x/h2c"] {
            assert!(!offers_h2c(v), "{v:?}");
        }
        let ok = |offered: &[&[u8]], switched: &[&[u8]]| {
            switch_was_offered(offered.iter().copied(), switched.iter().copied())
        };
        assert!(ok(&[b"websocket"], &[b"WebSocket"]));
        assert!(ok(&[b"foo/2, websocket"], &[b"foo"]));
        assert!(!ok(&[b"websocket"], &[b"h2c"]));
        assert!(!ok(&[b"websocket"], &[b"foo"]));
        assert!(!ok(&[b"websocket"], &[b"websocket, foo"]));
        assert!(!ok(&[b"websocket"], &[]), "a 101 names its protocol");
        assert!(!ok(&[b"websocket"], &[b""]));
        assert!(!ok(&[], &[b"websocket"]));
    }

    #[test]
    fn list_items_keep_empty_elements() {
        let v = b"gzip, ,chunked,";
        let items: Vec<&[u8]> = list_items(v).map(|r| &v[r]).collect();
        assert_eq!(items, vec![&b"gzip"[..], b"", b"chunked", b""]);
        let items: Vec<Range<usize>> = list_items(b"").collect();
        assert_eq!(items, vec![0..0]);
    }

    #[test]
    fn listed_tokens() {
        let buf = b"xx Keep-Alive, X-Secret";
        let toks = [Span { start: 3, end: 13 }, Span { start: 15, end: 23 }];
        assert!(is_listed(b"keep-alive", &toks, buf));
        assert!(is_listed(b"x-secret", &toks, buf));
        assert!(!is_listed(b"host", &toks, buf));
        // Out-of-range spans never panic.
        assert!(!is_listed(b"x", &[Span { start: 20, end: 99 }], buf));
    }

    #[test]
    fn tchar_table() {
        let specials = b"!#$%&'*+-.^_`|~";
        for b in 0u8..=255 {
            let expected = b.is_ascii_alphanumeric() || specials.contains(&b);
            assert_eq!(is_tchar(b), expected, "byte {b:#x}");
        }
        assert!(is_token(b"chunked"));
        assert!(!is_token(b""));
        assert!(!is_token(b"a b"));
    }
}
