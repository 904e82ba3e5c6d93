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
/// `debug[]`, `debug[x]`), in any ASCII case (ASP.NET).
pub fn lenient_name_eq(raw: &[u8], want: &[u8]) -> bool {
    let name = decode(raw)
        .skip_while(|&b| b == b' ')
        .take_while(|&b| b != 0 && b != b'[');
    name.map(|b| b.to_ascii_lowercase())
        .eq(want.iter().map(|b| b.to_ascii_lowercase()))
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
}
