//! `atrium route-check`: which router gets this request, and what path does the backend
//! see? Envoy's `router_check_tool` idea for atrium: the manifests are compiled exactly as
//! a gateway would compile them, then each test request runs through the route table and
//! the router's path middlewares, with no socket opened.

use std::collections::BTreeMap;
use std::path::Path;

use crate::diagnostic::Diagnostic;
use crate::values::Values;
use crate::yaml::{from_node, parse_documents};
use atrium_routing::middleware::path::UrlPath;
use atrium_routing::request::RequestView;
use atrium_routing::table::RouteTable;
use atrium_routing::{Decision, Request};
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

/// The tests file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    /// The cases, run in order.
    pub tests: Vec<TestCase>,
}

/// One case.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    /// Shown in the output.
    pub name: String,
    /// The request.
    pub request: TestRequest,
    /// What must happen.
    pub expect: Expect,
}

/// A header value, or a list for repeated header lines.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One line.
    One(String),
    /// Several lines.
    Many(Vec<String>),
}

/// The request of a case.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TestRequest {
    /// Default GET.
    #[serde(default)]
    pub method: Option<String>,
    /// `https://host/path?query`, or just `/path?query`.
    pub url: String,
    /// Request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, OneOrMany>,
    /// Peer address; default `192.0.2.1:1234`.
    #[serde(default)]
    pub remote_addr: Option<String>,
    /// Entrypoint; default: any.
    #[serde(default)]
    pub entry_point: Option<String>,
}

/// Expectations of a case.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// `namespace/name`, `namespace/name/<index>`, or `none`.
    pub router: String,
    /// The service, as written in the route or by id.
    #[serde(default)]
    pub service: Option<String>,
    /// The path the backend sees after the router's middlewares.
    #[serde(default)]
    pub path: Option<String>,
}

/// The outcome of one case, as printed by `--format json`.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Outcome {
    /// The case name.
    pub name: String,
    /// Whether every expectation held.
    pub passed: bool,
    /// The router that matched, or `none`.
    pub router: String,
    /// Its service, as written.
    pub service: Option<String>,
    /// The path after middlewares.
    pub path: Option<String>,
    /// What did not hold, or why the request could not be evaluated.
    pub error: Option<String>,
}

/// Why `route-check` cannot run its tests.
#[derive(Debug, thiserror::Error)]
pub enum RouteCheckError {
    /// A manifest path does not exist.
    #[error("{}: no such file or directory", .0.display())]
    Missing(std::path::PathBuf),
    /// The tests file cannot be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The tests file is not what it must be; the message names the line and field.
    #[error("{}:{message}", path.display())]
    Invalid {
        /// The file.
        path: std::path::PathBuf,
        /// Line, field and problem.
        message: String,
    },
    /// The compiled configuration does not form a route table.
    #[error("compiled configuration does not form a route table: {0}")]
    Table(#[from] atrium_routing::table::TableError),
}

/// Reads a tests file; the error names file, line and field.
pub fn read_tests(path: &Path) -> Result<TestFile, RouteCheckError> {
    let invalid = |message: String| RouteCheckError::Invalid { path: path.to_path_buf(), message };
    let text =
        std::fs::read_to_string(path).map_err(|source| RouteCheckError::Read { path: path.to_path_buf(), source })?;
    let docs = parse_documents(&text).map_err(|e| invalid(format!("{}: invalid YAML: {}", e.mark, e.message)))?;
    let doc = docs.first().ok_or_else(|| invalid(" empty tests file".into()))?;
    from_node::<TestFile>(doc).map_err(|e| {
        let at = e.mark.map(|m| format!("{m}:")).unwrap_or_default();
        invalid(format!("{at} {e}"))
    })
}

/// What a `route-check` run found.
#[derive(Debug)]
pub struct Report {
    /// One outcome per test case, in order.
    pub outcomes: Vec<Outcome>,
    /// Errors in the values and manifests (their objects are left out of the table).
    pub errors: Vec<Diagnostic>,
}

/// Compiles the manifests as a gateway would and runs every case of the tests file
/// against the route table.
pub fn run(manifests: &[std::path::PathBuf], tests: &Path, values: Option<&Path>) -> Result<Report, RouteCheckError> {
    if let Some(m) = manifests.iter().find(|m| !m.exists()) {
        return Err(RouteCheckError::Missing(m.clone()));
    }
    let tests = read_tests(tests)?;
    let (values, mut diags) = Values::load_optional(values);
    let loaded = crate::loader::load_paths(manifests);
    let compiled = crate::compile::compile(&loaded, &values, None);
    diags.extend(loaded.diagnostics.iter().cloned());
    diags.extend(compiled.diagnostics.iter().cloned());
    diags.retain(Diagnostic::is_error);
    let table = RouteTable::from_snapshot(&compiled.body, |_| ())?;
    Ok(Report { outcomes: tests.tests.iter().map(|c| run_case(&table, c)).collect(), errors: diags })
}

/// The parts of a test URL.
#[derive(Debug, PartialEq, Eq)]
struct UrlParts<'a> {
    authority: &'a str,
    path: &'a str,
    query: Option<&'a str>,
}

/// Splits `scheme://authority/path?query#fragment`. A URL with no path has an empty path.
fn split_url(url: &str) -> UrlParts<'_> {
    let url = url.split('#').next().unwrap_or(url);
    let (authority, rest) = match url.split_once("://") {
        Some((_, after)) => {
            let end = after.find(['/', '?']).unwrap_or(after.len());
            (&after[..end], &after[end..])
        }
        None => ("", url),
    };
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    UrlParts { authority, path, query }
}

fn router_matches(expected: &str, actual: Option<&str>) -> bool {
    match actual {
        None => expected == "none",
        Some(id) => id == expected || id.rsplit_once('/').is_some_and(|(base, _)| base == expected),
    }
}

/// The request's headers as a map, and what in them is invalid.
fn headers_of(req: &TestRequest, errors: &mut Vec<String>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (k, v) in &req.headers {
        let values = match v {
            OneOrMany::One(s) => vec![s.as_str()],
            OneOrMany::Many(l) => l.iter().map(String::as_str).collect(),
        };
        let Ok(name) = HeaderName::from_bytes(k.as_bytes()) else {
            errors.push(format!("invalid header name {k:?}"));
            continue;
        };
        for val in values {
            match HeaderValue::from_str(val) {
                Ok(hv) => drop(headers.append(name.clone(), hv)),
                Err(_) => errors.push(format!("header {k}: invalid value {val:?}")),
            }
        }
    }
    headers
}

/// The host the request is routed by, as a gateway reads it: the URL's authority wins
/// over a Host header (an absolute-form target), and two Host headers are a 400.
fn host_of<'a>(case: &'a TestCase, authority: &'a str, errors: &mut Vec<String>) -> &'a str {
    let host_header = case.request.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("host")).map(|(_, v)| v);
    match (authority, host_header) {
        (a, _) if !a.is_empty() => a,
        (_, Some(OneOrMany::One(h))) => h.as_str(),
        (_, Some(OneOrMany::Many(l))) => {
            if l.len() > 1 && case.expect.router != "none" {
                errors.push("the gateway answers 400: too many Host headers".into());
            }
            l.first().map(String::as_str).unwrap_or("")
        }
        _ => "",
    }
}

/// Runs one case against a table: routed by [`atrium_routing::decide`], as every lane of
/// the data plane routes, then through the router's path middlewares.
pub fn run_case(table: &RouteTable, case: &TestCase) -> Outcome {
    let req = &case.request;
    let mut errors = Vec::new();
    let headers = headers_of(req, &mut errors);
    let parts = split_url(&req.url);
    let host = host_of(case, parts.authority, &mut errors);
    let method = req.method.as_deref().unwrap_or("GET");
    let remote = req.remote_addr.as_deref().unwrap_or("192.0.2.1:1234");
    // As a gateway does: the sanitized path is routed and forwarded, a path that cannot
    // be made safe is a 400 before routing.
    let sanitized = match atrium_routing::path_security::sanitize(parts.path) {
        Ok(p) => p,
        Err(e) => {
            if case.expect.router != "none" {
                errors.push(format!("the gateway answers 400 before routing: {e}"));
            }
            return outcome(case, None, None, errors);
        }
    };
    let view = RequestView::new(method, host, &sanitized, parts.query, &headers, remote);
    let routed = Request { entry_point: req.entry_point.as_deref(), uplink: None, path: &sanitized, view };
    let (hit, path) = match atrium_routing::decide(table, &routed) {
        Decision::NotFound => (None, None),
        Decision::Refused { router, answer } => {
            let why = answer.into_parts().2.unwrap_or_default().into_owned();
            (Some(&table.routers()[router]), Some(Err(why)))
        }
        Decision::Route(i) => {
            let r = &table.routers()[i];
            let mut p = UrlPath::from_escaped(&sanitized);
            let rewritten = r.rewrite_path(&mut p).map(|()| (p.request_path().to_string(), p.decoded.clone()));
            (Some(r), Some(rewritten.map_err(|e| e.to_string())))
        }
    };
    let shown_path = check(&case.expect, hit, path, &mut errors);
    outcome(case, hit, shown_path, errors)
}

/// Checks the expectations of a case against what routing did; the path to show.
fn check(
    exp: &Expect,
    hit: Option<&atrium_routing::table::RouteEntry>,
    path: Option<Result<(String, String), String>>,
    errors: &mut Vec<String>,
) -> Option<String> {
    let router = hit.map(|r| r.id.as_str());
    if !router_matches(&exp.router, router) {
        errors.push(format!("expected router {}, got {}", exp.router, router.unwrap_or("none")));
    }
    if let (Some(want), Some(r)) = (&exp.service, hit) {
        let ns = r.id.split('/').next().unwrap_or("");
        let ok = [r.service_display.clone(), r.service.clone(), format!("{ns}/{}", r.service_display)].contains(want);
        if !ok {
            errors.push(format!("expected service {want}, got {}", r.service_display));
        }
    }
    match path? {
        Ok((escaped, decoded)) => {
            if let Some(want) = &exp.path {
                if *want != escaped && *want != decoded && !(decoded.is_empty() && want == "/") {
                    errors.push(format!("expected path {want}, got {escaped}"));
                }
            }
            Some(escaped)
        }
        Err(e) => {
            if exp.path.is_some() {
                errors.push(format!("the router's middlewares refuse the request: {e}"));
            }
            None
        }
    }
}

fn outcome(
    case: &TestCase,
    hit: Option<&atrium_routing::table::RouteEntry>,
    path: Option<String>,
    errors: Vec<String>,
) -> Outcome {
    Outcome {
        name: case.name.clone(),
        passed: errors.is_empty(),
        router: hit.map_or_else(|| "none".into(), |r| r.id.clone()),
        service: hit.map(|r| r.service_display.clone()),
        path,
        error: (!errors.is_empty()).then(|| errors.join("; ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_like_a_request_target() {
        assert_eq!(
            split_url("https://api.example.com/crm/health?x=1"),
            UrlParts { authority: "api.example.com", path: "/crm/health", query: Some("x=1") }
        );
        assert_eq!(split_url("https://example.com"), UrlParts { authority: "example.com", path: "", query: None });
        assert_eq!(split_url("http://u:p@h:8080?q#f"), UrlParts { authority: "h:8080", path: "", query: Some("q") });
        assert_eq!(split_url("/a/b?c"), UrlParts { authority: "", path: "/a/b", query: Some("c") });
    }

    #[test]
    fn router_expectations() {
        assert!(router_matches("apps/crm-api", Some("apps/crm-api/0")));
        assert!(router_matches("apps/crm-api/1", Some("apps/crm-api/1")));
        assert!(!router_matches("apps/crm-api/0", Some("apps/crm-api/1")));
        assert!(!router_matches("apps/crm", Some("apps/crm-api/0")));
        assert!(router_matches("none", None));
        assert!(!router_matches("none", Some("apps/x/0")));
    }
}
