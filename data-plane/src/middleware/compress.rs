//! The `compress` middleware: gzip responses, streamed (each body frame is compressed as it
//! passes; nothing waits for the whole response).
//!
//! Traefik also offers `br` and `zstd`; atrium speaks gzip only, so a configuration that
//! lists encodings without `gzip` is refused rather than silently doing something else.

use crate::middleware::MiddlewareError;
use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use http_body::Frame;

use super::config::Compress;
use crate::body::{Body, BoxError};

/// A compiled compress middleware.
#[derive(Debug, Clone)]
pub struct CompressRt {
    excluded: Vec<String>,
    included: Vec<String>,
    min_bytes: u64,
}

fn media_type(v: &str) -> String {
    v.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

impl CompressRt {
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
        Ok(CompressRt {
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

    /// Rewrites the headers and wraps the body.
    pub fn wrap(&self, h: &mut HeaderMap, body: Body) -> Body {
        h.remove(header::CONTENT_LENGTH);
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        let vary = h.get(header::VARY).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        if !vary.split(',').any(|v| v.trim().eq_ignore_ascii_case("accept-encoding")) {
            let v = if vary.is_empty() { "Accept-Encoding".to_string() } else { format!("{vary}, Accept-Encoding") };
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.insert(header::VARY, v);
            }
        }
        Body::new(GzipBody { inner: body, enc: Some(GzEncoder::new(Vec::new(), Compression::fast())), trailers: None })
    }
}

/// A body compressed frame by frame.
struct GzipBody {
    inner: Body,
    enc: Option<GzEncoder<Vec<u8>>>,
    trailers: Option<HeaderMap>,
}

impl http_body::Body for GzipBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(enc) = this.enc.as_mut() else {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            };
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        // Sync-flush each frame so a streamed response keeps streaming.
                        if let Err(e) = enc.write_all(&data).and_then(|_| enc.flush()) {
                            return Poll::Ready(Some(Err(Box::new(e))));
                        }
                        let out = std::mem::take(enc.get_mut());
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                        }
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            this.trailers = Some(t);
                        }
                    }
                },
                Poll::Ready(None) => {
                    let Some(enc) = this.enc.take() else { continue };
                    return match enc.finish() {
                        Ok(out) => Poll::Ready(Some(Ok(Frame::data(Bytes::from(out))))),
                        Err(e) => Poll::Ready(Some(Err(Box::new(e)))),
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::io::Read;

    fn rt() -> CompressRt {
        CompressRt::new(&Compress {
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
        let only_json = CompressRt::new(&Compress {
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
            CompressRt::new(&Compress {
                encodings: vec!["zstd".into()],
                default_encoding: None,
                excluded_content_types: vec![],
                included_content_types: vec![],
                min_response_body_bytes: None
            })
            .is_err()
        );
    }

    #[tokio::test]
    async fn streams_valid_gzip_and_fixes_headers() {
        let c = rt();
        let mut h = headers(&[("content-length", "20000"), ("vary", "Origin")]);
        let text = "hello compressed world ".repeat(1000);
        let body = c.wrap(&mut h, crate::body::full(text.clone()));
        assert_eq!(h.get("content-encoding").unwrap(), "gzip");
        assert!(h.get("content-length").is_none());
        assert_eq!(h.get("vary").unwrap(), "Origin, Accept-Encoding");
        let bytes = body.collect().await.unwrap().to_bytes();
        assert!(bytes.len() < text.len() / 10);
        let mut out = String::new();
        flate2::read::GzDecoder::new(&bytes[..]).read_to_string(&mut out).unwrap();
        assert_eq!(out, text);
    }
}
