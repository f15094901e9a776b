//! `atrium route-check`: which router gets this request, and what path does the backend
//! see? Envoy's `router_check_tool` idea for atrium: the manifests are compiled exactly as
//! a gateway would compile them, then each test request runs through the route table and
//! the router's path middlewares, with no socket opened.

use std::collections::BTreeMap;
use std::path::Path;

use atrium_model::yaml::{from_node, parse_documents};
use atrium_routing::middleware::path::UrlPath;
use atrium_routing::request::RequestView;
use atrium_routing::table::RouteTable;
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

/// Reads a tests file; the error names file, line and field.
pub fn read_tests(path: &Path) -> Result<TestFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let docs =
        parse_documents(&text).map_err(|e| format!("{}:{}: invalid YAML: {}", path.display(), e.mark, e.message))?;
    let doc = docs.first().ok_or_else(|| format!("{}: empty tests file", path.display()))?;
    from_node::<TestFile>(doc).map_err(|e| {
        let at = e.mark.map(|m| format!("{m}:")).unwrap_or_default();
        format!("{}:{at} {e}", path.display())
    })
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

/// Runs one case against a table.
pub fn run_case(table: &RouteTable, case: &TestCase) -> Outcome {
    let req = &case.request;
    let mut headers = HeaderMap::new();
    let mut errors = Vec::new();
    for (k, v) in &req.headers {
        let values = match v {
            OneOrMany::One(s) => vec![s.as_str()],
            OneOrMany::Many(l) => l.iter().map(String::as_str).collect(),
        };
        match HeaderName::from_bytes(k.as_bytes()) {
            Ok(name) => {
                for val in values {
                    match HeaderValue::from_str(val) {
                        Ok(hv) => drop(headers.append(name.clone(), hv)),
                        Err(_) => errors.push(format!("header {k}: invalid value {val:?}")),
                    }
                }
            }
            Err(_) => errors.push(format!("invalid header name {k:?}")),
        }
    }
    let parts = split_url(&req.url);
    // As a gateway reads it: the URL's authority wins over a Host header (an absolute-form
    // target), and two Host headers are a 400.
    let host_header = req.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("host")).map(|(_, v)| v);
    let host = match (parts.authority, host_header) {
        (a, _) if !a.is_empty() => a,
        (_, Some(OneOrMany::One(h))) => h.as_str(),
        (_, Some(OneOrMany::Many(l))) => {
            if l.len() > 1 && case.expect.router != "none" {
                errors.push("the gateway answers 400: too many Host headers".into());
            }
            l.first().map(String::as_str).unwrap_or("")
        }
        _ => "",
    };
    let method = req.method.as_deref().unwrap_or("GET");
    let remote = req.remote_addr.as_deref().unwrap_or("192.0.2.1:1234");
    // As a gateway does: the sanitized path is routed and forwarded, a path that cannot
    // be made safe is a 400 before routing.
    let (sanitized, refused) = match atrium_routing::path_security::sanitize(parts.path) {
        Ok(p) => (p, None),
        Err(e) => (std::borrow::Cow::Borrowed(""), Some(e)),
    };
    if let Some(e) = &refused {
        if case.expect.router != "none" {
            errors.push(format!("the gateway answers 400 before routing: {e}"));
        }
    }
    let view = RequestView::new(method, host, &sanitized, parts.query, &headers, remote);
    let hit = if refused.is_some() { None } else { table.route(req.entry_point.as_deref(), &view) };
    let router = hit.map(|r| r.id.clone());
    let service = hit.map(|r| r.service_display.clone());
    let path = hit.map(|r| {
        if let Some(c) = table.refused_encoding(r, req.entry_point.as_deref().unwrap_or(""), &sanitized) {
            return Err(format!("400 Bad Request: encoded character {c} is not allowed in the path"));
        }
        let mut p = UrlPath::from_escaped(&sanitized);
        match r.rewrite_path(&mut p) {
            Ok(()) => Ok((p.request_path().to_string(), p.decoded.clone())),
            Err(e) => Err(e.to_string()),
        }
    });
    let exp = &case.expect;
    if !router_matches(&exp.router, router.as_deref()) {
        errors.push(format!("expected router {}, got {}", exp.router, router.as_deref().unwrap_or("none")));
    }
    if let (Some(want), Some(r)) = (&exp.service, hit) {
        let ns = r.id.split('/').next().unwrap_or("");
        let ok = [r.service_display.clone(), r.service.clone(), format!("{ns}/{}", r.service_display)].contains(want);
        if !ok {
            errors.push(format!("expected service {want}, got {}", r.service_display));
        }
    }
    let mut shown_path = None;
    match path {
        Some(Ok((escaped, decoded))) => {
            if let Some(want) = &exp.path {
                if *want != escaped && *want != decoded && !(decoded.is_empty() && want == "/") {
                    errors.push(format!("expected path {want}, got {escaped}"));
                }
            }
            shown_path = Some(escaped);
        }
        Some(Err(e)) => {
            if exp.path.is_some() {
                errors.push(format!("the router's middlewares refuse the request: {e}"));
            }
        }
        None => {}
    }
    Outcome {
        name: case.name.clone(),
        passed: errors.is_empty(),
        router: router.unwrap_or_else(|| "none".into()),
        service,
        path: shown_path,
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
