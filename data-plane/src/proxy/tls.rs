//! TLS for entrypoints: certificates picked by SNI, a generated default certificate.
//!
//! Certificates come from `kubernetes.io/tls` Secrets named by routers' `tls.secretName`;
//! a router's `Host` values say which server names a certificate serves. Anything else gets
//! the default certificate, generated at start (as `tls: {}` asks for).

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The certificates in force.
#[derive(Debug)]
pub struct CertStore {
    default: DefaultCert,
    by_name: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
}

/// The certificate for names no router's certificate serves.
#[derive(Debug)]
enum DefaultCert {
    /// Generated for this process.
    Generated(Arc<CertifiedKey>),
    /// From files, re-read when they change (see [`crate::trust::FileIdentity`]).
    Files(Arc<crate::trust::FileIdentity>),
}

impl DefaultCert {
    fn current(&self) -> Arc<CertifiedKey> {
        match self {
            DefaultCert::Generated(k) => k.clone(),
            DefaultCert::Files(f) => f.current(),
        }
    }
}

/// Why a certificate cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The certificate and key cannot sign.
    #[error(transparent)]
    Key(#[from] crate::trust::KeyError),
    /// A certificate could not be generated.
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The default certificate's files.
    #[error(transparent)]
    Files(#[from] crate::trust::TrustError),
    /// The default certificate's key file.
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
}

use crate::trust::certified_key;

/// A self-signed certificate for `names`.
pub fn self_signed(names: &[&str]) -> Result<Arc<CertifiedKey>, CertError> {
    let ck = rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
    Ok(certified_key(ck.cert.pem().as_bytes(), ck.signing_key.serialize_pem().as_bytes())?)
}

/// The certificates a snapshot carries, by lower-case server name. One that does not parse
/// is logged and left out (the control plane checked it; this is the last line).
pub fn by_server_name(body: &atrium_proto::v1::SnapshotBody) -> HashMap<String, Arc<CertifiedKey>> {
    let mut out = HashMap::new();
    let mut keys = Vec::with_capacity(body.tls_certificates.len());
    for c in &body.tls_certificates {
        match certified_key(c.cert_pem.as_bytes(), c.key_pem.as_bytes()) {
            Ok(k) => {
                for name in &c.server_names {
                    out.insert(name.to_ascii_lowercase(), k.clone());
                }
                keys.push(k);
            }
            Err(e) => tracing::error!(secret = %c.secret, error = %e, "TLS certificate left out"),
        }
    }
    // A certificate also answers for its own names (subject alternative names), as in
    // Traefik, where a router needs no Host rule for its Secret to be served. Unlike
    // Traefik, a name some router's Host rule gives a certificate keeps that one: a Secret
    // named elsewhere (another namespace's) cannot take over a host that is claimed. Among
    // certificates carrying the same name, the first Secret in name order answers. A
    // wildcard needs two labels after `*.` (`*.example.com`, not `*.com`).
    for k in keys {
        for name in k.cert.first().map(crate::pki::names_of).unwrap_or_default() {
            let name = name.to_ascii_lowercase();
            if name.strip_prefix("*.").is_some_and(|rest| !rest.contains('.')) || name == "*" {
                continue;
            }
            out.entry(name).or_insert_with(|| k.clone());
        }
    }
    out
}

impl CertStore {
    /// A store with a generated default certificate.
    pub fn generated() -> Result<Arc<CertStore>, CertError> {
        let default = DefaultCert::Generated(self_signed(&["localhost", "atrium.local"])?);
        Ok(Arc::new(CertStore { default, by_name: ArcSwap::from_pointee(HashMap::new()) }))
    }

    /// A store whose default certificate persists in `dir` (`default-cert.pem`,
    /// `default-key.pem`, the key written with mode 0600): generated on first start, reused
    /// afterwards, so clients that pinned it keep working across restarts; replaced files
    /// are served without a restart.
    pub fn persistent(dir: &std::path::Path) -> Result<Arc<CertStore>, CertError> {
        let (cert, key) = (dir.join("default-cert.pem"), dir.join("default-key.pem"));
        if !(cert.is_file() && key.is_file()) {
            std::fs::create_dir_all(dir).map_err(|source| CertError::Io { path: dir.to_path_buf(), source })?;
            let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "atrium.local".to_string()])?;
            crate::pki::write_private(&key, ck.signing_key.serialize_pem().as_bytes())?;
            std::fs::write(&cert, ck.cert.pem()).map_err(|source| CertError::Io { path: cert.clone(), source })?;
        }
        Self::from_files(&cert, &key)
    }

    /// A store whose default certificate is a node certificate of a TLS directory
    /// (`<name>.pem`, `<name>-key.pem`, as `atrium certs issue` writes them), re-read when
    /// its files change.
    pub fn from_files(cert: &std::path::Path, key: &std::path::Path) -> Result<Arc<CertStore>, CertError> {
        let default = DefaultCert::Files(crate::trust::FileIdentity::load(cert, key)?);
        Ok(Arc::new(CertStore { default, by_name: ArcSwap::from_pointee(HashMap::new()) }))
    }

    /// Replaces the SNI map (lower-case server name → certificate; `*.domain` allowed).
    pub fn set(&self, by_name: HashMap<String, Arc<CertifiedKey>>) {
        self.by_name.store(Arc::new(by_name));
    }

    fn lookup(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let map = self.by_name.load();
        if let Some(name) = sni.map(|s| s.to_ascii_lowercase()) {
            if let Some(c) = map.get(&name) {
                return c.clone();
            }
            if let Some((_, rest)) = name.split_once('.') {
                if let Some(c) = map.get(&format!("*.{rest}")) {
                    return c.clone();
                }
            }
        }
        self.default.current()
    }

    /// A rustls server configuration over this store, offering HTTP/2 and HTTP/1.1.
    /// Clients resume sessions with stateless tickets (keys generated at start, rotated
    /// every 6 hours, never written anywhere), or from a cache of 4,096 sessions when the
    /// ticket keys cannot be made: a returning client skips the certificate and key
    /// exchange.
    pub fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
        match rustls::crypto::ring::Ticketer::new() {
            Ok(t) => cfg.ticketer = t,
            Err(e) => tracing::warn!(error = %e, "no TLS session tickets: sessions resume from the cache only"),
        }
        Arc::new(cfg)
    }
}

#[derive(Debug)]
struct Resolver(Arc<CertStore>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.lookup(hello.server_name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_picks_exact_then_wildcard_then_default() {
        let store = CertStore::generated().unwrap();
        let a = self_signed(&["a.test"]).unwrap();
        let w = self_signed(&["*.w.test"]).unwrap();
        store.set(HashMap::from([("a.test".to_string(), a.clone()), ("*.w.test".to_string(), w.clone())]));
        assert!(Arc::ptr_eq(&store.lookup(Some("A.TEST")), &a));
        assert!(Arc::ptr_eq(&store.lookup(Some("x.w.test")), &w));
        assert!(Arc::ptr_eq(&store.lookup(Some("other.test")), &store.default.current()));
        assert!(Arc::ptr_eq(&store.lookup(None), &store.default.current()));
    }

    #[test]
    fn a_certificate_answers_for_its_own_names_unless_a_host_rule_gives_them_to_another() {
        let pem = |names: &[&str]| {
            let ck =
                rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
            (ck.cert.pem(), ck.signing_key.serialize_pem())
        };
        let (api_cert, api_key) = pem(&["api.example.test", "*.apps.example.test", "*.test"]);
        let (other_cert, other_key) = pem(&["other.test", "claimed.test"]);
        let body = atrium_proto::v1::SnapshotBody {
            tls_certificates: vec![
                // Routers without a Host rule (PathPrefix only) name this Secret, and one
                // with Host(`claimed.test`).
                atrium_proto::v1::TlsCertificate {
                    secret: "apps/api-tls".into(),
                    server_names: vec!["claimed.test".into()],
                    cert_pem: api_cert.clone(),
                    key_pem: api_key,
                },
                // Another Secret: its certificate carries `claimed.test`, which a router's
                // Host rule gives to the first Secret.
                atrium_proto::v1::TlsCertificate {
                    secret: "tenant/other-tls".into(),
                    server_names: vec!["only-by-rule.test".into()],
                    cert_pem: other_cert.clone(),
                    key_pem: other_key,
                },
            ],
            ..Default::default()
        };
        let store = CertStore::generated().unwrap();
        store.set(by_server_name(&body));
        let leaf = |sni: &str| store.lookup(Some(sni)).cert[0].clone();
        use rustls::pki_types::pem::PemObject;
        let der = |pem: &str| rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(leaf("api.example.test"), der(&api_cert));
        assert_eq!(leaf("Billing.Apps.Example.Test"), der(&api_cert));
        assert_eq!(leaf("other.test"), der(&other_cert));
        assert_eq!(leaf("only-by-rule.test"), der(&other_cert), "a Host rule still supplies its certificate");
        assert_eq!(leaf("claimed.test"), der(&api_cert), "a host a router claims is not taken over by another Secret");
        // `*.test` is too wide to be taken from a certificate: the default answers.
        assert_eq!(store.lookup(Some("unknown.test")).cert[0], store.default.current().cert[0]);
    }

    #[tokio::test]
    async fn a_returning_client_resumes_its_session() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let store = CertStore::generated().unwrap();
        let server = store.server_config();
        // Stateless tickets: any worker of this process resumes, with no cache to fill.
        assert!(server.ticketer.enabled());
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for _ in 0..2 {
                let (tcp, _) = listener.accept().await.unwrap();
                let mut tls = acceptor.accept(tcp).await.unwrap();
                tls.write_all(b"hi").await.unwrap();
                tls.shutdown().await.unwrap();
            }
        });
        let mut roots = rustls::RootCertStore::empty();
        roots.add(store.default.current().cert[0].clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let mut kinds = Vec::new();
        for _ in 0..2 {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let mut tls = connector.connect(name, tcp).await.unwrap();
            kinds.push(tls.get_ref().1.handshake_kind());
            // Reading to the end takes in the tickets the server sent after the handshake.
            let mut got = Vec::new();
            tls.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"hi");
        }
        use rustls::HandshakeKind::{Full, Resumed};
        assert_eq!(kinds, [Some(Full), Some(Resumed)]);
    }

    #[test]
    fn persistent_default_certificate_survives_restarts() {
        let dir = std::env::temp_dir().join(format!("atrium-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = CertStore::persistent(&dir).unwrap();
        let b = CertStore::persistent(&dir).unwrap();
        assert_eq!(a.default.current().cert, b.default.current().cert);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("default-key.pem")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_pem_is_an_error() {
        assert!(certified_key(b"nope", b"nope").is_err());
    }
}
