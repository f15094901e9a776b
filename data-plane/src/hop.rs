//! Which headers stop at this hop: hop-by-hop headers (RFC 9110 7.6.1) and those a
//! `Connection` header names, in both directions, except the `Upgrade` handshake of a
//! protocol switch and `TE: trailers`; and the proxy's own forwarding headers, which a
//! client can neither set nor have removed. Used by the HTTP/1.1 codec on raw heads and by
//! the proxy on header maps.

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

pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) const X_FORWARDED_SERVER: HeaderName = HeaderName::from_static("x-forwarded-server");
pub(crate) const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Removes the headers of `names` that are present. A request carries a handful of
/// headers, so one pass over them beats hashing every listed name into the map.
pub(crate) fn remove_listed(h: &mut HeaderMap, names: &[HeaderName]) {
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
///
/// An upgrade to `h2c` is not one the proxy passes on: switched, the client would speak
/// HTTP/2 straight to the upstream, every later request on that connection out of reach
/// of routing and middlewares ("h2c smuggling"). Such a request is sent as an ordinary
/// one, its `Upgrade` and `HTTP2-Settings` removed as hop-by-hop headers.
pub fn upgrade_protocol(h: &HeaderMap) -> Option<HeaderValue> {
    let conn_upgrade = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")));
    let proto = h.get(header::UPGRADE).filter(|_| conn_upgrade)?;
    let h2c = proto.as_bytes().split(|&b| b == b',').any(|p| p.trim_ascii().eq_ignore_ascii_case(b"h2c"));
    (!h2c).then(|| proto.clone())
}

/// Removes hop-by-hop headers, and those the `Connection` header names. `keep_upgrade`
/// puts back `Connection: upgrade` and `Upgrade` for a protocol switch.
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: Option<HeaderValue>) {
    // `TE: trailers` is the one TE value that may cross (gRPC needs it); as in Go's reverse
    // proxy, what the request said counts, even if its `Connection` names `TE`.
    let te_trailers = h.contains_key(header::TE)
        && h.get_all(header::TE)
            .iter()
            .any(|v| v.to_str().is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers"))));
    if h.contains_key(header::CONNECTION) {
        // `keep-alive`, `close` and `upgrade` are the usual tokens; only others name a
        // header to remove (`from_bytes` lower-cases).
        let mut named: Vec<HeaderName> = Vec::new();
        for v in h.get_all(header::CONNECTION) {
            for token in v.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                let usual = [&b"keep-alive"[..], b"close", b"upgrade"].iter().any(|u| token.eq_ignore_ascii_case(u));
                if !usual && !token.is_empty() {
                    // The forwarding headers are the proxy's own: a client cannot have them
                    // removed by naming them (as Traefik since CVE-2024-45410).
                    match HeaderName::from_bytes(token) {
                        Ok(n) if !is_forwarding(n.as_str().as_bytes()) => named.push(n),
                        _ => {}
                    }
                }
            }
        }
        for n in named {
            h.remove(n);
        }
    }
    remove_listed(h, &HOP_BY_HOP);
    if te_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(proto) = keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, proto);
    }
}

/// Whether a comma-separated header value lists `token` (case-insensitive).
pub(crate) fn lists(value: &[u8], token: &[u8]) -> bool {
    value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Whether a header is hop-by-hop (one of [`HOP_BY_HOP`]), for names as bytes.
pub(crate) fn is_hop_by_hop(name: &[u8]) -> bool {
    let candidates: &[&[u8]] = match name.len() {
        2 => &[b"te"],
        7 => &[b"trailer", b"upgrade"],
        10 => &[b"connection", b"keep-alive"],
        16 => &[b"proxy-connection"],
        17 => &[b"transfer-encoding"],
        18 => &[b"proxy-authenticate"],
        19 => &[b"proxy-authorization"],
        _ => return false,
    };
    candidates.iter().any(|c| name.eq_ignore_ascii_case(c))
}

/// Whether a header is one the proxy manages (as Traefik's forwarded-headers step does with
/// an untrusted client): the forwarding headers it sets (`X-Forwarded-For`, `-Host`,
/// `-Port`, `-Proto`, `-Server`, `X-Real-Ip`) and the other
/// `X-Forwarded-*` names backends trust (`-Prefix`, `-Uri`, `-Method`, `-Scheme`,
/// `-Tls-Client-Cert(-Info)`, `X-Scheme`), spelt with `_` as well as `-`. A client's are
/// removed before routing, and naming one in `Connection` does not remove the proxy's.
pub(crate) fn is_forwarding(name: &[u8]) -> bool {
    const MANAGED: [&[u8]; 13] = [
        b"x-real-ip",
        b"x-scheme",
        b"x-forwarded-for",
        b"x-forwarded-uri",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"x-forwarded-proto",
        b"x-forwarded-method",
        b"x-forwarded-prefix",
        b"x-forwarded-scheme",
        b"x-forwarded-server",
        b"x-forwarded-tls-client-cert",
        b"x-forwarded-tls-client-cert-info",
    ];
    if name.len() < 8 || !name[0].eq_ignore_ascii_case(&b'x') {
        return false;
    }
    MANAGED.iter().any(|m| {
        m.len() == name.len()
            && m.iter().zip(name).all(|(&m, &n)| m == n.to_ascii_lowercase() || (m == b'-' && n == b'_'))
    })
}

/// [`strip_hop_by_hop`]'s rules for headers as bytes (no protocol switch): which headers
/// go, and whether `TE: trailers` is to be put back.
pub(crate) struct HopRules<I> {
    headers: I,
    /// Whether a `Connection` header is there (it may name headers to remove).
    connection: bool,
    /// Whether a `TE` header lists `trailers`.
    pub(crate) te_trailers: bool,
}

impl<'a, I: Iterator<Item = (&'a [u8], &'a [u8])> + Clone> HopRules<I> {
    /// The rules for one head's headers.
    pub(crate) fn new(headers: I) -> Self {
        let (mut connection, mut te_trailers) = (false, false);
        for (n, v) in headers.clone() {
            connection |= n.eq_ignore_ascii_case(b"connection");
            te_trailers |= n.eq_ignore_ascii_case(b"te") && lists(v, b"trailers");
        }
        HopRules { headers, connection, te_trailers }
    }

    /// Whether header `name` goes at this hop.
    pub(crate) fn removes(&self, name: &[u8]) -> bool {
        if is_hop_by_hop(name) {
            return true;
        }
        // The forwarding headers are the proxy's own: naming them does not remove them.
        self.connection
            && !is_forwarding(name)
            && self.headers.clone().any(|(n, v)| {
                n.eq_ignore_ascii_case(b"connection")
                    && v.split(|&b| b == b',').map(<[u8]>::trim_ascii).any(|t| {
                        let usual =
                            [&b"keep-alive"[..], b"close", b"upgrade"].iter().any(|u| t.eq_ignore_ascii_case(u));
                        !usual && t.eq_ignore_ascii_case(name)
                    })
            })
    }
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
    fn an_upgrade_to_h2c_is_never_passed_on() {
        for offered in ["h2c", "H2C", "websocket, h2c"] {
            let mut h = HeaderMap::new();
            h.insert("connection", HeaderValue::from_static("Upgrade, HTTP2-Settings"));
            h.insert("upgrade", HeaderValue::from_str(offered).unwrap());
            h.insert("http2-settings", HeaderValue::from_static("AAMAAABkAAQCAAAAAAIAAAAA"));
            let p = upgrade_protocol(&h);
            assert_eq!(p, None, "{offered}");
            strip_hop_by_hop(&mut h, p);
            assert!(h.is_empty(), "{offered}: {h:?}");
        }
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
}
