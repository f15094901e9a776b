//! The `compress` middleware's decisions: whether a response gets gzip, and the headers a
//! compressed response carries. The streaming encoder lives with the data plane's bodies.
//!
//! Traefik also offers `br` and `zstd`; atrium speaks gzip only, so a configuration that
//! lists encodings without `gzip` is refused rather than silently doing something else.

use crate::middleware::MiddlewareError;

use http::{HeaderMap, HeaderValue, Method, StatusCode, header};

use super::config::Compress;
/// A compiled compress middleware.
#[derive(Debug, Clone)]
pub struct Compression {
    excluded: Vec<String>,
    included: Vec<String>,
    min_bytes: u64,
}

fn media_type(v: &str) -> String {
    v.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

impl Compression {
    /// Compiles the configuration.
    pub fn new(c: &Compress) -> Result<Self, MiddlewareError> {
        if !c.encodings.is_empty() && !c.encodings.iter().any(|e| e == "gzip") {
            return Err(MiddlewareError::from(format!(
                "compress: encodings {:?} are not supported yet (atrium compresses with gzip)",
                c.encodings
            )));
        }
        if c.default_encoding.as_deref().is_some_and(|d| d != "gzip") {
            return Err("compress: only gzip is supported yet as defaultEncoding".into());
        }
        if !c.excluded_content_types.is_empty() && !c.included_content_types.is_empty() {
            return Err("compress: excludedContentTypes and includedContentTypes cannot both be set".into());
        }
        let min_bytes = c.min_response_body_bytes.unwrap_or(1024);
        if min_bytes < 0 {
            return Err("compress: minResponseBodyBytes must not be negative".into());
        }
        let mut excluded: Vec<String> = c.excluded_content_types.iter().map(|t| media_type(t)).collect();
        if excluded.is_empty() && c.included_content_types.is_empty() {
            // Streams that must not be buffered by a compressor.
            excluded = vec!["text/event-stream".into(), "application/grpc".into()];
        }
        Ok(Compression {
            excluded,
            included: c.included_content_types.iter().map(|t| media_type(t)).collect(),
            min_bytes: min_bytes as u64,
        })
    }

    /// Whether this response to this request gets compressed.
    pub fn applies(
        &self,
        method: &Method,
        accept_encoding: Option<&HeaderValue>,
        status: StatusCode,
        h: &HeaderMap,
    ) -> bool {
        let accepts = accept_encoding.and_then(|v| v.to_str().ok()).is_some_and(|v| {
            v.split(',').any(|e| {
                let mut parts = e.split(';');
                let name = parts.next().unwrap_or("").trim();
                let q_zero = parts.any(|p| p.trim().replace(' ', "") == "q=0");
                (name.eq_ignore_ascii_case("gzip") || name == "*") && !q_zero
            })
        });
        if !accepts
            || method == Method::HEAD
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return false;
        }
        if h.contains_key(header::CONTENT_ENCODING) || h.contains_key(header::CONTENT_RANGE) {
            return false;
        }
        let ct = h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(media_type).unwrap_or_default();
        if !self.included.is_empty() && !self.included.contains(&ct) {
            return false;
        }
        if self.excluded.contains(&ct) {
            return false;
        }
        let len = h.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        len.is_none_or(|n| n >= self.min_bytes)
    }

    /// Rewrites the headers of a response that is about to be compressed: no length (the
    /// encoder changes it), `Content-Encoding: gzip`, and `Accept-Encoding` in `Vary`.
    pub fn compressed_headers(&self, h: &mut HeaderMap) {
        h.remove(header::CONTENT_LENGTH);
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        let vary = h.get(header::VARY).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        if !vary.split(',').any(|v| v.trim().eq_ignore_ascii_case("accept-encoding")) {
            let v = if vary.is_empty() { "Accept-Encoding".to_string() } else { format!("{vary}, Accept-Encoding") };
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.insert(header::VARY, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> Compression {
        Compression::new(&Compress {
            default_encoding: None,
            encodings: vec![],
            excluded_content_types: vec![],
            included_content_types: vec![],
            min_response_body_bytes: None,
        })
        .unwrap()
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn eligibility() {
        let c = rt();
        let gz = HeaderValue::from_static("br;q=1.0, gzip;q=0.8");
        assert!(c.applies(
            &Method::GET,
            Some(&gz),
            StatusCode::OK,
            &headers(&[("content-type", "text/html"), ("content-length", "5000")])
        ));
        assert!(
            !c.applies(&Method::GET, Some(&gz), StatusCode::OK, &headers(&[("content-length", "100")])),
            "under minResponseBodyBytes"
        );
        assert!(!c.applies(&Method::GET, None, StatusCode::OK, &headers(&[])));
        assert!(!c.applies(&Method::GET, Some(&HeaderValue::from_static("gzip;q=0")), StatusCode::OK, &headers(&[])));
        assert!(!c.applies(&Method::GET, Some(&gz), StatusCode::OK, &headers(&[("content-encoding", "br")])));
        assert!(!c.applies(&Method::HEAD, Some(&gz), StatusCode::OK, &headers(&[])));
        assert!(!c.applies(
            &Method::GET,
            Some(&gz),
            StatusCode::OK,
            &headers(&[("content-type", "text/event-stream")])
        ));
        let only_json = Compression::new(&Compress {
            included_content_types: vec!["application/json".into()],
            ..Compress {
                default_encoding: None,
                encodings: vec![],
                excluded_content_types: vec![],
                included_content_types: vec![],
                min_response_body_bytes: Some(0),
            }
        })
        .unwrap();
        assert!(only_json.applies(
            &Method::GET,
            Some(&gz),
            StatusCode::OK,
            &headers(&[("content-type", "application/json; charset=utf-8")])
        ));
        assert!(!only_json.applies(
            &Method::GET,
            Some(&gz),
            StatusCode::OK,
            &headers(&[("content-type", "text/html")])
        ));
        assert!(
            Compression::new(&Compress {
                encodings: vec!["zstd".into()],
                default_encoding: None,
                excluded_content_types: vec![],
                included_content_types: vec![],
                min_response_body_bytes: None
            })
            .is_err()
        );
    }

    #[test]
    fn compressed_headers_drop_the_length_and_vary_on_accept_encoding() {
        let mut h = headers(&[("content-length", "20000"), ("vary", "Origin")]);
        rt().compressed_headers(&mut h);
        assert_eq!(h.get("content-encoding").unwrap(), "gzip");
        assert!(h.get("content-length").is_none());
        assert_eq!(h.get("vary").unwrap(), "Origin, Accept-Encoding");
    }
}
