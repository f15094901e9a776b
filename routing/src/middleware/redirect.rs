//! redirectScheme and redirectRegex.

use http::{Method, StatusCode};
use regex::Regex;

/// The URL of a request as the redirect middlewares see it.
#[derive(Debug, Clone)]
pub struct RequestUrl<'a> {
    /// `http` or `https`.
    pub scheme: &'a str,
    /// Host, possibly with `:port`.
    pub host: &'a str,
    /// Path and query, as sent.
    pub path_and_query: &'a str,
}

/// The status Traefik uses: 302/301 for GET, 307/308 otherwise.
pub fn redirect_status(method: &Method, permanent: bool) -> StatusCode {
    match (permanent, method == Method::GET) {
        (false, true) => StatusCode::FOUND,
        (false, false) => StatusCode::TEMPORARY_REDIRECT,
        (true, true) => StatusCode::MOVED_PERMANENTLY,
        (true, false) => StatusCode::PERMANENT_REDIRECT,
    }
}

fn split_host_port(host: &str) -> (&str, Option<&str>) {
    if let Some(rest) = host.strip_prefix('[') {
        if let Some(end) = rest.find(']') {
            let port = rest[end + 1..].strip_prefix(':');
            return (&host[..end + 2], port);
        }
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, Some(p)),
        _ => (host, None),
    }
}

/// redirectScheme: the Location to redirect to, or `None` when the request already has
/// the target scheme and port.
pub fn scheme_target(url: &RequestUrl<'_>, scheme: &str, port: Option<&str>) -> Option<String> {
    let (host, cur_port) = split_host_port(url.host);
    let port = port.filter(|p| !p.is_empty());
    let default_port = match scheme {
        "https" => Some("443"),
        "http" => Some("80"),
        _ => None,
    };
    let port = port.filter(|p| Some(*p) != default_port);
    let cur_default = match url.scheme {
        "https" => Some("443"),
        _ => Some("80"),
    };
    let cur_port = cur_port.filter(|p| Some(*p) != cur_default);
    if url.scheme == scheme && cur_port == port {
        return None;
    }
    let authority = match port {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    Some(format!("{scheme}://{authority}{}", url.path_and_query))
}

/// redirectRegex: the Location, or `None` when the regexp does not match or the result is
/// the same URL.
pub fn regex_target(url: &RequestUrl<'_>, re: &Regex, replacement: &str) -> Option<String> {
    let current = format!("{}://{}{}", url.scheme, url.host, url.path_and_query);
    if !re.is_match(&current) {
        return None;
    }
    let target = re.replace(&current, replacement).into_owned();
    (target != current).then_some(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url<'a>(scheme: &'a str, host: &'a str, pq: &'a str) -> RequestUrl<'a> {
        RequestUrl { scheme, host, path_and_query: pq }
    }

    #[test]
    fn scheme_redirects() {
        assert_eq!(
            scheme_target(&url("http", "a.test", "/x?y=1"), "https", None).as_deref(),
            Some("https://a.test/x?y=1")
        );
        assert_eq!(
            scheme_target(&url("http", "a.test:8000", "/"), "https", Some("8443")).as_deref(),
            Some("https://a.test:8443/")
        );
        assert_eq!(
            scheme_target(&url("http", "a.test:8000", "/"), "https", Some("443")).as_deref(),
            Some("https://a.test/")
        );
        assert_eq!(scheme_target(&url("https", "a.test", "/"), "https", None), None);
        assert_eq!(
            scheme_target(&url("https", "[::1]:8443", "/"), "https", Some("9443")).as_deref(),
            Some("https://[::1]:9443/")
        );
    }

    #[test]
    fn statuses() {
        assert_eq!(redirect_status(&Method::GET, false), StatusCode::FOUND);
        assert_eq!(redirect_status(&Method::POST, false), StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(redirect_status(&Method::GET, true), StatusCode::MOVED_PERMANENTLY);
        assert_eq!(redirect_status(&Method::PUT, true), StatusCode::PERMANENT_REDIRECT);
    }

    #[test]
    fn regex_redirects() {
        let re = crate::rules::re2::compile("^http://localhost/(.*)").unwrap();
        assert_eq!(
            regex_target(&url("http", "localhost", "/a/b"), &re, "http://mydomain/${1}").as_deref(),
            Some("http://mydomain/a/b")
        );
        assert_eq!(regex_target(&url("http", "other", "/a"), &re, "http://mydomain/${1}"), None);
    }
}
