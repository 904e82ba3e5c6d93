//! Building a limiter key from a request, by `limit_by`, into a reused buffer.
//!
//! Keys start with a one-byte tag so different sources never collide (`i` ip, `c` consumer, `k`
//! credential, `h` header, `p` path, `s` service, `r` route); a missing consumer, credential or
//! header falls back to the client IP (Kong's behaviour). IPs are written as raw octets (4 or 16
//! bytes). Keys longer than `MAX_KEY` bytes (long header values or paths) are replaced by a 128-bit
//! hash so a table of `max_keys` entries has bounded memory. No allocation once `out` has grown.

use std::hash::{Hash, Hasher};
use std::net::IpAddr;

use crate::config::model::LimitBy;

/// Keys longer than this are stored as `H` + a 16-byte hash.
pub const MAX_KEY: usize = 96;

/// What the limiter needs to know about a request; implemented by the proxy's request context.
pub trait RequestInfo {
    fn client_ip(&self) -> IpAddr;
    /// A request header by lower-case name (first occurrence).
    fn header(&self, name_lower: &[u8]) -> Option<&[u8]>;
    /// The normalized path (what routing saw).
    fn path(&self) -> &[u8];
    /// The route's name (not its index: a reload that reorders routes keeps counts per route, and
    /// cluster nodes with other route lists still share the right count).
    fn route(&self) -> &[u8];
    /// The service's name (likewise).
    fn service(&self) -> &[u8];
    /// The authenticated consumer's name, once auth plugins exist.
    fn consumer(&self) -> Option<&[u8]>;
    /// The credential (API key id, JWT `iss`/`sub`…) auth identified, once auth plugins exist.
    fn credential(&self) -> Option<&[u8]>;
    /// Which kind of credential `credential` is (`b'k'` API key, `b'b'` basic-auth user, `b'j'`
    /// JWT key): an API key id and a basic-auth username that are the same string are two
    /// clients, not one count.
    fn credential_kind(&self) -> u8 {
        b'k'
    }
}

/// Writes the key for `req` into `out` (cleared first).
pub fn build_key<R: RequestInfo + ?Sized>(limit_by: &LimitBy, req: &R, out: &mut Vec<u8>) {
    out.clear();
    let tagged = |out: &mut Vec<u8>, tag: u8, v: &[u8]| {
        out.push(tag);
        out.extend_from_slice(v);
    };
    match limit_by {
        LimitBy::Ip => ip(out, req.client_ip()),
        // An empty (or blank) value is a missing one: falls back to the client IP as documented.
        // Otherwise every client sending `X-Key:` empty shared one count, and one of them could
        // use up the limit for all (found by a review).
        LimitBy::Consumer => match req.consumer().filter(|c| !is_blank(c)) {
            Some(c) => tagged(out, b'c', c),
            None => ip(out, req.client_ip()),
        },
        LimitBy::Credential => match req.credential().filter(|c| !is_blank(c)) {
            Some(c) => {
                out.push(b'k');
                out.push(req.credential_kind());
                out.extend_from_slice(c);
            }
            None => ip(out, req.client_ip()),
        },
        LimitBy::Header(name) => match req.header(name.as_bytes()).filter(|v| !is_blank(v)) {
            Some(v) => tagged(out, b'h', v),
            None => ip(out, req.client_ip()),
        },
        LimitBy::Path => {
            // Spellings an upstream serves alike are one key: without `;parameters`, in any case
            // (Express and IIS route case-insensitively) and without a trailing '/' (Express and
            // Flask with strict_slashes off serve `/a/` as `/a`). Otherwise each would be a fresh
            // limit: 2^n case variants of an n-letter path.
            out.push(b'p');
            let start = out.len();
            crate::router::push_path_without_params(out, req.path());
            if let Some(path) = out.get_mut(start..) {
                path.make_ascii_lowercase();
            }
            if out.len() > start + 1 && out.last() == Some(&b'/') {
                out.pop();
            }
        }
        // By name: keyed by config position, a reload that swapped two services handed one's
        // used-up count to the other (found by a review), and cluster nodes whose lists differ
        // shared one count across different services.
        LimitBy::Service => tagged(out, b's', req.service()),
        LimitBy::Route => tagged(out, b'r', req.route()),
    }
    if out.len() > MAX_KEY {
        let (a, b) = (hash(out, 0x5a), hash(out, 0xa5));
        out.clear();
        out.push(b'H');
        out.extend_from_slice(&a.to_le_bytes());
        out.extend_from_slice(&b.to_le_bytes());
    }
}

/// An IPv4 address, or an IPv6 client's /64: one host usually has a whole /64 to pick addresses
/// from, so a key per address would let it rotate through fresh limits (basic-auth's failure
/// limits group IPv6 the same way).
fn ip(out: &mut Vec<u8>, ip: IpAddr) {
    out.push(b'i');
    match ip {
        IpAddr::V4(v4) => out.extend_from_slice(&v4.octets()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => out.extend_from_slice(&v4.octets()),
            None => out.extend_from_slice(v6.octets().get(..8).unwrap_or_default()),
        },
    }
}

/// Empty, or only spaces and tabs.
fn is_blank(v: &[u8]) -> bool {
    v.iter().all(|&b| b == b' ' || b == b'\t')
}

/// Deterministic across processes of the same build (cluster nodes must agree on keys).
#[allow(deprecated)]
fn hash(data: &[u8], salt: u8) -> u64 {
    let mut h = std::hash::SipHasher::new_with_keys(0x7269_6e67_6761_7465, u64::from(salt));
    data.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    struct Req {
        consumer: Option<&'static [u8]>,
        header: Option<&'static [u8]>,
        path: &'static [u8],
    }

    impl RequestInfo for Req {
        fn client_ip(&self) -> IpAddr {
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7))
        }
        fn header(&self, name: &[u8]) -> Option<&[u8]> {
            (name == b"x-api-key").then_some(self.header).flatten()
        }
        fn path(&self) -> &[u8] {
            self.path
        }
        fn route(&self) -> &[u8] {
            b"orders"
        }
        fn service(&self) -> &[u8] {
            b"shop"
        }
        fn consumer(&self) -> Option<&[u8]> {
            self.consumer
        }
        fn credential(&self) -> Option<&[u8]> {
            None
        }
    }

    #[test]
    fn an_ipv6_client_is_its_slash_64() {
        let key = |s: &str| {
            let mut out = Vec::new();
            ip(&mut out, s.parse().unwrap_or_else(|e| panic!("{s}: {e}")));
            out
        };
        assert_eq!(key("2001:db8::1"), key("2001:db8::5"));
        assert_eq!(key("2001:db8::1"), key("2001:db8:0:0:ffff:1:2:3"));
        assert_ne!(key("2001:db8::1"), key("2001:db8:0:1::1"));
        assert_eq!(key("::ffff:10.0.0.7"), key("10.0.0.7"));
        assert_ne!(key("10.0.0.7"), key("10.0.0.8"));
    }

    /// A credential of some kind, for `limit_by = "credential"`.
    struct Cred(u8, &'static [u8]);

    impl RequestInfo for Cred {
        fn client_ip(&self) -> IpAddr {
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7))
        }
        fn header(&self, _: &[u8]) -> Option<&[u8]> {
            None
        }
        fn path(&self) -> &[u8] {
            b"/"
        }
        fn route(&self) -> &[u8] {
            b"r"
        }
        fn service(&self) -> &[u8] {
            b"s"
        }
        fn consumer(&self) -> Option<&[u8]> {
            None
        }
        fn credential(&self) -> Option<&[u8]> {
            Some(self.1)
        }
        fn credential_kind(&self) -> u8 {
            self.0
        }
    }

    /// An API key id and a basic-auth user of the same name are two keys (they were one: found
    /// by a review).
    #[test]
    fn credentials_of_different_kinds_never_share_a_key() {
        let key = |c: Cred| {
            let mut out = Vec::new();
            build_key(&LimitBy::Credential, &c, &mut out);
            out
        };
        assert_eq!(key(Cred(b'k', b"alice")), b"kkalice");
        assert_ne!(key(Cred(b'k', b"alice")), key(Cred(b'b', b"alice")));
        assert_ne!(key(Cred(b'b', b"alice")), key(Cred(b'j', b"alice")));
    }

    #[test]
    fn keys_and_fallbacks() {
        let mut out = Vec::new();
        let r = Req {
            consumer: None,
            header: Some(b"abc"),
            path: b"/x",
        };
        build_key(&LimitBy::Ip, &r, &mut out);
        assert_eq!(out, b"i\x0a\x00\x00\x07");
        build_key(&LimitBy::Consumer, &r, &mut out);
        assert_eq!(
            out, b"i\x0a\x00\x00\x07",
            "missing consumer falls back to ip"
        );
        build_key(&LimitBy::Header("x-api-key".into()), &r, &mut out);
        assert_eq!(out, b"habc");
        build_key(&LimitBy::Header("x-other".into()), &r, &mut out);
        assert_eq!(out[0], b'i');
        // An empty or blank value is a missing one: the client's IP, not one shared key.
        for blank in [&b""[..], b" ", b" \t "] {
            let r = Req {
                header: Some(blank),
                consumer: Some(blank),
                ..r
            };
            build_key(&LimitBy::Header("x-api-key".into()), &r, &mut out);
            assert_eq!(out, b"i\x0a\x00\x00\x07", "{blank:?}");
            build_key(&LimitBy::Consumer, &r, &mut out);
            assert_eq!(out, b"i\x0a\x00\x00\x07", "{blank:?}");
        }
        build_key(&LimitBy::Path, &r, &mut out);
        assert_eq!(out, b"p/x");
        for path in [&b"/x;a"[..], b"/x;jsessionid=1;b=2"] {
            let r = Req { path, ..r };
            build_key(&LimitBy::Path, &r, &mut out);
            assert_eq!(out, b"p/x", "{path:?}");
        }
        let r2 = Req {
            path: b"/a;v=1/b;c/",
            ..r
        };
        build_key(&LimitBy::Path, &r2, &mut out);
        assert_eq!(out, b"p/a/b", "a trailing '/' is left out");
        for path in [
            &b"/a/;/b"[..],
            b"/a/;x/;y/b",
            b"/a;x/;/b",
            b"/A/b/",
            b"/a/B",
        ] {
            let r = Req { path, ..r };
            build_key(&LimitBy::Path, &r, &mut out);
            assert_eq!(out, b"p/a/b", "{path:?}");
        }
        let root = Req { path: b"/", ..r };
        build_key(&LimitBy::Path, &root, &mut out);
        assert_eq!(out, b"p/");
        build_key(&LimitBy::Route, &r, &mut out);
        assert_eq!(out, b"rorders");
        build_key(&LimitBy::Service, &r, &mut out);
        assert_eq!(out, b"sshop");
        let long = Req {
            consumer: Some(b"c"),
            header: None,
            path: b"/0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789",
        };
        build_key(&LimitBy::Path, &long, &mut out);
        assert_eq!(out.len(), 17);
        assert_eq!(out[0], b'H');
        build_key(&LimitBy::Consumer, &long, &mut out);
        assert_eq!(out, b"cc");
    }
}
