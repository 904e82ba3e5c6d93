//! Header classification: hop-by-hop names, Connection tokens. (stub; replaced by the http module work)
use super::Span;
pub fn eq_ignore_case(a: &[u8], b: &[u8]) -> bool {
    a.eq_ignore_ascii_case(b)
}
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    [
        &b"connection"[..],
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    ]
    .iter()
    .any(|h| eq_ignore_case(h, name))
}
pub fn is_listed(name: &[u8], tokens: &[Span], buf: &[u8]) -> bool {
    tokens.iter().any(|t| eq_ignore_case(t.get(buf), name))
}
