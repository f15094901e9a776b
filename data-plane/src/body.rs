//! The body type every layer of the proxy speaks: a boxed, streaming body, so request and
//! response bodies flow through without being buffered unless a middleware asks for it.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// Any error a body can fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streaming body.
pub type Body = BoxBody<Bytes, BoxError>;

/// An empty body.
pub fn empty() -> Body {
    Empty::<Bytes>::new().map_err(|never| match never {}).boxed()
}

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// Boxes any body whose error converts into [`BoxError`].
pub fn boxed<B>(b: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    b.map_err(Into::into).boxed()
}

/// A body received by hyper (a request from a client, a response from an upstream).
///
/// A concrete function rather than the generic [`boxed`]: inside async fns the generic
/// `Into<BoxError>` bound trips a higher-ranked lifetime limitation of the compiler.
pub fn incoming(b: hyper::body::Incoming) -> Body {
    b.map_err(|e| -> BoxError { Box::new(e) }).boxed()
}

/// Reads a whole body, failing once it passes `limit` bytes. Trailers are dropped.
pub async fn collect_limited(mut b: Body, limit: usize) -> Result<Bytes, CollectError> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = b.frame().await {
        let frame = frame.map_err(CollectError::Body)?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(CollectError::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Why [`collect_limited`] failed.
#[derive(Debug)]
pub enum CollectError {
    /// Over the limit.
    TooLarge,
    /// The body itself failed.
    Body(BoxError),
}

/// A plain-text response with `status`.
pub fn text(status: http::StatusCode, msg: &str) -> http::Response<Body> {
    let mut r = http::Response::new(full(format!("{msg}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}
