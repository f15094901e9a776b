//! Request and response headers across the proxy hop, as Traefik sets them.
//!
//! Incoming `X-Forwarded-*` and `X-Real-Ip` come from an untrusted client, so they are
//! replaced (Traefik's default with no trusted IPs). Hop-by-hop headers are removed in both
//! directions, except the `Upgrade` handshake of a protocol switch.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

// Header names are built once: removing by `&str` would parse and hash each name on every
// request, and these functions run twice per request on the hot path. The lists are
// statics, not constants: a constant array of names (which have a destructor) would be
// built and dropped at every use.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_SERVER: HeaderName = HeaderName::from_static("x-forwarded-server");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static FORWARDED: [HeaderName; 6] =
    [X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PORT, X_FORWARDED_PROTO, X_FORWARDED_SERVER, X_REAL_IP];

/// Removes the headers of `names` that are present. A request carries a handful of
/// headers, so one pass over them beats hashing every listed name into the map.
fn remove_listed(h: &mut HeaderMap, names: &[HeaderName]) {
    let mut present: [Option<&HeaderName>; 9] = [None; 9];
    let mut n = 0;
    for k in h.keys() {
        if let Some(listed) = names.iter().find(|l| *l == k) {
            if n < present.len() {
                present[n] = Some(listed);
                n += 1;
            }
        }
    }
    for name in present.into_iter().flatten() {
        h.remove(name);
    }
}

/// Whether the request asks for a protocol switch (WebSocket); returns the protocol.
pub fn upgrade_protocol(h: &HeaderMap) -> Option<HeaderValue> {
    let conn_upgrade = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")));
    if conn_upgrade { h.get(header::UPGRADE).cloned() } else { None }
}

/// Removes hop-by-hop headers, and those the `Connection` header names. `keep_upgrade`
/// puts back `Connection: upgrade` and `Upgrade` for a protocol switch.
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: Option<HeaderValue>) {
    if h.contains_key(header::CONNECTION) {
        // `keep-alive`, `close` and `upgrade` are the usual tokens; only others name a
        // header to remove (`from_bytes` lower-cases).
        let mut named: Vec<HeaderName> = Vec::new();
        for v in h.get_all(header::CONNECTION) {
            for token in v.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                let usual = [&b"keep-alive"[..], b"close", b"upgrade"].iter().any(|u| token.eq_ignore_ascii_case(u));
                if !usual && !token.is_empty() {
                    if let Ok(n) = HeaderName::from_bytes(token) {
                        named.push(n);
                    }
                }
            }
        }
        for n in named {
            h.remove(n);
        }
    }
    // `TE: trailers` is the one TE value that may cross (gRPC needs it).
    let te_trailers = h.contains_key(header::TE)
        && h.get_all(header::TE)
            .iter()
            .any(|v| v.to_str().is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers"))));
    remove_listed(h, &HOP_BY_HOP);
    if te_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(proto) = keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, proto);
    }
}

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
    /// `X-Forwarded-For: ""` was configured: do not add one.
    pub drop_xff: bool,
}

/// Traefik's `X-Forwarded-Port`: the port of the Host the client asked for, else the
/// scheme's default (so a request that crossed an uplink keeps the parent's port).
fn forwarded_port(host: Option<&HeaderValue>, proto: &str) -> HeaderValue {
    let explicit = host.and_then(|h| h.to_str().ok()).and_then(|h| {
        let after_v6 = h.rfind(']').map_or(h, |i| &h[i + 1..]);
        after_v6.rsplit_once(':').map(|(_, p)| p).filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    });
    match explicit {
        Some(p) => HeaderValue::from_str(p).unwrap_or(HeaderValue::from_static("80")),
        None if matches!(proto, "https" | "wss") => HeaderValue::from_static("443"),
        None => HeaderValue::from_static("80"),
    }
}

/// Sets the `X-Forwarded-*` and `X-Real-Ip` headers of a request going upstream.
pub fn set_forwarded(h: &mut HeaderMap, c: &ClientSide<'_>) {
    remove_listed(h, &FORWARDED);
    if let Some(ip) = c.ip {
        if !c.drop_xff {
            h.insert(X_FORWARDED_FOR, ip.clone());
        }
        h.insert(X_REAL_IP, ip.clone());
    }
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(c.proto));
    if let Some(host) = &c.host {
        h.insert(X_FORWARDED_HOST, host.clone());
    }
    h.insert(X_FORWARDED_PORT, forwarded_port(c.host.as_ref(), c.proto));
    h.insert(X_FORWARDED_SERVER, c.server.clone());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("keep-alive, X-Secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, None);
        assert!(h.get("x-secret").is_none() && h.get("keep-alive").is_none() && h.get("connection").is_none());
        assert!(h.get("transfer-encoding").is_none());
        assert_eq!(h.get("te").unwrap(), "trailers");
        assert_eq!(h.get("x-keep").unwrap(), "1");
    }

    #[test]
    fn upgrades_keep_their_handshake() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("Upgrade"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        let p = upgrade_protocol(&h);
        assert_eq!(p.as_ref().unwrap(), "websocket");
        strip_hop_by_hop(&mut h, p);
        assert_eq!(h.get("connection").unwrap(), "upgrade");
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
    }

    #[test]
    fn forwarded_headers_replace_what_the_client_sent() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert("x-real-ip", HeaderValue::from_static("6.6.6.6"));
        let (ip, server) = (HeaderValue::from_static("10.0.0.9"), HeaderValue::from_static("gw-1"));
        let c = ClientSide {
            ip: Some(&ip),
            proto: "https",
            host: Some(HeaderValue::from_static("api.test:8443")),
            server: &server,
            drop_xff: false,
        };
        set_forwarded(&mut h, &c);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "10.0.0.9");
        assert_eq!(h.get("x-real-ip").unwrap(), "10.0.0.9");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "https");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "api.test:8443");
        assert_eq!(h.get("x-forwarded-port").unwrap(), "8443");
        assert_eq!(h.get("x-forwarded-server").unwrap(), "gw-1");
        let mut h = HeaderMap::new();
        set_forwarded(&mut h, &ClientSide { drop_xff: true, ..c.clone() });
        assert!(h.get("x-forwarded-for").is_none());
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
}
