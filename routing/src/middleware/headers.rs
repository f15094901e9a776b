//! The `headers` middleware: custom request/response headers, CORS and the common
//! security headers, with Traefik's semantics (see `traefik-semantics.md`, "headers").

use crate::middleware::MiddlewareError;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode};
use regex::Regex;

use std::collections::BTreeMap;

use super::config::Headers;
use crate::Answer;

/// Custom headers by name (an empty value removes the header).
pub type Custom = BTreeMap<String, String>;

/// A compiled headers middleware.
#[derive(Debug, Clone)]
pub struct HeaderRules {
    cfg: Headers,
    origin_regexes: Vec<Regex>,
    allow_all_origins: bool,
    has_cors: bool,
}

/// What the request phase decided.
#[derive(Debug)]
pub enum RequestAction {
    /// Go on; `drop_xff` says the proxy must not add its own `X-Forwarded-For`.
    Continue {
        /// `X-Forwarded-For: ""` was configured.
        drop_xff: bool,
        /// A new Host to send upstream.
        host: Option<String>,
        /// The request came over HTTPS, directly or as one of `sslProxyHeaders` says (for
        /// the response's `Strict-Transport-Security` and `Public-Key-Pins`).
        ssl: bool,
    },
    /// Answer now (CORS preflight, bad host).
    Respond(Answer),
}

fn set_or_remove(h: &mut HeaderMap, name: &str, value: &str) {
    let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else { return };
    if value.is_empty() {
        h.remove(&name);
    } else if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

impl HeaderRules {
    /// Compiles the configuration.
    pub fn new(cfg: Headers) -> Result<Self, MiddlewareError> {
        let origin_regexes = super::path::compile_regexes(&cfg.access_control_allow_origin_list_regex)?;
        let allow_all_origins = cfg.access_control_allow_origin_list.iter().any(|o| o == "*");
        let has_cors = cfg.access_control_allow_credentials.is_some()
            || !cfg.access_control_allow_headers.is_empty()
            || !cfg.access_control_allow_methods.is_empty()
            || !cfg.access_control_allow_origin_list.is_empty()
            || !cfg.access_control_allow_origin_list_regex.is_empty()
            || !cfg.access_control_expose_headers.is_empty()
            || cfg.access_control_max_age.is_some();
        Ok(HeaderRules { cfg, origin_regexes, allow_all_origins, has_cors })
    }

    /// The custom request and response headers, when they are all this middleware sets
    /// (no CORS, host check or security header): what a proxy may apply to raw header
    /// lines without running [`HeaderRules::on_request`] and [`HeaderRules::on_response`].
    pub fn custom_only(&self) -> Option<(&Custom, &Custom)> {
        let c = &self.cfg;
        let rest =
            Headers { custom_request_headers: BTreeMap::new(), custom_response_headers: BTreeMap::new(), ..c.clone() };
        (rest == Headers::default()).then_some((&c.custom_request_headers, &c.custom_response_headers))
    }

    fn credentials(&self) -> bool {
        self.cfg.access_control_allow_credentials == Some(true)
    }

    /// `(allowed, value for Access-Control-Allow-Origin)`.
    fn origin_allowed(&self, origin: &str) -> Option<String> {
        if self.allow_all_origins {
            // With credentials the request's Origin is echoed: a request without one gets none.
            return if self.credentials() {
                (!origin.is_empty()).then(|| origin.to_string())
            } else {
                Some("*".into())
            };
        }
        if self.cfg.access_control_allow_origin_list.iter().any(|o| o == origin) {
            return Some(origin.to_string());
        }
        self.origin_regexes.iter().any(|re| re.is_match(origin)).then(|| origin.to_string())
    }

    /// The request phase. `host` is the request's host as the client sent it, port included
    /// (for allowedHosts); `tls` whether it came over TLS.
    pub fn on_request(&self, method: &Method, headers: &mut HeaderMap, host: &str, tls: bool) -> RequestAction {
        let origin = headers.get(http::header::ORIGIN).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        if self.has_cors
            && method == Method::OPTIONS
            && !origin.is_empty()
            && headers.contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            let mut r = Answer::empty(StatusCode::OK);
            let h = r.headers_mut();
            if self.credentials() {
                h.insert(http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
            }
            set_or_remove(h, "access-control-allow-headers", &self.cfg.access_control_allow_headers.join(","));
            set_or_remove(h, "access-control-allow-methods", &self.cfg.access_control_allow_methods.join(","));
            if let Some(o) = self.origin_allowed(&origin) {
                set_or_remove(h, "access-control-allow-origin", &o);
            }
            set_or_remove(h, "access-control-max-age", &self.cfg.access_control_max_age.unwrap_or(0).to_string());
            return RequestAction::Respond(r);
        }
        if !self.cfg.allowed_hosts.is_empty() && self.cfg.is_development != Some(true) {
            // The first of `hostsProxyHeaders` that is set names the host instead.
            let host = self
                .cfg
                .hosts_proxy_headers
                .iter()
                .find_map(|hp| headers.get(hp.as_str()).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty()))
                .unwrap_or(host);
            if !self.cfg.allowed_hosts.iter().any(|a| a.eq_ignore_ascii_case(host)) {
                return RequestAction::Respond(Answer::text(StatusCode::INTERNAL_SERVER_ERROR, "Bad Host"));
            }
        }
        let ssl = tls
            || self
                .cfg
                .ssl_proxy_headers
                .iter()
                .any(|(k, v)| headers.get(k.as_str()).is_some_and(|h| h.as_bytes() == v.as_bytes()));
        let mut drop_xff = false;
        let mut new_host = None;
        for (k, v) in &self.cfg.custom_request_headers {
            if k.eq_ignore_ascii_case("host") && !v.is_empty() {
                new_host = Some(v.clone());
                continue;
            }
            if k.eq_ignore_ascii_case("x-forwarded-for") && v.is_empty() {
                drop_xff = true;
            }
            set_or_remove(headers, k, v);
        }
        RequestAction::Continue { drop_xff, host: new_host, ssl }
    }

    /// The response phase. `origin` is the request's Origin header; `ssl` what
    /// [`RequestAction::Continue`] said (for Strict-Transport-Security and Public-Key-Pins).
    pub fn on_response(&self, h: &mut HeaderMap, origin: Option<&str>, ssl: bool) {
        let c = &self.cfg;
        // Security headers first, so custom response headers can override them. An empty
        // option is an option not set: it never removes what the backend sent.
        let set = |h: &mut HeaderMap, name: &'static str, value: Option<&str>| {
            if let Some(v) = value.filter(|v| !v.is_empty()).and_then(|v| HeaderValue::from_str(v).ok()) {
                h.insert(name, v);
            }
        };
        let production = c.is_development != Some(true);
        if let Some(secs) = c.sts_seconds.filter(|s| *s > 0) {
            if (ssl || c.force_sts_header == Some(true)) && production {
                let mut v = format!("max-age={secs}");
                if c.sts_include_subdomains == Some(true) {
                    v.push_str("; includeSubDomains");
                }
                if c.sts_preload == Some(true) {
                    v.push_str("; preload");
                }
                set(h, "strict-transport-security", Some(&v));
            }
        }
        let deny = (c.frame_deny == Some(true)).then_some("DENY");
        set(h, "x-frame-options", c.custom_frame_options_value.as_deref().filter(|v| !v.is_empty()).or(deny));
        set(h, "x-content-type-options", (c.content_type_nosniff == Some(true)).then_some("nosniff"));
        let xss = (c.browser_xss_filter == Some(true)).then_some("1; mode=block");
        set(h, "x-xss-protection", c.custom_browser_xss_value.as_deref().filter(|v| !v.is_empty()).or(xss));
        if ssl && production {
            set(h, "public-key-pins", c.public_key.as_deref());
        }
        set(h, "content-security-policy", c.content_security_policy.as_deref());
        set(h, "content-security-policy-report-only", c.content_security_policy_report_only.as_deref());
        set(h, "referrer-policy", c.referrer_policy.as_deref());
        set(h, "permissions-policy", c.permissions_policy.as_deref());
        for (k, v) in &c.custom_response_headers {
            set_or_remove(h, k, v);
        }
        if self.has_cors {
            if let Some(o) = self.origin_allowed(origin.unwrap_or("")) {
                if let Ok(v) = HeaderValue::from_str(&o) {
                    h.insert(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
                }
            }
            if self.credentials() {
                h.insert(http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
            }
            if !c.access_control_expose_headers.is_empty() {
                set_or_remove(h, "access-control-expose-headers", &c.access_control_expose_headers.join(","));
            }
        }
        if c.add_vary_header == Some(true) {
            let vary = h.get(http::header::VARY).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            if vary != "Origin" {
                let v = if vary.is_empty() { "Origin".to_string() } else { format!("{vary},Origin") };
                set_or_remove(h, "vary", &v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn rt(cfg: Headers) -> HeaderRules {
        HeaderRules::new(cfg).unwrap()
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn custom_only_is_said_only_without_other_options() {
        let custom = Headers {
            custom_request_headers: map(&[("X-A", "1")]),
            custom_response_headers: map(&[("X-B", "")]),
            ..Default::default()
        };
        let rules = rt(custom.clone());
        let (req, resp) = rules.custom_only().unwrap();
        assert_eq!((req.len(), resp.len()), (1, 1));
        for other in [
            Headers { frame_deny: Some(true), ..custom.clone() },
            Headers { access_control_allow_origin_list: vec!["*".into()], ..custom.clone() },
            Headers { allowed_hosts: vec!["a.test".into()], ..custom.clone() },
        ] {
            assert!(rt(other).custom_only().is_none());
        }
    }

    #[test]
    fn custom_request_headers_set_remove_and_host() {
        let h = rt(Headers {
            custom_request_headers: map(&[
                ("X-Script-Name", "test"),
                ("X-Drop", ""),
                ("Host", "upstream.test"),
                ("X-Forwarded-For", ""),
            ]),
            ..Default::default()
        });
        let mut req = HeaderMap::new();
        req.insert("x-drop", HeaderValue::from_static("1"));
        req.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        match h.on_request(&Method::GET, &mut req, "a.test", false) {
            RequestAction::Continue { drop_xff, host, ssl } => {
                assert!(drop_xff);
                assert!(!ssl);
                assert_eq!(host.as_deref(), Some("upstream.test"));
            }
            RequestAction::Respond(_) => panic!("no response expected"),
        }
        assert_eq!(req.get("x-script-name").unwrap(), "test");
        assert!(req.get("x-drop").is_none());
        assert!(req.get("x-forwarded-for").is_none());
    }

    #[test]
    fn custom_response_headers_replace_and_empty_deletes() {
        let h = rt(Headers {
            custom_response_headers: map(&[("X-Traefik-Backend", "cluster-a"), ("Server", "")]),
            ..Default::default()
        });
        let mut resp = HeaderMap::new();
        resp.insert("x-traefik-backend", HeaderValue::from_static("backend-said"));
        resp.insert("server", HeaderValue::from_static("nginx"));
        h.on_response(&mut resp, None, false);
        assert_eq!(resp.get("x-traefik-backend").unwrap(), "cluster-a");
        assert!(resp.get("server").is_none());
    }

    #[test]
    fn cors_preflight_is_answered_without_the_backend() {
        let h = rt(Headers {
            access_control_allow_methods: vec!["GET".into(), "OPTIONS".into(), "PUT".into()],
            access_control_allow_headers: vec!["X-A".into(), "X-B".into()],
            access_control_allow_origin_list: vec!["https://foo.test".into()],
            access_control_max_age: Some(100),
            ..Default::default()
        });
        let mut req = HeaderMap::new();
        req.insert("origin", HeaderValue::from_static("https://foo.test"));
        req.insert("access-control-request-method", HeaderValue::from_static("GET"));
        let RequestAction::Respond(r) = h.on_request(&Method::OPTIONS, &mut req, "a", false) else {
            panic!("preflight must be answered")
        };
        assert_eq!(r.status(), StatusCode::OK);
        let g = |k: &str| r.headers().get(k).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(g("access-control-allow-methods").as_deref(), Some("GET,OPTIONS,PUT"));
        assert_eq!(g("access-control-allow-headers").as_deref(), Some("X-A,X-B"));
        assert_eq!(g("access-control-allow-origin").as_deref(), Some("https://foo.test"));
        assert_eq!(g("access-control-max-age").as_deref(), Some("100"));
        // Without Access-Control-Request-Method it is a normal request.
        let mut req = HeaderMap::new();
        req.insert("origin", HeaderValue::from_static("https://foo.test"));
        assert!(matches!(h.on_request(&Method::OPTIONS, &mut req, "a", false), RequestAction::Continue { .. }));
    }

    #[test]
    fn cors_wildcard_with_credentials_echoes_origin_and_regex_is_unanchored() {
        let h = rt(Headers {
            access_control_allow_origin_list: vec!["*".into()],
            access_control_allow_credentials: Some(true),
            ..Default::default()
        });
        let mut resp = HeaderMap::new();
        h.on_response(&mut resp, Some("https://x.test"), false);
        assert_eq!(resp.get("access-control-allow-origin").unwrap(), "https://x.test");
        assert_eq!(resp.get("access-control-allow-credentials").unwrap(), "true");
        let h = rt(Headers { access_control_allow_origin_list: vec!["*".into()], ..Default::default() });
        let mut resp = HeaderMap::new();
        resp.insert("access-control-allow-origin", HeaderValue::from_static("https://backend.test"));
        h.on_response(&mut resp, Some("https://x.test"), false);
        assert_eq!(resp.get("access-control-allow-origin").unwrap(), "*", "replaces the backend's value");
        let h = rt(Headers { access_control_allow_origin_list_regex: vec!["foo\\.test".into()], ..Default::default() });
        let mut resp = HeaderMap::new();
        h.on_response(&mut resp, Some("https://sub.foo.test.evil"), false);
        assert_eq!(resp.get("access-control-allow-origin").unwrap(), "https://sub.foo.test.evil");
        let mut resp = HeaderMap::new();
        h.on_response(&mut resp, Some("https://bar.test"), false);
        assert!(resp.get("access-control-allow-origin").is_none());
    }

    #[test]
    fn a_wildcard_answers_requests_without_origin_unless_it_must_echo_one() {
        let any = rt(Headers { access_control_allow_origin_list: vec!["*".into()], ..Default::default() });
        let mut resp = HeaderMap::new();
        any.on_response(&mut resp, None, false);
        assert_eq!(resp.get("access-control-allow-origin").unwrap(), "*");
        let with_credentials = rt(Headers {
            access_control_allow_origin_list: vec!["*".into()],
            access_control_allow_credentials: Some(true),
            ..Default::default()
        });
        let mut resp = HeaderMap::new();
        with_credentials.on_response(&mut resp, None, false);
        assert!(resp.get("access-control-allow-origin").is_none(), "{resp:?}");
        assert_eq!(resp.get("access-control-allow-credentials").unwrap(), "true");
    }

    #[test]
    fn vary_appends_origin() {
        let h = rt(Headers {
            access_control_allow_origin_list: vec!["*".into()],
            add_vary_header: Some(true),
            ..Default::default()
        });
        let mut resp = HeaderMap::new();
        resp.insert("vary", HeaderValue::from_static("Accept-Encoding"));
        h.on_response(&mut resp, Some("https://x"), false);
        assert_eq!(resp.get("vary").unwrap(), "Accept-Encoding,Origin");
        let mut resp = HeaderMap::new();
        h.on_response(&mut resp, Some("https://x"), false);
        assert_eq!(resp.get("vary").unwrap(), "Origin");
    }

    #[test]
    fn security_headers_and_sts_only_over_tls() {
        let h = rt(Headers {
            frame_deny: Some(true),
            content_type_nosniff: Some(true),
            browser_xss_filter: Some(true),
            sts_seconds: Some(31536000),
            sts_include_subdomains: Some(true),
            referrer_policy: Some("same-origin".into()),
            ..Default::default()
        });
        let mut resp = HeaderMap::new();
        h.on_response(&mut resp, None, false);
        assert_eq!(resp.get("x-frame-options").unwrap(), "DENY");
        assert_eq!(resp.get("x-content-type-options").unwrap(), "nosniff");
        assert_eq!(resp.get("x-xss-protection").unwrap(), "1; mode=block");
        assert_eq!(resp.get("referrer-policy").unwrap(), "same-origin");
        assert!(resp.get("strict-transport-security").is_none());
        let mut resp = HeaderMap::new();
        h.on_response(&mut resp, None, true);
        assert_eq!(resp.get("strict-transport-security").unwrap(), "max-age=31536000; includeSubDomains");
    }

    #[test]
    fn ssl_proxy_headers_and_public_key_pins() {
        let h = rt(Headers {
            sts_seconds: Some(60),
            public_key: Some("pin-sha256=\"base64==\"; max-age=60".into()),
            ssl_proxy_headers: map(&[("X-Forwarded-Proto", "https")]),
            ..Default::default()
        });
        let ssl_of = |pairs: &[(&'static str, &'static str)], tls: bool| {
            let mut req = HeaderMap::new();
            for (k, v) in pairs {
                req.insert(*k, HeaderValue::from_static(v));
            }
            match h.on_request(&Method::GET, &mut req, "a.test", tls) {
                RequestAction::Continue { ssl, .. } => ssl,
                RequestAction::Respond(_) => panic!("no response expected"),
            }
        };
        assert!(ssl_of(&[("x-forwarded-proto", "https")], false), "a proxy in front says HTTPS");
        assert!(!ssl_of(&[("x-forwarded-proto", "HTTPS")], false), "the value must match exactly");
        assert!(!ssl_of(&[], false));
        assert!(ssl_of(&[], true));
        let mut resp = HeaderMap::new();
        h.on_response(&mut resp, None, true);
        assert_eq!(resp.get("strict-transport-security").unwrap(), "max-age=60");
        assert_eq!(resp.get("public-key-pins").unwrap(), "pin-sha256=\"base64==\"; max-age=60");
        let mut resp = HeaderMap::new();
        h.on_response(&mut resp, None, false);
        assert!(resp.is_empty(), "neither header over plain HTTP: {resp:?}");
    }

    #[test]
    fn an_empty_security_option_is_unset_and_custom_values_win_over_the_flags() {
        let h = rt(Headers {
            frame_deny: Some(true),
            custom_frame_options_value: Some("SAMEORIGIN".into()),
            browser_xss_filter: Some(true),
            custom_browser_xss_value: Some(String::new()),
            referrer_policy: Some(String::new()),
            ..Default::default()
        });
        let mut resp = HeaderMap::new();
        resp.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
        h.on_response(&mut resp, None, false);
        assert_eq!(resp.get("x-frame-options").unwrap(), "SAMEORIGIN");
        assert_eq!(resp.get("x-xss-protection").unwrap(), "1; mode=block", "an empty custom value falls back");
        assert_eq!(resp.get("referrer-policy").unwrap(), "no-referrer", "the backend's value stays");
    }

    #[test]
    fn allowed_hosts_use_the_first_proxy_header_set_and_keep_the_port() {
        let h = rt(Headers {
            allowed_hosts: vec!["good.test".into()],
            hosts_proxy_headers: vec!["X-Forwarded-Host".into()],
            ..Default::default()
        });
        let verdict = |fwd: Option<&'static str>, host: &str| {
            let mut req = HeaderMap::new();
            if let Some(f) = fwd {
                req.insert("x-forwarded-host", HeaderValue::from_static(f));
            }
            matches!(h.on_request(&Method::GET, &mut req, host, false), RequestAction::Continue { .. })
        };
        assert!(verdict(None, "good.test"));
        assert!(verdict(None, "GOOD.test"));
        assert!(!verdict(None, "good.test:8000"), "the host is compared with its port, as Traefik does");
        assert!(verdict(Some("good.test"), "evil.test"), "the proxy header names the host");
        assert!(!verdict(Some("evil.test"), "good.test"), "and replaces the Host, it is not one more chance");
        assert!(verdict(Some(""), "good.test"), "an empty proxy header is not set");
    }

    #[test]
    fn allowed_hosts_answer_500_for_unlisted_or_empty() {
        let h = rt(Headers { allowed_hosts: vec!["good.test".into()], ..Default::default() });
        let mut req = HeaderMap::new();
        assert!(matches!(h.on_request(&Method::GET, &mut req, "good.test", false), RequestAction::Continue { .. }));
        let RequestAction::Respond(r) = h.on_request(&Method::GET, &mut req, "evil.test", false) else { panic!() };
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let RequestAction::Respond(r) = h.on_request(&Method::GET, &mut req, "", false) else { panic!() };
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
