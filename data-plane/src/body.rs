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

/// `b`, keeping `held` alive until the body is finished or dropped (a slot, a guard).
pub fn holding<T: Send + Sync + 'static>(b: Body, held: T) -> Body {
    b.map_frame(move |f| {
        let _held = &held;
        f
    })
    .boxed()
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

/// Why [`collect_limited`] or [`spool`] failed.
#[derive(Debug)]
pub enum CollectError {
    /// Over the limit.
    TooLarge,
    /// The body itself failed.
    Body(BoxError),
    /// The spool file could not be written or read back.
    Spool(std::io::Error),
}

/// Reads a whole body (trailers dropped), failing past `limit` bytes (0: no limit). The
/// first `in_memory` bytes stay in memory; a larger body goes to an unlinked temporary file
/// (mode 0600), which is gone once the returned body is dropped. The returned body has an
/// exact size, so it is forwarded with `Content-Length`.
pub async fn spool(mut b: Body, limit: u64, in_memory: u64) -> Result<Body, CollectError> {
    use tokio::io::{AsyncSeekExt, AsyncWriteExt};
    let mut mem = bytes::BytesMut::new();
    let mut file: Option<tokio::fs::File> = None;
    let mut total = 0u64;
    while let Some(frame) = b.frame().await {
        let frame = frame.map_err(CollectError::Body)?;
        let Ok(data) = frame.into_data() else { continue };
        total += data.len() as u64;
        if limit > 0 && total > limit {
            return Err(CollectError::TooLarge);
        }
        match &mut file {
            Some(f) => f.write_all(&data).await.map_err(CollectError::Spool)?,
            None if total > in_memory => {
                let mut f = spool_file().await.map_err(CollectError::Spool)?;
                f.write_all(&mem).await.map_err(CollectError::Spool)?;
                f.write_all(&data).await.map_err(CollectError::Spool)?;
                mem = bytes::BytesMut::new();
                file = Some(f);
            }
            None => mem.extend_from_slice(&data),
        }
    }
    match file {
        None => Ok(full(mem.freeze())),
        Some(mut f) => {
            f.flush().await.map_err(CollectError::Spool)?;
            f.seek(std::io::SeekFrom::Start(0)).await.map_err(CollectError::Spool)?;
            Ok(FileBody { file: f, remaining: total }.boxed())
        }
    }
}

/// A new temporary file, already unlinked: only this process's handle reaches it.
async fn spool_file() -> std::io::Result<tokio::fs::File> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("atrium-spool-{}-{n}", std::process::id()));
    let mut opts = tokio::fs::OpenOptions::new();
    opts.read(true).write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let f = opts.open(&path).await?;
    tokio::fs::remove_file(&path).await?;
    Ok(f)
}

/// A spooled body read back from its file in 64 KiB frames.
struct FileBody {
    file: tokio::fs::File,
    remaining: u64,
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let mut buf = vec![0u8; this.remaining.min(64 * 1024) as usize];
        let mut rb = tokio::io::ReadBuf::new(&mut buf);
        match tokio::io::AsyncRead::poll_read(std::pin::Pin::new(&mut this.file), cx, &mut rb) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(Ok(())) => {
                let got = rb.filled().len();
                if got == 0 {
                    return Poll::Ready(Some(Err("the spooled body ended early".into())));
                }
                buf.truncate(got);
                this.remaining -= got as u64;
                Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from(buf)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

/// The response for an answer the routing core gave (see [`atrium_routing::Answer`]).
pub fn answer(a: atrium_routing::Answer) -> http::Response<Body> {
    let (status, headers, msg) = a.into_parts();
    let mut r = match msg {
        Some(t) => text(status, &t),
        None => {
            let mut r = http::Response::new(empty());
            *r.status_mut() = status;
            r
        }
    };
    r.headers_mut().extend(headers);
    r
}

/// A plain-text response with `status`.
pub fn text(status: http::StatusCode, msg: &str) -> http::Response<Body> {
    let mut r = http::Response::new(full(format!("{msg}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(n: usize, size: usize) -> Body {
        let frames: Vec<Result<http_body::Frame<Bytes>, BoxError>> =
            (0..n).map(|i| Ok(http_body::Frame::data(Bytes::from(vec![b'a' + (i % 26) as u8; size])))).collect();
        http_body_util::StreamBody::new(tokio_stream::iter(frames)).boxed()
    }

    #[tokio::test]
    async fn small_bodies_stay_in_memory_and_large_ones_go_to_disk_intact() {
        let small = spool(chunks(4, 10), 0, 100).await.unwrap();
        assert_eq!(http_body::Body::size_hint(&small).exact(), Some(40));
        assert_eq!(small.collect().await.unwrap().to_bytes().len(), 40);

        let spooled = spool(chunks(50, 10_000), 0, 1024).await.unwrap();
        assert_eq!(http_body::Body::size_hint(&spooled).exact(), Some(500_000));
        let back = spooled.collect().await.unwrap().to_bytes();
        let want: Vec<u8> = (0..50).flat_map(|i| vec![b'a' + (i % 26) as u8; 10_000]).collect();
        assert!(back == want, "the body read back from disk is byte for byte what came in");
        let leftovers = std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(&format!("atrium-spool-{}-", std::process::id())))
            .count();
        assert_eq!(leftovers, 0, "spool files are unlinked at once");
    }

    #[tokio::test]
    async fn the_limit_applies_whether_in_memory_or_on_disk() {
        assert!(matches!(spool(chunks(3, 10), 25, 100).await, Err(CollectError::TooLarge)));
        assert!(matches!(spool(chunks(30, 1000), 25_000, 1024).await, Err(CollectError::TooLarge)));
        assert!(spool(chunks(25, 1000), 25_000, 1024).await.is_ok(), "exactly the limit passes");
    }
}
