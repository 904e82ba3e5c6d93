//! Prometheus text exposition format (version 0.0.4) writing primitives, and the extension families
//! other subsystems (the rate limiter) feed in.
//!
//! Everything writes into one `String` with `push_str` and a hand-rolled integer formatter: a scrape of
//! 1,000 routes is tens of thousands of lines and must stay within a few milliseconds.

use std::fmt::Write as _;

/// Content type of `/metrics`.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FamilyKind {
    Counter,
    Gauge,
}

/// One labelled value of an extension family.
#[derive(Debug, Clone)]
pub struct Sample {
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// A metric family from outside the metrics module, e.g. the limiter's
/// `ringgate_ratelimit_rejected_total{limit="..."}`. Invalid metric or label names are skipped when
/// rendering (so a bad family cannot break the exposition); label values are escaped.
#[derive(Debug, Clone)]
pub struct Family {
    pub name: String,
    pub help: String,
    pub kind: FamilyKind,
    pub samples: Vec<Sample>,
}

impl Family {
    pub fn new(name: &str, help: &str, kind: FamilyKind) -> Family {
        Family {
            name: name.to_owned(),
            help: help.to_owned(),
            kind,
            samples: Vec::new(),
        }
    }

    /// Adds a sample; `labels` as `(name, value)` pairs.
    pub fn sample(mut self, labels: &[(&str, &str)], value: f64) -> Family {
        self.samples.push(Sample {
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            value,
        });
        self
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
pub fn valid_metric_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__` (reserved).
pub fn valid_label_name(s: &str) -> bool {
    let mut b = s.bytes();
    !s.starts_with("__")
        && matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// Appends a label value with `\`, `"` and newline escaped.
pub fn escape_label_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Appends HELP text with `\` and newline escaped.
fn escape_help(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// `name="value",name2="value2"` (no braces), escaped.
pub fn label_pairs(pairs: &[(&str, &str)]) -> String {
    let mut s = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(k);
        s.push_str("=\"");
        escape_label_value(&mut s, v);
        s.push('"');
    }
    s
}

/// `# HELP` and `# TYPE` lines.
pub fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    out.push_str("# HELP ");
    out.push_str(name);
    out.push(' ');
    escape_help(out, help);
    out.push_str("\n# TYPE ");
    out.push_str(name);
    out.push(' ');
    out.push_str(kind);
    out.push('\n');
}

/// Appends `n` in decimal.
#[inline]
pub fn push_u64(out: &mut String, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &b in &buf[i..] {
        out.push(char::from(b));
    }
}

/// Appends a float as Prometheus reads it (`NaN`, `+Inf`, `-Inf`, else Rust's shortest decimal).
pub fn push_f64(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        let _ = write!(out, "{}", v as i64);
    } else {
        let _ = write!(out, "{v}");
    }
}

/// One sample line: `name{labels} value` (no braces when `labels` is empty).
#[inline]
pub fn line_u64(out: &mut String, name: &str, labels: &str, value: u64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        out.push_str(labels);
        out.push('}');
    }
    out.push(' ');
    push_u64(out, value);
    out.push('\n');
}

/// Nanoseconds as seconds (`_sum` lines).
pub fn push_secs(out: &mut String, ns: u64) {
    push_u64(out, ns / 1_000_000_000);
    let frac = ns % 1_000_000_000;
    if frac != 0 {
        let digits = format!("{frac:09}");
        out.push('.');
        out.push_str(digits.trim_end_matches('0'));
    }
}

/// Renders extension families (invalid names skipped).
pub fn render_family(out: &mut String, f: &Family) {
    if !valid_metric_name(&f.name) {
        return;
    }
    header(
        out,
        &f.name,
        &f.help,
        match f.kind {
            FamilyKind::Counter => "counter",
            FamilyKind::Gauge => "gauge",
        },
    );
    for s in &f.samples {
        if !s.labels.iter().all(|(k, _)| valid_label_name(k)) {
            continue;
        }
        out.push_str(&f.name);
        if !s.labels.is_empty() {
            out.push('{');
            for (i, (k, v)) in s.labels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(k);
                out.push_str("=\"");
                escape_label_value(out, v);
                out.push('"');
            }
            out.push('}');
        }
        out.push(' ');
        push_f64(out, s.value);
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        let mut s = String::new();
        for n in [0, 7, 10, 1234567890, u64::MAX] {
            s.clear();
            push_u64(&mut s, n);
            assert_eq!(s, n.to_string());
        }
        let secs = |ns| {
            let mut s = String::new();
            push_secs(&mut s, ns);
            s
        };
        assert_eq!(secs(0), "0");
        assert_eq!(secs(1_500_000_000), "1.5");
        assert_eq!(secs(1), "0.000000001");
        assert_eq!(secs(2_000_000_000), "2");
        let f = |v| {
            let mut s = String::new();
            push_f64(&mut s, v);
            s
        };
        assert_eq!(f(3.0), "3");
        assert_eq!(f(0.25), "0.25");
        assert_eq!(f(f64::NAN), "NaN");
        assert_eq!(f(f64::INFINITY), "+Inf");
        assert_eq!(f(f64::NEG_INFINITY), "-Inf");
    }

    #[test]
    fn escaping() {
        assert_eq!(
            label_pairs(&[("route", "a\"b\\c\nd"), ("x", "")]),
            r#"route="a\"b\\c\nd",x="""#
        );
        let mut s = String::new();
        header(&mut s, "m", "line\\one\ntwo", "counter");
        assert_eq!(s, "# HELP m line\\\\one\\ntwo\n# TYPE m counter\n");
    }

    #[test]
    fn names() {
        assert!(valid_metric_name("ringgate_x:y_total"));
        assert!(!valid_metric_name("9x"));
        assert!(!valid_metric_name(""));
        assert!(!valid_metric_name("a-b"));
        assert!(valid_label_name("limit"));
        assert!(!valid_label_name("__name__"));
        assert!(!valid_label_name("a:b"));
    }

    #[test]
    fn families() {
        let mut s = String::new();
        let f = Family::new(
            "ringgate_ratelimit_rejected_total",
            "Rejected.",
            FamilyKind::Counter,
        )
        .sample(&[("limit", "per-ip \"x\"")], 3.0)
        .sample(&[("bad-label", "x")], 1.0)
        .sample(&[], 0.5);
        render_family(&mut s, &f);
        assert_eq!(
            s,
            "# HELP ringgate_ratelimit_rejected_total Rejected.\n\
             # TYPE ringgate_ratelimit_rejected_total counter\n\
             ringgate_ratelimit_rejected_total{limit=\"per-ip \\\"x\\\"\"} 3\n\
             ringgate_ratelimit_rejected_total 0.5\n"
        );
        let mut s = String::new();
        render_family(&mut s, &Family::new("bad name", "", FamilyKind::Gauge));
        assert!(s.is_empty());
    }
}
