//! Text -> raw structs: TOML syntax, then each top-level entity on its own.
//!
//! Every `[[upstreams]]`/`[[services]]`/`[[routes]]` element and `[server]` is deserialized
//! separately, so independent typos in different entities are all reported in one run; inside one
//! struct (where serde stops at the first error) the offending key is taken out and decoding goes
//! on, up to `MAX_ERRORS_PER_ITEM` errors. Elements keep their array index even when a neighbour fails,
//! so key paths always match the file. Names of elements that failed to decode are remembered, so
//! `validate` does not add a misleading "no such service" for a reference to one of them.

use std::collections::HashSet;

use serde::de::{DeserializeOwned, IntoDeserializer};
use toml_edit::{ImDocument, Item, Value};

use super::locate::{KeyPath, Problem};
use super::raw::auth::{
    RawAcl, RawBasicAuth, RawConsumer, RawForwardAuth, RawIpRestriction, RawJwt, RawKeyAuth,
};
use super::raw::plugins::{
    DecodedPlugin, RawCompression, RawCorrelationId, RawCors, RawPlugin, RawPluginConfig,
    RawRateLimiting, RawTermination, RawTransformer,
};
use super::raw::{
    RawAccessLog, RawAcme, RawAdmin, RawCertificate, RawMetrics, RawRoute, RawServer, RawService,
    RawUpstream,
};

/// The file's content, as far as it decoded.
#[derive(Debug, Default)]
pub struct Decoded {
    /// `None` if `[server]` is absent or failed to decode (then defaults are used).
    pub server: Option<RawServer>,
    /// Index = position in the file's array; `None` = failed to decode (already reported).
    pub upstreams: Vec<Option<RawUpstream>>,
    pub services: Vec<Option<RawService>>,
    pub routes: Vec<Option<RawRoute>>,
    pub certificates: Vec<Option<RawCertificate>>,
    /// `[acme]`; `None` when absent (no ACME certificates) or failed to decode.
    pub acme: Option<RawAcme>,
    /// Names of upstreams/services that exist in the file but failed to decode.
    pub broken_upstreams: HashSet<String>,
    pub broken_services: HashSet<String>,
    /// `[admin]`; `None` when absent (no admin listener) or failed to decode.
    pub admin: Option<RawAdmin>,
    /// `[metrics]`; `None` when absent or failed to decode (then defaults are used).
    pub metrics: Option<RawMetrics>,
    /// `[access_log]`; `None` when absent (no access log) or failed to decode.
    pub access_log: Option<RawAccessLog>,
    /// Names of routes that exist in the file but failed to decode.
    pub broken_routes: HashSet<String>,
    /// `[[plugins]]`, by file index; `None` = failed to decode (already reported).
    pub plugins: Vec<Option<DecodedPlugin>>,
    /// `[[consumers]]`, by file index; `None` = failed to decode (already reported).
    pub consumers: Vec<Option<RawConsumer>>,
    /// Usernames of consumers that failed to decode.
    pub broken_consumers: HashSet<String>,
}

const TOP_LEVEL: &[&str] = &[
    "server",
    "upstreams",
    "services",
    "routes",
    "certificates",
    "acme",
    "admin",
    "metrics",
    "access_log",
    "plugins",
    "consumers",
];

/// Plugin names the loader knows (one `RawPluginConfig` variant each).
pub const PLUGIN_NAMES: &[&str] = &[
    "rate-limiting",
    "key-auth",
    "basic-auth",
    "jwt",
    "acl",
    "ip-restriction",
    "forward-auth",
    "correlation-id",
    "cors",
    "request-transformer",
    "response-transformer",
    "request-termination",
    "compression",
];

/// Parses the TOML syntax; a syntax error is a single problem (the parser cannot continue past it).
pub fn parse(text: &str) -> Result<ImDocument<&str>, Problem> {
    ImDocument::parse(text).map_err(|e| {
        let mut message = format!("invalid TOML: {}", one_line(e.message()));
        // The parser reports where it gave up, often the line after a missing `]` or `}`: say
        // where the unclosed one opened too.
        let at = e.span().map_or(text.len(), |s| s.start);
        if let Some(open) = unclosed_before(text, at).filter(|&o| never_closed(text, o)) {
            let (line, col) = line_col(text, open);
            let what = if text.as_bytes().get(open) == Some(&b'{') {
                "inline table"
            } else {
                "array"
            };
            message.push_str(&format!(
                " (the {what} opened at line {line}, column {col} is not closed)"
            ));
        } else if trailing_comma(text, at) {
            message.push_str(" (TOML allows no comma after the last entry of an inline table)");
        }
        Problem {
            path: key_at(text, at).unwrap_or_else(KeyPath::root),
            span: e.span(),
            message,
            at_key: false,
        }
    })
}

/// Whether the parser stopped at (or just after) a comma closing an inline table: `{ a = 1, }`.
fn trailing_comma(text: &str, at: usize) -> bool {
    let (Some(before), Some(after)) = (text.get(..at), text.get(at..)) else {
        return false;
    };
    let after = after.trim_start();
    let at_comma = after
        .strip_prefix(',')
        .is_some_and(|r| r.trim_start().starts_with('}'));
    at_comma || (before.trim_end().ends_with(',') && after.starts_with('}'))
}

/// The key a syntax error inside a value belongs to, from the text alone (the document did not
/// parse): the `key =` before `at` on its line, under the last table header above it, with the
/// index of each array-of-tables element (`[[routes]]` counted). `None` when the error is not
/// after a `key =` on its own line or sits in an array or inline table left open above.
fn key_at(text: &str, at: usize) -> Option<KeyPath> {
    let at = at.min(text.len());
    if unclosed_before(text, at).is_some_and(|o| never_closed(text, o)) {
        return None;
    }
    let line_start = text.get(..at)?.rfind('\n').map_or(0, |i| i + 1);
    // Inside a multi-line string (an odd number of openers before this line), `x = …` is text.
    let above = text.get(..line_start)?;
    if above.matches("\"\"\"").count() % 2 == 1 || above.matches("\'\'\'").count() % 2 == 1 {
        return None;
    }
    let before = text.get(line_start..at)?;
    let (key, _) = before.split_once('=')?;
    let key = dotted(key)?;
    // Table headers above, with array-of-tables elements counted by their full name.
    let mut counts: std::collections::HashMap<Vec<String>, usize> = Default::default();
    let mut table: Vec<String> = Vec::new();
    for line in text.get(..line_start)?.lines() {
        let l = line.trim();
        if let Some(name) = l.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            table = dotted(name)?;
            *counts.entry(table.clone()).or_default() += 1;
        } else if let Some(name) = l.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = dotted(name)?;
        }
    }
    let mut path = KeyPath::root();
    for (i, seg) in table.iter().enumerate() {
        path = path.key(seg);
        if let Some(n) = table.get(..=i).and_then(|prefix| counts.get(prefix)) {
            path = path.index(n.saturating_sub(1));
        }
    }
    Some(key.iter().fold(path, |p, k| p.key(k)))
}

/// `a.b."c d"` as its segments; `None` for anything that is not a plain or quoted dotted key.
fn dotted(key: &str) -> Option<Vec<String>> {
    let segs: Vec<String> = key
        .split('.')
        .map(|s| s.trim().trim_matches(|c| c == '"' || c == '\'').to_owned())
        .collect();
    let plain = |s: &String| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == ' ')
    };
    segs.iter().all(plain).then_some(segs)
}

/// The offset of the innermost value `[` or `{` still open at `end`, outside strings and comments
/// (a table header, `[server]` or `[[routes]]`, is skipped to the end of its line).
/// `None` when `end` is inside a string (the error is about the string).
fn unclosed_before(text: &str, end: usize) -> Option<usize> {
    open_at(text, end)?.last().copied()
}

/// Whether the `[` or `{` at `open` is still open at the end of the text. An error inside a
/// bracket closed later (`{ a = 1, }`, a number too large inside `[…]`) is not about the bracket.
fn never_closed(text: &str, open: usize) -> bool {
    open_at(text, text.len()).is_none_or(|still| still.contains(&open))
}

/// The offsets of the value brackets open at `end`, outermost first (see `unclosed_before`).
fn open_at(text: &str, end: usize) -> Option<Vec<usize>> {
    let b = text.as_bytes();
    let end = end.min(b.len());
    let mut open: Vec<usize> = Vec::new();
    let mut i = 0;
    while i < end {
        match b.get(i).copied().unwrap_or(b'\n') {
            b'#' => {
                while i < end && b.get(i) != Some(&b'\n') {
                    i += 1;
                }
            }
            q @ (b'"' | b'\'') => {
                let triple = b.get(i..i + 3) == Some(&[q, q, q][..]);
                i += if triple { 3 } else { 1 };
                loop {
                    let c = *b.get(i).filter(|_| i < end)?;
                    if q == b'"' && c == b'\\' {
                        i += 2;
                        continue;
                    }
                    if !triple && c == b'\n' {
                        break;
                    }
                    if c == q && (!triple || b.get(i..i + 3) == Some(&[q, q, q][..])) {
                        i += if triple { 2 } else { 0 };
                        break;
                    }
                    i += 1;
                }
            }
            // A `[` first on its line opens a table header, which is not a value.
            b'[' if text
                .get(..i)
                .unwrap_or("")
                .rsplit('\n')
                .next()
                .is_some_and(|l| l.trim().is_empty()) =>
            {
                while i < end && b.get(i) != Some(&b'\n') {
                    i += 1;
                }
            }
            b'[' | b'{' => open.push(i),
            c @ (b']' | b'}') => {
                let opener = if c == b']' { b'[' } else { b'{' };
                if open.last().is_some_and(|&o| b.get(o) == Some(&opener)) {
                    open.pop();
                }
            }
            _ => {}
        }
        i += 1;
    }
    Some(open)
}

/// 1-based line and column (in characters) of byte offset `at`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Deserializes every top-level entity, pushing a problem for each one that does not fit.
pub fn decode(doc: &ImDocument<&str>, problems: &mut Vec<Problem>) -> Decoded {
    let mut out = Decoded::default();
    let root = KeyPath::root();
    for (key, item) in doc.as_table().iter() {
        let path = root.key(key);
        match key {
            "server" => out.server = decode_one(item, &path, problems),
            "upstreams" => {
                out.upstreams = decode_array(item, &path, problems, &mut out.broken_upstreams)
            }
            "services" => {
                out.services = decode_array(item, &path, problems, &mut out.broken_services)
            }
            "routes" => out.routes = decode_array(item, &path, problems, &mut out.broken_routes),
            "certificates" => {
                out.certificates = decode_array(item, &path, problems, &mut HashSet::new())
            }
            "acme" => out.acme = decode_one(item, &path, problems),
            "admin" => out.admin = decode_one(item, &path, problems),
            "metrics" => out.metrics = decode_one(item, &path, problems),
            "access_log" => out.access_log = decode_one(item, &path, problems),
            "plugins" => out.plugins = decode_plugins(item, &path, problems),
            "consumers" => {
                out.consumers = decode_array(item, &path, problems, &mut out.broken_consumers)
            }
            _ => problems.push(Problem::at_key(
                path,
                format!(
                    "unknown top-level key `{key}`{}; allowed: {}",
                    suggest(key, TOP_LEVEL),
                    list(TOP_LEVEL)
                ),
            )),
        }
    }
    // An element that decoded but has an invalid name is reported by `validate`; references to
    // it are not reported a second time as "no service named".
    out.broken_upstreams
        .extend(invalid_names(&out.upstreams, |u| &u.name));
    out.broken_services
        .extend(invalid_names(&out.services, |s| &s.name));
    out.broken_routes
        .extend(invalid_names(&out.routes, |r| &r.name));
    out
}

/// The names in `elements` that `validate` will refuse.
fn invalid_names<T>(elements: &[Option<T>], name: fn(&T) -> &String) -> Vec<String> {
    elements
        .iter()
        .flatten()
        .map(name)
        .filter(|n| !super::validate::valid_name(n))
        .cloned()
        .collect()
}

fn list(keys: &[&str]) -> String {
    keys.iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The elements of `[[key]]` (or `key = [{…}, …]`); `None` (reported) when it is not an array.
fn array_elements(item: &Item, path: &KeyPath, problems: &mut Vec<Problem>) -> Option<Vec<Item>> {
    let elements: Vec<Item> = match item {
        Item::ArrayOfTables(a) => a.iter().map(|t| Item::Table(t.clone())).collect(),
        Item::Value(Value::Array(a)) => a.iter().map(|v| Item::Value(v.clone())).collect(),
        _ => {
            let key = path.to_string();
            problems.push(Problem::at(
                path.clone(),
                format!("expected an array of tables, written [[{key}]]"),
            ));
            return None;
        }
    };
    Some(elements)
}

/// Decodes `[[key]]` (or `key = [{…}, …]`), one element at a time.
fn decode_array<T: DeserializeOwned>(
    item: &Item,
    path: &KeyPath,
    problems: &mut Vec<Problem>,
    broken_names: &mut HashSet<String>,
) -> Vec<Option<T>> {
    let Some(elements) = array_elements(item, path, problems) else {
        return Vec::new();
    };
    elements
        .iter()
        .enumerate()
        .map(|(i, el)| {
            let decoded = decode_one(el, &path.index(i), problems);
            if decoded.is_none() {
                let name = el.get("name").or_else(|| el.get("username"));
                if let Some(name) = name.and_then(Item::as_str) {
                    broken_names.insert(name.to_owned());
                }
            }
            decoded
        })
        .collect()
}

/// Decodes `[[plugins]]`: each entry's `name` picks the struct its `config` is decoded into, so
/// errors inside `config` carry their exact key path.
fn decode_plugins(
    item: &Item,
    path: &KeyPath,
    problems: &mut Vec<Problem>,
) -> Vec<Option<DecodedPlugin>> {
    let Some(elements) = array_elements(item, path, problems) else {
        return Vec::new();
    };
    elements
        .iter()
        .enumerate()
        .map(|(i, el)| decode_plugin(el, &path.index(i), problems))
        .collect()
}

fn decode_plugin(el: &Item, path: &KeyPath, problems: &mut Vec<Problem>) -> Option<DecodedPlugin> {
    match el.get("name").and_then(Item::as_str) {
        Some("rate-limiting") => decode_one::<RawPlugin<RawRateLimiting>>(el, path, problems)
            .map(|p| p.into_decoded(RawPluginConfig::RateLimiting)),
        Some("key-auth") => decode_one::<RawPlugin<RawKeyAuth>>(el, path, problems)
            .map(|p| p.into_decoded(RawPluginConfig::KeyAuth)),
        Some("basic-auth") => decode_one::<RawPlugin<RawBasicAuth>>(el, path, problems)
            .map(|p| p.into_decoded(RawPluginConfig::BasicAuth)),
        Some("jwt") => decode_one::<RawPlugin<RawJwt>>(el, path, problems)
            .map(|p| p.into_decoded(RawPluginConfig::Jwt)),
        Some("acl") => decode_one::<RawPlugin<RawAcl>>(el, path, problems)
            .map(|p| p.into_decoded(RawPluginConfig::Acl)),
        Some("ip-restriction") => decode_one::<RawPlugin<RawIpRestriction>>(el, path, problems)
            .map(|p| p.into_decoded(RawPluginConfig::IpRestriction)),
        Some("forward-auth") => decode_one::<RawPlugin<RawForwardAuth>>(el, path, problems)
            .map(|p| p.into_decoded(RawPluginConfig::ForwardAuth)),
        Some("correlation-id") => decode_one::<RawPlugin<RawCorrelationId>>(el, path, problems)
            .map(|p| p.into_decoded(RawPluginConfig::CorrelationId)),
        Some("cors") => decode_one::<RawPlugin<RawCors>>(el, path, problems)
            .map(|p| p.into_decoded(RawPluginConfig::Cors)),
        Some("request-transformer") => decode_one::<RawPlugin<RawTransformer>>(el, path, problems)
            .map(|p| p.into_decoded(RawPluginConfig::RequestTransformer)),
        Some("response-transformer") => decode_one::<RawPlugin<RawTransformer>>(el, path, problems)
            .map(|p| p.into_decoded(RawPluginConfig::ResponseTransformer)),
        Some("request-termination") => decode_one::<RawPlugin<RawTermination>>(el, path, problems)
            .map(|p| p.into_decoded(RawPluginConfig::RequestTermination)),
        Some("compression") => decode_one::<RawPlugin<RawCompression>>(el, path, problems)
            .map(|p| p.into_decoded(RawPluginConfig::Compression)),
        Some(name) => {
            problems.push(Problem::at(
                path.key("name"),
                format!(
                    "unknown plugin {name:?}{}; available: {}",
                    suggest(name, PLUGIN_NAMES),
                    list(PLUGIN_NAMES)
                ),
            ));
            None
        }
        // No (string) name: let serde say what is wrong with the entry.
        None => {
            decode_one::<RawPlugin<serde::de::IgnoredAny>>(el, path, problems);
            None
        }
    }
}

/// Deserializes one item, recording its errors (with key path and position). Serde stops at the
/// first error, so the offending key is taken out and the item decoded again, up to
/// `MAX_ERRORS_PER_ITEM` times: a table with three typos gets three errors in one `check`.
fn decode_one<T: DeserializeOwned>(
    item: &Item,
    path: &KeyPath,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    // A `[table]` becomes an inline table value; the values inside keep their spans.
    let mut value = item.clone().into_value().ok()?;
    // Paths (relative to the item) of the keys taken out.
    let mut removed: Vec<Vec<super::locate::Seg>> = Vec::new();
    for _ in 0..MAX_ERRORS_PER_ITEM {
        let e = match serde_path_to_error::deserialize::<_, T>(value.clone().into_deserializer()) {
            Ok(v) => return removed.is_empty().then_some(v),
            Err(e) => e,
        };
        let mut rel = KeyPath::root().join_serde(e.path());
        let inner = e.into_inner();
        let message = friendlier(inner.message());
        // For an unknown key serde reports the enclosing table; name the offending key itself.
        if let Some(name) = unknown_field(&message) {
            if rel.0.last() != Some(&super::locate::Seg::Key(name.clone())) {
                rel = rel.key(&name);
            }
        }
        // A key taken out to go on is not missing: the error about it was the real one. (Serde
        // stops there, so a later missing field in the same table goes unreported.)
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|m| m.split('`').next());
        if let Some(m) = missing {
            let mut at = rel.0.clone();
            at.push(super::locate::Seg::Key(m.to_owned()));
            if removed.contains(&at) {
                return None;
            }
        }
        let mut key = path.clone();
        key.0.extend(rel.0.iter().cloned());
        problems.push(Problem {
            path: key,
            span: inner.span(),
            message,
            at_key: false,
        });
        remove_at(&mut value, &rel.0)?;
        removed.push(rel.0);
    }
    None
}

/// How many errors one table (a route, a plugin) reports at most.
const MAX_ERRORS_PER_ITEM: usize = 8;

/// Takes the key at `path` (relative to `value`) out of its inline table, so decoding can go on
/// past it; returns its name. `None` when the path does not end at a table key (an array element:
/// removing it would shift the indices of later errors).
fn remove_at(value: &mut Value, path: &[super::locate::Seg]) -> Option<String> {
    use super::locate::Seg;
    let (last, parents) = path.split_last()?;
    let mut at = value;
    for seg in parents {
        at = match (seg, at) {
            (Seg::Key(k), Value::InlineTable(t)) => t.get_mut(k)?,
            (Seg::Index(i), Value::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    match (last, at) {
        (Seg::Key(k), Value::InlineTable(t)) => t.remove(k).map(|_| k.clone()),
        _ => None,
    }
}

/// The field name in serde's "unknown field `x`, expected …".
fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.find('`').map(|end| rest[..end].to_owned())
}

/// ` (did you mean `x`?)` when `key` looks like a typo of one of `allowed` (same letters ignoring case
/// and separators, or at most two edits away); else "".
fn suggest(key: &str, allowed: &[&str]) -> String {
    let squash = |s: &str| -> String {
        s.chars()
            .filter(|c| *c != '_' && *c != '-')
            .flat_map(char::to_lowercase)
            .collect()
    };
    let k = squash(key);
    allowed
        .iter()
        .find(|a| squash(a) == k)
        .or_else(|| allowed.iter().find(|a| edit_distance(&squash(a), &k) <= 2))
        .map(|a| format!(" (did you mean `{a}`?)"))
        .unwrap_or_default()
}

/// Levenshtein distance (short strings only: keys).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Serde's "unknown field `x`, expected one of `a`, `b`" with a suggestion inserted.
fn with_suggestion(message: String) -> String {
    let Some(name) = unknown_field(&message) else {
        return message;
    };
    let allowed: Vec<&str> = message
        .split_once("expected")
        .map(|(_, rest)| rest.split('`').skip(1).step_by(2).collect())
        .unwrap_or_default();
    let hint = if name == "body" && allowed.contains(&"json") {
        // Kong's request-transformer key: its JSON case is `json` here.
        " (JSON bodies are edited with `json`, url-encoded form bodies with `form`; multipart bodies are not edited)".to_owned()
    } else {
        suggest(&name, &allowed)
    };
    if hint.is_empty() {
        return message;
    }
    message.replacen(&format!("`{name}`"), &format!("`{name}`{hint}"), 1)
}

/// Serde speaks of sequences and maps; TOML users know arrays and tables.
fn friendlier(message: &str) -> String {
    let message = without_wrong_value(&one_line(message))
        .replace("invalid type: sequence", "invalid type: array")
        .replace("invalid type: map", "invalid type: table")
        .replace("expected a sequence", "expected an array")
        .replace("expected a map", "expected a table");
    with_suggestion(message)
}

/// "invalid type: integer `98765432109876`, expected a string" loses the value: the position
/// already shows it, and the message goes to logs and to `POST /reload`'s answer, where a secret
/// written without quotes (`token = 98765432109876`) must not appear. Other messages keep theirs.
fn without_wrong_value(message: &str) -> String {
    let Some(rest) = message.strip_prefix("invalid type: ") else {
        return message.to_owned();
    };
    // The last one: a string value could itself contain ", expected".
    let Some(end) = rest.rfind(", expected") else {
        return message.to_owned();
    };
    let what = &rest[..end];
    // "floating point `1.5`": the kind is everything before the quoted value.
    let kind = what.find(['`', '"']).map_or(what, |q| what[..q].trim_end());
    format!("invalid type: {kind}{}", &rest[end..])
}

fn one_line(s: &str) -> String {
    s.trim()
        .split('\n')
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_of_the_wrong_type_is_not_repeated() {
        for (serde, want) in [
            (
                "invalid type: integer `98765432109876`, expected a string",
                "invalid type: integer, expected a string",
            ),
            (
                "invalid type: floating point `1.5`, expected u64",
                "invalid type: floating point, expected u64",
            ),
            (
                "invalid type: string \"s3cret\", expected a boolean",
                "invalid type: string, expected a boolean",
            ),
            (
                "invalid type: sequence, expected a string",
                "invalid type: sequence, expected a string",
            ),
            (
                "invalid value: integer `-1`, expected u64",
                "invalid value: integer `-1`, expected u64",
            ),
        ] {
            assert_eq!(without_wrong_value(serde), want);
        }
    }

    #[test]
    fn a_syntax_error_says_where_an_unclosed_bracket_opened() {
        let cases = [
            (
                "[server]\nlisten = [\"a:1\"\nworkers = 1\n",
                Some("the array opened at line 2, column 10 is not closed"),
            ),
            (
                "[server]\nx = { a = 1\ny = 2\n",
                Some("the inline table opened at line 2, column 5 is not closed"),
            ),
            // Brackets in strings and comments, and closed table headers, do not count.
            (
                "[[routes]]\n# [ not this\npaths = [\"/[x\", '{', \"\"\"]\"\"\"\n\nname = 1\n",
                Some("the array opened at line 3, column 9 is not closed"),
            ),
            ("[server]\nlisten = \"a:1\nworkers = 1\n", None),
            // Errors inside a bracket closed later are not about the bracket.
            ("[server]\nx = { a = 1, }\n", None),
            ("[server]\nx = { a = 99999999999999999999 }\n", None),
            ("[server]\nx = [\n  1,\n  2 3,\n]\n", None),
            ("[server\nworkers = 1\n", None),
        ];
        for (text, want) in cases {
            let message = parse(text).err().map(|p| p.message).unwrap_or_default();
            assert!(message.starts_with("invalid TOML"), "{text:?}: {message}");
            match want {
                Some(w) => assert!(message.contains(w), "{text:?}: {message}"),
                None => assert!(!message.contains("opened at"), "{text:?}: {message}"),
            }
        }
        let p = parse("[server]\nx = { a = 1, }\n")
            .err()
            .unwrap_or_else(|| panic!("parsed"));
        assert!(
            p.message
                .ends_with("(TOML allows no comma after the last entry of an inline table)"),
            "{}",
            p.message
        );
        assert_eq!(p.path.to_string(), "server.x");
        let p = parse("[server]\nx = { a = 99999999999999999999 }\n")
            .err()
            .unwrap_or_else(|| panic!("parsed"));
        assert_eq!(p.path.to_string(), "server.x", "{}", p.message);
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            suggest("stripPath", &["paths", "strip_path"]),
            " (did you mean `strip_path`?)"
        );
        assert_eq!(
            suggest("keepalivee", &["keepalive"]),
            " (did you mean `keepalive`?)"
        );
        assert_eq!(
            suggest("route", &["server", "routes"]),
            " (did you mean `routes`?)"
        );
        assert_eq!(suggest("zzz", &["server", "routes"]), "");
        assert!(with_suggestion(
            "unknown field `body`, expected one of `headers`, `json`".to_owned()
        )
        .contains("(JSON bodies are edited with `json`"));
        assert_eq!(
            with_suggestion("unknown field `pths`, expected one of `name`, `paths`".to_owned()),
            "unknown field `pths` (did you mean `paths`?), expected one of `name`, `paths`"
        );
    }
}
