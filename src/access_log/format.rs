//! One access log line as JSON, formatted into a caller's reused buffer.
//!
//! A line is written in two parts. The request's own fields (`push_request`) are taken while its
//! head is still in the client buffer, which a streamed request body later overwrites; the line is
//! completed when the request ends (`push_line`), with the time, status, sizes and timings.
//!
//! Invariants:
//! - every line is one valid JSON object followed by `\n`, whatever bytes a client sent: strings
//!   are escaped (quotes, backslash, every control character and DEL), and bytes that are not
//!   UTF-8 become U+FFFD (one per invalid sequence, as `String::from_utf8_lossy` does);
//! - no allocation beyond the buffer's own growth, and `worst_case` bounds that growth before
//!   anything is written, so a caller can hand a buffer off instead of letting it grow;
//! - nothing here sees the query string or any credential header: the caller passes the path
//!   without the query, and only the fields named below.

use std::net::{IpAddr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::proxy::head::push_u64;

/// The fields known once a request head is parsed. `None` prints as `null`.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// After `trusted_proxies` (what ip-restriction and rate limiting see).
    pub client_ip: IpAddr,
    /// The TCP peer.
    pub remote_addr: SocketAddr,
    pub method: Option<&'a [u8]>,
    /// As sent (Host header or absolute-form authority, port included).
    pub host: Option<&'a [u8]>,
    /// The request path as sent, without the query string.
    pub path: Option<&'a [u8]>,
    pub protocol: Option<&'static str>,
    pub tls: bool,
    pub user_agent: Option<&'a [u8]>,
    /// The client's `X-Request-ID`.
    pub request_id: Option<&'a [u8]>,
}

/// The fields known when a request ends.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outcome<'a> {
    pub status: u16,
    /// Bytes written to the client (heads and bodies; for a tunnel, everything relayed to it).
    pub bytes_sent: u64,
    /// Bytes read from the client (head and body; for a tunnel, everything relayed from it).
    pub request_bytes: u64,
    /// Head parsed -> response fully sent, in microseconds.
    pub duration_us: Option<u64>,
    /// Request head sent upstream -> response head received.
    pub upstream_us: Option<u64>,
    /// What the gateway added (see `metrics::Timings::added_ns`).
    pub gateway_us: Option<u64>,
    pub route: Option<&'a str>,
    pub service: Option<&'a str>,
    /// The target address the request went to.
    pub upstream: Option<SocketAddr>,
    /// The consumer's username, once an auth plugin identified one.
    pub consumer: Option<&'a str>,
    /// Upstream attempts: connects and pooled connections tried, failed ones included (0: the
    /// request never went upstream).
    pub upstream_attempts: u32,
    /// Why the gateway answered itself or the exchange failed (`None`: the upstream's answer,
    /// relayed whole).
    pub detail: Option<&'static str>,
}

/// Fixed bytes of a line besides its strings: keys, punctuation, numbers, time, addresses.
const FIXED: usize = 512;
/// Escaping turns one input byte into at most 6 output bytes (`\u001f`, or `\ufffd` for a byte of
/// an invalid sequence).
const EXPANSION: usize = 6;

/// The most bytes `push_line` can append for these parts (staged part already escaped).
pub fn worst_case(staged: &[u8], o: &Outcome<'_>) -> usize {
    let strings = [o.route, o.service, o.consumer, o.detail]
        .iter()
        .map(|s| s.map_or(0, str::len))
        .sum::<usize>();
    FIXED + staged.len() + strings * EXPANSION
}

/// Appends the request part: `"client_ip":…,…,"request_id":…,` (with the trailing comma).
pub fn push_request(out: &mut Vec<u8>, r: &Request<'_>) {
    out.extend_from_slice(b"\"client_ip\":\"");
    push_ip(out, r.client_ip);
    out.extend_from_slice(b"\",\"remote_addr\":\"");
    push_socket_addr(out, r.remote_addr);
    out.extend_from_slice(b"\",\"method\":");
    push_opt_str(out, r.method);
    out.extend_from_slice(b",\"host\":");
    push_opt_str(out, r.host);
    out.extend_from_slice(b",\"path\":");
    push_opt_str(out, r.path);
    out.extend_from_slice(b",\"protocol\":");
    push_opt_str(out, r.protocol.map(str::as_bytes));
    out.extend_from_slice(if r.tls {
        b",\"tls\":true"
    } else {
        b",\"tls\":false"
    });
    out.extend_from_slice(b",\"user_agent\":");
    push_opt_str(out, r.user_agent);
    out.extend_from_slice(b",\"request_id\":");
    push_opt_str(out, r.request_id);
    out.push(b',');
}

/// Appends one whole line: `{"time":…,"worker":N,` + `staged` (from `push_request`) + the outcome
/// + `}\n`.
pub fn push_line(
    out: &mut Vec<u8>,
    clock: &mut Clock,
    now: SystemTime,
    worker: usize,
    staged: &[u8],
    o: &Outcome<'_>,
) {
    out.extend_from_slice(b"{\"time\":\"");
    clock.push(out, now);
    out.extend_from_slice(b"\",\"worker\":");
    push_u64(out, worker as u64);
    out.push(b',');
    out.extend_from_slice(staged);
    out.extend_from_slice(b"\"status\":");
    push_u64(out, u64::from(o.status));
    out.extend_from_slice(b",\"bytes_sent\":");
    push_u64(out, o.bytes_sent);
    out.extend_from_slice(b",\"request_bytes\":");
    push_u64(out, o.request_bytes);
    out.extend_from_slice(b",\"duration_ms\":");
    push_opt_ms(out, o.duration_us);
    out.extend_from_slice(b",\"upstream_ms\":");
    push_opt_ms(out, o.upstream_us);
    out.extend_from_slice(b",\"gateway_ms\":");
    push_opt_ms(out, o.gateway_us);
    out.extend_from_slice(b",\"route\":");
    push_opt_str(out, o.route.map(str::as_bytes));
    out.extend_from_slice(b",\"service\":");
    push_opt_str(out, o.service.map(str::as_bytes));
    out.extend_from_slice(b",\"upstream\":");
    match o.upstream {
        Some(a) => {
            out.push(b'"');
            push_socket_addr(out, a);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"consumer\":");
    push_opt_str(out, o.consumer.map(str::as_bytes));
    out.extend_from_slice(b",\"upstream_attempts\":");
    push_u64(out, u64::from(o.upstream_attempts));
    out.extend_from_slice(b",\"detail\":");
    push_opt_str(out, o.detail.map(str::as_bytes));
    out.extend_from_slice(b"}\n");
}

/// RFC 3339 UTC time with milliseconds. The date and time of day are formatted once per second
/// and reused (a line per request would otherwise redo the calendar arithmetic each time).
#[derive(Debug, Default)]
pub struct Clock {
    /// The Unix second the cached prefix is for (`None`: nothing cached yet).
    sec: Option<u64>,
    /// `2026-11-22T09:49:00`
    prefix: [u8; 19],
}

impl Clock {
    /// Appends `2026-11-22T09:49:00.123Z`.
    pub fn push(&mut self, out: &mut Vec<u8>, now: SystemTime) {
        let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs();
        if self.sec != Some(secs) {
            let start = out.len();
            crate::log::push_rfc3339(out, now);
            // Years past 9999 would not fit the cache; they are simply never cached.
            if let Some(p) = out.get(start..start + 19) {
                if out.len() - start == 24 {
                    self.prefix.copy_from_slice(p);
                    self.sec = Some(secs);
                }
            }
            return;
        }
        out.extend_from_slice(&self.prefix);
        out.push(b'.');
        let ms = d.subsec_millis();
        out.extend_from_slice(&[
            b'0' + (ms / 100) as u8,
            b'0' + (ms / 10 % 10) as u8,
            b'0' + (ms % 10) as u8,
            b'Z',
        ]);
    }
}

/// `null`, or the escaped string.
fn push_opt_str(out: &mut Vec<u8>, s: Option<&[u8]>) {
    match s {
        Some(s) => push_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// Appends `s` as a JSON string (see the module invariants).
pub fn push_str(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    // Nearly every value is printable ASCII with nothing to escape: copied whole.
    if s.iter().all(|&b| PLAIN[usize::from(b)]) {
        out.extend_from_slice(s);
    } else {
        for chunk in s.utf8_chunks() {
            push_escaped(out, chunk.valid().as_bytes());
            if !chunk.invalid().is_empty() {
                out.extend_from_slice(b"\\ufffd");
            }
        }
    }
    out.push(b'"');
}

/// Bytes a JSON string takes as they are: printable ASCII but `"` and `\`.
static PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0x20;
    while b < 0x7f {
        t[b] = b != b'"' as usize && b != b'\\' as usize;
        b += 1;
    }
    t
};

/// Escapes valid UTF-8: runs of plain bytes are copied whole. Besides what JSON requires, the
/// characters a terminal or an editor would act on are escaped too, so `tail` and `less` show a
/// line as it was sent: DEL, the C1 controls (U+0080..U+009F; U+009B starts an escape sequence on
/// many terminals) and the bidirectional overrides (U+202A..U+202E, U+2066..U+2069, which reorder
/// what is shown, as in CVE-2021-42574).
fn push_escaped(out: &mut Vec<u8>, s: &[u8]) {
    let mut plain = 0;
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        // (bytes of the character, its code point when it is escaped as `\uXXXX`)
        let (len, esc): (usize, Option<u32>) = match (b, s.get(i + 1), s.get(i + 2)) {
            (b'"' | b'\\' | b'\n' | b'\r' | b'\t', _, _) => (1, None),
            // Other controls, and DEL (valid JSON, but a terminal would act on it).
            (0..=0x1f | 0x7f, _, _) => (1, Some(u32::from(b))),
            (0xc2, Some(&c @ 0x80..=0x9f), _) => (2, Some(u32::from(c))),
            (0xe2, Some(&0x80), Some(&c @ 0xaa..=0xae)) => (3, Some(0x2000 | u32::from(c & 0x3f))),
            (0xe2, Some(&0x81), Some(&c @ 0xa6..=0xa9)) => (3, Some(0x2040 | u32::from(c & 0x3f))),
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&s[plain..i]);
        match (b, esc) {
            (_, Some(cp)) => push_u_escape(out, cp),
            (b'"', None) => out.extend_from_slice(b"\\\""),
            (b'\\', None) => out.extend_from_slice(b"\\\\"),
            (b'\n', None) => out.extend_from_slice(b"\\n"),
            (b'\r', None) => out.extend_from_slice(b"\\r"),
            _ => out.extend_from_slice(b"\\t"),
        }
        i += len;
        plain = i;
    }
    out.extend_from_slice(&s[plain..]);
}

/// `\uXXXX` for a code point below U+10000.
fn push_u_escape(out: &mut Vec<u8>, cp: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let hex = |shift: u32| HEX[((cp >> shift) & 0xf) as usize];
    out.extend_from_slice(&[b'\\', b'u', hex(12), hex(8), hex(4), hex(0)]);
}

/// Milliseconds with microsecond precision (`12.345`), or `null`.
fn push_opt_ms(out: &mut Vec<u8>, us: Option<u64>) {
    let Some(us) = us else {
        out.extend_from_slice(b"null");
        return;
    };
    push_u64(out, us / 1000);
    let frac = us % 1000;
    out.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

/// Addresses need no escaping. IPv4 is written by hand: through `fmt` an address and port took
/// about 150 ns, a sizeable share of a whole line.
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => push_ipv4(out, v4),
        IpAddr::V6(v6) => push_display(out, v6),
    }
}

/// `1.2.3.4:80`, `[::1]:80`.
fn push_socket_addr(out: &mut Vec<u8>, a: SocketAddr) {
    match a {
        SocketAddr::V4(a) => {
            push_ipv4(out, *a.ip());
            out.push(b':');
            push_u64(out, u64::from(a.port()));
        }
        SocketAddr::V6(a) => push_display(out, a),
    }
}

fn push_ipv4(out: &mut Vec<u8>, ip: std::net::Ipv4Addr) {
    let [a, b, c, d] = ip.octets();
    push_u64(out, u64::from(a));
    out.push(b'.');
    push_u64(out, u64::from(b));
    out.push(b'.');
    push_u64(out, u64::from(c));
    out.push(b'.');
    push_u64(out, u64::from(d));
}

/// `Display` writes through `fmt` without allocating.
fn push_display(out: &mut Vec<u8>, v: impl std::fmt::Display) {
    use std::io::Write as _;
    let _ = write!(out, "{v}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parse(line: &[u8]) -> serde_json::Value {
        assert_eq!(line.last(), Some(&b'\n'), "a line ends with a newline");
        assert_eq!(
            line.iter().filter(|&&b| b == b'\n').count(),
            1,
            "exactly one newline: {}",
            String::from_utf8_lossy(line)
        );
        match serde_json::from_slice(line) {
            Ok(v) => v,
            Err(e) => panic!("invalid JSON ({e}): {}", String::from_utf8_lossy(line)),
        }
    }

    fn request<'a>(ua: &'a [u8], path: &'a [u8]) -> Request<'a> {
        Request {
            client_ip: "10.1.2.3".parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
            remote_addr: SocketAddr::from(([127, 0, 0, 1], 5555)),
            method: Some(b"GET"),
            host: Some(b"api.example.com:8080"),
            path: Some(path),
            protocol: Some("HTTP/1.1"),
            tls: true,
            user_agent: Some(ua),
            request_id: None,
        }
    }

    fn line(r: &Request<'_>, o: &Outcome<'_>) -> Vec<u8> {
        let mut staged = Vec::new();
        push_request(&mut staged, r);
        let mut out = Vec::new();
        let at = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789);
        push_line(&mut out, &mut Clock::default(), at, 3, &staged, o);
        assert!(out.len() <= worst_case(&staged, o));
        out
    }

    #[test]
    fn every_field() {
        let o = Outcome {
            status: 200,
            bytes_sent: 1234,
            request_bytes: 77,
            duration_us: Some(12_345),
            upstream_us: Some(10_001),
            gateway_us: Some(40),
            route: Some("users"),
            service: Some("users-svc"),
            upstream: Some(SocketAddr::from(([10, 0, 0, 5], 9000))),
            consumer: Some("alice"),
            upstream_attempts: 2,
            detail: Some("upstream timed out"),
        };
        let v = parse(&line(&request(b"curl/8", b"/v1/users"), &o));
        assert_eq!(v["time"], "2024-02-29T12:34:56.789Z");
        assert_eq!(v["worker"], 3);
        assert_eq!(v["client_ip"], "10.1.2.3");
        assert_eq!(v["remote_addr"], "127.0.0.1:5555");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["host"], "api.example.com:8080");
        assert_eq!(v["path"], "/v1/users");
        assert_eq!(v["protocol"], "HTTP/1.1");
        assert_eq!(v["tls"], true);
        assert_eq!(v["user_agent"], "curl/8");
        assert!(v["request_id"].is_null());
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes_sent"], 1234);
        assert_eq!(v["request_bytes"], 77);
        assert_eq!(v["duration_ms"], 12.345);
        assert_eq!(v["upstream_ms"], 10.001);
        assert_eq!(v["gateway_ms"], 0.04);
        assert_eq!(v["route"], "users");
        assert_eq!(v["service"], "users-svc");
        assert_eq!(v["upstream"], "10.0.0.5:9000");
        assert_eq!(v["consumer"], "alice");
        assert_eq!(v["upstream_attempts"], 2);
        assert_eq!(v["detail"], "upstream timed out");
    }

    #[test]
    fn characters_a_terminal_acts_on_are_escaped() {
        // C1 CSI (U+009B), U+0085, RLO (U+202E), LRI (U+2066), PDI (U+2069), DEL; beside them
        // U+00A0, U+2029 and U+206A, which are left as they are.
        let ua = "a\u{9b}31m\u{85}b\u{202e}cba\u{2066}d\u{2069}\u{7f}\u{a0}\u{2029}\u{206a}e";
        let mut out = Vec::new();
        push_str(&mut out, ua.as_bytes());
        assert_eq!(
            String::from_utf8_lossy(&out),
            "\"a\\u009b31m\\u0085b\\u202ecba\\u2066d\\u2069\\u007f\u{a0}\u{2029}\u{206a}e\""
        );
        let back: String = serde_json::from_slice(&out).unwrap_or_default();
        assert_eq!(back, ua, "the same string once parsed");
    }

    #[test]
    fn unknown_fields_are_null() {
        let r = Request {
            method: None,
            host: None,
            path: None,
            protocol: None,
            user_agent: None,
            ..request(b"", b"")
        };
        let v = parse(&line(&r, &Outcome::default()));
        for k in [
            "method",
            "host",
            "path",
            "protocol",
            "user_agent",
            "duration_ms",
            "upstream_ms",
            "route",
            "upstream",
            "consumer",
        ] {
            assert!(v[k].is_null(), "{k}: {v}");
        }
    }

    #[test]
    fn hostile_bytes_stay_valid_json() {
        // Quote, backslash, every control byte, DEL, broken and overlong UTF-8, valid non-ASCII.
        let mut ua: Vec<u8> = b"a\"b\\c".to_vec();
        ua.extend(0u8..0x20);
        ua.extend_from_slice(b"\x7f\xff\xfe\xc3\x28\xe2\x82\xc0\x80 caf\xc3\xa9 \xf0\x9f\x98\x80");
        ua.extend_from_slice(b"\"}\n{\"status\":500");
        let v = parse(&line(&request(&ua, b"/p\"\\\r\n"), &Outcome::default()));
        let got = v["user_agent"].as_str().unwrap_or_default();
        assert!(got.starts_with("a\"b\\c\u{0}\u{1}"), "{got:?}");
        assert!(got.contains("\u{7f}\u{fffd}\u{fffd}\u{fffd}("), "{got:?}");
        assert!(got.contains("café 😀"), "{got:?}");
        assert!(got.ends_with("\"}\n{\"status\":500"), "{got:?}");
        assert_eq!(v["path"], "/p\"\\\r\n");
        assert_eq!(
            v["status"], 0,
            "the injected status stayed inside the string"
        );
    }

    #[test]
    fn worst_case_bounds_every_byte_escaped() {
        let ua = vec![0x01u8; 1000];
        let path = vec![0xffu8; 1000];
        let mut staged = Vec::new();
        push_request(&mut staged, &request(&ua, &path));
        assert!(staged.len() >= 2 * 6000, "each byte became six");
        let name = "\u{1}".repeat(50);
        let o = Outcome {
            route: Some(&name),
            service: Some(&name),
            consumer: Some(&name),
            duration_us: Some(u64::MAX),
            upstream_us: Some(u64::MAX),
            gateway_us: Some(u64::MAX),
            bytes_sent: u64::MAX,
            request_bytes: u64::MAX,
            status: u16::MAX,
            upstream: Some(
                "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"
                    .parse()
                    .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
            ),
            upstream_attempts: u32::MAX,
            detail: Some("upstream sent too many interim responses"),
        };
        let mut out = Vec::new();
        push_line(
            &mut out,
            &mut Clock::default(),
            SystemTime::now(),
            usize::MAX,
            &staged,
            &o,
        );
        assert!(out.len() <= worst_case(&staged, &o));
        parse(&out);
    }

    #[test]
    fn addresses_match_display() {
        for a in [
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.0.0.5:9000",
            "[::1]:8080",
            "[2001:db8::ff00:42:8329]:443",
            "[::ffff:1.2.3.4]:1",
        ] {
            let Ok(sa) = a.parse::<SocketAddr>() else {
                panic!("{a}");
            };
            let mut out = Vec::new();
            push_socket_addr(&mut out, sa);
            assert_eq!(out, sa.to_string().as_bytes());
            out.clear();
            push_ip(&mut out, sa.ip());
            assert_eq!(out, sa.ip().to_string().as_bytes());
        }
    }

    #[test]
    fn clock_cache_matches_a_fresh_format() {
        let mut clock = Clock::default();
        let base = UNIX_EPOCH + Duration::from_millis(1_709_210_096_000);
        for ms in [0u64, 7, 999, 1000, 1001, 61_042] {
            let t = base + Duration::from_millis(ms);
            let mut cached = Vec::new();
            clock.push(&mut cached, t);
            let mut fresh = Vec::new();
            crate::log::push_rfc3339(&mut fresh, t);
            assert_eq!(cached, fresh);
            // Second call: from the cache when in the same second.
            cached.clear();
            clock.push(&mut cached, t);
            assert_eq!(cached, fresh);
        }
    }
}
