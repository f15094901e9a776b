//! The fine points of `traefik-semantics.md`, one test each.

use http::{HeaderMap, HeaderValue};

use super::*;

struct Req {
    method: &'static str,
    host: &'static str,
    path: &'static str,
    query: Option<&'static str>,
    headers: HeaderMap,
    remote: &'static str,
}

fn req(host: &'static str, path: &'static str) -> Req {
    Req { method: "GET", host, path, query: None, headers: HeaderMap::new(), remote: "192.0.2.1:1234" }
}

impl Req {
    fn matches(&self, rule: &str) -> bool {
        let r = Rule::parse(rule).unwrap_or_else(|e| panic!("{rule}: {e}"));
        let view = RequestView::new(self.method, self.host, self.path, self.query, &self.headers, self.remote);
        r.matches(&view)
    }
    fn header(mut self, k: &'static str, v: &'static str) -> Self {
        self.headers.append(k, HeaderValue::from_static(v));
        self
    }
    fn query(mut self, q: &'static str) -> Self {
        self.query = Some(q);
        self
    }
    fn method(mut self, m: &'static str) -> Self {
        self.method = m;
        self
    }
    fn remote(mut self, r: &'static str) -> Self {
        self.remote = r;
        self
    }
}

fn parse_err(rule: &str) -> RuleError {
    Rule::parse(rule).expect_err(rule)
}

#[test]
fn matcher_names_accept_exactly_four_spellings() {
    for ok in [
        "PathPrefix(`/a`)",
        "pathprefix(`/a`)",
        "PATHPREFIX(`/a`)",
        "Pathprefix(`/a`)",
        "clientip(`1.2.3.4`)",
        "Clientip(`1.2.3.4`)",
    ] {
        assert!(Rule::parse(ok).is_ok(), "{ok}");
    }
    for bad in ["pathPrefix(`/a`)", "PathPREFIX(`/a`)", "clientIP(`1.2.3.4`)", "Unknown(`x`)"] {
        assert!(parse_err(bad).message.contains("unknown matcher"), "{bad}");
    }
}

#[test]
fn argument_rules() {
    assert!(parse_err("Host(``)").message.contains("empty argument"));
    assert!(parse_err("Header(`X`)").message.contains("takes 2"));
    assert!(parse_err("Header(`X`, `a`, `b`)").message.contains("takes 2"));
    assert!(parse_err("Host(`a`, `b`)").message.contains("takes 1"));
    assert!(parse_err("Query(`a`, `b`, `c`)").message.contains("1 or 2"));
    assert!(Rule::parse("Query(`a`)").is_ok());
    assert!(Rule::parse("QueryRegexp(`a`, `^b$`)").is_ok());
    assert!(parse_err("Host()").message.contains("takes 1"));
    assert!(parse_err("Path(`foo`)").message.contains("start with a '/'"));
    assert!(parse_err("PathPrefix(`foo`)").message.contains("start with a '/'"));
    assert!(parse_err("Host(`bücher.example`)").message.contains("non-ASCII"));
    assert!(parse_err("HostRegexp(`bücher`)").message.contains("non-ASCII"));
    assert!(parse_err("PathRegexp(`(`)").message.contains("invalid regexp"));
    assert!(parse_err("ClientIP(`300.1.1.1`)").message.contains("ClientIP"));
    assert_eq!(parse_err("Host(`a`) && Unknown(`b`)").position, 13);
}

#[test]
fn host_is_case_insensitive_port_stripped_and_brackets_removed() {
    assert!(req("API.example.com:8443", "/").matches("Host(`api.EXAMPLE.com`)"));
    assert!(req("[::1]:80", "/").matches("Host(`::1`)"));
    assert!(req("[::1]:80", "/").matches("Host(`[::1]`)"));
    assert!(!req("other.com", "/").matches("Host(`api.example.com`)"));
    assert!(!req("", "/").matches("Host(`*`)"), "a request without host matches no Host rule");
}

#[test]
fn host_trailing_dot_either_side() {
    assert!(req("example.com.", "/").matches("Host(`example.com`)"));
    assert!(req("example.com", "/").matches("Host(`example.com.`)"));
    assert!(req("example.com.", "/").matches("Host(`example.com.`)"));
}

#[test]
fn host_wildcards() {
    assert!(req("anything.test", "/").matches("Host(`*`)"));
    assert!(req("a.example.com", "/").matches("Host(`*.example.com`)"));
    assert!(!req("example.com", "/").matches("Host(`*.example.com`)"));
    assert!(!req("a.b.example.com", "/").matches("Host(`*.example.com`)"));
}

#[test]
fn host_regexp_runs_on_lowercased_host_without_port() {
    assert!(req("API.Example.com:443", "/").matches("HostRegexp(`^api\\.example\\.com$`)"));
    // Unanchored.
    assert!(req("foo.example.com", "/").matches("HostRegexp(`example`)"));
    assert!(!req("foo.example.com", "/").matches("HostRegexp(`^example`)"));
}

#[test]
fn path_is_exact_and_case_sensitive() {
    assert!(req("a", "/foo").matches("Path(`/foo`)"));
    assert!(!req("a", "/foo/").matches("Path(`/foo`)"));
    assert!(!req("a", "/Foo").matches("Path(`/foo`)"));
}

#[test]
fn path_prefix_is_a_plain_string_prefix() {
    assert!(req("a", "/crmx").matches("PathPrefix(`/crm`)"));
    assert!(req("a", "/crm/health").matches("PathPrefix(`/crm`)"));
    assert!(!req("a", "/CRM").matches("PathPrefix(`/crm`)"));
}

#[test]
fn routing_path_decodes_unreserved_escapes_only() {
    assert!(req("a", "/foo%20bar").matches("Path(`/foo bar`)"));
    assert!(req("a", "/foo%2Fbar").matches("Path(`/foo%2Fbar`)"));
    assert!(!req("a", "/foo%2Fbar").matches("Path(`/foo/bar`)"));
    assert!(req("a", "/%61pi").matches("PathPrefix(`/api`)"));
}

#[test]
fn no_path_matches_no_path_rule() {
    assert!(!req("a", "").matches("PathPrefix(`/`)"));
    assert!(!req("a", "").matches("Path(`/`)"));
    assert!(req("a", "").matches("!PathPrefix(`/`)"));
    assert!(req("a", "").matches("PathRegexp(`^$`)"));
    assert!(!req("a", "").matches("PathRegexp(`^/`)"));
}

#[test]
fn path_regexp_is_unanchored_and_braces_are_literal() {
    assert!(req("a", "/x/css/y").matches("PathRegexp(`/css`)"));
    assert!(!req("a", "/x/css/y").matches("PathRegexp(`^/css`)"));
    assert!(req("a", "/{path:css}").matches("PathRegexp(`/{path:(css|js)}`)"));
    assert!(!req("a", "/css").matches("PathRegexp(`^/{path:(css|js)}$`)"));
}

#[test]
fn method_value_is_uppercased_request_compared_exactly() {
    assert!(req("a", "/").method("POST").matches("Method(`post`)"));
    assert!(!req("a", "/").method("post").matches("Method(`post`)"));
}

#[test]
fn header_name_case_insensitive_value_exact_any_repeat() {
    let r = req("a", "/").header("x-foo", "one").header("x-foo", "two");
    assert!(r.matches("Header(`X-Foo`, `two`)"));
    assert!(!r.matches("Header(`X-Foo`, `TWO`)"));
    assert!(!r.matches("Header(`X-Foo`, `one,two`)"));
    assert!(r.matches("HeaderRegexp(`x-FOO`, `^tw`)"));
    assert!(!r.matches("Header(`X-Bar`, `one`)"));
    // Like Go's net/http, the Host header is not visible to header matchers.
    let r = req("a.test", "/").header("host", "a.test");
    assert!(!r.matches("Header(`Host`, `a.test`)"));
    assert!(!r.matches("HeaderRegexp(`Host`, `.*`)"));
}

#[test]
fn query_semantics() {
    let r = req("a", "/").query("k=v1&k=v2&empty&blank=");
    assert!(r.matches("Query(`k`, `v2`)"));
    assert!(!r.matches("Query(`K`, `v2`)"), "keys are case-sensitive");
    assert!(r.matches("Query(`empty`)"));
    assert!(r.matches("Query(`blank`)"));
    assert!(!r.matches("Query(`k`)"), "one argument matches only an empty value");
    assert!(r.matches("QueryRegexp(`k`, `^v\\d$`)"));
    assert!(!r.matches("Query(`missing`)"));
    assert!(req("a", "/").query("q=a+b").matches("Query(`q`, `a b`)"));
}

#[test]
fn client_ip_uses_socket_peer_only() {
    let r = req("a", "/").remote("10.1.2.3:5555").header("x-forwarded-for", "192.168.0.1");
    assert!(r.matches("ClientIP(`10.0.0.0/8`)"));
    assert!(r.matches("ClientIP(`10.1.2.3`)"));
    assert!(!r.matches("ClientIP(`192.168.0.1`)"));
    assert!(req("a", "/").remote("[::1]:80").matches("ClientIP(`::1/128`)"));
    assert!(!req("a", "/").remote("garbage").matches("ClientIP(`0.0.0.0/0`)"));
}

#[test]
fn boolean_combinations() {
    let r = req("api.example.com", "/crm/health");
    assert!(r.matches("Host(`api.example.com`) && PathPrefix(`/crm`)"));
    assert!(r.matches("Host(`x`) || PathPrefix(`/crm`)"));
    assert!(!r.matches("Host(`x`) || PathPrefix(`/crm`) && Method(`POST`)"));
    assert!(r.matches("(Host(`x`) || PathPrefix(`/crm`)) && !Method(`POST`)"));
    assert!(r.matches("!!Host(`api.example.com`)"));
}

#[test]
fn default_priority_is_rule_length() {
    assert_eq!(Rule::parse("Host(`example.org`)").unwrap().default_priority(), 19);
}

#[test]
fn index_hints_are_sound() {
    let r = Rule::parse("Host(`A.com`) && PathPrefix(`/x`)").unwrap();
    assert_eq!(r.required_hosts(), Some(vec!["a.com".to_string()]));
    assert_eq!(r.required_prefixes(), Some(vec!["/x".to_string()]));
    let r = Rule::parse("Host(`a.com`) || PathPrefix(`/x`)").unwrap();
    assert_eq!(r.required_hosts(), None);
    assert_eq!(r.required_prefixes(), None);
    let r = Rule::parse("!Host(`a.com`)").unwrap();
    assert_eq!(r.required_hosts(), None);
    let r = Rule::parse("Host(`*.a.com`)").unwrap();
    assert_eq!(r.required_hosts(), None);
    let r = Rule::parse("(Host(`a.com`) || Host(`b.com.`)) && Path(`/p`)").unwrap();
    assert_eq!(r.required_hosts(), Some(vec!["a.com".to_string(), "b.com".to_string()]));
}
