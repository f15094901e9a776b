//! Trust between atrium's components: one CA per installation, certificates that carry
//! their role, and TLS material re-read when its files change.
//!
//! A chain to the CA is not enough to be let in. Each certificate names its role in a URI
//! SAN, `spiffe://atrium/<role>/<name>` ([`Role::uri`]), and each link checks it:
//!
//! | link | server presents | client presents |
//! |---|---|---|
//! | snapshot stream (gRPC) | control-plane | data-plane only |
//! | uplink (QUIC) | agent | control-plane or data-plane |
//!
//! So a child's certificate cannot pose as a data plane and receive snapshots (which carry
//! TLS private keys), and nothing accepts an agent where a parent belongs.
//!
//! Every server and client here reads its certificate, key and CA through [`FileIdentity`]
//! and [`FileRoots`], which notice changed files (checked at most once a second, at the
//! next handshake): certificates are rotated without a restart. A file that changes into
//! something unusable is logged and the previous material stays.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::pki::{Role, role_of};

/// Why a certificate and key cannot sign.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The certificate PEM does not parse, or holds no certificate.
    #[error("certificate: {0}")]
    Certificate(String),
    /// The key PEM does not parse, or the key is of a kind rustls cannot sign with.
    #[error("private key: {0}")]
    Key(String),
    /// A key of another certificate.
    #[error("the private key does not belong to the certificate: {0}")]
    Mismatch(rustls::Error),
}

/// Parses a PEM certificate chain and key into a signing key.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>, KeyError> {
    use rustls::pki_types::PrivateKeyDer;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| KeyError::Certificate(e.to_string()))?;
    if chain.is_empty() {
        return Err(KeyError::Certificate("no certificate in PEM".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| KeyError::Key(e.to_string()))?;
    let provider = rustls::crypto::ring::default_provider();
    let signer = provider.key_provider.load_private_key(key).map_err(|e| KeyError::Key(e.to_string()))?;
    let ck = CertifiedKey::new(chain, signer);
    // A key of another certificate (a rotation caught half-way, a wrong Secret) would fail
    // every handshake: refuse it here, where the previous pair can stay in force.
    ck.keys_match().map_err(KeyError::Mismatch)?;
    Ok(Arc::new(ck))
}

/// Why TLS material cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// A file cannot be read.
    #[error("{file}: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file does not hold what it should.
    #[error("{file}: {reason}")]
    Invalid {
        /// The file.
        file: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// How often changed files are looked for, at most.
const RECHECK: Duration = Duration::from_secs(1);

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn read(p: &Path) -> Result<Vec<u8>, TrustError> {
    std::fs::read(p).map_err(|source| TrustError::Read { file: p.to_path_buf(), source })
}

/// Material read from files, and when the files were last looked at.
#[derive(Debug)]
struct Watched<T> {
    stamp: Vec<Option<SystemTime>>,
    checked: Instant,
    current: T,
}

/// Files and what they parse into, re-read when their modification times change.
#[derive(Debug)]
struct FileBacked<T> {
    files: Vec<PathBuf>,
    what: &'static str,
    parse: fn(&[PathBuf]) -> Result<T, TrustError>,
    state: Mutex<Watched<T>>,
}

impl<T: Clone> FileBacked<T> {
    fn load(
        files: Vec<PathBuf>,
        what: &'static str,
        parse: fn(&[PathBuf]) -> Result<T, TrustError>,
    ) -> Result<Self, TrustError> {
        let stamp = files.iter().map(|f| modified(f)).collect();
        let current = parse(&files)?;
        Ok(FileBacked { files, what, parse, state: Mutex::new(Watched { stamp, checked: Instant::now(), current }) })
    }

    /// The material in force, re-read first when a file changed (looked at once a second).
    fn current(&self) -> T {
        // A poisoned lock only means a panic elsewhere; the material is still good.
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.checked.elapsed() >= RECHECK {
            st.checked = Instant::now();
            let stamp: Vec<_> = self.files.iter().map(|f| modified(f)).collect();
            if stamp != st.stamp {
                match (self.parse)(&self.files) {
                    Ok(t) => {
                        tracing::info!(file = %self.files[0].display(), what = self.what, "TLS material reloaded");
                        st.current = t;
                        st.stamp = stamp;
                    }
                    // Tried again at the next look: a rotation may be half-way (a new key
                    // written, its certificate not yet).
                    Err(e) => {
                        tracing::warn!(error = %e, what = self.what, "changed TLS material unusable; keeping the previous one")
                    }
                }
            }
        }
        st.current.clone()
    }

    /// Makes the next [`FileBacked::current`] look at the files (tests: no waiting).
    #[cfg(test)]
    fn look_again(&self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.checked = Instant::now().checked_sub(RECHECK).unwrap_or(st.checked);
        // Same-second rewrites can keep the modification time: forget it.
        st.stamp.iter_mut().for_each(|s| *s = None);
    }
}

/// A certificate chain and its key from two PEM files, re-read when they change. It serves
/// as a server's certificate and as a client's.
#[derive(Debug)]
pub struct FileIdentity(FileBacked<Arc<CertifiedKey>>);

impl FileIdentity {
    /// Reads `cert` and `key`.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<FileIdentity>, TrustError> {
        let parse = |f: &[PathBuf]| {
            certified_key(&read(&f[0])?, &read(&f[1])?)
                .map_err(|e| TrustError::Invalid { file: f[0].clone(), reason: e.to_string() })
        };
        Ok(Arc::new(FileIdentity(FileBacked::load(vec![cert.to_path_buf(), key.to_path_buf()], "certificate", parse)?)))
    }

    /// The certificate and key in force.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.0.current()
    }
}

impl rustls::server::ResolvesServerCert for FileIdentity {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl rustls::client::ResolvesClientCert for FileIdentity {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Why PEM text is not a usable certificate bundle.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// Not PEM.
    #[error("certificate: {0}")]
    Syntax(#[from] rustls::pki_types::pem::Error),
    /// No certificate in it.
    #[error("no certificate in PEM")]
    Empty,
    /// A certificate that cannot be a trust anchor.
    #[error("CA certificate: {0}")]
    Anchor(#[from] rustls::Error),
}

/// The certificates of a CA bundle (PEM).
pub fn pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem).collect::<Result<_, _>>()?;
    if certs.is_empty() {
        return Err(PemError::Empty);
    }
    Ok(certs)
}

/// A root store of the certificates of a CA bundle (PEM).
pub fn root_store(pem: &[u8]) -> Result<rustls::RootCertStore, PemError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in pem_certificates(pem)? {
        roots.add(c)?;
    }
    Ok(roots)
}

/// The trust anchors of a CA file, re-read when it changes.
#[derive(Debug)]
pub struct FileRoots(FileBacked<Arc<rustls::RootCertStore>>);

impl FileRoots {
    /// Reads the CA bundle at `ca`.
    pub fn load(ca: &Path) -> Result<Arc<FileRoots>, TrustError> {
        let parse = |f: &[PathBuf]| {
            root_store(&read(&f[0])?)
                .map(Arc::new)
                .map_err(|e| TrustError::Invalid { file: f[0].clone(), reason: e.to_string() })
        };
        Ok(Arc::new(FileRoots(FileBacked::load(vec![ca.to_path_buf()], "CA", parse)?)))
    }

    /// Fixed roots (no file behind them).
    pub fn fixed(roots: rustls::RootCertStore) -> Arc<FileRoots> {
        let parse = |_: &[PathBuf]| -> Result<Arc<rustls::RootCertStore>, TrustError> {
            Err(TrustError::Invalid { file: PathBuf::new(), reason: "fixed roots are never re-read".into() })
        };
        Arc::new(FileRoots(FileBacked {
            files: Vec::new(),
            what: "CA",
            parse,
            state: Mutex::new(Watched { stamp: Vec::new(), checked: Instant::now(), current: Arc::new(roots) }),
        }))
    }

    fn current(&self) -> Arc<rustls::RootCertStore> {
        self.0.current()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The signature algorithms every check here accepts (the ring provider's).
fn algorithms() -> rustls::crypto::WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

/// The signature checks of a verifier: those of [`algorithms`], whatever the certificate
/// checks around them.
macro_rules! signatures_by_algorithm {
    () => {
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(m, c, d, &algorithms())
        }

        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(m, c, d, &algorithms())
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            algorithms().supported_schemes()
        }
    };
}

/// The role check after a chain check: `Ok` only for a certificate whose role is one of
/// `allowed`.
fn check_role(end_entity: &CertificateDer<'_>, allowed: &[Role], link: &str) -> Result<(), rustls::Error> {
    match role_of(end_entity) {
        Some(r) if allowed.contains(&r) => Ok(()),
        found => {
            let wanted: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
            let found = found.map_or("none", Role::as_str);
            Err(rustls::Error::General(format!(
                "{link}: the peer's certificate has role {found}, and only {} may connect here",
                wanted.join(" or ")
            )))
        }
    }
}

/// A verifier rebuilt when the roots it was built from change.
#[derive(Debug)]
struct Rebuilt<V: ?Sized> {
    roots: Arc<FileRoots>,
    built: Mutex<(Arc<rustls::RootCertStore>, Arc<V>)>,
    build: fn(Arc<rustls::RootCertStore>) -> Result<Arc<V>, String>,
}

impl<V: ?Sized> Rebuilt<V> {
    fn new(
        roots: Arc<FileRoots>,
        build: fn(Arc<rustls::RootCertStore>) -> Result<Arc<V>, String>,
    ) -> Result<Self, TrustError> {
        let r = roots.current();
        let v = build(r.clone()).map_err(|reason| TrustError::Invalid { file: PathBuf::from("CA"), reason })?;
        Ok(Rebuilt { roots, built: Mutex::new((r, v)), build })
    }

    fn current(&self) -> Arc<V> {
        let roots = self.roots.current();
        let mut b = self.built.lock().unwrap_or_else(|e| e.into_inner());
        if !Arc::ptr_eq(&b.0, &roots) {
            match (self.build)(roots.clone()) {
                Ok(v) => *b = (roots, v),
                Err(e) => tracing::error!(error = %e, "new CA unusable for verification; keeping the previous one"),
            }
        }
        b.1.clone()
    }
}

/// Mutual TLS on a server: clients must chain to the CA and carry one of the allowed roles.
#[derive(Debug)]
pub struct RoleClientVerifier {
    inner: Rebuilt<dyn ClientCertVerifier>,
    allowed: Vec<Role>,
    link: &'static str,
}

impl RoleClientVerifier {
    /// Clients of `roots` whose role is in `allowed`, on `link` (named in refusals).
    pub fn new(roots: Arc<FileRoots>, allowed: &[Role], link: &'static str) -> Result<Arc<Self>, TrustError> {
        let build = |r: Arc<rustls::RootCertStore>| -> Result<Arc<dyn ClientCertVerifier>, String> {
            rustls::server::WebPkiClientVerifier::builder_with_provider(r, provider())
                .build()
                .map_err(|e| e.to_string())
        };
        Ok(Arc::new(RoleClientVerifier { inner: Rebuilt::new(roots, build)?, allowed: allowed.to_vec(), link }))
    }
}

impl ClientCertVerifier for RoleClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The roots may change; clients here send their one certificate anyway.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self.inner.current().verify_client_cert(end_entity, intermediates, now)?;
        check_role(end_entity, &self.allowed, self.link)?;
        Ok(ok)
    }

    signatures_by_algorithm!();
}

/// A client's check of a server: it chains to the roots, names the server, and (when
/// `role` is set) carries that role.
#[derive(Debug)]
pub struct RoleServerVerifier {
    inner: Rebuilt<rustls::client::WebPkiServerVerifier>,
    role: Option<Role>,
    link: &'static str,
}

impl RoleServerVerifier {
    /// Servers of `roots`, of role `role` when given, on `link` (named in refusals).
    pub fn new(roots: Arc<FileRoots>, role: Option<Role>, link: &'static str) -> Result<Arc<Self>, TrustError> {
        let build = |r: Arc<rustls::RootCertStore>| {
            rustls::client::WebPkiServerVerifier::builder_with_provider(r, provider())
                .build()
                .map_err(|e| e.to_string())
        };
        Ok(Arc::new(RoleServerVerifier { inner: Rebuilt::new(roots, build)?, role, link }))
    }
}

impl ServerCertVerifier for RoleServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ok = self.inner.current().verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        if let Some(r) = self.role {
            check_role(end_entity, &[r], self.link)?;
        }
        Ok(ok)
    }

    signatures_by_algorithm!();
}

/// Accepts any server certificate (`serversTransport.insecureSkipVerify`, development only;
/// the caller logs a warning). Signatures are still checked, so the handshake itself is
/// sound.
#[derive(Debug)]
pub struct NoVerify;

impl NoVerify {
    /// The verifier.
    pub fn new() -> Arc<NoVerify> {
        Arc::new(NoVerify)
    }
}

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    signatures_by_algorithm!();
}

/// A node's TLS material: its identity and the installation's CA, both re-read on change.
#[derive(Debug, Clone)]
pub struct NodeTrust {
    /// This node's certificate and key.
    pub identity: Arc<FileIdentity>,
    /// The installation's CA.
    pub roots: Arc<FileRoots>,
}

impl NodeTrust {
    /// Reads the files of `files`.
    pub fn load(files: &crate::pki::NodeFiles) -> Result<NodeTrust, TrustError> {
        Ok(NodeTrust { identity: FileIdentity::load(&files.cert, &files.key)?, roots: FileRoots::load(&files.ca)? })
    }

    /// A mutual-TLS server configuration: this node's certificate, clients of the CA with
    /// one of the `clients` roles, TLS 1.3 only when `tls13_only`.
    pub fn server_config(
        &self,
        clients: &[Role],
        link: &'static str,
        alpn: &[&[u8]],
        tls13_only: bool,
    ) -> Result<rustls::ServerConfig, TrustError> {
        let verifier = RoleClientVerifier::new(self.roots.clone(), clients, link)?;
        let builder = rustls::ServerConfig::builder_with_provider(provider());
        let builder = if tls13_only {
            builder.with_protocol_versions(&[&rustls::version::TLS13])?
        } else {
            builder.with_safe_default_protocol_versions()?
        };
        let mut cfg = builder.with_client_cert_verifier(verifier).with_cert_resolver(self.identity.clone());
        cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        Ok(cfg)
    }

    /// A client configuration presenting this node's certificate and checking the server
    /// with `verifier`.
    pub fn client_config(
        &self,
        verifier: Arc<dyn ServerCertVerifier>,
        alpn: &[&[u8]],
        tls13_only: bool,
    ) -> Result<rustls::ClientConfig, TrustError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider());
        let builder = if tls13_only {
            builder.with_protocol_versions(&[&rustls::version::TLS13])?
        } else {
            builder.with_safe_default_protocol_versions()?
        };
        let mut cfg = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(self.identity.clone());
        cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        Ok(cfg)
    }

    /// The verifier of servers of this installation with `role`.
    pub fn server_verifier(&self, role: Role, link: &'static str) -> Result<Arc<dyn ServerCertVerifier>, TrustError> {
        Ok(RoleServerVerifier::new(self.roots.clone(), Some(role), link)?)
    }
}

/// A CA and a data-plane certificate in a fresh directory, for unit tests elsewhere.
#[cfg(test)]
pub(crate) fn test_trust() -> NodeTrust {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("atrium-test-trust-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    crate::pki::init_ca(&d).expect("test CA");
    let files = crate::pki::issue(&d, "data-plane", Role::DataPlane, &[]).expect("test certificate");
    let t = NodeTrust::load(&files).expect("test trust");
    let _ = std::fs::remove_dir_all(&d);
    t
}

#[cfg(test)]
mod tests;
