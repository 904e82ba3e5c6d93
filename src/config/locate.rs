//! Key paths (`routes[2].paths[0]`) and turning them into file positions.
//!
//! Every problem is first recorded as (key path, message); positions are resolved at the end against
//! the `toml_edit` document, which keeps byte spans. A path that does not exist in the file (a default
//! value, a missing key) resolves to its nearest written ancestor, so every error gets a position.
//! Positions are 1-based lines and columns counted in characters; 0:0 means "no position".

use std::fmt;
use std::ops::Range;

use toml_edit::{ImDocument, Item, Value};

use super::ConfigError;

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A path from the document root to a key, e.g. `routes[2].paths[0]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    pub fn root() -> KeyPath {
        KeyPath(Vec::new())
    }

    /// `self` extended by a key.
    pub fn key(&self, k: &str) -> KeyPath {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.to_owned()));
        p
    }

    /// `self` extended by an array index.
    pub fn index(&self, i: usize) -> KeyPath {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }

    /// Appends a `serde_path_to_error` path (relative to `self`).
    pub fn join_serde(&self, path: &serde_path_to_error::Path) -> KeyPath {
        let mut p = self.clone();
        for seg in path.iter() {
            match seg {
                serde_path_to_error::Segment::Seq { index } => p.0.push(Seg::Index(*index)),
                serde_path_to_error::Segment::Map { key } => p.0.push(Seg::Key(key.clone())),
                serde_path_to_error::Segment::Enum { variant } => {
                    p.0.push(Seg::Key(variant.clone()))
                }
                serde_path_to_error::Segment::Unknown => {}
            }
        }
        p
    }
}

/// A key that TOML accepts unquoted is printed bare; anything else (e.g. a header name with a dot) is
/// quoted, so the printed path is unambiguous.
fn is_bare_key(k: &str) -> bool {
    !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(top level)");
        }
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Index(n) => write!(f, "[{n}]")?,
                Seg::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    if is_bare_key(k) {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// One problem before it has a position: where (path, and the span when the parser knew it) and what.
#[derive(Debug, Clone)]
pub struct Problem {
    pub path: KeyPath,
    /// Byte span from the parser; `None` = resolve `path` in the document.
    pub span: Option<Range<usize>>,
    pub message: String,
    /// Point at the key itself rather than its value (for keys that should not be there).
    pub at_key: bool,
}

impl Problem {
    /// A problem located by its key path alone.
    pub fn at(path: KeyPath, message: impl Into<String>) -> Problem {
        Problem {
            path,
            span: None,
            message: message.into(),
            at_key: false,
        }
    }

    /// A problem with the key at `path` itself (e.g. a key that is not allowed), located at the key.
    pub fn at_key(path: KeyPath, message: impl Into<String>) -> Problem {
        Problem {
            at_key: true,
            ..Problem::at(path, message)
        }
    }

    /// Resolves the position (against `doc` when the parser gave no span) into a `ConfigError`.
    pub fn locate(self, file: &str, text: &str, doc: Option<&ImDocument<&str>>) -> ConfigError {
        let span = self
            .span
            .or_else(|| doc.and_then(|d| span_of(d, &self.path, self.at_key)));
        let (line, column) = span.map_or((0, 0), |s| line_col(text, s.start));
        ConfigError {
            file: file.to_owned(),
            line,
            column,
            key: self.path.to_string(),
            message: self.message,
        }
    }
}

/// A node of the parsed document: `toml_edit` hands out items, tables and values from different
/// accessors, so walking a path needs all three.
#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a Item),
    Table(&'a toml_edit::Table),
    Value(&'a Value),
}

impl<'a> Node<'a> {
    fn span(self) -> Option<Range<usize>> {
        match self {
            Node::Item(i) => i.span(),
            Node::Table(t) => t.span(),
            Node::Value(v) => v.span(),
        }
    }

    /// Child `seg`, with the span of its key when it has one.
    fn child(self, seg: &Seg) -> Option<(Node<'a>, Option<Range<usize>>)> {
        let node = match self {
            Node::Item(Item::Table(t)) | Node::Table(t) => return table_child(t, seg),
            Node::Item(Item::ArrayOfTables(a)) => match seg {
                Seg::Index(i) => Node::Table(a.get(*i)?),
                Seg::Key(_) => return None,
            },
            Node::Item(Item::Value(v)) | Node::Value(v) => return value_child(v, seg),
            Node::Item(Item::None) => return None,
        };
        Some((node, None))
    }
}

fn table_child<'a>(t: &'a toml_edit::Table, seg: &Seg) -> Option<(Node<'a>, Option<Range<usize>>)> {
    match seg {
        Seg::Key(k) => t
            .get_key_value(k)
            .map(|(key, it)| (Node::Item(it), key.span())),
        Seg::Index(_) => None,
    }
}

fn value_child<'a>(v: &'a Value, seg: &Seg) -> Option<(Node<'a>, Option<Range<usize>>)> {
    match (v, seg) {
        (Value::InlineTable(t), Seg::Key(k)) => t
            .get_key_value(k)
            .map(|(key, it)| (Node::Item(it), key.span())),
        (Value::Array(a), Seg::Index(i)) => a.get(*i).map(|v| (Node::Value(v), None)),
        _ => None,
    }
}

/// The byte span that best represents `path` in `doc`: the value's span (the key's first when
/// `prefer_key`), else the other one, else the nearest ancestor's.
pub fn span_of(doc: &ImDocument<&str>, path: &KeyPath, prefer_key: bool) -> Option<Range<usize>> {
    let mut node = Node::Item(doc.as_item());
    let mut best: Option<Range<usize>> = None;
    for seg in &path.0 {
        let Some((next, key_span)) = node.child(seg) else {
            break;
        };
        let span = if prefer_key {
            key_span.or_else(|| next.span())
        } else {
            next.span().or(key_span)
        };
        if let Some(s) = span {
            best = Some(s);
        }
        node = next;
    }
    best
}

/// 1-based (line, column) of byte offset `at` in `text`; columns count characters, not bytes.
pub fn line_col(text: &str, at: usize) -> (usize, usize) {
    let at = at.min(text.len());
    // Step back to a char boundary so slicing cannot panic on a span inside a multi-byte char.
    let at = (0..=at)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    let before = &text[..at];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display() {
        let p = KeyPath::root().key("routes").index(2).key("paths").index(0);
        assert_eq!(p.to_string(), "routes[2].paths[0]");
        let p = KeyPath::root()
            .key("routes")
            .index(0)
            .key("headers")
            .key("x.y");
        assert_eq!(p.to_string(), "routes[0].headers.\"x.y\"");
    }

    #[test]
    fn positions() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("é\nx", 1), (1, 1));
        assert_eq!(line_col("ab", 99), (1, 3));
    }

    #[test]
    fn spans() {
        let text =
            "[server]\nlisten = [\"a\"]\n[[routes]]\nname = \"r\"\npaths = [\"/x\", \"y\"]\n";
        let doc = ImDocument::parse(text).unwrap();
        let at = |p: &KeyPath| span_of(&doc, p, false).map(|s| line_col(text, s.start));
        let routes = KeyPath::root().key("routes").index(0);
        assert_eq!(at(&routes.key("paths").index(1)), Some((5, 16)));
        assert_eq!(at(&routes.key("name")), Some((4, 8)));
        // Missing key: falls back to the nearest ancestor that has a position.
        assert!(at(&routes.key("service")).is_some());
        assert_eq!(
            at(&KeyPath::root().key("server").key("listen")),
            Some((2, 10))
        );
    }
}
