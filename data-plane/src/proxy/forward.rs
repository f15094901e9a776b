//! Request and response headers across the proxy hop, as Traefik sets them.
//!
//! Incoming `X-Forwarded-*` and `X-Real-Ip` come from an untrusted client, so they are
//! replaced (Traefik's default with no trusted IPs). As in Traefik, this happens in two
//! steps: the entrypoint sets them before routing and middlewares (so a headers middleware
//! can override them), and the proxy adds `X-Forwarded-For` last. Hop-by-hop headers are
//! removed in both directions, except the `Upgrade` handshake of a protocol switch.

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::hop::{
    HopRules, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PORT, X_FORWARDED_PROTO, X_FORWARDED_SERVER, X_REAL_IP,
    is_forwarding,
};

/// What the proxy knows about the client side of a request. The values that do not change
/// within a connection (client IP, server name) are built once, not per request.
#[derive(Debug, Clone)]
pub struct ClientSide<'a> {
    /// The client's IP, as a header value.
    pub ip: Option<&'a HeaderValue>,
    /// `http`, `https`, `ws` or `wss`.
    pub proto: &'static str,
    /// The Host the client asked for.
    pub host: Option<HeaderValue>,
    /// This proxy's host name.
    pub server: &'a HeaderValue,
}

/// Traefik's `X-Forwarded-Port`: the port of the Host the client asked for, else the
/// scheme's default (so a request that crossed an uplink keeps the parent's port).
fn forwarded_port<'a>(host: Option<&'a [u8]>, proto: &str) -> &'a [u8] {
    let visible = |h: &&[u8]| h.iter().all(|&b| b == b'\t' || (32..127).contains(&b));
    let explicit = host.filter(visible).and_then(|h| {
        let after_v6 = h.iter().rposition(|&b| b == b']').map_or(h, |i| &h[i + 1..]);
        let colon = after_v6.iter().rposition(|&b| b == b':')?;
        Some(&after_v6[colon + 1..]).filter(|p| !p.is_empty() && p.iter().all(u8::is_ascii_digit))
    });
    match explicit {
        Some(p) => p,
        None if matches!(proto, "https" | "wss") => b"443",
        None => b"80",
    }
}

/// Whether a header is one atrium uses between its own components (`atrium-*`). A client
/// never gets to send one: they are removed at the first atrium hop, on every lane.
pub(crate) fn is_internal(name: &[u8]) -> bool {
    name.len() > INTERNAL_PREFIX.len() && name[..INTERNAL_PREFIX.len()].eq_ignore_ascii_case(INTERNAL_PREFIX)
}

/// The prefix of atrium's own headers.
const INTERNAL_PREFIX: &[u8] = b"atrium-";

/// Removes every header `named` says: a client's managed X-headers and `atrium-*` ones
/// (see [`is_forwarding`], [`is_internal`]). Clients rarely send one, so the common case
/// is one pass over the names and no allocation.
fn remove_named(h: &mut HeaderMap, named: impl Fn(&[u8]) -> bool) {
    if !h.keys().any(|k| named(k.as_str().as_bytes())) {
        return;
    }
    let names: Vec<HeaderName> = h.keys().filter(|k| named(k.as_str().as_bytes())).cloned().collect();
    for n in names {
        h.remove(n);
    }
}

/// The entrypoint's step, before routing: the client's own `X-Forwarded-*`, `X-Real-Ip`
/// and `atrium-*` headers go, and the proxy's `X-Real-Ip`, `X-Forwarded-Proto`, `-Host`,
/// `-Port` and `-Server` are set. Middlewares may change them afterwards;
/// `X-Forwarded-For` is added by [`add_forwarded_for`] when the request leaves.
pub fn set_forwarded(h: &mut HeaderMap, c: &ClientSide<'_>) {
    remove_named(h, |n| is_forwarding(n) || is_internal(n));
    if let Some(ip) = c.ip {
        h.insert(X_REAL_IP, ip.clone());
    }
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(c.proto));
    if let Some(host) = &c.host {
        h.insert(X_FORWARDED_HOST, host.clone());
    }
    let port = match forwarded_port(c.host.as_ref().map(HeaderValue::as_bytes), c.proto) {
        // The defaults need no copy.
        b"80" => HeaderValue::from_static("80"),
        b"443" => HeaderValue::from_static("443"),
        p => HeaderValue::from_bytes(p).unwrap_or(HeaderValue::from_static("80")),
    };
    h.insert(X_FORWARDED_PORT, port);
    h.insert(X_FORWARDED_SERVER, c.server.clone());
}

/// The proxy's step, as the request leaves: the client's IP goes into `X-Forwarded-For`,
/// after a value a middleware set there (joined with `, `, as Go's reverse proxy does),
/// unless a middleware emptied it (`drop`).
pub fn add_forwarded_for(h: &mut HeaderMap, ip: Option<&HeaderValue>, drop: bool) {
    let Some(ip) = ip else { return };
    if drop {
        h.remove(X_FORWARDED_FOR);
        return;
    }
    if !h.contains_key(X_FORWARDED_FOR) {
        h.insert(X_FORWARDED_FOR, ip.clone());
        return;
    }
    let mut joined = Vec::new();
    for v in h.get_all(X_FORWARDED_FOR) {
        joined.extend_from_slice(v.as_bytes());
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(ip.as_bytes());
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        h.insert(X_FORWARDED_FOR, v);
    }
}

/// The client side of a request passed as bytes (see [`ClientSide`]).
/// What the direct lane changes in a forwarded head besides the forwarding rules.
#[derive(Default)]
pub(crate) struct HeadEdits<'a> {
    /// A header not to forward (the API key of an API route).
    pub(crate) drop: Option<&'a [u8]>,
    /// Headers set (`Some`: every client line of that name replaced) or removed (`None`) by
    /// headers middlewares; never a header the proxy itself sets.
    pub(crate) set: &'a [(HeaderName, Option<HeaderValue>)],
    /// Headers added after the client's: what path rewrites set (`X-Forwarded-Prefix`).
    pub(crate) append: &'a [(&'static str, HeaderValue)],
}

pub(crate) struct RawClient<'a> {
    /// The client's IP.
    pub(crate) ip: Option<&'a [u8]>,
    /// `http` or `https`.
    pub(crate) proto: &'static str,
    /// This proxy's host name.
    pub(crate) server: &'a [u8],
}

/// The head the proxy sends for a bodiless HTTP/1.1 request that no middleware touches,
/// written from the client's head as bytes: what [`set_forwarded`], [`strip_hop_by_hop`]
/// and [`add_forwarded_for`] do to a header map, done while copying the lines. The Host
/// is the client's when `pass_host` (else, or when it sent none, `authority`). Header
/// `drop`, when given, is left out (an API key the direct lane checked).
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_request_raw<'a>(
    out: &mut Vec<u8>,
    method: &http::Method,
    target: &[u8],
    headers: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone,
    c: &RawClient<'_>,
    pass_host: bool,
    authority: &[u8],
    edits: &HeadEdits<'_>,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    use crate::h1::push_line;
    let rules = HopRules::new(headers.clone());
    let mut host: Option<&[u8]> = None;
    for (name, value) in headers {
        if name.eq_ignore_ascii_case(b"host") {
            host.get_or_insert(value);
            if !pass_host {
                continue;
            }
        } else if is_forwarding(name)
            || is_internal(name)
            || rules.removes(name)
            || edits.drop.is_some_and(|d| name.eq_ignore_ascii_case(d))
            || edits.set.iter().any(|(n, _)| name.eq_ignore_ascii_case(n.as_str().as_bytes()))
        {
            continue;
        }
        push_line(out, name, value);
    }
    // As on the general lane, where the client's `Connection` list is applied after the
    // middlewares: it removes what they added too.
    let set = edits.set.iter().filter_map(|(n, v)| Some((n.as_str(), v.as_ref()?)));
    for (name, value) in set.chain(edits.append.iter().map(|(n, v)| (*n, v))) {
        if !rules.removes(name.as_bytes()) {
            push_line(out, name.as_bytes(), value.as_bytes());
        }
    }
    if rules.te_trailers {
        push_line(out, b"te", b"trailers");
    }
    if !pass_host || host.is_none() {
        push_line(out, b"host", authority);
    }
    if let Some(ip) = c.ip {
        push_line(out, b"x-real-ip", ip);
    }
    push_line(out, b"x-forwarded-proto", c.proto.as_bytes());
    if let Some(h) = host {
        push_line(out, b"x-forwarded-host", h);
    }
    push_line(out, b"x-forwarded-port", forwarded_port(host, c.proto));
    push_line(out, b"x-forwarded-server", c.server);
    if let Some(ip) = c.ip {
        push_line(out, b"x-forwarded-for", ip);
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hop::strip_hop_by_hop;
    use http::header;

    #[test]
    fn forwarded_headers_replace_what_the_client_sent() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert("x-real-ip", HeaderValue::from_static("6.6.6.6"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("gopher"));
        let (ip, server) = (HeaderValue::from_static("10.0.0.9"), HeaderValue::from_static("gw-1"));
        let c = ClientSide {
            ip: Some(&ip),
            proto: "https",
            host: Some(HeaderValue::from_static("api.test:8443")),
            server: &server,
        };
        set_forwarded(&mut h, &c);
        assert!(h.get("x-forwarded-for").is_none(), "the client's is gone; the proxy adds its own last");
        assert_eq!(h.get("x-real-ip").unwrap(), "10.0.0.9");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "https");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "api.test:8443");
        assert_eq!(h.get("x-forwarded-port").unwrap(), "8443");
        assert_eq!(h.get("x-forwarded-server").unwrap(), "gw-1");
        add_forwarded_for(&mut h, c.ip, false);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "10.0.0.9");
        // Without a port in Host, the scheme's default.
        for (host, proto, want) in [
            ("api.test", "https", "443"),
            ("api.test", "http", "80"),
            ("[::1]", "wss", "443"),
            ("[::1]:81", "http", "81"),
        ] {
            let mut h = HeaderMap::new();
            set_forwarded(&mut h, &ClientSide { host: Some(HeaderValue::from_static(host)), proto, ..c.clone() });
            assert_eq!(h.get("x-forwarded-port").unwrap(), want, "{host} {proto}");
        }
    }

    #[test]
    fn a_client_cannot_send_the_x_headers_backends_trust() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("x-forwarded-prefix", "/admin"),
            ("x-forwarded-uri", "/admin"),
            ("x-forwarded-method", "DELETE"),
            ("x-forwarded-scheme", "https"),
            ("x-scheme", "https"),
            ("x-forwarded-tls-client-cert", "forged"),
            ("x-forwarded-tls-client-cert-info", "Subject=\"CN=admin\""),
            // Underscore spellings, which some servers read as the dashed name.
            ("x_forwarded_for", "6.6.6.6"),
            ("x_real_ip", "6.6.6.6"),
        ] {
            h.insert(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        h.insert("x-forwarded-prefixes", HeaderValue::from_static("kept: not a managed name"));
        let server = HeaderValue::from_static("gw-1");
        set_forwarded(&mut h, &ClientSide { ip: None, proto: "http", host: None, server: &server });
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-forwarded-prefixes", "x-forwarded-proto", "x-forwarded-port", "x-forwarded-server"]);
        for (name, managed) in [
            (&b"X-Forwarded-Prefix"[..], true),
            (b"X_FORWARDED_TLS_CLIENT_CERT", true),
            (b"x-forwarded-for", true),
            (b"x-forwarded", false),
            (b"x-forwarded-fox", false),
            (b"y-forwarded-for", false),
            (b"x", false),
        ] {
            assert_eq!(is_forwarding(name), managed, "{}", String::from_utf8_lossy(name));
        }
    }

    #[test]
    fn a_client_cannot_send_atriums_own_headers() {
        let mut h = HeaderMap::new();
        h.insert("atrium-uplink-client", HeaderValue::from_static("203.0.113.66:1 https"));
        h.insert("Atrium-Other", HeaderValue::from_static("x"));
        h.insert("atrium", HeaderValue::from_static("not ours: no dash"));
        h.insert("x-atrium-keep", HeaderValue::from_static("1"));
        let server = HeaderValue::from_static("gw");
        set_forwarded(&mut h, &ClientSide { ip: None, proto: "http", host: None, server: &server });
        assert!(h.get("atrium-uplink-client").is_none() && h.get("atrium-other").is_none());
        assert_eq!(h.get("atrium").unwrap(), "not ours: no dash");
        assert_eq!(h.get("x-atrium-keep").unwrap(), "1");
        assert!(is_internal(b"ATRIUM-UPLINK-CLIENT") && !is_internal(b"atrium-") && !is_internal(b"atriumx"));
    }

    #[test]
    fn x_forwarded_for_follows_a_middlewares_value_or_is_left_out() {
        let ip = HeaderValue::from_static("10.0.0.9");
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.7"));
        add_forwarded_for(&mut h, Some(&ip), false);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "203.0.113.7, 10.0.0.9");
        let mut h = HeaderMap::new();
        add_forwarded_for(&mut h, Some(&ip), true);
        assert!(h.get("x-forwarded-for").is_none(), "X-Forwarded-For: \"\" stops the proxy adding one");
    }

    /// What the header-map path sends for a bodiless request with no middleware (the
    /// general lane's steps, in order), as sorted `name: value` lines.
    fn via_map(headers: &[(&str, &str)], c: &ClientSide<'_>, pass_host: bool, authority: &str) -> Vec<String> {
        let mut h = HeaderMap::new();
        for (n, v) in headers {
            h.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        set_forwarded(&mut h, c);
        strip_hop_by_hop(&mut h, None);
        add_forwarded_for(&mut h, c.ip, false);
        if !pass_host || !h.contains_key(header::HOST) {
            h.insert(header::HOST, HeaderValue::from_str(authority).unwrap());
        }
        let mut lines: Vec<String> =
            h.iter().map(|(n, v)| format!("{}: {}", n.as_str(), v.to_str().unwrap())).collect();
        lines.sort();
        lines
    }

    /// What the direct lane writes for the same request, parsed back the same way.
    fn via_bytes(
        headers: &[(&str, &str)],
        c: &RawClient<'_>,
        pass_host: bool,
        authority: &str,
    ) -> (String, Vec<String>) {
        let mut out = Vec::new();
        let raw = headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes()));
        encode_request_raw(
            &mut out,
            &http::Method::GET,
            b"/a?b",
            raw,
            c,
            pass_host,
            authority.as_bytes(),
            &HeadEdits::default(),
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("\r\n\r\n"), "{text}");
        let mut lines = text.trim_end().split("\r\n");
        let request_line = lines.next().unwrap().to_string();
        let mut lines: Vec<String> = lines
            .map(|l| {
                let (n, v) = l.split_once(": ").unwrap();
                format!("{}: {v}", n.to_ascii_lowercase())
            })
            .collect();
        lines.sort();
        (request_line, lines)
    }

    #[test]
    fn the_direct_lane_writes_what_the_header_map_path_sends() {
        let (ip, server) = (HeaderValue::from_static("10.0.0.9"), HeaderValue::from_static("gw-1"));
        let cases: &[&[(&str, &str)]] = &[
            &[("Host", "api.test")],
            &[("Host", "api.test:8443"), ("Accept", "*/*"), ("accept", "text/html")],
            &[],
            &[("Host", "")],
            &[
                ("Host", "a.test"),
                ("X-Forwarded-For", "6.6.6.6"),
                ("X-Real-IP", "6.6.6.6"),
                ("x-forwarded-proto", "gopher"),
            ],
            &[("Host", "a.test"), ("X-Forwarded-Host", "evil"), ("X-Forwarded-Port", "1"), ("X-Forwarded-Server", "x")],
            &[
                ("Host", "a.test"),
                ("Connection", "keep-alive, X-Drop, X-Forwarded-Proto"),
                ("X-Drop", "1"),
                ("X-Keep", "2"),
            ],
            &[
                ("Host", "a.test"),
                ("Connection", "close"),
                ("Keep-Alive", "timeout=5"),
                ("Proxy-Authorization", "Basic x"),
            ],
            &[
                ("Host", "a.test"),
                ("Proxy-Connection", "keep-alive"),
                ("Trailer", "x"),
                ("connection", "x-one"),
                ("Connection", "X-Two"),
                ("x-one", "1"),
                ("x-two", "2"),
            ],
            &[("Host", "[::1]:81"), ("Cookie", "a=1"), ("Cookie", "b=2")],
            &[("Host", "a.test"), ("Atrium-Uplink-Client", "203.0.113.66:1 https"), ("atrium-anything", "x")],
        ];
        for headers in cases {
            for (proto, pass_host) in [("http", true), ("https", true), ("http", false)] {
                for with_ip in [true, false] {
                    let host = headers
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case("host"))
                        .map(|(_, v)| HeaderValue::from_str(v).unwrap());
                    let ip_v = with_ip.then_some(&ip);
                    let c = ClientSide { ip: ip_v, proto, host, server: &server };
                    let raw = RawClient { ip: ip_v.map(HeaderValue::as_bytes), proto, server: server.as_bytes() };
                    let want = via_map(headers, &c, pass_host, "backend:8080");
                    let (line, got) = via_bytes(headers, &raw, pass_host, "backend:8080");
                    assert_eq!(line, "GET /a?b HTTP/1.1");
                    assert_eq!(got, want, "{headers:?} proto {proto} pass_host {pass_host} ip {with_ip}");
                }
            }
        }
    }

    #[test]
    fn the_direct_lane_writes_what_the_header_map_path_sends_for_generated_heads() {
        const NAMES: &[&str] = &[
            "host",
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "upgrade",
            "proxy-authorization",
            "proxy-authenticate",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-port",
            "x-forwarded-proto",
            "x-forwarded-server",
            "x-real-ip",
            "accept",
            "cookie",
            "x-a",
            "x-b",
            "x-drop",
        ];
        const TOKENS: &[&str] =
            &["keep-alive", "close", "upgrade", "x-a", "x-drop", "x-forwarded-for", "x-real-ip", "te", "cookie", ""];
        let (ip, server) = (HeaderValue::from_static("10.0.0.9"), HeaderValue::from_static("gw-1"));
        let mut rng = crate::test_rng::Lcg(7);
        for case in 0..3000 {
            let n = rng.next() % 9;
            let headers: Vec<(String, String)> = (0..n)
                .map(|_| {
                    let name = rng.pick(NAMES);
                    let value = match name {
                        "connection" => rng.tokens(TOKENS),
                        "te" => rng.tokens(&["trailers", "gzip", "deflate"]),
                        "host" => rng.pick(&["a.test", "a.test:8080", "[::1]:81", "", "b.test."]).to_string(),
                        _ => rng.pick(&["v1", "v2", "a, b"]).to_string(),
                    };
                    (rng.cased(name), value)
                })
                .collect();
            let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            let proto = rng.pick(&["http", "https"]);
            let pass_host = !rng.next().is_multiple_of(3);
            let ip_v = (!rng.next().is_multiple_of(8)).then_some(&ip);
            let host = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("host"))
                .map(|(_, v)| HeaderValue::from_str(v).unwrap());
            let c = ClientSide { ip: ip_v, proto, host, server: &server };
            let raw = RawClient { ip: ip_v.map(HeaderValue::as_bytes), proto, server: server.as_bytes() };
            let want = via_map(&headers, &c, pass_host, "backend:8080");
            let (_, got) = via_bytes(&headers, &raw, pass_host, "backend:8080");
            assert_eq!(got, want, "case {case}: {headers:?} proto {proto} pass_host {pass_host} ip {}", ip_v.is_some());
        }
    }

    #[test]
    fn a_client_cannot_have_the_forwarding_headers_removed_through_connection() {
        let (ip, server) = (HeaderValue::from_static("10.0.0.9"), HeaderValue::from_static("gw-1"));
        let c = ClientSide { ip: Some(&ip), proto: "http", host: None, server: &server };
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("X-Forwarded-Proto, x-real-ip, X-Other"));
        h.insert("x-other", HeaderValue::from_static("1"));
        set_forwarded(&mut h, &c);
        strip_hop_by_hop(&mut h, None);
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
        assert_eq!(h.get("x-real-ip").unwrap(), "10.0.0.9");
        assert!(h.get("x-other").is_none(), "other named headers still go");
    }
}
