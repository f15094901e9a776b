//! gzip, streamed: each body frame is compressed as it passes, so nothing waits for the
//! whole response (the `compress` middleware decides when; see
//! `atrium_routing::middleware::compress`).

use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};

use atrium_routing::middleware::compress::Compression;
use bytes::Bytes;
use flate2::Compression as Level;
use flate2::write::GzEncoder;
use http::HeaderMap;
use http_body::Frame;

use crate::body::{Body, BoxError};

/// Sets the headers of a compressed response and wraps its body in a gzip encoder.
pub fn wrap(c: &Compression, h: &mut HeaderMap, body: Body) -> Body {
    c.compressed_headers(h);
    Body::new(GzipBody { inner: body, enc: Some(GzEncoder::new(Vec::new(), Level::fast())), trailers: None })
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
    use atrium_routing::middleware::config::Compress;
    use http::HeaderValue;
    use http_body_util::BodyExt;
    use std::io::Read;

    #[tokio::test]
    async fn streams_valid_gzip_and_fixes_headers() {
        let c = Compression::new(&Compress {
            default_encoding: None,
            encodings: vec![],
            excluded_content_types: vec![],
            included_content_types: vec![],
            min_response_body_bytes: None,
        })
        .unwrap();
        let mut h = HeaderMap::new();
        h.insert("content-length", HeaderValue::from_static("20000"));
        h.insert("vary", HeaderValue::from_static("Origin"));
        let text = "hello compressed world ".repeat(1000);
        let body = wrap(&c, &mut h, crate::body::full(text.clone()));
        assert_eq!(h.get("content-encoding").unwrap(), "gzip");
        assert!(h.get("content-length").is_none());
        let bytes = body.collect().await.unwrap().to_bytes();
        assert!(bytes.len() < text.len() / 10);
        let mut out = String::new();
        flate2::read::GzDecoder::new(&bytes[..]).read_to_string(&mut out).unwrap();
        assert_eq!(out, text);
    }
}
