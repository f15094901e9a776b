//! YAML with positions: a node tree ([`node`]) and a strict serde deserializer over it
//! ([`de`]) whose errors name the field path, line and column.

pub mod de;
pub mod node;

pub use de::{DeError, from_node, from_node_at};
pub use node::{Limits, Mark, Node, NodeKind, SyntaxError, parse_documents, parse_documents_within};
