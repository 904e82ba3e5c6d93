//! Query strings: splitting `a=1&b&c=` into parameters (with their byte ranges, so a caller can
//! cut one out) and form-decoding values lazily. Shared by the router's query conditions and the
//! auth plugins (API keys and tokens in the query). Allocation-free.

/// One `name=value` parameter; `start..end` is its whole text within the query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param<'q> {
    pub start: usize,
    pub end: usize,
    pub name: &'q [u8],
    pub value: &'q [u8],
}

/// The parameters of `query` in order; empty pairs (`&&`) are skipped, `b` alone has an empty value.
pub fn params(query: &[u8]) -> impl Iterator<Item = Param<'_>> {
    let mut start = 0;
    query.split(|&b| b == b'&').filter_map(move |pair| {
        let at = start;
        start += pair.len() + 1;
        if pair.is_empty() {
            return None;
        }
        let (name, value) = match memchr::memchr(b'=', pair) {
            Some(eq) => (
                pair.get(..eq).unwrap_or_default(),
                pair.get(eq + 1..).unwrap_or_default(),
            ),
            None => (pair, &b""[..]),
        };
        Some(Param {
            start: at,
            end: at + pair.len(),
            name,
            value,
        })
    })
}

/// Form-decodes `raw` lazily: `+` is a space, `%XX` a byte, an invalid escape is literal.
pub fn decode(raw: &[u8]) -> impl Iterator<Item = u8> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        let b = *raw.get(i)?;
        i += 1;
        match b {
            b'+' => Some(b' '),
            b'%' => {
                let hi = raw.get(i).copied().and_then(hex_val);
                let lo = raw.get(i + 1).copied().and_then(hex_val);
                match (hi, lo) {
                    (Some(hi), Some(lo)) => {
                        i += 2;
                        Some(hi << 4 | lo)
                    }
                    _ => Some(b'%'),
                }
            }
            _ => Some(b),
        }
    })
}

/// The value of one hex digit (either case).
pub fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Whether a raw (encoded) parameter name is `want` as the most lenient frameworks read it:
/// decoded, without leading spaces (PHP), up to a NUL (PHP) or a `[` (PHP and qs arrays:
/// `debug[]`, `debug[x]`), in any ASCII case (ASP.NET), with `.` and space read as `_` (PHP turns
/// `is.admin` and `is admin` into `$_GET['is_admin']`), and a `[` no `]` follows read as `_` too
/// (PHP: `is[admin` is `is_admin`). `want` is read the same way.
pub fn lenient_name_eq(raw: &[u8], want: &[u8]) -> bool {
    let fold = |b: u8| match b {
        b'.' | b' ' => b'_',
        b => b.to_ascii_lowercase(),
    };
    let want = want.iter().map(|&b| fold(b));
    let name = || decode(raw).skip_while(|&b| b == b' ');
    // PHP's array reading: the name ends at the first `[`.
    if name()
        .take_while(|&b| b != 0 && b != b'[')
        .map(fold)
        .eq(want.clone())
    {
        return true;
    }
    // An unmatched `[` is no array: PHP reads it as `_` and keeps the rest of the name. (Decoded
    // again rather than collected: this runs for every parameter a `remove` looks at.)
    let whole = || name().take_while(|&b| b != 0);
    match whole().position(|b| b == b'[') {
        Some(i) if !whole().skip(i + 1).any(|b| b == b']') => whole()
            .enumerate()
            .map(|(j, b)| if j == i { b'_' } else { fold(b) })
            .eq(want),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_cover_each_parameter() {
        let q = b"a=1&&key=x%20y&b";
        let p: Vec<Param> = params(q).collect();
        assert_eq!(p.len(), 3);
        assert_eq!((p[1].start, p[1].end), (5, 14));
        assert_eq!(&q[p[1].start..p[1].end], b"key=x%20y");
        assert_eq!(p[2].value, b"");
        assert_eq!(decode(p[1].value).collect::<Vec<u8>>(), b"x y");
        assert_eq!(decode(b"%zz%4").collect::<Vec<u8>>(), b"%zz%4");
    }

    #[test]
    fn lenient_names_read_as_php_asp_net_and_qs_do() {
        for raw in [
            &b"is_admin"[..],
            b"IS_ADMIN",
            b"%20is_admin",
            b"is.admin",
            b"is+admin",
            b"is%20admin",
            b"is%5Badmin",
            b"is[admin",
            b"is_admin[]",
            b"is_admin[x]",
            b"is_admin%00junk",
            b"%69s_admin",
        ] {
            assert!(
                lenient_name_eq(raw, b"is_admin"),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        for raw in [
            &b"is_admins"[..],
            b"isadmin",
            b"is[admin]",
            b"is-admin",
            b"admin",
        ] {
            assert!(
                !lenient_name_eq(raw, b"is_admin"),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        assert!(lenient_name_eq(b"is_admin", b"is.admin"));
    }
}
