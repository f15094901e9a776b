//! Bounded HTTP(S) GET for documents atrium fetches itself (JWKS, OpenAPI specs): a size
//! limit, a time limit for the whole exchange, a bounded number of redirects, and TLS with
//! the public roots or a given CA bundle. Never on a request's path unless the caller
//! bounds the wait.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{StatusCode, Uri, header};
use http_body_util::{BodyExt, Limited};
use hyper_util::rt::TokioIo;

/// Why a document could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL is not `http://` or `https://` with a host.
    #[error("{0:?} is not an http or https URL")]
    Url(String),
    /// No answer in time.
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    /// Connecting, TLS or HTTP failed.
    #[error("{0}")]
    Io(String),
    /// An answer other than 200.
    #[error("HTTP {0}")]
    Status(StatusCode),
    /// Larger than allowed.
    #[error("larger than {0} bytes")]
    TooLarge(usize),
    /// More redirects than allowed.
    #[error("more than {0} redirects")]
    Redirects(usize),
    /// An https URL redirected to another scheme.
    #[error("redirect from https to {0:?} refused")]
    Downgrade(String),
    /// The CA bundle does not parse.
    #[error("CA bundle: {0}")]
    Ca(String),
}

/// How documents are fetched.
#[derive(Clone)]
pub struct Fetcher {
    tls: Arc<rustls::ClientConfig>,
    /// For the whole exchange, redirects included.
    pub timeout: Duration,
    /// Largest body.
    pub max_bytes: usize,
    /// Redirects followed.
    pub max_redirects: usize,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher").field("timeout", &self.timeout).field("max_bytes", &self.max_bytes).finish()
    }
}

impl Fetcher {
    /// A fetcher that trusts `ca_pem` (a PEM bundle) or, when empty, the public roots.
    pub fn new(ca_pem: &str, timeout: Duration, max_bytes: usize) -> Result<Fetcher, FetchError> {
        let roots = if ca_pem.trim().is_empty() {
            rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() }
        } else {
            crate::trust::root_store(ca_pem.as_bytes()).map_err(|e| FetchError::Ca(e.to_string()))?
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| FetchError::Ca(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Fetcher { tls: Arc::new(tls), timeout, max_bytes, max_redirects: 5 })
    }

    /// GETs `url`, following redirects; the body of the 200 answer.
    pub async fn get(&self, url: &str) -> Result<Bytes, FetchError> {
        tokio::time::timeout(self.timeout, self.get_following(url))
            .await
            .unwrap_or(Err(FetchError::Timeout(self.timeout)))
    }

    async fn get_following(&self, url: &str) -> Result<Bytes, FetchError> {
        let mut uri: Uri = url.parse().map_err(|_| FetchError::Url(url.to_string()))?;
        for _ in 0..=self.max_redirects {
            match self.get_once(&uri).await? {
                Ok(body) => return Ok(body),
                Err(location) => uri = next_uri(&uri, &location)?,
            }
        }
        Err(FetchError::Redirects(self.max_redirects))
    }

    /// One exchange: the body, or where a redirect points.
    async fn get_once(&self, uri: &Uri) -> Result<Result<Bytes, String>, FetchError> {
        let req = http::Request::get(uri.clone())
            .header(header::ACCEPT, "application/json, application/yaml, */*")
            .body(Bytes::new())
            .map_err(|e| FetchError::Io(e.to_string()))?;
        let resp = self.exchange_once(req).await?;
        let status = resp.status();
        if status.is_redirection() {
            let loc = resp.headers().get(header::LOCATION).and_then(|v| v.to_str().ok());
            return Ok(Err(loc.ok_or(FetchError::Status(status))?.to_string()));
        }
        if status != StatusCode::OK {
            return Err(FetchError::Status(status));
        }
        Ok(Ok(resp.into_body()))
    }

    /// Sends `req` (its URI absolute) and reads the whole answer, whatever its status,
    /// within the time and size limits; no redirect is followed. For protocols that speak
    /// in statuses (an OAuth token endpoint answers 400 with a JSON error).
    pub async fn send(&self, req: http::Request<Bytes>) -> Result<http::Response<Bytes>, FetchError> {
        tokio::time::timeout(self.timeout, self.exchange_once(req))
            .await
            .unwrap_or(Err(FetchError::Timeout(self.timeout)))
    }

    async fn exchange_once(&self, req: http::Request<Bytes>) -> Result<http::Response<Bytes>, FetchError> {
        let uri = req.uri().clone();
        let bad = || FetchError::Url(uri.to_string());
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad()),
        };
        let host = uri.host().ok_or_else(bad)?.trim_start_matches('[').trim_end_matches(']').to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| FetchError::Io(format!("connecting to {host}:{port}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let authority = uri.authority().map_or(host.clone(), |a| a.to_string());
        let (mut parts, body) = req.into_parts();
        parts.uri = uri.path_and_query().map_or("/", |p| p.as_str()).parse().map_err(|_| bad())?;
        parts.headers.insert(header::HOST, authority.parse().map_err(|_| bad())?);
        parts.headers.entry(header::USER_AGENT).or_insert(http::HeaderValue::from_static("atrium"));
        let req = http::Request::from_parts(parts, http_body_util::Full::new(body));
        let resp = if https {
            let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|_| bad())?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| FetchError::Io(format!("TLS with {host}: {e}")))?;
            exchange(TokioIo::new(tls), req).await?
        } else {
            exchange(TokioIo::new(tcp), req).await?
        };
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, self.max_bytes).collect().await.map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                FetchError::TooLarge(self.max_bytes)
            } else {
                FetchError::Io(e.to_string())
            }
        })?;
        Ok(http::Response::from_parts(parts, body.to_bytes()))
    }
}

/// Where a redirect from `uri` to `location` goes. A relative location resolves against
/// `uri`; https never goes down to another scheme.
fn next_uri(uri: &Uri, location: &str) -> Result<Uri, FetchError> {
    let next: Uri = location.parse().map_err(|_| FetchError::Url(location.to_string()))?;
    if uri.scheme_str() == Some("https") && next.scheme_str().is_some_and(|s| s != "https") {
        return Err(FetchError::Downgrade(location.to_string()));
    }
    if next.scheme().is_some() {
        return Ok(next);
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = next.path_and_query().cloned();
    Uri::from_parts(parts).map_err(|_| FetchError::Url(location.to_string()))
}

async fn exchange<T>(
    io: TokioIo<T>,
    req: http::Request<http_body_util::Full<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, FetchError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(io).await.map_err(|e| FetchError::Io(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send.send_request(req).await.map_err(|e| FetchError::Io(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-shot HTTP server on loopback answering every connection with `answer`.
    async fn serve(answers: Vec<String>) -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            for a in answers {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(a.replace("{addr}", &addr.to_string()).as_bytes()).await;
            }
        });
        addr
    }

    fn ok(body: &str) -> String {
        format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len())
    }

    #[tokio::test]
    async fn follows_a_bounded_number_of_redirects_and_bounds_the_size() {
        let f = Fetcher::new("", Duration::from_secs(5), 16).unwrap();
        let moved =
            "HTTP/1.1 302 Found\r\nlocation: /next\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string();
        let addr = serve(vec![moved.clone(), ok("{\"keys\":[]}")]).await;
        assert_eq!(f.get(&format!("http://{addr}/start")).await.unwrap(), Bytes::from_static(b"{\"keys\":[]}"));

        let addr = serve(vec![moved.clone(); 7]).await;
        assert!(matches!(f.get(&format!("http://{addr}/")).await, Err(FetchError::Redirects(5))));

        let addr = serve(vec![ok(&"x".repeat(17))]).await;
        assert!(matches!(f.get(&format!("http://{addr}/")).await, Err(FetchError::TooLarge(16))));

        let addr = serve(vec!["HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".into()]).await;
        assert!(matches!(f.get(&format!("http://{addr}/")).await, Err(FetchError::Status(StatusCode::NOT_FOUND))));
        assert!(matches!(f.get("ftp://example.com/x").await, Err(FetchError::Url(_))));
    }

    #[test]
    fn redirects_resolve_relative_locations_and_never_leave_https() {
        let from: Uri = "https://idp.example/a/jwks?x=1".parse().unwrap();
        assert_eq!(next_uri(&from, "/b").unwrap().to_string(), "https://idp.example/b");
        assert_eq!(next_uri(&from, "https://other.example/c").unwrap().to_string(), "https://other.example/c");
        assert!(matches!(next_uri(&from, "http://idp.example/b"), Err(FetchError::Downgrade(_))));
        let plain: Uri = "http://spec.example/a".parse().unwrap();
        assert_eq!(next_uri(&plain, "https://spec.example/b").unwrap().to_string(), "https://spec.example/b");
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _keep = tokio::spawn(async move {
            let _conn = l.accept().await;
            tokio::time::sleep(Duration::from_secs(10)).await;
        });
        let f = Fetcher::new("", Duration::from_millis(200), 1024).unwrap();
        assert!(matches!(f.get(&format!("http://{addr}/")).await, Err(FetchError::Timeout(_))));
    }
}
