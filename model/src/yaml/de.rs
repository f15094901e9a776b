//! A serde `Deserializer` over [`Node`] that tracks where it is.
//!
//! Every error carries the field path (`spec.routes[0].match`) and the line and column of
//! the offending node, so a user reads `file:12:9: apps/crm-api spec.routes[0].match:
//! expected a string, found a list`. Types are strict, as Kubernetes' own validation is: a
//! plain `80` is not a string and `"80"` is not a number. `null` counts as absent.

use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

use super::node::{Mark, Node, NodeKind, Resolved, resolve_plain};

/// A deserialisation error with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeError {
    /// Where, when known.
    pub mark: Option<Mark>,
    /// The field path, e.g. `spec.routes[0].match`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() { f.write_str(&self.message) } else { write!(f, "{}: {}", self.path, self.message) }
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError { mark: None, path: String::new(), message: tidy(msg.to_string()) }
    }
}

/// Shortens serde's "expected one of" lists, which for large structs bury the point.
fn tidy(msg: String) -> String {
    if let Some(i) = msg.find(", expected one of") {
        let n = msg[i..].matches('`').count() / 2;
        if n > 8 {
            return msg[..i].to_string();
        }
    }
    msg
}

impl DeError {
    fn at(mut self, mark: Mark, path: &str) -> Self {
        if self.mark.is_none() {
            self.mark = Some(mark);
            self.path = path.to_string();
        }
        self
    }
}

/// Deserialises a `T` from a node.
pub fn from_node<'de, T: de::Deserialize<'de>>(node: &'de Node) -> Result<T, DeError> {
    T::deserialize(De { node, path: String::new() })
}

/// Deserialises a `T` from a node that sits at `path` in its document.
pub fn from_node_at<'de, T: de::Deserialize<'de>>(node: &'de Node, path: &str) -> Result<T, DeError> {
    T::deserialize(De { node, path: path.to_string() })
}

struct De<'a> {
    node: &'a Node,
    path: String,
}

impl<'a> De<'a> {
    fn mismatch(&self, expected: &str) -> DeError {
        DeError {
            mark: Some(self.node.mark),
            path: self.path.clone(),
            message: format!("expected {expected}, found {}", self.node.describe()),
        }
    }

    fn plain(&self) -> Option<Resolved<'a>> {
        match &self.node.kind {
            NodeKind::Scalar { value, plain: true } => Some(resolve_plain(value)),
            _ => None,
        }
    }

    fn int(&self, expected: &str) -> Result<i128, DeError> {
        match self.plain() {
            Some(Resolved::Int(i)) => Ok(i),
            _ => Err(self.mismatch(expected)),
        }
    }

    fn wrap(&self, e: DeError) -> DeError {
        e.at(self.node.mark, &self.path)
    }
}

macro_rules! de_int {
    ($method:ident, $visit:ident, $t:ty, $what:literal) => {
        fn $method<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
            let i = self.int($what)?;
            let n = <$t>::try_from(i).map_err(|_| DeError {
                mark: Some(self.node.mark),
                path: self.path.clone(),
                message: format!("{i} is out of range for {}", $what),
            })?;
            v.$visit(n).map_err(|e| self.wrap(e))
        }
    };
}

impl<'de> de::Deserializer<'de> for De<'de> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        let r = match &self.node.kind {
            NodeKind::Null => v.visit_unit(),
            NodeKind::Scalar { value, plain: false } => v.visit_borrowed_str(value),
            NodeKind::Scalar { value, plain: true } => match resolve_plain(value) {
                Resolved::Null => v.visit_unit(),
                Resolved::Bool(b) => v.visit_bool(b),
                Resolved::Int(i) => match i64::try_from(i) {
                    Ok(i) => v.visit_i64(i),
                    Err(_) => match u64::try_from(i) {
                        Ok(u) => v.visit_u64(u),
                        Err(_) => v.visit_borrowed_str(value),
                    },
                },
                Resolved::Float(f) => v.visit_f64(f),
                Resolved::Str(s) => v.visit_borrowed_str(s),
            },
            NodeKind::Seq(items) => v.visit_seq(Seq { items: items.iter(), path: &self.path, index: 0 }),
            NodeKind::Map(entries) => v.visit_map(Map { entries: entries.iter(), path: &self.path, value: None }),
        };
        r.map_err(|e| self.wrap(e))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match self.plain() {
            Some(Resolved::Bool(b)) => v.visit_bool(b).map_err(|e| self.wrap(e)),
            _ => Err(self.mismatch("a boolean")),
        }
    }

    de_int!(deserialize_i8, visit_i8, i8, "an 8-bit integer");
    de_int!(deserialize_i16, visit_i16, i16, "a 16-bit integer");
    de_int!(deserialize_i32, visit_i32, i32, "a 32-bit integer");
    de_int!(deserialize_i64, visit_i64, i64, "an integer");
    de_int!(deserialize_u8, visit_u8, u8, "an integer from 0 to 255");
    de_int!(deserialize_u16, visit_u16, u16, "an integer from 0 to 65535");
    de_int!(deserialize_u32, visit_u32, u32, "a non-negative 32-bit integer");
    de_int!(deserialize_u64, visit_u64, u64, "a non-negative integer");

    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_f64(v)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match self.plain() {
            Some(Resolved::Int(i)) => v.visit_f64(i as f64).map_err(|e| self.wrap(e)),
            Some(Resolved::Float(f)) => v.visit_f64(f).map_err(|e| self.wrap(e)),
            _ => Err(self.mismatch("a number")),
        }
    }

    fn deserialize_char<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            NodeKind::Scalar { value, plain: false } => v.visit_borrowed_str(value).map_err(|e| self.wrap(e)),
            NodeKind::Scalar { value, plain: true } => match resolve_plain(value) {
                Resolved::Str(s) => v.visit_borrowed_str(s).map_err(|e| self.wrap(e)),
                _ => Err(DeError {
                    mark: Some(self.node.mark),
                    path: self.path.clone(),
                    message: format!("expected a string, found {} (quote it: \"{value}\")", self.node.describe()),
                }),
            },
            _ => Err(self.mismatch("a string")),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match self.node.kind {
            NodeKind::Null => v.visit_none(),
            _ => v.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match self.node.kind {
            NodeKind::Null => v.visit_unit(),
            _ => Err(self.mismatch("null")),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, _: &'static str, v: V) -> Result<V::Value, DeError> {
        self.deserialize_unit(v)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, v: V) -> Result<V::Value, DeError> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        static EMPTY: Vec<Node> = Vec::new();
        let r = match &self.node.kind {
            NodeKind::Seq(items) => v.visit_seq(Seq { items: items.iter(), path: &self.path, index: 0 }),
            NodeKind::Null => v.visit_seq(Seq { items: EMPTY.iter(), path: &self.path, index: 0 }),
            _ => return Err(self.mismatch("a list")),
        };
        r.map_err(|e| self.wrap(e))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, v: V) -> Result<V::Value, DeError> {
        self.deserialize_seq(v)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(self, _: &'static str, _: usize, v: V) -> Result<V::Value, DeError> {
        self.deserialize_seq(v)
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        static EMPTY: Vec<(Node, Node)> = Vec::new();
        let r = match &self.node.kind {
            NodeKind::Map(entries) => v.visit_map(Map { entries: entries.iter(), path: &self.path, value: None }),
            NodeKind::Null => v.visit_map(Map { entries: EMPTY.iter(), path: &self.path, value: None }),
            _ => return Err(self.mismatch("a mapping")),
        };
        r.map_err(|e| self.wrap(e))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_map(v)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        match &self.node.kind {
            NodeKind::Scalar { value, .. } => {
                let d: de::value::StrDeserializer<'_, DeError> = value.as_str().into_deserializer();
                v.visit_enum(d).map_err(|e| self.wrap(e))
            }
            _ => Err(self.mismatch("one of the allowed values")),
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_unit()
    }
}

struct Seq<'a, I> {
    items: I,
    path: &'a str,
    index: usize,
}

impl<'de, 'a, I: Iterator<Item = &'de Node>> de::SeqAccess<'de> for Seq<'a, I> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, DeError> {
        let Some(node) = self.items.next() else { return Ok(None) };
        let path = format!("{}[{}]", self.path, self.index);
        self.index += 1;
        let r = seed.deserialize(De { node, path: path.clone() });
        r.map(Some).map_err(|e| e.at(node.mark, &path))
    }
}

struct Map<'a, 'de, I> {
    entries: I,
    path: &'a str,
    value: Option<(&'de Node, String)>,
}

impl<'de, 'a, I: Iterator<Item = &'de (Node, Node)>> de::MapAccess<'de> for Map<'a, 'de, I> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, DeError> {
        let Some((k, val)) = self.entries.next() else { return Ok(None) };
        let name = k.as_str().unwrap_or("?");
        let path = if self.path.is_empty() { name.to_string() } else { format!("{}.{name}", self.path) };
        let key = seed.deserialize(De { node: k, path: path.clone() }).map_err(|e| e.at(k.mark, &path))?;
        self.value = Some((val, path));
        Ok(Some(key))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let (node, path) = self.value.take().ok_or_else(|| <DeError as de::Error>::custom("value without key"))?;
        seed.deserialize(De { node, path: path.clone() }).map_err(|e| e.at(node.mark, &path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::node::parse_documents;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Route {
        #[serde(rename = "match")]
        rule: String,
        #[serde(default)]
        priority: Option<i64>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Spec {
        routes: Vec<Route>,
        #[serde(default)]
        enabled: bool,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Doc {
        spec: Spec,
    }

    fn err(yaml: &str) -> DeError {
        let docs = parse_documents(yaml).unwrap();
        from_node::<Doc>(&docs[0]).unwrap_err()
    }

    #[test]
    fn unknown_field_names_path_and_position() {
        let e = err("spec:\n  routes:\n    - match: a\n      matc: b\n");
        assert_eq!(e.path, "spec.routes[0].matc");
        assert_eq!(e.mark, Some(Mark { line: 4, col: 7 }));
        assert!(e.message.contains("unknown field `matc`"), "{e}");
    }

    #[test]
    fn wrong_type_names_path_and_position() {
        let e = err("spec:\n  routes:\n    - match: [a]\n");
        assert_eq!(e.path, "spec.routes[0].match");
        assert_eq!(e.mark, Some(Mark { line: 3, col: 14 }));
        assert_eq!(e.message, "expected a string, found a list");
        let e = err("spec:\n  routes:\n    - match: a\n      priority: high\n");
        assert_eq!(e.path, "spec.routes[0].priority");
        assert!(e.message.contains("expected an integer"), "{e}");
        let e = err("spec:\n  enabled: yes\n  routes: []\n");
        assert_eq!(e.path, "spec.enabled");
        let e = err("spec:\n  routes:\n    - match: 80\n");
        assert!(e.message.contains("quote it"), "{e}");
    }

    #[test]
    fn missing_field_points_at_the_mapping() {
        let e = err("spec:\n  routes:\n    - priority: 3\n");
        assert_eq!(e.path, "spec.routes[0]");
        assert_eq!(e.mark.unwrap().line, 3);
        assert!(e.message.contains("missing field `match`"), "{e}");
    }

    #[test]
    fn null_is_absent() {
        let docs = parse_documents("spec:\n  routes:\n  enabled: true\n").unwrap();
        let d: Doc = from_node(&docs[0]).unwrap();
        assert!(d.spec.routes.is_empty());
        assert!(d.spec.enabled);
    }
}
