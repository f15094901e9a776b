//! YAML (and JSON, which is YAML) → a tree of [`Node`]s that remember where they came from.
//!
//! serde_yaml is deprecated and loses positions, so we build our own small tree from
//! saphyr-parser's events. Every node carries its 1-based line and column; the serde
//! deserializer in [`super::de`] uses them to point each error at the exact place.

use std::fmt;

use saphyr_parser::{Event, Parser, ScalarStyle};

/// A position in a file: 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Mark {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub col: usize,
}

impl fmt::Display for Mark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// What a node holds.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// `null`, `~` or nothing.
    Null,
    /// A scalar. `plain` is false for quoted and block scalars (always strings).
    Scalar {
        /// The text.
        value: String,
        /// Whether the scalar was unquoted (and so may be a number or boolean).
        plain: bool,
    },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in document order.
    Map(Vec<(Node, Node)>),
}

/// A YAML node with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Where the node starts.
    pub mark: Mark,
    /// Its content.
    pub kind: NodeKind,
}

/// A YAML syntax error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{mark}: {message}")]
pub struct SyntaxError {
    /// Where.
    pub mark: Mark,
    /// What.
    pub message: String,
}

/// The type a plain scalar resolves to under the YAML 1.2 core schema.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolved<'a> {
    /// null
    Null,
    /// true / false
    Bool(bool),
    /// An integer.
    Int(i128),
    /// A float.
    Float(f64),
    /// Anything else.
    Str(&'a str),
}

/// Resolves a plain scalar (YAML 1.2 core schema).
pub fn resolve_plain(v: &str) -> Resolved<'_> {
    match v {
        "" | "~" | "null" | "Null" | "NULL" => return Resolved::Null,
        "true" | "True" | "TRUE" => return Resolved::Bool(true),
        "false" | "False" | "FALSE" => return Resolved::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => return Resolved::Float(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return Resolved::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Resolved::Float(f64::NAN),
        _ => {}
    }
    let b = v.as_bytes();
    let digits = |s: &str, radix: u32| !s.is_empty() && s.chars().all(|c| c.is_digit(radix));
    let unsigned = v.strip_prefix(['-', '+']).unwrap_or(v);
    if digits(unsigned, 10) {
        if let Ok(i) = v.parse::<i128>() {
            return Resolved::Int(i);
        }
    }
    if let Some(o) = v.strip_prefix("0o") {
        if digits(o, 8) {
            if let Ok(i) = i128::from_str_radix(o, 8) {
                return Resolved::Int(i);
            }
        }
    }
    if let Some(x) = v.strip_prefix("0x") {
        if digits(x, 16) {
            if let Ok(i) = i128::from_str_radix(x, 16) {
                return Resolved::Int(i);
            }
        }
    }
    // [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?
    let looks_float = !b.is_empty()
        && unsigned.chars().all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
        && unsigned.chars().any(|c| c.is_ascii_digit())
        && unsigned.starts_with(|c: char| c.is_ascii_digit() || c == '.');
    if looks_float {
        if let Ok(f) = v.parse::<f64>() {
            return Resolved::Float(f);
        }
    }
    Resolved::Str(v)
}

impl Node {
    /// A short description for error messages: "a mapping", "the integer 80", …
    pub fn describe(&self) -> String {
        match &self.kind {
            NodeKind::Null => "null".into(),
            NodeKind::Seq(_) => "a list".into(),
            NodeKind::Map(_) => "a mapping".into(),
            NodeKind::Scalar { value, plain: false } => format!("the string {value:?}"),
            NodeKind::Scalar { value, plain: true } => match resolve_plain(value) {
                Resolved::Null => "null".into(),
                Resolved::Bool(b) => format!("the boolean {b}"),
                Resolved::Int(i) => format!("the integer {i}"),
                Resolved::Float(f) => format!("the number {f}"),
                Resolved::Str(s) => format!("the string {s:?}"),
            },
        }
    }

    /// The value under `key` of a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.kind {
            NodeKind::Map(entries) => entries.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The text of a scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar { value, .. } => Some(value),
            _ => None,
        }
    }

    /// Follows a field path such as `spec.routes[0].match` and returns the deepest node
    /// reached: the exact node when it exists, else its closest existing parent.
    pub fn locate(&self, path: &str) -> &Node {
        let mut cur = self;
        for part in split_path(path) {
            let next = match part {
                PathPart::Key(k) => cur.get(k).or_else(|| match &cur.kind {
                    // Point at the key itself when asked for it.
                    NodeKind::Map(entries) => entries.iter().find(|(kk, _)| kk.as_str() == Some(k)).map(|(kk, _)| kk),
                    _ => None,
                }),
                PathPart::Index(i) => match &cur.kind {
                    NodeKind::Seq(items) => items.get(i),
                    _ => None,
                },
            };
            match next {
                Some(n) => cur = n,
                None => break,
            }
        }
        cur
    }

    /// The mark of a mapping key (the field name), for "unknown field" style messages.
    pub fn key_mark(&self, key: &str) -> Option<Mark> {
        match &self.kind {
            NodeKind::Map(entries) => entries.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(k, _)| k.mark),
            _ => None,
        }
    }
}

enum PathPart<'a> {
    Key(&'a str),
    Index(usize),
}

fn split_path(path: &str) -> Vec<PathPart<'_>> {
    let mut out = Vec::new();
    for seg in path.split('.').filter(|s| !s.is_empty()) {
        let (name, rest) = match seg.find('[') {
            Some(i) => (&seg[..i], &seg[i..]),
            None => (seg, ""),
        };
        if !name.is_empty() {
            out.push(PathPart::Key(name));
        }
        for idx in rest.split('[').filter(|s| !s.is_empty()) {
            if let Ok(i) = idx.trim_end_matches(']').parse() {
                out.push(PathPart::Index(i));
            }
        }
    }
    out
}

fn mark_of(m: &saphyr_parser::Marker) -> Mark {
    Mark { line: m.line(), col: m.col() + 1 }
}

/// Parses every document of a YAML stream. Empty documents are dropped.
pub fn parse_documents(text: &str) -> Result<Vec<Node>, SyntaxError> {
    let mut parser = Parser::new_from_str(text);
    let mut docs = Vec::new();
    // Stack of containers being built: (mark, kind, pending key for maps, anchor id).
    enum Frame {
        Seq(Mark, Vec<Node>, usize),
        Map(Mark, Vec<(Node, Node)>, Option<Node>, usize),
    }
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: std::collections::HashMap<usize, Node> = std::collections::HashMap::new();
    let mut root: Option<Node> = None;

    fn push(stack: &mut [Frame], root: &mut Option<Node>, node: Node) {
        match stack.last_mut() {
            None => *root = Some(node),
            Some(Frame::Seq(_, items, _)) => items.push(node),
            Some(Frame::Map(_, entries, key, _)) => match key.take() {
                None => *key = Some(node),
                Some(k) => entries.push((k, node)),
            },
        }
    }

    while let Some(ev) = parser.next_event() {
        let (ev, span) = ev.map_err(|e| SyntaxError { mark: mark_of(e.marker()), message: e.info().to_string() })?;
        let mark = mark_of(&span.start);
        match ev {
            Event::StreamStart | Event::Nothing | Event::DocumentStart(_) => {}
            Event::StreamEnd => break,
            Event::DocumentEnd => {
                if let Some(n) = root.take() {
                    if n.kind != NodeKind::Null {
                        docs.push(n);
                    }
                }
                anchors.clear();
            }
            Event::Alias(id) => {
                let n = anchors
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| SyntaxError { mark, message: "alias to an unknown anchor".into() })?;
                push(&mut stack, &mut root, n);
            }
            Event::Scalar(value, style, anchor, tag) => {
                let forced_str = tag.as_ref().is_some_and(|t| t.suffix == "str");
                let plain = style == ScalarStyle::Plain && !forced_str;
                let kind = if plain && resolve_plain(&value) == Resolved::Null {
                    NodeKind::Null
                } else {
                    NodeKind::Scalar { value: value.into_owned(), plain }
                };
                let node = Node { mark, kind };
                if anchor > 0 {
                    anchors.insert(anchor, node.clone());
                }
                push(&mut stack, &mut root, node);
            }
            Event::SequenceStart(anchor, _) => stack.push(Frame::Seq(mark, Vec::new(), anchor)),
            Event::MappingStart(anchor, _) => stack.push(Frame::Map(mark, Vec::new(), None, anchor)),
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match stack.pop() {
                    Some(Frame::Seq(m, items, a)) => (Node { mark: m, kind: NodeKind::Seq(items) }, a),
                    Some(Frame::Map(m, entries, _, a)) => (Node { mark: m, kind: NodeKind::Map(entries) }, a),
                    None => return Err(SyntaxError { mark, message: "unbalanced collection end".into() }),
                };
                if anchor > 0 {
                    anchors.insert(anchor, node.clone());
                }
                push(&mut stack, &mut root, node);
            }
        }
    }
    if let Some(n) = root.take() {
        if n.kind != NodeKind::Null {
            docs.push(n);
        }
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_with_positions() {
        let docs = parse_documents("a: 1\n---\n# comment only\n---\nb:\n  - x\n  - 'y'\n").unwrap();
        assert_eq!(docs.len(), 2);
        let b = docs[1].get("b").unwrap();
        assert_eq!(b.mark.line, 6);
        match &b.kind {
            NodeKind::Seq(items) => {
                assert_eq!(items[1].mark, Mark { line: 7, col: 5 });
                assert_eq!(items[1].kind, NodeKind::Scalar { value: "y".into(), plain: false });
            }
            k => panic!("{k:?}"),
        }
    }

    #[test]
    fn json_is_yaml() {
        let docs = parse_documents(r#"{"kind": "Service", "spec": {"ports": [{"port": 80}]}}"#).unwrap();
        assert_eq!(docs[0].locate("spec.ports[0].port").as_str(), Some("80"));
    }

    #[test]
    fn syntax_errors_have_positions() {
        let err = parse_documents("a:\n  b: 1\n c: 2\n").unwrap_err();
        assert_eq!(err.mark.line, 3);
        let err = parse_documents("a: [1, 2\n").unwrap_err();
        assert!(err.mark.line >= 1);
    }

    #[test]
    fn anchors_and_aliases() {
        let docs = parse_documents("a: &x {k: v}\nb: *x\n").unwrap();
        assert_eq!(docs[0].locate("b.k").as_str(), Some("v"));
    }

    #[test]
    fn plain_scalars_resolve_like_yaml_1_2() {
        assert_eq!(resolve_plain("80"), Resolved::Int(80));
        assert_eq!(resolve_plain("-3"), Resolved::Int(-3));
        assert_eq!(resolve_plain("0x1f"), Resolved::Int(31));
        assert_eq!(resolve_plain("true"), Resolved::Bool(true));
        assert_eq!(resolve_plain("yes"), Resolved::Str("yes"));
        assert_eq!(resolve_plain("1.5"), Resolved::Float(1.5));
        assert_eq!(resolve_plain("1m"), Resolved::Str("1m"));
        assert_eq!(resolve_plain("~"), Resolved::Null);
        assert_eq!(resolve_plain("1.2.3.4"), Resolved::Str("1.2.3.4"));
    }

    #[test]
    fn locate_falls_back_to_closest_parent() {
        let docs = parse_documents("spec:\n  routes:\n    - match: x\n").unwrap();
        assert_eq!(docs[0].locate("spec.routes[0].match").mark.line, 3);
        assert_eq!(docs[0].locate("spec.routes[5].match").mark.line, 3);
        assert_eq!(docs[0].locate("spec.nothing").mark.line, 2);
    }
}
