//! What the rule engine sees of a request.
//!
//! [`RequestView`] holds the request's routing inputs already canonicalised the way Traefik
//! does before it runs matchers: the host lower-cased without port or IPv6 brackets, the
//! routing path decoded except for reserved characters, and the client address taken from
//! the socket peer only.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;

/// The routing inputs of one request.
#[derive(Debug, Clone)]
pub struct RequestView<'a> {
    /// The request method, compared exactly.
    pub method: &'a str,
    /// Canonical host: lower case, no port, no IPv6 brackets. Empty when the request has none.
    pub host: Cow<'a, str>,
    /// The routing path (empty for a target with no path), or `None` for a target that is not
    /// a path at all (`OPTIONS *`).
    pub routing_path: Option<Cow<'a, str>>,
    /// The raw query string without `?`.
    pub raw_query: Option<&'a str>,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// The socket peer's IP.
    pub client_ip: Option<IpAddr>,
}

impl<'a> RequestView<'a> {
    /// Builds a view from raw parts. `host` is the authority of an absolute-form target, or
    /// else the Host header; `escaped_path` is the path as sent, percent-escapes intact;
    /// `remote_addr` is the peer as `ip:port` (or a bare IP).
    pub fn new(
        method: &'a str,
        host: &'a str,
        escaped_path: &'a str,
        raw_query: Option<&'a str>,
        headers: &'a HeaderMap,
        remote_addr: &str,
    ) -> Self {
        Self::with_client_ip(method, host, escaped_path, raw_query, headers, parse_client_ip(remote_addr))
    }

    /// Like [`RequestView::new`], with the client IP already known (the proxy's hot path).
    pub fn with_client_ip(
        method: &'a str,
        host: &'a str,
        escaped_path: &'a str,
        raw_query: Option<&'a str>,
        headers: &'a HeaderMap,
        client_ip: Option<IpAddr>,
    ) -> Self {
        RequestView {
            method,
            host: canonical_host(host),
            routing_path: routing_path(escaped_path),
            raw_query,
            headers,
            client_ip,
        }
    }

    /// Every value of query key `key` (case-sensitive), decoded as Go's `url.ParseQuery` does.
    pub fn query_values<'s>(&'s self, key: &'s str) -> impl Iterator<Item = Cow<'s, str>> + 's {
        query_pairs(self.raw_query.unwrap_or("")).filter(move |(k, _)| k == key).map(|(_, v)| v)
    }
}

/// The peer IP, as Traefik's remote-address strategy reads it: `ip:port`, or the whole text
/// when it has no port. IPv4-mapped IPv6 addresses compare as IPv4.
pub fn parse_client_ip(remote_addr: &str) -> Option<IpAddr> {
    let ip = remote_addr.parse::<SocketAddr>().map(|s| s.ip()).or_else(|_| remote_addr.parse::<IpAddr>()).ok()?;
    Some(ip.to_canonical())
}

/// Lower case, without port, without IPv6 brackets.
pub fn canonical_host(host: &str) -> Cow<'_, str> {
    let h = if let Some(rest) = host.strip_prefix('[') {
        match rest.find(']') {
            Some(end) => &rest[..end],
            None => host,
        }
    } else if host.bytes().filter(|&b| b == b':').count() == 1 {
        host.split_once(':').map(|(h, _)| h).unwrap_or(host)
    } else {
        host
    };
    if h.bytes().any(|b| b.is_ascii_uppercase()) { Cow::Owned(h.to_ascii_lowercase()) } else { Cow::Borrowed(h) }
}

/// Escapes that stay escaped in the routing path: those of reserved characters and `%`,
/// written with upper-case hex digits (`%2F`). Traefik compares the escape text, so a
/// lower-case `%2f` is decoded like any other escape.
fn is_reserved_escape(hi: u8, lo: u8, v: u8) -> bool {
    !hi.is_ascii_lowercase() && !lo.is_ascii_lowercase() && is_reserved(v)
}

fn is_reserved(b: u8) -> bool {
    matches!(
        b,
        b':' | b'/'
            | b'?'
            | b'#'
            | b'['
            | b']'
            | b'@'
            | b'!'
            | b'$'
            | b'&'
            | b'\''
            | b'('
            | b')'
            | b'*'
            | b'+'
            | b','
            | b';'
            | b'='
            | b'%'
    )
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The routing path: the escaped path with every percent-escape decoded except those of
/// reserved characters and `%`. `/foo%20bar` routes as `/foo bar`; `/foo%2Fbar` stays.
/// An empty path stays empty: it matches no `Path` or `PathPrefix` rule (their arguments
/// start with `/`), but a `PathRegexp` such as `^$` sees it, as in Traefik.
pub fn routing_path(escaped: &str) -> Option<Cow<'_, str>> {
    Some(decode_escapes(escaped, is_reserved_escape))
}

/// Percent-decodes a whole string (every escape, `+` left as is). Invalid escapes are kept.
pub fn percent_decode(s: &str) -> Cow<'_, str> {
    decode_escapes(s, |_, _, _| false)
}

/// Decodes the valid `%XX` escapes of `s`, except those `keep(hi, lo, byte)` says stay
/// escaped; invalid escapes are kept as they are.
fn decode_escapes(s: &str, keep: impl Fn(u8, u8, u8) -> bool) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
            && !keep(b[i + 1], b[i + 2], h * 16 + l)
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn query_unescape(s: &str) -> Option<Cow<'_, str>> {
    if !s.contains(['%', '+']) {
        return Some(Cow::Borrowed(s));
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let h = hex(*b.get(i + 1)?)?;
                let l = hex(*b.get(i + 2)?)?;
                out.push(h * 16 + l);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    Some(Cow::Owned(String::from_utf8_lossy(&out).into_owned()))
}

/// Key/value pairs of a raw query, as Go's `url.ParseQuery` yields them: split on `&`,
/// pairs containing `;` or a bad escape dropped, `+` decoded as a space.
pub fn query_pairs(raw: &str) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    raw.split('&').filter(|p| !p.is_empty() && !p.contains(';')).filter_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        Some((query_unescape(k)?, query_unescape(v)?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_is_canonicalised() {
        assert_eq!(canonical_host("API.Example.COM:8443"), "api.example.com");
        assert_eq!(canonical_host("[::1]:8080"), "::1");
        assert_eq!(canonical_host("[::1]"), "::1");
        assert_eq!(canonical_host("::1"), "::1");
        assert_eq!(canonical_host("example.com."), "example.com.");
    }

    #[test]
    fn routing_path_keeps_reserved_escapes() {
        assert_eq!(routing_path("/foo%20bar").as_deref(), Some("/foo bar"));
        assert_eq!(routing_path("/foo%2Fbar").as_deref(), Some("/foo%2Fbar"));
        assert_eq!(
            routing_path("/foo%2fbar").as_deref(),
            Some("/foo/bar"),
            "lower-case escapes are not reserved escapes"
        );
        assert_eq!(routing_path("/a%3Ab%3ac").as_deref(), Some("/a%3Ab:c"));
        assert_eq!(routing_path("/a%25b").as_deref(), Some("/a%25b"));
        assert_eq!(routing_path("/ap%69").as_deref(), Some("/api"));
        assert_eq!(routing_path("/bad%zz").as_deref(), Some("/bad%zz"));
        assert_eq!(routing_path("/end%4").as_deref(), Some("/end%4"));
        assert_eq!(routing_path("").as_deref(), Some(""));
    }

    #[test]
    fn query_pairs_follow_go() {
        let pairs: Vec<_> = query_pairs("a=1&b&c=&a=2&d=x+y&e=%41&bad=%zz&s=1;2").collect();
        let pairs: Vec<(String, String)> = pairs.into_iter().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        assert_eq!(
            pairs,
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "".into()),
                ("c".into(), "".into()),
                ("a".into(), "2".into()),
                ("d".into(), "x y".into()),
                ("e".into(), "A".into()),
            ]
        );
    }

    #[test]
    fn client_ip_from_peer() {
        assert_eq!(parse_client_ip("10.0.0.1:1234"), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(parse_client_ip("[::ffff:10.0.0.1]:1"), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(parse_client_ip("10.0.0.1"), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(parse_client_ip("not-an-ip"), None);
        assert_eq!(parse_client_ip("[::1]"), None);
    }
}
