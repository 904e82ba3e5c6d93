//! Config of `compression`: gzip for responses (nginx's `gzip`, Envoy's compressor, Traefik's
//! `compress`). Checked here: `level` is zlib's 1..=9, `min_length` a byte count, and each content
//! type a `type/subtype` or `type/*` (lower-cased; parameters such as `charset` are not part of it).

use super::{in_range, push};
use crate::config::locate::{KeyPath, Problem};
use crate::config::model::CompressionDef;
use crate::config::raw::plugins::RawCompression;

/// Envoy's default list: text formats and the structured ones APIs answer with. Images, video and
/// archives are compressed already; `text/event-stream` is left alone so events are not held back.
pub const DEFAULT_TYPES: &[&str] = &[
    "application/javascript",
    "application/json",
    "application/problem+json",
    "application/xhtml+xml",
    "application/xml",
    "image/svg+xml",
    "text/css",
    "text/html",
    "text/javascript",
    "text/plain",
    "text/xml",
];

pub fn compression(
    raw: Option<&RawCompression>,
    path: &KeyPath,
    problems: &mut Vec<Problem>,
) -> Option<CompressionDef> {
    let default = RawCompression::default();
    let c = raw.unwrap_or(&default);
    let cp = path.key("config");
    let before = problems.len();
    // nginx's gzip_comp_level default: at level 1 JSON shrinks about as much as at 6 for a
    // fraction of the CPU, and the gateway's core is the one being spent.
    let level = match c.level {
        None => 1,
        Some(v) => in_range(problems, cp.key("level"), "level", v.0, 1, 9)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(1),
    };
    // Traefik's default: below 1 KiB the header and CPU cost more than the bytes saved.
    let min_length = match c.min_length {
        None => 1024,
        Some(v) => in_range(
            problems,
            cp.key("min_length"),
            "min_length",
            v.0,
            0,
            1 << 40,
        )
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(1024),
    };
    let content_types = match &c.content_types {
        None => DEFAULT_TYPES.iter().map(|t| (*t).to_owned()).collect(),
        Some(list) => {
            if list.is_empty() {
                push(
                    problems,
                    cp.key("content_types"),
                    "an empty list would compress nothing: list media types, or leave the key out for the defaults",
                );
            }
            let mut out = Vec::with_capacity(list.len());
            for (i, t) in list.iter().enumerate() {
                let lower = t.trim().to_ascii_lowercase();
                match media_type(&lower) {
                    true => out.push(lower),
                    false => push(
                        problems,
                        cp.key("content_types").index(i),
                        format!("{t:?} is not a media type: write `type/subtype` (e.g. \"application/json\") or `type/*`, without parameters"),
                    ),
                }
            }
            out
        }
    };
    (problems.len() == before).then_some(CompressionDef {
        min_length,
        level,
        content_types,
    })
}

/// `type/subtype` or `type/*`, each part a token.
fn media_type(t: &str) -> bool {
    let Some((ty, sub)) = t.split_once('/') else {
        return false;
    };
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    ty != "*" && token(ty) && (sub == "*" || token(sub))
}
