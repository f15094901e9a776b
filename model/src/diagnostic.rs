//! Findings about a user's configuration, with a stable code and an exact position.
//!
//! One type serves the loader, the compiler and `lint`, so every message reads the same:
//! `file:line:col: error: IngressRoute apps/crm-api spec.routes[0].match: … [code]`.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use crate::resources::Loaded;
use crate::yaml::Mark;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing; nothing breaks.
    Warning,
    /// The configuration cannot be used as written.
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// A stable code, e.g. `schema`, `uplink-route-host`.
    pub code: &'static str,
    /// The file, when the finding has one.
    #[serde(serialize_with = "ser_path")]
    pub file: Option<Arc<Path>>,
    /// 1-based line, 0 when unknown.
    pub line: usize,
    /// 1-based column, 0 when unknown.
    pub column: usize,
    /// `Kind namespace/name` of the object concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// The field path, e.g. `spec.routes[0].match`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// What is wrong, and how to fix it when we know.
    pub message: String,
}

fn ser_path<S: serde::Serializer>(p: &Option<Arc<Path>>, s: S) -> Result<S::Ok, S::Error> {
    match p {
        Some(p) => s.serialize_str(&p.display().to_string()),
        None => s.serialize_none(),
    }
}

impl Diagnostic {
    /// A finding about a file position.
    pub fn at(
        severity: Severity,
        code: &'static str,
        file: &Arc<Path>,
        mark: Mark,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            severity,
            code,
            file: Some(file.clone()),
            line: mark.line,
            column: mark.col,
            object: None,
            field: None,
            message: message.into(),
        }
    }

    /// A finding about a field of a loaded object, positioned at that field.
    pub fn on(severity: Severity, code: &'static str, obj: &Loaded, field: &str, message: impl Into<String>) -> Self {
        let mark = obj.mark(field);
        Diagnostic {
            object: Some(obj.label()),
            field: (!field.is_empty()).then(|| field.to_string()),
            ..Diagnostic::at(severity, code, &obj.file, mark, message)
        }
    }

    /// A finding with no position (command-line input, for example).
    pub fn general(severity: Severity, code: &'static str, message: impl Into<String>) -> Self {
        Diagnostic {
            severity,
            code,
            file: None,
            line: 0,
            column: 0,
            object: None,
            field: None,
            message: message.into(),
        }
    }

    /// Whether this is an error.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}:{}:{}: ", file.display(), self.line, self.column)?;
        }
        write!(f, "{}: ", self.severity)?;
        match (&self.object, &self.field) {
            (Some(o), Some(p)) => write!(f, "{o} {p}: ")?,
            (Some(o), None) => write!(f, "{o}: ")?,
            (None, Some(p)) => write!(f, "{p}: ")?,
            (None, None) => {}
        }
        write!(f, "{} [{}]", self.message, self.code)
    }
}

/// Sorts findings by file, position, then message, and drops exact repeats.
pub fn sort(diags: &mut Vec<Diagnostic>) {
    diags.sort_by(|a, b| {
        (a.file.as_deref(), a.line, a.column, &a.message).cmp(&(b.file.as_deref(), b.line, b.column, &b.message))
    });
    diags.dedup();
}
