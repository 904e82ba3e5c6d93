//! Strict digit-by-digit number parsing for Content-Length and chunk sizes.
//!
//! Rust's own parsers are lenient where HTTP is strict (`"+5".parse::<u64>()` succeeds,
//! `u64::from_str_radix("+2d", 16)` succeeds), and a lenient length is a request-smuggling vector:
//! two hops that disagree on a body length disagree on where the next message starts. So these
//! functions accept exactly the RFC 9110/9112 grammar and nothing else:
//!
//! * no sign, no prefix, no surrounding or embedded whitespace, no empty input;
//! * a bounded number of digits (so the loop is bounded too) and an overflow check on every step.

/// Longest decimal Content-Length accepted: 19 digits always fit in a u64 (u64::MAX has 20).
const MAX_DEC_DIGITS: usize = 19;
/// Longest chunk-size accepted: 16 hex digits always fit in a u64.
const MAX_HEX_DIGITS: usize = 16;

/// Parse a Content-Length field value: 1..=19 ASCII digits, nothing else.
///
/// Leading zeros are allowed (`1*DIGIT` in RFC 9110 §8.6); `None` means "reject with 400/502".
pub fn parse_content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > MAX_DEC_DIGITS {
        return None;
    }
    let mut n: u64 = 0;
    for &b in v {
        let d = match b {
            b'0'..=b'9' => u64::from(b - b'0'),
            _ => return None,
        };
        n = n.checked_mul(10)?.checked_add(d)?;
    }
    Some(n)
}

/// Value of one hex digit, or `None` for anything that is not `[0-9A-Fa-f]`.
#[inline]
pub fn hex_digit(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some(u64::from(b - b'0')),
        b'a'..=b'f' => Some(u64::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u64::from(b - b'A' + 10)),
        _ => None,
    }
}

/// Parse a chunk-size: 1..=16 hex digits, no sign, no `0x` prefix, nothing else.
pub fn parse_chunk_size(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > MAX_HEX_DIGITS {
        return None;
    }
    let mut n: u64 = 0;
    for &b in v {
        n = n.checked_mul(16)?.checked_add(hex_digit(b)?)?;
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_accepts_plain_digits() {
        assert_eq!(parse_content_length(b"0"), Some(0));
        assert_eq!(parse_content_length(b"5"), Some(5));
        assert_eq!(parse_content_length(b"0005"), Some(5));
        assert_eq!(parse_content_length(b"1234567890"), Some(1_234_567_890));
        // 19 digits: the largest accepted length.
        assert_eq!(
            parse_content_length(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
    }

    #[test]
    fn content_length_rejects_everything_else() {
        let bad: &[&[u8]] = &[
            b"",
            b"+5",
            b"-5",
            b" 5",
            b"5 ",
            b"\t5",
            b"5\t",
            b"0x5",
            b"5,5",
            b"5, 5",
            b"\x0b5",
            b"5\x0b",
            b"\x005",
            b"1e3",
            b"five",
            b"\xd9\xa5",             // Arabic-Indic digit five (UTF-8): not ASCII
            b"18446744073709551615", // u64::MAX: 20 digits
            b"18446744073709551616", // u64::MAX + 1
            b"00000000000000000001", // 20 digits even if small
            b"99999999999999999999999",
        ];
        for v in bad {
            assert_eq!(
                parse_content_length(v),
                None,
                "{:?}",
                String::from_utf8_lossy(v)
            );
        }
    }

    #[test]
    fn chunk_size_accepts_hex() {
        assert_eq!(parse_chunk_size(b"0"), Some(0));
        assert_eq!(parse_chunk_size(b"5"), Some(5));
        assert_eq!(parse_chunk_size(b"a"), Some(10));
        assert_eq!(parse_chunk_size(b"Ff"), Some(255));
        assert_eq!(parse_chunk_size(b"000010"), Some(16));
        assert_eq!(parse_chunk_size(b"ffffffffffffffff"), Some(u64::MAX));
        assert_eq!(parse_chunk_size(b"0000000000000001"), Some(1));
    }

    #[test]
    fn chunk_size_rejects_everything_else() {
        let bad: &[&[u8]] = &[
            b"",
            b"+5",
            b"-5",
            b"+2d",
            b" 5",
            b"5 ",
            b"0x5",
            b"0X5",
            b"\x0b5",
            b"5;",
            b"g",
            b"10000000000000000", // u64::MAX + 1 (17 digits)
            b"00000000000000001", // 17 digits
            b"ffffffffffffffff0",
        ];
        for v in bad {
            assert_eq!(
                parse_chunk_size(v),
                None,
                "{:?}",
                String::from_utf8_lossy(v)
            );
        }
    }

    #[test]
    fn hex_digit_table() {
        for b in 0u8..=255 {
            let expected = (b as char).to_digit(16).filter(|_| b.is_ascii());
            assert_eq!(hex_digit(b), expected.map(u64::from), "byte {b:#x}");
        }
    }
}
