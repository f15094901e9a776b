//! The path-rewriting middlewares: stripPrefix, stripPrefixRegex, addPrefix, replacePath
//! and replacePathRegex.
//!
//! They are pure functions over [`UrlPath`], which keeps the decoded path (what prefixes
//! and regexps are compared with, like Go's `URL.Path`) and the escaped path (what the
//! backend receives, like Go's `URL.RawPath`) in step. `route-check` and the proxy run the
//! same code.

use crate::middleware::MiddlewareError;
use regex::Regex;

use crate::request::percent_decode;
use crate::rules::re2;

/// A request path in both its forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlPath {
    /// Fully decoded path.
    pub decoded: String,
    /// The path as sent on the wire, percent-escapes intact.
    pub escaped: String,
}

impl UrlPath {
    /// From the path as it arrived.
    pub fn from_escaped(escaped: &str) -> Self {
        UrlPath { decoded: percent_decode(escaped).into_owned(), escaped: escaped.to_string() }
    }

    /// What the backend sees: the escaped path, `/` when empty.
    pub fn request_path(&self) -> &str {
        if self.escaped.is_empty() { "/" } else { &self.escaped }
    }
}

/// A rewrite that cannot be forwarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    /// The client sent something we refuse to forward (HTTP 400).
    #[error("400 Bad Request: {0}")]
    BadRequest(String),
    /// The configuration produced an invalid path (HTTP 500).
    #[error("500 Internal Server Error: {0}")]
    Internal(String),
}

fn ensure_leading_slash(s: &str) -> String {
    if s.is_empty() || s.starts_with('/') { s.to_string() } else { format!("/{s}") }
}

/// Drops the first `n` decoded characters from an escaped path (`%XX` counts as one).
fn drop_decoded_chars(escaped: &str, n: usize) -> &str {
    let b = escaped.as_bytes();
    let mut i = 0;
    let mut count = 0;
    while i < b.len() && count < n {
        if b[i] == b'%' && i + 2 < b.len() && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit() {
            i += 3;
        } else {
            // Step over one UTF-8 character.
            i += 1;
            while i < b.len() && (b[i] & 0xC0) == 0x80 {
                i += 1;
            }
        }
        count += 1;
    }
    &escaped[i..]
}

/// RFC 3986 remove_dot_segments.
pub fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segs: Vec<&str> = path.split('/').collect();
    let last = segs.len().saturating_sub(1);
    for (i, seg) in segs.iter().enumerate() {
        match *seg {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                if out.len() > 1 {
                    out.pop();
                }
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let joined = out.join("/");
    if path.starts_with('/') && !joined.starts_with('/') { format!("/{joined}") } else { joined }
}

/// The outcome of a prefix strip: the prefix that matched, for `X-Forwarded-Prefix`.
pub type Stripped = Option<String>;

/// stripPrefix: the first prefix (in the order written) that the decoded path starts with
/// is removed. Returns the matched prefix.
pub fn strip_prefix(path: &mut UrlPath, prefixes: &[String]) -> Result<Stripped, RewriteError> {
    for prefix in prefixes {
        if let Some(rest) = path.decoded.strip_prefix(prefix.as_str()) {
            let stripped = ensure_leading_slash(rest);
            // A stripped path that dot-segment removal would change is refused: forwarding
            // `/../foo` would let a client escape the prefix.
            // (What `remove_dot_segments` would change in a path that starts with `/`: a
            // `.` or `..` segment; checked without building the result on every request.)
            if stripped.split('/').any(|seg| seg == "." || seg == "..") {
                return Err(RewriteError::BadRequest(format!(
                    "path {stripped:?} contains dot segments after stripping {prefix:?}"
                )));
            }
            let n = prefix.chars().count();
            let escaped = ensure_leading_slash(drop_decoded_chars(&path.escaped, n));
            path.decoded = stripped;
            path.escaped = escaped;
            return Ok(Some(prefix.trim().to_string()));
        }
    }
    Ok(None)
}

/// stripPrefixRegex: the first regexp whose match is a prefix of the decoded path removes it.
pub fn strip_prefix_regex(path: &mut UrlPath, regexes: &[Regex]) -> Result<Stripped, RewriteError> {
    for re in regexes {
        let Some(m) = re.find(&path.decoded) else { continue };
        if m.as_str().is_empty() || m.start() != 0 {
            continue;
        }
        let prefix = m.as_str().to_string();
        let rest = &path.decoded[m.end()..];
        let n = prefix.chars().count();
        path.escaped = ensure_leading_slash(drop_decoded_chars(&path.escaped, n));
        path.decoded = ensure_leading_slash(rest);
        return Ok(Some(prefix));
    }
    Ok(None)
}

/// addPrefix.
pub fn add_prefix(path: &mut UrlPath, prefix: &str) {
    path.decoded = ensure_leading_slash(&format!("{prefix}{}", path.decoded));
    path.escaped = ensure_leading_slash(&format!("{prefix}{}", path.escaped));
}

/// replacePath: the new escaped path is the configured one. Returns the replaced path for
/// `X-Replaced-Path`.
pub fn replace_path(path: &mut UrlPath, new: &str) -> Result<String, RewriteError> {
    let decoded = strict_unescape(new)?;
    let old = std::mem::replace(&mut path.escaped, new.to_string());
    path.decoded = decoded;
    Ok(old)
}

/// replacePathRegex on the escaped path; returns the replaced path when the regexp matched.
pub fn replace_path_regex(path: &mut UrlPath, re: &Regex, replacement: &str) -> Result<Option<String>, RewriteError> {
    if replacement.is_empty() || !re.is_match(&path.escaped) {
        return Ok(None);
    }
    let old = path.escaped.clone();
    let new = re.replace_all(&old, replacement).into_owned();
    path.decoded = strict_unescape(&new)?;
    path.escaped = new;
    Ok(Some(old))
}

/// Go's `url.PathUnescape`: a malformed escape is an error.
fn strict_unescape(s: &str) -> Result<String, RewriteError> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let ok = i + 2 < b.len() && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit();
            if !ok {
                return Err(RewriteError::Internal(format!("invalid escape in path {s:?}")));
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    Ok(percent_decode(s).into_owned())
}

/// Compiles Go regexps for stripPrefixRegex / replacePathRegex.
pub fn compile_regexes(patterns: &[String]) -> Result<Vec<Regex>, MiddlewareError> {
    patterns
        .iter()
        .map(|p| re2::compile(p).map_err(|e| MiddlewareError::from(format!("invalid regexp {p:?}: {e}"))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strip(p: &str, prefixes: &[&str]) -> (Result<Stripped, RewriteError>, UrlPath) {
        let mut path = UrlPath::from_escaped(p);
        let prefixes: Vec<String> = prefixes.iter().map(|s| s.to_string()).collect();
        let r = strip_prefix(&mut path, &prefixes);
        (r, path)
    }

    #[test]
    fn strip_prefix_first_match_in_written_order() {
        let (r, p) = strip("/crm/health", &["/billing", "/crm"]);
        assert_eq!(r.unwrap().as_deref(), Some("/crm"));
        assert_eq!(p.decoded, "/health");
        let (r, p) = strip("/api/v1/x", &["/api", "/api/v1"]);
        assert_eq!(r.unwrap().as_deref(), Some("/api"));
        assert_eq!(p.decoded, "/v1/x");
    }

    #[test]
    fn strip_prefix_is_a_plain_string_prefix() {
        let (_, p) = strip("/status", &["/stat"]);
        assert_eq!(p.decoded, "/us");
        assert_eq!(p.escaped, "/us");
    }

    #[test]
    fn strip_prefix_empty_result_forwarded_as_root() {
        let (r, p) = strip("/crm", &["/crm"]);
        assert!(r.unwrap().is_some());
        assert_eq!(p.decoded, "");
        assert_eq!(p.request_path(), "/");
    }

    #[test]
    fn strip_prefix_no_match_leaves_path_and_reports_none() {
        let (r, p) = strip("/other", &["/crm"]);
        assert_eq!(r.unwrap(), None);
        assert_eq!(p.decoded, "/other");
    }

    #[test]
    fn strip_prefix_escaped_path_loses_same_decoded_chars() {
        let (_, p) = strip("/ap%69/a%2Fb", &["/api/"]);
        assert_eq!(p.escaped, "/a%2Fb");
        assert_eq!(p.decoded, "/a/b");
    }

    #[test]
    fn strip_prefix_dot_segments_are_refused() {
        let (r, _) = strip("/api../foo", &["/api"]);
        assert!(matches!(r, Err(RewriteError::BadRequest(_))));
        let (r, _) = strip("/api/./foo", &["/api"]);
        assert!(matches!(r, Err(RewriteError::BadRequest(_))));
        let (r, p) = strip("/api/foo..bar", &["/api"]);
        assert!(r.is_ok());
        assert_eq!(p.decoded, "/foo..bar");
        // Refused exactly when dot-segment removal would change the stripped path.
        for rest in ["/", "/a", "/.", "/..", "/a/.", "/a/../b", "/...", "/.a", "/a./b", "//", "/a//b", "/./"] {
            let (r, _) = strip(&format!("/api{rest}"), &["/api"]);
            assert_eq!(r.is_err(), remove_dot_segments(rest) != rest, "{rest}");
        }
        // The decoded path is what counts.
        assert!(strip("/api/%2e", &["/api"]).0.is_err());
    }

    #[test]
    fn strip_prefix_regex_strips_leading_match_only() {
        let res = compile_regexes(&["/api/v[0-9]+".to_string()]).unwrap();
        let mut p = UrlPath::from_escaped("/api/v12/users");
        assert_eq!(strip_prefix_regex(&mut p, &res).unwrap().as_deref(), Some("/api/v12"));
        assert_eq!(p.decoded, "/users");
        let mut p = UrlPath::from_escaped("/x/api/v1/users");
        assert_eq!(strip_prefix_regex(&mut p, &res).unwrap(), None);
    }

    #[test]
    fn add_and_replace() {
        let mut p = UrlPath::from_escaped("/users");
        add_prefix(&mut p, "/api");
        assert_eq!(p.escaped, "/api/users");
        let old = replace_path(&mut p, "/new%20path").unwrap();
        assert_eq!(old, "/api/users");
        assert_eq!(p.decoded, "/new path");
        assert!(replace_path(&mut p, "/bad%zz").is_err());
        let re = re2::compile("^/new(.*)").unwrap();
        let old = replace_path_regex(&mut p, &re, "/v2$1").unwrap();
        assert_eq!(old.as_deref(), Some("/new%20path"));
        assert_eq!(p.escaped, "/v2%20path");
        assert_eq!(p.decoded, "/v2 path");
    }

    #[test]
    fn dot_segment_removal() {
        assert_eq!(remove_dot_segments("/a/b/../c"), "/a/c");
        assert_eq!(remove_dot_segments("/../foo"), "/foo");
        assert_eq!(remove_dot_segments("/a/./b"), "/a/b");
        assert_eq!(remove_dot_segments("/a/b/.."), "/a/");
        assert_eq!(remove_dot_segments("/foo"), "/foo");
    }
}
