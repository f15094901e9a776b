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

/// How much one YAML text may hold. A manifest is read by the process that serves
/// traffic, so no single file may exhaust its stack or memory: nesting, alias expansion
/// and node counts are bounded, and going past a bound is a syntax error at the place it
/// happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Deepest nesting of sequences and mappings.
    pub max_depth: usize,
    /// Nodes in one text, counting each alias as the nodes it copies.
    pub max_nodes: usize,
    /// Nodes that aliases (and anchors, which keep a copy) may copy in one text, beyond
    /// [`Limits::alias_floor`]: at most as many as the text itself holds, so aliases can at
    /// most double a document. Scalar bytes are bounded the same way: copies may hold at
    /// most as many bytes as the text, or [`Limits::alias_floor_bytes`].
    pub alias_floor: usize,
    /// Scalar bytes that copies may always hold.
    pub alias_floor_bytes: usize,
    /// Documents in one text.
    pub max_documents: usize,
}

impl Limits {
    /// The bounds every loader uses (Kubernetes objects stay far below them).
    pub const DEFAULT: Limits = Limits {
        max_depth: 128,
        max_nodes: 4_000_000,
        alias_floor: 10_000,
        alias_floor_bytes: 1 << 20,
        max_documents: 100_000,
    };
}

/// What a node holds: nodes, and scalar bytes.
#[derive(Debug, Clone, Copy, Default)]
struct Size {
    nodes: usize,
    bytes: usize,
}

impl Size {
    fn plus(self, o: Size) -> Size {
        Size { nodes: self.nodes.saturating_add(o.nodes), bytes: self.bytes.saturating_add(o.bytes) }
    }
}

/// Parses every document of a YAML stream, within [`Limits::DEFAULT`]. Empty documents are
/// dropped.
pub fn parse_documents(text: &str) -> Result<Vec<Node>, SyntaxError> {
    parse_documents_within(text, Limits::DEFAULT)
}

/// [`parse_documents`] with other bounds.
pub fn parse_documents_within(text: &str, limits: Limits) -> Result<Vec<Node>, SyntaxError> {
    let mut parser = Parser::new_from_str(text);
    let mut b = Builder::new(limits, text.len());
    while let Some(ev) = parser.next_event() {
        let (ev, span) = ev.map_err(|e| SyntaxError { mark: mark_of(e.marker()), message: e.info().to_string() })?;
        let mark = mark_of(&span.start);
        match ev {
            Event::StreamStart | Event::Nothing | Event::DocumentStart(_) => {}
            Event::StreamEnd => break,
            Event::DocumentEnd => b.end_document(mark)?,
            Event::Alias(id) => b.alias(id, mark)?,
            Event::Scalar(value, style, anchor, tag) => {
                let forced_str = tag.as_ref().is_some_and(|t| t.suffix == "str");
                let plain = style == ScalarStyle::Plain && !forced_str;
                b.scalar(value, plain, anchor, mark)?;
            }
            Event::SequenceStart(anchor, _) => b.open(Frame::Seq(mark, Vec::new(), anchor, Size::default()), mark)?,
            Event::MappingStart(anchor, _) => {
                b.open(Frame::Map(mark, Vec::new(), None, anchor, Size::default()), mark)?
            }
            Event::SequenceEnd | Event::MappingEnd => b.close(mark)?,
        }
    }
    Ok(b.finish())
}

/// A container being built: (mark, kind, pending key for maps, anchor id, what is inside
/// so far).
enum Frame {
    Seq(Mark, Vec<Node>, usize, Size),
    Map(Mark, Vec<(Node, Node)>, Option<Node>, usize, Size),
}

impl Frame {
    /// What is inside the container so far.
    fn size(&mut self) -> &mut Size {
        match self {
            Frame::Seq(.., n) | Frame::Map(.., n) => n,
        }
    }
}

/// A syntax error for going past one of the [`Limits`].
fn too_much(mark: Mark, what: String) -> SyntaxError {
    SyntaxError { mark, message: what }
}

/// The documents of one YAML text as they are built from its events, within [`Limits`].
struct Builder {
    limits: Limits,
    /// Scalar bytes that copies may hold in this text.
    byte_budget: usize,
    /// Stack of containers being built.
    stack: Vec<Frame>,
    /// Anchored nodes, with what each holds.
    anchors: std::collections::HashMap<usize, (Node, Size)>,
    /// The finished root of the current document.
    root: Option<Node>,
    /// Nodes parsed in this text.
    parsed: usize,
    /// What aliases and anchors copied in this text.
    copied: Size,
    /// The documents finished so far.
    docs: Vec<Node>,
}

impl Builder {
    /// A builder for a text of `text_len` bytes.
    fn new(limits: Limits, text_len: usize) -> Builder {
        Builder {
            limits,
            byte_budget: limits.alias_floor_bytes.max(text_len),
            stack: Vec::new(),
            anchors: std::collections::HashMap::new(),
            root: None,
            parsed: 0,
            copied: Size::default(),
            docs: Vec::new(),
        }
    }

    /// Nodes that copies may hold, given the nodes parsed so far.
    fn node_budget(&self) -> usize {
        self.limits.alias_floor.max(self.parsed)
    }

    /// Counts a copy of `size` (made by an alias or kept for an anchor) before it is made:
    /// a billion-laughs text stops here.
    fn copy(&mut self, size: Size, mark: Mark) -> Result<(), SyntaxError> {
        self.copied = self.copied.plus(size);
        if self.copied.nodes > self.node_budget()
            || self.parsed.saturating_add(self.copied.nodes) > self.limits.max_nodes
        {
            return Err(too_much(mark, format!("aliases expand to more than {} nodes", self.node_budget())));
        }
        if self.copied.bytes > self.byte_budget {
            return Err(too_much(mark, format!("aliases expand to more than {} bytes", self.byte_budget)));
        }
        Ok(())
    }

    /// Puts a finished node (holding `size`) into its parent.
    fn push(&mut self, node: Node, size: Size) {
        if let Some(f) = self.stack.last_mut() {
            *f.size() = f.size().plus(size);
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq(_, items, _, _)) => items.push(node),
            Some(Frame::Map(_, entries, key, _, _)) => match key.take() {
                None => *key = Some(node),
                Some(k) => entries.push((k, node)),
            },
        }
    }

    /// Keeps a copy of an anchored node (holding `size`) for the aliases to it.
    fn anchor(&mut self, anchor: usize, node: &Node, size: Size, mark: Mark) -> Result<(), SyntaxError> {
        self.copy(size, mark)?;
        self.anchors.insert(anchor, (node.clone(), size));
        Ok(())
    }

    /// Ends a document: keeps its root unless it is empty, and forgets its anchors.
    fn end_document(&mut self, mark: Mark) -> Result<(), SyntaxError> {
        if let Some(n) = self.root.take() {
            if n.kind != NodeKind::Null {
                if self.docs.len() >= self.limits.max_documents {
                    return Err(too_much(mark, format!("more than {} documents", self.limits.max_documents)));
                }
                self.docs.push(n);
            }
        }
        self.anchors.clear();
        Ok(())
    }

    /// Puts a copy of the node anchored as `id` in place of an alias to it.
    fn alias(&mut self, id: usize, mark: Mark) -> Result<(), SyntaxError> {
        let size = match self.anchors.get(&id) {
            Some((_, size)) => *size,
            None => return Err(SyntaxError { mark, message: "alias to an unknown anchor".into() }),
        };
        self.copy(size, mark)?;
        let n = self.anchors[&id].0.clone();
        self.push(n, size);
        Ok(())
    }

    /// Adds a scalar (`plain` when unquoted and untagged), anchored as `anchor` when not 0.
    fn scalar(
        &mut self,
        value: std::borrow::Cow<'_, str>,
        plain: bool,
        anchor: usize,
        mark: Mark,
    ) -> Result<(), SyntaxError> {
        let size = Size { nodes: 1, bytes: value.len() };
        let kind = if plain && resolve_plain(&value) == Resolved::Null {
            NodeKind::Null
        } else {
            NodeKind::Scalar { value: value.into_owned(), plain }
        };
        let node = Node { mark, kind };
        self.parsed += 1;
        if self.parsed.saturating_add(self.copied.nodes) > self.limits.max_nodes {
            return Err(too_much(mark, format!("more than {} nodes", self.limits.max_nodes)));
        }
        if anchor > 0 {
            self.anchor(anchor, &node, size, mark)?;
        }
        self.push(node, size);
        Ok(())
    }

    /// Starts a sequence or mapping (`frame`), unless that nests too deep.
    fn open(&mut self, frame: Frame, mark: Mark) -> Result<(), SyntaxError> {
        if self.stack.len() >= self.limits.max_depth {
            return Err(too_much(mark, format!("nesting deeper than {} levels", self.limits.max_depth)));
        }
        self.parsed += 1;
        self.stack.push(frame);
        Ok(())
    }

    /// Ends the innermost sequence or mapping and puts it into its parent.
    fn close(&mut self, mark: Mark) -> Result<(), SyntaxError> {
        let (node, anchor, inside) = match self.stack.pop() {
            Some(Frame::Seq(m, items, a, n)) => (Node { mark: m, kind: NodeKind::Seq(items) }, a, n),
            Some(Frame::Map(m, entries, _, a, n)) => (Node { mark: m, kind: NodeKind::Map(entries) }, a, n),
            None => return Err(SyntaxError { mark, message: "unbalanced collection end".into() }),
        };
        let size = inside.plus(Size { nodes: 1, bytes: 0 });
        if anchor > 0 {
            let at = node.mark;
            self.anchor(anchor, &node, size, at)?;
        }
        self.push(node, size);
        Ok(())
    }

    /// The documents, with the last one's root if the stream ended without a document end.
    fn finish(mut self) -> Vec<Node> {
        if let Some(n) = self.root.take() {
            if n.kind != NodeKind::Null {
                self.docs.push(n);
            }
        }
        self.docs
    }
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
    fn deep_nesting_is_an_error_at_its_line_not_a_crash() {
        // 100,000 levels of block sequences, and of flow sequences.
        let block: String = "- ".repeat(100_000) + "x\n";
        let err = parse_documents(&block).unwrap_err();
        assert!(err.message.contains("nesting deeper than 128 levels"), "{err}");
        assert_eq!(err.mark.line, 1);
        let flow = "a: ".to_string() + &"[".repeat(100_000);
        assert!(parse_documents(&flow).is_err());
        let indented: String = (0..200).map(|i| format!("{}k{i}:\n", "  ".repeat(i))).collect();
        let err = parse_documents(&indented).unwrap_err();
        assert!(err.message.contains("nesting"), "{err}");
        assert!(err.mark.line > 100, "points at the level past the bound: {err}");
        // 127 levels are fine.
        let ok: String = "- ".repeat(127) + "x\n";
        assert!(parse_documents(&ok).is_ok());
    }

    #[test]
    fn alias_bombs_are_refused_before_they_grow() {
        // Nine levels of nine aliases each: 9^9 nodes if expanded.
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let refs = vec![format!("*a{}", i - 1); 9].join(", ");
            bomb.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        let start = std::time::Instant::now();
        let err = parse_documents(&bomb).unwrap_err();
        assert!(err.message.contains("aliases expand to more than"), "{err}");
        assert!(err.mark.line > 1);
        assert!(start.elapsed() < std::time::Duration::from_secs(2), "stopped early: {:?}", start.elapsed());
        // Few aliases of a long string copy many bytes: bounded by the text's own size.
        let long = format!("s: &s '{}'\nall: [{}]\n", "x".repeat(64 * 1024), vec!["*s"; 64].join(", "));
        let err = parse_documents(&long).unwrap_err();
        assert!(err.message.contains("bytes"), "{err}");
        // Nested anchors each keep a copy of what they hold: counted too.
        let nested = "a: ".to_string()
            + &(0..100).map(|i| format!("&n{i} [")).collect::<String>()
            + &vec!["x"; 200].join(", ")
            + &"]".repeat(100)
            + "\n";
        let err = parse_documents(&nested).unwrap_err();
        assert!(err.message.contains("aliases expand"), "{err}");
        // Ordinary reuse stays fine.
        let docs = parse_documents("base: &b {k: v}\nx: *b\ny: *b\n").unwrap();
        assert_eq!(docs[0].locate("y.k").as_str(), Some("v"));
    }

    #[test]
    fn node_and_document_counts_are_bounded() {
        let small = Limits { max_nodes: 50, max_documents: 3, ..Limits::DEFAULT };
        let many: String = (0..100).map(|i| format!("- {i}\n")).collect();
        let err = parse_documents_within(&many, small).unwrap_err();
        assert!(err.message.contains("more than 50 nodes"), "{err}");
        let docs = "a: 1\n---\nb: 2\n---\nc: 3\n---\nd: 4\n";
        let err = parse_documents_within(docs, small).unwrap_err();
        assert!(err.message.contains("more than 3 documents"), "{err}");
        assert!(parse_documents(docs).is_ok());
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
